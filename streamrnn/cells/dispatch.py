"""Select a cell's kernels by integer id inside compiled code.

Numba specialises on types, not on Python objects, so learners take the cell
as a small integer and branch here; every learner is then written once.

Cells 0-2 are PyTorch's RNN, GRU and LSTM. Cells 3-5 are their element-wise
variants ("ernn", "egru", "elstm"): the same equations with one recurrent
weight per gate row on its own unit (``weight_hh`` of shape (G*n,)), so no
unit's state depends on another unit's parameters and exact RTRL costs O(P).
Cell 6 ("dlru") is a diagonal linear recurrence with a tanh readout, element-wise too.
"""

import numpy as np
from numba import njit

from .common import (
    GEMM_MIN_WIDTH,
    add_block_immediate,
    all_finite,
    block_columns,
    combine_rows,
    finish_rows,
    gate_rows,
    jacobian_product,
    jacobian_rows,
    param_views,
    unit_influence_update,
)
from .dlru import N_GATES as DLRU_GATES
from .dlru import STATE_FACTOR as DLRU_STATE
from .dlru import dlru_backward, dlru_forward, dlru_tangent, dlru_unit_coefficients
from .gru import N_GATES as GRU_GATES
from .gru import gru_backward, gru_direct_slope, gru_forward, gru_unit_coefficients
from .lstm import N_GATES as LSTM_GATES
from .lstm import STATE_FACTOR as LSTM_STATE
from .lstm import lstm_backward, lstm_forward, lstm_unit_coefficients
from .rnn import N_GATES as RNN_GATES
from .rnn import rnn_backward, rnn_forward, rnn_unit_coefficients

RNN, GRU, LSTM, ERNN, EGRU, ELSTM, DLRU = 0, 1, 2, 3, 4, 5, 6
CELL_IDS = {"rnn": RNN, "gru": GRU, "lstm": LSTM, "ernn": ERNN, "egru": EGRU, "elstm": ELSTM, "dlru": DLRU}
CELL_NAMES = {v: k for k, v in CELL_IDS.items()}
ELEMENTWISE = (ERNN, EGRU, ELSTM, DLRU)


@njit(cache=True, error_model="numpy")
def base_cell(cell):
    """The equations a cell uses: an element-wise cell's PyTorch cell; DLRU its own."""
    return cell - 3 if ERNN <= cell <= ELSTM else cell


@njit(cache=True, error_model="numpy")
def recurrent_width(cell, n):
    """Entries of ``h`` each gate row reads: all ``n``, or 1 (its own unit) for element-wise cells."""
    return 1 if cell >= ERNN else n


@njit(cache=True, error_model="numpy")
def n_gates(cell):
    base = base_cell(cell)
    if base == RNN:
        return RNN_GATES
    if base == GRU:
        return GRU_GATES
    if base == LSTM:
        return LSTM_GATES
    return DLRU_GATES


@njit(cache=True, error_model="numpy")
def state_size(cell, n):
    """Values per recurrent state: ``n`` for RNN and GRU, ``2n`` for LSTM (h, c) and DLRU (h, s)."""
    base = base_cell(cell)
    if base == LSTM:
        return LSTM_STATE * n
    return DLRU_STATE * n if base == DLRU else n


@njit(cache=True, error_model="numpy")
def cache_size(cell, n):
    """Scratch a forward step leaves for its derivative steps."""
    return 2 * n_gates(cell) * n


@njit(cache=True, error_model="numpy")
def cell_forward(cell, w, n_in, n, x, s_prev, s_new, cache):
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == RNN:
        rnn_forward(w, n_in, n, rec, x, s_prev, s_new, cache)
    elif base == GRU:
        gru_forward(w, n_in, n, rec, x, s_prev, s_new, cache)
    elif base == LSTM:
        lstm_forward(w, n_in, n, rec, x, s_prev, s_new, cache)
    else:
        dlru_forward(w, n_in, n, rec, x, s_prev, s_new, cache)


def unit_coefficient_shape(cell, n):
    """Shape of the scratch ``coef`` of :func:`cell_unit_tangent`: (R, R + 3G), R state rows per unit."""
    R = state_size(cell, n) // n
    return R, R + 3 * n_gates(cell)


