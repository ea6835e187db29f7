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

from .blas import gemm_block


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


# Below this width a plain loop beats a BLAS call for the matrix-vector products of one step
# (forward, backward); above it the loop's serial sum is the bottleneck.
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
def all_finite(a):
    """True when every entry of ``a`` (any shape) is finite; one pass, no allocation.

    ``v - v`` is 0 for finite ``v`` and NaN otherwise; an OR over integers
    vectorises, where a floating-point sum would be a serial dependency chain.
    """
    flat = a.reshape(a.size)
    bad = False
    for p in range(flat.shape[0]):
        bad |= (flat[p] - flat[p]) != 0.0
    return not bad


@njit(cache=True, error_model="numpy", inline="always")
def combine_rows(A, c, n_rows, out):
    """``out = Σ_{j < n_rows} c[j] A[j]``, each entry summed in row order, in a loop over each row
    that vectorises (a loop over the entries with a sum per entry would be a chain of dependent adds)."""
    for k in range(out.shape[0]):
        out[k] = 0.0
    for j in range(n_rows):
        cj = c[j]
        Aj = A[j]
        for k in range(out.shape[0]):
            out[k] += cj * Aj[k]


@njit(cache=True, error_model="numpy")
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(cache=True, error_model="numpy")
def transpose_product(W, da, out):
    """``out = W^T da`` for a dense ``W`` (rows x width): BLAS from ``BLAS_MIN_WIDTH`` columns, below
    it a loop over the rows that skips the zero entries of ``da`` (one gate's gradient often is)."""
    width = W.shape[1]
    if width >= BLAS_MIN_WIDTH:
        np.dot(W.T, da, out)
        return
    for k in range(width):
        out[k] = 0.0
    for j in range(W.shape[0]):
        g = da[j]
        if g != 0.0:
            Wj = W[j]
            for k in range(width):
                out[k] += Wj[k] * g


@njit(cache=True, error_model="numpy")
def hh_transpose_product(w, n_gates, n_in, n, rec, da_hh, out):
    """``out = W_hh^T da_hh``: how a gate gradient flows back into ``h_{t-1}``."""
    W_hh = param_views(w, n_gates, n_in, n, rec)[1]
    if rec != 1:
        transpose_product(W_hh, da_hh, out)
        return
    for k in range(n):  # element-wise cells: gate row j reads only its own unit, h[j mod n]
        out[k] = 0.0
    for j in range(n_gates * n):
        g = da_hh[j]
        if g != 0.0:
            out[j % n] += W_hh[j, 0] * g


@njit(cache=True, error_model="numpy")
def ih_transpose_product(w, n_gates, n_in, n, rec, da_ih, out):
    """``out = W_ih^T da_ih`` (n_in,): how a gate gradient flows back into the step's input ``x``
    (into the layer below in a stack; the input sensitivity of ``diagnose``). Every cell's backward
    kernel leaves ``dL/d(W_ih x)`` in ``da_ih``."""
    transpose_product(param_views(w, n_gates, n_in, n, rec)[0], da_ih, out)


# --- Dense influence update (exact RTRL): M' = J M + I, J formed first --------------------------
# A cell with R state rows per unit (h, and c for LSTM) supplies, per unit j, the scalars of its
# per-unit update (``coef`` below: C_ih, C_whh, C_bhh per gate and the unit-local couplings A) and
# its direct h -> h' slope (GRU's z, the one path that skips W_hh). The rows of J over h are then
#
#     J[r n + j, k] = Σ_g C_whh[r, g] W_hh[g n + j, k]  (+ the direct slope on k = j, row h)
#
# (R G n² operations), the product J M_h is one GEMM-shaped (R n x n)(n x P) product, R n² P
# multiply-adds (n² P for rnn and gru, 2 n² P for lstm, against G n² P for W_hh M_h), and one pass
# per row adds the sparse immediate partial, the diagonal couplings to the other state rows (LSTM's
# c), checks finiteness and accumulates the gradient, with no dense immediate or second S x P buffer.

# Below this width the influence product J M_h runs as a plain loop, from it as a BLAS GEMM. Measured
# 2026-12-02 (single thread, float64, the product alone): BLAS is faster at every width from 2, e.g.
# GRU n=8 (9 x 8)(8 x 432) 1.9 us against 3.8 us for the loop, LSTM n=8 (16 x 8)(8 x 576) 5.3 against
# 10.8; the loop stays for n = 1 and as the independent path the tests compare BLAS with.
GEMM_MIN_WIDTH = 2
# The product and the pass after it go over column blocks of M of about this many bytes of D, so that
# the block of D the GEMM writes is still in cache when the pass reads it and rewrites that block of M.
BLOCK_BYTES = 1 << 19


