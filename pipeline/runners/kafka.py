"""The Kafka worker (`cdrpipe run`): the exactly-once transaction loop around the core.

Per batch: ``consume(batch)`` -> ``Router.route`` -> in one Kafka transaction produce the analytics
records, the sealed retention segments, the dead letters *and* the consumed offsets
(``send_offsets_to_transaction`` with the consumer's group metadata) -> commit. A crash anywhere
leaves either the whole batch committed or none of it, so ``read_committed`` readers see every
input record exactly once.

Two stages overlap: the consumer thread consumes and routes batch N+1 while a transaction thread
produces and commits batch N (the core is the bottleneck, so the commit round trips are hidden).
The transaction thread only uses the producer; the consumer stays on its thread, which also takes
the group metadata snapshot a batch is committed with.

Why these choices:

* **Fencing (KIP-447, EOS v2).** A zombie (a worker that paused, lost its partitions and woke up)
  is fenced by the group: its offsets carry a stale generation or member id, so the coordinator
  refuses them and the transaction aborts. The transactional.id is
  ``cdrpipe-{group}-{input}-{worker id}``, stable per worker slot: a restarted worker with the same
  id bumps the producer epoch, which aborts its dead predecessor's open transaction at once
  (instead of after ``transaction.timeout.ms``, during which readers and the partitions' next
  owner would wait) and fences the predecessor if it was only paused. The same id is the static
  ``group.instance.id``, so a restart rejoins without a rebalance. The default worker id is
  ``{hostname}-{slot}``, the slot being the lowest one free on this host (a file lock), so it is
  unique among live workers and reused by the next worker after a crash; hostname+pid would be
  new on every restart and fence nothing.
* **Rebalancing.** ``cooperative-sticky``. librdkafka runs ``on_revoke``/``on_lost`` inside
  ``consume()`` on the consumer thread; they first wait for the transaction in flight to commit
  or abort, so partitions are never handed on with a batch half-written. Messages of revoked
  partitions that were already fetched are dropped, not routed.
* **Failures.** Retriable errors are retried with capped exponential backoff; an abortable one
  aborts the transaction and rewinds the consumer to the batch's first offsets (the batch is routed
  again, nothing is counted twice), on the partitions it kept: one revoked or lost meanwhile
  restarts from its committed offset, even when it comes straight back; fatal ones (fenced,
  authorisation, a record too large for an output topic) stop the worker with exit code 1 and a
  message that says what to do.
* **Hot path.** No per-record Python logging or exceptions: consumed messages are unpacked and
  output messages queued with C-level ``map`` (``produce`` with positional arguments, values split
  from the core's one buffer per output), and the producer reports only failed deliveries
  (``delivery.report.only.error``).

Public API:
    ``WorkerSettings``                      what to read and write (``pipeline.topics.Topics``), and how
    ``TransactionLoop(router, settings, metrics=None)``  ``.run() -> WorkerTotals``, ``.request_stop()``
    ``claim_worker_id(group, input_topic)``  the default, stable-per-slot worker id
    ``transactional_id(group, input_topic, worker_id)``
"""
from __future__ import annotations

import fcntl
import gc
import hashlib
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import repeat
from operator import length_hint
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.errors import FatalError, UsageError
from pipeline.core.router import Output, RoutedBatch, Router, Source
from pipeline.metrics import WorkerMetrics, partition_lags
from pipeline.formats.common import HEADER_MISMATCH, HEADER_MISMATCH_HINT
from pipeline.formats.sniff import format_mismatch, sniff
from pipeline.runners.files import NULLED, RunTotals
from pipeline.topics import RAW, Topics

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

DEFAULT_GROUP = "cdrpipe"
DEFAULT_BATCH_SIZE = 20_000  # the core gets faster up to ~20k records a batch; ~16 MB of output per transaction
DEFAULT_BATCH_TIMEOUT = 0.5
DEFAULT_PROGRESS_SECONDS = 10.0
#: A batch that no record of was readable as --format is logged at once, then at most this often.
FORMAT_WARNING_SECONDS = 60.0
#: Kafka's own default for message.max.bytes / max.message.bytes (1 MiB + record overhead).
KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588
#: Settings the exactly-once guarantee rests on: changing them through -X is refused.
_PINNED = {
    "bootstrap.servers": "use --bootstrap-servers",
    "group.id": "use --group",
    "transactional.id": "it is derived from --group, --input-topic and --worker-id",
    "enable.auto.commit": "offsets are committed inside each transaction",
    "enable.idempotence": "transactions need the idempotent producer",
    "isolation.level": "the worker must never read aborted input",
}
_BACKOFF_START, _BACKOFF_MAX = 0.1, 30.0
#: Messages queued per C-level call (~2-4 ms): the GIL is free for the consumer thread in between.
_PRODUCE_CHUNK = 2048
#: Objects a record may keep alive within a batch before a cyclic collection runs (see ``run``).
_GC_OBJECTS_PER_RECORD = 5
#: Runs an iterator to its end at C speed (a deque that keeps nothing).
_drain = deque(maxlen=0).extend
_RETRY_CALLS = 8

