"""Parameter layout and the pieces every gated cell shares.

A cell with ``G`` gate blocks, ``n_in`` inputs and ``n`` hidden units keeps its
parameters in one flat vector, in PyTorch's order and shapes::

    weight_ih (G*n, n_in) | weight_hh (G*n, rec) | bias_ih (G*n,) | bias_hh (G*n,)

so ``P = G*n*(n_in + rec + 2)``. ``rec`` is the recurrent width: ``n`` for the
PyTorch cells, where gate row ``j`` reads all of ``h``; 1 for the element-wise
cells, where row ``j`` reads only its own unit, ``h[j mod n]`` (so the two
coincide when n = 1). Every gate pre-activation row ``j`` is
``a_j = W_ih[j] x + b_ih[j] + W_hh[j] · h_in(j) + b_hh[j]``; its immediate partial
with respect to the parameters (holding ``h`` fixed) touches only row ``j`` of
each block. The helpers below exploit that sparsity, for forward-mode (RTRL)
and reverse-mode (BPTT) derivatives alike.
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def n_cell_params(n_gates, n_in, n, rec):
    return n_gates * n * (n_in + rec + 2)


@njit(cache=True, error_model="numpy")
def param_views(w, n_gates, n_in, n, rec):
    """Views ``(W_ih, W_hh, b_ih, b_hh)`` into the flat cell parameters ``w``."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * rec
    o_bhh = o_bih + rows
    W_ih = w[:o_hh].reshape((rows, n_in))
    W_hh = w[o_hh:o_bih].reshape((rows, rec))
    return W_ih, W_hh, w[o_bih:o_bhh], w[o_bhh:o_bhh + rows]


@njit(cache=True, error_model="numpy")
def hh_in(h, j, n, rec, k):
    """Entry ``k`` of what gate row ``j`` reads from ``h``: all of h, or (rec = 1) its own unit."""
    return h[j % n] if rec == 1 else h[k]


# Below this width a plain loop beats a BLAS call; above it the loop's serial sum is the bottleneck.
BLAS_MIN_WIDTH = 32


@njit(cache=True, error_model="numpy")
def preactivations(w, n_gates, n_in, n, rec, x, h, a_ih, a_hh):
    """``a_ih = W_ih x + b_ih`` and ``a_hh = W_hh h + b_hh`` (PyTorch keeps them apart for GRU)."""
    W_ih, W_hh, b_ih, b_hh = param_views(w, n_gates, n_in, n, rec)
    if rec >= BLAS_MIN_WIDTH:
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
        for k in range(rec):
            acc += W_hh[j, k] * hh_in(h, j, n, rec, k)
        a_hh[j] = acc


@njit(cache=True, error_model="numpy")
def add_ih_immediate(D, row_start, row_stop, n_gates, n_in, n, rec, x):
    """Add d(W_ih x + b_ih)_j / dθ to rows ``j`` in [row_start, row_stop) of ``D`` (rows x P)."""
    rows = n_gates * n
    o_bih = rows * (n_in + rec)
    for j in range(row_start, row_stop):
        base = j * n_in
        for k in range(n_in):
            D[j, base + k] += x[k]
        D[j, o_bih + j] += 1.0


