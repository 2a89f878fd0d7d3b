"""The vault end to end through the CLI: process -> ingest -> query, tampering, purge, restore, leaks.

The raw records are built here with known parties (not drawn from a generator), so the
expected answer of every query is known by construction, not recomputed with the code
under test. Target A is a UK number written in every format mediation uses; target B a
German one; near misses (one digit off, one digit longer, the same digits in a non-party
field) must never be returned.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_vault_keyring, load_worker_keyring
from pipeline.vault.export import ETSI_NAMESPACE
from pipeline.vault.keystore import KEYSTORE_SALT, KeyDestroyedError, Keystore
from pipeline.vault.store import VaultStore, rec_table

A = "+447700900123"
A_FORMS = ["07700 900123", "+44 7700 900123", "00447700900123", "tel:+447700900123", "447700900123",
           "(07700) 900-123", "+\uff14\uff14\uff17\uff17\uff10\uff10\uff19\uff10\uff10\uff11\uff12\uff13"]
B = "+4915110021504"
B_FORMS = ["+49 151 10021504", "0049 151 1002 1504", "004915110021504", "+4915110021504"]
NEAR = ["07700 900124", "+447700900125", "07700 9001233", "+4915110021505"]
OTHER = ["07700 900555", "+447700900777", "+33612345678", "07700 900999"]
IMSI, IMEI = "234150001234567", "35925406123456"
JAN, FEB, MAR = "2020-01", "2020-02", "2020-03"


def _records() -> tuple[list[bytes], dict[str, set[str]], list[str]]:
    """Raw lines, the ids where each target is a party (by construction), and A's ids in time order."""
    lines: list[bytes] = []
    expect: dict[str, set[str]] = {"A": set(), "B": set(), "imsi": set(), "imei": set(), "A-feb": set()}
    timed: list[tuple[dt.datetime, str]] = []
    n = 0

    def when(start: str) -> dt.datetime:
        if start.isdigit():
            return dt.datetime.fromtimestamp(int(start), dt.timezone.utc)
        return dt.datetime.fromisoformat(start.replace("Z", "+00:00"))

    def add(cli: str, dialled: str, start: str, *, parties: tuple[str, ...] = (), **extra: object) -> None:
        nonlocal n
        n += 1
        rid = f"rec-{n:04d}"
        doc = {"record_id": rid, "cli": cli, "dialled": dialled, "start": start, "duration": 30 + n, **extra}
        lines.append(orjson.dumps(doc))
        for p in parties:
            expect[p].add(rid)
        if "A" in parties:
            timed.append((when(start), rid))
            if when(start).strftime("%Y-%m") == FEB:
                expect["A-feb"].add(rid)

    days = [f"{m}-{d:02d}" for m in (JAN, FEB, MAR) for d in (3, 11, 19, 27)]
    for i, day in enumerate(days):
        form = A_FORMS[i % len(A_FORMS)]
        other = OTHER[i % len(OTHER)]
        add(form, other, f"{day}T{8 + i % 10:02d}:15:00Z", parties=("A",))                       # A calls
        add(other, A_FORMS[(i + 3) % len(A_FORMS)], f"{day}T{7 + i % 10:02d}:40:00+00:00", parties=("A",))  # A called
        add(B_FORMS[i % len(B_FORMS)], other, f"{day}T12:00:00Z", parties=("B",))
        add(other, B_FORMS[(i + 1) % len(B_FORMS)], f"{day}T13:30:00Z", parties=("B",))
        add(NEAR[i % len(NEAR)], other, f"{day}T14:00:00Z")                                    # near misses
        add(other, NEAR[(i + 1) % len(NEAR)], f"{day}T15:00:00Z", note="07700 900123")        # A only in a note
        add(OTHER[(i + 1) % 4], other, f"{day}T16:00:00Z", imsi=IMSI, imei=IMEI + "7", parties=("imsi", "imei"))
    # Epoch seconds start, and a repeated cli (the pipeline DLQs it, keeping the plain record_id
    # it finds in the bytes; the vault still finds A in it).
    add(OTHER[0], A_FORMS[0], "1581033600", parties=("A",))                                 # 2020-02-07T00:00Z
    n += 1
    lines.append(f'{{"record_id":"rec-{n:04d}","cli":"07700 900555","dialled":"07700 900999",'
                 f'"cli":"{A_FORMS[2]}","start":"2020-02-09T10:00:00Z","duration":5}}'.encode())
    dup_id = f"rec-{n:04d}"
    expect["A"].add(dup_id)
    expect["A-feb"].add(dup_id)
    timed.append((when("2020-02-09T10:00:00Z"), dup_id))
    lines.append(b"cli=07700900123 dialled=07700900555 not json at all")                 # unparsed
    return lines, expect, [rid for _t, rid in sorted(timed)]


