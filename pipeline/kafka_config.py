"""How every command reaches Kafka: the bootstrap servers (flag or env) and ``-X key=value`` settings."""
from __future__ import annotations

import os
from collections.abc import Sequence

from pipeline.errors import UsageError

ENV_BOOTSTRAP = "CDRPIPE_BOOTSTRAP_SERVERS"
_LOCAL_HINT = " (`cdrpipe broker` prints one for local use)"


def require_bootstrap(servers: str | None, *, local_hint: bool = False) -> str:
    """The bootstrap servers of ``--bootstrap-servers``, else of the env; a usage error naming both when neither."""
    servers = servers or os.environ.get(ENV_BOOTSTRAP)
    if not servers:
        raise UsageError(f"no Kafka given: pass --bootstrap-servers HOST:PORT or set {ENV_BOOTSTRAP}"
                         + (_LOCAL_HINT if local_hint else ""))
    return servers


def parse_x_options(items: Sequence[str] | None) -> dict[str, str]:
    """``-X key=value`` options (repeatable, the same syntax on every command) as a librdkafka config dict."""
    conf: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-X {item!r}: expected key=value, e.g. -X security.protocol=SASL_SSL")
        conf[key.strip()] = value
    return conf
