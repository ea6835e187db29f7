"""Hardening against hostile input, the daemon's state and start (issue 16, items 3, 5-10, 12).

Each test drives the daemon (or ``Model.load``) with crafted checkpoints, colliding paths, absurd
durations or configs, and asserts the exact outcome: a CheckpointError that falls back to the
previous generation, a ``streamrnn: error:`` line naming the key with exit status 2, and a model
bit-identical to a run over the good records only (nothing lost, nothing applied twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import streamrnn
from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError
from streamrnn.service import Daemon, load_checkpoint, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(cell="gru", n_hidden=4, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=3)
N = 300


# ---------------------------------------------------------------------------- helpers
def write_stream(path, n=N, seed=0):
    """``n`` good keyed records; returns the rows (key, [a, b], y) in order."""
    rng = np.random.default_rng(seed)
    rows = []
    with open(path, "w") as fh:
        for i in range(n):
            key = f"k{i % 5}"
            a, b = (float(v) for v in rng.normal(size=2).round(6))
            y = round(float(np.sin(a) + 0.5 * b), 6)
            fh.write(json.dumps({"key": key, "a": a, "b": b, "y": y}) + "\n")
            rows.append((key, [a, b], y))
    return rows


def config(tmp_path, src, every=100, **daemon):
    return {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": every, "every_seconds": 0},
        "daemon": {"batch_size": 50, "poll_timeout": 0.05, "progress": False, **daemon},
    }


def reference(rows):
    m = streamrnn.Model(n_inputs=2, **MODEL)
    m.step_many(np.array([r[1] for r in rows]), np.array([[r[2]] for r in rows]), [r[0] for r in rows])
    return m


def assert_same_weights(model, ref):
    a, b = model.get_weights(), ref.get_weights()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def forge(header, body=b"", version=ckpt.FORMAT_VERSION):
    """A checkpoint file of any header (a JSON-able object, or raw bytes) and body, with a valid
    SHA-256 trailer: what anyone who can write the directory can make."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    data = struct.pack("<8sIQ", ckpt.MAGIC, version, len(head)) + head + body
    return data + hashlib.sha256(data).digest()


