"""The approval gate's side doors, each closed: retry is no approval, the engine applies only what the
audit trail authorizes, losing access takes its tokens, an unshare of nobody is refused, and a
re-planned request is released at once and its requester told. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot import render
from bot.notify import ShellNotifier
from handlers import errors, kinds, policy, services
from handlers.model import SYSTEM, Actor, Event, EventType, Request, RequestState
from handlers.plan import Plan, canonical_json
from provisioning import store
from tests.harness import ADMIN, ADMIN2, ALICE, BOB, Stack, build_stack

WORKSPACE = kinds.WorkspaceCreate("team-a", ALICE.email)


@pytest.fixture
def stack(db_url: str) -> Stack:
    return build_stack(db_url)


def submit(stack: Stack, kind: kinds.RequestKind = WORKSPACE, actor: Actor = ALICE) -> str:
    return services.submit(stack.core, actor, kind, idempotency_key=None).request.id


def sql(stack: Stack, statement: str, **params: object) -> None:
    with stack.backend.db.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def audit_types(stack: Stack, request_id: str) -> list[str]:
    with stack.backend.uow() as uow:
        return [e.type.value for e in uow.audit.trail(request_id)]


def workspace_with_bob(stack: Stack) -> None:
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    shared = services.submit(stack.core, ALICE, kinds.Share("team-a", BOB.email), idempotency_key=None)
    assert shared.auto_reason is not None  # the owner shares without an admin
    stack.run()


# -- retry is not an approval ------------------------------------------------------------------------


def test_retry_of_a_pending_request_is_refused_and_nothing_applies(stack: Stack) -> None:
    rid = submit(stack, actor=ADMIN)  # an admin's own request: only another admin may approve it
    with pytest.raises(errors.IllegalTransition, match="only failed or needs-attention"):
        services.retry(stack.core, ADMIN, rid)  # their own, and pending
    with pytest.raises(errors.IllegalTransition):
        services.retry(stack.core, ADMIN2, rid)
    assert stack.run() == 0
    request = stack.request(rid)
    assert request.state is RequestState.PENDING and request.decided_by is None
    assert stack.world.ensure_calls == []
    assert EventType.RETRIED.value not in audit_types(stack, rid)


def test_retry_of_a_failed_request_reruns_under_its_original_approval(stack: Stack) -> None:
    stack.world.fail("aws.bucket", errors.PermanentError("denied"))
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    assert stack.request(rid).state is RequestState.FAILED
    services.retry(stack.core, ADMIN2, rid)
    stack.run()
    assert stack.request(rid).state is RequestState.SUCCEEDED
    assert audit_types(stack, rid).count(EventType.APPROVED.value) == 1


# -- the engine applies only an authorized plan ----------------------------------------------------


@pytest.mark.parametrize("state", ["approved", "applying"])
def test_a_state_set_in_the_database_is_refused_by_the_engine(stack: Stack, state: str) -> None:
    rid = submit(stack)
    sql(stack, "UPDATE requests SET state = :state WHERE id = :id", state=state, id=rid)
    stack.run()
    request = stack.request(rid)
    assert stack.world.ensure_calls == [], "nothing was applied"
    assert request.state is RequestState.NEEDS_ATTENTION
    assert request.error is not None and request.error.startswith("Refused: ")
    assert EventType.REFUSED.value in audit_types(stack, rid)
    assert EventType.REFUSED.value in stack.notifier.types_for(rid)
    assert stack.backend.audit_verify().ok
    # A retry brings it back to the same check, not past it.
    services.retry(stack.core, ADMIN, rid)
    stack.run()
    assert stack.request(rid).state is RequestState.NEEDS_ATTENTION
    assert stack.world.ensure_calls == []


def test_compensation_set_in_the_database_undoes_nothing(stack: Stack) -> None:
    rid = submit(stack)
    stack.approve(rid)
    stack.run()
    made = dict(stack.world.objects)
    other = submit(stack, kinds.WorkspaceCreate("team-b", ALICE.email))
    # Someone copies the finished request's steps under a request nobody approved, then asks for undo.
    sql(stack, "UPDATE requests SET state = 'compensating' WHERE id = :id", id=other)
    columns = "idx, key, action, status, outcome, attempts, started_at, updated_at"
    sql(
        stack,
        f"INSERT INTO step_outcomes (request_id, {columns}) "
        f"SELECT :other, {columns} FROM step_outcomes WHERE request_id = :rid",
        other=other,
        rid=rid,
    )
    stack.run()
    assert stack.world.objects == made
    assert stack.request(other).state is RequestState.NEEDS_ATTENTION


def test_an_approved_plan_edited_in_the_database_is_refused(stack: Stack) -> None:
    rid = submit(stack)
    stack.approve(rid)
    request = stack.request(rid)
    plan = request.plan.to_json()
    plan["steps"][0]["params"]["owner"] = "mallory@example.com"
    sql(stack, "UPDATE requests SET plan = :plan WHERE id = :id", plan=canonical_json(plan), id=rid)
    stack.run()
    assert stack.world.ensure_calls == []
    assert stack.request(rid).error is not None
    assert "does not match its digest" in str(stack.request(rid).error)


def test_an_approval_row_forged_without_the_key_authorizes_nothing(stack: Stack) -> None:
    rid = submit(stack)
    digest = stack.request(rid).plan_digest
    with stack.backend.db.engine.begin() as conn:
        head = conn.execute(sa.select(store.audit_head)).one()
        conn.execute(
            sa.insert(store.audit_events).values(
                seq=head.seq + 1,
                at=stack.clock.now(),
                request_id=rid,
                type=EventType.APPROVED.value,
                actor=ADMIN.user_id,
                data={"plan_digest": digest},
                prev_mac=head.mac,
                mac="0" * 64,
            )
        )
        conn.execute(sa.update(store.audit_head).values(seq=head.seq + 1, mac="0" * 64))
    sql(stack, "UPDATE requests SET state = 'approved' WHERE id = :id", id=rid)
    stack.run()
    assert stack.world.ensure_calls == []
    assert stack.request(rid).state is RequestState.NEEDS_ATTENTION
    assert not stack.backend.audit_verify().ok


def test_auto_approvals_and_system_decisions_name_their_rule(stack: Stack) -> None:
    workspace_with_bob(stack)
    with stack.backend.uow() as uow:
        autos = [
            e
            for r in uow.requests.list(kind=kinds.Share.KIND)
            for e in uow.audit.trail(r.id)
            if e.type is EventType.AUTO_APPROVED
        ]
    assert [e.data["rule"] for e in autos] == ["auto:share"]
    carol = kinds.Share("team-a", "carol@example.com", duration=timedelta(hours=1))
    assert services.submit(stack.core, ALICE, carol, idempotency_key=None).auto_reason
    stack.run()
    stack.clock.advance(timedelta(hours=2))
    stack.backend.sweep_timers(lambda k, r, p: services.handle_timer(stack.core, k, r, p))
    stack.run()
    with stack.backend.uow() as uow:
        system = [r for r in uow.requests.list(kind=kinds.Unshare.KIND) if r.requester_id == SYSTEM.user_id]
        events = [e for e in uow.audit.trail(system[0].id) if e.type is EventType.AUTO_APPROVED]
    assert events[0].data["rule"] == "system:grant.expire"
    assert str(events[0].data["trigger"]).startswith("timer:grant.expire:")
    assert system[0].state is RequestState.SUCCEEDED


# -- losing access takes its tokens ------------------------------------------------------------------


def issue_token(stack: Stack, read_only: bool = False) -> str:
    token = kinds.TokenIssue("team-a", timedelta(hours=1), read_only=read_only)
    result = services.submit(stack.core, BOB, token, idempotency_key=None)
    assert result.auto_reason is not None
    stack.run()
    assert stack.request(result.request.id).state is RequestState.SUCCEEDED
    return result.request.id


def test_unshare_revokes_the_grantees_tokens(stack: Stack) -> None:
    workspace_with_bob(stack)
    token = issue_token(stack)
    services.reveal_token(stack.core, BOB, token)
    unshare = submit(stack, kinds.Unshare("team-a", BOB.email))
    stack.run()
    request = stack.request(unshare)
    assert request.state is RequestState.SUCCEEDED
    assert [s.action for s in request.plan.steps] == [
        "kubeflow.contributor.remove",
        "kubeflow.token_account.remove",
    ]
    assert stack.core.facts.token_owner(token) is None
    with pytest.raises(errors.NotFound, match="revoked"):
        services.reveal_token(stack.core, BOB, token)


def test_a_grant_lowered_to_view_takes_the_edit_tokens_only(stack: Stack) -> None:
    workspace_with_bob(stack)
    edit, view = issue_token(stack), issue_token(stack, read_only=True)
    submit(stack, kinds.Share("team-a", BOB.email, role="view"))
    stack.run()
    assert stack.core.facts.token_owner(edit) is None
    assert stack.core.facts.token_owner(view) is not None


def test_a_deleted_workspace_leaves_no_active_token(stack: Stack) -> None:
    workspace_with_bob(stack)
    token = issue_token(stack)
    rid = submit(stack, kinds.WorkspaceDelete("team-a", "team-a"))
    stack.approve(rid)
    stack.run()
    assert stack.request(rid).state is RequestState.SUCCEEDED
    assert stack.core.facts.token_owner(token) is None
    with pytest.raises(errors.NotFound):
        services.reveal_token(stack.core, BOB, token)


def test_unshare_of_someone_without_access_is_refused_and_nobody_is_told(stack: Stack) -> None:
    workspace_with_bob(stack)
    before = len(stack.notifier.published)
    with pytest.raises(errors.NotFound, match="has no access"):
        submit(stack, kinds.Unshare("team-a", "nobody@example.com"))
    assert len(stack.notifier.published) == before


# -- a request that goes back to pending --------------------------------------------------------------


def test_a_replanned_request_is_released_at_once_and_its_requester_told(stack: Stack) -> None:
    workspace_with_bob(stack)
    carol = Actor("UCAROL", "carol@example.com")
    rid = submit(stack, kinds.Share("team-a", BOB.email, role="view"), actor=carol)
    issue_token(stack)  # after the plan was made: lowering bob to view now also removes this token
    stack.approve(rid)
    stack.run()
    request = stack.request(rid)
    assert request.state is RequestState.PENDING
    assert [s.action for s in request.plan.steps][-1] == "kubeflow.token_account.remove"
    stack.approve(rid, ADMIN2)
    assert stack.run() >= 1, "the second approval is taken at once, not after the first claim's lease"
    assert stack.request(rid).state is RequestState.SUCCEEDED
    out = io.StringIO()
    changed = Event(EventType.PLAN_CHANGED, rid, stack.clock.now(), SYSTEM.user_id, {})
    ShellNotifier(out).publish(stack.request(rid), [changed], ("shell", rid))
    assert f"[DM to {carol.email}]" in out.getvalue() and "needs a new approval" in out.getvalue()


# -- the authorization rule itself -------------------------------------------------------------------


def _request(requester: str = ALICE.user_id) -> Request:
    return Request(
        id="RX",
        kind=kinds.Share.KIND,
        args=kinds.to_args(kinds.Share("team-a", BOB.email)),
        requester_id=requester,
        requester_email=ALICE.email,
        plan=Plan.of([]),
        created_at=datetime.now(UTC),
        state=RequestState.APPROVED,  # as the engine finds it
    )


def _event(type_: EventType, actor: str, **data: object) -> Event:
    return Event(type_, "RX", datetime.now(UTC), actor, data)  # type: ignore[arg-type]


DIGEST = _request().plan_digest
AUTHORIZATION_TABLE = [
    ("nothing", [], False),
    ("an admin", [_event(EventType.APPROVED, ADMIN.user_id, plan_digest=DIGEST)], True),
    ("the requester", [_event(EventType.APPROVED, ALICE.user_id, plan_digest=DIGEST)], False),
    ("another plan", [_event(EventType.APPROVED, ADMIN.user_id, plan_digest="0" * 64)], False),
    (
        "before a plan change",
        [
            _event(EventType.APPROVED, ADMIN.user_id, plan_digest=DIGEST),
            _event(EventType.PLAN_CHANGED, SYSTEM.user_id, old=DIGEST, new=DIGEST),
        ],
        False,
    ),
    (
        "its own rule",
        [_event(EventType.AUTO_APPROVED, SYSTEM.user_id, plan_digest=DIGEST, rule="auto:share")],
        True,
    ),
    (
        "another kind's rule",
        [_event(EventType.AUTO_APPROVED, SYSTEM.user_id, plan_digest=DIGEST, rule="auto:quota")],
        False,
    ),
    (
        "a system rule for a person's request",
        [
            _event(
                EventType.AUTO_APPROVED,
                SYSTEM.user_id,
                plan_digest=DIGEST,
                rule="system:grant.expire",
                trigger="t",
            )
        ],
        False,
    ),
    (
        "an auto-approval not by the bot",
        [_event(EventType.AUTO_APPROVED, ADMIN.user_id, plan_digest=DIGEST, rule="auto:share")],
        False,
    ),
]


def _filed(request: Request, trail: list[Event]) -> list[Event]:
    """The trail as the bot writes it: the request's ``request.created`` first."""
    data = {"kind": request.kind, "args": dict(request.args)}
    return [_event(EventType.CREATED, request.requester_id, **data), *trail]


