"""Select a cell's kernels by integer id inside compiled code.

Numba specialises on types, not on Python objects, so learners take the cell
as a small integer and branch here; every learner is then written once.

Cells 0-2 are PyTorch's RNN, GRU and LSTM. Cells 3-5 are their element-wise
variants ("ernn", "egru", "elstm"): the same equations with one recurrent
weight per gate row on its own unit (``weight_hh`` of shape (G*n,)), so no
unit's state depends on another unit's parameters and exact RTRL costs O(P).
"""
import numpy as np
from numba import njit

from .gru import N_GATES as GRU_GATES, gru_backward, gru_forward, gru_snap1_tangent, gru_tangent
from .lstm import (N_GATES as LSTM_GATES, STATE_FACTOR as LSTM_STATE, lstm_backward, lstm_forward,
                   lstm_snap1_tangent, lstm_tangent)
from .rnn import N_GATES as RNN_GATES, rnn_backward, rnn_forward, rnn_snap1_tangent, rnn_tangent

RNN, GRU, LSTM, ERNN, EGRU, ELSTM = 0, 1, 2, 3, 4, 5
CELL_IDS = {"rnn": RNN, "gru": GRU, "lstm": LSTM, "ernn": ERNN, "egru": EGRU, "elstm": ELSTM}
CELL_NAMES = {v: k for k, v in CELL_IDS.items()}
ELEMENTWISE = (ERNN, EGRU, ELSTM)


@njit(cache=True, error_model="numpy")
def base_cell(cell):
    """The PyTorch cell whose equations an element-wise cell uses."""
    return cell - 3 if cell >= ERNN else cell


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
    return LSTM_GATES


@njit(cache=True, error_model="numpy")
def state_size(cell, n):
    """Values per recurrent state: ``n`` for RNN and GRU, ``2n`` (h, c) for LSTM."""
    return LSTM_STATE * n if base_cell(cell) == LSTM else n


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
    else:
        lstm_forward(w, n_in, n, rec, x, s_prev, s_new, cache)


@njit(cache=True, error_model="numpy")
def cell_tangent(cell, w, n_in, n, x, s_prev, s_new, cache, M_prev, M_new, D, immediate):
    """``M_new = J M_prev (+ I with immediate)``: forward mode through one step.

    With ``immediate`` the columns of M are parameters (RTRL's influence
    matrix); without, they are any state-space directions (``J v``)."""
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == RNN:
        rnn_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M_prev, M_new, D, immediate)
    elif base == GRU:
        gru_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M_prev, M_new, D, immediate)
    else:
        lstm_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M_prev, M_new, D, immediate)


@njit(cache=True, error_model="numpy")
def cell_unit_tangent(cell, w, n_in, n, x, s_prev, s_new, cache, M, Dc):
    """Per-unit influence update in place (compact layout): SnAp-1 for the PyTorch cells,
    exact RTRL for the element-wise ones."""
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == RNN:
        rnn_snap1_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M, Dc)
    elif base == GRU:
        gru_snap1_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M, Dc)
    else:
        lstm_snap1_tangent(w, n_in, n, rec, x, s_prev, s_new, cache, M, Dc)


@njit(cache=True, error_model="numpy")
def cell_backward(cell, w, n_in, n, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh):
    base, rec = base_cell(cell), recurrent_width(cell, n)
    if base == RNN:
        rnn_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)
    elif base == GRU:
        gru_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)
    else:
        lstm_backward(w, n_in, n, rec, x, s_prev, s_new, cache, g_new, g_prev, grad, da_ih, da_hh)


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
