"""The approval gate as a model: random sequences of every command, button, modal and timer, by
every kind of actor, against the real services, engine, store and audit log (SQLite and
PostgreSQL), with the invariants checked after every step.

The oracle is written here, independently of ``handlers.policy``: who is an admin, who a request is
for (owner, grantee, a workspace's people), and so who may decide it. What the product does is read
back from the audit log (only rows whose MAC checks out) and the registry, never from the model.

Invariants, after every step:

1. nothing reached applying (``step.started``) without an authorization of the digest it applied:
   an approval by an admin the oracle permits, or an auto-approval / system decision naming its rule;
2. every decision the product accepted, the oracle permits;
3. no token outlives the access that allowed it (a removed grant, a deleted workspace);
4. every state change is in the audit log (replaying the trail through ``TRANSITIONS`` gives the
   stored state), except where a test edited the row by hand, which must then be refused;
5. the audit chain verifies.

Every later request kind, button or timer joins this machine (see docs/SECURITY.md).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from handlers import errors, kinds, offboard, services
from handlers.model import SYSTEM, TRANSITIONS, Actor, Event, EventType, RequestState
from handlers.ports import Discovery, FoundObject
from handlers.settings import CoreSettings, PolicySettings, WorkspaceDefaults
from provisioning.store import Database
from tests.fakes.db_fixtures import _empty_tables
from tests.fakes.figures import report
from tests.harness import AUDIT_KEY, Stack, build_stack

ALICE = Actor("UALICE", "alice@example.com")
BOB = Actor("UBOB", "bob@example.com")
CAROL = Actor("UCAROL", "carol@example.com")
ADMIN = Actor("UADMIN", "admin@example.com", is_admin=True)
ADMIN_OWNER = Actor("UADMINO", "admino@example.com", is_admin=True)
"""An admin who owns a workspace and works in another."""
ADMIN_MAPPED = Actor("UADMINM", "adminm@slack.example.com", is_admin=True)
ADMIN_MAPPED_ID = "adminm@kf.example.com"
"""The Kubeflow id of ``ADMIN_MAPPED`` (``KFBOT_USER_ID_MAP``)."""
CLEANUP_TARGETS = frozenset({"bucket:s3-an2-aic-dev-gone", "nodegroup:ng-gone-standard"})

ACTORS = {
    "requester": ALICE,
    "grantee": BOB,
    "stranger": CAROL,
    "admin": ADMIN,
    "admin-who-benefits": ADMIN_OWNER,
    "mapped-admin": ADMIN_MAPPED,
}
ADMINS = {a.user_id for a in ACTORS.values() if a.is_admin}
SETTINGS = CoreSettings(
    policy=PolicySettings(admin_users=frozenset(ADMINS)),
    workspace=WorkspaceDefaults(user_id_map={ADMIN_MAPPED.email: ADMIN_MAPPED_ID}),
)
MAX_NODES = SETTINGS.workspace.max_nodes
LEGACY = "legacy-ws"
"""A workspace made by hand (its Profile owned by Bob) that an admin may adopt (issue 12)."""
MADE = ("team-a", "admin-ws")
WORKSPACES = (*MADE, LEGACY)
COST_KINDS = (kinds.NotebookStop.KIND, kinds.GpuScale.KIND, kinds.GpuHold.KIND, kinds.WorkspaceResize.KIND)
PEOPLE = (ALICE.email, BOB.email, CAROL.email, ADMIN_OWNER.email, ADMIN_MAPPED.email, ADMIN_MAPPED_ID)


def canonical(email: str) -> str:
    return ADMIN_MAPPED_ID if email == ADMIN_MAPPED.email else email


# What the state machine explored, reported at the end of the session (tests/conftest.py).
EXPLORED: Counter[str] = Counter()
CELLS: set[tuple[str, str]] = set()
ACTIONS_PER_ACTOR = 23  # eighteen kinds to submit; approve, reject, cancel, retry, show token
SYSTEM_CELLS = 6  # the engine, timers, offboarding, three hand edits of the database


def _report() -> None:
    report(
        "approval-gate state machine",
        f"{EXPLORED['sequences']} sequences, {EXPLORED['steps']} steps, "
        f"{len(CELLS)} of {len(ACTORS) * ACTIONS_PER_ACTOR + SYSTEM_CELLS} actor x action cells",
    )


@dataclass
class Oracle:
    """The model's own view of who works where, built from what it saw succeed."""

    owners: dict[str, str] = field(default_factory=dict)
    contributors: dict[str, dict[str, str]] = field(default_factory=dict)
    tampered: set[str] = field(default_factory=set)
    max_nodes: dict[str, int] = field(default_factory=dict)
    """The largest node count an admin approved for a workspace's nodegroups (made, resized or
    scaled above it), as the registry records what succeeded."""

    def people(self, workspace: str) -> set[str]:
        owner = self.owners.get(workspace)
        return ({owner} if owner else set()) | set(self.contributors.get(workspace, {}))

    def beneficiaries(self, kind: str, args: dict[str, object], requester: str) -> set[str]:
        out = {canonical(requester)}
        if kind == kinds.WorkspaceCreate.KIND:
            out.add(canonical(str(args["owner"])))
        for_user = (kinds.Share.KIND, kinds.Unshare.KIND, kinds.PasswordResetFor.KIND, kinds.LoginRemove.KIND)
        if kind in for_user:
            out.add(canonical(str(args["user"])))
        if kind == kinds.WorkspaceTransfer.KIND:
            out.add(canonical(str(args["to"])))
        if kind == kinds.WorkspaceAdopt.KIND:  # who gains it and who held it by hand
            out |= {canonical(BOB.email), *([canonical(str(args["owner"]))] if args.get("owner") else [])}
        workspace_kinds = (kinds.QuotaChange.KIND, kinds.WorkspaceDelete.KIND, kinds.WorkspacePin.KIND)
        if kind in (*workspace_kinds, *COST_KINDS):
            out |= self.people(str(args.get("workspace") or args.get("name")))
        return out

    def may_apply_alone(self, actor: Actor, kind: str, args: dict[str, object]) -> bool:
        """The cost kinds' rule, written here independently of ``handlers.policy``: the workspace's
        owner or an admin stops, holds and scales down at once, and scales up at once only within
        the approved maximum; a resize always waits for an admin. The admin branch holds only for
        an admin who is none of the workspace's people (docs/SECURITY.md invariant 3)."""
        if kind == kinds.WorkspaceResize.KIND:
            return False
        ws = str(args["workspace"])
        owner = self.owners.get(ws)
        me = canonical(actor.email)
        # The owner's own self-service; an admin only for a workspace they are no one in (an
        # admin-contributor's request waits for another admin, like any request for them).
        if not ((owner is not None and me == owner) or (actor.is_admin and me not in self.people(ws))):
            return False
        nodes = int(str(args.get("nodes", 0)))
        return (
            kind != kinds.GpuScale.KIND
            or nodes == 0
            or nodes <= self.max_nodes.get(str(args["workspace"]), -1)
        )

    def may_decide(self, actor: Actor, kind: str, args: dict[str, object], requester: Actor) -> bool:
        return (
            actor.is_admin
            and actor.user_id != requester.user_id
            and canonical(actor.email) not in self.beneficiaries(kind, args, requester.email)
        )


