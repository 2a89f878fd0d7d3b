"""Who may do what on the pipeline's Kafka cluster: the ACL matrix and `cdrpipe acls apply|show`.

The matrix below is the one place that says which principal may read or write which topic, join
which consumer group and use which transactional ids. Everything else follows it:

* ``cdrpipe acls apply`` creates the Kafka ACL bindings (AdminClient ``create_acls``) on a cluster
  with an authorizer (``StandardAuthorizer`` on KRaft), idempotently, and with ``--prune`` removes
  bindings of the managed principals that the matrix does not name;
* ``deploy/render.py`` writes Strimzi ``KafkaUser`` manifests (``authorization: simple``) from it;
* ``cdrpipe acls show`` prints it as a table, as ``kafka-acls.sh`` commands or as JSON.

Kafka denies what no ACL allows (``allow.everyone.if.no.acl.found=false``), so the matrix lists
allowances only. Its invariant is checked in code (``check_matrix``) as well as on a real broker in
the tests: analytics teams never read raw data, and no one but the worker reads ``cdr.raw``, no one
but the vault sink reads ``cdr.retention``, no one but operations reads ``cdr.dlq``, and no one but
the auditor reads ``vault.audit`` (which the vault may write to, never delete or alter).

Public API:
    ``MATRIX``                                   the principals and their grants (a tuple)
    ``Principal``, ``Grant``, ``Binding``         one service, one allowance, one Kafka ACL row
    ``check_matrix(matrix, topics)``              refuse a matrix that breaks the invariant
    ``topic_access(matrix, topics)``              role -> topic -> operations, prefixes resolved
    ``bindings(matrix, prefix="")``               the Kafka ACL rows, sorted
    ``apply_acls(admin_conf, matrix, ...)``       make the cluster's ACLs match; one line per change
"""
from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from pipeline.errors import FatalError, UsageError
from pipeline.topics import AGGREGATES, ANALYTICS, AUDIT, DLQ, ERASURES, RAW, REQUESTS, RETENTION, SUPPRESSIONS

log = logging.getLogger(__name__)

#: Consumer group of the Kafka worker (``cdrpipe run --group``, default
#: ``pipeline.runners.kafka.DEFAULT_GROUP``; a unit test checks). Literal on purpose: a prefix
#: "cdrpipe" would let the worker join (and disrupt) the vault's and the faust apps' groups.
WORKER_GROUP = "cdrpipe"
#: A worker's transactional.id is ``cdrpipe-{group}-{input topic}-{worker id}``
#: (``pipeline.runners.kafka.transactional_id``): this prefix covers every worker of the group
#: and no other app's ids, so a compromised worker cannot fence the faust apps' producers.
WORKER_TRANSACTIONAL_ID_PREFIX = f"cdrpipe-{WORKER_GROUP}-"
#: Consumer group of the vault sink (``pipeline.vault.sink.DEFAULT_GROUP``; a unit test checks).
VAULT_GROUP = "cdrpipe-vault"
#: faust app ids: the app's consumer group, and the prefix of its internal topics
#: (``<id>-<table>-changelog``, ``<id>-__assignor-__leader``, repartition topics).
PRIVACY_APP_ID = "cdrpipe-privacy"
AGGREGATES_APP_ID = "cdrpipe-aggregates"
#: Groups of analytics and operations consumers must start with these.
ANALYTICS_GROUP_PREFIX = "analytics-"
OPERATIONS_GROUP_PREFIX = "operations-"

#: Topics that carry raw or re-identifiable data, and the only roles that may read them.
RESTRICTED_READERS: Mapping[str, frozenset[str]] = {
    RAW: frozenset({"worker"}),
    RETENTION: frozenset({"vault"}),
    DLQ: frozenset({"operations"}),
    REQUESTS: frozenset({"privacy"}),  # carries the raw subject of each request
    AUDIT: frozenset({"auditor"}),  # who queried under which warrant: never tip a target off
}


class AclMatrixError(FatalError):
    """The matrix names an unknown topic or lets the wrong principal read restricted data."""


class AclApplyError(FatalError):
    """The cluster refused or could not be reached while applying the ACLs."""


