"""Issue 15, finding 7: corpus gaps, tested through `cdrpipe process` (the file runner), not the adapter alone.

* Kamailio acc: a file whose last line has no newline, and calls whose INVITE and BYE fall in
  different batches, still pair.
* FreeSWITCH: one pretty-printed json_cdr document per call file, and a directory of them; each
  file is one record with its own coordinates, a bad file is a DLQ record, never a crash.
* SMS without a duration (the Orange/D4D layout): not a DLQ record.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import orjson
import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert main(["keys", "generate", "--dir", str(d)]) == 0
    return d


def process(keydir, out: Path, inp: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    """Run `cdrpipe process`; (exit code, summary, stderr)."""
    code = main(["process", "--keyring", str(keydir / "worker-keyring.json"), "--input", str(inp),
                 "--out-dir", str(out), *extra])
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines and code == 0 else {}), cap.err


def outputs(out: Path) -> dict[str, list[dict]]:
    return {k: [orjson.loads(line) for line in (out / f"{k}.jsonl").read_bytes().splitlines()]
            for k in ("analytics", "retention", "dlq")}


def retained_coordinates(retention: list[dict]) -> list[tuple[str, int]]:
    """(source name, offset) of every record the retention segments seal, in output order."""
    got = []
    for seg in retention:
        offs = seg["source"]["offset"]
        offs = offs if isinstance(offs, list) else [offs]
        assert len(offs) == len(seg["lengths"])
        got += [(seg["source"]["name"], o) for o in offs]
    return got


# --------------------------------------------------------------------------- Kamailio acc


def acc_calls(n: int, seed: int) -> tuple[list[bytes], list[int]]:
    """``n`` answered calls as stock-Kamailio acc rows (INVITE, ACK, BYE, interleaved); their talk times.

    Columns: method|from_tag|to_tag|callid|sip_code|sip_reason|time|src_user|src_domain|src_ip|
    dst_ouser|dst_user|dst_domain. Every fourth call has an in-dialog re-INVITE-free ACK.
    """
    rng = random.Random(seed)
    rows: list[tuple[int, int, bytes]] = []
    talk = []
    t0 = 1_780_000_000
    for i in range(n):
        cid = f"{rng.getrandbits(64):016x}@203.0.113.{i % 250 + 1}"
        a, b = f"+4479111{rng.randrange(10**5):05d}", f"+4479222{rng.randrange(10**5):05d}"
        start = t0 + 40 * i
        secs = rng.randrange(1, 90)  # up to three calls at once
        talk.append(secs)
        common = f"f{i}|t{i}|{cid}|200|OK"
        rows.append((start, 0, f"INVITE|{common}|{start}|{a}|example.net|203.0.113.9|{b}|{b}|example.net".encode()))
        if i % 4 == 0:
            rows.append((start + 1, 1, f"ACK|{common}|{start + 1}|{a}|example.net|203.0.113.9|{b}|{b}|x".encode()))
        rows.append((start + secs, 2, f"BYE|{common}|{start + secs}|{b}|example.net|203.0.113.7|{a}|{a}|x".encode()))
    rows.sort()  # by time: calls overlap, so a call's BYE comes after other calls' INVITEs
    return [r for _t, _k, r in rows], talk


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("batch_bytes", [None, "600", "2000"])
def test_acc_file_pairs_every_call_through_process(keydir, tmp_path, capsys, final_newline, batch_bytes):
    lines, talk = acc_calls(40, seed=len(str(batch_bytes)) + final_newline)
    inp = tmp_path / "acc.log"
    inp.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    extra = ["--format", "acc", "--region", "GB", "--quiet"] + (["--batch-bytes", batch_bytes] if batch_bytes else [])
    code, summary, _err = process(keydir, tmp_path / "out", inp, capsys, *extra)
    assert code == 0
    assert summary == {"in": len(lines), "analytics": 40, "retention": len(lines), "dlq": len(lines) - 40,
                       "suppressed": 0}
    got = outputs(tmp_path / "out")
    assert {d["reason"] for d in got["dlq"]} == {"acc_in_call_request"}  # never acc_unpaired_invite
    assert sorted(r["duration"] for r in got["analytics"]) == sorted(talk)
    # Every line sealed exactly once, under its own line number, in file order.
    assert retained_coordinates(got["retention"]) == [("acc.log", i) for i in range(1, len(lines) + 1)]
    if batch_bytes:
        assert len(got["retention"]) > 3  # the file really was cut into several batches


def test_acc_last_line_without_newline_is_paired_with_its_invite(keydir, tmp_path, capsys):
    """The reported case: the file's last line is the BYE of the call just before it, with no newline."""
    lines, talk = acc_calls(3, seed=7)
    assert lines[-1].startswith(b"BYE")
    inp = tmp_path / "tail.acc"
    inp.write_bytes(b"\n".join(lines))
    code, summary, _ = process(keydir, tmp_path / "out", inp, capsys, "--format", "acc", "--quiet")
    assert code == 0 and summary["analytics"] == 3
    assert "acc_unpaired_invite" not in {d["reason"] for d in outputs(tmp_path / "out")["dlq"]}


