"""Kafka source and sink on kafka-python (>= 3.0.9).

Source: a consumer-group member with ``enable_auto_commit=False``; offsets are committed by
the daemon (``commit``) only after its checkpoint is durable. Positions are
``{"topic:partition": next_offset}`` (the next offset *handed out*, so records fetched but not yet
handed out are read again after a restart); ``seek`` stores them and a rebalance listener seeks
every newly assigned partition to its checkpointed offset (else the group's committed offset,
else the earliest). By default partitions are merged by record timestamp, so a restart replays
the order of an uninterrupted run (see :class:`KafkaSource`). Sink: a producer with
``acks="all"`` and idempotence on (kafka-python 3.x supports ``enable_idempotence`` and turns it
on by default); ``flush`` waits for every send and raises if one failed.

An unreachable broker raises :class:`~streamrnn.connectors.base.BrokerUnavailable` (from a constructor, from
``poll`` after an empty poll and a failed probe, from ``flush`` when outputs stay unacknowledged);
nothing is dropped meanwhile and the daemon retries under its retry policy.
"""
from __future__ import annotations

import heapq
import logging
import os
import time
import weakref
from collections import deque

from .base import BrokerUnavailable, Record, SourceError
from .codec import dumps

log = logging.getLogger("streamrnn.kafka")


def _unreachable_errors():
    import kafka.errors as e
    names = ("NoBrokersAvailable", "KafkaTimeoutError")
    return tuple(getattr(e, n) for n in names if hasattr(e, n))


_UNREACHABLE = _unreachable_errors()


def _bootstrap_timeout(cls, ms):
    # kafka-python 3.x bounds the initial connection with bootstrap_timeout_ms (default 30 s)
    return {"bootstrap_timeout_ms": ms} if "bootstrap_timeout_ms" in cls.DEFAULT_CONFIG else {}


def _pid(topic, partition):
    return f"{topic}:{partition}"


ORDERS = ("timestamp", "arrival")
_PROBE_EVERY_S = 2.0          # idle polls probe the broker at most this often
_MIN_POLL_S = 0.05            # shortest wait handed to the client's poll (see KafkaSource.poll)


def await_offset_validation(consumer, timeout_ms=2000):
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
    from kafka.errors import KafkaError
    for tp in consumer.assignment():
        if needs(tp):
            try:
                consumer.position(tp, timeout_ms=timeout_ms)
            except KafkaError as exc:      # the next poll retries; callers judge outages
                log.info("offset validation of %s: %s", tp, exc)


