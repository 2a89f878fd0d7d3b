"""Delimited CDR files (CSV, ``;``, ``|``) mapped to raw v1 by a layout: the engine under asterisk-csv and acc.

Reading is three steps, like the JSONL adapter:

1. **Screen** every line with column expressions: empty, comment, too large, and whether
   the line is plain enough for Polars' CSV reader (balanced quotes, quoted fields that
   start and end at a delimiter, an accepted column count). Only those are *clean*.
2. **Fast path**: clean lines go to ``pl.read_csv`` with a fixed schema of String columns,
   in chunks; a chunk whose row count does not match is judged line by line instead.
3. **Slow path** for suspects: an exact tokenizer on the original bytes gives the fields
   or a reason (``invalid_csv``, ``wrong_column_count``). It accepts what real switches
   write and Polars refuses, such as spaces after a closing quote (``"hq"    ,``).

Rows never shift: every row keeps its input position, and a malformed row is a reject.
A mapping (TOML, ``--mapping``) says which column feeds which raw v1 field; see docs/formats.md.
"""
from __future__ import annotations

import io
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

from pipeline.lazy import polars as pl

from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, Parsed
from pipeline.formats.common import (
    COMMENT_LINE, DURATION_FACTORS, EMPTY, HEADER_LINE, HEADER_MISMATCH, INVALID_CSV, NON_VOICE_CALL_TYPES, TOO_LARGE,
    WRONG_COLUMN_COUNT, blank_to_null, empty_frame, enum_text, field_text, number_text, record_lines, row_hash)

_CHUNK_LINES = 1 << 16
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: Fields a ``[values.<field>]`` table may translate: enumerations, never an identifier or a measure.
VALUE_FIELDS = ("call_type", "status")


class MappingError(ValueError):
    """A mapping file or format option is invalid; the message names the key (never a data value)."""


@dataclass(frozen=True)
class MappingSpec:
    """A layout as written in a mapping file; ``None`` means "the format's default"."""

    delimiter: str | None = None
    quote: str | None = None  # "" means no quoting
    header: bool | None = None
    comment: str | None = None
    columns: tuple[str, ...] | None = None
    column_counts: tuple[int, ...] | None = None  # () = any count that has the mapped columns
    sources: tuple[tuple[str, str], ...] | None = None  # (source name or index, target field), in priority order
    constants: tuple[tuple[str, str], ...] | None = None
    time_format: str | None = None
    timezone: str | None = None
    duration_unit: str | None = None
    record_id_suffix: bool | None = None
    name: str | None = None
    #: ``[values.<field>]``: (field, ((text as written, value), ...)), e.g. Orange's call_type "2" -> "sms".
    values: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] | None = None

    def over(self, base: MappingSpec) -> MappingSpec:
        """This spec with ``base`` filling what it leaves unset.

        Without its own ``columns``, ``[map]`` replaces only the fields it names (a tweak of the
        default layout); with ``columns`` it is a new layout and replaces the whole map.
        """
        changes = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.sources is not None and base.sources is not None and self.columns is None:
            named = {target for _s, target in self.sources}
            changes["sources"] = tuple(s for s in base.sources if s[1] not in named) + self.sources
        if self.constants is not None and base.constants is not None:
            named = {target for target, _v in self.constants}
            changes["constants"] = tuple(c for c in base.constants if c[0] not in named) + self.constants
        if self.values is not None and base.values is not None:
            named = {target for target, _v in self.values}
            changes["values"] = tuple(v for v in base.values if v[0] not in named) + self.values
        return replace(base, **changes)


@dataclass(frozen=True)
class Layout:
    """A resolved layout: column indices per target, ready for expressions."""

    name: str
    delimiter: str
    quote: str | None
    header: bool
    comment: str | None
    columns: tuple[str, ...]
    column_counts: tuple[int, ...]
    needed: int
    width: int
    targets: tuple[tuple[str, tuple[int, ...]], ...]
    constants: tuple[tuple[str, str], ...]
    time_format: str | None
    timezone: str | None
    duration_unit: str
    record_id_suffix: bool
    values: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def indices(self, target: str) -> tuple[int, ...]:
        """Source columns of ``target`` in priority order (empty if unmapped)."""
        return next((idx for t, idx in self.targets if t == target), ())


