"""Direct-I/O output files: exactly the bytes given, whatever the sizes of the writes."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.runners.direct import ALIGN, DirectWriter, enable
from pipeline.runners.files import _fresh_output


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3 * ALIGN + 7), max_size=12), stage_pages=st.integers(1, 3))
def test_the_file_holds_exactly_the_bytes_written(tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes],
                                                   stage_pages: int) -> None:
    path = tmp_path_factory.mktemp("direct") / "out.jsonl"
    fd = _open(path)
    enable(fd)  # where the file system refuses, the same writer writes buffered
    with DirectWriter(fd, stage_bytes=stage_pages * ALIGN) as out:
        for chunk in chunks:
            assert out.write(chunk) == len(chunk)
    assert path.read_bytes() == b"".join(chunks)


def test_views_and_arrays_are_written_as_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = _open(path)
    enable(fd)
    data = bytes(range(256)) * 40
    with DirectWriter(fd, stage_bytes=ALIGN) as out:
        out.write(memoryview(data)[3:])
        out.write(bytearray(b"tail"))
    assert path.read_bytes() == data[3:] + b"tail"


def test_a_staging_buffer_that_is_not_whole_pages_is_refused(tmp_path: Path) -> None:
    fd = _open(tmp_path / "out")
    try:
        with pytest.raises(ValueError, match="multiple"):
            DirectWriter(fd, stage_bytes=ALIGN + 1)
    finally:
        os.close(fd)


def test_regular_outputs_go_direct_and_keep_their_mode(tmp_path: Path) -> None:
    out = _fresh_output(tmp_path / "analytics.jsonl", 0o640, direct=True)
    try:
        if isinstance(out, DirectWriter):  # the file system took O_DIRECT (ext4, xfs, tmpfs on Linux >= 6.6)
            assert "direct=True" in repr(out)
        out.write(b'{"a":1}\n' * 1000)
    finally:
        out.close()
    assert (tmp_path / "analytics.jsonl").read_bytes() == b'{"a":1}\n' * 1000
    assert stat.S_IMODE((tmp_path / "analytics.jsonl").stat().st_mode) & ~0o640 == 0


def test_a_fifo_output_is_written_buffered(tmp_path: Path) -> None:
    fifo = tmp_path / "dlq.jsonl"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    out = _fresh_output(fifo, 0o640, direct=True)
    assert not isinstance(out, DirectWriter)
    out.write(b"line\n")
    out.close()
    reader.join(timeout=10)
    assert got == [b"line\n"]
