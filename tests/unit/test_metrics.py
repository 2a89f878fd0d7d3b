"""The worker's Prometheus metrics: counted per committed batch, lag per owned partition, served over HTTP."""
from __future__ import annotations

import urllib.request
from collections import Counter

from prometheus_client import generate_latest

from pipeline.metrics import WorkerMetrics


def _samples(m: WorkerMetrics) -> dict[str, float]:
    text = generate_latest(m.registry).decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_committed_batches_add_up_per_route_and_reason() -> None:
    m = WorkerMetrics()
    m.observe_commit({"in": 100, "analytics": 90, "retention": 100, "dlq": 8, "suppressed": 2},
                     Counter({"invalid_json": 5, "empty": 3}), 100, 0.2, 1)
    m.observe_commit({"in": 50, "analytics": 49, "retention": 50, "dlq": 1, "suppressed": 0},
                     Counter({"empty": 1}), 50, 0.05, 1)
    m.observe_abort("send_offsets_to_transaction")
    s = _samples(m)
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


def test_lag_gauges_follow_the_partitions_owned_now() -> None:
    m = WorkerMetrics()
    m.set_lag({0: 10, 1: 5})
    m.set_lag({1: 3, 2: 0})
    s = _samples(m)
    assert 'cdrpipe_consumer_lag{partition="0"}' not in s, "a revoked partition's lag must disappear"
    assert s['cdrpipe_consumer_lag{partition="1"}'] == 3 and s["cdrpipe_consumer_lag_total"] == 3


def test_two_workers_in_one_process_keep_separate_counts() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.observe_commit({"in": 7}, Counter(), 7, 0.01, 0)
    assert _samples(a)["cdrpipe_records_in_total"] == 7 and _samples(b)["cdrpipe_records_in_total"] == 0


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
