"""Raw bytes to columns: a vectorised screen, Polars' NDJSON reader, and an exact slow path.

Polars parses NDJSON with a fixed schema at under a microsecond a record, but one bad
line fails the whole call, it skips empty lines, keeps the first of two duplicate keys
and coerces types silently. So parsing is three steps:

1. **Screen** every line with column expressions (one pass in Rust): empty, not shaped
   like an object, over the size limit, invalid UTF-8 or a BOM, ``NaN``/``Infinity``,
   ``\\u`` escapes, control characters, text after a closing brace, deep or unbalanced
   brackets. Lines with more commas than non-null read fields (a duplicate key, say) get
   an exact count of field names after the fast read.
   A flagged line is only *suspect*; the screen never decides alone.
2. **Slow path** for the few suspects: the standard parsers on the original bytes give
   an exact verdict, a DLQ reason code, or a clean canonical line.
3. **Fast path**: the batch's own bytes, suspects blanked, go to ``pl.read_ndjson`` in one
   call. If that still fails, the clean lines are read in chunks of a few thousand and
   orjson finds the offending lines in the failing chunk only.

Nothing raises to the caller: every input line ends as a parsed row or a reason.
"""
from __future__ import annotations

import bisect
import io
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
import polars as pl

DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_MAX_DEPTH = 32
_SCREEN_BRACKETS = 16
_CHUNK_LINES = 4096
_BOM = b"\xef\xbb\xbf"

# Reason codes for lines that never became a row (schemas/dlq-record.v1.json lists all codes).
EMPTY, BOM, INVALID_UTF8, TOO_LARGE, INVALID_JSON = "empty", "bom", "invalid_utf8", "too_large", "invalid_json"
NON_FINITE, NOT_OBJECT, DUPLICATE_KEY, TOO_DEEP = "non_finite_number", "not_object", "duplicate_key", "too_deep"

PARSE_REASON_DETAIL = {
    EMPTY: "the record is empty or only whitespace",
    BOM: "the record starts with a UTF-8 byte-order mark; export without BOM",
    INVALID_UTF8: "the record is not valid UTF-8",
    TOO_LARGE: "the record exceeds the size limit (--max-record-bytes)",
    INVALID_JSON: "the record is not valid JSON (truncated or malformed)",
    NON_FINITE: "the record contains NaN or Infinity, which JSON does not allow",
    NOT_OBJECT: "the record is valid JSON but not an object",
    DUPLICATE_KEY: "a field appears more than once, so its value is ambiguous",
    TOO_DEEP: "the record is nested deeper than the limit",
}


@dataclass(frozen=True)
class Parsed:
    """Rows that parsed (``row`` = position in the batch) and reasons for those that did not."""

    frame: pl.DataFrame
    reject_rows: list[int]
    reject_reasons: list[str]


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _depth(value: object, limit: int) -> int:
    """Nesting depth, stopping early once past ``limit`` (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            if d > limit:
                return d
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def classify_line(raw: bytes, max_bytes: int, max_depth: int) -> tuple[str | None, bytes | None]:
    """Exact verdict for one suspect line: ``(reason, None)`` or ``(None, canonical JSON)``."""
    if len(raw) > max_bytes:
        return TOO_LARGE, None
    stripped = raw.strip(b" \t\r\n")
    if not stripped:
        return EMPTY, None
    if stripped.startswith(_BOM):
        return BOM, None
    try:
        text = stripped.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8, None
    if text.count("[") + text.count("{") > max_depth:
        # Cheap upper bound passed the limit: measure exactly without a recursive parser.
        depth = cur = 0
        in_str = esc = False
        for ch in text:
            if in_str:
                esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
            elif ch == '"':
                in_str = True
            elif ch in "[{":
                cur += 1
                depth = max(depth, cur)
            elif ch in "]}":
                cur -= 1
        if depth > max_depth:
            return TOO_DEEP, None
    try:
        obj = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return INVALID_JSON, None
        return NON_FINITE, None  # only the stdlib's NaN/Infinity extension makes it parse
    if not isinstance(obj, dict):
        return NOT_OBJECT, None
    try:
        json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        return DUPLICATE_KEY, None
    if _depth(obj, max_depth) > max_depth:
        return TOO_DEEP, None
    return None, orjson.dumps(obj)


#: 0 for the control bytes JSON never allows unescaped (tab, LF and CR are whitespace), 1 otherwise.
_CONTROL_MAP = bytes(0 if b < 32 and b not in (9, 10, 13) else 1 for b in range(256))


def record_ends(lengths: Iterable[int]) -> list[int]:
    """Offsets one past each record's newline in the batch buffer (records joined by ``\n``)."""
    return list(itertools.accumulate(map((1).__add__, lengths)))