class KafkaSource:
    """A consumer-group member that hands out records in a replayable order.

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
        that arrive live are merged as they come. ``"arrival"``: the order the client fetched
        them (no buffering; not replayable across more than one partition).
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
    """

    follow = True
    exhausted = False

    def __init__(self, bootstrap, topic, group="streamrnn", client_id="streamrnn", max_poll_records=5000,
                 request_timeout_ms=30000, bootstrap_timeout_ms=10000, on_revoke=None, order="timestamp",
                 instance_id=None, max_wait_ms=10000, probe_timeout_ms=2000, max_buffered=None,
                 on_assign=None, session_timeout_ms=None):
        from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.bootstrap, self.topic, self.order = bootstrap, topic, order
        self.max_wait_s = max_wait_ms / 1000.0
        self.probe_timeout_ms = int(probe_timeout_ms)
        self._TP = TopicPartition
        self._start = {}
        self._next = {}
        self._buffers = {}            # TopicPartition -> deque of (timestamp ms, offset, Record), not handed out
        self._ends = {}               # TopicPartition -> end offset last seen on the broker
        self._blocked_since = {}      # TopicPartition -> when the merge began waiting for it
        self._left_poll = None        # when the last poll() returned
        # one fetch can bring ~1 MB per partition (tens of thousands of small records): a tighter
        # bound would make the client fetch the same records again and again
        self._max_buffered = max_buffered or max(10 * max_poll_records, 50_000)
        self._last_contact = time.monotonic()
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        extra = {"group_instance_id": instance_id} if instance_id and group is not None else {}
        if session_timeout_ms is not None and group is not None:
            extra["session_timeout_ms"] = int(session_timeout_ms)
            extra["heartbeat_interval_ms"] = max(100, int(session_timeout_ms) // 3)
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=group, client_id=client_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=max_poll_records, request_timeout_ms=request_timeout_ms,
                **_bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms), **extra)
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
        except KafkaError as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r}: {exc}") from None
        parts = self.consumer.partitions_for_topic(topic)
        if not parts:
            self.consumer.close()
            raise SourceError(f"Kafka topic {topic!r} does not exist on {bootstrap}")
        self.partitions = sorted(parts)
        source = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if source.on_revoke is not None and revoked:
                    try:
                        source.on_revoke(sorted(_pid(tp.topic, tp.partition) for tp in revoked))
                    except Exception as exc:  # noqa: BLE001 - the checkpoint store still holds positions
                        log.warning("checkpoint on partition revocation failed: %s", exc)
                for tp in revoked:     # fetched, not handed out: the next owner reads them again
                    source._forget(tp)

            def on_partitions_assigned(self, assigned):
                if source.on_assign is not None:
                    source._assign_from(assigned)
                    return
                for tp in assigned:
                    source._forget(tp)
                    pos = source._start.get(_pid(tp.topic, tp.partition))
                    if pos is None:
                        pos = source._next.get(_pid(tp.topic, tp.partition))
                    if pos is not None:
                        source.consumer.seek(tp, int(pos))

        if group is None:
            tps = [TopicPartition(topic, p) for p in self.partitions]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
        else:
            self.consumer.subscribe([topic], listener=_Listener())

    def _assign_from(self, assigned):
        """Partitions assigned with an ``on_assign`` hook (scale-out): the hook loads each
        partition's state and says where to resume; a partition it has no position for starts at
        its beginning (its records were never applied), whatever the group committed."""
        streams = {_pid(tp.topic, tp.partition): tp for tp in assigned}
        positions = self.on_assign(sorted(streams)) or {}
        for stream, tp in streams.items():
            self._forget(tp)
            pos = positions.get(stream)
            if pos is None:
                self._next.pop(stream, None)
                self.consumer.seek_to_beginning(tp)
            else:
                self._next[stream] = int(pos)
                self.consumer.seek(tp, int(pos))

    def _forget(self, tp):
        self._buffers.pop(tp, None)
        self._ends.pop(tp, None)
        self._blocked_since.pop(tp, None)

    def seek(self, positions):
        self._start = {k: int(v) for k, v in (positions or {}).items() if k.startswith(self.topic + ":")}
        self._next.update(self._start)
        for tp in self.consumer.assignment():
            pos = self._start.get(_pid(tp.topic, tp.partition))
            if pos is not None:
                self._forget(tp)
                self.consumer.seek(tp, pos)

    def positions(self):
        """Next offset to hand out per partition (records fetched but not handed out excluded)."""
        return dict(self._next)

    # -- reading
    def poll(self, max_records=1000, timeout=0.0):
        """Up to ``max_records`` records, waiting up to ``timeout`` s for the first ones.

        Raises :class:`BrokerUnavailable` when nothing arrives and the broker does not answer
        a probe.
        """
        if self.order == "arrival":
            return self._poll_arrival(max_records, timeout)
        start = time.monotonic()
        self._discount_time_away(start)
        try:
            return self._poll_merged(max_records, start + timeout)
        finally:
            self._left_poll = time.monotonic()

    def _discount_time_away(self, now):
        """Time spent outside poll() (the caller busy, or retrying its sink through an outage) is
        not time spent waiting for a partition: move each wait's start forward by it."""
        away = now - self._left_poll if self._left_poll is not None else 0.0
        if away > 0:
            for tp, since in self._blocked_since.items():
                if since >= 0:
                    self._blocked_since[tp] = since + away

    def _poll_merged(self, max_records, deadline):
        out = []
        self._merge(out, max_records)            # what is buffered already, without asking the client
        while not out:
            # Never a near-zero wait: kafka-python 3.0.12 can lose a group join (the member then
            # holds its partitions but never fetches) when polls keep returning before it completes.
            fetched = self._fetch(max_records, max(deadline - time.monotonic(), _MIN_POLL_S))
            self._merge(out, max_records)
            now = time.monotonic()
            if not out:      # nothing fetched, or the merge awaits a partition that may be stuck
                self._await_offset_validation()
            if not out and now >= deadline:
                if not fetched:
                    self._check_reachable(now)
                break
        return out

    def _poll_arrival(self, max_records, timeout):
        batches = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        out = []
        for tp, recs in batches.items():
            for r in recs:
                out.append(self._record(r))
                self._next[_pid(r.topic, r.partition)] = r.offset + 1
        if out:
            self._last_contact = time.monotonic()
        else:
            self._await_offset_validation()
            self._check_reachable(time.monotonic())
        return out

    def _await_offset_validation(self):
        await_offset_validation(self.consumer, self.probe_timeout_ms)

    @staticmethod
    def _record(r):
        return Record(value=r.value, key=r.key, position=(r.topic, r.partition, r.offset),
                      timestamp=r.timestamp / 1000.0 if r.timestamp is not None else None)

    def _fetch(self, max_records, wait):
        """Move what the client has (waiting up to ``wait`` s) into the per-partition buffers."""
        batches = self.consumer.poll(timeout_ms=int(wait * 1000), max_records=max_records)
        n = 0
        make = self._record
        for tp, recs in batches.items():
            if not recs:
                continue
            buf = self._buffers.get(tp)
            if buf is None:
                buf = self._buffers[tp] = deque()
            # the next offset to hand out is known from the first fetch on: a rebalance that drops
            # the buffer then seeks back to it instead of losing what was fetched
            self._next.setdefault(_pid(tp.topic, tp.partition), recs[0].offset)
            buf.extend(map(make, recs))
            n += len(recs)
            self._blocked_since.pop(tp, None)
            if len(buf) > self._max_buffered:
                # Bound the buffer while another partition is awaited: give back the excess and
                # fetch it again later. (Not pause(): kafka-python 3.0.12 can leave a paused
                # partition's parked records behind after resume() and never fetch it again.)
                while len(buf) > self._max_buffered:
                    first_dropped = buf.pop().position[2]
                self.consumer.seek(tp, first_dropped)
        if n:
            self._last_contact = time.monotonic()
        return n

    @staticmethod
    def _head(buf, partition, tp):
        r = buf[0]
        return (r.timestamp if r.timestamp is not None else -1.0, partition, r.position[2], tp)

    def _merge(self, out, max_records):
        """Hand out records in (timestamp, partition, offset) order while no partition is awaited."""
        assigned = self.consumer.assignment()
        if any(self._awaited(tp) for tp in assigned if not self._buffers.get(tp)):
            return
        head = self._head
        heads = [head(buf, tp.partition, tp) for tp, buf in ((tp, self._buffers.get(tp)) for tp in assigned) if buf]
        heapq.heapify(heads)
        append, room = out.append, max_records - len(out)
        while heads and room > 0:
            _, partition, offset, tp = heapq.heappop(heads)
            buf = self._buffers.get(tp)
            if not buf or buf[0].position[2] != offset:    # a rebalance dropped it meanwhile
                break
            # take this partition's run: every record that sorts before the next partition's head
            bound_ts, bound_p = (heads[0][0], heads[0][1]) if heads else (float("inf"), 0)
            last = None
            while buf and room > 0:
                r = buf[0]
                ts = r.timestamp if r.timestamp is not None else -1.0
                if ts > bound_ts or (ts == bound_ts and partition > bound_p):
                    break
                last = buf.popleft()
                append(last)
                room -= 1
            if last is not None:
                self._next[_pid(tp.topic, partition)] = last.position[2] + 1
            if buf:
                heapq.heappush(heads, head(buf, partition, tp))
            elif self._awaited(tp):
                break

    def _awaited(self, tp):
        """Whether the merge must wait for ``tp`` (no record buffered, some on the broker)."""
        from kafka.errors import KafkaError
        end = max(self._ends.get(tp, -1), self.consumer.highwater(tp) or -1)
        if end < 0:
            self._refresh_ends([tp])
            end = self._ends[tp]
        pos = self._next.get(_pid(tp.topic, tp.partition))
        if pos is None:          # nothing handed out yet: where the client starts (committed or earliest)
            try:
                pos = self.consumer.position(tp, timeout_ms=self.probe_timeout_ms)
            except KafkaError:
                pos = None
            if pos is None:
                pos = -1         # unknown yet: wait for it like a partition with records
        if pos >= end:
            self._blocked_since.pop(tp, None)
            return False
        now = time.monotonic()
        since = self._blocked_since.setdefault(tp, now)
        if now - since <= self.max_wait_s:
            return True
        if since > 0:
            log.warning("partition %s has records up to offset %d but none arrived within %.1f s of "
                        "waiting at %d: merging without it (order may differ from a replay)",
                        _pid(tp.topic, tp.partition), end, self.max_wait_s, pos)
            self._blocked_since[tp] = -1.0     # warned
        return False

    def _refresh_ends(self, tps):
        from kafka.errors import KafkaError
        try:
            ends = self.consumer.end_offsets(list(tps), timeout_ms=self.probe_timeout_ms)
        except KafkaError as exc:
            # an outage is no partition's fault: waiting for each starts afresh once it is over
            self._blocked_since = {tp: since for tp, since in self._blocked_since.items() if since < 0}
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r} is unreachable: "
                                    f"{type(exc).__name__}: {exc}") from None
        self._ends.update(ends)
        self._last_contact = time.monotonic()

    def _check_reachable(self, now):
        """Probe the broker after empty polls (at most every 2 s): BrokerUnavailable if it is silent."""
        if now - self._last_contact < _PROBE_EVERY_S:
            return
        assigned = self.consumer.assignment()
        self._refresh_ends(assigned or [self._TP(self.topic, p) for p in self.partitions])

    def commit(self, positions):
        from kafka.structs import OffsetAndMetadata
        offsets = {}
        assigned = self.consumer.assignment()
        for k, v in positions.items():
            topic, _, p = k.rpartition(":")
            tp = self._TP(topic, int(p))
            if tp in assigned:
                offsets[tp] = OffsetAndMetadata(int(v), "", -1)
        if offsets and self.consumer.config.get("group_id") is not None:
            from kafka.errors import KafkaError
            try:
                self.consumer.commit(offsets, timeout_ms=self.probe_timeout_ms)
            except KafkaError as exc:
                # the checkpoint (already durable) is the source of truth for positions; a
                # failed commit (e.g. during a rebalance or an outage) only means the group lags it
                log.warning("offset commit failed (positions are safe in the checkpoint): %s: %s",
                            type(exc).__name__, exc)

    def lag(self):
        assigned = list(self.consumer.assignment())
        if not assigned:
            return 0
        ends = self.consumer.end_offsets(assigned, timeout_ms=self.probe_timeout_ms)
        return sum(max(0, ends[tp] - self._next.get(_pid(tp.topic, tp.partition), 0)) for tp in assigned)

    def close(self):
        # Leaving the group revokes the partitions; the owner has checkpointed (or is giving up
        # and must not), so no checkpoint from the rebalance callback now.
        self.on_revoke = None
        # bounded (the broker may be gone), but long enough to leave the group cleanly: otherwise
        # the partitions wait out the session timeout before another member gets them
        self.consumer.close(autocommit=False, timeout_ms=max(self.probe_timeout_ms, 5000))



