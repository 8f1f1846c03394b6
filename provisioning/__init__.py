"""The provisioning layer's public surface: the one factory the composition root calls and the
settings types it takes. Everything else in this package is internal (an import-linter contract
keeps ``bot/`` out of it)."""

from provisioning.backend import Backend, SystemClock, build_backend, generate_audit_key
from provisioning.doctor import CheckResult, DoctorReport, Permission, Status, required_permissions
from provisioning.metrics import Metrics
from provisioning.records import (
    Contributor,
    CostReportRecord,
    DriftReportRecord,
    GrantRecord,
    IdleScan,
    MonthUsage,
    QuotaState,
    TokenRecord,
    WorkspaceRecord,
    WorkspaceState,
    WorkspaceView,
)
from provisioning.settings import (
    CostProbeSettings,
    DexSettings,
    EngineSettings,
    KubeflowSettings,
    ProvisioningSettings,
)
from provisioning.store.inbox import InboxItem, SqlInbox
from provisioning.store.replay import SeenSignatures
from provisioning.store.usage import NodeUsage, UsageLedger

__all__ = [
    "Backend",
    "CheckResult",
    "Contributor",
    "CostProbeSettings",
    "CostReportRecord",
    "DexSettings",
    "DoctorReport",
    "DriftReportRecord",
    "EngineSettings",
    "GrantRecord",
    "IdleScan",
    "InboxItem",
    "KubeflowSettings",
    "Metrics",
    "MonthUsage",
    "NodeUsage",
    "Permission",
    "ProvisioningSettings",
    "QuotaState",
    "SeenSignatures",
    "SqlInbox",
    "Status",
    "SystemClock",
    "TokenRecord",
    "UsageLedger",
    "WorkspaceRecord",
    "WorkspaceState",
    "WorkspaceView",
    "build_backend",
    "generate_audit_key",
    "required_permissions",
]
