"""The record database: SQLite (WAL), one table pair per day, so queries seek and purges drop.

Layout (docs/vault.md has the rationale):

* ``rec_YYYYMMDD(rid, record_id, ts, parsed, sealed_time, src, part, off, ct)`` — one row per
  record, ``ct`` = nonce || AES-256-GCM under the day's key (``keystore``). ``ts`` is the call
  start in µs since the epoch, or the segment's ``sealed_at`` when the record has no usable
  start (``sealed_time = 1``); records no input format could read have ``parsed = 0`` and a
  small partial index on ``ts`` so they can be listed by time.
* ``idx_YYYYMMDD(k INTEGER PRIMARY KEY)`` — one key ``bidx << 32 | rid`` per (party
  identifier, record): a lookup is one range scan of a rowid B-tree, whatever the number of
  records; the time window is applied to the few joined record rows.
* ``record_ids(record_id, day)`` WITHOUT ROWID, indexed by ``day`` too (for the purge) —
  every stored record id once, across days: ingest is idempotent however often (or however
  late) a record arrives.
* ``partitions(day, kid)`` — which day key each day was written with.
* ``readers(id, format, mapping)`` — the input format (and mapping file text) a record was
  indexed with: a record's ``parsed`` is a reader id (0: unread; 1: JSONL, since the first vault).
* ``audit(seq, entry)`` — the hash-chained access log (``audit``).
* ``warrants(id, doc)`` — registered warrants and their scope (``warrants``).

Writes use ``synchronous=FULL``: a batch is on disk before the sink commits its Kafka offsets,
so a power cut cannot lose records the topic no longer holds. Several sinks may write one
database (each holds ``<db>.lock`` shared): they prepare batches in parallel and take turns on
SQLite's write lock, under which :meth:`VaultStore.insert_day` claims ids and places row ids.
A purge drops whole tables (no row-by-row delete) with ``secure_delete`` on, then removes the days' ids; the keystore destroys the keys, which is
what makes every copy unreadable.

:class:`RecordStore` is the storage interface the rest of the vault uses, with what both
databases share written once (settings, readers, the partitions list, quarantine);
:class:`VaultStore` is its SQLite implementation (a file path, the default) and
``pipeline.vault.postgres.PostgresStore`` its PostgreSQL one (``--db postgresql://…``).
:func:`open_store` picks one from ``--db``.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import itertools
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from pipeline.vault.backend import Database, SqliteDatabase, is_postgres
from pipeline.vault.index import RID_BITS
from pipeline.vault.keystore import _create_private_file, day_date
from pipeline.vault.readers import JSONL_ID, Reader

STORE_FORMAT = "cdrpipe.vault-store/1"
_RID_MASK = (1 << RID_BITS) - 1
DAY_US = 86_400_000_000
#: Columns of a record row, in table order.
RECORD_COLUMNS = ("rid", "record_id", "ts", "parsed", "sealed_time", "src", "part", "off", "ct")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (day INTEGER PRIMARY KEY, kid TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS record_ids (record_id TEXT PRIMARY KEY, day INTEGER NOT NULL) WITHOUT ROWID;
-- A purge deletes its days' ids through this (was a scan of every stored id: 0.75 s at 10M records).
CREATE INDEX IF NOT EXISTS record_ids_day ON record_ids (day);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS warrants (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readers (id INTEGER PRIMARY KEY, format TEXT NOT NULL, mapping TEXT NOT NULL,
                                    UNIQUE (format, mapping));
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, received_at TEXT NOT NULL, segment_id TEXT,
                                       reason TEXT NOT NULL, envelope BLOB NOT NULL);
"""


class StoreError(Exception):
    """The database is missing, not a vault, or belongs to other keys; the message says which and what to do."""


def rec_table(day: int) -> str:
    """Name of the day's record table (the day number is an int, so the name is safe to format)."""
    return f"rec_{day_date(int(day)):%Y%m%d}"


def idx_table(day: int) -> str:
    """Name of the day's blind-index table."""
    return f"idx_{day_date(int(day)):%Y%m%d}"


