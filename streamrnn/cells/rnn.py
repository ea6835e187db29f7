"""Elman RNN cell with tanh, as ``torch.nn.RNN(nonlinearity="tanh")``.

``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; state ``s = h`` (n values).
"""

import numpy as np
from numba import njit

from .common import (
    accumulate_param_grad,
    hh_transpose_product,
    own_recurrent_weight,
    preactivations,
    set_gate_coefficients,
)

N_GATES = 1
STATE_FACTOR = 1  # state size = STATE_FACTOR * n


@njit(cache=True, error_model="numpy")
def rnn_forward(w, n_in, n, rec, x, s_prev, s_new, cache):
    a_ih = cache[:n]
    a_hh = cache[n : 2 * n]
    preactivations(w, 1, n_in, n, rec, x, s_prev, a_ih, a_hh)
    for j in range(n):
        s_new[j] = np.tanh(a_ih[j] + a_hh[j])


@njit(cache=True, error_model="numpy")
def rnn_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef):
    """Unit j's per-unit influence update (``cells.common``): ``dh_j' = d (w_jj dh_j + I)``."""
    d = 1.0 - s_new[j] * s_new[j]
    coef[0, 0] = d * own_recurrent_weight(W_hh, j, j, rec)
    set_gate_coefficients(coef, 0, 1, 0, d, d, d)


@njit(cache=True, error_model="numpy")
def rnn_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    """Reverse mode through one step: ``grad += g_new · dh'/dθ``, ``g_prev = g_new · dh'/dh``."""
    for j in range(n):
        da = g_new[j] * (1.0 - s_new[j] * s_new[j])
        da_ih[j] = da
        da_hh[j] = da
    accumulate_param_grad(grad, 1, n_in, n, rec, x, s_prev, da_ih, da_hh)
    hh_transpose_product(w, 1, n_in, n, rec, da_hh, g_prev)
