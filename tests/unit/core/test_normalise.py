"""Normalisation: every format of one subscriber gives one canonical value."""
from __future__ import annotations

import ipaddress

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import normalise
from pipeline.core.normalise import (
    ALPHANUMERIC, E164, EXTENSION, NON_E164, SHORT_CODE, WITHHELD, PhoneNormaliser, canonical_ip, normalise_digits,
    normalise_column, normalise_one, truncate_ips)

SAME_GB_NUMBER = ["07700 900123", "07700900123", "+44 7700 900123", "0044 7700900123", "tel:+447700900123",
                  "\uff10\uff17\uff17\uff10\uff10 \uff19\uff10\uff10\uff11\uff12\uff13", "(+44) 7700-900123",
                  "+44 (0)7700 900123", "447700900123", "%2B447700900123", "+44.7700.900.123",
                  "sip:+447700900123@ims.example.net;user=phone", "SIPS:07700 900123@192.0.2.1:5061",
                  "tel:+44-7700-900123;phone-context=+44"]


def normalise_ips(raw: pl.Series) -> pl.Series:
    """Canonical IP text for a column, as the core computes it."""
    return normalise_column("ip", raw, PhoneNormaliser())[0]


def _norm(values, region="GB"):
    return PhoneNormaliser(region).normalise(pl.Series(values, dtype=pl.String))


def test_gb_formats_share_one_e164():
    out = _norm(SAME_GB_NUMBER)
    assert out["value"].to_list() == ["+447700900123"] * len(SAME_GB_NUMBER)
    assert set(out["cls"].to_list()) == {E164}


@pytest.mark.parametrize("raw,value,cls", [
    ("999", "999", SHORT_CODE),
    ("112", "112", SHORT_CODE),
    ("1001", "1001", EXTENSION),
    ("anonymous", None, WITHHELD),
    ("Withheld", None, WITHHELD),
    ("", None, WITHHELD),
    ("HSBC", "HSBC", ALPHANUMERIC),
    ("Amazon", "AMAZON", ALPHANUMERIC),
    ("+1 202 555 0123", "+12025550123", E164),
    ("0049 30 1234567", "+49301234567", E164),
    ("0039 06 1234 5678", "+390612345678", E164),  # Italy keeps its leading zero
    ("{\"a\": 1}", None, None),
    ("sip:not a number", None, None),
    ("sip:anonymous@anonymous.invalid", None, WITHHELD),  # RFC 3323's withheld caller
    ("sip:alice@example.com", "ALICE", ALPHANUMERIC),
    ("sip:1001@pbx.example", "1001", EXTENSION),
    ("sip:+44 7700 900123:secret@host", None, None),  # a password is not part of the number
])
def test_classes(raw, value, cls):
    out = _norm([raw])
    assert (out["value"][0], out["cls"][0]) == (value, cls)


def test_pbx_number_not_valid_e164_is_kept_as_digits():
    out = _norm(["12345678"])  # 8 digits, no country context: not a valid GB number
    assert out["cls"][0] in (NON_E164, E164)
    assert out["value"][0] is not None and out["value"][0].lstrip("+").isdigit()


def test_region_changes_national_numbers():
    assert _norm(["(202) 555-0123"], "US")["value"][0] == "+12025550123"


def test_unknown_region_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown region"):
        PhoneNormaliser("XX")


def test_nulls_stay_null_and_row_order_is_kept():
    out = _norm([None, "07700 900123", None, "999"])
    assert out["value"].to_list() == [None, "+447700900123", None, "999"]


@pytest.mark.parametrize("raw,canon", [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.113.7:5060", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("[2001:DB8::1]:5060", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("FE80::C4B8:C03E:71C7:62FC%eth0", "fe80::c4b8:c03e:71c7:62fc"),
    ("[::ffff:100.114.138.69]:5060", "100.114.138.69"),
    ("0000:0000:0000:0000:0000:ffff:10.0.0.1", "10.0.0.1"),
    ("::ffff:0102:0304", "1.2.3.4"),
    ("::ffff:999.1.1.1", None),
    ("1::ffff:1.2.3.4", "1::ffff:102:304"),
    ("1::2::3", None),
    ("999.1.1.1", None),
    ("not an ip", None),
])
def test_ip_canonical(raw, canon):
    assert normalise_ips(pl.Series([raw]))[0] == canon
    assert canonical_ip(raw) == canon


def test_ip_truncation():
    ips = pl.Series(["203.0.113.7", "10.1.2.3", "2001:db8:1:2::1", None])
    assert truncate_ips(ips, 24, 48).to_list() == ["203.0.113.0/24", "10.1.2.0/24", "2001:db8:1::/48", None]
    assert truncate_ips(ips, 20, 32).to_list()[:3] == ["203.0.112.0/20", "10.1.0.0/20", "2001:db8::/32"]
    assert truncate_ips(ips, 16, 64).to_list()[:2] == ["203.0.0.0/16", "10.1.0.0/16"]


#: IPv6 groups biased to zero, so runs of zero groups (what RFC 5952 compresses) are common.
_GROUP = st.one_of(st.just(0), st.just(0), st.just(1), st.just(0xFFFF), st.integers(0, 0xFFFF))


@settings(max_examples=400, deadline=None)
@given(groups=st.lists(_GROUP, min_size=8, max_size=8), form=st.sampled_from(["compressed", "exploded", "upper"]),
       prefix=st.sampled_from([0, 16, 32, 48, 64, 112, 128]))
def test_ipv6_column_path_matches_ipaddress(groups, form, prefix):
    """The Polars IPv6 path (expand, compress, truncate) gives exactly what ``ipaddress`` gives."""
    addr = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    text = {"compressed": addr.compressed, "exploded": addr.exploded, "upper": addr.compressed.upper()}[form]
    expected = addr.ipv4_mapped.compressed if addr.ipv4_mapped else addr.compressed
    assert normalise_ips(pl.Series([text]))[0] == expected
    if addr.ipv4_mapped is None:
        net = truncate_ips(pl.Series([expected]), 24, prefix)[0]
        assert net == str(ipaddress.ip_network(f"{expected}/{prefix}", strict=False))


def test_imei_with_check_digit_or_sv_share_tac_and_serial():
    out = normalise_digits(pl.Series(["35693803564380", "356938035643809", "35-693803-564380-12"]), 14, 16, keep=14)
    assert out.to_list() == ["35693803564380"] * 3


def test_normalise_one_uses_column_code():
    assert normalise_one("msisdn", "07700 900123") == "+447700900123"
    assert normalise_one("imsi", "234 15 0000000001") == "234150000000001"
    assert normalise_one("ip", "::ffff:10.0.0.1") == "10.0.0.1"


