"""A wrong --format stops the file runner with a hint instead of filling the DLQ; the Kafka worker warns.

What could fail: `process --format asterisk-csv` on JSONL exits 0 with every record in the DLQ;
the hint names the wrong format or none; a right format whose records are merely bad (they
belong in the DLQ) is stopped; the hint repeats a value from the records; outputs are written
before the stop; the worker's batch is not counted or not logged.
"""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from pipeline.cli import EXIT_FATAL, EXIT_OK, main
from pipeline.core.router import CoreConfig, Router
from pipeline.formats.sniff import format_mismatch, sniff
from pipeline.metrics import WorkerMetrics
from pipeline.synthetic import write_sample

NUMBER = "7911123456"


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    assert main(["keys", "generate", "--dir", str(d)]) == EXIT_OK
    return d / "worker-keyring.json"


def _asterisk_rows(n: int) -> bytes:
    rows = []
    for i in range(n):
        rows.append(f'"acct{i}","0{NUMBER}","02079460{i:03d}","from-internal","""Ann"" <0{NUMBER}>",'
                    f'"SIP/201-000{i}","SIP/trunk-000{i}","Dial","SIP/trunk/02079460{i:03d}",'
                    f'"2026-11-25 10:{i % 60:02d}:00","2026-11-25 10:{i % 60:02d}:05","2026-11-25 10:{i % 60:02d}:47",'
                    f'47,42,"ANSWERED","DOCUMENTATION","1764064{i:03d}.{i}",""')
    return ("\n".join(rows) + "\n").encode()


def _acc_rows(n: int) -> bytes:
    return "".join(f"INVITE|ft{i}|tt{i}|call{i}@198.51.100.7|200|OK|17640648{i:02d}|{NUMBER}|example.org|"
                   f"198.51.100.7|2079460{i:03d}|2079460{i:03d}|example.org\n" for i in range(n)).encode()


def _freeswitch_lines(n: int) -> bytes:
    return b"".join(json.dumps({"core-uuid": f"u{i}", "variables": {"uuid": f"c{i}", "caller_id_number": NUMBER},
                                "callflow": [{"caller_profile": {"destination_number": "2079460321"}}]}).encode()
                    + b"\n" for i in range(n))


def _jsonl_lines(n: int) -> bytes:
    return b"".join(json.dumps({"record_id": f"r{i}", "cli": f"+44{NUMBER}", "dialled": "+442079460321",
                                "start": "2026-11-25T10:00:00Z", "duration": i}).encode() + b"\n" for i in range(n))


def _csv_with_header(n: int) -> bytes:
    return ("when;caller;callee;secs\n" + "".join(f"2026-11-25 10:00:{i:02d};+44{NUMBER};+442079460321;{i}\n"
                                                 for i in range(n))).encode()


