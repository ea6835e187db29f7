"""Truncated backpropagation through time, online: TBPTT(k, h).

Per key the learner keeps a ring buffer of the last ``k`` steps (input, state
before the step, the cell's cache, target), so memory is O(k (S + C + m)) per
key, independent of stream length. Every ``h`` steps of a key (the stride,
``h <= k``) it backpropagates the losses of those last ``h`` steps through the
last ``k`` steps and updates the parameters. With ``h = k`` the windows do not
overlap and the summed gradient equals RTRL's with the influence matrix reset
at every window start; with ``k >= T`` it is full BPTT. A stack of layers
(:mod:`streamrnn.cells.stack`) keeps its composite state and cache per step and
backpropagates through every layer of each step, top first.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ..cells.borrow import borrowed
from ..cells.dispatch import cache_size, n_gates
from ..cells.stack import stack_backward, stack_depth, stack_forward, stack_params, top_offset
from .common import REJECTED_STATE, STEPS, all_finite, guarded_update, readout_step
from .registry import LearnerSpec, register

# The arrays a key owns (a slot axis first): its state, and the ring of its last k steps (input, state
# before the step, the cell's cache, target, whether it had one) with the count of steps taken.
TBPTTKeyState = namedtuple(
    "TBPTTKeyState",
    [
        "hidden",
        "window_inputs",
        "window_states",
        "window_caches",
        "window_targets",
        "window_has_target",
        "window_count",
    ],
)

# The update stride h, and the scratch: the new state and cache of a forward step, the backward pass's
# dL/ds and dL/ds_prev, pre-activation gradients, logits, a prediction, their gradient, dL/dh, one
# step's readout gradient, ``grad``, the window's summed gradient (the one applied), and ``dx``, the
# gradient into a layer's input (a stack's; empty for one layer).
TBPTTWorkspace = namedtuple(
    "TBPTTWorkspace",
    [
        "stride",
        "s_new",
        "cache",
        "g_s",
        "g_prev",
        "da_ih",
        "da_hh",
        "logits",
        "pred",
        "dlogits",
        "g_h",
        "step_grad",
        "grad",
        "dx",
    ],
)


def make_workspace(dims):
    """The workspace of TBPTT(``dims.truncation``, ``dims.stride``) for a model of ``dims``."""
    dt, S, n, o, L = dims.dtype, dims.state_size, dims.n_hidden, dims.n_outputs, dims.n_layers
    rows = n_gates(dims.cell) * n
    return TBPTTWorkspace(
        int(dims.stride),
        np.zeros(S, dt),
        np.zeros(L * cache_size(dims.cell, n), dt),
        np.zeros(S, dt),
        np.zeros(S, dt),
        np.zeros(rows, dt),
        np.zeros(rows, dt),
        np.zeros(o, dt),
        np.zeros(o, dt),
        np.zeros(o, dt),
        np.zeros(n, dt),
        np.zeros(dims.n_params, dt),
        np.zeros(dims.n_params, dt),
        np.zeros(max(dims.n_inputs, n) if L > 1 else 0, dt),
    )


def key_layout(dims):
    """A key's state (S,) and its window of the last ``k`` inputs, states, cell caches, targets and
    target flags, with the count of rows the window holds.
    """
    S, dt, k = dims.state_size, dims.dtype, dims.truncation
    return [
        ("hidden", (S,), dt),
        ("window_inputs", (k, dims.n_inputs), dt),
        ("window_states", (k, S), dt),
        ("window_caches", (k, dims.n_layers * cache_size(dims.cell, dims.n_hidden)), dt),
        ("window_targets", (k, dims.target_width), dt),
        ("window_has_target", (k,), np.dtype(np.bool_)),
        ("window_count", (), np.dtype(np.int64)),
    ]


@njit(cache=True, error_model="numpy")
def tbptt_backprop(
    cell,
    task,
    n_in,
    n,
    n_out,
    theta,
    Pc,
    s_last,
    win_x,
    win_s,
    win_c,
    win_y,
    win_has,
    count,
    n_back,
    n_inject,
    ws,
    grad,
):
    """``grad = Σ`` over the last ``n_inject`` steps of ``dL_t/dθ``, backpropagated ``n_back`` steps.

    The window arrays are rings indexed by step number modulo ``k``; ``count``
    steps have been taken, the newest state is ``s_last``. Returns the summed
    loss, recomputed at the current parameters.
    """
    g_s, g_prev, da_ih, da_hh, step_grad, g_h = ws.g_s, ws.g_prev, ws.da_ih, ws.da_hh, ws.step_grad, ws.g_h
    k = win_x.shape[0]
    top = top_offset(cell, n, s_last)
    grad[:] = 0.0
    g_s[:] = 0.0
    total = 0.0
    for back in range(n_back):
        t = count - 1 - back
        idx = t % k
        s_after = s_last if back == 0 else win_s[(t + 1) % k]
        if back < n_inject and win_has[idx]:
            total += readout_step(
                task,
                theta,
                Pc,
                n,
                n_out,
                s_after[top:],
                win_x[idx],
                win_y[idx],
                True,
                ws.logits,
                ws.pred,
                ws.dlogits,
                step_grad,
                g_h,
            )
            grad[Pc:] += step_grad[Pc:]
            for j in range(n):
                g_s[top + j] += g_h[j]
        stack_backward(
            cell,
            theta,
            n_in,
            n,
            win_x[idx],
            win_s[idx],
            s_after,
            win_c[idx],
            g_s,
            g_prev,
            grad,
            da_ih,
            da_hh,
            ws.dx,
            False,
        )
        g_s[:] = g_prev
    return total


@njit(cache=True, error_model="numpy")
def tbptt_advance(
    cell, task, n_in, n, n_out, theta, Pc, x, y, has_y, s, win_x, win_s, win_c, win_y, win_has, count, ws, pred
):
    """Step one key forward, recording the step in its window. False (and nothing changed) when
    the new state is not finite."""
    s_new, cache = ws.s_new, ws.cache
    stack_forward(cell, theta, n_in, n, x, s, s_new, cache)
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
    top = top_offset(cell, n, s)
    loss = readout_step(
        task, theta, Pc, n, n_out, s[top:], x, y, has_y, ws.logits, pred, ws.dlogits, ws.step_grad, ws.g_h
    )
    return True, loss


@njit(cache=True, error_model="numpy", nogil=True)  # the daemon overlaps it with Kafka I/O threads
def tbptt_step_many(
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
    """:func:`tbptt_records`, ``keyed`` and ``ws`` given as plain tuples of their fields (see
    :data:`~streamrnn.learners.registry.LearnerSpec`)."""
    tbptt_records(
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
        TBPTTKeyState(*keyed),
        X,
        Y,
        has_y,
        slots,
        reset,
        TBPTTWorkspace(*ws),
        out,
        losses,
    )


@njit(cache=True, error_model="numpy", nogil=True)
def tbptt_records(
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
    """Test-then-train over records in arrival order, one TBPTT window per key slot."""
    theta, opt_state, hyper, counters = borrowed((theta, opt_state, hyper, counters))
    keyed, ws, X, Y, has_y, slots, reset, out, losses = borrowed((keyed, ws, X, Y, has_y, slots, reset, out, losses))
    Pc = stack_params(cell, n_in, n, stack_depth(cell, n, keyed.hidden[0]))
    H, W_x, W_s, W_c = keyed.hidden, keyed.window_inputs, keyed.window_states, keyed.window_caches
    W_y, W_has, W_count = keyed.window_targets, keyed.window_has_target, keyed.window_count
    k = W_x.shape[1]
    stride = ws.stride
    grad = ws.grad
    for i in range(X.shape[0]):
        slot = slots[i]
        if reset[i]:
            H[slot] = 0.0
            W_count[slot] = 0
        losses[i] = np.nan
        ok, loss = tbptt_advance(
            cell,
            task,
            n_in,
            n,
            n_out,
            theta,
            Pc,
            X[i],
            Y[i],
            has_y[i],
            H[slot],
            W_x[slot],
            W_s[slot],
            W_c[slot],
            W_y[slot],
            W_has[slot],
            W_count[slot],
            ws,
            out[i],
        )
        if not ok:
            counters[REJECTED_STATE] += 1
            continue
        counters[STEPS] += 1
        if has_y[i]:
            losses[i] = loss
        W_count[slot] += 1
        count = W_count[slot]
        if count % stride == 0:
            total = tbptt_backprop(
                cell,
                task,
                n_in,
                n,
                n_out,
                theta,
                Pc,
                H[slot],
                W_x[slot],
                W_s[slot],
                W_c[slot],
                W_y[slot],
                W_has[slot],
                count,
                min(k, count),
                stride,
                ws,
                grad,
            )
            injected = False
            for back in range(stride):
                injected |= W_has[slot, (count - 1 - back) % k]
            if injected:
                guarded_update(opt_kind, theta, grad, opt_state, hyper, counters, total)


@njit(cache=True, error_model="numpy")
def tbptt_sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, keyed, ws, grad_sum):
    """``Σ`` of the gradients TBPTT(k, stride) would apply over one sequence from a zero state (``keyed``:
    one zeroed slot, its window of k steps), parameters fixed; losses after the last full stride are
    flushed at the end."""
    Pc = stack_params(cell, n_in, n, stack_depth(cell, n, keyed.hidden[0]))
    s, win_x, win_s, win_c = keyed.hidden[0], keyed.window_inputs[0], keyed.window_states[0], keyed.window_caches[0]
    win_y, win_has = keyed.window_targets[0], keyed.window_has_target[0]
    k = win_x.shape[0]
    stride = ws.stride
    pred = np.empty(n_out, theta.dtype)
    grad = ws.grad
    grad_sum[:] = 0.0
    total = 0.0
    T = X.shape[0]
    for t in range(T):
        ok, _ = tbptt_advance(
            cell,
            task,
            n_in,
            n,
            n_out,
            theta,
            Pc,
            X[t],
            Y[t],
            has_y[t],
            s,
            win_x,
            win_s,
            win_c,
            win_y,
            win_has,
            t,
            ws,
            pred,
        )
        if not ok:
            grad_sum[:] = np.nan
            return np.nan
        count = t + 1
        pending = count % stride
        if pending == 0 or count == T:
            n_inject = stride if pending == 0 else pending
            total += tbptt_backprop(
                cell,
                task,
                n_in,
                n,
                n_out,
                theta,
                Pc,
                s,
                win_x,
                win_s,
                win_c,
                win_y,
                win_has,
                count,
                min(k, count),
                n_inject,
                ws,
                grad,
            )
            grad_sum += grad
    return total


SPEC = register(
    LearnerSpec(
        name="tbptt",
        key_layout=key_layout,
        key_state=TBPTTKeyState,
        make_workspace=make_workspace,
        step_many=tbptt_step_many,
        sequence_gradient=tbptt_sequence_gradient,
        windowed=True,
        stacks=True,
    )
)
