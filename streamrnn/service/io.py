"""The service's connectors: a configured [source] or sink section -> the connector that reads or
writes it. Kafka connectors are imported only when configured (they need ``streamrnn[kafka]``).

>>> make_sink({"type": "none"}).__class__.__name__
'NullSink'
"""

from __future__ import annotations

from streamrnn.extras import require

from .config import SOURCE


def _kafka():
    """The Kafka connectors, or MissingExtra naming ``streamrnn[kafka]``."""
    require("kafka", "kafka", "the Kafka source/sink")
    from streamrnn.connectors import kafka

    return kafka


def make_source(section, max_record_bytes=None, isolation_level="read_uncommitted"):
    """The source of a validated [source] section (defaults from the schema for keys not given); a file
    source bounds every read by ``max_record_bytes`` (the daemon's ``daemon.max_record_bytes``; None: the
    connector's default); a Kafka source reads with ``isolation_level``."""
    opt = {**SOURCE.defaults(), **section}
    t = section["type"]
    if t == "jsonl":
        from streamrnn.connectors.file import JsonLinesSource

        return JsonLinesSource(section["path"], follow=opt["follow"], max_record_bytes=max_record_bytes)
    if t == "csv":
        from streamrnn.connectors.file import CsvSource

        return CsvSource(section["path"], follow=opt["follow"], max_record_bytes=max_record_bytes)
    if t == "replay":
        from streamrnn.connectors.replay import ReplaySource

        return ReplaySource(section["path"], speed=opt["speed"], max_record_bytes=max_record_bytes)
    return _kafka().KafkaSource(
        section["bootstrap"],
        section["topic"],
        group=opt["group"],
        client_id=opt["client_id"],
        max_poll_records=opt["max_poll_records"],
        order=opt["order"],
        instance_id=section.get("instance_id"),
        session_timeout_ms=section.get("session_timeout_ms"),
        isolation_level=isolation_level,
    )


def make_sink(section):
    """The sink of a validated [sink] or [dead_letter] section."""
    t = section["type"]
    if t == "none":  # discard: a list would grow for as long as the daemon runs
        from streamrnn.connectors.base import NullSink

        return NullSink()
    if t == "jsonl":
        from streamrnn.connectors.file import JsonLinesSink

        return JsonLinesSink(section["path"], mode=section.get("mode", "a"))
    if t == "csv":
        from streamrnn.connectors.file import CsvSink

        return CsvSink(section["path"], mode=section.get("mode", "a"))
    kafka = _kafka()
    if section.get("process", False):
        return kafka.KafkaSinkProcess(section["bootstrap"], section["topic"])
    return kafka.KafkaSink(section["bootstrap"], section["topic"])
