"""The core's per-record semantics in slow, plain Python: the oracle the native core is tested against.

``ReferenceCore.route(records, source_name, partition, offsets)`` gives, for a batch of raw
byte lines, what ``Router.route`` must give: the analytics records (dicts, in order), every
rejected record as ``(reason, field, detail, record_ref)`` (parse rejects in row order first,
then the records that failed a check, in row order) and the counts.

Nothing here is fast or native. JSON is read with the standard library's ``json`` (hooks
keep number text, NaN/Infinity and duplicate keys visible); phone numbers and IPs go
through :func:`pipeline.core.normalise.canonical_answers` and times through
:func:`pipeline.core.times.parse_times` (the documented slow paths, for every value, not
only the ones the native fast paths leave pending; a value they raise on is invalid);
tokens are the standard library's HMAC (:meth:`Tokeniser.token_one`). The rules mirror the
old pure-Python/Polars core (``git show 8cff83f~1:pipeline/core/*.py`` and the actions
module before it), with the native core's documented choices where the old one had none:

* a lone surrogate escape (``"\\ud800"``) is ``invalid_json``;
* any number that overflows a double, integer or not, is ``non_finite_number``;
* a wanted field's value as text: strings decoded, ``true``/``false``, integers that fit
  64 bits verbatim (``-0`` as ``0``), other numbers in shortest round-trip decimal without
  exponent, nested values re-serialised (``", "``/``": "`` separators, numbers verbatim,
  strings escaped as orjson does);
* digits in record ids, durations, kept values and cell ids are ASCII digits;
* a reject's record id is the first plain ``"record_id":"..."`` in its first 4096 bytes,
  unless that one is a bare number (then none: a later, nested one is never taken).
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import polars as pl

from pipeline.core.normalise import PhoneNormaliser, canonical_answers
from pipeline.core.parse import PARSE_REASON_DETAIL
from pipeline.core.router import CoreConfig
from pipeline.core.times import parse_times
from pipeline.core.tokenise import Tokeniser

REQUIRED = ("cli", "dialled", "start", "duration")
#: Call types without a duration: a record of one may omit it (compared trimmed, ASCII case-blind).
NON_VOICE = frozenset({"sms", "mms", "text", "data", "ussd"})
SUPPRESSION_FIELDS = (("cli", "msisdn"), ("dialled", "msisdn"), ("imsi", "imsi"))
UNIT_US = {"second": 1_000_000, "minute": 60_000_000, "hour": 3_600_000_000, "day": 86_400_000_000}
KEPT_ID_DETAIL = "record_id: a kept id must not hold a run of 7 or more digits (a number or a time); use token:record"
RECORD_ID_DETAIL = ("record_id must be an opaque id of 1-128 characters of A-Z a-z 0-9 . _ : / @ + - "
                    "and not a bare number")
TOKEN_DETAIL = "not a valid {}"
KEEP_DETAIL = "kept fields must be short plain values with at most 5 digits; tokenise or drop it"
IP_DETAIL = "not a valid IPv4 or IPv6 address"
TIME_DETAIL = "not an ISO-8601 time or epoch seconds"

JSON_WS = b" \t\r\n"
BOM = b"\xef\xbb\xbf"
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/@+-")
KEEP_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.:/+-")
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/@+-")
ASCII_DIGITS = frozenset("0123456789")
HEX = frozenset("0123456789abcdefABCDEF")
#: Unicode White_Space (what Rust's ``trim`` and the regex ``\s`` of Polars strip; not Python's ``isspace``).
WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                        "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_RAW_RECORD_ID = re.compile(rb'"record_id"[ \t\n\r\x0b\x0c]*:[ \t\n\r\x0b\x0c]*"([A-Za-z0-9._:/@+\-]{1,128})"')
I64 = (-(1 << 63), (1 << 63) - 1)
U64_MAX = (1 << 64) - 1


@dataclass
class ReferenceResult:
    analytics: list[dict]
    dlq: list[tuple[str, str | None, str, str]]
    counts: dict[str, int]


# ----------------------------------------------------------------------------- JSON


class _Invalid(Exception):
    pass


class Num:
    """A JSON number as written, and whether it has a fraction or exponent."""

    __slots__ = ("text", "is_float")

    def __init__(self, text: str, is_float: bool) -> None:
        self.text, self.is_float = text, is_float

    def __repr__(self) -> str:
        return f"Num({self.text!r})"


class Obj(list):
    """A JSON object as its (key, value) pairs, duplicates kept."""


class Const:
    """NaN, Infinity or -Infinity (never valid, kept so the parse can go on)."""

    def __init__(self, text: str) -> None:
        self.text = text


def rust_float_text(f: float) -> str:
    """``format!("{}", f)`` for a finite f64: shortest round-trip digits, never an exponent."""
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    text = format(Decimal(repr(f)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _overflows(text: str) -> bool:
    return math.isinf(float(text))


def depth(text: str) -> int:
    """Deepest bracket nesting outside strings (broken JSON too)."""
    deepest = cur = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            cur += 1
            deepest = max(deepest, cur)
        elif ch in "]}":
            cur -= 1
    return deepest


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def _walk_strings(value, flags: dict) -> None:
    """Set ``flags['surrogate']`` for a lone surrogate anywhere, ``flags['duplicate']`` for a repeated key."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Obj):
            keys = [k for k, _ in v]
            if len(set(keys)) != len(keys):
                flags["duplicate"] = True
            for k, item in v:
                if _has_surrogate(k):
                    flags["surrogate"] = True
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and _has_surrogate(v):
            flags["surrogate"] = True


