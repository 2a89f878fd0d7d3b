"""Benchmark: end-to-end records/s through a real Kafka, exactly once, against a passthrough ceiling.

Seeded synthetic CDRs (``pipeline.synthetic``) are produced to ``cdr.raw`` of a local Apache
Kafka (started here unless ``--bootstrap-servers`` is given). Then, in one run, each round
consumes all of them twice, from fresh consumer groups:

* **passthrough** - the same transaction loop, clients, settings, batch size, headers and
  transactions (outputs + offsets in one transaction per batch), but the core replaced by a
  function that returns the consumed bytes unchanged as the only output: the ceiling of what the
  worker's Kafka side can do here.
* **pipeline** - the real worker: the core routes each batch into analytics, sealed retention
  segments and DLQ records, all written with the offsets in one transaction.

With ``--volume-check`` two more loops run per round, with a core that costs next to nothing
and replays the real core's messages (``ReplayRouter``: each record's analytics value and key,
and the real sealed retention segments, all prebuilt): all of them, then the analytics messages
alone. They tell whether Kafka (client and broker on the same cores) or the core is the limit.
``--perf DIR`` records each counted loop with ``perf record -a`` and prints, for the last round,
the share of the machine's CPU time in each loop's busy window that was idle, in the broker (its
JIT compilers apart), and in each of the worker's libraries (the core is ``_native``).

The rate is records / (last commit - first batch read), so start-up and the idle tail are left
out of both. A warm-up round runs first and is not counted: a fresh broker JVM spends about a
CPU-second of its JIT compilers on the first runs, on the same two cores (``--warmup 0`` shows
it); they keep compiling for minutes after that, less (``--perf`` shows them apart). ``core alone`` routes the same records with no Kafka at all, to show where the rest of the
time goes. Every run reconciles its counts (in == retention == analytics + dlq).

    python bench/kafka_e2e.py                       # 200k records, 1 warm-up + 2 rounds, local broker
    python bench/kafka_e2e.py --records 500000 --rounds 3 --json
    python bench/kafka_e2e.py --records 1000000 --rounds 3 --volume-check
    python bench/kafka_e2e.py --records 300000 --rounds 3 --volume-check --perf /tmp/kafka-perf   # as root

Target (the native-core issue): pipeline >= 85% of passthrough (issue 3 asked for 70%).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import operator
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.allocator import tune_for_batches  # noqa: E402

tune_for_batches()  # as `cdrpipe run` does, before Polars is imported

from pipeline.broker import KAFKA_VERSION, LocalKafka  # noqa: E402
from pipeline.core.router import (ANALYTICS_HEADERS, RETENTION_HEADERS, CoreConfig, Output,  # noqa: E402
                                  RoutedBatch, Router, Source)
from pipeline.demo import produce_synthetic  # noqa: E402
from pipeline.kafka_config import parse_x_options  # noqa: E402
from pipeline.keys import generate  # noqa: E402
from pipeline.runners.kafka import (DEFAULT_BATCH_SIZE, TransactionLoop, WorkerSettings,  # noqa: E402
                                    split_client_overrides)
from pipeline.synthetic import generate as synthetic  # noqa: E402
from pipeline.topics import Topics, TopicSpec, apply_topics, load_topic_policy  # noqa: E402


def ready(values: Sequence[bytes], headers: list[tuple[str, bytes]]) -> Output:
    """Messages as the core hands them over: one newline-terminated buffer and the ends (C-level maps only)."""
    ends = list(itertools.accumulate(map(operator.add, map(len, values), repeat(1))))
    return Output(b"\n".join(values) + b"\n" if values else b"", ends, None, headers)


def batch_of(records: Sequence[bytes], analytics: Sequence[bytes], retention: Sequence[bytes] = ()) -> RoutedBatch:
    n = len(records)
    return RoutedBatch(ready(analytics, ANALYTICS_HEADERS), ready(retention, RETENTION_HEADERS), ready([], []),
                       {"in": n, "analytics": n, "retention": n, "dlq": 0, "suppressed": 0}, Counter())


class PassthroughRouter:
    """Stands in for the core: every record goes out as it came in (the ceiling of the Kafka side)."""

    def route(self, records: Sequence[bytes], source: Source, buf: bytes | None = None, *,
              want_keys: bool = False) -> RoutedBatch:
        return batch_of(records, records)


@dataclass
class Learned:
    """The real core's messages for a set of records (``ReplayRouter.learn``)."""

    analytics: dict[bytes, tuple[bytes, Any]]  # record -> (analytics value, key), valid records only
    segments: list[bytes]  # the real sealed retention segments, in order
    segment_keys: list[Any]
    records_per_segment: float


