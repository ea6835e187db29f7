"""Stacked layers: ``L`` cells of one kind, layer ``l > 0`` reading layer ``l - 1``'s hidden output of
the same step (as ``torch.nn.RNN/GRU/LSTM(num_layers=L)``).

The stack is one composite recurrent state ``s = [s^0; s^1; …; s^{L-1}]`` (``L S`` values, ``S =
state_size(cell, n)``; each layer's ``(h, c)`` or ``(h, s)`` together), one composite cache (``L C``)
and one flat parameter block ``θ = [θ^0 | θ^1 | …]`` in PyTorch's order (``weight_ih_l0, weight_hh_l0,
bias_ih_l0, bias_hh_l0, weight_ih_l1, …``): layer 0 reads the ``n_in`` inputs, the others the ``n``
hidden outputs below. The readout reads the top layer's ``h``, ``s[(L-1) S : (L-1) S + n]``. A kernel
reads ``L`` off the length of the state it is given (:func:`stack_depth`), so every learner keeps
its signature; with ``L = 1`` each function here is the single cell's, operation for operation.

Forward mode (exact RTRL). ``h^l_t = f_l(s^l_{t-1}, h^{l-1}_t)``, so the influence of layer ``k``'s
parameters on layer ``l``'s state, ``M^{l,k} = ds^l/dθ^k``, is zero for ``k > l`` and otherwise

    M^{l,k}_t = J^l_t M^{l,k}_{t-1} + X^l_t M^{l-1,k}_t[:n]   (+ I^l_t when k = l)

with ``J^l = ds^l_t/ds^l_{t-1}``, ``X^l = ds^l_t/dx^l`` (the cell's input Jacobian,
:func:`~streamrnn.cells.dispatch.input_jacobian`) and ``I^l`` the immediate partial: the
block-lower-triangular influence of the composite state. Each block ``(l, k)`` is a C-contiguous
``(S, P_k)`` array in one flat buffer (blocks of lower layers first, then by ``k``;
:func:`influence_offset`), so the single cell's tangent (``dispatch.cell_tangent``) updates its ``J M
(+ I)`` part unchanged and :func:`add_input_tangent` adds ``X M^{l-1,k}``, one more product.
Per key ``S Σ_{l<L} Σ_{k≤l} P_k`` values; per step ``Σ_l Σ_{k≤l} (R n² + n S) P_k`` multiply-adds.

Reverse mode (BPTT, TBPTT). Through one step, top layer first: layer ``l``'s backward kernel gives
``dL/ds^l_{t-1}``, ``dL/dθ^l`` and, in ``da_ih``, ``dL/d(W_ih x)``; ``dL/dx^l = W_ih^T da_ih``
(``common.ih_transpose_product``) is added to ``dL/dh^{l-1}_t`` before layer ``l - 1`` runs.
"""

import numpy as np
from numba import njit
from numba.extending import overload

from .common import GEMM_MIN_WIDTH, ih_transpose_product, jacobian_product, n_cell_params
from .dispatch import (
    cache_size,
    cell_backward,
    cell_forward,
    cell_tangent,
    input_jacobian,
    n_gates,
    recurrent_width,
    state_size,
)


@njit(cache=True, error_model="numpy")
def layer_inputs(n_in, n, layer):
    """Input width of ``layer``: the stack's inputs for layer 0, the hidden output below otherwise."""
    return n_in if layer == 0 else n


@njit(cache=True, error_model="numpy")
def layer_params(cell, n_in, n, layer):
    """``P_l``: parameters of one layer."""
    return n_cell_params(n_gates(cell), layer_inputs(n_in, n, layer), n, recurrent_width(cell, n))


@njit(cache=True, error_model="numpy")
def layer_offset(cell, n_in, n, layer):
    """Offset of ``layer``'s parameters in ``theta`` (``layer = L``: the stack's size, the readout's offset)."""
    if layer == 0:
        return 0
    return layer_params(cell, n_in, n, 0) + (layer - 1) * layer_params(cell, n_in, n, 1)


@njit(cache=True, error_model="numpy")
def stack_params(cell, n_in, n, n_layers):
    """``P_cell`` of an ``n_layers`` stack: where the readout starts in ``theta``."""
    return layer_offset(cell, n_in, n, n_layers)


@njit(cache=True, error_model="numpy")
def stack_depth(cell, n, s):
    """``L``, from a composite state (or any array of ``L S`` rows)."""
    return s.shape[0] // state_size(cell, n)


