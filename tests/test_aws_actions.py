"""The aws.* actions against moto's server over HTTP; faults through a proxy in front of it.

Each test asserts on what AWS (moto) holds afterwards, read with a separate boto3 client.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import render
from handlers import kinds, prices
from handlers.errors import PermanentError, TemporaryError
from handlers.model import Request, RequestState
from handlers.plan import Plan, Step, StepOutcome
from provisioning import k8s
from provisioning.aws import BOT_SID, BUCKET_ACTIONS, MARK_TAG, AwsActions, AwsSettings, statement_form
from tests.fakes.aws_fixtures import ACCOUNT_ID, AwsEnv, Fault, FaultProxy, aws_error_xml

CLUSTER = "kubeflow"
TAGS = {
    "app.kubernetes.io/managed-by": "kf-chatops",
    "kf-chatops/workspace": "team-a",
    "kf-chatops/owner": "ana@example.com",
}
ADMIN_STATEMENT = {"Sid": "AdminWritten", "Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}


def bucket_arns(bucket: str) -> list[str]:
    return [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def make_policy(
    aws: AwsEnv, name: str = "kf-workspaces", statements: list[dict[str, Any]] | None = None
) -> str:
    document = {"Version": "2012-10-17", "Statement": [ADMIN_STATEMENT] if statements is None else statements}
    return str(
        aws.client("iam").create_policy(PolicyName=name, PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    )


def default_document(aws: AwsEnv, arn: str) -> dict[str, Any]:
    iam = aws.client("iam")
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    return dict(iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"])


def bot_statement(document: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in document["Statement"] if s.get("Sid") == BOT_SID), None)


def version_ids(aws: AwsEnv, arn: str) -> dict[str, bool]:
    versions = aws.client("iam").list_policy_versions(PolicyArn=arn)["Versions"]
    return {v["VersionId"]: v["IsDefaultVersion"] for v in versions}


def make_cluster(aws: AwsEnv) -> None:
    aws.client("eks").create_cluster(
        name=CLUSTER,
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-a", "subnet-b"]},
    )


def nodegroup_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "cluster": CLUSTER,
        "name": "ws-team-a-gpu",
        "instance_types": ["g5.xlarge"],
        "ami_type": "AL2023_x86_64_NVIDIA",
        "scaling": {"minSize": 0, "maxSize": 2, "desiredSize": 1},
        "labels": {"kf-chatops/workspace": "team-a"},
        "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
        "subnets": ["subnet-a", "subnet-b"],
        "node_role": f"arn:aws:iam::{ACCOUNT_ID}:role/kf-nodes",
        "tags": TAGS,
        "capacity_type": "ON_DEMAND",
    }
    params.update(overrides)
    return params


def describe(aws: AwsEnv, name: str = "ws-team-a-gpu") -> dict[str, Any] | None:
    try:
        return dict(
            aws.client("eks").describe_nodegroup(clusterName=CLUSTER, nodegroupName=name)["nodegroup"]
        )
    except aws.client("eks").exceptions.ResourceNotFoundException:
        return None


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def with_status(status: str, issues: list[dict[str, Any]] | None = None) -> Any:
    def rewrite(answer: dict[str, Any]) -> dict[str, Any]:
        answer["nodegroup"]["status"] = status
        answer["nodegroup"]["health"] = {"issues": issues or []}
        return answer

    return rewrite


# -- aws.bucket ------------------------------------------------------------------------------------


def test_bucket_is_created_private_encrypted_and_tagged_once(aws: AwsEnv) -> None:
    # Default settings and no session: boto3's own chain finds moto through AWS_ENDPOINT_URL.
    action = AwsActions(AwsSettings(), aws.clock, aws.lock).registry()["aws.bucket"]
    params = {"bucket": "kf-team-a", "region": "us-east-1", "tags": TAGS, "_request": "R1"}

    first = action.ensure(params)
    second = action.ensure(params)

    s3 = aws.client("s3")
    assert (first.created, second.created) == (True, True)  # the rerun finds its own mark
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kf-team-a"]
    assert s3.get_public_access_block(Bucket="kf-team-a")["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket="kf-team-a")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket="kf-team-a")["TagSet"]} == {
        **TAGS, MARK_TAG: "R1"
    }


def test_bucket_outside_us_east_1_gets_its_location_and_an_existing_bucket_of_ours_is_refused_untouched(
    aws: AwsEnv,
) -> None:
    s3 = aws.client("s3", "eu-west-1")
    s3.create_bucket(Bucket="kf-team-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_tagging(Bucket="kf-team-eu", Tagging={"TagSet": [{"Key": "cost-center", "Value": "42"}]})

    # Same account (CreateBucket answers BucketAlreadyOwnedByYou), made by hand: not this request's.
    with pytest.raises(PermanentError, match="kf-team-eu already exists and was not made by the bot"):
        aws.actions().registry()["aws.bucket"].ensure(
            {"bucket": "kf-team-eu", "region": "eu-west-1", "tags": TAGS, "_request": "R1"}
        )

    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket="kf-team-eu")["TagSet"]} == {
        "cost-center": "42"
    }
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_public_access_block(Bucket="kf-team-eu")  # nothing was set on it either

    aws.actions().registry()["aws.bucket"].ensure(
        {"bucket": "kf-new-eu", "region": "eu-west-1", "tags": TAGS}
    )
    assert s3.get_bucket_location(Bucket="kf-new-eu")["LocationConstraint"] == "eu-west-1"


def test_bucket_name_owned_by_another_account_is_refused(aws: AwsEnv) -> None:
    credentials = aws.client("sts").assume_role(
        RoleArn="arn:aws:iam::111111111111:role/someone-else", RoleSessionName="other"
    )["Credentials"]
    other = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=aws.url,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    other.create_bucket(Bucket="kf-taken")

    with pytest.raises(PermanentError, match="kf-taken") as caught:
        aws.actions().registry()["aws.bucket"].ensure(
            {"bucket": "kf-taken", "region": "us-east-1", "tags": TAGS}
        )

    assert "another AWS account" in caught.value.user_message
    with pytest.raises(other.exceptions.ClientError):
        other.get_bucket_tagging(Bucket="kf-taken")


def test_undo_deletes_the_created_empty_bucket_and_keeps_one_with_data(aws: AwsEnv) -> None:
    action = aws.actions().registry()["aws.bucket"]
    s3 = aws.client("s3")
    empty = {"bucket": "kf-empty", "region": "us-east-1", "tags": TAGS}
    full = {"bucket": "kf-full", "region": "us-east-1", "tags": TAGS}
    action.undo(empty, action.ensure(empty))
    outcome = action.ensure(full)
    s3.put_object(Bucket="kf-full", Key="notebooks/a.ipynb", Body=b"{}")

    with pytest.raises(PermanentError, match="kf-full was kept"):
        action.undo(full, outcome)

    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kf-full"]
    action.undo(empty, StepOutcome(created=True))  # already gone: nothing to do


def test_undo_leaves_a_bucket_it_did_not_create(aws: AwsEnv) -> None:
    aws.client("s3").create_bucket(Bucket="kf-preexisting")
    action = aws.actions().registry()["aws.bucket"]
    params = {"bucket": "kf-preexisting", "region": "us-east-1", "tags": TAGS}

    with pytest.raises(PermanentError, match="kf-preexisting already exists"):
        action.ensure(params)  # called directly (no request): nothing found is ever claimed
    action.undo(params, StepOutcome(created=False))

    assert [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]] == ["kf-preexisting"]


# -- aws.bucket.remove -----------------------------------------------------------------------------


def test_remove_keeps_a_non_empty_bucket_without_purge_and_purges_all_versions_with_it(aws: AwsEnv) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="kf-data")
    s3.put_bucket_tagging(Bucket="kf-data", Tagging={"TagSet": [{"Key": MARK_TAG, "Value": "R1"}]})
    s3.put_bucket_versioning(Bucket="kf-data", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="kf-data", Key="model.bin", Body=b"v1")
    s3.put_object(Bucket="kf-data", Key="model.bin", Body=b"v2")
    s3.delete_object(Bucket="kf-data", Key="model.bin")  # leaves versions and a delete marker
    action = aws.actions().registry()["aws.bucket.remove"]

    # Data that arrived after the plan: kept and recorded, so the delete goes on (not half-done).
    kept = action.ensure({"bucket": "kf-data", "purge_data": False})
    assert kept.created is False and kept.details["deleted"] is False
    assert kept.kept == ("S3 bucket `kf-data`",)
    assert "kf-data" in str(kept.details["reason"]) and "--purge-data" in str(kept.details["reason"])
    assert kept.kept == ("S3 bucket `kf-data`",)  # structured, for the result text
    assert len(s3.list_object_versions(Bucket="kf-data")["Versions"]) == 2

    outcome = action.ensure({"bucket": "kf-data", "purge_data": True})

    assert outcome.details == {"deleted": True, "purged": True} and outcome.kept == ()
    assert s3.list_buckets()["Buckets"] == []
    assert action.ensure({"bucket": "kf-data", "purge_data": True}).details == {"deleted": False}


def test_a_delete_whose_bucket_gained_data_completes_and_its_result_names_the_kept_bucket(
    aws: AwsEnv,
) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="kf-team-a")
    s3.put_bucket_tagging(Bucket="kf-team-a", Tagging={"TagSet": [{"Key": MARK_TAG, "Value": "R1"}]})
    s3.put_object(Bucket="kf-team-a", Key="late.csv", Body=b"a,b\n")  # after the plan saw it empty
    remove = aws.actions().registry()["aws.bucket.remove"]
    outcome = remove.ensure({"bucket": "kf-team-a", "purge_data": False})
    request = Request(
        id="RDEL001",
        kind=kinds.WorkspaceDelete.KIND,
        args={"name": "team-a", "confirm": "team-a"},
        requester_id="UALICE",
        requester_email="alice@example.com",
        plan=Plan.of([Step("aws.bucket.remove", "Bucket/kf-team-a", {"bucket": "kf-team-a"}, "remove it")]),
        created_at=datetime.now(UTC),
        state=RequestState.SUCCEEDED,
    )

    report = render.result_text(request, render.SHELL, render.kept_at_apply(outcome.kept))

    assert "is done" in report and "S3 bucket `kf-team-a` holds data and is kept" in report
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kf-team-a"]


def test_remove_refuses_a_bucket_without_the_mark_even_if_the_bot_tagged_it_unless_adopted(
    aws: AwsEnv,
) -> None:
    """Workspace tags alone (what an older bot stamped on a bucket it found) are no ownership: the
    removal keeps the bucket and its data, whatever asked; an adopted record's step may remove it."""
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="kf-teams")
    tag_set = [{"Key": k, "Value": v} for k, v in TAGS.items()]
    s3.put_bucket_tagging(Bucket="kf-teams", Tagging={"TagSet": tag_set})
    s3.put_object(Bucket="kf-teams", Key="results.csv", Body=b"a,b\n")
    remove = aws.actions().registry()["aws.bucket.remove"]

    with pytest.raises(PermanentError, match="S3 bucket kf-teams carries neither kf-chatops's mark"):
        remove.ensure({"bucket": "kf-teams", "purge_data": True})
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="kf-teams")["Contents"]] == ["results.csv"]

    outcome = remove.ensure({"bucket": "kf-teams", "purge_data": True, "adopted": True})
    assert outcome.details == {"deleted": True, "purged": True} and s3.list_buckets()["Buckets"] == []


