"""Record ids leave the sealed payload only as their ``record_ref`` (issue 15, finding 1).

Switches build record ids from what identifies a call: the caller's number and the start time
(``447700900123-20261126101542``), an Asterisk ``uniqueid`` (the start second, ``1764151542.123``),
a SIP URI with an E.164 number, an IMSI. Outside the sealed payload a record is therefore named
by its ``record_ref``, the keyed token of kind ``record`` of its id: the analytics ``record_id``
(default policy ``token:record``), the DLQ ``record_ref`` and message key, each envelope's
``record_refs``, and what the vault stores, deduplicates on and delivers.

The oracle of the leak test is the raw bytes themselves: no 7-digit window of any digit run of
an input line (its id, numbers, IMSI, or what a cut line made of them) may appear in analytics,
in a DLQ record (its payload's ``ct`` aside), in an envelope header (``ct`` and the wrapped key
aside) or in a message key or header. Keyed tokens and random segment ids are removed first:
they are not the id, and random hex would match a window by chance now and then.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import EXIT_OK, EXIT_USAGE, main
from pipeline.core.envelope import Sealer, open_segment
from pipeline.core.router import CoreConfig, Router, Source
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_vault_keyring, load_worker_keyring
from pipeline.policy import PolicyError, load_policy, policy_from_toml
from pipeline.vault.audit import read_entries

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: The router's clock: years away from every start time below, so failed_at/sealed_at share no digits with an id.
CLOCK = dt.datetime(2031, 7, 1, 0, 0, tzinfo=dt.timezone.utc)
ISSUE_ID = "447700900123-20261126101542"  # the issue's example: a number and a start second

# ------------------------------------------------------------------------- record ids

digits = lambda n, m=None: st.text("0123456789", min_size=n, max_size=m or n)  # noqa: E731
msisdn = st.tuples(st.sampled_from(["44", "49", "33", "1", "353"]), digits(9, 10)).map("".join)
stamp = st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2029, 12, 31)).map(lambda t: t.strftime("%Y%m%d%H%M%S"))
epoch = st.integers(1_500_000_000, 1_899_999_999).map(str)
imsi = digits(12).map(lambda d: "234" + d)

#: Ids as switches and mediation build them: each holds a number, an IMSI or a time.
record_ids = st.one_of(
    st.tuples(msisdn, stamp).map("-".join),                                         # <msisdn>-<yyyymmddHHMMSS>
    st.tuples(epoch, st.integers(0, 99_999)).map(lambda p: f"{p[0]}.{p[1]}"),       # Asterisk uniqueid
    st.tuples(msisdn, st.sampled_from(["sbc1", "10.0.0.7"])).map(lambda p: f"sip:+{p[0]}@{p[1]}"),
    st.tuples(msisdn, digits(1, 4)).map(lambda p: f"call/+{p[0]}/{p[1]}"),          # an E.164 number inside
    st.tuples(imsi, stamp).map(lambda p: f"imsi-{p[0]}:{p[1]}"),                     # an IMSI inside
    st.tuples(stamp, msisdn).map("".join),                                          # one long digit run (not a bare number)
    msisdn, msisdn.map(lambda m: "+" + m),                                          # bare numbers: refused as ids
    st.tuples(msisdn, stamp).map(" ".join),                                         # an invalid character
)

MUTATIONS = ("intact", "cut_in_cli", "cut_in_id", "id_runs_into_cli", "id_unterminated", "no_cli", "twice", "bom")


@st.composite
def raw_line(draw) -> bytes:
    """One raw record whose id holds a number or a time, intact or mangled as a broken feed mangles it."""
    rid, cli, dialled, sim = draw(record_ids), "+" + draw(msisdn), "+" + draw(msisdn), draw(imsi)
    day = draw(st.datetimes(dt.datetime(2026, 1, 1), dt.datetime(2026, 12, 31)))
    doc = {"record_id": rid, "cli": cli, "dialled": dialled, "start": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
           "duration": draw(st.integers(0, 9_999)), "imsi": sim, "call_type": "voice", "status": "answered"}
    line = orjson.dumps(doc)
    id_at = line.index(b'"record_id":"') + len(b'"record_id":"')
    cli_at = line.index(b'"cli":"') + len(b'"cli":"')
    how = draw(st.sampled_from(MUTATIONS))
    if how == "cut_in_cli":          # a line cut in the middle of the caller's number
        return line[:cli_at + draw(st.integers(1, len(cli) - 1))]
    if how == "cut_in_id":           # cut in the middle of the id itself
        return line[:id_at + draw(st.integers(1, len(rid)))]
    if how == "id_runs_into_cli":    # bytes lost between the id and the number: the id reads on into the cli
        return line[:id_at + draw(st.integers(1, len(rid)))] + line[cli_at + draw(st.integers(1, len(cli) - 1)):]
    if how == "id_unterminated":     # the id's closing quote lost
        return line[:id_at + len(rid)] + line[id_at + len(rid) + 1:]
    if how == "no_cli":              # a valid line the checks reject (missing_field): its own id names it
        return orjson.dumps({k: v for k, v in doc.items() if k != "cli"})
    if how == "twice":               # two objects on one line
        return line + b" " + line
    if how == "bom":
        return b"\xef\xbb\xbf" + line
    return line


def windows(lines: list[bytes]) -> set[bytes]:
    """Every 7-digit window of every digit run of the raw lines."""
    out: set[bytes] = set()
    for line in lines:
        for run in re.findall(rb"[0-9]{7,}", line):
            out.update(run[i:i + 7] for i in range(len(run) - 6))
    return out


@pytest.fixture(scope="module")
def router(worker_keyring) -> Router:
    return Router(worker_keyring, CoreConfig(segment_bytes=2048), clock=lambda: CLOCK)


def ref_of(router: Router, rid: str) -> str:
    return router.tokeniser.token_one("record", rid)


def in_clear(routed) -> bytes:
    """A batch's DLQ records without their payload's ct, and its envelope headers without ct (what operations see)."""
    dlq = [orjson.loads(d) for d in routed.dlq]
    return b"\n".join([orjson.dumps({**d, "payload": {k: v for k, v in d["payload"].items() if k != "ct"}})
                       for d in dlq] + [orjson.dumps({k: v for k, v in orjson.loads(e).items() if k != "ct"})
                                        for e in routed.retention])


# ---------------------------------------------------------------------- (a) no leak, any form

@SETTINGS
@given(st.lists(raw_line(), min_size=1, max_size=6))
def test_ids_built_from_numbers_and_times_never_leave_the_sealed_payload(router, vault_keyring, lines):
    routed = router.route(lines, Source("feed", 2, list(range(len(lines)))), want_keys=True)
    # Subscriber tokens under the token key, record refs under the record-ref key.
    kids = (router.tokeniser.kid, router.tokeniser.record_prefix[:-1])
    token = re.compile(rb"(?:" + b"|".join(re.escape(k).encode() for k in kids) + rb"):[0-9a-f]{32}")
    assert routed.counts["in"] == routed.counts["retention"] == len(lines)

    envelopes = [orjson.loads(x) for x in routed.retention]
    dlq = [orjson.loads(x) for x in routed.dlq]
    clear: list[bytes] = [routed.analytics.buffer]
    for rec in dlq:
        assert rec["type"] == "cdr.dlq/2" and "record_id" not in rec and token.fullmatch(rec["record_ref"].encode())
        assert rec["payload"]["record_refs"] == [rec["record_ref"]]
        clear.append(orjson.dumps({**rec, "payload": {k: v for k, v in rec["payload"].items() if k != "ct"}}))
    for env in envelopes:
        assert env["type"] == "cdr.retention/2" and "record_ids" not in env
        assert all(token.fullmatch(ref.encode()) for ref in env["record_refs"])
        clear.append(orjson.dumps({k: v for k, v in env.items() if k not in ("ct", "wrapped_key")}))
    for out in (routed.analytics, routed.retention, routed.dlq):
        for _value, key, headers in out.messages():
            clear.append(key.encode() if isinstance(key, str) else key or b"")
            clear.extend(name.encode() + b"=" + value for name, value in headers)
    # DLQ messages are keyed by their ref; analytics names a record by the same ref.
    assert [k for _v, k, _h in routed.dlq.messages()] == [rec["record_ref"] for rec in dlq]
    assert all(token.fullmatch(orjson.loads(x)["record_id"].encode()) for x in routed.analytics)

    blob = b"\n".join(clear)
    for env in envelopes:  # random hex and the vault's key id (it holds its creation date): not derived from an id
        blob = blob.replace(env["segment_id"].encode(), b"").replace(env["vault_kid"].encode(), b"")
    blob = token.sub(b"", blob)
    leaked = sorted(w.decode() for w in windows(lines) if w in blob)
    assert not leaked, f"digits of a raw line outside the sealed payload: {leaked[:5]}"

    # The ids are still there for the vault: sealed, byte for byte.
    opened = [r for env in envelopes for r in open_segment(env, vault_keyring.private)]
    assert [r.raw for r in opened] == lines


def test_the_issues_truncated_line_names_its_record_by_ref_only(router):
    """The issue's case: a cut line whose record_id ran into the cli value gave "7-447111904414" in clear."""
    good = orjson.dumps({"record_id": "r-7", "cli": "+447111904414", "dialled": "+447700900456",
                         "start": "2026-11-26T10:15:42Z", "duration": 12})
    spliced = good[:good.index(b"r-7") + 1] + good[good.index(b"447111904414"):]  # {"record_id":"r447111904414",...
    cut = good[:good.index(b"904414")]                                          # ... "cli":"+447111
    routed = router.route([spliced, cut], Source("feed", 0, [5, 6]), want_keys=True)
    assert routed.counts == {"in": 2, "analytics": 0, "retention": 2, "dlq": 2, "suppressed": 0}
    dlq = [orjson.loads(d) for d in routed.dlq]
    # Parse rejects come first. The cut line keeps the plain id it had; the spliced line still parses (its
    # cli is gone): its own id, read on into the number, names it, as a ref.
    assert [(d["reason"], d["field"], d["record_ref"]) for d in dlq] == [
        ("invalid_json", None, ref_of(router, "r-7")), ("missing_field", "cli", ref_of(router, "r447111904414"))]
    assert [k for _v, k, _h in routed.dlq.messages()] == [d["record_ref"] for d in dlq]
    text = in_clear(routed)
    assert b"447111" not in text and b"904414" not in text and b"r-7" not in text


