"""The exactly-once runner: ``[daemon] processing_guarantee = "exactly-once"`` (one daemon).

One Kafka transaction per checkpoint interval holds the interval's outputs and dead letters, the
model state as of the interval's end (chunked, in the compacted ``checkpoint.topic``) and the
consumer offsets, so they commit together or not at all. A ``read_committed`` consumer of the
output topic sees every input's output once.

Start (and every take-over): a transactional producer with ``daemon.transactional_id`` calls
``init_transactions`` (the previous incarnation is fenced and its open transaction aborted), commits
a *claim* (this incarnation's id) to the checkpoint topic, then reads the topic with
``read_committed`` and resumes from the newest committed checkpoint; the source reads with
``read_committed`` too.

Failures:

- kill -9, a crash: the open transaction is aborted by the next incarnation's ``init_transactions``
  (or by the coordinator after ``transaction_timeout_seconds``); the restart resumes from the last
  committed checkpoint, so what the aborted transaction held is redone, and shown, once.
- Fenced (``ProducerFenced``): if the newest committed claim is another incarnation's, a newer
  daemon took over and this one is a zombie: it stops (exit status 2) with nothing of its open
  transaction visible. If the claim is still its own, the transaction outlived its timeout (the
  broker aborted it and fenced the producer with the same error): the daemon takes over again
  and rewinds to the last committed checkpoint.
- Any other failure of a transaction (``TransactionAborted``): aborted; the daemon rewinds.
- The broker unreachable: the producer retries its sends; a commit waits for the broker (at most
  ``daemon.retry_give_up_seconds``, then exit status 2).
- A commit that never completes (kafka-python's ``commit_transaction`` waits without bound; seen
  after a broker restart): with the producer in its child process, it is given up 15 s past
  ``daemon.transaction_timeout_seconds`` (the broker has aborted the transaction by then, or
  committed it), the child is stopped, and the daemon takes over again and rewinds to the newest
  committed checkpoint.
"""

from __future__ import annotations

import logging
import time
import uuid

from streamrnn import checkpoint as ckpt
from streamrnn.forecast import NextRecordForecaster
from streamrnn.model import Model

from .checkpoints import first_usable
from .io import make_sink, make_source
from .loop import PERSISTED_STATS
from .single import SingleDaemon

log = logging.getLogger("streamrnn.daemon")  # one logger for the whole service: operators filter on it
_COMMIT_MARGIN_S = 15.0  # a commit is given up this long after the transaction timeout


