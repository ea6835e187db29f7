"""Round trips through a real Kafka broker with kafka-python (no mocks)."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import pytest

pytestmark = pytest.mark.kafka

from tests.kafka_broker import require_kafka_python  # noqa: E402

kafka = require_kafka_python()  # fails, not skips, under STREAMRNN_REQUIRE_KAFKA=1
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

try:  # kafka-python 3 wants Serializer objects; bare callables are deprecated.
    from kafka.serializer import DefaultSerializer, JsonSerializer

    _KEY_SER = _KEY_DE = DefaultSerializer()
    _VALUE_SER = _VALUE_DE = JsonSerializer()
except ImportError:  # older kafka-python
    _KEY_SER = lambda k: k.encode("utf-8")  # noqa: E731
    _KEY_DE = lambda b: b.decode("utf-8")  # noqa: E731
    _VALUE_SER = lambda v: json.dumps(v).encode("utf-8")  # noqa: E731
    _VALUE_DE = lambda b: json.loads(b.decode("utf-8"))  # noqa: E731

N_RECORDS = 1000


def _producer(bootstrap):
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        key_serializer=_KEY_SER,
        value_serializer=_VALUE_SER,
        linger_ms=5,
    )


def _consumer(bootstrap, group_id):
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        key_deserializer=_KEY_DE,
        value_deserializer=_VALUE_DE,
    )


def _record(i):
    return f"key-{i % 37}", {"i": i, "x": i * 0.5, "tag": f"r{i}"}


def _produce(producer, topic, indices):
    """Send records and wait for every acknowledgement.

    Returns {partition: [(offset, key, value), ...]} in offset order.
    """
    futures = []
    for i in indices:
        key, value = _record(i)
        futures.append((key, value, producer.send(topic, key=key, value=value)))
    producer.flush(timeout=60)
    by_partition = defaultdict(list)
    for key, value, fut in futures:
        md = fut.get(timeout=60)
        assert md.topic == topic
        by_partition[md.partition].append((md.offset, key, value))
    for recs in by_partition.values():
        recs.sort()
    return dict(by_partition)


def _drain(consumer, expected_total, timeout_s=60.0):
    """Poll until `expected_total` records arrived, then a little more to catch extras."""
    got = defaultdict(list)
    n = 0
    deadline = time.monotonic() + timeout_s
    while n < expected_total and time.monotonic() < deadline:
        for tp, msgs in consumer.poll(timeout_ms=500, max_records=500).items():
            for m in msgs:
                got[tp.partition].append((m.offset, m.key, m.value))
                n += 1
    # Anything beyond what was produced would be a duplicate or a stray record.
    for tp, msgs in consumer.poll(timeout_ms=300).items():
        for m in msgs:
            got[tp.partition].append((m.offset, m.key, m.value))
    return dict(got)


def _merge(*parts):
    out = defaultdict(list)
    for part in parts:
        for p, recs in part.items():
            out[p].extend(recs)
    return {p: sorted(recs) for p, recs in out.items()}


def _assign_all(consumer, topic, partitions=2):
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    return tps


def test_roundtrip_1000_keyed_json_records(kafka_bootstrap, kafka_topic):
    producer = _producer(kafka_bootstrap)
    try:
        expected = _produce(producer, kafka_topic, range(N_RECORDS))
    finally:
        producer.close()

    assert sum(len(v) for v in expected.values()) == N_RECORDS
    assert set(expected) == {0, 1}, "37 distinct keys should land on both partitions"
    # Offsets per partition are dense, 0..n-1.
    for recs in expected.values():
        assert [off for off, _, _ in recs] == list(range(len(recs)))
    # A key always maps to one partition.
    key_to_part = {}
    for p, recs in expected.items():
        for _, key, _ in recs:
            assert key_to_part.setdefault(key, p) == p

    group = f"streamrnn-test-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka_bootstrap, group)
    try:
        tps = _assign_all(consumer, kafka_topic)
        end = consumer.end_offsets(tps)
        assert {tp.partition: off for tp, off in end.items()} == {p: len(recs) for p, recs in expected.items()}
        got = _drain(consumer, N_RECORDS)
        consumer.commit()  # manual commit of the positions reached
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
    finally:
        consumer.close()

    assert {p: len(r) for p, r in got.items()} == {p: len(r) for p, r in expected.items()}
    assert got == expected  # exact keys, values, offsets and order per partition
    assert committed == {p: len(recs) for p, recs in expected.items()}


def test_committed_offsets_resume_in_group(kafka_bootstrap, kafka_topic):
    """A new consumer in the same group (subscribe, group coordination) resumes after the commit."""
    producer = _producer(kafka_bootstrap)
    group = f"streamrnn-test-{uuid.uuid4().hex[:8]}"
    try:
        first = _produce(producer, kafka_topic, range(300))
        c1 = _consumer(kafka_bootstrap, group)
        try:
            _assign_all(c1, kafka_topic)
            got1 = _drain(c1, 300)
            c1.commit()
        finally:
            c1.close()
        assert got1 == first

        second = _produce(producer, kafka_topic, range(300, 400))
    finally:
        producer.close()

    c2 = _consumer(kafka_bootstrap, group)
    try:
        c2.subscribe([kafka_topic])
        got2 = _drain(c2, 100)
    finally:
        c2.close()
    assert got2 == second, "the group must resume exactly at the committed offsets"


def test_broker_restart_loses_nothing(kafka_broker, kafka_bootstrap, kafka_topic):
    if kafka_broker is None:
        pytest.skip("external broker (STREAMRNN_KAFKA_BOOTSTRAP): cannot restart it")
    half = N_RECORDS // 2
    group = f"streamrnn-test-{uuid.uuid4().hex[:8]}"

    producer = _producer(kafka_bootstrap)
    try:
        before = _produce(producer, kafka_topic, range(half))
        c1 = _consumer(kafka_bootstrap, group)
        try:
            _assign_all(c1, kafka_topic)
            got_before = _drain(c1, half)
            c1.commit()
        finally:
            c1.close()
        assert got_before == before

        t0 = time.monotonic()
        assert kafka_broker.restart() == kafka_bootstrap
        restart_s = time.monotonic() - t0
        print(f"broker restart took {restart_s:.1f}s")

        # The same producer object keeps working across the restart.
        after = _produce(producer, kafka_topic, range(half, N_RECORDS))
    finally:
        producer.close()

    # Committed group offsets survived the restart: the group resumes after `before`.
    c2 = _consumer(kafka_bootstrap, group)
    try:
        tps = _assign_all(c2, kafka_topic)
        committed = {tp.partition: c2.committed(tp) for tp in tps}
        got_after = _drain(c2, N_RECORDS - half)
    finally:
        c2.close()
    assert committed == {p: len(recs) for p, recs in before.items()}
    assert got_after == after

    # And a fresh reader sees every record exactly once, in order.
    c3 = _consumer(kafka_bootstrap, f"streamrnn-test-{uuid.uuid4().hex[:8]}")
    try:
        _assign_all(c3, kafka_topic)
        everything = _drain(c3, N_RECORDS)
    finally:
        c3.close()
    expected = _merge(before, after)
    assert sum(len(r) for r in everything.values()) == N_RECORDS
    assert everything == expected
    values = sorted(v["i"] for recs in everything.values() for _, _, v in recs)
    assert values == list(range(N_RECORDS))
