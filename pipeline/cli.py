"""The `cdrpipe` command line: one sub-command per runner, each owned by its module.

Every command module exposes ``register(subparsers)``; it adds its parser(s) and sets
``func`` to a callable ``(argparse.Namespace) -> int`` (the exit code). Exit codes are a
contract for operators' scripts: 0 done, 1 fatal, 2 usage.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

#: Each sub-command and the module that owns it (registers its parser), in `cdrpipe --help` order.
COMMANDS = {
    "process": "pipeline.runners.files",
    "keys": "pipeline.keys",
    "token": "pipeline.keys",
    "broker": "pipeline.broker",
    "topics": "pipeline.topics",
    "acls": "pipeline.acl",
    "vault": "pipeline.vault.cli",
    "run": "pipeline.runners.kafka",
    "demo": "pipeline.demo",
    "privacy": "pipeline.privacy.cli",
    "aggregates": "pipeline.aggregates.cli",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem the user can fix by changing the command line (exit code 2)."""


class FatalError(Exception):
    """A problem that stops the run; the message says what to do (exit code 1)."""


def _named_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first positional), if it is one of ours."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` that names a sub-command, only that command's module is imported.

    Why: the command modules pull in Polars, Kafka clients, jsonschema and more; a run of
    one command should not pay for the others (`cdrpipe token` starts in half the time).
    ``cdrpipe --help`` and unknown commands still see them all.
    """
    command = _named_command(argv) if argv is not None else None
    parser = argparse.ArgumentParser(
        prog="cdrpipe",
        description="Pseudonymise telecom CDRs: analytics tokens, sealed retention, dead letters.",
    )
    parser.add_argument("--log-level", default=os.environ.get("CDRPIPE_LOG_LEVEL", "INFO"),
                        help="logging level (env CDRPIPE_LOG_LEVEL; default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.allocator import tune_for_batches
    tune_for_batches()  # before the command modules import Polars
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"cdrpipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        print(f"cdrpipe {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Re-import so `python -m pipeline.cli` shares one module (and one set of error classes) with the commands.
    from pipeline.cli import main as _main
    sys.exit(_main())