@pytest.mark.parametrize(
    ("case", "trail", "allowed"), AUTHORIZATION_TABLE, ids=[c for c, _, _ in AUTHORIZATION_TABLE]
)
def test_what_authorizes_a_plan(case: str, trail: list[Event], allowed: bool) -> None:
    assert (policy.authorization_problem(_request(), _filed(_request(), trail)) is None) is allowed, case


def test_an_authorization_is_used_up_by_the_outcome_and_held_while_stopped() -> None:
    approved = [_event(EventType.APPROVED, ADMIN.user_id, plan_digest=DIGEST)]
    done = [*approved, _event(EventType.SUCCEEDED, SYSTEM.user_id)]
    failed = [*approved, _event(EventType.FAILED, SYSTEM.user_id)]
    retried = [*failed, _event(EventType.RETRIED, ADMIN2.user_id)]
    request = _request()
    assert policy.authorization_problem(request, _filed(request, done)) is not None
    assert policy.authorization_problem(request, _filed(request, failed)) is not None
    assert policy.authorization_problem(request, _filed(request, retried)) is None
    edited = dataclasses.replace(request, args={**request.args, "role": "view"})
    assert "arguments" in str(policy.authorization_problem(edited, _filed(request, approved)))


def test_a_system_decision_authorizes_the_bots_own_request() -> None:
    mine = _request(requester=SYSTEM.user_id)
    rule = {"plan_digest": DIGEST, "rule": "system:grant.expire"}
    trail = [_event(EventType.AUTO_APPROVED, SYSTEM.user_id, **rule, trigger="t")]
    assert policy.authorization_problem(mine, _filed(mine, trail)) is None
    untriggered = [_event(EventType.AUTO_APPROVED, SYSTEM.user_id, **rule)]
    assert policy.authorization_problem(mine, _filed(mine, untriggered)) is not None


