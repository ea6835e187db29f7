"""The fast linear head (``Model(head_lags=K)``, :mod:`streamrnn.rls`): its features, its recursive
least squares, the bound on P and the combiner, written out here in plain numpy against the Model;
and what the head must not change (the cell's training), peek/forecast, save/load."""

import math

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import rls
from streamrnn.standardize import CLIP

from .test_standardize import ref_fold, ref_scale, ref_standardize


def keyed_stream(n=400, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    X = np.column_stack([np.sin(t / 5.0) * 30.0 + 100.0, rng.normal(size=n)])
    keys = [("a", "b", "c")[i] for i in rng.integers(0, 3, n)]
    Y = (np.cos(t / 7.0) * 50.0)[:, None] + 0.3 * X[:, :1] + rng.normal(scale=2.0, size=(n, 1))
    Y[rng.random(n) < 0.1] = np.nan
    return X, Y, keys


def ref_rls(P, W, z, t, lam, bound):
    """Exponentially weighted RLS, written as in the textbook, then the diagonal congruence bound."""
    Pz = P @ z
    g = Pz / (lam + z @ Pz)
    W = W + np.outer(g, t - W.T @ z)
    P = (P - np.outer(g, z @ P)) / lam
    D = np.where(np.diag(P) > bound, np.sqrt(bound / np.diag(P)), 1.0)
    return P * np.outer(D, D), W


def ref_head_model(X, Y, keys, K, n_in, cell_std):
    """The Model's predictions with the head, from the cell's standardised predictions ``cell_std``
    (which the head does not change): baseline "last", statistics in plain Python."""
    xs = [[0.0, 0.0, 0.0] for _ in range(n_in)]
    ys, ds = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    buf = {}
    d = n_in + 1 + K + K + 1
    P, W = np.eye(d), np.zeros((d, 1))
    mP, mc = np.eye(2), np.full((2, 1), 0.5)
    out = np.empty(len(X))
    for i, key in enumerate(keys):
        vals, obs, ever = buf.setdefault(key, [np.zeros(K + 1), np.zeros(K + 1), False])
        z = []
        for j in range(n_in):
            xs[j] = ref_fold(xs[j], X[i, j])
            z.append(ref_standardize(xs[j], X[i, j]))
        z.append(ref_standardize(ys, vals[0]) if ever and ys[0] >= 2 else 0.0)
        dscale = ref_scale(ds[0], ds[2])
        for j in range(K):
            ok = ds[0] >= 2 and obs[j] and obs[j + 1]
            z.append(min(max((vals[j] - vals[j + 1]) / dscale, -CLIP), CLIP) if ok else 0.0)
        z += list(obs[:K]) + [1.0]
        z = np.array(z)
        if ever:
            loc, scale = vals[0], dscale
        else:
            loc, scale = ys[1], ref_scale(ys[0], ys[2])
        head = (W.T @ z)[0]
        combined = mc[0, 0] * head + mc[1, 0] * cell_std[i]
        out[i] = loc + scale * combined
        y = Y[i, 0]
        has_y = not math.isnan(y)
        if has_y and ys[0] >= 2 and (not ever or ds[0] >= 2):
            t = min(max((y - loc) / scale, -CLIP), CLIP)
            P, W = ref_rls(P, W, z, np.array([t]), rls.LAMBDA, rls.PRIOR)
            mP, mc = ref_rls(mP, mc, np.array([head, cell_std[i]]), np.array([t]), rls.LAMBDA_MIX, rls.PRIOR)
        if has_y:
            if ever:
                ds = ref_fold(ds, y - vals[0])
            ys = ref_fold(ys, y)
        held = vals[0]
        vals[1:], obs[1:] = vals[:-1].copy(), obs[:-1].copy()
        vals[0], obs[0] = (y, 1.0) if has_y else (held, 0.0)
        buf[key][2] = ever or has_y
    return out


def cell_standardised(X, Y, keys, kw):
    """The head-less twin's predictions, in standardised units (its own loc and scale undone), and
    the twin's final parameters: the cell learns the same with or without the head."""
    twin = sr.Model(head_lags=0, **kw)
    out = twin.step_many(X, Y, keys)[:, 0]
    # loc / scale per row, as the Model's baseline "last" defines them (plain Python)
    ys, ds, last = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], {}
    cell = np.empty(len(X))
    for i, key in enumerate(keys):
        if key in last:
            loc, scale = last[key], ref_scale(ds[0], ds[2])
        else:
            loc, scale = ys[1], ref_scale(ys[0], ys[2])
        cell[i] = (out[i] - loc) / scale
        y = Y[i, 0]
        if not math.isnan(y):
            if key in last:
                ds = ref_fold(ds, y - last[key])
            ys = ref_fold(ys, y)
            last[key] = y
    return cell, twin, out


@pytest.mark.parametrize("batch", [1, 7, 400])
def test_head_is_the_rls_and_combiner_written_out(batch):
    X, Y, keys = keyed_stream()
    K = 3
    kw = dict(n_inputs=2, n_hidden=4, seed=2, target_lags=1, baseline="last", lr=3e-3)
    cell, twin, cell_out = cell_standardised(X, Y, keys, kw)
    want = ref_head_model(X, Y, keys, K, 2, cell)
    m = sr.Model(head_lags=K, **kw)
    got = np.concatenate(
        [m.step_many(X[s : s + batch], Y[s : s + batch], keys[s : s + batch]) for s in range(0, 400, batch)]
    )
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-9, atol=1e-9)
    # the head takes nothing from the cell: its parameters are the head-less twin's, bit for bit
    assert np.array_equal(m.theta, twin.theta)
    # and it helps: on the second half the combined prediction beats the cell alone
    tail = ~np.isnan(Y[:, 0]) & (np.arange(400) >= 200)
    assert np.abs(got[tail, 0] - Y[tail, 0]).mean() < 0.9 * np.abs(cell_out[tail] - Y[tail, 0]).mean()


