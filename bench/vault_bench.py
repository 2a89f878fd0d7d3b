"""Benchmark: vault ingest records/s and query latency for one target over one month.

A seeded workload of raw CDRs spread evenly over ``--days`` days, in time order (as the sink
sees them), numbers written in mixed formats (E.164, national, 00-prefixed, spaced, tel:),
callers drawn from a Zipf-like population. Records are sealed into retention segments the
way workers seal them (``pipeline.core.envelope.Sealer``, ~256 KiB segments), then ingested
in batches of 64 segments, one transaction each, exactly as ``cdrpipe vault sink`` does.
Only the ingest is timed for records/s (generation and sealing are reported separately), in
wall-clock seconds and in CPU seconds of both threads (``records_per_cpu_s`` does not depend on
what else the machine is running; ``records_per_s`` does).

Then, with a fresh connection, one-month queries for targets of every activity level (the
busiest subscriber, a median one, a quiet one, one given in national format), each timed
cold (first run) and warm (median of 5), including index seeks, decrypts and the exact re-check.
Last, the first month is purged (keys destroyed, tables dropped, record ids deleted) and timed.

    python bench/vault_bench.py --records 1000000 --days 365
    python bench/vault_bench.py --records 10000000 --days 365 --workdir /tmp/vault-bench

    python bench/vault_bench.py --records 1000000 --days 365 --csv-share 0.25   # a quarter Asterisk rows

Targets (issues 4 and 14): ingest >= 50,000 records/s; query < 1 s among 10M stored records, with
every input format indexed. The workload ends today, so retention (enforced at ingest) keeps it all.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.envelope import Sealer  # noqa: E402
from pipeline.core.normalise import normalise_one  # noqa: E402
from pipeline.keys import generate  # noqa: E402
from pipeline.vault.index import BlindIndexer  # noqa: E402
from pipeline.vault.ingest import Ingester, IngestTotals  # noqa: E402
from pipeline.vault.keystore import Keystore, day_number  # noqa: E402
from pipeline.vault.audit import AuditLog  # noqa: E402
from pipeline.vault.keystore import day_date  # noqa: E402
from pipeline.vault.purge import purge  # noqa: E402
from pipeline.vault.query import WarrantQuery, query_under_warrant  # noqa: E402
from pipeline.vault.session import Vault  # noqa: E402
from pipeline.vault.warrants import Warrant, WarrantRegister  # noqa: E402
from pipeline.vault.window import iso, now_us  # noqa: E402
from pipeline.vault.sink import BatchPipeline  # noqa: E402
from pipeline.vault.store import DAY_US, open_store  # noqa: E402

SEGMENT_RECORDS = 900        # ~256 KiB of ~280-byte records, as the worker's default segment_bytes
SEGMENTS_PER_BATCH = 64      # the sink's default --max-messages


def first_day(days: int) -> _dt.datetime:
    """Midnight UTC ``days - 1`` days ago: the workload ends today, so ingest keeps all of it (retention)."""
    today = _dt.datetime.now(_dt.timezone.utc).date()
    return _dt.datetime.combine(today - _dt.timedelta(days=days - 1), _dt.time(), _dt.timezone.utc)


def national(e164: str) -> str:
    """``+447700900123`` -> ``07700 900123``."""
    return "0" + e164[3:7] + " " + e164[7:]


def formats(e164: str, r: int) -> str:
    """The same GB number in one of the formats mediation systems write."""
    if r < 40:
        return e164
    if r < 65:
        return national(e164)
    if r < 80:
        return "00" + e164[1:]
    if r < 90:
        return f"+44 {e164[3:7]} {e164[7:]}"
    return "tel:" + e164


class Workload:
    """Seeded records in time order: ``--records`` over ``--days``, Zipf-like callers.

    A ``csv_share`` of them are Asterisk cdr_csv rows instead of raw v1 JSON (the vault
    recognises and indexes both), so ingest is measured with switch formats in the mix.
    """

    def __init__(self, records: int, days: int, subscribers: int, seed: int, start: _dt.datetime,
                 csv_share: float = 0.0) -> None:
        self.records, self.days, self.seed, self.start = records, days, seed, start
        self.csv_every = round(1 / csv_share) if csv_share > 0 else 0
        rng = random.Random(seed)
        self.numbers = [f"+447700{n:06d}" for n in rng.sample(range(1_000_000), subscribers)]
        self.imsi = [f"2341500{n:08d}" for n in range(subscribers)]
        self.imei = [f"35925406{n:07d}" for n in range(subscribers)]
        weights = [1.0 / (rank + 20) for rank in range(subscribers)]
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)

    def chunks(self, size: int) -> Iterator[list[bytes]]:
        """Lists of ``size`` raw records, times rising from ``start`` across ``days``."""
        rng = random.Random(self.seed + 1)
        span = self.days * 86_400
        base = int(self.start.timestamp())
        subs = range(len(self.numbers))
        for first in range(0, self.records, size):
            k = min(size, self.records - first)
            callers = rng.choices(subs, cum_weights=self.cum, k=k)
            callees = rng.choices(subs, k=k)
            fmt = [rng.randrange(100) for _ in range(2 * k)]
            out = []
            for j in range(k):
                i = first + j
                a, b = callers[j], callees[j]
                t = base + i * span // self.records
                if self.csv_every and i % self.csv_every == 0:
                    when = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
                    cli, dialled, dur = national(self.numbers[a]), self.numbers[b], (i * 7919) % 600
                    out.append(
                        f'"","{cli}","{dialled}","from-internal","""Caller"" <{cli}>","SIP/100-{i:08x}",'
                        f'"SIP/trunk-{i:08x}","Dial","SIP/trunk/{dialled},30","{when:%Y-%m-%d %H:%M:%S}",'
                        f'"{when:%Y-%m-%d %H:%M:%S}","{when + _dt.timedelta(seconds=dur):%Y-%m-%d %H:%M:%S}",'
                        f'{dur},{dur},"ANSWERED","DOCUMENTATION","{t}.{i % 1000}",""'.encode())
                    continue
                start = _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") \
                    if j % 2 else str(t)
                out.append(
                    f'{{"record_id":"b-{i:010d}","cli":"{formats(self.numbers[a], fmt[2 * j])}",'
                    f'"dialled":"{formats(self.numbers[b], fmt[2 * j + 1])}","start":{start if j % 2 == 0 else chr(34) + start + chr(34)},'
                    f'"duration":{(i * 7919) % 600},"imsi":"{self.imsi[a]}","imei":"{self.imei[a]}",'
                    f'"cell_id":"234-15-{i % 60000}-{i % 9973}","call_type":"voice","status":"answered"}}'
                    .encode())
            yield out


