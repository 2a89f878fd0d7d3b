"""The runtime shared by cdrpipe's faust-streaming apps (privacy worker, aggregates worker).

Both apps are stateful, lower-rate services next to the confluent-kafka core. They share:

* **A faust ``App`` that reads committed data only.** faust's aiokafka consumer reads
  ``read_uncommitted`` unless faust itself runs exactly-once, and the Kafka worker writes
  ``cdr.analytics`` in transactions: an aborted batch would be counted by the aggregates.
  :class:`CommittedApp` swaps in a consumer that reads ``read_committed`` (a one-line override
  of faust's consumer factory; checked by the aggregates integration test).
* **At-least-once, not faust's exactly-once.** With faust-streaming 0.15.3 and aiokafka 0.14 on
  Kafka 4.1, ``processing_guarantee="exactly_once"`` worked until the first SIGKILL; the restarted
  worker then failed recovery (``ConsistencyError``: persisted changelog offset above a highwater
  of -1, after an "Invalid state transition IN_TRANSACTION -> IN_TRANSACTION"). So both apps run
  at-least-once (faust flushes the producer before committing offsets, so state and outputs
  are durable before the input is acknowledged) and make their state updates idempotent.
* **In-memory tables backed by changelog topics** (``store="memory://"``): the changelog is the
  state; a restarted worker rebuilds the table from it. No RocksDB, nothing on local disk but
  faust's empty data directory (a temporary one by default).
* **A locked-down web server**: faust's table, router, graph and stats views are switched off
  (the table views would show suppression state to anyone on the network); only ``/health``
  (200 once table recovery is done and no rebalance is running, 503 otherwise) and
  ``/metrics`` (Prometheus text from the app's own registry) are served.
* **Kafka 4.x**: aiokafka 0.14 negotiates API versions Kafka 4 still serves; no ``api_version``
  pin is needed (tested on the project's Kafka 4.1.2 broker).

Security settings come as librdkafka-style ``-X`` options, so all cdrpipe commands take the
same flags; :func:`faust_credentials` maps the supported subset onto faust's credentials.
"""
from __future__ import annotations

import logging
import shutil
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pipeline.apps.options import MIN_SESSION_TIMEOUT, SUPPORTED_X, AppSettings
from pipeline.errors import UsageError
from pipeline.kafka_config import ENV_BOOTSTRAP

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap: str) -> str:
    """``host1:9092,host2:9092`` -> ``kafka://host1:9092;kafka://host2:9092`` (faust's form)."""
    hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
    if not hosts:
        raise UsageError("no Kafka given: pass --bootstrap-servers HOST:PORT or set " + ENV_BOOTSTRAP)
    return ";".join(h if "://" in h else f"kafka://{h}" for h in hosts)


def faust_credentials(x: Mapping[str, str]) -> Any:
    """Map librdkafka-style security settings to faust credentials (None for PLAINTEXT).

    Only the settings in :data:`SUPPORTED_X` are understood; anything else is a usage error
    rather than silently ignored, because a dropped security setting fails open.
    """
    unknown = sorted(set(x) - set(SUPPORTED_X))
    if unknown:
        raise UsageError(f"-X {unknown[0]}: not supported by the faust apps (supported: {', '.join(SUPPORTED_X)})")
    protocol = x.get("security.protocol", "PLAINTEXT").upper()
    context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=x.get("ssl.ca.location") or None)
        if x.get("ssl.certificate.location"):
            context.load_cert_chain(x["ssl.certificate.location"], x.get("ssl.key.location") or None)
    elif protocol != "PLAINTEXT" and protocol != "SASL_PLAINTEXT":
        raise UsageError(f"-X security.protocol={protocol}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    if protocol.startswith("SASL"):
        mechanism = x.get("sasl.mechanism", "PLAIN").upper()
        user, password = x.get("sasl.username"), x.get("sasl.password")
        if not user or password is None:
            raise UsageError("-X sasl.username and -X sasl.password are required with SASL")
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise UsageError(f"-X sasl.mechanism={mechanism}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        return faust.SASLCredentials(username=user, password=password, ssl_context=context, mechanism=mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# --------------------------------------------------------------------------- read_committed app

class _CommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with the aiokafka consumer reading committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust hard-codes read_uncommitted outside exactly-once; aiokafka reads this attribute
        # when it builds its fetcher in start(), which comes after this factory.
        consumer._isolation_level = "read_committed"
        return consumer


class _CommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _CommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _CommittedTransport(faust_aiokafka.Transport):
    Consumer = _CommittedConsumer


class CommittedApp(faust.App):
    """A faust App whose consumer never sees records of aborted or open transactions."""

    def _new_transport(self) -> Any:
        return _CommittedTransport(self.conf.broker_consumer, self)


# --------------------------------------------------------------------------- app

def build_app(settings: AppSettings, *, registry: CollectorRegistry,
              ready_gauge: Gauge | None = None) -> tuple[CommittedApp, Callable[[], None]]:
    """A configured :class:`CommittedApp` with /health and /metrics, and its clean-up callable."""
    credentials = faust_credentials(settings.x)
    if settings.session_timeout < MIN_SESSION_TIMEOUT:
        raise UsageError(f"--session-timeout must be at least {MIN_SESSION_TIMEOUT:g} s (the broker's minimum)")
    owned_dir: str | None = None
    data_dir = settings.data_dir
    if data_dir is None:
        owned_dir = data_dir = tempfile.mkdtemp(prefix=f"cdrpipe-{settings.app_id}-")
    app = CommittedApp(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap),
        broker_credentials=credentials,
        store="memory://",
        datadir=data_dir,
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 10),
        broker_request_timeout=max(90.0, settings.session_timeout + 10),
        broker_commit_interval=1.0,
        producer_acks=-1,
        web_enabled=settings.web_port > 0,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port or 6066,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        # Our records are JSON we parse ourselves: faust's decode-error logs would print values.
        key_serializer="raw",
        value_serializer="raw",
        table_cleanup_interval=60.0,
    )

    def is_ready() -> bool:
        recovery = app.tables.recovery
        return bool(recovery.completed.is_set() and not recovery.in_recovery and not app.rebalancing)

    @app.page("/health")
    async def health(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 when the app serves from fully recovered state; 503 while recovering or rebalancing."""
        ok = is_ready()
        return self.json({"status": "ok" if ok else "recovering", "app": settings.app_id},
                         status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """Prometheus exposition of this app's own registry."""
        if ready_gauge is not None:
            ready_gauge.set(1 if is_ready() else 0)
        return self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    def cleanup() -> None:
        if owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)

    return app, cleanup


def run_app(app: faust.App, cleanup: Callable[[], None], log_level: str = "INFO") -> int:
    """Run the worker in the foreground until SIGTERM/SIGINT; returns the exit code.

    faust's Worker installs the signal handlers: SIGTERM stops the agents, flushes the producer,
    commits what was processed and leaves the group, so the next worker starts without waiting
    for a session timeout. Logging stays as cdrpipe configured it (no faust banner, no stdout
    redirection: our code never prints event values, and neither must faust).
    """
    worker = faust.Worker(app, loglevel=log_level, quiet=True, override_logging=False,
                          redirect_stdouts=False)
    worker.spinner = None  # a terminal spinner writes escape codes into container logs
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
        return int(code) if isinstance(code, int) else (0 if code is None else 1)
    finally:
        cleanup()
    return 0  # pragma: no cover  (execute_from_commandline always raises SystemExit)


__all__ = ["CommittedApp", "build_app", "faust_broker_url", "faust_credentials", "run_app"]
