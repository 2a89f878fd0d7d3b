"""asterisk-csv on hand-written Master.csv rows: caller-ID strings, legs, padding, broken rows, odd values."""
from __future__ import annotations

import polars as pl
import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.formats import FORMATS, FORMAT_REASON_DETAIL, get_format, load_mapping

SCHEMA = {f: pl.String for f in ("record_id", "cli", "dialled", "start", "duration", "status", "call_type")}


def row(src: str = "253-433-5862", dst: str = "870-526-4260", clid: str = '"""Marget Biernacki"" <253-433-5862>"',
        start: str = "2017-06-20 10:07:41", answer: str = "2017-06-20 10:07:50", duration: str = "45",
        billsec: str = "36", disposition: str = "ANSWERED", uniqueid: str = "1497953261.5") -> bytes:
    """One Master.csv row as Asterisk writes it (strings quoted, integers bare)."""
    return (f'"","{src}","{dst}","production",{clid},"SIP/1001-0000001a","SIP/1002-0000001b","Dial",'
            f'"SIP/1002,30","{start}","{answer}","2017-06-20 10:08:26",{duration},{billsec},"{disposition}",'
            f'"DOCUMENTATION","{uniqueid}",""').encode()


def route(router: Router, lines: list[bytes]):
    return router.route(lines, Source("Master.csv", 0, range(len(lines))))


@pytest.fixture()
def ast(worker_keyring) -> Router:
    return Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US"))


def test_formats_are_registered_for_get_format():
    for name in ("asterisk-csv", "freeswitch-json", "acc", "csv", "jsonl"):
        assert callable(get_format(name)) and name in FORMATS


def test_reason_codes_have_value_free_details():
    for code, text in FORMAT_REASON_DETAIL.items():
        assert 20 < len(text) <= 512 and not any(ch.isdigit() for ch in text), code


def test_master_csv_row_maps_to_raw_v1():
    parsed = get_format("asterisk-csv")([row()], row(), SCHEMA)
    got = parsed.frame.row(0, named=True)
    assert parsed.reject_rows == []
    assert got["cli"] == "253-433-5862" and got["dialled"] == "870-526-4260"
    assert got["start"] == "2017-06-20 10:07:41" and got["duration"] == "36"  # billsec, not duration
    assert got["status"] == "answered" and got["call_type"] == "voice"
    assert got["record_id"].startswith("1497953261.5-") and len(got["record_id"]) == len("1497953261.5-") + 8


def test_caller_name_never_read_and_clid_number_fills_an_empty_src(ast):
    with_src = route(ast, [row()]).analytics_frame().row(0, named=True)
    from_clid = route(ast, [row(src="")]).analytics_frame().row(0, named=True)
    anonymous = route(ast, [row(src="", clid='""""" <253-433-5862>"')]).analytics_frame().row(0, named=True)
    assert with_src["cli"] == from_clid["cli"] == anonymous["cli"]  # one subscriber, one token
    text = route(ast, [row(src=""), row()]).analytics_ndjson()
    assert b"Marget" not in text and b"Biernacki" not in text and b"5862" not in text


def test_clid_with_only_a_name_is_never_tokenised_as_the_caller(ast):
    routed = route(ast, [row(src="", clid='"""Marget Biernacki"""')])
    assert routed.counts["analytics"] == 1
    assert routed.analytics_frame()["cli_class"][0] == "withheld"  # no number: the empty src stands


def test_src_and_clid_numbers_are_normalised_alike(ast):
    """The number in clid goes through the same cleaning as src: dashes, dots, +1, spaces."""
    tokens = {route(ast, [row(src=s)]).analytics_frame()["cli"][0]
              for s in ("253-433-5862", "(253) 433.5862", "+1 253 433 5862", "2534335862")}
    tokens |= {route(ast, [row(src="", clid=f'"""X"" <{c}>"')]).analytics_frame()["cli"][0]
               for c in ("253-433-5862", "+12534335862")}
    assert len(tokens) == 1


def test_legs_sharing_a_uniqueid_get_unique_deterministic_ids(ast):
    no_answer = row(answer="", billsec="0", disposition="NO ANSWER")
    answered = row()
    lines = [no_answer, answered, answered]
    ids = get_format("asterisk-csv")(lines, b"\n".join(lines), SCHEMA).frame["record_id"].to_list()
    assert len(set(ids)) == 3 and all(r.startswith("1497953261.5-") for r in ids)
    assert ids[2] == ids[1] + "-2"  # a byte-identical leg: told apart by its order
    # Analytics carries each id's record_ref (the uniqueid holds the start second), one per leg.
    first = route(ast, lines).analytics_frame()["record_id"].to_list()
    assert first == [ast.tokeniser.token_one("record", r) for r in ids] and len(set(first)) == 3
    assert not any("1497953261" in r for r in first)
    # The same rows elsewhere in another batch keep their ids (no dependence on offsets).
    again = route(ast, [row(uniqueid="1.1"), answered, no_answer]).analytics_frame()["record_id"].to_list()
    assert again[1] == first[1] and again[2] == first[0]


