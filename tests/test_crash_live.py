"""Ownership across crashes and failures, end to end with the live adapters.

The live backend (``build_backend(mode="live")``: the Kubeflow, Dex and AWS adapters, the engine,
the store) runs against the fake apiserver and moto. A worker subprocess is SIGKILLed at each step,
before and after the step's outcome is recorded (``tests/crash_worker_live.py``); a fresh worker
resumes after the lease and must finish with exactly one of each object, every step owning what it
made. A permanent failure at each step must compensate down to nothing the bot made, leaving what
existed before the request (a human's Dex user, an unrelated bucket, admins' policy statements).

What makes this work is the ownership mark (``kf-chatops/request: <id>``) the adapters put on
everything they create: a step re-run after a crash finds its object and claims it only when the
mark names its own request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from handlers import kinds, services
from handlers.model import Request, RequestState
from handlers.naming import dex_password_object_name
from handlers.plan import StepStatus
from provisioning.aws import BOT_SID, BUCKET_ACTIONS
from provisioning.backend import Backend
from provisioning.store import StepRecord
from tests import crash_worker_live
from tests.crash_worker_live import CLUSTER, EXIT_NOT_KILLED, STEP_ACTIONS, WHEN, World, live_backend
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import ACCOUNT_ID, AwsEnv, Fault, FaultProxy, aws_error_xml
from tests.fakes.clock import FakeClock
from tests.harness import ADMIN, ALICE, RecordingNotifier

MARK = "kf-chatops/request"
NAMESPACE = "team-a"
BUCKET = "kf-team-a"
NODEGROUP = "team-a-g4dn-xlarge"
OURS = [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
UNRELATED_BUCKET = "ops-logs"
ADMIN_STATEMENT = {"Sid": "AdminWritten", "Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}
OLDER_ARNS = ["arn:aws:s3:::kf-older", "arn:aws:s3:::kf-older/*"]
OLDER_GRANT = {"Sid": BOT_SID, "Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": OLDER_ARNS}
"""The bot's statement as an earlier workspace left it."""
HUMAN_HASH = "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72"


_CLIENTS: dict[tuple[str, str], Any] = {}


def aws_client(aws: AwsEnv, service: str) -> Any:
    """A boto3 client on moto kept for the whole session: making one (EC2's above all) costs more
    than a test's every call, and moto's URL and the test credentials never change."""
    key = (service, aws.url)
    if key not in _CLIENTS:
        _CLIENTS[key] = boto3.client(service, region_name="us-east-1", endpoint_url=aws.url)  # type: ignore[call-overload]
    return _CLIENTS[key]


def access_denied(operation: str) -> bytes:
    return aws_error_xml("AccessDenied", f"not allowed to {operation}")


@dataclass
class Live:
    """The test's side: the live backend, services over it, and the fakes to assert on."""

    world: World
    apiserver: FakeApiServer
    aws: AwsEnv
    clock: FakeClock
    backend: Backend
    core: services.Core
    notifier: RecordingNotifier

    def submit(self) -> str:
        kind = kinds.WorkspaceCreate(NAMESPACE, ALICE.email, gpu=1)
        request = services.submit(self.core, ALICE, kind, idempotency_key="crash-live").request
        assert [s.action for s in request.plan.steps] == list(STEP_ACTIONS)
        if request.state is RequestState.PENDING:
            services.decide(self.core, ADMIN, request.id, approve=True, decision_key=f"t:{request.id}")
        return request.id

    def run(self) -> int:
        return self.backend.run_until_idle(self.notifier)

    def request(self, request_id: str) -> Request:
        with self.backend.uow() as uow:
            return uow.requests.get(request_id)

    def steps(self, request_id: str) -> dict[int, StepRecord]:
        with self.backend.db.uow() as uow:
            return {r.idx: r for r in uow.work.steps(request_id)}

    # -- what the world holds --------------------------------------------------------------------
    def profiles(self) -> list[dict[str, Any]]:
        return self.apiserver.list("kubeflow.org/v1", "profiles")

    def passwords(self) -> list[dict[str, Any]]:
        return self.apiserver.list("dex.coreos.com/v1", "passwords", "auth")

    def poddefaults(self) -> list[dict[str, Any]]:
        return self.apiserver.list("kubeflow.org/v1alpha1", "poddefaults", NAMESPACE)

    def activity_policies(self) -> list[dict[str, Any]]:
        policies = self.apiserver.list("security.istio.io/v1beta1", "authorizationpolicies", NAMESPACE)
        return [p for p in policies if p["metadata"]["name"] == "kfbot-notebook-activity"]

    def buckets(self) -> list[str]:
        return sorted(b["Name"] for b in aws_client(self.aws, "s3").list_buckets()["Buckets"])

    def bucket_tags(self, bucket: str) -> dict[str, str]:
        tag_set = aws_client(self.aws, "s3").get_bucket_tagging(Bucket=bucket)["TagSet"]
        return {t["Key"]: t["Value"] for t in tag_set}

    def statements(self) -> list[dict[str, Any]]:
        iam = aws_client(self.aws, "iam")
        version = iam.get_policy(PolicyArn=self.world.policy_arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=self.world.policy_arn, VersionId=version)
        return list(document["PolicyVersion"]["Document"]["Statement"])

    def policy_versions(self) -> int:
        iam = aws_client(self.aws, "iam")
        return len(iam.list_policy_versions(PolicyArn=self.world.policy_arn)["Versions"])

    def nodegroups(self) -> list[str]:
        return list(aws_client(self.aws, "eks").list_nodegroups(clusterName=CLUSTER)["nodegroups"])

    def nodegroup_tags(self, name: str) -> dict[str, str]:
        nodegroup = aws_client(self.aws, "eks").describe_nodegroup(clusterName=CLUSTER, nodegroupName=name)
        return dict(nodegroup["nodegroup"].get("tags", {}))


