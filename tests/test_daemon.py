import gc
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import streamrnn
from streamrnn.checkpoint import CheckpointError
from streamrnn.connectors.base import BATCH_GC_THRESHOLD, batch_gc
from streamrnn.service import ConfigError, Daemon, load_checkpoint, load_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(cell="gru", n_hidden=4, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=3)


def make_stream(n=400, seed=0):
    """Lines of a JSONL stream: every 11th record is damaged; returns (lines, good rows, reasons)."""
    rng = np.random.default_rng(seed)
    lines, good, bad = [], [], {}
    for i in range(n):
        key = f"k{i % 3}"
        x = rng.normal(size=2).round(6).tolist()
        y = round(float(np.sin(x[0]) + 0.5 * x[1]), 6) if i % 5 else None
        rec = {"key": key, "a": x[0], "b": x[1], "y": y}
        if i % 11 == 10:
            kind = (i // 11) % 6
            if kind == 0:
                lines.append('{"key": "k0", "a": 1.0,')
                bad[i] = "invalid JSON"
                continue
            if kind == 1:
                del rec["b"]
                bad[i] = "missing feature field 'b'"
            elif kind == 2:
                rec["a"] = "abc"
                bad[i] = "field 'a': not a number"
            elif kind == 3:
                rec["a"] = "inf"
                bad[i] = "field 'a': non-finite"
            elif kind == 4:
                rec["key"] = 1.5
                bad[i] = "key must be a string or an integer"
            else:
                rec["y"] = "NaN"
                bad[i] = "field 'y': non-finite"
        else:
            good.append((i, key, x, math.nan if y is None else y))
        lines.append(json.dumps(rec))
    return lines, good, bad


def config(tmp_path, src, every=50, **daemon):
    raw = {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": every, "every_seconds": 0},
        "daemon": {"batch_size": 37, "poll_timeout": 0.05, "progress": False, **daemon},
    }
    return raw


def reference_weights(good):
    m = streamrnn.Model(n_inputs=2, **MODEL)
    X = np.array([g[2] for g in good])
    Y = np.array([[g[3]] for g in good])
    m.step_many(X, Y, [g[1] for g in good])
    return m.get_weights(), m


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(x) for x in fh]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture
def stream(tmp_path):
    lines, good, bad = make_stream()
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p, good, bad


def test_mixed_records_outputs_dead_letters_and_exact_model(tmp_path, stream):
    src, good, bad = stream
    d = Daemon(validate_config(config(tmp_path, src)))
    stats = d.run()
    assert (stats["records"], stats["applied"], stats["dead_letters"]) == (400, 400 - len(bad), len(bad))
    assert len(bad) == 36
    outs = read_jsonl(tmp_path / "out.jsonl")
    assert [o["position"] for o in outs] == [[str(src), g[0]] for g in good]
    assert [o["key"] for o in outs] == [g[1] for g in good]
    ref_w, ref = reference_weights(good)
    assert_same_weights(d.model.get_weights(), ref_w)
    # predictions are the test-then-train predictions of the reference, bit for bit
    m2 = streamrnn.Model(n_inputs=2, **MODEL)
    X = np.array([g[2] for g in good])
    Y = np.array([[g[3]] for g in good])
    preds, losses = m2.step_many(X, Y, [g[1] for g in good], return_loss=True)
    assert [o["prediction"] for o in outs] == np.asarray(preds)[:, 0].tolist()
    for o, g, l in zip(outs, good, np.asarray(losses).tolist()):
        if math.isnan(g[3]):
            assert o["target"] is None and o["loss"] is None
        else:
            assert o["target"] == g[3] and o["loss"] == l
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [x["position"] for x in dead] == [[str(src), i] for i in sorted(bad)]
    for x in dead:
        assert bad[x["position"][1]] in x["reason"]
    # the checkpoint holds the model and the next position (end of file)
    arrays, meta, used = load_checkpoint(str(tmp_path / "d.ckpt"))
    assert meta["positions"] == {str(src): 400}
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]).get_weights(), ref_w)


