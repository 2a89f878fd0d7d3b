"""freeswitch-json (nested json_cdr) and acc (transaction rows paired into calls) on hand-written records."""
from __future__ import annotations

import orjson
import polars as pl
import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.formats import get_format, load_mapping

SCHEMA = {f: pl.String for f in ("record_id", "cli", "dialled", "start", "duration", "ip", "status", "call_type")}


def fs_doc(**variables: str) -> dict:
    """A small json_cdr document in the current layout (callflow an array, newest profile first)."""
    v = {"uuid": "3da8bf84-c133-4959-9e24-e72875cb33a1", "sip_from_user": "1001", "start_epoch": "1515666344",
         "start_uepoch": "1515666344534355", "start_stamp": "2018-01-11 11:25:44", "billsec": "68",
         "duration": "71", "sip_received_ip": "10.10.10.100", "hangup_cause": "NORMAL_CLEARING"}
    v.update(variables)
    return {"core-uuid": "eb8bcdd2", "switchname": "FSDev1", "channel_data": {"state": "CS_REPORTING"},
            "variables": v,
            "app_log": {"applications": [{"app_name": "bridge", "app_data": "user/${destination_number}"}]},
            "callflow": [{"caller_profile": {"caller_id_number": "+447700900123", "destination_number": "1002",
                                             "network_addr": "10.10.10.100", "uuid": v["uuid"]},
                          "times": {"created_time": "1515666344534355"}}]}


def fs(records: list[bytes], **kw):
    return get_format("freeswitch-json")(records, b"\n".join(records), SCHEMA, **kw)


def test_json_cdr_fields_and_priorities():
    parsed = fs([orjson.dumps(fs_doc())])
    got = parsed.frame.row(0, named=True)
    assert got == {"record_id": "3da8bf84-c133-4959-9e24-e72875cb33a1", "cli": "+447700900123", "dialled": "1002",
                   "start": "1515666344534355", "duration": "68", "ip": "10.10.10.100",
                   "status": "normal_clearing", "call_type": "voice", "row": 0}


def test_old_callflow_object_url_encoded_values_and_fallbacks():
    doc = fs_doc(start_uepoch="0", start_epoch="0", start_stamp="2018-01-11%2011%3A25%3A44", billsec="",
                 caller_id_number="%2B447700900123")
    doc["callflow"] = {"caller_profile": {"destination_number": "sip:1002%4010.10.10.204"}}  # FreeSWITCH 1.0 shape
    got = fs([orjson.dumps(doc)]).frame.row(0, named=True)
    assert got["cli"] == "+447700900123" and got["dialled"] == "1002"
    assert got["start"] == "2018-01-11 11:25:44" and got["duration"] == "71"


def test_pretty_printed_document_as_one_record_equals_compact():
    doc = fs_doc()
    pretty = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    a = fs([pretty, orjson.dumps(doc)]).frame
    assert a["row"].to_list() == [0, 1] and a.drop("row").row(0) == a.drop("row").row(1)


