"""Real switch CDRs through `process`, `vault ingest` and `vault query`: every format is findable.

For Asterisk cdr_csv, FreeSWITCH json_cdr, Kamailio/OpenSIPS acc and mapped CSV files of the
shared corpus, a query for a number returns exactly the rows in which that number is a party,
whichever of three spellings the officer types. The expected rows are found here with Python's
csv/json modules (an independent reading, not the adapters'), and compared as raw bytes: the
vault must deliver each row exactly as the switch wrote it.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_OK, main

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO.parent / "shared" / "corpus"
MAPPINGS = REPO / "tests" / "data" / "mappings"
AST, CG = "fafeitsch-cdrcsv-report-generator", "cgrates"


@pytest.fixture(scope="module", autouse=True)
def corpus_present(corpus):
    """Skipped in a plain clone, required in CI (see conftest)."""


@pytest.fixture(scope="module", autouse=True)
def long_retention():
    """The corpus holds calls from 2013-2018: a 20-year retention keeps them (retention: test_vault_retention.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDRPIPE_VAULT_RETENTION", "20y")
        yield


@dataclass(frozen=True)
class Case:
    """A corpus file, how `process` reads it, where its parties are, and a target in three spellings."""

    path: str
    fmt: str
    region: str
    spellings: tuple[str, str, str]
    mapping: str | None = None
    delimiter: str = ","
    quoting: bool = True
    parties: tuple[int, ...] = ()     # csv columns holding a party's number
    fallback: tuple[int, int] | None = None  # (column, caller-ID column read when the column is blank)
    vault_format: bool = True         # give `vault ingest` the same --format/--mapping as `process`


def _digits(text: str) -> str:
    """The number in a cell: inside <...> if present, user part of a URI, digits only."""
    inner = re.findall(r"<([^>]*)>", text)
    user = re.sub(r"^(?:sips?|tel):", "", inner[0] if inner else text).split("@")[0]
    return re.sub(r"\D", "", user)


CASES = [
    # Asterisk: src, dst; the number inside clid when src is blank. Sniffed (no --format given to the vault).
    Case(f"{AST}/mockdata/cdr.csv", "asterisk-csv", "US", ("253-433-5862", "+1 (253) 433 5862", "1-253-433-5862"),
         parties=(1, 2), fallback=(1, 4), vault_format=False),
    Case(f"{AST}/mockdata/cdr.csv", "asterisk-csv", "US", ("870-526-4260", "+18705264260", "(870) 526-4260"),
         parties=(1, 2), fallback=(1, 4)),
    # acc flatstore with CGRateS' extra columns: INVITE, ACK and BYE rows all name the parties.
    Case(f"{CG}/ers_flatstore__ackSuccessfull.acc", "acc", "DE", ("1001", "tel:1001", " 1001 "),
         "cgrates-flatstore.toml", "|", False, parties=(8, 9)),
    Case(f"{CG}/ers_flatstore__fullSuccessfull.acc", "acc", "DE", ("1002", "tel:1002", "1002 "),
         "cgrates-flatstore.toml", "|", False, parties=(8, 9)),
    # Mapped CSV (CGRateS export): national, international and 00-prefixed spellings.
    Case(f"{CG}/ers_filecsv__fileContent1.csv", "csv", "DE", ("+49 8651 7174963", "0049 8651 7174963", "08651 7174963"),
         "cgrates-export.toml", parties=(8, 9, 10)),
    Case("cdr-stats/addons/samples/import_cdr_100.txt", "csv", "US", ("810-500-42", "81050042", "81 05 00 42"),
         "cdrstats-import100.toml", parties=(0, 2)),
]


def _lines(path: Path) -> list[bytes]:
    """The file's records exactly as the file runner cuts them."""
    data = path.read_bytes()
    return (data[:-1] if data.endswith(b"\n") else data).split(b"\n")


def _expected(case: Case, lines: list[bytes]) -> Counter[bytes]:
    """Rows where the target's digits are a party (csv module, not the adapter)."""
    want = _digits(case.spellings[0])
    out: Counter[bytes] = Counter()
    for line in lines:
        text = line.decode("utf-8", "replace")
        cells = next(csv.reader(io.StringIO(text), delimiter=case.delimiter, skipinitialspace=True,
                                quoting=csv.QUOTE_MINIMAL if case.quoting else csv.QUOTE_NONE), [])
        cells = [c.strip() for c in cells]
        found = {_digits(cells[i]) for i in case.parties if i < len(cells)}
        if case.fallback and case.fallback[0] < len(cells) and not cells[case.fallback[0]]:
            found.add(_digits(cells[case.fallback[1]]))
        if want in found:
            out[line] += 1
    return out


def _delivered(jsonl: bytes) -> Counter[bytes]:
    rows: Counter[bytes] = Counter()
    for line in jsonl.splitlines():
        doc = orjson.loads(line)
        rows[doc["raw"].encode() if doc["raw_encoding"] == "utf-8" else base64.b64decode(doc["raw"])] += 1
    return rows


def _vault_for(case: Case, root: Path) -> tuple[list[str], Path]:
    """Keys, `process`, `vault ingest` and a warrant for the case's target; returns the query's base argv."""
    assert main(["keys", "generate", "--dir", str(root / "keys")]) == 0
    fmt = ["--format", case.fmt] + (["--mapping", str(MAPPINGS / case.mapping)] if case.mapping else [])
    keyring, db = str(root / "keys" / "vault-keyring.json"), root / "vault.db"
    assert main(["process", "--keyring", str(root / "keys" / "worker-keyring.json"), "--input",
                 str(CORPUS / case.path), "--out-dir", str(root / "out"), "--region", case.region, "--quiet",
                 *fmt]) == EXIT_OK
    assert main(["vault", "ingest", "--keyring", keyring, "--db", str(db), "--region", case.region, "--quiet",
                 "--input", str(root / "out" / "retention.jsonl"), *(fmt if case.vault_format else [])]) == EXIT_OK
    assert main(["vault", "warrant", "add", "--keyring", keyring, "--db", str(db), "--id", "W-1",
                 "--authority", "test", "--officer", "PC-1", "--targets", case.spellings[0],
                 "--from", "2007-01-01", "--to", "2026-12-31", "--expires", "2099-01-01",
                 "--region", case.region]) == EXIT_OK
    return ["vault", "query", "--keyring", keyring, "--db", str(db), "--from", "2007-01-01", "--to", "2026-12-31",
            "--warrant", "W-1", "--officer", "PC-1", "--region", case.region], db


@pytest.mark.parametrize("case", CASES, ids=[f"{c.fmt}:{Path(c.path).name}:{c.spellings[0]}" for c in CASES])
def test_every_format_is_found_by_any_spelling_exactly_as_received(case, tmp_path, capsys):
    argv, db = _vault_for(case, tmp_path)
    expected = _expected(case, _lines(CORPUS / case.path))
    assert expected, "the case must name a target that occurs in the file"
    for spelling in case.spellings:
        capsys.readouterr()
        assert main([*argv, "--target", spelling]) == EXIT_OK
        out = capsys.readouterr()
        assert _delivered(out.out.encode()) == expected, spelling
        assert case.spellings[0] not in out.err and _digits(case.spellings[0]) not in out.err


def test_freeswitch_json_cdr_is_found_by_caller_and_callee(tmp_path, capsys):
    """One json_cdr document (compacted to one line, as a file holds it), found as caller and as callee."""
    doc = json.loads((CORPUS / CG / "engine_fscdr__body.json").read_bytes())
    line = orjson.dumps(doc)
    src = tmp_path / "fs.jsonl"
    src.write_bytes(line + b"\n")
    case = Case(str(src), "freeswitch-json", "US", ("1001", "tel:1001", " 1001"))
    argv, _db = _vault_for(case, tmp_path)
    for target in ("1001", "tel:1001", " 1001 "):
        capsys.readouterr()
        assert main([*argv, "--target", target]) == EXIT_OK
        assert _delivered(capsys.readouterr().out.encode()) == Counter([line])


def test_etsi_delivery_of_switch_records_names_their_parties_and_times(tmp_path, capsys):
    """An Asterisk row in ETSI XML: the parties and call time its own format gives, the raw row alongside."""
    import xml.etree.ElementTree as ET

    from pipeline.vault.export import ETSI_NAMESPACE
    case = CASES[1]
    argv, _db = _vault_for(case, tmp_path)
    capsys.readouterr()
    assert main([*argv, "--target", case.spellings[1], "--format", "etsi-xml", "--authorised-org", "NCA"]) == EXIT_OK
    root = ET.fromstring(capsys.readouterr().out.encode())
    q = lambda tag: f"{{{ETSI_NAMESPACE}}}{tag}"  # noqa: E731
    records = list(root.iter(q("RetainedDataRecord")))
    assert len(records) == 1
    numbers = {p.findtext(q("partyRole")): p.findtext(q("partyNumber")) for p in records[0].iter(q("partyInformation"))}
    assert numbers["terminating-Party"] == "+18705264260" and numbers["originating-Party"].startswith("+1")
    assert records[0].find(f".//{q('startTime')}").get("source") == "start"
    assert records[0].find(f".//{q('endTime')}") is not None


def test_recognition_is_by_fingerprint_only():
    """What the vault reads without --format: unmistakable shapes only; anything else stays unread."""
    from pipeline.vault.readers import ACC, ASTERISK, FREESWITCH, JSONL, sniff
    asterisk = _lines(CORPUS / AST / "mockdata" / "cdr.csv")[0]
    assert sniff(asterisk) is ASTERISK
    assert sniff(b'{"variables":{"uuid":"x"},"callflow":[]}') is FREESWITCH
    assert sniff(b'{"cli":"07700 900123","variables":"x","start":"2026-01-01T00:00:00Z"}') is JSONL
    assert sniff(b"INVITE|a|b|call@host|200|OK|1436454408|1001|x|y|1002|z|q") is ACC
    cgrates_export = _lines(CORPUS / CG / "ers_filecsv__fileContent1.csv")[0]  # 18 columns, not Asterisk's
    assert sniff(cgrates_export) is None
    assert sniff(b"cli=07700900123 dialled=07700900555 not json at all") is None
