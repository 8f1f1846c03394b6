"""``unshare``: take a person's access to a workspace, and the tokens that access made. The owner
removing anyone, or a person leaving, applies at once; a grant's expiry files one too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    CancelTimer,
    DeleteGrant,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    kfam_clash,
    kubeflow_user,
    notify_list,
    owns,
    require_workspace,
    short_name,
    token_removals,
    tokens_removed,
)
from handlers.model import Actor
from handlers.plan import Plan, Step, as_object, as_text
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id

GRANT_EXPIRE = "grant.expire"
"""The timer a temporary share schedules (handled in ``handlers.kinds.share``)."""


def grant_timer_ref(workspace: str, user: str) -> str:
    return f"{workspace}:{user}"


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, Unshare)
    if owns(actor, facts, kind.workspace, settings):
        return "the owner removes a contributor"
    leaving = kubeflow_user_id(settings, kind.user) == kubeflow_user(actor, settings)
    return "a contributor leaves the workspace" if leaving else None


def _build(p: Parsed) -> Unshare:
    workspace, user = p.positional
    return Unshare(workspace, p.user(user))


@dataclass(frozen=True)
class Unshare:
    KIND: ClassVar[str] = "unshare"
    USAGE: ClassVar[str] = "/kf unshare WORKSPACE USER"
    SYNTAX: ClassVar[Syntax] = Syntax("unshare", ("WORKSPACE", "USER"), {}, _build)
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    workspace: str
    user: str
    notify: tuple[str, ...] | None = None
    """Set by the bot on an expiry: who is told of the outcome (the grantee and the owner)."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "user", naming.normalize_email(self.user))
        object.__setattr__(self, "notify", notify_list(self.notify))

    def subject(self) -> str:
        return f"grant:{self.workspace}:{self.user}"

    def describe(self) -> str:
        return f"remove {self.user} from `{self.workspace}`"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Remove {short_name(self.user)} from {self.workspace}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        user = kubeflow_user_id(ctx.settings, self.user)
        if user == ws.owner:
            # The owner's access is the Profile's, not a grant: only a transfer or a delete takes it.
            raise errors.InvalidInput(
                f"{user} owns `{ws.name}`: an owner cannot be removed from their own workspace; "
                f"hand it over with `/kf workspace transfer {ws.name} --to EMAIL` instead.",
                field="user",
            )
        clash = kfam_clash(ws, user, None)
        if clash is not None and user not in ws.contributors:
            holder, name = clash
            raise errors.InvalidInput(
                f"{user} has no grant in `{ws.name}`; `{name}` belongs to {holder} (Kubeflow folds "
                "non-alphanumeric characters in grant names, so both addresses give that name).",
                field="user",
            )
        tokens = token_removals(ws, ctx.settings, user, keep_role=None)
        if user not in ws.contributors and user not in ws.recorded_grants and not tokens:
            # Nothing to remove: "done" would mislead, and the DM would go to a stranger.
            raise errors.NotFound(
                f"{user} has no access to `{ws.name}`; `/kf contributors {ws.name}` lists who has."
            )
        warnings: list[str] = []
        login = self._login_removal(ctx, ws, user, warnings)
        return Plan.of(
            [
                Step(
                    ActionName.CONTRIBUTOR_REMOVE,
                    f"Contributor/{ws.namespace}/{user}",
                    {"namespace": ws.namespace, "user": user},
                    f"remove {user}'s RoleBinding and AuthorizationPolicy from `{ws.namespace}`",
                ),
                # Losing access takes every token that access made.
                *tokens,
                *([] if login is None else [login]),
            ],
            warnings,
        )

    @staticmethod
    def _login_removal(ctx: PlanContext, ws: WorkspaceFacts, user: str, warnings: list[str]) -> Step | None:
        """The Dex login a share of this workspace made for ``user`` goes with their last access,
        as an owner's goes with their last workspace; one they still need elsewhere stays."""
        key = f"DexUser/{user}"
        entry = ws.created.get(key)
        if entry is None or entry.get("action") != ActionName.DEX_USER or entry.get("adopted") is True:
            return None
        params = dict(as_object(entry["params"]))
        if as_text(params.get("email", "")) != user:
            return None
        if why := ctx.facts.user_in_use(user, ws.name):
            warnings.append(f"The Dex login {user} is kept: they are still {why}.")
            return None
        params["except_namespace"] = ws.namespace  # its grant goes with this request (re-checked as it runs)
        summary = f"remove the Dex login kf-chatops made for {user}"
        return Step(ActionName.DEX_USER_REMOVE, key, params, summary)

    def on_success(self, done: Applied) -> Success:
        revoked, expiries = tokens_removed(done.plan)
        gone = tuple(s.key for s in done.plan.steps if s.action == ActionName.DEX_USER_REMOVE)
        forget = (UpdateWorkspaceObjects(self.workspace, remove=gone),) if gone else ()
        return Success(
            changes=(DeleteGrant(self.workspace, str(done.plan.steps[0].params["user"])), *revoked, *forget),
            cancel=(CancelTimer(GRANT_EXPIRE, grant_timer_ref(self.workspace, self.user)), *expiries),
        )
