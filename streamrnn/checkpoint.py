"""Atomic, versioned, checksummed files of named NumPy arrays plus JSON metadata.

Layout (little-endian)::

    b"STRMRNN\\x00" | format version u32 | header length u64 | header (JSON, UTF-8)
    | array bytes, in header order | SHA-256 of everything before it (32 bytes)

The header names each array with its dtype and shape. A file is written to a
temporary name in the same directory (created exclusively, never through a symlink),
fsynced, renamed over the target and the directory fsynced, so a reader sees either
the old file or the new one, whole. :func:`save_generation` keeps the previous file
as a second generation and never lets a failed write (a full disk) touch either.

A checkpoint is trusted data: restoring one gives its writer the model. Everything read
from a file is checked before anything is allocated for it (the header's structure, every
array's dtype, rank and shape, the sizes against the file's size; a caller's ``check`` adds
the shapes against a configuration), and every fault is a :class:`CheckpointError`, never
another exception. The SHA-256 trailer detects damage, not tampering: anyone who can write
the directory can write a file that passes it. Where the checkpoint directory is shared, set
``STREAMRNN_CHECKPOINT_KEY`` (the environment variable :data:`KEY_ENV`): the trailer is then an
HMAC-SHA256 under that key, written and required, and a file without it is refused unread.
"""

import hashlib
import hmac
import io
import json
import os
import secrets
import stat
import struct

import numpy as np

MAGIC = b"STRMRNN\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
_DTYPES = {"float32", "float64", "int64", "int32", "uint8", "bool"}
_MAX_NDIM = 8  # the model's arrays have at most 4 axes
KEY_ENV = "STREAMRNN_CHECKPOINT_KEY"  # HMAC key of signed checkpoints (shared directories)
_SIGNED = "hmac-sha256"


def _key():
    """The HMAC key from the environment (bytes), or None: plain SHA-256 checksums."""
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def _digest(key):
    return hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()


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
    key = _key()
    head = {"meta": meta, "arrays": entries, **({"signed": _SIGNED} if key else {})}
    header = json.dumps(head, sort_keys=True).encode()
    body = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header, *views]
    digest = _digest(key)
    for piece in body:
        digest.update(piece)
    return body + [digest.digest()]


def dumps(arrays, meta):
    """Serialise ``arrays`` (name -> ndarray) and JSON-able ``meta`` to bytes."""
    return b"".join(pieces(arrays, meta))


def loads(data, source="<bytes>", allocate=None, check=None):
    """Parse bytes written by :func:`dumps`; return ``(arrays, meta)`` or raise CheckpointError."""
    return _read(io.BytesIO(data), len(data), source, allocate, check)


def _read(fh, size, source, allocate=None, check=None):
    """``(arrays, meta)`` from a binary file object of ``size`` bytes; CheckpointError if the file
    is not a whole, uncorrupted checkpoint of this format version.

    Each array is read straight into its destination (one copy of the state in memory, not
    three): ``allocate(name, shape, dtype)`` may supply it (a writable C-contiguous array of
    that shape and dtype, e.g. rows of the reservation a model will adopt), else a new array.

    Nothing is allocated before the header has been checked: its structure, each array's dtype,
    rank and shape, the arrays' sizes adding up to the file's size exactly, and then
    ``check(layout, meta)`` (``layout``: name -> (shape, dtype) in file order), which raises
    CheckpointError for a header its caller cannot use (shapes against a configuration, keys,
    memory). With :data:`KEY_ENV` set, the file's HMAC is verified before its header is parsed.
    """
    prefix = fh.read(_PREFIX.size)
    if size < _PREFIX.size + _DIGEST or len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
        raise CheckpointError(f"{source}: not a streamrnn checkpoint (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version} is not supported "
            f"(this streamrnn reads version {FORMAT_VERSION})"
        )
    key = _key()
    if key is not None and not _digest_matches(fh, size, key):
        signed = _digest_matches(fh, size, None)
        raise CheckpointError(
            f"{source}: "
            + (
                f"not signed: {KEY_ENV} is set and the file carries a plain checksum"
                if signed
                else f"signature mismatch: not written with this {KEY_ENV}, or tampered with, truncated or corrupted"
            )
        )
    if key is not None:
        fh.seek(_PREFIX.size)
    digest = _digest(key)
    digest.update(prefix)
    body_end = size - _DIGEST
    try:
        # A damaged header or size is reported as what it is, a checksum mismatch, once the
        # whole file has been hashed; only a file that checks out can have a structural fault.
        if _PREFIX.size + header_len > body_end:
            raise _Structure("the header runs past the end of the file")
        header_bytes = fh.read(header_len)
        digest.update(header_bytes)
        meta, layout = _parse_header(header_bytes, body_end - _PREFIX.size - header_len, key)
        if check is not None:
            try:
                check(layout, meta)
            except CheckpointError as exc:
                raise _Structure(str(exc).removeprefix(f"{source}: ")) from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
                raise _Structure(f"unusable header: {type(exc).__name__}: {exc}") from None
        arrays = {}
        for name, (shape, dtype) in layout.items():
            native = dtype.newbyteorder("=")
            arr = allocate(name, shape, native) if allocate is not None else None
            if arr is None:
                arr = np.empty(shape, native)
            view = memoryview(arr.reshape(-1).view(np.uint8))
            if _read_into(fh, view) != len(view):
                raise _Structure(f"array {name!r} runs past the end of the file")
            digest.update(view)
            if dtype != arr.dtype:  # a big-endian machine: the file is little-endian
                arr.byteswap(inplace=True)
            arrays[name] = arr
    except _Structure as fault:
        if not _digest_matches(fh, size, key):
            raise CheckpointError(f"{source}: checksum mismatch: the file is truncated or corrupted") from None
        raise CheckpointError(f"{source}: {fault}") from None
    if fh.read(_DIGEST) != digest.digest():
        raise CheckpointError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    return arrays, meta


