"""Replay a recorded stream file.

Recorded stream format (JSON Lines, one record per line)::

    {"ts": 1700000000.25, "key": "sensor-3", "value": {"x0": 0.1, "x1": -0.4, "y": 0.3},
     "position": ["topic", 0, 17]}

``ts`` (seconds, float, optional) is the time the record was seen, ``key`` (str/int/null) its
key, ``value`` the payload (an object, or a string holding the original bytes as text),
``position`` (optional) where it was recorded from. The replay position is (path, line).
Replay is deterministic: the same file gives the same records in the same order; with
``speed`` > 0 it sleeps to keep the recorded gaps divided by ``speed`` (``speed=0``: as fast
as possible).
"""

from __future__ import annotations

import time

from .base import Record
from .codec import JSONDecodeError, loads
from .file import LineSource


class ReplaySource(LineSource):
    def __init__(self, path, speed=0.0):
        super().__init__(path, follow=False)
        self.speed = float(speed)
        self._t0_rec = None
        self._t0_wall = None

    def _make(self, raw, line):
        raw = raw.rstrip(b"\r\n")
        try:
            obj = loads(raw)
        except JSONDecodeError:
            return Record(value=raw, position=(self.path, line))  # the decoder says why
        if not isinstance(obj, dict) or "value" not in obj:
            return Record(value=raw, position=(self.path, line))
        ts = obj.get("ts")
        if self.speed > 0 and isinstance(ts, (int, float)):
            now = time.monotonic()
            if self._t0_rec is None:
                self._t0_rec, self._t0_wall = ts, now
            wait = self._t0_wall + (ts - self._t0_rec) / self.speed - now
            if wait > 0:
                time.sleep(wait)
        return Record(
            value=obj["value"],
            key=obj.get("key"),
            position=(self.path, line),
            timestamp=ts if isinstance(ts, (int, float)) else None,
        )


def count_lines(path):
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)
