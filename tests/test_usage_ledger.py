"""The GPU usage ledger on SQLite and PostgreSQL: what a scan charges a node, per UTC day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.store import Database, NodeUsage, UsageLedger
from provisioning.store.usage import split_by_day

pytest_plugins = ["tests.fakes.db_fixtures"]

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TEN = timedelta(minutes=10)


def node(name: str = "ip-1", *, idle: bool = False, price: float | None = 3.6, ws: str | None = "team-a",
         created: datetime | None = None) -> NodeUsage:
    return NodeUsage(node=name, nodegroup=f"kf-{ws or 'hand'}-gpu", workspace=ws, instance_type="g5.xlarge",
                     idle=idle, hourly_usd=price, created_at=created)


def test_first_sight_counts_one_interval_then_each_gap(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node()])
    ledger.record(T0 + TEN, [node(idle=True)])
    ledger.record(T0 + 2 * TEN, [node()])
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert row.seconds == pytest.approx(3 * 600)
    assert row.idle_seconds == pytest.approx(600)
    assert row.usd == pytest.approx(3.6 * 0.5)
    assert row.idle_usd == pytest.approx(3.6 / 6)
    assert (row.workspace, row.nodegroup, row.instance_type) == ("team-a", "kf-team-a-gpu", "g5.xlarge")


def test_first_sight_never_before_the_node_joined(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node(created=T0 - timedelta(minutes=4))])
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert row.seconds == pytest.approx(240)


def test_a_gap_longer_than_two_intervals_is_capped(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node()])
    ledger.record(T0 + timedelta(hours=5), [node()])  # the bot was down: 5 h nobody saw
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert row.seconds == pytest.approx(600 + 1200)


def test_same_instant_twice_and_clock_going_back_add_nothing(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node()])
    ledger.record(T0 + TEN, [node()])
    ledger.record(T0 + TEN, [node()])
    ledger.record(T0 + timedelta(minutes=5), [node()])
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert row.seconds == pytest.approx(1200)


def test_an_interval_across_midnight_is_split(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    before = datetime(2026, 3, 2, 23, 56, tzinfo=UTC)
    ledger.record(before, [node(created=before)])  # joined now: nothing to charge yet
    ledger.record(before + TEN, [node(idle=True)])
    rows = {r.day: r for r in ledger.days(date(2026, 3, 2), date(2026, 3, 4))}
    assert rows[date(2026, 3, 2)].seconds == pytest.approx(240)
    assert rows[date(2026, 3, 3)].seconds == pytest.approx(360)
    assert rows[date(2026, 3, 3)].idle_seconds == pytest.approx(360)
    assert rows[date(2026, 3, 2)].idle_usd == pytest.approx(3.6 * 240 / 3600)


def test_unknown_price_counts_hours_not_dollars_and_unattributed_stays_none(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node("a", price=None, ws=None), node("b", ws="team-a")])
    rows = {r.nodegroup: r for r in ledger.days(date(2026, 3, 2), date(2026, 3, 3))}
    hand = rows["kf-hand-gpu"]
    assert (hand.workspace, hand.usd, hand.unpriced_seconds, hand.seconds) == (None, 0.0, 600.0, 600.0)
    assert rows["kf-team-a-gpu"].unpriced_seconds == 0.0


def test_nodes_of_one_nodegroup_are_summed_per_day(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    ledger.record(T0, [node("a"), node("b", idle=True), node("a")])  # "a" listed twice counts once
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert (row.seconds, row.idle_seconds) == (pytest.approx(1200), pytest.approx(600))


def test_hostile_prices_and_naive_times_are_refused(database: Database) -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            node(price=bad)
    with pytest.raises(ValueError):
        UsageLedger(database, TEN).record(datetime(2026, 3, 2, 10), [node()])
    with pytest.raises(ValueError):
        UsageLedger(database, timedelta(0))


def test_many_nodes_are_looked_up_in_chunks(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    nodes = [node(f"ip-{i}") for i in range(1200)]
    assert ledger.record(T0, nodes) == 1200
    ledger.record(T0 + TEN, nodes)
    [row] = ledger.days(date(2026, 3, 2), date(2026, 3, 3))
    assert row.seconds == pytest.approx(1200 * 1200)


def test_digest_slots_are_claimed_once_and_never_backwards(database: Database) -> None:
    ledger = UsageLedger(database, TEN)
    slot = datetime(2026, 3, 2, 9, tzinfo=UTC)
    assert ledger.latest_digest_slot() is None
    assert ledger.claim_digest(slot, "C1", T0)
    assert not ledger.claim_digest(slot, "C1", T0)
    assert not ledger.claim_digest(slot - timedelta(days=1), "C1", T0)
    ledger.release_digest(slot)  # a failed post gives the slot back
    assert ledger.claim_digest(slot, "C1", T0)
    ledger.digest_posted(slot, "1.2", T0)
    ledger.release_digest(slot)  # a posted slot is never given back
    assert ledger.latest_digest_slot() == slot
    assert not ledger.claim_digest(slot, "C1", T0)


@given(
    cuts=st.lists(st.integers(min_value=1, max_value=3 * 24 * 3600), min_size=1, max_size=6),
)
def test_split_by_day_conserves_time_and_stays_in_days(cuts: list[int]) -> None:
    start = datetime(2026, 3, 2, 17, 3, tzinfo=UTC)
    end = start + timedelta(seconds=sum(cuts))
    pieces = list(split_by_day(start, end))
    assert sum(s for _, s in pieces) == pytest.approx((end - start).total_seconds())
    assert all(0 < s <= 86400 for _, s in pieces)
    assert [d for d, _ in pieces] == sorted({d for d, _ in pieces})


_EXAMPLES: list[int] = []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gaps=st.lists(st.integers(min_value=0, max_value=3600), min_size=1, max_size=8),
       idle=st.lists(st.booleans(), min_size=8, max_size=8))
def test_charged_time_is_bounded_by_wall_time_and_the_cap(database: Database, gaps: list[int],
                                                          idle: list[bool]) -> None:
    """Whatever the scan times, a node is never charged more than the wall time since one interval
    before its first scan, nor more than two intervals per gap; idle never exceeds the total."""
    _EXAMPLES.append(1)
    name = f"n-{len(_EXAMPLES)}"  # the database outlives an example: a fresh node per example

    def seen(at: datetime, is_idle: bool) -> None:
        ledger.record(at, [NodeUsage(name, name, "team-a", "g5.xlarge", is_idle, 1.0)])

    start = now = T0
    ledger = UsageLedger(database, TEN)
    expected = 600.0
    seen(now, idle[0])
    for i, gap in enumerate(gaps):
        now += timedelta(seconds=gap)
        seen(now, idle[i % 8])
        expected += min(gap, 1200)
    rows = [r for r in ledger.days(start.date(), now.date() + timedelta(days=1)) if r.nodegroup == name]
    total = sum(r.seconds for r in rows)
    assert total == pytest.approx(expected)
    assert total <= (now - start).total_seconds() + 600 + 1e-6
    assert sum(r.idle_seconds for r in rows) <= total + 1e-6
