"""Opt-in auto-stop (``KFBOT_AUTO_STOP_AFTER``): what the report warned about is stopped or scaled
to 0 after the grace period, when nobody answered.

* When an *established* idle item of a workspace is first reported, the scan schedules the timer
  ``cost.auto_stop`` (ref = the item's target) due ``auto_stop_after`` later, and writes the
  ``timer.scheduled`` audit row that ``handlers.services._vouched_for`` checks (origin
  ``cost:<target>``): a timer row inserted by hand is refused.
* The scan before it fires posts one last warning in the report's thread (``warned_at``).
* A scan that no longer sees the item idle, established and unheld cancels the timer.
* When due, ``_handle`` re-checks through ``Facts.idle_item`` (the last scans' rows) that the item
  is still idle, established, not held, warned, seen recently and idle since the same moment;
  only then does it file ``notebook.stop`` or ``gpu.scale`` (nodes 0) as the bot's own request,
  auto-applied under ``system:cost.auto_stop``. Those kinds re-check the cluster when they apply:
  ``gpu.scale`` refuses if a GPU pod appeared, and the bot's ``notebook.stop`` (``idle_for`` set)
  starts with ``kubeflow.notebook.idle``, which reads the notebook server again and refuses unless
  it has been idle for the idle period, so neither a forged database row nor work resumed since
  the last scan can stop a busy notebook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from handlers import kinds, units
from handlers.cost.idle import IdleItem
from handlers.kinds.base import SystemRequest, TimerKind, TimerResult
from handlers.model import SYSTEM, Event, EventType
from handlers.plan import JSON
from handlers.ports import Facts, UnitOfWorkFactory
from handlers.settings import CostSettings

log = logging.getLogger(__name__)

AUTO_STOP = "cost.auto_stop"
STOP_KIND = "notebook.stop"
SCALE_KIND = "gpu.scale"


def origin(target: str) -> str:
    """The audit trail the timer's ``timer.scheduled`` rows are written under."""
    return f"cost:{target}"


def eligible(item: IdleItem) -> bool:
    return item.established and item.stoppable and item.target is not None


@dataclass(frozen=True)
class AutoStopPlan:
    schedule: tuple[tuple[IdleItem, datetime], ...] = ()
    cancel: tuple[str, ...] = ()
    warn: tuple[tuple[IdleItem, datetime], ...] = ()
    due: Mapping[str, datetime] | None = None
    """Item key -> when its auto-stop fires (for the report's text)."""


def plan(
    items: Sequence[IdleItem],
    pending: Mapping[str, datetime],
    warned: frozenset[str],
    now: datetime,
    settings: CostSettings,
) -> AutoStopPlan:
    """``items``: reported now (idle long enough, not held); ``pending``: target -> due of the
    pending auto-stop timers the caller knows of; ``warned``: item keys already warned about."""
    after = settings.auto_stop_after
    if after is None:
        return AutoStopPlan(cancel=tuple(sorted(pending)), due={})
    wanted = {i.key: i for i in items if eligible(i)}
    cancel = tuple(sorted(t for t in pending if t not in wanted))
    schedule = tuple((i, now + after) for k, i in sorted(wanted.items()) if k not in pending)
    due = {**{k: d for k, d in pending.items() if k in wanted}, **{i.key: d for i, d in schedule}}
    warn = tuple(
        (wanted[k], d)
        for k, d in sorted(due.items())
        if k not in warned and d - now <= settings.scan_interval
    )
    return AutoStopPlan(schedule, cancel, warn, due)


def payload(item: IdleItem, due_at: datetime, settings: CostSettings) -> dict[str, JSON]:
    assert item.target is not None and item.workspace is not None  # eligible() holds
    return {
        "request_id": origin(item.target),
        "workspace": item.workspace,
        "target": item.target,
        "since": item.since.isoformat(),
        # The timer acts only if a scan saw the item idle this recently (the scans may stop).
        "seen_after": (due_at - 2 * settings.scan_interval).isoformat(),
        # What a notebook's stop re-checks on its server when it applies (its guard step).
        "idle_for": units.format_duration(settings.idle_after),
    }


def apply(uow: UnitOfWorkFactory, result: AutoStopPlan, now: datetime, settings: CostSettings) -> None:
    """Schedule and cancel the timers of ``result`` with their audit rows, in one transaction."""
    if not result.schedule and not result.cancel:
        return
    with uow() as tx:
        for target in result.cancel:
            tx.timers.cancel(AUTO_STOP, target)
            tx.audit.append(
                [
                    Event(
                        EventType.TIMER_FIRED,
                        origin(target),
                        now,
                        SYSTEM.user_id,
                        {
                            "timer": AUTO_STOP,
                            "ref": target,
                            "cancelled": "no longer idle, established and unheld",
                        },
                    )
                ]
            )
        for item, due_at in result.schedule:
            assert item.target is not None
            body = payload(item, due_at, settings)
            tx.timers.schedule(AUTO_STOP, item.target, due_at, body)
            vouch: dict[str, JSON] = {"timer": AUTO_STOP, "ref": item.target, "payload": body}
            tx.audit.append(
                [Event(EventType.TIMER_SCHEDULED, origin(item.target), now, SYSTEM.user_id, vouch)]
            )
        tx.commit()


def _handle(ref: str, body: Mapping[str, JSON], facts: Facts) -> TimerResult:
    seen = facts.idle_item(ref)
    workspace = body.get("workspace")
    since, seen_after = body.get("since"), body.get("seen_after")
    if (
        seen is None
        or not isinstance(workspace, str)
        or not isinstance(since, str)
        or not isinstance(seen_after, str)
    ):
        return None
    if seen.held or not seen.established or not seen.warned or seen.workspace != workspace:
        return None
    try:
        started, fresh_after = datetime.fromisoformat(since), datetime.fromisoformat(seen_after)
    except ValueError:
        return None
    if seen.since != started or seen.last_seen < fresh_after:
        return None  # busy in between (a new idle stretch), or the scans stopped seeing it
    args: dict[str, JSON]
    if ref.startswith("notebook:"):
        namespace, _, name = ref.removeprefix("notebook:").partition("/")
        owner = facts.workspace(workspace)
        if owner is None or namespace != owner.namespace:
            return None  # a notebook elsewhere is not the workspace's: never stop its namesake
        idle_for = body.get("idle_for")
        if not isinstance(idle_for, str):
            return None  # without the guard's idle period the stop would trust the scan alone
        kind_name, args = STOP_KIND, {"workspace": workspace, "notebook": name, "idle_for": idle_for}
    elif ref.startswith("nodegroup:"):
        kind_name, args = SCALE_KIND, {"workspace": workspace, "nodes": 0}
    else:
        return None
    if kind_name not in kinds.KINDS:
        log.error("auto-stop of %s skipped: the request kind %s is not installed", ref, kind_name)
        return None
    return SystemRequest(kinds.from_args(kind_name, args), key=f"{AUTO_STOP}:{ref}:{since}")


TIMER = TimerKind(AUTO_STOP, "the idle GPU was not kept within the auto-stop grace period", _handle)
TIMERS: Mapping[str, TimerKind] = {TIMER.name: TIMER}
