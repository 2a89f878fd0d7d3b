"""One vault suite, run on both storage backends: SQLite (a file) and PostgreSQL (a URL).

Why one suite: the PostgreSQL vault promises the SQLite vault's behaviour, so the same
commands, on the same records, must give the same answers on both: ingest is idempotent, a
query returns exactly the target's records under a registered warrant and nothing outside it,
the audit chain verifies (and a rewritten entry is caught), and a purge destroys the day's key
and drops the day's storage. The PostgreSQL half uses the session's throwaway cluster
(``postgres`` fixture): it is skipped, with the reason, where the server is not installed,
unless ``CDRPIPE_REQUIRE_POSTGRES=1``.

Expected answers come from how the records are built here, not from the code under test.
"""
from __future__ import annotations

import json

import orjson
import pytest
from vault_backend import VaultBackend as Backend

from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring

A, B = "+447700900123", "+4915110021504"
A_FORMS = ["07700 900123", "+44 7700 900123", "00447700900123"]
OTHERS = ["07700 900555", "+447700900777", "+33612345678"]
DAYS = ["2020-01-03", "2020-01-04", "2020-02-10"]
JAN_3, JAN_4, FEB_10 = 18264, 18265, 18302  # day numbers of DAYS


def _records() -> tuple[bytes, dict[str, set[str]], dict[int, int]]:
    """Raw JSONL, the ids where A / B is a party, and records per day."""
    lines, expect, per_day = [], {"A": set(), "B": set(), "A-jan": set()}, {}
    n = 0
    for d, day in enumerate(DAYS):
        for i in range(6):
            n += 1
            rid = f"bk-{n:03d}"
            if i % 3 == 0:
                cli, dialled, who = A_FORMS[(i + d) % 3], OTHERS[i % 3], "A"
            elif i % 3 == 1:
                cli, dialled, who = OTHERS[i % 3], B, "B"
            else:
                cli, dialled, who = OTHERS[0], OTHERS[1], None
            lines.append(orjson.dumps({"record_id": rid, "cli": cli, "dialled": dialled,
                                       "start": f"{day}T{8 + i:02d}:00:00Z", "duration": 10 + n}))
            if who:
                expect[who].add(rid)
                if who == "A" and day.startswith("2020-01"):
                    expect["A-jan"].add(rid)
            per_day[JAN_3 + (0, 1, 38)[d]] = per_day.get(JAN_3 + (0, 1, 38)[d], 0) + 1
    return b"\n".join(lines) + b"\n", expect, per_day


@pytest.fixture(scope="module", autouse=True)
def long_retention():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDRPIPE_VAULT_RETENTION", "10y")
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("backends")
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    raw, expect, per_day = _records()
    (root / "raw.jsonl").write_bytes(raw)
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input",
                 str(root / "raw.jsonl"), "--out-dir", str(root / "out"), "--quiet"]) == 0
    # The vault names records by their record_ref (the token of kind record of the id): expect holds the refs.
    refs = Tokeniser(load_worker_keyring(root / "keys" / "worker-keyring.json"))
    ref = lambda rid: refs.token_one("record", rid)  # noqa: E731
    return {"root": root, "keyring": str(root / "keys" / "vault-keyring.json"),
            "retention": str(root / "out" / "retention.jsonl"), "per_day": per_day, "total": raw.count(b"\n"),
            "expect": {k: set(map(ref, v)) for k, v in expect.items()}, "expect_ids": expect, "ref": ref}


@pytest.fixture
def backend(vault_backend: Backend) -> Backend:
    """Each test below runs once per storage backend (conftest's ``vault_backend``)."""
    return vault_backend


def _vault(world: dict, backend: Backend, *argv: str) -> int:
    return main(["vault", argv[0], *argv[1:], "--keyring", world["keyring"], *backend.args()])


