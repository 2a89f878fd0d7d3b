"""Mapped CSV: the mapping file, separators, comments, headers, trailing delimiters, URIs, times."""
from __future__ import annotations

import polars as pl
import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.formats import MappingError, check_format_options, get_format, load_mapping
from pipeline.formats.csv_mapped import _screen, resolve, split_row

SCHEMA = {f: pl.String for f in ("record_id", "cli", "dialled", "start", "duration", "ip")}
BASIC = """
[csv]
delimiter = ";"
comment = "#"
header = true
columns = ["id", "from", "to", "when", "secs", "addr"]

[map]
id = "record_id"
from = "cli"
to = "dialled"
when = "start"
secs = "duration"
addr = "ip"
"""


def options(tmp_path, text: str = BASIC):
    path = tmp_path / "m.toml"
    path.write_text(text)
    return load_mapping(path)


def parse(tmp_path, lines: list[bytes], text: str = BASIC):
    return get_format("csv")(lines, b"\n".join(lines), SCHEMA, **dict(options(tmp_path, text)))


def test_header_comment_trailing_delimiter_and_blank_lines(tmp_path):
    lines = [b"id;from;to;when;secs;addr", b"# exported 2026-01-01", b"a1;1001;1002;1436454408;5;10.0.0.1;",
             b"", b"a2;1001;1002;1436454408;6;10.0.0.1"]
    parsed = parse(tmp_path, lines)
    assert sorted(zip(parsed.reject_rows, parsed.reject_reasons)) == [(0, "header_line"), (1, "comment_line"),
                                                                     (3, "empty")]
    assert parsed.frame["row"].to_list() == [2, 4]
    assert parsed.frame["duration"].to_list() == ["5", "6"]


def test_a_header_in_another_order_is_its_own_reject(tmp_path):
    """The file's header names the mapping's columns in another order: its rows would be read in the wrong columns."""
    lines = [b"ID;To;From;when;secs;addr", b"a1;1002;1001;1436454408;5;10.0.0.1", b"id;from;to;when;secs;addr",
             b"from;to;id;when;secs;other"]
    parsed = parse(tmp_path, lines)
    reasons = dict(zip(parsed.reject_rows, parsed.reject_reasons))
    assert reasons == {0: "header_mismatch", 2: "header_line"}
    assert parsed.frame["row"].to_list() == [1, 3]  # other names, or the same ones with one changed: a row


def test_a_header_with_another_name_over_an_unmapped_column_is_a_header(tmp_path):
    """pandas writes a blank name (or `Unnamed: 0`) over its index column: the mapped names decide."""
    text = BASIC.replace('columns = ["id", "from", "to", "when", "secs", "addr"]',
                         'columns = ["idx", "id", "from", "to", "when", "secs", "addr"]')
    parsed = parse(tmp_path, [b"Unnamed: 0;id;from;to;when;secs;addr", b"0;a1;1001;1002;1436454408;5;10.0.0.1",
                              b"idx;ID;To;From;when;secs;addr"], text)
    assert dict(zip(parsed.reject_rows, parsed.reject_reasons)) == {0: "header_line", 2: "header_mismatch"}
    assert parsed.frame["row"].to_list() == [1]


@pytest.mark.parametrize("value", [
    "+44 7700 900123", "sip:+447700900123@192.0.2.1:5060;transport=UDP", "+447700900123@gw.example",
    "%2B447700900123", "%2B447700900123%40192.0.2.1", '"Alice" <sip:+447700900123@192.0.2.1>;tag=ab12',
    "tel:+44-7700-900123;phone-context=example", "<+447700900123>", "07700 900123",
])
def test_number_shapes_give_one_token(worker_keyring, tmp_path, value):
    """SIP URIs, user@host, URL-encoded and caller-ID forms: the number inside, so one subscriber joins up."""
    router = Router(worker_keyring, CoreConfig(format="csv", region="GB", format_options=options(tmp_path)))
    plain = b"a;+447700900123;999;1436454408;5;10.0.0.1"
    odd = ("b;" + value.replace(";", "%3B") + ";999;1436454408;5;10.0.0.1").encode()
    if '"' in value:  # a quoted CSV field for the caller-ID form
        odd = ('b;"' + value.replace('"', '""') + '";999;1436454408;5;10.0.0.1').encode()
    routed = router.route([plain, odd], Source("f", 0, [0, 1]))
    assert routed.counts["analytics"] == 2, dict(routed.dlq_reasons)
    assert routed.analytics_frame()["cli"][0] == routed.analytics_frame()["cli"][1]
    text = routed.analytics_ndjson()
    assert b"7700" not in text and b"192.0.2.1" not in text and b"Alice" not in text


