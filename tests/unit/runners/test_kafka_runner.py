"""The Kafka worker's pure parts: settings, ids, client configs and message sizing (no broker needed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline import cli
from pipeline.cli import UsageError
from pipeline.core.router import CoreConfig, Router, Source
from pipeline.keys import generate, write_private_json
from pipeline.commands.run import settings_from_args
from pipeline.kafka_config import env_client_options
from pipeline.runners.kafka import (KAFKA_DEFAULT_MAX_MESSAGE, Topics, WorkerSettings,
                                    claim_worker_id, consumer_config, producer_config,
                                    required_message_bytes, split_client_overrides,
                                    transactional_id, validate_worker_id)

REPO = Path(__file__).resolve().parents[3]


def _noop(*_args: object) -> None:
    return None


def test_x_options_split_by_client_prefix() -> None:
    common, consumer, producer = split_client_overrides(
        {"security.protocol": "SASL_SSL", "consumer.fetch.max.bytes": "1000", "producer.linger.ms": "5"})
    assert common == {"security.protocol": "SASL_SSL"}
    assert consumer == {"fetch.max.bytes": "1000"}
    assert producer == {"linger.ms": "5"}


@pytest.mark.parametrize("key", ["enable.auto.commit", "consumer.isolation.level", "transactional.id",
                                 "producer.enable.idempotence", "group.id", "bootstrap.servers"])
def test_settings_the_exactly_once_guarantee_rests_on_cannot_be_overridden(key: str) -> None:
    with pytest.raises(UsageError, match="cannot be set here"):
        split_client_overrides({key: "x"})


def test_env_vars_become_librdkafka_settings() -> None:
    env = {"CDRPIPE_X_SASL_PASSWORD": "s3cret", "CDRPIPE_X_SECURITY_PROTOCOL": "SASL_SSL", "CDRPIPE_GROUP": "g",
           "CDRPIPE_X_": "ignored"}
    assert env_client_options(env) == {"sasl.password": "s3cret", "security.protocol": "SASL_SSL"}


def test_client_configs_pin_exactly_once_and_let_other_settings_through() -> None:
    s = WorkerSettings(bootstrap="b:9092", worker_id="w-1", group="g", topics=Topics().with_prefix("p."),
                       client={"linger.ms": "50", "session.timeout.ms": "7000"})
    c = consumer_config(s, _noop)
    assert c["isolation.level"] == "read_committed" and c["enable.auto.commit"] is False
    assert c["partition.assignment.strategy"] == "cooperative-sticky"
    assert c["group.instance.id"] == "w-1" and c["session.timeout.ms"] == "7000"
    p = producer_config(s, 2_000_000, _noop, _noop)
    assert p["transactional.id"] == transactional_id("g", "p.cdr.raw", "w-1") == "cdrpipe-g-p.cdr.raw-w-1"
    assert p["linger.ms"] == "50" and p["message.max.bytes"] == 2_000_000
    assert p["delivery.report.only.error"] is True


def test_worker_ids_must_be_usable_as_kafka_ids() -> None:
    assert validate_worker_id("pod-3.zone_a") == "pod-3.zone_a"
    for bad in ("", "has space", "x" * 201, "a/b"):
        with pytest.raises(UsageError):
            validate_worker_id(bad)


def test_default_worker_ids_are_unique_while_alive_and_reused_after(tmp_path: Path) -> None:
    """A slot is held by a live worker; when it dies its slot (and so its transactional.id) is reused."""
    first, fh1 = claim_worker_id("g", "cdr.raw", tmp_path, hostname="host")
    second, fh2 = claim_worker_id("g", "cdr.raw", tmp_path, hostname="host")
    other_group, fh3 = claim_worker_id("other", "cdr.raw", tmp_path, hostname="host")
    assert (first, second, other_group) == ("host-0", "host-1", "host-0")
    fh1.close()  # the worker holding slot 0 died
    again, fh4 = claim_worker_id("g", "cdr.raw", tmp_path, hostname="host")
    assert again == "host-0"
    for fh in (fh2, fh3, fh4):
        fh.close()


def test_a_worker_in_another_process_holds_its_slot(tmp_path: Path) -> None:
    code = ("import sys, time; from pipeline.runners.kafka import claim_worker_id; "
            f"wid, fh = claim_worker_id('g', 'cdr.raw', {str(tmp_path)!r}, hostname='h'); "
            "print(wid, flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "h-0"
        wid, fh = claim_worker_id("g", "cdr.raw", tmp_path, hostname="h")
        assert wid == "h-1"
        fh.close()
    finally:
        holder.kill()
        holder.wait()
    wid, fh = claim_worker_id("g", "cdr.raw", tmp_path, hostname="h")
    assert wid == "h-0", "a killed worker's slot must be free again"
    fh.close()


def _route(records: list[bytes]):
    keyring, _vault = generate()
    routed = Router(keyring, CoreConfig()).route(records, Source("cdr.raw", 0, list(range(len(records)))),
                                                 want_keys=True)
    return routed.retention, routed.dlq


def test_the_core_hands_over_ready_messages_keyed_and_labelled() -> None:
    """Segments are keyed by their segment id, DLQ records by their record ref (the token of the record id)
    with the reason as a header, analytics by the caller's token: what the worker produces, without parsing a
    message again."""
    keyring, _vault = generate()
    lines = [b'{"record_id":"a","cli":"+447700900123","dialled":"999","start":"2026-11-25T10:00:00Z","duration":1}',
             b"not json", b'{"record_id":"c","cli":"anonymous","dialled":"999","start":1795600000,"duration":1}']
    router = Router(keyring, CoreConfig())
    routed = router.route(lines, Source("cdr.raw", 0, [0, 1, 2]), want_keys=True)
    ref = lambda rid: router.tokeniser.token_one("record", rid)  # noqa: E731
    (value, key, headers), = list(routed.retention.messages())
    assert key == orjson.loads(value)["segment_id"] and headers == [("schema", b"cdr.retention/2")]
    assert orjson.loads(value)["record_refs"] == [ref("a"), ref("cdr.raw:0:1"), ref("c")]
    (value, key, headers), = list(routed.dlq.messages())
    doc = orjson.loads(value)
    assert key == doc["record_ref"] == ref("cdr.raw:0:1")
    assert headers == [("schema", b"cdr.dlq/2"), ("reason", b"invalid_json")]
    messages = list(routed.analytics.messages())
    assert [orjson.loads(v)["record_id"] for v, _k, _h in messages] == [ref("a"), ref("c")]
    assert messages[0][1] == orjson.loads(messages[0][0])["cli"].encode()
    assert messages[1][1] is None  # a withheld caller has no token: no key
    assert all(h == [("schema", b"cdr.analytics/1")] for _v, _k, h in messages)


def test_the_largest_record_the_input_accepts_fits_the_computed_output_limit() -> None:
    """Sealing base64-expands a record: retention and DLQ messages must fit required_message_bytes."""
    big = b'{"record_id":"big","note":"' + b"z" * (KAFKA_DEFAULT_MAX_MESSAGE - 200) + b'"}'
    retention, dlq = _route([big])
    limit = required_message_bytes(KAFKA_DEFAULT_MAX_MESSAGE)
    assert len(dlq) == 1 and len(retention) == 1
    assert max(len(dlq[0]), len(retention[0])) <= limit
    assert max(len(dlq[0]), len(retention[0])) > KAFKA_DEFAULT_MAX_MESSAGE, "Kafka's default limit is too small"


def _args(argv: list[str]) -> object:
    return cli.build_parser().parse_args(["run", *argv])


def test_run_flags_take_their_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CDRPIPE_BOOTSTRAP_SERVERS": "k:9092", "CDRPIPE_GROUP": "g2", "CDRPIPE_TOPIC_PREFIX": "t.",
                        "CDRPIPE_WORKER_ID": "w7", "CDRPIPE_BATCH_SIZE": "500", "CDRPIPE_X_LINGER_MS": "9"}.items():
        monkeypatch.setenv(name, value)
    settings, lock = settings_from_args(_args(["-X", "producer.batch.size=100"]))
    assert lock is None
    assert (settings.bootstrap, settings.group, settings.worker_id, settings.batch_size) == ("k:9092", "g2", "w7", 500)
    assert settings.topics == Topics("t.cdr.raw", "t.cdr.analytics", "t.cdr.retention", "t.cdr.dlq")
    assert settings.client == {"linger.ms": "9"} and settings.producer_client == {"batch.size": "100"}
    assert settings.transactional_id == "cdrpipe-g2-t.cdr.raw-w7"


def test_run_without_bootstrap_servers_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDRPIPE_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(UsageError, match="--bootstrap-servers"):
        settings_from_args(_args([]))


def test_an_unknown_librdkafka_setting_exits_2_before_connecting(tmp_path: Path) -> None:
    worker, _vault = generate()
    write_private_json(tmp_path / "worker-keyring.json", worker.to_json())
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--bootstrap-servers", "127.0.0.1:1",
                           "--keyring", str(tmp_path / "worker-keyring.json"), "--worker-id", "w",
                           "-X", "no.such.setting=1"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "no.such.setting" in proc.stderr


def test_output_values_split_once_and_keep_a_message_holding_a_newline_whole() -> None:
    from pipeline.core.router import Output
    plain = Output(b"a\nbb\n\nccc\n", [2, 5, 6, 10], None, [])
    assert plain.values() == [b"a", b"bb", b"", b"ccc"] == list(plain)
    inner = Output(b"a\nb\nc\n", [4, 6], None, [])  # the first message is "a\nb"
    assert inner.values() == [b"a\nb", b"c"] == list(inner)
    assert Output(b"", [], None, []).values() == []


class _FullQueueProducer:
    """Stands in for the producer: refuses every third message once (a full local queue), records the rest."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self.calls = 0
        self.polls = 0

    def produce(self, topic, value=None, key=None, partition=-1, callback=None, on_delivery=None, timestamp=0,
                headers=None):
        self.calls += 1
        if self.calls % 3 == 0:
            raise BufferError("Local: Queue full")
        assert partition == -1 and callback is None and on_delivery is None and timestamp == 0
        self.sent.append((topic, value, key, headers))

    def poll(self, _timeout: float) -> int:
        self.polls += 1
        return 0


