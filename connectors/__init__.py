"""Sources and sinks for the streamrnn daemon: files, recorded-stream replay, Kafka."""
from .base import ListSink, Record, Sink, Source, SourceError
from .file import CsvSink, CsvSource, JsonLinesSink, JsonLinesSource, LineSource
from .replay import ReplaySource

__all__ = ["Record", "Source", "Sink", "SourceError", "ListSink", "LineSource",
           "JsonLinesSource", "CsvSource", "JsonLinesSink", "CsvSink", "ReplaySource"]
