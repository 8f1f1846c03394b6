"""Modal submissions: the reject reason and the new-workspace form.

Both validate before ``ack()`` because that is the only moment Slack accepts field errors
(``response_action="errors"``); only pure validation runs there (the fields, names and units:
``parse.workspace_from_form``), never a Slack, database or Kubernetes call, so the ack stays within
Slack's 3 s. Everything else (who the user is, the plan, "that name is taken") runs after the ack
and answers by DM. The form's idempotency key is the view id, so a submission delivered twice
records one request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks, render
from bot import logging as log
from bot.listeners.common import Deps, correlation, durable, tell
from bot.payloads import View, ViewSubmission
from handlers import errors, naming, parse, services

logger = logging.getLogger(__name__)
PLACEHOLDER_EMAIL = "requester@example.com"
"""Stands in for the requester's address while the form is checked before the ack."""
REJECT_KIND = "view:reject"
FORM_KIND = "view:workspace"


def field_errors(exc: errors.KfError) -> dict[str, str]:
    block = blocks.FIELD_BLOCKS.get(getattr(exc, "field", None) or "", "name")
    # Modal errors are plain text, Slack's escapes would show as such: render it as the shell does.
    return {block: naming.truncate(render.SHELL.message(exc.user_message), 300)}


def register(app: App, deps: Deps) -> None:
    core, identity = deps.core, deps.identity

    def reject_reason(
        ack: Ack, body: ViewSubmission, view: View, context: BoltContext, client: WebClient
    ) -> None:
        reason = blocks.form_values(view).get(blocks.REASON_BLOCK, "")
        if not reason:
            ack(response_action="errors", errors={blocks.REASON_BLOCK: "Say why the request is rejected."})
            return
        try:  # pure, like the form below: the modal is the place to say what is wrong with it
            naming.free_text(reason, what="reason", field="reason")  # again after the ack, from the row
        except errors.InvalidInput as exc:
            ack(response_action="errors", errors=field_errors(exc))
            return
        durable(deps, REJECT_KIND, ack, body, context, client, None)

    def reject_work(
        body_: Mapping[str, object], client: WebClient, respond: Respond | None, cid: str
    ) -> None:
        body = cast(ViewSubmission, body_)
        view = body["view"]
        reason = naming.free_text(
            blocks.form_values(view).get(blocks.REASON_BLOCK, ""), what="reason", field="reason"
        )
        user = body["user"]["id"]
        meta = blocks.RejectContext.load(view.get("private_metadata") or "")
        if meta.version is None:  # decide() would skip its stale-card check
            raise errors.InvalidInput(blocks.STALE_BUTTON_TEXT)
        actor = identity.actor(user)
        request = services.decide(
            core,
            actor,
            meta.request_id,
            approve=False,
            reason=reason,
            decision_key=f"{meta.message_ts}:reject:{user}:{meta.version}",
            seen_version=meta.version,
        )
        logger.info("%s rejected %s", user, request.id, extra={"request_id": request.id})
        tell(body, client, None, f"You rejected `{request.id}`.")

    def workspace_form(
        ack: Ack, body: ViewSubmission, view: View, context: BoltContext, client: WebClient
    ) -> None:
        values = blocks.form_values(view)
        with log.bound(correlation(context)):
            try:  # pure: the owner defaults to the requester, filled in after the ack
                parse.workspace_from_form(values, PLACEHOLDER_EMAIL)
            except errors.KfError as exc:  # before ack is the only moment Slack shows errors on fields
                ack(response_action="errors", errors=field_errors(exc))
                return
        durable(deps, FORM_KIND, ack, body, context, client, None)

    def form_work(body_: Mapping[str, object], client: WebClient, respond: Respond | None, cid: str) -> None:
        body = cast(ViewSubmission, body_)
        view = body["view"]
        actor = identity.actor(body["user"]["id"])
        kind = parse.workspace_from_form(blocks.form_values(view), actor.email)
        result = services.submit(core, actor, kind, idempotency_key=f"view:{view['id']}", correlation_id=cid)
        text = render.submitted_text(
            result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=render.SLACK
        )
        client.chat_postMessage(channel=actor.user_id, text=blocks.fallback(text))

    deps.inbox.handler(REJECT_KIND, reject_work)
    deps.inbox.handler(FORM_KIND, form_work)
    app.view(blocks.REJECT_VIEW)(reject_reason)
    app.view(blocks.WORKSPACE_VIEW)(workspace_form)
