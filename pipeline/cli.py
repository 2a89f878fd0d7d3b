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

#: Modules that own a sub-command, in the order `cdrpipe --help` lists them.
COMMAND_MODULES = (
    "pipeline.runners.files",
    "pipeline.keys",
    "pipeline.broker",
    "pipeline.topics",
    "pipeline.acl",
    "pipeline.vault.cli",
    "pipeline.runners.kafka",
    "pipeline.demo",
    "pipeline.privacy.cli",
    "pipeline.aggregates.cli",
)

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem the user can fix by changing the command line (exit code 2)."""


class FatalError(Exception):
    """A problem that stops the run; the message says what to do (exit code 1)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdrpipe",
        description="Pseudonymise telecom CDRs: analytics tokens, sealed retention, dead letters.",
    )
    parser.add_argument("--log-level", default=os.environ.get("CDRPIPE_LOG_LEVEL", "INFO"),
                        help="logging level (env CDRPIPE_LOG_LEVEL; default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.allocator import tune_for_batches
    tune_for_batches()  # before the command modules import Polars
    parser = build_parser()
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