def _key_bytes(k):
    if k is None:
        return None
    if isinstance(k, (bytes, bytearray)):
        return bytes(k)
    return str(k).encode("utf-8")


def encode_outputs(records):
    """Output dicts as Kafka (key, value) bytes: the record's key as UTF-8, the dict as JSON."""
    return [(_key_bytes(r.get("key")), dumps(r)) for r in records]


class KafkaSink:
    """Produces each output as a JSON value (key: the record's key as UTF-8 when present).

    While the broker is unreachable nothing is dropped: the producer retries its sends (an
    idempotent producer, so without duplicates) for up to ``delivery_timeout_ms``, ``write``
    queues what it cannot hand to the producer, and ``flush`` raises
    :class:`BrokerUnavailable` when the outputs are not acknowledged within ``flush_timeout_s``;
    calling ``flush`` again carries on. The daemon's retry policy decides how long to wait.
    """

    def __init__(self, bootstrap, topic, raw=False, linger_ms=5, bootstrap_timeout_ms=10000,
                 flush_timeout_s=5.0, delivery_timeout_ms=24 * 3600 * 1000, max_block_ms=5000):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError
        self.bootstrap, self.topic = bootstrap, topic
        self.flush_timeout_s = flush_timeout_s
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                          linger_ms=linger_ms, batch_size=256 * 1024,
                                          delivery_timeout_ms=delivery_timeout_ms, max_block_ms=max_block_ms,
                                          **_bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms))
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
        except KafkaError as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r}: {exc}") from None
        self._futures = []
        self._backlog = []        # outputs the producer would not take (broker unreachable), in order
        self._unreachable = False  # the last flush timed out

    def write(self, records):
        self.write_encoded(encode_outputs(records))

    def write_encoded(self, pairs):
        """Outputs already encoded as (key bytes or None, value bytes), in order."""
        if self._backlog:         # keep the order: queue behind what is already waiting
            self._backlog.extend(pairs)
            return
        send, topic, futures = self.producer.send, self.topic, self._futures
        n_before = len(futures)
        try:
            for key, value in pairs:
                futures.append(send(topic, key=key, value=value))
        except _UNREACHABLE as exc:   # no metadata or a full buffer within max_block_ms
            log.warning("Kafka producer to %r blocked (%s): queueing outputs until the broker is back",
                        topic, exc)
            self._backlog.extend(pairs[len(futures) - n_before:])

    def write_raw(self, pairs):
        """(key, value) pairs; dict/list values are JSON-encoded, str values UTF-8."""
        for k, v in pairs:
            if isinstance(v, (dict, list)):
                v = dumps(v)
            elif isinstance(v, str):
                v = v.encode("utf-8")
            self._futures.append(self.producer.send(self.topic, key=_key_bytes(k), value=v))

    def flush(self):
        """Wait until every output is acknowledged; BrokerUnavailable if that takes too long."""
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            self.write_encoded(backlog)
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
            self._unreachable = False
        except _UNREACHABLE:
            self._unreachable = True
            pending = sum(not f.is_done for f in self._futures) + len(self._backlog)
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r} is unreachable: {pending} outputs to "
                                    f"{self.topic!r} not acknowledged within {self.flush_timeout_s:g} s") from None
        if self._backlog:
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r} is unreachable: "
                                    f"{len(self._backlog)} outputs to {self.topic!r} still queued")
        futures, self._futures = self._futures, []
        for f in futures:
            if f.failed():
                raise RuntimeError(f"Kafka produce to {self.topic!r} failed: {f.exception}")

    def close(self):
        try:
            if not self._unreachable:
                self.flush()
        finally:
            # If the broker is gone, do not wait again: what is unacknowledged lies past the last
            # checkpoint (the daemon saves none after a failed flush) and a restart redoes it.
            try:
                self.producer.close(timeout=0 if self._unreachable else self.flush_timeout_s)
            except _UNREACHABLE:
                pass


