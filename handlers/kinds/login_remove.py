"""``login.remove``: an admin removes the Dex login kf-chatops made or adopted for a person who no
longer needs it (``/kf login remove EMAIL``), typically someone who left (issue 12, Offboarding).

A login the bot made goes by itself with its holder's last access (``unshare``, ``workspace
delete``); an adopted one (made by hand, recorded by ``workspace.adopt`` with ``"adopted": true``)
never did, which is what this kind is for. It always waits for another admin: the requester never
decides their own request, and the person the login belongs to is its beneficiary, so they cannot
decide it either. The plan is one ``dex.user.remove`` step with ``adopted`` and the shape adoption
recorded (``static_entry``/``env_key`` for a ``staticPasswords`` entry), so the step removes
exactly that login; on success the record entry is forgotten.

Refused, with the reason, while the person still owns or holds access to a workspace (their login
is in use), and for a login the bot neither made nor adopted. Offboarding files one of its own
(``offboarded``) for a departed person's adopted login: while the access offboarding takes is
still there (a transfer waiting for an admin), its plan has no step and says why; once that access
is gone the engine's re-plan at apply finds the removal, and the request waits for an admin again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import STATIC_HASH_FROM_ENV, STATIC_INLINE_HASH, ActionName
from handlers.kinds.base import (
    Applied,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    is_adopted,
    short_name,
)
from handlers.model import Actor
from handlers.plan import Plan, Step, as_object, as_text
from handlers.ports import Facts
from handlers.settings import CoreSettings, kubeflow_user_id


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    if not actor.is_admin:
        raise errors.Forbidden("Only admins can remove a person's Kubeflow login.")


def _build(p: Parsed) -> LoginRemove:
    return LoginRemove(p.user(p.positional[0]))


def login_key(user: str) -> str:
    """The ``created`` key a workspace records a Dex login under (as create, share and adopt do)."""
    return f"DexUser/{user}"


@dataclass(frozen=True)
class LoginRemove:
    KIND: ClassVar[str] = "login.remove"
    USAGE: ClassVar[str] = "/kf login remove EMAIL"
    SYNTAX: ClassVar[Syntax] = Syntax("login remove", ("EMAIL",), {}, _build)
    # No auto-apply rule: an admin other than the requester and the person always decides.
    POLICY: ClassVar[PolicyRow] = PolicyRow(may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    user: str
    offboarded: bool = False
    """Set by the bot only: offboarding filed it for a person who left Slack."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "user", naming.normalize_email(self.user))
        if not isinstance(self.offboarded, bool):
            raise errors.InvalidInput("`offboarded` is true or false.", field="offboarded")

    def subject(self) -> str:
        return f"login:{self.user}"

    def describe(self) -> str:
        why = " (they left)" if self.offboarded else ""
        return f"remove the Kubeflow login of {self.user}{why}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        why = " (left Slack)" if self.offboarded else ""
        return f"Remove the login of {short_name(self.user)}{why}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        mode = ctx.settings.workspace.dex_mode
        if mode == "external":
            raise errors.InvalidInput(
                "Kubeflow logins come from the upstream identity provider here "
                "(`KFBOT_DEX_MODE=external`); kf-chatops cannot remove them.",
                field="user",
            )
        user = kubeflow_user_id(ctx.settings, self.user)
        key = login_key(user)
        records = [
            (name, ws.created[key])
            for name in ctx.facts.login_records(user)
            if (ws := ctx.facts.workspace(name)) is not None and key in ws.created
        ]
        records = [
            (name, entry) for name, entry in records
            if entry.get("action") == ActionName.DEX_USER
            and as_text(as_object(entry["params"]).get("email", "")) == user
        ]
        if not records:
            raise errors.InvalidInput(
                f"Cannot remove the login of {user}: kf-chatops neither made nor adopted it "
                "(a login made by hand is removed where it was made, or adopted first).",
                field="user",
            )
        owned = ctx.facts.owned_workspaces(user)
        if owned or (why := ctx.facts.user_in_use(user, "")):
            held = f"still owns {', '.join(f'`{w}`' for w in owned)}" if owned else f"is still {why}"
            if not self.offboarded:
                raise errors.InvalidInput(
                    f"Cannot remove the login of {user}: {user} {held}. Transfer or unshare "
                    "first; the login goes with the last access.",
                    field="user",
                )
            return Plan.of([], [
                f"Nothing is removed yet: {user} {held}. Once offboarding's transfer and "
                "unshare requests are done, approving finds the removal and it waits for an admin again."
            ])
        names = ",".join(name for name, _ in records)
        # One step; its key names every workspace that records the login, so success forgets
        # each record (workspace names hold no ``,`` or ``:``).
        step_key = f"{names}:{key}"
        name, entry = records[0]
        params = dict(as_object(entry["params"]))
        if not any(is_adopted(e) for _, e in records):
            # A made login with no access left (the unshare or delete that should have taken it
            # did not): the same step, as the bot's own login.
            return Plan.of([Step(ActionName.DEX_USER_REMOVE, step_key, params,
                                 f"remove the Dex login kf-chatops made for {user}")], [])
        name, entry = next((n, e) for n, e in records if is_adopted(e))
        params = dict(as_object(entry["params"]))
        shape = params.get("static_entry")
        if params.get("mode") == "configmap" and shape not in (STATIC_INLINE_HASH, STATIC_HASH_FROM_ENV):
            raise errors.InvalidInput(
                f"Cannot remove the login of {user}: its adoption did not record the shape of its "
                "`staticPasswords` entry (adopted by an older bot); remove it from Dex's config by hand.",
                field="user",
            )
        # What lets the removal action delete a login without the bot's mark (check_removable).
        params["adopted"] = True
        summary = f"remove the adopted Dex login of {user} (recorded by `{name}`)"
        warnings: list[str] = []
        if shape:
            summary += (
                ", its `staticPasswords` entry with an inline hash" if shape == STATIC_INLINE_HASH
                else f", its `staticPasswords` entry and Secret key `{params.get('env_key')}`"
            )
            warnings.append(
                f"The runbook's Dex manifests may still list {user}: re-applying them with kustomize "
                "brings the login back; take it out of them too."
            )
        return Plan.of([Step(ActionName.DEX_USER_REMOVE, step_key, params, summary)], warnings)

    def on_success(self, done: Applied) -> Success:
        changes = []
        for step in done.plan.steps:
            if step.action != ActionName.DEX_USER_REMOVE:
                continue
            names, key = step.key.split(":", 1)
            changes += [UpdateWorkspaceObjects(name, remove=(key,)) for name in names.split(",")]
        return Success(changes=tuple(changes))
