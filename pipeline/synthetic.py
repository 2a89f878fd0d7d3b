"""Seeded generator of realistic raw CDR v1 traffic (NDJSON) for the demo, tests and benchmark.

The output looks like what switches and mediation platforms really emit: a Zipf-skewed
population of subscribers (mostly UK, some NANP/DE/FR/ES/IN), each with a stable MSISDN,
IMSI, IMEI and home IP, written in many different number and address formats, with
special CLIs, short codes, SMS sender ids, PBX extensions, mixed timestamp styles and a
small share of malformed lines of every kind the pipeline must survive.

Everything is standard library only, and fast without numpy: each block of
``CHUNK_LINES`` lines draws its random bytes in one go from its own seeded RNG, every
categorical choice is a lookup of a raw 16-bit value in a 65 536-entry table, and lines
are assembled column by column with C-level ``map``/``operator`` passes; only the rare
cases (late records, missing ``record_id``, malformed lines) take a Python-level pass.
The same seed always yields the same bytes, ``generate(n)`` is a prefix of ``generate(m)``
for ``n < m`` with the other arguments equal, and output does not depend on chunking.

    python -m pipeline.synthetic --records 1000000 --seed 7 --output cdrs.ndjson
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import itertools
import math
import operator
import os
import random
import sys
import time
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

__all__ = [
    "DEFAULT_START",
    "MALFORMED_KINDS",
    "Population",
    "Subscriber",
    "SyntheticStats",
    "Synthesizer",
    "generate",
    "main",
    "write_sample",
]

#: First record time when ``start`` is not given: fixed, so output never depends on "now".
DEFAULT_START = _dt.datetime(2026, 11, 25, 0, 0, 0, tzinfo=_dt.timezone.utc)

#: Lines per block of random draws, and at most per yielded chunk.
CHUNK_LINES = 10_000

#: Busiest subscribers whose number renderings are pre-rendered (~0.9 kB each).
HOT_SUBSCRIBERS = 50_000

#: Largest population: number plans, IMEI serials and sampling tables are sized for it.
MAX_SUBSCRIBERS = 1_000_000

_M64 = (1 << 64) - 1
_T = TypeVar("_T")
_FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))

# --------------------------------------------------------------------------- tables

#: (country, cc, share out of 1024, IMSI MCC+MNC, number of MSIN digits).
_COUNTRIES: tuple[tuple[str, str, int, str, int], ...] = (
    ("GB", "44", 840, "23415", 10),
    ("US", "1", 60, "310260", 9),
    ("DE", "49", 40, "26201", 10),
    ("FR", "33", 30, "20801", 10),
    ("ES", "34", 30, "21401", 10),
    ("IN", "91", 24, "40445", 10),
)
_US_AREAS = ("212", "415", "646", "202", "312", "617", "305", "206", "512", "718")
_DE_PREFIXES = ("151", "152", "157", "160", "170", "171", "176", "179")
_FR_PREFIXES = ("6", "7")
_IN_PREFIXES = ("9", "8", "7")

#: Real-looking 8-digit Type Allocation Codes for IMEIs.
_TACS = ("35332510", "35391110", "35674108", "86891603", "35209911", "49015420",
         "35875011", "35925406", "01332700", "35407115", "35290611", "86453504")

#: First octets of consumer IPv4 space (UK ISPs, CGNAT 100.64/10 handled separately).
_V4_FIRST = (2, 5, 31, 37, 46, 51, 62, 77, 78, 79, 80, 81, 82, 86, 90, 92, 94, 109,
             176, 178, 185, 188, 212, 213, 217)
_V6_PREFIXES = ("2a00:23c%x", "2a01:4b0%x", "2a02:c7c%x", "2a05:87c%x", "2a0a:ef4%x")
_ZONES = ("eth0", "wlan0", "en0", "3")
_PORTS = (5060, 5061, 443, 8080, 49152, 51820, 3478, 65001)

_CELL_NETWORKS = ("234-10", "234-15", "234-20", "234-30", "234-33")

_SPECIAL_CLIS = ("anonymous", "withheld", "", "Restricted", "Anonymous", "WITHHELD", "private")
_PBX_EXTENSIONS = ("1001", "2345", "4410", "3001", "1200", "7002", "2000", "5555")
_SHORT_CODES = ("999", "112", "150", "2020", "101", "111", "123", "155", "191", "17070")
_SMS_SENDERS = ("HSBC", "AMAZON", "DPD", "NHSAlert", "Uber", "BARCLAYS", "Royal Mail",
                "VERIFY", "Monzo", "EE", "Vodafone", "DVLA")

#: GB number formats over (4-digit prefix, 6-digit subscriber part); index = format code.
_GB_FORMATS = ('"+44%s%s"', '"0%s%s"', '"0%s %s"', '"0044 %s%s"', '"+44 %s %s"',
               '"tel:+44%s%s"', '"(+44) %s-%s"', '"44%s%s"', '"+44%s%s"', '"0%s %s"',
               '"0044%s%s"')
#: Format codes written with full-width digits (U+FF10..U+FF19).
_FW_CODES = frozenset({8, 9})
#: Share of each format code out of 1024 (E.164 most common, full-width rare).
_FORMAT_WEIGHTS = (352, 128, 112, 32, 112, 80, 48, 96, 16, 16, 32)
#: Number of number formats (codes 0 .. _FORMATS - 1).
_FORMATS = len(_FORMAT_WEIGHTS)

# (call_type, status, duration drawn?, count out of 1024).
_CALL_MIX = (
    ("voice", "answered", 1, 400), ("voice", "no_answer", 0, 80), ("voice", "busy", 0, 45),
    ("voice", "failed", 0, 35), ("sms", "answered", 0, 240), ("sms", "failed", 0, 10),
    ("data", "answered", 0, 145), ("data", "failed", 0, 5), ("video", "answered", 1, 44),
    ("video", "no_answer", 0, 10), ("video", "busy", 0, 5), ("video", "failed", 0, 5),
)
# (UTC offset seconds or None for epoch, suffix, count out of 64).
_TIME_MIX = ((0, "Z", 30), (None, "", 16), (3600, "+01:00", 6), (0, "+00:00", 3),
             (-18000, "-05:00", 3), (19800, "+05:30", 2), (7200, "+02:00", 2),
             (-28800, "-08:00", 2))

#: Every kind of malformed line, with its relative weight.
_MALFORMED_WEIGHTS: dict[str, float] = {
    "truncated": 14, "not_json": 8, "json_array": 5, "json_scalar": 4,
    "duration_string": 6, "duration_float": 4, "duration_negative": 4,
    "cli_number": 5, "cli_object": 4, "null_required": 8, "missing_required": 8,
    "bad_timestamp": 4, "deep_nesting": 3, "huge_string": 0.4, "invalid_utf8": 5,
    "bom": 4, "nan": 4, "duplicate_keys": 5, "empty_line": 4, "trailing_garbage": 3,
    "control_char": 2,
}
MALFORMED_KINDS: tuple[str, ...] = tuple(_MALFORMED_WEIGHTS)
_REQUIRED = ("cli", "dialled", "start", "duration")

#: Valid records that omit ``record_id`` (the pipeline must derive one): ~2% of 16 bits.
_NO_RID_THRESHOLD = 1311
#: Lines per 1024 whose cli is an alphanumeric SMS sender id (such records become SMS).
_SENDER_PER_1024 = 32
#: Records that arrive late (up to two days old): ~0.1%, as a threshold on 32 bits.
_LATE_THRESHOLD = (1 << 32) // 1000


def _table(pairs: Iterable[tuple[_T, int]], size: int) -> tuple[_T, ...]:
    """Expand (value, count) pairs into a lookup table so a choice costs one index."""
    out: list[_T] = []
    for value, count in pairs:
        out.extend([value] * count)
    if len(out) != size:
        raise AssertionError(f"table has {len(out)} entries, want {size}")
    return tuple(out)


def _widen(table: tuple[_T, ...]) -> tuple[_T, ...]:
    """Stretch a table to 65 536 entries so a raw 16-bit random value indexes it directly."""
    repeat = 65536 // len(table)
    return tuple(v for v in table for _ in range(repeat))


def _quoted(value: str) -> str:
    """JSON string literal for values known to need no escaping (checked)."""
    if any(c in value for c in '"\\%') or any(ord(c) < 0x20 for c in value):
        raise ValueError(f"value needs escaping: {value!r}")
    return '"' + value + '"'


_SPECIAL_GROUPS: dict[str, tuple[str, ...]] = {
    "withheld": tuple(map(_quoted, _SPECIAL_CLIS)),
    "pbx": tuple(map(_quoted, _PBX_EXTENSIONS)),
    "short": tuple(map(_quoted, _SHORT_CODES)),
    "sender": tuple(map(_quoted, _SMS_SENDERS)),
}


def _number_tables(specials: tuple[tuple[str, int], ...]
                   ) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """16-bit tables: the number format code, and the special value that replaces it.

    ``specials`` are (group, count out of 1024) carved out of plain E.164; the low six bits
    of the random value pick which value of the group. Specials are rare, so they are
    patched in by a sparse pass instead of widening every subscriber's format tuple.
    """
    weights = list(_FORMAT_WEIGHTS)
    weights[0] -= sum(count for _, count in specials)
    coarse: list[object] = list(_table(tuple(enumerate(weights)), sum(weights)))
    for group, count in specials:
        coarse.extend([group] * count)
    codes: list[int] = []
    values: list[str | None] = []
    for h in range(65536):
        entry = coarse[h >> 6]
        if isinstance(entry, str):
            choices = _SPECIAL_GROUPS[entry]
            codes.append(0)
            values.append(choices[(h & 63) % len(choices)])
        else:
            codes.append(entry)  # type: ignore[arg-type]
            values.append(None)
    return tuple(codes), tuple(values)


#: cli: ~1.6% withheld-style, ~0.8% PBX extensions, ~3% SMS sender ids.
_CLI_FORMAT, _CLI_SPECIAL = _number_tables((("withheld", 16), ("pbx", 8),
                                            ("sender", _SENDER_PER_1024)))
_CLI_IS_SPECIAL = tuple(v is not None for v in _CLI_SPECIAL)
_IS_SENDER = tuple(v in _SPECIAL_GROUPS["sender"] for v in _CLI_SPECIAL)
#: dialled: ~1.2% short codes, ~0.8% PBX extensions.
_DIALLED_FORMAT, _DIALLED_SPECIAL = _number_tables((("short", 12), ("pbx", 8)))
_DIALLED_IS_SPECIAL = tuple(v is not None for v in _DIALLED_SPECIAL)

_CALL_FRAGMENT = _widen(_table(tuple((f'"call_type":"{c}","status":"{s}"', n)
                                     for c, s, _, n in _CALL_MIX), 1024))
_CALL_TIMED = _widen(_table(tuple((t, n) for _, _, t, n in _CALL_MIX), 1024))
_SMS_DELIVERED = '"call_type":"sms","status":"answered"'
#: ISO formats take (date, time, epoch) and print the first two; epoch prints the third.
_TIME_FORMAT = _widen(_table(tuple(
    ("%.0s%.0s%d" if off is None else '"%sT%s' + suffix + '%.0s"', n)
    for off, suffix, n in _TIME_MIX), 64))
_TIME_OFFSET = _widen(_table(tuple((off or 0, n) for off, _, n in _TIME_MIX), 64))
#: Raw 16-bit value -> one of 32 IP slots.
_IP_SLOT_OF = tuple(h & 31 for h in range(65536))

_LINE = ('{"record_id":"r-%09d","cli":%s,"dialled":%s,"start":%s,'
         '"duration":%d,%s%s,"cell_id":"%s",%s}')


@functools.cache
def _hms() -> tuple[str, ...]:
    """All 86 400 "HH:MM:SS" strings, so formatting a time is two lookups."""
    return tuple(f"{h:02d}:{m:02d}:{s:02d}"
                 for h in range(24) for m in range(60) for s in range(60))


def _durations() -> tuple[int, ...]:
    """65 536 skewed call durations (lognormal: many short calls, a few of hours)."""
    rng = random.Random("cdrpipe-durations")
    out = []
    for _ in range(65536):
        if rng.random() < 0.04:
            out.append(rng.randrange(0, 4))  # answered, then dropped at once
        else:
            out.append(min(14_400, int(rng.lognormvariate(3.9, 1.15))))
    return tuple(out)


_DURATIONS = _durations()


def _mix(x: int) -> int:
    """SplitMix64 finaliser: per-subscriber pseudo-random bits without consuming RNG state."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


