"""``/kf``: ack at once, parse, call one use case, reply ephemerally.

The command's ``trigger_id`` is its idempotency key: a delivery Slack (or a proxy) repeats finds
the request the first one recorded and says so instead of recording a second.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from bot import blocks, render
from bot.listeners.common import Deps, after_ack, correlation
from handlers import errors, parse, services
from handlers.kinds import RequestKind
from handlers.model import Actor

logger = logging.getLogger(__name__)
S = render.SLACK


def register(app: App, deps: Deps) -> None:
    def kf(
        ack: Ack,
        body: dict[str, Any],
        command: dict[str, Any],
        respond: Respond,
        context: BoltContext,
        client: WebClient,
    ) -> None:
        ack()
        after_ack(
            context,
            body,
            client,
            respond,
            lambda: handle(deps, command, respond, client, correlation(context)),
        )

    app.command("/kf")(kf)


def handle(deps: Deps, command: dict[str, Any], respond: Respond, client: WebClient, cid: str) -> None:
    actor = deps.identity.actor(str(command["user_id"]))
    text = str(command.get("text") or "")
    logger.info("/kf from %s: %s", actor.user_id, render.SLACK.esc(text[:200]))
    parsed = parse.parse_command(text, requester_email=actor.email, resolve_user=deps.identity.email_of_other)
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
    if isinstance(parsed, parse.Control):
        respond(
            text=blocks.fallback(control(deps.core, deps.backend, actor, parsed)), response_type="ephemeral"
        )
        return
    kind: RequestKind = parsed
    result = services.submit(
        deps.core, actor, kind, idempotency_key=f"slash:{command['trigger_id']}", correlation_id=cid
    )
    respond(
        text=blocks.fallback(
            render.submitted_text(
                result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=S
            )
        ),
        response_type="ephemeral",
    )


def _visible(actor: Actor, view: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """A workspace's details are for admins, its owner and its contributors."""
    if view is not None and (
        actor.is_admin
        or view.get("owner") == actor.email
        or any(g.get("user") == actor.email for g in view.get("grants") or [])
    ):
        return view
    raise errors.NotFound(f"There is no workspace `{name}` of yours.")


def control(
    core: services.Core, backend: Any, actor: Actor, command: parse.Control, style: render.Style = S
) -> str:
    """Text for a control command; shared by Slack and the shell."""
    if isinstance(command, parse.Help):
        return render.help_text(command.topic)
    if isinstance(command, parse.ListRequests):
        return render.request_list(services.list_requests(core, actor), style, admin=actor.is_admin)
    if isinstance(command, parse.Cancel):
        request = services.cancel(core, actor, command.request_id)
        return f"Cancelled `{request.id}`: {render.describe(request, style)}."
    if isinstance(command, parse.Retry):
        request = services.retry(core, actor, command.request_id)
        return f"`{request.id}` goes through apply again; progress follows in the card's thread."
    if isinstance(command, parse.WorkspaceList):
        rows = backend.workspaces(None if actor.is_admin else actor.email)
        return render.workspaces_text(rows, style, admin=actor.is_admin)
    if isinstance(command, parse.WorkspaceShow):
        view = _visible(actor, backend.workspace_view(command.name), command.name)
        return render.workspace_text(view, style)
    if isinstance(command, parse.Contributors):
        _visible(actor, backend.workspace_view(command.workspace), command.workspace)
        return render.contributors_text(command.workspace, backend.contributors(command.workspace), style)
    if isinstance(command, parse.Tokens):
        return render.tokens_text(backend.tokens(actor.user_id), style)
    raise errors.InvalidInput("That command is not available here.")