def test_a_last_line_without_newline_stays_in_the_batch_before_it(keydir, tmp_path, capsys):
    """Any format: the unterminated last line is routed with the lines before it, not as a batch of its own."""
    from io import BytesIO

    from pipeline.runners.inputs import iter_chunks
    assert list(iter_chunks(BytesIO(b"ab\ncd\nef"), 100)) == [b"ab\ncd\nef"]  # smaller than a batch: one batch
    assert list(iter_chunks(BytesIO(b"ab\ncd\nef\n"), 100)) == [b"ab\ncd\nef"]
    assert list(iter_chunks(BytesIO(b"ab\ncd\nef"), 4)) == [b"ab", b"cd\nef"]
    assert list(iter_chunks(BytesIO(b"ab\n\n"), 100)) == [b"ab\n"]  # an empty last line is still a record
    lines, _ = acc_calls(5, seed=11)
    inp = tmp_path / "small.acc"
    inp.write_bytes(b"\n".join(lines))
    code, summary, _ = process(keydir, tmp_path / "out", inp, capsys, "--format", "acc", "--quiet")
    assert code == 0 and summary["in"] == len(lines)
    assert len(outputs(tmp_path / "out")["retention"]) == 1  # one batch, one sealed segment


def test_acc_invite_that_never_gets_a_bye_is_rejected_and_does_not_hold_the_rest(keydir, tmp_path, capsys):
    lines, talk = acc_calls(30, seed=3)
    orphan = b"INVITE|fo|to|deadbeef@203.0.113.200|200|OK|1780000005|+447911100001|e|203.0.113.9|+447922200002||e"
    lines.insert(1, orphan)
    inp = tmp_path / "orphan.acc"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    code, summary, _ = process(keydir, tmp_path / "out", inp, capsys, "--format", "acc", "--quiet",
                               "--batch-bytes", "700")
    assert code == 0
    got = outputs(tmp_path / "out")
    reasons = [d["reason"] for d in got["dlq"]]
    assert reasons.count("acc_unpaired_invite") == 1 and summary["analytics"] == 30
    assert sorted(r["duration"] for r in got["analytics"]) == sorted(talk)
    assert retained_coordinates(got["retention"]) == [("orphan.acc", i) for i in range(1, len(lines) + 1)]


def test_acc_quoted_csv_layout_pairs_across_batches_too(keydir, tmp_path, capsys):
    """An acc CSV export (quoted, another column order): the same calls pair across small batches."""
    lines, talk = acc_calls(25, seed=9)
    rows = []
    for i, line in enumerate(lines):
        c = line.decode().split("|")  # method|from|to|callid|code|reason|time|src_user|..|src_ip|dst_ouser|..
        rows.append(",".join(f'"{v}"' for v in (str(i), c[0], c[3], c[1], c[2], c[4], c[5], c[6], c[7],
                                                f"{c[7]}@example.net", c[9], "198.51.100.1", "", c[11], c[10],
                                                "example.net", "1", "t")))
    inp = tmp_path / "acc.csv"
    inp.write_text("\n".join(rows))
    code, summary, _ = process(keydir, tmp_path / "out", inp, capsys, "--format", "acc", "--quiet", "--mapping",
                               str(DATA / "mappings" / "cgrates-acc-csv.toml"), "--batch-bytes", "900")
    assert code == 0 and summary["analytics"] == 25
    got = outputs(tmp_path / "out")
    assert "acc_unpaired_invite" not in {d["reason"] for d in got["dlq"]} and len(got["retention"]) > 3
    assert sorted(r["duration"] for r in got["analytics"]) == sorted(talk)


