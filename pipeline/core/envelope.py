"""Sealed retention segments: workers encrypt for the vault and can never decrypt.

Each batch gets a fresh 256-bit data key, wrapped once with HPKE (RFC 9180: X25519,
HKDF-SHA256, AES-256-GCM) to the vault's public key. Raw records are sealed with
AES-256-GCM in *segments* of many records: one AEAD call per segment costs a few
hundredths of a microsecond per record, one per record about 1.7 µs. The segment
header (record refs, lengths, source coordinates, key ids) is the associated data, so a
record ref or an offset cannot be changed without the vault noticing. A record's id travels
only inside the ciphertext: the header carries its ``record_ref`` (the keyed token of the id,
see :mod:`pipeline.core.tokenise`), because switch ids embed numbers and start times.

Wire form (one JSON object per segment; schema ``schemas/retention-envelope.v2.json``)::

    {"type": "cdr.retention/2", "segment_id": ..., "sealed_at": ..., "vault_kid": ...,
     "wrapped_key": b64(HPKE enc || ct), "nonce": b64, "record_refs": [...], "lengths": [...],
     "source": {"name": ..., "partition": [...], "offset": [...]}, "ct": b64(AES-GCM)}

The plaintext is the records' raw bytes joined by ``\n`` (a contiguous slice of an NDJSON
batch, so sealing needs no copy); ``lengths`` splits it again exactly, even for a record
that itself contains a newline.
Nonces, data keys and the clock are injectable so test vectors are exact. The envelope is
written by the native core (``native/src/seal.rs``), here and when a batch is routed, so
the vectors test the code that seals production traffic; opening stays here, for the vault.
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey  # noqa: F401
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline._native import seal_segment

ENVELOPE_TYPE = "cdr.retention/2"
#: Envelopes of the first version carried the record ids in clear (``record_ids``); the vault
#: still opens them, so segments sealed before an upgrade are not lost.
LEGACY_ENVELOPE_TYPE = "cdr.retention/1"
HPKE_INFO = b"cdrpipe/retention/v1"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class EnvelopeError(Exception):
    """An envelope could not be opened: wrong key, altered bytes or a malformed header.

    One opaque error on purpose (like Fernet's ``InvalidToken``): the caller learns that it
    failed and which segment, never which byte or what the plaintext was.
    """


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Sealer:
    """Seals segments for one batch under one wrapped data key (make one per batch)."""

    vault_public: X25519PublicKey = field(repr=False)
    vault_kid: str
    data_key: bytes = field(default_factory=lambda: AESGCM.generate_key(bit_length=256), repr=False)
    nonce_source: Callable[[], bytes] = field(default=lambda: os.urandom(12), repr=False)
    clock: Callable[[], datetime] = field(default=_utc_now, repr=False)
    segment_ids: Callable[[], str] = field(default=lambda: secrets.token_hex(12), repr=False)
    wrapped_key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.data_key)
        self.wrapped_key = base64.b64encode(
            _SUITE.encrypt(self.data_key, self.vault_public, info=HPKE_INFO)).decode("ascii")

    def seal(self, plaintext: bytes | memoryview, record_refs: Sequence[str], lengths: Sequence[int],
             source: dict[str, Any]) -> bytes:
        """One segment envelope (JSON bytes, no newline) holding ``len(record_refs)`` records."""
        return seal_segment(self.data_key, self.nonce_source(), self.segment_ids(),
                            self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"), self.vault_kid,
                            self.wrapped_key, list(record_refs), list(lengths), source["name"],
                            source.get("partition"), source.get("offset"), bytes(plaintext))


@dataclass(frozen=True)
class OpenedRecord:
    """One raw record out of a segment, with where it came from."""

    record_ref: str
    raw: bytes
    source_name: str
    partition: int | None
    offset: int | None


@dataclass
class OpenedSegment:
    """A segment's records as columns (what the vault ingests: no object per record)."""

    record_refs: list[str]
    raws: list[bytes]
    source_name: str
    partitions: list[int | None]
    offsets: list[int | None]

    def records(self) -> list[OpenedRecord]:
        name = self.source_name
        return [OpenedRecord(rid, raw, name, part, off)
                for rid, raw, part, off in zip(self.record_refs, self.raws, self.partitions, self.offsets)]


def open_segment(envelope: bytes | dict[str, Any], vault_private: X25519PrivateKey,
                 vault_kid: str | None = None) -> list[OpenedRecord]:
    """Decrypt and split one segment; raises :class:`EnvelopeError` on any failure."""
    return open_segment_columns(envelope, vault_private, vault_kid).records()


def _b64(text: Any) -> bytes:
    """Strict base64 (only the alphabet and correct padding), as ``b64decode(validate=True)``, faster."""
    return binascii.a2b_base64(text, strict_mode=True)


def open_segment_columns(envelope: bytes | dict[str, Any], vault_private: X25519PrivateKey,
                         vault_kid: str | None = None) -> OpenedSegment:
    """:func:`open_segment` as columns; raises :class:`EnvelopeError` on any failure."""
    try:
        header = dict(orjson.loads(envelope)) if isinstance(envelope, (bytes, bytearray, str)) else dict(envelope)
        kind = header.get("type")
        if kind not in (ENVELOPE_TYPE, LEGACY_ENVELOPE_TYPE):
            raise EnvelopeError("not a cdr.retention/2 (or /1) envelope")
        if vault_kid is not None and header.get("vault_kid") != vault_kid:
            raise EnvelopeError(f"segment sealed for vault key {header.get('vault_kid')!r}, "
                                f"this keyring holds {vault_kid!r}")
        ct = _b64(header.pop("ct"))
        data_key = _SUITE.decrypt(_b64(header["wrapped_key"]), vault_private, info=HPKE_INFO)
        aad = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        plaintext = AESGCM(data_key).decrypt(_b64(header["nonce"]), ct, aad)
        ids = header["record_refs" if kind == ENVELOPE_TYPE else "record_ids"]
        lengths, source = header["lengths"], header["source"]
    except EnvelopeError:
        raise
    except (InvalidTag, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise EnvelopeError("segment cannot be opened: wrong vault key or altered ciphertext/header") from None
    except Exception:  # HPKE reports a wrong key with its own exception types
        raise EnvelopeError("segment cannot be opened: wrong vault key or altered ciphertext/header") from None
    if len(ids) != len(lengths) or sum(lengths) + len(lengths) - 1 != len(plaintext):
        raise EnvelopeError("segment header does not match its plaintext")
    # Split on the newlines when they are exactly the separators (the usual case: one C-level
    # split); a record that itself holds a newline makes the pieces differ, and then the
    # lengths cut the plaintext record by record.
    raws = plaintext.split(b"\n")
    if list(map(len, raws)) != lengths:
        raws, pos = [], 0
        view = memoryview(plaintext)
        for n in lengths:
            raws.append(bytes(view[pos:pos + n]))
            pos += n + 1
    return OpenedSegment(list(ids), raws, source.get("name", ""), _expand(source.get("partition"), len(ids)),
                         _expand(source.get("offset"), len(ids)))


def _expand(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, list) else [value] * n
