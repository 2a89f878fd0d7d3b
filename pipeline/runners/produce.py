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

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import FatalError, UsageError
from pipeline.runners import inputs

DEFAULT_TOPIC = "cdr.raw"
PROGRESS_SECONDS = 2.0
#: Settings idempotent, acknowledged delivery rests on: -X cannot change them.
PINNED = {"bootstrap.servers": "use --bootstrap-servers", "enable.idempotence": "the producer is always idempotent",
          "acks": "every in-sync replica acknowledges (acks=all)"}


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
