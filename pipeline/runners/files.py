"""The file runner: the same core over files, for backfills, tests and benchmarks.

``cdrpipe process`` reads NDJSON in large chunks, routes each batch through the core and
appends one buffer per output per batch. Its last stdout line is a JSON summary whose
counts always reconcile; progress goes to stderr.
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import stat
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from pipeline._native import count_newlines
from pipeline.core.router import Router, Source, Suppressions
from pipeline.formats.common import HEADER_MISMATCH, HEADER_MISMATCH_HINT
from pipeline.formats.sniff import format_mismatch
from pipeline.runners import inputs
from pipeline.runners.direct import DirectWriter, enable

DEFAULT_BATCH_BYTES = 8 << 20
#: Batches handed to the writer threads and not yet written (bounds the memory they hold).
WRITES_IN_FLIGHT = 2
PROGRESS_SECONDS = 2.0
OUTPUTS = ("analytics", "retention", "dlq")
#: File modes of the outputs (at most: a stricter umask narrows them). Analytics and the DLQ hold no
#: raw identifier and are read by a group (analytics, operations); retention holds raw records, sealed.
OUTPUT_MODES = {"analytics": 0o640, "retention": 0o600, "dlq": 0o640}
#: A subscriber token as `cdrpipe token` prints it: key id, colon, 64-256 bits of lower-case hex.
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{1,32}:(?:[0-9a-f]{2}){8,32}$")


def iter_chunks(stream: BinaryIO, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[bytes]:
    """Chunks of about ``batch_bytes`` that end on a line boundary (newline dropped); no line is split.

    The last chunk holds the file's last line whether or not a newline ends it (see
    :mod:`pipeline.runners.inputs`, which also reads documents and directories).
    """
    return inputs.iter_chunks(stream, batch_bytes)


def iter_line_batches(stream: BinaryIO, batch_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[list[bytes]]:
    """Lists of lines (without newlines) of about ``batch_bytes`` each."""
    for chunk in iter_chunks(stream, batch_bytes):
        yield chunk.split(b"\n")


#: Count keys of values the policy nulled instead of rejecting the record (a cell id in no known form).
NULLED = "nulled:"
#: What a routed chunk sends back to the writer: three ready buffers (bytes-like), counts, DLQ reasons.
ChunkResult = tuple[Any, Any, Any, dict[str, int], Counter[str]]


def route_chunk(router: Router, name: str, first_line: int, chunk: bytes | None, n: int | None = None,
                records: list[bytes] | None = None) -> ChunkResult:
    """Route one chunk of ``n`` lines (line numbers from ``first_line``), or ``records``, into three output buffers."""
    if records is not None:
        routed = router.route(records, Source(name, 0, range(first_line, first_line + len(records))))
    else:
        assert chunk is not None
        if n is None:
            n = count_newlines(chunk) + 1
        routed = router.route(None, Source(name, 0, range(first_line, first_line + n)), chunk)
    counts = routed.counts
    if routed.nulled:  # values nulled rather than rejected, by field and reason (``nulled:cell_id:...``)
        counts = {**counts, **{NULLED + k: v for k, v in routed.nulled.items()}}
    return routed.analytics.data, routed.retention.data, routed.dlq.data, counts, routed.dlq_reasons


@dataclass
class RunTotals:
    """Counts across batches (the same names the Kafka worker reports)."""

    counts: Counter[str] = field(default_factory=Counter)
    dlq_reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """The last stdout line: the reconciling counts, then values nulled by field and reason, if any."""
        out: dict[str, Any] = {k: self.counts[k] for k in ("in", "analytics", "retention", "dlq", "suppressed")}
        nulled = {k[len(NULLED):]: v for k, v in sorted(self.counts.items()) if k.startswith(NULLED)}
        if nulled:
            out["nulled"] = nulled
        return out


def _fresh_output(path: Path, mode: int = 0o600, *, direct: bool = False) -> BinaryIO | DirectWriter:
    """A new, empty file at ``path`` with at most ``mode``, replacing any earlier run's output.

    With ``direct``, a regular file is written with direct I/O where the file system allows it
    (:mod:`pipeline.runners.direct`); a FIFO or a file system that refuses gets buffered writes.

    A regular file is unlinked and created, not truncated: ext4 treats truncate-and-rewrite
    as a file being replaced and forces its whole contents to disk when it is closed
    (``auto_da_alloc``), about a third of a second per 700 MB of output on a re-run. A
    symlink or a FIFO an operator put there is written through, as before; a regular file
    a symlink leads to loses any permission bit beyond ``mode`` before anything is written.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & ~mode:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
    except OSError:
        os.close(fd)
        raise
    if direct and stat.S_ISREG(st.st_mode) and enable(fd):
        return DirectWriter(fd)
    return os.fdopen(fd, "wb")


