"""What the Model does to a batch before and after its learner: online standardisation and
target feedback (NARX), in one compiled pass over the rows in arrival order.

Before the learner (``prepare_rows``), for each row ``i`` of key ``slot``:

1. inputs: each feature is folded into the input statistics (winsorised, see
   :mod:`streamrnn.standardize`) and then standardised with them, ``x_i`` included (it is known
   before the prediction, and so the very first row of a raw-units stream becomes 0, not 5 000);
2. target feedback: the key's lag buffer (:mod:`streamrnn.narx`), lag values standardised with the
   target statistics as they stand before ``y_i`` (regression), then the observed flags;
3. target (regression): ``loc_i, scale_i`` = the target statistics before ``y_i``; the learner is
   given ``clip((y_i − loc_i) / scale_i)`` and learns from the row only once the target statistics
   hold two values (before that the scale is unknown); then ``y_i`` is folded in;
4. the key's lag buffer shifts in ``y_i`` (or holds its last value).

None of this depends on the parameters, so the whole batch is transformed before the learner runs
and the learner's exactness is untouched. After the learner (``finish_rows``), regression
predictions go back to the target's units, ``ŷ_i = loc_i + scale_i · ŷ_std,i``, and the reported
loss is recomputed in the target's units, ``½‖ŷ_i − y_i‖²`` (every row with a target, the first
two included); the learner itself minimises the loss in standardised units.

With the linear head (``head_lags = K`` > 0, regression with standardisation), ``prepare_rows``
also writes each row's head features (:func:`head_features`: the standardised inputs, the key's
last target, its last ``K`` changes in units of the changes' scale, the observed flags, 1), and
after the learner ``combine_and_finish`` replaces each standardised prediction by the combination
of the network's and the head's (:mod:`streamrnn.rls`) before the way back to the target's units.

Statistics are global: one set for the inputs and one for the targets, shared by every key. Only
regression targets are standardised; class labels are labels.
"""

import numpy as np
from numba import njit

from . import narx, rls
from .cells.borrow import borrowed
from .losses import REGRESSION
from .standardize import (
    CLIP,
    COUNT,
    MEAN,
    SAMPLE,
    WARMUP,
    fold,
    make_stats,
    scale_of,
    standardize_value,
)

STATE_NAMES = ("standardize.x_stats", "standardize.y_stats")
BASELINE_STATE = "standardize.d_stats"
BASELINES = (None, "last")


# Fields of the settings vector handed to ``prepare_rows`` (one array: a scalar argument costs a
# compiled call more to dispatch than an array does, and the river path calls it per sample).
TASK, STANDARDIZE, CLIP_AT, WARMUP_N, N_INPUTS, BASELINE, CELL_LAGS, HEAD_LAGS, N_SETTINGS = range(9)


def settings(task_id, standardize, n_inputs, clip=CLIP, warmup=WARMUP, baseline=None, target_lags=0, head_lags=0):
    """The settings vector :func:`prepare_rows` reads (fields ``TASK`` ... ``HEAD_LAGS``): one float64
    array, because a compiled call dispatches an array faster than as many scalars.
    """
    out = np.zeros(N_SETTINGS, np.float64)
    out[[TASK, STANDARDIZE, CLIP_AT, WARMUP_N, N_INPUTS, BASELINE, CELL_LAGS, HEAD_LAGS]] = (
        task_id,
        float(bool(standardize)),
        clip,
        warmup,
        n_inputs,
        float(baseline == "last"),
        target_lags,
        head_lags,
    )
    return out