@pytest.fixture(scope="module", autouse=True)
def long_retention():
    """These records date from 2020: a 10-year retention keeps them (retention itself: test_vault_retention.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDRPIPE_VAULT_RETENTION", "10y")
        yield


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys, raw input, `cdrpipe process` output and an ingested vault (shared, read-only).

    The vault names records by their record_ref (the token of kind record of the id, under the worker
    keyring), so ``expect`` and ``a_order`` hold the refs of the ids built in ``_records``."""
    root = tmp_path_factory.mktemp("vault")
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    lines, expect, a_order = _records()
    raw = root / "raw.jsonl"
    raw.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input", str(raw),
                 "--out-dir", str(root / "out"), "--quiet"]) == 0
    db = root / "vault.db"
    assert main(["vault", "ingest", "--keyring", str(root / "keys" / "vault-keyring.json"), "--db", str(db),
                 "--input", str(root / "out" / "retention.jsonl"), "--quiet"]) == 0
    # The warrant every query here runs under: the targets, their near misses and bystanders, over 2020.
    assert main(["vault", "warrant", "add", "--keyring", str(root / "keys" / "vault-keyring.json"), "--db", str(db),
                 "--id", "WR-2020/17", "--authority", "test", "--officer", "PC-4411", "--from", "2019-12-01",
                 "--to", "2020-12-31", "--expires", "2099-12-31",
                 "--targets", ",".join([A, B, f"imsi:{IMSI}", f"imei:{IMEI}0", *NEAR, *OTHER])]) == 0
    refs = Tokeniser(load_worker_keyring(root / "keys" / "worker-keyring.json"))
    ref = lambda rid: refs.token_one("record", rid)  # noqa: E731
    return {"root": root, "db": db, "keyring": root / "keys" / "vault-keyring.json",
            "worker": root / "keys" / "worker-keyring.json", "retention": root / "out" / "retention.jsonl",
            "dlq": root / "out" / "dlq.jsonl", "expect": {k: set(map(ref, v)) for k, v in expect.items()},
            "a_order": list(map(ref, a_order)), "a_order_ids": a_order, "ref": ref,
            "lines": lines}  # type: ignore[dict-item]


def _copy(vault: dict, dest: Path) -> dict:
    """A private copy of the vault files (db + keystore) for a test that changes them."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vault.db", "vault.db.keys"):
        shutil.copy2(vault["db"].parent / name, dest / name)
    return {**vault, "db": dest / "vault.db"}


def _query(vault: dict, capsys: pytest.CaptureFixture[str], target: str | None, *extra: str,
           window: tuple[str, str] = ("2020-01-01", "2020-03-31"), kind: str = "msisdn") -> tuple[int, bytes, str]:
    argv = ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(vault["db"]),
            "--from", window[0], "--to", window[1], "--warrant", "WR-2020/17", "--officer", "PC-4411",
            "--kind", kind, *extra]
    if target is not None:
        argv += ["--target", target]
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out.encode(), out.err


def _ids(jsonl: bytes) -> list[str]:
    """The record refs of a JSONL delivery (the vault never has the ids outside the sealed records)."""
    rows = [orjson.loads(line) for line in jsonl.splitlines()]
    assert all("record_id" not in row for row in rows)
    return [row["record_ref"] for row in rows]


# --------------------------------------------------------------------------- queries

@pytest.mark.parametrize("form", A_FORMS)
def test_query_finds_exactly_the_targets_records_in_time_order(vault, capsys, form):
    code, out, err = _query(vault, capsys, form)
    assert code == EXIT_OK, err
    # Exactly A's records (caller and callee, every format, the repeated-field one), sorted by start.
    assert _ids(out) == vault["a_order"]
    assert len(vault["a_order"]) == len(vault["expect"]["A"]) == 12 * 2 + 2


@pytest.mark.parametrize("form", B_FORMS)
def test_query_international_target(vault, capsys, form):
    code, out, _err = _query(vault, capsys, form)
    assert code == EXIT_OK
    assert set(_ids(out)) == vault["expect"]["B"]


def test_near_misses_and_non_party_fields_are_never_returned(vault, capsys):
    for near in NEAR:
        code, out, _ = _query(vault, capsys, near)
        assert code == EXIT_OK
        got = set(_ids(out))
        assert not got & vault["expect"]["A"] and not got & vault["expect"]["B"]


def test_window_is_half_open_and_a_bare_to_date_includes_that_day(vault, capsys):
    code, out, _ = _query(vault, capsys, A, window=("2020-02-01", "2020-02-29"))
    assert code == EXIT_OK
    assert set(_ids(out)) == vault["expect"]["A-feb"] and len(vault["expect"]["A-feb"]) == 4 * 2 + 2
    code, out, _ = _query(vault, capsys, A, window=("2020-02-03T08:00:00Z", "2020-02-03T08:15:00Z"))
    assert _ids(out) == []  # A's call that day starts exactly at 08:15: excluded by [from, to)


def test_query_by_imsi_and_imei(vault, capsys):
    code, out, _ = _query(vault, capsys, IMSI, kind="imsi")
    assert code == EXIT_OK and set(_ids(out)) == vault["expect"]["imsi"]
    code, out, _ = _query(vault, capsys, IMEI + "0", kind="imei")  # any check digit: TAC+serial is the identity
    assert code == EXIT_OK and set(_ids(out)) == vault["expect"]["imei"]


def test_unread_records_are_kept_but_no_warrant_can_list_them(vault, capsys):
    """A record no format can read cannot be matched to a warrant's targets: it is stored, never listed."""
    conn = sqlite3.connect(vault["db"])
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name GLOB 'rec_[0-9]*'")]
        unread = sum(conn.execute(f"SELECT count(*) FROM {t} WHERE parsed = 0").fetchone()[0] for t in tables)
    finally:
        conn.close()
    assert unread == 1
    code, out, err = _query(vault, capsys, None, "--unparsed", window=("2017-01-01", "2100-01-01"))
    assert code == EXIT_USAGE and out == b"" and "vault reindex" in err


