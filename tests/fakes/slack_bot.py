"""The real bot (``bot.app.start_slack``: Bolt over HTTP, SQLite, dry-run provisioning, the worker
and the scheduler) wired to the fake Slack Web API, for tests and the benchmark."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bot import app as composition
from bot.app import Running
from bot.settings import Settings
from handlers.ports import Clock
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack

ADMIN_CHANNEL = "CADMINS01"


def bot_settings(fake: FakeSlack, workdir: Path, *, admins: str, **extra: str) -> Settings:
    """Settings from the environment the way ``kfbot serve`` reads them, plus a fast engine poll."""
    env: Mapping[str, str] = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": admins,
        "KFBOT_DATABASE_URL": f"sqlite:///{workdir / 'kfbot.db'}",
        "KFBOT_AUDIT_KEY": "test-audit-key-0123456789abcdef",
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0",
        "KFBOT_HEALTH_PORT": "0",
        **extra,
    }
    settings = Settings.from_env(env)
    engine = dataclasses.replace(settings.provisioning.engine, poll_interval=0.05)
    return dataclasses.replace(
        settings, provisioning=dataclasses.replace(settings.provisioning, engine=engine)
    )


def migrate(settings: Settings) -> None:
    """What ``kfbot migrate`` does before ``serve`` (which refuses a database that is behind)."""
    backend = composition.build_backend(settings)
    backend.migrate()
    backend.close()


@contextmanager
def running_bot(settings: Settings, clock: Clock | None = None) -> Iterator[Running]:
    migrate(settings)
    running = composition.start_slack(settings, clock=clock, port=0)
    try:
        yield running
    finally:
        running.stop()
