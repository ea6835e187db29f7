"""Real-Time Recurrent Learning: online gradients, no stored history; exact or SnAp-1.

Per sequence (key) RTRL carries the influence matrix ``M_t = ds_t/dθ_cell``
(S x P) forward: ``M_t = J_t M_{t-1} + I_t``. At a step with a target the
gradient is ``dL_t/dθ = (dL_t/dh_t) M_t`` plus the readout's own part. The cell
kernels compute ``M_t`` in one BLAS product ``W_hh M_{t-1}`` (O(G n^2 P)) and
O(G n P) element-wise work that exploits the sparse immediate partial.

``mode=SNAP1`` keeps, per unit, only the influence of its own parameters (the
sparsity pattern of the immediate partial), so ``M`` is S x (P/n) per key and
a step costs O(P): unit j's row ``M[j]`` holds ``dh_j/dθ_j`` in the compact
layout of ``cells.common``. For the PyTorch cells that is SnAp-1 (Menick et
al., 2021), an approximation; for the element-wise cells, whose units never
read each other, it is exact RTRL.
"""
import numpy as np
from numba import njit

from ..cells.common import scatter_unit_grad, unit_block
from ..cells.dispatch import (cache_size, cell_forward, cell_tangent, cell_unit_tangent, n_gates, recurrent_width,
                              state_size)
from .common import APPLIED, INFLUENCE_RESET, REJECTED, all_finite, readout_step, settle_sample


EXACT, SNAP1 = 0, 1


def influence_width(mode, cell, n_in, n, n_params_cell):
    """Columns of a key's influence matrix: all cell parameters, or one unit's (SnAp-1)."""
    return n_params_cell if mode == EXACT else n_gates(cell) * unit_block(n_in, recurrent_width(cell, n))


def make_workspace(mode, cell, n_in, n, n_out, n_params_cell, n_params, dtype):
    """Scratch arrays for one RTRL step, allocated once per Model (``D`` is large for big n)."""
    D_shape = ((n_gates(cell) * n, n_params_cell) if mode == EXACT
               else (n_gates(cell), influence_width(mode, cell, n_in, n, n_params_cell)))
    return (np.zeros(state_size(cell, n), dtype), np.zeros(D_shape, dtype),
            np.zeros(cache_size(cell, n), dtype), np.zeros(n_out, dtype), np.zeros(n_out, dtype),
            np.zeros(n, dtype), np.zeros(n_params, dtype))


@njit(cache=True, error_model="numpy")
def rtrl_sample(cell, task, mode, n_in, n, n_out, theta, x, y, has_y, s, M, ws, pred):
    """Advance ``(s, M)`` by one sample in place and, with a target, form ``dL/dθ`` in ``ws[6]``.

    Returns ``(outcome, loss)``. ``REJECTED``: the new state is not finite, so
    ``s`` and ``M`` are left as they were and ``pred`` is NaN. ``INFLUENCE_RESET``:
    the state advanced but ``M`` overflowed and was zeroed (no gradient).

    ``M`` is updated in place: once ``D = W_hh M + I`` is formed, every entry of
    the new ``M`` reads only the same entry of the old one, so no second S x P
    buffer (nor a copy of it) is needed.
    """
    s_new, D, cache, logits, dlogits, g_h, grad = ws
    Pc = theta.shape[0] - n_out * (n + 1)
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    if mode == EXACT:
        cell_tangent(cell, theta, n_in, n, x, s, s_new, cache, M, M, D, True)
    else:
        cell_unit_tangent(cell, theta, n_in, n, x, s, s_new, cache, M, D)
    s[:] = s_new
    loss = readout_step(task, theta, Pc, n, n_out, s, y, has_y, logits, pred, dlogits, grad, g_h)
    if not all_finite(M):
        M[:] = 0.0
        return INFLUENCE_RESET, loss
    if has_y and mode == EXACT:
        # dL/dθ_cell = g_h · M_h, accumulated onto the zeroed cell part of grad.
        for k in range(n):
            gk = g_h[k]
            for p in range(Pc):
                grad[p] += gk * M[k, p]
    elif has_y:
        G = n_gates(cell)
        rec = recurrent_width(cell, n)
        for k in range(n):
            scatter_unit_grad(grad, G, n_in, n, rec, k, g_h[k], M[k])
    return APPLIED, loss


@njit(cache=True, error_model="numpy")
def rtrl_step_many(cell, task, mode, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters,
                   H, Ms, X, Y, has_y, slots, reset, ws, out, losses):
    """Test-then-train over records in arrival order; each record's key owns slot ``slots[i]``.

    ``reset[i]`` zeroes the slot first (a new or evicted key). ``losses[i]`` is NaN
    when the record had no target or was rejected.
    """
    grad = ws[6]
    for i in range(X.shape[0]):
        slot = slots[i]
        if reset[i]:
            H[slot] = 0.0
            Ms[slot] = 0.0
        outcome, loss = rtrl_sample(cell, task, mode, n_in, n, n_out, theta, X[i], Y[i], has_y[i],
                                    H[slot], Ms[slot], ws, out[i])
        losses[i] = settle_sample(outcome, has_y[i], loss, opt_kind, theta, grad, opt_state, hyper, counters)


@njit(cache=True, error_model="numpy")
def rtrl_sequence_gradient(cell, task, mode, n_in, n, n_out, theta, X, Y, has_y, width, ws, grad_sum):
    """``grad_sum = Σ_t dL_t/dθ`` over one sequence from a zero state, parameters fixed."""
    s = np.zeros(ws[0].shape[0], theta.dtype)
    M = np.zeros((s.shape[0], width), theta.dtype)
    pred = np.empty(n_out, theta.dtype)
    grad = ws[6]
    grad_sum[:] = 0.0
    total = 0.0
    for t in range(X.shape[0]):
        outcome, loss = rtrl_sample(cell, task, mode, n_in, n, n_out, theta, X[t], Y[t], has_y[t], s, M, ws, pred)
        if outcome != APPLIED:
            grad_sum[:] = np.nan
            return np.nan
        if has_y[t]:
            total += loss
            grad_sum += grad
    return total
