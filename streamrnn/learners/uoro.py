"""UORO: Unbiased Online Recurrent Optimization (Tallec & Ollivier, 2018).

RTRL's influence matrix ``M_t = J_t M_{t-1} + I_t`` is replaced by a rank-one
estimate ``s̃_t θ̃_tᵀ`` with ``E[s̃_t θ̃_tᵀ] = M_t``:

    s̃_t = ρ0 J_t s̃_{t-1} + ρ1 ν          θ̃_t = θ̃_{t-1} / ρ0 + (νᵀ I_t) / ρ1

with ν a vector of random signs and ρ0, ρ1 chosen to minimise the variance.
Per key it holds ``s̃`` (S) and ``θ̃`` (P): O(S + P) memory, O(P) time per step
(one state Jacobian-vector product and one reverse pass). The signs come from
a counter-based generator keyed by the model seed and the step index, so a
replay of the same records is bit-identical, also across a save and load.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, cell_backward, cell_forward, cell_tangent, n_gates, tangent_scratch
from .common import (
    APPLIED,
    INFLUENCE_RESET,
    REJECTED,
    all_finite,
    online_sequence_gradient,
    online_step_many,
    readout_step,
    register_online_learner,
)
from .registry import LearnerSpec, register

# The arrays a key owns (a slot axis first): its state, s̃ (S) and θ̃ (P_cell).
UOROKeyState = namedtuple("UOROKeyState", ["hidden", "uoro_state", "uoro_params"])

# The model's seed of the random signs, and the scratch of one step: the new state, the cell's cache, the
# tangent's scratch (J, D, coefficients: cells.dispatch.tangent_scratch) and J s̃ (S x 1), the signs ν, the
# reverse pass's dL/ds_prev and pre-activation
# gradients, νᵀI (P_cell), logits and their gradient, dL/dh, and the gradient estimate of the step.
UOROWorkspace = namedtuple(
    "UOROWorkspace",
    [
        "seed",
        "s_new",
        "cache",
        "J",
        "D1",
        "coefs",
        "js",
        "nu",
        "g_prev",
        "da_ih",
        "da_hh",
        "vI",
        "logits",
        "dlogits",
        "g_h",
        "grad",
    ],
)


def make_workspace(dims):
    """The workspace of one UORO step for a model of ``dims`` (signs from ``dims.seed``)."""
    dt, S, n = dims.dtype, dims.state_size, dims.n_hidden
    rows = n_gates(dims.cell) * n
    return UOROWorkspace(
        int(dims.seed),
        np.zeros(S, dt),
        np.zeros(cache_size(dims.cell, n), dt),
        *tangent_scratch(dims.cell, n, 1, dt),
        np.zeros((S, 1), dt),
        np.zeros(S, dt),
        np.zeros(S, dt),
        np.zeros(rows, dt),
        np.zeros(rows, dt),
        np.zeros(dims.n_params_cell, dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(dims.n_outputs, dt),
        np.zeros(n, dt),
        np.zeros(dims.n_params, dt),
    )


def key_layout(dims):
    """A key's state (S,) and UORO's rank-one influence estimate: the state-side vector (S,) and the
    parameter-side vector (P_cell,).
    """
    S, dt = dims.state_size, dims.dtype
    return [("hidden", (S,), dt), ("uoro_state", (S,), dt), ("uoro_params", (dims.n_params_cell,), dt)]


_EPS = 1e-7


@njit(cache=True, error_model="numpy")
def _splitmix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy")
def random_signs(seed, draw, out):
    """``out[k] = ±1``, a pure function of (seed, draw, k)."""
    base = _splitmix64(np.uint64(seed) ^ _splitmix64(np.uint64(draw)))
    for k in range(out.shape[0]):
        out[k] = 1.0 if (_splitmix64(base + np.uint64(k)) >> np.uint64(63)) == np.uint64(1) else -1.0


@njit(cache=True, error_model="numpy")
def _norm(v):
    total = 0.0
    for p in range(v.shape[0]):
        total += v[p] * v[p]
    return np.sqrt(total)


@njit(cache=True, error_model="numpy")
def clear_uoro_key(keyed, slot):
    """Zero the state, s̃ and θ̃ of ``slot`` (a new or evicted key)."""
    keyed.hidden[slot] = 0.0
    keyed.uoro_state[slot] = 0.0
    keyed.uoro_params[slot] = 0.0


@njit(cache=True, error_model="numpy")
def uoro_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
    """Advance ``(s, s̃, θ̃)`` of key ``slot`` by one sample in place, with draw ``draw`` of the model's
    random signs; with a target, ``ws.grad`` holds the gradient estimate."""
    s, s_tilde, theta_tilde = keyed.hidden[slot], keyed.uoro_state[slot], keyed.uoro_params[slot]
    s_new, cache, js, nu, vI, g_h, grad = ws.s_new, ws.cache, ws.js, ws.nu, ws.vI, ws.g_h, ws.grad
    S = s.shape[0]
    Pc = theta_tilde.shape[0]
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return REJECTED, 0.0
    cell_tangent(
        cell,
        theta,
        n_in,
        n,
        x,
        s,
        s_new,
        cache,
        s_tilde.reshape((S, 1)),
        js,
        ws.J,
        ws.D1,
        ws.coefs,
        False,
        g_h,
        grad,
        False,
    )
    random_signs(ws.seed, draw, nu)
    vI[:] = 0.0
    cell_backward(cell, theta, n_in, n, x, s, s_new, cache, nu, ws.g_prev, vI, ws.da_ih, ws.da_hh)
    rho0 = np.sqrt((_norm(theta_tilde) + _EPS) / (_norm(js[:, 0]) + _EPS))
    rho1 = np.sqrt((_norm(vI) + _EPS) / (_norm(nu) + _EPS))
    for k in range(S):
        s_tilde[k] = rho0 * js[k, 0] + rho1 * nu[k]
    for p in range(Pc):
        theta_tilde[p] = theta_tilde[p] / rho0 + vI[p] / rho1
    s[:] = s_new
    loss = readout_step(task, theta, Pc, n, n_out, s, x, y, has_y, ws.logits, pred, ws.dlogits, grad, g_h)
    if not (all_finite(s_tilde) and all_finite(theta_tilde)):
        s_tilde[:] = 0.0
        theta_tilde[:] = 0.0
        return INFLUENCE_RESET, loss
    if has_y:
        c = 0.0
        for k in range(n):
            c += g_h[k] * s_tilde[k]
        for p in range(Pc):
            grad[p] += c * theta_tilde[p]
    return APPLIED, loss


@njit(cache=True, error_model="numpy", nogil=True)  # the daemon overlaps it with Kafka I/O threads
def uoro_step_many(
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
    """:func:`~streamrnn.learners.common.online_step_many` for UORO, ``keyed`` and ``ws`` given as plain tuples
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
        UOROKeyState(*keyed),
        X,
        Y,
        has_y,
        slots,
        reset,
        UOROWorkspace(*ws),
        out,
        losses,
    )


register_online_learner(UOROWorkspace, UOROKeyState, uoro_sample, clear_uoro_key)

SPEC = register(
    LearnerSpec(
        name="uoro",
        key_layout=key_layout,
        key_state=UOROKeyState,
        make_workspace=make_workspace,
        step_many=uoro_step_many,
        sequence_gradient=online_sequence_gradient,
    )
)
