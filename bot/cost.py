"""The idle-GPU report in Slack: one message per channel, posted only when something is idle, edited
by the next scans, with a thread note when the set of idle items changed and a last warning before
an auto-stop; when nothing is idle any more the message says so.

``CostReporter.scan_once`` is the scheduler's job (leader only): ``Backend.observe_idle`` decides
and persists, ``handlers.cost.autostop`` plans the timers, ``handlers.cost.report`` says what the
message holds; this module only renders and delivers it. A Slack failure is logged and retried by
the next scan (the stored digest is only moved once Slack took the message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.models.blocks import ActionsBlock, Block, ContextBlock

import provisioning
from bot import blocks, render
from bot.payloads import text_at
from handlers import naming
from handlers.cost import autostop, report
from handlers.cost.idle import IdleItem
from handlers.plan import JSON
from handlers.ports import Clock, UnitOfWorkFactory
from handlers.settings import CostSettings

logger = logging.getLogger(__name__)
S = render.SLACK
MAX_ENTRIES = 20
"""Items shown with buttons in one message (Slack allows 50 blocks; each item takes two)."""


class CostBackend(Protocol):
    """What the reporter uses of ``provisioning.Backend``."""

    def try_lead(self) -> bool: ...

    def observe_idle(self) -> provisioning.IdleScan: ...

    def cost_report(self, channel: str) -> provisioning.CostReportRecord | None: ...

    def cost_reports(self) -> list[provisioning.CostReportRecord]: ...

    def save_cost_report(
        self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON]
    ) -> None: ...

    def mark_cost_signals(
        self, keys: Sequence[str], *, reported: datetime | None = None, warned: datetime | None = None
    ) -> None: ...


@dataclass(frozen=True)
class ScanOutcome:
    """What one scan did in Slack (tests and logs)."""

    led: bool = True
    posted: tuple[str, ...] = ()
    edited: tuple[str, ...] = ()
    threaded: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()
    warned: tuple[str, ...] = ()


def mentions(text: str, find_user: Callable[[str], str | None]) -> str:
    """Core text whose person placeholders name emails, with those people as Slack user ids
    where Slack knows the email (``S.message`` renders those as mentions, the rest as text)."""
    parts = naming.PERSON.split(text)
    out = []
    for index, part in enumerate(parts):
        if index % 2:
            found = find_user(part) if "@" in part else None
            out.append(naming.person(found if found and naming.is_person_id(found) else part))
        else:
            out.append(part)
    return "".join(out)


def report_blocks(rep: report.Report, find_user: Callable[[str], str | None]) -> tuple[str, list[Block]]:
    def say(text: str) -> str:
        return S.message(mentions(text, find_user))

    out: list[Block] = [blocks.section(f"*{say(rep.title)}*")]
    shown = 0
    for s_index, sec in enumerate(rep.sections):
        out.append(blocks.section(f"*{say(sec.heading)}*"))
        for e_index, entry in enumerate(sec.entries):
            if shown >= MAX_ENTRIES:
                break
            shown += 1
            out.append(blocks.section(say(entry.text)))
            if entry.buttons:
                out.append(
                    ActionsBlock(
                        block_id=f"cost-{s_index}-{e_index}",
                        elements=[
                            blocks.button(b.label, b.action_id, b.value, b.style) for b in entry.buttons
                        ],
                    )
                )
    total = sum(len(s.entries) for s in rep.sections)
    if total > shown:
        out.append(blocks.section(f"…and {total - shown} more; `/kf gpu status` lists them all."))
    context = [*(f"Note: {n}" for n in rep.notes), rep.footer]
    out.append(ContextBlock(elements=[blocks.md(say(line), 2000) for line in context[:10]]))
    return blocks.fallback(say(rep.text())), out


class CostReporter:
    def __init__(
        self,
        client: WebClient,
        backend: CostBackend,
        uow: UnitOfWorkFactory,
        clock: Clock,
        settings: CostSettings,
        admin_channel: str,
        find_user: Callable[[str], str | None],
    ) -> None:
        self._client, self._backend, self._uow, self._clock = client, backend, uow, clock
        self._settings, self._admin_channel, self._find_user = settings, admin_channel, find_user

    def channel_for(self, workspace: str | None) -> str:
        default = self._settings.cost_channel or self._admin_channel
        if workspace is None:
            return default
        return self._settings.workspace_channels.get(workspace) or default

    def scan_once(self) -> ScanOutcome:
        """The scheduler's job: only the leader scans (two replicas -> one report)."""
        if not self._backend.try_lead():
            return ScanOutcome(led=False)
        return self.scan()

    def scan(self) -> ScanOutcome:
        scan = self._backend.observe_idle()
        now = scan.taken_at
        obs = scan.observation
        stops = autostop.plan(obs.items, scan.pending_stops, scan.warned, now, self._settings)
        autostop.apply(self._uow, stops, now, self._settings)
        by_channel: dict[str, list[IdleItem]] = {}
        for item in obs.items:
            by_channel.setdefault(self.channel_for(item.workspace), []).append(item)
        known = {r.channel for r in self._backend.cost_reports()}
        posted: list[str] = []
        edited: list[str] = []
        threaded: list[str] = []
        cleared: list[str] = []
        warned: list[str] = []
        for channel in sorted(set(by_channel) | known):
            items = by_channel.get(channel, [])
            did = self._publish(channel, items, obs.notes, scan.owners, stops.due or {}, now)
            if did == "posted":
                posted.append(channel)
            elif did in ("edited", "edited+threaded"):
                edited.append(channel)
                if did == "edited+threaded":
                    threaded.append(channel)
            elif did == "cleared":
                cleared.append(channel)
            if items and did:
                keys = [k for i in items for k in i.signals]
                self._backend.mark_cost_signals(keys, reported=now)
        for item, due_at in stops.warn:
            if self._warn(item, due_at):
                warned.append(item.key)
        return ScanOutcome(True, tuple(posted), tuple(edited), tuple(threaded), tuple(cleared), tuple(warned))

    # -- delivery ------------------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: object) -> Mapping[str, object] | None:
        try:
            response = getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error", "?") if exc.response is not None else "?"
            logger.warning("Slack %s failed: %s", method, error, extra={"slack_method": method})
            return {"ok": False, "error": error}
        except (SlackClientError, OSError) as exc:
            logger.warning("Slack %s failed: %s", method, type(exc).__name__, extra={"slack_method": method})
            return None
        return dict(response.data) if isinstance(response.data, dict) else {}

    def _publish(
        self,
        channel: str,
        items: Sequence[IdleItem],
        notes: Sequence[str],
        owners: Mapping[str, str],
        due: Mapping[str, datetime],
        now: datetime,
    ) -> str | None:
        previous = self._backend.cost_report(channel)
        live = previous is not None and previous.ts is not None and bool(previous.items)
        if not items:
            if not live or previous is None or previous.ts is None:
                return None
            text = report.all_clear(now)
            answer = self._call(
                "chat_update", channel=channel, ts=previous.ts, text=S.message(text), blocks=[]
            )
            if answer is None:
                return None  # Slack unreachable: the next scan tries again
            self._backend.save_cost_report(channel, previous.ts, "", {})
            return "cleared"
        rep = report.build(items, owners, notes, now, auto_stops=due)
        digest = rep.digest()
        if live and previous is not None and previous.digest == digest:
            return None
        text, blks = report_blocks(rep, self._find_user)
        if live and previous is not None and previous.ts is not None:
            answer = self._call(
                "chat_update", channel=channel, ts=previous.ts, text=text, blocks=blocks.to_dicts(blks)
            )
            if answer is None:
                return None  # Slack unreachable: the next scan tries again
            if answer.get("ok", True):
                self._backend.save_cost_report(channel, previous.ts, digest, rep.items)
                note = report.changes(previous.items, rep.items)
                if note is None:
                    return "edited"
                self._call("chat_postMessage", channel=channel, thread_ts=previous.ts, text=S.message(note))
                return "edited+threaded"
            # The message is gone (deleted by someone): post a new one below.
        answer = self._call("chat_postMessage", channel=channel, text=text, blocks=blocks.to_dicts(blks))
        ts = text_at(answer or {}, "ts")
        if not ts:
            return None
        self._backend.save_cost_report(channel, ts, digest, rep.items)
        return "posted"

    def _warn(self, item: IdleItem, due_at: datetime) -> bool:
        channel = self.channel_for(item.workspace)
        previous = self._backend.cost_report(channel)
        if previous is None or previous.ts is None or item.key not in previous.items:
            return False  # not reported (Slack failed): no warning, so the timer will not act
        answer = self._call(
            "chat_postMessage",
            channel=channel,
            thread_ts=previous.ts,
            text=S.message(report.warning(item, due_at)),
        )
        if answer is None or not text_at(answer, "ts"):
            return False
        self._backend.mark_cost_signals(list(item.signals), warned=self._clock.now())
        return True