@njit(cache=True, nogil=True)  # the daemon overlaps the learning calls with its sink writes
def prepare_rows(
    cfg, X, Y, has_y, slots, reset, x_stats, y_stats, d_stats, lag_values, lag_observed, Xa, Ys, has_learn, y_ls, Z
):
    """Transform rows in arrival order (see the module docstring), advancing ``x_stats``, ``y_stats``,
    ``d_stats`` and the keys' lag buffers (``lag_values`` (keys, depth, w), ``lag_observed`` (keys,
    depth [+ 1]); depth may be 0) in place. ``cfg`` is a :func:`settings` vector. Writes the
    learner's inputs ``Xa`` (N, n_in + k(w+1)), targets ``Ys``, mask ``has_learn``, for regression
    each row's target location and scale ``y_ls[0]``, ``y_ls[1]`` (N, width), and with a linear head
    its features ``Z`` (N, :func:`streamrnn.rls.n_features`)."""
    cfg, X, Y, has_y, slots, reset = borrowed((cfg, X, Y, has_y, slots, reset))
    x_stats, y_stats, d_stats, lag_values, lag_observed = borrowed(
        (x_stats, y_stats, d_stats, lag_values, lag_observed)
    )
    Xa, Ys, has_learn, y_ls, Z = borrowed((Xa, Ys, has_learn, y_ls, Z))
    task = int(cfg[TASK])
    standardize = cfg[STANDARDIZE] != 0.0
    clip = cfg[CLIP_AT]
    warmup = cfg[WARMUP_N]
    n_in = int(cfg[N_INPUTS])
    k = int(cfg[CELL_LAGS])
    kh = int(cfg[HEAD_LAGS])
    y_loc = y_ls[0]
    y_scale = y_ls[1]
    depth = lag_values.shape[1]
    w = lag_values.shape[2]
    std_y = standardize and task == REGRESSION
    base = cfg[BASELINE] != 0.0 and std_y and k > 0
    # lag_observed[:, depth]: the key has had a target (baseline "last" and the head need it)
    track = depth > 0 and (base or kh > 0)
    for i in range(X.shape[0]):
        slot = slots[i]
        if depth > 0 and reset[i]:
            lag_values[slot] = 0.0
            lag_observed[slot] = 0.0
        for j in range(n_in):
            if standardize:
                fold(x_stats, j, X[i, j], clip, warmup)
                Xa[i, j] = standardize_value(x_stats, j, X[i, j], clip)
            else:
                Xa[i, j] = X[i, j]
        vals = lag_values[slot if depth > 0 else 0]  # (the dummy buffer of a model without lags has one row)
        obs = lag_observed[slot if depth > 0 else 0]
        for lag in range(k):
            for q in range(w):
                v = vals[lag, q]
                Xa[i, n_in + lag * w + q] = standardize_value(y_stats, q, v, clip) if std_y else v
            Xa[i, n_in + k * w + lag] = obs[lag]
        ever = track and obs[depth] != 0.0
        if kh > 0:
            head_features(Xa[i], n_in, w, kh, vals, obs, ever, y_stats, d_stats, clip, Z[i])
        if std_y:
            has_last = base and ever
            for q in range(Y.shape[1]):
                if has_last:  # the change from the key's last target, in units of the changes' scale
                    last = vals[0, q]
                    y_loc[i, q] = last
                    y_scale[i, q] = scale_of(d_stats, q)
                    z = (Y[i, q] - last) / y_scale[i, q]
                    Ys[i, q] = clip if z > clip else (-clip if z < -clip else z)
                else:
                    y_loc[i, q] = y_stats[MEAN, q]
                    y_scale[i, q] = scale_of(y_stats, q)
                    Ys[i, q] = standardize_value(y_stats, q, Y[i, q], clip)
            has_learn[i] = has_y[i] and y_stats[COUNT, 0] >= 2.0 and (not has_last or d_stats[COUNT, 0] >= 2.0)
            if has_y[i]:
                for q in range(Y.shape[1]):
                    if ever:
                        fold(d_stats, q, Y[i, q] - vals[0, q], clip, warmup)
                    fold(y_stats, q, Y[i, q], clip, warmup)
        else:
            Ys[i, :] = Y[i, :]
            has_learn[i] = has_y[i]
        if depth > 0:
            narx.push_target(task, vals, obs, Y[i], has_y[i])
            if track and has_y[i]:
                obs[depth] = 1.0


