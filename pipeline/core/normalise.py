"""Canonical forms for identifiers, column at a time, so one subscriber gets one token.

Phone numbers go to E.164 with a default region. The common shapes (``+44…``,
``0044…``, ``07700 900123``, ``tel:`` and ``sip:`` URIs, separators) are settled by rules built from
``phonenumbers``' region metadata (country code, trunk and international prefixes): in the
native core for the hot path (:meth:`PhoneNormaliser.dialling` hands it the metadata), and
here as Polars expressions for the vault and for the pending values the core cannot clean
itself (text that needs NFKC); only what those rules cannot settle goes to ``phonenumbers``
itself (:attr:`PhoneNormaliser.resolve`), once per distinct value. The core hands the numbers
it cleaned to ``resolve`` directly, so routing JSONL never imports Polars.

Every normaliser returns two columns: the canonical value (null when the input cannot be
normalised) and a class. Nothing here raises on bad data: a null canonical value with a
non-null input is how a caller learns the value is invalid.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

import phonenumbers
from pipeline._native import PhoneNumbering
from pipeline.lazy import polars as pl
from phonenumbers import shortnumberinfo

#: Number classes an analytics reader sees next to each token.
E164, SHORT_CODE, EXTENSION, NON_E164, ALPHANUMERIC, WITHHELD = (
    "e164", "short_code", "extension", "non_e164", "alphanumeric", "withheld")
WITHHELD_WORDS = ["", "anonymous", "withheld", "restricted", "private", "unknown", "unavailable",
                  "anonymous caller", "number withheld", "no caller id", "cli withheld"]
DEFAULT_CACHE = 1 << 18

_SEPARATORS = r"[\s().\-/\u00a0]"
_URI = r"^(?i:sips?|tel):"
#: Every calling code libphonenumber knows (``44``, ``1``, ``353``…).
COUNTRY_CODES = frozenset(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def uri_user(text: pl.Expr) -> pl.Expr:
    """The user part of a ``sip:``, ``sips:`` or ``tel:`` URI, stripped; other text as it is (``text`` is stripped).

    Switches write calling numbers as ``sip:+447700900123@host;user=phone``, ``tel:+44…;phone-context=…``
    or ``sip:anonymous@anonymous.invalid``: the number (or withheld word) is what follows the
    scheme, up to the first ``@`` or ``;``. The native core's ``uri_user`` does the same.
    """
    return pl.when(text.str.contains(_URI)).then(text.str.extract(_URI + "([^@;]*)", 1).str.strip_chars()) \
        .otherwise(text)


def _cleaned(text: pl.Expr) -> pl.Expr:
    """URL-encoded ``+`` undone, separators removed (``text`` is a URI's user part, NFKC'd and stripped)."""
    return text.str.replace_all(r"(?i)%2B", "+").str.replace_all(_SEPARATORS, "")


def nfkc_where_needed(frame: pl.DataFrame, column: str, out: str) -> pl.DataFrame:
    """``frame`` with ``out`` = NFKC of ``column``, normalising only the values with non-ASCII characters.

    NFKC costs about a third of a microsecond a value; most identifiers are plain ASCII and
    are their own normal form. Row order changes (callers key on the raw value, not on position).
    """
    wide = frame[column].str.contains(r"[^\x00-\x7F]")
    if not wide.any():
        return frame.with_columns(pl.col(column).alias(out))
    return pl.concat([frame.filter(~wide).with_columns(pl.col(column).alias(out)),
                      frame.filter(wide).with_columns(pl.col(column).str.normalize("NFKC").alias(out))])


#: ``+`` then a real country code then a national part that does not start with a trunk ``0``
#: (``+44 07700…`` is a common mistake only ``phonenumbers`` should settle). Country codes are
#: prefix-free, so the alternation can match one way only.
_E164_SHAPE = r"^\+[1-9][0-9]{7,14}$"
_E164_CC = r"^\+(?:" + "|".join(sorted(COUNTRY_CODES, key=lambda c: (-len(c), c))) + r")[1-9]"


def map_distinct(raw: pl.Series, compute: Callable[[pl.Series], pl.DataFrame]) -> pl.DataFrame:
    """Answer columns for ``raw`` computed once per distinct non-null value, aligned with ``raw``.

    ``compute`` gets the distinct values and returns a frame with ``raw`` plus its answers.
    """
    raw = raw.cast(pl.String).rename("raw")
    answers = compute(raw.unique().drop_nulls())
    return raw.to_frame().join(answers, on="raw", how="left", maintain_order="left").drop("raw")


class PhoneNormaliser:
    """Normalise calling/dialled numbers to E.164 (or an explicit class) for one default region."""

    def __init__(self, region: str = "GB", cache_size: int = DEFAULT_CACHE) -> None:
        region = region.upper()
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None:
            raise ValueError(f"unknown region {region!r}: use an ISO 3166 code such as GB, US, DE")
        self.region = region
        self._cc = str(meta.country_code)
        idd = meta.preferred_international_prefix or meta.international_prefix or ""
        self._idd = idd if idd.isdigit() else None
        self._trunk = meta.national_prefix if (meta.national_prefix or "").isdigit() else None
        lengths = [n for n in (meta.general_desc.possible_length or ()) if n > 0]
        #: "447700900123": the region's own country code without "+", at the full national length.
        self._own_cc_len = len(self._cc) + max(lengths) if lengths and max(lengths) >= 9 else None
        self._national = _national_reading(meta)
        self._numbering = PhoneNumbering(meta.country_code, _meta_spec(meta),
                                         sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))
        self.resolve = lru_cache(maxsize=cache_size)(self._resolve_slow)

    def __repr__(self) -> str:
        return f"PhoneNormaliser(region={self.region!r})"

    def dialling(self) -> tuple[str, str | None, str | None, int | None]:
        """Country code, international and trunk prefixes, and the own-country-code length: the native core's rules."""
        return self._cc, self._idd, self._trunk, self._own_cc_len

    def national(self) -> tuple[list[str], list[int]] | None:
        """How :attr:`resolve` reads plain national digits (``7700900123`` in GB): the native core's rule.

        ``(excluded starts, lengths)``: digits (7 or more, no ``+``) that start with none of the
        excluded prefixes and have one of the lengths resolve to ``+<cc><digits>``, E.164. None
        where the region's prefixes are patterns rather than plain digit strings: such numbers
        then go to :attr:`resolve` itself. See :func:`_national_reading`.
        """
        return self._national

    def _candidate_e164(self, d: pl.Expr) -> pl.Expr:
        """The E.164 reading of a cleaned value by the region's prefixes (unchecked; see ``_fast_e164``)."""
        e = pl.when(d.str.starts_with("+")).then(d)
        if self._idd:
            e = e.when(d.str.starts_with(self._idd)).then(pl.lit("+") + d.str.strip_prefix(self._idd))
        if self._trunk:
            e = e.when(d.str.starts_with(self._trunk) & (d.str.len_bytes() > len(self._trunk) + 6)) \
                 .then(pl.lit("+" + self._cc) + d.str.strip_prefix(self._trunk))
        if self._own_cc_len:
            e = e.when(d.str.starts_with(self._cc) & (d.str.len_bytes() == self._own_cc_len)
                       & d.str.contains(r"^[0-9]+$")).then(pl.lit("+") + d)
        return e.otherwise(None)

    @staticmethod
    def _fast_e164(e: pl.Expr) -> pl.Expr:
        """The candidate if it is E.164 with a real country code; null where ``phonenumbers`` must decide.

        A separate step from ``_candidate_e164`` on purpose: evaluated inline, the candidate
        chain would run three times.
        """
        return pl.when(e.str.contains(_E164_SHAPE) & e.str.contains(_E164_CC)).then(e).otherwise(None)

    def resolve_many(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        """:attr:`resolve` for many cleaned texts: the native reader first, ``phonenumbers`` for the rest.

        The native reader (``pipeline._native.PhoneNumbering``) follows ``_resolve_slow`` on
        the metadata of the country codes the texts need (handed over once each) and leaves what
        it is not sure of (short numbers, which take ``shortnumberinfo``'s own check).
        """
        native = self._numbering
        for cc in native.missing(texts):
            native.add(cc, *_plan(cc))
        return [answer if answer is not None else self.resolve(text)
                for text, answer in zip(texts, native.resolve(texts))]

    def _resolve_slow(self, text: str) -> tuple[str | None, str | None]:
        """Exact resolution of one cleaned value with ``phonenumbers``: ``(value, class)``.

        Called as :attr:`resolve`, a cache of it per normaliser, with the text the column steps
        (or the native core's same steps) left: trimmed, a URI's user part, ``%2B`` undone, no separators.
        """
        digits = text[1:] if text.startswith("+") else text
        if not digits.isdigit() or not digits.isascii():
            return None, None
        if not text.startswith("+") and len(digits) <= 6:
            try:
                short = shortnumberinfo.is_valid_short_number_for_region(
                    phonenumbers.parse(digits, self.region), self.region)
            except phonenumbers.NumberParseException:
                short = False
            return digits, SHORT_CODE if short else EXTENSION
        candidates = [text] if text.startswith("+") else [text, "+" + text]
        for candidate in candidates:
            try:
                number = phonenumbers.parse(candidate, self.region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number) or (
                    candidate is text and phonenumbers.is_possible_number(number)):
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), E164
        return ("+" + digits if text.startswith("+") else digits), NON_E164

    def normalise(self, raw: pl.Series) -> pl.DataFrame:
        """Columns ``value`` (canonical text) and ``cls`` for a column of raw numbers (each distinct value once)."""
        return map_distinct(raw, self.answers)

    def answers(self, distinct: pl.Series) -> pl.DataFrame:
        """``raw``, ``value``, ``cls`` for distinct non-null raw values (the uncached work).

        Values already in E.164 (most of a switch's output) are their own answer: two
        regex tests instead of the whole cleaning pipeline.
        """
        ready = distinct.str.contains(_E164_SHAPE) & distinct.str.contains(_E164_CC)
        if not ready.any():
            return self._cleaned_answers(distinct)
        done = distinct.filter(ready).to_frame("raw").select(
            "raw", pl.col("raw").alias("value"), pl.lit(E164, dtype=pl.String).alias("cls"))
        rest = distinct.filter(~ready)
        return pl.concat([done, self._cleaned_answers(rest)]) if len(rest) else done

    def _cleaned_answers(self, distinct: pl.Series) -> pl.DataFrame:
        """Answers for values that need cleaning, prefixes or ``phonenumbers``."""
        frame = nfkc_where_needed(distinct.to_frame(), "raw", "t").with_columns(uri_user(pl.col("t").str.strip_chars()))
        frame = frame.with_columns(
            _cleaned(pl.col("t")).alias("d"),
            pl.col("t").str.to_lowercase().is_in(WITHHELD_WORDS).alias("withheld"),
            (pl.col("t").str.contains(r"^[A-Za-z0-9][A-Za-z0-9 &._\-']{0,10}$")
             & pl.col("t").str.contains(r"[A-Za-z]")).alias("alpha"),
        ).with_columns(self._candidate_e164(pl.col("d")).alias("fast"))
        frame = frame.with_columns(self._fast_e164(pl.col("fast")))
        withheld, alpha, fast = pl.col("withheld"), pl.col("alpha"), pl.col("fast")
        settled = withheld | alpha | fast.is_not_null()
        answers = frame.filter(settled).select(
            "raw",
            pl.when(withheld).then(None).when(alpha).then(pl.col("t").str.to_uppercase())
            .otherwise(fast).cast(pl.String).alias("value"),
            pl.when(withheld).then(pl.lit(WITHHELD)).when(alpha).then(pl.lit(ALPHANUMERIC))
            .otherwise(pl.lit(E164)).alias("cls"))
        slow = frame.filter(~settled)
        if not slow.height:
            return answers
        # Only what the column steps could not settle goes to phonenumbers (one call per value, cached).
        resolved = [self.resolve(v) for v in slow["d"].to_list()]
        return pl.concat([answers, pl.DataFrame(
            {"raw": slow["raw"], "value": [v for v, _ in resolved], "cls": [c for _, c in resolved]},
            schema={"raw": pl.String, "value": pl.String, "cls": pl.String})])