def test_acc_corpus_file_without_final_newline(keydir, tmp_path, capsys, corpus):
    """CGRateS' flatstore sample (AGPL: read in place) ends without a newline on a BYE."""
    src = corpus / "cgrates" / "ers_flatstore__fullSuccessfull.acc"
    assert not src.read_bytes().endswith(b"\n")
    for batch in ("8388608", "300"):
        code, summary, _ = process(keydir, tmp_path / "out", src, capsys, "--format", "acc", "--region", "DE",
                                   "--mapping", str(DATA / "mappings" / "cgrates-flatstore.toml"), "--quiet",
                                   "--batch-bytes", batch)
        assert code == 0
        assert summary == {"in": 8, "analytics": 4, "retention": 8, "dlq": 4, "suppressed": 0}


# --------------------------------------------------------------------------- FreeSWITCH json_cdr files


def json_cdr(i: int, rng: random.Random) -> dict:
    """A json_cdr document as mod_json_cdr writes it (nested variables and callflow), call ``i``."""
    uuid = f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-a{rng.getrandbits(12):03x}-" \
           f"{rng.getrandbits(48):012x}"
    start = 1_780_100_000 + 60 * i
    return {
        "core-uuid": "6f1a0c1e-0000-4000-8000-000000000001", "switchname": f"fs-{i % 3}",
        "channel_data": {"state": "CS_REPORTING", "direction": "inbound"},
        "variables": {"uuid": uuid, "sip_from_user": f"0791133{i:04d}", "start_epoch": str(start),
                      "start_uepoch": f"{start}123456", "billsec": str(10 + i), "duration": str(15 + i),
                      "sip_received_ip": f"198.51.100.{i + 1}", "hangup_cause": "NORMAL_CLEARING"},
        "app_log": {"applications": [{"app_name": "bridge", "app_data": "sofia/gateway/out/${destination_number}"}]},
        "callflow": [{"caller_profile": {"caller_id_number": f"+44791133{i:04d}",
                                         "destination_number": f"+44792244{i:04d}",
                                         "network_addr": f"198.51.100.{i + 1}", "uuid": uuid},
                      "times": {"created_time": f"{start}123456"}}],
    }


def pretty(doc: dict) -> bytes:
    """FreeSWITCH's own layout: tab-indented, one document, a final newline."""
    return json.dumps(doc, indent="\t").encode() + b"\n"


def test_one_pretty_printed_call_file_is_one_record(keydir, tmp_path, capsys):
    doc = json_cdr(5, random.Random(1))
    one = tmp_path / "a_call.cdr.json"
    one.write_bytes(pretty(doc))
    code, summary, err = process(keydir, tmp_path / "out", one, capsys, "--format", "freeswitch-json", "--quiet")
    assert code == 0 and summary == {"in": 1, "analytics": 1, "retention": 1, "dlq": 0, "suppressed": 0}
    got = outputs(tmp_path / "out")
    assert retained_coordinates(got["retention"]) == [("a_call.cdr.json", 0)]
    compact = tmp_path / "compact.jsonl"
    compact.write_bytes(orjson.dumps(doc) + b"\n")
    code, summary, _ = process(keydir, tmp_path / "out2", compact, capsys, "--format", "freeswitch-json", "--quiet")
    assert code == 0 and summary["analytics"] == 1
    a, b = got["analytics"][0], outputs(tmp_path / "out2")["analytics"][0]
    assert a == b  # the same call, however the file is laid out
    assert a["duration"] == 15 and a["ip"] == "198.51.100.0/24"
    text = (tmp_path / "out" / "analytics.jsonl").read_bytes() + err.encode()
    assert b"7911330005" not in text and b"7922440005" not in text and b"198.51.100.6" not in text


