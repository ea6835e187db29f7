"""Exactly-once for a consumer-group member: ``processing_guarantee = "exactly-once"`` with a [group].

Each member runs the read-process-write loop of :mod:`streamrnn.service.exactly_once` over the
partitions Kafka assigns it: one transaction per checkpoint interval holds the interval's outputs and
dead letters, the checkpoint of every owned partition that has new records (each partition's model
state, chunked, in the compacted ``checkpoint.topic``, keyed by group and partition) and the consumer
offsets, sent with ``send_offsets_to_transaction`` and the consumer's group metadata.

Fencing (Kafka's EOS v2, KIP-447)
---------------------------------
The transactional id is *one per member*, ``daemon.transactional_id`` + ``-`` + the member's name,
stable across the member's restarts. EOS v2 fences in two places, and this is what each needs:

- A zombie of the *group* (a member that was removed, e.g. paused past its session timeout, whose
  partitions now belong to others) is fenced by the consumer group: the offsets of its transaction
  carry its generation and member id, which the group coordinator refuses once the group has moved
  on (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID), so that transaction can only abort.
  Kafka Streams' EOS v1 needed a transactional id per input partition for this; v2 does not.
- A zombie of the *member* (an earlier incarnation of the same member, resumed after its successor
  started) is fenced by the transactional id: the successor's ``init_transactions`` bumps the
  producer epoch and aborts the open transaction. Each incarnation also commits a claim, so a fenced
  producer can tell "another incarnation took over" (stop, exit status 2) from "my own transaction
  outlived its timeout" (take over again and rewind).

A new id per *generation* would add nothing to the first and lose the second (a new id fences no
one: an earlier incarnation's open transaction would then hold every read_committed consumer back
until its timeout), so the generation is carried by the group metadata, not by the id.

The new owner of a partition first reads the group's committed offset *stably* (KIP-447's
``require_stable``: it waits while a transaction holding the partition's offsets is open, so a
previous owner's transaction cannot commit behind its back), then the partition's newest committed
checkpoint, whose position must equal that offset.

Rebalance: before partitions are released (``on_partitions_revoked``) the open transaction is
committed with their checkpoints and offsets; partitions *lost* (the member was removed) cannot be
committed: the open transaction is aborted. A transaction that fails otherwise is aborted and every
owned partition is reloaded from its last committed checkpoint (a rewind).

Only ``group.mode = "independent"`` (the default) is offered: in shared mode the parameters
travel through the exchange topic outside the transactions, so an aborted interval would still
have reached the other members.
"""

from __future__ import annotations

import logging
import time
import uuid

from streamrnn import checkpoint as ckpt
from streamrnn.checkpoint import CheckpointError
from streamrnn.model import Model
from streamrnn.partitioned import PartitionedModel

from .exactly_once import Transactional, _Closer
from .group import GroupDaemon

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it

_MATCH_TIMEOUT_S = 10.0  # how long a taken-over partition's checkpoint may lag its committed offset


