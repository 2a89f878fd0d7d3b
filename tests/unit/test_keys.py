"""Keyrings: two trust levels, 0600 files, env loading, no key bytes in errors."""
from __future__ import annotations

import json
import os
import stat

import pytest

from pipeline.cli import main
from pipeline.keys import (
    ENV_WORKER_KEYRING_JSON, KeyringError, load_vault_keyring, load_worker_keyring)


def test_generate_writes_two_private_files(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path)]) == 0
    for name in ("worker-keyring.json", "vault-keyring.json"):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o600, name
    worker = json.loads((tmp_path / "worker-keyring.json").read_text())
    assert "vault_private_key" not in worker and "index_key" not in worker  # workers can never decrypt the vault
    assert load_worker_keyring(tmp_path / "worker-keyring.json").vault_kid == \
        load_vault_keyring(tmp_path / "vault-keyring.json").vault_kid
    assert main(["keys", "generate", "--dir", str(tmp_path)]) == 2  # refuses to overwrite
    assert "already exist" in capsys.readouterr().err


def test_rotate_keeps_previous_keys(tmp_path):
    main(["keys", "generate", "--dir", str(tmp_path)])
    path = tmp_path / "worker-keyring.json"
    first = load_worker_keyring(path).current.kid
    assert main(["keys", "rotate", "--keyring", str(path)]) == 0
    rotated = load_worker_keyring(path)
    assert rotated.current.kid != first and [k.kid for k in rotated.token_keys][1] == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_env_json_loading(tmp_path, monkeypatch):
    main(["keys", "generate", "--dir", str(tmp_path)])
    monkeypatch.setenv(ENV_WORKER_KEYRING_JSON, (tmp_path / "worker-keyring.json").read_text())
    assert load_worker_keyring().current.kid


def test_errors_name_the_problem_not_the_key(tmp_path):
    main(["keys", "generate", "--dir", str(tmp_path)])
    doc = json.loads((tmp_path / "worker-keyring.json").read_text())
    secret = doc["token_keys"][0]["secret"]
    doc["token_keys"][0]["secret"] = secret[:-4] + "!!!!"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    bad.chmod(0o600)  # a keyring open to others is refused before it is read (test_permissions.py)
    with pytest.raises(KeyringError) as err:
        load_worker_keyring(bad)
    assert secret[:-4] not in str(err.value) and "base64" in str(err.value)
    with pytest.raises(KeyringError, match="vault keyring"):
        load_worker_keyring(tmp_path / "vault-keyring.json")
    with pytest.raises(KeyringError, match="keys generate"):
        load_worker_keyring(tmp_path / "missing.json")


def test_token_command(tmp_path, capsys):
    main(["keys", "generate", "--dir", str(tmp_path)])
    k = str(tmp_path / "worker-keyring.json")
    assert main(["token", "--keyring", k, "--kind", "msisdn", "07700 900123"]) == 0
    a = capsys.readouterr().out.strip()
    assert main(["token", "--keyring", k, "--kind", "msisdn", "+44 7700 900123"]) == 0
    assert capsys.readouterr().out.strip() == a
    assert main(["token", "--keyring", k, "--kind", "ip", "not-an-ip"]) == 2
    assert "not-an-ip" not in capsys.readouterr().err


def test_token_under_an_older_key(tmp_path, capsys):
    main(["keys", "generate", "--dir", str(tmp_path)])
    k = str(tmp_path / "worker-keyring.json")
    main(["token", "--keyring", k, "+447700900123"])
    before = capsys.readouterr().out.strip()
    old_kid = before.split(":")[0]
    main(["keys", "rotate", "--keyring", k])
    main(["token", "--keyring", k, "+447700900123"])
    assert capsys.readouterr().out.strip() != before
    assert main(["token", "--keyring", k, "--kid", old_kid, "07700 900123"]) == 0
    assert capsys.readouterr().out.strip() == before
    assert main(["token", "--keyring", k, "--kid", "nope", "07700 900123"]) == 1


def test_add_record_key_gives_old_keyrings_one_shared_key(tmp_path, capsys) -> None:
    """Keyrings from before the record-ref key get one, the same in both files; the rest is kept."""
    from pipeline.keys import write_private_json
    assert main(["keys", "generate", "--dir", str(tmp_path)]) == 0
    worker_path, vault_path = tmp_path / "worker-keyring.json", tmp_path / "vault-keyring.json"
    for path in (worker_path, vault_path):  # as written before the record-ref key existed
        doc = json.loads(path.read_text())
        del doc["record_key"]
        write_private_json(path, doc)
    audit_key = json.loads(vault_path.read_text())["audit_key"]
    assert load_worker_keyring(worker_path).record_key is None
    assert main(["keys", "add-record-key", "--keyring", str(worker_path), "--vault-keyring", str(vault_path)]) == 0
    worker, vault = load_worker_keyring(worker_path), load_vault_keyring(vault_path)
    assert worker.record_key is not None and worker.record_key == vault.record_key
    assert json.loads(vault_path.read_text())["audit_key"] == audit_key  # the signing key is kept
    assert oct(worker_path.stat().st_mode & 0o777) == oct(0o600) == oct(vault_path.stat().st_mode & 0o777)
    # Again: nothing changes. Copied when only one side has it. Two different keys: refused.
    assert main(["keys", "add-record-key", "--keyring", str(worker_path), "--vault-keyring", str(vault_path)]) == 0
    assert load_worker_keyring(worker_path).record_key == worker.record_key
    doc = json.loads(vault_path.read_text())
    del doc["record_key"]
    write_private_json(vault_path, doc)
    assert main(["keys", "add-record-key", "--keyring", str(worker_path), "--vault-keyring", str(vault_path)]) == 0
    assert load_vault_keyring(vault_path).record_key == worker.record_key
    other = json.loads(worker_path.read_text())
    other["record_key"] = {**other["record_key"], "secret": other["token_keys"][0]["secret"]}
    write_private_json(worker_path, other)
    capsys.readouterr()
    assert main(["keys", "add-record-key", "--keyring", str(worker_path), "--vault-keyring", str(vault_path)]) == 1
    err = capsys.readouterr().err
    assert "different record-ref keys" in err and other["record_key"]["secret"] not in err