@dataclass
class _HandMade:
    """Discovery over the dry-run stack: the hand-made Profile ``LEGACY`` owned by Bob, managed once
    the registry records it (as the live discovery reads the registry)."""

    stack: Stack

    def discover(self, namespace: str) -> Discovery:
        with self.stack.backend.db.uow() as uow:
            row = uow.registry.get_workspace(namespace)
        managed = row.name if row is not None and row.deleted_at is None else None
        profile = FoundObject(
            "kubeflow.profile", f"Profile/{namespace}", namespace,
            {"name": namespace, "owner": BOB.email, "hard": {"cpu": "4"}, "labels": {}}, "name",
        )
        exists = namespace == LEGACY
        owner = BOB.email if exists else None
        return Discovery(namespace, exists, owner, managed, (profile,) if exists else ())


class GateMachine(RuleBasedStateMachine):
    database_url: str = ""
    template: Path | None = None

    def __init__(self) -> None:
        super().__init__()
        self.oracle = Oracle()
        stack = self._fresh_stack()
        # Request ids in submission order: hypothesis replays a sequence only if it draws the same way.
        ids = iter(range(1, 10_000))
        stack.core = dataclasses.replace(stack.core, new_id=lambda: f"R{next(ids):05d}")
        self.stack = stack
        self.requests: list[str] = []
        self.requester_of: dict[str, Actor] = {}

    def _fresh_stack(self) -> Stack:
        url = type(self).database_url
        if url.startswith("sqlite"):
            assert self.template is not None
            shutil.copyfile(self.template, url.removeprefix("sqlite:///"))
        else:
            db = Database(url, audit_key=AUDIT_KEY)
            _empty_tables(db)
            db.dispose()
        stack = build_stack(url, core=SETTINGS, migrate=False)
        stack.backend.facts.discoverer = _HandMade(stack)  # type: ignore[attr-defined]
        # What the live drift report would list, so clean-ups reach the gate (dry run has none).
        stack.backend.facts.orphans = lambda: CLEANUP_TARGETS  # type: ignore[attr-defined]
        return stack

    def teardown(self) -> None:
        self.stack.backend.db.dispose()

    # -- helpers -----------------------------------------------------------------------------------
    def _cell(self, who: str, action: str) -> None:
        CELLS.add((who, action))
        EXPLORED["steps"] += 1
        _report()

    def _submit(self, who: str, kind: kinds.RequestKind) -> None:
        self._cell(who, f"submit {kind.KIND}")
        actor = ACTORS[who]
        try:
            result = services.submit(self.stack.core, actor, kind, idempotency_key=None)
        except errors.KfError:
            return
        # KFBOT_MAX_NODES bounds every node count, whoever asks: refused before anything is recorded.
        assert not (isinstance(kind, kinds.GpuScale) and kind.nodes > SETTINGS.workspace.max_nodes), (
            f"{who}'s gpu up {kind.nodes} was recorded above KFBOT_MAX_NODES"
        )
        if not result.duplicate:
            self.requests.append(result.request.id)
            self.requester_of[result.request.id] = actor
            request = result.request
            if request.kind in COST_KINDS:
                alone = request.state is RequestState.APPROVED
                assert alone == self.oracle.may_apply_alone(actor, request.kind, dict(request.args)), (
                    f"{who}'s {request.kind} {dict(request.args)} applied alone={alone}"
                )
            if request.kind == kinds.WorkspaceTransfer.KIND:
                # A transfer gives someone a workspace: an admin decides, whoever asks (the owner or
                # an admin; nobody else may even ask).
                assert request.state is RequestState.PENDING, f"{who}'s transfer applied alone"
                owner = self.oracle.owners.get(str(request.args["name"]))
                assert actor.is_admin or canonical(actor.email) == owner, f"{who} filed a transfer"
            if request.kind == kinds.PasswordResetFor.KIND:
                # Only an admin may ask; it applies alone unless the login is the admin's own.
                assert actor.is_admin, f"{who} filed a password reset"
                alone = request.state is RequestState.APPROVED
                theirs = canonical(actor.email) == canonical(str(request.args["user"]))
                assert alone == (not theirs), f"{who}'s reset of {request.args['user']} applied alone={alone}"
            if request.kind == kinds.LoginRemove.KIND:  # only an admin asks; another admin decides
                alone = request.state is not RequestState.PENDING
                assert actor.is_admin and not alone, f"{who} removed a login alone"
            if request.kind == kinds.WorkspaceAdopt.KIND:  # only an admin asks; an admin always decides
                assert actor.is_admin and request.state is RequestState.PENDING, f"{who} adopted alone"
            if request.kind in COST_KINDS:  # who may not even ask is refused before anything
                owner = self.oracle.owners.get(str(request.args.get("workspace") or request.args["name"]))
                assert actor.is_admin or canonical(actor.email) == owner, f"{who} filed {request.kind}"

    def _apply_succeeded(self) -> None:
        """Bring the oracle's view of owners and grants up to date with what succeeded."""
        with self.stack.backend.db.uow() as uow:
            for ws in uow.registry.list_workspaces():
                self.oracle.owners[ws.name] = ws.owner
                self.oracle.contributors[ws.name] = {g.user: g.role for g in uow.registry.grants(ws.name)}
                sizes = [
                    int(e["params"]["scaling"]["maxSize"])  # type: ignore[index, call-overload]
                    for e in ws.created.values()
                    if e["action"] == "aws.nodegroup"
                ]
                if sizes:
                    self.oracle.max_nodes[ws.name] = max(sizes)
            for name in list(self.oracle.owners):
                if uow.registry.get_workspace(name) is None:
                    self.oracle.owners.pop(name)
                    self.oracle.contributors.pop(name, None)

    # -- setup: two workspaces, one owned by an admin ------------------------------------------------
    @initialize()
    def workspaces(self) -> None:
        EXPLORED["sequences"] += 1
        for name, owner, gpu in (("team-a", ALICE.email, 1), ("admin-ws", ADMIN_OWNER.email, 0)):
            rid = services.submit(
                self.stack.core, CAROL, kinds.WorkspaceCreate(name, owner, gpu=gpu), idempotency_key=None
            ).request.id
            services.decide(self.stack.core, ADMIN, rid, approve=True, decision_key=f"setup:{rid}")
        self.stack.run()
        # An admin who works in a workspace (not its owner): their own stop, hold or scale there is
        # for them, so it waits for another admin.
        services.submit(
            self.stack.core,
            ALICE,
            kinds.Share("team-a", ADMIN_OWNER.email, "edit", None),
            idempotency_key=None,
        )
        self.stack.run()
        self._apply_succeeded()
        assert ADMIN_OWNER.email in self.oracle.contributors["team-a"]

    # -- commands ----------------------------------------------------------------------------------
    who = st.sampled_from(sorted(ACTORS))
    workspace = st.sampled_from(WORKSPACES)
    person = st.sampled_from(PEOPLE)

    @rule(who=who, ws=workspace, user=person, role=st.sampled_from(kinds.ROLES), timed=st.booleans())
    def share(self, who: str, ws: str, user: str, role: str, timed: bool) -> None:
        self._submit(who, kinds.Share(ws, user, role, timedelta(hours=1) if timed else None))

    @rule(who=who, ws=workspace, user=person)
    def unshare(self, who: str, ws: str, user: str) -> None:
        self._submit(who, kinds.Unshare(ws, user))

    @rule(who=who, ws=workspace, gpu=st.integers(0, 64), timed=st.booleans())
    def quota(self, who: str, ws: str, gpu: int, timed: bool) -> None:
        self._submit(who, kinds.QuotaChange(ws, gpu=str(gpu), duration=timedelta(hours=2) if timed else None))

    @rule(who=who, ws=workspace, read_only=st.booleans())
    def token(self, who: str, ws: str, read_only: bool) -> None:
        self._submit(who, kinds.TokenIssue(ws, timedelta(hours=1), read_only=read_only))

    @rule(who=who, data=st.data())
    def revoke(self, who: str, data: st.DataObject) -> None:
        with self.stack.backend.db.uow() as uow:
            active = sorted(t.token_id for ws in WORKSPACES for t in uow.registry.tokens_in(ws))
        if active:
            self._submit(who, kinds.TokenRevoke(data.draw(st.sampled_from(active))))

    @rule(who=who, owner=person, name=st.sampled_from(("new-ws", "team-a")))
    def create(self, who: str, owner: str, name: str) -> None:
        self._submit(who, kinds.WorkspaceCreate(name, owner))

    @rule(who=who, ws=workspace)
    def delete(self, who: str, ws: str) -> None:
        self._submit(who, kinds.WorkspaceDelete(ws, ws))

    @rule(who=who, ws=workspace)
    def pin(self, who: str, ws: str) -> None:
        self._submit(who, kinds.WorkspacePin(ws))

    @rule(who=who, user=person)
    def password_reset(self, who: str, user: str) -> None:
        self._submit(who, kinds.PasswordResetFor(user))

    @rule(who=who, user=person)
    def login_remove(self, who: str, user: str) -> None:
        self._submit(who, kinds.LoginRemove(user))

    # -- cost control (#11): the same requests a report's buttons file ------------------------------
    @rule(who=who, ws=workspace, notebook=st.sampled_from(("nb1", "nb2")))
    def stop_notebook(self, who: str, ws: str, notebook: str) -> None:
        self._submit(who, kinds.NotebookStop(ws, notebook))

    @rule(who=who, ws=workspace, nodes=st.sampled_from((0, 1, 2, 3, 8, MAX_NODES, MAX_NODES + 1, 100)))
    def scale(self, who: str, ws: str, nodes: int) -> None:
        self._submit(who, kinds.GpuScale(ws, nodes))

    @rule(who=who, ws=workspace, hours=st.sampled_from((4, 24, 168)))
    def hold(self, who: str, ws: str, hours: int) -> None:
        self._submit(who, kinds.GpuHold(ws, f"workspace:{ws}", duration=timedelta(hours=hours)))

    @rule(who=who, ws=workspace, high=st.sampled_from((1, 4)))
    def resize(self, who: str, ws: str, high: int) -> None:
        self._submit(who, kinds.WorkspaceResize(ws, 0, high))

    # -- offboarding (#12) ------------------------------------------------------------------------
    @rule(who=who, ws=workspace, to=person)
    def transfer(self, who: str, ws: str, to: str) -> None:
        self._submit(who, kinds.WorkspaceTransfer(ws, to))

    @rule(user=st.sampled_from((ALICE.email, BOB.email)))
    def person_leaves(self, user: str) -> None:
        """Slack says ``user`` was deactivated: offboarding files the bot's own requests (unshares
        and token revokes applied under ``system:offboard``, transfers waiting for an admin)."""
        self._cell("system", "offboarding")
        people = [p for p in self.stack.backend.people() if p.user == user]
        for person in people:
            slack_id = "U" + user.split("@", maxsplit=1)[0].upper()
            answer = offboard.SlackAnswer(by_id=True, slack_id=slack_id, deleted=True)
            result = offboard.offboard(self.stack.core, person, answer)
            for rid in result.filed:
                self.requests.append(rid)
                self.requester_of[rid] = SYSTEM
                request = self.stack.request(rid)
                if request.kind in (kinds.WorkspaceTransfer.KIND, kinds.LoginRemove.KIND):
                    assert request.state is RequestState.PENDING, f"offboarding {request.kind} alone"
                else:
                    assert request.kind in (kinds.Unshare.KIND, kinds.TokenRevoke.KIND), request.kind

    # -- adoption (issue 12): the command and the scan's Adopt button file the same request ----------
    @rule(who=who, owner=st.sampled_from((None, *PEOPLE)))
    def adopt(self, who: str, owner: str | None) -> None:
        self._submit(who, kinds.WorkspaceAdopt(LEGACY, owner))

    # -- drift (#12): Adopt into the record (a system decision) and Clean up --------------------------
    @rule(who=who, ws=workspace, user=person, role=st.sampled_from(kinds.ROLES))
    def adopt_drift(self, who: str, ws: str, user: str, role: str) -> None:
        """Only an admin who is none of the workspace's people nor the grantee adopts; what is
        adopted is applied as ``system:drift.adopt`` (and then counts as a recorded grant)."""
        self._cell(who, "adopt drift")
        actor = ACTORS[who]
        if canonical(user) == self.oracle.owners.get(ws):
            return  # the drift report never lists the owner as a contributor
        benefits = canonical(actor.email) in self.oracle.people(ws) | {canonical(user)}
        permitted = actor.is_admin and not benefits
        key = f"contributor-added:{ws}:{user}"
        kind = kinds.DriftAdopt(key, ws, "grant", actor.email, user=user, role=role)
        try:
            result = services.adopt_drift(
                self.stack.core, actor, kind, idempotency_key=f"adopt:{EXPLORED['steps']}:{who}"
            )
        except errors.Forbidden:
            assert not permitted, f"{who} was refused adopting {user} into {ws}"
            return
        except errors.KfError:
            return  # busy subject, workspace gone
        assert permitted, f"{who} adopted {user} into {ws}"
        request = result.request
        assert request.requester_id == SYSTEM.user_id and request.state is RequestState.APPROVED
        self.requests.append(request.id)
        self.requester_of[request.id] = SYSTEM

    @rule(who=who, what=st.sampled_from(sorted(CLEANUP_TARGETS)))
    def clean_up(self, who: str, what: str) -> None:
        before = len(self.requests)
        self._submit(who, kinds.DriftCleanup(what, workspace="gone-ws"))
        if len(self.requests) > before:
            request = self.stack.request(self.requests[-1])
            assert ACTORS[who].is_admin, f"{who} filed a clean-up"
            assert request.state is RequestState.PENDING, "a clean-up applied without an admin"

    # -- buttons and modals ------------------------------------------------------------------------
    def _pick(self, data: st.DataObject, *, pending: bool = False) -> str | None:
        choices = [
            r for r in self.requests if not pending or self.stack.request(r).state is RequestState.PENDING
        ]
        return data.draw(st.sampled_from(choices)) if choices else None

    @rule(who=who, data=st.data(), approve=st.booleans())
    def decide(self, who: str, data: st.DataObject, approve: bool) -> None:
        rid = self._pick(data, pending=True)
        if rid is None:
            return
        self._cell(who, "approve" if approve else "reject")
        actor = ACTORS[who]
        request = self.stack.request(rid)
        permitted = self.oracle.may_decide(actor, request.kind, dict(request.args), self.requester_of[rid])
        try:
            services.decide(
                self.stack.core,
                actor,
                rid,
                approve=approve,
                reason="no",
                decision_key=f"{rid}:{who}:{approve}",
            )
        except errors.KfError:
            return
        assert permitted, (
            f"{who} decided {request.kind} {dict(request.args)} by {self.requester_of[rid].email}"
        )

    @rule(who=who, data=st.data())
    def cancel(self, who: str, data: st.DataObject) -> None:
        rid = self._pick(data)
        if rid is not None:
            self._cell(who, "cancel")
            before = self.stack.request(rid).state
            try:
                services.cancel(self.stack.core, ACTORS[who], rid)
            except errors.KfError:
                return
            assert ACTORS[who].is_admin or ACTORS[who] == self.requester_of[rid]
            assert before in (RequestState.PENDING, RequestState.APPROVED), before

    @rule(who=who, data=st.data())
    def retry(self, who: str, data: st.DataObject) -> None:
        rid = self._pick(data)
        if rid is not None:
            self._cell(who, "retry")
            before = self.stack.request(rid).state
            try:
                services.retry(self.stack.core, ACTORS[who], rid)
            except errors.KfError:
                return
            # A retry re-runs work that ran under an approval and stopped; it never decides.
            assert ACTORS[who].is_admin and before in (RequestState.FAILED, RequestState.NEEDS_ATTENTION), (
                before
            )

    @rule(who=who, data=st.data())
    def show_token(self, who: str, data: st.DataObject) -> None:
        rid = self._pick(data)
        if rid is None:
            return
        self._cell(who, "show token")
        try:
            services.reveal_token(self.stack.core, ACTORS[who], rid)
        except errors.KfError:
            return
        assert self.stack.core.facts.token_owner(rid) is not None, "a token shown for a revoked account"

    # -- the worker, timers, and someone with write access to the database ---------------------------
    @rule()
    def work(self) -> None:
        self._cell("system", "engine")
        self.stack.run()
        self._apply_succeeded()

    @rule(hours=st.sampled_from((1, 3, 80)))
    def time_passes(self, hours: int) -> None:
        self._cell("system", "timers")
        self.stack.clock.advance(timedelta(hours=hours))
        self.stack.backend.sweep_timers(lambda k, r, p: services.handle_timer(self.stack.core, k, r, p))

    @rule(
        data=st.data(),
        state=st.sampled_from(("approved", "applying", "compensating")),
        finished=st.booleans(),
    )
    def edit_the_database(self, data: st.DataObject, state: str, finished: bool) -> None:
        """Someone with write access to the database (not the audit key) sets a request's state:
        a pending one forward, or a finished one back to replay it (its step records deleted);
        then the worker runs."""
        wanted = (RequestState.SUCCEEDED, RequestState.FAILED) if finished else (RequestState.PENDING,)
        candidates = [r for r in self.requests if self.stack.request(r).state in wanted]
        if not candidates:
            return
        self._edit_and_work(data.draw(st.sampled_from(candidates)), state)

    def _edit_and_work(self, rid: str, state: str) -> None:
        self._cell("database writer", f"set {state}")
        with self.stack.backend.db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE requests SET state = :s, claimed_by = NULL, lease_until = NULL WHERE id = :id"
                ),
                {"s": state, "id": rid},
            )
            conn.execute(sa.text("DELETE FROM step_outcomes WHERE request_id = :id"), {"id": rid})
        self.oracle.tampered.add(rid)
        self.stack.run()
        # The worker may have applied other requests waiting in the queue too (an owner's share
        # with an admin): the oracle must see them, or it would judge the next request against
        # people who no longer match the registry (an admin-contributor taken for an outsider).
        self._apply_succeeded()

    # -- invariants --------------------------------------------------------------------------------
    def _trails(self) -> Iterator[tuple[str, list[Event]]]:
        with self.stack.backend.uow() as uow:
            trails = [(rid, uow.audit.trail(rid)) for rid in self.requests]
        yield from trails

    @invariant()
    def applied_only_when_authorized(self) -> None:
        for rid, trail in self._trails():
            authorized: set[str] = set()
            for event in trail:
                # An approval covers one run: a finished request is not applied again.
                if event.type in (EventType.PLAN_CHANGED, EventType.SUCCEEDED, EventType.REJECTED):
                    authorized.clear()
                elif event.type is EventType.APPROVED:
                    assert event.actor in ADMINS and event.actor != self.requester_of[rid].user_id
                    authorized.add(str(event.data["plan_digest"]))
                elif event.type is EventType.AUTO_APPROVED:
                    assert event.actor == SYSTEM.user_id and event.data.get("rule"), event.data
                    authorized.add(str(event.data["plan_digest"]))
                elif event.type is EventType.APPLY_STARTED:
                    assert event.data["plan_digest"] in authorized, f"{rid} applied without an approval"
                elif event.type in (EventType.STEP_STARTED, EventType.STEP_UNDONE):
                    assert authorized, f"{rid} ran a step without an approval"

    @invariant()
    def no_token_outlives_its_access(self) -> None:
        with self.stack.backend.db.uow() as uow:
            live = {w.name for w in uow.registry.list_workspaces()}
            for ws in (*WORKSPACES, "new-ws"):
                for token in uow.registry.tokens_in(ws):
                    assert ws in live, f"token {token.token_id} outlived workspace {ws}"
            for rid in self.requests:
                request = uow.requests.get(rid)
                if request.kind != kinds.Unshare.KIND or request.state is not RequestState.SUCCEEDED:
                    continue
                user = canonical(str(request.args["user"]))
                for token in uow.registry.tokens_in(str(request.args["workspace"])):
                    issued = uow.requests.get(token.token_id)
                    if canonical(str(token.holder)) == user and issued.created_at <= request.updated_at:
                        raise AssertionError(f"token {token.token_id} survived unshare {rid}")

    @invariant()
    def every_transition_is_audited(self) -> None:
        moves = {
            EventType.CREATED: RequestState.PENDING,
            EventType.APPROVED: RequestState.APPROVED,
            EventType.AUTO_APPROVED: RequestState.APPROVED,
            EventType.REJECTED: RequestState.REJECTED,
            EventType.CANCELLED: RequestState.CANCELLED,
            EventType.EXPIRED: RequestState.EXPIRED,
            EventType.PLAN_CHANGED: RequestState.PENDING,
            EventType.APPLY_STARTED: RequestState.APPLYING,
            EventType.SUCCEEDED: RequestState.SUCCEEDED,
            EventType.COMPENSATING: RequestState.COMPENSATING,
            EventType.FAILED: RequestState.FAILED,
            EventType.NEEDS_ATTENTION: RequestState.NEEDS_ATTENTION,
            EventType.REFUSED: RequestState.NEEDS_ATTENTION,
            EventType.RETRIED: RequestState.APPROVED,
        }
        for rid, trail in self._trails():
            stored = self.stack.request(rid).state
            state: RequestState | None = None
            for event in trail:
                target = moves.get(event.type)
                if target is None:
                    continue
                if rid in self.oracle.tampered and event.type is EventType.REFUSED:
                    state = target  # the hand-set state is not in the log; the refusal is
                    continue
                assert state is None or target in TRANSITIONS[state], f"{rid}: {state} -> {target} in the log"
                state = target
            if rid in self.oracle.tampered and stored is not RequestState.NEEDS_ATTENTION:
                continue  # edited and not worked on yet: the engine has not looked at it
            assert state is stored, f"{rid} is {stored} but its audit trail ends in {state}"

    @invariant()
    def no_approved_maximum_above_the_node_cap(self) -> None:
        assert all(n <= MAX_NODES for n in self.oracle.max_nodes.values()), self.oracle.max_nodes

    @invariant()
    def the_chain_verifies(self) -> None:
        result = self.stack.backend.audit_verify()
        assert result.ok, result.problem


