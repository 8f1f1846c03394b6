"""The runbook's nodegroup fields against moto: a launch template carries the gp3 disk, IMDS options
and instance tags; EKS (and moto) take ``diskSize`` only without one; both are made, recorded and
deleted with the nodegroup as idempotent steps, through the plan ``workspace.create`` makes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.settings import Settings, SettingsError
from handlers import errors, kinds
from handlers.actions import PARAMS, ActionName, NodegroupParams
from handlers.errors import PermanentError
from handlers.plan import Plan, StepOutcome
from handlers.ports import WorkspaceFacts
from handlers.settings import RUNBOOK_NODEGROUP, CoreSettings, NodegroupStyle
from provisioning.aws import MARK_TAG, ROOT_DEVICE
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.facts import StaticFacts
from tests.test_aws_actions import CLUSTER, TAGS, describe, make_cluster, nodegroup_params
from tests.test_kinds import RUNBOOK

pytest_plugins = ["tests.fakes.aws_fixtures"]

NAME = "ws-team-a-gpu"


def template_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": NAME,
        "disk_size": 50,
        "disk_type": "gp3",
        "imds_tokens": "required",
        "imds_hop_limit": 1,
        "instance_tags": TAGS,
        "_request": "RREQ1",
    }
    params.update(overrides)
    return params


def launch_template(aws: AwsEnv, name: str = NAME) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the template, its default version's data) as EC2 holds them, or None."""
    ec2 = aws.client("ec2")
    try:
        template = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidLaunchTemplateName.NotFoundException"
        return None
    versions = ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Default"])
    return template, versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def _tags(items: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items}


def test_the_launch_template_has_the_runbook_disk_imds_and_tags_and_a_rerun_makes_no_second(
    aws: AwsEnv,
) -> None:
    action = aws.actions().registry()["aws.launch_template"]

    first = action.ensure(template_params())
    again = action.ensure(template_params())

    found = launch_template(aws)
    assert found is not None
    template, data = found
    assert (first.created, again.created) == (True, True)  # the rerun finds its own mark
    assert first.details["id"] == template["LaunchTemplateId"]
    assert len(aws.client("ec2").describe_launch_templates()["LaunchTemplates"]) == 1
    assert data["BlockDeviceMappings"] == [
        {
            "DeviceName": ROOT_DEVICE,
            "Ebs": {"DeleteOnTermination": True, "Encrypted": True, "VolumeSize": 50, "VolumeType": "gp3"},
        }
    ]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    by_kind = {spec["ResourceType"]: _tags(spec["Tags"]) for spec in data["TagSpecifications"]}
    # Cost Explorer sees the workspace on instances and volumes; the mark stays on the template.
    assert by_kind["instance"] == TAGS and by_kind["volume"] == TAGS
    assert _tags(template["Tags"]) == {**TAGS, MARK_TAG: "RREQ1"}


def test_a_launch_template_someone_else_made_is_refused_and_left_alone(aws: AwsEnv) -> None:
    aws.client("ec2").create_launch_template(LaunchTemplateName=NAME, LaunchTemplateData={})
    action = aws.actions().registry()["aws.launch_template"]

    with pytest.raises(PermanentError, match="already exists and was not made by this request"):
        action.ensure(template_params())

    found = launch_template(aws)
    assert found is not None and "BlockDeviceMappings" not in found[1]


def test_undo_and_remove_delete_the_template_and_treat_absent_as_done(aws: AwsEnv) -> None:
    registry = aws.actions().registry()
    outcome = registry["aws.launch_template"].ensure(template_params())

    registry["aws.launch_template"].undo(template_params(), StepOutcome(created=False))
    assert launch_template(aws) is not None
    registry["aws.launch_template"].undo(template_params(), outcome)
    assert launch_template(aws) is None

    registry["aws.launch_template"].ensure(template_params())
    remove = registry["aws.launch_template.remove"]
    assert remove.ensure({"name": NAME}).details == {"deleted": True}
    assert remove.ensure({"name": NAME}).details == {"deleted": False}


