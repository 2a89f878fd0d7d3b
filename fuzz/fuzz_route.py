"""Coverage-guided fuzz target (atheris/libFuzzer) of the native parse/route entry point.

One fuzz input is one batch: its bytes split on newlines are the records handed to
``Router.route`` (which calls ``NativeCore.parse``, ``pending``, ``learn*`` and ``route``).
For every input it checks the core's guarantees:

* nothing raises (a Rust panic surfaces as ``pyo3_runtime.PanicException``);
* ``in == retention == analytics + dlq + suppressed == len(lines)``;
* every record is in the sealed retention segments, byte for byte and in order, with its
  offset (opened with :func:`pipeline.core.envelope.open_segment` and the vault key), and
  the analytics record ids and DLQ record refs are among the retained refs (a multiset: ids
  may repeat); every ref is a token, and DLQ messages are keyed by their ref;
* analytics records carry only the policy's emitted fields;
* no identifier leaks: no 7-digit window of the digits of an input's ``cli``, ``dialled``,
  ``imsi`` or ``imei`` value appears (separators removed, any Unicode decimal digit
  folded to ASCII) in the analytics output, in the DLQ records with ``payload`` removed, in
  the retention envelope headers (``ct`` and the random fields removed) or in the DLQ keys;
  and no 7-digit window of an input's ``record_id`` either (switch ids embed numbers and
  start times, so an id reaches no output but as its keyed ``record_ref``).
  The approach is tests/property/test_core_properties.py's, with the identifiers read out
  of the fuzzed bytes instead of known in advance (see :func:`identifier_windows`).

Coverage: atheris instruments the ``pipeline`` Python package; the Rust crate is covered
when ``FUZZ_NATIVE_SO`` names a copy of ``pipeline._native`` built with SanitizerCoverage
(``fuzz/run.sh`` builds one), else the installed module runs uninstrumented.

Run it through ``fuzz/run.sh`` (``fuzz/run.sh --seconds 60``); replay one input with
``python fuzz/fuzz_route.py fuzz/crashes/crash-...`` (libFuzzer runs the files it is given).
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
import sys
import unicodedata
from datetime import datetime, timezone

import atheris

#: Exit with this many executions done (libFuzzer's -runs counts too); 0 = no limit.
REFRESH_EVERY = 20_000  # a new Router (fresh native caches) every so many inputs, so memory stays bounded


def _load_instrumented_native() -> None:
    """Import a SanitizerCoverage build of the crate as ``pipeline._native`` (before the router)."""
    path = os.environ.get("FUZZ_NATIVE_SO")
    if not path:
        return
    # The instrumented library calls __sanitizer_cov_*, which libFuzzer defines: run.sh preloads
    # atheris's libFuzzer (LD_PRELOAD=<atheris.path()>/ubsan_with_fuzzer.so) so they resolve.
    import pipeline  # the package itself (its __init__), not yet the core

    spec = importlib.util.spec_from_file_location("pipeline._native", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline._native"] = module
    spec.loader.exec_module(module)
    pipeline._native = module
    print(f"fuzz: pipeline._native from {path}", file=sys.stderr)


_load_instrumented_native()
with atheris.instrument_imports(include=["pipeline"]):
    import orjson

    from pipeline.core.envelope import open_segment
    from pipeline.core.normalise import normalise_one
    from pipeline.core.router import CoreConfig, Router, Source
    from pipeline.keys import generate

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
WORKER, VAULT = generate(NOW)
IDENT_KEYS = ("cli", "dialled", "imsi", "imei")
SEPARATORS = re.compile(r"[\s\-.()/:+]")  # as the property tests strip them
TOKEN = re.compile(r"[kr][0-9a-z]+:[0-9a-f]{8,64}")  # an HMAC token (kid:hex; k… token keys, r… the record-ref key)
#: A subscriber of the seed corpus (synthetic seed 3, line 1) suppressed, so that path runs too.
SUPPRESSED_CLI = "+447700977517"
SOURCE_NAME = "fuzz"


def _router() -> Router:
    router = Router(WORKER, CoreConfig(segment_bytes=1024), clock=lambda: NOW)
    router.suppressions.replace([router.tokeniser.token_one("msisdn", normalise_one("msisdn", SUPPRESSED_CLI))])
    return router


ROUTER = _router()
ALLOWED = {r.field for r in ROUTER.config.policy.emitted} | {"cli_class", "dialled_class"}
#: Emitted fields that are not identifiers: their input values may show in the output as they are.
#: Not record_id: it reaches analytics as its token (record_ref) only, and its digits must not show.
PASS_THROUGH = sorted({r.field for r in ROUTER.config.policy.emitted} - set(IDENT_KEYS) - {"record_id"})
_count = 0


def fold_digits(text: str) -> str:
    """Every Unicode decimal digit as its ASCII digit; separators removed."""
    out = []
    for ch in SEPARATORS.sub("", text):
        d = unicodedata.decimal(ch, None) if not ("0" <= ch <= "9") else None
        out.append(str(d) if d is not None else ch)
    return "".join(out)


def _leaves(value, out: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            _leaves(v, out)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, out)
    elif value is not None:
        out.append(str(value))


def _decode_token(raw: bytes) -> str:
    """A JSON value token as text (string literals unescaped when they can be)."""
    try:
        return str(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def _values_of(key: str, line: bytes, out: list[str]) -> None:
    """Every value the raw bytes give ``key`` (``"key": value`` anywhere, duplicates and broken lines too)."""
    for m in re.finditer(rb'"' + re.escape(key.encode()) + rb'"\s*:\s*(?=("(?:[^"\\\n]|\\.)*"?|[^,}\]\n]*))', line):
        out.append(_decode_token(m.group(1)))


def _windows(values: list[str]) -> set[str]:
    out = set()
    for value in values:
        for run in re.findall(r"[0-9]{7,}", fold_digits(value)):
            out.update(run[i:i + 7] for i in range(len(run) - 6))
    return out


def identifier_windows(lines: list[bytes]) -> tuple[set[str], str]:
    """The 7-digit windows of the batch's identifier values, and the text of its pass-through values.

    Identifier values are read two ways, so a malformed line counts too: the parsed object's
    ``cli``/``dialled``/``imsi``/``imei``/``record_id`` (every leaf under them), and every
    ``"key": value`` the bytes hold for those keys (duplicates and broken lines included). The
    values of the other emitted fields (times, duration, ...) pass to analytics by design, so a
    window that also occurs in one of them is not counted as a leak.
    """
    idents: list[str] = []
    benign: list[str] = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in IDENT_KEYS or k == "record_id":
                    _leaves(v, idents)
                elif k in PASS_THROUGH:
                    _leaves(v, benign)
        for key in (*IDENT_KEYS, "record_id"):
            _values_of(key, line, idents)
        for key in PASS_THROUGH:
            _values_of(key, line, benign)
    return _windows(idents), "|".join(fold_digits(v) for v in benign)


#: The policy's coarse forms of a record's own ip and cell id: a network, and MCC-MNC-area.
NETWORK = re.compile(r"[0-9a-f.:]+/[0-9]{1,3}")
CELL_AREA = re.compile(r"[0-9]{3}-[0-9]{2,3}-(?:enb[0-9]+|gnb[0-9]+|[0-9A-Fa-f]+)")


def _scrub_analytics(line: bytes) -> str:
    rec = orjson.loads(line)
    assert isinstance(rec, dict), line
    assert set(rec) <= ALLOWED, f"analytics fields beyond the policy: {sorted(set(rec) - ALLOWED)}"
    rec.pop("start", None)  # a coarsened time the core formats itself
    # A network or a cell area can hold an identifier's 7-digit window by chance (the fuzzer found
    # 79.91.101.0/24 against an IMEI holding 9911010): checked for their shape, then left out.
    for key, shape in (("ip", NETWORK), ("cell_id", CELL_AREA)):
        value = rec.pop(key, None)
        assert value is None or shape.fullmatch(value), (key, value)
    return TOKEN.sub("", orjson.dumps(rec).decode())


def _scrub_dlq(line: bytes) -> str:
    rec = orjson.loads(line)
    assert isinstance(rec, dict), line
    assert rec.get("type") == "cdr.dlq/2" and isinstance(rec.get("reason"), str), line
    assert "record_id" not in rec and TOKEN.fullmatch(rec.get("record_ref", "")), line
    assert rec["payload"]["record_refs"] == [rec["record_ref"]], line
    for k in ("payload", "failed_at", "source"):  # sealed payload; our clock; our source coordinates
        rec.pop(k, None)
    return TOKEN.sub("", orjson.dumps(rec).decode())


def _scrub_envelope(segment: bytes) -> str:
    """A retention envelope's header in clear: no ct, no random or clock fields, refs as tokens."""
    env = orjson.loads(segment)
    assert env.get("type") == "cdr.retention/2" and "record_ids" not in env, env.get("type")
    assert all(TOKEN.fullmatch(ref) for ref in env["record_refs"])
    for k in ("ct", "wrapped_key", "nonce", "segment_id", "sealed_at", "vault_kid"):  # random, our clock, our key
        env.pop(k, None)
    return TOKEN.sub("", orjson.dumps(env).decode())


