"""``workspace.create``: a Kubeflow Profile, its Dex login, an S3 bucket in the IAM policies and,
for GPU work, an EKS nodegroup pinned to the workspace. Only an admin approves it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming, prices, scheduling, units, workspace_iam
from handlers.actions import NOTEBOOK_ACTIVITY_POLICY, ActionName
from handlers.kinds.base import (
    MANAGED_BY,
    POLICY_VERSION_NOTE,
    Applied,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    PutWorkspace,
    Success,
    Syntax,
    TimerKind,
    short_name,
    slack_id_of,
    text,
    whole_number,
)
from handlers.plan import JSON, Plan, Step, as_text_map
from handlers.ports import Facts
from handlers.settings import WorkspaceDefaults, kubeflow_user_id

GPU_RESOURCE = "requests.nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
PINNING_LIMITS = (
    "GPU pods of this workspace fit only its own nodegroup among the bot-made ones: the bot taints "
    f"them `{naming.WORKSPACE_TAINT_KEY}=<namespace>:NoSchedule` and the PodDefault tolerates exactly "
    "that. Not covered: a hand-made nodegroup with only the `nvidia.com/gpu` taint still takes any "
    "workspace's GPU pods, and a namespace editor can write their own tolerations unless the chart's "
    "workspace taint guard (a ValidatingAdmissionPolicy) is on."
)


def _nodes(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]{1,3}):([0-9]{1,3})", value)
    if not m:
        raise errors.InvalidInput(f"--nodes takes MIN:MAX, e.g. `0:2`, not {naming.show_value(value)}.")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo > hi:
        raise errors.InvalidInput(f"--nodes {value}: MIN is larger than MAX.")
    return lo, hi


def _build(p: Parsed) -> WorkspaceCreate:
    opts = dict(p.options)
    if "nodes" in opts:
        opts["nodes_min"], opts["nodes_max"] = opts.pop("nodes")
    owner = p.user(opts.pop("owner")) if "owner" in opts else p.requester_email
    return WorkspaceCreate(p.positional[0], owner, **opts)


@dataclass(frozen=True)
class WorkspaceCreate:
    KIND: ClassVar[str] = "workspace.create"
    USAGE: ClassVar[str] = (
        "/kf workspace new NAME [--owner EMAIL] [--gpu N] [--cpu N] [--memory 16Gi] [--storage 100Gi] "
        "[--pvcs N] [--instance-type g4dn.xlarge] [--nodes MIN:MAX] [--desired N]"
    )
    SYNTAX: ClassVar[Syntax] = Syntax(
        "workspace new",
        ("NAME",),
        {
            "--owner": Flag("owner", text),
            "--gpu": Flag("gpu", whole_number("--gpu")),
            "--cpu": Flag("cpu", text),
            "--memory": Flag("memory", text),
            "--storage": Flag("storage", text),
            "--pvcs": Flag("pvcs", whole_number("--pvcs")),
            "--instance-type": Flag("instance_type", text),
            "--nodes": Flag("nodes", _nodes),
            "--desired": Flag("desired", whole_number("--desired")),
        },
        _build,
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow()  # a new workspace always waits for an admin
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    name: str
    owner: str
    gpu: int = 0
    cpu: str | None = None
    memory: str | None = None
    storage: str | None = None
    pvcs: int | None = None
    instance_type: str | None = None
    nodes_min: int | None = None
    nodes_max: int | None = None
    desired: int | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)
        object.__setattr__(self, "owner", naming.normalize_email(self.owner))
        units.normalize_count(str(self.gpu), "--gpu", 512)
        if self.cpu is not None:
            object.__setattr__(self, "cpu", units.normalize_cpu(self.cpu))
        if self.memory is not None:
            object.__setattr__(self, "memory", units.normalize_memory(self.memory))
        if self.storage is not None:
            object.__setattr__(self, "storage", units.normalize_storage(self.storage))
        if self.pvcs is not None:
            units.normalize_count(str(self.pvcs), "--pvcs", 1000)
        if self.instance_type is not None:
            naming.validate_instance_type(self.instance_type)
        for attr in ("nodes_min", "nodes_max", "desired"):
            value = getattr(self, attr)
            if value is not None and not 0 <= value <= 100:
                raise errors.InvalidInput(
                    f"--{attr.replace('_', '-')} must be between 0 and 100.", field=attr
                )

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        gpu = f", {self.gpu} GPU" if self.gpu else ""
        return f"new workspace `{self.name}` for {self.owner}{gpu}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        gpu = f" with {self.gpu} GPU" if self.gpu else ""
        return f"New workspace {self.name}{gpu} for {short_name(self.owner)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.owner,)

    def plan(self, ctx: PlanContext) -> Plan:
        s, d = ctx.settings, ctx.settings.workspace
        if ctx.facts.workspace(self.name) is not None:
            raise errors.InvalidInput(f"A workspace named `{self.name}` already exists.", field="name")
        if self.instance_type is not None:
            prices.require_known_instance_type(self.instance_type, d.price_overrides)
            self._check_gpu_type(self.instance_type)
        instance_type = self.instance_type or (d.gpu_instance_type if self.gpu > 0 else None)
        warnings: list[str] = []
        gpu = self.gpu
        if instance_type is not None and self.gpu == 0 and prices.is_gpu_family(instance_type):
            # A GPU nodegroup whose workspace may use no GPU would be paid for and never used.
            _, hi = self._bounds(d)
            per_node = prices.gpus_per_instance(instance_type) or 0
            gpu = per_node * hi
            warnings.append(
                f"{instance_type} is a GPU type and no `--gpu` was given: the GPU quota is its "
                f"{per_node} GPU(s) per node x {hi} node(s) at most = {gpu}."
            )
        names = naming.render_names(s.naming, self.name, instance_type)
        user = kubeflow_user_id(s, self.owner)
        tags = {**MANAGED_BY, "kf-chatops/workspace": self.name, "kf-chatops/owner": self.owner}
        hard = {
            "cpu": self.cpu or d.cpu,
            "memory": self.memory or d.memory,
            GPU_RESOURCE: str(gpu),
            "persistentvolumeclaims": str(self.pvcs if self.pvcs is not None else d.pvcs),
            "requests.storage": self.storage or d.storage,
        }
        per_workspace = d.workspace_iam == "per-workspace"
        profile: dict[str, JSON] = {
            "name": names.namespace, "owner": user, "hard": hard, "labels": dict(MANAGED_BY)
        }
        profile_summary = f"Kubeflow Profile `{names.namespace}` owned by {user}"
        if per_workspace:
            role = workspace_iam.role_arn(d.oidc_provider_arn, names.namespace)
            profile["aws_iam_role"] = role
            profile_summary += (
                f", its `{workspace_iam.SERVICE_ACCOUNT}` ServiceAccount annotated with role "
                f"`{workspace_iam.role_name(names.namespace)}` "
                f"(plugin {workspace_iam.PLUGIN_KIND}, annotateOnly)"
            )
        steps = [
            Step(ActionName.PROFILE, f"Profile/{names.namespace}", profile, profile_summary),
            notebook_activity_step(names.namespace),
        ]
        if d.dex_mode != "external":
            steps.append(
                Step(
                    ActionName.DEX_USER,
                    f"DexUser/{user}",
                    {"email": user, "username": naming.dex_username(s.naming, user), "mode": d.dex_mode},
                    f"Dex login for {user} ({d.dex_mode}), password set by the owner later",
                )
            )
        steps.append(
            Step(
                ActionName.BUCKET,
                f"Bucket/{names.bucket}",
                {"bucket": names.bucket, "region": d.region, "tags": tags},
                f"S3 bucket `{names.bucket}` (private, encrypted)",
            )
        )
        resources = [f"arn:aws:s3:::{names.bucket}", f"arn:aws:s3:::{names.bucket}/*"]
        if per_workspace:
            steps.append(_role_step(ctx, names.namespace, names.bucket, tags))
        for arn in () if per_workspace else d.iam_policy_arns:
            steps.append(
                Step(
                    ActionName.IAM_RESOURCES,
                    f"IamPolicy/{arn}",
                    {"policy_arn": arn, "resources": resources},
                    f"add the bucket to IAM policy `{arn.rsplit('/', 1)[-1]}` ({POLICY_VERSION_NOTE})",
                )
            )
        cost: dict[str, JSON] = {}
        if instance_type is not None and names.nodegroup is not None and names.node_label is not None:
            steps.extend(self._nodegroup_steps(ctx, instance_type, names, tags, warnings, cost, gpu))
        if per_workspace:
            warnings.extend(_isolation_warnings(ctx, instance_type is not None))
        return Plan.of(steps, warnings, cost)

    def _check_gpu_type(self, instance_type: str) -> None:
        """``--gpu N`` on a type without GPUs would make a quota no node can ever fill."""
        if self.gpu > 0 and not prices.is_gpu_family(instance_type):
            raise errors.InvalidInput(
                f"--gpu {self.gpu} asks for GPUs, but {instance_type} has none: its pods could never "
                "get one. Pick a GPU type (for example `g4dn.xlarge`, `g5.xlarge`), or leave out --gpu.",
                field="gpu",
            )

    def _bounds(self, d: WorkspaceDefaults) -> tuple[int, int]:
        lo = d.nodes_min if self.nodes_min is None else self.nodes_min
        hi = d.nodes_max if self.nodes_max is None else self.nodes_max
        return lo, hi

    def _nodegroup_steps(
        self,
        ctx: PlanContext,
        instance_type: str,
        names: naming.WorkspaceNames,
        tags: dict[str, str],
        warnings: list[str],
        cost: dict[str, JSON],
        gpu_quota: int,
    ) -> list[Step]:
        d = ctx.settings.workspace
        assert names.nodegroup is not None and names.node_label is not None
        lo, hi = self._bounds(d)
        desired = lo if self.desired is None else self.desired
        if hi < 1:
            raise errors.InvalidInput(
                "--nodes MAX must be at least 1 (EKS needs maxSize >= 1).", field="nodes"
            )
        check_max_nodes(hi, d.max_nodes)
        if not lo <= desired <= hi:
            raise errors.InvalidInput(
                f"Need MIN <= desired <= MAX, got {lo} <= {desired} <= {hi}.", field="desired"
            )
        gpus = prices.gpus_per_instance(instance_type)
        if gpus is not None and hi * gpus < gpu_quota:
            warnings.append(
                f"{hi} node(s) x {gpus} GPU(s) of {instance_type} cannot satisfy "
                f"the quota of {gpu_quota} GPUs."
            )
        if lo == 0:
            warnings.append(
                "The nodegroup may scale to zero: scaling up from zero needs Cluster Autoscaler 1.24 or "
                "newer, which reads the nodegroup's labels and taints from EKS (DescribeNodegroup, found "
                "through the Auto Scaling group's `eks:nodegroup-name` tag; the autoscaler's role needs "
                "`eks:DescribeNodegroup`). Karpenter does not scale EKS managed nodegroups."
            )
        hourly = prices.hourly_price(d.region, instance_type, d.price_overrides)
        if hourly is not None:
            cost.update(
                {
                    "instance_type": instance_type,
                    "hourly_per_node": hourly,
                    "max_nodes": hi,
                    "hourly_max": round(hourly * hi, 2),
                    "monthly_max": round(prices.monthly(hourly * hi), 2),
                }
            )
        label_key, label_value = names.node_label
        is_gpu = gpus is not None and gpus > 0
        taints = gpu_nodegroup_taints(names.namespace) if is_gpu else []
        nodegroup: dict[str, JSON] = {
            "cluster": d.cluster,
            "name": names.nodegroup,
            "instance_types": [instance_type],
            "ami_type": prices.gpu_ami_type(instance_type) if is_gpu else "AL2023_x86_64_STANDARD",
            "scaling": {"minSize": lo, "maxSize": hi, "desiredSize": desired},
            # Not for scheduling (a PodDefault cannot set a nodeSelector): it tells whose node it is.
            "labels": {label_key: label_value},
            "taints": taints,
            "subnets": list(d.subnets),
            "node_role": d.node_role_arn,
            "tags": tags,
        }
        steps, style_summary = runbook_fields(d, nodegroup, names.nodegroup, tags)
        steps.append(
            Step(
                ActionName.NODEGROUP,
                f"Nodegroup/{names.nodegroup}",
                nodegroup,
                f"EKS nodegroup `{names.nodegroup}`: {instance_type}, {lo}..{hi} nodes{style_summary}",
            )
        )
        if is_gpu:
            steps.append(
                poddefault_step(
                    names.namespace, names.nodegroup, f"Run on the {instance_type} nodegroup", taints
                )
            )
            warnings.append(PINNING_LIMITS)
        else:
            warnings.append(
                f"{instance_type} is not a GPU type the bot knows, so its nodegroup gets no taints and is "
                "not kept to this workspace: tolerations do not attract pods and a PodDefault cannot "
                "select nodes, so any workspace's pods may run on it and this workspace's pods "
                "elsewhere. No PodDefault is made for it."
            )
        return steps

    def on_success(self, done: Applied) -> Success:
        """The registry records the workspace with every object the bot created (what a delete
        may remove, and nothing else)."""
        created: dict[str, Mapping[str, JSON]] = {
            step.key: {"action": step.action, "params": dict(step.params)}
            for idx, step in enumerate(done.plan.steps)
            if (outcome := done.outcomes.get(idx)) is not None and outcome.created
        }
        profile = done.plan.steps[0]
        return Success(
            changes=(
                PutWorkspace(
                    self.name,
                    str(profile.params["name"]),
                    str(profile.params["owner"]),
                    done.request_id,
                    created,
                    slack_id_of(done, str(profile.params["owner"])),
                ),
            )
        )


def runbook_fields(
    d: WorkspaceDefaults, nodegroup: dict[str, JSON], name: str, tags: Mapping[str, str]
) -> tuple[list[Step], str]:
    """Adds the runbook's nodegroup fields (``KFBOT_NODEGROUP_STYLE`` / ``KFBOT_NODE_*``) to the
    nodegroup's params, in place, and returns the launch template step they need (if any) and
    the words the nodegroup's summary gets. Nothing is added for a field left at EKS's default,
    so the params of a plan made without these settings are exactly what they always were."""
    style = d.nodegroup
    words: list[str] = []
    if style.eksctl_labels:
        eksctl = {"alpha.eksctl.io/cluster-name": d.cluster, "alpha.eksctl.io/nodegroup-name": name}
        nodegroup["labels"] = {**as_text_map(nodegroup["labels"]), **eksctl}
        nodegroup["tags"] = {
            **as_text_map(nodegroup["tags"]), **eksctl, "alpha.eksctl.io/nodegroup-type": "managed"
        }
        words.append("eksctl labels and tags")
    if not style.needs_launch_template():
        if style.disk_size is not None:
            nodegroup["disk_size"] = style.disk_size
            words.append(f"{style.disk_size} GiB disk")
        return [], "; " + ", ".join(words) if words else ""
    template: dict[str, JSON] = {"name": name}
    made: list[str] = []
    if style.disk_size is not None:
        template["disk_size"] = style.disk_size
    if style.disk_type:
        template["disk_type"] = style.disk_type
    if style.disk_size is not None or style.disk_type:
        size = f"{style.disk_size} GiB" if style.disk_size is not None else "default-size"
        made.append(f"{size} {style.disk_type or 'default-type'} root volume")
    if style.imds_tokens:
        template["imds_tokens"] = style.imds_tokens
    if style.imds_hop_limit is not None:
        template["imds_hop_limit"] = style.imds_hop_limit
    if style.imds_tokens or style.imds_hop_limit is not None:
        made.append(
            f"IMDS tokens {style.imds_tokens or '(EC2 default)'}, "
            f"hop limit {style.imds_hop_limit or '(EC2 default)'}"
        )
    if style.instance_tags:
        template["instance_tags"] = dict(tags)
        made.append("instances and volumes tagged `kf-chatops/workspace`")
    nodegroup["launch_template"] = name
    step = Step(
        ActionName.LAUNCH_TEMPLATE,
        f"LaunchTemplate/{name}",
        template,
        f"EC2 launch template `{name}` for the nodegroup: " + ", ".join(made),
    )
    return [step], "; " + ", ".join([*words, *made])


def _role_step(ctx: PlanContext, namespace: str, bucket: str, tags: Mapping[str, str]) -> Step:
    d = ctx.settings.workspace
    name = workspace_iam.role_name(namespace)
    return Step(
        ActionName.WORKSPACE_ROLE,
        f"IamRole/{name}",
        {
            "name": name,
            "namespace": namespace,
            "service_account": workspace_iam.SERVICE_ACCOUNT,
            "oidc_provider_arn": d.oidc_provider_arn,
            "bucket": bucket,
            "tags": dict(tags),
        },
        f"IAM role `{name}` for `{workspace_iam.subject(namespace)}` only (IRSA, audience "
        f"`{workspace_iam.AUDIENCE}`), whose policy names only bucket `{bucket}`",
    )


def _isolation_warnings(ctx: PlanContext, has_nodegroup: bool) -> list[str]:
    """Per-workspace roles keep one workspace out of another's bucket only if its pods cannot use
    the node role instead; the plan cannot see the node role, so it says what must hold."""
    d = ctx.settings.workspace
    warnings = []
    if not (has_nodegroup and d.nodegroup.isolates_pods_from_node_role()):
        where = (
            "this workspace's nodegroup does not" if has_nodegroup else "the nodes its pods run on may not"
        )
        warnings.append(
            f"Bucket isolation is incomplete: {where} enforce IMDSv2 with hop limit 1 "
            "(KFBOT_NODE_IMDS_TOKENS=required, KFBOT_NODE_IMDS_HOP_LIMIT=1), so its pods can borrow the "
            "node role's credentials from the instance metadata service."
        )
    if d.iam_policy_arns:
        warnings.append(
            "KFBOT_IAM_POLICY_ARNS is still set: those shared policies keep granting the buckets they "
            "list. Isolation holds only while none of them is attached to the node role "
            "(KFBOT_NODE_ROLE_ARN); `kfbot doctor` checks it."
        )
    return warnings


def check_max_nodes(nodes_max: int, limit: int, *, asked: str = "--nodes MAX") -> None:
    """``KFBOT_MAX_NODES``: a cost guard on every node count a request may make a nodegroup's
    maximum (``--nodes MAX``, ``/kf gpu up N``), checked when the plan is made, so a request over
    it is refused before anything is recorded and no admin can approve one."""
    if nodes_max > limit:
        raise errors.InvalidInput(
            f"{asked} {nodes_max} is above the limit of {limit} nodes per nodegroup here "
            "(KFBOT_MAX_NODES); ask for fewer, or ask an admin to raise the limit.",
            field="nodes",
        )


def gpu_nodegroup_taints(namespace: str) -> list[dict[str, JSON]]:
    """The taints (EKS's spelling) of a bot-made GPU nodegroup of the workspace in ``namespace``:
    ``nvidia.com/gpu`` keeps pods without GPUs off, the workspace taint other workspaces' pods."""
    key, value = naming.workspace_taint(namespace)
    return [dict(GPU_TAINT, effect="NO_SCHEDULE"), {"key": key, "value": value, "effect": "NO_SCHEDULE"}]


def poddefault_step(
    namespace: str, name: str, description: str, taints: Sequence[Mapping[str, JSON]]
) -> Step:
    """The PodDefault that lets a notebook onto nodegroup ``name``: it tolerates exactly the
    nodegroup's ``taints`` (PodDefault has no nodeSelector; see ``handlers.scheduling``). The GPU
    taint is tolerated whatever its value, as before pinning existed."""
    tolerations = [
        scheduling.toleration_for(scheduling.node_taint(t), any_value=t.get("key") == GPU_TAINT["key"])
        for t in taints
    ]
    return Step(
        ActionName.PODDEFAULT,
        f"PodDefault/{namespace}/{name}",
        {"namespace": namespace, "name": name, "tolerations": tolerations, "description": description},
        f"PodDefault `{name}` whose tolerations let notebooks onto the nodegroup",
    )


def notebook_activity_step(namespace: str) -> Step:
    """The workspace's ``kfbot-notebook-activity`` AuthorizationPolicy: only the bot's principal,
    only GET, only Jupyter's ``/api/kernels`` and ``/api/terminals`` (the idle scan reads them the
    way Kubeflow's culler does; the profile's own policy lets only the notebook controller)."""
    return Step(
        ActionName.NOTEBOOK_ACTIVITY,
        f"AuthorizationPolicy/{namespace}/{NOTEBOOK_ACTIVITY_POLICY}",
        {"namespace": namespace},
        f"Istio AuthorizationPolicy `{NOTEBOOK_ACTIVITY_POLICY}`: only the bot may GET its notebooks' "
        "/api/kernels and /api/terminals (idle-GPU detection)",
    )