class KafkaSinkProcess:
    """A :class:`KafkaSink` run in a child process, for the daemon's predictions.

    kafka-python's ``send`` is pure Python, about 18 µs a record with the GIL held: as much as the
    rest of the daemon's per-record work together. In a child process it runs on another core
    while the daemon decodes and learns the next batch. The daemon encodes the outputs (orjson)
    and hands them over a pipe a batch at a time; ``flush`` waits until the child's producer has
    every output acknowledged (or raises :class:`BrokerUnavailable`, as :class:`KafkaSink` does),
    so checkpoints keep their meaning. The child ignores SIGINT/SIGTERM (the daemon decides when to
    stop) and exits when the daemon closes it or dies (the pipe ends), after a bounded attempt to
    deliver what it holds.
    """

    def __init__(self, bootstrap, topic, **sink_options):
        import json
        import subprocess
        import sys
        from multiprocessing.connection import Connection
        self.bootstrap, self.topic = bootstrap, topic
        # A plain child interpreter on two pipes, not multiprocessing: its "spawn" re-imports the
        # parent's __main__ (breaking scripts without a main guard), and a fork would copy the
        # client threads' locks.
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        args = {"read_fd": to_child_r, "write_fd": to_parent_w, "bootstrap": bootstrap, "topic": topic,
                "options": sink_options}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _SINK_CHILD_CODE, json.dumps([p for p in sys.path if p]), json.dumps(args)],
                pass_fds=(to_child_r, to_parent_w), stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(to_parent_w)
        self._conn = _Duplex(Connection(to_parent_r, writable=False), Connection(to_child_w, readable=False))
        # however this process ends (an exception before close(), interpreter exit), the child sees
        # its pipe end and exits (it ignores SIGTERM: the daemon decides when to stop)
        self._finalizer = weakref.finalize(self, _stop_sink_process, self._conn, self._proc)
        self._reply()                  # raises what the child's KafkaSink constructor raised

    def _died(self, exc):
        return SourceError(f"the Kafka sink process for {self.topic!r} died (exit code {self._proc.poll()}): "
                           f"{exc!r}")

    def _send(self, message):
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:       # a closed or broken pipe
            raise self._died(exc) from None

    def _call(self, *message):
        self._send(message)
        self._reply()

    def _reply(self):
        try:
            kind, text = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(exc) from None
        if kind == "ok":
            return
        if kind == "unavailable":
            raise BrokerUnavailable(text)
        if kind == "source-error":
            raise SourceError(text)
        raise RuntimeError(text)

    def write(self, records):
        self._send(("write", encode_outputs(records)))

    def flush(self):
        self._call("flush")

    def close(self):
        try:
            if self._proc.poll() is None:
                self._call("close")
        finally:
            self._finalizer()