# -- what an outside attack found (issue 9, before resolving) ---------------------------------------


def test_an_admin_cannot_retry_a_request_that_is_for_them_into_a_recreated_workspace(stack: Stack) -> None:
    first = submit(stack, kinds.WorkspaceCreate("wsy", ALICE.email))
    stack.approve(first)
    stack.run()
    share = submit(stack, kinds.Share("wsy", ADMIN2.email), actor=ADMIN2)  # for ADMIN2: ADMIN decides
    delete = submit(stack, kinds.WorkspaceDelete("wsy", "wsy"))
    stack.approve(delete)
    stack.run()
    stack.approve(share)  # approved for alice's workspace, which is gone: it fails
    stack.run()
    assert stack.request(share).state is RequestState.FAILED
    again = submit(stack, kinds.WorkspaceCreate("wsy", BOB.email))
    stack.approve(again)
    stack.run()
    with pytest.raises(errors.Forbidden):
        services.retry(stack.core, ADMIN2, share)
    stack.run()
    assert stack.request(share).state is RequestState.FAILED
    assert ADMIN2.email not in (stack.core.facts.workspace("wsy") or pytest.fail()).contributors


def test_a_finished_request_set_back_to_approved_in_the_database_is_not_applied_again(stack: Stack) -> None:
    workspace_with_bob(stack)
    with stack.backend.uow() as uow:
        share = next(r.id for r in uow.requests.list(kind=kinds.Share.KIND))
    submit(stack, kinds.Unshare("team-a", BOB.email))
    stack.run()
    calls = len(stack.world.ensure_calls)
    sql(
        stack,
        "UPDATE requests SET state = 'approved', claimed_by = NULL, lease_until = NULL WHERE id = :id",
        id=share,
    )
    sql(stack, "DELETE FROM step_outcomes WHERE request_id = :id", id=share)
    stack.run()
    assert len(stack.world.ensure_calls) == calls, "the used approval applied the share again"
    assert stack.request(share).state is RequestState.NEEDS_ATTENTION
    assert BOB.email not in (stack.core.facts.workspace("team-a") or pytest.fail()).contributors


