"""The streaming daemon: source -> decode -> Model.step_many -> encode -> sink, with checkpoints.

Configuration (TOML; every key is checked, errors name the key)::

    [source]                       # type = "jsonl" | "csv" | "replay" | "kafka"
    type = "replay"
    path = "stream.jsonl"          # files: relative paths resolve against the config's folder
    follow = false                 # jsonl/csv: keep reading a growing file (tail -f)
    speed = 0.0                    # replay: 0 = as fast as possible, else recorded pace x speed
    # kafka: bootstrap = "host:port", topic = "in", group = "streamrnn"
    #   order = "timestamp"        # merge partitions by (timestamp, partition, offset), waiting for
    #                              # partitions with records on the broker: a restart replays the
    #                              # same order (bit-identical results) for records that were on the
    #                              # broker when first read (live records reaching a caught-up
    #                              # partition merge as they arrive); "arrival" = as fetched
    #   instance_id = "member-1"   # static group membership: a restarted daemon gets its partitions
    #                              # back at once instead of after the 45 s session timeout

    [sink]                         # predictions: type = "jsonl" | "csv" | "kafka" (topic = ...)
    type = "jsonl"
    path = "predictions.jsonl"
    # kafka: process = true        # produce from a child process (kafka-python's send is pure
    #                              # Python; there it runs on another core); false = in the daemon

    [dead_letter]                  # records that cannot be used, with the reason and position
    type = "jsonl"
    path = "dead_letters.jsonl"

    [schema]
    features = ["x0", "x1"]        # fields of the record's JSON object (or CSV columns)
    target = "y"                   # optional; missing/null target = predict only
    key = "key"                    # optional; field holding the per-entity key (str or int);
                                   # when absent, the source's record key (Kafka key) is used
    forecast = false               # true: the target of a record is the `target` field of the
                                   # NEXT record of the same key (streamrnn.forecast); each output
                                   # then carries the forecast for that next record, and its
                                   # target/loss are those of the previous forecast of its key,
                                   # which this record resolved

    [model]                        # keyword arguments of streamrnn.Model (n_inputs defaults
    cell = "gru"                   # to len(schema.features))
    n_hidden = 8

    [checkpoint]
    path = "daemon.ckpt"           # the previous generation is kept as PATH.prev; an unusable newest
                                   # one (corrupt, other [model]) is renamed PATH.unusable-TIME and
                                   # the daemon resumes from PATH.prev
    every_records = 1000
    every_seconds = 30.0

    [daemon]
    batch_size = 500
    poll_timeout = 0.5
    metrics_port = 0               # 0 = no Prometheus endpoint
    log_every_seconds = 10.0
    progress = true                # a progress bar when reading a finite file
    max_record_bytes = 1048576     # larger records go to the dead-letter sink unparsed
    # Retry policy while the Kafka broker is unreachable (at start, on poll, on flushing outputs):
    # log "broker unreachable, retrying in ..." and retry with exponential backoff; give up after
    # retry_attempts failures in a row or retry_give_up_seconds (0 = that bound off; not both),
    # exiting with status 2 and the last checkpoint intact (nothing later saved or committed).
    retry_attempts = 30
    retry_backoff = 0.5            # seconds before the first retry, doubling each time ...
    retry_backoff_max = 30.0       # ... up to this
    retry_give_up_seconds = 600.0
    # The same bounds apply to checkpoint writes that fail (disk full, I/O error): the daemon logs
    # the error, keeps both previous generations, commits no offsets past them, keeps running and
    # tries again at the next checkpoint; past the bounds (or if the final checkpoint fails) it
    # stops with status 2.

    [group]                        # scale-out: this daemon is one member of a Kafka consumer group
    name = "streamrnn"             # the group (= source.group; `streamrnn run --group NAME` sets it);
                                   # Kafka splits the topic's partitions among the members
    mode = "independent"           # one model per partition: parameters, optimizer state and keys
                                   # (bit-identical to one daemon reading the whole topic), or
                                   # "shared": one parameter set per member, averaged across the
                                   # group through model_topic (see streamrnn.scaleout)
    store = "dir"                  # per-partition checkpoints: "dir" = checkpoint.path is a directory
                                   # every member reaches (DIR/<topic>/<partition>.ckpt), or "kafka" =
                                   # the compacted topic store_topic (no shared disk needed)
    store_topic = "<name>-checkpoints"
    model_topic = "<name>-model"   # shared mode: each member's latest parameters (compacted)
    publish_every = 1000           # shared mode: records learned between publishing and merging
    merge = "mean"                 # shared mode: "mean" or "records" (weighted by records learned)
    stale_seconds = 300.0          # shared mode: parameters published longer ago are ignored
    member = "..."                 # this member's name (default: source.instance_id, else host-pid)
    max_message_bytes = 67108864   # largest checkpoint (kafka store) or parameter message
    # Revoked partitions are saved to the store and released; assigned ones are loaded from it and
    # read from their saved offsets (from their beginning when they have no checkpoint). The
    # [checkpoint] cadence saves every partition with new records. source.session_timeout_ms bounds
    # how long a crashed member's partitions wait before moving; source.order defaults to "arrival"
    # (partitions are independent).

Guarantees: each record is applied to the model exactly once across crashes and restarts
(checkpoints hold the model and the next source positions together; the source is sought to
them on start), and every input gets an output at least once (outputs written after the last
checkpoint are written again, identically, after a restart).
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from streamrnn.connectors.codec import JSONDecodeError, loads

from . import checkpoint as ckpt
from .checkpoint import CheckpointError
from .forecast import NextRecordForecaster
from .model import Model
from .partitioned import PartitionedModel

log = logging.getLogger("streamrnn.daemon")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


# ---------------------------------------------------------------------------- config
_SECTIONS = {
    "source": {"type", "path", "follow", "speed", "bootstrap", "topic", "group", "client_id",
               "max_poll_records", "order", "instance_id", "session_timeout_ms"},
    "sink": {"type", "path", "bootstrap", "topic", "mode", "process"},
    "dead_letter": {"type", "path", "bootstrap", "topic", "mode"},
    "schema": {"features", "target", "key", "forecast"},
    "model": None,  # checked by Model itself
    "checkpoint": {"path", "every_records", "every_seconds", "keep"},
    "daemon": {"batch_size", "poll_timeout", "metrics_port", "log_every_seconds", "progress",
               "max_records", "max_record_bytes", "retry_attempts", "retry_backoff", "retry_backoff_max",
               "retry_give_up_seconds"},
    "group": {"name", "mode", "store", "store_topic", "model_topic", "publish_every", "merge",
              "stale_seconds", "member", "max_message_bytes"},
}
_SOURCE_TYPES = ("jsonl", "csv", "replay", "kafka")
_SINK_TYPES = ("jsonl", "csv", "kafka", "none")
_DEFAULTS = {
    "daemon": {"batch_size": 500, "poll_timeout": 0.5, "metrics_port": 0, "log_every_seconds": 10.0,
               "progress": True, "max_records": 0, "max_record_bytes": 1 << 20, "retry_attempts": 30,
               "retry_backoff": 0.5, "retry_backoff_max": 30.0, "retry_give_up_seconds": 600.0},
    "checkpoint": {"every_records": 1000, "every_seconds": 30.0},
}


def _need(cfg, section, key, types, what):
    if key not in cfg.get(section, {}):
        raise ConfigError(f"{section}.{key}: missing ({what})")
    value = cfg[section][key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{section}.{key}: expected {what}, got {value!r}")
    return value


def _resolve(base_dir, path):
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def validate_config(raw, base_dir=None):
    """Check a config dict and return a normalised copy (defaults filled, paths resolved)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a table")
    for section in raw:
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section (expected one of {', '.join(_SECTIONS)})")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table")
        allowed = _SECTIONS[section]
        if allowed is not None:
            for key in raw[section]:
                if key not in allowed:
                    raise ConfigError(f"{section}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})")
    cfg = {s: dict(raw.get(s, {})) for s in _SECTIONS}
    for s, d in _DEFAULTS.items():
        for k, v in d.items():
            cfg[s].setdefault(k, v)

    for section in ("source", "sink", "dead_letter"):
        if section == "source" and not raw.get("source"):
            raise ConfigError("source: missing section")
        if section != "source" and not raw.get(section):
            cfg[section] = {"type": "none"}
            continue
        types = _SOURCE_TYPES if section == "source" else _SINK_TYPES
        t = _need(cfg, section, "type", str, f"one of {', '.join(types)}")
        if t not in types:
            raise ConfigError(f"{section}.type: {t!r} is not one of {', '.join(types)}")
        if t in ("jsonl", "csv", "replay"):
            cfg[section]["path"] = _resolve(base_dir, _need(cfg, section, "path", str, "a file path"))
        elif t == "kafka":
            _need(cfg, section, "bootstrap", str, "a 'host:port' string")
            _need(cfg, section, "topic", str, "a topic name")
    if cfg["sink"].get("type") == "kafka":
        # kafka-python's send is pure Python: in a child process it runs beside the daemon
        cfg["sink"].setdefault("process", True)
        if not isinstance(cfg["sink"]["process"], bool):
            raise ConfigError(f"sink.process: expected true or false, got {cfg['sink']['process']!r}")
    elif "process" in cfg["sink"]:
        raise ConfigError("sink.process: only for type = \"kafka\"")
    if "follow" in cfg["source"] and not isinstance(cfg["source"]["follow"], bool):
        raise ConfigError(f"source.follow: expected true or false, got {cfg['source']['follow']!r}")
    if "speed" in cfg["source"]:
        sp = cfg["source"]["speed"]
        if isinstance(sp, bool) or not isinstance(sp, (int, float)) or not sp >= 0:
            raise ConfigError(f"source.speed: expected a number >= 0, got {sp!r}")
    if cfg["source"].get("order", "timestamp") not in ("timestamp", "arrival"):
        raise ConfigError(f"source.order: expected \"timestamp\" or \"arrival\", got {cfg['source']['order']!r}")
    if "instance_id" in cfg["source"]:
        _need(cfg, "source", "instance_id", str, "a string (static group membership id)")

    feats = _need(cfg, "schema", "features", list, "a non-empty list of field names")
    if not feats or not all(isinstance(f, str) and f for f in feats):
        raise ConfigError(f"schema.features: expected a non-empty list of field names, got {feats!r}")
    if len(set(feats)) != len(feats):
        raise ConfigError(f"schema.features: duplicate field names in {feats!r}")
    for k in ("target", "key"):
        if k in cfg["schema"] and not (isinstance(cfg["schema"][k], str) and cfg["schema"][k]):
            raise ConfigError(f"schema.{k}: expected a field name, got {cfg['schema'][k]!r}")

    forecast = cfg["schema"].setdefault("forecast", False)
    if not isinstance(forecast, bool):
        raise ConfigError(f"schema.forecast: expected true or false, got {forecast!r}")
    if forecast and "target" not in cfg["schema"]:
        raise ConfigError("schema.target: missing (forecast mode reads the target from the next record's "
                          "field of this name)")

    model = cfg["model"]
    model.setdefault("n_inputs", len(feats))
    if model["n_inputs"] != len(feats):
        raise ConfigError(f"model.n_inputs: {model['n_inputs']!r} differs from len(schema.features) = {len(feats)}")
    if "betas" in model and isinstance(model["betas"], list):
        model["betas"] = tuple(model["betas"])
    try:
        Model(**model)
    except TypeError as exc:
        raise ConfigError(f"model: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None

    cp = cfg["checkpoint"]
    if "path" in cp:
        cp["path"] = _resolve(base_dir, _need(cfg, "checkpoint", "path", str, "a file path"))
    for k in ("every_records",):
        v = cp[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"checkpoint.{k}: expected an integer >= 0, got {v!r}")
    v = cp["every_seconds"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ConfigError(f"checkpoint.every_seconds: expected a number >= 0, got {v!r}")

    d = cfg["daemon"]
    for k, lo in (("batch_size", 1), ("metrics_port", 0), ("max_records", 0), ("max_record_bytes", 1),
                  ("retry_attempts", 0)):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (k == "metrics_port" and v > 65535):
            raise ConfigError(f"daemon.{k}: expected an integer >= {lo}, got {v!r}")
    for k in ("poll_timeout", "log_every_seconds", "retry_backoff", "retry_backoff_max", "retry_give_up_seconds"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"daemon.{k}: expected a number >= 0, got {v!r}")
    if not isinstance(d["progress"], bool):
        raise ConfigError(f"daemon.progress: expected true or false, got {d['progress']!r}")
    if not d["retry_attempts"] and not d["retry_give_up_seconds"]:
        raise ConfigError("daemon.retry_attempts, daemon.retry_give_up_seconds: both 0 would retry forever; "
                          "bound at least one")
    if "group" in raw:
        _validate_group(cfg)
    else:
        cfg["group"] = None
    return cfg


_GROUP_DEFAULTS = {"mode": "independent", "store": "dir", "publish_every": 1000, "merge": "mean",
                   "stale_seconds": 300.0, "max_message_bytes": 64 << 20}


def _validate_group(cfg):
    """The [group] section (scale-out across a Kafka consumer group): defaults and checks."""
    from .partitioned import MODES
    g, src = cfg["group"], cfg["source"]
    for k, v in _GROUP_DEFAULTS.items():
        g.setdefault(k, v)
    if src["type"] != "kafka":
        raise ConfigError(f"group: scale-out needs source.type = \"kafka\", not {src['type']!r}")
    name = g.get("name", src.get("group", "streamrnn"))
    if not isinstance(name, str) or not name:
        raise ConfigError(f"group.name: expected a consumer group name, got {name!r}")
    if "group" in src and src["group"] != name:
        raise ConfigError(f"group.name: {name!r} differs from source.group = {src['group']!r}")
    g["name"] = src["group"] = name
    src.setdefault("order", "arrival")       # partitions are independent: no cross-partition merge
    for k, allowed in (("mode", MODES), ("store", ("dir", "kafka")), ("merge", ("mean", "records"))):
        if g[k] not in allowed:
            raise ConfigError(f"group.{k}: expected one of {', '.join(allowed)}, got {g[k]!r}")
    if g["store"] == "dir" and not cfg["checkpoint"].get("path"):
        raise ConfigError("checkpoint.path: missing (with group.store = \"dir\" it is the directory of "
                          "per-partition checkpoints, which every member must reach)")
    g.setdefault("store_topic", f"{name}-checkpoints")
    g.setdefault("model_topic", f"{name}-model")
    for k in ("store_topic", "model_topic", "member"):
        if k in g and not (isinstance(g[k], str) and g[k]):
            raise ConfigError(f"group.{k}: expected a non-empty string, got {g[k]!r}")
    for k, lo in (("publish_every", 1), ("max_message_bytes", 1024)):
        if isinstance(g[k], bool) or not isinstance(g[k], int) or g[k] < lo:
            raise ConfigError(f"group.{k}: expected an integer >= {lo}, got {g[k]!r}")
    v = g["stale_seconds"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"group.stale_seconds: expected a number > 0, got {v!r}")
    v = src.get("session_timeout_ms")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1000):
        raise ConfigError(f"source.session_timeout_ms: expected an integer >= 1000, got {v!r}")


def dump_config(cfg):
    """A config dict (tables of strings, numbers, booleans and lists) as TOML text."""
    lines = []
    for section, table in cfg.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def load_config(path, group=None):
    """Read and validate a TOML config; ``group`` (``streamrnn run --group NAME``) makes the daemon
    a member of that consumer group (the [group] section, created if absent)."""
    import tomllib
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if group is not None:
        if not isinstance(raw.get("group", {}), dict):
            raise ConfigError("group: expected a table")
        raw.setdefault("group", {})["name"] = group
        if isinstance(raw.get("source"), dict) and "group" in raw["source"]:
            raw["source"]["group"] = group            # the command line wins
    return validate_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


# ---------------------------------------------------------------------------- connectors
def make_source(section):
    t = section["type"]
    if t == "jsonl":
        from streamrnn.connectors.file import JsonLinesSource
        return JsonLinesSource(section["path"], follow=section.get("follow", False))
    if t == "csv":
        from streamrnn.connectors.file import CsvSource
        return CsvSource(section["path"], follow=section.get("follow", False))
    if t == "replay":
        from streamrnn.connectors.replay import ReplaySource
        return ReplaySource(section["path"], speed=section.get("speed", 0.0))
    from streamrnn.connectors.kafka import KafkaSource
    return KafkaSource(section["bootstrap"], section["topic"], group=section.get("group", "streamrnn"),
                       client_id=section.get("client_id", "streamrnn"),
                       max_poll_records=section.get("max_poll_records", 5000),
                       order=section.get("order", "timestamp"), instance_id=section.get("instance_id"),
                       session_timeout_ms=section.get("session_timeout_ms"))


def make_sink(section):
    t = section["type"]
    if t == "none":                 # discard: a list would grow for as long as the daemon runs
        from streamrnn.connectors.base import NullSink
        return NullSink()
    if t == "jsonl":
        from streamrnn.connectors.file import JsonLinesSink
        return JsonLinesSink(section["path"], mode=section.get("mode", "a"))
    if t == "csv":
        from streamrnn.connectors.file import CsvSink
        return CsvSink(section["path"], mode=section.get("mode", "a"))
    if section.get("process", False):
        from streamrnn.connectors.kafka import KafkaSinkProcess
        return KafkaSinkProcess(section["bootstrap"], section["topic"])
    from streamrnn.connectors.kafka import KafkaSink
    return KafkaSink(section["bootstrap"], section["topic"])


# ---------------------------------------------------------------------------- decoding
class BadRecord(ValueError):
    pass


def _number(name, v, max_abs=float("inf")):
    if isinstance(v, bool):
        raise BadRecord(f"field {name!r}: expected a number, got a boolean")
    if isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:                      # an integer beyond any double
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


class Decoder:
    """Turns a Record into (features, target row, key) or raises BadRecord with a reason."""

    def __init__(self, schema, model_config, max_record_bytes=1 << 20):
        self.max_record_bytes = max_record_bytes
        self.features = list(schema["features"])
        self.target = schema.get("target")
        self.key_field = schema.get("key")
        self.task = model_config.get("task", "regression")
        self.n_outputs = model_config.get("n_outputs", 1)
        self.width = self.n_outputs if self.task == "regression" else 1
        self.max_abs = float(np.finfo(model_config.get("dtype", "float64")).max)
        self._no_target = [math.nan] * self.width

    def decode(self, record):
        value = record.value
        if isinstance(value, (bytes, bytearray, str)):
            if len(value) > self.max_record_bytes:    # a str's length is a lower bound of its bytes
                raise BadRecord(f"record of {len(value)} {'bytes' if type(value) is not str else 'characters'} "
                                f"exceeds daemon.max_record_bytes = {self.max_record_bytes}")
            try:
                value = loads(value)               # bytes: UTF-8 is validated while parsing
            except JSONDecodeError as exc:
                raise BadRecord(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(value, dict):
            raise BadRecord(f"expected a JSON object (or CSV row of the header's width), got {type(value).__name__}")
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
        t = value.get(self.target) if self.target is not None else None
        if t is None or t == "":
            return x, self._no_target, self._key(record, value)
        if self.width == 1 and self.task == "regression" and type(t) is float and -top <= t <= top:
            return x, [t], self._key(record, value)
        return x, self._target(t), self._key(record, value)

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
        if key is not None and type(key) is not str and (isinstance(key, bool) or not isinstance(key, int)):
            raise BadRecord(f"key must be a string or an integer, got {type(key).__name__} {key!r}")
        return key


_DEAD_VALUE_CHARS = 1 << 16     # dead letters carry at most this much of the record (Kafka caps messages)


def _raw_text(value):
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:_DEAD_VALUE_CHARS * 4]).decode("utf-8", errors="replace")
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


