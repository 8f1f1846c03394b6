"""Live AWS actions for a workspace: its S3 bucket, its grants in IAM policies, its EKS nodegroup.

The engine may run a step again at any time (a retry, a crash and resume, a second worker after
a lease expired), so every ``ensure`` reads first, changes only what differs and reports through
``StepOutcome.created`` whether this bot made the object; ``undo`` removes only such objects.

Why some things are done the way they are:

- Bucket ownership is decided by ``CreateBucket``'s answer, not by ``HeadBucket``: a HEAD succeeds
  for any bucket we may read, including another account's, while only CreateBucket says whose the
  name is. The HEAD first is still needed because in us-east-1 re-creating our own bucket answers
  200, which would otherwise look like a fresh creation.
- Ownership survives retries and crashes through a mark: the tag ``kf-chatops/request: <request
  id>`` (``MARK_TAG``; the engine passes the id as ``params["_request"]``). A nodegroup gets it in
  ``CreateNodegroup`` itself. A bucket gets it by the first call after ``CreateBucket``; if that
  call fails, the bucket (empty, a moment old) is deleted before the error goes up, and a step that
  fails for good deletes the bucket it owns, since a failed step is not compensated. A step that
  finds its bucket or nodegroup reports ``created=True`` only when the tag names its own request.
  IAM policy versions have no room for a mark: when a retry finds its ARNs already granted, they
  count as its own exactly when their bucket carries the request's mark (the bucket name was free
  when the request began, so nobody else granted it in between).
- A bucket that exists without this request's mark is refused (``PermanentError``): the bot never
  tags, grants or later deletes a bucket it did not create (a team's, another workspace's).
- Residual gaps, where ownership is not exact: a worker killed between ``CreateBucket`` and the
  tagging call leaves an unmarked empty bucket that the retry refuses and nobody removes
  (``CreateBucketConfiguration.Tags`` would close this, but needs ``s3:TagResource`` and is not
  served by moto, so it is not used yet); a retry that finds the ARNs of a bucket it did *not*
  create (a pre-existing bucket) cannot tell a write of its own killed attempt from an earlier
  grant and claims nothing, so such a grant can stay behind; and a stale grant to a bucket name
  that was free when a request created it is removed with that request's compensation.
- An IAM managed policy has no compare-and-set: adding an ARN is a read-modify-write of the whole
  document, so two workspaces sharing one policy would lose each other's ARNs. Every rewrite runs
  under ``KeyedLock.hold(policy_arn)`` (a database lock across bot processes). IAM keeps at most
  five versions, so the oldest non-default one is deleted before a new default is created. The
  bot edits only its own statement (``KfChatopsWorkspaceBuckets``); the rest stays byte-for-byte
  what the administrators wrote.
- Nodegroups take minutes. Waiting uses the injected ``Clock`` so the engine and the tests own
  time; a wait that runs out is a ``TemporaryError`` (the engine retries), a failed nodegroup a
  ``PermanentError`` carrying EKS's health issues.
- botocore's exceptions never leave this module: they become ``TemporaryError`` (throttling, 5xx,
  connection trouble) or ``PermanentError`` (denied, invalid, limits) whose message names the
  bucket, policy or nodegroup and never quotes a response body.
- Nothing talks to AWS at import or construction (the bot must start, and dry-run, without AWS):
  the boto3 session and clients are made on first use.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import unquote

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from handlers import workspace_iam
from handlers.actions import (
    ActionName,
    AwsAdoptParams,
    BucketParams,
    BucketRemoveParams,
    IamResourcesParams,
    IamResourcesRemoveParams,
    LaunchTemplateParams,
    LaunchTemplateRemoveParams,
    NodegroupParams,
    NodegroupRemoveParams,
    NodegroupScalingParams,
    NodegroupTaintsParams,
    StepParams,
    Taint,
    WorkspaceRoleParams,
    WorkspaceRoleRemoveParams,
)
from handlers.errors import KfError, PermanentError, TemporaryError
from handlers.naming import names_other_namespace
from handlers.plan import JSON, StepOutcome, as_list, as_object, canonical_json
from handlers.ports import Clock
from provisioning.actions import Action, KeyedLock, TypedAction, check_removable, registry_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_eks.type_defs import NodegroupTypeDef
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_s3.type_defs import (
        ObjectIdentifierTypeDef,
        PublicAccessBlockConfigurationTypeDef,
        TagTypeDef,
    )
    from mypy_boto3_sts import STSClient


@dataclass(frozen=True)
class AwsSettings:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    """``AWS_ENDPOINT_URL`` for tests and LocalStack; None keeps boto3's standard resolution."""
    nodegroup_active_timeout: float = 1800.0
    """Seconds to wait for a nodegroup to become ACTIVE or to disappear."""
    poll_interval: float = 15.0
    max_policy_chars: int = 6144
    """IAM's managed-policy size quota, counted without whitespace."""


# Standard mode backs off on throttling and 5xx; the attempt count is left to AWS_MAX_ATTEMPTS or
# the AWS config file, since the engine retries TemporaryError on top of botocore.
_CLIENT_CONFIG: Final = Config(
    retries={"mode": "standard"}, connect_timeout=10, read_timeout=60, user_agent_extra="kf-chatops"
)

BOT_SID: Final = "KfChatopsWorkspaceBuckets"
BUCKET_ACTIONS: Final = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:ListBucket",
    "s3:GetBucketLocation",
)
# IAM rejects a document without statements (MalformedPolicyDocument). When the bot's statement
# is the only one and loses its last ARN it becomes this grant of a non-existent action instead.
_GRANTS_NOTHING: Final = "none:null"
_MAX_POLICY_VERSIONS: Final = 5

_PUBLIC_ACCESS_BLOCK: Final[PublicAccessBlockConfigurationTypeDef] = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}

_NODEGROUP_READY: Final = frozenset({"ACTIVE", "UPDATING"})
_NODEGROUP_FAILED: Final = frozenset({"CREATE_FAILED", "DEGRADED", "DELETE_FAILED"})
_TOKEN_NAMESPACE: Final = uuid.UUID("0b0e5a0c-6f2e-4bb8-9d59-6b1f0f4c1a7e")

_THROTTLING: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "SlowDown",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "PriorRequestNotComplete",
    }
)
_TRANSIENT: Final = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceFailure",
        "ServerException",
        "RequestTimeout",
        "RequestTimeoutException",
        "OperationAborted",
        "ConcurrentModification",
        "ConcurrentModificationException",
    }
)
_BAD_CREDENTIALS: Final = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "InvalidToken",
        "AuthFailure",
    }
)
_DENIED: Final = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AllAccessDisabled"}
)
_LIMITS: Final = frozenset(
    {
        "LimitExceeded",
        "LimitExceededException",
        "ResourceLimitExceededException",
        "TooManyBuckets",
        "ServiceQuotaExceededException",
        "QuotaExceededException",
    }
)
_NOT_FOUND: Final = frozenset(
    {"NoSuchEntity", "NoSuchBucket", "ResourceNotFoundException", "NotFoundException"}
)
# AWS's text for these explains what was wrong with our input, which is what the admin must fix.
_INVALID: Final = frozenset(
    {
        "InvalidParameterException",
        "InvalidRequestException",
        "InvalidParameterValue",
        "ValidationError",
        "ValidationException",
        "MalformedPolicyDocument",
        "InvalidBucketName",
        "InvalidArgument",
        "InvalidInput",
        "ClientException",
    }
)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _created(create: Callable[[], object], exists: str) -> bool:
    """Runs an AWS create call; False where AWS answers ``exists``: the thing is there already
    (a retry of ours, or someone else's: the caller checks whose)."""
    try:
        create()
    except ClientError as e:
        if _code(e) == exists:
            return False
        raise
    return True


@contextmanager
def _nodegroup_update(name: str, delay: float) -> Iterator[None]:
    """EKS refuses an update while another one runs on the nodegroup: retried later, not failed."""
    try:
        yield
    except ClientError as e:
        if _code(e) == "ResourceInUseException":
            raise TemporaryError(
                f"EKS nodegroup {name} is busy with another update; will retry.", delay=delay
            ) from e
        raise


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _translate(error: ClientError, what: str) -> KfError:
    code = _code(error)
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    label = code or f"HTTP {status}"
    if code in _THROTTLING:
        return TemporaryError(f"AWS is throttling the bot while {what}; will retry.", delay=10.0)
    if code in _TRANSIENT or status >= 500:
        return TemporaryError(f"AWS had a temporary failure ({label}) while {what}; will retry.")
    if code in _BAD_CREDENTIALS:
        return PermanentError(f"AWS rejected the bot's credentials ({label}) while {what}.")
    if code in _DENIED or status == 403:
        return PermanentError(
            f"AWS denied access while {what} ({label}): the bot's IAM role needs permission for "
            f"{error.operation_name}."
        )
    if code in _LIMITS:
        return PermanentError(f"An AWS limit was reached while {what} ({label}).")
    if code in _NOT_FOUND:
        return PermanentError(f"Something AWS needed does not exist ({label}) while {what}.")
    if code in _INVALID:
        message = str(error.response.get("Error", {}).get("Message", ""))
        return PermanentError(f"AWS refused the request while {what} ({label}): {_short(message)}")
    return PermanentError(f"AWS refused the request while {what} ({label}).")


