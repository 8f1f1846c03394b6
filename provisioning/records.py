"""What the registry and the live cluster tell about workspaces, as frozen values.

The store's registry rows (``SqlRegistry``), the live state of a workspace
(``KubeflowActions.workspace_state``) and the backend's read models built from both
(``Backend.workspace_view``, ``contributors``, ``tokens``). Re-exported by ``provisioning`` so the
edge can type what it renders without reaching into the adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from handlers.cost.idle import FleetLine, Observation
from handlers.plan import JSON


@dataclass(frozen=True)
class WorkspaceRecord:
    """A workspace the bot made. ``created``: step key -> ``{"action", "params"}`` of what it made."""

    name: str
    namespace: str
    owner: str
    request_id: str | None
    created: Mapping[str, Mapping[str, JSON]]
    created_at: datetime
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class GrantRecord:
    """Access the bot granted to a contributor."""

    workspace: str
    user: str
    role: str
    request_id: str | None
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    """A ServiceAccount token the bot issued. ``holder``: the requester's email (``tokens_in`` only)."""

    token_id: str
    requester_id: str
    workspace: str
    namespace: str
    account: str
    role: str
    audiences: tuple[str, ...]
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None = None
    holder: str | None = None


@dataclass(frozen=True)
class QuotaState:
    """The namespace's ResourceQuota: what it enforces and what is in use, per resource."""

    hard: Mapping[str, str] = field(default_factory=dict)
    used: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkspaceState:
    """The live truth about one workspace.

    Attributes:
        profile_hard: the Profile's ``resourceQuotaSpec.hard`` (None: no Profile).
        quota: the namespace's ResourceQuota as enforced (empty without a namespace or quota).
        contributors: user -> role, by KFAM's listing rule (the owner is not a contributor).
    """

    namespace: str
    exists: bool = False
    profile_exists: bool = False
    owner: str | None = None
    profile_hard: Mapping[str, str] | None = None
    quota: QuotaState = field(default_factory=QuotaState)
    contributors: Mapping[str, str] = field(default_factory=dict)
    pvcs: int = 0


@dataclass(frozen=True)
class WorkspaceView:
    """``/kf workspace show``: the registry row, its grants and (live mode) the cluster and drift."""

    record: WorkspaceRecord
    grants: tuple[GrantRecord, ...]
    live: WorkspaceState | None = None
    drift: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contributor:
    """``/kf contributors``: a recorded grant or a binding found only in the cluster.

    Attributes:
        in_cluster: whether the cluster has the binding (None: not checked, dry-run).
        recorded: False for a binding in the cluster that kf-chatops did not grant.
    """

    workspace: str
    user: str
    role: str
    expires_at: datetime | None = None
    in_cluster: bool | None = None
    recorded: bool = True


@dataclass(frozen=True)
class MonthUsage:
    workspace: str | None
    node_hours: float
    idle_hours: float
    usd: float
    idle_usd: float


@dataclass(frozen=True)
class IdleScan:
    """One idle-GPU observation (``Backend.observe_idle``) or a status read (``Backend.gpu_status``)."""

    taken_at: datetime
    observation: Observation
    fleet: tuple[FleetLine, ...]
    owners: Mapping[str, str]
    """Workspace -> its owner's user id (email), from the registry."""
    warned: frozenset[str] = frozenset()
    """Item keys whose last warning before an auto-stop was posted."""
    pending_stops: Mapping[str, datetime] = field(default_factory=dict)
    """Target -> due time of its pending ``cost.auto_stop`` timer."""
    month: tuple[MonthUsage, ...] = ()
    """GPU node time and dollars this UTC month per workspace (``gpu_usage``)."""


@dataclass(frozen=True)
class CostReportRecord:
    """Where a channel's idle report message is and what it listed (``cost_reports``)."""

    channel: str
    ts: str | None
    digest: str
    items: Mapping[str, JSON]


@dataclass(frozen=True)
class DriftReportRecord:
    """Where a channel's drift report message is and what it listed (``drift_reports``)."""

    channel: str
    ts: str | None
    digest: str
    items: Mapping[str, JSON]
