"""`cdrpipe produce`: a file of raw CDRs into the input topic, one record a message, for `cdrpipe run` to read.

The records are cut exactly as `cdrpipe process` cuts them (:mod:`pipeline.runners.inputs`):
one a line, or for ``--format freeswitch-json`` one pretty-printed call file a message, and a
directory of them. So ``produce`` then ``run`` gives the same counts as ``process`` on the file
(acc calls aside: a worker pairs an INVITE and its BYE only within one of its batches).

The producer is idempotent (``enable.idempotence``, ``acks=all``): a retried send is written once,
in order, and a record counts as produced only when every in-sync replica has it.

**Message keys: none.** A key is visible to anyone who can read the topic, its offsets and the
broker's logs, and the only keys that would help (the calling number, a Call-ID) are identifiers
or an unkeyed hash of one, which a dictionary of numbers reverses. The producer has no token key
to do better, and the worker does not read input keys: it keys its analytics output by the
caller's token itself. Without a key librdkafka's sticky partitioner fills one partition's batch
at a time (fewer, larger requests) and spreads the load over the partitions. Positions (file,
line) are not keys either: they would make every message its own partition hop for nothing.

Progress goes to stderr every two seconds (counts and a percentage, never a value); the last
stdout line is ``{"produced": N, "failed": F, "topic": "..."}``. Exit codes: 0 all produced,
1 fatal (broker unreachable, topic missing, records refused), 2 usage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import FatalError, UsageError
from pipeline.runners import inputs

DEFAULT_TOPIC = "cdr.raw"
PROGRESS_SECONDS = 2.0
#: Settings idempotent, acknowledged delivery rests on: -X cannot change them.
PINNED = {"bootstrap.servers": "use --bootstrap-servers", "enable.idempotence": "the producer is always idempotent",
          "acks": "every in-sync replica acknowledges (acks=all)"}
ENV_X_PREFIX = "CDRPIPE_X_"


@dataclass
class ProduceTotals:
    """What was sent and what the broker acknowledged or refused (by error name, never a value)."""

    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def produced(self) -> int:
        return self.sent - sum(self.failed.values())

    def summary(self, topic: str) -> dict[str, Any]:
        return {"produced": self.produced, "failed": sum(self.failed.values()), "topic": topic}


def producer_config(bootstrap: str, options: dict[str, str] | None = None) -> dict[str, Any]:
    """The idempotent producer's settings; ``options`` are -X/env librdkafka settings (not the pinned ones)."""
    options = dict(options or {})
    for key in options:
        if key in PINNED:
            raise UsageError(f"-X {key}: cannot be set here ({PINNED[key]})")
    return {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
            "client.id": "cdrpipe-produce", **options}


def produce_file(conf: dict[str, Any], topic: str, path: str, fmt: str = "jsonl", *, progress: bool = True,
                 timeout: float = 10.0) -> ProduceTotals:
    """Send every record of ``path`` to ``topic``, unkeyed; wait until each is acknowledged or refused.

    Raises :class:`FatalError` when the broker cannot be reached or the topic does not exist
    (checked first: librdkafka would otherwise retry for minutes before failing each message).
    """
    from confluent_kafka import KafkaError, KafkaException, Producer

    totals = ProduceTotals()

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            totals.failed[err.name()] += 1

    producer = Producer({**conf, "on_delivery": on_delivery, "delivery.report.only.error": True})
    try:
        metadata = producer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {conf['bootstrap.servers']} within {timeout:.0f} s "
                         f"({exc.args[0].name() if exc.args else 'no answer'}): check --bootstrap-servers "
                         "(`cdrpipe broker` starts a local one)") from None
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise FatalError(f"topic {topic} does not exist: create it with `cdrpipe topics apply --bootstrap-servers "
                         f"{conf['bootstrap.servers']}` (or name another with --topic)")
    size = inputs.input_size(path)
    started = last = time.monotonic()
    produce, poll = producer.produce, producer.poll
    for batch in inputs.iter_batches(path, fmt, pair_calls=False):
        for record in batch.lines():
            while True:
                try:
                    produce(topic, record)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    poll(0.1)
                except KafkaException as exc:  # refused before sending, e.g. larger than message.max.bytes
                    totals.failed[exc.args[0].name() if exc.args else "error"] += 1
                    break
            totals.sent += 1
        poll(0)
        now = time.monotonic()
        if progress and now - last >= PROGRESS_SECONDS:
            last = now
            done = f" ({min(batch.done_bytes, size) * 100 // size}%)" if size else ""
            print(f"produced {totals.sent:,} records{done}, {totals.sent / (now - started):,.0f} records/s",
                  file=sys.stderr, flush=True)
    remaining = producer.flush(120)
    if remaining:
        totals.failed["timed_out"] += remaining
    return totals


def _client_options(items: list[str] | None) -> dict[str, str]:
    """librdkafka settings from ``CDRPIPE_X_<NAME>`` variables, then ``-X key=value`` (which win)."""
    from pipeline.kafka_config import parse_x_options

    env = {k[len(ENV_X_PREFIX):].lower().replace("_", "."): v for k, v in os.environ.items()
           if k.startswith(ENV_X_PREFIX) and len(k) > len(ENV_X_PREFIX)}
    return {**env, **parse_x_options(items or [])}


def _cmd_produce(args: argparse.Namespace) -> int:
    from pipeline.kafka_config import require_bootstrap
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
    conf = producer_config(bootstrap, _client_options(args.X))
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
    """Add `cdrpipe produce`; every flag has an environment variable."""
    env = os.environ.get
    p = sub.add_parser(
        "produce", help="send a file of raw CDRs to the input topic (cdr.raw), for `cdrpipe run`",
        description=("Send every record of --input to --topic, one record a message, cut as `cdrpipe process` "
                     "cuts them (a line; with --format freeswitch-json a pretty-printed call file, or a directory "
                     "of them). Idempotent producer, acks=all; messages have no key (a key would be an "
                     "identifier or reversible from one, and the worker does not read input keys). Progress on "
                     "stderr; the last stdout line is {\"produced\": N, \"failed\": F, \"topic\": T}. Exit codes: "
                     f"0 done, 1 fatal, 2 usage. Any librdkafka setting: -X key=value or env {ENV_X_PREFIX}<KEY>."))
    p.add_argument("--bootstrap-servers", default=env("CDRPIPE_BOOTSTRAP_SERVERS"),
                   help="Kafka bootstrap servers (env CDRPIPE_BOOTSTRAP_SERVERS)")
    p.add_argument("--input", required=True,
                   help="file of raw CDRs (one a line), or - for stdin; with --format freeswitch-json also a "
                        "pretty-printed call file or a directory of them")
    p.add_argument("--format", default=env("CDRPIPE_FORMAT", "jsonl"),
                   help="input format, which decides what one record is (env CDRPIPE_FORMAT; default jsonl)")
    p.add_argument("--topic", default=env("CDRPIPE_INPUT_TOPIC", DEFAULT_TOPIC),
                   help=f"topic to send to: the worker's input topic (env CDRPIPE_INPUT_TOPIC; default {DEFAULT_TOPIC})")
    p.add_argument("--topic-prefix", default=env("CDRPIPE_TOPIC_PREFIX", ""),
                   help="prepended to --topic, as `run --topic-prefix` (env CDRPIPE_TOPIC_PREFIX)")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka producer setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_produce)


if __name__ == "__main__":
    from pipeline.cli import main as _main
    sys.exit(_main(["produce", *sys.argv[1:]]))