def test_user_part_with_a_url_encoded_at_sign_and_ip_fields(worker_keyring, tmp_path):
    router = Router(worker_keyring, CoreConfig(format="csv", region="US", format_options=options(tmp_path)))
    lines = [b"a;1001%40127.0.0.1;1002;1436454408;5;sip:1001@192.168.56.203:5060",
             b"b;1001;1002;1436454408;5;1001@192.168.56.203"]
    rows = router.route(lines, Source("f", 0, [0, 1])).analytics_records()
    assert rows[0]["cli"] == rows[1]["cli"] and rows[0]["cli_class"] == "extension"
    assert rows[0]["ip"] == rows[1]["ip"] == "192.168.56.0/24"


@pytest.mark.parametrize("when,hour", [
    ("1436454408", "2015-07-09T15:00:00Z"),  # epoch seconds
    ("1436454408123456", "2015-07-09T15:00:00Z"),  # micro-epoch (FreeSWITCH *_uepoch)
    ("2015-07-09T17:06:48+02:00", "2015-07-09T15:00:00Z"),
    ("2015-07-09 15:06:48", "2015-07-09T15:00:00Z"),
    ("2015-07-09 17:06:48 +0200", "2015-07-09T15:00:00Z"),
    ("2015-07-09 15:06:48 +0000 UTC", "2015-07-09T15:00:00Z"),  # Go time.Time.String()
    ("2015-07-09 15:06:48 UTC", "2015-07-09T15:00:00Z"),
    ("2015-07-09%2015%3A06%3A48", "2015-07-09T15:00:00Z"),  # URL-encoded (ESL, json_cdr encode-values)
])
def test_time_shapes(worker_keyring, tmp_path, when, hour):
    router = Router(worker_keyring, CoreConfig(format="csv", region="US", format_options=options(tmp_path)))
    line = f"a;1001;1002;{when};5;10.0.0.1".encode()
    routed = router.route([line], Source("f", 0, [0]))
    assert routed.analytics_frame()["start"].to_list() == [hour], dict(routed.dlq_reasons)


def test_time_format_and_timezone_for_local_day_first_dates(worker_keyring, tmp_path):
    text = ('[csv]\ncolumn_count = 4\ntime_format = "%d.%m.%Y %H:%M:%S"\ntimezone = "Europe/Berlin"\n'
            '[map]\n0 = "cli"\n1 = "dialled"\n2 = "start"\n3 = "duration"\n')
    router = Router(worker_keyring, CoreConfig(format="csv", region="DE", format_options=options(tmp_path, text)))
    lines = [b"4986517174963,004986517174964,04.07.2016 18:58:55,65", b"1001,1002,31.02.2016 18:58:55,1"]
    routed = router.route(lines, Source("f", 0, [0, 1]))
    assert routed.analytics_frame()["start"].to_list() == ["2016-07-04T16:00:00Z"]  # CEST is UTC+2
    assert dict(routed.dlq_reasons) == {"invalid_field": 1}  # no 31 February: a reason, not a crash


def test_duration_units_and_go_durations(tmp_path):
    base = '[csv]\ncolumn_count = 4\n{unit}[map]\n0 = "cli"\n1 = "dialled"\n2 = "start"\n3 = "duration"\n'
    lines = [b"1,2,1436454408,10s", b"1,2,1436454408,120000000000"]
    assert parse(tmp_path, lines[:1], base.format(unit="")).frame["duration"].to_list() == ["10"]
    ns = parse(tmp_path, lines[1:], base.format(unit='duration_unit = "ns"\n'))
    assert ns.frame["duration"].to_list() == ["120"]


def test_map_by_index_without_column_names_accepts_more_columns(tmp_path):
    text = '[csv]\n[map]\n0 = "cli"\n1 = "dialled"\n2 = "start"\n3 = "duration"\n'
    parsed = parse(tmp_path, [b"1,2,1436454408,5,x,y,z", b"1,2,1436454408"], text)
    assert parsed.frame["row"].to_list() == [0]
    assert parsed.reject_reasons == ["wrong_column_count"]


