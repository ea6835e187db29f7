"""Kafka transactions for exactly-once read-process-write (``processing_guarantee = "exactly-once"``).

One transaction per checkpoint interval holds the interval's outputs and dead letters, the model
state (chunked, in a compacted checkpoint topic) and the consumer offsets, so they commit together
or not at all; a ``read_committed`` consumer sees each output once.

- :class:`TransactionalProducer`: a producer with a ``transactional_id``; ``write`` adds records to
  the open transaction (begun lazily), ``commit`` adds the checkpoint's messages and the offsets
  and commits; :class:`TransactionalProducerProcess` is the same in a child process.
- :class:`TopicWriter`: one topic of a transactional producer as a daemon sink.
- :class:`CheckpointTopic`: the checkpoint's messages (chunks of at most ``chunk_bytes``, each keyed
  ``NAME/i``), and the newest committed checkpoints read back with ``read_committed``; also the
  *claim* each incarnation commits when it starts, which tells a fenced producer whether another
  daemon took over (a zombie) or its own transaction timed out.

A transaction the broker aborted because it outlived ``transaction_timeout_ms`` fences its
producer exactly as a newer producer with the same id does (kafka-python raises
``ProducerFencedError`` in both cases); :class:`ProducerFenced` carries that, and the daemon tells
the two apart by the claim. kafka-python 3.0.12 may also report a commit as done after the
transaction's records failed with ``InvalidProducerEpochError`` (it bumps the epoch and skips the
EndTxn); every send's result is therefore checked after the commit, and a failed one is reported
as :class:`ProducerFenced` too: the transaction is then not committed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from multiprocessing.connection import Connection
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerrors
from kafka.structs import OffsetAndMetadata

from ..base import BrokerUnavailable, SourceError
from .admin import ensure_topic, read_to_end
from .errors import bootstrap_timeout, translate_broker_errors
from .sink import EncodedOutput, encode_outputs
from .sink_process import _Duplex, _stop_sink_process, exit_when_orphaned, spawn_child

log = logging.getLogger("streamrnn.kafka")

Message = tuple[str, bytes | None, bytes | None]  # (topic, key, value) added to a transaction at commit

# errors that mean "this producer's transaction is over": fenced by a newer producer with the same
# transactional id, or aborted by the coordinator after the transaction timeout (same error)
_FENCING = (
    kerrors.ProducerFencedError,
    kerrors.InvalidProducerEpochError,
    kerrors.TransactionCoordinatorFencedError,
    kerrors.InvalidTxnStateError,
)


class ProducerFenced(SourceError):
    """The transaction cannot commit: another producer with the same transactional id took over, or
    the coordinator aborted it after ``transaction_timeout_ms``. Nothing of it is visible to a
    ``read_committed`` consumer. The producer is unusable; a new one must be initialised."""


class TransactionAborted(RuntimeError):
    """The transaction failed with an error that allowed aborting it (it was aborted): nothing of
    it is visible to a ``read_committed`` consumer; the producer may begin a new one."""


def _offsets(offsets: Mapping[str, int]) -> dict:
    out = {}
    for stream, off in offsets.items():
        topic, _, p = stream.rpartition(":")
        out[TopicPartition(topic, int(p))] = OffsetAndMetadata(int(off), "", -1)
    return out


def _fenced_cause(exc: BaseException) -> BaseException | None:
    """The fencing error behind ``exc`` (kafka-python wraps it in a KafkaError "error state"), or None."""
    if isinstance(exc, _FENCING):
        return exc
    text = str(exc)
    if isinstance(exc, kerrors.KafkaError) and any(e.__name__ in text for e in _FENCING):
        return exc
    return None


class TransactionalProducer:
    """A transactional Kafka producer: the daemon's outputs, dead letters and checkpoint, committed together.

    The constructor calls ``init_transactions``: a previous producer with the same
    ``transactional_id`` is fenced and its open transaction aborted (one in the middle of
    committing is awaited). Records written between commits form one transaction.

    Parameters
    ----------
    bootstrap : str
        The broker ("host:port").
    transactional_id : str
        Stable across restarts of the daemon that owns the partitions (fencing relies on it).
    transaction_timeout_ms : int
        The coordinator aborts a transaction open longer than this.
    max_request_size : int
        Largest request (a checkpoint chunk must fit).
    linger_ms, bootstrap_timeout_ms, max_block_ms : int
        As for :class:`~.sink.KafkaSink`.

    Raises
    ------
    BrokerUnavailable
        The broker did not answer.
    ProducerFenced
        ``init_transactions`` failed with a fencing error.
    """

    def __init__(
        self,
        bootstrap: str,
        transactional_id: str,
        transaction_timeout_ms: int = 60000,
        max_request_size: int = 1 << 20,
        linger_ms: int = 5,
        bootstrap_timeout_ms: int = 10000,
        max_block_ms: int = 60000,
    ):
        self.bootstrap, self.transactional_id = bootstrap, transactional_id
        with translate_broker_errors(bootstrap, f"opening a transactional producer {transactional_id!r}"):
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                transactional_id=transactional_id,
                transaction_timeout_ms=transaction_timeout_ms,
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=256 * 1024,
                max_request_size=max_request_size,
                max_block_ms=max_block_ms,
                **bootstrap_timeout(KafkaProducer, bootstrap_timeout_ms),
            )
        try:
            self._call("initialise transactions", self.producer.init_transactions)
        except BaseException:
            self.producer.close(timeout=0)
            raise
        self._open = False
        self._futures: list = []

    def _call(self, what: str, call, *args):
        try:
            return call(*args)
        except kerrors.KafkaTimeoutError as exc:
            raise BrokerUnavailable(f"Kafka broker at {self.bootstrap!r}: {what} timed out: {exc}") from None
        except kerrors.KafkaError as exc:
            if _fenced_cause(exc) is not None:
                raise ProducerFenced(
                    f"transactional id {self.transactional_id!r} is fenced ({type(exc).__name__}: {exc}): "
                    "a newer producer with this id took over, or the transaction outlived its timeout"
                ) from None
            raise

    def _begin(self) -> None:
        if not self._open:
            self._call("begin a transaction", self.producer.begin_transaction)
            self._open = True

    def write(self, topic: str, pairs: Iterable[EncodedOutput]) -> None:
        """Add (key, value) records to ``topic`` in the open transaction (begun if none is)."""
        self._begin()
        send, futures = self.producer.send, self._futures
        try:
            for key, value in pairs:
                futures.append(send(topic, key=key, value=value))
        except kerrors.KafkaError as exc:
            self._call("send", _reraise, exc)

    def commit(
        self, messages: Iterable[Message] = (), offsets: Mapping[str, int] | None = None, group: Any = None
    ) -> None:
        """Add ``messages`` (the checkpoint) and the consumer ``offsets`` ({"topic:partition": next
        offset}, with ``group``: the consumer's ``group_metadata()``) to the transaction and commit it.

        Raises
        ------
        ProducerFenced
            Fenced, or timed out: nothing of the transaction is visible.
        TransactionAborted
            Another error; the transaction was aborted.
        """
        try:
            self.write_messages(messages)
            if offsets and group is not None and getattr(group, "group_id", None):
                self._call(
                    "add the offsets to the transaction",
                    self.producer.send_offsets_to_transaction,
                    _offsets(offsets),
                    group,
                )
            self._call("commit the transaction", self.producer.commit_transaction)
        except ProducerFenced:
            self._open = False
            raise
        except BrokerUnavailable:
            raise
        except kerrors.KafkaError as exc:
            self._abort_after(exc)
        futures, self._futures = self._futures, []
        self._open = False
        for f in futures:
            if f.failed():
                if _fenced_cause(f.exception) is not None:
                    # kafka-python reports the commit as done although these records failed
                    raise ProducerFenced(
                        f"transactional id {self.transactional_id!r}: a record of the transaction failed "
                        f"({f.exception!r}); the transaction is not committed"
                    )
                raise TransactionAborted(f"a record of the transaction failed: {f.exception!r}")

    def write_messages(self, messages: Iterable[Message]) -> None:
        """Add (topic, key, value) messages to the open transaction (begun if none is)."""
        self._begin()
        send, futures = self.producer.send, self._futures
        try:
            for topic, key, value in messages:
                futures.append(send(topic, key=key, value=value))
        except kerrors.KafkaError as exc:
            self._call("send", _reraise, exc)

    def _abort_after(self, exc: BaseException) -> None:
        self._futures = []
        try:
            self._call("abort the transaction", self.producer.abort_transaction)
        except ProducerFenced:
            self._open = False
            raise
        except kerrors.KafkaError as abort_exc:
            log.warning("aborting the transaction after %r failed too: %r", exc, abort_exc)
        self._open = False
        raise TransactionAborted(f"the transaction failed and was aborted: {type(exc).__name__}: {exc}") from None

    def abort(self) -> None:
        """Abort the open transaction, if any (its records are never visible to read_committed)."""
        if self._open:
            self._futures = []
            self._open = False
            self._call("abort the transaction", self.producer.abort_transaction)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer; an open transaction is left to be aborted (by the coordinator's
        timeout, or by the next producer with the same id)."""
        self.producer.close(timeout=timeout_s)


def _reraise(exc):
    raise exc


# ---------------------------------------------------------------------------- in a child process
_CHILD_CODE = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from streamrnn.connectors.kafka.transactional import _child_entry; "
    "_child_entry(json.loads(sys.argv[2]))"
)
_ERRORS = {"fenced": ProducerFenced, "aborted": TransactionAborted, "unavailable": BrokerUnavailable}


