"""Buttons: Approve, Reject (opens the reason modal), View plan, Show token, Set my password, and
the idle report's Stop notebook, Scale to 0, Keep 4h and Snooze until tomorrow.

A report button files the request its command would (``handlers.cost.buttons.request_for`` reads
the untrusted value), as the clicking user, through ``services.submit``: the kind's policy row
decides, as for the command. Its idempotency key is the click's ``action_ts``, so a redelivered
click files nothing new while a click on the same button later files again.

A decision's idempotency key is the card's message ts + the action + the clicking user + the
request version the card showed, claimed under a unique constraint in ``services.decide``: a
double click or a redelivery finds the key taken and gets "already approved by X"; a value
without its version is refused (``blocks.parse_decision_value``).

Secrets are made at the click (``services.reveal_*``) and shown once in a modal; they are never
posted in a message, logged or stored. Making one can take longer than a click's ``trigger_id``
lives (~3 s: a Dex restart in configmap mode, bcrypt at cost 16), so the modal is opened first
("Working…") and ``views.update``d with the secret, or with the reason there is none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import cast

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks, render
from bot import logging as log
from bot.listeners.common import Deps, after_ack, durable, error_reply, tell
from bot.payloads import Action, BlockActions, text_at
from handlers import drift, kinds, services
from handlers.cost import buttons
from handlers.model import Actor
from handlers.ports import RevealedSecret

logger = logging.getLogger(__name__)

Click = Callable[[BlockActions, str, WebClient, Callable[[str], None]], None]
"""A button's work after the ack: (body, the button's value, client, tell the clicker)."""


def message_ts(body: BlockActions) -> str:
    """The card's ts; for a click on the App Home tab, its view id (in the same place of the
    decision key)."""
    return (
        text_at(body, "container", "message_ts")
        or text_at(body, "message", "ts")
        or text_at(body, "container", "view_id")
    )


def decision_key(body: BlockActions, action: str, user: str, version: int | None) -> str:
    return f"{message_ts(body)}:{action}:{user}:{version}"


def _forget(secret: RevealedSecret) -> None:
    log.forget_later(secret.value)
    for text in secret.extra.values():
        if secret.value not in text:
            log.forget_later(text)


def _value(body: Mapping[str, object]) -> str:
    actions = body.get("actions")
    first = actions[0] if isinstance(actions, list) and actions else {}
    return str(first.get("value", "")) if isinstance(first, dict) else ""


def on_durable_click(app: App, deps: Deps, action_id: str, work: Click) -> None:
    """Register ``work`` for a button whose work must survive the ack (a decision): recorded in the
    inbox, acked, run (``durable``)."""
    kind = f"click:{action_id}"

    def listener(
        ack: Ack, body: BlockActions, context: BoltContext, client: WebClient, respond: Respond
    ) -> None:
        durable(deps, kind, ack, body, context, client, respond)

    def run(body: Mapping[str, object], client: WebClient, respond: Respond | None, cid: str) -> None:
        work(cast(BlockActions, body), _value(body), client, lambda text: tell(body, client, respond, text))

    deps.inbox.handler(kind, run)
    app.action(action_id)(listener)


def on_click(app: App, deps: Deps, action_id: str, work: Click) -> None:
    """Register ``work`` for a button that opens a modal: ack at once, then run it through
    ``after_ack`` on the quick pool (the ``trigger_id`` lives 3 s; nothing to keep after that)."""

    def listener(
        ack: Ack,
        body: BlockActions,
        action: Action,
        context: BoltContext,
        client: WebClient,
        respond: Respond,
    ) -> None:
        ack()
        value = str(action.get("value", ""))
        after_ack(
            deps,
            context,
            body,
            client,
            respond,
            lambda: work(body, value, client, lambda text: tell(body, client, respond, text)),
        )

    app.action(action_id)(listener)


def show_secret(
    client: WebClient,
    body: BlockActions,
    title: str,
    make: Callable[[], RevealedSecret],
    request_id: str | None,
    cid: str,
    later: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Open "Working…" with the click's trigger_id at once, then make the secret and put it (or
    the reason there is none) into that modal by its view id. ``later`` runs the making (seconds:
    bcrypt, a Dex restart) off the thread that opened the modal, so the quick pool stays free for
    the next click's ``views.open``; without it, it runs here."""
    opened = client.views_open(trigger_id=body["trigger_id"], view=blocks.working_modal(title))
    view_id = str((opened.get("view") or {}).get("id") or "")

    def fill() -> None:
        with log.bound(cid):
            try:
                secret = make()
            except Exception as error:  # shown in the modal the clicker is looking at, not in a message
                client.views_update(view_id=view_id, view=blocks.notice_modal(title, error_reply(error, cid)))
                return
            _forget(secret)
            client.views_update(view_id=view_id, view=blocks.secret_modal(secret, request_id=request_id))
            extra = {"request_id": request_id} if request_id else {}
            logger.info("%s shown to %s", secret.kind, text_at(body, "user", "id"), extra=extra)

    if later is None:
        fill()
    else:
        later(fill)


