"""Target feedback (NARX): each key's last ``k`` targets as extra inputs.

Per key, two arrays (rows of the model's keyed state, like the hidden state):

- ``lag_values`` ``(k, w)``: the targets of the key's last ``k`` rows, in the target's own units
  (float64), lag 1 first. ``w`` is ``n_outputs`` for regression, ``n_outputs`` for classification
  (the label one-hot) and 1 for binary (the label, 0 or 1).
- ``lag_observed`` ``(k,)``: 1.0 where the row ``j`` steps back had a target, 0.0 where it had none
  (or the key had not yet seen that many rows); there ``lag_values`` holds the last value observed
  before it (zeros before the first target).

After a row is predicted (test-then-train), the buffer shifts by one: lag ``j + 1`` <- lag ``j``,
and lag 1 becomes the row's target (observed 1), or keeps its value (observed 0, the last
observed value held) when the row had none. A new or evicted key starts with zeros.

The cell's input is ``[x (n_inputs), lag_1 (w), …, lag_k (w), observed_1, …, observed_k]``:
``n_inputs + k·(w + 1)`` columns (``lag_inputs``). For regression with standardisation on, the
lag values enter standardised with the target statistics as they stand at the row (see
:mod:`streamrnn.preprocess`); labels enter as they are.
"""

import numpy as np
from numba import njit

from .losses import BINARY, CLASSIFICATION


def lag_width(task_id, n_outputs):
    """Values fed back per lag: the targets (regression), the label one-hot (classification),
    the label (binary)."""
    return 1 if task_id == BINARY else n_outputs


def lag_inputs(task_id, n_outputs, k):
    """Extra input columns for ``target_lags=k``: ``k`` lag blocks and ``k`` observed flags."""
    return k * (lag_width(task_id, n_outputs) + 1)


@njit(cache=True)
def push_target(task, values, observed, y, has_y):
    """Shift one key's buffer (``values`` (k, w), ``observed`` (k,)) after a row with target row
    ``y`` (``has_y``): lag j+1 <- lag j; lag 1 <- the target (encoded), or held if none."""
    k = values.shape[0]
    for j in range(k - 1, 0, -1):
        values[j, :] = values[j - 1, :]
        observed[j] = observed[j - 1]
    if has_y:
        if task == CLASSIFICATION:
            values[0, :] = 0.0
            values[0, int(y[0])] = 1.0
        else:
            values[0, :] = y[: values.shape[1]]
        observed[0] = 1.0
    else:
        observed[0] = 0.0


def replay_lags(task, n_outputs, k, Y, has_y, keys):
    """Plain-Python reference: the (values, observed) buffer each row sees before its own target,
    for rows with ``keys`` (any hashables; no eviction). For tests."""
    w = lag_width(task, n_outputs)
    state, seen = {}, []
    for i, key in enumerate(keys):
        vals, obs = state.setdefault(key, (np.zeros((k, w)), np.zeros(k)))
        seen.append((vals.copy(), obs.copy()))
        new_vals = np.vstack([vals[:1], vals[:-1]]) if k else vals
        new_obs = np.concatenate([[0.0], obs[:-1]]) if k else obs
        if has_y[i]:
            if task == CLASSIFICATION:
                new_vals[0] = 0.0
                new_vals[0, int(Y[i][0])] = 1.0
            else:
                new_vals[0] = Y[i][:w]
            new_obs[0] = 1.0
        state[key] = (new_vals, new_obs)
    return seen
