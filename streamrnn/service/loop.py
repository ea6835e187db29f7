"""The daemon loop: poll the source, decode, learn, write outputs and dead letters, checkpoint.

:class:`Daemon` holds what every daemon does; what depends on the model's layout is left to its
two runners: :class:`~streamrnn.service.single.SingleDaemon` (one model over the whole source)
and :class:`~streamrnn.service.group.GroupDaemon` (one member of a Kafka consumer group, a model
state per owned partition). ``Daemon(config)`` picks the runner for the config.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from streamrnn.checkpoint import CheckpointError
from streamrnn.connectors.base import batch_gc

from .decode import Decoder, dead_letter
from .io import make_sink, make_source
from .metrics import Metrics
from .retry import RetryPolicy

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it

# the counts a checkpoint carries over a restart
PERSISTED_STATS = ("records", "applied", "dead_letters", "loss_sum", "loss_count")


class Daemon:
    """Runs one configuration. ``source``/``sink``/``dead_letter`` may be injected (tests).

    ``Daemon(config)`` is a :class:`~streamrnn.service.group.GroupDaemon` when the config has a
    [group] section, else a :class:`~streamrnn.service.single.SingleDaemon`.
    """

    def __new__(cls, config, *args, **kwargs):
        if cls is Daemon:  # the public entry point: the runner the config asks for
            from .group import GroupDaemon
            from .single import SingleDaemon

            cls = GroupDaemon if config.get("group") else SingleDaemon
            if config["daemon"].get("processing_guarantee") == "exactly-once":
                if cls is SingleDaemon:
                    from .exactly_once import ExactlyOnceDaemon as cls
                else:
                    from .exactly_once_group import ExactlyOnceGroupDaemon as cls
        return super().__new__(cls)

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        self.cfg = config
        self.decoder = Decoder(
            config["schema"],
            config["model"],
            config["daemon"]["max_record_bytes"],
            config["daemon"].get("max_key_bytes", 1024),
        )
        self.ckpt_path = config["checkpoint"].get("path")
        self.batch_size = config["daemon"]["batch_size"]
        self.poll_timeout = config["daemon"]["poll_timeout"]
        self.max_records = config["daemon"]["max_records"]
        self.progress = config["daemon"]["progress"] if progress is None else progress
        self.stats = {
            "records": 0,
            "applied": 0,
            "dead_letters": 0,
            "outputs": 0,
            "batches": 0,
            "loss_sum": 0.0,
            "loss_count": 0,
            "checkpoints": 0,
            "resumed_from": None,
            "persistence_loss_sum": 0.0,
            "persistence_model_loss_sum": 0.0,
            "persistence_count": 0,
        }
        # The persistence baseline (regression): each key's last target as the prediction, scored with
        # the model's loss on the records where both are known (this run; bounded like the model's keys).
        self._regression = config["model"].get("task", "regression") == "regression"
        self._last_target = OrderedDict()
        self._last_target_cap = int(config["model"].get("max_keys", 1024))
        self.latencies = deque(maxlen=100_000)  # the latest batches: bounded for months-long runs
        self._unwritten = ([], [])  # outputs and dead letters of the last batch, not yet written
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrnn-learn")
        self._stop = False
        self._dirty = False
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        self._last_durable = time.monotonic()  # last checkpoint known to be on disk
        self._ckpt_failures = 0  # consecutive failed checkpoint writes
        self.retry = RetryPolicy.from_config(config["daemon"])
        self.metrics = Metrics(0)  # replaced by the real endpoint below
        self._open_state(config)
        limit = config["daemon"]["max_record_bytes"]
        self.source = (
            source
            if source is not None
            else self._retrying("connect to the source", lambda: self._make_source(config["source"], limit))
        )
        try:
            if source is not None and hasattr(source, "max_record_bytes"):  # a given file source is bounded too
                source.max_record_bytes = limit
            self._check_source()
            self._resume_source()
            self.sink = (
                sink
                if sink is not None
                else self._retrying("connect to the sink", lambda: self._make_sink(config["sink"]))
            )
            self.dead = (
                dead_letter
                if dead_letter is not None
                else self._retrying("connect to the dead-letter sink", lambda: self._make_sink(config["dead_letter"]))
            )
        except BaseException:
            self.source.close()
            raise
        self._attach_rebalance_callbacks()
        self.metrics = Metrics(config["daemon"]["metrics_port"])
        self.metrics.carry_model_stats(self._model_stats())

    # -- what a runner provides
    def _make_source(self, section, max_record_bytes):
        """The source of the [source] section (a runner may read it otherwise)."""
        return make_source(section, max_record_bytes)

    def _make_sink(self, section):
        """The sink of a [sink] or [dead_letter] section (a runner may write it otherwise)."""
        return make_sink(section)

    def _open_state(self, config):
        """Build the model state and load what the checkpoints hold (before the source is opened)."""
        raise NotImplementedError

    def _resume_source(self):
        """Seek the freshly opened source to the resumed checkpoint's positions (if any)."""

    def _check_source(self):
        """What the opened source must have for the schema: a CSV header with every column the
        schema names (SourceError naming the missing ones: every record would be a dead letter)."""
        require = getattr(self.source, "require", None)
        if require is not None:
            schema = self.cfg["schema"]
            names = [*schema["features"], *(schema[k] for k in ("target", "key", "reset") if schema.get(k) is not None)]
            require(names, "[schema]")

    def _attach_rebalance_callbacks(self):
        """Hook the runner into the source's partition assignment (Kafka), if it has one."""

    def _learn(self, X, Y, keys, streams=None, resets=None):
        """Predictions and losses of validated-by-the-model rows, in one pass (all or nothing); ``resets``
        (bool per row, or None) marks the rows that start a new sequence of their key."""
        raise NotImplementedError

    def _streams_of(self, records):
        """The stream (partition) that holds each record's state, or None: one state for all."""
        return None

    def _count_batch(self, records, applied_streams):
        """Book-keeping of a processed batch beyond the daemon's own counts."""

    def _after_poll(self):
        """Called after every poll, before its records are used."""

    def _after_batch(self):
        """Called after every processed batch."""

    @property
    def saves_checkpoints(self):
        """Whether a checkpoint writes anything (and offsets may then be committed)."""
        raise NotImplementedError

    def _save_checkpoint(self, positions):
        """Write the runner's state with the source ``positions``; OSError if that failed."""
        raise NotImplementedError

    @property
    def _n_outputs(self):
        raise NotImplementedError

    def _n_keys(self):
        raise NotImplementedError

    def _model_stats(self):
        raise NotImplementedError

    def _closeables(self):
        """What the runner opened beyond the source and sinks, closed with them."""
        return ()

    def _summary_lines(self):
        return []

    # -- one batch
    def process(self, records):
        """Decode, learn and queue the outputs of one polled batch: returns ``(outputs, dead letters)``.

        Records that cannot be decoded, or that the model refuses, become dead letters and change
        nothing; the rest are applied in order in one compiled call.
        """
        t0 = time.perf_counter()
        batch = self.decoder.decode_batch(records)
        good, X, Y, keys, resets, dead = batch.records, batch.X, batch.Y, batch.keys, batch.resets, batch.dead
        outputs, streams = [], self._streams_of(good)
        if good:
            # The compiled step releases the GIL: it runs on the worker thread while this one
            # hands the previous batch's outputs to the sinks (kafka-python's Python-heavy send).
            learning = self._worker.submit(self._learn, X, Y, keys, streams, resets)
            self._write_unwritten()
            try:
                preds, losses = learning.result()
            except ValueError:
                # The model refused a row the decoder passed; step_many applied nothing, so
                # isolate the refused rows record by record and apply the rest in order.
                good, X, Y, keys, streams, preds, losses = self._apply_one_by_one(
                    good, X, Y, keys, streams, resets, dead
                )
            outputs = self._outputs(good, keys, preds, losses, Y)
        self._write_unwritten()
        # written at the next batch (or flush, checkpoint), overlapping its learning step
        self._unwritten = (outputs, dead)
        n = len(records)
        self._count_batch(records, streams)
        self.stats["records"] += n
        self.stats["applied"] += len(good)
        self.stats["dead_letters"] += len(dead)
        self.stats["outputs"] += len(outputs)
        self.stats["batches"] += 1
        self._since_ckpt += n
        dt = time.perf_counter() - t0
        self.latencies.append(dt)
        if self.metrics.enabled:  # the key count and the source's lag cost: only for the endpoint
            self.metrics.observe_batch(
                n, len(dead), dt, outputs, self._n_keys(), self._model_stats(), getattr(self.source, "lag", None)
            )
        return outputs, dead

    def _outputs(self, good, keys, preds, losses, Y):
        """The output records of a learned batch; adds its known losses to the stats."""
        preds = np.asarray(preds)
        losses = np.asarray(losses, dtype=np.float64)
        Yg = np.asarray(Y, dtype=np.float64)
        has_y = ~np.isnan(Yg[:, 0])
        # null where there is no target, the update was skipped as non-finite, or (forecast
        # mode) the key had no previous forecast
        known = has_y & np.isfinite(losses)
        loss_sum = self.stats["loss_sum"]
        for loss in losses[known].tolist():  # in record order: the sum is batch-independent
            loss_sum += loss
        self.stats["loss_sum"] = loss_sum
        self.stats["loss_count"] += int(known.sum())
        if self._regression:
            self._score_persistence(keys, Yg, has_y, losses, known)
        loss_out = [loss if ok else None for loss, ok in zip(losses.tolist(), known.tolist())]
        if Yg.shape[1] == 1:
            target_out = [t if ok else None for t, ok in zip(Yg[:, 0].tolist(), has_y.tolist())]
        else:
            target_out = [t if ok else None for t, ok in zip(Yg.tolist(), has_y.tolist())]
        pred_out = preds[:, 0].tolist() if preds.shape[1] == 1 else preds.tolist()
        return [
            {"position": list(r.position), "key": k, "prediction": p, "target": t, "loss": loss}
            for r, k, p, t, loss in zip(good, keys, pred_out, target_out, loss_out)
        ]

    def _score_persistence(self, keys, Yg, has_y, losses, known):
        """Persistence baseline, in record order: the loss ½‖y_last − y‖² of the key's previous
        target against this record's, beside the model's loss on the same record (records whose
        persistence loss overflows are left out of both)."""
        last, s, cap = self._last_target, self.stats, self._last_target_cap
        one = Yg.shape[1] == 1  # one target: Python floats, a tenth of the cost of 1-element arrays
        ys = Yg[:, 0].tolist() if one else Yg
        ok, model_losses = known.tolist(), losses.tolist()
        # the sums in locals, added to in record order as before: the same floats, no dict per record
        total, model_total, count = s["persistence_loss_sum"], s["persistence_model_loss_sum"], 0
        with np.errstate(over="ignore", invalid="ignore"):
            for i in np.flatnonzero(has_y).tolist():
                key, y = keys[i], ys[i]
                prev = last.get(key)
                if prev is None:
                    if len(last) >= cap:
                        last.popitem(last=False)
                else:
                    last.move_to_end(key)
                    d = prev - y
                    loss = 0.5 * (d * d if one else float(d @ d))  # d * d: the float d @ d gives
                    if ok[i] and math.isfinite(loss):  # a target too large to square: not scored
                        total += loss
                        model_total += model_losses[i]
                        count += 1
                last[key] = y if one else y.copy()
        s["persistence_loss_sum"], s["persistence_model_loss_sum"] = total, model_total
        s["persistence_count"] += count

    def _persistence_str(self):
        if not self._regression:
            return "n/a (regression only)"
        s = self.stats
        c = s["persistence_count"]
        if not c:
            return "n/a (no key has two targets yet)"
        return (
            f"{s['persistence_loss_sum'] / c:.6g} (each key's last target as the prediction; "
            f"the model's mean loss on the same {c} records: {s['persistence_model_loss_sum'] / c:.6g})"
        )

    def _apply_one_by_one(self, good, X, Y, keys, streams, resets, dead):
        kept, preds, losses = [], [], []
        for i, r in enumerate(good):
            try:
                pred, loss = self._learn(
                    np.asarray([X[i]]),
                    np.asarray([Y[i]]),
                    [keys[i]],
                    None if streams is None else [streams[i]],
                    None if resets is None else [resets[i]],
                )
            except ValueError as exc:
                dead.append(dead_letter(r, f"refused by the model: {exc}"))
                continue
            kept.append(i)
            preds.append(pred[0])
            losses.append(loss[0])
        pick = lambda seq: [seq[i] for i in kept]  # noqa: E731
        return (
            pick(good),
            pick(X),
            pick(Y),
            pick(keys),
            None if streams is None else pick(streams),
            np.asarray(preds).reshape(-1, self._n_outputs),
            np.asarray(losses),
        )

    # -- checkpoint
    def checkpoint(self, commit_offsets=True, final=False):
        """Flush the sinks, then save model and positions, then commit offsets; False if the save
        failed (see ``_checkpoint_failed``)."""
        self._flush_sinks()
        positions = self.source.positions()
        if self.saves_checkpoints:
            try:
                self._save_checkpoint(positions)
            except OSError as exc:
                self._checkpoint_failed(exc, final)
                return False
            self.stats["checkpoints"] += 1
            self._ckpt_failures = 0
            self._last_durable = time.monotonic()
        commit = getattr(self.source, "commit", None)
        if commit is not None and self.saves_checkpoints and commit_offsets:
            commit(positions)  # only after the checkpoint is durable
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        return True

    def _persisted_stats(self):
        return {k: self.stats[k] for k in PERSISTED_STATS}

    def _checkpoint_failed(self, exc, final):
        """A checkpoint could not be written (disk full, I/O error): the previous generations are
        intact and no offset is committed past them. The daemon keeps going and tries again at
        the next cadence, for as long as the retry policy allows (``retry_attempts`` failures in a
        row, ``retry_give_up_seconds`` since the last durable checkpoint); then, or when this was
        the final checkpoint, it stops with CheckpointError (exit status 2)."""
        self._ckpt_failures += 1
        self._since_ckpt = 0  # next attempt at the normal cadence
        self._last_ckpt = time.monotonic()
        self.metrics.count_checkpoint_failure()
        unsaved = time.monotonic() - self._last_durable
        msg = (
            f"cannot write checkpoint {self.ckpt_path}: {exc}; the previous generations are kept and no "
            f"offsets were committed past them ({self._ckpt_failures} failed in a row, last durable "
            f"checkpoint {unsaved:.1f} s ago)"
        )
        if final or self.retry.exhausted(self._ckpt_failures, unsaved):
            log.error("%s: stopping", msg)
            raise CheckpointError(msg) from exc
        log.error("%s: retrying at the next checkpoint", msg)

    def _due(self):
        c = self.cfg["checkpoint"]
        if c["every_records"] and self._since_ckpt >= c["every_records"]:
            return True
        return (
            bool(c["every_seconds"])
            and self._since_ckpt > 0
            and time.monotonic() - self._last_ckpt >= c["every_seconds"]
        )

    # -- main loop
    def run(self):
        """Process the source until it is exhausted, ``max_records`` are read, or a stop is requested.

        Polls batches of up to ``batch_size`` records, learns from them, writes their outputs
        and dead letters, and checkpoints at the [checkpoint] cadence and once at the end. Broker
        outages are retried under the [daemon] retry policy. The source, sinks and metrics
        endpoint are closed on return.

        Returns
        -------
        dict
            The run's statistics: ``records``, ``applied``, ``dead_letters``, ``outputs``,
            ``batches``, ``loss_sum``, ``loss_count``, ``checkpoints``, ``resumed_from`` and
            ``elapsed`` (seconds of this run); a group member adds ``merges`` when it merged.

        Raises
        ------
        streamrnn.connectors.base.BrokerUnavailable
            The broker stayed unreachable past the retry policy (nothing after the last
            checkpoint was saved or committed).
        streamrnn.checkpoint.CheckpointError
            Checkpoint writes kept failing past the retry policy, or the final one failed.
        """
        t_start = time.monotonic()
        bar = self._progress_bar()
        self._last_log, self._last_count = time.monotonic(), self.stats["records"]
        try:
            with batch_gc():  # records move a batch at a time (see batch_gc)
                while not self._stop:
                    limit = self.batch_size
                    if self.max_records:
                        limit = min(limit, self.max_records - self.stats["records"])
                        if limit <= 0:
                            break
                    if not self._poll_once(limit, bar):
                        break
                    if self._due():
                        self._retrying("flush the outputs and checkpoint", self.checkpoint)
                    self._report(time.monotonic())
                if (
                    self._since_ckpt
                    or self._ckpt_failures
                    or (self.stats["checkpoints"] == 0 and self.stats["resumed_from"] is None)
                ):
                    self._retrying("flush the outputs and checkpoint", lambda: self.checkpoint(final=True))
                else:
                    self._retrying("flush the outputs", self._flush_sinks)
        finally:
            if bar is not None:
                bar.close()
            self.close()
        self.stats["elapsed"] = time.monotonic() - t_start
        return self.stats

    def _poll_once(self, limit, bar):
        """Poll up to ``limit`` records and process them; False when the source is exhausted."""
        records = self._retrying("poll the source", lambda: self.source.poll(limit, self.poll_timeout))
        self._after_poll()
        if records:
            self.process(records)
            self._after_batch()
            self._dirty = True
            if bar is not None:
                bar.update(len(records))
        if getattr(self.source, "switched", False):
            # a followed file was rotated or truncated: its positions now name the new file, so
            # checkpoint at once (a restart must not look for the old file's position in the new one)
            self.source.switched = False
            self._retrying("flush the outputs and checkpoint", self.checkpoint)
            return True
        if records:
            return True
        if getattr(self.source, "exhausted", False):
            return False
        if self._dirty:
            # idle: make outputs visible without waiting for a checkpoint
            self._retrying("flush the outputs", self._flush_sinks)
            self._dirty = False
        return True

    def _report(self, now):
        """The checkpoint-age gauge, and every ``log_every_seconds`` a progress line and the rate."""
        self.metrics.set_checkpoint_age(now - self._last_ckpt)
        log_every = self.cfg["daemon"]["log_every_seconds"]
        if log_every and now - self._last_log >= log_every:
            rate = (self.stats["records"] - self._last_count) / (now - self._last_log)
            self.metrics.set_rate(rate)
            log.info(
                "records=%d dead=%d rate=%.0f/s mean_loss=%s keys=%d",
                self.stats["records"],
                self.stats["dead_letters"],
                rate,
                self._mean_loss_str(),
                self._n_keys(),
            )
            self._last_log, self._last_count = now, self.stats["records"]

    def _progress_bar(self):
        """A tqdm bar over a finite file source (when ``progress``), else None."""
        if not (self.progress and getattr(self.source, "follow", True) is False):
            return None
        try:
            from tqdm import tqdm

            from streamrnn.connectors.replay import count_lines

            path = getattr(self.source, "path", None)
            total = count_lines(path) if path else None
            start = self.source.positions().get(getattr(self.source, "stream", path), 0) if path else 0
            return tqdm(total=total, initial=start, unit="rec", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        except Exception:  # noqa: BLE001 - a progress bar is optional
            return None

    def _retrying(self, what, call):
        """``call()``, retried under the [daemon] retry policy while the broker is unreachable
        (:meth:`RetryPolicy.call`); a stop request ends the retries."""
        return self.retry.call(
            what,
            call,
            stopped=lambda: self._stop,
            on_failure=self.metrics.count_retry,
            unsaved=lambda: f"nothing after the last checkpoint ({self.ckpt_path or 'none'}) was saved or committed",
        )

    def _write_unwritten(self):
        outputs, dead = self._unwritten
        self._unwritten = ([], [])
        if outputs:
            self.sink.write(outputs)
        if dead:
            self.dead.write(dead)

    def _flush_sinks(self):
        self._write_unwritten()
        self.sink.flush()
        self.dead.flush()

    def _mean_loss_str(self):
        c = self.stats["loss_count"]
        return f"{self.stats['loss_sum'] / c:.6g}" if c else "n/a"

    def close(self):
        """Close the sinks, the source and whatever the runner opened, logging (not raising) what fails."""
        self._worker.shutdown()
        for obj in (self.sink, self.dead, self.source, *self._closeables()):
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as exc:  # noqa: BLE001 - close everything we can
                log.warning("closing %r: %s", obj, exc)
        self.metrics.close()

    def summary(self):
        """The run's summary as text: records, applied, dead letters, outputs, the mean loss beside the
        persistence baseline's, rates and batch latencies.
        """
        s = self.stats
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        elapsed = s.get("elapsed", 0.0) or 1e-9
        lines = [
            "streamrnn daemon summary",
            f"  records read     {s['records']}",
            f"  applied to model {s['applied']}",
            f"  dead letters     {s['dead_letters']}",
            f"  outputs written  {s['outputs']} (this run)",
            f"  mean loss        {self._mean_loss_str()}",
            f"  persistence loss {self._persistence_str()}",
            f"  keys with state  {self._n_keys()}",
            f"  model steps      {self._model_stats().get('steps')}, updates {self._model_stats().get('updates')}",
            f"  this run         {elapsed:.2f} s, batches {s['batches']}, p50/p99 batch latency "
            f"{np.percentile(lat, 50) * 1e3:.2f}/{np.percentile(lat, 99) * 1e3:.2f} ms",
            f"  checkpoint       {self.ckpt_path or '(none)'} ({s['checkpoints']} written"
            + (f", resumed from {s['resumed_from']}" if s["resumed_from"] else "")
            + ")",
            *self._summary_lines(),
        ]
        for name, sec in (("predictions", self.cfg["sink"]), ("dead letters", self.cfg["dead_letter"])):
            where = sec.get("path") or sec.get("topic")
            if where:
                lines.append(f"  {name:<16} {where}")
        return "\n".join(lines)

    # -- control
    def stop(self, *_):
        """Ask the loop to stop after the current batch (it then checkpoints): the SIGTERM/SIGINT handler."""
        self._stop = True

    def install_signal_handlers(self):
        """Make SIGTERM and SIGINT call :meth:`stop`."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


def run_config(cfg, install_signals=True, quiet=False):
    """Run a validated config to its end and print the summary (unless ``quiet``); the Daemon."""
    d = Daemon(cfg)
    if install_signals:
        d.install_signal_handlers()
    d.run()
    if not quiet:
        print(d.summary(), flush=True)
    return d
