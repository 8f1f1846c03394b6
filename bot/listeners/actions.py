"""Buttons: Approve, Reject (opens the reason modal), View plan, Show token, Set my password.

A decision's idempotency key is the card's message ts + the action + the clicking user + the
request version the card showed, claimed under a unique constraint in ``services.decide``: a
double click or a redelivery finds the key taken and gets "already approved by X". Secrets are
made at the click (``services.reveal_*``) and shown once in a modal opened with the click's own
``trigger_id``; they are never posted in a message, logged or stored.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks
from bot import logging as log
from bot.listeners.common import Deps, after_ack, tell
from handlers import errors, policy, services
from handlers.model import SYSTEM, RequestState
from handlers.ports import RevealedSecret

logger = logging.getLogger(__name__)


def message_ts(body: dict[str, Any]) -> str:
    return str((body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts") or "")


def decision_key(body: dict[str, Any], action: str, user: str, version: int | None) -> str:
    return f"{message_ts(body)}:{action}:{user}:{version}"


def already_text(request_id: str, state: RequestState, decided_by: str | None) -> str:
    who = f" by <@{decided_by}>" if decided_by and decided_by != SYSTEM.user_id else ""
    return f"{request_id} is already {state.value}{who}."


def _forget(secret: RevealedSecret) -> None:
    log.forget_later(secret.value)
    for text in secret.extra.values():
        if secret.value not in text:
            log.forget_later(text)


def register(app: App, deps: Deps) -> None:
    core, identity = deps.core, deps.identity

    def approve(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        respond: Respond,
    ) -> None:
        ack()

        def work() -> None:
            user = body["user"]["id"]
            actor = identity.actor(user)
            request_id, version = blocks.parse_decision_value(str(action.get("value", "")))
            request = services.decide(
                core,
                actor,
                request_id,
                approve=True,
                seen_version=version,
                decision_key=decision_key(body, "approve", user, version),
            )
            logger.info("%s approved %s", user, request.id, extra={"request_id": request.id})
            tell(body, client, respond, f"You approved `{request.id}`; it is being applied.")

        after_ack(context, body, client, respond, work)

    def reject(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        respond: Respond,
    ) -> None:
        ack()

        def work() -> None:
            actor = identity.actor(body["user"]["id"])
            request_id, version = blocks.parse_decision_value(str(action.get("value", "")))
            if not actor.is_admin:  # the same refusal decide() gives, before any lookup or modal
                raise errors.Forbidden("Only admins can approve or reject requests.")
            request = services.get_request(core, actor, request_id)
            policy.check_may_decide(actor, request)
            if request.state is not RequestState.PENDING:
                raise errors.AlreadyDone(already_text(request.id, request.state, request.decided_by))
            container = body.get("container") or {}
            channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id") or "")
            metadata = blocks.RejectContext(request.id, version, channel, message_ts(body))
            client.views_open(trigger_id=body["trigger_id"], view=blocks.reject_modal(request, metadata))

        after_ack(context, body, client, respond, work)

    def view_plan(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        respond: Respond,
    ) -> None:
        ack()

        def work() -> None:
            actor = identity.actor(body["user"]["id"])
            request = services.get_request(core, actor, str(action.get("value", "")))
            client.views_open(trigger_id=body["trigger_id"], view=blocks.plan_modal(request))

        after_ack(context, body, client, respond, work)

    def show_token(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        client: WebClient,
        respond: Respond,
    ) -> None:
        ack()

        def work() -> None:
            actor = identity.actor(body["user"]["id"])
            request_id = str(action.get("value", ""))
            secret = services.reveal_token(core, actor, request_id)
            _forget(secret)
            client.views_open(
                trigger_id=body["trigger_id"], view=blocks.secret_modal(secret, request_id=request_id)
            )
            logger.info("token shown to %s", actor.user_id, extra={"request_id": request_id})

        after_ack(context, body, client, respond, work)

    def set_password(
        ack: Ack, body: dict[str, Any], context: BoltContext, client: WebClient, respond: Respond
    ) -> None:
        ack()

        def work() -> None:
            actor = identity.actor(body["user"]["id"])
            secret = services.reveal_password(core, actor)
            _forget(secret)
            client.views_open(
                trigger_id=body["trigger_id"], view=blocks.secret_modal(secret, request_id=None)
            )
            logger.info("password shown to %s", actor.user_id)

        after_ack(context, body, client, respond, work)

    app.action(blocks.APPROVE)(approve)
    app.action(blocks.REJECT)(reject)
    app.action(blocks.VIEW_PLAN)(view_plan)
    app.action(blocks.SHOW_TOKEN)(show_token)
    app.action(blocks.SET_PASSWORD)(set_password)