#: Luhn: a digit's contribution when doubled.
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
#: Luhn sums of digit groups "ab" / "abcd" whose 2nd and 4th digits are doubled.
_LUHN2 = {f"{a}{b}": a + _LUHN_DOUBLED[b] for a in range(10) for b in range(10)}
_LUHN4 = {x + y: _LUHN2[x] + _LUHN2[y] for x in _LUHN2 for y in _LUHN2}


def _luhn_digit(payload: str) -> str:
    """Check digit of a 14-digit IMEI payload, so generated IMEIs validate like real ones."""
    total = (_LUHN4[payload[0:4]] + _LUHN4[payload[4:8]] + _LUHN4[payload[8:12]]
             + _LUHN2[payload[12:14]])
    return str(-total % 10)


# --------------------------------------------------------------------------- population


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One synthetic subscriber's stable identifiers; tests use it to hunt for leaks."""

    index: int
    country: str
    e164: str
    imsi: str
    imei: str
    ip: str
    home_cell: str
    number_formats: tuple[str, ...]
    ip_formats: tuple[str, ...]


def _positional(template: str, code: int, groups: int) -> str:
    """Template over (ASCII groups..., full-width groups...): unused ones print as ``%.0s``."""
    if code in _FW_CODES:
        return "%.0s" * groups + template.translate(_FULLWIDTH)
    return template + "%.0s" * groups


