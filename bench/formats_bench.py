"""Records/s of the asterisk-csv adapter and of the whole core over a large, realistic Master.csv.

The workload is the vendored MIT Asterisk sample (tests/data/fafeitsch) repeated and mutated
with a fixed seed: every copy gets new NANP numbers (a Zipf-skewed subscriber population, so
numbers recur as on a real PBX), shifted times, new uniqueids and caller names, and a few rows
are made awkward on purpose (column-padded, negative billsec, a broken quote) so the slow path
is exercised at a realistic rate. Batches are cut like ``cdrpipe process`` cuts a file.

    python bench/formats_bench.py --rows 1000000
"""
from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

import polars as pl

from pipeline.core.router import CONTRACT_FIELDS, CoreConfig, Router, Source
from pipeline.formats import get_format
from pipeline.keys import generate
from pipeline.policy import load_policy

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "fafeitsch" / "asterisk-master.csv"
_NUMBER = re.compile(rb"\d{3}-\d{3}-\d{4}")


def workload(rows: int, seed: int = 7, subscribers: int = 50_000, odd_every: int = 2_000) -> bytes:
    """A Master.csv of ``rows`` rows: the sample's rows with new numbers, ids and times."""
    rng = random.Random(seed)
    base = SAMPLE.read_bytes().rstrip(b"\n").split(b"\n")
    # Zipf-like: a few busy lines, a long tail.
    weights = [1 / (k + 1) for k in range(subscribers)]
    population = [f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}".encode()
                  for _ in range(subscribers)]
    picks = rng.choices(population, weights, k=rows * 2 + 16)
    out = []
    p = 0
    for i in range(rows):
        row = base[i % len(base)]
        numbers = {m: picks[p + k] for k, m in enumerate(dict.fromkeys(_NUMBER.findall(row)))}
        p += 2
        row = _NUMBER.sub(lambda m: numbers.get(m.group(0), m.group(0)), row)
        row = row.replace(b'"149', b'"%d' % (150 + i // len(base) % 800), 1)  # new uniqueid per copy
        row = row.replace(b'"2017-06-', b'"20%02d-06-' % (17 + i // len(base) % 8))
        if i % odd_every == 1:
            row = row.replace(b'","', b'"   ,"', 2)  # column-padded export (slow path, still valid)
        elif i % odd_every == 2:
            row = row.replace(b',0,"', b',-6,"', 1)  # negative billsec: a DLQ reason
        elif i % odd_every == 3:
            row = row[:-5]  # cut mid-field: invalid_csv
        out.append(row)
    return b"\n".join(out)


def batches(data: bytes, batch_bytes: int) -> list[list[bytes]]:
    """Lists of lines of about ``batch_bytes``, cut on line boundaries like the file runner."""
    out, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + batch_bytes) if start + batch_bytes < len(data) else len(data)
        end = len(data) if end <= start else end
        out.append(data[start:end].split(b"\n"))
        start = end + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-bytes", type=int, default=8 << 20)
    ap.add_argument("--region", default="US")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes; the best is reported")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = workload(args.rows)
    parts = batches(data, args.batch_bytes)
    print(f"workload: {args.rows:,} rows, {len(data) / 1e6:.0f} MB, {len(parts)} batches "
          f"(built in {time.perf_counter() - t0:.1f} s)")

    policy = load_policy()
    schema = {f: pl.String for f in dict.fromkeys([*CONTRACT_FIELDS, *(r.field for r in policy.rules)])}
    adapter = get_format("asterisk-csv")
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        for lines in parts:
            adapter(lines, b"\n".join(lines), schema)
        best = min(best, time.perf_counter() - t)
    print(f"asterisk-csv adapter only: {args.rows / best:,.0f} records/s ({best:.2f} s)")

    router = Router(generate()[0], CoreConfig(policy=policy, region=args.region, format="asterisk-csv"))
    best, counts = float("inf"), {}
    for _ in range(args.repeat):
        t = time.perf_counter()
        totals = {"in": 0, "analytics": 0, "dlq": 0}
        first = 0
        for lines in parts:
            routed = router.route(lines, Source("Master.csv", 0, range(first, first + len(lines))))
            routed.analytics_ndjson()
            first += len(lines)
            for k in totals:
                totals[k] += routed.counts[k]
        best, counts = min(best, time.perf_counter() - t), totals
    print(f"core (parse, validate, tokenise, seal, emit) with asterisk-csv: {args.rows / best:,.0f} records/s "
          f"({best:.2f} s; one process, warm caches) counts {counts}")


if __name__ == "__main__":
    main()
