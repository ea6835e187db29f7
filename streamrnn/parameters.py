"""Flat parameter vectors and their named blocks (PyTorch's names and shapes).

Kernels take one flat ``theta``; users read and write it as a dict of named arrays. A model
describes its vector by its blocks in flat order, ``[(name, shape, offset, size)]``, and these
functions convert between the two, for the online ``Model`` and the offline ``bptt`` model alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Block = tuple  # (name, shape, offset, size)


def blocks(layout: Sequence[tuple[str, tuple]]) -> list[Block]:
    """``[(name, shape)]`` in flat order as ``[(name, shape, offset, size)]``.

    >>> blocks([("w", (2, 3)), ("b", (2,))])
    [('w', (2, 3), 0, 6), ('b', (2,), 6, 2)]
    """
    out, pos = [], 0
    for name, shape in layout:
        size = int(np.prod(shape))
        out.append((name, tuple(shape), pos, size))
        pos += size
    return out


def unflatten(flat: np.ndarray, layout: Sequence[Block]) -> dict[str, np.ndarray]:
    """Copies of the blocks of ``flat``, by name."""
    return {name: flat[p : p + s].reshape(shape).copy() for name, shape, p, s in layout}


def flatten(weights: Mapping, layout: Sequence[Block], n_params: int, dtype) -> np.ndarray:
    """A new flat vector from ``weights``, which must hold exactly the layout's names, each of its
    block's shape and finite in ``dtype``; ``ValueError`` naming the first that is not.

    >>> flatten({"b": [1.0, 2.0], "w": [[0.5]]}, blocks([("w", (1, 1)), ("b", (2,))]), 3, "float64")
    array([0.5, 1. , 2. ])
    """
    expected = {name for name, *_ in layout}
    if set(weights) != expected:
        raise ValueError(
            f"set_weights: missing {sorted(expected - set(weights))}, unexpected {sorted(set(weights) - expected)}"
        )
    new = np.empty(n_params, dtype)
    for name, shape, p, s in layout:
        with np.errstate(over="ignore"):  # a value beyond the dtype's range becomes inf, refused below
            arr = np.asarray(weights[name], dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"set_weights: {name} has shape {arr.shape}, expected {shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"set_weights: {name} contains NaN or inf")
        new[p : p + s] = arr.ravel()
    return new
