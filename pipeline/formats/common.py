"""Column expressions every switch format needs: records to lines, identities out of URIs, times, durations.

Switches write the same facts in many shapes: a calling number may be ``1001``,
``"Alice" <253-433-5862>``, ``sip:1001@192.0.2.7:5060;transport=UDP``, ``1001@host`` or
``1001%40127.0.0.1``; a time may be epoch, micro-epoch, ISO-8601, Go's
``2013-11-07 08:42:25 +0000 UTC`` or a local ``YYYY-MM-DD HH:MM:SS``. Adapters turn each
into the one text the router validates (a bare number for :mod:`pipeline.core.normalise`,
a time :func:`pipeline.core.times.parse_times` reads). Everything here is a Polars
expression over whole columns; nothing runs per record in Python.
"""
from __future__ import annotations

from pipeline.lazy import polars as pl

from pipeline.core.parse import EMPTY, INVALID_JSON, INVALID_UTF8, NOT_OBJECT, TOO_LARGE, record_lines  # noqa: F401
from pipeline.core.times import COMPACT_TIME

# Reason codes the format adapters add (the core's parse codes are reused where they fit).
INVALID_CSV = "invalid_csv"
WRONG_COLUMN_COUNT = "wrong_column_count"
COMMENT_LINE = "comment_line"
HEADER_LINE = "header_line"
HEADER_MISMATCH = "header_mismatch"
ACC_IN_CALL_REQUEST = "acc_in_call_request"
ACC_UNPAIRED_INVITE = "acc_unpaired_invite"
NOT_JSON_CDR = "not_json_cdr"

#: What to do about a ``header_mismatch`` (the file runner stops on it, the Kafka worker warns).
HEADER_MISMATCH_HINT = ("a CSV header row names the mapping's columns in another order, so the rows are read in the "
                        "wrong columns: list `columns` in the mapping in the file's order (docs/formats.md)")

#: Fixed, value-free texts for the DLQ ``detail`` of each adapter reason (merge into the router's lookup).
FORMAT_REASON_DETAIL = {
    INVALID_CSV: "the record is not a well-formed delimited row (unbalanced quote, or text after a closing quote)",
    WRONG_COLUMN_COUNT: "the row has a different number of columns than the format or mapping expects",
    COMMENT_LINE: "a comment line (starts with the mapping's comment character): kept in retention, not a call",
    HEADER_LINE: "the CSV header row: kept in retention, not a call",
    HEADER_MISMATCH: HEADER_MISMATCH_HINT,
    ACC_IN_CALL_REQUEST: "an accounting row for a request inside a call (ACK, BYE, CANCEL...): its time is merged "
                         "into the call's INVITE record when both are in one batch; kept in retention, not a call",
    ACC_UNPAIRED_INVITE: "an answered INVITE with no BYE in the same batch and no duration column, so the call's "
                         "duration is unknown; use acc CDR mode (a duration column) for streams",
    NOT_JSON_CDR: "valid JSON, but not a FreeSWITCH json_cdr document (variables or callflow have the wrong type)",
}

__all__ = ["EMPTY", "INVALID_JSON", "INVALID_UTF8", "NOT_OBJECT", "TOO_LARGE", "FORMAT_REASON_DETAIL",
           "NON_VOICE_CALL_TYPES"]

#: Call types that have no talk time: a record of one of these without a duration is complete
#: (its duration is 0), while a voice call (or an unknown or absent type) must have one. Compared
#: after :func:`enum_text` (lower case, spaces and dashes as ``_``). The router hands the same set
#: to the native JSONL check (see docs/formats.md, "Writing a mapping").
NON_VOICE_CALL_TYPES = frozenset({"sms", "mms", "text", "data", "ussd"})

