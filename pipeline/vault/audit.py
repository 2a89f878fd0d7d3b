"""The vault's access log: hash-chained, optionally Ed25519-signed, anchored outside the database.

Every query and every purge appends one entry (``schemas/audit-entry.v1.json``): time, actor,
warrant, the target's keyed digest (never the target), window, result count. Each entry
carries the previous entry's hash, and its own hash is SHA-256 over its canonical JSON
(sorted keys, no whitespace, without ``hash`` and ``signature``), so altering, removing or
reordering any entry breaks the chain at that entry. Two further guards:

* Signatures. With an audit key (Ed25519), each entry's hash is signed; someone who can write
  the database but lacks the key cannot rebuild a consistent signed chain. ``audit verify
  --public-key`` then requires a valid signature on every entry.
* The anchor. The keystore (a separate file) remembers the last entry's number and hash, so
  cutting entries off the end, or restoring an older database, is detected too. Appending to
  a log that is behind its anchor is refused until ``audit acknowledge-gap`` records the loss.

The chain is one total order however many processes append (PostgreSQL: officers querying
while a purge runs): an append holds the database's ``audit`` lock (an advisory lock there;
SQLite's write lock here) from reading the last entry, through the witness write and the
commit, to the anchor update, so no two entries share a number and the witness receives them
in the order they were chained.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import sqlite3
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.key_permissions import insecure_key_file
from pipeline.keys import ENV_VAULT_KEYRING_FILE, ENV_VAULT_KEYRING_JSON
from pipeline.vault.backend import Database, SqliteDatabase, is_postgres

AUDIT_TYPE = "cdrpipe.vault-audit/1"
AUDIT_KEY_TYPE = "cdrpipe.audit-key/1"
GENESIS = "0" * 64
ENV_AUDIT_KEY = "CDRPIPE_AUDIT_KEY"
ENV_AUDIT_PUBLIC_KEY = "CDRPIPE_AUDIT_PUBLIC_KEY"
_UNHASHED = ("hash", "signature")


class AuditError(Exception):
    """The audit log cannot be appended to or read as a chain; the message names the entry and the fix."""


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def canonical_bytes(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: its JSON with sorted keys, minus ``hash`` and ``signature``."""
    return orjson.dumps({k: v for k, v in entry.items() if k not in _UNHASHED}, option=orjson.OPT_SORT_KEYS)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of the entry's canonical bytes."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def disclosed(record_ids: Iterable[str]) -> dict[str, Any]:
    """What a query's entry records of its answer: the record ids and SHA-256 of them sorted, one per line.

    The digest lets an auditor check a delivered export against the log (``audit check-export``)
    without trusting either; the ids say which records a warrant reached.
    """
    ids = sorted(record_ids)
    return {"count": len(ids), "record_ids": ids,
            "sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()}


# --------------------------------------------------------------------------- keys

class AuditSigner:
    """An Ed25519 audit key with an id; the private half never appears in a repr."""

    __slots__ = ("kid", "_private")

    def __init__(self, kid: str, private: Ed25519PrivateKey) -> None:
        self.kid = kid
        self._private = private

    def __repr__(self) -> str:
        return f"AuditSigner(kid={self.kid!r})"

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def public_b64(self) -> str:
        return base64.b64encode(self.public_key.public_bytes_raw()).decode("ascii")

    def sign(self, digest_hex: str) -> dict[str, str]:
        """Signature over the entry hash (its 32 raw bytes)."""
        sig = self._private.sign(bytes.fromhex(digest_hex))
        return {"kid": self.kid, "ed25519": base64.b64encode(sig).decode("ascii")}

    def to_json(self) -> dict[str, Any]:
        raw = self._private.private_bytes_raw()
        return {"type": AUDIT_KEY_TYPE, "kid": self.kid, "ed25519": base64.b64encode(raw).decode("ascii"),
                "public": self.public_b64()}

    @classmethod
    def generate(cls) -> "AuditSigner":
        return cls(f"a{_utc_now():%Y%m%d}{secrets.token_hex(2)}", Ed25519PrivateKey.generate())

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "AuditSigner":
        """From an audit key file, or the optional ``audit_key`` object of a vault keyring file."""
        if not isinstance(doc, dict) or "ed25519" not in doc or "kid" not in doc:
            raise AuditError(f"{where} is not a cdrpipe audit key (expected kid and ed25519 fields; "
                             "create one with `cdrpipe vault audit keygen`)")
        try:
            raw = base64.b64decode(str(doc["ed25519"]), validate=True)
            return cls(str(doc["kid"]), Ed25519PrivateKey.from_private_bytes(raw))
        except ValueError:
            raise AuditError(f"{where}: the audit key is not 32 bytes of base64") from None


def load_audit_signer(path: str | os.PathLike[str] | None, keyring_path: str | os.PathLike[str] | None) -> AuditSigner | None:
    """The audit key from ``path`` (or ``$CDRPIPE_AUDIT_KEY``), else the vault keyring's ``audit_key``, else None."""
    path = path or os.environ.get(ENV_AUDIT_KEY)
    if path:
        refused = insecure_key_file(path, "audit key")
        if refused:
            raise AuditError(refused)
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise AuditError(f"cannot read audit key {path}: {exc.strerror}") from None
        except ValueError:
            raise AuditError(f"audit key {path} is not valid JSON") from None
        return AuditSigner.from_json(doc, str(path))
    # The vault keyring may carry an optional "audit_key" object (the keyring loader ignores it).
    if keyring_path is None and os.environ.get(ENV_VAULT_KEYRING_JSON):
        text, where = os.environ[ENV_VAULT_KEYRING_JSON], f"${ENV_VAULT_KEYRING_JSON}"
    else:
        keyring_path = keyring_path or os.environ.get(ENV_VAULT_KEYRING_FILE)
        if not keyring_path:
            return None
        try:
            text, where = Path(keyring_path).read_text(), str(keyring_path)
        except OSError:
            return None  # the keyring loader reports an unreadable keyring
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("audit_key"), dict):
        return AuditSigner.from_json(doc["audit_key"], f"{where}: audit_key")
    return None


