"""Privacy requests: schema validation that never echoes a subject, the pipeline's own tokens,
an order-independent idempotent state merge, and the records the privacy app publishes."""
from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime, timezone

import orjson
import polars as pl
import pytest
from jsonschema import Draft202012Validator

from pipeline.core.router import Router, Source
from pipeline.keys import rotate
from pipeline.logs import JsonFormatter
from pipeline.privacy.follower import read_suppression
from pipeline.privacy.requests import (InvalidRequest, SubjectTokeniser, load_schema, make_request,
                                       parse_request, schema_errors)
from pipeline.privacy.state import (TokenRequest, active_grounds, apply_request, erasure_notice, is_active,
                                    suppression_records)

NUMBER = "+447700900123"
NUMBER_FORMS = ("07700 900123", "+44 7700 900123", "0044 7700900123", "(07700) 900-123")
IMSI = "234150123456789"
RECEIVED = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)


def _valid() -> dict:
    return {"request_id": "case-2026-0042", "type": "objection",
            "subject": {"kind": "msisdn", "value": NUMBER}, "received": "2026-03-01T09:30:00Z"}


# --------------------------------------------------------------------------- schema

def test_request_schema_accepts_what_submit_builds() -> None:
    doc = make_request("restriction", "msisdn", "07700 900123", request_id="case-1", received=RECEIVED)
    assert doc == {"request_id": "case-1", "type": "restriction", "subject": {"kind": "msisdn", "value": NUMBER},
                   "received": "2026-03-01T09:30:00.000Z", "due": "2026-04-01"}
    assert schema_errors(doc) == []
    for name in ("privacy-request.v1.json", "privacy-request.v2.json"):
        Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("received"), "(record): missing received"),
    (lambda d: d.update(type="forget_me"),
     "type: must be one of objection, restriction, restriction_lifted, erasure, access, portability"),
    (lambda d: d.update(due="1 April"), "due: fails 'pattern'"),
    (lambda d: d["subject"].update(kind="imei"), "subject/kind: must be one of msisdn, imsi"),
    (lambda d: d.update(received="2026-03-01 09:30"), "received: fails 'pattern'"),
    (lambda d: d.update(request_id="07700900123"), "request_id: fails 'not'"),
    (lambda d: d.update(note="called on " + NUMBER), "(record): has properties the schema does not allow"),
    (lambda d: d["subject"].update(value="call me on " + NUMBER), "subject/value: fails 'pattern'"),
    (lambda d: d["subject"].update(kind="imsi", value="+44 7700"), "subject/value: fails 'pattern'"),
])
def test_schema_errors_name_the_rule_never_the_value(mutate, expected) -> None:
    doc = _valid()
    mutate(doc)
    errors = schema_errors(doc)
    assert expected in errors
    text = " ".join(errors)
    assert "7700" not in text and "900123" not in text and "forget_me" not in text


def test_erasure_notice_and_aggregate_schemas_are_valid_2020_12() -> None:
    for name in ("erasure-notice.v1.json", "aggregate.v1.json"):
        Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("kind, value, reason", [
    ("msisdn", "999", "invalid_subject"),           # a short code is not a subscriber
    ("msisdn", "12345", "invalid_subject"),         # an extension
    ("msisdn", "VODAFONE", "invalid_subject"),      # an SMS sender id
    ("msisdn", "", "invalid_subject"),
    ("imsi", "12345", "invalid_subject"),           # too short
    ("imsi", "1234567890123456", "invalid_subject"),  # too long
])
def test_make_request_refuses_subjects_that_would_match_nothing(kind, value, reason) -> None:
    with pytest.raises(InvalidRequest) as exc:
        make_request("objection", kind, value)
    assert exc.value.reason == reason
    assert (value or "\0") not in str(exc.value)


def test_number_shaped_request_ids_are_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        make_request("objection", "msisdn", NUMBER, request_id="447700900123")
    assert exc.value.reason == "invalid_request_id"
    assert "447700900123" not in str(exc.value)


def test_parse_request_hides_the_subject_from_repr_and_rejects_junk() -> None:
    req = parse_request(json.dumps(_valid()).encode())
    assert req.value == NUMBER and req.kind == "msisdn" and req.received == RECEIVED
    assert "7700" not in repr(req) and "7700" not in str(req)
    for raw, reason in ((None, "empty"), (b"{not json", "invalid_json"), (b"[]", "schema"),
                        (json.dumps({**_valid(), "type": "x"}).encode(), "schema")):
        with pytest.raises(InvalidRequest) as exc:
            parse_request(raw)
        assert exc.value.reason == reason


def test_invalid_request_log_lines_hold_no_subject(caplog) -> None:
    """What the worker logs for a bad request is the exception text: it must be value-free."""
    doc = _valid()
    doc["subject"]["value"] = NUMBER + "x"
    with caplog.at_level(logging.WARNING):
        try:
            parse_request(json.dumps(doc).encode())
        except InvalidRequest as exc:
            logging.getLogger("test").warning("rejected (%s): %s", exc.reason, exc)
    assert caplog.records and "7700" not in caplog.text
    json_lines = "".join(JsonFormatter("privacy worker").format(r) for r in caplog.records)  # --log-format json
    assert "rejected" in json_lines and "7700" not in json_lines


