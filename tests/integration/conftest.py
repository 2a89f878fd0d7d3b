"""Integration fixtures: one real Apache Kafka broker (KRaft) per test session.

``kafka``: a started ``pipeline.broker.LocalKafka`` (``kafka.bootstrap`` is "127.0.0.1:PORT",
``kafka.admin_config()`` a librdkafka config for it). It is never skipped: if Java, Maven or the
broker fails, every test that uses it fails with the reason and the broker log's tail.
``topic_prefix``: a unique prefix per test (``t<hex>.``) so tests share the broker, not topics.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pipeline.broker import LocalKafka


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Start one local broker for the whole session; its data and log stay in pytest's tmp dir."""
    broker = LocalKafka(port=0, data_dir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic-name prefix for one test, e.g. ``t1a2b3c4d5e.``."""
    return f"t{uuid.uuid4().hex[:10]}."
