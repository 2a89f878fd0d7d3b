"""The vault's batch transform: sealed segments in, day-encrypted and blind-indexed rows out.

For a batch of retention envelopes (many segments, tens of thousands of records):

1. open each segment with the vault's private key (``pipeline.core.envelope.open_segment``);
   a segment sealed for another vault key stops the run (wrong keyring), one that fails to
   open is quarantined still sealed (nothing is dropped, nothing blocks the stream);
2. drop record ids already stored, or repeated in the batch (idempotent ingest);
3. parse the raw records with the pipeline's own parser, take the call start with the
   pipeline's time parser (else the segment's ``sealed_at``), and normalise ``cli``,
   ``dialled``, ``imsi`` and ``imei`` as columns with the pipeline's normalisers — so the
   vault's "same number" is exactly the pipeline's;
4. blind-index them per column (``index``), encrypt each raw record under its day's key
   (``keystore``), and insert each day's rows with ``executemany`` in one transaction.

Records that are not JSON are stored too, unindexed, under the day of ``sealed_at``.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from pipeline.core.actions import parse_times
from pipeline.core.envelope import ENVELOPE_TYPE, EnvelopeError, open_segment
from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.core.parse import parse_batch
from pipeline.keys import VaultKeyring
from pipeline.vault.index import PARTY_FIELDS, TARGET_KINDS, BlindIndexer
from pipeline.vault.keystore import Keystore
from pipeline.vault.store import DAY_US, VaultStore

log = logging.getLogger(__name__)

DLQ_TYPE = "cdr.dlq/1"
#: Fields the vault reads from a raw record (everything else stays inside the ciphertext only).
PARSE_SCHEMA: dict[str, Any] = {name: pl.String for name in ("cli", "dialled", "imsi", "imei", "start")}
#: Records up to this size are parsed for indexing; larger ones are stored, unindexed.
MAX_PARSE_BYTES = 1 << 20
PARTY_NAMES = tuple(dict.fromkeys(name for name, _kind in PARTY_FIELDS))


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its key/value pairs, duplicates kept (what ``object_pairs_hook`` returns)."""


def _lenient_fields(raw: bytes) -> tuple[dict[str, list[str]], str | None] | None:
    """Every value of the party fields and the start of a record the strict parser rejected, or None.

    The pipeline sends a record with a repeated field, a BOM or ``NaN`` to the DLQ because its
    analytics value would be ambiguous; the vault still has to find it for a warrant, so it
    indexes *every* value of a repeated party field. ``start`` takes the last value, as most
    JSON readers do. Records that are not JSON objects at all return None (stored unindexed).
    """
    if len(raw) > MAX_PARSE_BYTES:
        return None
    try:
        doc = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_Pairs)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, _Pairs):
        return None
    values: dict[str, list[str]] = {}
    start = None
    for key, value in doc:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            continue
        if key == "start":
            start = str(value)
        elif key in PARTY_NAMES:
            values.setdefault(key, []).append(str(value))
    return values, start


@dataclass
class Parties:
    """A batch's party identifiers in long form, plus per-record parse state and start text."""

    parsed: pl.Series   # Boolean per record: a JSON object (strictly or leniently)
    start: pl.Series    # String per record: the start as written (null if none)
    values: pl.DataFrame  # row (Int64), field (String), raw (String): one row per party value


def read_parties(raws: Sequence[bytes]) -> Parties:
    """Party values and start times of raw records: the pipeline's parser, then a lenient pass on its rejects."""
    n = len(raws)
    parsed = parse_batch(raws, b"\n".join(raws), PARSE_SCHEMA, max_bytes=MAX_PARSE_BYTES)
    f = parsed.frame.with_columns(pl.col("row").cast(pl.Int64))
    long = [f.select("row", pl.lit(name).alias("field"), pl.col(name).alias("raw")) for name in PARTY_NAMES]
    ok = [False] * n
    for row in f["row"].to_list():
        ok[row] = True
    start: list[str | None] = [None] * n
    for row, text in zip(f["row"].to_list(), f["start"].to_list()):
        start[row] = text
    extra_rows: list[int] = []
    extra_fields: list[str] = []
    extra_values: list[str] = []
    for row in parsed.reject_rows:
        lenient = _lenient_fields(raws[row])
        if lenient is None:
            continue
        ok[row] = True
        fields, start[row] = lenient
        for name, vals in fields.items():
            extra_rows.extend([row] * len(vals))
            extra_fields.extend([name] * len(vals))
            extra_values.extend(vals)
    if extra_rows:
        long.append(pl.DataFrame({"row": extra_rows, "field": extra_fields, "raw": extra_values},
                                 schema={"row": pl.Int64, "field": pl.String, "raw": pl.String}))
    values = pl.concat(long).filter(pl.col("raw").is_not_null())
    return Parties(pl.Series("parsed", ok, dtype=pl.Boolean), pl.Series("start", start, dtype=pl.String), values)


