"""What an idle report says, as data: sections per workspace (owner as a ``naming.person``
placeholder), one entry per idle item with its buttons, notes on degraded signals, and the short
"what changed" note between two reports. Pure; ``bot/cost.py`` renders it for Slack (or the shell).

Texts are neutral (the edge escapes the whole text; the cluster's names arrive as code spans in
``IdleItem.what``, so Slack neither formats nor links them); times are UTC, dollars are the
on-demand list price and say so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from handlers import naming
from handlers.cost import buttons as buttons_in
from handlers.cost.idle import PRICE_BASIS, IdleItem
from handlers.plan import JSON

STOP_NOTEBOOK = buttons_in.STOP_NOTEBOOK
SCALE_DOWN = buttons_in.SCALE_DOWN
KEEP = buttons_in.KEEP_4H
SNOOZE = buttons_in.SNOOZE
"""The report's Block Kit action ids; ``handlers.cost.buttons`` reads the clicks back."""


@dataclass(frozen=True)
class ReportButton:
    action_id: str
    label: str
    value: str
    """JSON ``{"workspace": ..., "target": ...}``."""
    style: str | None = None


@dataclass(frozen=True)
class ReportEntry:
    key: str
    text: str
    buttons: tuple[ReportButton, ...]


@dataclass(frozen=True)
class ReportSection:
    workspace: str | None
    heading: str
    entries: tuple[ReportEntry, ...]


@dataclass(frozen=True)
class Report:
    title: str
    sections: tuple[ReportSection, ...]
    notes: tuple[str, ...]
    footer: str
    items: Mapping[str, JSON]
    """Item key -> a short summary (what, workspace): stored with the message, compared by
    ``changes`` with the next report."""
    fingerprint: str = ""

    @property
    def empty(self) -> bool:
        return not self.sections

    def text(self) -> str:
        """The whole report as neutral text (Slack's fallback, the shell)."""
        lines = [self.title]
        for section in self.sections:
            lines += ["", section.heading]
            lines += [f"• {e.text}" for e in section.entries]
        if self.notes:
            lines += ["", *(f"Note: {n}" for n in self.notes)]
        lines += ["", self.footer]
        return "\n".join(lines)

    def digest(self) -> str:
        """Of what the report says, not of the figures that grow with every scan (the time and
        dollars idle so far): a report whose items, rates and buttons did not change is left
        alone, so a quiet channel sees no edit every scan interval."""
        return self.fingerprint


def money(usd: float | None) -> str:
    if usd is None:
        return "price unknown"
    return f"${usd:,.2f}" if usd < 100 else f"${usd:,.0f}"


