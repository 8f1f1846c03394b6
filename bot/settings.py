"""The one place that reads the environment.

``Settings.from_env(environ)`` turns environment variables into typed, frozen settings for every
layer: the Slack edge (``SlackSettings``), the core (``handlers.settings.CoreSettings``),
provisioning (``provisioning.ProvisioningSettings``), the HTTP server and logging. A bad value
stops the bot at start-up with a ``SettingsError`` that names the variable; nothing is inferred
(``KFBOT_PROVISIONER`` is ``dry-run`` unless it is exactly ``live``). Tests build ``Settings``
directly or call ``from_env`` with a dict. docs/SETTINGS.md lists every variable.
"""

from __future__ import annotations

import functools
import math
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

import provisioning
from handlers import errors, units, workspace_iam
from handlers.naming import NamingSettings, normalize_email, validate_workspace_name
from handlers.settings import (
    RUNBOOK_NODEGROUP,
    CoreSettings,
    CostSettings,
    NodegroupStyle,
    OffboardSettings,
    PolicySettings,
    TokenSettings,
    WorkspaceDefaults,
)

T = TypeVar("T")
DEFAULT_DATABASE_URL = "sqlite:///./kfbot.db"
AUDIT_KEY_FILE = ".kfbot-audit-key"
MIN_AUDIT_KEY = 16
LogFormat = Literal["json", "text"]
DexMode = Literal["password-cr", "configmap", "external"]
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{8,}")
"""A public (``C``) or private (``G``) channel's conversation id. Slack's ids have 9 or 11
characters and may grow, never shrink; channel names are lowercase, so no name looks like one."""
_CHANNEL_ID_INSIDE = re.compile(r"(?<![A-Za-z0-9])[CG][A-Z0-9]{8,}(?![A-Za-z0-9])")
_CHANNEL_AUDIENCE = {
    "KFBOT_ADMIN_CHANNEL": "approval cards are for the admins",
    "KFBOT_DRIFT_CHANNEL": "the drift report is for the admins",
    "KFBOT_COST_CHANNEL": "the idle report and the digest are for a team",
    "KFBOT_WORKSPACE_CHANNELS": "a workspace's idle report is for its team",
}


class SettingsError(errors.KfError):
    """Settings are missing or malformed; each line of the message names its variable.

    ``variable``: the one variable at fault, when there is exactly one (``from_env`` uses it to
    go on past that variable and report every problem at once)."""

    def __init__(self, *problems: str, variable: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.variable = variable


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str = field(default="", repr=False)
    """``SLACK_BOT_TOKEN`` (xoxb-…)."""
    signing_secret: str = field(default="", repr=False)
    """``SLACK_SIGNING_SECRET``: verifies requests in HTTP mode."""
    app_token: str = field(default="", repr=False)
    """``SLACK_APP_TOKEN`` (xapp-…): set it to run in Socket Mode."""
    api_url: str | None = None
    """``KFBOT_SLACK_API_URL``: Web API base URL (GovSlack, tests); ends with '/'."""
    admin_channel: str = ""
    """``KFBOT_ADMIN_CHANNEL``: channel id where approval cards are posted."""
    admin_cache_seconds: float = 60.0
    """How long user profiles and admin group members are cached."""
    dashboard_url: str | None = None
    """``KFBOT_DASHBOARD_URL``: the Kubeflow central dashboard, linked in the "done" DM."""
    confirm_above: float = 1000.0
    """``KFBOT_CONFIRM_ABOVE``: USD a month above which Approve asks "are you sure?" first."""
    home_refresh_seconds: float = 3.0
    """``KFBOT_HOME_REFRESH_SECONDS``: a burst of changes within this many seconds republishes a
    person's App Home once."""
    drift_report: str = "0 9 * * mon"
    """``KFBOT_DRIFT_REPORT``: when the drift report is posted (or edited), in the cost digest's
    crontab syntax and ``KFBOT_TIMEZONE``; empty or ``off``: no scheduled report."""
    drift_channel: str = ""
    """``KFBOT_DRIFT_CHANNEL``: where the drift report goes; empty: the admin channel."""
    team_id: str | None = None
    """``KFBOT_SLACK_TEAM_ID``: the one Slack workspace (team) served; ``kfbot serve`` refuses to
    start when the bot token's (``auth.test``) is another. Unset: the token's team."""

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)


