# ruff: noqa: PLC0415  (the cloud adapters are imported lazily, as in backend._build_live)
"""``kfbot doctor``: can the bot do its job here? The provisioning half of the checks.

Each check returns ``CheckResult`` rows (OK, FIX with what to do, or SKIP); the Slack edge
(``bot/doctor.py``) adds the Slack rows and prints the table. Checks only read: a
SelfSubjectAccessReview per permission, API discovery, gets of a few named objects, and cheap AWS
reads (``sts:GetCallerIdentity``, ``s3:ListBuckets``, ``iam:GetPolicy``, ``eks:DescribeCluster``).

**Permissions come from one table**, ``CLUSTER_RULES`` + ``kubeflow_rules`` + ``dex_rules``, that
mirrors ``helm/kf-chatops/templates/rbac.yaml`` and ``rbac-dex.yaml`` rule for rule (a test keeps
them in step). Cluster-wide rules are asked without a namespace, which Kubernetes answers with
"allowed in every namespace", the only grant that works for profile namespaces made at run time.
Every denied permission is its own FIX row naming the verb, the resource and the namespace.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from handlers.errors import KfError
from handlers.settings import WorkspaceDefaults
from provisioning.settings import CostProbeSettings, DexMode, ProvisioningSettings
from provisioning.store import Database

if TYPE_CHECKING:  # the live adapters load the cloud SDKs: imported where used, as in backend.py
    from provisioning.aws import AwsActions
    from provisioning.dex import DexActions
    from provisioning.k8s import Kube
    from provisioning.kubeflow import KubeflowActions

log = logging.getLogger(__name__)

RBAC_TEMPLATE: Final = "helm/kf-chatops/templates/rbac.yaml"
RBAC_DEX_TEMPLATE: Final = "helm/kf-chatops/templates/rbac-dex.yaml"
ALL_VERBS_CHECKED_BY: Final = "SelfSubjectAccessReview"


class Status(StrEnum):
    OK = "OK"
    FIX = "FIX"
    SKIP = "SKIP"


@dataclass(frozen=True)
class CheckResult:
    """One row of the doctor's table."""

    area: str
    """slack | settings | database | kubernetes | kubeflow | dex | identity | aws"""
    check: str
    status: Status
    detail: str
    fix: str = ""
    """What to do, for FIX rows."""

    @property
    def ok(self) -> bool:
        return self.status is not Status.FIX


def ok(area: str, check: str, detail: str) -> CheckResult:
    return CheckResult(area, check, Status.OK, detail)


def fix(area: str, check: str, detail: str, what: str) -> CheckResult:
    return CheckResult(area, check, Status.FIX, detail, what)


def skip(area: str, check: str, detail: str) -> CheckResult:
    return CheckResult(area, check, Status.SKIP, detail)


@dataclass(frozen=True)
class DoctorReport:
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def to_fix(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]


# -- the permissions table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One RBAC rule as the chart writes it."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()
    """``resourceNames``; empty: any object."""
    why: str = ""


@dataclass(frozen=True)
class Permission:
    """One (verb, resource, namespace[, name]) the bot needs: one SelfSubjectAccessReview."""

    verb: str
    group: str
    resource: str
    namespace: str = ""
    """Empty: every namespace (a cluster-wide grant) or a cluster-scoped resource."""
    name: str = ""
    why: str = ""
    source: str = RBAC_TEMPLATE

    @property
    def plural(self) -> str:
        return self.resource.split("/", 1)[0]

    @property
    def subresource(self) -> str:
        return self.resource.split("/", 1)[1] if "/" in self.resource else ""

    @property
    def qualified(self) -> str:
        """How RBAC error messages name it: ``rolebindings.rbac.authorization.k8s.io``."""
        base = f"{self.plural}.{self.group}" if self.group else self.plural
        return f"{base}/{self.subresource}" if self.subresource else base

    @property
    def where(self) -> str:
        if self.namespace:
            return f"in namespace {self.namespace}"
        return "cluster-wide" if self.plural in CLUSTER_SCOPED else "in all namespaces"

    def describe(self) -> str:
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.qualified}{named} {self.where}"

    def attributes(self) -> dict[str, str]:
        attrs = {"verb": self.verb, "group": self.group, "resource": self.plural}
        for key, value in (("subresource", self.subresource), ("namespace", self.namespace),
                           ("name", self.name)):
            if value:
                attrs[key] = value
        return attrs


