"""`cdrpipe aggregates worker`: windowed, k-anonymous call counts per area, as a faust app.

Flow::

    cdr.analytics --intake--> <app>-calls-by-area --apply--> cdr.aggregates (released groups only)
     (read_committed)  facts, keyed by cell_id   table <app>-aggregate-state (changelog)
                       + watermarks broadcast to every partition

What a group is, and when it is released, is defined once in :mod:`pipeline.aggregates.offline`
(``aggregate_offline`` is the reference the integration test compares against).

Design notes (why):

* **Repartition by area.** cdr.analytics is keyed by caller, but a group gathers one area's
  calls from every caller; faust tables must be updated from the partition that owns the key,
  so intake forwards a small fact (window, cell, cli token, duration) keyed by ``cell_id``.
* **Event time, with a watermark per intake.** A window closes when the watermark passes
  ``window end + grace``. Intake's watermark is the *minimum*, over the input partitions that
  are still delivering, of the latest ``start`` seen in each: a partition that is behind (a
  catch-up after downtime) holds the watermark back, so its records are not declared late. A
  partition that delivered nothing for ``idle_timeout`` seconds stops holding it back (Flink's
  idleness rule), so a quiet partition cannot stall every window. The watermark is broadcast to
  every partition of the internal topic (after the facts that led to it, so order is kept), and
  apply keeps the highest it has seen per partition in the table. With several aggregates
  workers each broadcasts its own; the grace period must then also cover the skew between them.
* **Grace.** ``start`` on cdr.analytics is truncated to the hour, so the watermark moves in
  hours: any grace from 1 s to 3600 s closes a 1 h window when the first record of the hour after
  next arrives. The default (3600 s) gives CDRs of long calls, written at call end, an hour.
  A record whose window has closed is counted as late and left out (its group was already
  released or suppressed; re-opening it would publish a second, different answer).
* **Exact distinct callers, idempotent under replay.** The app is at-least-once (see
  :mod:`pipeline.apps.runtime`). Callers are kept as a set in the table (one key per group
  and caller), so a replayed fact can never inflate the distinct count — the k guarantee does
  not depend on exactly-once. The count is per tokenisation key (see
  :func:`pipeline.aggregates.offline.distinct_subscribers`), so a key rotation cannot double it. Calls and duration are sums; a group remembers the last internal
  offset it applied, so apply's own replays are skipped. (If *intake* crashes after forwarding
  and before committing, its facts are forwarded again and those sums can count them twice:
  the cost is accuracy of two sums for one commit interval, never the threshold.)
* **Closing** publishes a released group (key ``<cell>|<window start>``; after a crash the same
  group may be published again with the same figures: readers upsert by key), then deletes the
  group's state (the group key first, so a replay cannot publish it again; orphan caller keys are
  swept with their window).

Metrics: records in/invalid/late, groups released and suppressed (never their figures), open
groups, watermark.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.aggregates.watermark import DEFAULT_GRACE, DEFAULT_IDLE_TIMEOUT
from pipeline.aggregates.offline import (DEFAULT_K, DEFAULT_WINDOW, UNKNOWN_AREA, aggregate_record, call_fact,
                                         check_parameters, distinct_subscribers, group_key)
from pipeline.aggregates.watermark import Watermark
from pipeline.apps.options import AppSettings, app_settings, ensure_dir
from pipeline.apps.runtime import build_app, run_app
from pipeline.errors import UsageError
from pipeline.topics import AGGREGATES, ANALYTICS, Topics

log = logging.getLogger(__name__)

#: Table key prefixes: group figures, group members (callers), watermark per partition.
_G, _M, _W = "g|", "m|", "w|"


@dataclass(frozen=True)
class AggregateSettings:
    """Window, threshold and timing of the aggregation."""

    window: int = DEFAULT_WINDOW
    k: int = DEFAULT_K
    grace: int = DEFAULT_GRACE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


class AggregateMetrics:
    """Counts only: a suppressed group's figures never reach a metric either."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter("cdrpipe_aggregates_records", "Analytics records read, by outcome", ["outcome"],
                               registry=r)
        self.groups = Counter("cdrpipe_aggregates_groups", "Closed groups, by outcome (released or suppressed)",
                              ["outcome"], registry=r)
        self.open_groups = Gauge("cdrpipe_aggregates_open_groups", "Groups in open windows", registry=r)
        self.watermark = Gauge("cdrpipe_aggregates_watermark_seconds",
                               "Event-time watermark broadcast by this worker (epoch seconds)", registry=r)
        self.ready = Gauge("cdrpipe_aggregates_ready", "1 when the table is recovered and no rebalance runs",
                           registry=r)
        for outcome in ("accepted", "invalid", "late"):
            self.records.labels(outcome)
        for outcome in ("released", "suppressed"):
            self.groups.labels(outcome)


