"""Slack listeners: thin, registered per area, errors handled in one place.

Every listener calls ``ack()`` first (Bolt answers Slack's HTTP request at that moment; the rest
runs on Bolt's worker thread), then resolves the actor, calls one use case in
``handlers.services`` and replies. No listener catches ``Exception``: ``common.on_error`` (the
one error handler, installed as ``@app.error`` and reached after the ack through
``common.after_ack``, see there why) turns a ``KfError`` into its ``user_message`` and anything
else into "Something went wrong (ref XYZ)" with the traceback logged under that correlation id.
"""

from __future__ import annotations

import re

from slack_bolt import App

from bot.listeners import actions, commands, common, home, views
from bot.listeners.common import Deps, correlation, on_error, tell
from bot.team import ServedTeam

__all__ = ["Deps", "correlation", "on_error", "register", "tell"]


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


def _ignore_event() -> None:
    """An event no listener above handles: acknowledged and dropped."""
