"""`cdrpipe vault sink` against the real local broker: read_committed, offsets after storage, stored once.

Retention envelopes are made by the real core (``Router``) and produced transactionally, the
way workers write ``cdr.retention``; one transaction is aborted and must never reach the vault.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import generate_latest

from pipeline.broker import LocalKafka
from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from pipeline.core.router import CoreConfig, Router, Source
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import generate, write_private_json
from pipeline.metrics import VaultSinkMetrics
from pipeline.vault.ingest import Ingester
from pipeline.vault.keystore import Keystore
from pipeline.vault.sink import VaultSink
from pipeline.vault.store import VaultStore

pytestmark = pytest.mark.kafka
TARGET = "07700 900123"
#: Calls of the last month (within the vault's 12-month retention, which ingest enforces).
BASE = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=30)


def _lines(prefix: str, n: int, start_day: int = 3) -> list[bytes]:
    """``n`` raw records ``<prefix>-<i>``; every third one has the target as caller."""
    return [orjson.dumps({"record_id": f"{prefix}-{i}", "cli": TARGET if i % 3 == 0 else f"07700 9005{i % 100:02d}",
                          "dialled": "+44 7700 900999", "start": f"{BASE + dt.timedelta(days=start_day + i % 20)}T10:00:00Z",
                          "duration": i}) for i in range(n)]


def _refs(worker, ids) -> set[str]:
    """The record_refs (tokens of kind record) of record ids: what the vault stores and delivers."""
    tokeniser = Tokeniser(worker)
    return {tokeniser.token_one("record", rid) for rid in ids}


def _envelopes(worker, lines: list[bytes], name: str) -> list[bytes]:
    """Segment envelopes for ``lines`` from the real core (small segments: several per batch)."""
    router = Router(worker, CoreConfig(segment_bytes=2048))
    return router.route(lines, Source(name, 0, range(1, len(lines) + 1))).retention


def _produce(kafka: LocalKafka, topic: str, txid: str, batches: list[tuple[list[bytes], bool]]) -> None:
    """One transaction per ``(values, commit)``: committed or aborted."""
    producer = Producer({**kafka.admin_config(), "transactional.id": txid, "enable.idempotence": True})
    producer.init_transactions(30)
    for values, commit in batches:
        producer.begin_transaction()
        for i, value in enumerate(values):
            producer.produce(topic, value=value, partition=i % 2)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)


def _create_topic(kafka: LocalKafka, name: str) -> None:
    admin = AdminClient(kafka.admin_config())
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(timeout=30)


def _stored_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT record_id FROM record_ids")}
    finally:
        conn.close()


@pytest.fixture
def keys(tmp_path):
    worker, vault = generate()
    write_private_json(tmp_path / "worker-keyring.json", worker.to_json())
    write_private_json(tmp_path / "vault-keyring.json", vault.to_json())
    return worker, vault, tmp_path / "vault-keyring.json"


def test_sink_stores_committed_records_once_and_commits_offsets(kafka, topic_prefix, tmp_path, keys,
                                                                metric_samples):
    worker, vault, _path = keys
    topic = f"{topic_prefix}cdr.retention"
    _create_topic(kafka, topic)
    first, aborted = _lines("a", 60), _lines("x", 30)
    _produce(kafka, topic, f"{topic_prefix}w1", [(_envelopes(worker, first, "cdr.raw"), True),
                                                 (_envelopes(worker, aborted, "cdr.raw"), False)])
    db = tmp_path / "vault.db"
    metrics = VaultSinkMetrics()  # one set across both runs, as a long-lived sink would count

    def run_sink() -> dict[str, int]:
        store = VaultStore(db, vault_kid=vault.vault_kid, index_kid=vault.index_key.kid, region="GB", create=True)
        keystore = Keystore(str(db) + ".keys", vault, create=True)
        ingester = Ingester(store, keystore, vault)
        try:
            sink = VaultSink(ingester, kafka.admin_config(), topic=topic, group=f"{topic_prefix}vault",
                             max_messages=4, metrics=metrics)
            return sink.run(idle_exit=3.0).summary()
        finally:
            ingester.close()
            keystore.close()
            store.close()

    totals = run_sink()
    assert totals["stored"] == 60 and totals["duplicates"] == 0
    assert _stored_ids(db) == _refs(worker, (f"a-{i}" for i in range(60)))  # the aborted transaction never arrived

    # Re-sent records (a worker retried) and new ones: the new are stored, the re-sent are counted once more
    # as duplicates, and nothing already committed is read again (offsets were committed after storage).
    again, fresh = first[:20], _lines("b", 15)
    _produce(kafka, topic, f"{topic_prefix}w1", [(_envelopes(worker, again + fresh, "cdr.raw"), True)])
    totals = run_sink()
    assert (totals["stored"], totals["duplicates"], totals["records"]) == (15, 20, 35)
    assert len(_stored_ids(db)) == 75
    text = generate_latest(metrics.registry).decode()
    assert "7700900" not in text and "447700" not in text, "a number reached the sink's metrics"
    samples = metric_samples(text)
    assert samples['cdrpipe_vault_records_total{outcome="stored"}'] == 75
    assert samples['cdrpipe_vault_records_total{outcome="duplicate"}'] == 20
    assert samples["cdrpipe_vault_batch_records_sum"] == 95
    assert samples['cdrpipe_vault_segments_total{outcome="opened"}'] > 2
    # Lag was measured for both partitions; caught up but for at most the last transaction's marker each.
    assert {'cdrpipe_vault_consumer_lag{partition="0"}', 'cdrpipe_vault_consumer_lag{partition="1"}'} <= set(samples)
    assert samples["cdrpipe_vault_consumer_lag_total"] <= 2
    # In time it is caught up: only commit markers remain, and the end-of-partition events say so.
    assert samples['cdrpipe_vault_consumer_lag_seconds{partition="0"}'] == 0
    assert samples['cdrpipe_vault_consumer_lag_seconds{partition="1"}'] == 0
    assert samples["cdrpipe_vault_audit_verify_ok"] == 1  # the sink checked its database's audit log

    consumer = Consumer({**kafka.admin_config(), "group.id": f"{topic_prefix}vault"})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=30)
        ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in (0, 1)]
    finally:
        consumer.close()
    # Committed up to the end, except the markers of the last transaction (not messages).
    assert all(end - 1 <= tp.offset <= end for tp, end in zip(committed, ends))


def test_cli_sink_passes_settings_through_and_answers_queries(kafka, topic_prefix, tmp_path, keys, capsys):
    worker, _vault, keyring = keys
    topic = f"{topic_prefix}cdr.retention"
    _create_topic(kafka, topic)
    _produce(kafka, topic, f"{topic_prefix}w2", [(_envelopes(worker, _lines("c", 40), "cdr.raw"), True)])
    db = tmp_path / "vault.db"
    argv = ["vault", "sink", "--bootstrap-servers", kafka.bootstrap, "--keyring", str(keyring), "--db", str(db),
            "--topic", topic, "--group", f"{topic_prefix}g", "-X", "client.id=cdrpipe-vault-test",
            "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--idle-exit", "3", "--quiet"]
    assert main(argv) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stored"] == 40
    window = ["--from", str(BASE), "--to", str(BASE + dt.timedelta(days=30))]
    assert main(["vault", "warrant", "add", "--keyring", str(keyring), "--db", str(db), "--id", "WR-1",
                 "--authority", "test", "--officer", "PC-1", "--targets", TARGET, *window,
                 "--expires", str(BASE + dt.timedelta(days=60))]) == EXIT_OK
    assert main(["vault", "query", "--keyring", str(keyring), "--db", str(db), "--target", "+447700900123",
                 *window, "--warrant", "WR-1", "--officer", "PC-1"]) == EXIT_OK
    refs = [orjson.loads(line)["record_ref"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(refs) == sorted(_refs(worker, (f"c-{i}" for i in range(0, 40, 3))))
    assert main(argv[:-5] + ["-X", "nonsense", "--idle-exit", "1"]) == EXIT_USAGE


def test_cli_sink_stops_on_a_foreign_vault_key_without_committing(kafka, topic_prefix, tmp_path, keys, capsys):
    _worker, _vault, keyring = keys
    stranger = generate()[0]  # a worker configured with another vault's public key
    topic = f"{topic_prefix}cdr.retention"
    _create_topic(kafka, topic)
    _produce(kafka, topic, f"{topic_prefix}w3", [(_envelopes(stranger, _lines("s", 5), "cdr.raw"), True)])
    db = tmp_path / "vault.db"
    group = f"{topic_prefix}g"
    assert main(["vault", "sink", "--bootstrap-servers", kafka.bootstrap, "--keyring", str(keyring), "--db",
                 str(db), "--topic", topic, "--group", group, "--idle-exit", "3"]) == EXIT_FATAL
    assert "sealed for vault key" in capsys.readouterr().err
    consumer = Consumer({**kafka.admin_config(), "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=30)
    finally:
        consumer.close()
    assert all(tp.offset < 0 for tp in committed)  # nothing committed: the records wait for the right keyring
    assert _stored_ids(db) == set()


def test_two_sinks_on_postgres_one_killed_mid_batch_store_everything_once(kafka, topic_prefix, tmp_path, keys,
                                                                         postgres, pg_vault_urls, capsys):
    """Two `vault sink` processes in one group on one PostgreSQL vault; one is SIGKILLed while it works and
    replaced. Every committed record is stored exactly once, officers query meanwhile, and the audit
    chain (with its witness) verifies."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psycopg
    worker, _vault, keyring = keys
    db, keystore = pg_vault_urls
    topic = f"{topic_prefix}cdr.retention"
    admin = AdminClient(kafka.admin_config())
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(timeout=30)
    n = 3000
    lines = _lines("p", n)
    envelopes = _envelopes(worker, lines, "cdr.raw")
    producer = Producer({**kafka.admin_config(), "transactional.id": f"{topic_prefix}wp", "enable.idempotence": True})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i, value in enumerate(envelopes):
        producer.produce(topic, value=value, partition=i % 4)
    producer.commit_transaction(30)
    assert main(["vault", "init", "--keyring", str(keyring), "--db", db, "--keystore", keystore]) == EXIT_OK
    cmd = [sys.executable, "-m", "pipeline.cli", "vault", "sink", "--bootstrap-servers", kafka.bootstrap,
           "--keyring", str(keyring), "--db", db, "--keystore", keystore, "--topic", topic,
           "--group", f"{topic_prefix}pg", "--max-messages", "2", "--idle-exit", "15",
           "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000", "--quiet"]

    def stored() -> int:
        with psycopg.connect(db, autocommit=True) as conn:
            return int(conn.execute("SELECT count(*) FROM vault.records").fetchone()[0])

    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    other = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while stored() < 50 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the sink finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    replacement = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    # An officer works while ingest runs.
    witness = tmp_path / "witness.jsonl"
    window = ["--from", str(BASE), "--to", str(BASE + dt.timedelta(days=30))]
    assert main(["vault", "warrant", "add", "--keyring", str(keyring), "--db", db, "--keystore", keystore,
                 "--id", "WR-PG", "--authority", "test", "--officer", "PC-1", "--targets", TARGET, *window,
                 "--expires", str(BASE + dt.timedelta(days=60)), "--witness", str(witness)]) == EXIT_OK
    assert main(["vault", "query", "--keyring", str(keyring), "--db", db, "--keystore", keystore,
                 "--target", TARGET, *window, "--warrant", "WR-PG", "--officer", "PC-1"]) == EXIT_OK
    for proc in (other, replacement):
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    with psycopg.connect(db, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT record_id FROM vault.records")]
        id_rows = int(conn.execute("SELECT count(*) FROM vault.record_ids").fetchone()[0])
    assert len(ids) == len(set(ids)) == id_rows == n           # nothing lost, nothing twice
    assert set(ids) == _refs(worker, (f"p-{i}" for i in range(n)))
    capsys.readouterr()
    assert main(["vault", "query", "--keyring", str(keyring), "--db", db, "--keystore", keystore,
                 "--target", TARGET, *window, "--warrant", "WR-PG", "--officer", "PC-1"]) == EXIT_OK
    found = [orjson.loads(line)["record_ref"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(found) == sorted(_refs(worker, (f"p-{i}" for i in range(0, n, 3))))
    assert main(["vault", "audit", "verify", "--db", db, "--keystore", keystore, "--witness", str(witness)]) == EXIT_OK
