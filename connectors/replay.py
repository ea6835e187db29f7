"""Replay a recorded stream file.

Recorded stream format (JSON Lines, one record per line)::

    {"ts": 1700000000.25, "key": "sensor-3", "value": {"x0": 0.1, "x1": -0.4, "y": 0.3},
     "position": ["topic", 0, 17]}

``ts`` (seconds, float, optional) is the time the record was seen, ``key`` (str/int/null) its
key, ``value`` the payload (an object, or a string holding the original bytes as text),
``position`` (optional) where it was recorded from. The replay position is (path, line).
Replay is deterministic: the same file gives the same records in the same order; with
``speed`` > 0 it keeps the recorded gaps divided by ``speed`` (``speed=0``: as fast as
possible). The wait is cut into polls: a poll returns the records that are due and waits at most
``timeout`` (at least 10 ms, at most 0.5 s) for the next one, so that a stop request is honoured
at once even across a recorded gap of years.
"""

from __future__ import annotations

import json
import math
import time

from .base import Record, Unreadable
from .codec import JSONDecodeError, loads
from .file import _BLANK, _PREVIEW, LineSource

WAIT_CAP = 0.5  # longest a poll sleeps waiting for a recorded gap
WAIT_MIN = 0.01  # shortest (a poll with timeout 0 does not spin)


def _exact_key(raw):
    """The recorded key as the standard library reads it (integers beyond 64 bits stay integers)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj.get("key") if isinstance(obj, dict) else None


class ReplaySource(LineSource):
    """A recorded stream file as a source (the module docstring gives the format), at ``speed``
    times the recorded pace (0: as fast as possible); positions are lines, as for a file.

    Parameters
    ----------
    path : str or os.PathLike
        The recorded stream file.
    speed : float
        0: as fast as possible; else the recorded gaps divided by ``speed``.
    max_record_bytes : int or None
        Longest line read whole (None: the file sources' default).
    """

    _block_reads = False  # each line's record is made by _make (parsed, timed)

    def __init__(self, path, speed=0.0, max_record_bytes=None):
        super().__init__(path, follow=False, max_record_bytes=max_record_bytes)
        self.speed = float(speed)
        self._t0_rec = None
        self._t0_wall = None

    def _make(self, raw, line):
        pos = (self.stream, line)
        try:
            obj = loads(raw)
        except JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
                reason = f"replay line: invalid JSON: {exc.msg} at char {exc.pos}"
            except UnicodeDecodeError as bad:
                reason = f"replay line: invalid UTF-8 at byte {bad.start} of the record"
            return Record(value=Unreadable(reason, raw[:_PREVIEW]), position=pos)
        if not isinstance(obj, dict):
            return Record(
                value=Unreadable(f"replay line: expected a JSON object, got {type(obj).__name__}", raw[:_PREVIEW]),
                position=pos,
            )
        if "value" not in obj:
            return Record(value=Unreadable("replay line: no 'value' field", raw[:_PREVIEW]), position=pos)
        key = obj.get("key")
        if type(key) is float and math.isfinite(key) and abs(key) >= 2.0**63:
            exact = _exact_key(raw)
            if type(exact) is int:  # orjson reads integers beyond 64 bits as floats
                return Record(
                    value=Unreadable(
                        f"key: the integer {str(exact)[:40]} does not fit in 64 bits "
                        "(keys are strings or 64-bit integers)",
                        raw[:_PREVIEW],
                    ),
                    position=pos,
                )
        ts = obj.get("ts")
        ok = type(ts) in (int, float) and math.isfinite(ts)
        return Record(value=obj["value"], key=key, position=pos, timestamp=ts if ok else None)

    def _due_in(self, ts):
        """Seconds until a record recorded at ``ts`` is due (<= 0: now)."""
        if self.speed <= 0 or ts is None:
            return 0.0
        now = time.monotonic()
        if self._t0_rec is None:
            self._t0_rec, self._t0_wall = ts, now
            return 0.0
        return self._t0_wall + (ts - self._t0_rec) / self.speed - now

    def poll(self, max_records=1000, timeout=0.0):
        """The records due by now, up to ``max_records``; waits at most ``timeout`` (between 10 ms and
        0.5 s) for the next one, so that a recorded gap of any length never blocks a stop request.

        Parameters
        ----------
        max_records : int
            Most records returned.
        timeout : float
            Seconds to wait for the next record to be due (clamped to [0.01, 0.5]).

        Returns
        -------
        list of Record
        """
        out = []
        budget = min(max(timeout, WAIT_MIN), WAIT_CAP)
        deadline = time.monotonic() + budget
        while len(out) < max_records:
            start, line = self._offset, self._line
            rec = self._read_record(True)
            if rec is _BLANK:
                continue
            if rec is None:
                self._eof = True
                break
            wait = self._due_in(rec.timestamp)
            if wait > 0 and not out:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                wait = self._due_in(rec.timestamp)
            if wait > 0:  # not due yet: left unread (its position is the next unread)
                self._fh.seek(start)
                self._offset, self._line = start, line
                break
            out.append(rec)
        return out


def count_lines(path):
    """The number of lines of a file (counted in bounded chunks, whatever its lines' lengths)."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")
