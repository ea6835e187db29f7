"""The daemon's batch paths give what its record-by-record paths give, on hostile input too.

The JSON Lines source reads whole, clean lines a block at a time, and the decoder decodes a clean
batch in bulk (issue #17: the daemon's own cost). Each is checked here against the line-by-line
reader and the one-record decoder, which the hardening suites pin down: same records, same
positions, same offsets, same values, same dead-letter reasons.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from streamrnn.connectors.base import Record, Unreadable
from streamrnn.connectors.file import JsonLinesSource
from streamrnn.service.decode import BadRecord, Decoder

# Lines that each take another branch of the reader: clean records, blank and whitespace lines
# (a non-ASCII space is no blank to bytes.strip), CRLF, invalid UTF-8, a BOM, and overlong lines.
_LINES = [
    b'{"a": 1, "y": 2}',
    b'{"a": 1.5, "y": null, "k": "\xc3\xa9"}',
    b"",
    b"   \t",
    b"\xc2\xa0",
    b'{"a": 3}\r',
    b'{"a": 3}\r\r',
    b"\xff\xfe not utf-8",
    b"\xef\xbb\xbf{}",
    b"x" * 70,
    b"y" * 64,
    b"not json",
]


def _read_all(path, block, max_records, max_record_bytes, follow=False):
    src = JsonLinesSource(path, follow=follow, max_record_bytes=max_record_bytes)
    src._block_reads = block
    out, trace = [], []
    for _ in range(10_000):
        got = src.poll(max_records)
        out += got
        trace.append((len(got), src._offset, src._line))
        if src.exhausted or (follow and not got):
            break
    src.close()
    return [(r.value if type(r.value) is not Unreadable else ("U", r.value.reason), r.position) for r in out], trace


@pytest.mark.parametrize("seed", range(40))
def test_block_reads_equal_line_by_line_reads(tmp_path, seed):
    rng = random.Random(seed)
    lines = [rng.choice(_LINES) for _ in range(rng.randrange(1, 120))]
    data = b"\n".join(lines) + rng.choice([b"\n", b"", b'\n{"a": 9'])  # maybe a partial last line
    if rng.random() < 0.3:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    max_records, max_record_bytes = rng.choice([1, 2, 7, 1000]), rng.choice([64, 65, 1 << 20])
    for follow in (False, True):
        expected = _read_all(path, False, max_records, max_record_bytes, follow)
        assert _read_all(path, True, max_records, max_record_bytes, follow) == expected


def test_block_reads_follow_a_growing_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 0}\n{"a": 1}\n{"a": 2')
    src = JsonLinesSource(path, follow=True)
    assert [r.value for r in src.poll(100)] == ['{"a": 0}', '{"a": 1}']
    assert src.poll(100) == []  # the partial line waits for its newline
    with open(path, "ab") as fh:
        fh.write(b'}\n\n{"a": 3}\n')
    got = src.poll(100)
    assert [(r.value, r.position[1]) for r in got] == [('{"a": 2}', 2), ('{"a": 3}', 4)]
    assert src.positions() == {src.stream: 5}
    src.close()


def _decode_each(decoder, records):
    """The reference: the one-record decoder, record by record (a result or the reason why not)."""

    def one(r):
        try:
            return decoder.decode(r)
        except BadRecord as exc:
            return str(exc)

    results = [(r, one(r)) for r in records]
    decoded = [(r, d) for r, d in results if type(d) is tuple]
    reasons = [(r.position, d) for r, d in results if type(d) is str]
    columns = list(zip(*(d for _, d in decoded))) or [[], [], [], []]
    return [r for r, _ in decoded], *map(list, columns), reasons


# Clean records of every schema below (one kind of key per batch): the bulk path decodes them.
_CLEAN = [
    b'{"a": 1, "b": 2.5, "y": 1.0, "key": "k1"}',
    b'{"a": -1e30, "b": 0, "y": null, "key": "k2"}',
    b'{"a": 1, "b": 2, "key": "k1"}',
    '{"a": 0.25, "b": -2, "y": 0, "key": "\u00e9t\u00e9", "r": false}',
    b'{"a": 3, "b": 2, "y": 1, "key": "k3", "r": true}',
]
_CLEAN_INT_KEYS = [
    b'{"a": 1, "b": 2, "y": 1, "key": 7}',
    b'{"a": 1, "b": 2, "y": 0, "key": 18446744073709551615}',
    b'{"a": 1, "b": 2, "key": -9223372036854775808, "r": null}',
]
# Each is refused, or decoded otherwise, by a check of the bulk path (in some schema below).
_HOSTILE = [
    b'{"a": true, "b": 2, "y": 1, "key": "k"}',
    b'{"a": "3", "b": 2, "y": 1, "key": "k"}',
    b'{"a": 1, "b": 2, "y": "", "key": "k"}',
    b'{"a": 1, "b": 2, "y": [1], "key": "k"}',
    b'{"a": 1, "b": 2, "y": true, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 0.5, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 2, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 5, "key": "k"}',
    b'{"a": 1, "b": 2, "y": -1, "key": "k"}',
    b'{"a": 1, "y": 1, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 1}',
    b'{"a": 1, "b": 2, "y": 1, "key": null}',
    b'{"a": 1, "b": 2, "y": 1, "key": 1.5}',
    b'{"a": 1, "b": 2, "y": 1, "key": true}',
    b'{"a": 1, "b": 2, "y": 1, "key": 7}',
    b'{"a": 1, "b": 2, "y": 1, "key": "' + b"k" * 300 + b'"}',
    b'{"a": 1, "b": 2, "y": 1, "key": "' + b"k" * 70 + b'"}',
    b'{"a": -1e300, "b": 2, "y": 1, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 2e39, "key": "k"}',
    b'{"a": 1, "b": 2, "y": 0, "key": "k", "r": "yes"}',
    b'{"a": 1, "b": 2, "y": 1, "key": "k", "r": 2}',
    b"[1, 2]",
    b"{bad json",
    b'{"a": 1, "b": 2, "y": 1, "key": "k", "pad": "' + b"p" * 70_000 + b'"}',
    bytearray(b'{"a": 1, "b": 2, "y": 1, "key": "k"}'),
    Unreadable("record of 9 bytes exceeds daemon.max_record_bytes = 8", b"123456789"),
    {"a": 1, "b": 2, "y": 1, "key": "k"},
]


def _assert_batch_is(got, reference, decoder):
    good, X, Y, keys, resets, reasons = reference
    assert got.records == good
    assert got.keys == keys
    assert [(d["position"], d["reason"]) for d in got.dead] == [(list(p), why) for p, why in reasons]
    np.testing.assert_array_equal(got.X, np.asarray(X, dtype=np.float64).reshape(len(good), len(decoder.features)))
    np.testing.assert_array_equal(got.Y, np.asarray(Y, dtype=np.float64).reshape(len(good), decoder.width))
    assert got.resets == (resets if decoder.reset_field is not None else None)
    assert got.X.dtype == got.Y.dtype == np.float64


@pytest.mark.parametrize(
    ("schema", "model"),
    [
        ({"features": ["a", "b"], "target": "y", "key": "key"}, {}),
        ({"features": ["a", "b"], "target": "y", "key": "key"}, {"dtype": "float32"}),
        ({"features": ["a", "b"], "target": "y", "key": "key", "reset": "r"}, {}),
        ({"features": ["b"], "target": "y"}, {}),
        ({"features": ["a", "b"], "target": "y", "key": "key"}, {"task": "classification", "n_outputs": 3}),
        ({"features": ["a", "b"], "target": "y", "key": "key"}, {"task": "binary"}),
        ({"features": ["a", "b"], "target": "y", "key": "key"}, {"n_outputs": 2}),
        ({"features": ["a", "b"]}, {}),
    ],
)
def test_batch_decode_equals_record_by_record(schema, model):
    decoder = Decoder(schema, model, max_record_bytes=1 << 16, max_key_bytes=256)
    rng = random.Random(0)
    clean = [[rng.choice(_CLEAN) for _ in range(50)], [rng.choice(_CLEAN_INT_KEYS) for _ in range(20)]]
    # clean but for one value: each of the bulk path's checks must see it
    batches = [[*rng.sample(_CLEAN, 3), hostile, *rng.sample(_CLEAN, 2)] for hostile in _HOSTILE]
    batches += [rng.choices(_CLEAN + _CLEAN_INT_KEYS + _HOSTILE, k=rng.randrange(1, 40)) for _ in range(100)]
    for b, values in enumerate(clean + batches):
        # the records' own keys (the key when the schema names no key field)
        record_keys = (
            [[None], [b"rk", b"\xff"]][b] if b < len(clean) else rng.choice([[None], [b"rk"], [None, b"rk", "s"]])
        )
        records = [Record(v, key=rng.choice(record_keys), position=("s", b, i)) for i, v in enumerate(values)]
        reference = _decode_each(decoder, records)
        _assert_batch_is(decoder.decode_batch(records), reference, decoder)
        if b < len(clean) and decoder.width == 1:
            _assert_batch_is(decoder._decode_clean(records), reference, decoder)  # in bulk
