"""The step contract: every action a plan step may name, and the params each one takes.

A kind's plan names its steps' actions from here; ``provisioning`` registers one implementation
per name (live and dry-run), and a test checks that the kinds, the live registries and the
dry-run renderers all speak exactly this set. The names are stored in every plan (and covered by
its digest), so a name never changes once released.

Each action's params have a type here (``PARAMS``: ``ProfileParams`` for ``kubeflow.profile``, …).
Kinds still emit params as the JSON object they always did (its bytes are in every stored plan's
digest); the action registries parse it into the type once, before any call goes out, so a damaged
or foreign stored step is refused with the action and the field named, and the adapters read typed
fields. Keys a type does not name are ignored: a removal step carries all of its create step's
params (``workspace.delete`` copies them from the registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Final, Self

from handlers.errors import PermanentError
from handlers.plan import JSON, as_list, as_text_map


class ActionName(StrEnum):
    PROFILE = "kubeflow.profile"
    PROFILE_REMOVE = "kubeflow.profile.remove"
    PODDEFAULT = "kubeflow.poddefault"
    CONTRIBUTOR = "kubeflow.contributor"
    CONTRIBUTOR_REMOVE = "kubeflow.contributor.remove"
    QUOTA = "kubeflow.quota"
    TOKEN_ACCOUNT = "kubeflow.token_account"  # noqa: S105 (an action name)
    TOKEN_ACCOUNT_REMOVE = "kubeflow.token_account.remove"  # noqa: S105
    DEX_USER = "dex.user"
    DEX_USER_REMOVE = "dex.user.remove"
    BUCKET = "aws.bucket"
    BUCKET_REMOVE = "aws.bucket.remove"
    IAM_RESOURCES = "aws.iam_resources"
    IAM_RESOURCES_REMOVE = "aws.iam_resources.remove"
    NODEGROUP = "aws.nodegroup"
    NODEGROUP_REMOVE = "aws.nodegroup.remove"
    NODEGROUP_TAINTS = "aws.nodegroup.taints"
    NODEGROUP_SCALING = "aws.nodegroup.scaling"
    NOTEBOOK_STOP = "kubeflow.notebook.stop"
    NOTEBOOK_IDLE = "kubeflow.notebook.idle"
    GPU_PODS_ABSENT = "kubeflow.gpu_pods.absent"
    NOTEBOOK_ACTIVITY = "kubeflow.notebook_activity"
    PROFILE_OWNER = "kubeflow.profile.owner"
    LAUNCH_TEMPLATE = "aws.launch_template"
    LAUNCH_TEMPLATE_REMOVE = "aws.launch_template.remove"
    WORKSPACE_ROLE = "aws.workspace_role"
    WORKSPACE_ROLE_REMOVE = "aws.workspace_role.remove"
    PROFILE_ADOPT = "kubeflow.adopt"
    DEX_ADOPT = "dex.adopt"
    AWS_ADOPT = "aws.adopt"


def is_removal(action: str) -> bool:
    """Actions named ``*.remove`` delete; their undo restores nothing."""
    return action.endswith(".remove")


REQUEST_MARK: Final = "_request"
"""The param key under which the engine passes the id of the request an action runs for; actions
mark what they create with it, so a retried step knows its own objects. Never part of a plan."""

NOTEBOOK_ACTIVITY_POLICY: Final = "kfbot-notebook-activity"
"""The AuthorizationPolicy in each workspace namespace that lets the bot read notebook activity."""
NOTEBOOK_ACTIVITY_PATHS: Final = ("*/api/kernels", "*/api/terminals")
"""Its paths (Istio suffix matches; see ``provisioning.kubeflow.notebook_activity_policy``)."""

KFAM_IDENTITY_DEFAULTS: Final = {
    "header": "kubeflow-userid",
    "prefix": "",
    "ingress_principal": "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    "kfp_ui_principal": "cluster.local/ns/kubeflow/sa/ml-pipeline-ui",
}
"""How Kubeflow recognises a user in a contributor's AuthorizationPolicy, as kubeflow/manifests
sets it (applications/profiles/upstream/manager/kustomization.yaml): the live adapter's fallback
and what the dry run shows."""

EKS_TAINT_EFFECTS: Final = frozenset({"NO_SCHEDULE", "NO_EXECUTE", "PREFER_NO_SCHEDULE"})


def _found(value: JSON) -> str:
    """What a param holds, in JSON's words (never the value: it may be anything)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return "a list" if isinstance(value, list) else "an object"


