"""Model(baseline="last"): the network predicts the change from the key's last target."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.standardize import CLIP, WARMUP, fold, make_stats, scale_of


def _stream(n=300, seed=0):
    rng = np.random.default_rng(seed)
    keys = [f"k{i}" for i in rng.integers(0, 3, n)]
    X = rng.normal(size=(n, 2))
    Y = (50 + np.cumsum(rng.normal(size=n)))[:, None]
    Y[::9] = np.nan
    return X, Y, keys


def test_prediction_is_the_last_target_plus_the_scaled_network_output():
    """With the weights frozen the network's output is the same with and without the baseline (its
    inputs are the same); only the way back to the target's units differs. Reference by hand. (Without
    the linear head, which would mix its own prediction in: tests/test_rls_head.py.)"""
    X, Y, keys = _stream()
    kw = dict(n_inputs=2, n_hidden=4, seed=1, lr=0.0, target_lags=1, head_lags=0)
    level = sr.Model(**kw).step_many(X, Y, keys)
    change = sr.Model(baseline="last", **kw).step_many(X, Y, keys)
    y_stats, d_stats, last = make_stats(1), make_stats(1), {}
    want = np.empty(len(keys))
    for i, k in enumerate(keys):
        mu, sd = y_stats[1, 0], scale_of(y_stats, 0)
        f = (level[i, 0] - mu) / sd
        want[i] = last[k] + scale_of(d_stats, 0) * f if k in last else level[i, 0]
        y = Y[i, 0]
        if y == y:
            if k in last:
                fold(d_stats, 0, y - last[k], CLIP, WARMUP)
            fold(y_stats, 0, y, CLIP, WARMUP)
            last[k] = y
    np.testing.assert_allclose(change[:, 0], want, rtol=1e-9, atol=1e-9)
    assert not np.allclose(change[:, 0], level[:, 0])


def test_exact_gradient_save_load_and_replay():
    X, Y, keys = _stream(120)
    m = sr.Model(n_inputs=2, n_hidden=3, seed=2, target_lags=1, baseline="last")
    Xs, Ys = X[:60], np.nan_to_num(Y[:60], nan=50.0)
    g_rtrl, g_bptt = m.gradient(Xs, Ys, method="rtrl"), m.gradient(Xs, Ys, method="bptt")
    for name in g_rtrl:
        np.testing.assert_allclose(g_rtrl[name], g_bptt[name], rtol=1e-9, atol=1e-12)
    a = m.step_many(X[:70], Y[:70], keys[:70])
    arrays, meta = m.state_arrays()
    assert "standardize.d_stats" in arrays
    twin = sr.Model.from_state(arrays, meta)
    rest, rest_twin = m.step_many(X[70:], Y[70:], keys[70:]), twin.step_many(X[70:], Y[70:], keys[70:])
    assert np.array_equal(rest, rest_twin) and np.array_equal(m.theta, twin.theta)
    fresh = sr.Model(n_inputs=2, n_hidden=3, seed=2, target_lags=1, baseline="last")
    assert np.array_equal(np.vstack([a, rest]), fresh.step_many(X, Y, keys))
    # peek is the prediction the next step makes
    p = m.peek(X[0], key=keys[0])
    assert np.array_equal(p, m.step(X[0], key=keys[0]))


def test_baseline_needs_standardisation_and_target_feedback():
    for bad in (dict(target_lags=0), dict(target_lags=1, standardize=False), dict(target_lags=1, task="binary")):
        with pytest.raises(ValueError, match="baseline='last' needs"):
            sr.Model(n_inputs=1, baseline="last", **bad)
    with pytest.raises(ValueError, match="baseline must be"):
        sr.Model(n_inputs=1, baseline="mean")
