"""`cdrpipe process`: a file of CDRs through the core into analytics, retention and dlq files.

Also the flags every runner of the core shares (:func:`add_core_arguments`) and the router
they build from them (:func:`build_router`), for `cdrpipe run`.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import orjson

from pipeline.core.router import CoreConfig, Router
from pipeline.errors import FatalError, UsageError
from pipeline.formats import check_format_options, load_mapping
from pipeline.keys import ENV_KEYRING_FILE, KeyringError, load_worker_keyring
from pipeline.policy import Policy, PolicyError, load_policy
from pipeline.runners import inputs
from pipeline.runners.files import (DEFAULT_BATCH_BYTES, FormatMismatch, SuppressionsError, first_batch_check,
                                    input_sample, load_suppressions, process_file)


def core_config(args: argparse.Namespace, policy: Policy) -> CoreConfig:
    """The core's settings from the shared flags; raises ValueError (a usage error) when they don't fit."""
    options = load_mapping(args.mapping) if args.mapping else ()
    check_format_options(args.format, options)
    return CoreConfig(policy=policy, region=args.region, max_record_bytes=args.max_record_bytes,
                      format=args.format, format_options=options)


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every runner of the core shares (file and Kafka), each with an environment variable."""
    parser.add_argument("--keyring", default=None,
                        help=f"worker keyring file (env {ENV_KEYRING_FILE}, or CDRPIPE_WORKER_KEYRING_JSON)")
    parser.add_argument("--policy", default=None,
                        help="analytics policy TOML (env CDRPIPE_POLICY; default: the built-in raw v1 policy)")
    parser.add_argument("--region", default="GB",
                        help="default region for national numbers (env CDRPIPE_REGION; default GB)")
    parser.add_argument("--format", default="jsonl",
                        help="input format (env CDRPIPE_FORMAT; default jsonl)")
    parser.add_argument("--mapping", default=None,
                        help="CSV layout TOML for --format csv/asterisk-csv/acc (env CDRPIPE_MAPPING; docs/formats.md)")
    parser.add_argument("--suppressions", default=None,
                        help="file of suppressed subscriber tokens, one per line (env CDRPIPE_SUPPRESSIONS)")
    parser.add_argument("--max-record-bytes", type=int, default=64 * 1024,
                        help="larger records go to the DLQ as too_large (default 65536)")


def build_router(args: argparse.Namespace) -> Router:
    """The core from the shared flags (keyring, policy, region, suppressions)."""
    try:
        keyring = load_worker_keyring(args.keyring)
        policy = load_policy(args.policy)
        return Router(keyring, core_config(args, policy), load_suppressions(args.suppressions))
    except (KeyringError, PolicyError) as exc:
        raise FatalError(str(exc)) from None
    except SuppressionsError as exc:
        raise (UsageError if exc.usage else FatalError)(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _out_dir_error(out_dir: str, exc: OSError) -> str | None:
    """One line for an output that cannot be written (None: the error is not about ``--out-dir``)."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else None
    top, at = os.path.abspath(out_dir).rstrip(os.sep) + os.sep, os.path.abspath(name or "").rstrip(os.sep) + os.sep
    inside = name is not None and (at.startswith(top) or top.startswith(at))  # in it, or a parent mkdir failed on
    if not inside and not (name is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)):
        return None
    why = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOTDIR:
        why = "a part of the path is a file, not a directory"
    elif exc.errno == errno.EEXIST:
        why = "it is a file, not a directory"
    return f"cannot write the outputs to --out-dir {out_dir}: {why}; give a writable directory (created if missing)"


def _cmd_process(args: argparse.Namespace) -> int:
    if args.input != "-" and not os.path.isfile(args.input):
        if not os.path.isdir(args.input):
            raise UsageError(f"input file {args.input} does not exist")
        if args.format not in inputs.DOCUMENT_FORMATS:
            readers = ", ".join(f"--format {f}" for f in sorted(inputs.DOCUMENT_FORMATS))
            raise UsageError(f"--input {args.input} is a directory, not a file: give one file of records, or - with "
                             f"the files on stdin (cat {args.input}/* | cdrpipe process --input - …); only {readers} "
                             "reads a directory (of call files)")
    router = build_router(args)
    started = time.monotonic()
    try:
        totals = process_file(router, args.input, Path(args.out_dir), batch_bytes=args.batch_bytes,
                              progress=not args.quiet, workers=max(1, args.workers),
                              direct_io=not args.buffered_io,
                              check_first=first_batch_check(args.format, input_sample(args.input)))
    except FormatMismatch as exc:
        raise FatalError(str(exc)) from None
    except OSError as exc:
        message = _out_dir_error(args.out_dir, exc)
        if message is None:
            where = f" ({os.fsdecode(exc.filename)})" if exc.filename is not None else ""
            message = f"cannot read --input {args.input}: {exc.strerror or type(exc).__name__}{where}"
        raise FatalError(message) from None
    elapsed = time.monotonic() - started
    if totals.dlq_reasons and not args.quiet:
        reasons = ", ".join(f"{k} {v}" for k, v in totals.dlq_reasons.most_common())
        print(f"dlq reasons: {reasons}", file=sys.stderr)
    nulled = totals.summary().get("nulled")
    if nulled and not args.quiet:
        print("nulled in analytics (record kept): " + ", ".join(f"{k} {v}" for k, v in nulled.items()),
              file=sys.stderr)
    if not args.quiet:
        print(f"done: {totals.counts['in']:,} records in {elapsed:.2f} s "
              f"({totals.counts['in'] / max(elapsed, 1e-9):,.0f} records/s) -> {args.out_dir}", file=sys.stderr)
    print(orjson.dumps(totals.summary()).decode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="pseudonymise a file of CDRs into analytics, retention and dlq files",
                       description="Route every record of --input through the core. Writes DIR/analytics.jsonl, "
                                   "DIR/retention.jsonl and DIR/dlq.jsonl, progress on stderr, and a JSON summary "
                                   "as the last stdout line. Exit codes: 0 done, 1 fatal, 2 usage.")
    p.add_argument("--input", required=True,
                   help="file of raw CDRs (one a line), or - for stdin; for --format freeswitch-json also a file "
                        "holding one pretty-printed document, or a directory of such call files")
    p.add_argument("--out-dir", required=True, help="directory for the three output files")
    add_core_arguments(p)
    p.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES, help="bytes read per batch (default 8 MiB)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads routing chunks in parallel (env CDRPIPE_WORKERS; default: one per core)")
    p.add_argument("--buffered-io", action="store_true",
                   help="write the outputs through the page cache (default: direct I/O where the file system "
                        "allows it, which spares the copy of every output byte into the cache)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_process)
