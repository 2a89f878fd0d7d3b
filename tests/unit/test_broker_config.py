"""The local broker's static parts: pinned version, packaged pom copy, rendered server.properties."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from pipeline import broker
from pipeline.broker import LocalKafka

REPO = Path(__file__).resolve().parents[2]


def test_pom_version_matches_module() -> None:
    """deploy/kafka/pom.xml pins the Kafka version the module reports and caches under."""
    pom = (REPO / "deploy" / "kafka" / "pom.xml").read_text()
    assert re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1) == broker.KAFKA_VERSION


def test_packaged_pom_is_identical() -> None:
    """One source of truth: pipeline/data/kafka/pom.xml is a byte copy of deploy/kafka/pom.xml."""
    assert (REPO / "pipeline" / "data" / "kafka" / "pom.xml").read_bytes() == \
        (REPO / "deploy" / "kafka" / "pom.xml").read_bytes(), \
        "run: cp deploy/kafka/pom.xml pipeline/data/kafka/pom.xml"


def test_server_properties_single_node(tmp_path: Path) -> None:
    """Single-node settings are present and extra properties override them, with placeholders."""
    k = LocalKafka(data_dir=tmp_path, extra_properties={
        "listeners": "SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer"})
    k.data_dir, k.port, k.controller_port = tmp_path, 1111, 2222
    props = k._properties()
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    path = k._write_config()
    assert path.stat().st_mode & 0o077 == 0  # may hold SASL secrets
    assert "node.id=1\n" in path.read_text()


def test_cluster_id_shape() -> None:
    """Cluster ids look like Kafka's: 22 URL-safe base64 characters, never a leading '-'."""
    for _ in range(200):
        cid = broker._random_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) and not cid.startswith("-")


def test_busy_port_is_refused_before_starting(tmp_path: Path) -> None:
    """A port someone already listens on is a clear error, not a probe of the wrong server."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with pytest.raises(broker.BrokerError, match=f"port {port} .* already in use"):
            LocalKafka(port=port, data_dir=tmp_path / "d").start()


def test_jvm_heap_is_fixed_at_kafkas_default(tmp_path: Path) -> None:
    """A fixed heap (min = max), 1g unless told otherwise, as Kafka's own start script."""
    default, small = LocalKafka(), LocalKafka(heap="384m")
    for k in (default, small):
        k.data_dir = tmp_path  # what start() sets
    assert broker.DEFAULT_HEAP == "1g"
    assert {"-Xmx1g", "-Xms1g"} <= set(default._jvm_args("java", "cp", default.heap))
    assert {"-Xmx384m", "-Xms384m"} <= set(small._jvm_args("java", "cp", small.heap))
