"""Kafka connectors on kafka-python (>= 3.0.9): source, sink, sink process, topics.

- :mod:`.source`: :class:`KafkaSource`, a consumer-group member whose records come in a
  replayable order, merged by timestamp (:mod:`.merge`, :class:`TimestampMerge`, no broker);
- :mod:`.sink`: :class:`KafkaSink`, an idempotent producer with ``acks="all"``; ``flush`` waits
  for every send and raises if one failed;
- :mod:`.sink_process`: :class:`KafkaSinkProcess`, the same sink in a child process;
- :mod:`.admin`: :func:`ensure_topic` and :class:`CompactedTopic` (a key-value store);
- :mod:`.errors`: the one translation of the client's errors into the connector protocol's.

An unreachable broker raises :class:`~streamrnn.connectors.base.BrokerUnavailable` (from a
constructor, from ``poll`` after an empty poll and a failed probe, from ``flush`` when outputs
stay unacknowledged); nothing is dropped meanwhile and the daemon retries under its retry policy.
"""

from streamrnn.extras import require as _require

_require("kafka", "kafka", "the Kafka connectors")  # before any module here imports it

from .admin import CompactedTopic, ensure_topic  # noqa: E402
from .errors import translate_broker_errors  # noqa: E402
from .merge import ORDERS, TimestampMerge  # noqa: E402
from .sink import KafkaSink, encode_outputs  # noqa: E402
from .sink_process import KafkaSinkProcess, _sink_process_entry  # noqa: E402, F401 - the child's entry point
from .source import KafkaSource, await_offset_validation  # noqa: E402

__all__ = [
    "KafkaSource",
    "await_offset_validation",
    "ORDERS",
    "TimestampMerge",
    "KafkaSink",
    "encode_outputs",
    "KafkaSinkProcess",
    "ensure_topic",
    "CompactedTopic",
    "translate_broker_errors",
]
