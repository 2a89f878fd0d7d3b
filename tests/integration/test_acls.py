"""The ACL matrix holds on a real Apache Kafka with SASL/SCRAM and the StandardAuthorizer.

One broker for the module, started with a SASL_PLAINTEXT client listener, SCRAM-SHA-512 users,
``StandardAuthorizer``, ``super.users=User:admin`` and ``allow.everyone.if.no.acl.found=false``.
The ACLs come from ``cdrpipe acls apply``. Then every principal tries to read and to write every
policy topic: what the matrix allows must succeed, everything else must be refused by the broker
with TOPIC_AUTHORIZATION_FAILED (positive evidence, never a timeout read as a denial).

The controller listener stays PLAINTEXT (SCRAM credentials live in the metadata log, so KRaft
controllers cannot authenticate with them); the StandardAuthorizer also authorises controller
requests, so the PLAINTEXT controller principal ``User:ANONYMOUS`` must be a super user, or the
broker cannot even register. That listener is bound to loopback and never advertised to clients.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import (AdminClient, NewTopic, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

from pipeline import cli
from pipeline.acl import (MATRIX, RESTRICTED_READERS, WORKER_GROUP,
                          WORKER_TRANSACTIONAL_ID_PREFIX, Binding, Operation, Pattern,
                          ResourceKind, apply_acls, bindings, current_bindings, principal_for,
                          to_admin_binding, topic_access)
from pipeline.broker import LocalKafka
from pipeline.keys import ENV_WORKER_KEYRING_JSON, generate
from pipeline.synthetic import generate as synthetic_cdrs
from pipeline.topics import apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka

MECHANISM = "SCRAM-SHA-512"
TOPICS = [s.name for s in load_topic_policy()]
SEED = b"seed"
#: Short client timeouts: every answer here comes from a local broker in milliseconds.
FAST = {"socket.timeout.ms": "10000", "reconnect.backoff.max.ms": "500"}
PRODUCER_FAST = {"message.timeout.ms": "10000", "linger.ms": "0"}


def _secure_properties(admin_password: str) -> dict[str, str]:
    """Broker properties: SASL/SCRAM on the client listener, StandardAuthorizer, deny by default."""
    jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{admin_password}";')
    return {
        "listeners": "SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": "SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # ANONYMOUS: the broker's own requests on the PLAINTEXT controller listener (see above).
        "super.users": "User:admin;User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


@dataclass
class SecureKafka:
    """The module's broker and the SCRAM passwords of its users (never printed)."""

    broker: LocalKafka
    admin_password: str
    passwords: dict[str, str]

    def client(self, role: str, **extra: str) -> dict[str, str]:
        """librdkafka settings to connect as the matrix principal of ``role``."""
        user = principal_for(role).user
        return {"bootstrap.servers": self.broker.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": MECHANISM, "sasl.username": user,
                "sasl.password": self.passwords[user], **FAST, **extra}

    def admin(self) -> dict[str, str]:
        """librdkafka settings for the super user."""
        return self.broker.admin_config()


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[SecureKafka]:
    """A SASL/SCRAM + StandardAuthorizer broker with the policy's topics, users and ACLs."""
    admin_password = secrets.token_urlsafe(24)
    admin_conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": MECHANISM,
                  "sasl.username": "admin", "sasl.password": admin_password}
    broker = LocalKafka(
        port=0, extra_properties=_secure_properties(admin_password),
        format_args=["--add-scram", f"{MECHANISM}=[name=admin,password={admin_password}]"],
        client_config=admin_conf, heap="384m")
    broker.start()
    try:
        kafka = SecureKafka(broker, admin_password,
                            {p.user: secrets.token_urlsafe(18) for p in MATRIX})
        admin = AdminClient(kafka.admin())
        upserts = [UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), pw.encode())
            for user, pw in kafka.passwords.items()]
        for fut in admin.alter_user_scram_credentials(upserts, request_timeout=30).values():
            fut.result(timeout=30)
        apply_topics(kafka.admin(), load_topic_policy(), timeout=30)
        seeded: dict[str, KafkaError | None] = {}
        seed = Producer({**kafka.admin(), "linger.ms": "0"})
        for topic in TOPICS:  # keyed: privacy.suppressions is compacted and refuses null keys
            seed.produce(topic, SEED, key=b"k", partition=0,
                         on_delivery=lambda err, msg: seeded.__setitem__(msg.topic(), err))
        assert seed.flush(30) == 0
        assert seeded == dict.fromkeys(TOPICS), seeded
        # The ACLs exactly as an operator applies them: the CLI, credentials through -X.
        code = cli.main(["acls", "apply", "--bootstrap-servers", broker.bootstrap,
                         *[arg for k, v in admin_conf.items() for arg in ("-X", f"{k}={v}")]])
        assert code == 0
        _wait_for_acls(kafka, set(bindings(MATRIX)))
        yield kafka
    finally:
        broker.stop()


