"""How every command reaches Kafka: the bootstrap servers (flag or env) and ``-X key=value`` settings."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pipeline.errors import UsageError

ENV_BOOTSTRAP = "CDRPIPE_BOOTSTRAP_SERVERS"
#: Env vars CDRPIPE_X_<NAME>=value become librdkafka settings (name lower-cased, '_' -> '.').
ENV_X_PREFIX = "CDRPIPE_X_"
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


def env_client_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from CDRPIPE_X_<NAME> variables (e.g. CDRPIPE_X_SASL_PASSWORD): ``-X``'s environment."""
    env = os.environ if environ is None else environ
    return {k[len(ENV_X_PREFIX):].lower().replace("_", "."): v for k, v in sorted(env.items())
            if k.startswith(ENV_X_PREFIX) and len(k) > len(ENV_X_PREFIX)}
