"""The single-member runner: one Model (and forecaster) over the whole source, one checkpoint file."""

from __future__ import annotations

import logging
import os
import time

from streamrnn.checkpoint import CheckpointError
from streamrnn.forecast import _ARRAY as FORECAST_ARRAY
from streamrnn.forecast import NextRecordForecaster
from streamrnn.model import Model
from streamrnn.state_checks import check_finite, check_keys, check_model_header

from .checkpoints import check_daemon_meta, hold_lock, load_checkpoint, release_lock, save_checkpoint, set_aside
from .config import check_checkpoint_path, check_collisions, check_start
from .loop import PERSISTED_STATS, Daemon

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it
# Longest a poll waits before the loop looks at a stop request again (SIGTERM is honoured within it,
# whatever daemon.poll_timeout is): the loop polls again at once when the source has no records.
STOP_LATENCY = 0.5


def close_opened(daemon):
    """Close what a daemon whose construction failed had opened (the sinks, the source)."""
    for name in ("sink", "dead", "source"):
        obj = daemon.__dict__.get(name)
        if obj is not None:
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing after a failure: the failure is what matters
                pass


def append_on_resume(config):
    """A daemon resuming from a checkpoint appends to its sink files even with ``mode = "w"``: the
    outputs written before the restart stay (and those after the checkpoint are written again,
    identically)."""
    for section in ("sink", "dead_letter"):
        if config[section].get("mode") == "w":
            config[section]["mode"] = "a"
            log.info('%s.mode = "w": appending, as the daemon resumes from a checkpoint', section)


_MODEL_HINT = " (the config's [model] differs from the checkpoint's; move the checkpoint away to start afresh)"


class SingleDaemon(Daemon):
    """A daemon reading the whole source into one model; resumes from ``checkpoint.path``.

    Before anything is opened it checks what can be known at start (colliding paths, files and
    directories, the metrics port: :func:`~streamrnn.service.config.check_start`), then holds
    an exclusive lock on the checkpoint (``PATH.lock``) until :meth:`close`.
    """

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        self._lock = None
        check_collisions(config)
        check_checkpoint_path(config)
        if config["checkpoint"].get("path"):  # before anything is opened, or created, for writing
            self._lock = hold_lock(config["checkpoint"]["path"])
        try:
            check_start(config, source=source is None, sink=sink is None, dead_letter=dead_letter is None)
            super().__init__(config, source, sink, dead_letter, progress)
        except BaseException:
            close_opened(self)
            release_lock(self._lock)
            self._lock = None
            raise
        self.poll_timeout = min(self.poll_timeout, STOP_LATENCY)

    def close(self):
        """Close as the Daemon does, then release the checkpoint's lock."""
        try:
            super().close()
        finally:
            release_lock(self._lock)
            self._lock = None

    def _open_state(self, config):
        self.model = Model(**config["model"])
        self.forecaster = NextRecordForecaster(self.model) if config["schema"].get("forecast") else None
        self._resume = (
            load_checkpoint(
                self.ckpt_path,
                restore=self._restore,
                allocate=self.model.allocate_for_load,
                check=self._check_header,
            )
            if self.ckpt_path
            else None
        )
        if self._resume is not None and self._resume[2] != self.ckpt_path and os.path.exists(self.ckpt_path):
            set_aside(self.ckpt_path)
        if self._resume is not None:
            append_on_resume(config)

    def _check_header(self, layout, meta):
        """A generation's header against this config, before anything is read or allocated: a daemon
        checkpoint, of this [model] (configuration, array shapes, unique keys within max_keys), of
        this schema mode (forecast state or none)."""
        check_daemon_meta(meta)
        extra = {}
        if self.forecaster is not None and FORECAST_ARRAY not in layout:
            raise CheckpointError(
                "no forecast-mode state (was it written with schema.forecast = false?); "
                "move the checkpoint away to start afresh"
            )
        if FORECAST_ARRAY in layout:  # checked in both modes (plain mode ignores the pending inputs)
            pending = check_keys(meta.get("forecast_keys"), "saved forecast keys", self.model.max_keys)
            extra[FORECAST_ARRAY] = ((len(pending), self.model.n_inputs), self.model.dtype)
        check_model_header(layout, meta["model"], self.model, hint=_MODEL_HINT, extra=extra)

    def _restore(self, arrays, meta, used):
        """Load one checkpoint generation into the model, or raise CheckpointError (nothing changed)."""
        check_finite(arrays, used)
        try:
            self.model.load_state(arrays, meta["model"], source=used)
            if self.forecaster is not None:
                self.forecaster.load_state(arrays, meta, source=used)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # checked above: a fault not foreseen
            raise CheckpointError(f"{used}: unusable state: {type(exc).__name__}: {exc}") from None
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{_MODEL_HINT}") from None

    def _resume_source(self):
        if self._resume is None:
            return
        arrays, meta, used = self._resume
        resume = getattr(self.source, "resume", None)
        if resume is not None:  # a file: only in the file the checkpoint read (SourceError otherwise)
            resume(meta["positions"], meta.get("files"))
        else:
            self.source.seek(meta["positions"])
        for k in PERSISTED_STATS:
            self.stats[k] = meta.get("daemon", {}).get(k, self.stats[k])
        self.stats["resumed_from"] = used
        log.info("resumed from %s at %s", used, meta["positions"])
        self._resume = None  # the arrays are in the model now: do not keep them

    def _attach_rebalance_callbacks(self):
        if hasattr(self.source, "on_revoke"):
            # Partitions leave: save state for their next owner. This runs inside kafka-python's
            # rebalance callback, where a blocking commit is refused (kafka-python 3 raises "Cannot
            # block on net.run() from the IO thread"); the checkpoint holds the positions anyway.
            self.source.on_revoke = lambda streams: self.checkpoint(commit_offsets=False)

    def _learn(self, X, Y, keys, streams=None, resets=None):
        if self.forecaster is not None:  # (the config refuses schema.reset in forecast mode)
            return self.forecaster.process(X, Y, keys)
        return self.model.step_many(X, Y, keys, return_loss=True, resets=resets)

    @property
    def saves_checkpoints(self):
        return bool(self.ckpt_path)

    def _save_checkpoint(self, positions):
        save_checkpoint(self.ckpt_path, *self._checkpoint_contents(positions))

    def _checkpoint_contents(self, positions):
        """(arrays, meta) of the checkpoint: model, forecast state, positions (and, for a file, its
        identity at them: "files"), counts."""
        arrays, mmeta = self.model.state_arrays()
        meta = {"model": mmeta, "positions": positions, "daemon": self._persisted_stats(), "saved_at": time.time()}
        identity = getattr(self.source, "identity", None)
        if identity is not None:
            meta["files"] = identity()
        if self.forecaster is not None:
            f_arrays, f_meta = self.forecaster.state_arrays()
            arrays = {**arrays, **f_arrays}
            meta.update(f_meta)
        return arrays, meta

    @property
    def _n_outputs(self):
        return self.model.n_outputs

    def _n_keys(self):
        return len(self.model.keys)

    def _model_stats(self):
        return self.model.stats