class TransactionalProducerProcess:
    """A :class:`TransactionalProducer` in a child process (kafka-python's ``send`` costs ~18 µs a
    record of the daemon's GIL; there it runs on another core), with the same methods.

    ``write`` hands records over a pipe without waiting; ``commit`` waits for the child's commit
    (at most ``commit_timeout_s``, then :class:`BrokerUnavailable`: the child is stopped, its
    transaction left to be aborted). The child ignores SIGINT/SIGTERM and exits when the daemon
    closes it or dies. ``options`` go to the child's :class:`TransactionalProducer`.
    """

    def __init__(self, bootstrap: str, transactional_id: str, commit_timeout_s: float = 600.0, **options: Any):
        self.bootstrap, self.transactional_id = bootstrap, transactional_id
        self.commit_timeout_s = commit_timeout_s
        self._proc, self._conn = spawn_child(
            _CHILD_CODE, {"bootstrap": bootstrap, "transactional_id": transactional_id, "options": options}
        )
        self._finalizer = weakref.finalize(self, _stop_sink_process, self._conn, self._proc)
        self._reply(commit_timeout_s)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def _died(self, exc: BaseException) -> SourceError:
        return SourceError(
            f"the transactional producer process {self.transactional_id!r} died "
            f"(exit code {self._proc.poll()}): {exc!r}"
        )

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            raise self._died(exc) from None

    def _reply(self, timeout_s: float) -> None:
        try:
            if not self._conn.incoming.poll(timeout_s):
                self._finalizer.detach()
                self._proc.kill()
                self._proc.wait(10)
                raise BrokerUnavailable(
                    f"Kafka broker at {self.bootstrap!r}: the transaction of {self.transactional_id!r} did not "
                    f"complete within {timeout_s:g} s (it is left to be aborted)"
                )
            kind, text = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(exc) from None
        if kind != "ok":
            raise _ERRORS.get(kind, RuntimeError)(text)

    def write(self, topic: str, pairs: list[EncodedOutput]) -> None:
        """Hand (key, value) records for ``topic`` to the child's open transaction."""
        self._send(("write", topic, pairs))

    def commit(
        self, messages: Iterable[Message] = (), offsets: Mapping[str, int] | None = None, group: Any = None
    ) -> None:
        """As :meth:`TransactionalProducer.commit`, in the child (bounded by ``commit_timeout_s``)."""
        group = tuple(group) if group is not None else None
        self._send(("commit", list(messages), dict(offsets or {}), group))
        self._reply(self.commit_timeout_s)

    def abort(self) -> None:
        """Abort the child's open transaction, if any."""
        self._send(("abort",))
        self._reply(self.commit_timeout_s)

    def close(self) -> None:
        """Stop the child (an open transaction is left to be aborted) and reap it."""
        try:
            if self._proc.poll() is None:
                self._send(("close",))
                self._reply(30.0)
        except (SourceError, BrokerUnavailable):
            pass
        finally:
            self._finalizer()