def _parse_header(header_bytes, array_bytes, key=None):
    """``(meta, layout)`` of a header whose arrays must fill exactly ``array_bytes``; _Structure if
    it is not a well-formed one. ``layout``: name -> (shape tuple, little-endian dtype)."""
    try:
        header = json.loads(header_bytes.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _Structure(f"unreadable header: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise _Structure("unreadable header: not an object with a 'meta' object")
    entries = header.get("arrays")
    if not isinstance(entries, list):
        raise _Structure("unreadable header: no list of arrays")
    if key is not None and header.get("signed") != _SIGNED:
        raise _Structure(f"not signed: {KEY_ENV} is set and the header does not say it was signed")
    layout, total = {}, 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
            raise _Structure(f"array entry {i}: expected name, dtype and shape")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str) or not name or len(name) > 256:
            raise _Structure(f"array entry {i}: the name is not a short string")
        if name in layout:
            raise _Structure(f"array {name!r} appears twice")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _Structure(f"array {name!r} has unsupported dtype {str(dtype)[:40]}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        ):
            raise _Structure(f"array {name!r}: the shape is not a list of at most {_MAX_NDIM} integers")
        if any(d < 0 for d in shape):
            raise _Structure(f"array {name!r} has a negative dimension")
        dt = np.dtype(dtype).newbyteorder("<")
        count = 1
        for d in shape:
            count *= d  # Python integers: an absurd shape cannot wrap around
        total += count * dt.itemsize
        if total > array_bytes:
            raise _Structure(f"array {name!r} runs past the end of the file")
        layout[name] = (tuple(shape), dt)
    if total != array_bytes:
        raise _Structure(f"{array_bytes - total} unexpected trailing bytes")
    return header["meta"], layout


class _Structure(Exception):
    """A structural fault found while reading (its meaning depends on the checksum)."""


def _digest_matches(fh, size, key=None):
    """Whether the last 32 bytes of the file are the SHA-256 (HMAC under ``key``) of the ones before."""
    fh.seek(0)
    whole = _digest(key)
    remaining = size - _DIGEST
    while remaining > 0:
        chunk = fh.read(min(1 << 20, remaining))
        if not chunk:
            return False
        whole.update(chunk)
        remaining -= len(chunk)
    return hmac.compare_digest(fh.read(_DIGEST), whole.digest())


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
    # A fresh name, created exclusively and never through a symlink (O_EXCL already refuses an
    # existing name, a planted symlink included; O_NOFOLLOW says so twice): whatever another
    # user of the directory placed there is neither followed nor truncated.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, flags, 0o644)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary checkpoint file beside {path}")
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
        pid = name[len(stem) :].split(".")[0]  # .NAME.tmp-PID.RANDOM (older versions: .NAME.tmp-PID)
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
    start = fh.tell()
    size = fh.seek(0, os.SEEK_END) - start
    fh.seek(start)
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
        raise CheckpointError(f"{source}: not a streamrnn checkpoint (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is not supported")
    if _PREFIX.size + header_len + _DIGEST > size:
        raise CheckpointError(f"{source}: unreadable header: it runs past the end of the file")
    try:
        header = json.loads(fh.read(header_len).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{source}: unreadable header: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise CheckpointError(f"{source}: unreadable header: not an object with a 'meta' object")
    return header["meta"]


def save(path, arrays, meta):
    """Write ``arrays`` and ``meta`` to ``path`` atomically (a temporary file, fsync, rename).

    Parameters
    ----------
    path : str
        The file to (re)place.
    arrays : dict of str to ndarray
        The named arrays, written in this order.
    meta : dict
        JSON-serialisable header, with the arrays' layout and checksum added by :func:`pieces`.
    """
    write_atomic(path, pieces(arrays, meta))


PREVIOUS = ".prev"  # suffix of the previous generation (see save_generation)


def save_newest(path, data):
    """:func:`save_generation` with the previous generation kept as ``path + PREVIOUS``."""
    save_generation(path, data, previous=os.fspath(path) + PREVIOUS)


def generations(path, check=None):
    """The generations of ``path`` on disk, newest first: [(file, load(allocate) -> (arrays, meta))];
    ``check`` as in :func:`_read`."""
    path = os.fspath(path)
    return [
        (p, lambda allocate, p=p: load(p, allocate=allocate, check=check))
        for p in (path, path + PREVIOUS)
        if os.path.exists(p)
    ]


def load(path, allocate=None, check=None):
    """``(arrays, meta)`` of a checkpoint file, or CheckpointError; ``allocate`` as in :func:`loads`,
    ``check(layout, meta)`` as in :func:`_read` (called before anything is allocated)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            return _read(fh, st.st_size, path, allocate, check)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
