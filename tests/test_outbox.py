"""The notification outbox (#14): the step engine records what to announce in the transaction of
each change, and a publisher delivers it afterwards, so applying never waits on Slack's pace.

What is proved here: with the admin channel throttled as Slack throttles it, approved requests all
succeed while their thread lines are still going out, then every line arrives, each once, in
its request's order; a notice held by a publisher that died (its lease ran out) is delivered by
another; concurrent publishers never deliver a row twice nor let a request's notices overtake
each other.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from slack_sdk import WebClient

from bot.notify import SlackNotifier
from handlers import kinds, services
from handlers.model import RequestState
from provisioning.publisher import Publisher
from provisioning.store import Outbox
from provisioning.store.schema import notification_outbox
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.harness import ADMIN, ALICE, BOB, Stack, build_stack, make_workspace

pytest_plugins = ["tests.fakes.db_fixtures"]

ADMIN_CHANNEL = "CADMINS01"
WAIT = 60.0
# One share request's engine notices, each a line in its card's thread (see handlers.notifications).
THREAD_MESSAGES = 3
"""A one-step request's thread: the apply line, the step's one message, the result."""
ENGINE_NOTICES = ["request.apply_started", "step.started", "step.succeeded", "request.succeeded"]


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def state(stack: Stack, request_id: str) -> RequestState:
    return stack.request(request_id).state


def outbox_rows(stack: Stack) -> list[tuple[str, list[str]]]:
    """(request id, event types) of every row, in delivery order."""
    with stack.backend.db.reader() as conn:
        rows = conn.execute(sa.select(notification_outbox).order_by(notification_outbox.c.id)).all()
    return [(row.request_id, [e["type"] for e in row.events]) for row in rows]


def shares(stack: Stack, count: int) -> list[str]:
    """``count`` share requests by Bob about Alice's workspace: each waits for an admin."""
    make_workspace(stack, "team-a", ALICE)
    return [
        services.submit(stack.core, BOB, kinds.Share("team-a", f"user{i}@example.com"), idempotency_key=None)
        .request.id
        for i in range(count)
    ]


def applied_without_delivery(stack: Stack, ids: list[str]) -> None:
    """Approve and apply ``ids`` with engine workers only (nobody drains the outbox)."""
    for request_id in ids:
        stack.approve(request_id)
    engine = stack.backend.engine(stack.notifier)
    while engine.run_once():
        pass
    assert all(state(stack, rid) is RequestState.SUCCEEDED for rid in ids)


def delivered(stack: Stack, since: int) -> dict[str, list[str]]:
    """Event types told per request by the stack's notifier after its ``since``-th publish."""
    out: dict[str, list[str]] = {}
    for request_id, _, types in stack.notifier.published[since:]:
        out.setdefault(request_id, []).extend(types)
    return out


# -- the engine does not wait for Slack's pace ---------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        for user, email in (("UALICE", "alice@example.com"), ("UBOB", "bob@example.com"),
                            ("UADMIN", "admin@example.com")):
            fake.add_user(user, email)
        yield fake


@pytest.mark.slow
def test_approved_work_finishes_at_once_while_slack_paces_its_thread_lines(
    db_url: str, fake: FakeSlack
) -> None:
    stack = build_stack(db_url)
    web = WebClient(token=BOT_TOKEN, base_url=fake.base_url)
    slack = SlackNotifier(web, ADMIN_CHANNEL, lambda email: None, dry_run=True)
    stack.core = dataclasses.replace(stack.core, notifier=slack)
    ids = shares(stack, 3)
    card_of: dict[str, tuple[str, str]] = {}
    with stack.backend.db.uow() as uow:
        for rid in ids:
            card = uow.requests.card(rid)
            assert card is not None and card[0] == ADMIN_CHANNEL
            card_of[rid] = card
    for rid in ids:
        stack.approve(rid)  # decided and its card updated; nothing applied yet (no worker runs)
    # Slack accepts no message in the admin channel until the work is done (a channel out of
    # tokens for as long as it takes), then one every half second: applying waits for neither.
    fake.hold_channel(ADMIN_CHANNEL)
    stop = threading.Event()
    supervisor = stack.backend.start_worker(slack, stop)
    try:
        wait_for(lambda: all(state(stack, rid) is RequestState.SUCCEEDED for rid in ids), WAIT, "success")
        assert sum(len(fake.replies(*card_of[rid])) for rid in ids) == 0
        assert Outbox(stack.backend.db).pending() > 0
        fake.limit_channel_rate(per_second=2, burst=1)
        fake.hold_channel(ADMIN_CHANNEL, held=False)
        wait_for(lambda: Outbox(stack.backend.db).pending() == 0, 90, "the outbox to drain")
    finally:
        stop.set()
        supervisor.join(timeout=30)
    assert fake.throttled > 0  # Slack's pace was really met, and honoured
    for rid in ids:
        replies = fake.replies(*card_of[rid])
        texts = [str(m["text"]) for m in replies]
        assert len(texts) == THREAD_MESSAGES and len(set(texts)) == len(texts), texts
        # The step's one message was posted as "▶ ..." and edited when the step was done.
        assert texts[0].startswith("Dry run of") and texts[1].startswith("✔ would create"), texts
        assert "edited" in replies[1] and texts[2].startswith(f"✅ `{rid}` is done"), texts
        # Delivery was recorded as before: one notification.sent per delivered notice.
        with stack.backend.db.uow() as uow:
            about = [e.data["about"] for e in uow.audit.trail(rid) if e.type.value == "notification.sent"]
        assert [[t] for t in ENGINE_NOTICES] == [a for a in about if a != ["request.approved"]][-4:]


