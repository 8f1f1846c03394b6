"""Adopting the runbook's hand-made workspace (issue 12, "Adopt") on the live composition.

The workspace comes from ``tests.fakes.runbook`` (fake apiserver + moto, exactly as the runbook
makes it); the bot runs with the runbook's naming settings. Scan finds it; adopt records every
object as adopted and changes nothing; share, quota, token and gpu work on it as on a bot-made
workspace; delete keeps every adopted object unless ``--delete-adopted`` names them, one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bot import blocks
from bot.controls import scan
from handlers import errors, kinds, services
from handlers.actions import ActionName
from handlers.model import Actor, RequestState
from handlers.naming import dex_password_object_name
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.runbook import RUNBOOK_ENV, RunbookWorkspace, seed_runbook_workspace
from tests.live_harness import (
    ADMIN,
    ADMIN2,
    BOB,
    AwsWorld,
    LiveStack,
    default_document,
    live_stack,
    seed_aws,
)

OWNER = Actor("ULEGACY01", "legacy.owner@example.com")
PROFILES = ("kubeflow.org/v1", "profiles")


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture(params=["password-cr", "configmap"])
def dex_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runbook(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld, dex_mode: str
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    with live_stack(sqlite_url, apiserver, world, dex_mode=dex_mode, env=RUNBOOK_ENV) as stack:
        yield stack, seed_runbook_workspace(apiserver, world, dex_mode=dex_mode)


def world_state(stack: LiveStack, made: RunbookWorkspace) -> dict[str, Any]:
    """Everything adoption must leave exactly as it was."""
    eks = stack.aws("eks")
    group = eks.describe_nodegroup(clusterName=made.cluster, nodegroupName=made.nodegroup)["nodegroup"]
    return {
        "objects": {
            (
                o["kind"],
                o["metadata"].get("namespace"),
                o["metadata"]["name"],
                o["metadata"]["resourceVersion"],
            )
            for plural, version in (
                ("profiles", "kubeflow.org/v1"),
                ("rolebindings", "rbac.authorization.k8s.io/v1"),
                ("authorizationpolicies", "security.istio.io/v1beta1"),
                ("configmaps", "v1"),
                ("secrets", "v1"),
                ("passwords", "dex.coreos.com/v1"),
            )
            for o in stack.apiserver.list(version, plural)
        },
        "policies": {arn: default_document(stack, arn) for arn in made.policy_arns},
        "buckets": sorted(b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]),
        "bucket_tags": stack.aws("s3").get_bucket_tagging(Bucket=made.bucket)["TagSet"],
        "nodegroup": (group["scalingConfig"], group["tags"], group["labels"], group.get("taints")),
    }


def adopt(stack: LiveStack, made: RunbookWorkspace, text: str = "") -> None:
    done = stack.apply(ADMIN, f"workspace adopt {made.namespace} {text}".strip(), approver=ADMIN2)
    assert done.state is RequestState.SUCCEEDED, done.error


@pytest.mark.parametrize("dex_mode", ["password-cr"], indirect=True)
def test_scan_finds_the_runbook_workspace_and_its_button_files_the_adoption(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    stack.aws("s3").create_bucket(Bucket="s3-an2-aic-dev-orphan")  # a workspace's bucket, no Profile
    stack.apiserver.create(
        {
            "apiVersion": "dex.coreos.com/v1",
            "kind": "Password",
            "metadata": {"name": dex_password_object_name("left@example.com"), "namespace": "auth"},
            "email": "left@example.com",
            "hash": "JDJ5JDEwJA==",
            "username": "left",
            "userID": "left-1",
        }
    )
    made_by_bot = stack.apply(BOB, "workspace new vision")  # Profile aic-ns-vision-ws, its bucket
    assert made_by_bot.state is RequestState.SUCCEEDED, made_by_bot.error
    groups = stack.backend.scan_unmanaged()
    assert groups is not None
    listed = {o.key for g in groups for o in g.objects}
    assert "Profile/aic-ns-vision-ws" not in listed and "Bucket/s3-an2-aic-dev-vision" not in listed
    with pytest.raises(
        errors.InvalidInput, match="already manages `aic-ns-vision-ws` \\(workspace `vision`\\)"
    ):
        stack.submit(ADMIN, "workspace adopt aic-ns-vision-ws")
    by_label = {g.label: g for g in groups}
    legacy = by_label[made.namespace]
    assert legacy.namespace == made.namespace
    assert {o.key for o in legacy.objects} == {
        f"Profile/{made.namespace}",
        f"DexUser/{made.owner}",
        f"Contributor/{made.contributor}",
        f"Bucket/{made.bucket}",
        *(f"IamPolicy/{arn}" for arn in made.policy_arns),
        f"Nodegroup/{made.nodegroup}",
    }
    assert by_label["orphan"].namespace is None  # grouped by the bucket template's project
    assert [o.name for o in by_label["orphan"].objects] == ["s3-an2-aic-dev-orphan"]
    assert [o.name for o in by_label["Dex logins"].objects] == ["left@example.com"]  # nobody's login

    with pytest.raises(errors.Forbidden):
        scan(stack.backend, OWNER)
    _, message = blocks.scan_message(groups)
    (adopt_button,) = [
        e
        for b in message
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == kinds.ADOPT_BUTTON
    ]
    kind = kinds.adopt_from_button(adopt_button["value"])
    with pytest.raises(errors.Forbidden):
        services.submit(stack.core, OWNER, kind, idempotency_key="button:owner")
    filed = services.submit(stack.core, ADMIN, kind, idempotency_key="button:admin").request
    assert filed.state is RequestState.PENDING
    assert filed.plan == stack.kind(ADMIN, f"workspace adopt {made.namespace}").plan(
        kinds.PlanContext(stack.core.settings, stack.core.facts, filed.id)
    )
    stack.approve(filed.id, ADMIN2)
    stack.run()
    after = stack.backend.scan_unmanaged()
    assert after is not None and made.namespace not in {g.label for g in after}


def test_adopt_records_each_object_as_adopted_and_changes_nothing(
    runbook: tuple[LiveStack, RunbookWorkspace], dex_mode: str
) -> None:
    stack, made = runbook
    before = world_state(stack, made)
    for actor in (OWNER, BOB):  # not admins: not even the Profile's owner
        with pytest.raises(errors.Forbidden):
            stack.submit(actor, f"workspace adopt {made.namespace}")
    with pytest.raises(errors.NotFound, match="no Kubeflow Profile"):
        stack.submit(ADMIN, "workspace adopt no-such-ns")
    for platform in ("kubeflow", "kube-system", "istio-system", "auth", "knative-serving"):
        with pytest.raises(errors.InvalidInput, match="belongs to the platform"):
            stack.submit(ADMIN, f"workspace adopt {platform}")
    assert stack.requests() == []

    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    assert request.state is RequestState.PENDING  # always an admin's decision
    keys = [s.key for s in request.plan.steps]
    expected = {
        f"Profile/{made.namespace}": ActionName.PROFILE_ADOPT,
        f"DexUser/{made.owner}": ActionName.DEX_ADOPT,
        f"Contributor/{made.contributor}": ActionName.PROFILE_ADOPT,
        f"Bucket/{made.bucket}": ActionName.AWS_ADOPT,
        **{f"IamPolicy/{arn}": ActionName.AWS_ADOPT for arn in made.policy_arns},
        f"Nodegroup/{made.nodegroup}": ActionName.AWS_ADOPT,
    }
    assert {s.key: s.action for s in request.plan.steps} == expected and len(keys) == len(expected)
    assert all("\n" not in s.summary and s.summary.startswith("adopt ") for s in request.plan.steps)
    nodegroup_step = next(s for s in request.plan.steps if s.key.startswith("Nodegroup/"))
    assert "found by tag Namespace" in nodegroup_step.summary
    login_step = next(s for s in request.plan.steps if s.key.startswith("DexUser/"))
    assert ("Password object" if dex_mode == "password-cr" else "inline hash") in login_step.summary
    assert any(f"recorded owner: {made.owner}, the Profile's owner" in w for w in request.plan.warnings)

    with pytest.raises(errors.Forbidden):  # the Profile's owner is whom it is for
        stack.approve(request.id, Actor("UADMOWN", made.owner, is_admin=True))
    stack.approve(request.id, ADMIN2)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED

    assert world_state(stack, made) == before
    (record,) = stack.backend.workspaces()
    assert (record.name, record.namespace, record.owner) == (made.namespace, made.namespace, made.owner)
    assert set(record.created) == set(expected) - {f"Contributor/{made.contributor}"}
    # The contributor the runbook added is a recorded grant, not an object of the workspace.
    adopted = stack.backend.facts.workspace(made.namespace)
    assert adopted is not None and adopted.recorded_grants == {made.contributor: "edit"}
    assert all(entry["adopted"] is True for entry in record.created.values())
    assert record.created[f"Nodegroup/{made.nodegroup}"]["action"] == ActionName.NODEGROUP
    assert record.created[f"Profile/{made.namespace}"]["params"]["hard"] == dict(made.quota)

    again = stack.kind(ADMIN, f"workspace adopt {made.namespace}")
    with pytest.raises(errors.InvalidInput, match="already manages"):
        stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    assert again.namespace == made.namespace  # type: ignore[attr-defined]


@pytest.mark.parametrize("dex_mode", ["password-cr"], indirect=True)
def test_share_quota_token_and_gpu_work_on_the_adopted_workspace(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    with pytest.raises(errors.NotFound, match="no workspace named"):  # day one: the bot knows nothing
        stack.submit(OWNER, f"quota {made.namespace} --cpu 18")
    gpu_group = "ng-an2-aicond-proj1-ws-g4dn-xlarge"
    stack.aws("eks").create_nodegroup(  # the runbook's GPU nodegroup, tainted as EKS GPU groups are
        clusterName=made.cluster,
        nodegroupName=gpu_group,
        subnets=list(stack.world.subnets),
        nodeRole=stack.world.node_role_arn,
        instanceTypes=["g4dn.xlarge"],
        amiType="AL2_x86_64_GPU",
        scalingConfig={"minSize": 0, "maxSize": 2, "desiredSize": 0},
        taints=[{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
        tags={"alpha.eksctl.io/nodegroup-name": gpu_group, "Namespace": made.namespace},
    )
    adopt(stack, made)

    share = stack.apply(OWNER, f"share {made.namespace} {BOB.email} --role view")
    assert share.state is RequestState.SUCCEEDED, share.error
    assert share.decided_by is None or share.decided_by != ADMIN.user_id  # the owner's self-service
    bindings = stack.apiserver.list("rbac.authorization.k8s.io/v1", "rolebindings", made.namespace)
    assert any(b["metadata"].get("annotations", {}).get("user") == BOB.email for b in bindings)

    quota = stack.apply(OWNER, f"quota {made.namespace} --cpu 18")
    assert quota.state is RequestState.SUCCEEDED, quota.error
    profile = stack.apiserver.get(*PROFILES, made.namespace)
    assert profile is not None and profile["spec"]["resourceQuotaSpec"]["hard"]["cpu"] == "18"

    token = stack.apply(OWNER, f"token {made.namespace} --ttl 1h")
    assert token.state is RequestState.SUCCEEDED, token.error
    accounts = stack.apiserver.list("v1", "serviceaccounts", made.namespace)
    assert any((a["metadata"].get("labels") or {}).get("kf-chatops/token-id") == token.id for a in accounts)

    up = stack.apply(OWNER, f"gpu up {made.namespace} 1")
    assert up.state is RequestState.SUCCEEDED, up.error
    group = stack.aws("eks").describe_nodegroup(clusterName=made.cluster, nodegroupName=gpu_group)
    assert group["nodegroup"]["scalingConfig"]["desiredSize"] == 1
    down = stack.apply(OWNER, f"gpu down {made.namespace}")
    assert down.state is RequestState.SUCCEEDED, down.error
    group = stack.aws("eks").describe_nodegroup(clusterName=made.cluster, nodegroupName=gpu_group)
    assert group["nodegroup"]["scalingConfig"]["desiredSize"] == 0
    assert "kf-chatops/request" not in group["nodegroup"]["tags"]  # still the runbook's, unmarked


@pytest.mark.parametrize("dex_mode", ["configmap"], indirect=True)
def test_delete_keeps_every_adopted_object_unless_named(runbook: tuple[LiveStack, RunbookWorkspace]) -> None:
    stack, made = runbook
    adopt(stack, made)
    before = world_state(stack, made)
    request = stack.submit(ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace}")
    assert request.plan.steps == ()
    (kept,) = [w for w in request.plan.warnings if w.startswith("Kept, because they were adopted")]
    for key in (f"Profile/{made.namespace}", f"Bucket/{made.bucket}", f"Nodegroup/{made.nodegroup}"):
        assert f"`{key}`" in kept
    stack.approve(request.id, ADMIN2)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED
    assert world_state(stack, made) == before
    assert stack.backend.workspaces() == []  # only the record is forgotten

    # Adopted again, for someone else: the card says whose it becomes, and she may not approve it.
    again = stack.submit(ADMIN, f"workspace adopt {made.namespace} --owner carol@example.com")
    assert any(
        "recorded owner: carol@example.com, given with --owner; the Profile names legacy.owner@example.com"
        in w
        for w in again.plan.warnings
    )
    with pytest.raises(errors.Forbidden):
        stack.approve(again.id, Actor("UCAROL", "carol@example.com", is_admin=True))
    stack.approve(again.id, ADMIN2)
    stack.run()
    assert [r.owner for r in stack.backend.workspaces()] == ["carol@example.com"]
    assert stack.backend.facts.workspace(made.namespace) is not None  # the audit log vouches for her

    named = stack.submit(
        ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace} --delete-adopted"
    )
    (record,) = stack.backend.workspaces()
    assert sorted(s.key for s in named.plan.steps) == sorted(record.created)
    assert all(s.summary.startswith(("remove adopted ", "remove the adopted ")) for s in named.plan.steps)
    assert not [w for w in named.plan.warnings if w.startswith("Kept, because")]