class ResourceKind(str, Enum):
    """Kafka resource types, spelled as Strimzi's ``KafkaUser`` ACLs spell them."""

    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactionalId"
    CLUSTER = "cluster"


class Pattern(str, Enum):
    """How a grant's name matches resources (Strimzi spelling; Kafka says LITERAL/PREFIXED)."""

    LITERAL = "literal"
    PREFIX = "prefix"


class Operation(str, Enum):
    """Kafka ACL operations, spelled as Strimzi and ``kafka-acls.sh`` spell them."""

    READ = "Read"
    WRITE = "Write"
    CREATE = "Create"
    DESCRIBE = "Describe"
    DESCRIBE_CONFIGS = "DescribeConfigs"
    IDEMPOTENT_WRITE = "IdempotentWrite"


@dataclass(frozen=True)
class Grant:
    """One allowance: ``operations`` on the resource(s) ``kind``/``name`` matched by ``pattern``."""

    kind: ResourceKind
    name: str
    operations: tuple[Operation, ...]
    pattern: Pattern = Pattern.LITERAL

    def matches(self, kind: ResourceKind, name: str) -> bool:
        """True when this grant covers the resource ``kind``/``name``."""
        if kind is not self.kind:
            return False
        return name.startswith(self.name) if self.pattern is Pattern.PREFIX else name == self.name


@dataclass(frozen=True)
class Principal:
    """One service account: a role name (stable, used in code and docs), its Kafka user and grants.

    The Kafka principal is ``User:<user>``; ``user`` is also the Strimzi ``KafkaUser`` name, so it
    must be a DNS-1123 name (lower case, digits, ``-`` and ``.``).
    """

    role: str
    user: str
    purpose: str
    grants: tuple[Grant, ...]

    @property
    def principal(self) -> str:
        """The Kafka principal, ``User:<user>``."""
        return f"User:{self.user}"


@dataclass(frozen=True, order=True)
class Binding:
    """One Kafka ACL row (what ``kafka-acls.sh --list`` shows): allow ``operation`` to ``principal``."""

    principal: str
    kind: ResourceKind
    name: str
    pattern: Pattern
    operation: Operation
    host: str = "*"
    permission: str = "ALLOW"

    def describe(self) -> str:
        """A one-line human form, e.g. ``User:x ALLOW Read topic:cdr.raw (literal)``."""
        return (f"{self.principal} {self.permission} {self.operation.value} "
                f"{self.kind.value}:{self.name} ({self.pattern.value})"
                + ("" if self.host == "*" else f" from {self.host}"))


# --------------------------------------------------------------------------- the matrix


def _reads(topic: str) -> Grant:
    """Consume a topic (Read implies Describe, which consumers need for metadata and offsets)."""
    return Grant(ResourceKind.TOPIC, topic, (Operation.READ,))


def _writes(topic: str) -> Grant:
    """Produce to a topic (Write implies Describe, and, since Kafka 3.0, idempotent produce)."""
    return Grant(ResourceKind.TOPIC, topic, (Operation.WRITE,))


def _group(name: str, *, prefix: bool = False) -> Grant:
    """Join a consumer group and commit its offsets (Read on the group)."""
    return Grant(ResourceKind.GROUP, name, (Operation.READ,),
                 Pattern.PREFIX if prefix else Pattern.LITERAL)


def _app_internal(app_id: str) -> tuple[Grant, ...]:
    """A faust app's own topics (changelogs, repartition, leader), which it creates at start,
    and its consumer group. No transactional ids: the apps run at-least-once (idempotent
    tables), so granting them would only widen what a stolen credential can do."""
    return (Grant(ResourceKind.TOPIC, f"{app_id}-",
                  (Operation.CREATE, Operation.READ, Operation.WRITE), Pattern.PREFIX),
            _group(app_id, prefix=True))


def _sizes(topic: str) -> Grant:
    """Read a topic's configs: the worker sizes its producer from max.message.bytes."""
    return Grant(ResourceKind.TOPIC, topic, (Operation.DESCRIBE_CONFIGS,))


