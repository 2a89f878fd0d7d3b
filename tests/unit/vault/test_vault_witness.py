"""The audit log witnessed outside the vault: tampering is found even by an attacker who holds everything.

The attacker here can write the database and the keystore and holds the vault keyring with its
audit signing key: they rebuild the hash chain, re-sign every entry and move the keystore's
anchor. Only the witness (an append-only file the vault cannot rewrite) still tells the truth.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.cli import EXIT_FATAL, EXIT_OK, main
from pipeline.keys import load_vault_keyring
from pipeline.vault.audit import GENESIS, AuditSigner, entry_hash, read_entries
from pipeline.vault.keystore import Keystore

TODAY = dt.datetime.now(dt.timezone.utc).date()
A = "+447700900123"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A vault whose log (signed, witnessed from its first entry) holds a warrant and three queries."""
    root = tmp_path_factory.mktemp("witness")
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    start = dt.datetime.combine(TODAY - dt.timedelta(days=3), dt.time(9), dt.timezone.utc)
    (root / "raw.jsonl").write_bytes(orjson.dumps({"record_id": "r1", "cli": A, "dialled": "+447700900999",
                                                   "start": start.isoformat(), "duration": 5}) + b"\n")
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input",
                 str(root / "raw.jsonl"), "--out-dir", str(root / "out"), "--quiet"]) == 0
    base = ["--keyring", str(root / "keys" / "vault-keyring.json"), "--db", str(root / "vault.db")]
    assert main(["vault", "ingest", *base, "--quiet", "--input", str(root / "out" / "retention.jsonl")]) == 0
    witness = root / "audit-witness.jsonl"
    assert main(["vault", "warrant", "add", *base, "--id", "W-1", "--authority", "court", "--officer", "PC-1",
                 "--targets", A, "--from", str(TODAY - dt.timedelta(days=10)), "--to", str(TODAY),
                 "--expires", str(TODAY + dt.timedelta(days=9)), "--witness", str(witness)]) == EXIT_OK
    for _ in range(3):  # the vault remembers its witness: no --witness needed any more
        assert main(["vault", "query", *base, "--target", "07700 900123", "--from", str(TODAY - dt.timedelta(days=5)),
                     "--to", str(TODAY), "--warrant", "W-1", "--officer", "PC-1",
                     "--output", str(root / "answer.jsonl")]) == EXIT_OK
    return {"root": root, "base": base, "public": root / "keys" / "audit-public-key.txt"}


@pytest.fixture()
def vault(built: dict, tmp_path: Path) -> dict:
    """A private copy (database, keystore, witness) for one tampering."""
    for name in ("vault.db", "vault.db.keys", "audit-witness.jsonl"):
        shutil.copy2(built["root"] / name, tmp_path / name)
    return {"db": tmp_path / "vault.db", "witness": tmp_path / "audit-witness.jsonl", "public": built["public"],
            "keyring": built["root"] / "keys" / "vault-keyring.json"}


def _verify(vault: dict, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["vault", "audit", "verify", "--db", str(vault["db"]), "--public-key", str(vault["public"]),
                 "--witness", str(vault["witness"]), *extra])
    return code, capsys.readouterr().err


def _entries(vault: dict) -> list[dict]:
    return [json.loads(text) for _seq, text in read_entries(vault["db"])]


def _rewrite(vault: dict, entries: list[dict]) -> None:
    """What an attacker holding the database, the keystore and the audit key does: a consistent new log."""
    doc = json.loads(vault["keyring"].read_text())
    signer = AuditSigner.from_json(doc["audit_key"], "keyring")
    prev, rows = GENESIS, []
    for seq, entry in enumerate(entries, 1):
        entry = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
        entry["seq"], entry["prev_hash"] = seq, prev
        entry["hash"] = prev = entry_hash(entry)
        entry["signature"] = signer.sign(entry["hash"])
        rows.append((seq, orjson.dumps(entry).decode()))
    conn = sqlite3.connect(vault["db"])
    with conn:
        conn.execute("DELETE FROM audit")
        conn.executemany("INSERT INTO audit (seq, entry) VALUES (?, ?)", rows)
    conn.close()
    keystore = Keystore(str(vault["db"]) + ".keys", load_vault_keyring(vault["keyring"]))
    keystore.set_audit_anchor(rows[-1][0], json.loads(rows[-1][1])["hash"])
    keystore.close()


def test_the_intact_log_matches_its_witness_and_is_signed_throughout(vault, capsys):
    code, err = _verify(vault, capsys)
    assert code == EXIT_OK, err
    assert "5 entries" in err and "signatures (5)" in err and "5 entries match the witness (entries #1 to #5)" in err
    entries = _entries(vault)
    assert [e["action"] for e in entries] == ["witness_enabled", "warrant_add", "query", "query", "query"]
    schema = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "audit-entry.v1.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for entry in entries:
        assert not list(validator.iter_errors(entry)), entry["action"]


def test_an_edited_entry_is_detected(vault, capsys):
    conn = sqlite3.connect(vault["db"])
    with conn:
        text = conn.execute("SELECT entry FROM audit WHERE seq = 3").fetchone()[0]
        conn.execute("UPDATE audit SET entry = ? WHERE seq = 3", (text.replace('"count":1', '"count":0'),))
    conn.close()
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #3" in err


def test_a_deleted_entry_with_the_chain_recomputed_and_the_anchor_updated_is_detected(vault, capsys):
    entries = _entries(vault)
    _rewrite(vault, entries[:3] + entries[4:])  # entry #4 (a query) never happened, says the new log
    code, err = _verify(vault, capsys, "--witness", "")  # chain, signatures and anchor are all consistent...
    assert code == EXIT_OK, err
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #4" in err and "differs from the witness" in err  # ...the witness is not