@lru_cache(maxsize=64)
def compile_layout(spec: MappingSpec) -> Layout:
    """Check a spec and resolve names to indices (cached: adapters call this per batch)."""
    delimiter = spec.delimiter if spec.delimiter is not None else ","
    if len(delimiter) != 1 or delimiter in "\r\n\"":
        raise MappingError("mapping: delimiter must be one character (not a quote or newline), e.g. \",\" or \";\"")
    quote = spec.quote if spec.quote is not None else '"'
    if len(quote) > 1 or quote == delimiter or (quote and quote in "\r\n"):
        raise MappingError("mapping: quote must be one character other than the delimiter, or \"\" for none")
    comment = spec.comment or None
    if comment is not None and len(comment) != 1:
        raise MappingError("mapping: comment must be one character, e.g. \"#\"")
    columns = tuple(spec.columns or ())
    header = bool(spec.header)
    if not spec.sources:
        raise MappingError("mapping: [map] must name at least the columns for cli, dialled, start and duration")
    targets: dict[str, list[int]] = {}
    for source, target in spec.sources:
        if not _TARGET.match(target):
            raise MappingError(f"mapping: target {target!r} is not a plain raw v1 field name")
        if source.isdigit():
            index = int(source)
        elif source in columns:
            index = columns.index(source)
        else:
            raise MappingError("mapping: a column is mapped by a name that is not in `columns`; list the header's "
                               "names in `columns` (a batch may not contain the header line) or map by index")
        targets.setdefault(target, []).append(index)
    if header and not columns:
        raise MappingError("mapping: header = true needs `columns` (the header's names in order) so header rows "
                           "are recognised in any batch")
    unit = spec.duration_unit or "s"
    if unit not in DURATION_FACTORS:
        raise MappingError(f"mapping: duration_unit must be one of {', '.join(DURATION_FACTORS)}")
    if spec.timezone:
        try:
            pl.Series(["2020-01-01 00:00:00"]).str.to_datetime().dt.replace_time_zone(spec.timezone)
        except Exception:
            raise MappingError("mapping: timezone must be an IANA zone name such as \"Europe/Berlin\"") from None
    constants = tuple(spec.constants or ())
    for target, _value in constants:
        if not _TARGET.match(target):
            raise MappingError(f"mapping: constant target {target!r} is not a plain raw v1 field name")
    values = tuple(spec.values or ())
    for target, table in values:
        if target not in VALUE_FIELDS:
            raise MappingError(f"mapping: [values.{target}] is not allowed; only {', '.join(VALUE_FIELDS)} "
                               "(enumerations) take a value table")
        if not all(isinstance(k, str) and isinstance(v, str) and _TARGET.match(v) for k, v in table):
            raise MappingError(f"mapping: [values.{target}] maps text to plain names such as \"sms\" or \"voice\"")
    counts = spec.column_counts if spec.column_counts is not None else ((len(columns),) if columns else ())
    needed = max(i for idx in targets.values() for i in idx) + 1
    if counts and min(counts) < needed:
        raise MappingError("mapping: a mapped column index is beyond the column count")
    width = max([needed, *counts, len(columns)]) + (1 if counts else 0)  # +1: an optional trailing delimiter
    return Layout(spec.name or "csv", delimiter, quote or None, header, comment, columns, tuple(counts), needed, width,
                  tuple((t, tuple(i)) for t, i in targets.items()), constants, spec.time_format, spec.timezone or None,
                  unit, bool(spec.record_id_suffix), values)


