"""The compacted-topic checkpoint store, checkpoint fallbacks per partition, and shared mode's
parameter exchange, against the real broker."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

import streamrnn
from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError
from streamrnn.cli import main as cli_main
from streamrnn.connectors.base import ListSink
from streamrnn.connectors.checkpoint_store import DirectoryStore, KafkaTopicStore
from streamrnn.connectors.kafka import CompactedTopic
from streamrnn.scaleout import ParameterExchange, group_status
from streamrnn.service import Daemon, validate_config
from tests.kafka_broker import create_topic, delete_topic
from tests.reliability.common import FEATURES, MODEL, keyed_stream, produce, toml

pytestmark = pytest.mark.kafka


@pytest.fixture
def names(kafka_bootstrap):
    stem = uuid.uuid4().hex[:10]
    made = {"in": f"st-in-{stem}", "group": f"st-g-{stem}"}
    create_topic(kafka_bootstrap, made["in"], partitions=3)
    yield made
    for topic in (made["in"], f"{made['group']}-checkpoints", f"{made['group']}-model"):
        try:
            delete_topic(kafka_bootstrap, topic)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _config(bootstrap, names, tmp_path, **group):
    return validate_config(
        {
            "source": {"type": "kafka", "bootstrap": bootstrap, "topic": names["in"], "session_timeout_ms": 6000},
            "schema": {"features": FEATURES, "target": "y", "key": "key"},
            "model": dict(MODEL),
            "checkpoint": {"path": str(tmp_path / "store"), "every_records": 400, "every_seconds": 0},
            "daemon": {"batch_size": 100, "poll_timeout": 0.2, "progress": False},
            "group": {"name": names["group"], **group},
        }
    )


def _per_partition_reference(stream, where, good):
    refs = {}
    for part in sorted({p for p, _ in where.values()}):
        rows = sorted((where[i][1], stream[i][2]) for i in good if where[i][0] == part)
        m = streamrnn.Model(**MODEL)
        m.step_many(np.array([r[1][1] for r in rows]), np.array([[r[1][2]] for r in rows]), [r[1][0] for r in rows])
        refs[part] = m
    return refs


def _assert_partition_equals(arrays, meta, ref):
    ref_arrays, ref_meta = ref.state_arrays()
    assert meta["model"]["keys"] == ref_meta["keys"]
    for name, value in ref_arrays.items():
        assert np.array_equal(arrays[name], value), name


def _run(cfg, sink, max_records):
    cfg["daemon"]["max_records"] = max_records
    d = Daemon(cfg, sink=sink)
    d.run()
    return d


def test_kafka_topic_store_resumes_each_partition_and_falls_back_a_generation(tmp_path, kafka_bootstrap, names, capsys):
    n = 3000
    stream = keyed_stream(n, seed=5)
    where = produce(kafka_bootstrap, names["in"], stream)
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    refs = _per_partition_reference(stream, where, good)
    sink = ListSink()
    first = _run(_config(kafka_bootstrap, names, tmp_path, store="kafka"), sink, 1700)
    assert first.stats["records"] == 1700
    store = KafkaTopicStore(kafka_bootstrap, f"{names['group']}-checkpoints")
    try:
        streams = store.streams()
        assert streams and set(streams) <= {f"{names['in']}:{p}" for p in range(3)}
        # damage the newest checkpoint of one partition: the next owner must use the one before
        victim = streams[0]
        store._kv.put(victim, b"STRMRNN\x00 not a checkpoint at all")
        expected = {(names["in"], *where[i]) for i in good}
        second = _run_until(_config(kafka_bootstrap, names, tmp_path, store="kafka"), sink, expected)
        assert second.stats["records"] >= n - 1700
        streams = store.streams()
        assert streams == [f"{names['in']}:{p}" for p in range(3)]
        for stream_id in streams:  # the damaged newest was replaced by a good one
            (where_, load), *_ = store.generations(stream_id)
            arrays, meta = load(None)
            _assert_partition_equals(arrays, meta, refs[int(stream_id.rpartition(":")[2])])
        status = group_status(_config(kafka_bootstrap, names, tmp_path, store="kafka"))
        ends = {f"{names['in']}:{p}": max(o for q, o in where.values() if q == p) + 1 for p in range(3)}
        assert {p["partition"]: p["checkpoint_offset"] for p in status["partitions"]} == ends
        assert sum(p["keys"] for p in status["partitions"]) == len({stream[i][0] for i in good})
        # the same through the command line, as a table
        cfg_path = tmp_path / "status.toml"
        cfg_path.write_text(
            toml(
                {
                    "source": {"type": "kafka", "bootstrap": kafka_bootstrap, "topic": names["in"]},
                    "schema": {"features": FEATURES},
                    "group": {"store": "kafka"},
                }
            )
        )
        capsys.readouterr()
        assert cli_main(["status", str(cfg_path), "--group", names["group"]]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith(f"group {names['group']} (") and table[1] == "members: 0"
        assert table[2].split() == [
            "partition",
            "member",
            "end",
            "committed",
            "lag",
            "ckpt",
            "offset",
            "keys",
            "ckpt",
            "age",
            "s",
        ]
        for p, line in zip(status["partitions"], table[3:]):
            cols = line.split()
            assert cols[0] == p["partition"] and int(cols[5]) == p["checkpoint_offset"] and int(cols[6]) == p["keys"]
    finally:
        store.close()
    got = {tuple(o["position"]) for o in sink.records}
    assert got == {(names["in"], *where[i]) for i in good}


def _run_until(cfg, sink, expected, timeout=120):
    """Run a daemon in a thread until ``sink`` holds an output for every position in ``expected``."""
    d, errors = Daemon(cfg, sink=sink), []

    def run():
        try:
            d.run()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while (
        time.monotonic() < deadline
        and t.is_alive()
        and not expected <= {tuple(o["position"]) for o in list(sink.records)}
    ):
        time.sleep(0.1)
    d.stop()
    t.join(60)
    assert not errors, errors
    return d


def test_partition_without_usable_checkpoint_stops_the_member_before_any_record(tmp_path, kafka_bootstrap, names):
    stream = keyed_stream(600, seed=6)
    produce(kafka_bootstrap, names["in"], stream)
    cfg = _config(kafka_bootstrap, names, tmp_path)
    _run(cfg, ListSink(), 300)
    store = DirectoryStore(tmp_path / "store")
    target = store.streams()[0]
    damaged = [where for where, _ in store.generations(target)]
    for path in damaged:
        with open(path, "r+b") as fh:
            fh.seek(40)
            fh.write(b"\xff\xff\xff")
    sink = ListSink()
    with pytest.raises(CheckpointError, match=f"partition {target}: no usable checkpoint.*checksum mismatch"):
        _run(_config(kafka_bootstrap, names, tmp_path), sink, 600)
    assert sink.records == []
    # the damaged files are left as they were for inspection
    assert all(open(p, "rb").read()[40:43] == b"\xff\xff\xff" for p in damaged)


def test_parameter_exchange_averages_the_groups_latest_parameters(kafka_bootstrap, names):
    topic = f"{names['group']}-model"
    config = dict(MODEL, betas=(0.9, 0.99))  # a tuple: as validate_config leaves it
    rng = np.random.default_rng(0)
    ta, tb, tc = (rng.normal(size=7) for _ in range(3))
    tops = [CompactedTopic(kafka_bootstrap, topic, keep=1) for _ in range(3)]
    try:
        a = ParameterExchange(tops[0], "a", config)
        b = ParameterExchange(tops[1], "b", config, merge="records")
        c = ParameterExchange(tops[2], "c", config, stale_seconds=1.0)
        assert a.initial() is None
        np.testing.assert_array_equal(a.publish_and_merge(ta, 100), ta)  # alone in the group
        np.testing.assert_allclose(b.publish_and_merge(tb, 300), (100 * ta + 300 * tb) / 400, rtol=1e-15)
        # a member of another configuration is ignored
        foreign = ParameterExchange(tops[2], "foreign", {**config, "n_hidden": 9})
        foreign.publish_and_merge(np.full(7, 1e6), 10)
        np.testing.assert_allclose(c.publish_and_merge(tc, 5), (ta + tb + tc) / 3, rtol=1e-15)
        np.testing.assert_allclose(ParameterExchange(tops[0], "new", config).initial(), (ta + tb + tc) / 3, rtol=1e-15)
        time.sleep(1.5)  # a and b are now stale for c
        np.testing.assert_array_equal(c.publish_and_merge(tb, 5), tb)
        assert c.last_merged == 1
        # a damaged publication is ignored, not fatal
        tops[0].put("b", b"garbage")
        np.testing.assert_allclose(a.publish_and_merge(ta, 1), (ta + tb) / 2, rtol=1e-15)  # a and c's tb
    finally:
        for t in tops:
            t.close()


def test_two_members_in_shared_mode_average_parameters_and_keep_keys_per_partition(tmp_path, kafka_bootstrap, names):
    n = 9000
    stream = keyed_stream(n, seed=8)
    where = produce(kafka_bootstrap, names["in"], stream)
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    expected = {(names["in"], *where[i]) for i in good}
    members, sinks, threads, errors = [], [], [], []
    for name in ("a", "b"):
        cfg = _config(kafka_bootstrap, names, tmp_path, mode="shared", publish_every=300, member=name)
        sink = ListSink()
        d = Daemon(cfg, sink=sink)
        members.append(d)
        sinks.append(sink)

        def run(d=d):
            try:
                d.run()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads.append(threading.Thread(target=run, daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not errors:
        if expected <= {tuple(o["position"]) for s in sinks for o in list(s.records)}:
            break
        time.sleep(0.2)
    for d in members:
        d.stop()
    for t in threads:
        t.join(60)
    assert not errors, errors
    outs = [o for s in sinks for o in s.records]
    assert {tuple(o["position"]) for o in outs} == expected
    assert all(d.stats["merges"] >= 1 for d in members if d.stats["applied"] >= 300), [
        (d.stats["applied"], d.stats.get("merges")) for d in members
    ]
    # per-key state stayed with its partition; every partition was checkpointed at its end
    store = DirectoryStore(tmp_path / "store")
    for p in range(3):
        stream_id = f"{names['in']}:{p}"
        meta = store.newest_meta(stream_id)
        assert meta["positions"][stream_id] == max(o for q, o in where.values() if q == p) + 1
        part_keys = {stream[i][0] for i in good if where[i][0] == p}
        assert {k for _, k in meta["model"]["keys"]} == part_keys
        assert meta["mode"] == "shared"
    # the model topic holds each member's latest parameters; a newcomer starts from their average
    topic = CompactedTopic(kafka_bootstrap, f"{names['group']}-model", keep=1)
    try:
        published = {}
        for member in topic.keys():
            arrays, meta = ckpt.loads(topic.latest(member, refresh=False)[0][1])
            published[member] = arrays["theta"]
        assert set(published) == {"a", "b"}
        assert all(np.isfinite(t).all() for t in published.values())
    finally:
        topic.close()
    newcomer = Daemon(_config(kafka_bootstrap, names, tmp_path, mode="shared", member="c"), sink=ListSink())
    try:
        np.testing.assert_allclose(newcomer.parts.parameters, (published["a"] + published["b"]) / 2, rtol=1e-15)
    finally:
        newcomer.close()
    # averaging learns: on fresh records, the group's parameters predict far better than the initial ones
    held_out = [s_[2] for s_ in keyed_stream(2000, seed=99) if s_[2] is not None and not np.isnan(s_[2][2])]
    X = np.array([r[1] for r in held_out])
    Y = np.array([r[2] for r in held_out])

    def mse(theta):
        m = streamrnn.Model(**MODEL)
        m.theta[:] = theta
        return float(np.mean((m.step_many(X, None, [r[0] for r in held_out])[:, 0] - Y) ** 2))

    learned, initial = mse((published["a"] + published["b"]) / 2), mse(streamrnn.Model(**MODEL).theta)
    assert learned < 0.25 * initial, (learned, initial)
