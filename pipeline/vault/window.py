"""The time window a warrant, a query or a subject request covers: ``[from, to)`` in µs since the epoch.

A bare ``--to`` (or ``--expires``) date includes that whole day; a naive time is UTC.
"""
from __future__ import annotations

import datetime as _dt
import re

from pipeline.errors import UsageError
from pipeline.vault.keystore import day_number
from pipeline.vault.store import DAY_US


def parse_instant(text: str, flag: str, *, end: bool) -> int:
    """µs since the epoch of an ISO date or date-time (naive = UTC); a bare ``--to`` date includes that day."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = _dt.date.fromisoformat(value)
            return (day_number(day) + (1 if end else 0)) * DAY_US
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO-8601 date or date-time (e.g. 2026-11-01 or "
                         "2026-11-01T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    delta = when - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_window(start: str | None, end: str | None) -> tuple[int, int]:
    """``[from, to)`` in µs; both required, ``from`` before ``to``."""
    if not start or not end:
        raise UsageError("--from and --to are required: a warrant covers a time window")
    lo, hi = parse_instant(start, "--from", end=False), parse_instant(end, "--to", end=True)
    if hi <= lo:
        raise UsageError("--to must be after --from")
    return lo, hi


def now_us() -> int:
    """Now, in µs since the epoch (UTC)."""
    return int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1_000_000)


def iso(us: int) -> str:
    """µs since the epoch as ISO-8601 UTC to the second, with ``Z`` (as the audit log writes windows)."""
    when = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
