"""The Kafka worker given records of another format: it warns, counts the batches in a metric, keeps running.

Unlike the file runner (which stops: tests/unit/formats/test_format_mismatch.py), a worker serves a topic
that other producers write to; it must not stop, but an operator must see the mismatch at once.
What could fail: no warning, a warning that repeats a value, no metric, or the worker exiting.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline.broker import LocalKafka, free_port
from pipeline.cli import main
from pipeline.runners.kafka import Topics
from pipeline.topics import apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
NUMBER = "7911123456"


def test_worker_warns_and_counts_batches_of_another_format_and_keeps_running(
        kafka: LocalKafka, topic_prefix: str, tmp_path: Path, metric_samples) -> None:
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    apply_topics(kafka.admin_config(), load_topic_policy(), prefix=topic_prefix, replication_factor=1)
    topics = Topics().with_prefix(topic_prefix)
    producer = Producer(kafka.admin_config())
    for i in range(50):  # raw v1 JSON lines, while the worker is told they are Asterisk CSV rows
        producer.produce(topics.input, json.dumps({"record_id": f"r{i}", "cli": f"+44{NUMBER}",
                                                   "dialled": "+442079460321", "start": "2026-11-25T10:00:00Z",
                                                   "duration": i}).encode())
    assert producer.flush(30) == 0
    port = free_port()
    err_path = tmp_path / "worker.err"
    with open(tmp_path / "worker.out", "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--bootstrap-servers", kafka.bootstrap,
             "--keyring", str(tmp_path / "keys" / "worker-keyring.json"), "--topic-prefix", topic_prefix,
             "--worker-id", "format-1", "--format", "asterisk-csv", "--no-follow-suppressions",
             "--metrics-port", str(port), "--metrics-addr", "127.0.0.1"],
            stdout=out, stderr=err, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline, samples = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                samples = metric_samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                                         .read().decode())
            except OSError:
                samples = {}
            if samples.get("cdrpipe_records_in_total") == 50:
                break
            assert proc.poll() is None, err_path.read_text()[-3000:]
            time.sleep(0.5)
        assert samples.get("cdrpipe_records_in_total") == 50, err_path.read_text()[-3000:]
        assert samples['cdrpipe_format_mismatch_batches_total{looks_like="jsonl"}'] >= 1
        assert samples["cdrpipe_format_mismatch"] == 1
        assert proc.poll() is None  # still running
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    stderr = err_path.read_text()
    assert code == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if "could be read as --format asterisk-csv" in line]
    assert warnings and "use --format jsonl" in warnings[0] and "keeps running" in warnings[0]
    assert NUMBER not in stderr
