"""Three daemons in one consumer group over a 6-partition keyed topic; one is SIGKILLed mid-run.

The others take its partitions over (loading their state from the checkpoint store); at the end
every input has an output and, in independent mode, every partition's model is bit-identical to
one Model run over that partition's records and to a single daemon reading the whole topic.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import numpy as np
import pytest

import streamrnn
from streamrnn.connectors.checkpoint_store import DirectoryStore
from streamrnn.scaleout import group_status as _group_status
from streamrnn.service import Daemon, validate_config
from tests.reliability.common import (
    FEATURES,
    MODEL,
    LiveProducer,
    TopicReader,
    by_position,
    fresh_topics,
    keyed_stream,
    start_daemon,
    toml,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_RECORDS = 24_000
PARTITIONS = 6
RATE = 2_000  # records/s produced while the group runs


@pytest.fixture
def topics(kafka_bootstrap):
    yield from fresh_topics(kafka_bootstrap, "so", **{"in": PARTITIONS, "out": 3, "dead": 1})


def _config(bootstrap, topics, group, store_dir, member):
    return {
        "source": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["in"], "session_timeout_ms": 6000},
        "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["dead"]},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(store_dir), "every_records": 1500, "every_seconds": 0},
        "daemon": {"batch_size": 200, "poll_timeout": 0.2, "progress": False},
        "group": {"name": group, "mode": "independent", "member": member},
    }


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def group_status(cfg):
    """The group's status as ``streamrnn status`` reads it: retriable broker errors retried (right
    after a broker starts the group coordinator is not there yet: CoordinatorNotAvailableError)."""
    from streamrnn.connectors.kafka.errors import retry_retriable

    return retry_retriable(lambda: _group_status(cfg), cfg["source"]["bootstrap"], "reading the group's status")


def _owned(status):
    return {m["member"]: m["partitions"] for m in status["members"]}


def test_three_members_one_killed_every_input_answered_and_partitions_bit_identical(tmp_path, kafka_bootstrap, topics):
    t_start = time.monotonic()
    stream = keyed_stream(N_RECORDS, seed=11)
    group = f"so-{uuid.uuid4().hex[:8]}"
    store_dir = tmp_path / "store"
    members = ["member-a", "member-b", "member-c"]
    procs, logs = {}, {}
    for m in members:
        cfg_path = tmp_path / f"{m}.toml"
        cfg_path.write_text(toml(_config(kafka_bootstrap, topics, group, store_dir, m)))
        logs[m] = tmp_path / f"{m}.log"
        procs[m] = start_daemon(cfg_path, logs[m], verbose=True)
    cfg = validate_config(_config(kafka_bootstrap, topics, group, store_dir, "status"))
    outputs = TopicReader(kafka_bootstrap, topics["out"])
    producer = LiveProducer(kafka_bootstrap, topics["in"], stream, RATE)
    try:
        # all three members hold two partitions each before any record is produced
        _wait(
            lambda: sorted(len(p) for p in _owned(group_status(cfg)).values()) == [2, 2, 2],
            90,
            "three members with two partitions each",
        )
        victim = "member-b"
        victim_partitions = _owned(group_status(cfg))[victim]
        producer.start()
        _wait(
            lambda: producer.sent >= N_RECORDS // 3 and outputs.count() >= N_RECORDS // 4,
            120,
            "a third of the stream produced and answered",
        )
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        killed_at = outputs.count()
        # the survivors take the victim's partitions over (after the 6 s session timeout)
        owned = _wait(
            lambda: (lambda o: o if sorted(len(p) for p in o.values()) == [3, 3] else None)(_owned(group_status(cfg))),
            90,
            "the two survivors owning three partitions each",
        )
        assert victim not in owned
        producer.join(120)
        assert producer.error is None and len(producer.where) == N_RECORDS, producer.error
        good = [i for i, s in enumerate(stream) if s[2] is not None]
        expected = {(topics["in"], *producer.where[i]) for i in good}
        outputs.wait_for(
            lambda v: expected <= {tuple(o["position"]) for o in v}, timeout=120, what="an output for every good record"
        )
        ends = {}
        for p, off in producer.where.values():
            ends[f"{topics['in']}:{p}"] = max(ends.get(f"{topics['in']}:{p}", 0), off + 1)
        for m in members:
            if m != victim:
                procs[m].send_signal(signal.SIGTERM)
        for m in members:
            if m != victim:
                rc = procs[m].wait(60)
                assert rc == 0, logs[m].read_text(errors="replace")[-3000:]
        time.sleep(0.5)
        status = group_status(cfg)  # the group is empty now; the store holds every partition at its end
        assert status["members"] == []
        assert {p["partition"]: p["checkpoint_offset"] for p in status["partitions"]} == ends
        assert all(p["checkpoint_lag"] == 0 and p["lag"] == 0 for p in status["partitions"]), status
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        outputs.close()

    # 1. every input has an output; repeated outputs (after the takeover) are identical
    outs = by_position(outputs.values)
    assert expected <= set(outs)
    assert set(outs) == expected  # and nothing for the bad records
    bad = [i for i, s in enumerate(stream) if s[2] is None]

    # 2. each partition's final model is one Model over that partition's good records, in offset order
    store = DirectoryStore(store_dir)
    assert store.streams() == sorted(ends, key=lambda s: int(s.rpartition(":")[2]))
    final = {}
    for stream_id in store.streams():
        part = int(stream_id.rpartition(":")[2])
        rows = sorted((producer.where[i][1], stream[i][2]) for i in good if producer.where[i][0] == part)
        ref = streamrnn.Model(**MODEL)
        X = np.array([r[1][1] for r in rows])
        Y = np.array([[r[1][2]] for r in rows])
        preds, _ = ref.step_many(X, Y, [r[1][0] for r in rows], return_loss=True)
        (where, load), *_ = store.generations(stream_id)
        arrays, meta = load(None)
        assert meta["positions"] == {stream_id: ends[stream_id]}
        ref_arrays, ref_meta = ref.state_arrays()
        assert meta["model"]["keys"] == ref_meta["keys"]
        for name, value in ref_arrays.items():
            assert np.array_equal(arrays[name], value), (stream_id, name)
        for (off, _), p in zip(rows, preds[:, 0]):
            assert outs[(topics["in"], part, off)]["prediction"] == float(p)
        final[stream_id] = arrays
        if stream_id in victim_partitions:
            assert meta["member"] != victim  # finished by a survivor

    # 3. a single daemon reading the whole topic (one member) ends with the same partitions
    single_dir = tmp_path / "single"
    single = _config(kafka_bootstrap, topics, f"{group}-single", single_dir, "single")
    single.update(sink={}, dead_letter={})
    single["daemon"]["max_records"] = N_RECORDS
    d = Daemon(validate_config(single))
    d.run()
    assert d.stats["records"] == N_RECORDS and d.stats["applied"] == len(good)
    single_store = DirectoryStore(single_dir)
    for stream_id, arrays in final.items():
        (_, load), *_ = single_store.generations(stream_id)
        s_arrays, _ = load(None)
        assert set(s_arrays) == set(arrays)
        for name in arrays:
            assert np.array_equal(s_arrays[name], arrays[name]), (stream_id, name)

    # the survivors loaded the victim's partitions from the checkpoints it had saved
    survivors_log = "".join(logs[m].read_text(errors="replace") for m in members if m != victim)
    takeovers = [line for line in survivors_log.splitlines() if "resumed from" in line and "saved by member-b" in line]
    assert {
        line.split("partition ")[1].split(":")[0] + ":" + line.split("partition ")[1].split(":")[1]
        for line in takeovers
    } == set(victim_partitions), takeovers
    print(
        json.dumps(
            {
                "test": "scaleout_kill",
                "records": N_RECORDS,
                "good": len(good),
                "bad": len(bad),
                "partitions": PARTITIONS,
                "members": 3,
                "killed": victim,
                "victim_partitions": victim_partitions,
                "outputs_at_kill": killed_at,
                "outputs_received": len(outputs.values),
                "duplicates": len(outputs.values) - len(outs),
                "victim_checkpoints_loaded": len(takeovers),
                "keys": sum(p["keys"] for p in status["partitions"]),
                "wall_s": round(time.monotonic() - t_start, 1),
            }
        )
    )
