"""`cdrpipe broker`: a local single-node Apache Kafka (KRaft) in the foreground (:mod:`pipeline.broker`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from pipeline.broker import DEFAULT_HEAP, KAFKA_VERSION, BrokerError, LocalKafka
from pipeline.errors import UsageError


class _Interrupted(BaseException):
    """SIGTERM/SIGINT arrived while the broker was still starting."""


def _env_int(name: str) -> int | None:
    """An integer from the environment, or None when unset."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a port number") from None


def _run_broker(args: argparse.Namespace) -> int:
    """`cdrpipe broker`: run a local broker until SIGTERM/SIGINT, printing its address once ready."""
    port = args.port if args.port is not None else _env_int("CDRPIPE_BROKER_PORT")
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    data_dir = args.data_dir or None
    stop = threading.Event()
    ready = False

    def _on_signal(signum: int, _frame: object) -> None:
        if not ready:  # still starting: unwind start(), which stops the JVM and Maven
            raise _Interrupted(signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    broker = LocalKafka(port=port, data_dir=data_dir, heap=args.heap)
    try:
        print(f"starting Kafka {KAFKA_VERSION} (KRaft, single node)…", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            broker.start()
        except _Interrupted:
            print("interrupted before the broker was ready; stopped", file=sys.stderr, flush=True)
            return 0
        ready = True
        print(f"Kafka ready in {time.monotonic() - started:.1f} s; log {broker.log_path}; "
              "stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        print(broker.bootstrap, flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                raise BrokerError(f"Kafka broker exited unexpectedly; broker log "
                                  f"{broker.log_path}:\n{broker.log_tail()}")
        print("stopping Kafka…", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe broker` (a local single-node Kafka in the foreground)."""
    p = subparsers.add_parser(
        "broker", help="run a local single-node Apache Kafka (KRaft) for dev and tests",
        description=("Run a local single-node Apache Kafka broker (KRaft) in the foreground. "
                     "Prints the bootstrap address on stdout once ready; stops on SIGTERM/Ctrl-C. "
                     "Needs Java 17+ and, on the first run, Maven to fetch the jars."))
    p.add_argument("--port", type=int, default=None,
                   help="client port on 127.0.0.1 (env CDRPIPE_BROKER_PORT; default: a free one)")
    p.add_argument("--data-dir", default=None,
                   help="keep the broker's data here across runs (env CDRPIPE_BROKER_DATA_DIR; "
                        "default: a temporary dir removed on exit)")
    p.add_argument("--heap", default=DEFAULT_HEAP,
                   help=f"JVM heap, min and max (env CDRPIPE_BROKER_HEAP; default {DEFAULT_HEAP}, as Kafka's scripts)")
    p.set_defaults(func=_run_broker)
