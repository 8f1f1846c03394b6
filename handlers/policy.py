"""Who may ask, who may decide, and what applies without an admin, in one place.

The rules (tested as a table in tests/test_policy.py):

* admins are the Slack users in ``KFBOT_ADMIN_USERS`` plus the members of ``KFBOT_ADMIN_GROUP``;
* nobody approves or rejects their own request, admins included;
* a request auto-applies (recorded as such in the audit log) only where it grants nothing the
  requester does not already control: an owner sharing or unsharing their own workspace, a user
  leaving a workspace, an owner lowering a quota or raising it within the configured step, a
  token no stronger than the requester's own role, revoking one's own token;
* everything else waits for an admin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from handlers import errors, kinds, units
from handlers.model import Actor, Request
from handlers.ports import Facts
from handlers.settings import CoreSettings, kubeflow_user_id


def is_admin(user_id: str, settings: CoreSettings, group_members: Iterable[str] = ()) -> bool:
    return user_id in settings.policy.admin_users or user_id in set(group_members)


def check_may_decide(actor: Actor, request: Request, settings: CoreSettings | None = None) -> None:
    if not actor.is_admin:
        raise errors.Forbidden("Only admins can approve or reject requests.")
    if actor.user_id == request.requester_id:
        raise errors.Forbidden("You cannot decide your own request; another admin has to.")
    # Nor one filed by someone else that grants the admin something (a workspace they would own,
    # access for them): otherwise any user could file it and the admin approve it for themselves.
    me = kubeflow_user(actor, settings) if settings is not None else actor.email
    if me in {request.args.get("owner"), request.args.get("user"), request.requester_email} - {None}:
        raise errors.Forbidden("This request is for you; another admin has to decide it.")


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
