"""Sources and sinks for the streamrnn daemon: files, recorded-stream replay, Kafka."""

from .base import BrokerUnavailable, ListSink, Record, Sink, SinkError, Source, SourceError, Unreadable
from .file import CsvSink, CsvSource, JsonLinesSink, JsonLinesSource, LineSource
from .replay import ReplaySource

__all__ = [
    "Record",
    "Source",
    "Sink",
    "SourceError",
    "SinkError",
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