def _ingest(world: dict, backend: Backend, capsys) -> dict:
    capsys.readouterr()
    assert _vault(world, backend, "ingest", "--input", world["retention"], "--quiet") == EXIT_OK
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _warrant(world: dict, backend: Backend) -> None:
    assert main(["vault", "warrant", "add", "--keyring", world["keyring"], *backend.args(), "--id", "W-1",
                 "--authority", "test", "--officer", "PC-1", "--from", "2020-01-01", "--to", "2020-12-31",
                 "--expires", "2099-01-01", "--targets", f"{A},{B}"]) == EXIT_OK


def _query(world: dict, backend: Backend, capsys, target: str, start: str = "2020-01-01",
           end: str = "2020-03-31") -> tuple[int, set[str], str]:
    capsys.readouterr()
    code = main(["vault", "query", "--keyring", world["keyring"], *backend.args(), "--warrant", "W-1",
                 "--officer", "PC-1", "--target", target, "--from", start, "--to", end])
    out = capsys.readouterr()
    return code, {orjson.loads(line)["record_ref"] for line in out.out.splitlines() if line.strip()}, out.err


def _verify(backend: Backend, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["vault", "audit", "verify", *backend.args()])
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- the shared suite

def test_ingest_is_idempotent_and_status_counts_per_day(world, backend, capsys):
    first = _ingest(world, backend, capsys)
    assert first["stored"] == world["total"] and first["duplicates"] == 0 and first["days"] == 3
    again = _ingest(world, backend, capsys)
    assert again["stored"] == 0 and again["duplicates"] == world["total"]
    assert _vault(world, backend, "status") == EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["records"] == world["total"]
    assert {d["day"]: d["records"] for d in status["days"]} == {"2020-01-03": 6, "2020-01-04": 6, "2020-02-10": 6}
    assert all(d["key"] == "live" for d in status["days"])


def test_query_returns_exactly_the_targets_records_under_the_warrant(world, backend, capsys):
    _ingest(world, backend, capsys)
    _warrant(world, backend)
    for form in A_FORMS:
        code, ids, err = _query(world, backend, capsys, form)
        assert code == EXIT_OK, err
        assert ids == world["expect"]["A"]
    code, ids, _ = _query(world, backend, capsys, B)
    assert code == EXIT_OK and ids == world["expect"]["B"]
    code, ids, _ = _query(world, backend, capsys, A, end="2020-01-31")
    assert code == EXIT_OK and ids == world["expect"]["A-jan"]
    code, ids, err = _query(world, backend, capsys, OTHERS[0])  # not a target of the warrant
    assert code == EXIT_USAGE and ids == set() and "not one of the" in err
    assert OTHERS[0] not in err and "900555" not in err


def test_audit_chain_verifies_and_a_rewritten_entry_is_named(world, backend, capsys):
    _ingest(world, backend, capsys)
    _warrant(world, backend)
    _query(world, backend, capsys, A)
    code, err = _verify(backend, capsys)
    assert code == EXIT_OK, err
    assert "keystore anchor" in err
    seq, text = backend.sql("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1")[0]
    entry = orjson.loads(text)
    entry["result_count"] = 0
    backend.sql("UPDATE audit SET entry = ? WHERE seq = ?", (orjson.dumps(entry).decode(), seq))
    code, err = _verify(backend, capsys)
    assert code == EXIT_FATAL and f"entry #{seq}" in err


def test_warrant_ids_are_registered_once(world, backend, capsys):
    _ingest(world, backend, capsys)
    _warrant(world, backend)
    capsys.readouterr()
    assert main(["vault", "warrant", "add", "--keyring", world["keyring"], *backend.args(), "--id", "W-1",
                 "--authority", "test", "--officer", "PC-2", "--from", "2020-01-01", "--to", "2020-12-31",
                 "--expires", "2099-01-01", "--targets", A]) == EXIT_USAGE
    assert "already registered" in capsys.readouterr().err


