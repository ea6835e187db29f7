"""The Kafka source's timestamp merge, without a broker: records, end offsets and the clock are given."""

import logging
from collections import namedtuple

import pytest

from streamrnn.connectors.base import BrokerUnavailable, Record
from streamrnn.connectors.kafka.merge import TimestampMerge, stream_id

TP = namedtuple("TP", "topic partition")  # hashable, as kafka-python's TopicPartition
P0, P1, P2 = TP("t", 0), TP("t", 1), TP("t", 2)


class FakeOffsets:
    """End offsets and start positions as a test sets them; counts the broker requests."""

    def __init__(self, ends=None, start=None):
        self.high = dict(ends or {})  # what the client saw last
        self.broker_ends = dict(ends or {})  # what a request answers
        self.start = dict(start or {})
        self.requests = []
        self.seeks = []  # the merge sends the client back (a partition awaited with nothing fetched)
        self.down = False

    def highwater(self, tp):
        return self.high.get(tp)

    def end_offsets(self, tps):
        self.requests.append(list(tps))
        if self.down:
            raise BrokerUnavailable("Kafka broker at 'x' is unreachable")
        return {tp: self.broker_ends[tp] for tp in tps}

    def position(self, tp):
        return self.start.get(tp)

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def records(tp, offsets_and_timestamps):
    """Records of ``tp`` as the source makes them: timestamps in seconds, or None."""
    return [
        Record(value=f"{tp.partition}/{o}", position=(tp.topic, tp.partition, o), timestamp=ts)
        for o, ts in offsets_and_timestamps
    ]


def merge_of(offsets, max_wait_s=10.0, max_buffered=1000, next_offsets=None, clock=None):
    return TimestampMerge(
        offsets, {} if next_offsets is None else next_offsets, max_wait_s, max_buffered, clock=clock or Clock()
    )


def values(out):
    return [r.value for r in out]


def test_merges_by_timestamp_then_partition_then_offset():
    offsets = FakeOffsets(ends={P0: 4, P1: 3, P2: 2})
    m = merge_of(offsets)
    m.add(P0, records(P0, [(0, 1.0), (1, 3.0), (2, 3.0), (3, 7.0)]))
    m.add(P1, records(P1, [(0, None), (1, 3.0), (2, 5.0)]))  # no timestamp: before all others
    m.add(P2, records(P2, [(0, 2.0), (1, 3.0)]))
    out = m.take([P0, P1, P2], 100)
    assert values(out) == ["1/0", "0/0", "2/0", "0/1", "0/2", "1/1", "2/1", "1/2", "0/3"]
    assert m.next_offsets == {"t:0": 4, "t:1": 3, "t:2": 2}
    assert not any(m.buffers.values())
    assert offsets.requests == []  # all known from the client: no request


def test_max_records_splits_the_same_order_and_advances_positions():
    offsets = FakeOffsets(ends={P0: 5, P1: 5})
    whole, parts = merge_of(offsets), merge_of(offsets)
    for m in (whole, parts):
        m.add(P0, records(P0, [(o, 2.0 * o) for o in range(5)]))
        m.add(P1, records(P1, [(o, 2.0 * o + 1) for o in range(5)]))
    expected = values(whole.take([P0, P1], 100))
    assert expected == [f"{o % 2}/{o // 2}" for o in range(10)]
    got = []
    for size, next_offsets in ((3, {"t:0": 2, "t:1": 1}), (4, {"t:0": 4, "t:1": 3}), (100, {"t:0": 5, "t:1": 5})):
        got += values(parts.take([P0, P1], size))
        assert parts.next_offsets == next_offsets
    assert got == expected


def test_a_partition_with_records_on_the_broker_is_awaited_up_to_max_wait(caplog):
    clock = Clock()
    offsets = FakeOffsets(ends={P0: 2, P1: 3})
    m = merge_of(offsets, max_wait_s=10.0, next_offsets={"t:1": 0}, clock=clock)
    m.add(P0, records(P0, [(0, 5.0), (1, 6.0)]))
    assert m.take([P0, P1], 100) == []  # P1 may hold earlier records: wait
    assert m.blocked_since == {P1: 1000.0}
    clock.now = 1010.0
    assert m.take([P0, P1], 100) == []  # still within max_wait_s (10 s)
    assert m.awaited(P1)
    clock.now = 1010.5
    with caplog.at_level(logging.WARNING, logger="streamrnn.kafka"):
        assert values(m.take([P0, P1], 100)) == ["0/0", "0/1"]  # past it: merged without P1
        assert not m.awaited(P1)  # warned once, then not waited for
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "partition t:1 has records up to offset 3 but none arrived within 10.0 s of "
        "waiting at 0: merging without it (order may differ from a replay)"
    ]
    # once P1's records arrive, its wait is over; caught up, it is not waited for again
    m.add(P1, records(P1, [(0, 1.0), (1, 2.0), (2, 3.0)]))
    assert P1 not in m.blocked_since
    assert values(m.take([P0, P1], 100)) == ["1/0", "1/1", "1/2"]
    assert not m.awaited(P1) and m.blocked_since == {}


