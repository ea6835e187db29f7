"""Target feedback: the lag buffer each row sees, row by row (interleaved keys, rows without a
target, eviction), against a plain-Python replay."""

from collections import OrderedDict

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.keyed_state import KeyedState
from streamrnn.losses import BINARY, CLASSIFICATION, REGRESSION
from streamrnn.narx import lag_inputs, lag_width, replay_lags
from streamrnn.preprocess import Preprocessor


def ref_rows(task, n_out, k, X, Y, has_y, keys, max_keys):
    """Plain Python: each row's cell input [x, lag_1..lag_k, observed_1..observed_k], keys evicted LRU."""
    w = lag_width(task, n_out)
    lru, rows = OrderedDict(), []
    for i, key in enumerate(keys):
        if key in lru:
            lru.move_to_end(key)
        else:
            if len(lru) == max_keys:
                lru.popitem(last=False)
            lru[key] = (np.zeros((k, w)), np.zeros(k))
        vals, obs = lru[key]
        rows.append(np.concatenate([X[i], vals.ravel(), obs]))
        held = vals[0].copy()
        vals[1:], obs[1:] = vals[:-1].copy(), obs[:-1].copy()
        if has_y[i]:
            if task == CLASSIFICATION:
                vals[0] = 0.0
                vals[0, int(Y[i, 0])] = 1.0
            else:
                vals[0] = Y[i, :w]
            obs[0] = 1.0
        else:
            vals[0], obs[0] = held, 0.0
    return np.array(rows)


def data(task, n_out, n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    if task == REGRESSION:
        Y = rng.normal(size=(n, n_out))
    else:
        Y = rng.integers(0, n_out if task == CLASSIFICATION else 2, size=(n, 1)).astype(float)
    has_y = rng.random(n) < 0.7
    Y[~has_y] = 0.0
    keys = [str(v) for v in rng.integers(0, 4, n)]
    return X, Y, has_y, keys


@pytest.mark.parametrize("task,n_out", [(REGRESSION, 2), (CLASSIFICATION, 3), (BINARY, 1)])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("max_keys", [2, 8])
def test_lag_buffer_row_by_row(task, n_out, k, max_keys):
    X, Y, has_y, keys = data(task, n_out)
    pre = Preprocessor(task, 2, n_out, k, False, np.float64)
    assert pre.n_cell_inputs == 2 + lag_inputs(task, n_out, k) == 2 + k * (lag_width(task, n_out) + 1)
    keyed = KeyedState(pre.per_key_layout(), max_keys)
    got = []
    for lo, hi in ((0, 7), (7, 8), (8, 60)):  # several batches, one key state
        slots, reset = keyed.assign(keys[lo:hi], hi - lo)
        Xa, Ys, has, _ = pre.prepare(X[lo:hi], Y[lo:hi], has_y[lo:hi], slots, reset, keyed.arrays)
        got.append(Xa.copy())
        np.testing.assert_array_equal(Ys, Y[lo:hi])
        np.testing.assert_array_equal(has, has_y[lo:hi])
    np.testing.assert_array_equal(np.vstack(got), ref_rows(task, n_out, k, X, Y, has_y, keys, max_keys))


def test_replay_lags_reference_agrees():
    X, Y, has_y, keys = data(REGRESSION, 1, seed=4)
    seen = replay_lags(REGRESSION, 1, 2, Y, has_y, keys)
    rows = ref_rows(REGRESSION, 1, 2, X, Y, has_y, keys, 100)
    for (vals, obs), row in zip(seen, rows):
        np.testing.assert_array_equal(row[2:], np.concatenate([vals.ravel(), obs]))


def test_held_value_and_mask_by_hand():
    m = sr.Model(n_inputs=1, n_hidden=2, target_lags=2, standardize=False)
    m.step_many(np.zeros((4, 1)), [[1.0], None, [3.0], None], keys=["a", "a", "b", "a"])
    np.testing.assert_array_equal(m._keyed.row("lag_values", "a"), [[1.0], [1.0]])
    np.testing.assert_array_equal(m._keyed.row("lag_observed", "a"), [0.0, 0.0])  # rows 3 and 1 had none
    np.testing.assert_array_equal(m._keyed.row("lag_values", "b"), [[3.0], [0.0]])
    np.testing.assert_array_equal(m._keyed.row("lag_observed", "b"), [1.0, 0.0])
    m.forget("a")
    m.step_many(np.zeros((1, 1)), [None], keys=["a"])
    np.testing.assert_array_equal(m._keyed.row("lag_values", "a"), [[0.0], [0.0]])


def test_weights_shape_with_target_feedback():
    m = sr.Model(cell="lstm", n_inputs=3, n_hidden=4, n_outputs=2, target_lags=2, readout_skip=True)
    w = m.get_weights()
    assert m.n_inputs == 3 and m.n_cell_inputs == 3 + 2 * (2 + 1)
    assert w["weight_ih_l0"].shape == (16, 9) and w["readout.skip_weight"].shape == (2, 9)
    c = sr.Model(n_inputs=3, n_hidden=4, n_outputs=5, task="classification", target_lags=1)
    assert c.get_weights()["weight_ih_l0"].shape == (12, 3 + 5 + 1)
