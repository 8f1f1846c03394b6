"""The dry-run backend: every action renders the calls and objects it would send, and applies
nothing. It is the default (``KFBOT_PROVISIONER`` must say ``live`` explicitly), so a fresh
checkout can run the whole request flow with no cluster and no cloud account.

Outcomes say ``created=True`` so that compensation and deletion exercise the same paths they
take live; ``details["calls"]`` holds the rendering the shell and the thread show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from handlers import workspace_iam
from handlers.actions import KFAM_IDENTITY_DEFAULTS, NOTEBOOK_ACTIVITY_PATHS, NOTEBOOK_ACTIVITY_POLICY
from handlers.kinds import MANAGED_BY
from handlers.naming import KFAM_ROLES, dex_password_object_name, kfam_binding_name
from handlers.plan import JSON, StepOutcome, as_text, as_texts, canonical_json
from provisioning.actions import Action


def _k8s(verb: str, path: str, body: JSON | None = None) -> str:
    return f"{verb} {path}" + (f" {canonical_json(body)}" if body is not None else "")


def _profile(p: Mapping[str, JSON]) -> list[str]:
    spec: dict[str, JSON] = {"owner": {"kind": "User", "name": p["owner"]}}
    if p["hard"]:
        spec["resourceQuotaSpec"] = {"hard": p["hard"]}
    if p.get("aws_iam_role"):
        spec["plugins"] = [workspace_iam.profile_plugin(as_text(p["aws_iam_role"]))]
    body: JSON = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": {"name": p["name"], "labels": p["labels"]},
        "spec": spec,
    }
    return [
        _k8s("POST", "/apis/kubeflow.org/v1/profiles", body),
        f"wait for Namespace {p['name']} with annotation owner={p['owner']}",
    ]


def _profile_remove(p: Mapping[str, JSON]) -> list[str]:
    guard = [] if p.get("purge_data") else [f"refuse if Namespace {p['name']} has PersistentVolumeClaims"]
    return [*guard, _k8s("DELETE", f"/apis/kubeflow.org/v1/profiles/{p['name']}")]


def _poddefault(p: Mapping[str, JSON]) -> list[str]:
    body: JSON = {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": {"name": p["name"], "namespace": p["namespace"], "labels": dict(MANAGED_BY)},
        "spec": {
            "desc": p.get("description", ""),
            "selector": {"matchLabels": {as_text(p["name"]): "true"}},
            "tolerations": p["tolerations"],
        },
    }
    return [
        _k8s("POST", f"/apis/kubeflow.org/v1alpha1/namespaces/{p['namespace']}/poddefaults", body),
        "if it exists and kf-chatops made it: merge-patch its spec to this one",
    ]


_RBAC = "rbac.authorization.k8s.io"
_CONTRIBUTOR_ROLES = ("edit", "view")
"""The roles a share grants; a user holds one of them per workspace (a new role replaces the old)."""


def _kfam_pair_paths(ns: JSON, name: str) -> tuple[str, str]:
    return (
        f"/apis/{_RBAC}/v1/namespaces/{ns}/rolebindings/{name}",
        f"/apis/security.istio.io/v1beta1/namespaces/{ns}/authorizationpolicies/{name}",
    )


def _contributor(p: Mapping[str, JSON]) -> list[str]:
    user, role, ns = str(p["user"]), str(p["role"]), p["namespace"]
    name = kfam_binding_name(user, role)
    identity = KFAM_IDENTITY_DEFAULTS

    def metadata() -> JSON:
        return {
            "name": name,
            "namespace": ns,
            "annotations": {"user": user, "role": role},
            "labels": dict(MANAGED_BY),
        }

    binding: JSON = {
        "apiVersion": f"{_RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": metadata(),
        "roleRef": {"apiGroup": _RBAC, "kind": "ClusterRole", "name": f"kubeflow-{role}"},
        "subjects": [{"apiGroup": _RBAC, "kind": "User", "name": user}],
    }
    policy: JSON = {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata(),
        "spec": {
            "rules": [
                {
                    "when": [
                        {
                            "key": f"request.headers[{identity['header']}]",
                            "values": [identity["prefix"] + user],
                        }
                    ],
                    "from": [
                        {
                            "source": {
                                "principals": [identity["ingress_principal"], identity["kfp_ui_principal"]]
                            }
                        }
                    ],
                }
            ]
        },
    }
    # A user holds one role per workspace: a role change deletes the old pair first (live:
    # ``ensure_contributor``), so the dry run lists those DELETEs too.
    replaced: list[str] = []
    for old in (r for r in _CONTRIBUTOR_ROLES if r != role):
        for path in _kfam_pair_paths(ns, kfam_binding_name(user, old)):
            replaced.append(f"if {user} holds the {old} pair (a role change): " + _k8s("DELETE", path))
    binding_path, policy_path = _kfam_pair_paths(ns, name)
    return [
        *replaced,
        _k8s("POST", binding_path.rsplit("/", 1)[0], binding),
        _k8s("POST", policy_path.rsplit("/", 1)[0], policy),
        "if either exists for this user: replace a drifted RoleBinding, merge-patch a drifted "
        "AuthorizationPolicy spec; one of another user's: refuse",
        "(identity header, prefix and principals: KFBOT_USERID_HEADER, KFBOT_USERID_PREFIX, "
        "KFBOT_INGRESS_PRINCIPAL and KFBOT_KFP_UI_PRINCIPAL when set, else the "
        "profiles Deployment's environment, else these kubeflow/manifests defaults)",
    ]


def _contributor_remove(p: Mapping[str, JSON]) -> list[str]:
    ns, user = p["namespace"], str(p["user"])
    return [
        f"if {user} holds the {role} pair: " + _k8s("DELETE", path)
        for role in sorted(KFAM_ROLES)  # live: every KFAM role's pair under the user's names
        for path in _kfam_pair_paths(ns, kfam_binding_name(user, role))
    ]


def _quota(p: Mapping[str, JSON]) -> list[str]:
    return [
        _k8s(
            "PATCH",
            f"/apis/kubeflow.org/v1/profiles/{p['profile']} (merge-patch)",
            {"spec": {"resourceQuotaSpec": {"hard": p["hard"]}}},
        )
    ]


def _profile_owner(p: Mapping[str, JSON]) -> list[str]:
    owner = p["owner"]
    return [
        _k8s(
            "PATCH",
            f"/api/v1/namespaces/{p['name']} (merge-patch)",
            {"metadata": {"annotations": {"owner": owner}}},
        ),
        _k8s(
            "PATCH",
            f"/apis/kubeflow.org/v1/profiles/{p['name']} (merge-patch)",
            {"spec": {"owner": {"kind": "User", "name": owner}}},
        ),
    ]


def _token_account(p: Mapping[str, JSON]) -> list[str]:
    ns, name = p["namespace"], p["name"]
    return [
        _k8s(
            "POST",
            f"/api/v1/namespaces/{ns}/serviceaccounts",
            {"metadata": {"name": name, "labels": {"kf-chatops/token-id": p["token_id"]}}},
        ),
        _k8s(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            {
                "metadata": {"name": name},
                "roleRef": {"kind": "ClusterRole", "name": f"kubeflow-{p['role']}"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            },
        ),
    ]


def _token_account_remove(p: Mapping[str, JSON]) -> list[str]:
    return [
        _k8s("DELETE", f"/api/v1/namespaces/{p['namespace']}/serviceaccounts/{p['name']}"),
        _k8s(
            "DELETE",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{p['namespace']}/rolebindings/{p['name']}",
        ),
    ]


def _dex_user(p: Mapping[str, JSON]) -> list[str]:
    email = str(p["email"])
    if p["mode"] == "configmap":
        return [
            f"add {email} to staticPasswords in ConfigMap auth/dex, its hash to Secret auth/dex-passwords",
            "restart Deployment auth/dex once the burst of additions is over",
        ]
    return [
        f"POST /apis/dex.coreos.com/v1/namespaces/auth/passwords/{dex_password_object_name(email)} "
        f"(email {email}, bcrypt hash of a random password nobody sees)"
    ]


def _dex_user_remove(p: Mapping[str, JSON]) -> list[str]:
    if p.get("static_entry"):  # adopted: the entry as the runbook wrote it
        key = f" and Secret key {p.get('env_key')}" if p.get("env_key") else ""
        return [f"remove the staticPasswords entry ({p['static_entry']}) of {p['email']}{key}, restart Dex"]
    email = str(p["email"])
    if p.get("mode") == "configmap":
        return [
            f"remove {email}'s entry (the bot's env key only) from staticPasswords in ConfigMap auth/dex, "
            "its hash from Secret auth/dex-passwords",
            "restart Deployment auth/dex once the burst of changes is over",
        ]
    if p.get("mode") == "password-cr":
        return [f"DELETE /apis/dex.coreos.com/v1/namespaces/auth/passwords/{dex_password_object_name(email)}"]
    # No mode recorded: the adapter's own (KFBOT_DEX_MODE) decides which of the two it is.
    return [f"remove the Dex login {email} (KFBOT_DEX_MODE: the Password object, or the static entry)"]


def _bucket(p: Mapping[str, JSON]) -> list[str]:
    b = p["bucket"]
    return [
        f"s3:CreateBucket {b} ({p['region']})",
        f"s3:PutPublicAccessBlock {b} (all four blocks)",
        f"s3:PutBucketEncryption {b} (AES256)",
        f"s3:PutBucketTagging {b} {canonical_json(p['tags'])}",
    ]


def _bucket_remove(p: Mapping[str, JSON]) -> list[str]:
    if p.get("purge_data"):
        return [f"delete every object version in {p['bucket']}", f"s3:DeleteBucket {p['bucket']}"]
    return [f"s3:DeleteBucket {p['bucket']} only if it is empty (else keep it and report)"]


def _iam(p: Mapping[str, JSON]) -> list[str]:
    return [
        f"iam:CreatePolicyVersion {p['policy_arn']} adding {', '.join(as_texts(p['resources']))} "
        "(deleting the oldest non-default version at 5)"
    ]


def _iam_remove(p: Mapping[str, JSON]) -> list[str]:
    where = " (every Allow statement, as written by hand)" if p.get("statements") else ""
    return [f"iam:CreatePolicyVersion {p['policy_arn']} without {', '.join(as_texts(p['resources']))}{where}"]


def _nodegroup(p: Mapping[str, JSON]) -> list[str]:
    call = {
        k: p[k]
        for k in ("instance_types", "ami_type", "scaling", "labels", "taints", "subnets", "node_role", "tags")
    }
    if p.get("launch_template"):
        call["launchTemplate"] = {"name": p["launch_template"], "version": "(its default)"}
    elif p.get("disk_size") is not None:
        call["diskSize"] = p["disk_size"]
    return [f"eks:CreateNodegroup {p['cluster']}/{p['name']} {canonical_json(call)}", "wait until ACTIVE"]


def _nodegroup_taints(p: Mapping[str, JSON]) -> list[str]:
    return [
        f"refuse unless eks:DescribeNodegroup {p['cluster']}/{p['name']} shows the kf-chatops/request tag",
        f"eks:UpdateNodegroupConfig {p['cluster']}/{p['name']} "
        f"{canonical_json({'taints': {'addOrUpdateTaints': p['taints']}})} (only the taints it lacks)",
        "check eks:DescribeNodegroup until the taints show (the update is asynchronous)",
    ]


def _nodegroup_remove(p: Mapping[str, JSON]) -> list[str]:
    return [f"eks:DeleteNodegroup {p['cluster']}/{p['name']}", "wait until it is gone"]


def _nodegroup_scaling(p: Mapping[str, JSON]) -> list[str]:
    keys = (("min_size", "minSize"), ("desired_size", "desiredSize"), ("max_size", "maxSize"))
    wanted = {eks: p.get(key) for key, eks in keys}
    kept = ", ".join(eks for eks, value in wanted.items() if value is None)
    return [
        f"refuse unless eks:DescribeNodegroup {p['cluster']}/{p['name']} shows the kf-chatops/request tag",
        f"eks:UpdateNodegroupConfig {p['cluster']}/{p['name']} "
        f"{canonical_json({'scalingConfig': {k: v for k, v in wanted.items() if v is not None}})}"
        + (f" ({kept} kept as EKS has them)" if kept else ""),
    ]


def _notebook_stop(p: Mapping[str, JSON]) -> list[str]:
    patch: JSON = {"metadata": {"annotations": {"kubeflow-resource-stopped": "<now, RFC 3339 UTC>"}}}
    return [
        _k8s("GET", f"/apis/kubeflow.org/v1/namespaces/{p['namespace']}/notebooks/{p['name']}"),
        "if not stopped already: "
        + _k8s("PATCH", f"/apis/kubeflow.org/v1/namespaces/{p['namespace']}/notebooks/{p['name']}", patch)
        + " (merge patch)",
    ]


def _notebook_idle(p: Mapping[str, JSON]) -> list[str]:
    ns, name = p["namespace"], p["name"]
    base = f"http://{name}.{ns}.svc.<cluster domain>/notebook/{ns}/{name}/api"
    return [
        _k8s("GET", f"/apis/kubeflow.org/v1/namespaces/{p['namespace']}/notebooks/{p['name']}"),
        f"GET {base}/kernels and {base}/terminals (each cut at the probe timeout)",
        f"refuse unless every kernel is idle and the last activity is over {p['idle_seconds']} s ago",
    ]


def _gpu_pods_absent(p: Mapping[str, JSON]) -> list[str]:
    calls = [
        _k8s("GET", f"/api/v1/nodes?labelSelector=eks.amazonaws.com/nodegroup={p['nodegroup']}"),
        _k8s("GET", "/api/v1/pods?fieldSelector=spec.nodeName=<node>,status.phase!=Succeeded,"
             "status.phase!=Failed") + " for each of its nodes",
    ]
    if p.get("namespace"):
        pending = f"/api/v1/namespaces/{p['namespace']}/pods?fieldSelector=status.phase=Pending"
        calls.append(_k8s("GET", pending))
    then = "wait while" if p.get("wait") else "refuse if"
    return [*calls, f"{then} any of them requests nvidia.com/gpu"]


def _notebook_activity(p: Mapping[str, JSON]) -> list[str]:
    body: JSON = {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": NOTEBOOK_ACTIVITY_POLICY, "namespace": p["namespace"], "labels": dict(MANAGED_BY)
        },
        "spec": {
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": ["<KFBOT_BOT_PRINCIPAL>"]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": list(NOTEBOOK_ACTIVITY_PATHS)}}],
            }],
        },
    }
    return [
        _k8s("POST", f"/apis/security.istio.io/v1beta1/namespaces/{p['namespace']}/authorizationpolicies",
             body),
        "if it exists and kf-chatops made it: merge-patch its spec to this one; someone else's: refuse",
    ]


def _launch_template(p: Mapping[str, JSON]) -> list[str]:
    fields = ("disk_size", "disk_type", "imds_tokens", "imds_hop_limit", "instance_tags")
    data = {k: p[k] for k in fields if k in p}
    return [
        f"ec2:CreateLaunchTemplate {p['name']} {canonical_json(data)} (root volume /dev/xvda, "
        "instance and volume tags, the launch template tagged kf-chatops/request)",
        "refuse one of that name that this request did not make",
    ]


def _launch_template_remove(p: Mapping[str, JSON]) -> list[str]:
    return [f"ec2:DeleteLaunchTemplate {p['name']}"]


def _workspace_role(p: Mapping[str, JSON]) -> list[str]:
    provider, namespace = as_text(p["oidc_provider_arn"]), as_text(p["namespace"])
    trust = workspace_iam.trust_policy(provider, namespace, as_text(p["service_account"]))
    return [
        f"iam:CreateRole {p['name']} trust {canonical_json(trust)} (tagged kf-chatops/request)",
        f"iam:PutRolePolicy {p['name']} {workspace_iam.INLINE_POLICY} "
        f"{canonical_json(workspace_iam.bucket_policy(as_text(p['bucket'])))}",
        "refuse a role of that name that this request did not make",
    ]


def _workspace_role_remove(p: Mapping[str, JSON]) -> list[str]:
    return [f"iam:DeleteRolePolicy and iam:DetachRolePolicy for each, then iam:DeleteRole {p['name']}"]


def _adopt(params: Mapping[str, JSON]) -> list[str]:
    # Adoption reads: the check is a GET of the object, nothing is written.
    return [f"GET {params.get('object')} {params.get('name')} (adopt: record only, no change)"]


RENDERERS: Mapping[str, Callable[[Mapping[str, JSON]], list[str]]] = {
    "kubeflow.profile": _profile,
    "kubeflow.profile.remove": _profile_remove,
    "kubeflow.poddefault": _poddefault,
    "kubeflow.contributor": _contributor,
    "kubeflow.contributor.remove": _contributor_remove,
    "kubeflow.quota": _quota,
    "kubeflow.profile.owner": _profile_owner,
    "kubeflow.token_account": _token_account,
    "kubeflow.token_account.remove": _token_account_remove,
    "dex.user": _dex_user,
    "dex.user.remove": _dex_user_remove,
    "aws.bucket": _bucket,
    "aws.bucket.remove": _bucket_remove,
    "aws.iam_resources": _iam,
    "aws.iam_resources.remove": _iam_remove,
    "aws.nodegroup": _nodegroup,
    "aws.nodegroup.remove": _nodegroup_remove,
    "aws.nodegroup.taints": _nodegroup_taints,
    "aws.nodegroup.scaling": _nodegroup_scaling,
    "kubeflow.notebook.stop": _notebook_stop,
    "kubeflow.gpu_pods.absent": _gpu_pods_absent,
    "kubeflow.notebook.idle": _notebook_idle,
    "kubeflow.notebook_activity": _notebook_activity,
    "aws.launch_template": _launch_template,
    "aws.launch_template.remove": _launch_template_remove,
    "aws.workspace_role": _workspace_role,
    "aws.workspace_role.remove": _workspace_role_remove,
    "kubeflow.adopt": _adopt,
    "dex.adopt": _adopt,
    "aws.adopt": _adopt,
}


def render(action: str, params: Mapping[str, JSON]) -> list[str]:
    params = {k: v for k, v in params.items() if not k.startswith("_")}  # engine-supplied, not desired state
    renderer = RENDERERS.get(action)
    return renderer(params) if renderer else [f"{action} {canonical_json(params)}"]


class DryRunAction:
    def __init__(self, name: str) -> None:
        self.name = name

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        return StepOutcome(created=True, details={"dry_run": True, "calls": render(self.name, params)})

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        return None


def registry() -> dict[str, Action]:
    return {name: DryRunAction(name) for name in RENDERERS}
