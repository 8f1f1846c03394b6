"""Who may ask, who may decide, and what applies without an admin, in one place.

The rules (tested as a table in tests/test_policy.py):

* admins are the Slack users in ``KFBOT_ADMIN_USERS`` plus the members of ``KFBOT_ADMIN_GROUP``;
* nobody approves or rejects their own request, admins included;
* a request auto-applies (recorded as such in the audit log) only where it grants nothing the
  requester does not already control: an owner sharing or unsharing their own workspace, a user
  leaving a workspace, an owner lowering a quota or raising it within the configured step, a
  token no stronger than the requester's own role, revoking one's own token;
* everything else waits for an admin;
* nobody decides a request whose effect is for them: its owner, grantee or token holder, and for
  a workspace's quota or deletion its owner and contributors, compared as Kubeflow user ids
  (``KFBOT_USER_ID_MAP`` applied to both sides);
* the engine applies only a plan whose audit trail holds an authorization of exactly that plan
  (``authorization_problem``): an approval by an admin who is not the requester, an
  auto-approval naming its rule, or a system decision naming its rule and trigger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from handlers import errors, kinds, units
from handlers.model import SYSTEM, Actor, Event, EventType, Request
from handlers.ports import Facts
from handlers.settings import CoreSettings, kubeflow_user_id


def is_admin(user_id: str, settings: CoreSettings, group_members: Iterable[str] = ()) -> bool:
    return user_id in settings.policy.admin_users or user_id in set(group_members)


def check_may_decide(actor: Actor, request: Request, settings: CoreSettings, facts: Facts) -> None:
    """The one rule for Approve and Reject, wherever the click comes from (card, App Home, shell)."""
    if not actor.is_admin:
        raise errors.Forbidden("Only admins can approve or reject requests.")
    if actor.user_id == request.requester_id:
        raise errors.Forbidden("You cannot decide your own request; another admin has to.")
    # Nor one filed by someone else whose effect is for the admin (a workspace they would own,
    # access for them, a quota of a workspace they work in): otherwise anyone could file it and
    # the admin approve it for themselves.
    if _identities(settings, [actor.email]) & beneficiaries(request, settings, facts):
        raise errors.Forbidden("This request is for you; another admin has to decide it.")


def beneficiaries(request: Request, settings: CoreSettings, facts: Facts) -> frozenset[str]:
    """Everyone a request is for, in both their raw and their mapped form."""
    try:
        kind = kinds.from_args(request.kind, request.args)
    except (errors.KfError, TypeError, ValueError):
        named: Sequence[str] = ()  # stored args no kind accepts any more: only the requester counts
    else:
        named = kind.beneficiaries(facts)
    return _identities(settings, [request.requester_email, *named])


def _identities(settings: CoreSettings, emails: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for email in emails:
        raw = email.strip().lower()
        out |= {raw, kubeflow_user_id(settings, raw)}
    # A map entry a -> b makes a and b one person, whichever of the two a request names.
    mapped_from = {k for k, v in settings.workspace.user_id_map.items() if v in out}
    return frozenset(out | mapped_from)


def authorization_problem(request: Request, trail: Sequence[Event]) -> str | None:
    """Why the engine must not apply ``request`` as it stands, or None when it may.

    ``trail`` is the request's audit events in order, each one's MAC checked: written by this bot
    with the audit key, so a row someone edited or inserted in the database cannot authorize
    anything. An authorization counts only after the last plan change, and only for the digest of
    the plan the engine is about to run.
    """
    if request.plan.digest() != request.plan_digest:
        return "the stored plan does not match its digest"
    start = max((i + 1 for i, e in enumerate(trail) if e.type is EventType.PLAN_CHANGED), default=0)
    for event in trail[start:]:
        if event.data.get("plan_digest") != request.plan_digest:
            continue
        if event.type is EventType.APPROVED and event.actor not in (None, SYSTEM.user_id,
                                                                       request.requester_id):
            return None
        if event.type is EventType.AUTO_APPROVED and event.actor == SYSTEM.user_id and _names_rule(event):
            return None
    return f"the audit log holds no approval of plan {request.plan_digest[:12]}"


def _names_rule(event: Event) -> bool:
    rule = str(event.data.get("rule") or "")
    if rule.startswith(SYSTEM_RULE_PREFIX):
        return bool(event.data.get("trigger"))
    # Auto-approvals recorded before rules were named carry only their reason.
    return rule.removeprefix(AUTO_RULE_PREFIX) in AUTO_APPLY or bool(not rule and event.data.get("reason"))


AUTO_RULE_PREFIX = "auto:"
SYSTEM_RULE_PREFIX = "system:"


def auto_rule(kind: kinds.RequestKind) -> str:
    """The name an auto-approval records: the policy row that allowed it."""
    return AUTO_RULE_PREFIX + kind.KIND


def system_rule(trigger_kind: str) -> str:
    """The name a system decision records: what made the bot act (a timer kind, a cascade)."""
    return SYSTEM_RULE_PREFIX + trigger_kind


def check_may_request(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    if isinstance(kind, kinds.WorkspaceDelete) and not actor.is_admin:
        ws = facts.workspace(kind.name)
        if ws is not None and ws.owner != kubeflow_user(actor, settings):
            raise errors.Forbidden(f"Only the owner of `{kind.name}` or an admin can ask to delete it.")
    if isinstance(kind, kinds.TokenRevoke) and not actor.is_admin:
        owner = facts.token_owner(kind.token_id)
        ws = facts.workspace(owner[1]) if owner else None
        if (
            owner is not None
            and actor.user_id != owner[0]
            and (ws is None or ws.owner != kubeflow_user(actor, settings))
        ):
            raise errors.Forbidden(
                "Only the token's requester, the workspace owner or an admin can revoke it."
            )


def kubeflow_user(actor: Actor, settings: CoreSettings) -> str:
    """The actor's Kubeflow user id (``KFBOT_USER_ID_MAP`` applied): owners, contributors and Dex
    logins are recorded under it, so every identity check compares this, never the raw email."""
    return kubeflow_user_id(settings, actor.email)


def check_may_see_workspace(
    actor: Actor, settings: CoreSettings, name: str, owner: str | None, contributors: Iterable[str]
) -> None:
    """A workspace's details are for admins, its owner and its contributors, as the registry
    records them (``owner`` None: no such workspace). Anyone else is told it does not exist, so
    the answer does not reveal which names are taken."""
    user = kubeflow_user(actor, settings)
    if owner is not None and (actor.is_admin or owner == user or user in contributors):
        return
    raise errors.NotFound(f"There is no workspace `{name}` of yours.")


def _owner(actor: Actor, facts: Facts, workspace: str, settings: CoreSettings) -> bool:
    ws = facts.workspace(workspace)
    return ws is not None and ws.owner == kubeflow_user(actor, settings)


def _share(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, kinds.Share)
    return "the owner shares their own workspace" if _owner(actor, facts, kind.workspace, settings) else None


def _unshare(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, kinds.Unshare)
    if _owner(actor, facts, kind.workspace, settings):
        return "the owner removes a contributor"
    leaving = kubeflow_user_id(settings, kind.user) == kubeflow_user(actor, settings)
    return "a contributor leaves the workspace" if leaving else None


def _quota(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, kinds.QuotaChange)
    ws = facts.workspace(kind.workspace)
    if ws is None or ws.owner != kubeflow_user(actor, settings):
        return None
    steps = settings.policy.quota_auto_increase
    for resource, value in kind.changes().items():
        wanted = units.parse_quantity(value, resource)
        current = units.parse_quantity(ws.quota.get(resource, "0"), resource)
        if wanted <= current:
            continue  # a decrease (or no change) is always the owner's to make
        # A raise is judged against the approved baseline, not the current value: otherwise
        # repeated +step requests would climb without limit.
        approved = ws.quota_baseline.get(resource, ws.quota.get(resource, "0"))
        baseline = units.parse_quantity(approved, resource)
        if wanted - baseline > units.parse_quantity(steps.get(resource, "0"), resource):
            return None
    return "the owner lowers the quota or raises it within the self-service step"


def _token(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, kinds.TokenIssue)
    ws = facts.workspace(kind.workspace)
    if ws is None:
        return None
    user = kubeflow_user(actor, settings)
    own_role = "edit" if ws.owner == user else ws.contributors.get(user)
    if own_role == "edit" or (own_role == "view" and kind.role == "view"):
        return f"a {kind.role} token within the requester's own {own_role} role"
    return None


def _revoke(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, kinds.TokenRevoke)
    owner = facts.token_owner(kind.token_id)
    return "the requester revokes their own token" if owner and owner[0] == actor.user_id else None


AutoRule = Callable[[kinds.RequestKind, Actor, Facts, CoreSettings], str | None]
AUTO_APPLY: dict[str, AutoRule] = {
    kinds.Share.KIND: _share,
    kinds.Unshare.KIND: _unshare,
    kinds.QuotaChange.KIND: _quota,
    kinds.TokenIssue.KIND: _token,
    kinds.TokenRevoke.KIND: _revoke,
}
"""Kinds absent here (workspace create, delete and pin) always need an admin."""


def auto_apply_reason(
    kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings
) -> str | None:
    """Why this request may apply without an admin, or None if it needs one."""
    rule = AUTO_APPLY.get(kind.KIND)
    return rule(kind, actor, facts, settings) if rule else None
