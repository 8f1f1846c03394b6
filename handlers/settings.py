"""The core's settings: policy, defaults for new workspaces, limits. Plain frozen dataclasses;
``bot.settings`` builds them from the environment, tests build them directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from handlers import units
from handlers.naming import NamingSettings

MIN_TOKEN_TTL = timedelta(minutes=10)
"""The shortest ``--ttl`` a token may have (and so the shortest default)."""


@dataclass(frozen=True)
class PolicySettings:
    admin_users: frozenset[str] = frozenset()
    """Slack user ids of admins (``KFBOT_ADMIN_USERS``)."""
    admin_group: str | None = None
    """A Slack user group whose members are admins (``KFBOT_ADMIN_GROUP``)."""
    request_ttl: timedelta = timedelta(hours=72)
    """A pending request expires after this long (``KFBOT_REQUEST_TTL``)."""
    nudge_after: timedelta = timedelta(hours=4)
    """Approvers are reminded of a request still pending after this long."""
    quota_auto_increase: Mapping[str, str] = field(
        default_factory=lambda: {
            "requests.nvidia.com/gpu": "1",
            "cpu": "4",
            "memory": "16Gi",
            "requests.storage": "50Gi",
        }
    )
    """An owner's quota increase up to these amounts (per resource) applies without an admin."""


@dataclass(frozen=True)
class NodegroupStyle:
    """The runbook's eksctl nodegroup fields. Every default leaves EKS's own (and the plan's
    params exactly as before this existed); ``RUNBOOK_NODEGROUP`` holds the runbook's values.
    A disk type, IMDS options or instance tags need a launch template (EKS takes ``diskSize``
    only without one); the bot makes one per nodegroup when any of them is set."""

    disk_size: int | None = None
    """Root volume GiB (``KFBOT_NODE_DISK_SIZE``); None: EKS's default (20)."""
    disk_type: str = ""
    """Root volume type (``KFBOT_NODE_DISK_TYPE``: gp2, gp3, io1, io2); empty: EKS's (gp2)."""
    eksctl_labels: bool = False
    """Label and tag the nodegroup as eksctl does (``KFBOT_NODE_EKSCTL_LABELS``)."""
    imds_tokens: str = ""
    """``required`` (IMDSv2 only) or ``optional`` (``KFBOT_NODE_IMDS_TOKENS``); empty: EKS's."""
    imds_hop_limit: int | None = None
    """IMDS PUT response hop limit (``KFBOT_NODE_IMDS_HOP_LIMIT``); 1 keeps pods (one hop further
    away) from the node role's credentials."""
    instance_tags: bool = False
    """Tag instances and volumes with the workspace tags (``KFBOT_NODE_INSTANCE_TAGS``), so Cost
    Explorer sees ``kf-chatops/workspace`` on them (EKS nodegroup tags do not propagate)."""

    def needs_launch_template(self) -> bool:
        return bool(self.disk_type or self.imds_tokens or self.imds_hop_limit or self.instance_tags)

    def isolates_pods_from_node_role(self) -> bool:
        """IMDSv2 required with hop limit 1: a pod (behind its own network hop) gets no token, so no
        node-role credentials."""
        return self.imds_tokens == "required" and self.imds_hop_limit == 1


RUNBOOK_NODEGROUP = NodegroupStyle(
    disk_size=50, disk_type="gp3", eksctl_labels=True, imds_tokens="required", imds_hop_limit=1,
    instance_tags=True,
)
"""``KFBOT_NODEGROUP_STYLE=runbook``: the runbook's eksctl nodegroup."""


@dataclass(frozen=True)
class WorkspaceDefaults:
    region: str = "us-east-1"
    cluster: str = "kubeflow"
    """EKS cluster name for nodegroups."""
    subnets: tuple[str, ...] = ()
    node_role_arn: str = ""
    iam_policy_arns: tuple[str, ...] = ()
    """Managed policies that get each workspace bucket added (``KFBOT_IAM_POLICY_ARNS``)."""
    gpu_instance_type: str = "g4dn.xlarge"
    """Instance type for ``--gpu N`` without ``--instance-type``."""
    nodes_min: int = 0
    nodes_max: int = 2
    max_nodes: int = 10
    """``KFBOT_MAX_NODES``: the largest ``--nodes MAX`` a request may ask for (a cost guard; a
    request above it is refused before it is recorded)."""
    cpu: str = "8"
    memory: str = "32Gi"
    storage: str = "100Gi"
    pvcs: int = 10
    dex_mode: str = "password-cr"
    """``password-cr`` | ``configmap`` | ``external`` (``KFBOT_DEX_MODE``)."""
    price_overrides: Mapping[str, float] = field(default_factory=dict)
    """Instance type -> hourly USD, overriding the built-in table."""
    user_id_map: Mapping[str, str] = field(default_factory=dict)
    """Slack email -> Kubeflow user id, where logins use another form."""
    nodegroup: NodegroupStyle = field(default_factory=NodegroupStyle)
    """What a new nodegroup carries beyond its size and type (``KFBOT_NODEGROUP_STYLE``,
    ``KFBOT_NODE_*``)."""
    workspace_iam: str = "shared"
    """``shared``: each bucket joins ``iam_policy_arns`` (the runbook's way); ``per-workspace``: an
    IAM role per workspace naming only its bucket, for its ``default-editor`` ServiceAccount
    (``KFBOT_WORKSPACE_IAM``)."""
    oidc_provider_arn: str = ""
    """The cluster's IAM OIDC provider (``KFBOT_OIDC_PROVIDER_ARN``), which per-workspace roles
    trust; required in ``per-workspace`` mode."""


