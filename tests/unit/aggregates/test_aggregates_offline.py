"""aggregate_offline: the definition of a released group (k distinct callers, tumbling windows),
and the watermark rule the streaming app closes windows by."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pipeline.aggregates.offline import (aggregate_offline, call_fact, group_key, offline_groups, parse_start,
                                         window_of)
from pipeline.aggregates.watermark import Watermark
from pipeline.core.router import Router, Source
from pipeline.synthetic import generate

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
AGGREGATE = Draft202012Validator(json.loads((SCHEMAS / "aggregate.v1.json").read_text()),
                                 format_checker=Draft202012Validator.FORMAT_CHECKER)


def _rec(cli: str | None, cell: str | None, start: str = "2026-03-01T10:00:00Z", duration: int = 60) -> dict:
    return {"record_id": "r", "cli": cli, "cli_class": "e164" if cli else "withheld", "dialled": "k1:" + "d" * 32,
            "dialled_class": "e164", "start": start, "duration": duration, "ip": None, "imsi": None, "imei": None,
            "cell_id": cell, "call_type": "voice", "status": "answered"}


def _callers(n: int, cell: str, start: str = "2026-03-01T10:00:00Z", calls_each: int = 1, duration: int = 60) -> list[dict]:
    return [_rec(f"k1:{i:032x}", cell, start, duration) for i in range(n) for _ in range(calls_each)]


def test_group_released_at_exactly_k_distinct_callers_and_not_below() -> None:
    records = _callers(5, "234-15-1A") + _callers(4, "234-15-2B", calls_each=50)
    out = aggregate_offline(records, k=5)
    assert [a["cell_id"] for a in out] == ["234-15-1A"]
    assert out[0] == {"type": "cdr.aggregate/1", "cell_id": "234-15-1A", "window_start": "2026-03-01T10:00:00Z",
                      "window_end": "2026-03-01T11:00:00Z", "calls": 5, "duration_total": 300,
                      "distinct_callers": 5, "k": 5}
    assert aggregate_offline(records, k=4)[1]["calls"] == 200  # the 4-caller group appears once k allows it


def test_withheld_calls_count_as_calls_never_as_callers() -> None:
    """k-1 known callers plus any number of withheld calls stay suppressed."""
    records = _callers(4, "234-15-1A") + [_rec(None, "234-15-1A") for _ in range(30)]
    assert aggregate_offline(records, k=5) == []
    out = aggregate_offline(records + _callers(5, "234-15-1A"), k=5)  # the same 4 tokens again +1 new
    assert out[0]["distinct_callers"] == 5 and out[0]["calls"] == 39


def test_a_key_rotation_cannot_double_a_subscriber() -> None:
    """4 subscribers seen under an old and a new key are 8 tokens but still 4 subscribers."""
    old = [_rec(f"k2026a:{i:032x}", "234-15-1A") for i in range(4)]
    new = [_rec(f"k2026b:{i + 50:032x}", "234-15-1A") for i in range(4)]
    assert aggregate_offline(old + new, k=5) == []
    more = [_rec(f"k2026b:{i + 90:032x}", "234-15-1A") for i in range(1)]
    out = aggregate_offline(old + new + more, k=5)
    assert out[0]["distinct_callers"] == 5 and out[0]["calls"] == 9


def test_windows_are_tumbling_and_epoch_aligned() -> None:
    records = (_callers(5, "234-15-1A", "2026-03-01T10:00:00Z") + _callers(5, "234-15-1A", "2026-03-01T11:00:00Z")
               + _callers(3, "234-15-1A", "2026-03-01T12:00:00Z"))
    hourly = aggregate_offline(records, window=3600, k=5)
    assert [a["window_start"] for a in hourly] == ["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z"]
    daily = aggregate_offline(records, window=86_400, k=5)
    assert len(daily) == 1 and daily[0]["calls"] == 13 and daily[0]["window_end"] == "2026-03-02T00:00:00Z"
    assert window_of(parse_start("2026-03-01T10:59:59Z"), 3600) == parse_start("2026-03-01T10:00:00Z")
    two_hour = aggregate_offline(records, window=7200, k=5)
    # 10:00-12:00 holds the same 5 callers twice; 12:00-14:00 only 3 of them
    assert [(a["window_start"], a["calls"], a["distinct_callers"]) for a in two_hour] == [
        ("2026-03-01T10:00:00Z", 10, 5)]


def test_unknown_area_is_its_own_group_and_unusable_records_are_skipped() -> None:
    records = _callers(5, None) + [_rec("k1:" + "e" * 32, "234-15-1A", start="yesterday"),
                                   {**_rec("k1:" + "f" * 32, "234-15-1A"), "duration": -1},
                                   {**_rec("k1:" + "f" * 32, "234-15-1A"), "duration": True}]
    out = aggregate_offline(records, k=5)
    assert len(out) == 1 and out[0]["cell_id"] is None
    assert group_key(None, parse_start("2026-03-01T10:00:00Z")) == "-|2026-03-01T10:00:00Z"
    assert call_fact({"start": "2026-03-01T10:00:00"}, 3600) is None  # no zone: refused, not guessed


@pytest.mark.parametrize("window, k", [(3600, 1), (3600, 0), (30, 5), (7000, 5)])
def test_parameters_that_void_the_guarantee_are_refused(window, k) -> None:
    with pytest.raises(ValueError):
        aggregate_offline([], window=window, k=k)


def test_pipeline_output_aggregates_validate_and_respect_k(worker_keyring) -> None:
    """Real analytics records from the core: every released group has >= k distinct callers,
    matches an independent count, and validates against schemas/aggregate.v1.json."""
    lines = b"".join(generate(3000, seed=5, subscribers=120, malformed_rate=0.0)).split(b"\n")[:-1]
    batch = Router(worker_keyring).route(lines, Source("t", 0, list(range(len(lines)))))
    records = batch.analytics_records()
    k = 3
    out = aggregate_offline(records, k=k)
    groups = offline_groups(records)
    assert out and len(out) < len(groups)  # some released, some suppressed
    for agg in out:
        assert not list(AGGREGATE.iter_errors(agg))
        ws = parse_start(agg["window_start"])
        mine = [r for r in records if r["cell_id"] == agg["cell_id"] and window_of(parse_start(r["start"]), 3600) == ws]
        assert agg["calls"] == len(mine) and agg["duration_total"] == sum(r["duration"] for r in mine)
        assert agg["distinct_callers"] == len({r["cli"] for r in mine if r["cli"]}) >= k
    released = {(a["cell_id"], a["window_start"]) for a in out}
    for (cell, ws), g in groups.items():
        assert ((cell, group_key(cell, ws).split("|")[1]) in released) == (g.distinct >= k)


# --------------------------------------------------------------------------- watermark

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watermark_waits_for_every_delivering_partition() -> None:
    clock = _Clock()
    wm = Watermark(idle_timeout=5, clock=clock)
    wm.assigned({0, 1})
    assert wm.value() is None                   # nothing delivered yet
    wm.observe(0, 7200)
    assert wm.value() is None                   # partition 1 may still hold older records
    wm.observe(1, 3600)
    assert wm.value() == 3600                   # the slower partition decides
    clock.now = 3.0
    wm.observe(0, 10800)
    assert wm.value() == 3600
    clock.now = 6.0                             # partition 1 silent for 6 s > 5: idle
    assert wm.value() == 10800
    wm.observe(1, 7200)                         # it speaks again: it holds the watermark again
    assert wm.value() == 7200
    clock.now = 20.0                            # everyone idle: the latest time seen anywhere
    assert wm.value() == 10800


def test_watermark_forgets_revoked_partitions_and_idles_empty_ones() -> None:
    clock = _Clock()
    wm = Watermark(idle_timeout=2, clock=clock)
    wm.assigned({0, 1, 2})
    wm.observe(0, 3600)
    clock.now = 2.5                             # 1 and 2 never delivered: idle after the timeout
    assert wm.value() == 3600
    wm.observe(1, 100)
    wm.assigned({0})                            # 1 revoked: its old time no longer counts
    assert wm.value() == 3600
