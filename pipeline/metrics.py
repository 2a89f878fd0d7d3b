"""Prometheus metrics of the Kafka worker: what it read, routed, committed and how far behind it is.

Every metric lives in the registry a ``WorkerMetrics`` owns, so several workers (tests, the
benchmark, the demo) can run in one process without clashing. Counts are added only after a
transaction commits, so an aborted and retried batch is never counted twice and the counters
always reconcile like the committed topics do: ``in == retention == analytics + dlq + suppressed``.

Public API:
    ``WorkerMetrics(registry=None)``     the metric set (a fresh registry by default)
    ``.observe_commit(counts, reasons, records, seconds, segments)``  one committed batch
    ``.observe_abort(reason)``           one aborted transaction
    ``.set_lag(partition_lags)``         consumer lag per assigned input partition
    ``.serve(port, addr="0.0.0.0")``     start the /metrics HTTP endpoint (returns the server)
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Routes a record can take; "suppressed" is counted apart since it is not written to analytics.
ROUTES = ("analytics", "retention", "dlq")
#: Batch sizes in records: the worker's default batch is 20k; consume() may return fewer.
BATCH_RECORD_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000)
#: Seconds from consume() returning to the commit (route, produce, commit).
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """The worker's counters, histograms and gauges, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        self.lag = Gauge("cdrpipe_consumer_lag", "Records behind the input partition's end, per partition",
                         ["partition"], registry=r)
        self.lag_total = Gauge("cdrpipe_consumer_lag_total", "Records behind, summed over owned partitions",
                               registry=r)
        for route in ROUTES:  # export zeros from the start, so rate() works on the first scrape
            self.records_out.labels(route)
        for outcome in ("commit", "abort"):
            self.transactions.labels(outcome)
        self._lag_partitions: set[str] = set()
        self._lock = threading.Lock()

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
