"""`cdrpipe process`: three files, a reconciling summary, exit codes, no leaks."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import os
from io import BytesIO
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.runners import files, inputs
from pipeline.runners.inputs import iter_chunks
from pipeline.synthetic import write_sample


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert main(["keys", "generate", "--dir", str(d)]) == 0
    return d


def _process(keydir, tmp_path, inp, capsys, *extra):
    code = main(["process", "--keyring", str(keydir / "worker-keyring.json"), "--input", str(inp),
                 "--out-dir", str(tmp_path / "out"), "--quiet", *extra])
    out = capsys.readouterr()
    return code, out


def test_process_generated_sample(keydir, tmp_path, capsys):
    sample = tmp_path / "sample.jsonl"
    write_sample(sample, 5000, seed=11)
    code, out = _process(keydir, tmp_path, sample, capsys, "--batch-bytes", "65536")
    assert code == 0
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["in"] == 5000 == summary["retention"]
    assert summary["in"] == summary["analytics"] + summary["dlq"] + summary["suppressed"]
    files = {k: (tmp_path / "out" / f"{k}.jsonl").read_bytes().splitlines() for k in ("analytics", "retention", "dlq")}
    assert len(files["analytics"]) == summary["analytics"] and len(files["dlq"]) == summary["dlq"]
    assert sum(len(orjson.loads(s)["record_refs"]) for s in files["retention"]) == 5000
    assert summary["dlq"] > 0  # the generator writes ~0.5% malformed lines


def test_bad_bytes_file_never_crashes(keydir, tmp_path, capsys):
    inp = tmp_path / "bad.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf{}\n\xff\xfe\n[1]\n{\"cli\":NaN}\n\n{\"cli\":\"07700 900123\"")  # no final newline
    code, out = _process(keydir, tmp_path, inp, capsys)
    assert code == 0
    assert json.loads(out.out.strip().splitlines()[-1]) == {
        "in": 6, "analytics": 0, "retention": 6, "dlq": 6, "suppressed": 0}
    assert "7700" not in out.err


def test_suppressions_file(keydir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"cli":"07700 900123","dialled":"07700 900999","start":"2026-11-25T10:00:00Z","duration":3}\n'
                   '{"cli":"07700 900555","dialled":"07700 900999","start":"2026-11-25T10:00:00Z","duration":3}\n')
    main(["token", "--keyring", str(keydir / "worker-keyring.json"), "+447700900123"])
    token = capsys.readouterr().out.strip()
    supp = tmp_path / "supp.txt"
    supp.write_text(f"# objections\n{token}\n")
    code, out = _process(keydir, tmp_path, inp, capsys, "--suppressions", str(supp))
    assert code == 0
    assert json.loads(out.out.strip().splitlines()[-1])["suppressed"] == 1


def test_usage_and_fatal_exit_codes(keydir, tmp_path, capsys):
    code, out = _process(keydir, tmp_path, tmp_path / "missing.jsonl", capsys)
    assert code == 2 and "does not exist" in out.err
    inp = tmp_path / "x.jsonl"
    inp.write_text("{}\n")
    code = main(["process", "--keyring", str(tmp_path / "nokeys.json"), "--input", str(inp),
                 "--out-dir", str(tmp_path / "o")])
    assert code == 1 and "keys generate" in capsys.readouterr().err
    assert main(["process", "--keyring", str(keydir / "worker-keyring.json"), "--input", str(inp),
                 "--out-dir", str(tmp_path / "o"), "--region", "XX"]) == 2


@pytest.mark.parametrize("n", [3000, 250])  # ~19 chunks of 40 kB, and 2
def test_routing_threads_give_the_same_output_in_order(keydir, tmp_path, capsys, n):
    sample = tmp_path / "sample.jsonl"
    write_sample(sample, n, seed=5)
    outs = {}
    for workers in ("1", "2"):
        out_dir = tmp_path / f"w{workers}"
        assert main(["process", "--keyring", str(keydir / "worker-keyring.json"), "--input", str(sample),
                     "--out-dir", str(out_dir), "--quiet", "--workers", workers, "--batch-bytes", "40000"]) == 0
        retained = [ref for line in (out_dir / "retention.jsonl").read_bytes().splitlines()
                    for ref in orjson.loads(line)["record_refs"]]
        dlq = [orjson.loads(line)["record_ref"] for line in (out_dir / "dlq.jsonl").read_bytes().splitlines()]
        outs[workers] = ((out_dir / "analytics.jsonl").read_bytes(), retained, dlq,
                         capsys.readouterr().out.splitlines()[-1])
        assert sorted(p.name for p in out_dir.iterdir()) == ["analytics.jsonl", "dlq.jsonl", "retention.jsonl"]
    assert outs["1"] == outs["2"]
    assert len(outs["2"][1]) == n and (outs["2"][2] or n < 1000)


def test_rerun_replaces_outputs_with_new_files(keydir, tmp_path, capsys):
    # A re-run into the same directory leaves only the new run's records, in new files
    # (unlinked and created, never truncated in place: see files._fresh_output).
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    write_sample(big, 300, seed=3)
    write_sample(small, 20, seed=4)
    assert _process(keydir, tmp_path, big, capsys)[0] == 0
    held = open(tmp_path / "out" / "analytics.jsonl", "rb")  # a reader of the old run keeps its data
    code, out = _process(keydir, tmp_path, small, capsys)
    assert code == 0
    summary = json.loads(out.out.strip().splitlines()[-1])
    analytics = (tmp_path / "out" / "analytics.jsonl").read_bytes().splitlines()
    assert len(analytics) == summary["analytics"] <= 20
    assert (tmp_path / "out" / "analytics.jsonl").stat().st_ino != os.fstat(held.fileno()).st_ino
    assert len(held.read().splitlines()) > 20  # truncating in place would have emptied it
    held.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["analytics.jsonl", "dlq.jsonl", "retention.jsonl"]


def test_detach_unlinks_a_regular_file_and_leaves_anything_else(tmp_path):
    # The old run's file loses its name at once; its blocks live until the descriptor is closed.
    old = tmp_path / "analytics.jsonl"
    old.write_bytes(b"x" * 100_000)
    fd = files._detach(old)
    assert fd is not None and not old.exists()
    assert os.fstat(fd).st_nlink == 0 and os.fstat(fd).st_size == 100_000
    os.close(fd)
    assert files._detach(old) is None  # nothing there
    link = tmp_path / "dlq.jsonl"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"keep")
    assert files._detach(link) is None and link.is_symlink()  # written through, as an operator meant
    os.mkfifo(tmp_path / "fifo")
    assert files._detach(tmp_path / "fifo") is None and (tmp_path / "fifo").exists()


def test_outputs_write_through_a_symlink_an_operator_placed(keydir, tmp_path, capsys):
    sample = tmp_path / "s.jsonl"
    write_sample(sample, 50, seed=6)
    (tmp_path / "out").mkdir()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes(b"old\n")
    (tmp_path / "out" / "dlq.jsonl").symlink_to(elsewhere)
    code, out = _process(keydir, tmp_path, sample, capsys)
    assert code == 0
    assert (tmp_path / "out" / "dlq.jsonl").is_symlink()
    dlq = json.loads(out.out.strip().splitlines()[-1])["dlq"]
    assert b"old" not in elsewhere.read_bytes() and len(elsewhere.read_bytes().splitlines()) == dlq


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80).map(lambda b: bytes(b"ab\n"[x % 3] for x in b)), batch_bytes=st.integers(1, 16),
       first_read=st.integers(1, 16))
def test_chunks_hold_every_line_once_and_never_cut_one(data: bytes, batch_bytes: int, first_read: int) -> None:
    with mock.patch.object(inputs, "FIRST_READ_BYTES", first_read):  # the growing first reads too
        chunks = list(iter_chunks(BytesIO(data), batch_bytes))
    whole = data[:-1] if data.endswith(b"\n") else data
    assert b"\n".join(chunks) == whole  # nothing lost, nothing repeated, the order kept
    assert all(type(c) is bytes for c in chunks)  # the native parser takes bytes
    # A chunk ends where the input had a newline (or at its end): no line is split across two.
    at = 0
    for c in chunks[:-1]:
        at += len(c)
        assert data[at:at + 1] == b"\n"
        at += 1


class _CountingReads(BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(size if size is not None else -1)
        return super().read(size)


def test_the_first_batch_is_handed_over_after_a_small_read_and_reads_grow_to_the_batch_size() -> None:
    # Routing starts once ~FIRST_READ_BYTES are read (not after three whole batches were read and
    # joined, 30 ms of a 1M-record run before its first route); later reads are whole batches.
    line = b'{"record_id":"r-1"}\n'
    batch_bytes = 8 * inputs.FIRST_READ_BYTES
    stream = _CountingReads(line * (3 * batch_bytes // len(line)))
    batches = inputs.line_batches(stream, "s.jsonl", batch_bytes)
    first = next(batches)
    assert stream.reads == [inputs.FIRST_READ_BYTES, 2 * inputs.FIRST_READ_BYTES]  # the chunk and one read ahead
    assert first.n == inputs.FIRST_READ_BYTES // len(line)
    rest = list(batches)
    assert max(stream.reads) == batch_bytes and stream.reads[-3:-1] == [batch_bytes, batch_bytes]
    assert first.n + sum(b.n for b in rest) == 3 * batch_bytes // len(line)
    assert [b.first for b in rest] == list(itertools.accumulate([first.n + 1] + [b.n for b in rest[:-1]]))


def test_jsonl_run_never_imports_polars(keydir, tmp_path):
    # The core routes JSONL alone; Polars (a sixth of a 1M-record run's time to import) is loaded
    # only when a value needs the column code (pipeline.lazy). Generated traffic needs none.
    sample = tmp_path / "s.jsonl"
    write_sample(sample, 3000, seed=11)
    script = ("import sys; from pipeline.cli import main; "
              "rc = main(['process', '--keyring', sys.argv[1], '--input', sys.argv[2], '--out-dir', sys.argv[3], "
              "'--quiet']); print('polars' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script, str(keydir / "worker-keyring.json"), str(sample),
                           str(tmp_path / "out")], capture_output=True, text=True, check=True)
    summary, loaded = done.stdout.strip().splitlines()[-2:]
    assert json.loads(summary)["in"] == 3000
    assert loaded == "False"


def test_a_failed_write_stops_the_run_with_its_error(keydir, tmp_path, monkeypatch, capsys):
    # Writes run on writer threads; a full disk there must still end the run with a clear error.
    import errno

    class Full:
        def __init__(self, path, *a, **k):
            self.closed = False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "analytics.jsonl"))

        def close(self):
            self.closed = True

    monkeypatch.setattr(files, "_fresh_output", Full)
    sample = tmp_path / "s.jsonl"
    write_sample(sample, 2000, seed=12)
    code = main(["process", "--keyring", str(keydir / "worker-keyring.json"), "--input", str(sample),
                 "--out-dir", str(tmp_path / "out"), "--quiet", "--batch-bytes", "65536"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "--out-dir" in err
