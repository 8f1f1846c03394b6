"""The step contract: every action a plan step may name, in one catalogue.

A kind's plan names its steps' actions from here; ``provisioning`` registers one implementation
per name (live and dry-run), and a test checks that the kinds, the live registries and the
dry-run renderers all speak exactly this set. The names are stored in every plan (and covered by
its digest), so a name never changes once released.
"""

from __future__ import annotations

from enum import StrEnum


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



def is_removal(action: str) -> bool:
    """Actions named ``*.remove`` delete; their undo restores nothing."""
    return action.endswith(".remove")