class ReplayRouter:
    """A core that costs next to nothing but writes what the real one writes (``--volume-check``).

    Learned from the real core's outputs for the same records: each valid record's analytics
    message (value and key), and the real sealed retention segments. ``route`` looks the records
    up with C-level maps (no bytecode per record) and hands out as many of the learned segments
    as the batch needs (as many records a segment as the real core seals), prebuilt: nothing is
    sealed, encoded or serialised. So Kafka carries the pipeline's messages and bytes, and the
    gap between this and the pipeline is the core's own cost. With ``retention=False`` only the
    analytics messages go out: what one keyed message per record, as the analytics contract asks,
    costs this worker and broker on its own.
    """

    def __init__(self, learned: Learned, retention: bool = True) -> None:
        self.learned = learned
        self.retention = retention
        self._next_segment = 0

    @classmethod
    def learn(cls, lines: Sequence[bytes], batch_size: int) -> Learned:
        """Route the records through the real core once (records are unique) and keep its messages."""
        keyring, _ = generate()
        router = Router(keyring, CoreConfig())
        analytics: dict[bytes, tuple[bytes, Any]] = {}
        segments: list[bytes] = []
        segment_keys: list[Any] = []
        for i in range(0, len(lines), batch_size):
            batch = lines[i:i + batch_size]
            routed = router.route(batch, Source("bench", 0, range(i, i + len(batch))), want_keys=True)
            valid = batch
            if len(routed.analytics) != len(batch):  # which ones were valid: route them one by one
                valid = [r for r in batch if len(router.route([r], Source("bench", 0, [0])).analytics)]
            analytics.update(zip(valid, zip(routed.analytics.values(), routed.analytics.keys or ())))
            segments += routed.retention.values()
            segment_keys += routed.retention.keys or [None] * len(routed.retention)
        return Learned(analytics, segments, segment_keys, len(lines) / max(len(segments), 1))

    def route(self, records: Sequence[bytes], source: Source, buf: bytes | None = None, *,
              want_keys: bool = False) -> RoutedBatch:
        hits = list(filter(None, map(self.learned.analytics.get, records)))
        segments: list[bytes] = []
        keys: list[Any] = []
        if self.retention:
            count = math.ceil(len(records) / self.learned.records_per_segment)
            start = self._next_segment % len(self.learned.segments)
            self._next_segment = start + count
            pool, pool_keys = self.learned.segments, self.learned.segment_keys
            while len(segments) < count:  # wraps around the learned segments when a run needs more
                take = min(count - len(segments), len(pool) - start)
                segments += pool[start:start + take]
                keys += pool_keys[start:start + take]
                start = 0
        routed = batch_of(records, list(map(operator.itemgetter(0), hits)), segments)
        routed.analytics.keys = list(map(operator.itemgetter(1), hits))
        routed.retention.keys = keys
        return routed


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0 when it is not ours to read)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_loop(bootstrap: str, router: Any, topics: Topics, n: int, batch_size: int,
             client: dict[str, str], broker_pid: int | None = None) -> dict[str, float]:
    """Consume all ``n`` records with a fresh group through the transaction loop; return rate and counts.

    Also the CPU this process (worker loop and librdkafka threads) and the local broker used
    for the run, per record: where the time goes when the rate falls short.
    """
    common, consumer, producer = split_client_overrides(client)
    settings = WorkerSettings(bootstrap=bootstrap, worker_id=f"bench-{uuid.uuid4().hex[:6]}",
                              group=f"bench-{uuid.uuid4().hex[:8]}", topics=topics, batch_size=batch_size,
                              client=common, consumer_client=consumer, producer_client=producer,
                              progress_seconds=0.2, exit_when_idle=60.0)
    loop: TransactionLoop

    def stop_when_done(totals: Any, _elapsed: float) -> None:
        if totals.counts["in"] >= n:
            loop.request_stop()

    loop = TransactionLoop(router, settings, progress=stop_when_done)
    cpu0, broker0 = time.process_time(), process_cpu_s(broker_pid)
    totals = loop.run()
    broker_s = process_cpu_s(broker_pid) - broker0
    busy = totals.last_commit_at - totals.first_batch_at
    c = totals.counts
    if c["in"] != n or c["retention"] != n or c["analytics"] + c["dlq"] + c["suppressed"] != n:
        raise SystemExit(f"counts do not reconcile: {dict(c)} for {n} records")
    return {"records_per_s": n / busy, "seconds": busy, "commits": totals.commits, "aborts": totals.aborts,
            "cpu_s": time.process_time() - cpu0, "broker_cpu_s": broker_s, **{k: c[k] for k in ("analytics", "dlq")},
            "window": (totals.first_batch_at, totals.last_commit_at)}


