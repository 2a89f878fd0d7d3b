"""`cdrpipe topics apply`: make the cluster's topics match the policy file (:mod:`pipeline.topics`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands.common import action_group
from pipeline.errors import UsageError
from pipeline.kafka_config import parse_x_options, require_bootstrap
from pipeline.topics import apply_topics, default_policy_path, load_topic_policy


def _run_apply(args: argparse.Namespace) -> int:
    """`cdrpipe topics apply`: make the cluster's topics match the policy file."""
    bootstrap = require_bootstrap(args.bootstrap_servers, local_hint=True)
    path = Path(args.file) if args.file else default_policy_path()
    if args.file and not path.is_file():
        raise UsageError(f"--file {args.file}: no such file")
    specs = load_topic_policy(path)
    conf = {"bootstrap.servers": bootstrap, **parse_x_options(args.X)}
    changes = apply_topics(conf, specs, prefix=args.prefix, replication_factor=args.replication_factor,
                           dry_run=args.dry_run, timeout=args.timeout)
    for line in changes:
        print(("would: " if args.dry_run else "") + line)
    verb = "would change" if args.dry_run else "changed"
    print(f"{len(specs)} topics checked against {path}, {len(changes)} {verb}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe topics apply`."""
    p = subparsers.add_parser("topics", help="create and configure the pipeline's Kafka topics",
                              description="Manage the pipeline's topics from the policy file.")
    sub = action_group(p, "topics_command")
    a = sub.add_parser(
        "apply", help="create missing topics, fix configs, add partitions (idempotent)",
        description=("Make the cluster's topics match the policy file: create missing topics, "
                     "set configs that differ, add partitions when the file asks for more. "
                     "Prints one line per change; a second run prints none."))
    a.add_argument("--bootstrap-servers", default=None,
                   help="Kafka bootstrap servers (env CDRPIPE_BOOTSTRAP_SERVERS)")
    a.add_argument("--file", default=None,
                   help="topic policy file (env CDRPIPE_TOPICS_FILE; default the policy shipped with cdrpipe, "
                        "pipeline/data/topics.toml)")
    a.add_argument("--prefix", default="", help="prepend this to every topic name")
    a.add_argument("--replication-factor", type=int, default=None,
                   help="override the file's replication factor (min.insync.replicas is capped "
                        "to it); a single-broker cluster gets 1 automatically")
    a.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka client setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    a.add_argument("--dry-run", action="store_true", help="report the changes without making them")
    a.add_argument("--timeout", type=float, default=30.0, help="seconds per admin request")
    a.set_defaults(func=_run_apply)