def spec_from_toml(text: str, name: str = "mapping") -> MappingSpec:
    """Parse a mapping document (``[csv]`` layout, ``[map]`` source -> field, ``[constants]``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"mapping {name} is not valid TOML: {exc}") from None
    unknown = set(doc) - {"csv", "map", "constants", "values"}
    if unknown:
        raise MappingError(f"mapping {name}: unknown section(s) {', '.join(sorted(unknown))}; use [csv], [map], "
                           "[constants], [values.<field>]")
    csv = doc.get("csv", {})
    allowed = {"delimiter", "quote", "header", "comment", "columns", "column_count", "time_format", "timezone",
               "duration_unit", "record_id_suffix"}
    if not isinstance(csv, dict) or set(csv) - allowed:
        raise MappingError(f"mapping {name}: [csv] accepts only {', '.join(sorted(allowed))}")
    sources: list[tuple[str, str]] = []
    for source, target in doc.get("map", {}).items():
        for t in ([target] if isinstance(target, str) else target if isinstance(target, list) else [None]):
            if not isinstance(t, str):
                raise MappingError(f"mapping {name}: [map] values must be raw v1 field names (or lists of them)")
            sources.append((str(source), t))
    constants = doc.get("constants", {})
    if not all(isinstance(v, str) for v in constants.values()):
        raise MappingError(f"mapping {name}: [constants] values must be strings")
    tables = doc.get("values", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise MappingError(f"mapping {name}: [values.<field>] tables map the text a column holds to a value, "
                           "e.g. [values.call_type] \"2\" = \"sms\"")
    if not all(isinstance(v, str) for t in tables.values() for v in t.values()):
        raise MappingError(f"mapping {name}: [values.<field>] values must be strings")
    columns = csv.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise MappingError(f"mapping {name}: columns must be a list of column names")
    count = csv.get("column_count")
    if count is not None and not (isinstance(count, int) and count >= 0):
        raise MappingError(f"mapping {name}: column_count must be a whole number (0 = any)")
    for key in ("header", "record_id_suffix"):
        if key in csv and not isinstance(csv[key], bool):
            raise MappingError(f"mapping {name}: {key} must be true or false")
    for key in ("delimiter", "quote", "comment", "time_format", "timezone", "duration_unit"):
        if key in csv and not isinstance(csv[key], str):
            raise MappingError(f"mapping {name}: {key} must be a string")
    spec = MappingSpec(
        delimiter=csv.get("delimiter"), quote=csv.get("quote"), header=csv.get("header"), comment=csv.get("comment"),
        columns=tuple(columns) if columns is not None else None,
        column_counts=None if count is None else (() if count == 0 else (count,)),
        sources=tuple(sources) or None, constants=tuple(constants.items()) or None,
        time_format=csv.get("time_format"), timezone=csv.get("timezone"), duration_unit=csv.get("duration_unit"),
        record_id_suffix=csv.get("record_id_suffix"), name=None,
        values=tuple((f, tuple((str(k), v) for k, v in t.items())) for f, t in tables.items()) or None)
    return spec


def load_mapping(path: str | Path) -> tuple[tuple[str, object], ...]:
    """Read a ``--mapping`` TOML file into ``CoreConfig.format_options`` (``(("mapping", spec),)``)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MappingError(f"cannot read mapping {path}: {exc.strerror}") from None
    return (("mapping", spec_from_toml(text, Path(path).name)),)


def resolve(default: MappingSpec | None, mapping: object) -> Layout:
    """The layout for a batch: the given mapping over the format's default (checked once, then cached)."""
    if mapping is not None and not isinstance(mapping, MappingSpec):
        raise MappingError("format option 'mapping' must come from pipeline.formats.load_mapping")
    if mapping is None and default is None:
        raise MappingError("--format csv needs --mapping FILE (which column is cli, dialled, start, duration)")
    spec = mapping.over(default) if (mapping is not None and default is not None) else (mapping or default)
    return compile_layout(spec)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Reading rows


