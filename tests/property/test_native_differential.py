"""Differential tests: the native core against the plain-Python reference (tests/reference_core.py).

On arbitrary input — random bytes, invalid UTF-8, records over the size limit, deep
nesting, duplicate keys (nested, through ``\\u`` escapes), NaN/Infinity/1e400, numbers of
every shape and nested values as field values, and raw CDR v1 records with their values
shifted between fields, cut, widened to full-width digits, padded with whitespace, written
as ``tel:`` URIs, IPv6 forms, epoch or ISO times with offsets — ``Router.route`` must give
exactly the reference's analytics records, DLQ ``(reason, field, detail, record_ref)`` in
order (parse rejects first, then the others, each in row order) and counts.
"""
from __future__ import annotations

import functools
import json
import random
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.normalise import PhoneNormaliser, _plan
from pipeline.core.router import CoreConfig, Router, Source
from pipeline.policy import policy_from_toml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_core import ReferenceCore, parse_line  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
MAX_BYTES = 2048  # small, so records over the limit are cheap to build
MAX_DEPTH = 8
#: Other actions and arguments, and contract fields the policy does not tokenise (checked all the same).
CUSTOM_POLICY = policy_from_toml("""
[fields]
record_id = "keep"
cli       = "token:account"
dialled   = "drop"
start     = "coarsen_time:minute"
duration  = "keep"
ip        = "truncate_ip:20/56"
imsi      = "drop"
imei      = "token:imei:monthly"
cell_id   = "token:account"
call_type = "keep"
status    = "token:account"
""", "differential")
#: Per-month tokens (`token:<kind>:monthly`): the month comes from each record's own start.
MONTHLY_POLICY = policy_from_toml("""
[fields]
record_id = "token:record"
cli       = "token:msisdn:monthly"
dialled   = "token:msisdn:monthly"
start     = "coarsen_time:day"
duration  = "keep"
imsi      = "token:imsi:monthly"
cell_id   = "generalise_cell"
""", "monthly")
CONFIGS = {
    "default": CoreConfig(),
    "monthly": CoreConfig(policy=MONTHLY_POLICY),
    "small": CoreConfig(max_record_bytes=MAX_BYTES, max_depth=MAX_DEPTH),
    "custom": CoreConfig(policy=CUSTOM_POLICY, max_record_bytes=MAX_BYTES, max_depth=MAX_DEPTH),
}
FIELDS = ("record_id", "cli", "dialled", "start", "duration", "ip", "imsi", "imei", "cell_id", "call_type", "status")
SOURCE_NAME = "in/feed 7.jsonl"


def _cores(keyring, name):
    router = Router(keyring, CONFIGS[name])
    return router, ReferenceCore(router.tokeniser, router.config)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def cores(request, worker_keyring):
    """The native router and the reference: default limits, small ones, and a custom policy."""
    return _cores(worker_keyring, request.param)


@pytest.fixture(scope="module")
def small_cores(worker_keyring):
    """Small size and depth limits, so records over them are cheap to build."""
    return _cores(worker_keyring, "small")


def assert_same(cores, lines: list[bytes], suppressed: frozenset[str] = frozenset()) -> None:
    router, reference = cores
    offsets = list(range(1000, 1000 + len(lines)))
    want = reference.route(lines, SOURCE_NAME, 5, offsets, suppressed)
    router.suppressions.replace(suppressed)
    try:
        routed = router.route(lines, Source(SOURCE_NAME, 5, offsets))
    finally:
        router.suppressions.replace(())
    got_analytics = routed.analytics_records()
    assert [list(r.items()) for r in got_analytics] == [list(r.items()) for r in want.analytics], lines
    got_dlq = [(d["reason"], d["field"], d["detail"], d["record_ref"]) for d in map(orjson.loads, routed.dlq)]
    assert got_dlq == want.dlq, lines
    assert routed.counts == want.counts, lines


# ----------------------------------------------------------------------------- value strategies

FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
digit_str = lambda lo, hi: st.text("0123456789", min_size=lo, max_size=hi)  # noqa: E731


def widen(s: str) -> str:
    return s.translate(FULL_WIDTH)