def _child_entry(args: dict[str, Any]) -> None:
    """The child's entry point (see ``_CHILD_CODE``)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_when_orphaned(args["parent_pid"])
    conn = _Duplex(Connection(args["read_fd"], writable=False), Connection(args["write_fd"], readable=False))
    try:
        producer = TransactionalProducer(args["bootstrap"], args["transactional_id"], **args["options"])
    except Exception as exc:  # noqa: BLE001 - reported to the daemon
        _reply_error(conn, exc)
        return
    conn.send(("ok", ""))
    failed = None  # an error of a write, reported at the next commit
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the daemon is gone: its open transaction is left to abort
            producer.close(timeout_s=1.0)
            return
        kind = message[0]
        if kind == "write":
            if failed is None:
                try:
                    producer.write(message[1], message[2])
                except Exception as exc:  # noqa: BLE001 - writes get no reply
                    failed = exc
            continue
        try:
            if kind == "commit":
                if failed is not None:
                    failed, exc = None, failed
                    try:
                        producer.abort()
                    except Exception:  # noqa: BLE001 - the first error is what matters
                        pass
                    raise exc
                from kafka.structs import ConsumerGroupMetadata

                group = ConsumerGroupMetadata(*message[3]) if message[3] is not None else None
                producer.commit(message[1], message[2], group)
            elif kind == "abort":
                failed = None
                producer.abort()
            elif kind == "close":
                producer.close(timeout_s=1.0)
                conn.send(("ok", ""))
                return
            conn.send(("ok", ""))
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which decides
            _reply_error(conn, exc)


def _reply_error(conn: _Duplex, exc: BaseException) -> None:
    if isinstance(exc, ProducerFenced):
        kind = "fenced"
    elif isinstance(exc, TransactionAborted):
        kind = "aborted"
    elif isinstance(exc, BrokerUnavailable):
        kind = "unavailable"
    else:
        kind = "error"
    conn.send((kind, str(exc) if kind != "error" else f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------------- the daemon's sinks
class TopicWriter:
    """One topic of a transactional producer as a daemon sink: ``write`` adds outputs (dicts, JSON
    encoded, keyed by their ``key``) to the open transaction; ``flush`` and ``close`` do nothing
    (records become visible when the daemon commits the transaction with its checkpoint)."""

    def __init__(self, producer, topic: str):
        self.producer, self.topic = producer, topic

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add outputs to the open transaction."""
        self.producer.write(self.topic, encode_outputs(records))

    def flush(self) -> None:
        """Nothing: a transaction's records are made visible by its commit."""

    def close(self) -> None:
        """Nothing: the producer is closed by its owner."""


