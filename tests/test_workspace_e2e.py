"""Workspace lifecycle end to end on the live composition (issue 3, "Done means").

Every test runs the real settings, services, engine, store and live Kubeflow/Dex/AWS adapters
(``tests.live_harness``) against the fake apiserver and moto, and asserts on what those hold
afterwards, field for field with ``../shared/docs/kubeflow-reference.md``. The Slack test starts
``bot.app.start_slack`` itself with ``KFBOT_PROVISIONER=live``, a kubeconfig in ``KUBECONFIG`` and
the AWS chain from the environment.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from kubernetes import client

from bot import app as composition
from bot import blocks, render
from bot import logging as bot_logging
from bot.app import Running
from bot.controls import control
from bot.notify import ShellNotifier
from bot.settings import Settings
from bot.shell import Shell
from handlers import parse, scheduling, services
from handlers.model import Actor, EventType, RequestState
from handlers.naming import dex_password_object_name
from provisioning.aws import BOT_SID
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    slash_command_body,
)
from tests.live_harness import (
    ADMIN_STATEMENT,
    ALICE,
    CLUSTER,
    DEX_NAMESPACE,
    MANAGED_BY,
    RUNBOOK_ENV,
    AwsWorld,
    LiveStack,
    aws_client,
    bucket_arns,
    default_document,
    dex_restarts,
    dex_secret_data,
    dex_static_passwords,
    dump_database,
    live_env,
    live_stack,
    seed_aws,
    seed_kube,
    tune_for_tests,
    wait_until,
    write_kubeconfig,
)

MANAGED_KEY = "app.kubernetes.io/managed-by"
PROFILES = ("kubeflow.org/v1", "profiles")
WAIT = 60.0  # bounds a hang, not a claim: the engine runs late on a loaded machine


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture
def stack(sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld) -> Iterator[LiveStack]:
    with live_stack(sqlite_url, apiserver, world) as built:
        yield built


def nodegroup(stack: LiveStack, name: str) -> dict[str, Any] | None:
    eks = stack.aws("eks")
    if name not in eks.list_nodegroups(clusterName=CLUSTER)["nodegroups"]:
        return None
    return dict(eks.describe_nodegroup(clusterName=CLUSTER, nodegroupName=name)["nodegroup"])


def buckets(stack: LiveStack) -> list[str]:
    return [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]


def bucket_tags(stack: LiveStack, bucket: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in stack.aws("s3").get_bucket_tagging(Bucket=bucket)["TagSet"]}


def bot_resources(stack: LiveStack, policy_arn: str) -> list[str]:
    statement = next(
        (s for s in default_document(stack, policy_arn)["Statement"] if s.get("Sid") == BOT_SID), None
    )
    if statement is None:
        return []
    resources = statement["Resource"]
    return list(resources) if isinstance(resources, list) else [resources]


def managed_objects(apiserver: FakeApiServer) -> list[str]:
    """Every object in the fake apiserver that carries the bot's managed-by label."""
    found = []
    for api_version, plural in (
        PROFILES,
        ("kubeflow.org/v1alpha1", "poddefaults"),
        ("dex.coreos.com/v1", "passwords"),
        ("v1", "namespaces"),
        ("rbac.authorization.k8s.io/v1", "rolebindings"),
        ("security.istio.io/v1beta1", "authorizationpolicies"),
        ("v1", "serviceaccounts"),
    ):
        for obj in apiserver.list(api_version, plural):
            if (obj["metadata"].get("labels") or {}).get(MANAGED_KEY) == "kf-chatops":
                found.append(f"{plural}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}")
    return found


