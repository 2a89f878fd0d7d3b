"""`cdrpipe privacy worker`: the faust app that turns subject requests into suppressions.

Flow (every arrow is a Kafka topic; only the first carries a raw identifier)::

    privacy.requests --intake--> <app>-requests-by-token --apply--> privacy.suppressions (compacted)
      (raw subject)     tokenise    (tokens only, keyed by token)    \\--> privacy.erasures (erasure only)
                                                                      table <app>-suppression-state (changelog)

* **intake** validates each request against schemas/privacy-request.v2.json (v1 requests are
  valid v2 requests), normalises the
  subject exactly as the pipeline does and tokenises it under every key of the worker keyring
  (current first: the pipeline routes with the current key; older keys let erasure notices reach
  rows written before a rotation). The raw value is dropped right there: it never reaches a
  table, a topic other than privacy.requests, a log line or a metric label. Invalid requests are
  counted by reason and logged by their coordinates only. ``access`` and ``portability``
  requests stop here: they are answered by the DPO with ``cdrpipe privacy export`` and change
  nothing in the pipeline, so they are counted as applied and logged by request id only.
* **The repartition by token** puts every request about one subscriber on one partition, which
  is what faust tables require (a table's changelog partition is its input partition): with
  several workers, each owns its subscribers' state.
* **apply** merges the request into the subscriber's state (:mod:`pipeline.privacy.state`: an
  idempotent, order-independent merge, because the app is at-least-once), writes the table (its
  changelog is the durable state: a SIGKILLed worker's successor rebuilds it), publishes one
  record per token to the compacted ``privacy.suppressions`` (``active`` true or false; a lifted
  restriction is ``active: false``, not a tombstone, so the topic shows when and why a subscriber
  came back) and, for an erasure, an erasure notice to ``privacy.erasures``. Every request is
  published, even when it changes nothing, so a crash between the table write and the publish is
  repaired by the replay.

Metrics (``/metrics``): requests applied by type, invalid requests by reason, erasure notices,
active suppressed subjects, request-to-publish seconds (from the request's Kafka timestamp).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.apps.options import AppSettings, app_settings, ensure_dir
from pipeline.apps.runtime import build_app, run_app
from pipeline.errors import FatalError, UsageError
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS
from pipeline.keys import KeyringError, WorkerKeyring, load_worker_keyring
from pipeline.privacy.requests import (REQUEST_SCHEMA, REQUEST_TYPES, SUPPRESSION_TYPES, InvalidRequest,
                                       SubjectTokeniser, load_schema, parse_request, utc_text)
from pipeline.privacy.state import (TokenRequest, apply_request, erasure_notice, is_active,
                                    suppression_records)
from pipeline.topics import ERASURES, REQUESTS, SUPPRESSIONS, Topics

log = logging.getLogger(__name__)

INVALID_REASONS = ("empty", "invalid_json", "schema", "invalid_subject", "invalid_request_id", "invalid_type",
                   "internal_error")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class PrivacyMetrics:
    """The privacy app's Prometheus metrics, in their own registry (no subject ever in a label)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.applied = Counter("cdrpipe_privacy_requests_applied", "Requests applied, by type", ["type"], registry=r)
        self.invalid = Counter("cdrpipe_privacy_requests_invalid", "Requests rejected, by reason", ["reason"],
                               registry=r)
        self.erasures = Counter("cdrpipe_privacy_erasure_notices", "Erasure notices published", registry=r)
        self.published = Counter("cdrpipe_privacy_suppression_records", "Records published to privacy.suppressions",
                                 registry=r)
        self.active = Gauge("cdrpipe_privacy_active_subjects",
                            "Subjects suppressed from analytics (this worker's partitions)", registry=r)
        self.latency = Histogram("cdrpipe_privacy_request_seconds",
                                 "Seconds from a request's arrival on privacy.requests to its publication",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("cdrpipe_privacy_ready", "1 when the table is recovered and no rebalance runs", registry=r)
        for t in REQUEST_TYPES:
            self.applied.labels(t)
        for reason in INVALID_REASONS:
            self.invalid.labels(reason)


def _now() -> str:
    return utc_text(datetime.now(timezone.utc))


def build_privacy_app(settings: AppSettings, keyring: WorkerKeyring, topics: Topics, *,
                      region: str = "GB", token_bits: int = DEFAULT_TOKEN_BITS,
                      metrics: PrivacyMetrics | None = None) -> tuple[Any, Any]:
    """The faust app (agents, table; ``topics.requests``, ``.suppressions``, ``.erasures``) and its clean-up callable."""
    metrics = metrics or PrivacyMetrics()
    load_schema(REQUEST_SCHEMA)  # at start, not at the first request: a missing schema is a deploy error
    subjects = SubjectTokeniser(keyring, region, token_bits)
    app, cleanup = build_app(settings, registry=metrics.registry, ready_gauge=metrics.ready)

    requests_topic = app.topic(topics.requests, key_type=bytes, value_type=bytes)
    by_token = app.topic(f"{settings.app_id}-requests-by-token", key_type=bytes, value_type=bytes, internal=True,
                         partitions=settings.partitions)
    suppressions_topic = app.topic(topics.suppressions, key_type=bytes, value_type=bytes)
    erasures_topic = app.topic(topics.erasures, key_type=bytes, value_type=bytes)
    table = app.Table("suppression-state", default=None, partitions=settings.partitions,
                      help="Suppression state per subject token (no raw identifiers)")

    @app.agent(requests_topic, name="intake")
    async def intake(stream: Any) -> None:
        """Validate, tokenise, forward by token; the raw subject goes no further than this loop."""
        async for event in stream.events():
            msg = event.message
            try:
                req = parse_request(event.value)
                tokens = subjects.tokens(req.kind, req.value)
            except InvalidRequest as exc:
                metrics.invalid.labels(exc.reason).inc()
                log.warning("privacy request at %s[%d]@%d rejected (%s): %s", msg.topic, msg.partition,
                            msg.offset, exc.reason, exc)
                continue
            except Exception as exc:  # noqa: BLE001  (a library's message may quote the value: log the type only)
                metrics.invalid.labels("internal_error").inc()
                log.error("privacy request at %s[%d]@%d could not be processed (%s); skipped", msg.topic,
                          msg.partition, msg.offset, type(exc).__name__)
                continue
            if req.type not in SUPPRESSION_TYPES:  # access, portability: answered by an export, not here
                metrics.applied.labels(req.type).inc()
                log.info("privacy request %s (%s) received: no effect on suppressions; answer it with "
                         "`cdrpipe privacy export` by %s", req.request_id, req.type, req.due)
                continue
            out = TokenRequest(req.request_id, req.type, req.kind, tokens, utc_text(req.received),
                               int(msg.timestamp * 1000) if msg.timestamp else 0)
            del req  # nothing below may see the raw value
            await by_token.send(key=out.token.encode(), value=json.dumps(out.to_json()).encode())

    @app.agent(by_token, name="apply")
    async def apply(stream: Any) -> None:
        """Merge into the table, publish the state per token, and the erasure notice."""
        async for event in stream.events():
            try:
                req = TokenRequest.from_json(json.loads(event.value))
            except (ValueError, KeyError, TypeError):
                metrics.invalid.labels("invalid_json").inc()
                log.warning("internal request at %s[%d]@%d unreadable; skipped", event.message.topic,
                            event.message.partition, event.message.offset)
                continue
            now = _now()
            state = apply_request(table.get(req.token), req, now)
            table[req.token] = state
            for key, value in suppression_records(state, now):
                await suppressions_topic.send(key=key.encode(), value=json.dumps(value).encode())
                metrics.published.inc()
            if req.type == "erasure":
                await erasures_topic.send(key=req.token.encode(), value=json.dumps(erasure_notice(req, now)).encode())
                metrics.erasures.inc()
            metrics.applied.labels(req.type).inc()
            if req.submitted_ms:
                metrics.latency.observe(max(0.0, time.time() - req.submitted_ms / 1000))
            log.info("privacy request %s (%s) applied: %s", req.request_id, req.type,
                     "suppressed" if is_active(state) else "not suppressed")

    @app.timer(10.0)
    async def count_active() -> None:
        metrics.active.set(sum(1 for v in table.values() if is_active(v)))

    return app, cleanup


# --------------------------------------------------------------------------- command line

def run_worker_command(args: argparse.Namespace) -> int:
    """`cdrpipe privacy worker` (flags defined in :mod:`pipeline.commands.privacy`)."""
    settings = app_settings(args)
    ensure_dir(settings.data_dir)
    try:
        keyring = load_worker_keyring(args.keyring)
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    topics = Topics(requests=args.requests_topic or REQUESTS, suppressions=args.suppressions_topic or SUPPRESSIONS,
                    erasures=args.erasures_topic or ERASURES).with_prefix(args.topic_prefix)
    if args.token_bits % 8 or not 64 <= args.token_bits <= 256:
        raise UsageError("--token-bits must be a multiple of 8 between 64 and 256 (and equal the pipeline's)")
    app, cleanup = build_privacy_app(settings, keyring, topics, region=args.region, token_bits=args.token_bits)
    log.info("privacy worker %s: %s -> %s, %s (token keys %s)", settings.app_id, topics.requests,
             topics.suppressions, topics.erasures, ", ".join(k.kid for k in keyring.token_keys))
    return run_app(app, cleanup, settings.log_level)
