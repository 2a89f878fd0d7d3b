"""k-anonymous call aggregates: the definition, shared by the streaming app and the offline check.

A *group* is the calls of one location area (``cell_id``, MCC-MNC-LAC, as on cdr.analytics) whose
start falls in one tumbling window (epoch-aligned: 1 h windows start on the hour, UTC). A group is
released only when at least ``k`` distinct callers (cli tokens) made its calls; otherwise it is
suppressed — not published at all, not even as a count of zero, because "fewer than k" is itself
information about a small group.

Why distinct *callers* decide release: the published figures (calls, total duration) describe the
people who made the calls; k distinct callers means no figure describes fewer than k subscribers.
Calls with a withheld number count as calls but never as callers, so they cannot lift a group of
k-1 known callers over the threshold.

Why the count is taken *per tokenisation key*: a token carries its key id (``kid:hex``), and after
a key rotation one subscriber has an old and a new token. A window that straddles the rotation
(late records, a rolling restart) would count that subscriber twice, and k-1 real subscribers
could look like k. Each subscriber appears at most once per key, so the largest per-key count is
a lower bound of the distinct subscribers; that bound decides release and is what is published.

This module is pure (no Kafka, no faust): :func:`aggregate_offline` computes from a list of
analytics records exactly what the streaming app publishes for the same records when none of
them arrives after its window closed.

Public API:
    ``DEFAULT_WINDOW`` (3600 s), ``DEFAULT_K`` (5), ``MIN_K`` (2)
    ``parse_start(text) -> int | None``           epoch seconds of an analytics ``start``
    ``window_of(epoch, size) -> int``             the window start containing ``epoch``
    ``CallFact`` / ``call_fact(record, window)``  the fields a group needs, or None if unusable
    ``group_key(cell, window_start) -> str``      the cdr.aggregates message key
    ``aggregate_record(...) -> dict``             one cdr.aggregates value (schemas/aggregate.v1.json)
    ``offline_groups(records, window)``           every group, released or not
    ``aggregate_offline(records, window=3600, k=5) -> list[dict]``  the released groups, sorted
    ``distinct_subscribers(tokens) -> int``       the per-key lower bound that decides release
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEFAULT_WINDOW = 3600
DEFAULT_K = 5
MIN_K = 2
AGGREGATE_TYPE = "cdr.aggregate/1"
#: Key text for calls whose area was unknown (cell_id null).
UNKNOWN_AREA = "-"


def parse_start(text: Any) -> int | None:
    """Epoch seconds of an ISO-8601 time with a zone (analytics ``start``), else None."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp())


def window_of(epoch: int, size: int) -> int:
    """Start of the epoch-aligned tumbling window of ``size`` seconds that holds ``epoch``."""
    return epoch - epoch % size


def utc(epoch: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CallFact:
    """What a group needs from one analytics record."""

    window_start: int
    start: int
    cell: str | None
    cli: str | None
    duration: int


def call_fact(record: Mapping[str, Any], window: int) -> CallFact | None:
    """The record's contribution, or None when it has no usable start or duration."""
    start = parse_start(record.get("start"))
    duration = record.get("duration")
    if start is None or isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
        return None
    cell = record.get("cell_id")
    cli = record.get("cli")
    return CallFact(window_of(start, window), start, cell if isinstance(cell, str) and cell else None,
                    cli if isinstance(cli, str) and cli else None, duration)


def group_key(cell: str | None, window_start: int) -> str:
    """The cdr.aggregates message key: ``<cell_id or ->|<window start>`` (readers upsert by it)."""
    return f"{cell or UNKNOWN_AREA}|{utc(window_start)}"


def aggregate_record(cell: str | None, window_start: int, window: int, calls: int, duration: int,
                     distinct_callers: int, k: int) -> dict[str, Any]:
    """One released group, as schemas/aggregate.v1.json describes it."""
    return {"type": AGGREGATE_TYPE, "cell_id": cell, "window_start": utc(window_start),
            "window_end": utc(window_start + window), "calls": calls, "duration_total": duration,
            "distinct_callers": distinct_callers, "k": k}


@dataclass
class Group:
    """A group's running figures (callers as a set: the threshold needs the exact distinct count)."""

    calls: int = 0
    duration: int = 0
    callers: set[str] | None = None

    def add(self, fact: CallFact) -> None:
        self.calls += 1
        self.duration += fact.duration
        if fact.cli is not None:
            if self.callers is None:
                self.callers = set()
            self.callers.add(fact.cli)

    @property
    def distinct(self) -> int:
        """Distinct callers, counted under one key at a time (see :func:`distinct_subscribers`)."""
        return distinct_subscribers(self.callers or ())


def key_id(token: str) -> str:
    """The key id of a ``kid:hex`` token ('' when it has none)."""
    kid, sep, _ = token.partition(":")
    return kid if sep else ""


def distinct_subscribers(tokens: Iterable[str]) -> int:
    """A lower bound of the distinct subscribers behind distinct caller tokens: the largest count
    under any single key id (one subscriber has one token per key)."""
    per_key: dict[str, int] = {}
    for token in tokens:
        kid = key_id(token)
        per_key[kid] = per_key.get(kid, 0) + 1
    return max(per_key.values(), default=0)


def offline_groups(records: Iterable[Mapping[str, Any]], window: int = DEFAULT_WINDOW
                   ) -> dict[tuple[str | None, int], Group]:
    """Every group of the records, released or not, keyed by (cell_id, window start)."""
    groups: dict[tuple[str | None, int], Group] = {}
    for record in records:
        fact = call_fact(record, window)
        if fact is None:
            continue
        groups.setdefault((fact.cell, fact.window_start), Group()).add(fact)
    return groups


def check_parameters(window: int, k: int) -> None:
    """Reject settings that would void the guarantee or the windows (ValueError)."""
    if k < MIN_K:
        raise ValueError(f"k must be at least {MIN_K}: k=1 releases single subscribers")
    if window < 60 or (86_400 % window and window % 86_400):
        raise ValueError("the window must be at least 60 s and divide a day (or be whole days)")


def aggregate_offline(records: Iterable[Mapping[str, Any]], window: int = DEFAULT_WINDOW,
                      k: int = DEFAULT_K) -> list[dict[str, Any]]:
    """The groups the streaming app releases for ``records``, sorted by (window start, cell)."""
    check_parameters(window, k)
    out = [aggregate_record(cell, ws, window, g.calls, g.duration, g.distinct, k)
           for (cell, ws), g in offline_groups(records, window).items() if g.distinct >= k]
    out.sort(key=lambda a: (a["window_start"], a["cell_id"] or ""))
    return out