@st.composite
def phone(draw):
    nsn = "7" + draw(digit_str(9, 9))
    form = draw(st.sampled_from([
        "+44{n}", "0{a} {b}", "+44 {a} {b}", "0044{n}", "0044 {n}", "tel:+44{n}", "TEL:+44-{a}-{b}", "(+44) {a}-{b}",
        "44{n}", "0{n}", "+44.{a}.{b}", "%2B44{n}", "%2b44{n}", "+44 0{n}", "+1415555{s}", "+49151{s}23",
        "00353 87{s}12", "+999{s}12", "{s}", "999", "112", "17070", "1001", "+44{a}", "0{a}", "+{n}",
        "0 0 4 4 {n}", "0044-0{n}", "++44{n}", "+44{n}0000", "sip:+44{n}@ims.example;user=phone",
        "sip:0{n}@192.0.2.1:5060", "SIPS:0{a} {b};npdi@pbx", "tel:+44{n};phone-context=+44", "sip: 0{n} @x",
        "sip:+44{n}:secret@host", "sip:{s}", "sipx:0{n}@x", "sip:+44{n}@bücher.example", "ｓｉｐ:0{n}@x"]))
    text = form.format(n=nsn, a=nsn[:4], b=nsn[4:], s=nsn[-4:])
    special = draw(st.sampled_from([None] * 6 + ["anonymous", "Withheld", "", " ", "Restricted", "unknown",
                                                "no caller id", "Monzo", "HSBC UK", "Royal Mail", "a&b.c-d'e",
                                                "ABCDEFGHIJKL", "x", "1a", "EE", "sip:anonymous@anonymous.invalid",
                                                "sip:Alice@example.com", "sip:@host", "tel:", "Tel:Withheld"]))
    if special is not None:
        text = special
    if draw(st.integers(0, 4)) == 0:
        text = widen(text)
    if draw(st.integers(0, 5)) == 0:
        text = draw(st.sampled_from([" ", "\t", "\u00a0", "\u3000", "\n"])) + text + draw(
            st.sampled_from(["", " ", "\u2003"]))
    return text


@st.composite
def time_text(draw):
    y = draw(st.sampled_from([1, 999, 1969, 1970, 2000, 2026, 2038, 9999]))
    mo, d = draw(st.integers(0, 13)), draw(st.sampled_from([0, 1, 9, 28, 29, 30, 31, 32, 45]))
    h = draw(st.sampled_from([0, 3, 23, 24]))
    mi, s = draw(st.sampled_from([0, 4, 59, 60, 61])), draw(st.sampled_from([0, 5, 59, 60, 61]))
    frac = draw(st.sampled_from(["", ".5", ".123456", ".9999999", ".999999999", ".1234567891", "."]))
    off = draw(st.sampled_from(["Z", "", "+00:00", "+01:00", "-05:00", "+05:30", "-23:59", "+24:00", "+0100",
                                "z", " UTC", "+01"]))
    sep = draw(st.sampled_from(["T"] * 5 + [" ", "t"]))
    iso = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    epoch = str(draw(st.sampled_from([0, 1, 1767323045, 9007199253, 9007199254, 99999999999, 100000000000,
                                      1767323045123, 9007199254739, 9007199254740, 1767323045123456,
                                      9007199254740991, 9007199254740992, 12345678901234567])))
    text = draw(st.sampled_from([iso, iso, epoch, epoch + ".5", "2026-11-25", "yesterday", "", "-1767323045"]))
    if draw(st.integers(0, 6)) == 0:
        text = " " + text + " "
    if draw(st.integers(0, 8)) == 0:
        text = widen(text)
    if text and draw(st.integers(0, 5)) == 0:  # one character changed: the core calls some of these invalid itself
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from("/at Zz\u2212\u3000\t.:+-0\u0663\uff10")) + text[at + 1:]
    return text


@st.composite
def ip_text(draw):
    return draw(st.sampled_from([
        "203.0.113.7", "203.0.113.7:5060", "10.1.2.3", "255.255.255.255", "0.0.0.0", "203.0.113.07",
        "256.1.1.1", "1.2.3", "1.2.3.4:", "1.2.3.4:123456", " 203.0.113.7 ", "２０３.０.１１３.７",
        "2001:db8::1", "2001:DB8::0:1", "2001:0db8:0000:0000:0000:0000:0000:0001", "[2001:db8::1]:5060",
        "[2001:db8::1]", "2001:db8::1%eth0", "fe80::1%3", "::", "::1", "::ffff:203.0.113.7",
        "::ffff:cb00:7107", "0:0:0:0:0:ffff:cb00:7107", "::203.0.113.7", "1:2:3:4:5:6:7::",
        "1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "2001:db8:1:2:3:4:5:6", "2001:db8::g", ":::", "gibberish", "",
        "2a00:23c5:1234:5678:9abc:def0:1234:5678", "64:ff9b::203.0.113.7", "::ffff:1.2.3.4:80",
        "010.001.002.003", "010.001.002.003:5060", " 203.0.113.07:80 ", "203.0.113.07%eth0", "1.2.3.4.5",
        "1.2.3.1234", "300.1.1.1:80", "[010.1.1.1]:80", "00.0.0.0"]))


@st.composite
def id_digits(draw, lo, hi):
    d = draw(digit_str(lo, hi))
    how = draw(st.sampled_from(["plain", "plain", "dashes", "spaces", "dots", "wide", "letter"]))
    if how == "dashes" and len(d) > 4:
        d = d[:2] + "-" + d[2:-1] + "-" + d[-1]
    elif how == "spaces" and len(d) > 3:
        d = d[:3] + " " + d[3:]
    elif how == "dots" and len(d) > 3:
        d = d[:3] + "." + d[3:]
    elif how == "wide":
        d = widen(d)
    elif how == "letter":
        d = d + "x"
    return d


