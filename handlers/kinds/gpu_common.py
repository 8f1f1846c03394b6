"""What the cost-control kinds share (``notebook.stop``, ``gpu.scale``, ``gpu.hold``): the
owner-or-admin rule, how a hold target is written, and the bot-made nodegroups of a workspace.

A workspace's owner, or an admin, stops what costs money without waiting for anyone: stopping a
notebook or scaling an idle nodegroup to zero takes nothing from anyone but the workspace's own
running work, which the plan checks for first. Anyone else is refused before anything is
recorded, with a message that says who may. An admin's request applies alone only when it is not
for them (they are none of the kind's ``beneficiaries``): an admin who works in the workspace
waits for another admin, as for an approval (docs/SECURITY.md invariant 3); the owner's own
self-service stays, as for shares."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from handlers import errors, naming
from handlers.actions import ActionName
from handlers.kinds.base import ADOPTED, AutoRule, RequestKind, RequestRule, is_adopted, kubeflow_user, owns
from handlers.model import Actor
from handlers.plan import JSON, Step, as_object
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id

NOTEBOOK_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Notebook's name: a DNS-1123 label (the controller names its StatefulSet and Service after it)."""


def is_owner_or_admin(actor: Actor, facts: Facts, workspace: str, settings: CoreSettings) -> bool:
    if actor.is_admin:
        return True
    ws = facts.workspace(workspace)
    return ws is not None and ws.owner == kubeflow_user(actor, settings)


def owner_or_admin_may_ask(
    what: str, workspace_of: Callable[[RequestKind], str], *, hide_from_outsiders: bool = False
) -> RequestRule:
    """``may_request``: only the workspace's owner or an admin; ``what`` says what they asked.
    ``hide_from_outsiders``: someone neither owner nor contributor is told there is no such
    workspace of theirs, as ``/kf workspace show`` tells them, whether it exists or not."""

    def rule(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
        workspace = workspace_of(kind)
        if is_owner_or_admin(actor, facts, workspace, settings):
            return
        if hide_from_outsiders:
            ws = facts.workspace(workspace)
            user = kubeflow_user(actor, settings)
            if ws is None or (user not in ws.contributors and user not in ws.recorded_grants):
                raise errors.NotFound(f"There is no workspace `{workspace}` of yours.")
        raise errors.Forbidden(f"Only the owner of `{workspace}` or an admin can {what}.")

    return rule


def is_for(actor: Actor, kind: RequestKind, facts: Facts, settings: CoreSettings) -> bool:
    """Whether ``actor`` is one of the people ``kind`` is for, compared as ``handlers.policy``
    compares deciders (raw and ``KFBOT_USER_ID_MAP``-mapped, either side)."""
    mine = {actor.email.strip().lower(), kubeflow_user(actor, settings)}
    for person in kind.beneficiaries(facts):
        raw = person.strip().lower()
        if mine & {raw, kubeflow_user_id(settings, raw)}:
            return True
    return False


def applies_alone(
    kind: RequestKind, actor: Actor, facts: Facts, workspace: str, settings: CoreSettings
) -> bool:
    """The owner-or-admin auto rule: the owner's own self-service, or an admin the request is not
    for. An admin among the beneficiaries (a contributor) is an interested party: their request
    waits for another admin, since an auto-approval is a decision too."""
    if owns(actor, facts, workspace, settings):
        return True
    return actor.is_admin and not is_for(actor, kind, facts, settings)


def owner_or_admin_applies(reason: str, workspace_of: Callable[[RequestKind], str]) -> AutoRule:
    """``auto_apply``: the owner's request, or an uninvolved admin's, applies at once
    (``may_request`` refused everyone else already; checked again here so the rule stands on its
    own); an admin the request is for waits for another admin."""

    def rule(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
        return reason if applies_alone(kind, actor, facts, workspace_of(kind), settings) else None

    return rule


def validate_notebook_name(name: str) -> str:
    if not NOTEBOOK_NAME.fullmatch(name):
        raise errors.InvalidInput(
            f"{naming.show_value(name)} is not a notebook name (lowercase letters, digits and `-`, "
            "at most 63).",
            field="notebook",
        )
    return name


def _marked(entry: Mapping[str, JSON]) -> Mapping[str, JSON]:
    params = as_object(entry["params"])
    return {**params, ADOPTED: True} if is_adopted(entry) else params


def bot_nodegroups(ws: WorkspaceFacts) -> list[tuple[str, Mapping[str, JSON]]]:
    """(registry key, recorded params) of every EKS nodegroup the bot made for ``ws``: the only
    nodegroups the cost kinds ever scale, replace or remove."""
    # An adopted nodegroup's steps say so: the adapter scales it without the bot's mark.
    return [
        (key, _marked(entry))
        for key, entry in ws.created.items()
        if entry["action"] == ActionName.NODEGROUP
    ]


def scaling_of(params: Mapping[str, JSON]) -> tuple[int, int, int]:
    """(min, desired, max) as the registry records them for a nodegroup."""
    scaling = as_object(params.get("scaling") or {})

    def size(key: str) -> int:
        value = scaling.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return size("minSize"), size("desiredSize"), size("maxSize")


def scaling_step(
    key: str, params: Mapping[str, JSON], low: int, desired: int | None, high: int, summary: str
) -> Step:
    """The ``aws.nodegroup.scaling`` step for the nodegroup recorded under ``key``: minimum,
    desired (None: EKS keeps it, clamped within the new bounds) and maximum size."""
    step_params: dict[str, JSON] = {
        "cluster": params["cluster"],
        "name": str(params["name"]),
        "min_size": low,
        "desired_size": desired,
        "max_size": high,
    }
    if params.get(ADOPTED) is True:
        step_params["adopted"] = True
    return Step(ActionName.NODEGROUP_SCALING, key, step_params, summary)