class Boom(RuntimeError):
    pass


class CrashingSink:
    """A JSONL sink that raises after `after` writes (an injected crash mid-stream)."""

    def __init__(self, path, after):
        from streamrnn.connectors.file import JsonLinesSink

        self.inner, self.after, self.n = JsonLinesSink(path), after, 0

    def write(self, records):
        self.n += 1
        if self.n > self.after:
            raise Boom("injected crash")
        self.inner.write(records)

    def flush(self):
        self.inner.flush()

    def close(self):
        self.inner.close()


def test_injected_crash_and_restart_is_exactly_once(tmp_path, stream):
    src, good, bad = stream
    cfg = validate_config(config(tmp_path, src, every=60))
    d = Daemon(cfg, sink=CrashingSink(str(tmp_path / "out.jsonl"), after=6))
    with pytest.raises(Boom):
        d.run()
    partial = read_jsonl(tmp_path / "out.jsonl")
    assert 0 < len(partial) < len(good)
    d2 = Daemon(validate_config(config(tmp_path, src, every=60)))
    assert d2.stats["resumed_from"] == str(tmp_path / "d.ckpt")
    d2.run()
    ref_w, _ = reference_weights(good)
    assert_same_weights(d2.model.get_weights(), ref_w)
    outs = read_jsonl(tmp_path / "out.jsonl")
    by_pos = {}
    for o in outs:  # at-least-once: duplicates must be identical
        k = tuple(o["position"])
        assert by_pos.setdefault(k, o) == o
    assert sorted(p[1] for p in by_pos) == [g[0] for g in good]
    assert d2.stats["applied"] == len(good) and d2.stats["records"] == 400


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "streamrnn", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _toml(cfg):
    out = []
    for sec, d in cfg.items():
        out.append(f"[{sec}]")
        for k, v in d.items():
            out.append(f"{k} = {json.dumps(v)}")
    return "\n".join(out) + "\n"


def _wait_lines(path, n, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not reach {n} lines")


def test_kill9_midstream_and_restart_bit_identical(tmp_path):
    lines, good, bad = make_stream(n=600, seed=1)
    rec = tmp_path / "rec.jsonl"  # a recorded stream replayed at pace: 600 records over ~3 s
    with open(rec, "w") as fh:
        for i, line in enumerate(lines):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = line
            fh.write(json.dumps({"ts": 0.005 * i, "key": None, "value": value}) + "\n")
    cfg = config(tmp_path, rec, every=40)
    cfg["source"] = {"type": "replay", "path": str(rec), "speed": 1.0}
    cfg["daemon"]["batch_size"] = 20
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(_toml(cfg))
    p = _cli("run", str(cfg_path))
    _wait_lines(tmp_path / "out.jsonl", 150)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    n_before = sum(1 for _ in open(tmp_path / "out.jsonl"))
    assert n_before < len(good)
    cfg["source"]["speed"] = 0.0
    cfg_path.write_text(_toml(cfg))
    p = _cli("run", str(cfg_path))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "resumed from" in out
    arrays, meta, _ = load_checkpoint(str(tmp_path / "d.ckpt"))
    ref_w, _ = reference_weights(good)
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]).get_weights(), ref_w)
    outs = read_jsonl(tmp_path / "out.jsonl")
    by_pos = {}
    for o in outs:
        assert by_pos.setdefault(tuple(o["position"]), o) == o
    assert sorted(p[1] for p in by_pos) == [g[0] for g in good]
    assert {tuple(x["position"])[1] for x in read_jsonl(tmp_path / "dead.jsonl")} == set(bad)


