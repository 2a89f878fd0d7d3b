"""Feeding the vault: from the ``cdr.retention`` topic (``vault sink``) or from a file (``vault ingest``).

Both read batches of segment envelopes and hand them to :class:`~pipeline.vault.ingest.Ingester`,
which stores a batch in one database transaction. The Kafka sink reads ``read_committed`` (it
never sees a worker's aborted transaction) and commits its consumer offsets only after the
batch is committed to the database. A crash in between re-delivers the batch, and ingest is
idempotent by record id, so every record is stored exactly once.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from confluent_kafka import Consumer, KafkaError, KafkaException

from pipeline.runners.files import iter_line_batches
from pipeline.vault.ingest import Ingester, IngestTotals

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "cdr.retention"
DEFAULT_GROUP = "cdrpipe-vault"
DEFAULT_BATCH_BYTES = 16 << 20
DEFAULT_MAX_MESSAGES = 64
PROGRESS_SECONDS = 10.0


def iter_envelope_batches(stream: BinaryIO, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[list[bytes]]:
    """Non-empty lines of a retention (or DLQ) JSONL file, in batches of about ``batch_bytes``."""
    for lines in iter_line_batches(stream, batch_bytes):
        batch = [line for line in lines if line.strip()]
        if batch:
            yield batch


def ingest_file(ingester: Ingester, path: str, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                progress: bool = False) -> IngestTotals:
    """Ingest every envelope of ``path`` (``-`` for stdin); each batch is one transaction."""
    totals = IngestTotals()
    started = last = time.monotonic()
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for batch in iter_envelope_batches(stream, batch_bytes):
            totals.add(ingester.ingest(batch))
            now = time.monotonic()
            if progress and now - last >= 2.0:
                last = now
                print(f"ingested {totals.records:,} records ({totals.stored:,} new), "
                      f"{totals.records / (now - started):,.0f} records/s", file=sys.stderr, flush=True)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return totals


class VaultSink:
    """Consumes retention envelopes from Kafka into the vault until stopped (or idle, if asked)."""

    def __init__(self, ingester: Ingester, client_config: dict[str, str], *, topic: str = DEFAULT_TOPIC,
                 group: str = DEFAULT_GROUP, max_messages: int = DEFAULT_MAX_MESSAGES,
                 poll_seconds: float = 1.0) -> None:
        self.ingester = ingester
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
        }

    def __repr__(self) -> str:
        return f"VaultSink(topic={self.topic!r}, group={self.group!r})"

    def stop(self) -> None:
        """Finish the batch in flight, commit it, and return from :meth:`run` (safe from a signal handler)."""
        self.stop_event.set()

    def run(self, *, idle_exit: float | None = None) -> IngestTotals:
        """Consume, store, commit offsets; returns the totals when stopped or idle for ``idle_exit`` seconds.

        Raises:
            KafkaException: a fatal consumer error (bad configuration, authorisation).
            WrongVaultKeyError: a segment sealed for another vault key (offsets are not committed).
        """
        totals = IngestTotals()
        consumer = Consumer(self._config)
        consumer.subscribe([self.topic])
        started = last_report = last_data = time.monotonic()
        try:
            while not self.stop_event.is_set():
                messages = consumer.consume(num_messages=self.max_messages, timeout=self.poll_seconds)
                values = []
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.fatal() or err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                         KafkaError.GROUP_AUTHORIZATION_FAILED):
                            raise KafkaException(err)
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", err.str())
                        continue
                    if msg.value():
                        values.append(msg.value())
                now = time.monotonic()
                if not messages:
                    if idle_exit is not None and now - last_data >= idle_exit:
                        break
                    continue
                last_data = now
                if values:
                    totals.add(self.ingester.ingest(values))
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:  # nothing to commit after a rebalance: the next batch will
                    if exc.args and exc.args[0].code() != KafkaError._NO_OFFSET:
                        raise
                if now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    log.info("vault sink: %d records read, %d stored, %d duplicates, %d quarantined (%.0f records/s)",
                             totals.records, totals.stored, totals.duplicates, totals.quarantined,
                             totals.records / max(now - started, 1e-9))
        finally:
            consumer.close()
        return totals

