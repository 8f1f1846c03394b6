"""A workspace made by hand, exactly as the platform team's runbook makes it, before the bot runs.

``seed_runbook_workspace(apiserver, world, dex_mode=...)`` puts into the fake apiserver and moto:

* Profile ``aic-ns-legacy-ws`` (``kubeflow.org/v1``, owner ``legacy.owner@example.com``, a
  ``resourceQuotaSpec``), created through the fake's API path so its profile controller makes the
  namespace, ``namespaceAdmin`` and ``kf-resource-quota`` as Kubeflow does;
* a contributor (``helper@example.com``, ``edit``) as KFAM writes one (kubeflow-reference §2.2):
  RoleBinding + AuthorizationPolicy, same name, ``user``/``role`` annotations, one subject;
* the owner's Dex login: in ``configmap`` mode a ``staticPasswords`` entry with an inline
  ``hash:`` (the v1.7/v1.8 runbook; ``hash_from_env=True`` gives the v1.9+ ``hashFromEnv`` entry
  and its key in Secret ``dex-passwords``), in ``password-cr`` mode a ``passwords.dex.coreos.com``
  object shaped as Dex's kubernetes storage writes it (§3.2); nothing in ``external`` mode;
* bucket ``s3-an2-aic-dev-proj1`` (tagged by the runbook: ``Project``, ``Namespace``);
* a statement of the runbook's own (not the bot's ``Sid``) listing the bucket in every shared
  policy the settings name (``world.policy_arns``, i.e. ``KFBOT_IAM_POLICY_ARNS``);
* eksctl managed nodegroup ``ng-an2-aicond-proj1-ws-standard`` in ``world.cluster`` with eksctl's
  labels and tags (``alpha.eksctl.io/cluster-name``, ``alpha.eksctl.io/nodegroup-name``,
  ``alpha.eksctl.io/nodegroup-type: managed``) and the runbook's node label.

Nothing carries a ``kf-chatops`` mark: to the bot every object is someone else's.

Names come from the runbook's naming settings (``RUNBOOK_ENV``, the ``KFBOT_NAME_*`` variables a
team following that runbook sets): bucket and nodegroup render from project ``proj1``. The
Profile was named by hand before the convention (``aic-ns-legacy-ws``, not ``aic-ns-proj1-ws``),
which is why the runbook tags the bucket and nodegroup with the namespace they belong to.

Moto gives a nodegroup no Auto Scaling group; no adoption test needs one, so none is seeded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt
import yaml

from handlers.naming import NamingSettings, dex_password_object_name, kfam_binding_name, render_names
from tests.fakes.apiserver import FakeApiServer
from tests.live_harness import DEX_NAMESPACE, AwsWorld, aws_client

NAMESPACE = "aic-ns-legacy-ws"
PROJECT = "proj1"
OWNER = "legacy.owner@example.com"
CONTRIBUTOR = "helper@example.com"
INSTANCE_TYPE = "m5.xlarge"
NAMESPACE_TAG = "Namespace"
"""The tag key the runbook puts the workspace's namespace under (bucket and nodegroup)."""

RUNBOOK_ENV: Mapping[str, str] = {
    "KFBOT_NAME_NAMESPACE": "aic-ns-{project}-ws",
    "KFBOT_NAME_BUCKET": "s3-{region_alias}-{infra}-{env}-{project}",
    "KFBOT_NAME_NODEGROUP": "ng-{region_alias}-aicond-{project}-ws-{spec}",
    "KFBOT_NAME_NODE_LABEL_KEY": "aic-role",
    "KFBOT_NAME_NODE_LABEL_VALUE": "{project}-ws-{spec}",
    "KFBOT_REGION_ALIAS": "an2",
    "KFBOT_INFRA": "aic",
    "KFBOT_ENV": "dev",
    "KFBOT_INSTANCE_SPECS": f"{INSTANCE_TYPE}=standard",
}
"""The runbook's convention as settings (pass as ``env`` to ``live_stack``)."""

