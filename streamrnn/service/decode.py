"""Decoding: a source's Record -> (features, target row, key, reset), or a dead letter saying why not.

>>> from streamrnn.connectors.base import Record
>>> dec = Decoder({"features": ["a", "b"], "target": "y"}, {"n_inputs": 2})
>>> dec.decode(Record(value=b'{"a": 1, "b": 2.5, "y": 0.5}', key=b"k1", position=("f", 0)))
([1, 2.5], [0.5], 'k1', False)
>>> dec.decode(Record(value=b'{"a": 1}', key=None, position=("f", 1)))
Traceback (most recent call last):
...
streamrnn.service.decode.BadRecord: missing feature field 'b'
"""

from __future__ import annotations

import json
import math
from itertools import chain
from operator import itemgetter

import numpy as np

from streamrnn.connectors.base import Unreadable
from streamrnn.connectors.codec import JSONDecodeError, loads


class BadRecord(ValueError):
    """A record the model cannot use; the message is the dead letter's reason."""


def _number(name, v, max_abs=float("inf")):
    if isinstance(v, bool):
        raise BadRecord(f"field {name!r}: expected a number, got a boolean")
    if isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:  # an integer beyond any double
            raise BadRecord(f"field {name!r}: {str(v)[:40]}... overflows the model's dtype") from None
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            raise BadRecord(f"field {name!r}: not a number: {v[:40]!r}") from None
    else:
        raise BadRecord(f"field {name!r}: expected a number, got {type(v).__name__}")
    if not math.isfinite(f):
        raise BadRecord(f"field {name!r}: non-finite value {v!r}")
    if abs(f) > max_abs:
        raise BadRecord(f"field {name!r}: {v!r} overflows the model's dtype")
    return f


# The values of a ``[schema] reset`` field that mean "this record starts a new sequence" and "it does
# not": JSON booleans and numbers, and their spellings in CSV cells (which are strings).
_RESET_TRUE = frozenset(("true", "1", "yes"))
_RESET_FALSE = frozenset(("false", "0", "no", ""))


class Batch:
    """A decoded batch: the usable ``records`` in order, their features ``X`` and target rows ``Y``
    (float64 arrays, NaN where a row has no target), ``keys``, ``resets`` (a bool per record, or
    None when the schema has no reset field), and the ``dead`` letters of the rest, in order."""

    __slots__ = ("records", "X", "Y", "keys", "resets", "dead")

    def __init__(self, records, X, Y, keys, resets, dead):
        self.records, self.X, self.Y, self.keys, self.resets, self.dead = records, X, Y, keys, resets, dead


class _NotClean(Exception):
    """A batch the bulk decoder leaves to the record-by-record one (which says what is wrong)."""


_NUMBER_TYPES = frozenset((int, float))
_TARGET_TYPES = frozenset((int, float, type(None)))
_RESET_TYPES = frozenset((bool, type(None)))


