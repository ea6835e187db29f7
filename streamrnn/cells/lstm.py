"""LSTM cell, as ``torch.nn.LSTM`` (gate order i, f, g, o).

::

    i, f, o = σ(...), g = tanh(...)   each of W_i* x + b_i* + W_h* h + b_h*
    c' = f * c + i * g
    h' = o * tanh(c')

State ``s = (h, c)`` stacked (2n values); the influence matrix covers both.
The cache keeps ``i, f, g, o`` in place of ``a_ih`` and ``tanh(c')`` after them.
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

N_GATES = 4
STATE_FACTOR = 2


@njit(cache=True, error_model="numpy")
def lstm_forward(w, n_in, n, rec, x, s_prev, s_new, cache):
    a_ih = cache[: 4 * n]
    a_hh = cache[4 * n : 8 * n]
    preactivations(w, 4, n_in, n, rec, x, s_prev[:n], a_ih, a_hh)
    for j in range(n):
        i = sigmoid(a_ih[j] + a_hh[j])
        f = sigmoid(a_ih[n + j] + a_hh[n + j])
        g = np.tanh(a_ih[2 * n + j] + a_hh[2 * n + j])
        o = sigmoid(a_ih[3 * n + j] + a_hh[3 * n + j])
        c = f * s_prev[n + j] + i * g
        tc = np.tanh(c)
        cache[j] = i
        cache[n + j] = f
        cache[2 * n + j] = g
        cache[3 * n + j] = o
        cache[4 * n + j] = tc
        s_new[n + j] = c
        s_new[j] = o * tc


@njit(cache=True, error_model="numpy")
def lstm_unit_gates(cache, n, j):
    """``(i, f, g, o, tanh(c'))`` of unit ``j`` from the forward cache."""
    return cache[j], cache[n + j], cache[2 * n + j], cache[3 * n + j], cache[4 * n + j]


@njit(cache=True, error_model="numpy")
def lstm_unit_slopes(cache, n, j, c_prev):
    """``(f, k_i, k_f, k_g, k_o, k_c)`` of unit ``j``: what ``da_i, da_f, da_g`` contribute to ``dc'``,
    what ``da_o`` and ``dc'`` contribute to ``dh'`` (and ``f``, the weight of ``dc``)."""
    i, f, g, o, tc = lstm_unit_gates(cache, n, j)
    return f, g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o), o * (1.0 - tc * tc)


@njit(cache=True, error_model="numpy")
def lstm_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef):
    """Unit j's per-unit influence update (``cells.common``; rows h then c), from
    ``dc' = f dc + c df + i dg + g di`` and ``dh' = o (1 - tanh²c') dc' + tanh(c') do``:
    ``dc' = f dc + β dh + Σ k_g I_g`` and ``dh' = k_c dc' + k_o (w_o dh + I_o)``
    with ``β = Σ_{g in i,f,g} k_g w_g``."""
    f, k_i, k_f, k_g, k_o, k_c = lstm_unit_slopes(cache, n, j, s_prev[n + j])
    beta = (
        k_i * own_recurrent_weight(W_hh, j, j, rec)
        + k_f * own_recurrent_weight(W_hh, n + j, j, rec)
        + k_g * own_recurrent_weight(W_hh, 2 * n + j, j, rec)
    )
    coef[0, 0] = k_c * beta + k_o * own_recurrent_weight(W_hh, 3 * n + j, j, rec)
    coef[0, 1] = k_c * f
    coef[1, 0] = beta
    coef[1, 1] = f
    set_gate_coefficients(coef, 0, 4, 0, k_c * k_i, k_c * k_i, k_c * k_i)
    set_gate_coefficients(coef, 0, 4, 1, k_c * k_f, k_c * k_f, k_c * k_f)
    set_gate_coefficients(coef, 0, 4, 2, k_c * k_g, k_c * k_g, k_c * k_g)
    set_gate_coefficients(coef, 0, 4, 3, k_o, k_o, k_o)
    set_gate_coefficients(coef, 1, 4, 0, k_i, k_i, k_i)
    set_gate_coefficients(coef, 1, 4, 1, k_f, k_f, k_f)
    set_gate_coefficients(coef, 1, 4, 2, k_g, k_g, k_g)
    set_gate_coefficients(coef, 1, 4, 3, 0.0, 0.0, 0.0)


@njit(cache=True, error_model="numpy")
def lstm_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    for j in range(n):
        i, f, g, o, tc = lstm_unit_gates(cache, n, j)
        gh = g_new[j]
        gc = g_new[n + j] + gh * o * (1.0 - tc * tc)
        da_ih[j] = gc * g * i * (1.0 - i)
        da_ih[n + j] = gc * s_prev[n + j] * f * (1.0 - f)
        da_ih[2 * n + j] = gc * i * (1.0 - g * g)
        da_ih[3 * n + j] = gh * tc * o * (1.0 - o)
        g_prev[n + j] = gc * f
    da_hh[:] = da_ih
    accumulate_param_grad(grad, 4, n_in, n, rec, x, s_prev[:n], da_ih, da_hh)
    hh_transpose_product(w, 4, n_in, n, rec, da_hh, g_prev[:n])
