"""SnAp-1: the influence matrix restricted to each unit's own parameters.

Checked two independent ways: it equals exact RTRL (and BPTT) when the
recurrent weights are diagonal, where it is exact; and for general weights it
equals the masked dense recursion M_t = mask ⊙ (J_t M_{t-1} + I_t) with J and
I from the cells' reverse-mode Jacobians.
"""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS, cache_size, cell_forward, cell_jacobians, state_size

from .helpers import CELLS, N_OUTPUTS, TASKS, lag_buffer_bytes, random_sequence, rel_err

N_IN, N, T = 3, 5, 30
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def make_model(cell, task="regression", **kw):
    kw.setdefault("seed", 1)
    return sr.Model(cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=N_OUTPUTS[task], task=task, **kw)


def diagonalize_recurrence(model):
    w = model.get_weights()
    G = GATES[model.config["cell"]]
    W = w["weight_hh_l0"].reshape(G, N, N)
    W *= np.eye(N)[None] * 3.0  # keep it diagonal, and not small
    w["weight_hh_l0"] = W.reshape(G * N, N)
    model.set_weights(w)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_snap1_is_exact_for_diagonal_recurrence(cell, task):
    model = make_model(cell, task)
    diagonalize_recurrence(model)
    X, Y = random_sequence(task, n_steps=T, n_inputs=N_IN, seed=3)
    g_bptt = model.gradient(X, Y, method="bptt")
    assert rel_err(model.gradient(X, Y, method="snap1"), g_bptt) < 1e-9
    assert rel_err(model.gradient(X, Y, method="rtrl"), g_bptt) < 1e-9


def unit_mask(cell):
    """mask[s, p]: state entry s is unit (s mod N)'s, parameter p feeds gate rows of unit (row mod N)."""
    G = GATES[cell]
    S = state_size(CELL_IDS[cell], N)
    rows = G * N
    owner = np.concatenate(
        [
            np.repeat(np.arange(rows) % N, N_IN),
            np.repeat(np.arange(rows) % N, N),
            np.arange(rows) % N,
            np.arange(rows) % N,
        ]
    )
    return (np.arange(S)[:, None] % N) == owner[None, :]


@pytest.mark.parametrize("cell", CELLS)
def test_snap1_equals_the_masked_dense_recursion(cell):
    model = make_model(cell, seed=4, standardize=False)  # the recursion below runs on the raw inputs
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=5)
    Yf, has_y = model._targets(Y, T)
    c = CELL_IDS[cell]
    theta = model.theta
    Pc = model.n_params_cell
    S = state_size(c, N)
    mask = unit_mask(cell)
    s = np.zeros(S)
    M = np.zeros((S, Pc))
    w = model.get_weights()
    W_out, b_out = w["readout.weight"], w["readout.bias"]
    grad = np.zeros(model.n_params)
    for t in range(T):
        cache = np.zeros(cache_size(c, N))
        s_new = np.zeros(S)
        cell_forward(c, theta, N_IN, N, X[t], s, s_new, cache)
        J, I = np.zeros((S, S)), np.zeros((S, model.n_params))
        cell_jacobians(c, theta, N_IN, N, X[t], s, s_new, cache, J, I)
        M = mask * (J @ M + I[:, :Pc])
        s = s_new
        if has_y[t]:
            d = W_out @ s[:N] + b_out - Yf[t]
            grad[:Pc] += (W_out.T @ d) @ M[:N]
            grad[Pc:] += np.concatenate([np.outer(d, s[:N]).ravel(), d])
    got = model.gradient(X, Y, method="snap1")
    assert rel_err(got, model.unflatten(grad)) < 1e-10
    # and it is an approximation: not RTRL's gradient for general weights
    assert rel_err(got, model.gradient(X, Y, method="rtrl")) > 1e-3


@pytest.mark.parametrize("cell", CELLS)
def test_snap1_online_memory_is_O_P_and_replay_is_bit_identical(cell, tmp_path):
    m = make_model(cell, learner="snap1", lr=0.01)
    G = GATES[cell]
    S = state_size(CELL_IDS[cell], N)
    P_cell = G * N * (N_IN + N + 2)
    assert m.state_bytes_per_key == 8 * S * (1 + P_cell // N) + lag_buffer_bytes(m)  # O(P) per key ...
    rtrl = make_model(cell)
    assert rtrl.state_bytes_per_key == 8 * S * (1 + P_cell) + lag_buffer_bytes(rtrl)  # ... where RTRL holds O(nP)
    X, Y = random_sequence("regression", n_steps=200, n_inputs=N_IN, seed=6)
    keys = [i % 3 for i in range(200)]
    a = m
    a.step_many(X[:100], Y[:100], keys[:100])
    a.save(tmp_path / "s.ckpt")
    b = sr.Model.load(tmp_path / "s.ckpt")
    assert np.array_equal(a.step_many(X[100:], Y[100:], keys[100:]), b.step_many(X[100:], Y[100:], keys[100:]))
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights().values(), b.get_weights().values()))
    c = make_model(cell, learner="snap1", lr=0.01)
    for x, y, k in zip(X, Y, keys):
        c.step(x, None if np.isnan(y[0]) else y, k)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights().values(), c.get_weights().values()))


@pytest.mark.parametrize("cell", CELLS + ("elstm", "dlru"))
def test_an_overflowed_influence_is_zeroed_and_skips_the_update(cell):
    """The per-unit pass checks every value it writes: a non-finite influence is reset to zero,
    the step's prediction and state stand, and no gradient is applied (then learning goes on)."""
    m = make_model(cell, learner="snap1", lr=0.01)
    X, Y = random_sequence("regression", n_steps=10, n_inputs=N_IN, seed=8, missing_every=0)
    m.step_many(X[:5], Y[:5])
    M = m._keyed.arrays["influence"][m._keyed.slots[None]]
    M[1, 2] = np.inf
    theta, h = m.theta.copy(), m.hidden_state()
    updates = m.stats["updates"]
    pred = m.step_many(X[5:6], Y[5:6])
    assert m.stats["influence_resets"] == 1 and m.stats["updates"] == updates
    assert np.array_equal(m.theta, theta) and not M.any()
    assert np.isfinite(pred).all() and not np.array_equal(m.hidden_state(), h)
    m.step_many(X[6:], Y[6:])
    assert m.stats["updates"] == updates + 4 and np.isfinite(m.theta).all() and M.any()
