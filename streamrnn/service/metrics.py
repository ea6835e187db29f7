"""Prometheus metrics of the daemon (``daemon.metrics_port``; needs ``streamrnn[metrics]``).

With the port 0 every method is a no-op, so the loop calls them unconditionally:

>>> m = Metrics(0)
>>> m.enabled, m.count_retry(), m.close()
(False, None, None)
"""

from __future__ import annotations

import logging

from streamrnn.extras import MissingExtra, require

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it

# the model's counters carried into the metrics: model stat -> Metrics attribute
_MODEL_COUNTERS = {"skipped_nonfinite": "skipped", "rejected_nonfinite_state": "rejected"}


# Every metric: (attribute of Metrics, type, name, meaning). The reference in docs/daemon.md is
# metrics_markdown() of this table (tests/test_config_reference.py checks it).
METRICS = (
    ("records", "counter", "streamrnn_records", "records consumed"),
    ("dead", "counter", "streamrnn_dead_letters", "records sent to the dead-letter sink"),
    ("latency", "histogram", "streamrnn_batch_seconds", "batch processing latency"),
    ("rate", "gauge", "streamrnn_records_per_second", "records/s over the last log interval"),
    ("loss", "gauge", "streamrnn_loss", "mean loss of the last batch"),
    ("keys", "gauge", "streamrnn_keys", "keys holding state"),
    ("lag", "gauge", "streamrnn_lag", "records behind the end of the source (when known)"),
    ("ckpt_age", "gauge", "streamrnn_checkpoint_age_seconds", "seconds since the last checkpoint"),
    ("skipped", "counter", "streamrnn_skipped_updates", "updates skipped: non-finite loss or gradient"),
    (
        "rejected",
        "counter",
        "streamrnn_rejected_samples",
        "samples rejected: they would make the recurrent state non-finite",
    ),
    ("retries", "counter", "streamrnn_broker_retries", "failed attempts to reach the broker"),
    ("ckpt_failures", "counter", "streamrnn_checkpoint_failures", "checkpoint writes that failed"),
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def metrics_markdown():
    """The metrics reference table (docs/daemon.md): every metric as Prometheus exposes it."""
    exposed = {"counter": "{}_total", "gauge": "{}", "histogram": "{}_bucket, {}_sum, {}_count"}
    rows = ["| metric | type | meaning |", "|---|---|---|"]
    for _, kind, name, meaning in METRICS:
        names = ", ".join(f"`{n}`" for n in exposed[kind].replace("{}", name).split(", "))
        rows.append(f"| {names} | {kind} | {meaning} |")
    return "\n".join(rows) + "\n"


class Metrics:
    """The daemon's counters, gauges and batch-latency histogram, served on 127.0.0.1:``port``."""

    def __init__(self, port):
        self.enabled = False
        self._counted = dict.fromkeys(_MODEL_COUNTERS, 0)  # model counts already carried over
        if not port:
            return
        try:
            pc = require("prometheus_client", "metrics", "metrics_port")
        except MissingExtra as exc:  # metrics are optional: the daemon runs without them
            log.warning("%s; metrics off", exc)
            return
        reg = pc.CollectorRegistry()
        make = {"counter": pc.Counter, "gauge": pc.Gauge}
        for attr, kind, name, meaning in METRICS:
            if kind == "histogram":
                metric = pc.Histogram(name, meaning, registry=reg, buckets=LATENCY_BUCKETS)
            else:
                metric = make[kind](name, meaning, registry=reg)
            setattr(self, attr, metric)
        try:
            self.server, self.thread = pc.start_http_server(port, addr="127.0.0.1", registry=reg)
        except OSError as exc:  # the port was taken since the check at start
            from .config import ConfigError

            raise ConfigError(
                f"daemon.metrics_port: cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}"
            ) from None
        self.enabled = True

    def observe_batch(self, n_records, n_dead, seconds, outputs, n_keys, model_stats, lag=None):
        """One processed batch; ``lag`` (the source's, when it has one) is asked for here only."""
        if not self.enabled:
            return
        self.records.inc(n_records)
        self.dead.inc(n_dead)
        self.latency.observe(seconds)
        if outputs:
            losses = [o["loss"] for o in outputs if o["loss"] is not None]
            if losses:
                self.loss.set(sum(losses) / len(losses))
        self.keys.set(n_keys)
        self.carry_model_stats(model_stats)
        if callable(lag):
            try:
                self.lag.set(lag())
            except Exception:  # noqa: BLE001 - lag is best effort
                pass

    def carry_model_stats(self, stats):
        """Carry the model's counts of skipped updates and rejected samples into the metrics."""
        if not self.enabled:
            return
        for name, attr in _MODEL_COUNTERS.items():
            delta = stats[name] - self._counted[name]
            if delta:
                getattr(self, attr).inc(delta)
                self._counted[name] = stats[name]

    def count_retry(self):
        """Count one retried operation (``streamrnn_retries_total``)."""
        if self.enabled:
            self.retries.inc()

    def count_checkpoint_failure(self):
        """Count one failed checkpoint write (``streamrnn_checkpoint_failures_total``)."""
        if self.enabled:
            self.ckpt_failures.inc()

    def set_checkpoint_age(self, seconds):
        """Set the seconds since the last durable checkpoint (``streamrnn_checkpoint_age_seconds``)."""
        if self.enabled:
            self.ckpt_age.set(seconds)

    def set_rate(self, records_per_second):
        """Set the recent processing rate (``streamrnn_records_per_second``)."""
        if self.enabled:
            self.rate.set(records_per_second)

    def close(self):
        """Stop the metrics HTTP server, if one was started."""
        if self.enabled and hasattr(self, "server"):
            self.server.shutdown()