def test_a_directory_of_call_files_each_a_record_bad_ones_to_the_dlq(keydir, tmp_path, capsys):
    rng = random.Random(2)
    cdrs = tmp_path / "json_cdr"
    cdrs.mkdir()
    docs = {f"{i:02d}_{rng.getrandbits(40):010x}.cdr.json": json_cdr(i, rng) for i in range(12)}
    for name, doc in docs.items():
        (cdrs / name).write_bytes(pretty(doc))
    truncated = pretty(json_cdr(50, rng))[:300]
    (cdrs / "50_truncated.cdr.json").write_bytes(truncated)
    (cdrs / "51_not_a_cdr.cdr.json").write_bytes(b'{\n\t"variables": "no",\n\t"callflow": []\n}\n')
    (cdrs / "52_compact.json").write_bytes(orjson.dumps(json_cdr(52, rng)) + b"\n" + orjson.dumps(json_cdr(53, rng)))
    (cdrs / ".hidden.cdr.json").write_bytes(pretty(json_cdr(60, rng)))  # editors' and rsync's temporaries
    (cdrs / "subdir").mkdir()
    (cdrs / "subdir" / "x.cdr.json").write_bytes(pretty(json_cdr(61, rng)))
    code, summary, err = process(keydir, tmp_path / "out", cdrs, capsys, "--format", "freeswitch-json",
                                 "--workers", "2")
    assert code == 0, err
    assert summary == {"in": 16, "analytics": 14, "retention": 16, "dlq": 2, "suppressed": 0}
    got = outputs(tmp_path / "out")
    # Each file is its own source: pretty files at offset 0, the compact file line by line.
    expected = [(name, 0) for name in sorted(docs)] + [("50_truncated.cdr.json", 0), ("51_not_a_cdr.cdr.json", 0),
                                                       ("52_compact.json", 1), ("52_compact.json", 2)]
    assert retained_coordinates(got["retention"]) == expected
    dlq = {(d["source"]["name"], d["source"]["offset"]): d["reason"] for d in got["dlq"]}
    assert dlq == {("50_truncated.cdr.json", 0): "invalid_json", ("51_not_a_cdr.cdr.json", 0): "not_json_cdr"}
    assert sorted(r["duration"] for r in got["analytics"]) == sorted([10 + i for i in range(12)] + [62, 63])
    blob = b"".join((tmp_path / "out" / f"{k}.jsonl").read_bytes() for k in ("analytics", "dlq")) + err.encode()
    assert b"791133" not in blob and b"792244" not in blob and b"198.51.100." + b"1" + b"\"" not in blob


def test_a_directory_needs_a_document_format(keydir, tmp_path, capsys):
    d = tmp_path / "dir"
    d.mkdir()
    code, _summary, err = process(keydir, tmp_path / "out", d, capsys, "--format", "jsonl")
    assert code == 2 and "dir" in err


def test_corpus_freeswitch_json_cdr_file_and_directory(keydir, tmp_path, capsys, corpus):
    """CGRateS' complete mod_json_cdr document (AGPL: read in place, copied only into the test's tmp dir)."""
    src = corpus / "cgrates" / "engine_fscdr__body.json"
    assert src.read_bytes().count(b"\n") > 50  # pretty-printed, as FreeSWITCH writes it
    code, summary, _ = process(keydir, tmp_path / "out", src, capsys, "--format", "freeswitch-json", "--quiet")
    assert code == 0 and summary == {"in": 1, "analytics": 1, "retention": 1, "dlq": 0, "suppressed": 0}
    row = outputs(tmp_path / "out")["analytics"][0]
    assert row["duration"] == 68
    d = tmp_path / "dir"
    d.mkdir()
    for name in ("a.cdr.json", "b.cdr.json"):
        shutil.copy(src, d / name)
    code, summary, _ = process(keydir, tmp_path / "out2", d, capsys, "--format", "freeswitch-json", "--quiet")
    assert code == 0 and summary["analytics"] == 2
    assert retained_coordinates(outputs(tmp_path / "out2")["retention"]) == [("a.cdr.json", 0), ("b.cdr.json", 0)]


# --------------------------------------------------------------------------- records without a duration

ORANGE = DATA / "mappings" / "orange-d4d.toml"


