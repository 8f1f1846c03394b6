"""Who may ask, who may decide, and what applies without an admin, as one table.

Each request kind states its own row (``POLICY`` in its module under ``handlers/kinds/``: who may
ask, its auto-apply rule); this module assembles the rows into ``AUTO_APPLY`` and holds the rules
that are the same for every kind. The rules (tested as a table in tests/test_policy.py):

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

from collections.abc import Iterable, Sequence

from handlers import errors, kinds, naming
from handlers.actions import ActionName
from handlers.kinds.base import kubeflow_user as kubeflow_user  # noqa: PLC0414 (re-exported)
from handlers.model import SYSTEM, Actor, Event, EventType, Request, RequestState
from handlers.plan import as_list, as_object, canonical_json
from handlers.ports import Facts
from handlers.settings import CoreSettings, kubeflow_user_id, mapped_away


def is_admin(user_id: str, settings: CoreSettings, group_members: Iterable[str] = ()) -> bool:
    return user_id in settings.policy.admin_users or user_id in set(group_members)


def check_slack_address(settings: CoreSettings, email: str) -> None:
    """The one rule for who may act at all, applied wherever an actor is made (Slack's
    ``Identity.actor``, the shell's ``--as``): a Slack address that ``KFBOT_USER_ID_MAP`` makes
    another address's Kubeflow id is refused, so no second account can act as the mapped person
    (their workspaces, their Dex login's password, their DMs)."""
    if mapped_away(settings, email):
        raise errors.Forbidden(
            f"Your address {naming.show_value(email.strip().lower())} is a Kubeflow id mapped from "
            "another address (`KFBOT_USER_ID_MAP`), so kf-chatops cannot tell you apart from that "
            "person; ask an admin."
        )


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


def owners_recorded(trail: Sequence[Event], workspace: str) -> set[str]:
    """Who the audit log says owns ``workspace``, from the trail of the request that made it: its
    owner argument and the Profile's owner, if it was a create of that name and it succeeded."""
    created = next((e for e in trail if e.type is EventType.CREATED), None)
    if created is None or not any(e.type is EventType.SUCCEEDED for e in trail):
        return set()
    args = as_object(created.data.get("args") or {})
    steps = [as_object(step) for step in as_list(as_object(created.data.get("plan") or {}).get("steps", []))]
    if created.data.get("kind") == kinds.WorkspaceAdopt.KIND and args.get("namespace") == workspace:
        # An adoption records the owner its approved plan's Profile step names (the Profile's
        # owner, or --owner).
        owners: set[str] = set()
        for step in steps:
            outer = as_object(step.get("params") or {})
            if step.get("action") == ActionName.PROFILE_ADOPT and outer.get("object") == ActionName.PROFILE:
                owner = as_object(outer.get("params") or {}).get("owner")
                if isinstance(owner, str) and owner:
                    owners.add(owner)
        return owners
    if created.data.get("kind") != kinds.WorkspaceCreate.KIND or args.get("name") != workspace:
        return set()
    profile_owners = {
        as_object(step.get("params", {})).get("owner")
        for step in steps
        if step.get("action") == ActionName.PROFILE
    }
    return {str(o) for o in {args.get("owner"), *profile_owners} if o}


def owner_transferred(trail: Sequence[Event], workspace: str) -> str | None:
    """The owner a succeeded ``workspace.transfer`` of ``workspace`` handed it to, as its audit
    trail records the plan (the Profile step's owner), or None."""
    created = next((e for e in trail if e.type is EventType.CREATED), None)
    if created is None or not any(e.type is EventType.SUCCEEDED for e in trail):
        return None
    args = as_object(created.data.get("args") or {})
    if created.data.get("kind") != kinds.WorkspaceTransfer.KIND or args.get("name") != workspace:
        return None
    for step in as_list(as_object(created.data.get("plan") or {}).get("steps") or []):
        if as_object(step).get("action") == ActionName.PROFILE_OWNER:
            owner = as_object(as_object(step).get("params") or {}).get("owner")
            return str(owner) if owner else None
    return None


def grant_recorded(trail: Sequence[Event], workspace: str, user: str, role: str) -> bool:
    """Whether the trail is of a share of ``workspace`` that succeeded and granted ``user`` ``role``
    (the user as its plan wrote it: the Kubeflow id)."""
    created = next((e for e in trail if e.type is EventType.CREATED), None)
    if created is None or not any(e.type is EventType.SUCCEEDED for e in trail):
        return False
    args = as_object(created.data.get("args") or {})
    if created.data.get("kind") == kinds.DriftAdopt.KIND:
        # An admin adopted a grant made by hand into the record (a system decision).
        return args.get("workspace") == workspace and args.get("what") == "grant" and (
            args.get("user"), args.get("role")) == (user, role)
    if created.data.get("kind") == kinds.WorkspaceAdopt.KIND:
        # An adoption recorded a contributor it found (KFAM's pair) as a grant.
        if args.get("namespace") != workspace:
            return False
        for step in as_list(as_object(created.data.get("plan") or {}).get("steps") or []):
            params = as_object(as_object(step).get("params") or {})
            inner = as_object(params.get("params") or {})
            if (
                as_object(step).get("action") == ActionName.PROFILE_ADOPT
                and params.get("object") == ActionName.CONTRIBUTOR
                and (inner.get("user"), inner.get("role")) == (user, role)
            ):
                return True
        return False
    if created.data.get("kind") != kinds.Share.KIND or args.get("workspace") != workspace:
        return False
    steps = as_list(as_object(created.data.get("plan") or {}).get("steps") or [])
    return any(
        as_object(step).get("action") == ActionName.CONTRIBUTOR
        and as_object(as_object(step).get("params") or {}).get("user") == user
        and as_object(as_object(step).get("params") or {}).get("role") == role
        for step in steps
    )


def record_problem(request: Request, trail: Sequence[Event]) -> str | None:
    """Why the stored request is not the one its requester filed, or None: its kind, arguments
    and requester must be those of its ``request.created`` event (written with the audit key)."""
    created = next((e for e in trail if e.type is EventType.CREATED), None)
    if created is None:
        return "the audit log has no record of this request being filed"
    if created.actor != request.requester_id or created.data.get("kind") != request.kind:
        return "its requester or kind differs from what the audit log recorded"
    # Recorded since the email became part of request.created; older requests carry only the id.
    if created.data.get("requester_email", request.requester_email) != request.requester_email:
        return "its requester's email differs from what the audit log recorded"
    if canonical_json(created.data.get("args")) != canonical_json(dict(request.args)):
        return "its arguments differ from those the audit log recorded"
    return None


_STATE_OF_EVENT = {
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


def state_in_log(trail: Sequence[Event]) -> RequestState | None:
    """The state the audit trail leaves a request in (every change of state is logged with it)."""
    state = None
    for event in trail:
        state = _STATE_OF_EVENT.get(event.type, state)
    return state


_CLOSING = frozenset({EventType.SUCCEEDED, EventType.REJECTED, EventType.CANCELLED, EventType.EXPIRED})
_STOPPING = frozenset({EventType.FAILED, EventType.NEEDS_ATTENTION, EventType.REFUSED})


def authorization_problem(request: Request, trail: Sequence[Event]) -> str | None:
    """Why the engine must not apply ``request`` as it stands, or None when it may.

    ``trail`` is the request's audit events in order, each one's MAC checked: written by this bot
    with the audit key, so a row someone edited or inserted in the database cannot authorize
    anything. An authorization covers the digest it names, until the plan changes; it is used up
    when the request finishes (succeeded, rejected, cancelled, expired), and held while the request
    is stopped (failed, needs attention) until an admin's ``/kf retry`` resumes it. The stored
    request must be the one filed (``record_problem``) and its plan the one the digest names.
    """
    problem = record_problem(request, trail)
    if problem is not None:
        return problem
    logged = state_in_log(trail)
    if logged is not request.state:
        # The row was moved without the bot (a state set by hand, or a cut audit tail replayed).
        left = logged.value if logged else "unfiled"
        return f"it is {request.state.value} but its audit log leaves it {left}"
    if request.plan.digest() != request.plan_digest:
        return "the stored plan does not match its digest"
    authorized: str | None = None
    stopped = False
    for event in trail:
        if event.type is EventType.PLAN_CHANGED or event.type in _CLOSING:
            authorized = None
        elif event.type in _STOPPING:
            stopped = True
        elif event.type is EventType.RETRIED:
            stopped = False
        elif _authorizes(event, request):
            authorized = str(event.data.get("plan_digest"))
    if authorized != request.plan_digest:
        return f"the audit log holds no approval of plan {request.plan_digest[:12]} still in force"
    if stopped:
        return "it stopped since its approval and no admin asked to retry it"
    return None


def _authorizes(event: Event, request: Request) -> bool:
    if event.type is EventType.APPROVED:
        return event.actor not in (None, SYSTEM.user_id, request.requester_id)
    by_the_bot = event.type is EventType.AUTO_APPROVED and event.actor == SYSTEM.user_id
    return by_the_bot and _names_rule(event, request)


def _names_rule(event: Event, request: Request) -> bool:
    rule = str(event.data.get("rule") or "")
    if rule.startswith(SYSTEM_RULE_PREFIX):
        return request.requester_id == SYSTEM.user_id and bool(event.data.get("trigger"))
    if rule:
        return rule == AUTO_RULE_PREFIX + request.kind and request.kind in AUTO_APPLY
    # Auto-approvals recorded before rules were named carry only their reason.
    return bool(event.data.get("reason"))


AUTO_RULE_PREFIX = "auto:"
SYSTEM_RULE_PREFIX = "system:"


def auto_rule(kind: kinds.RequestKind) -> str:
    """The name an auto-approval records: the policy row that allowed it."""
    return AUTO_RULE_PREFIX + kind.KIND


def system_rule(trigger_kind: str) -> str:
    """The name a system decision records: what made the bot act (a timer kind, a cascade)."""
    return SYSTEM_RULE_PREFIX + trigger_kind


def check_may_request(kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    """Who may even ask: the kind's row (``may_request``); a kind without one lets anyone ask."""
    rule = kind.POLICY.may_request
    if rule is not None:
        rule(kind, actor, facts, settings)


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


AutoRule = kinds.base.AutoRule
AUTO_APPLY: dict[str, AutoRule] = {
    name: cls.POLICY.auto_apply for name, cls in kinds.KINDS.items() if cls.POLICY.auto_apply is not None
}
"""Kind -> its auto-apply rule, from the kinds' policy rows. Kinds absent here (workspace create,
delete and pin) always need an admin."""


def auto_apply_reason(
    kind: kinds.RequestKind, actor: Actor, facts: Facts, settings: CoreSettings
) -> str | None:
    """Why this request may apply without an admin, or None if it needs one."""
    rule = AUTO_APPLY.get(kind.KIND)
    return rule(kind, actor, facts, settings) if rule else None
