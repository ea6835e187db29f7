"""Kafka source and sink on kafka-python (>= 3.0.9).

Source: a consumer-group member with ``enable_auto_commit=False``; offsets are committed by
the daemon (``commit``) only after its checkpoint is durable. Positions are
``{"topic:partition": next_offset}``; ``seek`` stores them and a rebalance listener seeks every
newly assigned partition to its checkpointed offset (else the group's committed offset, else
the earliest). Sink: a producer with ``acks="all"`` and idempotence on (kafka-python 3.x
supports ``enable_idempotence`` and turns it on by default); ``flush`` waits for every send and
raises if one failed.
"""
from __future__ import annotations

import json
import logging

from .base import Record, SourceError

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


class KafkaSource:
    follow = True
    exhausted = False

    def __init__(self, bootstrap, topic, group="streamrnn", client_id="streamrnn", max_poll_records=5000,
                 request_timeout_ms=30000, bootstrap_timeout_ms=10000, on_revoke=None):
        from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError
        self.topic = topic
        self._TP = TopicPartition
        self._start = {}
        self._next = {}
        self.on_revoke = on_revoke
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=group, client_id=client_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=max_poll_records, request_timeout_ms=request_timeout_ms,
                **_bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms))
        except _UNREACHABLE as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
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
                        source.on_revoke()
                    except Exception as exc:  # noqa: BLE001 - the checkpoint store still holds positions
                        log.warning("checkpoint on partition revocation failed: %s", exc)

            def on_partitions_assigned(self, assigned):
                for tp in assigned:
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

    def seek(self, positions):
        self._start = {k: int(v) for k, v in (positions or {}).items() if k.startswith(self.topic + ":")}
        self._next.update(self._start)
        for tp in self.consumer.assignment():
            pos = self._start.get(_pid(tp.topic, tp.partition))
            if pos is not None:
                self.consumer.seek(tp, pos)

    def positions(self):
        return dict(self._next)

    def poll(self, max_records=1000, timeout=0.0):
        batches = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        out = []
        for tp, recs in batches.items():
            for r in recs:
                out.append(Record(value=r.value, key=r.key, position=(r.topic, r.partition, r.offset),
                                  timestamp=r.timestamp / 1000.0 if r.timestamp is not None else None))
                self._next[_pid(r.topic, r.partition)] = r.offset + 1
        return out

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
                self.consumer.commit(offsets)
            except KafkaError as exc:
                # the checkpoint (already durable) is the source of truth for positions; a
                # failed commit (e.g. during a rebalance) only means the group lags behind it
                log.warning("offset commit failed (positions are safe in the checkpoint): %s", exc)

    def lag(self):
        assigned = list(self.consumer.assignment())
        if not assigned:
            return 0
        ends = self.consumer.end_offsets(assigned)
        return sum(max(0, ends[tp] - self._next.get(_pid(tp.topic, tp.partition), 0)) for tp in assigned)

    def close(self):
        self.consumer.close(autocommit=False)


class KafkaSink:
    """Produces each output as a JSON value (key: the record's key as UTF-8 when present)."""

    def __init__(self, bootstrap, topic, raw=False, linger_ms=5, bootstrap_timeout_ms=10000):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError
        self.topic = topic
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                          linger_ms=linger_ms, batch_size=256 * 1024,
                                          **_bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms))
        except _UNREACHABLE as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r} is unreachable: {exc}") from None
        except KafkaError as exc:
            raise SourceError(f"Kafka broker at {bootstrap!r}: {exc}") from None
        self._futures = []

    @staticmethod
    def _key(k):
        if k is None:
            return None
        if isinstance(k, (bytes, bytearray)):
            return bytes(k)
        return str(k).encode("utf-8")

    def write(self, records):
        send = self.producer.send
        for r in records:
            self._futures.append(send(self.topic, key=self._key(r.get("key")),
                                      value=json.dumps(r, separators=(",", ":")).encode("utf-8")))

    def write_raw(self, pairs):
        """(key, value) pairs; dict/list values are JSON-encoded, str values UTF-8."""
        for k, v in pairs:
            if isinstance(v, (dict, list)):
                v = json.dumps(v, separators=(",", ":")).encode("utf-8")
            elif isinstance(v, str):
                v = v.encode("utf-8")
            self._futures.append(self.producer.send(self.topic, key=self._key(k), value=v))

    def flush(self):
        self.producer.flush()
        futures, self._futures = self._futures, []
        for f in futures:
            if f.failed():
                raise RuntimeError(f"Kafka produce to {self.topic!r} failed: {f.exception}")

    def close(self):
        try:
            self.flush()
        finally:
            self.producer.close()
