"""Shared test data: small random sequences for every task."""

import numpy as np

CELLS = ("rnn", "gru", "lstm")
TASKS = ("regression", "classification", "binary")
N_OUTPUTS = {"regression": 2, "classification": 3, "binary": 1}


def random_sequence(task, n_steps=32, n_inputs=3, seed=0, missing_every=5):
    """Inputs, targets (NaN every ``missing_every`` steps: unlabeled samples) for ``task``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_steps, n_inputs))
    if task == "regression":
        Y = rng.normal(size=(n_steps, N_OUTPUTS[task]))
    elif task == "classification":
        Y = rng.integers(0, N_OUTPUTS[task], n_steps).astype(float)[:, None]
    else:
        Y = rng.integers(0, 2, n_steps).astype(float)[:, None]
    if missing_every:
        Y[::missing_every] = np.nan
    return X, Y


def rel_err(a, b):
    """max |a - b| / max |b| over every parameter block of two gradient dicts (or arrays)."""
    if isinstance(a, dict):
        num = max(np.abs(a[k] - b[k]).max() for k in b)
        den = max(np.abs(b[k]).max() for k in b)
        return num / den
    return np.abs(a - b).max() / np.abs(b).max()


def lag_buffer_bytes(model):
    """Per-key bytes of the target-feedback buffer, by formula from the model's config: ``depth`` =
    max(target_lags, head_lags + 1) targets of width w (n_outputs; 1 for binary) and their observed
    flags, plus one flag (the key has had a target) with the head or baseline "last"; float64."""
    c = model.config
    depth = max(c["target_lags"], c["head_lags"] + 1 if c["head_lags"] else 0)
    if depth == 0:
        return 0
    w = 1 if c["task"] == "binary" else c["n_outputs"]
    ext = 1 if (c["head_lags"] or c["baseline"] == "last") else 0
    return 8 * (depth * w + depth + ext)


GATES = {"rnn": 1, "gru": 3, "lstm": 4, "ernn": 1, "egru": 3, "elstm": 4, "dlru": 1}
STATE_ROWS = {"rnn": 1, "gru": 1, "lstm": 2, "ernn": 1, "egru": 1, "elstm": 2, "dlru": 2}  # S / n


def layer_param_count(cell, n_in, n):
    """P of one layer by formula: G·n·(inputs + recurrent width + 2), recurrent width n (1 element-wise)."""
    rec = n if cell in ("rnn", "gru", "lstm") else 1
    return GATES[cell] * n * (n_in + rec + 2)


def rtrl_bytes_per_key(cell, n_in, n, n_layers, itemsize=8):
    """Per-key bytes of exact RTRL's dense form, by formula: the state, L·S values, and the influence
    of layer k's parameters on every layer l >= k, S·P_k values each (block lower triangular):
    S·Σ_{l<L} Σ_{k<=l} P_k = S·(L·P_0 + L(L-1)/2·P_1), with P_0 reading the n_in inputs, P_1 the n below."""
    S = STATE_ROWS[cell] * n
    P0, P1 = layer_param_count(cell, n_in, n), layer_param_count(cell, n, n)
    return itemsize * (n_layers * S + S * (n_layers * P0 + n_layers * (n_layers - 1) // 2 * P1))


def tbptt_bytes_per_key(cell, n_in, n, n_layers, k, target_width, itemsize=8):
    """Per-key bytes of TBPTT(k), by formula: the state (L·S), and per step of the window its input,
    the state before it (L·S), every layer's cache (L·2·G·n), its target and whether it had one
    (1 byte), and the step count (8 bytes)."""
    S, C = STATE_ROWS[cell] * n, 2 * GATES[cell] * n
    L = n_layers
    return itemsize * (L * S + k * (n_in + L * S + L * C + target_width)) + k + 8


def offline_fd_check(om, X, Y, eps=1e-6):
    """An offline model's analytic gradient (``om.gradient``, flattened in ``get_weights`` order) against
    central differences of ``om.loss``, ``(L(θ + ε e_p) − L(θ − ε e_p)) / 2ε`` for every parameter p:
    ``(relative error, analytic gradient)``. ``om.theta`` is left as it was."""
    names = list(om.get_weights())
    grads = om.gradient(X, Y)
    g = np.concatenate([np.asarray(grads[k]).ravel() for k in names])
    theta = om.theta.copy()
    num = np.empty_like(theta)
    for p in range(theta.size):
        om.theta[:] = theta
        om.theta[p] += eps
        lp = om.loss(X, Y)
        om.theta[p] -= 2 * eps
        lm = om.loss(X, Y)
        num[p] = (lp - lm) / (2 * eps)
    om.theta[:] = theta
    return rel_err(g, num), g
