"""Shared pieces of the reliability suite: a keyed stream with known bad records, the reference
model run over its good records, the daemon as a subprocess, Kafka producing/draining."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np

import streamrnn
from streamrnn.service import dump_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEATURES = ["a", "b"]
MODEL = dict(
    cell="gru", n_inputs=2, n_hidden=4, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=3
)

# Bad records planted in a keyed stream: (kind, reason the dead letter must contain).
BAD_KINDS = (
    ("truncated JSON", "invalid JSON"),
    ("NaN literal", "invalid JSON"),
    ("missing feature", "missing feature field 'b'"),
    ("text feature", "field 'a': not a number"),
    ("float key", "key must be a string or an integer"),
    ("infinite target", "field 'y': non-finite"),
)


def keyed_stream(n, n_keys=40, bad_every=97, seed=0):
    """``n`` records as (key, JSON value text, good row or None, expected reason or None).

    Keys mix strings and integers; every ``bad_every``-th record is damaged (one of BAD_KINDS
    in turn); every 7th good record has no target (predict only).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(n_keys))
        key = f"k{k}" if k % 3 else k
        a, b = (float(v) for v in rng.normal(size=2).round(6))
        y = None if i % 7 == 3 else round(math.sin(a) + 0.5 * b, 6)
        rec = {"key": key, "a": a, "b": b, "y": y}
        if i % bad_every == bad_every - 1:
            kind, reason = BAD_KINDS[(i // bad_every) % len(BAD_KINDS)]
            if kind == "truncated JSON":
                text = json.dumps(rec)[:-7]
            elif kind == "NaN literal":
                text = json.dumps(rec).replace(f'"a": {json.dumps(a)}', '"a": NaN')
            else:
                if kind == "missing feature":
                    del rec["b"]
                elif kind == "text feature":
                    rec["a"] = "abc"
                elif kind == "float key":
                    rec["key"] = 1.5
                else:
                    rec["y"] = "inf"
                text = json.dumps(rec)
            out.append((key, text, None, reason))
        else:
            out.append((key, json.dumps(rec), (key, [a, b], math.nan if y is None else y), None))
    return out


def reference(rows, model=MODEL):
    """The uninterrupted run: a Model over the good rows in order. Returns (model, preds, losses)."""
    m = streamrnn.Model(**model)
    X = np.array([r[1] for r in rows], dtype=np.float64)
    Y = np.array([[r[2]] for r in rows], dtype=np.float64)
    preds, losses = m.step_many(X, Y, [r[0] for r in rows], return_loss=True)
    return m, preds, losses


def assert_same_state(arrays, meta_model, ref_model):
    """Checkpointed model state (every array, keys in LRU order) bit-identical to ``ref_model``'s."""
    ref_arrays, ref_meta = ref_model.state_arrays()
    assert meta_model["keys"] == ref_meta["keys"]
    assert meta_model["config"] == ref_meta["config"]
    assert set(ref_arrays) <= set(arrays)  # a daemon checkpoint may hold more (forecast state)
    for name, ref in ref_arrays.items():
        assert arrays[name].dtype == ref.dtype and np.array_equal(arrays[name], ref), name


toml = dump_config


def fresh_topics(bootstrap, prefix, **partitions):
    """Create uniquely named topics (name -> partitions), yield {name: topic}, delete them after."""
    from tests.kafka_broker import create_topic, delete_topic

    stem = uuid.uuid4().hex[:10]
    names = {k: f"{prefix}-{k}-{stem}" for k in partitions}
    for k, n in partitions.items():
        create_topic(bootstrap, names[k], partitions=n)
    yield names
    for name in names.values():
        try:
            delete_topic(bootstrap, name)
        except Exception:  # noqa: BLE001 - best effort (the broker may be down)
            pass


def start_daemon(config_path, log_path, verbose=False):
    """``python -m streamrnn run CONFIG`` as a subprocess, stdout+stderr appended to ``log_path``
    (with ``verbose``, INFO log lines too)."""
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        NUMBA_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streamrnn", *(["-v"] if verbose else []), "run", str(config_path), "--no-progress"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def read_jsonl(path):
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def by_position(outputs):
    """Outputs grouped by input position; asserts that repeated outputs are identical."""
    seen = {}
    for o in outputs:
        first = seen.setdefault(tuple(o["position"]), o)
        assert first == o, f"two different outputs for position {o['position']}: {first} != {o}"
    return seen


# ---------------------------------------------------------------------------- Kafka
def produce(bootstrap, topic, stream):
    """Produce ``stream`` entries with explicit, increasing timestamps (t0 + index ms, in the
    past) and the record key as Kafka key; returns {index: (partition, offset)}."""
    from kafka import KafkaProducer

    t0_ms = int(time.time() * 1000) - len(stream) - 60_000
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    futures = []
    for i, (key, text, _, _) in enumerate(stream):
        futures.append((i, p.send(topic, key=str(key).encode(), value=text.encode(), timestamp_ms=t0_ms + i)))
    p.flush()
    where = {}
    for i, f in futures:
        md = f.get(timeout=60)
        where[i] = (md.partition, md.offset)
    p.close()
    return where


class LiveProducer(threading.Thread):
    """Produces the stream at ``rate`` records/s (Kafka key = record key); records where each went."""

    def __init__(self, bootstrap, topic, stream, rate):
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.topic, self.stream, self.rate = topic, stream, rate
        self.where = {}
        self.sent = 0
        self.error = None

    def run(self):
        try:
            t0, chunk, futures = time.monotonic(), self.rate // 10, []
            for start in range(0, len(self.stream), chunk):
                for i in range(start, min(start + chunk, len(self.stream))):
                    key, text, _, _ = self.stream[i]
                    futures.append((i, self.producer.send(self.topic, key=str(key).encode(), value=text.encode())))
                self.sent = min(start + chunk, len(self.stream))
                time.sleep(max(0.0, t0 + self.sent / self.rate - time.monotonic()))
            self.producer.flush()
            for i, f in futures:
                md = f.get(timeout=60)
                self.where[i] = (md.partition, md.offset)
            self.producer.close()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


class TopicReader:
    """Reads every partition of a topic from the beginning in a background thread (with
    ``isolation_level``: "read_committed" sees only committed transactions' records)."""

    def __init__(self, bootstrap, topic, isolation_level="read_uncommitted"):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=30000,
            isolation_level=isolation_level,
        )
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.values = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                batches = self.consumer.poll(timeout_ms=100)
            except Exception:  # noqa: BLE001 - the broker may be restarting; keep reading
                time.sleep(0.2)
                continue
            if not batches:  # the workaround KafkaSource applies (kafka-python#3106)
                from streamrnn.connectors.kafka import await_offset_validation

                try:
                    await_offset_validation(self.consumer)
                except Exception:  # noqa: BLE001 - as above
                    time.sleep(0.2)
            got = [json.loads(r.value) for recs in batches.values() for r in recs]
            if got:
                with self.lock:
                    self.values.extend(got)

    def snapshot(self):
        with self.lock:
            return list(self.values)

    def count(self):
        with self.lock:
            return len(self.values)

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    def close(self):
        self._stop.set()
        self.thread.join(10)
        self.consumer.close(autocommit=False)
