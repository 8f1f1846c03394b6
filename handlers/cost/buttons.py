"""The idle report's buttons, read back: a click is the same request its command would file.

Each button's ``value`` is JSON ``{"workspace": ..., "target": ...}`` (the target as the report keys
it: ``nodegroup:<name>``, ``notebook:<namespace>/<name>``, ``workspace:<name>``). A value comes back
from Slack as the clicker's client sent it, so it is untrusted input like a typed command: it must
be a JSON object with exactly those two string keys, each read by the kinds' own validators, and
the target must belong to the workspace (the registry says which namespace and nodegroups are the
workspace's). Anything else is ``InvalidInput`` with a clear message, and nothing is recorded.

The request is then filed by the edge through ``services.submit`` as the clicking user, so the
kind's policy row decides who may ask and what applies at once, exactly as for the command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from handlers import errors, naming
from handlers.kinds import GpuHold, GpuScale, NotebookStop, RequestKind
from handlers.kinds.gpu_common import bot_nodegroups
from handlers.kinds.gpu_hold import KEEP, tomorrow_morning, validate_target
from handlers.ports import Facts
from handlers.settings import CoreSettings

STOP_NOTEBOOK: Final = "cost_stop_notebook"
SCALE_DOWN: Final = "cost_scale_down"
KEEP_4H: Final = "cost_keep"
SNOOZE: Final = "cost_snooze"
ACTIONS: Final = (STOP_NOTEBOOK, SCALE_DOWN, KEEP_4H, SNOOZE)
MAX_VALUE = 2000
"""Slack caps a button's value at 2000 characters; anything longer did not come from our button."""


def button_value(workspace: str, target: str) -> str:
    """The value the report puts on a button (what ``request_for`` reads back)."""
    return json.dumps({"workspace": workspace, "target": target}, separators=(",", ":"), sort_keys=True)


def _refused(why: str) -> errors.InvalidInput:
    return errors.InvalidInput(f"This button's value is not one the bot made ({why}); nothing was done.")


def _read(value: str) -> tuple[str, str]:
    if not isinstance(value, str) or len(value) > MAX_VALUE:
        raise _refused("too long")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        raise _refused("not JSON") from None
    if not isinstance(data, Mapping) or set(data) != {"workspace", "target"}:
        raise _refused("it must hold exactly a workspace and a target")
    workspace, target = data["workspace"], data["target"]
    if not isinstance(workspace, str) or not isinstance(target, str):
        raise _refused("the workspace and the target must be text")
    naming.validate_workspace_name(workspace)
    validate_target(target)
    return workspace, target


def _zone(settings: CoreSettings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.cost.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        # Settings are checked at start-up; a zone that vanished since (tzdata) falls back to UTC.
        return ZoneInfo("UTC")


def request_for(
    action_id: str, value: str, *, now: datetime, settings: CoreSettings, facts: Facts
) -> RequestKind:
    """The request a click on report button ``action_id`` with ``value`` files."""
    if action_id not in ACTIONS:
        raise errors.InvalidInput(f"Unknown button {naming.show_value(action_id)}; nothing was done.")
    workspace, target = _read(value)
    what, rest = validate_target(target)
    ws = facts.workspace(workspace)
    if ws is None:
        raise errors.NotFound(f"There is no workspace `{workspace}` any more; nothing was done.")
    if what == "workspace" and rest != workspace:
        raise _refused("the target is another workspace")
    if what == "notebook" and rest.partition("/")[0] != ws.namespace:
        raise _refused(f"the notebook is not in `{ws.namespace}`, the namespace of `{workspace}`")
    if what == "nodegroup" and rest not in {str(p["name"]) for _, p in bot_nodegroups(ws)}:
        raise _refused(f"nodegroup `{rest}` is not one kf-chatops made for `{workspace}`")
    if action_id == STOP_NOTEBOOK:
        if what != "notebook":
            raise _refused("Stop notebook needs a notebook")
        # A report can be minutes old: the click stops the notebook only if it is still idle when
        # the stop applies (the same guard as auto-stop's); `/kf gpu stop` stops it regardless.
        return NotebookStop(workspace, rest.partition("/")[2], idle_for=settings.cost.idle_after)
    if action_id == SCALE_DOWN:
        if what == "notebook":
            raise _refused("Scale to 0 needs a nodegroup or a workspace")
        return GpuScale(workspace, 0)
    if action_id == KEEP_4H:
        return GpuHold(workspace, target, duration=KEEP)
    return GpuHold(workspace, target, until=tomorrow_morning(now, _zone(settings)).isoformat())
