"""An open vault (keyring, record store, keystore that belong together) and its audit log with signer and witness.

Every vault command starts here, so the rules of opening are in one place: the keyring names the
database and keystore it may open, a database never gets new day keys beside records whose
keystore is missing, and an audit log keeps writing to the witness it once had (switching one on
is itself an audit entry).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FatalError, UsageError, os_why
from pipeline.keys import KeyringError, VaultKeyring, load_vault_keyring
from pipeline.vault.audit import AuditError, AuditLog, load_audit_signer
from pipeline.vault.backend import DatabaseError, driver_errors, first_line, is_postgres, redact
from pipeline.vault.keystore import Keystore, KeystoreError, default_keystore_path
from pipeline.vault.store import RecordStore, StoreError, open_store
from pipeline.vault.witness import ENV_AUDIT_WITNESS, WitnessError, open_witness

#: The ``meta`` key remembering the vault's audit witness.
WITNESS_META = "audit_witness"


@dataclass
class Vault:
    """An open vault: keyring, record store and keystore (close with ``close``)."""

    keyring: VaultKeyring
    store: RecordStore
    keystore: Keystore

    def close(self) -> None:
        self.keystore.close()
        self.store.close()


def load_keyring(path: str | None) -> VaultKeyring:
    """The vault keyring (``path``, else the environment); a fatal error naming the file that is wrong."""
    try:
        return load_vault_keyring(path)
    except KeyringError as exc:
        raise FatalError(f"{exc} (the vault needs vault-keyring.json, from `cdrpipe keys generate`)") from None


def keystore_spec(db: str, keystore: str | None) -> str | Path:
    """The keystore ``--keystore`` names, else ``<db>.keys`` beside a SQLite file.

    A PostgreSQL vault has no default: its day keys must live in another database (or file) with
    its own backup policy, or a backup of the records would carry the keys that purges destroy.
    """
    if keystore:
        return keystore if is_postgres(keystore) else Path(keystore)
    if is_postgres(db):
        raise UsageError("a PostgreSQL vault needs --keystore (env CDRPIPE_VAULT_KEYSTORE): a separate database "
                         "(postgresql://…/vault_keys) or file, backed up apart from the records")
    return default_keystore_path(db)


@contextmanager
def open_vault(keyring_path: str | None, db_spec: str, keystore: str | None, *, create: bool = False,
               region: str | None = None) -> Iterator[Vault]:
    """Load the keyring, then the database and keystore, checking all three belong together.

    ``create`` makes a missing database and keystore (with ``region``, the default for national
    numbers); never day keys beside records whose keystore is missing.
    """
    keyring = load_keyring(keyring_path)
    db = db_spec if is_postgres(db_spec) else Path(db_spec)
    keystore_path = keystore_spec(db_spec, keystore)
    if create and isinstance(db, Path) and isinstance(keystore_path, Path) and db.exists() \
            and not keystore_path.exists():
        raise FatalError(f"the vault database {db} exists but its keystore {keystore_path} does not: refusing to "
                         "create new day keys next to records written under lost ones. Pass --keystore with the "
                         "vault's key file.")
    errors = driver_errors()
    try:
        store = open_store(db, vault_kid=keyring.vault_kid, index_kid=keyring.index_key.kid,
                           region=region if create else None, create=create)
    except (StoreError, DatabaseError) as exc:
        raise FatalError(str(exc)) from None
    except errors as exc:
        raise FatalError(f"cannot open the vault database {redact(db)}: {first_line(exc)}") from None
    except OSError as exc:  # its directory cannot be made or written (a file in the path, /proc, read-only)
        raise FatalError(f"cannot create the vault database --db {redact(db)}: {os_why(exc)}; give --db a file in "
                         "a directory you can write to") from None
    try:
        keystore = Keystore(keystore_path, keyring, create=create)
    except (KeystoreError, DatabaseError) as exc:
        store.close()
        raise FatalError(str(exc)) from None
    except errors as exc:
        store.close()
        raise FatalError(f"cannot open the keystore {redact(keystore_path)}: {first_line(exc)}") from None
    except OSError as exc:
        store.close()
        raise FatalError(f"cannot create the keystore {redact(keystore_path)}: {os_why(exc)}; give --keystore a "
                         "file in a directory you can write to") from None
    vault = Vault(keyring, store, keystore)
    try:
        yield vault
    finally:
        vault.close()


def audit_log(vault: Vault, *, keyring_path: str | None, audit_key: str | None = None, witness: str | None = None,
              witness_config: dict[str, str] | None = None) -> AuditLog:
    """The vault's audit log with its signer (if any) and its witness (``--witness``, env, or the vault's own).

    Once a vault has a witness it keeps writing to it: the witness is remembered in the database,
    and switching it on (or to another one) is itself an audit entry, the new witness's first.
    """
    try:
        signer = load_audit_signer(audit_key, keyring_path)
    except AuditError as exc:
        raise FatalError(str(exc)) from None
    if signer is None:
        print("cdrpipe vault: warning: no audit key, so this audit entry is not signed (`cdrpipe keys generate` "
              "puts one in vault-keyring.json; or --audit-key FILE)", file=sys.stderr)
    known = vault.store.meta(WITNESS_META)
    spec = witness or os.environ.get(ENV_AUDIT_WITNESS) or known
    try:
        opened = open_witness(spec, witness_config or {}) if spec else None
    except WitnessError as exc:
        raise FatalError(str(exc)) from None
    if opened is None:
        print(f"cdrpipe vault: warning: this vault's audit log has no witness outside the vault (--witness FILE or "
              f"kafka:vault.audit, env {ENV_AUDIT_WITNESS}): someone holding the database, keystore and keyring "
              "could rewrite it unnoticed", file=sys.stderr)
    audit = AuditLog(vault.store.db, anchor=vault.keystore, signer=signer, witness=opened)
    if opened is not None and opened.spec != known:
        try:
            audit.append({"action": "witness_enabled", "witness": opened.spec, "previous_witness": known})
        except AuditError as exc:
            raise FatalError(str(exc)) from None
        vault.store.set_meta(WITNESS_META, opened.spec)
    return audit