def _whole(value: JSON) -> int | None:
    """``value`` when it is an integer (not a boolean, not a float), else None."""
    return value if type(value) is int else None


class Fields:
    """Reads one step's params for ``action``; each reader refuses a wrong or missing value with a
    ``PermanentError`` naming the action and the field."""

    def __init__(self, action: ActionName, params: Mapping[str, JSON]) -> None:
        self.action, self.params = action, params

    def refuse(self, key: str, wanted: str) -> PermanentError:
        return PermanentError(
            f"The `{self.action}` step's `{key}` parameter must be {wanted}, but it holds "
            f"{_found(self.params.get(key))}; nothing was sent. The stored plan is damaged or was "
            "written by another version of the bot."
        )

    def text(self, key: str) -> str:
        value = self.params.get(key)
        if not isinstance(value, str) or not value:
            raise self.refuse(key, "a non-empty string")
        return value

    def optional_text(self, key: str) -> str:
        """A string, ``""`` when absent."""
        value = self.params.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.refuse(key, "a string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings, each once, in order."""
        value = self.params.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.refuse(key, "a list of non-empty strings")
        return tuple(dict.fromkeys(value))

    def text_map(self, key: str) -> dict[str, str]:
        """An object of strings, ``{}`` when absent."""
        value = self.params.get(key)
        if value is None:
            return {}
        try:
            return as_text_map(value)
        except TypeError:
            raise self.refuse(key, "an object mapping names to strings") from None

    def text_maps(self, key: str) -> tuple[dict[str, str], ...]:
        """A list of objects of strings, ``()`` when absent."""
        value = self.params.get(key)
        if value is None:
            return ()
        try:
            return tuple(as_text_map(item) for item in as_list(value))
        except TypeError:
            raise self.refuse(key, "a list of objects mapping names to strings") from None

    def flag(self, key: str) -> bool:
        """A boolean, False when absent."""
        value = self.params.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.refuse(key, "true or false")
        return value

    def json_object(self, key: str) -> Mapping[str, JSON]:
        """A JSON object (any values), ``{}`` when absent."""
        value = self.params.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.refuse(key, "an object")
        return value

    def request(self) -> str | None:
        value = self.params.get(REQUEST_MARK)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.refuse(REQUEST_MARK, "a request id")
        return value


@dataclass(frozen=True)
class StepParams:
    """One action's params, parsed. ``request``: the request the step runs for (``REQUEST_MARK``,
    added by the engine), None when an action is called directly (tools, tests)."""

    ACTION: ClassVar[ActionName]
    request: str | None = field(default=None, kw_only=True)

    @classmethod
    def parse(cls, params: Mapping[str, JSON]) -> Self:
        return cls.read(Fields(cls.ACTION, params))

    @classmethod
    def read(cls, f: Fields) -> Self:
        raise NotImplementedError(cls.__name__)


@dataclass(frozen=True)
class ProfileParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.PROFILE
    name: str
    owner: str
    hard: Mapping[str, str]
    labels: Mapping[str, str]
    aws_iam_role: str = ""
    """The workspace role's ARN, set through the ``AwsIamForServiceAccount`` plugin with
    ``annotateOnly`` (``KFBOT_WORKSPACE_IAM=per-workspace``); ``""``: no plugin."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        role = f.optional_text("aws_iam_role")
        if role and (not role.startswith("arn:") or ":role/" not in role):
            raise f.refuse("aws_iam_role", "an IAM role ARN")
        return cls(
            f.text("name"), f.text("owner"), f.text_map("hard"), f.text_map("labels"), role,
            request=f.request(),
        )


@dataclass(frozen=True)
class ProfileOwnerParams(StepParams):
    """``workspace.transfer``: the Profile's ``spec.owner`` (and, first, the namespace's ``owner``
    annotation, without which the profile controller refuses the new owner) become ``owner``."""

    ACTION: ClassVar[ActionName] = ActionName.PROFILE_OWNER
    name: str
    owner: str
    previous: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("name"), f.text("owner"), f.text("previous"), request=f.request())


@dataclass(frozen=True)
class ProfileRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.PROFILE_REMOVE
    name: str
    purge_data: bool
    adopted: bool = False
    """A live workspace records the Profile as adopted (``provisioning.actions.check_removable``)."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("name"), f.flag("purge_data"), f.flag("adopted"), request=f.request())