def test_texts_without_a_duration_pass_calls_without_one_do_not(keydir, tmp_path, capsys):
    """Orange/D4D rows (interaction 1 call, 2 text): a blank duration is 0 for a text, missing for a call."""
    rows = [
        "2;11;33612345678;33698765432;2026-10-02 08:00:05;;2.35;48.85",    # text, no duration
        "2;21;33698765432;33612345678;2026-10-02 08:01:05; ;2.35;48.85",   # text, blank duration
        "2;11;33612345678;33655555555;2026-10-02 08:02:05;0;2.35;48.85",   # text, 0 as bandicoot writes it
        "1;11;33612345678;33698765432;2026-10-02 08:03:05;47;2.35;48.85",  # call with its duration
        "1;22;33655555555;33612345678;2026-10-02 08:04:05;;2.35;48.85",    # call without one: a reject
        "3;11;33612345678;33698765432;2026-10-02 08:05:05;;2.35;48.85",    # an unknown code: a reject too
    ]
    inp = tmp_path / "d4d.csv"
    inp.write_text("\n".join(rows) + "\n")
    code, summary, err = process(keydir, tmp_path / "out", inp, capsys, "--format", "csv", "--mapping", str(ORANGE),
                                 "--region", "FR")
    assert code == 0
    assert summary == {"in": 6, "analytics": 4, "retention": 6, "dlq": 2, "suppressed": 0}
    got = outputs(tmp_path / "out")
    assert [(r["call_type"], r["duration"]) for r in got["analytics"]] == [("sms", 0), ("sms", 0), ("sms", 0),
                                                                          ("voice", 47)]
    assert [(d["reason"], d["source"]["offset"]) for d in got["dlq"]] == [("missing_field", 5), ("missing_field", 6)]
    assert "612345678" not in err and "612345678" not in (tmp_path / "out" / "dlq.jsonl").read_text()


def test_vendored_orange_sample_texts_without_duration(keydir, tmp_path, capsys):
    """bandicoot's B_orange.csv (MIT, tests/data): its two texts without a duration reach analytics."""
    code, summary, _ = process(keydir, tmp_path / "out", DATA / "bandicoot" / "B_orange.csv", capsys, "--format",
                               "csv", "--mapping", str(ORANGE), "--region", "US", "--quiet")
    assert code == 0
    assert summary == {"in": 8, "analytics": 4, "retention": 8, "dlq": 4, "suppressed": 0}
    got = outputs(tmp_path / "out")
    assert sorted(d["reason"] for d in got["dlq"]) == ["empty", "missing_field", "missing_field", "missing_field"]
    assert sorted((r["call_type"], r["duration"]) for r in got["analytics"]) == [
        ("sms", 0), ("sms", 0), ("sms", 222), ("voice", 122)]


@pytest.mark.parametrize("toml,needle", [
    ('[values.cli]\n"1" = "x"\n', "[values.cli]"),
    ('[values.call_type]\n"1" = 5\n', "strings"),
    ('[values.call_type]\n"1" = "sms; drop"\n', "plain names"),
    ('[values]\ncall_type = "sms"\n', "[values.<field>]"),
])
def test_value_tables_are_checked(tmp_path, toml, needle):
    from pipeline.formats import MappingError, check_format_options, load_mapping
    path = tmp_path / "m.toml"
    path.write_text('[csv]\ncolumn_count = 5\n[map]\n0 = "call_type"\n1 = "cli"\n2 = "dialled"\n3 = "start"\n'
                    '4 = "duration"\n' + toml)
    with pytest.raises(MappingError) as err:
        check_format_options("csv", load_mapping(path))
    assert needle in str(err.value)


def test_jsonl_sms_without_a_duration_reaches_analytics_with_duration_0(keydir, tmp_path, capsys):
    inp = tmp_path / "raw.jsonl"
    inp.write_text(
        '{"cli":"+33612345678","dialled":"+33698765432","start":"2026-10-02T08:00:05Z","call_type":"sms"}\n'
        '{"cli":"+33612345678","dialled":"+33698765432","start":"2026-10-02T08:00:06Z","call_type":"DATA"}\n'
        '{"cli":"+33612345678","dialled":"+33698765432","start":"2026-10-02T08:00:07Z","call_type":"voice"}\n'
        '{"cli":"+33612345678","dialled":"+33698765432","start":"2026-10-02T08:00:08Z"}\n')
    code, summary, _ = process(keydir, tmp_path / "out", inp, capsys, "--quiet")
    assert code == 0
    assert summary == {"in": 4, "analytics": 2, "retention": 4, "dlq": 2, "suppressed": 0}
    got = outputs(tmp_path / "out")
    assert [r["duration"] for r in got["analytics"]] == [0, 0]
    assert [(d["reason"], d["field"]) for d in got["dlq"]] == [("missing_field", "duration")] * 2