def split_row(text: str, delimiter: str, quote: str | None) -> list[str | None] | None:
    """Exact fields of one row, or None if it is malformed (unbalanced quote, text after a closing quote).

    Unquoted empty fields are None and quoted ones ``""``, as in Polars. Spaces around a quoted
    field are tolerated (column-aligned exports); newlines inside quotes are kept.
    """
    out: list[str | None] = []
    i, n = 0, len(text)
    while True:
        k = i
        while k < n and text[k] in " \t":
            k += 1
        if quote and k < n and text[k] == quote:
            i, parts = k + 1, []
            while True:
                j = text.find(quote, i)
                if j < 0:
                    return None
                parts.append(text[i:j])
                if j + 1 < n and text[j + 1] == quote:
                    parts.append(quote)
                    i = j + 2
                    continue
                i = j + 1
                break
            while i < n and text[i] in " \t":
                i += 1
            out.append("".join(parts))
            if i == n:
                return out
            if text[i] != delimiter:
                return None
            i += 1
            continue
        j = text.find(delimiter, i)
        cell = text[i:] if j < 0 else text[i:j]
        if quote and quote in cell:
            return None
        if "\n" in cell or "\r" in cell:
            return None  # a line break outside quotes: two rows in one record
        out.append(cell if cell else None)
        if j < 0:
            return out
        i = j + 1


def _char_class_escape(char: str) -> str:
    """A character as a regex escape that is safe inside and outside a class (``\\x{7c}``)."""
    return "\\x{%x}" % ord(char)


@lru_cache(maxsize=64)
def row_pattern(layout: Layout) -> str:
    """One anchored regex for a row Polars reads exactly: plain or fully quoted fields, an accepted count.

    Anything else (spaces around a quoted field, a stray quote, a control character, another
    column count) does not match and goes to the exact tokenizer. One DFA pass per line.
    """
    sep = _char_class_escape(layout.delimiter)
    ctrl = r"\x00-\x08\x0b-\x1f"
    if layout.quote:
        q = _char_class_escape(layout.quote)
        cell = f"(?:{q}[^{q}{ctrl}]*(?:{q}{q}[^{q}{ctrl}]*)*{q}|[^{sep}{q}{ctrl}]*)"
    else:
        cell = f"[^{sep}{ctrl}]*"
    if layout.column_counts:
        counts = "|".join(f"(?:{sep}{cell}){{{c - 1}}}(?:{sep})?" for c in sorted(set(layout.column_counts)))
        rest = f"(?:{counts})"
    else:
        rest = f"(?:{sep}{cell}){{{layout.needed - 1},}}"
    return f"^{cell}{rest}$"


def _screen(lines: pl.Series, layout: Layout, max_bytes: int) -> pl.DataFrame:
    """Per line: a sure reject reason (or null) and ``suspect`` (needs the exact tokenizer)."""
    line = pl.col("line")
    text = line.str.strip_prefix("\ufeff").str.strip_suffix("\r")
    reason = (pl.when(line.str.len_bytes() > max_bytes).then(pl.lit(TOO_LARGE))
              .when(text.str.strip_chars(" \t\r").str.len_bytes() == 0).then(pl.lit(EMPTY)))
    if layout.comment:
        reason = reason.when(text.str.strip_chars_start(" \t").str.starts_with(layout.comment)).then(pl.lit(COMMENT_LINE))
    reason = reason.otherwise(None)
    suspect = ~text.str.contains(row_pattern(layout))
    return lines.to_frame("line").lazy().select(  # lazy: the shared sub-expressions run once
        text.alias("line"), pl.int_range(0, pl.len(), dtype=pl.UInt32).alias("row"), reason.alias("reason"),
        suspect.alias("suspect")).collect()


def _schema(layout: Layout) -> dict[str, pl.DataType]:
    """Fixed String columns ``c0..``: nothing is inferred, so a value is never coerced."""
    return {f"c{i}": pl.String for i in range(layout.width)}


