"""JSON encoding and decoding of records, with orjson.

orjson parses and writes JSON several times faster than the standard library
(it reads bytes directly, validating UTF-8 on the way), which matters on a hot
path that touches every record twice. It is strict where the standard library
is lenient: ``NaN``/``Infinity`` literals and numbers that overflow a double
are invalid JSON, so they surface as decode errors with a position.
Floats are written as the shortest text that reads back to the same double.
"""

from __future__ import annotations

import orjson

JSONDecodeError = orjson.JSONDecodeError  # a subclass of json.JSONDecodeError (msg, pos)

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def loads(data):
    """Parse ``bytes`` or ``str`` holding one JSON document."""
    return orjson.loads(data)


def dumps(obj) -> bytes:
    """Compact UTF-8 JSON; NumPy arrays and scalars become lists and numbers, NaN becomes null."""
    return orjson.dumps(obj, option=_OPTIONS)