RUNBOOK_NAMING = NamingSettings(
    namespace=RUNBOOK_ENV["KFBOT_NAME_NAMESPACE"],
    bucket=RUNBOOK_ENV["KFBOT_NAME_BUCKET"],
    nodegroup=RUNBOOK_ENV["KFBOT_NAME_NODEGROUP"],
    node_label_key=RUNBOOK_ENV["KFBOT_NAME_NODE_LABEL_KEY"],
    node_label_value=RUNBOOK_ENV["KFBOT_NAME_NODE_LABEL_VALUE"],
    region_alias="an2",
    infra="aic",
    env="dev",
    instance_specs={INSTANCE_TYPE: "standard"},
)
_NAMES = render_names(RUNBOOK_NAMING, PROJECT, INSTANCE_TYPE)
BUCKET = _NAMES.bucket
NODEGROUP = _NAMES.nodegroup or ""
assert (BUCKET, NODEGROUP) == ("s3-an2-aic-dev-proj1", "ng-an2-aicond-proj1-ws-standard")

RUNBOOK_SID = "AicProj1Bucket"
QUOTA = {"cpu": "16", "memory": "64Gi", "requests.nvidia.com/gpu": "0"}
_INGRESS = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
_KFP_UI = "cluster.local/ns/kubeflow/sa/ml-pipeline-ui"


@dataclass(frozen=True)
class RunbookWorkspace:
    """What ``seed_runbook_workspace`` made, by name."""

    namespace: str
    owner: str
    contributor: str
    contributor_binding: str
    """Name of the contributor's RoleBinding and AuthorizationPolicy (KFAM's rule)."""
    dex_mode: str
    dex_login: str
    """``staticPasswords`` (inline ``hash``), ``hashFromEnv`` (+ Secret key), a Password object's
    name, or empty (``external``)."""
    dex_env_key: str
    """The Secret ``dex-passwords`` key of a ``hashFromEnv`` entry, else empty."""
    bucket: str
    policy_arns: tuple[str, ...]
    policy_sid: str
    cluster: str
    nodegroup: str
    instance_type: str
    quota: Mapping[str, str]


def _hash() -> str:
    # The manifests' README hashes with passlib's ident "2y" (Go's bcrypt reads $2a$/$2b$/$2y$ alike);
    # the bcrypt package makes only $2b$, whose hash is the same. Cost 10, Dex's minimum, is fast.
    made = bcrypt.hashpw(b"runbook-password", bcrypt.gensalt(rounds=10)).decode()
    return "$2y$" + made.removeprefix("$2b$")


def _contributor(apiserver: FakeApiServer, namespace: str, email: str) -> str:
    name = kfam_binding_name(email, "edit")
    annotations = {"user": email, "role": "edit"}
    apiserver.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kubeflow-edit",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": email}],
        }
    )
    apiserver.create(
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
            "spec": {
                "rules": [
                    {
                        "when": [{"key": "request.headers[kubeflow-userid]", "values": [email]}],
                        "from": [{"source": {"principals": [_INGRESS, _KFP_UI]}}],
                    }
                ]
            },
        }
    )
    return name