#: The principals of the pipeline and what each may do. Order: data flow, then consumers.
MATRIX: tuple[Principal, ...] = (
    Principal("mediation", "cdr-mediation",
              "mediation systems: write raw CDRs into the pipeline",
              (_writes(RAW),)),
    Principal("worker", "cdrpipe-worker",
              "`cdrpipe run`: read raw CDRs and suppressions, write the three outputs and its "
              "offsets in one transaction",
              (_reads(RAW), _reads(SUPPRESSIONS),
               _writes(ANALYTICS), _writes(RETENTION), _writes(DLQ),
               *(_sizes(t) for t in (RAW, ANALYTICS, RETENTION, DLQ)),
               _group(WORKER_GROUP),
               Grant(ResourceKind.TRANSACTIONAL_ID, WORKER_TRANSACTIONAL_ID_PREFIX,
                     (Operation.WRITE,), Pattern.PREFIX))),
    Principal("vault", "cdrpipe-vault",
              "`cdrpipe vault sink`: read sealed raw records into the vault; append every audit "
              "entry to its witness topic (Write only: it can neither delete nor alter it)",
              (_reads(RETENTION), _group(VAULT_GROUP), _writes(AUDIT))),
    Principal("privacy", "cdrpipe-privacy",
              "`cdrpipe privacy worker` (faust): turn subject requests into suppressions and "
              "erasure notices",
              (_reads(REQUESTS), _writes(SUPPRESSIONS),
               _writes(ERASURES), *_app_internal(PRIVACY_APP_ID))),
    Principal("aggregates", "cdrpipe-aggregates",
              "`cdrpipe aggregates worker` (faust): k-anonymous windowed counts",
              (_reads(ANALYTICS), _writes(AGGREGATES),
               *_app_internal(AGGREGATES_APP_ID))),
    Principal("dpo", "cdrpipe-dpo",
              "the data-protection office: submit subject-rights requests "
              "(`cdrpipe privacy submit`) and read pseudonymised analytics for access exports "
              "(`cdrpipe privacy export`: no group, nothing committed)",
              (_writes(REQUESTS), _reads(ANALYTICS))),
    Principal("auditor", "cdrpipe-auditor",
              "the audit / oversight function: read the vault's audit witness "
              "(`cdrpipe vault audit verify --witness kafka:vault.audit`: no group, nothing committed)",
              (_reads(AUDIT),)),
    Principal("analytics", "analytics",
              "analytics teams: pseudonymised records and aggregates only",
              (_reads(ANALYTICS), _reads(AGGREGATES),
               _group(ANALYTICS_GROUP_PREFIX, prefix=True))),
    Principal("operations", "operations",
              "operations: inspect dead letters (reasons, coordinates, sealed payloads)",
              (_reads(DLQ), _group(OPERATIONS_GROUP_PREFIX, prefix=True))),
)


def principal_for(role: str, matrix: Sequence[Principal] = MATRIX) -> Principal:
    """The principal with this role, or a UsageError naming the roles there are."""
    for p in matrix:
        if p.role == role:
            return p
    raise UsageError(f"no role {role!r} in the ACL matrix; roles: "
                     + ", ".join(p.role for p in matrix))


def with_users(matrix: Sequence[Principal], users: Mapping[str, str]) -> tuple[Principal, ...]:
    """The matrix with some roles mapped to other Kafka user names (``--principal ROLE=USER``).

    Sites name their service accounts their own way; the grants stay the matrix's.
    """
    for role in users:
        principal_for(role, matrix)
    return tuple(replace(p, user=users.get(p.role, p.user)) for p in matrix)


# --------------------------------------------------------------------------- checks


def topic_access(matrix: Sequence[Principal],
                 topics: Iterable[str]) -> dict[str, dict[str, frozenset[Operation]]]:
    """For every role, the operations it holds on each named topic (prefix grants resolved).

    Topics a role has no grant on are left out, so ``topic_access(...)[role]`` lists exactly what
    that role can touch.
    """
    names = list(topics)
    out: dict[str, dict[str, frozenset[Operation]]] = {}
    for p in matrix:
        per_topic: dict[str, frozenset[Operation]] = {}
        for topic in names:
            ops = {op for g in p.grants if g.matches(ResourceKind.TOPIC, topic) for op in g.operations}
            if ops:
                per_topic[topic] = frozenset(ops)
        out[p.role] = per_topic
    return out


