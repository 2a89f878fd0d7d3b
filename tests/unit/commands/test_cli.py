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


# An atexit handler, and a global whose __del__ only runs when the interpreter is torn down.
_RUN = ("import atexit, sys; atexit.register(lambda: print('atexit ran', file=sys.stderr)); "
        "D = type('D', (), {'__del__': lambda self: sys.__stderr__.write('torn down')}); d = D(); "
        "sys.argv = ['cdrpipe', *sys.argv[1:]]; from pipeline.cli import run; run()")


def test_process_ends_without_teardown_yet_flushes_output_and_runs_atexit(tmp_path):
    # `run` leaves `cdrpipe process` with os._exit: the summary (stdout, a pipe here), the
    # progress and atexit handlers must still come out, and the exit code stay the command's.
    from pipeline.synthetic import write_sample
    keys, sample = tmp_path / "keys", tmp_path / "in.jsonl"
    assert cli.main(["keys", "generate", "--dir", str(keys)]) == 0
    write_sample(sample, 200, seed=3)
    argv = ["process", "--keyring", str(keys / "worker-keyring.json"), "--input", str(sample),
            "--out-dir", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"in":200' in done.stdout.splitlines()[-1].replace(" ", "")
    assert "atexit ran" in done.stderr and "torn down" not in done.stderr
    assert len((tmp_path / "out" / "retention.jsonl").read_bytes()) > 0
    missing = subprocess.run([sys.executable, "-c", _RUN, *argv[:3], "--input", str(tmp_path / "nope.jsonl"),
                              "--out-dir", str(tmp_path / "out2")], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "atexit ran" in missing.stderr
    assert "nope.jsonl" in missing.stderr


def test_other_commands_exit_normally(tmp_path):
    done = subprocess.run([sys.executable, "-c", _RUN, "keys", "generate", "--dir", str(tmp_path / "k")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "atexit ran" in done.stderr and "torn down" in done.stderr
    assert (tmp_path / "k" / "worker-keyring.json").exists()