CLUSTER_SCOPED: Final = frozenset({"profiles", "namespaces", "nodes", "clusterroles"})
_WRITE: Final = ("create", "get", "list", "delete", "patch")

CLUSTER_RULES: Final[tuple[Rule, ...]] = (
    Rule("kubeflow.org", ("profiles",), ("create", "get", "list", "patch", "delete"),
         why="workspaces are Kubeflow Profiles: create, wait for, patch quotas, remove"),
    Rule("", ("namespaces", "nodes", "pods", "persistentvolumeclaims", "resourcequotas"), ("get", "list"),
         why="read-only view: profile namespaces and owners, GPU capacity, usage, data left behind"),
    Rule("", ("namespaces",), ("patch",),
         why="workspace transfer: a profile namespace's `owner` annotation, which Kubeflow checks"),
    Rule("apps", ("statefulsets",), ("list",),
         why="cost scan: a GPU pod's StatefulSet names its Notebook"),
    Rule("kubeflow.org", ("notebooks",), ("get", "list", "patch"),
         why="cost scan lists Notebooks; stopping one reads it and patches kubeflow-resource-stopped"),
    Rule("rbac.authorization.k8s.io", ("rolebindings",), _WRITE,
         why="contributors (KFAM's RoleBinding) and token accounts"),
    Rule("security.istio.io", ("authorizationpolicies",), _WRITE,
         why="the Istio half of a contributor binding; kfbot-notebook-activity per workspace"),
    Rule("", ("serviceaccounts",), _WRITE, why="one ServiceAccount per issued API token"),
    Rule("kubeflow.org", ("poddefaults",), _WRITE, why="GPU workspaces get a PodDefault"),
    Rule("", ("serviceaccounts/token",), ("create",), why="short-lived tokens (TokenRequest)"),
    Rule("", ("configmaps",), ("get",), ("kube-root-ca.crt",),
         why="the cluster CA for handed-out kubeconfigs"),
    Rule("rbac.authorization.k8s.io", ("clusterroles",), ("bind",), ("kubeflow-edit", "kubeflow-view"),
         why="RoleBindings to kubeflow-edit/-view need `bind` (RBAC escalation prevention)"),
)
"""The ClusterRole of ``helm/kf-chatops/templates/rbac.yaml``, bound cluster-wide."""


def kubeflow_rules(settings: ProvisioningSettings) -> tuple[Rule, ...]:
    """The Role in the Kubeflow namespace (``rbac.yaml``)."""
    return (Rule("apps", ("deployments",), ("get",), (settings.kubeflow.profiles_deployment,),
                 why="identity header and principals from the profiles Deployment's env"),)


def dex_rules(settings: ProvisioningSettings) -> tuple[Rule, ...]:
    """The Role in Dex's namespace (``rbac-dex.yaml``), which follows the Dex mode."""
    dex = settings.dex
    if dex.mode == "password-cr":
        return (Rule("dex.coreos.com", ("passwords",), ("create", "get", "list", "delete", "update"),
                     why="one Dex Password object per login"),
                Rule("", ("configmaps",), ("get",), (dex.configmap,),
                     why="an email in staticPasswords must not get a second login"))
    if dex.mode == "configmap":
        return (
            Rule("", ("configmaps",), ("get", "update", "patch"), (dex.configmap,),
                 why="static users in Dex's config.yaml"),
            Rule("dex.coreos.com", ("passwords",), ("get", "list"),
                 why="an email with a Password object must not get a second login"),
            Rule("", ("secrets",), ("get", "update", "patch"), (dex.secret,),
                 why="their bcrypt hashes (hashFromEnv)"),
            Rule("apps", ("deployments",), ("get", "patch"), (dex.deployment,),
                 why="restart Dex after a change and watch the rollout"),
        )
    return ()


def _expand(rules: Iterable[Rule], namespace: str, source: str) -> list[Permission]:
    return [
        Permission(verb, rule.group, resource, namespace, name, rule.why, source)
        for rule in rules for resource in rule.resources for verb in rule.verbs
        for name in (rule.names or ("",))
    ]