def test_a_nodegroup_starts_from_its_launch_template_and_sends_no_disk_size(aws: AwsEnv) -> None:
    make_cluster(aws)
    registry = aws.actions().registry()
    registry["aws.launch_template"].ensure(template_params())

    registry["aws.nodegroup"].ensure(nodegroup_params(launch_template=NAME, _request="RREQ1"))

    nodegroup = describe(aws)
    assert nodegroup is not None
    template = launch_template(aws)
    assert template is not None
    assert nodegroup["launchTemplate"] == {
        "name": NAME, "id": template[0]["LaunchTemplateId"], "version": "1"
    }
    # moto fills in its default (20) when none was sent; it refuses one beside a template (below).
    assert str(nodegroup["diskSize"]) == "20"


def test_without_a_launch_template_the_disk_size_goes_to_eks(aws: AwsEnv) -> None:
    make_cluster(aws)
    aws.actions().registry()["aws.nodegroup"].ensure(nodegroup_params(disk_size=50))

    nodegroup = describe(aws)
    assert nodegroup is not None and int(nodegroup["diskSize"]) == 50
    assert "launchTemplate" not in nodegroup


def test_eks_refuses_a_disk_size_beside_a_launch_template(aws: AwsEnv) -> None:
    """The rule the plan keeps (never both), as EKS and moto enforce it."""
    make_cluster(aws)
    aws.actions().registry()["aws.launch_template"].ensure(template_params())
    params = nodegroup_params()
    with pytest.raises(ClientError) as refused:
        aws.client("eks").create_nodegroup(
            clusterName=CLUSTER,
            nodegroupName=NAME,
            subnets=params["subnets"],
            nodeRole=params["node_role"],
            launchTemplate={"name": NAME},
            diskSize=50,
        )
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException"
    assert describe(aws) is None


def _plan(style: NodegroupStyle) -> Plan:
    settings = dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, nodegroup=style))
    kind = kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1)
    return kind.plan(kinds.PlanContext(settings, StaticFacts(), "RPLAN01"))


