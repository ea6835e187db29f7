"""The timestamp merge of :class:`~streamrnn.connectors.kafka.KafkaSource`, without a broker.

Records fetched from the assigned partitions wait in per-partition buffers and are handed out
in (timestamp, partition, offset) order, always taking the smallest head. A partition with no
record buffered but some on the broker (its end offset beyond the next offset to hand out) is
*awaited*: the merge does not move past it, for at most ``max_wait_s`` of time spent inside
``poll`` (time the caller spends elsewhere, or the member spends rejoining its group, is not
waiting). The order then depends only on the
topic's contents and the start positions, so a restart from a checkpoint replays the order of an
uninterrupted run.

What the merge needs to know of the broker comes through a :class:`PartitionOffsets` (the
source adapts its consumer to it; tests give a fake), and time through ``clock``.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol

from ..base import BrokerUnavailable, Record

log = logging.getLogger("streamrnn.kafka")

ORDERS = ("timestamp", "arrival")

_NO_TIMESTAMP = -1.0  # a record without a timestamp sorts before every record with one
_WARNED = -1.0  # blocked_since of a partition already warned about: merged without waiting


def stream_id(topic: str, partition: int) -> str:
    """A partition's name in positions: ``"topic:partition"``."""
    return f"{topic}:{partition}"


class Partition(Protocol):
    """A partition key (hashable), as kafka-python's ``TopicPartition``."""

    topic: str
    partition: int


class PartitionOffsets(Protocol):
    """What the merge asks of the client about a partition."""

    def highwater(self, tp: Partition) -> int | None:
        """The end offset the client saw last (no request), None if it saw none."""

    def end_offsets(self, tps: list[Partition]) -> dict[Partition, int]:
        """The end offsets on the broker; raises BrokerUnavailable if it does not answer."""

    def position(self, tp: Partition) -> int | None:
        """Where the client reads ``tp`` next (committed or earliest at first), None if not known yet."""

    def seek(self, tp: Partition, offset: int) -> None:
        """Make the client read ``tp`` from ``offset`` next."""


