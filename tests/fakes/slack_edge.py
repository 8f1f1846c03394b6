"""Driving the real bot (``tests.fakes.slack_bot``) as Slack users do: the people, slash commands,
button clicks on the admin channel's cards, and waiting for what the bot posts or records."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.app import Running
from bot.settings import Settings
from handlers.model import Request, RequestState
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, block_action_body, post_signed, slash_command_body
from tests.fakes.slack_bot import ADMIN_CHANNEL, bot_settings

ALICE, BOB, CAROL, DAVE, EVE, GRACE = (
    "U0ALICE01",
    "U0BOB0001",
    "U0CAROL01",
    "U0DAVE001",
    "U0EVE0001",
    "U0GRACE01",
)
ADMIN_GROUP = "S0ADMINS1"
WAIT = 60.0  # bounds a hang, not a claim: listeners and workers run late on a loaded machine
REQUEST_ID = re.compile(r"\bR[A-Z0-9]{6}\b")


def settings_for(fake: FakeSlack, tmp_path: Path, **extra: str) -> Settings:
    return bot_settings(
        fake,
        tmp_path,
        admins=f"{BOB},{CAROL}",
        KFBOT_ADMIN_GROUP=ADMIN_GROUP,
        KFBOT_WORKER_ID="slack-edge-test",
        **extra,
    )


def add_users(fake: FakeSlack) -> None:
    """The people of these tests: Bob and Carol are admins, Grace through the admin user group,
    Eve has no email in her profile."""
    fake.add_user(ALICE, "Alice@Example.com", "alice")
    fake.add_user(BOB, "bob@example.com", "bob")
    fake.add_user(CAROL, "carol@example.com", "carol")
    fake.add_user(DAVE, "dave@example.com", "dave")
    fake.add_user(EVE, None, "eve")  # no email in the profile
    fake.add_user(GRACE, "grace@example.com", "grace")
    fake.set_usergroup(ADMIN_GROUP, [GRACE])


def requests_in_db(bot: Running) -> list[Request]:
    with bot.backend.uow() as uow:
        return list(uow.requests.list(limit=500))


def audit_types(bot: Running) -> list[str]:
    return [json.loads(line)["type"] for line in bot.backend.audit_export("jsonl", None)]


def slash(
    bot: Running,
    fake: FakeSlack,
    text: str,
    *,
    user: str = ALICE,
    name: str = "cmd",
    trigger_id: str | None = None,
) -> str:
    """Run ``/kf text``; returns the text of the ephemeral reply posted to the response_url."""
    before = len(fake.responses.get(name, []))
    body = slash_command_body(text, user_id=user, response_url=fake.response_url(name), trigger_id=trigger_id)
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    assert status == 200
    reply = fake.wait_for(lambda: fake.responses.get(name, [])[before:], WAIT, f"reply to /kf {text}")
    return str(reply[0].get("text", ""))


def cards(fake: FakeSlack) -> list[dict[str, Any]]:
    return [m for m in fake.messages_in(ADMIN_CHANNEL) if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]


def card_for(fake: FakeSlack, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((c for c in reversed(cards(fake)) if request_id in c["text"]), None)

    found: dict[str, Any] = fake.wait_for(find, WAIT, f"the card of {request_id}")
    return found


def button(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return dict(element)
    return None


def click(
    bot: Running,
    fake: FakeSlack,
    message: dict[str, Any],
    action_id: str,
    *,
    user: str,
    name: str = "click",
    value: str | None = None,
) -> int:
    found = button(message, action_id)
    assert found is not None, f"no {action_id} button on {message.get('text')}"
    body = block_action_body(
        action_id,
        value if value is not None else found["value"],
        user_id=user,
        channel_id=message["channel"],
        message_ts=message["ts"],
        response_url=fake.response_url(name),
        message_blocks=message.get("blocks"),
    )
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    return status


def response_texts(fake: FakeSlack, name: str) -> list[str]:
    return [str(r.get("text", "")) for r in fake.responses.get(name, [])]


def wait_response(fake: FakeSlack, name: str, needle: str) -> str:
    found: str = fake.wait_for(
        lambda: next((t for t in response_texts(fake, name) if needle in t), None),
        WAIT,
        f"a reply containing {needle!r} at {name}",
    )
    return found


def dm_texts(fake: FakeSlack, user: str) -> list[str]:
    return [m.get("text", "") for m in fake.messages_in(fake.dm_channel(user))]


def wait_state(bot: Running, request_id: str, state: RequestState) -> Request:
    def current() -> Request | None:
        request = next(r for r in requests_in_db(bot) if r.id == request_id)
        return request if request.state is state else None

    found: Request = wait_until(current, f"{request_id} to be {state.value}")
    return found


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def new_workspace_request(bot: Running, fake: FakeSlack, *, user: str = ALICE, name: str = "team-a") -> str:
    reply = slash(bot, fake, f"workspace new {name} --gpu 1", user=user, name=f"new-{name}-{user}")
    match = REQUEST_ID.search(reply)
    assert match, reply
    return match.group(0)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # bounds a hang only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def settle(fake: FakeSlack) -> int:
    """The number of Slack calls once none has come for a while (work after an ack runs on pools)."""
    calls = -1
    while calls != len(fake.calls):
        calls = len(fake.calls)
        time.sleep(0.4)
    return calls
