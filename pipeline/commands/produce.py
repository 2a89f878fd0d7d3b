"""`cdrpipe produce`: a file of raw CDRs into the input topic, one record a message (:mod:`pipeline.runners.produce`)."""
from __future__ import annotations

import argparse
import os
import sys
import time

import orjson

from pipeline.commands.env import X_PREFIX
from pipeline.errors import FatalError, UsageError
from pipeline.kafka_config import parse_x_options, require_bootstrap
from pipeline.runners import inputs
from pipeline.runners.produce import DEFAULT_TOPIC, produce_file, producer_config


def _cmd_produce(args: argparse.Namespace) -> int:
    bootstrap = require_bootstrap(args.bootstrap_servers, local_hint=True)
    if args.input != "-" and not os.path.isfile(args.input) \
            and not (os.path.isdir(args.input) and args.format in inputs.DOCUMENT_FORMATS):
        what = "is a directory (only --format freeswitch-json reads a directory of call files)" \
            if os.path.isdir(args.input) else "does not exist"
        raise UsageError(f"--input {args.input} {what}")
    from pipeline.formats import FORMATS
    if args.format not in FORMATS:
        raise UsageError(f"unknown input format {args.format!r}; known: {', '.join(sorted(FORMATS))}")
    topic = args.topic_prefix + args.topic
    conf = producer_config(bootstrap, parse_x_options(args.X))
    started = time.monotonic()
    totals = produce_file(conf, topic, args.input, args.format, progress=not args.quiet)
    elapsed = time.monotonic() - started
    if not args.quiet:
        print(f"done: {totals.produced:,} records to {topic} in {elapsed:.2f} s "
              f"({totals.produced / max(elapsed, 1e-9):,.0f} records/s)", file=sys.stderr)
    print(orjson.dumps(totals.summary(topic)).decode())
    if totals.failed:
        reasons = ", ".join(f"{k} {v}" for k, v in totals.failed.most_common())
        raise FatalError(f"{sum(totals.failed.values()):,} of {totals.sent:,} records were not produced ({reasons}); "
                         "produce the file again once the cause is fixed (the worker's vault deduplicates)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe produce`."""
    p = sub.add_parser(
        "produce", help="send a file of raw CDRs to the input topic (cdr.raw), for `cdrpipe run`",
        description=("Send every record of --input to --topic, one record a message, cut as `cdrpipe process` "
                     "cuts them (a line; with --format freeswitch-json a pretty-printed call file, or a directory "
                     "of them). Idempotent producer, acks=all; messages have no key (a key would be an "
                     "identifier or reversible from one, and the worker does not read input keys). Progress on "
                     "stderr; the last stdout line is {\"produced\": N, \"failed\": F, \"topic\": T}. Exit codes: "
                     f"0 done, 1 fatal, 2 usage. Any librdkafka setting: -X key=value or env {X_PREFIX}<KEY>."))
    p.add_argument("--bootstrap-servers", default=None,
                   help="Kafka bootstrap servers (env CDRPIPE_BOOTSTRAP_SERVERS)")
    p.add_argument("--input", required=True,
                   help="file of raw CDRs (one a line), or - for stdin; with --format freeswitch-json also a "
                        "pretty-printed call file or a directory of them")
    p.add_argument("--format", default="jsonl",
                   help="input format, which decides what one record is (env CDRPIPE_FORMAT; default jsonl)")
    p.add_argument("--topic", default=DEFAULT_TOPIC,
                   help=f"topic to send to: the worker's input topic (env CDRPIPE_INPUT_TOPIC; default {DEFAULT_TOPIC})")
    p.add_argument("--topic-prefix", default="",
                   help="prepended to --topic, as `run --topic-prefix` (env CDRPIPE_TOPIC_PREFIX)")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka producer setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_produce)