@st.composite
def cell_text(draw):
    mcc, mnc = draw(digit_str(2, 4)), draw(digit_str(1, 4))
    lac = draw(st.text("0123456789abcdefABCDEFg", min_size=0, max_size=9))
    ci = draw(st.text("0123456789abcdefABCDEF", min_size=1, max_size=11))
    seps = draw(st.lists(st.sampled_from("-:._/"), min_size=3, max_size=3))
    label = draw(st.sampled_from(["", "", "", "ECGI ", "ncgi:", "CGI=", "tai-", "Tai", "ecgi", "x:"]))
    hexed = draw(st.sampled_from(["", "0x", "0X"]))
    shape = draw(st.integers(0, 4))
    if shape == 0:
        text = f"{mcc}{seps[0]}{mnc}{seps[1]}{lac}{seps[2]}{ci}"
    elif shape == 1:  # MCCMNC-LAC-CI
        text = f"{mcc}{mnc}{seps[0]}{hexed}{lac}{seps[1]}{ci}"
    elif shape == 2:  # ECGI / NCGI, decimal or hex
        text = f"{mcc}{seps[0]}{mnc}{seps[1]}{hexed}{ci}"
    elif shape == 3:  # MCCMNC-ECI, or a TAI
        text = f"{mcc}{mnc}{seps[0]}{hexed}{ci}"
    else:
        text = draw(st.sampled_from(["234-15-0a1B-ff", " 234-15-0a1B-ff\t", "234:15:1234:56789", "23415-57065-40534717",
                                     "310260-1234-56789", "234015-1234-5", "234-015-12-5", widen("234-15-1234-56789"),
                                     "234-15-1234-56789-1", "ECGI 234-15-0x1A2B3C4", "234-15-27409348",
                                     "310-410-4886718345", "ecgi:234-15-0x1A2B3C4D", "234-15-0x1FFFFFFFFF",
                                     "TAI:23415-0x00AB", "tai 23415 00AB", "cell 17", ""]))
    return label + text


keep_text = st.one_of(
    st.sampled_from(["voice", "sms", "data", "video", "answered", "busy", "no_answer", "failed", "a b", "x:y/z+1",
                     "12345", "123456", "07700 900123", "x\"y", "é", "", " ", "a" * 64, "a" * 65, "voice\n",
                     "1.2.3.4", "ＶＯＩＣＥ"]),
    st.text(max_size=10))


def any_json(max_leaves=8):
    """Arbitrary JSON values (as Python objects)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=max_leaves)


number_text = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.integers(-(1 << 80), 1 << 80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda t: "inf" not in t),
    st.sampled_from(["0", "-0", "-0.0", "0.0", "1e3", "1E+3", "1.0", "9223372036854775807", "9223372036854775808",
                     "-9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616",
                     "1e308", "1.7976931348623157e308", "1.7976931348623159e308", "5e-324", "1e-400", "2.5e-7",
                     "1" + "0" * 308, "1" + "0" * 309, "-" + "9" * 400, "100000000000000000000.0", "123456789",
                     "0.1", "60", "007", "1e400", "-1e400"]))

bad_number = st.sampled_from(["NaN", "Infinity", "-Infinity", "-NaN", "+1", "01", "1.", ".5", "-", "1e", "0x10",
                              "1e400", "-1e400", "1" + "0" * 400, "Inf", "nan", "--1", "1.5.5"])


def jstr(s: str, ascii_only: bool = False) -> str:
    return json.dumps(s, ensure_ascii=ascii_only)


@st.composite
def json_value_text(draw, field: str):
    """A field's value as JSON text: its own kind mostly, else a number, nested value, literal or other text."""
    kind = draw(st.sampled_from(["own"] * 8 + ["number", "nested", "literal", "other", "text"]))
    if kind == "number":
        return draw(number_text)
    if kind == "nested":
        return json.dumps(draw(ANY_JSON), ensure_ascii=draw(st.booleans()))
    if kind == "literal":
        return draw(st.sampled_from(["null", "true", "false", '""']))
    if kind == "text":
        return jstr(draw(st.text(max_size=12)), draw(st.booleans()))
    if kind == "other":
        field = draw(st.sampled_from(FIELDS))
    return own_value_text(draw, field)


