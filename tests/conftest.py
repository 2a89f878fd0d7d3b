"""Shared fixtures: keyrings and routers built once, with no I/O; a reader of Prometheus text."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.core.router import CoreConfig, Router
from pipeline.keys import generate


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