def test_remove_refuses_a_nodegroup_without_the_mark_unless_adopted(aws: AwsEnv) -> None:
    make_cluster(aws)
    actions = aws.actions().registry()
    actions["aws.nodegroup"].ensure(nodegroup_params())  # called directly: made without a mark
    remove = actions["aws.nodegroup.remove"]

    with pytest.raises(PermanentError, match="EKS nodegroup ws-team-a-gpu carries neither"):
        remove.ensure({"cluster": CLUSTER, "name": "ws-team-a-gpu"})
    assert describe(aws) is not None

    adopted = remove.ensure({"cluster": CLUSTER, "name": "ws-team-a-gpu", "adopted": True})
    assert adopted.details == {"deleted": True}
    assert describe(aws) is None


# -- aws.iam_resources -----------------------------------------------------------------------------


def test_adding_arns_makes_one_new_default_version_and_rerun_makes_none(aws: AwsEnv) -> None:
    arn = make_policy(aws)
    action = aws.actions().registry()["aws.iam_resources"]
    params = {"policy_arn": arn, "resources": bucket_arns("kf-team-a")}

    first = action.ensure(params)
    second = action.ensure(params)

    document = default_document(aws, arn)
    assert (first.created, first.details) == (True, {"added": bucket_arns("kf-team-a")})
    assert (second.created, second.details) == (False, {"added": []})
    assert version_ids(aws, arn) == {"v1": False, "v2": True}
    assert document["Statement"][0] == ADMIN_STATEMENT
    assert bot_statement(document) == {
        "Sid": BOT_SID,
        "Effect": "Allow",
        "Action": list(BUCKET_ACTIONS),
        "Resource": bucket_arns("kf-team-a"),
    }
    assert aws.lock.held == [arn, arn]


