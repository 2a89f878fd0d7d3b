"""`cdrpipe demo`: the whole pipeline on one machine in about a minute (Kafka, or --files without it).

The demo starts a local Apache Kafka, applies the topic policy, generates keys in a work dir,
produces seeded synthetic traffic to ``cdr.raw``, runs one worker with live progress, reads every
output back with ``read_committed`` to show that the counts reconcile (:mod:`pipeline.demo`),
prints a few analytics records and stops everything. ``--files`` runs the same core over a
generated file instead, for machines without Java, and keeps its keys, sample and outputs in
``./cdrpipe-demo`` (or ``--dir``) so that the files it points to can be read afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.demo import DEMO_GROUP, SHOWN_RECORDS, committed_counts, produce_synthetic
from pipeline.errors import FatalError, UsageError

log = logging.getLogger("pipeline.demo")  # the demo's logger, as before its command had a module

DEFAULT_RECORDS = 200_000
#: Where `demo --files` keeps its keys, sample and outputs when --dir is not given (in the current directory).
FILES_DIR = "cdrpipe-demo"
#: Marks a directory the demo made, so a later demo may reuse it (it never clears a directory without it).
MARKER = ".cdrpipe-demo"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Progress:
    """A single live line on a terminal (a new line per update elsewhere), at most once a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.started = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        pct = done * 100 // self.total if self.total else 100
        line = f"  {self.label}: {done:>10,} / {self.total:,} ({pct:3d}%)  {rate:>9,.0f} records/s"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def finish(self, done: int) -> float:
        """Print the final state and return the elapsed seconds."""
        self(done, force=True)
        if self.tty:
            print(file=sys.stderr)
        return time.monotonic() - self.started


def _show_records(samples: list[bytes]) -> None:
    _say("\na few analytics records (tokens, coarsened times; no raw identifier):")
    for raw in samples:
        _say("  " + orjson.dumps(orjson.loads(raw)).decode())


def _make_keys(work: Path) -> tuple[Path, Path]:
    """Fresh keyrings in the work dir (as `cdrpipe keys generate` writes them)."""
    from pipeline.keys import VAULT_KEYRING, WORKER_KEYRING, generate, write_private_json

    worker, vault = generate()
    wpath, vpath = work / WORKER_KEYRING, work / VAULT_KEYRING
    write_private_json(wpath, worker.to_json())
    write_private_json(vpath, vault.to_json())
    return wpath, vpath


def _router(keyring_path: Path) -> Any:
    from pipeline.core.router import CoreConfig, Router
    from pipeline.keys import load_worker_keyring

    return Router(load_worker_keyring(keyring_path), CoreConfig())


def _demo_files(args: argparse.Namespace, work: Path) -> int:
    """The file-only variant: generate a sample, route it with the file runner, show the outputs."""
    from pipeline.runners.files import process_file
    from pipeline.synthetic import write_sample

    wpath, _ = _make_keys(work)
    sample = work / "sample.jsonl"
    _say(f"generating {args.records:,} synthetic records -> {sample}")
    write_sample(sample, args.records, seed=args.seed)
    _say("routing them through the core (cdrpipe process)")
    started = time.monotonic()
    totals = process_file(_router(wpath), str(sample), work / "out", progress=True)
    elapsed = time.monotonic() - started
    c = totals.counts
    _say(f"\n{'output':<14}{'records':>12}\n{'in':<14}{c['in']:>12,}\n{'analytics':<14}{c['analytics']:>12,}\n"
         f"{'retention':<14}{c['retention']:>12,}\n{'dlq':<14}{c['dlq']:>12,}\n{'suppressed':<14}{c['suppressed']:>12,}")
    _say(f"{c['in']:,} records in {elapsed:.1f} s ({c['in'] / max(elapsed, 1e-9):,.0f} records/s); "
         f"outputs in {work / 'out'}")
    with open(work / "out" / "analytics.jsonl", "rb") as fh:
        _show_records([line for _, line in zip(range(SHOWN_RECORDS), fh)])
    ok = c["in"] == c["retention"] == c["analytics"] + c["dlq"] + c["suppressed"]
    _say("counts reconcile: in == retention == analytics + dlq + suppressed" if ok else
         "COUNTS DO NOT RECONCILE")
    return 0 if ok else 1