class Decoder:
    """Turns a Record into (features, target row, key, reset) or raises BadRecord with a reason.

    ``reset`` is True when the schema names a ``reset`` field and the record's is truthy (true, a
    nonzero number, or "true"/"1"/"yes"): the record starts a new sequence of its key. A missing or
    null field, false, 0 and "false"/"0"/"no"/"" are False; anything else is a BadRecord.
    """

    def __init__(self, schema, model_config, max_record_bytes=1 << 20, max_key_bytes=1024):
        self.max_record_bytes = max_record_bytes
        self.max_key_bytes = max_key_bytes
        self.features = list(schema["features"])
        self.target = schema.get("target")
        self.key_field = schema.get("key")
        self.reset_field = schema.get("reset")
        self.task = model_config.get("task", "regression")
        self.n_outputs = model_config.get("n_outputs", 1)
        self.width = self.n_outputs if self.task == "regression" else 1
        self.max_abs = float(np.finfo(model_config.get("dtype", "float64")).max)
        self._no_target = [math.nan] * self.width
        self._features_of = itemgetter(*self.features)

    def decode_batch(self, records):
        """The :class:`Batch` of ``records``: each decoded as :meth:`decode` decodes it, the usable
        ones in order and a dead letter for each of the rest.

        A batch of clean records (JSON objects with numbers in range, keys and targets of the
        expected types) is decoded in bulk, without a Python step per field; any other batch record
        by record, with the same results.
        """
        if self.width == 1:
            try:
                return self._decode_clean(records)
            except _NotClean:
                pass
        good, X, Y, keys, resets, dead = [], [], [], [], [], []
        for r in records:
            try:
                x, y, k, reset = self.decode(r)
            except BadRecord as exc:
                dead.append(dead_letter(r, str(exc)))
                continue
            good.append(r)
            X.append(x)
            Y.append(y)
            keys.append(k)
            resets.append(reset)
        shape = (len(good), len(self.features))
        Xa, Ya = np.asarray(X, dtype=np.float64).reshape(shape), np.asarray(Y, dtype=np.float64)
        return Batch(good, Xa, Ya.reshape(len(good), self.width), keys, resets if self.reset_field else None, dead)

    def _decode_clean(self, records):
        """:meth:`decode_batch` of a clean batch of one-target records, or _NotClean."""
        values = [r.value for r in records]
        if not values or not {type(v) for v in values} <= {bytes, str}:
            raise _NotClean
        if max(map(len, values)) > self.max_record_bytes:
            raise _NotClean
        try:
            objs = list(map(loads, values))
            if {type(o) for o in objs} != {dict}:
                raise _NotClean
            rows = list(map(self._features_of, objs))
        except (JSONDecodeError, KeyError):
            raise _NotClean from None
        flat = chain.from_iterable(rows) if len(self.features) > 1 else rows
        if not set(map(type, flat)) <= _NUMBER_TYPES:
            raise _NotClean
        X = np.array(rows, dtype=np.float64).reshape(len(objs), len(self.features))
        top = self.max_abs
        if not (np.abs(X) <= top).all():  # NaN fails too
            raise _NotClean
        if self.target is None:
            Y = np.full((len(objs), 1), np.nan)
        else:
            targets = [o.get(self.target) for o in objs]
            if not {type(t) for t in targets} <= _TARGET_TYPES:
                raise _NotClean
            Y = np.array(targets, dtype=np.float64).reshape(-1, 1)  # None: NaN, no target
            known = Y[~np.isnan(Y)]
            if not (np.abs(known) <= top).all():
                raise _NotClean
            if self.task == "classification":
                if not ((known == np.floor(known)) & (known >= 0) & (known < self.n_outputs)).all():
                    raise _NotClean
            elif self.task == "binary" and not ((known == 0.0) | (known == 1.0)).all():
                raise _NotClean
        keys = self._clean_keys(records, objs)
        resets = None
        if self.reset_field is not None:
            flags = [o.get(self.reset_field) for o in objs]
            if not {type(f) for f in flags} <= _RESET_TYPES:
                raise _NotClean
            resets = [f is True for f in flags]
        return Batch(records, X, Y, keys, resets, [])

    def _clean_keys(self, records, objs):
        """The keys of a clean batch (as :meth:`_key` gives them), or _NotClean."""
        if self.key_field is not None:
            try:
                keys = [o[self.key_field] for o in objs]
            except KeyError:
                raise _NotClean from None
        else:
            keys = [r.key for r in records]
            kinds = {type(k) for k in keys}
            if bytes in kinds:
                if not kinds <= {bytes, str, type(None)}:
                    raise _NotClean
                keys = [k.decode("utf-8", errors="replace") if type(k) is bytes else k for k in keys]
        kinds = {type(k) for k in keys}
        if kinds == {str}:
            if max(map(len, keys)) * 4 > self.max_key_bytes:  # maybe too long: _key measures it
                raise _NotClean
        elif kinds == {int}:  # orjson reads no integer outside these bounds as one: a guard for other codecs
            if not (-(2**63) <= min(keys) and max(keys) < 2**64):
                raise _NotClean
        elif kinds != {type(None)} or self.key_field is not None:
            raise _NotClean
        return keys

    def decode(self, record):
        """``(features, target row, key, reset)`` of ``record`` (see the class docstring), or BadRecord
        with the reason a dead letter gives.
        """
        value = record.value
        if type(value) is Unreadable:  # the source could not read it whole (it says why)
            raise BadRecord(value.reason)
        if isinstance(value, (bytes, bytearray, str)):
            if len(value) > self.max_record_bytes:  # a str's length is a lower bound of its bytes
                raise BadRecord(
                    f"record of {len(value)} {'bytes' if type(value) is not str else 'characters'} "
                    f"exceeds daemon.max_record_bytes = {self.max_record_bytes}"
                )
            try:
                value = loads(value)  # bytes: UTF-8 is validated while parsing
            except JSONDecodeError as exc:
                raise BadRecord(_json_error(record.value, exc)) from None
        if not isinstance(value, dict):
            raise BadRecord(f"expected a JSON object, got {type(value).__name__}")
        try:
            x = [value[f] for f in self.features]
        except KeyError:
            missing = next(f for f in self.features if f not in value)
            raise BadRecord(f"missing feature field {missing!r}") from None
        top = self.max_abs
        for v in x:
            # Fast path: a JSON number within the dtype's range (NaN fails the comparison).
            # Anything else is converted or refused, with its reason, field by field.
            if (type(v) is not float and type(v) is not int) or not -top <= v <= top:
                x = [_number(f, value[f], top) for f in self.features]
                break
        reset = self._reset(value) if self.reset_field is not None else False
        t = value.get(self.target) if self.target is not None else None
        if t is None or t == "":
            return x, self._no_target, self._key(record, value), reset
        if self.width == 1 and self.task == "regression" and type(t) is float and -top <= t <= top:
            return x, [t], self._key(record, value), reset
        return x, self._target(t), self._key(record, value), reset

    def _reset(self, value):
        """The record's reset flag (see the class docstring), or BadRecord."""
        r = value.get(self.reset_field)
        if r is None or r is False:
            return False
        if r is True:
            return True
        if type(r) in (int, float) and r == r:
            return r != 0
        if isinstance(r, str) and r.strip().lower() in _RESET_TRUE | _RESET_FALSE:
            return r.strip().lower() in _RESET_TRUE
        raise BadRecord(f"field {self.reset_field!r}: expected a boolean (true/false, 1/0), got {str(r)[:40]!r}")

    def _target(self, t):
        """The target row of a present target field, or BadRecord."""
        if self.task == "regression" and self.width > 1:
            if not isinstance(t, list) or len(t) != self.width:
                raise BadRecord(f"field {self.target!r}: expected a list of {self.width} numbers")
            return [_number(self.target, v, self.max_abs) for v in t]
        if isinstance(t, list):
            if len(t) != 1:
                raise BadRecord(f"field {self.target!r}: expected 1 value, got {len(t)}")
            t = t[0]
        y = [_number(self.target, t, self.max_abs)]
        if self.task == "classification":
            if y[0] != int(y[0]) or not 0 <= y[0] < self.n_outputs:
                raise BadRecord(f"field {self.target!r}: class {t!r} is not an integer in [0, {self.n_outputs})")
        elif self.task == "binary" and y[0] not in (0.0, 1.0):
            raise BadRecord(f"field {self.target!r}: binary target must be 0 or 1, got {t!r}")
        return y

    def _key(self, record, value):
        if self.key_field is not None:
            if self.key_field not in value:
                raise BadRecord(f"missing key field {self.key_field!r}")
            key = value[self.key_field]
        else:
            key = record.key
            if isinstance(key, (bytes, bytearray)):
                key = key.decode("utf-8", errors="replace")
        if type(key) is str:
            if len(key) * 4 > self.max_key_bytes and len(key.encode("utf-8", "surrogatepass")) > self.max_key_bytes:
                raise BadRecord(
                    f"key of {len(key.encode('utf-8', 'surrogatepass'))} bytes exceeds "
                    f"daemon.max_key_bytes = {self.max_key_bytes}"
                )
            return key
        if key is None:
            return key
        if type(key) is int or (isinstance(key, int) and not isinstance(key, bool)):
            if not -(2**63) <= key < 2**64:
                raise BadRecord(f"key: the integer {str(key)[:40]} does not fit in 64 bits")
            return key
        if type(key) is float and self.key_field is not None and math.isfinite(key) and abs(key) >= 2.0**63:
            exact = _exact_field(record.value, self.key_field)
            if type(exact) is int:  # orjson reads an integer beyond 64 bits as a float
                raise BadRecord(
                    f"key: the integer {str(exact)[:40]} does not fit in 64 bits (keys are strings or 64-bit integers)"
                )
        shown = repr(key)
        shown = shown if len(shown) <= 80 else f"{shown[:80]}..."
        raise BadRecord(f"key must be a string or an integer, got {type(key).__name__} {shown}")