def test_a_caught_up_partition_is_not_awaited():
    offsets = FakeOffsets(ends={P0: 2, P1: 7})
    m = merge_of(offsets, next_offsets={"t:1": 7})
    m.add(P0, records(P0, [(0, 5.0), (1, 6.0)]))
    assert values(m.take([P0, P1], 100)) == ["0/0", "0/1"]
    assert m.blocked_since == {}


def test_the_run_of_a_partition_stops_where_it_empties_and_is_awaited():
    """P0 holds timestamps 1, 2 and has more on the broker: P1's record at 5 must wait, since
    P0's next record could come before it."""
    offsets = FakeOffsets(ends={P0: 3, P1: 1})
    m = merge_of(offsets)
    m.add(P0, records(P0, [(0, 1.0), (1, 2.0)]))
    m.add(P1, records(P1, [(0, 5.0)]))
    assert values(m.take([P0, P1], 100)) == ["0/0", "0/1"]
    assert m.take([P0, P1], 100) == []
    m.add(P0, records(P0, [(2, 4.0)]))
    assert values(m.take([P0, P1], 100)) == ["0/2", "1/0"]
    assert m.next_offsets == {"t:0": 3, "t:1": 1}


def test_start_position_comes_from_the_client_until_something_is_handed_out():
    offsets = FakeOffsets(ends={P0: 1, P1: 4}, start={P1: 4})  # P1: its committed offset is its end
    m = merge_of(offsets)
    m.add(P0, records(P0, [(0, 5.0)]))
    assert values(m.take([P0, P1], 100)) == ["0/0"]
    offsets.start = {}  # not known yet: wait as for records
    m2 = merge_of(offsets)
    m2.add(P0, records(P0, [(0, 5.0)]))
    assert m2.take([P0, P1], 100) == [] and P1 in m2.blocked_since


def test_unknown_ends_are_requested_and_an_outage_restarts_every_wait():
    clock = Clock()
    offsets = FakeOffsets(ends={P0: 1, P1: 2, P2: 2})
    offsets.high = {P0: 1}  # the client has seen no end of P1, P2 yet
    m = merge_of(offsets, max_wait_s=10.0, next_offsets={"t:1": 0, "t:2": 0}, clock=clock)
    m.add(P0, records(P0, [(0, 5.0)]))
    assert m.take([P0, P1, P2], 100) == []
    assert offsets.requests == [[P1]]  # any() stops at the first awaited partition
    assert m.ends == {P1: 2}
    clock.now = 1011.0
    assert not m.awaited(P1)  # waited out: warned
    assert m.awaited(P2)
    assert m.blocked_since == {P1: -1.0, P2: 1011.0}
    assert offsets.requests == [[P1], [P2]]
    offsets.down = True
    with pytest.raises(BrokerUnavailable):
        m.refresh_ends([P0, P1, P2])
    assert m.blocked_since == {P1: -1.0}  # the warned one stays warned; P2 waits afresh
    offsets.down = False
    m.refresh_ends([P0, P1, P2])
    assert m.ends == {P0: 1, P1: 2, P2: 2}


def test_time_outside_poll_is_not_time_spent_waiting():
    clock = Clock(0.5)
    offsets = FakeOffsets(ends={P0: 1, P1: 1})
    m = merge_of(offsets, max_wait_s=10.0, next_offsets={"t:1": 0}, clock=clock)
    m.add(P0, records(P0, [(0, 5.0)]))
    m.begin_poll(0.0)
    assert m.take([P0, P1], 100) == []  # the wait for P1 starts at 0.5
    m.end_poll(1.0)
    clock.now = 100.0  # the caller was busy for 98 s
    m.begin_poll(99.0)
    assert m.blocked_since == {P1: 98.5}
    assert m.take([P0, P1], 100) == []  # 1.5 s of waiting, not 99.5
    m.end_poll(100.0)
    clock.now = 109.0
    m.begin_poll(109.0)  # 9 s away: the wait moves to 107.5 ...
    clock.now = 120.0
    assert m.blocked_since == {P1: 107.5}
    assert values(m.take([P0, P1], 100)) == ["0/0"]  # ... so 12.5 s at 120: past max_wait_s
    m.end_poll(120.0)
    m.begin_poll(500.0)
    assert m.blocked_since == {P1: -1.0}  # a warned partition's mark is not moved


