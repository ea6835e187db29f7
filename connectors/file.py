"""JSON Lines and CSV file sources (optionally following a growing file) and sinks."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time

from .base import Record, SinkError, SourceError, Unreadable
from .codec import dumps, dumps_lines

DEFAULT_MAX_RECORD_BYTES = 1 << 20  # daemon.max_record_bytes's default
HEAD_BYTES = 1 << 16  # identity: the hash of the file's first bytes up to the position ...
TAIL_BYTES = 1 << 12  # ... and of the bytes just before it (the record boundary)
_CHUNK = 1 << 16  # overlong lines are skipped in chunks of this size
_PREVIEW = 1 << 12  # what a dead letter keeps of an overlong record
_BLOCK = 1 << 20  # whole lines are read in blocks of at most this size (see _read_block)
BOM = b"\xef\xbb\xbf"
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips
_BLANK = object()  # a blank line: consumed, no record

log = logging.getLogger("streamrnn.daemon")


def _digest(data):
    """A 63-bit integer hash of ``data`` (a checkpoint stores integers)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def _utf8_error(raw, exc, skipped=0):
    return Unreadable(f"invalid UTF-8 at byte {skipped + exc.start} of the record", bytes(raw[:_PREVIEW]))


class LineSource:
    """Reads a text file record by record; position = (canonical path, line number from 0).

    Every read is bounded: a record longer than ``max_record_bytes`` (a public attribute, the
    daemon's ``daemon.max_record_bytes``) is skipped to its end in bounded chunks and handed on as
    an :class:`~streamrnn.connectors.base.Unreadable` value (the daemon dead-letters it); the
    position advances past it. A UTF-8 byte-order mark at offset 0 is dropped.

    ``follow=True`` behaves like ``tail -F``: at end of file ``poll`` waits up to ``timeout`` for
    more lines instead of reporting exhaustion. A partial last record (no newline yet) is only
    returned once it is complete, or at end of file when not following. When the file at ``path``
    is replaced (rotated: another inode at that name), the old file is read to its end and the new
    one from its start; when it shrinks below the position (truncated in place), it is read again
    from its start. Positions then refer to the new file; ``switched`` is set (the daemon
    checkpoints at once).

    The file is identified by its canonical path (``os.path.realpath``: the stream id of
    :meth:`positions`) and its contents: :meth:`identity` gives the byte offset, device, inode and
    hashes of the bytes before the position; :meth:`resume` refuses (SourceError) a checkpoint
    taken in another file or in a file rewritten since, so that no record is applied twice.

    Parameters
    ----------
    path : str or os.PathLike
        The file (SourceError if it does not exist).
    follow : bool
        Keep reading as the file grows, and across rotation and truncation (``tail -F``).
    max_record_bytes : int or None
        Longest record read whole (None: the class default, 1 MiB).
    """

    max_record_bytes = DEFAULT_MAX_RECORD_BYTES
    _block_reads = True  # one record per line: whole, clean lines can be read a block at a time

    def __init__(self, path, follow=False, max_record_bytes=None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SourceError(f"source file {self.path!r} does not exist")
        self.stream = os.path.realpath(self.path)
        self.follow = follow
        self.switched = False
        if max_record_bytes is not None:
            self.max_record_bytes = int(max_record_bytes)
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read source file {self.path!r}: {exc.strerror}") from None
        self._offset = 0  # byte offset of the next unread record
        self._line = 0  # its line number
        self._skip = None  # an overlong record being skipped (follow mode, its end not written yet)
        self._eof = False

    @property
    def exhausted(self):
        """True once the file has been read to its end and it is not followed."""
        return self._eof and not self.follow

    def positions(self):
        """``{canonical path: next unread line}``."""
        return {self.stream: self._line}

    # -- where to resume
    def _own_position(self, positions):
        """This file's line in plain ``positions`` (any spelling of its path), or None."""
        if not positions:
            return None
        for name in (self.stream, self.path):
            if name in positions:
                return positions[name]
        for name, line in positions.items():
            if isinstance(name, str) and os.path.realpath(name) == self.stream:
                return line
        return None

    def seek(self, positions):
        """Resume at the line ``positions`` give this file (under any spelling of its path); other
        streams' positions are ignored. Lines are counted from the start in bounded chunks."""
        target = self._own_position(positions)
        if target is not None:
            self._seek_line(int(target))

    def _seek_line(self, target):
        fh = self._fh
        fh.seek(0)
        offset = line = 0
        while line < target:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            n = chunk.count(b"\n")
            if line + n < target:
                line += n
                offset += len(chunk)
                continue
            i = -1
            for _ in range(target - line):
                i = chunk.index(b"\n", i + 1)
            offset += i + 1
            line = target
        self._goto(offset, line)

    def _goto(self, offset, line):
        self._fh.seek(offset)
        self._offset, self._line, self._skip, self._eof = offset, line, None, False
        self._after_goto()

    def _after_goto(self):
        """Hook: a subclass re-reads what it needs (the CSV header) after a seek."""

    def _hashes(self, offset):
        fd = self._fh.fileno()
        head = os.pread(fd, min(offset, HEAD_BYTES), 0)
        n = min(offset, TAIL_BYTES)
        tail = os.pread(fd, n, offset - n)
        return _digest(head), _digest(tail)

    def identity(self):
        """{stream: {"offset", "dev", "ino", "head", "tail"}}: the byte offset of :meth:`positions`,
        the file's device and inode, and hashes of its first bytes and of those before the offset
        (integers: a checkpoint stores them beside the positions)."""
        st = os.fstat(self._fh.fileno())
        head, tail = self._hashes(self._offset)
        return {self.stream: {"offset": self._offset, "dev": st.st_dev, "ino": st.st_ino, "head": head, "tail": tail}}

    def resume(self, positions, identity=None):
        """Resume where a checkpoint's ``positions`` and ``identity`` (of :meth:`identity`) left off.

        The checkpoint must be of this file: the same contents before its position (checked by the
        hashes, so a rewritten or another file is noticed), wherever it lies now (a moved directory,
        another spelling of its path). Without ``identity`` (a checkpoint of an older version) the
        positions must name this file's path. SourceError otherwise: reading from the start would
        apply records twice.
        """
        hint = "; move the checkpoint away to start afresh"
        if not identity:
            target = self._own_position(positions)
            if target is None:
                if positions:
                    names = ", ".join(repr(k) for k in list(positions)[:3])
                    raise SourceError(
                        f"source.path: the checkpoint holds the positions of {names}, not of {self.path!r}{hint}"
                    )
                return
            self.seek({self.stream: target})
            return
        name = self.stream if self.stream in identity else next(iter(identity)) if len(identity) == 1 else None
        if name is None or name not in positions:
            names = ", ".join(repr(k) for k in list(identity)[:3])
            raise SourceError(f"source.path: the checkpoint holds the positions of {names}, not of {self.path!r}{hint}")
        saved, line = identity[name], int(positions[name])
        offset = saved["offset"]
        st = os.fstat(self._fh.fileno())
        if st.st_size < offset:
            raise SourceError(
                f"source.path: {self.path!r} has {st.st_size} bytes, fewer than the checkpoint's position "
                f"(byte {offset}, line {line} of {name!r}): truncated or replaced since{hint}"
            )
        if self._hashes(offset) != (saved["head"], saved["tail"]):
            other = (st.st_dev, st.st_ino) != (saved["dev"], saved["ino"])
            raise SourceError(
                f"source.path: {self.path!r} is not the file the checkpoint read ({name!r}"
                + (", another inode" if other else "")
                + f"): its bytes before the checkpoint's position (byte {offset}, line {line}) differ; "
                f"rewritten, replaced or another input{hint}"
            )
        if name != self.stream or (st.st_dev, st.st_ino) != (saved["dev"], saved["ino"]):
            log.warning(
                "source %s: resuming at line %d of the checkpoint's %s (same contents: moved or copied)",
                self.path,
                line,
                name,
            )
        self._goto(offset, line)

    # -- reading
    def _read_record(self, final):
        """The next record (or _BLANK), None when none is complete yet. ``final``: the end of the
        file ends the last record (not following, or a rotated file being finished)."""
        if self._skip is not None:
            return self._skip_overlong(final)
        start, line = self._offset, self._line
        limit = self.max_record_bytes + 2  # the record and its line end
        raw = self._fh.readline(limit + 1)
        if not raw:
            return None
        if raw[-1:] != b"\n":
            if len(raw) > limit:
                self._skip = [start, line, len(raw), raw[:_PREVIEW], 0, 0]
                return self._skip_overlong(final)
            if not final:  # a partial line: wait for the rest
                self._fh.seek(start)
                return None
        self._offset = start + len(raw)
        self._line = line + 1
        if start == 0 and raw.startswith(BOM):
            raw = raw[3:]
        body = raw.rstrip(b"\r\n")
        if len(body) > self.max_record_bytes:  # read (it fits the read's bound), not parsed
            return Record(value=self._too_long(len(body), body, ""), position=(self.stream, line))
        if not body.strip():
            return _BLANK
        return self._make(body, line)

    def _read_block(self, want):
        """Up to ``want`` records of whole lines read in one block: the common case at a fraction of
        :meth:`_read_record`'s cost per line, with the same records and positions. Empty where the
        next line needs the line-by-line path: the file's first line (a BOM), an overlong line being
        skipped, a line without its newline yet, or one too long or not UTF-8 (the block stops before
        it, and the line-by-line path says why). Records are made as :meth:`_make` makes them: a
        subclass that makes them otherwise sets ``_block_reads`` False."""
        if self._skip is not None or self._offset == 0:
            return []
        start, line, limit = self._offset, self._line, self.max_record_bytes
        data = self._fh.read(min(_BLOCK, want * (limit + 2)))
        lines = data.split(b"\n")
        del lines[-1]  # what follows the last newline: a partial line, or nothing
        del lines[want:]
        if lines and max(map(len, lines)) > limit:
            lines = lines[: next(i for i, raw in enumerate(lines) if len(raw) > limit)]
        try:
            texts = [raw.decode("utf-8") for raw in lines]
        except UnicodeDecodeError:
            texts = []
            for raw in lines:
                try:
                    texts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    break
        n = len(texts)
        self._offset = start + sum(map(len, lines[:n])) + n
        self._line = line + n
        self._fh.seek(self._offset)
        stream = self.stream
        return [
            Record(text.rstrip("\r"), None, (stream, at))
            for at, text in enumerate(texts, line)
            if text.strip(_ASCII_SPACE)  # a blank line is consumed, with no record (as bytes.strip sees it)
        ]

    def _too_long(self, size, raw, how):
        return Unreadable(
            f"record of {size} bytes exceeds daemon.max_record_bytes = {self.max_record_bytes}{how}", raw[:_PREVIEW]
        )

    def _skip_overlong(self, final, quoted=False):
        """Skip an overlong record to its newline (for CSV, ``quoted``: the first newline outside
        quotes) in bounded chunks; its dead-letter record once its end is read."""
        skip = self._skip  # [start, line, bytes so far, preview, quote parity, newlines so far]
        ended = False
        while True:
            chunk = self._fh.readline(_CHUNK)
            if quoted:
                skip[4] ^= chunk.count(b'"') & 1
            skip[2] += len(chunk)
            if chunk[-1:] == b"\n":
                skip[5] += 1
                if not skip[4]:
                    ended = True
                    break
            if not chunk:
                if not final:
                    return None  # its end is not written yet
                break
        start, line, size, preview, _, newlines = skip
        self._skip = None
        self._offset = start + size
        self._line = line + newlines + (0 if ended else 1)
        return Record(value=self._too_long(size, preview, ": skipped unread"), position=(self.stream, line))

    def _make(self, raw, line):
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            value = _utf8_error(raw, exc)
        return Record(value=value, key=None, position=(self.stream, line))

    def _replaced(self):
        """tail -F: whether the file at ``path`` is another one now (rotated) or shorter than the
        position (truncated in place): "rotated", "truncated" or None."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # renamed away and not yet created again: keep reading the old file
        cur = os.fstat(self._fh.fileno())
        if (st.st_dev, st.st_ino) != (cur.st_dev, cur.st_ino):
            return "rotated"
        if cur.st_size < self._offset:
            return "truncated"
        return None

    def _switch(self, why):
        old = self._line
        if why == "rotated":
            try:
                fh = open(self.path, "rb")
            except OSError:
                return False  # gone again: try at the next poll
            self._fh.close()
            self._fh = fh
            self.stream = os.path.realpath(self.path)
        log.warning("source %s was %s (at line %d): reading it from the start", self.path, why, old)
        self._goto(0, 0)
        self.switched = True
        return True

    def poll(self, max_records=1000, timeout=0.0):
        """Up to ``max_records`` records, waiting up to ``timeout`` s for new lines when followed; records
        that cannot be read whole or parsed come back with an :class:`~streamrnn.connectors.base.Unreadable`
        value (a dead letter for the daemon).

        Parameters
        ----------
        max_records : int
            Most records returned.
        timeout : float
            Seconds to wait for more lines when following (0: return what is there).

        Returns
        -------
        list of Record
        """
        out = []
        deadline = time.monotonic() + timeout
        final = not self.follow
        while len(out) < max_records:
            if self._block_reads:
                before = self._offset
                block = self._read_block(max_records - len(out))
                if self._offset != before:
                    out += block
                    continue
            rec = self._read_record(final)
            if rec is _BLANK:
                continue
            if rec is not None:
                out.append(rec)
                continue
            if final:
                self._eof = True
                break
            why = self._replaced()
            if why is not None:
                if why == "rotated":  # finish the old file: what was written before its rename
                    rec = self._read_record(True)
                    if rec is not None:
                        if rec is not _BLANK:
                            out.append(rec)
                        continue
                if self._switch(why):
                    continue
            if out or time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return out

    def close(self):
        """Close the file."""
        self._fh.close()


class JsonLinesSource(LineSource):
    """Each record's value is the line's text (decoded by the daemon)."""


class _CsvLines:
    """The physical lines of one CSV record, for the csv parser: decoded, counted, bounded."""

    __slots__ = ("src", "final", "size", "lines", "quotes", "bad", "raw", "stop", "end")

    def __init__(self, src, final):
        self.src, self.final = src, final
        self.size = self.lines = self.quotes = 0
        self.bad = None  # the first invalid UTF-8: (byte in the record, exception)
        self.raw = []
        self.stop = None  # "partial" | "overlong" | None
        self.end = 0  # the bytes of the last line's end (\n or \r\n)

    def __iter__(self):
        src = self.src
        limit = src.max_record_bytes + 2
        start = src._offset
        while True:
            raw = src._fh.readline(limit + 1 - self.size)
            if not raw:
                if self.lines and not self.final:
                    self.stop = "partial"
                    raise _Stop
                return
            at = self.size
            self.size += len(raw)
            self.lines += 1
            self.quotes ^= raw.count(b'"') & 1
            if raw[-1:] != b"\n":
                if self.size > limit:
                    self.stop = "overlong"
                    self.raw.append(raw[:_PREVIEW])
                    raise _Stop
                if not self.final:
                    self.stop = "partial"
                    raise _Stop
            self.end = 2 if raw[-2:] == b"\r\n" else 1 if raw[-1:] == b"\n" else 0
            if at == 0 and start == 0 and raw.startswith(BOM):
                raw = raw[3:]
            if len(self.raw) < 8:
                self.raw.append(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if self.bad is None:
                    self.bad = (at, exc)
                text = raw.decode("utf-8", "replace")
            yield text


class _Stop(Exception):
    """Raised through the csv parser: the record is incomplete or too long."""


class CsvSource(LineSource):
    """CSV (RFC 4180, parsed by the csv module with ``strict=True``) with a header row; each
    record's value is a dict of column -> string. A quoted field may hold newlines: a record may
    span lines (its position is its first line). A row of another width than the header's, a
    malformed row and invalid UTF-8 are handed on as
    :class:`~streamrnn.connectors.base.Unreadable` values, saying why.

    ``columns`` is the header (None until it is read: an empty file being followed);
    :meth:`require` names columns the header must have (SourceError otherwise).
    """

    _block_reads = False  # a record may span lines: the csv parser reads them

    def __init__(self, path, follow=False, max_record_bytes=None):
        super().__init__(path, follow=follow, max_record_bytes=max_record_bytes)
        self.columns = None
        self._required = ()
        self._header_end = (0, 0)
        self._read_header(final=not follow)

    def require(self, names, what="[schema]"):
        """SourceError unless the header has every column of ``names`` (checked now if the header
        is read, else when it is).

        Parameters
        ----------
        names : sequence of str
            The columns the schema names (features, target, key, reset).
        what : str
            Where they come from, for the error message.
        """
        self._required = (tuple(names), what)
        self._check_header()

    def _check_header(self):
        if self.columns is None or not self._required:
            return
        names, what = self._required
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise SourceError(
                f"source.path: the CSV header of {self.path!r} lacks the column(s) "
                f"{', '.join(repr(m) for m in missing)} named in {what} (header: {', '.join(self.columns)})"
            )

    def _read_header(self, final):
        """Read the header record if the file has it yet; True once it is read."""
        if self._offset != 0 or self.columns is not None:
            return self.columns is not None
        row = self._parse(final)
        if row is None:
            return False
        if type(row) is Unreadable:
            raise SourceError(f"source.path: cannot read the CSV header of {self.path!r}: {row.reason}")
        if row is _BLANK:
            row = []
        self.columns = row
        self._header_end = (self._offset, self._line)
        self._check_header()
        return True

    def _after_goto(self):
        if self._offset == 0:
            self.columns = None
            self._read_header(final=not self.follow)
        elif self.columns is None:  # resumed past the header: read it from the start
            offset, line = self._offset, self._line
            self._fh.seek(0)
            self._offset = self._line = 0
            self._read_header(final=True)
            self._fh.seek(offset)
            self._offset, self._line = offset, line

    def seek(self, positions):
        target = self._own_position(positions)
        if target is not None:
            self._seek_line(int(target))
            if self._offset < self._header_end[0]:  # at the header: the records start after it
                self._goto(*self._header_end)

    def _parse(self, final):
        """The next record's fields (a list), _BLANK, an Unreadable, or None (none complete yet);
        the position advances past what was returned."""
        start, line = self._offset, self._line
        limit = self.max_record_bytes + 2
        raw = self._fh.readline(limit + 1)
        if raw[-1:] == b"\n" and b'"' not in raw and len(raw) <= limit and not (start == 0 and raw[:3] == BOM):
            # the common line without quotes: its fields are what the csv parser would give
            body = raw[:-2] if raw[-2:] == b"\r\n" else raw[:-1]
            if b"\r" not in body:
                self._offset, self._line = start + len(raw), line + 1
                if len(body) > self.max_record_bytes:
                    return self._too_long(len(body), body, "")
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return _utf8_error(body, exc)
                return text.split(",") if text.strip() else _BLANK
        self._fh.seek(start)
        if csv.field_size_limit() < self.max_record_bytes + 2:  # the record's bound is ours
            csv.field_size_limit(self.max_record_bytes + 2)
        lines = _CsvLines(self, final)
        try:
            row = next(csv.reader(lines, strict=True))
            error = None
        except StopIteration:
            if lines.lines == 0:
                return None
            row, error = None, "no fields"
        except _Stop:
            if lines.stop == "partial":
                self._fh.seek(start)
                return None
            if self.columns is None:
                raise SourceError(
                    f"source.path: the CSV header of {self.path!r} is longer than "
                    f"daemon.max_record_bytes = {self.max_record_bytes}"
                ) from None
            self._skip = [start, line, lines.size, b"".join(lines.raw)[:_PREVIEW], lines.quotes, lines.lines - 1]
            rec = self._skip_overlong(final, quoted=True)
            return rec.value if rec is not None else None
        except csv.Error as exc:
            row, error = None, f"malformed CSV: {exc}"
        self._offset = start + lines.size
        self._line = line + lines.lines
        raw = b"".join(lines.raw)
        if error is not None:
            return Unreadable(error, raw[:_PREVIEW])
        if lines.size - lines.end > self.max_record_bytes:
            return self._too_long(lines.size - lines.end, raw, "")
        if lines.bad is not None:
            return _utf8_error(raw, lines.bad[1], lines.bad[0])
        if not row or (len(row) == 1 and not row[0].strip()):
            return _BLANK
        return row

    def _read_record(self, final):
        if self.columns is None and not self._read_header(final):
            return None
        line = self._line
        if self._skip is not None:
            return self._skip_overlong(final, quoted=True)
        row = self._parse(final)
        if row is None or row is _BLANK:
            return row
        if type(row) is Unreadable:
            value = row
        elif len(row) != len(self.columns):
            value = Unreadable(
                f"CSV row of {len(row)} field{'s' if len(row) != 1 else ''}, the header has {len(self.columns)}",
                ",".join(row).encode("utf-8", "replace")[:_PREVIEW],
            )
        else:
            value = dict(zip(self.columns, row))
        return Record(value=value, key=None, position=(self.stream, line))


def _dumps(obj):
    return dumps(obj).decode("utf-8")


def _drop_incomplete_last_line(path):
    """Cut an incomplete last line (no line end after it) off the file at ``path``, if it exists."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        end = size
        while end > 0:  # back to the last line end, in bounded reads
            start = max(0, end - 65536)
            chunk = os.pread(fd, end - start, start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                break
            end = start
        if end < size:
            os.ftruncate(fd, end)
            os.fsync(fd)
    finally:
        os.close(fd)


class _FileSink:
    """What both file sinks share: an open text file made durable on flush. A write or flush that fails
    (a full disk, an I/O error) raises SinkError naming the file. A file whose last line is incomplete
    (the tail of a write that never finished: a flush, and so every checkpoint, ends at a line end) has
    that tail cut off when it is opened for appending, so the records written again after a restart
    start on a line of their own."""

    def _open(self, path, mode, **kw):
        self.path = os.fspath(path)
        try:
            if mode.startswith("a"):
                _drop_incomplete_last_line(self.path)
            return open(self.path, mode, **kw)
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open for writing: {exc.strerror or exc}") from None

    def _failed(self, exc):
        return SinkError(f"{self.path}: cannot write: {exc.strerror or exc}")

    def flush(self):
        """Durable on return: written to the OS and fsynced."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self):
        if not self._fh.closed:
            self.flush()
            self._fh.close()


class JsonLinesSink(_FileSink):
    """Appends one JSON object per line; ``flush`` makes them durable (fsync).

    Parameters
    ----------
    path : str or os.PathLike
        The file (its folder is created if missing).
    mode : {"a", "w"}
        Append (the default: outputs survive a restart) or start the file afresh.
    """

    def __init__(self, path, mode="a"):
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
        self._fh = self._open(path, mode + "b")  # orjson gives UTF-8 bytes: written as they are

    def write(self, records):
        """Append ``records`` as JSON lines (durable at :meth:`flush`)."""
        if records:
            try:
                self._fh.write(dumps_lines(records))
            except OSError as exc:
                raise self._failed(exc) from None


class CsvSink(_FileSink):
    """Writes dict records as CSV rows (header from the first record's keys).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    mode : {"a", "w"}
        Append (a header only in a new or empty file) or start the file afresh.
    """

    def __init__(self, path, mode="a"):
        self._fh = self._open(path, mode, encoding="utf-8", newline="")
        self._writer = None
        self._new = mode == "w" or os.path.getsize(self.path) == 0

    def write(self, records):
        """Append ``records`` as CSV rows (lists and dicts JSON-encoded), the header first in a new file."""
        try:
            self._write_rows(records)
        except OSError as exc:
            raise self._failed(exc) from None

    def _write_rows(self, records):
        for r in records:
            flat = {k: (_dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in r.items()}
            if self._writer is None:
                self._writer = csv.DictWriter(self._fh, fieldnames=list(flat), extrasaction="ignore")
                if self._new:
                    self._writer.writeheader()
            self._writer.writerow(flat)