styles = st.builds(
    NodegroupStyle,
    disk_size=st.none() | st.integers(1, 16384),
    disk_type=st.sampled_from(["", "gp2", "gp3", "io1", "io2"]),
    eksctl_labels=st.booleans(),
    imds_tokens=st.sampled_from(["", "required", "optional"]),
    imds_hop_limit=st.none() | st.integers(1, 64),
    instance_tags=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(style=styles)
def test_no_style_plans_a_disk_size_beside_a_launch_template(style: NodegroupStyle) -> None:
    """Whatever the settings: never ``diskSize`` beside a launch template (EKS refuses it, above),
    the template step comes right before the nodegroup's and is the one it names, and both steps'
    params parse into their types."""
    plan = _plan(style)
    actions = [s.action for s in plan.steps]
    nodegroup = next(s for s in plan.steps if s.action == "aws.nodegroup")
    assert not ("disk_size" in nodegroup.params and "launch_template" in nodegroup.params)
    assert ("aws.launch_template" in actions) == style.needs_launch_template()
    if style.needs_launch_template():
        template = plan.steps[actions.index("aws.nodegroup") - 1]
        assert template.action == "aws.launch_template"
        assert template.params["name"] == nodegroup.params["launch_template"]
        PARAMS[ActionName.LAUNCH_TEMPLATE].parse(template.params)
    parsed = PARAMS[ActionName.NODEGROUP].parse(nodegroup.params)
    assert isinstance(parsed, NodegroupParams)
    if style.eksctl_labels:
        assert parsed.labels["alpha.eksctl.io/nodegroup-name"] == parsed.name
        assert parsed.tags["alpha.eksctl.io/nodegroup-type"] == "managed"
    else:
        assert not any(k.startswith("alpha.eksctl.io/") for k in (*parsed.labels, *parsed.tags))


def test_the_runbook_nodegroup_through_its_plan_carries_the_eksctl_labels(aws: AwsEnv) -> None:
    make_cluster(aws)
    plan = _plan(RUNBOOK_NODEGROUP)
    registry = aws.actions().registry()
    for step in plan.steps:
        if step.action in ("aws.launch_template", "aws.nodegroup"):
            registry[step.action].ensure({**step.params, "_request": "RPLAN01"})
    name = str(next(s for s in plan.steps if s.action == "aws.nodegroup").params["name"])
    made = describe(aws, name)
    assert made is not None and made["status"] == "ACTIVE"
    assert made["labels"]["alpha.eksctl.io/cluster-name"] == "kubeflow"
    assert made["labels"]["alpha.eksctl.io/nodegroup-name"] == name
    assert made["tags"]["alpha.eksctl.io/nodegroup-type"] == "managed"
    assert made["launchTemplate"]["name"] == name


def test_create_then_delete_walks_the_template_after_the_nodegroup(aws: AwsEnv) -> None:
    """The registry records the template beside the nodegroup; the delete plan removes the
    nodegroup first (EC2 keeps a template a nodegroup still uses) and then the template."""
    make_cluster(aws)
    create = _plan(RUNBOOK_NODEGROUP)
    registry = aws.actions().registry()
    created: dict[str, Any] = {}
    for step in create.steps:
        if step.action.startswith("aws.") and step.action != "aws.iam_resources":
            outcome = registry[step.action].ensure({**step.params, "_request": "RPLAN01"})
            assert outcome.created
            created[step.key] = {"action": step.action, "params": dict(step.params)}
    name = str(next(s for s in create.steps if s.action == "aws.nodegroup").params["name"])
    assert launch_template(aws, name) is not None and describe(aws, name) is not None

    ws = WorkspaceFacts("team-a", "aic-ns-team-a-ws", "a@example.com", created=created, pvcs=0)
    delete = kinds.WorkspaceDelete("team-a", "team-a", purge_data=True).plan(
        kinds.PlanContext(RUNBOOK, StaticFacts(workspaces={"team-a": ws}), "RDEL01")
    )
    order = [s.action for s in delete.steps]
    assert order.index("aws.nodegroup.remove") < order.index("aws.launch_template.remove")
    for step in delete.steps:
        if step.action.startswith("aws."):
            registry[step.action].ensure({**step.params, "_request": "RDEL01"})
    assert describe(aws, name) is None and launch_template(aws, name) is None


def test_runbook_settings_from_the_environment() -> None:
    assert Settings.from_env({}).core.workspace.nodegroup == NodegroupStyle()
    runbook = Settings.from_env({"KFBOT_NODEGROUP_STYLE": "runbook", "KFBOT_NODE_INSTANCE_TAGS": "off"})
    assert runbook.core.workspace.nodegroup == dataclasses.replace(RUNBOOK_NODEGROUP, instance_tags=False)
    assert isinstance(runbook.core, CoreSettings)


# -- GPU types and --gpu (pure) ------------------------------------------------------------------------


def _create(**kind: Any) -> Plan:
    return kinds.WorkspaceCreate("team-a", "a@example.com", **kind).plan(
        kinds.PlanContext(RUNBOOK, StaticFacts(), "RPLAN01")
    )


@pytest.mark.parametrize("instance_type", ["m5.large", "c6i.xlarge", "r5.2xlarge"])
def test_gpus_on_a_type_without_gpus_are_refused_with_the_reason(instance_type: str) -> None:
    with pytest.raises(errors.InvalidInput, match=f"{instance_type} has none") as refused:
        _create(gpu=1, instance_type=instance_type)
    assert refused.value.field == "gpu"


@pytest.mark.parametrize(
    ("instance_type", "nodes", "quota"),
    [("g4dn.xlarge", (0, 2), 2), ("g4dn.12xlarge", (0, 3), 12), ("p4d.24xlarge", (1, 1), 8)],
)
def test_a_gpu_type_without_gpu_gets_gpus_per_node_times_max_nodes(
    instance_type: str, nodes: tuple[int, int], quota: int
) -> None:
    plan = _create(instance_type=instance_type, nodes_min=nodes[0], nodes_max=nodes[1])
    assert plan.steps[0].params["hard"]["requests.nvidia.com/gpu"] == str(quota)  # type: ignore[index]
    assert any("no `--gpu` was given" in w and f"= {quota}" in w for w in plan.warnings)
    # An explicit --gpu is kept as asked (a CPU type with none stays at 0 and gets no note).
    assert _create(gpu=1, instance_type=instance_type).steps[0].params["hard"][  # type: ignore[index]
        "requests.nvidia.com/gpu"] == "1"
    cpu = _create(instance_type="m5.large")
    assert cpu.steps[0].params["hard"]["requests.nvidia.com/gpu"] == "0"  # type: ignore[index]
    assert not any("no `--gpu` was given" in w for w in cpu.warnings)


def test_the_plan_shows_the_runbook_fields() -> None:
    settings = dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace,
                                                                          nodegroup=RUNBOOK_NODEGROUP))
    plan = kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1).plan(
        kinds.PlanContext(settings, StaticFacts(), "RPLAN01"))
    summary = next(s.summary for s in plan.steps if s.action == "aws.nodegroup")
    for words in ("eksctl labels and tags", "50 GiB gp3 root volume", "IMDS tokens required, hop limit 1",
                  "tagged `kf-chatops/workspace`"):
        assert words in summary


