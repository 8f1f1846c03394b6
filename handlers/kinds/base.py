"""What every request kind module builds on: the ``RequestKind`` protocol, the data a kind hands
to the rest of the bot (its command syntax, its policy row, what it records on success, its timers)
and helpers more than one kind uses.

A kind is a frozen dataclass built by ``handlers.parse`` (or from stored ``args``), validated on
construction, so an invalid kind cannot exist. Everything a kind computes is pure: ``plan`` reads
only its arguments, the settings and the facts passed in; ``on_success`` turns what was applied
into registry changes and timers as data, which the engine writes in the transaction that records
the success; a timer handler turns a due timer into a request of the bot's own, as data too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, TypeVar

from handlers import errors, naming, units
from handlers.actions import ActionName
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, StepOutcome
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id

MANAGED_BY = {"app.kubernetes.io/managed-by": "kf-chatops"}
ROLES = ("edit", "view")


@dataclass(frozen=True)
class PlanContext:
    settings: CoreSettings
    facts: Facts
    request_id: str


# -- what a kind records on success --------------------------------------------------------------


@dataclass(frozen=True)
class TimerSpec:
    """Timed work a kind needs once it has succeeded (a grant's expiry, a quota revert).

    ``keep_pending``: payload keys whose value a pending timer of the same (kind, ref) keeps when
    it has one (a second temporary raise must revert to the value before the first)."""

    kind: str
    ref: str
    due_at: datetime
    payload: Mapping[str, JSON] = field(default_factory=dict)
    keep_pending: tuple[str, ...] = ()


POLICY_VERSION_NOTE = (
    "a new default version; the oldest non-default version is deleted when the policy holds five"
)
"""Said by every step that edits a shared managed policy: IAM keeps five versions, and the bot makes
room by deleting the oldest one that is not the default (``AwsActions._make_room_for_version``)."""

ADOPTED = "adopted"
"""The key that marks a registry entry (``created[key]``) as adopted: made by hand before the bot,
recorded by ``workspace.adopt``; ``workspace.delete`` removes it only when the admin names it."""


def is_adopted(entry: Mapping[str, JSON]) -> bool:
    return entry.get(ADOPTED) is True


@dataclass(frozen=True)
class PutWorkspace:
    name: str
    namespace: str
    owner: str
    request_id: str
    created: Mapping[str, Mapping[str, JSON]]
    """Step key -> ``{"action", "params"}`` of every object the request created."""
    slack_id: str | None = None
    """The owner's Slack user id when the request knew it (the owner asked): offboarding asks
    Slack about the owner by it."""


@dataclass(frozen=True)
class UpdateWorkspaceObjects:
    """Record the params an object has now over its create-time ones: ``replace`` replaces an
    entry's params, ``merge`` updates some of them. Keys the registry does not hold are skipped.
    ``add`` records objects made after the workspace (``{"action": ..., "params": ...}``, as
    ``PutWorkspace`` records them), replacing an entry under the same key; ``remove`` forgets
    objects the request removed."""

    name: str
    replace: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    merge: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    add: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    """Step key -> ``{"action", "params"}`` of objects the request created (a replacement
    nodegroup), appended: a later delete removes them first."""
    remove: tuple[str, ...] = ()
    """Keys of objects the request removed (the nodegroup a replacement retired)."""


@dataclass(frozen=True)
class SetOwner:
    """The workspace has a new owner (``workspace.transfer``); ``slack_id`` as ``PutWorkspace``'s."""

    name: str
    owner: str
    slack_id: str | None = None


@dataclass(frozen=True)
class DeleteWorkspace:
    """Mark the workspace deleted; every token account in it went with its namespace."""

    name: str


@dataclass(frozen=True)
class PutGrant:
    workspace: str
    user: str
    role: str
    request_id: str
    expires_at: datetime | None
    slack_id: str | None = None
    """The grantee's Slack user id when the request knew it (the grantee asked)."""


@dataclass(frozen=True)
class DeleteGrant:
    workspace: str
    user: str


@dataclass(frozen=True)
class PutToken:
    token_id: str
    requester_id: str
    workspace: str
    namespace: str
    account: str
    role: str
    audiences: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class RevokeToken:
    token_id: str


@dataclass(frozen=True)
class PutHold:
    """Keep ``target`` (``nodegroup:<name>``, ``notebook:<namespace>/<name>``, ``workspace:<name>``)
    out of the idle report and auto-stop until ``until`` (a ``gpu_holds`` row; a newer hold of the
    same target replaces it)."""

    target: str
    until: datetime
    held_by: str
    request_id: str


@dataclass(frozen=True)
class CancelTimer:
    kind: str
    ref: str


RegistryChange = (
    PutWorkspace
    | UpdateWorkspaceObjects
    | DeleteWorkspace
    | PutGrant
    | DeleteGrant
    | PutToken
    | RevokeToken
    | PutHold
    | SetOwner
)


@dataclass(frozen=True)
class Applied:
    """A request whose every step succeeded, as ``on_success`` sees it."""

    request_id: str
    requester_id: str
    plan: Plan
    outcomes: Mapping[int, StepOutcome | None]
    """Step index -> its recorded outcome."""
    at: datetime
    requester_email: str = ""
    """The requester's Slack email: who the requester's Slack id (``requester_id``) belongs to."""
    requester_user: str = ""
    """The requester's Kubeflow user id (``KFBOT_USER_ID_MAP`` applied to ``requester_email``)."""


@dataclass(frozen=True)
class Success:
    """What the engine writes when a request succeeds, in order: the registry changes, the timers
    to cancel, then the timers to schedule."""

    changes: tuple[RegistryChange, ...] = ()
    cancel: tuple[CancelTimer, ...] = ()
    timers: tuple[TimerSpec, ...] = ()


# -- timers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemRequest:
    """A due timer becomes this request of the bot's own, auto-applied under ``system:<timer>``;
    ``key`` is its idempotency key (a redelivered timer files nothing new)."""

    kind: RequestKind
    key: str


@dataclass(frozen=True)
class TimerNotice:
    """A due timer that must not act (someone changed what it would revert): the people of
    ``notify``, the requester of ``origin_id`` and, with ``admins``, the admins are told why."""

    origin_id: str
    message: str
    notify: tuple[str, ...]
    admins: bool = True


TimerResult = SystemRequest | TimerNotice | None
"""None: nothing left to do (the workspace, grant or token is gone already)."""


@dataclass(frozen=True)
class TimerKind:
    """A timer a kind schedules and how it is handled when due (pure: the facts are read-only)."""

    name: str
    reason: str
    """Why the bot acts, as its system request records it (``the grant expired``)."""
    handle: Callable[[str, Mapping[str, JSON], Facts], TimerResult]
    """(ref, payload, facts) -> what to do."""


# -- who may ask, what applies without an admin --------------------------------------------------

AutoRule = Callable[["RequestKind", Actor, Facts, CoreSettings], str | None]
"""Why the request may apply without an admin (the words the audit log records), or None."""
RequestRule = Callable[["RequestKind", Actor, Facts, CoreSettings], None]
"""Raises ``Forbidden`` when the actor may not even ask."""


@dataclass(frozen=True)
class PolicyRow:
    """A kind's row of the policy table (``handlers.policy`` reads them all as one table)."""

    auto_apply: AutoRule | None = None
    """None: the kind always waits for an admin."""
    may_request: RequestRule | None = None
    """None: anyone may ask (the plan and the approval decide)."""


def kubeflow_user(actor: Actor, settings: CoreSettings) -> str:
    """The actor's Kubeflow user id (``KFBOT_USER_ID_MAP`` applied): owners, contributors and Dex
    logins are recorded under it, so every identity check compares this, never the raw email."""
    return kubeflow_user_id(settings, actor.email)


def slack_id_of(done: Applied, user: str) -> str | None:
    """``user``'s Slack id when the request's requester is ``user`` (the only Slack id a request
    knows), by Slack email or by the Kubeflow id ``KFBOT_USER_ID_MAP`` gives it: offboarding asks
    Slack about that id, never about a mapped address (another account may hold it)."""
    if not done.requester_email:
        return None
    return done.requester_id if user in (done.requester_email, done.requester_user) else None


def owns(actor: Actor, facts: Facts, workspace: str, settings: CoreSettings) -> bool:
    ws = facts.workspace(workspace)
    return ws is not None and ws.owner == kubeflow_user(actor, settings)


# -- command syntax ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    dest: str
    convert: Callable[[str], Any] | None
    """None: a switch without a value."""


@dataclass(frozen=True)
class Parsed:
    """A command's words once ``handlers.parse`` checked them against its ``Syntax``."""

    positional: Sequence[str]
    options: Mapping[str, Any]
    requester_email: str
    user: Callable[[str], str]
    """A user as typed (email or Slack mention) -> their lowercased email."""
    settings: CoreSettings
    """Where a flag left out takes its default from (``/kf token`` without ``--ttl``)."""


@dataclass(frozen=True)
class Syntax:
    """How ``/kf`` spells a kind: ``command`` is its words (``"share"``, ``"workspace new"``)."""

    command: str
    positional: tuple[str, ...]
    flags: Mapping[str, Flag]
    build: Callable[[Parsed], RequestKind]
    optional: tuple[str, ...] = ()
    """Positionals that may be left out, after ``positional`` (``/kf gpu up WORKSPACE [N]``)."""
    complete: Callable[[RequestKind, Actor, Facts, CoreSettings], RequestKind] | None = None
    """Fills in what a shorthand left out from who asks (``/kf gpu stop NOTEBOOK``: the requester's
    one workspace), before anything is checked or recorded; ``InvalidInput`` when it cannot."""


def whole_number(flag: str) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not re.fullmatch(r"[0-9]{1,6}", value):
            raise errors.InvalidInput(f"{flag} takes a whole number, not {naming.show_value(value)}.")
        return int(value)

    return convert


def text(value: str) -> str:
    return value


def short_name(email: str) -> str:
    """A person in a card's header: the part of their email before the ``@`` (the card's body
    names them in full)."""
    return email.partition("@")[0] or email


# -- the protocol --------------------------------------------------------------------------------


class RequestKind(Protocol):
    KIND: ClassVar[str]
    USAGE: ClassVar[str]
    SYNTAX: ClassVar[Syntax]
    POLICY: ClassVar[PolicyRow]
    TIMERS: ClassVar[tuple[TimerKind, ...]]
    """The timers this kind's success schedules, with their handlers."""

    def subject(self) -> str | None:
        """What the request is about; two open requests for one subject are refused (None: never)."""
        ...

    def describe(self) -> str: ...

    def title(self, requester: str) -> str:
        """The request in words for the approval card's header ("New workspace team-a for
        alice", "Share team-a with bob (edit) for alice"): plain text (a Block Kit header is not
        formatted), people by ``short_name``; ``requester`` is the requester's email."""
        ...

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        """Emails of the people the request's effect is for, besides its requester (an owner, a
        grantee; a workspace's people for its quota or deletion): none of them may decide it."""
        ...

    def plan(self, ctx: PlanContext) -> Plan: ...

    def on_success(self, done: Applied) -> Success:
        """What the registry and the timers record once every step succeeded (pure)."""
        ...


# -- stored arguments ----------------------------------------------------------------------------

K = TypeVar("K", bound=RequestKind)


def to_args(kind: RequestKind) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for f in dataclasses.fields(kind):  # type: ignore[arg-type]
        value = getattr(kind, f.name)
        out[f.name] = units.format_duration(value) if isinstance(value, timedelta) else value
    return out


def from_args(cls: type[K], args: Mapping[str, JSON]) -> K:
    """The kind ``cls`` from its stored ``args`` (validated again on construction)."""
    values: dict[str, JSON | timedelta] = dict(args)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        stored = values.get(f.name)
        if f.type in ("timedelta | None", "timedelta") and isinstance(stored, str):
            values[f.name] = units.parse_duration(stored)
    return cls(**values)


# -- helpers more than one kind uses ---------------------------------------------------------------


def workspace_people(facts: Facts, name: str) -> tuple[str, ...]:
    """The people a workspace's request is for (``beneficiaries``). Recorded grants count too:
    an expired grant keeps its access until its unshare applies, and a binding removed by hand
    still has the registry's half, so such a person is still an interested party (an admin among
    them neither decides nor auto-applies; docs/SECURITY.md invariant 3)."""
    ws = facts.workspace(name)
    return () if ws is None else tuple(dict.fromkeys((ws.owner, *ws.contributors, *ws.recorded_grants)))


def require_workspace(ctx: PlanContext, name: str) -> WorkspaceFacts:
    ws = ctx.facts.workspace(name)
    if ws is None:
        raise errors.NotFound(f"There is no workspace named `{name}`.")
    return ws


def notify_list(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidInput("`notify` is a list of email addresses.", field="notify")
    return tuple(naming.normalize_email(v) for v in value)


def people_to_tell(args: Mapping[str, JSON]) -> list[str]:
    """Emails of the people a request made by the bot itself (an expiry) is reported to: the
    ``notify`` argument of the kinds that timers create. Empty for everything else."""
    value = args.get("notify")
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def check_role(role: str) -> None:
    if role not in ROLES:
        raise errors.InvalidInput(
            f"--role must be `edit` or `view`, not {naming.show_value(role)}.", field="role"
        )


def kfam_clash(ws: WorkspaceFacts, user: str, role: str | None) -> tuple[str, str] | None:
    """(holder, binding name) when another contributor holds the KFAM name ``user`` would get.

    KFAM's names fold every run of non-alphanumerics to ``-`` and lowercase (``a.b@x.com`` and
    ``a-b@x.com`` give one name), so such a grant can exist for only one of them. ``role`` None:
    any role (unshare, which would find the other person's binding under its name)."""
    for other, other_role in ws.contributors.items():
        if other == user or other_role not in naming.KFAM_ROLES:
            continue
        name = naming.kfam_binding_name(other, other_role)
        if role in (None, other_role) and name == naming.kfam_binding_name(user, other_role):
            return other, name
    return None


def token_account_name(request_id: str) -> str:
    return f"kfbot-token-{request_id.lower()}"


TOKEN_EXPIRE = "token.expire"  # noqa: S105 (a timer kind)


def token_removals(
    ws: WorkspaceFacts, settings: CoreSettings, user: str, keep_role: str | None
) -> list[Step]:
    """Remove the token accounts ``user`` holds in ``ws`` that their access no longer covers:
    all of them when the access goes (``keep_role`` None), edit ones when it drops to view."""
    steps = []
    for token_id, token in sorted(ws.tokens.items()):
        covered = keep_role == "edit" or (keep_role == "view" and token.role == "view")
        if covered or kubeflow_user_id(settings, token.holder) != user:
            continue
        name = token_account_name(token_id)
        steps.append(
            Step(
                ActionName.TOKEN_ACCOUNT_REMOVE,
                f"TokenAccount/{ws.namespace}/{name}",
                {"namespace": ws.namespace, "name": name, "token_id": token_id},
                f"delete ServiceAccount `{name}` ({user}'s {token.role} token {token_id} stops working)",
            )
        )
    return steps


def tokens_removed(plan: Plan) -> tuple[tuple[RevokeToken, ...], tuple[CancelTimer, ...]]:
    """The registry side of ``token_removals``: the tokens whose accounts the plan removed because
    their holder lost access, revoked, and their expiry timers cancelled."""
    ids = [
        str(step.params["token_id"])
        for step in plan.steps
        if step.action == ActionName.TOKEN_ACCOUNT_REMOVE and "token_id" in step.params
    ]
    return tuple(RevokeToken(i) for i in ids), tuple(CancelTimer(TOKEN_EXPIRE, i) for i in ids)