def _wait_for_acls(kafka: SecureKafka, expected: set[Binding]) -> None:
    """Block until the broker's authorizer holds exactly ``expected`` for the matrix principals.

    DescribeAcls is answered from the broker's own metadata image, so once it shows a change the
    authorizer enforces it: tests never race an ACL that the controller accepted moments ago.
    """
    admin = AdminClient(kafka.admin())
    deadline = time.monotonic() + 15
    while True:
        have = current_bindings(admin, {p.principal for p in MATRIX}, timeout=15)
        if have == expected:
            return
        assert time.monotonic() < deadline, f"ACLs differ: +{have - expected} -{expected - have}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- probes


def _error_code(exc: KafkaException) -> int | None:
    """The KafkaError code inside a KafkaException."""
    err = exc.args[0] if exc.args else None
    return err.code() if isinstance(err, KafkaError) else None


def _writable(conf: Mapping[str, str], topics: list[str]) -> dict[str, bool]:
    """Produce one record to each topic; True where delivered, False where the broker refused."""
    outcome: dict[str, KafkaError | None] = {}
    producer = Producer({**conf, **PRODUCER_FAST, "enable.idempotence": "false", "acks": "all"})
    for topic in topics:
        producer.produce(topic, b"probe", key=b"k", partition=0,
                         on_delivery=lambda err, msg: outcome.__setitem__(msg.topic(), err))
    assert producer.flush(20) == 0, "deliveries still pending"
    result = {}
    for topic in topics:
        err = outcome[topic]
        if err is not None and err.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise AssertionError(f"unexpected produce error on {topic}: {err}")
        result[topic] = err is None
    return result


def _readable(conf: Mapping[str, str], topics: list[str], group: str, *,
              commit: bool) -> dict[str, bool]:
    """Fetch partition 0 of each topic; True where the seed record arrives, False where refused.

    A topic the principal may not even describe is refused in metadata; one it may describe but
    not read (it only writes there) is refused by the fetch. With ``commit`` the offsets read are
    committed to ``group`` (what a consumer does), which needs Read on the group.
    """
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": "false",
                         "fetch.wait.max.ms": "100"})
    try:
        result: dict[str, bool] = {}
        assign = []
        for topic in topics:
            err = consumer.list_topics(topic, timeout=10).topics[topic].error
            if err is None:
                assign.append(TopicPartition(topic, 0, OFFSET_BEGINNING))
            elif err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                result[topic] = False
            else:
                raise AssertionError(f"metadata error on {topic}: {err}")
        consumer.assign(assign)
        deadline = time.monotonic() + 20
        while len(result) < len(topics) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.topic() in result:
                continue
            err = msg.error()
            if err is None:
                assert msg.value() == SEED
                result[msg.topic()] = True
            elif err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                result[msg.topic()] = False
            elif err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED and not commit:
                continue  # librdkafka looks the group up even when only assigning; not used here
            elif err.code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consumer error on {msg.topic()}: {err}")
        assert len(result) == len(topics), f"no answer for {sorted(set(topics) - set(result))}"
        if commit and any(result.values()):
            consumer.commit(offsets=[TopicPartition(t, 0, 1) for t, ok in result.items() if ok],
                            asynchronous=False)
        return result
    finally:
        consumer.close()