class Transactional:
    """What both exactly-once runners share (a mixin before the runner's class): the transactional
    producer (one incarnation per take-over, each committing its *claim*), the sinks writing into its
    open transaction, a ``read_committed`` source, and the commit of one interval's transaction.

    The runner sets ``txid``, ``store`` (a :class:`~streamrnn.connectors.kafka.transactional.CheckpointTopic`)
    and ``_claim_member`` (None for one daemon; the member's name in a group) before
    :meth:`_replace_writer`.
    """

    writer = None
    store = None
    _writer_lost = False
    _claim_member = None

    def _refuse_sinks(self, sink, dead_letter):
        if sink is not None or dead_letter is not None:
            raise ValueError("exactly-once: the sinks are the transaction's; none may be given")

    def _close_after_failure(self, *extra):
        for obj in (_Closer(self._close_writer), self.store, *extra):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing after a failure: the failure is what matters
                    pass

    def _new_writer(self):
        from streamrnn.connectors.kafka.transactional import TransactionalProducer, TransactionalProducerProcess

        cfg = self.cfg
        options = dict(
            transaction_timeout_ms=int(cfg["daemon"]["transaction_timeout_seconds"] * 1000),
            max_request_size=max(1 << 20, cfg["checkpoint"]["chunk_bytes"] + (64 << 10)),
        )
        bootstrap = cfg["sink"]["bootstrap"]
        if cfg["sink"].get("process", True):
            # kafka-python's commit_transaction() waits without bound (after a broker restart it can
            # wait for ever). Past the transaction timeout the broker has aborted the transaction
            # anyway: the child is then stopped and the daemon rewinds with a new producer.
            give_up = cfg["daemon"]["retry_give_up_seconds"] or 600.0
            bound = min(give_up, cfg["daemon"]["transaction_timeout_seconds"] + _COMMIT_MARGIN_S)
            return TransactionalProducerProcess(bootstrap, self.txid, commit_timeout_s=bound, **options)
        return TransactionalProducer(bootstrap, self.txid, **options)

    def _replace_writer(self):
        """A new producer (``init_transactions`` fences every earlier one with the transactional id and
        aborts its open transaction), the sinks pointed at it, this incarnation's claim committed."""
        self._close_writer()
        self._incarnation = uuid.uuid4().hex
        self.writer = self._retrying("initialise the transactional producer", self._new_writer)
        for name in ("sink", "dead"):
            target = self.__dict__.get(name)
            if hasattr(target, "producer"):
                target.producer = self.writer
        claim = self.store.claim_message(self._incarnation, self._claim_member)
        self._retrying("commit this daemon's claim", lambda: self.writer.commit([claim]))
        self._writer_lost = False

    def _close_writer(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - replaced anyway; its transaction is left to abort
                log.warning("closing the transactional producer: %s", exc)
            self.writer = None

    def _make_source(self, section, max_record_bytes):
        return make_source(section, max_record_bytes, isolation_level="read_committed")

    def _make_sink(self, section):
        from streamrnn.connectors.kafka.transactional import TopicWriter

        if section["type"] == "kafka":
            return TopicWriter(self.writer, section["topic"])
        return make_sink(section)  # "none" (validated)

    @property
    def saves_checkpoints(self):
        """Always: every checkpoint is a transaction."""
        return True

    def _flush_sinks(self):
        # outputs become visible only with their transaction: at idle, commit it
        if self._since_ckpt or self._unwritten[0] or self._unwritten[1]:
            self.checkpoint()

    def _commit(self, messages, offsets=None, group=None):
        """Commit the open transaction with ``messages`` (the checkpoint) and ``offsets`` (with the
        consumer's ``group`` metadata): None when committed, else ``(why, exception)`` (aborted, or
        fenced: nothing of it is visible). BrokerUnavailable propagates (a child producer that did
        not answer is then replaced at the next attempt)."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced, TransactionAborted

        from ..connectors.base import BrokerUnavailable

        try:
            self.writer.commit(messages, offsets, group)
        except ProducerFenced as exc:
            return f"{exc} (no other daemon has claimed the id: the transaction timed out)", exc
        except TransactionAborted as exc:
            return str(exc), exc
        except BrokerUnavailable:
            if hasattr(self.writer, "pid"):
                self._writer_lost = True  # the child was stopped: the next attempt takes over again
            raise
        self.stats["checkpoints"] += 1
        self._ckpt_failures = 0
        self._last_durable = time.monotonic()
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        return None

    def _check_not_zombie(self, why, exc=None):
        """Raise ProducerFenced (and stop) if another incarnation has claimed the transactional id
        since this one did: this daemon is then a zombie, and nothing of its open transaction is
        visible."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced

        self._retrying("read the checkpoint topic", self.store.refresh)
        owner = self.store.claim(self._claim_member)
        if owner != self._incarnation:
            msg = (
                f"{exc or why}; another daemon (incarnation {owner}) has taken transactional id {self.txid!r} "
                "over since this one started: stopping, nothing of this daemon's open transaction is visible"
            )
            log.error("%s", msg)
            self._stop = True
            raise ProducerFenced(msg) from None

    def _counted_rewind(self):
        self._last_target.clear()
        self.stats["rewinds"] = self.stats.get("rewinds", 0) + 1
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()

    def _summary_lines(self):
        return [
            *super()._summary_lines(),
            f"  exactly-once     transactional id {self.txid} ({self.stats['checkpoints']} transactions "
            f"committed, {self.stats.get('rewinds', 0)} rewinds)",
        ]


class ExactlyOnceDaemon(Transactional, SingleDaemon):
    """A single daemon whose outputs, dead letters, checkpoint and offsets commit in one Kafka
    transaction per checkpoint interval (see the module's description).

    Parameters
    ----------
    config : dict
        A validated config with ``daemon.processing_guarantee = "exactly-once"`` (Kafka source and
        sink; see :func:`streamrnn.service.config.validate_config`).
    source, progress
        As for :class:`~streamrnn.service.loop.Daemon` (the sinks are always the transaction's).
    """

    def __init__(self, config, source=None, sink=None, dead_letter=None, progress=None):
        self._refuse_sinks(sink, dead_letter)
        try:
            super().__init__(config, source, None, None, progress)
        except BaseException:
            self._close_after_failure()
            raise

    # -- the transaction's producer and the checkpoint topic
    def _open_state(self, config):
        from streamrnn.connectors.kafka.transactional import CheckpointTopic

        d, ck = config["daemon"], config["checkpoint"]
        self.txid = d["transactional_id"]
        bootstrap = config["source"]["bootstrap"]
        self.store = self._retrying(
            "open the checkpoint topic",
            lambda: CheckpointTopic(bootstrap, ck["topic"], self.txid, chunk_bytes=ck["chunk_bytes"]),
        )
        self.ckpt_path = repr(self.store)
        self._take_over()

    def _take_over(self):
        """A new producer (fencing every earlier one with the transactional id), this incarnation's
        claim committed, and the model rebuilt from the newest committed checkpoint (``_resume``)."""
        self._replace_writer()
        self._retrying("read the checkpoint topic", self.store.refresh)
        config = self.cfg
        self.model = Model(**config["model"])
        self.forecaster = NextRecordForecaster(self.model) if config["schema"].get("forecast") else None
        self._resume = first_usable(
            self.store.generations(check=self._check_header),
            self._restore,
            lambda: self.model.allocate_for_load,
            what=f"{self.ckpt_path}: ",
        )

    def _closeables(self):
        return (_Closer(self._close_writer), self.store)

    def _attach_rebalance_callbacks(self):
        """Nothing is committed when partitions are revoked (unlike the at-least-once checkpoint): the
        daemon is its group's only member, so they come back to it, at the positions the source keeps
        (``KafkaSource`` seeks them there on assignment), and the open transaction is committed at the
        next checkpoint with the new generation's group metadata. A transaction (and, if it failed, a
        rewind: a new producer process, the checkpoint topic read, the model rebuilt) inside
        kafka-python's rebalance callback would run on the consumer's I/O thread, which meanwhile
        cannot heartbeat, fetch, nor complete the rejoin."""

    # -- the transaction per checkpoint interval
    def checkpoint(self, commit_offsets=True, final=False):
        """Commit the interval's transaction: its outputs and dead letters, the checkpoint (model,
        positions, counts) and the offsets; True if committed. A transaction that could not commit
        (aborted, or timed out) rewinds the daemon to the last committed checkpoint (False); a
        fenced zombie raises :class:`~streamrnn.connectors.kafka.transactional.ProducerFenced`."""
        if self._writer_lost:  # a commit that never completed: its transaction is left to abort
            self._rewind("the broker did not complete the previous commit")
            return False
        self._write_unwritten()
        positions = self.source.positions()
        arrays, meta = self._checkpoint_contents(positions)
        token = uuid.uuid4().hex
        meta.update(token=token, incarnation=self._incarnation, transactional_id=self.txid)
        messages = self.store.messages(b"".join(ckpt.pieces(arrays, meta)), token)
        offsets, group = None, None
        consumer = getattr(self.source, "consumer", None)
        if commit_offsets and consumer is not None:
            assigned = {f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()}
            offsets = {s: p for s, p in positions.items() if s in assigned}
            group = consumer.group_metadata()
        failure = self._commit(messages, offsets, group)
        if failure is not None:
            self._rewind(*failure)
            return False
        return True

    def _rewind(self, why, exc=None):
        """A transaction did not commit: stop if another incarnation has claimed the transactional id
        since this one did (this daemon is a zombie: ProducerFenced); else back to the last committed
        checkpoint: a new producer, the model, the source positions and the counts as the checkpoint
        has them. The interval that did not commit is done again."""
        self._unwritten = ([], [])
        self._check_not_zombie(why, exc)
        log.warning("transaction not committed: %s; rewinding to the last committed checkpoint", why)
        self._take_over()
        found, self._resume = self._resume, None
        positions = found[1]["positions"] if found is not None else {}
        self.source.rewind(positions)
        for k in PERSISTED_STATS:
            self.stats[k] = (found[1].get("daemon", {}) if found is not None else {}).get(k, 0)
        self._counted_rewind()
        log.info("rewound to %s at %s", found[2] if found is not None else "the beginning", positions)


class _Closer:
    def __init__(self, close):
        self.close = close