@njit(cache=True)
def head_features(xa, n_in, w, kh, vals, obs, ever, y_stats, d_stats, clip, z):
    """The linear head's features of one row (see :mod:`streamrnn.rls`), from its standardised
    inputs ``xa`` and its key's lag buffer as it stands before the row's own target."""
    for j in range(n_in):
        z[j] = xa[j]
    col = n_in
    for q in range(w):
        z[col + q] = standardize_value(y_stats, q, vals[0, q], clip) if ever and y_stats[COUNT, q] >= 2.0 else 0.0
    col += w
    changes = d_stats[COUNT, 0] >= 2.0
    for j in range(kh):
        both = changes and obs[j] != 0.0 and obs[j + 1] != 0.0
        for q in range(w):
            if both:
                c = (vals[j, q] - vals[j + 1, q]) / scale_of(d_stats, q)
                z[col + q] = clip if c > clip else (-clip if c < -clip else c)
            else:
                z[col + q] = 0.0
        col += w
    for j in range(kh):
        z[col + j] = obs[j]
    z[col + kh] = 1.0


@njit(cache=True, nogil=True)
def finish_rows(Y, has_y, y_ls, out, losses):
    """Regression with standardisation: predictions back to target units (``y_ls[0] + y_ls[1] · out``),
    losses in target units."""
    y_loc = y_ls[0]
    y_scale = y_ls[1]
    for i in range(out.shape[0]):
        for q in range(out.shape[1]):
            out[i, q] = y_loc[i, q] + y_scale[i, q] * out[i, q]
        if has_y[i]:
            total = 0.0
            for q in range(out.shape[1]):
                d = out[i, q] - Y[i, q]
                total += 0.5 * d * d
            losses[i] = total
        else:
            losses[i] = np.nan


@njit(cache=True, nogil=True)
def combine_and_finish(Y, has_y, y_ls, out, losses, Z, Ys, has_learn, P, W, mix_P, mix_c, scratch):
    """The linear head and the combiner over the batch (:func:`streamrnn.rls.head_rows`), then
    :func:`finish_rows`: one compiled call after the learner."""
    Y, has_y, y_ls, out, losses, Z, Ys, has_learn = borrowed((Y, has_y, y_ls, out, losses, Z, Ys, has_learn))
    P, W, mix_P, mix_c, scratch = borrowed((P, W, mix_P, mix_c, scratch))
    rls.head_rows(Z, Ys, has_learn, out, P, W, mix_P, mix_c, scratch)
    finish_rows(Y, has_y, y_ls, out, losses)


def lag_buffer(target_lags, head_lags, baseline):
    """``(depth, extra)`` of a key's lag buffer: ``lag_values`` holds ``depth`` rows, ``lag_observed``
    ``depth + extra`` flags (the extra one: the key has had a target, for baseline "last" and the head)."""
    depth = max(int(target_lags), int(head_lags) + 1 if head_lags else 0)
    return depth, 1 if (baseline == "last" or head_lags) else 0