def _group_refused(conf: Mapping[str, str], group: str, topic: str) -> bool:
    """Join ``group`` subscribing to ``topic``; True when the broker refuses the group."""
    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": "false"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is None:
                continue
            if msg.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                return True
        return False
    finally:
        consumer.close()


def _own_group(role: str) -> str | None:
    """A group name the role may use (its literal group, or one under its prefix)."""
    for grant in principal_for(role).grants:
        if grant.kind is ResourceKind.GROUP:
            return grant.name + ("probe" if grant.pattern is Pattern.PREFIX else "")
    return None


# --------------------------------------------------------------------------- tests


def test_cluster_holds_exactly_the_matrix_and_a_second_apply_changes_nothing(
        secure_kafka: SecureKafka) -> None:
    """`acls apply` wrote every row of the matrix and nothing else; re-applying is a no-op."""
    admin = AdminClient(secure_kafka.admin())
    have = current_bindings(admin, {p.principal for p in MATRIX}, timeout=30)
    assert have == set(bindings(MATRIX))
    assert apply_acls(secure_kafka.admin(), MATRIX, timeout=30) == []


@pytest.mark.parametrize("role", [p.role for p in MATRIX])
def test_each_principal_reads_and_writes_exactly_what_the_matrix_allows(
        secure_kafka: SecureKafka, role: str) -> None:
    """Allowed reads and writes succeed; every other topic is refused by the broker."""
    access = topic_access(MATRIX, TOPICS)[role]
    expect_read = {t: Operation.READ in access.get(t, ()) for t in TOPICS}
    expect_write = {t: Operation.WRITE in access.get(t, ()) for t in TOPICS}
    conf = secure_kafka.client(role)
    group = _own_group(role)
    read = _readable(conf, TOPICS, group or f"no-group-{role}", commit=group is not None)
    wrote = _writable(conf, TOPICS)
    assert read == expect_read
    assert wrote == expect_write


def test_the_forbidden_reads_named_by_the_issue_are_refused(secure_kafka: SecureKafka) -> None:
    """Spelled out, independent of the matrix: raw, retention and DLQ stay with their one reader."""
    forbidden = {
        "analytics": ["cdr.raw", "cdr.retention", "cdr.dlq", "privacy.requests",
                      "privacy.suppressions", "privacy.erasures"],
        "operations": ["cdr.raw", "cdr.retention", "cdr.analytics"],
        "worker": ["cdr.retention", "cdr.dlq", "cdr.analytics", "cdr.aggregates",
                   "privacy.requests", "privacy.erasures"],
        "vault": ["cdr.raw", "cdr.dlq", "cdr.analytics"],
        "aggregates": ["cdr.raw", "cdr.retention", "cdr.dlq"],
        "privacy": ["cdr.raw", "cdr.retention", "cdr.dlq", "cdr.analytics"],
        "mediation": ["cdr.raw", "cdr.retention", "cdr.dlq"],
    }
    for role, topics in forbidden.items():
        read = _readable(secure_kafka.client(role), topics, f"no-group-{role}", commit=False)
        assert not any(read.values()), f"{role} could read {[t for t, ok in read.items() if ok]}"
    for topic, readers in RESTRICTED_READERS.items():
        assert topic in TOPICS and len(readers) == 1


