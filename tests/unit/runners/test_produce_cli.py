"""`cdrpipe produce` without a broker: its pinned producer settings and its usage errors."""
from __future__ import annotations

import pytest

from pipeline.cli import EXIT_USAGE, UsageError, main
from pipeline.runners.produce import producer_config


def test_the_producer_is_idempotent_and_waits_for_every_replica():
    conf = producer_config("127.0.0.1:9", {"linger.ms": "5", "security.protocol": "SSL"})
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["linger.ms"] == "5" and conf["security.protocol"] == "SSL" and conf["bootstrap.servers"] == "127.0.0.1:9"


@pytest.mark.parametrize("key", ["acks", "enable.idempotence", "bootstrap.servers"])
def test_pinned_settings_cannot_be_overridden(key):
    with pytest.raises(UsageError, match=key):
        producer_config("127.0.0.1:9", {key: "1"})


def test_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CDRPIPE_BOOTSTRAP_SERVERS", raising=False)
    f = tmp_path / "in.jsonl"
    f.write_text("{}\n")
    assert main(["produce", "--input", str(f)]) == EXIT_USAGE
    assert "--bootstrap-servers" in capsys.readouterr().err
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:9", "--input", str(tmp_path)]) == EXIT_USAGE
    assert "is a directory" in capsys.readouterr().err
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:9", "--input", str(tmp_path / "nope")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:9", "--input", str(f), "--format", "xml"]) == EXIT_USAGE
    assert "unknown input format" in capsys.readouterr().err
    assert main(["produce", "--bootstrap-servers", "127.0.0.1:9", "--input", str(f), "-X", "acks=1"]) == EXIT_USAGE
    assert "acks" in capsys.readouterr().err


def test_help_names_every_environment_variable(capsys):
    with pytest.raises(SystemExit):
        main(["produce", "--help"])
    text = capsys.readouterr().out
    for env in ("CDRPIPE_BOOTSTRAP_SERVERS", "CDRPIPE_FORMAT", "CDRPIPE_INPUT_TOPIC", "CDRPIPE_TOPIC_PREFIX",
                "CDRPIPE_X_"):
        assert env in text
