"""The bot never takes, tags, grants or deletes what it did not make (attack round 2, H2 and M1),
on the live composition: fake apiserver, moto, SQLite, the runbook's hand-made workspace.

* ``/kf workspace new`` whose bucket name is an existing bucket (here the runbook team's) fails
  for good at the bucket step: the bucket keeps its tags and data, the workspace's role is never
  made, the Profile is compensated, and nothing later calls the bucket an orphan.
* ``/kf drift cleanup`` files only what the drift report lists as an orphan now, never what a live
  workspace records (bot-made or adopted) nor what lacks the bot's mark, and checks again before
  it applies.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from handlers import drift, errors
from handlers.model import Actor, RequestState
from handlers.naming import dex_password_object_name
from provisioning import k8s
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.runbook import RUNBOOK_ENV, RunbookWorkspace, seed_runbook_workspace
from tests.live_harness import (
    ADMIN,
    ADMIN2,
    ALICE,
    AwsWorld,
    LiveStack,
    default_document,
    granted_resources,
    live_stack,
    seed_aws,
)

MALLORY = Actor("UMALLORY1", "mallory@example.com")
OIDC = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABCDEF"
PER_WORKSPACE = {
    **RUNBOOK_ENV, "KFBOT_WORKSPACE_IAM": "per-workspace", "KFBOT_OIDC_PROVIDER_ARN": OIDC,
    "KFBOT_IAM_POLICY_ARNS": "",
}
HAND_LOGIN = "platform.admin@example.com"


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


def _runbook(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld, env: dict[str, str]
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    with live_stack(sqlite_url, apiserver, world, dex_mode="password-cr", env=env) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode="password-cr")
        stack.aws("s3").put_object(Bucket=made.bucket, Key="results/model.pt", Body=b"the team's data")
        yield stack, made


@pytest.fixture
def per_workspace(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    yield from _runbook(sqlite_url, apiserver, world, PER_WORKSPACE)


@pytest.fixture
def shared_policies(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    yield from _runbook(sqlite_url, apiserver, world, dict(RUNBOOK_ENV))


def tags(stack: LiveStack, bucket: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in stack.aws("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]}


def buckets(stack: LiveStack) -> list[str]:
    return sorted(b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"])


def orphans(stack: LiveStack) -> set[str]:
    return {i.key for i in drift.find(stack.backend.drift_inventory()) if i.what.value.startswith("orphan")}


@pytest.mark.parametrize("adopted", [False, True], ids=["hand-made", "adopted"])
def test_workspace_new_on_an_existing_bucket_fails_and_leaves_it_alone(
    per_workspace: tuple[LiveStack, RunbookWorkspace], adopted: bool
) -> None:
    stack, made = per_workspace
    if adopted:
        done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
        assert done.state is RequestState.SUCCEEDED, done.error
    before = tags(stack, made.bucket)

    # Project proj1's bucket name, from the naming template, is the runbook team's bucket.
    request = stack.apply(MALLORY, "workspace new proj1", approver=ADMIN)

    assert request.state is RequestState.FAILED
    assert request.error is not None and f"{made.bucket} already exists" in request.error
    assert tags(stack, made.bucket) == before  # no managed-by, workspace or owner tag stamped on it
    assert stack.aws("s3").get_object(Bucket=made.bucket, Key="results/model.pt")["Body"].read() == (
        b"the team's data"
    )
    with pytest.raises(ClientError, match="NoSuchEntity"):  # the workspace role was never made
        stack.aws("iam").get_role(RoleName="kfbot-ws-aic-ns-proj1-ws")
    assert stack.kube().get(k8s.PROFILE, "aic-ns-proj1-ws") is None  # compensated
    assert [w.name for w in stack.backend.workspaces()] == ([made.namespace] if adopted else [])
    assert orphans(stack) == set()
    if not adopted:  # the team's adoption still finds its bucket
        adoption = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
        assert f"Bucket/{made.bucket}" in {s.key for s in adoption.plan.steps}


def test_drift_cleanup_refuses_every_target_that_is_no_orphan(
    shared_policies: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = shared_policies
    done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
    assert done.state is RequestState.SUCCEEDED, done.error
    team_a = stack.apply(ALICE, "workspace new team-a")
    assert team_a.state is RequestState.SUCCEEDED, team_a.error
    (team_bucket,) = [b for b in buckets(stack) if b.endswith("-team-a")]
    stack.aws("s3").put_object(Bucket=team_bucket, Key="x", Body=b"alice's data")
    stack.apiserver.create({
        "apiVersion": "dex.coreos.com/v1", "kind": "Password",
        "metadata": {"name": dex_password_object_name(HAND_LOGIN), "namespace": "auth"},
        "email": HAND_LOGIN, "hash": base64.b64encode(b"$2y$10$" + b"x" * 53).decode(),
        "username": "platform", "userID": "p-1",
    })
    # What an older bot stamped on a bucket it found: its workspace tags, never its mark.
    stack.aws("s3").create_bucket(Bucket="s3-an2-aic-dev-stamped")
    stack.aws("s3").put_bucket_tagging(Bucket="s3-an2-aic-dev-stamped", Tagging={"TagSet": [
        {"Key": "kf-chatops/workspace", "Value": "gone"},
        {"Key": "app.kubernetes.io/managed-by", "Value": "kf-chatops"},
    ]})
    # Someone re-tags team-a's bucket for a gone workspace: team-a records it, so it is no orphan.
    retagged = {**tags(stack, team_bucket), "kf-chatops/workspace": "gone"}
    stack.aws("s3").put_bucket_tagging(
        Bucket=team_bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in retagged.items()]}
    )
    assert "kf-chatops/request" in retagged
    assert orphans(stack) == set()
    policy = made.policy_arns[0]
    granted_before = granted_resources(default_document(stack, policy))

    for target in (
        f"bucket:{made.bucket} --purge-data",  # adopted, with data
        f"nodegroup:{made.nodegroup}",  # adopted
        f"bucket:{team_bucket} --purge-data",  # live, bot-made
        f"iam:{team_bucket}",  # live workspace's grant
        f"iam:{made.bucket}",  # adopted workspace's grant
        f"dex:{HAND_LOGIN}",  # hand-made login
        f"dex:{made.owner}",  # adopted workspace's owner
        "bucket:s3-an2-aic-dev-stamped",  # tagged, not made by the bot
    ):
        for who in (ADMIN, ADMIN2):
            with pytest.raises(errors.InvalidInput, match="is not an orphan"):
                stack.submit(who, f"drift cleanup {target}")

    assert {made.bucket, team_bucket, "s3-an2-aic-dev-stamped"} <= set(buckets(stack))
    nodegroups = stack.aws("eks").list_nodegroups(clusterName=made.cluster)["nodegroups"]
    assert made.nodegroup in nodegroups
    assert stack.kube().get(k8s.DEX_PASSWORD, dex_password_object_name(HAND_LOGIN), "auth") is not None
    assert granted_resources(default_document(stack, policy)) == granted_before
    assert all(r.kind != "drift.cleanup" for r in stack.requests())


def test_a_cleanup_filed_for_an_orphan_that_a_live_workspace_then_claims_does_not_apply(
    shared_policies: tuple[LiveStack, RunbookWorkspace],
) -> None:
    """Filed while the bucket was an orphan of the gone workspace `gone`; a workspace of that name
    is made before the approval: the plan, rendered again before it applies, refuses."""
    stack, _ = shared_policies
    stack.aws("s3").create_bucket(Bucket="kf-leftover")
    stack.aws("s3").put_bucket_tagging(Bucket="kf-leftover", Tagging={"TagSet": [
        {"Key": "kf-chatops/workspace", "Value": "gone"},
        {"Key": "kf-chatops/request", "Value": "R-GONE"},
    ]})
    assert orphans(stack) == {"orphan-bucket:kf-leftover"}
    cleanup = stack.submit(ADMIN, "drift cleanup bucket:kf-leftover")
    assert cleanup.state is RequestState.PENDING

    made = stack.apply(ALICE, "workspace new gone")
    assert made.state is RequestState.SUCCEEDED, made.error
    stack.approve(cleanup.id, ADMIN2)
    stack.run()

    ended = stack.request(cleanup.id)
    assert ended.state is RequestState.FAILED
    assert ended.error is not None and "is not an orphan" in ended.error
    assert "kf-leftover" in buckets(stack)
