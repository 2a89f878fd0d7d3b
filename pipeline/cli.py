"""The `cdrpipe` command line: it only dispatches, to one module of :mod:`pipeline.commands` per command.

Every command module exposes ``register(subparsers)``; it adds its parser(s) and sets
``func`` to a callable ``(argparse.Namespace) -> int`` (the exit code). Every flag gets its
environment variable from :mod:`pipeline.commands.env`. The domain raises
:class:`~pipeline.errors.CdrpipeError`; here its kind becomes the exit code, a contract for
operators' scripts: 0 done, 1 fatal, 2 usage.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys
import threading

from pipeline.commands import env
from pipeline.errors import EXIT_FATAL, EXIT_OK, EXIT_USAGE, CdrpipeError, FatalError, UsageError
from pipeline.key_permissions import add_key_permission_flags, insecure_key_permissions
from pipeline.logs import ENV_LOG_FORMAT, add_log_arguments, configure_logging

#: Each sub-command and the module that owns it (registers its parser), in `cdrpipe --help` order.
COMMANDS = {
    "process": "pipeline.commands.process",
    "keys": "pipeline.commands.keys",
    "token": "pipeline.commands.token",
    "broker": "pipeline.commands.broker",
    "topics": "pipeline.commands.topics",
    "acls": "pipeline.commands.acls",
    "vault": "pipeline.commands.vault",
    "produce": "pipeline.commands.produce",
    "run": "pipeline.commands.run",
    "demo": "pipeline.commands.demo",
    "privacy": "pipeline.commands.privacy",
    "aggregates": "pipeline.commands.aggregates",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))
#: Commands that end without CPython's interpreter teardown (see :func:`run`).
FAST_EXIT = frozenset({"process"})

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_USAGE", "CdrpipeError", "FatalError", "UsageError", "build_parser", "main",
           "run"]


def _named_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first positional), if it is one of ours."""
    args = iter(argv)
    for arg in args:
        if arg in ("--log-level", "--log-format"):
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
    add_log_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMANDS[command],) if command else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _log_flags_after_commands(parser)
    add_key_permission_flags(parser)  # --insecure-key-permissions wherever a key file is loaded
    env.apply(parser)  # every flag's CDRPIPE_* variable: its default when set, and named in --help
    return parser


def _sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of ``parser``'s sub-commands (one level)."""
    return [p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for p in dict.fromkeys(action.choices.values())]


def _log_flags_after_commands(parser: argparse.ArgumentParser) -> None:
    """Let ``--log-level``/``--log-format`` also follow the command (``cdrpipe run --log-format json``).

    Why: operators put a service's flags after its command, and a manifest's ``args`` list is
    easier to read that way. Given after the command, a flag wins; the global one stays the default.
    """
    for sub in _sub_parsers(parser):
        if _sub_parsers(sub):
            _log_flags_after_commands(sub)
        elif not {"--log-level", "--log-format"} & set(sub._option_string_actions):
            add_log_arguments(sub, suppress=True)


def _command_name(args: argparse.Namespace) -> str | None:
    """The command and its action (``vault sink``), for the ``command`` key of JSON logs."""
    if not args.command:
        return None
    action = next((v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)), None)
    return f"{args.command} {action}" if action else args.command


def _json_requested(argv: list[str]) -> bool:
    """Whether ``argv`` or the environment asks for JSON logs (the last flag wins, as argparse's)."""
    choice = os.environ.get(ENV_LOG_FORMAT, "text")
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            choice = argv[i + 1]
        elif arg.startswith("--log-format="):
            choice = arg.split("=", 1)[1]
    return choice.lower() == "json"


def main(argv: list[str] | None = None) -> int:
    from pipeline.allocator import tune_for_batches
    tune_for_batches()  # before the command modules import Polars
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    # A usage error is printed while parsing, before the flags are known: when JSON is asked for
    # (env or flag), wrap stderr already, so that a collector gets that message as an object too.
    restore_early = configure_logging("INFO", "json") if _json_requested(argv) else (lambda: None)
    try:
        args = parser.parse_args(argv)
    finally:
        restore_early()
    restore_logging = configure_logging(args.log_level, args.log_format, _command_name(args))
    try:
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            with insecure_key_permissions(getattr(args, "insecure_key_permissions", False)):
                return int(args.func(args) or 0)
        except CdrpipeError as exc:
            usage = isinstance(exc, UsageError)
            print(f"cdrpipe {args.command}: {'' if usage else 'error: '}{exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130
        except Exception:
            if args.log_format != "json":
                raise
            # A collector must get the traceback as one object, not as a screen of loose lines.
            logging.getLogger("pipeline.cli").critical("cdrpipe %s: unexpected error; exiting", args.command,
                                                       exc_info=True)
            return EXIT_FATAL
    finally:
        restore_logging()


def run() -> None:
    """The console entry point: :func:`main`, then exit; a file backfill skips the interpreter's teardown.

    Why: when `cdrpipe process` has closed its outputs and printed its summary, nothing is left
    to do, yet CPython's final collection and module teardown took ~45 ms of a 2 s 1M-record
    run (perf). So for the commands in :data:`FAST_EXIT` the process ends with ``os._exit``
    after the atexit handlers ran (logging's flush, tempfile clean-ups) and stdout and stderr
    were flushed. An exception, another command, or a Python thread still alive gets the
    normal exit.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if _named_command(argv) in FAST_EXIT and threading.active_count() == 1:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a reader that went away (a closed pipe)
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
