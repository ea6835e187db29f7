"""Atomic, versioned, checksummed files of named NumPy arrays plus JSON metadata.

Layout (little-endian)::

    b"STRMRNN\\x00" | format version u32 | header length u64 | header (JSON, UTF-8)
    | array bytes, in header order | SHA-256 of everything before it (32 bytes)

The header names each array with its dtype and shape. A file is written to a
temporary name in the same directory, fsynced, renamed over the target and the
directory fsynced, so a reader sees either the old file or the new one, whole.
"""
import hashlib
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


def dumps(arrays, meta):
    """Serialise ``arrays`` (name -> ndarray) and JSON-able ``meta`` to bytes."""
    entries = []
    blobs = []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r} has unsupported dtype {arr.dtype}")
        entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        blobs.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    header = json.dumps({"meta": meta, "arrays": entries}, sort_keys=True).encode()
    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *blobs])
    return body + hashlib.sha256(body).digest()


def loads(data, source="<bytes>"):
    """Parse bytes written by :func:`dumps`; return ``(arrays, meta)`` or raise CheckpointError."""
    if len(data) < _PREFIX.size + _DIGEST or data[:8] != MAGIC:
        raise CheckpointError(f"{source}: not a streamrnn checkpoint (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format version {version} is not supported "
                              f"(this streamrnn reads version {FORMAT_VERSION})")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{source}: checksum mismatch: the file is truncated or corrupted")
    start = _PREFIX.size
    try:
        header = json.loads(body[start:start + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: unreadable header: {exc}") from None
    offset = start + header_len
    arrays = {}
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        count = int(np.prod(entry["shape"], dtype=np.int64))
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(body):
            raise CheckpointError(f"{source}: array {entry['name']!r} runs past the end of the file")
        arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(entry["shape"])
        arrays[entry["name"]] = arr.astype(dtype.newbyteorder("="), copy=True)
        offset += nbytes
    if offset != len(body):
        raise CheckpointError(f"{source}: {len(body) - offset} unexpected trailing bytes")
    return arrays, header["meta"]


def write_atomic(path, data):
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path, arrays, meta):
    write_atomic(path, dumps(arrays, meta))


def load(path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    return loads(data, source=path)