def check_matrix(matrix: Sequence[Principal], topics: Iterable[str]) -> None:
    """Refuse a matrix that drifted from the topic policy or breaks the read restrictions.

    ``topics`` are the policy's topic names. Checked: roles and users are unique and valid;
    every literal topic grant names a policy topic (a typo would grant nothing and fail late);
    no prefix grant covers a policy topic (policy topics are granted by name only); and only the
    roles in ``RESTRICTED_READERS`` may read the restricted topics.

    Raises:
        AclMatrixError: the first problem found, naming the role and the resource.
    """
    names = set(topics)
    seen_roles: set[str] = set()
    seen_users: set[str] = set()
    for p in matrix:
        if p.role in seen_roles or p.user in seen_users:
            raise AclMatrixError(f"ACL matrix: role {p.role!r} or user {p.user!r} appears twice")
        seen_roles.add(p.role)
        seen_users.add(p.user)
        if not p.user or not all(c.islower() or c.isdigit() or c in "-." for c in p.user):
            raise AclMatrixError(f"ACL matrix: user {p.user!r} of role {p.role!r} must be lower "
                                 "case letters, digits, '-' and '.' (a Strimzi KafkaUser name)")
        for g in p.grants:
            if not g.name or not g.operations:
                raise AclMatrixError(f"ACL matrix: role {p.role!r} has an empty grant {g}")
            if g.kind is ResourceKind.TOPIC and g.pattern is Pattern.LITERAL and g.name not in names:
                raise AclMatrixError(f"ACL matrix: role {p.role!r} is granted topic {g.name!r}, "
                                     "which the topic policy does not define")
            if g.kind is ResourceKind.TOPIC and g.pattern is Pattern.PREFIX:
                covered = sorted(n for n in names if n.startswith(g.name))
                if covered:
                    raise AclMatrixError(f"ACL matrix: role {p.role!r} has prefix {g.name!r}, "
                                         f"which covers policy topic(s) {covered}; grant policy "
                                         "topics by name")
    access = topic_access(matrix, names | set(RESTRICTED_READERS))
    for topic, allowed in RESTRICTED_READERS.items():
        readers = {role for role, per in access.items() if Operation.READ in per.get(topic, ())}
        if readers != allowed:
            raise AclMatrixError(f"ACL matrix: {topic} must be readable by exactly "
                                 f"{sorted(allowed)}, found {sorted(readers)}")


# --------------------------------------------------------------------------- rendering


def bindings(matrix: Sequence[Principal] = MATRIX, *, prefix: str = "") -> list[Binding]:
    """The Kafka ACL rows for the matrix, sorted; ``prefix`` is prepended to every topic name
    (as ``cdrpipe topics apply --prefix`` does), groups and transactional ids are unchanged."""
    rows: set[Binding] = set()
    for p in matrix:
        for g in p.grants:
            name = prefix + g.name if g.kind is ResourceKind.TOPIC else g.name
            for op in g.operations:
                rows.add(Binding(p.principal, g.kind, name, g.pattern, op))
    return sorted(rows)


_CLUSTER_NAME = "kafka-cluster"


