"""Times as mediation systems write them, to UTC: the slow, exact reader behind the native fast path.

The native core settles ISO-8601 (``T`` or space between date and time) with ``Z``/an offset
(``+01:00``, ``+0100``, ``+01``, one space before it allowed)/no offset, epoch values (whole
or fractional) and the compact ``YYYYMMDDhhmmss`` itself; every other shape (odd forms, more space before the offset) comes here
once per distinct value, and the vault reads times with the same function, so a record
is dated the same way wherever it is read.
"""
from __future__ import annotations

from pipeline.lazy import polars as pl

#: The shape most mediation systems emit (``Z`` or an offset) is tried on every value first.
_ISO_TZ = "%Y-%m-%dT%H:%M:%S%.f%#z"
#: ``YYYYMMDDhhmmss``, naive: exactly 14 digits, never a millisecond epoch.
COMPACT_TIME = r"^\d{14}$"


def parse_times(raw: pl.Series) -> pl.Series:
    """UTC datetimes from ISO-8601 (any offset, naive = UTC), ``YYYY-MM-DD HH:MM:SS``, epoch or ``YYYYMMDDhhmmss``.

    Epoch values are told apart by size: up to 11 integer digits are seconds, 12-13
    milliseconds, 15-16 microseconds (what mediation systems actually emit). Exactly 14 digits
    are the compact date-time switches write (``20261125093654``, naive = UTC), never
    milliseconds: a 14-digit millisecond epoch is after the year 2286, and reading the compact
    form as one dated calls six centuries ahead. The common ISO shape is parsed for the whole
    column at once; only what it leaves are tried against the other shapes.
    """
    s = raw.str.strip_chars()
    out = s.str.to_datetime(_ISO_TZ, strict=False, time_unit="us", time_zone="UTC")
    rest = (out.is_null() & s.is_not_null()).arg_true()
    if len(rest):
        out = out.scatter(rest, _parse_other_times(s.gather(rest)))
    return out.rename(raw.name)


def _parse_other_times(s: pl.Series) -> pl.Series:
    """The shapes after the common one: epoch numbers, compact and naive ISO, and the space-separated forms."""
    number = s.str.contains(r"^\d{1,16}(\.\d+)?$") & ~s.str.contains(r"^\d{14}(\.\d+)?$")
    digits = s.str.replace(r"\.\d+$", "").str.len_chars()
    as_float = s.cast(pl.Float64, strict=False)
    micros = (pl.when(digits >= 15).then(as_float).when(digits >= 12).then(as_float * 1e3)
              .otherwise(as_float * 1e6)).cast(pl.Int64, strict=False)
    return s.to_frame("s").select(pl.coalesce(
        pl.when(number).then(micros.cast(pl.Datetime("us", "UTC"))),
        # Exactly 14 digits (strptime alone would also read 13, taking one digit for the seconds).
        pl.when(pl.col("s").str.contains(COMPACT_TIME))
        .then(pl.col("s").str.to_datetime("%Y%m%d%H%M%S", strict=False, time_unit="us"))
        .dt.replace_time_zone("UTC"),
        pl.col("s").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC"),
        pl.col("s").str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", strict=False, time_unit="us", time_zone="UTC"),
        pl.col("s").str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC"),
    ).alias("t"))["t"]


def format_times(ts: pl.Series) -> pl.Series:
    """ISO-8601 UTC text with a ``Z``: the one time format analytics sees.

    Coarsened times repeat (a batch spans a few hours), so each distinct value is formatted
    once when that saves work; ``strftime`` costs about 0.1 µs a value.
    """
    distinct = ts.unique().drop_nulls()
    if len(distinct) * 4 > len(ts):
        return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ts.replace_strict(distinct, distinct.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), default=None,
                             return_dtype=pl.String)