def test_sigterm_checkpoints_and_exits_zero(tmp_path, stream):
    src, good, bad = stream
    cfg = config(tmp_path, src, every=100000)
    cfg["source"]["follow"] = True
    cfg["checkpoint"]["every_seconds"] = 0
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(_toml(cfg))
    p = _cli("run", str(cfg_path))
    _wait_lines(tmp_path / "out.jsonl", len(good))
    assert not os.path.exists(tmp_path / "d.ckpt")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "records read     400" in out
    arrays, meta, _ = load_checkpoint(str(tmp_path / "d.ckpt"))
    assert meta["positions"] == {str(src): 400}
    ref_w, _ = reference_weights(good)
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]).get_weights(), ref_w)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, stream):
    src, good, bad = stream
    d = Daemon(validate_config(config(tmp_path, src, every=100, max_records=200)))
    d.run()
    d = Daemon(validate_config(config(tmp_path, src, every=100, max_records=300)))
    d.run()
    ck = tmp_path / "d.ckpt"
    _, meta_prev, _ = load_checkpoint(str(ck) + ".prev")
    assert meta_prev["positions"] == {str(src): 200}
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    arrays, meta, used = load_checkpoint(str(ck))
    assert used == str(ck) + ".prev" and meta["positions"] == {str(src): 200}
    d = Daemon(validate_config(config(tmp_path, src, every=100)))
    assert d.stats["resumed_from"] == str(ck) + ".prev"
    d.run()
    assert_same_weights(d.model.get_weights(), reference_weights(good)[0])
    # both generations corrupt -> a clear error, never a silent fresh start
    for p in (ck, tmp_path / "d.ckpt.prev"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Daemon(validate_config(config(tmp_path, src)))


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.pop("source"), "source"),
        (lambda c: c["source"].update(type="ftp"), "source.type"),
        (lambda c: c["source"].pop("path"), "source.path"),
        (lambda c: c["source"].update(follow="yes"), "source.follow"),
        (lambda c: c["schema"].update(features=[]), "schema.features"),
        (lambda c: c["schema"].update(features=["a", 3]), "schema.features"),
        (lambda c: c["schema"].update(target=5), "schema.target"),
        (lambda c: c["model"].update(cell="transformer"), "model"),
        (lambda c: c["model"].update(n_inputs=3), "model.n_inputs"),
        (lambda c: c["model"].update(colour="red"), "model"),
        (lambda c: c["checkpoint"].update(every_records=-1), "checkpoint.every_records"),
        (lambda c: c["checkpoint"].update(every_secs=1), "checkpoint.every_secs"),
        (lambda c: c["daemon"].update(metrics_port=70000), "daemon.metrics_port"),
        (lambda c: c["daemon"].update(batch_size=0), "daemon.batch_size"),
        (lambda c: c.update(extra={}), "extra"),
        (lambda c: c["sink"].update(type="kafka"), "sink.bootstrap"),
        (lambda c: c["sink"].update(type="kafka", bootstrap="h:1", topic="t", process="yes"), "sink.process"),
        (lambda c: c["sink"].update(process=True), "sink.process"),
    ],
)
def test_config_errors_name_the_key(tmp_path, mutate, key):
    cfg = config(tmp_path, tmp_path / "in.jsonl")
    mutate(cfg)
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    assert str(exc.value).startswith(key + ":") or str(exc.value).startswith(key + "."), str(exc.value)


