"""Tests for the synthetic CDR generator: determinism, shape, realism and malformed lines."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import statistics
import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from pipeline import synthetic
from pipeline.synthetic import (CHUNK_LINES, MALFORMED_KINDS, Population, Synthesizer,
                                generate, write_sample)

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("cli", "dialled", "start", "duration")
MAX_LINE = 64 * 1024
MAX_DEPTH = 32


# --------------------------------------------------------------------------- helpers


class _Invalid(ValueError):
    """Raised by the reference validator's JSON hooks."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook that rejects duplicate keys (the pipeline must not guess)."""
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Invalid("duplicate keys")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    """parse_constant hook rejecting NaN/Infinity, which are not JSON."""
    raise _Invalid(name)


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, iteratively (no recursion limit worries)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse(line: bytes) -> dict[str, Any] | None:
    """Strict reference reading of one raw CDR v1 line: the record, or None if malformed."""
    if len(line) > MAX_LINE:
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip() or text.startswith("\ufeff"):
        return None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or _depth(obj) > MAX_DEPTH:
        return None
    if any(obj.get(k) is None for k in REQUIRED):
        return None
    if not isinstance(obj["cli"], str) or not isinstance(obj["dialled"], str):
        return None
    duration = obj["duration"]
    if type(duration) is not int or duration < 0:
        return None
    start = obj["start"]
    if type(start) is int:
        return obj
    if not isinstance(start, str):
        return None
    try:
        dt.datetime.fromisoformat(start)
    except ValueError:
        return None
    return obj


def normalise(raw: str) -> str | None:
    """Test-side MSISDN normaliser (independent of the pipeline's) to E.164, else None."""
    s = unicodedata.normalize("NFKC", raw).removeprefix("tel:")
    s = re.sub(r"[\s()\-]", "", s)
    if not s[1:].isdigit() and not s.isdigit():
        return None
    if s.startswith("+"):
        return s
    if s.startswith("00"):
        return "+" + s[2:]
    if s.startswith("0") and len(s) == 11:
        return "+44" + s[1:]
    if s.startswith("44") and len(s) == 12:
        return "+" + s
    return None


def lines_of(data: bytes) -> list[bytes]:
    """Split NDJSON into lines, checking the final newline."""
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


# --------------------------------------------------------------------------- fixtures

N = 200_000


@pytest.fixture(scope="module")
def big() -> tuple[Synthesizer, list[bytes], list[dict[str, Any] | None]]:
    """200k lines with the defaults (100k subscribers, 0.5% malformed), parsed once."""
    synth = Synthesizer(seed=0)
    chunks = list(synth.chunks(N))
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert chunk.count(b"\n") <= CHUNK_LINES
    lines = lines_of(b"".join(chunks))
    return synth, lines, [parse(line) for line in lines]


@pytest.fixture(scope="module")
def all_bad() -> tuple[Synthesizer, list[bytes]]:
    """Every line malformed, on a small population whose identifiers we can list."""
    synth = Synthesizer(seed=11, subscribers=2_000, malformed_rate=1.0)
    return synth, lines_of(b"".join(synth.chunks(6_000)))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = b"".join(generate(25_000, seed=5))
    b = b"".join(generate(25_000, seed=5))
    c = b"".join(generate(25_000, seed=6))
    assert a == b
    assert a != c


def test_output_is_a_prefix_and_independent_of_chunking() -> None:
    whole = b"".join(generate(23_456, seed=9, subscribers=5_000))
    assert whole.startswith(b"".join(generate(12_345, seed=9, subscribers=5_000)))
    synth = Synthesizer(seed=9, subscribers=5_000)
    pieces = [b"".join(synth.chunks(n)) for n in (1, 9_998, 3, 7_000, 6_454)]
    assert b"".join(pieces) == whole
    assert synth.stats.lines == 23_456


def test_worker_processes_give_the_same_bytes_and_stats() -> None:
    serial = Synthesizer(seed=4, subscribers=2_000)
    expected = b"".join(serial.chunks(3_000)) + b"".join(serial.chunks(31_000))
    parallel = Synthesizer(seed=4, subscribers=2_000)
    got = b"".join(parallel.chunks(3_000)) + b"".join(parallel.chunks(31_000, workers=2))
    assert got == expected
    assert parallel.stats == serial.stats
    assert b"".join(parallel.chunks(5)) == b"".join(serial.chunks(5))


