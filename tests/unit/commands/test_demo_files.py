"""`cdrpipe demo --files` keeps the outputs it points to, says where, and can run again."""
from __future__ import annotations

import re

from pipeline.cli import EXIT_OK, EXIT_USAGE, main


def _counts(err: str) -> dict[str, int]:
    return {k: int(v.replace(",", "")) for k, v in re.findall(r"^(in|analytics|retention|dlq)\s+([\d,]+)$", err, re.M)}


def test_demo_files_keeps_its_outputs_in_the_current_directory_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDRPIPE_DEMO_DIR", raising=False)
    assert main(["demo", "--files", "--records", "1500", "--seed", "3"]) == EXIT_OK
    err = capsys.readouterr().err
    work = tmp_path / "cdrpipe-demo"
    out = work / "out"
    counts = _counts(err)
    assert counts["in"] == 1500
    for name in ("analytics", "dlq"):
        assert len((out / f"{name}.jsonl").read_bytes().splitlines()) == counts[name]
    assert (out / "retention.jsonl").stat().st_size > 0 and (work / "worker-keyring.json").is_file()
    assert str(out.resolve()) in err and f"rm -r {work.resolve()}" in err
    # Again: the demo's own directory is reused, its files replaced.
    before = (work / "worker-keyring.json").read_bytes()
    assert main(["demo", "--files", "--records", "500"]) == EXIT_OK
    assert _counts(capsys.readouterr().err)["in"] == 500
    assert (work / "worker-keyring.json").read_bytes() != before
    assert sum(1 for _ in (out / "analytics.jsonl").open("rb")) <= 500


def test_demo_never_reuses_a_directory_it_did_not_make_that_holds_keys(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "worker-keyring.json").write_text("{}")
    assert main(["demo", "--files", "--records", "10", "--dir", str(mine)]) == EXIT_USAGE
    assert "already holds keyrings" in capsys.readouterr().err
    assert (mine / "worker-keyring.json").read_text() == "{}"
