"""The engine takes approved work without waiting for its poll, runs independent requests at once
(``EngineSettings.workers``) and never two requests about one subject at once.

Workers here poll once a minute, so a request applied while the test waits (at most 30 s) was
taken through a wake-up: the in-process signal, or a PostgreSQL notification from another
``Database`` (another replica) or another process. No assertion is about how fast.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import errors, kinds, services
from handlers.model import SYSTEM, EventType, RequestState
from provisioning.store import Database, Outbox, requests
from provisioning.store.wakeup import PgWakeups, WorkSignal
from tests.harness import ADMIN, ALICE, Stack, build_stack

pytest_plugins = ["tests.fakes.db_fixtures"]

SLOW_POLL = 3600.0
WAIT = 60.0  # far under SLOW_POLL (a request applied within it was woken, not polled), and far over
# what a loaded CI machine needs to apply one


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("the condition did not hold in time")


def slow_polling(stack: Stack, workers: int, poll: float = SLOW_POLL) -> None:
    engine = dataclasses.replace(stack.backend.settings.engine, poll_interval=poll, workers=workers)
    stack.backend.settings = dataclasses.replace(stack.backend.settings, engine=engine)


@contextmanager
def running(stack: Stack, workers: int = 2, *, listening: bool = True) -> Iterator[threading.Thread]:
    """The stack's workers started and idle (and, on PostgreSQL, its listener connected)."""
    stop = threading.Event()
    supervisor = stack.backend.start_worker(stack.notifier, stop)
    try:
        wakeups = stack.backend.wakeups
        if wakeups is not None and listening:
            wait_for(wakeups.listening.is_set)
        wait_for(lambda: stack.backend.db.work_signal.waiting == workers)
        yield supervisor
    finally:
        stop.set()
        supervisor.join(timeout=30)
    assert not supervisor.is_alive()


def state(stack: Stack, request_id: str) -> RequestState:
    return stack.request(request_id).state


def submit(stack: Stack, name: str, owner: Any = ALICE) -> str:
    create = kinds.WorkspaceCreate(name, owner.email)
    return services.submit(stack.core, owner, create, idempotency_key=None).request.id


def test_an_approval_wakes_an_idle_worker_of_the_same_process(db_url: str) -> None:
    stack = build_stack(db_url)
    slow_polling(stack, workers=2)
    with running(stack):
        request_id = submit(stack, "wake-local")
        assert state(stack, request_id) is RequestState.PENDING
        stack.approve(request_id)
        wait_for(lambda: state(stack, request_id) is RequestState.SUCCEEDED)


def test_an_approval_in_another_replica_wakes_this_one_through_postgres(postgres_url: str) -> None:
    worker = build_stack(postgres_url)
    slow_polling(worker, workers=2)
    # Another replica: its own Database (engine, pool, work signal); it runs no workers.
    deciding = build_stack(postgres_url, migrate=False, worker_id="replica-1")
    with running(worker):
        request_id = submit(deciding, "wake-remote")
        deciding.approve(request_id)
        wait_for(lambda: state(worker, request_id) is RequestState.SUCCEEDED)
        # ... and a retry is a wake-up too.
        failing = submit(deciding, "wake-retry")
        worker.world.fail("kubeflow.profile", errors.PermanentError("the profile is refused"))
        deciding.approve(failing)
        wait_for(lambda: state(worker, failing) is RequestState.FAILED)
        services.retry(deciding.core, ADMIN, failing)
        wait_for(lambda: state(worker, failing) is RequestState.SUCCEEDED)