def test_the_worker_may_write_nothing_outside_its_row(secure_kafka: SecureKafka) -> None:
    """The worker cannot write raw, aggregates or privacy topics, nor create topics."""
    wrote = _writable(secure_kafka.client("worker"),
                      ["cdr.raw", "cdr.aggregates", "privacy.requests", "privacy.suppressions",
                       "privacy.erasures"])
    assert wrote == dict.fromkeys(wrote, False)
    admin = AdminClient(secure_kafka.client("worker"))
    with pytest.raises(KafkaException) as info:
        admin.create_topics([NewTopic("cdr.raw.copy", 1, 1)])["cdr.raw.copy"].result(timeout=15)
    assert _error_code(info.value) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_worker_commits_a_transaction_with_its_offsets(secure_kafka: SecureKafka) -> None:
    """What `cdrpipe run` does: a transaction over the three outputs plus cdr.raw offsets."""
    conf = secure_kafka.client("worker")
    consumer = Consumer({**conf, "group.id": WORKER_GROUP, "enable.auto.commit": "false",
                         "isolation.level": "read_committed"})
    producer = Producer({**conf, "transactional.id": f"{WORKER_TRANSACTIONAL_ID_PREFIX}cdr.raw-t-0",
                         "transaction.timeout.ms": "10000"})
    try:
        producer.init_transactions(15)
        producer.begin_transaction()
        for topic in ("cdr.analytics", "cdr.retention", "cdr.dlq"):
            producer.produce(topic, b"txn", key=b"k", partition=1)
        # Commit the partition's end (as if consumed), so the worker run below skips nothing.
        _low, end = consumer.get_watermark_offsets(TopicPartition("cdr.raw", 1), timeout=15)
        producer.send_offsets_to_transaction([TopicPartition("cdr.raw", 1, end)],
                                             consumer.consumer_group_metadata(), 15)
        producer.commit_transaction(15)
        committed = consumer.committed([TopicPartition("cdr.raw", 1)], timeout=15)
        assert committed[0].offset == end
    finally:
        consumer.close()


@pytest.mark.parametrize("role,txn_id", [
    ("worker", "cdrpipe-privacy-0"),          # another app's ids: could fence its producers
    ("analytics", f"{WORKER_TRANSACTIONAL_ID_PREFIX}x"),
    ("privacy", f"{WORKER_TRANSACTIONAL_ID_PREFIX}x"),
])
def test_transactional_ids_outside_a_principals_prefix_are_refused(
        secure_kafka: SecureKafka, role: str, txn_id: str) -> None:
    """A principal cannot take another service's transactional ids."""
    producer = Producer({**secure_kafka.client(role), "transactional.id": txn_id})
    with pytest.raises(KafkaException) as info:
        producer.init_transactions(15)
    assert _error_code(info.value) == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


@pytest.mark.parametrize("role,group,topic", [
    ("analytics", WORKER_GROUP, "cdr.analytics"),       # cannot disturb the worker's group
    ("analytics", "cdrpipe-vault", "cdr.analytics"),
    ("worker", "cdrpipe-vault", "cdr.raw"),
    ("operations", "analytics-x", "cdr.dlq"),
    ("vault", WORKER_GROUP, "cdr.retention"),
])
def test_foreign_consumer_groups_are_refused(secure_kafka: SecureKafka, role: str, group: str,
                                             topic: str) -> None:
    """Groups are per service: joining another service's group is refused."""
    assert _group_refused(secure_kafka.client(role), group, topic)


def test_mediation_produces_idempotently_with_write_alone(secure_kafka: SecureKafka) -> None:
    """An idempotent producer needs no cluster-wide IdempotentWrite: Write on its topic suffices."""
    outcome: list[KafkaError | None] = []
    producer = Producer({**secure_kafka.client("mediation"), **PRODUCER_FAST,
                         "enable.idempotence": "true"})
    producer.produce("cdr.raw", b"cdr", on_delivery=lambda err, _msg: outcome.append(err))
    assert producer.flush(20) == 0
    assert outcome == [None]


