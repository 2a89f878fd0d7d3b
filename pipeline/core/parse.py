"""Reason codes for records that never became a row, and the JSON verdict tools adapters share.

The JSONL path itself is native (``native/src/json.rs``): one strict pass a record decides
the size limit, blank lines, a BOM, invalid UTF-8, nesting depth, RFC 8259 syntax,
``NaN``/``Infinity``, the top-level type and duplicate keys, in that order, and extracts
the wanted top-level fields as text. :func:`parse_batch` exposes the same parser as a
Polars frame for readers that want columns (the vault). :func:`classify_line` is the
exact verdict for one line that the FreeSWITCH adapter uses on its suspects.
"""
from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from pipeline.lazy import polars as pl

from pipeline._native import PARSE_REASON_CODES, parse_columns

DEFAULT_MAX_RECORD_BYTES = 64 * 1024
DEFAULT_MAX_DEPTH = 32
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


#: ``(code, detail)`` in the native parser's code order (index 0 is "no reason").
PARSE_REASONS = tuple((code, PARSE_REASON_DETAIL.get(code, "")) for code in PARSE_REASON_CODES)


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
    """Parse JSONL ``records`` (``buf`` is them joined by newlines) into the fixed ``schema`` columns.

    The native parser decides every record; this only lays its text columns out as a frame.
    """
    names = list(schema)
    columns, rows, reject_rows, reject_codes = parse_columns(buf, [len(r) for r in records], names, max_bytes,
                                                             max_depth)
    frame = pl.DataFrame({name: pl.Series(name, col, dtype=pl.String) for name, col in zip(names, columns)},
                         schema={name: pl.String for name in names})
    return Parsed(frame.with_columns(pl.Series("row", rows, dtype=pl.UInt32)), reject_rows, list(reject_codes))
