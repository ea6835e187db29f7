"""The Kafka sink: a producer with ``acks="all"`` and idempotence, whose ``flush`` waits for every send."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaProducer

from ..base import BrokerUnavailable
from ..codec import dumps, dumps_each
from .errors import UNREACHABLE, bootstrap_timeout, translate_broker_errors

log = logging.getLogger("streamrnn.kafka")

EncodedOutput = tuple[bytes | None, bytes]  # (key, value) as produced


def _key_bytes(k: Any) -> bytes | None:
    if k is None:
        return None
    if isinstance(k, (bytes, bytearray)):
        return bytes(k)
    return str(k).encode("utf-8")


def encode_outputs(records: Iterable[Mapping[str, Any]]) -> list[EncodedOutput]:
    """Output dicts as Kafka (key, value) bytes: the record's key as UTF-8, the dict as JSON."""
    records = list(records)
    return list(zip([_key_bytes(r.get("key")) for r in records], dumps_each(records)))


class KafkaSink:
    """Produces each output as a JSON value (key: the record's key as UTF-8 when present).

    kafka-python 3.x supports ``enable_idempotence`` (and turns it on by default). While the
    broker is unreachable nothing is dropped: the producer retries its sends (idempotent, so
    without duplicates) for up to ``delivery_timeout_ms``, ``write`` queues what it cannot hand
    to the producer, and ``flush`` raises :class:`BrokerUnavailable` when the outputs are not
    acknowledged within ``flush_timeout_s``; calling ``flush`` again carries on. The daemon's
    retry policy decides how long to wait.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        raw: bool = False,
        linger_ms: int = 5,
        bootstrap_timeout_ms: int = 10000,
        flush_timeout_s: float = 5.0,
        delivery_timeout_ms: int = 24 * 3600 * 1000,
        max_block_ms: int = 5000,
    ):
        self.bootstrap, self.topic = bootstrap, topic
        self.flush_timeout_s = flush_timeout_s
        with translate_broker_errors(bootstrap, f"opening a producer to {topic!r}"):
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=256 * 1024,
                delivery_timeout_ms=delivery_timeout_ms,
                max_block_ms=max_block_ms,
                **bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms),
            )
        self._futures = []
        self._backlog: list[EncodedOutput] = []  # outputs the producer would not take (broker unreachable), in order
        self._unreachable = False  # the last flush timed out

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Send outputs (dicts with ``key`` and the prediction fields), JSON-encoded, in order; delivery
        is confirmed by :meth:`flush`.
        """
        self.write_encoded(encode_outputs(records))

    def write_encoded(self, pairs: list[EncodedOutput]) -> None:
        """Outputs already encoded as (key bytes or None, value bytes), in order."""
        if self._backlog:  # keep the order: queue behind what is already waiting
            self._backlog.extend(pairs)
            return
        send, topic, futures = self.producer.send, self.topic, self._futures
        n_before = len(futures)
        try:
            for key, value in pairs:
                futures.append(send(topic, key=key, value=value))
        except UNREACHABLE as exc:  # no metadata or a full buffer within max_block_ms
            log.warning("Kafka producer to %r blocked (%s): queueing outputs until the broker is back", topic, exc)
            self._backlog.extend(pairs[len(futures) - n_before :])

    def write_raw(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        """(key, value) pairs; dict/list values are JSON-encoded, str values UTF-8."""
        for k, v in pairs:
            if isinstance(v, (dict, list)):
                v = dumps(v)
            elif isinstance(v, str):
                v = v.encode("utf-8")
            self._futures.append(self.producer.send(self.topic, key=_key_bytes(k), value=v))

    def flush(self) -> None:
        """Wait until every output is acknowledged; BrokerUnavailable if that takes too long."""
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            self.write_encoded(backlog)
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
            self._unreachable = False
        except UNREACHABLE:
            self._unreachable = True
            pending = sum(not f.is_done for f in self._futures) + len(self._backlog)
            raise BrokerUnavailable(
                f"Kafka broker at {self.bootstrap!r} is unreachable: {pending} outputs to "
                f"{self.topic!r} not acknowledged within {self.flush_timeout_s:g} s"
            ) from None
        if self._backlog:
            raise BrokerUnavailable(
                f"Kafka broker at {self.bootstrap!r} is unreachable: "
                f"{len(self._backlog)} outputs to {self.topic!r} still queued"
            )
        futures, self._futures = self._futures, []
        for f in futures:
            if f.failed():
                raise RuntimeError(f"Kafka produce to {self.topic!r} failed: {f.exception}")

    def close(self) -> None:
        """Flush (unless the broker was found unreachable) and close the producer."""
        try:
            if not self._unreachable:
                self.flush()
        finally:
            # If the broker is gone, do not wait again: what is unacknowledged lies past the last
            # checkpoint (the daemon saves none after a failed flush) and a restart redoes it.
            try:
                self.producer.close(timeout=0 if self._unreachable else self.flush_timeout_s)
            except UNREACHABLE:
                pass
