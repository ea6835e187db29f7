"""A :class:`~.sink.KafkaSink` in a child process, and the child's entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from multiprocessing.connection import Connection
from typing import Any

from ..base import BrokerUnavailable, SourceError, batch_gc
from .sink import KafkaSink, encode_outputs

# The child's program: the parent's import path first, so it runs the same streamrnn.
_SINK_CHILD_CODE = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from streamrnn.connectors.kafka.sink_process import _sink_process_entry; "
    "_sink_process_entry(json.loads(sys.argv[2]))"
)

# the child's error replies -> the exception the daemon raises (the most specific first; any
# other kind, "error", is a RuntimeError)
_ERROR_KINDS = {"unavailable": BrokerUnavailable, "source-error": SourceError}


class KafkaSinkProcess:
    """A :class:`~.sink.KafkaSink` run in a child process, for the daemon's predictions.

    kafka-python's ``send`` is pure Python, about 18 µs a record with the GIL held: as much as the
    rest of the daemon's per-record work together. In a child process it runs on another core
    while the daemon decodes and learns the next batch. The daemon encodes the outputs (orjson)
    and hands them over a pipe a batch at a time; ``flush`` waits until the child's producer has
    every output acknowledged (or raises :class:`BrokerUnavailable`, as :class:`KafkaSink` does),
    so checkpoints keep their meaning. The child ignores SIGINT/SIGTERM (the daemon decides when to
    stop) and exits when the daemon closes it or dies (the pipe ends), after a bounded attempt to
    deliver what it holds. ``sink_options`` go to the child's :class:`KafkaSink`.
    """

    def __init__(self, bootstrap: str, topic: str, **sink_options: Any):
        self.bootstrap, self.topic = bootstrap, topic
        # A plain child interpreter on two pipes, not multiprocessing: its "spawn" re-imports the
        # parent's __main__ (breaking scripts without a main guard), and a fork would copy the
        # client threads' locks.
        self._proc, self._conn = spawn_child(
            _SINK_CHILD_CODE, {"bootstrap": bootstrap, "topic": topic, "options": sink_options}
        )
        # however this process ends (an exception before close(), interpreter exit), the child sees
        # its pipe end and exits (it ignores SIGTERM: the daemon decides when to stop)
        self._finalizer = weakref.finalize(self, _stop_sink_process, self._conn, self._proc)
        self._reply()  # raises what the child's KafkaSink constructor raised

    def _died(self, exc: BaseException) -> SourceError:
        return SourceError(f"the Kafka sink process for {self.topic!r} died (exit code {self._proc.poll()}): {exc!r}")

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # a closed or broken pipe
            raise self._died(exc) from None

    def _call(self, *message: Any) -> None:
        self._send(message)
        self._reply()

    def _reply(self) -> None:
        try:
            kind, text = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(exc) from None
        if kind == "ok":
            return
        raise _ERROR_KINDS.get(kind, RuntimeError)(text)

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Encode outputs here and hand them to the sink process, which produces them in order."""
        self._send(("write", encode_outputs(records)))

    def flush(self) -> None:
        """Wait until the sink process has every output acknowledged; its error is raised here."""
        self._call("flush")

    def close(self) -> None:
        """Ask the sink process to deliver what it holds and exit, then reap it (bounded)."""
        try:
            if self._proc.poll() is None:
                self._call("close")
        finally:
            self._finalizer()


class _Duplex:
    """One end of the two pipes between the daemon and its sink process."""

    def __init__(self, incoming: Connection, outgoing: Connection):
        self.incoming, self.outgoing = incoming, outgoing

    def send(self, message: tuple) -> None:
        self.outgoing.send(message)

    def recv(self) -> tuple:
        return self.incoming.recv()

    def close(self) -> None:
        self.outgoing.close()
        self.incoming.close()


# How long a child outlives its parent: time to deliver what it holds once its pipe closes.
ORPHAN_GRACE_S = 60.0


def exit_when_orphaned(parent_pid: int, grace_s: float = ORPHAN_GRACE_S) -> None:
    """In a child: end this process ``grace_s`` seconds after its parent ``parent_pid`` died.

    A child stuck in a client call that waits without limit (kafka-python's
    ``send_offsets_to_transaction`` after a broker restart) never reads its closed pipe and ignores
    SIGTERM; without this it would outlive a SIGKILLed daemon for good. A watchdog thread checks
    the parent once a second.
    """

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        time.sleep(grace_s)
        os._exit(3)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def spawn_child(code: str, args: dict) -> tuple[subprocess.Popen, _Duplex]:
    """A child interpreter running ``code`` (it reads ``sys.argv[1]``, the parent's path, and
    ``sys.argv[2]``, ``args`` as JSON with ``read_fd``/``write_fd`` and ``parent_pid`` added), and
    the pipe pair to it."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    args = {**args, "read_fd": to_child_r, "write_fd": to_parent_w, "parent_pid": os.getpid()}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps([p for p in sys.path if p]), json.dumps(args)],
            pass_fds=(to_child_r, to_parent_w),
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(to_child_r)
        os.close(to_parent_w)
    return proc, _Duplex(Connection(to_parent_r, writable=False), Connection(to_child_w, readable=False))


def _stop_sink_process(conn: _Duplex, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    conn.close()  # the child delivers what it holds (bounded), then exits
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _sink_process_entry(args: dict[str, Any]) -> None:
    """The child's entry point (see ``_SINK_CHILD_CODE``)."""
    exit_when_orphaned(args["parent_pid"])
    conn = _Duplex(Connection(args["read_fd"], writable=False), Connection(args["write_fd"], readable=False))
    with batch_gc():  # outputs arrive a batch at a time, as in the daemon
        _sink_process_main(conn, args["bootstrap"], args["topic"], args["options"])


def _reply_error(conn: _Duplex, exc: Exception) -> None:
    for kind, error in _ERROR_KINDS.items():
        if isinstance(exc, error):
            conn.send((kind, str(exc)))
            return
    conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _sink_process_main(conn: _Duplex, bootstrap: str, topic: str, options: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sink = KafkaSink(bootstrap, topic, **options)
    except Exception as exc:  # noqa: BLE001 - reported to the daemon
        _reply_error(conn, exc)
        return
    conn.send(("ok", ""))
    failed = None  # an error of a write, reported at the next flush or close
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the daemon is gone: deliver what we can, briefly
            sink.flush_timeout_s = min(sink.flush_timeout_s, 5.0)
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - nobody to tell
                pass
            return
        if message[0] == "write":
            try:
                sink.write_encoded(message[1])
            except Exception as exc:  # noqa: BLE001 - writes get no reply
                failed = failed or exc
            continue
        try:
            if failed is not None:
                failed, exc = None, failed
                raise exc
            if message[0] == "flush":
                sink.flush()
            elif message[0] == "close":
                sink.close()
                conn.send(("ok", ""))
                return
            conn.send(("ok", ""))
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which decides
            _reply_error(conn, exc)