# ---------------------------------------------------------------- (c) one ref everywhere

def test_the_dlq_ref_is_the_analytics_token_and_what_cdrpipe_token_prints(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    worker = tmp_path / "keys" / "worker-keyring.json"
    ids = [ISSUE_ID, "1764151542.123", "sip:+447700900123@sbc1"]
    lines = []
    for rid in ids:
        ok = {"record_id": rid, "cli": "+447700900777", "dialled": "+447700900456",
              "start": "2026-11-26T10:15:42Z", "duration": 5}
        lines += [orjson.dumps(ok), orjson.dumps({k: v for k, v in ok.items() if k != "cli"})]  # twice: kept, rejected
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(worker), "--input", str(tmp_path / "in.jsonl"),
                 "--out-dir", str(tmp_path / "out"), "--quiet"]) == EXIT_OK
    analytics = [orjson.loads(x) for x in (tmp_path / "out" / "analytics.jsonl").read_bytes().splitlines()]
    dlq = [orjson.loads(x) for x in (tmp_path / "out" / "dlq.jsonl").read_bytes().splitlines()]
    envelopes = [orjson.loads(x) for x in (tmp_path / "out" / "retention.jsonl").read_bytes().splitlines()]
    printed = []
    for rid in ids:
        capsys.readouterr()
        assert main(["token", "--keyring", str(worker), "--kind", "record", rid]) == EXIT_OK
        printed.append(capsys.readouterr().out.strip())
    assert [r["record_id"] for r in analytics] == printed
    assert [(d["reason"], d["field"], d["record_ref"]) for d in dlq] == [("missing_field", "cli", p) for p in printed]
    assert [ref for env in envelopes for ref in env["record_refs"]] == [p for p in printed for _ in (1, 2)]
    assert printed == [Tokeniser(load_worker_keyring(worker)).token_one("record", rid) for rid in ids]
    assert len(set(printed)) == 3
    for name in ("analytics.jsonl", "dlq.jsonl", "retention.jsonl"):
        text = (tmp_path / "out" / name).read_text()
        assert not any(part in text for part in ("447700900123", "20261126101542", "1764151542")), name
    # A bare number is no record id: `cdrpipe token --kind record` refuses it, as the router does.
    capsys.readouterr()
    assert main(["token", "--keyring", str(worker), "--kind", "record", "447700900123"]) == EXIT_USAGE
    assert "447700900123" not in capsys.readouterr().err


