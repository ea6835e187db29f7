"""Hypothesis strategies for hostile input: each draw is one line/value as bytes plus what the
daemon must make of it, ("good", key, [a, b], y) or ("bad", reason fragment, category)."""

from __future__ import annotations

import json
import math

from hypothesis import strategies as st

MAX_RECORD_BYTES = 4096  # daemon.max_record_bytes in the fuzz configurations
FIELDS = ("a", "b")

# ---------------------------------------------------------------------------- good values
finite = st.one_of(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**3), max_value=10**3),
    st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False),  # huge, finite
    st.integers(min_value=-(10**30), max_value=10**30),  # beyond int64
)
keys = st.one_of(st.sampled_from([f"k{i}" for i in range(8)]), st.integers(-5, 20), st.text(max_size=6), st.none())
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_value = st.one_of(
    json_leaf, st.lists(json_leaf, max_size=3), st.dictionaries(st.text(max_size=3), json_leaf, max_size=2)
)
unknown_fields = st.one_of(
    st.just({}),
    st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in ("a", "b", "y", "key")), json_value, min_size=1, max_size=2
    ),
)


@st.composite
def number_text(draw, v):
    """A JSON rendering of the finite number ``v``: as a number, or as a numeric string."""
    if draw(st.integers(0, 5)) == 0:
        return str(float(v)) if draw(st.booleans()) else repr(v)  # "1.5" as a string: accepted
    return v


@st.composite
def good_object(draw):
    a, b = draw(finite), draw(finite)
    key = draw(keys)
    obj = {"a": draw(number_text(a)), "b": draw(number_text(b)), "key": key}
    target = draw(st.sampled_from(["number", "null", "missing", "empty", "list"]))
    y = math.nan
    if target in ("number", "list"):
        t = draw(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False))
        obj["y"] = [t] if target == "list" else t
        y = t
    elif target == "null":
        obj["y"] = None
    elif target == "empty":
        obj["y"] = ""
    obj.update(draw(unknown_fields))
    if draw(st.booleans()):  # field order is not fixed
        obj = dict(reversed(list(obj.items())))
    return obj, (key, [float(a), float(b)], y)


def dumps(obj, ensure_ascii=True):
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8")


@st.composite
def good_record(draw):
    obj, row = draw(good_object())
    return dumps(obj, draw(st.booleans())), ("good", *row)


# ---------------------------------------------------------------------------- bad records
BOM = b"\xef\xbb\xbf"
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xfe",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xed\xa0\x80",
    b"\xf0\x28\x8c\x28",
    b"\xc0\xaf",
    b"\xe2\x82",
]


