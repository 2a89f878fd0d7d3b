"""Write the seed corpus of the route fuzz target into fuzz/corpus/ (the committed seeds).

Seeds: each line of ``python -m pipeline.synthetic --records 200 --seed 3 --malformed-rate 0.2``
on its own, the same lines in batches of 8, and hand-made edge lines (below), alone and as
one batch. Run from the repository root: ``python fuzz/make_corpus.py``.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

EDGE = [
    b"",
    b"{}",
    b"[]",
    b"null",
    b"\xef\xbb\xbf{\"record_id\":\"r-bom\",\"cli\":\"07700900123\",\"dialled\":\"07700900456\",\"start\":0,\"duration\":1,\"imsi\":\"234150000000001\"}",
    b'{"record_id":"r-e1","cli":"\\u0030\\u0037\\u0037\\u0030\\u0030900123","dialled":"+44 (0)7700 900456","start":"2026-11-25T12:34:56.123456+05:30","duration":0,"imsi":"234150000000002","imei":"352099110704554"}',
    '{"record_id":"r-e2","cli":"０７７００ ９００１２３","dialled":"tel:+44-7700-900456;phone-context=x","start":1795610096,"duration":86400,"imsi":"234150000000003"}'.encode(),
    b'{"record_id":"r-e3","cli":"%2B447700900123","dialled":"anonymous","start":"2026-11-25 12:34:56","duration":"5","imsi":"234150000000004","ip":"[2001:db8::1]:5060","cell_id":"234-15-1234-56789"}',
    b'{"record_id":"r-e4","cli":{"number":"+447700900123","presentation":"restricted"},"dialled":"999","start":-1,"duration":1e3,"imsi":"234150000000005"}',
    b'{"record_id":"447700900123","cli":"447700900123","dialled":"447700900124","start":0,"duration":1,"imsi":"234150000000006"}',
    b'{"record_id":"r-e5","cli":"07700900123","cli":"07700900999","dialled":"07700900456","start":0,"duration":1,"imsi":"234150000000007"}',
    b'{"record_id":"r-e6","cli":"07700900123\\u0000","dialled":"07700900456","start":0,"duration":NaN,"imsi":"234150000000008"}',
    b'{"record_id":"r-e7","cli":"07700900123","dialled":"07700900456","start":0,"duration":1,"imsi":"234150000000009"} {"record_id":"r-e8"}',
    b'{"record_id":"r-e9","cli":"07700900123","dialled":"07700900456","start":0,"duration":1,"imsi":"234150000000010","x":' + b"[" * 70 + b"]" * 70 + b"}",
    b'{"record_id":"r-e10","cli":"\xff\xfe07700900123","dialled":"07700900456","start":0,"duration":1,"imsi":"234150000000011"}',
    b'{"record_id":"r-e11","cli":"+1 (212) 555-0100 ext. 7","dialled":"011 44 7700 900456","start":"2026-02-30T00:00:00Z","duration":18446744073709551616,"imsi":"001010123456789","imei":"35-209900-176148-1"}',
    b'{"record_id":"r-e12","cli":"","dialled":null,"start":"","duration":-0,"imsi":""}',
    b'{"record_id":"r-e13","cli":"07700900123","dialled":"07700900456","start":"2026-11-25T12:34:56Z","duration":1,"imsi":"234150000000012","ip":"::ffff:192.0.2.77","subscriber":{"msisdn":"+447700900123","deep":[{"imsi":"234150000000012"}]},"clid":"\\"Name\\" <07700900123>"}',
    b"CDR|r-000000001|+447700900123|07700900456|2026-11-25T00:00:00Z|3|234150000000013",
]


def main() -> int:
    lines = subprocess.run([sys.executable, "-m", "pipeline.synthetic", "--records", "200", "--seed", "3",
                            "--malformed-rate", "0.2", "--output", "-"], check=True, capture_output=True).stdout
    lines = lines.rstrip(b"\n").split(b"\n")
    seeds = list(lines)
    seeds += [b"\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    seeds += EDGE + [b"\n".join(EDGE)]
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.iterdir():
        old.unlink()
    for seed in seeds:
        (CORPUS / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{len(set(seeds))} seeds in {CORPUS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
