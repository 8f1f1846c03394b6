"""``gpu.scale``: scale a workspace's GPU nodegroups down to zero, or up to N nodes.

``/kf gpu down WORKSPACE`` sets the minimum and desired size of every GPU nodegroup the bot made
for the workspace to 0 and keeps the maximum, so Cluster Autoscaler can bring nodes back when a
GPU pod asks. Right before that, a step lists the GPU pods on the nodegroup's nodes and the
workspace's pending GPU pods and refuses (permanently, saying which pods) if there are any: a
report's "Scale to 0" clicked after someone started work does not kill it.

``/kf gpu up WORKSPACE [N]`` (default 1) sets the desired size to N, never above
``KFBOT_MAX_NODES`` (refused at planning, like ``--nodes MAX``). Within the approved maximum (the
one the registry records: the create request's, or a later admin-approved change) the owner, or an
admin who is none of the workspace's people, applies at once; above it an admin approves, and only
then is the maximum raised."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming, prices
from handlers.actions import ActionName
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
    require_workspace,
    short_name,
    whole_number,
    workspace_people,
)
from handlers.kinds.gpu_common import applies_alone, owner_or_admin_may_ask, scaling_of, scaling_step
from handlers.kinds.workspace_create import check_max_nodes
from handlers.kinds.workspace_pin import gpu_nodegroups
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings

MAX_NODES = 100
DOWN_USAGE = "/kf gpu down WORKSPACE"
UP_USAGE = "/kf gpu up WORKSPACE [N]"


def _workspace(kind: RequestKind) -> str:
    assert isinstance(kind, GpuScale)
    return kind.workspace


def approved_max(ws: WorkspaceFacts) -> int | None:
    """The largest maximum an admin approved for the workspace's GPU nodegroups (the registry's
    record), None when it has none."""
    sizes = [scaling_of(params)[2] for _, params in gpu_nodegroups(ws)]
    return max(sizes) if sizes else None


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, GpuScale)
    if not applies_alone(kind, actor, facts, kind.workspace, settings):
        return None
    if kind.nodes == 0:
        return "the workspace's owner or an admin scales its idle GPU nodegroup to zero"
    ws = facts.workspace(kind.workspace)
    limit = approved_max(ws) if ws is not None else None
    # A maximum recorded before KFBOT_MAX_NODES was lowered (or enforced here) approves nothing
    # above today's cap; ``plan`` refuses such an N anyway.
    if limit is not None and kind.nodes <= min(limit, settings.workspace.max_nodes):
        return "the workspace's owner or an admin scales up within the approved maximum"
    return None  # above the approved maximum: an admin decides


def _down(p: Parsed) -> GpuScale:
    return GpuScale(p.positional[0], 0)


def _up(p: Parsed) -> GpuScale:
    nodes = whole_number("N")(p.positional[1]) if len(p.positional) > 1 else 1
    if nodes < 1:
        raise errors.InvalidInput(
            "`/kf gpu up` needs at least 1 node; use `/kf gpu down` for 0.", usage=UP_USAGE
        )
    return GpuScale(p.positional[0], nodes)


DOWN_SYNTAX = Syntax("gpu down", ("WORKSPACE",), {}, _down)
"""``/kf gpu down``: the same kind with 0 nodes (``handlers.kinds`` registers both syntaxes)."""


@dataclass(frozen=True)
class GpuScale:
    KIND: ClassVar[str] = "gpu.scale"
    USAGE: ClassVar[str] = UP_USAGE
    SYNTAX: ClassVar[Syntax] = Syntax("gpu up", ("WORKSPACE",), {}, _up, optional=("N",))
    POLICY: ClassVar[PolicyRow] = PolicyRow(
        auto_apply=_auto, may_request=owner_or_admin_may_ask("scale its GPU nodegroups", _workspace)
    )
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    workspace: str
    nodes: int
    """The desired node count; 0 scales to zero (minimum 0 too, maximum kept)."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        if type(self.nodes) is not int or not 0 <= self.nodes <= MAX_NODES:
            raise errors.InvalidInput(f"N must be a whole number from 0 to {MAX_NODES}.", field="nodes")

    def subject(self) -> str:
        return f"gpu:{self.workspace}"

    def describe(self) -> str:
        if self.nodes == 0:
            return f"scale the GPU nodes of `{self.workspace}` to 0"
        return f"scale the GPU nodes of `{self.workspace}` up to {self.nodes}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        to = "to 0" if self.nodes == 0 else f"up to {self.nodes}"
        return f"Scale the GPU nodes of {self.workspace} {to}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.workspace)  # their GPUs are what comes or goes

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        nodegroups = gpu_nodegroups(ws)
        if not nodegroups:
            raise errors.InvalidInput(
                f"`{self.workspace}` has no GPU nodegroup made by kf-chatops; the bot scales only those.",
                field="workspace",
            )
        steps: list[Step] = []
        warnings: list[str] = []
        cost: dict[str, JSON] = {}
        if self.nodes == 0:
            for key, params in nodegroups:
                name, high = str(params["name"]), scaling_of(params)[2]
                steps.append(
                    Step(
                        ActionName.GPU_PODS_ABSENT,
                        f"GpuPods/{name}",
                        {"nodegroup": name, "namespace": ws.namespace, "wait": False},
                        f"check that no GPU pod runs on `{name}` and none of `{ws.namespace}` is pending "
                        "(refused if one appeared)",
                    )
                )
                steps.append(
                    scaling_step(
                        key, params, 0, 0, high,
                        f"EKS nodegroup `{name}`: minimum and desired size 0, maximum kept at {high}",
                    )
                )
            warnings.append(
                "Running notebooks are not touched: the scale-down is refused if a GPU pod runs or "
                "waits. Cluster Autoscaler brings nodes back when a GPU pod asks (from zero it needs "
                "version 1.24 or newer); without it, `/kf gpu up` does."
            )
            warnings.extend(self._savings(ctx, nodegroups))
            return Plan.of(steps, warnings)
        if len(nodegroups) > 1:
            names = ", ".join(f"`{params['name']}`" for _, params in nodegroups)
            raise errors.InvalidInput(
                f"`{self.workspace}` has several GPU nodegroups ({names}), maybe in the middle of a "
                "resize; scale them with `/kf workspace resize`.",
                field="workspace",
            )
        # The cost guard of every node count: above it nothing is recorded, so no admin approves
        # a maximum the next owner's `gpu up` would then apply alone.
        check_max_nodes(self.nodes, ctx.settings.workspace.max_nodes, asked="`/kf gpu up` N")
        key, params = nodegroups[0]
        name = str(params["name"])
        low, _, high = scaling_of(params)
        new_max = max(high, self.nodes)
        steps.append(
            scaling_step(
                key,
                params,
                min(low, self.nodes),
                self.nodes,
                new_max,
                f"EKS nodegroup `{name}`: desired size {self.nodes} (maximum {new_max}"
                + (f", raised from {high})" if new_max > high else ")"),
            )
        )
        if new_max > high:
            warnings.append(f"{self.nodes} nodes is above the approved maximum of {high}: an admin decides.")
        hourly = self._hourly(ctx, nodegroups)
        if hourly is not None:
            cost = {
                "instance_type": _instance_type(params) or "",
                "hourly_per_node": hourly,
                "max_nodes": self.nodes,
                "hourly_max": round(hourly * self.nodes, 2),
                "monthly_max": round(prices.monthly(hourly * self.nodes), 2),
            }
        return Plan.of(steps, warnings, cost)

    @staticmethod
    def _savings(ctx: PlanContext, nodegroups: list[tuple[str, Mapping[str, JSON]]]) -> list[str]:
        """What a scale-down stops paying, per nodegroup, in prose (the card's cost line is for
        what a request adds)."""
        d = ctx.settings.workspace
        lines = []
        for _, params in nodegroups:
            instance_type = _instance_type(params)
            hourly = (
                prices.hourly_price(d.region, instance_type, d.price_overrides) if instance_type else None
            )
            if hourly is None:
                continue
            high = scaling_of(params)[2]
            lines.append(
                f"Saves ${hourly:.3f}/hour per {instance_type} node of `{params['name']}` that is up now "
                f"(up to ${hourly * high:.2f}/hour, ${prices.monthly(hourly * high):,.0f}/month, for its "
                f"{high} node(s)); on-demand list price."
            )
        return lines

    @staticmethod
    def _hourly(ctx: PlanContext, nodegroups: list[tuple[str, Mapping[str, JSON]]]) -> float | None:
        d = ctx.settings.workspace
        found = [
            prices.hourly_price(d.region, t, d.price_overrides)
            for _, params in nodegroups
            if (t := _instance_type(params))
        ]
        known = [p for p in found if p is not None]
        return max(known) if known else None

    def on_success(self, done: Applied) -> Success:
        """The registry records the scaling applied over the create-time one; a maximum raised
        here was approved by an admin (``_auto`` applies nothing above it), so it is the new
        approved maximum."""
        return Success(changes=(recorded_scaling(self.workspace, done),))


def recorded_scaling(workspace: str, done: Applied) -> UpdateWorkspaceObjects:
    """The registry's record of the scaling steps of ``done`` (a desired size the step left to EKS
    is recorded as the minimum: the registry's desired size is informative only)."""
    merge: dict[str, Mapping[str, JSON]] = {}
    for step in done.plan.steps:
        if step.action != ActionName.NODEGROUP_SCALING:
            continue
        low, desired, high = (step.params.get(k) for k in ("min_size", "desired_size", "max_size"))
        if isinstance(low, int) and isinstance(high, int):
            merge[step.key] = {
                "scaling": {
                    "minSize": low,
                    "maxSize": high,
                    "desiredSize": desired if isinstance(desired, int) else low,
                }
            }
    return UpdateWorkspaceObjects(workspace, merge=merge)


def _instance_type(params: Mapping[str, JSON]) -> str | None:
    types = params.get("instance_types")
    return str(types[0]) if isinstance(types, list) and types else None
