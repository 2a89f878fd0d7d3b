"""Shared fixtures: keyrings and routers built once, with no I/O; a reader of Prometheus text."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core.router import CoreConfig, Router
from pipeline.keys import generate


#: Real public CDR samples written by others, beside the clone (absent from a user's plain clone).
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus: skipped with the reason where it is absent, a failure where CI requires it.

    ``.ci/run`` sets ``CDRPIPE_REQUIRE_CORPUS=1``, so a CI machine without it never passes by skipping.
    """
    if not (CORPUS / "README.md").is_file():
        reason = f"the shared CDR corpus is not at {CORPUS} (shared/ beside the clone)"
        if os.environ.get("CDRPIPE_REQUIRE_CORPUS") == "1":
            pytest.fail(reason + "; CDRPIPE_REQUIRE_CORPUS=1 requires it")
        pytest.skip(reason)
    return CORPUS


@pytest.fixture(scope="session")
def keyrings():
    """A worker and a vault keyring generated for the test session."""
    return generate()


@pytest.fixture(scope="session")
def worker_keyring(keyrings):
    return keyrings[0]


@pytest.fixture(scope="session")
def vault_keyring(keyrings):
    return keyrings[1]


@pytest.fixture()
def router(worker_keyring):
    return Router(worker_keyring, CoreConfig())


def _metric_samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


@pytest.fixture(scope="session")
def metric_samples() -> Callable[[str], dict[str, float]]:
    """Prometheus exposition text as ``{'name{label="v"}': value}`` (comments skipped)."""
    return _metric_samples


# --------------------------------------------------------------------------- PostgreSQL

@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster per session (``tests/postgres_cluster.py``), like the Kafka broker.

    Skipped, with the reason, when the server binaries are not installed, unless
    ``CDRPIPE_REQUIRE_POSTGRES=1`` (CI), where their absence fails the run instead.
    """
    import os

    from postgres_cluster import ENV_REQUIRE, LocalPostgres, find_bin
    bin_dir = find_bin()
    if bin_dir is None:
        reason = ("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb; install Debian's "
                  "postgresql package or set CDRPIPE_PG_BIN)")
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(f"{reason}, and {ENV_REQUIRE}=1 requires them")
        pytest.skip(reason)
    cluster = LocalPostgres(bin_dir)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_vault_urls(postgres, request):
    """A fresh record database and a separate keystore database for one test: ``(db_url, keystore_url)``."""
    import re
    import uuid
    base = re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:30] + "_" + uuid.uuid4().hex[:6]
    return postgres.create_database("v_" + base), postgres.create_database("k_" + base)


@pytest.fixture(params=["sqlite", "postgresql"])
def vault_backend(request, tmp_path):
    """An empty vault location on each storage backend in turn (``tests/vault_backend.py``)."""
    from vault_backend import make_backend
    return make_backend(request.param, tmp_path, request)
