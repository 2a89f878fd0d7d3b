"""Prometheus metrics of the worker and the vault sink: counted per batch, lag per owned partition, served."""
from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from pipeline.cli import UsageError
from pipeline.metrics import VaultSinkMetrics, WorkerMetrics, serve_metrics, stop_metrics
from pipeline.vault.audit import AuditSigner


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


# --------------------------------------------------------------------------- what the alerts need

def test_last_commit_time_starts_at_the_workers_start_and_moves_with_each_commit(samples) -> None:
    before = time.time()
    m = WorkerMetrics()
    started = samples(m)["cdrpipe_last_commit_timestamp_seconds"]
    assert before - 1 <= started <= time.time(), "a fresh worker must not look stalled since 1970"
    time.sleep(0.01)
    m.observe_commit({"in": 1, "retention": 1, "analytics": 1}, Counter(), 1, 0.01, 1)
    assert samples(m)["cdrpipe_last_commit_timestamp_seconds"] > started
    m.observe_abort("produce")
    committed = samples(m)["cdrpipe_last_commit_timestamp_seconds"]
    time.sleep(0.01)
    m.observe_abort("produce")
    assert samples(m)["cdrpipe_last_commit_timestamp_seconds"] == committed, "an abort is not a commit"


def test_suppression_list_size_and_age_are_read_from_the_follower_at_scrape_time(samples) -> None:
    follower = SimpleNamespace(active_count=3, current_at=time.time() - 42)
    m = WorkerMetrics()
    m.follow_suppressions(follower)
    s = samples(m)
    assert s["cdrpipe_suppressions_active"] == 3 and 42 <= s["cdrpipe_suppressions_age_seconds"] < 50
    follower.active_count, follower.current_at = 4, time.time()
    s = samples(m)
    assert s["cdrpipe_suppressions_active"] == 4 and s["cdrpipe_suppressions_age_seconds"] < 5
    follower.current_at = None  # never caught up: no figure rather than a made-up one
    assert math.isnan(samples(m)["cdrpipe_suppressions_age_seconds"])
    assert "cdrpipe_suppressions_age_seconds" not in samples(WorkerMetrics()), "only with a follower"


def test_vault_lag_in_seconds_is_the_age_of_the_newest_read_while_more_wait(samples) -> None:
    m = VaultSinkMetrics()
    now_ms = int(time.time() * 1000)
    m.note_read({0: now_ms - 3_600_000, 1: now_ms - 60_000, 2: now_ms - 7_200_000})
    m.set_lag({0: 500, 1: 0, 2: 1, 3: 9})
    s = samples(m)
    assert 3600 <= s['cdrpipe_vault_consumer_lag_seconds{partition="0"}'] < 3700
    assert s['cdrpipe_vault_consumer_lag_seconds{partition="1"}'] == 0, "no lag: not behind, however old"
    assert s['cdrpipe_vault_consumer_lag_seconds{partition="2"}'] >= 7200
    assert 'cdrpipe_vault_consumer_lag_seconds{partition="3"}' not in s, "never read: no figure"
    # Only a commit marker left after the last message: the end-of-partition event says so.
    m.note_read({}, at_end={2})
    assert samples(m)['cdrpipe_vault_consumer_lag_seconds{partition="2"}'] == 0
    # A new message after the end: behind again, by that message's age.
    m.note_read({2: now_ms - 30_000})
    assert 30 <= samples(m)['cdrpipe_vault_consumer_lag_seconds{partition="2"}'] < 40
    m.set_lag({1: 0})  # partitions 0, 2 and 3 revoked
    assert [k for k in samples(m) if k.startswith("cdrpipe_vault_consumer_lag_seconds")] == [
        'cdrpipe_vault_consumer_lag_seconds{partition="1"}']


def _sql(spec: str, schema: str, statement: str) -> None:
    """Run one statement on a vault's SQLite file or PostgreSQL schema, as someone with write access could."""
    if not spec.startswith("postgresql"):
        conn = sqlite3.connect(spec)
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg
    with psycopg.connect(spec, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(statement)


@pytest.fixture(params=["sqlite", "postgresql"])
def small_vault(request, tmp_path):
    """A vault with records today and three days ago, filled through the CLI, on either backend."""
    from pipeline.cli import main
    if request.param == "sqlite":
        db, keystore = str(tmp_path / "vault.db"), str(tmp_path / "vault.db.keys")
    else:
        db, keystore = request.getfixturevalue("pg_vault_urls")
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--dir", str(keys)]) == 0
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=5, second=0, microsecond=0)
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"record_id": f"r{i}", "cli": "+447700900123", "dialled": "+447700900456",
                                       "start": (today - dt.timedelta(days=3 * (i % 2))).isoformat(),
                                       "duration": 5}) + "\n" for i in range(6)))
    assert main(["process", "--keyring", str(keys / "worker-keyring.json"), "--input", str(raw),
                 "--out-dir", str(tmp_path / "out"), "--quiet"]) == 0
    vault = ["--keyring", str(keys / "vault-keyring.json"), "--db", db, "--keystore", keystore]
    assert main(["vault", "ingest", *vault, "--input", str(tmp_path / "out" / "retention.jsonl"), "--quiet"]) == 0
    return {"db": db, "keystore": keystore, "vault": vault, "keyring": keys / "vault-keyring.json", "today": today}


