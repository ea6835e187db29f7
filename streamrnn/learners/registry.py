"""The online learners, by name: each learner module registers one :class:`LearnerSpec`.

A spec says everything a :class:`~streamrnn.Model` needs to run a learner without
knowing which one it is: the arrays each key owns, the scratch workspace, and
two compiled kernels with one calling convention for every learner::

    spec.step_many(cell, task, opt_kind, n_in, n, n_out, theta, opt_state, hyper, counters,
                   tuple(keyed), X, Y, has_y, slots, reset, tuple(ws), out, losses)
    spec.sequence_gradient(cell, task, n_in, n, n_out, theta, X, Y, has_y, keyed, ws, grad_sum)

``keyed`` is the namedtuple ``spec.key_state`` of the per-key arrays (a slot axis
first; one zeroed slot for ``sequence_gradient``), ``ws`` the namedtuple
``spec.make_workspace(dims)``, whose field ``grad`` holds the gradient of the last
labelled step (for TBPTT: of the last window update). ``step_many`` takes both as
plain tuples of their fields and names them inside: Numba types a plain tuple of
arrays in C but a namedtuple in Python, some microseconds a call, which the
one-sample path (river) would pay per sample. Learner settings a kernel
reads (UORO's seed, TBPTT's stride) are fields of the workspace, so the
signature is the same for all.

RTRL, SnAp-1 and UORO share one record loop and one sequence sum
(:func:`~streamrnn.learners.common.online_step_many`,
:func:`~streamrnn.learners.common.online_sequence_gradient`): such a learner writes
only its per-sample function and registers it for its workspace type
(:func:`~streamrnn.learners.common.register_online_learner`). TBPTT, whose updates
come per window, brings its own two kernels.

Adding a learner is one new module in this package that calls :func:`register`;
the modules are imported on the first lookup.

>>> from streamrnn.learners import registry
>>> registry.names()
('rtrl', 'snap1', 'uoro', 'tbptt')
>>> registry.get("uoro").key_state._fields
('hidden', 'uoro_state', 'uoro_params')
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ModelDims", "LearnerSpec", "register", "get", "names", "resolve"]


class ModelDims(NamedTuple):
    """The sizes and settings of a Model that a learner's arrays and kernels are built for."""

    cell: int  # cell id (streamrnn.cells.dispatch.CELL_IDS)
    task: int  # task id (streamrnn.losses.TASK_IDS)
    n_inputs: int
    n_hidden: int
    n_outputs: int
    state_size: int  # S: n, or 2n for LSTM's (h, c); L times that for a stack (its composite state)
    target_width: int  # columns of a validated target row
    n_params_cell: int  # P_cell: the cell's block of theta, before the readout
    n_params: int
    dtype: np.dtype
    seed: int  # UORO's random signs
    truncation: int | None  # TBPTT's window k
    stride: int | None  # TBPTT's update stride h
    n_layers: int = 1  # L: stacked layers (streamrnn.cells.stack)


Layout = list  # [(name, shape, dtype)] of the arrays one key owns


@dataclass(frozen=True)
class LearnerSpec:
    """How one online learner is run (see the module docstring for the kernels' convention).

    name
        The ``learner=`` value.
    key_layout
        ``key_layout(dims) -> [(name, shape, dtype)]``: the arrays one key owns; the names
        are the checkpoint's ``key.<name>`` arrays and the fields of ``key_state``.
    key_state
        The namedtuple class handed to the kernels, one field per ``key_layout`` entry.
    make_workspace
        ``make_workspace(dims) -> namedtuple``: settings and scratch of one step, with ``grad``.
    step_many, sequence_gradient
        The compiled kernels.
    windowed
        The learner takes ``truncation`` and ``stride`` and updates once per window of steps, not per
        step (TBPTT); the others take neither.
    elementwise_runs_as
        Name of the learner whose kernels run this one for element-wise cells (exact RTRL runs on
        SnAp-1's per-unit kernels there: no other influence entry is non-zero, O(P) instead of O(nP)),
        for one layer (in a stack a layer's state depends on every parameter below it).
    stacks
        The kernels run stacks of layers (``n_layers > 1``, :mod:`streamrnn.cells.stack`); a Model
        refuses ``n_layers > 1`` with a learner that does not.
    """

    name: str
    key_layout: Callable[[ModelDims], Layout]
    key_state: type
    make_workspace: Callable[[ModelDims], Any]
    step_many: Any
    sequence_gradient: Any
    windowed: bool = False
    elementwise_runs_as: str | None = None
    stacks: bool = False

    def new_key_state(self, dims: ModelDims, n_slots: int = 1):
        """Zeroed per-key arrays for ``n_slots`` keys, as the kernels take them (``sequence_gradient``:
        one slot, the sequence's zero start)."""
        return self.key_state(*(np.zeros((n_slots,) + tuple(shape), dt) for _, shape, dt in self.key_layout(dims)))


_SPECS: dict[str, LearnerSpec] = {}
_discovered = False


def register(spec: LearnerSpec) -> LearnerSpec:
    """Add ``spec`` under ``spec.name`` (called once by the learner's module at import)."""
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"learner {spec.name!r} is registered twice")
    if spec.key_state._fields[0] != "hidden":
        raise ValueError(f"learner {spec.name!r}: a key's first array must be 'hidden' (its recurrent state)")
    _SPECS[spec.name] = spec
    return spec


def _discover():
    global _discovered
    if not _discovered:
        package = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{__package__}.{info.name}")
        _discovered = True


# The order learners are listed in (docs, errors); a learner not named here follows in import order.
_ORDER = ("rtrl", "snap1", "uoro", "tbptt")


def names() -> tuple[str, ...]:
    """The registered learner names."""
    _discover()
    return tuple(sorted(_SPECS, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)))


def get(name: str) -> LearnerSpec:
    """The spec registered as ``name``; ``ValueError`` naming the choices otherwise."""
    _discover()
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"learner must be one of {names()}; got {name!r}") from None


def resolve(name: str, cell: int, n_layers: int = 1) -> LearnerSpec:
    """The spec whose arrays and kernels run learner ``name`` on cell id ``cell`` in a stack of
    ``n_layers``; ``ValueError`` if that learner does not run stacks.

    >>> from streamrnn.cells.dispatch import CELL_IDS
    >>> resolve("rtrl", CELL_IDS["egru"]).name, resolve("rtrl", CELL_IDS["gru"]).name
    ('snap1', 'rtrl')
    """
    from ..cells.dispatch import ELEMENTWISE

    spec = get(name)
    if n_layers > 1:
        if not spec.stacks:
            runs = ", ".join(repr(s) for s in names() if get(s).stacks)
            raise ValueError(f"learner {name!r} does not support n_layers > 1 (stacked layers); use {runs}")
        return spec
    if spec.elementwise_runs_as is not None and cell in ELEMENTWISE:
        return get(spec.elementwise_runs_as)
    return spec