def required_permissions(settings: ProvisioningSettings) -> list[Permission]:
    """Every (verb, resource, namespace, name) the live provisioner needs, from the table above."""
    return [
        *_expand(CLUSTER_RULES, "", f"{RBAC_TEMPLATE} (ClusterRole)"),
        *_expand(kubeflow_rules(settings), settings.kubeflow.profiles_namespace,
                 f"{RBAC_TEMPLATE} (Role in {settings.kubeflow.profiles_namespace})"),
        *_expand(dex_rules(settings), settings.dex.namespace,
                 f"{RBAC_DEX_TEMPLATE} (Role in {settings.dex.namespace}, dex.mode={settings.dex.mode})"),
    ]


# -- the live parts the checks use -----------------------------------------------------------------


@dataclass(frozen=True)
class LiveParts:
    """The live adapters, as ``build_backend`` makes them (or made on demand for ``--live``)."""

    kube: Kube
    kubeflow: KubeflowActions
    dex: DexActions
    aws: AwsActions


_SECRET_LIKE: Final = re.compile(r"\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]*"
                                 r"|[A-Za-z0-9+/=_-]{40,}")


def _scrub(text: str, limit: int = 200) -> str:
    """One line, short, without hash-, token- or base64-like runs: safe to print."""
    line = (text.strip().splitlines() or [""])[0]
    return _SECRET_LIKE.sub("[redacted]", line)[:limit]


def _first_line(exc: BaseException) -> str:
    return _scrub(exc.user_message if isinstance(exc, KfError) else f"{type(exc).__name__}: {exc}")


# -- database ---------------------------------------------------------------------------------------


def check_database(db: Database) -> list[CheckResult]:
    where = db.url.render_as_string(hide_password=True)
    sqlite_file = db.url.get_backend_name() == "sqlite" and db.url.database not in (None, "", ":memory:")
    if sqlite_file and not Path(str(db.url.database)).exists():  # connecting would create an empty file
        return [fix("database", "reachable", f"{where}: the file does not exist",
                    "run `kfbot migrate` to create it (or fix KFBOT_DATABASE_URL)")]
    try:
        current = db.current_revision()
    except Exception as exc:
        return [fix("database", "reachable", f"cannot connect to {where}: {_first_line(exc)}",
                    "check KFBOT_DATABASE_URL, the credentials, and that the pod can reach the "
                    "database (security group, NetworkPolicy)")]
    results = [ok("database", "reachable", where)]
    head = db.head_revision()
    if current == head:
        results.append(ok("database", "migrations", f"schema at the newest revision ({head})"))
    elif current is None:
        results.append(fix("database", "migrations", "no kfbot tables yet", "run `kfbot migrate`"))
    else:
        results.append(fix("database", "migrations", f"schema at revision {current}; this kfbot needs {head}",
                           "run `kfbot migrate` (if the database is newer, upgrade kfbot instead)"))
    return results


# -- Kubernetes, Kubeflow, Dex ------------------------------------------------------------------------


def check_access(kube: Kube, permissions: Iterable[Permission]) -> list[CheckResult]:
    """One SelfSubjectAccessReview per permission; a FIX row for each one denied."""
    from provisioning.k8s import Kind

    ssar = Kind("SelfSubjectAccessReview", "authorization.k8s.io", "v1", "selfsubjectaccessreviews", False,
                "AuthorizationV1Api", "self_subject_access_review")
    wanted = list(permissions)
    denied: list[CheckResult] = []
    for permission in wanted:
        try:
            review, _ = kube.create(ssar, {"spec": {"resourceAttributes": permission.attributes()}})
        except Exception as exc:  # the API itself: no point asking the other ~40 questions
            return [fix("kubernetes", "API access", f"cannot ask the Kubernetes API: {_first_line(exc)}",
                        "check the bot's kubeconfig or in-cluster ServiceAccount and that the API server "
                        "is reachable")]
        status = review.get("status") or {}
        if not status.get("allowed"):
            why = status.get("reason") or status.get("evaluationError") or ""
            detail = "denied" + (f" ({_scrub(str(why))})" if why else "")
            denied.append(fix("kubernetes", permission.describe(), detail,
                              f"grant it: {permission.source}; needed for: {permission.why}"))
    granted = len(wanted) - len(denied)
    summary = f"{granted} of {len(wanted)} permissions granted ({ALL_VERBS_CHECKED_BY})"
    if not denied:
        return [ok("kubernetes", "permissions", summary)]
    return [fix("kubernetes", "permissions", summary, f"the {len(denied)} rows below name each one"), *denied]


