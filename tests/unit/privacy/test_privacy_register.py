"""The DPO's case register and `cdrpipe privacy status|extend|close`: due dates, overdue requests,
Art. 12(3) extensions, and no subject anywhere in the register or the status output."""
from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone

import pytest

from pipeline.cli import EXIT_OK, EXIT_USAGE, main
from pipeline.privacy.register import CaseRegister
from pipeline.privacy.requests import make_request


def receipt(request_id: str, type_: str, received: datetime) -> dict:
    """What `cdrpipe privacy submit --register` records: the receipt of a real request."""
    doc = make_request(type_, "msisdn", "07700 900123", request_id=request_id, received=received)
    return {"request_id": doc["request_id"], "type": doc["type"], "subject_kind": "msisdn",
            "received": doc["received"], "due": doc["due"], "topic": "privacy.requests", "partition": 0, "offset": 3}


@pytest.fixture
def register(tmp_path) -> CaseRegister:
    reg = CaseRegister(tmp_path / "cases.jsonl")
    at = lambda m, d: datetime(2026, m, d, 9, 30, tzinfo=timezone.utc)  # noqa: E731
    reg.record_received(receipt("sar-late", "access", at(10, 1)))       # due 2026-11-01
    reg.record_received(receipt("sar-fresh", "portability", at(11, 20)))  # due 2026-12-20
    reg.record_received(receipt("obj-9", "objection", at(10, 15)))       # due 2026-11-15
    reg.record_received(receipt("sar-done", "access", at(10, 2)))
    reg.record_answered("sar-done", "export", {"analytics": 3, "retained": 3})
    return reg


def status(register: CaseRegister, capsys, *extra: str) -> list[dict]:
    capsys.readouterr()
    assert main(["privacy", "status", "--register", str(register.path), "--today", "2026-11-10", "--json",
                 *extra]) == EXIT_OK
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_status_lists_open_requests_most_urgent_first_and_marks_overdue_ones(register, capsys):
    rows = status(register, capsys)
    assert [(r["request_id"], r["state"], r["due"], r["days_left"]) for r in rows] == [
        ("sar-late", "overdue", "2026-11-01", -9),
        ("obj-9", "open", "2026-11-15", 5),
        ("sar-fresh", "open", "2026-12-20", 40)]
    assert [r["request_id"] for r in status(register, capsys, "--all")][-1] == "sar-done"


def test_the_table_names_requests_never_subjects(register, capsys):
    assert main(["privacy", "status", "--register", str(register.path), "--today", "2026-11-10"]) == EXIT_OK
    out = capsys.readouterr()
    assert "sar-late" in out.out and "overdue" in out.out and "1 overdue" in out.err
    text = out.out + out.err + register.path.read_text()
    assert "7700" not in text and "900123" not in text
    assert stat.S_IMODE(os.stat(register.path).st_mode) == 0o600


def test_extension_moves_the_due_date_only_within_the_first_month(register, capsys):
    assert main(["privacy", "extend", "--register", str(register.path), "--request-id", "sar-fresh",
                 "--months", "2", "--today", "2026-11-25"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"request_id": "sar-fresh", "extended_months": 2,
                                                   "due": "2027-02-20"}
    # Never more than two further months in all, and never once overdue.
    assert main(["privacy", "extend", "--register", str(register.path), "--request-id", "sar-fresh",
                 "--months", "1", "--today", "2026-11-25"]) == EXIT_USAGE
    assert main(["privacy", "extend", "--register", str(register.path), "--request-id", "sar-late",
                 "--months", "1", "--today", "2026-11-10"]) == EXIT_USAGE
    rows = {r["request_id"]: r for r in status(register, capsys)}
    assert rows["sar-fresh"]["due"] == "2027-02-20" and rows["sar-fresh"]["extended_months"] == 2


def test_close_answers_other_requests_but_not_an_access_request_without_force(register, capsys):
    assert main(["privacy", "close", "--register", str(register.path), "--request-id", "obj-9"]) == EXIT_OK
    assert main(["privacy", "close", "--register", str(register.path), "--request-id", "sar-late"]) == EXIT_USAGE
    assert main(["privacy", "close", "--register", str(register.path), "--request-id", "nope"]) == EXIT_USAGE
    assert [r["request_id"] for r in status(register, capsys)] == ["sar-late", "sar-fresh"]


def test_register_keeps_only_receipt_fields_so_no_subject_can_ride_along(register):
    register.record_received(dict(receipt("sar-x", "access", datetime(2026, 11, 1, tzinfo=timezone.utc)),
                                  subject={"kind": "msisdn", "value": "+447700900123"}))
    assert "7700900123" not in register.path.read_text()
    with pytest.raises(ValueError):
        register._append("answered", {"request_id": "sar-x", "how": "export", "subject": "+447700900123"})


def test_status_refuses_a_register_that_does_not_exist(tmp_path):
    """A mistyped path must not look like "no open requests"."""
    assert main(["privacy", "status", "--register", str(tmp_path / "typo.jsonl")]) == EXIT_USAGE
    assert main(["privacy", "status"]) == EXIT_USAGE or "CDRPIPE_PRIVACY_REGISTER" in os.environ