def test_at_five_versions_the_oldest_non_default_is_deleted(aws: AwsEnv) -> None:
    arn = make_policy(aws)
    iam = aws.client("iam")
    for _ in range(4):  # v2..v5, v1 stays the default
        iam.create_policy_version(
            PolicyArn=arn,
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [ADMIN_STATEMENT]}),
            SetAsDefault=False,
        )

    aws.actions().registry()["aws.iam_resources"].ensure(
        {"policy_arn": arn, "resources": bucket_arns("kf-b")}
    )

    assert version_ids(aws, arn) == {"v1": False, "v3": False, "v4": False, "v5": False, "v6": True}
    assert bot_statement(default_document(aws, arn))["Resource"] == bucket_arns("kf-b")  # type: ignore[index]


def test_undo_removes_only_what_was_added_and_keeps_other_statements(aws: AwsEnv) -> None:
    arn = make_policy(aws)
    action = aws.actions().registry()["aws.iam_resources"]
    action.ensure({"policy_arn": arn, "resources": bucket_arns("kf-old")})
    params = {"policy_arn": arn, "resources": [*bucket_arns("kf-old"), *bucket_arns("kf-new")]}

    outcome = action.ensure(params)
    action.undo(params, outcome)

    document = default_document(aws, arn)
    assert outcome.details == {"added": bucket_arns("kf-new")}
    assert document["Statement"] == [
        ADMIN_STATEMENT,
        {
            "Sid": BOT_SID,
            "Effect": "Allow",
            "Action": list(BUCKET_ACTIONS),
            "Resource": bucket_arns("kf-old"),
        },
    ]