def test_chunks_end_in_newline_and_count_lines() -> None:
    chunks = list(generate(25_001, seed=1, subscribers=1_000))
    assert all(c.endswith(b"\n") for c in chunks)
    assert sum(c.count(b"\n") for c in chunks) == 25_001
    assert list(generate(0)) == []


# --------------------------------------------------------------------------- shape


def test_every_line_is_one_line(big: Any) -> None:
    synth, lines, _ = big
    assert len(lines) == N == synth.stats.lines
    # No other line breaks a reader might split on.
    for line in lines:
        assert b"\r" not in line and b"\x0b" not in line and b"\x0c" not in line
        assert "\u2028".encode() not in line and "\u2029".encode() not in line


def test_malformed_share_is_near_the_rate_and_matches_stats(big: Any) -> None:
    synth, _, records = big
    bad = sum(r is None for r in records)
    assert bad == synth.stats.malformed
    assert 0.0040 < bad / N < 0.0060
    kinds = set(synth.stats.malformed_by_kind)
    assert kinds >= set(MALFORMED_KINDS) - {"huge_string"}


def test_every_kind_when_all_lines_are_malformed(all_bad: Any) -> None:
    synth, lines = all_bad
    assert all(parse(line) is None for line in lines)
    assert set(synth.stats.malformed_by_kind) == set(MALFORMED_KINDS)
    assert synth.stats.malformed == len(lines) == 6_000
    huge = [line for line in lines if len(line) > 150_000]
    assert huge and all(len(line) < 300_000 for line in huge)
    assert any(line.startswith(b"\xef\xbb\xbf{") for line in lines)
    assert any(line.count(b"[") >= 200 or line.count(b'{"a":') >= 200 for line in lines)


def test_malformed_lines_still_carry_identifiers(all_bad: Any) -> None:
    synth, lines = all_bad
    pop = synth.population
    nsns: set[str] = set()
    ids: set[str] = set()
    for i in range(len(pop)):
        s = pop[i]
        cc = {"GB": 2, "US": 1}.get(s.country, 2)
        nsns.add(s.e164[1 + cc:])
        ids.update((s.imsi, s.imei))
    without = 0
    for line in lines:
        text = re.sub(r"[\s()\-]", "", line.decode("utf-8", "replace"))
        runs = re.findall(r"\d{9,}", text)
        if not any(r in ids or r[-10:] in nsns or r[-9:] in nsns or r[-11:] in nsns
                   for r in runs):
            without += 1
    kinds = synth.stats.malformed_by_kind
    # Only empty lines and bare null/true scalars can carry nothing.
    assert without <= kinds["empty_line"] + kinds["json_scalar"]


def test_record_ids_unique_and_about_two_percent_missing(big: Any) -> None:
    synth, lines, records = big
    ids = re.findall(rb'"record_id":"(r-\d{9})"', b"\n".join(lines))
    assert len(ids) == len(set(ids))
    valid = [r for r in records if r is not None]
    missing = sum("record_id" not in r for r in valid)
    assert missing == synth.stats.without_record_id
    assert 0.015 < missing / len(valid) < 0.025


# --------------------------------------------------------------------------- realism


