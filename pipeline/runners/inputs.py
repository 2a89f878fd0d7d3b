"""How the file runner (``cdrpipe process``) and ``cdrpipe produce`` cut their input into records and batches.

Three shapes of input:

* **Lines** (every format): one record a line, in chunks of about ``batch_bytes`` that end on
  a line boundary. The file's last line is a record whether or not a newline ends it, and it
  stays in the same batch as the lines before it (a file's last call must not be routed alone:
  an acc BYE there would miss its INVITE). Offsets are line numbers from 1.
* **Documents** (``--format freeswitch-json``): FreeSWITCH's ``mod_json_cdr`` writes one
  pretty-printed JSON document per call file. A file whose first line is not a whole JSON
  value (``{`` alone, say) is one record: source name the file name, offset 0. A file of
  compact one-per-line documents (``jq -c``) is read as lines.
* **Directories** (``--format freeswitch-json``): every regular, non-hidden file directly in
  the directory, in name order, each read as above with its own file name as the source, so a
  record's coordinates and its fallback id stay the same when the directory is processed again.

For ``--format acc`` without a duration column, the rows of a call still open at the end of
a chunk (an answered INVITE whose BYE is not in the chunk yet) move to the next chunk, with
every row of any call they share, so an INVITE and its BYE are routed together across batch
boundaries. A call waits while what is carried is under a batch: an INVITE whose BYE is further
away than about one batch (8 MiB by default) is still rejected as ``acc_unpaired_invite``, and the
calls after it are not held back by it (streams should use acc CDR mode, see docs/formats.md).
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from pipeline._native import count_newlines

#: Formats whose files may each hold one (pretty-printed) document, and which accept a directory.
DOCUMENT_FORMATS = frozenset({"freeswitch-json"})
_PEEK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Batch:
    """Records of one source to route together.

    Line batches carry ``buf`` (the lines joined by ``\\n``, no record holding a newline);
    document batches carry ``records`` (each may hold newlines). ``first`` is the first
    record's offset; offsets of a batch are consecutive. ``done_bytes`` is how much of the
    whole input has been read when this batch is yielded (for progress).
    """

    name: str
    first: int
    n: int
    buf: bytes | None = None
    records: Sequence[bytes] | None = None
    done_bytes: int = 0

    def lines(self) -> list[bytes]:
        """The batch's records as a list."""
        return list(self.records) if self.records is not None else (self.buf or b"").split(b"\n")


#: The first read of an input, doubled at each read up to the batch size: routing starts after
#: ~1 MiB is read instead of two whole batches, and the second routing thread soon after.
FIRST_READ_BYTES = 1 << 20


def iter_chunks(stream: BinaryIO, batch_bytes: int) -> Iterator[bytes]:
    """Chunks of about ``batch_bytes`` that end on a line boundary (newline dropped); no line is split.

    The first reads are smaller (:data:`FIRST_READ_BYTES`, doubling), so a run's first batch is
    routed while the rest is read. One read ahead: the last chunk takes the final line even
    when no newline ends it, so that line is never a batch of its own. A final newline ends the
    last record; it does not start one.
    """
    tail: list[bytes] = []  # the pieces of a line still open (a line longer than a read is several)
    size = min(batch_bytes, FIRST_READ_BYTES)
    chunk = stream.read(size)
    while chunk:
        size = min(batch_bytes, 2 * size)
        ahead = stream.read(size)
        if not ahead:
            # The last line, empty or not, is a record (a final newline ends it, it starts none).
            yield b"".join((*tail, memoryview(chunk)[:-1] if chunk.endswith(b"\n") else chunk))
            return
        # The tail never holds a newline: the chunk's last one ends the records to yield. They
        # are copied once, joined to the tail (slicing a joined buffer would copy them twice).
        cut = chunk.rfind(b"\n")
        if cut < 0:
            tail.append(chunk)  # kept as pieces: a huge line costs one copy, not one per read
        else:
            yield b"".join((*tail, memoryview(chunk)[:cut]))
            tail = [chunk[cut + 1:]]
        chunk = ahead


#: A format's rule for where a line batch may end: given the chunk's lines and how many of them at
#: its start were carried too long to keep waiting for (``stale``), the index from which lines move
#: to the next chunk.
BatchCut = Callable[[list[bytes], int, tuple[tuple[str, object], ...], int], int]


def _acc_cut(lines: list[bytes], stale: int, options: tuple[tuple[str, object], ...], max_bytes: int) -> int:
    """The first line of the calls still open at the chunk's end (``len(lines)`` when none is)."""
    import polars as pl

    from pipeline.formats import acc
    from pipeline.formats.csv_mapped import read_rows, resolve

    layout = resolve(acc.DEFAULT, dict(options).get("mapping"))
    if layout.indices("duration"):  # CDR mode: one row per call, nothing to pair
        return len(lines)
    if layout.quote is None:  # flatstore: no quoting, so a plain split finds the columns (rows are only grouped here)
        text = pl.Series("line", lines, dtype=pl.Binary).cast(pl.String, strict=False)
        cells = text.str.split_exact(layout.delimiter, layout.width).struct.unnest() \
            .rename(lambda c: "c" + c.removeprefix("field_")).with_row_index("row")
    else:
        cells, _rows, _reasons = read_rows(lines, b"", layout, max_bytes)
    if not cells.height:
        return len(lines)
    method = acc._mapped("acc_method", layout).str.to_uppercase()
    code = acc._mapped("acc_sip_code", layout).str.extract(r"^(\d{3})", 1).cast(pl.Int32)
    calls = cells.select(pl.col("row").cast(pl.Int64), acc._mapped("acc_callid", layout).alias("callid"),
                         method.alias("method"), code.alias("code")) \
        .filter(pl.col("callid").is_not_null()).group_by("callid").agg(
            pl.col("row").min().alias("first"), pl.col("row").max().alias("last"),
            ((pl.col("method") == "INVITE") & (pl.col("code") >= 200) & (pl.col("code") < 300)).any()
            .alias("answered"),
            (pl.col("method") == "BYE").any().alias("bye")).sort("first")
    open_calls = calls.filter(pl.col("answered") & ~pl.col("bye") & (pl.col("first") >= stale))
    if not open_calls.height:
        return len(lines)
    # No call may have rows on both sides of the cut: while some call spans it, move the cut to the
    # first row of the earliest such call. Calls by first row, with the running maximum of last rows.
    firsts = calls["first"].to_list()
    reach = calls["last"].cum_max().to_list()
    cut = int(open_calls["first"].min())
    while True:
        before = bisect.bisect_left(firsts, cut)  # calls starting before the cut
        if before == 0 or reach[before - 1] < cut:
            return cut
        cut = firsts[bisect.bisect_left(reach, cut)]  # the earliest call reaching past it