#: Errors an operator must fix (retrying cannot help): code -> what to do.
_OPERATOR_ERRORS: dict[int, str] = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED:
        "grant this worker's principal Read on the input topic and Write on the output topics",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "grant this worker's principal Read on the consumer group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        "grant this worker's principal Write on transactional ids cdrpipe-* (prefixed ACL)",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        "grant this worker's principal IdempotentWrite on the cluster",
    KafkaError.SASL_AUTHENTICATION_FAILED: "check the SASL credentials (-X sasl.username/sasl.password)",
    KafkaError._AUTHENTICATION: "check the security settings (-X security.protocol, sasl.*, ssl.*)",
    KafkaError.MSG_SIZE_TOO_LARGE:
        "raise max.message.bytes of the output topics (see the startup warning) and -X message.max.bytes",
    KafkaError.RECORD_LIST_TOO_LARGE: "raise max.message.bytes of the output topics",
}
#: This worker's transaction or membership was taken from it: a newer instance with its id, or the
#: coordinator aborting a transaction that outlived transaction.timeout.ms (e.g. a paused process).
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
           KafkaError.FENCED_INSTANCE_ID, KafkaError.INVALID_TXN_STATE}


# --------------------------------------------------------------------------- settings


@dataclass
class WorkerSettings:
    """Everything the transaction loop needs besides the core (``client`` holds -X overrides)."""

    bootstrap: str
    worker_id: str
    group: str = DEFAULT_GROUP
    topics: Topics = field(default_factory=Topics)
    client: dict[str, str] = field(default_factory=dict)
    consumer_client: dict[str, str] = field(default_factory=dict)
    producer_client: dict[str, str] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_timeout: float = DEFAULT_BATCH_TIMEOUT
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS
    exit_when_idle: float | None = None
    call_timeout: float = 60.0  # per transactional call (retriable errors are retried beyond it)
    startup_timeout: float = 15.0  # to reach the cluster at start-up before saying so

    @property
    def transactional_id(self) -> str:
        """This worker's transactional.id (see :func:`transactional_id`)."""
        return transactional_id(self.group, self.topics.input, self.worker_id)


def transactional_id(group: str, input_topic: str, worker_id: str) -> str:
    """Stable per worker slot, so a restart fences its predecessor and aborts its open transaction."""
    return f"cdrpipe-{group}-{input_topic}-{worker_id}"


_WORKER_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def validate_worker_id(worker_id: str) -> str:
    """Reject ids Kafka would refuse as group.instance.id (or that hide in logs)."""
    if not _WORKER_ID.match(worker_id):
        raise UsageError(f"--worker-id {worker_id!r}: use 1-200 characters from letters, digits, "
                         "'.', '_' and '-'")
    return worker_id


