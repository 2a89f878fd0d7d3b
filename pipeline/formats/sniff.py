"""What a batch looks like, when every record of it was rejected: the wrong ``--format``, said in one line.

``cdrpipe process --format asterisk-csv`` on a JSONL file used to exit 0 with every record in
the DLQ. The runners now ask :func:`format_mismatch` about a batch in which *no* record was
accepted: it looks at a sample of the raw records (shape only: braces, delimiters, column
counts, SIP methods, a few well-known FreeSWITCH keys) and returns a hint such as "the lines
look like JSON objects: use --format jsonl", or None when the records are of the given format
and merely bad (those belong in the DLQ). The file runner stops with exit 1 on a hint; the
Kafka worker logs it and counts it (``cdrpipe_format_mismatch_batches``) and keeps running.

A hint never repeats a value from the records: it names formats and reason codes only.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from pipeline.core.parse import PARSE_REASON_DETAIL
from pipeline.formats.common import (ACC_IN_CALL_REQUEST, ACC_UNPAIRED_INVITE, COMMENT_LINE, EMPTY,
                                     FORMAT_REASON_DETAIL, HEADER_LINE)

#: Records looked at (the first ones of the batch): enough for a vote, cheap on a rejected batch.
SAMPLE_RECORDS = 200
#: Reasons that say "this record is not of the format" (not "this record is a bad one of it").
#: Left out: a blank line, and the rows a right format rejects on purpose (header, comment, acc
#: requests inside a call), so a file holding only a header is not taken for a wrong format.
FORMAT_REASONS = frozenset(PARSE_REASON_DETAIL) | frozenset(FORMAT_REASON_DETAIL)
NOT_FORMAT_REASONS = frozenset({EMPTY, COMMENT_LINE, HEADER_LINE, ACC_IN_CALL_REQUEST, ACC_UNPAIRED_INVITE})

_COMPRESSED = ((b"\x1f\x8b", "gzip", "zcat"), (b"BZh", "bzip2", "bzcat"), (b"\xfd7zXZ\x00", "xz", "xzcat"),
               (b"\x28\xb5\x2f\xfd", "zstd", "zstdcat"), (b"PK\x03\x04", "zip", "unzip -p"))
_SIP_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "INFO", "PRACK",
                          "UPDATE", "REFER", "SUBSCRIBE", "NOTIFY", "PUBLISH"})
#: Top-level keys of a FreeSWITCH mod_json_cdr document (a raw v1 record has none of them).
_FREESWITCH_KEYS = frozenset({"variables", "callflow", "channel_data", "core-uuid", "switchname", "app_log",
                              "callStats", "hangup_cause"})
_FREESWITCH_TEXT = re.compile(rb'"(?:variables|callflow|channel_data|core-uuid|switchname)"\s*:')
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Look:
    """What the records look like: the ``--format`` that reads them (None: none does) and how to say it."""

    format: str | None
    what: str
    advice: str
    label: str = ""  # a short name for a metric label: the format, or pretty-json, binary, gzip…


LOOKS = {
    "jsonl": Look("jsonl", "JSON objects (raw v1 records)", "use --format jsonl", "jsonl"),
    "freeswitch-json": Look("freeswitch-json", "FreeSWITCH json_cdr documents", "use --format freeswitch-json",
                            "freeswitch-json"),
    "asterisk-csv": Look("asterisk-csv", "Asterisk cdr_csv rows (18 columns)", "use --format asterisk-csv",
                         "asterisk-csv"),
    "acc": Look("acc", "Kamailio/OpenSIPS acc rows (METHOD|from_tag|to_tag|callid|…)", "use --format acc", "acc"),
    "csv": Look("csv", "delimited CSV rows",
                "use --format csv --mapping FILE (a layout for these columns; docs/formats.md)", "csv"),
    "pretty-json": Look(None, "one pretty-printed JSON document, not one JSON object a line",
                        "compact it to one object a line (jq -c . FILE > FILE.jsonl), then use --format jsonl",
                        "pretty-json"),
    "binary": Look(None, "binary data, not text", "check the input (a compressed or unrelated file?)", "binary"),
    "cr-line-ends": Look(None, "text whose lines end in a carriage return alone (classic Mac), read as one line",
                         "convert the line ends first (tr '\\r' '\\n' < FILE | cdrpipe process --input - …)",
                         "cr-line-ends"),
}


def _compressed(head: bytes) -> Look | None:
    for magic, name, tool in _COMPRESSED:
        if head.startswith(magic):
            return Look(None, f"{name}-compressed data",
                        f"decompress it first ({tool} FILE | cdrpipe process --input - …)", name)
    return None


def _utf16(head: bytes) -> Look | None:
    """UTF-16 text (Windows exports): a byte-order mark, or ASCII characters each beside a zero byte.

    Only that pattern: other binary data with many zero bytes (a database file) stays ``binary``.
    """
    h = head[:64][:len(head[:64]) // 2 * 2]
    ascii_pairs = len(h) >= 8 and any(not any(zeros) and all(9 <= c < 127 for c in text)
                                      for zeros, text in ((h[1::2], h[0::2]), (h[0::2], h[1::2])))
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or ascii_pairs:
        return Look(None, "UTF-16 text, not UTF-8",
                    "convert it first (iconv -f UTF-16 -t UTF-8 FILE | cdrpipe process --input - …)", "utf-16")
    return None


def _one(record: bytes) -> str | None:
    """The look of one record (a key of :data:`LOOKS`), or None when it says nothing."""
    record = record.strip()
    if record.startswith(_BOM):
        record = record[len(_BOM):].lstrip()
    if not record:
        return None
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    if text.startswith("{"):
        try:
            doc = orjson.loads(record)
        except orjson.JSONDecodeError:
            return "freeswitch-json" if _FREESWITCH_TEXT.search(record) else "jsonl"  # cut or malformed
        if isinstance(doc, dict) and _FREESWITCH_KEYS & doc.keys():
            return "freeswitch-json"
        return "jsonl"
    if text.startswith('"') and re.match(r'^"[^"]*"\s*:', text):
        return "pretty-json"  # a key line of a pretty-printed document
    if text in ("}", "},", "]", "],", "[") or text.endswith(("{", "[")) and text.startswith('"'):
        return "pretty-json"
    bars = text.split("|")
    if len(bars) >= 7 and bars[0].strip().upper() in _SIP_METHODS:
        return "acc"
    delimiter = max(",;\t|", key=text.count)
    if text.count(delimiter) < 2:
        return None
    try:
        fields = next(csv.reader([text], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return "csv"
    if delimiter == "," and len(fields) in (17, 18, 19) and _DATE_TIME.match(fields[9].strip()):
        return "asterisk-csv"
    return "csv"


def sniff(records: Sequence[bytes]) -> Look | None:
    """What most of ``records`` (the first :data:`SAMPLE_RECORDS`) look like, or None if nothing clear.

    ``records`` are a batch's raw records: a file chunk's lines or a Kafka batch's message values.
    """
    sample = [r for r in records[:SAMPLE_RECORDS] if r and r.strip()]
    if not sample:
        return None
    first = sample[0].lstrip()
    encoded = _compressed(first) or _utf16(first)
    if encoded is not None:
        return encoded
    if first.rstrip(b"\r").count(b"\r") >= 2:  # CR-only line ends: the whole file reads as one line
        return LOOKS["cr-line-ends"]
    if first.strip() in (b"{", b"["):  # a pretty-printed document, cut into lines
        return LOOKS["freeswitch-json"] if any(_FREESWITCH_TEXT.search(r) for r in sample) else LOOKS["pretty-json"]
    votes = Counter(_one(r) for r in sample)
    look, n = votes.most_common(1)[0]
    if look is None or n * 2 <= len(sample):
        return None
    if look == "pretty-json":
        return LOOKS["freeswitch-json"] if any(_FREESWITCH_TEXT.search(r) for r in sample) else LOOKS[look]
    return LOOKS[look]


def _reasons_text(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in Counter(reasons).most_common(4))


def format_mismatch(expected: str, records: Sequence[bytes], reasons: Mapping[str, int], *,
                    batch: str = "the first batch", unit: str = "lines") -> str | None:
    """A one-line hint for a batch in which every record was rejected, or None if its format looks right.

    ``expected`` is the ``--format`` given; ``reasons`` the batch's DLQ reasons and counts; ``batch`` and
    ``unit`` name the batch and its records in the text ("the first batch", "lines"). The hint
    says what the records look like and which flag reads them. With no clear look, a hint is still
    given when every reason is a format reason (no record even parsed as ``expected``).
    """
    look = sniff(records)
    if look is not None and look.format == expected:
        return None  # the right format, bad records: the DLQ is where they belong
    counted = _reasons_text(reasons)
    head = f"no record of {batch} could be read as --format {expected} ({counted})"
    if look is not None:
        return f"{head}: the {unit} look like {look.what}: {look.advice}"
    named = {code for code, n in reasons.items() if n}
    if named and named <= FORMAT_REASONS - NOT_FORMAT_REASONS:
        return (f"{head}: check --format (jsonl, asterisk-csv, freeswitch-json, acc, or csv --mapping FILE; "
                "docs/formats.md) and --input")
    return None


__all__ = ["FORMAT_REASONS", "LOOKS", "Look", "SAMPLE_RECORDS", "format_mismatch", "sniff"]
