"""Full BPTT over a minibatch for stacked, optionally bidirectional recurrent layers.

Arrays are time-major, ``(T, B, ·)``. The recurrent stack has ``L`` layers of
``D`` directions (1 or 2); layer-direction ``(l, d)`` owns the cell parameters
``theta[offs[l*D + d] : offs[l*D + d] + sizes[l*D + d]]`` in the layout of
:mod:`streamrnn.cells.common`. Layer 0 reads ``X``; layer ``l > 0`` reads the
concatenation of both directions of layer ``l - 1`` (as ``torch.nn.GRU``).
The reverse direction runs ``t = T-1 .. 0``; its step ``k`` handles time
``T-1-k``. Every direction starts from a zero state unless an initial state
``S0`` is given (an encoder-decoder's decoder starts from the encoder's final
states); :func:`stack_backward` then also returns ``dL/dS0`` and accepts a
gradient on the final states. Two directions may share their parameters
(``offs[l*D] == offs[l*D + 1]``, tied directions): their gradients then add up
in the shared block. Each step calls the per-step cell kernels
``cell_forward`` / ``cell_backward`` of :mod:`streamrnn.cells.dispatch`; the
only extra piece is ``dL/dx = W_ih^T da_ih``, the gradient into a layer's input.
"""

import numpy as np
from numba import njit

from ..cells.common import param_views
from ..cells.dispatch import cache_size, cell_backward, cell_forward, n_gates, recurrent_width, state_size
from ..losses import loss_and_grad


@njit(cache=True, error_model="numpy")
def _time_of(d, k, T):
    return k if d == 0 else T - 1 - k


@njit(cache=True, error_model="numpy")
def stack_forward(cell, L, D, n, theta, offs, X, states, caches, outputs, S0=None):
    """Run the stack. ``states``: (L, D, T+1, B, S), ``caches``: (L, D, T, B, C),
    ``outputs``: (L, T, B, D*n) -- layer ``l``'s output at time t, directions side by side.

    ``S0`` (L, D, B, S), optional: the initial state of every layer-direction (zero without it);
    ``states[l, d, 0] = S0[l, d]``, and ``states[l, d, T]`` is the final state of either direction."""
    T, B = X.shape[0], X.shape[1]
    xbuf = np.empty(max(X.shape[2], D * n), theta.dtype)
    for l in range(L):
        n_in = X.shape[2] if l == 0 else D * n
        for d in range(D):
            ld = l * D + d
            Pc = n_gates(cell) * n * (n_in + recurrent_width(cell, n) + 2)
            w = theta[offs[ld] : offs[ld] + Pc]
            for b in range(B):
                if S0 is None:
                    states[l, d, 0, b, :] = 0.0
                else:
                    states[l, d, 0, b, :] = S0[l, d, b]
                for k in range(T):
                    t = _time_of(d, k, T)
                    x = xbuf[:n_in]
                    x[:] = X[t, b] if l == 0 else outputs[l - 1, t, b]
                    cell_forward(cell, w, n_in, n, x, states[l, d, k, b], states[l, d, k + 1, b], caches[l, d, k, b])
                    for j in range(n):
                        outputs[l, t, b, d * n + j] = states[l, d, k + 1, b, j]


@njit(cache=True, error_model="numpy")
def stack_backward(cell, L, D, n, theta, offs, X, states, caches, outputs, G_top, grad, G_X, G_ST=None, G_S0=None):
    """Reverse mode through the stack: ``grad += dL/dθ`` (cell blocks only) and ``G_X = dL/dX``,
    given ``G_top = dL/d(outputs[L-1])`` (T, B, D*n). ``G_top`` is not written.

    Optional, both (L, D, B, S): ``G_ST`` is ``dL/d(states[l, d, T])``, a loss term on the final
    states (an encoder read by a decoder), added to what flows back through the outputs; ``G_S0``
    receives ``dL/dS0``, the gradient w.r.t. the initial states (``states[l, d, 0]``)."""
    T, B = X.shape[0], X.shape[1]
    S = state_size(cell, n)
    rows = n_gates(cell) * n
    rec = recurrent_width(cell, n)
    dt = theta.dtype
    g_s = np.zeros(S, dt)
    g_prev = np.zeros(S, dt)
    da_ih = np.empty(rows, dt)
    da_hh = np.empty(rows, dt)
    G_in = G_top
    xbuf = np.empty(max(X.shape[2], D * n), dt)
    for l in range(L - 1, -1, -1):
        n_in = X.shape[2] if l == 0 else D * n
        G_below = G_X if l == 0 else np.zeros((T, B, D * n), dt)
        if l == 0:
            G_X[:] = 0.0
        for d in range(D):
            ld = l * D + d
            Pc = n_gates(cell) * n * (n_in + rec + 2)
            w = theta[offs[ld] : offs[ld] + Pc]
            gw = grad[offs[ld] : offs[ld] + Pc]
            W_ih = param_views(w, n_gates(cell), n_in, n, rec)[0]
            for b in range(B):
                if G_ST is None:
                    g_s[:] = 0.0
                else:
                    g_s[:] = G_ST[l, d, b]
                for k in range(T - 1, -1, -1):
                    t = _time_of(d, k, T)
                    for j in range(n):
                        g_s[j] += G_in[t, b, d * n + j]
                    x = xbuf[:n_in]
                    x[:] = X[t, b] if l == 0 else outputs[l - 1, t, b]
                    cell_backward(
                        cell,
                        w,
                        n_in,
                        n,
                        x,
                        states[l, d, k, b],
                        states[l, d, k + 1, b],
                        caches[l, d, k, b],
                        g_s,
                        g_prev,
                        gw,
                        da_ih,
                        da_hh,
                    )
                    for r in range(rows):
                        g = da_ih[r]
                        if g != 0.0:
                            for i in range(n_in):
                                G_below[t, b, i] += W_ih[r, i] * g
                    g_s[:] = g_prev
                if G_S0 is not None:
                    G_S0[l, d, b, :] = g_s
        G_in = G_below


def allocate(cell, L, D, n, T, B, dtype):
    """Scratch arrays for :func:`stack_forward` (cell is the integer id)."""
    S = state_size(cell, n)
    C = cache_size(cell, n)
    return (np.zeros((L, D, T + 1, B, S), dtype), np.zeros((L, D, T, B, C), dtype), np.zeros((L, T, B, D * n), dtype))


@njit(cache=True, error_model="numpy")
def batch_loss(task, logits, Y, dlogits):
    """Σ over rows of the per-step loss of :mod:`streamrnn.losses`; ``dlogits`` per row."""
    total = 0.0
    for i in range(logits.shape[0]):
        total += loss_and_grad(task, logits[i], Y[i], dlogits[i])
    return total
