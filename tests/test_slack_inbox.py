"""Nothing acked is lost, and a modal never waits behind bulk work (the real bot over HTTP, the
fake Slack, SQLite). The work pool is filled with blocked jobs to stand for a burst: a command
acked then waits in the inbox (``slack_inbox``) and runs once there is room; a Reject click still
opens its modal at once (the quick pool); a row whose 30 minutes ran out is told "busy" and
dropped; a row another replica claimed and abandoned is taken over; work slower than the lease,
or that waited in the pool past it, keeps its lease and runs once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import sqlalchemy as sa

import bot.listeners.common as listeners_common
from bot import blocks
from bot.app import Running
from bot.identity import Identity
from bot.listeners.common import BUSY_TEXT
from bot.logging import SecretFilter
from handlers.model import Actor
from provisioning import SqlInbox
from provisioning.store import Database
from provisioning.store.schema import slack_inbox
from tests.fakes.slack import (
    DEFAULT_TEAM_ID,
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    slash_command_body,
)
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    button,
    card_for,
    click,
    new_workspace_request,
    requests_in_db,
    response_texts,
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
    body = {"team_id": DEFAULT_TEAM_ID, "user_id": ALICE, "channel_id": "C111",
            "text": "workspace new team-old", "trigger_id": "1.1.old",
            "response_url": fake_slack.response_url("old")}  # fmt: skip
    assert bot.backend.inbox.record(
        "command:1.1.old", "command", body, owner="gone", now=past, lease_until=past + timedelta(minutes=2),
        expires_at=past + timedelta(minutes=30),
    )  # fmt: skip
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the sweep to take the row")
    assert [e["text"] for e in fake_slack.ephemerals if e.get("user") == ALICE] == [BUSY_TEXT]
    assert requests_in_db(bot) == []


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "expired"])
@pytest.mark.parametrize("team", ["T999FOREIGN", None], ids=["another-team", "no-team"])
def test_a_row_not_of_our_team_is_dropped_unrun_and_untold(
    bot: Running, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, team: str | None, expired: bool
) -> None:
    """The one-team rule (``bot.team.refusal``) holds for the sweep too: a row another build or an
    older configuration recorded is neither run nor told "busy"."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(SecretFilter())  # as kfbot's handler: it stamps the correlation id
    now = datetime.now(UTC) - (timedelta(minutes=31) if expired else timedelta(0))
    url = fake_slack.response_url("foreign")
    payload = dict(parse_qsl(slash_command_body(
        "workspace new team-evil --gpu 1", user_id=ALICE, response_url=url, trigger_id="4.4.foreign"
    ).decode()))  # fmt: skip
    payload.pop("team_id")
    if team is not None:
        payload["team_id"] = team
    before = len(fake_slack.calls)
    assert bot.backend.inbox.record(
        "command:4.4.foreign", "command", payload, owner="old-replica", now=now,
        lease_until=now - timedelta(seconds=1), expires_at=now + timedelta(minutes=25),
    )  # fmt: skip
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the sweep to drop the row")
    assert requests_in_db(bot) == []
    assert "foreign" not in fake_slack.responses
    assert fake_slack.calls[before:] == [], [c.method for c in fake_slack.calls[before:]]
    dropped = [r for r in caplog.records if "inbox row" in r.getMessage() and "team" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.WARNING]
    assert getattr(dropped[0], "correlation_id", None)
    assert not {ALICE, "T999FOREIGN", "team-evil", url} & set(dropped[0].getMessage().split())


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
    body = {"team_id": DEFAULT_TEAM_ID, "user_id": ALICE, "channel_id": "C111",
            "text": "workspace new team-held", "trigger_id": "3.3.held",
            "response_url": fake_slack.response_url("held")}  # fmt: skip
    assert bot.backend.inbox.record(
        "command:3.3.held", "command", body, owner="busy-replica", now=now,
        lease_until=now + timedelta(minutes=2), expires_at=now + timedelta(minutes=30),
    )  # fmt: skip
    assert bot.backend.inbox.claim("someone-else", now, now + timedelta(minutes=2), 10) == []
    assert inbox_keys(bot) == ["command:3.3.held"]