def when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def idle_for(now: datetime, since: datetime) -> str:
    minutes = max(int((now - since).total_seconds() // 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins:02d}m" if hours else f"{mins}m"


def buttons(item: IdleItem) -> tuple[ReportButton, ...]:
    """A workspace's notebook or nodegroup gets Stop/Scale to 0, Keep 4h, Snooze until tomorrow;
    an unattributed item or a non-notebook pod none (nothing the bot may file for it)."""
    target = item.target
    if item.workspace is None or target is None:
        return ()
    value = buttons_in.button_value(item.workspace, target)
    first = (
        ReportButton(STOP_NOTEBOOK, "Stop notebook", value, "danger")
        if item.kind == "notebook"
        else ReportButton(SCALE_DOWN, "Scale to 0", value, "danger")
    )
    return (first, ReportButton(KEEP, "Keep 4h", value), ReportButton(SNOOZE, "Snooze until tomorrow", value))


def entry_text(
    item: IdleItem, now: datetime, auto_stop_at: datetime | None = None, *, growing: bool = True
) -> str:
    """``growing=False``: without the figures that grow by themselves (for the digest)."""
    gpus = f"{item.gpus} GPU" + ("s" if item.gpus != 1 else "")
    duration = f"{idle_for(now, item.since)}, " if growing else ""
    text = f"{item.what} ({gpus}): idle since {when(item.since)} ({duration}{item.reason}); "
    text += f"{money(item.hourly_usd)}/hour now"
    if growing:
        text += f", {money(item.spent_usd)} spent idle so far"
    if not item.established:
        text += "; not certain enough to stop automatically"
    elif auto_stop_at is not None:
        verb = "stopped" if item.kind == "notebook" else "scaled to 0"
        text += f"; will be {verb} automatically at {when(auto_stop_at)} unless someone keeps it"
    return text


def build(
    items: Sequence[IdleItem],
    owners: Mapping[str, str],
    notes: Sequence[str],
    now: datetime,
    *,
    auto_stops: Mapping[str, datetime] | None = None,
) -> Report:
    """The report for ``items`` (already filtered: idle long enough, not held). ``owners``:
    workspace -> owner's user id (email); ``auto_stops``: item key -> when auto-stop fires."""
    stops = auto_stops or {}
    by_ws: dict[str | None, list[IdleItem]] = {}
    for item in items:
        by_ws.setdefault(item.workspace, []).append(item)
    sections = []
    for ws in sorted(by_ws, key=lambda w: (w is None, w or "")):
        group = sorted(by_ws[ws], key=lambda i: i.key)
        if ws is None:
            heading = "Unattributed (no workspace of the bot's):"
        else:
            owner = owners.get(ws)
            who = f" (owner {naming.person(owner)})" if owner and naming.is_person_id(owner) else ""
            heading = f"Workspace {ws}{who}:"
        entries = tuple(ReportEntry(i.key, entry_text(i, now, stops.get(i.key)), buttons(i)) for i in group)
        sections.append(ReportSection(ws, heading, entries))
    hourly = sum(i.hourly_usd or 0.0 for i in items)
    spent = sum(i.spent_usd or 0.0 for i in items)
    count = len(items)
    plural = "s" if count != 1 else ""
    title = f"Idle GPUs: {count} item{plural}, {money(hourly)}/hour, {money(spent)} spent idle so far"
    footer = (
        f"Prices: {PRICE_BASIS} (USD). Figures as of {when(now)}; the scans edit this message when "
        "what is idle changes."
    )
    summary: dict[str, JSON] = {i.key: {"what": i.what, "workspace": i.workspace} for i in items}
    stable = [
        [s.heading for s in sections],
        [entry_text(i, now, stops.get(i.key), growing=False) for i in sorted(items, key=lambda i: i.key)],
        [[b.action_id, b.value] for s in sections for e in s.entries for b in e.buttons],
        list(notes),
    ]
    fingerprint = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    return Report(title, tuple(sections), tuple(notes), footer, summary, fingerprint)


def all_clear(now: datetime) -> str:
    return f"Nothing is idle any more (checked {when(now)})."


def changes(previous: Mapping[str, JSON], current: Mapping[str, JSON]) -> str | None:
    """A short thread note when the set of idle items changed; None when it did not."""
    new = [k for k in current if k not in previous]
    gone = [k for k in previous if k not in current]
    if not new and not gone:
        return None

    def what(items: Mapping[str, JSON], key: str) -> str:
        entry = items.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("what"), str):
            return str(entry["what"])
        return key

    parts = []
    if new:
        parts.append("Newly idle: " + "; ".join(what(current, k) for k in sorted(new)) + ".")
    if gone:
        parts.append("No longer reported: " + "; ".join(what(previous, k) for k in sorted(gone)) + ".")
    return " ".join(parts)


def warning(item: IdleItem, at: datetime) -> str:
    """The last warning, threaded under the report, before auto-stop acts."""
    verb = "stop" if item.kind == "notebook" else "scale to 0"
    return (
        f"Last warning: kf-chatops will {verb} {item.what} at {when(at)} (idle since {when(item.since)}). "
        "Press Keep or Snooze on the report to prevent it."
    )
