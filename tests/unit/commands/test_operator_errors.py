"""An operator's mistake ends in exit 1 and one line that says what to do: never a traceback.

One test per mistake: an --out-dir, a vault --db or an --output that cannot be written (under a
regular file, under /proc, a directory given as the file), a missing suppressions file, a
suppressions line without a token, a directory given as --input. Paths under a regular file and
under /proc fail for root too (the tests do not depend on running unprivileged).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import EXIT_FATAL, EXIT_OK, EXIT_USAGE, main
from pipeline.synthetic import write_sample

PROC = Path("/proc/cdrpipe-no-such-dir")  # /proc takes no new entries, whoever runs the test


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mistakes")
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == EXIT_OK
    sample = root / "sample.jsonl"
    write_sample(sample, 60, seed=31)
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input", str(sample),
                 "--out-dir", str(root / "out"), "--quiet"]) == EXIT_OK
    db = root / "vault.db"
    assert main(["vault", "ingest", "--keyring", str(root / "keys" / "vault-keyring.json"), "--db", str(db),
                 "--input", str(root / "out" / "retention.jsonl"), "--quiet"]) == EXIT_OK
    assert main(["vault", "warrant", "add", "--keyring", str(root / "keys" / "vault-keyring.json"), "--db", str(db),
                 "--id", "W-88", "--authority", "test", "--officer", "LI-3", "--targets", "+447911123456",
                 "--from", "2020-01-01", "--to", "2099-01-01", "--expires", "2099-12-31", "--operator", "op"]) == 0
    regular = root / "a-regular-file"
    regular.write_text("not a directory\n")
    return {"root": root, "worker": root / "keys" / "worker-keyring.json",
            "vault": root / "keys" / "vault-keyring.json", "sample": sample, "db": db, "file": regular,
            "analytics": root / "out" / "analytics.jsonl"}


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if ": warning:" not in line]  # e.g. the vault's "no witness"
    assert len(lines) == 1, err
    return code, lines[0]


def _process(world, capsys, *extra: str, out_dir: Path | str | None = None, inp: Path | str | None = None):
    return _run(capsys, ["process", "--keyring", str(world["worker"]), "--input", str(inp or world["sample"]),
                         "--out-dir", str(out_dir or world["root"] / "o"), "--quiet", *extra])


# -------------------------------------------------------------------- --out-dir

@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "is-a-file"])
def test_an_unwritable_out_dir(world, capsys, where) -> None:
    out_dir = {"under-a-file": world["file"] / "out", "under-proc": PROC / "out", "is-a-file": world["file"]}[where]
    code, line = _process(world, capsys, out_dir=out_dir)
    assert code == EXIT_FATAL
    assert f"--out-dir {out_dir}" in line and "give a writable directory" in line
    if where != "under-proc":
        assert "file, not a directory" in line
    assert world["file"].read_text() == "not a directory\n"


# -------------------------------------------------------------------- vault --db

@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
def test_an_unwritable_vault_db(world, capsys, where) -> None:
    db = {"under-a-file": world["file"] / "vault.db", "under-proc": PROC / "vault.db"}[where]
    code, line = _run(capsys, ["vault", "ingest", "--keyring", str(world["vault"]), "--db", str(db),
                               "--input", str(world["root"] / "out" / "retention.jsonl"), "--quiet"])
    assert code == EXIT_FATAL
    assert str(db) in line and "directory you can write to" in line


# -------------------------------------------------------------------- --output

def test_an_unwritable_vault_query_output(world, capsys) -> None:
    out = world["file"] / "delivery.jsonl"
    code, line = _run(capsys, ["vault", "query", "--keyring", str(world["vault"]), "--db", str(world["db"]),
                               "--target", "+447911123456", "--from", "2026-01-01", "--to", "2026-12-31",
                               "--warrant", "W-88", "--officer", "LI-3", "--retention", "100y", "--output", str(out)])
    assert code == EXIT_FATAL
    assert f"--output {out}" in line and "file, not a directory" in line and "symlink" not in line
    assert "7911123456" not in line


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_an_unwritable_subject_access_output(world, capsys, where) -> None:
    out = world["file"] / "sar.json" if where == "under-a-file" else world["root"]
    code, line = _run(capsys, ["vault", "subject-access", "--keyring", str(world["vault"]), "--db", str(world["db"]),
                               "--request-id", "sar-9", "--subject", "+447911123456", "--from", "2026-01-01",
                               "--to", "2026-02-01", "--custodian", "c-1", "--output", str(out)])
    assert code == EXIT_FATAL and f"--output {out}" in line and "7911123456" not in line


def test_an_unwritable_privacy_export_output(world, capsys) -> None:
    out = world["file"] / "export.json"
    code, line = _run(capsys, ["privacy", "export", "--request-id", "sar-10", "--subject", "+447911123456",
                               "--keyring", str(world["worker"]), "--from", "2026-01-01", "--to", "2026-02-01",
                               "--analytics", str(world["analytics"]), "--without-vault", "--output", str(out)])
    assert code == EXIT_FATAL and f"--output {out}" in line and "7911123456" not in line


def test_an_unwritable_suppressions_export_output_fails_before_kafka(world, capsys) -> None:
    out = world["file"] / "suppressions.jsonl"
    code, line = _run(capsys, ["privacy", "suppressions", "--bootstrap-servers", "127.0.0.1:1", "--timeout", "1",
                               "--output", str(out)])
    assert code == EXIT_FATAL and f"--output {out}" in line


def test_an_unwritable_audit_key_out_and_keys_dir(world, capsys) -> None:
    code, line = _run(capsys, ["vault", "audit", "keygen", "--out", str(PROC / "audit-key.json")])
    assert code == EXIT_FATAL and "--out" in line
    code, line = _run(capsys, ["keys", "generate", "--dir", str(world["file"] / "keys")])
    assert code == EXIT_FATAL and "--dir" in line and "file, not a directory" in line


# -------------------------------------------------------------------- suppressions

def test_a_missing_suppressions_file(world, capsys) -> None:
    missing = world["root"] / "objections-2026-11.jsonl"
    code, line = _process(world, capsys, "--suppressions", str(missing))
    assert code == EXIT_FATAL
    assert f"--suppressions {missing}" in line and "cdrpipe privacy suppressions" in line


def test_a_suppressions_line_without_a_token(world, capsys, tmp_path) -> None:
    supp = tmp_path / "supp.jsonl"
    supp.write_text('# exported 2026-11-30\n{"subject": "+447911123456", "active": true}\n')
    code, line = _process(world, capsys, "--suppressions", str(supp))
    assert code == EXIT_FATAL
    assert f"{supp} line 2" in line and '"token"' in line
    assert "7911123456" not in line and "subject" not in line
    supp.write_text('{"token": "k1:' + "0f" * 16 + '"\n')  # cut short: not JSON
    code, line = _process(world, capsys, "--suppressions", str(supp))
    assert code == EXIT_FATAL and f"{supp} line 1: not valid JSON" in line and "0f0f" not in line


# -------------------------------------------------------------------- --input

def test_a_directory_as_input_says_it_is_a_directory(world, capsys) -> None:
    code, line = _process(world, capsys, inp=world["root"] / "out")
    assert code == EXIT_USAGE
    assert "is a directory" in line and "does not exist" not in line
    code, line = _process(world, capsys, inp=world["root"] / "nothing-here.jsonl")
    assert code == EXIT_USAGE and "does not exist" in line
    code, line = _run(capsys, ["vault", "ingest", "--keyring", str(world["vault"]), "--db", str(world["db"]),
                               "--input", str(world["root"] / "out"), "--quiet"])
    assert code == EXIT_USAGE and "is a directory" in line


def test_a_directory_of_call_files_is_read_by_freeswitch_json(world, capsys, tmp_path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    doc = {"variables": {"uuid": "c0ffee00-1", "caller_id_number": "+447911123456", "destination_number":
                         "+442079460321", "start_epoch": "1764064800", "billsec": "12"}}
    (calls / "a.cdr.json").write_text(json.dumps(doc, indent=2))
    capsys.readouterr()
    code = main(["process", "--keyring", str(world["worker"]), "--input", str(calls), "--format", "freeswitch-json",
                 "--out-dir", str(tmp_path / "o"), "--quiet"])
    out = capsys.readouterr()
    assert code == EXIT_OK and "is a directory" not in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["in"] == 1