# --------------------------------------------------------------------------- tokens

def test_subject_tokens_equal_the_pipelines_tokens(worker_keyring) -> None:
    """Every way of writing the number gives the token the router puts in cli and dialled."""
    tokens = {SubjectTokeniser(worker_keyring).tokens("msisdn", form)[0] for form in NUMBER_FORMS}
    assert len(tokens) == 1
    router = Router(worker_keyring)
    rec = {"record_id": "r-1", "cli": "07700 900123", "dialled": "+44 20 7946 0000", "start": "2026-03-01T10:00:00Z",
           "duration": "60", "imsi": IMSI}
    back = {**rec, "record_id": "r-2", "cli": "+44 20 7946 0000", "dialled": "0044 7700900123"}
    batch = router.route([json.dumps(rec).encode(), json.dumps(back).encode()], Source("t", 0, [0, 1]))
    frame = batch.analytics_frame()
    assert frame["cli"][0] == frame["dialled"][1] == next(iter(tokens))
    assert frame["imsi"][0] == SubjectTokeniser(worker_keyring).tokens("imsi", "23415 0123456789")[0]


def test_tokens_cover_every_key_current_first(worker_keyring) -> None:
    rotated = rotate(worker_keyring)
    tokens = SubjectTokeniser(rotated).tokens("msisdn", NUMBER)
    assert len(tokens) == 2 and tokens[0].startswith(rotated.current.kid + ":")
    assert tokens[1] == SubjectTokeniser(worker_keyring).tokens("msisdn", NUMBER)[0]


# --------------------------------------------------------------------------- state merge

def _req(type_: str, request_id: str, received: str, tokens: tuple[str, ...] = ("k1:aa",)) -> TokenRequest:
    return TokenRequest(request_id, type_, "msisdn", tokens, received)


def _fold(requests) -> dict:
    state = None
    for r in requests:
        state = apply_request(state, r, "2026-03-02T00:00:00.000Z")
    return state


SCENARIOS = [
    # (requests, grounds in force whatever the order)
    ([_req("restriction", "a", "2026-03-01T10:00:00Z"), _req("restriction_lifted", "b", "2026-03-01T11:00:00Z")], []),
    ([_req("restriction_lifted", "a", "2026-03-01T10:00:00Z"), _req("restriction", "b", "2026-03-01T11:00:00Z")],
     ["restriction"]),
    ([_req("objection", "a", "2026-03-01T10:00:00Z"), _req("restriction", "b", "2026-03-01T11:00:00Z"),
      _req("restriction_lifted", "c", "2026-03-01T12:00:00Z")], ["objection"]),
    ([_req("erasure", "a", "2026-03-01T10:00:00Z"), _req("restriction_lifted", "b", "2026-03-01T12:00:00Z")],
     ["erasure"]),
    ([_req("restriction", "a", "2026-03-01T10:00:00.5Z"), _req("restriction_lifted", "b", "2026-03-01T10:00:00.25Z"),
      _req("objection", "c", "2026-03-01T09:00:00Z")], ["objection", "restriction"]),
]


@pytest.mark.parametrize("requests, grounds", SCENARIOS)
def test_state_merge_is_order_independent(requests, grounds) -> None:
    """Requests arrive through several partitions: any arrival order gives the same grounds."""
    for order in itertools.permutations(requests):
        state = _fold(order)
        assert active_grounds(state) == grounds, [r.request_id for r in order]
        assert is_active(state) == bool(grounds)


@pytest.mark.parametrize("requests, grounds", SCENARIOS)
def test_state_merge_is_idempotent(requests, grounds) -> None:
    """At-least-once: applying every request twice changes nothing but bookkeeping."""
    once, twice = _fold(requests), _fold([r for r in requests for _ in range(2)])
    assert {k: v for k, v in once.items()} == {k: v for k, v in twice.items()}


def test_state_and_records_hold_tokens_only_and_every_key(worker_keyring) -> None:
    tokens = SubjectTokeniser(rotate(worker_keyring)).tokens("msisdn", NUMBER)
    state = _fold([TokenRequest("case-1", "objection", "msisdn", tokens, "2026-03-01T10:00:00Z")])
    assert NUMBER not in json.dumps(state) and "7700900123" not in json.dumps(state)
    records = suppression_records(state, "2026-03-02T00:00:00.000Z")
    assert [k for k, _ in records] == list(tokens)
    for key, value in records:
        assert value["token"] == key and value["active"] is True and value["grounds"] == ["objection"]
        assert value["type"] == "objection" and value["request_id"] == "case-1"
        assert read_suppression(json.dumps(value).encode()) == (True, True)
    lifted = apply_request(_fold([_req("restriction", "a", "2026-03-01T10:00:00Z")]),
                           _req("restriction_lifted", "b", "2026-03-01T11:00:00Z"), "2026-03-02T00:00:00.000Z")
    [(_, value)] = suppression_records(lifted, "2026-03-02T00:00:00.000Z")
    assert value["active"] is False and value["grounds"] == [] and value["type"] == "restriction_lifted"
    assert read_suppression(json.dumps(value).encode()) == (False, True)


