"""Times as switches write them: the exact reader and the native core date each shape the same.

The compact ``YYYYMMDDhhmmss`` (14 digits) is the shape that matters here: read as a
millisecond epoch, as the digit-count rule once did, it dated every call six centuries ahead
and nothing went to the DLQ.
"""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from pipeline.core.router import Source
from pipeline.core.times import parse_times
from pipeline.lazy import polars as pl


def _read(raw: str) -> datetime | None:
    return parse_times(pl.Series("t", [raw], dtype=pl.String)).to_list()[0]


@pytest.mark.parametrize("raw, expected", [
    ("20261125093654", datetime(2026, 11, 25, 9, 36, 54, tzinfo=timezone.utc)),  # compact, naive = UTC
    ("20240229235959", datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone.utc)),
    ("1767323045123", datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=timezone.utc)),  # 13 digits: milliseconds
    ("1767323045", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("1767323045123456", datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)),
])
def test_the_exact_reader_tells_compact_times_from_epochs(raw: str, expected: datetime) -> None:
    assert _read(raw) == expected


@pytest.mark.parametrize("raw", ["20261301000000", "20260229000000", "20261100000000", "20261125240000",
                                 "99999999999999", "20261125093654.5"])
def test_no_14_digit_value_is_read_as_milliseconds(raw: str) -> None:
    assert _read(raw) is None


def test_the_core_dates_compact_times_as_the_exact_reader_does(router) -> None:
    times = ["20261125093654", "2026-11-25T09:36:54Z", "20261301000000", "1767323045123"]
    lines = [orjson.dumps({"record_id": f"r-{i}", "cli": "+447700900123", "dialled": "+447700900456", "start": t,
                           "duration": 5}) for i, t in enumerate(times)]
    routed = router.route(lines, Source("t", 0, range(len(lines))))
    starts = [orjson.loads(v)["start"] for v in routed.analytics.values()]
    assert starts == ["2026-11-25T09:00:00Z", "2026-11-25T09:00:00Z", "2026-01-02T03:00:00Z"]
    assert routed.dlq_reasons == {"invalid_field": 1}
