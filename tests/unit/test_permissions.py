"""Key files must be private (refused like ssh refuses an open key), outputs get the modes their content needs.

What could fail: a keyring readable by group or others loads with no word; the refusal prints a
traceback, a key byte, or no chmod to run; the escape hatch is missing on a command that loads a
key file; a keyring given as environment JSON (not a file) is refused; analytics or the DLQ are
world-readable; retention (raw records, sealed) or the vault's files are readable by a group.
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import EXIT_FATAL, EXIT_OK, build_parser, main
from pipeline.key_permissions import ENV_INSECURE_KEY_PERMISSIONS, FLAG, KEY_FILE_OPTIONS
from pipeline.keys import ENV_WORKER_KEYRING_JSON
from pipeline.synthetic import write_sample


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, so that modes are the program's doing, not the test runner's."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.delenv(ENV_INSECURE_KEY_PERMISSIONS, raising=False)
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    sample = tmp_path / "in.jsonl"
    write_sample(sample, 40, seed=23)
    return {"worker": tmp_path / "keys" / "worker-keyring.json", "vault": tmp_path / "keys" / "vault-keyring.json",
            "sample": sample, "root": tmp_path}


def _secrets(path: Path) -> list[str]:
    """Every base64 secret in a keyring file (none may appear in a message)."""
    doc = json.loads(path.read_text())
    found: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k in ("secret", "x25519", "ed25519") and isinstance(x, str):
                    found.append(x)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(doc)
    assert found
    return found


def _one_line_refusal(err: str, path: Path, keyring: Path) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"run `chmod 600 {path}`" in lines[0]
    assert FLAG in lines[0] and ENV_INSECURE_KEY_PERMISSIONS in lines[0]
    for secret in _secrets(keyring):
        assert secret not in err and secret[:12] not in err


def test_keys_generate_and_rotate_write_private_files(keys, umask_022) -> None:
    for name in ("worker", "vault"):
        assert stat.S_IMODE(keys[name].stat().st_mode) == 0o600
    assert main(["keys", "rotate", "--keyring", str(keys["worker"])]) == EXIT_OK
    assert stat.S_IMODE(keys["worker"].stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_a_worker_keyring_open_to_group_or_others_is_refused_with_the_chmod(keys, capsys, mode) -> None:
    keys["worker"].chmod(mode)
    code = main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(keys["root"] / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_FATAL
    _one_line_refusal(err, keys["worker"], keys["worker"])
    assert f"mode {mode:04o}" in err
    assert not (keys["root"] / "out").exists()  # refused before anything is written
    keys["worker"].chmod(0o600)
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(keys["root"] / "out"), "--quiet"]) == EXIT_OK


def test_every_command_that_loads_a_key_file_refuses_an_open_one(keys, capsys) -> None:
    root, worker, vault = keys["root"], keys["worker"], keys["vault"]
    analytics = root / "analytics.jsonl"
    analytics.write_text("")
    worker.chmod(0o644)
    vault.chmod(0o644)
    commands = {
        "token": (["token", "--keyring", str(worker), "+447700900123"], worker),
        "keys rotate": (["keys", "rotate", "--keyring", str(worker)], worker),
        "run": (["run", "--bootstrap-servers", "127.0.0.1:1", "--keyring", str(worker), "--worker-id", "w1"], worker),
        "privacy export": (["privacy", "export", "--request-id", "sar-1", "--subject", "+447700900123",
                            "--keyring", str(worker), "--from", "2026-01-01", "--to", "2026-02-01",
                            "--analytics", str(analytics), "--without-vault", "--output", str(root / "e.json")],
                           worker),
        "vault status": (["vault", "status", "--keyring", str(vault), "--db", str(root / "v.db")], vault),
        "vault ingest": (["vault", "ingest", "--keyring", str(vault), "--db", str(root / "v.db"),
                          "--input", str(analytics), "--quiet"], vault),
    }
    for name, (argv, keyring) in commands.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == EXIT_FATAL, name
        _one_line_refusal(err, keyring, keyring)
    assert not (root / "v.db").exists() and not (root / "e.json").exists()


def test_an_audit_key_file_open_to_others_is_refused(keys, capsys) -> None:
    audit_key = keys["root"] / "audit-key.json"
    assert main(["vault", "audit", "keygen", "--out", str(audit_key)]) == EXIT_OK
    assert stat.S_IMODE(audit_key.stat().st_mode) == 0o600
    capsys.readouterr()
    db = keys["root"] / "v.db"
    assert main(["vault", "init", "--keyring", str(keys["vault"]), "--db", str(db)]) == EXIT_OK
    capsys.readouterr()
    audit_key.chmod(0o640)
    code = main(["vault", "warrant", "list", "--keyring", str(keys["vault"]), "--db", str(db),
                 "--operator", "op-1", "--audit-key", str(audit_key)])
    err = capsys.readouterr().err
    assert code == EXIT_FATAL
    _one_line_refusal(err, audit_key, audit_key)
    assert main(["vault", "warrant", "list", "--keyring", str(keys["vault"]), "--db", str(db),
                 "--operator", "op-1", "--audit-key", str(audit_key), FLAG]) == EXIT_OK


def test_the_flag_and_the_environment_variable_let_a_mounted_secret_load(keys, capsys, monkeypatch) -> None:
    keys["worker"].chmod(0o644)  # as Kubernetes mounts a secret by default
    argv = ["token", "--keyring", str(keys["worker"]), "+447700900123"]
    assert main(argv) == EXIT_FATAL
    capsys.readouterr()
    assert main([*argv, FLAG]) == EXIT_OK
    token = capsys.readouterr().out.strip()
    assert main(argv) == EXIT_FATAL  # the flag lasts one command
    capsys.readouterr()
    monkeypatch.setenv(ENV_INSECURE_KEY_PERMISSIONS, "1")
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out.strip() == token
    monkeypatch.setenv(ENV_INSECURE_KEY_PERMISSIONS, "0")
    assert main(argv) == EXIT_FATAL


def test_a_keyring_given_as_environment_json_is_not_a_file_and_is_not_checked(keys, capsys, monkeypatch) -> None:
    keys["worker"].chmod(0o644)
    monkeypatch.setenv(ENV_WORKER_KEYRING_JSON, keys["worker"].read_text())
    assert main(["token", "+447700900123"]) == EXIT_OK
    assert ":" in capsys.readouterr().out


def test_every_command_with_a_key_file_option_has_the_flag() -> None:
    parser = build_parser()
    seen = []

    def walk(p) -> None:
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub)
        if any(o in p._option_string_actions for o in KEY_FILE_OPTIONS):
            seen.append(p.prog)
            assert FLAG in p._option_string_actions, p.prog
    walk(parser)
    for prog in ("cdrpipe process", "cdrpipe run", "cdrpipe token", "cdrpipe keys rotate", "cdrpipe vault query",
                 "cdrpipe vault subject-access", "cdrpipe privacy export", "cdrpipe privacy worker"):
        assert prog in seen


def test_outputs_have_the_modes_their_content_needs(keys, umask_022, capsys) -> None:
    out = keys["root"] / "out"
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(out), "--quiet"]) == EXIT_OK
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"analytics.jsonl": 0o640, "dlq.jsonl": 0o640, "retention.jsonl": 0o600}
    # A re-run over files someone opened up gets the same modes (new files, not the old ones).
    for p in out.iterdir():
        p.chmod(0o666)
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(out), "--quiet"]) == EXIT_OK
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == modes
    capsys.readouterr()


def test_a_symlinked_retention_output_is_made_private_before_it_is_written(keys, umask_022, capsys) -> None:
    out = keys["root"] / "out"
    out.mkdir()
    target = keys["root"] / "elsewhere.jsonl"
    target.write_bytes(b"old\n")
    target.chmod(0o644)
    (out / "retention.jsonl").symlink_to(target)
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(out), "--quiet"]) == EXIT_OK
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_bytes() != b"old\n"


def test_the_vault_files_are_private(keys, umask_022, capsys) -> None:
    out = keys["root"] / "out"
    assert main(["process", "--keyring", str(keys["worker"]), "--input", str(keys["sample"]),
                 "--out-dir", str(out), "--quiet"]) == EXIT_OK
    vault_dir = keys["root"] / "vault"
    assert main(["vault", "ingest", "--keyring", str(keys["vault"]), "--db", str(vault_dir / "vault.db"),
                 "--input", str(out / "retention.jsonl"), "--quiet"]) == EXIT_OK
    held = {p.name: stat.S_IMODE(p.stat().st_mode) for p in vault_dir.iterdir()
            if p.is_file() and p.stat().st_size > 0}
    assert {"vault.db", "vault.db.keys"} <= set(held)
    assert all(mode & 0o077 == 0 for mode in held.values()), held
    capsys.readouterr()