def _country_templates(formats: tuple[str, ...]) -> tuple[str, ...]:
    """Templates by format code, all taking the same (ASCII + full-width) argument tuple."""
    if len(formats) != _FORMATS:
        raise AssertionError(f"{len(formats)} formats, want {_FORMATS}")
    groups = formats[0].count("%s")
    return tuple(_positional(f, code, groups) for code, f in enumerate(formats))


def _other_formats(cc: str, groups: int) -> tuple[str, ...]:
    """Non-GB formats: E.164 with or without spaces and with a 00 prefix, by format code."""
    e164 = '"+' + cc + "%s" * groups + '"'
    spaced = '"+' + cc + " " + " ".join(["%s"] * groups) + '"'
    zero = '"00' + cc + "%s" * groups + '"'
    zero_spaced = '"00' + cc + " " + " ".join(["%s"] * groups) + '"'
    return (e164, zero_spaced, spaced, zero, spaced, e164, zero_spaced, e164, e164, spaced, zero)


_TEMPLATES: dict[str, tuple[str, ...]] = {
    "GB": _country_templates(_GB_FORMATS),
    "US": _country_templates(_other_formats("1", 3)),
    "DE": _country_templates(_other_formats("49", 2)),
    "FR": _country_templates(_other_formats("33", 5)),
    "ES": _country_templates(_other_formats("34", 3)),
    "IN": _country_templates(_other_formats("91", 2)),
}


def _ip_slots(weights: tuple[int, ...]) -> tuple[int, ...]:
    """32-slot table choosing which rendering of the home IP a record carries (-1: none)."""
    pairs = tuple((v, n) for v, n in zip((-1, 0, 1, 2, 3), weights, strict=True) if n)
    return _table(pairs, 32)


# Renderings per kind: v4 (plain, :5060, :port), v6 (plain, UPPER, [..]:5060, [UPPER]:port),
# mapped (plain, UPPER, [..]:5060), zone (plain, UPPER); ~9% of records carry no ip at all.
_IP_SLOTS = {
    "v4": _ip_slots((3, 25, 3, 1, 0)),
    "v6": _ip_slots((3, 21, 5, 2, 1)),
    "mapped": _ip_slots((3, 25, 2, 2, 0)),
    "zone": _ip_slots((3, 26, 3, 0, 0)),
}


def _words16(h: int, count: int) -> list[int]:
    """``count`` 16-bit groups derived from ``h`` (for IPv6 addresses)."""
    bits = _mix(h ^ 1) | (_mix(h ^ 2) << 64)
    return [(bits >> (16 * k)) & 0xFFFF for k in range(count)]


class _Formatter:
    """Formats a cold subscriber's number on demand (memory over speed for rare callers)."""

    __slots__ = ("templates", "parts")

    def __init__(self, templates: tuple[str, ...], parts: tuple[str, ...]) -> None:
        self.templates = templates
        self.parts = parts

    def __getitem__(self, code: int) -> str:
        return self.templates[code] % self.parts


class _Ident:
    """Compact per-subscriber data the hot path needs (built once, on first use)."""

    __slots__ = ("templates", "parts", "numbers", "fixed", "ips", "ip_slots", "home_cell",
                 "country", "e164", "imsi", "imei")

    def __init__(self, parts: tuple[str, ...], country: str, ips: tuple[str, ...],
                 ip_slots: tuple[int, ...], home_cell: str, e164: str, imsi: str,
                 imei: str, hot: bool) -> None:
        self.templates = _TEMPLATES[country]
        #: Format arguments: the ASCII digit groups, then the same in full-width digits.
        self.parts = parts + tuple(p.translate(_FULLWIDTH) for p in parts)
        #: Quoted number by format code: pre-rendered for busy subscribers (most lines
        #: involve them), formatted on demand for the long tail to bound memory.
        self.numbers: tuple[str, ...] | _Formatter = (
            tuple(t % self.parts for t in self.templates) if hot
            else _Formatter(self.templates, self.parts))
        self.fixed = f'"imsi":"{imsi}","imei":"{imei}"'
        #: ``"ip":"...",`` renderings; the last is "" so slot -1 means "no ip field".
        self.ips = ips + ("",)
        self.ip_slots = ip_slots
        self.home_cell = home_cell
        self.country = country
        self.e164 = e164
        self.imsi = imsi
        self.imei = imei

    def number(self, code: int) -> str:
        """Quoted JSON string of this subscriber's number in format ``code``."""
        return self.templates[code] % self.parts


