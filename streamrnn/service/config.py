"""The daemon's configuration: a declarative schema, one validator per section, the reference page.

The schema (:data:`SCHEMA`) says, per section and key, the type, the default, the allowed values
or range and what the key means. It drives the generic checks (unknown keys, types, choices,
ranges, required keys) and generates ``docs/config.md`` (:func:`reference_markdown`); the small
per-section validators add the rules between keys. Every error names its key::

    >>> validate_config({"source": {"type": "ftp"}, "schema": {"features": ["a"]}})
    Traceback (most recent call last):
    ...
    streamrnn.service.config.ConfigError: source.type: expected one of jsonl, csv, replay, kafka, got 'ftp'
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from streamrnn.memory import MemoryLimitError, check_memory, parse_size
from streamrnn.model import Model
from streamrnn.partitioned import MODES


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


NO_DEFAULT = object()  # a key without a default: required, or absent unless given
DAY = 86400.0  # the longest duration a [checkpoint] or [daemon] cadence may have (finite: no endless wait)

SOURCE_TYPES = ("jsonl", "csv", "replay", "kafka")
SINK_TYPES = ("jsonl", "csv", "kafka", "none")
FILE_TYPES = ("jsonl", "csv", "replay")
GUARANTEES = ("at-least-once", "exactly-once")


@dataclass(frozen=True)
class Key:
    """One key of a section: how it is checked and how the reference describes it.

    ``type`` is one of "string", "boolean", "integer", "number" (finite), "path" (a string; relative
    paths resolve against the config file's folder), "size" (bytes: an integer, or a string such as
    "8GiB") and "list of strings". A ``required`` key with
    ``used_by`` source/sink types is required, and checked, only for those types; any other key is
    checked whenever present. ``fill``: the validator writes the default into the normalised config
    (otherwise the reader of the key applies it). ``checked = False``: passed on as given.
    """

    name: str
    type: str
    meaning: str
    default: Any = NO_DEFAULT
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False  # the minimum itself is excluded
    nonempty: bool = False  # strings: "" is refused
    required: bool = False
    used_by: tuple = ()  # the source/sink types that read the key (empty: every type)
    fill: bool = False
    checked: bool = True
    what: str = ""  # the expected value, as errors say it (default: derived from the rest)
    default_text: str = ""  # the default as the reference shows it, when not a plain value

    def expected(self) -> str:
        """What a valid value is, as the error messages say it."""
        if self.what:
            return self.what
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.type == "boolean":
            return "true or false"
        if self.type == "size":
            return 'a size in bytes (an integer, or a string such as "8GiB")'
        kind = "an integer" if self.type == "integer" else "a number"
        if self.maximum is not None:
            return f"{kind} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{kind} {'>' if self.above else '>='} {self.minimum:g}"
        return {
            "string": "a non-empty string" if self.nonempty else "a string",
            "path": "a file path",
            "list of strings": "a list of strings",
        }.get(self.type, kind)

    def valid(self, value) -> bool:
        """Whether ``value`` has this key's type and lies in its choices or range."""
        if self.type == "boolean":
            return isinstance(value, bool)
        if self.type == "size":
            try:
                parse_size(value)
            except ValueError:
                return False
            return True
        if self.type in ("string", "path"):
            ok = isinstance(value, str) and (bool(value) or not self.nonempty)
        elif self.type == "list of strings":
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)
        elif self.type in ("integer", "number"):
            kinds = int if self.type == "integer" else (int, float)
            ok = isinstance(value, kinds) and not isinstance(value, bool) and self._in_range(value)
        else:
            raise AssertionError(f"unknown key type {self.type!r}")
        return ok and (not self.choices or value in self.choices)

    def _in_range(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # no count of records or seconds (inf: a wait without end)
        low = self.minimum is None or (value > self.minimum if self.above else value >= self.minimum)
        return low and (self.maximum is None or value <= self.maximum)

    def reference_default(self) -> str:
        """The key's default as the reference page shows it: its text, ``required``, ``(none)`` or the JSON value."""
        if self.default_text:
            return self.default_text
        if self.default is NO_DEFAULT:
            return "required" if self.required else "(none)"
        return f"`{json.dumps(self.default)}`"


@dataclass(frozen=True)
class Section:
    name: str
    meaning: str
    keys: tuple[Key, ...]
    notes: str = ""  # longer explanations for the reference page
    open_keys: bool = False  # [model]: keyword arguments checked by Model itself

    def key(self, name: str) -> Key:
        """The key ``name`` of this section."""
        return next(k for k in self.keys if k.name == name)

    def defaults(self) -> dict:
        """The section's defaults (for readers of keys whose defaults are not filled in)."""
        return {k.name: k.default for k in self.keys if k.default is not NO_DEFAULT}


# ---------------------------------------------------------------------------- the schema
def _endpoint_keys(types: tuple, file_types: tuple, what: str) -> tuple[Key, ...]:
    """The keys shared by the source, sink and dead-letter sections: where records come from or go."""
    return (
        Key("type", "string", f"where {what}", choices=types, required=True),
        Key(
            "path",
            "path",
            "the file (relative paths resolve against the config file's folder)",
            required=True,
            used_by=file_types,
        ),
        Key(
            "bootstrap",
            "string",
            "the Kafka bootstrap server",
            required=True,
            used_by=("kafka",),
            what="a 'host:port' string",
        ),
        Key("topic", "string", "the Kafka topic", required=True, used_by=("kafka",), what="a topic name"),
    )


_SINK_MODE = Key(
    "mode",
    "string",
    '"a": append to the file; "w": empty it when the daemon starts afresh (no checkpoint to resume '
    "from); a daemon that resumes from a checkpoint always appends, so outputs are never erased "
    "across a restart",
    default="a",
    choices=("a", "w"),
    used_by=("jsonl", "csv"),
)

SOURCE = Section(
    "source",
    "Where the records come from (required).",
    _endpoint_keys(SOURCE_TYPES, FILE_TYPES, "records are read")
    + (
        Key(
            "follow",
            "boolean",
            "keep reading a growing file, following its name as `tail -F` does: when the file is "
            "rotated (renamed, and a new one created at the path) the old one is read to its end and "
            "the new one from its start; when it is truncated in place it is read again from its "
            "start; positions (and the checkpoint, written at once) then refer to the new file",
            default=False,
            used_by=("jsonl", "csv"),
        ),
        Key(
            "speed",
            "number",
            "0 = as fast as possible, else the recorded pace times speed",
            default=0.0,
            minimum=0,
            maximum=1e6,
            used_by=("replay",),
        ),
        Key(
            "group",
            "string",
            "the Kafka consumer group (in a [group], equal to group.name)",
            default="streamrnn",
            used_by=("kafka",),
            checked=False,
        ),
        Key(
            "client_id",
            "string",
            "the Kafka client id (in a [group]: the member's name)",
            default="streamrnn",
            used_by=("kafka",),
            checked=False,
        ),
        Key(
            "max_poll_records",
            "integer",
            "most records fetched by one poll",
            default=5000,
            used_by=("kafka",),
            checked=False,
        ),
        Key(
            "order",
            "string",
            '"timestamp": merge partitions by (timestamp, partition, offset), so that a '
            'restart replays the same order; "arrival": as fetched',
            default="timestamp",
            choices=("timestamp", "arrival"),
            used_by=("kafka",),
            default_text='`"timestamp"` (`"arrival"` in a [group])',
        ),
        Key(
            "instance_id",
            "string",
            "static group membership: a restarted daemon gets its partitions back at "
            "once instead of after the session timeout",
            used_by=("kafka",),
            what="a string (static group membership id)",
        ),
        Key(
            "session_timeout_ms",
            "integer",
            "in a [group]: how long a crashed member's partitions wait before moving (at least 1000)",
            used_by=("kafka",),
            default_text="kafka-python's",
            checked=False,
        ),
    ),
    notes="""\
With `order = "timestamp"` the source waits for partitions that have records on the broker: a
restart replays the same order (bit-identical results) for records that were on the broker when
first read; live records reaching a caught-up partition merge as they arrive.

A file source is identified by its canonical path and its contents, never by the spelling of its
path: the checkpoint holds, beside the next line, the byte offset, the device and inode, and
hashes of the bytes before that offset. A restart resumes only in that file (under any spelling
of its path, or moved elsewhere with the same contents); a checkpoint of another file, or of one
rewritten or truncated since, is refused with exit status 2 instead of reading it again from the
start (which would apply records twice). Every read is bounded by daemon.max_record_bytes, and a
UTF-8 byte-order mark at the start of a file is dropped. CSV is RFC 4180 (a quoted field may hold
newlines); a row of another width than the header's is a dead letter, and a header lacking a
column the [schema] names (feature, target or key) stops the daemon at start with status 2.
With `speed` > 0 a replay waits in steps of at most 0.5 s, so a stop request is honoured even
across a long recorded gap.""",
)

SINK = Section(
    "sink",
    "Where the predictions go (default: discarded).",
    _endpoint_keys(SINK_TYPES, ("jsonl", "csv"), "the predictions are written")
    + (
        _SINK_MODE,
        Key(
            "process",
            "boolean",
            "produce from a child process (kafka-python's send is pure Python; there it "
            "runs on another core); false = in the daemon",
            default=True,
            used_by=("kafka",),
            fill=True,
        ),
    ),
)

DEAD_LETTER = Section(
    "dead_letter",
    "Records that cannot be used, with the reason and their position (default: discarded).",
    _endpoint_keys(SINK_TYPES, ("jsonl", "csv"), "the dead letters are written") + (_SINK_MODE,),
)

RECORD_FIELDS = Section(
    "schema",
    "Which fields of a record the model reads.",
    (
        Key(
            "features",
            "list of strings",
            "fields of the record's JSON object (or CSV columns), in input order",
            required=True,
            what="a non-empty list of field names",
        ),
        Key(
            "target",
            "string",
            "the target field; a missing or null target means predict only",
            nonempty=True,
            what="a field name",
        ),
        Key(
            "key",
            "string",
            "the field holding the per-entity key (a string or an integer); when absent, the "
            "source's record key (the Kafka key) is used",
            nonempty=True,
            what="a field name",
        ),
        Key(
            "reset",
            "string",
            "the field that marks a record starting a new sequence of its key (a session, a trip, a "
            'batch): when truthy (true, a nonzero number, "true"/"1"/"yes") the key\'s state is '
            "zeroed before the record, as `Model.step_many(resets=...)`; absent: no sequence boundaries",
            nonempty=True,
            what="a field name",
        ),
        Key(
            "forecast",
            "boolean",
            "the target of a record is the `target` field of the next record of the same key (streamrnn.forecast)",
            default=False,
            fill=True,
        ),
    ),
    notes="""\
With `forecast = true` each output carries the forecast for the key's next record, and its
target and loss are those of the key's previous forecast, which this record resolved.""",
)

MODEL = Section(
    "model",
    "Keyword arguments of `streamrnn.Model` (cell, n_hidden, task, learner, optimizer, "
    "lr, ...), checked by Model itself.",
    (
        Key(
            "n_inputs",
            "integer",
            "the model's input width; must equal len(schema.features)",
            default_text="len(schema.features)",
            checked=False,
        ),
        Key(
            "standardize",
            "boolean",
            "online winsorised standardisation of the inputs and of regression targets "
            "inside the model (predictions and losses stay in the target's units); checkpointed with the model",
            default=True,
        ),
        Key(
            "target_lags",
            "integer",
            "target feedback (NARX): each key's last k targets (a label one-hot for "
            "classification) are appended to its inputs, with flags saying which were observed; 0 = off",
            default=0,
            minimum=0,
        ),
        Key(
            "baseline",
            "string",
            '"last": the network predicts the change from each key\'s last target '
            "(regression; needs standardize = true and target_lags >= 1); absent: it predicts the level",
            choices=("last",),
            default_text="absent",
        ),
    ),
    notes="""\
Any other keyword of `streamrnn.Model` may be given here too; Model checks it. The summary prints
the persistence baseline's loss (regression: each key's last target as the prediction, the same
loss, on the same records) beside the model's, so you see at once whether the model learned
anything.""",
    open_keys=True,
)

CHECKPOINT = Section(
    "checkpoint",
    "Model, per-key state and source positions, saved together.",
    (
        Key(
            "path",
            "path",
            'the checkpoint file (in a [group] with store = "dir": the directory of '
            "per-partition checkpoints); absent = no checkpoints",
        ),
        Key("every_records", "integer", "records between checkpoints (0 = off)", default=1000, minimum=0, fill=True),
        Key(
            "every_seconds",
            "number",
            "seconds between checkpoints, when records arrived (0 = off)",
            default=30.0,
            minimum=0,
            maximum=DAY,
            fill=True,
        ),
        Key(
            "keep",
            "integer",
            "generations kept: the newest and the previous one (PATH.prev); only 2 is accepted",
            default=2,
            choices=(2,),
            what="2 (the newest and the previous generation are kept)",
        ),
        Key(
            "topic",
            "string",
            'processing_guarantee = "exactly-once": the compacted topic holding the checkpoints, '
            "written in the same Kafka transaction as the outputs (in a [group]: every member's "
            "per-partition checkpoints)",
            nonempty=True,
            default_text='`"<source.group>-checkpoints"` (in a [group]: group.store_topic)',
        ),
        Key(
            "chunk_bytes",
            "integer",
            'processing_guarantee = "exactly-once": most checkpoint bytes per message of the '
            "checkpoint topic (a larger state spans several messages of one transaction)",
            default=512 * 1024,
            minimum=1024,
            maximum=8 << 20,
        ),
    ),
    notes="""\
The previous generation is kept as PATH.prev. An unusable newest one (corrupt, or of another
[model]) is renamed PATH.unusable-TIME and the daemon resumes from PATH.prev.

A checkpoint is trusted data: whoever can write the checkpoint's directory decides the model the
daemon resumes. Every checkpoint read is checked before anything is allocated for it (its
structure, the shapes against [model], sizes against the file's size, unique keys within
max_keys, finite parameters, integer positions); one that fails is unusable as above. Where
the directory is shared, set the environment variable `STREAMRNN_CHECKPOINT_KEY` to a secret:
checkpoints are then signed (HMAC-SHA256) and a file without that signature is unusable.

A single daemon holds an exclusive lock (`fcntl.flock`) on PATH.lock for its life: a second
daemon on the same checkpoint refuses to start. Paths that collide (the checkpoint, the
source, the sink and the dead-letter file: the same file under any spelling) are refused at
start.""",
)

DAEMON = Section(
    "daemon",
    "The loop: batching, polling, logging, limits and the retry policy.",
    (
        Key("batch_size", "integer", "most records per batch (one compiled step)", default=500, minimum=1, fill=True),
        Key(
            "poll_timeout",
            "number",
            "seconds a poll waits for records (a stop request is honoured within 0.5 s whatever this is)",
            default=0.5,
            minimum=0,
            maximum=60,
            fill=True,
        ),
        Key(
            "metrics_port",
            "integer",
            "Prometheus endpoint on 127.0.0.1 (0 = none; needs streamrnn[metrics])",
            default=0,
            minimum=0,
            maximum=65535,
            fill=True,
        ),
        Key(
            "log_every_seconds",
            "number",
            "seconds between progress log lines (0 = none)",
            default=10.0,
            minimum=0,
            maximum=DAY,
            fill=True,
        ),
        Key("progress", "boolean", "a progress bar when reading a finite file", default=True, fill=True),
        Key("max_records", "integer", "stop after this many records (0 = no limit)", default=0, minimum=0, fill=True),
        Key(
            "max_memory",
            "size",
            "most memory the model may need, as estimated from [model] before anything is allocated "
            "(parameters, optimizer state, the learner's workspace, and max_keys keys' state); a larger "
            "model is refused at start; 0 = the machine's memory (which always bounds it)",
            default=0,
            fill=True,
        ),
        Key(
            "max_record_bytes",
            "integer",
            "larger records go to the dead-letter sink unparsed; it also bounds every read of a file "
            "source (a longer line is skipped to its end in bounded chunks, never held in memory)",
            default=1 << 20,
            minimum=1,
            fill=True,
        ),
        Key(
            "max_key_bytes",
            "integer",
            "a record whose key is longer (in UTF-8) goes to the dead-letter sink (keys are kept "
            "in memory and in every checkpoint)",
            default=1024,
            minimum=1,
            fill=True,
        ),
        Key(
            "retry_attempts",
            "integer",
            "give up after this many failures in a row (0 = that bound off)",
            default=30,
            minimum=0,
            fill=True,
        ),
        Key(
            "retry_backoff",
            "number",
            "seconds before the first retry, doubling each time ...",
            default=0.5,
            minimum=0,
            maximum=3600,
            fill=True,
        ),
        Key("retry_backoff_max", "number", "... up to this", default=30.0, minimum=0, maximum=3600, fill=True),
        Key(
            "processing_guarantee",
            "string",
            '"at-least-once": every record is applied once, every input gets an output at least once '
            '(after a crash, the outputs since the last checkpoint again); "exactly-once": outputs, dead '
            "letters, checkpoint and offsets commit in one Kafka transaction per checkpoint interval, so a "
            "read_committed consumer sees each output once (needs Kafka source and sink)",
            default="at-least-once",
            choices=GUARANTEES,
        ),
        Key(
            "transactional_id",
            "string",
            "exactly-once: the producer's transactional id, stable across restarts (a restarted or "
            "zombie daemon with the same id is fenced); in a [group], a member's is this, a dash "
            "and the member's name",
            nonempty=True,
            default_text='`"streamrnn-<source.group>-<source.topic>"`',
        ),
        Key(
            "transaction_timeout_seconds",
            "number",
            "exactly-once: the broker aborts a transaction open longer than this (more than "
            "checkpoint.every_seconds; at most the broker's transaction.max.timeout.ms)",
            default=60.0,
            minimum=1,
            maximum=900,
        ),
        Key(
            "retry_give_up_seconds",
            "number",
            "give up after retrying this long (0 = that bound off; not both bounds off)",
            default=600.0,
            minimum=0,
            maximum=7 * DAY,
            fill=True,
        ),
    ),
    notes="""\
The retry policy applies while the Kafka broker is unreachable (at start, on poll, on flushing
outputs): the daemon logs "broker unreachable, retrying in ..." and retries with exponential
backoff; past the bounds it exits with status 2 and the last checkpoint intact (nothing later
saved or committed). The same bounds apply to checkpoint writes that fail (disk full, I/O
error): the daemon logs the error, keeps both previous generations, commits no offsets past
them, keeps running and tries again at the next checkpoint; past the bounds (or if the final
checkpoint fails) it stops with status 2.""",
)

GROUP = Section(
    "group",
    "Scale-out: this daemon is one member of a Kafka consumer group (absent = a single daemon).",
    (
        Key(
            "name",
            "string",
            "the consumer group (= source.group; `streamrnn run --group NAME` sets it); Kafka "
            "splits the topic's partitions among the members",
            nonempty=True,
            what="a consumer group name",
            default_text='source.group, else `"streamrnn"`',
        ),
        Key(
            "mode",
            "string",
            '"independent": one model per partition (bit-identical to one daemon reading the '
            'whole topic); "shared": one parameter set per member, averaged across the group through '
            "model_topic",
            default="independent",
            choices=MODES,
            fill=True,
        ),
        Key(
            "store",
            "string",
            'per-partition checkpoints: "dir" = checkpoint.path is a directory every member '
            'reaches (`DIR/<topic>/<partition>.ckpt`); "kafka" = the compacted topic store_topic',
            default="dir",
            choices=("dir", "kafka"),
            fill=True,
        ),
        Key(
            "store_topic",
            "string",
            "the compacted topic of the kafka store",
            nonempty=True,
            default_text='`"<name>-checkpoints"`',
        ),
        Key(
            "model_topic",
            "string",
            "shared mode: each member's latest parameters (compacted)",
            nonempty=True,
            default_text='`"<name>-model"`',
        ),
        Key(
            "publish_every",
            "integer",
            "shared mode: records learned between publishing and merging",
            default=1000,
            minimum=1,
            fill=True,
        ),
        Key(
            "merge",
            "string",
            'shared mode: "mean", or "records" (weighted by records learned)',
            default="mean",
            choices=("mean", "records"),
            fill=True,
        ),
        Key(
            "stale_seconds",
            "number",
            "shared mode: parameters published longer ago are ignored",
            default=300.0,
            minimum=0,
            maximum=7 * DAY,
            above=True,
            fill=True,
        ),
        Key("member", "string", "this member's name", nonempty=True, default_text="source.instance_id, else host-pid"),
        Key(
            "max_message_bytes",
            "integer",
            "largest checkpoint (kafka store) or parameter message",
            default=64 << 20,
            minimum=1024,
            fill=True,
        ),
    ),
    notes="""\
Revoked partitions are saved to the store and released; assigned ones are loaded from it and
read from their saved offsets (from their beginning when they have no checkpoint). The
[checkpoint] cadence saves every partition with new records. source.order defaults to
"arrival" (partitions are independent). With daemon.processing_guarantee = "exactly-once": mode
"independent", store "kafka" (each member writes its partitions' checkpoints in its transactions,
to checkpoint.topic) and a member name stable across restarts (member, or source.instance_id).""",
)


# ---------------------------------------------------------------------------- generic checks
def _key_error(section: str, key: Key, value) -> ConfigError:
    return ConfigError(f"{section}.{key.name}: expected {key.expected()}, got {value!r}")


def check_key(section: str, table: dict, key: Key) -> None:
    """One key of ``table`` (the ``section`` of a config): present if required, valid if present."""
    if key.name not in table:
        if key.required:
            raise ConfigError(f"{section}.{key.name}: missing ({key.expected()})")
    elif key.checked and not key.valid(table[key.name]):
        raise _key_error(section, key, table[key.name])


def check_keys(cfg: dict, section: Section, endpoint_type: str | None = None) -> None:
    """The schema's checks of one section of ``cfg``; keys required only by other source/sink types
    than ``endpoint_type`` are skipped (passed on as given)."""
    for key in section.keys:
        if not (key.required and key.used_by and endpoint_type not in key.used_by):
            check_key(section.name, cfg[section.name], key)


def fill_defaults(table: dict, section: Section) -> None:
    """Set, in ``table``, the default of every key of ``section`` that is filled in when absent."""
    for key in section.keys:
        if key.fill:
            table.setdefault(key.name, key.default)


def _resolve(base_dir, path):
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.join(base_dir, path)


def _resolve_path(table: dict, base_dir) -> None:
    if "path" in table:
        table["path"] = _resolve(base_dir, table["path"])


# ---------------------------------------------------------------------------- per-section rules
def _validate_source(cfg, raw, base_dir):
    if not raw.get("source"):
        raise ConfigError("source: missing section")
    src = cfg["source"]
    check_keys(cfg, SOURCE, src.get("type"))
    if src["type"] in FILE_TYPES:
        _resolve_path(src, base_dir)


def _validate_sink(section):
    def validate(cfg, raw, base_dir):
        if not raw.get(section.name):
            cfg[section.name] = {"type": "none"}  # discarded
            return
        table = cfg[section.name]
        check_key(section.name, table, section.key("type"))  # the type decides which keys apply
        if "process" in table and table["type"] != "kafka":
            raise ConfigError(f'{section.name}.process: only for type = "kafka"')
        if table["type"] == "kafka":
            fill_defaults(table, section)
        check_keys(cfg, section, table["type"])
        if table["type"] in ("jsonl", "csv"):
            _resolve_path(table, base_dir)

    return validate


def _validate_schema(cfg, raw, base_dir):
    schema = cfg["schema"]
    check_keys(cfg, RECORD_FIELDS)
    feats = schema["features"]
    if len(set(feats)) != len(feats):
        raise ConfigError(f"schema.features: duplicate field names in {feats!r}")
    fill_defaults(schema, RECORD_FIELDS)
    if schema["forecast"] and "target" not in schema:
        raise ConfigError(
            "schema.target: missing (forecast mode reads the target from the next record's field of this name)"
        )
    if schema["forecast"] and "reset" in schema:
        raise ConfigError("schema.reset: not available in forecast mode (a forecast spans two records of a key)")


def _validate_model(cfg, raw, base_dir):
    model, n_features = cfg["model"], len(cfg["schema"]["features"])
    check_keys(cfg, MODEL)  # the keys the schema describes; Model checks the rest
    model.setdefault("n_inputs", n_features)
    if model["n_inputs"] != n_features:
        raise ConfigError(f"model.n_inputs: {model['n_inputs']!r} differs from len(schema.features) = {n_features}")
    if "betas" in model and isinstance(model["betas"], list):
        model["betas"] = tuple(model["betas"])  # TOML has arrays, Model takes a tuple
    # the memory the model needs, before Model() allocates any of it (a bound of daemon.max_memory)
    daemon = cfg["daemon"]
    check_key("daemon", daemon, DAEMON.key("max_memory"))
    try:
        check_memory(model, limit=parse_size(daemon.get("max_memory", 0)), what="the model")
    except MemoryLimitError as exc:
        raise ConfigError(f"model: {exc}") from None
    try:
        Model(**model)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None


def _validate_checkpoint(cfg, raw, base_dir):
    fill_defaults(cfg["checkpoint"], CHECKPOINT)
    check_keys(cfg, CHECKPOINT)
    _resolve_path(cfg["checkpoint"], base_dir)


def _validate_daemon(cfg, raw, base_dir):
    d = cfg["daemon"]
    fill_defaults(d, DAEMON)
    check_keys(cfg, DAEMON)
    if not d["retry_attempts"] and not d["retry_give_up_seconds"]:
        raise ConfigError(
            "daemon.retry_attempts, daemon.retry_give_up_seconds: both 0 would retry forever; bound at least one"
        )


def _validate_group(cfg, raw, base_dir):
    """Scale-out across a Kafka consumer group: the member reads its partitions from a kafka source."""
    if "group" not in raw:
        cfg["group"] = None
        return
    g, src = cfg["group"], cfg["source"]
    fill_defaults(g, GROUP)
    if src["type"] != "kafka":
        raise ConfigError(f'group: scale-out needs source.type = "kafka", not {src["type"]!r}')
    name = g.get("name", src.get("group", "streamrnn"))
    if not GROUP.key("name").valid(name):
        raise _key_error("group", GROUP.key("name"), name)
    if "group" in src and src["group"] != name:
        raise ConfigError(f"group.name: {name!r} differs from source.group = {src['group']!r}")
    g["name"] = src["group"] = name
    src.setdefault("order", "arrival")  # partitions are independent: no cross-partition merge
    check_keys(cfg, GROUP)
    eos = cfg["daemon"].get("processing_guarantee") == "exactly-once"  # its own rules: _validate_guarantee
    if g["store"] == "dir" and not cfg["checkpoint"].get("path") and not eos:
        raise ConfigError(
            'checkpoint.path: missing (with group.store = "dir" it is the directory of '
            "per-partition checkpoints, which every member must reach)"
        )
    g.setdefault("store_topic", f"{name}-checkpoints")
    g.setdefault("model_topic", f"{name}-model")
    timeout = Key("session_timeout_ms", "integer", "", minimum=1000)
    if src.get("session_timeout_ms") is not None and not timeout.valid(src["session_timeout_ms"]):
        raise _key_error("source", timeout, src["session_timeout_ms"])


def _validate_guarantee(cfg):
    """processing_guarantee = "exactly-once": Kafka in and out (dead letters too, or none), the
    checkpoint in the transaction (a topic, not checkpoint.path), a commit within the timeout."""
    d, src, ck = cfg["daemon"], cfg["source"], cfg["checkpoint"]
    if d.get("processing_guarantee", "at-least-once") != "exactly-once":
        for name in ("transactional_id", "transaction_timeout_seconds"):
            if name in d:
                raise ConfigError(f'daemon.{name}: only with daemon.processing_guarantee = "exactly-once"')
        for name in ("topic", "chunk_bytes"):
            if name in ck:
                raise ConfigError(f'checkpoint.{name}: only with daemon.processing_guarantee = "exactly-once"')
        return
    eos = 'daemon.processing_guarantee: "exactly-once"'
    if src["type"] != "kafka":
        raise ConfigError(
            f'{eos} needs source.type = "kafka" (a transaction commits Kafka offsets), not {src["type"]!r}'
        )
    if cfg["sink"]["type"] != "kafka":
        raise ConfigError(
            f'{eos} needs sink.type = "kafka" (outputs are written in the transaction), not {cfg["sink"]["type"]!r}'
        )
    if cfg["dead_letter"]["type"] not in ("kafka", "none"):
        raise ConfigError(
            f'{eos} needs dead_letter.type = "kafka" or "none" (dead letters are written in the transaction), '
            f"not {cfg['dead_letter']['type']!r}"
        )
    g = cfg.get("group")
    if g:
        if g["mode"] != "independent":
            raise ConfigError(
                f'group.mode: {eos} needs "independent" (in "shared" mode parameters reach the other members '
                f"outside the transactions); got {g['mode']!r}"
            )
        if g["store"] != "kafka":
            raise ConfigError(
                f"group.store: {eos} writes the per-partition checkpoints in the transaction, to a Kafka topic: "
                f'set group.store = "kafka" (the topic: group.store_topic, or checkpoint.topic); got {g["store"]!r}'
            )
        ck.setdefault("topic", g["store_topic"])  # the group's checkpoints, now written in transactions
        if not (g.get("member") or src.get("instance_id")):
            raise ConfigError(
                f"group.member: {eos} needs a member name stable across restarts (group.member or "
                "source.instance_id): the member's transactional id is made of it"
            )
    if ck.get("path"):
        raise ConfigError(
            "checkpoint.path: with exactly-once the checkpoint is written in the Kafka transaction, to "
            "checkpoint.topic; remove checkpoint.path"
        )
    timeout = d.get("transaction_timeout_seconds", 60.0)
    if not 0 < ck["every_seconds"] < timeout:
        raise ConfigError(
            f"checkpoint.every_seconds: with exactly-once a transaction lasts one checkpoint interval, which "
            f"must be bounded and shorter than daemon.transaction_timeout_seconds = {timeout:g}; got "
            f"{ck['every_seconds']!r}"
        )
    group = src.get("group", "streamrnn")
    if not isinstance(group, str) or not group:
        raise ConfigError(f"source.group: exactly-once commits offsets to a consumer group; got {group!r}")
    d.setdefault("transactional_id", f"streamrnn-{group}-{src['topic']}")
    d.setdefault("transaction_timeout_seconds", 60.0)
    ck.setdefault("topic", f"{group}-checkpoints")
    ck.setdefault("chunk_bytes", CHECKPOINT.key("chunk_bytes").default)


def _validate_group_then_guarantee(cfg, raw, base_dir):
    _validate_group(cfg, raw, base_dir)
    _validate_guarantee(cfg)  # last: it reads every section


SCHEMA = (SOURCE, SINK, DEAD_LETTER, RECORD_FIELDS, MODEL, CHECKPOINT, DAEMON, GROUP)  # in validation order
SECTIONS = {section.name: section for section in SCHEMA}
# one validator per section: the schema's checks and the rules between keys, in the order of SCHEMA
VALIDATORS = {
    "source": _validate_source,
    "sink": _validate_sink(SINK),
    "dead_letter": _validate_sink(DEAD_LETTER),
    "schema": _validate_schema,
    "model": _validate_model,
    "checkpoint": _validate_checkpoint,
    "daemon": _validate_daemon,
    "group": _validate_group_then_guarantee,
}


def _check_tables(raw) -> None:
    """Known sections, each a table, with known keys."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a table")
    for name, table in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section (expected one of {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: expected a table")
        section = SECTIONS[name]
        if section.open_keys:
            continue
        allowed = sorted(k.name for k in section.keys)
        for key in table:
            if key not in allowed:
                raise ConfigError(f"{name}.{key}: unknown key (expected one of {', '.join(allowed)})")


def validate_config(raw, base_dir=None):
    """Check a config dict and return a normalised copy (defaults filled, paths resolved).

    >>> cfg = validate_config({"source": {"type": "jsonl", "path": "in.jsonl"}, "schema": {"features": ["a"]}})
    >>> cfg["sink"], cfg["daemon"]["batch_size"], cfg["model"]["n_inputs"], cfg["group"]
    ({'type': 'none'}, 500, 1, None)
    """
    _check_tables(raw)
    cfg = {name: dict(raw.get(name, {})) for name in SECTIONS}
    for validate in VALIDATORS.values():
        validate(cfg, raw, base_dir)
    return cfg


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
            raw["source"]["group"] = group  # the command line wins
    return validate_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


# ---------------------------------------------------------------------------- checks at start
def _identity(path):
    """(device, inode) of an existing file, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def file_paths(cfg) -> list[tuple[str, str]]:
    """The files a single daemon's config names, as (key, path): the source, the sinks, the checkpoint."""
    out = []
    if cfg["source"].get("type") in FILE_TYPES and cfg["source"].get("path"):
        out.append(("source.path", cfg["source"]["path"]))
    for section in ("sink", "dead_letter"):
        if cfg[section].get("type") in ("jsonl", "csv") and cfg[section].get("path"):
            out.append((f"{section}.path", cfg[section]["path"]))
    if cfg["checkpoint"].get("path") and not cfg.get("group"):
        out.append(("checkpoint.path", cfg["checkpoint"]["path"]))
    return out


def check_collisions(cfg) -> None:
    """ConfigError if two of the source, the sinks and the checkpoint (with PATH.prev and PATH.lock)
    are the same file, under any spelling (canonical paths, or the same device and inode: a hard
    link): a checkpoint over the predictions destroys them, a source that is its own dead-letter
    file feeds on its output."""
    seen = {}
    for key, path in file_paths(cfg):
        names = [path]
        if key == "checkpoint.path":
            names += [path + ".prev", path + ".lock"]
        for name in names:
            ids = {("path", os.path.realpath(name))}
            identity = _identity(name)
            if identity is not None:
                ids.add(("inode", identity))
            for ident in ids:
                if ident in seen and seen[ident][0] != key:
                    other_key, other = seen[ident]
                    raise ConfigError(
                        f"{key}: {path!r} is the same file as {other_key} = {other!r}; give each its own file"
                    )
            for ident in ids:
                seen.setdefault(ident, (key, path))


def _check_writable_file(key, path) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"{key}: {path!r} is a directory, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{key}: the directory {folder!r} does not exist")
    try:  # open as the sink will (creating it, appending: nothing written, nothing truncated)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write {path!r}: {exc.strerror}") from None
    os.close(fd)


