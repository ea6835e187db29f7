"""Topics: creating one, and a compacted topic used as a key-value store."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError

from ..base import BrokerUnavailable
from .errors import bootstrap_timeout, translate_broker_errors
from .source import await_offset_validation

log = logging.getLogger("streamrnn.kafka")


def ensure_topic(
    bootstrap: str, topic: str, partitions: int = 1, configs: Mapping[str, Any] | None = None, timeout_ms: int = 10000
) -> bool:
    """Create ``topic`` (replication factor: the broker's default) unless it exists; True if created."""
    what = f"cannot create topic {topic!r}"
    with translate_broker_errors(bootstrap, what):
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="streamrnn-admin", request_timeout_ms=timeout_ms
        )
    try:
        with translate_broker_errors(bootstrap, what):
            if topic in admin.list_topics():
                return False
            spec = {"num_partitions": partitions, "configs": {k: str(v) for k, v in (configs or {}).items()}}
            try:
                admin.create_topics({topic: spec}, timeout_ms=timeout_ms, wait_for_metadata=True)
            except TopicAlreadyExistsError:  # created meanwhile by another member
                return False
            log.info("created topic %r (%s)", topic, spec)
            return True
    finally:
        admin.close()


def read_to_end(consumer, tps, bootstrap, topic, timeout_s):
    """The records of ``consumer``'s partitions ``tps`` up to their end offsets as of now (the last stable
    offsets for a read_committed consumer), in poll order; BrokerUnavailable if that takes longer than
    ``timeout_s`` or the broker cannot be reached."""
    timeout_ms = int(timeout_s * 1000)
    with translate_broker_errors(bootstrap, f"reading {topic!r}", failure=BrokerUnavailable):
        ends = consumer.end_offsets(tps, timeout_ms=timeout_ms)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp, timeout_ms=timeout_ms) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"reading Kafka topic {topic!r} did not reach its end within {timeout_s:g} s")
            batches = consumer.poll(timeout_ms=200, max_records=10_000)
            if not batches:
                await_offset_validation(consumer)
            for recs in batches.values():
                yield from recs


class CompactedTopic:
    """A compacted topic used as a key-value store: ``put`` is durable when it returns
    (acks=all, flushed), ``refresh`` reads what was added since the last read, and ``latest``
    gives the newest values of a key (the last ``keep`` of them: compaction keeps at least the
    newest; older ones are a fallback while they last).

    Used for per-partition checkpoints (the store that needs no shared disk) and for the
    members' parameters in shared mode. Values up to ``max_message_bytes`` (the topic is created
    with that ``max.message.bytes``); a ``None`` value deletes the key (a tombstone).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        max_message_bytes: int = 64 << 20,
        keep: int = 2,
        partitions: int = 1,
        bootstrap_timeout_ms: int = 10000,
        timeout_s: float = 30.0,
    ):
        self.bootstrap, self.topic, self.keep, self.timeout_s = bootstrap, topic, keep, timeout_s
        ensure_topic(
            bootstrap,
            topic,
            partitions=partitions,
            configs={
                "cleanup.policy": "compact",
                "max.message.bytes": max_message_bytes,
                "min.cleanable.dirty.ratio": 0.1,
                "segment.ms": 600_000,
            },
        )
        with translate_broker_errors(bootstrap, f"opening the clients of {topic!r}"):
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                max_request_size=max_message_bytes,
                linger_ms=0,
                **bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms),
            )
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                fetch_max_bytes=max(52428800, max_message_bytes),
                max_partition_fetch_bytes=max_message_bytes,
                **bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms),
            )
        parts = self.consumer.partitions_for_topic(topic) or {0}
        self._tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self._tps)
        self.consumer.seek_to_beginning(*self._tps)
        self._values: dict[str | None, deque[tuple[int, bytes]]] = {}  # key -> (timestamp ms, value), oldest first

    def put(self, key: str, value: bytes | None) -> None:
        """Store ``value`` (bytes, or None to delete) under ``key`` (str); durable on return."""
        # a store that fails for another reason than the broker's absence is a failed write (OSError)
        with translate_broker_errors(self.bootstrap, f"cannot store {key!r} in {self.topic!r}", failure=OSError):
            future = self.producer.send(self.topic, key=key.encode("utf-8"), value=value)
            self.producer.flush(timeout=self.timeout_s)
            future.get(timeout=self.timeout_s)

    def refresh(self) -> None:
        """Read the topic up to its end (as of now)."""
        for r in read_to_end(self.consumer, self._tps, self.bootstrap, self.topic, self.timeout_s):
            key = r.key.decode("utf-8", errors="replace") if r.key is not None else None
            if r.value is None:
                self._values.pop(key, None)
                continue
            held = self._values.setdefault(key, deque(maxlen=self.keep))
            held.append((r.timestamp, r.value))

    def latest(self, key: str, refresh: bool = True) -> list[tuple[int, bytes]]:
        """The newest values of ``key``, newest first, as (timestamp ms, bytes); [] if none."""
        if refresh:
            self.refresh()
        return list(reversed(self._values.get(key, ())))

    def keys(self, refresh: bool = True) -> list[str | None]:
        """The keys with a retained value; ``refresh`` reads the topic to its end first."""
        if refresh:
            self.refresh()
        return list(self._values)

    def close(self) -> None:
        """Close the producer (bounded wait) and the consumer."""
        try:
            self.producer.close(timeout=5)
        finally:
            self.consumer.close(autocommit=False)
