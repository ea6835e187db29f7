"""Divergence: records that would make the loss or gradient non-finite skip their update, are
counted, leave every parameter finite, and show in the Prometheus endpoint."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.request

import numpy as np

import streamrnn
from streamrnn.service import Daemon, validate_config
from tests.reliability.common import FEATURES, MODEL, read_jsonl, reference

# decoder-valid records (finite numbers) that overflow the loss or its gradient
DIVERGENT = [
    {"a": 0.5, "b": -0.5, "y": 1e200},
    {"a": 1e300, "b": 1.0, "y": 1e300},
    {"a": 1.0, "b": 1.0, "y": 1e154},
    {"a": -2.0, "b": 3.0, "y": -1e250},
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run_until(d, n_records, timeout=60):
    """Run the daemon in a thread on a followed file; return once it has read ``n_records``."""
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while d.stats["records"] < n_records and time.monotonic() < deadline:
        time.sleep(0.02)
    return t


def test_nonfinite_updates_skipped_counted_and_exported(tmp_path):
    rng = np.random.default_rng(4)
    rows, lines, divergent_at = [], [], []
    for i in range(400):
        if i % 40 == 17:
            rec = dict(DIVERGENT[len(divergent_at) % len(DIVERGENT)], key=f"k{i % 5}")
            divergent_at.append(i)
        else:
            a, b = rng.normal(size=2).round(5).tolist()
            rec = {"a": a, "b": b, "y": round(math.tanh(a - b), 5), "key": f"k{i % 5}"}
        rows.append((rec["key"], [rec["a"], rec["b"]], rec["y"]))
        lines.append(json.dumps(rec))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    port = free_port()
    cfg = validate_config(
        {
            "source": {"type": "jsonl", "path": str(src), "follow": True},
            "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            "schema": {"features": FEATURES, "target": "y", "key": "key"},
            "model": dict(MODEL, standardize=False),  # raw: these records overflow the cell
            "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": 100, "every_seconds": 0},
            "daemon": {"batch_size": 32, "poll_timeout": 0.05, "progress": False, "metrics_port": port},
        }
    )
    d = Daemon(cfg)
    thread = run_until(d, len(rows))
    metrics = scrape(port)
    d.stop()
    thread.join(30)
    n_div = len(divergent_at)

    # every divergent record skipped its update and was counted; nothing else was
    assert d.model.stats["skipped_nonfinite"] == n_div
    assert metrics["streamrnn_skipped_updates_total"] == n_div
    assert metrics["streamrnn_rejected_samples_total"] == d.model.stats["rejected_nonfinite_state"] == 0
    assert metrics["streamrnn_records_total"] == len(rows)
    assert np.isfinite(d.model.theta).all() and np.isfinite(d.model.opt_state).all()
    assert d.model.stats["updates"] == len(rows) - n_div
    # each skipped step left the parameters as they were (replayed step by step on a fresh model)
    m = streamrnn.Model(**MODEL, standardize=False)
    for i, (key, x, y) in enumerate(rows):
        before = m.theta.copy()
        m.step_many(np.array([x]), np.array([[y]]), [key])
        assert np.array_equal(before, m.theta) == (i in divergent_at), i
    assert np.array_equal(m.theta, d.model.theta)
    assert np.array_equal(reference(rows, dict(MODEL, standardize=False))[0].theta, d.model.theta)
    # their outputs carry a finite prediction; the loss is null where it overflowed (the
    # y = 1e154 record has a finite loss, 5e307, whose gradient overflows)
    outs = {o["position"][1]: o for o in read_jsonl(tmp_path / "out.jsonl")}
    assert all(math.isfinite(outs[i]["prediction"]) for i in divergent_at)
    assert all(outs[i]["loss"] is None or outs[i]["loss"] > 1e300 for i in divergent_at)
    assert sum(outs[i]["loss"] is None for i in divergent_at) == sum(j % len(DIVERGENT) != 2 for j in range(n_div))
    assert all(outs[i]["loss"] is not None for i in outs if i not in divergent_at)

    # the count is part of the model state: a restarted daemon reports the lifetime total
    port2 = free_port()
    cfg["daemon"]["metrics_port"] = port2
    d2 = Daemon(cfg)
    assert d2.stats["resumed_from"]
    thread = run_until(d2, len(rows))
    metrics2 = scrape(port2)
    d2.stop()
    thread.join(30)
    assert metrics2["streamrnn_skipped_updates_total"] == n_div
    print(
        json.dumps(
            {
                "test": "divergence",
                "records": len(rows),
                "skipped_updates": n_div,
                "metric": metrics["streamrnn_skipped_updates_total"],
            }
        )
    )