def parse_line(raw: bytes, max_bytes: int, max_depth: int) -> tuple[str | None, Obj | None]:
    """``(reason, None)`` for a reject, else ``(None, the top-level object)``; checks in the contract's order."""
    if len(raw) > max_bytes:
        return "too_large", None
    stripped = raw.strip(JSON_WS)
    if not stripped:
        return "empty", None
    if stripped.startswith(BOM):
        return "bom", None
    try:
        text = stripped.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        return "too_deep", None
    flags = {"nonfinite": False, "duplicate": False, "surrogate": False}

    def number(text: str, is_float: bool) -> Num:
        if (is_float or len(text) > 19) and _overflows(text):
            flags["nonfinite"] = True
        return Num(text, is_float)

    def constant(text: str) -> Const:
        flags["nonfinite"] = True
        return Const(text)

    try:
        value = json.loads(text, object_pairs_hook=Obj, parse_int=lambda t: number(t, False),
                           parse_float=lambda t: number(t, True), parse_constant=constant)
    except (ValueError, RecursionError):
        return "invalid_json", None
    _walk_strings(value, flags)
    if flags["surrogate"]:
        return "invalid_json", None
    if flags["nonfinite"]:
        return "non_finite_number", None
    if not isinstance(value, Obj):
        return "not_object", None
    if flags["duplicate"]:
        return "duplicate_key", None
    return None, value


def escape(s: str) -> str:
    """JSON string body escaped as orjson writes it (``"``, ``\\``, short forms, ``\\u00XX`` for other controls)."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o == 8:
            out.append("\\b")
        elif o == 12:
            out.append("\\f")
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def serialise(value) -> str:
    """A nested value as field text: ``", "`` and ``": "`` separators, numbers as written."""
    if isinstance(value, Obj):
        return "{" + ", ".join(f'"{escape(k)}": {serialise(v)}' for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(serialise(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + escape(value) + '"'
    if isinstance(value, Num):
        return value.text
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    raise AssertionError(f"unexpected value {value!r}")


def field_text(value) -> str | None:
    """A wanted top-level field's value as the text the checks and actions see (None: absent or null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Num):
        if not value.is_float:
            if value.text == "-0":
                return "0"
            n = int(value.text)
            if I64[0] <= n <= U64_MAX:
                return str(n)
        return rust_float_text(float(value.text))
    return serialise(value)


# ----------------------------------------------------------------------------- checks and actions