def test_toml_paths_relative_to_config_and_cli_errors(tmp_path, stream):
    src, good, bad = stream
    (tmp_path / "c.toml").write_text('[source]\ntype = "jsonl"\npath = "in.jsonl"\n[schema]\nfeatures = ["a", "b"]\n')
    cfg = load_config(str(tmp_path / "c.toml"))
    assert cfg["source"]["path"] == str(tmp_path / "in.jsonl")
    (tmp_path / "bad.toml").write_text("[source\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(tmp_path / "bad.toml"))
    from streamrnn.cli import main

    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    (tmp_path / "nofile.toml").write_text(
        '[source]\ntype = "jsonl"\npath = "missing.jsonl"\n[schema]\nfeatures = ["a"]\n'
    )
    assert main(["run", str(tmp_path / "nofile.toml")]) == 2


def test_csv_source_through_the_daemon(tmp_path):
    (tmp_path / "in.csv").write_text("key,a,b,y\nk0,0.1,0.2,0.3\nk1,0.4,x,0.5\nk0,0.5,0.6,\nk1,0.7\n")
    cfg = config(tmp_path, tmp_path / "in.csv")
    cfg["source"]["type"] = "csv"
    d = Daemon(validate_config(cfg))
    d.run()
    outs = read_jsonl(tmp_path / "out.jsonl")
    assert [(o["position"][1], o["key"], o["target"]) for o in outs] == [(1, "k0", 0.3), (3, "k0", None)]
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"].split(":")[0]) for x in dead] == [
        (2, "field 'b'"),
        (4, "CSV row of 2 fields, the header has 4"),
    ]
    m = streamrnn.Model(n_inputs=2, **MODEL)
    m.step_many(np.array([[0.1, 0.2], [0.5, 0.6]]), np.array([[0.3], [np.nan]]), ["k0", "k0"])
    assert_same_weights(d.model.get_weights(), m.get_weights())


def test_demo_end_to_end(tmp_path, capsys):
    from streamrnn.cli import main

    assert main(["demo", "--out-dir", str(tmp_path), "--no-progress", "--metrics-port", "0"]) == 0
    out = capsys.readouterr().out
    assert "records read     3000" in out and "dead letters     30" in out
    assert sum(1 for _ in open(tmp_path / "predictions.jsonl")) == 2970
    assert sum(1 for _ in open(tmp_path / "dead_letters.jsonl")) == 30


def test_metrics_endpoint(tmp_path, stream):
    import socket
    import urllib.request

    src, good, bad = stream
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(validate_config(config(tmp_path, src, metrics_port=port)))
    d.process(d.source.poll(100))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "streamrnn_records_total 100.0" in body
    assert "streamrnn_dead_letters_total 9.0" in body
    assert "streamrnn_keys 3.0" in body
    d.run()


def test_values_the_model_dtype_cannot_hold_go_to_dead_letters(tmp_path, stream, monkeypatch):
    """float32: 1e300 is finite JSON but overflows the model. The decoder names it; and a row that
    slips past the decoder is isolated by the model's own check, the rest of the batch applied."""
    src, good, bad = stream
    lines = src.read_text().splitlines()
    lines[3] = json.dumps({"key": "k0", "a": 1e300, "b": 0.5, "y": 1.0})
    src.write_text("\n".join(lines) + "\n")
    kept = [g for g in good if g[0] != 3]
    raw = config(tmp_path, src)
    raw["model"]["dtype"] = "float32"
    d = Daemon(validate_config(raw))
    d.run()
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [x["position"][1] for x in dead if "overflows" in x["reason"]] == [3]

    # the same stream with the decoder's bound switched off: the model refuses the row itself
    for p in tmp_path.glob("d.ckpt*"):
        p.unlink()
    (tmp_path / "out.jsonl").unlink()
    (tmp_path / "dead.jsonl").unlink()
    d2 = Daemon(validate_config(raw))
    monkeypatch.setattr(d2.decoder, "max_abs", float("inf"))
    d2.run()
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [x["position"][1] for x in dead if "refused by the model" in x["reason"]] == [3]
    ref = streamrnn.Model(n_inputs=2, **{**MODEL, "dtype": "float32"})
    ref.step_many(np.array([g[2] for g in kept]), np.array([[g[3]] for g in kept]), [g[1] for g in kept])
    assert_same_weights(d2.model.get_weights(), ref.get_weights())
    assert_same_weights(d.model.get_weights(), ref.get_weights())
    assert [o["position"][1] for o in read_jsonl(tmp_path / "out.jsonl")] == [g[0] for g in kept]


