"""The DPO's case register: which requests are open, when each is due, `cdrpipe privacy status`.

Why a register file and not a Kafka topic: the only topic that holds requests is
``privacy.requests``, which carries the raw subject, keeps 30 days (an extended request runs
for three months) and is readable by the privacy app alone. The register is the DPO's own
case file, kept where the DPO keeps cases: an append-only JSON-lines file (mode 0600) of
events, each naming a request by its id, never its subject:

* ``received`` — written by ``cdrpipe privacy submit --register FILE`` (the receipt: id, type,
  subject kind, received, due, topic coordinates);
* ``extended`` — ``cdrpipe privacy extend``: Art. 12(3)'s further one or two months, only
  while the request is not yet overdue (the subject must be told within the first month);
* ``answered`` — written by ``cdrpipe privacy export`` when it delivers an access or
  portability export, or by ``cdrpipe privacy close`` for the other types (the DPO has told
  the subject what was done).

``cdrpipe privacy status`` folds the events into one line per request: id, type, received,
due, days left, and ``open``/``overdue``/``answered``. Because no event carries a subject, the
status output cannot print one.

Appends take an exclusive ``flock`` so two DPO staff recording at once do not interleave lines.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import FatalError, UsageError
from pipeline.privacy.deadlines import MAX_EXTENSION_MONTHS, due_date, is_overdue
from pipeline.privacy.requests import ACCESS_TYPES, check_request_id, utc_text

ENV_REGISTER = "CDRPIPE_PRIVACY_REGISTER"
EVENTS = ("received", "extended", "answered")
#: Fields an event may hold; anything else is refused on write (a subject cannot ride along).
_FIELDS = {"received": {"request_id", "type", "subject_kind", "received", "due", "topic", "partition", "offset"},
           "extended": {"request_id", "months", "due"},
           "answered": {"request_id", "how", "records"}}


@dataclass
class Case:
    """One request as the register sees it."""

    request_id: str
    type: str | None = None
    subject_kind: str | None = None
    received: str | None = None
    due: str | None = None
    extended_months: int = 0
    answered: str | None = None

    def state(self, today: date) -> str:
        if self.answered:
            return "answered"
        if self.due and is_overdue(date.fromisoformat(self.due), today):
            return "overdue"
        return "open"

    def days_left(self, today: date) -> int | None:
        return (date.fromisoformat(self.due) - today).days if self.due and not self.answered else None


class CaseRegister:
    """Append events to, and read cases from, one register file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CaseRegister({str(self.path)!r})"

    def _append(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        extra = set(fields) - _FIELDS[event]
        if extra:
            raise ValueError(f"register event {event}: unexpected fields {sorted(extra)}")
        check_request_id(str(fields["request_id"]))
        doc = {"event": event, **fields, "recorded_at": utc_text(datetime.now(timezone.utc))}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return doc

    def record_received(self, receipt: dict[str, Any]) -> None:
        """The receipt of `cdrpipe privacy submit` (it names the request, never the subject)."""
        self._append("received", {k: receipt[k] for k in _FIELDS["received"] if k in receipt})

    def record_extended(self, request_id: str, months: int, today: date) -> Case:
        """Art. 12(3) extension; refused once the request is overdue, answered, or extended too far."""
        case = self.cases().get(request_id)
        if case is None or case.received is None:
            raise UsageError(f"request {request_id} is not in the register {self.path}")
        if case.answered:
            raise UsageError(f"request {request_id} was answered on {case.answered[:10]}: nothing to extend")
        if case.state(today) == "overdue":
            raise UsageError(f"request {request_id} is overdue since {case.due}: an extension must be decided and "
                             "told to the subject within the first month (Art. 12(3))")
        total = case.extended_months + months
        if months < 1 or total > MAX_EXTENSION_MONTHS:
            raise UsageError(f"--months: the period can be extended by at most {MAX_EXTENSION_MONTHS} further months "
                             f"in all (already extended by {case.extended_months})")
        received = datetime.fromisoformat(case.received.replace("Z", "+00:00"))
        due = due_date(received, total).isoformat()
        self._append("extended", {"request_id": request_id, "months": total, "due": due})
        case.extended_months, case.due = total, due
        return case

    def record_answered(self, request_id: str, how: str, records: dict[str, int] | None = None) -> None:
        fields: dict[str, Any] = {"request_id": request_id, "how": how}
        if records is not None:
            fields["records"] = records
        self._append("answered", fields)

    def cases(self) -> dict[str, Case]:
        """Every request in the register, its events folded in file order."""
        if not self.path.exists():
            return {}
        out: dict[str, Case] = {}
        with self.path.open() as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    event, rid = doc["event"], str(doc["request_id"])
                except (ValueError, KeyError, TypeError):
                    raise FatalError(f"case register {self.path}: line {number} is not a register event") from None
                case = out.setdefault(rid, Case(rid))
                if event == "received":
                    case.type, case.subject_kind = doc.get("type"), doc.get("subject_kind")
                    case.received, case.due = doc.get("received"), doc.get("due")
                    if case.due is None and case.received:  # a receipt from before due dates existed
                        case.due = due_date(datetime.fromisoformat(case.received.replace("Z", "+00:00"))).isoformat()
                elif event == "extended":
                    case.extended_months, case.due = int(doc["months"]), str(doc["due"])
                elif event == "answered":
                    case.answered = str(doc.get("recorded_at") or "")
        return out

    def by_urgency(self, *, answered: bool = False) -> list[Case]:
        """Open requests (and with ``answered`` the answered ones, last), the nearest due date first."""
        cases = sorted(self.cases().values(), key=lambda c: (c.answered is not None, c.due or "9999", c.request_id))
        return [c for c in cases if answered or not c.answered]

    def access_request(self, request_id: str) -> Case:
        """The access or portability request ``request_id`` (what an export answers); a usage error otherwise."""
        case = self.cases().get(request_id)
        if case is None:
            raise UsageError(f"request {request_id} is not in the register {self.path}")
        if case.type not in ACCESS_TYPES:
            raise UsageError(f"request {request_id} is a {case.type} request, not access or portability")
        return case

    def close(self, request_id: str, *, force: bool = False) -> None:
        """Record that the subject was told what was done; an access or portability request is answered by
        its export, which records itself, so closing one otherwise (e.g. refused) needs ``force``."""
        case = self.cases().get(request_id)
        if case is None:
            raise UsageError(f"request {request_id} is not in the register {self.path}")
        if case.type in ACCESS_TYPES and not force:
            raise UsageError(f"request {request_id} is an {case.type} request: it is answered by `cdrpipe privacy "
                             "export`, which records it (use --force to close it otherwise, e.g. when it was refused)")
        self.record_answered(request_id, "closed")

__all__ = ["ENV_REGISTER", "Case", "CaseRegister"]