def test_arguments_edited_after_the_approval_are_refused(stack: Stack) -> None:
    workspace_with_bob(stack)
    carol = Actor("UCAROL", "carol@example.com")
    rid = submit(stack, kinds.Share("team-a", carol.email, duration=timedelta(hours=1)), actor=carol)
    stack.approve(rid)
    args = dict(stack.request(rid).args, duration=None)  # a lasting grant instead of an hour
    sql(stack, "UPDATE requests SET args = :args WHERE id = :id", args=canonical_json(args), id=rid)
    stack.run()
    assert stack.request(rid).state is RequestState.NEEDS_ATTENTION
    assert carol.email not in (stack.core.facts.workspace("team-a") or pytest.fail()).contributors


def test_an_owner_edited_in_the_registry_gets_no_owner_rights(stack: Stack) -> None:
    workspace_with_bob(stack)
    mallory = Actor("UMALLORY", "mallory@example.com")
    sql(stack, "UPDATE workspaces SET owner = :o WHERE name = 'team-a'", o=mallory.email)
    before = len(stack.notifier.published)
    for kind in (kinds.Share("team-a", "eve@example.com"), kinds.TokenIssue("team-a", timedelta(hours=1))):
        with pytest.raises(errors.KfError, match="audit log"):
            services.submit(stack.core, mallory, kind, idempotency_key=None)
    assert len(stack.notifier.published) == before


