"""Forecast mode: the target of a record is a field of the *next* record of the same key.

A stream of measurements rarely carries its own label: the label of "what will
sensor 3 read next?" is sensor 3's next reading. :class:`NextRecordForecaster`
turns such a stream into test-then-train steps for a :class:`~streamrnn.Model`
without storing any history beyond one pending input per key:

- record ``t`` of key ``k`` arrives with inputs ``x_t`` and target field ``v_t``;
- the pending input ``x_{t-1}`` of ``k`` is stepped with target ``v_t``
  (``Model`` semantics: advance the state to ``h_{t-1}``, learn from the loss
  of ``readout(h_{t-1})`` against ``v_t``); without a target (``v_t`` missing)
  it is stepped without learning, so the state keeps up;
- the forecast for ``v_{t+1}`` is read from ``h_{t-1}`` and ``x_t`` without
  changing any state (``Model.peek``) and ``x_t`` becomes ``k``'s pending input.

So the model sees exactly the pairs ``(x_t, v_{t+1})`` of every key, in arrival
order, as ``RNNForecaster`` and ``Model.step`` would: the step of a record is
applied when its target arrives. Pending inputs are bounded like the Model's
per-key state (LRU beyond ``max_keys``) and are part of the checkpoint, so a
restart continues bit-identically.
"""

from collections import OrderedDict

import numpy as np

from .checkpoint import CheckpointError
from .keyed_state import encode_key

_ARRAY = "forecast.pending_inputs"


class NextRecordForecaster:
    """Forecast mode over a :class:`~streamrnn.Model` (one pending input per key).

    Examples
    --------
    >>> import numpy as np, streamrnn as sr
    >>> model = sr.Model(cell="gru", n_inputs=1, n_hidden=4, seed=0)
    >>> fc = NextRecordForecaster(model)
    >>> series = np.sin(np.arange(6) / 2.0)[:, None]
    >>> preds, losses = fc.process(series, series, keys=["a"] * 6)
    >>> preds.shape, bool(np.isnan(losses[0])), int(np.isfinite(losses[1:]).sum())
    ((6, 1), True, 5)
    >>> model.stats["updates"]  # 5 targets resolved; the first two only set the standardisation's scale
    3
    """

    def __init__(self, model):
        self.model = model
        self.pending = OrderedDict()  # key -> inputs of its last record, least recent first
        m = model
        self._x1 = np.empty((1, m.n_inputs), m.dtype)
        self._y1 = np.empty((1, m.dims.target_width), m.dtype)
        self._has1 = np.empty(1, np.bool_)
        self._out1 = np.empty((1, m.n_outputs), m.dtype)
        self._loss1 = np.empty(1, m.dtype)

    def process(self, X, Y, keys=None):
        """Apply records in arrival order; return ``(forecasts, losses)``.

        ``X`` (N, n_inputs) and ``Y`` (N, target width; NaN where a record has no
        target field) are validated like ``Model.step_many`` (a bad row raises
        ``ValueError`` and nothing is applied). ``forecasts[i]`` is the forecast of
        the target of the next record of ``keys[i]``; ``losses[i]`` the loss of the
        forecast made at the previous record of that key against ``Y[i]`` (NaN when
        there was none, no target, or the update was skipped as non-finite).
        """
        m = self.model
        X, Y, has_y, keys = m.validate_rows(X, Y, keys)
        n_rows = X.shape[0]
        if keys is None:
            keys = [None] * n_rows
        forecasts = np.empty((n_rows, m.n_outputs), m.dtype)
        losses = np.full(n_rows, np.nan, m.dtype)
        x1, y1, has1, out1, loss1 = self._x1, self._y1, self._has1, self._out1, self._loss1
        for i, key in enumerate(keys):
            previous = self.pending.get(key)
            if previous is not None:
                x1[0] = previous
                y1[0] = Y[i]
                has1[0] = has_y[i]
                m.apply_rows(x1, y1, has1, [key], out1, loss1)
                losses[i] = loss1[0]
            m.peek_into(X[i], key, forecasts[i])
            self._hold(key, X[i])
        return forecasts, losses

    def _hold(self, key, x):
        pending = self.pending
        if key in pending:
            pending.move_to_end(key)
        elif len(pending) >= self.model.max_keys:
            pending.popitem(last=False)
        pending[key] = x.copy()

    def state_arrays(self):
        """``(arrays, meta)`` to store beside ``Model.state_arrays()`` in a checkpoint."""
        keys = list(self.pending)
        inputs = (
            np.stack([self.pending[k] for k in keys]) if keys else np.zeros((0, self.model.n_inputs), self.model.dtype)
        )
        return {_ARRAY: inputs}, {"forecast_keys": [encode_key(k) for k in keys]}

    def load_state(self, arrays, meta, source="<state>"):
        """Restore the pending inputs from a checkpoint written by :meth:`state`; CheckpointError if the
        checkpoint holds no forecast-mode state (it was written in another schema mode).
        """
        encoded = meta.get("forecast_keys")
        inputs = arrays.get(_ARRAY)
        if encoded is None or inputs is None or inputs.shape != (len(encoded), self.model.n_inputs):
            raise CheckpointError(f"{source}: no forecast-mode state (was it written in another schema mode?)")
        self.pending = OrderedDict(
            (None if tag == "n" else value, inputs[i].astype(self.model.dtype))
            for i, (tag, value) in enumerate(encoded)
        )