def check_start(cfg, source=True, sink=True, dead_letter=True) -> None:
    """What can be known before processing, checked before it: colliding paths; a source file that
    exists and is a readable file; sink files that can be written in a directory that exists; a
    checkpoint directory that exists (a single daemon; a group's store is created); a free metrics
    port. ConfigError naming the key. ``source``, ``sink``, ``dead_letter`` False: that one is given
    otherwise (an injected connector) and not checked."""
    check_collisions(cfg)
    src = cfg["source"]
    if source and src.get("type") in FILE_TYPES:
        path = src["path"]
        if os.path.isdir(path):
            raise ConfigError(f"source.path: {path!r} is a directory, not a file")
        if not os.path.exists(path):
            raise ConfigError(f"source.path: {path!r} does not exist")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"source.path: cannot read {path!r}")
    for section, check in (("sink", sink), ("dead_letter", dead_letter)):
        table = cfg[section]
        if check and table.get("type") in ("jsonl", "csv"):
            _check_writable_file(f"{section}.path", table["path"])
    check_checkpoint_path(cfg)
    port = cfg["daemon"].get("metrics_port")
    if port:
        check_port_free(port)


def check_checkpoint_path(cfg) -> None:
    """A single daemon's checkpoint.path: not a directory, in a directory that exists and can be
    written (found at start, not at the first checkpoint after the whole stream)."""
    ck = cfg["checkpoint"].get("path")
    if ck and not cfg.get("group"):
        if os.path.isdir(ck):
            raise ConfigError(f"checkpoint.path: {ck!r} is a directory, not a file")
        folder = os.path.dirname(os.path.abspath(ck))
        if not os.path.isdir(folder):
            raise ConfigError(f"checkpoint.path: the directory {folder!r} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"checkpoint.path: cannot write in the directory {folder!r}")


def check_port_free(port) -> None:
    """ConfigError naming daemon.metrics_port if 127.0.0.1:``port`` cannot be bound."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"daemon.metrics_port: cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}"
            ) from None


# ---------------------------------------------------------------------------- the reference page
_PREAMBLE = """\
# streamrnn daemon configuration

<!-- Generated from the schema in streamrnn/service/config.py; do not edit by hand. Regenerate with
     python -c "import streamrnn.service.config as c; print(c.reference_markdown(), end='')" > docs/config.md
     (tests/test_config_reference.py fails when this file and the schema differ). -->

`streamrnn run CONFIG.toml` reads a TOML file with the sections below. Every key is checked,
and an error names its key (`source.path: missing (a file path)`). Relative paths resolve
against the config file's folder. `streamrnn/data/example.toml` is a complete example.

The data path: source -> decoder (schema) -> Model.step_many (model) -> sink, with records that
cannot be used going to the dead-letter sink, and checkpoints holding the model and the source
positions together.

Guarantees: each record is applied to the model exactly once across crashes and restarts
(checkpoints hold the model and the next source positions together; the source is sought to
them on start), and every input gets an output at least once (outputs written after the last
checkpoint are written again, identically, after a restart).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The configuration reference (``docs/config.md``): every section and key with its type,
    default and meaning, generated from :data:`SCHEMA`."""
    out = [_PREAMBLE]
    for section in SCHEMA:
        out.append(f"## [{section.name}]\n\n{section.meaning}\n")
        out.append("| key | type | default | allowed | meaning |\n|---|---|---|---|---|")
        for key in section.keys:
            allowed = key.expected() if key.checked else ""
            default = key.reference_default()
            if key.required and key.used_by:
                default = f"required for {', '.join(key.used_by)}"
            meaning = f"{', '.join(key.used_by)}: {key.meaning}" if key.used_by and not key.required else key.meaning
            out.append(f"| `{key.name}` | {key.type} | {_cell(default)} | {_cell(allowed)} | {_cell(meaning)} |")
        out.append("")
        if section.notes:
            out.append(section.notes + "\n")
    return "\n".join(out).rstrip("\n") + "\n"
