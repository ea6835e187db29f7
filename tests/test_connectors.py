import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamrnn.connectors import CsvSink, CsvSource, JsonLinesSink, JsonLinesSource, ListSink, ReplaySource, SourceError
from streamrnn.connectors.base import Sink, Source, Unreadable


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_jsonl_source_poll_positions_and_seek(tmp_path):
    p = _write(tmp_path / "a.jsonl", '{"a":1}\n{"a":2}\n\n{"a":3}\nnot json\n')
    src = JsonLinesSource(p)
    assert isinstance(src, Source)
    first = src.poll(2)
    assert [r.value for r in first] == ['{"a":1}', '{"a":2}']
    assert [r.position for r in first] == [(p, 0), (p, 1)]
    assert src.positions() == {p: 2}
    rest = src.poll(10)
    # the blank line 2 is skipped but counted
    assert [(r.value, r.position[1]) for r in rest] == [('{"a":3}', 3), ("not json", 4)]
    assert src.positions() == {p: 5}
    assert src.poll(10) == [] and src.exhausted
    src.seek({p: 1})
    assert [r.position[1] for r in src.poll(10)] == [1, 3, 4]
    src.seek({"other-file": 0})  # positions of other streams are ignored
    assert src.positions() == {p: 5}
    src.close()


def test_jsonl_follow_waits_for_complete_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"a":1}\n{"a":')
    src = JsonLinesSource(str(path), follow=True)
    assert [r.value for r in src.poll(10, timeout=0.05)] == ['{"a":1}']
    t0 = time.monotonic()
    assert src.poll(10, timeout=0.2) == []  # partial line is not returned
    assert time.monotonic() - t0 >= 0.15
    assert not src.exhausted
    with open(path, "a") as fh:
        fh.write('2}\n{"a":3}\n')
    got = src.poll(10, timeout=0.5)
    assert [(r.value, r.position[1]) for r in got] == [('{"a":2}', 1), ('{"a":3}', 2)]
    src.close()


def test_csv_source_rows_and_seek(tmp_path):
    p = _write(tmp_path / "a.csv", "x,y,key\n1,2,a\n3,4\n5,6,b\n")
    src = CsvSource(p)
    recs = src.poll(10)
    assert recs[0].value == {"x": "1", "y": "2", "key": "a"} and recs[0].position == (p, 1)
    assert recs[1].value == Unreadable("CSV row of 2 fields, the header has 3", b"3,4")  # the daemon dead-letters it
    assert recs[2].position == (p, 3)
    assert src.positions() == {p: 4}
    src.seek({p: 0})  # line 0 is the header: skipped
    assert [r.position[1] for r in src.poll(10)] == [1, 2, 3]
    src.seek({p: 3})
    assert [r.value for r in src.poll(10)] == [{"x": "5", "y": "6", "key": "b"}]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        JsonLinesSource(str(tmp_path / "nope.jsonl"))


def test_replay_source_deterministic_and_paced(tmp_path):
    lines = [json.dumps({"ts": 100.0 + 0.1 * i, "key": f"k{i % 2}", "value": {"x": i}}) for i in range(5)]
    p = _write(tmp_path / "r.jsonl", "\n".join(lines + ["garbage"]) + "\n")
    a = ReplaySource(p).poll(100)
    b = ReplaySource(p).poll(100)
    assert a == b
    assert [r.value for r in a[:5]] == [{"x": i} for i in range(5)]
    assert [r.key for r in a[:5]] == ["k0", "k1", "k0", "k1", "k0"]
    assert a[2].timestamp == pytest.approx(100.2) and a[2].position == (p, 2)
    assert a[5].value == Unreadable(
        "replay line: invalid JSON: unexpected character, expected a JSON value at char 0", b"garbage"
    )
    t0 = time.monotonic()
    src, paced = ReplaySource(p, speed=2.0), []
    while not src.exhausted:  # a poll returns what is due (waiting at most 0.5 s)
        paced += src.poll(100)
    assert time.monotonic() - t0 >= 0.18  # 0.4 s of recorded time at 2x -> >= 0.2 s
    assert paced == a


def test_jsonl_and_csv_sinks(tmp_path):
    s = JsonLinesSink(str(tmp_path / "o.jsonl"))
    assert isinstance(s, Sink)
    s.write([{"a": 1, "b": [1.5, 2]}, {"a": 2, "b": None}])
    s.flush()
    s.write([{"a": 3}])
    s.close()
    assert [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()] == [
        {"a": 1, "b": [1.5, 2]},
        {"a": 2, "b": None},
        {"a": 3},
    ]
    c = CsvSink(str(tmp_path / "o.csv"))
    c.write([{"k": "a", "v": 1.5}, {"k": "b", "v": [1, 2]}])
    c.close()
    assert (tmp_path / "o.csv").read_text().splitlines() == ["k,v", "a,1.5", 'b,"[1,2]"']
    ls = ListSink()
    ls.write([1, 2])
    assert ls.records == [1, 2]


def test_kafka_connectors_without_kafka_python_name_the_extra():
    code = (
        "import sys; sys.modules['kafka'] = None  # as if kafka-python were not installed\n"
        "try:\n    import streamrnn.connectors.kafka\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "MissingExtra the Kafka connectors needs the 'kafka' package: pip install 'streamrnn[kafka]'"
    )


def test_the_kafka_sink_child_imports_no_model_and_no_numba():
    """The sink's child process imports only the connectors (each child start paid 0.6 CPU-seconds
    for Numba and the model before the package loaded them lazily)."""
    code = (
        "import sys; from streamrnn.connectors.kafka.sink_process import _sink_process_entry; "
        "print(sorted(m for m in ('numba', 'streamrnn.model', 'streamrnn.cells') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