def test_valid_lines_follow_the_raw_cdr_schema(big: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "raw-cdr.v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    valid = [r for r in big[2] if r is not None]
    for record in valid[:30_000]:
        errors = list(validator.iter_errors(record))
        assert not errors, (record, [e.message for e in errors])


def test_population_identities_are_unique_and_well_formed() -> None:
    pop = Population(seed=3, size=20_000)
    subs = list(pop)
    for attr in ("e164", "imsi", "imei"):
        assert len({getattr(s, attr) for s in subs}) == len(subs), attr
    countries = Counter(s.country for s in subs)
    assert 0.75 < countries["GB"] / len(subs) < 0.90
    assert set(countries) == {"GB", "US", "DE", "FR", "ES", "IN"}
    for s in subs[:2_000]:
        assert re.fullmatch(r"\d{15}", s.imsi) and re.fullmatch(r"\d{15}", s.imei)
        digits = [int(c) for c in s.imei]
        luhn = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
        assert luhn % 10 == 0
        assert all(normalise(f) == s.e164 for f in s.number_formats), s.number_formats
        ipaddress.ip_address(s.ip.split("%")[0])
        if s.country == "GB":
            assert s.imsi.startswith("23415")
            assert re.fullmatch(r"\+4477\d{8}", s.e164)
    gb = [s for s in subs if s.country == "GB"]
    assert all("+447700900000" <= s.e164 <= "+447700999999" for s in gb)
    assert Synthesizer().population.size == 100_000


def test_subscriber_count_and_skew(big: Any) -> None:
    synth, _, records = big
    pop = synth.population
    known = {pop.ident(i).e164 for i in range(len(pop))}
    callers: Counter[str] = Counter()
    seen: set[str] = set()
    for r in records:
        if r is None:
            continue
        cli, dialled = normalise(r["cli"]), normalise(r["dialled"])
        for n in (cli, dialled):
            if n is not None:
                assert n in known, n
                seen.add(n)
        if cli is not None:
            callers[cli] += 1
    assert len(seen) > 60_000  # of 100k subscribers, in 200k records
    top = sum(c for _, c in callers.most_common(len(pop) // 100))
    assert top / sum(callers.values()) > 0.30  # top 1% of subscribers make >30% of calls
    assert callers.most_common(1)[0][1] < 0.02 * sum(callers.values())


def test_same_subscriber_in_many_formats(big: Any) -> None:
    _, _, records = big
    forms: defaultdict[str, set[str]] = defaultdict(set)
    as_cli: set[str] = set()
    as_dialled: set[str] = set()
    for r in records:
        if r is None:
            continue
        for key, bucket in (("cli", as_cli), ("dialled", as_dialled)):
            n = normalise(r[key])
            if n:
                forms[n].add(r[key])
                bucket.add(n)
    busiest = max(forms.values(), key=len)
    assert len(busiest) >= 8
    assert any(any(ord(c) >= 0xFF10 for c in f) for f in busiest) or any(
        any(ord(c) >= 0xFF10 for f in fs for c in f) for fs in forms.values())
    assert len(as_cli & as_dialled) > 10_000
    all_forms = {f for fs in forms.values() for f in fs}
    assert any(f.startswith("tel:+44") for f in all_forms)
    assert any(f.startswith("(+44) ") for f in all_forms)
    assert any(re.fullmatch(r"07700 \d{6}", f) for f in all_forms)
    assert any(re.fullmatch(r"0044\d{10}", f) for f in all_forms)
    assert any(re.fullmatch(r"0044 7700\d{6}", f) for f in all_forms)
    assert any(re.fullmatch(r"\+1\d{10}", f) for f in all_forms)
    assert any(re.fullmatch(r"00(49|33|34|91)[\d ]+", f) for f in all_forms)
    assert any(re.fullmatch(r"\+(49|33|34|91) [\d ]+", f) for f in all_forms)


def test_special_numbers(big: Any) -> None:
    _, _, records = big
    valid = [r for r in records if r is not None]
    clis = Counter(r["cli"] for r in valid)
    dialled = Counter(r["dialled"] for r in valid)
    for v in ("anonymous", "withheld", "", "Restricted", "1001"):
        assert clis[v] > 0, v
    for v in ("999", "112", "150", "2020", "2345"):
        assert dialled[v] > 0, v
    senders = [r for r in valid if r["cli"] in ("HSBC", "AMAZON")]
    assert senders and all(r["call_type"] == "sms" for r in senders)


def test_ip_mix(big: Any) -> None:
    _, _, records = big
    ips = [r["ip"] for r in records if r is not None and "ip" in r]
    assert 0.85 < len(ips) / N < 0.95
    v4 = sum(bool(re.fullmatch(r"\d+\.\d+\.\d+\.\d+(:\d+)?", ip)) for ip in ips)
    assert 0.62 < v4 / len(ips) < 0.78
    assert any(ip.startswith("::ffff:") for ip in ips)
    assert any(ip.startswith("::FFFF:") for ip in ips)
    assert any(re.fullmatch(r"\[[0-9a-f:]+\]:\d+", ip) for ip in ips)
    assert any(re.fullmatch(r"\d+\.\d+\.\d+\.\d+:5060", ip) for ip in ips)
    assert any(re.fullmatch(r"[0-9A-F:]+", ip) and ":" in ip for ip in ips)
    assert any(re.fullmatch(r"fe80::[0-9a-fA-F:]+%\w+", ip) for ip in ips)
    for ip in ips[:20_000]:
        host = ip.split("%")[0]
        if host.startswith("["):
            host = host[1:host.index("]")]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        ipaddress.ip_address(host)


def test_timestamps_and_durations(big: Any) -> None:
    _, _, records = big
    valid = [r for r in records if r is not None]
    starts = [r["start"] for r in valid]
    epoch = sum(isinstance(s, int) for s in starts)
    assert 0.15 < epoch / len(starts) < 0.35
    text = [s for s in starts if isinstance(s, str)]
    assert any(s.endswith("Z") for s in text)
    assert any(s.endswith("+01:00") for s in text) and any(s.endswith("-05:00") for s in text)
    first = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc).timestamp()
    secs = [s if isinstance(s, int) else dt.datetime.fromisoformat(s).timestamp()
            for s in starts]
    assert all(first - 3 * 86_400 <= t <= first + 86_400 for t in secs)
    assert sum(t < first for t in secs) > 0  # a few late arrivals
    assert all(r["duration"] == 0 for r in valid if r["call_type"] in ("sms", "data"))
    talk = [r["duration"] for r in valid if r["call_type"] == "voice"
            and r["status"] == "answered"]
    assert statistics.median(talk) < 120 and max(talk) > 1_800
    assert {r["call_type"] for r in valid} == {"voice", "sms", "data", "video"}
    assert {r["status"] for r in valid} == {"answered", "busy", "no_answer", "failed"}
    assert all(re.fullmatch(r"\d{3}-\d{2}-\d+-\d+", r["cell_id"]) for r in valid[:10_000])


def test_start_argument() -> None:
    start = dt.datetime(2025, 3, 1, 8, 0)  # naive: UTC
    data = b"".join(generate(500, seed=2, subscribers=1_000, malformed_rate=0.0, start=start))
    first = start.replace(tzinfo=dt.timezone.utc).timestamp()
    deltas = []
    for line in lines_of(data):
        r = parse(line)
        assert r is not None
        s = r["start"]
        deltas.append((s if isinstance(s, int) else dt.datetime.fromisoformat(s).timestamp())
                      - first)
    assert all(-2 * 86_400 <= d < 600 for d in deltas)  # a rare record is days late
    assert sum(0 <= d < 600 for d in deltas) >= 495


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Synthesizer(malformed_rate=1.5)
    with pytest.raises(ValueError):
        list(generate(-1))
    with pytest.raises(ValueError):
        Population(size=1)


# --------------------------------------------------------------------------- entry points


def test_write_sample_matches_generate(tmp_path: Path) -> None:
    path = tmp_path / "sample.ndjson"
    write_sample(path, 3_000, seed=4, subscribers=1_000)
    assert path.read_bytes() == b"".join(generate(3_000, seed=4, subscribers=1_000))


def test_main_writes_file_and_one_line_summary(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cdrs.ndjson"
    assert synthetic.main(["--records", "1500", "--seed", "3", "--subscribers", "2000",
                           "--output", str(out)]) == 0
    assert out.read_bytes() == b"".join(generate(1_500, seed=3, subscribers=2_000))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1500 lines" in err


def test_module_entry_point_to_stdout() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.synthetic", "--records", "200", "--seed", "1",
         "--subscribers", "500", "--output", "-"],
        cwd=REPO, capture_output=True, check=True, timeout=120)
    assert proc.stdout == b"".join(generate(200, seed=1, subscribers=500))
    assert proc.stderr.decode().count("\n") == 1