# -- a publisher that died, and concurrent publishers --------------------------------------------


def test_a_notice_held_by_a_dead_publisher_is_delivered_by_another_after_its_lease(db_url: str) -> None:
    stack = build_stack(db_url)
    ids = shares(stack, 2)
    applied_without_delivery(stack, ids)
    told = len(stack.notifier.published)
    assert delivered(stack, told) == {}  # nothing of the engine's was told yet...
    expected = outbox_rows(stack)
    assert [types for rid, types in expected if rid == ids[0]] == [[t] for t in ENGINE_NOTICES]  # ...all kept
    # A publisher claims the first request's head and dies (its process was killed mid-drain).
    now = stack.clock.now()
    lease = stack.backend.settings.engine.lease
    dead = Outbox(stack.backend.db).claim("dead-replica/outbox", now, now + lease)
    assert dead is not None and dead.request.id == expected[0][0]
    held, other = dead.request.id, next(rid for rid in ids if rid != dead.request.id)
    live = Publisher(stack.backend.db, stack.notifier, stack.clock, stack.backend.settings.engine,
                     worker_id="live-replica/outbox")
    # While the dead one's lease runs, none of that request's notices overtake the held one;
    # the other request's go out meanwhile.
    assert live.drain() == len(ENGINE_NOTICES)
    assert delivered(stack, told) == {other: ENGINE_NOTICES}
    stack.clock.advance(lease + timedelta(seconds=1))
    assert live.drain() == len(ENGINE_NOTICES)
    assert delivered(stack, told) == {other: ENGINE_NOTICES, held: ENGINE_NOTICES}
    assert Outbox(stack.backend.db).pending() == 0
    # The snapshot is the request as it was at each change: a step line is told while applying.
    states = [st for rid, st, _ in stack.notifier.published[told:] if rid == held]
    assert states == ["applying", "applying", "applying", "succeeded"]


def test_the_dead_publishers_late_finish_deletes_nothing_of_the_new_owner(db_url: str) -> None:
    stack = build_stack(db_url)
    ids = shares(stack, 1)
    applied_without_delivery(stack, ids)
    outbox, now, lease = Outbox(stack.backend.db), stack.clock.now(), stack.backend.settings.engine.lease
    held = outbox.claim("paused", now, now + lease)
    assert held is not None
    stack.clock.advance(lease + timedelta(seconds=1))
    taken = outbox.claim("other", stack.clock.now(), stack.clock.now() + lease)
    assert taken is not None and taken.id == held.id and taken.attempts == 2
    assert not outbox.renew(held.id, "paused", stack.clock.now() + lease)  # the paused one lost it
    outbox.finish(held.id, "paused")
    assert outbox.pending() == len(ENGINE_NOTICES)  # still there: "other" delivers it
    outbox.finish(taken.id, "other")
    assert outbox.pending() == len(ENGINE_NOTICES) - 1


def test_concurrent_publishers_deliver_each_notice_once_in_its_requests_order(db_url: str) -> None:
    stack = build_stack(db_url)
    ids = shares(stack, 4)
    applied_without_delivery(stack, ids)
    told = len(stack.notifier.published)
    publishers = [
        Publisher(stack.backend.db, stack.notifier, stack.clock, stack.backend.settings.engine,
                  worker_id=f"replica-{n}/outbox")
        for n in range(3)
    ]
    counts: list[int] = []
    threads = [threading.Thread(target=lambda p=p: counts.append(p.drain())) for p in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # A publisher may stop early (the only heads left were claimed by others); one more drain
    # takes what is left, as the next poll would.
    counts.append(publishers[0].drain())
    assert sum(counts) == len(ids) * len(ENGINE_NOTICES)
    assert delivered(stack, told) == {rid: ENGINE_NOTICES for rid in ids}


def test_run_until_idle_delivers_in_the_order_the_engine_recorded(db_url: str) -> None:
    """``kfbot shell`` and tests read what was told right after ``run_until_idle``: it drains the
    outbox before returning, in the order of the engine's changes."""
    stack = build_stack(db_url)
    ids = shares(stack, 2)
    for rid in ids:
        stack.approve(rid, ADMIN)
    told = len(stack.notifier.published)
    stack.run()
    told_now = [(rid, types) for rid, _, types in stack.notifier.published[told:]]
    # One request after the other, as the engine applied them, each in its own order.
    order = list(dict.fromkeys(rid for rid, _ in told_now))
    assert sorted(order) == sorted(ids)
    assert told_now == [(rid, [t]) for rid in order for t in ENGINE_NOTICES]
    assert Outbox(stack.backend.db).pending() == 0
