"""``workspace.pin``: give a workspace made before pinning its workspace taint. Only an admin
approves it; ``/kf workspace pin --all`` (``handlers.parse.PinAll``) files one per workspace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    PlanContext,
    PolicyRow,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    require_workspace,
    workspace_people,
)
from handlers.kinds.workspace_create import GPU_TAINT, PINNING_LIMITS, gpu_nodegroup_taints, poddefault_step
from handlers.plan import JSON, Plan, Step, as_list, as_object
from handlers.ports import Facts, WorkspaceFacts


def _taints(params: Mapping[str, JSON]) -> list[Mapping[str, JSON]]:
    """The taints (EKS's spelling) in a recorded nodegroup step's params."""
    return [as_object(t) for t in as_list(params.get("taints") or [])]


def gpu_nodegroups(ws: WorkspaceFacts) -> list[tuple[str, Mapping[str, JSON]]]:
    """(step key, create params) of the GPU nodegroups the bot made for ``ws``, from the registry."""
    nodegroups = [
        (key, as_object(entry["params"]))
        for key, entry in ws.created.items()
        if entry["action"] == ActionName.NODEGROUP
    ]
    return [
        (key, params)
        for key, params in nodegroups
        if any(t.get("key") == GPU_TAINT["key"] for t in _taints(params))
    ]


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

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.name)  # their GPUs are what moves

    @staticmethod
    def pending(ws: WorkspaceFacts) -> bool:
        """Whether the registry shows a GPU nodegroup of ``ws`` without its workspace taint."""
        key, value = naming.workspace_taint(ws.namespace)
        return any(
            not any(t.get("key") == key and t.get("value") == value for t in _taints(params))
            for _, params in gpu_nodegroups(ws)
        )

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.name)
        nodegroups = gpu_nodegroups(ws)
        if not nodegroups:
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
        return Plan.of(steps, [PINNING_LIMITS])

    def on_success(self, done: Applied) -> Success:
        """The registry records the pinned PodDefault and the nodegroup's taints over the
        create-time params, so the next ``pin --all`` passes the workspace by."""
        steps = done.plan.steps
        return Success(
            changes=(
                UpdateWorkspaceObjects(
                    self.name,
                    replace={s.key: dict(s.params) for s in steps if s.action == ActionName.PODDEFAULT},
                    merge={
                        s.key: {"taints": s.params["taints"]}
                        for s in steps
                        if s.action != ActionName.PODDEFAULT
                    },
                ),
            )
        )
