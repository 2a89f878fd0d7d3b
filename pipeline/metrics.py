"""Prometheus metrics of the long-running Kafka services: the worker and the vault sink.

Every metric lives in the registry its owner holds, so several services (tests, the
benchmark, the demo) can run in one process without clashing. The worker counts only after a
transaction commits, so an aborted and retried batch is never counted twice and the counters
reconcile like the committed topics do: ``in == retention == analytics + dlq + suppressed``.
The vault sink counts a batch once it is stored, so its counters reconcile like its summary:
``records == stored + duplicate + expired``.

Public API:
    ``WorkerMetrics(registry=None)``     the worker's metric set (a fresh registry by default)
    ``.observe_commit(counts, reasons, records, seconds, segments)``  one committed batch
    ``.observe_abort(reason)``           one aborted transaction
    ``.set_lag(partition_lags)``         consumer lag per assigned input partition
    ``VaultSinkMetrics(registry=None)``  the vault sink's: ``.observe_batch(totals, seconds)``, ``.set_lag``
    ``.serve(port, addr="0.0.0.0")``     start the /metrics HTTP endpoint (returns the server)
    ``partition_lags(consumer, tps)``    records behind each partition's end, from cached watermarks
    ``add_metrics_arguments(parser)``, ``serve_metrics(metrics, port, addr)``, ``stop_metrics(server)``
                                         the ``--metrics-port``/``--metrics-addr`` flags every service shares
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pipeline.cli import UsageError

log = logging.getLogger(__name__)

#: Routes a record can take; "suppressed" is counted apart since it is not written to analytics.
ROUTES = ("analytics", "retention", "dlq")
#: Batch sizes in records: the worker's default batch is 20k; consume() may return fewer.
BATCH_RECORD_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000)
#: Seconds from consume() returning to the commit (route, produce, commit).
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: What happens to each record the vault sink reads (they add up to all records read).
VAULT_OUTCOMES = ("stored", "duplicate", "expired")


def partition_lags(consumer: Consumer, tps: Sequence[TopicPartition]) -> dict[int, int] | None:
    """Records behind the end of each partition in ``tps`` (cached watermarks: no broker call).

    None when the consumer cannot say where it is (e.g. during a rebalance); the caller keeps
    its last figure.
    """
    if not tps:
        return {}
    try:
        positions = consumer.position(list(tps))
    except KafkaException:
        return None
    lags: dict[int, int] = {}
    for tp in positions:
        try:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            continue
        if high >= 0 and tp.offset >= 0:
            lags[tp.partition] = max(0, high - tp.offset)
    return lags


class _Metrics:
    """A metric set in its own registry, with per-partition lag gauges and an HTTP endpoint."""

    def __init__(self, registry: CollectorRegistry | None, lag_prefix: str, lag_unit: str) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.lag = Gauge(f"{lag_prefix}consumer_lag", f"{lag_unit} behind the input partition's end, per partition",
                         ["partition"], registry=self.registry)
        self.lag_total = Gauge(f"{lag_prefix}consumer_lag_total", f"{lag_unit} behind, summed over owned partitions",
                               registry=self.registry)
        self._lag_partitions: set[str] = set()
        self._lock = threading.Lock()

    def set_lag(self, partition_lags: Mapping[int, int]) -> None:
        """Replace the lag gauges with those of the partitions owned now (stale ones removed)."""
        with self._lock:
            now = {str(p) for p in partition_lags}
            for gone in self._lag_partitions - now:
                self.lag.remove(gone)
            for p, lag in partition_lags.items():
                self.lag.labels(str(p)).set(lag)
            self._lag_partitions = now
            self.lag_total.set(sum(partition_lags.values()))

    def serve(self, port: int, addr: str = "0.0.0.0") -> WSGIServer:
        """Serve /metrics on ``addr:port`` from a daemon thread; ``.shutdown()`` the result to stop."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


