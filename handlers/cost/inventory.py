"""What one scan of the cluster saw: GPU nodegroups, their nodes, the pods that request GPUs, the
Kubeflow Notebooks, and what the notebook servers and Prometheus said about activity.

``provisioning`` builds an ``Inventory`` with a bounded number of list calls per kind (never one
call per node or pod); ``handlers.cost.idle`` decides from it, and from the times each signal was
first seen, what is idle. Every field is what the source said, already reduced to what the
decision needs: no client objects cross this boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

NodegroupStatus = str
"""EKS's ``nodegroup.status``: ``ACTIVE``, ``CREATING``, ``UPDATING``, ``DELETING``, ``DEGRADED``, ..."""

STEADY_STATUSES = frozenset({"ACTIVE", "DEGRADED"})
"""A nodegroup in another status is being created, updated or deleted: never reported idle."""

Workload = Literal["notebook", "job", "pytorchjob", "pipeline", "other"]
"""What a GPU pod belongs to, from its owner references (a Notebook's StatefulSet -> notebook; a
Job, a Kubeflow training job, an Argo workflow pipeline step; anything else -> other)."""

Activity = Literal["busy", "idle", "unknown"]


@dataclass(frozen=True)
class Nodegroup:
    name: str
    workspace: str | None
    """The workspace whose nodegroup the bot's registry says this is; None: unattributed (made by
    hand, not adopted)."""
    instance_type: str
    gpus_per_node: int
    """From EC2 ``DescribeInstanceTypes`` (cached) or ``handlers.prices.gpu_instance_info``; 0 for
    a CPU nodegroup (which the scan then ignores)."""
    status: NodegroupStatus
    min_size: int
    max_size: int
    desired_size: int


@dataclass(frozen=True)
class Node:
    name: str
    nodegroup: str
    """The ``eks.amazonaws.com/nodegroup`` label."""
    instance_type: str
    """The ``node.kubernetes.io/instance-type`` label (the nodegroup's when absent)."""
    gpus: int
    """``status.allocatable["nvidia.com/gpu"]`` (0 when the device plugin has not reported yet)."""
    created_at: datetime
    """``metadata.creationTimestamp``: when the node joined (uptime for the digest)."""


@dataclass(frozen=True)
class GpuPod:
    """A non-terminated pod that requests ``nvidia.com/gpu`` (filtered client-side)."""

    namespace: str
    name: str
    node: str | None
    """``spec.nodeName``; None while pending (a pending GPU pod keeps a scale-down from running)."""
    gpus: int
    """Sum of the containers' ``nvidia.com/gpu`` requests (limits when requests are absent)."""
    workload: Workload
    notebook: str | None = None
    """The Notebook's name when ``workload == "notebook"`` (StatefulSet owner -> Notebook)."""


@dataclass(frozen=True)
class Notebook:
    """A ``kubeflow.org/v1`` Notebook."""

    namespace: str
    name: str
    stopped: bool
    """The ``kubeflow-resource-stopped`` annotation is set (Kubeflow's stop)."""
    gpus: int
    """GPUs its pod template asks for (``nvidia.com/gpu`` limits or requests)."""
    image: str
    """The first container's image (a non-Jupyter image cannot be probed: unknown)."""
    server_type: str = "jupyter"
    """The Jupyter web app's ``notebooks.kubeflow.org/server-type`` annotation: ``jupyter``,
    ``group-one`` (VS Code) or ``group-two`` (RStudio); the last two have no kernels to read."""


@dataclass(frozen=True)
class NotebookActivity:
    """What the notebook server's ``/api/kernels`` and ``/api/terminals`` said, read the way
    Kubeflow's culler reads them."""

    state: Activity
    last_activity: datetime | None = None
    """The latest ``last_activity`` over kernels and terminals."""
    note: str = ""
    """Why the state is ``unknown`` (no kernels, 404, unreachable, not a Jupyter image)."""


@dataclass(frozen=True)
class GpuUtilisation:
    """What Prometheus said about the GPUs of each pod over the idle period."""

    by_pod: Mapping[tuple[str, str], float]
    """(namespace, pod) -> the highest utilisation seen over the period, 0..1."""
    note: str = ""
    """Set when Prometheus was configured but could not be used (unreachable, no labels): the
    decision then degrades to signals 1 and 2 and the report says so."""


@dataclass(frozen=True)
class Inventory:
    taken_at: datetime
    region: str
    nodegroups: tuple[Nodegroup, ...] = ()
    nodes: tuple[Node, ...] = ()
    pods: tuple[GpuPod, ...] = ()
    notebooks: tuple[Notebook, ...] = ()
    activity: Mapping[tuple[str, str], NotebookActivity] = field(default_factory=dict)
    """(namespace, notebook) -> activity, for the notebooks that hold a GPU now."""
    utilisation: GpuUtilisation | None = None
    """None when ``KFBOT_PROMETHEUS_URL`` is not set."""
    notes: tuple[str, ...] = ()
    """What the scan could not read (and so degraded), said in the report."""
    unread: frozenset[str] = frozenset()
    """Sources the scan could not read (``nodegroups``, ``nodes``, ``pods``, ``statefulsets``,
    ``notebooks``, ``prometheus``): what they would have said is missing, not empty. Above all,
    with ``pods`` unread every node would look empty, so nothing may be judged idle from it."""
    calls: Mapping[str, int] = field(default_factory=dict)
    """API calls made per kind (``eks.ListNodegroups``, ``k8s.list pods``, ``jupyter``...)."""
