"""The connector protocol: sources yield positioned records, sinks accept encoded records.

A *position* names where a record came from and is JSON-able:
``("topic", partition, offset)`` for Kafka, ``(path, line)`` for files (line numbers from 0, the
record's first line; ``path`` is the file's canonical path, ``os.path.realpath``).
``Source.positions()`` maps a stream id (``"topic:partition"`` or the file's canonical path) to
the *next unread* offset/line; ``Source.seek(positions)`` restores exactly that mapping. File
sources also say which file they read (``identity()``) and resume only in that file
(``resume(positions, identity)``): see :mod:`streamrnn.connectors.file`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

Position = tuple[Any, ...]  # ("topic", partition, offset) or (path, line); () when unknown
Positions = dict[str, int]  # stream id -> next unread offset or line

# Allocations of container objects between two young-generation collections while records move a
# batch at a time (Python's default is 700). A batch makes several short-lived containers per record
# (records, decoded dicts, outputs), nearly all freed by their reference counts. At the default,
# collecting them and promoting the part of the batch still in use took a fifth of the daemon's CPU
# (perf, 2026-12-03, file -> file: 91 000 records/s at 700, 122 000 at this value).
BATCH_GC_THRESHOLD = 50_000


@contextmanager
def batch_gc() -> Iterator[None]:
    """Run the block with the young-generation threshold at least :data:`BATCH_GC_THRESHOLD`, and put
    the previous thresholds back after it. Cycles are still collected, only less often."""
    before = gc.get_threshold()
    gc.set_threshold(max(BATCH_GC_THRESHOLD, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Record:
    """One record as read: ``value`` (bytes or str; replay sources may give a decoded dict),
    ``key``, ``position`` and ``timestamp`` (seconds or None).

    A plain slotted class rather than a dataclass: one is built per record on the hot path,
    and a frozen dataclass's ``__init__`` costs several times more.
    """

    __slots__ = ("value", "key", "position", "timestamp")

    value: Any
    key: Any
    position: Position
    timestamp: float | None

    def __init__(self, value: Any, key: Any = None, position: Position = (), timestamp: float | None = None):
        self.value = value
        self.key = key
        self.position = position
        self.timestamp = timestamp

    def _fields(self) -> tuple:
        return self.value, self.key, self.position, self.timestamp

    def __eq__(self, other: object) -> bool:
        return type(other) is Record and self._fields() == other._fields()

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"Record(value={self.value!r}, key={self.key!r}, position={self.position!r}, timestamp={self.timestamp!r})"
        )


class Unreadable:
    """The value of a record a source could not read whole or parse (a line longer than
    ``max_record_bytes``, malformed CSV, a CSV row of the wrong width, invalid UTF-8): ``reason``
    says why (the dead letter's reason), ``raw`` is at most a bounded prefix of its bytes."""

    __slots__ = ("reason", "raw")

    def __init__(self, reason: str, raw: bytes = b""):
        self.reason = reason
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return type(other) is Unreadable and (self.reason, self.raw) == (other.reason, other.raw)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Unreadable({self.reason!r}, {self.raw[:80]!r})"


class SourceError(RuntimeError):
    """A source that cannot be opened or read (missing file, unreachable broker, missing topic)."""


class SinkError(RuntimeError):
    """A sink that cannot be written (a full disk, an I/O error): what was not made durable lies past the
    last checkpoint, which the daemon then does not advance, so a restart writes it again."""


class BrokerUnavailable(SourceError):
    """The broker cannot be reached now (down, restarting, network); trying later may succeed.

    Raised by a source's ``poll``, a sink's ``flush`` or a connector's constructor; the daemon
    retries these under its retry policy. Nothing was lost: unacknowledged outputs stay queued.
    """


@runtime_checkable
class Source(Protocol):
    """Hands out positioned records in order; resumes from :meth:`positions` after :meth:`seek`."""

    def poll(self, max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        """Up to ``max_records`` records, waiting up to ``timeout`` s for the first ones."""

    def seek(self, positions: Positions) -> None:
        """Resume each stream named in ``positions`` there (other streams' positions are ignored)."""

    def positions(self) -> Positions:
        """The next unread offset or line per stream id."""

    def close(self) -> None:
        """Release the file or the consumer (nothing is committed here: checkpoints commit)."""


@runtime_checkable
class Sink(Protocol):
    """Accepts output records (dicts); :meth:`flush` returns once they are durable."""

    def write(self, records: list[Mapping[str, Any]]) -> None:
        """Queue ``records`` (dicts: position, key, prediction, target, loss; or dead letters) in order."""

    def flush(self) -> None:
        """Return once every record written so far is durable (on disk, or acknowledged by the broker)."""

    def close(self) -> None:
        """Flush what is pending and release the file or the producer."""


class NullSink(Sink):
    """Discards what it is given (a daemon configured without a sink): holds nothing, so a run of
    any length uses no memory for it."""

    def write(self, records: list[Mapping[str, Any]]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ListSink(Sink):
    """An in-memory sink (tests, embedding)."""

    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    def write(self, records: list[Mapping[str, Any]]) -> None:
        self.records.extend(records)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
