"""The first law: RTRL's summed online gradient equals full BPTT's, and both equal finite differences."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS, cache_size, cell_forward, cell_jacobians, state_size
from streamrnn.learners.bptt import sequence_loss
from streamrnn.losses import TASK_IDS

from .helpers import CELLS, N_OUTPUTS, TASKS, random_sequence, rel_err

N_HIDDEN, N_INPUTS, N_STEPS = 5, 3, 32


def make_model(cell, task, seed=0, **kw):
    return sr.Model(
        cell=cell, n_inputs=N_INPUTS, n_hidden=N_HIDDEN, n_outputs=N_OUTPUTS[task], task=task, seed=seed, **kw
    )


def finite_difference_gradient(model, X, Y, eps=1e-6):
    """Central differences of Σ_t L_t over every parameter (forward passes only)."""
    Yf, has_y = model._targets(Y, X.shape[0])
    args = (
        CELL_IDS[model.config["cell"]],
        TASK_IDS[model.config["task"]],
        model.n_inputs,
        model.n_hidden,
        model.n_outputs,
    )
    theta = model.theta.copy()
    grad = np.empty_like(theta)
    for p in range(theta.size):
        orig = theta[p]
        theta[p] = orig + eps
        up = sequence_loss(*args, theta, model.n_params_cell, X, Yf, has_y)
        theta[p] = orig - eps
        down = sequence_loss(*args, theta, model.n_params_cell, X, Yf, has_y)
        theta[p] = orig
        grad[p] = (up - down) / (2 * eps)
    return model.unflatten(grad)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_equals_bptt_equals_finite_differences(cell, task):
    model = make_model(cell, task, seed=3, standardize=False)  # finite differences on the raw inputs
    X, Y = random_sequence(task, n_steps=N_STEPS, n_inputs=N_INPUTS, seed=7)
    g_rtrl = model.gradient(X, Y, method="rtrl")
    g_bptt = model.gradient(X, Y, method="bptt")
    g_fd = finite_difference_gradient(model, X, Y)
    assert set(g_rtrl) == set(model.get_weights())
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, g_fd) < 1e-6
    assert rel_err(g_rtrl, g_fd) < 1e-6
    # Every block carries gradient (no silently dropped parameter group).
    assert all(np.abs(g).max() > 0 for g in g_rtrl.values())


@pytest.mark.parametrize("cell", CELLS)
def test_online_rtrl_with_zero_lr_sums_to_bptt(cell):
    """step_many with lr=0 accumulates the same per-step gradients that `gradient` sums."""
    # raw inputs: the offline loss below is computed on them
    model = make_model(cell, "regression", seed=1, optimizer="sgd", lr=0.0, standardize=False)
    X, Y = random_sequence("regression", n_steps=N_STEPS, n_inputs=N_INPUTS, seed=2)
    before = model.get_weights()
    preds, losses = model.step_many(X, Y, return_loss=True)
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    Yf, has_y = model._targets(Y, N_STEPS)
    # Σ losses of the online run equals the offline loss at the same weights.
    offline = sequence_loss(CELL_IDS[cell], 0, N_INPUTS, N_HIDDEN, 2, model.theta, model.n_params_cell, X, Yf, has_y)
    assert np.nansum(losses) == pytest.approx(offline, rel=1e-12)
    assert np.isnan(losses[~has_y]).all()


@pytest.mark.parametrize("cell", CELLS)
def test_sgd_step_uses_the_rtrl_gradient(cell):
    """One online SGD step moves θ by exactly -lr * dL_1/dθ (BPTT over one step)."""
    lr = 0.1
    model = make_model(cell, "regression", seed=4, optimizer="sgd", lr=lr)
    X, Y = random_sequence("regression", n_steps=1, n_inputs=N_INPUTS, seed=5, missing_every=0)
    g = model.gradient(X, Y, method="bptt")
    w0 = model.get_weights()
    model.step_many(X, Y)
    w1 = model.get_weights()
    for k in w0:
        np.testing.assert_allclose(w1[k], w0[k] - lr * g[k], rtol=0, atol=1e-15)


@pytest.mark.parametrize("cell", CELLS)
def test_dense_jacobians_match_finite_differences(cell):
    rng = np.random.default_rng(0)
    c = CELL_IDS[cell]
    model = make_model(cell, "regression", seed=2)
    S = state_size(c, N_HIDDEN)
    x = rng.normal(size=N_INPUTS)
    s = rng.normal(size=S) * 0.5
    theta = model.theta.copy()
    Pc = model.n_params_cell

    def step(theta, s):
        out = np.zeros(S)
        cell_forward(c, theta, N_INPUTS, N_HIDDEN, x, s, out, np.zeros(cache_size(c, N_HIDDEN)))
        return out

    s_new = step(theta, s)
    cache = np.zeros(cache_size(c, N_HIDDEN))
    cell_forward(c, theta, N_INPUTS, N_HIDDEN, x, s, np.zeros(S), cache)
    J = np.zeros((S, S))
    I = np.zeros((S, theta.size))
    cell_jacobians(c, theta, N_INPUTS, N_HIDDEN, x, s, s_new, cache, J, I)
    eps = 1e-6
    J_fd = np.stack([(step(theta, s + eps * e) - step(theta, s - eps * e)) / (2 * eps) for e in np.eye(S)], 1)
    I_fd = np.zeros((S, Pc))
    for p in range(Pc):
        tp, tm = theta.copy(), theta.copy()
        tp[p] += eps
        tm[p] -= eps
        I_fd[:, p] = (step(tp, s) - step(tm, s)) / (2 * eps)
    assert rel_err(J, J_fd) < 1e-7
    assert rel_err(I[:, :Pc], I_fd) < 1e-7
    assert not I[:, Pc:].any()


@pytest.mark.parametrize("cell", CELLS)
def test_float32_gradient_tracks_float64(cell):
    X, Y = random_sequence("regression", n_steps=N_STEPS, n_inputs=N_INPUTS, seed=9)
    m64 = make_model(cell, "regression", seed=6)
    m32 = make_model(cell, "regression", seed=6, dtype="float32")
    m32.set_weights(m64.get_weights())
    g64 = m64.gradient(X, Y, method="rtrl")
    g32 = m32.gradient(X, Y, method="rtrl")
    assert all(g.dtype == np.float32 for g in g32.values())
    assert rel_err(g32, g64) < 1e-4
    assert rel_err(m32.gradient(X, Y, method="bptt"), g32) < 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_wide_cells_take_the_blas_path_and_stay_exact(cell):
    """From n = 32 the forward and backward matrix-vector products go through BLAS."""
    from streamrnn.cells.common import BLAS_MIN_WIDTH

    n = BLAS_MIN_WIDTH
    # raw inputs: the central differences below are taken on them
    model = sr.Model(cell=cell, n_inputs=N_INPUTS, n_hidden=n, n_outputs=2, seed=5, standardize=False)
    X, Y = random_sequence("regression", n_steps=12, n_inputs=N_INPUTS, seed=8)
    g_bptt = model.gradient(X, Y, method="bptt")
    assert rel_err(model.gradient(X, Y, method="rtrl"), g_bptt) < 1e-9
    # central differences on a sample of parameters of every block
    Yf, has_y = model._targets(Y, X.shape[0])
    flat = np.concatenate([g.ravel() for g in g_bptt.values()])
    theta = model.theta.copy()
    args = (CELL_IDS[cell], TASK_IDS["regression"], N_INPUTS, n, 2)
    for p in np.random.default_rng(0).choice(theta.size, 40, replace=False):
        orig = theta[p]
        theta[p] = orig + 1e-6
        up = sequence_loss(*args, theta, model.n_params_cell, X, Yf, has_y)
        theta[p] = orig - 1e-6
        down = sequence_loss(*args, theta, model.n_params_cell, X, Yf, has_y)
        theta[p] = orig
        assert abs((up - down) / 2e-6 - flat[p]) < 1e-6 * np.abs(flat).max()
