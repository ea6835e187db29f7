"""Truncated backpropagation through time, online: TBPTT(k, h).

Per key the learner keeps a ring buffer of the last ``k`` steps (input, state
before the step, the cell's cache, target), so memory is O(k (S + C + m)) per
key, independent of stream length. Every ``h`` steps of a key (the stride,
``h <= k``) it backpropagates the losses of those last ``h`` steps through the
last ``k`` steps and updates the parameters. With ``h = k`` the windows do not
overlap and the summed gradient equals RTRL's with the influence matrix reset
at every window start; with ``k >= T`` it is full BPTT.
"""
import numpy as np
from numba import njit

from ..cells.dispatch import cache_size, cell_backward, cell_forward, n_gates, state_size
from .common import REJECTED_STATE, STEPS, all_finite, cell_params_end, guarded_update, readout_step


def make_workspace(cell, n_in, n, n_out, n_params, dtype):
    S = state_size(cell, n)
    rows = n_gates(cell) * n
    return (np.zeros(S, dtype), np.zeros(cache_size(cell, n), dtype), np.zeros(S, dtype), np.zeros(S, dtype),
            np.zeros(rows, dtype), np.zeros(rows, dtype), np.zeros(n_out, dtype), np.zeros(n_out, dtype),
            np.zeros(n_out, dtype), np.zeros(n, dtype), np.zeros(n_params, dtype), np.zeros(n_params, dtype))


@njit(cache=True, error_model="numpy")
def tbptt_backprop(cell, task, n_in, n, n_out, theta, Pc, s_last, win_x, win_s, win_c, win_y, win_has,
                   count, n_back, n_inject, ws, grad):
    """``grad = Σ`` over the last ``n_inject`` steps of ``dL_t/dθ``, backpropagated ``n_back`` steps.

    The window arrays are rings indexed by step number modulo ``k``; ``count``
    steps have been taken, the newest state is ``s_last``. Returns the summed
    loss, recomputed at the current parameters.
    """
    _, _, g_s, g_prev, da_ih, da_hh, logits, pred, dlogits, g_h, step_grad, _ = ws
    k = win_x.shape[0]
    grad[:] = 0.0
    g_s[:] = 0.0
    total = 0.0
    for back in range(n_back):
        t = count - 1 - back
        idx = t % k
        s_after = s_last if back == 0 else win_s[(t + 1) % k]
        if back < n_inject and win_has[idx]:
            total += readout_step(task, theta, Pc, n, n_out, s_after, win_x[idx], win_y[idx], True,
                                  logits, pred, dlogits, step_grad, g_h)
            grad[Pc:] += step_grad[Pc:]
            for j in range(n):
                g_s[j] += g_h[j]
        cell_backward(cell, theta, n_in, n, win_x[idx], win_s[idx], s_after, win_c[idx],
                      g_s, g_prev, grad, da_ih, da_hh)
        g_s[:] = g_prev
    return total


@njit(cache=True, error_model="numpy")
def tbptt_advance(cell, task, n_in, n, n_out, theta, Pc, x, y, has_y, s, win_x, win_s, win_c, win_y,
                  win_has, count, ws, pred):
    """Step one key forward, recording the step in its window. False (and nothing changed) when
    the new state is not finite."""
    s_new, cache = ws[0], ws[1]
    cell_forward(cell, theta, n_in, n, x, s, s_new, cache)
    if not all_finite(s_new):
        pred[:] = np.nan
        return False, 0.0
    idx = count % win_x.shape[0]
    win_x[idx] = x
    win_s[idx] = s
    win_c[idx] = cache
    win_y[idx] = y
    win_has[idx] = has_y
    s[:] = s_new
    logits, dlogits, g_h, step_grad = ws[6], ws[8], ws[9], ws[10]
    loss = readout_step(task, theta, Pc, n, n_out, s, x, y, has_y, logits, pred, dlogits, step_grad, g_h)
    return True, loss


@njit(cache=True, error_model="numpy", nogil=True)   # the daemon overlaps it with Kafka I/O threads
def tbptt_step_many(cell, task, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters,
                    H, W_x, W_s, W_c, W_y, W_has, W_count, stride, X, Y, has_y, slots, reset, ws, out, losses):
    """Test-then-train over records in arrival order, one TBPTT window per key slot."""
    Pc = cell_params_end(cell, n_in, n)
    k = W_x.shape[1]
    grad = ws[11]
    for i in range(X.shape[0]):
        slot = slots[i]
        if reset[i]:
            H[slot] = 0.0
            W_count[slot] = 0
        losses[i] = np.nan
        ok, loss = tbptt_advance(cell, task, n_in, n, n_out, theta, Pc, X[i], Y[i], has_y[i], H[slot],
                                 W_x[slot], W_s[slot], W_c[slot], W_y[slot], W_has[slot], W_count[slot], ws, out[i])
        if not ok:
            counters[REJECTED_STATE] += 1
            continue
        counters[STEPS] += 1
        if has_y[i]:
            losses[i] = loss
        W_count[slot] += 1
        count = W_count[slot]
        if count % stride == 0:
            total = tbptt_backprop(cell, task, n_in, n, n_out, theta, Pc, H[slot], W_x[slot], W_s[slot],
                                   W_c[slot], W_y[slot], W_has[slot], count, min(k, count), stride, ws, grad)
            injected = False
            for back in range(stride):
                injected |= W_has[slot, (count - 1 - back) % k]
            if injected:
                guarded_update(opt_kind, theta, grad, opt_state, hyper, counters, total)


@njit(cache=True, error_model="numpy")
def tbptt_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, k, stride, ws, grad_sum):
    """``Σ`` of the gradients TBPTT(k, stride) would apply over one sequence from a zero state,
    parameters fixed; losses after the last full stride are flushed at the end."""
    Pc = cell_params_end(cell, n_in, n)
    S = ws[0].shape[0]
    s = np.zeros(S, theta.dtype)
    win_x = np.zeros((k, n_in), theta.dtype)
    win_s = np.zeros((k, S), theta.dtype)
    win_c = np.zeros((k, ws[1].shape[0]), theta.dtype)
    win_y = np.zeros((k, Y.shape[1]), theta.dtype)
    win_has = np.zeros(k, np.bool_)
    pred = np.empty(n_out, theta.dtype)
    grad = ws[11]
    grad_sum[:] = 0.0
    total = 0.0
    T = X.shape[0]
    for t in range(T):
        ok, _ = tbptt_advance(cell, task, n_in, n, n_out, theta, Pc, X[t], Y[t], has_y[t], s,
                              win_x, win_s, win_c, win_y, win_has, t, ws, pred)
        if not ok:
            grad_sum[:] = np.nan
            return np.nan
        count = t + 1
        pending = count % stride
        if pending == 0 or count == T:
            n_inject = stride if pending == 0 else pending
            total += tbptt_backprop(cell, task, n_in, n, n_out, theta, Pc, s, win_x, win_s, win_c, win_y,
                                    win_has, count, min(k, count), n_inject, ws, grad)
            grad_sum += grad
    return total