def test_remove_drops_the_bot_statement_when_it_empties(aws: AwsEnv) -> None:
    shared, only_ours = (
        make_policy(aws, "shared"),
        make_policy(
            aws,
            "only-ours",
            statements=[
                {
                    "Sid": BOT_SID,
                    "Effect": "Allow",
                    "Action": list(BUCKET_ACTIONS),
                    "Resource": bucket_arns("kf-x"),
                }
            ],
        ),
    )
    actions = aws.actions().registry()
    actions["aws.iam_resources"].ensure({"policy_arn": shared, "resources": bucket_arns("kf-x")})

    for arn in (shared, only_ours):
        outcome = actions["aws.iam_resources.remove"].ensure(
            {"policy_arn": arn, "resources": bucket_arns("kf-x")}
        )
        assert outcome.details == {"removed": bucket_arns("kf-x")}

    assert default_document(aws, shared)["Statement"] == [ADMIN_STATEMENT]
    # IAM refuses a document without statements, so the last one is kept granting nothing.
    leftover = default_document(aws, only_ours)["Statement"]
    assert len(leftover) == 1 and "kf-x" not in json.dumps(leftover)

    added = actions["aws.iam_resources"].ensure({"policy_arn": only_ours, "resources": bucket_arns("kf-y")})
    assert added.details == {"added": bucket_arns("kf-y")}
    assert default_document(aws, only_ours)["Statement"] == [
        {"Sid": BOT_SID, "Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": bucket_arns("kf-y")}
    ]


def test_a_document_over_the_size_quota_is_refused_naming_the_policy(aws: AwsEnv) -> None:
    arn = make_policy(aws, "kf-small")
    action = aws.actions(max_policy_chars=300).registry()["aws.iam_resources"]

    with pytest.raises(PermanentError, match="IAM policy kf-small would exceed"):
        action.ensure({"policy_arn": arn, "resources": [*bucket_arns("kf-a"), *bucket_arns("kf-b")]})

    assert version_ids(aws, arn) == {"v1": True}


def test_missing_policy_is_a_permanent_error_naming_it(aws: AwsEnv) -> None:
    with pytest.raises(PermanentError, match="IAM policy nope"):
        aws.actions().registry()["aws.iam_resources"].ensure(
            {"policy_arn": f"arn:aws:iam::{ACCOUNT_ID}:policy/nope", "resources": bucket_arns("kf-a")}
        )


@pytest.mark.slow
def test_concurrent_additions_to_one_policy_lose_nothing(aws: AwsEnv) -> None:
    arn = make_policy(aws)
    action = aws.actions().registry()["aws.iam_resources"]
    failures: list[BaseException] = []

    def add(i: int) -> None:
        try:
            action.ensure({"policy_arn": arn, "resources": bucket_arns(f"kf-ws-{i}")})
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    granted = bot_statement(default_document(aws, arn))["Resource"]  # type: ignore[index]
    assert sorted(granted) == sorted(a for i in range(10) for a in bucket_arns(f"kf-ws-{i}"))
    assert len(version_ids(aws, arn)) == 5


# -- aws.nodegroup ---------------------------------------------------------------------------------