@njit(cache=True, error_model="numpy")
def top_offset(cell, n, s):
    """Where the top layer's ``h`` starts in the composite state ``s`` (what the readout reads)."""
    S = state_size(cell, n)
    return (s.shape[0] // S - 1) * S


@njit(cache=True, error_model="numpy")
def influence_offset(cell, n_in, n, layer, k):
    """Offset of block ``(layer, k)`` (``ds^layer/dθ^k``, S x P_k) in the flat influence buffer;
    ``(L, 0)`` gives its size, ``S Σ_{l<L} Σ_{k≤l} P_k``."""
    acc = layer_offset(cell, n_in, n, k)
    for m in range(1, layer + 1):
        acc += layer_offset(cell, n_in, n, m)
    return state_size(cell, n) * acc


def influence_shape(cell, n_in, n, n_layers):
    """A key's influence array: ``(S, P_cell)`` for one layer (the single cell's), the flat buffer of
    the block-lower-triangular blocks for a stack."""
    if n_layers == 1:
        return (state_size(cell, n), layer_params(cell, n_in, n, 0))
    return (influence_offset(cell, n_in, n, n_layers, 0),)


def as_block(M, S, P):
    """A one-layer key's influence as an (S, P) matrix: the key's own 2-D array as it is, or the first
    block of a flat buffer (resolved when the kernel compiles: the array's dimension is its type)."""
    return M if M.ndim == 2 else M[: S * P].reshape((S, P))


@overload(as_block)
def _as_block(M, S, P):
    if M.ndim == 2:
        return lambda M, S, P: M
    return lambda M, S, P: M[: S * P].reshape((S, P))


@njit(cache=True, error_model="numpy")
def stack_forward(cell, theta, n_in, n, x, s_prev, s_new, cache):
    """One step of every layer, bottom up: ``s_new``, ``cache`` (L S and L C) from ``s_prev`` and ``x``."""
    S, C = state_size(cell, n), cache_size(cell, n)
    if s_prev.shape[0] == S:  # one layer: the cell itself, on the whole arrays
        cell_forward(cell, theta, n_in, n, x, s_prev, s_new, cache)
        return
    P0 = layer_params(cell, n_in, n, 0)
    cell_forward(cell, theta[:P0], n_in, n, x, s_prev[:S], s_new[:S], cache[:C])
    for layer in range(1, s_prev.shape[0] // S):
        o, P = layer_offset(cell, n_in, n, layer), layer_params(cell, n_in, n, layer)
        a, c = layer * S, layer * C
        h_below = s_new[a - S : a - S + n]
        cell_forward(cell, theta[o : o + P], n, n, h_below, s_prev[a : a + S], s_new[a : a + S], cache[c : c + C])


@njit(cache=True, error_model="numpy")
def stack_backward(cell, theta, n_in, n, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh, dx, input_grad):
    """Reverse mode through one step of the stack: ``grad += g_new · ds_new/dθ``, ``g_prev = g_new ·
    ds_new/ds_prev``; with ``input_grad`` also ``dx[:n_in] = g_new · ds_new/dx``. ``g_new`` is scratch
    for a stack (each layer's input gradient is added to the layer below's entries); ``dx`` holds
    ``max(n_in, n)`` values (unused, and may be empty, for one layer without ``input_grad``)."""
    S, C = state_size(cell, n), cache_size(cell, n)
    G, rec = n_gates(cell), recurrent_width(cell, n)
    for layer in range(s_prev.shape[0] // S - 1, 0, -1):
        o, P = layer_offset(cell, n_in, n, layer), layer_params(cell, n_in, n, layer)
        a, c = layer * S, layer * C
        w = theta[o : o + P]
        cell_backward(
            cell,
            w,
            n,
            n,
            s_new[a - S : a - S + n],
            s_prev[a : a + S],
            s_new[a : a + S],
            cache[c : c + C],
            g_new[a : a + S],
            g_prev[a : a + S],
            grad[o : o + P],
            da_ih,
            da_hh,
        )
        ih_transpose_product(w, G, n, n, rec, da_ih, dx[:n])
        below = g_new[a - S : a - S + n]
        for j in range(n):
            below[j] += dx[j]
    P0 = layer_params(cell, n_in, n, 0)
    cell_backward(
        cell, theta[:P0], n_in, n, x, s_prev[:S], s_new[:S], cache[:C], g_new[:S], g_prev[:S], grad[:P0], da_ih, da_hh
    )
    if input_grad:
        ih_transpose_product(theta[:P0], G, n_in, n, rec, da_ih, dx[:n_in])


def input_tangent_scratch(cell, n, n_layers, width, dtype):
    """Scratch of :func:`add_input_tangent`: ``Jx`` (S + 1 x n) and ``Dx`` (S + 1 x width); a token
    (1 x 1) pair for one layer, which needs neither."""
    if n_layers == 1:
        return np.zeros((1, 1), dtype), np.zeros((1, 1), dtype)
    S = state_size(cell, n)
    return np.zeros((S + 1, n), dtype), np.zeros((S + 1, width), dtype)


@njit(cache=True, error_model="numpy")
def add_input_tangent(Jx, M_below, M, Dx, n_below, g_h, grad, scatter, use_blas):
    """``M += Jx[:S] M_below[:n_below]`` (S = M's rows, ``Jx[:S]`` = ds/dx): the influence a layer
    receives through its input, the hidden rows of the block below. With ``scatter``, also
    ``grad += g_h · (Jx M_below)[:n]`` through one more row of the product (``Jx[S] = g_h Jx[:n]``).
    Column block by block (the width of ``Dx``). Returns True when ``M`` stayed finite."""
    S, P = M.shape[0], M.shape[1]
    K = Jx.shape[1]
    rows = S
    if scatter:
        rows = S + 1
        Jg = Jx[S]
        for k in range(K):
            Jg[k] = 0.0
        for j in range(g_h.shape[0]):
            gj = g_h[j]
            Jj = Jx[j]
            for k in range(K):
                Jg[k] += gj * Jj[k]
    width = Dx.shape[1]
    bad = False
    for c0 in range(0, P, width):
        c1 = min(P, c0 + width)
        w = c1 - c0
        jacobian_product(Jx[:rows], M_below, c0, w, Dx[:rows], n_below, K, use_blas)
        for i in range(S):
            m = M[i, c0:c1]
            d = Dx[i, :w]
            for p in range(w):
                v = m[p] + d[p]
                m[p] = v
                bad |= (v - v) != 0.0
        if scatter:
            gb = grad[c0:c1]
            dg = Dx[S, :w]
            for p in range(w):
                gb[p] += dg[p]
    return not bad


@njit(cache=True, error_model="numpy")
def stack_tangent(cell, theta, n_in, n, x, s_prev, s_new, cache, M, J, D, coefs, Jx, Dx, g_h, grad, scatter):
    """Exact RTRL's influence update through the stack, in place, bottom up (module docstring):
    ``M`` is a key's influence array (:func:`influence_shape`), ``s_prev``/``s_new``/``cache`` the
    composite step, ``J, D, coefs`` the single cell's tangent scratch, ``Jx, Dx``
    :func:`input_tangent_scratch`. With ``scatter``, also the cell part of the gradient,
    ``grad[:P_cell] = g_h · M^{L-1}[:n]`` (``g_h = dL/dh`` of the top layer). True when M stayed finite."""
    S, C = state_size(cell, n), cache_size(cell, n)
    L = s_prev.shape[0] // S
    if L == 1:  # one layer: the cell's own tangent on M as the key holds it (no views)
        M1 = as_block(M, S, layer_params(cell, n_in, n, 0))
        return cell_tangent(
            cell, theta, n_in, n, x, s_prev, s_new, cache, M1, M1, J, D, coefs, True, g_h, grad, scatter
        )
    flat = M.reshape(M.size)
    use_blas = n >= GEMM_MIN_WIDTH
    finite = True
    for layer in range(L):
        o, P = layer_offset(cell, n_in, n, layer), layer_params(cell, n_in, n, layer)
        m = layer_inputs(n_in, n, layer)
        a, c = layer * S, layer * C
        w = theta[o : o + P]
        sp, sn, ca = s_prev[a : a + S], s_new[a : a + S], cache[c : c + C]
        top = scatter and layer == L - 1
        if layer == 0:
            M00 = flat[: S * P].reshape((S, P))
            finite &= cell_tangent(cell, w, n_in, n, x, sp, sn, ca, M00, M00, J, D, coefs, True, g_h, grad[:P], top)
            continue
        x_l = s_new[a - S : a - S + n]
        input_jacobian(cell, w, m, n, sp, sn, ca, coefs[0], Jx)
        for k in range(layer + 1):
            ok, Pk = layer_offset(cell, n_in, n, k), layer_params(cell, n_in, n, k)
            b = influence_offset(cell, n_in, n, layer, k)
            Mk = flat[b : b + S * Pk].reshape((S, Pk))
            gk = grad[ok : ok + Pk]
            finite &= cell_tangent(cell, w, m, n, x_l, sp, sn, ca, Mk, Mk, J, D, coefs, k == layer, g_h, gk, top)
            if k < layer:
                bb = influence_offset(cell, n_in, n, layer - 1, k)
                below = flat[bb : bb + S * Pk].reshape((S, Pk))
                finite &= add_input_tangent(Jx, below, Mk, Dx, n, g_h, gk, top, use_blas)
    return finite