def register(app: App, deps: Deps) -> None:
    core, identity = deps.core, deps.identity

    def approve(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
        user = body["user"]["id"]
        actor = identity.actor(user)
        request_id, version = blocks.parse_decision_value(value)
        request = services.decide(
            core,
            actor,
            request_id,
            approve=True,
            seen_version=version,
            decision_key=decision_key(body, "approve", user, version),
        )
        logger.info("%s approved %s", user, request.id, extra={"request_id": request.id})
        say(f"You approved `{request.id}`; it is being applied.")

    def reject(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
        actor = identity.actor(body["user"]["id"])
        request_id, version = blocks.parse_decision_value(value)
        request = services.pending_decision(core, actor, request_id)  # decide()'s rule, before the modal
        channel = text_at(body, "container", "channel_id") or text_at(body, "channel", "id")
        metadata = blocks.RejectContext(request.id, version, channel, message_ts(body))
        client.views_open(trigger_id=body["trigger_id"], view=blocks.reject_modal(request, metadata))

    def view_plan(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
        actor = identity.actor(body["user"]["id"])
        request = services.get_request(core, actor, value)
        client.views_open(trigger_id=body["trigger_id"], view=blocks.plan_modal(request))

    def elsewhere(fill: Callable[[], None]) -> None:
        # Not durable (the secret is made for the person looking at this modal, or not at all);
        # the work pool if it has room, else this thread.
        cid = log.correlation_id()

        def guarded() -> None:
            with log.bound(cid):
                try:
                    fill()
                except Exception:  # the modal stays on "Working…"; the log has why, under the cid
                    logger.exception("could not fill a secret modal")

        if not deps.pool.submit(guarded):
            guarded()

    def secret_click(title: str, make: Callable[[Actor, str], RevealedSecret], *, per_request: bool) -> Click:
        def work(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
            actor = identity.actor(body["user"]["id"])
            request_id = value if per_request else None
            show_secret(
                client,
                body,
                title,
                lambda: make(actor, value),
                request_id,
                log.correlation_id(),
                later=elsewhere,
            )

        return work

    def report_button(action_id: str) -> Click:
        def work(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
            user = body["user"]["id"]
            actor = identity.actor(user)
            kind = buttons.request_for(
                action_id, value, now=core.clock.now(), settings=core.settings, facts=core.facts
            )
            actions = body.get("actions") or [{}]
            click = str(actions[0].get("action_ts") or body.get("trigger_id") or message_ts(body))
            def answer(result: services.Submitted) -> None:
                extra = {"request_id": result.request.id}
                logger.info("%s clicked %s: %s", user, action_id, result.request.id, extra=extra)
                say(
                    blocks.fallback(
                        render.submitted_text(
                            result.request,
                            duplicate=result.duplicate,
                            auto_reason=result.auto_reason,
                            style=render.SLACK,
                        )
                    )
                )

            services.submit(
                core,
                actor,
                kind,
                idempotency_key=f"button:{action_id}:{user}:{click}",
                correlation_id=log.correlation_id(),
                recorded=answer,
            )

        return work

    def adopt(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
        # The scan's Adopt button: the request the command files, as the clicker, through the gate
        # (only an admin may ask; another admin decides). The value is read as hostile input.
        user = body["user"]["id"]
        actor = identity.actor(user)
        kind = kinds.adopt_from_button(value)
        actions = body.get("actions") or [{}]
        click = str(actions[0].get("action_ts") or body.get("trigger_id") or message_ts(body))

        def answer(result: services.Submitted) -> None:
            request = result.request
            logger.info("%s clicked adopt: %s", user, request.id, extra={"request_id": request.id})
            text = render.submitted_text(
                request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=render.SLACK
            )
            say(blocks.fallback(text))

        services.submit(
            core,
            actor,
            kind,
            idempotency_key=f"button:{kinds.ADOPT_BUTTON}:{user}:{click}",
            correlation_id=log.correlation_id(),
            recorded=answer,
        )

    for action_id in buttons.ACTIONS:
        on_durable_click(app, deps, action_id, report_button(action_id))
    on_durable_click(app, deps, kinds.ADOPT_BUTTON, adopt)

    def drift_button(action_id: str) -> Click:
        def work(body: BlockActions, value: str, client: WebClient, say: Callable[[str], None]) -> None:
            if deps.drift is None:
                say("The drift report is not available here.")
                return
            user = body["user"]["id"]
            actions = body.get("actions") or [{}]
            click = str(actions[0].get("action_ts") or body.get("trigger_id") or message_ts(body))
            result = deps.drift.click(
                action_id, value, identity.actor(user), f"button:{action_id}:{user}:{click}",
                log.correlation_id(),
            )
            logger.info("%s clicked %s: %s", user, action_id, result.request.id,
                        extra={"request_id": result.request.id})
            say(blocks.fallback(render.submitted_text(
                result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=render.SLACK
            )))

        return work

    for action_id in drift.ACTIONS:
        on_durable_click(app, deps, action_id, drift_button(action_id))
    on_durable_click(app, deps, blocks.APPROVE, approve)
    on_click(app, deps, blocks.REJECT, reject)
    on_click(app, deps, blocks.VIEW_PLAN, view_plan)
    on_click(
        app,
        deps,
        blocks.SHOW_TOKEN,
        secret_click(
            "Your token", lambda actor, value: services.reveal_token(core, actor, value), per_request=True
        ),
    )
    on_click(
        app,
        deps,
        blocks.SET_PASSWORD,
        secret_click(
            "Your password", lambda actor, value: services.reveal_password(core, actor), per_request=False
        ),
    )
