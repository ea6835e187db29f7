"""SnAp-1: RTRL restricted to each unit's own parameters, O(P) memory and time per step.

RTRL's influence matrix ``M_t = ds_t/dθ`` (S x P) costs O(S P) memory per key.
SnAp-1 (Menick et al., 2021) keeps only the entries the immediate partial
``I_t`` can make non-zero in one step: the influence of unit ``j``'s own
parameters ``θ_j`` (its gate rows of every block) on unit ``j``'s state. So a
key holds, per state row, one unit's parameters, ``S x (P/n)`` values, in the
compact layout of :mod:`streamrnn.cells.common`, and

    M_t[j] = J_t[j, j] M_{t-1}[j] + I_t[j]        (the diagonal of J, restricted)

is O(P) per step. For the PyTorch cells (rnn, gru, lstm) this is an
approximation; for the element-wise cells (ernn, egru, elstm, dlru) no unit
ever reads another, so no other entry of ``M`` is non-zero and it is exact
RTRL, which is what ``Model(learner="rtrl")`` runs for them.
"""
import numpy as np
from numba import njit

from ..cells.common import unit_block
from ..cells.dispatch import (cache_size, cell_forward, cell_unit_tangent, n_gates, recurrent_width, state_size,
                              unit_coefficient_shape)
from .common import APPLIED, INFLUENCE_RESET, REJECTED, all_finite, cell_params_end, readout_step, settle_sample


@njit(cache=True, error_model="numpy")
def influence_width(cell, n_in, n):
    """Columns of a key's compact influence matrix: one unit's parameters, ``G (n_in + rec + 2)``."""
    return n_gates(cell) * unit_block(n_in, recurrent_width(cell, n))


def make_workspace(cell, n_in, n, n_out, n_params, dtype):
    """Scratch arrays for one step, allocated once per Model: new state, the per-unit update's
    coefficients, cache, logits and their gradient, dL/dh, and ``ws[6]``, the gradient."""
    return (np.zeros(state_size(cell, n), dtype), np.zeros(unit_coefficient_shape(cell, n), dtype),
            np.zeros(cache_size(cell, n), dtype), np.zeros(n_out, dtype), np.zeros(n_out, dtype),
            np.zeros(n, dtype), np.zeros(n_params, dtype))


@njit(cache=True, error_model="numpy")
def snap1_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, s, M, ws, pred):
    """Advance ``(s, M)`` by one sample in place and, with a target, form ``dL/dθ`` in ``ws[6]``.

    Returns ``(outcome, loss)`` as :func:`streamrnn.learners.rtrl.rtrl_sample`.

    One pass over ``M``: the readout runs first, so ``dL/dh`` is known when each
    unit's row is updated, and the row's gradient is written (not accumulated:
    each cell parameter belongs to one unit) and its finiteness checked in the
    same pass. Only the readout's part of ``grad`` is zeroed.
    """
    s_new, coef, cache, logits, dlogits, g_h, grad = ws
    Pc = cell_params_end(cell, n_in, n)
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    loss = readout_step(task, theta[Pc:], 0, n, n_out, s_new, x, y, has_y, logits, pred, dlogits, grad[Pc:], g_h)
    finite = cell_unit_tangent(cell, theta, n_in, n, x, s, s_new, cache, M, coef, grad, g_h, has_y)
    s[:] = s_new
    if not finite:
        M[:] = 0.0
        return INFLUENCE_RESET, loss
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)   # the daemon overlaps it with Kafka I/O threads
def snap1_step_many(cell, task, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters,
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
        outcome, loss = snap1_sample(cell, task, n_in, n, n_out, theta, X[i], Y[i], has_y[i],
                                     H[slot], Ms[slot], ws, out[i])
        losses[i] = settle_sample(outcome, has_y[i], loss, opt_kind, theta, grad, opt_state, hyper, counters)


@njit(cache=True, error_model="numpy")
def snap1_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, ws, grad_sum):
    """``grad_sum = Σ_t`` of SnAp-1's ``dL_t/dθ`` over one sequence from a zero state, parameters fixed."""
    s = np.zeros(ws[0].shape[0], theta.dtype)
    M = np.zeros((s.shape[0], influence_width(cell, n_in, n)), theta.dtype)
    pred = np.empty(n_out, theta.dtype)
    grad = ws[6]
    grad_sum[:] = 0.0
    total = 0.0
    for t in range(X.shape[0]):
        outcome, loss = snap1_sample(cell, task, n_in, n, n_out, theta, X[t], Y[t], has_y[t], s, M, ws, pred)
        if outcome != APPLIED:
            grad_sum[:] = np.nan
            return np.nan
        if has_y[t]:
            total += loss
            grad_sum += grad
    return total