def owned_by_profile(obj: dict[str, Any], profile: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(
        r["kind"] == "Profile" and r["uid"] == profile["metadata"]["uid"] and r["controller"] for r in refs
    )


def succeeded_step_keys(stack: LiveStack, request_id: str) -> list[str]:
    events = [json.loads(line) for line in stack.backend.audit_export("jsonl", None)]
    return [
        e["data"]["key"]
        for e in events
        if e.get("request_id") == request_id and e["type"] == EventType.STEP_SUCCEEDED.value
    ]


# -- create, apply, delete ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_create_approve_apply_matches_the_reference_and_delete_removes_it_all_in_reverse(
    backend: str, request: pytest.FixtureRequest, apiserver: FakeApiServer, world: AwsWorld
) -> None:
    db_url: str = request.getfixturevalue(f"{backend}_url")
    with live_stack(db_url, apiserver, world) as stack:
        created = stack.submit(
            ALICE,
            "workspace new team-a --gpu 2 --cpu 4 --memory 16Gi --storage 50Gi --pvcs 3 "
            "--instance-type g4dn.xlarge --nodes 0:2 --desired 1",
        )
        assert created.state is RequestState.PENDING
        # The approval card and the plan text show the cost (hourly and monthly).
        summary = render.plan_summary(created.plan, render.SLACK)
        assert "Cost: up to $1.05/hour (~$768/month) for 2 x g4dn.xlarge" in summary
        _, card_blocks = blocks.card(created)
        assert "$1.05/hour" in json.dumps(card_blocks) and "/month" in json.dumps(card_blocks)
        assert "Cluster Autoscaler 1.24 or newer" in summary  # min 0
        assert "Karpenter does not scale EKS managed nodegroups" in summary
        assert "hand-made nodegroup with only the `nvidia.com/gpu` taint" in summary
        assert stack.apiserver.get(*PROFILES, "team-a") is None  # nothing before approval

        stack.approve(created.id)
        stack.run()
        done = stack.request(created.id)
        assert done.state is RequestState.SUCCEEDED, done.error

        # Profile exactly as kubeflow-reference §1.1, and what the controller made (§1.2).
        hard = {
            "cpu": "4",
            "memory": "16Gi",
            "requests.nvidia.com/gpu": "2",
            "persistentvolumeclaims": "3",
            "requests.storage": "50Gi",
        }
        profile = stack.apiserver.get(*PROFILES, "team-a")
        assert profile is not None
        assert profile["spec"] == {
            "owner": {"kind": "User", "name": "alice@example.com"},
            "resourceQuotaSpec": {"hard": hard},
        }
        assert profile["metadata"]["labels"][MANAGED_KEY] == "kf-chatops"
        namespace = stack.apiserver.get("v1", "namespaces", "team-a")
        assert namespace is not None and owned_by_profile(namespace, profile)
        assert namespace["metadata"]["annotations"]["owner"] == "alice@example.com"
        assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
        policy = stack.apiserver.get(
            "security.istio.io/v1beta1", "authorizationpolicies", "ns-owner-access-istio", "team-a"
        )
        assert policy is not None and owned_by_profile(policy, profile)
        assert policy["metadata"]["annotations"] == {"user": "alice@example.com", "role": "admin"}
        admin_binding = stack.apiserver.get(
            "rbac.authorization.k8s.io/v1", "rolebindings", "namespaceAdmin", "team-a"
        )
        assert admin_binding is not None and admin_binding["subjects"] == [  # spec.owner, RBAC-defaulted
            {"kind": "User", "name": "alice@example.com", "apiGroup": "rbac.authorization.k8s.io"}
        ]
        assert admin_binding["roleRef"]["name"] == "kubeflow-admin"
        for sa, role in (("default-editor", "kubeflow-edit"), ("default-viewer", "kubeflow-view")):
            assert stack.apiserver.get("v1", "serviceaccounts", sa, "team-a") is not None
            binding = stack.apiserver.get("rbac.authorization.k8s.io/v1", "rolebindings", sa, "team-a")
            assert binding is not None and binding["roleRef"]["name"] == role
        quota = stack.apiserver.get("v1", "resourcequotas", "kf-resource-quota", "team-a")
        assert quota is not None and quota["spec"]["hard"] == hard and owned_by_profile(quota, profile)

        # The Dex user (password-cr): a Password object as Dex's storage writes it (§3.2).
        password = stack.apiserver.get(
            "dex.coreos.com/v1", "passwords", dex_password_object_name("alice@example.com"), DEX_NAMESPACE
        )
        assert password is not None
        assert (password["email"], password["username"]) == ("alice@example.com", "alice")
        assert password["userID"] and password["metadata"]["labels"][MANAGED_KEY] == "kf-chatops"
        unusable = base64.b64decode(password["hash"]).decode()
        assert re.fullmatch(r"\$2[aby]\$10\$[./A-Za-z0-9]{53}", unusable)

        # The bucket: private, encrypted, tagged.
        s3 = stack.aws("s3")
        assert buckets(stack) == ["kf-team-a"]
        block = s3.get_public_access_block(Bucket="kf-team-a")["PublicAccessBlockConfiguration"]
        assert block == dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        )
        rules = s3.get_bucket_encryption(Bucket="kf-team-a")["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
        assert (
            bucket_tags(stack, "kf-team-a").items()
            >= {
                **MANAGED_BY,
                "kf-chatops/workspace": "team-a",
                "kf-chatops/owner": "alice@example.com",
            }.items()
        )

        # Both ARNs in the default version of every configured policy; the admins' statement kept.
        for arn in world.policy_arns:
            assert bot_resources(stack, arn) == bucket_arns("kf-team-a")
            assert ADMIN_STATEMENT in default_document(stack, arn)["Statement"]

        # The GPU nodegroup, tainted for this workspace, and the PodDefault that tolerates it.
        group = nodegroup(stack, "team-a-g4dn-xlarge")
        assert group is not None and group["status"] == "ACTIVE"
        assert group["amiType"] == "AL2023_x86_64_NVIDIA" and group["instanceTypes"] == ["g4dn.xlarge"]
        assert group["taints"] == [
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"},
            {"key": "kf-chatops/dedicated", "value": "team-a", "effect": "NO_SCHEDULE"},
        ]
        assert group["labels"] == {"kf-chatops/workspace": "team-a-g4dn-xlarge"}
        assert group["scalingConfig"] == {"minSize": 0, "maxSize": 2, "desiredSize": 1}
        assert sorted(group["subnets"]) == sorted(world.subnets) and group["nodeRole"] == world.node_role_arn
        assert group["tags"][MANAGED_KEY] == "kf-chatops"
        poddefault = stack.apiserver.get(
            "kubeflow.org/v1alpha1", "poddefaults", "team-a-g4dn-xlarge", "team-a"
        )
        assert poddefault is not None and poddefault["metadata"]["labels"][MANAGED_KEY] == "kf-chatops"
        assert poddefault["spec"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "kf-chatops/dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"},
        ]
        node_taints = [scheduling.node_taint(t) for t in group["taints"]]
        assert scheduling.tolerates(poddefault["spec"]["tolerations"], node_taints)
        assert not scheduling.tolerates([], node_taints)

        # Delete: the owner asks, typing the name again; an admin approves.
        deleting = stack.submit(ALICE, "workspace delete team-a --confirm team-a")
        assert deleting.state is RequestState.PENDING
        stack.approve(deleting.id)
        stack.run()
        deleted = stack.request(deleting.id)
        assert deleted.state is RequestState.SUCCEEDED, deleted.error

        # Reverse order of creation: nodegroup, IAM statements, bucket, Dex user, Profile.
        policies = list(reversed(world.policy_arns))
        expected = [
            "Nodegroup/team-a-g4dn-xlarge",
            *(f"IamPolicy/{arn}" for arn in policies),
            "Bucket/kf-team-a",
            "DexUser/alice@example.com",
            "Profile/team-a",
        ]
        assert [s.key for s in deleted.plan.steps] == expected
        assert succeeded_step_keys(stack, deleted.id) == expected
        deletes = [r.path for r in stack.apiserver.requests if r.method == "DELETE"]
        assert deletes[-2].endswith(f"/passwords/{dex_password_object_name('alice@example.com')}")
        assert deletes[-1].endswith("/profiles/team-a")

        # Everything the bot made is gone; what the admins wrote stays.
        assert nodegroup(stack, "team-a-g4dn-xlarge") is None
        assert buckets(stack) == []
        for arn in world.policy_arns:
            assert (
                bot_resources(stack, arn) == []
                and ADMIN_STATEMENT in default_document(stack, arn)["Statement"]
            )
        assert stack.apiserver.get(*PROFILES, "team-a") is None
        assert stack.apiserver.get("v1", "namespaces", "team-a") is None
        assert managed_objects(stack.apiserver) == []
        assert stack.backend.workspaces() == []


