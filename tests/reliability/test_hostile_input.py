"""Hostile input: a hypothesis fuzz of >= 10 000 records (invalid UTF-8 and JSON, NaN/inf, huge
numbers, wrong types and widths, missing and unknown fields, unknown key types, oversized and
deeply nested records) mixed with good ones, through the daemon (JSONL file source; a smaller
batch through real Kafka). Zero crashes; every bad record dead-lettered with its reason and
position; the model bit-identical to a run over the good records alone."""

from __future__ import annotations

import collections
import json
import math
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings

from streamrnn.service import Daemon, validate_config
from tests.reliability.common import by_position, read_jsonl, reference
from tests.reliability.hostile import BOM, MAX_RECORD_BYTES, records

MODEL = dict(
    cell="gru", n_inputs=2, n_hidden=3, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=9
)
FUZZ = settings(
    max_examples=200, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)


def fuzz_config(source, tmp, key="key"):
    schema = {"features": ["a", "b"], "target": "y"}
    if key:
        schema["key"] = key
    return {
        "source": source,
        "sink": {"type": "jsonl", "path": str(tmp / "out.jsonl"), "mode": "w"},
        "dead_letter": {"type": "jsonl", "path": str(tmp / "dead.jsonl"), "mode": "w"},
        "schema": schema,
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp / "f.ckpt"), "every_records": 25, "every_seconds": 0},
        "daemon": {"batch_size": 16, "poll_timeout": 0.01, "progress": False, "max_record_bytes": MAX_RECORD_BYTES},
    }


def check_run(d, recs, position_of, outs, dead):
    """The daemon's model, outputs and dead letters against the expectation of every record."""
    good = [(i, exp[1:]) for i, (_, exp) in enumerate(recs) if exp[0] == "good"]
    bad = {i: exp for i, (_, exp) in enumerate(recs) if exp[0] == "bad"}
    ref, preds, losses = reference([row for _, row in good], MODEL) if good else (None, None, None)
    if good:
        for name, arr in ref.state_arrays()[0].items():
            assert np.array_equal(d.model.state_arrays()[0][name], arr), name
        assert d.model.state_arrays()[1]["keys"] == ref.state_arrays()[1]["keys"]
    outs = by_position(outs)
    assert set(outs) == {position_of(i) for i, _ in good}
    for j, (i, (key, _, y)) in enumerate(good):
        o = outs[position_of(i)]
        assert o["key"] == key and o["prediction"] == float(preds[j, 0])
        assert o["target"] == (None if math.isnan(y) else y)
    dead = by_position(dead)
    assert set(dead) == {position_of(i) for i in bad}
    for i, exp in bad.items():
        reason = dead[position_of(i)]["reason"]
        for fragment in exp[1:2] + exp[3:]:
            assert fragment in reason, (recs[i][0][:200], exp, reason)
    return len(good), len(bad)


@pytest.mark.slow
def test_fuzz_file_source(tmp_path_factory):
    t0 = time.monotonic()
    totals = collections.Counter()

    @FUZZ
    @given(records(50, 70))
    def run(recs):
        if recs[0][0].startswith(BOM):  # a file's first BOM is its encoding mark (stripped, as
            recs = recs[1:] + recs[:1]  # test_hardening_input checks): hostile only further in
            assume(not recs[0][0].startswith(BOM))
        tmp = tmp_path_factory.mktemp("fuzz")
        src = tmp / "in.jsonl"
        src.write_bytes(b"".join(line + b"\n" for line, _ in recs))
        d = Daemon(validate_config(fuzz_config({"type": "jsonl", "path": str(src)}, tmp)))
        stats = d.run()  # zero crashes: any exception fails the example
        assert stats["records"] == len(recs)
        n_good, n_bad = check_run(
            d, recs, lambda i: (str(src), i), read_jsonl(tmp / "out.jsonl"), read_jsonl(tmp / "dead.jsonl")
        )
        totals["records"] += len(recs)
        totals["good"] += n_good
        totals["bad"] += n_bad
        for _, exp in recs:
            if exp[0] == "bad":
                totals[exp[2]] += 1

    run()
    assert totals["records"] >= 10_000
    print(json.dumps({"test": "fuzz_file_source", **totals, "wall_s": round(time.monotonic() - t0, 1)}))


@pytest.mark.kafka
def test_fuzz_through_kafka(tmp_path_factory, kafka_bootstrap):
    """Hostile values as raw bytes through a real topic (no key field: the Kafka key, itself
    sometimes invalid UTF-8, is the per-entity key)."""
    from kafka import KafkaProducer

    from tests.kafka_broker import create_topic, delete_topic

    t0 = time.monotonic()
    totals = collections.Counter()

    @settings(FUZZ, max_examples=8, phases=[Phase.generate])  # no shrinking against a broker
    @given(records(120, 160))
    def run(recs):
        # without a key field in the schema, a missing or odd "key" field is just an unknown field
        recs = [r for r in recs if r[1][0] == "good" or r[1][2] != "key type" and "key field" not in r[1][1]]
        tmp = tmp_path_factory.mktemp("kfuzz")
        topic = f"hostile-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, topic, partitions=1)
        try:
            p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=4 << 20)
            offsets = []
            kafka_recs = []
            for n, (line, exp) in enumerate(recs):
                raw_key = b"\xffk" if n % 9 == 4 else None  # invalid UTF-8 key: decoded with U+FFFD
                if exp[0] == "good":
                    key = exp[1]
                    kafka_key = None if key is None else str(key).encode()
                    if raw_key is not None:
                        kafka_key, key = raw_key, "\ufffdk"
                    elif isinstance(key, int):
                        key = str(key)  # a Kafka key arrives as text
                    exp = ("good", key, *exp[2:])
                else:
                    kafka_key = raw_key or b"k"
                kafka_recs.append((line, exp))
                offsets.append(p.send(topic, key=kafka_key, value=line))
            p.flush()
            offsets = [f.get(30).offset for f in offsets]
            p.close()
            cfg = fuzz_config(
                {"type": "kafka", "bootstrap": kafka_bootstrap, "topic": topic, "group": None}, tmp, key=None
            )
            cfg["daemon"]["max_records"] = len(recs)
            d = Daemon(validate_config(cfg))
            stats = d.run()
            assert stats["records"] == len(recs)
            n_good, n_bad = check_run(
                d,
                kafka_recs,
                lambda i: (topic, 0, offsets[i]),
                read_jsonl(tmp / "out.jsonl"),
                read_jsonl(tmp / "dead.jsonl"),
            )
            totals["records"] += len(recs)
            totals["good"] += n_good
            totals["bad"] += n_bad
        finally:
            delete_topic(kafka_bootstrap, topic)

    run()
    print(json.dumps({"test": "fuzz_through_kafka", **totals, "wall_s": round(time.monotonic() - t0, 1)}))
