"""``kfbot doctor`` against the fakes: the fake apiserver answering SelfSubjectAccessReviews from a
per-test allow-list, moto for AWS, the fake Slack Web API, and a real SQLite database.

"All granted" is the chart's own RBAC: the allow-list is read from
``helm/kf-chatops/templates/rbac.yaml`` and ``rbac-dex.yaml`` (a small renderer below handles the
few template constructs they use), so these tests also prove that the chart grants every
permission the doctor asks about, and ``test_the_permission_table_mirrors_the_chart`` proves the
reverse.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from kubernetes import client

import provisioning
from bot import app as composition
from bot import cli
from bot import doctor as bot_doctor
from bot.settings import Settings
from provisioning.doctor import Status, check_prometheus
from provisioning.settings import CostProbeSettings
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import ACCOUNT_ID, AwsEnv
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "kf-chatops"
ALL_SCOPES = ",".join(bot_doctor.REQUIRED_SCOPES)
CLUSTER = "kubeflow"
POLICY_NAME = "kubeflow-workspace-buckets"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT_ID}:policy/{POLICY_NAME}"

Grant = tuple[str, str, str, str, str]
"""(verb, group, resource[/subresource], namespace ("" = cluster-wide), name ("" = any))."""


# -- the chart's RBAC, rendered just enough ------------------------------------------------------------

_DIRECTIVE = re.compile(r"^\s*\{\{-?\s*(if|else if|else|end)\b\s*(.*?)\s*-?\}\}\s*$")
_TEMPLATE_ONLY = re.compile(r"^\s*\{\{-?.*-?\}\}\s*$")
_INLINE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.removeprefix(".Values.").split("."):
        node = node[part]
    return node


def _condition(expr: str, values: dict[str, Any]) -> bool:
    expr = expr.strip()
    if expr.startswith("(") and expr.endswith(")"):
        return _condition(expr[1:-1], values)
    if match := re.fullmatch(r"(eq|ne) (\.Values\.[\w.]+) \"([^\"]*)\"", expr):
        equal = _lookup(values, match.group(2)) == match.group(3)
        return equal if match.group(1) == "eq" else not equal
    if match := re.fullmatch(r"and (\.Values\.[\w.]+) (\(.*\))", expr):
        return bool(_lookup(values, match.group(1))) and _condition(match.group(2), values)
    if re.fullmatch(r"\.Values\.[\w.]+", expr):
        return bool(_lookup(values, expr))
    raise AssertionError(f"the test's template renderer does not know `{expr}`: teach it")


def _inline(expr: str, values: dict[str, Any]) -> str:
    if expr == "$fullname":
        return "kf-chatops"
    if match := re.fullmatch(r"(\.Values\.[\w.]+)(\s*\|\s*quote)?", expr):
        value = _lookup(values, match.group(1))
        return json.dumps(value) if match.group(2) else str(value)
    raise AssertionError(f"the test's template renderer does not know `{{{{ {expr} }}}}`: teach it")


def render(template: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch is active, some branch of this if was taken)

    def active() -> bool:
        return all(frame[0] for frame in stack)

    for line in template.read_text().splitlines():
        if match := _DIRECTIVE.match(line):
            word, expr = match.groups()
            if word == "if":
                taken = active() and _condition(expr, values)
                stack.append((taken, taken))
            elif word == "else if":
                _, done = stack.pop()
                taken = not done and _condition(expr, values)
                stack.append((taken, done or taken))
            elif word == "else":
                _, done = stack.pop()
                stack.append((not done, True))
            else:
                stack.pop()
            continue
        if not active() or _TEMPLATE_ONLY.match(line):
            continue
        out.append(_INLINE.sub(lambda m: _inline(m.group(1), values), line))
    return [doc for doc in yaml.safe_load_all("\n".join(out)) if isinstance(doc, dict)]


def chart_values(dex_mode: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    values["dex"]["mode"] = dex_mode
    values.setdefault("rbac", {})["create"] = True
    return values


def chart_grants(dex_mode: str) -> set[Grant]:
    values = chart_values(dex_mode)
    docs = render(CHART / "templates" / "rbac.yaml", values) + render(
        CHART / "templates" / "rbac-dex.yaml", values
    )
    grants: set[Grant] = set()
    for doc in docs:
        if doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        namespace = doc["metadata"].get("namespace", "") if doc["kind"] == "Role" else ""
        for rule in doc.get("rules") or []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            grants.add((verb, group, resource, namespace, name))
    return grants


def grant_chart_rbac(apiserver: FakeApiServer, dex_mode: str, *, except_: set[Grant] = frozenset()) -> None:
    """Answer SelfSubjectAccessReviews with exactly what the chart grants (minus ``except_``)."""
    apiserver.deny_all_access()
    for verb, group, resource, namespace, name in sorted(chart_grants(dex_mode) - set(except_)):
        plural, _, sub = resource.partition("/")
        apiserver.allow_access(
            verb, plural, group, namespace=namespace or None, subresource=sub, name=name or None
        )


# -- the world the doctor looks at -------------------------------------------------------------------------


def grant_scopes(monkeypatch: pytest.MonkeyPatch, fake: FakeSlack, scopes: str) -> None:
    """Make the fake answer like Slack: every Web API response names the token's scopes."""
    serve = fake.serve

    def with_scopes(*args: Any) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = serve(*args)
        return status, {**headers, "x-oauth-scopes": scopes}, body

    monkeypatch.setattr(fake, "serve", with_scopes)


