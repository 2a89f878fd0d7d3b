"""The local broker is a faithful Kafka (transactions, read_committed) and `topics apply` works on it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import (Consumer, IsolationLevel, KafkaError, Producer, TopicPartition,
                             OFFSET_BEGINNING)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from pipeline import cli
from pipeline.broker import NODE_ID, LocalKafka
from pipeline.topics import TopicSpec, apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


def _admin(kafka: LocalKafka) -> AdminClient:
    """An admin client for the session broker."""
    return AdminClient(kafka.admin_config())


def _create_topic(kafka: LocalKafka, name: str, partitions: int = 1) -> None:
    """Create one topic and wait until it exists."""
    admin = _admin(kafka)  # keep a reference: a collected client fails its futures
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)


def _drain(consumer: Consumer, *, until: set[bytes], settle: float = 1.0,
           deadline: float = 30.0) -> list[bytes]:
    """Poll until every value in ``until`` was seen, then ``settle`` seconds more; return all seen."""
    seen: list[bytes] = []
    end = time.monotonic() + deadline
    settle_end: float | None = None
    while time.monotonic() < end:
        if settle_end is None and until <= set(seen):
            settle_end = time.monotonic() + settle
        if settle_end is not None and time.monotonic() > settle_end:
            return seen
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        seen.append(msg.value())
    raise AssertionError(f"timed out: saw {seen}, waiting for {until - set(seen)}")


def _end_offset(admin: AdminClient, tp: TopicPartition, level: IsolationLevel) -> int:
    """The partition's end offset as a reader at ``level`` sees it (LSO for read_committed)."""
    futs = admin.list_offsets({tp: OffsetSpec.latest()}, isolation_level=level,
                              request_timeout=30)
    return int(futs[tp].result(timeout=30).offset)


def test_broker_answers(kafka: LocalKafka) -> None:
    """The broker is up, lists itself, and its address is a loopback host:port."""
    assert kafka.bootstrap.startswith("127.0.0.1:")
    assert kafka.is_running()
    md = _admin(kafka).list_topics(timeout=10)
    assert list(md.brokers) == [NODE_ID]
    assert md.brokers[NODE_ID].port == kafka.port