class Preprocessor:
    """The Model's standardisation statistics, target-feedback layout and linear head, and the calls
    around its learner. Inactive (``active`` False) when ``standardize`` is off and ``target_lags``
    and ``head_lags`` are 0: the Model then skips it entirely (bit-identical to a model without it).

    The keys' lag buffers hold ``depth`` = max(``target_lags``, ``head_lags`` + 1) targets: the cell
    is fed the first ``target_lags``, the head the last target and ``head_lags`` changes."""

    def __init__(
        self,
        task_id,
        n_inputs,
        n_outputs,
        target_lags,
        standardize,
        dtype,
        clip=CLIP,
        warmup=WARMUP,
        baseline=None,
        head_lags=0,
    ):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be None or 'last'; got {baseline!r}")
        if baseline == "last" and not (task_id == REGRESSION and standardize and target_lags >= 1):
            raise ValueError(
                "baseline='last' needs task='regression', standardize=True and target_lags >= 1 "
                "(the key's last target is held in its lag buffer)"
            )
        if head_lags and not (task_id == REGRESSION and standardize):
            raise ValueError(
                "head_lags > 0 (the linear head) needs task='regression' and standardize=True; "
                f"got head_lags={head_lags!r}"
            )
        self.task, self.n_inputs, self.n_outputs = task_id, n_inputs, n_outputs
        self.k, self.standardize = int(target_lags), bool(standardize)
        self.head_lags = int(head_lags)
        self.depth, self._ext = lag_buffer(self.k, self.head_lags, baseline)
        self.baseline = baseline
        self.dtype = np.dtype(dtype)
        self.clip, self.warmup = float(clip), float(warmup)
        self._cfg = settings(task_id, standardize, n_inputs, clip, warmup, baseline, self.k, self.head_lags)
        self.w = narx.lag_width(task_id, n_outputs)
        self.width_y = n_outputs if task_id == REGRESSION else 1
        self.n_cell_inputs = n_inputs + narx.lag_inputs(task_id, n_outputs, self.k)
        self.active = self.standardize or self.depth > 0
        self.finishes = self.standardize and task_id == REGRESSION
        self.finishes_race = self.finishes and not self.head_lags  # with the head, finish() follows the race
        self.x_stats = make_stats(n_inputs)
        self.y_stats = make_stats(self.width_y)
        self.d_stats = make_stats(self.width_y)  # changes y − y_last (baseline "last" and the head)
        self.n_head_features = rls.n_features(n_inputs, self.width_y, self.head_lags) if self.head_lags else 0
        if self.head_lags:
            self.head = rls.make_state(n_inputs, self.width_y, self.head_lags)
            self._head_scratch = np.zeros(self.n_head_features + 4 + 2 * self.width_y)
        self._no_lags = (np.zeros((1, 0, self.w)), np.zeros((1, 0)))
        self._cap = self._views_n = 0
        self._grow(1)

    def __getstate__(self):
        # The peek scratch is not state (every peek overwrites it): leaving it out keeps a pickle a
        # function of the model's state, so a prediction does not change it. It is rebuilt lazily.
        return {k: v for k, v in self.__dict__.items() if k != "_peek"}

    def per_key_layout(self):
        """(name, shape, dtype) of the per-key arrays target feedback and the head add (none for depth 0)."""
        if self.depth == 0:
            return []
        return [
            ("lag_values", (self.depth, self.w), np.dtype(np.float64)),
            ("lag_observed", (self.depth + self._ext,), np.dtype(np.float64)),
        ]

    def _fresh_lags(self):
        return np.zeros((1, self.depth, self.w)), np.zeros((1, self.depth + self._ext))

    def rows_scratch(self, n):
        """New scratch for ``n`` rows: ``((Xa, Ys, has_learn, y_ls), Z)`` as :func:`prepare_rows` writes
        them (the learner's inputs, targets, mask, the targets' location and scale; the head's features)."""
        views = (
            np.zeros((n, self.n_cell_inputs), self.dtype),
            np.zeros((n, self.width_y), self.dtype),
            np.zeros(n, np.bool_),
            np.zeros((2, n, self.width_y)),
        )
        return views, np.zeros((n, self.n_head_features))

    def _grow(self, n):
        if n > self._cap:
            cap = max(n, 2 * self._cap)
            (self._Xa, self._Ys, self._has, self._ls), self._Z = self.rows_scratch(cap)
            self._cap = cap
        self._views_n = n
        self._views = (self._Xa[:n], self._Ys[:n], self._has[:n], self._ls[:, :n])
        self._Z_view = self._Z[:n]

    def scratch(self, n):
        """The batch scratch for ``n`` rows, ``((Xa, Ys, has_learn, y_ls), Z)``: views of arrays the
        Preprocessor reuses (valid until the next call with another ``n``)."""
        if n != self._views_n:
            self._grow(n)
        return self._views, self._Z_view

    def prepare_call(self, X, Y, has_y, slots, reset, keyed_arrays, views, Z):
        """The compiled call that transforms the rows for the learner into ``views`` and ``Z`` (from
        :meth:`rows_scratch` or :meth:`scratch`), committing the statistics and the keys' lag
        buffers: ``(kernel, args)``."""
        lags = (keyed_arrays["lag_values"], keyed_arrays["lag_observed"]) if self.depth else self._no_lags
        return prepare_rows, (
            self._cfg,
            X,
            Y,
            has_y,
            slots,
            reset,
            self.x_stats,
            self.y_stats,
            self.d_stats,
            *lags,
            *views,
            Z,
        )

    def finish_call(self, Y, has_y, y_ls, out, losses, views, Z):
        """The compiled call after the learner on the rows :meth:`prepare_call` transformed into
        ``views`` and ``Z``: with the head, the combined prediction (and the head's and the combiner's
        update); regression predictions and losses back in the target's units. ``(kernel, args)``, or
        None where there is nothing to finish."""
        if self.head_lags:
            _, Ys, has_learn, _ = views
            return combine_and_finish, (Y, has_y, y_ls, out, losses, Z, Ys, has_learn, *self.head, self._head_scratch)
        if self.finishes:
            return finish_rows, (Y, has_y, y_ls, out, losses)
        return None

    def prepare(self, X, Y, has_y, slots, reset, keyed_arrays):
        """The batch for the learner, ``(Xa, Ys, has_learn, y_ls)`` (views of scratch, valid until the
        next call; ``y_ls[0]``, ``y_ls[1]`` each row's target location and scale), committing the
        statistics and the keys' lag buffers. The head's features stay in scratch for :meth:`finish`."""
        views, Z = self.scratch(X.shape[0])
        kernel, args = self.prepare_call(X, Y, has_y, slots, reset, keyed_arrays, views, Z)
        kernel(*args)
        return views

    def finish(self, Y, has_y, y_ls, out, losses):
        """After the learner, on the batch :meth:`prepare` gave it: with the head, the combined
        prediction (and the head's and the combiner's update); regression predictions and losses
        back in the target's units."""
        call = self.finish_call(Y, has_y, y_ls, out, losses, self._views, self._Z_view)
        if call is not None:
            call[0](*call[1])

    def transform_sequence(self, X, Y, has_y, lag_row=None):
        """New arrays ``(Xa, Ys, has_learn, y_ls)`` for one sequence of a fresh key (or of a
        key whose lag buffer is ``lag_row = (values, observed)``), starting from copies of the
        current statistics, which are advanced along the sequence and discarded: nothing changes."""
        n = X.shape[0]
        out = (
            np.zeros((n, self.n_cell_inputs), self.dtype),
            np.zeros((n, self.width_y), self.dtype),
            np.zeros(n, np.bool_),
            np.zeros((2, n, self.width_y)),
        )
        if self.depth:
            lag_values, lag_observed = (
                self._fresh_lags() if lag_row is None else (lag_row[0][None].copy(), lag_row[1][None].copy())
            )
        else:
            lag_values, lag_observed = self._no_lags
        slots = np.zeros(n, np.int64)
        reset = np.zeros(n, np.bool_)
        prepare_rows(
            self._cfg,
            X,
            Y,
            has_y,
            slots,
            reset,
            self.x_stats.copy(),
            self.y_stats.copy(),
            self.d_stats.copy(),
            lag_values,
            lag_observed,
            *out,
            np.zeros((n, self.n_head_features)),
        )
        return out

    def feed_back(self, lag_values, lag_observed, y):
        """Shift one key's lag buffer (copies, as :meth:`peek_row` takes them) as if a row had had target
        ``y`` (target units): the step of a recursive forecast."""
        depth = self.depth
        narx.push_target(self.task, lag_values, lag_observed[:depth], np.asarray(y, np.float64), True)
        if self._ext:
            lag_observed[depth] = 1.0  # the key now has a last target

    def peek_scratch(self):
        """New scratch for predicting one row on copies (:meth:`peek_row`, the fused one-sample
        prediction of :mod:`streamrnn.onesample`): copies of the statistics ``(xs, ys)``, of a lag
        buffer ``(lv, lo)``, a row's target, flag, slot and reset ``(y0, has0, slot0, reset0)``, its
        transformed row ``(Xa, Ys, has_learn, y_ls)``, ``ds`` (the changes' statistics), the head's
        features ``z`` and its prediction."""
        w = self.width_y
        lv, lo = self._fresh_lags()
        xa_row, z = self.rows_scratch(1)
        return (
            self.x_stats.copy(),
            self.y_stats.copy(),
            lv,
            lo,
            np.zeros((1, w), self.dtype),
            np.zeros(1, np.bool_),
            np.zeros(1, np.int64),
            np.zeros(1, np.bool_),
            xa_row,
            self.d_stats.copy(),
            z,
            np.zeros(w),
        )

    def peek_row(self, x, lag_values=None, lag_observed=None):
        """What one more row ``x`` (1, n_inputs) of a key with lag buffer ``(lag_values, lag_observed)``
        (None: a new key) would give the learner, changing nothing: ``(xa, y_ls)``, views of scratch
        reused by the next call, ``xa`` (n_cell_inputs,) and ``y_ls`` (2, 1, width) the target's
        location and scale. With the head, :meth:`peek_finish` then gives the prediction. For
        ``Model.peek`` and the adapters' preallocated predict paths."""
        if not hasattr(self, "_peek"):
            self._peek = self.peek_scratch()
        xs, ys, lv, lo, y0, has0, slot0, reset0, out, ds, z, _ = self._peek
        xs[:] = self.x_stats
        ys[:] = self.y_stats
        if self._ext:
            ds[:] = self.d_stats
        if self.depth:
            if lag_values is None:
                lv[:] = 0.0
                lo[:] = 0.0
            else:
                lv[0] = lag_values
                lo[0] = lag_observed
        else:
            lv, lo = self._no_lags
        prepare_rows(self._cfg, x, y0, has0, slot0, reset0, xs, ys, ds, lv, lo, *out, z)
        return out[0][0], out[3]

    def peek_finish(self, pred, y_ls):
        """After :meth:`peek_row` and the cell's prediction ``pred`` (n_outputs,) in standardised units:
        the combined prediction in the target's units, in place."""
        if self.head_lags:
            P, W, mix_P, mix_c = self.head
            rls.head_predict(self._peek[10][0], pred, W, mix_c, self._peek[11], pred)
        if self.finishes:
            pred[:] = y_ls[0, 0] + y_ls[1, 0] * pred

    def _stat_arrays(self):
        names = STATE_NAMES + ((BASELINE_STATE,) if self._ext else ())
        return list(zip(names, (self.x_stats, self.y_stats, self.d_stats)))

    def _head_arrays(self):
        return list(zip(rls.STATE_NAMES, self.head)) if self.head_lags else []

    def state_arrays(self):
        """The statistics (and the head's arrays) a checkpoint holds, by name; empty without standardisation."""
        return dict(self._stat_arrays() + self._head_arrays()) if self.standardize else {}

    def check_state(self, arrays, source, error):
        """Validate the saved statistics and head (before anything is restored)."""
        if not self.standardize:
            return
        for name, dest in self._stat_arrays():
            got = self._current_layout(arrays.get(name), dest)
            if (
                got is None
                or got.shape != dest.shape
                or got.dtype != dest.dtype
                or not np.isfinite(got).all()
                or (got[COUNT] < 0).any()
                or (got[2] < 0).any()
            ):
                raise error(f"{source}: array {name!r} missing, of the wrong shape or not valid statistics")
        for name, dest in self._head_arrays():
            got = arrays.get(name)
            if got is None or got.shape != dest.shape or got.dtype != dest.dtype or not np.isfinite(got).all():
                raise error(f"{source}: array {name!r} missing, of the wrong shape or not finite")

    def _current_layout(self, got, dest):
        """Saved statistics in today's layout: a ``(3, width)`` array (from before the first values were
        kept) loads when every column is past its warm-up, after which those values are not used."""
        if got is not None and got.shape == (SAMPLE, dest.shape[1]) and (got[COUNT] >= self.warmup).all():
            out = np.zeros_like(dest)
            out[:SAMPLE] = got
            return out
        return got

    def load_state(self, arrays):
        """Adopt the statistics and head checked by :meth:`check_state`."""
        if self.standardize:
            for name, dest in self._stat_arrays():
                dest[:] = self._current_layout(arrays[name], dest)
            for name, dest in self._head_arrays():
                dest[:] = arrays[name]
