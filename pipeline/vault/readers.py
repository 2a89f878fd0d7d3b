"""Which input format a stored record is read with, and reading its parties and call start.

The retention envelope carries each record's raw bytes exactly as received (they are the
evidence) but not the format they are in, so the vault has to know how to read them to index
them. It reads them with the pipeline's own adapters (``pipeline.formats``), so the vault's
idea of "the cli of this Asterisk row" is exactly the pipeline's:

* ``--format NAME [--mapping FILE]`` on ``vault ingest``, ``vault sink`` and ``vault reindex``
  names the adapter (the same flags as ``cdrpipe process`` and ``cdrpipe run``); records it
  cannot read fall back to the sniffer below.
* Without ``--format`` each record is *recognised* only when it is unmistakable: a JSON object
  with ``variables`` or ``callflow`` is FreeSWITCH ``json_cdr``, another JSON object is raw v1
  JSONL, a ``|`` row starting with a SIP method is Kamailio/OpenSIPS ``acc``, and an 18-column
  row with a date-time ``start`` and a known ``disposition`` is Asterisk ``cdr_csv``. Anything
  else (mapped CSV above all, which has no default layout) stays unread until ``vault reindex
  --format csv --mapping FILE`` reads it.

Each stored record remembers the reader it was indexed with (``parsed`` = a row of the
``readers`` table; 0 = nothing could read it, 1 = JSONL, as ``parsed = 1`` always meant), so the
query's exact re-check reads it the same way, whatever flags a later run uses.

Rows an adapter rejects are still read leniently for the vault: a JSON record with a repeated
field is indexed under every value, and a delimited row the adapter will not make a call of
(an acc ACK or BYE, an Asterisk row with a bad duration) is read through its layout's columns,
because a warrant must find every row in which the target is a party.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.formats import FORMAT_NAMES, MappingError, MappingSpec, get_format, parse_records
from pipeline.formats import acc, asterisk
from pipeline.formats.csv_mapped import parse_delimited, resolve, spec_from_toml
from pipeline.vault.index import PARTY_FIELDS, TARGET_KINDS

#: The fields the vault reads from a raw record (everything else stays inside the ciphertext only).
READ_SCHEMA: dict[str, Any] = {name: pl.String for name in ("cli", "dialled", "imsi", "imei", "start")}
#: Records up to this size are read for indexing; larger ones are stored, unindexed.
MAX_PARSE_BYTES = 1 << 20
PARTY_NAMES = tuple(dict.fromkeys(name for name, _kind in PARTY_FIELDS))
#: ``parsed`` of a record no reader could read, and of one read as JSONL (fixed since the first vault).
UNREAD, JSONL_ID = 0, 1
#: Delimited formats and their default layouts (for the lenient pass over their rejects).
_DELIMITED: dict[str, MappingSpec | None] = {"asterisk-csv": asterisk.DEFAULT, "acc": acc.DEFAULT, "csv": None}
_ASTERISK_START = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
_ASTERISK_DISPOSITIONS = frozenset({"ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION", "UNKNOWN"})
_SIP_METHODS = frozenset({b"INVITE", b"ACK", b"BYE", b"CANCEL", b"REGISTER", b"OPTIONS", b"MESSAGE", b"INFO",
                          b"PRACK", b"UPDATE", b"REFER", b"SUBSCRIBE", b"NOTIFY", b"PUBLISH"})


@dataclass(frozen=True)
class Reader:
    """An input format and the text of its mapping file ('' = the format's default layout)."""

    format: str
    mapping: str = ""

    def __post_init__(self) -> None:
        get_format(self.format)  # a clear error naming the known formats

    def options(self) -> dict[str, Any]:
        """Adapter options: the mapping, parsed once per call (``compile_layout`` caches the layout)."""
        return {"mapping": spec_from_toml(self.mapping, "mapping")} if self.mapping else {}

    def label(self) -> str:
        return self.format + (" (mapped)" if self.mapping else "")


#: What the sniffer can tell apart without a mapping.
JSONL, FREESWITCH, ACC, ASTERISK = Reader("jsonl"), Reader("freeswitch-json"), Reader("acc"), Reader("asterisk-csv")
SNIFFED = (JSONL, FREESWITCH, ACC, ASTERISK)


def reader_from_flags(fmt: str | None, mapping_path: str | None) -> Reader | None:
    """The reader ``--format``/``--mapping`` name (None: sniff every record); MappingError/ValueError if invalid."""
    if not fmt or fmt == "auto":
        if mapping_path:
            raise MappingError("--mapping needs --format (csv, asterisk-csv, acc or freeswitch-json)")
        return None
    text = ""
    if mapping_path:
        try:
            with open(mapping_path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise MappingError(f"cannot read mapping {mapping_path}: {exc.strerror}") from None
    reader = Reader(fmt, text)
    if fmt == "csv" and not text:
        raise MappingError("--format csv needs --mapping FILE (which column is cli, dialled, start, duration)")
    if text:
        if fmt not in FORMAT_NAMES:
            raise MappingError(f"format {fmt} takes no --mapping")
        spec = spec_from_toml(text, "mapping")
        if fmt in _DELIMITED:
            resolve(_DELIMITED[fmt], spec)  # checks the layout now, not per batch
    return reader


def sniff(raw: bytes) -> Reader | None:
    """The reader a record's bytes unmistakably look like, or None (then it stays unread until reindexed).

    A wrong guess would index wrong parties and date the record wrongly (an Asterisk ``start``
    column read from another CSV layout may say 1970, and ingest would drop the record as
    expired), so CSV is recognised only by its fingerprint: a SIP method and ``|`` for acc, and
    for Asterisk 18 columns with a date-time ``start`` and a known ``disposition``.
    """
    head = raw[:256].lstrip(b" \t\r\n")
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip(b" \t")
    if head.startswith(b"{"):
        # A raw v1 record always names "cli"; a json_cdr document never does at its top level.
        json_cdr = (b'"variables"' in raw or b'"callflow"' in raw) and b'"cli"' not in raw
        return FREESWITCH if json_cdr else JSONL
    bar = head.find(b"|")
    if bar > 0 and head[:bar].strip().upper() in _SIP_METHODS:
        return ACC
    if b"," in head and len(raw) <= MAX_PARSE_BYTES:
        try:
            cells = next(csv.reader([raw.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error):
            return None
        if (len(cells) in (18, 19) and _ASTERISK_START.match(cells[9].strip())
                and cells[14].strip().upper() in _ASTERISK_DISPOSITIONS):
            return ASTERISK
    return None


# --------------------------------------------------------------------------- reading a batch

class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its key/value pairs, duplicates kept (what ``object_pairs_hook`` returns)."""


def _lenient_json(raw: bytes) -> tuple[dict[str, list[str]], str | None] | None:
    """Every value of the party fields and the start of a JSON record the strict parser rejected, or None.

    The pipeline sends a record with a repeated field, a BOM or ``NaN`` to the DLQ because its
    analytics value would be ambiguous; the vault still has to find it for a warrant, so it
    indexes *every* value of a repeated party field. ``start`` takes the last value, as most
    JSON readers do. Records that are not JSON objects at all return None.
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
    """A batch's party identifiers in long form, plus per-record reader and start text."""

    readers: list[Reader | None]  # per record: the reader that read it (None: none could)
    start: pl.Series              # String per record: the start as the adapter gives it (null if none)
    values: pl.DataFrame          # row (Int64), field (String), raw (String): one row per party value


_VALUES_SCHEMA = {"row": pl.Int64, "field": pl.String, "raw": pl.String}


def _frame_values(frame: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    """Long party values of an adapter's frame, its ``row`` mapped back to batch positions."""
    at = pl.Series(rows, dtype=pl.Int64)
    f = frame.with_columns(at.gather(frame["row"].cast(pl.Int64)).alias("row"))
    return pl.concat([f.select("row", pl.lit(name).alias("field"), pl.col(name).cast(pl.String).alias("raw"))
                      for name in PARTY_NAMES])


def _read_group(reader: Reader, raws: Sequence[bytes], rows: list[int]) -> tuple[list[int], list[Any], list[pl.DataFrame]]:
    """Batch rows read by ``reader`` (strictly, then leniently), their start texts and long party values."""
    options = reader.options()
    parsed = parse_records(reader.format, raws, b"\n".join(raws), READ_SCHEMA, max_bytes=MAX_PARSE_BYTES, **options)
    frame = parsed.frame
    done = [rows[int(r)] for r in frame["row"].to_list()]
    starts: list[Any] = frame["start"].to_list()
    values = [_frame_values(frame, rows)] if frame.height else []
    rejects = sorted(set(parsed.reject_rows))
    if not rejects:
        return done, starts, values
    if reader.format == "jsonl":
        extra: dict[str, list[Any]] = {"row": [], "field": [], "raw": []}
        for r in rejects:
            lenient = _lenient_json(raws[r])
            if lenient is None:
                continue
            fields, start = lenient
            done.append(rows[r])
            starts.append(start)
            for name, vals in fields.items():
                extra["row"].extend([rows[r]] * len(vals))
                extra["field"].extend([name] * len(vals))
                extra["raw"].extend(vals)
        if extra["row"]:
            values.append(pl.DataFrame(extra, schema=_VALUES_SCHEMA))
    elif reader.format in _DELIMITED:
        # The layout's columns of every row that splits into them (ACK/BYE rows, rows with a bad field).
        again = [raws[r] for r in rejects]
        layout = resolve(_DELIMITED[reader.format], options.get("mapping"))
        loose = parse_delimited(again, b"\n".join(again), READ_SCHEMA, layout, MAX_PARSE_BYTES).frame
        if loose.height:
            back = [rows[rejects[int(i)]] for i in loose["row"].to_list()]
            done.extend(back)
            starts.extend(loose["start"].to_list())
            values.append(_frame_values(loose.with_columns(pl.Series("row", range(loose.height), dtype=pl.UInt32)),
                                        back))
    return done, starts, values


def _read(raws: Sequence[bytes], groups: dict[Reader, list[int]], fallback: bool) -> Parties:
    n = len(raws)
    got: list[Reader | None] = [None] * n
    start: list[Any] = [None] * n
    values: list[pl.DataFrame] = []
    while groups:
        again: dict[Reader, list[int]] = {}
        for reader, rows in groups.items():
            done, starts, vals = _read_group(reader, [raws[i] for i in rows] if len(rows) < n else raws, rows)
            if len(done) == n and done == rows:  # the whole batch, read by one reader, in batch order
                got, start = [reader] * n, starts
            else:
                for i, s in zip(done, starts):
                    got[i], start[i] = reader, s
            values.extend(vals)
            if fallback:
                for i in sorted(set(rows) - set(done)):
                    guess = sniff(raws[i])
                    if guess is not None and guess != reader:
                        again.setdefault(guess, []).append(i)
        groups, fallback = again, False
    frame = pl.concat(values) if values else pl.DataFrame(schema=_VALUES_SCHEMA)
    return Parties(got, pl.Series("start", start, dtype=pl.String), frame.filter(pl.col("raw").is_not_null()))


def sniff_many(raws: Sequence[bytes]) -> list[Reader | None]:
    """:func:`sniff` of every record. A record that starts with ``{`` and names ``"cli"`` (a raw v1
    record: nearly every one) is told by one vectorised test over the batch; only the others go
    through :func:`sniff`."""
    if not raws:
        return []
    column = pl.Series(raws, dtype=pl.Binary)
    raw_v1 = column.bin.starts_with(b"{") & column.bin.contains(b'"cli"')
    if raw_v1.all():
        return [JSONL] * len(raws)
    return [JSONL if quick else sniff(raw) for quick, raw in zip(raw_v1.to_list(), raws)]


def _groups(readers: Sequence[Reader | None]) -> dict[Reader, list[int]]:
    """Row numbers per reader, readers in order of first appearance (grouped by identity: a
    batch has a handful of distinct reader objects, and a dataclass hash per record costs)."""
    first = dict(zip(map(id, readers), readers))
    if len(first) == 1:
        (reader,) = first.values()
        return {} if reader is None else {reader: list(range(len(readers)))}
    groups: dict[Reader, list[int]] = {}
    for reader in first.values():
        if reader is None:
            continue
        rows = [i for i, r in enumerate(readers) if r is reader]
        if reader in groups:  # an equal reader object seen before: one group, rows in batch order
            groups[reader] = sorted(groups[reader] + rows)
        else:
            groups[reader] = rows
    return groups


def read_parties(raws: Sequence[bytes], named: Reader | None = None) -> Parties:
    """Parties and start of records as they arrive: with the ``--format`` reader, else (and for its leftovers) sniffed."""
    if named is not None:
        groups = {named: list(range(len(raws)))} if raws else {}
    else:
        groups = _groups(sniff_many(raws))
    return _read(raws, groups, fallback=named is not None)


def read_parties_as(raws: Sequence[bytes], readers: Sequence[Reader | None]) -> Parties:
    """Parties of stored records, each read with the reader it was indexed with (None: not read)."""
    return _read(raws, _groups(readers), fallback=False)


def normalised_parties(parties: Parties, phones: PhoneNormaliser) -> pl.DataFrame:
    """``row, kind, value``: each party value in the pipeline's canonical form (invalid values dropped)."""
    out = []
    for kind in TARGET_KINDS:
        names = [f for f, k in PARTY_FIELDS if k == kind]
        part = parties.values.filter(pl.col("field").is_in(names))
        if part.height == 0:
            continue
        canonical, _cls = normalise_column(kind, part["raw"], phones)
        out.append(part.select("row", pl.lit(kind).alias("kind"), canonical.alias("value")))
    if not out:
        return pl.DataFrame(schema={"row": pl.Int64, "kind": pl.String, "value": pl.String})
    return pl.concat(out).filter(pl.col("value").is_not_null())


#: The raw v1 fields an ETSI delivery shows for a record (read with its own reader).
DELIVERY_FIELDS = ("cli", "dialled", "imsi", "imei", "start", "duration", "call_type")


def record_fields(raws: Sequence[bytes], readers: Sequence[Reader | None]) -> list[dict[str, Any]]:
    """Per record, its raw v1 fields as its own input format gives them ({} when none can read it).

    What ``etsi-xml`` needs to show parties, times and type for a switch record that is not a
    raw v1 JSON object (an Asterisk row, an acc row, a json_cdr document).
    """
    schema = {name: pl.String for name in DELIVERY_FIELDS}
    out: list[dict[str, Any]] = [{} for _ in raws]
    groups: dict[Reader, list[int]] = {}
    for i, reader in enumerate(readers):
        if reader is not None:
            groups.setdefault(reader, []).append(i)
    for reader, rows in groups.items():
        group = [raws[i] for i in rows]
        options = reader.options()
        frame = parse_records(reader.format, group, b"\n".join(group), schema, max_bytes=MAX_PARSE_BYTES,
                              **options).frame
        if reader.format in _DELIMITED:
            seen = set(frame["row"].to_list())
            rest = [r for r in range(len(group)) if r not in seen]
            if rest:
                again = [group[r] for r in rest]
                layout = resolve(_DELIMITED[reader.format], options.get("mapping"))
                loose = parse_delimited(again, b"\n".join(again), schema, layout, MAX_PARSE_BYTES).frame
                back = pl.Series([rest[int(r)] for r in loose["row"].to_list()], dtype=frame["row"].dtype)
                frame = pl.concat([frame, loose.with_columns(back.alias("row"))], how="vertical_relaxed")
        for doc in frame.to_dicts():
            out[rows[int(doc.pop("row"))]] = {k: v for k, v in doc.items() if v is not None}
    return out