BATCH_CUTS: dict[str, BatchCut] = {"acc": _acc_cut}


def line_batches(stream: BinaryIO, name: str, batch_bytes: int, *, start: int = 0,
                 cut: Callable[[list[bytes], int], int] | None = None) -> Iterator[Batch]:
    """Line batches of ``stream``, offsets from line 1; ``cut`` may move a chunk's last lines to the next one."""
    line = 1
    chunks = iter_chunks(stream, batch_bytes)
    if cut is None:  # each chunk is a batch as it is read (no second read ahead before the first)
        for chunk in chunks:
            n = count_newlines(chunk) + 1
            yield Batch(name, line, n, buf=chunk, done_bytes=start + _tell(stream))
            line += n
        return
    carry: list[bytes] = []
    done = start
    chunk = next(chunks, None)
    while chunk is not None:
        ahead = next(chunks, None)
        done = start + _tell(stream)
        # Calls opened in carried lines stay open while the carry is under a batch; past that they
        # are given up (routed as they are), and past four batches every carried line goes now.
        carried = sum(map(len, carry)) + len(carry)
        stale = len(carry) if carried >= batch_bytes else 0
        hard = len(carry) if carried >= 4 * batch_bytes else 0
        lines = carry + chunk.split(b"\n")
        at = len(lines) if ahead is None else min(len(lines), max(hard, cut(lines, stale)))
        carry = lines[at:]
        if at:
            yield Batch(name, line, at, buf=b"\n".join(lines[:at]), done_bytes=done)
            line += at
        chunk = ahead
    if carry:
        yield Batch(name, line, len(carry), buf=b"\n".join(carry), done_bytes=done)


def _tell(stream: BinaryIO) -> int:
    try:
        return stream.tell()
    except (OSError, ValueError):
        return 0


def is_document(head: bytes) -> bool:
    """Whether a file starting with ``head`` is one pretty-printed JSON document (not one per line)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"{"):
        return False
    first = text.split(b"\n", 1)[0].strip()
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return True
    return False


def input_files(path: str) -> list[Path]:
    """The files a directory input holds: regular, not hidden, directly in it, by name."""
    return sorted((p for p in Path(path).iterdir() if not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def input_size(path: str) -> int | None:
    """Bytes to read (for progress): a file's size, a directory's files' sizes; None for stdin."""
    if path == "-":
        return None
    if os.path.isdir(path):
        return sum(p.stat().st_size for p in input_files(path))
    return os.path.getsize(path)


def iter_batches(path: str, fmt: str = "jsonl", *, batch_bytes: int = 8 << 20,
                 options: tuple[tuple[str, object], ...] = (), max_bytes: int = 64 * 1024,
                 pair_calls: bool = True) -> Iterator[Batch]:
    """Every record of ``path`` (a file, ``-`` for stdin, or a directory for document formats) in batches.

    ``pair_calls``: apply the format's batch cut (acc pairing); a producer, which sends one
    record a message, has no batches to keep calls in.
    """
    rule = BATCH_CUTS.get(fmt) if pair_calls else None
    cut = (lambda lines, carried: rule(lines, carried, options, max_bytes)) if rule else None
    if path == "-":
        import sys
        yield from line_batches(sys.stdin.buffer, "stdin", batch_bytes, cut=cut)
        return
    if os.path.isdir(path):
        if fmt not in DOCUMENT_FORMATS:
            raise IsADirectoryError(path)
        done = 0
        for file in input_files(path):
            size = file.stat().st_size
            yield from _file_batches(file, fmt, batch_bytes, cut, done)
            done += size
        return
    yield from _file_batches(Path(path), fmt, batch_bytes, cut, 0)


def _file_batches(file: Path, fmt: str, batch_bytes: int, cut: Callable[[list[bytes], int], int] | None,
                  start: int) -> Iterator[Batch]:
    with open(file, "rb") as stream:
        if fmt in DOCUMENT_FORMATS:
            head = stream.read(_PEEK_BYTES)
            if is_document(head):
                data = head + stream.read()
                size = len(data)
                if data.endswith(b"\n"):  # the file's final newline ends the document, as it ends a line
                    data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
                yield Batch(file.name, 0, 1, records=[data], done_bytes=start + size)
                return
            stream.seek(0)
        yield from line_batches(stream, file.name, batch_bytes, start=start, cut=cut)
