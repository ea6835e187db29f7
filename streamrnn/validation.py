"""Argument and sample checks shared by every estimator: clear ``ValueError``s, nothing applied."""

import math

import numpy as np

from .losses import BINARY, REGRESSION
from .optim import (
    BETA1,
    BETA2,
    CLIP,
    COCOB_ALPHA,
    COCOB_DEFAULT_ALPHA,
    EPS,
    HD_HYPERGRAD_LR,
    HD_LR_MAX,
    HD_LR_MIN,
    HYPERGRAD_LR,
    LR,
    LR_MAX,
    LR_MIN,
    MOMENTUM,
    N_HYPER,
    OPTIMIZER_IDS,
    RACE_FACTORS,
    WEIGHT_DECAY,
)

DTYPES = ("float64", "float32")
# "race": K Adam members at rates lr * RACE_FACTORS, predicting with the member of lowest discounted
# prequential loss (streamrnn.optim.race_select); not a kernel optimizer, the Model runs the members.
RACE = "race"
OPTIMIZERS = tuple(OPTIMIZER_IDS) + (RACE,)


def choice(name, value, allowed):
    """``value`` if it is one of ``allowed``, else ValueError naming ``name``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def positive_int(name, value):
    """``value`` as an int if it is an integer >= 1 (not a bool), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def finite_nonneg(name, value):
    """``value`` as a float if it is a finite number >= 0 (not a bool), else ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_seed(seed):
    """``seed`` as an int if it is an integer (not a bool), else ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")
    return int(seed)


def check_task_outputs(task, n_outputs):
    """ValueError unless ``n_outputs`` fits ``task``: at least 2 classes, exactly one output for binary."""
    if task == "classification" and n_outputs < 2:
        raise ValueError(f"classification needs n_outputs >= 2 classes; got {n_outputs}")
    if task == "binary" and n_outputs != 1:
        raise ValueError(f"binary task has one output (the logit of class 1); got n_outputs={n_outputs}")


def optimizer_settings(optimizer, lr, clip, betas, eps, momentum, weight_decay, allow_race=False):
    """Validated optimizer settings as ``(config dict, hyper-parameter vector for kernels)``.

    For ``optimizer="race"`` the vector is the members' template (its ``LR`` is ``lr``; the Model
    scales it per member); only estimators that run a race (``allow_race``, the Model) accept it."""
    choice("optimizer", optimizer, OPTIMIZERS if allow_race else tuple(OPTIMIZER_IDS))
    lr = finite_nonneg("lr", lr)
    clip = None if clip is None else finite_nonneg("clip", clip)
    eps = finite_nonneg("eps", eps)
    momentum = finite_nonneg("momentum", momentum)
    weight_decay = finite_nonneg("weight_decay", weight_decay)
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1); got {betas!r}")
    if optimizer == RACE and momentum != 0.0:
        raise ValueError(
            f"optimizer='race' races Adam learners (rates lr x {RACE_FACTORS}); momentum is an "
            f"SGD setting and does not apply: got momentum={momentum!r}"
        )
    hyper = np.zeros(N_HYPER, np.float64)
    hyper[[LR, BETA1, BETA2, EPS, MOMENTUM, WEIGHT_DECAY, CLIP]] = (
        lr,
        betas[0],
        betas[1],
        eps,
        momentum,
        weight_decay,
        clip or 0.0,
    )
    hyper[[HYPERGRAD_LR, LR_MIN, LR_MAX, COCOB_ALPHA]] = HD_HYPERGRAD_LR, HD_LR_MIN, HD_LR_MAX, COCOB_DEFAULT_ALPHA
    config = dict(
        optimizer=optimizer,
        lr=lr,
        clip=clip or None,
        betas=[float(b) for b in betas],
        eps=eps,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    return config, hyper


def check_inputs(X, n_inputs, dtype):
    """``X`` as a C-contiguous ``(n_samples, n_inputs)`` array of ``dtype``; one sample may be 1-D."""
    X = np.asarray(X)
    if X.ndim == 1 and n_inputs == X.shape[0]:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n_inputs:
        raise ValueError(f"X must have shape (n_samples, {n_inputs}); got {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"X must be real numbers; got dtype {X.dtype}")
    with np.errstate(over="ignore"):  # an overflow becomes inf, reported just below
        X = np.ascontiguousarray(X, dtype=dtype)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(f"X row {int(np.argmax(bad))} contains NaN or inf (or overflows {dtype})")
    return X


def target_width(task_id, n_outputs):
    """Columns of a validated target row: ``n_outputs`` for regression, 1 (the label) otherwise."""
    return n_outputs if task_id == REGRESSION else 1


def check_targets(Y, n_rows, task_id, n_outputs, dtype):
    """Targets as ``(n_rows, width)`` plus a mask; NaN (or None) marks a row without target."""
    width = target_width(task_id, n_outputs)
    if Y is None:
        return np.zeros((n_rows, width), dtype), np.zeros(n_rows, np.bool_)
    if isinstance(Y, (list, tuple)):  # rows: None (no target), a number, or a sequence of numbers
        missing = np.full(width, np.nan)
        rows = []
        for i, v in enumerate(Y):
            v = missing if v is None else (v if np.ndim(v) else [v])
            if len(v) != width:
                raise ValueError(f"Y row {i} has {len(v)} values; expected {width} (or None for no target)")
            rows.append(v)
        Y = rows
    try:
        Y = np.array(Y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"targets must be numbers: {exc}") from None
    if Y.ndim == 1 and width == 1 and Y.shape[0] == n_rows:
        Y = Y[:, None]
    if Y.shape != (n_rows, width):
        raise ValueError(f"Y must have shape ({n_rows}, {width}); got {Y.shape}")
    nan = np.isnan(Y)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any():
        raise ValueError(f"Y row {int(np.argmax(partial))} is partly NaN: give all targets or none")
    has_y = ~nan[:, 0]
    if np.isinf(Y).any():
        raise ValueError(f"Y row {int(np.argmax(np.isinf(Y).any(axis=1)))} contains inf")
    if task_id != REGRESSION:
        labels = Y[has_y, 0]
        n_classes = 2 if task_id == BINARY else n_outputs
        bad = (labels != np.round(labels)) | (labels < 0) | (labels >= n_classes)
        if bad.any():
            raise ValueError(f"class label {labels[np.argmax(bad)]!r} is not an integer in [0, {n_classes})")
    with np.errstate(over="ignore"):
        Y = np.ascontiguousarray(np.where(nan, 0.0, Y), dtype=dtype)
    if not np.isfinite(Y).all():
        raise ValueError(f"a target overflows {dtype}")
    return Y, has_y


def check_resets(resets, n_rows):
    """Sequence starts as a bool array (n_rows,): booleans (or 0/1) only, one per row."""
    if resets is None:
        return None
    arr = np.asarray(resets)
    if arr.shape != (n_rows,):
        raise ValueError(f"resets must hold one flag per row ({n_rows}); got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise ValueError("resets must be booleans (or 0/1), one per row")
    return arr.astype(np.bool_)
