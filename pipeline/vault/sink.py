"""Feeding the vault: from the ``cdr.retention`` topic (``vault sink``) or from a file (``vault ingest``).

Both read batches of segment envelopes into a :class:`BatchPipeline`: the calling thread
prepares batch *k+1* (open, parse, index, encrypt) while a writer thread inserts batch *k* in
one database transaction. The Kafka sink reads ``read_committed`` (it never sees a worker's
aborted transaction) and commits a batch's consumer offsets only after that batch is
committed (and synced) to the database. A crash in between re-delivers the batch, and ingest
is idempotent by record id, so every record is stored exactly once.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.metrics import VaultSinkMetrics, partition_lags
from pipeline.runners.files import iter_line_batches
from pipeline.topics import RETENTION
from pipeline.vault.audit import ENV_AUDIT_PUBLIC_KEY
from pipeline.vault.ingest import Ingester, IngestTotals

log = logging.getLogger(__name__)

DEFAULT_TOPIC = RETENTION
DEFAULT_GROUP = "cdrpipe-vault"
DEFAULT_BATCH_BYTES = 16 << 20
DEFAULT_MAX_MESSAGES = 64
PROGRESS_SECONDS = 10.0
LAG_SECONDS = 1.0
ASSIGN_GRACE_SECONDS = 30.0


def iter_envelope_batches(stream: BinaryIO, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[list[bytes]]:
    """Non-empty lines of a retention (or DLQ) JSONL file, in batches of about ``batch_bytes``."""
    for lines in iter_line_batches(stream, batch_bytes):
        batch = [line for line in lines if line.strip()]
        if batch:
            yield batch


class BatchPipeline:
    """Prepares the next batch on the calling thread while one writer thread inserts the last one.

    ``on_written(totals, token)`` runs on the calling thread once a batch is committed (the
    Kafka sink commits that batch's offsets there). Write errors surface on the next
    :meth:`submit` or on :meth:`flush`.
    """

    def __init__(self, ingester: Ingester, on_written: Callable[[IngestTotals, Any], None] | None = None) -> None:
        self.ingester = ingester
        self.totals = IngestTotals()
        self._on_written = on_written
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vault-writer")
        self._inflight: tuple[Future[IngestTotals], Any] | None = None

    def __repr__(self) -> str:
        return f"BatchPipeline(ingester={self.ingester!r})"

    def submit(self, envelopes: Sequence[bytes], token: Any = None) -> None:
        """Prepare ``envelopes`` now, then hand them to the writer once the previous batch is committed."""
        prepared = self.ingester.prepare(envelopes)
        self._finish()
        self.ingester.pending_ids = prepared.record_ids
        self._inflight = (self._pool.submit(self.ingester.write, prepared), token)

    def _finish(self) -> None:
        if self._inflight is None:
            return
        future, token = self._inflight
        self._inflight = None
        totals = future.result()
        self.totals.add(totals)
        if self._on_written is not None:
            self._on_written(totals, token)

    def flush(self) -> None:
        """Wait until everything submitted is committed."""
        self._finish()
        self.ingester.pending_ids = frozenset()

    def close(self) -> None:
        """Flush, then stop the writer thread."""
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)


def ingest_file(ingester: Ingester, path: str, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                progress: bool = False) -> IngestTotals:
    """Ingest every envelope of ``path`` (``-`` for stdin); each batch is one transaction."""
    started = last = time.monotonic()
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    pipeline = BatchPipeline(ingester)
    try:
        for batch in iter_envelope_batches(stream, batch_bytes):
            pipeline.submit(batch)
            now = time.monotonic()
            if progress and now - last >= 2.0:
                last = now
                done = pipeline.totals
                print(f"ingested {done.records:,} records ({done.stored:,} new), "
                      f"{done.records / (now - started):,.0f} records/s", file=sys.stderr, flush=True)
    finally:
        try:
            pipeline.close()
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    return pipeline.totals


class VaultSink:
    """Consumes retention envelopes from Kafka into the vault until stopped (or idle, if asked)."""

    def __init__(self, ingester: Ingester, client_config: dict[str, str], *, topic: str = DEFAULT_TOPIC,
                 group: str = DEFAULT_GROUP, max_messages: int = DEFAULT_MAX_MESSAGES,
                 poll_seconds: float = 1.0, metrics: VaultSinkMetrics | None = None) -> None:
        self.ingester = ingester
        self.metrics = metrics
        self.topic = topic
        self.group = group
        self.max_messages = max_messages
        self.poll_seconds = poll_seconds
        self.stop_event = threading.Event()
        self._config = {
            **client_config,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # End-of-partition events tell the lag in seconds that only commit markers remain.
            "enable.partition.eof": True,
        }

    def __repr__(self) -> str:
        return f"VaultSink(topic={self.topic!r}, group={self.group!r})"

    def stop(self) -> None:
        """Finish the batch in flight, commit it, and return from :meth:`run` (safe from a signal handler)."""
        self.stop_event.set()

    def run(self, *, idle_exit: float | None = None) -> IngestTotals:
        """Consume, store, commit offsets; returns the totals when stopped, or idle for ``idle_exit`` seconds
        after partitions were assigned (or ``ASSIGN_GRACE_SECONDS`` longer if none ever are).

        Raises:
            KafkaException: a fatal consumer error (bad configuration, authorisation).
            WrongVaultKeyError: a segment sealed for another vault key (its offsets are not committed).
        """
        consumer = Consumer(self._config)
        metrics = self.metrics
        # Audit verification, the last purge and the oldest day, exported for the on-call alerts.
        store, keystore = self.ingester.store, self.ingester.keystore
        stop_checks = metrics.watch_vault(getattr(store, "url", None) or store.path,  # PostgreSQL: with credentials
                                          keystore.url or keystore.path,
                                          os.environ.get(ENV_AUDIT_PUBLIC_KEY)) if metrics else None

        def commit(totals: IngestTotals, token: tuple[list[TopicPartition], float]) -> None:
            offsets, consumed_at = token
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # e.g. partitions moved in a rebalance: the new owner re-reads, dedupes
                log.warning("vault sink: offset commit failed (%s); those records may be re-read and deduplicated",
                            exc.args[0].str() if exc.args else exc)
                if metrics:
                    metrics.commit_failures.inc()
            if metrics:
                metrics.observe_batch(totals, time.monotonic() - consumed_at)

        pipeline = BatchPipeline(self.ingester, on_written=commit)
        started = last_report = last_lag = time.monotonic()
        # The idle clock starts once partitions are assigned (joining a group takes a moment).
        last_data = started + ASSIGN_GRACE_SECONDS

        def assigned(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
            nonlocal last_data
            last_data = min(last_data, time.monotonic())

        consumer.subscribe([self.topic], on_assign=assigned, on_revoke=lambda _c, _parts: pipeline.flush())
        try:
            while not self.stop_event.is_set():
                messages = consumer.consume(num_messages=self.max_messages, timeout=self.poll_seconds)
                values: list[bytes] = []
                ends: dict[tuple[str, int], int] = {}
                stamps: dict[int, int] = {}  # newest message time per partition, for the lag in seconds
                at_end: set[int] = set()
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.fatal() or err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                         KafkaError.GROUP_AUTHORIZATION_FAILED):
                            raise KafkaException(err)
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                        else:
                            log.warning("consumer: %s", err.str())
                        continue
                    ends[(msg.topic(), msg.partition())] = msg.offset() + 1
                    stamps[msg.partition()] = msg.timestamp()[1]
                    at_end.discard(msg.partition())
                    if msg.value():
                        values.append(msg.value())
                now = time.monotonic()
                if metrics and (stamps or at_end):
                    metrics.note_read(stamps, at_end)
                if metrics and now - last_lag >= LAG_SECONDS:
                    last_lag = now
                    lags = partition_lags(consumer, consumer.assignment())
                    if lags is not None:
                        metrics.set_lag(lags)
                if not ends:
                    if idle_exit is not None and now - last_data >= idle_exit:
                        break
                    continue
                last_data = now
                pipeline.submit(values, ([TopicPartition(t, p, o) for (t, p), o in ends.items()], now))
                if now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    done = pipeline.totals
                    log.info("vault sink: %d records read, %d stored, %d duplicates, %d quarantined (%.0f records/s)",
                             done.records, done.stored, done.duplicates, done.quarantined,
                             done.records / max(now - started, 1e-9))
        finally:
            try:
                pipeline.close()  # the batch in flight is committed and its offsets too
            finally:
                consumer.close()
                if stop_checks is not None:
                    stop_checks()
        return pipeline.totals
