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

import argparse
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import FatalError, UsageError
from pipeline.privacy.deadlines import MAX_EXTENSION_MONTHS, due_date, is_overdue
from pipeline.privacy.requests import ACCESS_TYPES, InvalidRequest, check_request_id, utc_text

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


# --------------------------------------------------------------------------- command line

def _register(args: argparse.Namespace) -> CaseRegister:
    if not args.register:
        raise UsageError(f"no case register given: pass --register FILE or set {ENV_REGISTER}")
    return CaseRegister(args.register)


def _today(args: argparse.Namespace) -> date:
    if not getattr(args, "today", None):
        return datetime.now(timezone.utc).date()
    try:
        return date.fromisoformat(args.today)
    except ValueError:
        raise UsageError("--today: expected a date, YYYY-MM-DD") from None


def _request_id(value: str) -> str:
    try:
        return check_request_id(value)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None


def _cmd_status(args: argparse.Namespace) -> int:
    """Open requests, most urgent first; request ids only, never subjects."""
    today = _today(args)
    register = _register(args)
    if not register.path.is_file():  # a mistyped path must not look like "nothing open"
        raise UsageError(f"no case register at {register.path}: check --register (it is created by "
                         "`cdrpipe privacy submit --register`)")
    cases = sorted(register.cases().values(), key=lambda c: (c.answered is not None, c.due or "9999",
                                                                     c.request_id))
    rows = [c for c in cases if args.all or not c.answered]
    if args.json:
        for c in rows:
            print(json.dumps({"request_id": c.request_id, "type": c.type, "subject_kind": c.subject_kind,
                              "received": c.received, "due": c.due, "extended_months": c.extended_months,
                              "days_left": c.days_left(today), "state": c.state(today)}))
        return 0
    print(f"{'request id':<32} {'type':<18} {'received':<10} {'due':<10} {'days left':>9}  state")
    for c in rows:
        left = c.days_left(today)
        state = c.state(today) + (f" (extended {c.extended_months} mo)" if c.extended_months else "")
        print(f"{c.request_id:<32} {c.type or '?':<18} {(c.received or '?')[:10]:<10} {c.due or '?':<10} "
              f"{'' if left is None else left:>9}  {state}")
    overdue = sum(1 for c in rows if c.state(today) == "overdue")
    print(f"{sum(1 for c in rows if not c.answered)} open, {overdue} overdue (as of {today})", file=sys.stderr)
    return 0


def _cmd_extend(args: argparse.Namespace) -> int:
    case = _register(args).record_extended(_request_id(args.request_id), args.months, _today(args))
    print(json.dumps({"request_id": case.request_id, "extended_months": case.extended_months, "due": case.due}))
    return 0


def _cmd_close(args: argparse.Namespace) -> int:
    register = _register(args)
    request_id = _request_id(args.request_id)
    case = register.cases().get(request_id)
    if case is None:
        raise UsageError(f"request {request_id} is not in the register {register.path}")
    if case.type in ACCESS_TYPES and not args.force:
        raise UsageError(f"request {request_id} is an {case.type} request: it is answered by `cdrpipe privacy "
                         "export`, which records it (use --force to close it otherwise, e.g. when it was refused)")
    register.record_answered(request_id, "closed")
    return 0


def _register_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--register", default=os.environ.get(ENV_REGISTER),
                   help=f"the DPO's case register, a JSON-lines file (env {ENV_REGISTER})")


def register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe privacy status|extend|close``."""
    p = sub.add_parser("status", help="open requests and their due dates (by request id; never a subject)",
                       description="List the requests of the case register that are not answered yet, most urgent "
                                   "first, with the Art. 12(3) due date and the days left; overdue ones say so.")
    _register_argument(p)
    p.add_argument("--all", action="store_true", help="answered requests too")
    p.add_argument("--json", action="store_true", help="one JSON object per request instead of a table")
    p.add_argument("--today", default=None, help="compute days left as of this date (default: today, UTC)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("extend", help="extend a request's deadline by one or two months (Art. 12(3))",
                       description="Record an extension of the answer period by up to two further months, where "
                                   "the complexity or number of requests makes it necessary. Allowed only before "
                                   "the first month ends; tell the subject, with the reasons, at the same time.")
    _register_argument(p)
    p.add_argument("--request-id", required=True, help="the request to extend")
    p.add_argument("--months", type=int, choices=(1, 2), required=True, help="further months, in all at most 2")
    p.add_argument("--today", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_extend)

    p = sub.add_parser("close", help="record that a request was answered (objection, restriction, erasure)",
                       description="Record that the subject was told what was done. Access and portability "
                                   "requests are recorded by `cdrpipe privacy export` itself.")
    _register_argument(p)
    p.add_argument("--request-id", required=True, help="the request answered")
    p.add_argument("--force", action="store_true", help="also close an access or portability request")
    p.set_defaults(func=_cmd_close)


__all__ = ["ENV_REGISTER", "Case", "CaseRegister", "register_commands"]
