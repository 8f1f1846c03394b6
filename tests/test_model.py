"""The request state machine: every transition either follows TRANSITIONS or raises."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from handlers import errors
from handlers.model import SYSTEM, TRANSITIONS, Actor, EventType, Request, RequestState
from handlers.plan import Plan, Step

NOW = datetime(2026, 11, 22, tzinfo=UTC)
ALICE = Actor("UALICE", "alice@example.com")
ADMIN = Actor("UADMIN", "admin@example.com", is_admin=True)
PLAN = Plan.of([Step("kubeflow.profile", "Profile/a", {"name": "a"})])
S = RequestState


def request_in(state: RequestState) -> Request:
    r = Request(
        id="RTEST01",
        kind="workspace.create",
        args={},
        requester_id=ALICE.user_id,
        requester_email=ALICE.email,
        plan=PLAN,
        created_at=NOW,
    )
    r.state = state
    return r


MOVES = {
    S.APPROVED: lambda r: r.approve(ADMIN, NOW),
    S.REJECTED: lambda r: r.reject(ADMIN, "no", NOW),
    S.CANCELLED: lambda r: r.cancel(ALICE, NOW),
    S.EXPIRED: lambda r: r.expire(NOW),
    S.APPLYING: lambda r: r.begin_apply(PLAN, NOW),
    S.SUCCEEDED: lambda r: r.succeed(NOW),
    S.COMPENSATING: lambda r: r.start_compensation("boom", NOW),
    S.FAILED: lambda r: r.fail(NOW),
    S.NEEDS_ATTENTION: lambda r: r.need_attention("stuck", NOW),
}


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("target", list(MOVES))
def test_every_transition_follows_the_table(source: RequestState, target: RequestState) -> None:
    r = request_in(source)
    if target in TRANSITIONS[source]:
        MOVES[target](r)
        assert r.state is target
        assert r.version == 1
        assert r.events, "every change is recorded"
    else:
        with pytest.raises(errors.IllegalTransition):
            MOVES[target](r)
        assert r.state is source
        assert r.version == 0


def test_retry_moves_failed_back_to_approved_for_admins_only() -> None:
    r = request_in(S.NEEDS_ATTENTION)
    with pytest.raises(errors.Forbidden):
        r.retry(ALICE, NOW)
    r.decided_by = "UAPPROVER"
    r.retry(ADMIN, NOW)
    assert r.state is S.APPROVED
    assert r.decided_by == "UAPPROVER", "a retry keeps the original approval"
    assert [e.type for e in r.take_events()] == [EventType.RETRIED]


def test_nobody_approves_their_own_request_not_even_an_admin() -> None:
    r = Request(
        id="RTEST02",
        kind="share",
        args={},
        requester_id=ADMIN.user_id,
        requester_email=ADMIN.email,
        plan=PLAN,
        created_at=NOW,
    )
    with pytest.raises(errors.Forbidden):
        r.approve(ADMIN, NOW)
    with pytest.raises(errors.Forbidden):
        r.reject(ADMIN, "mine", NOW)
    assert r.state is S.PENDING


def test_auto_approval_is_the_system_and_is_recorded_as_such() -> None:
    r = request_in(S.PENDING)
    r.approve(SYSTEM, NOW, auto=True)
    assert r.state is S.APPROVED
    assert r.take_events()[-1].type is EventType.AUTO_APPROVED


def test_changed_plan_returns_to_pending_and_clears_the_approval() -> None:
    r = request_in(S.PENDING)
    r.approve(ADMIN, NOW)
    changed = Plan.of([Step("kubeflow.profile", "Profile/a", {"name": "a", "owner": "someone-else"})])
    assert r.begin_apply(changed, NOW) is False
    assert r.state is S.PENDING
    assert r.decided_by is None
    assert r.plan_digest == changed.digest()
    assert EventType.PLAN_CHANGED in [e.type for e in r.events]


def test_same_plan_starts_applying() -> None:
    r = request_in(S.PENDING)
    r.approve(ADMIN, NOW)
    assert (
        r.begin_apply(Plan.of(list(PLAN.steps), warnings=["advice is not part of the digest"]), NOW) is True
    )
    assert r.state is S.APPLYING


def test_only_requester_or_admin_cancels() -> None:
    r = request_in(S.PENDING)
    with pytest.raises(errors.Forbidden):
        r.cancel(Actor("UBOB", "bob@example.com"), NOW)
    r.cancel(ADMIN, NOW)
    assert r.state is S.CANCELLED


def test_plan_digest_ignores_summaries_and_covers_params() -> None:
    a = Plan.of([Step("x", "k", {"a": 1}, "one")])
    b = Plan.of([Step("x", "k", {"a": 1}, "other words")])
    c = Plan.of([Step("x", "k", {"a": 2}, "one")])
    assert a.digest() == b.digest() != c.digest()
    assert Plan.from_json(a.to_json()).digest() == a.digest()