class WorkerMetrics(_Metrics):
    """The worker's counters, histograms and gauges, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, "cdrpipe_", "Records")
        r = self.registry
        self.records_in = Counter("cdrpipe_records_in", "Input records in committed batches", registry=r)
        self.records_out = Counter("cdrpipe_records_out", "Records written per route in committed batches",
                                   ["route"], registry=r)
        self.suppressed = Counter("cdrpipe_records_suppressed",
                                  "Valid records kept out of analytics for a suppressed subscriber", registry=r)
        self.dlq_reasons = Counter("cdrpipe_dlq_records", "Dead-lettered records by reason code",
                                   ["reason"], registry=r)
        self.segments = Counter("cdrpipe_retention_segments", "Sealed retention segments written", registry=r)
        self.batch_records = Histogram("cdrpipe_batch_records", "Records per committed batch",
                                       buckets=BATCH_RECORD_BUCKETS, registry=r)
        self.batch_seconds = Histogram("cdrpipe_batch_seconds",
                                       "Seconds to route, produce and commit one batch",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.transactions = Counter("cdrpipe_transactions", "Kafka transactions by outcome",
                                    ["outcome"], registry=r)
        self.aborts = Counter("cdrpipe_transaction_aborts", "Aborted transactions by cause",
                              ["cause"], registry=r)
        self.rebalances = Counter("cdrpipe_rebalances", "Partition assignment changes by kind",
                                  ["kind"], registry=r)
        self.assigned = Gauge("cdrpipe_assigned_partitions", "Input partitions this worker owns", registry=r)
        for route in ROUTES:  # export zeros from the start, so rate() works on the first scrape
            self.records_out.labels(route)
        for outcome in ("commit", "abort"):
            self.transactions.labels(outcome)

    def observe_commit(self, counts: Mapping[str, int], reasons: Mapping[str, int], records: int,
                       seconds: float, segments: int) -> None:
        """Count one committed batch (``counts`` as the core's ``RoutedBatch.counts``)."""
        self.records_in.inc(counts.get("in", 0))
        for route in ROUTES:
            self.records_out.labels(route).inc(counts.get(route, 0))
        self.suppressed.inc(counts.get("suppressed", 0))
        for reason, n in reasons.items():
            self.dlq_reasons.labels(reason).inc(n)
        self.segments.inc(segments)
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        self.transactions.labels("commit").inc()

    def observe_abort(self, cause: str) -> None:
        """Count one aborted transaction and why (a short code, never record contents)."""
        self.transactions.labels("abort").inc()
        self.aborts.labels(cause).inc()

    def observe_rebalance(self, kind: str, n_assigned: int) -> None:
        """Count an assign/revoke/lost event and export the new partition count."""
        self.rebalances.labels(kind).inc()
        self.assigned.set(n_assigned)


class VaultSinkMetrics(_Metrics):
    """The vault sink's counters: records by outcome, segments, batches, offset commits and lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, "cdrpipe_vault_", "Retention messages (sealed segments)")
        r = self.registry
        self.records = Counter("cdrpipe_vault_records", "Records read from retention segments, by outcome",
                               ["outcome"], registry=r)
        self.unparsed = Counter("cdrpipe_vault_unparsed_records",
                                "New records whose raw text could not be parsed (kept, dated by sealing time)",
                                registry=r)
        self.segments = Counter("cdrpipe_vault_segments", "Retention segments opened or quarantined",
                                ["outcome"], registry=r)
        self.batch_records = Histogram("cdrpipe_vault_batch_records", "Records per stored batch",
                                       buckets=BATCH_RECORD_BUCKETS, registry=r)
        self.batch_seconds = Histogram("cdrpipe_vault_batch_seconds",
                                       "Seconds from consume() returning to the batch stored and its offsets committed",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.commit_failures = Counter("cdrpipe_vault_offset_commit_failures",
                                       "Offset commits refused (the batch is re-read and deduplicated)", registry=r)
        for outcome in VAULT_OUTCOMES:  # zeros from the start, so rate() works on the first scrape
            self.records.labels(outcome)
        for outcome in ("opened", "quarantined"):
            self.segments.labels(outcome)

    def observe_batch(self, totals: Any, seconds: float) -> None:
        """Count one stored batch (``totals`` as :class:`pipeline.vault.ingest.IngestTotals`)."""
        self.records.labels("stored").inc(totals.stored)
        self.records.labels("duplicate").inc(totals.duplicates)
        self.records.labels("expired").inc(totals.expired)
        self.unparsed.inc(totals.unparsed)
        self.segments.labels("opened").inc(totals.segments)
        self.segments.labels("quarantined").inc(totals.quarantined)
        self.batch_records.observe(totals.records)
        self.batch_seconds.observe(seconds)


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-addr`` (env ``CDRPIPE_METRICS_PORT``/``_ADDR``), alike for every service."""
    parser.add_argument("--metrics-port", type=int, default=os.environ.get("CDRPIPE_METRICS_PORT"),
                        help="serve Prometheus metrics on this port (env CDRPIPE_METRICS_PORT; 0 picks one; "
                             "default off)")
    parser.add_argument("--metrics-addr", default=os.environ.get("CDRPIPE_METRICS_ADDR", "0.0.0.0"),
                        help="address for the metrics endpoint (env CDRPIPE_METRICS_ADDR; default 0.0.0.0)")


def serve_metrics(metrics: _Metrics, port: int | None, addr: str) -> WSGIServer | None:
    """Start /metrics when a port is given; a port that cannot be bound is a usage error saying what to do."""
    if port is None:
        return None
    try:
        server = metrics.serve(port, addr)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: {exc.strerror}; choose a free port") from None
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server


def stop_metrics(server: WSGIServer | None) -> None:
    """Stop an endpoint :func:`serve_metrics` started (None: nothing to stop)."""
    if server is not None:
        server.shutdown()
        server.server_close()
