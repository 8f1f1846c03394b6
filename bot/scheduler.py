"""Timed work: APScheduler jobs on the elected leader only: the sweeper of due timers and, when the
bot reports idle GPUs, the scan (``bot.cost.CostReporter.scan_once``, every ``scan_interval``).

The timers themselves are rows in our own table (``due_at``), claimed like requests, so
APScheduler keeps only a memory job store: its job stores must not be shared between schedulers,
and nothing in it needs to survive a restart. Every replica runs the sweeper; only the one
holding the leader lock (``backend.try_lead()``: a PostgreSQL advisory lock; SQLite: the single
process) does anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

import provisioning
from bot import logging as log
from bot.cost import CostReporter
from bot.offboard import Offboarder
from bot.offboard import run_job as run_offboarding
from handlers import services
from handlers.errors import KfError
from handlers.plan import JSON
from handlers.services import Core

logger = logging.getLogger(__name__)
JOB_ID = "kfbot-timer-sweeper"
SCAN_JOB_ID = "kfbot-idle-gpu-scan"
OFFBOARD_JOB_ID = "kfbot-offboarding-check"
BotTimer = Callable[[str, Mapping[str, JSON]], None]
"""``(ref, payload)``: a timer kind the Slack edge handles itself (the cost digest: it posts)."""


def sweep_once(
    backend: provisioning.Backend, core: Core, bot_timers: Mapping[str, BotTimer] | None = None
) -> int:
    """Handle the timers due now if this process leads; returns how many were handled. Kinds in
    ``bot_timers`` go to their handler; every other kind to the core's ``handle_timer``."""
    if not backend.try_lead():
        return 0
    own = dict(bot_timers or {})

    def dispatch(kind: str, ref: str, payload: dict[str, JSON]) -> None:
        handler = own.get(kind)
        if handler is not None:
            handler(ref, payload)
        else:
            services.handle_timer(core, kind, ref, payload)

    with log.bound(log.new_correlation_id()):
        count = backend.sweep_timers(dispatch)
        if count:
            logger.info("handled %d due timers", count)
        return count


def scan_once(reporter: CostReporter) -> None:
    """The idle-GPU scan job: the leader scans and reports; a failure is logged, and the next
    interval tries again (the scan is idempotent: signals keep their start)."""
    with log.bound(log.new_correlation_id()):
        try:
            outcome = reporter.scan_once()
        except KfError as exc:
            logger.warning("idle-GPU scan skipped: %s", exc.user_message)
            return
        if outcome.led and (outcome.posted or outcome.edited or outcome.cleared or outcome.warned):
            logger.info(
                "idle-GPU report: posted %s, edited %s, cleared %s, warned %s",
                list(outcome.posted),
                list(outcome.edited),
                list(outcome.cleared),
                list(outcome.warned),
            )


def start_scheduler(
    backend: provisioning.Backend,
    core: Core,
    interval_seconds: float,
    bot_timers: Mapping[str, BotTimer] | None = None,
    cost: CostReporter | None = None,
    scan_seconds: float | None = None,
    offboard: Offboarder | None = None,
    offboard_seconds: float | None = None,
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        # The scan may take seconds: its own thread keeps due timers on time meanwhile.
        executors={"default": ThreadPoolExecutor(1 + (cost is not None) + (offboard is not None))},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": int(max(interval_seconds, 1)),
        },
        timezone=UTC,
    )
    scheduler.add_job(
        sweep_once,
        "interval",
        seconds=interval_seconds,
        args=[backend, core, bot_timers],
        id=JOB_ID,
        next_run_time=datetime.now(UTC),
        replace_existing=True,
    )
    if cost is not None and scan_seconds:
        scheduler.add_job(
            scan_once,
            "interval",
            seconds=scan_seconds,
            args=[cost],
            id=SCAN_JOB_ID,
            replace_existing=True,
            misfire_grace_time=int(max(scan_seconds, 1)),
        )
    if offboard is not None and offboard_seconds:
        # Leader only, like the scan (``Offboarder.run_once`` asks ``try_lead``); first run one
        # interval after the start, so a restart loop does not ask Slack about everyone each time.
        scheduler.add_job(
            run_offboarding,
            "interval",
            seconds=offboard_seconds,
            args=[offboard],
            id=OFFBOARD_JOB_ID,
            replace_existing=True,
            misfire_grace_time=int(max(offboard_seconds, 1)),
        )
    scheduler.start()
    return scheduler
