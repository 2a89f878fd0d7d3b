"""Every CDR file of a supported format in the shared corpus: routed without a crash, counts reconcile,
and no number, IP or caller name from it reaches analytics.

The MIT-licensed files are vendored in ``tests/data`` (with their provenance) and run in any clone.
The others are read in place (``<repo>/../shared/corpus``, as CI lays it out) and never copied here
because they are GPL/AGPL: their cases skip with the reason where the corpus is absent, and fail
when ``CDRPIPE_REQUIRE_CORPUS=1`` (see conftest). Which columns hold identifiers is written down per
file below, read with Python's csv module: an independent reading, not the adapter's.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.formats import load_mapping

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
MAPPINGS = DATA / "mappings"


def corpus_file(path: str, request: pytest.FixtureRequest) -> Path:
    """A corpus file: its vendored copy in tests/data (MIT), else the shared corpus (skip or fail without it)."""
    if path in VENDORED:
        return DATA / VENDORED[path]
    return request.getfixturevalue("corpus") / path


@dataclass(frozen=True)
class Case:
    """One corpus file: how to read it, and which of its columns hold identifiers."""

    path: str
    fmt: str
    region: str
    mapping: str | None = None
    delimiter: str = ","
    quoting: bool = True
    numbers: tuple[int, ...] = ()  # columns holding phone numbers, caller-ID strings, SIP URIs or user@host
    names: tuple[int, ...] = ()  # columns holding caller names (inside caller-ID strings too)
    ips: tuple[int, ...] = ()
    min_analytics: int = 1
    dlq: dict[str, int] = field(default_factory=dict)


AST = "fafeitsch-cdrcsv-report-generator"
CG = "cgrates"
CS = "cdr-stats/addons/samples"
BC = "bandicoot/bandicoot/tests/samples"
CASES = [
    Case(f"{AST}/mockdata/cdr.csv", "asterisk-csv", "US", numbers=(1, 2, 4), names=(4,), min_analytics=218),
    Case(f"{AST}/mockdata@580eb61/cdr.csv", "asterisk-csv", "US", numbers=(1, 2, 4), names=(4,), min_analytics=218),
    Case(f"{AST}/mockdata/smallcdr.csv", "asterisk-csv", "US", numbers=(1, 2, 4), names=(4,), min_analytics=45),
    Case(f"{AST}/mockdata/smallcdr_wo_parallelcalls.csv", "asterisk-csv", "US", numbers=(1, 2, 4), names=(4,),
         min_analytics=34),
    Case(f"{AST}/samples/create_test_cdr.csv", "asterisk-csv", "DE", numbers=(1, 2, 4, 8), names=(4,),
         min_analytics=10),
    Case("asterisk-testsuite/lib/python/asterisk/self_test/Master.csv", "asterisk-csv", "US", numbers=(1, 2, 4),
         min_analytics=2),
    Case("asterisk-testsuite/lib/python/asterisk/self_test/Master2.csv", "asterisk-csv", "US", numbers=(1, 2, 4),
         min_analytics=1),
    Case(f"{CG}/ers_flatstore__fullSuccessfull.acc", "acc", "DE", "cgrates-flatstore.toml", "|", False,
         numbers=(8, 9), min_analytics=4, dlq={"acc_in_call_request": 4}),
    Case(f"{CG}/ers_flatstore__fullMissed.acc", "acc", "DE", "cgrates-flatstore.toml", "|", False,
         numbers=(8, 9), min_analytics=3),
    Case(f"{CG}/ers_flatstore__ackSuccessfull.acc", "acc", "DE", "cgrates-flatstore.toml", "|", False,
         numbers=(8, 9), min_analytics=4, dlq={"acc_in_call_request": 8}),
    Case(f"{CG}/ers_flatstore__ackSuccessfull2.csv", "acc", "DE", "cgrates-acc-csv.toml",
         numbers=(8, 9, 12, 13, 14), ips=(10, 11, 15), min_analytics=2, dlq={"acc_in_call_request": 5}),
    Case(f"{CG}/ers_filecsv__fileContent1.csv", "csv", "DE", "cgrates-export.toml", numbers=(8, 9, 10),
         min_analytics=2),
    Case(f"{CG}/ers_filecsv__fileContent2.csv", "csv", "DE", "cgrates-semicolon.toml", ";", numbers=(3, 4),
         min_analytics=3, dlq={"comment_line": 1}),
    Case(f"{CG}/ers_partial_csv__partCsvFileContent1.csv", "csv", "DE", "cgrates-partial.toml", numbers=(0, 1),
         min_analytics=2),
    Case(f"{CS}/cdrimport/CDRImport-2015-10-26.csv", "csv", "ES", "cdrstats-cdrimport.toml", numbers=(3, 5),
         names=(), ips=(0,), min_analytics=5, dlq={"header_line": 1}),
    Case(f"{CS}/import_cdr.txt", "csv", "US", "cdrstats-import.toml", numbers=(1, 2), min_analytics=5,
         dlq={"empty": 1}),
    Case(f"{CS}/import_cdr_100.txt", "csv", "US", "cdrstats-import100.toml", numbers=(0, 2), names=(1,),
         min_analytics=99, dlq={"invalid_field": 1}),
    Case(f"{CS}/billing/import_voipcall_report.txt", "csv", "GB", "cdrstats-voipcall.toml", numbers=(0, 1),
         min_analytics=9, dlq={"wrong_column_count": 1}),
    Case("areski-cdr-pusher/sqlitedb/cdr.db.export.csv", "csv", "US", "areski-cdr-export.toml", numbers=(2, 5),
         names=(1,), min_analytics=50, dlq={"header_line": 1}),
    Case(f"{BC}/u_test.csv", "csv", "US", "orange-d4d.toml", ";", numbers=(2, 3), min_analytics=500),
    Case(f"{BC}/manual/A_orange.csv", "csv", "US", "orange-d4d.toml", ";", numbers=(2, 3), min_analytics=7),
    Case(f"{BC}/manual/B_orange.csv", "csv", "US", "orange-d4d.toml", ";", numbers=(2, 3), min_analytics=4,
         dlq={"missing_field": 3, "empty": 1}),  # texts without a duration pass; calls without one do not
]
#: Corpus files copied into tests/data (MIT; provenance beside each): corpus path -> path under tests/data.
VENDORED = {
    f"{AST}/mockdata/cdr.csv": "fafeitsch/asterisk-master.csv",
    f"{AST}/mockdata@580eb61/cdr.csv": "fafeitsch/asterisk-master-580eb61.csv",
    f"{AST}/mockdata/smallcdr.csv": "fafeitsch/smallcdr.csv",
    f"{AST}/mockdata/smallcdr_wo_parallelcalls.csv": "fafeitsch/smallcdr_wo_parallelcalls.csv",
    f"{AST}/samples/create_test_cdr.csv": "fafeitsch/create_test_cdr.csv",
    "areski-cdr-pusher/sqlitedb/cdr.db.export.csv": "areski/cdr.db.export.csv",
    f"{BC}/u_test.csv": "bandicoot/u_test.csv",
    f"{BC}/manual/A_orange.csv": "bandicoot/A_orange.csv",
    f"{BC}/manual/B_orange.csv": "bandicoot/B_orange.csv",
}


def _lines(path: Path) -> list[bytes]:
    """The file's records exactly as the file runner cuts them (newline-split, last newline dropped)."""
    data = path.read_bytes()
    return (data[:-1] if data.endswith(b"\n") else data).split(b"\n")