@dataclass(frozen=True)
class PodDefaultParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.PODDEFAULT
    namespace: str
    name: str
    tolerations: tuple[Mapping[str, str], ...]
    description: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            f.text("namespace"), f.text("name"), f.text_maps("tolerations"), f.optional_text("description"),
            request=f.request(),
        )


@dataclass(frozen=True)
class NotebookActivityParams(StepParams):
    """The workspace namespace's ``kfbot-notebook-activity`` AuthorizationPolicy. The principal it
    admits is the bot's own (``KFBOT_BOT_PRINCIPAL``), a deployment fact the live adapter holds, so
    it is not a param: a request cannot name whom the policy lets in."""

    ACTION: ClassVar[ActionName] = ActionName.NOTEBOOK_ACTIVITY
    namespace: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("namespace"), request=f.request())


@dataclass(frozen=True)
class ContributorParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.CONTRIBUTOR
    namespace: str
    user: str
    role: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("namespace"), f.text("user"), f.text("role"), request=f.request())


@dataclass(frozen=True)
class ContributorRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.CONTRIBUTOR_REMOVE
    namespace: str
    user: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("namespace"), f.text("user"), request=f.request())


@dataclass(frozen=True)
class QuotaParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.QUOTA
    profile: str
    hard: Mapping[str, str]

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("profile"), f.text_map("hard"), request=f.request())


@dataclass(frozen=True)
class TokenAccountParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.TOKEN_ACCOUNT
    namespace: str
    name: str
    role: str
    token_id: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            f.text("namespace"), f.text("name"), f.text("role"), f.text("token_id"), request=f.request()
        )


@dataclass(frozen=True)
class TokenAccountRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.TOKEN_ACCOUNT_REMOVE
    namespace: str
    name: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("namespace"), f.text("name"), request=f.request())


@dataclass(frozen=True)
class DexUserParams(StepParams):
    """``mode``, ``username`` and ``user_id`` are ``""`` when absent: the adapter's defaults apply."""

    ACTION: ClassVar[ActionName] = ActionName.DEX_USER
    email: str
    mode: str
    username: str
    user_id: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            _email(f), f.optional_text("mode"), f.optional_text("username"), f.optional_text("user_id"),
            request=f.request(),
        )


STATIC_INLINE_HASH: Final = "hash"
STATIC_HASH_FROM_ENV: Final = "hashFromEnv"
"""How an adopted ``staticPasswords`` entry keeps its hash (``DexUserRemoveParams.static_entry``)."""


@dataclass(frozen=True)
class DexUserRemoveParams(StepParams):
    """``static_entry`` (an adopted ``staticPasswords`` entry, as adoption recorded it): ``hash``
    for an inline hash, ``hashFromEnv`` for one whose hash is the Secret key ``env_key``;
    ``""`` for the entries and objects the bot writes."""

    ACTION: ClassVar[ActionName] = ActionName.DEX_USER_REMOVE
    email: str
    mode: str
    adopted: bool = False
    """A live workspace records the login as adopted (``provisioning.actions.check_removable``)."""
    static_entry: str = ""
    env_key: str = ""
    except_namespace: str = ""
    """The namespace of the workspace the request deletes, transfers or unshares: its Profile and
    bindings still stand when the step runs, and are no use of the login it removes."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        static = f.optional_text("static_entry")
        if static not in ("", STATIC_INLINE_HASH, STATIC_HASH_FROM_ENV):
            raise f.refuse("static_entry", f"`{STATIC_INLINE_HASH}` or `{STATIC_HASH_FROM_ENV}`")
        key = f.optional_text("env_key")
        if static == STATIC_HASH_FROM_ENV and not key:
            raise f.refuse("env_key", "the Secret key a `hashFromEnv` entry names")
        return cls(_email(f), f.optional_text("mode"), f.flag("adopted"), static, key,
                   f.optional_text("except_namespace"), request=f.request())


def _email(f: Fields) -> str:
    value = f.params.get("email")
    if not isinstance(value, str) or "@" not in value:
        raise f.refuse("email", "an email address")
    return value.strip().lower()


@dataclass(frozen=True)
class BucketParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.BUCKET
    bucket: str
    region: str
    tags: Mapping[str, str]

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("bucket"), f.text("region"), f.text_map("tags"), request=f.request())


@dataclass(frozen=True)
class BucketRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.BUCKET_REMOVE
    bucket: str
    purge_data: bool
    adopted: bool = False
    """A live workspace records the bucket as adopted (``provisioning.actions.check_removable``)."""
    namespace: str = ""
    """An adopted bucket's workspace namespace: one tagged for another since is kept
    (``naming.names_other_namespace``, re-read when the step runs)."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            f.text("bucket"), f.flag("purge_data"), f.flag("adopted"), f.optional_text("namespace"),
            request=f.request(),
        )


