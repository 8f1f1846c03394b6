"""provisioning.store against real SQLite files and a real PostgreSQL server.

Behaviour is checked on both backends; the concurrency claims (one approval wins, one worker per
request, each due timer once, advisory locks) are proven on PostgreSQL with real threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from handlers import errors
from handlers.model import Actor, Request, RequestState
from handlers.plan import Plan, Step, StepOutcome, StepStatus
from provisioning import store
from provisioning.store import Database, DbLock, LeaderElection, LeaseLost
from tests.fakes.db_fixtures import AUDIT_KEY

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = Actor("UADMIN1", "admin@example.com", is_admin=True)
ADMIN2 = Actor("UADMIN2", "admin2@example.com", is_admin=True)
LEASE = timedelta(seconds=60)


def make_request(request_id: str = "RAAAAAA", *, at: datetime = T0, requester: str = "UALICE",
                 state: RequestState = RequestState.PENDING) -> Request:
    plan = Plan.of([Step("kubeflow.profile", f"Profile/{request_id.lower()}", {"name": request_id.lower(),
                                                                                  "hard": {"cpu": "4"}}),
                    Step("aws.bucket", f"Bucket/{request_id.lower()}", {"bucket": request_id.lower()})],
                   warnings=["costs money"], cost={"monthly_usd": 12.5})
    return Request(id=request_id, kind="workspace", args={"name": request_id.lower(), "gpu": 0},
                   requester_id=requester, requester_email=f"{requester.lower()}@example.com", plan=plan,
                   created_at=at, updated_at=at, state=state, correlation_id=f"c-{request_id}")


def add(db: Database, *requests: Request) -> None:
    with db.uow() as uow:
        for request in requests:
            uow.requests.add(request)
        uow.commit()


def approved(db: Database, *ids: str, at: datetime = T0) -> None:
    """Store requests already approved (the worker's input)."""
    for n, request_id in enumerate(ids):
        request = make_request(request_id, at=at + timedelta(seconds=n))
        request.approve(ADMIN, at)
        add(db, request)


def count(db: Database, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with db.reader() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def run_threads(n: int, target: Callable[[int], object], timeout: float = 120) -> list[object]:
    """Run ``target(0..n-1)`` on daemon threads; a thread still running after ``timeout`` fails the
    test instead of hanging the session (a pool's exit would wait for it forever)."""
    results: list[object] = [None] * n
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    if failures:
        raise failures[0]
    return results


# -- requests ---------------------------------------------------------------------------------------


def test_request_round_trips_every_field(database: Database) -> None:
    request = make_request()
    request.approve(ADMIN, T0 + timedelta(minutes=5))
    request.reason = "policy: owner shares own workspace"
    add(database, request)
    with database.uow() as uow:
        loaded = uow.requests.get(request.id)
    assert loaded == request
    assert loaded.state is RequestState.APPROVED
    assert loaded.plan.digest() == request.plan_digest
    assert loaded.created_at.tzinfo is not None and loaded.created_at.utcoffset() == timedelta(0)


def test_timestamps_are_stored_as_utc_and_naive_ones_refused(database: Database) -> None:
    tokyo = timezone(timedelta(hours=9))
    add(database, make_request(at=T0.astimezone(tokyo)))
    with database.uow() as uow:
        loaded = uow.requests.get("RAAAAAA")
        assert loaded.created_at == T0 and loaded.created_at.tzinfo == UTC
        with pytest.raises(sa.exc.StatementError, match="naive"):
            uow.requests.add(make_request("RBBBBBB", at=datetime(2026, 1, 1)))


def test_add_with_the_same_key_twice_stores_one_request(database: Database) -> None:
    with database.uow() as uow:
        first = uow.requests.add(make_request("RAAAAAA"), "trigger-1")
        uow.commit()
    with database.uow() as uow:
        # Something written earlier in the same transaction survives the duplicate (SAVEPOINT).
        uow.timers.schedule("request.nudge", "RAAAAAA", T0)
        second = uow.requests.add(make_request("RBBBBBB"), "trigger-1")
        uow.commit()
    assert first.id == second.id == "RAAAAAA"
    assert count(database, store.requests) == 1
    assert count(database, store.timers) == 1
    with database.uow() as uow:
        found = uow.requests.find_by_key("trigger-1")
        assert found is not None and found.id == "RAAAAAA"
        assert uow.requests.find_by_key("trigger-2") is None


@pytest.mark.postgres
def test_a_duplicate_delivery_racing_the_first_stores_one_request_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        barrier = threading.Barrier(3, timeout=60)

        def deliver(n: int) -> str:
            with db.uow() as uow:
                uow.timers.schedule("request.nudge", f"R{n}", T0)  # earlier work in the same transaction
                barrier.wait()
                stored = uow.requests.add(make_request(f"RDUP{n}"), "trigger-race")
                time.sleep(0.05)  # the others' inserts now wait on this key
                uow.commit()
                return stored.id

        ids = set(map(str, run_threads(3, deliver)))
        assert len(ids) == 1
        assert count(db, store.requests) == 1 and count(db, store.idempotency_keys) == 1
        assert count(db, store.timers) == 3  # the losers' transactions survived the duplicate
    finally:
        db.dispose()


def test_add_with_an_existing_id_and_new_key_raises(database: Database) -> None:
    add(database, make_request("RAAAAAA"))
    with database.uow() as uow, pytest.raises(sa.exc.IntegrityError):
        uow.requests.add(make_request("RAAAAAA"), "fresh-key")


def test_save_with_a_stale_version_raises_and_writes_nothing(database: Database) -> None:
    add(database, make_request())
    with database.uow() as uow:
        request = uow.requests.get("RAAAAAA")
    before = request.version
    with database.uow() as uow:  # someone else decides first
        other = uow.requests.get("RAAAAAA")
        other.reject(ADMIN2, "no budget", T0)
        uow.requests.save(other, before)
        uow.commit()
    request.approve(ADMIN, T0)
    with database.uow() as uow, pytest.raises(errors.StaleVersion):
        uow.requests.save(request, before)
    with database.uow() as uow:
        stored = uow.requests.get("RAAAAAA")
    assert stored.state is RequestState.REJECTED and stored.decided_by == ADMIN2.user_id


def test_get_and_save_of_a_missing_request_raise_not_found(database: Database) -> None:
    with database.uow() as uow:
        with pytest.raises(errors.NotFound):
            uow.requests.get("RNOPE00")
        with pytest.raises(errors.NotFound):
            uow.requests.save(make_request("RNOPE00"), 0)


def test_list_is_newest_first_and_filters(database: Database) -> None:
    add(database,
        make_request("R1", at=T0, requester="UALICE"),
        make_request("R2", at=T0 + timedelta(minutes=1), requester="UBOB"),
        make_request("R3", at=T0 + timedelta(minutes=2), requester="UALICE"))
    with database.uow() as uow:
        r2 = uow.requests.get("R2")
        r2.approve(ADMIN, T0)
        uow.requests.save(r2, 0)
        uow.commit()
        assert [r.id for r in uow.requests.list()] == ["R3", "R2", "R1"]
        assert [r.id for r in uow.requests.list(requester_id="UALICE")] == ["R3", "R1"]
        assert [r.id for r in uow.requests.list(states=[RequestState.APPROVED])] == ["R2"]
        assert [r.id for r in uow.requests.list(kind="workspace", limit=1)] == ["R3"]
        assert uow.requests.list(kind="token") == []


def test_card_location_is_stored_without_a_version_bump(database: Database) -> None:
    add(database, make_request())
    with database.uow() as uow:
        assert uow.requests.card("RAAAAAA") is None
        uow.requests.set_card("RAAAAAA", "CADMINS", "1700000000.000100")
        uow.commit()
    with database.uow() as uow:
        assert uow.requests.card("RAAAAAA") == ("CADMINS", "1700000000.000100")
        assert uow.requests.get("RAAAAAA").version == 0


def test_leaving_without_commit_rolls_back(database: Database) -> None:
    with database.uow() as uow:
        uow.requests.add(make_request())
    assert count(database, store.requests) == 0


def test_decision_key_is_claimed_once(database: Database) -> None:
    add(database, make_request())
    with database.uow() as uow:
        assert uow.decisions.claim("ts1:approve:UADMIN1:0", "RAAAAAA") is True
        uow.commit()
    with database.uow() as uow:
        uow.requests.set_card("RAAAAAA", "C1", "1.2")
        assert uow.decisions.claim("ts1:approve:UADMIN1:0", "RAAAAAA") is False
        uow.commit()  # the transaction survived the duplicate
    with database.uow() as uow:
        assert uow.requests.card("RAAAAAA") == ("C1", "1.2")


@pytest.mark.postgres
def test_two_admins_approving_at_once_exactly_one_wins_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        for round_ in range(5):
            request_id = f"RRACE{round_}"
            add(db, make_request(request_id))
            barrier = threading.Barrier(2, timeout=60)

            def approve(n: int, request_id: str = request_id, barrier: threading.Barrier = barrier) -> str:
                with db.uow() as uow:
                    request = uow.requests.get(request_id)
                    before = request.version
                    request.approve([ADMIN, ADMIN2][n], T0)
                    barrier.wait()  # both have read the same version before either writes
                    try:
                        uow.requests.save(request, before)
                    except errors.StaleVersion:
                        return "stale"
                    uow.commit()
                    return "ok"

            assert sorted(map(str, run_threads(2, approve))) == ["ok", "stale"]
            with db.uow() as uow:
                stored = uow.requests.get(request_id)
            assert stored.version == 1 and stored.state is RequestState.APPROVED
    finally:
        db.dispose()


# -- leases -----------------------------------------------------------------------------------------


def test_a_claimed_request_is_not_claimed_by_another_worker(database: Database) -> None:
    approved(database, "RAAAAAA")
    with database.uow() as uow:
        claimed = uow.work.claim_request("w1", T0, T0 + LEASE)
        uow.commit()
    assert claimed is not None and claimed.id == "RAAAAAA"
    with database.uow() as uow:
        assert uow.work.claim_request("w2", T0 + timedelta(seconds=30), T0 + LEASE) is None
        # ...but its owner may claim it again (a restarted loop of the same worker).
        again = uow.work.claim_request("w1", T0 + timedelta(seconds=30), T0 + 2 * LEASE)
        assert again is not None and again.id == "RAAAAAA"


def test_claim_takes_the_oldest_request_in_work_states_only(database: Database) -> None:
    add(database, make_request("RPENDING", at=T0 - timedelta(hours=1)))
    approved(database, "RNEWER", at=T0 + timedelta(minutes=1))
    approved(database, "ROLDER", at=T0)
    with database.uow() as uow:
        first = uow.work.claim_request("w1", T0, T0 + LEASE)
        second = uow.work.claim_request("w1b", T0, T0 + LEASE)
        third = uow.work.claim_request("w1c", T0, T0 + LEASE)
    assert (first and first.id, second and second.id, third) == ("ROLDER", "RNEWER", None)


def test_an_expired_lease_is_taken_over(database: Database) -> None:
    approved(database, "RAAAAAA")
    with database.uow() as uow:
        assert uow.work.claim_request("w1", T0, T0 + LEASE) is not None
        uow.commit()
    later = T0 + LEASE + timedelta(seconds=1)
    with database.uow() as uow:
        taken = uow.work.claim_request("w2", later, later + LEASE)
        uow.commit()
    assert taken is not None and taken.id == "RAAAAAA"
    with database.reader() as conn:
        row = conn.execute(sa.select(store.requests.c.claimed_by, store.requests.c.attempts)).one()
    assert tuple(row) == ("w2", 2)
    with database.uow() as uow:
        assert uow.work.renew("RAAAAAA", "w1", later, later + LEASE) is False
        assert uow.work.renew("RAAAAAA", "w2", later, later + 2 * LEASE) is True


def test_release_frees_the_request_only_for_its_owner(database: Database) -> None:
    approved(database, "RAAAAAA")
    with database.uow() as uow:
        uow.work.claim_request("w1", T0, T0 + LEASE)
        uow.work.release("RAAAAAA", "w2")  # not ours: no effect
        assert uow.work.claim_request("w2", T0, T0 + LEASE) is None
        uow.work.release("RAAAAAA", "w1")
        claimed = uow.work.claim_request("w2", T0, T0 + LEASE)
    assert claimed is not None


def test_a_worker_whose_lease_expired_writes_nothing(database: Database) -> None:
    approved(database, "RAAAAAA")
    with database.uow() as uow:
        request = uow.work.claim_request("w1", T0, T0 + LEASE)
        uow.commit()
    assert request is not None
    before = request.version
    request.begin_apply(request.plan, T0)
    late = T0 + LEASE + timedelta(seconds=5)
    # Expired but not yet taken over, then taken over: both are LeaseLost.
    for takeover in (False, True):
        if takeover:
            with database.uow() as uow:
                assert uow.work.claim_request("w2", late, late + LEASE) is not None
                uow.commit()
        with database.uow() as uow:
            with pytest.raises(LeaseLost):
                uow.work.save_claimed(request, before, "w1", late)
            with pytest.raises(LeaseLost):
                uow.work.record_step("RAAAAAA", "w1", late, 0, "Profile/raaaaaa", "kubeflow.profile",
                                     StepStatus.DONE, StepOutcome(created=True))
            uow.commit()
    assert issubclass(LeaseLost, errors.StaleVersion)
    assert count(database, store.step_outcomes) == 0
    with database.uow() as uow:
        assert uow.requests.get("RAAAAAA").state is RequestState.APPROVED


def test_save_claimed_and_steps_by_the_lease_holder(database: Database) -> None:
    approved(database, "RAAAAAA")
    with database.uow() as uow:
        request = uow.work.claim_request("w1", T0, T0 + LEASE)
        assert request is not None
        before = request.version
        assert request.begin_apply(request.plan, T0)
        uow.work.save_claimed(request, before, "w1", T0)
        uow.work.record_step("RAAAAAA", "w1", T0, 0, "Profile/raaaaaa", "kubeflow.profile",
                             StepStatus.RUNNING)
        uow.commit()
    t1 = T0 + timedelta(seconds=10)
    with database.uow() as uow:
        uow.work.record_step("RAAAAAA", "w1", t1, 0, "Profile/raaaaaa", "kubeflow.profile", StepStatus.DONE,
                             StepOutcome(created=True, details={"uid": "u-1"}), attempts=2,
                             first_failure_at=T0 + timedelta(seconds=1))
        uow.work.record_step("RAAAAAA", "w1", t1, 1, "Bucket/raaaaaa", "aws.bucket", StepStatus.FAILED,
                             error="AccessDenied", attempts=1, first_failure_at=t1)
        uow.commit()
    with database.uow() as uow:
        steps = uow.work.steps("RAAAAAA")
        assert uow.requests.get("RAAAAAA").state is RequestState.APPLYING
    assert [(s.idx, s.status, s.attempts) for s in steps] == [
        (0, StepStatus.DONE, 2), (1, StepStatus.FAILED, 1)]
    assert steps[0].outcome == StepOutcome(created=True, details={"uid": "u-1"})
    assert steps[0].started_at == T0  # kept from the first write
    assert steps[0].first_failure_at == T0 + timedelta(seconds=1)
    assert steps[1].outcome is None and steps[1].error == "AccessDenied"


@pytest.mark.postgres
def test_concurrent_workers_claim_each_request_once_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        ids = [f"RQ{n:04d}" for n in range(24)]
        approved(db, *ids)
        start = threading.Barrier(4, timeout=60)

        def worker(n: int) -> list[str]:
            start.wait()
            mine: list[str] = []
            for _ in range(len(ids) + 1):  # bounded: a bug must fail the test, not hang it
                with db.uow() as uow:
                    request = uow.work.claim_request(f"w{n}", T0, T0 + LEASE)
                    if request is None:
                        return mine
                    time.sleep(0.005)  # hold the row lock a moment: others must skip, not wait
                    uow.commit()
                mine.append(request.id)
                with db.uow() as uow:  # "apply" it, so it leaves the work states
                    before = request.version
                    request.begin_apply(request.plan, T0)
                    request.succeed(T0)
                    uow.work.save_claimed(request, before, f"w{n}", T0)
                    uow.work.release(request.id, f"w{n}")
                    uow.commit()
            raise AssertionError("worker never ran out of work")

        claims = [rid for got in run_threads(4, worker) for rid in got]
        assert sorted(claims) == ids  # every request once, none twice
    finally:
        db.dispose()


# -- timers -----------------------------------------------------------------------------------------


def test_scheduling_twice_keeps_one_pending_timer(database: Database) -> None:
    with database.uow() as uow:
        uow.timers.schedule("request.expire", "R1", T0, {"a": 1})
        uow.timers.schedule("request.expire", "R1", T0 + timedelta(hours=1), {"a": 2})
        uow.timers.schedule("request.nudge", "R1", T0)
        uow.commit()
    assert count(database, store.timers) == 2
    with database.reader() as conn:
        due_at, payload = conn.execute(
            sa.select(store.timers.c.due_at, store.timers.c.payload)
            .where(store.timers.c.kind == "request.expire")
        ).one()
    assert (due_at, payload) == (T0 + timedelta(hours=1), {"a": 2})
    with database.uow() as uow:
        uow.timers.cancel("request.expire", "R1")
        uow.timers.cancel("request.expire", "nothing")
        uow.commit()
    assert count(database, store.timers) == 1


def test_due_timers_are_claimed_finished_and_failed(database: Database) -> None:
    with database.uow() as uow:
        uow.timers.schedule("grant.expire", "ws:bob", T0, {"workspace": "ws", "user": "bob"})
        uow.timers.schedule("request.expire", "R1", T0 - timedelta(minutes=1))
        uow.timers.schedule("request.expire", "R2", T0 + timedelta(hours=1))  # not due
        uow.commit()
    with database.uow() as uow:
        due = uow.work.claim_timers("s1", T0, T0 + LEASE, limit=10)
        assert uow.work.claim_timers("s2", T0, T0 + LEASE, limit=10) == []
        uow.commit()
    assert [(t.kind, t.ref, t.attempts) for t in due] == [
        ("request.expire", "R1", 1), ("grant.expire", "ws:bob", 1)]
    assert due[1].payload == {"workspace": "ws", "user": "bob"}
    expire, grant = due
    with database.uow() as uow:
        assert uow.work.finish_timer(expire.id, "s2", T0) is False  # not the holder
        assert uow.work.finish_timer(expire.id, "s1", T0) is True
        assert uow.work.fail_timer(grant.id, "s1", "ApiError", T0 + timedelta(minutes=5)) is True
        uow.commit()
    with database.uow() as uow:
        assert uow.work.claim_timers("s2", T0 + timedelta(minutes=1), T0 + LEASE, 10) == []
        retried = uow.work.claim_timers("s2", T0 + timedelta(minutes=5), T0 + 2 * LEASE, 10)
        uow.commit()
    assert [(t.ref, t.attempts, t.last_error) for t in retried] == [("ws:bob", 2, "ApiError")]
    # A finished timer leaves the pending index: the same (kind, ref) can be scheduled again.
    with database.uow() as uow:
        uow.timers.schedule("request.expire", "R1", T0 + timedelta(days=1))
        uow.commit()
    assert count(database, store.timers, store.timers.c.ref == "R1") == 2


def test_an_expired_timer_lease_is_taken_over(database: Database) -> None:
    with database.uow() as uow:
        uow.timers.schedule("request.nudge", "R1", T0)
        (timer,) = uow.work.claim_timers("s1", T0, T0 + LEASE, 10)
        later = T0 + LEASE + timedelta(seconds=1)
        assert [t.ref for t in uow.work.claim_timers("s2", later, later + LEASE, 10)] == ["R1"]
        assert uow.work.finish_timer(timer.id, "s1", later) is False
        assert uow.work.finish_timer(timer.id, "s2", later) is True


def test_a_handler_that_reschedules_its_own_timer_keeps_it(database: Database) -> None:
    with database.uow() as uow:
        uow.timers.schedule("request.nudge", "R1", T0)
        uow.commit()
    with database.uow() as uow:
        (timer,) = uow.work.claim_timers("s1", T0, T0 + LEASE, 10)
        uow.commit()
    with database.uow() as uow:  # the nudge handler reminds and schedules the next nudge
        uow.timers.schedule("request.nudge", "R1", T0 + timedelta(hours=4))
        uow.commit()
    with database.uow() as uow:
        assert uow.work.finish_timer(timer.id, "s1", T0) is False
        uow.commit()
        (again,) = uow.work.claim_timers("s1", T0 + timedelta(hours=4), T0 + timedelta(hours=5), 10)
    assert again.id == timer.id


@pytest.mark.postgres
def test_two_sweepers_handle_each_due_timer_once_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        with db.uow() as uow:
            for n in range(40):
                uow.timers.schedule("request.expire", f"R{n}", T0 - timedelta(seconds=n))
            uow.commit()
        handled: Counter[str] = Counter()
        lock = threading.Lock()
        start = threading.Barrier(2, timeout=60)

        def sweeper(n: int) -> None:
            start.wait()
            for _ in range(41):  # bounded: a bug must fail the test, not hang it
                with db.uow() as uow:
                    due = uow.work.claim_timers(f"s{n}", T0, T0 + LEASE, limit=3)
                    time.sleep(0.005)
                    uow.commit()
                if not due:
                    return
                for timer in due:
                    with lock:
                        handled[timer.ref] += 1
                    with db.uow() as uow:
                        assert uow.work.finish_timer(timer.id, f"s{n}", T0)
                        uow.commit()
            raise AssertionError("sweeper never ran out of timers")

        run_threads(2, sweeper)
        assert sorted(handled) == sorted(f"R{n}" for n in range(40))
        assert set(handled.values()) == {1}
        assert count(db, store.timers, store.timers.c.done_at.is_(None)) == 0
    finally:
        db.dispose()


# -- registry ---------------------------------------------------------------------------------------


def test_registry_of_workspaces_grants_and_tokens(database: Database) -> None:
    created = {"Profile/team-a": {"action": "kubeflow.profile", "params": {"name": "team-a"}}}
    with database.uow() as uow:
        reg = uow.registry
        reg.put_workspace("team-a", "team-a", "alice@example.com", "R1", created, T0)
        reg.put_workspace("team-b", "team-b", "bob@example.com", "R2", {}, T0)
        reg.put_grant("team-a", "bob@example.com", "edit", "R3", T0 + timedelta(days=3), T0)
        reg.put_grant("team-a", "bob@example.com", "view", "R4", None, T0)  # replaces
        reg.put_grant("team-b", "carol@example.com", "view", "R5", None, T0)
        reg.put_token("R6", "UALICE", "team-a", "team-a", "kfbot-token-r6", "edit", ["kubernetes"],
                      T0 + timedelta(hours=1), T0)
        uow.commit()
    with database.uow() as uow:
        reg = uow.registry
        workspace = reg.get_workspace("team-a")
        assert workspace is not None
        assert (workspace.owner, workspace.created, workspace.deleted_at) == (
            "alice@example.com", created, None)
        assert [w.name for w in reg.list_workspaces()] == ["team-a", "team-b"]
        assert [w.name for w in reg.list_workspaces(owner="bob@example.com")] == ["team-b"]
        assert [(g.user, g.role, g.expires_at) for g in reg.grants("team-a")] == [
            ("bob@example.com", "view", None)]
        assert [g.workspace for g in reg.grants_of("carol@example.com")] == ["team-b"]
        token = reg.token("R6")
        assert token is not None and token.audiences == ("kubernetes",)
        assert token.expires_at == T0 + timedelta(hours=1)
        assert [t.token_id for t in reg.tokens_of("UALICE")] == ["R6"]

        assert reg.mark_workspace_deleted("team-b", T0) is True
        assert reg.mark_workspace_deleted("team-b", T0) is False
        assert reg.delete_grant("team-a", "bob@example.com") is True
        assert reg.delete_grant("team-a", "bob@example.com") is False
        assert reg.revoke_token("R6", T0) is True
        uow.commit()
    with database.uow() as uow:
        reg = uow.registry
        assert reg.get_workspace("team-b") is None
        deleted = reg.get_workspace("team-b", include_deleted=True)
        assert deleted is not None and deleted.deleted_at == T0
        assert [w.name for w in reg.list_workspaces()] == ["team-a"]
        assert reg.grants("team-a") == []
        assert reg.tokens_of("UALICE") == []
        revoked = reg.token("R6")
        assert revoked is not None and revoked.revoked_at == T0


# -- SQLite specifics -------------------------------------------------------------------------------


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    db = Database(sqlite_url, audit_key=AUDIT_KEY)
    try:
        with db.reader() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        db.dispose()


def test_a_read_nested_in_a_unit_of_work_does_not_wait_for_itself(database: Database) -> None:
    add(database, make_request())
    started = time.monotonic()
    with database.uow() as outer:
        outer.timers.schedule("request.nudge", "RAAAAAA", T0)  # holds the write lock on SQLite
        with database.uow() as inner:  # e.g. Facts read while a decision is being made
            assert inner.requests.get("RAAAAAA").id == "RAAAAAA"
        outer.commit()
    # Waiting for itself would sit out SQLite's 30 s busy timeout (then fail "database is
    # locked"); the bound is that, not a claim on speed, which a loaded CI machine can miss.
    assert time.monotonic() - started < 25
    assert count(database, store.timers) == 1


def test_sqlite_writers_in_threads_queue_instead_of_failing(sqlite_url: str) -> None:
    db = Database(sqlite_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        add(db, make_request())

        def approve(n: int) -> str:
            with db.uow() as uow:
                request = uow.requests.get("RAAAAAA")
                if request.state is not RequestState.PENDING:
                    return "already"
                before = request.version
                request.approve([ADMIN, ADMIN2][n % 2], T0)
                time.sleep(0.01)
                uow.requests.save(request, before)
                uow.commit()
                return "ok"

        assert sorted(map(str, run_threads(4, approve))) == ["already", "already", "already", "ok"]
    finally:
        db.dispose()


# -- locks and leadership ---------------------------------------------------------------------------


def _overlaps(db: Database) -> int:
    """Run two threads through ``DbLock.hold`` on one key; return the most inside at once."""
    lock = DbLock(db, timeout=10)
    inside, peak = 0, 0
    guard = threading.Lock()

    def work(_: int) -> None:
        nonlocal inside, peak
        for _round in range(3):
            with lock.hold("iam:arn:aws:iam::1:policy/p"):
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.01)
                with guard:
                    inside -= 1

    run_threads(2, work)
    return peak


def test_db_lock_serialises_holders_of_one_key(database: Database) -> None:
    assert _overlaps(database) == 1


def test_db_lock_times_out_as_a_temporary_error_on_sqlite(sqlite_url: str) -> None:
    db = Database(sqlite_url, audit_key=AUDIT_KEY)
    with DbLock(db).hold("k"):
        waiter: list[BaseException] = []

        def wait() -> None:
            try:
                with DbLock(db, timeout=0.1).hold("k"):
                    pass
            except errors.TemporaryError as exc:
                waiter.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(60)  # bounds a hang; its 0.1 s timeout is what is proved
    assert len(waiter) == 1


@pytest.mark.postgres
def test_db_lock_times_out_as_a_temporary_error_on_postgres(postgres_url: str) -> None:
    db = Database(postgres_url, audit_key=AUDIT_KEY)
    try:
        holding, done = threading.Event(), threading.Event()

        def holder() -> None:
            with DbLock(db).hold("k"):
                holding.set()
                done.wait(10)

        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        assert holding.wait(10)
        with pytest.raises(errors.TemporaryError), DbLock(db, timeout=0.2).hold("k"):
            pass
        with DbLock(db, timeout=0.2).hold("other-key"):
            pass
        done.set()
        thread.join(10)
        with DbLock(db, timeout=1).hold("k"):  # released by the holder
            pass
    finally:
        db.dispose()


@pytest.mark.postgres
def test_one_leader_at_a_time_on_postgres(postgres_url: str) -> None:
    first_db = Database(postgres_url, audit_key=AUDIT_KEY)
    second_db = Database(postgres_url, audit_key=AUDIT_KEY)
    first, second = LeaderElection(first_db, "sweeper"), LeaderElection(second_db, "sweeper")
    try:
        assert first.try_acquire() is True
        assert first.try_acquire() is True  # idempotent for the holder
        assert second.try_acquire() is False
        assert first.is_leader and not second.is_leader and first.still_leader()
        first.release()
        assert not first.is_leader
        assert second.try_acquire() is True
        # The leader's session dies (a crashed pod, a failover): the lock goes with it.
        held = second._conn  # the dedicated connection that holds the lock
        assert held is not None
        pid = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        held.commit()
        with first_db.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
        assert second.still_leader() is False and not second.is_leader
        assert first.try_acquire() is True
        first.release()
    finally:
        first.release()
        second.release()
        first_db.dispose()
        second_db.dispose()


def test_sqlite_process_is_always_the_leader(sqlite_url: str) -> None:
    election = LeaderElection(Database(sqlite_url, audit_key=AUDIT_KEY), "sweeper")
    assert election.try_acquire() and election.still_leader() and election.is_leader
    election.release()
    assert not election.is_leader


def test_the_cores_unit_of_work_has_only_what_the_port_declares(database: Database) -> None:
    with database.core_uow() as uow:
        assert not hasattr(uow, "work") and not hasattr(uow, "registry")
        assert uow.requests.list() == []
    with database.uow() as uow:  # provisioning's own view of the same transaction
        assert uow.work.steps("R1") == [] and uow.registry.list_workspaces() == []
