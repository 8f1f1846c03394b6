"""The scheduled cost digest: when it fires (``KFBOT_COST_DIGEST`` in ``KFBOT_TIMEZONE``), and
posting it (text, then the chart in its thread).

The next fire time is one row of the timers table (kind ``cost.digest``, ref ``digest``), swept
by the leader like every timer, so two replicas on one PostgreSQL post one digest and a restart
neither skips nor doubles it: a row that came due while the bot was down fires once, late, and
the next one is computed from the schedule, never from the row.

**The digest timer only posts.** Its handler reads nothing from the row but its kind and ref: not
the payload, not the due time. The slot it posts is the schedule's latest fire time at or before
now; the channel is the configured one; the content is the usage table's. Each slot is claimed in
``cost_digests`` before it is posted, so a slot is posted at most once and never after a newer
one. A forged or edited row can therefore at most make the bot post, now, the digest it would
post for the latest scheduled slot if that one was not posted yet; it cannot make it act on
anything, choose a channel, or post twice (``docs/SECURITY.md``, invariant 8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

import provisioning
from bot import chart
from bot.scheduler import BotTimer
from bot.settings import Settings
from handlers import errors
from handlers.cost import digest as words
from handlers.cost.digest import BilledCost, Period
from handlers.plan import JSON
from handlers.ports import Clock

logger = logging.getLogger(__name__)
DIGEST_TIMER = "cost.digest"
DIGEST_REF = "digest"
_LOOKBACK = (timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=367))
"""How far back the latest slot is searched, widening: daily schedules are found in one step."""

ChartRenderer = Callable[[Mapping[str, JSON]], bytes]


class DigestSchedule:
    """``KFBOT_COST_DIGEST`` read with APScheduler 3's ``CronTrigger`` from its five fields (never
    ``from_crontab``: named weekdays only, checked by ``bot.settings``) in ``KFBOT_TIMEZONE``."""

    def __init__(self, schedule: str, timezone: str) -> None:
        minute, hour, day, month, day_of_week = schedule.split()
        self._trigger = CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week,
            timezone=ZoneInfo(timezone),
        )

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment`` (UTC)."""
        fire = self._trigger.get_next_fire_time(None, moment + timedelta(microseconds=1))
        return None if fire is None else fire.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire time at or before ``moment`` (UTC): the slot a due digest stands for."""
        for back in _LOOKBACK:
            fire = self.next_after(moment - back)
            if fire is None or fire > moment:
                continue
            while True:
                following = self.next_after(fire)
                if following is None or following > moment:
                    return fire
                fire = following
        return None


class CostDigest:
    """Posts the digest for the due slot; the sweeper calls ``handle`` for a ``cost.digest`` row."""

    def __init__(
        self,
        backend: provisioning.Backend,
        client: WebClient,
        channel: str,
        schedule: DigestSchedule,
        clock: Clock,
        render_chart: ChartRenderer = chart.render,
    ) -> None:
        self._backend, self._client, self._channel = backend, client, channel
        self._schedule, self._clock, self._render_chart = schedule, clock, render_chart

    def keep_scheduled(self) -> None:
        """One pending row at the schedule's next time (a row already due is left to fire)."""
        self._backend.keep_timer(DIGEST_TIMER, DIGEST_REF, self._schedule.next_after(self._clock.now()))

    def handle(self, ref: str, payload: Mapping[str, JSON]) -> None:
        del payload  # never read: see the module docstring
        if ref != DIGEST_REF:
            logger.error("refused a %s timer with ref %r: the digest has one timer", DIGEST_TIMER, ref[:80])
            return
        now = self._clock.now()
        slot = self._schedule.latest_at_or_before(now)
        if slot is not None and self._backend.usage.claim_digest(slot, self._channel, now):
            try:
                ts = self._post(slot)
            except BaseException:
                self._backend.usage.release_digest(slot)  # the retried timer posts it
                raise
            self._backend.usage.digest_posted(slot, ts, self._clock.now())
        # Moving the row we run also ends it: the sweeper's finish then leaves the moved row pending.
        self._backend.keep_timer(
            DIGEST_TIMER, DIGEST_REF, self._schedule.next_after(now), keep_overdue=False
        )

    def build(self, slot: datetime) -> words.Digest:
        period = words.period_before(slot)
        usage = self._backend.usage
        current = usage.days(period.start, period.end)
        previous = usage.days(period.previous.start, period.previous.end)
        return words.build_digest(period, current, previous, self._billed(period))

    def _billed(self, period: Period) -> BilledCost | None:
        try:
            return self._backend.billed_cost(period)
        except errors.KfError as exc:
            logger.warning("Cost Explorer: %s", exc.user_message)
            return None

    def _post(self, slot: datetime) -> str:
        digest = self.build(slot)
        if not digest.lines:  # no GPU node seen in either period (a dry run, a CPU-only cluster)
            logger.info("no GPU usage to digest for %s", slot.isoformat())
            return ""
        text = words.render_text(digest)
        if self._backend.settings.cost.cost_explorer and digest.billed is None:
            text += "\n_Billed cost: Cost Explorer could not be read this time (see the bot's log)._"
        try:
            answer = self._client.chat_postMessage(channel=self._channel, text=text, unfurl_links=False)
        except SlackClientError as exc:
            problem = type(exc).__name__
            raise errors.TemporaryError(f"The cost digest could not be posted ({problem}).") from exc
        ts = str(answer.get("ts") or "")
        self._upload_chart(digest, ts)
        return ts

    def _upload_chart(self, digest: words.Digest, ts: str) -> None:
        """The chart in the digest's thread; a failure leaves the text digest as it is."""
        try:
            png = self._render_chart(words.chart_spec(digest))
            self._client.files_upload_v2(
                channel=self._channel,
                thread_ts=ts or None,
                content=png,
                filename=f"gpu-cost-{digest.period.start.isoformat()}.png",
                title="GPU $ per day per workspace",
                alt_txt="Stacked bars: observed GPU node cost per day for each workspace",
            )
        except (chart.ChartError, SlackClientError) as exc:
            logger.warning("the cost digest's chart was not posted: %s", type(exc).__name__)


def install_digest(
    settings: Settings, backend: provisioning.Backend, client: WebClient, clock: Clock
) -> dict[str, BotTimer]:
    """The digest's timer handler for the sweeper, its pending row kept at the schedule's next
    time; with ``KFBOT_COST_DIGEST=off`` no handler and no pending row."""
    cost = settings.core.cost
    if not cost.digest_schedule:
        backend.keep_timer(DIGEST_TIMER, DIGEST_REF, None)
        return {}
    digest = CostDigest(
        backend,
        client,
        cost.cost_channel or settings.slack.admin_channel,
        DigestSchedule(cost.digest_schedule, cost.timezone),
        clock,
    )
    digest.keep_scheduled()
    return {DIGEST_TIMER: digest.handle}
