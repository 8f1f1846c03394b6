"""Adopted objects that ``workspace delete --delete-adopted`` names are removed in the shape the
runbook made them, or listed as "kept: <why>" (issue 12; the gaps the first adoption left).

On the live composition (fake apiserver + moto) seeded by ``tests.fakes.runbook``: the bucket's
ARNs leave the runbook's own statement of each shared policy (in a new version, within IAM's five),
the inline-hash or ``hashFromEnv`` ``staticPasswords`` entry leaves Dex's config, and the
workspace's IAM role (found through the Profile's ``AwsIamForServiceAccount`` plugin) is adopted
and removed as a named step. A role that also grants another workspace's bucket, and a ``Deny``
statement naming the bucket, stay, and the plan says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from handlers import kinds, workspace_iam
from handlers.actions import PARAMS, ActionName
from handlers.errors import PermanentError
from handlers.model import RequestState
from handlers.ports import WorkspaceFacts
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.facts import StaticFacts
from tests.fakes.runbook import RUNBOOK_ENV, RunbookWorkspace, seed_runbook_workspace
from tests.live_harness import (
    ADMIN,
    ADMIN2,
    DEX_NAMESPACE,
    AwsWorld,
    LiveStack,
    default_document,
    live_stack,
    seed_aws,
)
from tests.test_kinds import RUNBOOK

PROVIDER = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.ap-northeast-2.amazonaws.com/id/ABCDEF0123"
ROLE = "aic-proj1-notebooks"
"""The runbook's hand-made IRSA role: not the bot's name for it, so only the plugin finds it."""
DENY_SID = "NoDeleteOfProj1Archive"
Seeded = tuple[LiveStack, RunbookWorkspace]


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


def _stack(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld, *, hash_from_env: bool
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    with live_stack(sqlite_url, apiserver, world, dex_mode="configmap", env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode="configmap", hash_from_env=hash_from_env)
        yield stack, made


@pytest.fixture
def runbook(sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld) -> Iterator[Seeded]:
    yield from _stack(sqlite_url, apiserver, world, hash_from_env=False)


def _seed_role(stack: LiveStack, made: RunbookWorkspace, buckets: tuple[str, ...]) -> None:
    """The role as a team following Kubeflow's AWS docs makes it by hand, set on the Profile."""
    iam = stack.aws("iam")
    arn = iam.create_role(
        RoleName=ROLE,
        AssumeRolePolicyDocument=json.dumps(workspace_iam.trust_policy(PROVIDER, made.namespace)),
    )["Role"]["Arn"]
    for bucket in buckets:
        iam.put_role_policy(
            RoleName=ROLE, PolicyName=f"bucket-{bucket}",
            PolicyDocument=json.dumps(workspace_iam.bucket_policy(bucket)),
        )
    profile = stack.apiserver.get("kubeflow.org/v1", "profiles", made.namespace)
    assert profile is not None
    profile["spec"]["plugins"] = [workspace_iam.profile_plugin(arn)]
    stack.apiserver.seed(profile)


def _add_deny(stack: LiveStack, policy_arn: str, bucket: str) -> None:
    document = default_document(stack, policy_arn)
    document["Statement"].append(
        {"Sid": DENY_SID, "Effect": "Deny", "Action": "s3:DeleteBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    )
    stack.aws("iam").create_policy_version(
        PolicyArn=policy_arn, PolicyDocument=json.dumps(document), SetAsDefault=True
    )


def _fill_versions(stack: LiveStack, policy_arn: str) -> None:
    """IAM's limit: five versions. The removal must make room, as the bot's own edits do."""
    iam = stack.aws("iam")
    document = json.dumps(default_document(stack, policy_arn))
    while len(iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]) < 5:
        iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=document, SetAsDefault=False)


def _static_emails(stack: LiveStack) -> list[str]:
    cm = stack.apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
    assert cm is not None
    return [e["email"] for e in yaml.safe_load(cm["data"]["config.yaml"]).get("staticPasswords") or []]


def _bucket_arns(document: dict[str, Any], bucket: str) -> list[tuple[str, str]]:
    return [
        (str(s.get("Sid")), str(s["Effect"]))
        for s in document["Statement"]
        for r in (s.get("Resource") if isinstance(s.get("Resource"), list) else [s.get("Resource")])
        if str(r).startswith(f"arn:aws:s3:::{bucket}")
    ]


