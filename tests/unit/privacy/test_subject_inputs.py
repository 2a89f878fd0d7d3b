"""Subject-rights inputs are validated: a suppressions file holds tokens, `cdrpipe token` takes real identifiers.

What could fail: a raw number in a suppressions file is ignored (the objector stays in analytics,
exit 0); the refusal repeats the number; `cdrpipe token` prints a token for a word or a number
that has a digit missing (a token that matches nothing, so a subject request silently finds
nothing); --allow-invalid does not give the token such a value always had; a valid number,
IMSI, IMEI or IP is refused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, FatalError, UsageError, main
from pipeline.core.normalise import normalise_one
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring
from pipeline.commands.process import build_router


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    assert main(["keys", "generate", "--dir", str(d)]) == EXIT_OK
    return d / "worker-keyring.json"


def _token(keyring: Path, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["token", "--keyring", str(keyring), *argv])
    out = capsys.readouterr()
    return code, out.out.strip(), out.err


def _input(tmp_path: Path) -> Path:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"cli":"+447911123456","dialled":"+442079460321","start":"2026-11-25T10:00:00Z","duration":3}\n'
                   '{"cli":"+447911654321","dialled":"+442079460321","start":"2026-11-25T10:00:00Z","duration":3}\n')
    return inp


def _process(keyring: Path, tmp_path: Path, suppressions: Path, capsys) -> tuple[int, str, str]:
    code = main(["process", "--keyring", str(keyring), "--input", str(_input(tmp_path)), "--out-dir",
                 str(tmp_path / "out"), "--quiet", "--suppressions", str(suppressions)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("line", ["+447911123456", "07911 123456", '{"token": "07911123456", "active": true}',
                                  "447911123456", "k1:447911123456"])
def test_a_raw_number_in_a_suppressions_file_is_a_usage_error_naming_the_line(keyring, tmp_path, capsys, line) -> None:
    code, tok, _ = _token(keyring, capsys, "+447911654321")
    assert code == EXIT_OK
    supp = tmp_path / "objections.txt"
    supp.write_text(f"# objections\n{tok}\n\n{line}\n")
    code, out, err = _process(keyring, tmp_path, supp, capsys)
    message = _one_line(err)
    assert code == EXIT_USAGE and out == ""
    assert f"{supp} line 4" in message and "cdrpipe token" in message
    for digits in ("7911123456", "7911 123456"):
        assert digits not in message
    assert not (tmp_path / "out").exists()


def test_tokens_in_both_forms_still_suppress(keyring, tmp_path, capsys) -> None:
    code, tok, _ = _token(keyring, capsys, "+447911123456")
    assert code == EXIT_OK
    supp = tmp_path / "s.jsonl"
    supp.write_text(json.dumps({"token": tok, "active": True}) + "\n" + json.dumps({"token": "k9:" + "ab" * 16,
                                                                                  "active": False}) + "\n")
    code, out, _ = _process(keyring, tmp_path, supp, capsys)
    assert code == EXIT_OK and json.loads(out.splitlines()[-1])["suppressed"] == 1


def test_the_kafka_worker_refuses_the_same_suppressions_files(keyring, tmp_path) -> None:
    def router(path: Path):
        return build_router(argparse.Namespace(keyring=str(keyring), policy=None, region="GB", format="jsonl",
                                                     mapping=None, suppressions=str(path),
                                                     max_record_bytes=65536))
    raw = tmp_path / "raw.txt"
    raw.write_text("07911 123456\n")
    with pytest.raises(UsageError, match=r"line 1: .*cdrpipe token") as err:
        router(raw)
    assert "7911" not in str(err.value)
    with pytest.raises(FatalError, match="no such file"):
        router(tmp_path / "missing.txt")
    no_token = tmp_path / "no-token.jsonl"
    no_token.write_text('{"active": true}\n')
    with pytest.raises(FatalError, match='line 1: a JSON line needs a "token"'):
        router(no_token)


@pytest.mark.parametrize("value", ["hello", "07911 12345", "020 7946 032", "+1 415 555 267", "999", "+999 1234567"])
def test_token_refuses_what_is_not_a_subscriber_number(keyring, capsys, value) -> None:
    code, out, err = _token(keyring, capsys, "--kind", "msisdn", value)
    message = _one_line(err)
    assert code == EXIT_USAGE and out == ""
    assert "--allow-invalid" in message and "not a valid msisdn" in message
    digits = "".join(ch for ch in value if ch.isdigit())
    assert value not in message and (len(digits) < 3 or digits not in message)


@pytest.mark.parametrize("value", ["hello", "07911 12345"])
def test_allow_invalid_tokenises_the_value_as_it_is(keyring, capsys, value) -> None:
    code, out, _ = _token(keyring, capsys, "--kind", "msisdn", "--allow-invalid", value)
    assert code == EXIT_OK
    canonical = normalise_one("msisdn", value, "GB")
    assert canonical is not None
    assert out == Tokeniser(load_worker_keyring(keyring)).token_one("msisdn", canonical)


@pytest.mark.parametrize("kind,value", [("msisdn", "07911 123456"), ("msisdn", "+1 415 555 2671"),
                                        ("msisdn", "+49 30 901820"), ("msisdn", "07700 900461"),
                                        ("imsi", "234 15 0987654321"), ("imsi", "310260123456789"),
                                        ("imei", "35-209900-176148-1"), ("imei", "35209900176148"),
                                        ("imei", "3520990017614823"), ("ip", "2001:db8::7"), ("ip", "198.51.100.23")])
def test_token_accepts_real_identifiers(keyring, capsys, kind, value) -> None:
    code, out, err = _token(keyring, capsys, "--kind", kind, value)
    assert code == EXIT_OK, err
    canonical = normalise_one(kind, value, "GB")
    assert out == Tokeniser(load_worker_keyring(keyring)).token_one(kind, canonical)


@pytest.mark.parametrize("kind,value,why", [("imsi", "2341509876", "14 or 15 digits"),
                                            ("imei", "352099001761482", "check digit"),
                                            ("imei", "12345", "cannot be normalised"),
                                            ("ip", "198.51.100.300", "cannot be normalised")])
def test_token_refuses_malformed_imsi_imei_and_ip(keyring, capsys, kind, value, why) -> None:
    code, out, err = _token(keyring, capsys, "--kind", kind, value)
    message = _one_line(err)
    assert code == EXIT_USAGE and out == "" and why in message and value not in message
    if why != "cannot be normalised":
        assert _token(keyring, capsys, "--kind", kind, "--allow-invalid", value)[0] == EXIT_OK