class _Duplex:
    """One end of the two pipes between the daemon and its sink process."""

    def __init__(self, incoming, outgoing):
        self.incoming, self.outgoing = incoming, outgoing

    def send(self, message):
        self.outgoing.send(message)

    def recv(self):
        return self.incoming.recv()

    def close(self):
        self.outgoing.close()
        self.incoming.close()


def _stop_sink_process(conn, proc, timeout_s=30.0):
    import subprocess
    conn.close()                       # the child delivers what it holds (bounded), then exits
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


_SINK_CHILD_CODE = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
                    "from streamrnn.connectors.kafka import _sink_process_entry; _sink_process_entry(json.loads(sys.argv[2]))")


def _sink_process_entry(args):
    from multiprocessing.connection import Connection
    conn = _Duplex(Connection(args["read_fd"], writable=False), Connection(args["write_fd"], readable=False))
    _sink_process_main(conn, args["bootstrap"], args["topic"], args["options"])


def _sink_process_main(conn, bootstrap, topic, options):
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def reply_error(exc):
        kind = "unavailable" if isinstance(exc, BrokerUnavailable) else \
            "source-error" if isinstance(exc, SourceError) else "error"
        conn.send((kind, str(exc) if kind != "error" else f"{type(exc).__name__}: {exc}"))

    try:
        sink = KafkaSink(bootstrap, topic, **options)
    except Exception as exc:  # noqa: BLE001 - reported to the daemon
        reply_error(exc)
        return
    conn.send(("ok", ""))
    failed = None                      # an error of a write, reported at the next flush or close
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):    # the daemon is gone: deliver what we can, briefly
            sink.flush_timeout_s = min(sink.flush_timeout_s, 5.0)
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - nobody to tell
                pass
            return
        if message[0] == "write":
            try:
                sink.write_encoded(message[1])
            except Exception as exc:  # noqa: BLE001 - writes get no reply
                failed = failed or exc
            continue
        try:
            if failed is not None:
                failed, exc = None, failed
                raise exc
            if message[0] == "flush":
                sink.flush()
            elif message[0] == "close":
                sink.close()
                conn.send(("ok", ""))
                return
            conn.send(("ok", ""))
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which decides
            reply_error(exc)