def _identifiers(case: Case, path: Path) -> tuple[set[str], set[str], set[str], set[str]]:
    """Long numbers (digits only), short numbers, caller names and IPs in the file's identifier columns."""
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    reader = csv.reader(io.StringIO(text), delimiter=case.delimiter, skipinitialspace=True,
                        quoting=csv.QUOTE_MINIMAL if case.quoting else csv.QUOTE_NONE)
    long_numbers, short_numbers, names, ips = set(), set(), set(), set()
    for row in reader:
        cells = [c.strip() for c in row]
        for i in case.numbers:
            if i >= len(cells):
                continue
            for part in re.findall(r"<([^>]*)>", cells[i]) or [cells[i]]:
                user = re.sub(r"^(?:sips?|tel):", "", part).split("@")[0].split(";")[0]
                digits = re.sub(r"\D", "", re.sub(r"\s*x\d+$", "", user))
                if len(digits) >= 7:
                    long_numbers.add(digits)
                elif user.strip():
                    short_numbers.add(user.strip())  # an extension or an alphanumeric id: checked as a whole value
            for ip in re.findall(r"\d{1,3}(?:\.\d{1,3}){3}", cells[i]):
                ips.add(ip)
        for i in case.names:
            if i < len(cells):
                m = re.match(r'^"?(.*?)"?\s*(?:<[^>]*>)?$', cells[i])
                name = (m.group(1) if m else cells[i]).strip('" ')
                if len(name) > 3 and not re.fullmatch(r"[\d\-. ]+", name):
                    names.add(name)
        for i in case.ips:
            if i < len(cells) and re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?", cells[i]):
                ips.add(cells[i].split(":")[0])
    return long_numbers, short_numbers, names, ips