def test_erasure_notice_matches_its_schema(worker_keyring) -> None:
    tokens = SubjectTokeniser(rotate(worker_keyring)).tokens("imsi", IMSI)
    notice = erasure_notice(TokenRequest("case-9", "erasure", "imsi", tokens, "2026-03-01T10:00:00Z"),
                            "2026-03-01T10:00:01.000Z")
    assert schema_errors(notice, "erasure-notice.v1.json") == []
    assert notice["token"] == tokens[0] and notice["tokens"] == list(tokens)
    assert IMSI not in json.dumps(notice)


def test_follower_reads_tombstones_as_released_and_junk_as_suppressed() -> None:
    assert read_suppression(None) == (False, True)
    assert read_suppression(b'{"token":"k:1","active":false}') == (False, True)
    assert read_suppression(b"garbage") == (True, False)           # fail closed
    assert read_suppression(b'{"token":"k:1","active":"no"}') == (True, False)


def test_subject_tokens_are_what_the_router_suppresses(worker_keyring) -> None:
    """Sanity for the Router-level integration test: the subject's token in the set suppresses their calls."""
    from pipeline.core.router import Source, Suppressions
    token = SubjectTokeniser(worker_keyring).tokens("msisdn", NUMBER)[0]
    lines = [orjson.dumps({"record_id": f"r-{i}", "cli": cli, "dialled": "+447700900999",
                           "start": "2026-11-25T10:00:00Z", "duration": 5})
             for i, cli in enumerate([NUMBER, "+447700900777"])]
    router = Router(worker_keyring, suppressions=Suppressions([token]))
    routed = router.route(lines, Source("t", 0, [0, 1]))
    assert routed.counts["suppressed"] == 1
    assert [r["record_id"] for r in routed.analytics_records()] == [router.tokeniser.token_one("record", "r-1")]


def test_router_keeps_the_suppressions_object_it_is_given(worker_keyring) -> None:
    """The follower updates the caller's object: the router must route with that very object,
    even while it is empty (an empty Suppressions is falsy)."""
    from pipeline.core.router import Suppressions
    supp = Suppressions()
    assert Router(worker_keyring, suppressions=supp).suppressions is supp


# --------------------------------------------------------------------------- faust settings

def test_security_options_map_to_faust_credentials_and_unknown_ones_fail() -> None:
    import faust

    from pipeline.cli import UsageError
    from pipeline.apps.runtime import faust_broker_url, faust_credentials

    assert faust_broker_url("a:9092, b:9093") == "kafka://a:9092;kafka://b:9093"
    assert faust_credentials({}) is None
    creds = faust_credentials({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                               "sasl.username": "cdrpipe-privacy", "sasl.password": "pw"})
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "cdrpipe-privacy"
    for bad in ({"linger.ms": "5"}, {"security.protocol": "SASL_SSL"}, {"security.protocol": "KERBEROS"}):
        with pytest.raises(UsageError):
            faust_credentials(bad)


# --------------------------------------------------------------------------- schema v2: access, portability, due dates

@pytest.mark.parametrize("type_", ["access", "portability"])
def test_access_and_portability_requests_carry_their_due_date(type_) -> None:
    doc = make_request(type_, "msisdn", "07700 900123", request_id="sar-1",
                       received=datetime(2026, 1, 31, 23, 59, tzinfo=timezone.utc))
    assert doc["type"] == type_ and doc["due"] == "2026-02-28"  # one month, clamped to the month's end
    req = parse_request(json.dumps(doc).encode())
    assert req.type == type_ and str(req.due) == "2026-02-28"


def test_v1_requests_stay_readable_and_get_the_same_due_date() -> None:
    v1 = _valid()  # as v1 wrote it: no due date
    assert schema_errors(v1, "privacy-request.v1.json") == []
    req = parse_request(json.dumps(v1).encode())
    assert req.type == "objection" and req.value == NUMBER and str(req.due) == "2026-04-01"
    # v2 is a superset: every v1 type and field is still valid, and v1 refuses the new types.
    assert schema_errors(dict(v1, type="access"), "privacy-request.v1.json")
    assert schema_errors(dict(v1, type="access")) == []


def test_due_dates_follow_the_month_rule_and_extensions() -> None:
    from pipeline.privacy.deadlines import due_date, is_overdue

    at = lambda y, m, d: datetime(y, m, d, 12, tzinfo=timezone.utc)  # noqa: E731
    assert str(due_date(at(2026, 3, 1))) == "2026-04-01"
    assert str(due_date(at(2026, 1, 31))) == "2026-02-28"
    assert str(due_date(at(2028, 1, 31))) == "2028-02-29"
    assert str(due_date(at(2026, 12, 15))) == "2027-01-15"
    assert str(due_date(at(2026, 11, 30), 2)) == "2027-02-28"
    with pytest.raises(ValueError):
        due_date(at(2026, 3, 1), 3)
    due = due_date(at(2026, 3, 1))
    assert not is_overdue(due, due) and is_overdue(due, due.replace(day=2))
