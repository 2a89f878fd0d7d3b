"""Key files must be private: a keyring readable by group or others is refused, as ssh refuses such a key.

A keyring (or an audit signing key) that other accounts on the machine can read is a key that
may already have leaked; loading it silently would hide that. So every loader of a key *file*
asks :func:`insecure_key_file` first and refuses with the exact ``chmod 600 <path>`` to run.
Keyrings given as environment JSON (``CDRPIPE_WORKER_KEYRING_JSON`` …) are not files and are
not checked.

The escape hatch is for container runtimes that mount secrets with modes the process cannot
change (Kubernetes' default ``defaultMode: 0644``, a read-only bind mount): ``--insecure-key-permissions``
on every command that loads a key file (added by :func:`add_key_permission_flags`), or
``CDRPIPE_INSECURE_KEY_PERMISSIONS=1``.

This module imports nothing heavy: ``pipeline.cli`` uses it for every command.
"""
from __future__ import annotations

import argparse
import os
import shlex
import stat
from collections.abc import Iterator
from contextlib import contextmanager

ENV_INSECURE_KEY_PERMISSIONS = "CDRPIPE_INSECURE_KEY_PERMISSIONS"
FLAG = "--insecure-key-permissions"
#: Options that name a key file: a parser with one of them gets :data:`FLAG`.
KEY_FILE_OPTIONS = ("--keyring", "--audit-key")
#: Group and other permission bits: any of them makes a key file too open (ssh's rule).
TOO_OPEN = 0o077

_allowed = False  # set for one command's run by insecure_key_permissions()


def _env_allows() -> bool:
    return os.environ.get(ENV_INSECURE_KEY_PERMISSIONS, "").strip().lower() in ("1", "true", "yes", "on")


def allowed() -> bool:
    """Whether key files open to group or others are accepted now (the flag's block, or the env var)."""
    return _allowed or _env_allows()


@contextmanager
def insecure_key_permissions(allow: bool) -> Iterator[None]:
    """Within the block, accept key files open to group or others when ``allow`` (the flag's value)."""
    global _allowed
    previous = _allowed
    _allowed = previous or bool(allow)
    try:
        yield
    finally:
        _allowed = previous


def insecure_key_file(path: str | os.PathLike[str], what: str = "keyring") -> str | None:
    """Why the key file at ``path`` is refused (one line, with the chmod to run), or None if it may be read.

    Only regular files are checked (a pipe such as ``<(vault read …)`` is private to the process);
    a file that cannot be stat'ed is left to the reader, which reports it. The message names the
    file and its mode, never its content.
    """
    if allowed():
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & TOO_OPEN:
        return None
    mode = stat.S_IMODE(st.st_mode)
    who = "group and others" if mode & 0o070 and mode & 0o007 else "group" if mode & 0o070 else "others"
    return (f"{what} {path} is accessible by {who} (mode {mode:04o}); a key file must be private to its owner: "
            f"run `chmod 600 {shlex.quote(os.fspath(path))}` (for a secret mounted by a container runtime that you "
            f"cannot change, pass {FLAG} or set {ENV_INSECURE_KEY_PERMISSIONS}=1)")


def add_key_permission_argument(parser: argparse.ArgumentParser) -> None:
    """Add :data:`FLAG` to one parser."""
    parser.add_argument(FLAG, dest="insecure_key_permissions", action="store_true",
                        help=f"accept key files readable by group or others (env {ENV_INSECURE_KEY_PERMISSIONS}=1); "
                             "only for secrets a container runtime mounts with a mode you cannot change")


def add_key_permission_flags(parser: argparse.ArgumentParser) -> None:
    """Give :data:`FLAG` to every (sub-)command parser that takes a key file (``--keyring``, ``--audit-key``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_key_permission_flags(sub)
    options = parser._option_string_actions
    if any(o in options for o in KEY_FILE_OPTIONS) and FLAG not in options:
        add_key_permission_argument(parser)
