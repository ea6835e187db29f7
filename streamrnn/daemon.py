"""The streaming daemon: source -> decode -> Model.step_many -> encode -> sink, with checkpoints.

Configuration (TOML; every key is checked, errors name the key)::

    [source]                       # type = "jsonl" | "csv" | "replay" | "kafka"
    type = "replay"
    path = "stream.jsonl"          # files: relative paths resolve against the config's folder
    follow = false                 # jsonl/csv: keep reading a growing file (tail -f)
    speed = 0.0                    # replay: 0 = as fast as possible, else recorded pace x speed
    # kafka: bootstrap = "host:port", topic = "in", group = "streamrnn"

    [sink]                         # predictions: type = "jsonl" | "csv" | "kafka" (topic = ...)
    type = "jsonl"
    path = "predictions.jsonl"

    [dead_letter]                  # records that cannot be used, with the reason and position
    type = "jsonl"
    path = "dead_letters.jsonl"

    [schema]
    features = ["x0", "x1"]        # fields of the record's JSON object (or CSV columns)
    target = "y"                   # optional; missing/null target = predict only
    key = "key"                    # optional; field holding the per-entity key (str or int);
                                   # when absent, the source's record key (Kafka key) is used

    [model]                        # keyword arguments of streamrnn.Model (n_inputs defaults
    cell = "gru"                   # to len(schema.features))
    n_hidden = 8

    [checkpoint]
    path = "daemon.ckpt"           # the previous generation is kept as PATH.prev
    every_records = 1000
    every_seconds = 30.0

    [daemon]
    batch_size = 500
    poll_timeout = 0.5
    metrics_port = 0               # 0 = no Prometheus endpoint
    log_every_seconds = 10.0
    progress = true                # a progress bar when reading a finite file

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

import numpy as np

from . import checkpoint as ckpt
from .checkpoint import CheckpointError
from .model import Model

log = logging.getLogger("streamrnn.daemon")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


# ---------------------------------------------------------------------------- config
_SECTIONS = {
    "source": {"type", "path", "follow", "speed", "bootstrap", "topic", "group", "client_id",
               "max_poll_records"},
    "sink": {"type", "path", "bootstrap", "topic", "mode"},
    "dead_letter": {"type", "path", "bootstrap", "topic", "mode"},
    "schema": {"features", "target", "key"},
    "model": None,  # checked by Model itself
    "checkpoint": {"path", "every_records", "every_seconds", "keep"},
    "daemon": {"batch_size", "poll_timeout", "metrics_port", "log_every_seconds", "progress",
               "max_records"},
}
_SOURCE_TYPES = ("jsonl", "csv", "replay", "kafka")
_SINK_TYPES = ("jsonl", "csv", "kafka", "none")
_DEFAULTS = {
    "daemon": {"batch_size": 500, "poll_timeout": 0.5, "metrics_port": 0, "log_every_seconds": 10.0,
               "progress": True, "max_records": 0},
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
    if "follow" in cfg["source"] and not isinstance(cfg["source"]["follow"], bool):
        raise ConfigError(f"source.follow: expected true or false, got {cfg['source']['follow']!r}")
    if "speed" in cfg["source"]:
        sp = cfg["source"]["speed"]
        if isinstance(sp, bool) or not isinstance(sp, (int, float)) or not sp >= 0:
            raise ConfigError(f"source.speed: expected a number >= 0, got {sp!r}")

    feats = _need(cfg, "schema", "features", list, "a non-empty list of field names")
    if not feats or not all(isinstance(f, str) and f for f in feats):
        raise ConfigError(f"schema.features: expected a non-empty list of field names, got {feats!r}")
    if len(set(feats)) != len(feats):
        raise ConfigError(f"schema.features: duplicate field names in {feats!r}")
    for k in ("target", "key"):
        if k in cfg["schema"] and not (isinstance(cfg["schema"][k], str) and cfg["schema"][k]):
            raise ConfigError(f"schema.{k}: expected a field name, got {cfg['schema'][k]!r}")

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
    for k, lo in (("batch_size", 1), ("metrics_port", 0), ("max_records", 0)):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (k == "metrics_port" and v > 65535):
            raise ConfigError(f"daemon.{k}: expected an integer >= {lo}, got {v!r}")
    for k in ("poll_timeout", "log_every_seconds"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"daemon.{k}: expected a number >= 0, got {v!r}")
    if not isinstance(d["progress"], bool):
        raise ConfigError(f"daemon.progress: expected true or false, got {d['progress']!r}")
    return cfg


def load_config(path):
    import tomllib
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return validate_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


# ---------------------------------------------------------------------------- connectors
def make_source(section):
    t = section["type"]
    if t == "jsonl":
        from connectors.file import JsonLinesSource
        return JsonLinesSource(section["path"], follow=section.get("follow", False))
    if t == "csv":
        from connectors.file import CsvSource
        return CsvSource(section["path"], follow=section.get("follow", False))
    if t == "replay":
        from connectors.replay import ReplaySource
        return ReplaySource(section["path"], speed=section.get("speed", 0.0))
    from connectors.kafka import KafkaSource
    return KafkaSource(section["bootstrap"], section["topic"], group=section.get("group", "streamrnn"),
                       client_id=section.get("client_id", "streamrnn"),
                       max_poll_records=section.get("max_poll_records", 5000))


def make_sink(section):
    t = section["type"]
    if t == "none":
        from connectors.base import ListSink
        return ListSink()
    if t == "jsonl":
        from connectors.file import JsonLinesSink
        return JsonLinesSink(section["path"], mode=section.get("mode", "a"))
    if t == "csv":
        from connectors.file import CsvSink
        return CsvSink(section["path"], mode=section.get("mode", "a"))
    from connectors.kafka import KafkaSink
    return KafkaSink(section["bootstrap"], section["topic"])


# ---------------------------------------------------------------------------- decoding
class BadRecord(ValueError):
    pass


def _number(name, v, max_abs=float("inf")):
    if isinstance(v, bool):
        raise BadRecord(f"field {name!r}: expected a number, got a boolean")
    if isinstance(v, (int, float)):
        f = float(v)
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

    def __init__(self, schema, model_config):
        self.features = list(schema["features"])
        self.target = schema.get("target")
        self.key_field = schema.get("key")
        self.task = model_config.get("task", "regression")
        self.n_outputs = model_config.get("n_outputs", 1)
        self.width = self.n_outputs if self.task == "regression" else 1
        self.max_abs = float(np.finfo(model_config.get("dtype", "float64")).max)

    def decode(self, record):
        value = record.value
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRecord("value is not valid UTF-8") from None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BadRecord(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(value, dict):
            raise BadRecord(f"expected a JSON object (or CSV row of the header's width), got {type(value).__name__}")
        x = []
        for f in self.features:
            if f not in value:
                raise BadRecord(f"missing feature field {f!r}")
            x.append(_number(f, value[f], self.max_abs))
        y = [math.nan] * self.width
        if self.target is not None and value.get(self.target) not in (None, ""):
            t = value[self.target]
            if self.task == "regression" and self.width > 1:
                if not isinstance(t, list) or len(t) != self.width:
                    raise BadRecord(f"field {self.target!r}: expected a list of {self.width} numbers")
                y = [_number(self.target, v, self.max_abs) for v in t]
            else:
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
        if self.key_field is not None:
            if self.key_field not in value:
                raise BadRecord(f"missing key field {self.key_field!r}")
            key = value[self.key_field]
        else:
            key = record.key
            if isinstance(key, (bytes, bytearray)):
                key = key.decode("utf-8", errors="replace")
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
            raise BadRecord(f"key must be a string or an integer, got {type(key).__name__} {key!r}")
        return x, y, key


def _raw_text(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_paths(path):
    return [path, path + ".prev"]


def load_checkpoint(path):
    """Newest valid checkpoint generation as (arrays, meta, used_path), or None when none exists.

    A corrupt newest generation falls back to the previous one (with a warning); if every
    existing generation is unreadable, CheckpointError is raised.
    """
    errors = []
    for p in checkpoint_paths(path):
        if not os.path.exists(p):
            continue
        try:
            arrays, meta = ckpt.load(p)
        except CheckpointError as exc:
            log.warning("checkpoint %s unusable (%s); trying the previous generation", p, exc)
            errors.append(str(exc))
            continue
        if "positions" not in meta or "model" not in meta:
            errors.append(f"{p}: not a daemon checkpoint (no positions)")
            continue
        return arrays, meta, p
    if errors:
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    return None


def save_checkpoint(path, arrays, meta):
    """Write a new generation atomically, keeping the previous one as PATH.prev."""
    data = ckpt.dumps(arrays, meta)
    if os.path.exists(path):
        os.replace(path, path + ".prev")
    ckpt.write_atomic(path, data)


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
        self.decoder = Decoder(config["schema"], config["model"])
        self.model = Model(**config["model"])
        self.ckpt_path = config["checkpoint"].get("path")
        self.batch_size = config["daemon"]["batch_size"]
        self.poll_timeout = config["daemon"]["poll_timeout"]
        self.max_records = config["daemon"]["max_records"]
        self.progress = config["daemon"]["progress"] if progress is None else progress
        self.stats = {"records": 0, "applied": 0, "dead_letters": 0, "outputs": 0, "batches": 0,
                      "loss_sum": 0.0, "loss_count": 0, "checkpoints": 0, "resumed_from": None}
        self.latencies = []
        self._stop = False
        self._dirty = False
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        resume = load_checkpoint(self.ckpt_path) if self.ckpt_path else None
        self.source = source if source is not None else make_source(config["source"])
        try:
            if resume is not None:
                arrays, meta, used = resume
                try:
                    self.model.load_state(arrays, meta["model"], source=used)
                except CheckpointError as exc:
                    raise CheckpointError(f"{exc} (the config's [model] differs from the checkpoint's; "
                                          f"move the checkpoint away to start afresh)") from None
                self.source.seek(meta["positions"])
                for k in ("records", "applied", "dead_letters", "loss_sum", "loss_count"):
                    self.stats[k] = meta.get("daemon", {}).get(k, self.stats[k])
                self.stats["resumed_from"] = used
                log.info("resumed from %s at %s", used, meta["positions"])
            self.sink = sink if sink is not None else make_sink(config["sink"])
            self.dead = dead_letter if dead_letter is not None else make_sink(config["dead_letter"])
        except BaseException:
            self.source.close()
            raise
        if hasattr(self.source, "on_revoke"):
            # Partitions leave: save state for their next owner. This runs inside kafka-python's
            # rebalance callback, where a blocking commit is refused (kafka-python 3 raises "Cannot
            # block on net.run() from the IO thread"); the checkpoint holds the positions anyway.
            self.source.on_revoke = lambda: self.checkpoint(commit_offsets=False)
        self.metrics = _Metrics(config["daemon"]["metrics_port"])

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
        outputs = []
        if good:
            Xa = np.asarray(X, dtype=np.float64)     # the Model casts to its dtype and checks
            Ya = np.asarray(Y, dtype=np.float64)
            try:
                preds, losses = self.model.step_many(Xa, Ya, keys, return_loss=True)
            except ValueError:
                # The model refused a row the decoder passed; step_many applied nothing, so
                # isolate the refused rows record by record and apply the rest in order.
                good, X, Y, keys, preds, losses = self._apply_one_by_one(good, X, Y, keys, dead)
            preds = np.asarray(preds)
            plist = preds.tolist()
            llist = np.asarray(losses).tolist()
            scalar = preds.ndim == 2 and preds.shape[1] == 1
            for i, r in enumerate(good):
                y = Y[i]
                has_y = not math.isnan(y[0])
                loss = llist[i] if has_y else None
                if loss is not None and not math.isfinite(loss):
                    loss = None
                if has_y:
                    self.stats["loss_sum"] += llist[i]
                    self.stats["loss_count"] += 1
                outputs.append({
                    "position": list(r.position), "key": keys[i],
                    "prediction": plist[i][0] if scalar else plist[i],
                    "target": (y[0] if len(y) == 1 else y) if has_y else None,
                    "loss": loss,
                })
            self.sink.write(outputs)
        if dead:
            self.dead.write(dead)
        n = len(records)
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
            m.keys.set(len(self.model.keys))
            lag = getattr(self.source, "lag", None)
            if callable(lag):
                try:
                    m.lag.set(lag())
                except Exception:  # noqa: BLE001 - lag is best effort
                    pass
        return outputs, dead

    def _apply_one_by_one(self, good, X, Y, keys, dead):
        kept, preds, losses = [], [], []
        for i, r in enumerate(good):
            try:
                p, l = self.model.step_many(np.asarray([X[i]]), np.asarray([Y[i]]), [keys[i]], return_loss=True)
            except ValueError as exc:
                dead.append({"position": list(r.position), "reason": f"refused by the model: {exc}",
                             "key": _jsonable_key(r.key), "value": _raw_text(r.value)})
                continue
            kept.append(i)
            preds.append(p[0])
            losses.append(l[0])
        pick = lambda seq: [seq[i] for i in kept]  # noqa: E731
        n_out = self.model.n_outputs
        return (pick(good), pick(X), pick(Y), pick(keys), np.asarray(preds).reshape(-1, n_out),
                np.asarray(losses))

    # -- checkpoint
    def checkpoint(self, commit_offsets=True):
        self.sink.flush()
        self.dead.flush()
        positions = self.source.positions()
        if self.ckpt_path:
            arrays, mmeta = self.model.state_arrays()
            daemon_stats = {k: self.stats[k] for k in ("records", "applied", "dead_letters", "loss_sum",
                                                        "loss_count")}
            meta = {"model": mmeta, "positions": positions, "daemon": daemon_stats, "saved_at": time.time()}
            save_checkpoint(self.ckpt_path, arrays, meta)
            self.stats["checkpoints"] += 1
        commit = getattr(self.source, "commit", None)
        if commit is not None and self.ckpt_path and commit_offsets:
            commit(positions)  # only after the checkpoint is durable
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()

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
                from connectors.replay import count_lines
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
                records = self.source.poll(limit, self.poll_timeout)
                if records:
                    self.process(records)
                    self._dirty = True
                    if bar is not None:
                        bar.update(len(records))
                elif getattr(self.source, "exhausted", False):
                    break
                elif self._dirty:
                    self.sink.flush()  # idle: make outputs visible without waiting for a checkpoint
                    self.dead.flush()
                    self._dirty = False
                if self._due():
                    self.checkpoint()
                now = time.monotonic()
                if self.metrics.enabled:
                    self.metrics.ckpt_age.set(now - self._last_ckpt)
                if log_every and now - last_log >= log_every:
                    rate = (self.stats["records"] - last_count) / (now - last_log)
                    if self.metrics.enabled:
                        self.metrics.rate.set(rate)
                    log.info("records=%d dead=%d rate=%.0f/s mean_loss=%s keys=%d",
                             self.stats["records"], self.stats["dead_letters"], rate,
                             self._mean_loss_str(), len(self.model.keys))
                    last_log, last_count = now, self.stats["records"]
            if self._since_ckpt or (self.stats["checkpoints"] == 0 and self.stats["resumed_from"] is None):
                self.checkpoint()
            else:
                self.sink.flush()
                self.dead.flush()
        finally:
            if bar is not None:
                bar.close()
            self.close()
        self.stats["elapsed"] = time.monotonic() - t_start
        return self.stats

    def _mean_loss_str(self):
        c = self.stats["loss_count"]
        return f"{self.stats['loss_sum'] / c:.6g}" if c else "n/a"

    def close(self):
        for obj in (self.sink, self.dead, self.source):
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
            f"  keys with state  {len(self.model.keys)}",
            f"  model steps      {self.model.stats.get('steps')}, updates {self.model.stats.get('updates')}",
            f"  this run         {elapsed:.2f} s, batches {s['batches']}, p50/p99 batch latency "
            f"{np.percentile(lat, 50) * 1e3:.2f}/{np.percentile(lat, 99) * 1e3:.2f} ms",
            f"  checkpoint       {self.ckpt_path or '(none)'} ({s['checkpoints']} written"
            + (f", resumed from {s['resumed_from']}" if s["resumed_from"] else "") + ")",
        ]
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
