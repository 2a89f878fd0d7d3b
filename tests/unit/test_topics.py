"""The topic policy loader: the shipped file is complete and sane; bad files fail with a clear reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import topics
from pipeline.topics import TopicPolicyError, TopicSpec, load_topic_policy, parse_x_options

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "topics.toml"
PACKAGED = REPO / "pipeline" / "data" / "topics.toml"
DAY_MS = 86_400_000


def _write(tmp_path: Path, text: str) -> Path:
    """Write a policy file for one test."""
    path = tmp_path / "topics.toml"
    path.write_text(text)
    return path


def test_packaged_copy_is_identical_to_deploy_file() -> None:
    """One source of truth: pipeline/data/topics.toml is a byte copy of deploy/topics.toml."""
    assert PACKAGED.read_bytes() == DEPLOY.read_bytes(), \
        "run: cp deploy/topics.toml pipeline/data/topics.toml"


def test_shipped_policy_matches_design() -> None:
    """Every topic of DESIGN.md is there with its retention, cleanup and production replication."""
    specs = {s.name: s for s in load_topic_policy(DEPLOY)}
    assert set(specs) == {"cdr.raw", "cdr.analytics", "cdr.aggregates", "cdr.retention",
                          "cdr.dlq", "privacy.requests", "privacy.suppressions",
                          "privacy.erasures", "vault.audit"}
    retention = {name: s.config.get("retention.ms") for name, s in specs.items()}
    assert retention["cdr.raw"] == str(3 * DAY_MS)
    assert retention["cdr.retention"] == str(7 * DAY_MS)
    assert retention["cdr.dlq"] == str(14 * DAY_MS)
    assert retention["cdr.aggregates"] == "-1"
    assert retention["privacy.requests"] == str(30 * DAY_MS)
    assert 26 * 30 * DAY_MS <= int(retention["cdr.analytics"]) <= 26 * 31 * DAY_MS
    assert retention["privacy.erasures"] == retention["cdr.analytics"]
    assert retention["vault.audit"] == "-1" and specs["vault.audit"].partitions == 1  # the audit witness, in order
    assert specs["privacy.suppressions"].config["cleanup.policy"] == "compact"
    for spec in specs.values():
        assert spec.replication_factor == 3
        assert spec.config["min.insync.replicas"] == "2"
        assert spec.partitions >= 1


def test_default_path_prefers_repo_file() -> None:
    """In a checkout the deploy/ file is the one loaded."""
    assert topics.default_policy_path() == DEPLOY


def test_values_are_normalised_to_kafka_strings(tmp_path: Path) -> None:
    """Integers, booleans and floats become the strings Kafka expects."""
    path = _write(tmp_path, """
[topics."a.b"]
partitions = 2
replication_factor = 1
configs = { "retention.ms" = 1_000, "preallocate" = true, "min.cleanable.dirty.ratio" = 0.25 }
""")
    assert load_topic_policy(path) == [TopicSpec("a.b", 2, 1, (
        ("min.cleanable.dirty.ratio", "0.25"), ("preallocate", "true"), ("retention.ms", "1000")))]


@pytest.mark.parametrize(("text", "expected"), [
    ("not toml = = 1", "not valid TOML"),
    ("", "no topics"),
    ("[other]\nx = 1\n", "unknown top-level key"),
    ('[topics."t"]\nreplication_factor = 1\n', "missing partitions"),
    ('[topics."t"]\npartitions = 0\nreplication_factor = 1\n', "partitions must be a positive"),
    ('[topics."t"]\npartitions = true\nreplication_factor = 1\n', "partitions must be a positive"),
    ('[topics."t"]\npartitions = 1\nreplication_factor = "3"\n', "replication_factor must be"),
    ('[topics."t"]\npartitions = 1\nreplication_factor = 1\nretention = 5\n', "unknown key"),
    ('[topics."t"]\npartitions = 1\nreplication_factor = 1\n[topics."t".configs]\n'
     'retention.ms = 5\n', 'quote them, e.g. "retention.ms"'),
    ('[topics."t"]\npartitions = 1\nreplication_factor = 1\nconfigs = { "x" = [1] }\n',
     "must be a string, number or boolean"),
    ('[topics."bad name"]\npartitions = 1\nreplication_factor = 1\n', "invalid Kafka topic name"),
    ('[topics."t"]\npartitions = 1\nreplication_factor = 2\nconfigs = { "min.insync.replicas" = 3 }\n',
     "between 1 and replication_factor"),
    ('[topics.cdr.raw]\npartitions = 1\nreplication_factor = 1\n', "quote dotted topic names"),
])
def test_bad_file_gives_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    """Each malformed policy names the file and says what is wrong."""
    path = _write(tmp_path, text)
    with pytest.raises(TopicPolicyError) as info:
        load_topic_policy(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_says_so(tmp_path: Path) -> None:
    """A missing file is reported with its path, not a traceback."""
    with pytest.raises(TopicPolicyError, match="not found"):
        load_topic_policy(tmp_path / "nope.toml")


def test_x_options() -> None:
    """-X key=value pairs pass through; a pair without '=' is a usage error."""
    assert parse_x_options(["a=b", "sasl.password=x=y"]) == {"a": "b", "sasl.password": "x=y"}
    from pipeline.cli import UsageError
    with pytest.raises(UsageError):
        parse_x_options(["novalue"])
