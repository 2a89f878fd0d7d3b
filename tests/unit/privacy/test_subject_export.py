"""Subject access and portability in file mode, through the CLI as a DPO and a vault custodian run it:

process -> vault ingest -> (a warrant query) -> vault subject-access -> privacy export (JSON, CSV).

What could fail here: a stranger's record in the export or one of the subject's missing, counts
that differ between analytics and the vault, a withheld caller revealed (number or token), the
other party's device data given away, the subject's token shown instead of their number, and any
trace of the warrant query (tipping-off): the extract must be the same with or without one.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
from pathlib import Path

import orjson
import pytest

import subject_scenario as sc
from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring
from pipeline.privacy.register import CaseRegister
from pipeline.privacy.requests import SubjectTokeniser, load_schema, schema_errors as request_errors
from pipeline.privacy.subject_export import RECORD_FIELDS
from pipeline.vault.audit import read_entries
from pipeline.vault.subject_access import bill_number, caller_withheld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("subject")
    day = sc.base_day()
    lines, expect = sc.records(day)
    (root / "raw.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == EXIT_OK
    keys = {"worker": root / "keys" / "worker-keyring.json", "vault": root / "keys" / "vault-keyring.json"}
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(root / "raw.jsonl"),
                 "--out-dir", str(root / "out")]) == EXIT_OK
    db = root / "vault.db"
    assert main(["vault", "ingest", "--keyring", str(keys["vault"]), "--db", str(db), "--input",
                 str(root / "out" / "retention.jsonl"), "--quiet"]) == EXIT_OK
    start, end = sc.window(day)
    worker = load_worker_keyring(str(keys["worker"]))
    tokens = set(SubjectTokeniser(worker).tokens("msisdn", sc.SUBJECT))
    refs = Tokeniser(worker)
    return {"root": root, "keys": keys, "db": db, "expect": expect, "from": start, "to": end, "tokens": tokens,
            "ref": lambda rid: refs.token_one("record", rid),
            "analytics": root / "out" / "analytics.jsonl"}


def subject_access(world: dict, out: Path, request_id: str = "sar-2026-0007", subject: str = "07700 900123") -> int:
    return main(["vault", "subject-access", "--keyring", str(world["keys"]["vault"]), "--db", str(world["db"]),
                 "--request-id", request_id, "--subject", subject, "--from", world["from"], "--to", world["to"],
                 "--custodian", "vault-custodian-2", "--output", str(out)])


def warrant_query(world: dict, out: Path) -> None:
    # Queries run only under a registered warrant (issue 14): register it first.
    assert main(["vault", "warrant", "add", "--keyring", str(world["keys"]["vault"]), "--db", str(world["db"]),
                 "--id", sc.WARRANT, "--authority", "test", "--officer", sc.OFFICER, "--targets", "+44 7700 900123",
                 "--from", world["from"], "--to", world["to"], "--expires", "2099-12-31"]) == EXIT_OK
    assert main(["vault", "query", "--keyring", str(world["keys"]["vault"]), "--db", str(world["db"]),
                 "--target", "+44 7700 900123", "--from", world["from"], "--to", world["to"],
                 "--warrant", sc.WARRANT, "--officer", sc.OFFICER, "--output", str(out)]) == EXIT_OK


def export(world: dict, extract: Path, out: Path, fmt: str = "json", *extra: str) -> int:
    return main(["privacy", "export", "--request-id", "sar-2026-0007", "--subject", "+44 7700 900123",
                 "--keyring", str(world["keys"]["worker"]), "--from", world["from"], "--to", world["to"],
                 "--analytics", str(world["analytics"]), "--vault", str(extract), "--output", str(out),
                 "--format", fmt, *extra])


@pytest.fixture(scope="module")
def extracts(world: dict) -> dict:
    """An extract made before any warrant query, then a warrant query, then a second extract."""
    root = world["root"]
    assert subject_access(world, root / "before.json") == EXIT_OK
    warrant_query(world, root / "warrant-delivery.jsonl")
    assert subject_access(world, root / "after.json", subject="0044 7700900123") == EXIT_OK
    return {"before": root / "before.json", "after": root / "after.json"}


# --------------------------------------------------------------------------- the export

def test_json_export_holds_exactly_the_subjects_records_with_withheld_callers_withheld(world, extracts, capsys):
    out = world["root"] / "export.json"
    capsys.readouterr()
    assert export(world, extracts["after"], out) == EXIT_OK
    printed = capsys.readouterr()
    doc = orjson.loads(out.read_bytes())
    sc.check_export(doc, world["expect"], world["tokens"], world["ref"])
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert doc["window"] == {"from": f"{world['from']}T00:00:00Z",
                             "to": f"{dt.date.fromisoformat(world['to']) + dt.timedelta(days=1)}T00:00:00Z"}
    assert doc["sources"]["analytics"] == {"included": True, "from": "files", "records": len(world["expect"])}
    # The terminal gets counts and the request id, never the subject.
    assert "7700900123" not in printed.out + printed.err and "900123" not in printed.out + printed.err
    assert json.loads(printed.out.strip().splitlines()[-1])["retained"] == len(world["expect"])


def test_the_same_records_with_or_without_a_warrant_query_before(world, extracts):
    before, after = (orjson.loads(extracts[k].read_bytes()) for k in ("before", "after"))
    before.pop("generated_at"), after.pop("generated_at")
    assert before == after
    for path in extracts.values():
        assert sc.schema_errors(orjson.loads(path.read_bytes()), "vaultExtract") == []
        text = path.read_text()
        assert sc.WARRANT not in text and sc.OFFICER not in text and "seq" not in text
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_subject_access_is_audited_with_its_purpose_and_no_warrant(world, extracts):
    entries = [json.loads(text) for _seq, text in read_entries(world["db"])]
    assert [e["action"] for e in entries] == ["subject_access", "warrant_add", "query", "subject_access"]
    sar = entries[0]
    assert sar["purpose"] == "subject-access" and sar["request_id"] == "sar-2026-0007"
    assert sar["operator"] == "vault-custodian-2" and "warrant" not in sar and "officer" not in sar
    assert sar["result_count"] == len(world["expect"])
    assert "7700900123" not in json.dumps(entries)
    audit_schema = load_schema("audit-entry.v1.json")
    for entry in entries:
        assert request_errors(entry, "audit-entry.v1.json") == [], entry["action"]
    broken = dict(sar, warrant=sc.WARRANT)
    assert request_errors(broken, "audit-entry.v1.json")  # a subject-access entry may not name a warrant
    assert audit_schema["properties"]["action"]["enum"][-1] == "subject_access"
    assert main(["vault", "audit", "verify", "--db", str(world["db"])]) == EXIT_OK


def test_csv_export_has_the_schema_columns_and_the_same_rows(world, extracts):
    out_json, out_csv = world["root"] / "e.json", world["root"] / "e.csv"
    assert export(world, extracts["after"], out_json) == EXIT_OK
    assert export(world, extracts["after"], out_csv, "csv") == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"), newline="")))
    assert tuple(rows[0].keys()) == RECORD_FIELDS
    assert tuple(sc.export_schema()["$defs"]["record"]["properties"]) == RECORD_FIELDS
    typed = []
    for row in rows:
        doc = {k: (None if v == "" else v) for k, v in row.items()}
        doc["duration"] = None if doc["duration"] is None else int(doc["duration"])
        assert sc.schema_errors(doc, "record") == [], doc["record_id"]
        typed.append(doc)
    assert typed == orjson.loads(out_json.read_bytes())["records"]


def test_extract_for_another_request_subject_or_window_is_refused(world, extracts, tmp_path):
    out = tmp_path / "x.json"
    assert export(world, extracts["after"], out, "json", "--without-vault") == EXIT_USAGE  # both given
    args = ["privacy", "export", "--subject", "+44 7700 900123", "--keyring", str(world["keys"]["worker"]),
            "--analytics", str(world["analytics"]), "--vault", str(extracts["after"]), "--output", str(out)]
    assert main(args + ["--request-id", "sar-other", "--from", world["from"], "--to", world["to"]]) == EXIT_USAGE
    assert main(args + ["--request-id", "sar-2026-0007", "--from", world["from"], "--to", "2099-01-01"]) == EXIT_USAGE
    assert main([*args[:2], "--subject", "+44 7700 900124", *args[4:], "--request-id", "sar-2026-0007",
                 "--from", world["from"], "--to", world["to"]]) == EXIT_USAGE
    assert not out.exists()


def test_analytics_only_export_withholds_every_incoming_caller(world, tmp_path):
    """Without the vault extract nothing shows which callers presented their number: fail closed."""
    out = tmp_path / "a.json"
    assert main(["privacy", "export", "--request-id", "sar-2026-0007", "--subject", "07700 900123",
                 "--keyring", str(world["keys"]["worker"]), "--from", world["from"], "--to", world["to"],
                 "--analytics", str(world["analytics"]), "--without-vault", "--output", str(out)]) == EXIT_OK
    doc = orjson.loads(out.read_bytes())
    assert sc.schema_errors(doc) == []
    assert doc["sources"]["retained"] == {"included": False, "records": 0, "complete": None}
    assert {r["record_id"] for r in doc["records"]} == set(map(world["ref"], world["expect"]))
    for row in doc["records"]:
        if row["direction"] == "incoming":
            assert row["other_party"] is None and row["other_party_form"] == "withheld"


def test_subject_access_refuses_without_custodian_or_with_a_number_shaped_request_id(world, tmp_path):
    audited = len(read_entries(world["db"]))
    base = ["vault", "subject-access", "--keyring", str(world["keys"]["vault"]), "--db", str(world["db"]),
            "--subject", "07700 900123", "--from", world["from"], "--to", world["to"],
            "--output", str(tmp_path / "x.json")]
    assert main(base + ["--request-id", "sar-1"]) == EXIT_USAGE           # no --custodian
    assert main(base + ["--request-id", "07700900123", "--custodian", "c1"]) == EXIT_USAGE
    assert main(base[:6] + ["--subject", "999", *base[8:], "--request-id", "sar-1", "--custodian", "c1"]) == EXIT_USAGE
    # An --output that cannot be written is an operator mistake like any other (exit 1, issue 15), still
    # refused before anything is read or audited.
    assert main(base[:-1] + [str(tmp_path / "no-such-dir" / "x.json"), "--request-id", "sar-1",
                             "--custodian", "c1"]) == EXIT_FATAL
    assert not (tmp_path / "x.json").exists()
    assert len(read_entries(world["db"])) == audited  # refused before anything was read or audited


def test_export_with_the_register_checks_the_request_and_records_the_answer(world, extracts, tmp_path, capsys):
    register = CaseRegister(tmp_path / "cases.jsonl")
    register.record_received({"request_id": "sar-2026-0007", "type": "portability", "subject_kind": "msisdn",
                              "received": "2026-11-20T10:00:00.000Z", "due": "2026-12-20"})
    register.record_received({"request_id": "obj-1", "type": "objection", "subject_kind": "msisdn",
                              "received": "2026-11-20T10:00:00.000Z", "due": "2026-12-20"})
    out = tmp_path / "p.json"
    assert export(world, extracts["after"], out, "json", "--register", str(register.path)) == EXIT_OK
    assert orjson.loads(out.read_bytes())["request_type"] == "portability"
    assert register.cases()["sar-2026-0007"].answered
    capsys.readouterr()
    assert main(["privacy", "status", "--register", str(register.path), "--json"]) == EXIT_OK
    open_ids = [json.loads(line)["request_id"] for line in capsys.readouterr().out.splitlines()]
    assert open_ids == ["obj-1"]


# --------------------------------------------------------------------------- the rules, one by one

@pytest.mark.parametrize("doc, cls, withheld", [
    ({"cli": "+447700900555"}, "e164", False),
    ({"cli": "+447700900555", "presentation": "allowed"}, "e164", False),
    ({"cli": "+447700900555", "presentation": "restricted"}, "e164", True),
    ({"cli": "+447700900555", "presentation": "Unavailable-ish"}, "e164", True),   # unknown: fail closed
    ({"cli": "+447700900555", "privacy": "id"}, "e164", True),                     # SIP Privacy: id
    ({"cli": "+447700900555", "clir": True}, "e164", True),
    ({"cli": "+447700900555", "clir": False}, "e164", False),
    ({"cli": "Anonymous"}, "withheld", True),
    ({"cli": {"number": "+447700900555", "presentation": "restricted"}}, None, True),
    ({"variables": {"privacy": "number"}, "cli": "+447700900555"}, "e164", True),  # FreeSWITCH
    ({"variables": {"sip_Privacy": "none"}, "cli": "+447700900555"}, "e164", False),
])
def test_caller_withheld_reads_every_documented_marker(doc, cls, withheld):
    assert caller_withheld(doc, cls) is withheld


def test_bill_numbers_are_national_at_home_and_international_abroad():
    assert bill_number("+442079460001", "e164", "GB") == ("020 7946 0001", "number")
    assert bill_number("+33612345678", "e164", "GB") == ("+33 6 12 34 56 78", "number")
    assert bill_number(None, "withheld", "GB") == (None, "withheld")
    assert bill_number("150", "short_code", "GB") == ("150", "number")


def test_asterisk_rows_are_read_with_the_format_the_vault_indexed_them_with(tmp_path):
    """A switch format (Asterisk cdr_csv) end to end: parties read as the pipeline reads them; an
    anonymous caller stays withheld; the other party as on a bill."""
    day = sc.base_day()
    t = lambda h: f"{day} {h:02d}:10:00"  # noqa: E731
    rows = [  # accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp, lastdata, start, answer, end,
              # duration, billsec, disposition, amaflags, uniqueid, userfield
        f'"","07700900123","02079460001","hq","""Me"" <07700900123>","SIP/1","SIP/2","Dial","","{t(8)}","{t(8)}",'
        f'"{t(9)}",70,60,"ANSWERED","DOCUMENTATION","1700000001.1",""',
        f'"","02079460001","+447700900123","hq","""Bob"" <02079460001>","SIP/2","SIP/1","Dial","","{t(10)}","{t(10)}",'
        f'"{t(11)}",70,60,"ANSWERED","DOCUMENTATION","1700000002.1",""',
        f'"","anonymous","07700 900123","hq","""Anonymous"" <anonymous>","SIP/3","SIP/1","Dial","","{t(12)}",'
        f'"{t(12)}","{t(13)}",70,60,"ANSWERED","DOCUMENTATION","1700000003.1",""',
        f'"","02079460001","07700900555","hq","""Bob"" <02079460001>","SIP/2","SIP/5","Dial","","{t(14)}",'
        f'"{t(14)}","{t(15)}",70,60,"ANSWERED","DOCUMENTATION","1700000004.1",""',
    ]
    (tmp_path / "Master.csv").write_text("\n".join(rows) + "\n")
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    worker, vault = tmp_path / "keys" / "worker-keyring.json", tmp_path / "keys" / "vault-keyring.json"
    assert main(["process", "--keyring", str(worker), "--format", "asterisk-csv", "--input",
                 str(tmp_path / "Master.csv"), "--out-dir", str(tmp_path / "out")]) == EXIT_OK
    db = tmp_path / "vault.db"
    assert main(["vault", "ingest", "--keyring", str(vault), "--db", str(db), "--format", "asterisk-csv",
                 "--input", str(tmp_path / "out" / "retention.jsonl"), "--quiet"]) == EXIT_OK
    start, end = sc.window(day)
    assert main(["vault", "subject-access", "--keyring", str(vault), "--db", str(db), "--request-id", "sar-a",
                 "--subject", "07700 900123", "--from", start, "--to", end, "--custodian", "c1",
                 "--output", str(tmp_path / "x.json")]) == EXIT_OK
    assert main(["privacy", "export", "--request-id", "sar-a", "--subject", "07700 900123", "--keyring", str(worker),
                 "--from", start, "--to", end, "--analytics", str(tmp_path / "out" / "analytics.jsonl"),
                 "--vault", str(tmp_path / "x.json"), "--output", str(tmp_path / "e.json")]) == EXIT_OK
    doc = orjson.loads((tmp_path / "e.json").read_bytes())
    assert sc.schema_errors(doc) == []
    retained = [r for r in doc["records"] if r["source"] == "retained"]
    analytics = [r for r in doc["records"] if r["source"] == "analytics"]
    assert [(r["direction"], r["other_party"], r["other_party_form"]) for r in retained] == [
        ("outgoing", "020 7946 0001", "number"), ("incoming", "020 7946 0001", "number"),
        ("incoming", None, "withheld")]
    assert [r["record_id"] for r in analytics] == [r["record_id"] for r in retained]
    assert [r["other_party_form"] for r in analytics] == ["token", "token", "withheld"]
