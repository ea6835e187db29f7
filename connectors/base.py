"""The connector protocol: sources yield positioned records, sinks accept encoded records.

A *position* names where a record came from and is JSON-able:
``("topic", partition, offset)`` for Kafka, ``(path, line)`` for files (line numbers from 0).
``Source.positions()`` maps a stream id (``"topic:partition"`` or the file path) to the
*next unread* offset/line; ``Source.seek(positions)`` restores exactly that mapping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Record:
    value: Any                  # bytes or str as read; replay sources may give a decoded dict
    key: Any = None
    position: tuple = ()
    timestamp: float | None = None
    meta: dict = field(default_factory=dict)


class SourceError(RuntimeError):
    """A source that cannot be opened or read (missing file, unreachable broker, missing topic)."""


@runtime_checkable
class Source(Protocol):
    def poll(self, max_records: int = 1000, timeout: float = 0.0) -> list[Record]: ...
    def seek(self, positions: dict) -> None: ...
    def positions(self) -> dict: ...
    def close(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    def write(self, records: list) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class ListSink:
    """An in-memory sink (tests, embedding)."""

    def __init__(self):
        self.records = []

    def write(self, records):
        self.records.extend(records)

    def flush(self):
        pass

    def close(self):
        pass