def test_bound_keeps_P_finite_where_the_rows_never_excite_it():
    """Features with a constant part (the observed flags once all 1 equal the constant): without the
    bound P grows as λ^−t along (flag − 1) and overflows near t = 709 / −ln λ ≈ 141 000."""
    d = 4
    P, W, Pz = np.eye(d), np.zeros((d, 1)), np.zeros(d)
    rng = np.random.default_rng(0)
    for _ in range(200_000):
        z = np.array([rng.normal(), 1.0, 1.0, 1.0])
        rls.rls_update(P, W, z, np.array([0.5 * z[0] + 0.1]), rls.LAMBDA, rls.PRIOR, Pz)
    assert np.isfinite(P).all() and np.diag(P).max() <= rls.PRIOR * (1 + 1e-12)
    assert np.linalg.eigvalsh(P).min() > -1e-12 and np.array_equal(P, P.T)
    # the fit is the least-squares one: 0.5 on the varying feature, 0.1 spread over the constant ones
    assert abs(W[0, 0] - 0.5) < 1e-6 and abs(W[1:, 0].sum() - 0.1) < 1e-6
    # what the bound prevents: the same rows without it, 2 000 of them, grow P by λ^−2000 ≈ 2·10⁴
    P, W = np.eye(d), np.zeros((d, 1))
    for _ in range(2_000):
        z = np.array([rng.normal(), 1.0, 1.0, 1.0])
        P, W = ref_rls(P, W, z, np.array([0.5 * z[0] + 0.1]), rls.LAMBDA, np.inf)
    assert np.diag(P).max() > 1e4


def test_peek_and_forecast_use_the_head():
    X, Y, keys = keyed_stream(200)
    m = sr.Model(n_inputs=2, n_hidden=3, seed=1, target_lags=1, baseline="last")
    assert m.config["head_lags"] == rls.HEAD_LAGS  # the default for regression with standardisation
    m.step_many(X[:150], Y[:150], keys[:150])
    before = m.state_arrays()
    p = m.peek(X[150], key=keys[150]).copy()
    f = m.forecast(X[150:153], key=keys[150])
    after = m.state_arrays()
    assert all(np.array_equal(before[0][k], after[0][k]) for k in before[0])  # nothing changed
    assert np.array_equal(f[0], p)
    assert np.array_equal(m.step_many(X[150:151], Y[150:151], keys[150:151])[0], p)


def test_save_load_continues_bit_identically(tmp_path):
    X, Y, keys = keyed_stream(300)
    kw = dict(n_inputs=2, n_hidden=3, seed=4, target_lags=2, baseline="last", head_lags=4)
    a = sr.Model(**kw)
    whole = a.step_many(X, Y, keys)
    b = sr.Model(**kw)
    first = b.step_many(X[:170], Y[:170], keys[:170])
    b.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    rest = b.step_many(X[170:], Y[170:], keys[170:])
    assert np.array_equal(np.concatenate([first, rest]), whole)


def test_head_after_a_race():
    """optimizer="race": the race picks in standardised units and the head combines the pick."""
    X, Y, keys = keyed_stream(200)
    m = sr.Model(n_inputs=2, n_hidden=3, seed=4, target_lags=1, baseline="last", optimizer="race")
    out = m.step_many(X, Y, keys)
    assert np.isfinite(out).all()
    has = ~np.isnan(Y[100:, 0])
    assert np.abs(out[100:, 0] - Y[100:, 0])[has].mean() < np.nanstd(Y)


def test_corrupt_head_state_is_rejected(tmp_path):
    m = sr.Model(n_inputs=1, n_hidden=2)
    m.step_many(np.arange(20.0)[:, None], np.arange(20.0)[:, None])
    arrays, meta = m.state_arrays()
    bad = dict(arrays)
    bad["head.P"] = np.full_like(arrays["head.P"], np.nan)
    with pytest.raises(sr.checkpoint.CheckpointError, match="head.P"):
        sr.Model.from_state(bad, meta)
    bad = dict(arrays)
    del bad["head.mix_c"]
    with pytest.raises(sr.checkpoint.CheckpointError, match="head.mix_c"):
        sr.Model.from_state(bad, meta)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(task="binary", head_lags=2), "regression"),
        (dict(standardize=False, head_lags=2), "standardize"),
        (dict(head_lags=-1), "head_lags"),
        (dict(head_lags=1.5), "head_lags"),
        (dict(head_lags=True), "head_lags"),
    ],
)
def test_bad_head_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sr.Model(n_inputs=1, **kw)


def test_defaults_off_where_the_head_does_not_apply():
    assert sr.Model(task="binary").config["head_lags"] == 0
    assert sr.Model(standardize=False).config["head_lags"] == 0
    assert sr.Model(task="classification", n_outputs=3).config["head_lags"] == 0
