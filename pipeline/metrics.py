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
    ``.observe_format(looks_like, readable)``  a batch no record of which was readable as --format
    ``.set_lag(partition_lags)``         consumer lag per assigned input partition
    ``.follow_suppressions(follower)``   export the suppression list's size and age (scrape time)
    ``VaultSinkMetrics(registry=None)``  the vault sink's: ``.observe_batch(totals, seconds)``, ``.set_lag``
    ``.note_read(timestamps, at_end)``   newest message time read per partition, partitions at their end
    ``.check_vault(db, keystore, public_key)``  audit verification, last purge, oldest day held
    ``.watch_vault(db, keystore, public_key, interval)``  the same every ``interval`` s on a thread
    ``.serve(port, addr="0.0.0.0")``     start the /metrics HTTP endpoint (returns the server)
    ``partition_lags(consumer, tps)``    records behind each partition's end, from cached watermarks
    ``serve_metrics(metrics, port, addr)``, ``stop_metrics(server)``
                                         the ``--metrics-port``/``--metrics-addr`` flags every service shares
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from pipeline.errors import UsageError

log = logging.getLogger(__name__)

#: Routes a record can take; "suppressed" is counted apart since it is not written to analytics.
ROUTES = ("analytics", "retention", "dlq")
#: Batch sizes in records: the worker's default batch is 20k; consume() may return fewer.
BATCH_RECORD_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000)
#: Seconds from consume() returning to the commit (route, produce, commit).
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: What happens to each record the vault sink reads (they add up to all records read).
VAULT_OUTCOMES = ("stored", "duplicate", "expired")
#: Seconds between the vault sink's checks of its database (audit chain, purge, oldest day): the audit
#: log lists every disclosed record id, so a full verification is not free; four chances an hour.
VAULT_CHECK_SECONDS = 900.0


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
        self.nulled = Counter("cdrpipe_values_nulled", "Optional values written as null to analytics (the record "
                              "kept), by field and reason, e.g. a cell id in no known form", ["field", "reason"],
                              registry=r)
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
        self.format_mismatch = Counter("cdrpipe_format_mismatch_batches",
                                       "Committed batches in which no record could be read as --format, by what the "
                                       "records look like (a wrong --format, or a producer writing another format); "
                                       "looks_like header_mismatch: a CSV header in another order than the mapping",
                                       ["looks_like"], registry=r)
        self.format_mismatch_now = Gauge("cdrpipe_format_mismatch",
                                         "1 while the last batch read no record as --format and looked like another "
                                         "format; 0 once a batch has a readable record", registry=r)
        for route in ROUTES:  # export zeros from the start, so rate() works on the first scrape
            self.records_out.labels(route)
        for outcome in ("commit", "abort"):
            self.transactions.labels(outcome)
        # Alerts ask "no commit for N minutes while input waits": counting from the start keeps a
        # fresh worker from looking stalled since 1970 before its first batch.
        self.last_commit = Gauge("cdrpipe_last_commit_timestamp_seconds",
                                 "Unix time of the last committed transaction (the worker's start until the first)",
                                 registry=r)
        self.last_commit.set_to_current_time()

    def follow_suppressions(self, follower: Any) -> None:
        """Export the size and age of the suppression list a :class:`SuppressionFollower` keeps current.

        The age is read at scrape time: seconds since the follower last saw itself at the end of
        every partition of ``privacy.suppressions``. A growing age means objections published
        since then may not be applied, so the worker would keep publishing those subscribers.
        """
        active = Gauge("cdrpipe_suppressions_active", "Subscribers (tokens) suppressed from analytics now",
                       registry=self.registry)
        active.set_function(lambda: float(follower.active_count))
        age = Gauge("cdrpipe_suppressions_age_seconds",
                    "Seconds since the suppression list was last known to hold all of privacy.suppressions",
                    registry=self.registry)
        age.set_function(lambda: math.nan if follower.current_at is None else max(0.0, time.time() - follower.current_at))

    def observe_commit(self, counts: Mapping[str, int], reasons: Mapping[str, int], records: int,
                       seconds: float, segments: int, nulled: Mapping[str, int] | None = None) -> None:
        """Count one committed batch (``counts`` as the core's ``RoutedBatch.counts``, ``nulled`` its ``field:reason``s)."""
        for key, n in (nulled or {}).items():
            field_name, _, reason = key.partition(":")
            self.nulled.labels(field_name, reason).inc(n)
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
        self.last_commit.set_to_current_time()

    def observe_format(self, looks_like: str | None, readable: bool) -> None:
        """A committed batch: ``looks_like`` when no record was readable as --format and it looks like that."""
        if looks_like is not None:
            self.format_mismatch.labels(looks_like).inc()
            self.format_mismatch_now.set(1)
        elif readable:
            self.format_mismatch_now.set(0)

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
        self._read_ms: dict[int, int] = {}
        self._at_end: set[int] = set()
        self._lags: dict[int, int] = {}
        r.register(_VaultLagSeconds(self))
        # Database checks (check_vault); NaN until the first check.
        self.audit_ok = Gauge("cdrpipe_vault_audit_verify_ok",
                              "1 when the last audit verification found the chain intact, 0 when it did not",
                              registry=r)
        self.audit_verified = Gauge("cdrpipe_vault_audit_verified_timestamp_seconds",
                                    "Unix time of the last audit verification that found the chain intact",
                                    registry=r)
        self.audit_entries = Gauge("cdrpipe_vault_audit_entries", "Entries in the audit log", registry=r)
        self.last_purge = Gauge("cdrpipe_vault_last_purge_timestamp_seconds",
                                "Unix time of the newest purge in the audit log (never purged: this sink's start)",
                                registry=r)
        self.oldest_day = Gauge("cdrpipe_vault_oldest_day_timestamp_seconds",
                                "Unix time of the start (UTC) of the oldest day the vault holds (NaN when empty)",
                                registry=r)
        self._started = time.time()
        for gauge in (self.audit_ok, self.audit_verified, self.audit_entries, self.last_purge, self.oldest_day):
            gauge.set(math.nan)

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

    def note_read(self, timestamps: Mapping[int, int], at_end: Collection[int] = ()) -> None:
        """One consume() call's newest message timestamp (ms) per partition, and the partitions it
        found at their end (end-of-partition events after their last message)."""
        with self._lock:
            for partition, ms in timestamps.items():
                if ms > 0:
                    self._read_ms[partition] = max(ms, self._read_ms.get(partition, 0))
                self._at_end.discard(partition)
            self._at_end.update(at_end)

    def set_lag(self, partition_lags: Mapping[int, int]) -> None:
        """The lag in messages (see :class:`_VaultLagSeconds` for the lag in seconds)."""
        super().set_lag(partition_lags)
        with self._lock:
            self._lags = dict(partition_lags)
            for gone in set(self._read_ms) - set(partition_lags):  # revoked: a new owner reads it
                del self._read_ms[gone]
            self._at_end &= set(partition_lags)

    def lag_seconds(self) -> dict[int, float]:
        """Seconds behind per owned partition, now (see :class:`_VaultLagSeconds`)."""
        now_ms = time.time() * 1000
        with self._lock:
            return {p: 0.0 if lag == 0 or p in self._at_end else max(0.0, now_ms - self._read_ms[p]) / 1000
                    for p, lag in self._lags.items() if lag == 0 or p in self._at_end or p in self._read_ms}

    def check_vault(self, db: str | os.PathLike[str], keystore: str | os.PathLike[str] | None,
                    public_key: str | None = None) -> bool:
        """Verify the audit log as ``vault audit verify`` does (hash chain, keystore anchor, and
        signatures when a public key is known), and read the last purge and the oldest day held;
        True when the log is intact.

        Why in the sink: it is the one long-running vault process, so "verification failing or not
        run" and "purge not run" become metrics an alert can watch, with no job of their own. It
        reads through its own read-only connections. The public key is ``public_key`` (the sink
        passes ``$CDRPIPE_AUDIT_PUBLIC_KEY``), else the half of the vault keyring's ``audit_key``
        the environment names. A witness is not compared: that stays the auditor's run.
        """
        from pipeline.vault.audit import AuditError, load_audit_signer, load_public_key, read_entries, verify_chain
        from pipeline.vault.backend import is_postgres
        from pipeline.vault.keystore import day_date, default_keystore_path, read_audit_anchor
        try:
            if public_key:
                public = load_public_key(public_key)
            else:
                signer = load_audit_signer(None, None)
                public = signer.public_key if signer is not None else None
            store = keystore if keystore is not None else default_keystore_path(db)
            # The anchor before the entries: a purge appending meanwhile leaves the anchor behind
            # the log (fine), never ahead of it (which would read as entries cut off).
            anchor = read_audit_anchor(store) if is_postgres(store) or os.path.isfile(store) else None
            rows = read_entries(db)
            verdict = verify_chain(rows, public, anchor)
        except (AuditError, OSError, ValueError) as exc:
            log.error("vault check: the audit log could not be verified (%s)", exc)
            self.audit_ok.set(0)
            return False
        if verdict.ok and rows and anchor is None:  # as `audit verify`: a deleted anchor hides a cut log
            verdict = dataclasses.replace(verdict, ok=False, reason=f"the keystore {store} holds no audit anchor")
        self.audit_entries.set(len(rows))
        if verdict.ok:
            self.audit_ok.set(1)
            self.audit_verified.set_to_current_time()
        else:
            self.audit_ok.set(0)
            log.error("vault check: audit log broken at entry #%s: %s; run `cdrpipe vault audit verify`",
                      verdict.first_bad, verdict.reason)
        self.last_purge.set(_newest_purge(rows) or self._started)
        try:
            oldest = _oldest_day(db)
        except Exception as exc:  # noqa: BLE001  (busy, damaged, unreachable: keep the last figure; the audit check speaks)
            log.warning("vault check: days not read (%s)", exc)
        else:
            self.oldest_day.set(math.nan if oldest is None else _dt.datetime.combine(
                day_date(oldest), _dt.time(), _dt.timezone.utc).timestamp())
        return bool(verdict.ok)

    def watch_vault(self, db: str | os.PathLike[str], keystore: str | os.PathLike[str] | None,
                    public_key: str | None = None, interval: float = VAULT_CHECK_SECONDS) -> Callable[[], None]:
        """Run :meth:`check_vault` now and every ``interval`` seconds on a daemon thread; returns its stop."""
        stop = threading.Event()

        def loop() -> None:
            while True:
                try:
                    self.check_vault(db, keystore, public_key)
                except Exception as exc:  # noqa: BLE001  (a check must never end the sink; the gauge says it failed)
                    log.error("vault check failed: %s", type(exc).__name__)
                    self.audit_ok.set(0)
                if stop.wait(interval):
                    return

        threading.Thread(target=loop, name="vault-checks", daemon=True).start()
        return stop.set


