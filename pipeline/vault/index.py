"""Blind indexes: find a target's records without storing any identifier in clear.

A record is indexed under each normalised party identifier (``cli`` and ``dialled`` as
``msisdn``, ``imsi``, ``imei``) as ``HMAC-SHA256(subkey, "<day>:<value>")`` cut to 31 bits:

* The subkey is HKDF-SHA256 of the vault-only index key with one ``info`` per purpose
  (``index/msisdn``, ``audit/imei``, …), so an index value never equals an audit value or
  a worker's analytics token, even for the same number.
* The day number is part of the MAC input, so someone holding the database cannot link a
  subscriber's records across days; a query recomputes one value per day of its window.
* 31 bits leave room for the record's row id in the same 63-bit integer, so a day's index is
  one SQLite rowid B-tree of ``bidx << 32 | rid`` keys (the smallest, fastest index SQLite
  has). A false hit is still rare (about 5 in 10^5 per day holding 100,000 distinct
  identifiers) and only costs one decrypt: the query re-checks every hit against the
  decrypted record, so it can never reach a warrant's answer. Short values also mean that
  many identifiers share each value, so the index itself says less.

The HMAC key is the subkey's lowercase hex text (as in ``pipeline.core.tokenise``), so the
Rust column path (``polars-hash``) and the standard library agree byte for byte.
"""
from __future__ import annotations

import hashlib
import hmac

import polars as pl
import polars_hash  # noqa: F401  (registers the .chash expression namespace)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.keys import SecretKey

INDEX_SALT = b"cdrpipe/vault-index/v1"
#: Identifier kinds a warrant can name, and the raw fields that carry each.
TARGET_KINDS = ("msisdn", "imsi", "imei")
PARTY_FIELDS: tuple[tuple[str, str], ...] = (("cli", "msisdn"), ("dialled", "msisdn"), ("imsi", "imsi"),
                                             ("imei", "imei"))
INDEX_HEX_CHARS = 8  # 32 bits of the MAC, shifted right once: 31 bits
#: A day's index key is ``bidx << RID_BITS | rid``: one positive 63-bit integer per (identifier, record).
RID_BITS = 32


class BlindIndexer:
    """Computes index values (per column or one at a time) and audit digests from the index key."""

    __slots__ = ("kid", "_secret", "_subkeys")

    def __init__(self, index_key: SecretKey) -> None:
        self.kid = index_key.kid
        self._secret = index_key.secret
        self._subkeys: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"BlindIndexer(kid={self.kid!r})"

    def _subkey_hex(self, purpose: str) -> str:
        """HKDF subkey for one purpose, as the hex text the HMAC uses (cached: a handful exist)."""
        key = self._subkeys.get(purpose)
        if key is None:
            key = HKDF(hashes.SHA256(), 32, INDEX_SALT, purpose.encode("ascii")).derive(self._secret).hex()
            self._subkeys[purpose] = key
        return key

    def column(self, kind: str, day: pl.Expr, canonical: pl.Expr) -> pl.Expr:
        """Index values (Int64, null where the value is null) of a column of canonical identifiers."""
        _check_kind(kind)
        message = pl.concat_str([day.cast(pl.String), pl.lit(":"), canonical])
        digest = message.chash.hmac_sha256(key=self._subkey_hex(f"index/{kind}"))
        return digest.str.slice(0, INDEX_HEX_CHARS).str.to_integer(base=16).cast(pl.Int64) // 2

    def one(self, kind: str, day: int, canonical: str) -> int:
        """The same value as :meth:`column` for one identifier on one day (standard library)."""
        _check_kind(kind)
        return _index_int(self._subkey_hex(f"index/{kind}"), f"{day}:{canonical}")

    def audit_digest(self, kind: str, canonical: str) -> str:
        """What the audit log records instead of the target: a keyed digest, useless without the vault key."""
        _check_kind(kind)
        key = self._subkey_hex(f"audit/{kind}").encode("ascii")
        return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def _index_int(key_hex: str, message: str) -> int:
    mac = hmac.new(key_hex.encode("ascii"), message.encode("utf-8"), hashlib.sha256).hexdigest()
    return int(mac[:INDEX_HEX_CHARS], 16) >> 1


def _check_kind(kind: str) -> None:
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(TARGET_KINDS)}")
