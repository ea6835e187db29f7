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