def _read_fast(chunk: pl.DataFrame, layout: Layout) -> pl.DataFrame | None:
    """Polars' CSV reader over clean lines; None if it fails or loses alignment."""
    if chunk.height == 0:
        return pl.DataFrame(schema=_schema(layout))
    payload = chunk["line"].str.join("\n").item().encode("utf-8") + b"\n"
    try:
        frame = pl.read_csv(io.BytesIO(payload), has_header=False, separator=layout.delimiter,
                            quote_char=layout.quote, schema=_schema(layout), truncate_ragged_lines=True,
                            missing_columns="insert",
                            raise_if_empty=False)
    except Exception:  # Polars raises ComputeError and friends for one odd line
        return None
    return frame if frame.height == chunk.height else None


def read_rows(records: Sequence[bytes], buf: bytes, layout: Layout,
              max_bytes: int) -> tuple[pl.DataFrame, list[int], list[str]]:
    """Cells ``c0..`` of every readable row with its ``row`` and ``line``; rejects with reasons."""
    screened = _screen(record_lines(records), layout, max_bytes)
    rejects = screened.filter(pl.col("reason").is_not_null())
    reject_rows: list[int] = rejects["row"].to_list()
    reject_reasons: list[str] = rejects["reason"].to_list()
    todo = screened.filter(pl.col("reason").is_null())
    parts: list[pl.DataFrame] = []
    slow_rows: list[int] = todo.filter(pl.col("suspect"))["row"].to_list()
    clean = todo.filter(~pl.col("suspect"))
    for chunk in clean.iter_slices(_CHUNK_LINES):
        cells = _read_fast(chunk, layout)
        if cells is None:  # never guess: judge this chunk's lines exactly
            slow_rows.extend(chunk["row"].to_list())
            continue
        parts.append(pl.concat([chunk.select("row", "line"), cells], how="horizontal"))
    if slow_rows:
        rows, lines, cells_rows = [], [], []
        for i in slow_rows:
            text = records[i].decode("utf-8", "replace").removeprefix("\ufeff")
            text = text[:-1] if text.endswith("\r") else text
            cells = split_row(text, layout.delimiter, layout.quote)
            if cells is None:
                reject_rows.append(i)
                reject_reasons.append(INVALID_CSV)
                continue
            trailing = len(cells) > 1 and not cells[-1]
            if not _count_accepted(len(cells), trailing, layout):
                reject_rows.append(i)
                reject_reasons.append(WRONG_COLUMN_COUNT)
                continue
            rows.append(i)
            lines.append(text)
            cells_rows.append((cells + [None] * layout.width)[:layout.width])
        if rows:
            slow = pl.DataFrame({"row": pl.Series(rows, dtype=pl.UInt32), "line": pl.Series(lines, dtype=pl.String),
                                 **{f"c{k}": pl.Series([c[k] for c in cells_rows], dtype=pl.String)
                                    for k in range(layout.width)}})
            parts.append(slow)
    frame = pl.concat(parts).sort("row") if parts else \
        pl.DataFrame(schema={"row": pl.UInt32, "line": pl.String, **_schema(layout)})
    return frame, reject_rows, reject_reasons


def _count_accepted(count: int, trailing_empty: bool, layout: Layout) -> bool:
    """The slow path's column-count rule, the same as :func:`row_pattern`'s."""
    if not layout.column_counts:
        return count >= layout.needed
    return any(count == c or (count == c + 1 and trailing_empty) for c in layout.column_counts)


# ---------------------------------------------------------------------------------------------------------
# Cells to raw v1 columns


def source_expr(target: str, layout: Layout) -> pl.Expr | None:
    """The transformed value of ``target``: its first non-blank mapped column (the first one's text if all are)."""
    idx = layout.indices(target)
    if not idx:
        return None
    return field_text(target, _translated(target, _chosen(idx), layout), time_format=layout.time_format,
                      timezone=layout.timezone, duration_unit=layout.duration_unit)