def test_vault_checks_export_audit_verification_last_purge_and_oldest_day(small_vault, samples, monkeypatch) -> None:
    from pipeline.cli import main
    db, keystore, today = small_vault["db"], small_vault["keystore"], small_vault["today"]
    m = VaultSinkMetrics()
    nan = samples(m)
    assert math.isnan(nan["cdrpipe_vault_audit_verify_ok"]), "no figure before the first check"
    assert m.check_vault(db, keystore) is True
    s = samples(m)
    assert s["cdrpipe_vault_audit_verify_ok"] == 1 and s["cdrpipe_vault_audit_verified_timestamp_seconds"] > 0
    assert s["cdrpipe_vault_last_purge_timestamp_seconds"] == m._started, "never purged: counts from the start"
    midnight = today.replace(hour=0, minute=0)
    assert s["cdrpipe_vault_oldest_day_timestamp_seconds"] == (midnight - dt.timedelta(days=3)).timestamp()

    before_purge = time.time()
    assert main(["vault", "purge", *small_vault["vault"], "--before", (today - dt.timedelta(days=1)).date().isoformat(),
                 "--allow-early", "--operator", "test"]) == 0
    assert m.check_vault(db, keystore) is True
    s = samples(m)
    assert s["cdrpipe_vault_last_purge_timestamp_seconds"] >= before_purge - 1
    assert s["cdrpipe_vault_oldest_day_timestamp_seconds"] == midnight.timestamp()
    assert s["cdrpipe_vault_audit_entries"] == 1
    # With the keyring in the environment (as the sink runs) the entries' signatures are checked too.
    monkeypatch.setenv("CDRPIPE_VAULT_KEYRING", str(small_vault["keyring"]))
    assert m.check_vault(db, keystore) is True
    verified = samples(m)["cdrpipe_vault_audit_verified_timestamp_seconds"]
    other = AuditSigner.generate().public_b64()
    assert m.check_vault(db, keystore, public_key=other) is False, "signed by another key"

    _sql(db, "vault", "UPDATE audit SET entry = replace(entry, '\"test\"', '\"someone else\"')")
    time.sleep(0.01)
    assert m.check_vault(db, keystore) is False
    s = samples(m)
    assert s["cdrpipe_vault_audit_verify_ok"] == 0
    assert s["cdrpipe_vault_audit_verified_timestamp_seconds"] == verified, "a failed check is no verification"


def test_vault_checks_fail_on_a_missing_vault_or_a_missing_anchor(small_vault, samples) -> None:
    """As `vault audit verify`: a log with entries and no anchor may have been cut at its end."""
    from pipeline.cli import main
    db, keystore = small_vault["db"], small_vault["keystore"]
    assert main(["vault", "purge", *small_vault["vault"], "--before", small_vault["today"].date().isoformat(),
                 "--allow-early", "--operator", "test"]) == 0
    m = VaultSinkMetrics()
    assert m.check_vault(db, keystore) is True
    _sql(keystore, "keystore", "DELETE FROM meta WHERE k IN ('audit_seq', 'audit_hash')")
    assert m.check_vault(db, keystore) is False and samples(m)["cdrpipe_vault_audit_verify_ok"] == 0
    assert VaultSinkMetrics().check_vault(str(Path(small_vault["keyring"]).parent / "missing.db"), None) is False


def test_vault_checks_run_on_a_thread_until_stopped(small_vault, samples) -> None:
    m = VaultSinkMetrics()
    stop = m.watch_vault(small_vault["db"], small_vault["keystore"], interval=0.05)
    try:
        deadline = time.monotonic() + 10
        while math.isnan(samples(m)["cdrpipe_vault_audit_verify_ok"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop()
    assert samples(m)["cdrpipe_vault_audit_verify_ok"] == 1
