"""The topic policy (``pipeline/data/topics.toml``), the topic names, and `cdrpipe topics apply`.

One file says, for every topic, its name, partitions, replication factor and configs (retention,
cleanup policy, min.insync.replicas); it ships in the package, and deploy/render.py writes the
Strimzi topics from it. ``apply_topics`` creates missing topics, sets configs that differ
(incremental alter configs, so other settings are left alone) and adds partitions when the file
asks for more. It is idempotent: a second run changes nothing and reports nothing.

The names the apps use by default (:data:`RAW`, :data:`ANALYTICS`…) are constants here, each
checked against the policy file when this module is imported, and :class:`Topics` is the one
settings type of what an app reads and writes.

Public API:
    ``RAW``, ``ANALYTICS``, ``AGGREGATES``, ``RETENTION``, ``DLQ``, ``AUDIT``, ``REQUESTS``,
    ``SUPPRESSIONS``, ``ERASURES``                 the policy's topic names
    ``Topics``                                     the topics of an app, ``.with_prefix(prefix)``
    ``TopicSpec``                                  one topic's policy (frozen)
    ``default_policy_path() -> Path``              $CDRPIPE_TOPICS_FILE, else the packaged policy
    ``load_topic_policy(path=None) -> list[TopicSpec]``
    ``apply_topics(admin_conf, specs, *, prefix="", replication_factor=None, dry_run=False,
                   timeout=30.0) -> list[str]``
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.errors import FatalError, UsageError

log = logging.getLogger(__name__)

#: The topic policy: the one file that names and configures every topic (shipped in the package).
POLICY_FILE = Path(__file__).resolve().parent / "data" / "topics.toml"

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_LEN = 249
_TOPIC_KEYS = {"partitions", "replication_factor", "configs"}
_MIN_ISR = "min.insync.replicas"


class TopicPolicyError(FatalError):
    """The topic policy file is missing or malformed; the message names the file and the fix."""


class TopicApplyError(FatalError):
    """The cluster refused or could not be reached while applying the topic policy."""


with open(POLICY_FILE, "rb") as _fh:
    _POLICY_NAMES = frozenset(tomllib.load(_fh)["topics"])


def _policy_topic(name: str) -> str:
    """``name``, if the policy file defines it: a topic name constant cannot drift from the policy."""
    if name not in _POLICY_NAMES:
        raise RuntimeError(f"{POLICY_FILE} defines no topic {name!r}: restore the file or the name")
    return name


RAW = _policy_topic("cdr.raw")
ANALYTICS = _policy_topic("cdr.analytics")
AGGREGATES = _policy_topic("cdr.aggregates")
RETENTION = _policy_topic("cdr.retention")
DLQ = _policy_topic("cdr.dlq")
AUDIT = _policy_topic("vault.audit")
REQUESTS = _policy_topic("privacy.requests")
SUPPRESSIONS = _policy_topic("privacy.suppressions")
ERASURES = _policy_topic("privacy.erasures")


@dataclass(frozen=True)
class Topics:
    """The topics an app reads and writes (the Kafka worker, the privacy and aggregates apps); policy names by default."""

    input: str = RAW
    analytics: str = ANALYTICS
    retention: str = RETENTION
    dlq: str = DLQ
    aggregates: str = AGGREGATES
    requests: str = REQUESTS
    suppressions: str = SUPPRESSIONS
    erasures: str = ERASURES

    def with_prefix(self, prefix: str) -> Topics:
        """The same topics with ``prefix`` prepended (tests give each run its own prefix)."""
        return Topics(**{f.name: prefix + getattr(self, f.name) for f in fields(self)})

    @property
    def outputs(self) -> tuple[str, str, str]:
        """The worker's three output topics, in route order."""
        return (self.analytics, self.retention, self.dlq)


@dataclass(frozen=True)
class TopicSpec:
    """One topic's policy: name, partition count, replication factor and topic configs."""

    name: str
    partitions: int
    replication_factor: int
    configs: tuple[tuple[str, str], ...] = ()

    @property
    def config(self) -> dict[str, str]:
        """The configs as a dict (Kafka config name -> string value)."""
        return dict(self.configs)


