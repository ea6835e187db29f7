"""UORO: the rank-one influence estimate is the documented recursion, and it is unbiased."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS, cache_size, cell_forward, cell_jacobians, state_size
from streamrnn.learners.uoro import random_signs

from .helpers import CELLS, lag_buffer_bytes, random_sequence, rel_err

N_IN, N, T = 3, 4, 10


def make_model(cell, **kw):
    kw.setdefault("seed", 1)
    return sr.Model(cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=2, **kw)


def flat(grad_dict):
    return np.concatenate([v.ravel() for v in grad_dict.values()])


@pytest.mark.parametrize("cell", CELLS)
def test_uoro_follows_its_recursion(cell):
    """s̃ = ρ0 J s̃ + ρ1 ν, θ̃ = θ̃/ρ0 + νᵀI/ρ1 with dense J, I: the same numbers as the kernel."""
    model = make_model(cell, standardize=False)  # the recursion below runs on the raw inputs
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=2)
    Yf, has_y = model._targets(Y, T)
    c, theta, Pc = CELL_IDS[cell], model.theta, model.n_params_cell
    S = state_size(c, N)
    w = model.get_weights()
    W_out, b_out = w["readout.weight"], w["readout.bias"]
    s, st, tt = np.zeros(S), np.zeros(S), np.zeros(Pc)
    grad = np.zeros(model.n_params)
    eps = 1e-7
    for t in range(T):
        cache, s_new = np.zeros(cache_size(c, N)), np.zeros(S)
        cell_forward(c, theta, N_IN, N, X[t], s, s_new, cache)
        J, I = np.zeros((S, S)), np.zeros((S, model.n_params))
        cell_jacobians(c, theta, N_IN, N, X[t], s, s_new, cache, J, I)
        nu = np.empty(S)
        random_signs(7, t, nu)
        js, vI = J @ st, nu @ I[:, :Pc]
        rho0 = np.sqrt((np.linalg.norm(tt) + eps) / (np.linalg.norm(js) + eps))
        rho1 = np.sqrt((np.linalg.norm(vI) + eps) / (np.linalg.norm(nu) + eps))
        st, tt, s = rho0 * js + rho1 * nu, tt / rho0 + vI / rho1, s_new
        if has_y[t]:
            d = W_out @ s[:N] + b_out - Yf[t]
            grad[:Pc] += ((W_out.T @ d) @ st[:N]) * tt
            grad[Pc:] += np.concatenate([np.outer(d, s[:N]).ravel(), d])
    assert rel_err(flat(model.gradient(X, Y, method="uoro", seed=7)), grad) < 1e-10


@pytest.mark.parametrize("cell", CELLS)
def test_uoro_is_unbiased(cell):
    """The mean of 3 000 independent estimates is RTRL's gradient within sampling error."""
    model = make_model(cell)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=3)
    exact = flat(model.gradient(X, Y, method="rtrl"))
    draws = np.array([flat(model.gradient(X, Y, method="uoro", seed=s)) for s in range(3000)])
    mean = draws.mean(axis=0)
    se = draws.std(axis=0) / np.sqrt(len(draws))
    noisy = se > 1e-12 * np.abs(exact).max()
    # readout gradients are exact (no noise); cell gradients within 5 standard errors
    np.testing.assert_allclose(mean[~noisy], exact[~noisy], rtol=1e-12, atol=1e-14)
    assert np.abs((mean - exact)[noisy] / se[noisy]).max() < 5
    # and one estimate alone is far from exact: it is an estimate
    assert rel_err(draws[0], exact) > 0.05


@pytest.mark.parametrize("cell", CELLS)
def test_uoro_online_is_deterministic_and_O_P(cell, tmp_path):
    m = make_model(cell, learner="uoro", lr=0.01)
    S = state_size(CELL_IDS[cell], N)
    assert m.state_bytes_per_key == 8 * (2 * S + m.n_params_cell) + lag_buffer_bytes(m)
    X, Y = random_sequence("regression", n_steps=120, n_inputs=N_IN, seed=4)
    keys = [i % 3 for i in range(120)]
    m.step_many(X[:60], Y[:60], keys[:60])
    m.save(tmp_path / "u.ckpt")
    restored = sr.Model.load(tmp_path / "u.ckpt")
    assert np.array_equal(m.step_many(X[60:], Y[60:], keys[60:]), restored.step_many(X[60:], Y[60:], keys[60:]))
    one_by_one = make_model(cell, learner="uoro", lr=0.01)
    for x, y, k in zip(X, Y, keys):
        one_by_one.step(x, None if np.isnan(y[0]) else y, k)
    assert np.array_equal(flat(m.get_weights()), flat(one_by_one.get_weights()))
    assert np.array_equal(flat(m.get_weights()), flat(restored.get_weights()))
