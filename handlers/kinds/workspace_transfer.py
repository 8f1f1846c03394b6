"""``workspace.transfer``: give a workspace a new owner. Its owner or an admin may ask, and the
offboarding of an owner who left Slack files one of the bot's own; an admin always decides (the
new owner gains a workspace, its data and its costs).

The Profile's ``spec.owner`` is what Kubeflow knows the owner by: the profile controller then moves
``namespaceAdmin`` and ``ns-owner-access-istio`` to the new owner, but only once the namespace's
``owner`` annotation names them too (its takeover guard), so the step moves both
(``kubeflow.profile.owner``). A new owner who was a contributor loses the contributor binding (the
owner's admin binding covers it). The offboarding's request also removes the previous owner's Dex
login when this workspace's create made it and they use nothing else; an adopted (hand-made) login
is never removed, and the card says it is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming, units
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    CancelTimer,
    DeleteGrant,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    RegistryChange,
    RequestKind,
    SetOwner,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    is_adopted,
    kubeflow_user,
    require_workspace,
    short_name,
    slack_id_of,
    text,
    token_removals,
    tokens_removed,
)
from handlers.kinds.share import collaborator_login
from handlers.kinds.unshare import GRANT_EXPIRE, grant_timer_ref
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, as_object, as_text
from handlers.ports import DataHeld, Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    assert isinstance(kind, WorkspaceTransfer)
    if actor.is_admin:
        return
    ws = facts.workspace(kind.name)
    if ws is None or ws.owner != kubeflow_user(actor, settings):
        raise errors.Forbidden(f"Only the owner of `{kind.name}` or an admin can hand it to someone else.")


def _build(p: Parsed) -> WorkspaceTransfer:
    to = p.options.get("to")
    if not to:
        raise errors.InvalidInput("Say who gets the workspace: `--to EMAIL`.", usage=WorkspaceTransfer.USAGE)
    return WorkspaceTransfer(p.positional[0], p.user(str(to)))


def data_held(ws: WorkspaceFacts, held: DataHeld) -> str:
    """What the workspace holds, for the approver: its volumes and its bucket, with their sizes."""
    pvcs = held.pvcs if held.pvcs is not None else ws.pvcs
    text = f"It holds {'an unknown number of' if pvcs is None else pvcs} PersistentVolumeClaim(s)"
    if held.pvc_bytes is not None:
        text += f" ({units.format_bytes(held.pvc_bytes)} requested)"
    bucket = held.bucket or next(
        (
            str(as_object(entry["params"]).get("bucket"))
            for entry in ws.created.values()
            if entry["action"] == ActionName.BUCKET
        ),
        None,
    )
    if bucket:
        text += f" and bucket `{bucket}`"
        if held.bucket_bytes is not None:
            text += f" ({'at least ' if held.bucket_more else ''}{units.format_bytes(held.bucket_bytes)})"
    return text + "; all of it stays and goes to the new owner."


@dataclass(frozen=True)
class WorkspaceTransfer:
    KIND: ClassVar[str] = "workspace.transfer"
    USAGE: ClassVar[str] = "/kf workspace transfer NAME --to EMAIL"
    SYNTAX: ClassVar[Syntax] = Syntax("workspace transfer", ("NAME",), {"--to": Flag("to", text)}, _build)
    POLICY: ClassVar[PolicyRow] = PolicyRow(may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    name: str
    to: str
    offboarded: bool = False
    """Set only by offboarding (no flag spells it): the previous owner left Slack, so the Dex login
    this workspace's create made for them goes too, when they use nothing else."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)
        object.__setattr__(self, "to", naming.normalize_email(self.to))
        if not isinstance(self.offboarded, bool):
            raise errors.InvalidInput("`offboarded` is true or false.", field="offboarded")

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        return f"hand workspace `{self.name}` to {self.to}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        why = " (its owner left)" if self.offboarded else ""
        return f"Hand {self.name} over to {short_name(self.to)}{why}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.to,)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.name)
        to = kubeflow_user_id(ctx.settings, self.to)
        if to == ws.owner:
            raise errors.InvalidInput(f"{to} owns `{ws.name}` already.", usage=self.USAGE, field="to")
        steps = [
            Step(
                ActionName.PROFILE_OWNER,
                f"ProfileOwner/{ws.namespace}",
                {"name": ws.namespace, "owner": to, "previous": ws.owner},
                f"make {to} the owner of Profile `{ws.namespace}` (was {ws.owner})",
            )
        ]
        if to in ws.contributors or to in ws.recorded_grants:
            steps.append(
                Step(
                    ActionName.CONTRIBUTOR_REMOVE,
                    f"Contributor/{ws.namespace}/{to}",
                    {"namespace": ws.namespace, "user": to},
                    f"remove {to}'s contributor binding (the owner's admin binding covers it)",
                )
            )
        if not self.offboarded:
            # The previous owner's tokens outlive the owner's binding: they go with the access.
            # Offboarding revokes them at once with requests of its own, so its plan leaves them out.
            steps.extend(token_removals(ws, ctx.settings, ws.owner, keep_role=None))
        warnings = [data_held(ws, ctx.facts.data_held(ws.name)), f"{ws.owner} loses the owner's access."]
        if self._adopted_login(ctx, ws):
            warnings.append(
                f"{ws.owner}'s adopted Dex login stays: it was made by hand, and a transfer never "
                "removes an adopted login; `login.remove` takes it, with an admin's approval."
            )
        login = self._login(ctx, ws)
        if login is not None:
            key, params = login
            said = f"remove the Dex login kf-chatops made for {ws.owner}"
            steps.append(Step(ActionName.DEX_USER_REMOVE, key, params, said))
        # The new owner needs a login to open what they now own, as a share's grantee does.
        made = collaborator_login(ctx, to)
        if made is not None:
            steps.append(made)
            warnings.append(
                f"{to} has no Kubeflow login today, so they could not sign in: the plan makes one "
                f"(Dex, {ctx.settings.workspace.dex_mode}) with a password nobody knows, and they set "
                "their own from the DM they get."
            )
        return Plan.of(steps, warnings)

    def _login(self, ctx: PlanContext, ws: WorkspaceFacts) -> tuple[str, dict[str, JSON]] | None:
        """The previous owner's Dex login, when offboarding asked, this workspace's create made it
        and they own or share nothing else."""
        if not self.offboarded or ctx.facts.user_in_use(ws.owner, self.name):
            return None
        for key, entry in ws.created.items():
            params = as_object(entry["params"])
            if (
                as_text(entry["action"]) == ActionName.DEX_USER
                and params.get("email") == ws.owner
                and not is_adopted(entry)  # someone's hand-made login: never the bot's to remove
            ):
                # The workspace's own namespace is handed over: no use of the login the step re-checks.
                return key, {"email": ws.owner, "mode": params.get("mode", ""),
                             "except_namespace": ws.namespace}
        return None

    def _adopted_login(self, ctx: PlanContext, ws: WorkspaceFacts) -> bool:
        """Offboarding would have removed the owner's login, but this workspace adopted it."""
        if not self.offboarded or ctx.facts.user_in_use(ws.owner, self.name):
            return False
        return any(
            as_text(entry["action"]) == ActionName.DEX_USER
            and as_object(entry["params"]).get("email") == ws.owner
            and is_adopted(entry)
            for entry in ws.created.values()
        )

    def on_success(self, done: Applied) -> Success:
        owner = done.plan.steps[0]
        to = str(owner.params["owner"])
        changes: list[RegistryChange] = [SetOwner(self.name, to, slack_id_of(done, to))]
        removed = tuple(s.key for s in done.plan.steps if s.action == ActionName.DEX_USER_REMOVE)
        # A login this transfer made is recorded as a share's is: Set my password, unshare and
        # delete find it there (one found at apply is someone else's, so not recorded).
        made: dict[str, Mapping[str, JSON]] = {
            step.key: {"action": step.action, "params": dict(step.params)}
            for idx, step in enumerate(done.plan.steps)
            if step.action == ActionName.DEX_USER
            and (outcome := done.outcomes.get(idx)) is not None
            and outcome.created
        }
        changes.append(
            UpdateWorkspaceObjects(self.name, merge=self._profile_owner(done, to), remove=removed, add=made)
        )
        if any(s.action == ActionName.CONTRIBUTOR_REMOVE for s in done.plan.steps):
            changes.append(DeleteGrant(self.name, to))
        revoked, expiries = tokens_removed(done.plan)
        # A time-limited grant the new owner held must not expire into an unshare of the owner.
        users = dict.fromkeys((self.to, to))
        grant_timers = tuple(CancelTimer(GRANT_EXPIRE, grant_timer_ref(self.name, user)) for user in users)
        return Success(changes=(*changes, *revoked), cancel=(*grant_timers, *expiries))

    @staticmethod
    def _profile_owner(done: Applied, to: str) -> dict[str, dict[str, str]]:
        """The registry's Profile entry names the new owner (a later delete's params)."""
        namespace = str(done.plan.steps[0].params["name"])
        return {f"Profile/{namespace}": {"owner": to}}
