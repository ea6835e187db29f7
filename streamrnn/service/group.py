"""The group runner: one member of a Kafka consumer group (scale-out, see :mod:`streamrnn.scaleout`).

Kafka assigns the topic's partitions among the members; the member keeps one model state per
owned partition (:class:`~streamrnn.partitioned.PartitionedModel`), loads a partition's state
from the checkpoint store when it is assigned and saves it there when it is revoked. In
"shared" mode the members also exchange and average their parameters through a compacted topic.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

from streamrnn.checkpoint import CheckpointError
from streamrnn.extras import require
from streamrnn.forecast import _ARRAY as FORECAST_ARRAY
from streamrnn.model import Model
from streamrnn.partitioned import PartitionedModel
from streamrnn.state_checks import check_finite, check_keys, check_model_header

from .checkpoints import check_daemon_meta, first_usable
from .config import check_start
from .loop import Daemon
from .single import STOP_LATENCY, append_on_resume, close_opened

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it


class GroupDaemon(Daemon):
    """A consumer-group member: state per owned partition, saved to and loaded from the store."""

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        check_start(config, source=source is None, sink=sink is None, dead_letter=dead_letter is None)
        try:
            super().__init__(config, source, sink, dead_letter, progress)
        except BaseException:
            close_opened(self)
            raise
        self.poll_timeout = min(self.poll_timeout, STOP_LATENCY)

    def _open_state(self, config):
        from streamrnn.scaleout import ParameterExchange, make_store

        self.group = g = config["group"]
        src = config["source"]
        self.parts = PartitionedModel(config["model"], mode=g["mode"], forecast=config["schema"].get("forecast", False))
        self.model = self.forecaster = None
        self.member = g.get("member") or src.get("instance_id") or f"{socket.gethostname()}-{os.getpid()}"
        src.setdefault("client_id", self.member)  # how `streamrnn status` names the member
        self.store = self._retrying(
            "open the checkpoint store", lambda: make_store(g, config["checkpoint"], src["bootstrap"])
        )
        self.ckpt_path = repr(self.store)
        self._template = Model(**config["model"])  # what a partition's checkpoint must fit
        try:
            if self.store.streams():  # partitions saved before: a restart, outputs stay
                append_on_resume(config)
        except Exception as exc:  # noqa: BLE001 - the listing is best effort; "w" then truncates
            log.warning("could not list the checkpoint store %s: %s", self.ckpt_path, exc)
        self._dirty_streams = set()  # partitions with records since their last save
        self._tokens = {}  # partition -> token of the checkpoint it was loaded from or saved as
        self._part_counts = {}  # partition -> [records, applied] over its whole history
        self._fatal = None  # an error raised inside a rebalance callback, re-raised after poll
        self._have_params = g["mode"] == "independent"
        self.exchange = None
        self._since_publish = 0
        if g["mode"] == "shared":
            require("kafka", "kafka", "the shared-parameter exchange")
            from streamrnn.connectors.kafka import CompactedTopic

            topic = self._retrying(
                "open the model topic",
                lambda: CompactedTopic(
                    src["bootstrap"], g["model_topic"], max_message_bytes=g["max_message_bytes"], keep=1
                ),
            )
            self.exchange = ParameterExchange(
                topic, self.member, config["model"], merge=g["merge"], stale_seconds=g["stale_seconds"]
            )
            theta = self._retrying("read the model topic", self.exchange.initial)
            if theta is not None:  # join the group's current parameters
                self.parts.set_parameters(theta)
                self._have_params = True
                log.info("starting from the average parameters of %d members", self.exchange.last_merged)

    def _attach_rebalance_callbacks(self):
        self.source.on_revoke = self._partitions_revoked
        self.source.on_assign = self._partitions_assigned

    # -- rebalance callbacks
    def _partitions_assigned(self, streams):
        """Rebalance callback: load each newly assigned partition's state from the store; the
        positions to resume at (None: no checkpoint, start at the partition's beginning)."""
        positions = {}
        for stream in streams:
            self.parts.release(stream)
            self._dirty_streams.discard(stream)
            try:
                positions[stream] = self._load_partition(stream)
            except Exception as exc:  # noqa: BLE001 - raised again after poll, before any record is used
                log.error("partition %s: %s", stream, exc)
                self._fatal = self._fatal or exc
        log.info("member %s now owns %s", self.member, ", ".join(self.parts.streams) or "no partition")
        return positions

    def _partition_generations(self, stream):
        """The checkpoint generations of ``stream`` in the store, newest first (the newest's token is
        noted: a save is refused if another member has written the partition since)."""
        self._tokens[stream] = self.store.newest_token(stream)
        return self.store.generations(stream)

    def _load_partition(self, stream):
        def restore(arrays, meta, where):
            try:
                check_daemon_meta(meta, streams=[stream])
                layout = {name: (arr.shape, arr.dtype.newbyteorder("<")) for name, arr in arrays.items()}
                extra = {}
                if FORECAST_ARRAY in layout or self.parts.forecast:
                    pending = check_keys(meta.get("forecast_keys"), "saved forecast keys", self._template.max_keys)
                    extra[FORECAST_ARRAY] = ((len(pending), self._template.n_inputs), self._template.dtype)
                check_model_header(layout, meta["model"], self._template, extra=extra)
            except CheckpointError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
            check_finite(arrays, where)
            try:
                self.parts.load(stream, arrays, meta, source=where, adopt_parameters=not self._have_params)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} (the config's [model] may differ from the group's)") from None

        generations = self._partition_generations(stream)
        found = first_usable(
            generations, restore, lambda: self.parts.allocate_for_load(stream), what=f"partition {stream}: "
        )
        if found is None:
            self._part_counts[stream] = [0, 0]
            self.parts.model(stream)  # held (fresh) from now on, so its first checkpoint is written
            return None
        _, meta, where = found
        self._have_params = True
        if where != generations[0][0]:  # resumed from an older generation: save soon over the unusable one
            self._dirty_streams.add(stream)
        counts = meta.get("daemon", {})
        self._part_counts[stream] = [counts.get("records", 0), counts.get("applied", 0)]
        pos = int(meta["positions"][stream])
        log.info(
            "partition %s: resumed from %s at offset %d (%s keys, saved by %s)",
            stream,
            where,
            pos,
            meta.get("n_keys"),
            meta.get("member"),
        )
        return pos

    def _partitions_revoked(self, streams):
        """Rebalance callback: save the partitions that leave, then release them."""
        held = [s for s in streams if s in self.parts.streams]
        try:
            self._flush_sinks()
            self._save_partitions(held)
        except Exception as exc:  # noqa: BLE001 - the store keeps the last save: the next owner redoes the rest
            log.error(
                "could not save partitions %s on revocation: %s; their next owner resumes from their "
                "previous checkpoints",
                held,
                exc,
            )
        for stream in held:
            self.parts.release(stream)
            self._dirty_streams.discard(stream)

    def _after_poll(self):
        if self._fatal is not None:
            raise self._fatal  # from a rebalance callback: before any record is used

    # -- learning
    def _streams_of(self, records):
        return [f"{r.position[0]}:{r.position[1]}" for r in records]

    def _learn(self, X, Y, keys, streams=None, resets=None):
        return self.parts.step_many(X, Y, keys, streams, resets)

    def _count_batch(self, records, applied_streams):
        """Records read and applied per partition; those with records need saving."""
        read, applied = Counter(self._streams_of(records)), Counter(applied_streams)
        for stream, n in read.items():
            c = self._part_counts.setdefault(stream, [0, 0])
            c[0] += n
            c[1] += applied[stream]
        self._dirty_streams.update(read)
        self._since_publish += len(applied_streams)

    def _after_batch(self):
        """Shared mode, every ``publish_every`` learned records: publish and merge."""
        if self.exchange is None or self._since_publish < self.group["publish_every"]:
            return
        merged = self._retrying(
            "exchange parameters",
            lambda: self.exchange.publish_and_merge(self.parts.parameters.copy(), self._since_publish),
        )
        self.parts.set_parameters(merged)
        self._since_publish = 0
        self.stats["merges"] = self.stats.get("merges", 0) + 1

    # -- checkpoints: one per partition with new records
    saves_checkpoints = True

    def _save_checkpoint(self, positions):
        self._save_partitions(self.parts.streams)

    def _save_partitions(self, streams):
        positions = self.source.positions()
        for stream in streams:
            if stream not in self._dirty_streams or positions.get(stream) is None:
                continue
            arrays, meta = self._partition_state(stream, positions)
            token = self.store.save(stream, arrays, meta, expect=self._tokens.get(stream))
            if token is not None:
                self._tokens[stream] = token
            self._dirty_streams.discard(stream)

    def _partition_state(self, stream, positions):
        """(arrays, meta) of ``stream``'s checkpoint at ``positions``: its model, position, counts."""
        arrays, meta = self.parts.state_arrays(stream)
        records, applied = self._part_counts.get(stream, (0, 0))
        meta.update(
            positions={stream: positions[stream]},
            member=self.member,
            mode=self.group["mode"],
            saved_at=time.time(),
            n_keys=len(self.parts.model(stream).keys),
            daemon={"records": records, "applied": applied},
        )
        return arrays, meta

    # -- reporting
    @property
    def _n_outputs(self):
        return self.parts.n_outputs

    def _n_keys(self):
        return self.parts.n_keys

    def _model_stats(self):
        return self.parts.stats

    def _closeables(self):
        return (self.store, getattr(self.exchange, "topic", None))

    def _summary_lines(self):
        return [
            f"  group            {self.group['name']} as member {self.member} ({self.group['mode']} mode"
            + (f", {self.stats.get('merges', 0)} parameter merges" if self.exchange else "")
            + ")"
        ]
