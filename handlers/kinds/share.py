"""``share``: give a person edit or view access to a workspace, for good or ``--for`` a while
(then the bot files an ``unshare``). The owner sharing their own workspace applies at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from handlers import errors, naming, units
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    CancelTimer,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    PutGrant,
    RegistryChange,
    RequestKind,
    Success,
    Syntax,
    SystemRequest,
    TimerKind,
    TimerResult,
    TimerSpec,
    UpdateWorkspaceObjects,
    check_role,
    kfam_clash,
    owns,
    require_workspace,
    short_name,
    slack_id_of,
    text,
    token_removals,
    tokens_removed,
)
from handlers.kinds.unshare import GRANT_EXPIRE, Unshare, grant_timer_ref
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, Share)
    return "the owner shares their own workspace" if owns(actor, facts, kind.workspace, settings) else None


def _expire(ref: str, payload: Mapping[str, JSON], facts: Facts) -> TimerResult:
    """A temporary grant ran out: the bot unshares, telling the grantee and the owner."""
    workspace, user = str(payload["workspace"]), str(payload["user"])
    ws = facts.workspace(workspace)
    if ws is None:
        return None  # the workspace is gone, and its grants with it
    notify = tuple(dict.fromkeys((user, ws.owner)))
    # One grant can expire many times (shared for a week, again next month): the key names the
    # share request that set this expiry, so a later expiry is never taken for a redelivery.
    key = f"timer:{GRANT_EXPIRE}:{ref}:{payload.get('request_id', '')}"
    return SystemRequest(Unshare(workspace, user, notify=notify), key)


def _clash_message(ws: WorkspaceFacts, user: str, holder: str, name: str) -> str:
    return (
        f"{user} cannot be given a grant in `{ws.name}`: Kubeflow names grants after the email with "
        f"every non-alphanumeric character folded to `-`, so {user} and {holder} share the name "
        f"`{name}`, and {holder} holds it. Remove {holder}'s grant first, or use another address."
    )


def _build(p: Parsed) -> Share:
    workspace, user = p.positional
    return Share(workspace, p.user(user), **p.options)


@dataclass(frozen=True)
class Share:
    KIND: ClassVar[str] = "share"
    USAGE: ClassVar[str] = "/kf share WORKSPACE USER [--role edit|view] [--for 7d]"
    SYNTAX: ClassVar[Syntax] = Syntax(
        "share",
        ("WORKSPACE", "USER"),
        {"--role": Flag("role", text), "--for": Flag("duration", units.parse_duration)},
        _build,
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = (TimerKind(GRANT_EXPIRE, "the grant expired", _expire),)

    workspace: str
    user: str
    role: str = "edit"
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "user", naming.normalize_email(self.user))
        check_role(self.role)

    def subject(self) -> str:
        return f"grant:{self.workspace}:{self.user}"

    def describe(self) -> str:
        until = f" for {units.format_duration(self.duration)}" if self.duration else ""
        return f"share `{self.workspace}` with {self.user} as {self.role}{until}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        until = f", {units.format_duration(self.duration)}" if self.duration else ""
        user, who = short_name(self.user), short_name(requester)
        return f"Share {self.workspace} with {user} ({self.role}{until}) for {who}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        user = kubeflow_user_id(ctx.settings, self.user)
        if user == ws.owner:
            raise errors.InvalidInput(f"{self.user} owns `{self.workspace}` already.")
        warnings = (
            []
            if self.role == "edit"
            else [
                "View grants do not show in the Kubeflow dashboard's contributor list (it lists only edit); "
                "`/kf contributors` shows them."
            ]
        )
        clash = kfam_clash(ws, user, self.role)
        if clash is not None:
            raise errors.InvalidInput(_clash_message(ws, user, *clash), field="user")
        previous = ws.contributors.get(user)
        if previous is not None and previous != self.role:
            article = "an" if previous[:1] in "aeiou" else "a"
            warnings.append(
                f"{user} is {article} {previous} contributor now; the grant is replaced by {self.role}."
            )
        login = collaborator_login(ctx, user)
        if login is not None:
            warnings.append(
                f"{user} has no Kubeflow login today, so they could not sign in: the plan makes one "
                f"(Dex, {ctx.settings.workspace.dex_mode}) with a password nobody knows, and they set "
                "their own from the DM they get."
            )
        return Plan.of(
            [
                Step(
                    ActionName.CONTRIBUTOR,
                    f"Contributor/{ws.namespace}/{user}",
                    {"namespace": ws.namespace, "user": user, "role": self.role},
                    f"{self.role} access to `{ws.namespace}` for {user} "
                    f"(RoleBinding + AuthorizationPolicy `{naming.kfam_binding_name(user, self.role)}`)",
                ),
                # A grant lowered to view takes the edit tokens it made with it.
                *token_removals(ws, ctx.settings, user, keep_role=self.role),
                *([] if login is None else [login]),
            ],
            warnings,
        )

    def on_success(self, done: Applied) -> Success:
        ref = grant_timer_ref(self.workspace, self.user)
        expires = done.at + self.duration if self.duration else None
        user = str(done.plan.steps[0].params["user"])
        grant = PutGrant(self.workspace, user, self.role, done.request_id, expires, slack_id_of(done, user))
        revoked, expiries = tokens_removed(done.plan)
        changes: tuple[RegistryChange, ...] = (grant, *revoked, *self._login_made(done))
        if self.duration is None:
            return Success(changes=changes, cancel=(CancelTimer(GRANT_EXPIRE, ref), *expiries))
        timer = TimerSpec(
            GRANT_EXPIRE,
            ref,
            done.at + self.duration,
            {"workspace": self.workspace, "user": self.user, "request_id": done.request_id},
        )
        return Success(changes=changes, cancel=expiries, timers=(timer,))

    def _login_made(self, done: Applied) -> tuple[UpdateWorkspaceObjects, ...]:
        """The Dex login this share created, recorded with the workspace as the owner's is: what
        ``Set my password`` may reset, and what the unshare (or the workspace's delete) removes
        once the collaborator has no other access. A login found at apply (someone made one since
        the plan) is not the bot's, so it is not recorded."""
        made: dict[str, Mapping[str, JSON]] = {
            step.key: {"action": step.action, "params": dict(step.params)}
            for idx, step in enumerate(done.plan.steps)
            if step.action == ActionName.DEX_USER
            and (outcome := done.outcomes.get(idx)) is not None
            and outcome.created
        }
        return (UpdateWorkspaceObjects(self.workspace, add=made),) if made else ()


def collaborator_login(ctx: PlanContext, user: str) -> Step | None:
    """The ``dex.user`` step a grantee without a Dex login needs to sign in at all, made exactly as
    an owner's (a hash of random bytes nobody sees); None in ``external`` mode, when Dex has a
    login for them (whoever made it), or when there is no Dex to ask (dry run)."""
    mode = ctx.settings.workspace.dex_mode
    if mode == "external" or ctx.facts.has_login(user) is not False:
        return None
    return Step(
        ActionName.DEX_USER,
        f"DexUser/{user}",
        {"email": user, "username": naming.dex_username(ctx.settings.naming, user), "mode": mode},
        f"Dex login for {user} ({mode}), password set by them later",
    )