def test_an_approval_wakes_a_worker_in_another_process(postgres_url: str, tmp_path: Path) -> None:
    stack = build_stack(postgres_url)
    ready = tmp_path / "ready"
    replica = subprocess.Popen(
        [sys.executable, "-m", "tests.wake_worker", postgres_url, str(ready)],
        stdin=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_for(ready.exists, timeout=60)
        request_id = submit(stack, "wake-process")
        stack.approve(request_id)
        wait_for(lambda: state(stack, request_id) is RequestState.SUCCEEDED)
        with stack.backend.uow() as uow:
            succeeded = [e for e in uow.audit.trail(request_id) if e.type is EventType.SUCCEEDED]
        assert len(succeeded) == 1
    finally:
        assert replica.stdin is not None
        replica.stdin.close()
        replica.wait(timeout=60)
    assert replica.returncode == 0


def _terminate(db: Database, pid: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.select(sa.func.pg_terminate_backend(pid)))


def test_a_lost_listener_reconnects_and_polling_covers_the_gap(postgres_url: str) -> None:
    worker = build_stack(postgres_url)
    slow_polling(worker, workers=2)
    deciding = build_stack(postgres_url, migrate=False, worker_id="replica-1")
    with running(worker):
        wakeups = worker.backend.wakeups
        assert wakeups is not None and wakeups.connections == 1
        pid = wakeups.backend_pid()
        assert pid is not None
        _terminate(worker.backend.db, pid)
        wait_for(lambda: wakeups.connections == 2 and wakeups.listening.is_set())
        assert wakeups.backend_pid() != pid
        request_id = submit(deciding, "after-reconnect")
        deciding.approve(request_id)
        wait_for(lambda: state(worker, request_id) is RequestState.SUCCEEDED)


def test_without_notifications_polling_still_takes_the_work(postgres_url: str) -> None:
    worker = build_stack(postgres_url)
    slow_polling(worker, workers=1, poll=0.2)
    # The listener cannot connect at all (nothing listens on that port): the workers poll.
    dead = sa.engine.make_url(postgres_url).set(port=1)
    worker.backend.db.wakeups = lambda: PgWakeups(  # type: ignore[method-assign]
        lambda: Database(dead.render_as_string(hide_password=False), audit_key=b"x")._listen_connection(),
        worker.backend.db.work_signal,
        max_backoff=0.5,
    )
    deciding = build_stack(postgres_url, migrate=False, worker_id="replica-1")
    with running(worker, workers=1, listening=False):
        wakeups = worker.backend.wakeups
        assert wakeups is not None
        request_id = submit(deciding, "polled")
        deciding.approve(request_id)
        wait_for(lambda: state(worker, request_id) is RequestState.SUCCEEDED)
        assert wakeups.connections == 0 and not wakeups.listening.is_set()


def test_independent_requests_run_at_once_up_to_the_workers(db_url: str) -> None:
    stack = build_stack(db_url)
    workers = 3
    slow_polling(stack, workers=workers)
    # Every worker must be inside a step at the same time to pass the barrier: with fewer
    # concurrent workers it breaks (BrokenBarrierError fails the steps) instead of hanging.
    barrier = threading.Barrier(workers, timeout=WAIT)
    def meet() -> None:
        barrier.wait()

    stack.world.before_ensure["kubeflow.profile"] = meet
    with running(stack, workers=workers):
        ids = [submit(stack, f"conc-{i}") for i in range(workers)]
        for request_id in ids:
            stack.approve(request_id)
        wait_for(lambda: all(state(stack, rid) is RequestState.SUCCEEDED for rid in ids))
    assert not barrier.broken


def test_a_request_waits_while_another_of_its_subject_runs(db_url: str) -> None:
    """A ``/kf retry`` makes a second request about a workspace claimable while a newer one is
    being applied: it waits for it, even with idle workers, then runs."""
    stack = build_stack(db_url)
    slow_polling(stack, workers=3)
    old = submit(stack, "shared-subject")
    stack.world.fail("kubeflow.profile", errors.PermanentError("refused"))
    stack.approve(old)
    stack.run()
    assert state(stack, old) is RequestState.FAILED
    inside, release = threading.Event(), threading.Event()

    def block() -> None:
        inside.set()
        if not release.wait(WAIT):
            raise AssertionError("the test never released the step")

    stack.world.before_ensure["kubeflow.profile"] = block
    with running(stack, workers=3):
        new = submit(stack, "shared-subject")
        stack.approve(new)
        assert inside.wait(WAIT)
        stack.world.before_ensure.pop("kubeflow.profile")
        services.retry(stack.core, ADMIN, old)
        assert state(stack, old) is RequestState.APPROVED
        # Two idle workers were woken by the retry and a third claimer looks now: none takes it.
        wait_for(lambda: stack.backend.db.work_signal.waiting == 2)
        assert stack.backend.engine(stack.notifier, worker_id="probe").run_once() is False
        with stack.backend.db.uow() as uow:
            assert uow.work.claim_of(old) == (None, None)
        release.set()
        wait_for(lambda: state(stack, new) is RequestState.SUCCEEDED)
        wait_for(lambda: state(stack, old) not in (RequestState.APPROVED, RequestState.APPLYING))
        # The engine's notices are delivered after their commits, by the outbox publisher.
        wait_for(lambda: Outbox(stack.backend.db).pending() == 0)
    # What people were told, in order: the old request moved on only after the new one succeeded
    # (its worker released it after that notice).
    told = stack.notifier.published
    retried = next(i for i, (rid, _, types) in enumerate(told) if rid == old and "request.retried" in types)
    moved_on = next(i for i, (rid, _, _) in enumerate(told) if rid == old and i > retried)
    succeeded = next(i for i, (rid, st, _) in enumerate(told) if rid == new and st == "succeeded")
    assert retried < succeeded < moved_on


# -- the claim rule under concurrency (store level, PostgreSQL) ---------------------------------


def _insert(db: Database, rows: list[tuple[str, str | None, str]]) -> None:
    now = db._now()
    with db.engine.begin() as conn:
        for i, (request_id, subject, state_value) in enumerate(rows):
            conn.execute(
                sa.insert(requests).values(
                    id=request_id, kind="bench", args={}, subject=subject, requester_id=SYSTEM.user_id,
                    requester_email="kfbot@example.com", state=state_value, version=1,
                    plan={"steps": []}, plan_digest="d", correlation_id=request_id,
                    created_at=now + timedelta(microseconds=i), updated_at=now,
                )
            )


@pytest.mark.postgres
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.lists(
        st.tuples(st.sampled_from(["ws:a", "ws:b", "ws:c", None]), st.sampled_from(["approved", "applying"])),
        min_size=1,
        max_size=24,
    ),
    workers=st.integers(min_value=2, max_value=6),
)
def test_concurrent_claims_apply_each_request_once_and_one_per_subject(
    postgres_url: str, layout: list[tuple[str | None, str]], workers: int
) -> None:
    db = Database(postgres_url, audit_key=b"k")
    try:
        if not _has_schema(db):
            db.migrate()
        with db.engine.begin() as conn:
            conn.execute(sa.delete(requests))
        rows = [(f"R{i:05d}", subject, state_value) for i, (subject, state_value) in enumerate(layout)]
        _insert(db, rows)
        applied: list[str] = []
        running_subjects: dict[str, str] = {}
        overlaps: list[tuple[str, str]] = []
        guard = threading.Lock()
        subject_of = {rid: subject for rid, subject, _ in rows}

        def work(n: int) -> None:
            me = f"w{n}"
            idle = 0
            while idle < 3:
                now = db._now()
                with db.uow() as uow:
                    claimed = uow.work.claim_request(me, now, now + timedelta(minutes=5))
                    uow.commit()
                if claimed is None:
                    idle += 1
                    time.sleep(0.02)
                    continue
                idle = 0
                subject = subject_of[claimed.id]
                with guard:
                    if subject is not None and subject in running_subjects:
                        overlaps.append((running_subjects[subject], claimed.id))
                    if subject is not None:
                        running_subjects[subject] = claimed.id
                time.sleep(0.002)  # "apply": another worker gets a chance to claim meanwhile
                with guard:
                    applied.append(claimed.id)
                    if subject is not None:
                        running_subjects.pop(subject, None)
                with db.uow() as uow:
                    uow.connection.execute(
                        sa.update(requests).where(requests.c.id == claimed.id).values(state="succeeded")
                    )
                    uow.work.release(claimed.id, me)
                    uow.commit()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert overlaps == []
        assert sorted(applied) == sorted(rid for rid, _, _ in rows)  # each exactly once
    finally:
        db.dispose()


