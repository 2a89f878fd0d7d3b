"""`cdrpipe produce` against the real local broker: every record of a file arrives once, as it was, unkeyed."""
from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.cli import main
from pipeline.demo import read_committed
from pipeline.synthetic import write_sample

pytestmark = pytest.mark.kafka


def _topic(kafka, name: str, partitions: int = 3) -> str:
    admin = AdminClient(kafka.admin_config())
    for fut in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        fut.result(timeout=30)
    return name


def test_produce_sends_every_line_once_unkeyed_in_file_order_per_partition(kafka, topic_prefix, tmp_path, capsys):
    topic = _topic(kafka, topic_prefix + "cdr.raw")
    sample = tmp_path / "sample.jsonl"
    write_sample(sample, 3000, seed=5)  # ~0.5% malformed lines: sent as they are, the worker judges them
    data = sample.read_bytes()
    sample.write_bytes(data.rstrip(b"\n") + b"\n\n" + b'{"cli":"+447911123456"')  # an empty line, no final newline
    lines = sample.read_bytes().split(b"\n")
    assert len(lines) == 3002
    code = main(["produce", "--bootstrap-servers", kafka.bootstrap, "--input", str(sample),
                 "--topic-prefix", topic_prefix])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1]) == {"produced": 3002, "failed": 0, "topic": topic}
    # Progress and the count line: counts, never a number from the data (the topic's random hex
    # prefix may hold a run of digits by chance, so it is left out of the search).
    assert not re.search(r"\d{7}", out.err.replace(topic, "<topic>"))
    messages = list(read_committed(kafka.admin_config(), topic))
    assert len(messages) == 3002
    assert sorted(m.value() or b"" for m in messages) == sorted(lines)
    assert all(m.key() is None for m in messages)
    assert len({m.partition() for m in messages}) >= 1
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        by_partition[m.partition()].append(m.value() or b"")
    position = {}
    for i, line in enumerate(lines):
        position.setdefault(line, i)
    for values in by_partition.values():  # each partition holds its records in file order
        order = [position[v] for v in values if lines.count(v) == 1]
        assert order == sorted(order)


def test_produce_sends_each_freeswitch_call_file_as_one_message(kafka, topic_prefix, tmp_path, capsys):
    topic = _topic(kafka, topic_prefix + "fs.raw", partitions=1)
    d = tmp_path / "json_cdr"
    d.mkdir()
    docs = {}
    for i in range(3):
        doc = {"variables": {"uuid": f"c0ffee00-0000-4000-8000-00000000000{i}", "sip_from_user": "1001",
                             "billsec": str(i)}, "callflow": [{"caller_profile": {"destination_number": "1002"}}]}
        docs[f"{i}.cdr.json"] = json.dumps(doc, indent="\t").encode()
        (d / f"{i}.cdr.json").write_bytes(docs[f"{i}.cdr.json"] + b"\n")
    code = main(["produce", "--bootstrap-servers", kafka.bootstrap, "--input", str(d), "--format", "freeswitch-json",
                 "--topic", topic, "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"produced": 3, "failed": 0, "topic": topic}
    assert [m.value() for m in read_committed(kafka.admin_config(), topic)] == [docs[k] for k in sorted(docs)]


def test_produce_to_a_missing_topic_says_how_to_create_it(kafka, topic_prefix, tmp_path, capsys):
    sample = tmp_path / "s.jsonl"
    sample.write_bytes(b"{}\n")
    code = main(["produce", "--bootstrap-servers", kafka.bootstrap, "--input", str(sample),
                 "--topic", topic_prefix + "nowhere", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "topics apply" in err and "Traceback" not in err
