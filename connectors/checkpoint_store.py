"""Where the members of a consumer group keep per-partition checkpoints (scale-out).

A partition's checkpoint holds the state of every key whose records come from it and the next
offset to read, so whichever member Kafka assigns the partition to next loads it and goes on. Two
stores, one interface (``save``, ``generations``, ``newest_meta``, ``streams``, ``close``):

- :class:`DirectoryStore`: a directory every member can reach (a shared filesystem): one file per
  partition, ``DIR/<topic>/<partition>.ckpt``, with the previous generation as ``.prev``, written
  atomically like the daemon's single checkpoint.
- :class:`KafkaTopicStore`: a compacted Kafka topic keyed by ``"topic:partition"``; needs no shared
  disk. Each value is one whole checkpoint, so a partition's state must fit ``max_message_bytes``.

Each checkpoint carries a random ``token``; ``save`` takes the token of the checkpoint the writer
last loaded or wrote and refuses to write if the store's newest is another one. So a member that
lost its partitions without noticing yet (a "zombie", e.g. after a long pause past the session
timeout) cannot overwrite its new owner's progress. (A check, then a write: not an atomic
compare-and-swap, so it narrows the window of such a race to one write rather than closing it.)
"""

from __future__ import annotations

import io
import logging
import os
import uuid

from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError

log = logging.getLogger("streamrnn.store")


def _split(stream):
    topic, _, partition = stream.rpartition(":")
    if not topic or not partition.isdigit():
        raise ValueError(f'not a partition stream id ("topic:partition"): {stream!r}')
    return topic, int(partition)


class _Store:
    def newest_token(self, stream):
        """The token of the newest checkpoint of ``stream`` (None: none stored, or its header is
        unreadable)."""
        try:
            return (self.newest_meta(stream) or {}).get("token")
        except CheckpointError:
            return None

    def save(self, stream, arrays, meta, expect=None):
        """Write ``stream``'s checkpoint if the store's newest is still the one of token ``expect``
        (the one the writer loaded or last wrote); its new token, or None (nothing written) if
        another writer has saved the partition since."""
        newest = self.newest_token(stream)
        if newest != expect:
            log.warning(
                "not saving %s: its checkpoint in the store was written by another member since "
                "this one took it (the partition has moved on without this member)",
                stream,
            )
            return None
        token = uuid.uuid4().hex
        self._write(stream, ckpt.pieces(arrays, {**meta, "token": token}))
        return token


class DirectoryStore(_Store):
    """Per-partition checkpoint files under ``path`` (created if missing)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)

    def __repr__(self):
        return f"DirectoryStore({self.path!r})"

    def file(self, stream):
        """The checkpoint file of ``stream`` (``TOPIC:PARTITION``): ``PATH/TOPIC/PARTITION.ckpt``."""
        topic, partition = _split(stream)
        return os.path.join(self.path, topic, f"{partition}.ckpt")

    def _write(self, stream, pieces):
        path = self.file(stream)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ckpt.save_newest(path, pieces)

    def generations(self, stream):
        """[(where, load(allocate) -> (arrays, meta))], newest first; [] if none is stored."""
        return ckpt.generations(self.file(stream))

    def newest_meta(self, stream):
        """The newest generation's metadata (header only, unverified), or None."""
        for p in (self.file(stream), self.file(stream) + ckpt.PREVIOUS):
            try:
                with open(p, "rb") as fh:
                    return ckpt.peek_meta(fh, p)
            except FileNotFoundError:
                continue
        return None

    def streams(self):
        """The streams (``TOPIC:PARTITION``) that have a checkpoint file, sorted by topic and partition."""
        out = []
        for topic in sorted(os.listdir(self.path)):
            folder = os.path.join(self.path, topic)
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                stem = (
                    name[: -len(".ckpt")]
                    if name.endswith(".ckpt")
                    else name[: -len(".ckpt.prev")]
                    if name.endswith(".ckpt.prev")
                    else None
                )
                if stem is not None and stem.isdigit():
                    out.append(f"{topic}:{stem}")
        return sorted(set(out), key=_split)

    def close(self):
        """Nothing to release (files are opened per read and write)."""
        pass


class KafkaTopicStore(_Store):
    """Per-partition checkpoints as the values of a compacted Kafka topic."""

    def __init__(self, bootstrap, topic, max_message_bytes=64 << 20):
        from .kafka import CompactedTopic

        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self._kv = CompactedTopic(bootstrap, topic, max_message_bytes=max_message_bytes, keep=2)

    def __repr__(self):
        return f"KafkaTopicStore({self.topic!r})"

    def _write(self, stream, pieces):
        data = b"".join(pieces)
        if len(data) > self.max_message_bytes:
            raise OSError(
                f"checkpoint of {stream} is {len(data)} bytes, more than the store's "
                f"max_message_bytes = {self.max_message_bytes}"
            )
        self._kv.put(stream, data)

    def generations(self, stream):
        """[(where, load(allocate) -> (arrays, meta))] of the topic's retained values for ``stream``,
        newest first; [] if none is stored.
        """
        values = self._kv.latest(stream)
        where = f"kafka:{self.topic}[{stream}]"
        return [
            (f"{where}#{i}", lambda allocate, v=v, i=i: ckpt.loads(v, f"{where}#{i}", allocate=allocate))
            for i, (_, v) in enumerate(values)
        ]

    def newest_meta(self, stream, refresh=True):
        """The newest value's metadata (header only, unverified), or None; ``refresh`` reads the topic
        to its end first.
        """
        values = self._kv.latest(stream, refresh=refresh)
        return ckpt.peek_meta(io.BytesIO(values[0][1]), f"kafka:{self.topic}[{stream}]") if values else None

    def streams(self):
        """The streams (``TOPIC:PARTITION``) with a checkpoint in the topic, sorted."""
        return sorted((k for k in self._kv.keys() if k and ":" in k), key=_split)

    def close(self):
        """Close the topic's producer and consumer."""
        self._kv.close()