def control_rows(records: Sequence[bytes], buf: bytes) -> list[int]:
    """Rows holding a control byte, found over the whole batch at once (one translate, then memchr).

    A character-class regex per line costs about half a microsecond a record; control bytes
    are rare, so the batch is scanned as one buffer and only their rows are named.
    """
    marked = buf.translate(_CONTROL_MAP)
    pos = marked.find(0)
    if pos < 0:
        return []
    ends = record_ends(map(len, records))
    rows = []
    while pos >= 0:
        row = bisect.bisect_right(ends, pos)
        rows.append(row)
        pos = marked.find(0, ends[row]) if row < len(ends) - 1 else -1
    return rows


def _screen(lines: pl.Series, max_bytes: int, control: Sequence[int] = ()) -> pl.DataFrame:
    """Per line: ``suspect`` (needs the exact slow path) and ``members`` (an upper bound on its keys).

    Cheap and conservative, one pass per test. ``members`` (commas + 1) can only over-count a
    flat object's keys, so a line whose count equals its non-null read fields after the fast
    read cannot hide a duplicate key; the others get an exact count (see ``parse_batch``).
    """
    line = pl.col("line")
    body = line.str.strip_chars(" \t\r")
    opens = line.str.count_matches(r"[\[{]")
    suspect = (
        line.is_null()
        | (line.str.len_bytes() > max_bytes)
        | ~body.str.starts_with("{") | ~body.str.ends_with("}")
        # one regex pass (literals, so it is prefiltered): lossy-decoded bytes, a BOM, non-JSON
        # numbers, escapes, and content after a closing brace; control bytes come from ``control``
        | line.str.contains(r"\x{FFFD}|\x{FEFF}|NaN|Infinity|\\u|\}\s*[^\s,}\]]")
        | (opens > _SCREEN_BRACKETS) | (opens != line.str.count_matches(r"[\]}]"))
    )
    if control:
        suspect = suspect | pl.int_range(0, pl.len(), dtype=pl.UInt32).is_in(
            pl.Series(control, dtype=pl.UInt32).implode())
    members = line.str.count_matches(",", literal=True) + 1
    return lines.to_frame("line").select(
        line, pl.int_range(0, pl.len(), dtype=pl.UInt32).alias("row"), suspect.alias("suspect"),
        members.alias("members"))


class SlowPath:
    """Exact verdicts for suspect records, collected for a batch: rejects with reasons, or canonical lines.

    Every adapter that reads JSON shares it, so a record is judged the same way whatever its format.
    """

    def __init__(self, records: Sequence[bytes], max_bytes: int, max_depth: int) -> None:
        self._records, self._max_bytes, self._max_depth = records, max_bytes, max_depth
        self.reject_rows: list[int] = []
        self.reject_reasons: list[str] = []
        self.ok_rows: list[int] = []
        self.ok_lines: list[str] = []

    def judge(self, rows: Iterable[int]) -> None:
        """Classify each row's original bytes; valid ones are kept as canonical one-line JSON for a re-read."""
        for i in rows:
            reason, canonical = classify_line(self._records[i], self._max_bytes, self._max_depth)
            if reason is None:
                self.ok_rows.append(i)
                self.ok_lines.append(canonical.decode())  # type: ignore[union-attr]
            else:
                self.reject_rows.append(i)
                self.reject_reasons.append(reason)


def record_lines(records: Sequence[bytes]) -> pl.Series:
    """One String per record, aligned with ``records`` (every adapter's screen starts here).

    Lossy UTF-8: a bad byte shows as U+FFFD and is screened. A record holding a newline
    becomes NUL, which marks it for the exact slow path on its original bytes. An empty
    record is an empty string. Only non-ASCII records are decoded in Python (to repair
    invalid UTF-8); the rest go to Polars as they are.
    """
    fixed = [r if r.isascii() else r.decode("utf-8", "replace").encode("utf-8") for r in records]
    lines = pl.Series("line", fixed, dtype=pl.Binary).cast(pl.String)
    split = lines.str.contains("\n", literal=True)
    if split.any():
        lines = lines.scatter(split.arg_true(), "\x00")
    return lines