@pytest.mark.parametrize("chunk", [1, 4, 2048])
def test_produce_queues_every_message_once_in_order_through_a_full_queue(chunk: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core.router import Output
    from pipeline.runners import kafka

    monkeypatch.setattr(kafka, "_PRODUCE_CHUNK", chunk)
    values = [b"v%d" % i for i in range(23)]
    keys = [None if i % 4 == 0 else b"k%d" % i for i in range(23)]
    per_message = [[("schema", b"s"), ("reason", b"r%d" % i)] for i in range(23)]
    data = b"".join(v + b"\n" for v in values)
    ends = [data.index(b"\n", data.index(v)) + 1 for v in values]
    loop = kafka.TransactionLoop.__new__(kafka.TransactionLoop)
    loop._producer = producer = _FullQueueProducer()  # type: ignore[assignment]
    loop._produce("t", Output(data, ends, keys, per_message))
    assert producer.sent == [("t", v, k, h) for v, k, h in zip(values, keys, per_message)]
    shared = [("schema", b"x")]
    producer.sent.clear()
    loop._produce("u", Output(data, ends, None, shared))
    assert producer.sent == [("u", v, None, shared) for v in values]
    assert producer.polls > 0


def _aborted_in_flight(first: dict[int, int]):
    from concurrent.futures import Future

    from pipeline.runners import kafka
    batch = kafka._Batch(routed=None, records=10, commit=[], first=first, started=0.0)  # type: ignore[arg-type]
    batch.aborted = "send_offsets_to_transaction:ILLEGAL_GENERATION"
    future: Future = Future()
    future.set_result(batch)
    return future


@pytest.mark.parametrize("kind", ["lost", "revoke"])
def test_a_partition_that_left_is_never_rewound_even_when_it_comes_straight_back(kind: str) -> None:
    # The batch in flight aborts inside on_lost/on_revoke (a paused worker's stale generation). Its
    # rewind must not apply to the partitions that left: if they are assigned back, the worker
    # starts them from the committed offset, past what another worker committed meanwhile
    # (seeking back there routed those records a second time).
    from confluent_kafka import TopicPartition

    from pipeline.runners import kafka
    settings = WorkerSettings(bootstrap="localhost:1", worker_id="w-0")
    loop = kafka.TransactionLoop(None, settings)  # type: ignore[arg-type]
    topic = settings.topics.input
    loop._assigned = {0, 1, 2}
    loop._in_flight = _aborted_in_flight({0: 100, 1: 200, 2: 300})
    callback = loop._on_lost if kind == "lost" else loop._on_revoke
    callback(None, [TopicPartition(topic, 0), TopicPartition(topic, 1)])  # type: ignore[arg-type]
    assert loop.totals.aborts == 1
    assert loop._rewind == {2: 300}  # the partition it kept is still read again from the batch's start
    loop._on_assign(None, [TopicPartition(topic, 0), TopicPartition(topic, 1)])  # type: ignore[arg-type]
    assert loop._rewind == {2: 300} and loop._assigned == {0, 1, 2}