def _dex_login(
    apiserver: FakeApiServer, dex_mode: str, email: str, *, hash_from_env: bool
) -> tuple[str, str]:
    username, user_id = email.partition("@")[0], "legacy-owner-0001"
    if dex_mode == "password-cr":
        name = dex_password_object_name(email)
        apiserver.create(
            {
                "apiVersion": "dex.coreos.com/v1",
                "kind": "Password",
                "metadata": {"name": name, "namespace": DEX_NAMESPACE},
                "email": email,
                "hash": base64.b64encode(_hash().encode()).decode(),
                "username": username,
                "userID": user_id,
            }
        )
        return name, ""
    if dex_mode != "configmap":
        return "", ""
    cm = apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
    if cm is None:
        raise AssertionError("configmap mode needs Dex's ConfigMap first (live_harness.seed_kube)")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    entry: dict[str, Any] = {"email": email, "username": username, "userID": user_id}
    env_key = ""
    if hash_from_env:
        env_key = "DEX_LEGACY_OWNER_PASSWORD"
        secret = apiserver.get("v1", "secrets", "dex-passwords", DEX_NAMESPACE)
        if secret is None:
            raise AssertionError("hashFromEnv needs Dex's Secret dex-passwords first")
        secret.setdefault("data", {})[env_key] = base64.b64encode(_hash().encode()).decode()
        apiserver.seed(secret)
        entry["hashFromEnv"] = env_key
    else:
        entry["hash"] = _hash()
    config.setdefault("staticPasswords", []).append(entry)
    cm["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
    apiserver.seed(cm)
    return ("hashFromEnv" if hash_from_env else "staticPasswords"), env_key


def _policy_lists_bucket(endpoint_url: str, policy_arn: str, bucket: str) -> None:
    iam = aws_client(endpoint_url, "iam")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else dict(document)
    document["Statement"] = [
        *document.get("Statement", []),
        {
            "Sid": RUNBOOK_SID,
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        },
    ]
    iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def seed_runbook_workspace(
    apiserver: FakeApiServer, world: AwsWorld, *, dex_mode: str = "password-cr", hash_from_env: bool = False
) -> RunbookWorkspace:
    """Make the runbook's workspace ``aic-ns-legacy-ws`` by hand; see the module doc for what.

    Call after ``live_harness.seed_aws`` and ``seed_kube`` (or ``build_live_stack``, which runs it),
    with the same ``dex_mode`` as the stack."""
    apiserver.create(
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "Profile",
            "metadata": {"name": NAMESPACE},
            "spec": {
                "owner": {"kind": "User", "name": OWNER},
                "resourceQuotaSpec": {"hard": dict(QUOTA)},
            },
        }
    )
    binding = _contributor(apiserver, NAMESPACE, CONTRIBUTOR)
    login, env_key = _dex_login(apiserver, dex_mode, OWNER, hash_from_env=hash_from_env)

    url = world.endpoint_url
    s3 = aws_client(url, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_tagging(
        Bucket=BUCKET,
        Tagging={
            "TagSet": [{"Key": "Project", "Value": PROJECT}, {"Key": NAMESPACE_TAG, "Value": NAMESPACE}]
        },
    )
    for arn in world.policy_arns:
        _policy_lists_bucket(url, arn, BUCKET)

    eksctl = {"alpha.eksctl.io/cluster-name": world.cluster, "alpha.eksctl.io/nodegroup-name": NODEGROUP}
    label_key, label_value = _NAMES.node_label or ("", "")
    aws_client(url, "eks").create_nodegroup(
        clusterName=world.cluster,
        nodegroupName=NODEGROUP,
        subnets=list(world.subnets),
        nodeRole=world.node_role_arn,
        instanceTypes=[INSTANCE_TYPE],
        scalingConfig={"minSize": 0, "maxSize": 2, "desiredSize": 0},
        labels={**eksctl, label_key: label_value},
        tags={**eksctl, "alpha.eksctl.io/nodegroup-type": "managed", NAMESPACE_TAG: NAMESPACE},
    )
    return RunbookWorkspace(
        namespace=NAMESPACE,
        owner=OWNER,
        contributor=CONTRIBUTOR,
        contributor_binding=binding,
        dex_mode=dex_mode,
        dex_login=login,
        dex_env_key=env_key,
        bucket=BUCKET,
        policy_arns=tuple(world.policy_arns),
        policy_sid=RUNBOOK_SID,
        cluster=world.cluster,
        nodegroup=NODEGROUP,
        instance_type=INSTANCE_TYPE,
        quota=dict(QUOTA),
    )
