"""Review fixes at the Slack edge: secrets modal before the slow part, acks never waiting behind
work, the workspace form acking before any I/O, logs at DEBUG, /readyz's Slack check, control
commands authorizing on the registry first, decision values without a version.

The bot is the real composition (``bot.app.start_slack``: SQLite, dry-run provisioner) against
the fake Slack; the only double is ``SlowSecrets``, which wraps the real secret issuer and makes
it as slow as a Dex restart plus bcrypt at cost 16.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from kubernetes import client

from bot import app as composition
from bot import blocks, controls
from bot import logging as log
from bot.app import Running
from handlers import parse
from handlers.model import Request, RequestState
from handlers.ports import RevealedSecret, SecretIssuer
from provisioning import WorkspaceView
from tests.fakes.slack import (
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    slash_command_body,
    view_submission_body,
)
from tests.fakes.slack_bot import migrate, running_bot
from tests.test_slack_edge import (
    ADMIN_GROUP,
    ALICE,
    BOB,
    CAROL,
    DAVE,
    GRACE,
    WAIT,
    card_for,
    click,
    dm_texts,
    get,
    new_workspace_request,
    requests_in_db,
    settings_for,
    wait_response,
    wait_state,
)


class SlowSecrets:
    """The real secret issuer, slowed down; notes what the fake Slack had seen when a secret was
    made and what it returned."""

    def __init__(self, real: SecretIssuer, fake: FakeSlack, delay: float) -> None:
        self.real, self.fake, self.delay = real, fake, delay
        self.views_open_before: list[int] = []
        self.made: list[RevealedSecret] = []
        self.in_flight = 0
        self._lock = threading.Lock()

    def _slow(self, make: Any) -> RevealedSecret:
        with self._lock:
            self.in_flight += 1
            self.views_open_before.append(len(self.fake.calls_to("views.open")))
        try:
            time.sleep(self.delay)
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


def _users(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "Alice@Example.com", "alice")
    fake.add_user(BOB, "bob@example.com", "bob")
    fake.add_user(CAROL, "carol@example.com", "carol")
    fake.add_user(DAVE, "dave@example.com", "dave")
    fake.add_user(GRACE, "grace@example.com", "grace")
    fake.set_usergroup(ADMIN_GROUP, [GRACE])


def _start(
    fake: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float
) -> tuple[Running, SlowSecrets]:
    _users(fake)
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
def slow_bot(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Running, SlowSecrets]]:
    running, secrets = _start(fake_slack, tmp_path, monkeypatch, delay=1.0)
    try:
        yield running, secrets
    finally:
        running.stop()


@pytest.fixture
def very_slow_bot(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Running, SlowSecrets]]:
    running, secrets = _start(fake_slack, tmp_path, monkeypatch, delay=3.0)
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


# -- 1. the secret's modal opens before the secret is made -------------------------------------------


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


# -- 2. acks never wait behind work ------------------------------------------------------------------


def test_slow_clicks_in_flight_do_not_delay_the_ack_of_a_slash_command(
    very_slow_bot: tuple[Running, SlowSecrets], fake_slack: FakeSlack
) -> None:
    running, secrets = very_slow_bot
    _alice_has_a_login(running, fake_slack)
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
    started = time.monotonic()
    status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
    acked = time.monotonic() - started

    assert status == 200 and acked < 1.0, acked
    for t in clicks:
        t.join()
    fake_slack.wait_for(lambda: len(fake_slack.calls_to("views.update")) == 8, WAIT)


# -- 3. the workspace form acks before any Slack, database or Kubernetes call --------------------------


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    _users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


def _submit_form(running: Running, user: str, name: str, view_id: str) -> tuple[int, bytes]:
    body = view_submission_body(
        blocks.WORKSPACE_VIEW, {"name": {"name": name}, "gpu": {"gpu": "1"}}, user_id=user, view_id=view_id
    )
    status, _, answer = post_signed(running.url, body, SIGNING_SECRET)
    return status, answer


def test_a_taken_name_is_told_after_the_ack(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)

    status, answer = _submit_form(bot, ALICE, "team-a", "VFORMTAKEN")

    assert status == 200 and answer in (b"", b"{}")  # acked: no field errors from the plan
    fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, ALICE) if "already exists" in t], WAIT)
    assert len(requests_in_db(bot)) == 1


def test_the_form_acks_even_when_slack_cannot_say_who_the_user_is(
    bot: Running, fake_slack: FakeSlack
) -> None:
    fake_slack.fail_next("users.info", "fatal_error")

    status, answer = _submit_form(bot, DAVE, "team-d", "VFORMUSERS")

    assert status == 200 and answer in (b"", b"{}")
    fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, DAVE) if "Something went wrong" in t], WAIT)
    assert requests_in_db(bot) == []


# -- 4. logs at DEBUG ----------------------------------------------------------------------------------


def test_a_secret_body_never_reaches_the_log_at_debug(
    debug_log: io.StringIO, kube_api_client: client.ApiClient
) -> None:
    hashed = bcrypt.hashpw(b"correct horse battery", bcrypt.gensalt(4))
    encoded_hash = base64.b64encode(hashed).decode()
    plain_value = base64.b64encode(b"not-for-the-logs-0123").decode()
    core = client.CoreV1Api(kube_api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="auth")))
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="dex-passwords", namespace="auth"),
        data={"alice": encoded_hash, "other": plain_value},
    )
    core.create_namespaced_secret("auth", secret)
    core.read_namespaced_secret("dex-passwords", "auth")
    # and a body quoted by our own code (an exception message, a debug line)
    logging.getLogger("provisioning.dex").debug("patched: %s", json.dumps({"data": {"alice": encoded_hash}}))
    logging.getLogger("provisioning.dex").debug("password hash %s", encoded_hash)

    written = debug_log.getvalue()
    assert "patched" in written  # our own DEBUG lines are kept, scrubbed
    for leaked in (encoded_hash, plain_value, encoded_hash[:24], hashed.decode()):
        assert leaked not in written


def test_the_scrubber_keeps_ordinary_metadata() -> None:
    assert log.scrub('metadata: {"name": "x"}') == 'metadata: {"name": "x"}'


# -- 5. /readyz checks Slack in HTTP mode ----------------------------------------------------------


def test_readyz_reports_slack_from_a_cached_auth_test(bot: Running, fake_slack: FakeSlack) -> None:
    fake_slack.accepted_tokens = {"xoxb-" + "some-other-token"}  # the bot's token was revoked
    before = len(fake_slack.calls_to("auth.test"))

    status, body = get(bot.http.url("/readyz"))
    again, _ = get(bot.http.url("/readyz"))

    assert status == 503 and body["slack"] is False and body["database"] is True
    assert again == 503
    assert len(fake_slack.calls_to("auth.test")) == before + 1  # cached between probes


# -- 7. control commands authorize on the registry before any live read ---------------------------------


def test_show_and_contributors_authorize_on_the_registry_and_read_live_once(
    bot: Running, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    backend, core = bot.backend, bot.edge.deps.core
    real_view = backend.workspace_view
    live_reads: list[str] = []

    def workspace_view(name: str, *, live: bool = True) -> WorkspaceView | None:
        if live:
            live_reads.append(name)
        return real_view(name, live=live)

    monkeypatch.setattr(backend, "workspace_view", workspace_view)
    dave, alice = bot.edge.deps.identity.actor(DAVE), bot.edge.deps.identity.actor(ALICE)

    for command in (parse.WorkspaceShow("team-a"), parse.Contributors("team-a")):
        with pytest.raises(Exception, match="There is no workspace"):
            controls.control(core, backend, dave, command)
    assert live_reads == []

    assert "no contributors" in controls.control(core, backend, alice, parse.Contributors("team-a"))
    assert live_reads == ["team-a"]


# -- 9. the shell does not pull in the Slack edge ------------------------------------------------------


def test_the_shell_does_not_import_slack_bolt() -> None:
    code = "import sys, bot.shell; sys.exit('slack_bolt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- 10. a decision value without its version is refused -------------------------------------------------


def test_a_decision_without_a_version_is_refused(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    assert click(bot, fake_slack, card, blocks.APPROVE, user=BOB, name="nover", value=request_id) == 200

    wait_response(fake_slack, "nover", "does not say which version")
    assert fake_slack.responses["nover"][0]["response_type"] == "ephemeral"
    time.sleep(0.3)
    assert requests_in_db(bot)[0].state is RequestState.PENDING
