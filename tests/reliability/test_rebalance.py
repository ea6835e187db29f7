"""The timestamp merge across a consumer-group rebalance: a member that loses partitions (with
records fetched but not yet handed out) and gets them back hands out every offset of every
partition, without gaps, in (timestamp, partition, offset) order between rebalances."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from streamrnn.connectors.kafka import KafkaSource
from tests.kafka_broker import create_topic, delete_topic
from tests.reliability.common import keyed_stream, produce

pytestmark = pytest.mark.kafka


def test_member_keeps_every_record_across_rebalances(kafka_bootstrap, caplog):
    caplog.set_level(logging.WARNING, logger="streamrnn.kafka")
    topic = f"rebalance-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    try:
        n = 6000
        where = produce(kafka_bootstrap, topic, keyed_stream(n, seed=3))
        index = {pos: i for i, pos in where.items()}
        group = f"g-{uuid.uuid4().hex[:8]}"
        a = KafkaSource(kafka_bootstrap, topic, group=group, max_poll_records=500)
        got = []

        def poll_a():
            got.extend(index[r.position[1:]] for r in a.poll(100, 0.05))

        deadline = time.monotonic() + 60
        while len(got) < 1000 and time.monotonic() < deadline:
            poll_a()
        assert len(a.consumer.assignment()) == 2
        # a second member joins (A gives up a partition, buffered records included), then leaves.
        # B is polled by a thread of its own, as a member in another process is: one thread
        # polling both would leave one member's join response unread while it polls the other,
        # and kafka-python 3.0.12 drops a join that completes between two polls (see
        # KafkaSource._wait), so the group could rejoin again and again.
        b = KafkaSource(kafka_bootstrap, topic, group=group, max_poll_records=500)
        b_polls, b_stop = [0], threading.Event()

        def poll_b():
            while not b_stop.is_set():
                b.poll(100, 0.05)
                b_polls[0] += 1

        b_thread = threading.Thread(target=poll_b, daemon=True)
        b_thread.start()
        try:
            deadline = time.monotonic() + 60
            while (len(a.consumer.assignment()) != 1 or not b.consumer.assignment()) and time.monotonic() < deadline:
                poll_a()
            assert len(a.consumer.assignment()) == 1, "the group did not rebalance"
            polled, deadline = b_polls[0], time.monotonic() + 60
            while b_polls[0] < polled + 5 and time.monotonic() < deadline:
                poll_a()
        finally:
            b_stop.set()
            b_thread.join(30)
        b.close()
        deadline = time.monotonic() + 60
        while len(a.consumer.assignment()) != 2 and time.monotonic() < deadline:
            poll_a()
        ends = {0: 0, 1: 0}
        for p, off in where.values():
            ends[p] = max(ends[p], off + 1)
        deadline = time.monotonic() + 60
        while a.positions() != {f"{topic}:{p}": e for p, e in ends.items()} and time.monotonic() < deadline:
            poll_a()
        a.close()
        # every offset of every partition was handed out by A (B's share is handed out again by A
        # after it regains the partition from the group's committed offsets or its own position)
        for p in (0, 1):
            offsets = sorted({where[i][1] for i in got if where[i][0] == p})
            assert offsets == list(range(ends[p])), f"partition {p}: gaps"
        # between rebalances the sequence is the merged order (indices increase); a partition
        # coming back restarts at A's own position, so count the descents: one per hand-back at most
        descents = sum(1 for x, y in zip(got, got[1:]) if y < x)
        assert descents <= 3, descents
        # the time the members spent rejoining never counted as waiting for a partition
        assert not [r for r in caplog.records if "none arrived" in r.getMessage()]
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_skewed_partitions_merge_in_timestamp_order_with_bounded_buffers(kafka_bootstrap):
    """Partition 0 holds the later half of the stream, partition 1 the earlier half: the merge
    must hand out all of partition 1 first while partition 0's buffer stays bounded."""
    from kafka import KafkaProducer

    topic = f"skew-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    try:
        n = 8000
        t0 = int(time.time() * 1000) - 3_600_000
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        for i in range(n):  # interleaved sends, so both partitions fill at once
            part = 1 if i % 2 == 0 else 0
            ts = t0 + (i // 2 if part == 1 else n // 2 + i // 2)
            p.send(topic, value=str(ts).encode(), partition=part, timestamp_ms=ts)
        p.flush()
        p.close()
        src = KafkaSource(kafka_bootstrap, topic, group=None, max_poll_records=200, max_buffered=400)
        seen, peak = [], 0
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            seen.extend(int(r.value) for r in src.poll(150, 0.2))
            peak = max(peak, max((len(b) for b in src._buffers.values()), default=0))
        src.close()
        assert seen == sorted(seen) and len(seen) == n
        assert peak <= 400 + 200  # bounded: max_buffered (+ one fetch)
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_read_committed_merge_does_not_wait_for_transaction_markers(kafka_bootstrap, caplog):
    """A topic written in transactions (an exactly-once stage upstream): each commit marker takes an
    offset that a read_committed consumer never returns. The merge must not await those offsets (it
    once waited max_wait at every marker, then merged without the partition), and its positions end
    past them, at the end offsets."""
    import logging

    from kafka import KafkaProducer

    topic = f"txin-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    try:
        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{topic}", acks="all")
        p.init_transactions()
        t0, n = int(time.time() * 1000) - 100_000, 0
        for _ in range(10):  # 10 transactions, each with records in both partitions
            p.begin_transaction()
            for _ in range(100):
                p.send(topic, value=str(n).encode(), partition=n % 2, timestamp_ms=t0 + n)
                n += 1
            p.commit_transaction()
        p.close()
        src = KafkaSource(kafka_bootstrap, topic, group=None, isolation_level="read_committed", max_wait_ms=5000)
        got, start = [], time.monotonic()
        with caplog.at_level(logging.WARNING, logger="streamrnn.kafka"):
            while len(got) < n and time.monotonic() - start < 30:
                got += [int(r.value) for r in src.poll(1000, 0.2)]
            elapsed = time.monotonic() - start
            deadline = time.monotonic() + 10
            while src.positions() != {f"{topic}:0": 510, f"{topic}:1": 510} and time.monotonic() < deadline:
                src.poll(1000, 0.1)
        positions = src.positions()
        src.close()
        assert got == list(range(n))  # every record, in timestamp order
        assert elapsed < 5.0, elapsed  # never held back max_wait by a marker
        assert not [r for r in caplog.records if "none arrived" in r.getMessage()]
        assert positions == {f"{topic}:0": 510, f"{topic}:1": 510}  # 500 records and 10 markers each
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_a_member_polled_with_tiny_waits_still_joins_its_group(kafka_bootstrap):
    """kafka-python 3.0.12 drops a group join that completes between two polls and starts another:
    polled with waits shorter than the join's round trip (as on a loaded machine) a consumer never
    joins, and holds no partition for ever (issue #18: 'rejoined the group and then never fetched
    again'). KafkaSource polls long enough while its membership is not stable. (A bare consumer
    polled with 1 ms waits here usually never joins, but not always: the join's round trip varies,
    so the defect itself is not asserted.)"""
    topic = f"tiny-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    try:
        where = produce(kafka_bootstrap, topic, keyed_stream(300, seed=4))
        src = KafkaSource(kafka_bootstrap, topic, group=f"g-{uuid.uuid4().hex[:8]}", order="arrival")
        got, deadline = [], time.monotonic() + 30
        while len(got) < len(where) and time.monotonic() < deadline:
            got += src.poll(500, 0.0)
        src.close()
        assert sorted(r.position[1:] for r in got) == sorted(where.values())
    finally:
        delete_topic(kafka_bootstrap, topic)
