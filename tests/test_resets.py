"""Sequence boundaries in streams: ``Model.step_many(..., resets=R)`` starts a key afresh."""

import copy

import numpy as np
import pytest

import streamrnn as sr


def stream(n=120, n_keys=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    Y = np.sin(np.cumsum(X[:, :1], axis=0)) + 0.1 * rng.normal(size=(n, 1))
    Y[rng.random(n) < 0.15] = np.nan
    keys = [f"k{i}" for i in rng.integers(0, n_keys, n)]
    return X, Y, keys


CONFIGS = [
    dict(learner="rtrl"),
    dict(learner="rtrl", target_lags=2, baseline="last"),
    dict(learner="snap1", cell="lstm"),
    dict(learner="uoro"),
    dict(learner="tbptt", truncation=4, stride=2),
    dict(learner="rtrl", optimizer="race"),
    dict(learner="rtrl", task="binary", standardize=False),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_a_reset_is_forgetting_the_key_then_continuing(kw):
    """Rows 0..59, then a reset of key k0 at row 60 and rows 60..119: bit-identical, predictions and
    every array, to the same model that forgets k0 after row 59 (a fresh key) and runs the rest."""
    X, Y, keys = stream()
    kw = dict(n_inputs=2, n_hidden=3, seed=5, lr=3e-3, **kw)
    if kw.get("task") == "binary":
        Y = np.where(np.isnan(Y), np.nan, (Y > 0).astype(float))
    first = keys.index("k0", 60)
    resets = np.zeros(120, bool)
    resets[first] = True
    a = sr.Model(**kw)
    out_a = a.step_many(X, Y, keys, resets=resets)
    b = sr.Model(**kw)
    out_b = [b.step_many(X[:first], Y[:first], keys[:first])]
    b.forget("k0")
    out_b.append(b.step_many(X[first:], Y[first:], keys[first:]))
    assert np.array_equal(out_a, np.concatenate(out_b))
    assert np.array_equal(a.theta, b.theta)
    for key in ("k0", "k1"):
        sa, sb = a.key_state(key), b.key_state(key)
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[n], sb[n]) for n in sa)


def test_the_state_right_after_a_reset_is_a_fresh_keys():
    X, Y, keys = stream(80, n_keys=1)
    m = sr.Model(n_inputs=2, n_hidden=4, seed=1, target_lags=1, baseline="last")
    m.step_many(X[:60], Y[:60], keys[:60])
    twin = copy.deepcopy(m)
    pred = m.peek(X[60], key="k0", reset=True)
    assert np.array_equal(pred, twin.peek(X[60], key="never-seen"))  # peek(reset=True): a fresh key's
    assert np.array_equal(pred, m.step_many(X[60:61], Y[60:61], ["k0"], resets=[True])[0])
    twin.step_many(X[60:61], Y[60:61], ["fresh"])
    got, want = m.key_state("k0"), twin.key_state("fresh")
    assert all(np.array_equal(got[n], want[n]) for n in got)
    assert not np.array_equal(m.peek(X[61], key="k0"), m.peek(X[61], key="k0", reset=True))


def test_resets_are_checked():
    m = sr.Model(n_inputs=1, n_hidden=2)
    for bad in ([True], [0, 2], ["yes", "no"], [[True], [False]]):
        with pytest.raises(ValueError, match="resets"):
            m.step_many(np.zeros((2, 1)), resets=bad)
    assert m.stats["steps"] == 0
    m.step_many(np.zeros((2, 1)), resets=[1, 0])
    m.step_many(np.zeros((2, 1)), resets=np.array([False, True]))


def test_online_sequence_classification_learns_with_resets():
    """Episodes of 5 N(0, 1) inputs; the label, given on the last row only, is the sign of the
    first input. Memory is needed (the last input says nothing: a no-memory model's log loss is
    log 2 = 0.693); with a reset at every episode start the GRU learns it."""
    rng = np.random.default_rng(0)
    n_ep, L = 3000, 5
    X = rng.normal(size=(n_ep * L, 1))
    Y = np.full(n_ep * L, np.nan)
    Y[L - 1 :: L] = (X[::L, 0] > 0).astype(float)
    resets = np.zeros(n_ep * L, bool)
    resets[::L] = True
    m = sr.Model(task="binary", n_inputs=1, n_hidden=8, seed=0, lr=1e-2)
    p = m.step_many(X, Y, resets=resets)[L - 1 :: L, 0]
    y = Y[L - 1 :: L]
    tail = slice(-500, None)
    p_tail = np.clip(p[tail], 1e-12, 1 - 1e-12)
    log_loss = -np.mean(y[tail] * np.log(p_tail) + (1 - y[tail]) * np.log(1 - p_tail))
    accuracy = np.mean((p[tail] > 0.5) == (y[tail] > 0.5))
    assert accuracy > 0.95 and log_loss < 0.25  # no-memory floor: 0.5 and 0.693


def test_river_reset_feature_is_step_many_resets():
    """RNNRegressor(reset="new"): the feature is not an input, and a truthy value starts the entity
    afresh, as Model.step_many(resets=...) does; predict_one then predicts from a fresh state."""
    from streamrnn.river import RNNRegressor

    X, Y, keys = stream(90)
    Y = np.nan_to_num(Y, nan=0.25)  # river: every learn_one has its label
    resets = np.zeros(90, bool)
    resets[[0, 30, 31, 64]] = True
    est = RNNRegressor(n_inputs=2, n_hidden=3, seed=2, key="who", reset="new")
    preds = []
    for i in range(90):
        x = {"a": X[i, 0], "b": X[i, 1], "who": keys[i], "new": bool(resets[i])}
        preds.append(est.predict_one(x))
        est.learn_one(x, Y[i, 0])
    assert est.features == ["a", "b"]
    m = sr.Model(n_inputs=2, n_hidden=3, seed=2, lr=0.01, clip=1.0, target_lags=1, baseline="last")
    want = m.step_many(X, Y, keys, resets=resets)[:, 0]
    np.testing.assert_array_equal(np.array(preds), want)