class ExactlyOnceGroupDaemon(Transactional, GroupDaemon):
    """A consumer-group member whose outputs, dead letters, per-partition checkpoints and offsets
    commit in one Kafka transaction per checkpoint interval (see the module's description).

    Parameters
    ----------
    config : dict
        A validated config with a [group] and ``daemon.processing_guarantee = "exactly-once"``.
    source, progress
        As for :class:`~streamrnn.service.loop.Daemon` (the sinks are always the transaction's).
    """

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        self._refuse_sinks(sink, dead_letter)
        self.offsets = None
        try:
            super().__init__(config, source, None, None, progress)
        except BaseException:
            self._close_after_failure(self.offsets)
            raise

    def _open_state(self, config):
        from streamrnn.connectors.kafka.transactional import CheckpointTopic, StableOffsets

        self.group = g = config["group"]
        src, d, ck = config["source"], config["daemon"], config["checkpoint"]
        self.parts = PartitionedModel(config["model"], mode=g["mode"], forecast=config["schema"].get("forecast", False))
        self.model = self.forecaster = None
        self.member = g.get("member") or src["instance_id"]  # validated: stable across restarts
        src.setdefault("client_id", self.member)
        self.txid = f"{d['transactional_id']}-{self.member}"
        self._claim_member = self.member
        bootstrap = src["bootstrap"]
        self.store = self._retrying(
            "open the checkpoint topic",
            lambda: CheckpointTopic(bootstrap, ck["topic"], g["name"], chunk_bytes=ck["chunk_bytes"]),
        )
        self.ckpt_path = repr(self.store)
        self.offsets = self._retrying(
            "open the group's offsets", lambda: StableOffsets(bootstrap, g["name"], self.member)
        )
        self._template = Model(**config["model"])
        self._dirty_streams, self._tokens, self._part_counts = set(), {}, {}
        self._fatal = None
        self._have_params, self.exchange, self._since_publish = True, None, 0
        self._replace_writer()

    def _attach_rebalance_callbacks(self):
        super()._attach_rebalance_callbacks()
        self.source.on_lost = self._partitions_lost

    def _closeables(self):
        return (_Closer(self._close_writer), self.store, self.offsets)

    def _partition_generations(self, stream):
        return self.store.generations(part=stream)

    # -- rebalance callbacks (on the source consumer's I/O thread, inside its poll)
    def _partitions_assigned(self, streams):
        """Load each assigned partition from its newest committed checkpoint, once no open transaction
        holds its offsets, and check the checkpoint's position against the group's committed offset."""
        timeout = self.cfg["daemon"]["transaction_timeout_seconds"] + 30.0
        try:
            committed = self.offsets.read(streams, timeout)
            self.store.refresh()
        except Exception as exc:  # noqa: BLE001 - raised again after poll, before any record is used
            log.error("partitions %s: %s", streams, exc)
            self._fatal = self._fatal or exc
            return {}
        positions = super()._partitions_assigned(streams)
        deadline = time.monotonic() + _MATCH_TIMEOUT_S
        while self._fatal is None:
            behind = [s for s in streams if committed.get(s) is not None and positions.get(s) != committed[s]]
            if not behind:
                break
            if time.monotonic() > deadline:
                self._fatal = CheckpointError(
                    f"partitions {behind}: the newest committed checkpoint is at {[positions.get(s) for s in behind]}, "
                    f"the group's committed offsets at {[committed[s] for s in behind]}"
                )
                break
            time.sleep(0.2)  # the transaction's markers reach the checkpoint topic a moment later
            self.store.refresh()
            positions.update(super()._partitions_assigned(behind))
        return positions

    def _partitions_revoked(self, streams):
        """Commit the open transaction (the leaving partitions' checkpoints and offsets with it) before
        the partitions go; if it cannot commit it is aborted, and the next owner resumes from their
        previous checkpoints."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced

        held = [s for s in streams if s in self.parts.streams]
        try:
            failure = self._commit_interval()
            if failure is not None:
                why, exc = failure
                self._check_not_zombie(why, exc)
                log.warning("transaction not committed on revocation of %s: %s", held, why)
                self._replace_writer()
        except ProducerFenced as exc:  # a zombie: stop (raised after poll)
            self._fatal = self._fatal or exc
        except Exception as exc:  # noqa: BLE001 - the next owner resumes from the last committed checkpoints
            log.error("could not commit on revocation of %s: %s", held, exc)
            self._writer_lost = True  # the next interval starts with a new producer
        self._release(held)

    def _partitions_lost(self, streams):
        """The group removed this member: its transaction cannot commit (its offsets would be fenced);
        abort it (a new producer aborts it for sure) and give the partitions up."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced

        log.warning("member %s lost partitions %s: aborting the open transaction", self.member, streams)
        self._unwritten = ([], [])
        try:
            self._check_not_zombie("the group removed this member")
            self._replace_writer()
        except ProducerFenced as exc:
            self._fatal = self._fatal or exc
        except Exception as exc:  # noqa: BLE001 - the next interval starts with a new producer
            log.error("aborting after losing %s: %s", streams, exc)
            self._writer_lost = True
        self._release([s for s in streams if s in self.parts.streams])

    def _release(self, streams):
        self._unwritten = ([], [])
        for stream in streams:
            self.parts.release(stream)
            self._dirty_streams.discard(stream)
            self._part_counts.pop(stream, None)

    # -- the transaction per checkpoint interval
    def checkpoint(self, commit_offsets=True, final=False):
        """Commit the interval's transaction: outputs, dead letters, the checkpoint of every owned
        partition with new records, and the offsets; True if committed. One that could not commit
        reloads every owned partition from its last committed checkpoint (False); a fenced zombie
        raises :class:`~streamrnn.connectors.kafka.transactional.ProducerFenced`."""
        if self._writer_lost:
            self._rewind("the previous commit did not complete")
            return False
        failure = self._commit_interval()
        if failure is not None:
            self._rewind(*failure)
            return False
        return True

    def _commit_interval(self):
        """Commit the open transaction with the dirty partitions' checkpoints and the offsets of the
        owned ones: None, or ``(why, exception)`` if it did not commit (see ``_commit``)."""
        self._write_unwritten()
        positions = self.source.positions()
        messages, saved = [], []
        for stream in self.parts.streams:
            if stream not in self._dirty_streams or positions.get(stream) is None:
                continue
            arrays, meta = self._partition_state(stream, positions)
            token = uuid.uuid4().hex
            meta.update(token=token, incarnation=self._incarnation, transactional_id=self.txid)
            messages += self.store.messages(b"".join(ckpt.pieces(arrays, meta)), token, part=stream)
            saved.append(stream)
        consumer = self.source.consumer
        assigned = {f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()}
        offsets = {s: p for s, p in positions.items() if s in assigned and s in self.parts.streams}
        failure = self._commit(messages, offsets, consumer.group_metadata())
        if failure is None:
            self._dirty_streams.difference_update(saved)
        return failure

    def _rewind(self, why, exc=None):
        """Stop if this member is a zombie; else every owned partition back to its last committed
        checkpoint (a new producer if the old one is unusable), and the source with them."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced

        self._unwritten = ([], [])
        self._check_not_zombie(why, exc)
        log.warning("transaction not committed: %s; reloading the owned partitions", why)
        if self._writer_lost or isinstance(exc, ProducerFenced):
            self._replace_writer()
        positions = {}
        for stream in list(self.parts.streams):
            self.parts.release(stream)
            self._dirty_streams.discard(stream)
            pos = self._load_partition(stream)
            if pos is not None:
                positions[stream] = pos
        self.source.rewind(positions)
        self._counted_rewind()
        log.info("rewound partitions to %s", positions)
