"""The legal clock of a data-subject request: GDPR Art. 12(3) time limits.

Why this is its own module: the due date is computed when a request is submitted (it travels
in the request, schema v2), again for v1 requests that lack it, and when the case register
shows what is open or overdue. One function per rule keeps those three from drifting apart.

The rules, as the EDPB reads them (Guidelines 01/2022 on the right of access, section 5.3,
applying Regulation 1182/71 on periods, dates and time limits):

* The controller answers "without undue delay and in any event within one month of receipt".
  The month runs from the day of receipt to the same day of the next month; when that day
  does not exist, the last day of that month (31 January -> 28/29 February).
* The period "may be extended by two further months where necessary, taking into account the
  complexity and number of the requests". The subject must be told of the extension, with the
  reasons, within the first month. So an extension is allowed only while the request is not yet
  overdue, and the total is at most three months from receipt.
"""
from __future__ import annotations

import calendar
from datetime import date, datetime, timezone

#: Art. 12(3): one month, extendable by at most two further months.
BASE_MONTHS = 1
MAX_EXTENSION_MONTHS = 2


def add_months(day: date, months: int) -> date:
    """``day`` plus whole calendar months, clamped to the last day of the target month."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def received_day(received: datetime) -> date:
    """The UTC day of receipt (the clock runs in UTC everywhere in cdrpipe)."""
    return received.astimezone(timezone.utc).date()


def due_date(received: datetime, extension_months: int = 0) -> date:
    """The last day to answer: receipt + one month (+ an extension of 1 or 2 months)."""
    if not 0 <= extension_months <= MAX_EXTENSION_MONTHS:
        raise ValueError(f"an extension is 1 or {MAX_EXTENSION_MONTHS} further months (Art. 12(3))")
    return add_months(received_day(received), BASE_MONTHS + extension_months)


def is_overdue(due: date, today: date) -> bool:
    """A request is overdue on the day after its due date."""
    return today > due


__all__ = ["BASE_MONTHS", "MAX_EXTENSION_MONTHS", "add_months", "due_date", "is_overdue", "received_day"]