def env_for(fake: FakeSlack, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake.base_url,
        "KFBOT_ADMIN_CHANNEL": "CADMINS01",
        "KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}",
        "KFBOT_AUDIT_KEY": "test-audit-key-0123456789abcdef",
        "KFBOT_EKS_CLUSTER": CLUSTER,
        "KFBOT_AWS_REGION": "us-east-1",
        "KFBOT_IAM_POLICY_ARNS": POLICY_ARN,
        "KFBOT_NODEGROUP_SUBNETS": "subnet-0a1b2c3d",
        "KFBOT_NODE_ROLE_ARN": "arn:aws:iam::123456789012:role/kf-nodes",
        **extra,
    }


def migrate(settings: Settings) -> None:
    dry_run = dataclasses.replace(settings.provisioning, mode="dry-run")  # no cluster needed to migrate
    backend = composition.build_backend(dataclasses.replace(settings, provisioning=dry_run))
    backend.migrate()
    backend.close()


@pytest.fixture
def world(
    apiserver: FakeApiServer, aws: AwsEnv, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeApiServer]:
    """A cluster with Kubeflow (the fake's CRDs and a profiles Deployment), an AWS account with the
    cluster and the bucket policy, and a Slack app with all its scopes."""
    apiserver.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}})
    apiserver.seed({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "profiles-deployment", "namespace": "kubeflow"},
        "spec": {"template": {"spec": {"containers": [{
            "name": "manager", "image": "profile-controller",
            "env": [{"name": "USERID_HEADER", "value": "kubeflow-userid"},
                    {"name": "USERID_PREFIX", "value": ""}],
        }]}}},
    })  # fmt: skip
    aws.client("eks").create_cluster(
        name=CLUSTER, roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/eks", resourcesVpcConfig={"subnetIds": []}
    )
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                        "Resource": "arn:aws:s3:::none/*"}]}
    aws.client("iam").create_policy(PolicyName=POLICY_NAME, PolicyDocument=json.dumps(document))
    grant_scopes(monkeypatch, fake_slack, ALL_SCOPES)
    yield apiserver


def run_doctor(
    settings: Settings, kube_api: client.ApiClient | None = None, *, live: bool = False
) -> tuple[int, str, list[provisioning.CheckResult]]:
    """What ``kfbot doctor`` does (``bot.doctor.run``), keeping the typed rows for assertions."""
    results = bot_doctor.collect(settings, live=live, kube_api=kube_api)
    output = bot_doctor.render(results, mode=settings.mode, live=live)
    return bot_doctor.exit_code(results), output, results


def to_fix(results: list[provisioning.CheckResult]) -> dict[str, provisioning.CheckResult]:
    return {r.check: r for r in results if r.status is provisioning.Status.FIX}


def line_of(output: str, needle: str) -> str:
    found = [line for line in output.splitlines() if needle in line]
    assert found, f"{needle!r} not in:\n{output}"
    return found[0]