def test_runbook_naming_is_reproduced_by_environment_variables_alone(
    apiserver: FakeApiServer, world: AwsWorld, sqlite_url: str
) -> None:
    with live_stack(sqlite_url, apiserver, world, env=RUNBOOK_ENV) as stack:
        naming = stack.settings.core.naming
        assert (naming.namespace, naming.bucket, naming.nodegroup) == (
            RUNBOOK_ENV["KFBOT_NAME_NAMESPACE"],
            RUNBOOK_ENV["KFBOT_NAME_BUCKET"],
            RUNBOOK_ENV["KFBOT_NAME_NODEGROUP"],
        )
        done = stack.apply(ALICE, "workspace new vision --gpu 1")
        assert done.state is RequestState.SUCCEEDED, done.error

        assert stack.apiserver.get(*PROFILES, "aic-ns-vision-ws") is not None
        namespace = stack.apiserver.get("v1", "namespaces", "aic-ns-vision-ws")
        assert namespace is not None and namespace["metadata"]["annotations"]["owner"] == "alice@example.com"
        assert buckets(stack) == ["s3-use1-aicond-dev-vision"]
        for arn in world.policy_arns:
            assert bot_resources(stack, arn) == bucket_arns("s3-use1-aicond-dev-vision")
        group = nodegroup(stack, "ng-use1-aicond-vision-ws-g4dnxl")
        assert group is not None and group["labels"] == {"aic-role": "vision-ws-g4dnxl"}
        poddefault = stack.apiserver.get(
            "kubeflow.org/v1alpha1", "poddefaults", "ng-use1-aicond-vision-ws-g4dnxl", "aic-ns-vision-ws"
        )
        assert poddefault is not None and "nodeSelector" not in poddefault["spec"]
        assert {"key": "kf-chatops/dedicated", "value": "aic-ns-vision-ws", "effect": "NO_SCHEDULE"} in group[
            "taints"
        ]
        assert scheduling.tolerates(
            poddefault["spec"]["tolerations"], [scheduling.node_taint(t) for t in group["taints"]]
        )

        # A type missing from KFBOT_INSTANCE_SPECS gets the default short name ('.' -> '-').
        plan = stack.submit(ALICE, "workspace new audio --instance-type g5.xlarge").plan
        assert "Nodegroup/ng-use1-aicond-audio-ws-g5-xlarge" in [s.key for s in plan.steps]