@njit(cache=True, error_model="numpy")
def add_hh_immediate(D, row_start, row_stop, n_gates, n_in, n, rec, h):
    """Add d(W_hh h + b_hh)_j / dθ (``h`` held fixed) to rows [row_start, row_stop) of ``D``."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bhh = rows * (n_in + rec + 1)
    for j in range(row_start, row_stop):
        base = o_hh + j * rec
        for k in range(rec):
            D[j, base + k] += hh_in(h, j, n, rec, k)
        D[j, o_bhh + j] += 1.0


@njit(cache=True, error_model="numpy")
def accumulate_param_grad(grad, n_gates, n_in, n, rec, x, h, da_ih, da_hh):
    """Reverse mode: ``grad += dL/dθ`` given dL/d(a_ih) and dL/d(a_hh) for one step."""
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * rec
    o_bhh = o_bih + rows
    for j in range(rows):
        gi = da_ih[j]
        if gi != 0.0:
            base = j * n_in
            for k in range(n_in):
                grad[base + k] += gi * x[k]
        gh = da_hh[j]
        if gh != 0.0:
            base = o_hh + j * rec
            for k in range(rec):
                grad[base + k] += gh * hh_in(h, j, n, rec, k)
        grad[o_bih + j] += gi
        grad[o_bhh + j] += gh


@njit(cache=True, error_model="numpy")
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(cache=True, error_model="numpy")
def hh_transpose_product(w, n_gates, n_in, n, rec, da_hh, out):
    """``out = W_hh^T da_hh``: how a gate gradient flows back into ``h_{t-1}``."""
    W_hh = param_views(w, n_gates, n_in, n, rec)[1]
    if rec >= BLAS_MIN_WIDTH:
        np.dot(W_hh.T, da_hh, out)
        return
    for k in range(n):
        out[k] = 0.0
    for j in range(n_gates * n):
        g = da_hh[j]
        if g != 0.0:
            if rec == 1:
                out[j % n] += W_hh[j, 0] * g
            else:
                for k in range(n):
                    out[k] += W_hh[j, k] * g


@njit(cache=True, error_model="numpy")
def hh_influence(w, n_gates, n_in, n, rec, x, h, M_h, D, ih_rows, immediate):
    """``D = d(a_hh)/dθ`` for every gate row, plus ``d(a_ih)/dθ`` for the first ``ih_rows``.

    ``d(a_hh)/dθ = W_hh M_h`` (the O(G n^2 P) product, done by BLAS) plus, with
    ``immediate``, the immediate partial of ``W_hh h + b_hh`` and of ``W_ih x + b_ih``.
    Cells that sum both maps take ``ih_rows = G n``; GRU's ``n`` gate scales its
    ``a_hh`` part by ``r`` and adds its ``a_ih`` part itself. Without ``immediate``
    the columns of ``M_h`` may be any directions in state space: ``D = W_hh M_h``
    is then the first half of a state Jacobian-vector product (UORO).
    """
    W_hh = param_views(w, n_gates, n_in, n, rec)[1]
    if rec == 1:
        for j in range(n_gates * n):
            wj = W_hh[j, 0]
            for p in range(D.shape[1]):
                D[j, p] = wj * M_h[j % n, p]
    else:
        np.dot(W_hh, M_h, D)
    if immediate:
        add_hh_immediate(D, 0, n_gates * n, n_gates, n_in, n, rec, h)
        add_ih_immediate(D, 0, ih_rows, n_gates, n_in, n, rec, x)


# --- Per-unit influence: unit i's own parameters on unit i only ------------------------------
# Unit i owns gate rows g*n + i of every block; its parameters, compactly, are one block per gate
# of B = n_in + rec + 2 values: [W_ih row (n_in) | W_hh row (rec) | b_ih | b_hh]. Its influence
# rows (h_i, and c_i for LSTM) have G*B columns, so a key holds S*G*B = O(P) values. For the
# PyTorch cells this is SnAp-1, an approximation; for the element-wise cells (rec = 1) no other
# unit ever depends on θ_i, so it is exact RTRL.

@njit(cache=True, error_model="numpy")
def unit_block(n_in, rec):
    return n_in + rec + 2


@njit(cache=True, error_model="numpy")
def add_unit_ih_immediate(Dc, g, n_in, rec, x):
    """Add d(W_ih x + b_ih)/dθ of gate ``g``'s row to the compact ``Dc[g]``."""
    base = g * (n_in + rec + 2)
    for k in range(n_in):
        Dc[g, base + k] += x[k]
    Dc[g, base + n_in + rec] += 1.0


@njit(cache=True, error_model="numpy")
def unit_hh_influence(w, n_gates, n_in, n, rec, i, x, h, Mh_row, Dc, ih_gates):
    """``Dc[g] = d a_{g n + i}/dθ_i`` for unit ``i`` when only ``h_i`` carries θ_i's influence:
    ``W_hh M`` reduces to the weight of row ``g n + i`` on ``h_i`` times ``M[h_i]``; plus the
    immediate partials (``a_ih``'s for the first ``ih_gates`` gates)."""
    W_hh = param_views(w, n_gates, n_in, n, rec)[1]
    B = n_in + rec + 2
    Pu = Dc.shape[1]
    own = 0 if rec == 1 else i
    for g in range(n_gates):
        row = g * n + i
        wd = W_hh[row, own]
        for q in range(Pu):
            Dc[g, q] = wd * Mh_row[q]
        base = g * B + n_in
        for k in range(rec):
            Dc[g, base + k] += hh_in(h, row, n, rec, k)
        Dc[g, base + rec + 1] += 1.0
        if g < ih_gates:
            add_unit_ih_immediate(Dc, g, n_in, rec, x)


@njit(cache=True, error_model="numpy")
def scatter_unit_grad(grad, n_gates, n_in, n, rec, i, g_h_i, row):
    """``grad[θ_i] += g_h_i * row``: unit ``i``'s compact influence row back in the global layout."""
    B = n_in + rec + 2
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * rec
    o_bhh = o_bih + rows
    for g in range(n_gates):
        r = g * n + i
        base = g * B
        for k in range(n_in):
            grad[r * n_in + k] += g_h_i * row[base + k]
        for k in range(rec):
            grad[o_hh + r * rec + k] += g_h_i * row[base + n_in + k]
        grad[o_bih + r] += g_h_i * row[base + n_in + rec]
        grad[o_bhh + r] += g_h_i * row[base + n_in + rec + 1]