@st.composite
def good_time(draw):
    """A valid time as mediation systems write it: ISO with Z, an offset or none, or epoch s/ms/us."""
    us = draw(st.integers(-(10**15), 4 * 10**15))
    t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    off = draw(st.sampled_from([0, 0, 3600, -18000, 19800, -28800, 50400, -43200]))
    local = (t + timedelta(seconds=off)).replace(tzinfo=None)
    suffix = "Z" if off == 0 and draw(st.booleans()) else "%s%02d:%02d" % ("-" if off < 0 else "+", abs(off) // 3600,
                                                                          abs(off) % 3600 // 60)
    frac = draw(st.sampled_from(["", "", ".%06d" % local.microsecond, ".%03d" % (local.microsecond // 1000),
                                 ".%06d123" % local.microsecond, ".%06d9" % local.microsecond]))
    iso = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + frac
    secs = us // 10**6
    shapes = [jstr(iso + suffix), jstr(iso + suffix), jstr(iso) if off == 0 else jstr(iso + suffix)]
    if secs > 0:
        shapes += [str(secs), jstr(str(secs)), str(us // 1000), jstr(str(us)), str(us)]
    return draw(st.sampled_from(shapes))


GOOD = {
    "record_id": st.builds("r-{}".format, digit_str(1, 8)),
    "start": good_time(),
    "cli": phone().map(jstr),
    "dialled": phone().map(jstr),
    "ip": st.one_of(
        st.builds(lambda a, b, form: form.format(f"{a}.{b >> 8}.{b & 255}.{b % 7 + 1}"), st.integers(1, 223),
                  st.integers(0, 65535), st.sampled_from(["{}", "{}", "{}:5060", "::ffff:{}", "[::ffff:{}]:5060"])),
        st.builds(lambda g, form: form.format(":".join("%x" % x for x in g)),
                  st.lists(st.integers(0, 65535), min_size=8, max_size=8),
                  st.sampled_from(["{}", "[{}]:5060", "{}%eth0", "{}"])),
        st.builds(lambda a, b, form: form.format(a, b), st.integers(0x2001, 0x2a0f), st.integers(0, 65535),
                  st.sampled_from(["{:x}:db8::{:x}", "{:X}:0DB8:0:0:0:0:0:{:X}", "{:x}:0::0:{:x}", "{:x}::{:x}:0:0",
                                   "[{:x}::{:x}]"])),
    ).map(jstr),
    "duration": st.integers(0, 86_400).map(str),
    "imsi": st.builds("23415{}".format, digit_str(10, 10)).map(jstr),
    "imei": st.builds("35391110{}".format, digit_str(7, 7)).map(jstr),
    "cell_id": st.one_of(st.builds("234-15-{}-{}".format, st.text("0123456789abcdefAB", min_size=1, max_size=8),
                                   st.text("0123456789ABCDEF", min_size=1, max_size=10)),
                         st.builds("23415-{}-{}".format, st.text("0123456789", min_size=1, max_size=5),
                                   st.text("0123456789", min_size=1, max_size=9)),
                         st.builds("ECGI:234-15-0x{}".format, st.text("0123456789ABCDEF", min_size=1, max_size=7)),
                         st.just("no such form")).map(jstr),
    "call_type": st.sampled_from(["voice", "sms", "data", "video", "SMS", " Data\t", "ussd", "mms", "text", "sms x"]).map(jstr),
    "status": st.sampled_from(["answered", "no_answer", "busy", "failed"]).map(jstr),
}


def own_value_text(draw, field: str) -> str:
    """A value of the field's own kind as JSON text: usually valid (often oddly written), sometimes not."""
    asc = draw(st.integers(0, 3)) == 0
    if field in GOOD and draw(st.integers(0, 24)):
        v = draw(GOOD[field])
        return jstr(v) if field == "record_id" else v
    if field == "record_id":
        v = draw(st.sampled_from(["{}", "+{}", "CDR:{}/a@b", "r {}", "", "r-{}é", "x" * 129, "x" * 128,
                                  "447700900123", "1234567", "123456", "12345678901234567"]))
        v = v.format(draw(digit_str(1, 10)))
        return draw(st.sampled_from([jstr(v, asc)] * 4 + [draw(digit_str(1, 18)) or "0", "1.5", "true"]))
    if field in ("cli", "dialled"):
        return draw(st.sampled_from([jstr(draw(phone()), asc)] * 6 + ["447700900123", "7700900123"]))
    if field == "start":
        t = draw(time_text())
        return draw(st.sampled_from([jstr(t, asc)] * 5 + [t if t.isdigit() and t[0] != "0" else "0",
                                                          "1767323045.5", "1.767323045e9"]))
    if field == "duration":
        return draw(st.sampled_from([str(draw(st.integers(0, 10**10))), jstr(str(draw(st.integers(0, 10**10)))),
                                     '"007"', '"-1"', "-1", "1.0", "1.5", '"1.5"', '""', jstr(widen("60")), '" 60"',
                                     "0", "-0", "1e2", "999999999", "1000000000"]))
    if field == "ip":
        return jstr(draw(ip_text()), asc)
    if field == "imsi":
        return draw(st.sampled_from([jstr(draw(id_digits(4, 17)), asc), draw(digit_str(1, 16)).lstrip("0") or "0"]))
    if field == "imei":
        return draw(st.sampled_from([jstr(draw(id_digits(12, 18)), asc), "35391110061293"]))
    if field == "cell_id":
        return jstr(draw(cell_text()), asc)
    return jstr(draw(keep_text), asc)


SPACING = st.sampled_from([("", ""), ("", ""), (" ", ""), ("", " "), ("\t", "\r\n "), ("  ", "\n")])


def assemble(draw, pairs: list[tuple[str, str]]) -> bytes:
    """An object from (key JSON text, value JSON text) pairs, with JSON whitespace in one of a few styles."""
    a, b = draw(SPACING)
    parts = [a + k + b + ":" + a + v + b for k, v in pairs]
    return (b + "{" + ",".join(parts) + "}" + a).encode()


def escaped_key(name: str, i: int) -> str:
    """The key as JSON text with its i-th character written as a ``\\u`` escape."""
    i %= len(name)
    return '"' + name[:i] + "\\u%04x" % ord(name[i]) + name[i + 1:] + '"'


ANY_JSON = any_json()
BIG_JSON = any_json(12)
EXTRA_NAMES = ["subscriber", "clid", "x", "CLI", "record_id ", "cli\u0000", "é"]
MUTATIONS = ["none"] * 30 + ["cut", "dup", "dup_escaped", "dup_nested", "nan", "bom", "twice", "flip",
                             "trailing_comma", "control", "pad"]


@st.composite
def cdr_line(draw):
    """A raw CDR v1 record, often odd but valid, sometimes mutated into something the core must reject."""
    fields = list(FIELDS)
    values = {f: own_value_text(draw, f) for f in fields}
    # An odd value of another shape in some field.
    if draw(st.integers(0, 3)) == 0:
        f = draw(st.sampled_from(FIELDS))
        values[f] = draw(json_value_text(f))
    # Field shifts: values moved one or more places along (a column shifted in the export).
    if draw(st.integers(0, 8)) == 0:
        i, j = sorted(draw(st.lists(st.integers(0, len(fields) - 1), min_size=2, max_size=2, unique=True)))
        seq = [values[f] for f in fields[i:j + 1]]
        k = draw(st.integers(1, len(seq)))
        for f, v in zip(fields[i:j + 1], seq[k:] + seq[:k]):
            values[f] = v
    # A field cut (missing) or null.
    if draw(st.integers(0, 5)) == 0:
        f = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            del values[f]
        else:
            values[f] = "null"
    escape_at = draw(st.integers(-40, 40))  # a key written with a \u escape, sometimes
    pairs = [(escaped_key(f, escape_at) if n == escape_at % 13 and escape_at > 0 else jstr(f), v)
             for n, (f, v) in enumerate(values.items())]
    # Extra fields the policy does not name, nested or not.
    for name in draw(st.lists(st.sampled_from(EXTRA_NAMES), max_size=2, unique=True)):
        pairs.append((jstr(name), json.dumps(draw(ANY_JSON))))
    if draw(st.integers(0, 2)) == 0:
        pairs = draw(st.permutations(pairs))
    line = assemble(draw, pairs)
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif mutation == "dup":
        f = draw(st.sampled_from(FIELDS))
        line = line.rstrip()[:-1] + f',"{f}":{own_value_text(draw, f)}}}'.encode()
    elif mutation == "dup_escaped":
        line = line.rstrip()[:-1] + b',"\\u0063li":"x","c\\u006ci":"y"}'
    elif mutation == "dup_nested":
        line = line.rstrip()[:-1] + b',"extra":{"a":[1,{"k":1,"\\u006b":2}]}}'
    elif mutation == "nan":
        f = draw(st.sampled_from(FIELDS))
        line = line.rstrip()[:-1] + f',"z":{{"{f}":{draw(bad_number)}}}}}'.encode()
    elif mutation == "bom":
        line = b"\xef\xbb\xbf" + line
    elif mutation == "twice":
        line = line + b" " + line
    elif mutation == "flip" and line:
        i = draw(st.integers(0, len(line) - 1))
        line = line[:i] + bytes([line[i] ^ draw(st.integers(1, 255))]) + line[i + 1:]
    elif mutation == "trailing_comma":
        line = line.rstrip()[:-1] + b",}"
    elif mutation == "control":
        line = line.replace(b'":"', b'":"\x01', 1)
    elif mutation == "pad":
        line = line + b" " * draw(st.sampled_from([10, MAX_BYTES]))
    return line


@st.composite
def field_value_line(draw):
    """A valid record whose fields carry numbers of every shape, nested values and odd text."""
    values = {f: own_value_text(draw, f) for f in FIELDS}
    f = draw(st.sampled_from(FIELDS))
    values[f] = draw(st.one_of(number_text, bad_number, BIG_JSON.map(json.dumps),
                               st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"a\\u0000b"',
                                                '"\\/\\b\\f\\n\\r\\t"', '{"a":{"a":1}}', '[[],{}]', '{}',
                                                '{"x":[1.0e5, -0, "q\\n"]}', '["\\ud800"]', '{"\\u0041":1,"A":2}'])))
    return assemble(draw, [(jstr(k), v) for k, v in values.items()])


@st.composite
def nested_line(draw):
    """Deep nesting around the limits, balanced or not, brackets inside strings."""
    n = draw(st.integers(MAX_DEPTH - 2, 34))
    inner = draw(st.sampled_from(["1", "[]", "{}", '"x"', "NaN"]))
    wrap = draw(st.sampled_from(["array", "object", "mixed"]))
    text = inner
    for i in range(n):
        if wrap == "array" or (wrap == "mixed" and i % 2):
            text = "[" + text + "]"
        else:
            text = '{"a":' + text + "}"
    if draw(st.booleans()):
        text = '{"record_id":"r-deep","cli":"+447700900123","dialled":"999","start":0,"duration":1,"x":' + text + "}"
    text = draw(st.sampled_from([text, text, text[:-1], text + "]", '{"s":"' + "[" * 40 + '","t":1}',
                                 '{"s":"\\"' + "{" * 40 + '"}', "[" * 40]))
    return text.encode()


@st.composite
def huge_line(draw):
    """A valid record just under or over the size limit (padding in a value or as whitespace)."""
    base = b'{"record_id":"r-big","cli":"+447700900123","dialled":"07700900456","start":"2026-01-02T03:04:05Z",' \
           b'"duration":1,"call_type":"voice","pad":""}'
    target = draw(st.sampled_from([MAX_BYTES - 1, MAX_BYTES, MAX_BYTES + 1, 64 * 1024, 64 * 1024 + 1]))
    room = max(0, target - len(base))
    if draw(st.booleans()):
        return base[:-2] + b"x" * room + b'"}'
    return base + b" " * room


raw_lines = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=40).map(lambda b: b'{"record_id":"r-1","cli":"' + b + b'"}'),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"   ", b"\t\r\n", b"\xef\xbb\xbf{}", b"{}", b"[]", b"1", b'"x"', b"null",
                     b'{"record_id":"r-x","cli":"\xff"}', b'{"record_id":"r-1","a":', b"{\"a\":1}\x00",
                     b'{"record_id":"4477009001234","x":{"record_id":"r-nested"},', b"\xed\xa0\x80",
                     b'{"record_id" :\t"r-9", "cli": 1e400}', b'{"a":"\\ud800"}', b'{"a":1,"a":NaN}']),
)