# -- concurrency -------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_twenty_concurrent_creations_in_configmap_mode_lose_no_user_and_no_arn(
    apiserver: FakeApiServer, world: AwsWorld, postgres_url: str
) -> None:
    workers, quiet = 5, 5.0
    with live_stack(postgres_url, apiserver, world, dex_mode="configmap", quiet_period=quiet) as stack:
        assert isinstance(stack.clock, FakeClock)
        ids, emails = [], []
        for i in range(20):
            owner = Actor(f"UOWNER{i:03d}", f"owner{i:02d}@example.com")
            request = stack.submit(owner, f"workspace new ws-{i:02d}")
            stack.approve(request.id)
            ids.append(request.id)
            emails.append(owner.email)
        finished = (RequestState.SUCCEEDED, RequestState.FAILED, RequestState.NEEDS_ATTENTION)
        engines = stack.engines(workers)

        def on_timer(kind: str, ref: str, payload: dict[str, Any]) -> None:
            services.handle_timer(stack.core, kind, ref, payload)

        # Rounds of: every worker runs until nothing is claimable now (a waiting step defers its
        # request, so workers never sleep in a backoff), the sweeper runs what is due (the one
        # Dex restart), then time moves on by a second.
        for _ in range(120):
            threads = [threading.Thread(target=e.run_until_idle, daemon=True) for e in engines]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            stack.backend.sweep_timers(on_timer)
            if all(stack.request(i).state in finished for i in ids):
                break
            stack.clock.advance(timedelta(seconds=1))

        states = {i: (stack.request(i).state, stack.request(i).error) for i in ids}
        assert all(state is RequestState.SUCCEEDED for state, _ in states.values()), states
        # No Dex user lost: all 20 in config.yaml's staticPasswords, their keys in dex-passwords.
        entries = {e["email"]: e for e in dex_static_passwords(apiserver)}
        assert set(entries) == {*emails, "user@example.com"}
        keys = dex_secret_data(apiserver)
        assert {entries[e]["hashFromEnv"] for e in entries} == set(keys)
        assert all(re.fullmatch(r"\$2[aby]\$\d\d\$.{53}", keys[entries[e]["hashFromEnv"]]) for e in emails)
        # Every bucket ARN in the final default version of each policy, within IAM's 5 versions.
        wanted = {arn for i in range(20) for arn in bucket_arns(f"kf-ws-{i:02d}")}
        for arn in world.policy_arns:
            assert set(bot_resources(stack, arn)) == wanted
            assert len(stack.aws("iam").list_policy_versions(PolicyArn=arn)["Versions"]) <= 5
        # One restart for the burst (two if a late addition missed the first), requested through
        # the timers row: every step waited for a rollout that included its entry.
        assert 1 <= len(dex_restarts(apiserver)) <= 2, dex_restarts(apiserver)
        with stack.backend.uow() as uow:
            assert uow.timers.pending_payload("provisioning.dex.restart", f"{DEX_NAMESPACE}/dex") is None


