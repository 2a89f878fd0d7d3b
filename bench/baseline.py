"""The straightforward per-record pipeline the core is measured against.

Same job, one record at a time, the way one would first write it: ``orjson.loads`` per
line, ``phonenumbers`` (memoised) and ``ipaddress`` per value, ``hmac.new`` per field,
AES-GCM per record for retention, ``orjson.dumps`` per output record. It is not a
product: it exists so the benchmark can report the vectorised core's speed-up on the
same data in the same run.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import sys
from functools import lru_cache

import orjson
import phonenumbers
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.core.tokenise import KINDS, derive_subkey
from pipeline.keys import load_worker_keyring


@lru_cache(maxsize=1 << 18)
def e164(raw: str, region: str = "GB") -> str | None:
    try:
        n = phonenumbers.parse(raw.replace("tel:", ""), region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)


def main(keyring_path: str, input_path: str, out_dir: str) -> dict[str, int]:
    keyring = load_worker_keyring(keyring_path)
    keys = {k: derive_subkey(keyring.current, k).hex().encode() for k in KINDS}
    prefix = keyring.current.kid + ":"
    aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def tok(kind: str, value: str) -> str:
        return prefix + hmac.new(keys[kind], value.encode(), hashlib.sha256).hexdigest()[:32]

    os.makedirs(out_dir, exist_ok=True)
    counts = dict.fromkeys(("in", "analytics", "retention", "dlq", "suppressed"), 0)
    with open(input_path, "rb") as inp, open(f"{out_dir}/analytics.jsonl", "wb") as ana, \
            open(f"{out_dir}/retention.jsonl", "wb") as ret, open(f"{out_dir}/dlq.jsonl", "wb") as dlq:
        for n, line in enumerate(inp, 1):
            line = line.rstrip(b"\n")
            counts["in"] += 1
            rid = f"{input_path}:{n}"
            nonce = os.urandom(12)
            sealed = aead.encrypt(nonce, line, rid.encode())
            ret.write(orjson.dumps({"record_id": rid, "nonce": base64.b64encode(nonce).decode(),
                                    "ct": base64.b64encode(sealed).decode()}) + b"\n")
            counts["retention"] += 1
            try:
                rec = orjson.loads(line)
                cli, dialled = e164(str(rec["cli"])), e164(str(rec["dialled"]))
                if cli is None or dialled is None or not isinstance(rec["duration"], int):
                    raise ValueError("invalid")
                out = {"record_id": rec.get("record_id", rid), "cli": tok("msisdn", cli),
                       "dialled": tok("msisdn", dialled), "start": rec["start"], "duration": rec["duration"]}
                if rec.get("ip"):
                    ip = ipaddress.ip_address(str(rec["ip"]).split("%")[0])
                    out["ip"] = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False))
                for kind in ("imsi", "imei"):
                    if rec.get(kind):
                        out[kind] = tok(kind, str(rec[kind]))
                for keep in ("cell_id", "call_type", "status"):
                    out[keep] = rec.get(keep)
                ana.write(orjson.dumps(out) + b"\n")
                counts["analytics"] += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                dlq.write(orjson.dumps({"record_id": rid, "reason": "invalid"}) + b"\n")
                counts["dlq"] += 1
    return counts


if __name__ == "__main__":
    print(orjson.dumps(main(*sys.argv[1:4])).decode())