def test_a_requester_edited_in_the_database_cannot_see_the_token(stack: Stack) -> None:
    workspace_with_bob(stack)
    token = issue_token(stack)
    mallory = Actor("UMALLORY", "mallory@example.com")
    sql(stack, "UPDATE requests SET requester_id = :m WHERE id = :id", m=mallory.user_id, id=token)
    with pytest.raises(errors.KfError):
        services.reveal_token(stack.core, mallory, token)


def test_a_reused_workspace_name_does_not_inherit_the_old_quota(stack: Stack) -> None:
    first = submit(stack, kinds.WorkspaceCreate("team-b", ALICE.email))
    stack.approve(first)
    stack.run()
    raise_ = submit(stack, kinds.QuotaChange("team-b", gpu="8", cpu="64"))
    stack.approve(raise_)
    stack.run()
    stack.clock.advance(timedelta(days=1))
    delete = submit(stack, kinds.WorkspaceDelete("team-b", "team-b"))
    stack.approve(delete)
    stack.run()
    again = submit(stack, kinds.WorkspaceCreate("team-b", BOB.email))
    stack.approve(again)
    stack.run()
    result = services.submit(
        stack.core, BOB, kinds.QuotaChange("team-b", gpu="8", cpu="64"), idempotency_key=None
    )
    assert result.auto_reason is None, "a raise from the new workspace's quota needs an admin"
    assert stack.request(result.request.id).state is RequestState.PENDING


# -- what a second outside attack found -------------------------------------------------------------


def _recreate(stack: Stack, name: str, owner: str) -> None:
    delete = submit(stack, kinds.WorkspaceDelete(name, name))
    stack.approve(delete)
    stack.run()
    stack.clock.advance(timedelta(minutes=1))
    again = submit(stack, kinds.WorkspaceCreate(name, owner))
    stack.approve(again)
    stack.run()
    assert stack.request(again).state is RequestState.SUCCEEDED


