"""Sources and sinks for the streamrnn daemon: files, recorded-stream replay, Kafka."""

from .base import BrokerUnavailable, ListSink, Record, Sink, Source, SourceError, Unreadable
from .file import CsvSink, CsvSource, JsonLinesSink, JsonLinesSource, LineSource
from .replay import ReplaySource

__all__ = [
    "Record",
    "Source",
    "Sink",
    "SourceError",
    "BrokerUnavailable",
    "Unreadable",
    "ListSink",
    "LineSource",
    "JsonLinesSource",
    "CsvSource",
    "JsonLinesSink",
    "CsvSink",
    "ReplaySource",
]
