"""``workspace.delete``: remove what the bot made for a workspace, newest first; data stays unless
``--purge-data``. The owner or an admin may ask; an admin approves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    DeleteWorkspace,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    is_adopted,
    kubeflow_user,
    require_workspace,
    text,
    workspace_people,
)
from handlers.model import Actor
from handlers.plan import Plan, Step, as_object, as_text
from handlers.ports import Facts
from handlers.settings import CoreSettings

# Deletion walks the create steps backwards; each create action has a removal twin.
_REMOVAL: dict[str, ActionName | None] = {
    ActionName.NODEGROUP: ActionName.NODEGROUP_REMOVE,
    ActionName.IAM_RESOURCES: ActionName.IAM_RESOURCES_REMOVE,
    ActionName.BUCKET: ActionName.BUCKET_REMOVE,
    ActionName.DEX_USER: ActionName.DEX_USER_REMOVE,
    ActionName.PODDEFAULT: None,  # goes with the namespace
    ActionName.NOTEBOOK_ACTIVITY: None,  # goes with the namespace
    ActionName.PROFILE: ActionName.PROFILE_REMOVE,
}
_KEEPS_DATA = (ActionName.BUCKET, ActionName.PROFILE)
"""Create actions whose removal deletes data only when asked (``purge_data``)."""


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    assert isinstance(kind, WorkspaceDelete)
    if actor.is_admin:
        return
    ws = facts.workspace(kind.name)
    if ws is not None and ws.owner != kubeflow_user(actor, settings):
        raise errors.Forbidden(f"Only the owner of `{kind.name}` or an admin can ask to delete it.")


def _build(p: Parsed) -> WorkspaceDelete:
    opts = dict(p.options)
    return WorkspaceDelete(p.positional[0], opts.pop("confirm", ""), **opts)


@dataclass(frozen=True)
class WorkspaceDelete:
    KIND: ClassVar[str] = "workspace.delete"
    USAGE: ClassVar[str] = "/kf workspace delete NAME --confirm NAME [--purge-data] [--delete-adopted]"
    SYNTAX: ClassVar[Syntax] = Syntax(
        "workspace delete",
        ("NAME",),
        {
            "--confirm": Flag("confirm", text),
            "--purge-data": Flag("purge_data", None),
            "--delete-adopted": Flag("delete_adopted", None),
        },
        _build,
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    name: str
    confirm: str
    purge_data: bool = False
    delete_adopted: bool = False
    """Also remove the objects the workspace's adoption recorded (made by hand); each is a step."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)
        if self.confirm != self.name:
            raise errors.InvalidInput(
                f"To delete `{self.name}`, repeat its name: `--confirm {self.name}`.",
                usage=self.USAGE,
                field="confirm",
            )

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        return (
            f"delete workspace `{self.name}`"
            + (" *and its data*" if self.purge_data else "")
            + (" *and the objects it adopted*" if self.delete_adopted else "")
        )

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.name)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.name)
        removes_profile = any(
            e["action"] == ActionName.PROFILE and (self.delete_adopted or not is_adopted(e))
            for e in ws.created.values()
        )
        if ws.pvcs and not self.purge_data and removes_profile:
            # Refused before anything is removed: the Profile step comes last, and a delete that
            # stopped there would leave the workspace without its nodegroup, grants and bucket.
            raise errors.InvalidInput(
                f"Nothing was deleted: namespace `{ws.namespace}` still has {ws.pvcs} "
                "PersistentVolumeClaim(s), and deleting the workspace would delete their data. "
                "Delete the volumes first, or ask again with `--purge-data`.",
                usage=self.USAGE,
                field="purge_data",
            )
        steps: list[Step] = []
        warnings: list[str] = []
        kept: list[str] = []
        for key, created in reversed(list(ws.created.items())):
            action, params = as_text(created["action"]), dict(as_object(created["params"]))
            removal = _REMOVAL.get(action)
            adopted = is_adopted(created)
            if adopted and not self.delete_adopted:
                kept.append(key)
                continue
            if removal is None:
                continue
            if action == ActionName.DEX_USER and ctx.facts.user_in_use(as_text(params["email"]), self.name):
                warnings.append(
                    f"The Dex login {params['email']} is kept: it still owns or shares another workspace."
                )
                continue
            if action in _KEEPS_DATA:
                params["purge_data"] = self.purge_data
            steps.append(Step(removal, key, params, f"remove {'adopted ' if adopted else ''}{key}"))
        if kept:
            warnings.append(
                "Kept, because they were adopted (made by hand; only the record is forgotten): "
                + ", ".join(f"`{k}`" for k in kept)
                + ". Name `--delete-adopted` to remove them too."
            )
        if not self.purge_data:
            warnings.append(
                "Data is kept: a non-empty bucket stays, and a namespace with volumes is not deleted."
            )
        return Plan.of(steps, warnings)

    def on_success(self, done: Applied) -> Success:
        return Success(changes=(DeleteWorkspace(self.name),))