def test_a_resize_to_another_type_keeps_the_eksctl_fields_under_the_new_name() -> None:
    settings = dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace,
                                                                          nodegroup=RUNBOOK_NODEGROUP))
    create = kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1).plan(
        kinds.PlanContext(settings, StaticFacts(), "RPLAN01"))
    created = {s.key: {"action": s.action, "params": dict(s.params)} for s in create.steps}
    old = next(s.params for s in create.steps if s.action == "aws.nodegroup")
    ws = WorkspaceFacts("team-a", "aic-ns-team-a-ws", "a@example.com", created=created, pvcs=0)
    resize = kinds.WorkspaceResize("team-a", 0, 2, "g5.xlarge").plan(
        kinds.PlanContext(settings, StaticFacts(workspaces={"team-a": ws}), "RRES01"))
    new = next(s.params for s in resize.steps if s.action == "aws.nodegroup")
    assert new["name"] != old["name"]
    labels, tags = new["labels"], new["tags"]
    assert isinstance(labels, dict) and isinstance(tags, dict)
    assert labels["alpha.eksctl.io/nodegroup-name"] == tags["alpha.eksctl.io/nodegroup-name"] == new["name"]
    assert labels["alpha.eksctl.io/cluster-name"] == "kubeflow"
    assert tags["alpha.eksctl.io/nodegroup-type"] == "managed"
    assert new["launch_template"] == old["launch_template"]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KFBOT_NODE_DISK_SIZE": "nan"}, "KFBOT_NODE_DISK_SIZE"),
        ({"KFBOT_NODE_DISK_SIZE": "0"}, "KFBOT_NODE_DISK_SIZE"),
        ({"KFBOT_NODE_DISK_SIZE": "50Gi"}, "KFBOT_NODE_DISK_SIZE"),
        ({"KFBOT_NODE_DISK_TYPE": "gp3; rm -rf"}, "KFBOT_NODE_DISK_TYPE"),
        ({"KFBOT_NODE_IMDS_HOP_LIMIT": "0"}, "KFBOT_NODE_IMDS_HOP_LIMIT"),
        ({"KFBOT_NODE_IMDS_TOKENS": "v2"}, "KFBOT_NODE_IMDS_TOKENS"),
        ({"KFBOT_NODE_EKSCTL_LABELS": "yes"}, "KFBOT_NODE_EKSCTL_LABELS"),
        ({"KFBOT_NODEGROUP_STYLE": "eksctl"}, "KFBOT_NODEGROUP_STYLE"),
        ({"KFBOT_WORKSPACE_IAM": "per-user"}, "KFBOT_WORKSPACE_IAM"),
        ({"KFBOT_OIDC_PROVIDER_ARN": 'arn:aws:iam::123456789012:oidc-provider/x"}]'},
         "KFBOT_OIDC_PROVIDER_ARN"),
    ],
)
def test_hostile_settings_stop_start_up_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert variable in str(refused.value)