def parse_batch(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], *,
                max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH) -> Parsed:
    """Parse ``records`` (``buf`` is them joined by newlines) into the fixed ``schema`` columns."""
    n = len(records)
    if n == 0:
        return Parsed(pl.DataFrame(schema=schema).with_columns(pl.lit(0, pl.UInt32).alias("row").head(0)), [], [])
    screened = _screen(record_lines(records), max_bytes, control_rows(records, buf))
    verdicts = SlowPath(records, max_bytes, max_depth)
    suspects = screened.filter(pl.col("suspect"))["row"]
    verdicts.judge(suspects.to_list())
    clean = screened.filter(~pl.col("suspect"))
    frame = _read_whole(records, buf, suspects, clean, schema)
    if frame is None:  # a line the screen passed still fails the fast reader (a flipped quote, say)
        frame, clean = _read_chunks(clean, schema, verdicts)
    # Commas + 1 bound the keys from above, so only lines where that bound exceeds the non-null
    # read fields can hold a duplicate key; count their field names exactly.
    nonnull = pl.sum_horizontal([pl.col(f).is_not_null().cast(pl.UInt32) for f in schema])
    counted = frame.with_columns(clean["members"], clean["line"]).with_columns(nonnull.alias("_nonnull"))
    maybe = counted.filter(pl.col("members") != pl.col("_nonnull"))
    if maybe.height:
        names = '"(?:' + "|".join(re.escape(f) for f in schema) + ')"'
        recheck = maybe.filter(pl.col("line").str.count_matches(names) != pl.col("_nonnull"))["row"]
        if len(recheck):
            verdicts.judge(recheck.to_list())
            frame = frame.filter(~pl.col("row").is_in(recheck.implode()))
    if verdicts.ok_rows:
        extra = _read_ndjson(pl.DataFrame({"line": verdicts.ok_lines,
                                           "row": pl.Series(verdicts.ok_rows, dtype=pl.UInt32)}), schema)
        if extra is None:  # canonical orjson output always parses; keep the guarantee explicit
            verdicts.reject_rows.extend(verdicts.ok_rows)
            verdicts.reject_reasons.extend([INVALID_JSON] * len(verdicts.ok_rows))
        else:
            frame = pl.concat([frame, extra]).sort("row")
    return Parsed(frame, verdicts.reject_rows, verdicts.reject_reasons)


def _read_whole(records: Sequence[bytes], buf: bytes, suspects: pl.Series, clean: pl.DataFrame,
                schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """The clean lines in one read of the original bytes, suspects blanked (the reader skips empty lines)."""
    if clean.height == 0:
        return _read_ndjson(clean, schema)
    if len(suspects) or buf.count(b"\n") != len(records) - 1:
        blanked = list(records)
        for i in suspects.to_list():
            blanked[i] = b""
        buf = b"\n".join(blanked)
    try:
        frame = pl.read_ndjson(io.BytesIO(buf), schema=schema)
    except Exception:  # Polars raises ComputeError and friends for one bad line
        return None
    return frame.with_columns(clean["row"]) if frame.height == clean.height else None


def _read_chunks(clean: pl.DataFrame, schema: dict[str, pl.DataType],
                 verdicts: SlowPath) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The clean lines read in chunks, so a line that fails the reader costs only its chunk an orjson pass."""
    parts = []
    for chunk in clean.iter_slices(_CHUNK_LINES):
        part = _read_ndjson(chunk, schema)
        if part is None:
            bad = [pos for pos, text in enumerate(chunk["line"].to_list()) if not _is_object(text)]
            verdicts.judge(chunk["row"].gather(bad).to_list())
            chunk = chunk.filter(~pl.int_range(0, pl.len()).is_in(bad))
            part = _read_ndjson(chunk, schema)
            if part is None:  # orjson and Polars disagree on a line: judge each exactly, never lose one
                verdicts.judge(chunk["row"].to_list())
                continue
        parts.append((part, chunk))
    if not parts:
        return _read_ndjson(clean.head(0), schema), clean.head(0)  # type: ignore[return-value]
    return pl.concat([p for p, _ in parts]), pl.concat([c for _, c in parts])


def _is_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _read_ndjson(clean: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    if clean.height == 0:
        return pl.DataFrame(schema=schema).with_columns(pl.Series("row", [], dtype=pl.UInt32))
    payload = clean["line"].str.join("\n").item().encode("utf-8")
    try:
        frame = pl.read_ndjson(io.BytesIO(payload), schema=schema)
    except Exception:  # Polars raises ComputeError and friends for one bad line
        return None
    if frame.height != clean.height:
        return None
    return frame.with_columns(clean["row"])
