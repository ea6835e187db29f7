"""UORO: Unbiased Online Recurrent Optimization (Tallec & Ollivier, 2018).

RTRL's influence matrix ``M_t = J_t M_{t-1} + I_t`` is replaced by a rank-one
estimate ``s̃_t θ̃_tᵀ`` with ``E[s̃_t θ̃_tᵀ] = M_t``:

    s̃_t = ρ0 J_t s̃_{t-1} + ρ1 ν          θ̃_t = θ̃_{t-1} / ρ0 + (νᵀ I_t) / ρ1

with ν a vector of random signs and ρ0, ρ1 chosen to minimise the variance.
Per key it holds ``s̃`` (S) and ``θ̃`` (P): O(S + P) memory, O(P) time per step
(one state Jacobian-vector product and one reverse pass). The signs come from
a counter-based generator keyed by the model seed and the step index, so a
replay of the same records is bit-identical, also across a save and load.
"""
import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, cell_backward, cell_forward, cell_tangent, n_gates, state_size
from .common import APPLIED, INFLUENCE_RESET, REJECTED, STEPS, all_finite, readout_step, settle_sample

_EPS = 1e-7


def make_workspace(cell, n_in, n, n_out, n_params_cell, n_params, dtype):
    S = state_size(cell, n)
    rows = n_gates(cell) * n
    return (np.zeros(S, dtype), np.zeros(cache_size(cell, n), dtype), np.zeros((rows, 1), dtype),
            np.zeros((S, 1), dtype), np.zeros(S, dtype), np.zeros(S, dtype), np.zeros(rows, dtype),
            np.zeros(rows, dtype), np.zeros(n_params_cell, dtype), np.zeros(n_out, dtype), np.zeros(n_out, dtype),
            np.zeros(n, dtype), np.zeros(n_params, dtype))


@njit(cache=True, error_model="numpy")
def _splitmix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy")
def random_signs(seed, draw, out):
    """``out[k] = ±1``, a pure function of (seed, draw, k)."""
    base = _splitmix64(np.uint64(seed) ^ _splitmix64(np.uint64(draw)))
    for k in range(out.shape[0]):
        out[k] = 1.0 if (_splitmix64(base + np.uint64(k)) >> np.uint64(63)) == np.uint64(1) else -1.0


@njit(cache=True, error_model="numpy")
def _norm(v):
    total = 0.0
    for p in range(v.shape[0]):
        total += v[p] * v[p]
    return np.sqrt(total)


@njit(cache=True, error_model="numpy")
def uoro_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, s, s_tilde, theta_tilde, seed, draw, ws, pred):
    """Advance ``(s, s̃, θ̃)`` by one sample in place; with a target, ``ws[12]`` holds the gradient estimate."""
    s_new, cache, D1, js, nu, g_prev, da_ih, da_hh, vI, logits, dlogits, g_h, grad = ws
    S = s.shape[0]
    Pc = theta_tilde.shape[0]
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    cell_tangent(cell, theta, n_in, n, x, s, s_new, cache, s_tilde.reshape((S, 1)), js, D1, False)
    random_signs(seed, draw, nu)
    vI[:] = 0.0
    cell_backward(cell, theta, n_in, n, x, s, s_new, cache, nu, g_prev, vI, da_ih, da_hh)
    rho0 = np.sqrt((_norm(theta_tilde) + _EPS) / (_norm(js[:, 0]) + _EPS))
    rho1 = np.sqrt((_norm(vI) + _EPS) / (_norm(nu) + _EPS))
    for k in range(S):
        s_tilde[k] = rho0 * js[k, 0] + rho1 * nu[k]
    for p in range(Pc):
        theta_tilde[p] = theta_tilde[p] / rho0 + vI[p] / rho1
    s[:] = s_new
    loss = readout_step(task, theta, Pc, n, n_out, s, x, y, has_y, logits, pred, dlogits, grad, g_h)
    if not (all_finite(s_tilde) and all_finite(theta_tilde)):
        s_tilde[:] = 0.0
        theta_tilde[:] = 0.0
        return INFLUENCE_RESET, loss
    if has_y:
        c = 0.0
        for k in range(n):
            c += g_h[k] * s_tilde[k]
        for p in range(Pc):
            grad[p] += c * theta_tilde[p]
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)   # the daemon overlaps it with Kafka I/O threads
def uoro_step_many(cell, task, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters, seed,
                   H, S_tilde, Theta_tilde, X, Y, has_y, slots, reset, ws, out, losses):
    """Test-then-train over records in arrival order; each record's key owns slot ``slots[i]``."""
    grad = ws[12]
    for i in range(X.shape[0]):
        slot = slots[i]
        if reset[i]:
            H[slot] = 0.0
            S_tilde[slot] = 0.0
            Theta_tilde[slot] = 0.0
        outcome, loss = uoro_sample(cell, task, n_in, n, n_out, theta, X[i], Y[i], has_y[i], H[slot],
                                    S_tilde[slot], Theta_tilde[slot], seed, counters[STEPS], ws, out[i])
        losses[i] = settle_sample(outcome, has_y[i], loss, opt_kind, theta, grad, opt_state, hyper, counters)


@njit(cache=True, error_model="numpy")
def uoro_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, seed, ws, grad_sum):
    """``Σ_t`` of UORO's gradient estimates over one sequence from a zero state, parameters fixed;
    the signs of step t are draw t of ``seed``."""
    S = ws[0].shape[0]
    s = np.zeros(S, theta.dtype)
    s_tilde = np.zeros(S, theta.dtype)
    theta_tilde = np.zeros(ws[8].shape[0], theta.dtype)
    pred = np.empty(n_out, theta.dtype)
    grad = ws[12]
    grad_sum[:] = 0.0
    total = 0.0
    for t in range(X.shape[0]):
        outcome, loss = uoro_sample(cell, task, n_in, n, n_out, theta, X[t], Y[t], has_y[t], s, s_tilde,
                                    theta_tilde, seed, t, ws, pred)
        if outcome != APPLIED:
            grad_sum[:] = np.nan
            return np.nan
        if has_y[t]:
            total += loss
            grad_sum += grad
    return total
