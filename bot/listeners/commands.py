"""``/kf``: ack at once, parse, call one use case, reply ephemerally.

The command's ``trigger_id`` is its idempotency key: a delivery Slack (or a proxy) repeats finds
the request the first one recorded and says so instead of recording a second.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks, render
from bot.controls import control, scan
from bot.listeners.common import Deps, durable
from bot.offboard import Offboarder
from bot.payloads import SlashCommand
from handlers import errors, parse, services
from handlers.kinds import RequestKind

logger = logging.getLogger(__name__)
S = render.SLACK
COMMAND = "command"
"""The inbox kind of a ``/kf`` command."""


def register(app: App, deps: Deps) -> None:
    def kf(
        ack: Ack,
        body: SlashCommand,
        command: SlashCommand,
        respond: Respond,
        context: BoltContext,
        client: WebClient,
    ) -> None:
        durable(deps, COMMAND, ack, body, context, client, respond)

    def work(body: Mapping[str, object], client: WebClient, respond: Respond | None, cid: str) -> None:
        if respond is None:  # Slack always sends a slash command's response_url
            raise errors.InvalidInput("This command came without a response_url.")
        handle(deps, cast(SlashCommand, body), respond, client, cid)

    deps.inbox.handler(COMMAND, work)
    app.command("/kf")(kf)


def handle(deps: Deps, command: SlashCommand, respond: Respond, client: WebClient, cid: str) -> None:
    actor = deps.identity.actor(str(command["user_id"]))
    text = str(command.get("text") or "")
    logger.info("/kf from %s: %s", actor.user_id, render.SLACK.esc(text[:200]))
    parsed = parse.parse_command(
        text,
        requester_email=actor.email,
        resolve_user=deps.identity.email_of_other,
        settings=deps.core.settings,
    )
    if isinstance(parsed, parse.WorkspaceForm):
        client.views_open(trigger_id=command["trigger_id"], view=blocks.workspace_modal())
        return
    if isinstance(parsed, parse.PasswordReset):
        text, blks = blocks.dm(
            "A new Kubeflow password for your own login is made when you click, and shown once.",
            action=("Set my password", blocks.SET_PASSWORD, ""),
        )
        respond(text=text, blocks=blks, response_type="ephemeral")
        return
    if isinstance(parsed, parse.Offboard):
        if deps.people is None:
            raise errors.InvalidInput("Offboarding is not available here.")
        checked = Offboarder(client, deps.people, deps.core, deps.core.clock).check_now(actor, parsed.email)
        respond(text=blocks.fallback(render.SLACK.message(checked)), response_type="ephemeral")
        return
    if isinstance(parsed, parse.WorkspaceScan):
        text, blks = blocks.scan_message(scan(deps.backend, actor))
        respond(text=text, blocks=blks, response_type="ephemeral")
        return
    if isinstance(parsed, parse.Drift) and deps.drift is not None:
        said, shown = deps.drift.answer(actor)
        respond(text=said, blocks=blocks.to_dicts(shown), response_type="ephemeral")
        return
    if isinstance(parsed, parse.Control):
        respond(
            text=blocks.fallback(control(deps.core, deps.backend, actor, parsed, key=command["trigger_id"])),
            response_type="ephemeral",
        )
        return
    kind: RequestKind = parsed

    def answer(result: services.Submitted) -> None:
        respond(
            text=blocks.fallback(
                render.submitted_text(
                    result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=S
                )
            ),
            response_type="ephemeral",
        )

    services.submit(
        deps.core,
        actor,
        kind,
        idempotency_key=f"slash:{command['trigger_id']}",
        correlation_id=cid,
        recorded=answer,
    )