def load_public_key(value: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 text, a file holding it, or an audit key file."""
    text = value
    if os.path.isfile(value):
        text = Path(value).read_text().strip()
        if text.startswith("{"):
            try:
                doc = json.loads(text)
            except ValueError:
                raise AuditError(f"{value} is not valid JSON") from None
            if isinstance(doc, dict) and "public" in doc:
                text = str(doc["public"])
            else:
                return AuditSigner.from_json(doc, value).public_key
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except ValueError:
        raise AuditError("--public-key must be 32 bytes of base64 (as `audit keygen` prints) or a file with it") \
            from None


# --------------------------------------------------------------------------- the log

class AuditLog:
    """Appends to the ``audit`` table of a vault database and keeps the keystore's anchor current."""

    def __init__(self, conn: Database | sqlite3.Connection, *, anchor: Any = None, signer: AuditSigner | None = None,
                 clock: Callable[[], _dt.datetime] = _utc_now, witness: Any = None) -> None:
        self._conn = conn if isinstance(conn, Database) else SqliteDatabase(conn)
        self._anchor = anchor  # a Keystore (set_audit_anchor / audit_anchor), or None
        self.signer = signer
        self._clock = clock
        self.witness = witness  # a pipeline.vault.witness.Witness, or None

    def __repr__(self) -> str:
        return f"AuditLog(signed={self.signer is not None}, witnessed={self.witness is not None})"

    def last(self) -> tuple[int, str]:
        """Sequence number and hash of the newest entry (0 and the genesis hash when empty)."""
        row = self._conn.execute("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return 0, GENESIS
        try:
            return int(row[0]), str(orjson.loads(row[1])["hash"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise AuditError(f"audit entry #{row[0]} is unreadable: run `cdrpipe vault audit verify`") from None

    def gap(self) -> tuple[int, int] | None:
        """``(last_seq, anchor_seq)`` when the log is behind (or diverged from) the keystore's anchor."""
        if self._anchor is None:
            return None
        anchor = self._anchor.audit_anchor()
        if anchor is None:
            return None
        seq, digest = anchor
        last_seq, _ = self.last()
        if seq > last_seq:
            return last_seq, seq
        row = self._conn.execute("SELECT entry FROM audit WHERE seq = ?", (seq,)).fetchone()
        try:
            same = row is not None and orjson.loads(row[0]).get("hash") == digest
        except orjson.JSONDecodeError:
            same = False
        return None if same else (last_seq, seq)

    def append(self, fields: dict[str, Any], *, allow_gap: bool = False) -> dict[str, Any]:
        """Add one entry after the newest; refuses when entries were lost since the anchor."""
        with self._conn.serialised("audit"):
            return self._append(fields, allow_gap)

    def _append(self, fields: dict[str, Any], allow_gap: bool) -> dict[str, Any]:
        gap = self.gap()
        if gap is not None and not allow_gap:
            raise AuditError(
                f"the audit log ends at entry #{gap[0]} but the keystore last saw entry #{gap[1]} (or another "
                "entry there): entries were removed or this database was restored from an older copy. Restore the "
                "audit entries, or record the loss with `cdrpipe vault audit acknowledge-gap`, before any query.")
        with self._conn.transaction():
            seq, prev = self.last()
            entry: dict[str, Any] = {"type": AUDIT_TYPE, "seq": seq + 1,
                                     "time": self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                     **fields, "prev_hash": prev}
            entry["hash"] = entry_hash(entry)
            if self.signer is not None:
                entry["signature"] = self.signer.sign(entry["hash"])
            text = orjson.dumps(entry).decode("utf-8")
            self._conn.execute("INSERT INTO audit (seq, entry) VALUES (?, ?)", (entry["seq"], text))
            if self.witness is not None:
                # Witnessed before it commits: no witness copy, no entry (and so no query answer).
                from pipeline.vault.witness import WitnessError
                try:
                    self.witness.append(text)
                except WitnessError as exc:
                    raise AuditError(f"{exc}; nothing was done") from None
        if self._anchor is not None:
            self._anchor.set_audit_anchor(entry["seq"], entry["hash"])
        return entry


# --------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: ``first_bad`` names the first entry that breaks it."""

    ok: bool
    entries: int
    signed: int
    first_bad: int | None = None
    reason: str = ""
    signed_from: int | None = None


def read_entries(db_path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """All ``(seq, entry text)`` rows of a vault database, in sequence order, read-only."""
    if is_postgres(db_path):
        from pipeline.vault.postgres import read_audit_rows
        return read_audit_rows(str(db_path))
    path = Path(db_path)
    if not path.is_file():
        raise AuditError(f"no vault database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(int(s), str(e)) for s, e in conn.execute("SELECT seq, entry FROM audit ORDER BY seq")]
    except sqlite3.DatabaseError:
        raise AuditError(f"{path} has no readable audit table (is it a vault database?)") from None
    finally:
        conn.close()


def verify_chain(rows: Iterable[tuple[int, str]], public_key: Ed25519PublicKey | None = None,
                 anchor: tuple[int, str] | None = None, *, signed_from: int | None = None) -> Verdict:
    """Check numbering, links, hashes, (with ``public_key``) signatures, and the anchor; stop at the first break.

    Signing may have been switched on for a vault that already had entries: with a public key,
    entries before the first signed one may be unsigned, but from it on (or from ``signed_from``,
    when the auditor knows where signing began) every entry must carry a valid signature, and at
    least one must. Stripping signatures therefore cannot turn a signed log back into an
    unsigned one. ``Verdict.signed_from`` says where signing began.
    """
    rows = list(rows)
    prev, expected, signed, count = GENESIS, 1, 0, 0
    first_signed: int | None = None
    hashes: dict[int, str] = {}
    for seq, text in rows:
        def bad(reason: str, at: int = seq) -> Verdict:
            return Verdict(False, count, signed, at, reason)
        if seq != expected:
            return bad(f"entry #{expected} is missing (the next stored entry is #{seq}): removed", expected)
        try:
            entry = orjson.loads(text)
        except orjson.JSONDecodeError:
            return bad("not valid JSON: altered")
        if not isinstance(entry, dict):
            return bad("not a JSON object: altered")
        if entry.get("hash") != entry_hash(entry):
            return bad("its content does not match its hash: altered")
        if entry.get("seq") != seq:
            return bad(f"it says it is #{entry.get('seq')}: moved (reordered) or renumbered")
        if entry.get("prev_hash") != prev:
            return bad("it does not follow the entry before it: an entry before it was removed, reordered or rewritten")
        sig = entry.get("signature")
        if public_key is not None:
            must = first_signed is not None or (signed_from is not None and seq >= signed_from)
            if not isinstance(sig, dict) and must:
                since = first_signed if first_signed is not None else signed_from
                return bad(f"it is not signed, but entries are signed from #{since} on: a signature was removed "
                           "(or the entry was forged)")
            if not isinstance(sig, dict) and seq == len(rows):
                return Verdict(False, count, signed, 1 if signed_from is None else signed_from,
                               "no entry is signed, but a public key was given: the log is not signed (or every "
                               "signature was removed)")
        if isinstance(sig, dict) and public_key is not None:
            try:
                public_key.verify(base64.b64decode(str(sig.get("ed25519", "")), validate=True),
                                  bytes.fromhex(entry["hash"]))
            except (InvalidSignature, ValueError):
                return bad("its signature does not verify with the given public key: forged or re-signed")
        if isinstance(sig, dict):
            signed += 1
            if first_signed is None:
                first_signed = seq
        prev = hashes[seq] = entry["hash"]
        expected += 1
        count += 1
    if anchor is not None:
        a_seq, a_hash = anchor
        if a_seq > count:
            return Verdict(False, count, signed, count + 1,
                           f"the keystore's anchor says the log reached entry #{a_seq}, but it ends at #{count}: "
                           "entries at the end were removed (or the database was restored from an older copy)")
        if a_seq in hashes and hashes[a_seq] != a_hash:
            return Verdict(False, count, signed, a_seq,
                           "it differs from the entry the keystore anchored: the log was rewritten from here")
    return Verdict(True, count, signed, signed_from=first_signed)
