"""pytest fixtures for the cost scan's other sources: the fake notebook servers and the fake
Prometheus (tests/conftest.py lists this module in pytest_plugins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.jupyter import FakeJupyter
from tests.fakes.prometheus import FakePrometheus


@pytest.fixture(scope="session")
def jupyter_session() -> Iterator[FakeJupyter]:
    server = FakeJupyter()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def jupyter(jupyter_session: FakeJupyter) -> FakeJupyter:
    jupyter_session.reset()
    return jupyter_session


@pytest.fixture(scope="session")
def prometheus_session() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus(prometheus_session: FakePrometheus) -> FakePrometheus:
    prometheus_session.reset()
    return prometheus_session
