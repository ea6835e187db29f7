"""The self-tuning optimizers (``adam_hd``, ``cocob``, ``mechanic``): each update written out in NumPy against the
compiled kernel, and a save/load continuation that is bit-identical."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.optim import (
    COCOB_ALPHA,
    EPS,
    HD_LR_MAX,
    HD_LR_MIN,
    HYPERGRAD_LR,
    LR,
    MECHANIC_BETAS,
    MECHANIC_EPS,
    MECHANIC_LAMBDA,
    MECHANIC_S_INIT,
    OPTIMIZER_IDS,
    WEIGHT_DECAY,
    optimizer_step,
    race_decay,
    race_select,
    state_shape,
)
from streamrnn.validation import optimizer_settings

P, STEPS = 29, 12  # P not a multiple of 8: the kernels' tail loops run too


def settings(optimizer, lr, weight_decay=0.0):
    return optimizer_settings(optimizer, lr, None, (0.9, 0.999), 1e-8, 0.0, weight_decay)[1]


def reference_adam_hd(theta, grads, hyper):
    """Adam (PyTorch) whose rate is multiplied by exp(β cos(g_t, u_{t-1})) before step t >= 2."""
    b1, b2, eps, wd, beta = 0.9, 0.999, hyper[EPS], hyper[WEIGHT_DECAY], hyper[HYPERGRAD_LR]
    m, v, lr, rates = np.zeros_like(theta), np.zeros_like(theta), hyper[LR], []
    for t, grad in enumerate(grads, start=1):
        g = grad + wd * theta
        if t > 1 and lr > 0:
            u = m / (np.sqrt(v) / np.sqrt(1 - b2 ** (t - 1)) + eps)
            cos = g @ u / (np.linalg.norm(g) * np.linalg.norm(u))
            lr = min(max(lr * np.exp(beta * cos), HD_LR_MIN), HD_LR_MAX)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        rates.append(lr)
    return theta, rates


def reference_cocob(theta, grads, hyper):
    alpha, eps, wd = hyper[COCOB_ALPHA], hyper[EPS], hyper[WEIGHT_DECAY]
    w1, L, G, R, S = theta.copy(), *(np.zeros_like(theta) for _ in range(4))
    for grad in grads:
        g = grad + wd * theta
        L = np.maximum(L, np.abs(g))
        G = G + np.abs(g)
        R = np.maximum(R - (theta - w1) * g, 0.0)
        S = S + g
        theta = w1 - S / (L * np.maximum(G + L, alpha * L) + eps) * (L + R)
    return theta


def reference_mechanic(theta, grads, hyper):
    """Mechanic around PyTorch's Adam, as in its reference implementation (Δ kept explicitly)."""
    b1, b2, eps, wd, lr = 0.9, 0.999, hyper[EPS], hyper[WEIGHT_DECAY], hyper[LR]
    betas = np.array(MECHANIC_BETAS)
    m, v, delta, x0 = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta), theta.copy()
    s, mm, vv, r = np.full(6, MECHANIC_S_INIT), np.zeros(6), np.zeros(6), np.zeros(6)
    for t, grad in enumerate(grads, start=1):
        g = grad + wd * theta
        h = (g + MECHANIC_LAMBDA * s.sum() * np.linalg.norm(g) / (np.linalg.norm(theta) + MECHANIC_EPS) * theta) @ delta
        mm = np.maximum(betas * mm, abs(h) + MECHANIC_EPS)
        vv = betas**2 * vv + h * h
        r = betas * r + h * s
        s = (MECHANIC_S_INIT / 6 * mm + np.maximum(r, 0.0)) / (np.sqrt(vv) + MECHANIC_EPS)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        delta = delta + lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        theta = x0 - s.sum() * delta
    return theta, s


