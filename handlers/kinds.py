"""Request kinds: typed commands that know their arguments, their plan and their subject.

Each kind is a frozen dataclass built by ``handlers.parse`` (or from stored ``args``), validated
on construction, so an invalid kind cannot exist. ``plan(ctx)`` is pure: it reads only the kind's
arguments, the settings and the facts passed in, and returns the desired end state as steps.
Which kinds need an admin is decided in ``handlers.policy``, not here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Protocol

from handlers import errors, naming, prices, scheduling, units
from handlers.plan import JSON, Plan, Step
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings, kubeflow_user_id

MANAGED_BY = {"app.kubernetes.io/managed-by": "kf-chatops"}
GPU_RESOURCE = "requests.nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
ROLES = ("edit", "view")
PINNING_LIMITS = (
    "GPU pods of this workspace fit only its own nodegroup among the bot-made ones: the bot taints "
    f"them `{naming.WORKSPACE_TAINT_KEY}=<namespace>:NoSchedule` and the PodDefault tolerates exactly "
    "that. Not covered: a hand-made nodegroup with only the `nvidia.com/gpu` taint still takes any "
    "workspace's GPU pods, and a namespace editor can write their own tolerations unless the chart's "
    "workspace taint guard (a ValidatingAdmissionPolicy) is on."
)


@dataclass(frozen=True)
class PlanContext:
    settings: CoreSettings
    facts: Facts
    request_id: str


@dataclass(frozen=True)
class TimerSpec:
    """Timed work a kind needs once it has succeeded (a grant's expiry, a quota revert)."""

    kind: str
    ref: str
    due_at: datetime
    payload: Mapping[str, JSON] = field(default_factory=dict)


class RequestKind(Protocol):
    KIND: ClassVar[str]
    USAGE: ClassVar[str]

    def subject(self) -> str | None:
        """What the request is about; two open requests for one subject are refused (None: never)."""
        ...

    def describe(self) -> str: ...

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        """Emails of the people the request's effect is for, besides its requester (an owner, a
        grantee; a workspace's people for its quota or deletion): none of them may decide it."""
        ...

    def plan(self, ctx: PlanContext) -> Plan: ...

    def timers_after_success(self, request_id: str, at: datetime) -> list[TimerSpec]: ...


class NoTimers:
    """For kinds that leave nothing to expire or revert."""

    def timers_after_success(self, request_id: str, at: datetime) -> list[TimerSpec]:
        return []


def to_args(kind: RequestKind) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for f in dataclasses.fields(kind):  # type: ignore[arg-type]
        value = getattr(kind, f.name)
        out[f.name] = units.format_duration(value) if isinstance(value, timedelta) else value
    return out


def from_args(kind_name: str, args: Mapping[str, JSON]) -> RequestKind:
    cls = KINDS.get(kind_name)
    if cls is None:
        raise errors.InvalidInput(f"Unknown request kind {kind_name!r}.")
    values = dict(args)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.type in ("timedelta | None", "timedelta") and isinstance(values.get(f.name), str):
            values[f.name] = units.parse_duration(values[f.name])
    return cls(**values)


def _workspace_people(facts: Facts, name: str) -> tuple[str, ...]:
    ws = facts.workspace(name)
    return () if ws is None else (ws.owner, *ws.contributors)


def _require_workspace(ctx: PlanContext, name: str) -> WorkspaceFacts:
    ws = ctx.facts.workspace(name)
    if ws is None:
        raise errors.NotFound(f"There is no workspace named `{name}`.")
    return ws


# -- workspaces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceCreate(NoTimers):
    KIND: ClassVar[str] = "workspace.create"
    USAGE: ClassVar[str] = (
        "/kf workspace new NAME [--owner EMAIL] [--gpu N] [--cpu N] [--memory 16Gi] [--storage 100Gi] "
        "[--pvcs N] [--instance-type g4dn.xlarge] [--nodes MIN:MAX] [--desired N]"
    )

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

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.owner,)

    def wants_nodegroup(self) -> bool:
        return self.instance_type is not None or self.gpu > 0

    def plan(self, ctx: PlanContext) -> Plan:
        s, d = ctx.settings, ctx.settings.workspace
        if ctx.facts.workspace(self.name) is not None:
            raise errors.InvalidInput(f"A workspace named `{self.name}` already exists.", field="name")
        instance_type = self.instance_type or (d.gpu_instance_type if self.gpu > 0 else None)
        names = naming.render_names(s.naming, self.name, instance_type)
        user = kubeflow_user_id(s, self.owner)
        tags = {**MANAGED_BY, "kf-chatops/workspace": self.name, "kf-chatops/owner": self.owner}
        hard = {
            "cpu": self.cpu or d.cpu,
            "memory": self.memory or d.memory,
            GPU_RESOURCE: str(self.gpu),
            "persistentvolumeclaims": str(self.pvcs if self.pvcs is not None else d.pvcs),
            "requests.storage": self.storage or d.storage,
        }
        steps = [
            Step(
                "kubeflow.profile",
                f"Profile/{names.namespace}",
                {"name": names.namespace, "owner": user, "hard": hard, "labels": dict(MANAGED_BY)},
                f"Kubeflow Profile `{names.namespace}` owned by {user}",
            ),
        ]
        if d.dex_mode != "external":
            steps.append(
                Step(
                    "dex.user",
                    f"DexUser/{user}",
                    {"email": user, "username": naming.dex_username(s.naming, user), "mode": d.dex_mode},
                    f"Dex login for {user} ({d.dex_mode}), password set by the owner later",
                )
            )
        steps.append(
            Step(
                "aws.bucket",
                f"Bucket/{names.bucket}",
                {"bucket": names.bucket, "region": d.region, "tags": tags},
                f"S3 bucket `{names.bucket}` (private, encrypted)",
            )
        )
        resources = [f"arn:aws:s3:::{names.bucket}", f"arn:aws:s3:::{names.bucket}/*"]
        for arn in d.iam_policy_arns:
            steps.append(
                Step(
                    "aws.iam_resources",
                    f"IamPolicy/{arn}",
                    {"policy_arn": arn, "resources": resources},
                    f"add the bucket to IAM policy `{arn.rsplit('/', 1)[-1]}`",
                )
            )
        warnings: list[str] = []
        cost: dict[str, JSON] = {}
        if instance_type is not None and names.nodegroup is not None and names.node_label is not None:
            steps.extend(self._nodegroup_steps(ctx, instance_type, names, tags, warnings, cost))
        return Plan.of(steps, warnings, cost)

    def _nodegroup_steps(
        self,
        ctx: PlanContext,
        instance_type: str,
        names: naming.WorkspaceNames,
        tags: dict[str, str],
        warnings: list[str],
        cost: dict[str, JSON],
    ) -> list[Step]:
        d = ctx.settings.workspace
        assert names.nodegroup is not None and names.node_label is not None
        lo = d.nodes_min if self.nodes_min is None else self.nodes_min
        hi = d.nodes_max if self.nodes_max is None else self.nodes_max
        desired = lo if self.desired is None else self.desired
        if hi < 1:
            raise errors.InvalidInput(
                "--nodes MAX must be at least 1 (EKS needs maxSize >= 1).", field="nodes"
            )
        if not lo <= desired <= hi:
            raise errors.InvalidInput(
                f"Need MIN <= desired <= MAX, got {lo} <= {desired} <= {hi}.", field="desired"
            )
        gpus = prices.gpus_per_instance(instance_type)
        if gpus is not None and hi * gpus < self.gpu:
            warnings.append(
                f"{hi} node(s) x {gpus} GPU(s) of {instance_type} cannot satisfy "
                f"the quota of {self.gpu} GPUs."
            )
        if lo == 0:
            warnings.append(
                "The nodegroup may scale to zero: scaling up from zero needs Cluster Autoscaler 1.24 or "
                "newer, which reads the nodegroup's labels and taints from EKS (DescribeNodegroup). "
                "Karpenter does not scale EKS managed nodegroups."
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
        steps = [
            Step(
                "aws.nodegroup",
                f"Nodegroup/{names.nodegroup}",
                nodegroup,
                f"EKS nodegroup `{names.nodegroup}`: {instance_type}, {lo}..{hi} nodes",
            )
        ]
        if is_gpu:
            steps.append(
                _poddefault_step(
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


def gpu_nodegroup_taints(namespace: str) -> list[dict[str, JSON]]:
    """The taints (EKS's spelling) of a bot-made GPU nodegroup of the workspace in ``namespace``:
    ``nvidia.com/gpu`` keeps pods without GPUs off, the workspace taint other workspaces' pods."""
    key, value = naming.workspace_taint(namespace)
    return [dict(GPU_TAINT, effect="NO_SCHEDULE"), {"key": key, "value": value, "effect": "NO_SCHEDULE"}]


def _poddefault_step(namespace: str, name: str, description: str, taints: list[dict[str, JSON]]) -> Step:
    """The PodDefault that lets a notebook onto nodegroup ``name``: it tolerates exactly the
    nodegroup's ``taints`` (PodDefault has no nodeSelector; see ``handlers.scheduling``). The GPU
    taint is tolerated whatever its value, as before pinning existed."""
    tolerations = [
        scheduling.toleration_for(scheduling.node_taint(t), any_value=t.get("key") == GPU_TAINT["key"])
        for t in taints
    ]
    return Step(
        "kubeflow.poddefault",
        f"PodDefault/{namespace}/{name}",
        {"namespace": namespace, "name": name, "tolerations": tolerations, "description": description},
        f"PodDefault `{name}` whose tolerations let notebooks onto the nodegroup",
    )


# Deletion walks the create steps backwards; each create action has a removal twin.
_REMOVAL = {
    "aws.nodegroup": "aws.nodegroup.remove",
    "aws.iam_resources": "aws.iam_resources.remove",
    "aws.bucket": "aws.bucket.remove",
    "dex.user": "dex.user.remove",
    "kubeflow.poddefault": None,  # goes with the namespace
    "kubeflow.profile": "kubeflow.profile.remove",
}


@dataclass(frozen=True)
class WorkspaceDelete(NoTimers):
    KIND: ClassVar[str] = "workspace.delete"
    USAGE: ClassVar[str] = "/kf workspace delete NAME --confirm NAME [--purge-data]"

    name: str
    confirm: str
    purge_data: bool = False

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
        return f"delete workspace `{self.name}`" + (" *and its data*" if self.purge_data else "")

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return _workspace_people(facts, self.name)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = _require_workspace(ctx, self.name)
        if ws.pvcs and not self.purge_data:
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
        for key, created in reversed(list(ws.created.items())):
            action, params = created["action"], dict(created["params"])
            removal = _REMOVAL.get(action)
            if removal is None:
                continue
            if action == "dex.user" and ctx.facts.user_in_use(params["email"], self.name):
                warnings.append(
                    f"The Dex login {params['email']} is kept: it still owns or shares another workspace."
                )
                continue
            if action in ("aws.bucket", "kubeflow.profile"):
                params["purge_data"] = self.purge_data
            steps.append(Step(removal, key, params, f"remove {key}"))
        if not self.purge_data:
            warnings.append(
                "Data is kept: a non-empty bucket stays, and a namespace with volumes is not deleted."
            )
        return Plan.of(steps, warnings)


def _gpu_nodegroups(ws: WorkspaceFacts) -> list[tuple[str, Mapping[str, JSON]]]:
    """(step key, create params) of the GPU nodegroups the bot made for ``ws``, from the registry."""
    return [
        (key, entry["params"])
        for key, entry in ws.created.items()
        if entry["action"] == "aws.nodegroup"
        and any(t.get("key") == GPU_TAINT["key"] for t in entry["params"].get("taints") or [])
    ]


@dataclass(frozen=True)
class WorkspacePin(NoTimers):
    """Give a workspace made before pinning its workspace taint: for each GPU nodegroup the bot
    made, first the PodDefault's tolerations, then the taint (so no notebook of the workspace is
    ever refused by its own nodes)."""

    KIND: ClassVar[str] = "workspace.pin"
    USAGE: ClassVar[str] = "/kf workspace pin NAME | --all"

    name: str

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.name)

    def subject(self) -> str:
        return f"workspace:{self.name}"

    def describe(self) -> str:
        return f"pin the GPU nodegroups of `{self.name}` to it"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return _workspace_people(facts, self.name)  # their GPUs are what moves

    @staticmethod
    def pending(ws: WorkspaceFacts) -> bool:
        """Whether the registry shows a GPU nodegroup of ``ws`` without its workspace taint."""
        key, value = naming.workspace_taint(ws.namespace)
        return any(
            not any(t.get("key") == key and t.get("value") == value for t in params["taints"])
            for _, params in _gpu_nodegroups(ws)
        )

    def plan(self, ctx: PlanContext) -> Plan:
        ws = _require_workspace(ctx, self.name)
        nodegroups = _gpu_nodegroups(ws)
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
            wanted = list(params["taints"])
            wanted += [t for t in gpu_nodegroup_taints(ws.namespace) if t not in wanted]
            steps.append(
                _poddefault_step(ws.namespace, name, str(poddefault["params"].get("description", "")), wanted)
            )
            steps.append(
                Step(
                    "aws.nodegroup.taints",
                    key,
                    {"cluster": params["cluster"], "name": name, "taints": wanted},
                    f"taint EKS nodegroup `{name}` with `{taint_key}={taint_value}:NoSchedule` (once the "
                    "PodDefault tolerates it)",
                )
            )
        return Plan.of(steps, [PINNING_LIMITS])


# -- sharing -----------------------------------------------------------------------------------


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise errors.InvalidInput(
            f"--role must be `edit` or `view`, not {naming.show_value(role)}.", field="role"
        )


def _notify_list(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidInput("`notify` is a list of email addresses.", field="notify")
    return tuple(naming.normalize_email(v) for v in value)


def people_to_tell(args: Mapping[str, JSON]) -> list[str]:
    """Emails of the people a request made by the bot itself (an expiry) is reported to: the
    ``notify`` argument of the kinds that timers create. Empty for everything else."""
    value = args.get("notify")
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _kfam_clash(ws: WorkspaceFacts, user: str, role: str | None) -> tuple[str, str] | None:
    """(holder, binding name) when another contributor holds the KFAM name ``user`` would get.

    KFAM's names fold every run of non-alphanumerics to ``-`` and lowercase (``a.b@x.com`` and
    ``a-b@x.com`` give one name), so such a grant can exist for only one of them. ``role`` None:
    any role (unshare, which would find the other person's binding under its name)."""
    for other, other_role in ws.contributors.items():
        if other == user or other_role not in naming.KFAM_ROLES:
            continue
        name = naming.kfam_binding_name(other, other_role)
        if role in (None, other_role) and name == naming.kfam_binding_name(user, other_role):
            return other, name
    return None


def _clash_message(ws: WorkspaceFacts, user: str, holder: str, name: str) -> str:
    return (
        f"{user} cannot be given a grant in `{ws.name}`: Kubeflow names grants after the email with "
        f"every non-alphanumeric character folded to `-`, so {user} and {holder} share the name "
        f"`{name}`, and {holder} holds it. Remove {holder}'s grant first, or use another address."
    )


def _token_removals(
    ws: WorkspaceFacts, settings: CoreSettings, user: str, keep_role: str | None
) -> list[Step]:
    """Remove the token accounts ``user`` holds in ``ws`` that their access no longer covers:
    all of them when the access goes (``keep_role`` None), edit ones when it drops to view."""
    steps = []
    for token_id, token in sorted(ws.tokens.items()):
        covered = keep_role == "edit" or (keep_role == "view" and token.role == "view")
        if covered or kubeflow_user_id(settings, token.holder) != user:
            continue
        why = f"{user}'s {token.role} token {token_id} stops working"
        steps.append(_token_account_removal(ws, token_id, why))
    return steps


def _token_account_removal(ws: WorkspaceFacts, token_id: str, why: str) -> Step:
    name = token_account_name(token_id)
    return Step(
        "kubeflow.token_account.remove",
        f"TokenAccount/{ws.namespace}/{name}",
        {"namespace": ws.namespace, "name": name, "token_id": token_id},
        f"delete ServiceAccount `{name}` ({why})",
    )


@dataclass(frozen=True)
class Share:
    KIND: ClassVar[str] = "share"
    USAGE: ClassVar[str] = "/kf share WORKSPACE USER [--role edit|view] [--for 7d]"

    workspace: str
    user: str
    role: str = "edit"
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "user", naming.normalize_email(self.user))
        _check_role(self.role)

    def subject(self) -> str:
        return f"grant:{self.workspace}:{self.user}"

    def describe(self) -> str:
        until = f" for {units.format_duration(self.duration)}" if self.duration else ""
        return f"share `{self.workspace}` with {self.user} as {self.role}{until}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = _require_workspace(ctx, self.workspace)
        user = kubeflow_user_id(ctx.settings, self.user)
        if user == ws.owner:
            raise errors.InvalidInput(f"{self.user} owns `{self.workspace}` already.")
        warnings = (
            []
            if self.role == "edit"
            else [
                "View grants do not show in the Kubeflow dashboard's contributor list (it lists only edit); "
                "`/kf contributors` shows them."
            ]
        )
        clash = _kfam_clash(ws, user, self.role)
        if clash is not None:
            raise errors.InvalidInput(_clash_message(ws, user, *clash), field="user")
        previous = ws.contributors.get(user)
        if previous is not None and previous != self.role:
            article = "an" if previous[:1] in "aeiou" else "a"
            warnings.append(
                f"{user} is {article} {previous} contributor now; the grant is replaced by {self.role}."
            )
        return Plan.of(
            [
                Step(
                    "kubeflow.contributor",
                    f"Contributor/{ws.namespace}/{user}",
                    {"namespace": ws.namespace, "user": user, "role": self.role},
                    f"{self.role} access to `{ws.namespace}` for {user} "
                    f"(RoleBinding + AuthorizationPolicy `{naming.kfam_binding_name(user, self.role)}`)",
                ),
                # A grant lowered to view takes the edit tokens it made with it.
                *_token_removals(ws, ctx.settings, user, keep_role=self.role),
            ],
            warnings,
        )

    def timers_after_success(self, request_id: str, at: datetime) -> list[TimerSpec]:
        if self.duration is None:
            return []
        return [
            TimerSpec(
                "grant.expire",
                f"{self.workspace}:{self.user}",
                at + self.duration,
                {"workspace": self.workspace, "user": self.user, "request_id": request_id},
            )
        ]


@dataclass(frozen=True)
class Unshare(NoTimers):
    KIND: ClassVar[str] = "unshare"
    USAGE: ClassVar[str] = "/kf unshare WORKSPACE USER"

    workspace: str
    user: str
    notify: tuple[str, ...] | None = None
    """Set by the bot on an expiry: who is told of the outcome (the grantee and the owner)."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "user", naming.normalize_email(self.user))
        object.__setattr__(self, "notify", _notify_list(self.notify))

    def subject(self) -> str:
        return f"grant:{self.workspace}:{self.user}"

    def describe(self) -> str:
        return f"remove {self.user} from `{self.workspace}`"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = _require_workspace(ctx, self.workspace)
        user = kubeflow_user_id(ctx.settings, self.user)
        clash = _kfam_clash(ws, user, None)
        if clash is not None and user not in ws.contributors:
            holder, name = clash
            raise errors.InvalidInput(
                f"{user} has no grant in `{ws.name}`; `{name}` belongs to {holder} (Kubeflow folds "
                "non-alphanumeric characters in grant names, so both addresses give that name).",
                field="user",
            )
        tokens = _token_removals(ws, ctx.settings, user, keep_role=None)
        if user not in ws.contributors and user not in ws.recorded_grants and not tokens:
            # Nothing to remove: "done" would mislead, and the DM would go to a stranger.
            raise errors.NotFound(
                f"{user} has no access to `{ws.name}`; `/kf contributors {ws.name}` lists who has."
            )
        return Plan.of(
            [
                Step(
                    "kubeflow.contributor.remove",
                    f"Contributor/{ws.namespace}/{user}",
                    {"namespace": ws.namespace, "user": user},
                    f"remove {user}'s RoleBinding and AuthorizationPolicy from `{ws.namespace}`",
                ),
                # Losing access takes every token that access made.
                *tokens,
            ]
        )


# -- quota -------------------------------------------------------------------------------------

QUOTA_FLAGS = {"gpu": GPU_RESOURCE, "cpu": "cpu", "memory": "memory", "storage": "requests.storage"}


def _below(wanted: str, used: str, resource: str) -> bool:
    try:
        return units.parse_quantity(wanted, resource) < units.parse_quantity(used, resource)
    except errors.InvalidInput:  # a usage the cluster reports in a form we do not parse: no advice
        return False


@dataclass(frozen=True)
class QuotaChange:
    KIND: ClassVar[str] = "quota"
    USAGE: ClassVar[str] = (
        "/kf quota WORKSPACE [--gpu N] [--cpu N] [--memory 32Gi] [--storage 200Gi] [--for 3d]"
    )

    workspace: str
    gpu: str | None = None
    cpu: str | None = None
    memory: str | None = None
    storage: str | None = None
    duration: timedelta | None = None
    notify: tuple[str, ...] | None = None
    """Set by the bot on a revert at expiry: who is told of the outcome (the owner)."""
    unset: tuple[str, ...] | None = None
    """Set by the bot on a revert at expiry: resources the raise added to ``hard`` where there was
    no value before, removed again (sent as null in the merge patch)."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "notify", _notify_list(self.notify))
        if self.unset is not None:
            if not isinstance(self.unset, list | tuple) or not all(
                r in QUOTA_FLAGS.values() for r in self.unset
            ):
                raise errors.InvalidInput("`unset` is a list of quota resources.", field="unset")
            object.__setattr__(self, "unset", tuple(r for r in self.unset if r not in self.changes()) or None)
        if self.gpu is not None:
            object.__setattr__(self, "gpu", units.normalize_count(self.gpu, "--gpu", 512, allow_zero=True))
        if self.cpu is not None:
            object.__setattr__(self, "cpu", units.normalize_cpu(self.cpu))
        if self.memory is not None:
            object.__setattr__(self, "memory", units.normalize_memory(self.memory))
        if self.storage is not None:
            object.__setattr__(self, "storage", units.normalize_storage(self.storage))
        if not self.changes() and not self.unset:
            raise errors.InvalidInput(
                "Say what to change: --gpu, --cpu, --memory or --storage.", usage=self.USAGE
            )

    def changes(self) -> dict[str, str]:
        return {
            resource: getattr(self, flag)
            for flag, resource in QUOTA_FLAGS.items()
            if getattr(self, flag) is not None
        }

    def subject(self) -> str:
        return quota_subject(self.workspace)

    def describe(self) -> str:
        parts = ", ".join(
            [f"{k}={v}" for k, v in self.changes().items()] + [f"{k} unset" for k in self.unset or ()]
        )
        until = f" for {units.format_duration(self.duration)}" if self.duration else ""
        return f"quota of `{self.workspace}`: {parts}{until}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return _workspace_people(facts, self.workspace)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = _require_workspace(ctx, self.workspace)
        removed = [r for r in self.unset or () if r in ws.quota]
        hard = {r: v for r, v in {**ws.quota, **self.changes()}.items() if r not in removed}
        parts: list[str] = [f"{r}: {ws.quota[r]} -> unset" for r in removed]
        warnings: list[str] = []
        for resource, wanted in self.changes().items():
            part = f"{resource}: {ws.quota.get(resource, 'unset')} -> {wanted}"
            used = ws.quota_used.get(resource)
            if used is not None:
                # What the approver weighs: how much of the limit in force is taken right now.
                limit = ws.quota_enforced.get(resource, ws.quota.get(resource, "unset"))
                part += f" (used {used} of {limit} now)"
                if _below(wanted, used, resource):
                    warnings.append(
                        f"{resource} {wanted} is below the {used} in use now: running pods keep "
                        "their share, new ones wait until usage drops."
                    )
            parts.append(part)
        return Plan.of(
            [
                Step(
                    "kubeflow.quota",
                    f"Quota/{ws.namespace}",
                    {"profile": ws.namespace, "hard": hard},
                    f"Profile `{ws.namespace}` quota {', '.join(parts)}",
                )
            ],
            warnings,
        )

    def timers_after_success(self, request_id: str, at: datetime) -> list[TimerSpec]:
        # One timer per resource: a later change of one resource moves or cancels only its own
        # revert (the engine fills in the values to restore).
        if self.duration is None:
            return []
        return [
            TimerSpec(
                "quota.revert",
                quota_timer_ref(self.workspace, resource),
                at + self.duration,
                {"workspace": self.workspace, "resource": resource, "request_id": request_id},
            )
            for resource in self.changes()
        ]


def quota_timer_ref(workspace: str, resource: str) -> str:
    return f"{workspace}:{resource}"


def quota_subject(workspace: str) -> str:
    """The subject of every quota change of ``workspace`` (an indexed column of the store)."""
    return f"quota:{workspace}"


# -- tokens ------------------------------------------------------------------------------------

AUDIENCES = ("kubernetes", "pipelines")
PIPELINES_AUDIENCE = "pipelines.kubeflow.org"


def token_account_name(request_id: str) -> str:
    return f"kfbot-token-{request_id.lower()}"


@dataclass(frozen=True)
class TokenIssue:
    KIND: ClassVar[str] = "token"
    USAGE: ClassVar[str] = "/kf token WORKSPACE [--ttl 1h] [--audience kubernetes|pipelines] [--read-only]"

    workspace: str
    ttl: timedelta = timedelta(hours=1)
    audience: str = "kubernetes"
    read_only: bool = False

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        if self.audience not in AUDIENCES:
            raise errors.InvalidInput(
                f"--audience must be `kubernetes` or `pipelines`, not {naming.show_value(self.audience)}.",
                field="audience",
            )

    @property
    def role(self) -> str:
        return "view" if self.read_only else "edit"

    def audiences(self, settings: CoreSettings) -> list[str]:
        """What the TokenRequest asks for. ``kubernetes`` asks for none: the API server then uses
        its own default audience, as ``kubectl create token`` does (kubeflow-reference §5), so a
        wrong ``KFBOT_TOKEN_API_AUDIENCE`` cannot make a token kubectl refuses. ``pipelines`` needs
        both audiences named, the API server's from that setting."""
        if self.audience == "pipelines":
            return [PIPELINES_AUDIENCE, settings.tokens.api_audience]
        return []

    def subject(self) -> str | None:
        return None  # each token is its own account; parallel requests are fine

    def describe(self) -> str:
        return (
            f"{self.role} token for `{self.workspace}` ({self.audience}, {units.format_duration(self.ttl)})"
        )

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return ()  # the token is the requester's own

    def plan(self, ctx: PlanContext) -> Plan:
        limits = ctx.settings.tokens
        units.check_range(self.ttl, minimum=timedelta(minutes=10), maximum=limits.max_ttl, what="--ttl")
        ws = _require_workspace(ctx, self.workspace)
        name = token_account_name(ctx.request_id)
        return Plan.of(
            [
                Step(
                    "kubeflow.token_account",
                    f"TokenAccount/{ws.namespace}/{name}",
                    {
                        "namespace": ws.namespace,
                        "name": name,
                        "role": self.role,
                        "token_id": ctx.request_id,
                        "audiences": self.audiences(ctx.settings),
                        "ttl_seconds": int(self.ttl.total_seconds()),
                    },
                    f"ServiceAccount `{name}` bound to kubeflow-{self.role} in `{ws.namespace}`; "
                    "the token is made when you click Show token",
                )
            ]
        )

    def timers_after_success(self, request_id: str, at: datetime) -> list[TimerSpec]:
        return [TimerSpec("token.expire", request_id, at + self.ttl, {"request_id": request_id})]


@dataclass(frozen=True)
class TokenRevoke(NoTimers):
    KIND: ClassVar[str] = "token.revoke"
    USAGE: ClassVar[str] = "/kf token revoke TOKEN_ID"

    token_id: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,32}", self.token_id):
            raise errors.InvalidInput("That is not a token id; `/kf tokens` lists yours.", usage=self.USAGE)

    def subject(self) -> str:
        return f"token:{self.token_id}"

    def describe(self) -> str:
        return f"revoke token {self.token_id}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return ()  # taking a token away benefits nobody

    def plan(self, ctx: PlanContext) -> Plan:
        owner = ctx.facts.token_owner(self.token_id)
        if owner is None:
            raise errors.NotFound(f"Token {self.token_id} is not active.")
        ws = _require_workspace(ctx, owner[1])
        name = token_account_name(self.token_id)
        return Plan.of(
            [
                Step(
                    "kubeflow.token_account.remove",
                    f"TokenAccount/{ws.namespace}/{name}",
                    {"namespace": ws.namespace, "name": name},
                    f"delete ServiceAccount `{name}` (its tokens stop working)",
                )
            ]
        )


KINDS: Mapping[str, type[RequestKind]] = {
    cls.KIND: cls
    for cls in (
        WorkspaceCreate,
        WorkspaceDelete,
        WorkspacePin,
        Share,
        Unshare,
        QuotaChange,
        TokenIssue,
        TokenRevoke,
    )
}
