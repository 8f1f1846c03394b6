"""The dry-run backend: every action renders the calls and objects it would send, and applies
nothing. It is the default (``KFBOT_PROVISIONER`` must say ``live`` explicitly), so a fresh
checkout can run the whole request flow with no cluster and no cloud account.

Outcomes say ``created=True`` so that compensation and deletion exercise the same paths they
take live; ``details["calls"]`` holds the rendering the shell and the thread show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from handlers.actions import NOTEBOOK_ACTIVITY_PATHS, NOTEBOOK_ACTIVITY_POLICY
from handlers.kinds import MANAGED_BY
from handlers.naming import dex_password_object_name, kfam_binding_name
from handlers.plan import JSON, StepOutcome, as_text, as_texts, canonical_json
from provisioning.actions import Action


def _k8s(verb: str, path: str, body: JSON | None = None) -> str:
    return f"{verb} {path}" + (f" {canonical_json(body)}" if body is not None else "")


def _profile(p: Mapping[str, JSON]) -> list[str]:
    spec: dict[str, JSON] = {"owner": {"kind": "User", "name": p["owner"]}}
    if p["hard"]:
        spec["resourceQuotaSpec"] = {"hard": p["hard"]}
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


def _contributor(p: Mapping[str, JSON]) -> list[str]:
    name = kfam_binding_name(str(p["user"]), str(p["role"]))
    ns = p["namespace"]
    return [
        _k8s(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            {
                "metadata": {"name": name, "annotations": {"user": p["user"], "role": p["role"]}},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"kubeflow-{p['role']}",
                },
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": p["user"]}],
            },
        ),
        _k8s(
            "POST",
            f"/apis/security.istio.io/v1beta1/namespaces/{ns}/authorizationpolicies/{name}"
            " (identity-header rule for the user, ingress and KFP UI principals)",
        ),
    ]


def _contributor_remove(p: Mapping[str, JSON]) -> list[str]:
    ns, user = p["namespace"], p["user"]
    return [f"DELETE the RoleBinding and AuthorizationPolicy in {ns} whose user annotation is {user}"]


def _quota(p: Mapping[str, JSON]) -> list[str]:
    return [
        _k8s(
            "PATCH",
            f"/apis/kubeflow.org/v1/profiles/{p['profile']} (merge-patch)",
            {"spec": {"resourceQuotaSpec": {"hard": p["hard"]}}},
        )
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
    return [f"remove the Dex login {p['email']}"]


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
    return [f"iam:CreatePolicyVersion {p['policy_arn']} without {', '.join(as_texts(p['resources']))}"]


def _nodegroup(p: Mapping[str, JSON]) -> list[str]:
    call = {
        k: p[k]
        for k in ("instance_types", "ami_type", "scaling", "labels", "taints", "subnets", "node_role", "tags")
    }
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