def test_target_lags_and_standardize_reach_the_model_and_summary_prints_persistence(tmp_path, stream):
    src, good, bad = stream
    raw = config(tmp_path, src)
    raw["model"].update(target_lags=2, standardize=True)
    d = Daemon(validate_config(raw))
    assert (d.model.config["target_lags"], d.model.config["standardize"]) == (2, True)
    assert d.model.n_cell_inputs == 2 + 2 * 2
    stats = d.run()
    # the daemon's model is the Model built with both options, fed the good records
    ref = streamrnn.Model(n_inputs=2, target_lags=2, standardize=True, **MODEL)
    X = np.array([g[2] for g in good])
    Y = np.array([[g[3]] for g in good])
    _, losses = ref.step_many(X, Y, [g[1] for g in good], return_loss=True)
    assert_same_weights(d.model.get_weights(), ref.get_weights())
    # persistence computed independently: per key the previous target, ½(y_prev − y)², on the records
    # with a target whose key had one before
    last, p_sum, m_sum, n = {}, 0.0, 0.0, 0
    for (_, key, _, y), loss in zip(good, losses.tolist()):
        if math.isnan(y):
            continue
        if key in last:
            p_sum += 0.5 * (last[key] - y) ** 2
            m_sum += loss
            n += 1
        last[key] = y
    assert n > 200 and stats["persistence_count"] == n
    assert stats["persistence_loss_sum"] == pytest.approx(p_sum, rel=1e-12)
    assert stats["persistence_model_loss_sum"] == pytest.approx(m_sum, rel=1e-12)
    text = d.summary()
    line = next(x for x in text.splitlines() if "persistence loss" in x)
    assert f"{p_sum / n:.6g}" in line and f"{m_sum / n:.6g}" in line and f"same {n} records" in line


def test_config_checks_target_lags_and_standardize(tmp_path, stream):
    src, _, _ = stream
    for bad in ({"target_lags": -1}, {"target_lags": 1.5}, {"standardize": "yes"}, {"baseline": "mean"}):
        raw = config(tmp_path, src)
        raw["model"].update(bad)
        with pytest.raises(ConfigError, match=f"model.{next(iter(bad))}"):
            validate_config(raw)


class ThresholdSink(CrashingSink):
    """Records the young-generation GC threshold at every write."""

    def __init__(self, path, after):
        super().__init__(path, after)
        self.seen = []

    def write(self, records):
        self.seen.append(gc.get_threshold()[0])
        super().write(records)


@pytest.mark.parametrize("crash", [False, True])
def test_the_daemon_collects_young_garbage_a_batch_at_a_time_and_restores_the_threshold(tmp_path, stream, crash):
    src, good, bad = stream
    before = gc.get_threshold()
    sink = ThresholdSink(str(tmp_path / "out.jsonl"), after=2 if crash else 10**9)
    d = Daemon(validate_config(config(tmp_path, src)), sink=sink)
    if crash:
        with pytest.raises(Boom):
            d.run()
    else:
        d.run()
        assert len(read_jsonl(tmp_path / "out.jsonl")) == len(good)
    assert sink.seen and set(sink.seen) == {max(BATCH_GC_THRESHOLD, before[0])}
    assert gc.get_threshold() == before


def test_batch_gc_keeps_a_higher_threshold_and_the_older_generations():
    before = gc.get_threshold()
    try:
        gc.set_threshold(BATCH_GC_THRESHOLD * 2, 7, 3)
        with batch_gc():
            assert gc.get_threshold() == (BATCH_GC_THRESHOLD * 2, 7, 3)
        gc.set_threshold(100, 7, 3)
        with pytest.raises(Boom), batch_gc():
            assert gc.get_threshold() == (BATCH_GC_THRESHOLD, 7, 3)
            raise Boom("inside")
        assert gc.get_threshold() == (100, 7, 3)
    finally:
        gc.set_threshold(*before)