any_line = st.one_of(cdr_line(), cdr_line(), cdr_line(), field_value_line(), nested_line(), huge_line(), raw_lines)


# ----------------------------------------------------------------------------- tests


@settings(SETTINGS, max_examples=80)
@given(st.lists(any_line, min_size=1, max_size=8))
def test_native_equals_reference_on_mixed_batches(cores, lines):
    assert_same(cores, lines)


@SETTINGS
@given(st.lists(cdr_line(), min_size=1, max_size=6))
def test_native_equals_reference_on_raw_cdr_records(small_cores, lines):
    assert_same(small_cores, lines)


@SETTINGS
@given(st.lists(st.one_of(field_value_line(), nested_line(), huge_line()), min_size=1, max_size=5))
def test_native_equals_reference_on_field_values_nesting_and_size(small_cores, lines):
    assert_same(small_cores, lines)


@SETTINGS
@given(st.lists(raw_lines, min_size=1, max_size=10))
def test_native_equals_reference_on_arbitrary_bytes(small_cores, lines):
    assert_same(small_cores, lines)


@settings(SETTINGS, max_examples=300)
@given(st.lists(st.tuples(time_text(), phone()), min_size=1, max_size=12))
def test_native_equals_reference_on_odd_times_and_numbers(small_cores, values):
    # The values the core settles itself or leaves to Python (an invalid time it can tell alone,
    # a number it cleans for phonenumbers) are where two implementations meet: stress them.
    lines = [orjson.dumps({"record_id": f"r-{i}", "cli": cli, "dialled": "+447700900456", "start": t, "duration": 5})
             for i, (t, cli) in enumerate(values)]
    assert_same(small_cores, lines)