def tangent_scratch(cell, n, n_cols, dtype):
    """Scratch of :func:`cell_tangent` for ``n_cols`` columns of M: ``(J, D, coefs)`` with J
    (R n + 1 x rec), D = J M_h + I on one column block (R n + 1 x w, ``common.block_columns``; the
    last row for the gradient) and every unit's coefficients (n, R, R + 3G); a
    token (1 x 1) J and D for DLRU, whose tangent needs neither."""
    R, width = unit_coefficient_shape(cell, n)
    if cell == DLRU:
        J, D = np.zeros((1, 1), dtype), np.zeros((1, 1), dtype)
    else:
        rows = R * n + 1  # one more row for the gradient (cells with one state row per unit)
        w = block_columns(rows, n_cols, np.dtype(dtype).itemsize)
        J, D = np.zeros((rows, recurrent_width(cell, n)), dtype), np.zeros((rows, w), dtype)
    return J, D, np.zeros((n, R, width), dtype)


@njit(cache=True, error_model="numpy")
def cell_unit_coefficients(base, W_hh, n, rec, j, s_prev, s_new, cache, coef):
    """Unit ``j``'s per-unit coefficients (``cells.common``) into ``coef``."""
    if base == RNN:
        rnn_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef)
    elif base == GRU:
        gru_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef)
    elif base == LSTM:
        lstm_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef)
    else:
        dlru_unit_coefficients(W_hh, n, rec, j, s_prev, s_new, cache, coef)


@njit(cache=True, error_model="numpy")
def cell_tangent(cell, w, n_in, n, x, s_prev, s_new, cache, M_prev, M_new, J, D, coefs, immediate, g_h, grad, scatter):
    """``M_new = J M_prev (+ I with immediate)``: forward mode through one step (in place allowed).

    With ``immediate`` the columns of M are parameters (RTRL's influence ``ds/dθ_cell``, S x P_cell);
    without, any directions in state space (a Jacobian-vector product, UORO). ``J``, ``D`` and ``coefs``
    are scratch (:func:`tangent_scratch`). J = ds'/dh is formed first (O(R G n²)), then ``D = J M_h`` is
    one GEMM-shaped product (R n² P multiply-adds; BLAS from ``GEMM_MIN_WIDTH``) and one pass per row
    adds the immediate partial and the diagonal couplings, block of columns by block (the width of
    ``D``), so each block of D is read back from cache. With ``scatter``, also writes the cell part
    of the gradient, ``grad[:P] = g_h · M_new[:n]``. Returns True when ``M_new`` is finite.
    """
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == DLRU:
        dlru_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M_prev, M_new, immediate)
        if scatter:
            scatter_gradient(M_new, n, g_h, grad)
        return all_finite(M_new)
    return dense_tangent(
        cell,
        w,
        n_in,
        n,
        x,
        s_prev,
        s_new,
        cache,
        M_prev,
        M_new,
        J,
        D,
        coefs,
        immediate,
        g_h,
        grad,
        scatter,
        n >= GEMM_MIN_WIDTH,
    )


@njit(cache=True, error_model="numpy")
def dense_tangent(
    cell, w, n_in, n, x, s_prev, s_new, cache, M_prev, M_new, J, D, coefs, immediate, g_h, grad, scatter, use_blas
):
    """:func:`cell_tangent` for the cells with a dense J (all but DLRU), the product J M_h by BLAS
    with ``use_blas``, else by the plain loop (tests run both on the same step)."""
    base, rec = base_cell(cell), recurrent_width(cell, n)
    G = n_gates(cell)
    W_hh = param_views(w, G, n_in, n, rec)[1]
    h = s_prev[:n]
    R = coefs.shape[1]
    for j in range(n):
        coef = coefs[j]
        cell_unit_coefficients(base, W_hh, n, rec, j, s_prev, s_new, cache, coef)
        jacobian_rows(W_hh, G, n, rec, j, coef, gru_direct_slope(cache, n, j) if base == GRU else 0.0, J)
    # One row per unit: the gradient g_h · M_new = (g_h J) M_h + g_h · I is one more row of the
    # product (n P multiply-adds in the GEMM instead of a pass over M); LSTM adds it up in its pass.
    grad_row = n if (R == 1 and scatter) else -1
    rows = n + 1 if grad_row >= 0 else R * n
    if grad_row >= 0:
        combine_rows(J, g_h, n, J[n])  # g_h J, the gradient row's product with M_h
        if rec == 1:  # diagonal J: its gradient row mixes units, so the loop below forms it
            rows = n
    P = M_prev.shape[1]
    width = D.shape[1]
    bad = False
    for c0 in range(0, P, width):
        c1 = min(P, c0 + width)
        Db = D[:rows]
        jacobian_product(J[:rows], M_prev, c0, c1 - c0, Db, n, rec, use_blas)
        if grad_row >= 0 and rec == 1:
            gradient_row_diagonal(J, M_prev, c0, c1, n, g_h, D[n])
        if immediate:
            add_block_immediate(D, coefs, G, n_in, n, rec, x, h, c0, c1, grad_row, g_h)
        bad |= finish_rows(D, coefs, n, M_prev, M_new, c0, c1, g_h, grad, scatter)
        if grad_row >= 0:
            gb = grad[c0:c1]
            dg = D[n, : c1 - c0]
            for p in range(c1 - c0):
                gb[p] = dg[p]
    return not bad


