"""Model with online standardisation and target feedback: exactness (RTRL == BPTT, finite
differences over the whole pipeline written out here), units, save/load and replay bit-identity."""

import math

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import checkpoint
from streamrnn.learners import rtrl as _rtrl
from streamrnn.standardize import CLIP, WARMUP

from .test_standardize import ref_fold, ref_scale, ref_standardize


def raw_stream(n=200, n_in=2, seed=0):
    """A raw-units stream: x·1000 + 5000, y a smooth function of recent x."""
    rng = np.random.default_rng(seed)
    u = np.cumsum(rng.normal(size=(n, n_in)), axis=0) * 0.1
    X = u * 1000.0 + 5000.0
    Y = (np.sin(u[:, :1]) + 0.5 * np.roll(u[:, :1], 1, axis=0)) * 300.0 + 1200.0
    return X, Y


# ----------------------------------------------------------------------------- the pipeline in plain Python
def ref_pipeline(X, Y, has_y, x_stats, y_stats, k):
    """Standardise (inputs folded first, targets after), augment with k lags + k observed flags.
    Returns the cell inputs, the standardised targets and which rows are learned from."""
    xs = [list(x_stats[:, j]) for j in range(x_stats.shape[1])]
    ys = [list(y_stats[:, q]) for q in range(y_stats.shape[1])]
    w = Y.shape[1]
    vals, obs = np.zeros((k, w)), np.zeros(k)
    rows, targets, learn = [], [], []
    for i in range(X.shape[0]):
        xa = []
        for j in range(X.shape[1]):
            xs[j] = ref_fold(xs[j], float(X[i, j]))
            xa.append(ref_standardize(xs[j], float(X[i, j])))
        xa += [ref_standardize(ys[q], float(vals[lag, q])) for lag in range(k) for q in range(w)]
        xa += list(obs)
        rows.append(xa)
        targets.append([ref_standardize(ys[q], float(Y[i, q])) for q in range(w)])
        learn.append(bool(has_y[i]) and ys[0][0] >= 2)
        if has_y[i]:
            ys = [ref_fold(ys[q], float(Y[i, q])) for q in range(w)]
        if k:
            held = vals[0].copy()
            vals[1:], obs[1:] = vals[:-1].copy(), obs[:-1].copy()
            vals[0], obs[0] = (Y[i], 1.0) if has_y[i] else (held, 0.0)
    return np.array(rows), np.array(targets), np.array(learn)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def ref_gru_loss(weights, Xa, Ys, learn):
    """PyTorch's GRU, linear readout, Σ ½‖ŷ − y‖² over the learned rows (standardised units)."""
    W_ih, W_hh = weights["weight_ih_l0"], weights["weight_hh_l0"]
    b_ih, b_hh = weights["bias_ih_l0"], weights["bias_hh_l0"]
    n = W_hh.shape[1]
    h = np.zeros(n)
    total = 0.0
    for t in range(Xa.shape[0]):
        gi, gh = W_ih @ Xa[t] + b_ih, W_hh @ h + b_hh
        r, z = sigmoid(gi[:n] + gh[:n]), sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
        c = np.tanh(gi[2 * n :] + r * gh[2 * n :])
        h = (1 - z) * c + z * h
        y = weights["readout.weight"] @ h + weights["readout.bias"]
        if learn[t]:
            total += 0.5 * np.sum((y - Ys[t]) ** 2)
    return total


def warmed_model(k, standardize=True, n_out=1, **kw):
    m = sr.Model(
        cell="gru",
        n_inputs=2,
        n_hidden=4,
        n_outputs=n_out,
        target_lags=k,
        standardize=standardize,
        lr=1e-2,
        seed=3,
        **kw,
    )
    X, Y = raw_stream(150)
    m.step_many(X, np.tile(Y, (1, n_out)) if n_out > 1 else Y)
    return m


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("k", [0, 2])
def test_transform_is_the_pipeline_written_out(k):
    m = warmed_model(k)
    X, Y = raw_stream(40, seed=5)
    X[17, 0] = 1e7  # an outlier: winsorised and clipped
    has_y = np.ones(40, bool)
    has_y[[3, 4, 20]] = False
    Yn = np.where(has_y[:, None], Y, np.nan)
    Xc, (Yc, hc) = m._inputs(X), m._targets(Yn, 40)
    Xa, Ys, learn, _ = m._pre.transform_sequence(Xc, Yc, hc)
    rXa, rYs, rlearn = ref_pipeline(X, np.where(has_y[:, None], Y, 0.0), has_y, m._pre.x_stats, m._pre.y_stats, k)
    np.testing.assert_array_equal(Xa, rXa)
    np.testing.assert_array_equal(Ys[has_y], rYs[has_y])
    np.testing.assert_array_equal(learn, rlearn & has_y)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("fresh", [False, True])