@dataclass(frozen=True)
class TokenSettings:
    max_ttl: timedelta = timedelta(hours=24)
    """Longest ``--ttl`` a token may ask for (``KFBOT_TOKEN_MAX_TTL``)."""
    default_ttl: timedelta = timedelta(hours=1)
    """The TTL of ``/kf token`` without ``--ttl`` (``KFBOT_TOKEN_DEFAULT_TTL``); fixed when the
    command is parsed, so a pending request keeps the TTL it was asked with."""
    api_audience: str = "https://kubernetes.default.svc"
    """The API server's own audience, requested beside pipelines.kubeflow.org for ``pipelines``
    tokens (``kubernetes`` tokens name none: the API server's default)."""

    def __post_init__(self) -> None:
        # A default no request could ask for would make every plain `/kf token` fail at plan time.
        units.check_range(
            self.default_ttl, minimum=MIN_TOKEN_TTL, maximum=self.max_ttl, what="default token TTL"
        )


@dataclass(frozen=True)
class CostSettings:
    """Cost control: when a GPU counts as idle, where reports go, when the digest is posted."""

    idle_after: timedelta = timedelta(hours=2)
    """An idle signal must hold this long before it is reported (``KFBOT_IDLE_AFTER``)."""
    idle_gpu_util: float = 0.05
    """A GPU below this utilisation (0..1) over the whole period is unused (``KFBOT_IDLE_GPU_UTIL``,
    given in percent)."""
    scan_interval: timedelta = timedelta(minutes=10)
    """How often the leader scans for idle GPUs (``KFBOT_SCAN_INTERVAL``)."""
    cost_channel: str = ""
    """Channel id for idle reports and the digest (``KFBOT_COST_CHANNEL``); empty: the admin
    channel."""
    workspace_channels: Mapping[str, str] = field(default_factory=dict)
    """Workspace -> channel id whose reports go there instead (``KFBOT_WORKSPACE_CHANNELS``)."""
    auto_stop_after: timedelta | None = None
    """Opt-in: stop or scale down what a report warned about after this long without an answer
    (``KFBOT_AUTO_STOP_AFTER``); None: never."""
    digest_schedule: str = "0 9 * * mon-fri"
    """Crontab text (minute hour day month day-of-week, named days) for the cost digest
    (``KFBOT_COST_DIGEST``); empty: no digest."""
    timezone: str = "UTC"
    """IANA zone the digest schedule is read in (``KFBOT_TIMEZONE``)."""


@dataclass(frozen=True)
class OffboardSettings:
    """Offboarding: how often Slack is asked who left, and who gets a left owner's workspaces."""

    every: timedelta | None = timedelta(days=1)
    """How often the leader checks everyone the bot gave access to (``KFBOT_OFFBOARD_EVERY``;
    ``off``: only ``/kf offboard EMAIL``)."""
    owner: str = ""
    """Whom a left owner's workspace is offered to when it has no edit contributor
    (``KFBOT_OFFBOARD_OWNER``, an email; empty: the admins file the transfer themselves)."""


@dataclass(frozen=True)
class CoreSettings:
    policy: PolicySettings = field(default_factory=PolicySettings)
    naming: NamingSettings = field(default_factory=NamingSettings)
    workspace: WorkspaceDefaults = field(default_factory=WorkspaceDefaults)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    offboard: OffboardSettings = field(default_factory=OffboardSettings)


def kubeflow_user_id(settings: CoreSettings, email: str) -> str:
    """The Kubeflow user id of a Slack email: ``KFBOT_USER_ID_MAP`` where it has the email, else the
    email itself. The one place an actor becomes the id that Profiles, grants, Dex logins and the
    registry record; every comparison of a person with workspace facts goes through it."""
    email = email.strip().lower()
    return settings.workspace.user_id_map.get(email, email)


def slack_emails(settings: CoreSettings, user: str) -> tuple[str, ...]:
    """The Slack addresses of the person whose Kubeflow id is ``user``: the addresses
    ``KFBOT_USER_ID_MAP`` maps to it, and ``user`` itself unless the map makes it someone's
    Kubeflow id (a Slack account at that address is somebody else, and may not act)."""
    user = user.strip().lower()
    mapping = settings.workspace.user_id_map
    emails = [email for email, kubeflow in sorted(mapping.items()) if kubeflow == user]
    if not mapped_away(settings, user):
        emails.append(user)
    return tuple(e for e in dict.fromkeys(emails) if "@" in e and kubeflow_user_id(settings, e) == user)


def mapped_away(settings: CoreSettings, email: str) -> bool:
    """Whether ``email`` is a Kubeflow id ``KFBOT_USER_ID_MAP`` maps another address to, and not a
    Slack address the map knows itself: a Slack account there would act as the mapped person."""
    email = email.strip().lower()
    mapping = settings.workspace.user_id_map
    return email not in mapping and any(v == email and k != email for k, v in mapping.items())