def check(lines: list[bytes], router: Router) -> None:
    offsets = list(range(1000, 1000 + len(lines)))
    routed = router.route(lines, Source(SOURCE_NAME, 7, offsets))
    c = routed.counts
    assert c["in"] == c["retention"] == len(lines) == c["analytics"] + c["dlq"] + c["suppressed"], c
    assert len(routed.analytics) == c["analytics"] and len(routed.dlq) == c["dlq"], c

    opened = [r for seg in routed.retention for r in open_segment(seg, VAULT.private, VAULT.vault_kid)]
    assert [r.raw for r in opened] == lines, "retention does not hold every record byte for byte, in order"
    assert [r.offset for r in opened] == offsets, "retention offsets differ"
    assert all(r.source_name == SOURCE_NAME and r.partition == 7 for r in opened)
    retained = Counter(r.record_ref for r in opened)  # input record ids may repeat (replays): a multiset

    analytics = [_scrub_analytics(x) for x in routed.analytics]
    dlq = [_scrub_dlq(x) for x in routed.dlq]
    headers = [_scrub_envelope(x) for x in routed.retention]
    dlq_refs = [orjson.loads(x)["record_ref"] for x in routed.dlq]
    assert [k.decode() if isinstance(k, bytes) else k for _v, k, _h in routed.dlq.messages()] == dlq_refs
    out_refs = [orjson.loads(x)["record_id"] for x in routed.analytics] + dlq_refs
    assert not Counter(out_refs) - retained, "an analytics record id or DLQ record ref is not a retained record's ref"

    windows, benign = identifier_windows(lines)
    if windows:
        blob = fold_digits("\n".join(analytics + dlq + headers))
        leaked = sorted(w for w in windows if w in blob and w not in benign)
        assert not leaked, f"identifier digits leaked: {leaked[:5]}"


def TestOneInput(data: bytes) -> None:
    global ROUTER, _count
    _count += 1
    if REFRESH_EVERY and _count % REFRESH_EVERY == 0:
        ROUTER = _router()
    check(data.split(b"\n"), ROUTER)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