def test_native_equals_reference_on_a_grid_of_time_shapes(small_cores):
    # Every separator, fraction and offset form (and out-of-range ones) on edge dates, and epochs of
    # every size with and without a fraction: the shapes the
    # native core reads itself must read as the exact reader reads them, the rest stay pending.
    times = [f"{day}{sep}{clock}{frac}{off}"
             for day in ("0001-01-01", "1969-12-31", "2024-02-29", "2026-02-29", "9999-12-31")
             for sep in ("T", " ", "t", "  ")
             for clock in ("00:00:00", "23:59:59", "03:04:60", "24:00:00")
             for frac in ("", ".5", ".123456789", ".")
             for off in ("", "Z", "z", "+01:00", "-05:30", "+0100", "-0530", "+01", "-05", " +01:00", " Z", "+1",
                         "+01:0", "+01:00:00", "+24:00", "+23:59", "+2359", "-2360", "+99", "UTC", "+01:00Z",
                         " +0100", " -05", " z", "  +01:00", "\t+01:00", " +1", " UTC", " ", " +24:00")]
    epochs = [f"{whole}{frac}" for whole in ("0", "1", "1767323045", "99999999999", "100000000000", "1767323045123",
                                             "99999999999999", "100000000000000", "1767323045123456",
                                             "9999999999999999", "00001767323045", "12345678901234567")
              for frac in ("", ".", ".0", ".5", ".123", ".999999", ".9999999", ".1234567890123", ".5.5")]
    # The compact YYYYMMDDhhmmss (14 digits, never a millisecond epoch): valid, impossible and edge ones.
    compact = [f"{c}{frac}" for c in ("20261125093654", "20240229235959", "20260229000000", "20261301000000",
                                       "20261100000000", "20261125240000", "20261125236000", "20261231235960",
                                       "00010101000000", "00000101000000", "99991231235959")
               for frac in ("", ".5")]
    lines = [orjson.dumps({"record_id": f"r-{i}", "cli": "+447700900123", "dialled": "+447700900456", "start": t,
                           "duration": 5}) for i, t in enumerate(times + epochs + compact)]
    for at in range(0, len(lines), 500):
        assert_same(small_cores, lines[at:at + 500])


