"""Write the token and envelope test vectors (run once; the files are then frozen).

    python tests/vectors/make_vectors.py

The values come from the pipeline's own code; ``tests/unit/core/test_vectors.py`` then checks them
against an independent recomputation of the documented constructions (stdlib ``hmac`` and a
hand-written HKDF for tokens, plain AES-GCM and HPKE for envelopes), so a vector that merely
echoes a bug cannot pass.

Every input is fixed except one: HPKE encapsulation is randomised, so ``wrapped_key`` is the
one produced by the run that wrote the file. It is part of the AES-GCM associated data, so
rerunning this script changes ``wrapped_key`` and the tag at the end of ``ct``. Rerun only
when the format changes on purpose, and commit the new files with that change.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pipeline.core.envelope import HPKE_INFO, Sealer
from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.core.tokenise import HKDF_SALT, KINDS, Tokeniser, derive_subkey
from pipeline.keys import SecretKey, WorkerKeyring

import polars as pl

HERE = Path(__file__).resolve().parent
REGION = "GB"
BITS = 128

#: Two fixed tokenisation keys: current first, then a previous one (rotation).
TOKEN_KEYS = (
    ("kvec2026a", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
    ("kvec2025z", hashlib.sha256(b"cdrpipe test vector: previous token key").hexdigest()),
)
VAULT_KID = "vvec2026a"
VAULT_PRIVATE_HEX = hashlib.sha256(b"cdrpipe test vector: vault x25519 private key").hexdigest()

#: (kind, raw input) under the current key; inputs of one subscriber are grouped.
TOKEN_INPUTS = [
    # One UK subscriber in eight formats: one canonical value, one token.
    *(("msisdn", v) for v in ("+447700900123", "07700 900123", "0044 7700900123", "+44 7700 900123",
                              "tel:+44-7700-900123", "(+44) 7700-900123", "447700900123",
                              "\uff10\uff17\uff17\uff10\uff10 \uff19\uff10\uff10\uff11\uff12\uff13")),
    *(("msisdn", v) for v in ("+1 415 555 0100", "0014155550100")),
    ("msisdn", "999"), ("msisdn", "Monzo"), ("msisdn", "MONZO"), ("msisdn", "anonymous"),
    *(("imsi", v) for v in ("234150929725379", "234 15 0929725379", "234-15-0929725379")),
    *(("imei", v) for v in ("353911100612937", "35391110061293", "35-391110-061293-7", "3539111006129301")),
    *(("ip", v) for v in ("203.0.113.7", "203.0.113.7:5060", "::ffff:203.0.113.7", "[::FFFF:203.0.113.7]:5060")),
    *(("ip", v) for v in ("2001:DB8::0:1", "[2001:db8::1]:5060", "2001:0db8:0000:0000:0000:0000:0000:0001")),
    ("ip", "fe80::1%eth0"),
    *(("account", v) for v in ("acct-42", "  acct-42 ")),
    ("account", "Konto\u0301-7"),  # decomposed ó: NFKC composes it (UTF-8 c3 b3)
    # Record ids (their token is the record_ref): taken as written; a bare number is no id.
    *(("record", v) for v in ("r-000000001", "447700900123-20261126101542", "1764151542.123", "cdr.raw:1:16",
                              "447700900123")),
]
#: The same subscribers under the previous key: same canonical values, different tokens.
PREVIOUS_KEY_INPUTS = [("msisdn", "+447700900123"), ("msisdn", "07700 900123"), ("imsi", "234150929725379"),
                       ("imei", "353911100612937"), ("ip", "203.0.113.7"), ("account", "acct-42"),
                       ("record", "r-000000001")]

CLOCK = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
ENVELOPE_CASES = [
    {
        "name": "segment: four records from two Kafka partitions",
        "data_key_hex": hashlib.sha256(b"cdrpipe test vector: data key 1").hexdigest(),
        "nonce_hex": "000102030405060708090a0b",
        "segment_id": "5e9a11d0c0ffee0000000001",
        "source": {"name": "cdr.raw", "partition": [0, 0, 1, 1], "offset": [10, 11, 16, 17]},
        # The records' ids (inside ct); the header carries their record_refs (tokens of kind record).
        "record_ids": ["r-000000001", "r-000000002", "cdr.raw:1:16", "cdr.raw:1:17"],
        "records": [
            b'{"record_id":"r-000000001","cli":"+447700900123","dialled":"07700 900456",'
            b'"start":"2026-01-02T03:04:05Z","duration":42,"imsi":"234150929725379"}',
            b'{"record_id":"r-000000002","cli":"anonymous","dialled":"999","start":1767323045,\n'
            b'"duration":0}',  # a record with its own newline: lengths split it back
            b"",  # an empty line is a record too (it goes to the DLQ, and to the vault)
            b'{"cli":"Jos\xe9"}',  # not UTF-8: the vault keeps the bytes unaltered
        ],
    },
    {
        "name": "DLQ payload: one record, single partition and offset",
        "data_key_hex": hashlib.sha256(b"cdrpipe test vector: data key 2").hexdigest(),
        "nonce_hex": "f0e1d2c3b4a5968778695a4b",
        "segment_id": "5e9a11d0c0ffee0000000002",
        "source": {"name": "cdrs.jsonl", "partition": 0, "offset": 9},
        "record_ids": ["cdrs.jsonl:0:9"],
        "records": [b'\xef\xbb\xbf{"record_id":"r-000000009","cli":"07700 900123","dialled":"+447700900456",'
                    b'"start":"2026-01-02T03:04:05Z","duration":7}'],
    },
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def token_vectors() -> dict:
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(VAULT_PRIVATE_HEX))
    keys = tuple(SecretKey(kid, bytes.fromhex(secret)) for kid, secret in TOKEN_KEYS)
    keyring = WorkerKeyring(keys, VAULT_KID, private.public_key())
    phones = PhoneNormaliser(REGION)

    def rows(inputs, kid):
        tok = Tokeniser(keyring, BITS, kid=kid)
        out = []
        for kind, raw in inputs:
            canonical, cls = normalise_column(kind, pl.Series([raw], dtype=pl.String), phones)
            value = canonical[0]
            row = {"kid": kid, "kind": kind, "input": raw, "canonical": value}
            if cls is not None:
                row["class"] = cls[0]
            row["token"] = tok.token_one(kind, value) if value is not None else None
            out.append(row)
        return out

    return {
        "description": "Token test vectors for cdrpipe (pipeline/core/tokenise.py). Anyone who holds the key can "
                       "recompute a token from these steps, e.g. in Spark or SQL.",
        "construction": {
            "subkey": "HKDF-SHA256(ikm=key secret, salt=ASCII 'cdrpipe/token/v1', info=ASCII kind, length=32)",
            "hmac_key": "the subkey as lowercase hex text, encoded as ASCII (64 bytes)",
            "token": "kid + ':' + lowercase hex(HMAC-SHA256(hmac_key, UTF-8 canonical value))[: bits / 4]",
            "normalisation": "msisdn: E.164 with the default region (withheld -> null, alphanumeric senders "
                             "upper-cased, short codes and extensions as digits); imsi: digits; imei: first 14 "
                             "digits; ip: canonical text, IPv4-mapped as IPv4, port and zone removed; account: "
                             "NFKC, trimmed; record: the id as written (1-128 of A-Z a-z 0-9 . _ : / @ + -, not a bare "
                             "number: such an id has no token, the router uses <source>:<partition>:<offset>)",
        },
        "hkdf_salt": HKDF_SALT.decode("ascii"),
        "region": REGION,
        "bits": BITS,
        "keys": [{"kid": k.kid, "secret_hex": k.secret.hex(),
                  "subkeys_hex": {kind: derive_subkey(k, kind).hex() for kind in KINDS}} for k in keys],
        "vectors": rows(TOKEN_INPUTS, keys[0].kid) + rows(PREVIOUS_KEY_INPUTS, keys[1].kid),
    }


def envelope_vectors() -> dict:
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(VAULT_PRIVATE_HEX))
    public_hex = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    keyring = WorkerKeyring(tuple(SecretKey(kid, bytes.fromhex(secret)) for kid, secret in TOKEN_KEYS), VAULT_KID,
                            private.public_key())
    refs = Tokeniser(keyring, BITS)  # the current key, as the router uses
    cases = []
    for case in ENVELOPE_CASES:
        record_refs = [refs.token_one("record", rid) for rid in case["record_ids"]]
        records = case["records"]
        nonce = bytes.fromhex(case["nonce_hex"])
        sealer = Sealer(private.public_key(), VAULT_KID, data_key=bytes.fromhex(case["data_key_hex"]),
                        nonce_source=lambda nonce=nonce: nonce, clock=lambda: CLOCK,
                        segment_ids=lambda case=case: case["segment_id"])
        wire = sealer.seal(b"\n".join(records), record_refs, [len(r) for r in records], case["source"])
        envelope = json.loads(wire)
        header = {k: v for k, v in envelope.items() if k != "ct"}
        cases.append({
            "name": case["name"],
            "data_key_hex": case["data_key_hex"],
            "nonce_hex": case["nonce_hex"],
            "sealed_at_clock": CLOCK.isoformat(),
            "segment_id": case["segment_id"],
            "source": case["source"],
            "record_ids": case["record_ids"],
            "record_ref_kid": refs.kid,
            "record_refs": record_refs,
            "records_b64": [_b64(r) for r in records],
            "plaintext_b64": _b64(b"\n".join(records)),
            "aad": json.dumps(header, sort_keys=True, separators=(",", ":")),
            "envelope": envelope,
            "envelope_json": wire.decode("ascii"),
        })
    return {
        "description": "Retention envelope test vectors for cdrpipe (pipeline/core/envelope.py). Everything is fixed "
                       "except wrapped_key, which HPKE randomises: it is the one produced when this file was "
                       "written, and because it is part of the associated data, the tag at the end of ct depends "
                       "on it.",
        "construction": {
            "wrap": "wrapped_key = base64(HPKE base mode, X25519 / HKDF-SHA256 / AES-256-GCM, info ASCII "
                    "'cdrpipe/retention/v1', to the vault public key, plaintext = 32-byte data key): enc || ct",
            "aad": "the envelope without ct, as JSON with sorted keys and no whitespace",
            "ct": "base64(AES-256-GCM(data key, nonce, plaintext = records joined by a newline byte, aad))",
            "record_refs": "the token of kind 'record' (see tokens.json) of each record id under the key "
                           "record_ref_kid: the ids themselves are only inside ct",
        },
        "hpke_info": HPKE_INFO.decode("ascii"),
        "vault_kid": VAULT_KID,
        "vault_private_key_hex": VAULT_PRIVATE_HEX,
        "vault_public_key_hex": public_hex,
        "vectors": cases,
    }


def main() -> None:
    for name, doc in (("tokens.json", token_vectors()), ("envelopes.json", envelope_vectors())):
        (HERE / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