@pytest.mark.parametrize("case", CASES, ids=[c.path.rsplit("/", 2)[-2] + "/" + Path(c.path).name for c in CASES])
def test_corpus_file_routes_reconciles_and_does_not_leak(worker_keyring, case, request):
    path = corpus_file(case.path, request)
    assert path.is_file(), f"corpus file missing: {case.path}"
    lines = _lines(path)
    opts = load_mapping(MAPPINGS / case.mapping) if case.mapping else ()
    router = Router(worker_keyring, CoreConfig(format=case.fmt, region=case.region, format_options=opts))
    routed = router.route(lines, Source(path.name, 0, range(len(lines))))
    c = routed.counts
    assert c["in"] == c["retention"] == len(lines)
    assert c["in"] == c["analytics"] + c["dlq"] + c["suppressed"]
    assert c["analytics"] >= case.min_analytics
    assert dict(routed.dlq_reasons) == case.dlq
    for entry in routed.dlq:  # every reject is accounted for with a code and a value-free detail
        doc = orjson.loads(entry)
        assert doc["reason"] and doc["detail"]

    long_numbers, short_numbers, names, ips = _identifiers(case, path)
    assert long_numbers or short_numbers, "the test must know the file's numbers to prove they do not leak"
    analytics = routed.analytics_ndjson()
    digits_only = re.sub(rb"[\s\-.()+/]", b"", analytics)
    for number in long_numbers:
        assert number.encode() not in digits_only
    rows = [orjson.loads(x) for x in analytics.splitlines()]
    values = {v for r in rows for v in r.values() if isinstance(v, str)}
    for short in short_numbers:
        assert short not in values and short.upper() not in values
    for name in names:
        assert name.encode() not in analytics
    for ip in ips:
        assert ip.encode() not in analytics
    # Numbers are tokens with a class, never text that could be a number.
    for r in rows:
        for party in ("cli", "dialled"):
            assert r[party] is None or re.fullmatch(r"[A-Za-z0-9]+:[0-9a-f]{16,64}", r[party])


def test_corpus_asterisk_callers_and_callees_join(worker_keyring, request):
    """The same subscriber as caller and as callee gets one token across the file (A->B calls join)."""
    lines = _lines(corpus_file(f"{AST}/mockdata/cdr.csv", request))
    routed = Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US")).route(
        lines, Source("cdr.csv", 0, range(len(lines))))
    rows = routed.analytics_records()
    assert {r["cli"] for r in rows} & {r["dialled"] for r in rows}
    ids = [r["record_id"] for r in rows]
    assert len(set(ids)) == len(ids), "legs sharing a uniqueid must still get unique record ids"


def test_corpus_freeswitch_json_cdr_as_one_message_and_as_one_line(worker_keyring, corpus):
    """The pretty-printed json_cdr as one Kafka message, and compacted as one file line, give one record."""
    raw = (corpus / CG / "engine_fscdr__body.json").read_bytes()
    compact = orjson.dumps(json.loads(raw))
    router = Router(worker_keyring, CoreConfig(format="freeswitch-json", region="US"))
    out = []
    for record in (raw, compact):
        routed = router.route([record], Source("fs", 0, [0]))
        assert routed.counts == {"in": 1, "analytics": 1, "retention": 1, "dlq": 0, "suppressed": 0}
        out.append(routed.analytics_records()[0])
        text = routed.analytics_ndjson()
        for ip in (b"10.10.10.100", b"10.10.10.204"):
            assert ip not in text
        assert b'"1001"' not in text and b'"1002"' not in text
    assert out[0] == out[1]
    row = out[0]
    # The call's uuid is kept only as a keyed token (the default policy's token:record), never in clear.
    assert re.fullmatch(r"[A-Za-z0-9]+:[0-9a-f]{32}", row["record_id"]) and "3da8bf84" not in row["record_id"]
    assert row["duration"] == 68  # billsec, not the 71 s including ringing
    assert row["start"] == "2018-01-11T10:00:00Z"  # start_uepoch 1515666344534355, coarsened
    assert row["ip"] == "10.10.10.0/24" and row["status"] == "normal_clearing"
    assert row["cli_class"] == row["dialled_class"] == "extension" and row["cli"] != row["dialled"]