@settings(SETTINGS, max_examples=60)
@given(st.lists(cdr_line(), min_size=1, max_size=6), st.data())
def test_native_equals_reference_with_suppressed_parties(cores, lines, data):
    _, reference = cores
    rows = [vals for line in lines if (vals := reference.record_fields(line)) is not None]
    tokens = sorted({t for vals in rows for t in reference.party_tokens(vals)})
    suppressed = frozenset(data.draw(st.lists(st.sampled_from(tokens), max_size=3))) if tokens else frozenset()
    assert_same(cores, lines, suppressed | {"k0:not-a-token"})


@pytest.mark.parametrize("line, reason", [
    (b'{"a":"\\ud800"}', "invalid_json"),
    (b'{"a":"\\udc00"}', "invalid_json"),
    (b'{"a":1e400}', "non_finite_number"),
    (b'{"a":[' + b"1" + b"0" * 400 + b"]}", "non_finite_number"),
    (b'{"a":{"b":1,"\\u0062":2}}', "duplicate_key"),
    (b'{"a":1,"a":NaN}', "non_finite_number"),
    (b'[{"a":1,"a":2}]', "not_object"),
    (b'{"a":NaN,}', "invalid_json"),
])
def test_reference_parse_reasons(line, reason):
    assert parse_line(line, 65536, 32) == (reason, None)


@functools.lru_cache(maxsize=None)
def example_numbers(cc: int) -> list[str]:
    """National significant numbers of every type of every region of a calling code."""
    numbers = [phonenumbers.example_number_for_non_geo_entity(cc)] if "001" in REGIONS[cc] else []
    numbers += [phonenumbers.example_number_for_type(r, t) for r in REGIONS[cc] if r != "001"
                for t in phonenumbers.PhoneNumberType.values()]
    return [phonenumbers.national_significant_number(n) for n in numbers if n is not None]


REGIONS = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
#: Calling codes with complex prefixes and several regions, tried under every default region.
BUSY_CODES = (1, 7, 39, 44, 49, 52, 54, 55, 61, 81, 86, 91, 234, 262, 590, 599, 800, 882)


