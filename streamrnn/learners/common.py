"""Pieces every online learner shares: readout and loss of one step, the guarded update.

Counters (an int64 array owned by the Model) record what happened to each record.
"""
import numpy as np
from numba import njit

from ..cells.common import n_cell_params
from ..cells.dispatch import cache_size, cell_forward, n_gates, recurrent_width
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


@njit(cache=True, error_model="numpy")
def predict_from_state(cell, task, n_in, n, n_out, theta, Pc, x, s, pred):
    """The prediction one more sample would get, without changing ``s`` (``Model.peek``)."""
    s_new = np.empty_like(s)
    cache = np.empty(cache_size(cell, n), theta.dtype)
    logits = np.empty(n_out, theta.dtype)
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    readout(theta, Pc, n, n_out, s_new, x, logits)
    predict_output(task, logits, pred)
