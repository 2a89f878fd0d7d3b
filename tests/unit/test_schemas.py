"""The JSON Schemas in schemas/ describe what the core really reads and writes.

Seeded synthetic traffic (with a raised share of malformed lines) is routed through the
core, and every analytics record, retention envelope and DLQ record is validated; every
raw line that reached analytics must satisfy the raw schema, and lines the core rejected
for contract reasons must fail it. The analytics schema is tied to the default policy so
the two cannot drift, and the DLQ reason enum to the codes the core defines.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from pipeline.core import normalise, parse, router as router_mod
from pipeline.core.envelope import open_segment
from pipeline.core.router import CoreConfig, Router, Source
from pipeline.keys import generate as generate_keys
from pipeline.policy import REQUIRED_FIELDS, load_policy
from pipeline.synthetic import generate

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NAMES = ("raw-cdr.v1.json", "analytics-record.v1.json", "retention-envelope.v2.json", "dlq-record.v2.json")
#: Kept for data sealed before record refs: the vault still reads them (checked for shape only).
LEGACY = ("retention-envelope.v1.json", "dlq-record.v1.json")
SCHEMAS = {name: json.loads((SCHEMA_DIR / name).read_text()) for name in NAMES + LEGACY}
RAW, ANALYTICS, RETENTION, DLQ = (SCHEMAS[n] for n in NAMES)
RETENTION_V1, DLQ_V1 = (SCHEMAS[n] for n in LEGACY)
REGISTRY = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())
#: A record_ref: the token of kind record ('<key id>:<hex>').
REF = re.compile(r"[A-Za-z0-9_-]+:[0-9a-f]{32}")

N_RECORDS = 4000
SEED = 11
MALFORMED_RATE = 0.06


def _validator(schema: dict) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(schema: dict, doc: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in _validator(schema).iter_errors(doc)]


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def routed():
    """Synthetic traffic routed in two batches: one shaped like a Kafka poll (a partition per
    record), one like a file (a single partition), with small segments so there are many."""
    data = b"".join(generate(N_RECORDS, seed=SEED, malformed_rate=MALFORMED_RATE))
    lines = data.split(b"\n")[:-1]  # every line ends with a newline
    assert len(lines) == N_RECORDS
    worker, vault = generate_keys()
    core = Router(worker, CoreConfig(segment_bytes=16 * 1024))
    half = N_RECORDS // 2
    parts = [i % 3 for i in range(half)]
    kafka = Source("cdr.raw", parts, [1000 + i // 3 for i in range(half)])
    files = Source("synthetic.jsonl", 0, list(range(half + 1, N_RECORDS + 1)))
    batches = [core.route(lines[:half], kafka), core.route(lines[half:], files)]
    analytics = [json.loads(x) for b in batches for x in b.analytics_ndjson().splitlines()]
    retention = [json.loads(x) for b in batches for x in b.retention]
    dlq = [json.loads(x) for b in batches for x in b.dlq]
    raw_by_ref: dict[str, bytes] = {}
    for env in retention:
        for rec in open_segment(env, vault.private, vault.vault_kid):
            assert rec.record_ref not in raw_by_ref, f"record ref {rec.record_ref} sealed twice"
            raw_by_ref[rec.record_ref] = rec.raw
    counts = Counter()
    for b in batches:
        counts.update(b.counts)
    return {"lines": lines, "analytics": analytics, "retention": retention, "dlq": dlq, "raw_by_ref": raw_by_ref,
            "counts": counts, "vault": vault, "columns": [c for c in batches[0].analytics_frame().columns if c != "_key"]}


# ------------------------------------------------------------------------- the schemas

@pytest.mark.parametrize("name", NAMES + LEGACY)
def test_schema_is_valid_2020_12_with_id_and_descriptions(name):
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    assert len(schema["description"]) > 80
    for prop, sub in schema["properties"].items():
        assert len(sub.get("description", "")) > 10, f"{name}: property {prop} has no description"


@pytest.mark.parametrize("dlq, retention", [(DLQ, RETENTION), (DLQ_V1, RETENTION_V1)], ids=["v2", "v1"])
def test_dlq_payload_refers_to_the_retention_schema(dlq, retention):
    ref = dlq["properties"]["payload"]["allOf"][0]["$ref"]
    resolved = REGISTRY.resolver(base_uri=dlq["$id"]).lookup(ref).contents
    assert resolved is retention


def test_v2_names_records_by_ref_only():
    """v2 differs from v1 exactly in carrying record refs (tokens) where v1 carried the ids."""
    assert RETENTION["properties"]["type"]["const"] == "cdr.retention/2"
    assert DLQ["properties"]["type"]["const"] == "cdr.dlq/2"
    assert "record_ids" not in RETENTION["properties"] and "record_refs" in RETENTION["required"]
    assert "record_id" not in DLQ["properties"] and "record_ref" in DLQ["required"]
    assert set(RETENTION["properties"]) - {"record_refs"} == set(RETENTION_V1["properties"]) - {"record_ids"}
    assert set(DLQ["properties"]) - {"record_ref"} == set(DLQ_V1["properties"]) - {"record_id"}
    token = ANALYTICS["properties"]["record_id"]["pattern"]  # a record ref: never a per-month token
    assert RETENTION["properties"]["record_refs"]["items"]["pattern"] == token
    assert DLQ["properties"]["record_ref"]["pattern"] == token
    assert token == "^[A-Za-z0-9_-]+:[0-9a-f]{16,64}$"


def test_analytics_schema_is_the_default_policy_allow_list(routed):
    """The schema's properties are exactly the policy's emitted fields (+ number classes), in the
    policy's order, which is also the order the core writes them in."""
    expected = []
    for rule in load_policy().emitted:
        expected.append(rule.field)
        if rule.action == "token" and rule.arg == "msisdn":
            expected.append(f"{rule.field}_class")
    assert list(ANALYTICS["properties"]) == expected
    assert ANALYTICS["additionalProperties"] is False
    assert sorted(ANALYTICS["required"]) == sorted(expected)
    assert routed["columns"] == expected


