"""Nothing acked is lost, and a modal never waits behind bulk work (the real bot over HTTP, the
fake Slack, SQLite). The work pool is filled with blocked jobs to stand for a burst: a command
acked then waits in the inbox (``slack_inbox``) and runs once there is room; a Reject click still
opens its modal at once (the quick pool); a row whose 30 minutes ran out is told "busy" and
dropped; a row another replica claimed and abandoned is taken over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import sqlalchemy as sa

from bot import blocks
from bot.app import Running
from bot.listeners.common import BUSY_TEXT
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, post_signed, slash_command_body
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    card_for,
    click,
    new_workspace_request,
    requests_in_db,
    settings_for,
    wait_response,
)


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


@pytest.fixture
def blocked(bot: Running) -> Iterator[threading.Event]:
    """The work pool full of jobs that wait for the returned event."""
    release = threading.Event()
    pool = bot.edge.deps.pool
    while pool.submit(lambda: release.wait(WAIT * 2)):
        pass
    assert pool.free() == 0
    yield release
    release.set()


def inbox_keys(bot: Running) -> list[str]:
    with bot.backend.db.reader() as conn:
        return [str(k) for (k,) in conn.execute(sa.text("select key from slack_inbox"))]


def test_an_acked_command_waits_in_the_inbox_while_the_pool_is_full_and_then_runs(
    bot: Running, fake_slack: FakeSlack, blocked: threading.Event
) -> None:
    body = slash_command_body(
        "workspace new team-late",
        user_id=ALICE,
        response_url=fake_slack.response_url("late"),
        trigger_id="9.9.late",
    )
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    assert status == 200  # acked at once, though nothing can run it now
    assert inbox_keys(bot) == ["command:9.9.late"]
    assert requests_in_db(bot) == [] and fake_slack.responses.get("late") is None  # not busy-answered
    blocked.set()
    reply = wait_response(fake_slack, "late", "team-late")
    assert "busy" not in reply
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the inbox to empty")
    assert [r.args["name"] for r in requests_in_db(bot)] == ["team-late"]


def test_a_reject_click_opens_its_modal_while_the_pool_is_full(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the command's work to be done")
    release = threading.Event()
    finished: list[bool] = []

    def blocker() -> None:
        finished.append(release.wait(WAIT * 2))

    while bot.edge.deps.pool.submit(blocker):
        pass
    try:
        assert click(bot, fake_slack, card, blocks.REJECT, user=BOB) == 200
        fake_slack.wait_for(
            lambda: [v for v in fake_slack.views.values() if v.get("callback_id") == blocks.REJECT_VIEW],
            WAIT,
            "the reason modal, with the work pool full",
        )
        assert finished == []  # the bulk work was still stuck when it opened
    finally:
        release.set()


def test_a_row_past_its_response_url_is_told_busy_and_dropped(bot: Running, fake_slack: FakeSlack) -> None:
    past = datetime.now(UTC) - timedelta(minutes=31)
    body = {"user_id": ALICE, "channel_id": "C111", "text": "workspace new team-old", "trigger_id": "1.1.old",
            "response_url": fake_slack.response_url("old")}  # fmt: skip
    assert bot.backend.inbox.record(
        "command:1.1.old", "command", body, owner="gone", now=past, lease_until=past + timedelta(minutes=2),
        expires_at=past + timedelta(minutes=30),
    )  # fmt: skip
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the sweep to take the row")
    assert [e["text"] for e in fake_slack.ephemerals if e.get("user") == ALICE] == [BUSY_TEXT]
    assert requests_in_db(bot) == []


def test_a_row_another_replica_abandoned_is_taken_over(bot: Running, fake_slack: FakeSlack) -> None:
    now = datetime.now(UTC)
    url = fake_slack.response_url("orphan")
    body = slash_command_body(
        "workspace new team-orphan", user_id=ALICE, response_url=url, trigger_id="2.2.orphan"
    )
    payload = dict(parse_qsl(body.decode()))
    assert bot.backend.inbox.record(
        "command:2.2.orphan", "command", payload, owner="replica-that-died", now=now - timedelta(minutes=3),
        lease_until=now - timedelta(seconds=1), expires_at=now + timedelta(minutes=27),
    )  # fmt: skip
    wait_response(fake_slack, "orphan", "team-orphan")
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the inbox to empty")
    assert [r.args["name"] for r in requests_in_db(bot)] == ["team-orphan"]


def test_a_row_another_replica_still_holds_is_left_alone(bot: Running, fake_slack: FakeSlack) -> None:
    now = datetime.now(UTC)
    body = {"user_id": ALICE, "channel_id": "C111", "text": "workspace new team-held",
            "trigger_id": "3.3.held", "response_url": fake_slack.response_url("held")}  # fmt: skip
    assert bot.backend.inbox.record(
        "command:3.3.held", "command", body, owner="busy-replica", now=now,
        lease_until=now + timedelta(minutes=2), expires_at=now + timedelta(minutes=30),
    )  # fmt: skip
    assert bot.backend.inbox.claim("someone-else", now, now + timedelta(minutes=2), 10) == []
    assert inbox_keys(bot) == ["command:3.3.held"]