def test_purge_destroys_the_days_keys_and_drops_their_storage(world, backend, capsys):
    _ingest(world, backend, capsys)
    _warrant(world, backend)
    before = backend.day_storage()
    assert any("20200103" in name for name in before) and any("20200210" in name for name in before)
    assert backend.day_keys() == {JAN_3, JAN_4, FEB_10}
    capsys.readouterr()
    assert _vault(world, backend, "purge", "--before", "2020-02-01", "--operator", "ops") == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["days_purged"] == 2 == summary["keys_destroyed"]
    assert summary["records_purged"] == 12
    after = backend.day_storage()
    assert not any("202001" in name for name in after)        # the January days' storage is gone
    assert any("20200210" in name for name in after)           # February's is not
    assert backend.day_keys() == {FEB_10}
    code, ids, err = _query(world, backend, capsys, A)
    assert code == EXIT_OK, err
    assert ids == world["expect"]["A"] - world["expect"]["A-jan"]
    code, err = _verify(backend, capsys)
    assert code == EXIT_OK, err
    # A late copy of a purged day's records is not stored again (the cut-off holds on both backends).
    late = _ingest(world, backend, capsys)
    assert late["stored"] == 0 and late["expired"] == 12


# --------------------------------------------------------------------------- migration SQLite -> PostgreSQL