def build_aggregates_app(settings: AppSettings, topics: Topics, agg: AggregateSettings, *,
                         metrics: AggregateMetrics | None = None) -> tuple[Any, Any]:
    """The faust app (agents, table, topics wired) and its clean-up callable."""
    check_parameters(agg.window, agg.k)
    metrics = metrics or AggregateMetrics()
    app, cleanup = build_app(settings, registry=metrics.registry, ready_gauge=metrics.ready)
    window, grace, k = agg.window, agg.grace, agg.k

    analytics = app.topic(topics.analytics, key_type=bytes, value_type=bytes)
    by_area = app.topic(f"{settings.app_id}-calls-by-area", key_type=bytes, value_type=bytes, internal=True,
                        partitions=settings.partitions)
    out = app.topic(topics.aggregates, key_type=bytes, value_type=bytes)
    table = app.Table("aggregate-state", default=None, partitions=settings.partitions,
                      help="Open groups, their callers (tokens) and watermarks")
    mark = Watermark(agg.idle_timeout)
    sent = {"wm": -1}

    async def broadcast(wm: int) -> None:
        body = json.dumps({"wm": wm}).encode()
        for p in range(settings.partitions):
            await by_area.send(key=None, value=body, partition=p)
        sent["wm"] = wm
        metrics.watermark.set(wm)

    @app.agent(analytics, name="intake")
    async def intake(stream: Any) -> None:
        """Analytics records -> facts keyed by area (one message may hold NDJSON lines)."""
        async for event in stream.events():
            for line in (event.value or b"").split(b"\n"):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    fact = call_fact(record, window) if isinstance(record, dict) else None
                except (ValueError, RecursionError):
                    fact = None
                if fact is None:
                    metrics.records.labels("invalid").inc()
                    continue
                mark.observe(event.message.partition, fact.start)
                body = {"ws": fact.window_start, "cell": fact.cell, "cli": fact.cli, "d": fact.duration}
                await by_area.send(key=(fact.cell or UNKNOWN_AREA).encode(), value=json.dumps(body).encode())

    @app.timer(1.0)
    async def advance() -> None:
        """Recompute the watermark (idleness changes without records) and broadcast a rise."""
        assignment = app.consumer.assignment() if app.consumer else set()
        mark.assigned({tp.partition for tp in assignment if tp.topic == topics.analytics})
        wm = mark.value()
        if wm is not None and wm > sent["wm"]:
            await broadcast(wm)

    async def close_windows(partition: int, wm: int) -> None:
        closing: dict[str, dict[str, Any]] = {}
        members: dict[str, list[str]] = {}
        stale: list[str] = []
        for key, value in list(table.items()):
            if key.startswith(_G) and value.get("p") == partition and value["ws"] + window + grace <= wm:
                closing[key[len(_G):]] = value
            elif key.startswith(_M) and value == partition:
                ws_text, _, rest = key[len(_M):].partition("|")
                cell_text, _, cli = rest.partition("|")
                members.setdefault(f"{ws_text}|{cell_text}", []).append(cli)
                if int(ws_text) + window + grace <= wm:
                    stale.append(key)
        for group, value in sorted(closing.items(), key=lambda kv: (kv[1]["ws"], kv[0])):
            distinct = distinct_subscribers(members.get(group, ()))
            cell = value.get("cell")
            if distinct >= k:
                record = aggregate_record(cell, value["ws"], window, value["calls"], value["duration"], distinct, k)
                await out.send(key=group_key(cell, value["ws"]).encode(), value=json.dumps(record).encode())
                metrics.groups.labels("released").inc()
            else:
                metrics.groups.labels("suppressed").inc()
            del table[_G + group]
        for key in stale:
            del table[key]

    @app.agent(by_area, name="apply")
    async def apply(stream: Any) -> None:
        """Facts into groups; a watermark rise closes the windows it passes."""
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            body = json.loads(event.value)
            wm_key = f"{_W}{partition}"
            if "wm" in body:
                wm = int(body["wm"])
                if wm > (table.get(wm_key) or -1):
                    table[wm_key] = wm
                    await close_windows(partition, wm)
                continue
            ws, cell = int(body["ws"]), body.get("cell")
            if ws + window + grace <= (table.get(wm_key) or -1):
                metrics.records.labels("late").inc()
                continue
            group = f"{ws}|{cell or UNKNOWN_AREA}"
            state = table.get(_G + group) or {"ws": ws, "cell": cell, "calls": 0, "duration": 0, "p": partition,
                                              "o": -1}
            if offset <= state["o"]:
                continue  # already applied before a restart
            if body.get("cli"):
                member = f"{_M}{group}|{body['cli']}"
                if table.get(member) is None:
                    table[member] = partition
            state = {**state, "calls": state["calls"] + 1, "duration": state["duration"] + int(body["d"]),
                     "o": offset}
            table[_G + group] = state
            metrics.records.labels("accepted").inc()

    @app.timer(10.0)
    async def count_open() -> None:
        metrics.open_groups.set(sum(1 for key in list(table.keys()) if key.startswith(_G)))

    return app, cleanup


def run_worker_command(args: argparse.Namespace) -> int:
    """`cdrpipe aggregates worker` (flags in :mod:`pipeline.commands.aggregates`)."""
    settings = app_settings(args)
    ensure_dir(settings.data_dir)
    agg = AggregateSettings(window=args.window, k=args.k, grace=args.grace, idle_timeout=args.idle_timeout)
    try:
        check_parameters(agg.window, agg.k)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if agg.grace < 0 or agg.idle_timeout <= 0:
        raise UsageError("--grace must be >= 0 and --idle-timeout > 0")
    topics = Topics(analytics=args.analytics_topic or ANALYTICS,
                    aggregates=args.aggregates_topic or AGGREGATES).with_prefix(args.topic_prefix)
    app, cleanup = build_aggregates_app(settings, topics, agg)
    log.info("aggregates worker %s: %s -> %s, window %d s, k %d, grace %d s", settings.app_id, topics.analytics,
             topics.aggregates, agg.window, agg.k, agg.grace)
    return run_app(app, cleanup, settings.log_level)