def claim_worker_id(group: str, input_topic: str, lock_dir: str | os.PathLike[str] | None = None,
                    hostname: str | None = None) -> tuple[str, IO[str]]:
    """``{hostname}-{slot}`` with the lowest slot no live worker on this host holds (flock).

    The lock is released when the process dies (even by SIGKILL), so the next worker started on
    this host takes the slot over, reuses the transactional.id and fences the dead worker's
    transaction at once. Keep the returned file open for the life of the worker.
    """
    base = Path(lock_dir or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    directory = base / "cdrpipe-workers"
    directory.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(f"{group}\0{input_topic}".encode()).hexdigest()[:12]
    host = re.sub(r"[^A-Za-z0-9._-]", "-", hostname or socket.gethostname())[:120] or "worker"
    for slot in range(4096):
        fh = open(directory / f"{tag}-{slot}.lock", "a")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return f"{host}-{slot}", fh
    raise FatalError(f"no free worker slot in {directory}; pass --worker-id")


def split_client_overrides(options: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Split -X settings into (both clients, consumer only, producer only) by ``consumer.``/``producer.``."""
    common: dict[str, str] = {}
    consumer: dict[str, str] = {}
    producer: dict[str, str] = {}
    for key, value in options.items():
        target, name = common, key
        if key.startswith("consumer."):
            target, name = consumer, key[len("consumer."):]
        elif key.startswith("producer."):
            target, name = producer, key[len("producer."):]
        if name in _PINNED:
            raise UsageError(f"-X {key}: cannot be set here ({_PINNED[name]})")
        target[name] = value
    return common, consumer, producer


def required_message_bytes(input_max_bytes: int) -> int:
    """Largest output message a record of ``input_max_bytes`` can become (base64 + envelope header)."""
    return 4 * math.ceil((input_max_bytes + 16) / 3) + 16 * 1024


def consumer_config(s: WorkerSettings, on_error: Callable[[KafkaError], None]) -> dict[str, Any]:
    """The consumer's librdkafka settings: read_committed, manual offsets, cooperative, static member."""
    return {
        "bootstrap.servers": s.bootstrap,
        "group.id": s.group,
        "group.instance.id": s.worker_id,
        "client.id": f"cdrpipe-{s.worker_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",  # a new group must not skip records (legal retention)
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,  # a dead worker's partitions move after 10 s
        "enable.partition.eof": False,
        # librdkafka stops fetching a partition for fetch.queue.backoff.ms (default 1000) once the
        # local queue holds queued.min.messages (100,000): a worker that reads faster than its
        # queue refills then sits idle for most of a second. Measured with bench/kafka_e2e.py: the
        # passthrough 130k -> 207k records/s, the pipeline 102k -> 110k.
        "fetch.queue.backoff.ms": 10,
        "error_cb": on_error,
        "logger": _rdkafka_log,
        **s.client, **s.consumer_client,
    }


def producer_config(s: WorkerSettings, message_max_bytes: int, on_error: Callable[[KafkaError], None],
                    on_delivery_error: Callable[[KafkaError, Message], None]) -> dict[str, Any]:
    """The transactional producer's settings: lz4 batches, murmur2 keys like Java clients, errors-only DRs."""
    return {
        "bootstrap.servers": s.bootstrap,
        "transactional.id": s.transactional_id,
        "client.id": f"cdrpipe-{s.worker_id}",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",  # same key -> same partition as Java/Kafka Streams clients
        "message.max.bytes": message_max_bytes,
        "queue.buffering.max.messages": max(100_000, 4 * s.batch_size),
        "delivery.report.only.error": True,
        "on_delivery": on_delivery_error,
        "error_cb": on_error,
        "logger": _rdkafka_log,
        **s.client, **s.producer_client,
    }


# --------------------------------------------------------------------------- the loop


@dataclass
class WorkerTotals(RunTotals):
    """The file runner's counts plus what only a Kafka worker has: transactions and rebalances."""

    commits: int = 0
    aborts: int = 0
    segments: int = 0
    first_batch_at: float = 0.0  # time.monotonic() when the first batch was routed
    last_commit_at: float = 0.0  # time.monotonic() of the last commit

    def summary(self) -> dict[str, int]:
        """Counts for the exit line (in == retention == analytics + dlq + suppressed)."""
        return {**super().summary(), "commits": self.commits, "aborts": self.aborts}


class _Abort(Exception):
    """The transaction in flight must be aborted and its batch consumed again (``cause`` is a short code)."""

    def __init__(self, cause: str, error: KafkaError | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.error = error


@dataclass
class _Batch:
    """One routed batch on its way through a transaction."""

    routed: RoutedBatch
    records: int
    commit: list[TopicPartition]  # the next offset to read, per partition
    first: dict[int, int]  # where to rewind to, per partition, if the transaction aborts
    started: float
    group_metadata: Any = None  # the consumer's group metadata (generation, member id) when handed over
    aborted: str | None = None  # the abort cause, once the transaction thread gave up on it
    fatal: FatalError | None = None
    format_hint: tuple[str, str] | None = None  # (looks like, hint) when no record was readable as --format


def _error_text(err: KafkaError) -> str:
    """A KafkaError as its code name and librdkafka's text (never carries record contents)."""
    return f"{err.name()} ({err.str()})"


def _merge_min(into: dict[int, int], offsets: Mapping[int, int]) -> None:
    """Keep the lowest offset per partition (the rewind point covering every dropped batch)."""
    for p, o in offsets.items():
        if o < into.get(p, o + 1):
            into[p] = o


class TransactionLoop:
    """Consume a batch, route it, and commit its outputs with its offsets in one transaction.

    Two stages overlap: this thread consumes and routes batch N+1 while a transaction thread
    produces and commits batch N. The transaction thread is the only user of the producer; the
    consumer stays on this thread. Before routing is handed on, and inside ``on_revoke``/``on_lost``,
    this thread waits for the transaction in flight, so partitions are never revoked with a batch
    half-written, and a failed batch is rewound before anything newer is committed.
    """

    def __init__(self, router: Router, settings: WorkerSettings, metrics: WorkerMetrics | None = None,
                 progress: Callable[[WorkerTotals, float], None] | None = None) -> None:
        self.router = router
        self.settings = settings
        self.metrics = metrics
        self.totals = WorkerTotals()
        self._progress_hook = progress
        self._stop = False
        self._abort_in_flight = False
        self._fatal: KafkaError | None = None
        self._assigned: set[int] = set()
        self._revoked_during_consume = False
        self._delivery_errors: Counter[tuple[str, int]] = Counter()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._txn_thread: ThreadPoolExecutor | None = None
        self._in_flight: Future[_Batch] | None = None
        self._rewind: dict[int, int] = {}
        self._consecutive_aborts = 0
        self._last_activity: float | None = None  # first assignment, then every batch and rebalance
        self._last_lag: dict[int, int] = {}
        self._reported_in = 0
        self._needed_bytes = required_message_bytes(KAFKA_DEFAULT_MAX_MESSAGE)
        self._reported_at = time.monotonic()
        self._format_warned: tuple[str | None, float] = (None, 0.0)  # the last format warning: look, when

    # -- control ---------------------------------------------------------------------------

    def request_stop(self, *, abort: bool = False) -> None:
        """Stop after the batch in flight (commit it); ``abort`` aborts it instead. Signal-safe."""
        self._stop = True
        self._abort_in_flight = self._abort_in_flight or abort

    # -- callbacks -------------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        """Client-level errors: fatal ones stop the loop; others are logged (librdkafka retries)."""
        if err.fatal():
            self._fatal = err
            self._stop = True
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("no Kafka broker reachable at %s; retrying", self.settings.bootstrap)
        else:
            log.debug("kafka client: %s", _error_text(err))

    def _on_delivery_error(self, err: KafkaError | None, msg: Message) -> None:
        """Only failed deliveries arrive here (delivery.report.only.error): count them by topic and code."""
        if err is not None:
            self._delivery_errors[(msg.topic() or "?", err.code())] += 1

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update(tp.partition for tp in partitions)
        self._last_activity = time.monotonic()
        log.info("worker %s: assigned %d partition(s) of %s %s; now %d", self.settings.worker_id,
                 len(partitions), self.settings.topics.input, sorted(tp.partition for tp in partitions),
                 len(self._assigned))
        if self.metrics:
            self.metrics.observe_rebalance("assign", len(self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight commits (or aborts) before librdkafka hands the partitions on.
        self._settle()
        self._drop(partitions, "revoke")

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session expired): the batch in flight carries a stale generation, so the group
        # coordinator refuses its offsets and the transaction aborts; nothing is written twice.
        log.warning("worker %s: lost %d partition(s) (session expired?); another worker owns them now",
                    self.settings.worker_id, len(partitions))
        self._settle()
        self._drop(partitions, "lost")

    def _drop(self, partitions: list[TopicPartition], kind: str) -> None:
        gone = {tp.partition for tp in partitions}
        self._assigned.difference_update(gone)
        # A rewind pending for a partition that left (the batch in flight aborted just now, with the
        # stale generation) must not be applied: whoever owns it next starts from its committed
        # offset. If this worker gets it straight back, seeking to the old offset would route again
        # records the owner in between had already committed.
        for p in gone:
            self._rewind.pop(p, None)
        self._last_activity = time.monotonic()
        self._revoked_during_consume = True
        if kind == "revoke":
            log.info("worker %s: revoked %d partition(s) %s; now %d", self.settings.worker_id,
                     len(partitions), sorted(tp.partition for tp in partitions), len(self._assigned))
        if self.metrics:
            self.metrics.observe_rebalance(kind, len(self._assigned))

    # -- setup -----------------------------------------------------------------------------

    def _output_message_bytes(self) -> int:
        """The producer's message.max.bytes: enough for any record the input topic accepts.

        Also warns when an output topic's max.message.bytes is smaller than that (a record near
        the input's limit could then never be committed).
        """
        from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

        s = self.settings
        limits: dict[str, int] = {}
        try:
            admin = AdminClient({"bootstrap.servers": s.bootstrap, "logger": _rdkafka_log, **s.client})
            resources = [ConfigResource(ResourceType.TOPIC, t) for t in (s.topics.input, *s.topics.outputs)]
            for res, fut in admin.describe_configs(resources, request_timeout=s.startup_timeout).items():
                entry = fut.result(timeout=s.startup_timeout).get("max.message.bytes")
                if entry is not None and entry.value is not None:
                    limits[res.name] = int(entry.value)
        except Exception as exc:  # noqa: BLE001 - describe may be denied by ACLs; the check is advisory
            log.info("could not read topic max.message.bytes (%s); assuming Kafka's default",
                     type(exc).__name__)
        needed = required_message_bytes(limits.get(s.topics.input, KAFKA_DEFAULT_MAX_MESSAGE))
        self._needed_bytes = needed
        small = {t: limits.get(t, KAFKA_DEFAULT_MAX_MESSAGE) for t in (s.topics.retention, s.topics.dlq)}
        small = {t: n for t, n in small.items() if n < needed}
        if small:
            log.warning("%s accept(s) messages up to %s bytes, but a record as large as %s allows is "
                        "sealed into up to %d bytes and would stop this worker: set max.message.bytes=%d "
                        "on %s", ", ".join(small), "/".join(map(str, small.values())), s.topics.input,
                        needed, needed, " and ".join(small))
        configured = s.client.get("message.max.bytes") or s.producer_client.get("message.max.bytes")
        return int(configured) if configured else max(needed, 1_000_000)

    def _check_topics(self, consumer: Consumer) -> None:
        """Fail early, with the command to fix it, when a topic does not exist."""
        s = self.settings
        try:
            md = consumer.list_topics(timeout=s.startup_timeout)
        except KafkaException as exc:
            raise FatalError(f"cannot reach Kafka at {s.bootstrap}: {_error_text(exc.args[0])}; check "
                             "--bootstrap-servers and the -X security settings") from None
        missing = [t for t in (s.topics.input, *s.topics.outputs)
                   if t not in md.topics or md.topics[t].error is not None]
        if missing:
            prefix = s.topics.input[:-len(RAW)] if s.topics.input.endswith(RAW) else ""
            hint = f" --prefix {prefix}" if prefix else ""
            raise FatalError(f"topic(s) {', '.join(missing)} do not exist on {s.bootstrap}; create them "
                             f"with `cdrpipe topics apply --bootstrap-servers {s.bootstrap}{hint}`")

    def _open(self) -> tuple[Consumer, Producer]:
        """Create the clients, fence any older instance of this worker, then join the group."""
        s = self.settings
        try:
            consumer = Consumer(consumer_config(s, self._on_error))
        except KafkaException as exc:
            raise UsageError(f"invalid Kafka client setting: {exc.args[0].str()}") from None
        try:
            self._check_topics(consumer)
            try:
                producer = Producer(producer_config(s, self._output_message_bytes(), self._on_error,
                                                    self._on_delivery_error))
            except KafkaException as exc:
                raise UsageError(f"invalid Kafka client setting: {exc.args[0].str()}") from None
            self._producer = producer
            try:
                self._call(lambda: producer.init_transactions(s.call_timeout), "init_transactions")
            except _Abort as exc:
                raise FatalError(f"could not initialise transactions ({exc.cause}); check that the cluster "
                                 "supports transactions (transaction.state.log.* settings)") from None
            consumer.subscribe([s.topics.input], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
        except BaseException:
            consumer.close()
            raise
        log.info("worker %s: transactional.id %s, group %s, reading %s", s.worker_id,
                 s.transactional_id, s.group, s.topics.input)
        return consumer, producer

    # -- errors ----------------------------------------------------------------------------

    def _fatal_error(self, err: KafkaError, where: str) -> FatalError:
        """The exception that ends the run, with what the operator should do."""
        s = self.settings
        code = err.code()
        if code in _FENCED:
            return FatalError(
                f"worker {s.worker_id} was fenced during {where} ({err.name()}): a newer worker with the same id "
                f"(transactional.id {s.transactional_id}) took over, or the coordinator aborted a transaction that "
                "outlived transaction.timeout.ms (was the process paused?). Its batch in flight was not committed "
                "and nothing is lost. Restart it; if two live workers share an id, give each its own --worker-id")
        if code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
            return FatalError(f"{where} failed: {_error_text(err)}; a record sealed for retention or the DLQ is "
                              f"larger than an output topic accepts: set max.message.bytes={self._needed_bytes} on "
                              f"{s.topics.retention} and {s.topics.dlq} (cdrpipe topics apply) and restart")
        if code in _OPERATOR_ERRORS:
            return FatalError(f"{where} failed: {_error_text(err)}; {_OPERATOR_ERRORS[code]}")
        return FatalError(f"{where} failed with a fatal Kafka error: {_error_text(err)}; restart the worker "
                          "(it resumes from the last committed batch)")

    def _call(self, fn: Callable[[], Any], where: str) -> Any:
        """Run one transactional API call, retrying retriable errors with backoff.

        Raises ``_Abort`` when the transaction must be aborted and ``FatalError`` when the worker must stop.
        """
        delay = _BACKOFF_START
        for attempt in range(1, _RETRY_CALLS + 1):
            try:
                return fn()
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.fatal() or err.code() in _FENCED or err.code() in _OPERATOR_ERRORS:
                    raise self._fatal_error(err, where) from None
                if err.txn_requires_abort() or not err.retriable() or attempt == _RETRY_CALLS:
                    raise _Abort(f"{where}:{err.name()}", err) from None
                log.warning("%s: %s; retry %d in %.1f s", where, _error_text(err), attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
        raise AssertionError("unreachable")

    # -- the transaction thread ----------------------------------------------------------------

    def _produce(self, topic: str, output: Output) -> None:
        """Queue one output's messages; a full local queue is drained by polling, not dropped.

        The messages are queued by ``map`` over ``produce`` (no bytecode per message), in chunks so
        the consumer thread gets the GIL in between. ``produce`` takes its arguments positionally:
        (topic, value, key, partition, callback, on_delivery, timestamp, headers); partition -1 is
        librdkafka's "any" (the partitioner picks), timestamp 0 is "now", callback None the default.
        """
        producer = self._producer
        assert producer is not None
        produce = producer.produce
        values = output.values()
        n = len(values)
        keys, headers = output.keys, output.headers
        shared = output.headers_shared
        value_it = iter(values)
        key_it = repeat(None) if keys is None else iter(keys)
        header_it = repeat(headers) if shared else iter(headers)
        left = n
        while left:
            step = min(left, _PRODUCE_CHUNK)
            try:
                # `topic` first: map stops on it before taking a value past the chunk.
                _drain(map(produce, repeat(topic, step), value_it, key_it, repeat(-1), repeat(None), repeat(None),
                           repeat(0), header_it))
                left -= step
            except BufferError:
                i = n - length_hint(value_it) - 1  # the message refused (its arguments were taken)
                key = None if keys is None else keys[i]
                message_headers = headers if shared else headers[i]
                while True:
                    producer.poll(0.05)  # a fatal error raised here is a KafkaException: handled by the caller
                    try:
                        produce(topic, values[i], key, headers=message_headers)
                        break
                    except BufferError:
                        continue
                left = n - i - 1

    def _produce_outputs(self, routed: RoutedBatch) -> None:
        """Queue the batch's retention, DLQ and analytics messages (inside the open transaction).

        The core hands each output over as ready messages (values, keys, headers): nothing is parsed
        here. The few large retention segments go first, so librdkafka compresses and sends them
        while the many analytics messages are still being queued.
        """
        t = self.settings.topics
        for topic, output in ((t.retention, routed.retention), (t.dlq, routed.dlq), (t.analytics, routed.analytics)):
            if len(output):
                self._produce(topic, output)

    def _transact(self, batch: _Batch) -> _Batch:
        """Write one batch and its offsets in one transaction; on failure abort it (transaction thread).

        Returns the batch with ``aborted`` or ``fatal`` set when it was not committed.
        """
        producer, s = self._producer, self.settings
        assert producer is not None
        self._delivery_errors.clear()
        try:
            self._call(producer.begin_transaction, "begin_transaction")
            try:
                self._produce_outputs(batch.routed)
            except KafkaException as exc:  # synchronous produce errors (e.g. over message.max.bytes)
                err = exc.args[0]
                if err.code() in _OPERATOR_ERRORS or err.fatal():
                    raise self._fatal_error(err, "produce") from None
                raise _Abort(f"produce:{err.name()}", err) from None
            # Deliver everything before committing, watching for refusals: once a message of the
            # transaction fails, librdkafka holds back the rest until the abort, so a plain flush (or
            # the one inside commit_transaction) would wait out its whole timeout.
            deadline = time.monotonic() + s.call_timeout
            while True:
                try:
                    remaining = producer.flush(0.2)
                except KafkaException as exc:  # fatal client errors are raised from the callback queue
                    raise self._fatal_error(exc.args[0], "flush") from None
                if not remaining or self._delivery_errors or time.monotonic() > deadline:
                    break
            refused = [(topic, code, n) for (topic, code), n in self._delivery_errors.items()]
            if refused:
                topic, code, n = refused[0]
                if code in _OPERATOR_ERRORS:
                    raise self._fatal_error(KafkaError(code), f"writing {n} message(s) to {topic}")
                raise _Abort(f"delivery:{KafkaError(code).name()}")
            if remaining:
                raise _Abort("flush:timeout")
            if self._abort_in_flight:
                raise _Abort("shutdown")
            # The group metadata (generation, member id) is what fences a zombie: a worker whose
            # partitions were reassigned has a stale generation and the coordinator refuses these offsets.
            self._call(lambda: producer.send_offsets_to_transaction(
                batch.commit, batch.group_metadata, s.call_timeout), "send_offsets_to_transaction")
            self._call(lambda: producer.commit_transaction(s.call_timeout), "commit_transaction")
        except _Abort as abort:
            batch.aborted = abort.cause
            self._serve(batch)  # failed deliveries arrive now: a refused message explains the abort
            undeliverable = [(topic, code, n) for (topic, code), n in self._delivery_errors.items()
                             if code in _OPERATOR_ERRORS]
            if undeliverable:
                topic, code, n = undeliverable[0]
                batch.fatal = self._fatal_error(KafkaError(code), f"writing {n} message(s) to {topic}")
            self._abort_transaction(batch)
        except FatalError as exc:
            batch.fatal = exc
            self._abort_transaction(batch)
        self._serve(batch)
        return batch

    def _serve(self, batch: _Batch) -> None:
        """Serve the producer's callbacks; a fatal client error raised there stops the worker."""
        try:
            self._producer.poll(0)  # type: ignore[union-attr]
        except KafkaException as exc:
            if batch.fatal is None:
                batch.fatal = self._fatal_error(exc.args[0], "the transaction")

    def _abort_transaction(self, batch: _Batch) -> None:
        """Abort the open transaction (its messages become invisible to read_committed readers)."""
        producer = self._producer
        assert producer is not None
        try:
            self._call(lambda: producer.abort_transaction(self.settings.call_timeout), "abort_transaction")
        except (_Abort, FatalError) as exc:
            if batch.fatal is None:
                batch.fatal = exc if isinstance(exc, FatalError) else FatalError(
                    f"could not abort a transaction ({exc}); restart the worker (the broker aborts it after "
                    "transaction.timeout.ms and the batch is read again)")

    # -- this thread -------------------------------------------------------------------------

    def _settle(self) -> None:
        """Wait for the transaction in flight; count it if committed, else schedule a rewind."""
        future, self._in_flight = self._in_flight, None
        if future is None:
            return
        batch = future.result()
        if batch.fatal is not None:
            raise batch.fatal
        if batch.aborted is not None:
            log.warning("worker %s: transaction aborted (%s); %d record(s) will be read again",
                        self.settings.worker_id, batch.aborted, batch.records)
            self.totals.aborts += 1
            if self.metrics:
                self.metrics.observe_abort(batch.aborted.split(":")[0])
            _merge_min(self._rewind, batch.first)
            return
        self._consecutive_aborts = 0
        routed = batch.routed
        self.totals.commits += 1
        self.totals.counts.update(routed.counts)
        self.totals.counts.update({NULLED + k: v for k, v in routed.nulled.items()})
        self.totals.dlq_reasons.update(routed.dlq_reasons)
        self.totals.segments += len(routed.retention)
        self.totals.last_commit_at = time.monotonic()
        if self.metrics:
            self.metrics.observe_commit(routed.counts, routed.dlq_reasons, batch.records,
                                        time.monotonic() - batch.started, len(routed.retention), routed.nulled)
            self.metrics.observe_format(batch.format_hint[0] if batch.format_hint else None,
                                        routed.counts.get("dlq", 0) < routed.counts.get("in", 0))
        if batch.format_hint is not None:
            self._warn_format(*batch.format_hint)

    def _warn_format(self, looks_like: str, hint: str) -> None:
        """Log a batch of another format (or a CSV header in another order): at once, then at most once a minute.

        The worker keeps running: the records are in the DLQ and retention (a header's rows as read),
        and a producer that changed format may change back; the metric
        ``cdrpipe_format_mismatch_batches`` counts them.
        """
        now = time.monotonic()
        last_look, last_at = self._format_warned
        if looks_like == last_look and now - last_at < FORMAT_WARNING_SECONDS:
            return
        self._format_warned = (looks_like, now)
        log.warning("worker %s: %s; the worker keeps running "
                    "(metric cdrpipe_format_mismatch_batches_total)", self.settings.worker_id, hint)

    def _route(self, msgs: list[Message]) -> _Batch | None:
        """Unpack a consumed batch with C-level maps and route it through the core."""
        started = time.monotonic()
        if not self.totals.first_batch_at:
            self.totals.first_batch_at = started
        if any(map(Message.error, msgs)):
            msgs = self._without_errors(msgs)
        if self._revoked_during_consume:  # messages fetched before a revoke are no longer ours
            msgs = [m for m in msgs if m.partition() in self._assigned]
        self._revoked_during_consume = False
        if not msgs:
            return None
        values = list(map(Message.value, msgs))
        if None in values:  # tombstones: route as empty records (they reach the DLQ and retention)
            values = [b"" if v is None else v for v in values]
        partitions = list(map(Message.partition, msgs))
        offsets = list(map(Message.offset, msgs))
        last = dict(zip(partitions, offsets))
        topic = self.settings.topics.input
        routed = self.router.route(values, Source(topic, partitions, offsets), want_keys=True)
        batch = _Batch(routed, len(msgs), [TopicPartition(topic, p, o + 1) for p, o in last.items()],
                       dict(zip(reversed(partitions), reversed(offsets))), started)
        if routed.counts.get("dlq", 0) == len(values):  # not one record read: a wrong --format or producer?
            hint = format_mismatch(self.router.config.format, values, routed.dlq_reasons, batch="a batch",
                                   unit="messages")
            if hint is not None:
                look = sniff(values)
                batch.format_hint = (look.label if look is not None else "unknown",
                                     f"{hint}; the records went to the DLQ and retention")
        elif routed.dlq_reasons.get(HEADER_MISMATCH):  # the rows after it are read in the wrong columns
            batch.format_hint = (HEADER_MISMATCH, f"{HEADER_MISMATCH_HINT}; the batch was routed as read")
        return batch

    def _rewind_now(self, dropped: _Batch | None) -> None:
        """Seek back to the first record of every aborted or dropped batch, then back off."""
        if dropped is not None:
            _merge_min(self._rewind, dropped.first)
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.topics.input
        rewind, self._rewind = self._rewind, {}
        for partition, offset in sorted(rewind.items()):
            if partition not in self._assigned:
                continue  # its new owner starts from the last committed offset
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # Skipping ahead would lose the batch: stop; a restart resumes from the committed offset.
                raise FatalError(f"could not rewind {topic} partition {partition} after an aborted "
                                 f"transaction ({_error_text(exc.args[0])}); restart the worker") from None
        self._consecutive_aborts += 1
        delay = min(_BACKOFF_START * 2 ** (self._consecutive_aborts - 1), _BACKOFF_MAX)
        end = time.monotonic() + delay
        while not self._stop and time.monotonic() < end:
            time.sleep(min(0.1, delay))

    def _without_errors(self, msgs: list[Message]) -> list[Message]:
        """Drop error events from a consumed batch; a fatal one ends the run."""
        kept = []
        for m in msgs:
            err = m.error()
            if err is None:
                kept.append(m)
            elif err.fatal() or err.code() in _FENCED or err.code() in _OPERATOR_ERRORS:
                raise self._fatal_error(err, "consume")
            elif err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                raise FatalError(f"input topic {self.settings.topics.input} does not exist (any more); "
                                 "create it with `cdrpipe topics apply`")
            else:
                log.warning("consumer: %s", _error_text(err))
        return kept

    def _idle_for(self, now: float) -> float:
        """Seconds with nothing to do: since this worker joined, or its last batch or rebalance."""
        if self._last_activity is None or self._in_flight is not None:
            return 0.0
        return now - self._last_activity

    def _group_done(self) -> bool:
        """True when the group has committed every partition of the input to its end (a backfill is over).

        Asks the cluster (committed offsets, watermarks), so it is only called once the worker is idle.
        """
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.topics.input
        try:
            md = consumer.list_topics(topic, timeout=5)
            tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
            for tp in consumer.committed(tps, timeout=5):
                _low, high = consumer.get_watermark_offsets(tp, timeout=5)
                if high > 0 and tp.offset < high:
                    return False
        except KafkaException:
            return False  # e.g. offsets of a transaction still pending: not done yet
        return True

    # -- reporting -------------------------------------------------------------------------

    def _lags(self) -> dict[int, int]:
        """Records behind the end of each owned partition, from cached watermarks (no broker call)."""
        assert self._consumer is not None
        topic = self.settings.topics.input
        lags = partition_lags(self._consumer, [TopicPartition(topic, p) for p in sorted(self._assigned)])
        if lags is not None:
            self._last_lag = lags
        return self._last_lag

    def _report(self, started: float, final: bool = False) -> None:
        """One summary line (counts only, never contents) and the progress hook.

        The rate is over the interval since the last line; on the final line, over the time
        from the first batch read to the last commit (idle time excluded).
        """
        t = self.totals
        c = t.counts
        now = time.monotonic()
        if final:
            busy = (t.last_commit_at - t.first_batch_at) if t.first_batch_at else 0.0
            rate = c["in"] / busy if busy > 0 else 0.0
        else:
            rate = (c["in"] - self._reported_in) / max(now - self._reported_at, 1e-9)
        self._reported_in, self._reported_at = c["in"], now
        lag = self._last_lag
        log.info("worker %s%s: in %s (%s/s), analytics %s, retention %s, dlq %s, suppressed %s; "
                 "%d commits, %d aborts; lag %s over %d partition(s)",
                 self.settings.worker_id, " done" if final else "", f"{c['in']:,}", f"{rate:,.0f}",
                 f"{c['analytics']:,}", f"{c['retention']:,}", f"{c['dlq']:,}", f"{c['suppressed']:,}",
                 t.commits, t.aborts, f"{sum(lag.values()):,}", len(self._assigned))
        if self._progress_hook:
            self._progress_hook(t, now - started)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> WorkerTotals:
        """Process batches until ``request_stop`` (or idle for ``exit_when_idle`` s); return the totals."""
        s = self.settings
        self._consumer, self._producer = self._open()
        self._txn_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdrpipe-txn")
        consumer = self._consumer
        started = last_report = last_lag = last_done_check = self._reported_at = time.monotonic()
        # Each batch makes a Message object per record, all alive at once: at CPython's default
        # threshold (700) that set off ~30 cyclic collections a batch (~15 ms, holding the GIL that
        # both threads need). Collect only when that many more objects stay alive (a real leak of
        # cycles still gets collected); the process's threshold is restored on the way out.
        gc_threshold = gc.get_threshold()
        gc.set_threshold(max(gc_threshold[0], _GC_OBJECTS_PER_RECORD * s.batch_size), *gc_threshold[1:])
        try:
            while not self._stop:
                msgs = consumer.consume(s.batch_size, s.batch_timeout)
                if self._fatal is not None:
                    raise self._fatal_error(self._fatal, "kafka client")
                batch = self._route(msgs) if msgs else None
                self._settle()  # the previous transaction must end before the next begins
                if self._rewind:
                    self._rewind_now(batch)
                elif batch is not None:
                    # Taken here, not in the transaction thread: librdkafka answers it from the consumer
                    # group, which waits while on_revoke/on_lost (which wait for that thread) run.
                    batch.group_metadata = consumer.consumer_group_metadata()
                    self._in_flight = self._txn_thread.submit(self._transact, batch)
                now = time.monotonic()
                if msgs:
                    self._last_activity = now
                if now - last_lag >= min(2.0, s.progress_seconds):
                    last_lag = now
                    lags = self._lags()
                    if self.metrics:
                        self.metrics.set_lag(lags)
                if now - last_report >= s.progress_seconds:
                    last_report = now
                    self._report(started)
                if s.exit_when_idle is not None and not msgs and self._idle_for(now) >= s.exit_when_idle \
                        and now - last_done_check >= 1.0:
                    last_done_check = now
                    if self._group_done():
                        log.info("worker %s: the group has read %s to its end and no input came for %.0f s; "
                                 "exiting", s.worker_id, s.topics.input, s.exit_when_idle)
                        break
            self._settle()
            if self._fatal is not None:
                raise self._fatal_error(self._fatal, "kafka client")
            self._report(started, final=True)
            return self.totals
        finally:
            gc.set_threshold(*gc_threshold)
            self._close()

    def _close(self) -> None:
        """Leave cleanly: wait for (or abandon, on a fatal error) the transaction in flight, close clients."""
        if self._in_flight is not None:
            try:
                self._in_flight.result()
            except Exception as exc:  # noqa: BLE001 - already failing; the broker aborts what is open
                log.debug("transaction thread: %s", type(exc).__name__)
            self._in_flight = None
        if self._txn_thread is not None:
            self._txn_thread.shutdown(wait=True)
            self._txn_thread = None
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError, FatalError) as exc:
                log.debug("consumer close: %s", type(exc).__name__)
        if producer is not None:
            producer.flush(5)