@dataclass(frozen=True)
class IamResourcesParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.IAM_RESOURCES
    policy_arn: str
    resources: tuple[str, ...]

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("policy_arn"), f.texts("resources"), request=f.request())


@dataclass(frozen=True)
class IamResourcesRemoveParams(IamResourcesParams):
    """``statements``: for ARNs an adoption found in statements written by hand (their ``Sid``,
    or ``#N`` for the N-th statement without one), so the removal takes them out of those
    ``Allow`` statements too, not only the bot's own; empty for the bot's grants."""

    ACTION: ClassVar[ActionName] = ActionName.IAM_RESOURCES_REMOVE
    statements: tuple[str, ...] = ()
    statement_shapes: tuple[str, ...] = ()
    """The whole text (``provisioning.aws.statement_identity``) of each recorded statement without
    a ``Sid``: only a statement still exactly so is edited (an ``#N`` label names a position, which
    a statement written since shifts). Empty in a record from before it: those stay."""
    statement_forms: tuple[str, ...] | None = None
    """``provisioning.aws.statement_form`` of each recorded statement with a ``Sid``: only a
    statement still of that form (same Sid, Effect, actions, Condition; resources may have grown)
    is edited. None in a record from before it: the Sid alone, as then."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        statements = f.texts("statements") if "statements" in f.params else ()
        shapes = f.texts("statement_shapes") if "statement_shapes" in f.params else ()
        forms = f.texts("statement_forms") if "statement_forms" in f.params else None
        return cls(f.text("policy_arn"), f.texts("resources"), statements, shapes, forms,
                   request=f.request())


@dataclass(frozen=True)
class Taint:
    """A nodegroup taint in EKS's spelling (``NO_SCHEDULE``); an absent value is ``""``."""

    key: str
    value: str
    effect: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "effect": self.effect}


def _taints(f: Fields, *, required: bool) -> tuple[Taint, ...]:
    value = f.params.get("taints")
    if value is None and not required:
        return ()
    wanted = "a list of taints, each with a key, a value and an EKS effect (NO_SCHEDULE, …)"
    if not isinstance(value, list) or (required and not value):
        raise f.refuse("taints", ("a non-empty " if required else "") + wanted.removeprefix("a "))
    taints = []
    for taint in value:
        if not (
            isinstance(taint, Mapping)
            and isinstance(taint.get("key"), str)
            and taint["key"]
            and isinstance(taint.get("value", ""), str)
            and taint.get("effect") in EKS_TAINT_EFFECTS
        ):
            raise f.refuse("taints", wanted)
        taints.append(Taint(taint["key"], taint.get("value", ""), taint["effect"]))
    return tuple(taints)


@dataclass(frozen=True)
class Scaling:
    """EKS's scaling config; EKS refuses a bad one only after the call (moto not at all)."""

    min_size: int
    max_size: int
    desired_size: int

    def to_json(self) -> dict[str, int]:
        return {"minSize": self.min_size, "maxSize": self.max_size, "desiredSize": self.desired_size}

    @classmethod
    def read(cls, f: Fields, nodegroup: str) -> Scaling:
        raw = f.params.get("scaling")
        sizes = raw if isinstance(raw, Mapping) else {}
        low, high, desired = (_whole(sizes.get(k)) for k in ("minSize", "maxSize", "desiredSize"))
        if low is None or high is None or desired is None:
            raise PermanentError(
                f"The `{f.action}` step's `scaling` parameter is not valid: nodegroup {nodegroup} needs "
                "integer minSize, maxSize and desiredSize."
            )
        if high < 1:
            raise PermanentError(f"Nodegroup {nodegroup}: maxSize must be at least 1 (got {high}).")
        if not 0 <= low <= desired <= high:
            raise PermanentError(
                f"Nodegroup {nodegroup}: need 0 <= minSize <= desiredSize <= maxSize, "
                f"got {low}, {desired}, {high}."
            )
        return cls(low, high, desired)


