"""Builds the *live* stack for end-to-end tests: the real composition with live actions.

What is real: settings from environment variables (``bot.settings.Settings.from_env``, so the
variable names are exercised too), ``provisioning.build_backend`` in ``live`` mode (the Kubeflow,
Dex and AWS adapters, the engine, the store on SQLite or PostgreSQL), ``handlers.services``.
What is played: the Kubernetes API (``tests.fakes.apiserver.FakeApiServer``, with its profile
controller and Deployment rollouts), AWS (moto's server, reached through the standard credential
chain and ``AWS_ENDPOINT_URL`` that the ``aws`` fixture sets), and time (a ``FakeClock`` unless a
test needs real time for Dex's quiet period).

``seed_aws`` puts in moto what a platform team has before the bot runs (an EKS cluster, its
subnets, a node role, managed policies written by admins); ``seed_kube`` puts Namespace ``auth``
in the apiserver and, in ``configmap`` mode, Dex as Kubeflow ships it: the ConfigMap, Secret and
Deployment are read in place from ``../shared/reference/kubeflow-manifests/dex-*.yaml``.

Importable by any test module; nothing here is a pytest fixture, so callers choose the backend
(``db_url``), the Dex mode and extra environment.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa
import yaml
from kubernetes import client

import provisioning
from bot.settings import Settings
from handlers import errors, parse, services
from handlers.kinds import RequestKind
from handlers.model import Actor, Request, RequestState
from handlers.ports import Clock
from provisioning import k8s
from provisioning.backend import Backend
from provisioning.engine import Engine
from tests.fakes.apiserver import FakeApiServer, reference_dir
from tests.fakes.aws_fixtures import ACCOUNT_ID
from tests.fakes.clock import FakeClock
from tests.harness import RecordingNotifier

AUDIT_KEY = "live-test-audit-key-0123456789abcdef"
REGION = "us-east-1"
CLUSTER = "kf-live"
NODE_ROLE = "kf-live-nodes"
POLICY_NAMES = ("kf-notebooks-s3", "kf-pipelines-s3")
ADMIN_STATEMENT = {"Sid": "AdminWritten", "Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}
DEX_NAMESPACE = "auth"
BCRYPT_COST = "10"  # the cheapest cost Dex accepts keeps the tests fast
MANAGED_BY = {"app.kubernetes.io/managed-by": "kf-chatops"}
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

ALICE = Actor("UALICE001", "alice@example.com")
BOB = Actor("UBOB00001", "bob@example.com")
ADMIN = Actor("UADMIN001", "admin@example.com", is_admin=True)
ADMIN2 = Actor("UADMIN002", "admin2@example.com", is_admin=True)

RUNBOOK_ENV: Mapping[str, str] = {
    "KFBOT_NAME_NAMESPACE": "aic-ns-{project}-ws",
    "KFBOT_NAME_BUCKET": "s3-{region_alias}-{infra}-{env}-{project}",
    "KFBOT_NAME_NODEGROUP": "ng-{region_alias}-aicond-{project}-ws-{spec}",
    "KFBOT_NAME_NODE_LABEL_KEY": "aic-role",
    "KFBOT_NAME_NODE_LABEL_VALUE": "{project}-ws-{spec}",
    "KFBOT_REGION_ALIAS": "use1",
    "KFBOT_INFRA": "aicond",
    "KFBOT_ENV": "dev",
    "KFBOT_INSTANCE_SPECS": "g4dn.xlarge=g4dnxl,g5.2xlarge=g52xl",
}
"""A platform team's runbook convention, reproduced by configuration alone."""


# -- what exists before the bot runs ----------------------------------------------------------------


@dataclass(frozen=True)
class AwsWorld:
    endpoint_url: str
    cluster: str
    subnets: tuple[str, ...]
    node_role_arn: str
    policy_arns: tuple[str, ...]


_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def aws_client(endpoint_url: str, service: str) -> Any:
    """A plain boto3 client on moto for arranging and asserting (cached: clients are slow to make,
    and thread-safe once made)."""
    with _CLIENTS_LOCK:
        found = _CLIENTS.get((endpoint_url, service))
        if found is None:
            found = _CLIENTS[endpoint_url, service] = boto3.client(  # type: ignore[call-overload]
                service, region_name=REGION, endpoint_url=endpoint_url
            )
        return found