def _run(machine: type[GateMachine], url: str, template: Path | None, examples: int) -> None:
    machine.database_url, machine.template = url, template
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.fixture
def sqlite_template(_migrated_sqlite_file: Path, tmp_path: Path) -> tuple[str, Path]:
    return f"sqlite:///{tmp_path / 'model.db'}", _migrated_sqlite_file


@pytest.mark.timeout(900)  # a failure shrinks for a while before it is reported
def test_gate_model_on_sqlite(sqlite_template: tuple[str, Path]) -> None:
    url, template = sqlite_template
    _run(GateMachine, url, template, examples=30)


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_gate_model_on_postgres(_migrated_postgres_url: str) -> None:
    _run(GateMachine, _migrated_postgres_url, None, examples=15)


def test_the_oracle_sees_what_the_worker_applied_after_a_database_edit(
    sqlite_template: tuple[str, Path],
) -> None:
    """A sequence the machine found: the owner shares ``team-a`` with the mapped admin (applies
    alone, waits for the worker), the worker runs only after someone edits the database, and the
    mapped admin then snoozes ``team-a``'s GPUs. They work there now (their Kubeflow id is a
    contributor), so the hold waits for another admin (invariant 3); the oracle used to miss the
    share and expected it to apply alone."""
    GateMachine.database_url, GateMachine.template = sqlite_template
    machine = GateMachine()
    try:
        machine.workspaces()
        machine.share("requester", "team-a", ADMIN_MAPPED.email, "edit", False)
        machine.create("stranger", BOB.email, "new-ws")  # pending: something for the edit to pick
        shared, pending = machine.requests[-2:]
        assert machine.stack.request(shared).state is RequestState.APPROVED
        machine._edit_and_work(pending, "approved")
        assert machine.stack.request(shared).state is RequestState.SUCCEEDED
        machine.hold("mapped-admin", "team-a", 4)  # checks the oracle's verdict against the product's
        assert ADMIN_MAPPED_ID in machine.oracle.people("team-a")
        hold = machine.stack.request(machine.requests[-1])
        assert hold.kind == kinds.GpuHold.KIND and hold.state is RequestState.PENDING
        machine.applied_only_when_authorized()
        machine.every_transition_is_audited()
        machine.the_chain_verifies()
    finally:
        machine.teardown()