def test_deleted_anchor_rows_are_detected(vault, capsys):
    conn = sqlite3.connect(str(vault["db"]) + ".keys")
    with conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if "anchor" in table or "meta" in table:
                conn.execute(f"DELETE FROM {table} WHERE 1")
    conn.close()
    code, err = _verify(vault, capsys, "--witness", "")
    assert code == EXIT_FATAL and "anchor" in err


def test_reordered_entries_are_detected(vault, capsys):
    entries = _entries(vault)
    entries[1], entries[2] = entries[2], entries[1]  # the query before the warrant it ran under
    _rewrite(vault, entries)
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #2" in err and "differs from the witness" in err


def test_a_truncated_witness_is_detected(vault, capsys):
    lines = vault["witness"].read_bytes().splitlines(keepends=True)
    vault["witness"].write_bytes(b"".join(lines[:-2]))
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #4" in err and "not in the witness" in err


def test_a_witness_with_an_extra_entry_is_detected(vault, capsys):
    """The log's last entry was cut and the anchor moved back: the witness still holds it."""
    _rewrite(vault, _entries(vault)[:-1])
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #5" in err and "in the witness but not in the log" in err


def test_the_witness_itself_cannot_be_edited_unnoticed(vault, capsys):
    text = vault["witness"].read_text().replace('"count":1', '"count":2', 1)
    vault["witness"].write_text(text)
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "differs from the witness" in err


def test_signing_switched_on_for_an_existing_vault_is_verified_from_that_entry(tmp_path, capsys):
    """Entries written before an audit key existed stay unsigned; from the first signed one on, all must be."""
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    full = json.loads((tmp_path / "keys" / "vault-keyring.json").read_text())
    old = tmp_path / "keys" / "old-keyring.json"
    old.write_text(json.dumps({k: v for k, v in full.items() if k != "audit_key"}))
    old.chmod(0o600)  # keyrings open to others are refused (test_permissions.py)
    db = tmp_path / "vault.db"
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert main(["vault", "ingest", "--keyring", str(old), "--db", str(db), "--input", str(tmp_path / "empty.jsonl"),
                 "--quiet"]) == 0
    for keyring in (old, old, tmp_path / "keys" / "vault-keyring.json", tmp_path / "keys" / "vault-keyring.json"):
        assert main(["vault", "warrant", "list", "--keyring", str(keyring), "--db", str(db)]) == EXIT_OK
    public = str(tmp_path / "keys" / "audit-public-key.txt")
    capsys.readouterr()
    assert main(["vault", "audit", "verify", "--db", str(db), "--public-key", public]) == EXIT_OK
    assert "every entry from #3" in capsys.readouterr().err
    assert main(["vault", "audit", "verify", "--db", str(db), "--public-key", public, "--signed-from", "1"]) == 1
    # Stripping the signature of a later entry is not "before signing": it is a removed signature.
    conn = sqlite3.connect(db)
    with conn:
        entry = json.loads(conn.execute("SELECT entry FROM audit WHERE seq = 4").fetchone()[0])
        entry.pop("signature")
        conn.execute("UPDATE audit SET entry = ? WHERE seq = 4", (json.dumps(entry),))
    conn.close()
    capsys.readouterr()
    assert main(["vault", "audit", "verify", "--db", str(db), "--public-key", public]) == EXIT_FATAL
    assert "entry #4" in capsys.readouterr().err


def test_a_delivery_is_checked_against_the_ids_its_query_disclosed(built, vault, tmp_path, capsys):
    answer = built["root"] / "answer.jsonl"  # the last query's delivery (entry #5)
    assert main(["vault", "audit", "check-export", "--db", str(vault["db"]), "--seq", "5",
                 "--file", str(answer)]) == EXIT_OK
    extra = tmp_path / "padded.jsonl"
    rows = [orjson.loads(line) for line in answer.read_bytes().splitlines()]
    assert rows and all("record_ref" in row and "record_id" not in row for row in rows)  # refs, never ids
    ref = rows[0]["record_ref"]
    someone_else = {**rows[0], "record_number": len(rows) + 1, "record_ref": ref[:-1] + "01"[ref[-1] == "0"]}
    extra.write_bytes(answer.read_bytes() + orjson.dumps(someone_else) + b"\n")
    capsys.readouterr()
    assert main(["vault", "audit", "check-export", "--db", str(vault["db"]), "--seq", "5",
                 "--file", str(extra)]) == EXIT_FATAL
    assert "does not match audit entry #5" in capsys.readouterr().err


def test_a_restored_database_whose_loss_was_acknowledged_still_verifies_against_the_witness(
        built, vault, tmp_path, capsys):
    """The lost entries stay in the witness as evidence; the log as it continued must match it."""
    db = vault["db"]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM audit WHERE seq > 3")  # as if restored from an older copy
        conn.execute("UPDATE meta SET v = ? WHERE k = 'audit_witness'", (str(vault["witness"]),))  # this copy's
    conn.close()
    base = ["--keyring", str(vault["keyring"]), "--db", str(db)]
    assert main(["vault", "audit", "acknowledge-gap", *base, "--officer", "PC-1", "--reason", "restored backup"]) \
        == EXIT_OK
    assert main(["vault", "warrant", "list", *base]) == EXIT_OK
    code, err = _verify(vault, capsys)
    assert code == EXIT_OK, err
    assert "entries #4 to #5 of an earlier log were lost and acknowledged at #4" in err
    # A renumbering that no acknowledged loss explains is still named.
    lines = vault["witness"].read_bytes().splitlines(keepends=True)
    vault["witness"].write_bytes(b"".join(lines[:3] + lines[4:]))
    code, err = _verify(vault, capsys)
    assert code == EXIT_FATAL and "entry #4" in err