def _has_schema(db: Database) -> bool:
    return db.current_revision() is not None


def test_the_started_request_of_a_subject_goes_first(database: Database) -> None:
    """Store level, both backends: of two work-state requests about one subject, the one that
    started goes first even when it is newer; an unrelated request is not held up."""
    _insert(database, [("RNEW", "ws:x", "applying"), ("ROLD", "ws:x", "approved"),
                       ("RFREE", "ws:y", "approved")])
    with database.engine.begin() as conn:  # the started one is the newest
        conn.execute(sa.update(requests).where(requests.c.id == "RNEW").values(
            created_at=database._now() + timedelta(seconds=5)))
    now = database._now()
    taken = []
    for worker in ("w1", "w2", "w3"):
        with database.uow() as uow:
            claimed = uow.work.claim_request(worker, now, now + timedelta(minutes=1))
            uow.commit()
        taken.append(None if claimed is None else claimed.id)
    assert sorted(t for t in taken if t) == ["RFREE", "RNEW"]


def test_a_wake_up_before_the_wait_is_kept_and_one_wakes_one_worker() -> None:
    signal = WorkSignal()
    # A notification while no worker waits (one is between an empty claim and its wait) is kept...
    signal.notify()
    signal.notify()
    assert signal.wait(0) is True
    # ... but only one: a busy worker looks again by itself, so more tokens would be empty claims.
    assert signal.wait(0) is False
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(signal.wait(WAIT))) for _ in range(3)]
    for t in waiters:
        t.start()
    wait_for(lambda: signal.waiting == 3)
    signal.notify()
    # A waiter leaves ``waiting`` before its thread notes it woke: wait for the note, not the
    # count (that raced on a loaded machine). The other two can only leave at their timeout.
    wait_for(lambda: woken)
    assert woken == [True] and signal.waiting == 2
    signal.notify_all()
    for t in waiters:
        t.join()
    assert woken == [True, True, True]
