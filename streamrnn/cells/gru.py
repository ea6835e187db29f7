"""GRU cell, as ``torch.nn.GRU`` (gate order r, z, n).

::

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

State ``s = h`` (n values). The cache keeps ``r, z, n`` in place of ``a_ih`` and
``W_hn h + b_hn`` in the last block of ``a_hh``.
"""

import numpy as np
from numba import njit

from .common import (
    accumulate_param_grad,
    hh_transpose_product,
    own_recurrent_weight,
    preactivations,
    set_gate_coefficients,
    sigmoid,
)

N_GATES = 3
STATE_FACTOR = 1


@njit(cache=True, error_model="numpy")
def gru_forward(w, n_in, n, rec, x, s_prev, s_new, cache):
    a_ih = cache[: 3 * n]
    a_hh = cache[3 * n : 6 * n]
    preactivations(w, 3, n_in, n, rec, x, s_prev, a_ih, a_hh)
    for j in range(n):
        r = sigmoid(a_ih[j] + a_hh[j])
        z = sigmoid(a_ih[n + j] + a_hh[n + j])
        nn = np.tanh(a_ih[2 * n + j] + r * a_hh[2 * n + j])
        cache[j] = r
        cache[n + j] = z
        cache[2 * n + j] = nn
        s_new[j] = (1.0 - z) * nn + z * s_prev[j]


@njit(cache=True, error_model="numpy")
def gru_unit_gates(cache, n, j):
    """``(r, z, n, W_hn h + b_hn)`` of unit ``j`` from the forward cache."""
    return cache[j], cache[n + j], cache[2 * n + j], cache[5 * n + j]


@njit(cache=True, error_model="numpy")
def gru_unit_slopes(cache, n, j, h_prev):
    """``(r, z, c, c_n, c_z)`` of unit ``j``: ``c = hn r (1 - r)`` carries ``da_r`` into ``d(r hn)``;
    ``c_n = (1 - z)(1 - n^2)`` and ``c_z = (h - n) z (1 - z)`` carry ``da_n`` and ``da_z`` into ``dh'``."""
    r, z, nn, hn = gru_unit_gates(cache, n, j)
    return r, z, hn * r * (1.0 - r), (1.0 - z) * (1.0 - nn * nn), (h_prev - nn) * z * (1.0 - z)


@njit(cache=True, error_model="numpy")
def gru_direct_slope(cache, n, j):
    """``z``: the slope of ``h' = ... + z h`` on ``h_j`` that does not pass through ``W_hh``."""
    return cache[n + j]


@njit(cache=True, error_model="numpy")
def gru_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef):
    """Unit j's per-unit influence update (``cells.common``):
    ``dh' = c_n (r d(hn) + c d a_r + d a_in) + c_z d a_z + z dh`` with ``c = hn r (1 - r)``."""
    r, z, c, c_n, c_z = gru_unit_slopes(cache, n, j, s_prev[j])
    w_r = own_recurrent_weight(W_hh, j, j, rec)
    w_z = own_recurrent_weight(W_hh, n + j, j, rec)
    w_n = own_recurrent_weight(W_hh, 2 * n + j, j, rec)
    coef[0, 0] = c_n * (r * w_n + c * w_r) + c_z * w_z + z
    set_gate_coefficients(coef, 0, 3, 0, c_n * c, c_n * c, c_n * c)
    set_gate_coefficients(coef, 0, 3, 1, c_z, c_z, c_z)
    set_gate_coefficients(coef, 0, 3, 2, c_n, c_n * r, c_n * r)


@njit(cache=True, error_model="numpy")
def gru_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    for j in range(n):
        r, z, nn, hn = gru_unit_gates(cache, n, j)
        g = g_new[j]
        da_n = g * (1.0 - z) * (1.0 - nn * nn)
        da_r = da_n * hn * r * (1.0 - r)
        da_z = g * (s_prev[j] - nn) * z * (1.0 - z)
        da_ih[j] = da_r
        da_hh[j] = da_r
        da_ih[n + j] = da_z
        da_hh[n + j] = da_z
        da_ih[2 * n + j] = da_n
        da_hh[2 * n + j] = da_n * r
    accumulate_param_grad(grad, 3, n_in, n, rec, x, s_prev, da_ih, da_hh)
    hh_transpose_product(w, 3, n_in, n, rec, da_hh, g_prev)
    for j in range(n):
        g_prev[j] += g_new[j] * cache[n + j]
