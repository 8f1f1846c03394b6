"""A signed request sent again changes nothing (the real bot over HTTP, the fake Slack, SQLite; the
store on SQLite and PostgreSQL).

Slack's signature holds for 5 minutes, and the inbox row that stops a redelivery is deleted once
the work is done, so without more a captured request replayed after its work ran is new work: a
second reply, a second ``/kf retry``. Each accepted signature is recorded (``slack_signatures``)
before the request is handled; the same signature again is acknowledged and dropped, whichever
replica it reaches. Slack's own retry of an event is a new request (a new timestamp, so a new
signature) and is handled as before.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.app import Running
from provisioning import SeenSignatures
from provisioning.store import Database
from provisioning.store.schema import slack_signatures
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, app_home_opened, post_signed, slash_command_body
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    audit_types,
    new_workspace_request,
    requests_in_db,
    settings_for,
    settle,
    wait_until,
)
from tests.fakes.slack_socket import event_payload

pytest_plugins = ["tests.fakes.db_fixtures"]


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


def observed(bot: Running, fake: FakeSlack) -> tuple[int, int, int, list[str]]:
    """Everything a request could change: Slack calls, response_url posts, requests, audit entries."""
    replies = sum(len(posts) for posts in fake.responses.values())
    return settle(fake), replies, len(requests_in_db(bot)), audit_types(bot)


@pytest.mark.parametrize("text", ["workspace new team-r --gpu 1", "help", "status"])
def test_a_replayed_command_is_acked_and_changes_nothing(
    bot: Running, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    caplog.set_level(logging.INFO)
    body = slash_command_body(text, user_id=ALICE, response_url=fake_slack.response_url("cmd"))
    timestamp = int(time.time())
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=timestamp)[0] == 200
    fake_slack.wait_for(lambda: fake_slack.responses.get("cmd"), WAIT, "the first reply")
    before = observed(bot, fake_slack)
    status, _, answer = post_signed(bot.url, body, SIGNING_SECRET, timestamp=timestamp)  # the same bytes
    assert (status, answer) == (200, b"")
    assert observed(bot, fake_slack) == before
    assert [r.getMessage() for r in caplog.records if "replay" in r.getMessage()] == [
        "dropped a replayed Slack request (its signature was seen)"
    ]


def test_a_replayed_retry_runs_once_across_replicas(fake_slack: FakeSlack, tmp_path: Path) -> None:
    """An admin's ``/kf retry`` captured and replayed, to this replica and to another on the same
    database: one RETRIED."""
    add_users(fake_slack)
    settings = settings_for(fake_slack, tmp_path)
    with running_bot(settings) as first, running_bot(settings) as second:
        request_id = new_workspace_request(first, fake_slack)
        db = sa.create_engine(f"sqlite:///{tmp_path / 'kfbot.db'}")

        def needs_attention() -> None:  # stands for a failed apply
            with db.begin() as conn:
                conn.execute(
                    sa.text("update requests set state = 'needs-attention' where id = :i"), {"i": request_id}
                )

        needs_attention()
        url = fake_slack.response_url("retry")
        body = slash_command_body(f"retry {request_id}", user_id=BOB, response_url=url)
        timestamp = int(time.time())
        assert post_signed(first.url, body, SIGNING_SECRET, timestamp=timestamp)[0] == 200
        fake_slack.wait_for(lambda: fake_slack.responses.get("retry"), WAIT, "the retry's reply")
        settle(fake_slack)
        retried = audit_types(first).count("request.retried")
        assert retried >= 1
        needs_attention()  # it failed again; the attacker replays the captured command
        for replica in (first, second):
            assert post_signed(replica.url, body, SIGNING_SECRET, timestamp=timestamp)[:3:2] == (200, b"")
        settle(fake_slack)
        assert audit_types(first).count("request.retried") == retried
        assert len(fake_slack.responses["retry"]) == 1
        db.dispose()


def test_a_retry_delivered_again_under_its_trigger_id_retries_once(
    bot: Running, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """Not a replay (signed anew, as a redelivery in Socket Mode or by a proxy would be, after the
    first copy's inbox row was deleted): ``/kf retry`` is idempotent on its ``trigger_id``, as a
    submission is."""
    request_id = new_workspace_request(bot, fake_slack)
    db = sa.create_engine(f"sqlite:///{tmp_path / 'kfbot.db'}")

    def needs_attention() -> None:
        with db.begin() as conn:
            conn.execute(
                sa.text("update requests set state = 'needs-attention' where id = :i"), {"i": request_id}
            )

    needs_attention()
    url = fake_slack.response_url("retry")
    body = slash_command_body(f"retry {request_id}", user_id=BOB, response_url=url, trigger_id="5.5.retry")
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=int(time.time()) - 30)[0] == 200
    fake_slack.wait_for(lambda: fake_slack.responses.get("retry"), WAIT, "the retry's reply")
    settle(fake_slack)
    retried = audit_types(bot).count("request.retried")
    needs_attention()
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
    replies = fake_slack.wait_for(lambda: fake_slack.responses["retry"][1:], WAIT, "the second reply")
    settle(fake_slack)
    assert audit_types(bot).count("request.retried") == retried
    assert "already" in str(replies[0].get("text", "")).lower()
    db.dispose()


def test_slacks_retry_of_an_event_is_a_new_request_and_is_handled(
    bot: Running, fake_slack: FakeSlack
) -> None:
    """Slack retries an event with a new timestamp (so a new signature) and ``X-Slack-Retry-Num``:
    served as before (publishing the Home again is harmless); only the identical bytes are a replay."""
    body = json.dumps(event_payload(app_home_opened(ALICE))).encode()
    now = int(time.time())
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=now - 2)[0] == 200
    fake_slack.wait_for(lambda: fake_slack.home_view(ALICE), WAIT, "Alice's App Home")

    def published() -> int:
        return len([c for c in fake_slack.calls if c.method == "views.publish"])

    once = published()
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=now, headers_override=retry)[0] == 200
    fake_slack.wait_for(lambda: published() > once, WAIT, "the retry's publish")
    settle(fake_slack)
    twice = published()
    replay = post_signed(bot.url, body, SIGNING_SECRET, timestamp=now, headers_override=retry)
    assert replay[:3:2] == (200, b"")
    assert settle(fake_slack) and published() == twice


# -- the store ---------------------------------------------------------------------------------------

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def signatures(database: Database) -> list[str]:
    with database.reader() as conn:
        return sorted(str(s) for (s,) in conn.execute(sa.select(slack_signatures.c.signature)))


def test_a_signature_is_first_once_until_it_expires(database: Database) -> None:
    seen = SeenSignatures(database)
    expires = T0 + timedelta(minutes=6)
    assert seen.first("v0=" + "a" * 64, expires, now=T0)
    assert not seen.first("v0=" + "a" * 64, expires, now=T0 + timedelta(minutes=1))
    assert seen.first("v0=" + "b" * 64, expires, now=T0)
    # Past its expiry a row is pruned by a later insert (Slack's timestamp check refuses the
    # request itself by then); one not yet expired stays.
    assert seen.first("v0=" + "c" * 64, T0 + timedelta(minutes=20), now=T0 + timedelta(minutes=7))
    assert signatures(database) == ["v0=" + "c" * 64]


def test_pruning_is_bounded_per_insert(database: Database) -> None:
    seen = SeenSignatures(database, prune_batch=3)
    for n in range(7):
        assert seen.first(f"v0={n:064x}", T0, now=T0 - timedelta(minutes=1))
    assert seen.first("v0=" + "f" * 64, T0 + timedelta(hours=1), now=T0 + timedelta(minutes=1))
    assert len(signatures(database)) == 7 - 3 + 1
    assert seen.first("v0=" + "e" * 64, T0 + timedelta(hours=1), now=T0 + timedelta(minutes=1))
    assert len(signatures(database)) == 7 - 6 + 2


# -- the edge's own writes are bounded: a held lock is answered "try again" (atk4 finding 3) --------


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["slack_signatures", "slack_inbox"])
def test_a_command_behind_a_held_lock_is_answered_try_again_and_never_carried_out(
    fake_slack: FakeSlack, tmp_path: Path, postgres_url: str, table: str
) -> None:
    """Slack gives up after 3 s and tells the person it failed: an edge that waited on a lock and
    then did the work would act on a request its sender saw fail. The lock is held until the edge
    has answered (or for WAIT), so an edge that waits for it answers only after it is released."""
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path, KFBOT_DATABASE_URL=postgres_url)) as bot:
        holder = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
        locked, answered = threading.Event(), threading.Event()

        def hold() -> None:
            with holder.begin() as conn:
                conn.execute(sa.text(f"lock table {table} in access exclusive mode"))
                locked.set()
                answered.wait(WAIT)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert locked.wait(WAIT)
            url = fake_slack.response_url("locked")
            body = slash_command_body("workspace new team-locked", user_id=ALICE, response_url=url,
                                      trigger_id="7.7.locked")  # fmt: skip
            status, _, answer = post_signed(bot.url, body, SIGNING_SECRET)
        finally:
            answered.set()
            thread.join()
            holder.dispose()
        assert status == 200
        assert "could not record this; try again" in answer.decode()
        settle(fake_slack)
        time.sleep(1.5)  # past an inbox sweep: nothing was left for it
        assert requests_in_db(bot) == [] and "locked" not in fake_slack.responses


SQLITE_HOLD_SECONDS = 3


def test_on_sqlite_a_command_behind_the_write_lock_waits_its_turn_and_is_carried_out_once(
    bot: Running, fake_slack: FakeSlack
) -> None:
    """SQLite's side: the write lock is only ever the one process's own short transactions, so a
    command queued behind it (a burst) waits its turn as every writer does and is recorded, not
    refused; here another connection holds the lock for a while and lets it go."""
    path = bot.backend.db.url.database
    assert path is not None
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("begin immediate")
            locked.set()
            time.sleep(SQLITE_HOLD_SECONDS)
            conn.execute("rollback")
        finally:
            conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(WAIT)
        url = fake_slack.response_url("busy-db")
        body = slash_command_body(
            "workspace new team-busy", user_id=ALICE, response_url=url, trigger_id="8.8.busy"
        )
        status, _, answer = post_signed(bot.url, body, SIGNING_SECRET)
    finally:
        thread.join()
    assert status == 200 and "try again" not in answer.decode()
    wait_until(lambda: len(requests_in_db(bot)) == 1, "the command to be recorded once")
