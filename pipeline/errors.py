"""The errors every part of cdrpipe raises: one root, two kinds, one exit code each.

Domain modules raise these (or their own subclasses: ``AclMatrixError``, ``BrokerError`` …);
the command layer (:func:`pipeline.cli.main`) maps them to exit codes, a contract for operators'
scripts: 0 done, 1 fatal, 2 usage. No domain module imports the command line for them.
"""
from __future__ import annotations

import errno

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class CdrpipeError(Exception):
    """Anything cdrpipe refuses or cannot do; the message says what to do and never holds a secret."""

    exit_code = EXIT_FATAL


class UsageError(CdrpipeError):
    """A problem the user can fix by changing the command line (exit code 2)."""

    exit_code = EXIT_USAGE


class FatalError(CdrpipeError):
    """A problem that stops the run; the message says what to do (exit code 1)."""

    exit_code = EXIT_FATAL


def os_why(exc: OSError) -> str:
    """An OSError in words for a one-line message (ENOTDIR: which part of the path is wrong)."""
    if exc.errno == errno.ENOTDIR or isinstance(exc, FileExistsError):
        return "a part of the path is a file, not a directory"
    return exc.strerror or type(exc).__name__
