"""Command-line options and settings of cdrpipe's faust apps, importable without faust.

``cdrpipe --help`` builds every parser; keeping these here means it does not import faust and
aiokafka (about a second) just to print help.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.kafka_config import parse_x_options, require_bootstrap

#: -X keys the faust apps understand (aiokafka is not librdkafka: anything else is refused).
SUPPORTED_X = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
               "ssl.ca.location", "ssl.certificate.location", "ssl.key.location")
#: Kafka's default lower bound for group.min.session.timeout.ms.
MIN_SESSION_TIMEOUT = 6.0


@dataclass(frozen=True)
class AppSettings:
    """What every faust app of cdrpipe needs to reach Kafka and serve health and metrics."""

    bootstrap: str
    app_id: str
    x: Mapping[str, str] = field(default_factory=dict)
    #: Partitions of the internal topics (repartition and changelog); fixed once created.
    partitions: int = 3
    replication_factor: int = 1
    #: Consumer-group session timeout: how long a SIGKILLed worker blocks its successor's join.
    session_timeout: float = 30.0
    web_host: str = "127.0.0.1"
    #: Port of /health and /metrics; 0 turns the web server off.
    web_port: int = 6066
    #: faust's data directory; None makes a temporary one (memory tables keep nothing on disk).
    data_dir: str | None = None
    log_level: str = "INFO"


def app_settings(args: argparse.Namespace) -> AppSettings:
    """:class:`AppSettings` from the shared flags (``pipeline.commands.common.add_app_arguments``)."""
    bootstrap = require_bootstrap(args.bootstrap_servers)
    if args.partitions < 1 or args.replication_factor < 1:
        raise UsageError("--partitions and --replication-factor must be at least 1")
    if not 0 <= args.web_port < 65536:
        raise UsageError("--web-port must be 0-65535")
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return AppSettings(bootstrap=bootstrap, app_id=args.topic_prefix + args.app_id,
                       x=parse_x_options(args.X), partitions=args.partitions,
                       replication_factor=args.replication_factor, session_timeout=args.session_timeout,
                       web_host=args.web_host, web_port=args.web_port, data_dir=args.data_dir,
                       log_level=str(level))


def ensure_dir(path: str | None) -> None:
    """Create a given data directory (faust creates only the last level)."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
