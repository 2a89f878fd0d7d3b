"""Property tests of the core: nothing lost, nothing leaked, stable joins, never a crash."""
from __future__ import annotations

import ipaddress
import logging
import re

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.envelope import open_segment
from pipeline.core.normalise import normalise_one
from pipeline.core.router import CoreConfig, Router, Source
from reference_core import raw_record_id

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SEPARATORS = re.compile(rb"[\s\-.()/:+]")


@st.composite
def gb_mobile(draw):
    """A GB mobile number as (national significant number, one of its written forms)."""
    nsn = "7" + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=9, max_size=9)))
    form = draw(st.sampled_from([
        "0{a} {b}", "+44 {a} {b}", "0044{a}{b}", "tel:+44{a}{b}", "(+44) {a}-{b}", "44{a}{b}", "0{a}{b}",
        "+44.{a}.{b}", "%2B44{a}{b}", "sip:+44{a}{b}@ims.example;user=phone", "SIPS:0{a} {b}@192.0.2.1:5061"]))
    written = form.format(a=nsn[:4], b=nsn[4:])
    if draw(st.booleans()):
        written = written.translate({ord(c): 0xFF10 + int(c) for c in "0123456789"})  # full-width digits
    return nsn, written


@st.composite
def host_ip(draw):
    """An IP whose host part is non-zero, so its /24 or /48 network never equals the address itself."""
    if draw(st.booleans()):
        ip = ipaddress.IPv4Address(draw(st.integers(1 << 24, (223 << 24))) | draw(st.integers(1, 254)))
        forms = [str(ip), f"{ip}:5060", f"::ffff:{ip}"]
    else:
        ip = ipaddress.IPv6Address((0x2001 << 112) | draw(st.integers(1, (1 << 80) - 1)))
        forms = [str(ip), ip.exploded.upper(), f"[{ip}]:5060", f"{str(ip).upper()}%eth0"]
    return ip, draw(st.sampled_from(forms))


digits = st.text("0123456789", min_size=15, max_size=15).filter(lambda s: s[0] != "0")


@st.composite
def raw_record(draw):
    """A valid raw v1 record plus the identifiers it carries, with extra fields hiding the same identifiers."""
    (cli_nsn, cli), (dl_nsn, dialled) = draw(gb_mobile()), draw(gb_mobile())
    ip, ip_text = draw(host_ip())
    imsi, imei = draw(digits), draw(digits)
    rec = {"record_id": f"r-{draw(st.uuids()).hex}", "cli": cli, "dialled": dialled,
           "start": draw(st.sampled_from(["2026-11-25T12:34:56Z", 1795610096, "2026-11-25T13:34:56+01:00"])),
           "duration": draw(st.integers(0, 86_400)), "ip": ip_text, "imsi": imsi, "imei": imei,
           "cell_id": "234-15-1234-56789", "call_type": draw(st.sampled_from(["voice", "sms"])),
           "status": draw(st.sampled_from(["answered", "busy"])),
           # Not in the policy: must never reach analytics, however nested.
           "subscriber": {"msisdn": "+44" + cli_nsn, "deep": [{"imsi": imsi, "ip": str(ip)}]},
           "clid": f'"Name" <0{cli_nsn}>'}
    return rec, {cli_nsn, dl_nsn, imsi, imei}, ip


def _corrupt(draw, line: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "dup", "nan", "bom", "wrongtype", "control", "twice"]))
    if how == "truncate":
        return line[: draw(st.integers(1, len(line) - 1))]
    if how == "flip":
        i = draw(st.integers(0, len(line) - 1))
        return line[:i] + bytes([line[i] ^ draw(st.integers(1, 255))]) + line[i + 1:]
    if how == "dup":
        return line[:-1] + b',"cli":"x"}'
    if how == "nan":
        return line.replace(b'"duration":', b'"duration":NaN,"d2":', 1)
    if how == "bom":
        return b"\xef\xbb\xbf" + line
    if how == "control":  # a raw control byte inside the calling number (found by the buffer scan)
        return line.replace(b'"cli":"', b'"cli":"\x01', 1)
    if how == "twice":  # two objects on one line
        return line + b" " + line
    return line.replace(b'"duration":', b'"duration":"abc","x":', 1)