def test_nodegroup_is_created_active_with_labels_taints_and_ami_once(aws: AwsEnv) -> None:
    make_cluster(aws)
    action = aws.actions().registry()["aws.nodegroup"]

    first = action.ensure(nodegroup_params())
    second = action.ensure(nodegroup_params())

    nodegroup = describe(aws)
    assert nodegroup is not None
    assert (first.created, second.created) == (True, False)
    assert first.details["arn"] == nodegroup["nodegroupArn"]
    assert nodegroup["status"] == "ACTIVE"
    assert nodegroup["amiType"] == "AL2023_x86_64_NVIDIA"
    assert nodegroup["instanceTypes"] == ["g5.xlarge"]
    assert nodegroup["capacityType"] == "ON_DEMAND"
    assert nodegroup["scalingConfig"] == {"minSize": 0, "maxSize": 2, "desiredSize": 1}
    assert nodegroup["labels"] == {"kf-chatops/workspace": "team-a"}
    assert nodegroup["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert nodegroup["tags"] == TAGS
    assert aws.clock.slept == []


@pytest.mark.parametrize(
    "scaling",
    [
        {"minSize": 0, "maxSize": 0, "desiredSize": 0},
        {"minSize": 2, "maxSize": 3, "desiredSize": 1},
        {"minSize": 0, "maxSize": 2, "desiredSize": 3},
        {"minSize": -1, "maxSize": 2, "desiredSize": 0},
        {"minSize": 0, "maxSize": 2},
    ],
)
def test_invalid_scaling_is_refused_before_any_call(aws: AwsEnv, scaling: dict[str, int]) -> None:
    # Nothing listens at this endpoint: a call would end in TemporaryError, not PermanentError.
    action = aws.actions(endpoint_url=closed_port_url()).registry()["aws.nodegroup"]

    with pytest.raises(PermanentError, match="ws-team-a-gpu"):
        action.ensure(nodegroup_params(scaling=scaling))


def test_undo_deletes_a_created_nodegroup_and_leaves_a_found_one(aws: AwsEnv) -> None:
    make_cluster(aws)
    action = aws.actions().registry()["aws.nodegroup"]
    outcome = action.ensure(nodegroup_params())

    action.undo(nodegroup_params(), StepOutcome(created=False))
    assert describe(aws) is not None
    action.undo(nodegroup_params(), outcome)
    assert describe(aws) is None
    action.undo(nodegroup_params(), outcome)  # already gone


def test_remove_deletes_and_treats_absent_as_done(aws: AwsEnv) -> None:
    make_cluster(aws)
    actions = aws.actions().registry()
    actions["aws.nodegroup"].ensure({**nodegroup_params(), "_request": "R1"})

    assert actions["aws.nodegroup.remove"].ensure({"cluster": CLUSTER, "name": "ws-team-a-gpu"}).details == {
        "deleted": True
    }
    assert describe(aws) is None
    assert actions["aws.nodegroup.remove"].ensure({"cluster": CLUSTER, "name": "ws-team-a-gpu"}).details == {
        "deleted": False
    }


def test_a_creating_nodegroup_is_polled_with_the_clock_until_active(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    make_cluster(aws)
    fault_proxy.add(Fault("GET", "/node-groups/ws-team-a-gpu$", times=2, rewrite=with_status("CREATING")))

    outcome = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.nodegroup"].ensure(nodegroup_params())

    assert outcome.created is True
    assert aws.clock.slept == [5.0, 5.0]


def test_a_nodegroup_found_creating_is_not_ours_but_is_waited_for(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure(nodegroup_params())
    fault_proxy.add(Fault("GET", "/node-groups/ws-team-a-gpu$", times=2, rewrite=with_status("CREATING")))

    outcome = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.nodegroup"].ensure(nodegroup_params())

    assert outcome.created is False
    assert aws.clock.slept == [5.0]  # the first CREATING answer was the existence check


def test_a_failed_nodegroup_reports_health_issues_and_is_cleaned_up(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    make_cluster(aws)
    issue = {
        "code": "InsufficientFreeAddresses",
        "message": "Subnet subnet-a has no free addresses.",
        "resourceIds": ["subnet-a"],
    }
    fault_proxy.add(
        Fault("GET", "/node-groups/ws-team-a-gpu$", times=None, rewrite=with_status("CREATE_FAILED", [issue]))
    )

    with pytest.raises(PermanentError) as caught:
        aws.actions(endpoint_url=fault_proxy.url).registry()["aws.nodegroup"].ensure(nodegroup_params())

    message = caught.value.user_message
    assert "ws-team-a-gpu is CREATE_FAILED" in message
    assert "InsufficientFreeAddresses: Subnet subnet-a has no free addresses." in message
    assert "deleted it" in message
    assert describe(aws) is None


def test_waiting_past_the_timeout_is_temporary(aws: AwsEnv, fault_proxy: FaultProxy) -> None:
    make_cluster(aws)
    fault_proxy.add(Fault("GET", "/node-groups/ws-team-a-gpu$", times=None, rewrite=with_status("CREATING")))
    action = aws.actions(endpoint_url=fault_proxy.url, nodegroup_active_timeout=30.0).registry()[
        "aws.nodegroup"
    ]

    with pytest.raises(TemporaryError, match="ws-team-a-gpu is still CREATING"):
        action.ensure(nodegroup_params())

    assert sum(aws.clock.slept) == 30.0
    assert describe(aws) is not None  # still starting; the retry picks it up


# -- aws.nodegroup.taints --------------------------------------------------------------------------

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
WORKSPACE_TAINT = {"key": "kf-chatops/dedicated", "value": "team-a", "effect": "NO_SCHEDULE"}


def taint_params() -> dict[str, Any]:
    return {"cluster": CLUSTER, "name": "ws-team-a-gpu", "taints": [GPU_TAINT, WORKSPACE_TAINT]}


def made_before_pinning(aws: AwsEnv) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure({**nodegroup_params(), "_request": "R1"})


def test_a_nodegroup_created_with_the_workspace_taint_shows_it_in_describe_nodegroup(aws: AwsEnv) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure(nodegroup_params(taints=[GPU_TAINT, WORKSPACE_TAINT]))
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["taints"] == [GPU_TAINT, WORKSPACE_TAINT]


def test_the_taint_step_adds_what_is_missing_once_and_a_rerun_calls_no_update(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    made_before_pinning(aws)
    updates = fault_proxy.add(
        Fault("POST", "/node-groups/ws-team-a-gpu/update-config$", times=None, rewrite=lambda a: a)
    )
    action = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.nodegroup.taints"]

    first, again = action.ensure(taint_params()), action.ensure(taint_params())

    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["taints"] == [GPU_TAINT, WORKSPACE_TAINT]
    assert updates.fired == 1
    assert first == again and first.created is False  # the nodegroup is not the step's to remove
    assert nodegroup["labels"] == {"kf-chatops/workspace": "team-a"} and nodegroup["tags"][MARK_TAG] == "R1"


def test_the_taint_step_defers_while_eks_applies_the_update_and_never_starts_a_second(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    made_before_pinning(aws)
    seen: list[int] = []

    def eks_still_updating(answer: dict[str, Any]) -> dict[str, Any]:
        # The answers after the update call: UPDATING, the taint not there yet (EKS is asynchronous).
        seen.append(1)
        if 2 <= len(seen) <= 3:
            answer["nodegroup"].update(status="UPDATING", taints=[GPU_TAINT])
        return answer

    fault_proxy.add(Fault("GET", "/node-groups/ws-team-a-gpu$", times=None, rewrite=eks_still_updating))
    updates = fault_proxy.add(
        Fault("POST", "/node-groups/ws-team-a-gpu/update-config$", times=None, rewrite=lambda a: a)
    )
    action = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.nodegroup.taints"]

    with pytest.raises(TemporaryError, match="adding the taints to nodegroup ws-team-a-gpu") as first:
        action.ensure(taint_params())
    with pytest.raises(TemporaryError, match="ws-team-a-gpu is UPDATING") as second:
        action.ensure(taint_params())
    done = action.ensure(taint_params())

    assert updates.fired == 1 and aws.clock.slept == []  # deferred to the engine, not slept here
    assert first.value.delay == second.value.delay == 5.0
    assert done.details["taints"] == [GPU_TAINT, WORKSPACE_TAINT]


def test_the_taint_step_leaves_a_nodegroup_the_bot_did_not_make_alone(aws: AwsEnv) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure(nodegroup_params())  # no request mark
    action = aws.actions().registry()["aws.nodegroup.taints"]

    with pytest.raises(PermanentError, match="not made by kf-chatops"):
        action.ensure(taint_params())
    with pytest.raises(PermanentError, match="does not exist"):
        action.ensure({**taint_params(), "name": "ghost"})
    with pytest.raises(PermanentError, match="EKS effect"):
        action.ensure({**taint_params(), "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]})
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["taints"] == [GPU_TAINT]


# -- helpers for other features --------------------------------------------------------------------


def test_read_helpers(aws: AwsEnv) -> None:
    make_cluster(aws)
    actions = aws.actions()
    actions.registry()["aws.nodegroup"].ensure(nodegroup_params())
    actions.registry()["aws.bucket"].ensure({"bucket": "kf-team-a", "region": "us-east-1", "tags": TAGS})

    assert actions.caller_identity()["Account"] == ACCOUNT_ID
    assert actions.bucket_summary("kf-absent") is None
    assert actions.bucket_summary("kf-team-a") == {
        "bucket": "kf-team-a",
        "exists": True,
        "tags": TAGS,
        "is_empty": True,
    }
    assert actions.describe_nodegroup(CLUSTER, "absent") is None



# -- error translation -----------------------------------------------------------------------------


def test_throttling_is_temporary_names_the_policy_and_a_retry_completes(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    arn = make_policy(aws, "kf-throttled")
    fault_proxy.add(
        Fault(
            "POST",
            "^/$",
            body_contains="Action=CreatePolicyVersion",
            status=400,
            body=aws_error_xml("Throttling", "Rate exceeded for account 123456789012"),
        )
    )
    action = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.iam_resources"]
    params = {"policy_arn": arn, "resources": bucket_arns("kf-a")}

    with pytest.raises(TemporaryError, match="IAM policy kf-throttled") as caught:
        action.ensure(params)
    assert "Rate exceeded" not in caught.value.user_message
    assert version_ids(aws, arn) == {"v1": True}

    assert action.ensure(params).created is True
    assert bot_statement(default_document(aws, arn))["Resource"] == bucket_arns("kf-a")  # type: ignore[index]


def test_s3_slowdown_and_eks_server_errors_are_temporary(aws: AwsEnv, fault_proxy: FaultProxy) -> None:
    make_cluster(aws)
    fault_proxy.add(
        Fault(
            "PUT",
            r"/kf-slow\?tagging",
            status=503,
            body=b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
        )
    )
    fault_proxy.add(
        Fault(
            "POST",
            f"/clusters/{CLUSTER}/node-groups$",
            status=500,
            content_type="application/json",
            body=json.dumps({"__type": "ServerException", "message": "internal"}).encode(),
        )
    )
    actions = aws.actions(endpoint_url=fault_proxy.url).registry()

    with pytest.raises(TemporaryError, match="bucket kf-slow"):
        actions["aws.bucket"].ensure({"bucket": "kf-slow", "region": "us-east-1", "tags": TAGS})
    with pytest.raises(TemporaryError, match="nodegroup ws-team-a-gpu"):
        actions["aws.nodegroup"].ensure(nodegroup_params())

    assert describe(aws) is None
    actions["aws.bucket"].ensure({"bucket": "kf-slow", "region": "us-east-1", "tags": TAGS})
    assert len(aws.client("s3").get_bucket_tagging(Bucket="kf-slow")["TagSet"]) == len(TAGS)


def test_access_denied_is_permanent_and_names_the_bucket(aws: AwsEnv) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="limited-bot")
    iam.put_user_policy(
        UserName="limited-bot",
        PolicyName="read-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                # moto authorises HEAD bucket as s3:HeadBucket where AWS uses s3:ListBucket: allow both.
                "Statement": [
                    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:HeadBucket"], "Resource": "*"}
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="limited-bot")["AccessKey"]
    session = boto3.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="us-east-1",
    )
    action = aws.actions(session=session).registry()["aws.bucket"]

    with aws.server.iam_enforced(), pytest.raises(PermanentError, match="bucket kf-denied") as caught:
        action.ensure({"bucket": "kf-denied", "region": "us-east-1", "tags": TAGS})

    assert "AccessDenied" in caught.value.user_message
    assert "CreateBucket" in caught.value.user_message
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_unreachable_endpoint_is_temporary_and_construction_does_no_io(aws: AwsEnv) -> None:
    actions = aws.actions(endpoint_url=closed_port_url())
    registry = actions.registry()  # neither construction nor the registry touches the network

    assert set(registry) == {
        "aws.bucket",
        "aws.bucket.remove",
        "aws.iam_resources",
        "aws.iam_resources.remove",
        "aws.nodegroup",
        "aws.nodegroup.remove",
        "aws.nodegroup.taints",
        "aws.nodegroup.scaling",
        "aws.launch_template",
        "aws.launch_template.remove",
        "aws.workspace_role",
        "aws.workspace_role.remove",
        "aws.adopt",
    }
    with pytest.raises(TemporaryError, match="Could not reach AWS"):
        actions.caller_identity()
    with pytest.raises(TemporaryError, match="bucket kf-a"):
        registry["aws.bucket.remove"].ensure({"bucket": "kf-a", "purge_data": False})


# -- prices ----------------------------------------------------------------------------------------


def test_prices_overrides_and_ami_types() -> None:
    assert prices.hourly_price("us-east-1", "g5.xlarge", {}) == 1.006
    assert prices.hourly_price("us-east-1", "g5.xlarge", {"g5.xlarge": 0.7}) == 0.7
    assert prices.hourly_price("sa-east-1", "g5.xlarge", {}) is None
    assert (prices.hourly_price("eu-west-1", "g5.xlarge", {}) or 0) > 1.006
    assert prices.gpus_per_instance("g4dn.12xlarge") == 4
    assert prices.gpus_per_instance("m5.large") is None
    assert prices.gpu_ami_type("g5g.xlarge") == "AL2023_ARM_64_NVIDIA"
    assert prices.gpu_ami_type("p5.48xlarge") == "AL2023_x86_64_NVIDIA"
    assert prices.monthly(1.0) == 730.0
    assert all(
        prices.hourly_price(region, instance, {}) is not None
        for region in ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1")
        for instance in (
            "g4dn.xlarge",
            "g5.48xlarge",
            "g6.12xlarge",
            "p3.8xlarge",
            "p4d.24xlarge",
            "p5.48xlarge",
        )
    )


# -- ownership marks -------------------------------------------------------------------------------
# The engine passes the request id as params["_request"]; buckets and nodegroups carry it as the tag
# kf-chatops/request, and a step that finds one claims it only when the tag names its own request.

MARK = "kf-chatops/request"


def bucket_tags(aws: AwsEnv, bucket: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in aws.client("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]}


def test_bucket_carries_the_mark_and_only_its_request_claims_it(aws: AwsEnv) -> None:
    action = aws.actions().registry()["aws.bucket"]
    params = {"bucket": "kf-team-a", "region": "us-east-1", "tags": TAGS, "_request": "R1"}

    first = action.ensure(params)
    retried = action.ensure(params)  # a worker killed before recording `first` runs it again
    with pytest.raises(PermanentError, match="not made by the bot for this request"):
        action.ensure({**params, "_request": "R2"})  # another request never takes it over

    assert (first.created, retried.created) == (True, True)
    assert bucket_tags(aws, "kf-team-a") == {**TAGS, MARK: "R1"}


def test_a_found_bucket_is_refused_neither_claimed_nor_tagged(aws: AwsEnv) -> None:
    aws.client("s3").create_bucket(Bucket="kf-someones")

    with pytest.raises(PermanentError, match="does not take over a bucket it did not create"):
        aws.actions().registry()["aws.bucket"].ensure(
            {"bucket": "kf-someones", "region": "us-east-1", "tags": TAGS, "_request": "R1"}
        )

    with pytest.raises(aws.client("s3").exceptions.ClientError, match="NoSuchTagSet"):
        bucket_tags(aws, "kf-someones")
    assert [b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]] == ["kf-someones"]


def test_a_throttled_tagging_after_create_takes_the_bucket_back_and_the_retry_owns_it(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add(
        Fault("PUT", r"/kf-slow\?tagging", status=503,
              body=b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>")
    )
    action = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.bucket"]
    params = {"bucket": "kf-slow", "region": "us-east-1", "tags": TAGS, "_request": "R1"}

    with pytest.raises(TemporaryError, match="bucket kf-slow"):
        action.ensure(params)
    assert aws.client("s3").list_buckets()["Buckets"] == []  # not left behind unmarked

    assert action.ensure(params).created is True
    assert bucket_tags(aws, "kf-slow")[MARK] == "R1"


def test_a_permanent_failure_after_create_removes_the_steps_own_bucket(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add(
        Fault("PUT", r"/kf-denied\?publicAccessBlock", status=403,
              body=b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
    )
    action = aws.actions(endpoint_url=fault_proxy.url).registry()["aws.bucket"]

    with pytest.raises(PermanentError, match="AccessDenied"):
        action.ensure({"bucket": "kf-denied", "region": "us-east-1", "tags": TAGS, "_request": "R1"})

    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_iam_retry_after_its_write_owns_the_arns_of_its_own_bucket_only(aws: AwsEnv) -> None:
    arn = make_policy(aws)
    actions = aws.actions().registry()
    actions["aws.bucket"].ensure({"bucket": "kf-mine", "region": "us-east-1", "tags": TAGS, "_request": "R1"})
    aws.client("s3").create_bucket(Bucket="kf-theirs")
    mine = {"policy_arn": arn, "resources": bucket_arns("kf-mine"), "_request": "R1"}
    theirs = {"policy_arn": arn, "resources": bucket_arns("kf-theirs"), "_request": "R1"}

    first = actions["aws.iam_resources"].ensure(mine)
    retried = actions["aws.iam_resources"].ensure(mine)  # the outcome of `first` was never recorded
    other = actions["aws.iam_resources"].ensure({**mine, "_request": "R2"})
    actions["aws.iam_resources"].ensure(theirs)
    theirs_retried = actions["aws.iam_resources"].ensure(theirs)

    assert (first.created, retried.created, other.created) == (True, True, False)
    assert retried.details == {"added": bucket_arns("kf-mine")}
    assert other.details == {"added": []}
    assert (theirs_retried.created, theirs_retried.details) == (False, {"added": []})
    assert version_ids(aws, arn) == {"v1": False, "v2": False, "v3": True}  # one version per addition

    actions["aws.iam_resources"].undo(mine, retried)
    assert bot_statement(default_document(aws, arn))["Resource"] == bucket_arns("kf-theirs")  # type: ignore[index]


def test_nodegroup_is_created_with_the_mark_and_a_retry_after_a_timeout_owns_it(
    aws: AwsEnv, fault_proxy: FaultProxy
) -> None:
    make_cluster(aws)
    fault_proxy.add(Fault("GET", "/node-groups/ws-team-a-gpu$", times=7, rewrite=with_status("CREATING")))
    action = aws.actions(endpoint_url=fault_proxy.url, nodegroup_active_timeout=30.0).registry()[
        "aws.nodegroup"
    ]
    params = {**nodegroup_params(), "_request": "R1"}

    with pytest.raises(TemporaryError, match="still CREATING"):
        action.ensure(params)
    retried = action.ensure(params)
    other = action.ensure({**params, "_request": "R2"})

    assert (retried.created, other.created) == (True, False)
    nodegroup = describe(aws)
    assert nodegroup is not None and nodegroup["tags"] == {**TAGS, MARK: "R1"}
    action.undo(params, retried)
    assert describe(aws) is None


def test_the_aws_mark_is_the_kubernetes_mark() -> None:
    assert MARK_TAG == k8s.MARK_KEY == MARK


_ACTIONS = st.lists(st.sampled_from(["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:*"]),
                    min_size=1, max_size=4, unique=True)
_ARNS = st.lists(st.sampled_from(["arn:aws:s3:::a", "arn:aws:s3:::a/*", "arn:aws:s3:::b/*"]),
                 min_size=1, max_size=3, unique=True)


@given(actions=_ACTIONS, resources=_ARNS, grown=_ARNS, shuffle=st.randoms(use_true_random=False))
def test_a_statement_form_ignores_resources_and_action_order(
    actions: list[str], resources: list[str], grown: list[str], shuffle: Any
) -> None:
    statement = {"Sid": "Team", "Effect": "Allow", "Action": actions, "Resource": resources}
    reordered = list(actions)
    shuffle.shuffle(reordered)
    assert statement_form(statement) == statement_form({**statement, "Action": reordered, "Resource": grown})


@given(actions=_ACTIONS, other=_ACTIONS, resources=_ARNS)
def test_a_statement_form_changes_with_actions_effect_or_condition(
    actions: list[str], other: list[str], resources: list[str]
) -> None:
    """What a statement grants beyond its resources is its identity with its Sid, over time."""
    statement = {"Sid": "Team", "Effect": "Allow", "Action": actions, "Resource": resources}
    form = statement_form(statement)
    assert (statement_form({**statement, "Action": other}) == form) == (set(other) == set(actions))
    assert statement_form({**statement, "Effect": "Deny"}) != form
    assert statement_form({**statement, "Sid": "Other"}) != form
    condition = {"StringEquals": {"aws:PrincipalTag/team": "y"}}
    assert statement_form({**statement, "Condition": condition}) != form
