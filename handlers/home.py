"""The App Home tab's content for one person, as neutral data (``bot/home.py`` renders it).

What a person sees of requests is decided by ``services.list_requests`` (the rule ``/kf requests``
answers with: their own, and for admins every pending one) and ``services.recent_failures``
(admins only, through ``services.may_see_request``); which workspaces by the registry (those
they own or hold a grant on, ``policy.check_may_see_workspace`` applied on top); tokens are the
ones made for them. An Approve/Reject offer is made only where ``policy.check_may_decide`` lets
this admin decide, the same check the click goes through again in ``services.decide``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from handlers import errors, naming, policy, services
from handlers.model import OPEN_STATES, Actor, Event, EventType, Request, RequestState

HOME_BLOCK_LIMIT = 100
"""Slack refuses a Home tab view of more than 100 blocks."""
FAILURES_SHOWN = 5


@dataclass(frozen=True)
class GrantInput:
    user: str
    """Kubeflow user id of the grantee."""
    role: str
    expires_at: datetime | None


@dataclass(frozen=True)
class WorkspaceInput:
    """One registry workspace as the edge read it (no cluster facts needed beyond these)."""

    name: str
    owner: str
    grants: Sequence[GrantInput] = ()
    quota_hard: Mapping[str, str] = field(default_factory=dict)
    quota_used: Mapping[str, str] = field(default_factory=dict)
    gpu_nodes: int | None = None
    """GPU nodes running now, from the last scan (None: no scan to say)."""
    month_usd: float | None = None
    """GPU node cost this UTC month from the usage ledger (None: nothing recorded)."""


@dataclass(frozen=True)
class TokenInput:
    token_id: str
    workspace: str
    role: str
    expires_at: datetime


@dataclass(frozen=True)
class WorkspaceLine:
    name: str
    role: str
    """``owner``, ``edit`` or ``view``: how this person works in it."""
    quota_hard: Mapping[str, str]
    quota_used: Mapping[str, str]
    gpu_nodes: int | None
    month_usd: float | None


@dataclass(frozen=True)
class GrantLine:
    workspace: str
    role: str
    expires_at: datetime | None


@dataclass(frozen=True)
class RequestLine:
    request: Request
    cancellable: bool


@dataclass(frozen=True)
class ApprovalLine:
    request: Request
    may_decide: bool
    why_not: str = ""
    """Why this admin gets no buttons (a request for them): the refusal ``decide`` would give."""


@dataclass(frozen=True)
class HomeView:
    user_id: str
    is_admin: bool
    dry_run: bool
    dashboard_url: str | None
    workspaces: tuple[WorkspaceLine, ...] = ()
    requests: tuple[RequestLine, ...] = ()
    tokens: tuple[TokenInput, ...] = ()
    grants: tuple[GrantLine, ...] = ()
    approvals: tuple[ApprovalLine, ...] = ()
    failures: tuple[Request, ...] = ()


def theirs(core: services.Core, actor: Actor, workspaces: Iterable[WorkspaceInput]) -> list[str]:
    """The workspaces the Home tab of ``actor`` shows: those they own or hold a grant on (an
    admin's too: the tab is about their own work, ``/kf workspace list`` shows every one)."""
    user = policy.kubeflow_user(actor, core.settings)
    names = []
    for ws in workspaces:
        grantees = [g.user for g in ws.grants]
        if ws.owner != user and user not in grantees:
            continue
        try:
            policy.check_may_see_workspace(actor, core.settings, ws.name, ws.owner, grantees)
        except errors.NotFound:
            continue
        names.append(ws.name)
    return sorted(names)


def build(
    core: services.Core,
    actor: Actor,
    *,
    workspaces: Iterable[WorkspaceInput],
    tokens: Iterable[TokenInput],
    dry_run: bool,
    dashboard_url: str | None,
) -> HomeView:
    """The Home tab of ``actor``. ``workspaces``: the registry's (any: those not theirs are left
    out here); ``tokens``: the actor's active tokens."""
    user = policy.kubeflow_user(actor, core.settings)
    lines: list[WorkspaceLine] = []
    grants: list[GrantLine] = []
    by_name = {ws.name: ws for ws in workspaces}
    for name in theirs(core, actor, by_name.values()):
        ws = by_name[name]
        mine = [g for g in ws.grants if g.user == user]
        role = "owner" if ws.owner == user else mine[0].role
        lines.append(WorkspaceLine(ws.name, role, ws.quota_hard, ws.quota_used, ws.gpu_nodes, ws.month_usd))
        grants += [GrantLine(ws.name, g.role, g.expires_at) for g in mine]
    visible = services.list_requests(core, actor)
    own = [
        RequestLine(r, cancellable=r.state is RequestState.PENDING)
        for r in visible
        if r.requester_id == actor.user_id and r.state in OPEN_STATES
    ]
    approvals: list[ApprovalLine] = []
    if actor.is_admin:
        for r in visible:
            if r.state is not RequestState.PENDING or r.requester_id == actor.user_id:
                continue
            try:
                policy.check_may_decide(actor, r, core.settings, core.facts)
            except errors.Forbidden as refused:
                approvals.append(ApprovalLine(r, may_decide=False, why_not=refused.user_message))
            else:
                approvals.append(ApprovalLine(r, may_decide=True))
    return HomeView(
        user_id=actor.user_id,
        is_admin=actor.is_admin,
        dry_run=dry_run,
        dashboard_url=dashboard_url,
        workspaces=tuple(lines),
        requests=tuple(own),
        tokens=tuple(sorted(tokens, key=lambda t: t.expires_at)),
        grants=tuple(grants),
        approvals=tuple(approvals),
        failures=tuple(services.recent_failures(core, actor, FAILURES_SHOWN)),
    )


_ADMIN_VISIBLE = frozenset(
    {
        EventType.CREATED,
        EventType.PLAN_CHANGED,
        EventType.APPROVED,
        EventType.AUTO_APPROVED,
        EventType.REJECTED,
        EventType.CANCELLED,
        EventType.EXPIRED,
        EventType.FAILED,
        EventType.NEEDS_ATTENTION,
        EventType.REFUSED,
        EventType.RETRIED,
    }
)
"""Events that change what an admin's Home lists (pending approvals, the last failures)."""


def audience(request: Request, events: Sequence[Event], admins: Iterable[str]) -> frozenset[str]:
    """Whose Home tab a committed change makes stale: the requester's always (their requests,
    tokens, workspaces), the admins' when it changes the pending or failed lists."""
    people = {request.requester_id} if naming.is_person_id(request.requester_id) else set()
    if any(e.type in _ADMIN_VISIBLE for e in events):
        people |= set(admins)
    return frozenset(people)
