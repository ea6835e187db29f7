"""The Kafka sink in a child process: outputs, flush semantics and every failure path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from streamrnn.connectors.base import BrokerUnavailable, SourceError
from streamrnn.connectors.kafka import KafkaSinkProcess
from tests.reliability.common import ROOT, TopicReader, fresh_topics


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped) is gone too
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_unreachable_broker_is_reported_by_the_constructor():
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        KafkaSinkProcess("127.0.0.1:1", "nowhere", bootstrap_timeout_ms=1000)
    assert time.monotonic() - t0 < 30


@pytest.fixture
def topic(kafka_bootstrap):
    yield from fresh_topics(kafka_bootstrap, "sinkproc", out=2)


@pytest.mark.kafka
def test_outputs_arrive_in_order_and_signals_do_not_reach_the_child(kafka_bootstrap, topic):
    sink = KafkaSinkProcess(kafka_bootstrap, topic["out"])
    reader = TopicReader(kafka_bootstrap, topic["out"])
    try:
        os.kill(sink._proc.pid, signal.SIGTERM)  # a Ctrl-C or SIGTERM to the group: ignored
        os.kill(sink._proc.pid, signal.SIGINT)
        rows = [
            {"position": ["in", 0, i], "key": f"k{i % 3}", "prediction": i / 7, "target": None, "loss": None}
            for i in range(3000)
        ]
        for a in range(0, len(rows), 700):
            sink.write(rows[a : a + 700])
        sink.flush()  # returns once every output is acknowledged
        reader.wait_for(lambda v: len(v) >= len(rows), 30, "every output")
        got = reader.snapshot()
        assert sorted(got, key=lambda o: o["position"][2]) == rows
        for k in ("k0", "k1", "k2"):  # per key (one partition each): in write order
            seq = [o["position"][2] for o in got if o["key"] == k]
            assert seq == sorted(seq)
    finally:
        reader.close()
        sink.close()
    assert not _alive(sink._proc.pid)


@pytest.mark.kafka
def test_a_failed_write_is_reported_at_the_next_flush_and_the_pipe_stays_in_step(kafka_bootstrap, topic):
    sink = KafkaSinkProcess(kafka_bootstrap, topic["out"])
    try:
        sink._conn.send(("write", [("not bytes", 1)]))  # kafka-python refuses a str key
        with pytest.raises(RuntimeError, match="TypeError"):
            sink.flush()
        sink.write([{"key": "a", "prediction": 1.0}])
        sink.flush()  # the next exchange is answered by its own reply
    finally:
        sink.close()


@pytest.mark.kafka
def test_a_dead_child_is_an_error_not_a_hang(kafka_bootstrap, topic):
    sink = KafkaSinkProcess(kafka_bootstrap, topic["out"])
    sink._proc.kill()
    sink._proc.wait(10)
    with pytest.raises(SourceError, match="sink process .* died"):
        sink.write([{"key": "a", "prediction": 1.0}])
        sink.flush()
    sink.close()


@pytest.mark.kafka
def test_the_child_delivers_what_it_holds_and_exits_when_the_daemon_is_killed(kafka_bootstrap, topic):
    code = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from streamrnn.connectors.kafka import KafkaSinkProcess
sink = KafkaSinkProcess({kafka_bootstrap!r}, {topic["out"]!r})
sink.write([{{"position": ["in", 0, i], "key": "k", "prediction": float(i)}} for i in range(500)])
print(sink._proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the sink process outlived the daemon"
    reader = TopicReader(kafka_bootstrap, topic["out"])
    try:
        reader.wait_for(lambda v: len(v) >= 500, 30, "the outputs written before the kill")
        assert sorted(o["position"][2] for o in reader.snapshot()) == list(range(500))
    finally:
        reader.close()
