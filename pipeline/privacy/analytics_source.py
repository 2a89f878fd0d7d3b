"""Find a subject's records in ``cdr.analytics`` (Kafka, read_committed) or in analytics files.

Why the search works on tokens: analytics holds no number, only ``cli``/``dialled`` tokens. The
subject's number is tokenised under every key of the worker keyring
(:class:`pipeline.privacy.requests.SubjectTokeniser`, the pipeline's own tokeniser), so records
written before a key rotation are found too, and a record is the subject's exactly when one of
its two number tokens is one of theirs.

The window is ``[from, to)`` on the analytics ``start``, which the default policy coarsens to
the hour: a window should start and end on whole hours (the export's dates do) or a call in the
boundary hour is counted by its hour. Records are read once per ``record_id`` (analytics readers
drop duplicates by it; the vault stores each record id once), so the counts compare with the
vault's.

Reading Kafka: only messages committed when the export starts (``read_committed``, up to each
partition's last stable offset), from the first message produced at or after the window start
minus a day (a record is produced after its call started; the day absorbs clock skew and the
hour coarsening), with no consumer group and no commits.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from pipeline.errors import FatalError

#: How far before the window start the Kafka read begins (message time >= call start, skew allowed).
KAFKA_LOOKBACK_MS = 86_400_000


def _start_us(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(when.timestamp()) * 1_000_000 + when.microsecond


def subject_records(lines: Iterable[bytes], tokens: set[str], start_us: int, end_us: int) -> list[dict[str, Any]]:
    """The analytics records (parsed) in which a subject token is cli or dialled, within the window."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # not an analytics record; nothing of the subject's can be in it
        if not isinstance(doc, dict) or (doc.get("cli") not in tokens and doc.get("dialled") not in tokens):
            continue
        start = _start_us(doc.get("start"))
        if start is None or not start_us <= start < end_us:
            continue
        rid = doc.get("record_id")
        if isinstance(rid, str):
            if rid in seen:
                continue
            seen.add(rid)
        out.append(doc)
    out.sort(key=lambda d: (str(d.get("start")), str(d.get("record_id"))))
    return out


def from_files(paths: Sequence[str], tokens: set[str], start_us: int, end_us: int) -> list[dict[str, Any]]:
    """From analytics JSONL files (``analytics.jsonl`` of `cdrpipe process`)."""
    def lines() -> Iterable[bytes]:
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    yield from fh
            except OSError as exc:
                raise FatalError(f"--analytics {path}: {exc.strerror}") from None
    return subject_records(lines(), tokens, start_us, end_us)


def from_kafka(conf: Mapping[str, Any], topic: str, tokens: set[str], start_us: int, end_us: int,
               timeout: float = 120.0) -> list[dict[str, Any]]:
    """From ``topic`` (read_committed, see the module docstring)."""
    from pipeline.demo import read_committed

    since_ms = max(0, start_us // 1000 - KAFKA_LOOKBACK_MS)
    messages = read_committed(conf, topic, timeout=timeout, since_ms=since_ms)
    return subject_records((m.value() or b"" for m in messages), tokens, start_us, end_us)


__all__ = ["KAFKA_LOOKBACK_MS", "from_files", "from_kafka", "subject_records"]