def test_a_reused_workspace_name_inherits_no_grant_and_no_timer(stack: Stack) -> None:
    workspace_with_bob(stack)
    timed = services.submit(
        stack.core,
        ALICE,
        kinds.Share("team-a", "dave@example.com", duration=timedelta(days=1)),
        idempotency_key=None,
    )
    assert timed.auto_reason is not None
    stack.run()
    carol = Actor("UCAROL", "carol@example.com")
    _recreate(stack, "team-a", carol.email)
    ws = stack.core.facts.workspace("team-a") or pytest.fail()
    assert ws.contributors == {} and ws.recorded_grants == {}
    kind = kinds.TokenIssue("team-a", timedelta(hours=1))
    token = services.submit(stack.core, BOB, kind, idempotency_key=None)
    assert token.auto_reason is None, "bob's grant was in the old workspace, not in carol's"
    with stack.backend.db.engine.begin() as conn:
        pending = conn.execute(sa.text("SELECT kind, ref FROM timers WHERE done_at IS NULL")).all()
    assert not [t for t in pending if str(t.ref).startswith("team-a:")], pending


def test_a_finished_request_whose_audit_tail_was_cut_is_not_applied_again(stack: Stack) -> None:
    workspace_with_bob(stack)
    with stack.backend.uow() as uow:
        share = next(r.id for r in uow.requests.list(kind=kinds.Share.KIND))
    submit(stack, kinds.Unshare("team-a", BOB.email))
    stack.run()
    calls = len(stack.world.ensure_calls)
    with stack.backend.db.engine.begin() as conn:
        cut = conn.execute(
            sa.text(
                "SELECT min(seq) FROM audit_events WHERE request_id = :id AND type = 'request.succeeded'"
            ),
            {"id": share},
        ).scalar_one()
        prev = conn.execute(sa.text("SELECT seq, mac FROM audit_events WHERE seq = :s"), {"s": cut - 1}).one()
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= :s"), {"s": cut})
        conn.execute(sa.update(store.audit_head).values(seq=prev.seq, mac=prev.mac))
    sql(
        stack,
        "UPDATE requests SET state = 'approved', claimed_by = NULL, lease_until = NULL WHERE id = :id",
        id=share,
    )
    sql(stack, "DELETE FROM step_outcomes WHERE request_id = :id", id=share)
    assert stack.backend.audit_verify().ok, "a cut tail alone is invisible to verify without --expect-head"
    stack.run()
    assert len(stack.world.ensure_calls) == calls, "the replay applied the share again"
    assert stack.request(share).state is RequestState.NEEDS_ATTENTION


@pytest.mark.parametrize("pointer", ["another request", "none"])
def test_a_workspace_row_pointed_elsewhere_gets_no_owner_rights(stack: Stack, pointer: str) -> None:
    workspace_with_bob(stack)
    mallory = Actor("UMALLORY", "mallory@example.com")
    own = submit(stack, kinds.WorkspaceCreate("zzz-mine", mallory.email), actor=mallory)  # left pending
    sql(
        stack,
        "UPDATE workspaces SET owner = :o, request_id = :r WHERE name = 'team-a'",
        o=mallory.email,
        r=own if pointer == "another request" else None,
    )
    with pytest.raises(errors.KfError, match="audit log"):
        services.submit(stack.core, mallory, kinds.Share("team-a", "eve@example.com"), idempotency_key=None)


def test_a_token_holder_edited_in_the_database_is_refused_not_skipped(stack: Stack) -> None:
    workspace_with_bob(stack)
    token = issue_token(stack)
    sql(stack, "UPDATE requests SET requester_email = 'nobody@example.com' WHERE id = :id", id=token)
    with pytest.raises(errors.KfError, match="audit log"):
        submit(stack, kinds.Unshare("team-a", BOB.email))
    with stack.backend.uow() as uow:
        assert uow.requests.list(kind=kinds.Unshare.KIND) == [], "nothing was recorded"