# ---------------------------------------------------------------- (d) keep and drop

def _policy(record_id_action: str):
    text = "[fields]\n" + "\n".join(
        f'{r.field} = "{record_id_action if r.field == "record_id" else r.action + (":" + r.arg if r.arg else "")}"'
        for r in load_policy().rules)
    return policy_from_toml(text, f"record_id-{record_id_action}")


def test_a_kept_id_with_a_seven_digit_run_goes_to_the_dlq_and_a_safe_one_is_kept(worker_keyring):
    router = Router(worker_keyring, CoreConfig(policy=_policy("keep")), clock=lambda: CLOCK)
    base = {"cli": "+447700900777", "dialled": "+447700900456", "start": "2026-11-26T10:15:42Z", "duration": 5}
    lines = [orjson.dumps({"record_id": rid, **base}) for rid in (ISSUE_ID, "r-000001", "1764151542.123")]
    routed = router.route(lines, Source("feed", 0, [0, 1, 2]), want_keys=True)
    assert routed.counts == {"in": 3, "analytics": 1, "retention": 3, "dlq": 2, "suppressed": 0}
    assert [r["record_id"] for r in routed.analytics_records()] == ["r-000001"]
    dlq = [orjson.loads(d) for d in routed.dlq]
    assert [(d["reason"], d["field"]) for d in dlq] == [("unsafe_value", "record_id")] * 2
    assert [d["record_ref"] for d in dlq] == [ref_of(router, ISSUE_ID), ref_of(router, "1764151542.123")]
    assert not re.search(r"\d{2}", dlq[0]["detail"]) and "use token:record" in dlq[0]["detail"]
    clear = in_clear(routed)
    assert b"447700900123" not in clear and b"20261126101542" not in clear and b"1764151542" not in clear