def _sized_for_any_record(specs: list[Any]) -> list[Any]:
    """The topic policy with retention and DLQ able to hold any record cdr.raw accepts, sealed.

    The worker warns at start-up when they cannot (see ``required_message_bytes``); the demo
    applies the fix instead of showing the warning.
    """
    from pipeline.runners.kafka import KAFKA_DEFAULT_MAX_MESSAGE, required_message_bytes
    from pipeline.topics import DLQ, RAW, RETENTION, TopicSpec

    raw = next((s for s in specs if s.name == RAW), None)
    limit = int(raw.config.get("max.message.bytes", KAFKA_DEFAULT_MAX_MESSAGE)) if raw else KAFKA_DEFAULT_MAX_MESSAGE
    needed = required_message_bytes(limit)
    out = []
    for spec in specs:
        if spec.name in (RETENTION, DLQ) and int(spec.config.get("max.message.bytes", 0)) < needed:
            spec = TopicSpec(spec.name, spec.partitions, spec.replication_factor,
                             tuple(sorted({**spec.config, "max.message.bytes": str(needed)}.items())))
        out.append(spec)
    return out


def _demo_kafka(args: argparse.Namespace, work: Path) -> int:
    """Broker, topics, keys, traffic, one worker, read-back: the streaming pipeline end to end."""
    from pipeline.broker import LocalKafka, MissingToolError
    from pipeline.metrics import WorkerMetrics
    from pipeline.runners.kafka import Topics, TransactionLoop, WorkerSettings
    from pipeline.topics import apply_topics, load_topic_policy

    with contextlib.ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
            _say(f"using Kafka at {bootstrap}")
        else:
            _say("starting a local Apache Kafka (KRaft, single node)…")
            started = time.monotonic()
            try:
                broker = stack.enter_context(LocalKafka(data_dir=work / "kafka", heap="384m"))
            except MissingToolError as exc:
                raise FatalError(f"{exc}; or run the file-only demo: cdrpipe demo --files") from None
            bootstrap = broker.bootstrap
            _say(f"  Kafka ready on {bootstrap} in {time.monotonic() - started:.1f} s")
        conf = {"bootstrap.servers": bootstrap}
        prefix = args.topic_prefix
        topics = Topics().with_prefix(prefix)
        apply_topics(conf, _sized_for_any_record(load_topic_policy()), prefix=prefix, replication_factor=1)
        _say(f"topics applied ({topics.input}, {topics.analytics}, {topics.retention}, {topics.dlq}, …)")
        wpath, _ = _make_keys(work)
        _say(f"keys generated in {work} (worker keyring for the worker; vault keyring stays with the vault)")

        _say(f"producing {args.records:,} synthetic CDRs to {topics.input} (seed {args.seed}, ~0.5% malformed)")
        bar = _Progress("produced", args.records)
        sent = produce_synthetic(conf, topics.input, args.records, seed=args.seed, progress=bar)
        bar.finish(sent)

        _say("running a worker (one transaction per batch: outputs + offsets)")
        if not log.isEnabledFor(logging.DEBUG):  # the progress line below says it all
            logging.getLogger("pipeline.runners.kafka").setLevel(logging.WARNING)
            logging.getLogger("pipeline.runners.kafka.librdkafka").setLevel(logging.ERROR)
        metrics = WorkerMetrics()
        settings = WorkerSettings(bootstrap=bootstrap, worker_id="demo-1", group=DEMO_GROUP, topics=topics,
                                  progress_seconds=1.0, exit_when_idle=30.0)
        work_bar = _Progress("committed", sent)
        loop: TransactionLoop

        def on_progress(totals: Any, _elapsed: float) -> None:
            work_bar(totals.counts["in"])
            if totals.counts["in"] >= sent:
                loop.request_stop()

        loop = TransactionLoop(_router(wpath), settings, metrics, progress=on_progress)
        totals = loop.run()
        elapsed = work_bar.finish(totals.counts["in"])
        _say(f"  {totals.counts['in']:,} records in {elapsed:.1f} s ({totals.counts['in'] / max(elapsed, 1e-9):,.0f} "
             f"records/s incl. start-up), {totals.commits} transactions committed, {totals.aborts} aborted")

        _say("reading the outputs back with isolation.level=read_committed…")
        seen = committed_counts(conf, topics.analytics, topics.retention, topics.dlq, samples=SHOWN_RECORDS)
        suppressed = totals.counts["suppressed"]
        _say(f"\n{'topic':<24}{'messages':>10}{'records':>10}")
        _say(f"{topics.input:<24}{sent:>10,}{sent:>10,}")
        _say(f"{topics.analytics:<24}{seen.analytics:>10,}{seen.analytics:>10,}")
        _say(f"{topics.retention:<24}{seen.retention_segments:>10,}{seen.retention_records:>10,}  (sealed segments)")
        _say(f"{topics.dlq:<24}{seen.dlq:>10,}{seen.dlq:>10,}")
        if seen.dlq_reasons:
            _say("dlq reasons: " + ", ".join(f"{k} {v}" for k, v in seen.dlq_reasons.most_common()))
        _show_records(seen.samples)
        ok = sent == seen.retention_records == seen.analytics + seen.dlq + suppressed
        _say(("\ncounts reconcile: in == retention == analytics + dlq + suppressed "
              f"({sent:,} == {seen.retention_records:,} == {seen.analytics:,} + {seen.dlq:,} + {suppressed:,})")
             if ok else "\nCOUNTS DO NOT RECONCILE")
        _say("stopping Kafka…" if not args.bootstrap_servers else "done")
    return 0 if ok else 1


