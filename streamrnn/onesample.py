"""The Model's one-sample path: the fused prediction kernel, and compiled calls bound once.

A call from Python into a compiled (Numba) function costs, besides its work, the resolution of the
type of every argument (about 0.15 µs an array, more for a tuple of arrays) before the compiled code
runs. For one sample of a small model (GRU-8 through the river API) those costs were as large as the
arithmetic: a prediction took three compiled calls (the row's transform on copies of the statistics,
the cell and readout, the linear head) and a learning step three more (transform, learner, head),
with some 80 arguments between them.

Two things cut that here:

- :func:`peek_one` does a whole prediction (copies of the statistics and of the key's lag buffer, the
  transform, the cell and readout, the head, the way back to the target's units) in one compiled
  call, with the same kernels in the same order as the batch path, so it is bit-identical to it;
- :class:`OneSamplePath` (``Model.one_sample()``) owns the one-row buffers an adapter fills and
  binds every compiled call of a prediction and of a learning step to them once: each kernel's
  compiled specialisation for those arguments is looked up once (``Dispatcher.compile`` with their
  types, which loads it from Numba's on-disk cache) and then called through its entry point with
  the argument tuple kept, with no type resolution per call. The arguments are always the same
  array objects, so their types cannot change; the path rebinds when the Model replaces one of them
  (a key table that grew or was restored, parameters swapped in by :mod:`streamrnn.partitioned`, a
  new race leader for the prediction).

The learning step runs ``Model._learn_calls``, the calls :meth:`Model.apply_rows` runs, so a
learning step through the path is ``apply_rows`` of one row, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .learners.common import predict_from_state
from .preprocess import prepare_rows
from .rls import head_predict


@njit(cache=True)
def peek_one(
    active,
    head,
    finishes,
    cfg,
    x,
    x_stats,
    y_stats,
    d_stats,
    lag_values,
    lag_observed,
    sel,
    xs,
    ys,
    ds,
    lv,
    lo,
    y0,
    has0,
    slot0,
    reset0,
    Xa,
    Ys,
    has_learn,
    y_ls,
    Z,
    head_out,
    W,
    mix_c,
    cell,
    task,
    n_in,
    n,
    n_out,
    theta,
    Pc,
    hidden,
    zero_state,
    pred,
):
    """The prediction of one more row ``x`` (n_inputs,) of the key in slot ``sel[0]`` (-1: a fresh
    key's state) into ``pred``, changing nothing: ``Model.peek`` in one compiled call.

    With preprocessing (``active``), the row is transformed as :func:`streamrnn.preprocess.prepare_rows`
    would (on copies ``xs``, ``ys``, ``ds`` of the statistics and ``lv``, ``lo`` of the key's lag
    buffer, into the one-row scratch ``Xa`` ... ``Z``); then the cell and readout from the key's state
    (``hidden[sel[0]]`` or ``zero_state``); with the linear head (``head``) the combination
    (:func:`streamrnn.rls.head_predict`, the head's own prediction into ``head_out``); and for
    standardised regression (``finishes``) the way back to the target's units."""
    slot = sel[0]
    xin = x
    if active:
        xs[:] = x_stats
        ys[:] = y_stats
        ds[:] = d_stats
        if lv.shape[1] > 0:
            if slot < 0:
                lv[:] = 0.0
                lo[:] = 0.0
            else:
                lv[0] = lag_values[slot]
                lo[0] = lag_observed[slot]
        prepare_rows(cfg, x[None, :], y0, has0, slot0, reset0, xs, ys, ds, lv, lo, Xa, Ys, has_learn, y_ls, Z)
        xin = Xa[0]
    s = zero_state if slot < 0 else hidden[slot]
    predict_from_state(cell, task, n_in, n, n_out, theta, Pc, xin, s, pred, None)
    if head:
        head_predict(Z[0], pred, W, mix_c, head_out, pred)
    if finishes:
        for q in range(pred.shape[0]):
            pred[q] = y_ls[0, 0, q] + y_ls[1, 0, q] * pred[q]


def bind(kernel, args):
    """``kernel(*args)`` with its arguments fixed: ``(entry, args)``, ``entry`` the compiled
    specialisation for exactly the types of ``args`` (compiled, or loaded from the cache, now), to be
    called as ``entry(*args)`` while ``args`` hold the same objects."""
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args)), args


