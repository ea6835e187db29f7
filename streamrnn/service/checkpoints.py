"""Daemon checkpoints: generations (PATH, PATH.prev), the fallback to the newest usable one, set-aside.

A checkpoint holds the model, per-key state and the source positions together (see
:mod:`streamrnn.checkpoint` for the file format); the same fallback serves the per-partition
stores of a consumer group (:func:`first_usable`).

A checkpoint is trusted data: whoever can write the checkpoint directory decides the model the
daemon resumes. Everything a file says is checked before it is used (:func:`check_daemon_meta`,
:mod:`streamrnn.state_checks`), and a malformed generation is a CheckpointError, which falls
back to the previous one. For a shared checkpoint directory set ``STREAMRNN_CHECKPOINT_KEY``
(checkpoints are then signed and verified with HMAC-SHA256, see :mod:`streamrnn.checkpoint`).
"""

from __future__ import annotations

import logging
import math
import os
import time

from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it


FILE_IDENTITY = ("offset", "dev", "ino", "head", "tail")  # a file source's identity at its position


def check_daemon_meta(meta, streams=None):
    """CheckpointError unless ``meta`` is a daemon checkpoint's: a "model" object and "positions"
    mapping each source stream (a file's canonical path, a Kafka "topic:partition") to a position
    >= 0; "files" (optional: a file source) maps file streams of the positions to their identity
    (:meth:`streamrnn.connectors.file.LineSource.identity`: integers >= 0)."""
    positions = meta.get("positions")
    if not isinstance(positions, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError("not a daemon checkpoint (no positions)")
    for stream, pos in positions.items():
        if len(stream) > 4096:
            raise CheckpointError("positions: a stream name longer than 4096 characters")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < 2**63:
            raise CheckpointError(f"positions: {stream[:200]!r}: not an integer position >= 0: {str(pos)[:40]}")
    files = meta.get("files")
    if files is not None:
        if not isinstance(files, dict) or len(files) > len(positions):
            raise CheckpointError("files: not a mapping of the positions' file streams")
        for stream, ident in files.items():
            if stream not in positions:
                raise CheckpointError(f"files: {stream[:200]!r} has no position")
            if not isinstance(ident, dict) or set(ident) != set(FILE_IDENTITY):
                raise CheckpointError(f"files: {stream[:200]!r}: expected the fields {', '.join(FILE_IDENTITY)}")
            for field, v in ident.items():
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
                    raise CheckpointError(f"files: {stream[:200]!r}: {field} is not an integer >= 0: {str(v)[:40]}")
    if streams is not None:
        for stream in streams:
            if stream not in positions:
                raise CheckpointError(f"not a checkpoint of partition {stream}")
    daemon = meta.get("daemon", {})
    if not isinstance(daemon, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in daemon.values()
    ):
        raise CheckpointError("daemon: the saved counts are not finite numbers")


def load_checkpoint(path, restore=None, allocate=None, check=None):
    """Newest usable checkpoint generation as (arrays, meta, used_path), or None when none exists.

    A generation that is truncated, corrupted, of another format version, not a daemon
    checkpoint, or refused by ``restore(arrays, meta, used_path)`` (which loads it and raises
    CheckpointError if it does not fit, e.g. another model configuration) is skipped with a
    warning and the previous one is tried. If generations exist but none is usable,
    CheckpointError names each one's problem; no file is changed. ``allocate`` is passed on to
    :func:`streamrnn.checkpoint.load` (where to read each array), ``check(layout, meta)`` too (the
    header against the configuration, before anything is allocated).
    """
    return first_usable(ckpt.generations(path, check=check), restore, lambda: allocate)


def first_usable(generations, restore=None, new_allocate=lambda: None, what=""):
    """The newest usable of ``generations`` ([(where, load(allocate) -> (arrays, meta))], newest
    first) as (arrays, meta, where), or None when there are none: the fallback of
    :func:`load_checkpoint`, for any store. ``new_allocate()`` gives each attempt its ``allocate``;
    ``what`` prefixes the error when none is usable."""
    errors = []
    for where, load in generations:
        try:
            arrays, meta = load(new_allocate())
            try:
                check_daemon_meta(meta)
            except CheckpointError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
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


def hold_lock(path):
    """An exclusive ``fcntl.flock`` on ``PATH.lock`` (created if missing, never through a symlink),
    held until :func:`release_lock`: the open file descriptor. A second daemon on the same
    checkpoint gets ConfigError naming checkpoint.path and the holder's pid. (A lock file, not the
    checkpoint itself: every save renames a new file over the checkpoint.)"""
    import fcntl

    from .config import ConfigError

    lock = f"{path}.lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as exc:
        raise ConfigError(f"checkpoint.path: cannot open the lock file {lock!r}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"checkpoint.path: {path!r} is in use by another daemon (pid {holder} holds {lock!r}); "
            "two daemons on one checkpoint would apply records twice"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release_lock(fd):
    """Release a lock of :func:`hold_lock` (closing its descriptor); None does nothing."""
    if fd is not None:
        os.close(fd)


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
