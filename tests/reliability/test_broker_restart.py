"""The broker goes away under a running daemon: it waits (retry policy, clear log lines) and
completes with the same guarantees when the broker comes back, or gives up with a clear exit
(status 2, checkpoint intact) when the policy is exhausted. A dedicated broker, not the session's."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from streamrnn.service import load_checkpoint
from tests.kafka_broker import KafkaBroker, create_topic, kafka_python_missing, kafka_skip_or_fail, missing_tools
from tests.reliability.common import (
    FEATURES,
    MODEL,
    TopicReader,
    assert_same_state,
    by_position,
    keyed_stream,
    produce,
    reference,
    start_daemon,
    toml,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    why = kafka_python_missing() or missing_tools()
    if why is not None:
        kafka_skip_or_fail(f"cannot start a local Kafka broker: {why}")
    b = KafkaBroker(tmp_path_factory.mktemp("restartable-kafka"))
    try:
        b.start()
    except Exception as exc:  # noqa: BLE001
        b.stop()
        kafka_skip_or_fail(f"could not start a dedicated Kafka broker: {exc}")
    yield b
    b.stop()


def make_topics(bootstrap):
    stem = uuid.uuid4().hex[:8]
    names = {"in": f"r-in-{stem}", "out": f"r-out-{stem}", "dead": f"r-dead-{stem}"}
    create_topic(bootstrap, names["in"], partitions=2)
    create_topic(bootstrap, names["out"], partitions=2)
    create_topic(bootstrap, names["dead"], partitions=1)
    return names


def daemon_config(tmp_path, bootstrap, topics, **daemon):
    return {
        "source": {
            "type": "kafka",
            "bootstrap": bootstrap,
            "topic": topics["in"],
            "group": f"g-{topics['in']}",
            "instance_id": "restart-member-0",
        },
        "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": bootstrap, "topic": topics["dead"]},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp_path / "r.ckpt"), "every_records": 400, "every_seconds": 0},
        "daemon": {"batch_size": 50, "poll_timeout": 0.2, "progress": False, **daemon},
    }


def distinct(values):
    return len({tuple(v["position"]) for v in values})


def check_complete(tmp_path, bootstrap, topics, stream, where, outputs):
    """Final checkpoint == uninterrupted run; every good input has identical outputs; exact dead letters."""
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    bad = [i for i, s in enumerate(stream) if s[2] is None]
    arrays, meta, _ = load_checkpoint(str(tmp_path / "r.ckpt"))
    ref, preds, _ = reference([stream[i][2] for i in good])
    assert_same_state(arrays, meta["model"], ref)
    outputs.wait_for(lambda v: distinct(v) >= len(good), 60, "an output for every good record")
    outs = by_position(outputs.snapshot())
    assert set(outs) == {(topics["in"], *where[i]) for i in good}
    assert [outs[(topics["in"], *where[i])]["prediction"] for i in good] == preds[:, 0].tolist()
    dead = TopicReader(bootstrap, topics["dead"])
    try:
        dead.wait_for(lambda v: distinct(v) >= len(bad), 60, "every dead letter")
        assert set(by_position(dead.snapshot())) == {(topics["in"], *where[i]) for i in bad}
    finally:
        dead.close()
    return len(good), len(outputs.snapshot()) - len(outs)


def test_broker_crash_mid_run_daemon_waits_and_completes(tmp_path, broker):
    t_start = time.monotonic()
    bootstrap = broker.bootstrap
    topics = make_topics(bootstrap)
    n = 8000
    stream = keyed_stream(n, seed=11)
    # Every record is on the broker before the daemon starts: the merged order is then fixed by
    # the topic (records arriving live while a partition is caught up merge in arrival order).
    where = produce(bootstrap, topics["in"], stream)
    cfg = daemon_config(
        tmp_path,
        bootstrap,
        topics,
        max_records=n,
        retry_attempts=0,
        retry_backoff=0.2,
        retry_backoff_max=1.0,
        retry_give_up_seconds=180.0,
    )
    cfg["daemon"]["batch_size"] = 20  # slow enough for the crash to land mid-stream
    cfg["checkpoint"]["every_records"] = 200
    cfg_path = tmp_path / "r.toml"
    cfg_path.write_text(toml(cfg))
    log_path = tmp_path / "daemon.log"
    outputs = TopicReader(bootstrap, topics["out"])
    proc = start_daemon(cfg_path, log_path)
    try:
        outputs.wait_for(lambda v: distinct(v) >= n // 10, 120, "the first tenth of the outputs")
        t_down = time.monotonic()
        broker.kill()  # a crash: SIGKILL, no controlled shutdown
        time.sleep(4.0)  # the daemon notices and waits
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        at_restart = distinct(outputs.snapshot())
        broker.start()  # same port, same data directory
        outage_s = time.monotonic() - t_down
        rc = proc.wait(240)
        log_text = log_path.read_text(errors="replace")
        assert rc == 0, log_text[-5000:]
        assert "broker unreachable, retrying in" in log_text
        assert "broker reachable again" in log_text
        n_good, n_dupes = check_complete(tmp_path, bootstrap, topics, stream, where, outputs)
    finally:
        if proc.poll() is None:
            proc.kill()
        outputs.close()
    assert at_restart < n_good  # the crash landed mid-stream
    print(
        json.dumps(
            {
                "test": "broker_crash_and_restart",
                "records": n,
                "good_checked": n_good,
                "outputs_before_restart": at_restart,
                "outage_s": round(outage_s, 1),
                "duplicate_outputs": n_dupes,
                "retry_log_lines": log_text.count("broker unreachable, retrying in"),
                "wall_s": round(time.monotonic() - t_start, 1),
            }
        )
    )


def test_broker_gone_daemon_gives_up_with_checkpoint_intact(tmp_path, broker):
    t_start = time.monotonic()
    bootstrap = broker.bootstrap
    topics = make_topics(bootstrap)
    n = 6000
    stream = keyed_stream(n, seed=12)
    where = produce(bootstrap, topics["in"], stream)
    give_up_s = 8.0
    cfg = daemon_config(
        tmp_path,
        bootstrap,
        topics,
        retry_attempts=0,
        retry_backoff=0.5,
        retry_backoff_max=2.0,
        retry_give_up_seconds=give_up_s,
    )
    cfg["daemon"]["batch_size"] = 20
    cfg["checkpoint"]["every_records"] = 200
    cfg_path = tmp_path / "r.toml"
    cfg_path.write_text(toml(cfg))
    log_path = tmp_path / "daemon.log"
    outputs = TopicReader(bootstrap, topics["out"])
    proc = start_daemon(cfg_path, log_path)
    try:
        outputs.wait_for(lambda v: distinct(v) >= n // 10, 120, "the first tenth of the outputs")
        broker.kill()
        t_down = time.monotonic()
        rc = proc.wait(give_up_s + 60)
        gave_up_after = time.monotonic() - t_down
    finally:
        if proc.poll() is None:
            proc.kill()
    log_text = log_path.read_text(errors="replace")
    assert rc == 2, log_text[-3000:]
    assert "broker unreachable, retrying in" in log_text
    assert "giving up after" in log_text and "nothing after the last checkpoint" in log_text
    assert gave_up_after < give_up_s + 30

    # the checkpoint left behind is intact and exactly the records before its positions:
    # a prefix of the merged order, applied once
    arrays, meta, used = load_checkpoint(str(tmp_path / "r.ckpt"))
    assert used == str(tmp_path / "r.ckpt")
    pos = meta["positions"]
    applied = [i for i in range(n) if where[i][1] < pos.get(f"{topics['in']}:{where[i][0]}", 0)]
    assert applied == list(range(len(applied))) and 0 < len(applied) < n
    ref_prefix, _, _ = reference([stream[i][2] for i in applied if stream[i][2] is not None])
    assert_same_state(arrays, meta["model"], ref_prefix)

    # the broker comes back; the daemon restarted from that checkpoint completes the stream
    broker.start()
    cfg["daemon"]["max_records"] = n
    cfg_path.write_text(toml(cfg))
    proc = start_daemon(cfg_path, log_path)
    try:
        rc = proc.wait(180)
        assert rc == 0, log_path.read_text(errors="replace")[-3000:]
        n_good, n_dupes = check_complete(tmp_path, bootstrap, topics, stream, where, outputs)
    finally:
        if proc.poll() is None:
            proc.kill()
        outputs.close()
    print(
        json.dumps(
            {
                "test": "broker_gone_give_up",
                "records": n,
                "checkpointed_prefix": len(applied),
                "gave_up_after_s": round(gave_up_after, 1),
                "exit_status": 2,
                "good_checked": n_good,
                "wall_s": round(time.monotonic() - t_start, 1),
            }
        )
    )
