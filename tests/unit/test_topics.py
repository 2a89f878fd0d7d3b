"""The topic policy loader: the shipped file is complete and sane; bad files fail with a clear reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import topics
from pipeline.cli import UsageError
from pipeline.kafka_config import parse_x_options, require_bootstrap
from pipeline.topics import TopicPolicyError, Topics, TopicSpec, load_topic_policy

REPO = Path(__file__).resolve().parents[2]
PACKAGED = REPO / "pipeline" / "data" / "topics.toml"
DAY_MS = 86_400_000


def _write(tmp_path: Path, text: str) -> Path:
    """Write a policy file for one test."""
    path = tmp_path / "topics.toml"
    path.write_text(text)
    return path


def test_shipped_policy_matches_design() -> None:
    """Every topic of DESIGN.md is there with its retention, cleanup and production replication."""
    specs = {s.name: s for s in load_topic_policy(PACKAGED)}
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


def test_default_path_is_the_packaged_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One policy file, shipped in the package; CDRPIPE_TOPICS_FILE names another."""
    monkeypatch.delenv("CDRPIPE_TOPICS_FILE", raising=False)
    assert topics.default_policy_path() == topics.POLICY_FILE == PACKAGED
    assert not (REPO / "deploy" / "topics.toml").exists()  # no second copy to drift
    monkeypatch.setenv("CDRPIPE_TOPICS_FILE", str(tmp_path / "t.toml"))
    assert topics.default_policy_path() == tmp_path / "t.toml"


def test_topic_name_constants_are_exactly_the_policy_topics() -> None:
    """Every policy topic has its constant and every constant names a policy topic."""
    constants = {topics.RAW, topics.ANALYTICS, topics.AGGREGATES, topics.RETENTION, topics.DLQ, topics.AUDIT,
                 topics.REQUESTS, topics.SUPPRESSIONS, topics.ERASURES}
    assert constants == {s.name for s in load_topic_policy(PACKAGED)}
    assert len(constants) == 9
    assert set(vars(Topics())) == {"input", "analytics", "retention", "dlq", "aggregates", "requests",
                                   "suppressions", "erasures"}
    assert set(vars(Topics()).values()) == constants - {topics.AUDIT}


def test_topics_with_prefix_prefixes_every_topic() -> None:
    t = Topics(analytics="a.x").with_prefix("p.")
    assert t == Topics("p.cdr.raw", "p.a.x", "p.cdr.retention", "p.cdr.dlq", "p.cdr.aggregates",
                       "p.privacy.requests", "p.privacy.suppressions", "p.privacy.erasures")
    assert t.outputs == ("p.a.x", "p.cdr.retention", "p.cdr.dlq")


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
    assert parse_x_options(None) == {}
    with pytest.raises(UsageError):
        parse_x_options(["novalue"])


def test_bootstrap_from_the_flag_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """One check of "no Kafka given" for every command; the message names the flag and the variable."""
    monkeypatch.setenv("CDRPIPE_BOOTSTRAP_SERVERS", "env:9092")
    assert require_bootstrap("flag:9092") == "flag:9092"
    assert require_bootstrap(None) == "env:9092"
    monkeypatch.delenv("CDRPIPE_BOOTSTRAP_SERVERS")
    with pytest.raises(UsageError, match=r"^no Kafka given: pass --bootstrap-servers HOST:PORT or set "
                                         r"CDRPIPE_BOOTSTRAP_SERVERS$"):
        require_bootstrap("")
    with pytest.raises(UsageError, match=r"CDRPIPE_BOOTSTRAP_SERVERS \(`cdrpipe broker` prints one for local use\)$"):
        require_bootstrap(None, local_hint=True)