# ---------------------------------------------------------------------------- checkpoints
def load_checkpoint(path, restore=None, allocate=None):
    """Newest usable checkpoint generation as (arrays, meta, used_path), or None when none exists.

    A generation that is truncated, corrupted, of another format version, not a daemon
    checkpoint, or refused by ``restore(arrays, meta, used_path)`` (which loads it and raises
    CheckpointError if it does not fit, e.g. another model configuration) is skipped with a
    warning and the previous one is tried. If generations exist but none is usable,
    CheckpointError names each one's problem; no file is changed. ``allocate`` is passed on to
    :func:`streamrnn.checkpoint.load` (where to read each array).
    """
    return first_usable(ckpt.generations(path), restore, lambda: allocate)


def first_usable(generations, restore=None, new_allocate=lambda: None, what=""):
    """The newest usable of ``generations`` ([(where, load(allocate) -> (arrays, meta))], newest
    first) as (arrays, meta, where), or None when there are none: the fallback of
    :func:`load_checkpoint`, for any store. ``new_allocate()`` gives each attempt its ``allocate``;
    ``what`` prefixes the error when none is usable."""
    errors = []
    for where, load in generations:
        try:
            arrays, meta = load(new_allocate())
            if "positions" not in meta or "model" not in meta:
                raise CheckpointError(f"{where}: not a daemon checkpoint (no positions)")
            if restore is not None:
                restore(arrays, meta, where)
        except CheckpointError as exc:
            log.warning("checkpoint %s unusable (%s); trying the previous generation", where, exc)
            errors.append(str(exc))
            continue
        return arrays, meta, where
    if errors:
        raise CheckpointError(f"{what}no usable checkpoint: " + "; ".join(errors))
    return None


