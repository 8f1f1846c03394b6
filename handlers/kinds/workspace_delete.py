"""``workspace.delete``: remove what the bot made for a workspace, newest first; data stays unless
``--purge-data``. The owner or an admin may ask; an admin approves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import STATIC_HASH_FROM_ENV, STATIC_INLINE_HASH, ActionName
from handlers.kinds.base import (
    POLICY_VERSION_NOTE,
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
    short_name,
    text,
    workspace_people,
)
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, as_list, as_object, as_text
from handlers.ports import Facts
from handlers.settings import CoreSettings

# Deletion walks the create steps backwards; each create action has a removal twin.
_REMOVAL: dict[str, ActionName | None] = {
    ActionName.NODEGROUP: ActionName.NODEGROUP_REMOVE,
    ActionName.LAUNCH_TEMPLATE: ActionName.LAUNCH_TEMPLATE_REMOVE,
    ActionName.WORKSPACE_ROLE: ActionName.WORKSPACE_ROLE_REMOVE,
    ActionName.IAM_RESOURCES: ActionName.IAM_RESOURCES_REMOVE,
    ActionName.BUCKET: ActionName.BUCKET_REMOVE,
    ActionName.DEX_USER: ActionName.DEX_USER_REMOVE,
    ActionName.PODDEFAULT: None,  # goes with the namespace
    ActionName.NOTEBOOK_ACTIVITY: None,  # goes with the namespace
    ActionName.PROFILE: ActionName.PROFILE_REMOVE,
}
_KEEPS_DATA = (ActionName.BUCKET, ActionName.PROFILE)
"""Create actions whose removal deletes data only when asked (``purge_data``)."""


def _prose(removal: ActionName, params: Mapping[str, JSON], key: str) -> str:
    """A removal step in words, as a create plan's steps are ("remove S3 bucket `b` (kept if it
    holds data)")."""
    purge = bool(params.get("purge_data"))
    if removal == ActionName.PROFILE_REMOVE:
        volumes = " with its volumes" if purge else ""
        return f"remove Kubeflow Profile `{params.get('name')}` and its namespace{volumes}"
    if removal == ActionName.BUCKET_REMOVE:
        data = " and everything in it" if purge else " (kept if it holds data)"
        return f"remove S3 bucket `{params.get('bucket')}`{data}"
    if removal == ActionName.DEX_USER_REMOVE:
        return f"remove the Dex login for {params.get('email')}"
    if removal == ActionName.IAM_RESOURCES_REMOVE:
        policy = str(params.get("policy_arn") or "").rsplit("/", 1)[-1]
        return f"remove the bucket from IAM policy `{policy}`"
    if removal == ActionName.NODEGROUP_REMOVE:
        return f"remove EKS nodegroup `{params.get('name')}` and its nodes"
    if removal == ActionName.LAUNCH_TEMPLATE_REMOVE:
        return f"remove EC2 launch template `{params.get('name')}`"
    if removal == ActionName.WORKSPACE_ROLE_REMOVE:
        return f"remove IAM role `{params.get('name')}` (its inline policies deleted, managed ones detached)"
    return f"remove {key}"