def test_time_the_member_spends_rejoining_is_not_time_spent_waiting():
    clock = Clock(0.0)
    offsets = FakeOffsets(ends={P0: 1, P1: 1})
    m = merge_of(offsets, max_wait_s=10.0, next_offsets={"t:1": 0}, clock=clock)
    m.add(P0, records(P0, [(0, 5.0)]))
    assert m.take([P0, P1], 100) == []  # the wait for P1 starts at 0
    clock.now = 25.0  # 25 s inside one poll, 22 of them rejoining the group
    m.excuse(22.0)
    assert m.blocked_since == {P1: 22.0}
    assert m.take([P0, P1], 100) == []  # 3 s of waiting: still awaited, and not sought yet
    assert offsets.seeks == []
    clock.now = 26.0
    assert m.take([P0, P1], 100) == [] and offsets.seeks == [(P1, 0)]  # 4 s: sent back once (past 10/3 s)
    clock.now = 31.0
    assert m.take([P0, P1], 100) == []  # 9 s
    clock.now = 32.5
    assert values(m.take([P0, P1], 100)) == ["0/0"]  # 10.5 s: past max_wait_s
    m.excuse(5.0)
    assert m.blocked_since == {P1: -1.0}  # a warned partition's mark is not moved


def test_add_bounds_each_buffer_and_says_where_to_fetch_again():
    offsets = FakeOffsets(ends={P0: 10})
    m = merge_of(offsets, max_buffered=4)
    assert m.add(P0, records(P0, [(3, 1.0), (4, 1.0)])) is None
    assert m.next_offsets == {"t:0": 3}  # known from the first fetch on
    assert m.add(P0, records(P0, [(5, 2.0), (6, 2.0), (7, 3.0)])) == 7
    assert [r.position[2] for r in m.buffers[P0]] == [3, 4, 5, 6]
    assert m.next_offsets == {"t:0": 3}  # a later fetch does not move it
    m.blocked_since[P0] = 5.0
    assert m.add(P0, records(P0, [(7, 3.0)])) == 7
    assert P0 not in m.blocked_since  # records arrived: no longer waited for


def test_forget_drops_what_is_held_for_a_partition():
    offsets = FakeOffsets(ends={P0: 2, P1: 1})
    m = merge_of(offsets, next_offsets={"t:0": 0, "t:1": 0})
    m.add(P0, records(P0, [(0, 1.0), (1, 2.0)]))
    m.ends[P0] = 2
    m.blocked_since[P0] = 3.0
    m.forget(P0)
    m.forget(P2)  # not held: nothing to do
    assert P0 not in m.buffers and P0 not in m.ends and P0 not in m.blocked_since
    assert m.next_offsets == {"t:0": 0, "t:1": 0}  # positions belong to the source
    m.add(P1, records(P1, [(0, 9.0)]))
    assert m.take([P0, P1], 100) == []  # P0 has records on the broker again
    assert m.take([P1], 100) == [Record("1/0", position=("t", 1, 0), timestamp=9.0)]


def test_a_rebalance_during_a_take_ends_it():
    """The client's requests run the group's callbacks: when a partition is revoked and assigned
    again meanwhile (forgotten, then fetched from elsewhere), its old head is stale."""
    offsets = FakeOffsets(ends={P0: 1, P1: 9})
    offsets.high = {P1: 9}  # P0's end is asked for when P0 empties
    m = merge_of(offsets)

    def rebalance_then_answer(tps):
        m.forget(P1)
        m.add(P1, records(P1, [(3, 0.5), (4, 0.6)]))
        return {P0: 1}

    offsets.end_offsets = rebalance_then_answer
    m.add(P0, records(P0, [(0, 1.0)]))
    m.add(P1, records(P1, [(0, 5.0), (1, 6.0)]))
    assert values(m.take([P0, P1], 100)) == ["0/0"]
    assert m.next_offsets == {"t:0": 1, "t:1": 0}
    assert values(m.take([P0, P1], 100)) == ["1/3", "1/4"]


def test_stream_id():
    assert stream_id("events", 3) == "events:3"


def test_offsets_a_read_committed_client_skips_are_not_awaited():
    """Transaction markers (and aborted records) count in the end offset but are never returned: a
    client past them is sent back once; past them again from there, the merge moves on."""
    offsets = FakeOffsets(ends={P0: 10}, start={P0: 10})  # the client read up to the commit marker at 9
    m = merge_of(offsets, next_offsets={"t:0": 9})
    assert m.awaited(P0)  # maybe a lost seek: read again from 9
    assert offsets.seeks == [(P0, 9)]
    assert not m.awaited(P0)  # past 9 again, from 9, with nothing for the merge: unreadable
    assert m.next_offsets == {"t:0": 10} and offsets.seeks == [(P0, 9)]


def test_a_client_fetching_nothing_of_an_awaited_partition_is_sent_back_once():
    clock = Clock()
    offsets = FakeOffsets(ends={P0: 5}, start={P0: 2})
    m = merge_of(offsets, max_wait_s=9.0, next_offsets={"t:0": 2}, clock=clock)
    assert m.awaited(P0) and offsets.seeks == []
    clock.now += 3.5  # a third of max_wait_s: reset the client's fetch state of the partition
    assert m.awaited(P0) and offsets.seeks == [(P0, 2)]
    clock.now += 3.0
    assert m.awaited(P0) and offsets.seeks == [(P0, 2)]  # once per wait
    m.add(P0, records(P0, [(2, 1.0)]))
    assert m.sought == {} and m.blocked_since == {}
