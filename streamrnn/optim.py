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
    """Apply one update; ``step`` is the 1-based index of this update.

    The arithmetic is in the parameters' dtype, as PyTorch's: float32 parameters take float32
    steps (which also halves the cost of Adam's square root and division per parameter)."""
    k = np.empty(9, theta.dtype)        # the scalars below, in that dtype
    k[0] = hyper[LR]
    k[1] = hyper[WEIGHT_DECAY]
    lr, wd = k[0], k[1]
    P = theta.shape[0]
    if kind == SGD:
        k[2] = hyper[MOMENTUM]
        mom = k[2]
        buf = state[0]
        for p in range(P):
            g = grad[p] + wd * theta[p]
            if mom != 0.0:
                g = g if step == 1 else mom * buf[p] + g
                buf[p] = g
            theta[p] -= lr * g
        return
    m = state[0]
    v = state[1]
    k[2] = hyper[BETA1]
    k[3] = 1.0 - hyper[BETA1]
    k[4] = hyper[BETA2]
    k[5] = 1.0 - hyper[BETA2]
    k[6] = hyper[LR] / (1.0 - hyper[BETA1] ** step)        # lr / bias correction 1
    k[7] = np.sqrt(1.0 - hyper[BETA2] ** step)            # sqrt(bias correction 2)
    b1, one_b1, b2, one_b2, step_size, sqrt_bias2 = k[2], k[3], k[4], k[5], k[6], k[7]
    k[8] = hyper[EPS]
    eps = k[8]
    for p in range(P):
        g = grad[p] + wd * theta[p]
        m[p] = b1 * m[p] + one_b1 * g
        v[p] = b2 * v[p] + one_b2 * g * g
        theta[p] -= step_size * m[p] / (np.sqrt(v[p]) / sqrt_bias2 + eps)