def _adopted_removal(
    action: str, params: Mapping[str, JSON], summary: str, kept: list[str]
) -> tuple[str, bool]:
    """An adopted object named by ``--delete-adopted``: its step's words (the shape its removal
    handles, as the runbook made it), and whether the step may run. What stays behind, and why,
    goes to ``kept`` ("kept: ..."): nothing adopted is left silently."""
    summary = summary.replace("remove the ", "remove the adopted ", 1) if summary.startswith(
        "remove the "
    ) else summary.replace("remove ", "remove adopted ", 1)
    if action == ActionName.WORKSPACE_ROLE:
        name = params.get("name")
        others = [str(b) for b in as_list(params.get("other_buckets") or [])]
        if others:
            kept.append(f"kept: IAM role `{name}`, because it also grants bucket(s) "
                        f"{', '.join(f'`{b}`' for b in others)} of other workspaces")
            return summary, False
        attached = [str(a) for a in as_list(params.get("attached_policies") or [])]
        if attached:
            kept.append(f"kept: IAM role `{name}`, because managed policies are attached to it "
                        f"({', '.join(f'`{a}`' for a in attached)}), so something else may use it")
            return summary, False
        if params.get("trusts_namespace") is not True:
            kept.append(f"kept: IAM role `{name}`, because its trust policy does not name this "
                        "namespace's default-editor alone, so something else may use it")
            return summary, False
    elif action == ActionName.IAM_RESOURCES:
        policy = str(params.get("policy_arn") or "").rsplit("/", 1)[-1]
        statements = [str(s) for s in as_list(params.get("statements") or [])]
        shapes = as_list(params.get("statement_shapes") or [])
        unnamed = [s for s in statements if s.startswith("#")]
        if unnamed and not shapes:
            kept.append(f"kept: the bucket in statement(s) {', '.join(f'`{s}`' for s in unnamed)} of IAM "
                        f"policy `{policy}`, because they have no Sid and the adoption did not record "
                        "their text (adopted by an older bot), so they cannot be told apart")
        if statements:
            summary += f" (Allow statement(s) {', '.join(f'`{s}`' for s in statements)}, as written by hand)"
        else:
            kept.append(f"kept: the bucket in the hand-written statements of IAM policy `{policy}`, because "
                        "the adoption did not record them (adopted by an older bot); only the bot's own "
                        "statement changes")
        denies = [str(s) for s in as_list(params.get("deny_statements") or [])]
        if denies:
            kept.append(f"kept: Deny statement(s) {', '.join(f'`{s}`' for s in denies)} of IAM policy "
                        f"`{policy}`, because taking the bucket out of a Deny widens access")
    elif action == ActionName.DEX_USER and params.get("mode") == "configmap":
        shape = params.get("static_entry")
        if shape == STATIC_INLINE_HASH:
            summary += " (its `staticPasswords` entry, inline hash)"
        elif shape == STATIC_HASH_FROM_ENV:
            summary += f" (its `staticPasswords` entry and Secret key `{params.get('env_key')}`)"
        else:
            kept.append(f"kept: the `staticPasswords` entry of {params.get('email')}, because the adoption "
                        "did not record its shape (adopted by an older bot)")
        if shape:
            kept.append(f"The runbook's Dex manifests may still list {params.get('email')}: re-applying "
                        "them with kustomize brings the login back; take it out of them too.")
    return summary, True


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

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        data = " and its data" if self.purge_data else ""
        return f"Delete workspace {self.name}{data}, for {short_name(requester)}"

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
        # Read now, once: what changed since adoption (handed to another team, statements written
        # since). The removal steps check again when they run.
        changes = (
            (ctx.facts.adopted_changes(ws.namespace) or {})
            if self.delete_adopted and any(is_adopted(e) for e in ws.created.values())
            else {}
        )
        for key, created in reversed(list(ws.created.items())):
            action, params = as_text(created["action"]), dict(as_object(created["params"]))
            removal = _REMOVAL.get(action)
            adopted = is_adopted(created)
            if adopted and not self.delete_adopted:
                kept.append(key)
                continue
            if removal is None:
                continue
            if action == ActionName.DEX_USER and (why := ctx.facts.user_in_use(as_text(params["email"]),
                                                                                self.name)):
                warnings.append(f"The Dex login {params['email']} is kept: its holder is still {why}.")
                continue
            if action in _KEEPS_DATA:
                params["purge_data"] = self.purge_data
            summary = _prose(removal, params, key)
            if adopted:
                if key in changes:
                    warnings.append(changes[key])
                    if action != ActionName.IAM_RESOURCES:  # the recorded statements still go
                        continue
                summary, runs = _adopted_removal(action, params, summary, warnings)
                if not runs:
                    continue
                # What lets the removal action delete an object without the bot's mark.
                params["adopted"] = True
                if action in (ActionName.BUCKET, ActionName.NODEGROUP):
                    params["namespace"] = ws.namespace  # re-checked against its tags when it runs
            if removal == ActionName.DEX_USER_REMOVE:
                params["except_namespace"] = ws.namespace  # re-checked for other use when it runs
            if removal == ActionName.IAM_RESOURCES_REMOVE:
                summary += f" ({POLICY_VERSION_NOTE})"
            steps.append(Step(removal, key, params, summary))
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