def test_raw_records_come_back_unaltered(vault, capsys):
    code, out, _ = _query(vault, capsys, A)
    assert code == EXIT_OK
    originals = {vault["ref"](orjson.loads(line)["record_id"]): line for line in vault["lines"] if line.startswith(b"{")}
    checked = 0
    for row in map(orjson.loads, out.splitlines()):
        if row["record_ref"] in originals:
            assert row["raw"].encode() == originals[row["record_ref"]]
            checked += 1
    assert checked == len(vault["a_order"])  # every record of A, the one with a repeated cli too


def test_csv_and_etsi_xml_deliveries(vault, capsys):
    code, out, _ = _query(vault, capsys, A, "--format", "csv")
    assert code == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out.decode())))
    assert [r["record_ref"] for r in rows] == vault["a_order"] and "record_id" not in rows[0]
    assert [r["record_number"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]

    code, out, err = _query(vault, capsys, A, "--format", "etsi-xml", "--authorised-org", "NCA-UK",
                            "--csp-id", "ExampleTel")
    assert code == EXIT_OK, err
    ns = {"e": ETSI_NAMESPACE}
    root = ET.fromstring(out)
    assert root.find("e:retainedDataHeader/e:requestID/e:requestNumber", ns).text == "WR-2020/17"
    assert root.find("e:retainedDataHeader/e:requestID/e:authorisedOrganisationID", ns).text == "NCA-UK"
    assert root.find("e:retainedDataHeader/e:requestID/e:countryCode", ns).text == "GB"
    assert root.find("e:retainedDataHeader/e:cSPID", ns).text == "ExampleTel"
    records = root.findall("e:retainedDataPayload/e:responsePayload/e:responseRecords/e:RetainedDataRecord", ns)
    assert [r.find("e:recordNumber", ns).text for r in records] == [str(i) for i in range(1, len(records) + 1)]
    assert [r.find("e:nationalRecordExtension/e:recordID", ns).text for r in records] == vault["a_order"]
    first = records[0]
    numbers = [p.find("e:partyNumber", ns).text for p in first.iter(f"{{{ETSI_NAMESPACE}}}partyInformation")]
    assert A in numbers
    assert first.find(".//e:communicationTime/e:startTime", ns).text.endswith("Z")
    raw = base64.b64decode(first.find("e:nationalRecordExtension/e:rawRecord", ns).text)
    assert orjson.loads(raw)["record_id"] == vault["a_order_ids"][0]  # the id itself only inside the raw record
    code, _, err = _query(vault, capsys, A, "--format", "etsi-xml")
    assert code == EXIT_USAGE and "--authorised-org" in err


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("drop", ["--warrant", "--officer"])
def test_query_without_warrant_or_officer_is_refused(vault, capsys, drop):
    argv = ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(vault["db"]), "--target", A,
            "--from", "2020-01-01", "--to", "2020-03-31", "--warrant", "WR-1", "--officer", "PC-1"]
    i = argv.index(drop)
    del argv[i:i + 2]
    before = _audit_count(vault["db"])
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert drop in err and "required" in err
    argv[argv.index("--from") + 1:argv.index("--from") + 1] = []
    assert main(argv + [drop, "   "]) == EXIT_USAGE  # blank is not a reference
    assert _audit_count(vault["db"]) == before  # nothing ran, nothing to audit
    capsys.readouterr()


def _audit_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        conn.close()


