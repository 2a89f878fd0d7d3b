"""Benchmark: vault ingest records/s and query latency for one target over one month.

A seeded workload of raw CDRs spread evenly over ``--days`` days, in time order (as the sink
sees them), numbers written in mixed formats (E.164, national, 00-prefixed, spaced, tel:),
callers drawn from a Zipf-like population. Records are sealed into retention segments the
way workers seal them (``pipeline.core.envelope.Sealer``, ~256 KiB segments), then ingested
in batches of 64 segments, one transaction each, exactly as ``cdrpipe vault sink`` does.
Only the ingest is timed for records/s (generation and sealing are reported separately), in
wall-clock seconds and in CPU seconds of both threads (``records_per_cpu_s`` does not depend on
what else the machine is running; ``records_per_s`` does).

With ``--sinks N`` (N > 1) everything is sealed to one file per sink first (batch b to sink
b mod N, as a consumer group deals partitions); then N sink processes start together, each with
its own store, keystore and ingester, and the aggregate is timed from the first start to the
last end. Afterwards the database itself is counted: records, distinct record ids and id rows
must each equal the input (nothing lost, nothing stored twice). SQLite works too: its sinks
prepare in parallel and take turns on the write lock. ``--pg-local`` starts a throwaway
PostgreSQL cluster (``PG_BENCH_SETTINGS``: durable, tuned as a platform team would) and also
reports the server's CPU per record and its busiest statements (pg_stat_statements); every run
reports how busy the whole machine was and how much of that was neither the sinks nor the server.

Then, with a fresh connection, one-month queries for targets of every activity level (the
busiest subscriber, a median one, a quiet one, one given in national format), each timed
cold (first run) and warm (median of 5), including index seeks, decrypts and the exact re-check.
Last, the first day is purged alone, then the rest of the first month (keys destroyed, tables
or partitions dropped, record ids deleted), each timed.

    python bench/vault_bench.py --records 1000000 --days 365
    python bench/vault_bench.py --records 10000000 --days 365 --workdir /tmp/vault-bench

    python bench/vault_bench.py --records 1000000 --days 365 --csv-share 0.25   # a quarter Asterisk rows
    python bench/vault_bench.py --records 1000000 --days 365 --sinks 2              # two SQLite sinks
    python bench/vault_bench.py --records 1000000 --days 365 --sinks 2 --pg-local   # two sinks, PostgreSQL

Targets (issues 4 and 14): ingest >= 50,000 records/s; query < 1 s among 10M stored records, with
every input format indexed. Issue 17: the same with two sinks, on SQLite and on PostgreSQL, and a
one-day purge < 1 s. The workload ends today, so retention (enforced at ingest) keeps it all.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import random
import signal
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


# --------------------------------------------------------------------------- machine and server CPU

_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, every core (/proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _TICK, sum(fields) / _TICK


def process_tree_cpu(root_pid: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live children, and the children it reaped
    (a backend's CPU moves into the postmaster's cutime/cstime when its connection ends)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root_pid:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == root_pid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


#: Server settings of ``--pg-local``: durability as in production (fsync, synchronous_commit,
#: full_page_writes on); memory and checkpoint spacing as a platform team would set them for a
#: write-heavy database; pg_stat_statements for the per-statement profile this bench prints.
PG_BENCH_SETTINGS = ("-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=1GB "
                     "-c max_wal_size=8GB -c checkpoint_timeout=15min -c wal_compression=lz4 -c max_connections=60 "
                     "-c shared_preload_libraries=pg_stat_statements -c track_io_timing=on")


class LocalCluster:
    """``--pg-local``: a throwaway cluster (tests/postgres_cluster.py) with PG_BENCH_SETTINGS, two databases."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from postgres_cluster import LocalPostgres, find_bin
        bin_dir = find_bin()
        if bin_dir is None:
            raise SystemExit("--pg-local: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin or $CDRPIPE_PG_BIN)")
        self.pg = LocalPostgres(bin_dir)
        self.pg.start(PG_BENCH_SETTINGS)
        self.db = self.pg.create_database("vaultbench")
        self.keys = self.pg.create_database("vaultkeys")
        self.pid = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        import psycopg
        with psycopg.connect(self.db, autocommit=True) as conn:
            cur = conn.execute(statement)  # constant statements of this file
            return cur.fetchall() if cur.description else []

    def cpu(self) -> float:
        return process_tree_cpu(self.pid)

    def top_statements(self, records: int, n: int = 8) -> list[dict[str, Any]]:
        rows = self.sql("SELECT calls, total_exec_time, rows, wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
                        "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'vaultbench') "
                        "ORDER BY total_exec_time DESC LIMIT 8")
        return [{"statement": q, "calls": int(c), "ms": round(float(t)), "us_per_record": round(float(t) * 1000 / records, 2),
                 "rows": int(r), "wal_mib": round(int(w) / 2**20, 1)} for c, t, r, w, q in rows[:n]]

    def stop(self) -> None:
        self.pg.stop()


