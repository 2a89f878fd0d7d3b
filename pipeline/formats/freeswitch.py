"""FreeSWITCH ``mod_json_cdr`` documents: one JSON CDR per record, nested ``variables`` and ``callflow``.

The same identity is written in many places; each raw v1 field takes the first present of:

* cli: ``callflow[0].caller_profile.caller_id_number``, ``variables.caller_id_number``,
  ``variables.sip_from_user``, ``caller_profile.ani``
* dialled: ``caller_profile.destination_number``, ``variables.destination_number``,
  ``variables.sip_req_user``, ``variables.sip_to_user``, ``variables.dialed_user``
* start: ``variables.start_uepoch``, ``start_epoch``, ``start_stamp`` (local time), ``times.created_time``
* duration: ``variables.billsec`` (talk time), else ``variables.duration``
* ip: ``variables.network_addr``, ``caller_profile.network_addr``, ``sip_received_ip``, ``sip_network_ip``
* record_id: ``variables.uuid``, ``caller_profile.uuid``, ``variables.call_uuid``; status: ``hangup_cause``

Values may be URL-encoded (json_cdr ``encode-values``) and numbers may be SIP URIs or caller-ID
strings; both are undone by the shared column expressions. ``callflow`` is an array in current
releases and an object in old ones; both are read. A record is one whole document: a pretty-
printed document spanning lines is fine as one Kafka message, and ``cdrpipe process`` reads a
call file holding one such document, or a directory of them, as one record per file
(:mod:`pipeline.runners.inputs`); a file of compact documents is read one per line.

Reading follows the JSONL adapter: a vectorised screen, Polars' NDJSON reader with a fixed nested
schema in chunks, and the core's exact per-line verdict (:func:`pipeline.core.parse.classify_line`)
only for suspects and for chunks the fast reader refuses.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Sequence

from pipeline.lazy import polars as pl

from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, Parsed, SlowPath, control_rows
from pipeline.formats.common import NOT_JSON_CDR, blank_to_null, empty_frame, field_text, record_lines
from pipeline.formats.csv_mapped import MappingSpec

_CHUNK_LINES = 1024
VARIABLES = ("uuid", "call_uuid", "caller_id_number", "destination_number", "sip_from_user", "sip_req_user",
             "sip_to_user", "dialed_user", "start_uepoch", "start_epoch", "start_stamp", "billsec", "duration",
             "network_addr", "sip_received_ip", "sip_network_ip", "hangup_cause")


@functools.cache
def _read_schema() -> dict[str, pl.DataType]:
    """The two columns read from each document (built on first use: Polars is imported lazily)."""
    return {"variables": pl.Struct({v: pl.String for v in VARIABLES}), "callflow": pl.String}


def _var(name: str) -> pl.Expr:
    """A ``variables`` value, blank as null so the next source can fill it."""
    return blank_to_null(pl.col("variables").struct.field(name))


def _flow(path: str) -> pl.Expr:
    """A value from the newest callflow entry (array form) or the callflow object (old form)."""
    cf = pl.col("callflow")
    return blank_to_null(pl.coalesce(cf.str.json_path_match("$[0]." + path), cf.str.json_path_match("$." + path)))


def _epoch(e: pl.Expr) -> pl.Expr:
    """An epoch text with FreeSWITCH's ``0`` (never happened) as null."""
    return pl.when(e.str.strip_chars() == "0").then(None).otherwise(e)


@functools.cache
def _sources() -> dict[str, list[pl.Expr]]:
    """Where each raw-v1 field is found, first non-blank wins (built on first use)."""
    return {
        "record_id": [_var("uuid"), _flow("caller_profile.uuid"), _var("call_uuid")],
        "cli": [_flow("caller_profile.caller_id_number"), _var("caller_id_number"), _var("sip_from_user"),
                _flow("caller_profile.ani")],
        "dialled": [_flow("caller_profile.destination_number"), _var("destination_number"), _var("sip_req_user"),
                    _var("sip_to_user"), _var("dialed_user")],
        "start": [_epoch(_var("start_uepoch")), _epoch(_var("start_epoch")), _var("start_stamp"),
                  _epoch(_flow("times.created_time"))],
        "duration": [_var("billsec"), _var("duration")],
        "ip": [_var("network_addr"), _flow("caller_profile.network_addr"), _var("sip_received_ip"),
               _var("sip_network_ip")],
        "status": [_var("hangup_cause")],
    }


