"""The drift report in Slack: weekly (``KFBOT_DRIFT_REPORT``, the cost digest's schedule syntax, on
the same sweeper) in ``KFBOT_DRIFT_CHANNEL`` or the admin channel, and ``/kf drift`` on demand.

One message per channel: ``drift_reports`` keeps its ``ts`` and the digest of what it shows, so the
next report edits it (``chat.update``) and does nothing when nothing changed; a message deleted by
someone is posted again. Each line carries its buttons (``handlers.drift``: Adopt into the record,
Restore, Clean up) whose value is the drift's key and a digest of what the line shows
(``DriftItem.value``): a click on a line whose drift changed since is refused.

**A click trusts nothing it carries.** ``DriftDesk.click`` reads the drift again, looks the key up
(``handlers.drift.resolve``: refused when it is not a drift now, not the clicker's to see, or
shows other values now than the clicked line did) and
builds what it files from the item found: Restore and Clean up are requests of the clicker through
``services.submit`` (the approval gate decides), Adopt into the record is
``services.adopt_drift`` (an admin who does not benefit; a system decision). The timer, like the
digest's, reads nothing from its row (docs/SECURITY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.models.blocks import ActionsBlock, Block, ContextBlock

import provisioning
from bot import blocks, render
from bot.cost import mentions
from bot.digest import DigestSchedule
from bot.payloads import text_at
from bot.scheduler import BotTimer
from handlers import drift, services
from handlers.drift import DriftInventory, DriftItem
from handlers.model import Actor
from handlers.plan import JSON
from handlers.ports import Clock

logger = logging.getLogger(__name__)
S = render.SLACK
DRIFT_TIMER = "drift.report"
DRIFT_REF = "drift"
MAX_ITEMS = 20
"""Lines shown with buttons in one message (Slack allows 50 blocks; each line takes two)."""
LABELS = {drift.ADOPT: "Adopt into the record", drift.RESTORE: "Restore", drift.CLEAN_UP: "Clean up"}
STYLES = {drift.ADOPT: None, drift.RESTORE: "primary", drift.CLEAN_UP: "danger"}


class DriftBackend(Protocol):
    """What the drift report uses of ``provisioning.Backend``."""

    def drift_inventory(self) -> DriftInventory: ...

    def drift_report(self, channel: str) -> provisioning.DriftReportRecord | None: ...

    def save_drift_report(
        self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON]
    ) -> None: ...

    def keep_timer(
        self, kind: str, ref: str, due_at: datetime | None, *, keep_overdue: bool = True
    ) -> None: ...


def drift_blocks(
    items: Sequence[DriftItem], notes: Sequence[str], find_user: Callable[[str], str | None]
) -> tuple[str, list[Block]]:
    def say(text: str) -> str:
        return S.message(mentions(text, find_user))

    title = (
        f"Drift: {len(items)} thing(s) differ between the cluster and the bot's record"
        if items else "No drift: the cluster matches the bot's record."
    )
    out: list[Block] = [blocks.section(f"*{say(title)}*")]
    for index, item in enumerate(items[:MAX_ITEMS]):
        out.append(blocks.section(say(item.text)))
        if item.actions:
            out.append(ActionsBlock(
                block_id=f"drift-{index}",
                elements=[blocks.button(LABELS[a], a, item.value, STYLES[a]) for a in item.actions],
            ))
    if len(items) > MAX_ITEMS:
        out.append(blocks.section(f"…and {len(items) - MAX_ITEMS} more; fix these first."))
    context = [*(f"Note: {n}" for n in notes), "Restore and Clean up file a request for approval; "
               "Adopt into the record makes the bot's record follow the cluster (admins)."]
    out.append(ContextBlock(elements=[blocks.md(say(line), 2000) for line in context[:10]]))
    return blocks.fallback(say(drift.text(items, notes))), out


class DriftDesk:
    def __init__(
        self,
        backend: DriftBackend,
        client: WebClient,
        channel: str,
        core: services.Core,
        find_user: Callable[[str], str | None],
        clock: Clock,
        schedule: DigestSchedule | None,
    ) -> None:
        self._backend, self._client, self._channel, self._core = backend, client, channel, core
        self._find_user, self._clock, self._schedule = find_user, clock, schedule

    # -- reading -------------------------------------------------------------------------------------
    def current(self) -> tuple[list[DriftItem], tuple[str, ...]]:
        inventory = self._backend.drift_inventory()
        return drift.find(inventory), inventory.notes

    def answer(self, actor: Actor) -> tuple[str, list[Block]]:
        """``/kf drift``: what the actor may see, with its buttons."""
        items, notes = self.current()
        return drift_blocks(drift.visible(items, actor, self._core.settings), notes, self._find_user)

    # -- the report ------------------------------------------------------------------------------------
    def publish(self) -> str | None:
        """Post the report, or edit the one already posted; None when nothing changed (or Slack
        failed: the next report tries again)."""
        items, notes = self.current()
        digest = drift.digest(items)
        previous = self._backend.drift_report(self._channel)
        if previous is not None and previous.ts and previous.digest == digest:
            return None
        text, blks = drift_blocks(items, notes, self._find_user)
        shown: dict[str, JSON] = {i.key: i.text for i in items}
        if previous is not None and previous.ts:
            answer = self._call("chat_update", channel=self._channel, ts=previous.ts, text=text,
                                blocks=blocks.to_dicts(blks))
            if answer is None:
                return None
            if answer.get("ok", True):
                self._backend.save_drift_report(self._channel, previous.ts, digest, shown)
                return "edited"
            # The message is gone (deleted by someone): post a new one below.
        answer = self._call(
            "chat_postMessage", channel=self._channel, text=text, blocks=blocks.to_dicts(blks)
        )
        ts = text_at(answer or {}, "ts")
        if not ts:
            return None
        self._backend.save_drift_report(self._channel, ts, digest, shown)
        return "posted"

    def _call(self, method: str, **kwargs: object) -> Mapping[str, object] | None:
        try:
            response = getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error", "?") if exc.response is not None else "?"
            logger.warning("Slack %s failed: %s", method, error)
            return {"ok": False, "error": error}
        except (SlackClientError, OSError) as exc:
            logger.warning("Slack %s failed: %s", method, type(exc).__name__)
            return None
        return dict(response.data) if isinstance(response.data, dict) else {}

    # -- the schedule ----------------------------------------------------------------------------------
    def keep_scheduled(self) -> None:
        due = None if self._schedule is None else self._schedule.next_after(self._clock.now())
        self._backend.keep_timer(DRIFT_TIMER, DRIFT_REF, due)

    def handle(self, ref: str, payload: Mapping[str, JSON]) -> None:
        """The weekly report's timer: reads nothing from its row but the ref (the channel and what
        to say are the settings' and the cluster's), publishes, moves the row to the next slot."""
        del payload
        if ref != DRIFT_REF or self._schedule is None:
            logger.error("refused a %s timer with ref %r", DRIFT_TIMER, ref[:80])
            return
        self.publish()
        self._backend.keep_timer(
            DRIFT_TIMER, DRIFT_REF, self._schedule.next_after(self._clock.now()), keep_overdue=False
        )

    # -- the buttons -----------------------------------------------------------------------------------
    def click(self, action: str, value: str, actor: Actor, key: str, cid: str = "") -> services.Submitted:
        """A report button, against the drift as it is now (see the module docstring)."""
        items, _ = self.current()
        item = drift.resolve(items, action, value, actor, self._core.settings)
        if action == drift.ADOPT:
            kind = drift.adopt_request(item, actor, self._core.settings)
            return services.adopt_drift(self._core, actor, kind, idempotency_key=key, correlation_id=cid)
        request = drift.restore_request(item) if action == drift.RESTORE else drift.cleanup_request(item)
        return services.submit(self._core, actor, request, idempotency_key=key, correlation_id=cid)


def install_drift(desk: DriftDesk | None, schedule: str) -> dict[str, BotTimer]:
    """The report's timer handler for the sweeper, its pending row kept at the schedule's next time;
    ``KFBOT_DRIFT_REPORT=off``: no pending row (a click or ``/kf drift`` still works)."""
    if desk is None:
        return {}
    desk.keep_scheduled()
    return {DRIFT_TIMER: desk.handle} if schedule else {}