# --------------------------------------------------------------------------- loading


def default_policy_path() -> Path:
    """The policy file: ``$CDRPIPE_TOPICS_FILE``, else the one shipped in the package."""
    env = os.environ.get("CDRPIPE_TOPICS_FILE")
    return Path(env) if env else POLICY_FILE


def _config_value(path: Path, topic: str, key: str, value: Any) -> str:
    """Turn a TOML config value into Kafka's string form, or explain why it cannot be one."""
    if isinstance(value, dict):
        raise TopicPolicyError(
            f"{path}: topic {topic!r}: config {key!r} is a table; Kafka config names contain dots, "
            f'so quote them, e.g. "{key}.{next(iter(value), "x")}" = ...')
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TopicPolicyError(f"{path}: topic {topic!r}: config {key!r} must be finite")
        return repr(value)
    if isinstance(value, str):
        return value
    raise TopicPolicyError(f"{path}: topic {topic!r}: config {key!r} must be a string, number or "
                           f"boolean, not {type(value).__name__}")


def _positive_int(path: Path, topic: str, key: str, value: Any) -> int:
    """A required positive integer field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TopicPolicyError(f"{path}: topic {topic!r}: {key} must be a positive integer, "
                               f"got {value!r}")
    return value


def validate_topic_name(name: str) -> None:
    """Reject names Kafka would refuse, before any request is sent."""
    if not name or len(name) > _MAX_TOPIC_LEN or not _TOPIC_NAME.match(name) or name in {".", ".."}:
        raise ValueError(f"invalid Kafka topic name {name!r}: use 1-{_MAX_TOPIC_LEN} characters "
                         "from letters, digits, '.', '_' and '-'")


def load_topic_policy(path: str | os.PathLike[str] | None = None) -> list[TopicSpec]:
    """Read and validate a topic policy file (default: ``default_policy_path()``)."""
    p = Path(path) if path is not None else default_policy_path()
    try:
        with open(p, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise TopicPolicyError(f"topic policy file {p} not found; pass --file or restore "
                               "pipeline/data/topics.toml") from None
    except OSError as exc:
        raise TopicPolicyError(f"cannot read topic policy file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopicPolicyError(f"{p}: not valid TOML: {exc}") from None
    unknown_top = set(doc) - {"topics"}
    if unknown_top:
        raise TopicPolicyError(f"{p}: unknown top-level key(s) {sorted(unknown_top)}; only "
                               "[topics.\"<name>\"] tables are allowed")
    topics = doc.get("topics")
    if not isinstance(topics, dict) or not topics:
        raise TopicPolicyError(f'{p}: no topics; add tables like [topics."cdr.raw"] with '
                               "partitions, replication_factor and configs")
    specs: list[TopicSpec] = []
    for name, body in topics.items():
        try:
            validate_topic_name(name)
        except ValueError as exc:
            raise TopicPolicyError(f"{p}: {exc} (quote names with dots: [topics.\"cdr.raw\"])") \
                from None
        if not isinstance(body, dict):
            raise TopicPolicyError(f"{p}: topic {name!r} must be a table")
        unknown = set(body) - _TOPIC_KEYS
        if unknown:
            hint = " (quote dotted topic names: [topics.\"a.b\"])" if any(
                isinstance(body[k], dict) for k in unknown) else ""
            raise TopicPolicyError(f"{p}: topic {name!r}: unknown key(s) {sorted(unknown)}; "
                                   f"allowed: {sorted(_TOPIC_KEYS)}{hint}")
        for required in ("partitions", "replication_factor"):
            if required not in body:
                raise TopicPolicyError(f"{p}: topic {name!r}: missing {required}")
        partitions = _positive_int(p, name, "partitions", body["partitions"])
        rf = _positive_int(p, name, "replication_factor", body["replication_factor"])
        raw_configs = body.get("configs", {})
        if not isinstance(raw_configs, dict):
            raise TopicPolicyError(f"{p}: topic {name!r}: configs must be a table")
        configs = {k: _config_value(p, name, k, v) for k, v in raw_configs.items()}
        if _MIN_ISR in configs:
            try:
                min_isr = int(configs[_MIN_ISR])
            except ValueError:
                raise TopicPolicyError(f"{p}: topic {name!r}: {_MIN_ISR} must be an integer") \
                    from None
            if not 1 <= min_isr <= rf:
                raise TopicPolicyError(f"{p}: topic {name!r}: {_MIN_ISR}={min_isr} must be "
                                       f"between 1 and replication_factor ({rf})")
        specs.append(TopicSpec(name, partitions, rf, tuple(sorted(configs.items()))))
    return specs


# --------------------------------------------------------------------------- applying


def _for_replication(spec: TopicSpec, rf: int) -> TopicSpec:
    """The spec with a lower replication factor, min.insync.replicas capped to match."""
    configs = dict(spec.configs)
    if _MIN_ISR in configs and int(configs[_MIN_ISR]) > rf:
        configs[_MIN_ISR] = str(rf)
    return TopicSpec(spec.name, spec.partitions, rf, tuple(sorted(configs.items())))


def _result(future: Any, timeout: float, what: str) -> Any:
    """Wait for an admin future, turning Kafka errors into TopicApplyError."""
    from confluent_kafka import KafkaException

    try:
        return future.result(timeout=timeout)
    except KafkaException as exc:
        raise TopicApplyError(f"{what}: {exc.args[0].str() if exc.args else exc}") from None
    except TimeoutError:
        raise TopicApplyError(f"{what}: no answer from the cluster in {timeout:.0f} s") from None


def _wait_visible(admin: Any, specs: Sequence[TopicSpec], timeout: float) -> Any:
    """Poll metadata until every topic shows all its partitions; return the fresh metadata."""
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=timeout)
        pending = [s.name for s in specs
                   if s.name not in md.topics or md.topics[s.name].error is not None
                   or len(md.topics[s.name].partitions) < s.partitions]
        if not pending:
            return md
        if time.monotonic() > deadline:
            raise TopicApplyError(f"topics created but not visible after {timeout:.0f} s: "
                                  f"{pending[:5]}")
        time.sleep(0.1)


def apply_topics(admin_conf: Mapping[str, str], specs: Sequence[TopicSpec], *, prefix: str = "",
                 replication_factor: int | None = None, dry_run: bool = False,
                 timeout: float = 30.0) -> list[str]:
    """Make the cluster match the policy; return one line per change made (empty when none).

    ``prefix`` is prepended to every topic name (tests use unique prefixes). ``replication_factor``
    overrides the file's; without it, a single-broker cluster gets 1 (with a warning) and a larger
    cluster with too few brokers is an error. ``dry_run`` reports the changes without making them.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, ConfigSource, NewPartitions, NewTopic,
                                       ResourceType)

    if replication_factor is not None and replication_factor < 1:
        raise UsageError(f"--replication-factor must be at least 1, got {replication_factor}")
    names = [prefix + s.name for s in specs]
    for name in names:
        try:
            validate_topic_name(name)
        except ValueError as exc:
            raise UsageError(f"{exc} (check --prefix {prefix!r})") from None
    conf = {"logger": log, **admin_conf}
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicApplyError(
            f"cannot reach Kafka at {admin_conf.get('bootstrap.servers', '?')}: "
            f"{exc.args[0].str() if exc.args else exc}; check --bootstrap-servers and -X "
            "security settings") from None
    n_brokers = len(md.brokers)

    wanted: list[TopicSpec] = []
    clamped: list[str] = []
    for spec in specs:
        full = TopicSpec(prefix + spec.name, spec.partitions, spec.replication_factor,
                         spec.configs)
        if replication_factor is not None:
            full = _for_replication(full, replication_factor)
        elif full.replication_factor > n_brokers:
            if n_brokers == 1:
                clamped.append(full.name)
                full = _for_replication(full, 1)
            else:
                raise TopicApplyError(
                    f"{full.name} asks for {full.replication_factor} replicas but the cluster "
                    f"has {n_brokers} brokers; add brokers or pass --replication-factor")
        wanted.append(full)
    if clamped:
        log.warning("single-broker cluster: replication factor 1 (min.insync.replicas capped to 1) "
                    "for %d topic(s) the policy gives more replicas; pass --replication-factor "
                    "to choose", len(clamped))

    done: list[str] = []
    missing = [s for s in wanted if s.name not in md.topics]
    existing = [s for s in wanted if s.name in md.topics]

    # 1. Create what is missing, with every config set explicitly.
    if missing:
        new = [NewTopic(s.name, num_partitions=s.partitions,
                        replication_factor=s.replication_factor, config=s.config)
               for s in missing]
        futures = {} if dry_run else admin.create_topics(
            new, operation_timeout=timeout, request_timeout=timeout)
        raced: list[TopicSpec] = []
        for s in missing:
            if not dry_run:
                try:
                    futures[s.name].result(timeout=timeout)
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        raced.append(s)  # created meanwhile (or metadata lagged): reconcile below
                        continue
                    raise TopicApplyError(f"creating {s.name}: "
                                          f"{err.str() if err else exc}") from None
                except TimeoutError:
                    raise TopicApplyError(f"creating {s.name}: no answer in {timeout:.0f} s") \
                        from None
            done.append(f"created {s.name} (partitions={s.partitions}, "
                        f"replication_factor={s.replication_factor}, "
                        + ", ".join(f"{k}={v}" for k, v in s.configs) + ")")
        if not dry_run:
            # Return only once clients can use the topics: metadata reaches brokers a bit later.
            md = _wait_visible(admin, missing, timeout)
            existing += raced

    if not existing:
        return done

    # 2. Partitions: only ever grow.
    grow: list[tuple[TopicSpec, int]] = []
    for s in existing:
        tmd = md.topics[s.name]
        have = len(tmd.partitions)
        have_rf = len(tmd.partitions[0].replicas) if tmd.partitions else 0
        if have < s.partitions:
            grow.append((s, have))
        elif have > s.partitions:
            log.warning("%s has %d partitions, the policy says %d: partitions cannot be removed; "
                        "left as is", s.name, have, s.partitions)
        if have_rf and have_rf != s.replication_factor:
            log.warning("%s has replication factor %d, the policy says %d: changing it needs a "
                        "partition reassignment; left as is", s.name, have_rf,
                        s.replication_factor)
    if grow:
        futures = {} if dry_run else admin.create_partitions(
            [NewPartitions(s.name, s.partitions) for s, _ in grow],
            operation_timeout=timeout, request_timeout=timeout)
        for s, have in grow:
            if not dry_run:
                _result(futures[s.name], timeout, f"adding partitions to {s.name}")
            done.append(f"partitions {s.name}: {have} -> {s.partitions}")
        if not dry_run:
            _wait_visible(admin, [s for s, _ in grow], timeout)

    # 3. Configs: set each one that differs or is only inherited from a broker default.
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in existing]
    described = admin.describe_configs(resources, request_timeout=timeout)
    changes: list[tuple[TopicSpec, list[tuple[str, str | None, str]]]] = []
    for s, res in zip(existing, resources):
        current = _result(described[res], timeout, f"describing {s.name}")
        diff = []
        for key, value in s.configs:
            entry = current.get(key)
            have_value = entry.value if entry is not None else None
            explicit = entry is not None and getattr(entry.source, "value", entry.source) \
                == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
            if have_value != value or not explicit:
                diff.append((key, have_value, value))
        if diff:
            changes.append((s, diff))
    if changes:
        alter = [ConfigResource(ResourceType.TOPIC, s.name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, _, v in diff])
            for s, diff in changes]
        futures = {} if dry_run else admin.incremental_alter_configs(
            alter, request_timeout=timeout)
        for (s, diff), res in zip(changes, alter):
            if not dry_run:
                _result(futures[res], timeout, f"altering configs of {s.name}")
            done.append(f"configs {s.name}: " + ", ".join(
                f"{k}={v} (was {old if old is not None else 'unset'})" for k, old, v in diff))
    return done