def test_transactions_are_isolated_for_read_committed(kafka: LocalKafka, topic_prefix: str) -> None:
    """Aborted records stay invisible to read_committed, committed ones appear, open ones wait."""
    topic = f"{topic_prefix}tx"
    _create_topic(kafka, topic)
    tp = TopicPartition(topic, 0)
    producer = Producer({**kafka.admin_config(), "transactional.id": f"{topic_prefix}txid",
                         "enable.idempotence": True})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted-1")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed-1")
    producer.commit_transaction(30)
    # Leave a transaction open: the last stable offset must stop before it.
    producer.begin_transaction()
    producer.produce(topic, value=b"pending-1")
    producer.flush(30)

    admin = _admin(kafka)
    hw = _end_offset(admin, tp, IsolationLevel.READ_UNCOMMITTED)
    lso = _end_offset(admin, tp, IsolationLevel.READ_COMMITTED)
    assert lso < hw, f"open transaction should hold the LSO back: lso={lso} hw={hw}"

    committed = Consumer({**kafka.admin_config(), "group.id": f"{topic_prefix}rc",
                          "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                          "enable.auto.commit": False})
    uncommitted = Consumer({**kafka.admin_config(), "group.id": f"{topic_prefix}ru",
                            "isolation.level": "read_uncommitted",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        committed.subscribe([topic])  # through the group coordinator: offsets topic works too
        uncommitted.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        assert _drain(committed, until={b"committed-1"}) == [b"committed-1"]
        assert _drain(uncommitted, until={b"aborted-1", b"committed-1", b"pending-1"}) == [
            b"aborted-1", b"committed-1", b"pending-1"]

        producer.commit_transaction(30)
        assert _drain(committed, until={b"pending-1"}) == [b"pending-1"]
        assert _end_offset(admin, tp, IsolationLevel.READ_COMMITTED) == \
            _end_offset(admin, tp, IsolationLevel.READ_UNCOMMITTED)
    finally:
        committed.close()
        uncommitted.close()


def _topic_configs(admin: AdminClient, name: str) -> dict[str, str]:
    """The topic's effective configs (retried briefly: metadata settles just after creation)."""
    res = ConfigResource(ResourceType.TOPIC, name)
    last: Exception | None = None
    for _ in range(50):
        try:
            entries = admin.describe_configs([res])[res].result(timeout=10)
            return {k: v.value for k, v in entries.items()}
        except Exception as exc:  # noqa: BLE001 - unknown topic for a moment after create
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"describe_configs {name}: {last}")


def test_topics_apply_creates_all_topics_and_is_idempotent(kafka: LocalKafka,
                                                           topic_prefix: str) -> None:
    """Every topic of the policy (pipeline/data/topics.toml) is created with its configs; a second run changes nothing."""
    specs = load_topic_policy(REPO / "pipeline" / "data" / "topics.toml")
    changes = apply_topics(kafka.admin_config(), specs, prefix=topic_prefix)
    assert len(changes) == len(specs)
    assert all(c.startswith(f"created {topic_prefix}") for c in changes)

    admin = _admin(kafka)
    md = admin.list_topics(timeout=10)
    for spec in specs:
        name = topic_prefix + spec.name
        assert name in md.topics, name
        assert len(md.topics[name].partitions) == spec.partitions
        assert len(md.topics[name].partitions[0].replicas) == 1  # clamped on one broker
        configs = _topic_configs(admin, name)
        for key, value in spec.configs:
            expected = "1" if key == "min.insync.replicas" else value
            assert configs[key] == expected, (name, key)
    assert _topic_configs(admin, f"{topic_prefix}privacy.suppressions")["cleanup.policy"] == "compact"
    assert _topic_configs(admin, f"{topic_prefix}cdr.aggregates")["retention.ms"] == "-1"

    assert apply_topics(kafka.admin_config(), specs, prefix=topic_prefix) == []


def test_topics_apply_grows_partitions_and_fixes_drifted_configs(kafka: LocalKafka,
                                                                 topic_prefix: str) -> None:
    """A topic with too few partitions or a drifted config is brought back to the policy."""
    spec = TopicSpec("cdr.dlq", 2, 1, (("cleanup.policy", "delete"), ("retention.ms", "1000000")))
    assert apply_topics(kafka.admin_config(), [spec], prefix=topic_prefix)
    wanted = TopicSpec("cdr.dlq", 4, 1, (("cleanup.policy", "delete"), ("retention.ms", "2000000")))
    changes = apply_topics(kafka.admin_config(), [wanted], prefix=topic_prefix)
    name = f"{topic_prefix}cdr.dlq"
    assert changes == [f"partitions {name}: 2 -> 4",
                       f"configs {name}: retention.ms=2000000 (was 1000000)"]
    admin = _admin(kafka)
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 4
    assert _topic_configs(admin, name)["retention.ms"] == "2000000"
    # Fewer partitions in the file is left alone (Kafka cannot shrink), not an error.
    fewer = TopicSpec("cdr.dlq", 1, 1, wanted.configs)
    assert apply_topics(kafka.admin_config(), [fewer], prefix=topic_prefix) == []


def test_cli_topics_apply(kafka: LocalKafka, topic_prefix: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """`cdrpipe topics apply` creates the topics, passes -X through, and is quiet when in sync."""
    argv = ["topics", "apply", "--bootstrap-servers", kafka.bootstrap, "--prefix", topic_prefix,
            "--file", str(REPO / "pipeline" / "data" / "topics.toml"), "-X", "client.id=cdrpipe-test"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    expected = len(load_topic_policy(REPO / "pipeline" / "data" / "topics.toml"))
    assert len(out) == expected and all(line.startswith("created ") for line in out)
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["topics", "apply", "--bootstrap-servers", kafka.bootstrap,
                     "-X", "nonsense"]) == cli.EXIT_USAGE


@pytest.mark.slow
def test_cli_broker_runs_in_foreground_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`cdrpipe broker` prints its bootstrap address once ready and exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "broker",
                             "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("127.0.0.1:"), proc.stderr.read() if proc.stderr else line
        md = AdminClient({"bootstrap.servers": line}).list_topics(timeout=10)
        assert NODE_ID in md.brokers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert (tmp_path / "data" / "broker.log").is_file()  # a given data dir is kept
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