def test_a_dropped_id_leaves_analytics_and_other_actions_are_refused(worker_keyring):
    router = Router(worker_keyring, CoreConfig(policy=_policy("drop")))
    line = orjson.dumps({"record_id": ISSUE_ID, "cli": "+447700900777", "dialled": "+447700900456",
                         "start": "2026-11-26T10:15:42Z", "duration": 5})
    (rec,) = router.route([line], Source("feed", 0, [0])).analytics_records()
    assert "record_id" not in rec and "447700900123" not in json.dumps(rec)
    for action in ("token:msisdn", "token:account", "truncate_ip:24/48", "coarsen_time:hour"):
        with pytest.raises(PolicyError, match="record_id"):
            _policy(action)
    with pytest.raises(PolicyError, match="record_id only"):
        policy_from_toml('[fields]\ncli = "token:record"')
    assert dict((r.field, (r.action, r.arg)) for r in load_policy().rules)["record_id"] == ("token", "record")


# ------------------------------------------------------------------- (b) the vault

@pytest.fixture()
def sealed(tmp_path) -> dict:
    """`cdrpipe process` output for records with number-and-time ids, one of them rejected."""
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    day = dt.date.today() - dt.timedelta(days=3)
    ids = [ISSUE_ID, "1764151542.123", f"imsi-234150001112223:{day:%Y%m%d}101542", "r-000001"]
    lines = [orjson.dumps({"record_id": rid, "cli": "+447700900123", "dialled": "+447700900456",
                           "start": f"{day}T10:{i:02d}:00Z", "duration": 5}) for i, rid in enumerate(ids)]
    lines.append(orjson.dumps({"record_id": "447700900999-20261126101542", "dialled": "+447700900123",
                               "start": f"{day}T11:00:00Z", "duration": 5}))  # no cli: to the DLQ
    ids.append("447700900999-20261126101542")
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["process", "--keyring", str(tmp_path / "keys" / "worker-keyring.json"), "--input",
                 str(tmp_path / "in.jsonl"), "--out-dir", str(tmp_path / "out"), "--quiet"]) == EXIT_OK
    refs = Tokeniser(load_worker_keyring(tmp_path / "keys" / "worker-keyring.json"))
    return {"root": tmp_path, "ids": ids, "refs": [refs.token_one("record", rid) for rid in ids], "day": day,
            "lines": lines, "vault": tmp_path / "keys" / "vault-keyring.json", "db": tmp_path / "vault.db",
            "retention": tmp_path / "out" / "retention.jsonl", "dlq": tmp_path / "out" / "dlq.jsonl"}


