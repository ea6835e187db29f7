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
    return W_ih, W_hh, w[o_bih:o_bhh], w[o_bhh : o_bhh + rows]


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
# rows (h_i, and c_i for LSTM or s_i for DLRU) have G*B columns, so a key holds S*G*B = O(P)
# values. For the PyTorch cells this is SnAp-1, an approximation; for the element-wise cells
# (rec = 1) no other unit ever depends on θ_i, so it is exact RTRL.
#
# Restricted to unit i, every cell's influence update has one shape. Each gate row's derivative is
# d a_g = w_g dh_i + I_g, with w_g the row's weight on h_i and I_g its immediate partial, which is
# non-zero only in gate g's block: x on W_ih, the recurrent input on W_hh, 1 on each bias. The
# cell combines the d a_g (and its other state row) linearly, so with R = 1 or 2 rows per unit
# (DLRU's row s_i: ds' = λ ds + I, the same shape)
#
#     M'[r] = Σ_r' A[r, r'] M[r'] + Σ_g (C_ih[r, g] [x | · | 1 | ·]_g + C_whh[r, g] [· | u | · | ·]_g
#                                        + C_bhh[r, g] [· | · | · | 1]_g)
#
# where u is the recurrent input (h for the PyTorch cells). A cell supplies the scalars A and C
# (``coef``: A in columns 0..R-1, then C_ih, C_whh, C_bhh for each gate); one pass over the row
# then updates it in place, checks it and writes row 0's gradient, with no (G, G*B) scratch.


@njit(cache=True, error_model="numpy")
def unit_block(n_in, rec):
    return n_in + rec + 2


@njit(cache=True, error_model="numpy")
def own_recurrent_weight(W_hh, row, i, rec):
    """Weight of gate row ``row`` (of unit ``i``) on ``h_i``."""
    return W_hh[row, 0 if rec == 1 else i]


# The loops below index views from 0 with a ``range`` variable: Numba then knows the index is
# non-negative and drops its wrap-around check, which lets LLVM vectorise them; and they are
# inlined into their caller, where a call per segment of a few entries would cost more than its work.


@njit(cache=True, error_model="numpy", inline="always")
def _mix_one(m, a, c, u):
    """``m = a m + c u`` (equal lengths); True if a result is not finite."""
    bad = False
    for k in range(m.shape[0]):
        v = a * m[k] + c * u[k]
        m[k] = v
        bad |= (v - v) != 0.0
    return bad


@njit(cache=True, error_model="numpy", inline="always")
def _mix_two(m0, m1, a00, a01, a10, a11, c0, c1, u):
    """Both rows of a two-row unit (LSTM's h and c): ``[m0; m1] = A [m0; m1] + [c0; c1] u``."""
    bad = False
    for k in range(m0.shape[0]):
        v0 = m0[k]
        v1 = m1[k]
        w0 = a00 * v0 + a01 * v1 + c0 * u[k]
        w1 = a10 * v0 + a11 * v1 + c1 * u[k]
        m0[k] = w0
        m1[k] = w1
        bad |= ((w0 - w0) != 0.0) | ((w1 - w1) != 0.0)
    return bad


@njit(cache=True, error_model="numpy", inline="always")
def _scaled_copy(dst, c, src):
    for k in range(dst.shape[0]):
        dst[k] = c * src[k]


@njit(cache=True, error_model="numpy")
def unit_influence_update(M, n_rows, coef, n_gates, n_in, n, rec, i, x, u, grad, g_i, scatter):
    """Update unit ``i``'s compact influence rows (``M[i]``, and ``M[n + i]`` when ``n_rows`` is 2)
    in place from ``coef`` (see above); ``u`` is the recurrent input. With ``scatter``,
    ``grad[θ_i] = g_i * M[i]`` (every cell parameter belongs to exactly one unit, so the cell
    part of ``grad`` needs no zeroing). Returns True when every updated value is finite."""
    B = n_in + rec + 2
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * rec
    o_bhh = o_bih + rows
    u_own = u[i : i + 1] if rec == 1 else u
    c_ih, c_whh, c_bhh = n_rows, n_rows + n_gates, n_rows + 2 * n_gates
    m0 = M[i]
    m1 = M[n + i] if n_rows == 2 else M[i]
    a00, a01, a10, a11 = coef[0, 0], coef[0, n_rows - 1], coef[n_rows - 1, 0], coef[n_rows - 1, n_rows - 1]
    bad = False
    for g in range(n_gates):
        q_ih, q_hh, q_b = g * B, g * B + n_in, g * B + n_in + rec  # the gate's segments in the row
        if n_rows == 1:
            bad |= _mix_one(m0[q_ih:q_hh], a00, coef[0, c_ih + g], x)
            bad |= _mix_one(m0[q_hh:q_b], a00, coef[0, c_whh + g], u_own)
        else:
            bad |= _mix_two(m0[q_ih:q_hh], m1[q_ih:q_hh], a00, a01, a10, a11, coef[0, c_ih + g], coef[1, c_ih + g], x)
            bad |= _mix_two(
                m0[q_hh:q_b], m1[q_hh:q_b], a00, a01, a10, a11, coef[0, c_whh + g], coef[1, c_whh + g], u_own
            )
        for q, col in ((q_b, c_ih + g), (q_b + 1, c_bhh + g)):  # b_ih and b_hh: immediate partial 1
            v0 = m0[q]
            if n_rows == 1:
                w0 = a00 * v0 + coef[0, col]
            else:
                v1 = m1[q]
                w0 = a00 * v0 + a01 * v1 + coef[0, col]
                w1 = a10 * v0 + a11 * v1 + coef[1, col]
                m1[q] = w1
                bad |= (w1 - w1) != 0.0
            m0[q] = w0
            bad |= (w0 - w0) != 0.0
        if scatter:
            r = g * n + i
            _scaled_copy(grad[r * n_in : (r + 1) * n_in], g_i, m0[q_ih:q_hh])
            _scaled_copy(grad[o_hh + r * rec : o_hh + (r + 1) * rec], g_i, m0[q_hh:q_b])
            grad[o_bih + r] = g_i * m0[q_b]
            grad[o_bhh + r] = g_i * m0[q_b + 1]
    return not bad


@njit(cache=True, error_model="numpy")
def set_gate_coefficients(coef, row, n_gates, g, c_ih, c_whh, c_bhh):
    """Immediate-partial coefficients of gate ``g`` in state row ``row`` of a unit (see above)."""
    R = coef.shape[0]
    coef[row, R + g] = c_ih
    coef[row, R + n_gates + g] = c_whh
    coef[row, R + 2 * n_gates + g] = c_bhh