def number_shaped(s: str) -> bool:
    d = s[1:] if s.startswith("+") else s
    return 7 <= len(d) <= 16 and all(c in ASCII_DIGITS for c in d)


def valid_record_id(s: str) -> bool:
    return 1 <= len(s) <= 128 and all(c in ID_CHARS for c in s) and not number_shaped(s)


def raw_record_id(raw: bytes) -> str | None:
    """A reject's own plain record id: the first ``"record_id":"..."`` in its first 4096 bytes, if not a bare number."""
    m = _RAW_RECORD_ID.search(raw, 0, 4096)
    if m is None:
        return None
    rid = m.group(1).decode()
    return None if number_shaped(rid) else rid


def safe_source_name(name: str) -> str:
    return "".join(c if c in NAME_CHARS else "_" for c in name)[:64] or "source"


def is_safe_keep(v: str) -> bool:
    return len(v) <= 64 and all(c in KEEP_CHARS for c in v) and sum(c in ASCII_DIGITS for c in v) <= 5


def rust_trim(s: str) -> str:
    i, j = 0, len(s)
    while i < j and s[i] in WHITE_SPACE:
        i += 1
    while j > i and s[j - 1] in WHITE_SPACE:
        j -= 1
    return s[i:j]


THREE_DIGIT_MNC = {302, 310, 311, 312, 313, 314, 315, 316, 330, 334, 338, 342, 344, 346, 348, 354, 356, 358, 360,
                   365, 366, 376, 405, 708, 722, 732, 750}
CELL_LABEL = re.compile(r"^(ecgi|ncgi|cgi|tai)[:= \-]?", re.IGNORECASE)


def kind_of(rule) -> str:
    """The token kind of a ``token:<kind>[:<period>]`` rule."""
    return rule.arg.partition(":")[0]


def cell_area(v: str) -> str | None:
    """A cell id's area (``MCC-MNC-LAC``/``-TAC``) or site (``-enb<id>``/``-gnb<id>``), or None (nulled)."""
    t = rust_trim(v)
    m = CELL_LABEL.match(t)
    label = m[1].lower() if m else ""
    rest = "".join(itertools.dropwhile(lambda c: c in WHITE_SPACE, t[m.end():])) if m else t
    parts = re.split(r"[-:./]", rest)
    if any(p == "" for p in parts) or len(parts) > 4:
        return None
    dec = lambda s, lo, hi: lo <= len(s) <= hi and all(c in ASCII_DIGITS for c in s)  # noqa: E731
    if dec(parts[0], 5, 6):
        mcc, mnc, tail = parts[0][:3], parts[0][3:], parts[1:]
    elif len(parts) >= 2 and dec(parts[0], 3, 3) and dec(parts[1], 2, 3):
        mcc, mnc, tail = parts[0], parts[1], parts[2:]
    else:
        return None
    if len(mnc) == 3 and mnc[0] == "0" and int(mcc) not in THREE_DIGIT_MNC:
        mnc = mnc[1:]

    def area(s: str, hi: int) -> str | None:
        s = s[2:] if s[:2] in ("0x", "0X") else s
        return s if 1 <= len(s) <= hi and all(c in HEX for c in s) else None

    if len(tail) == 2 and label in ("", "cgi", "tai"):
        a = area(tail[0], 8)
        return f"{mcc}-{mnc}-{a}" if a is not None and area(tail[1], 12) is not None else None
    if len(tail) == 1 and label == "tai":
        a = area(tail[0], 8)
        return None if a is None else f"{mcc}-{mnc}-{a}"
    if len(tail) == 1 and label in ("", "ecgi", "ncgi"):
        s = tail[0]
        hexed = s[:2] in ("0x", "0X") or any(c.isalpha() for c in s)
        digits = s[2:] if s[:2] in ("0x", "0X") else s
        if not (1 <= len(digits) <= 12 and all(c in HEX for c in digits)):
            return None
        value = int(digits, 16 if hexed else 10)
        nr = label == "ncgi" or (label == "" and value >= 1 << 28)
        if (label == "ecgi" and value >= 1 << 28) or value >= 1 << 36:
            return None
        return f"{mcc}-{mnc}-gnb{value >> 14}" if nr else f"{mcc}-{mnc}-enb{value >> 8}"
    return None


