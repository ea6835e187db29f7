"""Scale-out across a Kafka consumer group: the checkpoint store, the parameter exchange of shared
mode, and ``streamrnn status``.

Members of one group split the topic's partitions (Kafka assigns them); each member keeps one
model state per partition it owns (:class:`~streamrnn.partitioned.PartitionedModel`) and saves it
to a store every member can read, so a partition's keys move with it. In shared mode the members
also exchange parameters through a compacted topic.

Consistency of shared mode
--------------------------
Every ``publish_every`` records it learns, a member publishes its parameters (keyed by member id)
and replaces its own by the average of the latest parameters of every member heard from within
``stale_seconds`` (itself included; ``merge = "records"`` weights each by the records it learned
since its previous publication). This is periodic model averaging (local SGD), not a
synchronous all-reduce: there is no barrier, members see each other's parameters up to one period
late, and between merges each member's parameters drift by at most ``publish_every`` of its own
updates. Parameters are therefore eventually consistent, not identical across members at any
instant, and a shared-mode run is not bit-reproducible (the result depends on timing). What stays
exact per partition: each record is applied once to its key's state relative to the partition's
checkpoint, and every input gets an output. Optimizer state (Adam moments) stays local to each
member. Choose the ``"independent"`` mode when reproducibility matters more than pooling data.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from . import checkpoint as ckpt
from .checkpoint import CheckpointError

log = logging.getLogger("streamrnn.scaleout")


def make_store(group, checkpoint_section, bootstrap):
    """The per-partition checkpoint store a ``[group]`` section names."""
    if group["store"] == "kafka":
        from streamrnn.connectors.checkpoint_store import KafkaTopicStore

        return KafkaTopicStore(bootstrap, group["store_topic"], max_message_bytes=group["max_message_bytes"])
    from streamrnn.connectors.checkpoint_store import DirectoryStore

    return DirectoryStore(checkpoint_section["path"])


class ParameterExchange:
    """Shared mode: publish this member's parameters, merge the group's latest.

    ``topic`` is a :class:`streamrnn.connectors.kafka.CompactedTopic` (key: member id).
    """

    def __init__(self, topic, member, model_config, merge="mean", stale_seconds=300.0):
        # as it reads back from JSON (tuples become lists), so publications compare equal
        self.topic, self.member, self.config = topic, member, json.loads(json.dumps(model_config))
        self.merge, self.stale_seconds = merge, float(stale_seconds)
        self.published = 0
        self.last_merged = 0  # members averaged at the last merge

    def _entries(self):
        """{member: (theta, meta)} of the latest publications of this configuration."""
        out = {}
        for member in self.topic.keys():
            values = self.topic.latest(member, refresh=False)
            if not values:
                continue
            try:
                arrays, meta = ckpt.loads(values[0][1], f"model topic [{member}]")
            except CheckpointError as exc:
                log.warning("ignoring the parameters of member %s: %s", member, exc)
                continue
            theta = arrays.get("theta")
            if meta.get("config") != self.config or theta is None or not np.isfinite(theta).all():
                log.warning("ignoring the parameters of member %s: another model configuration or non-finite", member)
                continue
            out[member] = (theta, meta)
        return out

    def initial(self):
        """The group's current parameters to start from (the mean of the publications within
        ``stale_seconds`` of the newest one), or None when nobody has published."""
        entries = self._entries()
        if not entries:
            return None
        newest = max(meta["time"] for _, meta in entries.values())
        fresh = [theta for theta, meta in entries.values() if meta["time"] >= newest - self.stale_seconds]
        self.last_merged = len(fresh)
        return np.mean(fresh, axis=0)

    def publish_and_merge(self, theta, records_since):
        """Publish ``theta`` (learned from ``records_since`` records since the last publication)
        and return the merged parameters."""
        now = time.time()
        self.published += 1
        meta = {
            "member": self.member,
            "config": self.config,
            "time": now,
            "records": int(records_since),
            "seq": self.published,
        }
        self.topic.put(self.member, ckpt.dumps({"theta": theta}, meta))
        entries = {m: e for m, e in self._entries().items() if e[1]["time"] >= now - self.stale_seconds}
        entries[self.member] = (theta, meta)
        thetas = np.stack([t for t, _ in entries.values()])
        if self.merge == "records":
            w = np.array([max(int(m.get("records", 0)), 0) for _, m in entries.values()], np.float64)
            if w.sum() <= 0:
                w = np.ones(len(entries))
        else:
            w = np.ones(len(entries))
        self.last_merged = len(entries)
        return (w[:, None] * thetas).sum(axis=0) / w.sum()


# ---------------------------------------------------------------------------- status
def group_status(cfg, timeout_ms=10000):
    """Members, partitions, keys, lag and checkpoint age of the group a config names, as a dict."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    g, src = cfg["group"], cfg["source"]
    admin = KafkaAdminClient(
        bootstrap_servers=src["bootstrap"], client_id="streamrnn-status", request_timeout_ms=timeout_ms
    )
    consumer = KafkaConsumer(
        bootstrap_servers=src["bootstrap"], group_id=None, enable_auto_commit=False, request_timeout_ms=timeout_ms
    )
    store = None
    try:
        described = admin.describe_groups([g["name"]]).get(g["name"], {})
        members, owner = [], {}
        for m in described.get("members", []):
            assignment = m.get("member_assignment")
            owned = (
                [
                    f"{a['topic']}:{p}"
                    for a in (assignment or {}).get("assigned_partitions", [])
                    for p in a["partitions"]
                ]
                if isinstance(assignment, dict)
                else []
            )
            # a daemon's client id is its member name (group.member) unless source.client_id is set
            member = m.get("group_instance_id") or m.get("client_id") or m.get("member_id")
            members.append(
                {
                    "member": member,
                    "member_id": m.get("member_id"),
                    "host": m.get("client_host"),
                    "partitions": sorted(owned, key=_stream_order),
                }
            )
            for stream in owned:
                owner[stream] = member
        topic = src["topic"]
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(tps) if tps else {}
        committed = admin.list_group_offsets({g["name"]: tps}).get(g["name"], {}) if tps else {}
        store = make_store(g, cfg["checkpoint"], src["bootstrap"])
        now = time.time()
        partitions = []
        for tp in tps:
            stream = f"{tp.topic}:{tp.partition}"
            try:
                meta = store.newest_meta(stream)
            except CheckpointError:
                meta = None
            c = committed.get(tp)
            c_off = c.offset if c is not None and c.offset >= 0 else None
            ck_off = (meta or {}).get("positions", {}).get(stream)
            partitions.append(
                {
                    "partition": stream,
                    "member": owner.get(stream),
                    "end": ends.get(tp, 0),
                    "committed": c_off,
                    "lag": ends.get(tp, 0) - (c_off or 0),
                    "checkpoint_offset": ck_off,
                    "checkpoint_lag": None if ck_off is None else ends.get(tp, 0) - ck_off,
                    "keys": (meta or {}).get("n_keys"),
                    "checkpoint_age_s": None if meta is None else round(now - meta.get("saved_at", now), 1),
                    "saved_by": (meta or {}).get("member"),
                }
            )
        return {
            "group": g["name"],
            "state": described.get("group_state"),
            "mode": g["mode"],
            "store": repr(store),
            "members": members,
            "partitions": partitions,
        }
    finally:
        admin.close()
        consumer.close()
        if store is not None:
            store.close()


def _stream_order(stream):
    topic, _, partition = stream.rpartition(":")
    return topic, int(partition)


def format_status(status):
    """The text ``streamrnn status`` prints for :func:`group_status`'s dict."""
    lines = [
        f"group {status['group']} ({status['state']}), mode {status['mode']}, store {status['store']}",
        f"members: {len(status['members'])}",
    ]
    for m in status["members"]:
        lines.append(
            f"  {m['member']} ({m['member_id']} at {m['host']})  partitions {', '.join(m['partitions']) or '-'}"
        )
    header = ("partition", "member", "end", "committed", "lag", "ckpt offset", "keys", "ckpt age s")
    rows = [header] + [
        (
            p["partition"],
            str(p["member"] or "-"),
            str(p["end"]),
            str(p["committed"]),
            str(p["lag"]),
            str(p["checkpoint_offset"]),
            str(p["keys"]),
            str(p["checkpoint_age_s"]),
        )
        for p in status["partitions"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


__all__ = ["make_store", "ParameterExchange", "group_status", "format_status"]