@njit(cache=True, error_model="numpy")
def gradient_row_diagonal(J, M, c0, c1, n, g_h, out):
    """``out[:c1 - c0] = Σ_j g_h[j] J[j, 0] M[j, c0:c1]``: the gradient row of a diagonal J (rec = 1)."""
    w = c1 - c0
    for p in range(w):
        out[p] = 0.0
    for j in range(n):
        a = g_h[j] * J[j, 0]
        m = M[j, c0:c1]
        for p in range(w):
            out[p] += a * m[p]


@njit(cache=True, error_model="numpy")
def scatter_gradient(M, n, g_h, grad):
    """``grad[:P] = g_h · M[:n]`` (P the columns of M)."""
    P = M.shape[1]
    for p in range(P):
        grad[p] = 0.0
    for k in range(n):
        gk = g_h[k]
        m = M[k]
        for p in range(P):
            grad[p] += gk * m[p]


@njit(cache=True, error_model="numpy")
def cell_unit_tangent(cell, w, n_in, n, x, s_prev, s_new, cache, M, coef, grad, g_h, scatter):
    """Per-unit influence update in place (compact layout of ``cells.common``): SnAp-1 for the
    PyTorch cells, exact RTRL for the element-wise ones. With ``scatter``, also writes the cell
    part of ``grad`` (``dL/dθ_j = g_h[j] dh_j/dθ_j``). Returns True when ``M`` stayed finite."""
    base, rec = base_cell(cell), recurrent_width(cell, n)
    G = n_gates(cell)
    R = coef.shape[0]
    u = s_prev[n:] if base == DLRU else s_prev[:n]  # what the W_hh entries multiply
    W_hh = param_views(w, G, n_in, n, rec)[1]
    finite = True
    for j in range(n):
        cell_unit_coefficients(base, W_hh, n, rec, j, s_prev, s_new, cache, coef)
        finite &= unit_influence_update(M, R, coef, G, n_in, n, rec, j, x, u, grad, g_h[j], scatter)
    return finite


@njit(cache=True, error_model="numpy")
def input_jacobian(cell, w, n_in, n, s_prev, s_new, cache, coef, Jx):
    """``Jx[:S] = ds'/dx`` (S x n_in) of one step, forward mode, for every cell: unit j's state rows
    are ``Σ_g C_ih[r, g] W_ih[g n + j, :]`` with its per-unit coefficients (``coef``: (R, R + 3G)
    scratch), the same slopes that carry the immediate partial on ``W_ih``. A stack's influence
    crosses layers through it (:mod:`.stack`); its reverse form is ``common.ih_transpose_product``."""
    base, rec = base_cell(cell), recurrent_width(cell, n)
    G = n_gates(cell)
    W_ih, W_hh = param_views(w, G, n_in, n, rec)[:2]
    R = coef.shape[0]
    for j in range(n):
        cell_unit_coefficients(base, W_hh, n, rec, j, s_prev, s_new, cache, coef)
        gate_rows(W_ih, G, n, j, coef, R, Jx)


@njit(cache=True, error_model="numpy")
def cell_backward(cell, w, n_in, n, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == RNN:
        rnn_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)
    elif base == GRU:
        gru_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)
    elif base == LSTM:
        lstm_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)
    else:
        dlru_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)


@njit(cache=True, error_model="numpy")
def cell_jacobians(cell, w, n_in, n, x, s_prev, s_new, cache, J, I):
    """Dense ``J = ds'/ds`` (S x S) and immediate ``I = ∂s'/∂θ`` (S x P) of one step.

    Row ``k`` of both is one reverse-mode pass seeded with ``e_k``. Learners use
    the structured kernels; these dense forms serve checks and baselines.
    """
    S = J.shape[0]
    rows = n_gates(cell) * n
    seed = np.zeros(S, dtype=J.dtype)
    da_ih = np.empty(rows, dtype=J.dtype)
    da_hh = np.empty(rows, dtype=J.dtype)
    for k in range(S):
        seed[:] = 0.0
        seed[k] = 1.0
        I[k, :] = 0.0
        cell_backward(cell, w, n_in, n, x, s_prev, s_new, cache, seed, J[k], I[k], da_ih, da_hh)