def normalised_parties(parties: Parties, phones: PhoneNormaliser) -> pl.DataFrame:
    """``row, kind, value``: each party value in the pipeline's canonical form (invalid values dropped)."""
    out = []
    for kind in dict.fromkeys(k for _f, k in PARTY_FIELDS):
        names = [f for f, k in PARTY_FIELDS if k == kind]
        part = parties.values.filter(pl.col("field").is_in(names))
        if part.height == 0:
            continue
        canonical, _cls = normalise_column(kind, part["raw"], phones)
        out.append(part.select("row", pl.lit(kind).alias("kind"), canonical.alias("value")))
    if not out:
        return pl.DataFrame(schema={"row": pl.Int64, "kind": pl.String, "value": pl.String})
    return pl.concat(out).filter(pl.col("value").is_not_null())


class WrongVaultKeyError(Exception):
    """A segment was sealed for another vault key: this keyring cannot open it (stop, do not skip)."""


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


class Ingester:
    """Turns batches of envelopes into stored rows; holds the normaliser and index caches across batches."""

    def __init__(self, store: VaultStore, keystore: Keystore, keyring: VaultKeyring) -> None:
        self.store = store
        self.keystore = keystore
        self._private = keyring.private
        self._kid = keyring.vault_kid
        self._indexer = BlindIndexer(keyring.index_key)
        self._phones = PhoneNormaliser(store.region)

    def __repr__(self) -> str:
        return f"Ingester(store={self.store!r}, vault_kid={self._kid!r})"

    def _open(self, envelope: bytes | dict[str, Any], totals: IngestTotals, cols: dict[str, list[Any]]) -> None:
        """Open one envelope (or a DLQ record's payload) into the column lists, or quarantine it."""
        try:
            header = orjson.loads(envelope) if isinstance(envelope, (bytes, bytearray, memoryview, str)) \
                else dict(envelope)
        except orjson.JSONDecodeError:
            header = None
        if isinstance(header, dict) and header.get("type") == DLQ_TYPE:
            header = header.get("payload")
        if not isinstance(header, dict) or header.get("type") != ENVELOPE_TYPE:
            self._quarantine(None, "not a cdr.retention/1 envelope", envelope, totals)
            return
        if header.get("vault_kid") != self._kid:
            raise WrongVaultKeyError(f"segment {header.get('segment_id')!r} is sealed for vault key "
                                     f"{header.get('vault_kid')!r}, this keyring holds {self._kid!r}: run the vault "
                                     "with the vault keyring whose public key the workers use")
        segment_id = str(header.get("segment_id"))
        raw_header = orjson.dumps(header)
        try:
            sealed = _sealed_us(header.get("sealed_at"))
            opened = open_segment(header, self._private, self._kid)
        except EnvelopeError as exc:
            self._quarantine(segment_id, str(exc), raw_header, totals)
            return
        totals.segments += 1
        n = len(opened)
        cols["record_id"].extend(r.record_id for r in opened)
        cols["raw"].extend(r.raw for r in opened)
        cols["src"].extend(r.source_name for r in opened)
        cols["part"].extend(r.partition for r in opened)
        cols["off"].extend(r.offset for r in opened)
        cols["sealed"].extend([sealed] * n)

    def _quarantine(self, segment_id: str | None, reason: str, envelope: Any, totals: IngestTotals) -> None:
        body = envelope if isinstance(envelope, bytes) else orjson.dumps(envelope)
        log.error("segment %s could not be opened and was quarantined: %s", segment_id or "(unknown)", reason)
        self.store.quarantine(segment_id, reason, body)
        totals.quarantined += 1

    def ingest(self, envelopes: Sequence[bytes | dict[str, Any]]) -> IngestTotals:
        """Store every new record of ``envelopes`` in one transaction; returns what happened."""
        totals = IngestTotals()
        cols: dict[str, list[Any]] = {k: [] for k in ("record_id", "raw", "src", "part", "off", "sealed")}
        with self.store.transaction():
            for envelope in envelopes:
                self._open(envelope, totals, cols)
            totals.records = len(cols["record_id"])
            if totals.records:
                self._store(cols, totals)
        return totals

    def _store(self, cols: dict[str, list[Any]], totals: IngestTotals) -> None:
        """Dedupe, parse, index, encrypt and insert the opened records (inside the caller's transaction)."""
        batch = pl.DataFrame({"record_id": cols["record_id"], "sealed": cols["sealed"]},
                             schema={"record_id": pl.String, "sealed": pl.Int64}).with_row_index("i")
        first = batch.unique("record_id", keep="first", maintain_order=True)
        known = self.store.known_ids(first["record_id"].to_list())
        if known:
            first = first.filter(~pl.col("record_id").is_in(list(known)))
        totals.duplicates = totals.records - first.height
        if first.height == 0:
            return
        take = first["i"].to_list()
        raws_all = cols["raw"]
        raws = [raws_all[i] for i in take]

        parties = read_parties(raws)
        start_us = parse_times(parties.start).dt.epoch("us")
        rows = first.select("record_id", "sealed").with_columns(
            parties.parsed.alias("parsed"), start_us.alias("start")).with_row_index("row").with_columns(
            pl.col("row").cast(pl.Int64), pl.coalesce("start", "sealed").alias("ts")).with_columns(
            (pl.col("ts") // DAY_US).alias("day"), pl.col("start").is_null().alias("sealed_time"))
        totals.unparsed = int((~rows["parsed"]).sum())

        # Blind index entries (row, day, ts, bidx) of every normalised party identifier, as columns.
        values = normalised_parties(parties, self._phones).join(rows.select("row", "day", "ts"), on="row")
        index = pl.concat([
            values.filter(pl.col("kind") == kind).select(
                "row", "day", "ts", self._indexer.column(kind, pl.col("day"), pl.col("value")).alias("bidx"))
            for kind in TARGET_KINDS]).unique(["row", "bidx"])

        ids_col, ts_col = rows["record_id"].to_list(), rows["ts"].to_list()
        parsed_col = rows["parsed"].cast(pl.Int8).to_list()
        sealed_col = rows["sealed_time"].cast(pl.Int8).to_list()
        src, part, off = cols["src"], cols["part"], cols["off"]
        for (day,), group in rows.select("row", "day").partition_by("day", as_dict=True, maintain_order=True).items():
            day = int(day)
            members = group["row"].to_list()
            cipher = self.keystore.cipher_for_write(day)
            if cipher is None:  # the day was purged: the legal period is over, do not bring it back
                totals.expired += len(members)
                continue
            next_rid = self.store.ensure_partition(day, cipher.kid)
            rids = range(next_rid, next_rid + len(members))
            record_ids = [ids_col[r] for r in members]
            cts = cipher.seal_many(record_ids, [raws[r] for r in members])
            records = [(rid, ids_col[r], ts_col[r], parsed_col[r], sealed_col[r], src[take[r]], part[take[r]],
                        off[take[r]], ct) for rid, r, ct in zip(rids, members, cts)]
            rid_map = pl.DataFrame({"row": members, "rid": list(rids)}, schema={"row": pl.Int64, "rid": pl.Int64})
            day_index = index.filter(pl.col("day") == day).join(rid_map, on="row").sort("bidx", "ts", "rid")
            idx_rows = day_index.select("bidx", "ts", "rid").iter_rows()
            self.store.insert_day(day, records, idx_rows, zip(record_ids, [day] * len(record_ids)))
            totals.stored += len(members)
            totals.days.add(day)