def _run(keyring: Path, tmp_path: Path, capsys, data: bytes | None, fmt: str, *extra: str,
         inp: Path | None = None) -> tuple[int, str, str]:
    if inp is None:
        inp = tmp_path / "input.dat"
        inp.write_bytes(data or b"")
    capsys.readouterr()
    code = main(["process", "--keyring", str(keyring), "--input", str(inp), "--out-dir", str(tmp_path / "out"),
                 "--format", fmt, "--quiet", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _stopped(code: int, out: str, err: str, tmp_path: Path) -> str:
    assert code == EXIT_FATAL and out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert NUMBER not in err
    assert all((tmp_path / "out" / f"{k}.jsonl").stat().st_size == 0 for k in ("analytics", "retention", "dlq"))
    return lines[0]


def test_jsonl_given_to_asterisk_csv_stops_with_use_jsonl(keyring, tmp_path, capsys) -> None:
    sample = tmp_path / "sample.jsonl"
    write_sample(sample, 300, seed=41)
    line = _stopped(*_run(keyring, tmp_path, capsys, None, "asterisk-csv", inp=sample), tmp_path)
    assert "--format asterisk-csv" in line and "look like JSON objects" in line and "use --format jsonl" in line


@pytest.mark.parametrize("data,fmt,hint", [
    (_asterisk_rows(40), "jsonl", "use --format asterisk-csv"),
    (_acc_rows(30), "jsonl", "use --format acc"),
    (_acc_rows(30), "asterisk-csv", "use --format acc"),
    (_freeswitch_lines(20), "jsonl", "use --format freeswitch-json"),
    (_csv_with_header(25), "jsonl", "use --format csv --mapping FILE"),
    (_asterisk_rows(40), "acc", "use --format asterisk-csv"),
    (gzip.compress(_asterisk_rows(40)), "asterisk-csv", "decompress it first"),
    (_asterisk_rows(40).decode().encode("utf-16"), "asterisk-csv", "iconv -f UTF-16 -t UTF-8"),
    (_acc_rows(30).decode().encode("utf-16-le"), "acc", "iconv -f UTF-16 -t UTF-8"),  # no byte-order mark
    (_asterisk_rows(40).replace(b"\n", b"\r"), "asterisk-csv", "tr '\\r' '\\n'"),  # classic Mac line ends
    (_jsonl_lines(30).replace(b"\n", b"\r"), "jsonl", "carriage return alone"),
])
def test_other_formats_name_the_format_that_reads_them(keyring, tmp_path, capsys, data, fmt, hint) -> None:
    line = _stopped(*_run(keyring, tmp_path, capsys, data, fmt), tmp_path)
    assert f"could be read as --format {fmt}" in line and hint in line


def test_a_csv_header_in_another_order_than_the_mapping_stops_the_run(keyring, tmp_path, capsys) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text('[csv]\nheader = true\ncolumns = ["id", "from", "to", "when", "secs"]\n\n'
                       '[map]\nid = "record_id"\nfrom = "cli"\nto = "dialled"\nwhen = "start"\nsecs = "duration"\n')
    rows = b"".join(b"a%d,+44%s,+447700900%03d,1436454408,5\n" % (i, NUMBER.encode(), i) for i in range(20))
    # cli and dialled swapped in the file: every row would still be valid, the wrong way round
    swapped = b"id,to,from,when,secs\n" + rows
    line = _stopped(*_run(keyring, tmp_path, capsys, swapped, "csv", "--mapping", str(mapping)), tmp_path)
    assert "names the mapping's columns in another order" in line and "list `columns`" in line
    code, out, _ = _run(keyring, tmp_path, capsys, b"id,from,to,when,secs\n" + rows, "csv", "--mapping", str(mapping))
    assert code == EXIT_OK and json.loads(out.splitlines()[-1])["analytics"] == 20


def test_a_pretty_printed_document_given_to_jsonl(keyring, tmp_path, capsys) -> None:
    doc = json.dumps({"variables": {"uuid": "c1", "caller_id_number": NUMBER}, "callflow": []}, indent=2).encode()
    line = _stopped(*_run(keyring, tmp_path, capsys, doc, "jsonl"), tmp_path)
    assert "use --format freeswitch-json" in line


def test_standard_input_is_checked_too(keyring, tmp_path, capsys, monkeypatch) -> None:
    import io
    import sys
    data = _acc_rows(30)

    class Stdin:
        buffer = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    monkeypatch.setattr(sys, "stdin", Stdin())
    capsys.readouterr()
    code = main(["process", "--keyring", str(keyring), "--input", "-", "--out-dir", str(tmp_path / "out"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_FATAL and "use --format acc" in err and NUMBER not in err


def test_the_right_format_with_bad_records_is_not_stopped(keyring, tmp_path, capsys) -> None:
    # JSON objects given to jsonl, every one invalid: the DLQ is where they belong.
    bad = b"".join(json.dumps({"cli": NUMBER, "dialled": "x", "start": "not a time", "duration": -1}).encode() + b"\n"
                   for _ in range(10))
    code, out, _ = _run(keyring, tmp_path, capsys, bad, "jsonl")
    assert code == EXIT_OK and json.loads(out.splitlines()[-1])["dlq"] == 10
    # Asterisk rows with a bad time each: read as asterisk-csv, rejected for their fields.
    rows = _asterisk_rows(5).replace(b'"2026-11-25 10:', b'"2026-13-45 10:')
    code, out, _ = _run(keyring, tmp_path, capsys, rows, "asterisk-csv")
    assert code == EXIT_OK
    # Blank lines only: nothing to say about the format.
    code, out, _ = _run(keyring, tmp_path, capsys, b"\n\n\n", "jsonl")
    assert code == EXIT_OK


def test_a_wrong_format_after_the_first_batch_is_left_to_the_dlq(keyring, tmp_path, capsys) -> None:
    sample = tmp_path / "sample.jsonl"
    write_sample(sample, 200, seed=43)
    mixed = tmp_path / "mixed.dat"
    mixed.write_bytes(sample.read_bytes() + _acc_rows(300))
    code, out, _ = _run(keyring, tmp_path, capsys, None, "jsonl", "--batch-bytes", "4096", "--workers", "1",
                        inp=mixed)
    assert code == EXIT_OK and json.loads(out.splitlines()[-1])["dlq"] >= 300


@pytest.mark.parametrize("records,expected,look", [
    ([json.dumps({"variables": {}, "callflow": [], "core-uuid": "u"}, indent=2).encode()], "jsonl",
     "freeswitch-json"),  # a Kafka message holding one pretty-printed document
    ([b'{"cli":"+447911123456","dialled":"+442079460321"}'] * 5, "asterisk-csv", "jsonl"),
    ([b"\x00\x9f\x92\x96binary\xff"] * 5, "jsonl", "binary"),
    (b'{"cli":"+447911123456","dialled":"+442079460321"}\n'.decode().encode("utf-16").split(b"\n"), "jsonl",
     "utf-16"),
    ([b"SQLite format 3\x00\x10\x00\x01\x01\x00@  \x00\x00\x00\x02\x00\x00\x00\x9f" + bytes(40)] * 3, "jsonl",
     "binary"),  # zero bytes, but not beside ASCII characters
])
def test_messages_look_like_their_format(records, expected, look) -> None:
    seen = sniff(records)
    assert seen is not None and seen.label == look
    hint = format_mismatch(expected, records, {"invalid_json": len(records)}, batch="a batch", unit="messages")
    assert hint is not None and hint.startswith(f"no record of a batch could be read as --format {expected}")
    assert NUMBER not in hint


class FakeMessage:
    """What the worker's unpacking maps call on a consumed message (a real one needs a broker)."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._v, self._o = value, offset

    def error(self): return None  # noqa: E704
    def value(self): return self._v  # noqa: E704
    def partition(self): return 0  # noqa: E704
    def offset(self): return self._o  # noqa: E704


def _worker_batch(router: Router, values: list[bytes], caplog, monkeypatch):
    """The worker's batch path without a broker: route, then settle as after a commit."""
    from concurrent.futures import Future

    import pipeline.runners.kafka as kafka_mod
    from pipeline.runners.kafka import TransactionLoop, WorkerSettings

    metrics = WorkerMetrics()
    loop = TransactionLoop(router, WorkerSettings(bootstrap="127.0.0.1:1", worker_id="w-test"), metrics)
    monkeypatch.setattr(kafka_mod, "Message", FakeMessage)  # the unpacking maps call Message.value etc.
    batch = loop._route([FakeMessage(v, i) for i, v in enumerate(values)])
    assert batch is not None
    done: Future = Future()
    done.set_result(batch)
    loop._in_flight = done
    with caplog.at_level(logging.WARNING, logger="pipeline.runners.kafka"):
        loop._settle()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return loop, batch, warnings, metrics.registry.get_sample_value


def test_the_worker_warns_and_counts_a_batch_of_another_format_and_keeps_going(worker_keyring, caplog,
                                                                                 monkeypatch) -> None:
    jsonl = [json.dumps({"cli": "+447911123456", "dialled": "+442079460321", "start": "2026-11-25T10:00:00Z",
                         "duration": 3}).encode() for _ in range(20)]
    loop, batch, warnings, value = _worker_batch(Router(worker_keyring, CoreConfig(format="asterisk-csv")), jsonl,
                                                 caplog, monkeypatch)
    assert batch.format_hint is not None and batch.format_hint[0] == "jsonl"
    assert len(warnings) == 1 and "use --format jsonl" in warnings[0] and "keeps running" in warnings[0]
    assert NUMBER not in warnings[0]
    assert value("cdrpipe_format_mismatch_batches_total", {"looks_like": "jsonl"}) == 1
    assert value("cdrpipe_format_mismatch") == 1
    assert loop.totals.counts["dlq"] == 20  # committed and counted like any batch


def test_the_worker_warns_on_a_csv_header_in_another_order(worker_keyring, caplog, monkeypatch, tmp_path) -> None:
    """A header message whose names are the mapping's columns reordered: the rows after it are misread; say so."""
    from pipeline.formats import load_mapping

    mapping = tmp_path / "m.toml"
    mapping.write_text('[csv]\nheader = true\ncolumns = ["id", "from", "to", "when", "secs"]\n\n'
                       '[map]\nid = "record_id"\nfrom = "cli"\nto = "dialled"\nwhen = "start"\nsecs = "duration"\n')
    router = Router(worker_keyring, CoreConfig(format="csv", format_options=load_mapping(mapping)))
    rows = [b"id,to,from,when,secs"] + [b"a%d,+44%s,+447700900%03d,1436454408,5" % (i, NUMBER.encode(), i)
                                        for i in range(10)]
    loop, batch, warnings, value = _worker_batch(router, rows, caplog, monkeypatch)
    assert batch.format_hint is not None and batch.format_hint[0] == "header_mismatch"
    assert len(warnings) == 1 and "another order" in warnings[0] and "keeps running" in warnings[0]
    assert NUMBER not in warnings[0]
    assert value("cdrpipe_format_mismatch_batches_total", {"looks_like": "header_mismatch"}) == 1
    assert loop.totals.counts["dlq"] == 1 and loop.totals.counts["analytics"] == 10