# --------------------------------------------------------------------------- several sinks

def _sink_process(index: int, db: str, keys: str, keyring_doc: dict[str, Any], retention: str, path: str,
                  barrier: Any, results: Any) -> None:
    """One sink: its own store, keystore and ingester; ingests its file's batches once every sink is ready."""
    from pipeline.keys import VaultKeyring
    vault = VaultKeyring.from_json(keyring_doc, "bench")
    store = open_store(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid)
    keystore = Keystore(keys, vault)
    ingester = Ingester(store, keystore, vault, retention=retention)
    pipeline = BatchPipeline(ingester)
    barrier.wait()
    t0, c0 = time.time(), _cpu()
    with open(path, "rb") as fh:
        batch: list[bytes] = []
        for line in fh:
            batch.append(line.rstrip(b"\n"))
            if len(batch) == SEGMENTS_PER_BATCH:
                pipeline.submit(batch)
                batch = []
        if batch:
            pipeline.submit(batch)
    pipeline.close()
    t1, c1 = time.time(), _cpu()
    ingester.close()
    store.close()
    keystore.close()
    results.put((index, t0, t1, c1 - c0, pipeline.totals.summary()))


def ingest_with_sinks(args: argparse.Namespace, db: Any, keys: str, worker: Any, vault: Any, load: "Workload",
                      work: Path, cluster: LocalCluster | None) -> dict[str, Any]:
    """Seal everything to one file per sink first (batch b to sink b mod N, as a consumer group deals
    partitions), then start N sink processes together and time them from the first start to the last end."""
    import multiprocessing
    batch_records = SEGMENT_RECORDS * SEGMENTS_PER_BATCH
    paths = [work / f"sink{i}.envelopes" for i in range(args.sinks)]
    files = [open(p, "wb") for p in paths]
    t = time.perf_counter()
    done = 0
    sealer = Sealer(worker.vault_public, worker.vault_kid)
    for b, lines in enumerate(load.chunks(batch_records)):
        envelopes = seal(sealer, lines, done)
        done += len(lines)
        files[b % args.sinks].write(b"".join(e + b"\n" for e in envelopes))
    for fh in files:
        fh.close()
    prepare_s = time.perf_counter() - t
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(args.sinks + 1), ctx.Queue()
    procs = [ctx.Process(target=_sink_process, args=(i, str(db), keys, vault.to_json(), f"{args.days + 1}d",
                                                     str(paths[i]), barrier, results)) for i in range(args.sinks)]
    for proc in procs:
        proc.start()
    barrier.wait()
    m0, s0 = machine_cpu(), cluster.cpu() if cluster else 0.0
    out = []
    while len(out) < len(procs):  # a sink that fails stops the run (instead of waiting for it forever)
        try:
            out.append(results.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for proc in procs:
                    proc.kill()
                raise SystemExit(f"a sink process failed (exit {dead[0]}); its traceback is above")
    m1, s1 = machine_cpu(), cluster.cpu() if cluster else 0.0
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0, f"sink process exited {proc.exitcode}"
    for p in paths:
        p.unlink()
    wall = max(r[2] for r in out) - min(r[1] for r in out)
    totals = IngestTotals()
    for r in out:
        totals.add(IngestTotals(**{k: v for k, v in r[4].items() if k != "days"}))
    return {"wall": wall, "client_cpu": sum(r[3] for r in out), "server_cpu": s1 - s0,
            "machine_busy": m1[0] - m0[0], "machine_total": m1[1] - m0[1], "totals": totals,
            "per_sink": [{"records": r[4]["records"], "stored": r[4]["stored"], "seconds": round(r[2] - r[1], 2)}
                         for r in sorted(out)], "generate_and_seal_seconds": round(prepare_s, 2)}


def ingest_one_sink(args: argparse.Namespace, store: Any, keystore: Any, worker: Any, vault: Any, load: "Workload",
                    cluster: LocalCluster | None) -> dict[str, Any]:
    """Generate and seal ahead (not timed), in groups, then ingest each group through the sink's two-stage
    pipeline (timed): prepare on this thread, write on the writer thread."""
    ingester = Ingester(store, keystore, vault, retention=f"{args.days + 1}d")
    gen_s = seal_s = ingest_s = 0.0
    batch_records = SEGMENT_RECORDS * SEGMENTS_PER_BATCH
    pipeline = BatchPipeline(ingester)
    done, last = 0, time.monotonic()
    chunks = load.chunks(batch_records)
    cpu_s = server_s = busy_s = total_s = 0.0
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
        c2, s2, m2 = _cpu(), cluster.cpu() if cluster else 0.0, machine_cpu()
        for envelopes in sealed:
            pipeline.submit(envelopes)
        pipeline.flush()
        t3 = time.perf_counter()
        m3 = machine_cpu()
        cpu_s += _cpu() - c2
        server_s += (cluster.cpu() if cluster else 0.0) - s2
        busy_s += m3[0] - m2[0]
        total_s += m3[1] - m2[1]
        gen_s += t1 - t0
        seal_s += t2 - t1
        ingest_s += t3 - t2
        if time.monotonic() - last > 10:
            last = time.monotonic()
            print(f"  {done:,} records ingested, {done / ingest_s:,.0f} records/s", file=sys.stderr, flush=True)
    pipeline.close()
    ingester.close()
    return {"wall": ingest_s, "client_cpu": cpu_s, "server_cpu": server_s, "machine_busy": busy_s,
            "machine_total": total_s, "totals": pipeline.totals,
            "generate_and_seal_seconds": round(gen_s + seal_s, 2)}


def stored_counts(store: Any) -> dict[str, int]:
    """What the database holds, counted directly (not from the ingest's totals)."""
    if store.db.kind == "postgresql":
        records, distinct = store.db.execute("SELECT count(*), count(DISTINCT record_id) FROM records").fetchone()
        ids = store.db.execute("SELECT count(*) FROM record_ids").fetchone()[0]
        return {"records": int(records), "distinct_record_ids": int(distinct), "record_id_rows": int(ids)}
    from pipeline.vault.store import rec_table
    records = sum(int(store.db.execute(f"SELECT count(*) FROM {rec_table(d)}").fetchone()[0])
                  for d in store.partitions())
    ids = int(store.db.execute("SELECT count(*) FROM record_ids").fetchone()[0])
    return {"records": records, "distinct_record_ids": ids, "record_id_rows": ids}


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
    ap.add_argument("--pg-local", action="store_true",
                    help="start a throwaway PostgreSQL cluster for the run (initdb in a temp dir, a free loopback "
                         "port, PG_BENCH_SETTINGS) and use it for --db and --keystore; reports the server's CPU "
                         "and its busiest statements too")
    ap.add_argument("--sinks", type=int, default=1,
                    help="sink processes ingesting at once, each its share of the batches (batch b to sink b mod "
                         "N, as a consumer group's partitions); with N > 1 everything is sealed to files first")
    args = ap.parse_args()
    cluster = LocalCluster() if args.pg_local else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the local cluster on kill too
    try:
        run(args, cluster)
    finally:
        if cluster is not None:
            cluster.stop()


def run(args: argparse.Namespace, cluster: LocalCluster | None) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vault-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if cluster is not None:
        args.db, args.keystore = cluster.db, cluster.keys
    db: Any = args.db or work / "vault.db"
    keys = args.keystore or str(db) + ".keys"
    for p in work.glob("vault.db*"):
        p.unlink()
    worker, vault = generate()
    store = open_store(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid, region="GB", create=True)
    keystore = Keystore(keys, vault, create=True)
    start = first_day(args.days)
    load = Workload(args.records, args.days, args.subscribers, args.seed, start, args.csv_share)
    load_before = os.getloadavg()[0]
    if cluster is not None:
        cluster.sql("SELECT pg_stat_statements_reset()")
    if args.sinks > 1:
        store.close()
        keystore.close()
        done = ingest_with_sinks(args, db, keys, worker, vault, load, work, cluster)
    else:
        done = ingest_one_sink(args, store, keystore, worker, vault, load, cluster)
        store.close()
        keystore.close()
    totals: IngestTotals = done["totals"]
    assert totals.stored == args.records and totals.duplicates == 0, totals.summary()
    statements = cluster.top_statements(args.records) if cluster else None

    # Query: a fresh process-level connection, one month in the middle of the data.
    store = open_store(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid)
    keystore = Keystore(keys, vault)
    counts = stored_counts(store)
    assert counts == {"records": args.records, "distinct_record_ids": args.records,
                      "record_id_rows": args.records}, counts  # nothing lost, nothing stored twice
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
    # Purge the first day alone (the target: one day, whatever its size), then the rest of the first
    # month: destroy the day keys, drop the days' tables or partitions, delete their record ids; audited.
    first = day_number(start.date())
    purges = []
    for cutoff in (first + 1, first + min(31, args.days)):
        t = time.perf_counter()
        done_purge = purge(Vault(vault, store, keystore), audit, day_date(cutoff), "vault_bench")
        purges.append({"days": len(done_purge.days), "records": done_purge.records,
                       "seconds": round(time.perf_counter() - t, 3)})
    wall, client, server = done["wall"], done["client_cpu"], done["server_cpu"]
    busy, total = done["machine_busy"], done["machine_total"]
    report = {
        "backend": "postgresql" if args.db else "sqlite", "records": args.records, "days": args.days,
        "subscribers": args.subscribers, "seed": args.seed, "csv_share": args.csv_share, "sinks": args.sinks,
        "ingest_seconds": round(wall, 2), "ingest_records_per_s": round(args.records / wall),
        "client_cpu_seconds": round(client, 2), "client_cpu_us_per_record": round(client * 1e6 / args.records, 1),
        "ingest_records_per_cpu_s": round(args.records / client),
        "server_cpu_seconds": round(server, 2) if cluster else None,
        "server_cpu_us_per_record": round(server * 1e6 / args.records, 1) if cluster else None,
        # The whole machine while ingest ran: how busy, and how much of that was neither the sinks nor the server.
        "machine_busy_percent": round(100 * busy / total, 1) if total else None,
        "other_cpu_seconds": round(busy - client - server, 2) if cluster or not args.db else None,
        "load_average_1m_before": load_before, "load_average_1m_at_end": os.getloadavg()[0],
        "generate_and_seal_seconds": done["generate_and_seal_seconds"],
        "per_sink": done.get("per_sink"), "stored": counts,
        "db_bytes_per_record": round(size / args.records, 1), "db_mib": round(size / 2**20),
        "query_window_days": min(31, args.days), "queries": queries,
        "purge_one_day": purges[0], "purge_rest_of_month": purges[1],
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpus": os.cpu_count(), "server_statements": statements,
    }
    print(json.dumps(report, indent=2))
    store.close()
    keystore.close()
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
