"""The vault's PostgreSQL roles (deploy/postgres/*.sql): each does its duty and is refused the rest.

Why these tests: least privilege is only real if the database refuses. The deploy SQL is
applied as a platform team would (roles as superuser, ``vault init`` and the grants as the
owner), then every role runs its own command through the CLI and is refused, by PostgreSQL,
each statement it must not run: the ingest role cannot read day keys or records back, nor
write, change or delete audit entries; the auditor can only read; no role but the owner can
change the audit log or drop a partition except through the purge function.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import EXIT_OK, main

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "postgres"


@pytest.fixture(scope="module", autouse=True)
def long_retention():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDRPIPE_VAULT_RETENTION", "10y")
        yield


@pytest.fixture(scope="module")
def deployed(postgres, tmp_path_factory):
    """deploy/postgres/ applied as documented: roles, databases, ``vault init`` as owner, the grants; records ingested."""
    import psycopg
    root = tmp_path_factory.mktemp("roles")
    names = {"db": "vault", "keys": "vault_keys"}  # as deploy/postgres/databases.sql names them
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute((DEPLOY / "roles.sql").read_text())
        conn.execute((DEPLOY / "roles.sql").read_text())  # idempotent: a second run changes nothing
        for statement in (DEPLOY / "databases.sql").read_text().split(";"):  # CREATE DATABASE: one at a time
            if statement.strip() and not all(line.startswith("--") for line in statement.strip().splitlines()):
                conn.execute(statement)

    def url(role: str, which: str) -> str:
        return postgres.url(names[which], user=role)

    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    keyring = str(root / "keys" / "vault-keyring.json")
    owner = ["--db", url("cdrpipe_owner", "db"), "--keystore", url("cdrpipe_owner", "keys")]
    assert main(["vault", "init", "--keyring", keyring, *owner]) == EXIT_OK
    with psycopg.connect(url("cdrpipe_owner", "db"), autocommit=True) as conn:
        conn.execute((DEPLOY / "grants-vault.sql").read_text())
    with psycopg.connect(url("cdrpipe_owner", "keys"), autocommit=True) as conn:
        conn.execute((DEPLOY / "grants-keystore.sql").read_text())

    raw = root / "raw.jsonl"
    raw.write_text("".join(json.dumps({"record_id": f"r-{i}", "cli": "07700 900123", "dialled": "07700 900555",
                                       "start": f"2020-01-0{1 + i % 3}T10:00:00Z", "duration": 5}) + "\n"
                           for i in range(9)))
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input", str(raw),
                 "--out-dir", str(root / "out"), "--quiet"]) == 0
    return {"url": url, "keyring": keyring, "retention": str(root / "out" / "retention.jsonl"), "root": root}


def _as(deployed, role: str) -> list[str]:
    return ["--keyring", deployed["keyring"], "--db", deployed["url"](role, "db"),
            "--keystore", deployed["url"](role, "keys")]


def _refused(deployed, role: str, which: str, statement: str) -> None:
    """PostgreSQL itself refuses ``statement`` to ``role`` (insufficient privilege)."""
    import psycopg
    import psycopg.errors
    with psycopg.connect(deployed["url"](role, which), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def _allowed(deployed, role: str, which: str, statement: str) -> list:
    import psycopg
    with psycopg.connect(deployed["url"](role, which), autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def ingested(deployed):
    assert main(["vault", "ingest", *_as(deployed, "cdrpipe_ingest"), "--input", deployed["retention"],
                 "--quiet"]) == EXIT_OK
    return deployed


def test_ingest_role_appends_but_cannot_read_keys_or_records_or_touch_the_audit_log(ingested):
    d = ingested
    _refused(d, "cdrpipe_ingest", "keys", "SELECT wrapped FROM keystore.day_keys")
    _refused(d, "cdrpipe_ingest", "keys", "DELETE FROM keystore.day_keys")
    _refused(d, "cdrpipe_ingest", "db", "SELECT ct FROM vault.records")
    _refused(d, "cdrpipe_ingest", "db", "SELECT k FROM vault.blind_index")
    _refused(d, "cdrpipe_ingest", "db", "INSERT INTO vault.audit (seq, entry) VALUES (999, '{}')")
    _refused(d, "cdrpipe_ingest", "db", "UPDATE vault.audit SET entry = '{}'")
    _refused(d, "cdrpipe_ingest", "db", "DELETE FROM vault.audit")
    _refused(d, "cdrpipe_ingest", "db", "SELECT vault.drop_day(18262)")
    _refused(d, "cdrpipe_ingest", "db", "DROP TABLE vault.rec_20200101")
    # What it did is there (counted by a role that may read).
    assert _allowed(d, "cdrpipe_officer", "db", "SELECT count(*) FROM vault.records") == [(9,)]


def test_officer_queries_under_warrant_but_cannot_rewrite_the_audit_log(ingested, capsys):
    d = ingested
    assert main(["vault", "warrant", "add", *_as(d, "cdrpipe_officer"), "--id", "W-R", "--authority", "t",
                 "--officer", "PC-9", "--from", "2020-01-01", "--to", "2020-01-31", "--expires", "2099-01-01",
                 "--targets", "07700 900123"]) == EXIT_OK
    capsys.readouterr()
    assert main(["vault", "query", *_as(d, "cdrpipe_officer"), "--warrant", "W-R", "--officer", "PC-9",
                 "--target", "+447700900123", "--from", "2020-01-01", "--to", "2020-01-31"]) == EXIT_OK
    assert len(capsys.readouterr().out.splitlines()) == 9
    _refused(d, "cdrpipe_officer", "db", "UPDATE vault.audit SET entry = '{}'")
    _refused(d, "cdrpipe_officer", "db", "DELETE FROM vault.audit")
    _refused(d, "cdrpipe_officer", "db", "SELECT vault.drop_day(18262)")
    _refused(d, "cdrpipe_officer", "keys", "DELETE FROM keystore.day_keys")
    _refused(d, "cdrpipe_officer", "db", "INSERT INTO vault.records (day, rid, record_id, ts, parsed, sealed_time, "
                                         "src, ct) VALUES (18262, 999, 'x', 0, 0, 0, 's', '')")


def test_auditor_can_only_read(ingested, capsys):
    d = ingested
    capsys.readouterr()
    assert main(["vault", "audit", "verify", "--db", d["url"]("cdrpipe_auditor", "db"),
                 "--keystore", d["url"]("cdrpipe_auditor", "keys")]) == EXIT_OK, capsys.readouterr().err
    assert _allowed(d, "cdrpipe_auditor", "db", "SELECT count(*) FROM vault.audit")[0][0] >= 0
    _refused(d, "cdrpipe_auditor", "db", "INSERT INTO vault.audit (seq, entry) VALUES (999, '{}')")
    _refused(d, "cdrpipe_auditor", "db", "UPDATE vault.warrants SET doc = '{}'")
    _refused(d, "cdrpipe_auditor", "db", "UPDATE vault.meta SET v = 'x'")
    _refused(d, "cdrpipe_auditor", "db", "SELECT ct FROM vault.records")
    _refused(d, "cdrpipe_auditor", "keys", "SELECT wrapped FROM keystore.day_keys")
    _refused(d, "cdrpipe_auditor", "keys", "UPDATE keystore.meta SET v = 'x'")


def test_purge_role_drops_days_and_destroys_keys_without_reading_them(ingested, capsys):
    d = ingested
    _refused(d, "cdrpipe_purge", "keys", "SELECT wrapped FROM keystore.day_keys")
    _refused(d, "cdrpipe_purge", "db", "SELECT ct FROM vault.records")
    _refused(d, "cdrpipe_purge", "db", "UPDATE vault.audit SET entry = '{}'")
    capsys.readouterr()
    assert main(["vault", "purge", *_as(d, "cdrpipe_purge"), "--before", "2020-01-02",
                 "--operator", "ops"]) == EXIT_OK, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["days_purged"] == 1 and summary["keys_destroyed"] == 1 and summary["records_purged"] == 3
    assert _allowed(d, "cdrpipe_owner", "db", "SELECT to_regclass('vault.rec_20200101')") == [(None,)]
    assert _allowed(d, "cdrpipe_owner", "keys", "SELECT count(*) FROM keystore.day_keys WHERE day = 18262") == [(0,)]
    assert main(["vault", "audit", "verify", "--db", d["url"]("cdrpipe_auditor", "db"),
                 "--keystore", d["url"]("cdrpipe_auditor", "keys")]) == EXIT_OK
