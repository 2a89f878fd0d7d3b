"""`cdrpipe` itself: the command -> module map, and a run imports only its command's module."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from pipeline import cli


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    return list(next(a for a in parser._actions if a.dest == "command").choices)


def test_command_map_is_exactly_what_the_modules_register():
    for module in cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        importlib.import_module(module).register(parser.add_subparsers(dest="command"))
        assert sorted(_choices(parser)) == sorted(c for c, m in cli.COMMANDS.items() if m == module), module
    assert _choices(cli.build_parser()) == list(cli.COMMANDS)  # --help lists them all, in order


@pytest.mark.parametrize(("argv", "command"), [
    (["process", "--input", "x"], "process"),
    (["--log-level", "DEBUG", "token", "--kind", "imsi"], "token"),
    (["--log-level=DEBUG", "vault", "query"], "vault"),
    (["--help"], None),
    (["frobnicate"], None),
    (["--log-level", "process"], None),  # the option's value, not a command
])
def test_named_command(argv, command):
    assert cli._named_command(argv) == command


def test_one_command_imports_only_its_module():
    code = ("import sys; from pipeline import cli; cli.build_parser(['token', 'x']); "
            "print(' '.join(m for m in cli.COMMAND_MODULES if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["pipeline.commands.token"]


def test_unknown_command_is_a_usage_error_that_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(command in err for command in cli.COMMANDS)