def correlated_gradients(seed):
    """Gradients with a persistent component, so the cosine (and the learning rate) moves."""
    rng = np.random.default_rng(seed)
    drift = rng.standard_normal(P)
    return [drift + 0.7 * rng.standard_normal(P) for _ in range(STEPS)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_hd_matches_numpy(weight_decay):
    hyper = settings("adam_hd", 1e-2, weight_decay)
    hyper[HYPERGRAD_LR] = 0.3  # large, so the rate visibly changes over 12 steps
    theta0 = np.random.default_rng(1).standard_normal(P)
    grads = correlated_gradients(2)
    theta, state = theta0.copy(), np.zeros(state_shape("adam_hd", P))
    for t, g in enumerate(grads, start=1):
        optimizer_step(OPTIMIZER_IDS["adam_hd"], theta, g.copy(), state, t, hyper)
    want, rates = reference_adam_hd(theta0, grads, hyper)
    assert abs(rates[-1] / rates[0] - 1) > 0.1  # the mechanism did something
    np.testing.assert_allclose(state[2, 0], rates[-1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(theta, want, rtol=1e-12, atol=1e-14)


def test_adam_hd_zero_rate_stays_zero():
    hyper = settings("adam_hd", 0.0)
    theta = np.random.default_rng(3).standard_normal(P)
    before, state = theta.copy(), np.zeros(state_shape("adam_hd", P))
    for t, g in enumerate(correlated_gradients(4), start=1):
        optimizer_step(OPTIMIZER_IDS["adam_hd"], theta, g, state, t, hyper)
    assert state[2, 0] == 0.0 and np.array_equal(theta, before)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_cocob_matches_numpy(weight_decay):
    hyper = settings("cocob", 0.0, weight_decay)
    theta0 = np.random.default_rng(5).standard_normal(P)
    rng = np.random.default_rng(6)
    grads = [rng.standard_normal(P) * (1 + t % 3) for t in range(STEPS)]  # alternating signs: Reward moves
    theta, state = theta0.copy(), np.zeros(state_shape("cocob", P))
    for t, g in enumerate(grads, start=1):
        optimizer_step(OPTIMIZER_IDS["cocob"], theta, g.copy(), state, t, hyper)
    np.testing.assert_allclose(theta, reference_cocob(theta0, grads, hyper), rtol=1e-12, atol=1e-14)
    assert np.array_equal(state[0], theta0)  # w_1 kept


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n_params", [P, 5])  # 5: the 24 scalars spill over five rows
def test_mechanic_matches_numpy(weight_decay, n_params):
    hyper = settings("mechanic", 1e-2, weight_decay)
    theta0 = np.random.default_rng(8).standard_normal(n_params)
    grads = [g[:n_params] for g in correlated_gradients(9)]
    theta, state = theta0.copy(), np.zeros(state_shape("mechanic", n_params))
    for t, g in enumerate(grads, start=1):
        optimizer_step(OPTIMIZER_IDS["mechanic"], theta, g.copy(), state, t, hyper)
    want, s = reference_mechanic(theta0, grads, hyper)
    assert s.sum() > 5 * 6 * MECHANIC_S_INIT  # the scale was learned
    np.testing.assert_allclose(state[4:].ravel()[:6], s, rtol=1e-12, atol=0)
    np.testing.assert_allclose(theta, want, rtol=1e-12, atol=1e-14)


def test_state_too_small_is_refused():
    hyper = settings("adam_hd", 1e-3)
    with pytest.raises(ValueError):
        optimizer_step(OPTIMIZER_IDS["adam_hd"], np.zeros(P), np.ones(P), np.zeros((2, P)), 1, hyper)


@pytest.mark.parametrize("optimizer", ["adam_hd", "cocob", "mechanic"])
def test_save_load_continues_bit_identically(optimizer, tmp_path):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 2))
    Y = np.sin(np.cumsum(X[:, 0])) + 0.1 * X[:, 1]
    kw = dict(cell="gru", n_inputs=2, n_hidden=5, learner="rtrl", optimizer=optimizer, lr=3e-3, clip=1.0, seed=3)
    straight = sr.Model(**kw)
    straight.step_many(X, Y)
    first = sr.Model(**kw)
    first.step_many(X[:170], Y[:170])
    first.save(tmp_path / "m.ckpt")
    resumed = sr.Model.load(tmp_path / "m.ckpt")
    resumed.step_many(X[170:], Y[170:])
    assert resumed.opt_state.shape == state_shape(optimizer, resumed.n_params)
    assert np.array_equal(resumed.theta, straight.theta)
    assert np.array_equal(resumed.opt_state, straight.opt_state)


def reference_race(losses, decay):
    scores, picked = np.zeros(losses.shape[0]), []
    for t in range(losses.shape[1]):
        picked.append(int(np.argmin(scores)))
        col = losses[:, t]
        if np.isfinite(col).any():
            scores = decay * scores + np.where(np.isfinite(col), col, np.inf)
    return np.array(picked), scores


def test_race_select_matches_numpy_and_is_chunk_invariant():
    rng = np.random.default_rng(10)
    K, N = 3, 400
    losses = rng.exponential(1.0, (K, N)) * np.array([[1.2], [1.0], [1.1]])
    losses[:, rng.random(N) < 0.1] = np.nan  # rows without a target
    losses[2, 300] = np.inf  # member 2 diverges
    decay = race_decay(50)
    want_picked, want_scores = reference_race(losses, decay)
    scores, picked = np.zeros(K), np.empty(N, np.int64)
    race_select(losses, scores, decay, picked)
    assert np.array_equal(picked, want_picked) and set(picked[301:]) <= {0, 1}
    np.testing.assert_allclose(scores, want_scores, rtol=1e-12)
    chunked_scores, chunked = np.zeros(K), np.empty(N, np.int64)
    for a in range(0, N, 37):  # the scores are the only state
        race_select(np.ascontiguousarray(losses[:, a : a + 37]), chunked_scores, decay, chunked[a : a + 37])
    assert np.array_equal(chunked, picked) and np.array_equal(chunked_scores, scores)
