"""``workspace.adopt``: record a workspace made by hand (the runbook's Profile, Dex login, bucket,
IAM policy entries, nodegroup) in the registry as **adopted**, so the other commands work on it.

Only an admin may ask, and another admin approves (no auto-apply rule). Nothing in the cluster or
AWS changes: the plan has one step per object found, each of which only checks at apply time that
the object is still there (``kubeflow.adopt``, ``dex.adopt``, ``aws.adopt``), and ``on_success``
records them with the ``adopted`` marker. The plan is rendered again before it applies, so an
object that appeared or went away since the approval sends the request back for a new one.

The owner recorded is the Profile's owner unless ``--owner`` names another (the plan says which).
A namespace the registry already holds, or one of the platform's, is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from handlers import errors, naming
from handlers.actions import ADOPTABLE, ActionName
from handlers.kinds.base import (
    ADOPTED,
    Applied,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    PutGrant,
    PutWorkspace,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    short_name,
    text,
)
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, as_object, as_text
from handlers.ports import Discovery, Facts, FoundObject
from handlers.settings import CoreSettings, kubeflow_user_id

USAGE = "/kf workspace adopt NAMESPACE [--owner EMAIL]"
ADOPT_BUTTON: Final = "kf_adopt_workspace"
"""The action id of ``/kf workspace scan``'s Adopt button; its value is ``{"namespace": NS}``."""
_MAX_BUTTON_VALUE = 2000


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    if not actor.is_admin:
        raise errors.Forbidden("Only an admin can ask to adopt a workspace made by hand.")


def _build(p: Parsed) -> WorkspaceAdopt:
    opts = dict(p.options)
    owner = p.user(opts.pop("owner")) if "owner" in opts else None
    return WorkspaceAdopt(p.positional[0], owner)


def validate_adoptable_namespace(namespace: str) -> str:
    """A Profile's namespace as the command names it; the platform's own are refused."""
    if not isinstance(namespace, str):
        raise errors.InvalidInput("Name the namespace to adopt.", usage=USAGE, field="namespace")
    naming.validate_workspace_name(namespace)
    if namespace in naming.RESERVED_NAMESPACES or namespace.startswith(("kube-", "istio-", "knative-")):
        raise errors.InvalidInput(
            f"The namespace {naming.show_value(namespace)} belongs to the platform; it is never adopted.",
            usage=USAGE,
            field="namespace",
        )
    return namespace


