"""The vault's batch transform: sealed segments in, day-encrypted and blind-indexed rows out.

For a batch of retention envelopes (many segments, tens of thousands of records),
:meth:`Ingester.prepare` does all the CPU work without writing to the database:

1. open each segment with the vault's private key (``pipeline.core.envelope.open_segment_columns``);
   a segment sealed for another vault key stops the run (wrong keyring), one that fails to
   open is quarantined still sealed (nothing is dropped, nothing blocks the stream);
2. drop record ids already stored, in the batch being written, or repeated in this batch
   (idempotent ingest);
3. read the raw records with the pipeline's own adapter for their input format (``readers``:
   ``--format``/``--mapping``, else sniffed), take the call start with the pipeline's time
   parser (else the segment's ``sealed_at``), and normalise ``cli``, ``dialled``, ``imsi`` and
   ``imei`` as columns with the pipeline's normalisers — so the vault's "same number" is
   exactly the pipeline's, whatever format the record arrived in;
   a record whose call start is already past retention is not stored (``expired``);
4. blind-index them per column (``index``) and encrypt each raw record under its day's key.

:meth:`Ingester.write` then inserts the prepared rows with ``executemany`` in one
transaction. The two halves can overlap (``sink.BatchPipeline``): SQLite releases the GIL
while it steps (and psycopg while it waits on the server), so one core writes batch *k* while
the other prepares batch *k+1*.

Records no reader can read are stored too, unindexed, under the day of ``sealed_at``
(``vault reindex`` reads them again later, with the right ``--format``).
"""
from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from pipeline.core.times import parse_times
from pipeline._native import tokens as native_tokens
from pipeline.core.envelope import ENVELOPE_TYPE, LEGACY_ENVELOPE_TYPE, EnvelopeError, open_segment_columns
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, derive_subkey
from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.keys import VaultKeyring
from pipeline.vault.index import PARTY_FIELDS, RID_BITS, TARGET_KINDS, BlindIndexer
from pipeline.vault.keystore import DayCipher, Keystore, day_number
from pipeline.vault.readers import SNIFFED, UNREAD, Reader, read_parties
from pipeline.vault.retention import DEFAULT_RETENTION, retention_cutoff, utc_today
from pipeline.vault.store import DAY_US, RecordStore

log = logging.getLogger(__name__)

#: DLQ records whose sealed payload the vault takes (a replayed reject); /1 from before record refs.
DLQ_TYPES = ("cdr.dlq/2", "cdr.dlq/1")


class WrongVaultKeyError(Exception):
    """A segment was sealed for another vault key: this keyring cannot open it (stop, do not skip)."""


# --------------------------------------------------------------------------- the batch transform

