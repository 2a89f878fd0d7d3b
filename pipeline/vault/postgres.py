"""The vault on PostgreSQL: several sinks, one retained store, day partitions dropped by the purge.

Why PostgreSQL: an operator that outgrows one machine runs several ``vault sink`` processes in
one consumer group, officers query while they ingest, and the platform team runs backups and
replicas. The behaviour is the SQLite vault's (``store.VaultStore``); what differs is here:

* **Layout.** Schema ``vault``: ``records``, ``blind_index`` and ``record_ids`` are declarative
  partitions ``PARTITION BY LIST (day)``, one partition of each per call day
  (``rec_YYYYMMDD``, ``idx_YYYYMMDD``, ``ids_YYYYMMDD``). A lookup is one primary-key range scan
  of one day's ``blind_index``; ``vault purge`` drops the day's three partitions, so a purge
  costs the same whatever the day holds (the day key is destroyed first, in the keystore).
* **Functions, not DDL rights.** Partitions are created by ``vault.ensure_day`` and dropped by
  ``vault.drop_day``, both ``SECURITY DEFINER`` (owned by the schema owner): the ingest role
  needs no right to create or drop tables, only to run the one, and the purge role the other
  (deploy/postgres/roles.sql). Partition names are built inside those functions from the day
  number with ``format('%I')``; nothing from an input reaches SQL text anywhere.
* **Concurrent sinks.** Row ids come from ``day_rids`` (one ``UPDATE … RETURNING`` per day per
  batch reserves a block, committed at once), so two sinks never use one. Records are inserted
  only for record ids this transaction claimed in its day's ``record_ids`` partition, so a
  record two sinks read after a rebalance is stored once. Partitions are created in their own
  short transaction before a batch's (creating one locks the parent).
* **Dedupe is per (day, record ref): one probe a record.** A record's day is fixed by its call
  start, so the claim (a primary-key insert into that day's ``record_ids``) is the dedupe; a
  batch's refs are never looked up across every day's partition (a year of partitions would be
  365 index descents a record). The one record that can be stored under another day is one
  filed *undated* under its segment's ``sealed_at`` day (no call start could be read): such ids
  carry ``undated`` (a partial index, empty in normal operation), and ingest asks it about a
  re-sent record now dated on another day (:meth:`PostgresStore.undated_ids`). ``vault
  reindex`` moves a record's id with it. Left: a record stored dated and then re-sent to a
  sink that cannot read it is filed undated a second time, until ``vault reindex`` (whose
  claim then finds the dated copy and drops the undated one).
* **Counts without scans.** Each batch adds a ``day_counts`` row (no shared row to contend
  for), so the purge's audit entry and ``vault status`` report records per day exactly
  without counting a billion-row partition.
* **Bulk writes.** Records, index keys and ids go in with binary ``COPY`` (index keys and ids
  as prepared buffers, not a Python call per row); only a batch whose claim conflicts falls back
  to ``INSERT … ON CONFLICT DO NOTHING RETURNING`` for its ids.

The schema is created by the first ``cdrpipe vault init`` (or any creating command) run as the
owner role; the other roles never create anything.
"""
from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence

from pipeline.vault.backend import Database, DatabaseError, PostgresDatabase, first_line, lock_key
from pipeline.vault.index import RID_BITS
from pipeline.vault.keystore import day_date
from pipeline.vault.store import RecordStore, StoreError

#: The record store's schema (applied once, by the owner, when ``vault.meta`` does not exist yet).
STORE_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS vault;
CREATE TABLE IF NOT EXISTS vault.meta (k text PRIMARY KEY, v text NOT NULL);
CREATE TABLE IF NOT EXISTS vault.partitions (day integer PRIMARY KEY, kid text NOT NULL, created text NOT NULL);
CREATE TABLE IF NOT EXISTS vault.day_rids (day integer PRIMARY KEY, next bigint NOT NULL);
CREATE TABLE IF NOT EXISTS vault.day_counts (day integer NOT NULL, n bigint NOT NULL);
CREATE INDEX IF NOT EXISTS day_counts_day ON vault.day_counts (day);
CREATE TABLE IF NOT EXISTS vault.records (
    day integer NOT NULL, rid bigint NOT NULL, record_id text NOT NULL, ts bigint NOT NULL,
    parsed integer NOT NULL, sealed_time smallint NOT NULL, src text NOT NULL, part integer, off bigint,
    ct bytea NOT NULL, PRIMARY KEY (day, rid)) PARTITION BY LIST (day);