# -- the lease is renewed while the work runs (atk2 finding 3) -------------------------------------

LEASE = timedelta(seconds=1)
"""A lease short enough that the work below outlasts it several times."""


@pytest.fixture
def short_lease(fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setattr(listeners_common, "INBOX_LEASE", LEASE)
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        assert running.edge.deps.inbox.lease == LEASE
        yield running


@pytest.fixture
def slow_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], threading.Event]]:
    """Every handler's first look-up (who acted) waits for the returned event: a slow handler.
    The list records each run that started."""
    runs: list[str] = []
    release = threading.Event()
    original = Identity.actor

    def slow(self: Identity, user_id: str) -> Actor:
        runs.append(user_id)
        release.wait(WAIT)
        return original(self, user_id)

    monkeypatch.setattr(Identity, "actor", slow)
    yield runs, release
    release.set()


def lease_until(bot: Running, key: str) -> datetime | None:
    with bot.backend.db.reader() as conn:
        value = conn.execute(sa.select(slack_inbox.c.lease_until).where(slack_inbox.c.key == key)).scalar()
    return value if isinstance(value, datetime) else None


def send(bot: Running, fake_slack: FakeSlack, name: str, trigger: str) -> None:
    body = slash_command_body(
        f"workspace new {name}", user_id=ALICE, response_url=fake_slack.response_url(name), trigger_id=trigger
    )
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200


def test_a_handler_slower_than_the_lease_keeps_it_and_runs_once(
    short_lease: Running, fake_slack: FakeSlack, slow_identity: tuple[list[str], threading.Event]
) -> None:
    bot, (runs, release) = short_lease, slow_identity
    send(bot, fake_slack, "team-slow", "4.4.slow")
    fake_slack.wait_for(lambda: runs, WAIT, "the handler to start")
    first = lease_until(bot, "command:4.4.slow")
    assert first is not None
    # Two leases later the work still runs, and its lease still stands: renewed, not expired.
    fake_slack.wait_for(lambda: datetime.now(UTC) > first + 2 * LEASE, WAIT, "two leases to pass")
    now = datetime.now(UTC)
    renewed = lease_until(bot, "command:4.4.slow")
    assert renewed is not None and renewed > now, "the lease of running work was not renewed"
    assert bot.backend.inbox.claim("another-replica", now, now + LEASE, 10) == []
    assert bot.edge.deps.inbox.sweep() == 0
    release.set()
    wait_response(fake_slack, "team-slow", "team-slow")
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the inbox to empty")
    fake_slack.wait_for(lambda: bot.edge.deps.pool.free() == idle_free(bot), WAIT, "the pool to go idle")
    assert runs == [ALICE] and len(response_texts(fake_slack, "team-slow")) == 1
    assert [r.args["name"] for r in requests_in_db(bot)] == ["team-slow"]


def idle_free(bot: Running) -> int:
    return bot.edge.deps.pool._capacity  # what free() says with nothing queued


def test_work_that_waited_in_the_pool_past_its_lease_runs_once(
    short_lease: Running, fake_slack: FakeSlack
) -> None:
    bot = short_lease
    pool = bot.edge.deps.pool
    release = threading.Event()
    threads = pool._executor._max_workers  # busy every worker, leave the queue room
    for _ in range(threads):
        assert pool.submit(lambda: release.wait(WAIT))
    try:
        send(bot, fake_slack, "team-queued", "5.5.queued")
        fake_slack.wait_for(lambda: inbox_keys(bot) == ["command:5.5.queued"], WAIT, "the row")
        first = lease_until(bot, "command:5.5.queued")
        assert first is not None and pool.free() < idle_free(bot) - threads  # queued, not run
        fake_slack.wait_for(lambda: datetime.now(UTC) > first + LEASE, WAIT, "the lease to run out")
        bot.edge.deps.inbox.sweep()  # takes the expired row again, as the sweep thread would
    finally:
        release.set()
    wait_response(fake_slack, "team-queued", "team-queued")
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the inbox to empty")
    fake_slack.wait_for(lambda: pool.free() == idle_free(bot), WAIT, "the pool to go idle")
    assert len(response_texts(fake_slack, "team-queued")) == 1, response_texts(fake_slack, "team-queued")


