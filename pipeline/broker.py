"""A local single-node Apache Kafka broker (KRaft, combined mode) for dev, demos and tests.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (resolved once with ``mvn``,
the classpath cached under ``~/.cache/cdrpipe/kafka-<version>/``) and run on Java 17. This is the
real broker, so transactions, ``read_committed``, retention and ACLs behave as in production.

Public API:
    ``ensure_kafka_jars() -> str``         the classpath (resolves with Maven on the first run)
    ``LocalKafka(...)``                      context manager; ``.bootstrap`` is ``"127.0.0.1:PORT"``
    ``cdrpipe broker [--port P] [--data-dir D]``  the same in the foreground
    ``python -m pipeline.broker --prefetch``     resolve the jars ahead of tests (CI)
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from pipeline.errors import FatalError

log = logging.getLogger(__name__)

#: Keep in step with ``kafka.version`` in deploy/kafka/pom.xml (a unit test checks).
KAFKA_VERSION = "4.1.2"
#: Broker node id of the single KRaft node (broker and controller in one process).
NODE_ID = 1
#: Kafka's own start script's heap (``-Xmx1G -Xms1G``). At 512m the broker collected about three
#: times a second under the pipeline's output and spent ~40% more CPU (bench/kafka_e2e.py).
DEFAULT_HEAP = "1g"
DEFAULT_START_TIMEOUT = 90.0
_POM_NAME = "pom.xml"
_LOG_NAME = "broker.log"

_LOG4J2 = """\
# Written by cdrpipe: broker logs to stdout, which LocalKafka sends to broker.log.
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
"""


class BrokerError(FatalError):
    """The local broker could not be prepared, started or kept running (CLI exit code 1)."""


class MissingToolError(BrokerError):
    """Java or Maven is not installed; the message says what to install."""


# --------------------------------------------------------------------------- jars


def _pom_source() -> Path:
    """The pom to resolve: the repo's deploy/kafka/pom.xml, else the copy shipped in the package."""
    repo_pom = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / _POM_NAME
    if repo_pom.is_file():
        return repo_pom
    packaged = Path(__file__).resolve().parent / "data" / "kafka" / _POM_NAME
    if packaged.is_file():
        return packaged
    raise BrokerError(f"no Kafka pom found at {repo_pom} or {packaged}; reinstall cdrpipe")