def test_faust_apps_own_their_internal_topics_only(secure_kafka: SecureKafka) -> None:
    """The privacy app creates and uses its changelog; other principals cannot touch it."""
    name = "cdrpipe-privacy-suppressions-changelog"
    admin = AdminClient(secure_kafka.client("privacy"))
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=15)
    deadline = time.monotonic() + 15
    while name not in AdminClient(secure_kafka.admin()).list_topics(timeout=10).topics:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    seed = Producer({**secure_kafka.client("privacy"), **PRODUCER_FAST})
    seed.produce(name, SEED, key=b"k", partition=0)
    assert seed.flush(20) == 0
    assert _readable(secure_kafka.client("privacy"), [name], "cdrpipe-privacy", commit=True) \
        == {name: True}
    for role in ("analytics", "aggregates", "worker"):
        assert _readable(secure_kafka.client(role), [name], f"no-group-{role}",
                         commit=False) == {name: False}
        other = AdminClient(secure_kafka.client(role))
        with pytest.raises(KafkaException) as info:
            other.create_topics([NewTopic("cdrpipe-privacy-x", 1, 1)])["cdrpipe-privacy-x"] \
                .result(timeout=15)
        assert _error_code(info.value) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_prune_removes_a_grant_the_matrix_does_not_name(secure_kafka: SecureKafka) -> None:
    """A hand-added analytics read on cdr.raw is reported, then removed with prune; access follows."""
    admin = AdminClient(secure_kafka.admin())
    rogue = Binding(principal_for("analytics").principal, ResourceKind.TOPIC, "cdr.raw",
                    Pattern.LITERAL, Operation.READ)
    acl = to_admin_binding(rogue)
    admin.create_acls([acl], request_timeout=30)[acl].result(timeout=30)
    matrix_rows = set(bindings(MATRIX))
    try:
        _wait_for_acls(secure_kafka, matrix_rows | {rogue})
        analytics = secure_kafka.client("analytics")
        assert _readable(analytics, ["cdr.raw"], "analytics-p", commit=False) == {"cdr.raw": True}
        report = apply_acls(secure_kafka.admin(), MATRIX, timeout=30)
        assert report == [f"extra {rogue.describe()} (not in the matrix; kept, --prune removes it)"]
        assert apply_acls(secure_kafka.admin(), MATRIX, prune=True, timeout=30) \
            == [f"removed {rogue.describe()}"]
        _wait_for_acls(secure_kafka, matrix_rows)
        assert _readable(analytics, ["cdr.raw"], "analytics-p", commit=False) == {"cdr.raw": False}
    finally:
        apply_acls(secure_kafka.admin(), MATRIX, prune=True, timeout=30)
        _wait_for_acls(secure_kafka, matrix_rows)


def test_no_password_reaches_the_broker_log(secure_kafka: SecureKafka) -> None:
    """The broker logs its config at start; SASL secrets must show as hidden, never in clear."""
    text = secure_kafka.broker.log_path.read_text(errors="replace")
    assert "StandardAuthorizer" in text  # the log is the real one, with the config dump
    for secret in (secure_kafka.admin_password, *secure_kafka.passwords.values()):
        assert secret not in text


def _count_schema(conf: Mapping[str, str], topic: str, schema: bytes) -> int:
    """Records of ``topic`` (all partitions, committed only) whose ``schema`` header is ``schema``."""
    consumer = Consumer({**conf, "group.id": "unused", "enable.auto.commit": "false",
                         "enable.partition.eof": "true", "isolation.level": "read_committed"})
    try:
        n_parts = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(n_parts)])
        at_end: set[int] = set()
        count = 0
        deadline = time.monotonic() + 30
        while len(at_end) < n_parts:
            assert time.monotonic() < deadline, f"{topic}: partitions {at_end} of {n_parts} read"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif err.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:  # group unused here
                    raise AssertionError(f"{topic}: {err}")
                continue
            if (b"schema", schema) in [(k.encode(), v) for k, v in (msg.headers() or [])]:
                count += 1
        return count
    finally:
        consumer.close()


