"""`vault reindex`: records ingested before the vault knew their format become findable and dated by call start."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.cli import EXIT_OK, main
from pipeline.vault.audit import read_entries

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLE = CORPUS / "cgrates" / "ers_filecsv__fileContent1.csv"   # 18 columns, but not Asterisk's
MAPPING = REPO / "tests" / "data" / "mappings" / "cgrates-export.toml"
TARGET = "+49 8651 7174963"


@pytest.fixture()
def world(tmp_path, monkeypatch, capsys, corpus):
    monkeypatch.setenv("CDRPIPE_VAULT_RETENTION", "20y")  # the sample's calls are from 2013
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    fmt = ["--format", "csv", "--mapping", str(MAPPING)]
    assert main(["process", "--keyring", str(tmp_path / "keys" / "worker-keyring.json"), "--input", str(SAMPLE),
                 "--out-dir", str(tmp_path / "out"), "--region", "DE", "--quiet", *fmt]) == 0
    base = ["--keyring", str(tmp_path / "keys" / "vault-keyring.json"), "--db", str(tmp_path / "vault.db")]
    capsys.readouterr()
    # Ingested as an older vault would have: without the format (it cannot guess a mapped CSV).
    assert main(["vault", "ingest", *base, "--region", "DE", "--quiet",
                 "--input", str(tmp_path / "out" / "retention.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["stored"], summary["unparsed"], summary["expired"]) == (2, 2, 0)  # kept, never mis-dated
    assert main(["vault", "warrant", "add", *base, "--id", "W-1", "--authority", "t", "--officer", "PC-1",
                 "--targets", TARGET, "--from", "2013-01-01", "--to", "2013-12-31", "--expires", "2099-01-01",
                 "--region", "DE"]) == 0
    return {"base": base, "fmt": fmt}


def _query(world, capsys) -> list[bytes]:
    capsys.readouterr()
    assert main(["vault", "query", *world["base"], "--target", "0049 8651 7174963", "--region", "DE",
                 "--from", "2013-01-01", "--to", "2013-12-31", "--warrant", "W-1", "--officer", "PC-1"]) == EXIT_OK
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [r["raw"].encode() if r["raw_encoding"] == "utf-8" else base64.b64decode(r["raw"]) for r in rows]


def _reindex(world, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["vault", "reindex", *world["base"], *world["fmt"], *extra]) == EXIT_OK
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def _status(world, capsys) -> dict:
    capsys.readouterr()
    assert main(["vault", "status", *world["base"]]) == 0
    return json.loads(capsys.readouterr().out)


def test_reindex_makes_old_records_findable_by_call_start_with_their_bytes_unchanged(world, capsys):
    assert _query(world, capsys) == []  # filed under the ingest day, unindexed
    before = _status(world, capsys)
    assert before["unread_records"] == 2 and before["warrants"] == {"active": 1, "expired": 0, "revoked": 0}
    assert _reindex(world, capsys) == {"candidates": 2, "reindexed": 2, "expired": 0, "unchanged": 0,
                                       "unreadable_days": 0}
    lines = SAMPLE.read_bytes().rstrip(b"\n").split(b"\n")
    assert _query(world, capsys) == [line for line in lines if b"+4986517174963," in line]
    after = _status(world, capsys)
    assert {d["day"]: d["records"] for d in after["days"] if d["records"]} == {"2013-11-07": 2}  # by the call
    assert after["unread_records"] == 0 and "csv (mapped)" in after["input_formats"]
    assert _reindex(world, capsys)["candidates"] == 0  # nothing left filed by sealed_at
    schema = json.loads((REPO / "schemas" / "audit-entry.v1.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    entries = [json.loads(text) for _s, text in read_entries(world["base"][3])]
    assert [e["action"] for e in entries] == ["warrant_add", "query", "reindex", "query", "reindex"]
    for entry in entries:
        assert not list(validator.iter_errors(entry)), entry["action"]


def test_reindex_removes_records_already_past_retention(world, capsys):
    summary = _reindex(world, capsys, "--retention", "12mo")
    assert (summary["reindexed"], summary["expired"]) == (0, 2)
    capsys.readouterr()
    assert main(["vault", "status", *world["base"]]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