@dataclass(frozen=True)
class HttpSettings:
    host: str = "0.0.0.0"  # noqa: S104 - the pod's port; the Service decides who reaches it
    """``KFBOT_HTTP_HOST``."""
    port: int = 3000
    """``KFBOT_HTTP_PORT``: /slack/events (HTTP mode), /healthz, /readyz."""
    health_port: int = 3001
    """``KFBOT_HEALTH_PORT``: /healthz, /readyz and /metrics on a listener of their own, so that
    probes and scrapes never wait behind Slack's traffic (or an attacker's) on the main port."""
    sweep_seconds: float = 15.0
    """``KFBOT_SWEEP_SECONDS``: how often the leader sweeps due timers."""
    backlog: int = 1024
    """``KFBOT_HTTP_BACKLOG``: the listen backlog (``bot.http.HttpLimits``)."""
    threads: int = 64
    """``KFBOT_HTTP_THREADS``: threads that read requests and run them up to the ack."""
    queue: int = 256
    """``KFBOT_HTTP_QUEUE``: accepted connections waiting for a thread; past it, 503."""
    timeout: float = 10.0
    """``KFBOT_HTTP_TIMEOUT``: seconds per socket read or write, and how long a connection may stay
    silent before it is closed."""
    read_deadline: float = 5.0
    """``KFBOT_HTTP_READ_DEADLINE``: seconds for a whole request to arrive (line, headers, body)."""
    shutdown_seconds: float = 20.0
    """``KFBOT_SHUTDOWN_SECONDS``: on SIGTERM, how long requests in flight and acked work get before
    the process exits; below the pod's ``terminationGracePeriodSeconds``."""


@dataclass(frozen=True)
class LogSettings:
    format: LogFormat = "json"
    level: str = "INFO"