@pytest.mark.parametrize("bad,reason", [
    (b'{"variables": {"uuid": "x"', "invalid_json"),
    (b"[1, 2]", "not_object"),
    (b'{"variables": "not an object", "callflow": []}', "not_json_cdr"),
    (b"", "empty"),
    (b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
])
def test_bad_documents_are_rejected_in_place(worker_keyring, bad, reason):
    good = orjson.dumps(fs_doc())
    parsed = fs([good, bad, good])
    assert parsed.reject_rows == [1] and parsed.reject_reasons == [reason]
    assert parsed.frame["row"].to_list() == [0, 2]
    router = Router(worker_keyring, CoreConfig(format="freeswitch-json", region="GB"))
    routed = router.route([good, bad, good], Source("fs", 0, [0, 1, 2]))
    assert routed.counts == {"in": 3, "analytics": 2, "retention": 3, "dlq": 1, "suppressed": 0}
    text = routed.analytics_ndjson()
    assert b"7700900123" not in text and b"10.10.10.100" not in text


def test_freeswitch_mapping_timezone_applies_to_local_start_stamp():
    from pipeline.formats.csv_mapped import MappingSpec
    doc = fs_doc(start_uepoch="0", start_epoch="")
    doc["callflow"][0]["times"] = {}
    got = fs([orjson.dumps(doc)], mapping=MappingSpec(timezone="Europe/Berlin")).frame.row(0, named=True)
    assert got["start"] == "2018-01-11T10:25:44.000000Z"


# --- acc ---------------------------------------------------------------------------------------------

KAMAILIO = [  # stock kamailio.cfg extras: src_user|src_domain|src_ip|dst_ouser|dst_user|dst_domain
    b"INVITE|a1|b1|c1@192.0.2.10|200|OK|1436454408|+447700900123|example.com|192.0.2.10|+447700900456|alice|ex",
    b"ACK|a1|b1|c1@192.0.2.10|200|OK|1436454409|+447700900123|example.com|192.0.2.10|+447700900456|alice|ex",
    b"INVITE|a2|b2|c2@192.0.2.10|487|Request Terminated|1436454500|+447700900123|e|192.0.2.10|+447700900789||e",
    b"BYE|a1|b1|c1@192.0.2.10|200|OK|1436454438|+447700900456|e|192.0.2.11|+447700900123||e",
    b"INVITE|a3|b3|c3@192.0.2.10|200|OK|1436454600|+447700900123|e|192.0.2.10|+447700900456||e",
]


def acc(worker_keyring, lines, opts=()):
    router = Router(worker_keyring, CoreConfig(format="acc", region="GB", format_options=opts))
    return router.route(lines, Source("acc", 0, range(len(lines))))


def test_acc_pairs_invite_and_bye_in_a_batch(worker_keyring):
    routed = acc(worker_keyring, KAMAILIO)
    assert routed.counts == {"in": 5, "analytics": 2, "retention": 5, "dlq": 3, "suppressed": 0}
    assert dict(routed.dlq_reasons) == {"acc_in_call_request": 2, "acc_unpaired_invite": 1}
    rows = routed.analytics_records()
    assert [(r["duration"], r["status"]) for r in rows] == [(30, "answered"), (0, "no_answer")]
    assert rows[0]["ip"] == "192.0.2.0/24" and rows[0]["start"] == "2015-07-09T15:00:00Z"
    ids = get_format("acc")(KAMAILIO, b"\n".join(KAMAILIO), SCHEMA).frame["record_id"].to_list()
    assert len(ids) == 2 and all(r.startswith("acc-") for r in ids)
    tokeniser = Router(worker_keyring).tokeniser
    assert [r["record_id"] for r in rows] == [tokeniser.token_one("record", r) for r in ids]  # the ids' refs
    text = routed.analytics_ndjson() + b"".join(routed.dlq)
    assert b"192.0.2.10" not in text and b"c1@" not in text and b"7700900" not in text


def test_acc_rows_split_across_batches_reject_the_unpaired_invite_only(worker_keyring):
    first = acc(worker_keyring, KAMAILIO[:2])
    assert dict(first.dlq_reasons) == {"acc_in_call_request": 1, "acc_unpaired_invite": 1}


def test_acc_cdr_mode_duration_column_needs_no_pairing(worker_keyring, tmp_path):
    (tmp_path / "cdr.toml").write_text(
        '[csv]\ncolumns = ["method","from_tag","to_tag","callid","sip_code","sip_reason","time","src_user",'
        '"dst_user","duration"]\n[map]\nmethod = "acc_method"\nsip_code = "acc_sip_code"\ncallid = "acc_callid"\n'
        'time = "start"\nsrc_user = "cli"\ndst_user = "dialled"\nduration = "duration"\n')
    lines = [b"INVITE|a|b|c@h|200|OK|1436454408|1001|1002|93", b"INVITE|a|b|d@h|486|Busy|1436454408|1001|1002|"]
    routed = acc(worker_keyring, lines, load_mapping(tmp_path / "cdr.toml"))
    assert [(r["duration"], r["status"]) for r in routed.analytics_records()] == [(93, "answered"), (0, "busy")]


def test_acc_invite_without_time_takes_the_ack_time(worker_keyring):
    lines = [KAMAILIO[0].replace(b"|1436454408|", b"||"), KAMAILIO[1], KAMAILIO[3]]
    rows = acc(worker_keyring, lines).analytics_records()
    assert len(rows) == 1 and rows[0]["duration"] == 29  # BYE 1436454438 - ACK 1436454409


def test_acc_byes_logged_before_their_invite_still_pair(worker_keyring):
    routed = acc(worker_keyring, [KAMAILIO[3], KAMAILIO[0]])
    assert routed.analytics_frame()["duration"].to_list() == [30]


def test_acc_negative_talk_time_is_a_dlq_reason(worker_keyring):
    lines = [KAMAILIO[0], KAMAILIO[3].replace(b"1436454438", b"1436454400")]
    assert dict(acc(worker_keyring, lines).dlq_reasons) == {"acc_in_call_request": 1, "invalid_field": 1}
