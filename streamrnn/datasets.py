"""Generators of synthetic streams with known difficulty.

Each generator is deterministic given ``seed`` and returns NumPy arrays in
stream order: ``X`` of shape ``(n_steps, n_inputs)`` and ``Y`` of targets.
"""
import numpy as np


def binary_add_task(n_steps, seed=0, lags=(3, 8)):
    """The "add task" of the RTRL literature: a binary stream whose label needs memory.

    ``x_t ~ Bernoulli(0.5)`` and ``P(y_t = 1) = 0.5 + 0.5 x_{t-a} − 0.25 x_{t-b}``
    with ``(a, b) = lags``. The best achievable cross-entropy is 0.6616 nats
    with no memory, 0.5192 remembering ``x_{t-a}`` and 0.4545 remembering both.

    Returns ``X`` (n_steps, 1) float and ``Y`` (n_steps,) in {0, 1}.

    >>> X, Y = binary_add_task(5, seed=0)
    >>> X.shape, Y.shape
    ((5, 1), (5,))
    """
    rng = np.random.default_rng(seed)
    a, b = lags
    x = rng.integers(0, 2, n_steps).astype(np.float64)
    p = np.full(n_steps, 0.5)
    p[a:] += 0.5 * x[:-a]
    p[b:] -= 0.25 * x[:-b]
    y = (rng.random(n_steps) < p).astype(np.float64)
    return x[:, None], y


def binary_add_task_floors(lags=(3, 8)):
    """Expected cross-entropy (nats) of the optimal predictor with 0, 1 or 2 dependencies known."""
    def h(p):
        return 0.0 if p in (0.0, 1.0) else -(p * np.log(p) + (1 - p) * np.log(1 - p))
    both = np.mean([h(0.5 + 0.5 * xa - 0.25 * xb) for xa in (0, 1) for xb in (0, 1)])
    first = np.mean([h(0.5 + 0.5 * xa - 0.125) for xa in (0, 1)])
    none = h(0.5 + 0.25 - 0.125)
    return {"none": none, "first": first, "both": both}