def _served(kube: Kube, group: str, version: str, plural: str) -> bool:
    """Whether API discovery lists ``plural`` in ``group/version`` (needs no RBAC beyond the
    built-in system:discovery role, unlike reading CustomResourceDefinitions)."""
    from provisioning.k8s import Kind, Missing

    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    kind = Kind("APIResourceList", group, version, plural, False)
    try:
        # Through Kube's one error boundary (``_call`` translates ApiException), for a path no
        # typed API method covers.
        body = kube._call("get", kind, None, None, lambda: kube.api.call_api(
            path, "GET", header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            _preload_content=False, _return_http_data_only=True))
    except Missing:
        return False
    return any(isinstance(r, Mapping) and r.get("name") == plural for r in body.get("resources") or [])


_CRDS: Final = (
    ("kubeflow.org", "v1", "profiles", "Profile", "install Kubeflow's profile controller (kubeflow/manifests "
     "applications/profiles)"),
    ("kubeflow.org", "v1alpha1", "poddefaults", "PodDefault", "install Kubeflow's admission webhook "
     "(PodDefaults); GPU workspaces need it"),
    ("security.istio.io", "v1beta1", "authorizationpolicies", "AuthorizationPolicy",
     "install Istio; contributors need AuthorizationPolicies"),
)


def check_kubeflow(kube: Kube) -> list[CheckResult]:
    results: list[CheckResult] = []
    for group, version, plural, kind, what in _CRDS:
        check = f"{kind} CRD ({plural}.{group}/{version})"
        try:
            served = _served(kube, group, version, plural)
        except KfError as exc:
            results.append(fix("kubeflow", check, f"cannot read API discovery: {_first_line(exc)}",
                               "check the bot's access to the Kubernetes API"))
            continue
        results.append(ok("kubeflow", check, "served") if served
                       else fix("kubeflow", check, "not served by this cluster", what))
    return results


def check_dex(kube: Kube, dex: DexActions, mode: DexMode, namespace: str) -> list[CheckResult]:
    from provisioning.k8s import SECRET

    if mode == "external":
        return [ok("dex", "mode external", "logins come from an external identity provider; no Dex objects "
                   "are needed")]
    if mode == "password-cr":
        check = "mode password-cr: Password CRD (passwords.dex.coreos.com/v1)"
        try:
            served = _served(kube, "dex.coreos.com", "v1", "passwords")
        except KfError as exc:
            return [fix("dex", check, f"cannot read API discovery: {_first_line(exc)}",
                        "check the bot's access to the Kubernetes API")]
        if served:
            return [ok("dex", check, "served: Dex keeps its users in Kubernetes storage")]
        return [fix("dex", check, "not served: Dex has not created its storage CRDs",
                    "check that Dex runs with `storage: {type: kubernetes}` (it creates the CRD at start), "
                    "or set KFBOT_DEX_MODE=configmap")]
    settings = dex.settings
    results: list[CheckResult] = []
    ref = f"{namespace}/{settings.configmap}"
    try:
        cm, config = dex._config()
    except KfError as exc:
        return [fix("dex", f"mode configmap: ConfigMap {ref}", _first_line(exc),
                    f"fix `config.yaml` in ConfigMap {ref}")]
    if cm is None:
        results.append(fix("dex", f"mode configmap: ConfigMap {ref}", "not found",
                           "install Dex there, set KFBOT_DEX_NAMESPACE, or use KFBOT_DEX_MODE=password-cr"))
    elif config.get("enablePasswordDB") is not True:
        results.append(fix("dex", f"mode configmap: ConfigMap {ref}",
                           "config.yaml has no `enablePasswordDB: true`, so Dex ignores staticPasswords",
                           "set enablePasswordDB: true in Dex's config"))
    else:
        count = len(config.get("staticPasswords") or [])
        results.append(ok("dex", f"mode configmap: ConfigMap {ref}",
                          f"config.yaml with {count} static users"))
    secret_ref = f"{namespace}/{settings.secret}"
    try:
        secret = kube.get(SECRET, settings.secret, namespace)
        results.append(ok("dex", f"mode configmap: Secret {secret_ref}", "present") if secret is not None
                       else fix("dex", f"mode configmap: Secret {secret_ref}", "not found",
                                f"create it (the bot may not): kubectl -n {namespace} create secret generic "
                                f"{settings.secret}"))
        dex._check_deployment_loads_secret()
        results.append(ok("dex", f"mode configmap: Deployment {namespace}/{settings.deployment}",
                          f"present; loads Secret {settings.secret} with envFrom"))
    except KfError as exc:
        results.append(fix("dex", f"mode configmap: Deployment {namespace}/{settings.deployment}",
                           _first_line(exc),
                           "use the Kubeflow 1.9+ Dex manifests, or KFBOT_DEX_MODE=password-cr"))
    return results


