"""Day keys, kept apart from the records, so destroying one makes that day unreadable everywhere.

Every stored record is encrypted with AES-256-GCM under the key of its day (the associated
data binds the record id and the day, so a ciphertext cannot be moved to another record or
day unnoticed). Day keys live here, in a small SQLite file of their own (default
``<db>.keys``), never in the record database:

* Purging a day deletes its key (crypto-shredding) and leaves a tombstone. Any copy of the
  record database — a backup, a replica, a stray file — holds that day's records only as
  ciphertext nobody can open any more. The keystore itself must therefore never be restored
  from a backup older than the last purge (docs/vault.md says how to back it up).
* Day keys are wrapped (AES-256-GCM) under a key derived with HKDF from the vault keyring's
  private key, so the keystore file alone is useless.
* The keystore runs with ``secure_delete`` and WAL: a destroyed key's page is overwritten in
  place at the checkpoint that follows the purge, never copied into a rollback journal.

The keystore also holds the audit log's anchor (last sequence number and hash), so a
restored or truncated record database is detected by ``cdrpipe vault audit verify``.

With a PostgreSQL vault the keystore can be a PostgreSQL database too (``--keystore
postgresql://…``, schema ``keystore``), so sinks on several machines share one day key per
day. It must be a *different* database from the records, with its own backup policy, for the
same reason as the separate file. There the ingest role cannot read the ``day_keys`` table: it
gets the key of a day it writes only through ``keystore.day_key_for_write`` (SECURITY
DEFINER: creates the day's key once, returns it unless the day was purged). Deleted key rows
stay in PostgreSQL's heap until ``VACUUM`` (docs/vault.md: the purge job runs it).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.keys import VaultKeyring
from pipeline.vault.backend import Database, SqliteDatabase, is_postgres

KEYSTORE_FORMAT = "cdrpipe.vault-keystore/1"
KEYSTORE_SALT = b"cdrpipe/vault-keystore/v1"
RECORD_AAD = b"cdrpipe/vault-record/v1\x00"
NONCE_BYTES = 12
_EPOCH = _dt.date(1970, 1, 1)
_CHECK_MESSAGE = b"cdrpipe vault keystore check"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS day_keys (day INTEGER PRIMARY KEY, kid TEXT NOT NULL, wrapped BLOB NOT NULL,
                                     created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS destroyed (day INTEGER PRIMARY KEY, kid TEXT NOT NULL, destroyed_at TEXT NOT NULL);
"""


class KeystoreError(Exception):
    """The keystore is missing, belongs to another keyring, or a key cannot be unwrapped (no key bytes in the message)."""


class KeyDestroyedError(KeystoreError):
    """The day's key was destroyed by a purge: its records are gone for good, whatever copy holds them."""


class RecordIntegrityError(Exception):
    """A stored ciphertext failed authentication: altered, truncated or moved to another record or day."""


def day_number(date: _dt.date) -> int:
    """Days since 1970-01-01 (the partition key)."""
    return (date - _EPOCH).days


def day_date(day: int) -> _dt.date:
    """The calendar date (UTC) of a day number."""
    return _EPOCH + _dt.timedelta(days=day)


def _utc_now_text() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_aad(day: int, record_id: str) -> bytes:
    """Associated data of a stored record: format tag, day and record id."""
    return RECORD_AAD + str(day).encode("ascii") + b"\x00" + record_id.encode("utf-8")


class DayCipher:
    """Encrypts and decrypts one day's records; never shows its key."""

    __slots__ = ("day", "kid", "_aead", "_day_aad")

    def __init__(self, day: int, kid: str, key: bytes) -> None:
        self.day = day
        self.kid = kid
        self._aead = AESGCM(key)
        self._day_aad = RECORD_AAD + str(day).encode("ascii") + b"\x00"

    def __repr__(self) -> str:
        return f"DayCipher(day={day_date(self.day).isoformat()}, kid={self.kid!r})"

    def seal_many(self, record_ids: Sequence[str], raws: Sequence[bytes]) -> list[bytes]:
        """``nonce || AES-GCM(raw)`` per record; one ``urandom`` call for all the nonces."""
        nonces = os.urandom(NONCE_BYTES * len(raws))
        each = [nonces[i:i + NONCE_BYTES] for i in range(0, len(nonces), NONCE_BYTES)]
        aads = list(map(self._day_aad.__add__, map(str.encode, record_ids)))  # str.encode: UTF-8
        return list(map(bytes.__add__, each, map(self._aead.encrypt, each, raws, aads)))

    def open(self, record_id: str, blob: bytes) -> bytes:
        """The raw record; raises :class:`RecordIntegrityError` if anything about it was changed."""
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._day_aad + record_id.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise RecordIntegrityError(f"record {record_id!r} of {day_date(self.day)} failed authentication") from None


