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


class ExactlyOnceDaemon(SingleDaemon):
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
        if sink is not None or dead_letter is not None:
            raise ValueError("exactly-once: the sinks are the transaction's; none may be given")
        self.writer = None
        self.store = None
        self._writer_lost = False
        try:
            super().__init__(config, source, None, None, progress)
        except BaseException:
            for obj in (_Closer(self._close_writer), self.store):
                if obj is not None:
                    try:
                        obj.close()
                    except Exception:  # noqa: BLE001 - closing after a failure: the failure is what matters
                        pass
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

    def _new_writer(self):
        from streamrnn.connectors.kafka.transactional import TransactionalProducer, TransactionalProducerProcess

        cfg = self.cfg
        options = dict(
            transaction_timeout_ms=int(cfg["daemon"]["transaction_timeout_seconds"] * 1000),
            max_request_size=max(1 << 20, cfg["checkpoint"]["chunk_bytes"] + (64 << 10)),
        )
        bootstrap = cfg["sink"]["bootstrap"]
        if cfg["sink"].get("process", True):
            give_up = cfg["daemon"]["retry_give_up_seconds"] or 600.0
            return TransactionalProducerProcess(bootstrap, self.txid, commit_timeout_s=give_up, **options)
        return TransactionalProducer(bootstrap, self.txid, **options)

    def _take_over(self):
        """A new producer (fencing every earlier one with the transactional id), this incarnation's
        claim committed, and the model rebuilt from the newest committed checkpoint (``_resume``)."""
        self._close_writer()
        self._incarnation = uuid.uuid4().hex
        self.writer = self._retrying("initialise the transactional producer", self._new_writer)
        for name in ("sink", "dead"):
            target = self.__dict__.get(name)
            if hasattr(target, "producer"):
                target.producer = self.writer
        self._retrying(
            "commit this daemon's claim", lambda: self.writer.commit([self.store.claim_message(self._incarnation)])
        )
        self._writer_lost = False
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

    def _closeables(self):
        return (_Closer(self._close_writer), self.store)

    # -- the transaction per checkpoint interval
    @property
    def saves_checkpoints(self):
        return True

    def checkpoint(self, commit_offsets=True, final=False):
        """Commit the interval's transaction: its outputs and dead letters, the checkpoint (model,
        positions, counts) and the offsets; True if committed. A transaction that could not commit
        (aborted, or timed out) rewinds the daemon to the last committed checkpoint (False); a
        fenced zombie raises :class:`~streamrnn.connectors.kafka.transactional.ProducerFenced`."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced, TransactionAborted

        from ..connectors.base import BrokerUnavailable

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
        try:
            self.writer.commit(messages, offsets, group)
        except ProducerFenced as exc:
            self._rewind(f"{exc} (no other daemon has claimed the id: the transaction timed out)", exc)
            return False
        except TransactionAborted as exc:
            self._rewind(str(exc), exc)
            return False
        except BrokerUnavailable:
            if not hasattr(self.writer, "pid"):
                raise  # in-process: the producer carries on, the retry commits again
            self._writer_lost = True  # the child was stopped: the next attempt takes over again
            raise
        self.stats["checkpoints"] += 1
        self._ckpt_failures = 0
        self._last_durable = time.monotonic()
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        return True

    def _flush_sinks(self):
        # outputs become visible only with their transaction: at idle, commit it
        if self._since_ckpt or self._unwritten[0] or self._unwritten[1]:
            self.checkpoint()

    def _rewind(self, why, exc=None):
        """A transaction did not commit: stop if another incarnation has claimed the transactional id
        since this one did (this daemon is a zombie: ProducerFenced); else back to the last committed
        checkpoint: a new producer, the model, the source positions and the counts as the checkpoint
        has them. The interval that did not commit is done again."""
        from streamrnn.connectors.kafka.transactional import ProducerFenced

        self._unwritten = ([], [])
        self._retrying("read the checkpoint topic", self.store.refresh)
        owner = self.store.claim()
        if owner != self._incarnation:
            msg = (
                f"{exc or why}; another daemon (incarnation {owner}) has taken transactional id {self.txid!r} "
                "over since this one started: stopping, nothing of this daemon's open transaction is visible"
            )
            log.error("%s", msg)
            self._stop = True
            raise ProducerFenced(msg) from None
        log.warning("transaction not committed: %s; rewinding to the last committed checkpoint", why)
        self._take_over()
        found, self._resume = self._resume, None
        positions = found[1]["positions"] if found is not None else {}
        self.source.rewind(positions)
        for k in PERSISTED_STATS:
            self.stats[k] = (found[1].get("daemon", {}) if found is not None else {}).get(k, 0)
        self._last_target.clear()
        self.stats["rewinds"] = self.stats.get("rewinds", 0) + 1
        self._since_ckpt = 0
        self._last_ckpt = time.monotonic()
        log.info("rewound to %s at %s", found[2] if found is not None else "the beginning", positions)

    def _summary_lines(self):
        return [
            f"  exactly-once     transactional id {self.txid} ({self.stats['checkpoints']} transactions "
            f"committed, {self.stats.get('rewinds', 0)} rewinds)"
        ]


class _Closer:
    def __init__(self, close):
        self.close = close
