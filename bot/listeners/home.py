"""The App Home tab: ``app_home_opened`` publishes the person's tab; its Cancel and Revoke buttons.

Approve and Reject on the tab are the card's own action ids, handled by ``bot.listeners.actions``
(same policy check, same decision key shape: the view id stands where the card's message ts is).
Cancel and Revoke are durable clicks like a decision: recorded before the ack, run once. Revoke
files a ``token.revoke`` request as ``/kf token revoke`` does, so the kind's policy row decides
(the button's value is the clicker's claim, nothing more).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from slack_bolt import App

from bot import blocks, render
from bot.home import HOME_CANCEL, HOME_REVOKE
from bot.listeners.actions import on_durable_click
from bot.listeners.common import Deps
from bot.payloads import BlockActions, text_at
from handlers import kinds, services

logger = logging.getLogger(__name__)
S = render.SLACK


def register(app: App, deps: Deps) -> None:
    core, identity = deps.core, deps.identity

    def opened(event: Mapping[str, object]) -> None:
        # Bolt has acknowledged the event already; the publish (database reads, one Slack call)
        # runs on the quick pool, not on the thread that took the request.
        home = deps.home
        user = str(event.get("user") or "")
        if home is None or event.get("tab") != "home" or not user:
            return

        def publish() -> None:
            try:
                home.opened(user)
            except Exception:  # nobody to answer: the tab keeps its last view until the next open
                logger.exception("could not publish the App Home of %s", user)

        if not deps.quick.submit(publish, "home"):
            logger.warning("App Home not published: the quick pool is full")

    def cancel(body: BlockActions, value: str, client: object, say: Callable[[str], None]) -> None:
        actor = identity.actor(body["user"]["id"])
        request = services.cancel(core, actor, value)
        say(f"Cancelled `{request.id}`: {render.describe(request, S)}.")

    def revoke(body: BlockActions, value: str, client: object, say: Callable[[str], None]) -> None:
        user = body["user"]["id"]
        actor = identity.actor(user)
        kind = kinds.TokenRevoke(value)  # refuses what is not a token id before anything is read
        actions = body.get("actions") or [{}]
        click = str(actions[0].get("action_ts") or body.get("trigger_id") or text_at(body, "view", "id"))

        def answer(result: services.Submitted) -> None:
            say(
                blocks.fallback(
                    render.submitted_text(
                        result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=S
                    )
                )
            )

        services.submit(core, actor, kind, idempotency_key=f"home:revoke:{user}:{click}", recorded=answer)

    app.event("app_home_opened")(opened)
    on_durable_click(app, deps, HOME_CANCEL, cancel)
    on_durable_click(app, deps, HOME_REVOKE, revoke)
