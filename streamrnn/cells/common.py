"""Parameter layout and the pieces every gated cell shares.

A cell with ``G`` gate blocks, ``n_in`` inputs and ``n`` hidden units keeps its
parameters in one flat vector, in PyTorch's order and shapes::

    weight_ih (G*n, n_in) | weight_hh (G*n, n) | bias_ih (G*n,) | bias_hh (G*n,)

so ``P = G*n*(n_in + n + 2)``. Every gate pre-activation row ``j`` is
``a_j = W_ih[j] x + b_ih[j] + W_hh[j] h + b_hh[j]``; its immediate partial with
respect to the parameters (holding ``h`` fixed) touches only row ``j`` of each
block. The helpers below exploit that sparsity, for forward-mode (RTRL) and
reverse-mode (BPTT) derivatives alike.
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def n_cell_params(n_gates, n_in, n):
    return n_gates * n * (n_in + n + 2)


@njit(cache=True, error_model="numpy")
def param_views(w, n_gates, n_in, n):
    """Views ``(W_ih, W_hh, b_ih, b_hh)`` into the flat cell parameters ``w``."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * n
    o_bhh = o_bih + rows
    W_ih = w[:o_hh].reshape((rows, n_in))
    W_hh = w[o_hh:o_bih].reshape((rows, n))
    return W_ih, W_hh, w[o_bih:o_bhh], w[o_bhh:o_bhh + rows]


# Below this width a plain loop beats a BLAS call; above it the loop's serial sum is the bottleneck.
BLAS_MIN_WIDTH = 32


@njit(cache=True, error_model="numpy")
def preactivations(w, n_gates, n_in, n, x, h, a_ih, a_hh):
    """``a_ih = W_ih x + b_ih`` and ``a_hh = W_hh h + b_hh`` (PyTorch keeps them apart for GRU)."""
    W_ih, W_hh, b_ih, b_hh = param_views(w, n_gates, n_in, n)
    if n >= BLAS_MIN_WIDTH:
        np.dot(W_ih, x, a_ih)
        np.dot(W_hh, h, a_hh)
        for j in range(n_gates * n):
            a_ih[j] += b_ih[j]
            a_hh[j] += b_hh[j]
        return
    for j in range(n_gates * n):
        acc = b_ih[j]
        for k in range(n_in):
            acc += W_ih[j, k] * x[k]
        a_ih[j] = acc
        acc = b_hh[j]
        for k in range(n):
            acc += W_hh[j, k] * h[k]
        a_hh[j] = acc


@njit(cache=True, error_model="numpy")
def add_ih_immediate(D, row_start, row_stop, n_gates, n_in, n, x):
    """Add d(W_ih x + b_ih)_j / dθ to rows ``j`` in [row_start, row_stop) of ``D`` (rows x P)."""
    rows = n_gates * n
    o_bih = rows * (n_in + n)
    for j in range(row_start, row_stop):
        base = j * n_in
        for k in range(n_in):
            D[j, base + k] += x[k]
        D[j, o_bih + j] += 1.0


@njit(cache=True, error_model="numpy")
def add_hh_immediate(D, row_start, row_stop, n_gates, n_in, n, h):
    """Add d(W_hh h + b_hh)_j / dθ (``h`` held fixed) to rows [row_start, row_stop) of ``D``."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bhh = rows * (n_in + n + 1)
    for j in range(row_start, row_stop):
        base = o_hh + j * n
        for k in range(n):
            D[j, base + k] += h[k]
        D[j, o_bhh + j] += 1.0


@njit(cache=True, error_model="numpy")
def accumulate_param_grad(grad, n_gates, n_in, n, x, h, da_ih, da_hh):
    """Reverse mode: ``grad += dL/dθ`` given dL/d(a_ih) and dL/d(a_hh) for one step."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * n
    o_bhh = o_bih + rows
    for j in range(rows):
        gi = da_ih[j]
        if gi != 0.0:
            base = j * n_in
            for k in range(n_in):
                grad[base + k] += gi * x[k]
        gh = da_hh[j]
        if gh != 0.0:
            base = o_hh + j * n
            for k in range(n):
                grad[base + k] += gh * h[k]
        grad[o_bih + j] += gi
        grad[o_bhh + j] += gh