def to_admin_binding(row: Binding) -> Any:
    """The confluent-kafka ``AclBinding`` for one row."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)

    kind = {ResourceKind.TOPIC: ResourceType.TOPIC, ResourceKind.GROUP: ResourceType.GROUP,
            ResourceKind.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
            ResourceKind.CLUSTER: ResourceType.BROKER}[row.kind]
    pattern = ResourcePatternType.PREFIXED if row.pattern is Pattern.PREFIX \
        else ResourcePatternType.LITERAL
    operation = AclOperation[_OPERATION_TO_KAFKA[row.operation]]
    return AclBinding(kind, row.name, pattern, row.principal, row.host, operation,
                      AclPermissionType[row.permission])


_OPERATION_TO_KAFKA = {
    Operation.READ: "READ", Operation.WRITE: "WRITE", Operation.CREATE: "CREATE",
    Operation.DESCRIBE: "DESCRIBE", Operation.DESCRIBE_CONFIGS: "DESCRIBE_CONFIGS",
    Operation.IDEMPOTENT_WRITE: "IDEMPOTENT_WRITE",
}


def from_admin_binding(acl: Any) -> Binding | None:
    """One row from a confluent-kafka ``AclBinding``; None for kinds the matrix never uses."""
    kinds = {"TOPIC": ResourceKind.TOPIC, "GROUP": ResourceKind.GROUP,
             "TRANSACTIONAL_ID": ResourceKind.TRANSACTIONAL_ID, "BROKER": ResourceKind.CLUSTER}
    ops = {v: k for k, v in _OPERATION_TO_KAFKA.items()}
    kind = kinds.get(acl.restype.name)
    op = ops.get(acl.operation.name)
    pattern = {"LITERAL": Pattern.LITERAL, "PREFIXED": Pattern.PREFIX}.get(
        acl.resource_pattern_type.name)
    if kind is None or op is None or pattern is None:
        return None
    return Binding(acl.principal, kind, acl.name, pattern, op, acl.host,
                   acl.permission_type.name)


def kafka_acls_commands(rows: Sequence[Binding]) -> list[str]:
    """The same rows as ``kafka-acls.sh`` commands (for clusters managed by hand)."""
    flag = {ResourceKind.TOPIC: "--topic", ResourceKind.GROUP: "--group",
            ResourceKind.TRANSACTIONAL_ID: "--transactional-id", ResourceKind.CLUSTER: "--cluster"}
    out = []
    for r in rows:
        target = flag[r.kind] if r.kind is ResourceKind.CLUSTER \
            else f"{flag[r.kind]} {shlex.quote(r.name)}"
        pattern = "prefixed" if r.pattern is Pattern.PREFIX else "literal"
        out.append(f'kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config admin.properties '
                   f"--add --allow-principal {shlex.quote(r.principal)} --allow-host {shlex.quote(r.host)} "
                   f"--operation {r.operation.value} {target} --resource-pattern-type {pattern}")
    return out


def access_table(matrix: Sequence[Principal], topics: Sequence[str]) -> str:
    """A text table: one row per role, R/W/C per topic, then its groups and transactional ids."""
    access = topic_access(matrix, topics)
    letters = {Operation.READ: "R", Operation.WRITE: "W", Operation.CREATE: "C"}
    width = max(len(p.role) for p in matrix)
    lines = ["topic access (R read, W write; '-' denied):"]
    for i, t in enumerate(topics):
        lines.append(f"  [{i + 1}] {t}")
    lines.append(" " * (width + 2) + " ".join(f"[{i + 1}]" for i in range(len(topics))))
    for p in matrix:
        cells = []
        for t in topics:
            ops = access[p.role].get(t, frozenset())
            cell = "".join(letters[o] for o in (Operation.READ, Operation.WRITE) if o in ops) or "-"
            cells.append(cell.center(3))
        lines.append(f"{p.role:<{width}}  " + " ".join(cells))
    lines.append("")
    for p in matrix:
        extra = [f"{g.kind.value} {g.name}{'*' if g.pattern is Pattern.PREFIX else ''} "
                 f"({','.join(o.value for o in g.operations)})"
                 for g in p.grants if not (g.kind is ResourceKind.TOPIC
                                           and g.pattern is Pattern.LITERAL)]
        lines.append(f"{p.role} = {p.principal}: {p.purpose}")
        if extra:
            lines.append("    also: " + "; ".join(extra))
    return "\n".join(lines)


# --------------------------------------------------------------------------- applying


def _kafka_error(exc: BaseException) -> Any:
    """The KafkaError inside a KafkaException (or None)."""
    return exc.args[0] if exc.args else None


def _explain(what: str, exc: BaseException) -> AclApplyError:
    """A KafkaException turned into an error that says what to change."""
    from confluent_kafka import KafkaError

    err = _kafka_error(exc)
    code = err.code() if isinstance(err, KafkaError) else None
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    if code == KafkaError.SECURITY_DISABLED:
        return AclApplyError(f"{what}: the cluster has no authorizer; set authorizer.class.name="
                             "org.apache.kafka.metadata.authorizer.StandardAuthorizer (KRaft) on "
                             "every broker and controller")
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        return AclApplyError(f"{what}: this principal may not manage ACLs; connect as a super user "
                             "or a principal with ALTER and DESCRIBE on the cluster (-X sasl.username=…)")
    return AclApplyError(f"{what}: {text}")


def _wait(future: Any, timeout: float, what: str) -> Any:
    """Wait for an admin future, turning Kafka errors and timeouts into AclApplyError."""
    from confluent_kafka import KafkaException

    try:
        return future.result(timeout=timeout)
    except KafkaException as exc:
        raise _explain(what, exc) from None
    except TimeoutError:
        raise AclApplyError(f"{what}: no answer from the cluster in {timeout:.0f} s") from None


def current_bindings(admin: Any, principals: Iterable[str], timeout: float) -> set[Binding]:
    """The ACL rows the cluster holds for these principals (any resource, any permission)."""
    from confluent_kafka.admin import (AclBindingFilter, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)

    found: set[Binding] = set()
    for principal in principals:
        flt = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                               AclOperation.ANY, AclPermissionType.ANY)
        rows = _wait(admin.describe_acls(flt, request_timeout=timeout), timeout,
                     f"listing the ACLs of {principal}")
        for acl in rows:
            row = from_admin_binding(acl)
            if row is None:
                log.warning("%s holds an ACL of a kind the matrix does not manage (%s %s %s); "
                            "left as is", principal, acl.restype.name, acl.name,
                            acl.operation.name)
                continue
            found.add(row)
    return found


def apply_acls(admin_conf: Mapping[str, str], matrix: Sequence[Principal] = MATRIX, *,
               prefix: str = "", prune: bool = False, dry_run: bool = False,
               timeout: float = 30.0) -> list[str]:
    """Make the cluster's ACLs for the matrix's principals match the matrix; one line per change.

    Missing rows are created. Rows the cluster holds for these principals that the matrix does
    not name are removed with ``prune`` and otherwise reported (``extra …``) and kept, so a
    first run on a hand-managed cluster never takes access away by surprise. Idempotent: a
    second run prints nothing. Other principals' ACLs are never touched.

    Raises:
        AclApplyError: unreachable cluster, no authorizer, or a principal not allowed to alter ACLs.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AclBindingFilter, AdminClient

    admin = AdminClient({"logger": log, **admin_conf})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise AclApplyError(
            f"cannot reach Kafka at {admin_conf.get('bootstrap.servers', '?')}: "
            f"{_kafka_error(exc).str() if _kafka_error(exc) is not None else exc}; check "
            "--bootstrap-servers and -X security settings") from None
    wanted = set(bindings(matrix, prefix=prefix))
    have = current_bindings(admin, sorted({p.principal for p in matrix}), timeout)
    missing = sorted(wanted - have)
    extra = sorted(have - wanted)
    done: list[str] = []
    if missing:
        acls = [to_admin_binding(r) for r in missing]
        futures = {} if dry_run else admin.create_acls(acls, request_timeout=timeout)
        for row, acl in zip(missing, acls):
            if not dry_run:
                _wait(futures[acl], timeout, f"adding {row.describe()}")
            done.append(f"added {row.describe()}")
    if extra and prune:
        filters = []
        for row in extra:
            b = to_admin_binding(row)
            filters.append(AclBindingFilter(b.restype, b.name, b.resource_pattern_type,
                                            b.principal, b.host, b.operation, b.permission_type))
        futures = {} if dry_run else admin.delete_acls(filters, request_timeout=timeout)
        for row, flt in zip(extra, filters):
            if not dry_run:
                _wait(futures[flt], timeout, f"removing {row.describe()}")
            done.append(f"removed {row.describe()}")
    elif extra:
        for row in extra:
            done.append(f"extra {row.describe()} (not in the matrix; kept, --prune removes it)")
    return done


def with_prefix(matrix: Sequence[Principal], prefix: str) -> tuple[Principal, ...]:
    """The matrix with ``prefix`` on every topic grant (for ``show --prefix``)."""
    return tuple(replace(p, grants=tuple(
        replace(g, name=prefix + g.name) if g.kind is ResourceKind.TOPIC else g
        for g in p.grants)) for p in matrix)