def _detach(path: Path) -> int | None:
    """Unlink the regular file at ``path`` but keep its blocks until the returned descriptor is closed.

    Why: ext4 frees a large file's blocks inside ``unlink``, 0.17 s for the 870 MB a 1M-record
    run leaves, and a re-run would wait for that before its first batch. With a descriptor
    still open, ``unlink`` only removes the name; the blocks are freed at the last close, which
    a background thread does while the run goes on. If the process dies first, the kernel
    closes the descriptor and frees them: nothing is left behind. None: nothing to detach
    (no file, not a regular file, or no ``O_PATH`` here), and :func:`_fresh_output` unlinks as before.
    """
    o_path = getattr(os, "O_PATH", 0)
    if not o_path:
        return None
    try:
        fd = os.open(path, o_path | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.unlink(path)
    except OSError:
        os.close(fd)
        return None
    return fd


class SuppressionsError(Exception):
    """A suppressions file that cannot be used; ``usage``: the operator gave raw values, not tokens (exit 2).

    The message names the file and the line, never the line's content (it may be a number).
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def load_suppressions(path: str | None) -> Suppressions:
    """Tokens from a file: one per line, or JSON lines with a ``token`` field (``#`` comments allowed).

    Raises :class:`SuppressionsError` for a missing or unreadable file, a line that is not JSON or has
    no ``token``, and (``usage``) a value that is not a token: a raw number would match nothing, so
    the subscriber would silently stay in analytics.
    """
    if not path:
        return Suppressions()
    export = "export the active suppressions with `cdrpipe privacy suppressions --output FILE`"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuppressionsError(f"--suppressions {path}: no such file; {export}, or fix the path") from None
    except IsADirectoryError:
        raise SuppressionsError(f"--suppressions {path} is a directory: give the file of tokens ({export})") \
            from None
    except OSError as exc:
        raise SuppressionsError(f"cannot read --suppressions {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SuppressionsError(f"--suppressions {path} is not UTF-8 text: give the file of tokens ({export})") \
            from None
    tokens = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token: object = line
        if line.startswith("{"):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise SuppressionsError(f"--suppressions {path} line {n}: not valid JSON (expected "
                                        '{"token": "<kid>:<hex>"} or one token a line)') from None
            if not isinstance(doc, dict) or "token" not in doc:
                raise SuppressionsError(f"--suppressions {path} line {n}: a JSON line needs a \"token\" field "
                                        f"(the subscriber's token from `cdrpipe token`); {export}") from None
            if not doc.get("active", True):
                continue
            token = doc["token"]
        if not isinstance(token, str) or not TOKEN_SHAPE.match(token):
            raise SuppressionsError(
                f"--suppressions {path} line {n}: not a subscriber token (<kid>:<hex>); a suppressions file holds "
                "tokens, never numbers: get each subscriber's token with `cdrpipe token --keyring KEYRING "
                "--kind msisdn NUMBER` (line not shown)", usage=True)
        tokens.append(token)
    return Suppressions(tokens)


def process_file(router: Router, input_path: str, out_dir: Path, *, batch_bytes: int = DEFAULT_BATCH_BYTES,
                 progress: bool = True, workers: int = 1, direct_io: bool = True,
                 check_first: Callable[[Mapping[str, int], Mapping[str, int]], None] | None = None) -> RunTotals:
    """Route every record of ``input_path`` (``-`` for stdin) into the three files in ``out_dir``.

    Records are lines, or for ``--format freeswitch-json`` whole document files, and a directory
    of them (:mod:`pipeline.runners.inputs`). With ``workers > 1`` chunks are routed on that many
    threads (the native core releases the GIL for the whole batch, so each thread has a core) and
    written back in input order. Threads beat worker processes here: measured on 1M records,
    7.8-8.9 CPU-s and 9.5-11.7 s against 9.0-9.3 CPU-s and 11.4-15.7 s, since no process imports
    the package again and no output travels through part files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    totals = RunTotals()
    cfg = router.config
    size = inputs.input_size(input_path)
    if size is not None and size <= batch_bytes and not os.path.isdir(input_path):
        workers = 1  # one chunk: a second thread would only wait
    started = last = time.monotonic()
    batches = inputs.iter_batches(input_path, cfg.format, batch_bytes=batch_bytes, options=cfg.format_options,
                                  max_bytes=cfg.max_record_bytes)
    old = [fd for k in OUTPUTS if (fd := _detach(out_dir / f"{k}.jsonl")) is not None]
    freeing = threading.Thread(target=lambda: [os.close(fd) for fd in old], name="free-old-outputs", daemon=True)
    freeing.start()
    outs = [_fresh_output(out_dir / f"{k}.jsonl", OUTPUT_MODES[k], direct=direct_io) for k in OUTPUTS]
    routers: queue.SimpleQueue[Router] = queue.SimpleQueue()
    for r in [router, *(router.replica() for _ in range(workers - 1))]:
        routers.put(r)
    threads = ThreadPoolExecutor(max(1, workers), thread_name_prefix="route")
    queued: deque[tuple[Future[ChunkResult], int]] = deque()
    # One writer thread per output file: a direct write waits for the disk, and the three files'
    # writes then run side by side instead of holding up the reading of the next chunk.
    writers = [ThreadPoolExecutor(1, thread_name_prefix=f"write-{k}") for k in OUTPUTS]
    writing: deque[list[Future[Any]]] = deque()

    def work(batch: inputs.Batch) -> ChunkResult:
        r = routers.get()  # a router routes one batch at a time: each thread takes a free one
        try:
            records = list(batch.records) if batch.records is not None else None
            return route_chunk(r, batch.name, batch.first, batch.buf, batch.n, records)
        finally:
            routers.put(r)

    def wait_written() -> None:
        for done in writing.popleft():
            done.result()  # a failed write (a full disk) stops the run here

    def write_oldest() -> None:
        nonlocal last
        future, done_bytes = queued.popleft()
        *buffers, counts, reasons = future.result()
        if check_first is not None and not totals.counts["in"]:
            check_first(counts, reasons)  # may stop the run (wrong --format) before anything is written
        writing.append([w.submit(fh.write, buf) for w, fh, buf in zip(writers, outs, buffers)])
        if len(writing) > WRITES_IN_FLIGHT:
            wait_written()
        totals.counts.update(counts)
        totals.dlq_reasons.update(reasons)
        now = time.monotonic()
        if progress and now - last >= PROGRESS_SECONDS:
            last = now
            done = f" ({min(done_bytes, size) * 100 // size}%)" if size else ""
            rate = totals.counts["in"] / (now - started)
            print(f"processed {totals.counts['in']:,} records{done}, {rate:,.0f} records/s, "
                  f"dlq {totals.counts['dlq']:,}", file=sys.stderr, flush=True)

    try:
        for batch in batches:
            queued.append((threads.submit(work, batch), batch.done_bytes))
            if len(queued) >= max(1, workers) * 2:  # bounded: memory stays flat
                write_oldest()
        while queued:
            write_oldest()
        while writing:
            wait_written()
    finally:
        threads.shutdown(cancel_futures=True)
        for w in writers:
            w.shutdown(wait=True, cancel_futures=True)  # no write is in flight when the files close
        for fh in outs:
            fh.close()
        batches.close()
        freeing.join()
    return totals


class FormatMismatch(Exception):
    """No record of the first batch could be read as ``--format``; the message says which format they look like."""


def input_sample(path: str, size: int = 64 << 10) -> list[bytes]:
    """The first lines of ``path`` (stdin: what is buffered, not consumed), to tell a wrong ``--format``."""
    if path == "-":
        stream = sys.stdin.buffer
        data = stream.peek(size)[:size] if hasattr(stream, "peek") else b""
    elif os.path.isfile(path):
        with open(path, "rb") as fh:
            data = fh.read(size)
    else:
        return []  # a directory of documents: the reasons alone decide
    lines = data.split(b"\n")
    return lines[:-1] if len(lines) > 1 else lines  # the last one may be cut


def first_batch_check(fmt: str, sample: list[bytes]) -> Callable[[Mapping[str, int], Mapping[str, int]], None]:
    """A ``process_file`` hook that stops the run when the first batch was all rejected for its format.

    It also stops on a CSV header in another order than the mapping's ``columns``
    (``header_mismatch``): the rows after it would be read in the wrong columns, and some of them
    (a swapped cli and dialled) would still pass as valid records.
    """
    def check(counts: Mapping[str, int], reasons: Mapping[str, int]) -> None:
        if reasons.get(HEADER_MISMATCH):
            raise FormatMismatch(f"{HEADER_MISMATCH_HINT}; no output was written")
        if counts.get("in", 0) and counts.get("dlq", 0) == counts["in"]:
            hint = format_mismatch(fmt, sample, reasons)
            if hint:
                raise FormatMismatch(f"{hint}; no output was written")
    return check