def seed_aws(endpoint_url: str, policy_names: Sequence[str] = POLICY_NAMES) -> AwsWorld:
    """An EKS cluster in a VPC with two subnets, a node role, managed policies written by admins."""
    ec2 = aws_client(endpoint_url, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab")
    )
    iam = aws_client(endpoint_url, "iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName=NODE_ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    document = json.dumps({"Version": "2012-10-17", "Statement": [ADMIN_STATEMENT]})
    arns = tuple(
        str(iam.create_policy(PolicyName=name, PolicyDocument=document)["Policy"]["Arn"])
        for name in policy_names
    )
    aws_client(endpoint_url, "eks").create_cluster(
        name=CLUSTER,
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/eks-cluster",
        resourcesVpcConfig={"subnetIds": list(subnets)},
    )
    return AwsWorld(endpoint_url, CLUSTER, subnets, str(role), arns)


def dex_manifest(name: str) -> dict[str, Any]:
    """One of Kubeflow's Dex manifests, read in place from the shared reference folder."""
    path = reference_dir() / "kubeflow-manifests" / name
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), path
    return loaded


def seed_kube(apiserver: FakeApiServer, api: client.ApiClient, dex_mode: str) -> None:
    """Namespace ``auth``; in configmap mode Dex's ConfigMap, Secret and Deployment as shipped.

    They go through the API (not ``seed``) so the apiserver folds the Secret's ``stringData``
    into ``data`` and gives the Deployment a rollout status, as a real cluster would have."""
    apiserver.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEX_NAMESPACE}})
    if dex_mode != "configmap":
        return
    kube = k8s.Kube(api)
    for kind, name in (
        (k8s.CONFIG_MAP, "dex-config-map.yaml"),
        (k8s.SECRET, "dex-dex-passwords.yaml"),
        (k8s.DEPLOYMENT, "dex-deployment.yaml"),
    ):
        manifest = dex_manifest(name)
        body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
        body["metadata"] = {**manifest["metadata"], "namespace": DEX_NAMESPACE}
        kube.create(kind, body)


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig pointing at the fake apiserver (what ``KUBECONFIG`` names)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
        "users": [{"name": "kfbot", "user": {"token": "fake-kfbot-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "kfbot"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# -- settings ---------------------------------------------------------------------------------------


def live_env(db_url: str, world: AwsWorld, *, dex_mode: str = "password-cr", **extra: str) -> dict[str, str]:
    """The environment a live deployment would have (docs/SETTINGS.md names)."""
    return {
        "KFBOT_PROVISIONER": "live",
        "KFBOT_DATABASE_URL": db_url,
        "KFBOT_AUDIT_KEY": AUDIT_KEY,
        "KFBOT_ADMIN_USERS": f"{ADMIN.user_id},{ADMIN2.user_id}",
        "KFBOT_AWS_REGION": REGION,
        "KFBOT_EKS_CLUSTER": world.cluster,
        "KFBOT_NODEGROUP_SUBNETS": ",".join(world.subnets),
        "KFBOT_NODE_ROLE_ARN": world.node_role_arn,
        "KFBOT_IAM_POLICY_ARNS": ",".join(world.policy_arns),
        "KFBOT_DEX_MODE": dex_mode,
        "KFBOT_DEX_NAMESPACE": DEX_NAMESPACE,
        "KFBOT_BCRYPT_COST": BCRYPT_COST,
        "KFBOT_WORKER_ID": "live-worker-1",
        "KFBOT_LEASE_SECONDS": "30",
        **extra,
    }


def tune_for_tests(settings: Settings, *, quiet_period: float = 1.0, poll: float = 0.02) -> Settings:
    """Shorter waits than production (knobs that have no environment variable)."""
    prov = settings.provisioning
    engine = dataclasses.replace(prov.engine, poll_interval=poll, retry_initial=0.05, retry_max=0.5)
    dex = dataclasses.replace(prov.dex, restart_quiet_period=quiet_period)
    kubeflow = dataclasses.replace(prov.kubeflow, poll_interval=poll, namespace_timeout=5.0)
    prov = dataclasses.replace(prov, engine=engine, dex=dex, kubeflow=kubeflow)
    return dataclasses.replace(settings, provisioning=prov)


# -- the stack --------------------------------------------------------------------------------------


@dataclass
class LiveStack:
    settings: Settings
    backend: Backend
    core: services.Core
    clock: Clock
    notifier: RecordingNotifier
    apiserver: FakeApiServer
    api: client.ApiClient
    world: AwsWorld
    _keys: int = field(default=0)

    # -- asking and deciding, as the edges do --
    def kind(self, actor: Actor, text: str) -> RequestKind:
        """``/kf TEXT`` parsed exactly as Slack and the shell parse it; must be a request kind."""
        parsed = parse.parse_command(
            text, requester_email=actor.email, resolve_user=_no_mentions, settings=self.core.settings
        )
        assert not isinstance(parsed, (parse.Control, parse.WorkspaceForm, parse.PasswordReset)), parsed
        return parsed

    def submit(self, actor: Actor, text: str) -> Request:
        self._keys += 1
        result = services.submit(
            self.core, actor, self.kind(actor, text), idempotency_key=f"live-test:{self._keys}"
        )
        return result.request

    def approve(self, request_id: str, actor: Actor = ADMIN) -> Request:
        return services.decide(
            self.core, actor, request_id, approve=True, decision_key=f"live-test:{request_id}:{actor.user_id}"
        )

    def run(self) -> int:
        return self.backend.run_until_idle(self.notifier)

    def apply(self, actor: Actor, text: str, approver: Actor = ADMIN) -> Request:
        """Submit, approve, run until idle; the request as it ended."""
        request = self.submit(actor, text)
        if request.state is RequestState.PENDING:
            self.approve(request.id, approver)
        self.run()
        return self.request(request.id)

    def request(self, request_id: str) -> Request:
        with self.backend.uow() as uow:
            return uow.requests.get(request_id)

    def requests(self) -> list[Request]:
        with self.backend.uow() as uow:
            return list(uow.requests.list(limit=1000))

    # -- several workers in threads (one process) --
    def engines(self, count: int) -> list[Engine]:
        """``count`` engines sharing this process's actions (one Dex restart coordinator), each
        with its own worker id, as threads of one bot process would be."""
        base = self.settings.provisioning.engine
        return [
            Engine(
                self.backend.db,
                self.backend.actions,
                self.backend.core,
                self.backend.facts,
                self.backend.clock,
                dataclasses.replace(base, worker_id=f"live-worker-{i + 1}"),
                self.notifier,
            )
            for i in range(count)
        ]

    def run_workers(self, count: int, done: Callable[[], bool], timeout: float = 90.0) -> None:
        """Run ``count`` engine threads until ``done()``; raises if it takes longer than ``timeout``."""
        stop = threading.Event()
        threads = [
            threading.Thread(target=engine.run_forever, args=(stop,), name=f"live-engine-{i}", daemon=True)
            for i, engine in enumerate(self.engines(count))
        ]
        for thread in threads:
            thread.start()
        finished = threading.Event()
        try:
            deadline = timeout
            while deadline > 0 and not done():
                finished.wait(0.05)
                deadline -= 0.05
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        if not done():
            raise AssertionError(f"the workers did not finish within {timeout}s")

    # -- what the world holds --
    def kube(self) -> k8s.Kube:
        return k8s.Kube(self.api)

    def aws(self, service: str) -> Any:
        return aws_client(self.world.endpoint_url, service)

    def close(self) -> None:
        self.backend.close()
        self.api.close()


def _no_mentions(user_id: str) -> str:
    raise errors.InvalidInput("Mentions are not resolved in these tests; type the email address.")


def build_live_stack(
    db_url: str,
    apiserver: FakeApiServer,
    world: AwsWorld,
    *,
    dex_mode: str = "password-cr",
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
    quiet_period: float = 1.0,
    migrate: bool = True,
    seed: bool = True,
    notebook_url: Callable[[str, str], str] | None = None,
) -> LiveStack:
    """The live composition over ``db_url`` with its Kubernetes client on ``apiserver``.

    Settings come from ``live_env`` plus ``env`` through ``Settings.from_env``; the backend is
    ``provisioning.build_backend(..., kube_api=...)`` in live mode."""
    clock = clock or FakeClock()
    settings = tune_for_tests(
        Settings.from_env(live_env(db_url, world, dex_mode=dex_mode, **dict(env or {}))),
        quiet_period=quiet_period,
    )
    api = client.ApiClient(client.Configuration(host=apiserver.url))
    if seed:
        seed_kube(apiserver, api, dex_mode)
    backend = provisioning.build_backend(
        settings.provisioning, settings.core, clock, kube_api=api, notebook_url=notebook_url
    )
    assert backend.mode == "live"
    if migrate:
        backend.migrate()
    notifier = RecordingNotifier()
    core = services.Core(settings.core, backend.uow, backend.facts, clock, notifier, backend.secrets)
    return LiveStack(settings, backend, core, clock, notifier, apiserver, api, world)


@contextmanager
def live_stack(db_url: str, apiserver: FakeApiServer, world: AwsWorld, **kwargs: Any) -> Iterator[LiveStack]:
    stack = build_live_stack(db_url, apiserver, world, **kwargs)
    try:
        yield stack
    finally:
        stack.close()


# -- reading the world back -------------------------------------------------------------------------


def default_document(stack_or_url: LiveStack | str, policy_arn: str) -> dict[str, Any]:
    url = stack_or_url.world.endpoint_url if isinstance(stack_or_url, LiveStack) else stack_or_url
    iam = aws_client(url, "iam")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    return dict(iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"])


def granted_resources(document: Mapping[str, Any]) -> list[str]:
    """Every Resource in the document's statements that grant S3 actions."""
    out: list[str] = []
    for statement in document.get("Statement", []):
        resources = statement.get("Resource", [])
        out += resources if isinstance(resources, list) else [resources]
    return out


def bucket_arns(bucket: str) -> list[str]:
    return [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def dex_static_passwords(apiserver: FakeApiServer) -> list[dict[str, Any]]:
    cm = apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
    assert cm is not None
    return list(yaml.safe_load(cm["data"]["config.yaml"]).get("staticPasswords") or [])


def dex_secret_data(apiserver: FakeApiServer) -> dict[str, str]:
    secret = apiserver.get("v1", "secrets", "dex-passwords", DEX_NAMESPACE)
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def dex_restarts(apiserver: FakeApiServer) -> list[str]:
    """The ``kubectl.kubernetes.io/restartedAt`` values written to Dex's Deployment, one per
    write that changed it (each is one rollout restart)."""
    values: list[str] = []
    suffix = f"/namespaces/{DEX_NAMESPACE}/deployments/dex"
    for record in apiserver.requests:
        if record.method not in ("PATCH", "PUT") or not record.path.endswith(suffix):
            continue
        body = record.body if isinstance(record.body, dict) else {}
        template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
        value = (template.get("annotations") or {}).get(RESTARTED_AT)
        if value is not None:
            values.append(str(value))
    return values


def dump_database(db_url_or_engine: str | sa.Engine) -> str:
    """Every row of every table, as text (to search it for what must never be stored)."""
    engine = sa.create_engine(db_url_or_engine) if isinstance(db_url_or_engine, str) else db_url_or_engine
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        lines: list[str] = []
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    lines.append(f"{table.name}: {tuple(row)!r}")
        return "\n".join(lines)
    finally:
        if isinstance(db_url_or_engine, str):
            engine.dispose()


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; the timeout only bounds a hang (workers run late under load)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


__all__ = [
    "ADMIN",
    "ADMIN2",
    "ADMIN_STATEMENT",
    "ALICE",
    "BOB",
    "CLUSTER",
    "DEX_NAMESPACE",
    "MANAGED_BY",
    "REGION",
    "RUNBOOK_ENV",
    "AwsWorld",
    "LiveStack",
    "aws_client",
    "bucket_arns",
    "build_live_stack",
    "default_document",
    "dex_restarts",
    "dex_secret_data",
    "dex_static_passwords",
    "dump_database",
    "granted_resources",
    "live_env",
    "live_stack",
    "seed_aws",
    "seed_kube",
    "tune_for_tests",
    "wait_until",
    "write_kubeconfig",
]