def _translated(target: str, e: pl.Expr, layout: Layout) -> pl.Expr:
    """``e`` through the mapping's ``[values.<target>]`` table (text as written, trimmed); others unchanged."""
    table = dict(next((t for f, t in layout.values if f == target), ()))
    if not table:
        return e
    return e.replace(table)


def _chosen(idx: tuple[int, ...]) -> pl.Expr:
    """The first non-blank of the columns ``idx`` (so ``src`` wins over the number inside ``clid``)."""
    values = [pl.col(f"c{i}").str.strip_chars(" \t") for i in idx]
    if len(values) == 1:
        return values[0]
    return pl.coalesce([blank_to_null(v) for v in values] + [values[0]])


def _header_cell(i: int) -> pl.Expr:
    return pl.col(f"c{i}").str.strip_chars(" \t").str.to_lowercase()


def header_mask(layout: Layout) -> pl.Expr:
    """Rows whose mapped cells are the header's own column names (case-insensitive)."""
    used = sorted({i for _t, idx in layout.targets for i in idx})
    mask = pl.lit(True)
    for i in used:
        mask = mask & (_header_cell(i) == layout.columns[i].lower())
    return mask


def reordered_header_rows(cells: pl.DataFrame, layout: Layout) -> pl.Series:
    """``row`` of the rows holding exactly the names of ``columns`` (case-insensitive), in some order.

    Such a row that is not :func:`header_mask`'s is the file's header in another order than the
    mapping's: every row after it would be read in the wrong columns (a swapped cli and dialled
    still look valid), so it is a reject of its own and ``cdrpipe process`` stops on it.
    """
    names = sorted(c.lower() for c in layout.columns)
    whole = pl.concat_list([_header_cell(i).fill_null("") for i in range(len(names))])
    return cells.filter(whole.list.sort().list.join("\x1f") == "\x1f".join(names))["row"]


def to_raw(cells: pl.DataFrame, layout: Layout, schema: dict[str, pl.DataType],
           record_id_base: pl.Expr | None = None) -> pl.DataFrame:
    """Raw v1 columns (``schema``'s fields as String, plus ``row``) from the cells of readable rows.

    Numbers are transformed once per distinct value (they recur: a subscriber calls often);
    the other fields are cheap column expressions, evaluated in one lazy plan.
    """
    constants = dict(layout.constants)
    opts = dict(time_format=layout.time_format, timezone=layout.timezone, duration_unit=layout.duration_unit)
    cols: list[pl.Expr] = []
    extra: list[pl.Expr] = []
    numbers: list[str] = []
    for name in schema:
        idx = layout.indices(name)
        if name == "record_id" and record_id_base is not None:
            expr: pl.Expr | None = record_id_base
        elif idx and name in ("cli", "dialled"):
            expr = pl.lit(None, pl.String)  # filled below, once per distinct value of each source column
            numbers.append(name)
            extra.extend(pl.col(f"c{i}").alias(f"_{name}_{k}") for k, i in enumerate(idx))
        elif idx:
            expr = field_text(name, _translated(name, _chosen(idx), layout), **opts)
        else:
            expr = None
        if name == "record_id" and layout.record_id_suffix:
            base = expr if expr is not None else pl.lit(None, pl.String)
            # Byte-identical rows (two legs of a ring group whose channels were blanked, say) are
            # told apart by their order in the batch: -2, -3... after the first.
            # Without an id of its own, the row's hash is all that tells it apart from every other
            # row, and the vault deduplicates on it: 128 bits, not the 32 that separate legs of one id.
            repeat = pl.int_range(pl.len(), dtype=pl.UInt32).over("line")
            own = blank_to_null(base)
            expr = pl.concat_str([pl.coalesce(own, pl.lit(layout.name)), pl.lit("-"),
                                  pl.when(own.is_null()).then(row_hash(pl.col("line"), 32))
                                  .otherwise(row_hash(pl.col("line"))),
                                  pl.when(repeat > 0).then(pl.lit("-") + (repeat + 1).cast(pl.String))
                                  .otherwise(pl.lit(""))])
        if expr is None and name in constants:
            expr = pl.lit(constants[name], pl.String)
        cols.append((expr if expr is not None else pl.lit(None, pl.String)).cast(pl.String).alias(name))
    if "duration" in schema and "call_type" in schema:
        # A record of a call type without talk time (sms, data...) and no duration is complete: 0 s.
        # A voice call (or an unknown type) without one still fails the core's missing_field check.
        at = {name: i for i, name in enumerate(schema)}
        d, t = cols[at["duration"]], cols[at["call_type"]]
        non_voice = enum_text(t).is_in(sorted(NON_VOICE_CALL_TYPES)).fill_null(False)
        cols[at["duration"]] = pl.when(non_voice & blank_to_null(d).is_null()).then(pl.lit("0")).otherwise(d) \
            .alias("duration")
    frame = cells.lazy().select(*cols, pl.col("row"), *extra).collect()
    for name in numbers:
        # Each source cleaned on its own, then the first that gives a number: src "" (withheld)
        # yields to the number in clid, but clid holding only a display name never wins.
        cleaned = [per_distinct(frame[f"_{name}_{k}"], number_text) for k in range(len(layout.indices(name)))]
        frame = frame.with_columns(pl.coalesce([*(blank_to_null(pl.lit(c)) for c in cleaned), pl.lit(cleaned[0])])
                                   .alias(name))
    return frame.drop([e.meta.output_name() for e in extra])