# -- IAM's five versions ------------------------------------------------------------------------------


def test_a_policy_at_five_versions_loses_its_oldest_non_default_and_gains_the_arns(
    stack: LiveStack, world: AwsWorld
) -> None:
    iam = stack.aws("iam")
    arn = world.policy_arns[0]
    document = json.dumps({"Version": "2012-10-17", "Statement": [ADMIN_STATEMENT]})
    for _ in range(4):
        iam.create_policy_version(PolicyArn=arn, PolicyDocument=document, SetAsDefault=False)
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v3")
    assert len(iam.list_policy_versions(PolicyArn=arn)["Versions"]) == 5

    done = stack.apply(ALICE, "workspace new team-a")
    assert done.state is RequestState.SUCCEEDED, done.error

    versions = {
        v["VersionId"]: v["IsDefaultVersion"] for v in iam.list_policy_versions(PolicyArn=arn)["Versions"]
    }
    assert "v1" not in versions  # the oldest that was not the default
    assert set(versions) == {"v2", "v3", "v4", "v5", "v6"} and versions["v6"] is True
    assert bot_resources(stack, arn) == bucket_arns("kf-team-a")
    assert ADMIN_STATEMENT in default_document(stack, arn)["Statement"]


# -- data is kept by default --------------------------------------------------------------------------


def _with_data(stack: LiveStack, name: str = "team-a") -> None:
    done = stack.apply(ALICE, f"workspace new {name} --gpu 1")
    assert done.state is RequestState.SUCCEEDED, done.error
    stack.aws("s3").put_object(Bucket=f"kf-{name}", Key="datasets/train.csv", Body=b"a,b\n1,2\n")


def _pvc(apiserver: FakeApiServer, namespace: str) -> None:
    apiserver.seed(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "workspace-data", "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        }
    )


def test_delete_without_purge_keeps_a_non_empty_bucket_and_reports_it(
    stack: LiveStack, world: AwsWorld
) -> None:
    _with_data(stack)
    deleting = stack.submit(ALICE, "workspace delete team-a --confirm team-a")
    shown = render.plan_summary(deleting.plan, render.SHELL)
    assert "kf-team-a" in shown and "kept" in shown  # the approver sees it before deciding
    stack.approve(deleting.id)
    stack.run()
    deleted = stack.request(deleting.id)

    assert buckets(stack) == ["kf-team-a"]  # the data is still there
    assert (
        stack.aws("s3").get_object(Bucket="kf-team-a", Key="datasets/train.csv")["Body"].read()
        == b"a,b\n1,2\n"
    )
    assert deleted.state is RequestState.SUCCEEDED, deleted.error
    assert nodegroup(stack, "team-a-g4dn-xlarge") is None and stack.apiserver.get(*PROFILES, "team-a") is None
    # The requester's DM reads what the steps recorded.
    kept = render.kept_at_apply(stack.backend.kept_by_steps(deleted.id))
    report = render.result_text(deleted, render.SHELL, kept)
    assert "is done" in report and "S3 bucket `kf-team-a` holds data and is kept" in report


