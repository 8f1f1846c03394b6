"""A step that must wait defers its request instead of holding a worker (kopf's ``TemporaryError``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from handlers import errors, kinds, services
from handlers.model import RequestState
from handlers.plan import JSON, StepOutcome, StepStatus
from tests.fakes.facts import StaticFacts
from tests.harness import ALICE, BOB, CORE, ScriptedAction, Stack, build_stack


@dataclass
class Stubborn:
    """``aws.bucket`` that keeps failing temporarily for one bucket and works for the others."""

    inner: ScriptedAction
    bucket: str
    delay: float = 30.0
    calls: list[str] = field(default_factory=list)

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        self.calls.append(str(params["bucket"]))
        if params["bucket"] == self.bucket:
            raise errors.TemporaryError("S3 is throttling this bucket", delay=self.delay)
        return self.inner.ensure(params)

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        self.inner.undo(params, outcome)


BUCKET = [s.action for s in kinds.WorkspaceCreate("x", "x@example.com").plan(
    kinds.PlanContext(CORE, StaticFacts(), "RINDEX1")).steps].index("aws.bucket")
"""The bucket step's index in a CPU workspace's plan."""


def two_requests(stack: Stack) -> tuple[str, str, Stubborn]:
    first = services.submit(
        stack.core, ALICE, kinds.WorkspaceCreate("team-a", ALICE.email), idempotency_key="a"
    )
    second = services.submit(stack.core, BOB, kinds.WorkspaceCreate("team-b", BOB.email), idempotency_key="b")
    bucket = str(first.request.plan.steps[BUCKET].params["bucket"])
    stubborn = Stubborn(ScriptedAction(stack.world, "aws.bucket"), bucket)
    stack.backend.actions["aws.bucket"] = stubborn  # type: ignore[index]
    stack.approve(first.request.id)
    stack.approve(second.request.id)
    return first.request.id, second.request.id, stubborn


def test_a_deferred_request_does_not_block_the_others(db_url: str) -> None:
    stack = build_stack(db_url)
    waiting, other, stubborn = two_requests(stack)

    # One worker, one run: the older request waits at its bucket, the other one is applied.
    stack.run()

    assert stack.request(other).state is RequestState.SUCCEEDED
    assert stack.request(waiting).state is RequestState.APPLYING
    assert stack.clock.slept == [], "nobody slept through the wait"
    with stack.backend.db.uow() as uow:
        steps = uow.work.steps(waiting)
        claimed_by, retry_at = uow.work.claim_of(waiting)
    assert [s.status for s in steps] == [StepStatus.DONE] * BUCKET + [StepStatus.RUNNING]
    assert steps[BUCKET].error == "S3 is throttling this bucket" and steps[BUCKET].attempts == 1
    assert steps[BUCKET].first_failure_at == stack.clock.now()
    assert claimed_by is None and retry_at == stack.clock.now() + timedelta(seconds=30)  # the error's delay

    # Once the throttling is over and the retry time has come, it finishes.
    stubborn.bucket = "nobody"
    assert stack.run() == 0, "nothing is claimable before the retry time"
    stack.clock.advance(timedelta(seconds=30))
    stack.run()
    assert stack.request(waiting).state is RequestState.SUCCEEDED


@pytest.mark.postgres
def test_a_deferred_request_is_not_claimable_by_another_worker_before_its_retry_time(
    postgres_url: str,
) -> None:
    stack = build_stack(postgres_url, worker_id="w1")
    waiting, other, stubborn = two_requests(stack)
    stack.run()
    assert stack.request(other).state is RequestState.SUCCEEDED

    second = build_stack(postgres_url, clock=stack.clock, world=stack.world, worker_id="w2", migrate=False)
    second.backend.actions["aws.bucket"] = stubborn  # type: ignore[index]
    stubborn.bucket = "nobody"
    stack.clock.advance(timedelta(seconds=29))
    assert second.run() == 0, "w2 may not take the deferred request before its retry time"
    assert stack.run() == 0, "nor may w1, which deferred it"
    assert stubborn.calls.count(str(stack.request(waiting).plan.steps[BUCKET].params["bucket"])) == 1

    stack.clock.advance(timedelta(seconds=1))
    assert second.run() == 1
    assert second.request(waiting).state is RequestState.SUCCEEDED
    with second.backend.db.uow() as uow:
        assert uow.work.claim_of(waiting) == (None, None)
        assert uow.work.steps(waiting)[BUCKET].attempts == 2
