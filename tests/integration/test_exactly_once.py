"""Exactly-once end to end with Kafka transactions (issue 18), against the real broker.

A read_committed consumer of the output (and dead-letter) topic must see every input's output
exactly once, each equal to an uninterrupted run's, and the final checkpoint (in the checkpoint
topic) must hold a model bit-identical to that run's: under 20 SIGKILLs, a fenced zombie, a
transaction that outlives its timeout, and a broker restart mid-transaction.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from tests.reliability.common import (
    FEATURES,
    MODEL,
    TopicReader,
    assert_same_state,
    fresh_topics,
    keyed_stream,
    produce,
    reference,
    start_daemon,
    toml,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SEED = 20261125


@pytest.fixture
def topics(kafka_bootstrap):
    yield from fresh_topics(kafka_bootstrap, "eos", **{"in": 2, "out": 2, "dead": 1})


def eos_config(tmp_path, bootstrap, topics, n_records, **daemon):
    group = f"eos-{uuid.uuid4().hex[:8]}"
    return {
        "source": {
            "type": "kafka",
            "bootstrap": bootstrap,
            "topic": topics["in"],
            "group": group,
            "instance_id": "eos-member-0",
        },
        "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["dead"]},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        # a state of ~170 kB in chunks of 16 kB: each checkpoint spans about 11 messages
        "checkpoint": {"every_records": 250, "every_seconds": 2, "chunk_bytes": 16384, "topic": f"{group}-ck"},
        "daemon": {
            "batch_size": 50,
            "poll_timeout": 0.2,
            "max_records": n_records,
            "progress": False,
            "processing_guarantee": "exactly-once",
            **daemon,
        },
    }


def write_config(tmp_path, cfg):
    path = tmp_path / "eos.toml"
    path.write_text(toml(cfg))
    return path


def final_checkpoint(bootstrap, cfg):
    """The newest committed checkpoint of the daemon (arrays, meta), read with read_committed."""
    from streamrnn import checkpoint as ckpt
    from streamrnn.connectors.kafka.transactional import CheckpointTopic
    from streamrnn.service.config import validate_config

    c = validate_config(cfg)
    store = CheckpointTopic(bootstrap, c["checkpoint"]["topic"], c["daemon"]["transactional_id"])
    try:
        store.refresh()
        token, data = store.checkpoints()[0]
        assert data is not None
        n_chunks = len(data) // 16384 + 1
        return ckpt.loads(data, "final"), n_chunks
    finally:
        store.close()


def check_exactly_once(bootstrap, topics, stream, where, cfg, outputs, n_records):
    """Each good input's output exactly once (read_committed), equal to the uninterrupted run's; the
    dead letters exactly once; the final model bit-identical. Returns (missing, duplicated, chunks)."""
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    bad = {i: s[3] for i, s in enumerate(stream) if s[2] is None}
    counts = Counter(tuple(o["position"]) for o in outputs)
    expected = {(topics["in"], *where[i]) for i in good}
    missing = expected - set(counts)
    duplicated = {p: n for p, n in counts.items() if n > 1}
    assert not missing and not duplicated and set(counts) == expected, (len(missing), len(duplicated))
    ref, preds, losses = reference([stream[i][2] for i in good])
    outs = {tuple(o["position"]): o for o in outputs}
    for j, i in enumerate(good):
        o = outs[(topics["in"], *where[i])]
        assert o["key"] == stream[i][0] and o["prediction"] == float(preds[j, 0])
        assert o["loss"] == (None if np.isnan(losses[j]) else float(losses[j]))

    _check_dead_letters(bootstrap, topics, stream, where, bad)

    (arrays, meta), chunks = final_checkpoint(bootstrap, cfg)
    assert_same_state(arrays, meta["model"], ref)
    ends = {}
    for p, off in where.values():
        ends[f"{topics['in']}:{p}"] = max(ends.get(f"{topics['in']}:{p}", 0), off + 1)
    assert meta["positions"] == ends
    assert meta["daemon"]["records"] == n_records and meta["daemon"]["applied"] == len(good)
    return len(missing), len(duplicated), chunks


def _check_dead_letters(bootstrap, topics, stream, where, bad):
    """A read_committed consumer of the dead-letter topic sees each bad input ({index: reason}) once."""
    dead_reader = TopicReader(bootstrap, topics["dead"], isolation_level="read_committed")
    try:
        dead_reader.wait_for(lambda v: len(v) >= len(bad), timeout=60, what="every dead letter")
        time.sleep(0.5)
        dead = dead_reader.snapshot()
    finally:
        dead_reader.close()
    dead_counts = Counter(tuple(d["position"]) for d in dead)
    assert dead_counts == Counter({(topics["in"], *where[i]): 1 for i in bad})  # each exactly once
    by_pos = {tuple(d["position"]): d for d in dead}
    for i, reason in bad.items():
        d = by_pos[(topics["in"], *where[i])]
        assert reason in d["reason"] and d["value"] == stream[i][1]


def committed_offsets(bootstrap, group, topic):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in sorted(c.partitions_for_topic(topic))}
    finally:
        c.close(autocommit=False)


# ---------------------------------------------------------------------------- kill -9, 20 times
N_RECORDS = 24_000
N_KILLS = 20


def test_sigkill_20_times_each_output_exactly_once(tmp_path, kafka_bootstrap, topics):
    t_start = time.monotonic()
    stream = keyed_stream(N_RECORDS, seed=11)
    where = produce(kafka_bootstrap, topics["in"], stream)
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    cfg = eos_config(tmp_path, kafka_bootstrap, topics, N_RECORDS)
    cfg_path = write_config(tmp_path, cfg)
    log_path = tmp_path / "daemon.log"
    rng = random.Random(SEED)
    thresholds = sorted(rng.sample(range(len(good) // 40, len(good) // 2), N_KILLS))
    committed = TopicReader(kafka_bootstrap, topics["out"], isolation_level="read_committed")
    uncommitted = TopicReader(kafka_bootstrap, topics["out"])
    kills = []
    try:
        for threshold in thresholds:
            seen_before = committed.count()
            proc = start_daemon(cfg_path, log_path)
            committed.wait_for(
                lambda v: proc.poll() is not None or (len(v) > seen_before and len(v) >= threshold),  # noqa: B023
                timeout=120,
                what=f"{threshold} committed outputs",
            )
            time.sleep(rng.uniform(0.0, 0.2))  # somewhere in the next interval (or its commit)
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills.append(committed.count())
        proc = start_daemon(cfg_path, log_path)
        rc = proc.wait(300)
        assert rc == 0, log_path.read_text(errors="replace")[-5000:]
        committed.wait_for(lambda v: len(v) >= len(good), timeout=60, what="an output for every good record")
        time.sleep(1.0)  # anything more (a duplicate) would arrive now
        outputs = committed.snapshot()
        uncommitted.wait_for(lambda v: len(v) >= len(outputs), timeout=30, what="read_uncommitted catching up")
        n_uncommitted = uncommitted.count()
    finally:
        committed.close()
        uncommitted.close()
    assert len(kills) == N_KILLS, f"only {len(kills)} kills landed before the end: {kills}"
    missing, duplicated, chunks = check_exactly_once(kafka_bootstrap, topics, stream, where, cfg, outputs, N_RECORDS)
    assert chunks > 1  # the checkpoint spans several messages of its transaction
    # the group's offsets were committed in the transactions: they equal the checkpoint's positions
    offsets = committed_offsets(kafka_bootstrap, cfg["source"]["group"], topics["in"])
    ends = {}
    for p, off in where.values():
        ends[p] = max(ends.get(p, 0), off + 1)
    assert offsets == ends
    assert n_uncommitted > len(outputs)  # a read_uncommitted consumer also saw the aborted intervals
    print(
        json.dumps(
            {
                "test": "exactly_once_crash_loop",
                "records": N_RECORDS,
                "good": len(good),
                "kills": len(kills),
                "committed_outputs": len(outputs),
                "missing": missing,
                "duplicated": duplicated,
                "read_uncommitted_outputs": n_uncommitted,
                "checkpoint_chunks": chunks,
                "wall_s": round(time.monotonic() - t_start, 1),
            }
        )
    )


# ---------------------------------------------------------------------------- zombie, timeout
def stop_mid_interval(proc, committed, uncommitted, timeout=60):
    """SIGSTOP ``proc`` while its open transaction holds outputs: stopped, the readers catch up with
    what it sent, and a read_uncommitted consumer then sees more than a read_committed one. A stop
    that finds no open transaction (between two, or the readers behind) lets it run on a little and
    stops it again, so the readers' lag cannot make every attempt miss."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # what the sink process was sending arrives; a commit in flight ends
        if uncommitted.count() > committed.count():
            return uncommitted.count() - committed.count()
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise TimeoutError("no open transaction with outputs to stop the daemon in")