def test_rtrl_equals_bptt_and_finite_differences_over_the_pipeline(k, fresh):
    m = warmed_model(k) if not fresh else sr.Model(cell="gru", n_inputs=2, n_hidden=4, target_lags=k, seed=3)
    X, Y = raw_stream(25, seed=7)
    has_y = np.ones(25, bool)
    has_y[[5, 6, 13]] = False
    Yn = np.where(has_y[:, None], Y, np.nan)
    stats_before = (m._pre.x_stats.copy(), m._pre.y_stats.copy())
    g_rtrl = m.gradient(X, Yn, method="rtrl")
    g_bptt = m.gradient(X, Yn, method="bptt")
    g_tbptt = m.gradient(X, Yn, method="tbptt", truncation=25)
    np.testing.assert_array_equal(m._pre.x_stats, stats_before[0])  # gradient() commits nothing
    np.testing.assert_array_equal(m._pre.y_stats, stats_before[1])

    def flat(g):
        return np.concatenate([g[name].ravel() for name in g])

    scale = np.abs(flat(g_bptt)).max()
    assert scale > 0
    assert np.abs(flat(g_rtrl) - flat(g_bptt)).max() <= 1e-9 * scale
    assert np.abs(flat(g_tbptt) - flat(g_bptt)).max() <= 1e-9 * scale

    Xa, Ys, learn = ref_pipeline(X, np.where(has_y[:, None], Y, 0.0), has_y, m._pre.x_stats, m._pre.y_stats, k)
    weights = m.get_weights()
    eps = 1e-5
    fd = {}
    for name, w in weights.items():
        g = np.zeros(w.size)
        for p in range(w.size):
            plus, minus = {n: v.copy() for n, v in weights.items()}, {n: v.copy() for n, v in weights.items()}
            plus[name].flat[p] += eps
            minus[name].flat[p] -= eps
            g[p] = (ref_gru_loss(plus, Xa, Ys, learn) - ref_gru_loss(minus, Xa, Ys, learn)) / (2 * eps)
        fd[name] = g.reshape(w.shape)
    assert np.abs(flat(fd) - flat(g_rtrl)).max() <= 1e-6 * scale


@pytest.mark.parametrize("task,n_out", [("classification", 3), ("binary", 1)])
def test_rtrl_equals_bptt_with_label_feedback(task, n_out):
    rng = np.random.default_rng(2)
    m = sr.Model(cell="lstm", n_inputs=2, n_hidden=3, n_outputs=n_out, task=task, target_lags=2, seed=1)
    X = rng.normal(size=(30, 2)) * 50 + 10
    Y = rng.integers(0, n_out if task == "classification" else 2, size=(30, 1)).astype(float)
    m.step_many(X, Y)
    g1, g2 = m.gradient(X, Y, method="rtrl"), m.gradient(X, Y, method="bptt")
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=0, atol=1e-9 * max(np.abs(g2[name]).max(), 1e-300))


# ----------------------------------------------------------------------------- units, flags, safety
def test_predictions_and_losses_in_target_units():
    m = sr.Model(cell="gru", n_inputs=2, n_hidden=4, seed=0)
    X, Y = raw_stream(300)
    out, loss = m.step_many(X, Y, return_loss=True)
    assert np.isfinite(out).all() and np.isfinite(loss).all()
    np.testing.assert_allclose(loss, 0.5 * ((out - Y) ** 2).sum(axis=1), rtol=1e-12)
    assert abs(np.median(out[100:]) - np.median(Y[100:])) < 3 * Y.std()  # in the target's units


