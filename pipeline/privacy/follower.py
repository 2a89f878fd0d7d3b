"""Follow the compacted ``privacy.suppressions`` topic into a live :class:`Suppressions` set.

The Kafka worker calls this at start and keeps it running: it reads the whole compacted topic
(the privacy app's current answer per token), blocks the worker's start until it has caught up
with the end offsets it saw at start, then keeps ``suppressions.replace(...)`` current while the
worker runs, so an objection reaches the routing within about a second of being published.

Why it is built this way:

* **No consumer group.** Every worker needs *all* suppressions, not a share of them, so the
  follower assigns every partition itself from the beginning and never commits offsets. The
  ``group.id`` is only there because librdkafka insists (a caller's ``group.id`` in ``conf`` is
  kept); the group never forms, and the "group authorization failed" librdkafka reports for a
  principal without rights on it is ignored (checked under the ACL matrix's worker principal).
* **Caught up means "at the end offsets seen at start".** A partition is done when the consumer
  reports end-of-partition or its position reaches the high watermark sampled before reading;
  records published while loading are applied too, but are not waited for.
* **One swap per poll batch.** ``Suppressions.replace`` rebuilds a sorted column; the follower
  applies a whole batch to its own dict, then swaps once (and not at all during the initial
  load until it is complete, so the worker never routes with a half-loaded set).
* **Fail closed.** A value that is not a readable suppression record keeps its token
  suppressed (a wrong suppression hides a subscriber from analytics; a wrong release breaks an
  objection). A tombstone (null value) or ``active: false`` releases the token.
* Nothing is logged but counts and partition/offset coordinates.

Public API (what the Kafka worker uses)::

    follower = SuppressionFollower(bootstrap, suppressions, topic="privacy.suppressions", conf={...})
    follower.start(timeout=30.0)        # starts the thread, blocks until caught up; raises
                                        # SuppressionLoadError on timeout / missing topic / auth failure
    follower.caught_up, follower.running, follower.active_count, follower.updates, follower.last_update,
    follower.current_at                 # wall time it last saw every partition read to its end (metrics)
    follower.error                      # check `running` in the worker loop: False means stop (fail closed)
    follower.wait_until_caught_up(timeout) -> bool
    follower.stop(timeout=10.0)         # idempotent; closes the consumer
    # or: with SuppressionFollower(...) as f: ...   (start(30) on enter, stop() on exit)
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.errors import FatalError
from pipeline.core.router import Suppressions
from pipeline.topics import SUPPRESSIONS

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 30.0
#: Settings the follower's correctness rests on; -X cannot change them.
_PINNED = {"enable.auto.commit": "false", "enable.auto.offset.store": "false", "enable.partition.eof": "true",
           "auto.offset.reset": "earliest", "isolation.level": "read_committed"}


#: Errors that retrying cannot fix.
_FATAL_CODES = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED)
#: librdkafka looks up the coordinator of ``group.id`` even for a consumer that only assigns and
#: never commits; the follower needs no group, so a principal without group rights (the ACL
#: matrix gives the worker only its own group) gets this error and nothing else is affected.
_IGNORED_CODES = (KafkaError.GROUP_AUTHORIZATION_FAILED,)


class SuppressionLoadError(FatalError):
    """The suppression topic could not be loaded (missing topic, no broker, no permission, timeout)."""


def read_suppression(value: bytes | None) -> tuple[bool, bool]:
    """``(active, well_formed)`` of a ``privacy.suppressions`` value; a tombstone is inactive.

    Anything unreadable counts as active: fail closed.
    """
    if value is None:
        return False, True
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return True, False
    if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
        return True, False
    return bool(doc["active"]), True


def parse_suppression(value: bytes | None) -> bool:
    """Whether a value keeps its token suppressed (see :func:`read_suppression`)."""
    return read_suppression(value)[0]


class SuppressionFollower:
    """A daemon thread that mirrors ``topic`` into ``suppressions`` (see the module docstring)."""

    def __init__(self, bootstrap: str, suppressions: Suppressions, topic: str = SUPPRESSIONS,
                 conf: Mapping[str, str] | None = None, *, poll_timeout: float = 0.2,
                 metadata_interval: float = 30.0,
                 on_update: Callable[[int], None] | None = None) -> None:
        self.suppressions = suppressions
        self.topic = topic
        self._conf: dict[str, Any] = {"group.id": f"cdrpipe-suppression-follower-{uuid.uuid4().hex[:8]}",
                                      **dict(conf or {}), "bootstrap.servers": bootstrap, **_PINNED}
        self._poll_timeout = poll_timeout
        self._metadata_interval = metadata_interval
        self._on_update = on_update
        self._state: dict[str, bool] = {}
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._done = threading.Event()  # set when the thread ends (stopped or failed)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        #: The last transient problem while looking for the topic (for the start timeout's message).
        self.last_error: str | None = None
        #: Swaps into ``suppressions`` since start, and the monotonic time of the last one.
        self.updates = 0
        self.last_update: float | None = None
        self.malformed = 0
        #: Wall-clock time the follower last saw every partition read to its end (checked every
        #: ``metadata_interval``): the worker exports its age, an alert fires when it grows.
        self.current_at: float | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        """True once the topic was read to the end offsets seen at start."""
        return self._caught_up.is_set()

    @property
    def running(self) -> bool:
        """True while the thread follows the topic. False after stop() or a failure (``error``):
        the Kafka worker should then stop too rather than route with a list that no longer moves."""
        return self._thread is not None and not self._done.is_set() and not self._stop.is_set()

    @property
    def active_count(self) -> int:
        """Tokens currently suppressed."""
        return len(self.suppressions)

    def start(self, timeout: float | None = DEFAULT_START_TIMEOUT) -> "SuppressionFollower":
        """Start following; with a ``timeout`` block until caught up (raises SuppressionLoadError)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("SuppressionFollower is already started")
            self._thread = threading.Thread(target=self._run, name=f"suppressions:{self.topic}", daemon=True)
            self._thread.start()
        if timeout is not None and not self.wait_until_caught_up(timeout):
            error = self.error
            self.stop()
            if error is not None:
                raise SuppressionLoadError(f"could not load {self.topic}: {error}") from None
            seen = f" (last error: {self.last_error})" if self.last_error else ""
            raise SuppressionLoadError(
                f"{self.topic} was not read to its end within {timeout:g} s{seen}; check the broker, the "
                "topic and read permission (the worker must not route analytics without the suppression list)")
        return self

    def wait_until_caught_up(self, timeout: float | None = None) -> bool:
        """Block until caught up (True), the thread failed or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._caught_up.is_set():
            if self._done.is_set():
                return False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._caught_up.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and close the consumer (safe to call twice, or before start)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> "SuppressionFollower":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = Consumer(self._conf, logger=log)
            partitions, pending = self._discover(consumer)
            if partitions is None:
                return  # stopped while the topic was not available
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            known = set(partitions)
            ignored_seen = False
            next_metadata = time.monotonic() + self._metadata_interval
            if not pending:
                self._swap()
            while not self._stop.is_set():
                # Wait for one record, then take what else is there without waiting: consume(n, t)
                # would hold every update back for the whole timeout unless n records arrive.
                msgs = consumer.consume(1, self._poll_timeout)
                if msgs:
                    msgs += consumer.consume(999, 0)
                changed = False
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.pop(msg.partition(), None)
                            continue
                        if err.fatal() or err.code() in _FATAL_CODES:
                            raise KafkaException(err)
                        if err.code() in _IGNORED_CODES:
                            if not ignored_seen:
                                ignored_seen = True
                                log.debug("suppression follower: %s (no group is needed; ignored)", err.str())
                            continue
                        log.warning("suppression follower: %s (retrying)", err.str())
                        continue
                    changed |= self._apply(msg)
                    end = pending.get(msg.partition())
                    if end is not None and msg.offset() + 1 >= end:
                        pending.pop(msg.partition(), None)
                if self._caught_up.is_set():
                    if changed:
                        self._swap()
                elif not pending:
                    self._swap()
                if time.monotonic() >= next_metadata:
                    next_metadata = time.monotonic() + self._metadata_interval
                    known = self._assign_new_partitions(consumer, known)
                    self._check_current(consumer, known)
        except BaseException as exc:  # noqa: BLE001  (reported to the caller through .error)
            self.error = exc
            log.error("suppression follower for %s stopped: %s", self.topic, _describe(exc))
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception:  # noqa: BLE001  (closing after a failure is best effort)
                    pass
            self._done.set()

    def _discover(self, consumer: Consumer) -> tuple[list[int] | None, dict[int, int]]:
        """Partitions and end offsets, retried until stopped: right after a topic is created its
        leaders are not elected yet ("not leader for partition"), which is not a reason to fail.
        Authorisation failures end the thread at once; the last transient error is kept for
        ``start()``'s timeout message."""
        delay = 0.1
        while not self._stop.is_set():
            try:
                partitions = self._partitions(consumer)
                return partitions, self._end_offsets(consumer, partitions)
            except (KafkaException, SuppressionLoadError) as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is not None and (err.fatal() or err.code() in _FATAL_CODES):
                    raise
                self.last_error = _describe(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
        return None, {}

    def _partitions(self, consumer: Consumer) -> list[int]:
        md = consumer.list_topics(self.topic, timeout=10)
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            reason = tmd.error.str() if tmd is not None and tmd.error is not None else "no partitions"
            raise SuppressionLoadError(f"topic {self.topic} is not available ({reason}); "
                                       "create it with `cdrpipe topics apply`")
        return sorted(tmd.partitions)

    def _end_offsets(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """Partitions that hold data, with the high watermark to read up to."""
        pending = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)
            if high > low:
                pending[p] = high
        return pending

    def _assign_new_partitions(self, consumer: Consumer, known: set[int]) -> set[int]:
        """Partitions added to the topic while running are read from their beginning."""
        try:
            now = set(self._partitions(consumer))
        except (KafkaException, SuppressionLoadError):
            return known
        new = sorted(now - known)
        if new:
            consumer.incremental_assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in new])
            log.info("suppression follower: reading %d new partition(s) of %s", len(new), self.topic)
        return known | set(new)

    def _check_current(self, consumer: Consumer, partitions: set[int]) -> None:
        """Move ``current_at`` to now when every partition's position has reached its high watermark."""
        try:
            ends = self._end_offsets(consumer, sorted(partitions))
            positions = consumer.position([TopicPartition(self.topic, p) for p in ends])
        except KafkaException:
            return  # the broker did not answer: the list is not known to be current, and its age grows
        if all(tp.offset >= ends[tp.partition] for tp in positions):
            self.current_at = time.time()

    def _apply(self, msg: Any) -> bool:
        """Apply one record to the follower's dict; True when the active set changed."""
        key = msg.key()
        if key is None:
            self.malformed += 1
            log.warning("suppression record without a key at %s[%d]@%d ignored", self.topic, msg.partition(),
                        msg.offset())
            return False
        token = key.decode("utf-8", "replace")
        active, well_formed = read_suppression(msg.value())
        if not well_formed:
            self.malformed += 1
            log.warning("unreadable suppression record at %s[%d]@%d: kept suppressed", self.topic,
                        msg.partition(), msg.offset())
        before = self._state.get(token, False)
        if active:
            self._state[token] = True
        else:
            self._state.pop(token, None)
        return before != active

    def _swap(self) -> None:
        self.suppressions.replace(self._state.keys())
        self.updates += 1
        self.last_update = time.monotonic()
        if not self._caught_up.is_set():
            self.current_at = time.time()
            log.info("suppressions loaded from %s: %d active", self.topic, len(self._state))
            self._caught_up.set()
        if self._on_update is not None:
            self._on_update(len(self._state))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc) or type(exc).__name__


def load_active_tokens(bootstrap: str, topic: str = SUPPRESSIONS, conf: Mapping[str, str] | None = None,
                       timeout: float = DEFAULT_START_TIMEOUT) -> frozenset[str]:
    """One-shot read of the whole topic: the tokens suppressed right now (for exports and tests)."""
    target = Suppressions()
    follower = SuppressionFollower(bootstrap, target, topic, conf)
    try:
        follower.start(timeout)
    finally:
        follower.stop()
    return target.tokens
