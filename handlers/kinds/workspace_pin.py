"""``workspace.pin``: give a workspace made before pinning its workspace taint, and one made before
cost control its ``kfbot-notebook-activity`` AuthorizationPolicy. Only an admin approves it;
``/kf workspace pin --all`` (``handlers.parse.PinAll``) files one per workspace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import NOTEBOOK_ACTIVITY_POLICY, ActionName
from handlers.kinds.base import (
    Applied,
    PlanContext,
    PolicyRow,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    require_workspace,
    short_name,
    workspace_people,
)
from handlers.kinds.gpu_common import bot_nodegroups
from handlers.kinds.workspace_create import (
    GPU_TAINT,
    PINNING_LIMITS,
    gpu_nodegroup_taints,
    notebook_activity_step,
    poddefault_step,
)
from handlers.plan import JSON, Plan, Step, as_list, as_object
from handlers.ports import Facts, WorkspaceFacts


def _taints(params: Mapping[str, JSON]) -> list[Mapping[str, JSON]]:
    """The taints (EKS's spelling) in a recorded nodegroup step's params."""
    return [as_object(t) for t in as_list(params.get("taints") or [])]


def gpu_nodegroups(ws: WorkspaceFacts) -> list[tuple[str, Mapping[str, JSON]]]:
    """(step key, create params) of the GPU nodegroups the bot made for ``ws``, from the registry."""
    nodegroups = bot_nodegroups(ws)  # an adopted one's params say so (its steps need to)
    return [
        (key, params)
        for key, params in nodegroups
        if any(t.get("key") == GPU_TAINT["key"] for t in _taints(params))
    ]


def _lacks_activity_policy(ws: WorkspaceFacts) -> bool:
    """Made before cost control: the registry holds no ``kfbot-notebook-activity`` policy."""
    return f"AuthorizationPolicy/{ws.namespace}/{NOTEBOOK_ACTIVITY_POLICY}" not in ws.created


@dataclass(frozen=True)
class WorkspacePin:
    """Give a workspace made before pinning its workspace taint: for each GPU nodegroup the bot
    made, first the PodDefault's tolerations, then the taint (so no notebook of the workspace is
    ever refused by its own nodes)."""

    KIND: ClassVar[str] = "workspace.pin"
    USAGE: ClassVar[str] = "/kf workspace pin NAME | --all"
    SYNTAX: ClassVar[Syntax] = Syntax("workspace pin", ("NAME",), {}, lambda p: WorkspacePin(p.positional[0]))
    POLICY: ClassVar[PolicyRow] = PolicyRow()  # like every kind without an auto-apply rule: an admin
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    name: str

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        return f"pin the GPU nodegroups of `{self.name}` to it"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Pin the GPU nodegroups of {self.name}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.name)  # their GPUs are what moves

    @staticmethod
    def pending(ws: WorkspaceFacts) -> bool:
        """Whether the registry shows a GPU nodegroup of ``ws`` without its workspace taint, or no
        notebook-activity policy."""
        key, value = naming.workspace_taint(ws.namespace)
        return _lacks_activity_policy(ws) or any(
            not any(t.get("key") == key and t.get("value") == value for t in _taints(params))
            for _, params in gpu_nodegroups(ws)
        )

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.name)
        nodegroups = gpu_nodegroups(ws)
        if not nodegroups and not _lacks_activity_policy(ws):
            raise errors.InvalidInput(
                f"`{self.name}` has no GPU nodegroup made by kf-chatops; there is nothing to pin.",
                field="name",
            )
        taint_key, taint_value = naming.workspace_taint(ws.namespace)
        steps: list[Step] = []
        for key, params in nodegroups:
            name = str(params["name"])
            poddefault = ws.created.get(f"PodDefault/{ws.namespace}/{name}")
            if poddefault is None:
                # Tainting without the toleration would lock the workspace out of its own nodes.
                raise errors.InvalidInput(
                    f"The PodDefault `{name}` in `{ws.namespace}` was not made by kf-chatops, so the bot "
                    f"cannot give it the toleration; nodegroup `{name}` is left as it is.",
                    field="name",
                )
            wanted = _taints(params)
            wanted += [t for t in gpu_nodegroup_taints(ws.namespace) if t not in wanted]
            description = str(as_object(poddefault["params"]).get("description", ""))
            steps.append(poddefault_step(ws.namespace, name, description, wanted))
            steps.append(
                Step(
                    ActionName.NODEGROUP_TAINTS,
                    key,
                    {"cluster": params["cluster"], "name": name, "taints": wanted},
                    f"taint EKS nodegroup `{name}` with `{taint_key}={taint_value}:NoSchedule` (once the "
                    "PodDefault tolerates it)",
                )
            )
        if _lacks_activity_policy(ws):
            steps.append(notebook_activity_step(ws.namespace))
        return Plan.of(steps, [PINNING_LIMITS] if nodegroups else [])

    def on_success(self, done: Applied) -> Success:
        """The registry records the pinned PodDefault and the nodegroup's taints over the
        create-time params, and the activity policy it made, so the next ``pin --all`` passes the
        workspace by."""
        steps = done.plan.steps
        return Success(
            changes=(
                UpdateWorkspaceObjects(
                    self.name,
                    replace={s.key: dict(s.params) for s in steps if s.action == ActionName.PODDEFAULT},
                    merge={
                        s.key: {"taints": s.params["taints"]}
                        for s in steps
                        if s.action == ActionName.NODEGROUP_TAINTS
                    },
                    add={
                        s.key: {"action": s.action, "params": dict(s.params)}
                        for idx, s in enumerate(steps)
                        if s.action == ActionName.NOTEBOOK_ACTIVITY
                        and (outcome := done.outcomes.get(idx)) is not None
                        and outcome.created
                    },
                ),
            )
        )
