"""Blind indexes, day keys and the keystore: the vault's cryptographic promises, one by one.

The keystore's tests run on both storage backends (a SQLite file, a PostgreSQL database:
``vault_backend``): crypto-shredding must hold wherever the day keys live.
"""
from __future__ import annotations

import hashlib
import hmac
import os

import polars as pl
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.keys import generate
from pipeline.vault.index import INDEX_SALT, BlindIndexer
from pipeline.vault.keystore import (DayCipher, KeyDestroyedError, Keystore, KeystoreError, RecordIntegrityError,
                                     day_date, day_number)


def test_index_column_equals_the_standard_library_and_the_spec(vault_keyring):
    indexer = BlindIndexer(vault_keyring.index_key)
    values = ["+447700900123", "+4915110021504", "HSBC"]
    days = [18262, 18263, 18262]
    col = pl.DataFrame({"v": values, "d": days}).select(indexer.column("msisdn", pl.col("d"), pl.col("v")))["d"]
    subkey = HKDF(hashes.SHA256(), 32, INDEX_SALT, b"index/msisdn").derive(vault_keyring.index_key.secret).hex()
    for value, day, got in zip(values, days, col.to_list()):
        mac = hmac.new(subkey.encode(), f"{day}:{value}".encode(), hashlib.sha256).hexdigest()
        assert got == indexer.one("msisdn", day, value) == int(mac[:8], 16) >> 1
        assert 0 <= got < 2 ** 31


def test_index_differs_per_day_per_kind_per_key_and_from_the_audit_digest(vault_keyring):
    indexer = BlindIndexer(vault_keyring.index_key)
    v = "234150001234567"
    assert indexer.one("imsi", 18262, v) != indexer.one("imsi", 18263, v)       # no linking across days
    assert indexer.one("imsi", 18262, v) != indexer.one("msisdn", 18262, v)     # no linking across kinds
    other = BlindIndexer(generate()[1].index_key)
    assert indexer.one("imsi", 18262, v) != other.one("imsi", 18262, v)
    digest = indexer.audit_digest("imsi", v)
    assert len(digest) == 64 and digest != indexer.audit_digest("imsi", v + "0")
    assert format(indexer.one("imsi", 18262, v), "x") not in digest
    with pytest.raises(ValueError):
        indexer.one("ip", 18262, "10.0.0.1")


def test_day_cipher_round_trip_and_binding():
    cipher = DayCipher(18262, "k1", bytes(range(32)))
    blobs = cipher.seal_many(["r1", "r2"], [b'{"a":1}', b"\xff raw"])
    assert [cipher.open("r1", blobs[0]), cipher.open("r2", blobs[1])] == [b'{"a":1}', b"\xff raw"]
    assert blobs[0][:12] != blobs[1][:12]  # a fresh nonce per record
    with pytest.raises(RecordIntegrityError):
        cipher.open("r2", blobs[0])                          # another record id
    with pytest.raises(RecordIntegrityError):
        DayCipher(18263, "k1", bytes(range(32))).open("r1", blobs[0])  # another day, same key
    with pytest.raises(RecordIntegrityError):
        cipher.open("r1", blobs[0][:-1])                     # truncated
    assert "k1" in repr(cipher) and bytes(range(32)).hex() not in repr(cipher)


def test_keystore_creates_reuses_and_destroys_day_keys(vault_backend, vault_keyring):
    path = vault_backend.keystore
    keystore = Keystore(path, vault_keyring, create=True)
    first = keystore.cipher_for_write(18262)
    blob = first.seal_many(["r"], [b"x"])[0]
    keystore.close()
    keystore = Keystore(path, vault_keyring)                 # reopened: the same key comes back unwrapped
    again = keystore.cipher_for_read(18262, first.kid)
    assert again.open("r", blob) == b"x"
    assert keystore.destroy([18262, 18999]) == [18262]
    with pytest.raises(KeyDestroyedError, match="destroyed"):
        keystore.cipher_for_read(18262, first.kid)
    assert keystore.cipher_for_write(18262) is None          # a purged day is never re-keyed
    assert set(keystore.destroyed()) == {18262, 18999}
    keystore.destroy([], before=18300)                       # the purge's cut-off: no day before it comes back
    assert keystore.cipher_for_write(18250) is None and keystore.cipher_for_write(18300) is not None
    keystore.destroy([], before=18000)                       # an older cut-off never lowers it
    assert keystore.cipher_for_write(18299) is None
    with pytest.raises(KeystoreError, match="no key"):
        keystore.cipher_for_read(18400, "zz")
    keystore.close()
    if vault_backend.kind == "sqlite":
        assert (os.stat(path).st_mode & 0o077) == 0
    assert vault_backend.day_keys() == {18300}               # the destroyed key's row is gone, not hidden


def test_the_keystore_file_alone_is_useless(vault_backend, tmp_path, vault_keyring):
    """Wrapped keys open only with the keyring: another keyring (even with the same id) is refused."""
    path = vault_backend.keystore
    keystore = Keystore(path, vault_keyring, create=True)
    keystore.cipher_for_write(18262)
    keystore.close()
    wrapped = bytes(vault_backend.keystore_sql("SELECT wrapped FROM day_keys")[0][0])
    assert len(wrapped) == 12 + 32 + 16  # nonce, AES-GCM(key), tag: not the key itself
    other = generate()[1]
    with pytest.raises(KeystoreError, match="belongs to vault key"):
        Keystore(path, other)
    same_id = type(other)(vault_keyring.vault_kid, other.private, other.index_key)
    with pytest.raises(KeystoreError, match="does not match this keyring's private key"):
        Keystore(path, same_id)
    with pytest.raises(KeystoreError, match="does not exist"):
        Keystore(tmp_path / "nope.keys", vault_keyring)


def test_an_altered_wrapped_key_is_reported(vault_backend, vault_keyring):
    path = vault_backend.keystore
    keystore = Keystore(path, vault_keyring, create=True)
    kid = keystore.cipher_for_write(18262).kid
    keystore.close()
    wrapped = bytes(vault_backend.keystore_sql("SELECT wrapped FROM day_keys")[0][0])
    vault_backend.keystore_sql("UPDATE day_keys SET wrapped = ?",
                               (wrapped[:20] + bytes([wrapped[20] ^ 1]) + wrapped[21:],))
    keystore = Keystore(path, vault_keyring)
    with pytest.raises(KeystoreError, match="cannot be unwrapped"):
        keystore.cipher_for_read(18262, kid)
    keystore.close()


def test_day_numbers():
    assert day_number(day_date(18293)) == 18293 and str(day_date(18293)) == "2020-02-01"


def test_a_running_writer_drops_a_cached_key_once_another_process_purged_its_day(vault_backend, vault_keyring):
    path = vault_backend.keystore
    sink_side = Keystore(path, vault_keyring, create=True)
    assert sink_side.cipher_for_write(18262) is not None     # cached by the long-running sink
    purge_side = Keystore(path, vault_keyring)                # `cdrpipe vault purge`, another connection
    purge_side.destroy([18262], before=18263)
    purge_side.close()
    assert sink_side.cipher_for_write(18262) is None          # not written under a destroyed key
    sink_side.close()
