"""The scheduled cost digest: what GPU nodes cost per workspace over a period, how much of it sat
idle, how that compares with the period before, and who wasted most.

Pure: ``provisioning`` reads the observed node time (``UsageDay`` rows, one per day and
nodegroup), ``bot`` posts the text and the chart; this module only computes and words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from handlers.naming import escape_slack_text
from handlers.plan import JSON

DIGEST_DAYS: Final = 7
"""Days a digest covers (and compares with the same number of days before)."""


@dataclass(frozen=True)
class UsageDay:
    """GPU node time one nodegroup's nodes were observed up on one UTC day (summed over nodes)."""

    day: date
    nodegroup: str
    workspace: str | None
    """None: an unattributed nodegroup (made by hand, not adopted)."""
    instance_type: str
    seconds: float
    idle_seconds: float
    usd: float
    idle_usd: float
    unpriced_seconds: float = 0.0
    """Node time of an instance type with no known price (counted in hours, not in dollars)."""


@dataclass(frozen=True)
class Period:
    """``start <= day < end`` in UTC days (the ledger's unit), and the period just before it."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def previous(self) -> Period:
        return Period(self.start - timedelta(days=self.days), self.start)


def period_before(slot: datetime, days: int = DIGEST_DAYS) -> Period:
    """The ``days`` whole UTC days before the UTC day of ``slot`` (the digest's fire time): whole
    days only, so a Monday digest and a Tuesday one compare like with like."""
    if days < 1:
        raise ValueError("a digest period is at least one day")
    end = slot.astimezone(UTC).date()
    return Period(end - timedelta(days=days), end)


@dataclass(frozen=True)
class Line:
    """One workspace, or one unattributed nodegroup, over the period."""

    label: str
    workspace: str | None
    node_hours: float
    usd: float
    idle_usd: float
    idle_hours: float
    previous_usd: float
    unpriced_hours: float

    @property
    def idle_share(self) -> float:
        """Idle part of the node time (by hours, so unpriced nodes count too)."""
        return self.idle_hours / self.node_hours if self.node_hours else 0.0

    @property
    def change(self) -> float | None:
        """Relative change of $ against the previous period; None when there was nothing before."""
        return (self.usd - self.previous_usd) / self.previous_usd if self.previous_usd > 0 else None


@dataclass(frozen=True)
class Waster:
    workspace: str | None
    nodegroup: str
    idle_hours: float
    idle_usd: float


@dataclass(frozen=True)
class BilledCost:
    """What Cost Explorer says was billed, grouped by the ``kf-chatops/workspace`` tag."""

    period: Period
    by_workspace: Mapping[str, float]
    untagged: float
    unit: str = "USD"
    estimated: bool = False
    """Cost Explorer marks the latest days as estimated until the bill settles."""


@dataclass(frozen=True)
class Digest:
    period: Period
    lines: tuple[Line, ...]
    wasters: tuple[Waster, ...]
    daily: Mapping[str, tuple[float, ...]]
    """Line label -> $ per day of the period (the chart's series, one value per day)."""
    billed: BilledCost | None = None

    @property
    def usd(self) -> float:
        return sum(line.usd for line in self.lines)

    @property
    def previous_usd(self) -> float:
        return sum(line.previous_usd for line in self.lines)

    @property
    def node_hours(self) -> float:
        return sum(line.node_hours for line in self.lines)

    @property
    def idle_usd(self) -> float:
        return sum(line.idle_usd for line in self.lines)


def _label(row: UsageDay) -> str:
    return row.workspace if row.workspace is not None else f"unattributed: {row.nodegroup}"


def build_digest(
    period: Period,
    current: Sequence[UsageDay],
    previous: Sequence[UsageDay] = (),
    billed: BilledCost | None = None,
    top: int = 3,
) -> Digest:
    """Per workspace (and per unattributed nodegroup): node-hours, $, idle share, the change
    against the previous period; the ``top`` nodegroups by idle $; $ per day for the chart.
    Rows outside the period are ignored, so a caller cannot skew the totals by passing extra."""
    cur = [r for r in current if period.start <= r.day < period.end]
    prev = [r for r in previous if period.previous.start <= r.day < period.previous.end]
    labels = sorted({_label(r) for r in cur} | {_label(r) for r in prev})
    workspaces = {_label(r): r.workspace for r in [*prev, *cur]}
    lines: list[Line] = []
    daily: dict[str, tuple[float, ...]] = {}
    for label in labels:
        mine = [r for r in cur if _label(r) == label]
        per_day = [0.0] * period.days
        for r in mine:
            per_day[(r.day - period.start).days] += r.usd
        daily[label] = tuple(round(v, 2) for v in per_day)
        lines.append(Line(
            label=label,
            workspace=workspaces[label],
            node_hours=sum(r.seconds for r in mine) / 3600,
            usd=sum(r.usd for r in mine),
            idle_usd=sum(r.idle_usd for r in mine),
            idle_hours=sum(r.idle_seconds for r in mine) / 3600,
            previous_usd=sum(r.usd for r in prev if _label(r) == label),
            unpriced_hours=sum(r.unpriced_seconds for r in mine) / 3600,
        ))
    lines.sort(key=lambda line: (-line.usd, -line.node_hours, line.label))
    idle: dict[tuple[str | None, str], list[float]] = {}
    for r in cur:
        acc = idle.setdefault((r.workspace, r.nodegroup), [0.0, 0.0])
        acc[0] += r.idle_seconds / 3600
        acc[1] += r.idle_usd
    wasters = sorted(
        (Waster(ws, ng, hours, usd) for (ws, ng), (hours, usd) in idle.items() if hours > 0),
        key=lambda w: (-w.idle_usd, -w.idle_hours, w.nodegroup),
    )[:top]
    return Digest(period, tuple(lines), tuple(wasters), daily, billed)


# -- words ---------------------------------------------------------------------------------------

TAG_NOTE = (
    "Billed cost is grouped by the `kf-chatops/workspace` cost-allocation tag. EKS nodegroup tags do "
    "not reach the EC2 instances (only a launch template's tag specifications do), so GPU nodes of "
    "a nodegroup made without such a launch template carry no tag and show as untagged; the tag "
    "must also be activated as a cost-allocation tag in the Billing console."
)


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _change(line: Line) -> str:
    if line.change is None:
        return "new" if line.usd > 0 else "-"
    arrow = "▲" if line.change > 0 else "▼" if line.change < 0 else "="
    return f"{arrow} {abs(line.change):.0%}"


def render_text(digest: Digest) -> str:
    """The digest as Slack ``mrkdwn`` (names escaped: they reach a channel)."""
    p = digest.period
    last = p.end - timedelta(days=1)
    head = (
        f"*GPU cost digest* {p.start.isoformat()} to {last.isoformat()} (UTC, {p.days} days): "
        f"{_usd(digest.usd)} for {digest.node_hours:,.1f} GPU node-hours, "
        f"{_usd(digest.idle_usd)} of it idle"
    )
    if digest.previous_usd > 0:
        delta = (digest.usd - digest.previous_usd) / digest.previous_usd
        head += f" ({'+' if delta >= 0 else ''}{delta:.0%} against the {p.days} days before)"
    out = [head]
    if not digest.lines:
        out.append("No GPU nodes were observed in this period.")
    for line in digest.lines:
        text = (
            f"• *{escape_slack_text(line.label)}*: {line.node_hours:,.1f} node-h, {_usd(line.usd)}, "
            f"idle {line.idle_share:.0%}, {_change(line)}"
        )
        if line.unpriced_hours > 0:
            text += f" (+{line.unpriced_hours:,.1f} node-h of an instance type with no known price)"
        out.append(text)
    if digest.wasters:
        out.append("*Most idle spend*")
        for i, w in enumerate(digest.wasters, 1):
            owner = escape_slack_text(w.workspace) if w.workspace is not None else "unattributed"
            out.append(
                f"{i}. `{escape_slack_text(w.nodegroup)}` ({owner}): {w.idle_hours:,.1f} idle node-h, "
                f"{_usd(w.idle_usd)}"
            )
    out.append(
        "_Observed node uptime x on-demand list price (or the configured override), not the bill._"
    )
    if digest.billed is not None:
        out += _billed(digest.billed)
    return "\n".join(out)


def _billed(billed: BilledCost) -> list[str]:
    p = billed.period
    out = [
        f"*Billed* (Cost Explorer, {p.start.isoformat()} to {(p.end - timedelta(days=1)).isoformat()}"
        f"{', estimated' if billed.estimated else ''}):"
    ]
    for ws, amount in sorted(billed.by_workspace.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"• {escape_slack_text(ws)}: {amount:,.2f} {escape_slack_text(billed.unit)}")
    out.append(f"• untagged: {billed.untagged:,.2f} {escape_slack_text(billed.unit)}")
    if not billed.by_workspace:
        out.append("_No cost carries the tag yet._")
    out.append(f"_{TAG_NOTE}_")
    return out


def chart_spec(digest: Digest) -> dict[str, JSON]:
    """What the chart subprocess draws: $ per day per line (JSON, the chart's only input)."""
    days: list[JSON] = [
        (digest.period.start + timedelta(days=i)).isoformat() for i in range(digest.period.days)
    ]
    series: dict[str, JSON] = {label: list(values) for label, values in digest.daily.items()}
    return {
        "title": f"GPU $ per day, {digest.period.start.isoformat()} to "
        f"{(digest.period.end - timedelta(days=1)).isoformat()} (UTC)",
        "days": days,
        "series": series,
    }
