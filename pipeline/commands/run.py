"""`cdrpipe run`: a Kafka worker, cdr.raw -> analytics, retention, dlq in one transaction a batch."""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import IO, TYPE_CHECKING

import orjson
from confluent_kafka import Consumer, KafkaException

from pipeline.commands.process import add_core_arguments, build_router
from pipeline.core.router import Router
from pipeline.errors import FatalError, UsageError
from pipeline.kafka_config import ENV_BOOTSTRAP, ENV_X_PREFIX, parse_x_options, require_bootstrap
from pipeline.commands.common import add_metrics_arguments
from pipeline.metrics import WorkerMetrics, serve_metrics, stop_metrics
from pipeline.runners.kafka import (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT, DEFAULT_GROUP, DEFAULT_PROGRESS_SECONDS,
                                    TransactionLoop, WorkerSettings, _error_text, claim_worker_id, consumer_config,
                                    split_client_overrides, validate_worker_id)
from pipeline.topics import ANALYTICS, DLQ, RAW, RETENTION, SUPPRESSIONS, Topics

if TYPE_CHECKING:
    from pipeline.privacy.follower import SuppressionFollower

log = logging.getLogger("pipeline.runners.kafka")  # the worker's logger, whatever module logs for it


def settings_from_args(args: argparse.Namespace) -> tuple[WorkerSettings, IO[str] | None]:
    """WorkerSettings from the parsed flags (and a held worker-slot lock when the id is defaulted)."""
    bootstrap = require_bootstrap(args.bootstrap_servers, local_hint=True)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.batch_timeout <= 0:
        raise UsageError(f"--batch-timeout must be positive, got {args.batch_timeout}")
    options = parse_x_options(args.X)  # CDRPIPE_X_* first, then -X (which win)
    common, consumer, producer = split_client_overrides(options)
    prefix = args.topic_prefix  # the suppressions topic, prefixed the same way, is the follower's
    topics = Topics(prefix + args.input_topic, prefix + args.analytics_topic, prefix + args.retention_topic,
                    prefix + args.dlq_topic)
    lock = None
    worker_id = args.worker_id
    if worker_id:
        validate_worker_id(worker_id)
    else:
        worker_id, lock = claim_worker_id(args.group, topics.input)
    settings = WorkerSettings(bootstrap=bootstrap, worker_id=worker_id, group=args.group, topics=topics,
                              client=common, consumer_client=consumer, producer_client=producer,
                              batch_size=args.batch_size, batch_timeout=args.batch_timeout,
                              progress_seconds=args.progress_seconds, exit_when_idle=args.exit_when_idle)
    return settings, lock


def _cmd_run(args: argparse.Namespace) -> int:
    """`cdrpipe run`: the worker until SIGTERM/SIGINT; prints a JSON summary line on exit."""
    settings, _lock = settings_from_args(args)
    router = build_router(args)
    follower = _start_follower(args, settings, router)
    metrics = WorkerMetrics()
    if follower is not None:
        metrics.follow_suppressions(follower)
    server = serve_metrics(metrics, args.metrics_port, args.metrics_addr)
    loop = TransactionLoop(router, settings, metrics)
    signals = {"count": 0}

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("worker %s: %s: finishing the batch in flight, then exiting (again to abort it)",
                     settings.worker_id, signal.Signals(signum).name)
        loop.request_stop(abort=signals["count"] > 1)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    lost = threading.Event()
    if follower is not None:
        def _watch() -> None:
            """Fail closed: without current suppressions, stop (aborting the batch in flight) and exit 1."""
            while not loop_done.wait(1.0):
                if not follower.running:
                    lost.set()
                    log.error("worker %s: lost privacy.suppressions (%s); stopping so no objector reaches "
                              "analytics: check the topic and this principal's Read ACL on it",
                              settings.worker_id, type(follower.error).__name__ if follower.error else "stopped")
                    loop.request_stop(abort=True)
                    return
        loop_done = threading.Event()
        threading.Thread(target=_watch, name="suppression-watch", daemon=True).start()
    try:
        totals = loop.run()
    finally:
        if follower is not None:
            loop_done.set()
            follower.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_metrics(server)
    if totals.dlq_reasons:
        log.info("dlq reasons: %s", ", ".join(f"{k} {v}" for k, v in totals.dlq_reasons.most_common()))
    print(orjson.dumps({**totals.summary(), "worker_id": settings.worker_id}).decode(), flush=True)
    return 1 if lost.is_set() else 0