class TimestampMerge:
    """Per-partition buffers merged by (timestamp, partition, offset), waiting for awaited partitions.

    Parameters
    ----------
    offsets : PartitionOffsets
        End offsets and start positions of the partitions.
    next_offsets : dict
        ``{"topic:partition": next offset to hand out}``, shared with the source: the merge
        advances it as it hands out records (and sets it from a partition's first fetch), the
        source sets it on seek and assignment.
    max_wait_s : float
        The longest an awaited partition holds the merge back (time inside polls); past that
        the merge goes on without it and logs a warning (the order may then differ from a replay).
    max_buffered : int
        Most records held per partition; :meth:`add` gives back the excess.
    clock : callable
        Monotonic seconds.
    """

    def __init__(
        self,
        offsets: PartitionOffsets,
        next_offsets: dict[str, int],
        max_wait_s: float,
        max_buffered: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.offsets = offsets
        self.next_offsets = next_offsets
        self.max_wait_s = max_wait_s
        self.max_buffered = max_buffered
        self.clock = clock
        self.buffers: dict[Partition, deque[Record]] = {}  # fetched, not handed out
        self.ends: dict[Partition, int] = {}  # end offset last seen on the broker
        self.blocked_since: dict[Partition, float] = {}  # when the merge began waiting for it
        self.left_poll: float | None = None  # when the last poll ended
        self.sought: dict[Partition, int] = {}  # offset the client was sent back to (see awaited)

    def forget(self, tp: Partition) -> None:
        """Drop what is held for ``tp`` (revoked, or about to be read again from a seek)."""
        self.buffers.pop(tp, None)
        self.ends.pop(tp, None)
        self.blocked_since.pop(tp, None)
        self.sought.pop(tp, None)

    # -- the waits count time inside poll only
    def begin_poll(self, now: float) -> None:
        """A poll starts: time spent outside polls since the last one (the caller busy, or
        retrying its sink through an outage) is not time spent waiting for a partition, so move
        each wait's start forward by it."""
        self.excuse(now - self.left_poll if self.left_poll is not None else 0.0)

    def excuse(self, seconds: float) -> None:
        """``seconds`` just spent were no partition's fault (away from polls, or the member
        rejoining its group: its client fetches nothing then): move each wait's start forward by
        them, so that they do not count towards ``max_wait_s``."""
        if seconds > 0:
            for tp, since in self.blocked_since.items():
                if since != _WARNED:
                    self.blocked_since[tp] = since + seconds

    def end_poll(self, now: float) -> None:
        """Record that the consumer's poll returned at ``now`` (time.monotonic)."""
        self.left_poll = now

    # -- records in, records out
    def add(self, tp: Partition, records: list[Record]) -> int | None:
        """Buffer records fetched from ``tp`` (not empty, in offset order). Returns the offset of
        the first record given back to keep the buffer within ``max_buffered`` (the client must
        seek there to fetch them again later), or None."""
        buf = self.buffers.get(tp)
        if buf is None:
            buf = self.buffers[tp] = deque()
        # the next offset to hand out is known from the first fetch on: a rebalance that drops
        # the buffer then seeks back to it instead of losing what was fetched
        self.next_offsets.setdefault(stream_id(tp.topic, tp.partition), records[0].position[2])
        buf.extend(records)
        self.blocked_since.pop(tp, None)
        self.sought.pop(tp, None)
        if len(buf) <= self.max_buffered:
            return None
        while len(buf) > self.max_buffered:
            first_given_back = buf.pop().position[2]
        return first_given_back

    def take(self, assigned: Collection[Partition], max_records: int) -> list[Record]:
        """Up to ``max_records`` records in (timestamp, partition, offset) order, stopping where
        an awaited partition of ``assigned`` could hold an earlier record."""
        out: list[Record] = []
        buffers = self.buffers
        if any(self.awaited(tp) for tp in assigned if not buffers.get(tp)):
            return out
        heads = [_head(buf, tp) for tp, buf in ((tp, buffers.get(tp)) for tp in assigned) if buf]
        heapq.heapify(heads)
        append, room = out.append, max_records
        while heads and room > 0:
            _, partition, offset, tp = heapq.heappop(heads)
            buf = buffers.get(tp)
            if not buf or buf[0].position[2] != offset:  # forgotten meanwhile (a rebalance)
                break
            # take this partition's run: every record that sorts before the next partition's head
            bound_ts, bound_p = (heads[0][0], heads[0][1]) if heads else (float("inf"), 0)
            last = None
            while buf and room > 0:
                r = buf[0]
                ts = r.timestamp if r.timestamp is not None else _NO_TIMESTAMP
                if ts > bound_ts or (ts == bound_ts and partition > bound_p):
                    break
                last = buf.popleft()
                append(last)
                room -= 1
            if last is not None:
                self.next_offsets[stream_id(tp.topic, partition)] = last.position[2] + 1
            if buf:
                heapq.heappush(heads, _head(buf, tp))
            elif self.awaited(tp):
                break
        return out

    def awaited(self, tp: Partition) -> bool:
        """Whether the merge must wait for ``tp`` (no record buffered, some on the broker)."""
        end = max(self.ends.get(tp, -1), self.offsets.highwater(tp) or -1)
        if end < 0:
            self.refresh_ends([tp])
            end = self.ends[tp]
        stream = stream_id(tp.topic, tp.partition)
        pos = self.next_offsets.get(stream)
        if pos is None:  # nothing handed out yet: where the client starts
            pos = self.offsets.position(tp)
            if pos is None:
                pos = -1  # unknown yet: wait for it like a partition with records
        elif pos < end:
            pos = self._past_unreadable(tp, stream, pos)
        if pos >= end:
            self.blocked_since.pop(tp, None)
            return False
        now = self.clock()
        since = self.blocked_since.setdefault(tp, now)
        if now - since > self.max_wait_s / 3 and pos >= 0 and tp not in self.sought:
            # the client holds the partition but fetches nothing of it: seeking resets the client's
            # fetch state of the partition (its position, validation and fetch-session entry)
            log.info(
                "partition %s: nothing fetched for %.1f s at %d although the broker has records up to %d: "
                "reading again from %d",
                stream,
                now - since,
                pos,
                end,
                pos,
            )
            self.offsets.seek(tp, pos)
            self.sought[tp] = pos
        if now - since <= self.max_wait_s:
            return True
        if since != _WARNED:
            log.warning(
                "partition %s has records up to offset %d but none arrived within %.1f s of "
                "waiting at %d: merging without it (order may differ from a replay)",
                stream_id(tp.topic, tp.partition),
                end,
                self.max_wait_s,
                pos,
            )
            self.blocked_since[tp] = _WARNED
        return False

    def _past_unreadable(self, tp: Partition, stream: str, pos: int) -> int:
        """The next offset to hand out of ``tp``, nothing buffered, below its end offset: where the client
        reads next is normally that offset too. If the client is past it without a record for the merge,
        either the offsets between are no records (transaction markers and aborted transactions, which a
        read_committed consumer never returns: the end offset counts them) or the client's position was
        lost (a seek undone by a rebalance). The client is sent back to ``pos`` once; if it comes past
        ``pos`` again from there without a record, the offsets between are unreadable and ``pos`` moves
        on to the client's position (else the merge would wait for them until ``max_wait_s``)."""
        client = self.offsets.position(tp)
        if client is None or client <= pos:
            return pos
        if self.sought.get(tp) == pos:
            self.next_offsets[stream] = client
            self.sought.pop(tp, None)
            return client
        log.info(
            "partition %s: the client reads at %d, past the next offset to hand out %d with nothing fetched: "
            "reading again from %d",
            stream,
            client,
            pos,
            pos,
        )
        self.offsets.seek(tp, pos)
        self.sought[tp] = pos
        return pos

    def refresh_ends(self, tps: list[Partition]) -> None:
        """Ask for the end offsets of ``tps``; BrokerUnavailable if the broker does not answer."""
        try:
            ends = self.offsets.end_offsets(tps)
        except BrokerUnavailable:
            # an outage is no partition's fault: waiting for each starts afresh once it is over
            self.blocked_since = {tp: since for tp, since in self.blocked_since.items() if since == _WARNED}
            raise
        self.ends.update(ends)


def _head(buf: deque[Record], tp: Partition) -> tuple[float, int, int, Partition]:
    r = buf[0]
    return (r.timestamp if r.timestamp is not None else _NO_TIMESTAMP, tp.partition, r.position[2], tp)
