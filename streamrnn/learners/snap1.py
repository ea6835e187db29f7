"""SnAp-1: RTRL restricted to each unit's own parameters, O(P) memory and time per step.

RTRL's influence matrix ``M_t = ds_t/dθ`` (S x P) costs O(S P) memory per key.
SnAp-1 (Menick et al., 2021) keeps only the entries the immediate partial
``I_t`` can make non-zero in one step: the influence of unit ``j``'s own
parameters ``θ_j`` (its gate rows of every block) on unit ``j``'s state. So a
key holds, per state row, one unit's parameters, ``S x (P/n)`` values, in the
compact layout of :mod:`streamrnn.cells.common`, and

    M_t[j] = J_t[j, j] M_{t-1}[j] + I_t[j]        (the diagonal of J, restricted)

is O(P) per step. For the PyTorch cells (rnn, gru, lstm) this is an
approximation; for the element-wise cells (ernn, egru, elstm, dlru) no unit
ever reads another, so no other entry of ``M`` is non-zero and it is exact
RTRL, which is what ``Model(learner="rtrl")`` runs for them.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ..cells.common import unit_block
from ..cells.dispatch import (
    cache_size,
    cell_forward,
    cell_unit_tangent,
    n_gates,
    recurrent_width,
    unit_coefficient_shape,
)
from .common import (
    APPLIED,
    INFLUENCE_RESET,
    REJECTED,
    InfluenceKeyState,
    all_finite,
    cell_params_end,
    clear_influence_key,
    online_sequence_gradient,
    online_step_many,
    readout_step,
    register_online_learner,
)
from .registry import LearnerSpec, register

# Scratch of one step: the new state, the per-unit update's coefficients, the cell's cache, logits and
# their gradient, dL/dh, and the gradient of the step.
SnAp1Workspace = namedtuple("SnAp1Workspace", ["s_new", "coef", "cache", "logits", "dlogits", "g_h", "grad"])


@njit(cache=True, error_model="numpy")
def influence_width(cell, n_in, n):
    """Columns of a key's compact influence matrix: one unit's parameters, ``G (n_in + rec + 2)``."""
    return n_gates(cell) * unit_block(n_in, recurrent_width(cell, n))


def make_workspace(dims):
    """The workspace of one SnAp-1 step for a model of ``dims``, allocated once per Model."""
    dt, n = dims.dtype, dims.n_hidden
    return SnAp1Workspace(
        np.zeros(dims.state_size, dt),
        np.zeros(unit_coefficient_shape(dims.cell, n), dt),
        np.zeros(cache_size(dims.cell, n), dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(n, dt),
        np.zeros(dims.n_params, dt),
    )


def key_layout(dims):
    """A key's state (S,) and compact influence matrix (S, one unit's parameters)."""
    S, dt = dims.state_size, dims.dtype
    return [("hidden", (S,), dt), ("influence", (S, influence_width(dims.cell, dims.n_inputs, dims.n_hidden)), dt)]


@njit(cache=True, error_model="numpy")
def snap1_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
    """Advance the state and compact influence ``M`` of key ``slot`` by one sample in place and, with a
    target, form ``dL/dθ`` in ``ws.grad``. Returns ``(outcome, loss)`` as
    :func:`streamrnn.learners.rtrl.rtrl_sample`; ``draw`` is unused.

    One pass over ``M``: the readout runs first, so ``dL/dh`` is known when each
    unit's row is updated, and the row's gradient is written (not accumulated:
    each cell parameter belongs to one unit) and its finiteness checked in the
    same pass. Only the readout's part of ``grad`` is zeroed.
    """
    s, M = keyed.hidden[slot], keyed.influence[slot]
    s_new, g_h, grad = ws.s_new, ws.g_h, ws.grad
    Pc = cell_params_end(cell, n_in, n)
    cell_forward(cell, theta, n_in, n, x, s, s_new, ws.cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    loss = readout_step(task, theta[Pc:], 0, n, n_out, s_new, x, y, has_y, ws.logits, pred, ws.dlogits, grad[Pc:], g_h)
    finite = cell_unit_tangent(cell, theta, n_in, n, x, s, s_new, ws.cache, M, ws.coef, grad, g_h, has_y)
    s[:] = s_new
    if not finite:
        M[:] = 0.0
        return INFLUENCE_RESET, loss
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)  # the daemon overlaps it with Kafka I/O threads
def snap1_step_many(
    cell,
    task,
    opt_kind,
    n_in,
    n,
    n_out,
    theta,
    opt_state,
    hyper,
    counters,
    keyed,
    X,
    Y,
    has_y,
    slots,
    reset,
    ws,
    out,
    losses,
):
    """:func:`~streamrnn.learners.common.online_step_many` for SnAp-1, ``keyed`` and ``ws`` given as plain tuples
    of their fields (see :data:`~streamrnn.learners.registry.LearnerSpec`)."""
    online_step_many(
        cell,
        task,
        opt_kind,
        n_in,
        n,
        n_out,
        theta,
        opt_state,
        hyper,
        counters,
        InfluenceKeyState(*keyed),
        X,
        Y,
        has_y,
        slots,
        reset,
        SnAp1Workspace(*ws),
        out,
        losses,
    )


register_online_learner(SnAp1Workspace, InfluenceKeyState, snap1_sample, clear_influence_key)

SPEC = register(
    LearnerSpec(
        name="snap1",
        key_layout=key_layout,
        key_state=InfluenceKeyState,
        make_workspace=make_workspace,
        step_many=snap1_step_many,
        sequence_gradient=online_sequence_gradient,
    )
)