def _start_follower(args: argparse.Namespace, settings: WorkerSettings, router: Router) -> "SuppressionFollower | None":
    """Load the compacted suppression topic before the first batch and follow it (unless a file is given)."""
    if args.suppressions or args.no_follow_suppressions:
        return None
    from pipeline.privacy.follower import SuppressionFollower, SuppressionLoadError
    topic = args.topic_prefix + args.suppressions_topic
    apply = "cdrpipe topics apply" + (f" --prefix {args.topic_prefix}" if args.topic_prefix else "")
    try:  # the same settings checks as the worker's own clients, before anything connects for long
        probe = Consumer(consumer_config(settings, lambda _err: None))
    except KafkaException as exc:
        raise UsageError(f"invalid Kafka client setting: {exc.args[0].str()}") from None
    try:
        md = probe.list_topics(timeout=settings.startup_timeout)
    except KafkaException as exc:
        raise FatalError(f"cannot reach Kafka at {settings.bootstrap}: {_error_text(exc.args[0])}; check "
                         "--bootstrap-servers and the -X security settings") from None
    finally:
        probe.close()
    if topic not in md.topics or md.topics[topic].error is not None:
        raise FatalError(f"topic {topic} does not exist on {settings.bootstrap}; create the topics with "
                         f"`{apply} --bootstrap-servers {settings.bootstrap}`, or run without the privacy app "
                         "using --no-follow-suppressions")
    follower = SuppressionFollower(settings.bootstrap, router.suppressions, topic=topic, conf=settings.client)
    try:
        follower.start(timeout=args.suppressions_timeout)
    except SuppressionLoadError as exc:
        raise FatalError(f"{exc}. Create the topics with `{apply}`, or run without the privacy app "
                         "using --no-follow-suppressions") from None
    log.info("worker %s: following %s (%d active suppressions)", settings.worker_id, topic, len(router.suppressions))
    return follower


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe run` (the Kafka worker)."""
    p = sub.add_parser(
        "run", help="run a Kafka worker: cdr.raw -> analytics, retention, dlq (exactly once)",
        description=("Join the consumer group, read the input topic in batches and write each batch's "
                     "analytics, retention and DLQ records with its offsets in one Kafka transaction. "
                     "SIGTERM/SIGINT finish the batch in flight and exit 0 (a second signal aborts it). "
                     "Prints a JSON summary as the last stdout line. Exit codes: 0 done, 1 fatal, 2 usage. "
                     f"Any librdkafka setting: -X key=value or env {ENV_X_PREFIX}<KEY> (dots as '_')."))
    p.add_argument("--bootstrap-servers", default=None,
                   help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    add_core_arguments(p)
    p.add_argument("--group", default=DEFAULT_GROUP,
                   help=f"consumer group (env CDRPIPE_GROUP; default {DEFAULT_GROUP})")
    p.add_argument("--input-topic", default=RAW,
                   help=f"raw CDR topic (env CDRPIPE_INPUT_TOPIC; default {RAW})")
    p.add_argument("--analytics-topic", default=ANALYTICS,
                   help=f"env CDRPIPE_ANALYTICS_TOPIC; default {ANALYTICS}")
    p.add_argument("--retention-topic", default=RETENTION,
                   help=f"env CDRPIPE_RETENTION_TOPIC; default {RETENTION}")
    p.add_argument("--dlq-topic", default=DLQ,
                   help=f"env CDRPIPE_DLQ_TOPIC; default {DLQ}")
    p.add_argument("--topic-prefix", default="",
                   help="prepended to all four topic names, as `topics apply --prefix` (env CDRPIPE_TOPIC_PREFIX)")
    p.add_argument("--suppressions-topic", default=SUPPRESSIONS,
                   help="compacted topic of suppressed subscriber tokens, loaded before the first batch and "
                        "followed while running; prefixed like the others (env CDRPIPE_SUPPRESSIONS_TOPIC)")
    p.add_argument("--suppressions-timeout", type=float, default=30.0,
                   help="seconds to load the suppression topic at start before giving up (default 30)")
    p.add_argument("--no-follow-suppressions", action="store_true",
                   help="do not follow the suppression topic (deployments without the privacy app); "
                        "--suppressions FILE also replaces it")
    p.add_argument("--worker-id", default=None,
                   help="stable id of this worker instance: keep it across restarts, unique among live workers "
                        "(env CDRPIPE_WORKER_ID; default HOSTNAME-SLOT, the lowest slot free on this host)")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka setting for both clients, repeatable; prefix consumer. or producer. for one")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"max records per transaction (env CDRPIPE_BATCH_SIZE; default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--batch-timeout", type=float,
                   default=DEFAULT_BATCH_TIMEOUT,
                   help=f"seconds to wait to fill a batch (env CDRPIPE_BATCH_TIMEOUT; default {DEFAULT_BATCH_TIMEOUT})")
    add_metrics_arguments(p)
    p.add_argument("--progress-seconds", type=float,
                   default=DEFAULT_PROGRESS_SECONDS,
                   help="seconds between summary log lines (env CDRPIPE_PROGRESS_SECONDS; default 10)")
    p.add_argument("--exit-when-idle", type=float, default=None,
                   help="exit 0 after this many seconds without input, for backfills and demos "
                        "(env CDRPIPE_EXIT_WHEN_IDLE; default: run until stopped)")
    p.set_defaults(func=_cmd_run)
