"""Pieces every online learner shares: readout and loss of one step, the guarded update, and the
record loop of the influence-carrying learners (RTRL, SnAp-1, UORO).

Counters (an int64 array owned by the Model) record what happened to each record.
"""

from collections import namedtuple

import numpy as np
from numba import njit
from numba.extending import overload

from ..cells.borrow import borrowed
from ..cells.common import all_finite, n_cell_params  # noqa: F401  (all_finite: learners import it from here)
from ..cells.dispatch import cache_size, n_gates, recurrent_width
from ..cells.stack import stack_depth, stack_forward, top_offset
from ..losses import loss_and_grad, predict_output, readout, readout_backward
from ..optim import CLIP, clip_grad_norm, optimizer_step, squared_norm

STEPS, UPDATES, SKIPPED_NONFINITE, REJECTED_STATE, INFLUENCE_RESETS = range(5)
N_COUNTERS = 5

# What one sample did to a key's state (influence-carrying learners)
APPLIED, REJECTED, INFLUENCE_RESET = 0, 1, 2


@njit(cache=True, error_model="numpy")
def cell_params_end(cell, n_in, n):
    """Offset of the readout in ``theta``: the length of the cell's parameter block before it."""
    return n_cell_params(n_gates(cell), n_in, n, recurrent_width(cell, n))


@njit(cache=True, error_model="numpy")
def readout_step(task, theta, off, n, n_out, h, x, y, has_y, logits, pred, dlogits, grad, g_h):
    """Predict from ``h`` (and the step's input ``x``, read only by a skip readout); with a
    target, return the loss and start ``grad`` with the readout's part.

    ``grad`` is zeroed and receives ``dL/d(W_out, b_out[, S])``; ``g_h = dL/dh``.
    Without a target the loss is 0 and ``grad``/``g_h`` are untouched.
    """
    readout(theta, off, n, n_out, h, x, logits)
    predict_output(task, logits, pred)
    if not has_y:
        return 0.0
    loss = loss_and_grad(task, logits, y, dlogits)
    grad[:] = 0.0
    readout_backward(theta, off, n, n_out, h, x, dlogits, grad, g_h)
    return loss


@njit(cache=True, error_model="numpy")
def guarded_update(opt_kind, theta, grad, opt_state, hyper, counters, loss):
    """Clip and apply ``grad`` unless the loss or gradient is non-finite (then count a skip)."""
    sq = squared_norm(grad)
    if not (np.isfinite(loss) and np.isfinite(sq)):
        counters[SKIPPED_NONFINITE] += 1
        return False
    clip_grad_norm(grad, hyper[CLIP], sq)
    counters[UPDATES] += 1
    optimizer_step(opt_kind, theta, grad, opt_state, counters[UPDATES], hyper)
    return True


@njit(cache=True, error_model="numpy")
def settle_sample(outcome, has_y, loss, opt_kind, theta, grad, opt_state, hyper, counters):
    """Count what a sample did and, if it produced a gradient, apply it; return the loss to report
    (NaN when there was no target or no usable gradient)."""
    if outcome == REJECTED:
        counters[REJECTED_STATE] += 1
        return np.nan
    counters[STEPS] += 1
    if outcome == INFLUENCE_RESET:
        counters[INFLUENCE_RESETS] += 1
        return np.nan
    if not has_y:
        return np.nan
    guarded_update(opt_kind, theta, grad, opt_state, hyper, counters, loss)
    return loss


@njit(cache=True, error_model="numpy")
def predict_from_state(cell, task, n_in, n, n_out, theta, Pc, x, s, pred, s_next):
    """The prediction one more sample would get from state ``s`` (unchanged) into ``pred``, and the
    state it would reach into ``s_next`` unless that is None (``Model.peek``; forecasts run forward
    from a copy of a state). ``s`` is the composite state of a stack (``cells.stack``)."""
    if s_next is None:  # resolved at compile time: None is its own type
        s_new = np.empty_like(s)
    else:
        s_new = s_next
    L = stack_depth(cell, n, s)
    cache = np.empty(cache_size(cell, n) * L, theta.dtype)
    logits = np.empty(n_out, theta.dtype)
    stack_forward(cell, theta, n_in, n, x, s, s_new, cache)
    readout(theta, Pc, n, n_out, s_new[top_offset(cell, n, s) :], x, logits)
    predict_output(task, logits, pred)


# The arrays a key owns under RTRL and SnAp-1 (each with a slot axis first): its state and influence matrix.
InfluenceKeyState = namedtuple("InfluenceKeyState", ["hidden", "influence"])


