"""`--log-format json`: one object a line with a stable set of keys, on every long-running command."""
from __future__ import annotations

import json
import logging
import sys

import pytest

from pipeline.cli import EXIT_FATAL, build_parser, main
from pipeline.logs import JSON_KEYS, JsonFormatter, JsonLinesStream, configure_logging

#: The commands that run until stopped (with their required flags): each must take the flag after its name too.
LONG_RUNNING = (["run"], ["vault", "sink", "--db", "v.db"], ["privacy", "worker"], ["aggregates", "worker"])


def _objects(text: str) -> list[dict]:
    """Every non-empty line of ``text`` as a JSON object with exactly the stable keys."""
    objects = []
    for line in text.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)  # fails the test on any line a collector could not parse
        assert tuple(doc) == JSON_KEYS, line
        objects.append(doc)
    return objects


@pytest.mark.parametrize("argv", [
    ["--log-format", "json", "vault", "audit", "verify", "--db", "{db}"],
    ["vault", "audit", "verify", "--log-format", "json", "--db", "{db}"],
])
def test_json_mode_writes_only_objects_to_stderr(argv, tmp_path, capsys) -> None:
    db = str(tmp_path / "none.db")
    assert main([a.replace("{db}", db) for a in argv]) == EXIT_FATAL
    err = capsys.readouterr().err
    objects = _objects(err)
    assert [o["level"] for o in objects] == ["ERROR"]
    assert "no vault database" in objects[0]["msg"] and objects[0]["command"] == "vault audit"
    assert objects[0]["ts"].endswith("Z") and objects[0]["exc"] is None


def test_the_environment_chooses_json_and_a_flag_after_the_command_wins(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("CDRPIPE_LOG_FORMAT", "json")
    db = str(tmp_path / "none.db")
    main(["vault", "audit", "verify", "--db", db])
    assert _objects(capsys.readouterr().err)
    main(["vault", "audit", "verify", "--log-format", "text", "--db", db])
    err = capsys.readouterr().err
    assert err.startswith("cdrpipe vault: error:"), err


def test_text_stays_the_default(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.delenv("CDRPIPE_LOG_FORMAT", raising=False)
    main(["vault", "audit", "verify", "--db", str(tmp_path / "none.db")])
    assert capsys.readouterr().err.startswith("cdrpipe vault: error:")


@pytest.mark.parametrize("command", LONG_RUNNING, ids=lambda c: " ".join(c[:2]))
def test_every_long_running_command_takes_the_flag_after_its_name(command, monkeypatch) -> None:
    monkeypatch.delenv("CDRPIPE_LOG_FORMAT", raising=False)
    parser = build_parser(command)
    args, _rest = parser.parse_known_args([*command, "--log-format", "json"])
    assert args.log_format == "json"
    args, _rest = parser.parse_known_args(["--log-format", "json", *command])
    assert args.log_format == "json", "the flag before the command must not be reset by the sub-command's"
    with pytest.raises(SystemExit):
        parser.parse_known_args([*command, "--log-format", "xml"])


def test_records_logging_and_exceptions_keep_the_same_keys(capsys) -> None:
    restore = configure_logging("INFO", "json", "run")
    try:
        log = logging.getLogger("pipeline.test")
        log.info("assigned %d partition(s)", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("batch failed")
        print("a library's line", file=sys.stderr)
        sys.stderr.write("half a line, ")
        sys.stderr.write("then the rest\n")
    finally:
        restore()
    info, error, printed, joined = _objects(capsys.readouterr().err)
    assert info["msg"] == "assigned 3 partition(s)" and info["logger"] == "pipeline.test"
    assert info["command"] == "run" and info["exc"] is None and isinstance(info["pid"], int)
    assert error["level"] == "ERROR" and "ValueError: boom" in error["exc"]
    assert printed["logger"] == "stderr" and printed["msg"] == "a library's line"
    assert joined["msg"] == "half a line, then the rest"


def test_restore_puts_stderr_and_the_handlers_back() -> None:
    before_stream, before_handlers = sys.stderr, list(logging.getLogger().handlers)
    restore = configure_logging("DEBUG", "json")
    assert isinstance(sys.stderr, JsonLinesStream)
    restore()
    assert sys.stderr is before_stream and logging.getLogger().handlers == before_handlers


def test_formatter_output_is_one_line_whatever_the_message() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "two\nlines \"quoted\" ünïcode", None, None)
    text = JsonFormatter("vault sink").format(record)
    assert "\n" not in text and json.loads(text)["msg"] == "two\nlines \"quoted\" ünïcode"


def test_an_unexpected_error_is_one_object_with_its_traceback(monkeypatch, capsys) -> None:
    def explode(_args):
        raise RuntimeError("unexpected")

    parser = build_parser(["keys", "generate"])
    real = parser.parse_args
    monkeypatch.setattr("pipeline.cli.build_parser", lambda argv=None: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: _with(real(argv), func=explode))
    assert main(["--log-format", "json", "keys", "generate", "--dir", "unused"]) == EXIT_FATAL
    (obj,) = _objects(capsys.readouterr().err)
    assert obj["level"] == "CRITICAL" and "RuntimeError: unexpected" in obj["exc"]
    with pytest.raises(RuntimeError):  # text mode: Python's own traceback, as before
        main(["keys", "generate", "--dir", "unused"])


def _with(args, **changes):
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def test_a_usage_error_found_while_parsing_is_an_object_too(monkeypatch, capsys) -> None:
    """In the cluster (CDRPIPE_LOG_FORMAT=json) a bad flag in a manifest must not be loose text."""
    monkeypatch.setenv("CDRPIPE_LOG_FORMAT", "json")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-flag"])
    assert exc.value.code == 2
    objects = _objects(capsys.readouterr().err)
    assert any("unrecognized arguments: --no-such-flag" in o["msg"] and o["level"] == "ERROR" for o in objects)
    assert not isinstance(sys.stderr, JsonLinesStream), "stderr is put back after the usage error"
