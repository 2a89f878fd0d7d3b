"""Warrants: registered with a scope, and no query answers outside it.

Records are built here with known parties and call times within the retention period (relative
to today), so what each warrant may see is known by construction. The whole suite runs on both
storage backends, SQLite and PostgreSQL (the session's throwaway cluster; skipped with the reason
where the server is not installed): a warrant's scope must not depend on where the vault lives.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from hypothesis import strategies as st

import pipeline.commands.vault as vault_cli
from pipeline.cli import EXIT_OK, EXIT_USAGE, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring
from pipeline.vault.audit import read_entries

TODAY = dt.datetime.now(dt.timezone.utc).date()
DAYS = [TODAY - dt.timedelta(days=d) for d in (40, 30, 20, 10, 5)]
A, A_FORMS = "+447700900123", ("07700 900123", "+44 7700 900123", "0044 7700900123")
B, C = "+447700900456", "+447700900789"
POOL = (A, B, C)


def _records() -> tuple[list[bytes], list[tuple[str, str, str, dt.datetime]]]:
    """Every pair of pool numbers calls on every day: (record id, cli, dialled, start)."""
    lines, facts = [], []
    for day in DAYS:
        for i, (cli, dialled) in enumerate((x, y) for x in POOL for y in POOL if x != y):
            start = dt.datetime.combine(day, dt.time(8 + i, 30), dt.timezone.utc)
            rid = f"r-{day:%m%d}-{i}"
            lines.append(orjson.dumps({"record_id": rid, "cli": cli, "dialled": dialled,
                                       "start": start.isoformat().replace("+00:00", "Z"), "duration": 60}))
            facts.append((rid, cli, dialled, start))
    return lines, facts


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def vault(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    root = tmp_path_factory.mktemp("warrants")
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres")
        tag = root.name.lower().replace("-", "_")
        db, keys = cluster.create_database(f"w_{tag}"), cluster.create_database(f"wk_{tag}")
        where = ["--db", db, "--keystore", keys]
    else:
        db = root / "vault.db"
        where = ["--db", str(db)]
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    lines, facts = _records()
    (root / "raw.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input",
                 str(root / "raw.jsonl"), "--out-dir", str(root / "out"), "--quiet"]) == 0
    keyring = root / "keys" / "vault-keyring.json"
    assert main(["vault", "ingest", "--keyring", str(keyring), *where, "--quiet",
                 "--input", str(root / "out" / "retention.jsonl")]) == 0
    base = ["--keyring", str(keyring), *where]
    # W-A: A only, from 35 days ago to 8 days ago (inclusive), officer PC-1.
    w_from, w_to = str(TODAY - dt.timedelta(days=35)), str(TODAY - dt.timedelta(days=8))
    assert main(["vault", "warrant", "add", *base, "--id", "W-A", "--authority", "Sec. of State",
                 "--officer", "PC-1", "--targets", A_FORMS[0], "--from", w_from, "--to", w_to,
                 "--expires", str(TODAY + dt.timedelta(days=30))]) == EXIT_OK
    assert main(["vault", "warrant", "add", *base, "--id", "W-R", "--authority", "court", "--officer", "PC-1",
                 "--targets", A, "--from", w_from, "--to", w_to, "--expires", str(TODAY + dt.timedelta(days=30))]) == 0
    assert main(["vault", "warrant", "revoke", *base, "--id", "W-R", "--reason", "withdrawn"]) == EXIT_OK
    # The vault names records by their record_ref (the token of kind record of the id, under the worker keyring).
    refs = Tokeniser(load_worker_keyring(root / "keys" / "worker-keyring.json"))
    return {"base": base, "db": db, "facts": facts, "from": w_from, "to": w_to,
            "ref": lambda rid: refs.token_one("record", rid)}


def _query(vault: dict, capsys, target: str, start: str, end: str, warrant: str = "W-A",
           officer: str = "PC-1") -> tuple[int, list[dict], str]:
    capsys.readouterr()
    code = main(["vault", "query", *vault["base"], "--target", target, "--from", start, "--to", end,
                 "--warrant", warrant, "--officer", officer])
    out = capsys.readouterr()
    return code, [orjson.loads(line) for line in out.out.splitlines()], out.err


def _last_entry(vault: dict) -> dict:
    return json.loads(read_entries(vault["db"])[-1][1])


def test_inside_the_scope_every_spelling_of_the_target_is_answered(vault, capsys):
    lo = dt.datetime.fromisoformat(vault["from"]).replace(tzinfo=dt.timezone.utc)
    hi = dt.datetime.fromisoformat(vault["to"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    expected = sorted(vault["ref"](rid) for rid, cli, dialled, start in vault["facts"]
                      if A in (cli, dialled) and lo <= start < hi)
    assert expected
    for form in (*A_FORMS, A):
        code, rows, err = _query(vault, capsys, form, vault["from"], vault["to"])
        assert code == EXIT_OK, err
        assert sorted(r["record_ref"] for r in rows) == expected
    entry = _last_entry(vault)
    assert entry["action"] == "query" and entry["warrant"] == "W-A" and entry["officer"] == "PC-1"
    assert entry["disclosed"]["record_ids"] == expected and entry["disclosed"]["count"] == len(expected)


@pytest.mark.parametrize("case, why", [
    (dict(target=B), "not one of the 1 target"),
    (dict(start_shift=-1), "not inside warrant W-A's window"),
    (dict(end_shift=1), "not inside warrant W-A's window"),
    (dict(warrant="W-R"), "was revoked"),
    (dict(warrant="W-NONE"), "is not registered"),
    (dict(officer="PC-2"), "does not authorise officer PC-2"),
])
def test_outside_the_scope_nothing_is_disclosed_and_the_refusal_is_audited(vault, capsys, case, why):
    start = str(dt.date.fromisoformat(vault["from"]) + dt.timedelta(days=case.get("start_shift", 0)))
    end = str(dt.date.fromisoformat(vault["to"]) + dt.timedelta(days=case.get("end_shift", 0)))
    code, rows, err = _query(vault, capsys, case.get("target", A_FORMS[1]), start, end,
                             case.get("warrant", "W-A"), case.get("officer", "PC-1"))
    assert code == EXIT_USAGE and rows == [] and why in err and "nothing was read" in err
    assert "7700900" not in err
    entry = _last_entry(vault)
    assert entry["action"] == "query_refused" and why in entry["reason"]
    assert "result_count" not in entry and "disclosed" not in entry


def test_an_expired_warrant_authorises_nothing(vault, capsys, monkeypatch):
    later = int((dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=40)).timestamp() * 1_000_000)
    monkeypatch.setattr(vault_cli, "now_us", lambda: later)
    code, rows, err = _query(vault, capsys, A, vault["from"], vault["to"])
    assert code == EXIT_USAGE and rows == [] and "expired" in err


def test_warrant_list_shows_state_but_never_targets_and_is_audited(vault, capsys):
    capsys.readouterr()
    assert main(["vault", "warrant", "list", *vault["base"]]) == EXIT_OK
    out = capsys.readouterr().out
    listed = {w["id"]: w for w in map(json.loads, out.splitlines())}
    assert listed["W-A"]["state"] == "active" and listed["W-R"]["state"] == "revoked"
    assert listed["W-A"]["targets"] == 1 and "7700900" not in out
    assert _last_entry(vault)["action"] == "warrant_list"
    entries = [json.loads(e) for _s, e in read_entries(vault["db"])]
    assert [e["action"] for e in entries][:3] == ["warrant_add", "warrant_add", "warrant_revoke"]
    schema = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "audit-entry.v1.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for entry in entries:  # every kind of entry this file makes (queries, refusals, warrant actions)
        assert not list(validator.iter_errors(entry)), entry["action"]


def test_a_warrant_id_is_registered_once_and_bad_targets_are_not_echoed(vault, capsys):
    args = ["--authority", "x", "--officer", "PC-1", "--from", vault["from"], "--to", vault["to"],
            "--expires", str(TODAY + dt.timedelta(days=3))]
    assert main(["vault", "warrant", "add", *vault["base"], "--id", "W-A", "--targets", A, *args]) == EXIT_USAGE
    capsys.readouterr()
    assert main(["vault", "warrant", "add", *vault["base"], "--id", "W-X", "--targets", f"{A},no-number-here",
                 *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "item 2" in err and "no-number-here" not in err


_days = st.integers(min_value=-45, max_value=0).map(lambda d: TODAY + dt.timedelta(days=d))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(POOL + A_FORMS), start=_days, length=st.integers(min_value=0, max_value=40),
       officer=st.sampled_from(["PC-1", "PC-1", "PC-9"]), warrant=st.sampled_from(["W-A", "W-A", "W-R"]))
def test_no_answer_ever_holds_a_record_outside_the_warrant_scope(vault, capsys, target, start, length, officer,
                                                                 warrant):
    end = start + dt.timedelta(days=length)
    code, rows, _err = _query(vault, capsys, target, str(start), str(end), warrant, officer)
    lo = dt.datetime.combine(dt.date.fromisoformat(vault["from"]), dt.time(), dt.timezone.utc)
    hi = dt.datetime.combine(dt.date.fromisoformat(vault["to"]) + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    facts = {vault["ref"](rid): (cli, dialled, when) for rid, cli, dialled, when in vault["facts"]}
    in_scope = (warrant == "W-A" and officer == "PC-1" and target in (A, *A_FORMS) and str(start) >= vault["from"]
                and str(end) <= vault["to"])
    assert code == (EXIT_OK if in_scope else EXIT_USAGE)
    for row in rows:
        cli, dialled, when = facts[row["record_ref"]]
        assert A in (cli, dialled) and lo <= when < hi  # the warrant's target, inside the warrant's window


def test_an_existing_output_file_is_made_private_before_raw_records_are_written(vault, capsys, tmp_path):
    answer = tmp_path / "answer.jsonl"
    answer.write_text("old content\n")
    answer.chmod(0o644)
    assert main(["vault", "query", *vault["base"], "--target", A, "--from", vault["from"], "--to", vault["to"],
                 "--warrant", "W-A", "--officer", "PC-1", "--output", str(answer)]) == EXIT_OK
    assert answer.stat().st_mode & 0o777 == 0o600
    rows = answer.read_bytes().splitlines()
    refs = {vault["ref"](rid) for rid, *_ in vault["facts"]}
    assert rows and all(orjson.loads(r)["record_ref"] in refs for r in rows)  # replaced, not appended
    link = tmp_path / "link.jsonl"
    link.symlink_to(answer)
    capsys.readouterr()
    assert main(["vault", "query", *vault["base"], "--target", A, "--from", vault["from"], "--to", vault["to"],
                 "--warrant", "W-A", "--officer", "PC-1", "--output", str(link)]) == 1
    assert "symlink" in capsys.readouterr().err