def _ingest(sealed: dict, path: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["vault", "ingest", "--keyring", str(sealed["vault"]), "--db", str(sealed["db"]),
                 "--input", str(path), "--quiet"]) == EXIT_OK
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name GLOB 'rec_[0-9]*'")]
        return sorted(r for t in tables for (r,) in conn.execute(f"SELECT record_id FROM {t}"))
    finally:
        conn.close()


def test_the_vault_dedupes_a_replayed_segment_and_a_dlq_payload_on_the_ref(sealed, capsys):
    n = len(sealed["ids"])
    first = _ingest(sealed, sealed["retention"], capsys)
    assert (first["records"], first["stored"], first["duplicates"]) == (n, n, 0)
    again = _ingest(sealed, sealed["retention"], capsys)  # a replayed segment
    assert (again["records"], again["stored"], again["duplicates"]) == (n, 0, n)
    dlq = sealed["dlq"].read_bytes().splitlines()
    assert len(dlq) == 1 and orjson.loads(dlq[0])["record_ref"] == sealed["refs"][-1]
    replay = _ingest(sealed, sealed["dlq"], capsys)  # the DLQ's sealed payload: the same record
    assert (replay["records"], replay["stored"], replay["duplicates"]) == (1, 0, 1)
    # What the vault stores and deduplicates on is the ref; no id is in the database file in clear.
    assert _stored_ids(sealed["db"]) == sorted(sealed["refs"])
    stored = b"".join(f.read_bytes() for f in sealed["db"].parent.glob(sealed["db"].name + "*"))  # -wal, keys
    for rid in sealed["ids"]:
        assert rid.encode() not in stored
    for part in (b"447700900123", b"20261126101542", b"1764151542", b"234150001112223"):
        assert part not in stored