def test_an_expired_grant_counts_until_its_unshare_applies(sqlite_template: tuple[str, Path]) -> None:
    """The mapped admin's timed grant on ``team-a`` expired and its unshare waits for the worker:
    they still have the cluster's binding (and the registry's row), so a hold or a scale of
    ``team-a``'s GPUs is still for them and waits for another admin, and they may not decide the
    owner's quota request there (invariant 3). The facts used to drop an expired grant at once
    when they have no cluster view, while with one the binding kept counting."""
    GateMachine.database_url, GateMachine.template = sqlite_template
    machine = GateMachine()
    try:
        machine.workspaces()
        machine.share("requester", "team-a", ADMIN_MAPPED_ID, "edit", True)
        machine.work()
        assert ADMIN_MAPPED_ID in machine.oracle.people("team-a")
        machine.quota("requester", "team-a", 4, False)
        quota = machine.stack.request(machine.requests[-1])
        assert quota.state is RequestState.PENDING
        machine.time_passes(3)  # the grant's expiry files its unshare; the worker has not run
        assert ADMIN_MAPPED_ID in machine.oracle.people("team-a")
        for rule, arg in ((machine.hold, 4), (machine.scale, 0)):
            rule("mapped-admin", "team-a", arg)  # checks the oracle's verdict against the product's
            request = machine.stack.request(machine.requests[-1])
            assert request.state is RequestState.PENDING, request.kind
        with pytest.raises(errors.Forbidden):
            services.decide(machine.stack.core, ADMIN_MAPPED, quota.id, approve=True, decision_key="k")
        machine.work()  # the unshare applies: now they are no one in team-a
        assert ADMIN_MAPPED_ID not in machine.oracle.people("team-a")
        machine.stop_notebook("mapped-admin", "team-a", "nb1")
        assert machine.stack.request(machine.requests[-1]).state is RequestState.APPROVED
        machine.applied_only_when_authorized()
        machine.every_transition_is_audited()
        machine.the_chain_verifies()
    finally:
        machine.teardown()