def _adopt(stack: LiveStack, made: RunbookWorkspace) -> None:
    done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
    assert done.state is RequestState.SUCCEEDED, done.error


def _delete_adopted(stack: LiveStack, made: RunbookWorkspace) -> Any:
    return stack.submit(
        ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace} --delete-adopted --purge-data"
    )


def test_delete_adopted_removes_the_runbook_shapes_and_the_adopted_role(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    _seed_role(stack, made, (made.bucket,))
    denied, crowded = made.policy_arns[0], made.policy_arns[-1]
    _add_deny(stack, denied, made.bucket)

    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    (role_step,) = [s for s in request.plan.steps if s.key.startswith("IamRole/")]
    assert (role_step.key, role_step.action) == (f"IamRole/{ROLE}", ActionName.AWS_ADOPT)
    assert role_step.summary == (
        f"adopt IAM role `{ROLE}` (found by the Profile's AwsIamForServiceAccount plugin)"
    )
    stack.approve(request.id, ADMIN2)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED
    (record,) = stack.backend.workspaces()
    role_entry = record.created[f"IamRole/{ROLE}"]
    assert role_entry["adopted"] is True and role_entry["action"] == ActionName.WORKSPACE_ROLE
    assert stack.aws("iam").get_role(RoleName=ROLE)  # adoption changed nothing

    kept = stack.submit(ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace}")
    assert kept.plan.steps == ()
    assert any(f"`IamRole/{ROLE}`" in w for w in kept.plan.warnings if w.startswith("Kept, because"))
    # Only the record was forgotten: adopt again, then name the adopted objects.
    stack.approve(kept.id, ADMIN2)
    stack.run()
    _adopt(stack, made)

    _fill_versions(stack, crowded)
    named = _delete_adopted(stack, made)
    steps = {s.key: s for s in named.plan.steps}
    assert steps[f"IamRole/{ROLE}"].action == ActionName.WORKSPACE_ROLE_REMOVE
    assert steps[f"IamRole/{ROLE}"].summary.startswith(f"remove adopted IAM role `{ROLE}`")
    for arn in made.policy_arns:
        summary = steps[f"IamPolicy/{arn}"].summary
        assert f"Allow statement(s) `{made.policy_sid}`, as written by hand" in summary
    assert "inline hash" in steps[f"DexUser/{made.owner}"].summary
    denial = f"kept: Deny statement(s) `{DENY_SID}` of IAM policy `{denied.rsplit('/', 1)[-1]}`"
    assert any(w.startswith(denial) for w in named.plan.warnings)
    assert any("kustomize brings the login back" in w for w in named.plan.warnings)

    stack.approve(named.id, ADMIN2)
    stack.run()
    done = stack.request(named.id)
    assert done.state is RequestState.SUCCEEDED, done.error
    iam = stack.aws("iam")
    assert ROLE not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    for arn in made.policy_arns:
        left = _bucket_arns(default_document(stack, arn), made.bucket)
        assert left == ([(DENY_SID, "Deny")] if arn == denied else [])
        assert len(iam.list_policy_versions(PolicyArn=arn)["Versions"]) <= 5
    assert made.owner not in _static_emails(stack)
    assert made.bucket not in [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]
    assert stack.backend.workspaces() == []


def test_a_role_shared_with_other_principals_is_kept_by_delete_adopted(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    _seed_role(stack, made, (made.bucket,))
    iam = stack.aws("iam")
    shared = workspace_iam.trust_policy(PROVIDER, made.namespace)
    shared["Statement"].append({"Effect": "Allow", "Action": "sts:AssumeRole",
                                "Principal": {"AWS": "arn:aws:iam::123456789012:role/ci-deployer"}})
    iam.update_assume_role_policy(RoleName=ROLE, PolicyDocument=json.dumps(shared))
    _adopt(stack, made)
    named = _delete_adopted(stack, made)
    assert f"IamRole/{ROLE}" not in {s.key for s in named.plan.steps}
    assert any(w.startswith(f"kept: IAM role `{ROLE}`, because its trust policy does not name this "
                            "namespace's default-editor alone") for w in named.plan.warnings)
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED
    assert iam.get_role(RoleName=ROLE)


@pytest.mark.parametrize("whose", ["node", "bot"])
def test_the_node_role_and_the_bots_own_role_are_never_adopted(
    runbook: tuple[LiveStack, RunbookWorkspace], monkeypatch: pytest.MonkeyPatch, whose: str
) -> None:
    stack, made = runbook
    _seed_role(stack, made, (made.bucket,))
    arn = stack.aws("iam").get_role(RoleName=ROLE)["Role"]["Arn"]
    discoverer = stack.backend.facts.discoverer  # type: ignore[attr-defined]
    if whose == "node":
        workspace = dataclasses.replace(discoverer.core.workspace, node_role_arn=arn)
        monkeypatch.setattr(discoverer, "core", dataclasses.replace(discoverer.core, workspace=workspace))
    else:
        monkeypatch.setattr(discoverer.aws, "own_role_arn", lambda: arn)
    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    assert not [s for s in request.plan.steps if s.key.startswith("IamRole/")]
    assert f"Bucket/{made.bucket}" in {s.key for s in request.plan.steps}


def test_a_role_that_gained_a_managed_policy_since_adoption_is_refused_at_apply(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    _seed_role(stack, made, (made.bucket,))
    iam = stack.aws("iam")
    _adopt(stack, made)
    # Adopted while it served only this workspace; a CI pipeline attached a policy since.
    deploy = iam.create_policy(PolicyName="ProdDeploy", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]}
    ))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=deploy)
    named = _delete_adopted(stack, made)
    step = {s.key: s for s in named.plan.steps}[f"IamRole/{ROLE}"]
    assert step.params["adopted"] is True
    stack.approve(named.id, ADMIN2)
    stack.run()
    failed = stack.request(named.id)
    assert failed.state is not RequestState.SUCCEEDED
    assert "managed policies are attached" in str(failed.error)
    assert [r["RoleName"] for r in iam.list_entities_for_policy(PolicyArn=deploy)["PolicyRoles"]] == [ROLE]


