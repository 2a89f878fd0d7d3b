"""Retention is enforced on the way in and on the way out, by call start, with the default 12 months."""
from __future__ import annotations

import datetime as dt
import json

import orjson
import pytest
from prometheus_client import generate_latest

from pipeline.cli import EXIT_OK, EXIT_USAGE, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_vault_keyring, load_worker_keyring
from pipeline.vault.index import BlindIndexer
from pipeline.vault.keystore import Keystore, day_number
from pipeline.vault.audit import AuditLog
from pipeline.vault.query import audited_search
from pipeline.vault.retention import retention_cutoff
from pipeline.vault.store import DAY_US, open_store

TODAY = dt.datetime.now(dt.timezone.utc).date()
A = "+447700900123"


def _months_ago(n: int) -> str:
    when = dt.datetime.combine(TODAY, dt.time(12), dt.timezone.utc) - dt.timedelta(days=round(n * 30.44))
    return when.isoformat().replace("+00:00", "Z")


@pytest.fixture()
def world(tmp_path, monkeypatch, vault_backend):
    """Three records (13, 11 and 1 month old) sealed for a vault on each storage backend in turn."""
    monkeypatch.delenv("CDRPIPE_VAULT_RETENTION", raising=False)
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    lines = [orjson.dumps({"record_id": rid, "cli": A, "dialled": "+447700900999", "start": _months_ago(m),
                           "duration": 10}) for rid, m in (("old-13mo", 13), ("new-11mo", 11), ("new-1mo", 1))]
    (tmp_path / "raw.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(tmp_path / "keys" / "worker-keyring.json"), "--input",
                 str(tmp_path / "raw.jsonl"), "--out-dir", str(tmp_path / "out"), "--quiet"]) == 0
    refs = Tokeniser(load_worker_keyring(tmp_path / "keys" / "worker-keyring.json"))
    return {"root": tmp_path, "keyring": tmp_path / "keys" / "vault-keyring.json", "db": vault_backend.db,
            "keys": vault_backend.keystore, "where": vault_backend.args(),
            "retention": tmp_path / "out" / "retention.jsonl",
            "kept": [refs.token_one("record", rid) for rid in ("new-11mo", "new-1mo")]}


def _ingest(world, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["vault", "ingest", "--keyring", str(world["keyring"]), *world["where"], "--quiet",
                 "--input", str(world["retention"]), *extra]) == EXIT_OK
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def _warrant(world, start: str) -> None:
    assert main(["vault", "warrant", "add", "--keyring", str(world["keyring"]), *world["where"],
                 "--id", "W-1", "--authority", "t", "--officer", "PC-1", "--targets", A, "--from", start,
                 "--to", str(TODAY), "--expires", str(TODAY + dt.timedelta(days=1))]) == EXIT_OK


def test_a_record_13_months_old_is_expired_at_ingest_and_never_returned(world, capsys):
    summary = _ingest(world, capsys)
    assert (summary["records"], summary["stored"], summary["expired"]) == (3, 2, 1)
    cutoff = retention_cutoff(TODAY, "12mo")
    _warrant(world, str(cutoff))
    capsys.readouterr()
    assert main(["vault", "query", "--keyring", str(world["keyring"]), *world["where"], "--target", A,
                 "--from", str(cutoff), "--to", str(TODAY), "--warrant", "W-1", "--officer", "PC-1"]) == EXIT_OK
    refs = [orjson.loads(line)["record_ref"] for line in capsys.readouterr().out.splitlines()]
    assert refs == world["kept"]


def test_a_query_window_before_the_cutoff_is_refused_naming_it(world, capsys):
    _ingest(world, capsys)
    cutoff = retention_cutoff(TODAY, "12mo")
    for start in ("2000-01-01", str(cutoff - dt.timedelta(days=1))):
        capsys.readouterr()
        assert main(["vault", "query", "--keyring", str(world["keyring"]), *world["where"], "--target", A,
                     "--from", start, "--to", "2030-01-01", "--warrant", "W-1", "--officer", "PC-1"]) == EXIT_USAGE
        out = capsys.readouterr()
        assert out.out == "" and f"retention cut-off {cutoff}" in out.err


def test_a_record_past_retention_is_not_returned_even_before_the_purge(world, capsys):
    """Stored under a longer period (the purge has not run), it is still never searched past the cut-off."""
    summary = _ingest(world, capsys, "--retention", "24mo")
    assert summary["stored"] == 3 and summary["expired"] == 0
    keyring = load_vault_keyring(world["keyring"])
    store = open_store(world["db"], vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid)
    keystore = Keystore(world["keys"], keyring)
    try:
        audit, indexer = AuditLog(store.db, anchor=keystore), BlindIndexer(keyring.index_key)

        def search(not_before_us: int):  # the only way to search: each one audited before its records return
            return audited_search(store, keystore, indexer, audit, "msisdn", A, 0, (day_number(TODAY) + 1) * DAY_US,
                                  not_before_us=not_before_us, entry=lambda r: {"action": "test_search"})[0]

        everything = search(0)
        assert len(everything.records) == 3
        cut = day_number(retention_cutoff(TODAY, "12mo")) * DAY_US
        kept = search(cut)
        assert [r.record_ref for r in kept.records] == world["kept"]
    finally:
        keystore.close()
        store.close()


def test_the_sink_metrics_count_expired_records(world, capsys, metric_samples):
    from pipeline.metrics import VaultSinkMetrics
    from pipeline.vault.ingest import Ingester
    keyring = load_vault_keyring(world["keyring"])
    store = open_store(world["db"], vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid, create=True)
    keystore = Keystore(world["keys"], keyring, create=True)
    try:
        totals = Ingester(store, keystore, keyring).ingest(world["retention"].read_bytes().splitlines())
    finally:
        keystore.close()
        store.close()
    metrics = VaultSinkMetrics()
    metrics.observe_batch(totals, 0.1)
    samples = metric_samples(generate_latest(metrics.registry).decode())
    assert samples['cdrpipe_vault_records_total{outcome="expired"}'] == 1
    assert samples['cdrpipe_vault_records_total{outcome="stored"}'] == 2
