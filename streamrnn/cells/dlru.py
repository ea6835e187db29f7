"""Diagonal linear recurrent unit with a nonlinear readout ("dlru").

::

    λ  = σ(ν)                                   per unit, in (0, 1): the recurrence is a stable decay
    s' = λ ⊙ s + W_ih x + b_ih + b_hh           linear, diagonal: only s recurs
    h' = tanh(s')                               what the readout (and a layer above) sees

Parameters, in the shared layout of :mod:`streamrnn.cells.common` with one gate
block and a recurrent width of 1: ``weight_ih_l0`` (n, n_in), ``weight_hh_l0``
(n,) holding the decay logits ν, ``bias_ih_l0`` and ``bias_hh_l0`` (n,). Their
PyTorch-style initialisation U(−1/√n, 1/√n) starts every λ near ½.

State ``(h, s)`` stacked (2n values), as LSTM's ``(h, c)``, so readouts, BPTT
and every learner read ``h`` from the first n entries. No unit reads another
and ``h`` does not recur, so ``ds'_j/dθ`` is non-zero only for unit j's own
parameters: exact RTRL runs in the O(P) per-unit form. The cache keeps λ.
"""

import numpy as np
from numba import njit

from .common import param_views, set_gate_coefficients, sigmoid

N_GATES = 1
STATE_FACTOR = 2


@njit(cache=True, error_model="numpy")
def dlru_forward(w, n_in, n, rec, x, s_prev, s_new, cache):
    W_ih, nu, b_ih, b_hh = param_views(w, 1, n_in, n, 1)
    for j in range(n):
        acc = b_ih[j] + b_hh[j]
        for k in range(n_in):
            acc += W_ih[j, k] * x[k]
        lam = sigmoid(nu[j, 0])
        s = lam * s_prev[n + j] + acc
        cache[j] = lam
        s_new[n + j] = s
        s_new[j] = np.tanh(s)


@njit(cache=True, error_model="numpy")
def dlru_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M_prev, M_new, immediate):
    """``M_new = J M_prev (+ I)``: ``ds' = λ ds (+ I)``, ``dh' = (1 - h'^2) ds'`` (in place allowed)."""
    o_hh = n * n_in
    o_bih = o_hh + n
    o_bhh = o_bih + n
    for j in range(n):
        lam = cache[j]
        Ms_prev = M_prev[n + j]
        Ms = M_new[n + j]
        for p in range(Ms.shape[0]):
            Ms[p] = lam * Ms_prev[p]
        if immediate:
            for k in range(n_in):
                Ms[j * n_in + k] += x[k]
            Ms[o_hh + j] += lam * (1.0 - lam) * s_prev[n + j]
            Ms[o_bih + j] += 1.0
            Ms[o_bhh + j] += 1.0
        d = 1.0 - s_new[j] * s_new[j]
        Mh = M_new[j]
        for p in range(Ms.shape[0]):
            Mh[p] = d * Ms[p]


@njit(cache=True, error_model="numpy")
def dlru_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef):
    """Unit j's per-unit influence update (``cells.common``; rows h then s, recurrent input s):
    ``ds' = λ ds + I`` with ``∂s'/∂ν = λ (1 - λ) s``, ``dh' = (1 - h'^2) ds'``."""
    lam = cache[j]
    slope = lam * (1.0 - lam)
    d = 1.0 - s_new[j] * s_new[j]
    coef[0, 0] = 0.0
    coef[0, 1] = d * lam
    coef[1, 0] = 0.0
    coef[1, 1] = lam
    set_gate_coefficients(coef, 0, 1, 0, d, d * slope, d)
    set_gate_coefficients(coef, 1, 1, 0, 1.0, slope, 1.0)


@njit(cache=True, error_model="numpy")
def dlru_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    """Reverse mode through one step: ``grad += g_new · d(h', s')/dθ``, ``g_prev = g_new · d(h', s')/d(h, s)``.

    ``da_ih`` receives dL/ds' (the gradient of ``W_ih x``, which stacked layers pass down to x)."""
    o_hh = n * n_in
    o_bih = o_hh + n
    o_bhh = o_bih + n
    for j in range(n):
        lam = cache[j]
        da = g_new[n + j] + g_new[j] * (1.0 - s_new[j] * s_new[j])
        da_ih[j] = da
        da_hh[j] = da
        if da != 0.0:
            for k in range(n_in):
                grad[j * n_in + k] += da * x[k]
        grad[o_hh + j] += da * lam * (1.0 - lam) * s_prev[n + j]
        grad[o_bih + j] += da
        grad[o_bhh + j] += da
        g_prev[j] = 0.0
        g_prev[n + j] = da * lam