def _json_error(raw, exc):
    """The reason a JSON record failed to parse: invalid UTF-8 (where), or the parser's message."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"invalid UTF-8 at byte {bad.start} of the record"
    return f"invalid JSON: {exc.msg} at char {exc.pos}"


def _exact_field(raw, name):
    """Field ``name`` of the JSON object ``raw`` as the standard library reads it (integers of
    any size stay integers), or None."""
    if not isinstance(raw, (bytes, bytearray, str)):
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj.get(name) if isinstance(obj, dict) else None


_DEAD_VALUE_CHARS = 1 << 16  # dead letters carry at most this much of the record (Kafka caps messages)


def _raw_text(value):
    if type(value) is Unreadable:
        value = value.raw
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[: _DEAD_VALUE_CHARS * 4]).decode("utf-8", errors="replace")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            try:
                text = repr(value)
            except RecursionError:
                text = f"<{type(value).__name__} nested too deeply to show>"
    if len(text) > _DEAD_VALUE_CHARS:
        text = f"{text[:_DEAD_VALUE_CHARS]}...[truncated: {len(value)} in all]"
    return text


def _jsonable_key(k):
    if isinstance(k, (bytes, bytearray)):
        return k.decode("utf-8", errors="replace")
    if k is None or isinstance(k, (str, int, float)):
        return k
    return repr(k)


def dead_letter(record, reason):
    """The dead-letter entry of an unusable ``record``: its position, the reason, its key and value."""
    return {
        "position": list(record.position),
        "reason": reason,
        "key": _jsonable_key(record.key),
        "value": _raw_text(record.value),
    }
