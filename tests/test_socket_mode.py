"""Socket Mode over a real WebSocket: the bot as ``kfbot serve`` runs it with ``SLACK_APP_TOKEN``.

The fake Slack answers ``apps.connections.open`` with a ``ws://127.0.0.1`` URL of
``tests.fakes.slack_socket.FakeSocketMode``, which says hello, delivers envelopes of the three
kinds with the payloads HTTP mode would get, records each acknowledgement and asks for a
reconnect. The flows are the ones ``test_slack_edge`` runs over signed HTTP: a ``/kf`` command
recorded and answered, an Approve click applied, a Reject modal refused empty and then accepted.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from bot import blocks, home
from bot.app import Running
from bot.logging import SecretFilter
from handlers.model import RequestState
from tests.fakes.cli import env_for, free_port, kfbot, readyz
from tests.fakes.slack import (
    BOT_TOKEN,
    DEFAULT_TEAM_ID,
    SIGNING_SECRET,
    FakeSlack,
    app_home_opened,
    block_action_body,
    home_action_body,
    post_signed,
    slash_command_body,
    view_submission_body,
)
from tests.fakes.slack_bot import ADMIN_CHANNEL, running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    REQUEST_ID,
    WAIT,
    add_users,
    audit_types,
    button,
    card_for,
    dm_texts,
    new_workspace_request,
    requests_in_db,
    settings_for,
    wait_state,
    wait_until,
)
from tests.fakes.slack_socket import FakeSocketMode, event_payload, interactive_payload, slash_payload

APP_TOKEN = "xapp-" + "1-test"  # built at runtime, like BOT_TOKEN, for the token scanner


@pytest.fixture
def socket_mode(fake_slack: FakeSlack) -> Iterator[FakeSocketMode]:
    with FakeSocketMode() as endpoint:
        fake_slack.socket_mode = endpoint
        yield endpoint
        fake_slack.socket_mode = None


@pytest.fixture
def bot(fake_slack: FakeSlack, socket_mode: FakeSocketMode, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path, SLACK_APP_TOKEN=APP_TOKEN)) as running:
        socket_mode.wait_connected()
        yield running


def command(socket_mode: FakeSocketMode, fake: FakeSlack, text: str, *, user: str = ALICE, name: str = "cmd",
            trigger_id: str | None = None) -> tuple[str, str]:  # fmt: skip
    """``/kf text`` over the socket: (the envelope id, the text of the ephemeral reply)."""
    before = len(fake.responses.get(name, []))
    body = slash_command_body(text, user_id=user, response_url=fake.response_url(name), trigger_id=trigger_id)
    envelope_id = socket_mode.slash(body)
    reply = fake.wait_for(lambda: fake.responses.get(name, [])[before:], WAIT, f"reply to /kf {text}")
    return envelope_id, str(reply[0].get("text", ""))


def click(
    socket_mode: FakeSocketMode, fake: FakeSlack, message: dict[str, Any], action_id: str, *, user: str
) -> str:
    found = button(message, action_id)
    assert found is not None, f"no {action_id} button on {message.get('text')}"
    body = block_action_body(
        action_id, found["value"], user_id=user, channel_id=message["channel"], message_ts=message["ts"],
        response_url=fake.response_url("click"), message_blocks=message.get("blocks"),
    )  # fmt: skip
    return socket_mode.interactive(body)


def new_request(socket_mode: FakeSocketMode, fake: FakeSlack) -> str:
    envelope_id, reply = command(socket_mode, fake, "workspace new team-a --gpu 1")
    assert socket_mode.ack_for(envelope_id) == {"envelope_id": envelope_id}
    match = REQUEST_ID.search(reply)
    assert match, reply
    return match.group(0)


def test_a_command_is_acknowledged_recorded_and_answered(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    request_id = new_request(socket_mode, fake_slack)

    [request] = requests_in_db(bot)
    assert (request.id, request.state, request.requester_email) == (
        request_id,
        RequestState.PENDING,
        "alice@example.com",
    )
    card = card_for(fake_slack, request_id)
    assert button(card, blocks.APPROVE) is not None
    # the socket was opened with the app-level token, and only that call used it
    opens = [c for c in fake_slack.calls if c.method == "apps.connections.open"]
    assert [c.token for c in opens] == [APP_TOKEN]
    assert all(c.token == BOT_TOKEN for c in fake_slack.calls if c.method != "apps.connections.open")
    assert socket_mode.unacknowledged == [] and socket_mode.strays == []


def test_a_redelivered_command_records_one_request(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    body = slash_command_body(
        "workspace new team-a", user_id=ALICE, response_url=fake_slack.response_url("r")
    )
    first = socket_mode.deliver("slash_commands", slash_payload(body), accepts_response_payload=True)
    socket_mode.ack_for(first)
    fake_slack.wait_for(lambda: fake_slack.responses.get("r"), WAIT)
    again = socket_mode.deliver(
        "slash_commands", slash_payload(body), accepts_response_payload=True, retry_attempt=1
    )
    socket_mode.ack_for(again)
    fake_slack.wait_for(lambda: len(fake_slack.responses.get("r", [])) == 2, WAIT, "the redelivery's reply")
    assert len(requests_in_db(bot)) == 1
    assert audit_types(bot).count("request.created") == 1


def test_an_approve_click_is_applied(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    request_id = new_request(socket_mode, fake_slack)
    card = card_for(fake_slack, request_id)

    envelope_id = click(socket_mode, fake_slack, card, blocks.APPROVE, user=BOB)

    assert socket_mode.ack_for(envelope_id) == {"envelope_id": envelope_id}
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    assert audit_types(bot).count("request.approved") == 1
    fake_slack.wait_for(
        lambda: [t for t in dm_texts(fake_slack, ALICE) if "is done" in t], WAIT, "the done DM"
    )


def test_a_reject_modal_is_refused_empty_then_submitted(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    request_id = new_request(socket_mode, fake_slack)
    card = card_for(fake_slack, request_id)

    socket_mode.ack_for(click(socket_mode, fake_slack, card, blocks.REJECT, user=BOB))
    view = fake_slack.wait_for(
        lambda: [v for v in fake_slack.views.values() if v.get("callback_id") == blocks.REJECT_VIEW], WAIT
    )[0]

    def submit(reason: str) -> dict[str, Any]:
        body = view_submission_body(
            blocks.REJECT_VIEW, {"reason": {"reason": reason}}, user_id=BOB,
            private_metadata=view["private_metadata"], view_id=view["id"],
        )  # fmt: skip
        return socket_mode.ack_for(socket_mode.interactive(body))

    empty = submit("")
    # the modal's inline answer travels in the acknowledgement, as over HTTP in the response body
    assert empty["payload"]["response_action"] == "errors" and "reason" in empty["payload"]["errors"]
    assert requests_in_db(bot)[0].state is RequestState.PENDING

    accepted = submit("Not this quarter")
    assert set(accepted) == {"envelope_id"}  # an empty ack closes the modal
    request = wait_state(bot, request_id, RequestState.REJECTED)
    assert request.reason == "Not this quarter"


def test_an_event_is_acknowledged(bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode) -> None:
    """An event the bot is sent is acknowledged, so Slack does not redeliver it (and, after
    repeated failures, turn the app's event subscriptions off)."""
    envelope_id = socket_mode.event(
        {"type": "app_home_opened", "user": ALICE, "channel": "D0ALICE01", "tab": "home",
         "event_ts": "1700000000.000100"}
    )  # fmt: skip
    assert socket_mode.ack_for(envelope_id) == {"envelope_id": envelope_id}


def test_a_disconnect_reconnects_and_work_continues(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    socket_mode.disconnect()
    socket_mode.wait_connected(2)

    assert [c.token for c in fake_slack.calls if c.method == "apps.connections.open"] == [
        APP_TOKEN,
        APP_TOKEN,
    ]
    request_id = new_request(socket_mode, fake_slack)  # over the new connection
    assert [r.id for r in requests_in_db(bot)] == [request_id]
    wait_until(
        lambda: bot.socket_handler is not None and bot.socket_handler.client.is_connected(), "connected"
    )
    assert socket_mode.refused == 0


@pytest.mark.slow
def test_kfbot_serve_runs_in_socket_mode_as_its_own_process(tmp_path: Path) -> None:
    with FakeSlack() as fake, FakeSocketMode() as endpoint:
        fake.socket_mode = endpoint
        add_users(fake)
        assert kfbot(tmp_path, "migrate").returncode == 0
        port = free_port()
        env = env_for(
            tmp_path,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_APP_TOKEN=APP_TOKEN,  # and no signing secret: Socket Mode needs none
            KFBOT_ADMIN_CHANNEL=ADMIN_CHANNEL,
            KFBOT_ADMIN_USERS=BOB,
            KFBOT_SLACK_API_URL=fake.base_url,
            KFBOT_HTTP_HOST="127.0.0.1",
            KFBOT_HTTP_PORT=str(port),
        )
        log = tmp_path / "serve.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve"], cwd=tmp_path, env=env,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            ready = fake.wait_for(
                lambda: (r := readyz(port)) and r.get("slack") and r, 30, "serve to be ready"
            )
            assert ready["slack"] is True and ready["provisioner"] == "dry-run"
            endpoint.wait_connected()
            request_id = new_request(endpoint, fake)
            card_for(fake, request_id)
            # no /slack/events in Socket Mode: nothing to sign, nothing to attack
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/slack/events", data=b"{}", method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 404
            endpoint.disconnect()
            endpoint.wait_connected(2)
            envelope_id, _ = command(endpoint, fake, "requests", name="after")
            assert endpoint.ack_for(envelope_id) == {"envelope_id": envelope_id}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        logs = log.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in logs and APP_TOKEN not in logs and json.dumps(APP_TOKEN) not in logs


def test_over_http_an_event_no_listener_handles_is_answered_200(
    fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """The same catch-all in HTTP mode: Bolt would answer 404, and Slack retries what is not 2xx."""
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        # app_home_opened has a listener now (the App Home); a reaction is an event nobody handles.
        event = {"type": "reaction_added", "user": ALICE, "reaction": "eyes", "event_ts": "1700000000.000200"}
        body = json.dumps(event_payload(event)).encode()
        status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
        assert status == 200
        assert [c.method for c in fake_slack.calls if c.method.startswith(("chat.", "views."))] == []


def test_the_app_home_is_published_and_its_buttons_work(
    bot: Running, fake_slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    """The App Home as in HTTP mode (tests/test_app_home.py): opened over the socket, published,
    and a Cancel clicked on the tab goes through ``services.cancel``."""
    request_id = new_request(socket_mode, fake_slack)
    envelope_id = socket_mode.event(app_home_opened(ALICE))
    assert socket_mode.ack_for(envelope_id) == {"envelope_id": envelope_id}
    view = fake_slack.wait_for(lambda: fake_slack.home_view(ALICE), WAIT, "Alice's App Home")
    assert request_id in json.dumps(view) and len(view["blocks"]) <= 100

    envelope_id = socket_mode.interactive(home_action_body(view, home.HOME_CANCEL, request_id, user_id=ALICE))
    assert socket_mode.ack_for(envelope_id) == {"envelope_id": envelope_id}
    wait_state(bot, request_id, RequestState.CANCELLED)


# -- interactions no listener handles (atk-1 #3) ------------------------------------------------------


def _ours(**fields: Any) -> dict[str, Any]:
    """An interaction payload from our own team (``fields`` on top)."""
    return {
        "user": {"id": ALICE, "team_id": DEFAULT_TEAM_ID}, "team": {"id": DEFAULT_TEAM_ID},
        "api_app_id": "AKFBOT001", "is_enterprise_install": False, "enterprise": None, **fields,
    }  # fmt: skip


UNHANDLED: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    # kind: (payload, what the acknowledgement carries)
    "shortcut": (_ours(type="shortcut", callback_id="kf", trigger_id="1.2.3"), None),
    "message_action": (
        _ours(
            type="message_action", callback_id="kf", trigger_id="1.2.4", channel={"id": "C111"},
            message={"ts": "1.1"},
        ),
        None,
    ),
    "block_suggestion": (
        _ours(type="block_suggestion", action_id="x", block_id="b", value="a"),
        {"options": []},
    ),
    "view_closed": (
        _ours(type="view_closed", view={"id": "V1", "callback_id": "kf_reject", "team_id": DEFAULT_TEAM_ID}),
        None,
    ),
}


@pytest.mark.parametrize("transport", ["http", "socket"])
def test_interactions_no_listener_handles_are_acknowledged_and_dropped(
    fake_slack: FakeSlack, tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack shows the person an error for a 404, and redelivers an envelope nobody acknowledged:
    every interaction of ours is acknowledged (an empty options list for a suggestion), logged once,
    and changes nothing; an unknown button on a real card decides nothing."""
    caplog.set_level(logging.DEBUG, logger="bot.listeners")
    caplog.handler.addFilter(SecretFilter())
    add_users(fake_slack)
    extra = {"SLACK_APP_TOKEN": APP_TOKEN} if transport == "socket" else {}
    with FakeSocketMode() as endpoint:
        fake_slack.socket_mode = endpoint if transport == "socket" else None
        with running_bot(settings_for(fake_slack, tmp_path, **extra)) as running:
            if transport == "socket":
                endpoint.wait_connected()
            request_id = new_workspace_request(running, fake_slack) if transport == "http" else None
            card = card_for(fake_slack, request_id) if request_id else {"channel": "C111", "ts": "1.1"}
            unknown = block_action_body(
                "kf_nope", f"{request_id or 'R000001'}:1", user_id=BOB, channel_id=card["channel"],
                message_ts=card["ts"], response_url=fake_slack.response_url("nope"),
                message_blocks=card.get("blocks"),
            )  # fmt: skip
            cases = {**UNHANDLED, "unknown action": (interactive_payload(unknown), None)}
            before = len(fake_slack.calls)
            logged = len(caplog.records)
            for name, (payload, answer) in cases.items():
                if transport == "socket":
                    envelope = endpoint.deliver("interactive", payload, accepts_response_payload=True)
                    expected: dict[str, Any] = {"envelope_id": envelope}
                    if answer is not None:
                        expected["payload"] = answer
                    assert endpoint.ack_for(envelope, WAIT) == expected, name
                else:
                    form = urlencode({"payload": json.dumps(payload)}).encode()
                    status, _, body = post_signed(running.url, form, SIGNING_SECRET)
                    assert status == 200, (name, body)
                    assert (json.loads(body) if body else None) == answer, name
            assert [c.method for c in fake_slack.calls[before:]] == []
            assert "nope" not in fake_slack.responses
            if request_id is not None:
                assert [r.state for r in requests_in_db(running)] == [RequestState.PENDING]
            dropped = [r for r in caplog.records[logged:] if "no listener" in r.getMessage()]
            assert len(dropped) == len(cases)
            assert all(getattr(r, "correlation_id", "") for r in dropped)
            assert all(r.levelno <= logging.INFO for r in dropped)
        fake_slack.socket_mode = None