def _set_aside(path):
    """Rename an unusable newest generation out of the way (kept for inspection), so that the next
    save does not rotate it over the good previous generation the daemon resumed from."""
    aside = f"{path}.unusable-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, aside)
    log.warning("checkpoint %s was unusable: kept as %s; resumed from %s.prev", path, aside, path)


def save_checkpoint(path, arrays, meta):
    """Write a new generation atomically, keeping the previous one as PATH.prev.

    A failed write (OSError, e.g. a full disk) leaves both existing generations as they were.
    """
    ckpt.save_newest(path, ckpt.pieces(arrays, meta))


# ---------------------------------------------------------------------------- metrics
class _Metrics:
    def __init__(self, port):
        self.enabled = False
        if not port:
            return
        try:
            import prometheus_client as pc
        except ImportError:
            log.warning("metrics_port set but prometheus_client is not installed; metrics off")
            return
        reg = pc.CollectorRegistry()
        self.records = pc.Counter("streamrnn_records", "records consumed", registry=reg)
        self.dead = pc.Counter("streamrnn_dead_letters", "records sent to the dead-letter sink", registry=reg)
        self.latency = pc.Histogram("streamrnn_batch_seconds", "batch processing latency", registry=reg,
                                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.rate = pc.Gauge("streamrnn_records_per_second", "records/s over the last log interval", registry=reg)
        self.loss = pc.Gauge("streamrnn_loss", "mean loss of the last batch", registry=reg)
        self.keys = pc.Gauge("streamrnn_keys", "keys holding state", registry=reg)
        self.lag = pc.Gauge("streamrnn_lag", "records behind the end of the source (when known)", registry=reg)
        self.ckpt_age = pc.Gauge("streamrnn_checkpoint_age_seconds", "seconds since the last checkpoint",
                                 registry=reg)
        self.skipped = pc.Counter("streamrnn_skipped_updates", "updates skipped: non-finite loss or gradient",
                                  registry=reg)
        self.rejected = pc.Counter("streamrnn_rejected_samples",
                                   "samples rejected: they would make the recurrent state non-finite", registry=reg)
        self.retries = pc.Counter("streamrnn_broker_retries", "failed attempts to reach the broker", registry=reg)
        self.ckpt_failures = pc.Counter("streamrnn_checkpoint_failures", "checkpoint writes that failed",
                                        registry=reg)
        self.server, self.thread = pc.start_http_server(port, addr="127.0.0.1", registry=reg)
        self.enabled = True

    def close(self):
        if self.enabled and hasattr(self, "server"):
            self.server.shutdown()


# ---------------------------------------------------------------------------- daemon
class Daemon:
    """Runs one configuration. ``source``/``sink``/``dead_letter`` may be injected (tests)."""

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        self.cfg = config
        self.decoder = Decoder(config["schema"], config["model"], config["daemon"]["max_record_bytes"])
        self.group = config.get("group")
        if self.group:         # a member of a consumer group: one model state per owned partition
            self.parts = PartitionedModel(config["model"], mode=self.group["mode"],
                                          forecast=config["schema"].get("forecast", False))
            self.model = self.forecaster = None
        else:
            self.model = Model(**config["model"])
            self.forecaster = NextRecordForecaster(self.model) if config["schema"].get("forecast") else None
        self.ckpt_path = config["checkpoint"].get("path")
        self.batch_size = config["daemon"]["batch_size"]
        self.poll_timeout = config["daemon"]["poll_timeout"]
        self.max_records = config["daemon"]["max_records"]
        self.progress = config["daemon"]["progress"] if progress is None else progress
        self.stats = {"records": 0, "applied": 0, "dead_letters": 0, "outputs": 0, "batches": 0,
                      "loss_sum": 0.0, "loss_count": 0, "checkpoints": 0, "resumed_from": None}
        self.latencies = deque(maxlen=100_000)   # the latest batches: bounded for months-long runs
        self._unwritten = ([], [])      # outputs and dead letters of the last batch, not yet written
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrnn-learn")
        self._stop = False
        self._dirty = False
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        self._last_durable = time.monotonic()   # last checkpoint known to be on disk
        self._ckpt_failures = 0                 # consecutive failed checkpoint writes
        self.retry = {k: config["daemon"][k] for k in ("retry_attempts", "retry_backoff", "retry_backoff_max",
                                                       "retry_give_up_seconds")}
        self.metrics = _Metrics(0)              # replaced by the real endpoint below
        if self.group:
            self._init_group(config)
            resume = None
        else:
            resume = load_checkpoint(self.ckpt_path, restore=self._restore,
                                     allocate=self.model.allocate_for_load) if self.ckpt_path else None
        if resume is not None and resume[2] != self.ckpt_path and os.path.exists(self.ckpt_path):
            _set_aside(self.ckpt_path)
        self.source = source if source is not None else self._retrying(
            "connect to the source", lambda: make_source(config["source"]))
        try:
            if resume is not None:
                arrays, meta, used = resume
                self.source.seek(meta["positions"])
                for k in ("records", "applied", "dead_letters", "loss_sum", "loss_count"):
                    self.stats[k] = meta.get("daemon", {}).get(k, self.stats[k])
                self.stats["resumed_from"] = used
                log.info("resumed from %s at %s", used, meta["positions"])
            self.sink = sink if sink is not None else self._retrying(
                "connect to the sink", lambda: make_sink(config["sink"]))
            self.dead = dead_letter if dead_letter is not None else self._retrying(
                "connect to the dead-letter sink", lambda: make_sink(config["dead_letter"]))
        except BaseException:
            self.source.close()
            raise
        if self.group:
            self.source.on_revoke = self._partitions_revoked
            self.source.on_assign = self._partitions_assigned
        elif hasattr(self.source, "on_revoke"):
            # Partitions leave: save state for their next owner. This runs inside kafka-python's
            # rebalance callback, where a blocking commit is refused (kafka-python 3 raises "Cannot
            # block on net.run() from the IO thread"); the checkpoint holds the positions anyway.
            self.source.on_revoke = lambda streams: self.checkpoint(commit_offsets=False)
        self.metrics = _Metrics(config["daemon"]["metrics_port"])
        self._counted = {k: 0 for k in ("skipped_nonfinite", "rejected_nonfinite_state")}
        self._count_model_stats()

    def _restore(self, arrays, meta, used):
        """Load one checkpoint generation into the model, or raise CheckpointError (nothing changed)."""
        try:
            self.model.load_state(arrays, meta["model"], source=used)
            if self.forecaster is not None:
                self.forecaster.load_state(arrays, meta, source=used)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (the config's [model] differs from the checkpoint's; "
                                  f"move the checkpoint away to start afresh)") from None

    # -- scale-out (a member of a consumer group; see streamrnn.scaleout)
    def _init_group(self, config):
        import socket
        from .scaleout import ParameterExchange, make_store
        g, src = self.group, config["source"]
        self.member = g.get("member") or src.get("instance_id") or f"{socket.gethostname()}-{os.getpid()}"
        src.setdefault("client_id", self.member)        # how `streamrnn status` names the member
        self.store = self._retrying("open the checkpoint store",
                                    lambda: make_store(g, config["checkpoint"], src["bootstrap"]))
        self.ckpt_path = repr(self.store)
        self._dirty_streams = set()      # partitions with records since their last save
        self._tokens = {}                # partition -> token of the checkpoint it was loaded from or saved as
        self._part_counts = {}           # partition -> [records, applied] over its whole history
        self._fatal = None               # an error raised inside a rebalance callback, re-raised after poll
        self._have_params = g["mode"] == "independent"
        self.exchange = None
        self._since_publish = 0
        if g["mode"] == "shared":
            from streamrnn.connectors.kafka import CompactedTopic
            topic = self._retrying("open the model topic", lambda: CompactedTopic(
                src["bootstrap"], g["model_topic"], max_message_bytes=g["max_message_bytes"], keep=1))
            self.exchange = ParameterExchange(topic, self.member, config["model"], merge=g["merge"],
                                              stale_seconds=g["stale_seconds"])
            theta = self._retrying("read the model topic", self.exchange.initial)
            if theta is not None:         # join the group's current parameters
                self.parts.set_parameters(theta)
                self._have_params = True
                log.info("starting from the average parameters of %d members", self.exchange.last_merged)

    def _partitions_assigned(self, streams):
        """Rebalance callback: load each newly assigned partition's state from the store; the
        positions to resume at (None: no checkpoint, start at the partition's beginning)."""
        positions = {}
        for stream in streams:
            self.parts.release(stream)
            self._dirty_streams.discard(stream)
            try:
                positions[stream] = self._load_partition(stream)
            except Exception as exc:  # noqa: BLE001 - raised again after poll, before any record is used
                log.error("partition %s: %s", stream, exc)
                self._fatal = self._fatal or exc
        log.info("member %s now owns %s", self.member, ", ".join(self.parts.streams) or "no partition")
        return positions

    def _load_partition(self, stream):
        self._tokens[stream] = self.store.newest_token(stream)

        def restore(arrays, meta, where):
            if stream not in meta["positions"]:
                raise CheckpointError(f"{where}: not a checkpoint of partition {stream}")
            try:
                self.parts.load(stream, arrays, meta, source=where, adopt_parameters=not self._have_params)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} (the config's [model] may differ from the group's)") from None

        generations = self.store.generations(stream)
        found = first_usable(generations, restore, lambda: self.parts.allocate_for_load(stream),
                             what=f"partition {stream}: ")
        if found is None:
            self._part_counts[stream] = [0, 0]
            self.parts.model(stream)      # held (fresh) from now on, so its first checkpoint is written
            return None
        _, meta, where = found
        self._have_params = True
        if where != generations[0][0]:    # resumed from an older generation: save soon over the unusable one
            self._dirty_streams.add(stream)
        counts = meta.get("daemon", {})
        self._part_counts[stream] = [counts.get("records", 0), counts.get("applied", 0)]
        pos = int(meta["positions"][stream])
        log.info("partition %s: resumed from %s at offset %d (%s keys, saved by %s)", stream, where, pos,
                 meta.get("n_keys"), meta.get("member"))
        return pos

    def _partitions_revoked(self, streams):
        """Rebalance callback: save the partitions that leave, then release them."""
        held = [s for s in streams if s in self.parts.streams]
        try:
            self._flush_sinks()
            self._save_partitions(held)
        except Exception as exc:  # noqa: BLE001 - the store keeps the last save: the next owner redoes the rest
            log.error("could not save partitions %s on revocation: %s; their next owner resumes from their "
                      "previous checkpoints", held, exc)
        for stream in held:
            self.parts.release(stream)
            self._dirty_streams.discard(stream)

    def _save_partitions(self, streams):
        positions = self.source.positions()
        for stream in streams:
            if stream not in self._dirty_streams or positions.get(stream) is None:
                continue
            arrays, meta = self.parts.state_arrays(stream)
            records, applied = self._part_counts.get(stream, (0, 0))
            meta.update(positions={stream: positions[stream]}, member=self.member, mode=self.group["mode"],
                        saved_at=time.time(), n_keys=len(self.parts.model(stream).keys),
                        daemon={"records": records, "applied": applied})
            token = self.store.save(stream, arrays, meta, expect=self._tokens.get(stream))
            if token is not None:
                self._tokens[stream] = token
            self._dirty_streams.discard(stream)

    def _exchange_parameters(self):
        """Shared mode, every ``publish_every`` learned records: publish and merge."""
        if self.exchange is None or self._since_publish < self.group["publish_every"]:
            return
        merged = self._retrying("exchange parameters", lambda: self.exchange.publish_and_merge(
            self.parts.parameters.copy(), self._since_publish))
        self.parts.set_parameters(merged)
        self._since_publish = 0
        self.stats["merges"] = self.stats.get("merges", 0) + 1

    def _n_keys(self):
        return self.parts.n_keys if self.group else len(self.model.keys)

    def _model_stats(self):
        return self.parts.stats if self.group else self.model.stats

    def _retrying(self, what, call):
        """``call()``, retried under the [daemon] retry policy while the broker is unreachable.

        Each :class:`~streamrnn.connectors.base.BrokerUnavailable` is logged ("broker unreachable, retrying in
        ...") and retried after an exponential backoff (``retry_backoff`` doubling up to
        ``retry_backoff_max``). After ``retry_attempts`` failed attempts or
        ``retry_give_up_seconds`` (whichever comes first; 0 = that bound is off), or on a stop
        request, it raises BrokerUnavailable saying so: nothing past the last checkpoint is
        saved or committed, so a restart resumes from it.
        """
        from streamrnn.connectors.base import BrokerUnavailable
        pol, attempt, first = self.retry, 0, None
        while True:
            try:
                result = call()
            except BrokerUnavailable as exc:
                now = time.monotonic()
                first = now if first is None else first
                attempt += 1
                waited = now - first
                if self.metrics.enabled:
                    self.metrics.retries.inc()
                if (pol["retry_attempts"] and attempt > pol["retry_attempts"]) or self._stop or (
                        pol["retry_give_up_seconds"] and waited >= pol["retry_give_up_seconds"]):
                    why = "stop requested" if self._stop else "retry policy exhausted"
                    msg = (f"{exc}; giving up after {attempt} attempts over {waited:.1f} s to {what} ({why}); "
                           f"nothing after the last checkpoint ({self.ckpt_path or 'none'}) was saved or committed")
                    log.error("%s", msg)
                    raise BrokerUnavailable(msg) from None
                delay = min(pol["retry_backoff_max"], pol["retry_backoff"] * 2.0 ** (attempt - 1))
                if pol["retry_give_up_seconds"]:
                    delay = min(delay, max(0.0, pol["retry_give_up_seconds"] - waited))
                log.warning("broker unreachable, retrying in %.1f s (attempt %d%s, %.1f s so far) to %s: %s",
                            delay, attempt, f"/{pol['retry_attempts']}" if pol["retry_attempts"] else "",
                            waited, what, exc)
                end = time.monotonic() + delay
                while not self._stop and time.monotonic() < end:
                    time.sleep(min(0.1, max(0.0, end - time.monotonic())))
                continue
            if attempt:
                log.warning("broker reachable again after %.1f s and %d attempts: %s succeeded",
                            time.monotonic() - first, attempt, what)
            return result

    def _count_model_stats(self):
        """Carry the model's counts of skipped updates and rejected samples into the metrics."""
        if not self.metrics.enabled:
            return
        stats = self._model_stats()
        for name, counter in (("skipped_nonfinite", self.metrics.skipped),
                              ("rejected_nonfinite_state", self.metrics.rejected)):
            delta = stats[name] - self._counted[name]
            if delta:
                counter.inc(delta)
                self._counted[name] = stats[name]

    # -- control
    def stop(self, *_):
        self._stop = True

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- one batch
    def process(self, records):
        t0 = time.perf_counter()
        dec = self.decoder.decode
        good, X, Y, keys, dead = [], [], [], [], []
        for r in records:
            try:
                x, y, k = dec(r)
            except BadRecord as exc:
                dead.append({"position": list(r.position), "reason": str(exc), "key": _jsonable_key(r.key),
                             "value": _raw_text(r.value)})
                continue
            good.append(r)
            X.append(x)
            Y.append(y)
            keys.append(k)
        outputs, streams = [], self._streams_of(good)
        if good:
            Xa = np.asarray(X, dtype=np.float64)     # the Model casts to its dtype and checks
            Ya = np.asarray(Y, dtype=np.float64)
            # The compiled step releases the GIL: it runs on the worker thread while this one
            # hands the previous batch's outputs to the sinks (kafka-python's Python-heavy send).
            learning = self._worker.submit(self._learn, Xa, Ya, keys, streams)
            self._write_unwritten()
            try:
                preds, losses = learning.result()
            except ValueError:
                # The model refused a row the decoder passed; step_many applied nothing, so
                # isolate the refused rows record by record and apply the rest in order.
                good, X, Y, keys, streams, preds, losses = self._apply_one_by_one(good, X, Y, keys, streams,
                                                                                  dead)
            preds = np.asarray(preds)
            losses = np.asarray(losses, dtype=np.float64)
            Yg = np.asarray(Y, dtype=np.float64)
            has_y = ~np.isnan(Yg[:, 0])
            # null where there is no target, the update was skipped as non-finite, or (forecast
            # mode) the key had no previous forecast
            known = has_y & np.isfinite(losses)
            for loss in losses[known].tolist():       # in record order: the sum is batch-independent
                self.stats["loss_sum"] += loss
            self.stats["loss_count"] += int(known.sum())
            loss_out = [loss if ok else None for loss, ok in zip(losses.tolist(), known.tolist())]
            if Yg.shape[1] == 1:
                target_out = [t if ok else None for t, ok in zip(Yg[:, 0].tolist(), has_y.tolist())]
            else:
                target_out = [t if ok else None for t, ok in zip(Yg.tolist(), has_y.tolist())]
            pred_out = preds[:, 0].tolist() if preds.shape[1] == 1 else preds.tolist()
            outputs = [{"position": list(r.position), "key": k, "prediction": p, "target": t, "loss": loss}
                       for r, k, p, t, loss in zip(good, keys, pred_out, target_out, loss_out)]
        self._write_unwritten()
        # written at the next batch (or flush, checkpoint), overlapping its learning step
        self._unwritten = (outputs, dead)
        n = len(records)
        if self.group:
            self._count_partitions(records, streams)
        self.stats["records"] += n
        self.stats["applied"] += len(good)
        self.stats["dead_letters"] += len(dead)
        self.stats["outputs"] += len(outputs)
        self.stats["batches"] += 1
        self._since_ckpt += n
        dt = time.perf_counter() - t0
        self.latencies.append(dt)
        if self.metrics.enabled:
            m = self.metrics
            m.records.inc(n)
            m.dead.inc(len(dead))
            m.latency.observe(dt)
            if outputs:
                ls = [o["loss"] for o in outputs if o["loss"] is not None]
                if ls:
                    m.loss.set(sum(ls) / len(ls))
            m.keys.set(self._n_keys())
            self._count_model_stats()
            lag = getattr(self.source, "lag", None)
            if callable(lag):
                try:
                    m.lag.set(lag())
                except Exception:  # noqa: BLE001 - lag is best effort
                    pass
        return outputs, dead

    def _streams_of(self, records):
        """Scale-out: the partition (``"topic:partition"``) of each record; None otherwise."""
        return [f"{r.position[0]}:{r.position[1]}" for r in records] if self.group else None

    def _count_partitions(self, records, applied_streams):
        """Records read and applied per partition; those with records need saving."""
        read, applied = Counter(self._streams_of(records)), Counter(applied_streams)
        for stream, n in read.items():
            c = self._part_counts.setdefault(stream, [0, 0])
            c[0] += n
            c[1] += applied[stream]
        self._dirty_streams.update(read)
        self._since_publish += len(applied_streams)

    def _learn(self, X, Y, keys, streams=None):
        """Predictions and losses of validated-by-the-model rows, in one pass (all or nothing)."""
        if self.group:
            return self.parts.step_many(X, Y, keys, streams)
        if self.forecaster is not None:
            return self.forecaster.process(X, Y, keys)
        return self.model.step_many(X, Y, keys, return_loss=True)

    def _apply_one_by_one(self, good, X, Y, keys, streams, dead):
        kept, preds, losses = [], [], []
        for i, r in enumerate(good):
            try:
                p, l = self._learn(np.asarray([X[i]]), np.asarray([Y[i]]), [keys[i]],
                                   None if streams is None else [streams[i]])
            except ValueError as exc:
                dead.append({"position": list(r.position), "reason": f"refused by the model: {exc}",
                             "key": _jsonable_key(r.key), "value": _raw_text(r.value)})
                continue
            kept.append(i)
            preds.append(p[0])
            losses.append(l[0])
        pick = lambda seq: [seq[i] for i in kept]  # noqa: E731
        n_out = self.parts.n_outputs if self.group else self.model.n_outputs
        return (pick(good), pick(X), pick(Y), pick(keys), None if streams is None else pick(streams),
                np.asarray(preds).reshape(-1, n_out), np.asarray(losses))

    # -- checkpoint
    def checkpoint(self, commit_offsets=True, final=False):
        """Flush the sinks, then save model and positions, then commit offsets; False if the save
        failed (see ``_checkpoint_failed``)."""
        self._flush_sinks()
        positions = self.source.positions()
        if self.group or self.ckpt_path:
            try:
                if self.group:
                    self._save_partitions(self.parts.streams)
                else:
                    save_checkpoint(self.ckpt_path, *self._checkpoint_contents(positions))
            except OSError as exc:
                self._checkpoint_failed(exc, final)
                return False
            self.stats["checkpoints"] += 1
            self._ckpt_failures = 0
            self._last_durable = time.monotonic()
        commit = getattr(self.source, "commit", None)
        if commit is not None and self.ckpt_path and commit_offsets:
            commit(positions)  # only after the checkpoint is durable
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        return True

    def _checkpoint_contents(self, positions):
        """(arrays, meta) of the single checkpoint: model, forecast state, positions, counts."""
        arrays, mmeta = self.model.state_arrays()
        daemon_stats = {k: self.stats[k] for k in ("records", "applied", "dead_letters", "loss_sum", "loss_count")}
        meta = {"model": mmeta, "positions": positions, "daemon": daemon_stats, "saved_at": time.time()}
        if self.forecaster is not None:
            f_arrays, f_meta = self.forecaster.state_arrays()
            arrays = {**arrays, **f_arrays}
            meta.update(f_meta)
        return arrays, meta

    def _checkpoint_failed(self, exc, final):
        """A checkpoint could not be written (disk full, I/O error): the previous generations are
        intact and no offset is committed past them. The daemon keeps going and tries again at
        the next cadence, for as long as the retry policy allows (``retry_attempts`` failures in a
        row, ``retry_give_up_seconds`` since the last durable checkpoint); then, or when this was
        the final checkpoint, it stops with CheckpointError (exit status 2)."""
        self._ckpt_failures += 1
        self._since_ckpt = 0                  # next attempt at the normal cadence
        self._last_ckpt = time.monotonic()
        if self.metrics.enabled:
            self.metrics.ckpt_failures.inc()
        unsaved = time.monotonic() - self._last_durable
        pol = self.retry
        msg = (f"cannot write checkpoint {self.ckpt_path}: {exc}; the previous generations are kept and no "
               f"offsets were committed past them ({self._ckpt_failures} failed in a row, last durable "
               f"checkpoint {unsaved:.1f} s ago)")
        if final or (pol["retry_attempts"] and self._ckpt_failures >= pol["retry_attempts"]) or (
                pol["retry_give_up_seconds"] and unsaved >= pol["retry_give_up_seconds"]):
            log.error("%s: stopping", msg)
            raise CheckpointError(msg) from exc
        log.error("%s: retrying at the next checkpoint", msg)

    def _due(self):
        c = self.cfg["checkpoint"]
        if c["every_records"] and self._since_ckpt >= c["every_records"]:
            return True
        return bool(c["every_seconds"]) and self._since_ckpt > 0 and \
            time.monotonic() - self._last_ckpt >= c["every_seconds"]

    # -- main loop
    def run(self):
        t_start = time.monotonic()
        bar = None
        total = getattr(self.source, "total", None)
        if self.progress and getattr(self.source, "follow", True) is False:
            try:
                from tqdm import tqdm
                from streamrnn.connectors.replay import count_lines
                path = getattr(self.source, "path", None)
                total = count_lines(path) if path else None
                start = self.source.positions().get(path, 0) if path else 0
                bar = tqdm(total=total, initial=start, unit="rec", file=sys.stderr, dynamic_ncols=True,
                           mininterval=0.5)
            except Exception:  # noqa: BLE001 - a progress bar is optional
                bar = None
        log_every = self.cfg["daemon"]["log_every_seconds"]
        last_log, last_count = time.monotonic(), self.stats["records"]
        try:
            while not self._stop:
                limit = self.batch_size
                if self.max_records:
                    limit = min(limit, self.max_records - self.stats["records"])
                    if limit <= 0:
                        break
                records = self._retrying("poll the source", lambda: self.source.poll(limit, self.poll_timeout))
                if self.group and self._fatal is not None:
                    raise self._fatal          # from a rebalance callback: before any record is used
                if records:
                    self.process(records)
                    if self.group:
                        self._exchange_parameters()
                    self._dirty = True
                    if bar is not None:
                        bar.update(len(records))
                elif getattr(self.source, "exhausted", False):
                    break
                elif self._dirty:
                    # idle: make outputs visible without waiting for a checkpoint
                    self._retrying("flush the outputs", self._flush_sinks)
                    self._dirty = False
                if self._due():
                    self._retrying("flush the outputs and checkpoint", self.checkpoint)
                now = time.monotonic()
                if self.metrics.enabled:
                    self.metrics.ckpt_age.set(now - self._last_ckpt)
                if log_every and now - last_log >= log_every:
                    rate = (self.stats["records"] - last_count) / (now - last_log)
                    if self.metrics.enabled:
                        self.metrics.rate.set(rate)
                    log.info("records=%d dead=%d rate=%.0f/s mean_loss=%s keys=%d",
                             self.stats["records"], self.stats["dead_letters"], rate,
                             self._mean_loss_str(), self._n_keys())
                    last_log, last_count = now, self.stats["records"]
            if self._since_ckpt or self._ckpt_failures or (
                    self.stats["checkpoints"] == 0 and self.stats["resumed_from"] is None):
                self._retrying("flush the outputs and checkpoint", lambda: self.checkpoint(final=True))
            else:
                self._retrying("flush the outputs", self._flush_sinks)
        finally:
            if bar is not None:
                bar.close()
            self.close()
        self.stats["elapsed"] = time.monotonic() - t_start
        return self.stats

    def _write_unwritten(self):
        outputs, dead = self._unwritten
        self._unwritten = ([], [])
        if outputs:
            self.sink.write(outputs)
        if dead:
            self.dead.write(dead)

    def _flush_sinks(self):
        self._write_unwritten()
        self.sink.flush()
        self.dead.flush()

    def _mean_loss_str(self):
        c = self.stats["loss_count"]
        return f"{self.stats['loss_sum'] / c:.6g}" if c else "n/a"

    def close(self):
        self._worker.shutdown()
        extra = (self.store, getattr(self.exchange, "topic", None)) if self.group else ()
        for obj in (self.sink, self.dead, self.source, *extra):
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as exc:  # noqa: BLE001 - close everything we can
                log.warning("closing %r: %s", obj, exc)
        self.metrics.close()

    def summary(self):
        s = self.stats
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        elapsed = s.get("elapsed", 0.0) or 1e-9
        lines = [
            "streamrnn daemon summary",
            f"  records read     {s['records']}",
            f"  applied to model {s['applied']}",
            f"  dead letters     {s['dead_letters']}",
            f"  outputs written  {s['outputs']} (this run)",
            f"  mean loss        {self._mean_loss_str()}",
            f"  keys with state  {self._n_keys()}",
            f"  model steps      {self._model_stats().get('steps')}, updates {self._model_stats().get('updates')}",
            f"  this run         {elapsed:.2f} s, batches {s['batches']}, p50/p99 batch latency "
            f"{np.percentile(lat, 50) * 1e3:.2f}/{np.percentile(lat, 99) * 1e3:.2f} ms",
            f"  checkpoint       {self.ckpt_path or '(none)'} ({s['checkpoints']} written"
            + (f", resumed from {s['resumed_from']}" if s["resumed_from"] else "") + ")",
        ]
        if self.group:
            lines.append(f"  group            {self.group['name']} as member {self.member} ({self.group['mode']} mode"
                         + (f", {self.stats.get('merges', 0)} parameter merges" if self.exchange else "") + ")")
        for name, sec in (("predictions", self.cfg["sink"]), ("dead letters", self.cfg["dead_letter"])):
            where = sec.get("path") or sec.get("topic")
            if where:
                lines.append(f"  {name:<16} {where}")
        return "\n".join(lines)


def _jsonable_key(k):
    if isinstance(k, (bytes, bytearray)):
        return k.decode("utf-8", errors="replace")
    if k is None or isinstance(k, (str, int, float)):
        return k
    return repr(k)


def run_config(cfg, install_signals=True, quiet=False):
    d = Daemon(cfg)
    if install_signals:
        d.install_signal_handlers()
    d.run()
    if not quiet:
        print(d.summary(), flush=True)
    return d