def per_distinct(values: pl.Series, transform: Callable[[pl.Expr], pl.Expr]) -> pl.Series:
    """``transform`` applied once per distinct value, aligned with ``values``."""
    distinct = values.unique().to_frame("v").lazy().with_columns(transform(pl.col("v")).alias("out")).collect()
    return values.to_frame("v").join(distinct, on="v", how="left", nulls_equal=True,
                                     maintain_order="left")["out"]


def parse_delimited(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], layout: Layout,
                    max_bytes: int) -> Parsed:
    """Rows of a delimited batch as raw v1 columns, header rows and bad rows as rejects."""
    if not records:
        return Parsed(empty_frame(schema), [], [])
    cells, reject_rows, reject_reasons = without_headers(*read_rows(records, buf, layout, max_bytes), layout)
    return Parsed(to_raw(cells, layout, schema), reject_rows, reject_reasons)


def without_headers(cells: pl.DataFrame, reject_rows: list[int], reject_reasons: list[str],
                    layout: Layout) -> tuple[pl.DataFrame, list[int], list[str]]:
    """:func:`read_rows`'s result with header rows moved to the rejects (``header_line``, ``header_mismatch``)."""
    if layout.header and cells.height:
        # Only rows whose first mapped cell is a column name can be either (a header names every
        # mapped column): the full tests run on those alone (every row's cells cleaned and compared
        # cost ~0.45 s per 1M rows, sorted ~5 s).
        first = min((i for _t, idx in layout.targets for i in idx), default=0)
        maybe = cells.filter(_header_cell(first).is_in([c.lower() for c in layout.columns]))
        headers = maybe.filter(header_mask(layout).fill_null(False))["row"]
        reordered = reordered_header_rows(maybe.filter(~pl.col("row").is_in(headers.implode())), layout)
        for reason, rows in ((HEADER_LINE, headers), (HEADER_MISMATCH, reordered)):
            reject_rows += rows.to_list()
            reject_reasons += [reason] * len(rows)
        if len(headers) or len(reordered):
            cells = cells.filter(~pl.col("row").is_in(pl.concat([headers, reordered]).implode()))
    return cells, reject_rows, reject_reasons


def parse_csv(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], *,
              max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
              mapping: MappingSpec | None = None) -> Parsed:
    """Any delimited CDR file, laid out by ``--mapping`` (there is no default layout to guess)."""
    return parse_delimited(records, buf, schema, resolve(None, mapping), max_bytes)