# -- all granted -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dex_mode", ["password-cr", "configmap", "external"])
def test_everything_granted_is_all_ok_and_exit_0(
    world: FakeApiServer, kube_api_client: client.ApiClient, fake_slack: FakeSlack, tmp_path: Path,
    dex_mode: str,
) -> None:
    env = env_for(fake_slack, tmp_path, KFBOT_PROVISIONER="live", KFBOT_DEX_MODE=dex_mode)
    settings = Settings.from_env(env)
    migrate(settings)
    grant_chart_rbac(world, dex_mode)
    if dex_mode == "configmap":
        config = {"issuer": "http://dex", "enablePasswordDB": True, "staticPasswords": []}
        world.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "auth"}})
        auth = {"namespace": "auth"}
        world.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dex", **auth},
                    "data": {"config.yaml": yaml.safe_dump(config)}})
        world.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dex-passwords", **auth},
                    "data": {}})
        container = {"name": "dex", "image": "dex", "envFrom": [{"secretRef": {"name": "dex-passwords"}}]}
        world.seed({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dex", **auth},
                    "spec": {"template": {"spec": {"containers": [container]}}}})

    code, output, results = run_doctor(settings, kube_api_client)

    assert code == 0, output
    assert to_fix(results) == {}
    assert output.rstrip().endswith("checks OK (or skipped).")
    permissions = len(provisioning.required_permissions(settings.provisioning))
    assert f"{permissions} of {permissions} permissions granted" in line_of(output, "permissions")
    assert {r.area for r in results} >= {"settings", "slack", "database", "kubernetes", "kubeflow", "dex",
                                         "identity", "aws"}
    assert "OK" in line_of(output, "Profile CRD (profiles.kubeflow.org/v1)")
    identity = {r.check: r.detail for r in results if r.area == "identity"}
    assert identity["header"] == "'kubeflow-userid' from profiles-deployment"
    assert identity["ingress principal"].endswith("from default")
    assert f"account {ACCOUNT_ID}" in line_of(output, "identity (sts)")
    assert "ACTIVE" in line_of(output, f"EKS cluster {CLUSTER}")
    assert "readable" in line_of(output, f"IAM policy {POLICY_ARN}")
    assert f"all {len(bot_doctor.REQUIRED_SCOPES)} scopes granted" in line_of(output, "scopes")
    # nothing was written: the only requests the doctor sent were reads and access reviews
    writes = [r for r in world.requests if r.method != "GET" and "selfsubjectaccessreviews" not in r.path]
    assert writes == []


# -- missing permissions -------------------------------------------------------------------------------


def test_each_missing_permission_is_named_and_exit_1(
    world: FakeApiServer, kube_api_client: client.ApiClient, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    settings = Settings.from_env(env_for(fake_slack, tmp_path, KFBOT_PROVISIONER="live"))
    migrate(settings)
    missing: set[Grant] = {
        ("create", "rbac.authorization.k8s.io", "rolebindings", "", ""),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "kubeflow-view"),
        ("create", "", "serviceaccounts/token", "", ""),
        ("get", "apps", "deployments", "kubeflow", "profiles-deployment"),
        ("delete", "dex.coreos.com", "passwords", "auth", ""),
    }
    grant_chart_rbac(world, "password-cr", except_=missing)

    code, output, results = run_doctor(settings, kube_api_client)

    assert code == 1
    named = {check for check, r in to_fix(results).items() if r.area == "kubernetes"} - {"permissions"}
    assert named == {
        "create rolebindings.rbac.authorization.k8s.io in all namespaces",
        "bind clusterroles.rbac.authorization.k8s.io kubeflow-view cluster-wide",
        "create serviceaccounts/token in all namespaces",
        "get deployments.apps profiles-deployment in namespace kubeflow",
        "delete passwords.dex.coreos.com in namespace auth",
    }
    for check in named:  # each on its own FIX row, with where the chart grants it
        row = line_of(output, check)
        assert row.startswith("FIX") and "denied" in row
    dex_row = to_fix(results)["delete passwords.dex.coreos.com in namespace auth"]
    assert "templates/rbac-dex.yaml" in dex_row.fix
    total = len(provisioning.required_permissions(settings.provisioning))
    assert f"{total - len(missing)} of {total} permissions granted" in output
    assert output.rstrip().endswith(f"{len(missing) + 1} to fix.")


