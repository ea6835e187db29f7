"""Crash loop: the daemon is SIGKILLed at 20 seeded-random points of a 20 000-record keyed Kafka
topic (2 partitions) and restarted each time; the result must equal one uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid

import numpy as np
import pytest

from streamrnn.service import load_checkpoint
from tests.reliability.common import (
    FEATURES,
    MODEL,
    TopicReader,
    assert_same_state,
    by_position,
    fresh_topics,
    keyed_stream,
    produce,
    reference,
    start_daemon,
    toml,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_RECORDS = 20_000
N_KILLS = 20
SEED = 20240607


@pytest.fixture
def topics(kafka_bootstrap):
    yield from fresh_topics(kafka_bootstrap, "crash", **{"in": 2, "out": 2, "dead": 1})


def test_sigkill_20_times_then_bit_identical(tmp_path, kafka_bootstrap, topics):
    t_start = time.monotonic()
    stream = keyed_stream(N_RECORDS, seed=7)
    where = produce(kafka_bootstrap, topics["in"], stream)
    assert {p for p, _ in where.values()} == {0, 1}  # both partitions carry records
    good = [i for i, s in enumerate(stream) if s[2] is not None]
    bad = {i: s[3] for i, s in enumerate(stream) if s[2] is None}

    cfg = {
        "source": {
            "type": "kafka",
            "bootstrap": kafka_bootstrap,
            "topic": topics["in"],
            "group": f"crash-{uuid.uuid4().hex[:8]}",
            "instance_id": "crash-member-0",
        },
        "sink": {"type": "kafka", "bootstrap": kafka_bootstrap, "topic": topics["out"]},
        "dead_letter": {"type": "kafka", "bootstrap": kafka_bootstrap, "topic": topics["dead"]},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        # small batches and a tight cadence, so kills land between, during and after checkpoints
        "checkpoint": {"path": str(tmp_path / "crash.ckpt"), "every_records": 250, "every_seconds": 0},
        "daemon": {"batch_size": 50, "poll_timeout": 0.2, "max_records": N_RECORDS, "progress": False},
    }
    cfg_path = tmp_path / "crash.toml"
    cfg_path.write_text(toml(cfg))
    log_path = tmp_path / "daemon.log"

    rng = random.Random(SEED)
    # kill i once the output topic covers this many distinct input positions (and this
    # incarnation has written something), then after a random 0-40 ms more. The last kill point
    # leaves a quarter of the stream: between seeing a threshold and the kill, a daemon running
    # at ~20 000 records/s gets a few thousand records further, and must not reach the end.
    thresholds = sorted(rng.sample(range(len(good) // 50, len(good) * 3 // 4), N_KILLS))
    outputs = TopicReader(kafka_bootstrap, topics["out"])
    kills, restarts_s = [], []
    try:
        for threshold in thresholds:
            seen_before = outputs.count()
            t0 = time.monotonic()
            proc = start_daemon(cfg_path, log_path)
            outputs.wait_for(  # the predicate runs within this iteration, so it sees this iteration's values
                lambda v: (
                    proc.poll() is not None  # noqa: B023
                    or (len(v) > seen_before and len({tuple(o["position"]) for o in v}) >= threshold)  # noqa: B023
                ),
                timeout=120,
                what=f"outputs up to {threshold} positions",
            )
            restarts_s.append(time.monotonic() - t0)
            time.sleep(rng.uniform(0.0, 0.04))
            if proc.poll() is not None:
                break  # finished before this kill point
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills.append(len({tuple(o["position"]) for o in outputs.snapshot()}))
        proc = start_daemon(cfg_path, log_path)
        rc = proc.wait(300)
        log_text = log_path.read_text(errors="replace")
        assert rc == 0, log_text[-5000:]
        outputs.wait_for(
            lambda v: len({tuple(o["position"]) for o in v}) >= len(good),
            timeout=60,
            what="an output for every good record",
        )
        time.sleep(0.5)  # let stragglers arrive
    finally:
        outputs.close()
    assert len(kills) == N_KILLS, f"only {len(kills)} kills landed before the end: {kills}"

    # 1. the final checkpoint equals one uninterrupted run over the good records, in order
    arrays, meta, used = load_checkpoint(str(tmp_path / "crash.ckpt"))
    ref, preds, losses = reference([stream[i][2] for i in good])
    assert_same_state(arrays, meta["model"], ref)
    ends = {}
    for p, off in where.values():
        ends[f"{topics['in']}:{p}"] = max(ends.get(f"{topics['in']}:{p}", 0), off + 1)
    assert meta["positions"] == ends
    assert meta["daemon"]["records"] == N_RECORDS and meta["daemon"]["applied"] == len(good)

    # 2. every input has an output; repeated outputs are identical and equal the reference's
    outs = by_position(outputs.values)
    expected_positions = {(topics["in"], *where[i]) for i in good}
    assert set(outs) == expected_positions
    for j, i in enumerate(good):
        o = outs[(topics["in"], *where[i])]
        assert o["key"] == stream[i][0] and o["prediction"] == float(preds[j, 0])
        assert o["loss"] == (None if np.isnan(losses[j]) else float(losses[j]))

    # 3. the dead-letter topic holds exactly the bad records, each with its reason and position
    dead_reader = TopicReader(kafka_bootstrap, topics["dead"])
    try:
        dead_reader.wait_for(
            lambda v: len({tuple(d["position"]) for d in v}) >= len(bad), timeout=60, what="every dead letter"
        )
        time.sleep(0.3)
        dead = by_position(dead_reader.snapshot())
    finally:
        dead_reader.close()
    assert set(dead) == {(topics["in"], *where[i]) for i in bad}
    for i, reason in bad.items():
        d = dead[(topics["in"], *where[i])]
        assert reason in d["reason"], (d, reason)
        assert d["value"] == stream[i][1]

    n_dupes = len(outputs.values) - len(outs)
    wall = time.monotonic() - t_start
    print(
        json.dumps(
            {
                "test": "crash_loop",
                "records": N_RECORDS,
                "good": len(good),
                "bad": len(bad),
                "kills_survived": len(kills),
                "kill_points_positions": kills,
                "outputs_received": len(outputs.values),
                "duplicate_outputs": n_dupes,
                "mean_time_to_kill_s": round(sum(restarts_s) / len(restarts_s), 2),
                "wall_s": round(wall, 1),
            }
        )
    )
