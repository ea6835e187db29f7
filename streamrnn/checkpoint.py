"""Atomic, versioned, checksummed files of named NumPy arrays plus JSON metadata.

Layout (little-endian)::

    b"STRMRNN\\x00" | format version u32 | header length u64 | header (JSON, UTF-8)
    | array bytes, in header order | SHA-256 of everything before it (32 bytes)

The header names each array with its dtype and shape. A file is written to a
temporary name in the same directory, fsynced, renamed over the target and the
directory fsynced, so a reader sees either the old file or the new one, whole.
:func:`save_generation` keeps the previous file as a second generation and
never lets a failed write (a full disk) touch either.
"""

import hashlib
import io
import json
import os
import struct

import numpy as np

MAGIC = b"STRMRNN\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
_DTYPES = {"float32", "float64", "int64", "int32", "uint8", "bool"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, foreign, truncated, corrupted or too new."""


def pieces(arrays, meta):
    """The file's bytes as a sequence of buffers, without copying the arrays.

    C-contiguous little-endian arrays are handed on as views (a 100 000-key state is
    not duplicated to be saved); the last piece is the SHA-256 of all the others.
    """
    entries, views = [], []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r} has unsupported dtype {arr.dtype}")
        entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        views.append(memoryview(arr.reshape(-1).view(np.uint8)))
    header = json.dumps({"meta": meta, "arrays": entries}, sort_keys=True).encode()
    body = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header, *views]
    digest = hashlib.sha256()
    for piece in body:
        digest.update(piece)
    return body + [digest.digest()]


def dumps(arrays, meta):
    """Serialise ``arrays`` (name -> ndarray) and JSON-able ``meta`` to bytes."""
    return b"".join(pieces(arrays, meta))


def loads(data, source="<bytes>", allocate=None):
    """Parse bytes written by :func:`dumps`; return ``(arrays, meta)`` or raise CheckpointError."""
    return _read(io.BytesIO(data), len(data), source, allocate)


def _read(fh, size, source, allocate=None):
    """``(arrays, meta)`` from a binary file object of ``size`` bytes; CheckpointError if the file
    is not a whole, uncorrupted checkpoint of this format version.

    Each array is read straight into its destination (one copy of the state in memory, not
    three): ``allocate(name, shape, dtype)`` may supply it (a writable C-contiguous array of
    that shape and dtype, e.g. rows of the reservation a model will adopt), else a new array.
    """
    prefix = fh.read(_PREFIX.size)
    if size < _PREFIX.size + _DIGEST or prefix[:8] != MAGIC:
        raise CheckpointError(f"{source}: not a streamrnn checkpoint (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version} is not supported "
            f"(this streamrnn reads version {FORMAT_VERSION})"
        )
    digest = hashlib.sha256(prefix)
    body_end = size - _DIGEST
    try:
        # A damaged header or size is reported as what it is, a checksum mismatch, once the
        # whole file has been hashed; only a file that checks out can have a structural fault.
        if _PREFIX.size + header_len > body_end:
            raise _Structure("the header runs past the end of the file")
        header_bytes = fh.read(header_len)
        digest.update(header_bytes)
        try:
            header = json.loads(header_bytes.decode())
            entries = header["arrays"]
            meta = header["meta"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise _Structure(f"unreadable header: {exc}") from None
        offset = _PREFIX.size + header_len
        arrays = {}
        for entry in entries:
            if entry["dtype"] not in _DTYPES:
                raise _Structure(f"array {entry['name']!r} has unsupported dtype {entry['dtype']}")
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            shape = tuple(int(d) for d in entry["shape"])
            if any(d < 0 for d in shape):
                raise _Structure(f"array {entry['name']!r} has a negative dimension")
            count = int(np.prod(shape, dtype=np.int64))
            if offset + count * dtype.itemsize > body_end:
                raise _Structure(f"array {entry['name']!r} runs past the end of the file")
            arr = allocate(entry["name"], shape, dtype.newbyteorder("=")) if allocate is not None else None
            if arr is None:
                arr = np.empty(shape, dtype.newbyteorder("="))
            view = memoryview(arr.reshape(-1).view(np.uint8))
            if _read_into(fh, view) != len(view):
                raise _Structure(f"array {entry['name']!r} runs past the end of the file")
            digest.update(view)
            if dtype != arr.dtype:  # a big-endian machine: the file is little-endian
                arr.byteswap(inplace=True)
            arrays[entry["name"]] = arr
            offset += len(view)
        if offset != body_end:
            raise _Structure(f"{body_end - offset} unexpected trailing bytes")
    except _Structure as fault:
        if not _digest_matches(fh, size):
            raise CheckpointError(f"{source}: checksum mismatch: the file is truncated or corrupted") from None
        raise CheckpointError(f"{source}: {fault}") from None
    if fh.read(_DIGEST) != digest.digest():
        raise CheckpointError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    return arrays, meta


class _Structure(Exception):
    """A structural fault found while reading (its meaning depends on the checksum)."""


def _digest_matches(fh, size):
    """Whether the last 32 bytes of the file are the SHA-256 of the ones before."""
    fh.seek(0)
    whole = hashlib.sha256()
    remaining = size - _DIGEST
    while remaining > 0:
        chunk = fh.read(min(1 << 20, remaining))
        if not chunk:
            return False
        whole.update(chunk)
        remaining -= len(chunk)
    return fh.read(_DIGEST) == whole.digest()


def _read_into(fh, view):
    """Fill ``view`` from ``fh``; the number of bytes read (less only at the end of the file)."""
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _write_temp(path, data):
    """Write ``data`` (bytes, or a list of buffers from :func:`pieces`) to a temporary file beside
    ``path`` and fsync it; return its name.

    Any failure (a full disk: ENOSPC from ``os.write``/``os.fsync``) removes the temporary file
    and raises; nothing else is touched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                view = memoryview(piece)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale_temps(path):
    """Temporary files left by writers that were killed mid-write (their process is gone)."""
    directory = os.path.dirname(os.path.abspath(path))
    stem = f".{os.path.basename(path)}.tmp-"
    for name in os.listdir(directory):
        if not name.startswith(stem):
            continue
        pid = name[len(stem) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _unlink_quietly(os.path.join(directory, name))
        except OSError:
            pass  # alive (or not ours to probe): leave it


def write_atomic(path, data):
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    path = os.fspath(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_generation(path, data, previous):
    """Make ``data`` the newest generation at ``path``; the current newest becomes ``previous``.

    The new bytes are written and fsynced under a temporary name first, and only then is
    ``path`` renamed to ``previous`` and the temporary file to ``path`` (then the directory is
    fsynced). So a failed write (a full disk) changes neither existing generation, and a crash
    between the two renames leaves ``previous`` holding the last good generation and no
    ``path``, which readers then fall back to.
    """
    path, previous = os.fspath(path), os.fspath(previous)
    _remove_stale_temps(path)
    tmp = _write_temp(path, data)
    try:
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def peek_meta(fh, source="<checkpoint>"):
    """The metadata of a checkpoint from its header alone (binary file object at its start),
    unverified: for listings (``streamrnn status``) and quick checks, never for restoring."""
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
        raise CheckpointError(f"{source}: not a streamrnn checkpoint (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is not supported")
    try:
        return json.loads(fh.read(header_len).decode())["meta"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: unreadable header: {exc}") from None


def save(path, arrays, meta):
    write_atomic(path, pieces(arrays, meta))


PREVIOUS = ".prev"  # suffix of the previous generation (see save_generation)


def save_newest(path, data):
    """:func:`save_generation` with the previous generation kept as ``path + PREVIOUS``."""
    save_generation(path, data, previous=os.fspath(path) + PREVIOUS)


def generations(path):
    """The generations of ``path`` on disk, newest first: [(file, load(allocate) -> (arrays, meta))]."""
    path = os.fspath(path)
    return [(p, lambda allocate, p=p: load(p, allocate=allocate)) for p in (path, path + PREVIOUS) if os.path.exists(p)]


def load(path, allocate=None):
    """``(arrays, meta)`` of a checkpoint file, or CheckpointError; ``allocate`` as in :func:`loads`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return _read(fh, os.fstat(fh.fileno()).st_size, path, allocate)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
