"""The parse screen: every bad line gets its exact reason, good lines keep their order."""
from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.parse import classify_line, control_rows, parse_batch

SCHEMA = {f: pl.String for f in ("record_id", "cli", "dialled", "start", "duration")}
GOOD = b'{"cli":"07700 900123","dialled":"999","start":"2026-11-25T12:00:00Z","duration":5}'


@pytest.mark.parametrize("line,reason", [
    (b"", "empty"),
    (b"   \r", "empty"),
    (b"\xef\xbb\xbf" + GOOD, "bom"),
    (b'{"cli":"\xff"}', "invalid_utf8"),
    (GOOD[:-3], "invalid_json"),
    (b"not json", "invalid_json"),
    (b"[1,2]", "not_object"),
    (b"42", "not_object"),
    (b'"text"', "not_object"),
    (b'{"cli":"a","duration":NaN}', "non_finite_number"),
    (b'{"cli":"a","duration":Infinity}', "non_finite_number"),
    (b'{"cli":"a","cli":"b"}', "duplicate_key"),
    (b'{"cli":"a","cli" :"b"}', "duplicate_key"),  # a space before the colon hides nothing
    (b'{"cli":"a","x":{"y":1},"cli":"b"}', "duplicate_key"),
    (GOOD + b" " + GOOD, "invalid_json"),  # two objects on one line
    (GOOD + b"x", "invalid_json"),
    (b'{"cli":"a","x":' + b"[" * 200 + b"]" * 200 + b"}", "too_deep"),
    (b'{"cli":"' + b"9" * 70_000 + b'"}', "too_large"),
    (b'{"cli":"a\x01b"}', "invalid_json"),
])
def test_each_bad_line_gets_its_reason(line, reason):
    parsed = parse_batch([GOOD, line, GOOD], b"\n".join([GOOD, line, GOOD]), SCHEMA)
    assert parsed.reject_reasons == [reason]
    assert parsed.reject_rows == [1]
    assert parsed.frame["row"].to_list() == [0, 2]


def test_suspect_but_valid_lines_are_parsed_in_order():
    odd = [b'{"cli":"\\u0030\\u0037700900123","dialled":"1","start":"x","duration":1}',  # escapes
           b'{\n"cli": "07700900123"}',  # a newline inside the record
           b'{"cli":"NaN is a fine string","dialled":"2"}']
    lines = [GOOD, *odd, GOOD]
    parsed = parse_batch(lines, b"\n".join(lines), SCHEMA)
    assert parsed.reject_rows == []
    assert parsed.frame["row"].to_list() == [0, 1, 2, 3, 4]
    assert parsed.frame["cli"].to_list()[1:3] == ["07700900123", "07700900123"]


def test_types_are_read_as_text_for_validation_later():
    line = b'{"cli":447700900123,"dialled":{"a":1},"duration":"12"}'
    parsed = parse_batch([line], line, SCHEMA)
    row = parsed.frame.row(0, named=True)
    assert row["cli"] == "447700900123" and row["duration"] == "12" and row["dialled"].startswith("{")


def test_classify_line_accepts_valid_objects():
    reason, canonical = classify_line(GOOD, 65536, 32)
    assert reason is None and canonical.startswith(b"{")


def test_a_line_the_screen_misses_costs_only_a_chunk_reread():
    """Polars refuses a line the screen passed: the batch is re-read in chunks and the line judged exactly."""
    flipped = b'{"cli":"07700 900123","dialled":"999"x,"start":"2026-11-25T12:00:00Z","duration":5}'
    lines = [GOOD] * 5000 + [flipped] + [GOOD] * 5000
    parsed = parse_batch(lines, b"\n".join(lines), SCHEMA)
    assert parsed.reject_rows == [5000] and parsed.reject_reasons == ["invalid_json"]
    assert parsed.frame["row"].to_list() == [*range(5000), *range(5001, 10001)]


def test_extra_fields_and_commas_in_values_are_not_suspect_of_duplicates():
    line = b'{"cli":"a, b","dialled":"1","note":"x,y,z","start":"s","duration":"1","other":{"p":1,"q":2}}'
    parsed = parse_batch([line, GOOD], b"\n".join([line, GOOD]), SCHEMA)
    assert parsed.reject_rows == [] and parsed.frame["cli"].to_list() == ["a, b", "07700 900123"]


@given(st.lists(st.binary(max_size=12), max_size=30))
def test_control_rows_names_exactly_the_records_with_control_bytes(records):
    expected = [i for i, r in enumerate(records) if any(b < 32 and b not in (9, 10, 13) for b in r)]
    assert control_rows(records, b"\n".join(records)) == expected
