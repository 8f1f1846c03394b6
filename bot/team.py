"""The one Slack team (workspace) the bot serves, and the rule every Slack request is held to.

Why: the signing secret (HTTP) and the app-level token (Socket Mode) belong to the *app*, not to a
workspace. Installed a second time (another workspace, or org-wide on Enterprise Grid), the app
receives that team's requests signed and delivered exactly like ours; served, their user ids would
be resolved with our bot token, could collide with our admins' ids, and their requests would be
recorded and applied. So the served team is fixed at start-up (``auth.test`` of the bot token,
checked against ``KFBOT_SLACK_TEAM_ID`` when set) and a request is served only when every team
(and enterprise) it names is that one (``refusal``). ``bot.listeners.common.team_middleware``
applies the rule to every request, both transports, before any listener.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from slack_sdk import WebClient

from bot.settings import TEAM_ID
from handlers import errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedTeam:
    team_id: str
    enterprise_id: str | None = None
    """The Enterprise Grid organisation the team belongs to; None outside Grid."""


def from_auth_test(data: Mapping[str, object], configured: str | None) -> ServedTeam:
    """The team an ``auth.test`` answer says the bot token belongs to; ``Misconfigured`` when it is
    an org-wide token (it serves many teams), names no team, or is not ``configured``."""
    team, name = data.get("team_id"), data.get("team") or "?"
    if data.get("is_enterprise_install") is True:
        raise errors.Misconfigured(
            "The app is installed org-wide on Enterprise Grid; kf-chatops serves one workspace. "
            "Install it to that workspace only and use that installation's bot token."
        )
    if not isinstance(team, str) or not TEAM_ID.fullmatch(team):
        raise errors.Misconfigured("Slack's auth.test did not name the bot token's workspace (team_id).")
    if configured is not None and team != configured:
        raise errors.Misconfigured(
            f"KFBOT_SLACK_TEAM_ID is {configured}, but SLACK_BOT_TOKEN belongs to workspace {team} "
            f"({name}): use the bot token of {configured}'s installation, or correct KFBOT_SLACK_TEAM_ID."
        )
    enterprise = data.get("enterprise_id")
    return ServedTeam(team, enterprise if isinstance(enterprise, str) and enterprise else None)


def resolve(client: WebClient, configured: str | None) -> ServedTeam:
    """``auth.test`` with the bot token -> the team served (``from_auth_test``), logged once."""
    data = client.auth_test().data
    served = from_auth_test(data if isinstance(data, dict) else {}, configured)
    logger.info(
        "serving Slack team %s%s%s",
        served.team_id,
        f" of enterprise {served.enterprise_id}" if served.enterprise_id else "",
        "" if configured else " (the bot token's; KFBOT_SLACK_TEAM_ID is not set)",
    )
    return served


def _id(value: object) -> object:
    """A team or enterprise named by an id or by an object with one (``{"id": ...}``)."""
    return value.get("id") if isinstance(value, Mapping) else value


def _named(body: Mapping[str, object]) -> tuple[list[object], list[object], list[object]]:
    """Every team id, enterprise id and ``is_enterprise_install`` a payload carries where Slack puts
    them: slash commands and events at the top (``team_id``, ``enterprise_id``, events'
    ``context_*`` and ``authorizations``), interactions in ``team``, ``user`` and ``view``."""
    teams = [body.get("team_id"), body.get("context_team_id"), _id(body.get("team"))]
    enterprises = [body.get("enterprise_id"), body.get("context_enterprise_id"), _id(body.get("enterprise"))]
    installs = [body.get("is_enterprise_install")]
    authorizations = body.get("authorizations")
    auths = authorizations if isinstance(authorizations, list) else [authorizations]
    for holder in [body.get("team"), body.get("user"), body.get("view")]:
        if isinstance(holder, Mapping):
            teams += [holder.get("team_id"), holder.get("app_installed_team_id")]
            enterprises.append(holder.get("enterprise_id"))
            installs.append(holder.get("is_enterprise_install"))
    for auth in auths:
        if isinstance(auth, Mapping):
            teams.append(auth.get("team_id"))
            enterprises.append(auth.get("enterprise_id"))
            installs.append(auth.get("is_enterprise_install"))
        else:  # not a shape Slack sends (None: no authorizations at all)
            teams.append(auth)
    return teams, enterprises, installs


def refusal(body: Mapping[str, object], served: ServedTeam) -> str | None:
    """None when ``body`` comes from the served team; else why not (for the log: no value of the
    payload in it). Fails closed: a payload naming no team, naming another anywhere, or naming it
    in a shape Slack does not send (not a string) is refused."""
    teams, enterprises, installs = _named(body)
    teams = [t for t in teams if t is not None]
    if not teams:
        return "no team"
    if any(t != served.team_id for t in teams):
        return "another team"
    if any(e not in (None, "", served.enterprise_id) for e in enterprises):
        return "another enterprise"
    if any(i not in (None, False, "false") for i in installs):
        return "an org-wide installation"
    return None