@dataclass(frozen=True)
class NodegroupParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.NODEGROUP
    cluster: str
    name: str
    instance_types: tuple[str, ...]
    ami_type: str
    scaling: Scaling
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    subnets: tuple[str, ...]
    node_role: str
    tags: Mapping[str, str]
    capacity_type: str
    """``""``: EKS's default (on-demand)."""
    disk_size: int | None = None
    """Root volume GiB as EKS's ``diskSize``; only without a launch template (EKS refuses both)."""
    launch_template: str = ""
    """The name of the launch template (``aws.launch_template``) the nodegroup starts from."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        name = f.text("name")
        return cls(
            f.text("cluster"),
            name,
            f.texts("instance_types"),
            f.text("ami_type"),
            Scaling.read(f, name),
            f.text_map("labels"),
            _taints(f, required=False),
            f.texts("subnets"),
            f.text("node_role"),
            f.text_map("tags"),
            f.optional_text("capacity_type"),
            _optional_whole(f, "disk_size", 1, 16384),
            f.optional_text("launch_template"),
            request=f.request(),
        )


def _optional_whole(f: Fields, key: str, low: int, high: int) -> int | None:
    value = f.params.get(key)
    if value is None:
        return None
    number = _whole(value)
    if number is None or not low <= number <= high:
        raise f.refuse(key, f"a whole number from {low} to {high}, or null")
    return number


DISK_TYPES: Final = frozenset({"gp2", "gp3", "io1", "io2"})
IMDS_TOKENS: Final = frozenset({"required", "optional"})


@dataclass(frozen=True)
class LaunchTemplateParams(StepParams):
    """An EC2 launch template for one nodegroup: its root volume (``/dev/xvda``, the AL2023 EKS
    AMIs' root device), IMDS options and the tags its instances and volumes get. Empty or None
    fields are left to EC2/EKS."""

    ACTION: ClassVar[ActionName] = ActionName.LAUNCH_TEMPLATE
    name: str
    disk_size: int | None
    disk_type: str
    imds_tokens: str
    imds_hop_limit: int | None
    instance_tags: Mapping[str, str]

    @classmethod
    def read(cls, f: Fields) -> Self:
        disk_type, tokens = f.optional_text("disk_type"), f.optional_text("imds_tokens")
        if disk_type and disk_type not in DISK_TYPES:
            raise f.refuse("disk_type", "one of " + ", ".join(sorted(DISK_TYPES)))
        if tokens and tokens not in IMDS_TOKENS:
            raise f.refuse("imds_tokens", "required or optional")
        return cls(
            f.text("name"),
            _optional_whole(f, "disk_size", 1, 16384),
            disk_type,
            tokens,
            _optional_whole(f, "imds_hop_limit", 1, 64),
            f.text_map("instance_tags"),
            request=f.request(),
        )


@dataclass(frozen=True)
class LaunchTemplateRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.LAUNCH_TEMPLATE_REMOVE
    name: str
    adopted: bool = False
    """The step names the template as adopted (``provisioning.actions.check_removable``)."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("name"), f.flag("adopted"), request=f.request())


@dataclass(frozen=True)
class WorkspaceRoleParams(StepParams):
    """A workspace's own IAM role (``KFBOT_WORKSPACE_IAM=per-workspace``): trusted only by
    ``system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT`` through the cluster's OIDC provider
    (audience ``sts.amazonaws.com``), with one inline policy naming only ``bucket``."""

    ACTION: ClassVar[ActionName] = ActionName.WORKSPACE_ROLE
    name: str
    namespace: str
    service_account: str
    oidc_provider_arn: str
    bucket: str
    tags: Mapping[str, str]

    @classmethod
    def read(cls, f: Fields) -> Self:
        provider = f.text("oidc_provider_arn")
        if not provider.startswith("arn:") or ":oidc-provider/" not in provider:
            raise f.refuse("oidc_provider_arn", "an IAM OIDC provider ARN")
        return cls(
            f.text("name"), f.text("namespace"), f.text("service_account"), provider, f.text("bucket"),
            f.text_map("tags"), request=f.request(),
        )


@dataclass(frozen=True)
class WorkspaceRoleRemoveParams(StepParams):
    """``adopted``: a live workspace records the role as adopted (``check_removable``); such a role
    is deleted only while it still serves ``namespace`` alone and grants no bucket but ``bucket``
    (the create step's fields, which a removal step carries)."""

    ACTION: ClassVar[ActionName] = ActionName.WORKSPACE_ROLE_REMOVE
    name: str
    adopted: bool = False
    namespace: str = ""
    bucket: str = ""

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            f.text("name"), f.flag("adopted"), f.optional_text("namespace"), f.optional_text("bucket"),
            request=f.request(),
        )