@contextmanager
def _aws_call(what: str) -> Iterator[None]:
    """Translate botocore's exceptions raised inside into ``handlers.errors`` types."""
    try:
        yield
    except ClientError as e:
        raise _translate(e, what) from e
    except (BotoConnectionError, HTTPClientError) as e:
        raise TemporaryError(f"Could not reach AWS while {what}; will retry.") from e
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise PermanentError(f"The bot has no usable AWS credentials ({what}).") from e
    except ParamValidationError as e:
        raise PermanentError(f"Invalid AWS request while {what}: {_short(str(e))}") from e
    except BotoCoreError as e:
        raise TemporaryError(f"The AWS call failed while {what} ({type(e).__name__}); will retry.") from e




MARK_TAG: Final = "kf-chatops/request"
"""Tag naming the request that created a bucket or nodegroup; the same key as the Kubernetes label
``provisioning.k8s.MARK_KEY``, so one search finds a request's objects everywhere."""
# What IAM, S3 and EKS all accept in a tag value.
_TAG_VALUE_CHARS: Final = frozenset(string.ascii_letters + string.digits + " _.:/=+-@")


def _request_of(params: StepParams) -> str | None:
    """The request a step runs for; None when an action is called directly (then nothing is
    marked and nothing found is claimed)."""
    value = params.request
    if value is None:
        return None
    if len(value) > 256 or not set(value) <= _TAG_VALUE_CHARS:
        # A mark that cannot be written cannot be read back: refuse before creating anything.
        raise PermanentError("The request id cannot be used as an ownership tag.")
    return value


def _mark(params: StepParams) -> dict[str, str]:
    request = _request_of(params)
    return {MARK_TAG: request} if request else {}


def _owns(request: str | None, tags: Mapping[str, str] | None) -> bool:
    """Whether an object with ``tags`` was made by ``request``; an unmarked one never is."""
    return request is not None and (tags or {}).get(MARK_TAG) == request


def statement_identity(statement: Mapping[str, Any]) -> str:
    """A statement's whole text, keys sorted: how a statement without a ``Sid`` is recognised
    later. Its position is no identity (a statement written before it shifts every ``#N``)."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"))


def statement_form(statement: Mapping[str, Any]) -> str:
    """A statement's text without its ``Resource``, actions as a sorted set: what a statement with
    a ``Sid`` must still be for a removal to edit it. A ``Sid`` is unique within a policy, not over
    time (an admin may replace the statement with another reusing it), while resources an admin
    added since leave it the statement adoption recorded."""
    form = {str(k): v for k, v in statement.items() if k != "Resource"}
    for key in ("Action", "NotAction"):
        if key in form:
            form[key] = sorted({str(a) for a in _as_list(form[key])})
    return json.dumps(form, sort_keys=True, separators=(",", ":"))


def _recorded(statement: Mapping[str, Any], sids: Sequence[str], shapes: Sequence[str],
              forms: Sequence[str] | None) -> bool:
    """Whether an adoption recorded ``statement``: its ``Sid`` among ``sids`` and its
    ``statement_form`` among ``forms`` (None: a record from before forms, the Sid alone), or,
    without a Sid, its exact text among ``shapes``. The bot's own statement is always its own."""
    sid = statement.get("Sid")
    if sid:
        if str(sid) == BOT_SID:
            return True
        return str(sid) in sids and (forms is None or statement_form(statement) in forms)
    return statement_identity(statement) in shapes


def bucket_of(arn: str) -> str | None:
    """``arn:aws:s3:::NAME`` and ``arn:aws:s3:::NAME/…`` -> NAME; None for anything else."""
    prefix = "arn:aws:s3:::"
    if not arn.startswith(prefix):
        return None
    return arn[len(prefix) :].split("/", 1)[0] or None


def _kept_bucket(bucket: str) -> StepOutcome:
    """The outcome of a bucket removal that found data (without ``--purge-data``): kept, not deleted."""
    return StepOutcome(
        created=False,
        details={
            "deleted": False,
            "bucket": bucket,
            "reason": f"S3 bucket {bucket} held data when it was to be removed, so it was kept; "
            "ask again with --purge-data to delete it too.",
        },
        kept=(f"S3 bucket `{bucket}`",),
    )


def _irreversible(params: StepParams, outcome: StepOutcome) -> None:
    """Removals have no compensation: deleted data cannot be brought back."""


def _taints_stay(params: StepParams, outcome: StepOutcome) -> None:
    """A workspace taint is not taken off again: the PodDefault, updated before it, tolerates it,
    and removing it would let other workspaces' pods back onto the nodegroup."""


def _has_taint(nodegroup: NodegroupTypeDef, taint: Taint) -> bool:
    # EKS leaves out an empty value.
    return any(
        (t.get("key"), t.get("value", ""), t.get("effect")) == (taint.key, taint.value, taint.effect)
        for t in nodegroup.get("taints", [])
    )


def _policy_name(policy_arn: str) -> str:
    return policy_arn.rsplit("/", 1)[-1]


def _chars_without_whitespace(text: str) -> int:
    return sum(1 for char in text if not char.isspace())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _bot_resources(statement: Mapping[str, Any] | None) -> list[str]:
    if statement is None or statement.get("Action") == _GRANTS_NOTHING:
        return []
    return [str(r) for r in _as_list(statement.get("Resource", []))]


def _rewrite_statements(document: Mapping[str, Any], resources: Sequence[str]) -> dict[str, Any]:
    """The document with the bot's statement granting exactly ``resources``; others untouched."""
    statements = _as_list(document.get("Statement", []))
    others = [s for s in statements if not (isinstance(s, Mapping) and s.get("Sid") == BOT_SID)]
    ours: dict[str, Any] | None
    if resources:
        ours = {
            "Sid": BOT_SID,
            "Effect": "Allow",
            "Action": list(BUCKET_ACTIONS),
            "Resource": list(resources),
        }
    elif others:
        ours = None
    else:
        ours = {"Sid": BOT_SID, "Effect": "Allow", "Action": _GRANTS_NOTHING, "Resource": "*"}
    rewritten: list[Any] = []
    placed = False
    for statement in statements:
        if isinstance(statement, Mapping) and statement.get("Sid") == BOT_SID:
            if ours is not None and not placed:
                rewritten.append(ours)
                placed = True
        else:
            rewritten.append(statement)
    if ours is not None and not placed:
        rewritten.append(ours)
    return {**document, "Statement": rewritten}


def _tag_set(tags: Mapping[str, str]) -> list[TagTypeDef]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _health_message(name: str, status: str, nodegroup: NodegroupTypeDef) -> str:
    issues = nodegroup.get("health", {}).get("issues", [])
    described = "; ".join(
        f"{issue.get('code', 'Unknown')}: {_short(issue.get('message', ''), 160)}" for issue in issues[:5]
    )
    return f"EKS nodegroup {name} is {status}" + (
        f": {described}" if described else " (EKS reports no details)."
    )


