"""The influence update's two product paths (BLAS GEMM and plain loop), its column blocks and its
gradient row, against each other and against the dense J M + I of ``cell_jacobians``."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.blas import gemm_block
from streamrnn.cells.common import GEMM_MIN_WIDTH, jacobian_product
from streamrnn.cells.dispatch import (
    CELL_IDS,
    cache_size,
    cell_forward,
    cell_jacobians,
    dense_tangent,
    state_size,
    tangent_scratch,
)

N_IN = 3


def one_step(cell, n, seed=0):
    """Weights, a state, an input and a random influence matrix for one step of ``cell``."""
    m = sr.Model(cell=cell, n_inputs=N_IN, n_hidden=n, n_outputs=1, seed=seed, standardize=False)
    rng = np.random.default_rng(seed)
    c = CELL_IDS[cell]
    S, Pc = state_size(c, n), m.n_params_cell
    theta = m.theta.copy()
    x = rng.normal(size=N_IN)
    s = 0.5 * rng.normal(size=S)
    s_new = np.empty(S)
    cache = np.empty(cache_size(c, n))
    cell_forward(c, theta, N_IN, n, x, s, s_new, cache)
    M = rng.normal(size=(S, Pc))
    return c, theta, x, s, s_new, cache, M, rng.normal(size=n), m.n_params


def tangent(cell_id, theta, x, s, s_new, cache, M, g_h, n_params, n, use_blas, width=None, in_place=True):
    """One dense_tangent call; returns (M_new, grad of the cell, finite)."""
    J, D, coefs = tangent_scratch(cell_id, n, M.shape[1], np.float64)
    if width is not None:
        D = np.zeros((D.shape[0], width))
    M_prev = M.copy()
    M_new = M_prev if in_place else np.full_like(M, np.nan)
    grad = np.full(n_params, np.nan)
    finite = dense_tangent(
        cell_id, theta, N_IN, n, x, s, s_new, cache, M_prev, M_new, J, D, coefs, True, g_h, grad, True, use_blas
    )
    return M_new, grad[: M.shape[1]], finite


def dense_reference(cell_id, theta, x, s, s_new, cache, M, n):
    """J M + I from the dense Jacobians (one reverse pass per state row)."""
    S = M.shape[0]
    J = np.empty((S, S))
    I_full = np.empty((S, theta.size))
    cell_jacobians(cell_id, theta, N_IN, n, x, s, s_new, cache, J, I_full)
    return J @ M + I_full[:, : M.shape[1]]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("n", [GEMM_MIN_WIDTH, 8, 32, 37])
def test_blas_path_equals_loop_path_and_dense_reference(cell, n):
    c, theta, x, s, s_new, cache, M, g_h, n_params = one_step(cell, n)
    M_blas, g_blas, ok_blas = tangent(c, theta, x, s, s_new, cache, M, g_h, n_params, n, True)
    M_loop, g_loop, ok_loop = tangent(c, theta, x, s, s_new, cache, M, g_h, n_params, n, False)
    assert ok_blas and ok_loop
    ref = dense_reference(c, theta, x, s, s_new, cache, M, n)
    scale = np.abs(ref).max()
    assert np.abs(M_blas - M_loop).max() < 1e-12 * scale
    assert np.abs(M_blas - ref).max() < 1e-12 * scale
    g_ref = g_h @ ref[:n]
    assert np.abs(g_blas - g_loop).max() < 1e-12 * np.abs(g_ref).max()
    assert np.abs(g_blas - g_ref).max() < 1e-12 * np.abs(g_ref).max()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "egru", "elstm"])
@pytest.mark.parametrize("use_blas", [True, False])
def test_column_blocks_and_out_of_place_give_the_same_update(cell, use_blas):
    """Narrow blocks of odd width cut every parameter region; the result is the one-block result."""
    n = 32
    c, theta, x, s, s_new, cache, M, g_h, n_params = one_step(cell, n, seed=3)
    M_one, g_one, _ = tangent(c, theta, x, s, s_new, cache, M, g_h, n_params, n, use_blas, width=M.shape[1])
    ref = dense_reference(c, theta, x, s, s_new, cache, M, n)
    scale = np.abs(ref).max()
    assert np.abs(M_one - ref).max() < 1e-12 * scale
    for width in (67, 200):
        for in_place in (True, False):
            M_b, g_b, ok = tangent(c, theta, x, s, s_new, cache, M, g_h, n_params, n, use_blas, width, in_place)
            assert ok
            assert np.abs(M_b - M_one).max() < 1e-12 * scale
            assert np.abs(g_b - g_one).max() < 1e-12 * np.abs(g_one).max()


def test_gemm_block_reads_a_column_block_in_place():
    rng = np.random.default_rng(0)
    for dt in (np.float64, np.float32):
        J = rng.normal(size=(33, 32)).astype(dt)
        M = rng.normal(size=(40, 500)).astype(dt)
        D = np.full((33, 128), np.nan, dt)
        gemm_block(J, M, 101, 97, D)
        tol = 1e-12 if dt == np.float64 else 1e-4
        assert np.abs(D[:, :97] - J @ M[:32, 101:198]).max() < tol * 10
        assert np.isnan(D[:, 97:]).all()  # nothing beyond the block's width is written
        D2 = np.empty_like(D)
        jacobian_product(J, M, 101, 97, D2, 32, 32, False)
        assert np.abs(D2[:, :97] - D[:, :97]).max() < tol * 10


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_wide_model_replays_bit_identically_and_matches_bptt(cell):
    """n = 32 (the BLAS path): RTRL == BPTT to 1e-9, and two replays give the same bits."""
    n = 32
    X = np.random.default_rng(1).normal(size=(40, N_IN))
    Y = np.random.default_rng(2).normal(size=(40, 1))
    m = sr.Model(cell=cell, n_inputs=N_IN, n_hidden=n, n_outputs=1, seed=4, standardize=False)
    g_rtrl = m.gradient(X[:10], Y[:10], method="rtrl")
    g_bptt = m.gradient(X[:10], Y[:10], method="bptt")
    num = max(np.abs(g_rtrl[k] - g_bptt[k]).max() for k in g_bptt)
    assert num < 1e-9 * max(np.abs(g_bptt[k]).max() for k in g_bptt)
    runs = []
    for _ in range(2):
        m = sr.Model(cell=cell, n_inputs=N_IN, n_hidden=n, n_outputs=1, seed=4)
        out = m.step_many(X, Y)
        runs.append((out, m.theta.copy()))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])
