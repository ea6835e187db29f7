"""Real-Time Recurrent Learning: exact online gradients, no stored history.

Per sequence (key) RTRL carries the influence matrix ``M_t = ds_t/dθ_cell``
(S x P) forward: ``M_t = J_t M_{t-1} + I_t``. At a step with a target the
gradient is ``dL_t/dθ = (dL_t/dh_t) M_t`` plus the readout's own part. The cell
kernels compute ``M_t`` in one BLAS product ``W_hh M_{t-1}`` (O(G n^2 P)) and
O(G n P) element-wise work that exploits the sparse immediate partial.

For the element-wise cells the only non-zero entries of ``M`` are each unit's
own parameters, so the Model runs exact RTRL for them in the compact O(P) form
of :mod:`streamrnn.learners.snap1`; this dense form serves them too (checks,
``compare.gradient_alignment``).
"""
import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, cell_forward, cell_tangent, n_gates, state_size
from .common import APPLIED, INFLUENCE_RESET, REJECTED, all_finite, cell_params_end, readout_step, settle_sample


def make_workspace(cell, n_in, n, n_out, n_params_cell, n_params, dtype):
    """Scratch arrays for one RTRL step, allocated once per Model (``D`` is large for big n);
    ``ws[6]`` is the gradient."""
    return (np.zeros(state_size(cell, n), dtype), np.zeros((n_gates(cell) * n, n_params_cell), dtype),
            np.zeros(cache_size(cell, n), dtype), np.zeros(n_out, dtype), np.zeros(n_out, dtype),
            np.zeros(n, dtype), np.zeros(n_params, dtype))


@njit(cache=True, error_model="numpy")
def rtrl_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, s, M, ws, pred):
    """Advance ``(s, M)`` by one sample in place and, with a target, form ``dL/dθ`` in ``ws[6]``.

    Returns ``(outcome, loss)``. ``REJECTED``: the new state is not finite, so
    ``s`` and ``M`` are left as they were and ``pred`` is NaN. ``INFLUENCE_RESET``:
    the state advanced but ``M`` overflowed and was zeroed (no gradient).

    ``M`` is updated in place: once ``D = W_hh M + I`` is formed, every entry of
    the new ``M`` reads only the same entry of the old one, so no second S x P
    buffer (nor a copy of it) is needed.
    """
    s_new, D, cache, logits, dlogits, g_h, grad = ws
    Pc = cell_params_end(cell, n_in, n)
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    cell_tangent(cell, theta, n_in, n, x, s, s_new, cache, M, M, D, True)
    s[:] = s_new
    loss = readout_step(task, theta, Pc, n, n_out, s, x, y, has_y, logits, pred, dlogits, grad, g_h)
    if not all_finite(M):
        M[:] = 0.0
        return INFLUENCE_RESET, loss
    if has_y:
        # dL/dθ_cell = g_h · M_h, accumulated onto the zeroed cell part of grad.
        for k in range(n):
            gk = g_h[k]
            for p in range(Pc):
                grad[p] += gk * M[k, p]
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)   # the daemon overlaps it with Kafka I/O threads
def rtrl_step_many(cell, task, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters,
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
        outcome, loss = rtrl_sample(cell, task, n_in, n, n_out, theta, X[i], Y[i], has_y[i],
                                    H[slot], Ms[slot], ws, out[i])
        losses[i] = settle_sample(outcome, has_y[i], loss, opt_kind, theta, grad, opt_state, hyper, counters)


@njit(cache=True, error_model="numpy")
def rtrl_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, ws, grad_sum):
    """``grad_sum = Σ_t dL_t/dθ`` over one sequence from a zero state, parameters fixed."""
    s = np.zeros(ws[0].shape[0], theta.dtype)
    M = np.zeros((s.shape[0], ws[1].shape[1]), theta.dtype)
    pred = np.empty(n_out, theta.dtype)
    grad = ws[6]
    grad_sum[:] = 0.0
    total = 0.0
    for t in range(X.shape[0]):
        outcome, loss = rtrl_sample(cell, task, n_in, n, n_out, theta, X[t], Y[t], has_y[t], s, M, ws, pred)
        if outcome != APPLIED:
            grad_sum[:] = np.nan
            return np.nan
        if has_y[t]:
            total += loss
            grad_sum += grad
    return total
