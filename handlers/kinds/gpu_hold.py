"""``gpu.hold``: keep or snooze a reported GPU item, so the idle report and auto-stop pass it by.

``/kf gpu snooze WORKSPACE|WORKSPACE/NOTEBOOK 1d`` and the report's "Keep 4h" and "Snooze until
tomorrow" buttons. The target is written as the idle report keys it (``workspace:<name>``,
``nodegroup:<name>``, ``notebook:<namespace>/<name>``); it must belong to the workspace named. A
hold changes nothing in the cluster, so the plan has no step: on success the engine records a
``gpu_holds`` row (``PutHold``) in the transaction that records the success. A hold is bounded:
at most ``MAX_HOLD`` (7 days) from when it is recorded, whatever was asked, so nothing is hidden
from the report for good. The workspace's owner or an admin holds at once; anyone else is refused."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import ClassVar

from handlers import errors, naming, units
from handlers.kinds.base import (
    Applied,
    Parsed,
    PlanContext,
    PolicyRow,
    PutHold,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    require_workspace,
    short_name,
    workspace_people,
)
from handlers.kinds.gpu_common import (
    bot_nodegroups,
    owner_or_admin_applies,
    owner_or_admin_may_ask,
    validate_notebook_name,
)
from handlers.plan import Plan
from handlers.ports import Facts

MAX_HOLD = timedelta(days=7)
KEEP = timedelta(hours=4)
"""The report's "Keep 4h"."""
SNOOZE_HOUR = time(9, 0)
"""The report's "Snooze until tomorrow": 09:00 the next day, in ``KFBOT_TIMEZONE``."""
USAGE = "/kf gpu snooze WORKSPACE|WORKSPACE/NOTEBOOK DURATION"
"""(at most 7d: ``MAX_HOLD``)"""
_TARGET = re.compile(r"(workspace|nodegroup|notebook):(.{1,200})")


def workspace_target(workspace: str) -> str:
    return f"workspace:{workspace}"


def nodegroup_target(nodegroup: str) -> str:
    return f"nodegroup:{nodegroup}"


def notebook_target(namespace: str, notebook: str) -> str:
    return f"notebook:{namespace}/{notebook}"


def validate_target(target: str) -> tuple[str, str]:
    """(kind, rest) of a hold target; ``InvalidInput`` for anything that is not one."""
    m = _TARGET.fullmatch(target) if isinstance(target, str) else None
    if m is None:
        raise errors.InvalidInput(
            f"{naming.show_value(str(target))} is not something the bot can keep or snooze "
            "(a workspace, a nodegroup or a notebook).",
            field="target",
        )
    what, rest = m.group(1), m.group(2)
    if what == "workspace":
        naming.validate_workspace_name(rest)
    elif what == "nodegroup":
        naming.validate_nodegroup_name(rest, field="target")
    else:
        namespace, slash, name = rest.partition("/")
        if not slash:
            raise errors.InvalidInput(f"{naming.show_value(target)} names no notebook.", field="target")
        naming.validate_dns1123_label(namespace, "namespace", field="target")
        validate_notebook_name(name)
    return what, rest


def parse_until(value: str) -> datetime:
    """An ISO 8601 time with its offset (a time without one is refused: whose 09:00?)."""
    try:
        at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        at = None
    if at is None or at.tzinfo is None or len(value) > 40:
        raise errors.InvalidInput(
            f"{naming.show_value(str(value))} is not a time with its offset (ISO 8601).", field="until"
        )
    return at.astimezone(UTC)


def tomorrow_morning(now: datetime, zone: tzinfo) -> datetime:
    """09:00 tomorrow in ``zone`` (what "Snooze until tomorrow" means where the team is), in UTC."""
    local = now.astimezone(zone)
    morning = datetime.combine(local.date() + timedelta(days=1), SNOOZE_HOUR, tzinfo=zone)
    return morning.astimezone(UTC)


def _workspace(kind: RequestKind) -> str:
    assert isinstance(kind, GpuHold)
    return kind.workspace


def _build(p: Parsed) -> GpuHold:
    what, duration = p.positional
    workspace, slash, notebook = what.partition("/")
    naming.validate_workspace_name(workspace)
    if slash:
        namespace = naming.render_names(p.settings.naming, workspace, None).namespace
        target = notebook_target(namespace, validate_notebook_name(notebook))
    else:
        target = workspace_target(workspace)
    held = units.parse_duration(duration, maximum=MAX_HOLD, what="snooze", field="duration")
    return GpuHold(workspace, target, duration=held)


@dataclass(frozen=True)
class GpuHold:
    KIND: ClassVar[str] = "gpu.hold"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax("gpu snooze", ("WORKSPACE|WORKSPACE/NOTEBOOK", "DURATION"), {}, _build)
    POLICY: ClassVar[PolicyRow] = PolicyRow(
        auto_apply=owner_or_admin_applies(
            "the workspace's owner or an admin keeps its GPUs a while", _workspace
        ),
        may_request=owner_or_admin_may_ask("keep or snooze its GPUs", _workspace),
    )
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    workspace: str
    target: str
    until: str | None = None
    """ISO 8601 with an offset (the "Snooze until tomorrow" button)."""
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        what, rest = validate_target(self.target)
        if what == "workspace" and rest != self.workspace:
            raise errors.InvalidInput(
                f"The target {naming.show_value(self.target)} is another workspace.", field="target"
            )
        if (self.until is None) == (self.duration is None):
            raise errors.InvalidInput(
                "Say how long: a duration or an end time.", usage=USAGE, field="duration"
            )
        if self.until is not None:
            object.__setattr__(self, "until", parse_until(self.until).isoformat())
        if self.duration is not None and not timedelta(minutes=1) <= self.duration <= MAX_HOLD:
            raise errors.InvalidInput("A hold lasts from 1m to 7d.", usage=USAGE, field="duration")

    def subject(self) -> str:
        return f"hold:{self.target}"

    def describe(self) -> str:
        how = f"for {units.format_duration(self.duration)}" if self.duration else f"until {self.until}"
        return f"keep `{self.target}` of `{self.workspace}` out of the idle report {how}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        how = f"for {units.format_duration(self.duration)}" if self.duration else f"until {self.until}"
        who = short_name(requester)
        return f"Keep {self.target} of {self.workspace} out of the idle report {how}, for {who}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.workspace)  # their GPUs stay up

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        what, rest = validate_target(self.target)
        if what == "nodegroup" and rest not in {str(p["name"]) for _, p in bot_nodegroups(ws)}:
            raise errors.InvalidInput(
                f"Nodegroup `{rest}` is not one kf-chatops made for `{self.workspace}`.", field="target"
            )
        if what == "notebook" and rest.partition("/")[0] != ws.namespace:
            raise errors.InvalidInput(
                f"Notebook {naming.show_value(rest)} is not in `{ws.namespace}`, the namespace of "
                f"`{self.workspace}`.",
                field="target",
            )
        how = f"for {units.format_duration(self.duration)}" if self.duration else f"until {self.until}"
        return Plan.of(
            [],
            [
                f"Nothing changes in the cluster: `{self.target}` is left out of the idle report and "
                f"of auto-stop {how} (a hold lasts at most 7 days from now; the GPUs keep costing "
                "money meanwhile)."
            ],
        )

    def on_success(self, done: Applied) -> Success:
        latest = done.at + MAX_HOLD
        wanted = parse_until(self.until) if self.until else done.at + (self.duration or timedelta(0))
        return Success(
            changes=(PutHold(self.target, min(wanted, latest), done.requester_id, done.request_id),)
        )