class _VaultLagSeconds:
    """``cdrpipe_vault_consumer_lag_seconds``: how far behind the sink is in time, per partition.

    Why time: Kafka deletes by age (``retention.ms``), so the time left is what can run out. A
    partition is as far behind as the newest message read from it is old, because the first
    unread one is younger (the figure errs early). It is 0 at the partition's end: an
    end-of-partition event since the last message, or no lag. The message lag alone cannot say
    so: a transactional topic ends in commit markers that are never read as messages. A
    partition never read from has no figure yet. Computed at scrape time, so a sink whose loop
    is stuck shows its age growing.
    """

    def __init__(self, metrics: VaultSinkMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("cdrpipe_vault_consumer_lag_seconds",
                                   "Seconds the sink is behind a partition: the age of the newest message read "
                                   "while more wait (0 at the end); compare with the topic's retention.ms",
                                   labels=["partition"])
        for partition, seconds in sorted(self.metrics.lag_seconds().items()):
            family.add_metric([str(partition)], seconds)
        yield family


def _newest_purge(rows: Sequence[tuple[int, str]]) -> float | None:
    """Unix time of the newest ``purge`` entry among audit rows (None when there is none)."""
    import orjson
    for _seq, text in reversed(rows):
        try:
            entry = orjson.loads(text)
            if entry.get("action") == "purge":
                return _dt.datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).timestamp()
        except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError):
            continue
    return None


def _oldest_day(db: str | os.PathLike[str]) -> int | None:
    """The oldest day number with records in a vault database (read-only), None when empty."""
    from pipeline.vault.backend import is_postgres
    if is_postgres(db):
        from pipeline.vault.backend import PostgresDatabase
        pg = PostgresDatabase(str(db), "vault")
        try:
            row = pg.execute("SELECT min(day) FROM partitions").fetchone()
        finally:
            pg.close()
        return None if row is None or row[0] is None else int(row[0])
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT min(day) FROM partitions").fetchone()
    finally:
        conn.close()
    return None if row is None or row[0] is None else int(row[0])


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