_IDENTITY_VARS: Final = {
    "header": "KFBOT_USERID_HEADER",
    "prefix": "KFBOT_USERID_PREFIX",
    "ingress_principal": "KFBOT_INGRESS_PRINCIPAL",
    "kfp_ui_principal": "KFBOT_KFP_UI_PRINCIPAL",
}


def check_identity(kubeflow: KubeflowActions) -> list[CheckResult]:
    """Where the identity header, prefix and principals come from (settings, the profiles
    Deployment or the kubeflow/manifests defaults): informational unless they cannot be read."""
    try:
        identity = kubeflow.identity_config()
    except KfError as exc:
        return [fix("identity", "header and principals", _first_line(exc),
                    "set KFBOT_USERID_HEADER (and the principals), or let the bot read the profiles "
                    "Deployment")]
    values = {"header": identity.header, "prefix": identity.prefix,
              "ingress_principal": identity.ingress_principal, "kfp_ui_principal": identity.kfp_ui_principal}
    rows = [ok("identity", key.replace("_", " "), f"{value!r} from {identity.sources.get(key, '?')}")
            for key, value in values.items()]
    defaults = [key for key in values if identity.sources.get(key) == "default"]
    if defaults:
        names = ", ".join(_IDENTITY_VARS[key] for key in defaults)
        rows.append(ok("identity", "defaults in use",
                       f"kubeflow/manifests values; if your Kubeflow differs, set {names}"))
    return rows


def check_kubernetes(parts: LiveParts, settings: ProvisioningSettings) -> list[CheckResult]:
    results = check_access(parts.kube, required_permissions(settings))
    if any(r.check == "API access" for r in results):
        return results
    results += check_kubeflow(parts.kube)
    results += check_dex(parts.kube, parts.dex, settings.dex.mode, settings.dex.namespace)
    results += check_identity(parts.kubeflow)
    return results


# -- AWS ------------------------------------------------------------------------------------------------