def test_no_nan_on_constant_and_early_streams():
    m = sr.Model(cell="gru", n_inputs=2, n_hidden=4, target_lags=1)
    out, loss = m.step_many(np.full((50, 2), 5000.0), np.full((50, 1), -3.0), return_loss=True)
    assert np.isfinite(out).all() and np.isfinite(loss).all()
    assert np.isfinite(m.step([1.0, 2.0], 7.0)).all()


def test_outlier_burst_keeps_predictions_sane():
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    y = np.sin(0.1 * t) + 0.1 * rng.normal(size=3000)
    X = np.column_stack([np.roll(y, 1)])
    Y = y[:, None].copy()
    X[1500:1520] = 1e6
    Y[1500:1520] = 1e6
    m = sr.Model(cell="gru", n_inputs=1, n_hidden=8, target_lags=1, lr=3e-3, seed=0)
    out = m.step_many(X[:1500], Y[:1500])
    scale_x, scale_y = np.sqrt(m._pre.x_stats[2] / m._pre.x_stats[0]), np.sqrt(m._pre.y_stats[2] / m._pre.y_stats[0])
    m.step_many(X[1500:1520], Y[1500:1520])
    out = m.step_many(X[1520:], Y[1520:])
    after_x, after_y = np.sqrt(m._pre.x_stats[2] / m._pre.x_stats[0]), np.sqrt(m._pre.y_stats[2] / m._pre.y_stats[0])
    assert (after_x / scale_x < 1.25).all() and (after_y / scale_y < 1.25).all()
    assert np.abs(out).max() < 5.0  # the signal is in [-1.4, 1.4]
    assert np.mean((out[-500:] - Y[-500:]) ** 2) < 0.1 * np.var(Y[-500:]) + 0.05


def test_off_and_zero_lags_is_the_plain_learner():
    """standardize=False, target_lags=0: exactly the learner kernel on the raw arrays."""
    X, Y = raw_stream(120)
    X, Y = X / 1000.0 - 5.0, Y / 300.0 - 4.0
    m = sr.Model(cell="gru", n_inputs=2, n_hidden=4, seed=2, standardize=False)
    assert not m._pre.active and set(m._keyed.arrays) == {"hidden", "influence"}
    theta0 = m.theta.copy()
    out, loss = m.step_many(X, Y, return_loss=True)
    theta, opt_state, counters = theta0.copy(), np.zeros((2, m.n_params)), np.zeros_like(m.counters)
    H, Ms = np.zeros((1, m._state_size)), np.zeros((1, m._state_size, m.n_params_cell))
    ws = tuple(_rtrl.make_workspace(m.dims))  # the learner kernel's API: dims in, plain tuples out
    out2, loss2 = np.empty_like(out), np.empty_like(loss)
    reset = np.zeros(120, bool)
    reset[0] = True
    _rtrl.rtrl_step_many(
        m._cell,
        m._task,
        m._opt,
        2,
        4,
        1,
        theta,
        opt_state,
        m.hyper,
        counters,
        (H, Ms),
        np.ascontiguousarray(X),
        np.ascontiguousarray(Y),
        np.ones(120, bool),
        np.zeros(120, np.int64),
        reset,
        ws,
        out2,
        loss2,
    )
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(loss, loss2)
    np.testing.assert_array_equal(m.theta, theta)


def test_peek_is_the_step_prediction_and_changes_nothing():
    m = warmed_model(2)
    m.step_many(*raw_stream(10, seed=1), keys=["a"] * 10)
    x = np.array([5100.0, 4900.0])
    before = {n: a.copy() for n, a in m.state_arrays()[0].items()}
    p = m.peek(x, key="a")
    after = m.state_arrays()[0]
    assert all(np.array_equal(before[n], after[n]) for n in before)
    np.testing.assert_array_equal(p, m.step(x, key="a"))
    np.testing.assert_array_equal(m.peek(x, key="new"), m.step(x, key="new"))