@njit(cache=True, error_model="numpy")
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(cache=True, error_model="numpy")
def hh_transpose_product(w, n_gates, n_in, n, da_hh, out):
    """``out = W_hh^T da_hh``: how a gate gradient flows back into ``h_{t-1}``."""
    W_hh = param_views(w, n_gates, n_in, n)[1]
    if n >= BLAS_MIN_WIDTH:
        np.dot(W_hh.T, da_hh, out)
        return
    for k in range(n):
        out[k] = 0.0
    for j in range(n_gates * n):
        g = da_hh[j]
        if g != 0.0:
            for k in range(n):
                out[k] += W_hh[j, k] * g


@njit(cache=True, error_model="numpy")
def hh_influence(w, n_gates, n_in, n, x, h, M_h, D, ih_rows, immediate):
    """``D = d(a_hh)/dθ`` for every gate row, plus ``d(a_ih)/dθ`` for the first ``ih_rows``.

    ``d(a_hh)/dθ = W_hh M_h`` (the O(G n^2 P) product, done by BLAS) plus, with
    ``immediate``, the immediate partial of ``W_hh h + b_hh`` and of ``W_ih x + b_ih``.
    Cells that sum both maps take ``ih_rows = G n``; GRU's ``n`` gate scales its
    ``a_hh`` part by ``r`` and adds its ``a_ih`` part itself. Without ``immediate``
    the columns of ``M_h`` may be any directions in state space: ``D = W_hh M_h``
    is then the first half of a state Jacobian-vector product (UORO).
    """
    W_hh = param_views(w, n_gates, n_in, n)[1]
    np.dot(W_hh, M_h, D)
    if immediate:
        add_hh_immediate(D, 0, n_gates * n, n_gates, n_in, n, h)
        add_ih_immediate(D, 0, ih_rows, n_gates, n_in, n, x)


# --- SnAp-1: the influence of unit i's own parameters on unit i only -------------------------
# Unit i owns gate rows g*n + i of every block; its parameters, compactly, are one block per gate
# of B = n_in + n + 2 values: [W_ih row (n_in) | W_hh row (n) | b_ih | b_hh]. Its influence rows
# (h_i, and c_i for LSTM) have G*B columns, so a key holds S*G*B = O(P) values.

@njit(cache=True, error_model="numpy")
def unit_block(n_in, n):
    return n_in + n + 2


@njit(cache=True, error_model="numpy")
def add_unit_ih_immediate(Dc, g, n_in, n, x):
    """Add d(W_ih x + b_ih)/dθ of gate ``g``'s row to the compact ``Dc[g]``."""
    base = g * (n_in + n + 2)
    for k in range(n_in):
        Dc[g, base + k] += x[k]
    Dc[g, base + n_in + n] += 1.0


@njit(cache=True, error_model="numpy")
def unit_hh_influence(w, n_gates, n_in, n, i, x, h, Mh_row, Dc, ih_gates):
    """SnAp-1's ``Dc[g] = d a_{g n + i}/dθ_i`` for unit ``i``: only ``h_i`` carries θ_i's influence,
    so ``W_hh M`` reduces to the diagonal weight ``W_hh[g n + i, i]`` times ``M[h_i]``; plus
    the immediate partials (``a_ih``'s for the first ``ih_gates`` gates)."""
    W_hh = param_views(w, n_gates, n_in, n)[1]
    B = n_in + n + 2
    Pu = Dc.shape[1]
    for g in range(n_gates):
        wd = W_hh[g * n + i, i]
        for q in range(Pu):
            Dc[g, q] = wd * Mh_row[q]
        base = g * B + n_in
        for k in range(n):
            Dc[g, base + k] += h[k]
        Dc[g, base + n + 1] += 1.0
        if g < ih_gates:
            add_unit_ih_immediate(Dc, g, n_in, n, x)


@njit(cache=True, error_model="numpy")
def scatter_unit_grad(grad, n_gates, n_in, n, i, g_h_i, row):
    """``grad[θ_i] += g_h_i * row``: unit ``i``'s compact influence row back in the global layout."""
    B = n_in + n + 2
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * n
    o_bhh = o_bih + rows
    for g in range(n_gates):
        r = g * n + i
        base = g * B
        for k in range(n_in):
            grad[r * n_in + k] += g_h_i * row[base + k]
        for k in range(n):
            grad[o_hh + r * n + k] += g_h_i * row[base + n_in + k]
        grad[o_bih + r] += g_h_i * row[base + n_in + n]
        grad[o_bhh + r] += g_h_i * row[base + n_in + n + 1]
