"""Typed settings of the provisioning layer; ``bot.settings`` fills them from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

ProvisionerMode = Literal["dry-run", "live"]
DexMode = Literal["password-cr", "configmap", "external"]


@dataclass(frozen=True)
class KubeflowSettings:
    userid_header: str | None = None
    """Identity header in AuthorizationPolicies; None: read ``USERID_HEADER`` from the profiles
    Deployment, falling back to ``kubeflow-userid``."""
    userid_prefix: str | None = None
    ingress_principal: str | None = None
    kfp_ui_principal: str | None = None
    profiles_namespace: str = "kubeflow"
    profiles_deployment: str = "profiles-deployment"
    namespace_timeout: float = 120.0
    """Seconds to wait for the profile controller to create a Profile's namespace."""
    poll_interval: float = 2.0
    kube_api_url: str = ""
    """API server URL written into kubeconfigs handed to users (``KFBOT_KUBE_API_URL``)."""
    kube_ca_file: str | None = None
    """CA bundle for those kubeconfigs; None: the namespace's ``kube-root-ca.crt``."""


@dataclass(frozen=True)
class DexSettings:
    mode: DexMode = "password-cr"
    namespace: str = "auth"
    configmap: str = "dex"
    secret: str = "dex-passwords"  # noqa: S105 (the Secret's name)
    deployment: str = "dex"
    bcrypt_cost: int = 12
    restart_quiet_period: float = 10.0
    """Seconds without new additions before the one Dex restart (configmap mode)."""


@dataclass(frozen=True)
class EngineSettings:
    worker_id: str = "kfbot"
    lease: timedelta = timedelta(seconds=60)
    step_deadline: timedelta = timedelta(minutes=30)
    """A step that keeps failing temporarily counts as failed permanently after this long."""
    retry_initial: float = 1.0
    retry_max: float = 60.0
    poll_interval: float = 2.0
    """Seconds an idle worker waits before looking again when nothing woke it (the fallback:
    approvals, retries and finished requests wake the workers at once, see store/wakeup.py)."""
    workers: int = 4
    """``KFBOT_WORKERS``: requests this process applies at once, each by its own worker thread
    claiming under ``worker_id/N``; two requests about one subject never run at once."""


@dataclass(frozen=True)
class CostProbeSettings:
    """Where the idle-GPU scan reads activity from, besides the Kubernetes and EKS APIs."""

    prometheus_url: str | None = None
    """``KFBOT_PROMETHEUS_URL``: Prometheus with the DCGM exporter's metrics; None: no signal 3."""
    cluster_domain: str = "cluster.local"
    """``KFBOT_CLUSTER_DOMAIN``: notebook servers are read at ``NAME.NAMESPACE.svc.<domain>``."""
    bot_principal: str = "cluster.local/ns/kf-chatops/sa/kf-chatops"
    """``KFBOT_BOT_PRINCIPAL``: the bot pod's Istio principal, the only one the per-workspace
    ``kfbot-notebook-activity`` AuthorizationPolicy lets read notebook activity."""
    cost_explorer: bool = False
    """``KFBOT_COST_EXPLORER=on``: add billed cost from Cost Explorer to the digest."""
    request_timeout: float = 5.0
    """Seconds per notebook-server or Prometheus read."""


@dataclass(frozen=True)
class ProvisioningSettings:
    mode: ProvisionerMode = "dry-run"
    database_url: str = "sqlite:///./kfbot.db"
    audit_key: bytes = field(default=b"", repr=False)
    engine: EngineSettings = field(default_factory=EngineSettings)
    kubeflow: KubeflowSettings = field(default_factory=KubeflowSettings)
    dex: DexSettings = field(default_factory=DexSettings)
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    cost: CostProbeSettings = field(default_factory=CostProbeSettings)
