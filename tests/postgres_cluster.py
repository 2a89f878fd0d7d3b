"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temp dir, one free loopback port.

Why here and not a server the machine runs: like the Kafka fixture's broker, the test session
owns the server it tests against, so a run needs nothing started beforehand (CI installs the
Debian server package; ``.ci/run`` starts nothing). The server binaries are found under
``/usr/lib/postgresql/*/bin`` (newest first) or ``$CDRPIPE_PG_BIN``. PostgreSQL refuses to run
as root, so when the tests run as root (CI does) the cluster runs as the ``postgres`` system
user (made by the Debian package), or ``nobody``.

Authentication is ``trust`` on 127.0.0.1 only: the role tests connect as each role and check
what the *privileges* refuse, which is what the deploy SQL grants.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ENV_PG_BIN = "CDRPIPE_PG_BIN"
ENV_REQUIRE = "CDRPIPE_REQUIRE_POSTGRES"
SUPERUSER = "cdrpipe_admin"
#: The tests' server settings: no durability (a test cluster is thrown away), small memory.
TEST_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
                 "-c shared_buffers=64MB")


def find_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL's server is not installed."""
    given = os.environ.get(ENV_PG_BIN)
    candidates = [given] if given else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                              key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                                              reverse=True)
    for path in candidates:
        if path and os.access(os.path.join(path, "initdb"), os.X_OK) and os.access(os.path.join(path, "pg_ctl"),
                                                                                   os.X_OK):
            return Path(path)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One cluster: :meth:`start`, :meth:`url` for a database and role, :meth:`stop` (removes its files)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cdrpipe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._user is None:
                raise RuntimeError("running as root and no postgres/nobody user to run the cluster as")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.root, 0o700)

    def __repr__(self) -> str:
        return f"LocalPostgres(port={self.port})"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        user = self._user

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if user is not None:
            env["HOME"] = str(self.root)
        return subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=demote, env=env, cwd=self.root, check=False)

    def start(self, settings: str = TEST_SETTINGS) -> None:
        """initdb and start; ``settings`` are ``-c name=value`` server options (default: the tests' fast ones)."""
        done = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                         "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' {settings}"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                         "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-1000:]}\n{self.log_tail()}")
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not listen on {self.port}\n{self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database (owned by the superuser); returns its URL."""
        import psycopg
        from psycopg import sql
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