def test_constants_fill_unmapped_fields(tmp_path):
    text = BASIC + '\n[constants]\ncall_type = "voice"\n'
    schema = {**SCHEMA, "call_type": pl.String}
    lines = [b"a;1;2;1436454408;5;10.0.0.1"]
    parsed = get_format("csv")(lines, lines[0], schema, **dict(options(tmp_path, text)))
    assert parsed.frame["call_type"].to_list() == ["voice"]


@pytest.mark.parametrize("text,needle", [
    ('[map]\nfrom = "cli"\n', "not in `columns`"),
    ('[csv]\nheader = true\n[map]\n0 = "cli"\n', "header = true needs `columns`"),
    ('[csv]\ndelimiter = ";;"\n[map]\n0 = "cli"\n', "delimiter"),
    ('[csv]\nduration_unit = "h"\n[map]\n0 = "cli"\n', "duration_unit"),
    ('[csv]\ntimezone = "Mars/Base"\n[map]\n0 = "cli"\n', "timezone"),
    ('[csv]\ncolumn_count = 2\n[map]\n5 = "cli"\n', "beyond the column count"),
    ('[map]\n0 = "not a field"\n', "not a plain raw v1 field"),
    ('[fields]\ncli = 0\n', "unknown section"),
    ('[csv]\n[map]\n', "at least"),
    ("not toml = = =", "not valid TOML"),
])
def test_mapping_errors_are_clear(tmp_path, text, needle):
    with pytest.raises(MappingError, match=needle):
        check_format_options("csv", options(tmp_path, text))


def test_csv_needs_a_mapping_and_load_mapping_reports_missing_files(tmp_path):
    with pytest.raises(MappingError, match="--mapping"):
        check_format_options("csv", ())
    with pytest.raises(MappingError, match="cannot read mapping"):
        load_mapping(tmp_path / "missing.toml")
    check_format_options("asterisk-csv", ())  # defaults need nothing
    check_format_options("csv", options(tmp_path))


@pytest.mark.parametrize("text,cells", [
    ('a,"b",,""', ["a", "b", None, ""]),
    ('"x ""y"" z",2', ['x "y" z', "2"]),
    ('"hq"      ,  "p" ,3', ["hq", "p", "3"]),
    ('"multi\nline",2', ["multi\nline", "2"]),
    ('"open,2', None),
    ('"a"b,2', None),
    ('a"b,2', None),
    ("a\nb,2", None),
])
def test_exact_tokenizer(text, cells):
    assert split_row(text, ",", '"') == cells


def test_fast_and_slow_paths_agree(tmp_path):
    """The same rows read by Polars (clean) and by the exact tokenizer (made suspect) give equal values."""
    rows = [b'a;"1001";1002;1436454408;5;10.0.0.1', b'b;"sip:1001@h";"0044 20;x";2015-07-09 15:06:48;7;"10.0.0.2"']
    padded = [r.replace(b'";', b'"  ;', 1) for r in rows]  # a space after a closing quote: Polars refuses it
    layout = resolve(None, dict(options(tmp_path))["mapping"])
    assert _screen(pl.Series([p.decode() for p in padded]), layout, 65536)["suspect"].to_list() == [True, True]
    assert _screen(pl.Series([r.decode() for r in rows]), layout, 65536)["suspect"].to_list() == [False, False]
    fast = parse(tmp_path, rows)
    slow = parse(tmp_path, padded)
    assert fast.reject_rows == slow.reject_rows == []
    assert fast.frame.drop("record_id").to_dicts() == slow.frame.drop("record_id").to_dicts()


def test_large_batch_keeps_order_across_chunks_with_bad_rows_spread(tmp_path):
    good = b"id{};1001;1002;1436454408;5;10.0.0.1"
    lines = [good.replace(b"{}", str(i).encode()) if i % 997 else b'x;"broken;1;2;3;4' for i in range(70_000)]
    parsed = parse(tmp_path, lines)
    bad = [i for i in range(70_000) if i % 997 == 0]
    assert sorted(parsed.reject_rows) == bad and set(parsed.reject_reasons) == {"invalid_csv"}
    ids = parsed.frame["record_id"].to_list()
    assert ids == [f"id{i}" for i in range(70_000) if i % 997]
