"""``workspace.resize``: change the scaling of a workspace's nodegroups, or move its GPU nodegroup
to another instance type. Only the owner or an admin asks; an admin approves (never one the
workspace is for).

``--nodes MIN:MAX`` sets the minimum and maximum of every nodegroup the bot made for the workspace
(``UpdateNodegroupConfig``; the desired size is kept, clamped into the new bounds). With
``--instance-type T`` the bot makes a new nodegroup of type T with the workspace taint, points the
workspace's PodDefault at it, waits until no GPU pod runs on the old nodegroup, and removes the
old one; the registry then records the new nodegroup in place of the old."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from handlers import errors, naming, prices
from handlers.actions import ActionName
from handlers.kinds.base import (
    ADOPTED,
    Applied,
    Flag,
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
    text,
    workspace_people,
)
from handlers.kinds.gpu_common import bot_nodegroups, owner_or_admin_may_ask, scaling_of, scaling_step
from handlers.kinds.gpu_scale import recorded_scaling
from handlers.kinds.workspace_create import (
    PINNING_LIMITS,
    _nodes,
    check_max_nodes,
    gpu_nodegroup_taints,
    poddefault_step,
)
from handlers.kinds.workspace_pin import gpu_nodegroups
from handlers.plan import JSON, Plan, Step, as_text_map
from handlers.ports import Facts, WorkspaceFacts

USAGE = "/kf workspace resize NAME --nodes MIN:MAX [--instance-type T]"


def _build(p: Parsed) -> WorkspaceResize:
    opts = dict(p.options)
    if "nodes" not in opts:
        raise errors.InvalidInput("Say the new size: `--nodes MIN:MAX`.", usage=USAGE, field="nodes")
    low, high = opts.pop("nodes")
    return WorkspaceResize(p.positional[0], low, high, opts.get("instance_type"))


def _workspace(kind: RequestKind) -> str:
    assert isinstance(kind, WorkspaceResize)
    return kind.name


@dataclass(frozen=True)
class WorkspaceResize:
    KIND: ClassVar[str] = "workspace.resize"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax(
        "workspace resize",
        ("NAME",),
        {"--nodes": Flag("nodes", _nodes), "--instance-type": Flag("instance_type", text)},
        _build,
    )
    # The owner or an admin asks (the plan shows the nodegroups, their sizes and costs); an admin
    # decides, as it moves the workspace's spend.
    POLICY: ClassVar[PolicyRow] = PolicyRow(
        may_request=owner_or_admin_may_ask("resize its nodegroups", _workspace, hide_from_outsiders=True)
    )
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    name: str
    nodes_min: int
    nodes_max: int
    instance_type: str | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)
        for attr in ("nodes_min", "nodes_max"):
            value = getattr(self, attr)
            if type(value) is not int or not 0 <= value <= 100:
                raise errors.InvalidInput(
                    "--nodes takes MIN:MAX, each from 0 to 100.", usage=USAGE, field="nodes"
                )
        if self.nodes_max < 1:
            raise errors.InvalidInput(
                "--nodes MAX must be at least 1 (EKS needs maxSize >= 1).", field="nodes"
            )
        if self.nodes_min > self.nodes_max:
            raise errors.InvalidInput(
                f"--nodes {self.nodes_min}:{self.nodes_max}: MIN is larger than MAX.", field="nodes"
            )
        if self.instance_type is not None:
            naming.validate_instance_type(self.instance_type)
            if not prices.gpus_per_instance(self.instance_type):
                raise errors.InvalidInput(
                    f"{naming.show_value(self.instance_type)} is not a GPU instance type the bot knows; "
                    "a workspace's nodegroup moves only to a known GPU type. Did you mean "
                    f"{prices.closest(self.instance_type, prices.gpu_instance_types())}?",
                    usage=USAGE,
                    field="instance_type",
                )

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        to = f" on {self.instance_type}" if self.instance_type else ""
        return f"resize the nodegroups of `{self.name}` to {self.nodes_min}..{self.nodes_max} nodes{to}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        to = f" on {self.instance_type}" if self.instance_type else ""
        return (
            f"Resize {self.name} to {self.nodes_min}..{self.nodes_max} nodes{to}, for {short_name(requester)}"
        )

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.name)  # their nodes are what changes

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.name)
        check_max_nodes(self.nodes_max, ctx.settings.workspace.max_nodes)
        if self.instance_type is not None:
            prices.require_known_instance_type(self.instance_type, ctx.settings.workspace.price_overrides)
        if not bot_nodegroups(ws):
            raise errors.InvalidInput(
                f"`{self.name}` has no nodegroup made by kf-chatops; there is nothing to resize.",
                field="name",
            )
        if self.instance_type is None:
            return self._rescale(ctx, ws)
        return self._replace(ctx, ws, self.instance_type)

    def _hourly(self, ctx: PlanContext, instance_type: str) -> float | None:
        d = ctx.settings.workspace
        return prices.hourly_price(d.region, instance_type, d.price_overrides)

    def _rescale(self, ctx: PlanContext, ws: WorkspaceFacts) -> Plan:
        steps: list[Step] = []
        lines: list[str] = []
        for key, params in bot_nodegroups(ws):
            name = str(params["name"])
            low, _, high = scaling_of(params)
            steps.append(
                scaling_step(
                    key,
                    params,
                    self.nodes_min,
                    None,
                    self.nodes_max,
                    f"EKS nodegroup `{name}`: {low}..{high} -> {self.nodes_min}..{self.nodes_max} nodes "
                    "(desired size kept within them)",
                )
            )
            lines.extend(self._cost_line(ctx, params, name))
        nodegroups = bot_nodegroups(ws)
        cost = self._cost(ctx, _type_of(nodegroups[0][1])) if len(nodegroups) == 1 else {}
        return Plan.of(steps, [*lines, *self._warnings()], cost)

    def _cost_line(
        self, ctx: PlanContext, params: Mapping[str, JSON], name: str, was: Mapping[str, JSON] | None = None
    ) -> list[str]:
        """The nodegroup's cost after the change, against before (``was``: the nodegroup it
        replaces; else the same one's recorded scaling), in prose."""
        was = was or params
        now_type, before_type = _type_of(params), _type_of(was)
        hourly = self._hourly(ctx, now_type) if now_type else None
        before = self._hourly(ctx, before_type) if before_type else None
        if hourly is None:
            return []
        low, _, high = scaling_of(was)
        line = (
            f"Cost of `{name}` ({now_type} at ${hourly:.3f}/hour per node, on-demand list price): "
            f"${hourly * self.nodes_min:.2f}/hour with nothing running, "
            f"up to ${hourly * self.nodes_max:.2f}/hour "
            f"(${prices.monthly(hourly * self.nodes_max):,.0f}/month)"
        )
        if before is not None:
            line += (
                f"; before: ${before * low:.2f} to ${before * high:.2f}/hour ({high} x {before_type} at most)"
            )
        return [line + "."]

    def _warnings(self) -> list[str]:
        if self.nodes_min == 0:
            return [
                "The minimum is 0: Cluster Autoscaler removes idle nodes and brings them back when a "
                "GPU pod asks (from zero it needs version 1.24 or newer). Karpenter does not scale EKS "
                "managed nodegroups."
            ]
        return [f"{self.nodes_min} node(s) stay up even with nothing running on them, and cost money."]

    def _replace(self, ctx: PlanContext, ws: WorkspaceFacts, instance_type: str) -> Plan:
        gpu = gpu_nodegroups(ws)
        if len(gpu) != 1:
            raise errors.InvalidInput(
                f"`{self.name}` has {len(gpu)} GPU nodegroups made by kf-chatops; `--instance-type` moves "
                "exactly one.",
                field="instance_type",
            )
        old_key, old = gpu[0]
        old_name = str(old["name"])
        types = old.get("instance_types")
        if isinstance(types, list) and instance_type in types:
            raise errors.InvalidInput(f"`{old_name}` is already {instance_type}.", field="instance_type")
        names = naming.render_names(ctx.settings.naming, self.name, instance_type)
        assert names.nodegroup is not None and names.node_label is not None
        if names.nodegroup == old_name:
            raise errors.InvalidInput(
                f"The nodegroup name template gives `{old_name}` again for {instance_type}; the new "
                "nodegroup needs another name (put `{spec}` in KFBOT_NAME_NODEGROUP).",
                field="instance_type",
            )
        poddefault_key = f"PodDefault/{ws.namespace}/{old_name}"
        if poddefault_key not in ws.created:
            raise errors.InvalidInput(
                f"The PodDefault `{old_name}` in `{ws.namespace}` was not made by kf-chatops, so the bot "
                "cannot point it at a new nodegroup; nothing is changed.",
                field="name",
            )
        taints = gpu_nodegroup_taints(ws.namespace)
        label_key, label_value = names.node_label
        params: dict[str, JSON] = {
            **{k: v for k, v in old.items() if k != ADOPTED},  # the new one is the bot's own
            "name": names.nodegroup,
            "instance_types": [instance_type],
            "ami_type": prices.gpu_ami_type(instance_type),
            "scaling": {"minSize": self.nodes_min, "maxSize": self.nodes_max, "desiredSize": self.nodes_min},
            "labels": {label_key: label_value},
            "taints": taints,
        }
        _rename_eksctl_fields(params, old, names.nodegroup)
        steps = [
            Step(
                ActionName.NODEGROUP,
                f"Nodegroup/{names.nodegroup}",
                params,
                f"EKS nodegroup `{names.nodegroup}`: {instance_type}, {self.nodes_min}..{self.nodes_max} "
                "nodes, with the workspace taint",
            ),
            poddefault_step(ws.namespace, old_name, f"Run on the {instance_type} nodegroup", taints),
            Step(
                ActionName.GPU_PODS_ABSENT,
                f"GpuPods/{old_name}",
                {"nodegroup": old_name, "namespace": "", "wait": True},
                f"wait until no GPU pod runs on the old nodegroup `{old_name}`",
            ),
            Step(
                ActionName.NODEGROUP_REMOVE,
                old_key,
                {"cluster": old["cluster"], "name": old_name},
                f"remove the old EKS nodegroup `{old_name}`",
            ),
        ]
        old_type = str(types[0]) if isinstance(types, list) and types else "?"
        warnings = [
            f"GPU pods running on `{old_name}` ({old_type}) keep running there: the old nodegroup is "
            "removed only once none is left. Stop its notebooks (`/kf gpu stop`) so they start again on "
            f"{instance_type}. If GPU pods stay longer than the step deadline, the request fails and "
            "the new nodegroup is removed again.",
            *self._cost_line(ctx, params, names.nodegroup, was=old),
            *self._warnings(),
            PINNING_LIMITS,
        ]
        return Plan.of(steps, warnings, self._cost(ctx, instance_type))

    def _cost(self, ctx: PlanContext, instance_type: str) -> dict[str, JSON]:
        """The plan's cost at the new maximum, in ``workspace.create``'s shape (what the card's cost
        line and Approve's confirm dialog read); empty for an unpriced type."""
        hourly = self._hourly(ctx, instance_type) if instance_type else None
        if hourly is None:
            return {}
        return {
            "instance_type": instance_type,
            "hourly_per_node": hourly,
            "max_nodes": self.nodes_max,
            "hourly_max": round(hourly * self.nodes_max, 2),
            "monthly_max": round(prices.monthly(hourly * self.nodes_max), 2),
        }

    def on_success(self, done: Applied) -> Success:
        """The registry records the new nodegroup (created by this request) in place of the old,
        and the PodDefault's new tolerations; or, for a rescale, the new scaling."""
        if self.instance_type is None:
            return Success(changes=(recorded_scaling(self.name, done),))
        steps = done.plan.steps
        add: dict[str, Mapping[str, JSON]] = {
            step.key: {"action": step.action, "params": dict(step.params)}
            for idx, step in enumerate(steps)
            if step.action == ActionName.NODEGROUP and (o := done.outcomes.get(idx)) is not None and o.created
        }
        return Success(
            changes=(
                UpdateWorkspaceObjects(
                    self.name,
                    replace={s.key: dict(s.params) for s in steps if s.action == ActionName.PODDEFAULT},
                    add=add,
                    remove=tuple(s.key for s in steps if s.action == ActionName.NODEGROUP_REMOVE),
                ),
            )
        )


def _type_of(params: Mapping[str, JSON]) -> str:
    types = params.get("instance_types")
    return str(types[0]) if isinstance(types, list) and types else ""


_EKSCTL_NAME: Final = "alpha.eksctl.io/nodegroup-name"


def _rename_eksctl_fields(params: dict[str, JSON], old: Mapping[str, JSON], name: str) -> None:
    """A nodegroup made with eksctl's labels and tags (``KFBOT_NODE_EKSCTL_LABELS``) keeps them under
    its new name: the old labels would be dropped with the node label and the tags name the old
    nodegroup. The launch template, if any, is the old one's (it holds no instance type)."""
    old_labels, old_tags = as_text_map(old.get("labels") or {}), as_text_map(old.get("tags") or {})
    if _EKSCTL_NAME not in old_labels and _EKSCTL_NAME not in old_tags:
        return
    eksctl = {k: v for k, v in old_labels.items() if k.startswith("alpha.eksctl.io/")}
    params["labels"] = {**as_text_map(params["labels"]), **eksctl, _EKSCTL_NAME: name}
    params["tags"] = {**old_tags, _EKSCTL_NAME: name}
