"""Secrets at the Slack edge when making them is slow: the modal opens ("Working…") before the
secret is made and is updated with it (or with why it could not be made), and clicks in flight
never delay the ack of another request.

The bot is the real composition (``bot.app.start_slack``: SQLite, dry-run provisioner) against
the fake Slack; the only double is ``SlowSecrets``, which wraps the real secret issuer and makes
it as slow as a Dex restart plus bcrypt at cost 16.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import app as composition
from bot import blocks
from bot.app import Running
from handlers.model import Request, RequestState
from handlers.ports import RevealedSecret, SecretIssuer
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, block_action_body, post_signed, slash_command_body
from tests.fakes.slack_bot import migrate
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    card_for,
    click,
    new_workspace_request,
    settings_for,
    wait_state,
)


class SlowSecrets:
    """The real secret issuer, slowed down; notes what the fake Slack had seen when a secret was
    made and what it returned. While ``held`` is clear, no secret is made at all: the work in
    flight lasts for as long as a test needs, whatever the machine's speed."""

    def __init__(self, real: SecretIssuer, fake: FakeSlack, delay: float) -> None:
        self.real, self.fake, self.delay = real, fake, delay
        self.views_open_before: list[int] = []
        self.made: list[RevealedSecret] = []
        self.in_flight = 0
        self.released = threading.Event()
        self.released.set()
        self._lock = threading.Lock()

    def _slow(self, make: Any) -> RevealedSecret:
        with self._lock:
            self.in_flight += 1
            self.views_open_before.append(len(self.fake.calls_to("views.open")))
        try:
            time.sleep(self.delay)
            assert self.released.wait(WAIT), "the test never released the secrets"
            secret: RevealedSecret = make()
        finally:
            with self._lock:
                self.in_flight -= 1
        self.made.append(secret)
        return secret

    def password(self, email: str) -> RevealedSecret:
        return self._slow(lambda: self.real.password(email))

    def token(self, request: Request) -> RevealedSecret:
        return self._slow(lambda: self.real.token(request))


def _start(
    fake: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float
) -> tuple[Running, SlowSecrets]:
    add_users(fake)
    settings = settings_for(fake, tmp_path)
    migrate(settings)
    made: list[SlowSecrets] = []
    real_build_core = composition.build_core

    def build_core(settings: Any, backend: Any, notifier: Any, clock: Any) -> Any:
        core = real_build_core(settings, backend, notifier, clock)
        made.append(SlowSecrets(core.secrets, fake, delay))
        return composition.Core(**{**core.__dict__, "secrets": made[-1]})

    monkeypatch.setattr(composition, "build_core", build_core)
    return composition.start_slack(settings, port=0), made[0]


@pytest.fixture
def delay() -> float:
    """How long making a secret takes (a test needing more parametrizes ``delay``)."""
    return 1.0


@pytest.fixture
def slow_bot(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float
) -> Iterator[tuple[Running, SlowSecrets]]:
    running, secrets = _start(fake_slack, tmp_path, monkeypatch, delay)
    try:
        yield running, secrets
    finally:
        running.stop()


def _alice_has_a_login(running: Running, fake: FakeSlack) -> None:
    """A workspace for Alice, approved and applied: the bot made her Dex login, so "Set my
    password" may reset it."""
    request_id = new_workspace_request(running, fake)
    click(running, fake, card_for(fake, request_id), blocks.APPROVE, user=BOB)
    wait_state(running, request_id, RequestState.SUCCEEDED)


def _press(running: Running, fake: FakeSlack, action_id: str, value: str, *, user: str, name: str) -> int:
    body = block_action_body(
        action_id,
        value,
        user_id=user,
        channel_id=fake.dm_channel(user),
        message_ts="1700000000.000100",
        response_url=fake.response_url(name),
    )
    return post_signed(running.url, body, SIGNING_SECRET)[0]


def test_set_password_opens_the_modal_first_and_updates_it_with_the_secret(
    slow_bot: tuple[Running, SlowSecrets], fake_slack: FakeSlack
) -> None:
    running, secrets = slow_bot
    _alice_has_a_login(running, fake_slack)

    assert _press(running, fake_slack, blocks.SET_PASSWORD, "", user=ALICE, name="pw") == 200

    update = fake_slack.wait_for(lambda: fake_slack.calls_to("views.update"), WAIT)[0]
    assert secrets.views_open_before == [1]  # "Working…" was open while the secret was made
    [opened] = fake_slack.calls_to("views.open")
    assert "Working" in json.dumps(opened["view"])
    [secret] = secrets.made
    assert secret.value in json.dumps(update["view"]) and "Your password" in json.dumps(update["view"])
    assert update["view_id"] == fake_slack.last_view()["id"]
    assert not any(c.params.get("ok") is False for c in fake_slack.calls)


def test_a_secret_that_cannot_be_made_says_why_in_the_modal(
    slow_bot: tuple[Running, SlowSecrets], fake_slack: FakeSlack
) -> None:
    running, _ = slow_bot

    assert _press(running, fake_slack, blocks.SHOW_TOKEN, "RNOSUCH", user=ALICE, name="tok") == 200

    update = fake_slack.wait_for(lambda: fake_slack.calls_to("views.update"), WAIT)[0]
    assert "RNOSUCH" in json.dumps(update["view"]) and "```" not in json.dumps(update["view"])
    assert len(fake_slack.calls_to("views.open")) == 1


# -- acks never wait behind work ---------------------------------------------------------------------


def test_slow_clicks_in_flight_do_not_delay_the_ack_of_a_slash_command(
    slow_bot: tuple[Running, SlowSecrets], fake_slack: FakeSlack
) -> None:
    """Every one of Bolt's listener threads is busy making a secret that is not made until the
    slash command has been answered: the ack cannot have waited for any of them (a clock bound
    on the ack raced the machine's load; speed belongs to bench/)."""
    running, secrets = slow_bot
    _alice_has_a_login(running, fake_slack)
    secrets.released.clear()
    clicks = [
        threading.Thread(
            target=_press,
            args=(running, fake_slack, blocks.SET_PASSWORD, ""),
            kwargs={"user": ALICE, "name": f"c{n}"},
        )
        for n in range(8)
    ]
    for t in clicks:
        t.start()
    fake_slack.wait_for(lambda: secrets.in_flight >= 5, WAIT)  # Bolt's default pool has 5 threads

    body = slash_command_body("help", user_id=BOB, response_url=fake_slack.response_url("help"))
    status, _, _ = post_signed(running.url, body, SIGNING_SECRET)

    assert status == 200
    assert secrets.made == [] and secrets.in_flight >= 5  # answered while all five were held
    assert fake_slack.calls_to("views.update") == []
    secrets.released.set()
    for t in clicks:
        t.join()
    fake_slack.wait_for(lambda: len(fake_slack.calls_to("views.update")) == 8, WAIT)
