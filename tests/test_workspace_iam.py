"""``KFBOT_WORKSPACE_IAM=per-workspace``: a role per workspace that names only its bucket and trusts
only its namespace's ``default-editor`` (moto), set on the Profile through the
``AwsIamForServiceAccount`` plugin with ``annotateOnly`` (fake apiserver, Profile validated against
the real CRD), and what the plan says and warns."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from kubernetes import client

from bot.settings import Settings, SettingsError
from handlers import errors, kinds, workspace_iam
from handlers.errors import PermanentError
from handlers.plan import Plan, StepOutcome
from handlers.settings import RUNBOOK_NODEGROUP, CoreSettings
from provisioning import k8s
from provisioning.kubeflow import KubeflowActions
from provisioning.settings import KubeflowSettings
from tests.fakes.apiserver import FakeApiServer, crd_schemas_available
from tests.fakes.aws_fixtures import ACCOUNT_ID, AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.facts import StaticFacts
from tests.test_kinds import RUNBOOK

pytest_plugins = ["tests.fakes.aws_fixtures"]

ISSUER = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
OIDC = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{ISSUER}"
NS = "aic-ns-team-a-ws"
BUCKET = "s3-use1-infra-dev-team-a"
ROLE = workspace_iam.role_name(NS)
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE}"
TAGS = {"kf-chatops/workspace": "team-a"}


def role_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": ROLE,
        "namespace": NS,
        "service_account": "default-editor",
        "oidc_provider_arn": OIDC,
        "bucket": BUCKET,
        "tags": TAGS,
        "_request": "RREQ1",
    }
    params.update(overrides)
    return params


def role_state(aws: AwsEnv, name: str = ROLE) -> dict[str, Any] | None:
    iam = aws.client("iam")
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        return None
    inline = {
        policy: iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
    }
    tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=name)["Tags"]}
    return {"trust": role["AssumeRolePolicyDocument"], "inline": inline, "tags": tags, "arn": role["Arn"]}


EXPECTED_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Federated": OIDC},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{ISSUER}:sub": f"system:serviceaccount:{NS}:default-editor",
                    f"{ISSUER}:aud": "sts.amazonaws.com",
                }
            },
        }
    ],
}


# -- the role in IAM (moto) --------------------------------------------------------------------------


def test_the_role_trusts_only_its_namespace_and_names_only_its_bucket(aws: AwsEnv) -> None:
    registry = aws.actions().registry()
    outcome = registry["aws.workspace_role"].ensure(role_params())

    state = role_state(aws)
    assert state is not None
    assert outcome.created and outcome.details == {"arn": ROLE_ARN} and state["arn"] == ROLE_ARN
    assert state["trust"] == EXPECTED_TRUST
    policy = state["inline"][workspace_iam.INLINE_POLICY]
    resources = [r for statement in policy["Statement"] for r in statement["Resource"]]
    assert resources == [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
    assert list(state["inline"]) == [workspace_iam.INLINE_POLICY]
    assert state["tags"] == {**TAGS, "kf-chatops/request": "RREQ1"}

    # A hand edit of the trust policy (say, a second namespace added) is put back by a rerun.
    widened = json.loads(json.dumps(EXPECTED_TRUST))
    widened["Statement"][0]["Condition"]["StringEquals"][f"{ISSUER}:sub"] = [
        f"system:serviceaccount:{NS}:default-editor", "system:serviceaccount:other-ws:default-editor"
    ]
    aws.client("iam").update_assume_role_policy(RoleName=ROLE, PolicyDocument=json.dumps(widened))
    again = registry["aws.workspace_role"].ensure(role_params())
    state = role_state(aws)
    assert again.created and state is not None and state["trust"] == EXPECTED_TRUST

    # Undo of a found-not-made outcome keeps it; of its own, deletes role and inline policy.
    registry["aws.workspace_role"].undo(role_params(), StepOutcome(created=False))
    assert role_state(aws) is not None
    registry["aws.workspace_role"].undo(role_params(), outcome)
    assert role_state(aws) is None


def test_a_role_of_that_name_the_request_did_not_make_is_refused_untouched(aws: AwsEnv) -> None:
    hand_made = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                          "Principal": {"Service": "ec2.amazonaws.com"}}]}
    aws.client("iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(hand_made))
    action = aws.actions().registry()["aws.workspace_role"]

    with pytest.raises(PermanentError, match="not made by this request"):
        action.ensure(role_params())
    with pytest.raises(PermanentError, match="not made by this request"):
        action.ensure(role_params(_request="ROTHER"))

    state = role_state(aws)
    assert state is not None and state["trust"] == hand_made and state["inline"] == {}


def test_remove_deletes_the_role_with_its_policies_and_treats_absent_as_done(aws: AwsEnv) -> None:
    registry = aws.actions().registry()
    registry["aws.workspace_role"].ensure(role_params())
    iam = aws.client("iam")
    extra = iam.create_policy(PolicyName="hand-attached", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets",
                                                 "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=extra)

    remove = registry["aws.workspace_role.remove"]
    assert remove.ensure({"name": ROLE}).details == {"deleted": True}
    assert role_state(aws) is None
    assert remove.ensure({"name": ROLE}).details == {"deleted": False}


def test_the_adopt_helper_finds_a_workspace_role_by_name_plugin_or_trust(aws: AwsEnv) -> None:
    actions = aws.actions()
    assert actions.find_workspace_role(NS) is None
    # A hand-made role from the runbook days, under its own name, trusting the namespace.
    legacy = "legacy-team-a-reader"
    aws.client("iam").create_role(RoleName=legacy, AssumeRolePolicyDocument=json.dumps(EXPECTED_TRUST),
                                  Tags=[{"Key": "team", "Value": "a"}])
    aws.client("iam").put_role_policy(RoleName=legacy, PolicyName="bucket", PolicyDocument=json.dumps(
        workspace_iam.bucket_policy(BUCKET)))

    by_trust = actions.find_workspace_role(NS)
    by_plugin = actions.find_workspace_role(NS, f"arn:aws:iam::{ACCOUNT_ID}:role/{legacy}")
    assert by_trust == by_plugin == {
        "name": legacy,
        "arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{legacy}",
        "tags": {"team": "a"},
        "trusts_namespace": True,
        "bucket_resources": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
        "attached_policies": [],
    }
    assert actions.find_workspace_role("other-ws") is None

    actions.registry()["aws.workspace_role"].ensure(role_params())
    found = actions.find_workspace_role(NS)
    assert found is not None and found["name"] == ROLE and found["tags"]["kf-chatops/request"] == "RREQ1"


# -- removing a role the bot did not make (adopted, or not ours at all) ------------------------------


def hand_made_role(
    aws: AwsEnv, name: str, trust: dict[str, Any], inline: dict[str, Any] | None = None
) -> None:
    iam = aws.client("iam")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=name, PolicyName="bucket", PolicyDocument=json.dumps(
        inline or workspace_iam.bucket_policy(BUCKET)))


def with_subjects(*subjects: str) -> dict[str, Any]:
    trust = json.loads(json.dumps(EXPECTED_TRUST))
    trust["Statement"][0]["Condition"]["StringEquals"][f"{ISSUER}:sub"] = list(subjects)
    return trust


SHARED_TRUSTS: dict[str, dict[str, Any]] = {
    "another namespace's account too": with_subjects(workspace_iam.subject(NS),
                                                    "system:serviceaccount:prod-pipelines:runner"),
    "a CI role too": {**EXPECTED_TRUST, "Statement": [*EXPECTED_TRUST["Statement"], {
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:role/ci-deployer"},
        "Action": "sts:AssumeRole"}]},
    "a wildcard subject": {**EXPECTED_TRUST, "Statement": [{**EXPECTED_TRUST["Statement"][0], "Condition": {
        "StringLike": {f"{ISSUER}:sub": f"system:serviceaccount:{NS}:*"}}}]},
    "another namespace only": with_subjects("system:serviceaccount:prod-pipelines:runner"),
}


def test_a_role_not_made_by_the_bot_is_removed_only_when_the_step_says_adopted(aws: AwsEnv) -> None:
    # A stale record, or a same-named role made by hand since: not the bot's to delete.
    hand_made_role(aws, ROLE, EXPECTED_TRUST)
    remove = aws.actions().registry()["aws.workspace_role.remove"]
    with pytest.raises(PermanentError, match=f"IAM role {ROLE} carries neither"):
        remove.ensure({"name": ROLE, "namespace": NS, "bucket": BUCKET})
    assert role_state(aws) is not None

    adopted = remove.ensure({"name": ROLE, "namespace": NS, "bucket": BUCKET, "adopted": True})
    assert adopted.details == {"deleted": True} and role_state(aws) is None


@pytest.mark.parametrize("shape", sorted(SHARED_TRUSTS))
def test_an_adopted_role_trusting_more_than_the_namespace_is_never_adopted_as_its_own_nor_deleted(
    aws: AwsEnv, shape: str
) -> None:
    hand_made_role(aws, "shared-ml-role", SHARED_TRUSTS[shape])
    actions = aws.actions()
    found = actions.find_workspace_role(NS, "shared-ml-role")
    assert found is not None and found["trusts_namespace"] is False

    with pytest.raises(PermanentError, match="trust policy lets in more than"):
        actions.registry()["aws.workspace_role.remove"].ensure(
            {"name": "shared-ml-role", "namespace": NS, "bucket": BUCKET, "adopted": True})
    assert role_state(aws, "shared-ml-role") is not None


def test_an_adopted_role_with_a_managed_policy_or_other_buckets_is_kept_at_apply(aws: AwsEnv) -> None:
    iam = aws.client("iam")
    actions = aws.actions()
    remove = actions.registry()["aws.workspace_role.remove"]
    step = {"name": "ml-role", "namespace": NS, "bucket": BUCKET, "adopted": True}
    deploy = iam.create_policy(PolicyName="ProdDeploy", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]}))
    arn = deploy["Policy"]["Arn"]

    hand_made_role(aws, "ml-role", EXPECTED_TRUST)
    iam.attach_role_policy(RoleName="ml-role", PolicyArn=arn)
    found = actions.find_workspace_role(NS, "ml-role")
    assert found is not None and found["attached_policies"] == [arn]
    with pytest.raises(PermanentError, match="managed policies are attached"):
        remove.ensure(step)
    roles = iam.list_entities_for_policy(PolicyArn=arn)["PolicyRoles"]
    assert roles == [{"RoleName": "ml-role", "RoleId": found_id(aws, "ml-role")}]
    iam.detach_role_policy(RoleName="ml-role", PolicyArn=arn)

    # s3:* on "*" grants every bucket, other workspaces' included.
    iam.put_role_policy(RoleName="ml-role", PolicyName="wide", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    found = actions.find_workspace_role(NS, "ml-role")
    assert found is not None and "arn:aws:s3:::*" in found["bucket_resources"]
    with pytest.raises(PermanentError, match="grants bucket"):
        remove.ensure(step)
    iam.delete_role_policy(RoleName="ml-role", PolicyName="wide")

    assert remove.ensure(step).details == {"deleted": True} and role_state(aws, "ml-role") is None


def found_id(aws: AwsEnv, name: str) -> str:
    return str(aws.client("iam").get_role(RoleName=name)["Role"]["RoleId"])


def test_a_launch_template_not_made_by_the_bot_is_removed_only_when_the_step_says_adopted(
    aws: AwsEnv,
) -> None:
    ec2 = aws.client("ec2")
    ec2.create_launch_template(LaunchTemplateName="team-a-gpu", LaunchTemplateData={})
    remove = aws.actions().registry()["aws.launch_template.remove"]
    with pytest.raises(PermanentError, match="EC2 launch template team-a-gpu carries neither"):
        remove.ensure({"name": "team-a-gpu"})
    assert ec2.describe_launch_templates()["LaunchTemplates"] != []
    assert remove.ensure({"name": "team-a-gpu", "adopted": True}).details == {"deleted": True}
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert remove.ensure({"name": "team-a-gpu"}).details == {"deleted": False}


# -- the Profile's plugin (fake apiserver, real CRD) --------------------------------------------------


@pytest.fixture
def kf(kube_api_client: client.ApiClient) -> KubeflowActions:
    return KubeflowActions(kube_api_client, KubeflowSettings(namespace_timeout=60.0, poll_interval=2.0,
                                                             kube_api_url="https://api.example:6443"),
                           FakeClock())


def test_the_profile_names_the_role_with_annotate_only_and_the_controller_needs_no_iam(
    apiserver: FakeApiServer, kf: KubeflowActions
) -> None:
    if not crd_schemas_available():
        pytest.skip("../shared/reference is absent: the Profile cannot be checked against its CRD")
    assert apiserver.schema_validation
    params = {"name": NS, "owner": "a@example.com", "hard": {}, "labels": {}, "aws_iam_role": ROLE_ARN,
              "_request": "RREQ1"}

    outcome = kf.registry()["kubeflow.profile"].ensure(params)

    profile = apiserver.get("kubeflow.org/v1", "profiles", NS)
    assert outcome.created and profile is not None
    # kubeflow-reference §1.3, field for field.
    assert profile["spec"]["plugins"] == [
        {"kind": "AwsIamForServiceAccount", "spec": {"awsIamRole": ROLE_ARN, "annotateOnly": True}}
    ]
    account = apiserver.get("v1", "serviceaccounts", "default-editor", NS)
    assert account is not None
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE_ARN
    viewer = apiserver.get("v1", "serviceaccounts", "default-viewer", NS)
    assert viewer is not None
    assert "eks.amazonaws.com/role-arn" not in (viewer["metadata"].get("annotations") or {})
    assert apiserver.profile_iam_calls == []  # annotateOnly: the controller leaves IAM alone

    # Someone drops the plugin by hand; the request's step, run again, puts it back.
    kf.kube.merge_patch(k8s.PROFILE, NS, {"spec": {"plugins": None}})
    assert "plugins" not in (apiserver.get("kubeflow.org/v1", "profiles", NS) or {})["spec"]
    again = kf.registry()["kubeflow.profile"].ensure(params)
    profile = apiserver.get("kubeflow.org/v1", "profiles", NS)
    assert again.created and profile is not None
    assert profile["spec"]["plugins"] == [workspace_iam.profile_plugin(ROLE_ARN)]


def test_without_annotate_only_the_fake_controller_would_call_iam(
    apiserver: FakeApiServer, kf: KubeflowActions
) -> None:
    """The fake's plugin is not written to pass: a plugin without ``annotateOnly`` is one whose
    controller reads and rewrites the role (what stock manifests give it no permission for)."""
    kf.registry()["kubeflow.profile"].ensure({"name": NS, "owner": "a@example.com", "hard": {}, "labels": {}})
    kf.kube.merge_patch(k8s.PROFILE, NS, {"spec": {"plugins": [
        {"kind": "AwsIamForServiceAccount", "spec": {"awsIamRole": ROLE_ARN}}]}})
    assert ("iam:UpdateAssumeRolePolicy", ROLE_ARN, NS) in apiserver.profile_iam_calls


# -- the plan ----------------------------------------------------------------------------------------


def _settings(**workspace: Any) -> CoreSettings:
    return dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, **workspace))


def _plan(settings: CoreSettings, **kind: Any) -> Plan:
    args = {"gpu": 1, **kind}
    return kinds.WorkspaceCreate("team-a", "a@example.com", **args).plan(
        kinds.PlanContext(settings, StaticFacts(), "RPLAN01")
    )


def test_per_workspace_mode_makes_a_role_instead_of_shared_policy_grants() -> None:
    shared = _plan(RUNBOOK)
    isolated = _plan(_settings(workspace_iam="per-workspace", oidc_provider_arn=OIDC))

    assert "aws.iam_resources" in [s.action for s in shared.steps]
    assert "aws.workspace_role" not in [s.action for s in shared.steps]
    assert "aws_iam_role" not in shared.steps[0].params
    actions = [s.action for s in isolated.steps]
    assert "aws.iam_resources" not in actions
    role = isolated.steps[actions.index("aws.workspace_role")]
    assert role.params["namespace"] == NS and role.params["bucket"] == BUCKET
    assert role.params["service_account"] == "default-editor"
    assert isolated.steps[0].params["aws_iam_role"] == ROLE_ARN
    assert "annotateOnly" in isolated.steps[0].summary and ROLE in role.summary


def test_the_plan_warns_until_imds_and_the_node_role_keep_pods_off_the_node_credentials() -> None:
    per_ws = {"workspace_iam": "per-workspace", "oidc_provider_arn": OIDC}
    eks_defaults = _plan(_settings(**per_ws))
    runbook_but_shared_still_set = _plan(_settings(**per_ws, nodegroup=RUNBOOK_NODEGROUP))
    isolated = _plan(_settings(**per_ws, nodegroup=RUNBOOK_NODEGROUP, iam_policy_arns=()))
    hop_two = _plan(_settings(**per_ws, nodegroup=dataclasses.replace(RUNBOOK_NODEGROUP, imds_hop_limit=2),
                              iam_policy_arns=()))
    no_nodegroup = _plan(_settings(**per_ws, nodegroup=RUNBOOK_NODEGROUP, iam_policy_arns=()), gpu=0)

    def isolation(plan: Plan) -> list[str]:
        return [w for w in plan.warnings if "IMDSv2" in w or "KFBOT_IAM_POLICY_ARNS" in w]

    assert any("IMDSv2 with hop limit 1" in w for w in isolation(eks_defaults))
    assert [("KFBOT_IAM_POLICY_ARNS" in w) for w in isolation(runbook_but_shared_still_set)] == [True]
    assert isolation(isolated) == []
    assert any("hop limit 1" in w for w in isolation(hop_two))
    assert any("may not enforce" in w for w in isolation(no_nodegroup))
    assert isolation(_plan(RUNBOOK)) == []  # shared mode: nothing to isolate


def test_per_workspace_mode_needs_the_oidc_provider() -> None:
    with pytest.raises(SettingsError, match="KFBOT_OIDC_PROVIDER_ARN"):
        Settings.from_env({"KFBOT_WORKSPACE_IAM": "per-workspace"})
    with pytest.raises(SettingsError, match="KFBOT_OIDC_PROVIDER_ARN"):
        Settings.from_env(
            {"KFBOT_WORKSPACE_IAM": "per-workspace", "KFBOT_OIDC_PROVIDER_ARN": "arn:aws:iam::1:role/x"}
        )
    core = Settings.from_env({"KFBOT_WORKSPACE_IAM": "per-workspace", "KFBOT_OIDC_PROVIDER_ARN": OIDC}).core
    assert (core.workspace.workspace_iam, core.workspace.oidc_provider_arn) == ("per-workspace", OIDC)
    assert Settings.from_env({}).core.workspace.workspace_iam == "shared"


def test_long_namespaces_get_distinct_role_names_within_iams_limit() -> None:
    a, b = "x" * 62 + "a", "x" * 62 + "b"
    assert len(workspace_iam.role_name(a)) <= 64 and workspace_iam.role_name(a) != workspace_iam.role_name(b)
    with pytest.raises(errors.InvalidInput):
        workspace_iam.role_arn("arn:aws:iam::123:role/not-a-provider", NS)
