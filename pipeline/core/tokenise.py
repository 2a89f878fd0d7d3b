"""Keyed, stable tokens: HMAC-SHA256 of a normalised value under a per-kind subkey.

Why this construction:

* One subkey per kind (HKDF-SHA256 from the current tokenisation key, ``info`` = kind)
  so an IMSI and an MSISDN that happen to share digits never share a token.
* The HMAC key is the subkey's lowercase hex text, encoded as ASCII (the form column
  engines such as ``polars-hash`` take), so the native core, the standard library and any
  other engine (Spark, SQL) agree byte for byte and can recompute a token from the spec.
* Truncated to 128 bits by default and prefixed with the key id (``k1:3f9a…``) so
  rotation is visible in the data and joins never mix keys silently.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline._native import tokens as native_tokens

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

if TYPE_CHECKING:
    from pipeline.keys import SecretKey, WorkerKeyring

#: Token kinds. ``msisdn`` covers calling and dialled numbers alike, so A->B calls join.
#: ``record`` tokenises record ids: that token is the record's ``record_ref``, the only form an
#: id takes outside the sealed payload (analytics, DLQ, envelope headers, message keys).
KINDS = ("msisdn", "imsi", "imei", "ip", "account", "record")
HKDF_SALT = b"cdrpipe/token/v1"
DEFAULT_TOKEN_BITS = 128


def derive_subkey(key: "SecretKey", kind: str) -> bytes:
    """The per-kind HMAC subkey: HKDF-SHA256(master, salt=cdrpipe/token/v1, info=kind)."""
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
    return HKDF(hashes.SHA256(), 32, HKDF_SALT, kind.encode("ascii")).derive(key.secret)


class Tokeniser:
    """Turns normalised values into tokens, natively for many or one at a time with the stdlib."""

    __slots__ = ("_hex_keys", "_prefix", "_chars", "kid", "record_prefix")

    def __init__(self, keyring: "WorkerKeyring", bits: int = DEFAULT_TOKEN_BITS, kid: str | None = None) -> None:
        if bits % 8 or not 64 <= bits <= 256:
            raise ValueError("token bits must be a multiple of 8 between 64 and 256")
        key = keyring.key(kid) if kid else keyring.current
        self.kid = key.kid
        self._prefix = key.kid + ":"
        self._chars = bits // 4
        self._hex_keys = {kind: derive_subkey(key, kind).hex() for kind in KINDS}
        # Record refs live under the record-ref key, which token-key rotation leaves alone.
        record_key = keyring.record_key or key
        self._hex_keys["record"] = derive_subkey(record_key, "record").hex()
        self.record_prefix = record_key.kid + ":"

    def __repr__(self) -> str:
        return f"Tokeniser(kid={self.kid!r}, bits={self._chars * 4})"

    @property
    def hex_keys(self) -> tuple[str, ...]:
        """The per-kind HMAC keys as hex text, in :data:`KINDS` order (handed to the native core)."""
        return tuple(self._hex_keys[kind] for kind in KINDS)

    def tokens(self, kind: str, canonical: Sequence[str | None]) -> list[str | None]:
        """Tokens of canonical values in the native core (None stays None): what analytics carries."""
        prefix = self.record_prefix if kind == "record" else self._prefix
        return native_tokens(self._hex_keys[kind], prefix, self._chars, list(canonical))

    def token_one(self, kind: str, canonical: str, month: str | None = None) -> str:
        """The same token as :meth:`tokens`, computed with the standard library's ``hmac``.

        ``month`` (``YYYY-MM``) gives the token a ``token:<kind>:monthly`` policy writes for records
        that started in that month: prefixed ``<kid>@YYYY-MM:``, under :func:`period_subkey`.
        """
        if month is None:
            key, prefix = self._hex_keys[kind], self.record_prefix if kind == "record" else self._prefix
        else:
            key, prefix = period_subkey(self._hex_keys[kind], month), f"{self.kid}@{month}:"
        mac = hmac.new(key.encode("ascii"), canonical.encode("utf-8"), hashlib.sha256)
        return prefix + mac.hexdigest()[: self._chars]


MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def period_subkey(hex_subkey: str, month: str) -> str:
    """A kind's HMAC key for one month, as hex text: HKDF-Expand(subkey, ``cdrpipe/period/YYYY-MM``, 32).

    Expand only: the subkey already is a uniformly random 32-byte HKDF output, so it serves as
    the pseudorandom key directly. Tokens of two months share nothing an analyst could join on.
    """
    if not MONTH.match(month):
        raise ValueError("a token month is YYYY-MM")
    return HKDFExpand(hashes.SHA256(), 32, f"cdrpipe/period/{month}".encode("ascii")).derive(
        bytes.fromhex(hex_subkey)).hex()


def months_between(start: datetime, end: datetime) -> list[str]:
    """``YYYY-MM`` of every month that ``[start, end)`` touches (UTC), oldest first."""
    if end <= start:
        return []
    last = end - timedelta(microseconds=1)
    y, m, out = start.year, start.month, []
    while (y, m) <= (last.year, last.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out
