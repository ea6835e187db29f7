"""The one translation of kafka-python's errors into the connector protocol's.

An unreachable broker becomes :class:`~streamrnn.connectors.base.BrokerUnavailable` (the daemon
retries it under its retry policy); any other client error becomes the caller's choice of failure,
:class:`~streamrnn.connectors.base.SourceError` by default. Both name the broker and what was being
done, and suppress the client's traceback (its internals say nothing to the user).
Errors that the connectors handle rather than translate (a producer blocked by an outage queues
its outputs; a failed offset commit is logged) catch :data:`UNREACHABLE` or ``KafkaError`` there.
:func:`bootstrap_timeout` bounds how long a new client tries before the broker counts as unreachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import kafka.errors
from kafka.errors import KafkaError

from ..base import BrokerUnavailable, SourceError

# NoBrokersAvailable is gone from kafka-python 3.x, where the client's timeouts say it instead
UNREACHABLE: tuple[type[KafkaError], ...] = tuple(
    getattr(kafka.errors, name) for name in ("NoBrokersAvailable", "KafkaTimeoutError") if hasattr(kafka.errors, name)
)


def bootstrap_timeout(client_class: type, ms: int) -> dict[str, int]:
    """The client option bounding its initial connection (after which the broker counts as
    unreachable), where the client has one: kafka-python 3.x's ``bootstrap_timeout_ms``
    (default 30 s)."""
    return {"bootstrap_timeout_ms": ms} if "bootstrap_timeout_ms" in client_class.DEFAULT_CONFIG else {}


@contextmanager
def translate_broker_errors(bootstrap: str, what: str, failure: type[Exception] = SourceError) -> Iterator[None]:
    """Raise kafka-python's errors from the block as ours: ``BrokerUnavailable`` when the broker at
    ``bootstrap`` is unreachable, ``failure`` for any other :class:`~kafka.errors.KafkaError`.

    >>> from kafka.errors import KafkaError, KafkaTimeoutError
    >>> def attempt(error, **how):
    ...     try:
    ...         with translate_broker_errors("h:9092", "storing 'm1'", **how):
    ...             raise error
    ...     except Exception as exc:
    ...         print(f"{type(exc).__name__}: {exc}")
    >>> attempt(KafkaTimeoutError("no metadata in 10 s"))
    BrokerUnavailable: Kafka broker at 'h:9092' is unreachable: storing 'm1': KafkaTimeoutError: no metadata in 10 s
    >>> attempt(KafkaError("record too large"))
    SourceError: Kafka broker at 'h:9092': storing 'm1': KafkaError: record too large
    >>> attempt(KafkaError("record too large"), failure=OSError)
    OSError: Kafka broker at 'h:9092': storing 'm1': KafkaError: record too large
    >>> attempt(ValueError("not the client's"))
    ValueError: not the client's
    """
    try:
        yield
    except UNREACHABLE as exc:
        raise BrokerUnavailable(f"Kafka broker at {bootstrap!r} is unreachable: {what}: {exc}") from None
    except KafkaError as exc:
        raise failure(f"Kafka broker at {bootstrap!r}: {what}: {exc}") from None


T = TypeVar("T")
log = logging.getLogger("streamrnn.kafka")


def retry_retriable(
    call: Callable[[], T],
    bootstrap: str,
    what: str,
    attempts: int = 8,
    give_up_seconds: float = 60.0,
    backoff: float = 0.5,
    backoff_max: float = 8.0,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """``call()``, tried again while it raises a *retriable* kafka-python error (``exc.retriable``:
    CoordinatorNotAvailableError right after a broker starts, NotCoordinatorError, a timeout ...),
    with exponential backoff, at most ``attempts`` times and ``give_up_seconds`` in all. Then, or
    for an error that is not retriable, it is raised as :func:`translate_broker_errors` says
    (BrokerUnavailable, or SourceError naming the broker, what was done and the attempts made).

    >>> from kafka.errors import CoordinatorNotAvailableError
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise CoordinatorNotAvailableError("coordinator not ready")
    ...     return "status"
    >>> retry_retriable(flaky, "h:9092", "reading the group's status", sleep=lambda s: None), len(calls)
    ('status', 3)
    """
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        with translate_broker_errors(bootstrap, what):
            try:
                return call()
            except KafkaError as exc:
                waited = time.monotonic() - start
                if not getattr(exc, "retriable", False) or attempt >= attempts or waited >= give_up_seconds:
                    if getattr(exc, "retriable", False):
                        raise SourceError(
                            f"Kafka broker at {bootstrap!r}: {what}: {exc} "
                            f"(still after {attempt} attempts over {waited:.1f} s)"
                        ) from None
                    raise
                delay = min(backoff_max, backoff * 2 ** (attempt - 1), max(0.0, give_up_seconds - waited))
                log.warning("%s: %s: %s; retrying in %.1f s", bootstrap, what, type(exc).__name__, delay)
        (sleep or time.sleep)(delay)
