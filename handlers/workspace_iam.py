"""Per-workspace IAM (``KFBOT_WORKSPACE_IAM=per-workspace``): the role's name, ARN and the two
documents the bot writes for it. Pure: the plan shows them, the AWS adapter writes them, and the
adopt helper recognises a workspace's role by them.

Kubeflow's ``AwsIamForServiceAccount`` profile plugin annotates the namespace's ``default-editor``
ServiceAccount with the role (``eks.amazonaws.com/role-arn``); EKS's pod identity webhook then hands
its pods web-identity credentials for it. The bot sets ``annotateOnly: true`` and writes the trust
policy itself: without it the profile controller needs ``iam:GetRole`` and
``iam:UpdateAssumeRolePolicy`` (stock manifests give it neither) and rewrites the trust policy to a
single statement (docs/kubeflow-reference.md §1.3).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from handlers import errors

SERVICE_ACCOUNT: Final = "default-editor"
"""The only ServiceAccount the plugin annotates (the profile controller's ``DEFAULT_EDITOR``)."""
AUDIENCE: Final = "sts.amazonaws.com"
PLUGIN_KIND: Final = "AwsIamForServiceAccount"
ROLE_PREFIX: Final = "kfbot-ws-"
INLINE_POLICY: Final = "kf-chatops-workspace-bucket"
"""The role's one inline policy (its bucket, nothing else)."""
BUCKET_ACTIONS: Final = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:ListBucket",
    "s3:GetBucketLocation",
)
# The issuer becomes a condition key of the trust policy: host and path characters only.
_PROVIDER: Final = re.compile(
    r"arn:(aws[a-z-]*):iam::(\d{12}):oidc-provider/([A-Za-z0-9.-]+(?:/[A-Za-z0-9._-]+)*)"
)
_MAX_ROLE_NAME: Final = 64


def role_name(namespace: str) -> str:
    """``kfbot-ws-NAMESPACE``; a name over IAM's 64 characters keeps a prefix and a hash of the
    whole, so two long namespaces never share a role."""
    name = ROLE_PREFIX + namespace
    if len(name) <= _MAX_ROLE_NAME:
        return name
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:8]
    return f"{name[: _MAX_ROLE_NAME - 9]}-{digest}"


def parse_provider(provider_arn: str) -> tuple[str, str, str]:
    """``(partition, account, issuer)`` of an IAM OIDC provider ARN
    (``arn:aws:iam::123456789012:oidc-provider/oidc.eks.REGION.amazonaws.com/id/ID``)."""
    m = _PROVIDER.fullmatch(provider_arn)
    if m is None:
        raise errors.InvalidInput(
            "KFBOT_OIDC_PROVIDER_ARN must be the cluster's IAM OIDC provider ARN "
            "(arn:aws:iam::ACCOUNT:oidc-provider/oidc.eks.REGION.amazonaws.com/id/ID).",
            field="oidc_provider_arn",
        )
    return m.group(1), m.group(2), m.group(3)


def role_arn(provider_arn: str, namespace: str) -> str:
    """The role's ARN, in the provider's account (the cluster's)."""
    partition, account, _ = parse_provider(provider_arn)
    return f"arn:{partition}:iam::{account}:role/{role_name(namespace)}"


def subject(namespace: str, service_account: str = SERVICE_ACCOUNT) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def trust_policy(provider_arn: str, namespace: str, service_account: str = SERVICE_ACCOUNT) -> dict[str, Any]:
    """IRSA's trust policy: only this namespace's ServiceAccount, only for STS."""
    _, _, issuer = parse_provider(provider_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{issuer}:sub": subject(namespace, service_account),
                        f"{issuer}:aud": AUDIENCE,
                    }
                },
            }
        ],
    }


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The role's inline policy: the workspace's bucket and its objects, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KfChatopsWorkspaceBucket",
                "Effect": "Allow",
                "Action": list(BUCKET_ACTIONS),
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


def profile_plugin(role: str) -> dict[str, Any]:
    """The Profile's plugin entry (kubeflow-reference §1.3, ``plugin_iam.go``)."""
    return {"kind": PLUGIN_KIND, "spec": {"awsIamRole": role, "annotateOnly": True}}