def ensure_topic(bootstrap, topic, partitions=1, configs=None, timeout_ms=10000):
    """Create ``topic`` (replication factor: the broker's default) unless it exists."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrnn-admin",
                                 request_timeout_ms=timeout_ms)
    except _UNREACHABLE as exc:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
    try:
        if topic in admin.list_topics():
            return False
        spec = {"num_partitions": partitions, "configs": {k: str(v) for k, v in (configs or {}).items()}}
        try:
            admin.create_topics({topic: spec}, timeout_ms=timeout_ms, wait_for_metadata=True)
        except TopicAlreadyExistsError:
            return False
        log.info("created topic %r (%s)", topic, spec)
        return True
    except _UNREACHABLE as exc:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
    except KafkaError as exc:
        raise SourceError(f"cannot create Kafka topic {topic!r} on {bootstrap}: {exc}") from None
    finally:
        admin.close()


class CompactedTopic:
    """A compacted topic used as a key-value store: ``put`` is durable when it returns
    (acks=all, flushed), ``refresh`` reads what was added since the last read, and ``latest``
    gives the newest values of a key (the last ``keep`` of them: compaction keeps at least the
    newest; older ones are a fallback while they last).

    Used for per-partition checkpoints (the store that needs no shared disk) and for the
    members' parameters in shared mode. Values up to ``max_message_bytes`` (the topic is created
    with that ``max.message.bytes``); a ``None`` value deletes the key (a tombstone).
    """

    def __init__(self, bootstrap, topic, max_message_bytes=64 << 20, keep=2, partitions=1,
                 bootstrap_timeout_ms=10000, timeout_s=30.0):
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.errors import KafkaError
        self.bootstrap, self.topic, self.keep, self.timeout_s = bootstrap, topic, keep, timeout_s
        ensure_topic(bootstrap, topic, partitions=partitions,
                     configs={"cleanup.policy": "compact", "max.message.bytes": max_message_bytes,
                              "min.cleanable.dirty.ratio": 0.1, "segment.ms": 600_000})
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                          max_request_size=max_message_bytes, linger_ms=0,
                                          **_bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms))
            self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                          fetch_max_bytes=max(52428800, max_message_bytes),
                                          max_partition_fetch_bytes=max_message_bytes,
                                          **_bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms))
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
        except KafkaError as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r}: {exc}") from None
        parts = self.consumer.partitions_for_topic(topic) or {0}
        self._tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self._tps)
        self.consumer.seek_to_beginning(*self._tps)
        self._values = {}            # key -> deque of (timestamp ms, value bytes), oldest first

    def put(self, key, value):
        """Store ``value`` (bytes, or None to delete) under ``key`` (str); durable on return."""
        from kafka.errors import KafkaError
        try:
            future = self.producer.send(self.topic, key=key.encode("utf-8"), value=value)
            self.producer.flush(timeout=self.timeout_s)
            future.get(timeout=self.timeout_s)
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r} is unreachable: cannot store "
                                    f"{key!r} in {self.topic!r}: {exc}") from None
        except KafkaError as exc:
            raise OSError(f"cannot store {key!r} in Kafka topic {self.topic!r}: {type(exc).__name__}: {exc}") \
                from None

    def refresh(self):
        """Read the topic up to its end (as of now)."""
        from kafka.errors import KafkaError
        try:
            ends = self.consumer.end_offsets(self._tps, timeout_ms=int(self.timeout_s * 1000))
            deadline = time.monotonic() + self.timeout_s
            while any(self.consumer.position(tp, timeout_ms=int(self.timeout_s * 1000)) < ends[tp]
                      for tp in self._tps):
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"reading Kafka topic {self.topic!r} did not reach its end within "
                                            f"{self.timeout_s:g} s")
                batches = self.consumer.poll(timeout_ms=200, max_records=10_000)
                if not batches:
                    await_offset_validation(self.consumer)
                for recs in batches.values():
                    for r in recs:
                        key = r.key.decode("utf-8", errors="replace") if r.key is not None else None
                        if r.value is None:
                            self._values.pop(key, None)
                            continue
                        held = self._values.setdefault(key, deque(maxlen=self.keep))
                        held.append((r.timestamp, r.value))
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r} is unreachable: {exc}") from None
        except KafkaError as exc:
            raise BrokerUnavailable(f"reading Kafka topic {self.topic!r}: {type(exc).__name__}: {exc}") from None

    def latest(self, key, refresh=True):
        """The newest values of ``key``, newest first, as (timestamp ms, bytes); [] if none."""
        if refresh:
            self.refresh()
        return list(reversed(self._values.get(key, ())))

    def keys(self, refresh=True):
        if refresh:
            self.refresh()
        return list(self._values)

    def close(self):
        try:
            self.producer.close(timeout=5)
        finally:
            self.consumer.close(autocommit=False)
