"""The tools `cdrpipe demo` (:mod:`pipeline.commands.demo`) uses to show the whole pipeline on one machine.

The demo starts a local Apache Kafka, applies the topic policy, generates keys in a work dir,
produces seeded synthetic traffic to ``cdr.raw``, runs one worker with live progress, reads every
output back with ``read_committed`` to show that the counts reconcile, prints a few analytics
records and stops everything. ``--files`` runs the same core over a generated file instead, for
machines without Java, and keeps its keys, sample and outputs in ``./cdrpipe-demo`` (or ``--dir``)
so that the files it points to can be read afterwards.

Public API (reused by the integration tests and ``bench/kafka_e2e.py``):
    ``produce_synthetic(conf, topic, n, seed=0, progress=None) -> int``   seeded traffic into a topic
    ``read_committed(conf, topic) -> Iterator[Message]``                 every committed message, once
    ``committed_counts(conf, topics) -> TopicCounts``                     records per output, reconciled
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, Message, Producer, TopicPartition

from pipeline.errors import FatalError

log = logging.getLogger(__name__)

DEMO_GROUP = "cdrpipe-demo"
SHOWN_RECORDS = 3


# --------------------------------------------------------------------------- traffic in, records out


def produce_synthetic(conf: Mapping[str, Any], topic: str, n: int, *, seed: int = 0,
                      progress: Callable[[int], None] | None = None) -> int:
    """Produce ``n`` synthetic raw CDRs (``pipeline.synthetic``, one per message, unkeyed); return the count.

    Raises ``FatalError`` when the broker refuses messages (e.g. the topic does not exist).
    """
    from pipeline.synthetic import generate

    failed: Counter[str] = Counter()

    def on_error(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed[err.name()] += 1

    producer = Producer({"linger.ms": 20, "compression.type": "lz4", "delivery.report.only.error": True,
                         "on_delivery": on_error, **conf})
    produce, sent = producer.produce, 0
    for chunk in generate(n, seed=seed):
        lines = chunk.split(b"\n")
        if not lines[-1]:
            lines.pop()
        for line in lines:
            try:
                produce(topic, line)
            except BufferError:
                producer.flush(5)
                produce(topic, line)
        sent += len(lines)
        producer.poll(0)
        if progress:
            progress(sent)
    if producer.flush(60) or failed:
        raise FatalError(f"producing to {topic} failed: {dict(failed) or 'timed out'}")
    return sent


def read_committed(conf: Mapping[str, Any], topic: str, *, timeout: float = 120.0,
                   since_ms: int | None = None) -> Iterator[Message]:
    """Yield every message of ``topic`` that is committed now, once, as a read_committed reader sees it.

    Reads from the beginning (or, with ``since_ms``, from each partition's first message with a
    Kafka timestamp at or after it) up to each partition's last stable offset taken at the start.
    Raises ``FatalError`` when that end is not reached within ``timeout`` seconds.
    """
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient(dict(conf))
    md = admin.list_topics(topic, timeout=30)
    if topic not in md.topics or md.topics[topic].error is not None:
        raise FatalError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions)]
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                 isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=30)
    ends = {tp.partition: f.result(timeout=30).offset for tp, f in futures.items()}
    pending = {p: end for p, end in ends.items() if end > 0}
    if not pending:
        return
    consumer = Consumer({**conf, "group.id": f"cdrpipe-reader-{uuid.uuid4().hex[:8]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": False})
    try:
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending]
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in pending], timeout=30)
            for tp in found:  # -1: no message at or after since_ms, so nothing to read there
                if tp.offset < 0 or tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
            starts = [tp for tp in found if tp.partition in pending]
            if not pending:
                return
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while pending:
            for m in consumer.consume(10_000, 0.5):
                if m.error() is not None:
                    if m.error().fatal():
                        raise FatalError(f"reading {topic}: {m.error().str()}")
                    continue
                if m.offset() < ends[m.partition()]:
                    yield m
            # position() moves past transaction markers too, so it reaches the end offset exactly.
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
            if time.monotonic() > deadline:
                raise FatalError(f"reading {topic}: partitions {sorted(pending)} not read to their end "
                                 f"within {timeout:.0f} s")
    finally:
        consumer.close()


@dataclass
class TopicCounts:
    """Records committed to each output (retention counted by record ids, not segments)."""

    analytics: int = 0
    retention_records: int = 0
    retention_segments: int = 0
    dlq: int = 0
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    samples: list[bytes] = field(default_factory=list)


def committed_counts(conf: Mapping[str, Any], analytics: str, retention: str, dlq: str,
                     samples: int = 0) -> TopicCounts:
    """Count what ``read_committed`` readers see in the three outputs (and keep a few analytics values)."""
    counts = TopicCounts()
    for m in read_committed(conf, analytics):
        counts.analytics += 1
        if len(counts.samples) < samples:
            counts.samples.append(m.value())
    for m in read_committed(conf, retention):
        counts.retention_segments += 1
        counts.retention_records += len(orjson.loads(m.value())["record_refs"])
    for m in read_committed(conf, dlq):
        counts.dlq += 1
        counts.dlq_reasons[str(orjson.loads(m.value()).get("reason"))] += 1
    return counts