def test_delete_refuses_a_namespace_with_volumes_without_purge_and_deletes_nothing(
    stack: LiveStack, world: AwsWorld
) -> None:
    done = stack.apply(ALICE, "workspace new team-a --gpu 1")
    assert done.state is RequestState.SUCCEEDED, done.error
    _pvc(stack.apiserver, "team-a")
    writes_before = sum(1 for r in stack.apiserver.requests if r.method != "GET")

    out = io.StringIO()
    shell = Shell(
        stack.core, stack.backend, ShellNotifier(out), out, Actor("shell:alice@example.com", ALICE.email)
    )
    shell.execute("/kf workspace delete team-a --confirm team-a")
    text = out.getvalue()
    assert "PersistentVolumeClaim" in text and "--purge-data" in text, text

    assert [r.kind for r in stack.requests()] == ["workspace.create"]  # no delete request recorded
    assert sum(1 for r in stack.apiserver.requests if r.method != "GET") == writes_before
    assert nodegroup(stack, "team-a-g4dn-xlarge") is not None and buckets(stack) == ["kf-team-a"]
    for arn in world.policy_arns:
        assert bot_resources(stack, arn) == bucket_arns("kf-team-a")
    assert stack.apiserver.get(*PROFILES, "team-a") is not None


def test_delete_with_purge_data_removes_the_bucket_with_its_objects_and_the_namespace_with_volumes(
    stack: LiveStack, world: AwsWorld
) -> None:
    _with_data(stack)
    _pvc(stack.apiserver, "team-a")
    deleted = stack.apply(ALICE, "workspace delete team-a --confirm team-a --purge-data")

    assert deleted.state is RequestState.SUCCEEDED, deleted.error
    assert buckets(stack) == []
    assert stack.apiserver.get(*PROFILES, "team-a") is None
    assert stack.apiserver.get("v1", "persistentvolumeclaims", "workspace-data", "team-a") is None
    assert nodegroup(stack, "team-a-g4dn-xlarge") is None and managed_objects(stack.apiserver) == []


# -- hostile names -------------------------------------------------------------------------------------


HOSTILE = [
    ("workspace new Team-A", "lowercase"),
    ("workspace new " + "a" * 39 + " --gpu 1", "characters long; the limit is 63"),  # 64+ after templating
    ("workspace new team:a", "contains ':'"),
    ('workspace new "team-a\\n- email: evil@example.com"', "contains"),
    ("workspace new '{team: a}'", "contains '{'"),
    ("workspace new team-a#x", "contains '#'"),
    ("workspace new t\u0435am-a", "U+0435 CYRILLIC SMALL LETTER IE"),
    ("workspace new team-\u0430", "U+0430 CYRILLIC SMALL LETTER A"),
    ("workspace new team-a --owner \u0430lice@example.com", "U+0430"),  # look-alike email
    ("workspace delete Team-A --confirm Team-A", "lowercase"),
]


def test_hostile_names_are_rejected_at_the_edge_with_nothing_applied(
    apiserver: FakeApiServer, world: AwsWorld, sqlite_url: str
) -> None:
    with live_stack(sqlite_url, apiserver, world, env=RUNBOOK_ENV) as stack:
        seen_before = len(apiserver.requests)
        out = io.StringIO()
        shell = Shell(
            stack.core, stack.backend, ShellNotifier(out), out, Actor("shell:alice@example.com", ALICE.email)
        )
        for text, message in HOSTILE:
            start = out.tell()
            shell.execute(f"/kf {text}")
            answer = out.getvalue()[start:]
            assert answer.startswith("error: ") and message in answer, (text, answer)
        assert shell.failures == len(HOSTILE)

        assert stack.requests() == []
        assert list(stack.backend.audit_export("jsonl", None)) == []  # not even an audit entry
        assert [r for r in apiserver.requests[seen_before:] if r.method != "GET"] == []
        assert (
            buckets(stack) == [] and stack.aws("eks").list_nodegroups(clusterName=CLUSTER)["nodegroups"] == []
        )
        for arn in world.policy_arns:
            assert len(stack.aws("iam").list_policy_versions(PolicyArn=arn)["Versions"]) == 1


# -- identity mapping ---------------------------------------------------------------------------------


