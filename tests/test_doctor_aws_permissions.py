"""``kfbot doctor``'s check of the bot's own AWS permissions (IAM's policy simulator on the role it
runs as, moto plus ``tests/fakes/iam_simulator.py``), the node role's shared policies in
per-workspace mode, and the Cluster Autoscaler requirement it prints but cannot check."""

from __future__ import annotations

import dataclasses
import json

import boto3

from handlers.settings import RUNBOOK_NODEGROUP, WorkspaceDefaults
from provisioning.aws import AwsActions
from provisioning.doctor import Status, check_aws_permissions, required_aws_actions
from tests.fakes.aws_fixtures import ACCOUNT_ID, AwsEnv

pytest_plugins = ["tests.fakes.aws_fixtures"]

SHARED = f"arn:aws:iam::{ACCOUNT_ID}:policy/kubeflow-s3"
NODE_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/kf-nodes"
OIDC = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
ANYONE = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "sts:AssumeRole"}
]})


def _as_bot(aws: AwsEnv, granted: list[str], denied: tuple[str, ...] = ()) -> AwsActions:
    """The bot's role in moto, with ``granted`` allowed and ``denied`` explicitly denied, and
    actions whose credentials are a session of that role (what IRSA gives the pod)."""
    iam = aws.client("iam")
    iam.create_role(RoleName="kf-chatops", AssumeRolePolicyDocument=ANYONE)
    statements = [{"Effect": "Allow", "Action": granted, "Resource": "*"}]
    if denied:
        statements.append({"Effect": "Deny", "Action": list(denied), "Resource": "*"})
    iam.put_role_policy(RoleName="kf-chatops", PolicyName="bot", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": statements}))
    credentials = aws.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/kf-chatops", RoleSessionName="doctor")["Credentials"]
    session = boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name="us-east-1",
    )
    return aws.actions(session=session)


def _workspace(**changes: object) -> WorkspaceDefaults:
    base = WorkspaceDefaults(node_role_arn=NODE_ROLE, iam_policy_arns=(SHARED,), nodegroup=RUNBOOK_NODEGROUP,
                             workspace_iam="per-workspace", oidc_provider_arn=OIDC)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_each_missing_action_is_named_by_purpose_and_the_autoscaler_requirement_is_printed(
    aws: AwsEnv,
) -> None:
    workspace = _workspace()
    needed = required_aws_actions(workspace)
    everything = [a for group in needed.values() for a in group]
    actions = _as_bot(aws, [a for a in everything if a != "ec2:CreateLaunchTemplate"], ("iam:PutRolePolicy",))
    iam = aws.client("iam")
    iam.create_role(RoleName="kf-nodes", AssumeRolePolicyDocument=ANYONE)
    iam.create_policy(PolicyName="kubeflow-s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    iam.attach_role_policy(RoleName="kf-nodes", PolicyArn=SHARED)

    rows = {r.check: r for r in check_aws_permissions(actions, workspace)}

    assert rows["IAM: workspace buckets"].status is Status.OK
    assert rows["IAM: nodegroups"].status is Status.OK
    assert rows["IAM: launch templates"].status is Status.FIX
    assert "ec2:CreateLaunchTemplate" in rows["IAM: launch templates"].detail
    assert f"arn:aws:iam::{ACCOUNT_ID}:role/kf-chatops" in rows["IAM: launch templates"].detail
    assert rows["IAM: workspace roles"].status is Status.FIX  # an explicit Deny
    assert rows["IAM: workspace roles"].detail.endswith("is not allowed iam:PutRolePolicy")
    assert "IAM: shared bucket policies" not in rows  # per-workspace mode edits none
    assert rows["node role isolation"].status is Status.FIX and SHARED in rows["node role isolation"].detail
    autoscaler = rows["Cluster Autoscaler"]
    assert autoscaler.status is Status.SKIP
    for words in ("1.24", "eks:DescribeNodegroup", "eks:nodegroup-name", "autoscaler's own IAM role"):
        assert words in autoscaler.detail

    iam.detach_role_policy(RoleName="kf-nodes", PolicyArn=SHARED)
    rows = {r.check: r for r in check_aws_permissions(actions, workspace)}
    assert rows["node role isolation"].status is Status.OK


def test_everything_allowed_in_shared_mode_and_a_bot_that_may_not_simulate_is_told_how(aws: AwsEnv) -> None:
    workspace = _workspace(workspace_iam="shared", nodegroup=dataclasses.replace(RUNBOOK_NODEGROUP,
                           disk_type="", imds_tokens="", imds_hop_limit=None, instance_tags=False))
    needed = required_aws_actions(workspace)
    assert set(needed) == {"workspace buckets", "nodegroups", "shared bucket policies"}
    actions = _as_bot(aws, [a for group in needed.values() for a in group])

    rows = check_aws_permissions(actions, workspace)
    assert [r.status for r in rows if r.check.startswith("IAM:")] == [Status.OK] * 3
    assert "node role isolation" not in {r.check for r in rows}

    # Credentials that are not a role IAM knows: nothing to simulate, said as a SKIP with the fix.
    rows = check_aws_permissions(aws.actions(), workspace)
    skipped = next(r for r in rows if r.check == "bot IAM permissions")
    assert skipped.status is Status.SKIP and "iam:SimulatePrincipalPolicy" in skipped.detail
