"""pytest fixtures for the fake Slack Web API (load with ``pytest_plugins``).

One server per session (port 0); each test gets it reset, directory included, so no test sees
another's users, messages or queued failures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_sdk import WebClient

from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack

__all__ = ["BOT_TOKEN", "SIGNING_SECRET", "fake_slack", "slack_client", "slack_server"]


@pytest.fixture(scope="session")
def slack_server() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def fake_slack(slack_server: FakeSlack) -> FakeSlack:
    slack_server.reset(users=True)
    return slack_server


@pytest.fixture
def slack_client(fake_slack: FakeSlack) -> WebClient:
    """A real WebClient with the bot token, pointed at the fake."""
    return WebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