class AwsActions:
    """The ``aws.*`` step actions and a few read helpers for the doctor, ``workspace show`` and reports."""

    def __init__(
        self,
        settings: AwsSettings,
        clock: Clock,
        policy_lock: KeyedLock,
        session: boto3.Session | None = None,
        *,
        profile_names: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._settings = settings
        # Every Profile's name (one list call), for an adopted removal's hand-over check; None (a
        # composition without Kubernetes) checks the tag keys only.
        self._profile_names = profile_names
        self._clock = clock
        self._policy_lock = policy_lock
        self._session = session
        self._clients_lock = threading.Lock()
        self._s3_clients: dict[str, S3Client] = {}
        self._iam_client: IAMClient | None = None
        self._eks_client: EKSClient | None = None
        self._ec2_client: EC2Client | None = None
        self._sts_client: STSClient | None = None

    def _profiles(self) -> frozenset[str]:
        return frozenset(self._profile_names()) if self._profile_names is not None else frozenset()

    def registry(self) -> dict[str, Action]:
        return registry_of(
            TypedAction(BucketParams, self._ensure_bucket, self._undo_bucket),
            TypedAction(BucketRemoveParams, self._remove_bucket, _irreversible),
            TypedAction(IamResourcesParams, self._ensure_iam_resources, self._undo_iam_resources),
            TypedAction(IamResourcesRemoveParams, self._remove_iam_resources, _irreversible),
            TypedAction(NodegroupParams, self._ensure_nodegroup, self._undo_nodegroup),
            TypedAction(NodegroupRemoveParams, self._remove_nodegroup, _irreversible),
            TypedAction(NodegroupTaintsParams, self._ensure_nodegroup_taints, _taints_stay),
            TypedAction(NodegroupScalingParams, self._ensure_nodegroup_scaling, self._undo_nodegroup_scaling),
            TypedAction(LaunchTemplateParams, self._ensure_launch_template, self._undo_launch_template),
            TypedAction(LaunchTemplateRemoveParams, self._remove_launch_template, _irreversible),
            TypedAction(WorkspaceRoleParams, self._ensure_workspace_role, self._undo_workspace_role),
            TypedAction(WorkspaceRoleRemoveParams, self._remove_workspace_role, _irreversible),
            TypedAction(AwsAdoptParams, self._check_adopted, _irreversible),
        )

    # -- adoption: reads only --

    def buckets(self) -> list[tuple[str, dict[str, str]]]:
        """(name, tags) of every bucket the account lists, for adoption's discovery."""
        s3 = self._s3()
        out: list[tuple[str, dict[str, str]]] = []
        with _aws_call("listing S3 buckets"):
            names = [str(b["Name"]) for b in s3.list_buckets().get("Buckets", []) if "Name" in b]
        for name in names:
            try:
                tag_set = s3.get_bucket_tagging(Bucket=name).get("TagSet", [])
            except ClientError as e:
                if _code(e) not in ("NoSuchTagSet", "AccessDenied", "NoSuchBucket"):
                    raise _translate(e, f"reading the tags of S3 bucket {name}") from e
                tag_set = []
            out.append((name, {str(t["Key"]): str(t["Value"]) for t in tag_set}))
        return out

    def policy_resources(self, policy_arn: str) -> list[str]:
        """Every ``Resource`` the policy's default version names, in any statement."""
        with _aws_call(f"reading IAM policy {_policy_name(policy_arn)}"):
            document = self._default_document(self._iam(), policy_arn)
        out: list[str] = []
        for statement in _as_list(document.get("Statement", [])):
            if isinstance(statement, Mapping):
                out += [str(r) for r in _as_list(statement.get("Resource", []))]
        return out

    def policy_statements(self, policy_arn: str) -> list[tuple[str, str, list[str], str]]:
        """``(label, Effect, Resource list, identity)`` of each statement of the policy's default
        version, for adoption: ``label`` is the ``Sid``, or ``#N`` (1-based) for a statement without
        one; ``identity`` is ``statement_identity`` (what a Sid-less statement is recognised by)."""
        with _aws_call(f"reading IAM policy {_policy_name(policy_arn)}"):
            document = self._default_document(self._iam(), policy_arn)
        out: list[tuple[str, str, list[str], str]] = []
        for index, statement in enumerate(_as_list(document.get("Statement", [])), start=1):
            if isinstance(statement, Mapping):
                resources = [str(r) for r in _as_list(statement.get("Resource", []))]
                label = str(statement.get("Sid") or f"#{index}")
                effect = str(statement.get("Effect", ""))
                out.append((label, effect, resources, statement_identity(statement)))
        return out

    def nodegroups(self, cluster: str) -> list[NodegroupTypeDef]:
        """Every nodegroup of ``cluster``, described."""
        eks = self._eks()
        with _aws_call(f"listing the nodegroups of cluster {cluster}"):
            names = [n for page in eks.get_paginator("list_nodegroups").paginate(clusterName=cluster)
                     for n in page.get("nodegroups", [])]
            found = [self._describe(cluster, n) for n in names]
        return [n for n in found if n is not None]

    def _check_adopted(self, params: AwsAdoptParams) -> StepOutcome:
        """``aws.adopt``: the bucket, the policy's entries or the nodegroup a ``workspace.adopt``
        records must still be there; only read (adoption changes nothing)."""
        name = params.name
        if params.object == ActionName.BUCKET:
            present = any(bucket == name for bucket, _ in self.buckets())
        elif params.object == ActionName.IAM_RESOURCES:
            listed = set(self.policy_resources(name))
            present = all(r in listed for r in params.resources)
        elif params.object == ActionName.WORKSPACE_ROLE:
            with _aws_call(f"reading IAM role {name}"):
                present = self._get_role(name) is not None
        else:
            cluster = str(params.params.get("cluster") or "")
            with _aws_call(f"reading EKS nodegroup {name}"):
                present = bool(cluster) and self._describe(cluster, name) is not None
        if not present:
            raise PermanentError(
                f"{params.object} `{name}` is no longer as it was found; nothing was recorded."
            )
        return StepOutcome(created=False, details={"adopted": True})

    # -- clients (made on first use; boto3 clients are thread-safe, sessions are not) --

    def _boto_session(self) -> boto3.Session:
        if self._session is None:
            self._session = boto3.Session()
        return self._session

    def _s3(self, region: str | None = None) -> S3Client:
        region = region or self._settings.region
        with self._clients_lock:
            client = self._s3_clients.get(region)
            if client is None:
                client = self._boto_session().client(
                    "s3", region_name=region, endpoint_url=self._settings.endpoint_url, config=_CLIENT_CONFIG
                )
                self._s3_clients[region] = client
            return client

    def _iam(self) -> IAMClient:
        with self._clients_lock:
            if self._iam_client is None:
                self._iam_client = self._boto_session().client(
                    "iam",
                    region_name=self._settings.region,
                    endpoint_url=self._settings.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
            return self._iam_client

    def _eks(self) -> EKSClient:
        with self._clients_lock:
            if self._eks_client is None:
                self._eks_client = self._boto_session().client(
                    "eks",
                    region_name=self._settings.region,
                    endpoint_url=self._settings.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
            return self._eks_client

    def _ec2(self) -> EC2Client:
        with self._clients_lock:
            if self._ec2_client is None:
                self._ec2_client = self._boto_session().client(
                    "ec2",
                    region_name=self._settings.region,
                    endpoint_url=self._settings.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
            return self._ec2_client

    def _sts(self) -> STSClient:
        with self._clients_lock:
            if self._sts_client is None:
                self._sts_client = self._boto_session().client(
                    "sts",
                    region_name=self._settings.region,
                    endpoint_url=self._settings.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
            return self._sts_client

    # -- read helpers --

    def caller_identity(self) -> dict[str, str]:
        with _aws_call("checking the bot's AWS identity"):
            identity = self._sts().get_caller_identity()
        return {"Account": identity.get("Account", ""), "Arn": identity.get("Arn", "")}

    def own_role_arn(self) -> str:
        """The IAM role ARN behind the bot's credentials (an assumed-role session's role; its path
        read with GetRole when allowed), or the caller's ARN when it is not a role."""
        arn = self.caller_identity()["Arn"]
        m = re.fullmatch(r"arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+", arn)
        if m is None:
            return arn
        try:
            with _aws_call(f"reading the bot's role {m.group(3)}"):
                return str(self._iam().get_role(RoleName=m.group(3))["Role"]["Arn"])
        except KfError:
            return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"

    def simulate_own_permissions(self, principal: str, actions: Sequence[str]) -> dict[str, str]:
        """IAM's policy simulator on ``principal`` (the bot's own role): action -> ``allowed``,
        ``explicitDeny`` or ``implicitDeny``. Needs ``iam:SimulatePrincipalPolicy`` on itself."""
        decisions: dict[str, str] = {}
        with _aws_call("simulating the bot's own IAM permissions"):
            paginator = self._iam().get_paginator("simulate_principal_policy")
            for page in paginator.paginate(PolicySourceArn=principal, ActionNames=list(actions)):
                for result in page["EvaluationResults"]:
                    decisions[result["EvalActionName"]] = result["EvalDecision"]
        return decisions

    def attached_role_policies(self, role_arn: str) -> list[str]:
        """The managed policies attached to a role (the node role, for ``kfbot doctor``)."""
        name = role_arn.rsplit("/", 1)[-1]
        with _aws_call(f"listing the policies attached to role {name}"):
            return [
                attached["PolicyArn"]
                for page in self._iam().get_paginator("list_attached_role_policies").paginate(RoleName=name)
                for attached in page["AttachedPolicies"]
            ]

    def describe_nodegroup(self, cluster: str, name: str) -> dict[str, Any] | None:
        with _aws_call(f"reading nodegroup {name} in cluster {cluster}"):
            nodegroup = self._describe(cluster, name)
        return None if nodegroup is None else dict(nodegroup)

    def bucket_summary(self, bucket: str) -> dict[str, Any] | None:
        s3 = self._s3()
        with _aws_call(f"reading bucket {bucket}"):
            if not self._bucket_exists(s3, bucket):
                return None
            return {
                "bucket": bucket,
                "exists": True,
                "tags": self._bucket_tags(s3, bucket),
                "is_empty": self._is_empty(s3, bucket),
            }

    def bucket_bytes(self, bucket: str, *, pages: int = 10) -> tuple[int, bool] | None:
        """Bytes in the bucket's current objects (``ListObjectsV2``, at most ``pages`` pages of
        1000), and whether there were more; None when the bucket is gone."""
        s3 = self._s3()
        total, token = 0, None
        with _aws_call(f"reading the size of bucket {bucket}"):
            if not self._bucket_exists(s3, bucket):
                return None
            for _ in range(pages):
                kwargs: dict[str, Any] = {"Bucket": bucket}
                if token:
                    kwargs["ContinuationToken"] = token
                page = s3.list_objects_v2(**kwargs)
                total += sum(int(o.get("Size", 0)) for o in page.get("Contents", []))
                token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                if not token:
                    return total, False
        return total, True

    def tagged_buckets(self, tag: str) -> dict[str, str]:
        """Bucket -> its value of tag ``tag``, for every bucket of the account that carries it and
        the bot's mark (the drift report's orphans: a bucket tagged but not made by the bot is
        never one). One ``ListBuckets``, one ``GetBucketTagging`` per bucket."""
        s3 = self._s3()
        found: dict[str, str] = {}
        with _aws_call("listing S3 buckets"):
            for bucket in s3.list_buckets().get("Buckets", []):
                name = bucket.get("Name", "")
                try:
                    tags = self._bucket_tags(s3, name)
                except ClientError as e:
                    if _code(e) in ("NoSuchBucket", "AccessDenied"):
                        continue  # gone meanwhile, or another team's: not ours to judge
                    raise
                if tag in tags and MARK_TAG in tags:
                    found[name] = tags[tag]
        return found

    def bot_policy_buckets(self, policy_arn: str) -> list[str]:
        """The buckets the bot's own statement (``BOT_SID``) of ``policy_arn`` grants, in order."""
        with _aws_call(f"reading IAM policy {_policy_name(policy_arn)}"):
            document = self._default_document(self._iam(), policy_arn)
        statements = _as_list(document.get("Statement", []))
        ours = next((s for s in statements if isinstance(s, Mapping) and s.get("Sid") == BOT_SID), None)
        buckets = (bucket_of(arn) for arn in _bot_resources(ours))
        return list(dict.fromkeys(b for b in buckets if b))

    def tagged_nodegroups(self, cluster: str, tag: str) -> dict[str, str]:
        """Nodegroup -> its value of tag ``tag``, for every nodegroup of ``cluster`` carrying it and
        the bot's mark."""
        found: dict[str, str] = {}
        with _aws_call(f"listing the nodegroups of cluster {cluster}"):
            for page in self._eks().get_paginator("list_nodegroups").paginate(clusterName=cluster):
                for name in page.get("nodegroups", []):
                    nodegroup = self._describe(cluster, name)
                    tags = (nodegroup or {}).get("tags") or {}
                    if tag in tags and MARK_TAG in tags:
                        found[name] = tags[tag]
        return found

    # -- aws.bucket --

    def _ensure_bucket(self, params: BucketParams) -> StepOutcome:
        bucket, region, tags = params.bucket, params.region, params.tags
        request = _request_of(params)
        s3 = self._s3(region)
        with _aws_call(f"creating bucket {bucket}"):
            made_now = self._create_bucket(s3, bucket, region)
        owned = made_now
        if not made_now:
            with _aws_call(f"reading the tags of bucket {bucket}"):
                owned = _owns(request, self._bucket_tags(s3, bucket))
            if not owned:
                # Someone's bucket (a team's by hand, another workspace's, adopted or not): taking
                # it would tag it as this workspace's, grant its role and later offer it as an orphan.
                raise PermanentError(
                    f"An S3 bucket named {bucket} already exists and was not made by the bot for "
                    "this request; the bot does not take over a bucket it did not create. Pick "
                    "another workspace name, or ask an admin to adopt the existing workspace."
                )
        elif first_tags := {**tags, **_mark(params)}:
            # The mark goes on before anything else can fail: a bucket left unmarked by a failed or
            # killed attempt would look like someone else's to the retry, which then never removes it.
            try:
                with _aws_call(f"tagging bucket {bucket}"):
                    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tag_set(first_tags)})
            except KfError as failure:
                # Nothing records this attempt, so nobody else would remove the bucket: take it
                # back (it is empty, made a moment ago) and let the retry create it again.
                self._take_back_bucket(s3, bucket, failure)
                raise
        try:
            with _aws_call(f"securing bucket {bucket}"):
                self._block_public_access(s3, bucket)
                self._default_encryption(s3, bucket)
            with _aws_call(f"tagging bucket {bucket}"):
                current = self._bucket_tags(s3, bucket)
                wanted = {**current, **tags}
                if wanted != current:
                    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tag_set(wanted)})
        except PermanentError as failure:
            # The failed step is not compensated, so its own bucket goes now.
            self._take_back_bucket(s3, bucket, failure)
            raise
        return StepOutcome(created=True)

    def _take_back_bucket(self, s3: S3Client, bucket: str, failure: KfError) -> None:
        """Delete a bucket this step made when the step itself fails; raise what explains a leftover."""
        try:
            with _aws_call(f"deleting bucket {bucket}"):
                self._delete_bucket_if_empty(s3, bucket)
        except KfError as e:
            raise PermanentError(
                f"{failure.user_message} Deleting the bucket {bucket} the bot had just made failed "
                "too; delete it by hand."
            ) from e

    def _create_bucket(self, s3: S3Client, bucket: str, region: str) -> bool:
        existed = self._bucket_exists(s3, bucket)
        try:
            if region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                location = cast("BucketLocationConstraintType", region)
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": location})
        except ClientError as e:
            if _code(e) == "BucketAlreadyOwnedByYou":
                return False
            if _code(e) == "BucketAlreadyExists":
                raise PermanentError(
                    f"The S3 bucket name {bucket} is taken by another AWS account; "
                    "pick another name (bucket names are global)."
                ) from e
            raise
        return not existed

    @staticmethod
    def _bucket_exists(s3: S3Client, bucket: str) -> bool:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchBucket"):
                return False
            if _code(e) == "403":
                # S3 answers 403 both for another account's bucket and for a missing
                # s3:ListBucket permission, and does not say which.
                raise PermanentError(
                    f"AWS denied access to S3 bucket {bucket}: it belongs to another account, "
                    "or the bot's IAM role lacks s3:ListBucket."
                ) from e
            raise
        return True

    @staticmethod
    def _block_public_access(s3: S3Client, bucket: str) -> None:
        try:
            current = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        except ClientError as e:
            if _code(e) != "NoSuchPublicAccessBlockConfiguration":
                raise
            current = {}
        if current != _PUBLIC_ACCESS_BLOCK:
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=_PUBLIC_ACCESS_BLOCK)

    @staticmethod
    def _default_encryption(s3: S3Client, bucket: str) -> None:
        # Any existing default (SSE-KMS chosen by an admin included) is kept; only a bucket with
        # none gets SSE-S3. New buckets have had SSE-S3 by default since 2023, so this is rare.
        try:
            rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as e:
            if _code(e) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            rules = []
        if not any(rule.get("ApplyServerSideEncryptionByDefault") for rule in rules):
            s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )

    @staticmethod
    def _bucket_tags(s3: S3Client, bucket: str) -> dict[str, str]:
        try:
            tag_set = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
        except ClientError as e:
            if _code(e) != "NoSuchTagSet":
                raise
            return {}
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    @staticmethod
    def _is_empty(s3: S3Client, bucket: str) -> bool:
        # Versions and delete markers block DeleteBucket just like current objects do.
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=1)
        return not page.get("Versions") and not page.get("DeleteMarkers")

    def _undo_bucket(self, params: BucketParams, outcome: StepOutcome) -> None:
        if not outcome.created:
            return
        bucket = params.bucket
        s3 = self._s3(params.region)
        with _aws_call(f"deleting bucket {bucket}"):
            self._delete_bucket_if_empty(s3, bucket)

    def _delete_bucket_if_empty(self, s3: S3Client, bucket: str) -> None:
        """Delete; absent is done; a bucket holding data is kept (``PermanentError``)."""
        kept = PermanentError(f"S3 bucket {bucket} was kept: it already holds data.")
        try:
            if not self._is_empty(s3, bucket):
                raise kept
            s3.delete_bucket(Bucket=bucket)
        except ClientError as e:
            if _code(e) == "NoSuchBucket":
                return
            if _code(e) == "BucketNotEmpty":
                raise kept from e
            raise

    # -- aws.bucket.remove --

    def _remove_bucket(self, params: BucketRemoveParams) -> StepOutcome:
        bucket, purge = params.bucket, params.purge_data
        s3 = self._s3()
        with _aws_call(f"deleting bucket {bucket}"):
            try:
                tags = self._bucket_tags(s3, bucket)
                check_removable(f"S3 bucket {bucket}", marked=MARK_TAG in tags, adopted=params.adopted)
                # Handed to another team since the plan (or the adoption): theirs now, kept, by
                # the plan's own rule (a key naming a namespace, or another Profile's name).
                other = params.adopted and names_other_namespace(
                    params.namespace, tags, self._profiles(), "tag"
                )
                if other:
                    return StepOutcome(
                        created=False,
                        details={"deleted": False, "bucket": bucket,
                                 "reason": f"S3 bucket {bucket} was kept: {other}."},
                        kept=(f"S3 bucket `{bucket}`",),
                    )
                if purge:
                    self._purge(s3, bucket)
                elif not self._is_empty(s3, bucket):
                    # Data arrived after the plan was made: keep it, and let the delete finish
                    # (failing here would stop halfway, after the nodegroup and IAM grants).
                    return _kept_bucket(bucket)
                s3.delete_bucket(Bucket=bucket)
            except ClientError as e:
                if _code(e) == "NoSuchBucket":
                    return StepOutcome(created=False, details={"deleted": False})
                if _code(e) == "BucketNotEmpty" and not purge:
                    return _kept_bucket(bucket)  # an object landed between the check and the delete
                if _code(e) == "BucketNotEmpty":
                    raise TemporaryError(
                        f"S3 bucket {bucket} received new objects while being emptied; will retry."
                    ) from e
                raise
        return StepOutcome(created=False, details={"deleted": True, "purged": purge})

    @staticmethod
    def _purge(s3: S3Client, bucket: str) -> None:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            doomed: list[ObjectIdentifierTypeDef] = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            ]
            if not doomed:
                continue
            failed = s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True}).get(
                "Errors", []
            )
            if failed:
                raise TemporaryError(
                    f"{len(failed)} object(s) in S3 bucket {bucket} could not be deleted; will retry."
                )

    # -- aws.iam_resources --

    def _ensure_iam_resources(self, params: IamResourcesParams) -> StepOutcome:
        resources = params.resources
        added, _ = self._edit_policy(params.policy_arn, add=resources, remove=[])
        if not added:
            # All there already: a retry of this request after its write went through (a worker
            # killed before recording, a lost answer) must still own what it added.
            added = self._claimable(resources, _request_of(params))
        return StepOutcome(created=bool(added), details={"added": added})

    def _claimable(self, resources: Sequence[str], request: str | None) -> list[str]:
        """The bucket ARNs among ``resources`` whose bucket carries ``request``'s mark.

        A policy version has no room for a mark, but these ARNs name one bucket: if this request
        created the bucket, the name was free when the request began, so the grant is this
        request's own. (Not exact only for a stale grant to a bucket that did not exist then;
        taking it back with the bucket loses nothing.)"""
        if request is None:
            return []
        owned: dict[str, bool] = {}
        s3 = self._s3()
        for bucket in dict.fromkeys(b for b in map(bucket_of, resources) if b):
            with _aws_call(f"checking who made bucket {bucket}"):
                try:
                    owned[bucket] = _owns(request, self._bucket_tags(s3, bucket))
                except ClientError as e:
                    if _code(e) != "NoSuchBucket":
                        raise
                    owned[bucket] = False
        return [arn for arn in resources if owned.get(bucket_of(arn) or "", False)]

    def _undo_iam_resources(self, params: IamResourcesParams, outcome: StepOutcome) -> None:
        added = as_list(outcome.details.get("added") or [])
        if added:
            self._edit_policy(params.policy_arn, add=[], remove=[str(arn) for arn in added])

    def _remove_iam_resources(self, params: IamResourcesRemoveParams) -> StepOutcome:
        if params.statements:
            return self._remove_adopted_resources(params)
        _, removed = self._edit_policy(params.policy_arn, add=[], remove=params.resources)
        return StepOutcome(created=False, details={"removed": removed})

    def _remove_adopted_resources(self, params: IamResourcesRemoveParams) -> StepOutcome:
        """An adopted grant, as the runbook wrote it: ``resources`` leave the ``Allow`` statements
        the adoption recorded (by ``Sid`` while still of the recorded ``statement_forms``, or a
        Sid-less one by its whole text, ``statement_shapes``) and the bot's own; a statement left
        without a resource goes, in one new default version (room made as ``_edit_policy`` does,
        under the same lock). Any other statement listing them stays (someone wrote it since, or
        changed it, for their own reasons: the plan named only the recorded ones), and so do
        ``Deny`` statements and ``NotResource``: taking a bucket out of them widens access. Read
        under the lock, so a statement added after the plan stays."""
        policy_arn = params.policy_arn
        name = _policy_name(policy_arn)
        iam = self._iam()
        doomed = set(params.resources)
        with self._policy_lock.hold(policy_arn), _aws_call(f"updating IAM policy {name}"):
            document = self._default_document(iam, policy_arn)
            statements = _as_list(document.get("Statement", []))
            rewritten: list[Any] = []
            removed: list[str] = []
            kept: list[str] = []
            for index, statement in enumerate(statements, start=1):
                listed = _as_list(statement.get("Resource", [])) if isinstance(statement, Mapping) else []
                if (
                    not isinstance(statement, Mapping)
                    or statement.get("Effect") != "Allow"
                    or "Resource" not in statement
                    or not doomed.intersection(map(str, listed))
                ):
                    rewritten.append(statement)
                    continue
                if not _recorded(statement, params.statements, params.statement_shapes,
                                 params.statement_forms):
                    kept.append(str(statement.get("Sid") or f"#{index}"))
                    rewritten.append(statement)
                    continue
                left = [r for r in listed if str(r) not in doomed]
                removed += [str(r) for r in listed if str(r) in doomed]
                if left:
                    rewritten.append({**statement, "Resource": left})
            if not removed:
                return StepOutcome(created=False, details={"removed": [], "kept_statements": kept})
            if not rewritten:  # IAM refuses a document without statements
                rewritten = [{"Sid": BOT_SID, "Effect": "Allow", "Action": _GRANTS_NOTHING, "Resource": "*"}]
            text = json.dumps({**document, "Statement": rewritten}, separators=(",", ":"))
            self._publish_version(iam, policy_arn, text)
        return StepOutcome(
            created=False, details={"removed": list(dict.fromkeys(removed)), "kept_statements": kept}
        )

    def _publish_version(self, iam: IAMClient, policy_arn: str, text: str) -> None:
        """``text`` as the policy's new default version, room made under IAM's five-version limit;
        a limit hit anyway means another writer got in between: the step retries."""
        self._make_room_for_version(iam, policy_arn)
        try:
            iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=text, SetAsDefault=True)
        except ClientError as e:
            if _code(e) == "LimitExceeded":
                name = _policy_name(policy_arn)
                raise TemporaryError(
                    f"IAM policy {name} was changed by someone else meanwhile; will retry."
                ) from e
            raise

    def _edit_policy(
        self, policy_arn: str, add: Sequence[str], remove: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Add and remove ARNs in the bot's statement by a new default version; returns what changed."""
        name = _policy_name(policy_arn)
        iam = self._iam()
        with self._policy_lock.hold(policy_arn), _aws_call(f"updating IAM policy {name}"):
            document = self._default_document(iam, policy_arn)
            ours = next(
                (
                    s
                    for s in _as_list(document.get("Statement", []))
                    if isinstance(s, Mapping) and s.get("Sid") == BOT_SID
                ),
                None,
            )
            current = _bot_resources(ours)
            added = [arn for arn in add if arn not in current]
            removed = [arn for arn in dict.fromkeys(remove) if arn in current]
            if not added and not removed:
                return [], []
            text = json.dumps(
                _rewrite_statements(document, [a for a in current if a not in removed] + added),
                separators=(",", ":"),
            )
            if _chars_without_whitespace(text) > self._settings.max_policy_chars:
                raise PermanentError(
                    f"IAM policy {name} would exceed the managed-policy size limit of "
                    f"{self._settings.max_policy_chars} characters; grant the bucket through another policy."
                )
            self._publish_version(iam, policy_arn, text)
        return added, removed

    @staticmethod
    def _default_document(iam: IAMClient, policy_arn: str) -> dict[str, Any]:
        version_id = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version_id)["PolicyVersion"][
            "Document"
        ]
        # botocore decodes IAM's URL-encoded JSON into a dict; the raw string is the fallback it
        # leaves when decoding fails.
        if isinstance(document, str):
            return cast(dict[str, Any], json.loads(unquote(document)))
        return dict(document)

    @staticmethod
    def _make_room_for_version(iam: IAMClient, policy_arn: str) -> None:
        versions = [
            v
            for page in iam.get_paginator("list_policy_versions").paginate(PolicyArn=policy_arn)
            for v in page["Versions"]
        ]
        excess = len(versions) - (_MAX_POLICY_VERSIONS - 1)
        if excess <= 0:
            return
        oldest_first = sorted(
            (v for v in versions if not v.get("IsDefaultVersion")), key=lambda v: v["CreateDate"]
        )
        for version in oldest_first[:excess]:
            try:
                iam.delete_policy_version(PolicyArn=policy_arn, VersionId=version["VersionId"])
            except ClientError as e:
                if _code(e) != "NoSuchEntity":
                    raise

    # -- aws.nodegroup --

    def _ensure_nodegroup(self, params: NodegroupParams) -> StepOutcome:
        cluster, name = params.cluster, params.name
        with _aws_call(f"creating nodegroup {name} in cluster {cluster}"):
            existing = self._describe(cluster, name)
            if existing is None and self._create_nodegroup(params):
                created = True
            else:
                # Found (or created meanwhile): ours only if it carries this request's mark, which
                # EKS takes only at creation (an earlier attempt of this step, say before a crash).
                existing = existing or self._describe(cluster, name)
                created = existing is not None and _owns(_request_of(params), existing.get("tags"))
        try:
            nodegroup = self._wait_ready(cluster, name)
        except PermanentError as failure:
            if not created:
                raise
            # The step did not complete, so the engine will not compensate it, yet a failed or
            # degraded group may still run GPU instances: remove it, keep EKS's diagnosis.
            try:
                self._delete_nodegroup(cluster, name, wait=False)
            except KfError:
                raise PermanentError(
                    f"{failure.user_message} Deleting it failed too; delete it by hand."
                ) from failure
            raise PermanentError(f"{failure.user_message} The bot deleted it.") from failure
        return StepOutcome(created=created, details={"arn": nodegroup.get("nodegroupArn", "")})

    def _create_nodegroup(self, params: NodegroupParams) -> bool:
        cluster, name = params.cluster, params.name
        request: dict[str, Any] = {
            "clusterName": cluster,
            "nodegroupName": name,
            "subnets": list(params.subnets),
            "nodeRole": params.node_role,
            "scalingConfig": params.scaling.to_json(),
            "instanceTypes": list(params.instance_types),
            "amiType": params.ami_type,
            # The same step retried after a crash sends the same token, so EKS answers with the
            # nodegroup the first attempt started instead of a second one or a conflict.
            "clientRequestToken": str(
                uuid.uuid5(
                    _TOKEN_NAMESPACE,
                    canonical_json({"cluster": cluster, "name": name, "params": _token_params(params)}),
                )
            ),
        }
        if params.launch_template:
            # EKS refuses diskSize beside a launch template: the template's block device mapping
            # carries the size then (the plan never sets both).
            request["launchTemplate"] = {
                "name": params.launch_template,
                "version": self._launch_template_version(params.launch_template),
            }
        elif params.disk_size is not None:
            request["diskSize"] = params.disk_size
        # The mark rides on the create call: EKS nodegroup tags set later would not be atomic with it.
        # EKS's model refuses empty tag maps; leave absent what the plan leaves empty.
        optional: dict[str, Any] = {
            "labels": dict(params.labels),
            "tags": {**params.tags, **_mark(params)},
            "taints": [t.to_json() for t in params.taints],
            "capacityType": params.capacity_type,
        }
        request.update({k: v for k, v in optional.items() if v})
        return _created(lambda: self._eks().create_nodegroup(**request), "ResourceInUseException")

    def _launch_template_version(self, name: str) -> str:
        with _aws_call(f"reading launch template {name}"):
            template = self._find_launch_template(name)
        if template is None:
            raise PermanentError(f"EC2 launch template {name} does not exist; its step comes first.")
        return str(template.get("DefaultVersionNumber", 1))

    def _describe(self, cluster: str, name: str) -> NodegroupTypeDef | None:
        try:
            return self._eks().describe_nodegroup(clusterName=cluster, nodegroupName=name)["nodegroup"]
        except ClientError as e:
            if _code(e) == "ResourceNotFoundException":
                return None
            raise

    def _wait_ready(self, cluster: str, name: str) -> NodegroupTypeDef:
        nodegroup = self._wait(cluster, name, gone=False)
        if nodegroup is None:
            raise TemporaryError(f"EKS nodegroup {name} disappeared while starting; will retry.")
        return nodegroup

    def _wait(self, cluster: str, name: str, *, gone: bool) -> NodegroupTypeDef | None:
        """Poll until the nodegroup is ready, or with ``gone`` until EKS no longer knows it."""
        timeout = self._settings.nodegroup_active_timeout
        deadline = self._clock.now() + timedelta(seconds=timeout)
        while True:
            with _aws_call(f"waiting for nodegroup {name} in cluster {cluster}"):
                nodegroup = self._describe(cluster, name)
            if nodegroup is None:
                return None
            status = nodegroup.get("status", "UNKNOWN")
            # A group being deleted may still show how it failed before; only DELETE_FAILED counts then.
            if status == "DELETE_FAILED" or (not gone and status in _NODEGROUP_FAILED):
                raise PermanentError(_health_message(name, status, nodegroup))
            if not gone and status in _NODEGROUP_READY:
                return nodegroup
            if not gone and status == "DELETING":
                raise TemporaryError(
                    f"EKS nodegroup {name} is being deleted; will create it again afterwards."
                )
            if self._clock.now() >= deadline:
                goal = "gone" if gone else "ACTIVE"
                raise TemporaryError(
                    f"EKS nodegroup {name} is still {status}, not {goal}, after {timeout:.0f} s; "
                    "will keep checking."
                )
            self._clock.sleep(self._settings.poll_interval)

    def _delete_nodegroup(self, cluster: str, name: str, *, wait: bool = True) -> bool:
        """Delete and (by default) wait until EKS no longer knows it; False if it was already gone."""
        with _aws_call(f"deleting nodegroup {name} in cluster {cluster}"):
            try:
                self._eks().delete_nodegroup(clusterName=cluster, nodegroupName=name)
            except ClientError as e:
                if _code(e) == "ResourceNotFoundException":
                    return False
                if _code(e) != "ResourceInUseException":
                    raise
                nodegroup = self._describe(cluster, name)
                if nodegroup is None:
                    return False
                if nodegroup.get("status") != "DELETING":
                    raise TemporaryError(
                        f"EKS nodegroup {name} is busy ({nodegroup.get('status')}); will retry the deletion."
                    ) from e
        if wait:
            self._wait(cluster, name, gone=True)
        return True

    def _undo_nodegroup(self, params: NodegroupParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self._delete_nodegroup(params.cluster, params.name)

    # -- aws.nodegroup.taints --

    def _ensure_nodegroup_taints(self, params: NodegroupTaintsParams) -> StepOutcome:
        """Add the taints a nodegroup lacks, and complete once DescribeNodegroup shows them all.

        UpdateNodegroupConfig only starts an update (minutes, while the nodegroup is UPDATING),
        so instead of polling here the step defers (``TemporaryError``) and checks again later; a
        retry, or a crash and resume, reads first and never starts a second update meanwhile.
        Cluster Autoscaler reads the taints from DescribeNodegroup for scale-from-zero, so no
        Auto Scaling group tags are needed."""
        cluster, name, wanted = params.cluster, params.name, params.taints
        what = f"tainting nodegroup {name} in cluster {cluster}"
        with _aws_call(what):
            nodegroup = self._describe(cluster, name)
        if nodegroup is None:
            raise PermanentError(f"EKS nodegroup {name} does not exist in cluster {cluster}.")
        if MARK_TAG not in nodegroup.get("tags", {}):
            raise PermanentError(
                f"EKS nodegroup {name} was not made by kf-chatops; its taints were left alone."
            )
        missing = [t for t in wanted if not _has_taint(nodegroup, t)]
        if not missing:
            # The nodegroup existed before the step; nothing here is for compensation to remove.
            return StepOutcome(created=False, details={"taints": [t.to_json() for t in wanted]})
        status = nodegroup.get("status", "UNKNOWN")
        if status != "ACTIVE":  # our own update still running, or someone else's: wait for it
            raise TemporaryError(
                f"EKS nodegroup {name} is {status}; the taints are added once it is ACTIVE.",
                delay=self._settings.poll_interval,
            )
        with _aws_call(what):
            with _nodegroup_update(name, self._settings.poll_interval):
                self._eks().update_nodegroup_config(
                    clusterName=cluster,
                    nodegroupName=name,
                    taints={"addOrUpdateTaints": cast(Any, [t.to_json() for t in missing])},
                )
            nodegroup = self._describe(cluster, name)
        if nodegroup is not None and all(_has_taint(nodegroup, t) for t in wanted):
            return StepOutcome(created=False, details={"taints": [t.to_json() for t in wanted]})
        raise TemporaryError(
            f"EKS is adding the taints to nodegroup {name}; will check again.",
            delay=self._settings.poll_interval,
        )

    # -- aws.nodegroup.scaling --

    def _bot_nodegroup(
        self, cluster: str, name: str, what: str, *, adopted: bool = False
    ) -> NodegroupTypeDef:
        with _aws_call(what):
            nodegroup = self._describe(cluster, name)
        if nodegroup is None:
            raise PermanentError(f"EKS nodegroup {name} does not exist in cluster {cluster}.")
        # An adopted nodegroup carries no mark (adoption writes nothing); the registry's adopted
        # entry, through an approved plan, is what lets its scaling be changed.
        if not adopted and MARK_TAG not in nodegroup.get("tags", {}):
            raise PermanentError(
                f"EKS nodegroup {name} was not made by kf-chatops; its scaling was left alone."
            )
        return nodegroup

    def _set_scaling(self, cluster: str, name: str, scaling: Mapping[str, int], what: str) -> None:
        with _aws_call(what), _nodegroup_update(name, self._settings.poll_interval):
            self._eks().update_nodegroup_config(
                clusterName=cluster,
                nodegroupName=name,
                scalingConfig={
                    "minSize": scaling["minSize"],
                    "maxSize": scaling["maxSize"],
                    "desiredSize": scaling["desiredSize"],
                },
            )

    def _ensure_nodegroup_scaling(self, params: NodegroupScalingParams) -> StepOutcome:
        """Set the scaling the step asks for; a size it leaves out (None) stays as EKS has it, the
        desired size clamped into the new bounds. ``created`` means "changed", so compensation
        puts back the scaling from before (``details["previous"]``), as a quota change does."""
        cluster, name = params.cluster, params.name
        what = f"scaling nodegroup {name} in cluster {cluster}"
        nodegroup = self._bot_nodegroup(cluster, name, what, adopted=params.adopted)
        config = nodegroup.get("scalingConfig", {})
        current = {
            "minSize": config.get("minSize", 0),
            "maxSize": config.get("maxSize", 1),
            "desiredSize": config.get("desiredSize", 0),
        }
        low = current["minSize"] if params.min_size is None else params.min_size
        high = current["maxSize"] if params.max_size is None else params.max_size
        low = min(low, high)
        desired = params.desired_size
        if desired is None:
            desired = min(max(current["desiredSize"], low), high)
        wanted = {"minSize": low, "maxSize": high, "desiredSize": desired}
        if not 0 <= low <= desired <= high or high < 1:
            raise PermanentError(
                f"Nodegroup {name}: need 0 <= minSize <= desiredSize <= maxSize and maxSize >= 1, got "
                f"{low}, {desired}, {high}."
            )
        details: dict[str, JSON] = {"previous": dict(current), "scaling": dict(wanted)}
        if current == wanted:
            return StepOutcome(created=False, details=details)
        self._set_scaling(cluster, name, wanted, what)
        return StepOutcome(created=True, details=details)

    def _undo_nodegroup_scaling(self, params: NodegroupScalingParams, outcome: StepOutcome) -> None:
        if not outcome.created:
            return
        previous = as_object(outcome.details.get("previous"))
        applied = as_object(outcome.details.get("scaling"))
        cluster, name = params.cluster, params.name
        what = f"restoring the scaling of nodegroup {name} in cluster {cluster}"
        with _aws_call(what):
            nodegroup = self._describe(cluster, name)
        if nodegroup is None:
            return
        config = dict(nodegroup.get("scalingConfig", {}))
        bounds = ("minSize", "maxSize")  # Cluster Autoscaler moves desiredSize: not someone's change
        if {k: config.get(k) for k in bounds} != {k: applied.get(k) for k in bounds}:
            raise PermanentError(
                    f"The scaling of nodegroup {name} was changed by someone else since the bot set it; "
                    "it was not reverted."
                )
        restore = {k: int(str(previous[k])) for k in ("minSize", "maxSize", "desiredSize")}
        self._set_scaling(cluster, name, restore, what)

    # -- aws.nodegroup.remove --

    def _remove_nodegroup(self, params: NodegroupRemoveParams) -> StepOutcome:
        with _aws_call(f"reading nodegroup {params.name} in cluster {params.cluster}"):
            nodegroup = self._describe(params.cluster, params.name)
        if nodegroup is None:
            return StepOutcome(created=False, details={"deleted": False})
        check_removable(
            f"EKS nodegroup {params.name}",
            marked=MARK_TAG in (nodegroup.get("tags") or {}),
            adopted=params.adopted,
        )
        if params.adopted:
            # Handed to another team since the plan: theirs now, kept, by the plan's own rule.
            profiles = self._profiles()
            other = names_other_namespace(
                params.namespace, nodegroup.get("tags") or {}, profiles, "tag"
            ) or names_other_namespace(params.namespace, nodegroup.get("labels") or {}, profiles, "label")
            if other:
                return StepOutcome(
                    created=False,
                    details={"deleted": False, "reason": f"EKS nodegroup {params.name} was kept: {other}."},
                    kept=(f"EKS nodegroup `{params.name}`",),
                )
        deleted = self._delete_nodegroup(params.cluster, params.name)
        return StepOutcome(created=False, details={"deleted": deleted})

    # -- aws.launch_template --

    def _find_launch_template(self, name: str) -> dict[str, Any] | None:
        try:
            found = self._ec2().describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
        except ClientError as e:
            if _code(e) in _LAUNCH_TEMPLATE_ABSENT:
                return None
            raise
        return dict(found[0]) if found else None

    def _ensure_launch_template(self, params: LaunchTemplateParams) -> StepOutcome:
        """One launch template per nodegroup, marked at creation (``TagSpecifications`` of type
        ``launch-template`` ride on CreateLaunchTemplate itself). A template of that name without
        this request's mark is someone else's: refused, since the nodegroup would start from
        whatever it holds."""
        name = params.name
        request = _request_of(params)
        what = f"creating launch template {name}"
        with _aws_call(what):
            existing = self._find_launch_template(name)
            created = False
            if existing is None:
                created = self._create_launch_template(params)
                existing = self._find_launch_template(name)
        if existing is None:
            raise TemporaryError(f"EC2 launch template {name} is not visible yet; will retry.")
        tags = {t["Key"]: t["Value"] for t in existing.get("Tags", [])}
        if not created and not _owns(request, tags):
            raise PermanentError(
                f"An EC2 launch template named {name} already exists and was not made by this request; "
                "the bot does not start a nodegroup from a template it did not write. Delete or rename it."
            )
        return StepOutcome(
            created=True,
            details={"id": str(existing.get("LaunchTemplateId", "")), "name": name},
        )

    def _create_launch_template(self, params: LaunchTemplateParams) -> bool:
        data: dict[str, Any] = {}
        if params.disk_size is not None or params.disk_type:
            ebs: dict[str, Any] = {"DeleteOnTermination": True, "Encrypted": True}
            if params.disk_size is not None:
                ebs["VolumeSize"] = params.disk_size
            if params.disk_type:
                ebs["VolumeType"] = params.disk_type
            # The EKS-optimised AL2023 AMIs' root device (the bot's nodegroups use them).
            data["BlockDeviceMappings"] = [{"DeviceName": ROOT_DEVICE, "Ebs": ebs}]
        metadata: dict[str, Any] = {}
        if params.imds_tokens:
            metadata["HttpTokens"] = params.imds_tokens
            metadata["HttpEndpoint"] = "enabled"
        if params.imds_hop_limit is not None:
            metadata["HttpPutResponseHopLimit"] = params.imds_hop_limit
        if metadata:
            data["MetadataOptions"] = metadata
        if params.instance_tags:
            data["TagSpecifications"] = [
                {"ResourceType": kind, "Tags": _tag_set(params.instance_tags)}
                for kind in ("instance", "volume")
            ]
        mark = {**params.instance_tags, **_mark(params)}
        request: dict[str, Any] = {"LaunchTemplateName": params.name, "LaunchTemplateData": data}
        if mark:
            request["TagSpecifications"] = [{"ResourceType": "launch-template", "Tags": _tag_set(mark)}]
        return _created(
            lambda: self._ec2().create_launch_template(**request),
            "InvalidLaunchTemplateName.AlreadyExistsException",
        )

    def _delete_launch_template(self, name: str) -> bool:
        with _aws_call(f"deleting launch template {name}"):
            # Looked up first: EC2 answers a missing name with NotFound, moto with MissingParameter.
            template = self._find_launch_template(name)
            if template is None:
                return False
            try:
                self._ec2().delete_launch_template(LaunchTemplateId=str(template["LaunchTemplateId"]))
            except ClientError as e:
                if _code(e) in _LAUNCH_TEMPLATE_ABSENT:
                    return False
                raise
        return True

    def _undo_launch_template(self, params: LaunchTemplateParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self._delete_launch_template(params.name)

    def _remove_launch_template(self, params: LaunchTemplateRemoveParams) -> StepOutcome:
        # A template of that name may be someone's by hand (the record is stale, or never was ours).
        with _aws_call(f"deleting launch template {params.name}"):
            template = self._find_launch_template(params.name)
        if template is None:
            return StepOutcome(created=False, details={"deleted": False})
        tags = {t["Key"]: t["Value"] for t in template.get("Tags", [])}
        check_removable(f"EC2 launch template {params.name}", marked=MARK_TAG in tags, adopted=params.adopted)
        return StepOutcome(created=False, details={"deleted": self._delete_launch_template(params.name)})

    # -- aws.workspace_role --

    def _get_role(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._iam().get_role(RoleName=name)["Role"])
        except ClientError as e:
            if _code(e) == "NoSuchEntity":
                return None
            raise

    def _role_tags(self, name: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self._iam().list_role_tags(RoleName=name)["Tags"]}

    def _ensure_workspace_role(self, params: WorkspaceRoleParams) -> StepOutcome:
        """The workspace's role: created with its trust policy and the mark in one CreateRole, then
        its one inline policy (PutRolePolicy replaces, so a retry converges). A role of that name
        without this request's mark is refused: its trust policy may let others in."""
        name = params.name
        request = _request_of(params)
        trust = workspace_iam.trust_policy(params.oidc_provider_arn, params.namespace, params.service_account)
        what = f"creating IAM role {name}"
        with _aws_call(what):
            role = self._get_role(name)
            if role is None:
                tags = {**params.tags, **_mark(params)}
                _created(  # an existing role is checked for the mark below, whoever made it
                    lambda: self._iam().create_role(
                        RoleName=name,
                        AssumeRolePolicyDocument=json.dumps(trust),
                        Description=f"kf-chatops: workspace {params.namespace} ({params.bucket} only)",
                        Tags=cast(Any, _tag_set(tags)),
                    ),
                    "EntityAlreadyExists",
                )
                role = self._get_role(name)
            if role is None:
                raise TemporaryError(f"IAM role {name} is not visible yet; will retry.")
            tags = self._role_tags(name)
            if not _owns(request, tags):
                raise PermanentError(
                    f"An IAM role named {name} already exists and was not made by this request; the bot "
                    "does not take over a role whose trust policy it did not write. Delete or rename it."
                )
            if _decoded(role.get("AssumeRolePolicyDocument")) != trust:
                self._iam().update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
            self._iam().put_role_policy(
                RoleName=name,
                PolicyName=workspace_iam.INLINE_POLICY,
                PolicyDocument=json.dumps(workspace_iam.bucket_policy(params.bucket)),
            )
        return StepOutcome(created=True, details={"arn": str(role.get("Arn", ""))})

    def _delete_role(self, name: str) -> bool:
        """Inline policies and attached ones first (IAM refuses to delete a role that has any)."""
        iam = self._iam()
        with _aws_call(f"deleting IAM role {name}"):
            try:
                for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
                    for policy in page["PolicyNames"]:
                        iam.delete_role_policy(RoleName=name, PolicyName=policy)
                for attached_page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name):
                    for attached in attached_page["AttachedPolicies"]:
                        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
                iam.delete_role(RoleName=name)
            except ClientError as e:
                if _code(e) == "NoSuchEntity":
                    return False
                raise
        return True

    def _undo_workspace_role(self, params: WorkspaceRoleParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self._delete_role(params.name)

    def _remove_workspace_role(self, params: WorkspaceRoleRemoveParams) -> StepOutcome:
        """The mark, or ``adopted: true`` and the role still serving only this workspace, re-read
        now: a role that has since gained a principal, a managed policy or another bucket stays."""
        name = params.name
        with _aws_call(f"deleting IAM role {name}"):
            role = self._get_role(name)
            if role is None:
                return StepOutcome(created=False, details={"deleted": False})
            tags = self._role_tags(name)
            if MARK_TAG not in tags and params.adopted:
                problem = self._shared_role_problem(role, params.namespace, params.bucket)
                if problem:
                    raise PermanentError(
                        f"IAM role {name} is not deleted: {problem}, so something besides this "
                        "workspace may use it. Delete it by hand if nothing does."
                    )
        check_removable(f"IAM role {name}", marked=MARK_TAG in tags, adopted=params.adopted)
        return StepOutcome(created=False, details={"deleted": self._delete_role(name)})

    def _role_grants(self, name: str) -> tuple[list[str], list[str]]:
        """The S3 resources a role's inline policies grant (``*``, ``NotResource`` and non-S3
        wildcards count as ``arn:aws:s3:::*``: every bucket) and its attached managed policies."""
        iam = self._iam()
        resources: list[str] = []
        for policy_page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy in policy_page["PolicyNames"]:
                answer = iam.get_role_policy(RoleName=name, PolicyName=policy)
                document = _decoded(answer["PolicyDocument"])
                for statement in _as_list(document.get("Statement", [])):
                    if not isinstance(statement, Mapping):
                        continue
                    if "NotResource" in statement:
                        resources.append(_EVERY_BUCKET)
                    for r in _as_list(statement.get("Resource", [])):
                        if bucket_of(str(r)):
                            resources.append(str(r))
                        elif "*" in str(r) or "?" in str(r):
                            resources.append(_EVERY_BUCKET)
        attached = [
            str(a["PolicyArn"])
            for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
            for a in page["AttachedPolicies"]
        ]
        return resources, attached

    def _shared_role_problem(self, role: Mapping[str, Any], namespace: str, bucket: str) -> str:
        """Why an adopted role may serve more than workspace ``namespace`` (empty when it serves only
        it): its trust policy must let in only this namespace's default-editor through one OIDC
        provider, no managed policy may be attached, and its inline policies grant only ``bucket``."""
        name = str(role["RoleName"])
        if not namespace or not _trusts_only(_decoded(role.get("AssumeRolePolicyDocument")),
                                            workspace_iam.subject(namespace)):
            return f"its trust policy lets in more than {workspace_iam.subject(namespace)}"
        resources, attached = self._role_grants(name)
        if attached:
            return f"managed policies are attached to it ({', '.join(attached)})"
        others = sorted({b for r in resources if (b := bucket_of(r)) and b != bucket})
        if others:
            return f"it grants bucket(s) other than {bucket or 'none'} ({', '.join(others)})"
        return ""

    def find_workspace_role(self, namespace: str, role: str | None = None) -> dict[str, Any] | None:
        """The IAM role a workspace's pods use, for adoption: ``role`` (a name or ARN, such as the
        Profile's ``AwsIamForServiceAccount`` plugin names), else the bot's name for it, else any
        role whose trust policy names ``system:serviceaccount:NAMESPACE:default-editor`` (tags are
        not searched: ListRoles returns trust policies but no tags). None when there is none.

        Returns ``{"name", "arn", "tags", "trusts_namespace", "bucket_resources", "attached_policies"}``:
        ``trusts_namespace`` only when that default-editor is all its trust policy lets in
        (``_trusts_only``); ``bucket_resources`` the S3 ARNs its inline policies grant, ``*`` as
        ``arn:aws:s3:::*``; ``attached_policies`` its managed policies' ARNs."""
        subject = workspace_iam.subject(namespace)
        candidates = [role.rsplit("/", 1)[-1]] if role else []
        candidates.append(workspace_iam.role_name(namespace))
        with _aws_call(f"looking for the IAM role of workspace {namespace}"):
            found = next((r for name in candidates if (r := self._get_role(name)) is not None), None)
            if found is None:
                for page in self._iam().get_paginator("list_roles").paginate():
                    for listed in page["Roles"]:
                        if _trusts(_decoded(listed.get("AssumeRolePolicyDocument")), subject):
                            found = dict(listed)
                            break
                    if found is not None:
                        break
            if found is None:
                return None
            name = str(found["RoleName"])
            tags = self._role_tags(name)
            resources, attached = self._role_grants(name)
        return {
            "name": name,
            "arn": str(found.get("Arn", "")),
            "tags": tags,
            "trusts_namespace": _trusts_only(_decoded(found.get("AssumeRolePolicyDocument")), subject),
            "bucket_resources": resources,
            "attached_policies": attached,
        }


ROOT_DEVICE: Final = "/dev/xvda"
_LAUNCH_TEMPLATE_ABSENT: Final = frozenset(
    {"InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"}
)
_NEW_NODEGROUP_FIELDS: Final = ("disk_size", "launch_template")


def _token_params(params: NodegroupParams) -> dict[str, Any]:
    """The params behind the idempotency token, without the fields added for the runbook when
    they are unset: a step stored before they existed keeps the token it was first sent with."""
    fields = dataclasses.asdict(params)
    for key in _NEW_NODEGROUP_FIELDS:
        if fields.get(key) in (None, ""):
            fields.pop(key, None)
    return fields


def _decoded(document: Any) -> dict[str, Any]:
    """A policy document as IAM returns it: a dict (boto3 decodes it) or URL-encoded JSON."""
    if isinstance(document, str):
        try:
            return cast(dict[str, Any], json.loads(unquote(document)))
        except ValueError:
            return {}
    return dict(document) if isinstance(document, Mapping) else {}


_EVERY_BUCKET: Final = "arn:aws:s3:::*"


def _trusts_only(document: Mapping[str, Any], subject: str) -> bool:
    """Whether a trust policy lets in ``subject`` and nothing else: one ``Allow`` statement, one
    federated principal (an OIDC provider), only ``sts:AssumeRoleWithWebIdentity``, exactly one
    ``:sub`` condition equal to ``subject`` (and at most an ``:aud`` one). Anything broader (more
    subjects, wildcards, other principals, ``Not*`` elements) may be someone else's way in."""
    statements = _as_list(document.get("Statement", []))
    if len(statements) != 1 or not isinstance(statements[0], Mapping):
        return False
    statement = statements[0]
    if set(statement) - {"Sid", "Effect", "Principal", "Action", "Condition"}:
        return False
    if statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    if not isinstance(principal, Mapping) or set(principal) != {"Federated"}:
        return False
    federated = _as_list(principal["Federated"])
    if len(federated) != 1 or ":oidc-provider/" not in str(federated[0]):
        return False
    if _as_list(statement.get("Action")) != ["sts:AssumeRoleWithWebIdentity"]:
        return False
    conditions = statement.get("Condition")
    if not isinstance(conditions, Mapping) or set(conditions) != {"StringEquals"}:
        return False
    condition = conditions["StringEquals"]
    if not isinstance(condition, Mapping):
        return False
    subs = [k for k in condition if str(k).endswith(":sub")]
    auds = [k for k in condition if str(k).endswith(":aud")]
    if len(subs) != 1 or len(subs) + len(auds) != len(condition):
        return False
    return _as_list(condition[subs[0]]) == [subject]


def _trusts(document: Mapping[str, Any], subject: str) -> bool:
    """Whether a trust policy lets ``subject`` assume the role through web identity."""
    for statement in _as_list(document.get("Statement", [])):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        for operator in ("StringEquals", "StringLike"):
            condition = (statement.get("Condition") or {}).get(operator) or {}
            for key, value in condition.items():
                if str(key).endswith(":sub") and subject in _as_list(value):
                    return True
    return False
