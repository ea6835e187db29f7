"""A time-delay feed-forward baseline: a one-hidden-layer MLP over the last ``w`` inputs.

Parameters, flat: ``W1 (H, w*m) | b1 (H) | W_out (o, H) | b_out (o)``. Per key
the window of the last ``w`` inputs (oldest first, zero before the stream
starts) is all the state there is; gradients are exact and local in time.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ..cells.borrow import borrowed
from .common import STEPS, guarded_update, readout_step

# Scratch of one step: hidden activations, logits and their gradient, dL/dz, and the gradient.
WindowFFWorkspace = namedtuple("WindowFFWorkspace", ["z", "logits", "dlogits", "g_z", "grad"])


def make_workspace(n_hidden, n_out, n_params, dtype):
    """The scratch of one window-MLP step: hidden activations, logits and their gradient, dL/dh and
    the gradient.
    """
    return WindowFFWorkspace(
        np.zeros(n_hidden, dtype),
        np.zeros(n_out, dtype),
        np.zeros(n_out, dtype),
        np.zeros(n_hidden, dtype),
        np.zeros(n_params, dtype),
    )


@njit(cache=True, error_model="numpy")
def window_ff_step_many(
    task,
    opt_kind,
    n_hidden,
    n_out,
    theta,
    opt_state,
    hyper,
    counters,
    windows,
    X,
    Y,
    has_y,
    slots,
    reset,
    ws,
    out,
    losses,
):
    """Test-then-train over records in arrival order; ``windows[slot]`` is the key's (w, m) window."""
    theta, opt_state, hyper, counters = borrowed((theta, opt_state, hyper, counters))
    windows, ws, X, Y, has_y, slots, reset, out, losses = borrowed(
        (windows, ws, X, Y, has_y, slots, reset, out, losses)
    )
    z, logits, dlogits, g_z, grad = ws.z, ws.logits, ws.dlogits, ws.g_z, ws.grad
    w, m = windows.shape[1], windows.shape[2]
    D = w * m
    off = n_hidden * (D + 1)
    for i in range(X.shape[0]):
        win = windows[slots[i]]
        if reset[i]:
            win[:] = 0.0
        for t in range(w - 1):
            win[t] = win[t + 1]
        win[w - 1] = X[i]
        u = win.reshape(D)
        for j in range(n_hidden):
            acc = theta[n_hidden * D + j]
            for p in range(D):
                acc += theta[j * D + p] * u[p]
            z[j] = np.tanh(acc)
        counters[STEPS] += 1
        losses[i] = np.nan
        loss = readout_step(
            task, theta, off, n_hidden, n_out, z, X[i], Y[i], has_y[i], logits, out[i], dlogits, grad, g_z
        )
        if not has_y[i]:
            continue
        losses[i] = loss
        for j in range(n_hidden):
            da = g_z[j] * (1.0 - z[j] * z[j])
            for p in range(D):
                grad[j * D + p] += da * u[p]
            grad[n_hidden * D + j] += da
        guarded_update(opt_kind, theta, grad, opt_state, hyper, counters, loss)