def _finish(proc, log_path, committed, n):
    """Wait for the daemon to end with status 0 and for a read_committed consumer to have (almost) every
    output: ``(outputs, the daemon's log)``."""
    rc = proc.wait(300)
    text = log_path.read_text(errors="replace")
    assert rc == 0, text[-5000:]
    committed.wait_for(lambda v: len(v) >= n * 0.98, timeout=60, what="every output")
    time.sleep(1.0)  # anything more (a duplicate) would arrive now
    return committed.snapshot(), text


def _stop(proc, *readers):
    """Kill the daemon if it still runs, and close the readers."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for r in readers:
        r.close()


def _run_to_end(cfg_path, log_path, timeout=300):
    proc = start_daemon(cfg_path, log_path, verbose=True)
    rc = proc.wait(timeout)
    assert rc == 0, log_path.read_text(errors="replace")[-5000:]


def test_a_fenced_zombie_stops_and_nothing_it_wrote_is_visible(tmp_path, kafka_bootstrap, topics):
    n = 6000
    stream = keyed_stream(n, seed=12)
    where = produce(kafka_bootstrap, topics["in"], stream)
    cfg = eos_config(tmp_path, kafka_bootstrap, topics, n)
    cfg_path = write_config(tmp_path, cfg)
    committed = TopicReader(kafka_bootstrap, topics["out"], isolation_level="read_committed")
    uncommitted = TopicReader(kafka_bootstrap, topics["out"])
    try:
        zombie = start_daemon(cfg_path, tmp_path / "zombie.log", verbose=True)
        committed.wait_for(lambda v: len(v) >= 1000, timeout=120, what="the first daemon's outputs")
        in_transaction = stop_mid_interval(zombie, committed, uncommitted)
        # its successor fences it (init_transactions aborts its open transaction) and finishes the stream
        _run_to_end(cfg_path, tmp_path / "successor.log")
        n_committed = committed.count()
        zombie.send_signal(signal.SIGCONT)
        rc = zombie.wait(120)
        zombie_log = (tmp_path / "zombie.log").read_text(errors="replace")
        time.sleep(1.0)
        outputs = committed.snapshot()
    finally:
        if zombie.poll() is None:
            zombie.kill()
            zombie.wait(10)
        committed.close()
        uncommitted.close()
    assert rc == 2, zombie_log[-4000:]
    assert "has taken transactional id" in zombie_log and "nothing of this daemon's open transaction is visible" in (
        zombie_log
    ), zombie_log[-4000:]
    assert len(outputs) == n_committed  # nothing became visible after the zombie resumed
    assert in_transaction > 0
    check_exactly_once(kafka_bootstrap, topics, stream, where, cfg, outputs, n)


def test_a_transaction_past_its_timeout_is_aborted_and_redone_once(tmp_path, kafka_bootstrap, topics):
    n = 5000
    stream = keyed_stream(n, seed=13)
    where = produce(kafka_bootstrap, topics["in"], stream)
    cfg = eos_config(tmp_path, kafka_bootstrap, topics, n, transaction_timeout_seconds=3)
    # the pause also outlasts the session: the group drops the member, which rejoins after the rewind
    # (the sequence that once stalled the daemon's consumer: issue #18)
    cfg["source"]["session_timeout_ms"] = 6000
    cfg_path = write_config(tmp_path, cfg)
    log_path = tmp_path / "daemon.log"
    committed = TopicReader(kafka_bootstrap, topics["out"], isolation_level="read_committed")
    uncommitted = TopicReader(kafka_bootstrap, topics["out"])
    try:
        proc = start_daemon(cfg_path, log_path, verbose=True)
        committed.wait_for(lambda v: len(v) >= 1000, timeout=120, what="the first outputs")
        in_transaction = stop_mid_interval(proc, committed, uncommitted)
        # the broker aborts transactions past their timeout within a second (scripts/kafka.sh sets
        # transaction.abort.timed.out.transaction.cleanup.interval.ms = 1000): 3 s + 1 s, with margin
        time.sleep(16)
        proc.send_signal(signal.SIGCONT)
        outputs, text = _finish(proc, log_path, committed, n)
    finally:
        _stop(proc, committed, uncommitted)
    assert in_transaction > 0
    # kafka-python reports the broker's abort as fencing, or (while it bumps the producer epoch) as an
    # IllegalStateError of the commit: either way the interval is redone from the last checkpoint
    assert "transaction not committed" in text and "rewinding to the last committed checkpoint" in text, text[-4000:]
    assert "the transaction timed out" in text or "BUMPING_PRODUCER_EPOCH" in text, text[-4000:]
    assert "lost membership" in text, text[-4000:]  # kafka-python's log: the member rejoined the group
    check_exactly_once(kafka_bootstrap, topics, stream, where, cfg, outputs, n)


# ---------------------------------------------------------------------------- broker restart
@pytest.fixture(scope="module")
def restartable_broker(tmp_path_factory):
    """A broker of this module's own, so that restarting it disturbs no other test."""
    from tests.kafka_broker import KafkaBroker, kafka_python_missing, kafka_skip_or_fail, missing_tools

    why = kafka_python_missing() or missing_tools()
    if why is not None:
        kafka_skip_or_fail(f"cannot start a local Kafka broker: {why}")
    b = KafkaBroker(tmp_path_factory.mktemp("eos-restartable-kafka"))
    try:
        b.start()
    except Exception as exc:  # noqa: BLE001
        b.stop()
        kafka_skip_or_fail(f"could not start a dedicated Kafka broker: {exc}")
    yield b
    b.stop()