@dataclass(frozen=True)
class NodegroupRemoveParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.NODEGROUP_REMOVE
    cluster: str
    name: str
    adopted: bool = False
    """A live workspace records the nodegroup as adopted (``provisioning.actions.check_removable``)."""
    namespace: str = ""
    """An adopted nodegroup's workspace namespace: one tagged or labelled for another since is
    kept (``naming.names_other_namespace``, re-read when the step runs)."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(
            f.text("cluster"), f.text("name"), f.flag("adopted"), f.optional_text("namespace"),
            request=f.request(),
        )


@dataclass(frozen=True)
class NodegroupTaintsParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.NODEGROUP_TAINTS
    cluster: str
    name: str
    taints: tuple[Taint, ...]

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("cluster"), f.text("name"), _taints(f, required=True), request=f.request())


def _optional_size(f: Fields, key: str) -> int | None:
    """A node count 0..1000, None when absent (the nodegroup keeps what it has)."""
    value = f.params.get(key)
    if value is None:
        return None
    size = _whole(value)
    if size is None or not 0 <= size <= 1000:
        raise f.refuse(key, "a whole number of nodes (0..1000) or null")
    return size


@dataclass(frozen=True)
class NodegroupScalingParams(StepParams):
    """A new scaling for a nodegroup the bot made. ``None``: keep what EKS has now (a desired size
    kept is clamped into the new bounds). The JSON keys are the field names."""

    ACTION: ClassVar[ActionName] = ActionName.NODEGROUP_SCALING
    cluster: str
    name: str
    min_size: int | None
    desired_size: int | None
    max_size: int | None
    adopted: bool = False
    """The registry holds the nodegroup as adopted (made by hand, no mark of the bot's): present
    in the params only then, so bot-made nodegroups' steps and digests are as before."""

    @classmethod
    def read(cls, f: Fields) -> Self:
        name = f.text("name")
        low, desired, high = (_optional_size(f, k) for k in ("min_size", "desired_size", "max_size"))
        if high is not None and high < 1:
            raise PermanentError(f"Nodegroup {name}: maxSize must be at least 1 (got {high}).")
        if low is not None and high is not None and low > high:
            raise PermanentError(f"Nodegroup {name}: minSize {low} is above maxSize {high}.")
        below = desired is not None and low is not None and desired < low
        if below or (desired is not None and high is not None and desired > high):
            raise PermanentError(f"Nodegroup {name}: desiredSize {desired} is outside {low}..{high}.")
        return cls(f.text("cluster"), name, low, desired, high, f.flag("adopted"), request=f.request())


@dataclass(frozen=True)
class NotebookStopParams(StepParams):
    ACTION: ClassVar[ActionName] = ActionName.NOTEBOOK_STOP
    namespace: str
    name: str

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("namespace"), f.text("name"), request=f.request())


@dataclass(frozen=True)
class NotebookIdleParams(StepParams):
    """The guard before an automatic stop: notebook ``name`` in ``namespace`` has been idle for at
    least ``idle_seconds`` now, read from its server's ``/api/kernels`` and ``/api/terminals`` as
    the scan reads them; anything else refuses (``PermanentError``), nothing stopped."""

    ACTION: ClassVar[ActionName] = ActionName.NOTEBOOK_IDLE
    namespace: str
    name: str
    idle_seconds: int

    @classmethod
    def read(cls, f: Fields) -> Self:
        seconds = f.params.get("idle_seconds")
        if type(seconds) is not int or seconds < 1:
            raise f.refuse("idle_seconds", "a whole number of seconds, at least 1")
        return cls(f.text("namespace"), f.text("name"), seconds, request=f.request())