@njit(cache=True, error_model="numpy")
def clear_influence_key(keyed, slot):
    """Zero the state and influence matrix of ``slot`` (a new or evicted key)."""
    keyed.hidden[slot] = 0.0
    keyed.influence[slot] = 0.0


# The record loop and the sequence sum of RTRL, SnAp-1 and UORO, written once. They differ only in
# the per-sample function, ``sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw,
# ws, pred) -> (outcome, loss)``, which advances key ``slot`` of ``keyed`` by one sample and leaves the
# step's gradient in ``ws.grad``, and in ``clear(keyed, slot)``, which zeroes a key. A learner module
# binds its pair to the types of its workspace and key-state namedtuples (register_online_learner);
# Numba picks them while typing, so each learner gets its own compiled and cached loop. (A function
# passed in as an argument instead is a pointer to a Python object in the compiled code: not cacheable.)

_SAMPLES = {}  # workspace namedtuple class -> the learner's @njit sample function
_CLEARS = {}  # key-state namedtuple class -> the @njit function zeroing one key


def register_online_learner(workspace_class, key_state_class, sample, clear):
    """Run ``sample`` for workspaces of ``workspace_class`` and ``clear`` for key states of
    ``key_state_class`` in :func:`online_step_many` and :func:`online_sequence_gradient`."""
    _SAMPLES[workspace_class] = sample
    _CLEARS[key_state_class] = clear


def learner_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
    """The registered sample function of ``ws``'s learner (compiled code only)."""
    raise NotImplementedError("learner_sample runs in compiled code only")


def clear_key(keyed, slot):
    """The registered clearing function of ``keyed``'s learner (compiled code only)."""
    raise NotImplementedError("clear_key runs in compiled code only")


def _registered(table, numba_type, what):
    fn = table.get(getattr(numba_type, "instance_class", None))
    if fn is None:
        raise TypeError(f"no online learner registered for the {what} {numba_type}")
    return fn


@overload(learner_sample)
def _learner_sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
    sample = _registered(_SAMPLES, ws, "workspace")

    def run(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred):
        return sample(cell, task, n_in, n, n_out, theta, x, y, has_y, keyed, slot, draw, ws, pred)

    return run


@overload(clear_key)
def _clear_key(keyed, slot):
    clear = _registered(_CLEARS, keyed, "key state")

    def run(keyed, slot):
        clear(keyed, slot)

    return run


@njit(cache=True, error_model="numpy", nogil=True)  # the daemon overlaps it with Kafka I/O threads
def online_step_many(
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
    """Test-then-train over records in arrival order; each record's key owns slot ``slots[i]``.

    ``reset[i]`` clears the slot first (a new or evicted key). ``losses[i]`` is NaN when the record
    had no target or was rejected. ``draw``, the sample's index for random draws, is the count of
    applied steps, so a replay (also across a save and load) draws the same.
    """
    theta, opt_state, hyper, counters = borrowed((theta, opt_state, hyper, counters))
    keyed, ws, X, Y, has_y, slots, reset, out, losses = borrowed((keyed, ws, X, Y, has_y, slots, reset, out, losses))
    for i in range(X.shape[0]):
        slot = slots[i]
        if reset[i]:
            clear_key(keyed, slot)
        outcome, loss = learner_sample(
            cell, task, n_in, n, n_out, theta, X[i], Y[i], has_y[i], keyed, slot, counters[STEPS], ws, out[i]
        )
        losses[i] = settle_sample(outcome, has_y[i], loss, opt_kind, theta, ws.grad, opt_state, hyper, counters)


@njit(cache=True, error_model="numpy")
def online_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, keyed, ws, grad_sum):
    """``grad_sum = Σ_t dL_t/dθ`` of the learner over one sequence, parameters fixed; returns ``Σ_t L_t``.

    ``keyed`` holds one zeroed slot (the sequence's start); sample ``t`` is draw ``t``. A rejected
    sample or an overflowed influence makes the result NaN.
    """
    pred = np.empty(n_out, theta.dtype)
    grad_sum[:] = 0.0
    total = 0.0
    for t in range(X.shape[0]):
        outcome, loss = learner_sample(cell, task, n_in, n, n_out, theta, X[t], Y[t], has_y[t], keyed, 0, t, ws, pred)
        if outcome != APPLIED:
            grad_sum[:] = np.nan
            return np.nan
        if has_y[t]:
            total += loss
            grad_sum += ws.grad
    return total
