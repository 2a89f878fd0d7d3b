"""The retention period: which days the vault may still hold, for ingest, query and purge alike.

UK Investigatory Powers Act 2016 s.87(3): data may be kept for at most the period *beginning
with the day of the communication*. So a day is past retention once that period, counted from
the day itself, has ended; the first day still kept is the cut-off. One function computes it,
so ``ingest`` (does not store a record already past it), ``query`` (refuses a window reaching
before it, never returns a record before it) and ``purge`` (destroys the days before it) can
never disagree about a day.
"""
from __future__ import annotations

import calendar
import datetime as _dt
import os
import re

from pipeline.errors import UsageError

DEFAULT_RETENTION = "12mo"
#: The shortest period a purge may enforce without --allow-early (IPA 2016 s.87(3): 12 months).
LEGAL_RETENTION = "12mo"
ENV_RETENTION = "CDRPIPE_VAULT_RETENTION"
_RETENTION = re.compile(r"^(\d{1,4})(d|w|mo|y)$")


def period(spec: str | None) -> str:
    """The period a command enforces: ``--retention``, else ``$CDRPIPE_VAULT_RETENTION``, else 12mo (checked)."""
    text = (spec or os.environ.get(ENV_RETENTION) or DEFAULT_RETENTION).strip().lower()
    subtract_period(_dt.date(2000, 1, 1), text)
    return text


def subtract_period(today: _dt.date, spec: str) -> _dt.date:
    """``today`` minus a period like ``12mo``, ``400d``, ``2y`` or ``6w`` (calendar months, day clamped)."""
    match = _RETENTION.match(spec.strip().lower())
    if not match:
        raise UsageError(f"--retention {spec!r}: expected a number and a unit: d, w, mo or y (e.g. 12mo)")
    n, unit = int(match.group(1)), match.group(2)
    if n <= 0:
        raise UsageError("--retention must be positive")
    if unit == "d":
        return today - _dt.timedelta(days=n)
    if unit == "w":
        return today - _dt.timedelta(weeks=n)
    months = n * 12 if unit == "y" else n
    year, month0 = divmod(today.year * 12 + today.month - 1 - months, 12)
    return _dt.date(year, month0 + 1, min(today.day, calendar.monthrange(year, month0 + 1)[1]))


def retention_cutoff(today: _dt.date, spec: str) -> _dt.date:
    """First day to keep: a day is purged once the period *beginning with* that day has ended (s.87(3))."""
    return subtract_period(today, spec) + _dt.timedelta(days=1)


def utc_today() -> _dt.date:
    """Today's date in UTC (the day numbering of the vault)."""
    return _dt.datetime.now(_dt.timezone.utc).date()