# ----------------------------------------------------------------------------- persistence and replay
def keyed_stream(n=240, seed=0):
    X, Y = raw_stream(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    Y = np.where(rng.random((n, 1)) < 0.8, Y, np.nan)
    keys = [int(v) for v in rng.integers(0, 5, n)]
    return X, Y, keys


@pytest.mark.parametrize("learner,kw", [("rtrl", {}), ("tbptt", {"truncation": 4}), ("uoro", {})])
@pytest.mark.parametrize("k,std", [(2, True), (1, False), (0, True)])
def test_save_load_and_batch_split_are_bit_identical(tmp_path, learner, kw, k, std):
    X, Y, keys = keyed_stream()

    def make():
        return sr.Model(
            cell="gru",
            n_inputs=2,
            n_hidden=4,
            learner=learner,
            target_lags=k,
            standardize=std,
            max_keys=3,
            seed=5,
            **kw,
        )

    a = make()
    out_a = a.step_many(X, Y, keys)
    b = make()
    out_b = [b.step_many(X[:100], Y[:100], keys[:100])]
    b.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    out_b.append(b.step_many(X[100:], Y[100:], keys[100:]))
    c = make()
    out_c = [c.step_many(X[i : i + 7], Y[i : i + 7], keys[i : i + 7]) for i in range(0, len(X), 7)]
    np.testing.assert_array_equal(out_a, np.vstack(out_b))
    np.testing.assert_array_equal(out_a, np.vstack(out_c))
    sa, sb = a.state_arrays()[0], b.state_arrays()[0]
    assert set(sa) == set(sb) and all(np.array_equal(sa[n], sb[n]) for n in sa)
    if std:
        assert "standardize.x_stats" in sa
    if k:
        assert "key.lag_values" in sa and "key.lag_observed" in sa


def test_old_checkpoints_load_without_standardisation():
    m = sr.Model(n_inputs=2, n_hidden=3, standardize=False)
    arrays, meta = m.state_arrays()
    meta = {**meta, "config": {n: v for n, v in meta["config"].items() if n not in ("target_lags", "standardize")}}
    back = sr.Model.from_state(arrays, meta)
    assert back.config["standardize"] is False and back.config["target_lags"] == 0


def test_bad_statistics_in_a_checkpoint_are_rejected():
    m = warmed_model(0)
    arrays, meta = m.state_arrays()
    arrays = dict(arrays)
    arrays["standardize.y_stats"] = arrays["standardize.y_stats"].copy()
    arrays["standardize.y_stats"][2, 0] = -1.0
    with pytest.raises(checkpoint.CheckpointError):
        sr.Model.from_state(arrays, meta)
    del arrays["standardize.y_stats"]
    with pytest.raises(checkpoint.CheckpointError):
        sr.Model.from_state(arrays, meta)


def test_constants_documented():
    assert CLIP == 4.0 and WARMUP == 10 and math.isclose(ref_scale(2, 2.0), 1.0)


@pytest.mark.parametrize("cell", ["egru", "dlru", "rnn"])
def test_per_unit_and_other_cells_stay_exact_with_both_on(cell):
    m = sr.Model(cell=cell, n_inputs=2, n_hidden=3, target_lags=2, seed=4)
    X, Y = raw_stream(40, seed=9)
    m.step_many(X, Y)
    g1, g2 = m.gradient(X[:20], Y[:20], method="rtrl"), m.gradient(X[:20], Y[:20], method="bptt")
    top = max(np.abs(g).max() for g in g2.values())
    assert all(np.abs(g1[n] - g2[n]).max() <= 1e-9 * top for n in g1)
    out = m.step_many(X, Y, keys=["a", "b"] * 20)
    assert np.isfinite(out).all()


def test_float32_model_with_both_on_replays_bit_identically(tmp_path):
    X, Y, keys = keyed_stream(120)
    a = sr.Model(n_inputs=2, n_hidden=4, target_lags=1, dtype="float32", seed=1)
    out_a = a.step_many(X, Y, keys)
    b = sr.Model(n_inputs=2, n_hidden=4, target_lags=1, dtype="float32", seed=1)
    b.step_many(X[:50], Y[:50], keys[:50])
    b.save(tmp_path / "f.ckpt")
    b = sr.Model.load(tmp_path / "f.ckpt")
    out_b = np.vstack([out_a[:50], b.step_many(X[50:], Y[50:], keys[50:])])
    assert out_a.dtype == np.float32 and np.isfinite(out_a).all()
    np.testing.assert_array_equal(out_a, out_b)