def test_every_actor_and_cost_kind_applies_alone_exactly_as_the_oracle_says(db_url: str) -> None:
    """The machine's cost-kind cells as a table, so no random draw can miss one: every actor files
    a stop, a hold and a scale (within the approved maximum, above it, above ``KFBOT_MAX_NODES``)
    in a workspace they own, work in (the admin-contributor) or are no one in."""
    stack = build_stack(db_url, core=SETTINGS)
    try:
        machine_like = Oracle()
        for name, owner, gpu in (("team-a", ALICE.email, 1), ("admin-ws", ADMIN_OWNER.email, 1)):
            rid = services.submit(
                stack.core, CAROL, kinds.WorkspaceCreate(name, owner, gpu=gpu), idempotency_key=None
            ).request.id
            services.decide(stack.core, ADMIN, rid, approve=True, decision_key=f"setup:{rid}")
        stack.run()
        services.submit(
            stack.core, ALICE, kinds.Share("team-a", ADMIN_OWNER.email, "edit", None), idempotency_key=None
        )
        stack.run()
        with stack.backend.db.uow() as uow:
            for ws in uow.registry.list_workspaces():
                machine_like.owners[ws.name] = ws.owner
                machine_like.contributors[ws.name] = {g.user: g.role for g in uow.registry.grants(ws.name)}
                machine_like.max_nodes[ws.name] = max(
                    int(e["params"]["scaling"]["maxSize"])  # type: ignore[index, call-overload]
                    for e in ws.created.values()
                    if e["action"] == "aws.nodegroup"
                )
        cells = 0
        for who, actor in ACTORS.items():
            for ws in MADE:
                for kind in (
                    kinds.NotebookStop(ws, "nb1"),
                    kinds.GpuHold(ws, f"workspace:{ws}", duration=timedelta(hours=4)),
                    kinds.GpuScale(ws, 0),
                    kinds.GpuScale(ws, 1),
                    kinds.GpuScale(ws, 4),
                    kinds.GpuScale(ws, MAX_NODES + 1),
                ):
                    cells += 1
                    try:
                        result = services.submit(stack.core, actor, kind, idempotency_key=None)
                    except errors.Forbidden:
                        owner = machine_like.owners[ws]
                        assert not actor.is_admin and canonical(actor.email) != owner, (who, kind)
                        continue
                    except errors.InvalidInput as e:
                        assert isinstance(kind, kinds.GpuScale) and kind.nodes > MAX_NODES, (who, kind, e)
                        assert "KFBOT_MAX_NODES" in str(e)
                        continue
                    assert not (isinstance(kind, kinds.GpuScale) and kind.nodes > MAX_NODES), (who, kind)
                    request = result.request
                    alone = request.state is RequestState.APPROVED
                    assert alone == machine_like.may_apply_alone(actor, request.kind, dict(request.args)), (
                        f"{who}'s {request.kind} {dict(request.args)} applied alone={alone}"
                    )
                    services.cancel(stack.core, actor, request.id)  # the next cell asks of the same subject
        assert cells == len(ACTORS) * len(MADE) * 6
    finally:
        stack.backend.db.dispose()