#: ``_number_type_helper``'s order; mobile follows unless its pattern is fixed-line's.
_NUMBER_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail",
                 "fixed_line")


def _meta_spec(meta: phonenumbers.PhoneMetadata | None) -> tuple[object, ...]:
    """What reading a number takes from a region's metadata: prefixes, general pattern, lengths."""
    if meta is None:
        return None, None, None, None, [], []
    g = meta.general_desc
    return (meta.international_prefix, meta.national_prefix_for_parsing, meta.national_prefix_transform_rule,
            g.national_number_pattern, list(g.possible_length or ()), list(g.possible_length_local_only or ()))


def _main_metadata(cc: int) -> phonenumbers.PhoneMetadata | None:
    """The metadata ``parse`` and ``is_possible_number`` use for a calling code: its main region's."""
    return phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        cc, phonenumbers.region_code_for_country_code(cc))


def _desc_spec(desc: phonenumbers.PhoneNumberDesc | None) -> tuple[str | None, list[int]]:
    return (None, []) if desc is None else (desc.national_number_pattern, list(desc.possible_length or ()))


def _plan(cc: int) -> tuple[object, ...]:
    """A calling code for the native reader: its main region's metadata, its regions' patterns, one region or several."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(cc, ())
    specs = []
    for region in regions:
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(cc, region)
        if meta is None:
            continue
        descs = [getattr(meta, t) for t in _NUMBER_TYPES] + ([] if meta.same_mobile_and_fixed_line_pattern
                                                             else [meta.mobile])
        specs.append((meta.leading_digits, _desc_spec(meta.general_desc), [_desc_spec(d) for d in descs]))
    return _meta_spec(_main_metadata(cc)), specs, len(regions) == 1


def _literals(pattern: str | None) -> list[str] | None:
    """``"0|180020"`` as ``["0", "180020"]``; ``[]`` for no pattern; None for a pattern that is more than digit strings."""
    if not pattern:
        return []
    parts = pattern.split("|")
    return parts if all(p.isascii() and p.isdigit() for p in parts) else None


def _national_reading(meta: phonenumbers.PhoneMetadata) -> tuple[list[str], list[int]] | None:
    """When ``phonenumbers.parse(digits, region)`` keeps plain digits as the national number, and when that is possible.

    Why: national numbers without a trunk prefix (``7700900123``, a US ``4155550123``) are
    common in switch output and usually all distinct, and one ``phonenumbers`` call costs ~50 us:
    a file of them would run at a few thousand records/s. ``parse`` takes the digits as they stand
    unless they start with the international prefix, with what ``national_prefix_for_parsing``
    strips, or with the country code (it may then strip it); with those starts excluded,
    ``is_possible_number`` only compares the length with the possible lengths (local-only
    included) of the country code's main region, and a possible first reading is what
    :meth:`PhoneNormaliser._resolve_slow` returns, as ``+<cc><digits>``. Lengths under 7 are
    short codes and extensions (their own check). tests/property/test_native_differential.py
    holds this against ``resolve`` for every region.
    """
    idd, npp = _literals(meta.international_prefix), _literals(meta.national_prefix_for_parsing)
    if idd is None or npp is None:
        return None
    cc = meta.country_code
    desc = _main_metadata(cc).general_desc
    lengths = sorted({n for n in (*(desc.possible_length or ()), *(desc.possible_length_local_only or ())) if n >= 7})
    return [*idd, *npp, str(cc)], lengths


_V4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_FAST_V4 = rf"^{_V4}(?:\.{_V4}){{3}}(?::\d{{1,5}})?$"
_PLAIN_V4 = rf"^{_V4}(?:\.{_V4}){{3}}$"
#: ``::ffff:192.0.2.1`` (or with the five zero groups written out): an IPv4 address in IPv6 clothing.
_V4_MAPPED = r"^(?:::|(?:0{1,4}:){5})ffff:((?:\d{1,3}\.){3}\d{1,3})$"
_V4_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")
_V6_BRACKET = re.compile(r"^\[([^\]]+)\](?::\d{1,5})?$")


@lru_cache(maxsize=DEFAULT_CACHE)
def canonical_ip(text: str) -> str | None:
    """One IP in canonical text (v4 dotted, v6 compressed lower case, v4-mapped as v4); None if invalid."""
    text = text.strip()
    m = _V6_BRACKET.match(text) or _V4_PORT.match(text)
    if m:
        text = m.group(1)
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.compressed


_V6_TEXT = r"^[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}$"
_ZEROS = ":".join(["0"] * 8)


def expand_v6(low: pl.Series) -> pl.Series:
    """Eight groups without leading zeros (``2001:db8:0:0:0:0:0:1``) for plain IPv6 text; else null.

    ``low`` is lower-case text. Brackets, ports, zone ids and dotted IPv4 tails are left to
    :func:`canonical_ip` (null here). Staged frame steps, not one nested expression: eager
    Polars would evaluate the shared parts of a nested one once per use.
    """
    groups = lambda x: x.str.count_matches(":", literal=True) + (x != "").cast(pl.Int32)  # noqa: E731
    f = low.rename("low").to_frame().with_columns(
        pl.col("low").str.split_exact("::", 1).alias("parts"),
        pl.col("low").str.count_matches("::", literal=True).alias("double"))
    f = f.with_columns(pl.col("parts").struct.field("field_0").alias("head"),
                       pl.col("parts").struct.field("field_1").alias("tail"))
    f = f.with_columns((8 - groups(pl.col("head")) - groups(pl.col("tail"))).alias("missing"))
    filled = pl.concat_str([pl.col("head"), pl.lit(":"), pl.lit(_ZEROS).str.slice(0, 2 * pl.col("missing") - 1),
                            pl.lit(":"), pl.col("tail")]).str.strip_prefix(":").str.strip_suffix(":")
    f = f.select(pl.when(pl.col("double") == 0).then(pl.col("low"))
                 .when((pl.col("double") == 1) & (pl.col("missing") >= 1)).then(filled).alias("full"))
    f = f.select(pl.col("full").str.replace_all(r"(^|:)0+([0-9a-f])", "${1}${2}"))
    return f.select(pl.when(pl.col("full").str.contains(_V6_TEXT)).then(pl.col("full")))["full"]


def compress_v6(full: pl.Series) -> pl.Series:
    """RFC 5952 text of :func:`expand_v6` addresses: the first longest run (>= 2) of zero groups as ``::``.

    The first match of a run of exactly the longest length is the first longest run, so one
    ``replace`` per candidate length, longest first, settles it.
    """
    f = full.rename("a").to_frame().select((pl.lit(":") + pl.col("a") + pl.lit(":")).alias("a"))
    a = pl.col("a")
    out = pl.when(a.str.contains(":0" * 8 + ":", literal=True)).then(pl.lit("::"))
    for k in range(7, 1, -1):
        run = ":0" * k + ":"
        out = out.when(a.str.contains(run, literal=True)).then(a.str.replace(run, "::", literal=True))
    f = f.select(out.otherwise(a).alias("a"))
    # Drop the framing colons, except where they now belong to a leading or trailing "::".
    return f.select(a.str.replace(r"^:([^:])", "${1}").str.replace(r"([^:]):$", "${1}"))["a"]


def _ip_answers(distinct: pl.Series) -> pl.DataFrame:
    """``raw`` and canonical ``value`` for distinct IP texts; plain IPv4 and IPv6 stay in Polars."""
    v4 = distinct.str.contains(_FAST_V4)
    rest = distinct.filter(~v4).to_frame()
    # What canonical_ip strips first: brackets and a port, a zone id; then plain IPv6 or v4-mapped dotted.
    rest = rest.with_columns(pl.col("raw").str.strip_chars().str.to_lowercase()
                             .str.replace(r"^\[([^\]]+)\](?::\d{1,5})?$", "${1}").str.replace(r"%.*$", "").alias("low"))
    mapped = pl.col("low").str.extract(_V4_MAPPED, 1)
    rest = rest.with_columns(expand_v6(rest["low"]).alias("full"),
                             pl.when(mapped.str.contains(_PLAIN_V4)).then(mapped).alias("mapped"))
    # other v4-mapped forms (hex tails) are left to ipaddress
    rest = rest.with_columns(pl.when(~pl.col("full").str.starts_with("0:0:0:0:0:ffff:")).then(pl.col("full")))
    frame = pl.concat([
        distinct.filter(v4).to_frame().with_columns(pl.col("raw").str.replace(r":\d+$", "").alias("fast")),
        rest.select("raw", pl.coalesce(pl.col("mapped"), compress_v6(rest["full"])).alias("fast"))])
    answers = frame.filter(pl.col("fast").is_not_null()).rename({"fast": "value"})
    pending = frame.filter(pl.col("fast").is_null())["raw"]
    if not len(pending):
        return answers
    return pl.concat([answers, pl.DataFrame(
        {"raw": pending, "value": pl.Series([canonical_ip(v) for v in pending.to_list()], dtype=pl.String)})])


@lru_cache(maxsize=DEFAULT_CACHE)
def _truncate_v6(ip: str, bits: int) -> str:
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def truncate_ips(canonical: pl.Series, v4_bits: int, v6_bits: int) -> pl.Series:
    """Network prefixes (``203.0.113.0/24``) of canonical IPs, in Polars; odd IPv6 prefixes per distinct value."""
    canonical = canonical.rename("ip")
    is_v6 = canonical.str.contains(":", literal=True).fill_null(False)
    out = pl.repeat(None, len(canonical), dtype=pl.String, eager=True).rename("ip")
    rows = pl.int_range(0, len(canonical), dtype=pl.UInt32, eager=True)
    out = out.scatter(rows.filter(~is_v6), _v4_networks(canonical.filter(~is_v6), v4_bits))
    six = canonical.filter(is_v6)
    if v6_bits % 16 == 0:
        # Whole groups: keep the leading ones, zero the rest, compress (RFC 5952).
        groups = v6_bits // 16
        full = expand_v6(six).to_frame("f")
        kept = pl.col("f") if groups == 8 else pl.lit(_ZEROS) if groups == 0 else pl.concat_str(
            [pl.col("f").str.extract(r"^((?:[0-9a-f]{1,4}:){%d})" % groups, 1),
             pl.lit(":".join(["0"] * (8 - groups)))])
        nets = compress_v6(full.select(pl.when(pl.col("f").is_not_null()).then(kept).alias("f"))["f"]) + f"/{v6_bits}"
    else:
        nets = six.replace_strict(six, [_truncate_v6(v, v6_bits) for v in six.to_list()], default=None,
                                  return_dtype=pl.String) if len(six) else six
    return out.scatter(rows.filter(is_v6), nets)


def _v4_networks(ip4: pl.Series, bits: int) -> pl.Series:
    """``a.b.c.0/24`` for canonical dotted IPv4 text."""
    ip = pl.col("ip")
    if bits % 8 == 0 and 0 < bits < 32:  # whole octets: a text replacement, no arithmetic
        keep = bits // 8
        net = ip.str.replace(r"^((?:\d+\.){%d})[\d.]*$" % keep, "${1}") + pl.lit(
            ".".join(["0"] * (4 - keep)) + f"/{bits}")
    else:
        block = 1 << (32 - bits)
        octets = [ip.str.extract(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)$", i).cast(pl.Int64) for i in (1, 2, 3, 4)]
        as_int = octets[0] * (1 << 24) + octets[1] * (1 << 16) + octets[2] * (1 << 8) + octets[3]
        n = as_int - as_int % block
        net = pl.concat_str([(n // (1 << 24)).cast(pl.String), (n // (1 << 16) % 256).cast(pl.String),
                             (n // (1 << 8) % 256).cast(pl.String), (n % 256).cast(pl.String)],
                            separator=".") + pl.lit(f"/{bits}")
    return ip4.to_frame("ip").select(net)["ip"]


def normalise_digits(raw: pl.Series, min_len: int, max_len: int, keep: int | None = None) -> pl.Series:
    """Digit identifiers (IMSI, IMEI): separators removed, length checked, optionally cut to ``keep`` digits.

    IMEIs are cut to their 14-digit TAC+serial so an IMEI with or without its check digit,
    and an IMEISV, give one token.
    """
    d = raw.cast(pl.String)
    if d.str.contains(r"[^\x00-\x7F]").any():
        d = d.str.normalize("NFKC")
    d = d.str.replace_all(r"[\s\-.]", "")
    ok = d.str.contains(rf"^\d{{{min_len},{max_len}}}$")
    out = pl.select(pl.when(ok).then(d.str.slice(0, keep) if keep else d).otherwise(None).alias("v"))["v"]
    return out


def normalise_account(raw: pl.Series) -> pl.Series:
    """Account ids: Unicode-normalised and trimmed; empty means invalid."""
    v = raw.cast(pl.String).str.normalize("NFKC").str.strip_chars()
    return pl.select(pl.when(v.str.len_chars() > 0).then(v).otherwise(None).alias("v"))["v"]


def canonical_answers(kind: str, distinct: pl.Series, phones: PhoneNormaliser) -> pl.DataFrame:
    """``raw``, canonical ``value`` and ``cls`` (numbers only, else null) for distinct non-null values.

    Rows may come back in any order: callers key on ``raw``.
    """
    distinct = distinct.rename("raw")
    if kind == "msisdn":
        return phones.answers(distinct)
    if kind == "ip":
        frame = _ip_answers(distinct)
    elif kind == "imsi":
        frame = pl.DataFrame([distinct, normalise_digits(distinct, 6, 15).alias("value")])
    elif kind == "imei":
        frame = pl.DataFrame([distinct, normalise_digits(distinct, 14, 16, keep=14).alias("value")])
    elif kind == "account":
        frame = pl.DataFrame([distinct, normalise_account(distinct).alias("value")])
    elif kind == "record":
        # A record id is tokenised as written; one the router would refuse has no token.
        ok = distinct.str.contains(r"^[A-Za-z0-9._:/@+\-]{1,128}$") & ~distinct.str.contains(r"^\+?\d{7,16}$")
        frame = pl.DataFrame([distinct, pl.select(pl.when(pl.lit(ok)).then(pl.lit(distinct))).to_series().alias("value")])
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return frame.with_columns(pl.lit(None, dtype=pl.String).alias("cls"))


def normalise_column(kind: str, raw: pl.Series, phones: PhoneNormaliser) -> tuple[pl.Series, pl.Series | None]:
    """Canonical values (and, for numbers, classes) of one column for a token kind."""
    frame = map_distinct(raw, lambda distinct: canonical_answers(kind, distinct, phones))
    return frame["value"], frame["cls"] if kind == "msisdn" else None


def normalise_one(kind: str, value: str, region: str = "GB") -> str | None:
    """Canonical form of one value, through the same column code (used by `cdrpipe token`)."""
    canonical, _ = normalise_column(kind, pl.Series([value], dtype=pl.String), PhoneNormaliser(region))
    return canonical[0]
