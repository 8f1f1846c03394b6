"""The request spine end to end: services + engine + store + audit over SQLite and PostgreSQL,
with a scripted world at the Action port."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from bot import render
from handlers import errors, kinds, services
from handlers.model import Actor, EventType, RequestState
from handlers.plan import StepStatus
from handlers.settings import CoreSettings, WorkspaceDefaults
from provisioning.store import LeaseLost
from tests.harness import ADMIN, ADMIN2, ALICE, CORE, ScriptedWorld, Stack, build_stack, temporary

WORKSPACE = kinds.WorkspaceCreate("team-a", ALICE.email)


@pytest.fixture
def stack(db_url: str) -> Stack:
    return build_stack(db_url)


def submit(stack: Stack, kind: kinds.RequestKind = WORKSPACE, key: str | None = "trigger-1") -> str:
    return services.submit(stack.core, ALICE, kind, idempotency_key=key).request.id


def step_statuses(stack: Stack, request_id: str) -> list[StepStatus]:
    with stack.backend.db.uow() as uow:
        return [r.status for r in uow.work.steps(request_id)]


def test_request_is_planned_approved_applied_and_audited(stack: Stack) -> None:
    rid = submit(stack)
    assert stack.request(rid).state is RequestState.PENDING
    assert stack.run() == 0, "nothing is applied before approval"
    stack.approve(rid)
    assert stack.run() == 1
    request = stack.request(rid)
    assert request.state is RequestState.SUCCEEDED
    assert step_statuses(stack, rid) == [StepStatus.DONE] * 4
    assert sorted(action for action, _ in stack.world.objects) == [
        "aws.bucket",
        "dex.user",
        "kubeflow.notebook_activity",
        "kubeflow.profile",
    ]
    view = stack.backend.workspace_view("team-a")
    assert view is not None and view.record.owner == ALICE.email
    types = stack.notifier.types_for(rid)
    for expected in (
        EventType.CREATED,
        EventType.APPROVED,
        EventType.APPLY_STARTED,
        EventType.STEP_SUCCEEDED,
        EventType.SUCCEEDED,
    ):
        assert expected.value in types
    audited = [json.loads(line) for line in stack.backend.audit_export("jsonl")]
    told = [e for e in audited if e["type"] == EventType.NOTIFIED.value and e["request_id"] == rid]
    assert told, "every notification that went out is in the audit log"
    assert any("request.created" in e["data"]["about"] for e in told)
    result = stack.backend.audit_verify()
    assert result.ok, result.problem
    assert result.rows >= 9


def test_duplicate_delivery_records_one_request(stack: Stack) -> None:
    first = services.submit(stack.core, ALICE, WORKSPACE, idempotency_key="trigger-dup")
    again = services.submit(stack.core, ALICE, WORKSPACE, idempotency_key="trigger-dup")
    assert again.duplicate and again.request.id == first.request.id
    assert len(services.list_requests(stack.core, ALICE)) == 1


def test_second_request_for_the_same_subject_is_refused(stack: Stack) -> None:
    submit(stack)
    with pytest.raises(errors.InvalidInput, match="still open"):
        submit(stack, key="trigger-2")


def test_double_click_and_second_admin_get_already_done(stack: Stack) -> None:
    rid = submit(stack)
    services.decide(stack.core, ADMIN, rid, approve=True, decision_key="ts1:approve:UADMIN:1")
    with pytest.raises(errors.AlreadyDone) as again:
        services.decide(stack.core, ADMIN, rid, approve=True, decision_key="ts1:approve:UADMIN:1")
    assert "already approved by <@UADMIN>" in render.SLACK.message(again.value.user_message)
    with pytest.raises(errors.AlreadyDone):
        services.decide(
            stack.core, ADMIN2, rid, approve=False, reason="no", decision_key="ts1:reject:UADMIN2:1"
        )
    assert stack.request(rid).decided_by == ADMIN.user_id


def test_self_approval_and_non_admin_are_refused(stack: Stack) -> None:
    rid = services.submit(stack.core, ADMIN, WORKSPACE, idempotency_key="k").request.id
    with pytest.raises(errors.Forbidden):
        services.decide(stack.core, ADMIN, rid, approve=True, decision_key="own")
    with pytest.raises(errors.Forbidden):
        services.decide(stack.core, ALICE, rid, approve=True, decision_key="alice")
    assert stack.request(rid).state is RequestState.PENDING


def test_reject_needs_a_reason_and_records_it(stack: Stack) -> None:
    rid = submit(stack)
    with pytest.raises(errors.InvalidInput):
        services.decide(stack.core, ADMIN, rid, approve=False, reason="  ", decision_key="r0")
    services.decide(stack.core, ADMIN, rid, approve=False, reason="use team-b", decision_key="r1")
    request = stack.request(rid)
    assert (request.state, request.reason) == (RequestState.REJECTED, "use team-b")
    assert stack.run() == 0


@pytest.mark.postgres
def test_two_admins_approving_at_once_make_one_decision_and_one_apply(postgres_url: str) -> None:
    stack = build_stack(postgres_url)
    for attempt in range(5):  # several rounds: a race that passes once by luck would fail one of these
        rid = submit(stack, kinds.WorkspaceCreate(f"race-{attempt}", ALICE.email), key=f"t{attempt}")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def decide(
            admin: Actor, rid: str = rid, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes
        ) -> None:
            barrier.wait()
            try:
                services.decide(stack.core, admin, rid, approve=True, decision_key=f"{rid}:{admin.user_id}")
                outcomes.append("approved")
            except errors.AlreadyDone as exc:
                # The loser reads the winner's decision, never a stale "already pending".
                assert "already approved" in exc.user_message, exc.user_message
                outcomes.append("already")

        threads = [threading.Thread(target=decide, args=(a,)) for a in (ADMIN, ADMIN2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["already", "approved"]
        workers = [
            build_stack(postgres_url, clock=stack.clock, world=stack.world, worker_id=f"w{i}", migrate=False)
            for i in range(2)
        ]
        runners = [threading.Thread(target=w.run) for w in workers]
        for t in runners:
            t.start()
        for t in runners:
            t.join()
        assert stack.request(rid).state is RequestState.SUCCEEDED
    assert stack.world.ensure_calls.count("kubeflow.profile") == 5, "each request applied exactly once"
    approvals = [
        e for e in map(json.loads, stack.backend.audit_export("jsonl")) if e["type"] == "request.approved"
    ]
    assert len(approvals) == 5


def test_plan_that_changed_after_approval_goes_back_to_pending(db_url: str) -> None:
    stack = build_stack(db_url)
    rid = submit(stack)
    stack.approve(rid)
    changed = CoreSettings(policy=CORE.policy, workspace=WorkspaceDefaults(cpu="16"))
    later = build_stack(db_url, clock=stack.clock, world=stack.world, core=changed, migrate=False)
    later.run()
    request = later.request(rid)
    assert request.state is RequestState.PENDING
    assert request.decided_by is None
    assert request.plan.steps[0].params["hard"]["cpu"] == "16"
    assert EventType.PLAN_CHANGED.value in later.notifier.types_for(rid)
    later.clock.advance(CORE.policy.request_ttl + timedelta(seconds=1))
    later.backend.sweep_timers(
        lambda kind, ref, payload: services.handle_timer(later.core, kind, ref, payload)
    )
    assert later.request(rid).state is RequestState.EXPIRED, "a re-pending request expires like any other"
    assert stack.world.ensure_calls == [], "nothing was applied under the old approval"


def run_deferred(stack: Stack, rid: str, limit: int = 500) -> list[float]:
    """Run the engine; while the request waits (deferred), advance the clock to its retry time
    and run again. The waits, in seconds, as the engine recorded them."""
    waits: list[float] = []
    finished = (RequestState.SUCCEEDED, RequestState.FAILED, RequestState.NEEDS_ATTENTION)
    for _ in range(limit):
        stack.run()
        if stack.request(rid).state in finished:
            return waits
        with stack.backend.db.uow() as uow:
            claimed_by, retry_at = uow.work.claim_of(rid)
        assert claimed_by is None and retry_at is not None, "a waiting request holds no claim"
        now = stack.clock.now()
        assert retry_at > now
        with stack.backend.db.uow() as uow:
            assert uow.work.claim_request("impatient", now, now + timedelta(seconds=30)) is None
        waits.append((retry_at - now).total_seconds())
        stack.clock.advance(retry_at - now)
    raise AssertionError(f"{rid} did not finish in {limit} runs")


def test_temporary_errors_retry_with_capped_backoff(stack: Stack) -> None:
    stack.world.fail("aws.bucket", *(temporary() for _ in range(5)))
    rid = submit(stack)
    stack.approve(rid)
    waits = run_deferred(stack, rid)
    assert stack.request(rid).state is RequestState.SUCCEEDED
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert stack.clock.slept == [], "no worker slept through a backoff"
    with stack.backend.db.uow() as uow:
        assert uow.work.steps(rid)[3].attempts == 6
    assert stack.notifier.types_for(rid).count(EventType.STEP_STARTED.value) == 4, "once per step"


def test_temporary_errors_past_the_deadline_fail_and_compensate(stack: Stack) -> None:
    stack.world.fail("aws.bucket", *(temporary("S3 is slow") for _ in range(100)))
    rid = submit(stack)
    stack.approve(rid)
    start = stack.clock.now()
    waits = run_deferred(stack, rid)
    request = stack.request(rid)
    assert request.state is RequestState.FAILED
    assert "S3 is slow" in (request.error or "") and "Step 4 of 4" in (request.error or "")
    assert stack.world.objects == {}, "the profile, its policy and the Dex user the bot made were undone"
    assert step_statuses(stack, rid) == [StepStatus.UNDONE] * 3 + [StepStatus.FAILED]
    # The deadline (5 minutes in the harness) counts from the first failure, across deferrals.
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and set(waits[4:]) == {8.0}
    assert stack.clock.now() - start == timedelta(seconds=sum(waits)) >= timedelta(minutes=5)
    assert sum(waits[:-1]) < 300


def test_a_waiting_undo_defers_too_and_then_finishes(stack: Stack) -> None:
    stack.world.fail("aws.bucket", errors.PermanentError("bucket name taken"))
    stack.world.undo_failures["kubeflow.profile"] = [temporary("namespace terminating")] * 3
    rid = submit(stack)
    stack.approve(rid)
    waits = run_deferred(stack, rid)
    assert stack.request(rid).state is RequestState.FAILED
    assert waits == [1.0, 2.0, 4.0]
    assert stack.world.objects == {}
    assert stack.notifier.types_for(rid).count(EventType.STEP_UNDONE.value) == 3


@pytest.mark.parametrize("failing", ["kubeflow.profile", "dex.user", "aws.bucket"])
def test_permanent_failure_undoes_only_what_the_bot_created(db_url: str, failing: str) -> None:
    world = ScriptedWorld()
    # A Dex login that existed before the request: found, not created, so never removed.
    world.objects[world.key("dex.user", {"email": ALICE.email})] = {"email": ALICE.email}
    world.fail(failing, errors.PermanentError("quota exceeded"))
    stack = build_stack(db_url, world=world)
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    assert stack.request(rid).state is RequestState.FAILED
    assert list(world.objects) == [world.key("dex.user", {"email": ALICE.email})]


def test_failed_undo_needs_attention_and_retry_finishes(stack: Stack) -> None:
    stack.world.fail("aws.bucket", errors.PermanentError("bucket name taken"))
    stack.world.undo_failures["kubeflow.profile"] = [errors.PermanentError("forbidden")]
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    request = stack.request(rid)
    assert request.state is RequestState.NEEDS_ATTENTION
    assert "forbidden" in (request.error or "") and f"/kf retry {rid}" in (request.error or "")
    with pytest.raises(errors.Forbidden):
        services.retry(stack.core, ALICE, rid)
    services.retry(stack.core, ADMIN, rid)
    stack.run()
    assert stack.request(rid).state is RequestState.SUCCEEDED
    assert len(stack.world.objects) == 4


def test_a_worker_that_lost_its_lease_records_nothing(stack: Stack) -> None:
    rid = submit(stack)
    stack.approve(rid)
    now = stack.clock.now()
    with stack.backend.db.uow() as uow:
        claimed = uow.work.claim_request("stale-worker", now, now + timedelta(seconds=30))
        uow.commit()
    assert claimed is not None and claimed.id == rid
    stack.clock.advance(timedelta(seconds=31))
    assert stack.run() == 1, "the lease expired: another worker takes the request"
    assert stack.request(rid).state is RequestState.SUCCEEDED
    with pytest.raises(LeaseLost), stack.backend.db.uow() as uow:
        uow.work.record_step(
            rid,
            "stale-worker",
            stack.clock.now(),
            0,
            "Profile/team-a",
            "kubeflow.profile",
            StepStatus.FAILED,
            error="late",
            attempts=1,
        )
    assert step_statuses(stack, rid) == [StepStatus.DONE] * 4


def test_pending_requests_expire_and_approvers_are_nudged(stack: Stack) -> None:
    rid = submit(stack)
    handled: list[str] = []

    def on_timer(kind: str, ref: str, payload: dict[str, object]) -> None:
        handled.append(kind)
        services.handle_timer(stack.core, kind, ref, payload)

    assert stack.backend.sweep_timers(on_timer) == 0
    stack.clock.advance(CORE.policy.nudge_after + timedelta(seconds=1))
    stack.backend.sweep_timers(on_timer)
    assert handled == ["request.nudge"]
    assert EventType.NUDGED.value in stack.notifier.types_for(rid)
    stack.clock.advance(CORE.policy.request_ttl)
    stack.backend.sweep_timers(on_timer)
    assert "request.expire" in handled
    assert stack.request(rid).state is RequestState.EXPIRED


def test_decided_requests_are_not_expired(stack: Stack) -> None:
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    stack.clock.advance(CORE.policy.request_ttl * 2)
    fired: list[str] = []
    stack.backend.sweep_timers(lambda kind, ref, payload: fired.append(kind))
    assert fired == [], "approval cancelled the expiry and nudge timers"
    assert stack.request(rid).state is RequestState.SUCCEEDED


@pytest.mark.postgres
def test_two_sweepers_handle_each_due_timer_once(postgres_url: str) -> None:
    stack = build_stack(postgres_url)
    with stack.backend.uow() as uow:
        for i in range(40):
            uow.timers.schedule("test.tick", f"t{i}", stack.clock.now(), {"i": i})
        uow.commit()
    handled: list[str] = []
    lock = threading.Lock()

    def on_timer(kind: str, ref: str, payload: dict[str, object]) -> None:
        with lock:
            handled.append(ref)

    sweepers = [
        build_stack(postgres_url, clock=stack.clock, worker_id=f"sweeper-{i}", migrate=False)
        for i in range(2)
    ]
    barrier = threading.Barrier(2)

    def sweep(s: Stack) -> None:
        barrier.wait()
        while s.backend.sweep_timers(on_timer, limit=3):
            pass

    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(handled) == sorted(f"t{i}" for i in range(40))


@pytest.mark.postgres
def test_one_scheduler_leads_on_postgres(postgres_url: str) -> None:
    first = build_stack(postgres_url, worker_id="a")
    second = build_stack(postgres_url, worker_id="b", migrate=False)
    try:
        assert first.backend.try_lead() is True
        assert second.backend.try_lead() is False
        first.backend.close()
        assert second.backend.try_lead() is True
    finally:
        second.backend.close()