def _prepare_dir(work: Path) -> None:
    """Make ``work`` the demo's directory: one an earlier demo made has its files replaced; keyrings elsewhere stop it."""
    work.mkdir(parents=True, exist_ok=True)
    if (work / MARKER).is_file():
        for name in ("worker-keyring.json", "vault-keyring.json", "sample.jsonl"):
            (work / name).unlink(missing_ok=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        shutil.rmtree(work / "kafka", ignore_errors=True)
    elif any(work.glob("*keyring.json")):
        raise UsageError(f"{work} already holds keyrings; give the demo an empty --dir")
    elif any(work.iterdir()):
        return  # someone's directory: used as before, but never marked, so never cleared by a later demo
    (work / MARKER).write_text("made by `cdrpipe demo`; a later demo replaces its keys, sample and outputs\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    """`cdrpipe demo`: run the demo in a work dir; --files keeps it (./cdrpipe-demo), Kafka's is temporary unless --dir."""
    if args.records < 1:
        raise UsageError(f"--records must be at least 1, got {args.records}")
    keep = bool(args.dir) or args.files
    if keep:
        work = Path(args.dir or FILES_DIR)
        _prepare_dir(work)
    else:
        work = Path(tempfile.mkdtemp(prefix="cdrpipe-demo-"))
    started = time.monotonic()
    try:
        code = _demo_files(args, work) if args.files else _demo_kafka(args, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if keep:
        where = work.resolve()
        outputs = f"; outputs in {where / 'out'} (analytics.jsonl, retention.jsonl, dlq.jsonl)" if args.files else ""
        _say(f"kept in {where}: the keyrings (worker-keyring.json, vault-keyring.json){outputs}. "
             f"A new demo there replaces them; remove it with: rm -r {where}")
    else:
        _say("the keys and the broker's data were in a temporary directory, now removed; "
             "--dir DIR keeps them")
    _say(f"demo finished in {time.monotonic() - started:.0f} s")
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe demo`."""
    p = sub.add_parser(
        "demo", help="run the pipeline end to end on a local Kafka with synthetic traffic",
        description=("Start a local Apache Kafka, apply the topics, generate keys, produce synthetic CDRs, run a "
                     "worker with live progress, read every output back with read_committed, print the counts "
                     "and a few analytics records, then stop everything. Needs Java 17 (and Maven the first "
                     "time); --files runs the file-only variant without Kafka."))
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                   help=f"synthetic records to send (env CDRPIPE_DEMO_RECORDS; default {DEFAULT_RECORDS:,})")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic traffic (default 0)")
    p.add_argument("--files", action="store_true",
                   help=f"file-only variant: no Kafka, no Java; keys, sample and outputs stay in ./{FILES_DIR}")
    p.add_argument("--dir", default=None,
                   help="keep keys, outputs and broker data here, new or made by an earlier demo (env "
                        f"CDRPIPE_DEMO_DIR; default: ./{FILES_DIR} with --files, else a temp dir removed at the end)")
    p.add_argument("--bootstrap-servers", default=None,
                   help="use this Kafka instead of starting one (env CDRPIPE_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic-prefix", default="",
                   help="prefix for the demo's topics, e.g. on a shared cluster (env CDRPIPE_TOPIC_PREFIX)")
    p.set_defaults(func=_cmd_demo)