def seal(sealer: Sealer, lines: list[bytes], first: int) -> list[bytes]:
    """Segment envelopes for ``lines``, as a worker seals a batch."""
    out = []
    for lo in range(0, len(lines), SEGMENT_RECORDS):
        part = lines[lo:lo + SEGMENT_RECORDS]
        ids = [f"b-{first + lo + j:010d}" for j in range(len(part))]
        out.append(sealer.seal(b"\n".join(part), ids, [len(x) for x in part],
                               {"name": "cdr.raw", "partition": 0, "offset": list(range(first + lo, first + lo + len(part)))}))
    return out


def _cpu() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=365, help="days the records spread over (default 365)")
    ap.add_argument("--subscribers", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--csv-share", type=float, default=0.0,
                    help="fraction of records written as Asterisk cdr_csv rows (default 0: all raw v1 JSON)")
    ap.add_argument("--workdir", default=None, help="where the database goes (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--db", default=None, help="an empty postgresql://… vault database (default: SQLite in --workdir)")
    ap.add_argument("--keystore", default=None, help="with --db: an empty postgresql://… keystore database")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vault-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db: Any = args.db or work / "vault.db"
    keys = args.keystore or str(db) + ".keys"
    for p in work.glob("vault.db*"):
        p.unlink()
    worker, vault = generate()
    store = open_store(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid, region="GB", create=True)
    keystore = Keystore(keys, vault, create=True)
    start = first_day(args.days)
    # Retention as long as the workload, so every record is within it at ingest (none expired).
    ingester = Ingester(store, keystore, vault, retention=f"{args.days + 1}d")
    load = Workload(args.records, args.days, args.subscribers, args.seed, start, args.csv_share)

    # Generate and seal ahead (not timed), in groups, then ingest each group through the sink's
    # two-stage pipeline (timed): prepare on this thread, write on the writer thread.
    gen_s = seal_s = ingest_s = 0.0
    batch_records = SEGMENT_RECORDS * SEGMENTS_PER_BATCH
    pipeline = BatchPipeline(ingester)
    done, last = 0, time.monotonic()
    chunks = load.chunks(batch_records)
    cpu_s = 0.0
    while True:
        t0 = time.perf_counter()
        group = []
        for lines in chunks:
            group.append(lines)
            if len(group) == 8:
                break
        if not group:
            break
        t1 = time.perf_counter()
        sealed = []
        for lines in group:
            sealed.append(seal(Sealer(worker.vault_public, worker.vault_kid), lines, done))
            done += len(lines)
        t2 = time.perf_counter()
        c2 = _cpu()
        for envelopes in sealed:
            pipeline.submit(envelopes)
        pipeline.flush()
        t3 = time.perf_counter()
        cpu_s += _cpu() - c2
        gen_s += t1 - t0
        seal_s += t2 - t1
        ingest_s += t3 - t2
        if time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"  {done:,} records ingested, {done / ingest_s:,.0f} records/s", file=sys.stderr, flush=True)
    pipeline.close()
    totals: IngestTotals = pipeline.totals
    assert totals.stored == args.records, totals.summary()
    ingester.close()
    store.close()
    keystore.close()

    # Query: a fresh process-level connection, one month in the middle of the data.
    store = open_store(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid)
    keystore = Keystore(keys, vault)
    # Every search goes through the audited API, as `vault query` does: under a registered bench warrant
    # (its scope check and audit entry are part of what is timed).
    indexer = BlindIndexer(vault.index_key)
    audit = AuditLog(store.db, anchor=keystore)
    mid = start + _dt.timedelta(days=args.days // 2)
    lo = day_number(mid.date()) * DAY_US
    hi = lo + min(31, args.days) * DAY_US
    targets = {"busiest": load.numbers[0], "median": load.numbers[len(load.numbers) // 50],
               "quiet": load.numbers[-1], "2nd busiest, national format": national(load.numbers[1])}
    canonical_targets = [normalise_one("msisdn", number, region="GB") or "" for number in targets.values()]
    now = now_us()
    with store.transaction():
        WarrantRegister(store.db).add(Warrant("BENCH-1", "vault_bench", "bench", [
            ("msisdn", indexer.audit_digest("msisdn", c)) for c in canonical_targets], lo, hi, now + DAY_US, iso(now)))

    def search(number: str) -> Any:
        canonical = normalise_one("msisdn", number, region="GB")  # as `vault query --target` does
        assert canonical is not None
        query = WarrantQuery("BENCH-1", "bench", "msisdn", canonical, lo, hi, "none (bench)", _dt.date(1970, 1, 1),
                             "jsonl")
        return query_under_warrant(store, keystore, indexer, audit, query, now_us=now_us())[0]

    queries = {}
    for label, number in targets.items():
        t = time.perf_counter()
        found = search(number)
        cold = time.perf_counter() - t
        warm = []
        for _ in range(5):
            t = time.perf_counter()
            search(number)
            warm.append(time.perf_counter() - t)
        queries[label] = {"results": len(found.records), "cold_ms": round(cold * 1000, 1),
                          "warm_median_ms": round(statistics.median(warm) * 1000, 1)}
    size = int(store.db.execute("SELECT pg_database_size(current_database())").fetchone()[0]) if args.db \
        else sum(p.stat().st_size for p in work.glob("vault.db*"))
    # Purge the first month: destroy its day keys, drop its tables, delete its record ids.
    cutoff = day_number(start.date()) + min(31, args.days)
    t = time.perf_counter()
    done = purge(Vault(vault, store, keystore), audit, day_date(cutoff), "vault_bench")  # keys, then days, audited
    days, purged = done.days, done.records
    purge_s = time.perf_counter() - t
    report = {
        "backend": "postgresql" if args.db else "sqlite", "records": args.records, "days": args.days, "subscribers": args.subscribers, "seed": args.seed,
        "csv_share": args.csv_share,
        "ingest_seconds": round(ingest_s, 2), "ingest_records_per_s": round(args.records / ingest_s),
        "ingest_cpu_seconds": round(cpu_s, 2), "ingest_records_per_cpu_s": round(args.records / cpu_s),
        "load_average_1m_at_end": os.getloadavg()[0],
        "generate_seconds": round(gen_s, 2), "seal_seconds": round(seal_s, 2),
        "db_bytes_per_record": round(size / args.records, 1), "db_mib": round(size / 2**20),
        "query_window_days": min(31, args.days), "queries": queries,
        "purge_days": len(days), "purge_records": purged, "purge_seconds": round(purge_s, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    store.close()
    keystore.close()
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
