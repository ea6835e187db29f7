"""The retry policy ([daemon] retry_*): how long to keep trying while the broker is unreachable,
and how many failed checkpoint writes to tolerate.

>>> policy = RetryPolicy(attempts=3, backoff=0.5, backoff_max=1.5, give_up_seconds=0)
>>> [policy.delay(attempt, waited=0.0) for attempt in (1, 2, 3, 4)]
[0.5, 1.0, 1.5, 1.5]
>>> policy.exhausted(2, waited=1e6), policy.exhausted(3, waited=0.0)
(False, True)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (``backoff`` doubling up to ``backoff_max`` seconds) bounded by ``attempts``
    and ``give_up_seconds`` (whichever comes first; 0 = that bound is off)."""

    attempts: int = 30
    backoff: float = 0.5
    backoff_max: float = 30.0
    give_up_seconds: float = 600.0

    @classmethod
    def from_config(cls, daemon):
        """The policy of a validated [daemon] section."""
        return cls(
            daemon["retry_attempts"],
            daemon["retry_backoff"],
            daemon["retry_backoff_max"],
            daemon["retry_give_up_seconds"],
        )

    def exhausted(self, count, waited):
        """Whether ``count`` (retries made, or failures in a row) or ``waited`` seconds reach a bound."""
        return bool(self.attempts and count >= self.attempts) or bool(
            self.give_up_seconds and waited >= self.give_up_seconds
        )

    def delay(self, attempt, waited):
        """Seconds to wait after the ``attempt``-th failure, ``waited`` seconds after the first."""
        delay = min(self.backoff_max, self.backoff * 2.0 ** (attempt - 1))
        if self.give_up_seconds:
            delay = min(delay, max(0.0, self.give_up_seconds - waited))
        return delay

    def call(self, what, call, stopped=lambda: False, on_failure=lambda: None, unsaved=lambda: ""):
        """``call()``, retried while it raises :class:`~streamrnn.connectors.base.BrokerUnavailable`.

        Each failure is logged ("broker unreachable, retrying in ...") and counted with
        ``on_failure()``; the wait is cut short when ``stopped()``. Past the bounds, or on a stop
        request, BrokerUnavailable is raised saying so, with ``unsaved()`` (what was not saved).
        """
        from streamrnn.connectors.base import BrokerUnavailable

        attempt, first = 0, None
        while True:
            try:
                result = call()
            except BrokerUnavailable as exc:
                now = time.monotonic()
                first = now if first is None else first
                attempt += 1
                waited = now - first
                on_failure()
                if self.exhausted(attempt - 1, waited) or stopped():
                    why = "stop requested" if stopped() else "retry policy exhausted"
                    msg = (
                        f"{exc}; giving up after {attempt} attempts over {waited:.1f} s to {what} ({why}); {unsaved()}"
                    )
                    log.error("%s", msg)
                    raise BrokerUnavailable(msg) from None
                delay = self.delay(attempt, waited)
                log.warning(
                    "broker unreachable, retrying in %.1f s (attempt %d%s, %.1f s so far) to %s: %s",
                    delay,
                    attempt,
                    f"/{self.attempts}" if self.attempts else "",
                    waited,
                    what,
                    exc,
                )
                end = time.monotonic() + delay
                while not stopped() and time.monotonic() < end:
                    time.sleep(min(0.1, max(0.0, end - time.monotonic())))
                continue
            if attempt:
                log.warning(
                    "broker reachable again after %.1f s and %d attempts: %s succeeded",
                    time.monotonic() - first,
                    attempt,
                    what,
                )
            return result
