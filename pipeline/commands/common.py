"""What several commands share: flag groups (metrics, faust apps), a reference given on the command line, a private output file."""
from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import sys
from typing import BinaryIO

from pipeline.apps.options import SUPPORTED_X
from pipeline.errors import FatalError, UsageError, os_why
from pipeline.kafka_config import ENV_BOOTSTRAP

_REFERENCE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?$")


def reference(value: str | None, flag: str, what: str) -> str:
    """A warrant reference or officer id: required, printable ASCII, at most 128 characters."""
    text = (value or "").strip()
    if not text:
        raise UsageError(f"{flag} is required: every access to the vault must name {what}")
    if not _REFERENCE.match(text):
        raise UsageError(f"{flag} must be 1-128 printable ASCII characters")
    return text


def open_private_output(path: str | None) -> BinaryIO:
    """The query's output: stdout, or a file readable by its owner only (it holds raw records).

    An existing file is made 0600 *before* it is emptied and written, so raw records never sit
    in a file that others could read, whatever mode it had (open's mode applies only on creation).
    """
    if not path or path == "-":
        return sys.stdout.buffer
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        symlink = " (a symlink is refused; give a plain file)" if exc.errno == errno.ELOOP else ""
        raise FatalError(f"cannot write --output {path}: {os_why(exc)}{symlink}; give a file in a directory you "
                         "can write to") from None
    try:
        os.fchmod(fd, 0o600)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise FatalError(f"cannot make --output {path} private (mode 0600): {exc.strerror}") from None
    return os.fdopen(fd, "wb")


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-addr`` (env ``CDRPIPE_METRICS_PORT``/``_ADDR``), alike for every service."""
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (env CDRPIPE_METRICS_PORT; 0 picks one; "
                             "default off)")
    parser.add_argument("--metrics-addr", default="0.0.0.0",
                        help="address for the metrics endpoint (env CDRPIPE_METRICS_ADDR; default 0.0.0.0)")


def add_app_arguments(p: argparse.ArgumentParser, *, app_id: str, web_port: int) -> None:
    """Flags every faust app shares: Kafka, security, internal topics, web, session timeout."""
    p.add_argument("--bootstrap-servers", default=None,
                   help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="security setting, repeatable: " + ", ".join(SUPPORTED_X))
    p.add_argument("--topic-prefix", default="",
                   help="prepend this to every topic name, the app id included (tests, shared clusters)")
    p.add_argument("--app-id", default=app_id,
                   help=f"faust app id = consumer group and prefix of its internal topics (default {app_id})")
    p.add_argument("--partitions", type=int, default=3,
                   help="partitions of the app's internal topics when it creates them (default 3)")
    p.add_argument("--replication-factor", type=int, default=1,
                   help="replication factor of the internal topics it creates (default 1; use 3 in production)")
    p.add_argument("--session-timeout", type=float, default=30.0,
                   help="consumer-group session timeout, seconds (default 30): after a crash the next "
                        "worker may wait this long to join")
    p.add_argument("--web-host", default="127.0.0.1", help="address of /health and /metrics (default 127.0.0.1)")
    p.add_argument("--web-port", type=int, default=web_port,
                   help=f"port of /health and /metrics (default {web_port}; 0 turns them off)")
    p.add_argument("--data-dir", default=None,
                   help="faust data directory (default: a temporary one; tables live in Kafka changelogs)")


def action_group(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The actions of a command (``cdrpipe vault ACTION``); the command alone prints its help and exits 2."""
    def _no_action(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=_no_action)
    return parser.add_subparsers(dest=dest, metavar="ACTION")