@pytest.fixture
def from_env(sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld) -> Iterator[Seeded]:
    yield from _stack(sqlite_url, apiserver, world, hash_from_env=True)


def test_a_hash_from_env_entry_goes_with_its_secret_key_and_a_shared_role_stays(
    from_env: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = from_env
    other = "s3-an2-aic-dev-proj2"
    stack.aws("s3").create_bucket(Bucket=other)
    _seed_role(stack, made, (made.bucket, other))  # the runbook reused one role for two projects
    _adopt(stack, made)

    named = _delete_adopted(stack, made)
    assert f"IamRole/{ROLE}" not in {s.key for s in named.plan.steps}
    assert any(
        w == f"kept: IAM role `{ROLE}`, because it also grants bucket(s) `{other}` of other workspaces"
        for w in named.plan.warnings
    )
    login = next(s for s in named.plan.steps if s.key == f"DexUser/{made.owner}")
    assert f"Secret key `{made.dex_env_key}`" in login.summary
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED
    assert made.owner not in _static_emails(stack)
    secret = stack.apiserver.get("v1", "secrets", "dex-passwords", DEX_NAMESPACE)
    assert secret is not None and made.dex_env_key not in (secret.get("data") or {})
    assert stack.aws("iam").get_role(RoleName=ROLE)["Role"]["RoleName"] == ROLE


@pytest.mark.parametrize(
    ("action", "params", "field"),
    [
        ("dex.user.remove", {"email": "a@example.com", "mode": "configmap", "static_entry": "rm -rf"},
         "static_entry"),
        ("dex.user.remove", {"email": "a@example.com", "mode": "configmap", "static_entry": "hashFromEnv"},
         "env_key"),
        ("dex.user.remove", {"email": "a@example.com", "static_entry": "hash", "env_key": ["K"]}, "env_key"),
        ("aws.iam_resources.remove", {"policy_arn": "arn:aws:iam::1:policy/p", "resources": ["x"],
                                      "statements": "Sid1"}, "statements"),
        ("aws.iam_resources.remove", {"policy_arn": "arn:aws:iam::1:policy/p", "resources": ["x"],
                                      "statements": [""]}, "statements"),
    ],
)
def test_a_damaged_adopted_shape_is_refused_naming_the_field(
    action: str, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(PermanentError) as refused:
        PARAMS[ActionName(action)].parse(params)
    assert f"`{action}`" in refused.value.user_message and f"`{field}`" in refused.value.user_message


def _delete_plan(created: dict[str, Any]) -> tuple[list[str], tuple[str, ...]]:
    ws = WorkspaceFacts("legacy", "legacy", "o@example.com", created=created, pvcs=0)
    kind = kinds.WorkspaceDelete("legacy", "legacy", delete_adopted=True)
    plan = kind.plan(kinds.PlanContext(RUNBOOK, StaticFacts(workspaces={"legacy": ws}), "RTEST01"))
    return [s.key for s in plan.steps], plan.warnings


def test_a_role_others_may_use_is_kept_and_an_older_record_says_what_it_leaves() -> None:
    role = {"name": "shared-irsa", "arn": "arn:aws:iam::1:role/shared-irsa", "trusts_namespace": False,
            "other_buckets": []}
    policy = "arn:aws:iam::1:policy/kf-notebooks-s3"
    created = {
        "IamRole/shared-irsa": {"action": "aws.workspace_role", "params": role, "adopted": True},
        # Recorded by the first adoption release: no statements, no static entry shape.
        f"IamPolicy/{policy}": {"action": "aws.iam_resources", "adopted": True,
                                "params": {"policy_arn": policy, "resources": ["arn:aws:s3:::b"]}},
        "DexUser/o@example.com": {"action": "dex.user", "adopted": True,
                                  "params": {"email": "o@example.com", "mode": "configmap"}},
    }
    keys, warnings = _delete_plan(created)
    assert "IamRole/shared-irsa" not in keys and f"IamPolicy/{policy}" in keys
    kept = [w for w in warnings if w.startswith("kept: ")]
    assert len(kept) == 3
    for why in (
        "IAM role `shared-irsa`, because its trust policy does not name this namespace's default-editor",
        "the bucket in the hand-written statements of IAM policy `kf-notebooks-s3`",
        "the `staticPasswords` entry of o@example.com",
    ):
        assert any(w.startswith(f"kept: {why}") for w in kept), why
    created["IamRole/shared-irsa"]["params"] = {**role, "trusts_namespace": True}
    keys, _ = _delete_plan(created)
    assert "IamRole/shared-irsa" in keys


def test_without_the_iam_reads_the_rest_is_adopted_and_the_plan_says_so(
    runbook: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, made = runbook
    _seed_role(stack, made, (made.bucket,))
    iam = stack.backend.facts.discoverer.aws._iam()  # type: ignore[attr-defined]

    def denied(**_: object) -> None:  # IAM's answer to a role without the reads DEPLOY.md lists
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "GetRole")

    monkeypatch.setattr(iam, "get_role", denied)
    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    assert not [s for s in request.plan.steps if s.key.startswith("IamRole/")]
    assert f"Bucket/{made.bucket}" in {s.key for s in request.plan.steps}
    assert any(w.startswith("The workspace's IAM role was not looked for") for w in request.plan.warnings)


def _new_default(stack: LiveStack, policy_arn: str, document: dict[str, Any]) -> None:
    stack.aws("iam").create_policy_version(
        PolicyArn=policy_arn, PolicyDocument=json.dumps(document), SetAsDefault=True
    )


def test_only_the_statements_adoption_recorded_lose_the_bucket(runbook: Seeded) -> None:
    """The admins' own statements written after adoption (one with a Sid, one without, put
    before the runbook's so every ``#N`` shifts) keep the bucket, and the plan names them."""
    stack, made = runbook
    arn = made.policy_arns[0]
    document = default_document(stack, arn)
    runbook_statement = next(s for s in document["Statement"] if s.get("Sid") == made.policy_sid)
    runbook_statement.pop("Sid")  # the runbook wrote its statement without a Sid
    _new_default(stack, arn, document)
    _adopt(stack, made)
    later = [
        {"Sid": "AuditRead", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{made.bucket}/*", "arn:aws:s3:::audit-logs/*"]},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{made.bucket}"},
    ]
    document = default_document(stack, arn)
    document["Statement"] = [*later, *document["Statement"]]
    _new_default(stack, arn, document)

    named = _delete_adopted(stack, made)
    policy = arn.rsplit("/", 1)[-1]
    kept = [w for w in named.plan.warnings if w.startswith("kept: the bucket in statement(s) ")]
    assert len(kept) == 1 and "`AuditRead`" in kept[0] and f"`{policy}`" in kept[0], named.plan.warnings
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED, stack.request(named.id).error
    after = default_document(stack, arn)["Statement"]
    assert after[:2] == later  # untouched, in place
    assert not any(
        str(r).startswith(f"arn:aws:s3:::{made.bucket}")
        for s in after[2:] for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
    )


def test_a_statement_added_between_plan_and_apply_is_kept(runbook: Seeded) -> None:
    stack, made = runbook
    arn = made.policy_arns[0]
    _adopt(stack, made)
    named = _delete_adopted(stack, made)
    document = default_document(stack, arn)
    audit = {"Sid": "AuditRead", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{made.bucket}/*"}
    _new_default(stack, arn, {**document, "Statement": [*document["Statement"], audit]})
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED
    assert audit in default_document(stack, arn)["Statement"]
    assert [sid for sid, _ in _bucket_arns(default_document(stack, arn), made.bucket)] == ["AuditRead"]


def _hand_over(stack: LiveStack, made: RunbookWorkspace) -> None:
    """The bucket is given to another team: the runbook's Namespace tag now names theirs."""
    stack.aws("s3").put_bucket_tagging(
        Bucket=made.bucket, Tagging={"TagSet": [{"Key": "Namespace", "Value": "team-y"}]}
    )


def test_a_bucket_tagged_for_another_namespace_since_adoption_is_kept(runbook: Seeded) -> None:
    stack, made = runbook
    _adopt(stack, made)
    _hand_over(stack, made)
    named = _delete_adopted(stack, made)
    assert f"Bucket/{made.bucket}" not in {s.key for s in named.plan.steps}
    assert any(
        w.startswith(f"kept: S3 bucket `{made.bucket}`, because its tag `Namespace` names `team-y`")
        for w in named.plan.warnings
    ), named.plan.warnings
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED
    assert made.bucket in [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]


def test_a_bucket_handed_over_between_plan_and_apply_is_kept(runbook: Seeded) -> None:
    stack, made = runbook
    _adopt(stack, made)
    named = _delete_adopted(stack, made)
    steps = {s.key: s for s in named.plan.steps}
    step = steps[f"Bucket/{made.bucket}"]
    nodegroup = steps[f"Nodegroup/{made.nodegroup}"]
    assert step.params["namespace"] == nodegroup.params["namespace"] == made.namespace
    stack.approve(named.id, ADMIN2)
    _hand_over(stack, made)  # approved as planned; handed over before the request runs
    stack.run()
    assert stack.request(named.id).state is not RequestState.SUCCEEDED  # re-planned: asked again
    assert made.bucket in [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]
    # And the step itself, handed over after the last plan: it reads the tags again.
    aws = stack.backend.facts.discoverer.aws  # type: ignore[attr-defined]
    outcome = aws.registry()[ActionName.BUCKET_REMOVE].ensure(step.params)
    assert outcome.details["deleted"] is False and "`Namespace` names `team-y`" in outcome.details["reason"]
    assert made.bucket in [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]


def test_a_bucket_tagged_with_another_profiles_name_after_the_plan_is_kept_by_the_step(
    runbook: Seeded, apiserver: FakeApiServer
) -> None:
    """The step applies the plan's whole rule: a tag whose value is another Profile's name (not
    only a key naming a namespace) hands the bucket over, read when the step runs."""
    stack, made = runbook
    apiserver.seed({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "team-x"},
                    "spec": {"owner": {"kind": "User", "name": "someone.else@example.com"}}})
    _adopt(stack, made)
    named = _delete_adopted(stack, made)
    step = {s.key: s for s in named.plan.steps}[f"Bucket/{made.bucket}"]
    stack.aws("s3").put_bucket_tagging(Bucket=made.bucket, Tagging={"TagSet": [
        {"Key": "Namespace", "Value": made.namespace}, {"Key": "Owner", "Value": "team-x"}]})

    aws = stack.backend.facts.discoverer.aws  # type: ignore[attr-defined]
    outcome = aws.registry()[ActionName.BUCKET_REMOVE].ensure(step.params)
    assert outcome.details["deleted"] is False and "`Owner` names `team-x`" in outcome.details["reason"]
    assert made.bucket in [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]


def test_a_nodegroup_tagged_for_another_namespace_is_kept_by_plan_and_step(
    runbook: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, made = runbook
    _adopt(stack, made)
    # Moto cannot retag a nodegroup: hand it over in what EKS answers, as a team retagging it would.
    aws = stack.backend.facts.discoverer.aws  # type: ignore[attr-defined]
    describe = aws._describe

    def handed_over(cluster: str, name: str) -> Any:
        group = describe(cluster, name)
        return group and {**group, "tags": {**group.get("tags", {}), "Namespace": "team-y"}}

    monkeypatch.setattr(aws, "_describe", handed_over)
    named = _delete_adopted(stack, made)
    assert f"Nodegroup/{made.nodegroup}" not in {s.key for s in named.plan.steps}
    assert any(
        w.startswith(f"kept: EKS nodegroup `{made.nodegroup}`, because its tag `Namespace` names `team-y`")
        for w in named.plan.warnings
    ), named.plan.warnings
    # The step as a plan made before the hand-over wrote it: it reads the tags again.
    step = {"cluster": stack.world.cluster, "name": made.nodegroup, "adopted": True,
            "namespace": made.namespace}
    outcome = aws.registry()[ActionName.NODEGROUP_REMOVE].ensure(step)
    assert outcome.details["deleted"] is False and "`Namespace` names `team-y`" in outcome.details["reason"]
    eks = stack.aws("eks")
    assert eks.describe_nodegroup(clusterName=stack.world.cluster, nodegroupName=made.nodegroup)


def _reuse_sid(stack: LiveStack, made: RunbookWorkspace) -> dict[str, Any]:
    """An admin replaces the runbook's statement with another team's that reuses its Sid (Sids are
    unique within a policy, not over time); it lists the workspace's bucket among others."""
    arn = made.policy_arns[0]
    document = default_document(stack, arn)
    foreign = {"Sid": made.policy_sid, "Effect": "Allow", "Action": ["s3:GetObject"],
               "Resource": [f"arn:aws:s3:::{made.bucket}/shared/*", "arn:aws:s3:::team-y-data/*",
                            f"arn:aws:s3:::{made.bucket}/*"]}
    document["Statement"] = [s for s in document["Statement"] if s.get("Sid") != made.policy_sid] + [foreign]
    _new_default(stack, arn, document)
    return foreign


def test_a_statement_that_reuses_a_recorded_sid_is_kept(runbook: Seeded) -> None:
    """A Sid is no identity over time: the statement is edited only while its Effect, Actions and
    Condition are still as adopted (its resources may have grown); the plan says why it stays."""
    stack, made = runbook
    arn = made.policy_arns[0]
    _adopt(stack, made)
    foreign = _reuse_sid(stack, made)

    named = _delete_adopted(stack, made)
    kept = [w for w in named.plan.warnings if w.startswith("kept: the bucket in statement(s) ")]
    assert len(kept) == 1 and f"`{made.policy_sid}`" in kept[0], named.plan.warnings
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED, stack.request(named.id).error
    assert foreign in default_document(stack, arn)["Statement"]


def test_a_statement_that_reuses_a_recorded_sid_between_plan_and_apply_is_kept(runbook: Seeded) -> None:
    stack, made = runbook
    arn = made.policy_arns[0]
    _adopt(stack, made)
    named = _delete_adopted(stack, made)
    foreign = _reuse_sid(stack, made)
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED, stack.request(named.id).error
    assert foreign in default_document(stack, arn)["Statement"]


def test_a_recorded_statement_that_gained_resources_still_loses_the_bucket(runbook: Seeded) -> None:
    """Admins adding a resource to the runbook's statement keep it the statement adoption recorded."""
    stack, made = runbook
    arn = made.policy_arns[0]
    _adopt(stack, made)
    document = default_document(stack, arn)
    for statement in document["Statement"]:
        if statement.get("Sid") == made.policy_sid:
            listed = statement["Resource"]
            listed = listed if isinstance(listed, list) else [listed]
            statement["Resource"] = [*listed, "arn:aws:s3:::audit-logs/*"]
    _new_default(stack, arn, document)

    named = _delete_adopted(stack, made)
    assert not [w for w in named.plan.warnings if w.startswith("kept: the bucket in statement(s) ")]
    stack.approve(named.id, ADMIN2)
    stack.run()
    assert stack.request(named.id).state is RequestState.SUCCEEDED, stack.request(named.id).error
    after = default_document(stack, arn)
    assert _bucket_arns(after, made.bucket) == []
    assert any(s.get("Sid") == made.policy_sid and s["Resource"] == ["arn:aws:s3:::audit-logs/*"]
               for s in after["Statement"])
