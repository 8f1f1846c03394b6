"""Slack listeners: thin, registered per area, errors handled in one place.

Every listener calls ``ack()`` first (Bolt answers Slack's HTTP request at that moment; the rest
runs on Bolt's worker thread), then resolves the actor, calls one use case in
``handlers.services`` and replies. No listener catches ``Exception``: ``common.on_error`` (the
one error handler, installed as ``@app.error`` and reached after the ack through
``common.after_ack``, see there why) turns a ``KfError`` into its ``user_message`` and anything
else into "Something went wrong (ref XYZ)" with the traceback logged under that correlation id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from slack_bolt import Ack, App, BoltContext

from bot import logging as log
from bot.listeners import actions, commands, common, home, views
from bot.listeners.common import Deps, correlation, on_error, tell
from bot.team import ServedTeam

__all__ = ["Deps", "correlation", "on_error", "register", "tell"]

logger = logging.getLogger(__name__)


def register(app: App, deps: Deps, team: ServedTeam) -> None:
    """Install the correlation middleware, the one-team check (before every listener: see
    ``bot.team``), the global error handler and every listener."""
    app.middleware(common.correlation_middleware)
    app.middleware(common.team_middleware(team))
    app.error(on_error)
    commands.register(app, deps)
    actions.register(app, deps)
    views.register(app, deps)
    home.register(app, deps)  # before the catch-all below, which would take app_home_opened
    # Last, because Bolt runs only the first listener that matches. Bolt acknowledges an event
    # before its listener runs, but answers one that no listener matches with 404, which in
    # Socket Mode means no acknowledgement: Slack would redeliver it and, after repeated
    # failures, turn the app's events off.
    app.event(re.compile(".+"))(_ignore_event)
    # The same for interactions of ours no listener above takes (a shortcut, a message action, a
    # suggestion, a closed or unknown modal, a button of an old message): Bolt would answer 404,
    # which Slack shows the person as an error over HTTP and redelivers in Socket Mode.
    anything = re.compile(".*")
    app.shortcut(anything)(_ignore("a shortcut"))  # global shortcuts and message actions
    app.action(anything)(_ignore("an action"))
    app.options(anything)(_ignore("a suggestion", options=True))
    app.view(anything)(_ignore("a modal submission"))
    app.view_closed(anything)(_ignore("a closed modal"))


def _ignore_event() -> None:
    """An event no listener above handles: acknowledged and dropped."""


def _ignore(what: str, *, options: bool = False) -> Callable[[Ack, BoltContext], None]:
    """A listener for interactions no other listener handles: acknowledged (a suggestion with no
    ``options``) and dropped, one line in the log under the request's correlation id; nothing is
    read or posted."""

    def ignore(ack: Ack, context: BoltContext) -> None:
        if options:
            ack(options=[])
        else:
            ack()
        with log.bound(correlation(context)):
            logger.info("no listener handles %s; acknowledged and dropped", what)

    return ignore