def cli(*args, env=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "streamrnn", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def toml(cfg):
    out = []
    for sec, d in cfg.items():
        out.append(f"[{sec}]")
        out.extend(f"{k} = {json.dumps(v)}" for k, v in d.items())
    return "\n".join(out) + "\n"


@pytest.fixture
def two_generations(tmp_path):
    """A stream and a daemon checkpoint of 200 records (newest) over one of 100 (PATH.prev)."""
    src = tmp_path / "in.jsonl"
    rows = write_stream(src)
    Daemon(validate_config(config(tmp_path, src, max_records=100))).run()
    Daemon(validate_config(config(tmp_path, src, max_records=200))).run()
    ck = str(tmp_path / "d.ckpt")
    assert load_checkpoint(ck)[1]["positions"] == {str(src): 200}
    assert ckpt.load(ck + ".prev")[1]["positions"] == {str(src): 100}
    return src, rows, ck


# ---------------------------------------------------------------------------- item 3: crafted checkpoints
def _set(path, value):
    """A mutation of (arrays, meta) that sets meta[path...] = value."""

    def mutate(arrays, meta, src):
        d = meta
        for k in path[:-1]:
            d = d[k]
        d[src if path[-1] == "SRC" else path[-1]] = value

    return mutate


def _dup_keys(arrays, meta, src):
    keys = meta["model"]["keys"]
    keys[1] = list(keys[0])  # two keys share a slot: the next checkpoint looped forever


def _nan_theta(arrays, meta, src):
    arrays["theta"][:] = np.nan


def _inf_hidden(arrays, meta, src):
    arrays["key.hidden"][0, 0] = np.inf


def _nan_opt(arrays, meta, src):
    arrays["opt_state"][0, 3] = np.nan


def _wide_theta(arrays, meta, src):
    arrays["theta"] = np.zeros(arrays["theta"].shape[0] + 1)


def _extra_key_rows(arrays, meta, src):
    for name in [n for n in arrays if n.startswith("key.")]:
        arrays[name] = np.concatenate([arrays[name], arrays[name][:1]])


def _extra_array(arrays, meta, src):
    arrays["junk"] = np.zeros(1000)


def _no_influence(arrays, meta, src):
    del arrays["key.influence"]


def _theta_int(arrays, meta, src):
    arrays["theta"] = arrays["theta"].astype(np.int64)


def _max_keys_over(arrays, meta, src):
    meta["model"]["keys"] = meta["model"]["keys"] + [["s", f"x{i}"] for i in range(2000)]
    for name in [n for n in arrays if n.startswith("key.")]:
        arrays[name] = np.zeros((len(meta["model"]["keys"]),) + arrays[name].shape[1:], arrays[name].dtype)


# mutation of a real newest generation (the checksum recomputed) -> what the error says
CRAFTED = {
    "duplicate keys": (_dup_keys, "the key 'k0' appears more than once"),
    "key of a float": (lambda a, m, s: m["model"]["keys"].__setitem__(0, ["f", 1.5]), "entry 0 is not a valid key"),
    "key tag s with an int": (
        lambda a, m, s: m["model"]["keys"].__setitem__(0, ["s", 3]),
        "entry 0 is not a valid key",
    ),
    "key not a pair": (lambda a, m, s: m["model"]["keys"].__setitem__(0, "k0"), "entry 0 is not a [tag, value] pair"),
    "keys not a list": (_set(("model", "keys"), {"a": 1}), "saved keys: not a list"),
    "keys beyond max_keys": (_max_keys_over, "more than max_keys=1024"),
    "all-NaN theta": (_nan_theta, "array 'theta' holds NaN or infinite values"),
    "inf hidden state": (_inf_hidden, "array 'key.hidden' holds NaN or infinite values"),
    "NaN optimizer state": (_nan_opt, "array 'opt_state' holds NaN or infinite values"),
    "theta one too wide": (_wide_theta, "array 'theta' is float64[102], expected float64[101]"),
    "theta of integers": (_theta_int, "array 'theta' is int64[101], expected float64[101]"),
    "more key rows than keys": (_extra_key_rows, "saved keys: 5 rows of keys, but 6 rows of per-key state"),
    "unexpected array": (_extra_array, "unexpected array 'junk'"),
    "missing array": (_no_influence, "missing array 'key.influence'"),
    "position a string": (_set(("positions", "SRC"), "abc"), "not an integer position >= 0: abc"),
    "position a float": (_set(("positions", "SRC"), 150.5), "not an integer position >= 0: 150.5"),
    "position negative": (_set(("positions", "SRC"), -3), "not an integer position >= 0: -3"),
    "position a boolean": (_set(("positions", "SRC"), True), "not an integer position >= 0: True"),
    "position null": (_set(("positions", "SRC"), None), "not an integer position >= 0: None"),
    "position 2**64": (_set(("positions", "SRC"), 2**64), "not an integer position >= 0"),
    "positions a list": (_set(("positions",), [1, 2]), "not a daemon checkpoint (no positions)"),
    "model meta a string": (_set(("model",), "x"), "not a daemon checkpoint (no positions)"),
    "model kind foreign": (_set(("model", "kind"), "torch"), "not a streamrnn Model checkpoint"),
    "another n_hidden": (_set(("model", "config", "n_hidden"), 100000), "the saved model has another configuration"),
    "counts not numbers": (_set(("daemon", "records"), "many"), "the saved counts are not finite numbers"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_newest_generation_falls_back_to_the_previous_one(tmp_path, two_generations, name, caplog):
    """A newest generation that passes its checksum but lies: refused with a CheckpointError that
    names the fault, the daemon resumes from PATH.prev, and the model ends bit-identical to one
    run over the stream once (the 100 records between the two generations applied once)."""
    src, rows, ck = two_generations
    arrays, meta = ckpt.load(ck)
    mutate, reason = CRAFTED[name]
    mutate(arrays, meta, str(src))
    with open(ck, "wb") as fh:
        fh.write(ckpt.dumps(arrays, meta))
    d = Daemon(validate_config(config(tmp_path, src)))
    assert d.stats["resumed_from"] == ck + ".prev"
    warned = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert any(reason in m for m in warned), warned
    d.run()
    assert d.stats["records"] == N  # 100 before the previous generation + 200 after it
    assert_same_weights(d.model, reference(rows))
    assert [f for f in os.listdir(tmp_path) if f.startswith("d.ckpt.unusable-")]  # kept for inspection


def _good_header():
    m = streamrnn.Model(n_inputs=2, n_hidden=3)
    arrays, meta = m.state_arrays()
    return arrays, meta


def _body(arrays):
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())


def _entries(arrays):
    return [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()]


def _header_cases():
    arrays, meta = _good_header()
    body = _body(arrays)
    ent = _entries(arrays)
    big = [dict(ent[0], shape=[2**40, 2**40])] + ent[1:]
    wrap = [dict(ent[0], shape=[2**62, 2**62, 4])] + ent[1:]  # wraps to 0 in int64 arithmetic
    cases = {
        "absurd shape": (forge({"meta": meta, "arrays": big}, body), "runs past the end of the file"),
        "shape overflowing int64": (forge({"meta": meta, "arrays": wrap}, body), "runs past the end of the file"),
        "deep header": (forge(b"[" * 100_000 + b"]" * 100_000, body), "unreadable header: RecursionError"),
        "header a list": (forge([1, 2], body), "not an object with a 'meta' object"),
        "meta a number": (forge({"meta": 3, "arrays": ent}, body), "not an object with a 'meta' object"),
        "arrays missing": (forge({"meta": meta}, body), "no list of arrays"),
        "entry a string": (forge({"meta": meta, "arrays": ["theta"] + ent[1:]}, body), "array entry 0: expected"),
        "entry without shape": (
            forge({"meta": meta, "arrays": [{"name": "theta", "dtype": "float64"}] + ent[1:]}, body),
            "array entry 0: expected name, dtype and shape",
        ),
        "shape a string": (
            forge({"meta": meta, "arrays": [dict(ent[0], shape="67")] + ent[1:]}, body),
            "the shape is not a list of at most 8 integers",
        ),
        "shape of floats": (
            forge({"meta": meta, "arrays": [dict(ent[0], shape=[67.0])] + ent[1:]}, body),
            "the shape is not a list of at most 8 integers",
        ),
        "shape of booleans": (
            forge({"meta": meta, "arrays": [dict(ent[0], shape=[True])] + ent[1:]}, body),
            "the shape is not a list of at most 8 integers",
        ),
        "64 dimensions": (
            forge({"meta": meta, "arrays": [dict(ent[0], shape=[1] * 64)] + ent[1:]}, body),
            "the shape is not a list of at most 8 integers",
        ),
        "negative dimension": (
            forge({"meta": meta, "arrays": [dict(ent[0], shape=[-67])] + ent[1:]}, body),
            "has a negative dimension",
        ),
        "name a number": (
            forge({"meta": meta, "arrays": [dict(ent[0], name=7)] + ent[1:]}, body),
            "the name is not a short string",
        ),
        "dtype object": (
            forge({"meta": meta, "arrays": [dict(ent[0], dtype="object")] + ent[1:]}, body),
            "unsupported dtype object",
        ),
        "dtype a list": (
            forge({"meta": meta, "arrays": [dict(ent[0], dtype=["f8"])] + ent[1:]}, body),
            "unsupported dtype",
        ),
        "array named twice": (
            forge({"meta": meta, "arrays": ent + [ent[0]]}, body + np.ascontiguousarray(arrays["theta"]).tobytes()),
            "array 'theta' appears twice",
        ),
        "trailing bytes": (forge({"meta": meta, "arrays": ent}, body + b"\0" * 8), "8 unexpected trailing bytes"),
        "header not UTF-8": (forge(b"\xff\xfe{}", body), "unreadable header: UnicodeDecodeError"),
        "header 10**6 digits": (forge(b"1" * 10**6, body), "unreadable header: ValueError"),
    }
    return cases


HEADER_CASES = _header_cases()


@pytest.mark.parametrize("name", list(HEADER_CASES))
def test_malformed_header_with_a_valid_checksum_is_a_checkpoint_error(tmp_path, name):
    """Absurd shapes, deep headers, malformed entries: a CheckpointError naming the fault, never
    ValueError, RecursionError, TypeError, KeyError or MemoryError; nothing is allocated."""
    data, reason = HEADER_CASES[name]
    p = tmp_path / "x.ckpt"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(p)
    assert reason in str(exc.value)
    with pytest.raises(CheckpointError) as exc:
        streamrnn.Model.load(p)
    assert reason in str(exc.value)


def test_huge_header_length_is_refused_unread(tmp_path):
    data = struct.pack("<8sIQ", ckpt.MAGIC, ckpt.FORMAT_VERSION, 2**63) + b"{}" + b"\0" * 32
    p = tmp_path / "x.ckpt"
    p.write_bytes(data)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        ckpt.load(p)
    with open(p, "rb") as fh, pytest.raises(CheckpointError, match="runs past the end of the file"):
        ckpt.peek_meta(fh, str(p))


def test_model_load_refuses_duplicate_keys_and_nan_theta(tmp_path):
    m = streamrnn.Model(n_inputs=2, n_hidden=3)
    m.step_many(np.ones((4, 2)), np.ones((4, 1)), ["a", "b", "c", "a"])
    arrays, meta = m.state_arrays()
    meta["keys"][0] = ["s", "c"]  # LRU order [b, c, a] -> [c, c, a]
    (tmp_path / "dup.ckpt").write_bytes(ckpt.dumps(arrays, meta))
    with pytest.raises(CheckpointError, match="the key 'c' appears more than once"):
        streamrnn.Model.load(tmp_path / "dup.ckpt")
    arrays, meta = m.state_arrays()
    arrays["theta"] = np.full_like(arrays["theta"], np.nan)
    (tmp_path / "nan.ckpt").write_bytes(ckpt.dumps(arrays, meta))
    with pytest.raises(CheckpointError, match="array 'theta' holds NaN or infinite values"):
        streamrnn.Model.load(tmp_path / "nan.ckpt")
    arrays, meta = m.state_arrays()
    meta = json.loads(json.dumps(meta))  # state_arrays' config is the model's own dict
    meta["config"]["n_hidden"] = "three"
    (tmp_path / "cfg.ckpt").write_bytes(ckpt.dumps(arrays, meta))
    with pytest.raises(CheckpointError, match="the saved model configuration is not valid: n_hidden"):
        streamrnn.Model.load(tmp_path / "cfg.ckpt")
    arrays, meta = m.state_arrays()
    (tmp_path / "ok.ckpt").write_bytes(ckpt.dumps(arrays, meta))
    assert streamrnn.Model.load(tmp_path / "ok.ckpt").keys == m.keys


def test_duplicate_keys_never_reach_the_daemon_loop(tmp_path):
    """The original failure: a checkpoint with two equal keys (and no previous generation) made
    the next checkpoint loop forever in _permute_rows, deaf to SIGTERM. Now the daemon refuses to
    start, exit status 2, with a `streamrnn: error:` line, in seconds."""
    src = tmp_path / "in.jsonl"
    write_stream(src)
    cfg = config(tmp_path, src, every=50, max_records=100)
    Daemon(validate_config(cfg)).run()
    arrays, meta = ckpt.load(tmp_path / "d.ckpt")
    meta["model"]["keys"][2] = list(meta["model"]["keys"][0])
    (tmp_path / "d.ckpt").write_bytes(ckpt.dumps(arrays, meta))
    os.unlink(tmp_path / "d.ckpt.prev")
    cfg["daemon"].pop("max_records")
    (tmp_path / "c.toml").write_text(toml(cfg))
    p = cli("run", str(tmp_path / "c.toml"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("streamrnn: error: no usable checkpoint: ") and "appears more than once" in last
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- item 3: HMAC
def test_checkpoint_key_signs_and_refuses_unsigned_or_foreign_files(tmp_path, two_generations, monkeypatch):
    src, rows, ck = two_generations  # written without a key: plain SHA-256
    monkeypatch.setenv("STREAMRNN_CHECKPOINT_KEY", "s3cret")
    with pytest.raises(CheckpointError, match="not signed: STREAMRNN_CHECKPOINT_KEY is set"):
        ckpt.load(ck)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Daemon(validate_config(config(tmp_path, src)))
    for p in (ck, ck + ".prev"):
        os.unlink(p)
    d = Daemon(validate_config(config(tmp_path, src, max_records=150)))
    d.run()
    assert ckpt.load(ck)[1]["positions"] == {str(src): 150}  # signed with the key: accepted
    with open(ck, "rb") as fh:
        assert ckpt.peek_meta(fh)["positions"] == {str(src): 150}
    data = open(ck, "rb").read()
    assert data[-32:] != hashlib.sha256(data[:-32]).digest()
    monkeypatch.setenv("STREAMRNN_CHECKPOINT_KEY", "another")
    with pytest.raises(CheckpointError, match="signature mismatch: not written with this STREAMRNN_CHECKPOINT_KEY"):
        ckpt.load(ck)
    # a forger who knows the format but not the key: a valid SHA-256 is not enough
    arrays, meta = (lambda: (monkeypatch.setenv("STREAMRNN_CHECKPOINT_KEY", "s3cret"), ckpt.load(ck))[1])()
    monkeypatch.delenv("STREAMRNN_CHECKPOINT_KEY")
    arrays["theta"][:] = 0.0
    open(ck, "wb").write(ckpt.dumps(arrays, meta))
    monkeypatch.setenv("STREAMRNN_CHECKPOINT_KEY", "s3cret")
    with pytest.raises(CheckpointError, match="not signed"):
        ckpt.load(ck)
    monkeypatch.delenv("STREAMRNN_CHECKPOINT_KEY")
    with pytest.raises(CheckpointError, match="checksum mismatch"):  # a signed file read without the key
        ckpt.load(ck + ".prev")


# ---------------------------------------------------------------------------- item 8: the temp file
def test_temp_checkpoint_file_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    """A symlink planted at every name the writer could pick: the target is neither followed nor
    truncated; the checkpoint is written beside it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = str(tmp_path / "d.ckpt")
    real_open = os.open
    planted = []

    def open_after_planting(name, flags, mode=0o777, **kw):
        if ".tmp-" in os.fspath(name):
            os.symlink(victim, name)  # the attacker wins every race
            planted.append(name)
        return real_open(name, flags, mode, **kw)

    monkeypatch.setattr(os, "open", open_after_planting)
    with pytest.raises(FileExistsError, match="cannot create a temporary checkpoint file"):
        ckpt.save_newest(path, ckpt.pieces({"a": np.ones(3)}, {}))
    monkeypatch.setattr(os, "open", real_open)
    assert victim.read_text() == "precious"
    assert len(planted) == 16 and not os.path.exists(path)
    # the flags themselves: exclusive, no symlink followed
    seen = []
    monkeypatch.setattr(os, "open", lambda name, flags, mode=0o777: seen.append(flags) or real_open(name, flags, mode))
    ckpt.save_newest(path, ckpt.pieces({"a": np.ones(3)}, {}))
    monkeypatch.setattr(os, "open", real_open)
    assert seen[0] & os.O_EXCL and seen[0] & os.O_NOFOLLOW and seen[0] & os.O_CREAT
    assert ckpt.load(path)[0]["a"].tolist() == [1.0, 1.0, 1.0]
    assert victim.read_text() == "precious"


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = str(tmp_path / "d.ckpt")
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    for name in (f".d.ckpt.tmp-{dead_pid}", f".d.ckpt.tmp-{dead_pid}.abcdef012345"):
        (tmp_path / name).write_bytes(b"partial")
    ckpt.save_newest(path, ckpt.pieces({"a": np.ones(1)}, {}))
    assert sorted(os.listdir(tmp_path)) == ["d.ckpt"]