def test_migrate_copies_a_sqlite_vault_with_its_audit_chain_and_verifies_it(world, tmp_path, pg_vault_urls, capsys):
    sqlite = Backend("sqlite", str(tmp_path / "vault.db"), str(tmp_path / "vault.db.keys"))
    witness = str(tmp_path / "witness.jsonl")
    _ingest(world, sqlite, capsys)
    assert main(["vault", "warrant", "add", "--keyring", world["keyring"], *sqlite.args(), "--id", "W-1",
                 "--authority", "test", "--officer", "PC-1", "--from", "2020-01-01", "--to", "2020-12-31",
                 "--expires", "2099-01-01", "--targets", f"{A},{B}", "--witness", witness]) == EXIT_OK
    assert _vault(world, sqlite, "purge", "--before", "2020-01-04", "--operator", "ops") == EXIT_OK
    code, before, _ = _query(world, sqlite, capsys, A)
    assert code == EXIT_OK and before == world["expect"]["A"] - {world["ref"](r) for r in world["expect_ids"]["A-jan"]
                                                                 if int(r.split("-")[1]) <= 6}
    entries_before = [e for (e,) in sqlite.sql("SELECT entry FROM audit ORDER BY seq")]

    db, keys = pg_vault_urls
    pg = Backend("postgresql", db, keys)
    capsys.readouterr()
    assert main(["vault", "migrate", "--keyring", world["keyring"], "--from", sqlite.db, "--to", db,
                 "--to-keystore", keys, "--operator", "dba", "--quiet"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["records"] == world["total"] - 6 and summary["days"] == 2
    assert summary["audit_entries"] == len(entries_before) and summary["warrants"] == 1
    assert summary["day_keys"] == 2 and summary["destroyed_keys"] == 1
    # The audit log moved byte for byte, and the migration is the next entry, witnessed like the rest.
    after = [e for (e,) in pg.sql("SELECT entry FROM audit ORDER BY seq")]
    assert after[:len(entries_before)] == entries_before
    assert orjson.loads(after[-1])["action"] == "migrate" and orjson.loads(after[-1])["operator"] == "dba"
    assert "@" not in orjson.loads(after[-1])["source"]
    capsys.readouterr()
    assert main(["vault", "audit", "verify", *pg.args(), "--witness", witness]) == EXIT_OK, capsys.readouterr().err
    # The same answers from the copy; the purged day stays purged (its tombstone and cut-off moved too).
    code, ids, err = _query(world, pg, capsys, A)
    assert code == EXIT_OK, err
    assert ids == before
    assert pg.day_keys() == {JAN_4, FEB_10}
    late = _ingest(world, pg, capsys)
    assert late["stored"] == 0 and late["expired"] == 6 and late["duplicates"] == world["total"] - 6
    # A second migration into the now non-empty target is refused, and changes nothing.
    capsys.readouterr()
    assert main(["vault", "migrate", "--keyring", world["keyring"], "--from", sqlite.db, "--to", db,
                 "--to-keystore", keys, "--quiet"]) == EXIT_FATAL
    assert "migration not done" in (err := capsys.readouterr().err) and "already holds" in err
    assert len(pg.sql("SELECT seq FROM audit")) == len(after) + 1  # only the query above was added


# --------------------------------------------------------------------------- dedupe across days

_CSV_MAPPING = """[csv]
columns = ["cgrid", "run_id", "tor", "origin_id", "request_type", "direction", "tenant", "category", "account",
           "subject", "destination", "setup_time", "answer_time", "usage", "cost", "extra3", "extra2", "extra1"]

[map]
origin_id = "record_id"
account = "cli"
destination = "dialled"
answer_time = "start"
usage = "duration"
"""


def test_a_record_resent_once_it_can_be_read_is_the_one_stored_undated_under_its_segments_day(
        world, backend, capsys, tmp_path):
    """Ingest files a record it cannot read under its segment's day (today); sent again and read with
    the right format it is dated on its call day, another day, and must still be the stored record.
    After `vault reindex` moved it there, sending it again is a duplicate of its own day."""
    lines = [f"cg-{i},default,*voice,orig-{i},*rated,*out,cgrates.org,call,{A},{A},{B},"
             f"2020-01-0{3 + i} 08:42:25 +0000 UTC,2020-01-0{3 + i} 08:42:26 +0000 UTC,{10 + i}s,1.01,x,\"\",y"
             for i in range(2)]
    (tmp_path / "cg.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "cg.toml").write_text(_CSV_MAPPING)
    fmt = ["--format", "csv", "--mapping", str(tmp_path / "cg.toml")]
    assert main(["process", "--keyring", str(world["root"] / "keys" / "worker-keyring.json"), "--input",
                 str(tmp_path / "cg.csv"), "--out-dir", str(tmp_path / "out"), "--quiet", *fmt]) == 0
    retention = str(tmp_path / "out" / "retention.jsonl")

    def ingest(*extra: str) -> dict:
        capsys.readouterr()
        assert _vault(world, backend, "ingest", "--input", retention, "--quiet", *extra) == EXIT_OK
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    first = ingest()
    assert (first["stored"], first["unparsed"]) == (2, 2)  # filed undated, under today
    again = ingest(*fmt)  # now read: dated 3 and 4 January 2020
    assert (again["stored"], again["duplicates"]) == (0, 2), again
    assert _vault(world, backend, "reindex", *fmt) == EXIT_OK
    capsys.readouterr()
    moved = ingest(*fmt)
    assert (moved["stored"], moved["duplicates"]) == (0, 2), moved
    assert _vault(world, backend, "status") == EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["records"] == 2 and status["unread_records"] == 0
    assert {d["day"] for d in status["days"] if d["records"]} == {"2020-01-03", "2020-01-04"}


def test_a_postgresql_vault_of_an_earlier_release_is_upgraded_by_vault_init(world, pg_vault_urls, capsys):
    """A vault made before ids were flagged undated: a sink stops and says how; `vault init` upgrades it."""
    backend = Backend("postgresql", *pg_vault_urls)
    assert _ingest(world, backend, capsys)["stored"] == world["total"]
    backend.sql_many(("DROP INDEX record_ids_undated", ()), ("ALTER TABLE record_ids DROP COLUMN undated", ()),
                     ("CREATE INDEX record_ids_id ON record_ids (record_id)", ()))  # the earlier release's layout
    capsys.readouterr()
    assert _vault(world, backend, "status") == EXIT_FATAL
    err = capsys.readouterr().err
    assert "earlier cdrpipe" in err and "cdrpipe vault init" in err
    assert _vault(world, backend, "init") == EXIT_OK
    columns = {c for (c,) in backend.sql("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'vault' AND table_name = 'record_ids'")}
    assert "undated" in columns
    assert backend.sql("SELECT to_regclass('vault.record_ids_id')") == [(None,)]
    again = _ingest(world, backend, capsys)  # the upgraded vault still knows every stored record
    assert again["stored"] == 0 and again["duplicates"] == world["total"]