@dataclass(frozen=True)
class GpuPodsAbsentParams(StepParams):
    """No pod requesting ``nvidia.com/gpu`` runs on the nodes of ``nodegroup`` (and, when
    ``namespace`` is set, none of that namespace is pending). ``wait``: while there are, defer
    (``TemporaryError``) instead of refusing (``PermanentError``)."""

    ACTION: ClassVar[ActionName] = ActionName.GPU_PODS_ABSENT
    nodegroup: str
    namespace: str
    wait: bool

    @classmethod
    def read(cls, f: Fields) -> Self:
        return cls(f.text("nodegroup"), f.optional_text("namespace"), f.flag("wait"), request=f.request())


ADOPTABLE: Mapping[ActionName, ActionName] = {
    ActionName.PROFILE: ActionName.PROFILE_ADOPT,
    ActionName.DEX_USER: ActionName.DEX_ADOPT,
    ActionName.BUCKET: ActionName.AWS_ADOPT,
    ActionName.IAM_RESOURCES: ActionName.AWS_ADOPT,
    ActionName.NODEGROUP: ActionName.AWS_ADOPT,
    ActionName.CONTRIBUTOR: ActionName.PROFILE_ADOPT,
    ActionName.WORKSPACE_ROLE: ActionName.AWS_ADOPT,
}
"""Create action of an object found by hand -> the action that checks it is still there when an
adoption applies (each adapter checks its own objects; none of them writes anything)."""


@dataclass(frozen=True)
class AdoptParams(StepParams):
    """An object made by hand that a ``workspace.adopt`` records as adopted: ``object`` is the
    create action it stands for (``aws.bucket``), ``name`` the object (Profile, email, bucket,
    policy ARN, nodegroup), ``params`` what the registry records, shaped as that create action's
    params so every later kind reads it as it reads a bot-made object. ``resources`` (IAM): the
    ARNs the policy must still list."""

    ACTION: ClassVar[ActionName] = ActionName.PROFILE_ADOPT
    object: ActionName
    name: str
    params: Mapping[str, JSON]
    resources: tuple[str, ...] = ()

    @classmethod
    def read(cls, f: Fields) -> Self:
        obj = f.text("object")
        if obj not in set(ActionName) or ADOPTABLE.get(ActionName(obj)) != cls.ACTION:
            raise f.refuse("object", f"an object `{cls.ACTION}` checks")
        resources = f.texts("resources") if "resources" in f.params else ()
        return cls(ActionName(obj), f.text("name"), f.json_object("params"), resources, request=f.request())


@dataclass(frozen=True)
class DexAdoptParams(AdoptParams):
    ACTION: ClassVar[ActionName] = ActionName.DEX_ADOPT


@dataclass(frozen=True)
class AwsAdoptParams(AdoptParams):
    ACTION: ClassVar[ActionName] = ActionName.AWS_ADOPT


PARAMS: Mapping[ActionName, type[StepParams]] = {
    cls.ACTION: cls
    for cls in (
        ProfileParams,
        ProfileRemoveParams,
        PodDefaultParams,
        ContributorParams,
        ContributorRemoveParams,
        QuotaParams,
        TokenAccountParams,
        TokenAccountRemoveParams,
        DexUserParams,
        DexUserRemoveParams,
        BucketParams,
        BucketRemoveParams,
        IamResourcesParams,
        IamResourcesRemoveParams,
        NodegroupParams,
        NodegroupRemoveParams,
        NodegroupTaintsParams,
        NodegroupScalingParams,
        NotebookStopParams,
        GpuPodsAbsentParams,
        NotebookActivityParams,
        NotebookIdleParams,
        ProfileOwnerParams,
        LaunchTemplateParams,
        LaunchTemplateRemoveParams,
        WorkspaceRoleParams,
        WorkspaceRoleRemoveParams,
        AdoptParams,
        DexAdoptParams,
        AwsAdoptParams,
    )
}
"""Action -> the type its params parse into."""
