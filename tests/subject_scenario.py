"""One subscriber's calls, built by hand, for the subject access tests (file mode and Kafka).

The subject appears in five spellings, as caller and as callee. Around them: a caller who
presents their number, a caller who withholds it by a presentation flag (their number is in the
record, so only the flag hides it), one who withholds it by SIP privacy, an anonymous CLI, a
foreign number, a call to themselves, strangers, a near-miss number, the subject's number in a
non-party field, and a call just outside the window. What the export must hold is known here
by construction, not recomputed with the code under test.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable

from jsonschema import Draft202012Validator

SUBJECT = "+447700900123"
FORMS = ["07700 900123", "+44 7700 900123", "0044 7700900123", "tel:+447700900123", "(07700) 900-123"]
BOB, BOB_BILL = "+442079460001", "020 7946 0001"
CAROL = "+447700900555"            # withholds her number when she calls the subject
FOREIGN, FOREIGN_BILL = "+33612345678", "+33 6 12 34 56 78"
STRANGER = "+447700900777"
SUBJECT_IMSI, SUBJECT_IMEI = "234150001112223", "35925406111111"
BOB_IMSI, BOB_IMEI = "234159998887776", "35925406999999"
#: Digit runs that must never appear in an export: the withholding caller, the other party's device.
NEVER_IN_EXPORT = ("7700900555", BOB_IMSI, BOB_IMEI, "WR-2026-SECRET", "PC-4411")
WARRANT, OFFICER = "WR-2026-SECRET", "PC-4411"


def base_day(today: dt.date | None = None) -> dt.date:
    """Three weeks ago: inside any retention period, never in the future."""
    return (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=21)


def window(day: dt.date) -> tuple[str, str]:
    """``--from``/``--to`` of the export: the day before the first call to a week after."""
    return str(day - dt.timedelta(days=1)), str(day + dt.timedelta(days=7))


def records(day: dt.date) -> tuple[list[bytes], dict[str, str]]:
    """Raw lines, and the subject's record ids in the window mapped to what the export must show.

    Expected values: ``"out:<bill text>"``, ``"in:<bill text>"``, ``"in:withheld"``, ``"self"``.
    """
    lines: list[bytes] = []
    expect: dict[str, str] = {}

    def at(offset_days: int, hour: int) -> str:
        return f"{day + dt.timedelta(days=offset_days)}T{hour:02d}:{17 + offset_days:02d}:05Z"

    def add(rid: str, cli: str, dialled: str, start: str, shows: str | None = None, **extra: Any) -> None:
        doc = {"record_id": rid, "cli": cli, "dialled": dialled, "start": start, "duration": 60 + len(lines),
               "call_type": "voice", "status": "answered", **extra}
        lines.append(json.dumps(doc).encode())
        if shows is not None:
            expect[rid] = shows

    mine = {"imsi": SUBJECT_IMSI, "imei": SUBJECT_IMEI, "cell_id": "234-15-1234-5678", "ip": "198.51.100.23"}
    bobs = {"imsi": BOB_IMSI, "imei": BOB_IMEI, "cell_id": "234-15-9999-1111", "ip": "203.0.113.9"}
    add("sa-01", FORMS[0], "020 7946 0001", at(0, 8), f"out:{BOB_BILL}", **mine)
    add("sa-02", BOB, FORMS[1], at(0, 9), f"in:{BOB_BILL}", **bobs)
    add("sa-03", FORMS[2], CAROL, at(0, 10), "out:07700 900555", **mine)
    add("sa-04", CAROL, FORMS[3], at(0, 11), "in:withheld", presentation="restricted")
    add("sa-05", "anonymous", FORMS[4], at(1, 8), "in:withheld")
    add("sa-06", FORMS[0], FOREIGN, at(1, 9), f"out:{FOREIGN_BILL}", **mine)
    add("sa-07", CAROL, FORMS[1], at(2, 10), "in:withheld", privacy="id")
    add("sa-08", FORMS[2], FORMS[3], at(2, 11), "self", **mine)
    add("sa-09", BOB, FORMS[4], at(3, 12), f"in:{BOB_BILL}", presentation="allowed", **bobs)
    add("sa-10", CAROL, FORMS[0], at(3, 13), "in:withheld", presentation="prohibited-by-switch")  # unknown value
    # Not the subject's:
    add("sx-01", BOB, CAROL, at(0, 12))
    add("sx-02", STRANGER, BOB, at(1, 12), note="07700 900123")                 # the number only in a note
    add("sx-03", "07700 900124", BOB, at(1, 13))                                # one digit off
    add("sx-04", FORMS[1], BOB, f"{day - dt.timedelta(days=5)}T10:00:00Z")      # before the window
    return lines, expect


def export_schema() -> dict[str, Any]:
    from pipeline.privacy.requests import load_schema

    return load_schema("subject-export.v1.json")


def schema_errors(doc: Any, definition: str | None = None) -> list[str]:
    """Validation errors of an export (or of one ``$defs`` entry of its schema)."""
    schema = export_schema()
    if definition is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    v = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:160]}" for e in v.iter_errors(doc)]


def check_export(doc: dict[str, Any], expect: dict[str, str], subject_tokens: set[str],
                 record_ref: Callable[[str], str]) -> None:
    """Everything an export of this scenario must satisfy (both sources included).

    ``record_ref`` gives a record id's ref under the worker keyring (``Tokeniser.token_one("record", id)``):
    both stores name a record by its ref, never by the switch's id.
    """
    assert schema_errors(doc) == []
    raw_ids = list(expect)
    expect = {record_ref(rid): shows for rid, shows in expect.items()}
    rows = doc["records"]
    by_source: dict[str, dict[str, dict[str, Any]]] = {"analytics": {}, "retained": {}}
    for row in rows:
        assert row["record_id"] not in by_source[row["source"]], f"{row['record_id']} twice"
        by_source[row["source"]][row["record_id"]] = row
    # Exactly the subject's records, from both stores, and the counts say so.
    assert set(by_source["retained"]) == set(expect)
    assert set(by_source["analytics"]) == set(expect)
    assert doc["sources"]["retained"]["records"] == doc["sources"]["analytics"]["records"] == len(expect)
    text = json.dumps(doc)
    for rid in raw_ids:
        assert rid not in text, f"record id {rid} in clear in the export"
    for marker in NEVER_IN_EXPORT:
        assert marker not in text, f"{marker} leaked into the export"
    for token in subject_tokens:
        assert token not in text, "the subject's own token must be shown as their number"
    for word in ("warrant", "officer", "audit", "prev_hash", "intercept"):
        assert word not in text.lower(), f"'{word}' in an export"
    carol_tokens = {r["other_party"] for r in by_source["analytics"].values()
                    if r["record_id"] == record_ref("sa-03")}
    assert len(carol_tokens) == 1 and next(iter(carol_tokens)).count(":") == 1  # a token for the call she got
    for rid, shows in expect.items():
        ret, ana = by_source["retained"][rid], by_source["analytics"][rid]
        assert ret["subject_number"] == ana["subject_number"] == SUBJECT
        assert ret["time_precision"] == "second" and ana["time_precision"] == "hour"
        assert ana["start"][:13] == ret["start"][:13] and ana["start"].endswith(":00:00Z")
        kind, _, shown = shows.partition(":")
        if kind == "self":
            assert ret["direction"] == ana["direction"] == "self"
            assert ana["other_party"] == SUBJECT
        elif kind == "out":
            assert ret["direction"] == ana["direction"] == "outgoing"
            assert ret["other_party"] == shown and ret["other_party_form"] == "number"
            assert ana["other_party_form"] == "token"
            assert ret["imsi"] == SUBJECT_IMSI and ana["imsi"] and ana["cell_id"] == "234-15-1234"
        elif shown == "withheld":
            assert ret["direction"] == ana["direction"] == "incoming"
            for row in (ret, ana):
                assert row["other_party"] is None and row["other_party_form"] == "withheld", rid
            assert ret["imsi"] is None and ana["imsi"] is None
        else:
            assert ret["direction"] == ana["direction"] == "incoming"
            assert ret["other_party"] == shown and ana["other_party_form"] == "token"
            assert ana["other_party"] not in carol_tokens
            assert ret["imsi"] is ret["cell_id"] is ana["imsi"] is ana["cell_id"] is None
    # The withholding caller's token is in her outgoing-to-subject record only as the callee of sa-03.
    incoming_tokens = {r["other_party"] for r in by_source["analytics"].values() if r["direction"] == "incoming"}
    assert not (incoming_tokens & carol_tokens)