def default_keystore_path(db_path: str | os.PathLike[str]) -> Path:
    """``<db>.keys``: next to the database, but a separate file with a separate backup policy."""
    return Path(str(db_path) + ".keys")


def _create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (before SQLite opens it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _open_keystore_db(path: str | os.PathLike[str], *, create: bool) -> Database:
    """The keystore's database: a SQLite file (``secure_delete``, WAL), or a PostgreSQL URL."""
    if is_postgres(path):
        from pipeline.vault.postgres import open_keystore_database
        return open_keystore_database(str(path), create=create)
    file = Path(path)
    if not file.exists():
        if not create:
            raise KeystoreError(f"keystore {file} does not exist; pass --keystore with the vault's key "
                                "file (default <db>.keys). Without it no stored record can be read.")
        _create_private_file(file)
    conn = sqlite3.connect(file, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    return SqliteDatabase(conn, str(file))


class Keystore:
    """The day keys: create, unwrap, destroy; plus the audit anchor (a SQLite file or a PostgreSQL schema)."""

    def __init__(self, path: str | os.PathLike[str], keyring: VaultKeyring, *, create: bool = False) -> None:
        self._conn = _open_keystore_db(path, create=create)
        self.path: Any = self._conn.name if is_postgres(path) else Path(path)
        #: A PostgreSQL keystore's URL with its credentials (``path`` is redacted), for readers of its anchor.
        self.url: str | None = str(path) if is_postgres(path) else None
        secret = keyring.private.private_bytes_raw()
        self._wrap = AESGCM(HKDF(hashes.SHA256(), 32, KEYSTORE_SALT, b"day-key-wrap").derive(secret))
        check_key = HKDF(hashes.SHA256(), 32, KEYSTORE_SALT, b"keystore-check").derive(secret)
        check = hmac.new(check_key, _CHECK_MESSAGE, hashlib.sha256).hexdigest()
        self.vault_kid = keyring.vault_kid
        self._cache: dict[int, DayCipher] = {}
        meta = dict(self._conn.execute("SELECT k, v FROM meta").fetchall())
        if not meta:
            with self._conn.transaction():
                self._conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", [
                    ("format", KEYSTORE_FORMAT), ("vault_kid", keyring.vault_kid), ("check", check),
                    ("created", _utc_now_text())])
            meta = dict(self._conn.execute("SELECT k, v FROM meta").fetchall())
        if meta.get("format") != KEYSTORE_FORMAT:
            raise KeystoreError(f"{self.path} is not a cdrpipe vault keystore")
        elif meta.get("vault_kid") != keyring.vault_kid:
            raise KeystoreError(f"keystore {self.path} belongs to vault key {meta.get('vault_kid')!r}, the keyring "
                                f"holds {keyring.vault_kid!r}: use the vault keyring that created this vault")
        elif not hmac.compare_digest(meta.get("check", ""), check):
            raise KeystoreError(f"keystore {self.path} does not match this keyring's private key "
                                f"(same key id {keyring.vault_kid!r}, different key): use the original vault keyring")

    def __repr__(self) -> str:
        return f"Keystore(path={str(self.path)!r}, vault_kid={self.vault_kid!r})"

    def close(self) -> None:
        self._cache.clear()
        self._conn.close()

    def _aad(self, day: int, kid: str) -> bytes:
        return f"cdrpipe/day-key/{day}/{kid}".encode("ascii")

    def _unwrap(self, day: int, kid: str, wrapped: bytes) -> DayCipher:
        try:
            key = self._wrap.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], self._aad(day, kid))
        except (InvalidTag, ValueError):
            raise KeystoreError(f"the key of {day_date(day)} in {self.path} cannot be unwrapped: the keystore was "
                                "altered or belongs to another keyring") from None
        return DayCipher(day, kid, key)

    def purged_before(self) -> int:
        """Days before this day number were purged: none of their records may be stored again."""
        row = self._conn.execute("SELECT v FROM meta WHERE k = 'purged_before'").fetchone()
        return int(row[0]) if row else -(1 << 62)

    def cipher_for_write(self, day: int) -> DayCipher | None:
        """The day's cipher, creating its key on first use; ``None`` if the day was already purged.

        The purge cut-off is read on every call, so a sink that cached a day's key before a purge
        (run by another process) drops it instead of writing under a destroyed key.
        """
        return self.ciphers_for_write([day])[day]

    def ciphers_for_write(self, days: Iterable[int]) -> dict[int, DayCipher | None]:
        """:meth:`cipher_for_write` for several days: the cut-off read once, the new days' keys
        created and committed together (one transaction, one sync) before any record uses them."""
        purged_before = self.purged_before()
        out: dict[int, DayCipher | None] = {}
        new: dict[int, tuple[str, bytes, bytes]] = {}
        for day in days:
            if day < purged_before:
                self._cache.pop(day, None)
                out[day] = None
            elif day in self._cache:
                out[day] = self._cache[day]
            elif day not in new:
                kid = secrets.token_hex(6)
                key = AESGCM.generate_key(bit_length=256)
                nonce = os.urandom(NONCE_BYTES)
                new[day] = (kid, key, nonce + self._wrap.encrypt(nonce, key, self._aad(day, kid)))
        if not new:
            return out
        # Committed before any record uses them: an unused key is harmless, a lost one is not.
        claimed = self._claim({day: (kid, wrapped) for day, (kid, _key, wrapped) in new.items()})
        for day, (kid, key, _wrapped) in new.items():
            row = claimed.get(day)
            if row is None:
                out[day] = None
                continue
            cipher = DayCipher(day, kid, key) if row[0] == kid else self._unwrap(day, row[0], row[1])
            self._cache[day] = out[day] = cipher
        return out

    def _claim(self, keys: dict[int, tuple[str, bytes]]) -> dict[int, tuple[str, bytes]]:
        """Store each ``(kid, wrapped)`` as its day's key unless the day has one; the days' keys (ours or
        the first one). A day that was purged is left out. Writers racing for a day all get the one key
        that won."""
        now = _utc_now_text()
        out: dict[int, tuple[str, bytes]] = {}
        if self._conn.kind == "postgresql":
            # The ingest role may not read day_keys: this SECURITY DEFINER function is its only way in.
            for day, (kid, wrapped) in keys.items():
                row = self._conn.execute("SELECT kid, wrapped FROM day_key_for_write(?, ?, ?, ?)",
                                         (day, kid, wrapped, now)).fetchone()
                if row is not None:
                    out[day] = (str(row[0]), bytes(row[1]))
            return out
        with self._conn.transaction():
            for day, (kid, wrapped) in keys.items():
                if self._conn.execute("SELECT 1 FROM destroyed WHERE day = ?", (day,)).fetchone():
                    continue
                self._conn.execute("INSERT INTO day_keys (day, kid, wrapped, created) VALUES (?, ?, ?, ?) "
                                   "ON CONFLICT (day) DO NOTHING", (day, kid, wrapped, now))
                row = self._conn.execute("SELECT kid, wrapped FROM day_keys WHERE day = ?", (day,)).fetchone()
                out[day] = (str(row[0]), bytes(row[1]))
        return out

    def cipher_for_read(self, day: int, kid: str) -> DayCipher:
        """The cipher a partition was written with; raises :class:`KeyDestroyedError` after a purge."""
        cipher = self._cache.get(day)
        if cipher is None:
            row = self._conn.execute("SELECT kid, wrapped FROM day_keys WHERE day = ?", (day,)).fetchone()
            if row is None:
                gone = self._conn.execute("SELECT destroyed_at FROM destroyed WHERE day = ?", (day,)).fetchone()
                if gone:
                    raise KeyDestroyedError(f"the key of {day_date(day)} was destroyed on {gone[0]} (purged)")
                raise KeystoreError(f"{self.path} holds no key for {day_date(day)}: wrong --keystore?")
            cipher = self._unwrap(day, str(row[0]), bytes(row[1]))
            self._cache[day] = cipher
        if cipher.kid != kid:
            raise KeyDestroyedError(f"the records of {day_date(day)} were written under key {kid!r}, which was "
                                    f"destroyed; the keystore now holds {cipher.kid!r}")
        return cipher

    def days(self) -> list[int]:
        """Days with a live key."""
        return [int(r[0]) for r in self._conn.execute("SELECT day FROM day_keys ORDER BY day")]

    def destroyed(self) -> dict[int, str]:
        """Purged days and when their keys were destroyed."""
        return dict(self._conn.execute("SELECT day, destroyed_at FROM destroyed ORDER BY day").fetchall())

    def destroy(self, days: Iterable[int], *, before: int | None = None) -> list[int]:
        """Delete the keys of ``days`` (crypto-shredding), leave tombstones, and checkpoint the overwrite.

        ``before``: the purge's cut-off day; no key is ever created again for a day before it.
        """
        now = _utc_now_text()
        done = []
        with self._conn.transaction():
            if before is not None and before > self.purged_before():
                self._conn.execute("INSERT INTO meta (k, v) VALUES ('purged_before', ?) "
                                   "ON CONFLICT (k) DO UPDATE SET v = excluded.v", (str(before),))
            for day in days:
                row = self._conn.execute("SELECT kid FROM day_keys WHERE day = ?", (day,)).fetchone()
                self._conn.execute("DELETE FROM day_keys WHERE day = ?", (day,))
                self._conn.execute("INSERT INTO destroyed (day, kid, destroyed_at) VALUES (?, ?, ?) "
                                   "ON CONFLICT (day) DO NOTHING", (day, row[0] if row else "", now))
                self._cache.pop(day, None)
                if row:
                    done.append(day)
        # SQLite: secure_delete zeroed the pages in the WAL; the checkpoint writes them over the old ones.
        self._conn.checkpoint()
        return done

    def export_state(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row, as stored (keys stay wrapped): what ``vault migrate`` copies to another keystore."""
        return {"meta": [(str(k), str(v)) for k, v in self._conn.execute(
                    "SELECT k, v FROM meta WHERE k NOT IN ('format', 'vault_kid', 'check', 'created') ORDER BY k")],
                "day_keys": [(int(d), str(k), bytes(w), str(c)) for d, k, w, c in self._conn.execute(
                    "SELECT day, kid, wrapped, created FROM day_keys ORDER BY day")],
                "destroyed": [(int(d), str(k), str(t)) for d, k, t in self._conn.execute(
                    "SELECT day, kid, destroyed_at FROM destroyed ORDER BY day")]}

    def import_state(self, state: dict[str, list[tuple[Any, ...]]]) -> None:
        """Write :meth:`export_state`'s rows into this (new, empty) keystore of the same keyring, in one
        transaction; the wrapping key is the keyring's, so wrapped keys move unchanged."""
        with self._conn.transaction():
            if self._conn.execute("SELECT count(*) FROM day_keys").fetchone()[0] or \
                    self._conn.execute("SELECT count(*) FROM destroyed").fetchone()[0]:
                raise KeystoreError(f"keystore {self.path} already holds day keys: migrate into an empty one")
            self._conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                                   state["meta"])
            self._conn.executemany("INSERT INTO day_keys (day, kid, wrapped, created) VALUES (?, ?, ?, ?)",
                                   state["day_keys"])
            self._conn.executemany("INSERT INTO destroyed (day, kid, destroyed_at) VALUES (?, ?, ?)",
                                   state["destroyed"])
        self._cache.clear()

    def set_audit_anchor(self, seq: int, digest: str) -> None:
        """Remember the audit log's last entry outside the record database."""
        with self._conn.transaction():
            self._conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                                   [("audit_seq", str(seq)), ("audit_hash", digest)])

    def audit_anchor(self) -> tuple[int, str] | None:
        """The last audit entry this keystore saw, if any."""
        meta = dict(self._conn.execute("SELECT k, v FROM meta WHERE k IN ('audit_seq', 'audit_hash')").fetchall())
        return (int(meta["audit_seq"]), meta["audit_hash"]) if len(meta) == 2 else None


def read_audit_anchor(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """The audit anchor without the keyring (it is not secret), for ``audit verify``."""
    if is_postgres(path):
        from pipeline.vault.postgres import read_keystore_anchor
        return read_keystore_anchor(str(path))
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT k, v FROM meta WHERE k IN ('audit_seq', 'audit_hash')").fetchall())
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return (int(meta["audit_seq"]), meta["audit_hash"]) if len(meta) == 2 else None
