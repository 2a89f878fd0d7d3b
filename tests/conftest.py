"""Shared fixtures: keyrings and routers built once, with no I/O."""
from __future__ import annotations

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
