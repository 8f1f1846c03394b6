"""The cost digest: its numbers and words (pure), its schedule (APScheduler's CronTrigger in the
configured zone, across DST), and its timer over a real database and the fake Slack: one post per
slot whatever the replicas, restarts, retries and forged rows; the chart in its thread; a failed
upload still leaves the text digest."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from slack_sdk import WebClient

from bot import chart
from bot.digest import DIGEST_REF, DIGEST_TIMER, CostDigest, DigestSchedule
from bot.scheduler import sweep_once
from bot.settings import check_digest_schedule
from handlers.cost.digest import (
    TAG_NOTE,
    BilledCost,
    Period,
    UsageDay,
    build_digest,
    chart_spec,
    period_before,
    render_text,
)
from handlers.plan import JSON
from handlers.settings import CostSettings
from provisioning.store import NodeUsage, timers
from tests.fakes.clock import FakeClock
from tests.fakes.slack import FakeSlack
from tests.harness import CORE, Stack, build_stack

pytest_plugins = ["tests.fakes.db_fixtures", "tests.fakes.slack_fixtures"]

WEEK = Period(date(2026, 3, 2), date(2026, 3, 9))


def day(d: int, ng: str, ws: str | None, hours: float, idle: float = 0.0, price: float = 1.0) -> UsageDay:
    return UsageDay(
        date(2026, 3, d), ng, ws, "g5.xlarge", hours * 3600, idle * 3600, hours * price, idle * price
    )


# -- the numbers ---------------------------------------------------------------------------------


def test_digest_per_workspace_idle_share_change_wasters_and_unattributed() -> None:
    current = [
        day(2, "kf-a-gpu", "team-a", 24, idle=12),
        day(3, "kf-a-gpu", "team-a", 24, idle=6),
        day(2, "kf-b-gpu", "team-b", 10),
        day(4, "hand-made", None, 8, idle=8, price=2.0),
        day(9, "kf-a-gpu", "team-a", 1000),  # after the period: ignored
    ]
    previous = [UsageDay(date(2026, 2, 24), "kf-a-gpu", "team-a", "g5.xlarge", 96 * 3600, 0, 96.0, 0.0)]
    d = build_digest(WEEK, current, previous)
    lines = {line.label: line for line in d.lines}
    assert list(lines) == ["team-a", "unattributed: hand-made", "team-b"]
    a = lines["team-a"]
    assert (a.node_hours, a.usd, a.idle_hours, a.previous_usd) == (48, 48.0, 18, 96.0)
    assert a.idle_share == pytest.approx(18 / 48)
    assert a.change == pytest.approx(-0.5)
    assert lines["team-b"].change is None
    assert lines["unattributed: hand-made"].workspace is None
    assert [(w.nodegroup, w.idle_usd) for w in d.wasters] == [("hand-made", 16.0), ("kf-a-gpu", 18.0)][::-1]
    assert d.daily["team-a"] == (24.0, 24.0, 0, 0, 0, 0, 0)
    assert d.usd == pytest.approx(48 + 10 + 16)


def test_top_three_wasters_only() -> None:
    rows = [day(2, f"ng-{i}", f"ws-{i}", 10, idle=i) for i in range(1, 6)]
    d = build_digest(WEEK, rows)
    assert [w.nodegroup for w in d.wasters] == ["ng-5", "ng-4", "ng-3"]


def test_period_is_whole_utc_days_before_the_slot() -> None:
    slot = datetime(2026, 3, 9, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    p = period_before(slot)
    assert (p.start, p.end, p.previous.start) == (date(2026, 3, 2), date(2026, 3, 9), date(2026, 2, 23))


def test_text_escapes_names_and_says_what_the_numbers_are() -> None:
    rows = [day(2, "<!channel>", None, 5, idle=5), day(2, "kf-a-gpu", "team-a", 5)]
    rows.append(replace(rows[1], nodegroup="kf-a-gpu2", unpriced_seconds=7200.0))
    text = render_text(build_digest(WEEK, rows))
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "not the bill" in text
    assert "2.0 node-h of an instance type with no known price" in text
    assert "2026-03-02 to 2026-03-08" in text


def test_billed_cost_is_labelled_billed_and_the_tag_caveat_is_said() -> None:
    billed = BilledCost(WEEK, {"team-a": 40.5}, untagged=120.25, estimated=True)
    text = render_text(build_digest(WEEK, [day(2, "kf-a-gpu", "team-a", 5)], billed=billed))
    assert "*Billed* (Cost Explorer" in text and "estimated" in text
    assert "team-a: 40.50 USD" in text and "untagged: 120.25 USD" in text
    assert TAG_NOTE in text and "launch template" in TAG_NOTE


# -- the schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "UTC"])
def test_default_schedule_fires_weekdays_at_nine_in_the_zone_across_dst(zone: str) -> None:
    schedule = DigestSchedule(check_digest_schedule(CostSettings.digest_schedule), zone)
    tz = ZoneInfo(zone)
    # Europe and the US both change clocks in March (2026-03-08 US, 2026-03-29 EU) and again in
    # October/November: three weeks either side of each change.
    for start in (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 10, 18, tzinfo=UTC)):
        fires, moment = [], start
        for _ in range(40):
            fire = schedule.next_after(moment)
            assert fire is not None
            fires.append(fire.astimezone(tz))
            moment = fire
        assert all(f.weekday() < 5 and (f.hour, f.minute) == (9, 0) for f in fires)
        local_days = [f.date() for f in fires]
        every_weekday = [start.date() + timedelta(days=i) for i in range(70)]
        expected = [d for d in every_weekday if d.weekday() < 5 and d >= local_days[0]][:40]
        assert local_days == expected
    offsets = {f.utcoffset() for f in fires}
    assert zone == "UTC" or len(offsets) == 2  # the DST change was crossed


def test_numbered_weekdays_are_refused_rather_than_read_as_monday_zero() -> None:
    with pytest.raises(ValueError, match="name the days"):
        check_digest_schedule("0 9 * * 1-5")


@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)))
def test_latest_slot_is_the_last_fire_at_or_before_now(moment: datetime) -> None:
    schedule = DigestSchedule("30 8 * * mon,thu", "Europe/Berlin")
    latest = schedule.latest_at_or_before(moment)
    assert latest is not None and latest <= moment
    following = schedule.next_after(latest)
    assert following is not None and following > moment
    assert latest.astimezone(ZoneInfo("Europe/Berlin")).weekday() in (0, 3)


# -- the timer -----------------------------------------------------------------------------------

MONDAY_0859 = datetime(2026, 3, 9, 7, 59, tzinfo=UTC)  # 08:59 in Berlin
SCHEDULE = DigestSchedule("0 9 * * mon-fri", "Europe/Berlin")
CHANNEL = "CCOST"


def _stack(db_url: str, clock: FakeClock, worker: str = "worker-1", migrate: bool = True) -> Stack:
    core = replace(CORE, cost=CostSettings(scan_interval=timedelta(minutes=10)))
    return build_stack(db_url, clock=clock, core=core, worker_id=worker, migrate=migrate)


def _fake_chart(spec: object) -> bytes:
    _title, _days, series = chart.validate(spec)
    return b"\x89PNG\r\n\x1a\n" + repr(sorted(series)).encode()


def _digest(stack: Stack, client: WebClient, render: chart.ChartRenderer = _fake_chart) -> CostDigest:
    return CostDigest(stack.backend, client, CHANNEL, SCHEDULE, stack.clock, render_chart=render)


def _seed_week(stack: Stack) -> None:
    """Two nodes observed every 10 minutes for the week before Monday 9 March."""
    at = datetime(2026, 3, 2, tzinfo=UTC)
    while at < datetime(2026, 3, 9, tzinfo=UTC):
        stack.backend.usage.record(
            at,
            [
                NodeUsage("ip-a", "kf-team-a-gpu", "team-a", "g5.xlarge", idle=at.hour < 8, hourly_usd=1.0),
                NodeUsage("ip-h", "hand-made", None, "g5.xlarge", idle=True, hourly_usd=2.0),
            ],
        )
        at += timedelta(hours=4)  # the gaps are capped: 20 min charged per record, cheap to seed


def _sweep(stack: Stack, digest: CostDigest) -> int:
    return sweep_once(stack.backend, stack.core, {DIGEST_TIMER: digest.handle})


def _pending(stack: Stack) -> list[tuple[str, datetime]]:
    with stack.backend.db.uow() as uow:
        rows = uow.connection.execute(
            sa.select(timers.c.ref, timers.c.due_at).where(
                timers.c.kind == DIGEST_TIMER, timers.c.done_at.is_(None)
            )
        )
        return [(r.ref, r.due_at) for r in rows]


def test_the_digest_posts_once_at_its_time_with_the_chart_in_its_thread(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859)
    stack = _stack(db_url, clock)
    _seed_week(stack)
    digest = _digest(stack, slack_client)
    digest.keep_scheduled()
    nine = datetime(2026, 3, 9, 8, tzinfo=UTC)
    assert _pending(stack) == [(DIGEST_REF, nine)]
    assert _sweep(stack, digest) == 0  # not yet
    clock.advance(timedelta(minutes=1))
    assert _sweep(stack, digest) == 1
    [post] = [m for m in fake_slack.messages_in(CHANNEL) if "GPU cost digest" in m["text"]]
    assert "team-a" in post["text"] and "unattributed: hand-made" in post["text"]
    [upload] = fake_slack.files.values()
    assert upload["thread_ts"] == post["ts"] and upload["channel"] == CHANNEL
    assert upload["data"].startswith(b"\x89PNG")
    assert b"team-a" in upload["data"] and b"unattributed: hand-made" in upload["data"]
    assert _pending(stack) == [(DIGEST_REF, nine + timedelta(days=1))]  # Tuesday 09:00 Berlin
    clock.advance(timedelta(minutes=5))
    assert _sweep(stack, digest) == 0
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_a_restart_neither_skips_nor_doubles_and_a_late_fire_posts_once(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859)
    stack = _stack(db_url, clock)
    _seed_week(stack)
    _digest(stack, slack_client).keep_scheduled()
    # Down from 08:59 Monday to 10:30 Wednesday: Monday's, Tuesday's and Wednesday's slots passed.
    clock.advance(timedelta(days=2, hours=1, minutes=31))
    restarted = _stack(db_url, clock, worker="worker-2", migrate=False)
    digest = _digest(restarted, slack_client)
    digest.keep_scheduled()  # startup: the overdue row stays, so it still fires
    assert _sweep(restarted, digest) == 1
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    text = fake_slack.calls_to("chat.postMessage")[0]["text"]
    assert "2026-03-04 to 2026-03-10" in text  # Wednesday's slot: the week before Wednesday
    assert _pending(restarted) == [(DIGEST_REF, datetime(2026, 3, 12, 8, tzinfo=UTC))]
    # A second restart before Thursday changes nothing.
    again = _digest(_stack(db_url, clock, worker="worker-3", migrate=False), slack_client)
    again.keep_scheduled()
    assert _pending(restarted) == [(DIGEST_REF, datetime(2026, 3, 12, 8, tzinfo=UTC))]


def test_two_replicas_on_one_database_post_one_digest(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859)
    first = _stack(db_url, clock)
    second = _stack(db_url, clock, worker="worker-2", migrate=False)
    _seed_week(first)
    digests = [_digest(first, slack_client), _digest(second, slack_client)]
    for d in digests:
        d.keep_scheduled()
    clock.advance(timedelta(minutes=2))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(stack: Stack, d: CostDigest) -> None:
        try:
            barrier.wait()
            # Both sweep timers as if both led (a lost lease, SQLite's single process): the
            # timer's claim and the slot's claim still let only one post.
            stack.backend.sweep_timers(lambda kind, ref, payload: d.handle(ref, payload))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pairs = zip((first, second), digests, strict=True)
    threads = [threading.Thread(target=run, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    # Then the same slot handled again by the other replica (a retried timer): nothing more.
    digests[1].handle(DIGEST_REF, {})
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


def test_a_forged_row_can_only_post_the_due_digest_once_to_the_configured_channel(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859 + timedelta(hours=2))
    stack = _stack(db_url, clock)
    _seed_week(stack)
    digest = _digest(stack, slack_client)
    hostile: dict[str, JSON] = {
        "channel": "CEVIL",
        "text": "<!channel> pwned",
        "action": "gpu.scale",
        "workspace": "team-a",
        "nodes": 0,
        "request_id": "r-1",
    }
    with stack.backend.db.uow() as uow:
        for ref in (DIGEST_REF, "other", "../etc"):
            uow.timers.schedule(DIGEST_TIMER, ref, clock.now() - timedelta(days=30), hostile)
        uow.commit()
    assert _sweep(stack, digest) == 3
    posts = fake_slack.calls_to("chat.postMessage")
    assert [p["channel"] for p in posts] == [CHANNEL]
    assert "pwned" not in posts[0]["text"] and "2026-03-02 to 2026-03-08" in posts[0]["text"]
    # The same forged row again, and one dated in the past: the slot is posted, nothing more.
    with stack.backend.db.uow() as uow:
        uow.timers.schedule(DIGEST_TIMER, DIGEST_REF, clock.now() - timedelta(days=3), hostile)
        uow.commit()
    _sweep(stack, digest)
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert _pending(stack) == [(DIGEST_REF, datetime(2026, 3, 10, 8, tzinfo=UTC))]
    # No request was filed, nothing acted on: the audit log holds no event.
    with stack.backend.db.uow() as uow:
        assert uow.connection.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() == 0
        assert uow.connection.execute(sa.text("SELECT count(*) FROM requests")).scalar() == 0


def test_a_failed_upload_still_posts_the_text_and_a_failed_post_is_retried(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859 + timedelta(minutes=2))
    stack = _stack(db_url, clock)
    _seed_week(stack)
    digest = _digest(stack, slack_client)
    digest.keep_scheduled()
    with stack.backend.db.uow() as uow:
        uow.timers.schedule(DIGEST_TIMER, DIGEST_REF, clock.now() - timedelta(minutes=1), {})
        uow.commit()
    fake_slack.fail_next("chat.postMessage", "channel_not_found")
    _sweep(stack, digest)
    assert not fake_slack.messages_in(CHANNEL)
    assert stack.backend.usage.latest_digest_slot() is None  # given back for the retry
    fake_slack.fail_next("files.completeUploadExternal", "file_not_found")
    clock.advance(timedelta(minutes=2))  # the lease ran out: the row is due again
    _sweep(stack, digest)
    [post] = fake_slack.messages_in(CHANNEL)
    assert "GPU cost digest" in post["text"]
    assert not any(f["channel"] for f in fake_slack.files.values())


def test_a_chart_that_cannot_be_drawn_leaves_the_text(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    def broken(spec: object) -> bytes:
        raise chart.ChartError("no matplotlib here")

    clock = FakeClock(MONDAY_0859 + timedelta(minutes=2))
    stack = _stack(db_url, clock)
    _seed_week(stack)
    digest = _digest(stack, slack_client, broken)
    digest.handle(DIGEST_REF, {})
    assert len(fake_slack.messages_in(CHANNEL)) == 1
    assert fake_slack.files == {}


def test_no_usage_no_post_and_digest_off_leaves_no_timer(
    db_url: str, fake_slack: FakeSlack, slack_client: WebClient
) -> None:
    clock = FakeClock(MONDAY_0859 + timedelta(minutes=2))
    stack = _stack(db_url, clock)
    digest = _digest(stack, slack_client)
    digest.handle(DIGEST_REF, {})
    assert fake_slack.calls_to("chat.postMessage") == []
    assert _pending(stack)  # the next one is still scheduled
    stack.backend.keep_timer(DIGEST_TIMER, DIGEST_REF, None)
    assert _pending(stack) == []


def test_chart_spec_round_trips_through_validation() -> None:
    d = build_digest(WEEK, [day(2, "kf-a-gpu", "team-a", 5)])
    _title, days, series = chart.validate(chart_spec(d))
    assert days[0] == "2026-03-02" and len(days) == 7
    assert series == {"team-a": [5.0, 0, 0, 0, 0, 0, 0]}
