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

from .common import accumulate_param_grad, hh_influence, hh_transpose_product, preactivations, sigmoid

N_GATES = 4
STATE_FACTOR = 2


@njit(cache=True)
def lstm_forward(w, n_in, n, x, s_prev, s_new, cache):
    a_ih = cache[:4 * n]
    a_hh = cache[4 * n:8 * n]
    preactivations(w, 4, n_in, n, x, s_prev[:n], a_ih, a_hh)
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


@njit(cache=True)
def lstm_tangent(w, n_in, n, x, s_prev, s_new, cache, M_prev, M_new, D):
    """``M_new = d(h', c')/dθ`` from ``M_prev = d(h, c)/dθ``."""
    hh_influence(w, 4, n_in, n, x, s_prev[:n], M_prev[:n], D, 4 * n)
    P = D.shape[1]
    for j in range(n):
        i = cache[j]
        f = cache[n + j]
        g = cache[2 * n + j]
        o = cache[3 * n + j]
        tc = cache[4 * n + j]
        c = s_prev[n + j]
        k_i = g * i * (1.0 - i)
        k_f = c * f * (1.0 - f)
        k_g = i * (1.0 - g * g)
        k_o = tc * o * (1.0 - o)
        k_c = o * (1.0 - tc * tc)
        for p in range(P):
            dc = f * M_prev[n + j, p] + k_f * D[n + j, p] + k_g * D[2 * n + j, p] + k_i * D[j, p]
            M_new[n + j, p] = dc
            M_new[j, p] = k_c * dc + k_o * D[3 * n + j, p]


@njit(cache=True)
def lstm_backward(w, n_in, n, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    for j in range(n):
        i = cache[j]
        f = cache[n + j]
        g = cache[2 * n + j]
        o = cache[3 * n + j]
        tc = cache[4 * n + j]
        gh = g_new[j]
        gc = g_new[n + j] + gh * o * (1.0 - tc * tc)
        da_ih[j] = gc * g * i * (1.0 - i)
        da_ih[n + j] = gc * s_prev[n + j] * f * (1.0 - f)
        da_ih[2 * n + j] = gc * i * (1.0 - g * g)
        da_ih[3 * n + j] = gh * tc * o * (1.0 - o)
        g_prev[n + j] = gc * f
    da_hh[:] = da_ih
    accumulate_param_grad(grad, 4, n_in, n, x, s_prev[:n], da_ih, da_hh)
    hh_transpose_product(w, 4, n_in, n, da_hh, g_prev[:n])
