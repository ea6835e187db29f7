"""Truncated BPTT: equals full BPTT when the window covers the sequence, and BPTT per window otherwise."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS
from streamrnn.learners import registry
from streamrnn.learners.bptt import bptt_sequence_gradient
from streamrnn.learners.rtrl import rtrl_sample
from streamrnn.losses import TASK_IDS

from .helpers import CELLS, N_OUTPUTS, TASKS, lag_buffer_bytes, random_sequence, rel_err

N_IN, N, T = 3, 5, 32


def make_model(cell, task, **kw):
    kw.setdefault("seed", 2)
    return sr.Model(cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=N_OUTPUTS[task], task=task, **kw)


def states_along(model, X):
    """State before each step and after the last, from a zero start (model left untouched)."""
    probe = sr.Model(**{**model.config, "lr": 0.0, "optimizer": "sgd"})
    probe.set_weights(model.get_weights())
    states = [probe.hidden_state()]
    for x in X:
        probe.step(x)
        states.append(probe.hidden_state())
    return states


def reference_tbptt(model, X, Y, k, h):
    """Σ over updates u (every h steps, plus a final flush) of the gradient of the losses in
    (u - h, u], backpropagated to step max(u - k, 0) through full BPTT from that state."""
    Yf, has_y = model._targets(Y, X.shape[0])
    states = states_along(model, X)
    total = np.zeros(model.n_params)
    updates = list(range(h, X.shape[0] + 1, h))
    if updates[-1] != X.shape[0]:
        updates.append(X.shape[0])
    prev = 0
    for u in updates:
        start = max(u - k, 0)
        mask = has_y[start:u].copy()
        mask[: max(prev - start, 0)] = False  # losses of earlier updates are not injected again
        g = np.zeros(model.n_params)
        bptt_sequence_gradient(
            CELL_IDS[model.config["cell"]],
            TASK_IDS[model.config["task"]],
            N_IN,
            N,
            model.n_outputs,
            model.theta,
            model.n_params_cell,
            X[start:u],
            Yf[start:u],
            mask,
            states[start],
            g,
        )
        total += g
        prev = u
    return model.unflatten(total)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_with_window_covering_the_sequence_equals_bptt(cell, task):
    model = make_model(cell, task)
    X, Y = random_sequence(task, n_steps=T, n_inputs=N_IN, seed=4)
    g_bptt = model.gradient(X, Y, method="bptt")
    assert rel_err(model.gradient(X, Y, method="tbptt", truncation=T), g_bptt) < 1e-9
    assert rel_err(model.gradient(X, Y, method="tbptt", truncation=T + 10), g_bptt) < 1e-9


@pytest.mark.parametrize("k,h", [(7, 7), (8, 3), (5, 1), (10, 4)])
@pytest.mark.parametrize("cell", CELLS)
def test_truncated_windows_match_bptt_per_window(cell, k, h):
    model = make_model(cell, "regression", standardize=False)  # the reference runs on the raw inputs
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=5)
    got = model.gradient(X, Y, method="tbptt", truncation=k, stride=h)
    assert rel_err(got, reference_tbptt(model, X, Y, k, h)) < 1e-9
    assert rel_err(got, model.gradient(X, Y, method="bptt")) > 1e-6  # truncation does cut something


@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_k_equals_rtrl_with_influence_reset_at_window_starts(cell):
    """With stride = k, each window's gradient is RTRL's from the window's start state with M = 0."""
    k = 8
    model = make_model(cell, "regression", standardize=False)  # the reference runs on the raw inputs
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=6)
    Yf, has_y = model._targets(Y, T)
    states = states_along(model, X)
    dense = registry.get("rtrl")
    ws = dense.make_workspace(model.dims)
    pred = np.empty(model.n_outputs)
    total = np.zeros(model.n_params)
    for start in range(0, T, k):
        keyed = dense.new_key_state(model.dims)  # the influence matrix reset at the window start
        keyed.hidden[0] = states[start]
        for t in range(start, min(start + k, T)):
            outcome, _ = rtrl_sample(
                CELL_IDS[cell], 0, N_IN, N, model.n_outputs, model.theta, X[t], Yf[t], has_y[t], keyed, 0, t, ws, pred
            )
            assert outcome == 0
            if has_y[t]:
                total += ws.grad
    got = model.gradient(X, Y, method="tbptt", truncation=k)
    assert rel_err(got, model.unflatten(total)) < 1e-9


@pytest.mark.parametrize("cell", CELLS)
def test_online_tbptt_applies_the_window_gradient(cell):
    lr = 0.05
    k = 6
    model = make_model(cell, "regression", learner="tbptt", truncation=k, optimizer="sgd", lr=lr)
    X, Y = random_sequence("regression", n_steps=k, n_inputs=N_IN, seed=7)
    g = model.gradient(X, Y, method="tbptt")
    w0 = model.get_weights()
    model.step_many(X[: k - 1], Y[: k - 1])
    assert all(np.array_equal(w0[n], v) for n, v in model.get_weights().items())  # no update mid-window
    model.step(X[k - 1], Y[k - 1])
    for name, w in model.get_weights().items():
        np.testing.assert_allclose(w, w0[name] - lr * g[name], rtol=0, atol=1e-14)
    assert model.stats["updates"] == 1


def test_tbptt_memory_is_bounded_by_the_window():
    m = make_model("gru", "regression", learner="tbptt", truncation=4)
    per_key = m.state_bytes_per_key
    X, Y = random_sequence("regression", n_steps=500, n_inputs=N_IN, seed=8)
    m.step_many(X, Y)
    assert sum(a.nbytes for a in m._keyed.arrays.values()) == per_key
    S, C, k, width = N, 6 * N, 4, 2
    # float64 state + window of (input, state, cache, target); one bool flag per step; an int64 count
    assert per_key == 8 * (S + k * (N_IN + S + C + width)) + k * 1 + 8 + lag_buffer_bytes(m)


def test_tbptt_arguments_are_checked():
    with pytest.raises(ValueError, match="needs truncation"):
        sr.Model(learner="tbptt")
    with pytest.raises(ValueError, match="stride must be <= truncation"):
        sr.Model(learner="tbptt", truncation=3, stride=4)
    with pytest.raises(ValueError, match="apply to learner='tbptt' only"):
        sr.Model(learner="rtrl", truncation=3)
    with pytest.raises(ValueError, match="needs truncation"):
        sr.Model().gradient(np.ones((3, 1)), np.ones(3), method="tbptt")