class OneSamplePath:
    """One sample at a time through a :class:`~streamrnn.Model`, with the compiled calls bound once
    (see the module docstring); made by :meth:`Model.one_sample`.

    Fill ``x`` (1, n_inputs) and, to learn, ``y`` (1, target width: the targets for regression, the
    class index or the 0/1 label otherwise) and ``has_y`` (1,), all validated by the caller (finite,
    in range), then call :meth:`learn` or :meth:`peek`. The results are those of ``Model.apply_rows``
    and ``Model.peek_into`` on the same row, bit for bit.

    Parameters
    ----------
    model : Model
        The model the path steps (it keeps no state of its own but scratch).

    Examples
    --------
    >>> import streamrnn as sr
    >>> m, twin = sr.Model(n_inputs=2, n_hidden=3, seed=0), sr.Model(n_inputs=2, n_hidden=3, seed=0)
    >>> path = m.one_sample()
    >>> path.x[0] = [0.1, 0.2]
    >>> path.y[0, 0], path.has_y[0] = 1.0, True
    >>> bool((path.peek(None) == twin.peek([0.1, 0.2])).all())
    True
    >>> bool((path.learn(None) == twin.step([0.1, 0.2], y=[1.0])).all())
    True
    """

    def __init__(self, model):
        self.model = model
        dt, n_out = model.dtype, model.n_outputs
        self.x = np.zeros((1, model.n_inputs), dt)
        self.y = np.zeros((1, model.dims.target_width), dt)
        self.has_y = np.ones(1, np.bool_)
        self.out = np.zeros((1, n_out), dt)
        self.loss = np.zeros(1, dt)
        self.pred = np.zeros(n_out, dt)
        self._slot = np.zeros(1, np.int64)
        self._reset = np.zeros(1, np.bool_)
        self._sel = np.full(1, -1, np.int64)  # the slot peek reads (-1: a fresh key's state)
        self._slot_now, self._fresh_now, self._sel_now = 0, False, -1  # what those arrays hold
        pre = model._pre
        self._rows = pre.rows_scratch(1) if pre.active else None  # the learning step's transformed row
        self._peek_buffers = pre.peek_scratch()
        self._bound_to = None  # the Model's arrays the calls are bound to
        self._learn = self._peeks = None

    def __getstate__(self):
        # Entry points do not pickle: a copy binds its calls again when first used.
        return {**self.__dict__, "_bound_to": None, "_learn": None, "_peeks": None}

    def _model_arrays(self):
        m = self.model
        return (m.theta, m.opt_state, m.counters, m.hyper, m._keyed.generation)

    def _bind(self, arrays):
        m = self.model
        self._learn = [
            bind(kernel, args)
            for kernel, args in m._learn_calls(
                self.x, self.y, self.has_y, self._slot, self._reset, self.out, self.loss, self._rows
            )
        ]
        self._peeks = [None] * m.n_members  # per race member (the leader predicts), bound when first used
        self._bound_to = arrays

    def _current(self):
        m, bound = self.model, self._bound_to
        if (
            bound is None
            or bound[0] is not m.theta
            or bound[1] is not m.opt_state
            or bound[2] is not m.counters
            or bound[3] is not m.hyper
            or bound[4] != m._keyed.generation
        ):
            self._bind(self._model_arrays())

    def learn(self, key, reset=False):
        """Test-then-train on the row in ``x``, ``y``, ``has_y`` of ``key`` (normalised), as
        ``Model.apply_rows`` of that one row (``reset``: it starts a new sequence of ``key``).
        Returns ``out[0]``, the prediction made before the update (``loss[0]`` its loss)."""
        slot, new = self.model._keyed.assign_one(key)  # first: a new key may grow the key table
        self._current()
        fresh = new or bool(reset)
        if slot != self._slot_now or fresh is not self._fresh_now:  # (NumPy item writes cost more)
            self._slot[0] = self._slot_now = slot
            self._reset[0] = self._fresh_now = fresh
        for entry, args in self._learn:
            entry(*args)
        return self.out[0]

    def peek(self, key, reset=False):
        """The prediction :meth:`learn` would return for the row in ``x`` of ``key`` (normalised),
        into ``pred`` (returned), changing nothing (``reset``: from a fresh key's state)."""
        m = self.model
        self._current()
        sel = -1 if reset else m._keyed.slots.get(key, -1)
        if sel != self._sel_now:
            self._sel[0] = self._sel_now = sel
        member = m.race_leader if m.race else 0
        call = self._peeks[member]
        if call is None:
            call = self._peeks[member] = bind(
                *m._peek_call(self.x[0], self._sel, self.pred, self._peek_buffers, member)
            )
        call[0](*call[1])
        return self.pred