@st.composite
def batch(draw):
    items = draw(st.lists(raw_record(), min_size=1, max_size=25))
    lines, idents, ips = [], set(), []
    for rec, ids, ip in items:
        line = orjson.dumps(rec)
        if draw(st.integers(0, 4)) == 0:
            line = _corrupt(draw, line)
        lines.append(line)
        idents |= ids
        ips.append(ip)
    return lines, idents, ips


def _assert_no_identifier(blob: bytes, idents: set[str], ips: list) -> None:
    stripped = SEPARATORS.sub(b"", blob)
    for ident in idents:
        assert ident.encode() not in stripped, "identifier digits leaked"
    for ip in ips:
        for form in {str(ip), ip.exploded, str(ip).upper()}:
            assert form.encode() not in blob and form.lower().encode() not in blob.lower(), "IP leaked"


def _route(router: Router, lines: list[bytes]):
    return router.route(lines, Source("prop", 3, list(range(100, 100 + len(lines)))))


def _dlq_without_payload(dlq: list[bytes]) -> bytes:
    return b"\n".join(orjson.dumps({k: v for k, v in orjson.loads(d).items() if k != "payload"}) for d in dlq)


@SETTINGS
@given(batch())
def test_no_identifier_reaches_analytics_dlq_or_logs(worker_keyring, caplog, data):
    lines, idents, ips = data
    router = Router(worker_keyring, CoreConfig())
    with caplog.at_level(logging.DEBUG):
        routed = _route(router, lines)
    _assert_no_identifier(routed.analytics_ndjson(), idents, ips)
    _assert_no_identifier(_dlq_without_payload(routed.dlq), idents, ips)
    _assert_no_identifier(caplog.text.encode(), idents, ips)
    allowed = {r.field for r in router.config.policy.emitted} | {"cli_class", "dialled_class"}
    for line in routed.analytics_ndjson().splitlines():
        assert set(orjson.loads(line)) <= allowed


@st.composite
def natively_read_record(draw):
    """A record in the shapes the native readers settle without Python: national digits with no trunk
    prefix, ``+44 (0)``, international numbers without ``+``, a space before the time offset,
    fractional epochs, zero-padded IPv4 (invalid). Returns the line, the digits it must not leak, its IP,
    and whether that IP is zero-padded."""
    nsn = "7" + draw(st.text("0123456789", min_size=9, max_size=9))
    foreign = draw(st.sampled_from(["49151", "3361", "1212", "8613", "5511"])) + draw(
        st.text("0123456789", min_size=7, max_size=7))
    cli = draw(st.sampled_from([nsn, f"+44 (0){nsn}", f"440{nsn}", f"0044 (0) {nsn}"]))
    dialled = draw(st.sampled_from([foreign, f"00{foreign}", f"+{foreign[:2]} 0{foreign[2:]}"]))
    host, written = draw(host_ip())
    padded = draw(st.booleans()) and host.version == 4 and min(host.packed) < 100  # a group gets a leading 0
    ip = ".".join(f"{o:03d}" for o in host.packed) if padded else written
    imsi = "23415" + draw(st.text("0123456789", min_size=10, max_size=10))
    start = draw(st.sampled_from(["2026-11-25 12:34:56 +0100", "2026-11-25 12:34:56.5 Z", "1795610096.25"]))
    line = orjson.dumps({"record_id": f"r-{draw(st.uuids()).hex}", "cli": cli, "dialled": dialled,
                         "start": start, "duration": 5, "ip": ip, "imsi": imsi})
    return line, {nsn, foreign, imsi} | ({ip.replace(".", "")} if padded else set()), host, padded


@SETTINGS
@given(st.lists(natively_read_record(), min_size=1, max_size=20))
def test_no_identifier_leaks_from_the_native_readers(worker_keyring, caplog, items):
    lines = [line for line, *_ in items]
    idents = set().union(*(ids for _, ids, *_ in items))
    with caplog.at_level(logging.DEBUG):
        routed = _route(Router(worker_keyring, CoreConfig()), lines)
    assert routed.counts["dlq"] == sum(padded for *_, padded in items)  # a zero-padded IP is invalid
    for blob in (routed.analytics_ndjson(), _dlq_without_payload(routed.dlq), caplog.text.encode()):
        _assert_no_identifier(blob, idents, [host for _, _, host, _ in items])


