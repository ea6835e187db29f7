"""Daemon checkpoints: generations (PATH, PATH.prev), the fallback to the newest usable one, set-aside.

A checkpoint holds the model, per-key state and the source positions together (see
:mod:`streamrnn.checkpoint` for the file format); the same fallback serves the per-partition
stores of a consumer group (:func:`first_usable`).
"""

from __future__ import annotations

import logging
import os
import time

from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it


def load_checkpoint(path, restore=None, allocate=None):
    """Newest usable checkpoint generation as (arrays, meta, used_path), or None when none exists.

    A generation that is truncated, corrupted, of another format version, not a daemon
    checkpoint, or refused by ``restore(arrays, meta, used_path)`` (which loads it and raises
    CheckpointError if it does not fit, e.g. another model configuration) is skipped with a
    warning and the previous one is tried. If generations exist but none is usable,
    CheckpointError names each one's problem; no file is changed. ``allocate`` is passed on to
    :func:`streamrnn.checkpoint.load` (where to read each array).
    """
    return first_usable(ckpt.generations(path), restore, lambda: allocate)


def first_usable(generations, restore=None, new_allocate=lambda: None, what=""):
    """The newest usable of ``generations`` ([(where, load(allocate) -> (arrays, meta))], newest
    first) as (arrays, meta, where), or None when there are none: the fallback of
    :func:`load_checkpoint`, for any store. ``new_allocate()`` gives each attempt its ``allocate``;
    ``what`` prefixes the error when none is usable."""
    errors = []
    for where, load in generations:
        try:
            arrays, meta = load(new_allocate())
            if "positions" not in meta or "model" not in meta:
                raise CheckpointError(f"{where}: not a daemon checkpoint (no positions)")
            if restore is not None:
                restore(arrays, meta, where)
        except CheckpointError as exc:
            log.warning("checkpoint %s unusable (%s); trying the previous generation", where, exc)
            errors.append(str(exc))
            continue
        return arrays, meta, where
    if errors:
        raise CheckpointError(f"{what}no usable checkpoint: " + "; ".join(errors))
    return None


def set_aside(path):
    """Rename an unusable newest generation out of the way (kept for inspection), so that the next
    save does not rotate it over the good previous generation the daemon resumed from."""
    aside = f"{path}.unusable-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, aside)
    log.warning("checkpoint %s was unusable: kept as %s; resumed from %s.prev", path, aside, path)


def save_checkpoint(path, arrays, meta):
    """Write a new generation atomically, keeping the previous one as PATH.prev.

    A failed write (OSError, e.g. a full disk) leaves both existing generations as they were.
    """
    ckpt.save_newest(path, ckpt.pieces(arrays, meta))
