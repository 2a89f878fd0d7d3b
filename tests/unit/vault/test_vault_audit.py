"""The audit log: a hash chain that names the first altered, removed or reordered entry.

Entries are written through ``AuditLog`` into a real vault database table, then tampered
with in SQL the way someone with write access to the file would, and checked with both
``verify_chain`` and ``cdrpipe vault audit verify``. Every entry is validated against
``schemas/audit-entry.v1.json``. The log's tests run on both storage backends (SQLite and
PostgreSQL, ``vault_backend``): tampering is caught wherever the vault lives.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator
from vault_backend import VaultBackend

from pipeline.cli import EXIT_FATAL, EXIT_OK, main
from pipeline.vault.audit import (GENESIS, AuditError, AuditLog, AuditSigner, entry_hash, load_audit_signer,
                                  read_entries, verify_chain)
from pipeline.vault.keystore import Keystore
from pipeline.vault.store import open_store

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "audit-entry.v1.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
DIGEST = "ab" * 32


def _query_fields(i: int) -> dict:
    return {"action": "query", "officer": f"PC-{i}", "warrant": f"WR-{i}",
            "target": {"kind": "msisdn", "digest": DIGEST, "index_kid": "i1"},
            "window": {"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"},
            "result_count": i, "unreadable_count": 0, "integrity_failures": 0, "format": "jsonl"}


@pytest.fixture
def vault_db(vault_backend, vault_keyring):
    """A vault database and keystore with five audit entries (the first four signed), closed again."""
    db = vault_backend
    store = open_store(db.db, vault_kid=vault_keyring.vault_kid, index_kid=vault_keyring.index_key.kid, create=True)
    keystore = Keystore(db.keystore, vault_keyring, create=True)
    clock = iter(dt.datetime(2026, 1, 1, 9, 0, i, tzinfo=dt.timezone.utc) for i in range(100))
    signer = AuditSigner.generate()
    log = AuditLog(store.db, anchor=keystore, signer=signer, clock=lambda: next(clock))
    for i in range(1, 5):
        log.append(_query_fields(i))
    log.append({"action": "purge", "operator": "cron", "cutoff": "2019-12-01", "days": ["2019-11-30"],
                "records_purged": 10, "keys_destroyed": 1})
    keystore.close()
    store.close()
    return db, signer


def _rows(db: VaultBackend) -> list[tuple[int, str]]:
    return read_entries(db.db)


def _sql(db: VaultBackend, *statements: tuple[str, tuple]) -> None:
    """Tamper as someone with write access to the database would (one transaction)."""
    db.sql_many(*statements)


def _verify_cli(db: VaultBackend, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["vault", "audit", "verify", *db.args(), *extra])
    return code, capsys.readouterr().err


def test_entries_chain_and_match_the_schema(vault_db):
    db, signer = vault_db
    rows = _rows(db)
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
    prev = GENESIS
    for _seq, text in rows:
        entry = orjson.loads(text)
        VALIDATOR.validate(entry)
        assert entry["prev_hash"] == prev and entry["hash"] == entry_hash(entry)
        prev = entry["hash"]
    verdict = verify_chain(rows, signer.public_key)
    assert verdict.ok and verdict.entries == 5 and verdict.signed == 5


def test_schema_rejects_a_target_in_clear_and_missing_warrant(vault_db):
    db, _ = vault_db
    entry = orjson.loads(_rows(db)[0][1])
    VALIDATOR.validate(entry)
    assert not VALIDATOR.is_valid({**entry, "target": {"kind": "msisdn", "digest": "+447700900123", "index_kid": "i"}})
    assert not VALIDATOR.is_valid({**entry, "target_value": "+447700900123"})
    assert not VALIDATOR.is_valid({k: v for k, v in entry.items() if k != "warrant"})


def test_intact_log_verifies_from_the_cli(vault_db, capsys):
    db, signer = vault_db
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_OK and "5 entries" in err and "keystore anchor" in err
    code, err = _verify_cli(db, capsys, "--public-key", signer.public_b64())
    assert code == EXIT_OK and "signatures (5)" in err


def test_an_altered_entry_is_named(vault_db, capsys):
    db, _ = vault_db
    entry = orjson.loads(_rows(db)[2][1])
    entry["result_count"] = 0  # hide what was delivered
    _sql(db, ("UPDATE audit SET entry = ? WHERE seq = 3", (orjson.dumps(entry).decode(),)))
    verdict = verify_chain(_rows(db))
    assert not verdict.ok and verdict.first_bad == 3 and "altered" in verdict.reason
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_FATAL and "entry #3" in err


def test_an_altered_entry_with_a_recomputed_hash_breaks_the_next_link(vault_db, capsys):
    db, _ = vault_db
    entry = orjson.loads(_rows(db)[1][1])
    entry["officer"] = "someone-else"
    entry.pop("signature")
    entry["hash"] = entry_hash(entry)
    _sql(db, ("UPDATE audit SET entry = ? WHERE seq = 2", (orjson.dumps(entry).decode(),)))
    verdict = verify_chain(_rows(db))
    assert not verdict.ok and verdict.first_bad == 3 and "does not follow" in verdict.reason


def test_a_removed_entry_is_named(vault_db, capsys):
    db, _ = vault_db
    _sql(db, ("DELETE FROM audit WHERE seq = 2", ()))
    verdict = verify_chain(_rows(db))
    assert not verdict.ok and verdict.first_bad == 2 and "missing" in verdict.reason
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_FATAL and "entry #2" in err and "removed" in err


def test_removed_and_renumbered_entries_are_detected(vault_db):
    db, _ = vault_db
    _sql(db, ("DELETE FROM audit WHERE seq = 2", ()), ("UPDATE audit SET seq = seq - 1 WHERE seq > 2", ()))
    verdict = verify_chain(_rows(db))
    assert not verdict.ok and verdict.first_bad == 2


def test_reordered_entries_are_named(vault_db, capsys):
    db, _ = vault_db
    rows = dict(_rows(db))
    _sql(db, ("UPDATE audit SET entry = ? WHERE seq = 2", (rows[3],)),
         ("UPDATE audit SET entry = ? WHERE seq = 3", (rows[2],)))
    verdict = verify_chain(_rows(db))
    assert not verdict.ok and verdict.first_bad == 2 and "reordered" in verdict.reason
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_FATAL and "entry #2" in err


def test_cutting_the_tail_is_caught_by_the_keystore_anchor(vault_db, capsys):
    db, _ = vault_db
    _sql(db, ("DELETE FROM audit WHERE seq >= 4", ()))
    assert verify_chain(_rows(db)).ok  # the chain alone cannot see a cut tail...
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_FATAL and "entry #4" in err and "anchor" in err  # ...the anchor can


def test_a_rebuilt_unsigned_chain_fails_with_the_public_key(vault_db, capsys):
    db, signer = vault_db
    forged, prev = [], GENESIS
    for seq, text in _rows(db):
        entry = orjson.loads(text)
        entry.pop("signature")
        entry["result_count"] = 0
        entry["prev_hash"] = prev
        entry["hash"] = prev = entry_hash(entry)
        forged.append((orjson.dumps(entry).decode(), seq))
    _sql(db, *[("UPDATE audit SET entry = ? WHERE seq = ?", f) for f in forged])
    db.drop_anchor()  # and the attacker removed the anchor too
    assert verify_chain(_rows(db)).ok  # without a key, a fully rebuilt chain is consistent...
    code, err = _verify_cli(db, capsys)
    assert code == EXIT_FATAL and "anchor was deleted" in err  # ...but a missing anchor is itself detected
    code, err = _verify_cli(db, capsys, "--public-key", signer.public_b64())
    assert code == EXIT_FATAL and "entry #1" in err and "not signed" in err  # ...the signature is what stops it
    other = AuditSigner.generate()
    resigned = []
    for seq, text in _rows(db):
        entry = orjson.loads(text)
        entry["signature"] = other.sign(entry["hash"])
        resigned.append((orjson.dumps(entry).decode(), seq))
    _sql(db, *[("UPDATE audit SET entry = ? WHERE seq = ?", f) for f in resigned])
    code, err = _verify_cli(db, capsys, "--public-key", signer.public_b64())
    assert code == EXIT_FATAL and "does not verify" in err


def test_appending_after_entries_were_lost_is_refused_until_acknowledged(vault_db, vault_keyring):
    db, _ = vault_db
    _sql(db, ("DELETE FROM audit WHERE seq = 5", ()))
    store = open_store(db.db, vault_kid=vault_keyring.vault_kid, index_kid=vault_keyring.index_key.kid)
    keystore = Keystore(db.keystore, vault_keyring)
    try:
        log = AuditLog(store.db, anchor=keystore)
        assert log.gap() == (4, 5)
        with pytest.raises(AuditError, match="acknowledge-gap"):
            log.append(_query_fields(9))
        entry = log.append({"action": "acknowledge_gap", "officer": "PC-1", "reason": "restore",
                            "lost": {"log_ended_at": 4, "anchor_seq": 5, "anchor_hash": "cd" * 32}}, allow_gap=True)
        VALIDATOR.validate(entry)
        assert log.gap() is None and entry["seq"] == 5
        log.append(_query_fields(10))
    finally:
        keystore.close()
        store.close()
    assert verify_chain(_rows(db)).ok


def test_audit_key_from_file_or_vault_keyring(tmp_path, capsys, vault_keyring):
    key_file = tmp_path / "audit-key.json"
    assert main(["vault", "audit", "keygen", "--out", str(key_file)]) == EXIT_OK
    public = capsys.readouterr().out.strip()
    assert key_file.stat().st_mode & 0o077 == 0
    signer = load_audit_signer(key_file, None)
    assert signer is not None and signer.public_b64() == public
    assert "ed25519" not in repr(signer) and json.loads(key_file.read_text())["ed25519"] not in repr(signer)
    # The optional audit_key object in a vault keyring file is found without --audit-key.
    doc = {**vault_keyring.to_json(), "audit_key": json.loads(key_file.read_text())}
    keyring_file = tmp_path / "vault-keyring.json"
    keyring_file.write_text(json.dumps(doc))
    keyring_file.chmod(0o600)  # key files open to others are refused (test_permissions.py)
    assert load_audit_signer(None, keyring_file).public_b64() == public
    assert load_audit_signer(None, tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"kid": "a", "ed25519": "bm90IGEga2V5"}')
    bad.chmod(0o600)
    with pytest.raises(AuditError, match="32 bytes"):
        load_audit_signer(bad, None)
