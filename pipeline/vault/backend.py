"""The vault's storage interface: one connection type the store, keystore, audit log and warrants use.

Why: the vault's logic (idempotent ingest, day keys, the hash-chained audit log, warrants) is
the same whatever database holds it; only a few things differ between an embedded SQLite file
and a PostgreSQL server. This module is where they differ, so the rest of the vault is written
once:

* parameters: every statement is constant text with ``?`` placeholders and its values passed
  separately (never formatted into the text); PostgreSQL's driver spells the placeholder ``%s``,
  so :class:`PostgresDatabase` rewrites the constant text once (cached), never the values;
* transactions: SQLite takes its single write lock at ``BEGIN IMMEDIATE``; PostgreSQL runs
  ``BEGIN``/``COMMIT`` with row locks, and work that must be one total order across processes
  (the audit chain, witness included) takes a named advisory lock (:meth:`Database.serialised`);
* a unique-key violation is ``sqlite3.IntegrityError`` or ``psycopg.errors.UniqueViolation``
  (:attr:`Database.unique_violation`).

``open_database(spec)`` picks the implementation: ``postgresql://…`` (or ``postgres://…``) is
PostgreSQL through psycopg 3, anything else is a file path (SQLite, the default).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(spec: str | os.PathLike[str] | None) -> bool:
    """Does ``--db``/``--keystore`` name a PostgreSQL database (a URL) rather than a SQLite file?"""
    return isinstance(spec, str) and spec.startswith(PG_SCHEMES)


def redact(spec: str | os.PathLike[str]) -> str:
    """A database name fit for a log line or an error: a URL loses its password (and query string)."""
    text = str(spec)
    if not is_postgres(text):
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lock name (the same in every process)."""
    return int.from_bytes(hashlib.sha256(b"cdrpipe/" + name.encode()).digest()[:8], "big", signed=True)


class DatabaseError(Exception):
    """The database cannot be reached or used; the message names it without its password."""


class Database:
    """A connection the vault's storage code runs constant SQL on (see the module docstring)."""

    kind = "abstract"
    #: Raised by the driver for a duplicate primary or unique key.
    unique_violation: type[BaseException] = Exception
    #: Base class of every driver error (for callers that report rather than crash).
    error: type[BaseException] = Exception

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.name = redact(spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:  # pragma: no cover - interface
        """Run one statement; returns a cursor (``fetchone``/``fetchall``/iteration)."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator["Database"]:  # pragma: no cover - interface
        """One write transaction, committed on success and rolled back on any exception."""
        raise NotImplementedError
        yield self

    @contextmanager
    def serialised(self, name: str) -> Iterator[None]:
        """Hold the named cross-process lock around the block (a no-op where one writer is all there is)."""
        yield

    def checkpoint(self) -> None:
        """Write freed pages over the old ones now (SQLite's WAL after a secure delete); nothing elsewhere."""

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class SqliteDatabase(Database):
    """A SQLite connection in autocommit mode (``isolation_level=None``); transactions are explicit."""

    kind = "sqlite"
    unique_violation = sqlite3.IntegrityError
    error = sqlite3.Error

    def __init__(self, conn: sqlite3.Connection, spec: str = "") -> None:
        super().__init__(spec)
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        # IMMEDIATE: the write lock is taken at once, so two writers never interleave.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def checkpoint(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.conn.close()


class PostgresDatabase(Database):
    """A psycopg 3 connection (autocommit outside :meth:`transaction`), with ``search_path`` set to ``schema``.

    The schema is the only thing that differs between the record store (``vault``) and the
    keystore (``keystore``), so both run the same statements as their SQLite files do.
    """

    kind = "postgresql"

    def __init__(self, spec: str, schema: str, *, application: str = "cdrpipe-vault") -> None:
        super().__init__(spec)
        import psycopg
        import psycopg.errors
        self.unique_violation = psycopg.errors.UniqueViolation
        self.error = psycopg.Error
        self.schema = schema
        try:
            # search_path as a connection option: a fixed identifier from this code, not an input.
            self.conn = psycopg.connect(spec, autocommit=True, application_name=application,
                                        options=f"-c search_path={schema},pg_catalog")
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to the vault database {self.name}: "
                                f"{first_line(exc)}") from None
        self._sql: dict[str, str] = {}

    def _text(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            # Constant statement text only: the values never pass through here.
            text = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return text

    def execute(self, sql: Any, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._text(sql) if isinstance(sql, str) else sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._text(sql), list(rows))

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        with self.conn.transaction():
            yield self

    @contextmanager
    def serialised(self, name: str) -> Iterator[None]:
        """A session advisory lock: held across the transaction *and* what follows its commit (the anchor)."""
        key = lock_key(name)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def close(self) -> None:
        self.conn.close()


def first_line(exc: BaseException) -> str:
    """A driver error's first line (PostgreSQL's detail and hint lines may quote row values)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def driver_errors() -> tuple[type[BaseException], ...]:
    """Every database driver's base error class, for callers that report instead of crash."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def open_database(spec: str | os.PathLike[str], schema: str) -> Database:
    """PostgreSQL for a ``postgresql://`` URL (``schema``: ``vault`` or ``keystore``); SQLite is opened by its owner."""
    if not is_postgres(spec):
        raise ValueError("open_database opens PostgreSQL URLs; SQLite files are opened by their store")
    return PostgresDatabase(str(spec), schema)
