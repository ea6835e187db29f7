"""The daemon against a real Kafka broker: dead letters, output topic, kill -9 and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.kafka

from tests.kafka_broker import require_kafka_python  # noqa: E402

kafka = require_kafka_python()  # fails, not skips, under STREAMRNN_REQUIRE_KAFKA=1
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

import streamrnn  # noqa: E402
from streamrnn.connectors.kafka import await_offset_validation  # noqa: E402
from streamrnn.service import Daemon, load_checkpoint, validate_config  # noqa: E402
from tests.kafka_broker import create_topic, delete_topic  # noqa: E402
from tests.test_daemon import MODEL, ROOT, _toml, assert_same_weights, make_stream, reference_weights  # noqa: E402


@pytest.fixture
def topics(kafka_bootstrap):
    stem = uuid.uuid4().hex[:10]
    names = {k: f"streamrnn-daemon-{k}-{stem}" for k in ("in", "out", "dead")}
    # one input partition: the order in which records reach the shared parameters is then
    # the offset order, so the final weights are comparable bit for bit
    create_topic(kafka_bootstrap, names["in"], partitions=1)
    create_topic(kafka_bootstrap, names["out"], partitions=1)
    create_topic(kafka_bootstrap, names["dead"], partitions=1)
    yield names
    for n in names.values():
        try:
            delete_topic(kafka_bootstrap, n)
        except Exception:  # noqa: BLE001
            pass


def produce(bootstrap, topic, lines):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for line in lines:
        p.send(topic, key=b"k", value=line.encode())
    p.flush()
    p.close()


def consume_all(bootstrap, topic, n, timeout=60):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        batches = c.poll(timeout_ms=500)
        if not batches:
            await_offset_validation(c)  # as KafkaSource does (kafka-python#3106)
        for recs in batches.values():
            out.extend(json.loads(r.value) for r in recs)
    c.close()
    return out


def kafka_config(tmp_path, bootstrap, topics, group, n, every=50):
    return {
        "source": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["in"], "group": group},
        "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["dead"]},
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp_path / "k.ckpt"), "every_records": every, "every_seconds": 0},
        "daemon": {"batch_size": 64, "poll_timeout": 0.2, "progress": False, "max_records": n},
    }


def test_kafka_mixed_records_to_output_and_dead_letter_topics(tmp_path, kafka_bootstrap, topics):
    lines, good, bad = make_stream(n=300, seed=2)
    produce(kafka_bootstrap, topics["in"], lines)
    group = f"g-{uuid.uuid4().hex[:8]}"
    d = Daemon(validate_config(kafka_config(tmp_path, kafka_bootstrap, topics, group, 300)))
    stats = d.run()
    assert (stats["records"], stats["applied"], stats["dead_letters"]) == (300, len(good), len(bad))
    assert_same_weights(d.model.get_weights(), reference_weights(good)[0])
    outs = consume_all(kafka_bootstrap, topics["out"], len(good))
    assert [o["position"] for o in outs] == [[topics["in"], 0, g[0]] for g in good]
    dead = consume_all(kafka_bootstrap, topics["dead"], len(bad))
    assert [x["position"][2] for x in dead] == sorted(bad)
    for x in dead:
        assert bad[x["position"][2]] in x["reason"]
    # offsets were committed (after the checkpoint) for the group
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    assert c.committed(TopicPartition(topics["in"], 0)) == 300
    c.close()
    _, meta, _ = load_checkpoint(str(tmp_path / "k.ckpt"))
    assert meta["positions"] == {f"{topics['in']}:0": 300}


def _daemon(cfg_path):
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "streamrnn", "run", str(cfg_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kafka_kill9_and_restart_bit_identical(tmp_path, kafka_bootstrap, topics):
    lines, good, bad = make_stream(n=500, seed=3)
    first = 260
    produce(kafka_bootstrap, topics["in"], lines[:first])
    group = f"g-{uuid.uuid4().hex[:8]}"
    cfg = kafka_config(tmp_path, kafka_bootstrap, topics, group, len(lines), every=70)
    cfg_path = tmp_path / "k.toml"
    cfg_path.write_text(_toml(cfg))
    p = _daemon(cfg_path)
    n_first = sum(1 for g in good if g[0] < first)
    try:
        got = consume_all(kafka_bootstrap, topics["out"], n_first, timeout=60)
    finally:
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=10)
    assert len(got) == n_first, err[-3000:]
    _, meta, _ = load_checkpoint(str(tmp_path / "k.ckpt"))
    ckpt_at = meta["positions"][f"{topics['in']}:0"]
    assert ckpt_at < first  # outputs beyond the checkpoint exist: they will be redone
    produce(kafka_bootstrap, topics["in"], lines[first:])
    p = _daemon(cfg_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    arrays, meta, _ = load_checkpoint(str(tmp_path / "k.ckpt"))
    assert meta["positions"] == {f"{topics['in']}:0": len(lines)}
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]).get_weights(), reference_weights(good)[0])
    outs = consume_all(kafka_bootstrap, topics["out"], len(good) + (n_first - sum(1 for g in good if g[0] < ckpt_at)))
    by_pos = {}
    for o in outs:  # duplicates after the crash are identical
        assert by_pos.setdefault(o["position"][2], o) == o
    assert sorted(by_pos) == [g[0] for g in good]


def test_kafka_startup_errors(tmp_path, kafka_bootstrap):
    from streamrnn.connectors.base import SourceError
    from streamrnn.connectors.kafka import KafkaSource

    with pytest.raises(SourceError, match="does not exist"):
        KafkaSource(kafka_bootstrap, f"no-such-topic-{uuid.uuid4().hex[:8]}", group=None)
    with pytest.raises(SourceError, match="unreachable"):
        KafkaSource("127.0.0.1:1", "t", group=None, bootstrap_timeout_ms=2000)


def test_a_rebalance_after_a_resume_applies_nothing_twice(tmp_path, kafka_bootstrap, topics):
    """A daemon resumed from a checkpoint keeps going from where it is, not from where it resumed, when
    another consumer joins its group and leaves again (two rebalances; the partition may move to the
    intruder and back): the final weights are bit-identical to one pass over the good records."""
    lines, good, _ = make_stream(n=500, seed=5)
    produce(kafka_bootstrap, topics["in"], lines[:300])
    group = f"g-{uuid.uuid4().hex[:8]}"
    cfg = kafka_config(tmp_path, kafka_bootstrap, topics, group, 150, every=40)
    Daemon(validate_config(cfg)).run()  # the first 150 records, then a checkpoint
    cfg["daemon"]["max_records"] = len(lines)  # the count resumes with the checkpoint: all of them
    cfg_path = tmp_path / "k.toml"
    cfg_path.write_text(_toml(cfg))
    p = _daemon(cfg_path)  # resumes at 150
    try:
        n_before = sum(1 for g in good if g[0] < 300)
        got = consume_all(kafka_bootstrap, topics["out"], n_before, timeout=90)
        assert len(got) >= n_before  # the resumed daemon is past its resume position
        intruder = KafkaConsumer(
            topics["in"], bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        deadline = time.monotonic() + 30
        while not intruder.assignment() and time.monotonic() < deadline:
            intruder.poll(timeout_ms=200, max_records=1)  # joins the group: a rebalance
        intruder.close(autocommit=False)  # leaves: another rebalance
        produce(kafka_bootstrap, topics["in"], lines[300:])
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    arrays, meta, _ = load_checkpoint(str(tmp_path / "k.ckpt"))
    assert meta["positions"] == {f"{topics['in']}:0": len(lines)}
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]).get_weights(), reference_weights(good)[0])