def test_rows_without_a_uniqueid_get_128_bit_ids(ast):
    """Without an id of its own a row is told apart by its hash alone, and the vault deduplicates on
    it: 32 hex digits (128 bits), so distinct rows never collide into one stored record."""
    lines = [row(uniqueid="", billsec=str(s)) for s in range(200)]
    ids = get_format("asterisk-csv")(lines, b"\n".join(lines), SCHEMA).frame["record_id"].to_list()
    assert len(set(ids)) == 200
    assert all(len(r) == len("asterisk-") + 32 and r.startswith("asterisk-") for r in ids)
    with_own = get_format("asterisk-csv")([row()], row(), SCHEMA).frame["record_id"].to_list()
    assert len(with_own[0]) == len("1497953261.5-") + 8  # legs of one uniqueid: 8 hex tell them apart


def test_empty_answer_time_and_no_answer_leg_are_valid(ast):
    routed = route(ast, [row(answer="", billsec="0", disposition="NO ANSWER")])
    assert routed.counts["analytics"] == 1
    assert routed.analytics_frame().row(0, named=True)["duration"] == 0
    assert routed.analytics_frame()["status"][0] == "no_answer"


def test_column_padded_export_reads_like_the_plain_one(ast):
    plain = row()
    padded = plain.replace(b'"production",', b'"production"        ,').replace(b",45,36,", b",45  ,36  ,")
    a = route(ast, [plain]).analytics_frame().drop("record_id")
    b = route(ast, [padded]).analytics_frame().drop("record_id")
    assert a.to_dicts() == b.to_dicts()


@pytest.mark.parametrize("bad,reason", [
    (row()[:-7], "invalid_csv"),  # cut inside a quoted field
    (row().replace(b'"hq"', b'"hq').replace(b'"production"', b'"prod"uction"'), "invalid_csv"),  # stray quote
    (row() + b',"extra"', "wrong_column_count"),
    (row().rsplit(b",", 3)[0], "wrong_column_count"),
    (b"", "empty"),
    (b"   \r", "empty"),
])
def test_malformed_rows_are_rejected_without_shifting_neighbours(ast, bad, reason):
    lines = [row(uniqueid="1.1"), bad, row(uniqueid="3.3")]
    parsed = get_format("asterisk-csv")(lines, b"\n".join(lines), SCHEMA)
    assert parsed.reject_rows == [1] and parsed.reject_reasons == [reason]
    assert parsed.frame["row"].to_list() == [0, 2]
    assert [r.split("-")[0] for r in parsed.frame["record_id"]] == ["1.1", "3.3"]
    routed = route(ast, lines)
    assert routed.counts == {"in": 3, "analytics": 2, "retention": 3, "dlq": 1, "suppressed": 0}
    assert b"5862" not in b"".join(routed.dlq)  # the DLQ carries the row sealed, never in clear


@pytest.mark.parametrize("billsec,reason", [("-6", "invalid_field"), ("", "missing_field"), ("1e3", "invalid_field")])
def test_negative_or_empty_durations_are_dlq_reasons(ast, billsec, reason):
    lines = [row(billsec=billsec), row()]
    routed = route(ast, lines)
    assert routed.counts["dlq"] == 1 and routed.counts["analytics"] == 1
    assert dict(routed.dlq_reasons) == {reason: 1}


def test_a_quoted_newline_inside_one_record_is_one_row(ast):
    """A Kafka message may hold a row whose quoted field has a newline: still one record."""
    odd = row().replace(b'"SIP/1002,30"', b'"SIP/1002,\n30"')
    routed = route(ast, [odd, row()])
    assert routed.counts["analytics"] == 2
    broken = row().replace(b'"Dial"', b'Dial\nDial')  # a newline outside quotes: two rows in one record
    assert dict(route(ast, [broken]).dlq_reasons) == {"invalid_csv": 1}


def test_latin1_bytes_in_an_unread_column_do_not_reject_the_row(ast):
    latin = row(clid='"""M\xfcller"" <253-433-5862>"'.encode("latin-1").decode("latin-1"))
    latin = latin.replace("M\u00fcller".encode(), b"M\xfcller")
    routed = route(ast, [latin])
    assert routed.counts["analytics"] == 1 and b"ller" not in routed.analytics_ndjson()


def test_local_times_with_a_mapping_timezone(worker_keyring, tmp_path):
    (tmp_path / "tz.toml").write_text('[csv]\ntimezone = "America/Chicago"\n')
    router = Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US",
                                               format_options=load_mapping(tmp_path / "tz.toml")))
    out = route(router, [row(start="2017-06-20 10:07:41")]).analytics_frame().row(0, named=True)
    assert out["start"] == "2017-06-20T15:00:00Z"  # 10:07 CDT is 15:07 UTC, coarsened to the hour
    assert out["duration"] == 36  # the rest of the default layout still applies


def test_compact_local_times_take_the_mapping_timezone_too(worker_keyring, tmp_path):
    (tmp_path / "tz.toml").write_text('[csv]\ntimezone = "America/Chicago"\n')
    router = Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US",
                                               format_options=load_mapping(tmp_path / "tz.toml")))
    routed = route(router, [row(start="20170620100741"), row(start="20171301100741")])
    assert routed.analytics_frame()["start"].to_list() == ["2017-06-20T15:00:00Z"]  # as the ISO form above
    assert routed.dlq_reasons == {"invalid_field": 1}  # month 13: invalid, not read as some other time


def test_mapping_can_switch_duration_to_the_ringing_inclusive_column(worker_keyring, tmp_path):
    (tmp_path / "d.toml").write_text('[map]\nduration = "duration"\n')
    router = Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US",
                                               format_options=load_mapping(tmp_path / "d.toml")))
    assert route(router, [row()]).analytics_frame()["duration"][0] == 45