def test_a_timer_row_the_audit_log_does_not_vouch_for_files_nothing(stack: Stack) -> None:
    workspace_with_bob(stack)
    temporary = services.submit(
        stack.core,
        ALICE,
        kinds.QuotaChange("team-a", cpu="4", duration=timedelta(hours=1)),
        idempotency_key=None,
    )
    assert temporary.auto_reason is not None
    stack.run()
    with stack.backend.db.engine.begin() as conn:
        row = conn.execute(sa.text("SELECT ref, payload FROM timers WHERE kind = 'quota.revert'")).one()
        payload = dict(row.payload) if isinstance(row.payload, dict) else json.loads(row.payload)
        forged = {**payload, "previous": {k: "4096" for k in payload["set"]}}
        conn.execute(
            sa.text("UPDATE timers SET payload = :p WHERE kind = 'quota.revert'"), {"p": json.dumps(forged)}
        )
        conn.execute(
            sa.text(
                "INSERT INTO timers (kind, ref, due_at, payload, attempts) "
                "VALUES ('quota.revert', 'team-a:x', :d, :p, 0)"
            ),
            {"d": stack.clock.now(), "p": json.dumps({**forged, "request_id": "RFAKE02"})},
        )
    stack.clock.advance(timedelta(hours=2))
    stack.backend.sweep_timers(lambda k, r, p: services.handle_timer(stack.core, k, r, p))
    stack.run()
    with stack.backend.uow() as uow:
        system = [
            r for r in uow.requests.list(kind=kinds.QuotaChange.KIND) if r.requester_id == SYSTEM.user_id
        ]
    assert system == [], "a forged revert filed a quota change"
    assert (stack.core.facts.workspace("team-a") or pytest.fail()).quota.get("cpu") == "4"


def test_a_timer_the_bot_set_still_fires(stack: Stack) -> None:
    workspace_with_bob(stack)
    services.submit(
        stack.core,
        ALICE,
        kinds.Share("team-a", "dave@example.com", duration=timedelta(hours=1)),
        idempotency_key=None,
    )
    stack.run()
    stack.clock.advance(timedelta(hours=2))
    stack.backend.sweep_timers(lambda k, r, p: services.handle_timer(stack.core, k, r, p))
    stack.run()
    assert "dave@example.com" not in (stack.core.facts.workspace("team-a") or pytest.fail()).contributors


# -- what a third outside attack found --------------------------------------------------------------


def test_a_grant_row_added_in_the_database_gives_no_token_and_no_share(stack: Stack) -> None:
    workspace_with_bob(stack)
    with stack.backend.uow() as uow:
        share = next(r.id for r in uow.requests.list(kind=kinds.Share.KIND))
    sql(
        stack,
        'INSERT INTO grants (workspace, "user", role, request_id, expires_at, created_at) '
        "VALUES ('team-a', 'mallory@example.com', 'edit', :r, NULL, :at)",
        r=share,
        at=stack.clock.now(),
    )
    mallory = Actor("UMALLORY", "mallory@example.com")
    for kind in (
        kinds.TokenIssue("team-a", ttl=timedelta(hours=1)),
        kinds.Share("team-a", "eve@example.com"),
    ):
        with pytest.raises(errors.Inconsistent, match="grant"):
            services.submit(stack.core, mallory, kind, idempotency_key=None)


def test_ids_edited_in_the_database_never_become_slack_markup_or_a_crash(stack: Stack) -> None:
    workspace_with_bob(stack)
    carol = Actor("UCAROL", "carol@example.com")
    pending = submit(stack, kinds.Share("team-a", "eve@example.com"), actor=carol)
    sql(stack, "UPDATE requests SET requester_id = :u WHERE id = :id", u="U1><!channel><@U2", id=pending)
    shown = render.SLACK.user(stack.request(pending).requester_id)
    assert "<!channel>" not in shown and "<@U2" not in shown
    decided = submit(stack, kinds.Share("team-a", "dave@example.com"), actor=carol)
    stack.approve(decided)
    sql(stack, "UPDATE requests SET decided_by = 'zed example' WHERE id = :id", id=decided)
    with pytest.raises(errors.AlreadyDone, match="already approved"):
        stack.approve(decided, ADMIN2)