def test_an_unreachable_apiserver_is_one_row_not_forty(
    world: FakeApiServer, kube_api_client: client.ApiClient, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    settings = Settings.from_env(env_for(fake_slack, tmp_path, KFBOT_PROVISIONER="live"))
    migrate(settings)
    world.fail_next("POST", r"selfsubjectaccessreviews", 401, times=10)

    code, _, results = run_doctor(settings, kube_api_client)

    assert code == 1
    kube = [r for r in results if r.area == "kubernetes"]
    assert [(r.check, r.status.value) for r in kube] == [("API access", "FIX")]
    assert any(r.area == "aws" and r.status is provisioning.Status.OK for r in results)  # AWS still checked


# -- Kubeflow, Dex and AWS objects ---------------------------------------------------------------------


def test_a_missing_profile_crd_dex_configmap_and_aws_objects_are_named(
    world: FakeApiServer, kube_api_client: client.ApiClient, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy/not-there"
    env = env_for(fake_slack, tmp_path, KFBOT_PROVISIONER="live", KFBOT_DEX_MODE="configmap",
                  KFBOT_EKS_CLUSTER="other", KFBOT_IAM_POLICY_ARNS=f"{POLICY_ARN},{arn}")
    settings = Settings.from_env(env)
    migrate(settings)
    grant_chart_rbac(world, "configmap")
    world.fail_next("GET", r"^/apis/kubeflow\.org/v1$", 404)  # the Profile CRD is not installed

    code, output, results = run_doctor(settings, kube_api_client)

    assert code == 1
    fixes = to_fix(results)
    assert set(fixes) == {
        "Profile CRD (profiles.kubeflow.org/v1)",
        "mode configmap: ConfigMap auth/dex",
        "mode configmap: Secret auth/dex-passwords",
        "mode configmap: Deployment auth/dex",
        f"IAM policy {arn}",
        "EKS cluster other",
    }
    assert "not served" in fixes["Profile CRD (profiles.kubeflow.org/v1)"].detail
    assert "KFBOT_EKS_CLUSTER" in fixes["EKS cluster other"].fix
    assert "OK" in line_of(output, f"IAM policy {POLICY_ARN}")


# -- Slack ------------------------------------------------------------------------------------------------


def test_a_missing_scope_is_named(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_scopes(monkeypatch, fake_slack, "commands,chat:write,users:read,users:read.email,channels:read")
    settings = Settings.from_env(env_for(fake_slack, tmp_path))
    migrate(settings)

    code, output, results = run_doctor(settings)

    assert code == 1
    assert set(to_fix(results)) == {"scope im:write", "scope usergroups:read", "scope files:write"}
    assert "reinstall" in to_fix(results)["scope usergroups:read"].fix
    assert line_of(output, "scope im:write").startswith("FIX")


def test_a_rejected_token_and_a_missing_setting(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_scopes(monkeypatch, fake_slack, ALL_SCOPES)
    fake_slack.accepted_tokens = {"xoxb-" + "another"}
    settings = Settings.from_env({**env_for(fake_slack, tmp_path), "KFBOT_ADMIN_CHANNEL": ""})
    migrate(settings)

    code, _, results = run_doctor(settings)

    assert code == 1
    fixes = to_fix(results)
    assert "invalid_auth" in fixes["auth.test"].detail and "SLACK_BOT_TOKEN" in fixes["auth.test"].fix
    assert "KFBOT_ADMIN_CHANNEL" in fixes["kfbot serve"].detail


def test_required_scopes_are_the_manifests() -> None:
    manifest = yaml.safe_load((ROOT / "slack-app-manifest.yaml").read_text())
    assert sorted(bot_doctor.REQUIRED_SCOPES) == sorted(manifest["oauth_config"]["scopes"]["bot"])


# -- database, dry-run ------------------------------------------------------------------------------------


def test_dry_run_checks_slack_and_the_database_and_skips_the_rest(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_scopes(monkeypatch, fake_slack, ALL_SCOPES)
    settings = Settings.from_env(env_for(fake_slack, tmp_path))
    migrate(settings)

    code, output, results = run_doctor(settings)

    assert code == 0, output
    assert [r.area for r in results if r.status is provisioning.Status.SKIP] == ["live"]
    assert "kfbot doctor --live" in line_of(output, "SKIP")
    assert "live checks skipped" in output.splitlines()[0]
    assert {r.area for r in results} == {"settings", "slack", "database", "live"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-file", "the file does not exist"),
        ("empty", "no kfbot tables yet"),
        ("behind", "schema at revision 0000; this kfbot needs"),
    ],
)
def test_a_database_that_is_behind_says_kfbot_migrate(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str
) -> None:
    grant_scopes(monkeypatch, fake_slack, ALL_SCOPES)
    settings = Settings.from_env(env_for(fake_slack, tmp_path))
    db = tmp_path / "kfbot.db"
    if case == "empty":
        sqlite3.connect(db).close()
    elif case == "behind":
        migrate(settings)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '0000'")

    code, output, results = run_doctor(settings)

    assert code == 1
    [problem] = [r for r in results if r.status is provisioning.Status.FIX]
    assert problem.area == "database" and expected in problem.detail
    assert "kfbot migrate" in problem.fix and "kfbot migrate" in output
    if case == "no-file":
        assert not db.exists()  # the doctor never creates a database


# -- the CLI, with a kubeconfig, as an admin would run it ---------------------------------------------


def test_kfbot_doctor_live_from_the_command_line(
    world: FakeApiServer, fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": world.url}}],
        "users": [{"name": "bot", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "bot"}}],
    }))  # fmt: skip
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    env = env_for(fake_slack, tmp_path)
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    migrate(Settings.from_env(env))
    grant_chart_rbac(world, "password-cr", except_={("list", "", "nodes", "", "")})

    code = cli.main(["doctor", "--live"])

    output = capsys.readouterr().out
    assert code == 1
    assert "provisioner dry-run · live checks included" in output
    assert line_of(output, "list nodes cluster-wide").startswith("FIX")
    assert output.rstrip().endswith("2 to fix.")


# -- the table is the chart ---------------------------------------------------------------------------


@pytest.mark.parametrize("dex_mode", ["password-cr", "configmap", "external"])
def test_the_permission_table_mirrors_the_chart(dex_mode: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"KFBOT_DEX_MODE": dex_mode})
    asked = {
        (p.verb, p.group, p.resource, p.namespace, p.name)
        for p in provisioning.required_permissions(settings.provisioning)
    }
    assert asked == chart_grants(dex_mode)


