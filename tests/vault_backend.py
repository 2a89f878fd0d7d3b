"""Where a test's vault lives (a SQLite file or a PostgreSQL database) and how a test looks inside it.

Why: the vault's suites run on both storage backends, and their checks sometimes need to read or
tamper with the storage directly, as someone with write access to it would. This is the one place
that knows how to reach each backend's tables; the code under test is never used for that.
"""
from __future__ import annotations

import sqlite3
from typing import Any


class VaultBackend:
    """One test vault: ``db`` and ``keystore`` as ``--db`` / ``--keystore`` take them."""

    def __init__(self, kind: str, db: str, keystore: str) -> None:
        self.kind, self.db, self.keystore = kind, db, keystore

    def __repr__(self) -> str:
        return f"VaultBackend({self.kind})"

    def args(self) -> list[str]:
        return ["--db", self.db, "--keystore", self.keystore]

    def _run(self, target: str, schema: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        if self.kind == "sqlite":
            conn = sqlite3.connect(target)
            try:
                with conn:
                    for statement, params in statements:
                        rows = conn.execute(statement, params).fetchall()
            finally:
                conn.close()
            return rows
        import psycopg
        with psycopg.connect(target, options=f"-c search_path={schema}") as conn:  # one transaction
            for statement, params in statements:
                cur = conn.execute(statement.replace("?", "%s"), params)
                rows = cur.fetchall() if cur.description else []
        return rows

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the record store (``?`` placeholders), committed; its rows."""
        return self._run(self.db, "vault", [(statement, params)])

    def sql_many(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Several statements on the record store in one transaction."""
        self._run(self.db, "vault", list(statements))

    def keystore_sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._run(self.keystore, "keystore", [(statement, params)])

    def day_storage(self) -> set[str]:
        """Names of the per-day tables (SQLite) or partitions (PostgreSQL) that exist."""
        if self.kind == "sqlite":
            return {n for (n,) in self.sql("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                           "(name GLOB 'rec_*' OR name GLOB 'idx_*')")}
        return {n for (n,) in self.sql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                       "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN "
                                       "('records', 'blind_index', 'record_ids')")}

    def day_keys(self) -> set[int]:
        return {int(d) for (d,) in self.keystore_sql("SELECT day FROM day_keys")}

    def drop_anchor(self) -> None:
        """What an attacker who rewrote the log does next: remove the keystore's audit anchor."""
        self.keystore_sql("DELETE FROM meta WHERE k IN ('audit_seq', 'audit_hash')")


def make_backend(kind: str, tmp_path: Any, request: Any) -> VaultBackend:
    """A fresh, empty vault location of ``kind`` for one test (PostgreSQL: two new databases)."""
    if kind == "sqlite":
        return VaultBackend("sqlite", str(tmp_path / "vault.db"), str(tmp_path / "vault.db.keys"))
    db, keys = request.getfixturevalue("pg_vault_urls")
    return VaultBackend("postgresql", db, keys)
