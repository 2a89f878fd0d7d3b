"""How every ``cdrpipe`` command logs: human text (default) or one JSON object a line.

Why JSON: a platform team ships container logs with a collector (Fluent Bit, Vector, Promtail)
that parses each line; multi-line text and free-form prefixes make that guesswork. With
``--log-format json`` (env ``CDRPIPE_LOG_FORMAT``) every line on stderr is one object with the
same keys, always present (:data:`JSON_KEYS`)::

    {"ts": "2026-12-04T18:00:00.123Z", "level": "INFO", "logger": "pipeline.runners.kafka",
     "msg": "worker w-0: assigned 3 partition(s) …", "command": "run", "pid": 7, "exc": null}

``exc`` holds the traceback when one is logged, else null. Anything else written to stderr
while a command runs (its final error message, a summary printed by a library) is wrapped into
an object of the same shape with ``logger`` "stderr", so a collector never meets a line it cannot
parse. Output on stdout (the commands' JSON summaries, exports) is data and stays as it is.

What is logged does not change with the format: messages hold counts, coordinates and codes,
never an identifier, and the leak tests run in both formats.

Public API:
    ``LOG_FORMATS``, ``ENV_LOG_FORMAT``, ``JSON_KEYS``
    ``add_log_arguments(parser, suppress=False)``   ``--log-level``/``--log-format``
    ``configure_logging(level, fmt, command) -> restore``  set up the root logger (and stderr in JSON mode)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

ENV_LOG_FORMAT = "CDRPIPE_LOG_FORMAT"
ENV_LOG_LEVEL = "CDRPIPE_LOG_LEVEL"
LOG_FORMATS = ("text", "json")
#: The keys of every JSON log line, in order; a collector's parser can rely on them.
JSON_KEYS = ("ts", "level", "logger", "msg", "command", "pid", "exc")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: How the CLI and argparse end on an error: ``cdrpipe vault: error: …``, ``cdrpipe run: …``.
_ERROR_LINE = re.compile(r"cdrpipe(?: [\w-]+)*: ")


def add_log_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``--log-level`` and ``--log-format`` (env ``CDRPIPE_LOG_LEVEL``/``CDRPIPE_LOG_FORMAT``).

    ``suppress``: no default, for a sub-command's parser, so the flag may also follow the
    sub-command (``cdrpipe run --log-format json``) without overriding one given before it.
    """
    def default(env: str, fallback: str) -> Any:
        return argparse.SUPPRESS if suppress else os.environ.get(env, fallback)

    parser.add_argument("--log-level", default=default(ENV_LOG_LEVEL, "INFO"),
                        help=f"logging level (env {ENV_LOG_LEVEL}; default INFO)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, type=str.lower,
                        default=default(ENV_LOG_FORMAT, "text"),
                        help=f"text for people, json for a log collector: one object a line with the keys "
                             f"{', '.join(JSON_KEYS)} (env {ENV_LOG_FORMAT}; default text)")


def _utc(created: float) -> str:
    return _dt.datetime.fromtimestamp(created, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One log record as one JSON object with exactly :data:`JSON_KEYS`."""

    def __init__(self, command: str | None = None) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        exc = None
        if record.exc_info:
            exc = self.formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        return json_line(record.getMessage(), level=record.levelname, logger=record.name,
                         command=self.command, created=record.created, exc=exc)


def json_line(msg: str, *, level: str, logger: str, command: str | None, created: float | None = None,
              exc: str | None = None) -> str:
    """The JSON text of one log object (no newline); ``created`` defaults to now."""
    doc = {"ts": _utc(created if created is not None else _dt.datetime.now().timestamp()), "level": level,
           "logger": logger, "msg": msg, "command": command, "pid": os.getpid(), "exc": exc}
    return json.dumps(doc, ensure_ascii=False, default=str)


class JsonLinesStream(io.TextIOBase):
    """A stderr stand-in that turns each line written to it into a JSON log object.

    Lines are buffered until their newline, so ``print(..., file=sys.stderr)`` (which writes the
    text and the newline separately) gives one object. ``level`` is ERROR for the command's
    final usage or fatal error (``cdrpipe COMMAND: …``, from :func:`pipeline.cli.main` or argparse), else INFO.
    """

    def __init__(self, target: TextIO, command: str | None) -> None:
        super().__init__()
        self.target = target
        self.command = command
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        level = "ERROR" if _ERROR_LINE.match(line) and ": note:" not in line else "INFO"
        self.target.write(json_line(line, level=level, logger="stderr", command=self.command) + "\n")

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self._emit(self._buffer)
                self._buffer = ""
        self.target.flush()

    def fileno(self) -> int:  # faulthandler and subprocesses need the real descriptor
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")


class _CdrpipeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler cdrpipe installs in JSON mode (told apart from handlers others installed)."""


def configure_logging(level: str, fmt: str = "text", command: str | None = None) -> Callable[[], None]:
    """Set up logging for one command; returns a callable that undoes it (tests call ``main`` often).

    Text: ``logging.basicConfig`` as always (it leaves a root logger that already has handlers
    alone). JSON: a handler writing objects to the real stderr, and ``sys.stderr`` replaced by a
    :class:`JsonLinesStream`, so that everything else written there is an object too.
    """
    root = logging.getLogger()
    if fmt != "json":
        logging.basicConfig(level=level.upper(), stream=sys.stderr, format=TEXT_FORMAT)
        return lambda: None
    for old in [h for h in root.handlers if isinstance(h, _CdrpipeHandler)]:
        root.removeHandler(old)
    real_stderr = sys.stderr
    handler = _CdrpipeHandler(real_stderr)
    handler.setFormatter(JsonFormatter(command))
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    wrapper = JsonLinesStream(real_stderr, command)
    sys.stderr = wrapper

    def restore() -> None:
        wrapper.flush()
        if sys.stderr is wrapper:
            sys.stderr = real_stderr
        root.removeHandler(handler)
        root.setLevel(previous_level)

    return restore


__all__ = ["ENV_LOG_FORMAT", "ENV_LOG_LEVEL", "JSON_KEYS", "LOG_FORMATS", "JsonFormatter", "JsonLinesStream",
           "add_log_arguments", "configure_logging", "json_line"]
