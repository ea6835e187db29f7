"""Hardening against hostile and careless input (issue 16, items 1, 2, 4, 6, 11, 14, 15).

Each test feeds the daemon (or a file source) real files that are renamed, rewritten, rotated,
malformed or oversized, and asserts the exact outcome: a ``streamrnn: error:`` line with exit
status 2, or dead letters with their exact reasons and a model bit-identical to a run over the
good records only, with the exact number of model steps (nothing lost, nothing applied twice).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import streamrnn
from streamrnn import checkpoint as ckpt
from streamrnn.connectors import CsvSource, JsonLinesSource, ReplaySource
from streamrnn.connectors.base import Record, Unreadable
from streamrnn.service import Daemon, load_checkpoint, save_checkpoint, validate_config

from .test_hardening_state import N, assert_same_weights, cli, config, reference, toml, wait_lines, write_stream


# ---------------------------------------------------------------------------- helpers
def run_cli(cfg, tmp_path, capsys, name="c.toml", cwd=None):
    """``streamrnn run`` in this process: (exit status, the last stderr line, all of stderr)."""
    from streamrnn.cli import main

    (tmp_path / name).write_text(toml(cfg))
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = main(["run", str(tmp_path / name), "--no-progress"])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    return code, (lines[-1] if lines else ""), err


def wait_until(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def read_jsonl(path):
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def steps(model):
    return model.stats["steps"]


def run(cfg):
    d = Daemon(validate_config(cfg))
    d.run()
    return d


def line(key, a, b, y):
    return json.dumps({"key": key, "a": a, "b": b, "y": y})


GOOD = [("k0", 0.1, 0.2, 0.3), ("k1", 0.4, -0.5, 0.6), ("k0", -0.7, 0.8, -0.9), ("k2", 1.0, 1.1, 1.2)]


def ref_of(rows):
    return reference([(k, [a, b], y) for k, a, b, y in rows])


# ---------------------------------------------------------------------------- item 1: file identity
def _relative(tmp_path, src):
    return "in.jsonl", "./in.jsonl"


def _dotted(tmp_path, src):
    os.makedirs(tmp_path / "sub", exist_ok=True)
    return str(src), str(tmp_path / "sub" / ".." / "in.jsonl")


def _symlink(tmp_path, src):
    os.symlink(src, tmp_path / "link.jsonl")
    return str(src), str(tmp_path / "link.jsonl")


def _doubled_slash(tmp_path, src):
    return str(src), str(tmp_path) + "//in.jsonl"


SPELLINGS = {"in.jsonl then ./in.jsonl": _relative, "sub/..": _dotted, "a symlink": _symlink, "//": _doubled_slash}


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_another_spelling_of_the_path_resumes_each_record_once(tmp_path, monkeypatch, name):
    src = tmp_path / "in.jsonl"
    rows = write_stream(src)
    monkeypatch.chdir(tmp_path)
    first, second = SPELLINGS[name](tmp_path, src)
    cfg = config(tmp_path, src, max_records=100)
    cfg["source"]["path"] = first
    run(cfg)
    cfg = config(tmp_path, src)
    cfg["source"]["path"] = second
    d = run(cfg)
    assert steps(d.model) == N  # not 100 + N: the first 100 were not read again
    assert_same_weights(d.model, reference(rows))
    meta = load_checkpoint(str(tmp_path / "d.ckpt"))[1]
    assert meta["positions"] == {str(src): N}
    assert [o["position"][1] for o in read_jsonl(tmp_path / "out.jsonl")] == list(range(N))


def test_a_moved_directory_resumes_where_it_left_off(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    src = tmp_path / "a" / "in.jsonl"
    rows = write_stream(src)
    cfg = config(tmp_path, src, max_records=120)
    run(cfg)
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "in.jsonl"
    d = run(config(tmp_path, moved))
    assert steps(d.model) == N
    assert_same_weights(d.model, reference(rows))
    assert load_checkpoint(str(tmp_path / "d.ckpt"))[1]["positions"] == {str(moved): N}
    assert "resuming at line 120" in caplog.text


def test_a_copy_with_the_same_contents_resumes_correctly(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = write_stream(src)
    run(config(tmp_path, src, max_records=150))
    copy = tmp_path / "copy.jsonl"
    shutil.copy(src, copy)
    os.unlink(src)
    d = run(config(tmp_path, copy))
    assert steps(d.model) == N
    assert_same_weights(d.model, reference(rows))


def _other_input(tmp_path, src):
    other = tmp_path / "other.jsonl"
    write_stream(other, seed=1)
    return other, "is not the file the checkpoint read"


def _rewritten_in_place(tmp_path, src):
    data = bytearray(open(src, "rb").read())
    data[10:14] = b"9999" if data[10:14] != b"9999" else b"8888"  # one number changed, same length
    with open(src, "r+b") as fh:  # the same inode
        fh.write(data)
    return src, "its bytes before the checkpoint's position (byte"


def _replaced_by_another(tmp_path, src):
    os.rename(src, str(src) + ".old")  # kept: the new file gets another inode
    write_stream(src, seed=2)  # other contents, the same path
    return src, ", another inode): its bytes before"


def _truncated(tmp_path, src):
    with open(src, "r+b") as fh:
        fh.truncate(100)
    return src, "fewer than the checkpoint's position"


def _old_checkpoint_of_another_path(tmp_path, src):
    ck = str(tmp_path / "d.ckpt")
    arrays, meta = ckpt.load(ck)
    del meta["files"]
    meta["positions"] = {str(tmp_path / "gone.jsonl"): 100}
    save_checkpoint(ck, arrays, meta)
    return src, f"the checkpoint holds the positions of {str(tmp_path / 'gone.jsonl')!r}, not of"


REFUSED = {
    "another input shares the checkpoint": _other_input,
    "the file rewritten in place": _rewritten_in_place,
    "the file replaced by another": _replaced_by_another,
    "the file truncated": _truncated,
    "an old checkpoint of another path": _old_checkpoint_of_another_path,
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_checkpoint_of_another_or_a_rewritten_file_is_refused(tmp_path, capsys, name):
    src = tmp_path / "in.jsonl"
    write_stream(src)
    run(config(tmp_path, src, max_records=100))
    path, says = REFUSED[name](tmp_path, src)
    before = {p: open(p, "rb").read() for p in (tmp_path / "d.ckpt", tmp_path / "out.jsonl")}
    code, last, err = run_cli(config(tmp_path, path), tmp_path, capsys)
    assert code == 2, err
    assert last.startswith("streamrnn: error: source.path: ") and says in last, last
    assert last.endswith("; move the checkpoint away to start afresh"), last
    assert "Traceback" not in err
    assert {p: open(p, "rb").read() for p in before} == before  # nothing applied, nothing written


def test_an_old_checkpoint_with_a_plain_path_key_still_resumes(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = write_stream(src)
    run(config(tmp_path, src, max_records=100))
    ck = str(tmp_path / "d.ckpt")
    arrays, meta = ckpt.load(ck)
    del meta["files"]  # as written before file identities
    assert meta["positions"] == {str(src): 100}
    save_checkpoint(ck, arrays, meta)
    d = run(config(tmp_path, src))
    assert steps(d.model) == N
    assert_same_weights(d.model, reference(rows))


def test_the_checkpoint_holds_the_file_identity_and_crafted_ones_are_unusable(tmp_path, caplog):
    src = tmp_path / "in.jsonl"
    write_stream(src)
    run(config(tmp_path, src, max_records=100))
    run(config(tmp_path, src, max_records=200))
    ck = str(tmp_path / "d.ckpt")
    meta = ckpt.load(ck)[1]
    st = os.stat(src)
    ident = meta["files"][str(src)]
    assert ident["offset"] == len(b"".join(open(src, "rb").readlines()[:200]))
    assert (ident["dev"], ident["ino"]) == (st.st_dev, st.st_ino)
    arrays, meta = ckpt.load(ck)
    meta["files"][str(src)]["offset"] = -1  # crafted: unusable, the previous generation is used
    save_checkpoint(ck, arrays, meta)
    got = load_checkpoint(ck)
    assert got[2] == ck + ".prev" and got[1]["positions"] == {str(src): 200}
    assert "files: " in caplog.text and "offset is not an integer >= 0: -1" in caplog.text


# ---------------------------------------------------------------------------- item 2: CSV (RFC 4180)
CSV_HEADER = "key,a,b,y\n"


def csv_line(key, a, b, y):
    return f"{key},{a},{b},{y}\n"


CSV_BAD = {
    "a JSON object": ('{"key": "k0", "a": 1, "b": 2}\n', "CSV row of 3 fields, the header has 4"),
    "too few fields": ("k0,1\n", "CSV row of 2 fields, the header has 4"),
    "too many fields": ("k0,1,2,3,4\n", "CSV row of 5 fields, the header has 4"),
    "one field": ("k0\n", "CSV row of 1 field, the header has 4"),
    "text after a closing quote": ('"k0"x,1,2,3\n', "malformed CSV: ',' expected after '\"'"),
    "invalid UTF-8": (b"k\xff0,1,2,3\n", "invalid UTF-8 at byte 1 of the record"),
}


@pytest.mark.parametrize("name", list(CSV_BAD))
def test_csv_rows_that_cannot_be_used_are_dead_letters_with_their_reason(tmp_path, name):
    bad, reason = CSV_BAD[name]
    bad = bad.encode() if isinstance(bad, str) else bad
    src = tmp_path / "in.csv"
    body = CSV_HEADER.encode() + csv_line(*GOOD[0]).encode() + bad + "".join(csv_line(*r) for r in GOOD[1:]).encode()
    src.write_bytes(body)
    cfg = config(tmp_path, src)
    cfg["source"]["type"] = "csv"
    d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"]) for x in dead] == [(2, reason)]
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))
    assert [o["position"][1] for o in read_jsonl(tmp_path / "out.jsonl")] == [1, 3, 4, 5]


def test_a_json_object_of_the_headers_width_is_not_applied(tmp_path):
    """4 comma-separated pieces: the CSV parser reads '{"key": "k0"' etc. as fields, never JSON."""
    src = tmp_path / "in.csv"
    src.write_text(CSV_HEADER + '{"key": "k0", "a": 1, "b": 2, "y": 3}\n' + "".join(csv_line(*r) for r in GOOD))
    cfg = config(tmp_path, src)
    cfg["source"]["type"] = "csv"
    d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"]) for x in dead] == [(1, "field 'a': not a number: ' \"a\": 1'")]
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))


def test_csv_unclosed_quote_at_the_end_is_one_dead_letter(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(CSV_HEADER + "".join(csv_line(*r) for r in GOOD) + '"k9,1,2,3\nk1,1,2,3\n')
    cfg = config(tmp_path, src)
    cfg["source"]["type"] = "csv"
    d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"]) for x in dead] == [(5, "malformed CSV: unexpected end of data")]
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_csv_quoted_newlines_are_one_record_and_resume_is_exact(tmp_path, split):
    rows = [("k\n0", 0.1, 0.2, 0.3), ("k1", 0.4, -0.5, 0.6), ('k"\r\n\n2', -0.7, 0.8, -0.9), ("k1", 1.0, 1.1, 1.2)]

    def quote(k):
        return '"' + k.replace('"', '""') + '"'

    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as fh:
        fh.write(CSV_HEADER + "".join(csv_line(quote(k), a, b, y) for k, a, b, y in rows))
    cfg = config(tmp_path, src, max_records=split)
    cfg["source"]["type"] = "csv"
    run(cfg)
    cfg["daemon"]["max_records"] = 0
    d = run(cfg)
    assert not os.path.exists(tmp_path / "dead.jsonl") or not read_jsonl(tmp_path / "dead.jsonl")
    outs = read_jsonl(tmp_path / "out.jsonl")
    assert [(o["key"], o["position"][1]) for o in outs] == [("k\n0", 1), ("k1", 3), ('k"\r\n\n2', 4), ("k1", 7)]
    assert steps(d.model) == len(rows)
    assert_same_weights(d.model, ref_of(rows))
    assert load_checkpoint(str(tmp_path / "d.ckpt"))[1]["positions"] == {str(src): 8}


# ---------------------------------------------------------------------------- item 4: bounded reads, keys
LIMIT = 200


def _overlong_jsonl(n):
    return ('{"key": "k9", "a": 1, "b": 2, "y": 3, "pad": "' + "x" * n + '"}\n').encode()


OVERLONG = {
    "jsonl line": ("jsonl", _overlong_jsonl(5000), 1, 1),
    "jsonl line of limit + 1": ("jsonl", b'{"key":"k9","pad":"' + b"x" * (LIMIT - 20) + b'"}\n', 1, 1),
    "jsonl last line without newline": ("jsonl", _overlong_jsonl(3000).rstrip(b"\n"), 1, 1),
    "csv line": ("csv", b"k9," + b"1" * 5000 + b",2,3\n", 1, 1),
    "csv quoted field of many lines": ("csv", b'"k9' + b"\nk0,1,2,3" * 800 + b'",1,2,3\n', 801, 1),
    "csv quoted field, doubled quotes": ("csv", b'"k9' + b'""\n,"",1,2' * 700 + b'",1,2,3\n', 701, 1),
}


@pytest.mark.parametrize("name", list(OVERLONG))
def test_a_record_longer_than_max_record_bytes_is_skipped_in_bounded_reads(tmp_path, name):
    kind, bad, lines, _ = OVERLONG[name]
    src = tmp_path / f"in.{kind}"
    enc = csv_line if kind == "csv" else lambda *r: line(*r) + "\n"
    head = (CSV_HEADER if kind == "csv" else "") + enc(*GOOD[0])
    tail = "".join(enc(*r) for r in GOOD[1:])
    last = name.endswith("without newline")
    src.write_bytes(head.encode() + (tail.encode() + bad if last else bad + tail.encode()))
    cfg = config(tmp_path, src, max_record_bytes=LIMIT)
    cfg["source"]["type"] = kind
    d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    first = 1 if kind == "csv" else 0
    where = first + (len(GOOD) if last else 1)
    if name == "jsonl line of limit + 1":  # read whole (limit + newline): the decoder refuses it
        reason = f"record of {len(bad) - 1} bytes exceeds daemon.max_record_bytes = {LIMIT}"
    else:
        reason = f"record of {len(bad)} bytes exceeds daemon.max_record_bytes = {LIMIT}: skipped unread"
    assert [(x["position"][1], x["reason"]) for x in dead] == [(where, reason)]
    assert len(dead[0]["value"]) <= 4096 + 64
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))
    total = first + len(GOOD) + lines
    assert load_checkpoint(str(tmp_path / "d.ckpt"))[1]["positions"] == {str(src): total}
    outs = [o["position"][1] for o in read_jsonl(tmp_path / "out.jsonl")]
    assert len(outs) == len(GOOD) and max(outs) < total


def _peak_rss_kib(tmp_path, cfg, name):
    (tmp_path / name).write_text(toml(cfg))
    code = (
        "import resource, sys; from streamrnn.cli import main; rc = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(tmp_path / name), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def test_a_huge_line_does_not_raise_resident_memory(tmp_path):
    """A 256 MB line with max_record_bytes = 1 MiB: peak RSS as without it (readline had no bound)."""
    src, plain = tmp_path / "in.jsonl", tmp_path / "plain.jsonl"
    rows = write_stream(src, n=50)
    write_stream(plain, n=50)
    more = b"".join((line(k, a, b, y) + "\n").encode() for k, (a, b), y in rows[:10])
    with open(plain, "ab") as fh:
        fh.write(more)
    with open(src, "ab") as fh:
        fh.write(b'{"pad": "')
        chunk = b"x" * (1 << 20)
        for _ in range(256):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(more)
    base = config(tmp_path, plain)
    base["checkpoint"]["path"] = str(tmp_path / "plain.ckpt")
    base["sink"]["path"] = str(tmp_path / "plain-out.jsonl")
    base["dead_letter"]["path"] = str(tmp_path / "plain-dead.jsonl")
    baseline = _peak_rss_kib(tmp_path, base, "plain.toml")
    peak = _peak_rss_kib(tmp_path, config(tmp_path, src), "c.toml")
    assert peak - baseline < 48 * 1024, (peak, baseline)  # the line is 256 MiB
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"]) for x in dead] == [
        (50, f"record of {(256 << 20) + 12} bytes exceeds daemon.max_record_bytes = {1 << 20}: skipped unread")
    ]
    meta = load_checkpoint(str(tmp_path / "d.ckpt"))[1]
    assert meta["positions"] == {str(src): 61}
    assert meta["daemon"]["applied"] == 60


def test_an_overlong_line_being_written_while_followed_is_one_dead_letter(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"pad": "' + b"x" * 500)
    src = JsonLinesSource(str(path), follow=True, max_record_bytes=100)
    assert [r.value for r in src.poll(10, 0.05)] == ['{"a": 1}']
    assert src.poll(10, 0.05) == [] and src.positions() == {str(path): 1}
    with open(path, "ab") as fh:
        fh.write(b"y" * 500 + b'"}\n{"a": 2}\n')
    got = src.poll(10, 0.5)
    assert [r.position for r in got] == [(str(path), 1), (str(path), 2)]
    assert got[0].value.reason == "record of 1012 bytes exceeds daemon.max_record_bytes = 100: skipped unread"
    assert got[1].value == '{"a": 2}' and src.positions() == {str(path): 3}
    src.close()


KEYS = {
    "ascii, limit + 1": ("k" * 65, 64, "key of 65 bytes exceeds daemon.max_key_bytes = 64"),
    "multi-byte, 66 bytes in 33 characters": ("é" * 33, 64, "key of 66 bytes exceeds daemon.max_key_bytes = 64"),
    "1 MB": ("k" * (1 << 20), 1024, f"key of {1 << 20} bytes exceeds daemon.max_key_bytes = 1024"),
    "4-byte characters": ("\U0001f600" * 300, 1024, "key of 1200 bytes exceeds daemon.max_key_bytes = 1024"),
    "exactly the limit": ("é" * 32, 64, None),
}


@pytest.mark.parametrize("where", ["field", "replay key"])
@pytest.mark.parametrize("name", list(KEYS))
def test_a_key_longer_than_max_key_bytes_is_a_dead_letter(tmp_path, name, where):
    key, limit, reason = KEYS[name]
    rows = [GOOD[0], (key, 0.5, 0.5, 0.5), *GOOD[1:]]
    src = tmp_path / "in.jsonl"
    if where == "field":
        src.write_text("".join(line(*r) + "\n" for r in rows))
        cfg = config(tmp_path, src, max_key_bytes=limit, max_record_bytes=4 << 20)
    else:
        src.write_text("".join(json.dumps({"key": k, "value": {"a": a, "b": b, "y": y}}) + "\n" for k, a, b, y in rows))
        cfg = config(tmp_path, src, max_key_bytes=limit, max_record_bytes=8 << 20)
        cfg["source"]["type"] = "replay"
        del cfg["schema"]["key"]
    d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    good = [r for r in rows if reason is None or r[0] != key]
    assert [(x["position"][1], x["reason"]) for x in dead] == ([] if reason is None else [(1, reason)])
    assert steps(d.model) == len(good)
    assert_same_weights(d.model, ref_of(good))


@pytest.mark.parametrize("value", [0, -1, 1.5, "1KiB", True])
def test_max_key_bytes_must_be_a_positive_integer(tmp_path, capsys, value):
    src = tmp_path / "in.jsonl"
    write_stream(src, n=5)
    code, last, err = run_cli(config(tmp_path, src, max_key_bytes=value), tmp_path, capsys)
    assert code == 2 and last == f"streamrnn: error: daemon.max_key_bytes: expected an integer >= 1, got {value!r}"


# ---------------------------------------------------------------------------- item 6: replay waits
def test_replay_across_a_huge_recorded_gap_stops_at_once_on_sigterm(tmp_path):
    src = tmp_path / "rec.jsonl"
    rec = [{"ts": 0.0, "key": "k0", "value": {"a": 0.1, "b": 0.2, "y": 0.3}}]
    rec.append({"ts": 1e9, "key": "k0", "value": {"a": 0.4, "b": 0.5, "y": 0.6}})
    src.write_text("".join(json.dumps(r) + "\n" for r in rec))
    cfg = config(tmp_path, src, poll_timeout=60)
    cfg["source"] = {"type": "replay", "path": str(src), "speed": 1.0}
    del cfg["schema"]["key"]
    (tmp_path / "c.toml").write_text(toml(cfg))
    p = cli("run", str(tmp_path / "c.toml"), "--no-progress")
    try:
        wait_lines(tmp_path / "out.jsonl", 1)
        time.sleep(0.5)  # waiting for the second record now
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    took = time.monotonic() - t0
    assert p.returncode == 0, err
    assert took < 5.0, f"SIGTERM took {took:.1f} s"  # against a 60 s poll timeout; slack for a loaded CI
    arrays, meta, _ = load_checkpoint(str(tmp_path / "d.ckpt"))
    assert meta["positions"] == {str(src): 1} and meta["daemon"]["applied"] == 1
    assert_same_weights(streamrnn.Model.from_state(arrays, meta["model"]), ref_of([("k0", 0.1, 0.2, 0.3)]))


@pytest.mark.parametrize("ts", [1e308, -1e308, 1e18, "soon", None, True])
def test_replay_of_hostile_timestamps_neither_hangs_nor_crashes(tmp_path, ts):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"ts": 1.0, "value": {"x": 0}}) + "\n" + json.dumps({"ts": ts, "value": {"x": 1}}) + "\n")
    src = ReplaySource(str(p), speed=1e-6)
    got, t0 = [], time.monotonic()
    for _ in range(3):
        got += src.poll(10, 0.05)
    assert time.monotonic() - t0 < 2.0
    ahead = isinstance(ts, float) and ts > 1.0
    assert [r.value for r in got] == ([{"x": 0}] if ahead else [{"x": 0}, {"x": 1}])
    assert src.positions() == {str(p): 1 if ahead else 2}


# ---------------------------------------------------------------------------- item 11: BOM, headers
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("kind", ["jsonl", "csv", "replay"])
def test_a_utf8_bom_at_the_start_is_dropped(tmp_path, kind):
    src = tmp_path / f"in.{kind}"
    if kind == "csv":
        body = CSV_HEADER + "".join(csv_line(*r) for r in GOOD)
    elif kind == "jsonl":
        body = "".join(line(*r) + "\n" for r in GOOD)
    else:
        body = "".join(json.dumps({"key": k, "value": {"a": a, "b": b, "y": y}}) + "\n" for k, a, b, y in GOOD)
    src.write_bytes(BOM + body.encode())
    cfg = config(tmp_path, src)
    cfg["source"]["type"] = kind
    if kind == "replay":
        del cfg["schema"]["key"]
    d = run(cfg)
    assert read_jsonl(tmp_path / "dead.jsonl") == []
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))


def test_a_bom_after_offset_0_is_not_dropped(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes((line(*GOOD[0]) + "\n").encode() + BOM + "".join(line(*r) + "\n" for r in GOOD[1:]).encode())
    d = run(config(tmp_path, src))
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][1], x["reason"].split(":")[0]) for x in dead] == [(1, "invalid JSON")]
    assert_same_weights(d.model, ref_of([GOOD[0], *GOOD[2:]]))


HEADERS = {
    "a feature missing": ("key,a,y", ["'b'"]),
    "the target missing": ("key,a,b", ["'y'"]),
    "the key missing": ("a,b,y", ["'key'"]),
    "two missing, with a BOM": ("\ufeffkey,y", ["'a'", "'b'"]),
    "a column name with a BOM inside": ("key,\ufeffa,b,y", ["'a'"]),
    "an empty header line": ("", ["'a'", "'b'", "'y'", "'key'"]),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_a_csv_header_lacking_a_schema_column_stops_at_start(tmp_path, capsys, name):
    header, missing = HEADERS[name]
    src = tmp_path / "in.csv"
    src.write_text(header + "\n" + "".join(csv_line(*r) for r in GOOD), encoding="utf-8")
    cfg = config(tmp_path, src)
    cfg["source"]["type"] = "csv"
    code, last, err = run_cli(cfg, tmp_path, capsys)
    assert code == 2, err
    assert last.startswith(f"streamrnn: error: source.path: the CSV header of {str(src)!r} lacks the column(s) ")
    assert f"lacks the column(s) {', '.join(missing)} named in [schema]" in last, last
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "out.jsonl") or not read_jsonl(tmp_path / "out.jsonl")


# ---------------------------------------------------------------------------- item 14: the reasons given
class BytesSource:
    """Raw byte records, as a Kafka source gives them (value bytes, key bytes)."""

    def __init__(self, values):
        self.values, self.i = values, 0

    def poll(self, max_records=1000, timeout=0.0):
        out = [Record(value=v, key=b"k", position=("t", 0, self.i + j)) for j, v in enumerate(self.values[self.i :])]
        self.i = len(self.values)
        return out

    @property
    def exhausted(self):
        return self.i >= len(self.values)

    def positions(self):
        return {"t:0": self.i}

    def seek(self, positions):
        pass

    def close(self):
        pass


U8 = "invalid UTF-8 at byte %d of the record"
BIG = "key: the integer %s does not fit in 64 bits (keys are strings or 64-bit integers)"
NOT_KEY = "key must be a string or an integer, got "
REC = b', "a": 1, "b": 2, "y": 3}'
REASONS = {
    "a 64-bit-overflowing integer key": (
        "jsonl",
        b'{"key": 123456789012345678901234567890' + REC,
        BIG % "123456789012345678901234567890",
    ),
    "a negative overflowing integer key": (
        "jsonl",
        b'{"key": -9223372036854775809' + REC,
        BIG % "-9223372036854775809",
    ),
    "a float key": ("jsonl", b'{"key": 1.5' + REC, NOT_KEY + "float 1.5"),
    "a 1e300 key": ("jsonl", b'{"key": 1e300' + REC, NOT_KEY + "float 1e+300"),
    "invalid UTF-8 in a file": ("jsonl", b'{"key": "k\xc3"' + REC, U8 % 10),
    "invalid UTF-8 from Kafka": ("kafka", b'{"key": "k\xff\xfe"' + REC, U8 % 10),
    "truncated UTF-8 at the end": ("kafka", b'{"a": 1, "b": 2, "y": 3, "key": "\xe2\x82', U8 % 33),
    "replay line without value": ("replay", b'{"ts": 1.0, "key": "k0", "x0": 1}', "replay line: no 'value' field"),
    "replay line not an object": ("replay", b"[1, 2]", "replay line: expected a JSON object, got list"),
    "replay line invalid UTF-8": ("replay", b'{"value": "\xff"}', "replay line: " + U8 % 11),
    "replay line invalid JSON": (
        "replay",
        b'{"value": ',
        "replay line: invalid JSON: unexpected end of data at char 10",
    ),
    "replay key overflowing 64 bits": (
        "replay",
        b'{"key": 99999999999999999999, "value": {"a": 1, "b": 2, "y": 3}}',
        BIG % "99999999999999999999",
    ),
    "a JSON array record": ("jsonl", b"[1, 2, 3]", "expected a JSON object, got list"),
}


@pytest.mark.parametrize("name", list(REASONS))
def test_the_reason_given_is_the_real_one(tmp_path, name):
    kind, bad, reason = REASONS[name]
    if kind == "replay":
        enc = [json.dumps({"key": k, "value": {"a": a, "b": b, "y": y}}).encode() for k, a, b, y in GOOD]
    else:
        enc = [line(*r).encode() for r in GOOD]
    records = [enc[0], bad, *enc[1:]]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(records) + b"\n")
    cfg = config(tmp_path, src)
    cfg["checkpoint"] = {}
    if kind == "replay":
        cfg["source"]["type"] = "replay"
        del cfg["schema"]["key"]
    if kind == "kafka":
        d = Daemon(validate_config(cfg), source=BytesSource(records))
        d.run()
    else:
        d = run(cfg)
    dead = read_jsonl(tmp_path / "dead.jsonl")
    assert [(x["position"][-1], x["reason"]) for x in dead] == [(1, reason)]
    assert steps(d.model) == len(GOOD)
    assert_same_weights(d.model, ref_of(GOOD))


# ---------------------------------------------------------------------------- item 15: rotation
def test_a_followed_file_is_followed_across_rotation_and_truncation(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    src = JsonLinesSource(str(path), follow=True)
    assert [r.value for r in src.poll(10, 0.05)] == ['{"a": 1}', '{"a": 2}']
    with open(path, "a") as fh:  # written just before the rotation, not yet read
        fh.write('{"a": 3}\n{"a": 4}')  # the last line without its newline
    os.rename(path, tmp_path / "f.jsonl.1")
    path.write_text('{"b": 1}\n')
    got = src.poll(10, 0.2)
    assert [(r.value, r.position[1]) for r in got] == [('{"a": 3}', 2), ('{"a": 4}', 3), ('{"b": 1}', 0)]
    assert src.switched and src.positions() == {str(path): 1}
    assert src.identity()[str(path)]["ino"] == os.stat(path).st_ino
    with open(path, "r+") as fh:  # truncated in place (copytruncate)
        fh.truncate(0)
    assert src.poll(10, 0.1) == []
    with open(path, "a") as fh:
        fh.write('{"c": 1}\n')
    assert [(r.value, r.position[1]) for r in src.poll(10, 0.5)] == [('{"c": 1}', 0)]
    assert src.positions() == {str(path): 1}
    src.close()


def test_a_followed_csv_rotated_reads_the_new_header(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("a,b\n1,2\n")
    src = CsvSource(str(path), follow=True)
    assert [r.value for r in src.poll(10, 0.05)] == [{"a": "1", "b": "2"}]
    os.rename(path, tmp_path / "f.csv.1")
    path.write_text("b,a\n3,4\n")
    assert [(r.value, r.position[1]) for r in src.poll(10, 0.3)] == [({"b": "3", "a": "4"}, 1)]
    src.close()


def test_the_daemon_follows_rotation_and_truncation_and_resumes_in_the_new_file(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [(f"k{i % 3}", round(0.1 * i, 3), round(-0.05 * i, 3), round(0.02 * i, 3)) for i in range(30)]
    enc = [line(*r) + "\n" for r in rows]
    path.write_text("".join(enc[:10]))
    cfg = config(tmp_path, path, every=100000)
    cfg["source"]["follow"] = True
    d = Daemon(validate_config(cfg))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        wait_lines(tmp_path / "out.jsonl", 10)
        os.rename(path, tmp_path / "in.jsonl.1")  # logrotate: rename, create
        path.write_text("".join(enc[10:20]))
        wait_lines(tmp_path / "out.jsonl", 20)
        ino = os.stat(path).st_ino  # checkpointed at the rotation:
        wait_until(lambda: load_checkpoint(str(tmp_path / "d.ckpt"))[1]["files"][str(path)]["ino"] == ino)
        with open(path, "r+") as fh:
            fh.truncate(0)
        time.sleep(0.3)
        with open(path, "a") as fh:
            fh.write("".join(enc[20:25]))
        wait_lines(tmp_path / "out.jsonl", 25)
    finally:
        d.stop()
        t.join(30)
    assert steps(d.model) == 25
    assert_same_weights(d.model, ref_of(rows[:25]))
    meta = load_checkpoint(str(tmp_path / "d.ckpt"))[1]
    assert meta["positions"] == {str(path): 5}
    with open(path, "a") as fh:
        fh.write("".join(enc[25:]))
    cfg["source"]["follow"] = False
    d2 = run(cfg)  # resumes in the new file at its line 5
    assert_same_weights(d2.model, ref_of(rows))
    assert d2.stats["applied"] == 30 and steps(d2.model) == 30


# ---------------------------------------------------------------------------- streamrnn record
RECORD_INPUTS = {
    "jsonl: invalid UTF-8, JSON string, overlong": (
        "in.jsonl",
        b'{"a": 1}\n\xff\xfe\n"str"\n[1]\n{"pad": "' + b"x" * (3 << 20) + b'"}\n{"a": 2}\n',
        0,
        4,
        2,
    ),
    "csv: wrong width, malformed, overlong": (
        "in.csv",
        b'a,b\n1,2\n3\n"x"y,1\n' + b"9" * (3 << 20) + b",1\n4,5\n",
        0,
        2,
        3,
    ),
    "csv: header of invalid UTF-8": ("in.csv", b"\xff,b\n1,2\n", 2, 0, 0),
}


@pytest.mark.parametrize("name", list(RECORD_INPUTS))
def test_record_survives_malformed_values(tmp_path, capsys, name):
    from streamrnn.cli import main

    fname, data, want_code, n_ok, n_skipped = RECORD_INPUTS[name]
    (tmp_path / fname).write_bytes(data)
    out = tmp_path / "rec.jsonl"
    code = main(["record", "--file", str(tmp_path / fname), "--out", str(out)])
    cap = capsys.readouterr()
    assert code == want_code, cap.err
    assert "Traceback" not in cap.err
    if want_code:
        assert cap.err.strip().splitlines()[-1].startswith("streamrnn: error: source.path: cannot read the CSV header")
        return
    recorded = read_jsonl(out)
    assert len(recorded) == n_ok
    assert cap.out.strip() == f"recorded {n_ok} records into {out}" + (
        f" ({n_skipped} unreadable, skipped)" if n_skipped else ""
    )
    # replayed, the recording gives the daemon's verdicts on the original lines
    src = ReplaySource(str(out))
    values = [r.value for r in src.poll(100)]
    assert len(values) == n_ok
    assert all(not isinstance(v, Unreadable) for v in values)