@SETTINGS
@given(batch())
def test_counts_reconcile_and_retention_is_exact(worker_keyring, vault_keyring, data):
    lines, _, _ = data
    router = Router(worker_keyring, CoreConfig(segment_bytes=512))
    routed = _route(router, lines)
    c = routed.counts
    assert c["in"] == c["retention"] == len(lines) == c["analytics"] + c["dlq"] + c["suppressed"]
    opened = [r for seg in routed.retention for r in open_segment(seg, vault_keyring.private)]
    assert [r.raw for r in opened] == lines
    assert [r.offset for r in opened] == list(range(100, 100 + len(lines)))
    refs = [r.record_ref for r in opened]
    assert len(set(refs)) == len(refs)
    # Each ref is the token of the line's own id (intact, or still readable in a corrupted line), else of
    # its coordinates; the analytics record_id and the DLQ record_ref are the same refs, and nothing else.
    token = router.tokeniser.token_one
    assert refs == [token("record", raw_record_id(line) or f"prop:3:{100 + i}") for i, line in enumerate(lines)]
    out_refs = [orjson.loads(x)["record_id"] for x in routed.analytics_ndjson().splitlines()]
    out_refs += [orjson.loads(d)["record_ref"] for d in routed.dlq]
    assert sorted(out_refs) == sorted(refs)


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=40))
def test_arbitrary_bytes_never_crash(worker_keyring, lines):
    routed = _route(Router(worker_keyring, CoreConfig()), lines)
    c = routed.counts
    assert c["in"] == c["retention"] == c["analytics"] + c["dlq"] + c["suppressed"] == len(lines)


@SETTINGS
@given(gb_mobile(), gb_mobile())
def test_caller_and_callee_join_in_any_format(worker_keyring, a, b):
    (nsn, form_a), (_, form_b) = a, b
    as_caller = {"cli": form_a, "dialled": form_b, "start": 0, "duration": 1}
    as_callee = {"cli": form_b, "dialled": "0" + nsn, "start": 0, "duration": 1}
    routed = _route(Router(worker_keyring, CoreConfig()), [orjson.dumps(as_caller), orjson.dumps(as_callee)])
    out = [orjson.loads(x) for x in routed.analytics_ndjson().splitlines()]
    assert out[0]["cli"] == out[1]["dialled"]


@SETTINGS
@given(batch())
def test_deterministic(worker_keyring, data):
    lines, _, _ = data
    first = _route(Router(worker_keyring, CoreConfig()), lines)
    second = _route(Router(worker_keyring, CoreConfig()), lines)
    assert first.analytics_ndjson() == second.analytics_ndjson()
    assert [orjson.loads(d)["reason"] for d in first.dlq] == [orjson.loads(d)["reason"] for d in second.dlq]


@SETTINGS
@given(st.lists(raw_record(), min_size=1, max_size=10), st.data())
def test_suppressed_subscribers_leave_analytics_but_stay_retained(worker_keyring, items, data):
    router = Router(worker_keyring, CoreConfig())
    lines = [orjson.dumps(rec) for rec, _, _ in items]
    victim = data.draw(st.sampled_from(items))[0]
    token = router.tokeniser.token_one("msisdn", normalise_one("msisdn", victim["cli"]))
    router.suppressions.replace([token])
    routed = _route(router, lines)
    out = [orjson.loads(x) for x in routed.analytics_ndjson().splitlines()]
    assert all(token not in (r["cli"], r["dialled"]) for r in out)
    assert routed.counts["suppressed"] >= 1 and routed.counts["retention"] == len(lines)
    victim_number = normalise_one("msisdn", victim["cli"])
    with_victim = sum(victim_number in {normalise_one("msisdn", rec["cli"]), normalise_one("msisdn", rec["dialled"])}
                      for rec, _, _ in items)
    assert routed.counts["suppressed"] == with_victim and routed.counts["dlq"] == 0
    assert routed.counts["analytics"] == len(out) == len(lines) - with_victim