def test_a_delivery_names_records_by_ref_and_checks_against_the_audit_entry(sealed, capsys):
    _ingest(sealed, sealed["retention"], capsys)
    base = ["--keyring", str(sealed["vault"]), "--db", str(sealed["db"])]
    start, end = str(sealed["day"] - dt.timedelta(days=1)), str(sealed["day"] + dt.timedelta(days=1))
    assert main(["vault", "warrant", "add", *base, "--id", "W-9", "--authority", "test", "--officer", "PC-9",
                 "--targets", "+447700900123", "--from", start, "--to", end, "--expires", "2099-12-31"]) == EXIT_OK
    for fmt in ("jsonl", "csv"):
        out = sealed["root"] / f"answer.{fmt}"
        assert main(["vault", "query", *base, "--target", "07700 900123", "--from", start, "--to", end,
                     "--warrant", "W-9", "--officer", "PC-9", "--format", fmt, "--output", str(out)]) == EXIT_OK
        text = out.read_text()
        if fmt == "jsonl":
            rows = [json.loads(x) for x in text.splitlines()]
            assert sorted(r["record_ref"] for r in rows) == sorted(sealed["refs"])
            assert all("record_id" not in r for r in rows)
            # The id itself is only inside the raw record the warrant discloses.
            assert sorted(json.loads(r["raw"])["record_id"] for r in rows) == sorted(sealed["ids"])
        else:
            assert text.splitlines()[0].split(",")[1] == "record_ref"
        capsys.readouterr()
        seq = read_entries(sealed["db"])[-1][0]  # the query's own entry
        assert main(["vault", "audit", "check-export", "--db", str(sealed["db"]), "--seq", str(seq),
                     "--file", str(out)]) == EXIT_OK, capsys.readouterr().err


def _v1(env: dict, rid: str, data_key: bytes) -> dict:
    """A cdr.retention/1 envelope of the same record (as workers sealed before record refs): record_ids in clear."""
    header = {k: v for k, v in env.items() if k not in ("ct", "record_refs")}
    header.update(type="cdr.retention/1", record_ids=[rid])
    aad = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    plaintext = AESGCM(data_key).decrypt(base64.b64decode(env["nonce"]), base64.b64decode(env["ct"]),
                                         orjson.dumps({k: v for k, v in env.items() if k != "ct"},
                                                      option=orjson.OPT_SORT_KEYS))
    ct = AESGCM(data_key).encrypt(base64.b64decode(env["nonce"]), plaintext, aad)
    return {**header, "ct": base64.b64encode(ct).decode()}


def _sealed_pair(tmp_path, rid: str, ref: Callable[[str], str] | None = None) -> tuple[dict, dict, bytes]:
    """Fresh keyrings in tmp_path/keys, and one record sealed as v2 (under ``ref(rid)``) and as v1."""
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    vault = load_vault_keyring(tmp_path / "keys" / "vault-keyring.json")
    data_key = AESGCM.generate_key(bit_length=256)
    sealer = Sealer(vault.private.public_key(), vault.vault_kid, data_key=data_key)
    day = dt.date.today() - dt.timedelta(days=2)
    raw = orjson.dumps({"record_id": rid, "cli": "+447700900123", "dialled": "+447700900456",
                        "start": f"{day}T09:00:00Z", "duration": 3})
    v2 = orjson.loads(sealer.seal(raw, [ref(rid) if ref else "k:" + "0" * 32], [len(raw)],
                                  {"name": "f", "partition": 0, "offset": 4}))
    return v2, _v1(v2, rid, data_key), raw


