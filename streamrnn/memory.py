"""How much memory a Model of a configuration needs, estimated from the configuration alone.

Nothing is allocated to estimate: the sizes follow from the same arithmetic the Model uses
(its parameter count, the learner's per-key layout). The estimate counts the parameters and
the optimizer state, the learner's workspace (an upper bound of it), and each
key's state times the number of keys the model may hold (``max_keys`` for a daemon, the saved
keys for ``Model.load``). A configuration whose estimate exceeds the bound is refused with a
:class:`MemoryLimitError` naming the estimate and the bound, before anything is allocated:

>>> estimate_model_bytes({"cell": "gru", "n_inputs": 4, "n_hidden": 100000}, n_keys=1) > 2**40
True
>>> try:
...     check_memory({"cell": "gru", "n_inputs": 4, "n_hidden": 100000}, n_keys=1, limit=2**30)
... except MemoryLimitError as exc:
...     print(*str(exc).split("), "), sep=")\\n")
the model needs about 85.3 PiB (parameters and optimizer 671 GiB, workspace 64 PiB, 1 keys x 21.3 PiB)
more than the bound of 1 GiB (max_memory; lower n_hidden or max_keys, or raise the bound)

The bound is the smaller of ``limit`` (the daemon's ``max_memory``) and the machine's memory
(:func:`machine_memory`: physical memory, or a cgroup's limit when lower).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

__all__ = ["MemoryLimitError", "check_memory", "estimate_model_bytes", "format_bytes", "machine_memory", "parse_size"]


class MemoryLimitError(ValueError):
    """A configuration or a checkpoint whose model would need more memory than is allowed."""


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value) -> int:
    """Bytes from an integer or a string such as ``"512MiB"``, ``"8 GB"``, ``"2G"``; ValueError otherwise.

    >>> parse_size("1.5GiB"), parse_size(4096), parse_size("8 GB")
    (1610612736, 4096, 8000000000)
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*", value)
    if not m:
        raise ValueError(f"not a size: {value!r}")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``n`` bytes as a short binary-prefixed figure (3 significant digits).

    >>> format_bytes(3 * 2**30), format_bytes(1536), format_bytes(12)
    ('3 GiB', '1.5 KiB', '12 B')
    """
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def machine_memory() -> int:
    """The memory this process may use at most: physical memory, or the cgroup's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 2**63
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _int(config, name, default):
    v = config.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name in ("target_lags",) else 1):
        raise TypeError(name)
    return v


def estimate_model_bytes(config, n_keys=None, parts=False):
    """Bytes a Model of ``config`` (its keyword arguments) needs with ``n_keys`` keys holding state
    (default: ``max_keys``); with ``parts``, ``(total, fixed, workspace, per_key, n_keys)``.

    None when ``config`` is not one the Model accepts (the Model then says why, before it
    allocates anything)."""
    from .cells.dispatch import CELL_IDS, n_gates, state_size
    from .cells.stack import stack_params
    from .learners import registry
    from .learners.registry import ModelDims
    from .losses import REGRESSION, TASK_IDS
    from .narx import lag_inputs, lag_width
    from .optim import OPTIMIZER_IDS, RACE_FACTORS, state_rows
    from .preprocess import lag_buffer
    from .rls import HEAD_LAGS
    from .validation import target_width

    try:
        cell, task = CELL_IDS[config.get("cell", "gru")], TASK_IDS[config.get("task", "regression")]
        n_in, n, n_out = _int(config, "n_inputs", 1), _int(config, "n_hidden", 16), _int(config, "n_outputs", 1)
        max_keys, k = _int(config, "max_keys", 1024), _int(config, "target_lags", 0)
        n_layers = _int(config, "n_layers", 1)
        dtype = {"float64": 8, "float32": 4}[config.get("dtype", "float64")]
        optimizer = config.get("optimizer", "adam")
        race = optimizer == "race"
        members = len(RACE_FACTORS) if race else 1
        rows = int(state_rows(OPTIMIZER_IDS["adam" if race else optimizer], 1))
        truncation = config.get("truncation")
        if truncation is not None:
            truncation = _int(config, "truncation", 1)
        spec = registry.resolve(config.get("learner", "rtrl"), cell, n_layers)
    except (KeyError, TypeError, ValueError):
        return None
    G, S = n_gates(cell), n_layers * state_size(cell, n)  # a stack's composite state
    m = n_in + lag_inputs(task, n_out, k)
    p_cell = int(stack_params(cell, m, n, n_layers))
    p = p_cell + n_out * (n + 1 + (m if config.get("readout_skip") else 0))
    fixed = members * p * dtype * (1 + rows) + 8 * (n_in + n_out) * 4  # theta, optimizer, statistics
    if spec.name == "rtrl":  # exact RTRL of a dense cell: the immediate influence (G n x P_cell)
        workspace = dtype * (G * n * p_cell + 2 * p + 8 * S)
    else:  # SnAp-1 (and RTRL of element-wise cells), UORO, TBPTT: a few vectors of theta's size
        workspace = dtype * (3 * p + 8 * S)
    dims = ModelDims(
        cell,
        task,
        m,
        n,
        n_out,
        S,
        target_width(task, n_out),
        p_cell,
        p,
        np.dtype("float64"),
        0,
        truncation,
        None,
        n_layers,
    )
    try:
        layout = spec.key_layout(dims)
    except (TypeError, ValueError):
        return None
    per_key = members * sum(
        math.prod(shape) * (dtype if np.dtype(dt).kind == "f" else np.dtype(dt).itemsize) for _, shape, dt in layout
    )
    head = config.get("head_lags")
    if head is None:  # the Model's default: the linear head for regression with standardisation
        head = HEAD_LAGS if (task == REGRESSION and config.get("standardize", True)) else 0
    depth, extra = lag_buffer(k, head, config.get("baseline"))
    per_key += 8 * (depth * lag_width(task, n_out) + depth + extra)  # target feedback and the head (float64)
    keys = max_keys if n_keys is None else min(n_keys, max_keys)
    total = fixed + workspace + per_key * keys
    return (total, fixed, workspace, per_key, keys) if parts else total


def check_memory(config, n_keys=None, limit=0, what="the model"):
    """MemoryLimitError if a Model of ``config`` with ``n_keys`` keys (default ``max_keys``) needs
    more than ``limit`` bytes (0: no bound of its own) or than the machine has; the estimate, or
    None when ``config`` is not one the Model accepts."""
    found = estimate_model_bytes(config, n_keys, parts=True)
    if found is None:
        return None
    total, fixed, workspace, per_key, keys = found
    machine = machine_memory()
    bound = min(limit, machine) if limit else machine
    if total > bound:
        whose = "max_memory" if limit and limit <= machine else "the machine's memory"
        raise MemoryLimitError(
            f"{what} needs about {format_bytes(total)} (parameters and optimizer {format_bytes(fixed)}, "
            f"workspace {format_bytes(workspace)}, {keys} keys x {format_bytes(per_key)}), more than the "
            f"bound of {format_bytes(bound)} ({whose}; lower n_hidden or max_keys, or raise the bound)"
        )
    return total
