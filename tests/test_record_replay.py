"""`streamrnn record` of a file and `streamrnn replay` of the recording into the model (no broker;
the Kafka side is tests/integration/test_record_replay.py)."""

from streamrnn.cli import main
from streamrnn.service import Daemon, validate_config
from tests.test_daemon import MODEL, assert_same_weights, make_stream, read_jsonl


def test_record_a_file_and_replay_equals_the_daemon_on_the_file(tmp_path):
    """No broker needed: a JSONL file recorded and replayed gives the daemon's exact model."""
    lines, good, bad = make_stream(n=300, seed=6)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    rec = tmp_path / "rec.jsonl"
    assert main(["record", "--file", str(src), "--out", str(rec)]) == 0
    assert [r["position"] for r in read_jsonl(rec)] == [[str(src), i] for i in range(300)]
    cfg = lambda d, source: {  # noqa: E731
        "source": source,
        "sink": {"type": "jsonl", "path": str(d / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(d / "dead.jsonl")},
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": str(d / "c.ckpt"), "every_records": 0, "every_seconds": 0},
        "daemon": {"batch_size": 50, "progress": False},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    direct = Daemon(validate_config(cfg(tmp_path / "a", {"type": "jsonl", "path": str(src)})))
    direct.run()
    replayed = Daemon(validate_config(cfg(tmp_path / "b", {"type": "replay", "path": str(rec)})))
    replayed.run()
    assert_same_weights(direct.model.get_weights(), replayed.model.get_weights())
    a, b = read_jsonl(tmp_path / "a" / "out.jsonl"), read_jsonl(tmp_path / "b" / "out.jsonl")
    assert [o["prediction"] for o in a] == [o["prediction"] for o in b] and len(a) == len(good)
    assert [x["reason"] for x in read_jsonl(tmp_path / "a" / "dead.jsonl")] == [
        x["reason"] for x in read_jsonl(tmp_path / "b" / "dead.jsonl")
    ]
