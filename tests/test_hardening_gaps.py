"""Gaps the hardening issue named in the suite: classification and binary tasks through the daemon, a
full disk under the sinks (not only the checkpoint), and unicode and very long keys through a
checkpoint reload. Each against an independent run of the Model on the good records only."""

import errno
import json

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import cli
from streamrnn.service import Daemon, validate_config

MODEL = dict(cell="gru", n_hidden=3, lr=0.01, seed=7)


def _config(tmp_path, src, model, every=10, batch=6):
    return {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["a", "b"], "target": "y", "key": "k"},
        "model": model,
        "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": every, "every_seconds": 0},
        "daemon": {"batch_size": batch, "progress": False},
    }


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _toml(cfg):
    return "".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.items()) for sec, d in cfg.items())


# ---------------------------------------------------------------- classification and binary tasks
@pytest.mark.parametrize(
    "task, n_outputs, labels, bad",
    [
        ("classification", 3, [0, 1, 2], [(3, "class 3 is not an integer in [0, 3)"), (1.5, "class 1.5")]),
        ("binary", 1, [0, 1], [(0.5, "binary target must be 0 or 1, got 0.5"), (2, "got 2")]),
    ],
)
def test_classification_and_binary_tasks_through_the_daemon(tmp_path, task, n_outputs, labels, bad):
    """Outputs are the Model's probabilities on the good records, labels out of range are dead letters
    with their reason, and the final weights are bit-identical to the Model run on the good records."""
    rng = np.random.default_rng(3)
    lines, good = [], []
    for i in range(50):
        a, b = (float(v) for v in rng.standard_normal(2))
        y = labels[i % len(labels)] if i % 4 else None  # every fourth record predicts only
        if i in (17, 33):
            lines.append(json.dumps({"k": f"e{i % 3}", "a": a, "b": b, "y": bad[i == 33][0]}))
            continue
        rec = {"k": f"e{i % 3}", "a": a, "b": b}
        if y is not None:
            rec["y"] = y
        lines.append(json.dumps(rec))
        good.append((f"e{i % 3}", [a, b], np.nan if y is None else float(y)))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    model = dict(MODEL, task=task, n_outputs=n_outputs)
    d = Daemon(validate_config(_config(tmp_path, src, model)))
    d.run()
    m = sr.Model(n_inputs=2, **model)
    want = m.step_many(np.array([g[1] for g in good]), np.array([g[2] for g in good]), [g[0] for g in good])
    outs = _read(tmp_path / "out.jsonl")
    got = np.array([o["prediction"] for o in outs]).reshape(len(outs), -1)
    assert np.array_equal(got, want)
    assert [o["target"] for o in outs] == [None if np.isnan(g[2]) else g[2] for g in good]
    dead = _read(tmp_path / "dead.jsonl")
    assert [x["position"][1] for x in dead] == [17, 33]
    assert bad[0][1] in dead[0]["reason"] and bad[1][1] in dead[1]["reason"]
    for name, w in m.get_weights().items():
        assert np.array_equal(d.model.get_weights()[name], w), name


# ---------------------------------------------------------------- a full disk under the sinks
class _FullDisk:
    """A sink file whose writes fail with ENOSPC once ``room`` bytes have been written, after a partial
    write of what still fits, as a full disk does."""

    def __init__(self, fh, room):
        self._fh, self.room = fh, room

    def write(self, data):
        if len(data) > self.room:
            self._fh.write(data[: self.room])
            self._fh.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