def test_dlq_reasons_are_every_code_the_core_defines():
    from pipeline.formats import FORMAT_REASON_DETAIL
    parse_codes = set(parse.PARSE_REASON_DETAIL) | set(FORMAT_REASON_DETAIL)
    router_codes = {router_mod.MISSING_FIELD, router_mod.INVALID_FIELD, router_mod.UNSAFE_VALUE,
                    router_mod.INVALID_RECORD_ID}
    enum = DLQ["properties"]["reason"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == parse_codes | router_codes
    # The conditional rules split the same codes.
    parse_rule, field_rule = DLQ["allOf"][0], DLQ["allOf"][1]
    assert set(parse_rule["if"]["properties"]["reason"]["enum"]) == parse_codes
    assert set(field_rule["if"]["properties"]["reason"]["enum"]) == router_codes
    assert DLQ["allOf"][2]["then"]["properties"]["field"]["enum"] == list(REQUIRED_FIELDS)


def test_number_classes_are_the_normalisers():
    classes = {normalise.E164, normalise.SHORT_CODE, normalise.EXTENSION, normalise.NON_E164,
               normalise.ALPHANUMERIC, normalise.WITHHELD}
    assert set(ANALYTICS["$defs"]["numberClass"]["enum"]) == classes


def test_raw_schema_requires_the_contract_fields():
    # duration is required, and non-null, unless the call type is one without a duration (sms, data...)
    assert RAW["required"] + RAW["allOf"][0]["then"]["required"] == list(REQUIRED_FIELDS)
    assert RAW["additionalProperties"] is True
    assert set(router_mod.CONTRACT_FIELDS) <= set(RAW["properties"])
    assert RAW["properties"]["record_id"]["pattern"] == router_mod.RECORD_ID


def test_schemas_reject_what_they_must():
    """The schemas are not vacuous: a few hand-made violations of each."""
    good = {"record_id": "k1:" + "2" * 32, "cli": "k1:" + "0" * 32, "cli_class": "e164", "dialled": None,
            "dialled_class": "withheld", "start": "2026-11-25T10:00:00Z", "duration": 5, "ip": "203.0.113.0/24",
            "imsi": None, "imei": None, "cell_id": "234-15-1234", "call_type": "voice", "status": "answered"}
    assert _errors(ANALYTICS, good) == []
    bad_analytics = [
        {"imsi_raw": "234150929725379"},                 # a field outside the allow-list
        {"cli": "+447700900123"},                        # a raw number where a token belongs
        {"ip": "203.0.113.7/32"}, {"ip": "203.0.113.7"},  # a host, not a /24
        {"ip": "2001:db8:1:2::/64"},                     # a longer IPv6 prefix than /48
        {"start": "2026-11-25T10:17:00Z"},               # not coarsened to the hour
        {"status": "07700900123"},                       # an identifier in a kept field
        {"cli_class": "e164", "cli": None},              # a non-withheld number without a token
        {"dialled": "k1:" + "1" * 32},                   # a token for a withheld number
        {"cell_id": "234-15-1234-5678"},                 # the antenna, not the area
        {"record_id": "r-1"},                            # a raw id where its record_ref belongs
        {"record_id": "447700900123-20261126101542"},    # an id holding a number and a start time
    ]
    for change in bad_analytics:
        assert _errors(ANALYTICS, {**good, **change}), change
    assert _errors(ANALYTICS, {k: v for k, v in good.items() if k != "imei"})  # every field is present

    raw = {"cli": "07700 900123", "dialled": "999", "start": 1795565411, "duration": 0, "vendor_x": [1]}
    assert _errors(RAW, raw) == []
    for change in ({"start": "2026-13-45T25:61:00Z"}, {"start": "25/11/2026 12:34"}, {"start": 12345},
                   {"duration": -1}, {"duration": 1.5}, {"duration": "64"}, {"cli": 447700900123},
                   {"dialled": None}, {"record_id": "has space"}):
        assert _errors(RAW, {**raw, **change}), change

    dlq = {"type": "cdr.dlq/2", "reason": "empty", "field": None, "detail": "x", "record_ref": "k1:" + "3" * 32,
           "source": {"name": "f", "partition": 0, "offset": 1}, "failed_at": "2026-01-01T00:00:00.000Z",
           "payload": json.loads((VECTORS / "envelopes.json").read_text())["vectors"][1]["envelope"]}
    assert _errors(DLQ, dlq) == []
    for change in ({"reason": "oops"}, {"reason": "empty", "field": "cli"}, {"reason": "invalid_field", "field": None},
                   {"reason": "missing_field", "field": "ip"}, {"cli": "+447700900123"},
                   {"payload": {**dlq["payload"], "plaintext": "{}"}}, {"type": "cdr.dlq/1"},
                   {"record_ref": "f:0:1"}, {"record_ref": "447700900123-20261126101542"}, {"record_id": "f:0:1"},
                   {"payload": {**dlq["payload"], "record_refs": ["f:0:1"]}}):
        assert _errors(DLQ, {**dlq, **change}), change
    # A v1 record (the id in clear) is not a v2 record, but it still matches the v1 schema the vault reads.
    v1 = {**{k: v for k, v in dlq.items() if k != "record_ref"}, "type": "cdr.dlq/1", "record_id": "f:0:1"}
    assert _errors(DLQ, v1)
    v1_payload = {**{k: v for k, v in dlq["payload"].items() if k != "record_refs"}, "type": "cdr.retention/1",
                  "record_ids": ["f:0:1"]}
    assert _errors(DLQ_V1, {**v1, "payload": v1_payload}) == []
    assert _errors(RETENTION, v1_payload) and _errors(RETENTION_V1, dlq["payload"])


def test_stored_envelope_vectors_validate():
    vectors = json.loads((VECTORS / "envelopes.json").read_text())["vectors"]
    for v in vectors:
        assert _errors(RETENTION, v["envelope"]) == []


# ------------------------------------------------------------------- the real outputs

def test_outputs_reconcile(routed):
    c = routed["counts"]
    assert c["in"] == N_RECORDS == c["retention"] == len(routed["raw_by_ref"])
    assert c["in"] == c["analytics"] + c["dlq"] + c["suppressed"]
    assert len(routed["analytics"]) == c["analytics"] and len(routed["dlq"]) == c["dlq"]
    assert len(routed["retention"]) > 10  # many segments, both source shapes
    # The three outputs name a record by one ref: analytics record_id, DLQ record_ref, envelope record_refs.
    analytics_refs = [r["record_id"] for r in routed["analytics"]]
    dlq_refs = [r["record_ref"] for r in routed["dlq"]]
    assert all(REF.fullmatch(ref) for ref in analytics_refs + dlq_refs)
    assert c["suppressed"] == 0
    assert sorted(analytics_refs + dlq_refs) == sorted(routed["raw_by_ref"])


def test_every_analytics_record_validates(routed):
    failures = {r["record_id"]: _errors(ANALYTICS, r) for r in routed["analytics"]}
    failures = {k: v for k, v in failures.items() if v}
    assert not failures, dict(list(failures.items())[:5])
    assert len(routed["analytics"]) > 0.8 * N_RECORDS


def test_every_retention_envelope_validates(routed):
    shapes = set()
    for env in routed["retention"]:
        assert _errors(RETENTION, env) == [], env["segment_id"]
        n = len(env["record_refs"])
        assert len(env["lengths"]) == n  # not expressible in JSON Schema
        for coord in ("partition", "offset"):
            value = env["source"][coord]
            assert not isinstance(value, list) or len(value) == n
        shapes.add(type(env["source"]["partition"]).__name__)
    assert shapes == {"list", "int"}


def test_every_dlq_record_validates_and_seals_its_own_record(routed):
    vault = routed["vault"]
    reasons = Counter()
    for rec in routed["dlq"]:
        assert _errors(DLQ, rec) == [], (rec["reason"], rec["field"], rec["record_ref"])
        payload = rec["payload"]
        assert payload["record_refs"] == [rec["record_ref"]]
        assert payload["source"] == rec["source"]
        (opened,) = open_segment(payload, vault.private, vault.vault_kid)
        assert opened.raw == routed["raw_by_ref"][rec["record_ref"]]
        reasons[rec["reason"]] += 1
    # The seeded traffic exercises both kinds of reason, so the enum is checked against reality.
    assert {"missing_field", "invalid_field", "invalid_json", "not_object"} <= set(reasons), reasons
    assert len(reasons) >= 8, reasons


def _identifier_values(raw: bytes) -> set[str]:
    """Values in a raw line that could identify someone (for leak hunting), with or without a parse."""
    doc = _loads(raw)
    values: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key != "record_id" and isinstance(value, (str, int)) and not isinstance(value, bool):
                text = str(value)
                if len(re.sub(r"\D", "", text)) >= 6:
                    values.add(text)
    text = raw.decode("utf-8", "replace")
    values.update(m for m in re.findall(r"\d{6,}", text) if not re.search(rf"r-0*{m}\b", text))
    return values


def test_dlq_clear_fields_echo_no_values(routed):
    """Reason, field and detail are fixed texts; no identifier from the record appears in clear."""
    checked = 0
    for rec in routed["dlq"]:
        raw = routed["raw_by_ref"][rec["record_ref"]]
        clear = json.dumps({k: rec[k] for k in ("reason", "field", "detail", "failed_at", "record_ref")})
        for value in _identifier_values(raw):
            assert value not in clear, (rec["reason"], rec["field"])
            checked += 1
        assert not re.search(r"\d{6,}", rec["detail"])
    assert checked > 100


def _analytics_raw(routed) -> list[tuple[str, object]]:
    return [(r["record_id"], _loads(routed["raw_by_ref"][r["record_id"]])) for r in routed["analytics"]]


def _non_string_number(doc: object) -> bool:
    """Known core leniency: a JSON number in cli/dialled is coerced to text and accepted."""
    return isinstance(doc, dict) and any(
        isinstance(doc.get(f), (int, float)) and not isinstance(doc.get(f), bool) for f in ("cli", "dialled"))


def test_raw_lines_that_reach_analytics_satisfy_the_raw_schema(routed):
    validated, failures = 0, {}
    for rid, doc in _analytics_raw(routed):
        errors = _errors(RAW, doc)
        if errors and not _non_string_number(doc):
            failures[rid] = errors
        validated += not errors
    assert not failures, dict(list(failures.items())[:5])
    assert validated > 0.8 * N_RECORDS


def test_numeric_cli_is_tolerated_but_only_as_a_token(routed):
    """The raw contract asks producers for strings; the core reads a JSON number as its digits (a
    documented leniency: many mediation exports write numbers unquoted) and tokenises it like text."""
    numeric = [(rid, doc) for rid, doc in _analytics_raw(routed) if _non_string_number(doc)]
    assert numeric, "the seeded workload has numeric cli/dialled lines"
    out = {r["record_id"]: r for r in routed["analytics"]}
    for rid, doc in numeric:
        for field in ("cli", "dialled"):
            value = doc.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert out[rid][field] != str(value) and ":" in out[rid][field]


def test_lines_rejected_for_contract_reasons_fail_the_raw_schema(routed):
    """A line the core rejects because it breaks the raw v1 contract also fails the raw schema."""
    contract_fields = {*REQUIRED_FIELDS, "record_id"}
    checked = 0
    for rec in routed["dlq"]:
        if rec["reason"] not in ("missing_field", "invalid_field", "invalid_record_id", "not_object"):
            continue
        if rec["reason"] == "invalid_field" and rec["field"] not in contract_fields:
            continue  # a policy-level rejection (e.g. an unparseable ip): the raw contract allows any string
        doc = _loads(routed["raw_by_ref"][rec["record_ref"]])
        if rec["reason"] == "invalid_field" and rec["field"] in ("cli", "dialled") and isinstance(
                doc.get(rec["field"]), str):
            continue  # a string that is not a number: valid raw v1, rejected by the normaliser
        assert _errors(RAW, doc), (rec["reason"], rec["field"], rec["record_ref"])
        checked += 1
    assert checked >= 20


#: Subject-rights schemas (validated against real requests and exports in test_privacy_requests.py
#: and test_subject_export.py); here, the same structural checks as the pipeline's schemas.
SUBJECT_RIGHTS = ("privacy-request.v1.json", "privacy-request.v2.json", "subject-export.v1.json")


@pytest.mark.parametrize("name", SUBJECT_RIGHTS)
def test_subject_rights_schemas_are_valid_2020_12_with_id_and_descriptions(name):
    schema = json.loads((SCHEMA_DIR / name).read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    assert len(schema["description"]) > 80
    for prop, sub in schema["properties"].items():
        assert len(sub.get("description", "")) > 10, f"{name}: property {prop} has no description"
    assert schema["additionalProperties"] is False


def test_privacy_request_v2_only_adds_to_v1():
    v1, v2 = (json.loads((SCHEMA_DIR / f"privacy-request.v{n}.json").read_text()) for n in (1, 2))
    assert set(v1["properties"]) < set(v2["properties"]) and v1["required"] == v2["required"]
    assert set(v1["properties"]["type"]["enum"]) < set(v2["properties"]["type"]["enum"])
    assert v1["properties"]["subject"] == v2["properties"]["subject"]