@dataclass(frozen=True)
class WorkspaceAdopt:
    KIND: ClassVar[str] = "workspace.adopt"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax(
        "workspace adopt", ("NAMESPACE",), {"--owner": Flag("owner", text)}, _build
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    namespace: str
    owner: str | None = None

    def __post_init__(self) -> None:
        validate_adoptable_namespace(self.namespace)
        if self.owner is not None:
            object.__setattr__(self, "owner", naming.normalize_email(self.owner))

    def subject(self) -> str:
        return f"workspace:{self.namespace}"

    def describe(self) -> str:
        return f"adopt workspace `{self.namespace}`" + (f" for {self.owner}" if self.owner else "")

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        owner = f" for {short_name(self.owner)}" if self.owner else ""
        return f"Adopt hand-made workspace {self.namespace}{owner}, asked by {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        # The recorded owner gains owner rights, the Profile's owner keeps or loses them: neither
        # may decide. Contributors keep what the cluster gives them either way.
        found = facts.discover(self.namespace)
        people = [self.owner, found.owner if found is not None else None]
        # Existing contributors become recorded grants (self-service from then on).
        people += [o.name for o in found.objects if o.action == ActionName.CONTRIBUTOR] if found else []
        return tuple(dict.fromkeys(p for p in people if p))

    def _discovered(self, ctx: PlanContext) -> Discovery:
        found = ctx.facts.discover(self.namespace)
        if found is None:
            raise errors.InvalidInput(
                "Adopting needs the live cluster to look at; this bot runs without one (dry run).",
                field="namespace",
            )
        if found.managed_by is not None or ctx.facts.workspace(self.namespace) is not None:
            raise errors.InvalidInput(
                f"The bot already manages `{self.namespace}` "
                f"(workspace `{found.managed_by or self.namespace}`); there is nothing to adopt.",
                field="namespace",
            )
        if not found.profile_exists:
            raise errors.NotFound(f"There is no Kubeflow Profile named `{self.namespace}` to adopt.")
        if found.refused is not None:
            raise errors.InvalidInput(
                f"The Profile `{self.namespace}` is not adoptable: {found.refused}. Only a namespace "
                "the profile controller made for that Profile is.",
                field="namespace",
            )
        return found

    def recorded_owner(self, settings: CoreSettings, found: Discovery) -> str:
        if self.owner is not None:
            return kubeflow_user_id(settings, self.owner)
        if not found.owner:
            raise errors.InvalidInput(
                f"The Profile `{self.namespace}` names no owner; say who owns it with `--owner EMAIL`.",
                usage=USAGE,
                field="owner",
            )
        return found.owner

    def plan(self, ctx: PlanContext) -> Plan:
        found = self._discovered(ctx)
        owner = self.recorded_owner(ctx.settings, found)
        steps: list[Step] = []
        for obj in found.objects:
            params: dict[str, JSON] = dict(obj.params)
            if obj.action == ActionName.PROFILE:
                params["owner"] = owner
            step_params: dict[str, JSON] = {"object": obj.action, "name": obj.name, "params": params}
            if obj.resources:
                step_params["resources"] = list(obj.resources)
            steps.append(
                Step(
                    ADOPTABLE[ActionName(obj.action)],
                    obj.key,
                    step_params,
                    f"adopt {_what(obj.action)} {_shown(obj)} (found by {obj.found_by})",
                )
            )
        if self.owner is not None and found.owner not in (None, owner):
            whose = f"recorded owner: {owner}, given with --owner; the Profile names {found.owner}"
        elif self.owner is not None:
            whose = f"recorded owner: {owner}, given with --owner"
        else:
            whose = f"recorded owner: {owner}, the Profile's owner"
        warnings = [
            f"Adoption only records: nothing in the cluster or AWS changes ({whose}).",
            "Adopted objects are never deleted by `workspace delete` unless it names `--delete-adopted`.",
            *found.notes,
        ]
        return Plan.of(steps, warnings)

    def on_success(self, done: Applied) -> Success:
        created: dict[str, dict[str, JSON]] = {}
        grants: list[PutGrant] = []
        owner = ""
        for step in done.plan.steps:
            inner = as_object(step.params["params"])
            action = as_text(step.params["object"])
            if action == ActionName.PROFILE:
                owner = as_text(inner["owner"])
            if action == ActionName.CONTRIBUTOR:
                # A contributor is a grant, not an object the workspace owns.
                user, role = as_text(inner["user"]), as_text(inner["role"])
                grants.append(PutGrant(self.namespace, user, role, done.request_id, None))
                continue
            created[step.key] = {"action": action, "params": dict(inner), ADOPTED: True}
        return Success(
            changes=(PutWorkspace(self.namespace, self.namespace, owner, done.request_id, created), *grants)
        )


_WHAT = {
    ActionName.PROFILE: "Profile",
    ActionName.DEX_USER: "Dex login",
    ActionName.BUCKET: "S3 bucket",
    ActionName.IAM_RESOURCES: "IAM policy entry of",
    ActionName.NODEGROUP: "EKS nodegroup",
    ActionName.CONTRIBUTOR: "contributor",
    ActionName.WORKSPACE_ROLE: "IAM role",
}


def _shown(obj: FoundObject) -> str:
    # A contributor's name is whatever a RoleBinding annotation holds: quoted, never markup.
    return naming.show_value(obj.name) if obj.action == ActionName.CONTRIBUTOR else f"`{obj.name}`"


def _what(action: str) -> str:
    return _WHAT.get(ActionName(action), action) if action in set(ActionName) else action


def adopt_button_value(namespace: str) -> str:
    return json.dumps({"namespace": namespace}, separators=(",", ":"))


def adopt_from_button(value: object) -> WorkspaceAdopt:
    """The request a click on the scan's Adopt button files. The value comes back from the
    clicker's client, so it is read as hostile input: a JSON object holding exactly a namespace,
    which the kind then checks as it checks the typed command. The clicker files it through the
    normal gate (an admin may ask; another admin decides)."""

    def refused(why: str) -> errors.InvalidInput:
        return errors.InvalidInput(f"This button's value is not one the bot made ({why}); nothing was done.")

    if not isinstance(value, str) or len(value) > _MAX_BUTTON_VALUE:
        raise refused("too long")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        raise refused("not JSON") from None
    if not isinstance(data, Mapping) or set(data) != {"namespace"} or not isinstance(data["namespace"], str):
        raise refused("it must hold exactly a namespace")
    return WorkspaceAdopt(data["namespace"])