@st.composite
def bad_record(draw):
    obj, _ = draw(good_object())
    kind = draw(
        st.sampled_from(
            [
                "invalid utf-8",
                "invalid json",
                "non-finite literal",
                "non-finite string",
                "overflow",
                "wrong type",
                "wrong width",
                "missing field",
                "key type",
                "oversized",
                "deep nesting",
                "not an object",
            ]
        )
    )
    line = dumps(obj)
    if kind == "invalid utf-8":
        raw = draw(st.sampled_from(INVALID_UTF8))
        where = draw(st.sampled_from(["string", "anywhere"]))
        if where == "string":
            obj["note"] = "@@"
            line = dumps(obj).replace(b"@@", raw)
        else:
            i = draw(st.integers(1, len(line) - 1))
            line = line[:i] + raw + line[i:]
        return line, ("bad", "invalid UTF-8 at byte", kind)  # wherever the bytes are, the real reason
    if kind == "invalid json":
        how = draw(
            st.sampled_from(
                ["truncate", "trailing comma", "single quotes", "garbage after", "bom", "bare word", "unquoted key"]
            )
        )
        if how == "truncate":
            line = line[: draw(st.integers(1, len(line) - 1))]
        elif how == "trailing comma":
            line = line[:-1] + b",}"
        elif how == "single quotes":
            line = line.replace(b'"', b"'")
        elif how == "garbage after":
            line = line + b" " + draw(st.sampled_from([b"x", b"{}", b"1", b"]"]))
        elif how == "bom":
            line = BOM + line
        elif how == "bare word":
            line = draw(st.sampled_from([b"hello", b"{", b"}", b"[1,", b'"unterminated', b"nul", b"tru"]))
        else:
            line = b'{a: 1, b: 2, key: "k1"}'
        return line, ("bad", "invalid JSON", kind)
    field = draw(st.sampled_from(["a", "b", "y"]))
    if kind == "non-finite literal":
        obj[field] = "@@"
        lit = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"]))
        return dumps(obj).replace(b'"@@"', lit), ("bad", "invalid JSON", kind)
    if kind == "non-finite string":
        obj[field] = draw(st.sampled_from(["NaN", "nan", "inf", "-Infinity", "1e999", "-1e400"]))
        return dumps(obj), ("bad", f"field {field!r}: non-finite", kind)
    if kind == "overflow":
        obj[field] = "@@"
        lit = draw(st.sampled_from([b"1e400", b"-2e308", b"9" * 400, b"-" + b"1" * 320]))
        return dumps(obj).replace(b'"@@"', lit), ("bad", "invalid JSON", kind)
    if kind == "wrong type":
        value = draw(st.sampled_from([True, False, {}, {"v": 1}, "abc", "", "1,5", "0x10"]))
        if field == "y" and value == "":
            value = "abc"  # an empty target means "no target"
        if field != "y":
            value = draw(st.sampled_from([value, None, [1.0, 2.0]]))
        obj[field] = value
        if isinstance(value, bool):
            reason = "got a boolean"
        elif isinstance(value, str):
            reason = "not a number"
        elif value is None:
            reason = "got NoneType"
        elif isinstance(value, list):
            reason = "got list"
        else:
            reason = "got dict"
        return dumps(obj), ("bad", f"field {field!r}", kind, reason)
    if kind == "wrong width":
        obj["y"] = draw(st.sampled_from([[], [1.0, 2.0], [0.5, 0.5, 0.5]]))
        return dumps(obj), ("bad", f"expected 1 value, got {len(obj['y'])}", kind)
    if kind == "missing field":
        gone = draw(st.sampled_from(["a", "b", "key"]))
        del obj[gone]
        reason = "missing key field 'key'" if gone == "key" else f"missing feature field {gone!r}"
        return dumps(obj), ("bad", reason, kind)
    if kind == "key type":
        obj["key"] = draw(st.sampled_from([1.5, 2.0, True, False, [1], {"k": 1}, -0.0]))
        return dumps(obj), ("bad", "key must be a string or an integer", kind)
    if kind == "oversized":
        obj["padding"] = "x" * draw(st.integers(MAX_RECORD_BYTES, 3 * MAX_RECORD_BYTES))
        return dumps(obj), ("bad", "exceeds daemon.max_record_bytes", kind)
    if kind == "deep nesting":
        depth = draw(st.integers(1100, 1900))  # beyond the parser's 1024 levels, within the size cap
        obj["deep"] = "@@"
        return dumps(obj).replace(b'"@@"', b"[" * depth + b"]" * depth), ("bad", "invalid JSON", kind)
    top = draw(st.sampled_from([b"[]", b"[1, 2]", b"3.5", b'"text"', b"null", b"true", b'[{"a": 1, "b": 2}]']))
    return top, ("bad", "expected a JSON object", kind)


@st.composite
def nested_good_record(draw):
    """A good record carrying an unknown field nested a few hundred levels (parsed and ignored)."""
    obj, row = draw(good_object())
    depth = draw(st.integers(10, 500))
    obj["deep"] = "@@"
    return dumps(obj).replace(b'"@@"', b"[" * depth + b"]" * depth), ("good", *row)


def records(min_size, max_size):
    return st.lists(
        st.one_of(good_record(), nested_good_record(), bad_record(), bad_record()), min_size=min_size, max_size=max_size
    )