def test_a_row_is_taken_for_work_only_by_its_holder_or_once_its_lease_ran_out(database: Database) -> None:
    inbox = SqlInbox(database)
    now = datetime.now(UTC)
    later = now + timedelta(minutes=2)
    body = {"user_id": ALICE, "trigger_id": "6.6.take"}
    assert inbox.record(
        "command:6.6.take", "command", body, owner="a", now=now, lease_until=later, expires_at=later
    )
    assert inbox.take("command:6.6.take", "a", now, later)  # its own claim
    assert not inbox.take("command:6.6.take", "b", now, later)  # a's lease stands
    assert not inbox.renew("command:6.6.take", "b", later)
    assert inbox.renew("command:6.6.take", "a", later + timedelta(minutes=2))
    # Past a's renewed lease (a died): b takes it, and a's heartbeat learns it lost it.
    past = later + timedelta(minutes=3)
    assert inbox.take("command:6.6.take", "b", past, past + timedelta(minutes=2))
    assert not inbox.renew("command:6.6.take", "a", past + timedelta(minutes=4))
    assert not inbox.take("command:6.6.take", "a", past, past + timedelta(minutes=2))
    inbox.finish("command:6.6.take")
    assert not inbox.take("command:6.6.take", "b", past, past + timedelta(minutes=2))  # done: nothing runs


# -- a row is run only with the edge's MAC (atk4 finding 1) ----------------------------------------


@pytest.mark.parametrize("forgery", ["no-mac", "payload-changed", "mac-of-another-row"])
def test_a_row_written_without_the_edges_mac_is_dropped_unrun_and_untold(
    bot: Running, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, forgery: str
) -> None:
    """Someone with write access to the database but not the audit key (docs/SECURITY.md) cannot
    have the sweep run a click as an admin: a row whose MAC does not verify is dropped."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(SecretFilter())
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the command's work to be done")
    [before_state] = [r.state for r in requests_in_db(bot)]
    url = fake_slack.response_url("forged")
    approve = button(card, blocks.APPROVE)
    assert approve is not None
    body = block_action_body(
        blocks.APPROVE, approve["value"], user_id=BOB, channel_id=card["channel"], message_ts=card["ts"],
        message_blocks=card.get("blocks"), response_url=url, trigger_id="5.5.forged",
    )  # fmt: skip
    payload = json.loads(dict(parse_qsl(body.decode()))["payload"])
    payload.pop("token", None)
    key, kind, now = f"click:{blocks.APPROVE}:5.5.forged", f"click:{blocks.APPROVE}", datetime.now(UTC)
    row = {"key": key, "kind": kind, "payload": payload, "received_at": now,
           "expires_at": now + timedelta(minutes=25), "claimed_by": None, "lease_until": None,
           "attempts": 0}  # fmt: skip
    audit_key = bot.backend.db.audit_key
    macs = {
        "no-mac": None,
        "payload-changed": SqlInbox.mac_of(key, kind, {**payload, "user": {"id": ALICE}}, audit_key),
        "mac-of-another-row": SqlInbox.mac_of(f"{kind}:0.0.real", kind, payload, audit_key),
    }
    before = len(fake_slack.calls)
    with bot.backend.db.engine.begin() as conn:
        conn.execute(sa.insert(slack_inbox).values(**row, mac=macs[forgery]))
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the sweep to drop the row")
    assert [r.state for r in requests_in_db(bot)] == [before_state]  # not approved as BOB
    assert "forged" not in fake_slack.responses
    assert fake_slack.calls[before:] == [], [c.method for c in fake_slack.calls[before:]]
    dropped = [r for r in caplog.records if "inbox row" in r.getMessage() and "MAC" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.WARNING]
    assert getattr(dropped[0], "correlation_id", None)
    assert not {BOB, approve["value"], url} & set(dropped[0].getMessage().split())


def test_a_recorded_row_carries_a_mac_that_names_its_key_kind_and_payload(database: Database) -> None:
    inbox = SqlInbox(database)
    now = datetime.now(UTC)
    payload = {"user_id": ALICE, "text": "workspace new team-a"}
    past, later = now - timedelta(seconds=1), now + timedelta(minutes=30)
    assert inbox.record(
        "command:1", "command", payload, owner="me", now=now, lease_until=past, expires_at=later
    )
    [item] = inbox.claim("me", now, now + timedelta(minutes=1), 10)
    assert item.authentic
    mac = SqlInbox.mac_of("command:1", "command", payload, database.audit_key)
    assert {mac} != {SqlInbox.mac_of(k, kd, p, database.audit_key) for k, kd, p in [
        ("command:2", "command", payload), ("command:1", "click:kf_approve", payload),
        ("command:1", "command", {**payload, "user_id": BOB})]}  # fmt: skip
    assert mac != SqlInbox.mac_of("command:1", "command", payload, database.audit_key + b"x")


# -- a request the inbox cannot record is answered "try again" and not done (atk4 finding 2) --------


def refuse_inserts(bot: Running, table: str, how: str = "operational") -> None:
    """A real database failure on the edge's write: every insert into ``table`` fails (SQLite), as
    an operational error or as an integrity error that is not the row's key already there."""
    action = "insert into no_such_table values (1)" if how == "operational" else "select raise(abort, 'no')"
    trigger = f"before insert on {table} begin {action}; end"
    with bot.backend.db.engine.begin() as conn:
        conn.execute(sa.text(f"create trigger refuse_{table} {trigger}"))