def cache_dir() -> Path:
    """Where the resolved classpath is cached (env CDRPIPE_CACHE_DIR, else XDG cache)."""
    base = os.environ.get("CDRPIPE_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdrpipe"
    return root / f"kafka-{KAFKA_VERSION}"


def _java_bin() -> str:
    """The java launcher (JAVA_HOME first), checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").is_file() \
        else shutil.which("java")
    if not java:
        raise MissingToolError(
            "java not found: Kafka 4.x needs Java 17 or newer "
            "(install it, e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0" style
            major = int(match.group(2))
        if major < 17:
            raise MissingToolError(
                f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java 17 or newer "
                "(install openjdk-17-jre-headless or point JAVA_HOME at a newer JDK)")
    return java


def _classpath_ok(classpath: str) -> bool:
    """True when every jar of a cached classpath is still on disk (~/.m2 may have been wiped)."""
    parts = [p for p in classpath.split(os.pathsep) if p]
    return bool(parts) and all(os.path.isfile(p) for p in parts)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


#: Seconds between the progress lines of a Maven resolution (a cold one takes ~25 s).
PROGRESS_SECONDS = 3.0


def _run_maven(cmd: list[str], cwd: Path, progress: Callable[[str], None] | None,
               every: float) -> tuple[int, str]:
    """Run Maven, counting the files it downloads; a progress line every ``every`` seconds; (exit code, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    downloaded = [0]

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Downloaded from"):
                downloaded[0] += 1

    reader = threading.Thread(target=read, name="maven-output", daemon=True)
    reader.start()
    started = time.monotonic()
    while True:
        try:
            code = proc.wait(timeout=every)
            break
        except subprocess.TimeoutExpired:
            if progress:
                progress(f"  … {downloaded[0]} files downloaded so far, {time.monotonic() - started:.0f} s")
    reader.join(timeout=5)
    return code, "".join(lines)


def ensure_kafka_jars(*, refresh: bool = False, progress: Callable[[str], None] | None = _say,
                      progress_seconds: float | None = None) -> str:
    """Return the broker's Java classpath, resolving it with Maven only when no valid cache exists.

    A resolution (the first run on a machine: ~50 MB from Maven Central, ~25 s) says so on stderr
    first and then gives a progress line every few seconds, so a cold start is never silent.
    """
    src = _pom_source()
    pom_bytes = src.read_bytes()
    digest = hashlib.sha256(pom_bytes).hexdigest()[:16]
    cdir = cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    cp_file = cdir / f"classpath-{digest}.txt"
    if not refresh and cp_file.is_file():
        cached = cp_file.read_text().strip()
        if _classpath_ok(cached):
            return cached
    # One resolver at a time: parallel test sessions would otherwise race Maven on ~/.m2.
    with open(cdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not refresh and cp_file.is_file():
            cached = cp_file.read_text().strip()
            if _classpath_ok(cached):
                return cached
        mvn = shutil.which("mvn")
        if not mvn:
            raise MissingToolError(
                "mvn not found: the Kafka jars are resolved from Maven Central with Maven "
                "(install it, e.g. `apt-get install maven`)")
        work = cdir / "resolve"
        work.mkdir(exist_ok=True)
        (work / _POM_NAME).write_bytes(pom_bytes)
        tmp_out = work / "classpath.tmp"
        if progress:
            progress(f"fetching the Apache Kafka {KAFKA_VERSION} broker jars from Maven Central with Maven: a one-time "
                     f"download (about 50 MB, ~25 s), cached in {cdir} and ~/.m2 for every later run")
        started = time.monotonic()
        code, output = _run_maven(
            [mvn, "-B", "-f", str(work / _POM_NAME), "dependency:build-classpath", f"-Dmdep.outputFile={tmp_out}"],
            work, progress, PROGRESS_SECONDS if progress_seconds is None else progress_seconds)
        if code != 0 or not tmp_out.is_file():
            tail = "\n".join(line for line in output.strip().splitlines()
                             if not line.startswith(("Downloading from", "Downloaded from")))
            tail = "\n".join(tail.splitlines()[-25:])
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} "
                f"(exit {code}); check that Maven Central is reachable. Maven said:\n"
                f"{tail}")
        classpath = tmp_out.read_text().strip()
        if not _classpath_ok(classpath):
            raise BrokerError(f"Maven reported a classpath with missing jars in {tmp_out}")
        os.replace(tmp_out, cp_file)
        if progress:
            progress(f"Kafka jars ready in {time.monotonic() - started:.1f} s (cached; later runs start at once)")
        return classpath


# --------------------------------------------------------------------------- broker


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port free right now (the kernel picks it; small race accepted for dev use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on the port (checked as Kafka binds: with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, as Kafka's Uuid."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka never issues ids starting with '-' (CLI ambiguity)
            return cid


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"


def _load_libc() -> object | None:
    """libc, loaded in the parent so the forked child need not dlopen (unsafe after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _set_pdeathsig() -> None:
    """In the child: ask Linux to SIGTERM the broker if its parent dies, so no broker is orphaned."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)  # type: ignore[attr-defined]  # PR_SET_PDEATHSIG


class LocalKafka:
    """A single-node Apache Kafka (KRaft) child process, started on enter and stopped on exit.

    ``port``: client port on 127.0.0.1 (0/None picks a free one). ``data_dir``: kept after stop
    when given (reused on the next start); a temporary one is made and removed otherwise.
    ``extra_properties``: server properties added last (so they override ours, e.g. SASL/SCRAM and
    ``authorizer.class.name``); the text ``{port}``, ``{controller_port}`` and ``{data_dir}`` in
    values is replaced. ``format_args``: extra ``kafka-storage format`` arguments (e.g.
    ``--add-scram``). ``client_config``: librdkafka settings for the readiness probe (needed once
    the client listener requires SASL).
    """

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike[str] | None = None,
                 *, extra_properties: Mapping[str, str] | None = None,
                 format_args: Sequence[str] = (),
                 client_config: Mapping[str, str] | None = None,
                 heap: str = DEFAULT_HEAP,
                 start_timeout: float = DEFAULT_START_TIMEOUT,
                 die_with_parent: bool = True) -> None:
        self._requested_port = port or 0
        self._given_data_dir = Path(data_dir) if data_dir else None
        self.extra_properties = dict(extra_properties or {})
        self.format_args = list(format_args)
        self.client_config = dict(client_config or {})
        self.heap = heap
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.port = 0
        self.controller_port = 0
        self.data_dir: Path | None = None
        self._owns_data_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value for clients: ``127.0.0.1:PORT``."""
        if not self.port:
            raise BrokerError("LocalKafka is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's own log (stdout and stderr of the JVM)."""
        if self.data_dir is None:
            raise BrokerError("LocalKafka is not started")
        return self.data_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings to reach this broker (bootstrap plus ``client_config``)."""
        return {"bootstrap.servers": self.bootstrap, **self.client_config}

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker log, for diagnosing a failed start or test."""
        return _tail(self.log_path, lines)

    def start(self) -> LocalKafka:
        """Format storage if needed, start the JVM and block until the broker answers."""
        with self._lock:
            if self._proc is not None:
                raise BrokerError("LocalKafka is already started")
            if self._requested_port and _port_in_use(self._requested_port):
                # Checked first: the readiness probe would otherwise talk to that other server.
                raise BrokerError(f"port {self._requested_port} on 127.0.0.1 is already in use "
                                  "(another broker?); stop it or choose another port "
                                  "(0 picks a free one)")
            java = _java_bin()
            classpath = ensure_kafka_jars()
            self._prepare_dir()
            assert self.data_dir is not None
            try:
                self.port = self._requested_port or free_port()
                self.controller_port = free_port()
                while self.controller_port == self.port:
                    self.controller_port = free_port()
                props = self._write_config()
                self._format(java, classpath, props)
                self._launch(java, classpath, props)
                self._wait_ready()
            except BaseException:
                self._shutdown()
                raise
            return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``) and remove a temp data dir."""
        with self._lock:
            self._shutdown(timeout)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- steps ------------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        """Use the given data dir (created if missing) or make a temporary one we own."""
        if self._given_data_dir is not None:
            self._given_data_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir = self._given_data_dir.resolve()
            self._owns_data_dir = False
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="cdrpipe-kafka-"))
            self._owns_data_dir = True

    def _properties(self) -> dict[str, str]:
        """The server.properties of a single-node combined broker+controller."""
        assert self.data_dir is not None
        host = "127.0.0.1"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir / "kraft-logs"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # One node: internal topics must not ask for 3 replicas, or groups and
            # transactions wait forever.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.retention.check.interval.ms": "60000",
        }
        subst = {"{port}": str(self.port), "{controller_port}": str(self.controller_port),
                 "{data_dir}": str(self.data_dir)}
        for key, value in self.extra_properties.items():
            text = str(value)
            for marker, real in subst.items():
                text = text.replace(marker, real)
            props[key] = text
        return props

    def _write_config(self) -> Path:
        """Write server.properties (owner-only: extra properties may hold SASL secrets)."""
        assert self.data_dir is not None
        path = self.data_dir / "server.properties"
        lines = ["# Written by cdrpipe (pipeline.broker.LocalKafka); rewritten on every start."]
        for key, value in self._properties().items():
            escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"{key}={escaped}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _jvm_args(self, java: str, classpath: str, heap: str) -> list[str]:
        """The JVM command prefix: Kafka's own performance options, a fixed heap, the log4j2 configuration."""
        assert self.data_dir is not None
        return [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir}",
                "-cp", classpath]

    def _format(self, java: str, classpath: str, props: Path) -> None:
        """Format the KRaft storage once (skipped when the data dir already holds a cluster)."""
        assert self.data_dir is not None
        if (self.data_dir / "kraft-logs" / "meta.properties").is_file():
            return
        cmd = self._jvm_args(java, classpath, "256m") + [
            "-XX:TieredStopAtLevel=1", "kafka.tools.StorageTool", "format",
            "--cluster-id", _random_cluster_id(), "--config", str(props),
            "--ignore-formatted", *self.format_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=self.start_timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed "
                              f"(exit {proc.returncode}):\n{tail}")

    def _launch(self, java: str, classpath: str, props: Path) -> None:
        """Start ``kafka.Kafka`` as a child with its output in broker.log."""
        log_fh = open(self.log_path, "ab")
        self._log_fh = log_fh
        cmd = self._jvm_args(java, classpath, self.heap) + ["kafka.Kafka", str(props)]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
            cwd=self.data_dir, start_new_session=True,
            preexec_fn=_set_pdeathsig if self.die_with_parent and _LIBC is not None else None)
        log.debug("Kafka broker pid %s, log %s", self._proc.pid, self.log_path)

    def _wait_ready(self) -> None:
        """Block until the broker lists itself in metadata, or raise with the log tail."""
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        # Wait for the port first: a librdkafka client created too early backs off for seconds.
        while True:
            self._check_alive("exited while starting")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(self._timeout_message())
            time.sleep(0.2)
        quiet = logging.getLogger(f"{__name__}.probe")
        admin = AdminClient({**self.admin_config(), "logger": quiet,
                             "reconnect.backoff.max.ms": "500"})
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive("exited while starting")
            try:
                md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                if NODE_ID in md.brokers:
                    return
            except Exception as exc:  # noqa: BLE001 - KafkaException while the broker boots
                last_error = exc
            time.sleep(0.2)
        raise BrokerError(self._timeout_message(last_error))

    def _log_ref(self) -> str:
        """How to name the broker log in errors (a temporary data dir is removed on failure)."""
        if self._owns_data_dir:
            return "last lines of the broker log (its temporary dir is removed)"
        return f"broker log {self.log_path}"

    def _timeout_message(self, last_error: Exception | None = None) -> str:
        """Explain a start that did not finish in time."""
        why = f" (last error: {last_error})" if last_error else ""
        return (f"Kafka broker did not answer on {self.bootstrap} within "
                f"{self.start_timeout:.0f} s{why}; {self._log_ref()}:\n{self.log_tail()}")

    def _check_alive(self, what: str) -> None:
        """Raise with the log tail if the JVM has exited."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise BrokerError(f"Kafka broker {what} (exit {code}); {self._log_ref()}:\n"
                              f"{self.log_tail()}")

    def _shutdown(self, timeout: float = 30.0) -> None:
        """Terminate the JVM (SIGTERM, wait, SIGKILL), close the log, remove an owned data dir."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("Kafka broker pid %s ignored SIGTERM for %.0f s; killing it",
                            proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._owns_data_dir = False


def _main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.broker --prefetch`: resolve the jars ahead of tests (for CI)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.broker")
    parser.add_argument("--prefetch", action="store_true",
                        help="resolve the Kafka jars with Maven (cached) and exit")
    parser.add_argument("--print-classpath", action="store_true",
                        help="with --prefetch, print the classpath on stdout")
    args = parser.parse_args(argv)
    if not args.prefetch:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        _java_bin()
        classpath = ensure_kafka_jars()
    except FatalError as exc:
        print(f"pipeline.broker: error: {exc}", file=sys.stderr)
        return 1
    n_jars = len([p for p in classpath.split(os.pathsep) if p])
    print(f"Kafka {KAFKA_VERSION}: {n_jars} jars ready (cache {cache_dir()})", file=sys.stderr)
    if args.print_classpath:
        print(classpath)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
