"""The file runner: the same core over files, for backfills, tests and benchmarks.

``cdrpipe process`` reads NDJSON in large chunks, routes each batch through the core and
appends one buffer per output per batch. Its last stdout line is a JSON summary whose
counts always reconcile; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from pipeline.core.router import CoreConfig, Router, Source, Suppressions
from pipeline.keys import ENV_KEYRING_FILE, KeyringError, load_worker_keyring
from pipeline.policy import PolicyError, load_policy

DEFAULT_BATCH_BYTES = 8 << 20
PROGRESS_SECONDS = 2.0
OUTPUTS = ("analytics", "retention", "dlq")


def iter_line_batches(stream: BinaryIO, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[list[bytes]]:
    """Lists of lines (without newlines) read in chunks of about ``batch_bytes``; no line is split."""
    tail = b""
    while True:
        chunk = stream.read(batch_bytes)
        if not chunk:
            break
        data = tail + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            tail = data
            continue
        tail = data[cut + 1:]
        yield data[:cut].split(b"\n")
    if tail:
        yield tail.split(b"\n")


@dataclass
class RunTotals:
    """Counts across batches (the same names the Kafka worker reports)."""

    counts: Counter[str] = field(default_factory=Counter)
    dlq_reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("in", "analytics", "retention", "dlq", "suppressed")}


def load_suppressions(path: str | None) -> Suppressions:
    """Tokens from a file: one per line, or JSON lines with a ``token`` field (``#`` comments allowed)."""
    if not path:
        return Suppressions()
    tokens = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            doc = orjson.loads(line)
            if doc.get("active", True):
                tokens.append(str(doc["token"]))
        else:
            tokens.append(line)
    return Suppressions(tokens)


def process_file(router: Router, input_path: str, out_dir: Path, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                 progress: bool = True) -> RunTotals:
    """Route every line of ``input_path`` (``-`` for stdin) into the three files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    totals = RunTotals()
    name = "stdin" if input_path == "-" else os.path.basename(input_path)
    size = None if input_path == "-" else os.path.getsize(input_path)
    started = last = time.monotonic()
    line_no = 0
    stream = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    outs = {k: open(out_dir / f"{k}.jsonl", "wb") for k in OUTPUTS}
    try:
        for lines in iter_line_batches(stream, batch_bytes):
            routed = router.route(lines, Source(name, 0, range(line_no + 1, line_no + 1 + len(lines))))
            line_no += len(lines)
            for key, chunk in (("analytics", routed.analytics_ndjson()),
                               ("retention", b"\n".join(routed.retention)), ("dlq", b"\n".join(routed.dlq))):
                if chunk:
                    outs[key].write(chunk if chunk.endswith(b"\n") else chunk + b"\n")
            totals.counts.update(routed.counts)
            totals.dlq_reasons.update(routed.dlq_reasons)
            now = time.monotonic()
            if progress and now - last >= PROGRESS_SECONDS:
                last = now
                done = f" ({stream.tell() * 100 // size}%)" if size else ""
                rate = totals.counts["in"] / (now - started)
                print(f"processed {totals.counts['in']:,} records{done}, {rate:,.0f} records/s, "
                      f"dlq {totals.counts['dlq']:,}", file=sys.stderr, flush=True)
    finally:
        for fh in outs.values():
            fh.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    return totals


def _cmd_process(args: argparse.Namespace) -> int:
    from pipeline.cli import FatalError, UsageError
    if args.format != "jsonl":
        raise UsageError(f"--format {args.format} is not supported by this build; use jsonl")
    if args.input != "-" and not os.path.isfile(args.input):
        raise UsageError(f"input file {args.input} does not exist")
    try:
        keyring = load_worker_keyring(args.keyring)
        policy = load_policy(args.policy)
        config = CoreConfig(policy=policy, region=args.region, max_record_bytes=args.max_record_bytes)
        router = Router(keyring, config, load_suppressions(args.suppressions))
    except (KeyringError, PolicyError) as exc:
        raise FatalError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    started = time.monotonic()
    totals = process_file(router, args.input, Path(args.out_dir), batch_bytes=args.batch_bytes,
                          progress=not args.quiet)
    elapsed = time.monotonic() - started
    if totals.dlq_reasons and not args.quiet:
        reasons = ", ".join(f"{k} {v}" for k, v in totals.dlq_reasons.most_common())
        print(f"dlq reasons: {reasons}", file=sys.stderr)
    if not args.quiet:
        print(f"done: {totals.counts['in']:,} records in {elapsed:.2f} s "
              f"({totals.counts['in'] / max(elapsed, 1e-9):,.0f} records/s) -> {args.out_dir}", file=sys.stderr)
    print(orjson.dumps(totals.summary()).decode())
    return 0


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every runner of the core shares (file and Kafka), each with an environment variable."""
    parser.add_argument("--keyring", default=None,
                        help=f"worker keyring file (env {ENV_KEYRING_FILE}, or CDRPIPE_WORKER_KEYRING_JSON)")
    parser.add_argument("--policy", default=os.environ.get("CDRPIPE_POLICY"),
                        help="analytics policy TOML (env CDRPIPE_POLICY; default: the built-in raw v1 policy)")
    parser.add_argument("--region", default=os.environ.get("CDRPIPE_REGION", "GB"),
                        help="default region for national numbers (env CDRPIPE_REGION; default GB)")
    parser.add_argument("--format", default=os.environ.get("CDRPIPE_FORMAT", "jsonl"),
                        help="input format (env CDRPIPE_FORMAT; default jsonl)")
    parser.add_argument("--suppressions", default=os.environ.get("CDRPIPE_SUPPRESSIONS"),
                        help="file of suppressed subscriber tokens, one per line (env CDRPIPE_SUPPRESSIONS)")
    parser.add_argument("--max-record-bytes", type=int, default=64 * 1024,
                        help="larger records go to the DLQ as too_large (default 65536)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="pseudonymise a file of CDRs into analytics, retention and dlq files",
                       description="Route every record of --input through the core. Writes DIR/analytics.jsonl, "
                                   "DIR/retention.jsonl and DIR/dlq.jsonl, progress on stderr, and a JSON summary "
                                   "as the last stdout line. Exit codes: 0 done, 1 fatal, 2 usage.")
    p.add_argument("--input", required=True, help="NDJSON file of raw CDRs, or - for stdin")
    p.add_argument("--out-dir", required=True, help="directory for the three output files")
    add_core_arguments(p)
    p.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES, help="bytes read per batch (default 8 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_process)