# -- Prometheus (cost control's utilisation signal) --------------------------------------------------


class _Prometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query like Prometheus's HTTP API (status, data.resultType, data.result)."""

    series = "0"
    queries: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/v1/query":
            self.send_error(404)
            return
        self.queries.append(dict(parse_qsl(url.query))["query"])
        result = [] if self.series == "0" else [{"metric": {}, "value": [1764900000.0, self.series]}]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.mark.parametrize(("series", "status"), [("0", Status.FIX), ("12", Status.OK)])
def test_doctor_reports_prometheus_and_its_dcgm_series(series: str, status: Status) -> None:
    handler = type("P", (_Prometheus,), {"series": series, "queries": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        reachable, dcgm = check_prometheus(CostProbeSettings(prometheus_url=url))
    finally:
        server.shutdown()
        server.server_close()
    assert reachable.status is Status.OK and dcgm.status is status
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in handler.queries[0]


def test_doctor_says_when_prometheus_is_unreachable_or_unset() -> None:
    [row] = check_prometheus(CostProbeSettings(prometheus_url="http://127.0.0.1:9", request_timeout=1.0))
    assert row.status is Status.FIX and "KFBOT_PROMETHEUS_URL" in row.fix
    [row] = check_prometheus(CostProbeSettings())
    assert row.status is Status.SKIP


def test_a_team_id_that_is_not_the_tokens_is_a_fix(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_scopes(monkeypatch, fake_slack, ALL_SCOPES)
    settings = Settings.from_env({**env_for(fake_slack, tmp_path), "KFBOT_SLACK_TEAM_ID": "T0OTHER99"})
    migrate(settings)

    code, output, results = run_doctor(settings)

    assert code == 1
    fix = to_fix(results)["team"]
    assert "T0OTHER99" in fix.detail and fake_slack.team_id in fix.detail
    assert "KFBOT_SLACK_TEAM_ID" in fix.detail
    assert line_of(output, "is T0OTHER99").startswith("FIX")
    agreed = Settings.from_env({**env_for(fake_slack, tmp_path), "KFBOT_SLACK_TEAM_ID": fake_slack.team_id})
    assert "team" not in to_fix(run_doctor(agreed)[2])
