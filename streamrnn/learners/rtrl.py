"""Real-Time Recurrent Learning: exact online gradients, no stored history.

Per sequence (key) RTRL carries the influence matrix ``M_t = ds_t/dθ_cell``
(S x P) forward: ``M_t = J_t M_{t-1} + I_t``. At a step with a target the
gradient is ``dL_t/dθ = (dL_t/dh_t) M_t`` plus the readout's own part. The cell
kernels compute ``M_t`` in one BLAS product ``W_hh M_{t-1}`` (O(G n^2 P)) and
O(G n P) element-wise work that exploits the sparse immediate partial.

For the element-wise cells the only non-zero entries of ``M`` are each unit's
own parameters, so the Model runs exact RTRL for them in the compact O(P) form
of :mod:`streamrnn.learners.snap1`; this dense form serves them too (checks,
``compare.gradient_alignment``), and stacks of them (``n_layers > 1``), where a
layer's state depends on every parameter of the layers below.

A stack of ``L`` layers (:mod:`streamrnn.cells.stack`) carries the block-lower-triangular
influence of its composite state, ``M^{l,k} = ds^l/dθ^k`` for ``k <= l``, in one flat array per
key; the readout reads the top layer.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, tangent_scratch
from ..cells.stack import (
    influence_shape,
    input_tangent_scratch,
    stack_depth,
    stack_forward,
    stack_params,
    stack_tangent,
    top_offset,
)
from .common import (
    APPLIED,
    INFLUENCE_RESET,
    REJECTED,
    InfluenceKeyState,
    all_finite,
    clear_influence_key,
    online_sequence_gradient,
    online_step_many,
    readout_step,
    register_online_learner,
)
from .registry import LearnerSpec, register

# Scratch of one step: the new state, the tangent's J (S x n), D = J M_h + I (S x P_cell, large for
# big n) and per-unit coefficients, the cell's cache, logits and their gradient, dL/dh, the
# gradient of the step, and a stack's input Jacobian and its product (cells.stack; tokens for one layer).
RTRLWorkspace = namedtuple(
    "RTRLWorkspace", ["s_new", "J", "D", "coefs", "cache", "logits", "dlogits", "g_h", "grad", "Jx", "Dx"]
)


def make_workspace(dims):
    """The workspace of one RTRL step for a model of ``dims``, allocated once per Model."""
    dt, n, L = dims.dtype, dims.n_hidden, dims.n_layers
    J, D, coefs = tangent_scratch(dims.cell, n, dims.n_params_cell, dt)
    return RTRLWorkspace(
        np.zeros(dims.state_size, dt),
        J,
        D,
        coefs,
        np.zeros(L * cache_size(dims.cell, n), dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(n, dt),
        np.zeros(dims.n_params, dt),
        *input_tangent_scratch(dims.cell, n, L, D.shape[1], dt),
    )


def key_layout(dims):
    """A key's state (S,) and dense influence matrix (S, P_cell); for a stack its composite state (L S,)
    and the flat buffer of its influence blocks (``cells.stack.influence_shape``)."""
    S, dt = dims.state_size, dims.dtype
    shape = influence_shape(dims.cell, dims.n_inputs, dims.n_hidden, dims.n_layers)
    return [("hidden", (S,), dt), ("influence", shape, dt)]


@njit(cache=True, error_model="numpy")
def rtrl_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
    """Advance the state and influence ``M`` of key ``slot`` by one sample in place and, with a
    target, form ``dL/dθ`` in ``ws.grad``. ``draw`` is unused (RTRL draws nothing).

    Returns ``(outcome, loss)``. ``REJECTED``: the new state is not finite, so
    the key is left as it was and ``pred`` is NaN. ``INFLUENCE_RESET``:
    the state advanced but ``M`` overflowed and was zeroed (no gradient).

    ``M`` is updated in place (the product ``J M_h`` goes to ``ws.D``, every other term of a new
    entry reads the same entry of the old ``M``), and in the same pass its finiteness is checked
    and, with a target, the cell part of ``ws.grad`` written: the readout runs first, so ``dL/dh``
    is known by then.
    """
    s, M = keyed.hidden[slot], keyed.influence[slot]
    s_new, g_h, grad = ws.s_new, ws.g_h, ws.grad
    Pc = stack_params(cell, n_in, n, stack_depth(cell, n, s))
    stack_forward(cell, theta, n_in, n, x, s, s_new, ws.cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    top = top_offset(cell, n, s)
    loss = readout_step(
        task, theta[Pc:], 0, n, n_out, s_new[top:], x, y, has_y, ws.logits, pred, ws.dlogits, grad[Pc:], g_h
    )
    finite = stack_tangent(
        cell, theta, n_in, n, x, s, s_new, ws.cache, M, ws.J, ws.D, ws.coefs, ws.Jx, ws.Dx, g_h, grad, has_y
    )
    s[:] = s_new
    if not finite:
        M[:] = 0.0
        return INFLUENCE_RESET, loss
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)  # the daemon overlaps it with Kafka I/O threads
def rtrl_step_many(
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
    """:func:`~streamrnn.learners.common.online_step_many` for RTRL, ``keyed`` and ``ws`` given as plain tuples
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
        RTRLWorkspace(*ws),
        out,
        losses,
    )


register_online_learner(RTRLWorkspace, InfluenceKeyState, rtrl_sample, clear_influence_key)

SPEC = register(
    LearnerSpec(
        name="rtrl",
        key_layout=key_layout,
        key_state=InfluenceKeyState,
        make_workspace=make_workspace,
        step_many=rtrl_step_many,
        sequence_gradient=online_sequence_gradient,
        elementwise_runs_as="snap1",
        stacks=True,
    )
)