def block_columns(rows, n_cols, itemsize):
    """Columns of M per block of the influence update (a multiple of 8, at least 64, at most n_cols)."""
    w = max(64, (BLOCK_BYTES // (rows * itemsize)) // 8 * 8)
    return int(min(n_cols, w))


@njit(cache=True, error_model="numpy")
def gate_rows(W, n_gates, n, j, coef, col, J):
    """Rows ``r n + j`` (r < R = coef.shape[0]) of ``J = Σ_g coef[r, col + g] W[g n + j, :]``: how unit
    j's state rows move with what the rows of ``W`` read. With ``W_hh`` and the ``C_whh`` columns
    (``col = R + G``) that is the recurrent Jacobian (:func:`jacobian_rows`); with ``W_ih`` and the
    ``C_ih`` columns (``col = R``) the input Jacobian ``ds'/dx`` (``dispatch.input_jacobian``)."""
    R = coef.shape[0]
    width = W.shape[1]
    for r in range(R):
        Jr = J[r * n + j]
        c0 = coef[r, col]
        W0 = W[j]
        for k in range(width):
            Jr[k] = c0 * W0[k]
        for g in range(1, n_gates):
            c = coef[r, col + g]
            Wg = W[g * n + j]
            for k in range(width):
                Jr[k] += c * Wg[k]


@njit(cache=True, error_model="numpy")
def jacobian_rows(W_hh, n_gates, n, rec, j, coef, direct_h, J):
    """Rows ``r n + j`` (r < R = coef.shape[0]) of ``J = d(state rows)/dh``, shape (R n, rec):
    ``Σ_g C_whh[r, g] W_hh[g n + j, :]`` plus ``direct_h`` on h_j in row 0. For ``rec = 1``
    (element-wise cells) J is diagonal and column 0 holds it."""
    gate_rows(W_hh, n_gates, n, j, coef, coef.shape[0] + n_gates, J)
    J[j, 0 if rec == 1 else j] += direct_h


@njit(cache=True, error_model="numpy")
def _rows_times(J, M, c0, w, D):
    """``D[i, :w] = J[i] M[:K, c0:c0 + w]``: four rows of M per pass over the output row, so the loop
    over columns vectorises and each pass loads and stores the output row once per four products."""
    K = J.shape[1]
    head = K - K % 4
    for i in range(D.shape[0]):
        d = D[i, :w]
        a = J[i]
        if head == 0:
            for p in range(w):
                d[p] = 0.0
        for k in range(0, head, 4):
            a0, a1, a2, a3 = a[k], a[k + 1], a[k + 2], a[k + 3]
            m0, m1, m2, m3 = M[k, c0 : c0 + w], M[k + 1, c0 : c0 + w], M[k + 2, c0 : c0 + w], M[k + 3, c0 : c0 + w]
            if k == 0:
                for p in range(w):
                    d[p] = a0 * m0[p] + a1 * m1[p] + a2 * m2[p] + a3 * m3[p]
            else:
                for p in range(w):
                    d[p] += a0 * m0[p] + a1 * m1[p] + a2 * m2[p] + a3 * m3[p]
        for k in range(head, K):
            ak = a[k]
            mk = M[k, c0 : c0 + w]
            for p in range(w):
                d[p] += ak * mk[p]


@njit(cache=True, error_model="numpy")
def jacobian_product(J, M, c0, w, D, n, rec, use_blas):
    """``D[:, :w] = J M_h[:, c0:c0 + w]`` (M_h the first n rows of M): a BLAS GEMM reading M in place
    with ``use_blas``, else the plain loop (the same to rounding); for ``rec = 1`` the diagonal J
    scales the rows of M_h (O(R n w))."""
    if rec == 1:
        for i in range(D.shape[0]):
            a = J[i, 0]
            m = M[i % n, c0 : c0 + w]
            d = D[i, :w]
            for p in range(w):
                d[p] = a * m[p]
    elif use_blas:
        gemm_block(J, M, c0, w, D)
    else:
        _rows_times(J, M, c0, w, D)


@njit(cache=True, error_model="numpy", inline="always")
def _add_region(D, coefs, col, n, grad_row, g_h, c0, c1, start, width, n_rows, u, mode):
    """The immediate partial on the columns [c0, c1) of one parameter region: ``n_rows`` gate rows
    gr = g n + j, each owning ``width`` consecutive columns from ``start + gr width``, whose column
    holds (``mode``) 0: ``u[k]`` for the k-th column of the row; 1: ``u[j]``; 2: 1; times the row's
    coefficient ``coefs[j, r, col + g]`` in D's state row r n + j, and also times
    ``g_h[j] coefs[j, 0, col + g]`` in D's row ``grad_row`` when that is >= 0."""
    lo = max(start, c0)
    hi = min(start + n_rows * width, c1)
    if lo >= hi:
        return
    R = coefs.shape[1]
    if lo == start and hi == start + n_rows * width:  # the whole region is in the block: no clipping
        n_gates = n_rows // n
        for r in range(-1 if grad_row >= 0 else 0, R):
            d = D[grad_row if r < 0 else r * n]
            for g in range(n_gates):
                for j in range(n):
                    c = g_h[j] * coefs[j, 0, col + g] if r < 0 else coefs[j, r, col + g]
                    q0 = start + (g * n + j) * width - c0
                    if r >= 0:
                        d = D[r * n + j]
                    if mode == 0:
                        seg = d[q0 : q0 + width]
                        for k in range(width):
                            seg[k] += c * u[k]
                    else:
                        d[q0] += c * u[j] if mode == 1 else c
        return
    for gr in range((lo - start) // width, (hi - 1 - start) // width + 1):
        g = gr // n
        j = gr - g * n
        base = start + gr * width
        q0 = max(lo, base)
        q1 = min(hi, base + width)
        for r in range(-1 if grad_row >= 0 else 0, R):
            if r < 0:
                c = g_h[j] * coefs[j, 0, col + g]
                d = D[grad_row]
            else:
                c = coefs[j, r, col + g]
                d = D[r * n + j]
            if mode == 0:
                for q in range(q0, q1):
                    d[q - c0] += c * u[q - base]
            else:
                d[q0 - c0] += c * u[j] if mode == 1 else c


@njit(cache=True, error_model="numpy")
def add_block_immediate(D, coefs, n_gates, n_in, n, rec, x, h, c0, c1, grad_row, g_h):
    """Add the columns [c0, c1) of the immediate partial I to D (column q of I in column q - c0):
    gate row gr = g n + j of each block feeds unit j's state rows r n + j, with coefficient
    ``C_ih[r, g]`` on x (W_ih) and on 1 (b_ih), ``C_whh[r, g]`` on h_in (W_hh), ``C_bhh[r, g]`` on 1 (b_hh).
    With ``grad_row >= 0`` also ``Σ_j g_h[j] I[j]`` into that row of D. Region by region, so the cost is
    O(R (c1 - c0)) plus a constant per gate row, however the block cuts the regions."""
    R = coefs.shape[1]
    rows = n_gates * n
    o_hh = rows * n_in
    o_bih = o_hh + rows * rec
    o_bhh = o_bih + rows
    c_ih, c_whh, c_bhh = R, R + n_gates, R + 2 * n_gates
    _add_region(D, coefs, c_ih, n, grad_row, g_h, c0, c1, 0, n_in, rows, x, 0)
    if rec == 1:  # element-wise cells: gate row gr reads its own unit's h
        _add_region(D, coefs, c_whh, n, grad_row, g_h, c0, c1, o_hh, 1, rows, h, 1)
    else:
        _add_region(D, coefs, c_whh, n, grad_row, g_h, c0, c1, o_hh, rec, rows, h, 0)
    _add_region(D, coefs, c_ih, n, grad_row, g_h, c0, c1, o_bih, 1, rows, h, 2)
    _add_region(D, coefs, c_bhh, n, grad_row, g_h, c0, c1, o_bhh, 1, rows, h, 2)


@njit(cache=True, error_model="numpy")
def finish_rows(D, coefs, n, M_prev, M_new, c0, c1, g_h, grad, scatter):
    """Columns [c0, c1) of the new influence rows from ``D = J M_h + I`` (its columns from 0), every
    unit in one call: ``M_new[j] = D[j]`` (one row per unit: the gradient comes from D's gradient
    row, see ``dispatch.cell_tangent``) or, with two rows (LSTM), ``M_new[j] = D[j] + A[0, 1]
    M_prev[n + j]`` and ``M_new[n + j] = D[n + j] + A[1, 1] M_prev[n + j]`` (in place allowed)
    and, with ``scatter``, ``grad = Σ_j g_h[j] M_new[j]`` on those columns.
    Returns True when a new value is not finite."""
    bad = False
    w = c1 - c0
    if coefs.shape[1] == 1:
        for j in range(n):
            dh = D[j, :w]
            mh = M_new[j, c0:c1]
            for p in range(w):
                v = dh[p]
                mh[p] = v
                bad |= (v - v) != 0.0
        return bad
    # Per unit, one loop for the h row (and the gradient) and one for the c row, which the h row reads
    # first: a loop writing both rows would make LLVM's run-time alias checks fail when M is updated
    # in place (the old and new c row are the same memory), and run scalar.
    gr = grad[c0:c1]
    in_place = M_prev.ctypes.data == M_new.ctypes.data
    for j in range(n):
        a01 = coefs[j, 0, 1]
        a11 = coefs[j, 1, 1]
        dh = D[j, :w]
        mh = M_new[j, c0:c1]
        mc_old = M_prev[n + j, c0:c1]
        g_j = g_h[j]
        if not scatter:
            for p in range(w):
                v = dh[p] + a01 * mc_old[p]
                mh[p] = v
                bad |= (v - v) != 0.0
        elif j == 0:
            for p in range(w):
                v = dh[p] + a01 * mc_old[p]
                mh[p] = v
                bad |= (v - v) != 0.0
                gr[p] = g_j * v
        else:
            for p in range(w):
                v = dh[p] + a01 * mc_old[p]
                mh[p] = v
                bad |= (v - v) != 0.0
                gr[p] += g_j * v
        dc = D[n + j, :w]
        mc = M_new[n + j, c0:c1]
        if in_place:  # read and write through one view: overlapping views would fail LLVM's alias check
            for p in range(w):
                v = dc[p] + a11 * mc[p]
                mc[p] = v
                bad |= (v - v) != 0.0
        else:
            for p in range(w):
                v = dc[p] + a11 * mc_old[p]
                mc[p] = v
                bad |= (v - v) != 0.0
    return bad


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
