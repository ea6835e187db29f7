"""``connectors.codec``: a batch encoded in one buffer is the records encoded one by one."""

import json

import numpy as np

from streamrnn.connectors.codec import dumps, dumps_each, dumps_lines, loads
from streamrnn.connectors.kafka import encode_outputs

RECORDS = [
    {"position": ["f", 0], "key": "a\nb", "prediction": 0.1, "target": None, "loss": None},
    {"position": ["f", 1], "key": "ключ \u2028 }{", "prediction": 1e-300, "target": -2.5, "loss": 3.0},
    {"position": ["t", 0, 7], "key": 12, "prediction": [np.float64(0.25), 1.0], "target": [1, 2], "loss": 0.5},
    {"position": ["t", 0, 8], "key": None, "prediction": np.array([1.5, -0.0]), "target": None, "loss": None},
    {},
]


def test_lines_are_the_records_encoded_one_by_one():
    encoded = [dumps(r) for r in RECORDS]
    assert dumps_lines(RECORDS) == b"".join(e + b"\n" for e in encoded)
    assert dumps_each(RECORDS) == encoded
    assert b"\n" not in b"".join(encoded)  # the newline in a key is escaped
    assert [json.loads(e) for e in encoded] == [loads(e) for e in encoded]


def test_no_records_encode_to_nothing():
    assert dumps_lines([]) == b""
    assert dumps_each(iter([])) == []


def test_kafka_outputs_pair_each_key_with_its_record():
    pairs = encode_outputs(iter(RECORDS))
    assert pairs == [
        (b"a\nb", dumps(RECORDS[0])),
        ("ключ \u2028 }{".encode(), dumps(RECORDS[1])),
        (b"12", dumps(RECORDS[2])),
        (None, dumps(RECORDS[3])),
        (None, b"{}"),
    ]
