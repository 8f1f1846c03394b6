"""Plans built by the request kinds: the desired objects, the runbook naming, the warnings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from handlers import errors, kinds
from handlers.naming import NamingSettings
from handlers.ports import WorkspaceFacts
from handlers.settings import CoreSettings, WorkspaceDefaults
from tests.fakes.facts import StaticFacts
from tests.test_naming import RUNBOOK as RUNBOOK_NAMING

RUNBOOK = CoreSettings(
    naming=RUNBOOK_NAMING,
    workspace=WorkspaceDefaults(
        iam_policy_arns=("arn:aws:iam::123456789012:policy/kubeflow-s3",),
        subnets=("subnet-1", "subnet-2"),
        node_role_arn="arn:aws:iam::123456789012:role/ng",
    ),
)


def ctx(settings: CoreSettings = RUNBOOK, facts: StaticFacts | None = None) -> kinds.PlanContext:
    return kinds.PlanContext(settings, facts or StaticFacts(), "RPLAN01")


def test_runbook_naming_by_configuration_alone() -> None:
    plan = kinds.WorkspaceCreate("myproj", "Alice@Example.com", gpu=1, instance_type="g4dn.xlarge").plan(
        ctx()
    )
    by_action = {s.action: s for s in plan.steps}
    assert by_action["kubeflow.profile"].params["name"] == "aic-ns-myproj-ws"
    assert by_action["kubeflow.profile"].params["owner"] == "alice@example.com"
    assert by_action["aws.bucket"].params["bucket"] == "s3-use1-infra-dev-myproj"
    assert by_action["aws.nodegroup"].params["name"] == "ng-use1-aicond-myproj-ws-g4dn-xlarge"
    assert by_action["aws.nodegroup"].params["labels"] == {"aic-role": "myproj-ws-g4dn-xlarge"}
    assert by_action["aws.iam_resources"].params["resources"] == [
        "arn:aws:s3:::s3-use1-infra-dev-myproj",
        "arn:aws:s3:::s3-use1-infra-dev-myproj/*",
    ]
    assert [s.action for s in plan.steps] == [
        "kubeflow.profile",
        "kubeflow.notebook_activity",
        "dex.user",
        "aws.bucket",
        "aws.iam_resources",
        "aws.nodegroup",
        "kubeflow.poddefault",
    ]


NO_SCHEDULE = "NoSchedule"


def test_gpu_nodegroup_spec_taint_ami_and_poddefault() -> None:
    plan = kinds.WorkspaceCreate("gpu", "a@example.com", gpu=2).plan(ctx())
    ng = next(s for s in plan.steps if s.action == "aws.nodegroup").params
    assert ng["ami_type"] == "AL2023_x86_64_NVIDIA"
    assert ng["taints"] == [
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"},
        {"key": "kf-chatops/dedicated", "value": "aic-ns-gpu-ws", "effect": "NO_SCHEDULE"},
    ]
    assert ng["labels"] == {"aic-role": "gpu-ws-g4dn-xlarge"}  # kept for reports, not for scheduling
    assert ng["scaling"] == {"minSize": 0, "maxSize": 2, "desiredSize": 0}
    pd = next(s for s in plan.steps if s.action == "kubeflow.poddefault").params
    assert pd["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "kf-chatops/dedicated", "operator": "Equal", "value": "aic-ns-gpu-ws", "effect": NO_SCHEDULE},
    ]
    assert set(pd) == {"namespace", "name", "tolerations", "description"}  # no nodeSelector
    profile = plan.steps[0].params
    assert profile["hard"]["requests.nvidia.com/gpu"] == "2"
    assert plan.cost["monthly_max"] > 0
    assert any("Cluster Autoscaler 1.24" in w and "Karpenter does not" in w for w in plan.warnings)
    assert kinds.PINNING_LIMITS in plan.warnings


def test_warns_when_max_nodes_cannot_reach_the_gpu_quota() -> None:
    plan = kinds.WorkspaceCreate("gpu", "a@example.com", gpu=8, nodes_min=1, nodes_max=2).plan(ctx())
    assert any("cannot satisfy the quota of 8 GPUs" in w for w in plan.warnings)


def test_no_nodegroup_without_gpu_or_instance_type_and_no_dex_when_external() -> None:
    settings = CoreSettings(workspace=WorkspaceDefaults(dex_mode="external"))
    plan = kinds.WorkspaceCreate("cpu-only", "a@example.com").plan(ctx(settings))
    assert [s.action for s in plan.steps] == ["kubeflow.profile", "kubeflow.notebook_activity", "aws.bucket"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Team-A"),
        ("name", "a" * 41),
        ("name", "team_a"),
        ("name", "team\na"),
        ("name", "t\u0435am"),  # Cyrillic ie, a lookalike of e
        ("name", "team: {a}"),
        ("name", "-team"),
        ("owner", "not-an-email"),
        ("owner", "a@b"),
        ("memory", "16 Gi"),
        ("memory", "-1Gi"),
        ("cpu", "1e9"),
        ("instance_type", "g4dn.xlarge; rm"),
    ],
)
def test_hostile_input_is_refused_before_any_plan(field: str, value: str) -> None:
    args: dict[str, object] = {"name": "ok", "owner": "a@example.com", field: value}
    with pytest.raises(errors.InvalidInput):
        kinds.WorkspaceCreate(**args)  # type: ignore[arg-type]


def test_names_longer_than_63_after_templating_are_refused() -> None:
    long_prefix = CoreSettings(
        naming=NamingSettings(namespace="a-very-long-platform-prefix-for-{name}-workspace")
    )
    with pytest.raises(errors.InvalidInput):
        kinds.WorkspaceCreate("abcdefghijklmnopqrstuvwxyz0123", "a@example.com").plan(ctx(long_prefix))


def test_existing_workspace_name_is_refused() -> None:
    facts = StaticFacts(workspaces={"taken": WorkspaceFacts("taken", "taken", "x@example.com")})
    with pytest.raises(errors.InvalidInput, match="already exists"):
        kinds.WorkspaceCreate("taken", "a@example.com").plan(ctx(facts=facts))


def _created_workspace() -> WorkspaceFacts:
    create = kinds.WorkspaceCreate("team-a", "owner@example.com", gpu=1).plan(ctx())
    created = {
        s.key: {"action": s.action, "params": dict(s.params)} for s in create.steps if s.action != "dex.user"
    }
    return WorkspaceFacts("team-a", "aic-ns-team-a-ws", "owner@example.com", created=created)


def test_delete_removes_only_what_the_bot_created_in_reverse() -> None:
    facts = StaticFacts(workspaces={"team-a": _created_workspace()})
    plan = kinds.WorkspaceDelete("team-a", "team-a").plan(ctx(facts=facts))
    assert [s.action for s in plan.steps] == [
        "aws.nodegroup.remove",
        "aws.iam_resources.remove",
        "aws.bucket.remove",
        "kubeflow.profile.remove",
    ]  # no dex.user: the bot did not create it
    bucket = next(s for s in plan.steps if s.action == "aws.bucket.remove")
    assert bucket.params["purge_data"] is False
    assert any("Data is kept" in w for w in plan.warnings)


def test_delete_keeps_a_dex_login_still_in_use() -> None:
    ws = _created_workspace()
    ws.created["DexUser/owner@example.com"] = {
        "action": "dex.user",
        "params": {"email": "owner@example.com", "mode": "password-cr"},
    }
    facts = StaticFacts(workspaces={"team-a": ws}, users_elsewhere={"owner@example.com"})
    plan = kinds.WorkspaceDelete("team-a", "team-a", purge_data=True).plan(ctx(facts=facts))
    assert "dex.user.remove" not in [s.action for s in plan.steps]
    assert any("is kept" in w for w in plan.warnings)


def test_delete_needs_the_name_typed_again() -> None:
    with pytest.raises(errors.InvalidInput, match="--confirm team-a"):
        kinds.WorkspaceDelete("team-a", "team-b")


def test_share_quota_token_plans() -> None:
    facts = StaticFacts(
        workspaces={
            "team-a": WorkspaceFacts(
                "team-a",
                "ns-a",
                "o@example.com",
                contributors={"b@example.com": "view"},
                quota={"cpu": "8", "requests.nvidia.com/gpu": "1"},
            )
        }
    )
    share = kinds.Share("team-a", "B@Example.com", role="edit").plan(ctx(facts=facts))
    assert share.steps[0].params == {"namespace": "ns-a", "user": "b@example.com", "role": "edit"}
    assert any("replaced" in w for w in share.warnings)
    quota = kinds.QuotaChange("team-a", gpu="4").plan(ctx(facts=facts))
    assert quota.steps[0].params == {"profile": "ns-a", "hard": {"cpu": "8", "requests.nvidia.com/gpu": "4"}}
    token = kinds.TokenIssue("team-a", timedelta(hours=1), audience="pipelines").plan(ctx(facts=facts))
    assert token.steps[0].params["audiences"] == ["pipelines.kubeflow.org", "https://kubernetes.default.svc"]
    assert token.steps[0].params["name"] == "kfbot-token-rplan01"
    with pytest.raises(errors.InvalidInput, match="owns"):
        kinds.Share("team-a", "o@example.com").plan(ctx(facts=facts))


def test_args_round_trip_through_storage() -> None:
    for kind in (
        kinds.Share("team-a", "b@example.com", duration=__import__("datetime").timedelta(days=7)),
        kinds.TokenIssue("team-a", timedelta(hours=1), read_only=True),
        kinds.WorkspaceCreate("w", "a@example.com", gpu=2, nodes_min=1, nodes_max=3),
    ):
        assert kinds.from_args(kind.KIND, kinds.to_args(kind)) == kind


def test_every_step_that_writes_a_policy_version_says_a_version_may_be_deleted() -> None:
    """IAM keeps five versions of a managed policy: the bot deletes the oldest non-default one to
    make room, and the plan says so wherever a step writes a new default version."""
    note = "a new default version; the oldest non-default version is deleted when the policy holds five"
    created = kinds.WorkspaceCreate("myproj", "a@example.com").plan(ctx())
    (grant,) = [s for s in created.steps if s.action == "aws.iam_resources"]
    assert note in grant.summary
    policy = "arn:aws:iam::123456789012:policy/kubeflow-s3"
    entry = {"action": "aws.iam_resources", "params": {"policy_arn": policy, "resources": ["arn:aws:s3:::b"]}}
    for adopted in (False, True):
        ws = WorkspaceFacts("w", "w", "o@example.com", created={f"IamPolicy/{policy}": {**entry,
                            **({"adopted": True} if adopted else {})}}, pvcs=0)
        deleted = kinds.WorkspaceDelete("w", "w", delete_adopted=True).plan(
            ctx(facts=StaticFacts(workspaces={"w": ws}))
        )
        (removal,) = deleted.steps
        assert note in removal.summary, removal.summary
