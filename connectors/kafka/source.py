"""The Kafka source: a consumer-group member that hands out records in a replayable order."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Literal

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import MemberState, OffsetAndMetadata

from ..base import BrokerUnavailable, Record, SourceError
from .errors import bootstrap_timeout, translate_broker_errors
from .merge import ORDERS, TimestampMerge, stream_id

log = logging.getLogger("streamrnn.kafka")

_PROBE_EVERY_S = 2.0  # idle polls probe the broker at most this often
_MIN_POLL_S = 0.05  # shortest wait handed to the client's poll (see KafkaSource.poll)
_JOIN_POLL_S = 5.0  # the client's poll wait while the member (re)joins its group (see KafkaSource._wait)


def await_offset_validation(consumer: KafkaConsumer, timeout_ms: int = 2000) -> None:
    """Unstick a consumer's partitions waiting for offset validation (call after an empty poll).

    kafka-python 3.x (dpkp/kafka-python#3106): once a partition's leader epoch moves past the
    epoch of the last fetched record, the partition waits for an offset validation that
    ``poll()`` schedules but never awaits, so every later poll comes back empty while its
    records wait on the broker. ``position()`` awaits that validation.
    """
    subscription = getattr(consumer, "_subscription", None)
    needs = getattr(subscription, "is_offset_validation_needed", None)
    if needs is None:
        return
    for tp in consumer.assignment():
        if needs(tp):
            try:
                consumer.position(tp, timeout_ms=timeout_ms)
            except KafkaError as exc:  # the next poll retries; callers judge outages
                log.info("offset validation of %s: %s", tp, exc)


class KafkaSource:
    """A consumer-group member that hands out records in a replayable order.

    Offsets are committed only by :meth:`commit` (``enable_auto_commit=False``), which the daemon
    calls once its checkpoint is durable. Positions are ``{"topic:partition": next_offset}``, the
    next offset *handed out* (records fetched but not yet handed out are read again after a
    restart); :meth:`seek` stores them and the rebalance listener seeks every newly assigned
    partition to its checkpointed offset (else the group's committed offset, else the earliest).

    Parameters
    ----------
    bootstrap, topic : str
        Broker address ("host:port") and the topic to consume.
    group : str or None
        Consumer group (None: read every partition from the beginning, no group, no commits).
    client_id : str
    max_poll_records : int
        Most records one fetch of the client returns.
    order : {"timestamp", "arrival"}
        ``"timestamp"``: the assigned partitions are merged by (record timestamp, partition,
        offset), always taking the smallest head, and a partition that still has records on the
        broker (end offset beyond its position) is waited for before the merge moves past it. The
        order then depends only on the topic's contents and the start positions, so a restart
        from a checkpoint hands out exactly the sequence an uninterrupted run would have: with
        shared parameters, that is what makes a restarted run bit-identical. A partition that is
        caught up is not waited for (as Kafka Streams with ``max.task.idle.ms=0``), so records
        that arrive live are merged as they come (see :class:`~.merge.TimestampMerge`).
        ``"arrival"``: the order the client fetched them (no buffering; not replayable across
        more than one partition).
    instance_id : str or None
        Static group membership (``group.instance.id``, KIP-345): a restarted daemon with the same
        id takes its partitions back at once instead of waiting out its previous incarnation's
        session timeout (45 s). Give each member of a group its own id.
    max_wait_ms : int
        The longest the timestamp merge waits for a partition that has records on the broker but
        none fetched; past that it merges without it and logs a warning (the order may then
        differ from a replay).
    probe_timeout_ms : int
        When polls come back empty, the broker is probed (a ListOffsets request) at most every
        2 s; no answer within this bound raises :class:`BrokerUnavailable`.
    max_buffered : int or None
        Most records held per partition by the timestamp merge (fetched, not yet handed out);
        beyond it the rest is given back and fetched again later. Default:
        max(10 * max_poll_records, 50 000).
    on_revoke : callable or None
        Called with the sorted stream ids of revoked partitions before they go (a checkpoint).
    isolation_level : {"read_uncommitted", "read_committed"}
        ``"read_committed"`` (exactly-once mode): records of open or aborted transactions of the
        input topic are never handed out.
    on_assign : callable or None
        Scale-out: called with the sorted stream ids of assigned partitions; returns
        ``{stream id: offset}`` to resume from (a partition without one starts at its beginning).
    on_lost : callable or None
        Called with the sorted stream ids of partitions *lost* (the member was removed from the
        group: its session expired, or it was fenced), which can no longer be committed; None: as
        ``on_revoke``.
    """

    follow = True
    exhausted = False

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str | None = "streamrnn",
        client_id: str = "streamrnn",
        max_poll_records: int = 5000,
        request_timeout_ms: int = 30000,
        bootstrap_timeout_ms: int = 10000,
        on_revoke: Callable[[list[str]], object] | None = None,
        order: Literal["timestamp", "arrival"] = "timestamp",
        instance_id: str | None = None,
        max_wait_ms: int = 10000,
        probe_timeout_ms: int = 2000,
        max_buffered: int | None = None,
        on_assign: Callable[[list[str]], dict[str, int] | None] | None = None,
        session_timeout_ms: int | None = None,
        isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted",
    ):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.bootstrap, self.topic, self.order = bootstrap, topic, order
        self.max_wait_s = max_wait_ms / 1000.0
        self.probe_timeout_ms = int(probe_timeout_ms)
        self._start: dict[str, int] = {}  # positions given to seek()
        self._next: dict[str, int] = {}  # next offset to hand out per stream id
        # one fetch can bring ~1 MB per partition (tens of thousands of small records): a tighter
        # bound would make the client fetch the same records again and again
        self.merge = TimestampMerge(
            _ConsumerOffsets(self), self._next, self.max_wait_s, max_buffered or max(10 * max_poll_records, 50_000)
        )
        self._last_contact = time.monotonic()
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self.on_lost = None
        extra = {"group_instance_id": instance_id} if instance_id and group is not None else {}
        if session_timeout_ms is not None and group is not None:
            extra["session_timeout_ms"] = int(session_timeout_ms)
            extra["heartbeat_interval_ms"] = max(100, int(session_timeout_ms) // 3)
        with translate_broker_errors(bootstrap, f"opening a consumer of {topic!r}"):
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group,
                client_id=client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_poll_records,
                request_timeout_ms=request_timeout_ms,
                isolation_level=isolation_level,
                **bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms),
                **extra,
            )
        parts = self.consumer.partitions_for_topic(topic)
        if not parts:
            self.consumer.close()
            raise SourceError(f"Kafka topic {topic!r} does not exist on {bootstrap}")
        self.partitions = sorted(parts)
        self._grouped = group is not None
        if group is None:
            tps = [TopicPartition(topic, p) for p in self.partitions]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
        else:
            self.consumer.subscribe([topic], listener=_RebalanceListener(self))

    @property
    def _buffers(self):
        """The merge's per-partition buffers (tests bound their size)."""
        return self.merge.buffers

    def _assign_from(self, assigned: Iterable[TopicPartition]) -> None:
        """Partitions assigned with an ``on_assign`` hook (scale-out): the hook loads each
        partition's state and says where to resume; a partition it has no position for starts at
        its beginning (its records were never applied), whatever the group committed."""
        streams = {stream_id(tp.topic, tp.partition): tp for tp in assigned}
        positions = self.on_assign(sorted(streams)) or {}
        for stream, tp in streams.items():
            self.merge.forget(tp)
            pos = positions.get(stream)
            if pos is None:
                self._next.pop(stream, None)
                self.consumer.seek_to_beginning(tp)
            else:
                self._next[stream] = int(pos)
                self.consumer.seek(tp, int(pos))

    def seek(self, positions: dict[str, int] | None) -> None:
        """Resume at ``positions`` ({``TOPIC:PARTITION``: next offset}); partitions not named start
        where the group's committed offset (or ``auto_offset_reset``) says, now or when assigned.
        """
        self._start = {k: int(v) for k, v in (positions or {}).items() if k.startswith(self.topic + ":")}
        self._next.update(self._start)
        for tp in self.consumer.assignment():
            pos = self._start.get(stream_id(tp.topic, tp.partition))
            if pos is not None:
                self.merge.forget(tp)
                self.consumer.seek(tp, pos)

    def rewind(self, positions: dict[str, int] | None) -> None:
        """Go back to ``positions`` (exactly-once, after an aborted transaction): every assigned
        partition is read again from its position there, or from its beginning if it has none;
        records fetched but not handed out are dropped.
        """
        self._start = {k: int(v) for k, v in (positions or {}).items() if k.startswith(self.topic + ":")}
        self._next.clear()
        self._next.update(self._start)
        for tp in self.consumer.assignment():
            self.merge.forget(tp)
            pos = self._start.get(stream_id(tp.topic, tp.partition))
            if pos is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, pos)

    def positions(self) -> dict[str, int]:
        """Next offset to hand out per partition (records fetched but not handed out excluded)."""
        return dict(self._next)

    # -- reading
    def poll(self, max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        """Up to ``max_records`` records, waiting up to ``timeout`` s for the first ones.

        Raises :class:`BrokerUnavailable` when nothing arrives and the broker does not answer
        a probe.
        """
        if self.order == "arrival":
            return self._poll_arrival(max_records, timeout)
        start = time.monotonic()
        self.merge.begin_poll(start)
        try:
            return self._poll_merged(max_records, start + timeout)
        finally:
            self.merge.end_poll(time.monotonic())

    def _poll_merged(self, max_records: int, deadline: float) -> list[Record]:
        assigned = self.consumer.assignment
        out = self.merge.take(assigned(), max_records)  # what is buffered already, without asking the client
        while not out:
            # Never a near-zero wait (and a long one while the member joins: see _wait).
            fetched = self._fetch(max_records, max(deadline - time.monotonic(), _MIN_POLL_S))
            out = self.merge.take(assigned(), max_records)
            now = time.monotonic()
            if not out:  # nothing fetched, or the merge awaits a partition that may be stuck
                self._await_offset_validation()
            if not out and now >= deadline:
                if not fetched:
                    self._check_reachable(now)
                break
        return out

    def _wait(self, wait: float) -> float:
        """The wait to hand the client's poll: ``wait``, or while the member is not a stable member of
        its group (joining, or rejoining after a rebalance or a lost session) long enough for the join
        to complete inside one poll. kafka-python 3.0.12 drops a JoinGroup/SyncGroup that completes
        between two polls and sends a new JoinGroup (``join_group_async`` replaces a done join task
        without reading it): polls shorter than the join's round trip, as under load, then never
        complete the join, and the member holds no partition (or keeps ones it never fetches)."""
        return max(wait, _JOIN_POLL_S) if self._joining() else wait

    def _joining(self) -> bool:
        """Whether the member is (re)joining its group (not a stable member of it)."""
        return self._grouped and self.consumer.group_metadata().state != MemberState.STABLE

    def _poll_arrival(self, max_records: int, timeout: float) -> list[Record]:
        wait = self._wait(timeout)
        batches = self.consumer.poll(timeout_ms=int(wait * 1000), max_records=max_records)
        out = []
        for recs in batches.values():
            for r in recs:
                out.append(self._record(r))
                self._next[stream_id(r.topic, r.partition)] = r.offset + 1
        if out:
            self._last_contact = time.monotonic()
        else:
            self._await_offset_validation()
            self._check_reachable(time.monotonic())
        return out

    def _await_offset_validation(self) -> None:
        await_offset_validation(self.consumer, self.probe_timeout_ms)

    @staticmethod
    def _record(r) -> Record:
        return Record(
            value=r.value,
            key=r.key,
            position=(r.topic, r.partition, r.offset),
            timestamp=r.timestamp / 1000.0 if r.timestamp is not None else None,
        )

    def _fetch(self, max_records: int, wait: float) -> int:
        """Move what the client has (waiting up to ``wait`` s) into the merge's buffers."""
        joining = self._joining()
        if joining:
            wait = max(wait, _JOIN_POLL_S)  # see _wait
        start = time.monotonic()
        batches = self.consumer.poll(timeout_ms=int(wait * 1000), max_records=max_records)
        if joining or self._joining():
            # a member (re)joining fetches nothing: not a partition's fault, so no reason to
            # give up the order after max_wait_s (under load a rejoin can take longer than that)
            self.merge.excuse(time.monotonic() - start)
        n = 0
        make = self._record
        for tp, recs in batches.items():
            if not recs:
                continue
            given_back = self.merge.add(tp, list(map(make, recs)))
            n += len(recs)
            if given_back is not None:
                # the merge bounds its buffer while another partition is awaited: fetch the rest
                # again later. (Not pause(): kafka-python 3.0.12 can leave a paused partition's
                # parked records behind after resume() and never fetch it again.)
                self.consumer.seek(tp, given_back)
        if n:
            self._last_contact = time.monotonic()
        return n

    def _check_reachable(self, now: float) -> None:
        """Probe the broker after empty polls (at most every 2 s): BrokerUnavailable if it is silent."""
        if now - self._last_contact < _PROBE_EVERY_S:
            return
        assigned = self.consumer.assignment()
        self.merge.refresh_ends(assigned or [TopicPartition(self.topic, p) for p in self.partitions])

    def commit(self, positions: dict[str, int]) -> None:
        """Commit ``positions`` of the partitions this member holds to the group (no group: nothing)."""
        offsets = {}
        assigned = self.consumer.assignment()
        for k, v in positions.items():
            topic, _, p = k.rpartition(":")
            tp = TopicPartition(topic, int(p))
            if tp in assigned:
                offsets[tp] = OffsetAndMetadata(int(v), "", -1)
        if offsets and self.consumer.config.get("group_id") is not None:
            try:
                self.consumer.commit(offsets, timeout_ms=self.probe_timeout_ms)
            except KafkaError as exc:
                # the checkpoint (already durable) is the source of truth for positions; a
                # failed commit (e.g. during a rebalance or an outage) only means the group lags it
                log.warning(
                    "offset commit failed (positions are safe in the checkpoint): %s: %s", type(exc).__name__, exc
                )

    def lag(self) -> int:
        """Records on the broker not handed out yet, over the assigned partitions."""
        assigned = list(self.consumer.assignment())
        if not assigned:
            return 0
        ends = self.consumer.end_offsets(assigned, timeout_ms=self.probe_timeout_ms)
        return sum(max(0, ends[tp] - self._next.get(stream_id(tp.topic, tp.partition), 0)) for tp in assigned)

    def close(self) -> None:
        """Leave the consumer group (bounded wait) without committing offsets: only checkpoints commit."""
        # Leaving the group revokes the partitions; the owner has checkpointed (or is giving up
        # and must not), so no checkpoint from the rebalance callback now.
        self.on_revoke = self.on_lost = None
        # bounded (the broker may be gone), but long enough to leave the group cleanly: otherwise
        # the partitions wait out the session timeout before another member gets them
        self.consumer.close(autocommit=False, timeout_ms=max(self.probe_timeout_ms, 5000))


class _RebalanceListener(ConsumerRebalanceListener):
    """Checkpoints before partitions go; seeks newly assigned ones to where they resume."""

    def __init__(self, source: KafkaSource):
        self.source = source

    def on_partitions_revoked(self, revoked):
        source = self.source
        if source.on_revoke is not None and revoked:
            try:
                source.on_revoke(sorted(stream_id(tp.topic, tp.partition) for tp in revoked))
            except Exception as exc:  # noqa: BLE001 - the checkpoint store still holds positions
                log.warning("checkpoint on partition revocation failed: %s", exc)
        for tp in revoked:  # fetched, not handed out: the next owner reads them again
            source.merge.forget(tp)

    def on_partitions_lost(self, lost):
        source = self.source
        if source.on_lost is None:
            return self.on_partitions_revoked(lost)
        if lost:
            try:
                source.on_lost(sorted(stream_id(tp.topic, tp.partition) for tp in lost))
            except Exception as exc:  # noqa: BLE001 - the partitions go anyway; their owner reloads them
                log.warning("giving up lost partitions failed: %s", exc)
        for tp in lost:
            source.merge.forget(tp)
        return None

    def on_partitions_assigned(self, assigned):
        source = self.source
        if source.on_assign is not None:
            source._assign_from(assigned)
            return
        for tp in assigned:
            source.merge.forget(tp)
            # Where this source is now (past its resume position once records were handed out; a
            # rebalance after a resume must not go back there: those records are in the model).
            pos = source._next.get(stream_id(tp.topic, tp.partition))
            if pos is not None:
                source.consumer.seek(tp, int(pos))


class _ConsumerOffsets:
    """The consumer as the merge's :class:`~.merge.PartitionOffsets`."""

    def __init__(self, source: KafkaSource):
        self.source = source

    def highwater(self, tp):
        return self.source.consumer.highwater(tp)

    def end_offsets(self, tps):
        source = self.source
        with translate_broker_errors(source.bootstrap, f"end offsets of {source.topic!r}", failure=BrokerUnavailable):
            ends = source.consumer.end_offsets(list(tps), timeout_ms=source.probe_timeout_ms)
        source._last_contact = time.monotonic()
        return ends

    def position(self, tp):
        try:
            return self.source.consumer.position(tp, timeout_ms=self.source.probe_timeout_ms)
        except (KafkaError, ValueError):  # not assigned (any more)
            return None

    def seek(self, tp, offset):
        self.source.consumer.seek(tp, int(offset))