def test_a_mapped_owner_sets_the_password_of_the_login_made_for_them(
    apiserver: FakeApiServer, world: AwsWorld, sqlite_url: str
) -> None:
    mapped = "alice@kf.example.org"
    with live_stack(
        sqlite_url, apiserver, world, env={"KFBOT_USER_ID_MAP": f"{ALICE.email}={mapped}"}
    ) as stack:
        done = stack.apply(ALICE, "workspace new team-a")
        assert done.state is RequestState.SUCCEEDED, done.error
        profile = stack.apiserver.get(*PROFILES, "team-a")
        assert profile is not None and profile["spec"]["owner"] == {"kind": "User", "name": mapped}
        name = dex_password_object_name(mapped)
        assert stack.apiserver.get("dex.coreos.com/v1", "passwords", name, DEX_NAMESPACE) is not None

        secret = services.reveal_password(stack.core, ALICE)
        stored = stack.apiserver.get("dex.coreos.com/v1", "passwords", name, DEX_NAMESPACE)
        assert stored is not None and bcrypt.checkpw(secret.value.encode(), base64.b64decode(stored["hash"]))
        # Listing "my workspaces" and showing one go by the mapped id too.
        listed = control(stack.core, stack.backend, ALICE, parse.WorkspaceList(), render.SHELL)
        assert "team-a" in listed
        shown = control(stack.core, stack.backend, ALICE, parse.WorkspaceShow("team-a"), render.SHELL)
        assert mapped in shown
        # The owner shares without an admin, and may ask to delete their workspace.
        shared = stack.submit(ALICE, "share team-a carol@example.com")
        assert shared.state is RequestState.APPROVED and shared.reason
        deleting = stack.submit(ALICE, "workspace delete team-a --confirm team-a")
        assert deleting.state is RequestState.PENDING


# -- the password, through the Slack edge, on the live backend -----------------------------------------

ADMIN_CHANNEL = "CADMINS01"
OWNER, APPROVER = "U0ALICE01", "U0BOB0001"


def _slash(running: Running, fake: FakeSlack, text: str, user: str, name: str) -> str:
    body = slash_command_body(text, user_id=user, response_url=fake.response_url(name))
    status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
    assert status == 200
    reply = fake.wait_for(lambda: fake.responses.get(name), WAIT, f"the reply to /kf {text}")
    return str(reply[0].get("text", ""))