def test_wrong_or_missing_keyring_is_refused_clearly(vault, tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    other = tmp_path / "other" / "vault-keyring.json"
    # Querying a vault with another vault's keyring.
    code, _, err = _query({**vault, "keyring": other}, capsys, A)
    assert code == EXIT_FATAL and "use the vault keyring that created" in err
    # Ingesting segments sealed for another vault key.
    assert main(["vault", "ingest", "--keyring", str(other), "--db", str(tmp_path / "new.db"),
                 "--input", str(vault["retention"]), "--quiet"]) == EXIT_FATAL
    err = capsys.readouterr().err
    assert "sealed for vault key" in err and "vault keyring whose public key the workers use" in err
    # No keyring at all; a worker keyring instead of the vault's.
    code, _, err = _query({**vault, "keyring": tmp_path / "missing.json"}, capsys, A)
    assert code == EXIT_FATAL and "keys generate" in err
    code, _, err = _query({**vault, "keyring": vault["worker"]}, capsys, A)
    assert code == EXIT_FATAL and "not a cdrpipe vault keyring" in err
    # A vault keyring with the right key id but another private key: the keystore check catches it.
    doc = json.loads(vault["keyring"].read_text())
    doc["vault_private_key"]["x25519"] = json.loads(other.read_text())["vault_private_key"]["x25519"]
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    forged.chmod(0o600)  # keyrings open to others are refused before this check (test_permissions.py)
    code, _, err = _query({**vault, "keyring": forged}, capsys, A)
    assert code == EXIT_FATAL and "does not match this keyring's private key" in err
    # A missing keystore: refused, never silently recreated.
    copy = _copy(vault, tmp_path / "nokeys")
    (copy["db"].parent / "vault.db.keys").unlink()
    code, _, err = _query(copy, capsys, A)
    assert code == EXIT_FATAL and "keystore" in err and "does not exist" in err
    assert main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--input", str(vault["retention"]), "--quiet"]) == EXIT_FATAL
    assert "refusing to create new day keys" in capsys.readouterr().err


# --------------------------------------------------------------------------- idempotency

def test_ingest_is_idempotent(vault, tmp_path, capsys):
    copy = _copy(vault, tmp_path / "v")
    total = len(vault["lines"])
    before = _count_records(copy["db"])
    assert before == total
    for source in (vault["retention"], vault["dlq"], vault["retention"]):
        assert main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                     "--input", str(source), "--quiet"]) == EXIT_OK
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["stored"] == 0 and summary["duplicates"] == summary["records"] > 0
    assert _count_records(copy["db"]) == before
    # The same record twice in one batch, and a new one beside it: stored once each.
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_bytes(b'{"record_id":"new-1","cli":"07700 900123","dialled":"07700 900555",'
                      b'"start":"2020-03-05T09:00:00Z","duration":1}\n')
    assert main(["process", "--keyring", str(vault["worker"]), "--input", str(fresh), "--out-dir",
                 str(tmp_path / "o"), "--quiet"]) == EXIT_OK
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes((tmp_path / "o" / "retention.jsonl").read_bytes() * 2)
    assert main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--input", str(twice), "--quiet"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["stored"], summary["duplicates"]) == (1, 1)
    assert _count_records(copy["db"]) == before + 1