def _screen(lines: pl.Series, max_bytes: int, max_depth: int, control: list[int]) -> pl.DataFrame:
    """Per line: ``suspect`` (needs the exact verdict): not object-shaped, too large, odd bytes, too deep.

    ``control`` names the rows holding control bytes (:func:`pipeline.core.parse.control_rows`).
    """
    line = pl.col("line")
    body = line.str.strip_chars(" \t\r")
    suspect = (
        (line.str.len_bytes() > max_bytes)
        | ~body.str.starts_with("{") | ~body.str.ends_with("}")
        | pl.int_range(0, pl.len(), dtype=pl.UInt32).is_in(pl.Series(control, dtype=pl.UInt32).implode())
        | line.str.contains(r"\x{FFFD}|\x{FEFF}|NaN|Infinity")
        | (line.str.count_matches("{", literal=True) != line.str.count_matches("}", literal=True))
        | (line.str.count_matches("[", literal=True) != line.str.count_matches("]", literal=True))
    )
    frame = lines.to_frame("line").select(line, pl.int_range(0, pl.len(), dtype=pl.UInt32).alias("row"),
                                          suspect.alias("suspect"))
    # Exact depth without a parser: drop strings, then peel innermost brackets up to the limit.
    shape = frame["line"].str.replace_all(r'"(?:[^"\\]|\\.)*"', '""').str.replace_all(r"[^\[\]{}]", "")
    for _ in range(max_depth):
        if not (shape.str.len_bytes() > 0).any():
            break
        shape = shape.str.replace_all(r"\{\}|\[\]", "")
    return frame.with_columns(pl.col("suspect") | (shape.str.len_bytes() > 0).fill_null(True))


def _read(lines: list[str] | pl.Series) -> pl.DataFrame | None:
    """The nested fields of clean lines, or None if Polars refuses the chunk."""
    payload = ("\n".join(lines) if isinstance(lines, list) else lines.str.join("\n").item()).encode("utf-8")
    try:
        frame = pl.read_ndjson(io.BytesIO(payload), schema=_read_schema())
    except Exception:  # one odd document fails the whole call
        return None
    return frame if frame.height == len(lines) else None


def parse_freeswitch_json(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], *,
                          max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
                          mapping: MappingSpec | None = None) -> Parsed:
    """json_cdr documents as raw v1 columns; a mapping may only set ``timezone`` (for ``start_stamp``)."""
    if not records:
        return Parsed(empty_frame(schema), [], [])
    timezone = mapping.timezone if mapping is not None else None
    screened = _screen(record_lines(records), max_bytes, max_depth, control_rows(records, buf))
    verdicts = SlowPath(records, max_bytes, max_depth)
    judge = verdicts.judge
    reject_rows, reject_reasons = verdicts.reject_rows, verdicts.reject_reasons
    pending_rows, pending_lines = verdicts.ok_rows, verdicts.ok_lines
    parts: list[pl.DataFrame] = []

    judge(screened.filter(pl.col("suspect"))["row"].to_list())
    for chunk in screened.filter(~pl.col("suspect")).iter_slices(_CHUNK_LINES):
        read = _read(chunk["line"])
        if read is None:
            judge(chunk["row"].to_list())
        else:
            parts.append(read.with_columns(chunk["row"]))
    if pending_rows:
        read = _read(pending_lines)
        if read is not None:
            parts.append(read.with_columns(pl.Series("row", pending_rows, dtype=pl.UInt32)))
        else:  # valid JSON, but some document's shape is not a json_cdr: find it, one by one (rare)
            for i, text in zip(pending_rows, pending_lines):
                one = _read([text])
                if one is None:
                    reject_rows.append(i)
                    reject_reasons.append(NOT_JSON_CDR)
                else:
                    parts.append(one.with_columns(pl.Series("row", [i], dtype=pl.UInt32)))
    if not parts:
        return Parsed(empty_frame(schema), reject_rows, reject_reasons)
    docs = pl.concat(parts).sort("row")
    cols = []
    for name in schema:
        sources = _sources().get(name)
        if name == "call_type":
            expr = pl.lit("voice", pl.String)
        elif sources:
            expr = field_text(name, pl.coalesce(sources), timezone=timezone)
        else:
            expr = pl.lit(None, pl.String)
        cols.append(expr.cast(pl.String).alias(name))
    return Parsed(docs.select(*cols, "row"), reject_rows, reject_reasons)