#: Percent-escapes seen in switch output (FreeSWITCH encode-values, ESL, HTTP CDRs); ``%25`` last.
_ESCAPES = (("%40", "@"), ("%2B", "+"), ("%3A", ":"), ("%3B", ";"), ("%20", " "), ("%2F", "/"), ("%3C", "<"),
            ("%3E", ">"), ("%22", '"'), ("%2C", ","), ("%3D", "="), ("%23", "#"), ("%2D", "-"), ("%2E", "."),
            ("%25", "%"))
_SPACES = " \t"
#: ``562-246-7846 x57324``: a PBX extension after the number (dropped: the line's number is the subscriber).
_EXTENSION = r"^(.*\d)\s*(?i:x|ext\.?)\s*\d{1,6}$"
#: A date-time followed by an offset and a zone name (Go's ``time.Time.String()``): keep the offset.
_OFFSET_AND_NAME = r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*([+-]\d{2}:?\d{2})\s+[A-Za-z]{2,5}$"
_NAIVE_TIME = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?$"
ISO_OUT = "%Y-%m-%dT%H:%M:%S%.6fZ"
DURATION_FACTORS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def url_decoded(e: pl.Expr) -> pl.Expr:
    """Percent-escapes undone (``1001%40127.0.0.1`` -> ``1001@127.0.0.1``, ``%2B44`` -> ``+44``)."""
    out = e
    for code, char in _ESCAPES:
        out = out.str.replace_all("(?i)" + code, char.replace("$", "$$"))
    return pl.when(e.str.contains("%", literal=True)).then(out).otherwise(e)


def blank_to_null(e: pl.Expr) -> pl.Expr:
    """Empty or whitespace-only text as null (so a fallback source can fill it)."""
    return pl.when(e.str.strip_chars(_SPACES).str.len_bytes() > 0).then(e).otherwise(None)


def number_text(e: pl.Expr) -> pl.Expr:
    """The number inside a caller-ID string, SIP/tel URI or ``user@host``; a display name alone gives null.

    ``"Name" <253-433-5862>`` -> ``253-433-5862``; ``sip:1001@192.0.2.1:5060;transport=UDP`` -> ``1001``;
    ``1001%40127.0.0.1`` -> ``1001``; ``tel:+441234;phone-context=x`` -> ``+441234``. Separators stay:
    the phone normaliser removes them, the same way for every source column.

    Evaluated in stages over the column (:func:`_number_text_series`): written as one expression,
    every step repeats the whole tree of the steps before it in each branch, which cost ~9 ms of
    fixed time per batch (a FreeSWITCH call file is a batch of one) and 5x the time on large ones.
    """
    return e.map_batches(_number_text_series, return_dtype=pl.String, is_elementwise=True)


def _number_text_series(values: pl.Series) -> pl.Series:
    """:func:`number_text` on a Series, one step at a time (each step reads the previous one's column)."""
    t = pl.col("t")
    frame = values.cast(pl.String).to_frame("t")
    frame = frame.select(url_decoded(t.str.strip_chars(_SPACES)).alias("t"))
    frame = frame.select((pl.when(t.str.contains("<", literal=True)).then(t.str.extract(r"<([^>]*)>", 1))
                          .when(t.str.starts_with('"')).then(None)
                          .otherwise(t)).str.strip_chars(_SPACES).str.replace(r"^(?i:sips?|tel):", "").alias("t"))
    frame = frame.select(pl.when(t.str.contains("@", literal=True))
                         .then(t.str.replace(r"@.*$", "").str.replace(r":.*$", "")).otherwise(t)
                         .str.replace(r";.*$", "").str.replace(_EXTENSION, "${1}").str.strip_chars(_SPACES)
                         .alias("t"))
    return frame["t"].alias(values.name)


def ip_text(e: pl.Expr) -> pl.Expr:
    """The address of an IP field written as ``sip:user@ip:port``, ``user@ip`` or URL-encoded; port kept."""
    t = url_decoded(e.str.strip_chars(_SPACES)).str.replace(r"^(?i:sips?):", "")
    return t.str.replace(r"^[^@\[]*@", "").str.replace(r";.*$", "")