def _count_records(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'rec_[0-9]*'")]
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    finally:
        conn.close()


# --------------------------------------------------------------------------- integrity

def _a_rows(db: Path) -> list[tuple[str, int, str, bytes]]:
    """(table, rid, record_id, ct) of every stored record of target A (by record id)."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'rec_[0-9]*'")]
        return [(t, rid, record_id, ct) for t in tables
                for rid, record_id, ct in conn.execute(f"SELECT rid, record_id, ct FROM {t}")]
    finally:
        conn.close()


def _set_ct(db: Path, table: str, rid: int, ct: bytes) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE {table} SET ct = ? WHERE rid = ?", (ct, rid))
    conn.close()


@pytest.mark.parametrize("where", ["nonce", "body", "tag"])
def test_a_flipped_byte_in_any_ciphertext_is_reported_never_returned(vault, tmp_path, capsys, where):
    copy = _copy(vault, tmp_path / "v")
    targets = [r for r in _a_rows(copy["db"]) if r[2] in vault["expect"]["A"]]
    table, rid, record_id, ct = targets[3]
    pos = {"nonce": 5, "body": 12 + len(ct[12:-16]) // 2, "tag": len(ct) - 1}[where]
    _set_ct(copy["db"], table, rid, ct[:pos] + bytes([ct[pos] ^ 0x01]) + ct[pos + 1:])
    code, out, err = _query(copy, capsys, A)
    assert code == EXIT_FATAL
    assert record_id in err and "failed authentication" in err and "NOT returned" in err
    got = _ids(out)
    assert record_id not in got
    assert set(got) == set(vault["a_order"]) - {record_id}  # everything else still delivered
    entry = orjson.loads(sqlite3.connect(copy["db"]).execute(
        "SELECT entry FROM audit ORDER BY seq DESC LIMIT 1").fetchone()[0])
    assert entry["integrity_failures"] == 1 and entry["result_count"] == len(got)


def test_every_stored_ciphertext_is_authenticated(vault, tmp_path):
    """Flip one byte in each stored record in turn: none ever decrypts (all records, all days)."""
    keyring = load_vault_keyring(vault["keyring"])
    copy = _copy(vault, tmp_path / "v")
    store = VaultStore(copy["db"], vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid)
    keystore = Keystore(str(copy["db"]) + ".keys", keyring)
    try:
        checked = 0
        for day, kid in store.partitions().items():
            cipher = keystore.cipher_for_read(day, kid)
            for rid, record_id, ct in store.conn.execute(f"SELECT rid, record_id, ct FROM {rec_table(day)}"):
                assert cipher.open(record_id, ct)  # intact: opens
                pos = rid * 7 % len(ct)
                bad = ct[:pos] + bytes([ct[pos] ^ 0x80]) + ct[pos + 1:]
                with pytest.raises(Exception) as info:
                    cipher.open(record_id, bad)
                assert "failed authentication" in str(info.value) and record_id in str(info.value)
                with pytest.raises(Exception):
                    cipher.open(record_id + "x", ct)  # moved to another record id
                checked += 1
        assert checked == len(vault["lines"])
    finally:
        keystore.close()
        store.close()


def test_a_ciphertext_moved_to_another_record_is_detected(vault, tmp_path, capsys):
    copy = _copy(vault, tmp_path / "v")
    rows = [r for r in _a_rows(copy["db"]) if r[2] in vault["expect"]["A"]]
    (t1, rid1, id1, ct1), (t2, rid2, id2, ct2) = rows[0], rows[1]
    _set_ct(copy["db"], t1, rid1, ct2)
    code, out, err = _query(copy, capsys, A)
    assert code == EXIT_FATAL and id1 in err and id1 not in _ids(out)


# --------------------------------------------------------------------------- purge and restore

def _day_keys(keystore_path: Path) -> dict[int, bytes]:
    """The raw wrapped-key rows of a keystore file, read directly (test-side, no vault code)."""
    conn = sqlite3.connect(keystore_path)
    try:
        return dict(conn.execute("SELECT day, wrapped FROM day_keys").fetchall())
    finally:
        conn.close()


def test_purge_then_restoring_an_old_database_copy_reads_nothing_before_the_cutoff(vault, tmp_path, capsys):
    copy = _copy(vault, tmp_path / "live")
    db, keys = copy["db"], Path(str(copy["db"]) + ".keys")
    backup = tmp_path / "backup-before-purge.db"
    shutil.copy2(db, backup)  # the nightly backup: taken before the purge, no WAL pending (vault closed)
    wrapped_before = _day_keys(keys)
    jan_days = {d for d in wrapped_before if d < 18293}  # 18293 = 2020-02-01

    assert main(["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(db),
                 "--before", "2020-02-01", "--operator", "ops-1"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["days_purged"] == len(jan_days) == summary["keys_destroyed"] > 0
    # The destroyed keys are gone from the keystore file itself (and its WAL), not just hidden.
    keystore_bytes = keys.read_bytes() + (Path(str(keys) + "-wal").read_bytes()
                                          if Path(str(keys) + "-wal").exists() else b"")
    for day in jan_days:
        assert wrapped_before[day] not in keystore_bytes
    code, out, _ = _query(copy, capsys, A, window=("2020-01-01", "2020-01-31"))
    assert code == EXIT_OK and _ids(out) == []

    # Disaster recovery restores the pre-purge database; the keyring and keystore are the current ones.
    shutil.copy2(backup, db)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    code, out, err = _query(copy, capsys, A, window=("2020-01-01", "2020-01-31"))
    assert code == EXIT_FATAL and "acknowledge-gap" in err and out == b""  # the restore lost the purge's audit entry
    assert main(["vault", "audit", "acknowledge-gap", "--keyring", str(vault["keyring"]), "--db", str(db),
                 "--officer", "ops-1", "--reason", "restored nightly backup after disk failure"]) == EXIT_OK
    capsys.readouterr()
    code, out, err = _query(copy, capsys, A, window=("2020-01-01", "2020-01-31"))
    assert code == EXIT_OK and _ids(out) == []
    assert "keys were destroyed by a purge" in err
    # Later months are still readable from the same restored copy (so the test can fail).
    code, out, _ = _query(copy, capsys, A, window=("2020-02-01", "2020-03-31"))
    assert code == EXIT_OK and set(_ids(out)) >= vault["expect"]["A-feb"]

    # Below the CLI: the restored January ciphertexts open with no key the vault can produce.
    keyring = load_vault_keyring(vault["keyring"])
    store = VaultStore(db, vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid)
    keystore = Keystore(keys, keyring)
    try:
        jan = {d: kid for d, kid in store.partitions().items() if d in jan_days}
        assert set(jan) == jan_days  # the restored copy really holds January's records
        live = [keystore.cipher_for_read(d, kid) for d, kid in store.partitions().items() if d not in jan_days]
        tried = 0
        for day, kid in jan.items():
            with pytest.raises(KeyDestroyedError):
                keystore.cipher_for_read(day, kid)
            for _rid, record_id, ct in store.conn.execute(f"SELECT rid, record_id, ct FROM {rec_table(day)}"):
                for cipher in live:  # every key that still exists
                    with pytest.raises(Exception):
                        cipher.open(record_id, ct)
                tried += 1
        assert tried > 0
    finally:
        keystore.close()
        store.close()


def test_purge_refuses_young_data_and_audits(vault, tmp_path, capsys):
    copy = _copy(vault, tmp_path / "v")
    assert main(["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--before", "2999-01-01"]) == EXIT_USAGE
    assert "--allow-early" in capsys.readouterr().err
    assert main(["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--before", "2020-03-01", "--dry-run"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["would_purge"] and all(d < "2020-03-01" for d in plan["would_purge"])
    assert _count_records(copy["db"]) == len(vault["lines"])  # dry run changed nothing
    assert main(["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--retention", "12mo", "--operator", "cron"]) == EXIT_OK
    capsys.readouterr()
    entry = orjson.loads(sqlite3.connect(copy["db"]).execute(
        "SELECT entry FROM audit ORDER BY seq DESC LIMIT 1").fetchone()[0])
    assert entry["action"] == "purge" and entry["operator"] == "cron"
    assert entry["records_purged"] == len(vault["lines"]) - 1  # all of 2020 is > 12 months old; not the unparsed
    assert main(["vault", "audit", "verify", "--db", str(copy["db"])]) == EXIT_OK


def test_a_purged_day_is_not_brought_back_by_a_late_record(vault, tmp_path, capsys):
    copy = _copy(vault, tmp_path / "v")
    assert main(["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--before", "2020-02-01"]) == EXIT_OK
    capsys.readouterr()
    assert main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--input", str(vault["retention"]), "--quiet"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stored"] == 0 and summary["expired"] == 4 * 7  # January's records: not stored again
    code, out, _ = _query(copy, capsys, A, window=("2020-01-01", "2020-01-31"))
    assert _ids(out) == []
    # A batch made only of records for purged days stores nothing and says so.
    jan = tmp_path / "jan.jsonl"
    jan.write_bytes(b'{"record_id":"late-1","cli":"07700 900123","dialled":"07700 900555",'
                    b'"start":"2020-01-20T09:00:00Z","duration":1}\n')
    assert main(["process", "--keyring", str(vault["worker"]), "--input", str(jan), "--out-dir",
                 str(tmp_path / "o"), "--quiet"]) == EXIT_OK
    assert main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]),
                 "--input", str(tmp_path / "o" / "retention.jsonl"), "--quiet"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["records"], summary["stored"], summary["expired"]) == (1, 0, 1)


def test_a_file_that_is_not_a_vault_is_refused(vault, tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    code, _, err = _query({**vault, "db": junk}, capsys, A)
    assert code == EXIT_FATAL and "junk.db" in err
    keystore_as_db = {**vault, "db": Path(str(vault["db"]) + ".keys")}
    code, _, err = _query(keystore_as_db, capsys, A)
    assert code == EXIT_FATAL and "not a cdrpipe vault database" in err
    code, _, err = _query({**vault, "db": tmp_path / "none.db"}, capsys, A)
    assert code == EXIT_FATAL and "no vault database" in err


# --------------------------------------------------------------------------- leaks

@pytest.mark.parametrize("log_format", ["text", "json"])
def test_vault_secrets_and_targets_never_in_logs_errors_or_stored_in_clear(vault, tmp_path, capsys, caplog,
                                                                          log_format):
    caplog.set_level("DEBUG")
    copy = _copy(vault, tmp_path / "v")
    keyring_doc = json.loads(vault["keyring"].read_text())
    keyring = load_vault_keyring(vault["keyring"])
    private_b64 = keyring_doc["vault_private_key"]["x25519"]
    index_b64 = keyring_doc["index_key"]["secret"]
    secret = keyring.private.private_bytes_raw()
    wrap = AESGCM(HKDF(hashes.SHA256(), 32, KEYSTORE_SALT, b"day-key-wrap").derive(secret))
    conn = sqlite3.connect(str(copy["db"]) + ".keys")
    day_keys = [wrap.decrypt(w[:12], w[12:], f"cdrpipe/day-key/{d}/{k}".encode())
                for d, k, w in conn.execute("SELECT day, kid, wrapped FROM day_keys")]
    conn.close()
    from pipeline.vault.index import BlindIndexer
    indexer = BlindIndexer(keyring.index_key)
    subkeys = [indexer._subkey_hex(p) for p in ("index/msisdn", "index/imsi", "index/imei", "audit/msisdn")]
    secrets_ = [private_b64, index_b64, secret.hex(), keyring.index_key.secret.hex(), *subkeys,
                *(k.hex() for k in day_keys), *(base64.b64encode(k).decode() for k in day_keys)]
    targets = ["7700900123", "07700 900123", "15110021504", IMSI, IMEI]

    runs = [
        ["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--input",
         str(vault["retention"])],
        ["vault", "warrant", "add", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--id", "W-9",
         "--authority", "court", "--officer", "O-9", "--targets", f"07700 900123,imsi:{IMSI},imei:{IMEI}",
         "--from", "2020-01-01", "--to", "2020-03-31", "--expires", "2099-01-01"],
        ["vault", "warrant", "add", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--id", "W-10",
         "--authority", "court", "--officer", "O-9", "--targets", "07700 900123,0770090012x",   # not a number
         "--from", "2020-01-01", "--to", "2020-03-31", "--expires", "2099-01-01"],
        ["vault", "warrant", "list", "--keyring", str(vault["keyring"]), "--db", str(copy["db"])],
        ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--target", "07700 900123",
         "--from", "2020-01-01", "--to", "2020-03-31", "--warrant", "W-9", "--officer", "O-9", "--output",
         str(tmp_path / "answer.jsonl")],
        ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--target", "07700 900123",
         "--from", "2020-01-01", "--to", "2020-03-31", "--warrant", "W-9"],                    # refused
        ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--target", "0770090012x",
         "--from", "2020-01-01", "--to", "2020-03-31", "--warrant", "W-9", "--officer", "O-9"],  # not a number
        ["vault", "query", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--target", "07700 900555",
         "--from", "2020-01-01", "--to", "2020-03-31", "--warrant", "W-9", "--officer", "O-9"],  # not in scope
        ["vault", "status", "--keyring", str(vault["keyring"]), "--db", str(copy["db"])],
        ["vault", "purge", "--keyring", str(vault["keyring"]), "--db", str(copy["db"]), "--before", "2020-02-01"],
        ["vault", "audit", "verify", "--db", str(copy["db"])],
        ["vault", "audit", "export", "--db", str(copy["db"])],
    ]
    seen = ""
    for argv in runs:
        main(["--log-level", "DEBUG", "--log-format", log_format, *argv])
        out = capsys.readouterr()
        if log_format == "json":  # what a collector ships: one object a line, nothing else
            assert all(json.loads(line) for line in out.err.splitlines() if line.strip())
        seen += out.out + out.err
    seen += caplog.text
    assert "W-9" in seen and "records" in seen  # the runs did produce output and logs to check
    for s in secrets_ + targets:
        assert s not in seen, f"leaked: {s[:6]}…"
    assert (tmp_path / "answer.jsonl").stat().st_mode & 0o077 == 0  # the delivery is owner-only
    # Nothing identifying is stored in clear: not in the database, not in the keystore.
    stored = copy["db"].read_bytes() + Path(str(copy["db"]) + ".keys").read_bytes()
    for s in secrets_ + ["7700900123", "15110021504", IMSI, IMEI]:
        assert s.encode() not in stored
    # Reprs never show key material.
    store = VaultStore(copy["db"], vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid)
    keystore = Keystore(str(copy["db"]) + ".keys", keyring)
    try:
        cipher = keystore.cipher_for_read(*next(iter(store.partitions().items())))
        text = " ".join(map(repr, (store, keystore, cipher, indexer, keyring)))
    finally:
        keystore.close()
        store.close()
    for s in secrets_:
        assert s not in text


def test_overlapping_batches_in_the_two_stage_pipeline_store_each_record_once(vault, tmp_path):
    """Batch k+1 is prepared while batch k is still being written: its dedupe must see batch k."""
    from pipeline.vault.ingest import Ingester
    from pipeline.vault.sink import BatchPipeline
    keyring = load_vault_keyring(vault["keyring"])
    envelopes = vault["retention"].read_bytes().splitlines()
    db = tmp_path / "fresh.db"
    store = VaultStore(db, vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid, region="GB", create=True)
    keystore = Keystore(str(db) + ".keys", keyring, create=True)
    ingester = Ingester(store, keystore, keyring, retention="10y")  # 2020 records
    pipeline = BatchPipeline(ingester)
    try:
        for _ in range(3):
            pipeline.submit(envelopes)  # the same records three times, back to back
        pipeline.close()
        totals = pipeline.totals
        assert (totals.records, totals.stored, totals.duplicates) == (3 * len(vault["lines"]), len(vault["lines"]),
                                                                     2 * len(vault["lines"]))
        assert _count_records(db) == len(vault["lines"])
    finally:
        ingester.close()
        keystore.close()
        store.close()


def _index_points_at_records(db: Path) -> tuple[int, int]:
    """(index keys whose row id is no record of their day, records of the day no key points at)."""
    conn = sqlite3.connect(db)
    try:
        days = [r[0][4:] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name GLOB 'rec_[0-9]*'")]
        dangling = sum(conn.execute(f"SELECT count(*) FROM idx_{d} WHERE (k & 4294967295) NOT IN "
                                    f"(SELECT rid FROM rec_{d})").fetchone()[0] for d in days)
        unindexed = sum(conn.execute(f"SELECT count(*) FROM rec_{d} WHERE rid NOT IN "
                                     f"(SELECT k & 4294967295 FROM idx_{d})").fetchone()[0] for d in days)
        return dangling, unindexed
    finally:
        conn.close()


def test_two_sinks_on_one_sqlite_vault_take_turns_and_store_each_record_once(vault, tmp_path, capsys):
    """Two writers prepare at once (both with the same provisional row ids, both seeing nothing stored),
    then write in turn: the second's rows move to the day's next free row ids with their index keys,
    and records the first stored meanwhile are duplicates, not a failed batch."""
    from pipeline.vault.ingest import Ingester
    keyring = load_vault_keyring(vault["keyring"])
    lines = vault["lines"]
    halves = []
    for name, part in (("a", lines[0::2]), ("b", lines[1::2])):  # both halves cover the same days
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(part) + b"\n")
        assert main(["process", "--keyring", str(vault["worker"]), "--input", str(tmp_path / f"{name}.jsonl"),
                     "--out-dir", str(tmp_path / name), "--quiet"]) == 0
        halves.append((tmp_path / name / "retention.jsonl").read_bytes().splitlines())
    db = tmp_path / "shared.db"
    sinks = []
    for _ in range(2):
        store = VaultStore(db, vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid, region="GB", create=True)
        keystore = Keystore(str(db) + ".keys", keyring, create=True)
        sinks.append((Ingester(store, keystore, keyring, retention="10y"), store, keystore))  # both allowed
    (a, _, _), (b, _, _) = sinks
    try:
        first, second, again = a.prepare(halves[0]), b.prepare(halves[1]), a.prepare(halves[1])
        assert first.days[0].columns[0][0] == second.days[0].columns[0][0] == 1  # the same provisional row ids
        assert a.write(first).stored == len(lines[0::2])
        assert b.write(second).stored == len(lines[1::2])
        raced = a.write(again)  # b stored these after a prepared them
        assert (raced.stored, raced.duplicates) == (0, len(lines[1::2]))
        assert _count_records(db) == len(lines)
        assert _index_points_at_records(db) == _index_points_at_records(vault["db"])  # as one sink writes them
        assert _index_points_at_records(db)[0] == 0
    finally:
        for ingester, store, keystore in sinks:
            ingester.close()
            keystore.close()
            store.close()
    # The shared vault answers queries as one written by one sink.
    assert main(["vault", "warrant", "add", "--keyring", str(vault["keyring"]), "--db", str(db), "--id", "WR-2020/17",
                 "--authority", "t", "--officer", "PC-4411", "--from", "2019-12-01", "--to", "2020-12-31",
                 "--expires", "2099-12-31", "--targets", A]) == 0
    code, out, err = _query({**vault, "db": db}, capsys, A)
    assert code == 0, err
    assert set(_ids(out)) == vault["expect"]["A"]


@pytest.mark.parametrize(("today", "spec", "first_kept"), [
    ("2026-11-25", "12mo", "2025-11-26"),   # 2025-11-25's twelve months ended on 2026-11-24
    ("2026-03-31", "1mo", "2026-03-01"),    # month clamped to 28 Feb, plus one day
    ("2024-02-29", "1y", "2023-03-01"),
    ("2026-01-10", "10d", "2026-01-01"),
    ("2026-01-10", "1w", "2026-01-04"),
])
def test_retention_cutoff(today, spec, first_kept):
    from pipeline.vault.retention import retention_cutoff
    assert str(retention_cutoff(dt.date.fromisoformat(today), spec)) == first_kept


def test_a_tampered_segment_is_quarantined_the_rest_stored(vault, tmp_path, capsys):
    envelopes = vault["retention"].read_bytes().splitlines()
    doc = orjson.loads(envelopes[0])
    ct = base64.b64decode(doc["ct"])
    doc["ct"] = base64.b64encode(ct[:40] + bytes([ct[40] ^ 1]) + ct[41:]).decode()
    fresh = tmp_path / "fresh.jsonl"
    assert main(["process", "--keyring", str(vault["worker"]), "--input", str(_one_record(tmp_path)),
                 "--out-dir", str(tmp_path / "o"), "--quiet"]) == EXIT_OK
    fresh.write_bytes(orjson.dumps(doc) + b"\n" + (tmp_path / "o" / "retention.jsonl").read_bytes() + b"not json\n")
    db = tmp_path / "q.db"
    code = main(["vault", "ingest", "--keyring", str(vault["keyring"]), "--db", str(db), "--input", str(fresh),
                 "--quiet"])
    out = capsys.readouterr()
    assert code == EXIT_FATAL and "quarantine" in out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert (summary["quarantined"], summary["stored"]) == (2, 1)  # the altered segment and the junk line
    conn = sqlite3.connect(db)
    kept = conn.execute("SELECT segment_id, envelope FROM quarantine ORDER BY id").fetchall()
    conn.close()
    assert kept[0][0] == doc["segment_id"] and orjson.loads(kept[0][1])["ct"] == doc["ct"]  # kept as received


def _one_record(tmp_path: Path) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"record_id":"one-1","cli":"07700 900555","dialled":"07700 900999",'
                     b'"start":"2020-03-05T09:00:00Z","duration":1}\n')
    return path
