"""The ``cdrpipe privacy`` command: ``submit``, ``status``/``extend``/``close`` (the case register),
``export`` (access and portability), ``worker`` and ``suppressions`` (the active suppressions).

faust is imported only when ``worker`` runs, so ``cdrpipe --help`` and ``submit`` stay quick.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.apps.options import add_app_arguments
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS
from pipeline.kafka_config import ENV_BOOTSTRAP, parse_x_options, require_bootstrap
from pipeline.privacy.register import register_commands
from pipeline.privacy.requests import register_submit
from pipeline.privacy.subject_export import add_parser as add_subject_export
from pipeline.topics import ERASURES, REQUESTS, SUPPRESSIONS

DEFAULT_APP_ID = "cdrpipe-privacy"
DEFAULT_WEB_PORT = 6067


def _cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.privacy.worker import run_worker_command

    return run_worker_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the active suppressions as JSON lines (the file runner's --suppressions format)."""
    from pipeline.privacy.follower import load_active_tokens

    from pipeline.errors import FatalError

    bootstrap = require_bootstrap(args.bootstrap_servers)
    if args.output != "-":  # before reading the topic: a wrong path fails at once
        parent = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise FatalError(f"cannot write --output {args.output}: " + (
                "it is a directory" if os.path.isdir(args.output) else "its directory does not exist or is not "
                "writable") + "; give a file in a directory you can write to")
    tokens = load_active_tokens(bootstrap, args.topic_prefix + args.topic, parse_x_options(args.X), args.timeout)
    lines = "".join(json.dumps({"token": t, "active": True}) + "\n" for t in sorted(tokens))
    if args.output == "-":
        sys.stdout.write(lines)
    else:  # the objectors' tokens: readable by the owner only (mode 0600), like the case register
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(lines)
        except OSError as exc:
            raise FatalError(f"cannot write --output {args.output}: {exc.strerror}; give a file in a directory you "
                             "can write to") from None
    print(f"{len(tokens)} active suppressions from {args.topic_prefix + args.topic}", file=sys.stderr)
    return 0


def _add_worker(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "worker", help="run the privacy app (faust): requests -> suppressions and erasure notices",
        description=("Read subject requests from privacy.requests (the only reader of raw subjects), tokenise "
                     "them with the worker keyring, keep each subscriber's suppression state in a "
                     "changelog-backed table and publish it to the compacted privacy.suppressions (keyed by "
                     "token; a lifted restriction is published as active=false). Erasure requests also "
                     "publish a notice to privacy.erasures. Serves /health and /metrics; SIGTERM stops "
                     "cleanly."))
    add_app_arguments(p, app_id=DEFAULT_APP_ID, web_port=DEFAULT_WEB_PORT)
    p.add_argument("--keyring", default=None,
                   help="worker keyring (env CDRPIPE_KEYRING or CDRPIPE_WORKER_KEYRING_JSON)")
    p.add_argument("--region", default=os.environ.get("CDRPIPE_REGION", "GB"),
                   help="region for national-format numbers, as the pipeline's (env CDRPIPE_REGION; default GB)")
    p.add_argument("--token-bits", type=int, default=DEFAULT_TOKEN_BITS,
                   help=f"token length in bits, as the pipeline's (default {DEFAULT_TOKEN_BITS})")
    p.add_argument("--requests-topic", default=None, help=f"default {REQUESTS} (after --topic-prefix)")
    p.add_argument("--suppressions-topic", default=None, help=f"default {SUPPRESSIONS}")
    p.add_argument("--erasures-topic", default=None, help=f"default {ERASURES}")
    p.set_defaults(func=_cmd_worker)


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("suppressions", help="export the active suppressions as JSON lines",
                       description=("Read the compacted privacy.suppressions topic to its end and write the "
                                    "active tokens as JSON lines, the format of `cdrpipe process --suppressions`."))
    e.add_argument("--bootstrap-servers", default=None, help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    e.add_argument("--topic", default=SUPPRESSIONS, help=f"default {SUPPRESSIONS}")
    e.add_argument("--topic-prefix", default="", help="prepend this to the topic name")
    e.add_argument("--output", default="-", help="file to write (default - for stdout)")
    e.add_argument("--timeout", type=float, default=30.0, help="seconds to read the topic to its end")
    e.add_argument("-X", action="append", metavar="KEY=VALUE", help="librdkafka client setting, repeatable")
    e.set_defaults(func=_cmd_export)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe privacy submit|status|extend|close|export|worker|suppressions``."""
    p = subparsers.add_parser("privacy", help="subject rights: submit requests, track them, export, run the privacy app",
                              description="Data-subject requests (GDPR Art. 15, 17, 18, 20, 21) for the CDR pipeline.")
    sub = p.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)
    register_submit(sub)
    register_commands(sub)
    add_subject_export(sub)
    _add_worker(sub)
    _add_export(sub)
