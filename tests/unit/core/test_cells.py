"""Cell ids: every form networks emit is generalised to its area or site; one in no known form is
nulled in analytics (the record kept), counted by reason in the summary and the metrics."""
from __future__ import annotations

import random

import orjson
import pytest
from prometheus_client import CollectorRegistry

from pipeline.core.router import Router, Source
from pipeline.metrics import WorkerMetrics

BASE = {"cli": "+447700900123", "dialled": "+447700900456", "start": "2026-11-26T10:15:42Z", "duration": 60}


def _route(router: Router, cells: list[object]):
    lines = [orjson.dumps({**BASE, "record_id": f"c-{i}", "cell_id": c}) for i, c in enumerate(cells)]
    return router.route(lines, Source("cells", 0, range(len(lines))))


@pytest.mark.parametrize("cell, area", [
    ("234-15-57065-40534717", "234-15-57065"),           # MCC-MNC-LAC-CI
    ("23415-57065-40534717", "234-15-57065"),            # MCCMNC-LAC-CI, 2-digit MNC
    ("310260-4711-0x1A2B", "310-260-4711"),              # MCCMNC, 3-digit MNC (North America)
    ("405854-101-20003", "405-854-101"),                 # India's 405 series: 3-digit MNCs
    ("208010-0A1F-77", "208-10-0A1F"),                   # a padded 2-digit MNC is the same network
    ("208-01-0A1F-77", "208-01-0A1F"),
    ("262:01:0x9C4:0x1B207", "262-01-9C4"),              # hex with 0x, colons
    ("CGI 234-15-57065-40534717", "234-15-57065"),
    ("234-15-1A2B-1A2B3C4", "234-15-1A2B"),              # TAC + ECI: the tracking area
    ("TAI:23415-0x00AB", "234-15-00AB"),                 # already an area
    ("ECGI 234-15-0x1A2B3C4", "234-15-enb107187"),       # LTE ECI 28 bits: eNodeB = ECI >> 8
    ("ecgi=23415-27409348", "234-15-enb107067"),         # decimal ECI, compact PLMN
    ("NCGI:310-410-0x123456789", "310-410-gnb298261"),   # 5G NCI 36 bits: gNB (22-bit id) = NCI >> 14
    ("310-410-4886718345", "310-410-gnb298261"),         # unlabelled, over 28 bits: an NCI
])
def test_every_form_is_generalised(worker_keyring, cell, area) -> None:
    routed = _route(Router(worker_keyring), [cell, f"  {cell}\t"])
    assert routed.counts["dlq"] == 0 and not routed.nulled
    assert [r["cell_id"] for r in routed.analytics_records()] == [area, area]


def test_the_held_out_compact_workload_reaches_analytics(worker_keyring) -> None:
    """The held-out feed that lost 99.6% of its records: compact MCCMNC-LAC-CI, many cells, all kept."""
    rng = random.Random(7)
    cells = [f"23415-{rng.randrange(1, 65535)}-{rng.randrange(1, 1 << 28)}" for _ in range(2000)]
    routed = _route(Router(worker_keyring), cells)
    assert routed.counts["analytics"] == 2000 and routed.counts["dlq"] == 0
    got = [r["cell_id"] for r in routed.analytics_records()]
    assert got == ["234-15-" + c.split("-")[1] for c in cells]
    assert all(c.split("-")[2] not in g for c, g in zip(cells, got))  # the antenna never reaches analytics


@pytest.mark.parametrize("cell, reason", [
    ("cell 17", "unrecognised_form"), ("17", "unrecognised_form"), ("2341-57065-40534717", "unrecognised_form"),
    ("234-15", "unrecognised_form"), ("234-15-1-2-3", "unrecognised_form"), ("", "unrecognised_form"),
    ("ecgi:234-15-0x1A2B3C4D", "out_of_range"),   # 29 bits is no ECI
    ("234-15-0x1FFFFFFFFF", "out_of_range"),       # 37 bits is no NCI
    ("234-15-123456789-1", "out_of_range"),        # a LAC/TAC of 9 digits
    (12345, "unrecognised_form"),                  # a JSON number, not a cell id form
])
def test_an_unreadable_cell_id_is_nulled_and_counted_not_rejected(worker_keyring, cell, reason) -> None:
    routed = _route(Router(worker_keyring), [cell, "234-15-57065-1"])
    assert routed.counts["dlq"] == 0 and routed.counts["analytics"] == 2
    assert [r["cell_id"] for r in routed.analytics_records()] == [None, "234-15-57065"]
    assert routed.nulled == {f"cell_id:{reason}": 1}


def test_an_absent_cell_id_is_null_and_not_counted(worker_keyring) -> None:
    routed = _route(Router(worker_keyring), [None])
    assert routed.analytics_records()[0]["cell_id"] is None and not routed.nulled


def test_the_file_summary_and_the_metrics_count_nulled_cells(worker_keyring, tmp_path, capsys) -> None:
    from pipeline.cli import main
    from pipeline.keys import write_private_json
    keyring = tmp_path / "worker-keyring.json"
    write_private_json(keyring, worker_keyring.to_json())
    lines = [orjson.dumps({**BASE, "record_id": f"f-{i}", "cell_id": c})
             for i, c in enumerate(["23415-1-2", "mast 7", "mast 8", "ecgi:234-15-0xFFFFFFFF"])]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(keyring), "--input", str(src), "--out-dir", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    summary = orjson.loads(captured.out.strip().splitlines()[-1])
    assert summary["analytics"] == 4 and summary["dlq"] == 0
    assert summary["nulled"] == {"cell_id:out_of_range": 1, "cell_id:unrecognised_form": 2}
    assert "mast" not in captured.err and "cell_id:unrecognised_form 2" in captured.err

    metrics = WorkerMetrics(CollectorRegistry())
    routed = _route(Router(worker_keyring), ["mast 7", "23415-1-2"])
    metrics.observe_commit(routed.counts, routed.dlq_reasons, 2, 0.1, 1, routed.nulled)
    assert metrics.registry.get_sample_value(
        "cdrpipe_values_nulled_total", {"field": "cell_id", "reason": "unrecognised_form"}) == 1
