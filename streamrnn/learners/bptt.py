"""Full backpropagation through time over one sequence: the reference gradient.

Stores every state and cache of the forward pass, then runs the cells' reverse-mode kernels from the
last step to the first (through every layer of a stack, top first: :mod:`streamrnn.cells.stack`).
Memory O(T (S + C)).
"""

import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, n_gates, state_size
from ..cells.stack import stack_backward, stack_forward, top_offset
from .common import readout_step


@njit(cache=True, error_model="numpy")
def bptt_sequence_gradient(cell, task, n_in, n, n_out, theta, Pc, X, Y, has_y, s0, grad_sum):
    """``grad_sum = Σ_t dL_t/dθ`` over one sequence from state ``s0`` (held constant); returns ``Σ_t L_t``.

    ``s0`` is the (composite) state of the model: its length gives the stack's depth."""
    T = X.shape[0]
    S = s0.shape[0]
    C = cache_size(cell, n) * (S // state_size(cell, n))
    top = top_offset(cell, n, s0)
    rows = n_gates(cell) * n
    dt = theta.dtype
    states = np.zeros((T + 1, S), dt)
    states[0] = s0
    caches = np.zeros((T, C), dt)
    g_hs = np.zeros((T, n), dt)  # dL_t/dh_t through the readout
    logits = np.empty(n_out, dt)
    pred = np.empty(n_out, dt)
    dlogits = np.empty(n_out, dt)
    grad_sum[:] = 0.0
    step_grad = np.zeros_like(grad_sum)
    total = 0.0
    for t in range(T):
        stack_forward(cell, theta, n_in, n, X[t], states[t], states[t + 1], caches[t])
        if has_y[t]:
            total += readout_step(
                task,
                theta,
                Pc,
                n,
                n_out,
                states[t + 1, top:],
                X[t],
                Y[t],
                True,
                logits,
                pred,
                dlogits,
                step_grad,
                g_hs[t],
            )
            grad_sum[Pc:] += step_grad[Pc:]
    g_s = np.zeros(S, dt)
    g_prev = np.zeros(S, dt)
    da_ih = np.empty(rows, dt)
    da_hh = np.empty(rows, dt)
    dx = np.empty(max(n_in, n) if S > state_size(cell, n) else 0, dt)
    for t in range(T - 1, -1, -1):
        for k in range(n):
            g_s[top + k] += g_hs[t, k]
        stack_backward(
            cell,
            theta,
            n_in,
            n,
            X[t],
            states[t],
            states[t + 1],
            caches[t],
            g_s,
            g_prev,
            grad_sum,
            da_ih,
            da_hh,
            dx,
            False,
        )
        g_s[:] = g_prev
    return total


@njit(cache=True, error_model="numpy")
def sequence_loss(cell, task, n_in, n, n_out, theta, Pc, X, Y, has_y, n_layers=1):
    """``Σ_t L_t`` over one sequence from a zero state (forward only; for finite differences)."""
    S = state_size(cell, n) * n_layers
    dt = theta.dtype
    s = np.zeros(S, dt)
    s_new = np.zeros(S, dt)
    cache = np.zeros(cache_size(cell, n) * n_layers, dt)
    logits = np.empty(n_out, dt)
    pred = np.empty(n_out, dt)
    dlogits = np.empty(n_out, dt)
    scratch = np.empty(theta.shape[0], dt)
    g_h = np.empty(n, dt)
    top = S - state_size(cell, n)
    total = 0.0
    for t in range(X.shape[0]):
        stack_forward(cell, theta, n_in, n, X[t], s, s_new, cache)
        s[:] = s_new
        if has_y[t]:
            total += readout_step(
                task, theta, Pc, n, n_out, s[top:], X[t], Y[t], True, logits, pred, dlogits, scratch, g_h
            )
    return total
