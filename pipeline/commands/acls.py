"""`cdrpipe acls apply|show`: the Kafka ACLs of the pipeline's principals (:mod:`pipeline.acl`)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.acl import (MATRIX, Principal, access_table, apply_acls, bindings, check_matrix, kafka_acls_commands,
                          with_prefix, with_users)
from pipeline.commands.common import action_group
from pipeline.errors import UsageError
from pipeline.kafka_config import ENV_BOOTSTRAP, parse_x_options, require_bootstrap
from pipeline.topics import default_policy_path, load_topic_policy


def _parse_users(items: Sequence[str]) -> dict[str, str]:
    """``--principal ROLE=USER`` options as a dict."""
    users: dict[str, str] = {}
    for item in items:
        role, sep, user = item.partition("=")
        if not sep or not role or not user:
            raise UsageError(f"--principal {item!r}: expected ROLE=USER, e.g. "
                             "--principal analytics=bi-team")
        users[role.strip()] = user.strip()
    return users


def _matrix_from_args(args: argparse.Namespace) -> tuple[tuple[Principal, ...], list[str]]:
    """The matrix (with --principal renames) checked against the topic policy, and the topics."""
    path = Path(args.file) if args.file else default_policy_path()
    if args.file and not path.is_file():
        raise UsageError(f"--file {args.file}: no such file")
    topics = [s.name for s in load_topic_policy(path)]
    matrix = with_users(MATRIX, _parse_users(args.principal or []))
    check_matrix(matrix, topics)
    return matrix, topics


def _run_apply(args: argparse.Namespace) -> int:
    """`cdrpipe acls apply`: make the cluster's ACLs match the matrix."""
    bootstrap = require_bootstrap(args.bootstrap_servers)
    matrix, _topics = _matrix_from_args(args)
    conf = {"bootstrap.servers": bootstrap, **parse_x_options(args.X)}
    changes = apply_acls(conf, matrix, prefix=args.prefix, prune=args.prune,
                         dry_run=args.dry_run, timeout=args.timeout)
    for line in changes:
        print(("would: " if args.dry_run and not line.startswith("extra") else "") + line)
    n_rows = len(bindings(matrix, prefix=args.prefix))
    print(f"{len(matrix)} principals, {n_rows} ACLs checked, "
          f"{sum(not c.startswith('extra') for c in changes)} "
          f"{'would change' if args.dry_run else 'changed'}", file=sys.stderr)
    return 0


def _run_show(args: argparse.Namespace) -> int:
    """`cdrpipe acls show`: print the matrix (no cluster needed)."""
    matrix, topics = _matrix_from_args(args)
    rows = bindings(matrix, prefix=args.prefix)
    if args.format == "table":
        shown = with_prefix(matrix, args.prefix) if args.prefix else matrix
        print(access_table(shown, [args.prefix + t for t in topics]))
    elif args.format == "kafka-acls":
        print("\n".join(kafka_acls_commands(rows)))
    else:
        print(json.dumps([{"principal": r.principal, "resource_type": r.kind.value,
                           "name": r.name, "pattern_type": r.pattern.value,
                           "operation": r.operation.value, "host": r.host,
                           "permission": r.permission} for r in rows], indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe acls apply` and `cdrpipe acls show`."""
    p = subparsers.add_parser("acls", help="the Kafka ACLs of the pipeline's principals",
                              description="Show the ACL matrix or make a cluster's ACLs match it.")
    sub = action_group(p, "acls_command")

    def _common(a: argparse.ArgumentParser) -> None:
        a.add_argument("--file", default=None,
                       help="topic policy file the matrix is checked against (env "
                            "CDRPIPE_TOPICS_FILE; default the policy shipped with cdrpipe)")
        a.add_argument("--prefix", default="",
                       help="prepend this to every topic name, as `cdrpipe topics apply --prefix`")
        a.add_argument("--principal", action="append", metavar="ROLE=USER",
                       help="use another Kafka user for a role, repeatable "
                            "(e.g. --principal analytics=bi-team)")

    a = sub.add_parser(
        "apply", help="create the matrix's ACLs on a cluster (idempotent)",
        description=("Make the cluster's ACLs for the pipeline's principals match the matrix: "
                     "add what is missing; report (or with --prune remove) what the matrix does "
                     "not name. Needs a super user or ALTER on the cluster; prints one line per "
                     "change, a second run prints none."))
    a.add_argument("--bootstrap-servers", default=None,
                   help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    a.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka client setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    _common(a)
    a.add_argument("--prune", action="store_true",
                   help="remove ACLs of the managed principals that the matrix does not name")
    a.add_argument("--dry-run", action="store_true", help="report the changes without making them")
    a.add_argument("--timeout", type=float, default=30.0, help="seconds per admin request")
    a.set_defaults(func=_run_apply)

    s = sub.add_parser("show", help="print the ACL matrix (no cluster needed)",
                       description="Print who may read and write what: a table, kafka-acls.sh "
                                   "commands, or JSON rows.")
    s.add_argument("--format", choices=("table", "kafka-acls", "json"), default="table",
                   help="table (default), kafka-acls (commands) or json")
    _common(s)
    s.set_defaults(func=_run_show)
