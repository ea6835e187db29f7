"""Long run: 1 000 000 records through the file source with more keys than ``max_keys`` (LRU
eviction all along); the daemon's resident memory is sampled while it runs and must stay flat
(growth under 5 % after warm-up)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from streamrnn.service import load_checkpoint
from tests.reliability.common import start_daemon, toml

pytestmark = pytest.mark.slow

N_RECORDS = 1_000_000
N_KEYS = 5_000  # keys seen ...
MAX_KEYS = 500  # ... and the most that hold state at once
BAD_EVERY = 1_000  # a dead letter every 1 000 records


def write_stream(path, n, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, N_KEYS, n)
    ab = rng.normal(size=(n, 2)).round(4)
    y = np.tanh(ab[:, 0] - 0.5 * ab[:, 1]).round(4)
    chunk = 100_000
    with open(path, "w") as fh:
        for lo in range(0, n, chunk):
            lines = [
                f'{{"key":"s{k}","a":{a},"b":{b},"y":{t}}}'
                for k, a, b, t in zip(
                    keys[lo : lo + chunk].tolist(),
                    ab[lo : lo + chunk, 0].tolist(),
                    ab[lo : lo + chunk, 1].tolist(),
                    y[lo : lo + chunk].tolist(),
                )
            ]
            for i in range(BAD_EVERY - 1 - lo % BAD_EVERY, len(lines), BAD_EVERY):
                lines[i] = lines[i][:-5]  # truncated: invalid JSON
            fh.write("\n".join(lines) + "\n")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def test_one_million_records_memory_flat(tmp_path):
    t0 = time.monotonic()
    src = tmp_path / "in.jsonl"
    write_stream(src, N_RECORDS)
    t_gen = time.monotonic() - t0
    cfg = {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": {
            "cell": "gru",
            "n_hidden": 4,
            "learner": "rtrl",
            "optimizer": "adam",
            "lr": 0.01,
            "clip": 1.0,
            "seed": 1,
            "max_keys": MAX_KEYS,
        },
        "checkpoint": {"path": str(tmp_path / "long.ckpt"), "every_records": 100_000, "every_seconds": 0},
        "daemon": {"batch_size": 2_000, "poll_timeout": 0.1, "progress": False},
    }
    cfg_path = tmp_path / "long.toml"
    cfg_path.write_text(toml(cfg))
    out_path = tmp_path / "out.jsonl"
    t_run = time.monotonic()
    proc = start_daemon(cfg_path, tmp_path / "daemon.log")
    samples = []  # (seconds, output bytes, RSS KiB)
    try:
        while proc.poll() is None:
            rss = rss_kib(proc.pid)
            if rss:
                samples.append((time.monotonic() - t_run, out_path.stat().st_size if out_path.exists() else 0, rss))
            time.sleep(0.25)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    run_s = time.monotonic() - t_run
    assert rc == 0, (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
    _, meta, _ = load_checkpoint(str(tmp_path / "long.ckpt"))
    assert meta["positions"] == {str(src): N_RECORDS}
    assert meta["daemon"]["dead_letters"] == N_RECORDS // BAD_EVERY
    assert len(meta["model"]["keys"]) == MAX_KEYS

    # Progress is measured by output bytes (about proportional to records); warm-up = the first
    # 20 %. A leak raises the level steadily, so compare the median RSS just after warm-up
    # (20-30 %) with the median over the last 20 %; transient peaks (a checkpoint being
    # serialised) are reported, not compared.
    total = out_path.stat().st_size
    after = [(b / total, r) for _, b, r in samples if b >= 0.2 * total]
    assert len(after) >= 10, f"too few samples after warm-up: {samples}"
    baseline = float(np.median([r for f, r in after if f < 0.3]))
    final = float(np.median([r for f, r in after if f >= 0.8]))
    peak = max(r for _, r in after)
    growth = final / baseline - 1
    print(
        json.dumps(
            {
                "test": "long_run",
                "records": N_RECORDS,
                "keys_seen": N_KEYS,
                "max_keys": MAX_KEYS,
                "records_per_s": round(N_RECORDS / run_s),
                "rss_start_mib": round(samples[0][2] / 1024, 1),
                "rss_after_warmup_mib": round(baseline / 1024, 1),
                "rss_final_mib": round(final / 1024, 1),
                "rss_peak_mib": round(peak / 1024, 1),
                "growth_pct": round(100 * growth, 2),
                "samples": len(samples),
                "generate_s": round(t_gen, 1),
                "run_s": round(run_s, 1),
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    )
    assert growth < 0.05
