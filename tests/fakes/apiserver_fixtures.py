"""pytest fixtures for the fake Kubernetes apiserver (tests/conftest.py lists them in pytest_plugins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.fakes.apiserver import FakeApiServer


@pytest.fixture(scope="session")
def apiserver_session() -> Iterator[FakeApiServer]:
    """One server per test session: starting it costs about as much as a whole test does."""
    server = FakeApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def apiserver(apiserver_session: FakeApiServer) -> FakeApiServer:
    """The session's server, emptied and with every switch back at its default."""
    apiserver_session.reset()
    return apiserver_session


@pytest.fixture
def kube_api_client(apiserver: FakeApiServer) -> Iterator[client.ApiClient]:
    configuration = client.Configuration(host=apiserver.url)
    with client.ApiClient(configuration) as api:
        yield api