def test_the_real_worker_runs_under_its_acls_and_each_reader_gets_its_output(
        secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """mediation -> `cdrpipe run` -> analytics, vault and operations, each as its own principal.

    The worker is configured exactly as deploy/k8s/base/worker.yaml configures it: SASL settings in
    CDRPIPE_X_* variables, the keyring in CDRPIPE_WORKER_KEYRING_JSON, the worker id from the pod.
    """
    lines = [line for chunk in synthetic_cdrs(300, seed=7) for line in chunk.splitlines() if line]
    delivered: list[KafkaError | None] = []
    mediation = Producer({**secure_kafka.client("mediation"), **PRODUCER_FAST,
                          "enable.idempotence": "true"})
    for line in lines:
        mediation.produce("cdr.raw", line, on_delivery=lambda err, _m: delivered.append(err))
    assert mediation.flush(30) == 0 and delivered == [None] * len(lines)

    worker_keyring, _vault_keyring = generate()
    conf = secure_kafka.client("worker")
    env = {**os.environ,
           "CDRPIPE_BOOTSTRAP_SERVERS": secure_kafka.broker.bootstrap,
           "CDRPIPE_X_SECURITY_PROTOCOL": conf["security.protocol"],
           "CDRPIPE_X_SASL_MECHANISMS": conf["sasl.mechanisms"],
           "CDRPIPE_X_SASL_USERNAME": conf["sasl.username"],
           "CDRPIPE_X_SASL_PASSWORD": conf["sasl.password"],
           ENV_WORKER_KEYRING_JSON: json.dumps(worker_keyring.to_json()),
           "CDRPIPE_WORKER_ID": "cdrpipe-worker-0"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--exit-when-idle", "3",
                           "--progress-seconds", "60"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    for secret in (conf["sasl.password"], *(k.secret.hex() for k in worker_keyring.token_keys)):
        assert secret not in output
    assert proc.returncode == 0, output[-3000:]
    # DescribeConfigs on its topics: the worker sizes messages from their real limits.
    assert "could not read topic max.message.bytes" not in output
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["in"] >= len(lines)
    assert summary["in"] == summary["retention"] \
        == summary["analytics"] + summary["dlq"] + summary["suppressed"]
    assert summary["analytics"] > 0 and summary["dlq"] > 0

    assert _count_schema(secure_kafka.client("analytics"), "cdr.analytics",
                         b"cdr.analytics/1") == summary["analytics"]
    assert _count_schema(secure_kafka.client("operations"), "cdr.dlq", b"cdr.dlq/2") \
        == summary["dlq"]
    assert _count_schema(secure_kafka.client("vault"), "cdr.retention", b"cdr.retention/2") >= 1


def test_the_vault_appends_to_its_audit_witness_and_can_neither_delete_nor_alter_it(
        secure_kafka: SecureKafka) -> None:
    """Issue 14: `--witness kafka:vault.audit`. The vault's principal writes entries; only the auditor
    reads them back; the vault cannot delete the topic, delete its records or change its configs, so
    it cannot rewrite the witness of its own audit log."""
    from confluent_kafka import TopicPartition as TP
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    from pipeline.vault.witness import KafkaWitness, WitnessError
    entries = [json.dumps({"seq": n, "action": "warrant_list", "hash": f"{n:064x}"}) for n in (1, 2)]
    vault = KafkaWitness("vault.audit", secure_kafka.client("vault"))
    for text in entries:
        vault.append(text)  # idempotent, acks=all: Write alone is enough
    assert _writable(secure_kafka.client("auditor"), ["vault.audit"]) == {"vault.audit": False}
    assert _readable(secure_kafka.client("vault"), ["vault.audit"], "no-group-vault", commit=False) \
        == {"vault.audit": False}
    with pytest.raises(WitnessError, match="line 1 is not an audit entry"):
        KafkaWitness("vault.audit", secure_kafka.client("auditor")).read()  # the module's seed record is not one
    consumer = Consumer({**secure_kafka.client("auditor"), "group.id": "unused", "enable.auto.commit": "false"})
    try:
        low, high = consumer.get_watermark_offsets(TP("vault.audit", 0), timeout=15)
        consumer.assign([TP("vault.audit", 0, high - 2)])
        got: list[str] = []
        for _ in range(10):  # no group is joined: a coordinator error event may come first
            got += [m.value().decode() for m in consumer.consume(2, timeout=5) if m.error() is None]
            if len(got) >= 2:
                break
    finally:
        consumer.close()
    assert got == entries
    admin = AdminClient(secure_kafka.client("vault"))
    refused = []
    with pytest.raises(KafkaException) as info:
        admin.delete_topics(["vault.audit"], operation_timeout=15)["vault.audit"].result(timeout=20)
    refused.append(_error_code(info.value))
    with pytest.raises(KafkaException) as info:
        admin.delete_records([TP("vault.audit", 0, high)])[TP("vault.audit", 0, high)].result(timeout=20)
    refused.append(_error_code(info.value))
    change = ConfigResource(ResourceType.TOPIC, "vault.audit", incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as info:
        list(admin.incremental_alter_configs([change]).values())[0].result(timeout=20)
    refused.append(_error_code(info.value))
    assert refused == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
