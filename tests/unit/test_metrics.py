"""Prometheus metrics of the worker and the vault sink: counted per batch, lag per owned partition, served."""
from __future__ import annotations

import urllib.request
from collections import Counter

import pytest
from prometheus_client import generate_latest

from pipeline.cli import UsageError
from pipeline.metrics import VaultSinkMetrics, WorkerMetrics, serve_metrics, stop_metrics


@pytest.fixture
def samples(metric_samples):
    return lambda m: metric_samples(generate_latest(m.registry).decode())


def test_committed_batches_add_up_per_route_and_reason(samples) -> None:
    m = WorkerMetrics()
    m.observe_commit({"in": 100, "analytics": 90, "retention": 100, "dlq": 8, "suppressed": 2},
                     Counter({"invalid_json": 5, "empty": 3}), 100, 0.2, 1)
    m.observe_commit({"in": 50, "analytics": 49, "retention": 50, "dlq": 1, "suppressed": 0},
                     Counter({"empty": 1}), 50, 0.05, 1)
    m.observe_abort("send_offsets_to_transaction")
    s = samples(m)
    assert s["cdrpipe_records_in_total"] == 150
    assert s['cdrpipe_records_out_total{route="analytics"}'] == 139
    assert s['cdrpipe_records_out_total{route="retention"}'] == 150
    assert s['cdrpipe_records_out_total{route="dlq"}'] == 9
    assert s["cdrpipe_records_suppressed_total"] == 2
    assert s['cdrpipe_dlq_records_total{reason="empty"}'] == 4
    assert s['cdrpipe_transactions_total{outcome="commit"}'] == 2
    assert s['cdrpipe_transactions_total{outcome="abort"}'] == 1
    assert s["cdrpipe_batch_records_count"] == 2 and s["cdrpipe_batch_records_sum"] == 150
    assert s['cdrpipe_batch_seconds_bucket{le="0.1"}'] == 1


def test_lag_gauges_follow_the_partitions_owned_now(samples) -> None:
    m = WorkerMetrics()
    m.set_lag({0: 10, 1: 5})
    m.set_lag({1: 3, 2: 0})
    s = samples(m)
    assert 'cdrpipe_consumer_lag{partition="0"}' not in s, "a revoked partition's lag must disappear"
    assert s['cdrpipe_consumer_lag{partition="1"}'] == 3 and s["cdrpipe_consumer_lag_total"] == 3


def test_two_workers_in_one_process_keep_separate_counts(samples) -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.observe_commit({"in": 7}, Counter(), 7, 0.01, 0)
    assert samples(a)["cdrpipe_records_in_total"] == 7 and samples(b)["cdrpipe_records_in_total"] == 0


def test_metrics_are_served_over_http() -> None:
    m = WorkerMetrics()
    m.observe_commit({"in": 3, "analytics": 3, "retention": 3}, Counter(), 3, 0.01, 1)
    server = m.serve(0, "127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "cdrpipe_records_in_total 3.0" in body


def test_vault_sink_batches_add_up_by_outcome(samples) -> None:
    from pipeline.vault.ingest import IngestTotals
    m = VaultSinkMetrics()
    m.observe_batch(IngestTotals(segments=3, records=100, stored=90, duplicates=8, expired=2, unparsed=1), 0.3)
    m.observe_batch(IngestTotals(segments=1, records=5, stored=0, duplicates=5, quarantined=1), 0.02)
    m.set_lag({0: 4, 1: 0})
    s = samples(m)
    assert s['cdrpipe_vault_records_total{outcome="stored"}'] == 90
    assert s['cdrpipe_vault_records_total{outcome="duplicate"}'] == 13
    assert s['cdrpipe_vault_records_total{outcome="expired"}'] == 2
    assert sum(v for k, v in s.items() if k.startswith("cdrpipe_vault_records_total{")) == s[
        "cdrpipe_vault_batch_records_sum"] == 105, "outcomes add up to the records read"
    assert s["cdrpipe_vault_unparsed_records_total"] == 1
    assert s['cdrpipe_vault_segments_total{outcome="opened"}'] == 4
    assert s['cdrpipe_vault_segments_total{outcome="quarantined"}'] == 1
    assert s["cdrpipe_vault_batch_seconds_count"] == 2 and s['cdrpipe_vault_batch_seconds_bucket{le="0.025"}'] == 1
    assert s["cdrpipe_vault_consumer_lag_total"] == 4 and "cdrpipe_consumer_lag_total" not in s


def test_a_port_in_use_is_a_usage_error_that_says_what_to_do() -> None:
    first = serve_metrics(WorkerMetrics(), 0, "127.0.0.1")
    try:
        with pytest.raises(UsageError, match="choose a free port"):
            serve_metrics(VaultSinkMetrics(), first.server_port, "127.0.0.1")  # type: ignore[union-attr]
    finally:
        stop_metrics(first)
    assert serve_metrics(VaultSinkMetrics(), None, "127.0.0.1") is None
