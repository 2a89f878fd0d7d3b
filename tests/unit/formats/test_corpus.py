"""Real third-party CDRs (tests/data, MIT): no number or caller name from them reaches analytics."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import orjson

from pipeline.core.router import CoreConfig, Router, Source

DATA = Path(__file__).resolve().parents[2] / "data" / "fafeitsch" / "asterisk-master.csv"


def _records() -> tuple[list[bytes], set[str], set[str]]:
    """Raw v1 records from Asterisk Master.csv rows, the numbers (digits only) and the caller names."""
    lines, numbers, names = [], set(), set()
    with DATA.open(newline="") as fh:
        for row, cols in enumerate(csv.reader(fh)):
            src, dst, clid, start, duration, uniqueid = cols[1], cols[2], cols[4], cols[9], cols[12], cols[16]
            m = re.match(r'^"?(.*?)"?\s*<([^>]*)>$', clid)
            name, clid_number = (m.group(1), m.group(2)) if m else ("", "")
            numbers |= {re.sub(r"\D", "", n) for n in (src, dst, clid_number) if len(re.sub(r"\D", "", n)) >= 7}
            if len(name) > 3:
                names.add(name)
            lines.append(orjson.dumps({"record_id": f"{uniqueid}-{row}", "cli": src, "dialled": dst,
                                       "start": start, "duration": int(duration), "clid": clid,
                                       "disposition": cols[14]}))
    return lines, numbers, names


def test_asterisk_corpus_routes_without_leaks(worker_keyring):
    lines, numbers, names = _records()
    assert len(lines) == 218 and numbers and names
    routed = Router(worker_keyring, CoreConfig(region="US")).route(lines, Source("asterisk", 0, range(len(lines))))
    c = routed.counts
    assert c["in"] == c["retention"] == c["analytics"] + c["dlq"] + c["suppressed"] == 218
    assert c["analytics"] == 218  # every row of this file is a valid call record
    analytics = routed.analytics_ndjson()
    digits_only = re.sub(rb"[\s\-.()+]", b"", analytics)
    for number in numbers:
        assert number.encode() not in digits_only
    for name in names:
        assert name.encode() not in analytics
    # The same number as caller and as callee joins: one token per subscriber across the file.
    rows = [orjson.loads(x) for x in analytics.splitlines()]
    callers = {r["cli"] for r in rows}
    assert callers & {r["dialled"] for r in rows}


def test_asterisk_corpus_record_ids_never_leave_the_sealed_payload(worker_keyring):
    """Asterisk uniqueids are the call's start second (``1497953261.5``): through the adapter, no 7-digit
    run of any of them reaches analytics, the DLQ (outside its sealed payload) or an envelope header."""
    raw = DATA.read_bytes().rstrip(b"\n").split(b"\n")
    uniqueids = {cols[16] for cols in csv.reader(DATA.read_text().splitlines()) if len(cols) > 16 and cols[16]}
    runs = {m for u in uniqueids for m in re.findall(r"\d{7,}", u)}
    assert len(uniqueids) > 100 and runs
    router = Router(worker_keyring, CoreConfig(format="asterisk-csv", region="US"))
    routed = router.route(raw + [b'"","x","y","c","n","a","b","Dial","d","bad-date","","","z","z",'
                                 b'"ANSWERED","DOCUMENTATION","1497953261.99",""'],
                          Source("Master.csv", 0, range(len(raw) + 1)))
    assert routed.counts["analytics"] == len(raw) and routed.counts["dlq"] == 1
    headers = [orjson.dumps({k: v for k, v in orjson.loads(s).items() if k not in ("ct", "wrapped_key")})
               for s in routed.retention]
    dlq = [orjson.dumps({**d, "payload": {k: v for k, v in d["payload"].items() if k not in ("ct", "wrapped_key")}})
           for d in map(orjson.loads, routed.dlq)]
    outside = routed.analytics.buffer + b"".join(headers) + b"".join(dlq) + b"".join(
        k.encode() for k in routed.dlq.keys if k)
    for run in runs | {"1497953261"}:
        assert run.encode() not in outside
    refs = {orjson.loads(line)["record_id"] for line in routed.analytics}
    assert len(refs) == len(raw)  # one stable, distinct ref per call leg
