"""Optimizers and gradient clipping as compiled kernels (PyTorch semantics).

State is one ``(2, P)`` array per model: SGD keeps its momentum buffer in row 0;
Adam keeps the first and second moments in rows 0 and 1. ``step`` counts the
updates applied so far (Adam's bias correction).

Every kernel in streamrnn compiles with ``error_model="numpy"``: IEEE division
(inf/NaN, which the learners check for explicitly) instead of Python's
zero-division check, whose branch keeps loops such as Adam's from vectorising.
"""
import numpy as np
from numba import njit

SGD, ADAM = 0, 1
OPTIMIZER_IDS = {"sgd": SGD, "adam": ADAM}

# Layout of the hyper-parameter vector handed to kernels.
LR, BETA1, BETA2, EPS, MOMENTUM, WEIGHT_DECAY, CLIP = range(7)
N_HYPER = 7


@njit(cache=True, error_model="numpy")
def squared_norm(g):
    """Σ g², with eight independent partial sums: a serial float sum cannot be vectorised
    (reassociation would change the result); fixed partial sums can, deterministically."""
    parts = np.zeros(8)
    P = g.shape[0]
    head = P - P % 8
    for p in range(0, head, 8):
        for k in range(8):
            parts[k] += g[p + k] * g[p + k]
    total = 0.0
    for p in range(head, P):
        total += g[p] * g[p]
    for k in range(8):
        total += parts[k]
    return total


@njit(cache=True, error_model="numpy")
def clip_grad_norm(g, max_norm, sq_norm):
    """``torch.nn.utils.clip_grad_norm_`` on one flat gradient, norm given squared."""
    if max_norm > 0.0:
        coef = max_norm / (np.sqrt(sq_norm) + 1e-6)
        if coef < 1.0:
            for p in range(g.shape[0]):
                g[p] *= coef


@njit(cache=True, error_model="numpy")
def optimizer_step(kind, theta, grad, state, step, hyper):
    """Apply one update; ``step`` is the 1-based index of this update."""
    lr = hyper[LR]
    wd = hyper[WEIGHT_DECAY]
    P = theta.shape[0]
    if kind == SGD:
        mom = hyper[MOMENTUM]
        buf = state[0]
        for p in range(P):
            g = grad[p] + wd * theta[p]
            if mom != 0.0:
                g = g if step == 1 else mom * buf[p] + g
                buf[p] = g
            theta[p] -= lr * g
        return
    b1 = hyper[BETA1]
    b2 = hyper[BETA2]
    eps = hyper[EPS]
    m = state[0]
    v = state[1]
    bias1 = 1.0 - b1 ** step
    step_size = lr / bias1
    sqrt_bias2 = np.sqrt(1.0 - b2 ** step)
    for p in range(P):
        g = grad[p] + wd * theta[p]
        m[p] = b1 * m[p] + (1.0 - b1) * g
        v[p] = b2 * v[p] + (1.0 - b2) * g * g
        theta[p] -= step_size * m[p] / (np.sqrt(v[p]) / sqrt_bias2 + eps)
