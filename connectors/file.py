"""JSON Lines and CSV file sources (optionally following a growing file) and sinks."""

from __future__ import annotations

import csv
import os
import time

from .base import Record, SourceError
from .codec import dumps


class LineSource:
    """Reads a text file line by line; position = (path, line number from 0).

    ``follow=True`` behaves like ``tail -f``: at end of file ``poll`` waits up to ``timeout``
    for more lines instead of reporting exhaustion. A partial last line (no newline yet) is
    only returned once it is complete, or at end of file when not following.
    """

    def __init__(self, path, follow=False, skip_header=False):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SourceError(f"source file {self.path!r} does not exist")
        self.follow = follow
        self.skip_header = skip_header
        self._fh = open(self.path, "rb")
        self._line = 0
        self._eof = False
        if skip_header:
            self._header = self._fh.readline()
            self._line = 1
        else:
            self._header = None

    @property
    def exhausted(self):
        return self._eof and not self.follow

    def positions(self):
        return {self.path: self._line}

    def seek(self, positions):
        target = positions.get(self.path) if positions else None
        if target is None:
            return
        self._fh.seek(0)
        self._line = 0
        self._eof = False
        for _ in range(int(target)):
            if not self._fh.readline():
                break
            self._line += 1

    def _make(self, raw, line):
        raw = raw.rstrip(b"\r\n")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw  # handed on as read: the daemon dead-letters it as invalid UTF-8
        return Record(value=value, key=None, position=(self.path, line))

    def poll(self, max_records=1000, timeout=0.0):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < max_records:
            where = self._fh.tell()
            raw = self._fh.readline()
            if raw and (raw.endswith(b"\n") or not self.follow):
                if raw.strip():
                    out.append(self._make(raw, self._line))
                self._line += 1
                continue
            if raw:  # partial line while following: wait for the rest
                self._fh.seek(where)
            if not self.follow:
                self._eof = True
                break
            if out or time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return out

    def close(self):
        self._fh.close()


class JsonLinesSource(LineSource):
    """Each record's value is the line's text (decoded by the daemon)."""


class CsvSource(LineSource):
    """CSV with a header row; each record's value is a dict of column -> string."""

    def __init__(self, path, follow=False):
        super().__init__(path, follow=follow, skip_header=True)
        self.columns = next(csv.reader([self._header.decode("utf-8")])) if self._header else []

    def seek(self, positions):
        super().seek(positions)
        if self._line == 0:
            self._fh.readline()
            self._line = 1

    def _make(self, raw, line):
        try:
            text = raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:  # handed on as read: the daemon dead-letters it as invalid UTF-8
            return Record(value=raw.rstrip(b"\r\n"), key=None, position=(self.path, line))
        row = next(csv.reader([text]), [])
        if len(row) != len(self.columns):
            value = text  # left as text: the daemon reports the width error
        else:
            value = dict(zip(self.columns, row))
        return Record(value=value, key=None, position=(self.path, line))


def _dumps(obj):
    return dumps(obj).decode("utf-8")


class _FileSink:
    """What both file sinks share: an open text file made durable on flush."""

    def flush(self):
        """Durable on return: written to the OS and fsynced."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        if not self._fh.closed:
            self.flush()
            self._fh.close()


class JsonLinesSink(_FileSink):
    """Appends one JSON object per line; ``flush`` makes them durable (fsync)."""

    def __init__(self, path, mode="a"):
        self.path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        self._fh = open(self.path, mode, encoding="utf-8")

    def write(self, records):
        if records:
            self._fh.write(b"\n".join(map(dumps, records)).decode("utf-8") + "\n")


class CsvSink(_FileSink):
    """Writes dict records as CSV rows (header from the first record's keys)."""

    def __init__(self, path, mode="a"):
        self.path = os.fspath(path)
        new = mode == "w" or not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._fh = open(self.path, mode, encoding="utf-8", newline="")
        self._writer = None
        self._new = new

    def write(self, records):
        for r in records:
            flat = {k: (_dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in r.items()}
            if self._writer is None:
                self._writer = csv.DictWriter(self._fh, fieldnames=list(flat), extrasaction="ignore")
                if self._new:
                    self._writer.writeheader()
            self._writer.writerow(flat)