_NUMBERS_OF = operator.attrgetter("numbers")
_FIXED_OF = operator.attrgetter("fixed")
_IPS_OF = operator.attrgetter("ips")
_IP_SLOTS_OF = operator.attrgetter("ip_slots")
_HOME_OF = operator.attrgetter("home_cell")


class Population:
    """The stable subscriber base: identities derive from (seed, index), never from RNG order."""

    def __init__(self, seed: int = 0, size: int = 100_000) -> None:
        if not 2 <= size <= MAX_SUBSCRIBERS:
            raise ValueError(f"subscribers must be within [2, {MAX_SUBSCRIBERS}]")
        self.seed = seed
        self.size = size
        setup = random.Random(f"cdrpipe-population-{seed}")
        self._key = setup.getrandbits(64)
        # Affine permutations make every number/IMSI/IMEI unique within its country.
        self._space = 100_000 * math.ceil(size / 100_000)
        self._perm = [self._coprime(setup, self._space) for _ in range(3)]
        self._offs = [setup.randrange(self._space) for _ in range(3)]
        # Numbers and MSINs spread over their whole range: affine bijections mod 10**digits
        # (a multiplier ending in 1, 3, 7 or 9 is coprime with every 2**a * 5**b).
        self._spread = setup.randrange(10 ** 8, 10 ** 9) // 10 * 10 + setup.choice((1, 3, 7, 9))
        self._msin_mul = setup.randrange(10 ** 8, 10 ** 9) // 10 * 10 + setup.choice((1, 3, 7, 9))
        self._msin_add = setup.randrange(10 ** 9)
        self.cells: tuple[str, ...] = tuple(
            f"{setup.choice(_CELL_NETWORKS)}-{setup.randrange(1000, 65000)}-"
            f"{setup.randrange(1, 99999)}" for _ in range(4096))
        #: Subscribers from busiest to quietest (activity rank -> index), shuffled by seed
        #: so that heavy users come from every country.
        self.by_activity = list(range(size))
        random.Random(f"cdrpipe-activity-{seed}").shuffle(self.by_activity)
        self._hot = bytearray(size)
        for i in self.by_activity[:HOT_SUBSCRIBERS]:
            self._hot[i] = 1
        self._idents: list[_Ident | None] = [None] * size
        self._built = bytearray(size)  # 1 where _idents[i] is set: a cache-friendly test

    @staticmethod
    def _coprime(rng: random.Random, space: int) -> int:
        """A multiplier coprime with ``space`` so ``i*a+b mod space`` is a permutation."""
        while True:
            a = rng.randrange(1, space) | 1
            if math.gcd(a, space) == 1:
                return a

    def __len__(self) -> int:
        return self.size

    def ident(self, i: int) -> _Ident:
        """Cached compact identity of subscriber ``i``."""
        ident = self._idents[i]
        if ident is None:
            ident = self._idents[i] = self._build(i)
            self._built[i] = 1
        return ident

    def _ensure(self, indices: list[int]) -> None:
        """Build every identity in ``indices`` not built yet (C-level scan of a flag array)."""
        built = self._built
        idents, build = self._idents, self._build
        for i in set(itertools.compress(indices, map(operator.not_,
                                                     map(built.__getitem__, indices)))):
            idents[i] = build(i)
            built[i] = 1

    def _build(self, i: int) -> _Ident:
        """Derive subscriber ``i``'s identifiers deterministically from the seed."""
        h1 = _mix(self._key ^ i)
        h2 = _mix(h1)
        v = (i * self._perm[0] + self._offs[0]) % self._space
        pick = h1 & 1023
        for entry in _COUNTRIES:
            if pick < entry[2]:
                break
            pick -= entry[2]
        country, cc, _, plmn, msin_digits = entry
        sel = h1 >> 10
        if country == "GB":  # the 07700 900000-999999 style block, then the next ones
            nsn = str(7700900000 + v)
            parts: tuple[str, ...] = (nsn[:4], nsn[4:])
        else:  # spread over the national plan (a bijection mod 2**a * 5**b: still unique)
            w = i * self._spread + self._offs[0]
            if country == "US":
                nsn = _US_AREAS[sel % len(_US_AREAS)] + "%07d" % (2_000_000 + w % 8_000_000)
                parts = (nsn[:3], nsn[3:6], nsn[6:])
            elif country == "DE":
                parts = (_DE_PREFIXES[sel % len(_DE_PREFIXES)], "%08d" % (10 ** 7 + w % 10 ** 7))
            elif country == "FR":
                nsn = _FR_PREFIXES[sel % 2] + "%08d" % (w % 10 ** 8)
                parts = (nsn[0], nsn[1:3], nsn[3:5], nsn[5:7], nsn[7:])
            elif country == "ES":
                nsn = "6%08d" % (w % 10 ** 8)
                parts = (nsn[:3], nsn[3:6], nsn[6:])
            else:  # IN
                nsn = _IN_PREFIXES[sel % 3] + "%09d" % (w % 10 ** 9)
                parts = (nsn[:5], nsn[5:])
        e164 = "+" + cc + "".join(parts)
        msin = (i * self._perm[1] + self._offs[1]) % self._space
        imsi = plmn + "%0*d" % (msin_digits,
                                (msin * self._msin_mul + self._msin_add) % 10 ** msin_digits)
        serial = (i * self._perm[2] + self._offs[2]) % self._space % 1_000_000
        payload = _TACS[(h2 >> 40) % len(_TACS)] + "%06d" % serial
        imei = payload + _luhn_digit(payload)
        kind, ips = self._ips(h2)
        return _Ident(parts, country, ips, _IP_SLOTS[kind], self.cells[(h1 >> 20) & 4095],
                      e164, imsi, imei, bool(self._hot[i]))

    @staticmethod
    def _ips(h: int) -> tuple[str, tuple[str, ...]]:
        """Home IP kind (~72% IPv4) and its renderings as ``"ip":"...",`` JSON fragments."""
        pick = h & 1023
        b = [(h >> s) & 0xFF for s in range(8, 64, 8)]
        if b[1] < 40:  # CGNAT
            v4 = f"100.{64 + b[2] % 64}.{b[3]}.{1 + b[4] % 254}"
        elif b[1] < 48:  # documentation ranges
            v4 = f"{('192.0.2', '198.51.100', '203.0.113')[b[2] % 3]}.{1 + b[4] % 254}"
        else:
            v4 = f"{_V4_FIRST[b[0] % len(_V4_FIRST)]}.{b[2]}.{b[3]}.{1 + b[4] % 254}"
        port = _PORTS[b[5] % len(_PORTS)]
        if pick < 740:
            kind, plain = "v4", v4
            forms: tuple[str, ...] = (plain, f"{plain}:5060", f"{plain}:{port}")
        elif pick < 900:
            words = _words16(h, 6)
            prefix = _V6_PREFIXES[b[0] % len(_V6_PREFIXES)] % (b[2] % 16)
            if b[3] < 96:  # compressed
                plain = f"{prefix}:{words[0]:x}::{words[1]:x}"
            else:
                plain = prefix + "".join(f":{w:x}" for w in words)
            kind = "v6"
            forms = (plain, plain.upper(), f"[{plain}]:5060", f"[{plain.upper()}]:{port}")
        elif pick < 970:
            kind, plain = "mapped", f"::ffff:{v4}"
            forms = (plain, plain.upper(), f"[{plain}]:5060")
        else:
            zone = _ZONES[b[5] % len(_ZONES)]
            addr = "fe80::" + ":".join(f"{w:x}" for w in _words16(h, 4))
            kind = "zone"
            forms = (f"{addr}%{zone}", f"{addr.upper()}%{zone}")
        return kind, tuple(['"ip":"%s",' % f for f in forms])

    def __getitem__(self, i: int) -> Subscriber:
        """Full, readable identity of subscriber ``i`` (all its number and IP renderings)."""
        if not 0 <= i < self.size:
            raise IndexError(i)
        d = self.ident(i)
        numbers = tuple(dict.fromkeys(d.number(c)[1:-1] for c in range(_FORMATS)))
        ips = tuple(f[6:-2] for f in d.ips[:-1])
        return Subscriber(i, d.country, d.e164, d.imsi, d.imei, ips[0], d.home_cell,
                          numbers, ips)

    def __iter__(self) -> Iterator[Subscriber]:
        return (self[i] for i in range(self.size))