@functools.lru_cache(maxsize=None)
def number_texts(region: str) -> list[str]:
    """Numbers around what the native core and its number reader settle under ``region``.

    Random digits of every length from 3 to 18 (and some with ``+``); the example numbers of
    the region's own code, of the busy codes and of a few others, written with and without
    ``+`` and the code, with a ``0`` after the code (``+44 (0)20...``), cut or lengthened by
    a digit, and after the country code and each prefix in the region's metadata.
    """
    rng = random.Random(region)
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    values = [str(first) + digits(n - 1) for n in range(3, 19) for first in range(0, 10, 3)]
    values += ["+" + v for v in values[::3]]
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefixes = {*re.findall(r"\d+", meta.international_prefix or ""),
                *re.findall(r"\d+", meta.national_prefix_for_parsing or ""), meta.national_prefix or "0"}
    for cc in sorted({meta.country_code, *BUSY_CODES, *rng.sample(sorted(REGIONS), 4)}):
        c = str(cc)
        for e in example_numbers(cc)[:: 1 if cc == meta.country_code else 3]:
            values += [e, c + e, "+" + c + e, "+" + c + "0" + e, c + "0" + e, c + e[:-1], "+" + c + e + "1"]
            values += [p + e for p in prefixes] + [p + c + e for p in prefixes]
    for prefix in sorted(prefixes | {str(meta.country_code)}):
        values += [prefix + digits(n) for n in (5, 7, 9, 10, 12)]
    return list(dict.fromkeys(values))


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_native_reads_numbers_as_phonenumbers_does(worker_keyring, region):
    # Through the whole core: plain national digits are read in the hot path where the region's
    # prefixes are digit strings (`PhoneNormaliser.national`), what it leaves pending goes to the
    # number reader (`PhoneNormaliser.resolve_many`); the reference asks phonenumbers each time.
    router = Router(worker_keyring, CoreConfig(region=region))
    lines = [orjson.dumps({"record_id": f"r-{i}", "cli": cli, "dialled": cli, "start": "2026-01-02T03:04:05Z",
                           "duration": 5}) for i, cli in enumerate(number_texts(region)[::6])]
    assert_same((router, ReferenceCore(router.tokeniser, router.config)), lines)


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_native_number_reader_answers_as_phonenumbers_does(region):
    # Every region as the default one; the busiest (checked for coverage too) with all the numbers.
    busy = region in ("GB", "US", "DE", "IN", "BR", "CN")
    phones = PhoneNormaliser(region)
    texts = number_texts(region)[::1 if busy else 2]
    native = phones._numbering
    for cc in native.missing(texts):
        native.add(cc, *_plan(cc))
    answers = native.resolve(texts)
    assert [(t, tuple(a)) for t, a in zip(texts, answers) if a is not None] == \
        [(t, phones._resolve_slow(t)) for t, a in zip(texts, answers) if a is not None]
    if busy:
        # Short numbers and unknown codes after "+" are left to phonenumbers; little else is.
        long = [a for t, a in zip(texts, answers) if len(t.lstrip("+")) > 6]
        assert sum(a is not None for a in long) > 0.97 * len(long)


def test_national_reading_needs_plain_prefixes():
    gb, au = PhoneNormaliser("GB").national(), PhoneNormaliser("AU").national()
    assert gb is not None and set(gb[0]) == {"00", "0", "180020", "44"} and gb[1] == [7, 8, 9, 10]
    assert au is None  # AU's international prefix is a pattern: phonenumbers reads those numbers


def test_reference_matches_native_on_fixed_cases(cores):
    assert_same(cores, [
        b'{"record_id":"r-1","cli":"07700 900123","dialled":"+447700900456","start":"2026-01-02T03:04:05Z",'
        b'"duration":60,"ip":"203.0.113.7:5060","imsi":"234150123456789","imei":"35-391110-061293-7",'
        b'"cell_id":"234-15-0a1B-ff","call_type":"voice","status":"answered"}',
        b'{"cli":1.5e-7,"dialled":100000000000000000000.0,"start":1767323045,"duration":"7",'
        b'"record_id":12345678901234567890123}',
        b'{"record_id":"4477009001234","cli":"x","x":{"record_id":"r-nested"},',
        b'{"cli":"+447700900123","dialled":"999","start":"2026-01-02T03:59:59.9999999Z","duration":1}',
        b'{"cli":"+447700900123","dialled":"999","start":0,"duration":1,"record_id":' + b"1" + b"0" * 400 + b"}",
    ])


def test_fixed_disagreements(small_cores):
    """Settled for the native core: a 400-digit integer is non-finite (it was the text "inf"); a reject whose
    first plain record id is a bare number gets a derived id, never a later nested one."""
    router, _ = small_cores
    lines = [b'{"cli":"+447700900123","dialled":"999","start":0,"duration":1,"record_id":1' + b"0" * 400 + b"}",
             b'{"record_id":"4477009001234","x":{"record_id":"r-nested"},']
    routed = router.route(lines, Source(SOURCE_NAME, 5, [7, 8]))
    dlq = [(d["reason"], d["record_ref"]) for d in map(orjson.loads, routed.dlq)]
    ref = lambda rid: router.tokeniser.token_one("record", rid)  # noqa: E731
    assert dlq == [("non_finite_number", ref("in/feed_7.jsonl:5:7")), ("invalid_json", ref("in/feed_7.jsonl:5:8"))]


@pytest.mark.parametrize("start", [b'"1e300"', b"1e300", b'"9223372036854775296"', b'"1.3e192"'])
def test_huge_float_start_time_is_invalid_not_a_crash(small_cores, start):
    assert_same(small_cores, [b'{"cli":"+447700900123","dialled":"999","duration":1,"start":' + start + b"}"])
    router, _ = small_cores
    routed = router.route([b'{"cli":"+447700900123","dialled":"999","duration":1,"start":' + start + b"}"],
                          Source(SOURCE_NAME, 5, [0]))
    assert routed.dlq_reasons == {"invalid_field": 1}
