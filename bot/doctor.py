"""``kfbot doctor``: can this bot do its job here? Prints a table of OK / FIX (with what to fix).

The Slack half lives here: the settings ``kfbot serve`` needs, ``auth.test`` with the bot token,
and the token's scopes (the ``x-oauth-scopes`` header Slack returns on every Web API call)
against the scopes of ``slack-app-manifest.yaml``. The rest comes from
``provisioning.Backend.doctor``: the database (reachable, migrated) and, when the provisioner is
live or ``--live`` is given, Kubernetes permissions (a SelfSubjectAccessReview per permission),
the Kubeflow CRDs, the Dex mode's objects, where the identity header settings came from, and AWS
(identity, S3, IAM, EKS). Every check only reads.

Exit status: 0 when nothing needs fixing (skipped checks do not count), 1 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Final, TextIO

from slack_sdk.errors import SlackApiError, SlackClientError

import provisioning
from bot import app as composition
from bot import team
from bot.settings import Settings, SettingsError
from handlers import errors

CheckResult = provisioning.CheckResult
Status = provisioning.Status

REQUIRED_SCOPES: Final = (
    "commands",
    "chat:write",
    "im:write",
    "users:read",
    "users:read.email",
    "usergroups:read",
    "files:write",
)
"""The bot scopes of ``slack-app-manifest.yaml`` (a test keeps them equal)."""
SCOPES_HEADER: Final = "x-oauth-scopes"
_REINSTALL: Final = (
    "add it under OAuth & Permissions -> Bot Token Scopes (or update the app from "
    "slack-app-manifest.yaml), then reinstall the app to the workspace"
)


def _ok(area: str, check: str, detail: str) -> CheckResult:
    return CheckResult(area, check, Status.OK, detail)


def _fix(area: str, check: str, detail: str, what: str) -> CheckResult:
    return CheckResult(area, check, Status.FIX, detail, what)


def _header(headers: Mapping[str, str | list[str]] | None, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == name:
            return str(value[0] if isinstance(value, list) and value else value)
    return None


def settings_checks(settings: Settings) -> list[CheckResult]:
    try:
        settings.require_serve()
    except SettingsError as exc:
        return [
            _fix("settings", "kfbot serve", problem, "set it (docs/SETTINGS.md)") for problem in exc.problems
        ]
    transport = "Socket Mode" if settings.slack.socket_mode else "HTTP (/slack/events)"
    return [
        _ok(
            "settings",
            "kfbot serve",
            f"complete: Slack via {transport}, admin channel {settings.slack.admin_channel}, "
            f"provisioner {settings.mode}",
        )
    ]


def slack_checks(settings: Settings) -> list[CheckResult]:
    """``auth.test`` and the token's scopes; one FIX row per missing scope."""
    if not settings.slack.bot_token:
        return [CheckResult("slack", "auth.test", Status.SKIP, "skipped: SLACK_BOT_TOKEN is not set")]
    client = composition.make_client(settings)
    try:
        response = client.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error", "?")) if exc.response is not None else "?"
        return [
            _fix(
                "slack",
                "auth.test",
                f"Slack refused the bot token: {error}",
                "copy the Bot User OAuth Token (xoxb-…) into SLACK_BOT_TOKEN again; reinstalling the "
                "app makes a new one",
            )
        ]
    except (SlackClientError, OSError) as exc:
        return [
            _fix(
                "slack",
                "auth.test",
                f"cannot reach Slack: {type(exc).__name__}",
                "check the pod's egress to slack.com (or KFBOT_SLACK_API_URL)",
            )
        ]
    data = response.data if isinstance(response.data, dict) else {}
    results = [
        _ok(
            "slack",
            "auth.test",
            f"team {data.get('team', '?')} ({data.get('team_id', '?')}), "
            f"bot user {data.get('user', '?')} ({data.get('user_id', '?')})",
        )
    ]
    try:
        served = team.from_auth_test(data, settings.slack.team_id)
    except errors.Misconfigured as exc:
        results.append(
            _fix("slack", "team", exc.user_message, "kfbot serve refuses to start until they agree")
        )
    else:
        results.append(_ok("slack", "team", f"serves workspace {served.team_id} only"))
    header = _header(response.headers, SCOPES_HEADER)
    if header is None:
        results.append(
            _fix(
                "slack",
                "scopes",
                f"Slack did not report the token's scopes (no {SCOPES_HEADER} header)",
                "use the bot token (xoxb-…) of the app made from slack-app-manifest.yaml",
            )
        )
        return results
    granted = {scope.strip() for scope in header.split(",") if scope.strip()}
    missing = [scope for scope in REQUIRED_SCOPES if scope not in granted]
    if not missing:
        extra = sorted(granted - set(REQUIRED_SCOPES))
        note = f"; also granted, not needed: {', '.join(extra)}" if extra else ""
        results.append(_ok("slack", "scopes", f"all {len(REQUIRED_SCOPES)} scopes granted{note}"))
    for scope in missing:
        results.append(_fix("slack", f"scope {scope}", "missing from the bot token", _REINSTALL))
    return results


def collect(settings: Settings, *, live: bool, kube_api: object | None = None) -> list[CheckResult]:
    """Every row of the table: settings, Slack, then the backend's (database, live checks)."""
    results = settings_checks(settings) + slack_checks(settings)
    settings, _ = settings.with_local_audit_key(create=False)
    # Built as dry-run even when live: building a live backend loads Kubernetes credentials at
    # once, and the doctor must report missing ones as a FIX row, not die of them. The checks
    # make the live adapters themselves (from the same settings) and only read.
    quiet = replace(settings, provisioning=replace(settings.provisioning, mode="dry-run"))
    backend = composition.build_backend(quiet, kube_api=kube_api)
    try:
        report = backend.doctor(live=live or settings.mode == "live")
    finally:
        backend.close()
    return results + list(report.results)


def render(results: Sequence[CheckResult], *, mode: str, live: bool) -> str:
    checked = "live checks included" if live or mode == "live" else "live checks skipped"
    width = min(max((len(r.check) for r in results), default=5), 60)
    area_width = max((len(r.area) for r in results), default=4)
    lines = [f"kfbot doctor · provisioner {mode} · {checked}", ""]
    lines.append(f"{'STATUS':<6}  {'AREA':<{area_width}}  {'CHECK':<{width}}  DETAIL")
    for r in results:
        lines.append(f"{r.status.value:<6}  {r.area:<{area_width}}  {r.check:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"{'':<6}  {'':<{area_width}}  -> fix: {r.fix}")
    to_fix = [r for r in results if r.status is Status.FIX]
    lines.append("")
    lines.append(
        f"{len(to_fix)} to fix." if to_fix else f"All {len(results)} checks OK (or skipped)."
    )
    return "\n".join(lines) + "\n"


def run(settings: Settings, *, live: bool, out: TextIO | None = None, kube_api: object | None = None) -> int:
    """``kfbot doctor [--live]``: print the table; 0 when nothing needs fixing, else 1."""
    out = out or sys.stdout
    try:
        results = collect(settings, live=live, kube_api=kube_api)
    except errors.KfError as exc:  # e.g. an unsupported database URL
        results = [_fix("settings", "database URL", exc.user_message, "fix KFBOT_DATABASE_URL")]
    out.write(render(results, mode=settings.mode, live=live))
    out.flush()
    return exit_code(results)


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status is Status.FIX for r in results) else 0
