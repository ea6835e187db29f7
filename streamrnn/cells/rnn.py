"""Elman RNN cell with tanh, as ``torch.nn.RNN(nonlinearity="tanh")``.

``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; state ``s = h`` (n values).
"""
import numpy as np
from numba import njit

from .common import accumulate_param_grad, hh_influence, hh_transpose_product, preactivations

N_GATES = 1
STATE_FACTOR = 1   # state size = STATE_FACTOR * n


@njit(cache=True)
def rnn_forward(w, n_in, n, x, s_prev, s_new, cache):
    a_ih = cache[:n]
    a_hh = cache[n:2 * n]
    preactivations(w, 1, n_in, n, x, s_prev, a_ih, a_hh)
    for j in range(n):
        s_new[j] = np.tanh(a_ih[j] + a_hh[j])


@njit(cache=True)
def rnn_tangent(w, n_in, n, x, s_prev, s_new, cache, M_prev, M_new, D):
    """``M_new = dh'/dθ = diag(1 - h'^2) (W_hh M_prev + immediate)``."""
    hh_influence(w, 1, n_in, n, x, s_prev, M_prev, D, n)
    P = D.shape[1]
    for j in range(n):
        d = 1.0 - s_new[j] * s_new[j]
        for p in range(P):
            M_new[j, p] = d * D[j, p]


@njit(cache=True)
def rnn_backward(w, n_in, n, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    """Reverse mode through one step: ``grad += g_new · dh'/dθ``, ``g_prev = g_new · dh'/dh``."""
    for j in range(n):
        da = g_new[j] * (1.0 - s_new[j] * s_new[j])
        da_ih[j] = da
        da_hh[j] = da
    accumulate_param_grad(grad, 1, n_in, n, x, s_prev, da_ih, da_hh)
    hh_transpose_product(w, 1, n_in, n, da_hh, g_prev)