def allow_inserts(bot: Running, table: str) -> None:
    with bot.backend.db.engine.begin() as conn:
        conn.execute(sa.text(f"drop trigger refuse_{table}"))


@pytest.mark.parametrize(("table", "how"), [("slack_inbox", "operational"), ("slack_inbox", "integrity"),
                                           ("slack_signatures", "operational")])  # fmt: skip
def test_a_command_the_edge_cannot_record_is_answered_try_again_and_never_run(
    bot: Running, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, table: str, how: str
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(SecretFilter())
    url = fake_slack.response_url("unrecorded")
    body = slash_command_body("workspace new team-unrecorded", user_id=ALICE, response_url=url,
                              trigger_id="6.6.unrecorded")  # fmt: skip
    refuse_inserts(bot, table, how)
    try:
        status, _, answer = post_signed(bot.url, body, SIGNING_SECRET)
    finally:
        allow_inserts(bot, table)
    assert status == 200
    text = answer.decode()
    assert "could not record this; try again" in text
    [ref] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    cid = getattr(ref, "correlation_id", None)
    assert "could not record" in ref.getMessage() and cid and f"(ref {cid})" in text
    time.sleep(1)  # the sweep runs each second: nothing may have been left for it
    assert requests_in_db(bot) == [] and inbox_keys(bot) == []
    assert "unrecorded" not in fake_slack.responses
    logged = caplog.text + "".join(str(r.exc_info) for r in caplog.records)
    assert "team-unrecorded" not in logged and url not in logged and "Traceback" not in caplog.text


def test_a_click_the_inbox_cannot_record_is_answered_empty_and_never_run(
    bot: Running, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)
    fake_slack.wait_for(lambda: inbox_keys(bot) == [], WAIT, "the command's work to be done")
    [before] = [r.state for r in requests_in_db(bot)]
    approve = button(card, blocks.APPROVE)
    assert approve is not None
    body = block_action_body(
        blocks.APPROVE, approve["value"], user_id=BOB, channel_id=card["channel"], message_ts=card["ts"],
        message_blocks=card.get("blocks"), response_url=fake_slack.response_url("lost-click"),
    )  # fmt: skip
    refuse_inserts(bot, "slack_inbox")
    try:
        status, _, answer = post_signed(bot.url, body, SIGNING_SECRET)
    finally:
        allow_inserts(bot, "slack_inbox")
    assert (status, answer) == (200, b"")
    time.sleep(1)
    assert [r.state for r in requests_in_db(bot)] == [before] and inbox_keys(bot) == []
    assert "lost-click" not in fake_slack.responses