def seed_world(apiserver: FakeApiServer, aws: AwsEnv, db_url: str, aws_url: str) -> World:
    """What a platform has before the bot runs: Dex's namespace, an EKS cluster with subnets and a
    node role, a managed policy admins wrote (already granting an older workspace), and a bucket
    that has nothing to do with the bot."""
    apiserver.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "auth"}})
    ec2 = aws_client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{z}")["Subnet"][
            "SubnetId"
        ]
        for i, z in enumerate("ab")
    )
    iam = aws_client(aws, "iam")
    assume = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    trust = json.dumps({"Version": "2012-10-17", "Statement": [assume]})
    node_role = iam.create_role(RoleName="kf-live-nodes", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    aws_client(aws, "eks").create_cluster(
        name=CLUSTER,
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/eks",
        resourcesVpcConfig={"subnetIds": list(subnets)},
    )
    document = {"Version": "2012-10-17", "Statement": [ADMIN_STATEMENT, OLDER_GRANT]}
    policy = iam.create_policy(PolicyName="kf-notebooks-s3", PolicyDocument=json.dumps(document))
    policy_arn = policy["Policy"]["Arn"]
    aws_client(aws, "s3").create_bucket(Bucket=UNRELATED_BUCKET)
    aws_client(aws, "s3").put_bucket_tagging(
        Bucket=UNRELATED_BUCKET, Tagging={"TagSet": [{"Key": "team", "Value": "ops"}]}
    )
    return World(db_url, apiserver.url, aws_url, str(policy_arn), subnets, str(node_role))


def seed_human_dex_user(apiserver: FakeApiServer) -> dict[str, Any]:
    """Alice's Dex login as an admin made it by hand, before the bot: no labels at all."""
    return apiserver.seed(
        {
            "apiVersion": "dex.coreos.com/v1",
            "kind": "Password",
            "metadata": {"name": dex_password_object_name(ALICE.email), "namespace": "auth"},
            "email": ALICE.email,
            "hash": base64.b64encode(HUMAN_HASH.encode()).decode(),
            "username": "alice",
            "userID": "08a8684b-db88-4b73-90a9-3cd1661f5466",
        }
    )


@pytest.fixture
def make_live(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    _migrated_sqlite_file: Path,
) -> Iterator[Callable[..., Live]]:
    """``make(db_url=None, through_proxy=False)``: the world seeded and the test's live stack on
    it; without ``db_url`` a copy of the session's migrated SQLite file (migrating costs more than
    most tests)."""
    made: list[tuple[Backend, client.ApiClient]] = []

    def make(db_url: str | None = None, *, through_proxy: bool = False) -> Live:
        migrated = db_url is None
        if db_url is None:
            path = tmp_path / "kfbot.db"
            shutil.copyfile(_migrated_sqlite_file, path)
            db_url = f"sqlite:///{path}"
        world = seed_world(apiserver, aws, db_url, fault_proxy.url if through_proxy else aws.url)
        clock = FakeClock()
        backend, api = live_backend(world, clock, "resumer")
        made.append((backend, api))
        if not migrated:
            backend.migrate()
        notifier = RecordingNotifier()
        core = services.Core(backend.core, backend.uow, backend.facts, clock, notifier, backend.secrets)
        return Live(world, apiserver, aws, clock, backend, core, notifier)

    yield make
    for backend, api in made:
        backend.close()
        api.close()


# Workers are forked from a forkserver that has imported the live stack once: a fresh interpreter
# per crash would spend seconds importing kubernetes, boto3 and SQLAlchemy before doing anything.
_WORKERS = multiprocessing.get_context("forkserver")
_WORKERS.set_forkserver_preload(["tests.crash_worker_live"])


def kill_worker_at(live: Live, step: int, when: str, world: World | None = None) -> None:
    """Run the request in a worker process that SIGKILLs itself at ``step`` (see crash_worker_live)."""
    worker = _WORKERS.Process(
        target=crash_worker_live.run_in_child,
        args=((world or live.world).to_json(), str(step), when, live.clock.now().isoformat(),
              dict(os.environ)),
        name=f"doomed-worker-{step}-{when}",
    )
    worker.start()
    worker.join(timeout=60)
    if worker.exitcode is None:
        worker.kill()
        worker.join()
        pytest.fail("the worker hung")
    assert worker.exitcode != EXIT_NOT_KILLED, "the worker never reached the kill point"
    assert worker.exitcode == -signal.SIGKILL, f"the worker ended with {worker.exitcode}"


def resume(live: Live, request_id: str) -> Request:
    assert live.run() == 0, "the dead worker's lease still holds the request"
    live.clock.advance(timedelta(minutes=10))
    assert live.run() >= 1
    return live.request(request_id)


def assert_exactly_one_of_each(live: Live, request_id: str) -> None:
    profiles = live.profiles()
    assert [p["metadata"]["name"] for p in profiles] == [NAMESPACE]
    assert profiles[0]["metadata"]["labels"][MARK] == request_id
    passwords = live.passwords()
    assert [p["email"] for p in passwords] == [ALICE.email]
    assert passwords[0]["metadata"]["labels"][MARK] == request_id
    assert live.buckets() == [BUCKET, UNRELATED_BUCKET]
    assert live.bucket_tags(BUCKET)[MARK] == request_id
    assert live.statements() == [ADMIN_STATEMENT, {**OLDER_GRANT, "Resource": OLDER_ARNS + OURS}]
    assert live.policy_versions() == 2  # the admins' v1 and one version for the one addition
    assert live.nodegroups() == [NODEGROUP]
    assert live.nodegroup_tags(NODEGROUP)[MARK] == request_id
    poddefaults = live.poddefaults()
    assert [p["metadata"]["name"] for p in poddefaults] == [NODEGROUP]
    assert poddefaults[0]["metadata"]["labels"][MARK] == request_id
    [policy] = live.activity_policies()
    assert policy["metadata"]["labels"][MARK] == request_id


def assert_nothing_of_ours_left(live: Live, human_password: dict[str, Any] | None) -> None:
    assert live.profiles() == []
    assert live.activity_policies() == []
    assert live.apiserver.get("v1", "namespaces", NAMESPACE) is None
    if human_password is None:
        assert live.passwords() == []
    else:  # the human's login is untouched: same object, same hash, still no labels
        [password] = live.passwords()
        assert password["metadata"]["uid"] == human_password["metadata"]["uid"]
        assert password["hash"] == human_password["hash"]
        assert "labels" not in password["metadata"]
    assert live.buckets() == [UNRELATED_BUCKET]
    assert live.bucket_tags(UNRELATED_BUCKET) == {"team": "ops"}
    assert live.statements() == [ADMIN_STATEMENT, OLDER_GRANT]
    assert live.nodegroups() == []


# -- crashes -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("step", range(len(STEP_ACTIONS)), ids=list(STEP_ACTIONS))
def test_a_worker_killed_at_any_step_resumes_to_exactly_one_of_each(
    make_live: Callable[..., Live], step: int, when: str
) -> None:
    live = make_live()
    rid = live.submit()

    kill_worker_at(live, step, when)

    before = live.steps(rid)
    expected = StepStatus.RUNNING if when == "after_call_before_record" else StepStatus.DONE
    assert before[step].status is expected
    assert live.request(rid).state is RequestState.APPLYING
    assert resume(live, rid).state is RequestState.SUCCEEDED
    after = live.steps(rid)
    assert [after[i].status for i in range(len(STEP_ACTIONS))] == [StepStatus.DONE] * len(STEP_ACTIONS)
    created = {STEP_ACTIONS[i]: (r.outcome.created if r.outcome else None) for i, r in after.items()}
    assert created == dict.fromkeys(STEP_ACTIONS, True)
    iam = STEP_ACTIONS.index("aws.iam_resources")
    assert after[iam].outcome is not None and after[iam].outcome.details == {"added": OURS}
    assert_exactly_one_of_each(live, rid)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_after_its_iam_write_resumes_exactly_on_postgres(
    make_live: Callable[..., Live], postgres_url: str
) -> None:
    live = make_live(postgres_url)
    rid = live.submit()

    kill_worker_at(live, STEP_ACTIONS.index("aws.iam_resources"), "after_call_before_record")

    assert resume(live, rid).state is RequestState.SUCCEEDED
    assert all(r.outcome is not None and r.outcome.created for r in live.steps(rid).values())
    assert_exactly_one_of_each(live, rid)


# -- permanent failures --------------------------------------------------------------------------


def inject_permanent_failure(live: Live, proxy: FaultProxy, step: int) -> None:
    """Make step ``step``'s own call fail for good; where possible *after* it created its object,
    so the step must take back what it made (a failed step is not compensated by the engine)."""
    action = STEP_ACTIONS[step]
    if action == "kubeflow.profile":
        live.apiserver.fail_next("POST", "/profiles$", 422)
    elif action == "dex.user":
        live.apiserver.fail_next("POST", "/namespaces/auth/passwords$", 403)
    elif action == "kubeflow.notebook_activity":
        live.apiserver.fail_next("POST", f"/namespaces/{NAMESPACE}/authorizationpolicies$", 403)
    elif action == "aws.bucket":  # created and marked, then securing it is denied
        proxy.add(Fault("PUT", rf"/{BUCKET}\?publicAccessBlock", status=403, body=access_denied("secure")))
    elif action == "aws.iam_resources":
        proxy.add(
            Fault("POST", "^/$", body_contains="Action=CreatePolicyVersion", status=403,
                  body=access_denied("CreatePolicyVersion"))
        )
    elif action == "aws.nodegroup":  # created, then EKS reports it failed
        def create_failed(answer: dict[str, Any]) -> dict[str, Any]:
            answer["nodegroup"]["status"] = "CREATE_FAILED"
            answer["nodegroup"]["health"] = {"issues": [{"code": "AsgInstanceLaunchFailures",
                                                         "message": "no capacity"}]}
            return answer

        proxy.add(Fault("GET", f"/node-groups/{NODEGROUP}$", times=None, rewrite=create_failed))
    else:
        live.apiserver.fail_next("POST", f"/namespaces/{NAMESPACE}/poddefaults$", 403)


DEX = STEP_ACTIONS.index("dex.user")
# With a human's Dex user only from the bucket step on: before it, the Dex step has not found it yet.
FAILURES = [
    *(pytest.param(i, False, id=f"{a}-no-dex-user") for i, a in enumerate(STEP_ACTIONS)),
    *(pytest.param(i, True, id=f"{a}-human-dex-user") for i, a in enumerate(STEP_ACTIONS) if i > DEX),
]


@pytest.mark.parametrize(("step", "human_dex_user"), FAILURES)
def test_a_permanent_failure_at_any_step_leaves_nothing_of_ours_and_everything_else(
    make_live: Callable[..., Live], fault_proxy: FaultProxy, step: int, human_dex_user: bool
) -> None:
    live = make_live(through_proxy=True)
    human = seed_human_dex_user(live.apiserver) if human_dex_user else None
    rid = live.submit()
    inject_permanent_failure(live, fault_proxy, step)

    live.run()

    request = live.request(rid)
    assert request.state is RequestState.FAILED, request.reason
    steps = live.steps(rid)
    assert steps[step].status is StepStatus.FAILED
    assert [steps[i].status for i in range(step)] == [StepStatus.UNDONE] * step
    if human is not None:
        outcome = steps[DEX].outcome
        assert outcome is not None and outcome.created is False  # found, so never removed
    assert_nothing_of_ours_left(live, human)


# -- a crash and a pre-existing object -----------------------------------------------------------


@pytest.mark.slow
def test_a_found_dex_user_is_not_claimed_by_a_resumed_step_nor_removed_by_compensation(
    make_live: Callable[..., Live], fault_proxy: FaultProxy
) -> None:
    # The resumed worker goes through the proxy (to fail step 3); the killed one straight to moto.
    live = make_live(through_proxy=True)
    human = seed_human_dex_user(live.apiserver)
    rid = live.submit()

    straight_to_moto = dataclasses.replace(live.world, aws_url=live.aws.url)
    kill_worker_at(live, DEX, "after_call_before_record", straight_to_moto)
    assert live.steps(rid)[DEX].status is StepStatus.RUNNING  # found the user, then died unrecorded
    inject_permanent_failure(live, fault_proxy, STEP_ACTIONS.index("aws.bucket"))

    assert resume(live, rid).state is RequestState.FAILED
    steps = live.steps(rid)
    assert steps[DEX].outcome is not None and steps[DEX].outcome.created is False
    bucket = STEP_ACTIONS.index("aws.bucket")
    assert [steps[i].status for i in range(bucket + 1)] == [StepStatus.UNDONE] * bucket + [StepStatus.FAILED]
    assert_nothing_of_ours_left(live, human)