# --------------------------------------------------------------------------- generator


def _sampling_table(weights: list[float], order: list[int], bits: int) -> list[int]:
    """``2**bits`` slots shared out in proportion to ``weights``, each slot naming a subscriber.

    Indexing it with a uniform random value samples the distribution in one C-level lookup
    (instead of a bisect). Slot boundaries are the rounded cumulative weights, so shares
    are exact to a slot and a subscriber worth under one slot gets zero or one.
    """
    size = 1 << bits
    scale = size / sum(weights)
    table: list[int] = []
    extend = table.extend
    acc = 0.0
    filled = 0
    for w, sub in zip(weights, order, strict=True):
        acc += w * scale
        upto = min(size, round(acc))
        extend(itertools.repeat(sub, upto - filled))
        filled = upto
    extend(itertools.repeat(order[-1], size - filled))
    return table


#: array typecodes of unsigned 16- and 32-bit integers on this platform.
_U16 = "H"
_U32 = "I" if array("I").itemsize == 4 else "L"


def _u(raw: bytes, typecode: str) -> array[int]:
    """Unsigned ints from little-endian random bytes, whatever the platform's byte order."""
    out = array(typecode)
    out.frombytes(raw)
    if sys.byteorder == "big":
        out.byteswap()
    return out


class _Block:
    """The raw random draws for one block of ``CHUNK_LINES`` lines (chunking-independent)."""

    __slots__ = ("index", "caller", "callee", "cli", "dialled", "call", "dur", "time",
                 "ip", "cell", "norid", "jitter", "bad", "late")

    def __init__(self, seed: int, index: int) -> None:
        rb = random.Random(f"cdrpipe-stream-{seed}-{index}").randbytes
        c = CHUNK_LINES
        self.index = index
        self.caller = _u(rb(4 * c), _U32)
        self.callee = _u(rb(4 * c), _U32)
        self.cli = _u(rb(2 * c), _U16)
        self.dialled = _u(rb(2 * c), _U16)
        self.call = _u(rb(2 * c), _U16)
        self.dur = _u(rb(2 * c), _U16)
        self.time = _u(rb(2 * c), _U16)
        self.ip = _u(rb(2 * c), _U16)
        self.cell = _u(rb(2 * c), _U16)
        self.norid = _u(rb(2 * c), _U16)
        self.jitter = rb(c)
        self.bad = _u(rb(4 * c), _U32)
        self.late = _u(rb(4 * c), _U32)


@dataclass(slots=True)
class SyntheticStats:
    """What was generated, for the CLI summary and for tests that check proportions."""

    lines: int = 0
    malformed: int = 0
    without_record_id: int = 0
    malformed_by_kind: Counter[str] = field(default_factory=Counter)