def test_a_broker_restart_mid_transaction(tmp_path, restartable_broker):
    bootstrap = restartable_broker.bootstrap
    gen = fresh_topics(bootstrap, "eosr", **{"in": 2, "out": 2, "dead": 1})
    topics = next(gen)
    n = 12000  # long enough a run that it is caught mid-transaction
    stream = keyed_stream(n, seed=14)
    where = produce(bootstrap, topics["in"], stream)
    cfg = eos_config(tmp_path, bootstrap, topics, n)
    cfg_path = write_config(tmp_path, cfg)
    log_path = tmp_path / "daemon.log"
    committed = TopicReader(bootstrap, topics["out"], isolation_level="read_committed")
    uncommitted = TopicReader(bootstrap, topics["out"])
    proc = start_daemon(cfg_path, log_path, verbose=True)
    try:
        committed.wait_for(lambda v: len(v) >= 1000, timeout=120, what="the first outputs")
        in_transaction = stop_mid_interval(proc, committed, uncommitted)
        restartable_broker.kill()  # the open transaction is in the coordinator's log, not completed
        proc.send_signal(signal.SIGCONT)
        time.sleep(3)  # the daemon runs into the outage (it retries)
        restartable_broker.start()
        outputs, text = _finish(proc, log_path, committed, n)
    finally:
        _stop(proc, committed, uncommitted)
    assert in_transaction > 0
    check_exactly_once(bootstrap, topics, stream, where, cfg, outputs, n)
    for _ in gen:  # delete the topics
        pass