def time_text(e: pl.Expr, time_format: str | None = None, timezone: str | None = None) -> pl.Expr:
    """A time text the router reads: Go's ``+0000 UTC`` suffix folded, ``time_format`` parsed, local zone applied.

    Epoch, micro-epoch, ISO-8601 and the compact ``YYYYMMDDhhmmss`` pass unchanged (the router
    tells them apart), the naive ones converted from ``timezone`` when it is set. Text that no
    rule reads is passed on unchanged, so the router rejects it as ``invalid_field``.
    """
    t = url_decoded(e.str.strip_chars(_SPACES))
    t = t.str.replace(_OFFSET_AND_NAME, "${1}${2}").str.replace(r"\s+(?:UTC|GMT|Z)$", "Z")
    t = blank_to_null(t)
    if time_format:
        parsed = t.str.to_datetime(time_format, strict=False, time_unit="us")
        local = parsed.dt.replace_time_zone(timezone or "UTC", ambiguous="earliest", non_existent="null")
        return pl.coalesce(local.dt.convert_time_zone("UTC").dt.strftime(ISO_OUT), t)
    if timezone:
        naive = t.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
        naive = pl.coalesce(naive, t.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"),
                            pl.when(t.str.contains(COMPACT_TIME))
                            .then(t.str.to_datetime("%Y%m%d%H%M%S", strict=False, time_unit="us")))
        local = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        # A naive time no calendar has (month 13) passes unchanged: the router rejects it as invalid.
        return pl.when(naive.is_not_null() & (t.str.contains(_NAIVE_TIME) | t.str.contains(COMPACT_TIME))) \
            .then(local.dt.convert_time_zone("UTC").dt.strftime(ISO_OUT)).otherwise(t)
    return t


def duration_text(e: pl.Expr, unit: str = "s") -> pl.Expr:
    """Whole seconds as text; Go's ``10s`` read, other units divided down. Negative stays (the router rejects it)."""
    t = blank_to_null(e.str.strip_chars(_SPACES)).str.replace(r"^(-?\d+)s$", "${1}")
    factor = DURATION_FACTORS[unit]
    if factor == 1:
        return t
    n = t.cast(pl.Int64, strict=False)
    return pl.when(n.is_not_null()).then((n // factor).cast(pl.String)).otherwise(t)


def enum_text(e: pl.Expr) -> pl.Expr:
    """An outcome such as ``NO ANSWER`` as ``no_answer`` (what analytics keeps)."""
    return blank_to_null(e.str.strip_chars(_SPACES)).str.to_lowercase().str.replace_all(r"[\s\-]+", "_")


def row_hash(line: pl.Expr, hex_chars: int = 8) -> pl.Expr:
    """First ``hex_chars`` hex digits of SHA-256 of the raw row: a deterministic leg discriminator."""
    return line.chash.sha2_256().str.slice(0, hex_chars)


def field_text(target: str, e: pl.Expr, *, time_format: str | None = None, timezone: str | None = None,
               duration_unit: str = "s") -> pl.Expr:
    """The transform a raw v1 field gets, by its name (numbers, times, durations, IPs, enumerations)."""
    if target in ("cli", "dialled"):
        return number_text(e)
    if target == "start":
        return time_text(e, time_format, timezone)
    if target == "duration":
        return duration_text(e, duration_unit)
    if target == "ip":
        return blank_to_null(ip_text(e))
    if target in ("status", "call_type"):
        return enum_text(e)
    if target == "record_id":
        return blank_to_null(e.str.strip_chars(_SPACES))
    return blank_to_null(url_decoded(e.str.strip_chars(_SPACES)))


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A zero-row frame of the raw-v1 schema plus ``row``."""
    return pl.DataFrame(schema={**schema, "row": pl.UInt32})