CREATE INDEX IF NOT EXISTS records_unparsed ON vault.records (day, ts) WHERE parsed = 0;
CREATE INDEX IF NOT EXISTS records_sealed_time ON vault.records (day) WHERE sealed_time = 1;
CREATE TABLE IF NOT EXISTS vault.blind_index (day integer NOT NULL, k bigint NOT NULL, PRIMARY KEY (day, k))
    PARTITION BY LIST (day);
-- undated: the record is filed under its segment's sealed_at day (no call start read); the
-- partial index finds such a record again when it is re-sent and now read (ingest's dedupe).
CREATE TABLE IF NOT EXISTS vault.record_ids (day integer NOT NULL, record_id text NOT NULL,
    undated boolean NOT NULL DEFAULT false, PRIMARY KEY (day, record_id)) PARTITION BY LIST (day);
CREATE INDEX IF NOT EXISTS record_ids_undated ON vault.record_ids (day, record_id) WHERE undated;
CREATE TABLE IF NOT EXISTS vault.audit (seq bigint PRIMARY KEY, entry text NOT NULL);
CREATE TABLE IF NOT EXISTS vault.warrants (id text PRIMARY KEY, doc text NOT NULL);
CREATE TABLE IF NOT EXISTS vault.readers (id integer GENERATED BY DEFAULT AS IDENTITY (START WITH 2) PRIMARY KEY,
    format text NOT NULL, mapping text NOT NULL, UNIQUE (format, mapping));
INSERT INTO vault.readers (id, format, mapping) VALUES (1, 'jsonl', '') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS vault.quarantine (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at text NOT NULL, segment_id text, reason text NOT NULL, envelope bytea NOT NULL);

-- Create a day's three partitions (once; concurrent sinks wait on one advisory lock per day).
CREATE OR REPLACE FUNCTION vault.ensure_day(p_day integer, p_kid text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = vault, pg_temp AS $$
DECLARE
    suffix text := to_char(date '1970-01-01' + p_day, 'YYYYMMDD');
    found_kid text;
BEGIN
    SELECT kid INTO found_kid FROM vault.partitions WHERE day = p_day;
    IF found_kid IS NOT NULL THEN RETURN found_kid; END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cdrpipe.vault.day'), p_day);
    SELECT kid INTO found_kid FROM vault.partitions WHERE day = p_day;
    IF found_kid IS NOT NULL THEN RETURN found_kid; END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS vault.%I PARTITION OF vault.records FOR VALUES IN (%s)',
                   'rec_' || suffix, p_day);
    EXECUTE format('CREATE TABLE IF NOT EXISTS vault.%I PARTITION OF vault.blind_index FOR VALUES IN (%s)',
                   'idx_' || suffix, p_day);
    EXECUTE format('CREATE TABLE IF NOT EXISTS vault.%I PARTITION OF vault.record_ids FOR VALUES IN (%s)',
                   'ids_' || suffix, p_day);
    INSERT INTO vault.partitions (day, kid, created)
        VALUES (p_day, p_kid, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
    RETURN p_kid;
END $$;

-- Drop a day's partitions (the purge); returns the records they held.
CREATE OR REPLACE FUNCTION vault.drop_day(p_day integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = vault, pg_temp AS $$
DECLARE
    suffix text := to_char(date '1970-01-01' + p_day, 'YYYYMMDD');
    held bigint;
BEGIN
    SELECT coalesce(sum(n), 0) INTO held FROM vault.day_counts WHERE day = p_day;
    -- In the order a batch locks the parents (records, blind_index, record_ids): no deadlock with a sink.
    EXECUTE format('DROP TABLE IF EXISTS vault.%I', 'rec_' || suffix);
    EXECUTE format('DROP TABLE IF EXISTS vault.%I', 'idx_' || suffix);
    EXECUTE format('DROP TABLE IF EXISTS vault.%I', 'ids_' || suffix);
    DELETE FROM vault.partitions WHERE day = p_day;
    DELETE FROM vault.day_counts WHERE day = p_day;
    DELETE FROM vault.day_rids WHERE day = p_day;
    RETURN held;
END $$;
REVOKE ALL ON FUNCTION vault.ensure_day(integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.drop_day(integer) FROM PUBLIC;
"""

#: The keystore's schema: a separate database from the records (its own backups), see keystore.py.
KEYSTORE_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS keystore;
CREATE TABLE IF NOT EXISTS keystore.meta (k text PRIMARY KEY, v text NOT NULL);
CREATE TABLE IF NOT EXISTS keystore.day_keys (day integer PRIMARY KEY, kid text NOT NULL, wrapped bytea NOT NULL,
    created text NOT NULL);
CREATE TABLE IF NOT EXISTS keystore.destroyed (day integer PRIMARY KEY, kid text NOT NULL,
    destroyed_at text NOT NULL);

-- The ingest role's only access to day keys: the day's key (created by the first caller), or
-- nothing for a purged day. It cannot list or read other days' keys.
CREATE OR REPLACE FUNCTION keystore.day_key_for_write(p_day integer, p_kid text, p_wrapped bytea, p_created text)
RETURNS TABLE (kid text, wrapped bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = keystore, pg_temp AS $$
BEGIN
    IF p_day < coalesce((SELECT m.v::bigint FROM keystore.meta m WHERE m.k = 'purged_before'), -4611686018427387904)
       OR EXISTS (SELECT 1 FROM keystore.destroyed d WHERE d.day = p_day) THEN
        RETURN;
    END IF;
    INSERT INTO keystore.day_keys AS dk (day, kid, wrapped, created) VALUES (p_day, p_kid, p_wrapped, p_created)
        ON CONFLICT (day) DO NOTHING;
    RETURN QUERY SELECT dk.kid, dk.wrapped FROM keystore.day_keys dk WHERE dk.day = p_day;
END $$;
REVOKE ALL ON FUNCTION keystore.day_key_for_write(integer, text, bytea, text) FROM PUBLIC;
"""

_COPY_RECORDS = ("COPY records (day, rid, record_id, ts, parsed, sealed_time, src, part, off, ct) "
                 "FROM STDIN (FORMAT BINARY)")
_COPY_TYPES = ["int4", "int8", "text", "int8", "int4", "int2", "text", "int4", "int8", "bytea"]
_COPY_IDS = "COPY record_ids (day, record_id, undated) FROM STDIN (FORMAT BINARY)"
_COPY_INDEX = "COPY blind_index (day, k) FROM STDIN (FORMAT BINARY)"
#: Binary COPY framing (PostgreSQL's documented format): signature, flags, header extension; trailer.
_COPY_HEAD = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TAIL = b"\xff\xff"
_DDL_LOCK = lock_key("vault.partitions")
_LOCK_PARENTS = "LOCK TABLE ONLY records, blind_index, record_ids IN ROW EXCLUSIVE MODE"
_ROW_COLUMNS = "rid, record_id, ts, parsed, sealed_time, src, part, off, ct"
_RID_MASK = (1 << RID_BITS) - 1


def _key_rows(day: int, keys: Sequence[int]) -> bytes:
    """Binary COPY data of ``(day int4, k int8)`` rows, built without a Python step per key.

    Every row is 22 bytes: field count 2, length 4, the day, length 8, the key (big-endian); the
    rows are one template repeated, and the keys' bytes are laid into it with 8 strided copies.
    """
    n = len(keys)
    row = b"\x00\x02\x00\x00\x00\x04" + int(day).to_bytes(4, "big", signed=True) + b"\x00\x00\x00\x08" + bytes(8)
    buf = bytearray(row * n)
    values = array("q", keys)
    if sys.byteorder == "little":
        values.byteswap()
    raw = values.tobytes()
    for j in range(8):
        buf[14 + j::22] = raw[j::8]
    return _COPY_HEAD + bytes(buf) + _COPY_TAIL


def _id_rows(day: int, rows: Sequence[tuple[object, ...]]) -> bytes:
    """Binary COPY data of ``(day int4, record_id text, undated bool)`` for record rows (RECORD_COLUMNS order)."""
    head = b"\x00\x03\x00\x00\x00\x04" + int(day).to_bytes(4, "big", signed=True)
    dated, undated = b"\x00\x00\x00\x01\x00", b"\x00\x00\x00\x01\x01"
    out = [_COPY_HEAD]
    for row in rows:
        ref = str(row[1]).encode()
        out.append(head + len(ref).to_bytes(4, "big") + ref + (undated if row[4] else dated))
    out.append(_COPY_TAIL)
    return b"".join(out)


#: What brings a vault made by an earlier release to :data:`STORE_SCHEMA` (then applied again for
#: its functions): ids stored undated are flagged, and the cross-day id index is gone.
STORE_UPGRADE = """
ALTER TABLE vault.record_ids ADD COLUMN IF NOT EXISTS undated boolean NOT NULL DEFAULT false;
DROP INDEX IF EXISTS vault.record_ids_id;
"""
#: True when the vault's schema is this release's (the last upgrade's column is there). From the
#: catalog, which every role may read (information_schema shows only a role's own tables).
_STORE_CURRENT = ("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('vault.record_ids') "
                  "AND attname = 'undated' AND NOT attisdropped")


def _apply_schema(db: PostgresDatabase, marker: str, schema: str, *, create: bool, what: str,
                  upgrade: str | None = None, current: str | None = None) -> None:
    """Create ``schema`` when ``marker`` (a table) is missing and ``create`` allows; else say who must.

    A schema made by an earlier release (``current`` counts 0) is brought up to date with
    ``upgrade`` then ``schema`` (idempotent statements) when ``create`` allows: only the owner
    role may, and a sink cannot write the old layout, so it stops and says how.
    """
    exists = db.execute("SELECT to_regclass(?)", (marker,)).fetchone()[0] is not None
    stale = exists and current is not None and not db.execute(current).fetchone()[0]
    if exists and not stale:
        return
    if not create:
        if stale:
            raise StoreError(f"the {what} in {db.name} was made by an earlier cdrpipe: upgrade its schema once with "
                             "`cdrpipe vault init` as the schema owner role (deploy/postgres/roles.sql)")
        raise StoreError(f"{db.name} holds no cdrpipe {what}: create it once with `cdrpipe vault init` "
                         "as the schema owner role (deploy/postgres/roles.sql)")
    try:
        with db.transaction():
            # One creator at a time (two sinks starting together on an empty database).
            db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("cdrpipe.schema." + what,))
            if stale and upgrade:
                db.conn.execute(upgrade)  # constant text of this module
            db.conn.execute(schema)  # constant text of this module
    except db.error as exc:
        raise StoreError(f"cannot create the {what} schema in {db.name}: {first_line(exc)} (run `cdrpipe vault "
                         "init` as the owner role)") from None


def connect(spec: str, schema: str) -> PostgresDatabase:
    try:
        return PostgresDatabase(spec, schema)
    except DatabaseError as exc:
        raise StoreError(str(exc)) from None


class PostgresStore(RecordStore):
    """The record store on PostgreSQL (schema ``vault``); any number of sinks and readers at once."""

    def __init__(self, url: str, *, vault_kid: str, index_kid: str, region: str | None = None,
                 create: bool = False) -> None:
        self.url = url
        self.db = connect(url, "vault")
        self.path = self.db.name
        self._ddl: PostgresDatabase | None = None
        try:
            _apply_schema(self.db, "vault.meta", STORE_SCHEMA, create=create, what="vault", upgrade=STORE_UPGRADE,
                          current=_STORE_CURRENT)
            if not create and self.db.execute("SELECT 1 FROM meta LIMIT 1").fetchone() is None:
                raise StoreError(f"no vault in {self.path}: check --db, or fill it with `cdrpipe vault ingest` / "
                                 "`cdrpipe vault sink`")
            self._check_meta(vault_kid=vault_kid, index_kid=index_kid, region=region)
        except BaseException:
            self.db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore(path={self.path!r}, region={self.region!r})"

    def close(self) -> None:
        if self._ddl is not None:
            self._ddl.close()
            self._ddl = None
        self.db.close()

    def reader(self) -> Database:
        return connect(self.url, "vault")

    # ------------------------------------------------------------------ partitions

    def prepare_days(self, days: Iterable[tuple[int, str]]) -> None:
        """Create missing day partitions in one short transaction of their own, before the batch's.

        Creating a partition locks the parent tables until commit; done inside a batch it would
        hold every other sink up for the whole batch (or deadlock with one doing the same). All
        of a batch's new days share one commit (a backfill spread over a year has hundreds), and
        one advisory lock lets one sink at a time create days (two taking the parents' locks and
        each other's day locks in turn would deadlock).
        """
        known = self.partitions()
        todo = sorted({(d, k) for d, k in days if d not in known})
        if not todo:
            return
        if self._ddl is None:
            self._ddl = connect(self.url, "vault")
        with self._ddl.transaction():
            self._ddl.execute("SELECT pg_advisory_xact_lock(?)", (_DDL_LOCK,))
            for day, kid in todo:
                self._ddl.execute("SELECT ensure_day(?, ?)", (day, kid))

    def ensure_partition(self, day: int, kid: str) -> None:
        """Refuse a day written under another key (the partition itself exists: :meth:`prepare_days`)."""
        row = self.db.execute("SELECT kid FROM partitions WHERE day = ?", (day,)).fetchone()
        if row is None:
            row = self.db.execute("SELECT ensure_day(?, ?)", (day, kid)).fetchone()
        if row[0] != kid:
            raise StoreError(f"the records of {day_date(day)} were written under day key {row[0]!r} but the "
                             f"keystore holds {kid!r}: wrong --keystore for this database?")

    def reserve_rids(self, day: int, n: int, conn: Database | None = None) -> int:
        """Reserve ``n`` row ids of ``day`` in one committed statement (every sink shares the counter)."""
        row = (conn or self.db).execute(
            "INSERT INTO day_rids AS r (day, next) VALUES (?, 1 + ?) "
            "ON CONFLICT (day) DO UPDATE SET next = r.next + ? RETURNING next - ?", (day, n, n, n)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ ingest

    def known_ids(self, record_ids: Sequence[str], conn: Database | None = None) -> set[str]:
        """Nothing before the records are read: a record's ids partition is its day's, known only then.

        Looking a batch's refs up in every day's partition would cost one index descent per ref per
        stored day (a year: 365 per record). The dedupe is the claim instead (:meth:`insert_day`:
        one primary-key probe of the record's own day), plus :meth:`undated_ids` for a record that
        was filed under its segment's day before it could be read.
        """
        return set()

    def undated_ids(self, pairs: Iterable[tuple[int, str]], conn: Database | None = None) -> set[str]:
        """Refs among ``(sealed day, ref)`` stored undated under that day (the partial index: usually empty)."""
        by_day: dict[int, list[str]] = {}
        for day, ref in pairs:
            by_day.setdefault(int(day), []).append(ref)
        db = conn or self.db
        found: set[str] = set()
        for day, refs in by_day.items():
            if db.execute("SELECT 1 FROM record_ids WHERE day = ? AND undated LIMIT 1", (day,)).fetchone() is None:
                continue
            # A join, not "= ANY(array)": whatever plan is chosen, it costs O(refs), never refs x rows.
            found.update(str(r) for (r,) in db.execute(
                "SELECT t.r FROM unnest(?::text[]) AS t(r) WHERE EXISTS "
                "(SELECT 1 FROM record_ids AS i WHERE i.day = ? AND i.undated AND i.record_id = t.r)", (refs, day)))
        return found

    def insert_day(self, day: int, records: Iterable[tuple[object, ...]], index: Sequence[int],
                   ids: Sequence[str]) -> int:
        """Insert the records whose ids this transaction claims; returns how many (another sink had the rest).

        ``index`` holds distinct keys (``bidx << 32 | rid``); ``ids`` are the records' ids, in order.
        The claim is one binary ``COPY`` into the day's ``record_ids`` (in a savepoint): a record
        that is already there (re-delivered, or another sink's) makes it fail as a whole, and
        only then are the ids claimed one by one (``ON CONFLICT DO NOTHING RETURNING``) and the
        rest left out. Index keys go in with binary ``COPY`` too (no conflict is possible: a
        key holds a row id only this batch reserved).
        """
        rows = records if isinstance(records, list) else list(records)
        if not rows:
            return 0
        # The three parents at once, in the order vault.ensure_day (a new day) and vault.drop_day (a
        # purge) lock them: a sink creating a day, or a purge, waits for the batch, never deadlocks
        # with it (the claim below would otherwise hold record_ids while waiting for records).
        self.db.execute(_LOCK_PARENTS)
        try:
            with self.db.conn.transaction(), self.db.conn.cursor() as cur, cur.copy(_COPY_IDS) as copy:
                copy.write(_id_rows(day, rows))
        except self.db.unique_violation:
            claimed = {str(r[0]) for r in self.db.execute(
                "INSERT INTO record_ids (day, record_id, undated) SELECT ?, * FROM unnest(?::text[], ?::boolean[]) "
                "ON CONFLICT DO NOTHING RETURNING record_id",
                (day, [r[1] for r in rows], [bool(r[4]) for r in rows]))}
            rows = [r for r in rows if r[1] in claimed]
            rids = {int(r[0]) for r in rows}  # type: ignore[call-overload]
            index = [k for k in index if k & _RID_MASK in rids]
        if rows:
            with self.db.conn.cursor() as cur, cur.copy(_COPY_RECORDS) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row((day, *row))
            if index:
                with self.db.conn.cursor() as cur, cur.copy(_COPY_INDEX) as copy:
                    copy.write(_key_rows(day, index))
            self.db.execute("INSERT INTO day_counts (day, n) VALUES (?, ?)", (day, len(rows)))
        return len(rows)

    def sealed_time_rows(self, day: int) -> list[tuple[object, ...]]:
        return self.db.execute(f"SELECT {_ROW_COLUMNS} FROM records WHERE day = ? AND sealed_time = 1",
                               (day,)).fetchall()

    def remove_records(self, day: int, rids: Sequence[int], index: Sequence[int], record_ids: Sequence[str]) -> None:
        self.db.execute("DELETE FROM records WHERE day = ? AND rid = ANY(?::bigint[])", (day, list(rids)))
        self.db.execute("DELETE FROM blind_index WHERE day = ? AND k = ANY(?::bigint[])", (day, list(index)))
        gone = self.db.execute("DELETE FROM record_ids WHERE day = ? AND record_id = ANY(?::text[])",
                               (day, list(record_ids))).rowcount
        self.db.execute("INSERT INTO day_counts (day, n) VALUES (?, ?)", (day, -gone))

    # ------------------------------------------------------------------ query

    def find(self, day: int, bidx: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        """Records of ``day`` indexed under ``bidx`` with ``lo_us <= ts < hi_us`` (one partition, one range scan)."""
        return self.db.execute(
            "SELECT r.rid, r.record_id, r.ts, r.parsed, r.sealed_time, r.src, r.part, r.off, r.ct "
            "FROM blind_index AS i JOIN records AS r ON r.day = i.day AND r.rid = (i.k & ?::bigint) "
            "WHERE i.day = ? AND r.day = ? AND i.k BETWEEN ?::bigint AND ?::bigint AND r.ts >= ? AND r.ts < ?",
            (_RID_MASK, day, day, bidx << RID_BITS, ((bidx + 1) << RID_BITS) - 1, lo_us, hi_us)).fetchall()

    def unparsed(self, day: int, lo_us: int, hi_us: int) -> list[tuple[object, ...]]:
        return self.db.execute(f"SELECT {_ROW_COLUMNS} FROM records WHERE day = ? AND parsed = 0 "
                               "AND ts >= ? AND ts < ?", (day, lo_us, hi_us)).fetchall()

    # ------------------------------------------------------------------ purge and status

    def drop_days(self, days: Sequence[int]) -> int:
        """Drop each day's partitions (``vault.drop_day``); returns the records they held."""
        dropped = 0
        with self.transaction() as db:
            for day in days:
                dropped += int(db.execute("SELECT drop_day(?)", (day,)).fetchone()[0])
        return dropped

    def day_counts(self) -> dict[int, int]:
        counts = {day: 0 for day in self.partitions()}
        for day, n in self.db.execute("SELECT day, sum(n) FROM day_counts GROUP BY day"):
            if int(day) in counts:
                counts[int(day)] = int(n)
        return counts

    def unread_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM records WHERE parsed = 0").fetchone()[0])

    def day_rows(self, day: int, after_rid: int, limit: int) -> list[tuple[object, ...]]:
        return [(*r[:8], bytes(r[8])) for r in self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM records WHERE day = ? AND rid > ? ORDER BY rid LIMIT ?",
            (day, after_rid, limit))]

    def day_index(self, day: int) -> list[int]:
        return [int(k) for (k,) in self.db.execute("SELECT k FROM blind_index WHERE day = ? ORDER BY k", (day,))]

    def continue_rids(self, day: int, next_rid: int) -> None:
        """Row ids of ``day`` go on from ``next_rid`` (after records were copied in with their own)."""
        self.db.execute("INSERT INTO day_rids AS r (day, next) VALUES (?, ?) "
                        "ON CONFLICT (day) DO UPDATE SET next = greatest(r.next, excluded.next)", (day, next_rid))

    def continue_identities(self) -> None:
        """Readers registered after a copy get new ids (the copy kept the source's)."""
        self.db.execute("SELECT setval(pg_get_serial_sequence('vault.readers', 'id'), greatest(max(id), 1)) "
                        "FROM readers")


def open_keystore_database(url: str, *, create: bool) -> PostgresDatabase:
    """The keystore's connection (schema ``keystore``), creating the schema when allowed."""
    from pipeline.vault.keystore import KeystoreError
    try:
        db = PostgresDatabase(url, "keystore")
    except DatabaseError as exc:
        raise KeystoreError(str(exc).replace("vault database", "keystore database")) from None
    try:
        _apply_schema(db, "keystore.meta", KEYSTORE_SCHEMA, create=create, what="keystore")
    except StoreError as exc:
        db.close()
        raise KeystoreError(str(exc)) from None
    return db


def read_keystore_anchor(url: str) -> tuple[int, str] | None:
    """The audit anchor from a PostgreSQL keystore (no keyring needed: it is not secret)."""
    try:
        db = PostgresDatabase(url, "keystore")
    except DatabaseError:
        return None
    try:
        if db.execute("SELECT to_regclass('keystore.meta')").fetchone()[0] is None:
            return None
        meta = dict(db.execute("SELECT k, v FROM meta WHERE k IN ('audit_seq', 'audit_hash')").fetchall())
    finally:
        db.close()
    return (int(meta["audit_seq"]), str(meta["audit_hash"])) if len(meta) == 2 else None


def read_audit_rows(url: str) -> list[tuple[int, str]]:
    """All ``(seq, entry text)`` of a PostgreSQL vault's audit log, in order (the auditor role may do this)."""
    from pipeline.vault.audit import AuditError
    try:
        db = PostgresDatabase(url, "vault")
    except DatabaseError as exc:
        raise AuditError(str(exc)) from None
    try:
        return [(int(s), str(e)) for s, e in db.execute("SELECT seq, entry FROM audit ORDER BY seq")]
    except db.error as exc:
        raise AuditError(f"{db.name} has no readable audit table ({first_line(exc)})") from None
    finally:
        db.close()