# ---------------------------------------------------------------------------- group mode
def group_config(bootstrap, topics, group, member):
    """A member of an exactly-once group (independent per-partition models, dynamic membership)."""
    return {
        "source": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["in"], "session_timeout_ms": 6000},
        "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["dead"]},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"every_records": 400, "every_seconds": 1, "chunk_bytes": 16384},
        "daemon": {
            "batch_size": 100,
            "poll_timeout": 0.2,
            "progress": False,
            "processing_guarantee": "exactly-once",
            "transaction_timeout_seconds": 10,
        },
        "group": {"name": group, "store": "kafka", "member": member},
    }


def _owns(log_path, member):
    """The partitions ``member``'s log says it owns now (its last "now owns" line)."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if f"member {member} now owns" in line]
    return lines[-1].split(" now owns ")[1].strip() if lines else None


def test_a_group_rebalance_and_a_killed_member_each_output_exactly_once(tmp_path, kafka_bootstrap, topics):
    """Two members: B joins while A runs (A commits before giving a partition up), then A is SIGKILLed
    mid-interval (B takes its partition over from its last committed checkpoint). A read_committed
    consumer sees every good input's output exactly once, equal to one Model per partition over that
    partition's records (independent mode); dead letters exactly once; each partition's final
    checkpoint is bit-identical to that Model."""
    from streamrnn.connectors.kafka.transactional import CheckpointTopic
    from tests.reliability.common import LiveProducer

    n = 12_000
    stream = keyed_stream(n, seed=15)
    group = f"eosg-{uuid.uuid4().hex[:8]}"
    paths, logs, procs = {}, {}, {}
    for m in ("eos-a", "eos-b"):
        paths[m] = tmp_path / f"{m}.toml"
        paths[m].write_text(toml(group_config(kafka_bootstrap, topics, group, m)))
        logs[m] = tmp_path / f"{m}.log"
    committed = TopicReader(kafka_bootstrap, topics["out"], isolation_level="read_committed")
    producer = LiveProducer(kafka_bootstrap, topics["in"], stream, 400)  # 30 s: B joins, A dies mid-stream
    try:
        procs["eos-a"] = start_daemon(paths["eos-a"], logs["eos-a"], verbose=True)
        _wait_for(lambda: _owns(logs["eos-a"], "eos-a") not in (None, "no partition"), 120, "A owning the partitions")
        producer.start()
        committed.wait_for(lambda v: len(v) >= 1500, timeout=120, what="A's first committed outputs")
        procs["eos-b"] = start_daemon(paths["eos-b"], logs["eos-b"], verbose=True)
        _wait_for(lambda: _owns(logs["eos-b"], "eos-b") not in (None, "no partition"), 120, "B owning a partition")
        at_rebalance = committed.count()
        committed.wait_for(lambda v: len(v) >= at_rebalance + 1000, timeout=120, what="outputs of both members")
        procs["eos-a"].send_signal(signal.SIGKILL)  # somewhere in an interval, or its commit
        procs["eos-a"].wait(10)
        producer.join(120)
        assert producer.error is None and len(producer.where) == n, producer.error
        where = producer.where
        good = [i for i, s in enumerate(stream) if s[2] is not None]
        committed.wait_for(lambda v: len(v) >= len(good), timeout=180, what="an output for every good record")
        procs["eos-b"].send_signal(signal.SIGTERM)
        rc = procs["eos-b"].wait(60)
        assert rc == 0, logs["eos-b"].read_text(errors="replace")[-5000:]
        time.sleep(1.0)  # anything more (a duplicate) would arrive now
        outputs = committed.snapshot()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        committed.close()
    text_b = logs["eos-b"].read_text(errors="replace")
    assert "now owns" in text_b and "resumed from" in text_b  # B took A's partition from its checkpoint
    bad = {i: s[3] for i, s in enumerate(stream) if s[2] is None}
    counts = Counter(tuple(o["position"]) for o in outputs)
    expected = {(topics["in"], *where[i]) for i in good}
    assert set(counts) == expected and max(counts.values()) == 1, (len(expected - set(counts)), counts.most_common(1))
    outs = {tuple(o["position"]): o for o in outputs}
    store = CheckpointTopic(kafka_bootstrap, f"{group}-checkpoints", group)
    try:
        store.refresh()
        parts = store.parts()
        assert parts == [f"{topics['in']}:0", f"{topics['in']}:1"]
        for part in (0, 1):
            rows = sorted((where[i][1], i) for i in good if where[i][0] == part)
            ref, preds, losses = reference([stream[i][2] for _, i in rows])
            for j, (off, i) in enumerate(rows):  # every output bit-identical to its partition's Model
                o = outs[(topics["in"], part, off)]
                assert o["key"] == stream[i][0] and o["prediction"] == float(preds[j, 0])
                assert o["loss"] == (None if np.isnan(losses[j]) else float(losses[j]))
            (_, load), *_ = store.generations(part=f"{topics['in']}:{part}")
            arrays, meta = load(None)
            assert_same_state(arrays, meta["model"], ref)
            end = max(off for p, off in where.values() if p == part) + 1
            assert meta["positions"] == {f"{topics['in']}:{part}": end}
    finally:
        store.close()
    _check_dead_letters(kafka_bootstrap, topics, stream, where, bad)
    print(json.dumps({"test": "exactly_once_group", "records": n, "good": len(good), "outputs": len(outputs)}))


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