def test_the_vault_still_opens_v1_envelopes_and_dlq_records(tmp_path, capsys):
    _v2, v1, raw = _sealed_pair(tmp_path, "old-1")
    vault = load_vault_keyring(tmp_path / "keys" / "vault-keyring.json")
    (opened,) = open_segment(v1, vault.private, vault.vault_kid)
    assert (opened.record_ref, opened.raw) == ("old-1", raw)  # a v1 id stands for its ref
    dlq_v1 = {"type": "cdr.dlq/1", "reason": "missing_field", "field": "cli", "detail": "x", "record_id": "old-1",
              "source": {"name": "f", "partition": 0, "offset": 4}, "failed_at": "2026-01-01T00:00:00.000Z",
              "payload": v1}
    (tmp_path / "v1.jsonl").write_bytes(orjson.dumps(v1) + b"\n" + orjson.dumps(dlq_v1) + b"\n")
    sealed = {"vault": tmp_path / "keys" / "vault-keyring.json", "db": tmp_path / "vault.db"}
    summary = _ingest(sealed, tmp_path / "v1.jsonl", capsys)
    assert (summary["records"], summary["stored"], summary["duplicates"], summary["quarantined"]) == (2, 1, 1, 0)


def test_refs_survive_a_token_key_rotation_and_the_vault_holds_the_same_key() -> None:
    """The vault deduplicates on refs: a record replayed after `keys rotate` keeps its ref, while
    subscriber tokens move to the new key. Keyrings from before the record-ref key keep the old
    behaviour (refs under the current token key)."""
    from pipeline.keys import VaultKeyring, WorkerKeyring, generate, rotate
    worker, vault = generate()
    assert worker.record_key is not None and worker.record_key == vault.record_key
    assert "secret" not in repr(worker) and worker.record_key.kid not in repr(worker)
    line = [b'{"record_id":"447700900123-20261126101542","cli":"+447700900123","dialled":"+447700900456",'
            b'"start":"2026-11-26T10:15:42Z","duration":5}']
    before = Router(worker).route(line, Source("f", 0, [0])).analytics_records()[0]
    rotated = rotate(worker)
    after = Router(rotated).route(line, Source("f", 0, [0])).analytics_records()[0]
    assert after["record_id"] == before["record_id"] and after["record_id"].startswith(worker.record_key.kid + ":")
    assert after["cli"] != before["cli"]  # tokens did move to the new key
    for ring, cls in ((rotated, WorkerKeyring), (vault, VaultKeyring)):
        assert cls.from_json(orjson.loads(orjson.dumps(ring.to_json())), "t").record_key == worker.record_key
    legacy_doc = {k: v for k, v in worker.to_json().items() if k != "record_key"}
    legacy = WorkerKeyring.from_json(legacy_doc, "old")
    assert legacy.record_key is None
    ref = Router(legacy).route(line, Source("f", 0, [0])).analytics_records()[0]["record_id"]
    assert ref.startswith(worker.current.kid + ":") and ref != before["record_id"]


def test_a_v1_envelope_and_a_v2_envelope_of_one_record_are_one_record_to_the_vault(tmp_path, capsys):
    """The vault holds the record-ref key, so it computes the ref of a v1 envelope's clear id itself."""
    from pipeline.core.tokenise import Tokeniser
    from pipeline.keys import load_worker_keyring
    made: list[str] = []

    def ref(rid: str) -> str:  # the workers' ref, from the keyring the pair was sealed with
        made.append(Tokeniser(load_worker_keyring(tmp_path / "keys" / "worker-keyring.json")).token_one("record", rid))
        return made[-1]

    v2, v1, _raw = _sealed_pair(tmp_path, "447700900123-1", ref)
    ref_made = made[0]
    (tmp_path / "both.jsonl").write_bytes(orjson.dumps(v1) + b"\n" + orjson.dumps(v2) + b"\n")
    sealed = {"vault": tmp_path / "keys" / "vault-keyring.json", "db": tmp_path / "vault.db"}
    summary = _ingest(sealed, tmp_path / "both.jsonl", capsys)
    assert (summary["records"], summary["stored"], summary["duplicates"]) == (2, 1, 1)
    with sqlite3.connect(sealed["db"]) as conn:  # the stored id is the ref, never the clear v1 id
        assert [r[0] for r in conn.execute("SELECT record_id FROM record_ids")] == [ref_made]