def _now_text() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class RecordStore:
    """The record store interface: what ingest, query, reindex, purge and status need of a database.

    Why a base class: the checks that make a database *this* vault's (format, key ids, region),
    the settings, readers, quarantine and the partitions list are plain SQL both databases run
    alike, so they are written here once over :class:`~pipeline.vault.backend.Database`; the
    per-day layout (tables vs declarative partitions), bulk insert and locking differ and are
    left to the implementations.
    """

    db: Database
    #: What to call this store in messages and metrics (a URL without its password).
    path: Any
    region: str

    def _check_meta(self, *, vault_kid: str, index_kid: str, region: str | None) -> None:
        """Write the vault's identity on first open, then refuse a database of other keys or region."""
        meta = dict(self.db.execute("SELECT k, v FROM meta").fetchall())
        if not meta:
            with self.db.transaction():
                # ON CONFLICT: two sinks creating one vault at once agree on the first identity written.
                self.db.executemany("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", [
                    ("format", STORE_FORMAT), ("vault_kid", vault_kid), ("index_kid", index_kid),
                    ("region", (region or "GB").upper()), ("created", _now_text())])
            meta = dict(self.db.execute("SELECT k, v FROM meta").fetchall())
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path} is not a cdrpipe vault database")
        if meta.get("vault_kid") != vault_kid or meta.get("index_kid") != index_kid:
            raise StoreError(f"{self.path} was created with vault key {meta.get('vault_kid')!r} and index key "
                             f"{meta.get('index_kid')!r}; the keyring holds {vault_kid!r} and {index_kid!r}: "
                             "use the vault keyring that created this vault")
        #: The region national numbers were read with at ingest (fixed for the vault's life).
        self.region = meta["region"]
        if region and region.upper() != self.region:
            raise StoreError(f"{self.path} indexes national numbers as region {self.region}; ingesting with "
                             f"--region {region.upper()} would index the same number twice. Use {self.region}.")

    def close(self) -> None:
        self.db.close()

    def reader(self) -> Database:
        """A second connection for reads while this one writes (it sees committed data)."""
        raise NotImplementedError

    def lock_writer(self) -> None:
        """Claim the right to ingest (SQLite: one writer; PostgreSQL: any number of sinks)."""

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction."""
        with self.db.transaction() as db:
            yield db

    # ------------------------------------------------------------------ partitions

    def partitions(self) -> dict[int, str]:
        """Day number -> key id of every day with records."""
        return {int(d): str(k) for d, k in self.db.execute("SELECT day, kid FROM partitions ORDER BY day").fetchall()}

    def prepare_days(self, days: Iterable[tuple[int, str]]) -> None:
        """Create the days' storage before the batch's transaction, where that needs its own (PostgreSQL DDL)."""

    def reserve_rids(self, day: int, n: int, conn: Database | None = None) -> int:
        """The first of ``n`` row ids of ``day`` that no other batch (of this or another sink) will use."""
        raise NotImplementedError

    # ------------------------------------------------------------------ settings

    def meta(self, key: str) -> str | None:
        """A vault setting from the ``meta`` table (region, the audit witness, …)."""
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                       (key, value))

    # ------------------------------------------------------------------ readers

    def readers(self) -> dict[int, Reader]:
        """Reader id -> the format (and mapping text) records with that ``parsed`` value were indexed with."""
        return {int(i): Reader(f, m) for i, f, m in self.db.execute("SELECT id, format, mapping FROM readers")}

    def reader_id(self, reader: Reader) -> int:
        """The id of ``reader``, registered on first use (ids are never reused or changed)."""
        row = self.db.execute("SELECT id FROM readers WHERE format = ? AND mapping = ?",
                              (reader.format, reader.mapping)).fetchone()
        if row is None:
            with self.transaction() as db:
                db.execute("INSERT INTO readers (format, mapping) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (reader.format, reader.mapping))
            row = self.db.execute("SELECT id FROM readers WHERE format = ? AND mapping = ?",
                                  (reader.format, reader.mapping)).fetchone()
        return int(row[0])

    def quarantine(self, segment_id: str | None, reason: str, envelope: bytes) -> None:
        """Keep an envelope that could not be opened (still sealed to the vault) for investigation."""
        self.db.execute("INSERT INTO quarantine (received_at, segment_id, reason, envelope) VALUES (?, ?, ?, ?)",
                        (_now_text(), segment_id, reason, envelope))

    def quarantined(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0])

    def audit_count(self) -> int:
        """Entries in the audit log (for ``vault status``)."""
        return int(self.db.execute("SELECT count(*) FROM audit").fetchone()[0])

    # ------------------------------------------------------------------ per backend (see the implementations)

    def ensure_partition(self, day: int, kid: str) -> None:
        raise NotImplementedError

    def known_ids(self, record_ids: Sequence[str], conn: Database | None = None) -> set[str]:
        raise NotImplementedError

    def undated_ids(self, pairs: Iterable[tuple[int, str]], conn: Database | None = None) -> set[str]:
        """Of ``(sealed day, ref)`` pairs of records now dated on another day, the refs already stored
        undated under their segment's day (before they could be read); empty where :meth:`known_ids`
        saw every stored ref already (SQLite's ids are one table)."""
        return set()

    def insert_day(self, day: int, records: Iterable[tuple[object, ...]], index: Sequence[int],
                   ids: Sequence[str]) -> int:
        """Insert one day's records (RECORD_COLUMNS order, any iterable), their distinct index keys and
        their record ids; returns how many records were stored."""
        raise NotImplementedError

    def sealed_time_rows(self, day: int) -> list[tuple[object, ...]]:
        raise NotImplementedError

    def remove_records(self, day: int, rids: Sequence[int], index: Sequence[int], record_ids: Sequence[str]) -> None:
        raise NotImplementedError

    def find(self, day: int, bidx: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        raise NotImplementedError

    def unparsed(self, day: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        raise NotImplementedError

    def drop_days(self, days: Sequence[int]) -> int:
        raise NotImplementedError

    def day_counts(self) -> dict[int, int]:
        raise NotImplementedError

    def unread_count(self) -> int:
        raise NotImplementedError

    def day_rows(self, day: int, after_rid: int, limit: int) -> list[tuple[object, ...]]:
        """Up to ``limit`` records of ``day`` with ``rid > after_rid``, by rid (RECORD_COLUMNS order)."""
        raise NotImplementedError

    def day_index(self, day: int) -> list[int]:
        """Every index key of ``day``, ascending."""
        raise NotImplementedError


def open_store(db: str | os.PathLike[str], *, vault_kid: str, index_kid: str, region: str | None = None,
               create: bool = False) -> RecordStore:
    """The store ``--db`` names: PostgreSQL for a ``postgresql://`` URL, else the SQLite file (the default)."""
    if is_postgres(db):
        from pipeline.vault.postgres import PostgresStore
        return PostgresStore(str(db), vault_kid=vault_kid, index_kid=index_kid, region=region, create=create)
    return VaultStore(db, vault_kid=vault_kid, index_kid=index_kid, region=region, create=create)


class VaultStore(RecordStore):
    """The SQLite record store: one file; single writer (a lock file), any number of readers (WAL)."""

    def __init__(self, path: str | os.PathLike[str], *, vault_kid: str, index_kid: str, region: str | None = None,
                 create: bool = False, cache_mib: int = 256) -> None:
        self.path = Path(path)
        self._lock: Any = None
        self._next_rid: dict[int, int] = {}
        if not self.path.exists():
            if not create:
                raise StoreError(f"no vault database at {self.path}: check --db, or fill one with "
                                 "`cdrpipe vault ingest` / `cdrpipe vault sink`")
            _create_private_file(self.path)
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self.db = SqliteDatabase(self.conn, str(self.path))
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError:
            self.conn.close()
            raise StoreError(f"{self.path} is not an SQLite database (is --db the vault database?)") from None
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.executescript(_SCHEMA)
        self._check_meta(vault_kid=vault_kid, index_kid=index_kid, region=region)
        if self.conn.execute("SELECT 1 FROM readers WHERE id = ?", (JSONL_ID,)).fetchone() is None:
            # A vault from before the readers table: its parsed = 1 records were read as JSONL.
            self.conn.execute("INSERT OR IGNORE INTO readers (id, format, mapping) VALUES (?, 'jsonl', '')",
                              (JSONL_ID,))

    def __repr__(self) -> str:
        return f"VaultStore(path={str(self.path)!r}, region={self.region!r})"

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def reader(self) -> Database:
        """A second connection for reads while this one writes (WAL: it sees committed data)."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return SqliteDatabase(conn, str(self.path))

    def lock_writer(self) -> None:
        """Join the ingests/sinks writing this database (a shared lock on ``<db>.lock``, gone with the process).

        Several sinks may write one SQLite vault (a consumer group on one host): each prepares its
        batches in parallel and they take turns on SQLite's write lock (``BEGIN IMMEDIATE``) to
        insert them; :meth:`insert_day` claims ids and places row ids under that lock. The lock
        file is shared, so a tool that needs the database to itself can still take it exclusively.
        """
        if self._lock is not None:
            return
        handle = open(str(self.path) + ".lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreError(f"{self.path} is held exclusively by another cdrpipe command (it holds "
                             f"{self.path}.lock): ingest when it is done") from None
        self._lock = handle

    def ensure_partition(self, day: int, kid: str) -> None:
        """Create the day's tables if needed (inside the caller's transaction); refuse a different day key."""
        row = self.conn.execute("SELECT kid FROM partitions WHERE day = ?", (day,)).fetchone()
        rec, idx = rec_table(day), idx_table(day)
        if row is None:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {rec} (rid INTEGER PRIMARY KEY, record_id TEXT NOT NULL, "
                              "ts INTEGER NOT NULL, parsed INTEGER NOT NULL, sealed_time INTEGER NOT NULL, "
                              "src TEXT NOT NULL, part INTEGER, off INTEGER, ct BLOB NOT NULL)")
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {rec}_unparsed ON {rec} (ts) WHERE parsed = 0")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {idx} (k INTEGER PRIMARY KEY)")
            self.conn.execute("INSERT INTO partitions (day, kid, created) VALUES (?, ?, ?)", (day, kid, _now_text()))
        elif row[0] != kid:
            raise StoreError(f"the records of {day_date(day)} were written under day key {row[0]!r} but the "
                             f"keystore holds {kid!r}: wrong --keystore for this database?")

    def reserve_rids(self, day: int, n: int, conn: Database | None = None) -> int:
        """Provisional row ids of ``day``, counted on from this process's batch before (uncommitted yet).

        Provisional: another sink may write the day meanwhile, so :meth:`insert_day` moves the
        batch's rows (and their index keys) to the day's first free row id under the write lock.
        """
        first = self._next_rid.get(day) or self.next_rid(day, conn)
        self._next_rid[day] = first + n
        return first

    def next_rid(self, day: int, conn: Database | None = None) -> int:
        """The first unused row id of the day's table (1 for a day without records)."""
        conn = conn or self.db
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (rec_table(day),)).fetchone():
            return 1
        return int(conn.execute(f"SELECT coalesce(max(rid), 0) + 1 FROM {rec_table(day)}").fetchone()[0])

    # ------------------------------------------------------------------ ingest

    def known_ids(self, record_ids: Sequence[str], conn: Database | None = None) -> set[str]:
        """Which of ``record_ids`` are already stored (one query per call)."""
        if not record_ids:
            return set()
        rows = (conn or self.db).execute("SELECT record_id FROM record_ids WHERE record_id IN "
                                 "(SELECT value FROM json_each(?))", (orjson.dumps(list(record_ids)),))
        return {r[0] for r in rows}

    def insert_day(self, day: int, records: Iterable[tuple[object, ...]], index: Sequence[int],
                   ids: Sequence[str]) -> int:
        """Insert one day's records (RECORD_COLUMNS order), index keys ``bidx << 32 | rid`` and record ids.

        Inside the caller's write transaction (SQLite's write lock, held by one sink at a time):

        1. the ids are claimed first (``INSERT OR IGNORE``); when another sink stored some of them
           since this batch was prepared, the claim is undone (a savepoint) and made again for the
           records not stored yet, and only those are inserted (the rest count as duplicates);
        2. the rows take the day's next free row ids (the batch was prepared with provisional
           ones; the index keys move with them: ``k + shift`` changes only the row-id bits).

        Returns the records stored. ``records`` may be an iterator (ingest passes a ``zip`` of its
        columns, bound row by row); with one sink nothing is copied or shifted.
        """
        ids = list(ids)
        rows = iter(records)
        first = next(rows, None)
        if first is None:
            return 0
        rows = itertools.chain((first,), rows)
        self.conn.execute("SAVEPOINT claim")
        claimed = self.conn.execute("INSERT OR IGNORE INTO record_ids (record_id, day) SELECT value, ? "
                                    "FROM json_each(?)", (day, orjson.dumps(ids))).rowcount
        if claimed < len(ids):  # another sink stored some since this batch was prepared
            self.conn.execute("ROLLBACK TO claim")
            known = self.known_ids(ids)
            kept = [r for r in rows if r[1] not in known]
            rids = {int(r[0]) for r in kept}  # type: ignore[call-overload]
            index = [k for k in index if k & _RID_MASK in rids]
            ids = [str(r[1]) for r in kept]
            rows = iter(kept)
            self.conn.execute("INSERT INTO record_ids (record_id, day) SELECT value, ? FROM json_each(?)",
                              (day, orjson.dumps(ids)))
        self.conn.execute("RELEASE claim")
        if not ids:
            return 0
        shift = self.next_rid(day) - int(first[0])  # type: ignore[call-overload]
        if shift:
            rows = ((r[0] + shift, *r[1:]) for r in rows)  # type: ignore[operator]
            index = [k + shift for k in index]
        stored = self.conn.executemany(f"INSERT INTO {rec_table(day)} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                       rows).rowcount
        # One statement, so SQLite works through the keys without the GIL (a writer thread then runs
        # beside the thread preparing the next batch).
        self.conn.execute(f"INSERT OR IGNORE INTO {idx_table(day)} SELECT value FROM json_each(?)",
                          (orjson.dumps(index),))
        if shift:
            self._next_rid[day] = max(self._next_rid.get(day, 0), self.next_rid(day))
        return stored

    def sealed_time_rows(self, day: int) -> list[tuple[object, ...]]:
        """Records of ``day`` filed under their segment's ``sealed_at`` (no call start read): reindex candidates."""
        return self.conn.execute(
            f"SELECT rid, record_id, ts, parsed, sealed_time, src, part, off, ct FROM {rec_table(day)} "
            "WHERE sealed_time = 1").fetchall()

    def remove_records(self, day: int, rids: Sequence[int], index: Sequence[int], record_ids: Sequence[str]) -> None:
        """Delete records of ``day`` (inside the caller's transaction): rows, their index keys, their ids."""
        self.conn.execute(f"DELETE FROM {rec_table(day)} WHERE rid IN (SELECT value FROM json_each(?))",
                          (orjson.dumps(list(rids)),))
        self.conn.execute(f"DELETE FROM {idx_table(day)} WHERE k IN (SELECT value FROM json_each(?))",
                          (orjson.dumps(list(index)),))
        self.conn.execute("DELETE FROM record_ids WHERE record_id IN (SELECT value FROM json_each(?))",
                          (orjson.dumps(list(record_ids)),))

    # ------------------------------------------------------------------ query

    def find(self, day: int, bidx: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        """Records of ``day`` indexed under ``bidx`` with ``lo_us <= ts < hi_us`` (one index range scan)."""
        rec, idx = rec_table(day), idx_table(day)
        return self.conn.execute(
            f"SELECT r.rid, r.record_id, r.ts, r.parsed, r.sealed_time, r.src, r.part, r.off, r.ct "
            f"FROM {idx} AS i JOIN {rec} AS r ON r.rid = (i.k & {(1 << RID_BITS) - 1}) "
            "WHERE i.k >= ? AND i.k < ? AND r.ts >= ? AND r.ts < ?",
            (bidx << RID_BITS, (bidx + 1) << RID_BITS, lo_us, hi_us)).fetchall()

    def unparsed(self, day: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        """Records of ``day`` that were not JSON, sealed within ``[lo_us, hi_us)``."""
        return self.conn.execute(
            f"SELECT rid, record_id, ts, parsed, sealed_time, src, part, off, ct FROM {rec_table(day)} "
            "WHERE parsed = 0 AND ts >= ? AND ts < ?", (lo_us, hi_us)).fetchall()

    # ------------------------------------------------------------------ purge and status

    def drop_days(self, days: Sequence[int]) -> int:
        """Drop the days' tables and ids (secure_delete zeroes the freed pages); returns records dropped."""
        if not days:
            return 0
        self.conn.execute("PRAGMA secure_delete=ON")
        dropped = 0
        try:
            with self.transaction() as conn:
                for day in days:
                    rec, idx = rec_table(day), idx_table(day)
                    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                          (rec,)).fetchone()
                    if exists:
                        dropped += int(conn.execute(f"SELECT count(*) FROM {rec}").fetchone()[0])
                    conn.execute(f"DROP TABLE IF EXISTS {idx}")
                    conn.execute(f"DROP TABLE IF EXISTS {rec}")
                    conn.execute("DELETE FROM partitions WHERE day = ?", (day,))
                conn.execute("DELETE FROM record_ids WHERE day IN (SELECT value FROM json_each(?))",
                             (orjson.dumps(list(days)),))
        finally:
            self.conn.execute("PRAGMA secure_delete=OFF")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return dropped

    def day_rows(self, day: int, after_rid: int, limit: int) -> list[tuple[object, ...]]:
        return self.conn.execute(
            f"SELECT rid, record_id, ts, parsed, sealed_time, src, part, off, ct FROM {rec_table(day)} "
            "WHERE rid > ? ORDER BY rid LIMIT ?", (after_rid, limit)).fetchall()

    def day_index(self, day: int) -> list[int]:
        return [int(k) for (k,) in self.conn.execute(f"SELECT k FROM {idx_table(day)} ORDER BY k")]

    def day_counts(self) -> dict[int, int]:
        """Records per stored day (for ``vault status``)."""
        return {day: int(self.conn.execute(f"SELECT count(*) FROM {rec_table(day)}").fetchone()[0])
                for day in self.partitions()}

    def unread_count(self) -> int:
        """Records no input format could read (``parsed = 0``; counted through each day's partial index)."""
        return sum(int(self.conn.execute(f"SELECT count(*) FROM {rec_table(day)} WHERE parsed = 0").fetchone()[0])
                   for day in self.partitions())