@dataclass
class IngestTotals:
    """What a batch (or a run) did; the counts reconcile: records = stored + duplicates + expired."""

    segments: int = 0
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    expired: int = 0
    unparsed: int = 0
    quarantined: int = 0
    days: set[int] = field(default_factory=set)

    def add(self, other: "IngestTotals") -> None:
        for name in ("segments", "records", "stored", "duplicates", "expired", "unparsed", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.days |= other.days

    def summary(self) -> dict[str, int]:
        return {"segments": self.segments, "records": self.records, "stored": self.stored,
                "duplicates": self.duplicates, "expired": self.expired, "unparsed": self.unparsed,
                "quarantined": self.quarantined, "days": len(self.days)}


@dataclass
class DayRows:
    """One day's rows, ready to insert (record ids assigned, ciphertexts made).

    The records are kept as columns (``RECORD_COLUMNS`` order): :meth:`iter_records` zips them
    into rows only as the writer binds them, so no list of a tuple per record is built.
    """

    day: int
    kid: str
    columns: tuple[list[Any], ...]
    index: list[int]
    ids: list[str]

    @property
    def records(self) -> list[tuple[Any, ...]]:
        """The rows as tuples (``RECORD_COLUMNS`` order)."""
        return list(self.iter_records())

    def iter_records(self) -> Iterator[tuple[Any, ...]]:
        return zip(*self.columns)


@dataclass
class PreparedBatch:
    """A batch after :meth:`Ingester.prepare`: everything :meth:`Ingester.write` inserts."""

    days: list[DayRows]
    quarantine: list[tuple[str | None, str, bytes]]
    totals: IngestTotals
    record_ids: frozenset[str]


def _sealed_us(text: Any) -> int:
    """``sealed_at`` of a segment in µs since the epoch (the time of records without one of their own)."""
    try:
        when = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise EnvelopeError("segment header has no valid sealed_at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    delta = when - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def legacy_ref_maker(keyring: VaultKeyring) -> Callable[[list[str]], list[str]] | None:
    """The refs of record ids, as the workers make them (default token length), or None without the key.

    A record sealed in a ``cdr.retention/1`` envelope (its id in clear) and sealed again after the
    upgrade (its ref) is then one record to the dedupe, not two. A pipeline run with another
    ``--token-bits`` makes refs of another length, which this cannot know; such v1 data keeps its ids.
    """
    if keyring.record_key is None:
        return None
    hex_key = derive_subkey(keyring.record_key, "record").hex()
    prefix = keyring.record_key.kid + ":"
    return lambda ids: native_tokens(hex_key, prefix, DEFAULT_TOKEN_BITS // 4, list(ids))


class Ingester:
    """Prepares and writes batches for one store; holds the normaliser, index and rid counters across batches."""

    def __init__(self, store: RecordStore, keystore: Keystore, keyring: VaultKeyring, *,
                 reader: Reader | None = None, retention: str = DEFAULT_RETENTION,
                 today: Callable[[], _dt.date] = utc_today) -> None:
        self.store = store
        self.keystore = keystore
        #: The ``--format`` reader (None: sniff each record); every reader a batch may use has an id.
        self.reader = reader
        self._reader_ids = {r: store.reader_id(r) for r in ([reader] if reader else []) + list(SNIFFED)}
        self.retention = retention
        self._today = today
        self._private = keyring.private
        self._kid = keyring.vault_kid
        self._indexer = BlindIndexer(keyring.index_key)
        #: Turns a v1 envelope's clear record ids into the refs v2 envelopes carry, when the vault
        #: keyring holds the workers' record-ref key (None: v1 ids are stored as they are).
        self._legacy_refs = legacy_ref_maker(keyring)
        self._phones = PhoneNormaliser(store.region)
        store.lock_writer()
        self._reader = store.reader()
        #: Record ids of the batch being written (so the next batch's dedupe sees them before they commit).
        self.pending_ids: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Ingester(store={self.store!r}, vault_kid={self._kid!r})"

    @property
    def phones(self) -> PhoneNormaliser:
        """The vault's normaliser (its region), shared with ``reindex``."""
        return self._phones

    def close(self) -> None:
        self._reader.close()

    def _parsed_ids(self, readers: Sequence[Reader | None]) -> list[int]:
        """The ``parsed`` value (reader id) of each record, looked up once per distinct reader object."""
        distinct = dict(zip(map(id, readers), readers))
        if len(distinct) == 1:
            (reader,) = distinct.values()
            return [UNREAD if reader is None else self._reader_ids[reader]] * len(readers)
        ids = {key: UNREAD if reader is None else self._reader_ids[reader] for key, reader in distinct.items()}
        return list(map(ids.__getitem__, map(id, readers)))

    def cutoff_day(self) -> int:
        """The first day still within retention today (re-read per batch: a sink runs for days)."""
        return day_number(retention_cutoff(self._today(), self.retention))

    def ingest(self, envelopes: Sequence[bytes | dict[str, Any]]) -> IngestTotals:
        """Prepare and write one batch (one transaction); returns what happened."""
        return self.write(self.prepare(envelopes))

    # ------------------------------------------------------------------ prepare (CPU, no writes)

    def prepare(self, envelopes: Sequence[bytes | dict[str, Any]]) -> PreparedBatch:
        """Open, dedupe, parse, index and encrypt a batch; nothing is written to the database."""
        totals = IngestTotals()
        quarantine: list[tuple[str | None, str, bytes]] = []
        cols: dict[str, list[Any]] = {k: [] for k in ("record_id", "raw", "src", "part", "off", "sealed")}
        for envelope in envelopes:
            self._open(envelope, totals, cols, quarantine)
        totals.records = len(cols["record_id"])
        days = self._rows(cols, totals) if totals.records else []
        ids = frozenset().union(*(d.ids for d in days))
        return PreparedBatch(days, quarantine, totals, ids)

    def _open(self, envelope: bytes | dict[str, Any], totals: IngestTotals, cols: dict[str, list[Any]],
              quarantine: list[tuple[str | None, str, bytes]]) -> None:
        """Open one envelope (or a DLQ record's payload) into the column lists, or quarantine it."""
        try:
            header = orjson.loads(envelope) if isinstance(envelope, (bytes, bytearray, memoryview, str)) \
                else dict(envelope)
        except orjson.JSONDecodeError:
            header = None
        if isinstance(header, dict) and header.get("type") in DLQ_TYPES:
            header = header.get("payload")
        if not isinstance(header, dict) or header.get("type") not in (ENVELOPE_TYPE, LEGACY_ENVELOPE_TYPE):
            body = bytes(envelope) if isinstance(envelope, (bytes, bytearray, memoryview)) else orjson.dumps(envelope)
            self._quarantine(None, f"not a {ENVELOPE_TYPE} (or /1) envelope", body, totals, quarantine)
            return
        if header.get("vault_kid") != self._kid:
            raise WrongVaultKeyError(f"segment {header.get('segment_id')!r} is sealed for vault key "
                                     f"{header.get('vault_kid')!r}, this keyring holds {self._kid!r}: run the vault "
                                     "with the vault keyring whose public key the workers use")
        segment_id = str(header.get("segment_id"))
        try:
            sealed = _sealed_us(header.get("sealed_at"))
            opened = open_segment_columns(header, self._private, self._kid)
        except EnvelopeError as exc:
            self._quarantine(segment_id, str(exc), orjson.dumps(header), totals, quarantine)
            return
        totals.segments += 1
        n = len(opened.raws)
        refs = opened.record_refs
        if header.get("type") == LEGACY_ENVELOPE_TYPE and self._legacy_refs is not None:
            refs = self._legacy_refs(refs)
        cols["record_id"].extend(refs)
        cols["raw"].extend(opened.raws)
        cols["src"].extend([opened.source_name] * n)
        cols["part"].extend(opened.partitions)
        cols["off"].extend(opened.offsets)
        cols["sealed"].extend([sealed] * n)

    def _quarantine(self, segment_id: str | None, reason: str, body: bytes, totals: IngestTotals,
                    quarantine: list[tuple[str | None, str, bytes]]) -> None:
        log.error("segment %s could not be opened and will be quarantined: %s", segment_id or "(unknown)", reason)
        quarantine.append((segment_id, reason, body))
        totals.quarantined += 1

    def _rows(self, cols: dict[str, list[Any]], totals: IngestTotals, *, dedupe: bool = True) -> list[DayRows]:
        """Dedupe, parse, index and encrypt the opened records into per-day rows.

        ``dedupe=False`` is for ``vault reindex``: the records are stored already and are being
        filed again (their old rows go in the same transaction as the new ones are written).
        """
        batch = pl.DataFrame({"record_id": cols["record_id"], "sealed": cols["sealed"]},
                             schema={"record_id": pl.String, "sealed": pl.Int64}).with_row_index("i")
        first = batch.unique("record_id", keep="first", maintain_order=True)
        candidates = first["record_id"].to_list()
        known = self.store.known_ids(candidates, conn=self._reader) if dedupe else set()
        known.update(self.pending_ids.intersection(candidates) if dedupe else ())
        if known:
            first = first.filter(~pl.col("record_id").is_in(list(known)))
        totals.duplicates = totals.records - first.height
        if first.height == 0:
            return []
        take = first["i"].to_list()
        raws = cols["raw"] if first.height == totals.records else list(map(cols["raw"].__getitem__, take))

        parties = read_parties(raws, self.reader)
        read_by = pl.Series("parsed", self._parsed_ids(parties.readers), dtype=pl.Int64)
        rows = first.select("record_id", "sealed").with_columns(
            read_by, parse_times(parties.start).dt.epoch("us").alias("start")) \
            .with_row_index("row").with_columns(
            pl.col("row").cast(pl.Int64), pl.coalesce("start", "sealed").alias("ts")).with_columns(
            (pl.col("ts") // DAY_US).alias("day"), pl.col("start").is_null().alias("sealed_time"))
        totals.unparsed = int((rows["parsed"] == UNREAD).sum())

        # Records past retention (by call start) or of a purged day are not stored: the legal
        # period is over. Day keys are asked for only for days within it (never created for old ones).
        cutoff = self.cutoff_day()
        days = [int(d) for d in rows["day"].unique().to_list()]
        ciphers: dict[int, DayCipher | None] = dict.fromkeys(days)
        ciphers.update(self.keystore.ciphers_for_write([d for d in days if d >= cutoff]))
        expired = [d for d, c in ciphers.items() if c is None]
        if expired:
            totals.expired = int(rows["day"].is_in(expired).sum())
            rows = rows.filter(~pl.col("day").is_in(expired))
            if rows.height == 0:
                return []
        if dedupe:
            # A record filed under its segment's day before it could be read, re-sent and read now,
            # is the stored one (where the store could not see it in known_ids).
            moved = rows.filter(~pl.col("sealed_time") & (pl.col("day") != pl.col("sealed") // DAY_US))
            undated = self.store.undated_ids(
                zip((moved["sealed"] // DAY_US).to_list(), moved["record_id"].to_list()), conn=self._reader) \
                if moved.height else set()
            if undated:
                totals.duplicates += len(undated)
                rows = rows.filter(~pl.col("record_id").is_in(list(undated)))
                if rows.height == 0:
                    return []
        # Row ids: each day continues its own sequence (reserved from the store, so concurrent
        # sinks never share one); rows sorted by day so each day is one slice.
        rows = rows.sort("day", maintain_order=True)
        counts = rows.group_by("day", maintain_order=True).len()
        firsts = {day: self.store.reserve_rids(day, n, conn=self._reader) for day, n in counts.iter_rows()}
        rows = rows.with_columns(
            (pl.col("day").replace_strict(firsts, return_dtype=pl.Int64)
             + pl.int_range(pl.len(), dtype=pl.Int64).over("day")).alias("rid"))

        # Blind index keys (bidx << 32 | rid) of every normalised party identifier, per day, as columns.
        # Day and rid are gathered by row number (no join); repeats (a self-call) are dropped per day below.
        m = len(raws)
        day_of = pl.Series([None] * m, dtype=pl.Int64).scatter(rows["row"], rows["day"])
        rid_of = pl.Series([None] * m, dtype=pl.Int64).scatter(rows["row"], rows["rid"])
        keys = []
        for kind in TARGET_KINDS:
            part = parties.values.filter(pl.col("field").is_in([f for f, k in PARTY_FIELDS if k == kind]))
            if part.height == 0:
                continue
            canonical, _cls = normalise_column(kind, part["raw"], self._phones)
            at = part["row"]
            keys.append(pl.DataFrame({"day": day_of.gather(at), "rid": rid_of.gather(at), "v": canonical})
                        .drop_nulls().select("day", (self._indexer.column(kind, pl.col("day"), pl.col("v"))
                                                     * (1 << RID_BITS) + pl.col("rid")).alias("k")))
        # Each day's keys, distinct (a self-call indexes one number twice) and ascending (the order its
        # B-tree takes them best): one single-column sort per day.
        day_keys = {int(day): part["k"].unique().sort().to_list() for (day,), part in
                    pl.concat(keys).partition_by("day", as_dict=True, include_key=False).items()} if keys else {}

        order = rows["row"].to_list()
        ids_col, ts_col, rid_col = rows["record_id"].to_list(), rows["ts"].to_list(), rows["rid"].to_list()
        parsed_col = rows["parsed"].to_list()
        sealed_col = rows["sealed_time"].cast(pl.Int8).to_list()
        raw_col = list(map(raws.__getitem__, order))
        at = list(map(take.__getitem__, order))  # each stored row's place in the opened batch
        src = list(map(cols["src"].__getitem__, at))
        part = list(map(cols["part"].__getitem__, at))
        off = list(map(cols["off"].__getitem__, at))
        out = []
        lo = 0
        for day, n in counts.iter_rows():
            hi = lo + n
            cipher = ciphers[day]
            assert cipher is not None
            record_ids = ids_col[lo:hi]
            cts = cipher.seal_many(record_ids, raw_col[lo:hi])
            columns = (rid_col[lo:hi], record_ids, ts_col[lo:hi], parsed_col[lo:hi], sealed_col[lo:hi],
                       src[lo:hi], part[lo:hi], off[lo:hi], cts)
            out.append(DayRows(day, cipher.kid, columns, day_keys.get(day, []), record_ids))
            totals.stored += n
            totals.days.add(day)
            lo = hi
        return out

    # ------------------------------------------------------------------ write (one transaction)

    def write(self, prepared: PreparedBatch) -> IngestTotals:
        """Insert a prepared batch in one transaction (safe to run on a writer thread).

        A record another sink stored since :meth:`prepare` looked (PostgreSQL, several sinks in
        one group after a rebalance) is not stored twice: the store skips it, and it is counted
        as a duplicate, so the totals still reconcile.
        """
        totals = prepared.totals
        self.store.prepare_days([(rows.day, rows.kid) for rows in prepared.days])
        with self.store.transaction():
            for segment_id, reason, body in prepared.quarantine:
                self.store.quarantine(segment_id, reason, body)
            for rows in prepared.days:
                self.store.ensure_partition(rows.day, rows.kid)
                raced = len(rows.ids) - self.store.insert_day(rows.day, rows.iter_records(), rows.index, rows.ids)
                totals.stored -= raced
                totals.duplicates += raced
        return totals