def digits_id(v: str, lo: int, hi: int, keep: int | None) -> str | None:
    """IMSI/IMEI: NFKC, separators (White_Space, ``-``, ``.``) removed, lo-hi decimal digits, cut to ``keep``."""
    if not v.isascii():
        v = unicodedata.normalize("NFKC", v)
    d = "".join(c for c in v if c not in WHITE_SPACE and c not in "-.")
    if not (lo <= len(d) <= hi and all(unicodedata.category(c) == "Nd" for c in d)):
        return None
    return d[:keep] if keep else d


def account_id(v: str) -> str | None:
    t = rust_trim(unicodedata.normalize("NFKC", v))
    return t or None


def ip_network(canonical: str, v4_bits: int, v6_bits: int) -> str | None:
    try:
        addr = ipaddress.ip_address(canonical)
    except ValueError:
        return None
    bits = v4_bits if addr.version == 4 else v6_bits
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of days since 1970-01-01, any year (H. Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def format_time(us: int) -> str:
    """``%Y-%m-%dT%H:%M:%SZ`` as chrono writes it: a sign before years outside 0-9999, ``?`` past its range."""
    secs = us // 1_000_000
    days, rest = divmod(secs, 86400)
    y, m, d = civil(days)
    if not -262143 <= y <= 262142:
        return "?"
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{'+' if y > 0 else '-'}{abs(y):04d}"
    return f"{year}-{m:02d}-{d:02d}T{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}Z"


def _epoch_us(values: list[str]) -> list[int | None]:
    """Microseconds since the epoch from :func:`parse_times`; None where it cannot read a value.

    A value the slow reader raises on (rather than answering null) is invalid, as the router
    treats it, never a crash; it is then asked one value at a time so only that value is.
    """
    try:
        return parse_times(pl.Series("t", values, dtype=pl.String)).dt.epoch("us").to_list()
    except pl.exceptions.PolarsError:
        if len(values) == 1:
            return [None]
        return [_epoch_us([v])[0] for v in values]


class ReferenceCore:
    """The per-record semantics of ``Router`` for one configuration (JSONL input)."""

    def __init__(self, tokeniser: Tokeniser, config: CoreConfig | None = None) -> None:
        self.config = cfg = config or CoreConfig()
        self.tokeniser = tokeniser
        self.rules = cfg.policy.rules
        self.phones = PhoneNormaliser(cfg.region)
        self.fields = list(dict.fromkeys([*("record_id", "cli", "dialled", "start", "duration", "imsi", "call_type"),
                                          *(r.field for r in self.rules)]))
        self._answers: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self._times: dict[str, int | None] = {}

    # -- slow paths, one value at a time (cached per value)

    def canonical(self, kind: str, v: str) -> tuple[bool, str | None, str | None]:
        """``(valid, canonical value or None, class)`` of one raw value for a token kind."""
        if kind == "imsi":
            value = digits_id(v, 6, 15, None)
            return value is not None, value, None
        if kind == "imei":
            value = digits_id(v, 14, 16, 14)
            return value is not None, value, None
        if kind == "account":
            value = account_id(v)
            return value is not None, value, None
        key = (kind, v)
        if key not in self._answers:
            answers = canonical_answers(kind, pl.Series("raw", [v], dtype=pl.String), self.phones)
            row = answers.row(0, named=True)
            assert row["raw"] == v
            self._answers[key] = (row["value"], row["cls"])
        value, cls = self._answers[key]
        valid = cls is not None if kind == "msisdn" else value is not None
        return valid, value, cls

    def time_us(self, v: str) -> int | None:
        if v not in self._times:
            self._times[v] = _epoch_us([v])[0]
        return self._times[v]

    def prefetch(self, kind: str, values: set[str]) -> None:
        """Settle many values of one kind in one slow-path call (the answers are the same one at a time)."""
        if kind == "time":
            todo = sorted(v for v in values if v not in self._times)
            if todo:
                micros = _epoch_us(todo)
                self._times.update(zip(todo, micros))
            return
        todo = sorted(v for v in values if (kind, v) not in self._answers)
        if todo:
            answers = canonical_answers(kind, pl.Series("raw", todo, dtype=pl.String), self.phones)
            for row in answers.iter_rows(named=True):
                self._answers[(kind, row["raw"])] = (row["value"], row["cls"])

    # -- one batch

    def party_tokens(self, vals: dict[str, str | None]) -> list[str]:
        """Tokens that decide suppression: cli and dialled as msisdn, imsi as imsi (valid values only)."""
        out = []
        for name, kind in SUPPRESSION_FIELDS:
            if vals[name] is not None:
                ok, value, _ = self.canonical(kind, vals[name])
                if ok and value is not None:
                    out.append(self.tokeniser.token_one(kind, value))
        return out

    def record_fields(self, raw: bytes) -> dict[str, str | None] | None:
        """A record's wanted fields as text, or None if it does not parse."""
        _, obj = parse_line(raw, self.config.max_record_bytes, self.config.max_depth)
        return None if obj is None else {f: field_text(dict(obj).get(f)) for f in self.fields}

    def route(self, records: list[bytes], source_name: str, partition: int, offsets: list[int],
              suppressed: frozenset[str] = frozenset()) -> ReferenceResult:
        """The batch's analytics, DLQ and counts; a valid record with a party in ``suppressed`` is only counted."""
        cfg = self.config
        n_suppressed = 0
        prefix = safe_source_name(source_name)
        parse_rejects, check_rejects, analytics = [], [], []
        parsed = [parse_line(raw, cfg.max_record_bytes, cfg.max_depth) for raw in records]
        rows = [None if obj is None else {f: field_text(dict(obj).get(f)) for f in self.fields} for _, obj in parsed]
        self._prefetch_batch([r for r in rows if r is not None])
        for row, raw in enumerate(records):
            derived = f"{prefix}:{partition}:{offsets[row]}"
            reason, vals = parsed[row][0], rows[row]
            if reason is not None:
                rid = raw_record_id(raw) or derived
                parse_rejects.append((reason, None, PARSE_REASON_DETAIL[reason], self.record_ref(rid)))
                continue
            own = vals["record_id"]
            rid = own if own is not None and valid_record_id(own) else derived
            failed, out = self._check_and_build(vals, rid)
            if failed is not None:
                code, name, detail = failed
                check_rejects.append((code, name, detail, self.record_ref(rid)))
            elif suppressed and any(t in suppressed for t in self.party_tokens(vals)):
                n_suppressed += 1
            else:
                analytics.append(out)
        dlq = parse_rejects + check_rejects
        counts = {"in": len(records), "analytics": len(analytics), "retention": len(records), "dlq": len(dlq),
                  "suppressed": n_suppressed}
        return ReferenceResult(analytics, dlq, counts)

    def _prefetch_batch(self, rows: list[dict[str, str | None]]) -> None:
        wanted: dict[str, set[str]] = {"time": set(), "msisdn": set(), "ip": set()}
        fields = {"start": "time", **{name: kind for name, kind in SUPPRESSION_FIELDS if kind == "msisdn"}}
        for r in self.rules:
            if r.action == "token" and kind_of(r) in wanted:
                fields[r.field] = kind_of(r)
            elif r.action == "truncate_ip":
                fields[r.field] = "ip"
            elif r.action == "coarsen_time":
                fields[r.field] = "time"
        for vals in rows:
            for name, kind in fields.items():
                if vals[name] is not None:
                    wanted[kind].add(vals[name])
        for kind, values in wanted.items():
            self.prefetch(kind, values)

    def record_ref(self, rid: str) -> str:
        """What outside the sealed payload stands for a record id: its token of kind ``record``."""
        return self.tokeniser.token_one("record", rid)

    def _check_and_build(self, vals: dict[str, str | None], rid: str):
        non_voice = vals["call_type"] is not None and rust_trim(vals["call_type"]).lower() in NON_VOICE
        for name in REQUIRED:
            if vals[name] is None and not (name == "duration" and non_voice):
                return ("missing_field", name, f"{name} is missing or null"), None
        if vals["record_id"] is not None and not valid_record_id(vals["record_id"]):
            return ("invalid_record_id", "record_id", RECORD_ID_DETAIL), None
        kept_id = any(r.field == "record_id" and r.action == "keep" for r in self.rules)
        if kept_id and vals["record_id"] is not None and re.search(r"[0-9]{7}", vals["record_id"]):
            return ("unsafe_value", "record_id", KEPT_ID_DETAIL), None
        d = vals["duration"]
        if d is not None and not (1 <= len(d) <= 9 and all(c in ASCII_DIGITS for c in d)):
            return ("invalid_field", "duration", "duration must be whole seconds >= 0"), None
        if self.time_us(vals["start"]) is None:
            return ("invalid_field", "start", "start must be ISO-8601 or epoch seconds"), None

        results: dict[int, object] = {}
        for i, r in enumerate(self.rules):
            if r.action == "drop" or r.field == "record_id" or (r.action == "keep" and r.field == "duration"):
                continue
            v = vals[r.field]
            if v is None:
                results[i] = None
                continue
            bad = None
            if r.action == "token":
                ok, value, cls = self.canonical(kind_of(r), v)
                results[i] = (value, cls)
                bad = None if ok else ("invalid_field", TOKEN_DETAIL.format(kind_of(r)))
            elif r.action == "keep":
                bad = None if is_safe_keep(v) else ("unsafe_value", KEEP_DETAIL)
            elif r.action == "truncate_ip":
                v4, v6 = (int(x) for x in (r.arg or "24/48").split("/"))
                ok, value, _ = self.canonical("ip", v)
                results[i] = net = ip_network(value, v4, v6) if ok else None
                bad = None if net is not None else ("invalid_field", IP_DETAIL)
            elif r.action == "coarsen_time":
                results[i] = us = self.time_us(v)
                bad = None if us is not None else ("invalid_field", TIME_DETAIL)
            elif r.action == "generalise_cell":
                results[i] = cell_area(v)  # a cell id in no known form is nulled, never a reject
            if bad is not None:
                return (bad[0], r.field, f"{r.field}: {bad[1]}"), None
        for name, kind in SUPPRESSION_FIELDS:
            if any(r.field == name and r.action == "token" and r.arg == kind for r in self.rules):
                continue
            if vals[name] is not None and not self.canonical(kind, vals[name])[0]:
                return ("invalid_field", name, f"{name}: not a valid {kind}"), None

        out: dict[str, object] = {}
        for i, r in enumerate(self.rules):
            if r.action == "drop":
                continue
            if r.field == "record_id":
                out["record_id"] = rid if r.action == "keep" else self.record_ref(rid)
                continue
            v = vals[r.field]
            if r.action == "keep" and r.field == "duration":
                out[r.field] = 0 if v is None else int(v)  # absent only for a call type without a duration
            elif r.action == "keep":
                out[r.field] = v
            elif r.action == "token":
                value, cls = results[i] if results[i] is not None else (None, None)
                month = None
                if r.arg.endswith(":monthly"):  # the month of the record's start, UTC
                    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=self.time_us(vals["start"]))
                    month = f"{when.year:04d}-{when.month:02d}"
                out[r.field] = None if value is None else self.tokeniser.token_one(kind_of(r), value, month)
                if kind_of(r) == "msisdn":
                    out[f"{r.field}_class"] = cls
            elif r.action in ("truncate_ip", "generalise_cell"):
                out[r.field] = results[i]
            elif r.action == "coarsen_time":
                us = results[i]
                if us is None:
                    out[r.field] = None
                else:
                    unit = UNIT_US[r.arg or "hour"]
                    out[r.field] = format_time(us // unit * unit)
        return None, out