@dataclass(frozen=True)
class Settings:
    slack: SlackSettings = field(default_factory=SlackSettings)
    core: CoreSettings = field(default_factory=CoreSettings)
    provisioning: provisioning.ProvisioningSettings = field(default_factory=provisioning.ProvisioningSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def mode(self) -> str:
        return self.provisioning.mode

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """The settings, or one ``SettingsError`` listing every malformed variable: a variable at
        fault is set aside (its default taken) and the rest read again, so an operator fixes them
        all in one round instead of one per restart."""
        remaining = dict(environ)
        problems: list[str] = []
        while True:
            try:
                settings = cls._read(remaining)
            except SettingsError as exc:
                problems.extend(exc.problems)
                if exc.variable is None or remaining.pop(exc.variable, None) is None:
                    raise SettingsError(*problems) from exc
                continue
            if problems:
                raise SettingsError(*problems)
            return settings

    @classmethod
    def _read(cls, environ: Mapping[str, str]) -> Settings:
        env = _Env(environ)
        naming = env.build("KFBOT_NAME_* naming templates", _naming)
        policy = PolicySettings(
            admin_users=frozenset(env.csv("KFBOT_ADMIN_USERS")),
            admin_group=env.text("KFBOT_ADMIN_GROUP") or None,
            request_ttl=env.duration("KFBOT_REQUEST_TTL", timedelta(hours=72)),
            nudge_after=env.duration("KFBOT_NUDGE_AFTER", timedelta(hours=4)),
        )
        dex_mode = cast(DexMode, env.choice("KFBOT_DEX_MODE", get_args(DexMode), "password-cr"))
        region = env.text("KFBOT_AWS_REGION", "us-east-1")
        workspace = WorkspaceDefaults(
            region=region,
            cluster=env.text("KFBOT_EKS_CLUSTER", "kubeflow"),
            subnets=tuple(env.csv("KFBOT_NODEGROUP_SUBNETS")),
            node_role_arn=env.text("KFBOT_NODE_ROLE_ARN"),
            iam_policy_arns=tuple(env.csv("KFBOT_IAM_POLICY_ARNS")),
            gpu_instance_type=env.text("KFBOT_DEFAULT_GPU_INSTANCE_TYPE", "g4dn.xlarge"),
            max_nodes=int(env.number("KFBOT_MAX_NODES", 10, minimum=1, maximum=100, integer=True)),
            dex_mode=dex_mode,
            price_overrides={
                k: env.convert("KFBOT_PRICE_OVERRIDES", v, _price)
                for k, v in env.pairs("KFBOT_PRICE_OVERRIDES").items()
            },
            user_id_map={
                env.convert("KFBOT_USER_ID_MAP", k, normalize_email): env.convert(
                    "KFBOT_USER_ID_MAP", v, normalize_email
                )
                for k, v in env.pairs("KFBOT_USER_ID_MAP").items()
            },
            nodegroup=_nodegroup_style(env),
            workspace_iam=env.choice("KFBOT_WORKSPACE_IAM", ("shared", "per-workspace"), "shared"),
            oidc_provider_arn=_oidc_provider(env),
        )
        tokens = env.build("KFBOT_TOKEN_DEFAULT_TTL", _tokens)
        core = CoreSettings(
            policy=policy, naming=naming, workspace=workspace, tokens=tokens, cost=_cost_settings(env),
            offboard=_offboard_settings(env),
        )
        prov = provisioning.ProvisioningSettings(
            mode="live" if env.text("KFBOT_PROVISIONER") == "live" else "dry-run",
            database_url=env.text("KFBOT_DATABASE_URL", DEFAULT_DATABASE_URL),
            audit_key=env.text("KFBOT_AUDIT_KEY").encode(),
            engine=provisioning.EngineSettings(
                worker_id=env.text("KFBOT_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
                lease=timedelta(seconds=env.number("KFBOT_LEASE_SECONDS", 60.0, minimum=5)),
                step_deadline=env.duration("KFBOT_STEP_DEADLINE", timedelta(minutes=30)),
                workers=int(env.number("KFBOT_WORKERS", provisioning.EngineSettings.workers, minimum=1,
                                       maximum=64, integer=True)),
            ),
            kubeflow=provisioning.KubeflowSettings(
                userid_header=env.text("KFBOT_USERID_HEADER") or None,
                userid_prefix=env.get_raw("KFBOT_USERID_PREFIX"),
                ingress_principal=env.text("KFBOT_INGRESS_PRINCIPAL") or None,
                kfp_ui_principal=env.text("KFBOT_KFP_UI_PRINCIPAL") or None,
                kube_api_url=env.text("KFBOT_KUBE_API_URL"),
                kube_ca_file=env.text("KFBOT_KUBE_CA_FILE") or None,
            ),
            dex=provisioning.DexSettings(
                mode=dex_mode,
                namespace=env.text("KFBOT_DEX_NAMESPACE", "auth"),
                bcrypt_cost=int(env.number("KFBOT_BCRYPT_COST", 12, minimum=10, maximum=16, integer=True)),
                restart_quiet_period=env.number(
                    "KFBOT_DEX_RESTART_QUIET",
                    provisioning.DexSettings.restart_quiet_period,
                    minimum=0,
                    maximum=600,
                ),
            ),
            aws_region=region,
            cost=_cost_probe_settings(env),
        )
        api_url = env.text("KFBOT_SLACK_API_URL") or None
        if api_url is not None and not (
            api_url.endswith("/") and api_url.startswith(("http://", "https://"))
        ):
            raise SettingsError(
                f"KFBOT_SLACK_API_URL={api_url!r}: give an http(s) URL that ends with '/'.",
                variable="KFBOT_SLACK_API_URL",
            )
        dashboard = env.text("KFBOT_DASHBOARD_URL")
        team = env.text("KFBOT_SLACK_TEAM_ID")
        slack = SlackSettings(
            bot_token=env.text("SLACK_BOT_TOKEN"),
            signing_secret=env.text("SLACK_SIGNING_SECRET"),
            app_token=env.text("SLACK_APP_TOKEN"),
            api_url=api_url,
            admin_channel=env.channel("KFBOT_ADMIN_CHANNEL"),
            dashboard_url=env.convert("KFBOT_DASHBOARD_URL", dashboard, _link_url) if dashboard else None,
            confirm_above=env.convert(
                "KFBOT_CONFIRM_ABOVE", env.text("KFBOT_CONFIRM_ABOVE", "1000"), _dollars
            ),
            home_refresh_seconds=env.number("KFBOT_HOME_REFRESH_SECONDS", 3.0, minimum=0, maximum=60),
            drift_report=env.convert(
                "KFBOT_DRIFT_REPORT",
                env.text("KFBOT_DRIFT_REPORT", SlackSettings.drift_report),
                check_digest_schedule,
            ),
            drift_channel=env.channel("KFBOT_DRIFT_CHANNEL"),
            team_id=env.convert("KFBOT_SLACK_TEAM_ID", team, _team_id) if team else None,
        )
        http = HttpSettings(
            host=env.text("KFBOT_HTTP_HOST", HttpSettings.host),
            port=int(env.number("KFBOT_HTTP_PORT", 3000, minimum=0, maximum=65535, integer=True)),
            health_port=int(
                env.number(
                    "KFBOT_HEALTH_PORT", HttpSettings.health_port, minimum=0, maximum=65535, integer=True
                )
            ),
            sweep_seconds=env.number("KFBOT_SWEEP_SECONDS", 15.0, minimum=1),
            backlog=int(
                env.number(
                    "KFBOT_HTTP_BACKLOG", HttpSettings.backlog, minimum=128, maximum=65535, integer=True
                )
            ),
            threads=int(
                env.number("KFBOT_HTTP_THREADS", HttpSettings.threads, minimum=2, maximum=512, integer=True)
            ),
            queue=int(
                env.number("KFBOT_HTTP_QUEUE", HttpSettings.queue, minimum=1, maximum=65535, integer=True)
            ),
            timeout=env.number("KFBOT_HTTP_TIMEOUT", HttpSettings.timeout, minimum=0.5, maximum=300),
            read_deadline=env.number(
                "KFBOT_HTTP_READ_DEADLINE", HttpSettings.read_deadline, minimum=0.5, maximum=60
            ),
            shutdown_seconds=env.number(
                "KFBOT_SHUTDOWN_SECONDS", HttpSettings.shutdown_seconds, minimum=1, maximum=3600
            ),
        )
        if http.health_port and http.health_port == http.port:
            raise SettingsError(
                f"KFBOT_HEALTH_PORT={http.health_port}: the health listener needs a port of its own, "
                "not KFBOT_HTTP_PORT's.",
                variable="KFBOT_HEALTH_PORT",
            )
        level = env.text("KFBOT_LOG_LEVEL", "INFO").upper()
        if level not in _LEVELS:
            raise SettingsError(
                f"KFBOT_LOG_LEVEL={level!r}: use one of {', '.join(_LEVELS)}.", variable="KFBOT_LOG_LEVEL"
            )
        log_format: LogFormat = (
            "text" if env.choice("KFBOT_LOG_FORMAT", ("json", "text"), "json") == "text" else "json"
        )
        return cls(slack=slack, core=core, provisioning=prov, http=http, log=LogSettings(log_format, level))

    # -- what each command needs ------------------------------------------------------------------
    def require_serve(self) -> None:
        """``kfbot serve`` needs Slack credentials, the admin channel and the audit key (and, live,
        what the provisioner cannot work without); every missing one is named at once."""
        problems: list[str] = []
        if not self.slack.bot_token:
            problems.append("SLACK_BOT_TOKEN is not set; `kfbot serve` needs the bot token (xoxb-…).")
        if not self.slack.socket_mode and not self.slack.signing_secret:
            problems.append(
                "SLACK_SIGNING_SECRET is not set; HTTP mode needs it to verify Slack's requests "
                "(or set SLACK_APP_TOKEN for Socket Mode)."
            )
        if not self.slack.admin_channel:
            problems.append("KFBOT_ADMIN_CHANNEL is not set; approval cards need a channel id.")
        problems.extend(self.audit_key_problems())
        problems.extend(self.live_problems())
        if problems:
            raise SettingsError(*problems)

    def live_problems(self) -> list[str]:
        """What the live provisioner needs before it can apply a plan, found at start-up rather than
        halfway through a workspace's steps."""
        if self.mode != "live":
            return []
        workspace = self.core.workspace
        problems = []
        if not workspace.subnets:
            problems.append(
                "KFBOT_NODEGROUP_SUBNETS is not set; live GPU nodegroups need the subnet ids to launch in."
            )
        if not workspace.node_role_arn.startswith("arn:"):
            problems.append(
                "KFBOT_NODE_ROLE_ARN is not set to an IAM role ARN; live GPU nodegroups need their "
                "nodes' role."
            )
        return problems

    def require_audit_key(self) -> None:
        problems = self.audit_key_problems()
        if problems:
            raise SettingsError(*problems)

    def audit_key_problems(self) -> list[str]:
        key = self.provisioning.audit_key
        if not key:
            return [
                "KFBOT_AUDIT_KEY is not set; the audit log's HMAC chain needs a secret key "
                "kept outside the database."
            ]
        if len(key) < MIN_AUDIT_KEY:
            return [
                f"KFBOT_AUDIT_KEY is too short; use at least {MIN_AUDIT_KEY} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)."
            ]
        return []

    def with_local_audit_key(self, *, create: bool) -> tuple[Settings, str | None]:
        """On SQLite without ``KFBOT_AUDIT_KEY``: the key from ``.kfbot-audit-key`` beside the
        database file, made (mode 0600) when ``create``. Returns the settings and a note to show
        the user when a key file was used or made."""
        if self.provisioning.audit_key:
            return self, None
        path = sqlite_path(self.provisioning.database_url)
        if path is None:
            return self, None
        key_file = path.parent / AUDIT_KEY_FILE
        if key_file.exists():
            if key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SettingsError(f"{key_file} is readable by others; run `chmod 600 {key_file}`.")
            key = key_file.read_text(encoding="utf-8").strip()
            note = None
        elif create:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_hex(32)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(key + "\n")
            note = (
                f"KFBOT_AUDIT_KEY is not set: generated one into {key_file} (mode 0600). "
                "Keep it: the audit log cannot be verified without it."
            )
        else:
            return self, None
        prov = replace(self.provisioning, audit_key=key.encode())
        return replace(self, provisioning=prov), note


def _cost_settings(env: _Env) -> CostSettings:
    auto_stop = env.text("KFBOT_AUTO_STOP_AFTER")
    return CostSettings(
        idle_after=env.duration("KFBOT_IDLE_AFTER", CostSettings.idle_after),
        idle_gpu_util=env.number(
            "KFBOT_IDLE_GPU_UTIL", CostSettings.idle_gpu_util * 100, minimum=0, maximum=100
        )
        / 100,
        scan_interval=env.duration("KFBOT_SCAN_INTERVAL", CostSettings.scan_interval),
        cost_channel=env.channel("KFBOT_COST_CHANNEL"),
        workspace_channels=_workspace_channels(env),
        auto_stop_after=(
            None
            if auto_stop in ("", "off")
            else env.duration("KFBOT_AUTO_STOP_AFTER", CostSettings.idle_after)
        ),
        digest_schedule=env.convert(
            "KFBOT_COST_DIGEST",
            env.text("KFBOT_COST_DIGEST", CostSettings.digest_schedule),
            check_digest_schedule,
        ),
        timezone=env.convert("KFBOT_TIMEZONE", env.text("KFBOT_TIMEZONE", "UTC"), _timezone),
    )


def _workspace_channels(env: _Env) -> dict[str, str]:
    """Workspace -> channel id. A key is checked as ``workspace new`` checks a name: a key no
    workspace can have would send that workspace's reports to the default channel without a word."""
    name = "KFBOT_WORKSPACE_CHANNELS"
    return {
        env.convert(name, workspace, validate_workspace_name): env.convert(
            name, channel, functools.partial(channel_id, variable=name, key=workspace)
        )
        for workspace, channel in env.pairs(name).items()
    }


def channel_id(value: str, variable: str, key: str = "") -> str:
    """``value`` if it is a channel's conversation id, else ``ValueError`` saying what to write.

    chat.postMessage also takes a name, but chat.update needs the id: the drift and idle reports are
    edited by the configured channel, so each edit failed and a new report was posted beside the
    stale one (its buttons still there). And a name is whichever channel holds it today. A DM
    (``D``) or a person (``U``/``W``) is refused too: each of these messages is meant for a group
    and carries buttons."""
    if CHANNEL_ID.fullmatch(value):
        return value
    shown = f"{key}: {value!r}" if key else repr(value)
    if re.fullmatch(r"[DUW][A-Z0-9]{8,}", value):  # posting to a person (U, W) opens a DM
        raise ValueError(
            f"{shown} is a direct message (D…) or a person (U…), but {_CHANNEL_AUDIENCE[variable]}: "
            "create a channel for them (a private channel is fine) and give its id (C… or G…)."
        )
    inside = _CHANNEL_ID_INSIDE.search(value)
    hint = f" (did you mean {inside.group()}?)" if inside else ""
    raise ValueError(
        f"{shown} is not a channel id{hint}: use the channel id (C… or G…), not its name: in "
        "Slack, open the channel's details, the id is at the bottom of the About tab."
    )


def _offboard_settings(env: _Env) -> OffboardSettings:
    every_text = env.text("KFBOT_OFFBOARD_EVERY")
    every: timedelta | None = OffboardSettings.every
    if every_text.lower() == "off":
        every = None
    elif every_text:
        every = env.duration("KFBOT_OFFBOARD_EVERY", timedelta(days=1))
        if every < timedelta(hours=1):
            # Every person is one users.info call (Slack tier 4); hourly is already plenty.
            raise SettingsError(
                "KFBOT_OFFBOARD_EVERY: at least 1h, or `off`.", variable="KFBOT_OFFBOARD_EVERY"
            )
    owner = env.text("KFBOT_OFFBOARD_OWNER")
    return OffboardSettings(
        every=every, owner=env.convert("KFBOT_OFFBOARD_OWNER", owner, normalize_email) if owner else ""
    )


def check_digest_schedule(text: str) -> str:
    """Five crontab fields with named days. APScheduler's ``CronTrigger.from_crontab`` numbers
    weekdays from Monday = 0, so the crontab text ``1-5`` would mean Tuesday to Saturday there:
    digits in the day-of-week field are refused rather than silently read the other way."""
    if text.strip() in ("", "off"):
        return ""
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            "give five crontab fields: minute hour day month day-of-week, e.g. `0 9 * * mon-fri`"
        )
    if any(ch.isdigit() for ch in fields[4]):
        raise ValueError(
            "name the days of the week (`mon-fri`, `mon,wed`): numbers are read differently by cron"
        )
    CronTrigger(minute=fields[0], hour=fields[1], day=fields[2], month=fields[3], day_of_week=fields[4])
    return " ".join(fields)


def _timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("give an IANA time zone such as `Europe/Berlin` or `UTC`") from exc
    return name


def _principal(value: str) -> str:
    """An Istio principal the notebook-activity policy can name literally: Istio reads ``*`` as a
    wildcard (it would admit every workload), and the form is ``<trust domain>/ns/<ns>/sa/<sa>``."""
    parts = value.split("/")
    if "*" in value or len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        raise ValueError("give the bot's Istio principal, "
                         "`<trust domain>/ns/<namespace>/sa/<service account>`, without `*`")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("give an http(s) URL")
    return value.rstrip("/")


def _dollars(value: str) -> float:
    """A finite amount of USD, 0 or more (``nan`` would compare false and never ask)."""
    amount = float(value)
    if not math.isfinite(amount) or amount < 0:
        raise ValueError("give an amount of USD a month, 0 or more (0 asks for every cost)")
    return amount


TEAM_ID = re.compile(r"T[A-Z0-9]{2,}")
"""A Slack team (workspace) id as Slack spells it: ``T`` and upper-case letters or digits."""


def _team_id(value: str) -> str:
    if not TEAM_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a Slack team id (T and capitals or digits, e.g. T0123ABCD)")
    return value


def _link_url(value: str) -> str:
    """A URL the bot shows as a Slack link ``<url|text>``: http(s), and nothing that would end
    the link early or be read as markup (whitespace, ``<``, ``>``, ``|``, quotes, backticks)."""
    url = _http_url(value)
    bad = sorted({c for c in url if c.isspace() or c in "<>|\"'`" or not c.isprintable() or ord(c) > 126})
    if bad:
        raise ValueError(f"give a plain http(s) URL (it contains {', '.join(map(repr, bad))})")
    return url


def _cost_probe_settings(env: _Env) -> provisioning.CostProbeSettings:
    prometheus = env.text("KFBOT_PROMETHEUS_URL")
    defaults = provisioning.CostProbeSettings()
    return provisioning.CostProbeSettings(
        prometheus_url=env.convert("KFBOT_PROMETHEUS_URL", prometheus, _http_url) if prometheus else None,
        cluster_domain=env.text("KFBOT_CLUSTER_DOMAIN", defaults.cluster_domain),
        bot_principal=env.convert(
            "KFBOT_BOT_PRINCIPAL", env.text("KFBOT_BOT_PRINCIPAL", defaults.bot_principal), _principal
        ),
        cost_explorer=env.choice("KFBOT_COST_EXPLORER", ("on", "off"), "off") == "on",
    )


def sqlite_path(database_url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if database_url.startswith(prefix):
            rest = database_url.removeprefix(prefix).split("?", 1)[0]
            return None if rest in ("", ":memory:") else Path(rest).resolve()
    return None


# -- parsing helpers ---------------------------------------------------------------------------------


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get_raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return None if value is None else value.strip()

    def text(self, name: str, default: str = "") -> str:
        value = self.get_raw(name)
        if value is None or value == "":
            return default
        if any(ord(c) < 32 for c in value):
            raise SettingsError(f"{name} contains control characters.", variable=name)
        return value

    def build(self, name: str, build: Callable[[_Env], T]) -> T:
        try:
            return build(self)
        except ValueError as exc:
            variable = _name_var(name, str(exc))
            raise SettingsError(f"{variable}: {exc}", variable=variable) from exc

    def convert(self, name: str, value: str, convert: Callable[[str], T]) -> T:
        try:
            return convert(value)
        except (ValueError, errors.KfError) as exc:
            detail = exc.user_message if isinstance(exc, errors.KfError) else str(exc)
            raise SettingsError(f"{name}: {detail}", variable=name) from exc

    def channel(self, name: str) -> str:
        value = self.text(name)
        return self.convert(name, value, functools.partial(channel_id, variable=name)) if value else ""

    def csv(self, name: str) -> list[str]:
        return [part.strip() for part in self.text(name).split(",") if part.strip()]

    def pairs(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in self.csv(name):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise SettingsError(
                    f"{name}: `{part}` is not KEY=VALUE (comma-separated pairs).", variable=name
                )
            if key.strip() in out:  # the last one would win without a word
                raise SettingsError(
                    f"{name}: `{key.strip()}` is given twice; keep one.", variable=name
                )
            out[key.strip()] = value.strip()
        return out

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise SettingsError(f"{name}={value!r}: use one of {', '.join(choices)}.", variable=name)
        return value

    def duration(self, name: str, default: timedelta) -> timedelta:
        value = self.text(name)
        if not value:
            return default
        return self.convert(name, value, lambda v: units.parse_duration(v, what=name))

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
    ) -> float:
        value = self.text(name)
        if not value:
            return default
        try:
            number = float(int(value)) if integer else float(value)
        except ValueError as exc:
            kind = "a whole number" if integer else "a number"
            raise SettingsError(f"{name}={value!r}: give {kind}.", variable=name) from exc
        if not math.isfinite(number):  # nan passes every bound check below
            raise SettingsError(f"{name}={value!r}: give a finite number.", variable=name)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise SettingsError(
                f"{name}={value!r}: must be between {minimum} and {maximum}.", variable=name
            )
        return number


_TEMPLATE_VARS = {
    "namespace": "KFBOT_NAME_NAMESPACE",
    "bucket": "KFBOT_NAME_BUCKET",
    "nodegroup": "KFBOT_NAME_NODEGROUP",
    "node_label_key": "KFBOT_NAME_NODE_LABEL_KEY",
    "node_label_value": "KFBOT_NAME_NODE_LABEL_VALUE",
    "dex_username": "KFBOT_NAME_DEX_USER",
    "region_alias": "KFBOT_REGION_ALIAS",
    "infra": "KFBOT_INFRA",
    "env": "KFBOT_ENV",
    "instance_specs": "KFBOT_INSTANCE_SPECS",
}


def _nodegroup_style(env: _Env) -> NodegroupStyle:
    """``KFBOT_NODEGROUP_STYLE`` picks the base (``eks``: EKS's defaults, ``runbook``: the runbook's
    eksctl nodegroup); each ``KFBOT_NODE_*`` variable that is set overrides its field."""
    runbook = env.choice("KFBOT_NODEGROUP_STYLE", ("eks", "runbook"), "eks") == "runbook"
    base = RUNBOOK_NODEGROUP if runbook else NodegroupStyle()

    def pick(name: str, choices: tuple[str, ...], default: str) -> str:
        return env.choice(name, choices, default) if env.text(name) else default

    def on_off(name: str, default: bool) -> bool:
        return env.choice(name, ("on", "off"), "on" if default else "off") == "on"

    size = env.text("KFBOT_NODE_DISK_SIZE")
    hops = env.text("KFBOT_NODE_IMDS_HOP_LIMIT")
    return NodegroupStyle(
        disk_size=int(env.number("KFBOT_NODE_DISK_SIZE", 1, minimum=1, maximum=16384, integer=True))
        if size else base.disk_size,
        disk_type=pick("KFBOT_NODE_DISK_TYPE", ("gp2", "gp3", "io1", "io2"), base.disk_type),
        eksctl_labels=on_off("KFBOT_NODE_EKSCTL_LABELS", base.eksctl_labels),
        imds_tokens=pick("KFBOT_NODE_IMDS_TOKENS", ("required", "optional"), base.imds_tokens),
        imds_hop_limit=int(env.number("KFBOT_NODE_IMDS_HOP_LIMIT", 1, minimum=1, maximum=64, integer=True))
        if hops else base.imds_hop_limit,
        instance_tags=on_off("KFBOT_NODE_INSTANCE_TAGS", base.instance_tags),
    )


def _oidc_provider(env: _Env) -> str:
    value = env.text("KFBOT_OIDC_PROVIDER_ARN")
    if value:
        env.convert("KFBOT_OIDC_PROVIDER_ARN", value, workspace_iam.parse_provider)
    if not value and env.text("KFBOT_WORKSPACE_IAM") == "per-workspace":
        raise SettingsError(
            "KFBOT_WORKSPACE_IAM=per-workspace needs KFBOT_OIDC_PROVIDER_ARN, the cluster's IAM OIDC "
            "provider (`aws eks describe-cluster --query cluster.identity.oidc.issuer`, then "
            "arn:aws:iam::ACCOUNT:oidc-provider/ISSUER-WITHOUT-https://).",
            variable="KFBOT_WORKSPACE_IAM",
        )
    return value


def _name_var(fallback: str, message: str) -> str:
    """The variable a ``NamingSettings`` error is about ("naming template bucket=…")."""
    for which, var in _TEMPLATE_VARS.items():
        if f"template {which}=" in message or f"setting {which}" in message:
            return var
    return fallback


def _price(value: str) -> float:
    price = float(value)
    if not 0 <= price < 10_000:
        raise ValueError(f"price {value!r} must be between 0 and 10000 USD per hour")
    return price


def _tokens(env: _Env) -> TokenSettings:
    try:
        return TokenSettings(
            max_ttl=env.duration("KFBOT_TOKEN_MAX_TTL", TokenSettings.max_ttl),
            default_ttl=env.duration("KFBOT_TOKEN_DEFAULT_TTL", TokenSettings.default_ttl),
            api_audience=env.text("KFBOT_TOKEN_API_AUDIENCE", TokenSettings.api_audience),
        )
    except errors.InvalidInput as exc:  # the default outside 10m..KFBOT_TOKEN_MAX_TTL
        raise ValueError(exc.user_message) from exc


def _naming(env: _Env) -> NamingSettings:
    defaults = NamingSettings()
    return NamingSettings(
        namespace=env.text("KFBOT_NAME_NAMESPACE", defaults.namespace),
        bucket=env.text("KFBOT_NAME_BUCKET", defaults.bucket),
        nodegroup=env.text("KFBOT_NAME_NODEGROUP", defaults.nodegroup),
        node_label_key=env.text("KFBOT_NAME_NODE_LABEL_KEY", defaults.node_label_key),
        node_label_value=env.text("KFBOT_NAME_NODE_LABEL_VALUE", defaults.node_label_value),
        dex_username=env.text("KFBOT_NAME_DEX_USER", defaults.dex_username),
        region_alias=env.text("KFBOT_REGION_ALIAS"),
        infra=env.text("KFBOT_INFRA"),
        env=env.text("KFBOT_ENV"),
        instance_specs=env.pairs("KFBOT_INSTANCE_SPECS"),
    )