@pytest.mark.parametrize("which", ["sink", "dead_letter"])
def test_a_full_disk_under_a_sink_stops_cleanly_and_a_restart_completes(tmp_path, monkeypatch, capsys, which):
    """The daemon stops with exit 2 and a clear error, without a traceback and without advancing the
    checkpoint past what the sink lost; the partial line is cut when the sink is reopened, and a restart
    once there is room gives every output (at least once, each whole) and weights bit-identical to an
    uninterrupted run."""
    from streamrnn.connectors import file as file_sinks

    rng = np.random.default_rng(1)
    lines = []
    for i in range(80):
        a, b, y = (float(v) for v in rng.standard_normal(3))
        lines.append(json.dumps({"k": f"s{i % 2}", "a": a, "b": b, "y": y}) if i % 9 else "not json")
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path, src, dict(MODEL))
    (tmp_path / "c.toml").write_text(_toml(cfg))
    target = cfg[which]["path"]
    real_open = file_sinks.JsonLinesSink._open

    def full_after(self, path, mode, **kw):
        fh = real_open(self, path, mode, **kw)
        return _FullDisk(fh, room=1500) if self.path == target else fh

    monkeypatch.setattr(file_sinks.JsonLinesSink, "_open", full_after)
    assert cli.main(["run", str(tmp_path / "c.toml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"streamrnn: error: {target}: cannot write: No space left on device" in err
    assert "Traceback" not in err
    with open(target, "rb") as fh:
        assert not fh.read().endswith(b"\n")  # the full disk left half a line
    monkeypatch.setattr(file_sinks.JsonLinesSink, "_open", real_open)  # room again
    assert cli.main(["run", str(tmp_path / "c.toml"), "--no-progress"]) == 0
    outs, dead = _read(tmp_path / "out.jsonl"), _read(tmp_path / "dead.jsonl")  # every line whole JSON
    good = [json.loads(x) for x in lines if x != "not json"]
    assert sorted({o["position"][1] for o in outs}) == [i for i, x in enumerate(lines) if x != "not json"]
    assert sorted({x["position"][1] for x in dead}) == [i for i, x in enumerate(lines) if x == "not json"]
    m = sr.Model(n_inputs=2, **MODEL)
    want = m.step_many(
        np.array([[g["a"], g["b"]] for g in good]), np.array([g["y"] for g in good]), [g["k"] for g in good]
    )
    index = {pos: j for j, pos in enumerate(i for i, x in enumerate(lines) if x != "not json")}
    assert all(o["prediction"] == want[index[o["position"][1]], 0] for o in outs)  # rewritten ones equal too
    assert len(outs) > len(good)  # the restart wrote again what followed the last checkpoint
    final = Daemon(validate_config(cfg))
    for name, w in m.get_weights().items():
        assert np.array_equal(final.model.get_weights()[name], w), name
    final.close()


def test_an_incomplete_last_line_is_cut_when_a_sink_reopens(tmp_path):
    from streamrnn.connectors.file import CsvSink, JsonLinesSink

    p = tmp_path / "o.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a"')
    JsonLinesSink(p).close()
    assert p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    p.write_bytes(b"no line end at all")
    JsonLinesSink(p).close()
    assert p.read_bytes() == b""
    c = tmp_path / "o.csv"
    c.write_bytes(b"a,b\r\n1,2\r\n3,")
    sink = CsvSink(c)
    sink.write([{"a": 5, "b": 6}])
    sink.close()
    assert c.read_bytes() == b"a,b\r\n1,2\r\n5,6\r\n"


# ---------------------------------------------------------------- unicode and very long keys
def test_unicode_and_very_long_keys_survive_a_checkpoint_reload(tmp_path):
    """Keys in several scripts, emoji, control characters, near max_key_bytes and integers beyond 32
    bits: a daemon stopped half-way and restarted from its checkpoint ends with the same keys and
    bit-identical per-key state and weights as one uninterrupted Model run."""
    keys = [
        "日本語",
        "Ελληνικά",
        "😀🚀",
        "tab\there",
        "new\nline",
        "\u200bzero-width",
        "é" * 500,
        "x" * 1024,
        2**40,
        -7,
    ]
    rng = np.random.default_rng(9)
    rows = [(keys[i % len(keys)], *(float(v) for v in rng.standard_normal(3))) for i in range(60)]
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"k": k, "a": a, "b": b, "y": y}, ensure_ascii=False) + "\n" for k, a, b, y in rows)
    )
    cfg = _config(tmp_path, src, dict(MODEL))
    cfg["daemon"]["max_records"] = 30
    Daemon(validate_config(cfg)).run()  # stops after 30 records, checkpointed
    del cfg["daemon"]["max_records"]
    d = Daemon(validate_config(cfg))
    assert d.stats["resumed_from"] is not None
    d.run()
    m = sr.Model(n_inputs=2, **MODEL)
    m.step_many(np.array([[a, b] for _, a, b, _ in rows]), np.array([y for *_, y in rows]), [k for k, *_ in rows])
    again = Daemon(validate_config(cfg))  # the end state, read back once more
    assert sorted(map(str, again.model.keys)) == sorted(map(str, m.keys))
    for k in keys:
        assert np.array_equal(again.model.hidden_state(key=k), m.hidden_state(key=k)), k
    for name, w in m.get_weights().items():
        assert np.array_equal(again.model.get_weights()[name], w), name
    again.close()
