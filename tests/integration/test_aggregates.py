"""`cdrpipe aggregates worker` on the local Apache Kafka: what it publishes equals aggregate_offline
on the same committed records, no group below k is published, and aborted records never count.

The input is what the Kafka worker writes: analytics records keyed by caller token, produced in
transactions. Part of it is the core's real output for synthetic traffic; part is hand-made
groups around the threshold (exactly k callers, k-1 callers with many calls and withheld calls,
an unknown area), over three hours. One transaction is aborted: it would lift the k-1 group over
the threshold if the app read uncommitted data.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from pipeline.aggregates.offline import aggregate_offline, group_key, offline_groups, parse_start
from pipeline.apps.process import AppProcess
from pipeline.broker import LocalKafka, free_port
from pipeline.demo import read_committed
from pipeline.core.router import Router, Source
from pipeline.synthetic import generate
from pipeline.topics import apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
AGGREGATE = Draft202012Validator(json.loads((SCHEMAS / "aggregate.v1.json").read_text()),
                                 format_checker=Draft202012Validator.FORMAT_CHECKER)
K = 5
H = ("2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", "2026-03-01T12:00:00Z")


def read_topic(kafka: LocalKafka, topic: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed (key, value) of ``topic`` up to its current end (the demo's read_committed reader)."""
    return [(m.key(), m.value()) for m in read_committed(kafka.admin_config(), topic, timeout=timeout)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, app: AppProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\napp log:\n{app.log_tail()}")


def _rec(n: int, cli: str | None, cell: str | None, start: str, duration: int = 60) -> dict:
    return {"record_id": f"h-{n}", "cli": cli, "cli_class": "e164" if cli else "withheld",
            "dialled": "k1:" + "d" * 32, "dialled_class": "e164", "start": start, "duration": duration,
            "ip": None, "imsi": None, "imei": None, "cell_id": cell, "call_type": "voice", "status": "answered"}


def _caller(i: int) -> str:
    return f"k1:{i:032x}"


def handmade() -> list[dict]:
    """Groups on both sides of k, in three hours."""
    out: list[dict] = []
    add = lambda cli, cell, start, d=60: out.append(_rec(len(out), cli, cell, start, d))  # noqa: E731
    for h, start in enumerate(H):
        for i in range(K + 2):                      # 234-15-1A: k+2 callers, 3 calls each
            for _ in range(3):
                add(_caller(i), "234-15-1A", start, 30 + i + h)
        for i in range(K - 1):                      # 234-15-2B: k-1 callers, many calls, withheld calls
            for _ in range(20):
                add(_caller(100 + i), "234-15-2B", start, 5)
        for _ in range(25):
            add(None, "234-15-2B", start, 9)
        if h != 1:
            for i in range(K):                      # 234-15-3C: exactly k callers (not in hour 1)
                add(_caller(200 + i), "234-15-3C", start, 100 + i)
        for i in range(K):                          # unknown area, k callers
            add(_caller(300 + i + h), None, start, 7)
    return out


def core_records(keyring) -> list[dict]:
    """The core's real analytics output for synthetic traffic, the main hour only (no late records)."""
    lines = b"".join(generate(1500, seed=21, subscribers=90, malformed_rate=0.0)).split(b"\n")[:-1]
    batch = Router(keyring).route(lines, Source("cdr.raw", 0, list(range(len(lines)))))
    records = batch.analytics_records()
    return [r for r in records if r["start"] == "2026-11-25T00:00:00Z"]


def produce(kafka: LocalKafka, topic: str, records: list[dict], txid: str, *, commit: bool) -> None:
    """One transaction of analytics records keyed by caller, as the Kafka worker writes them."""
    producer = Producer({**kafka.admin_config(), "transactional.id": txid, "enable.idempotence": True,
                         "linger.ms": 20})
    producer.init_transactions(30)
    producer.begin_transaction()
    for r in records:
        producer.produce(topic, json.dumps(r).encode(), (r["cli"] or "").encode() or None)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_aggregates_match_offline_and_hold_k(kafka: LocalKafka, topic_prefix: str, tmp_path: Path,
                                            worker_keyring) -> None:
    specs = {s.name: s for s in load_topic_policy()}
    apply_topics(kafka.admin_config(), [replace(specs["cdr.analytics"], partitions=4), specs["cdr.aggregates"]],
                 prefix=topic_prefix, replication_factor=1)
    analytics, aggregates = topic_prefix + "cdr.analytics", topic_prefix + "cdr.aggregates"
    committed = handmade() + core_records(worker_keyring)
    flush = _rec(99_999, _caller(999), "234-15-FF", "2026-11-25T03:00:00Z")  # moves event time on
    # Would make 234-15-2B reach k in the first hour — if aborted records were read.
    aborted = [_rec(90_000 + i, _caller(900 + i), "234-15-2B", H[0]) for i in range(3)]

    port = free_port()
    app = AppProcess(["aggregates", "worker", "--bootstrap-servers", kafka.bootstrap, "--topic-prefix", topic_prefix,
                      "--k", str(K), "--grace", "600", "--idle-timeout", "2", "--partitions", "2",
                      "--session-timeout", "6", "--web-port", str(port)],
                     web_port=port, log_path=tmp_path / "aggregates.log").start(90)
    try:
        produce(kafka, analytics, aborted, f"{topic_prefix}tx-a", commit=False)
        produce(kafka, analytics, committed + [flush], f"{topic_prefix}tx-c", commit=True)

        expected = aggregate_offline(committed, k=K)
        groups = offline_groups(committed)
        below_k = sum(1 for g in groups.values() if g.distinct < K)
        assert len(expected) >= 8 and below_k >= 10   # both sides of the threshold are exercised
        wait_for(lambda: metric(app.metrics(), 'cdrpipe_aggregates_groups_total{outcome="released"}')
                 + metric(app.metrics(), 'cdrpipe_aggregates_groups_total{outcome="suppressed"}')
                 >= len(groups), 60, "every closed window's groups", app)
        published = read_topic(kafka, aggregates)

        got = sorted((json.loads(v) for _, v in published), key=lambda a: (a["window_start"], a["cell_id"] or ""))
        assert got == expected
        assert sorted(k.decode() for k, _ in published) == sorted(
            group_key(a["cell_id"], parse_start(a["window_start"])) for a in expected)
        for agg in got:
            assert agg["distinct_callers"] >= K and not list(AGGREGATE.iter_errors(agg))
        assert "234-15-2B" not in {a["cell_id"] for a in got}       # k-1 callers: never published
        assert {a["cell_id"] for a in got if a["window_start"] == H[1]} == {"234-15-1A", None}

        text = app.metrics()
        assert metric(text, 'cdrpipe_aggregates_groups_total{outcome="released"}') == len(expected)
        assert metric(text, 'cdrpipe_aggregates_groups_total{outcome="suppressed"}') == below_k
        assert metric(text, 'cdrpipe_aggregates_records_total{outcome="accepted"}') == len(committed) + 1
        assert metric(text, 'cdrpipe_aggregates_records_total{outcome="late"}') == 0

        # Event time is now 03:00 on 25 Nov. A record for 02:00-03:00 is past its window's end but
        # within the grace (600 s): it counts. One for 10:00 on 1 March is late: left out.
        produce(kafka, analytics, [_rec(99_001, _caller(998), "234-15-FF", "2026-11-25T02:00:00Z"),
                                   _rec(99_002, _caller(997), "234-15-1A", H[0])], f"{topic_prefix}tx-l", commit=True)
        wait_for(lambda: metric(app.metrics(), 'cdrpipe_aggregates_records_total{outcome="late"}') == 1
                 and metric(app.metrics(), 'cdrpipe_aggregates_records_total{outcome="accepted"}')
                 == len(committed) + 2, 30, "one late and one in-grace record", app)
        assert len(read_topic(kafka, aggregates)) == len(expected)   # nothing re-published
    finally:
        assert app.terminate() == 0, app.log_tail()
    assert "Traceback" not in app.log_text()