# ---------------------------------------------------------------------------- the checkpoint topic
_SEP = b"\n"


class CheckpointTopic:
    """Checkpoints of one daemon (``name``, its transactional id) in a compacted topic, chunked.

    A checkpoint of n bytes is ``ceil(n / chunk_bytes)`` messages keyed ``NAME/0``, ``NAME/1``, ...,
    each a JSON header line ``{"token", "i", "n"}`` and its chunk; all are written in one
    transaction, so a ``read_committed`` reader sees all of them or none, and compaction keeps the
    newest value of every chunk key. ``NAME/claim`` holds the incarnation that last took the
    transactional id over. The reader keeps the last ``keep`` values of each key, so the previous
    checkpoint is a fallback while compaction has not removed it.

    Group mode (one topic for every member of a consumer group, ``name`` the group's): each
    partition's checkpoint is a *part*, keyed ``NAME/PART/i`` (``part`` = "topic:partition"), and each
    member's claim is keyed ``NAME/claim/MEMBER``.

    Parameters
    ----------
    bootstrap, topic, name : str
    chunk_bytes : int
        Most checkpoint bytes per message.
    max_message_bytes : int
        The topic's ``max.message.bytes`` (created so if missing).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        name: str,
        chunk_bytes: int = 512 * 1024,
        max_message_bytes: int = 64 << 20,
        keep: int = 2,
        timeout_s: float = 30.0,
        bootstrap_timeout_ms: int = 10000,
    ):
        self.bootstrap, self.topic, self.name = bootstrap, topic, name
        self.chunk_bytes, self.keep, self.timeout_s = int(chunk_bytes), keep, timeout_s
        ensure_topic(
            bootstrap,
            topic,
            partitions=1,
            configs={
                "cleanup.policy": "compact",
                "max.message.bytes": max(max_message_bytes, self.chunk_bytes + 4096),
                "min.cleanable.dirty.ratio": 0.1,
                "segment.ms": 600_000,
            },
        )
        with translate_broker_errors(bootstrap, f"opening a read_committed consumer of {topic!r}"):
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                fetch_max_bytes=max(52428800, self.chunk_bytes * 2),
                max_partition_fetch_bytes=max(1 << 20, self.chunk_bytes * 2),
                **bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms),
            )
        self._tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or {0})]
        self.consumer.assign(self._tps)
        self.consumer.seek_to_beginning(*self._tps)
        self._values: dict[str, list[bytes]] = {}  # key -> its newest values, oldest first

    def __repr__(self) -> str:
        return f"CheckpointTopic({self.topic!r}, {self.name!r})"

    # -- keys
    def _chunk_key(self, i: int, part: str | None) -> str:
        return f"{self.name}/{part}/{i}" if part is not None else f"{self.name}/{i}"

    def _claim_key(self, member: str | None) -> str:
        return f"{self.name}/claim/{member}" if member is not None else f"{self.name}/claim"

    # -- writing (the messages go into the daemon's transaction)
    def messages(self, data: bytes, token: str, part: str | None = None) -> list[Message]:
        """The messages of one checkpoint's bytes (of partition ``part`` in group mode), tagged with ``token``."""
        n = max(1, -(-len(data) // self.chunk_bytes))
        out = []
        for i in range(n):
            head = json.dumps({"token": token, "i": i, "n": n}).encode()
            chunk = data[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
            out.append((self.topic, self._chunk_key(i, part).encode(), head + _SEP + chunk))
        return out

    def claim_message(self, incarnation: str, member: str | None = None) -> Message:
        """The message saying that ``incarnation`` has taken the transactional id (of ``member``) over."""
        body = {"incarnation": incarnation, "pid": os.getpid(), "host": os.uname().nodename, "at": time.time()}
        return (self.topic, self._claim_key(member).encode(), json.dumps(body).encode())

    # -- reading (read_committed)
    def refresh(self) -> None:
        """Read the topic's committed records up to its last stable offset (as of now)."""
        prefix = f"{self.name}/"
        for r in read_to_end(self.consumer, self._tps, self.bootstrap, self.topic, self.timeout_s):
            key = r.key.decode("utf-8", errors="replace") if r.key is not None else ""
            if not key.startswith(prefix):
                continue
            if r.value is None:
                self._values.pop(key, None)
                continue
            held = self._values.setdefault(key, [])
            held.append(r.value)
            del held[: -self.keep]

    def claim(self, member: str | None = None) -> str | None:
        """The incarnation of the newest committed claim (of ``member``; None: none)."""
        values = self._values.get(self._claim_key(member))
        if not values:
            return None
        try:
            return json.loads(values[-1]).get("incarnation")
        except (ValueError, AttributeError):
            return None

    def _chunks(self, i: int, part: str | None) -> list[tuple[dict, bytes]]:
        out = []
        for v in reversed(self._values.get(self._chunk_key(i, part), ())):
            head, sep, chunk = v.partition(_SEP)
            try:
                meta = json.loads(head) if sep else None
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                out.append((meta, chunk))
        return out

    def checkpoints(self, part: str | None = None) -> list[tuple[str, bytes | None]]:
        """The retained checkpoints (of ``part``), newest first, as (token, bytes or None when a chunk
        is missing)."""
        out = []
        for meta, _ in self._chunks(0, part):
            token, n = meta.get("token"), meta.get("n")
            if not isinstance(n, int) or n < 1 or n > 1 << 20:
                out.append((str(token), None))
                continue
            parts = []
            for i in range(n):
                found = next((c for m, c in self._chunks(i, part) if m.get("token") == token and m.get("i") == i), None)
                if found is None:
                    parts = None
                    break
                parts.append(found)
            out.append((str(token), None if parts is None else b"".join(parts)))
        return out

    def _where(self, part: str | None) -> str:
        return f"kafka:{self.topic}[{self.name}" + (f"/{part}]" if part is not None else "]")

    def generations(self, check=None, part: str | None = None) -> list:
        """[(where, load(allocate) -> (arrays, meta))] of the retained checkpoints (of ``part``), newest
        first (for :func:`streamrnn.service.checkpoints.first_usable`); ``check`` as in
        :func:`streamrnn.checkpoint.loads`."""
        from streamrnn import checkpoint as ckpt
        from streamrnn.checkpoint import CheckpointError

        def load(allocate, data, where):
            if data is None:
                raise CheckpointError(f"{where}: a chunk is missing")
            return ckpt.loads(data, where, allocate=allocate, check=check)

        where = self._where(part)
        return [
            (f"{where}@{token}", lambda a, d=data, w=where: load(a, d, w)) for token, data in self.checkpoints(part)
        ]

    def peek_newest(self, part: str | None = None) -> dict | None:
        """The newest retained checkpoint's metadata (of ``part``; header only, unverified), or None."""
        from streamrnn import checkpoint as ckpt

        for _, data in self.checkpoints(part):
            if data is not None:
                return ckpt.peek_meta(io.BytesIO(data), self._where(part))
        return None

    def parts(self) -> list[str]:
        """The parts (group mode: partitions) that have a checkpoint chunk, sorted."""
        prefix = f"{self.name}/"
        found = set()
        for key in self._values:
            rest = key[len(prefix) :]
            part, sep, i = rest.rpartition("/")
            if sep and i.isdigit() and not part.startswith("claim"):
                found.add(part)
        return sorted(found)

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close(autocommit=False)


# ---------------------------------------------------------------------------- a group's stable offsets
class StableOffsets:
    """The consumer group's committed offsets, read *stable* (KIP-447): while a transaction that holds
    offsets of a partition is still open, the broker answers UNSTABLE_OFFSET_COMMIT and the read waits
    (kafka-python retries it) until that transaction commits or aborts.

    A member taking a partition over (exactly-once group mode) reads it before the partition's
    checkpoint, so a previous owner's transaction can no longer commit behind its back. It is a
    consumer of its own (the rebalance callback that asks runs on the source consumer's I/O thread,
    where the source's blocking calls are refused) that never joins the group.
    """

    def __init__(self, bootstrap: str, group: str, client_id: str, bootstrap_timeout_ms: int = 10000):
        self.bootstrap, self.group = bootstrap, group
        with translate_broker_errors(bootstrap, f"opening a reader of group {group!r}'s offsets"):
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group,
                client_id=f"{client_id}-offsets",
                enable_auto_commit=False,
                isolation_level="read_committed",  # require_stable in OffsetFetch
                **bootstrap_timeout(KafkaConsumer, bootstrap_timeout_ms),
            )

    def read(self, streams: Iterable[str], timeout_s: float) -> dict[str, int | None]:
        """{stream: committed offset or None} once no open transaction holds offsets of them.

        Raises
        ------
        BrokerUnavailable
            Not stable (or no answer) within ``timeout_s``.
        """
        out = {}
        deadline = time.monotonic() + timeout_s
        for stream in streams:
            topic, _, p = stream.rpartition(":")
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                out[stream] = self.consumer.committed(TopicPartition(topic, int(p)), timeout_ms=left_ms)
            except kerrors.KafkaTimeoutError:
                raise BrokerUnavailable(
                    f"Kafka broker at {self.bootstrap!r}: group {self.group!r}'s offset of {stream} not stable "
                    f"within {timeout_s:g} s (an open transaction holds it)"
                ) from None
        return out

    def close(self) -> None:
        """Close the consumer (it never joined the group)."""
        self.consumer.close(autocommit=False)
