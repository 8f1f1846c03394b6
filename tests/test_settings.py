"""``bot.settings``: every variable reaches its layer; bad values stop start-up naming the variable."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from bot.settings import DEFAULT_DATABASE_URL, Settings, SettingsError, sqlite_path


def test_defaults_need_no_environment() -> None:
    s = Settings.from_env({})
    assert s.mode == "dry-run" and s.provisioning.database_url == DEFAULT_DATABASE_URL
    assert s.provisioning.audit_key == b"" and s.http.port == 3000 and s.log.format == "json"
    assert s.core.policy.request_ttl == timedelta(hours=72) and not s.slack.socket_mode
    assert s.slack.api_url is None
    assert s.provisioning.engine.workers == 4


@pytest.mark.parametrize("value", ["", "dry-run", "LIVE", "Live", "true", "1", "live ", "yes"])
def test_the_provisioner_is_live_only_when_it_says_exactly_live(value: str) -> None:
    expected = "live" if value.strip() == "live" else "dry-run"
    assert Settings.from_env({"KFBOT_PROVISIONER": value}).mode == expected


def test_every_variable_reaches_its_layer() -> None:
    s = Settings.from_env(
        {
            "SLACK_BOT_TOKEN": "xoxb-1",
            "SLACK_SIGNING_SECRET": "sig",
            "SLACK_APP_TOKEN": "xapp-1",
            "KFBOT_SLACK_API_URL": "http://127.0.0.1:9/api/",
            "KFBOT_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "KFBOT_PROVISIONER": "live",
            "KFBOT_AUDIT_KEY": "k" * 32,
            "KFBOT_ADMIN_CHANNEL": "C0ADMINS01",
            "KFBOT_ADMIN_USERS": "U1, U2,",
            "KFBOT_ADMIN_GROUP": "S1",
            "KFBOT_REQUEST_TTL": "3d",
            "KFBOT_NUDGE_AFTER": "2h",
            "KFBOT_HTTP_PORT": "8080",
            "KFBOT_LOG_FORMAT": "text",
            "KFBOT_LOG_LEVEL": "debug",
            "KFBOT_WORKER_ID": "w1",
            "KFBOT_LEASE_SECONDS": "30",
            "KFBOT_WORKERS": "8",
            "KFBOT_STEP_DEADLINE": "10m",
            "KFBOT_DEX_MODE": "configmap",
            "KFBOT_DEX_NAMESPACE": "dex",
            "KFBOT_BCRYPT_COST": "10",
            "KFBOT_DEX_RESTART_QUIET": "2.5",
            "KFBOT_AWS_REGION": "eu-west-1",
            "KFBOT_EKS_CLUSTER": "prod",
            "KFBOT_NODEGROUP_SUBNETS": "subnet-a,subnet-b",
            "KFBOT_NODE_ROLE_ARN": "arn:aws:iam::1:role/n",
            "KFBOT_IAM_POLICY_ARNS": "arn:aws:iam::1:policy/p",
            "KFBOT_DEFAULT_GPU_INSTANCE_TYPE": "g5.xlarge",
            "KFBOT_NAME_NAMESPACE": "kf-{name}",
            "KFBOT_NAME_BUCKET": "s3-{region_alias}-{infra}-{env}-{name}",
            "KFBOT_NAME_NODEGROUP": "{name}-{spec}",
            "KFBOT_NAME_NODE_LABEL_KEY": "kf/ws",
            "KFBOT_NAME_NODE_LABEL_VALUE": "{name}",
            "KFBOT_NAME_DEX_USER": "{local}-{env}",
            "KFBOT_REGION_ALIAS": "euw1",
            "KFBOT_INFRA": "ml",
            "KFBOT_ENV": "prod",
            "KFBOT_INSTANCE_SPECS": "g4dn.xlarge=g4dn",
            "KFBOT_USER_ID_MAP": "Alice@X.com=alice@corp.com",
            "KFBOT_USERID_HEADER": "x-user",
            "KFBOT_USERID_PREFIX": "",
            "KFBOT_INGRESS_PRINCIPAL": "cluster.local/ns/istio/sa/gw",
            "KFBOT_KFP_UI_PRINCIPAL": "cluster.local/ns/kubeflow/sa/ui",
            "KFBOT_KUBE_API_URL": "https://k8s:443",
            "KFBOT_KUBE_CA_FILE": "/ca.pem",
            "KFBOT_TOKEN_MAX_TTL": "12h",
            "KFBOT_TOKEN_DEFAULT_TTL": "2h",
            "KFBOT_TOKEN_API_AUDIENCE": "https://api",
            "KFBOT_PRICE_OVERRIDES": "g4dn.xlarge=0.5",
            "KFBOT_SWEEP_SECONDS": "5",
        }
    )
    p, c = s.provisioning, s.core
    assert (s.slack.bot_token, s.slack.signing_secret, s.slack.app_token, s.slack.admin_channel) == (
        "xoxb-1",
        "sig",
        "xapp-1",
        "C0ADMINS01",
    )
    assert s.slack.socket_mode and s.slack.api_url == "http://127.0.0.1:9/api/"
    assert p.mode == "live" and p.database_url.startswith("postgresql") and p.audit_key == b"k" * 32
    assert c.policy.admin_users == frozenset({"U1", "U2"}) and c.policy.admin_group == "S1"
    assert c.policy.request_ttl == timedelta(days=3) and c.policy.nudge_after == timedelta(hours=2)
    assert (
        s.http.port == 8080 and s.http.sweep_seconds == 5 and (s.log.format, s.log.level) == ("text", "DEBUG")
    )
    assert p.engine.worker_id == "w1" and p.engine.lease == timedelta(seconds=30)
    assert p.engine.step_deadline == timedelta(minutes=10)
    assert p.engine.workers == 8
    assert (
        p.dex.mode == "configmap" == c.workspace.dex_mode
        and p.dex.namespace == "dex"
        and p.dex.bcrypt_cost == 10
        and p.dex.restart_quiet_period == 2.5
    )
    assert p.aws_region == "eu-west-1" == c.workspace.region and c.workspace.cluster == "prod"
    assert c.workspace.subnets == ("subnet-a", "subnet-b") and c.workspace.node_role_arn.endswith("role/n")
    assert c.workspace.iam_policy_arns == ("arn:aws:iam::1:policy/p",)
    assert c.workspace.gpu_instance_type == "g5.xlarge" and c.workspace.price_overrides == {
        "g4dn.xlarge": 0.5
    }
    assert c.workspace.user_id_map == {"alice@x.com": "alice@corp.com"}
    assert (c.naming.namespace, c.naming.node_label_key, c.naming.region_alias, c.naming.env) == (
        "kf-{name}",
        "kf/ws",
        "euw1",
        "prod",
    )
    assert dict(c.naming.instance_specs) == {"g4dn.xlarge": "g4dn"}
    assert c.naming.dex_username == "{local}-{env}"
    k = p.kubeflow
    assert (k.userid_header, k.userid_prefix, k.kube_api_url, k.kube_ca_file) == (
        "x-user",
        "",
        "https://k8s:443",
        "/ca.pem",
    )
    assert k.ingress_principal and k.kfp_ui_principal
    assert c.tokens.max_ttl == timedelta(hours=12) and c.tokens.api_audience == "https://api"
    assert c.tokens.default_ttl == timedelta(hours=2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KFBOT_SLACK_API_URL", "http://127.0.0.1:9/api"),
        ("KFBOT_SLACK_API_URL", "slack.com/api/"),
        ("KFBOT_HTTP_PORT", "70000"),
        ("KFBOT_HTTP_PORT", "eighty"),
        ("KFBOT_HEALTH_PORT", "70000"),
        ("KFBOT_HEALTH_PORT", "3000"),  # KFBOT_HTTP_PORT's: probes would queue behind Slack again
        ("KFBOT_HTTP_READ_DEADLINE", "0"),
        ("KFBOT_HTTP_READ_DEADLINE", "600"),  # a trickling client would hold a thread for 10 minutes
        ("KFBOT_HTTP_READ_DEADLINE", "soon"),
        ("KFBOT_LOG_FORMAT", "xml"),
        ("KFBOT_LOG_LEVEL", "LOUD"),
        ("KFBOT_REQUEST_TTL", "3 days"),
        ("KFBOT_NUDGE_AFTER", "-1h"),
        ("KFBOT_STEP_DEADLINE", "1.5h"),
        ("KFBOT_LEASE_SECONDS", "1"),
        ("KFBOT_WORKERS", "0"),
        ("KFBOT_WORKERS", "65"),
        ("KFBOT_WORKERS", "2.5"),
        ("KFBOT_WORKERS", "many"),
        ("KFBOT_BCRYPT_COST", "40"),
        ("KFBOT_BCRYPT_COST", "4"),  # accepted once, then the live start-up failed on it
        ("KFBOT_BCRYPT_COST", "9"),
        ("KFBOT_DEX_MODE", "ldap"),
        ("KFBOT_DEX_RESTART_QUIET", "soon"),
        ("KFBOT_DEX_RESTART_QUIET", "-1"),
        ("KFBOT_NAME_DEX_USER", "{name}"),
        ("KFBOT_PRICE_OVERRIDES", "g4dn.xlarge"),
        ("KFBOT_PRICE_OVERRIDES", "g4dn.xlarge=cheap"),
        ("KFBOT_USER_ID_MAP", "alice"),
        ("KFBOT_USER_ID_MAP", "*@example.com=bob@corp.example.com"),  # a key the edge never sends
        ("KFBOT_USER_ID_MAP", "alice@example.com=*@corp.example.com"),  # an Istio wildcard
        ("KFBOT_USER_ID_MAP", "alice@example.com=alice"),
        ("KFBOT_USER_ID_MAP", "alice@example.com=j\u00f6rg@corp.example.com"),
        ("KFBOT_INSTANCE_SPECS", "g4dn.xlarge=G4DN"),
        ("KFBOT_NAME_BUCKET", "shared-bucket"),
        ("KFBOT_NAME_NAMESPACE", "{name.__class__}"),
        ("KFBOT_REGION_ALIAS", "Not Valid"),
        ("KFBOT_TOKEN_MAX_TTL", "soon"),
        ("KFBOT_TOKEN_DEFAULT_TTL", "soon"),
        ("KFBOT_TOKEN_DEFAULT_TTL", "5m"),  # shorter than any --ttl may be
        ("KFBOT_TOKEN_DEFAULT_TTL", "2d"),  # longer than KFBOT_TOKEN_MAX_TTL
        ("KFBOT_ADMIN_CHANNEL", "C0ADMINS01\nC0ADMINS02"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert name in info.value.user_message


def test_a_lowered_token_max_ttl_must_keep_room_for_the_default() -> None:
    with pytest.raises(SettingsError, match=r"KFBOT_TOKEN_DEFAULT_TTL.*allowed: 10m to 30m"):
        Settings.from_env({"KFBOT_TOKEN_MAX_TTL": "30m"})
    tokens = Settings.from_env({"KFBOT_TOKEN_MAX_TTL": "30m", "KFBOT_TOKEN_DEFAULT_TTL": "15m"}).core.tokens
    assert (tokens.max_ttl, tokens.default_ttl) == (timedelta(minutes=30), timedelta(minutes=15))


def test_the_http_deadline_and_health_port_default_and_parse() -> None:
    default = Settings.from_env({}).http
    assert (default.read_deadline, default.health_port, default.threads) == (5.0, 3001, 64)
    given = Settings.from_env({"KFBOT_HTTP_READ_DEADLINE": "2.5", "KFBOT_HEALTH_PORT": "9090"}).http
    assert (given.read_deadline, given.health_port) == (2.5, 9090)
    assert Settings.from_env({"KFBOT_HTTP_PORT": "0", "KFBOT_HEALTH_PORT": "0"}).http.health_port == 0


def test_dex_username_and_restart_quiet_period_default_when_unset() -> None:
    s = Settings.from_env({})
    assert s.core.naming.dex_username == "{local}" and s.provisioning.dex.restart_quiet_period == 10.0


def test_serve_requirements() -> None:
    base = {
        "SLACK_BOT_TOKEN": "xoxb-1",
        "SLACK_SIGNING_SECRET": "s",
        "KFBOT_ADMIN_CHANNEL": "C0ADMINS01",
        "KFBOT_AUDIT_KEY": "k" * 16,
    }
    Settings.from_env(base).require_serve()
    Settings.from_env({**base, "SLACK_SIGNING_SECRET": "", "SLACK_APP_TOKEN": "xapp-1"}).require_serve()
    for missing in base:
        with pytest.raises(SettingsError, match=missing):
            Settings.from_env({**base, missing: ""}).require_serve()


def test_secrets_are_not_in_the_repr() -> None:
    s = Settings.from_env(
        {
            "SLACK_BOT_TOKEN": "xoxb-secret",
            "SLACK_SIGNING_SECRET": "sig-secret",
            "KFBOT_AUDIT_KEY": "audit-secret-0123456789",
        }
    )
    assert not any(value in repr(s) for value in ("xoxb-secret", "sig-secret", "audit-secret"))


def test_local_audit_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    s = Settings.from_env({"KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'kfbot.db'}"})
    unchanged, note = s.with_local_audit_key(create=False)
    assert unchanged is s and note is None
    made, note = s.with_local_audit_key(create=True)
    key_file = tmp_path / "db" / ".kfbot-audit-key"
    assert note is not None and str(key_file) in note
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(made.provisioning.audit_key) == 64
    again, note = s.with_local_audit_key(create=True)
    assert again.provisioning.audit_key == made.provisioning.audit_key and note is None
    os.chmod(key_file, 0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        s.with_local_audit_key(create=False)


def test_no_key_file_for_postgres_or_an_explicit_key(tmp_path: Path) -> None:
    pg = Settings.from_env({"KFBOT_DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert pg.with_local_audit_key(create=True) == (pg, None)
    explicit = Settings.from_env(
        {"KFBOT_DATABASE_URL": f"sqlite:///{tmp_path}/k.db", "KFBOT_AUDIT_KEY": "k" * 20}
    )
    assert explicit.with_local_audit_key(create=True) == (explicit, None)
    assert not (tmp_path / ".kfbot-audit-key").exists()
    assert (
        sqlite_path("sqlite:///:memory:") is None
        and sqlite_path("sqlite:///./x.db") == Path("x.db").resolve()
    )


def test_every_malformed_variable_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "KFBOT_HTTP_PORT": "http",
                "KFBOT_LOG_LEVEL": "loud",
                "KFBOT_REQUEST_TTL": "forever",
                "KFBOT_NAME_BUCKET": "{nope}",
                "KFBOT_TIMEZONE": "Mars/Olympus",
            }
        )
    named = [problem.split("=")[0].split(":")[0] for problem in caught.value.problems]
    assert sorted(named) == sorted(
        ["KFBOT_HTTP_PORT", "KFBOT_LOG_LEVEL", "KFBOT_REQUEST_TTL", "KFBOT_NAME_BUCKET", "KFBOT_TIMEZONE"]
    )


def test_serve_names_every_missing_setting_and_the_live_provisioners_needs() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KFBOT_PROVISIONER": "live"}).require_serve()
    assert [problem.split(" ")[0] for problem in caught.value.problems] == [
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "KFBOT_ADMIN_CHANNEL",
        "KFBOT_AUDIT_KEY",
        "KFBOT_NODEGROUP_SUBNETS",
        "KFBOT_NODE_ROLE_ARN",
    ]


@pytest.mark.parametrize(
    "name",
    ["KFBOT_IDLE_GPU_UTIL", "KFBOT_HTTP_READ_DEADLINE", "KFBOT_HTTP_TIMEOUT", "KFBOT_SWEEP_SECONDS",
     "KFBOT_SHUTDOWN_SECONDS", "KFBOT_LEASE_SECONDS"],
)
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_a_number_setting_refuses_what_is_not_a_finite_number(name: str, value: str) -> None:
    # nan passes every `<` and `>` bound check: a util threshold of nan made every GPU look
    # unused, a read deadline of nan never expired (third attack round).
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    assert name in refused.value.user_message
