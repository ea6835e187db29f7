"""Readout and per-step losses, as compiled kernels.

The readout is ``logits = W_out h + b_out`` over the first ``n`` state values,
or, with the readout skip connection, ``logits = W_out h + S x + b_out``: the
readout also sees the step's input ``x`` (m values). Its parameters start at
``theta[off]``: ``W_out`` (n_out, n), ``b_out`` (n_out,), then ``S`` (n_out, m)
when ``theta`` continues past ``b_out`` (the Model's ``readout_skip``), so the
presence of ``S`` is read from the length of ``theta``.
Tasks: regression (``½‖ŷ − y‖²`` over ``n_outputs`` values), classification
(softmax cross-entropy, ``y`` an integer class stored as a float) and binary
(logistic loss on one logit, ``y`` in {0, 1}). The prediction a model returns
is ``ŷ`` for regression, class probabilities for classification and
``P(y = 1)`` for binary.
"""

import numpy as np
from numba import njit

REGRESSION, CLASSIFICATION, BINARY = 0, 1, 2
TASK_IDS = {"regression": REGRESSION, "classification": CLASSIFICATION, "binary": BINARY}


@njit(cache=True, error_model="numpy")
def has_skip(theta, off, n, n_out):
    """True when the readout at ``theta[off]`` carries skip weights ``S`` after ``b_out``."""
    return theta.shape[0] > off + n_out * (n + 1)


@njit(cache=True, error_model="numpy")
def readout(theta, off, n, n_out, h, x, logits):
    """``logits = W_out h (+ S x) + b_out``; readout parameters start at ``theta[off]``."""
    b = off + n_out * n
    skip = has_skip(theta, off, n, n_out)
    m = x.shape[0]
    for o in range(n_out):
        acc = theta[b + o]
        row = off + o * n
        for k in range(n):
            acc += theta[row + k] * h[k]
        if skip:
            row = b + n_out + o * m
            for i in range(m):
                acc += theta[row + i] * x[i]
        logits[o] = acc


@njit(cache=True, error_model="numpy")
def readout_backward(theta, off, n, n_out, h, x, dlogits, grad, g_h):
    """``grad[readout] += dL/d(W_out, b_out, S)`` and ``g_h = W_out^T dlogits``.

    ``S x`` does not depend on ``h``, so the skip path adds nothing to ``g_h``:
    the recurrent part of every learner is unchanged by it."""
    b = off + n_out * n
    skip = has_skip(theta, off, n, n_out)
    m = x.shape[0]
    for k in range(n):
        g_h[k] = 0.0
    for o in range(n_out):
        d = dlogits[o]
        row = off + o * n
        for k in range(n):
            grad[row + k] += d * h[k]
            g_h[k] += theta[row + k] * d
        grad[b + o] += d
        if skip:
            row = b + n_out + o * m
            for i in range(m):
                grad[row + i] += d * x[i]


@njit(cache=True, error_model="numpy")
def predict_output(task, logits, out):
    """Map logits to the user-facing prediction (identity, softmax or sigmoid)."""
    if task == REGRESSION:
        out[:] = logits
    elif task == CLASSIFICATION:
        mx = logits.max()
        total = 0.0
        for o in range(logits.shape[0]):
            out[o] = np.exp(logits[o] - mx)
            total += out[o]
        for o in range(logits.shape[0]):
            out[o] /= total
    else:
        z = logits[0]
        out[0] = 1.0 / (1.0 + np.exp(-z))


@njit(cache=True, error_model="numpy")
def loss_and_grad(task, logits, y, dlogits):
    """Return ``L`` and write ``dL/dlogits`` (numerically stable forms)."""
    n_out = logits.shape[0]
    if task == REGRESSION:
        loss = 0.0
        for o in range(n_out):
            d = logits[o] - y[o]
            dlogits[o] = d
            loss += 0.5 * d * d
        return loss
    if task == CLASSIFICATION:
        mx = logits.max()
        total = 0.0
        for o in range(n_out):
            total += np.exp(logits[o] - mx)
        lse = mx + np.log(total)
        target = int(y[0])
        for o in range(n_out):
            dlogits[o] = np.exp(logits[o] - lse)
        dlogits[target] -= 1.0
        return lse - logits[target]
    z = logits[0]
    t = y[0]
    # softplus(z) - t z, written so neither branch overflows.
    loss = max(z, 0.0) - z * t + np.log1p(np.exp(-abs(z)))
    dlogits[0] = 1.0 / (1.0 + np.exp(-z)) - t
    return loss