def _button(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return dict(element)
    return None


def _click(running: Running, fake: FakeSlack, message: dict[str, Any], action_id: str, user: str) -> None:
    found = _button(message, action_id)
    assert found is not None, message.get("text")
    body = block_action_body(
        action_id,
        found["value"],
        user_id=user,
        channel_id=message["channel"],
        message_ts=message["ts"],
        response_url=fake.response_url(f"click-{action_id}"),
        message_blocks=message.get("blocks"),
    )
    status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
    assert status == 200


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The bot's own log stream (JSON lines through its scrubbing handler), as ``kfbot serve`` has it."""
    root = logging.getLogger()
    noisy = {
        name: logging.getLogger(name).level for name in ("slack_sdk", "slack_bolt", "urllib3", "apscheduler")
    }
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    bot_logging.configure(fmt="json", level="DEBUG", provisioner="live", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for name, old_level in noisy.items():
            logging.getLogger(name).setLevel(old_level)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_password_appears_only_in_the_owners_modal_on_the_live_slack_bot(
    backend: str,
    request: pytest.FixtureRequest,
    apiserver: FakeApiServer,
    world: AwsWorld,
    fake_slack: FakeSlack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    json_logs: io.StringIO,
) -> None:
    db_url: str = request.getfixturevalue(f"{backend}_url")
    caplog.set_level(logging.DEBUG)
    fake_slack.add_user(OWNER, "Alice@Example.com", "alice")
    fake_slack.add_user(APPROVER, "bob@example.com", "bob")
    # The standard discovery: a kubeconfig named by KUBECONFIG, the AWS chain from the environment
    # (the ``aws`` fixture sets keys and AWS_ENDPOINT_URL at moto), no in-cluster credentials.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url))
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    with client.ApiClient(client.Configuration(host=apiserver.url)) as api:
        seed_kube(apiserver, api, "password-cr")
    env = {
        **live_env(db_url, world),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake_slack.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": APPROVER,
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0",
        "KFBOT_HEALTH_PORT": "0",
    }
    settings = tune_for_tests(Settings.from_env(env))
    assert settings.mode == "live" and settings.provisioning.aws_endpoint_url is None
    migrating = composition.build_backend(settings)
    migrating.migrate()
    migrating.close()

    running = composition.start_slack(settings, port=0)
    try:
        assert running.backend.mode == "live"
        # A hostile name is refused at the edge: no row, no object.
        refused = _slash(running, fake_slack, "workspace new Team-A --gpu 1", OWNER, "hostile")
        assert "lowercase" in refused
        with running.backend.uow() as uow:
            assert uow.requests.list(limit=10) == []
        assert apiserver.list(*PROFILES) == [] and buckets_at(world) == []

        reply = _slash(running, fake_slack, "workspace new team-a --gpu 1", OWNER, "new")
        request_id = re.search(r"\bR[A-Z0-9]{6}\b", reply).group(0)  # type: ignore[union-attr]
        card = fake_slack.wait_for(
            lambda: next(m for m in fake_slack.messages_in(ADMIN_CHANNEL) if request_id in m["text"]), WAIT
        )
        assert "/hour" in json.dumps(card["blocks"]) and "/month" in json.dumps(card["blocks"])
        _click(running, fake_slack, card, blocks.APPROVE, APPROVER)

        def succeeded() -> bool:
            with running.backend.uow() as uow:
                return uow.requests.get(request_id).state is RequestState.SUCCEEDED

        wait_until(succeeded, WAIT, f"{request_id} to succeed")
        # Live objects, reached through the kubeconfig and the AWS chain.
        assert apiserver.get(*PROFILES, "team-a") is not None and buckets_at(world) == ["kf-team-a"]
        dm = fake_slack.wait_for(
            lambda: next(
                m
                for m in fake_slack.messages_in(fake_slack.dm_channel(OWNER))
                if _button(m, blocks.SET_PASSWORD)
            ),
            WAIT,
        )
        name = dex_password_object_name("alice@example.com")
        first_hash = apiserver.get("dex.coreos.com/v1", "passwords", name, DEX_NAMESPACE)["hash"]  # type: ignore[index]
        assert _button(dm, blocks.SET_PASSWORD)["text"]["text"] == "Set my password"  # type: ignore[index]
        _click(running, fake_slack, dm, blocks.SET_PASSWORD, OWNER)
        # "Working…" opens at the click; the password arrives by views.update into that modal.
        updated = fake_slack.wait_for(lambda: fake_slack.calls_to("views.update"), WAIT)
        view = updated[-1]["view"]
        assert view["title"]["text"] == "Your password"
        password = re.search(r"```([A-Za-z0-9]{16,})```", json.dumps(view["blocks"])).group(1)  # type: ignore[union-attr]
        assert len(password) >= 16

        # In exactly one Slack call (the update of the owner's modal) and nowhere else.
        carrying = [c for c in fake_slack.calls if password in json.dumps(c.params)]
        assert [c.method for c in carrying] == ["views.update"]
        assert password not in json.dumps(fake_slack.responses)
        stored = apiserver.get("dex.coreos.com/v1", "passwords", name, DEX_NAMESPACE)
        assert stored is not None and stored["hash"] != first_hash
        assert bcrypt.checkpw(password.encode(), base64.b64decode(stored["hash"]))
    finally:
        running.stop()

    # Not in any table, not in the logs, not in anything the apiserver was sent.
    tables = dump_database(db_url)
    assert request_id in tables and "secret.revealed" in tables  # the dump does see the rows
    assert password not in tables
    assert request_id in caplog.text and password not in caplog.text
    assert all(password not in str(r.__dict__) for r in caplog.records)
    assert '"provisioner": "live"' in json_logs.getvalue() and password not in json_logs.getvalue()
    sent = json.dumps([(r.method, r.path, r.query, r.body) for r in apiserver.requests])
    assert password not in sent and urllib.parse.quote(password) not in sent


def buckets_at(world: AwsWorld) -> list[str]:
    return [b["Name"] for b in aws_client(world.endpoint_url, "s3").list_buckets()["Buckets"]]
