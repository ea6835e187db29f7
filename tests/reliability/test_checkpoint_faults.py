"""Checkpoint faults: damaged or foreign newest generation, both generations unusable, a full
disk (injected ENOSPC/EIO inside checkpoint writes), a crash between the two renames."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import streamrnn
from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError
from streamrnn.connectors.file import JsonLinesSource
from streamrnn.service import Daemon, load_checkpoint, save_checkpoint, validate_config
from tests.reliability.common import (
    FEATURES,
    MODEL,
    ROOT,
    assert_same_state,
    by_position,
    keyed_stream,
    read_jsonl,
    reference,
    toml,
)

N = 1200
EVERY = 200


@pytest.fixture
def stream(tmp_path):
    s = keyed_stream(N, seed=5)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(text + "\n" for _, text, _, _ in s))
    return s, path


def config(tmp_path, src, **daemon):
    return validate_config(
        {
            "source": {"type": "jsonl", "path": str(src)},
            "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
            "schema": {"features": FEATURES, "target": "y", "key": "key"},
            "model": dict(MODEL),
            "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": EVERY, "every_seconds": 0},
            "daemon": {"batch_size": 50, "poll_timeout": 0.01, "progress": False, **daemon},
        }
    )


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def good_prefix(stream, n):
    return [s[2] for s in stream[:n] if s[2] is not None]


def assert_complete(tmp_path, stream, src):
    """Final checkpoint == one uninterrupted run; every good line has identical outputs."""
    arrays, meta, _ = load_checkpoint(str(tmp_path / "d.ckpt"))
    ref, preds, _ = reference(good_prefix(stream, N))
    assert_same_state(arrays, meta["model"], ref)
    assert meta["positions"] == {str(src): N}
    outs = by_position(read_jsonl(tmp_path / "out.jsonl"))
    good_lines = [i for i, s in enumerate(stream) if s[2] is not None]
    assert sorted(p[1] for p in outs) == good_lines
    assert [outs[(str(src), i)]["prediction"] for i in good_lines] == preds[:, 0].tolist()


def run_first_part(tmp_path, src, n=600):
    """Run to line ``n``: the newest generation is at ``n``, the previous at ``n - EVERY``."""
    Daemon(config(tmp_path, src, max_records=n)).run()
    path = str(tmp_path / "d.ckpt")
    assert ckpt.load(path)[1]["positions"] == {str(src): n}
    assert ckpt.load(path + ".prev")[1]["positions"] == {str(src): n - EVERY}
    return path


def damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "flipped byte":
        data[len(data) // 2] ^= 0x40
    elif how == "flipped digest":
        data[-1] ^= 0x01
    elif how == "newer format version":
        data[8] = ckpt.FORMAT_VERSION + 1
    elif how == "other model configuration":
        other = streamrnn.Model(**{**MODEL, "n_hidden": 5})
        arrays, mmeta = other.state_arrays()
        data = ckpt.dumps(arrays, {"model": mmeta, "positions": {}, "daemon": {}})
    with open(path, "wb") as fh:
        fh.write(bytes(data))


REASONS = {
    "truncated": "checksum mismatch",
    "empty": "bad magic or too short",
    "flipped byte": "checksum mismatch",
    "flipped digest": "checksum mismatch",
    "newer format version": "format version 2 is not supported",
    "other model configuration": "another configuration",
}


@pytest.mark.parametrize("how", list(REASONS))
def test_unusable_newest_generation_falls_back_to_previous(tmp_path, stream, how, caplog):
    s, src = stream
    path = run_first_part(tmp_path, src)
    damage(path, how)
    bad_digest = digest(path)
    caplog.set_level(logging.WARNING, logger="streamrnn.daemon")
    d = Daemon(config(tmp_path, src))
    assert d.stats["resumed_from"] == path + ".prev"
    assert REASONS[how] in caplog.text and "trying the previous generation" in caplog.text
    # nothing is silently overwritten: the unusable file is kept, renamed, byte for byte
    aside = [f for f in os.listdir(tmp_path) if f.startswith("d.ckpt.unusable-")]
    assert len(aside) == 1 and digest(tmp_path / aside[0]) == bad_digest
    d.run()
    assert_complete(tmp_path, s, src)


def test_every_generation_unusable_refuses_to_start_and_touches_nothing(tmp_path, stream):
    s, src = stream
    path = run_first_part(tmp_path, src)
    damage(path, "flipped byte")
    damage(path + ".prev", "other model configuration")
    before = {p: digest(p) for p in (path, path + ".prev")}
    with pytest.raises(CheckpointError, match="no usable checkpoint") as err:
        Daemon(config(tmp_path, src))
    assert "checksum mismatch" in str(err.value) and "another configuration" in str(err.value)
    # the command line exits with status 2 and a clear message, and changes no file
    cfg_path = tmp_path / "c.toml"
    raw = {
        "source": {"type": "jsonl", "path": str(src)},
        "schema": {"features": FEATURES, "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": path},
        "daemon": {"progress": False},
    }
    cfg_path.write_text(toml(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "streamrnn", "run", str(cfg_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "streamrnn: error: no usable checkpoint" in proc.stderr
    assert {p: digest(p) for p in before} == before
    assert not [f for f in os.listdir(tmp_path) if "unusable" in f or ".tmp-" in f]


def test_crash_between_the_two_renames(tmp_path, stream):
    """Killed after ``path`` became ``path.prev`` and before the new file took its place, with the
    temporary file of the dead writer left behind."""
    s, src = stream
    path = run_first_part(tmp_path, src)
    os.replace(path, path + ".prev")
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".d.ckpt.tmp-{dead_pid}"
    stale.write_bytes(b"half a checkpoint")
    d = Daemon(config(tmp_path, src))
    assert d.stats["resumed_from"] == path + ".prev"
    d.run()
    assert not stale.exists()  # the dead writer's temp file is cleaned up
    assert_complete(tmp_path, s, src)


# ---------------------------------------------------------------------------- full disk
class DiskFull:
    """Makes ``os.write`` (after a partial write) or ``os.fsync`` fail on the checkpoint's temporary
    file while ``failing`` is true, as a full disk or an I/O error would; every other file works."""

    def __init__(self, monkeypatch, call):
        self.call, self.failing, self.failures = call, False, 0
        self._write, self._fsync = os.write, os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    @staticmethod
    def _is_temp(fd):
        try:
            return ".d.ckpt.tmp-" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False

    def write(self, fd, data):
        if self.failing and self.call == "write" and self._is_temp(fd):
            if os.fstat(fd).st_size == 0 and len(data) > 4096:
                return self._write(fd, bytes(data[:4096]))  # a partial write first ...
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... then the disk is full
        return self._write(fd, data)

    def fsync(self, fd):
        if self.failing and self.call == "fsync" and self._is_temp(fd):
            self.failures += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._fsync(fd)


class CommitRecordingSource(JsonLinesSource):
    """The real JSONL source, plus the ``commit`` hook a Kafka source has: records what is committed."""

    def __init__(self, path):
        super().__init__(path)
        self.committed = []

    def commit(self, positions):
        self.committed.append(dict(positions))


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_full_disk_keeps_generations_commits_nothing_and_recovers(tmp_path, stream, monkeypatch, call, caplog):
    s, src = stream
    path = str(tmp_path / "d.ckpt")
    disk = DiskFull(monkeypatch, call)
    source = CommitRecordingSource(src)
    d = Daemon(config(tmp_path, src), source=source)
    saved = {}  # digest of each file after every successful save
    real_process = d.process

    def process(records):  # the disk is full from line 400 to line 800
        line = records[0].position[1]
        disk.failing = 400 <= line < 800
        if disk.failing and os.path.exists(path):
            saved.setdefault("during", (digest(path), digest(path + ".prev")))
            assert (digest(path), digest(path + ".prev")) == saved["during"]  # untouched
        return real_process(records)

    d.process = process
    caplog.set_level(logging.ERROR, logger="streamrnn.daemon")
    d.run()
    assert disk.failures >= 2 and "cannot write checkpoint" in caplog.text and "retrying at the next" in caplog.text
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    # offsets are committed only with a durable checkpoint: never 600 or 800 (failed saves)
    committed = [c[str(src)] for c in source.committed]
    assert committed == [200, 400, 1000, 1200]
    assert_complete(tmp_path, s, src)


def test_disk_stays_full_daemon_stops_with_last_good_checkpoint(tmp_path, stream, monkeypatch, caplog):
    s, src = stream
    path = str(tmp_path / "d.ckpt")
    disk = DiskFull(monkeypatch, "write")
    d = Daemon(config(tmp_path, src, retry_attempts=3))
    real_process = d.process

    def process(records):
        disk.failing = records[0].position[1] >= 400
        return real_process(records)

    d.process = process
    with pytest.raises(CheckpointError, match="No space left on device.*3 failed in a row"):
        d.run()
    assert "stopping" in caplog.text
    # both generations intact: the newest is the last good one (line 400), applied exactly once
    arrays, meta, used = load_checkpoint(path)
    assert used == path and meta["positions"] == {str(src): 400}
    assert_same_state(arrays, meta["model"], reference(good_prefix(s, 400))[0])
    assert ckpt.load(path + ".prev")[1]["positions"] == {str(src): 200}
    # the disk has room again: a restart resumes from line 400 and completes
    disk.failing = False
    Daemon(config(tmp_path, src)).run()
    assert_complete(tmp_path, s, src)


def test_final_checkpoint_failing_is_an_error(tmp_path, stream, monkeypatch):
    s, src = stream
    disk = DiskFull(monkeypatch, "fsync")
    d = Daemon(config(tmp_path, src, max_records=300))
    real_process = d.process

    def process(records):
        disk.failing = records[-1].position[1] >= 250
        return real_process(records)

    d.process = process
    with pytest.raises(CheckpointError, match="Input/output error"):
        d.run()
    assert load_checkpoint(str(tmp_path / "d.ckpt"))[1]["positions"] == {str(src): 200}


def test_save_checkpoint_write_error_leaves_files_byte_identical(tmp_path, monkeypatch):
    """The unit below the daemon: save_checkpoint with ENOSPC mid-write changes neither generation."""
    m = streamrnn.Model(**MODEL)
    path = str(tmp_path / "d.ckpt")
    for step in range(2):
        m.step_many(np.ones((3, 2)) * step, np.ones((3, 1)), ["a", "b", "a"])
        arrays, model_meta = m.state_arrays()
        save_checkpoint(path, arrays, {"model": model_meta, "positions": {"f": step}})
    before = (digest(path), digest(path + ".prev"))
    disk = DiskFull(monkeypatch, "write")
    disk.failing = True
    big = {"theta": np.zeros(100_000)}
    with pytest.raises(OSError) as err:
        save_checkpoint(path, big, {"model": {}, "positions": {"f": 9}})
    assert err.value.errno == errno.ENOSPC
    assert (digest(path), digest(path + ".prev")) == before
    assert sorted(os.listdir(tmp_path)) == ["d.ckpt", "d.ckpt.prev"]
