"""``Model(optimizer="race")``: K Adam members at rates ``lr × RACE_FACTORS``, one reported per row.

The Model keeps every member's parameters as row ``k`` of ``theta`` (K, P), ``opt_state``,
``counters`` and ``hyper``, and every member's per-key learner arrays under ``member<k>.<name>``
in its one :class:`~streamrnn.keyed_state.KeyedState` (the slot axis first for all, so eviction
and checkpoints stay uniform). :class:`Race` holds what only a race has: the members' workspaces,
the scores (each member's discounted prequential loss, :func:`streamrnn.optim.race_select`), and
the batch loop that runs every member's learner kernel over one preprocessed batch and reports,
per row, the member whose score was lowest before that row. The leader, ``argmin(scores)`` (ties
to the lower index), is what the Model's one-model views (``peek``, ``get_weights``, ...) read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .optim import LR, RACE_FACTORS, race_decay, race_rates, race_step
from .preprocess import finish_rows

SCORES = "race.scores"  # the checkpoint array


@njit(cache=True)
def _finish_and_pick(Y, has_y, y_ls, outs, member_losses, scores, decay, picked, out, losses):
    """Each member's predictions and losses back in the target's units (as ``Preprocessor.finish``),
    then the pick per row (``optim.race_step``); one compiled call."""
    for k in range(outs.shape[0]):
        finish_rows(Y, has_y, y_ls, outs[k], member_losses[k])
    race_step(outs, member_losses, scores, decay, picked, out, losses)


def member_layout(layout, n_members):
    """Every member's per-key learner arrays, ``member<k>.<name>``, member 0 first."""
    return [(f"member{k}.{name}", shape, dt) for k in range(n_members) for name, shape, dt in layout]


class Race:
    """The race's own state and batch loop (see the module docstring); owned by a Model."""

    n_members = len(RACE_FACTORS)

    def __init__(self, spec, dims):
        self.scores = np.zeros(self.n_members, np.float64)  # discounted prequential loss per member
        self.decay = race_decay()
        self.workspaces = [spec.make_workspace(dims) for _ in range(self.n_members)]
        self._ws_fields = [tuple(ws) for ws in self.workspaces]
        self._views = None
        self._n_rows = -1

    @classmethod
    def stack(cls, theta, opt_state, counters, hyper, lr):
        """One model's arrays repeated per member (member k: rate ``lr × RACE_FACTORS[k]``)."""
        K = cls.n_members
        hyper = np.ascontiguousarray(np.repeat(hyper[None], K, axis=0))
        hyper[:, LR] = race_rates(lr)
        return (
            np.ascontiguousarray(np.repeat(theta[None], K, axis=0)),
            np.zeros((K,) + opt_state.shape, opt_state.dtype),
            np.zeros((K,) + counters.shape, counters.dtype),
            hyper,
        )

    @property
    def leader(self):
        """The member with the lowest discounted loss so far: the one whose prediction is reported next."""
        return int(np.argmin(self.scores))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_views"] = None  # views of the Model's arrays would come back as copies
        return state

    def _members(self, model):
        """Per member, the views the learner kernel takes: (theta, opt_state, hyper, counters, workspace),
        rebuilt when the Model's arrays are replaced (``streamrnn.partitioned`` shares them by assignment)."""
        v = self._views
        if v is None or v[0] is not model.theta or v[1] is not model.opt_state or v[2] is not model.counters:
            members = tuple(
                (model.theta[k], model.opt_state[k], model.hyper[k], model.counters[k], self._ws_fields[k])
                for k in range(self.n_members)
            )
            self._views = v = (model.theta, model.opt_state, model.counters, members)
        return v[3]

    def _scratch(self, n_rows, n_outputs, dtype):
        """Per-member predictions (K, N, n_out), losses (K, N) and picks (N,), reused while N stays."""
        if n_rows != self._n_rows:
            K = self.n_members
            self._buf = (
                np.empty((K, n_rows, n_outputs), dtype),
                np.empty((K, n_rows), dtype),
                np.empty(n_rows, np.int64),
            )
            self._n_rows = n_rows
        return self._buf

    def kernel_calls(self, model, slots, reset, X, Y, has_y, Y_raw, has_y_raw, y_ls, out, losses):
        """The compiled calls that run every member's learner kernel over the (preprocessed) batch and
        then pick per row, in order, as ``(kernel, args)`` (:meth:`apply` runs them; the Model's
        one-sample path binds them once, :mod:`streamrnn.onesample`)."""
        outs, member_losses, picked = self._scratch(X.shape[0], model.n_outputs, model.dtype)
        arrays = tuple(model._keyed.arrays.values())
        n_arr = model._n_learner_arrays // self.n_members
        step_many, d = model._spec.step_many, model.dims
        calls = [
            (
                step_many,
                (
                    d.cell,
                    d.task,
                    model._opt,
                    d.n_inputs,
                    d.n_hidden,
                    d.n_outputs,
                    theta,
                    opt_state,
                    hyper,
                    counters,
                    arrays[k * n_arr : (k + 1) * n_arr],
                    X,
                    Y,
                    has_y,
                    slots,
                    reset,
                    ws,
                    outs[k],
                    member_losses[k],
                ),
            )
            for k, (theta, opt_state, hyper, counters, ws) in enumerate(self._members(model))
        ]
        if y_ls is not None:
            calls.append(
                (
                    _finish_and_pick,
                    (Y_raw, has_y_raw, y_ls, outs, member_losses, self.scores, self.decay, picked, out, losses),
                )
            )
        else:
            calls.append((race_step, (outs, member_losses, self.scores, self.decay, picked, out, losses)))
        return calls

    def apply(self, model, slots, reset, X, Y, has_y, Y_raw, has_y_raw, y_ls, out, losses):
        """Run every member's learner kernel over the (preprocessed) batch, then pick per row."""
        for kernel, args in self.kernel_calls(model, slots, reset, X, Y, has_y, Y_raw, has_y_raw, y_ls, out, losses):
            kernel(*args)

    def check_state(self, arrays, source, error):
        """Raise ``error`` unless ``arrays`` holds valid race scores (shape, dtype, no NaN) for this race."""
        got = arrays.get(SCORES)
        if (
            got is None
            or got.shape != self.scores.shape
            or got.dtype != np.float64
            or np.isnan(got).any()
            or (got < 0).any()
        ):
            raise error(f"{source}: array {SCORES!r} missing, of the wrong shape or not valid race scores")
