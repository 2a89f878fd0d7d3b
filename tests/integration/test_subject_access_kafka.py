"""Subject access on the real local Apache Kafka: the DPO submits an access request, the real Kafka
worker (`cdrpipe run`, exactly-once) routes the subject's calls, the vault sink stores them, an
officer queries under a warrant, the custodian runs `vault subject-access`, and the DPO's
`privacy export` reads cdr.analytics with read_committed.

What could fail here: the export missing a record or holding a stranger's, counts that differ
between analytics and the vault, a record from an aborted transaction in the export, a withheld
caller revealed, any trace of the warrant, and the request not listed (or not closed) in
`privacy status`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

import subject_scenario as sc
from pipeline.broker import LocalKafka
from pipeline.cli import EXIT_OK, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring
from pipeline.privacy.requests import SubjectTokeniser
from pipeline.topics import apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]


def produce(kafka: LocalKafka, topic: str, values: list[bytes]) -> None:
    producer = Producer({**kafka.admin_config(), "linger.ms": 5})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0


def produce_aborted(kafka: LocalKafka, topic: str, value: bytes) -> None:
    """A record in a transaction that is aborted: read_committed readers must never see it."""
    producer = Producer({**kafka.admin_config(), "transactional.id": f"sar-test-{os.getpid()}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, value)
    producer.flush(30)
    producer.abort_transaction(30)


def test_access_request_answered_from_kafka_with_exactly_the_subjects_records(kafka, topic_prefix, tmp_path, capsys):
    day = sc.base_day()
    lines, expect = sc.records(day)
    start, end = sc.window(day)
    apply_topics(kafka.admin_config(), load_topic_policy(), prefix=topic_prefix, replication_factor=1)
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    worker_keys, vault_keys = tmp_path / "keys" / "worker-keyring.json", tmp_path / "keys" / "vault-keyring.json"
    register = tmp_path / "cases.jsonl"

    # The DPO records the request (raw number only on privacy.requests; the register gets the receipt).
    capsys.readouterr()
    assert main(["privacy", "submit", "--bootstrap-servers", kafka.bootstrap, "--topic-prefix", topic_prefix,
                 "--type", "access", "--msisdn", "07700 900123", "--request-id", "sar-k-1",
                 "--register", str(register)]) == EXIT_OK
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["type"] == "access" and receipt["due"] and "7700" not in json.dumps(receipt)
    assert main(["privacy", "status", "--register", str(register), "--json"]) == EXIT_OK
    [row] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (row["request_id"], row["state"], row["due"]) == ("sar-k-1", "open", receipt["due"])

    # The pipeline: the real worker, exactly-once, then the vault sink.
    produce(kafka, topic_prefix + "cdr.raw", lines)
    worker = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--bootstrap-servers", kafka.bootstrap,
                             "--keyring", str(worker_keys), "--topic-prefix", topic_prefix, "--worker-id", "sar",
                             "--group", topic_prefix + "cdrpipe", "--exit-when-idle", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert worker.returncode == 0, worker.stderr[-3000:]
    keyring = load_worker_keyring(str(worker_keys))
    tokens = set(SubjectTokeniser(keyring).tokens("msisdn", sc.SUBJECT))
    refs = Tokeniser(keyring)
    ref = lambda rid: refs.token_one("record", rid)  # noqa: E731
    aborted_ref = ref("sa-aborted")
    fake = {"record_id": aborted_ref, "cli": sorted(tokens)[0], "cli_class": "e164", "dialled": None,
            "dialled_class": "withheld", "start": f"{day}T10:00:00Z", "duration": 1, "ip": None, "imsi": None,
            "imei": None, "cell_id": None, "call_type": "voice", "status": "answered"}
    produce_aborted(kafka, topic_prefix + "cdr.analytics", orjson.dumps(fake))
    db = tmp_path / "vault.db"
    assert main(["vault", "sink", "--bootstrap-servers", kafka.bootstrap, "--keyring", str(vault_keys),
                 "--db", str(db), "--topic", topic_prefix + "cdr.retention", "--group", topic_prefix + "vault",
                 "--idle-exit", "3", "--quiet"]) == EXIT_OK

    # An officer's warrant query (under a registered warrant), then the custodian's extract for the DPO.
    assert main(["vault", "warrant", "add", "--keyring", str(vault_keys), "--db", str(db), "--id", sc.WARRANT,
                 "--authority", "test", "--officer", sc.OFFICER, "--targets", "+44 7700 900123",
                 "--from", start, "--to", end, "--expires", "2099-12-31"]) == EXIT_OK
    assert main(["vault", "query", "--keyring", str(vault_keys), "--db", str(db), "--target", "+447700900123",
                 "--from", start, "--to", end, "--warrant", sc.WARRANT, "--officer", sc.OFFICER,
                 "--output", str(tmp_path / "delivery.jsonl")]) == EXIT_OK
    extract = tmp_path / "extract.json"
    assert main(["vault", "subject-access", "--keyring", str(vault_keys), "--db", str(db), "--request-id", "sar-k-1",
                 "--subject", "+44 7700 900123", "--from", start, "--to", end, "--custodian", "custodian-1",
                 "--output", str(extract)]) == EXIT_OK

    # The DPO's export, from Kafka, in both formats.
    out = tmp_path / "export.json"
    capsys.readouterr()
    assert main(["privacy", "export", "--request-id", "sar-k-1", "--subject", "07700 900123", "--keyring",
                 str(worker_keys), "--from", start, "--to", end, "--bootstrap-servers", kafka.bootstrap,
                 "--topic-prefix", topic_prefix, "--vault", str(extract), "--output", str(out),
                 "--register", str(register)]) == EXIT_OK
    doc = orjson.loads(out.read_bytes())
    sc.check_export(doc, expect, tokens, ref)
    assert doc["request_type"] == "access"
    assert doc["sources"]["analytics"]["from"] == f"kafka:{topic_prefix}cdr.analytics"
    assert aborted_ref not in out.read_text() and "sa-aborted" not in out.read_text()
    csv_out = tmp_path / "export.csv"
    assert main(["privacy", "export", "--request-id", "sar-k-1", "--subject", "07700 900123", "--keyring",
                 str(worker_keys), "--from", start, "--to", end, "--bootstrap-servers", kafka.bootstrap,
                 "--topic-prefix", topic_prefix, "--vault", str(extract), "--output", str(csv_out),
                 "--format", "csv"]) == EXIT_OK
    assert len(csv_out.read_text().splitlines()) == 1 + 2 * len(expect)

    # The request is answered: status no longer lists it as open, and nothing printed a subject.
    capsys.readouterr()
    assert main(["privacy", "status", "--register", str(register), "--json"]) == EXIT_OK
    printed = capsys.readouterr()
    assert printed.out == "" and "7700" not in printed.err