def _aws_code(exc: BaseException) -> str:
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    return str((response or {}).get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


_DENIED: Final = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


def check_aws(aws: AwsActions, workspace: WorkspaceDefaults, region: str) -> list[CheckResult]:
    from provisioning.aws import _aws_call

    results: list[CheckResult] = []
    try:
        identity = aws.caller_identity()
        results.append(ok("aws", "identity (sts)", f"account {identity['Account']} as {identity['Arn']}"))
    except KfError as exc:
        results.append(fix("aws", "identity (sts)", _first_line(exc),
                           "give the pod AWS credentials: the IRSA role annotation "
                           "(serviceAccount.irsaRoleArn) and its trust policy, docs/DEPLOY.md §5"))
    try:
        with _aws_call("listing S3 buckets"):
            buckets = aws._s3().list_buckets()
        results.append(ok("aws", "S3", f"reachable in {region} ({len(buckets.get('Buckets', []))} buckets)"))
    except KfError as exc:
        if _aws_code(exc) in _DENIED:  # a signed request answered: reachable, credentials accepted
            results.append(ok("aws", "S3", "reachable (ListBuckets is denied, which the bot does not need)"))
        else:
            results.append(fix("aws", "S3", _first_line(exc), "check the network path to S3 and the bot's "
                               "credentials"))
    if not workspace.iam_policy_arns:
        results.append(ok("aws", "IAM policies", "none configured (KFBOT_IAM_POLICY_ARNS): new buckets are "
                          "not added to any policy"))
    for arn in workspace.iam_policy_arns:
        try:
            with _aws_call(f"reading IAM policy {arn}"):
                policy = aws._iam().get_policy(PolicyArn=arn)
            version = policy.get("Policy", {}).get("DefaultVersionId", "?")
            results.append(ok("aws", f"IAM policy {arn}", f"readable (default version {version})"))
        except KfError as exc:
            results.append(fix("aws", f"IAM policy {arn}", _first_line(exc),
                               "check KFBOT_IAM_POLICY_ARNS and that the bot's IAM role may "
                               "iam:GetPolicy on it"))
    cluster = workspace.cluster
    try:
        with _aws_call(f"describing EKS cluster {cluster}"):
            found = aws._eks().describe_cluster(name=cluster)
        status = str(found.get("cluster", {}).get("status", "?"))
        version = found.get("cluster", {}).get("version", "?")
        results.append(ok("aws", f"EKS cluster {cluster}", f"{status} (Kubernetes {version})")
                       if status == "ACTIVE" else
                       fix("aws", f"EKS cluster {cluster}", f"status {status}",
                           "nodegroups can be created only in an ACTIVE cluster"))
    except KfError as exc:
        code = _aws_code(exc)
        if code in _DENIED:
            what = "add eks:DescribeCluster on the cluster to the bot's IAM policy (docs/DEPLOY.md §5c)"
        elif code in ("ResourceNotFoundException", "NotFoundException"):
            what = f"set KFBOT_EKS_CLUSTER to the cluster's name (and KFBOT_AWS_REGION, now {region})"
        else:
            what = "check the network path to EKS and the bot's credentials"
        results.append(fix("aws", f"EKS cluster {cluster}", _first_line(exc), what))
    return results


def required_aws_actions(workspace: WorkspaceDefaults) -> dict[str, tuple[str, ...]]:
    """What the bot's own IAM role must allow, by purpose, for these settings (docs/DEPLOY.md §5c)."""
    needed: dict[str, tuple[str, ...]] = {
        "workspace buckets": (
            "s3:CreateBucket", "s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration",
            "s3:PutBucketTagging", "s3:GetBucketTagging", "s3:ListBucket", "s3:DeleteBucket",
        ),
        "nodegroups": (
            "eks:CreateNodegroup", "eks:DescribeNodegroup", "eks:UpdateNodegroupConfig",
            "eks:DeleteNodegroup", "eks:ListNodegroups", "eks:TagResource", "iam:PassRole",
        ),
    }
    if workspace.iam_policy_arns and workspace.workspace_iam == "shared":
        needed["shared bucket policies"] = (
            "iam:GetPolicy", "iam:GetPolicyVersion", "iam:ListPolicyVersions", "iam:CreatePolicyVersion",
            "iam:DeletePolicyVersion",
        )
    if workspace.nodegroup.needs_launch_template():
        needed["launch templates"] = (
            "ec2:CreateLaunchTemplate", "ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions",
            "ec2:DeleteLaunchTemplate", "ec2:CreateTags", "ec2:RunInstances",
        )
    if workspace.workspace_iam == "per-workspace":
        needed["workspace roles"] = (
            "iam:CreateRole", "iam:GetRole", "iam:TagRole", "iam:ListRoleTags", "iam:UpdateAssumeRolePolicy",
            "iam:PutRolePolicy", "iam:ListRolePolicies", "iam:DeleteRolePolicy",
            "iam:ListAttachedRolePolicies", "iam:DetachRolePolicy", "iam:DeleteRole",
        )
    return needed


AUTOSCALER_REQUIREMENT: Final = (
    "scaling a nodegroup up from zero needs Cluster Autoscaler 1.24 or newer, which finds the nodegroup "
    "through its Auto Scaling group's `eks:nodegroup-name` tag and reads its labels and taints with "
    "eks:DescribeNodegroup: the autoscaler's own IAM role must allow eks:DescribeNodegroup "
    "(docs/DEPLOY.md, Cluster Autoscaler)"
)


def check_aws_permissions(aws: AwsActions, workspace: WorkspaceDefaults) -> list[CheckResult]:
    """The bot's own role through IAM's policy simulator (the doctor cannot read another role's
    effective permissions, so the autoscaler's requirement is printed, not checked)."""
    results: list[CheckResult] = []
    needed = required_aws_actions(workspace)
    try:
        principal = aws.own_role_arn()
        decisions = aws.simulate_own_permissions(principal, [a for group in needed.values() for a in group])
    except KfError as exc:
        results.append(skip("aws", "bot IAM permissions", f"not simulated ({_first_line(exc)}); allow "
                            "iam:SimulatePrincipalPolicy on the bot's own role to have them checked"))
    else:
        for purpose, actions in needed.items():
            denied = [a for a in actions if decisions.get(a) != "allowed"]
            if denied:
                results.append(fix("aws", f"IAM: {purpose}",
                                   f"{principal} is not allowed {', '.join(denied)}",
                                   "add them to the bot's IAM policy (docs/DEPLOY.md §5c)"))
            else:
                results.append(ok("aws", f"IAM: {purpose}", f"{len(actions)} actions allowed"))
    if workspace.workspace_iam == "per-workspace" and workspace.node_role_arn:
        try:
            attached = set(aws.attached_role_policies(workspace.node_role_arn))
        except KfError as exc:
            results.append(fix("aws", "node role isolation", _first_line(exc),
                               "allow iam:ListAttachedRolePolicies on the node role"))
        else:
            shared = sorted(attached & set(workspace.iam_policy_arns))
            results.append(
                fix("aws", "node role isolation", f"the node role carries the shared bucket policies "
                    f"{', '.join(shared)}: any pod that reaches the instance metadata reads every bucket",
                    "detach them from the node role (per-workspace roles replace them)")
                if shared else
                ok("aws", "node role isolation", "no shared bucket policy (KFBOT_IAM_POLICY_ARNS) is "
                   "attached to the node role")
            )
    results.append(skip("aws", "Cluster Autoscaler", "not checked (another role): " + AUTOSCALER_REQUIREMENT))
    return results


# -- all together ---------------------------------------------------------------------------------------


def run_live_checks(
    settings: ProvisioningSettings, workspace: WorkspaceDefaults, parts: Callable[[], LiveParts]
) -> list[CheckResult]:
    try:
        live = parts()
    except Exception as exc:  # no kubeconfig, no in-cluster credentials
        return [fix("kubernetes", "credentials", f"cannot load Kubernetes credentials: {_first_line(exc)}",
                    "run in the cluster with the chart's ServiceAccount, or point KUBECONFIG at a "
                    "kubeconfig")]
    return (check_kubernetes(live, settings) + check_aws(live.aws, workspace, settings.aws_region)
            + check_aws_permissions(live.aws, workspace) + check_prometheus(settings.cost))


DCGM_QUERY: Final = 'count({__name__=~"DCGM_FI_PROF_GR_ENGINE_ACTIVE|DCGM_FI_DEV_GPU_UTIL"})'
"""Whether the DCGM exporter's utilisation series reach Prometheus (the idle scan's signal 3)."""


def check_prometheus(cost: CostProbeSettings) -> list[CheckResult]:
    """With ``KFBOT_PROMETHEUS_URL`` set: Prometheus answers an instant query, and holds DCGM series."""
    if not cost.prometheus_url:
        return [skip("prometheus", "reachable", "KFBOT_PROMETHEUS_URL is not set: GPU utilisation is "
                     "not read")]
    url = f"{cost.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": DCGM_QUERY})
    try:
        with urllib.request.urlopen(url, timeout=cost.request_timeout) as answer:  # noqa: S310 (http(s) only)
            body = json.loads(answer.read(1 << 20))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return [fix("prometheus", "reachable", f"{cost.prometheus_url}: {_first_line(exc)}",
                    "check KFBOT_PROMETHEUS_URL and that the bot pod may reach it (NetworkPolicy, "
                    "mesh); the idle scan degrades to empty nodes and notebook activity meanwhile")]
    result = body.get("data", {}).get("result") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(result, list):
        return [fix("prometheus", "reachable", f"{cost.prometheus_url} did not answer like Prometheus",
                    "point KFBOT_PROMETHEUS_URL at the Prometheus HTTP API root (no /api/v1)")]
    results = [ok("prometheus", "reachable", cost.prometheus_url)]
    series = result[0].get("value", [None, "0"])[1] if result and isinstance(result[0], dict) else "0"
    if str(series) in ("", "0"):
        results.append(fix("prometheus", "DCGM metrics", "no DCGM_FI_PROF_GR_ENGINE_ACTIVE or "
                           "DCGM_FI_DEV_GPU_UTIL series", "install NVIDIA's dcgm-exporter and let this "
                           "Prometheus scrape it (GPU utilisation is then read)"))
    else:
        results.append(ok("prometheus", "DCGM metrics", f"{series} GPU utilisation series"))
    return results


def skipped_live_checks(mode: str) -> CheckResult:
    return skip("live", "Kubernetes, Kubeflow, Dex, identity, AWS",
                f"skipped: the provisioner is {mode}; `kfbot doctor --live` checks them too")