#: One sample of ``perf script -F comm,pid,tid,period,ip,dso`` (a thread's name may hold spaces).
_PERF_SAMPLE = re.compile(r"^\s*(.+?)\s+(\d+)/\d+\s+(\d+)\s+[0-9a-f]+\s+\((.*)\)\s*$")
#: The worker's libraries as the profile names them (the first one the sample's DSO contains).
_WORKER_DSOS = (("_native", "the core (_native)"), ("libpython", "Python"), ("librdkafka", "librdkafka"),
                ("cimpl", "confluent-kafka (cimpl)"), ("kernel", "kernel"), ("libc", "libc"))


def start_perf(path: Path) -> subprocess.Popen[bytes]:
    """``perf record`` of the whole machine (idle included), stamped with CLOCK_MONOTONIC like ``time.monotonic``."""
    proc = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-k", "CLOCK_MONOTONIC", "-o", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf is sampling before the loop starts
    return proc


def stop_perf(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


def perf_split(path: Path, window: tuple[float, float], broker_pid: int | None) -> dict[str, float]:
    """Share of the machine's CPU time in the loop's busy window: idle, the broker (its JIT apart), each worker library."""
    out = subprocess.run(["perf", "script", "-i", str(path), "-F", "comm,pid,tid,period,ip,dso",
                          "--time", f"{window[0]:.6f},{window[1]:.6f}"],
                         capture_output=True, text=True, check=False).stdout
    return cpu_shares(out.splitlines(), os.getpid(), broker_pid)


def cpu_shares(samples: Sequence[str], worker_pid: int, broker_pid: int | None) -> dict[str, float]:
    """Samples of ``perf script -F comm,pid,tid,period,ip,dso`` summed by where they ran, as shares, largest first."""
    shares: Counter[str] = Counter()
    for line in samples:
        m = _PERF_SAMPLE.match(line)
        if m is None:
            continue
        comm, pid, period, dso = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if pid == 0:
            where = "idle"
        elif pid == broker_pid:
            where = "broker: JIT compilers" if "CompilerThre" in comm else "broker"
        elif pid == worker_pid:
            who = "worker, librdkafka threads" if comm.startswith("rdk:") else "worker"
            where = f"{who}: " + next((name for key, name in _WORKER_DSOS if key in dso), "other")
        else:
            where = "other processes"
        shares[where] += period
    total = sum(shares.values()) or 1
    return {k: v / total for k, v in shares.most_common()}


def core_alone(lines: list[bytes], batch_size: int) -> float:
    """Records/s of the core with no Kafka (same records, same batch size)."""
    keyring, _ = generate()
    router = Router(keyring, CoreConfig())
    started = time.perf_counter()
    for i in range(0, len(lines), batch_size):
        batch = lines[i:i + batch_size]
        router.route(batch, Source("bench", 0, range(i, i + len(batch))), want_keys=True)
    return len(lines) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records to send (default 200000)")
    parser.add_argument("--rounds", type=int, default=2, help="passthrough+pipeline pairs; the median is shown")
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted (default 1): a fresh broker JVM spends about "
                             "a CPU-second compiling its hot paths, on the cores the worker needs")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"records per transaction (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="synthetic traffic seed (default 0)")
    parser.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of starting one")
    parser.add_argument("-X", action="append", metavar="KEY=VALUE", default=[],
                        help="librdkafka setting for both runs, as `cdrpipe run -X` (e.g. producer.compression.type=zstd)")
    parser.add_argument("--json", action="store_true", help="print one JSON line with every figure")
    parser.add_argument("--volume-check", action="store_true",
                        help="also run a zero-cost core that writes the pipeline's messages, with and without "
                             "retention (is Kafka or the core the limit?)")
    parser.add_argument("--perf", metavar="DIR", type=Path, default=None,
                        help="record each counted loop with `perf record -a` into DIR and print where the machine's "
                             "CPU time went (idle, broker, worker libraries) in the last round's busy windows "
                             "(needs perf and root)")
    args = parser.parse_args(argv)
    if args.perf is not None:
        args.perf.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline.runners.kafka").setLevel(logging.ERROR)
    logging.getLogger("pipeline.topics").setLevel(logging.ERROR)

    client = parse_x_options(args.X)
    with contextlib.ExitStack() as stack:
        broker_pid = None  # a broker given with --bootstrap-servers: its CPU is not ours to read
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="cdrpipe-bench-"))
            broker = stack.enter_context(LocalKafka(data_dir=data))
            bootstrap, broker_pid = broker.bootstrap, broker.pid
        conf = {"bootstrap.servers": bootstrap}
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        specs = load_topic_policy()
        analytics_spec = next(s for s in specs if s.name == "cdr.analytics")
        passthrough_spec = TopicSpec("passthrough", analytics_spec.partitions, 1, analytics_spec.configs)
        apply_topics(conf, [*specs, passthrough_spec], prefix=prefix, replication_factor=1)
        topics = Topics().with_prefix(prefix)
        ceiling_topics = Topics(topics.input, prefix + "passthrough", topics.retention, topics.dlq)
        started = time.perf_counter()
        produce_synthetic(conf, topics.input, args.records, seed=args.seed)
        produce_s = time.perf_counter() - started
        lines = b"".join(synthetic(args.records, seed=args.seed)).split(b"\n")[:-1]
        core_rate = core_alone(lines, args.batch_size)
        learned = ReplayRouter.learn(lines, args.batch_size) if args.volume_check else None
        passthrough, pipeline, volume, analytics_only = [], [], [], []
        profiles: dict[str, dict[str, float]] = {}
        for round_no in range(1 - args.warmup, args.rounds + 1):

            def measure(name: str, router: Any, loop_topics: Topics) -> dict[str, Any]:
                path = args.perf / f"round{round_no}-{name.replace(' ', '-')}.data" \
                    if args.perf is not None and round_no > 0 else None
                recorder = start_perf(path) if path is not None else None
                try:
                    result = run_loop(bootstrap, router, loop_topics, args.records, args.batch_size, client,
                                      broker_pid)
                finally:
                    if recorder is not None:
                        stop_perf(recorder)
                if path is not None:
                    profiles[name] = perf_split(path, result["window"], broker_pid)
                return result

            if learned is not None:
                vol = measure("zero-cost core", ReplayRouter(learned), topics)
                ana = measure("analytics only", ReplayRouter(learned, retention=False), topics)
            ceil = measure("passthrough", PassthroughRouter(), ceiling_topics)
            keyring, _ = generate()
            pipe = measure("pipeline", Router(keyring, CoreConfig()), topics)
            label = f"round {round_no}" if round_no > 0 else "warm-up (not counted)"
            print(f"{label}: passthrough {ceil['records_per_s']:,.0f} records/s, "
                  f"pipeline {pipe['records_per_s']:,.0f} records/s", file=sys.stderr, flush=True)
            if round_no > 0:
                passthrough.append(ceil)
                pipeline.append(pipe)
                if learned is not None:
                    volume.append(vol)
                    analytics_only.append(ana)

    ceiling = statistics.median(r["records_per_s"] for r in passthrough)
    e2e = statistics.median(r["records_per_s"] for r in pipeline)
    ratio = e2e / ceiling
    cpus = os.cpu_count()
    print(f"kafka e2e: {args.records:,} records, batch {args.batch_size:,}, Apache Kafka {KAFKA_VERSION} "
          f"(single local node), {cpus} CPUs, median of {args.rounds} round(s) after {args.warmup} warm-up"
          + (f", -X {' -X '.join(args.X)}" if args.X else ""))
    print(f"  passthrough (same loop and client, transactions, no core): {ceiling:>10,.0f} records/s")
    print(f"  pipeline    (core, analytics+retention+dlq+offsets, EOS):  {e2e:>10,.0f} records/s")
    print(f"  ratio: {ratio:.0%} of passthrough (target >= 85%)")
    print(f"  core alone, no Kafka (same batches):                       {core_rate:>10,.0f} records/s")
    for label, runs in (("zero-cost core, the pipeline's messages (--volume-check):", volume),
                        ("  the same, analytics messages only:", analytics_only)):
        if runs:
            rate = statistics.median(r["records_per_s"] for r in runs)
            print(f"  {label:<57}{rate:>10,.0f} records/s ({rate / ceiling:.0%})")
    for name, runs in (("passthrough", passthrough), ("pipeline", pipeline), ("zero-cost core", volume),
                       ("analytics only", analytics_only)):
        if runs:
            worker = statistics.median(r["cpu_s"] for r in runs) * 1e6 / args.records
            broker_us = statistics.median(r["broker_cpu_s"] for r in runs) * 1e6 / args.records
            print(f"  CPU-us a record, {name + ':':<16} worker {worker:5.1f}, broker {broker_us:5.1f}"
                  + ("" if broker_pid else " (not measured: --bootstrap-servers)"))
    print(f"  (producing the input took {produce_s:.1f} s; per run: "
          f"pipeline {statistics.median(r['seconds'] for r in pipeline):.1f} s, "
          f"{pipeline[0]['commits']} transactions, {sum(r['aborts'] for r in pipeline)} aborts)")
    for name, shares in profiles.items():
        print(f"  where the CPU went, {name} (round {args.rounds}, perf record -a, busy window): "
              + ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if v >= 0.005))
    if args.json:
        print(json.dumps({"records": args.records, "batch_size": args.batch_size, "cpus": cpus,
                          "passthrough_records_per_s": round(ceiling), "pipeline_records_per_s": round(e2e),
                          "ratio": round(ratio, 3), "core_alone_records_per_s": round(core_rate),
                          "rounds": {"passthrough": passthrough, "pipeline": pipeline, "volume": volume,
                                     "analytics_only": analytics_only}, "profiles": profiles}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
