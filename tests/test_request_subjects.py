"""One open request per subject, by index: the submission rule of ``services._record`` holds past
any number of other requests and under concurrent submissions (two threads on PostgreSQL), the
quota facts find every applied change, and migration 0002 fills in what older databases lack."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from handlers import kinds, services
from handlers.model import SYSTEM, Actor, Request, RequestState
from handlers.plan import Plan, Step
from provisioning import store
from provisioning.store import Database
from tests.fakes.db_fixtures import AUDIT_KEY
from tests.harness import ADMIN, ALICE, BOB, Stack, build_stack, make_workspace

pytest_plugins = ["tests.fakes.db_fixtures"]

TEAM_A = kinds.WorkspaceCreate("team-a", ALICE.email)


def stored(stack: Stack, state: RequestState, kind: kinds.RequestKind, request_id: str,
           actor: Actor = BOB, plan: Plan | None = None, decided_by: str | None = None) -> Request:
    """A request written straight through the repository (many of them, fast)."""
    stack.clock.advance(timedelta(seconds=1))
    now = stack.clock.now()
    return Request(id=request_id, kind=kind.KIND, args=kinds.to_args(kind), requester_id=actor.user_id,
                   requester_email=actor.email, plan=plan or Plan(steps=()), created_at=now, state=state,
                   updated_at=now, decided_by=decided_by, correlation_id=request_id,
                   subject=kind.subject())


def add_all(stack: Stack, requests: list[Request]) -> None:
    with stack.backend.uow() as uow:
        for request in requests:
            uow.requests.add(request)
        uow.commit()


def test_an_open_request_is_found_behind_any_number_of_newer_ones(db_url: str) -> None:
    stack = build_stack(db_url)
    busy = stored(stack, RequestState.PENDING, TEAM_A, "RBUSY00")
    # 501 newer open requests about other workspaces: the old check read only the newest 500.
    others = [stored(stack, RequestState.PENDING, kinds.WorkspaceCreate(f"ws-{n}", BOB.email), f"RO{n:05d}")
              for n in range(501)]
    add_all(stack, [busy, *others])
    # Told as /kf requests would show it: a stranger learns that it exists, not its id ...
    with pytest.raises(services.SubjectBusy, match="Another person's request") as stranger:
        services.submit(stack.core, ALICE, TEAM_A, idempotency_key="k")
    assert "RBUSY00" not in stranger.value.user_message
    # ... its requester gets its id and how to withdraw it; an admin, its id and whose it is.
    own = r"You already asked for this: `RBUSY00`.*/kf cancel RBUSY00"
    with pytest.raises(services.SubjectBusy, match=own):
        services.submit(stack.core, BOB, TEAM_A, idempotency_key="k2")
    admin = rf"`RBUSY00` by .*{BOB.user_id}.* still open \(pending\)"
    with pytest.raises(services.SubjectBusy, match=admin):
        services.submit(stack.core, ADMIN, TEAM_A, idempotency_key="k3")


def test_quota_facts_read_every_applied_change_of_the_workspace(db_url: str) -> None:
    stack = build_stack(db_url)
    make_workspace(stack, "team-a", ALICE)

    def quota(workspace: str, cpu: str, request_id: str, decided_by: str | None) -> Request:
        plan = Plan(steps=(Step(key="q", action="kubeflow.quota", params={"profile": workspace,
                                                                          "hard": {"cpu": cpu}}),))
        return stored(stack, RequestState.SUCCEEDED, kinds.QuotaChange(workspace, cpu=cpu), request_id,
                      plan=plan, decided_by=decided_by)

    # An admin's decision, then the owner's self-service raise (auto-applied: decided by the bot).
    mine = [quota("team-a", "16", "RA00001", "UADMIN"), quota("team-a", "20", "RA00002", SYSTEM.user_id)]
    # 201 newer applied changes of another workspace: the old lookups read only the newest 200.
    add_all(stack, [*mine, *(quota("team-b", "2", f"RB{n:05d}", "UADMIN") for n in range(201))])
    facts = stack.backend.facts.workspace("team-a")
    assert facts is not None
    assert facts.quota == {"cpu": "20"}, "the last applied change, not the Profile's first quota"
    assert facts.quota_baseline["cpu"] == "16", "the last change an admin decided"


@pytest.mark.postgres
@pytest.mark.parametrize("first, second", [(ALICE, BOB), (SYSTEM, SYSTEM), (ALICE, SYSTEM)],
                         ids=["people", "expiries", "auto-approved-and-expiry"])
def test_two_concurrent_submissions_about_one_subject_record_one(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, first: Actor, second: Actor
) -> None:
    """Both submissions pass the check before either inserts (the barrier makes sure): the unique
    index lets one commit and the other gets the same SubjectBusy, naming the winner."""
    stack = build_stack(postgres_url)
    make_workspace(stack, "team-a", ALICE)
    # The owner's share applies at once (approved at insert), as do the bot's expiries.
    share = kinds.Share("team-a", "carol@example.com", "view")
    barrier = threading.Barrier(2)
    check = services._refuse_open_duplicate

    def check_then_wait(*args: Any, **kwargs: Any) -> None:
        check(*args, **kwargs)
        barrier.wait(timeout=10)

    monkeypatch.setattr(services, "_refuse_open_duplicate", check_then_wait)
    outcomes: dict[str, str] = {}

    def submit(actor: Actor, name: str) -> None:
        try:
            if actor is SYSTEM:
                decision = services.AutoDecision("test", "the grant expired", name)
                outcomes[name] = services._record(stack.core, SYSTEM, share, name, decision, name).request.id
            else:
                outcomes[name] = services.submit(stack.core, actor, share, idempotency_key=name).request.id
        except services.SubjectBusy as exc:
            outcomes[name] = exc.user_message

    threads = [threading.Thread(target=submit, args=(a, f"t{n}")) for n, a in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    with stack.backend.uow() as uow:
        recorded = uow.requests.list(subject=share.subject())
    assert len(recorded) == 1, outcomes
    winner = recorded[0].id
    losers = [outcome for outcome in outcomes.values() if outcome != winner]
    assert winner in outcomes.values() and len(losers) == 1 and "still open" in losers[0], outcomes


def test_a_pending_request_does_not_hold_off_the_bots_own_but_one_at_work_does(db_url: str) -> None:
    stack = build_stack(db_url)
    make_workspace(stack, "team-a", ALICE)
    share = kinds.Share("team-a", "carol@example.com", "view")
    add_all(stack, [stored(stack, RequestState.PENDING, share, "RPEND01")])

    def expiry(key: str) -> Request:
        decision = services.AutoDecision("test", "the grant expired", key)
        return services._record(stack.core, SYSTEM, share, key, decision, key).request

    first = expiry("timer-1")
    assert first.state is RequestState.APPROVED
    busy_text = f"{first.id} about the same thing is still open \\(approved\\)"
    with pytest.raises(services.SubjectBusy, match=busy_text):
        expiry("timer-2")
    with pytest.raises(services.SubjectBusy, match="still open"):
        services.submit(stack.core, BOB, share, idempotency_key="person")


# -- migration 0002 --------------------------------------------------------------------------------


def test_migration_0002_fills_subjects_and_gives_each_slot_to_the_oldest(db_url: str) -> None:
    db = Database(db_url, audit_key=AUDIT_KEY)
    old = sa.table(  # the table as revision 0001 made it
        "requests", sa.column("args", sa.JSON()), sa.column("plan", sa.JSON()),
        sa.column("created_at", store.UtcDateTime()),
        *(sa.column(c) for c in ("id", "kind", "requester_id", "requester_email", "state", "version",
                                 "plan_digest", "correlation_id")))
    share = {"workspace": "team-a", "user": "carol@example.com", "role": "view", "duration": None}
    rows = [  # (id, kind, args, requester, state), oldest first
        ("R1", "share", share, "UBOB", "pending"),
        ("R2", "share", share, "UALICE", "pending"),  # raced past the old check: a duplicate
        ("R3", "share", share, "kfbot", "applying"),
        ("R4", "quota", {"workspace": "team-a", "cpu": "8"}, "UALICE", "succeeded"),
        ("R5", "token", {"workspace": "team-a"}, "UALICE", "approved"),
        ("R6", "workspace.delete", {"name": "team-a", "purge_data": False}, "UALICE", "approved"),
        ("R7", "token.revoke", {"token_id": "RTOK"}, "UALICE", "failed"),
    ]
    try:
        db.migrate("0001")
        with db.engine.begin() as conn:
            for n, (rid, kind, args, who, state) in enumerate(rows):
                conn.execute(sa.insert(old).values(
                    id=rid, kind=kind, args=args, requester_id=who, requester_email="x@example.com",
                    state=state, version=1, plan={"steps": []}, plan_digest="d", correlation_id=rid,
                    created_at=datetime(2026, 1, 1, 9, n, tzinfo=UTC)))
        db.migrate()
        with db.reader() as conn:
            got = {r.id: (r.subject, r.holds_open, r.holds_work) for r in conn.execute(
                sa.select(store.requests.c.id, store.requests.c.subject, store.requests.c.holds_open,
                          store.requests.c.holds_work))}
        grant = "grant:team-a:carol@example.com"
        assert got == {
            "R1": (grant, True, False),
            "R2": (grant, False, False),
            "R3": (grant, False, True),
            "R4": ("quota:team-a", False, False),
            "R5": (None, False, False),
            "R6": ("workspace:team-a", True, True),
            "R7": ("token:RTOK", False, False),
        }
        db.downgrade("0001")
        with db.reader() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("requests")}
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("requests")}
        assert not {"holds_open", "holds_work"} & columns
        assert not {"ix_requests_subject", "uq_requests_subject_open", "uq_requests_subject_work"} & indexes
        db.migrate()
    finally:
        db.dispose()