class Synthesizer:
    """Stateful generator behind ``generate``; keeps ``stats`` and the shared population."""

    def __init__(self, *, seed: int = 0, subscribers: int = 100_000,
                 malformed_rate: float = 0.005, start: _dt.datetime | None = None,
                 zipf_exponent: float = 1.0, zipf_offset: float = 20.0,
                 population: Population | None = None) -> None:
        #: Everything the output depends on, so worker processes can rebuild this generator.
        self._params = dict(seed=seed, subscribers=subscribers, malformed_rate=malformed_rate,
                            start=start, zipf_exponent=zipf_exponent, zipf_offset=zipf_offset)
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError("malformed_rate must be within [0, 1]")
        if population is not None and (population.seed, population.size) != (seed, subscribers):
            raise ValueError("population does not match seed/subscribers")
        self.seed = seed
        self.population = population or Population(seed, subscribers)
        self.malformed_rate = malformed_rate
        self._bad_threshold = min(1 << 32, int(malformed_rate * (1 << 32)))
        start = start or DEFAULT_START
        if start.tzinfo is None:
            start = start.replace(tzinfo=_dt.timezone.utc)
        self._t0 = int(start.timestamp())
        self.stats = SyntheticStats()
        self._bad_key = _mix((seed & _M64) ^ 0x6D616C666F726D65)  # "malforme"
        self._bad_cum = list(itertools.accumulate(_MALFORMED_WEIGHTS.values()))
        self._next_line = 0
        self._block: _Block | None = None
        # Callers follow a Zipf-Mandelbrot law over activity ranks (a few subscribers make
        # many calls); callees half that, half uniform, so nearly everyone gets called.
        n = subscribers
        zipf = [1.0 / (r + zipf_offset) ** zipf_exponent for r in range(n)]
        total = sum(zipf)
        order = self.population.by_activity
        bits = min(22, max(16, (4 * n - 1).bit_length()))  # ~4 slots per subscriber
        self._shift = 32 - bits
        self._callers = _sampling_table(zipf, order, bits)
        self._callees = _sampling_table([0.5 * w / total + 0.5 / n for w in zipf], order, bits)
        cells = self.population.cells
        #: Raw 16-bit value -> a cell away from home (25%); absent: the caller's home cell.
        self._away_cell = {h: cells[h >> 2 & 4095] for h in range(0, 65536, 4)}
        self._days: dict[int, str] = {}

    def chunks(self, n: int, *, workers: int = 1) -> Iterator[bytes]:
        """Yield the next ``n`` lines as NDJSON chunks (continuing where the last call ended).

        With ``workers > 1`` chunks are rendered by that many processes, same bytes.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        end = self._next_line + n
        jobs = []
        first = self._next_line
        while first < end:
            k = min(CHUNK_LINES - first % CHUNK_LINES, end - first)
            jobs.append((first, k))
            first += k
        if workers <= 1 or len(jobs) < 2:
            for first, k in jobs:
                yield self._chunk(first, k)
            return
        yield from self._parallel(jobs, workers)

    def _parallel(self, jobs: list[tuple[int, int]], workers: int) -> Iterator[bytes]:
        """Render ``jobs`` in worker processes, in order, with a bounded number in flight."""
        import concurrent.futures
        import multiprocessing

        stats = self.stats
        pending: deque[concurrent.futures.Future[tuple[bytes, SyntheticStats]]] = deque()
        todo = iter(jobs)
        context = multiprocessing.get_context("spawn")  # safe even in threaded parents
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for job in itertools.islice(todo, 2 * workers):
                pending.append(pool.submit(_render_in_worker, self._params, *job))
            while pending:
                data, part = pending.popleft().result()
                for job in itertools.islice(todo, 1):
                    pending.append(pool.submit(_render_in_worker, self._params, *job))
                stats.lines += part.lines
                stats.malformed += part.malformed
                stats.without_record_id += part.without_record_id
                stats.malformed_by_kind.update(part.malformed_by_kind)
                self._next_line += part.lines
                yield data

    def _draws(self, block: int) -> _Block:
        """The random draws for ``block`` (cached: consecutive chunks share a block)."""
        if self._block is None or self._block.index != block:
            self._block = _Block(self.seed, block)
        return self._block

    def _fill_days(self, lo: int, hi: int) -> None:
        """Cache "YYYY-MM-DD" for every day number in [lo, hi]."""
        days = self._days
        for day in range(lo, hi + 1):
            if day not in days:
                days[day] = (_dt.date(1970, 1, 1) + _dt.timedelta(days=day)).isoformat()

    def _chunk(self, first: int, k: int) -> bytes:
        """Render lines ``first+1 .. first+k`` column by column with C-level passes."""
        blk = self._draws(first // CHUNK_LINES)
        lo = first % CHUNK_LINES
        hi = lo + k
        rep, compress, mod, getitem = itertools.repeat, itertools.compress, operator.mod, \
            operator.getitem
        lines_range = range(first + 1, first + k + 1)
        pop = self.population
        # Who calls whom: the top bits of raw 32-bit values index the sampling tables.
        callers = list(map(self._callers.__getitem__,
                           map(operator.rshift, blk.caller[lo:hi], rep(self._shift))))
        callees = list(map(self._callees.__getitem__,
                           map(operator.rshift, blk.callee[lo:hi], rep(self._shift))))
        for j in compress(range(k), map(operator.eq, callers, callees)):
            callees[j] = (callees[j] + 1) % pop.size  # nobody calls themselves
        pop._ensure(callers)
        pop._ensure(callees)
        ident = pop._idents.__getitem__
        a_ids: list[_Ident] = list(map(ident, callers))  # type: ignore[arg-type]
        b_ids: list[_Ident] = list(map(ident, callees))  # type: ignore[arg-type]
        # Numbers: the subscriber's rendering for the drawn format, then rare specials.
        cli_raw = blk.cli[lo:hi]
        clis = list(map(getitem, map(_NUMBERS_OF, a_ids), map(_CLI_FORMAT.__getitem__, cli_raw)))
        for j in compress(range(k), map(_CLI_IS_SPECIAL.__getitem__, cli_raw)):
            clis[j] = _CLI_SPECIAL[cli_raw[j]]
        dialled_raw = blk.dialled[lo:hi]
        dialleds = list(map(getitem, map(_NUMBERS_OF, b_ids),
                            map(_DIALLED_FORMAT.__getitem__, dialled_raw)))
        for j in compress(range(k), map(_DIALLED_IS_SPECIAL.__getitem__, dialled_raw)):
            dialleds[j] = _DIALLED_SPECIAL[dialled_raw[j]]
        call_raw = blk.call[lo:hi]
        calls: list[str] = list(map(_CALL_FRAGMENT.__getitem__, call_raw))
        durs = list(map(operator.mul, map(_DURATIONS.__getitem__, blk.dur[lo:hi]),
                        map(_CALL_TIMED.__getitem__, call_raw)))
        for j in compress(range(k), map(_IS_SENDER.__getitem__, cli_raw)):
            calls[j] = _SMS_DELIVERED  # an alphanumeric sender only ever sends SMS
            durs[j] = 0
        # Times: ~11.4 records/s, each exported up to 4 min late; ~0.1% up to 2 days late.
        base = 80 * self._t0
        times = list(map(operator.add,
                         map(operator.floordiv, range(base + 7 * (first + 1),
                                                      base + 7 * (first + k + 1), 7), rep(80)),
                         blk.jitter[lo:hi]))
        late = blk.late[lo:hi]
        for j in compress(range(k), map(operator.gt, rep(_LATE_THRESHOLD), late)):
            times[j] -= late[j] % 172_800
        time_raw = blk.time[lo:hi]
        local = list(map(operator.add, times, map(_TIME_OFFSET.__getitem__, time_raw)))
        self._fill_days(min(local) // 86_400, max(local) // 86_400)
        starts = list(map(mod, map(_TIME_FORMAT.__getitem__, time_raw),
                          zip(map(self._days.__getitem__,
                                  map(operator.floordiv, local, rep(86_400))),
                              map(_hms().__getitem__, map(mod, local, rep(86_400))),
                              times, strict=True)))
        ips: list[str] = list(map(getitem, map(_IPS_OF, a_ids),
                                  map(getitem, map(_IP_SLOTS_OF, a_ids),
                                      map(_IP_SLOT_OF.__getitem__, blk.ip[lo:hi]))))
        cells: list[str] = list(map(self._away_cell.get, blk.cell[lo:hi], map(_HOME_OF, a_ids)))
        lines = list(map(_LINE.__mod__, zip(lines_range, clis, dialleds, starts, durs, ips,
                                            map(_FIXED_OF, a_ids), cells, calls, strict=True)))
        # Sparse passes: corrupt ~malformed_rate of lines, drop record_id from ~2% of the rest.
        stats = self.stats
        bad = set(compress(range(k), map(operator.gt, rep(self._bad_threshold),
                                         blk.bad[lo:hi])))
        for j in sorted(bad):
            lines[j] = self._malformed(first + j + 1, a_ids[j], b_ids[j], starts[j], durs[j],
                                       ips[j], cells[j], calls[j])
        for j in compress(range(k), map(operator.gt, rep(_NO_RID_THRESHOLD),
                                        blk.norid[lo:hi])):
            if j not in bad:
                stats.without_record_id += 1
                lines[j] = "{" + lines[j].split(",", 1)[1]
        self._next_line = first + k
        stats.lines += k
        lines.append("")
        return "\n".join(lines).encode("utf-8", "surrogateescape")

    # ------------------------------------------------------------------ malformed lines

    def _malformed(self, i: int, a: _Ident, b: _Ident, start: str, dur: int, ip: str,
                   cell: str, call: str) -> str:
        """One malformed line of a random kind, still carrying real identifiers."""
        r = random.Random(_mix(self._bad_key ^ i))  # per line: no state across lines
        kind = MALFORMED_KINDS[bisect_right(self._bad_cum, r.random() * self._bad_cum[-1])]
        self.stats.malformed += 1
        self.stats.malformed_by_kind[kind] += 1
        cli = a.number(r.randrange(8))  # ASCII renderings: the raw identifier stays findable
        dialled = b.number(r.randrange(8))
        pairs: list[tuple[str, str]] = [
            ("record_id", f'"r-{i:09d}"'), ("cli", cli), ("dialled", dialled),
            ("start", start), ("duration", str(dur))]
        if ip:
            pairs.append(("ip", ip[5:-1]))
        pairs += [("imsi", f'"{a.imsi}"'), ("imei", f'"{a.imei}"'), ("cell_id", f'"{cell}"')]
        call_type, status = (p.split(":")[1] for p in call.split(","))
        pairs += [("call_type", call_type), ("status", status)]

        def render(ps: list[tuple[str, str]]) -> str:
            return "{" + ",".join(f'"{k}":{v}' for k, v in ps) + "}"

        def replace(key: str, value: str) -> list[tuple[str, str]]:
            return [(k, value if k == key else v) for k, v in pairs]

        raw_cli, raw_dialled = cli[1:-1], dialled[1:-1]
        if kind == "truncated":
            line = render(pairs)
            after_cli = line.index(cli) + len(cli)
            return line[:r.randrange(after_cli, len(line) - 1)]
        if kind == "not_json":
            return r.choice((
                f"CDR|r-{i:09d}|{raw_cli}|{raw_dialled}|{start.strip(chr(34))}|{dur}|{a.imsi}",
                f"r-{i:09d},{raw_cli},{raw_dialled},{start.strip(chr(34))},{dur},{a.imei}",
                f"<cdr><cli>{raw_cli}</cli><dialled>{raw_dialled}</dialled></cdr>",
                f"cli={raw_cli} dialled={raw_dialled} duration={dur} imsi={a.imsi}",
                f"ERROR mediation: could not export record for {raw_cli}",
            ))
        if kind == "json_array":
            return "[" + ",".join(v for _, v in pairs) + "]"
        if kind == "json_scalar":
            return r.choice((a.e164[1:], cli, "null", "true", a.imsi))
        if kind == "duration_string":
            return render(replace("duration", r.choice(('"abc"', f'"{dur}s"', '"01:02:03"'))))
        if kind == "duration_float":
            return render(replace("duration", f"{dur}.5"))
        if kind == "duration_negative":
            return render(replace("duration", f"-{dur + 1}"))
        if kind == "cli_number":
            return render(replace("cli", a.e164[1:]))
        if kind == "cli_object":
            return render(replace("cli", f'{{"number":"{a.e164}","presentation":"allowed"}}'))
        if kind == "null_required":
            return render(replace(r.choice(_REQUIRED), "null"))
        if kind == "missing_required":
            gone = r.choice(_REQUIRED)
            return render([(k, v) for k, v in pairs if k != gone])
        if kind == "bad_timestamp":
            bad = r.choice(('"2026-13-45T25:61:00Z"', '"yesterday"', '"25/11/2026 12:34"',
                            "true", '""'))
            return render(replace("start", bad))
        if kind == "deep_nesting":
            depth = 200
            if r.random() < 0.5:
                deep = '{"a":' * depth + f'"{a.e164}"' + "}" * depth
                return render(replace("cli", deep))
            return render(pairs + [("ext", "[" * depth + f'"{a.imsi}"' + "]" * depth)])
        if kind == "huge_string":
            return render(pairs + [("note", '"' + "lorem ipsum " * 17_000 + '"')])
        if kind == "invalid_utf8":
            # Lone surrogates become raw bytes 0x80..0xFF under surrogateescape.
            bad = r.choice(("Jos\udce9", "caf\udcc3(", "\udcff\udcfe", "\udce2\udc82"))
            return render(pairs + [("caller_name", f'"{bad}"')])
        if kind == "bom":
            return "\ufeff" + render(pairs)
        if kind == "nan":
            return render(replace("duration", r.choice(("NaN", "Infinity", "-Infinity"))))
        if kind == "duplicate_keys":
            return render(pairs + [("cli", dialled), ("duration", str(dur + 3))])
        if kind == "empty_line":
            return r.choice(("", "   ", "\t"))
        if kind == "trailing_garbage":
            return render(pairs) + r.choice(("}", " x", ",", f' {{"cli":{cli}}}'))
        if kind == "control_char":
            return render(replace("cell_id", f'"{cell}\x01\x00"'))
        raise AssertionError(kind)


#: A worker process's generator, rebuilt only when the parameters change.
_WORKER: tuple[dict[str, object], Synthesizer] | None = None


def _render_in_worker(params: dict[str, Any], first: int, k: int
                      ) -> tuple[bytes, SyntheticStats]:
    """Worker-process side of ``Synthesizer.chunks(workers=...)``: one chunk and its stats."""
    global _WORKER
    if _WORKER is None or _WORKER[0] != params:
        _WORKER = (params, Synthesizer(**params))
    synth = _WORKER[1]
    synth.stats = SyntheticStats()
    return synth._chunk(first, k), synth.stats


# --------------------------------------------------------------------------- public API


def generate(n: int, *, seed: int = 0, subscribers: int = 100_000,
             malformed_rate: float = 0.005,
             start: _dt.datetime | None = None) -> Iterator[bytes]:
    """Yield ``n`` raw CDR lines as NDJSON byte chunks; same arguments, same bytes."""
    return Synthesizer(seed=seed, subscribers=subscribers, malformed_rate=malformed_rate,
                       start=start).chunks(n)


def _write(out: IO[bytes], synth: Synthesizer, n: int, workers: int = 1) -> None:
    """Stream chunks to a binary file object without holding the output in memory."""
    for chunk in synth.chunks(n, workers=workers):
        out.write(chunk)


def write_sample(path: str | os.PathLike[str], n: int, seed: int = 0, *,
                 subscribers: int = 100_000, malformed_rate: float = 0.005,
                 start: _dt.datetime | None = None, workers: int = 1) -> None:
    """Write ``n`` lines to ``path`` (the demo's and README quick start's input file).

    ``workers > 1`` renders in that many processes (same bytes; worth it from ~200k lines).
    """
    synth = Synthesizer(seed=seed, subscribers=subscribers, malformed_rate=malformed_rate,
                        start=start)
    with open(path, "wb") as out:
        _write(out, synth, n, workers)


def _parse_start(text: str) -> _dt.datetime:
    """argparse type for --start: ISO-8601, naive means UTC."""
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.synthetic``: write sample traffic and summarise on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic",
        description="Write seeded synthetic raw CDR v1 traffic as NDJSON.")
    parser.add_argument("--records", "-n", type=int, default=10_000,
                        help="number of lines to write, malformed ones included (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    parser.add_argument("--subscribers", type=int, default=100_000,
                        help="subscriber population size (default 100000)")
    parser.add_argument("--malformed-rate", type=float, default=0.005,
                        help="share of malformed lines (default 0.005)")
    parser.add_argument("--start", type=_parse_start, default=None,
                        help="time of the first record, ISO-8601 (default 2026-11-25T00:00:00Z)")
    parser.add_argument("--output", "-o", default="-", help="output file, '-' for stdout")
    parser.add_argument("--workers", "-j", type=int, default=1,
                        help="processes rendering in parallel, same output (default 1)")
    args = parser.parse_args(argv)
    if args.records < 0:
        parser.error("--records must be >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        synth = Synthesizer(seed=args.seed, subscribers=args.subscribers,
                            malformed_rate=args.malformed_rate, start=args.start)
    except ValueError as exc:
        parser.error(str(exc))
    began = time.perf_counter()
    if args.output == "-":
        _write(sys.stdout.buffer, synth, args.records, args.workers)
        sys.stdout.buffer.flush()
    else:
        with open(args.output, "wb") as out:
            _write(out, synth, args.records, args.workers)
    took = time.perf_counter() - began
    s = synth.stats
    print(f"synthetic: {s.lines} lines ({s.malformed} malformed, {s.without_record_id} "
          f"without record_id) from {args.subscribers} subscribers, seed {args.seed}, "
          f"to {args.output} in {took:.2f} s ({s.lines / took if took else 0:,.0f} lines/s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Run the importable module's main, so worker processes and pickled classes agree.
    from pipeline.synthetic import main as _main

    sys.exit(_main())
