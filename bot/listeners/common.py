"""What every listener shares: the dependencies, the correlation id, the global error handler
and the one way to answer the person who acted."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from bot import logging as log
from bot import render
from bot.identity import Identity
from bot.settings import Settings
from handlers import errors
from handlers.services import Core

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deps:
    """What the listeners need, wired by ``bot.app``."""

    settings: Settings
    core: Core
    identity: Identity
    backend: Any
    """``provisioning.Backend``: read models (workspaces, contributors, tokens)."""


def correlation_middleware(context: BoltContext, next: Callable[[], None]) -> None:
    context["correlation_id"] = log.new_correlation_id()
    next()


def correlation(context: BoltContext) -> str:
    cid = context.get("correlation_id")
    return str(cid) if cid else log.new_correlation_id()


def user_id(body: Mapping[str, Any]) -> str:
    return str(body.get("user_id") or (body.get("user") or {}).get("id") or "")


def on_error(
    error: Exception, body: dict[str, Any], context: BoltContext, client: WebClient, respond: Respond | None
) -> None:
    cid = correlation(context)
    with log.bound(cid):
        if isinstance(error, errors.KfError):
            logger.info("refused %s: %s", type(error).__name__, error.user_message)
            text = render.error_text(error, render.SLACK)
        else:
            logger.error("unhandled error in a Slack listener", exc_info=error)
            text = render.internal_error_text(cid)
        tell(body, client, respond, text)


def _channel_of(body: Mapping[str, Any]) -> str | None:
    channel = (
        body.get("channel_id")
        or (body.get("channel") or {}).get("id")
        or (body.get("container") or {}).get("channel_id")
    )
    if channel:
        return str(channel)
    metadata = (body.get("view") or {}).get("private_metadata") or ""
    if metadata.startswith("{"):
        try:
            found = json.loads(metadata).get("c")
        except ValueError:
            return None
        return str(found) if found else None
    return None


def tell(body: Mapping[str, Any], client: WebClient, respond: Respond | None, text: str) -> None:
    """An ephemeral note to the person who acted: via response_url where Slack gave one, else an
    ephemeral message in the channel, else a DM. Delivery failures are logged, never raised."""
    uid = user_id(body)
    try:
        if respond is not None and respond.response_url:
            respond(text=text, response_type="ephemeral", replace_original=False)
            return
        channel = _channel_of(body)
        if channel and not channel.startswith("D"):
            client.chat_postEphemeral(channel=channel, user=uid, text=text)
        elif uid:
            client.chat_postMessage(channel=uid, text=text)
    except (SlackClientError, OSError) as exc:
        logger.warning("could not tell %s: %s", uid, type(exc).__name__)
