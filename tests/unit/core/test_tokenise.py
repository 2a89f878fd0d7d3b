"""Tokens: keyed, stable, per kind, and equal between the native core and the stdlib."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, HKDF_SALT, Tokeniser, derive_subkey
from pipeline.keys import rotate


def test_native_tokens_equal_stdlib_hmac(worker_keyring):
    tok = Tokeniser(worker_keyring)
    values = ["+447700900123", "+12025550123", "HSBC", "999", "ünïcode"]
    assert tok.tokens("msisdn", values) == [tok.token_one("msisdn", v) for v in values]


def test_token_construction_is_the_documented_one(worker_keyring):
    key = worker_keyring.current
    subkey = HKDF(hashes.SHA256(), 32, HKDF_SALT, b"msisdn").derive(key.secret)
    expected = key.kid + ":" + hmac.new(subkey.hex().encode(), b"+447700900123", hashlib.sha256).hexdigest()[:32]
    assert Tokeniser(worker_keyring).token_one("msisdn", "+447700900123") == expected


def test_kinds_use_different_subkeys(worker_keyring):
    tok = Tokeniser(worker_keyring)
    assert tok.token_one("msisdn", "234150000000001") != tok.token_one("imsi", "234150000000001")
    assert derive_subkey(worker_keyring.current, "ip") != derive_subkey(worker_keyring.current, "imei")


def test_nulls_stay_null(worker_keyring):
    tok = Tokeniser(worker_keyring)
    out = tok.tokens("msisdn", ["+447700900123", None])
    assert out[1] is None and out[0].startswith(worker_keyring.current.kid + ":")


def test_bits_and_key_id_prefix(worker_keyring):
    t = Tokeniser(worker_keyring, bits=64).token_one("ip", "10.0.0.1")
    kid, digest = t.split(":")
    assert kid == worker_keyring.current.kid and len(digest) == 16
    with pytest.raises(ValueError):
        Tokeniser(worker_keyring, bits=12)


def test_rotation_changes_tokens_and_keeps_old_key(worker_keyring):
    rotated = rotate(worker_keyring)
    new, old = Tokeniser(rotated), Tokeniser(rotated, kid=worker_keyring.current.kid)
    assert old.token_one("msisdn", "+447700900123") == Tokeniser(worker_keyring).token_one("msisdn", "+447700900123")
    assert new.token_one("msisdn", "+447700900123") != old.token_one("msisdn", "+447700900123")
    assert new.kid != old.kid


def test_secrets_never_in_repr(worker_keyring):
    keyring = rotate(worker_keyring)  # a current and a previous key
    tok = Tokeniser(keyring)
    secrets = [k.secret for k in keyring.token_keys]
    forms = {*(s.hex() for s in secrets), *(repr(s) for s in secrets), *(base64.b64encode(s).decode() for s in secrets),
             *tok.hex_keys}
    texts = [repr(tok), str(tok), repr(keyring), str(keyring), *map(repr, keyring.token_keys),
             *map(str, keyring.token_keys)]
    for text in texts:
        assert not any(form in text for form in forms), text
    for key in keyring.token_keys:
        assert repr(key) == str(key) == f"SecretKey(kid={key.kid!r}, secret=<redacted>)"
    assert repr(tok) == f"Tokeniser(kid={keyring.current.kid!r}, bits={DEFAULT_TOKEN_BITS})"
