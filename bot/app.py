"""The composition root: settings -> backend -> core -> Slack app / shell. Nothing happens at import.

Only this module knows the concrete pieces: ``provisioning.build_backend`` (storage, engine,
dry-run or live actions, secrets), the Slack ``WebClient`` with its retry handlers, the Bolt
``App`` with our listeners, the worker thread, the timer scheduler and the HTTP server. Tests
use ``start_slack`` with settings that point at the fake Slack and a temporary database, so they
exercise exactly what ``kfbot serve`` runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler

import provisioning
from bot import listeners
from bot import logging as log
from bot.cost import CostReporter
from bot.digest import DigestSchedule, install_digest
from bot.drift import DriftDesk, install_drift
from bot.home import Home, HomeNotifier, HomeSources
from bot.http import HttpLimits, HttpServer, wsgi_app
from bot.identity import Identity
from bot.listeners.common import LISTENER_THREADS, WORK_THREADS, Inbox, WorkPool
from bot.metrics import BotMetrics, MeteredNotifier, SlackCallObserver, exposition, new_registry
from bot.notify import SlackNotifier
from bot.offboard import Offboarder, slack_id_recorder
from bot.scheduler import start_scheduler
from bot.settings import Settings, sqlite_path
from bot.signing import SlackEndpoint, replay_guard
from bot.team import ServedTeam
from bot.team import resolve as resolve_team
from handlers import errors
from handlers.ports import Clock, Notifier
from handlers.services import Core

logger = logging.getLogger(__name__)
SLACK_PATH = "/slack/events"


def build_backend(
    settings: Settings,
    clock: Clock | None = None,
    *,
    metrics: provisioning.Metrics | None = None,
    kube_api: object | None = None,
) -> provisioning.Backend:
    """``provisioning.Backend`` for these settings (dry-run unless ``KFBOT_PROVISIONER=live``).
    ``metrics``: the engine's and sweeper's instruments (default: unregistered); ``kube_api``: a
    ``kubernetes.client.ApiClient`` instead of the kubeconfig/in-cluster one (tests)."""
    return provisioning.build_backend(
        settings.provisioning,
        settings.core,
        clock or provisioning.SystemClock(),
        kube_api=kube_api,
        metrics=metrics,
        log_context=log.bound,
    )


def build_core(settings: Settings, backend: provisioning.Backend, notifier: Notifier, clock: Clock) -> Core:
    return Core(
        settings=settings.core,
        uow=backend.uow,
        facts=backend.facts,
        clock=clock,
        notifier=notifier,
        secrets=backend.secrets,
    )


def make_client(settings: Settings, metrics: BotMetrics | None = None) -> WebClient:
    """The bot's WebClient. With ``metrics``, every call's API errors and rate limits are counted
    (the observer goes first; Bolt copies the handlers into each listener's client)."""
    observer: list[RetryHandler] = [SlackCallObserver(metrics)] if metrics is not None else []
    return WebClient(
        token=settings.slack.bot_token,
        base_url=settings.slack.api_url or WebClient.BASE_URL,
        timeout=10,
        retry_handlers=[
            *observer,
            ConnectionErrorRetryHandler(max_retry_count=1),
            RateLimitErrorRetryHandler(max_retry_count=2),
        ],
    )


@dataclass
class SlackEdge:
    app: App
    deps: listeners.Deps
    notifier: Notifier
    client: WebClient
    home: Home | None = None
    """The App Home publisher: ``home.view_for(user_id)`` is the Home view JSON that person sees."""
    team: ServedTeam | None = None
    """The one Slack team served (``bot.team``)."""


def build_slack(
    settings: Settings,
    backend: provisioning.Backend,
    clock: Clock,
    metrics: BotMetrics | None = None,
    *,
    listener_threads: int = LISTENER_THREADS,
    work_threads: int = WORK_THREADS,
) -> SlackEdge:
    """The Bolt app with our listeners. Two bounded pools: Bolt's ``listener_executor``
    (``listener_threads``) runs each listener up to its ``ack()``; the work after the ack runs on
    ``listeners.WorkPool`` (``work_threads``), so slow use cases never delay an ack."""
    client = make_client(settings, metrics)
    # Before anything is built: a token of another workspace than KFBOT_SLACK_TEAM_ID stops here.
    team = resolve_team(client, settings.slack.team_id)
    identity = Identity(client, settings.core, cache_seconds=settings.slack.admin_cache_seconds)
    calls = backend.render_step if backend.mode == "dry-run" else None
    notifier: Notifier = SlackNotifier(
        client,
        settings.slack.admin_channel,
        identity.user_id_for_email,
        calls,
        backend.kept_by_steps,
        dry_run=backend.mode == "dry-run",
        dashboard_url=settings.slack.dashboard_url,
        confirm_above=settings.slack.confirm_above,
        expiry=backend.pending_expiry,
        seen=slack_id_recorder(settings.core, backend),
    )
    if metrics is not None:
        notifier = MeteredNotifier(notifier, metrics)
    homes: list[Home] = []
    notifier = HomeNotifier(notifier, lambda: homes[0] if homes else None)
    core = build_core(settings, backend, notifier, clock)
    home = Home(
        lambda: core,
        home_sources(backend),
        client,
        identity.actor,
        identity.admin_ids,
        identity.user_id_for_email,
        dry_run=backend.mode == "dry-run",
        dashboard_url=settings.slack.dashboard_url,
        confirm_above=settings.slack.confirm_above,
        refresh_seconds=settings.slack.home_refresh_seconds,
    )
    homes.append(home)
    app = App(
        client=client,
        signing_secret=settings.slack.signing_secret,
        process_before_response=False,
        logger=logging.getLogger("kfbot.bolt"),
        listener_executor=ThreadPoolExecutor(max_workers=listener_threads, thread_name_prefix="kfbot-ack"),
    )
    inbox = Inbox(backend.inbox, WorkPool(work_threads))
    inbox.client, inbox.team = client, team
    schedule = settings.slack.drift_report
    desk = DriftDesk(
        backend,
        client,
        settings.slack.drift_channel or settings.slack.admin_channel,
        core,
        identity.user_id_for_email,
        clock,
        DigestSchedule(schedule, settings.core.cost.timezone) if schedule else None,
    )
    deps = listeners.Deps(
        settings=settings,
        core=core,
        identity=identity,
        backend=backend,
        inbox=inbox,
        home=home,
        people=backend,
        drift=desk,
    )
    listeners.register(app, deps, team)
    return SlackEdge(app, deps, notifier, client, home, team)


def home_sources(backend: provisioning.Backend) -> HomeSources:
    """The Home tab's reads: the registry, the live quota, tokens, this month's GPU cost from the
    usage ledger and the last scan's GPU nodes (never a scan of its own)."""

    def month_usd() -> dict[str, float]:
        return {m.workspace: m.usd for m in backend.month_usage() if m.workspace is not None}

    return HomeSources(
        workspaces=backend.workspaces,
        workspace_view=lambda name, live: backend.workspace_view(name, live=live),
        tokens=backend.tokens,
        month_usd=month_usd,
        gpu_nodes=backend.gpu_nodes_running,
    )


def build_cost_reporter(
    settings: Settings, backend: provisioning.Backend, edge: SlackEdge, clock: Clock
) -> CostReporter:
    """The idle-GPU reporter: posts with the bot's client, mentions owners Slack knows by email."""
    return CostReporter(
        edge.client,
        backend,
        backend.uow,
        clock,
        settings.core.cost,
        settings.slack.admin_channel,
        edge.deps.identity.user_id_for_email,
    )


class SlackAuthCheck:
    """``/readyz``'s Slack check in HTTP mode: ``auth.test``, its answer kept ``ttl`` seconds so a
    probe every few seconds costs one Slack call a minute (a revoked token or an unreachable
    Slack shows within that)."""

    def __init__(self, client: WebClient, ttl: float = 60.0) -> None:
        self._client, self._ttl = client, ttl
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._ok = False

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                try:
                    self._ok = bool(self._client.auth_test().get("ok"))
                except (SlackClientError, OSError) as exc:
                    logger.warning("readiness: auth.test failed: %s", type(exc).__name__)
                    self._ok = False
                self._checked_at = now
            return self._ok


def readiness(
    backend: provisioning.Backend,
    mode: str,
    slack_connected: Callable[[], bool],
    draining: threading.Event | None = None,
) -> tuple[bool, dict[str, object]]:
    if draining is not None and draining.is_set():  # SIGTERM: the Service stops sending us traffic
        return False, {"provisioner": mode, "draining": True}
    body: dict[str, object] = {"provisioner": mode}
    try:
        body.update(backend.readiness())
    except Exception as exc:  # a broken database must answer 503, not crash the probe
        body.update(database=False, error=type(exc).__name__)
    body["provisioner"] = mode
    body["slack"] = bool(slack_connected())
    ready = bool(body.get("database")) and bool(body.get("migrated")) and bool(body["slack"])
    return ready, body


@dataclass
class Running:
    """A started bot: Slack listeners, worker, scheduler and HTTP server."""

    settings: Settings
    backend: provisioning.Backend
    edge: SlackEdge
    http: HttpServer
    stop_event: threading.Event
    worker: threading.Thread
    scheduler: BackgroundScheduler
    socket_handler: SocketModeHandler | None = None
    registry: CollectorRegistry | None = None
    """What ``/metrics`` serves: this bot's own registry."""
    draining: threading.Event = field(default_factory=threading.Event)
    """Set on SIGTERM: ``/readyz`` answers 503 while what is in flight is finished."""
    health: HttpServer | None = None
    """The health listener (``KFBOT_HEALTH_PORT``): /healthz, /readyz, /metrics."""
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return self.http.url(SLACK_PATH)

    def stop(self) -> None:
        """Graceful, within ``KFBOT_SHUTDOWN_SECONDS``: stop accepting; answer the requests already
        taken; let the work pool finish what it can of the work they acked. Work still queued then
        is not lost: it was recorded before the ack (``bot.listeners.common``), and another replica
        (or this one, restarted) takes it up."""
        if self._stopped:
            return
        self._stopped = True
        self.draining.set()
        deadline = time.monotonic() + self.settings.http.shutdown_seconds
        if self.socket_handler is not None:
            self.socket_handler.close()  # type: ignore[no-untyped-call]
        self.http.stop()
        self.stop_event.set()  # the inbox sweep takes nothing more
        self.edge.deps.inbox.drain(max(0.0, deadline - time.monotonic()))
        self.edge.deps.quick.shutdown(wait=False)
        if self.edge.home is not None:
            self.edge.home.close()
        self.scheduler.shutdown(wait=False)
        self.worker.join(timeout=10)
        if self.health is not None:  # last: the probes see the draining replica until it goes
            self.health.stop()
        self.backend.close()
        logger.info("kfbot stopped")


def start_slack(
    settings: Settings, *, clock: Clock | None = None, port: int | None = None, host: str | None = None
) -> Running:
    """Build and start everything ``kfbot serve`` runs. Raises ``KfError`` when the database is
    behind (``kfbot migrate``) or a setting is missing; never creates or migrates the database."""
    settings.require_serve()
    database_file = sqlite_path(settings.provisioning.database_url)
    if database_file is not None and not database_file.exists():
        # Connecting would create an empty file, which the next start would then find "behind".
        raise errors.Misconfigured(
            f"There is no database at {database_file}: run `kfbot migrate` first (serve never creates one)."
        )
    clock = clock or provisioning.SystemClock()
    registry, bot_metrics = new_registry(settings.mode)
    backend = build_backend(settings, clock, metrics=provisioning.Metrics(registry))
    try:
        backend.check_migrated()
        try:
            edge = build_slack(settings, backend, clock, bot_metrics)
        except (SlackClientError, OSError) as exc:  # Bolt checks the token with auth.test at once
            where = settings.slack.api_url or "https://slack.com/api/"
            raise errors.Misconfigured(
                f"Slack did not accept the bot at start-up ({where}: {str(exc).splitlines()[0][:160]}). "
                "Check SLACK_BOT_TOKEN, the network path to Slack, and KFBOT_SLACK_API_URL if set."
            ) from exc
    except BaseException:
        backend.close()
        raise
    stop_event = threading.Event()
    worker = backend.start_worker(edge.notifier, stop_event)
    bot_timers = {
        **install_digest(settings, backend, edge.client, clock),
        **install_drift(edge.deps.drift, settings.slack.drift_report),
    }
    # Only a live backend can scan the cluster (the dry-run has no GPUs to find).
    cost = build_cost_reporter(settings, backend, edge, clock) if backend.mode == "live" else None
    every = settings.core.offboard.every
    scheduler = start_scheduler(
        backend,
        edge.deps.core,
        settings.http.sweep_seconds,
        bot_timers,
        cost=cost,
        scan_seconds=settings.core.cost.scan_interval.total_seconds(),
        offboard=Offboarder(edge.client, backend, edge.deps.core, clock, settings.slack.admin_channel),
        offboard_seconds=None if every is None else every.total_seconds(),
    )
    start_inbox_sweep(edge.deps.inbox, stop_event, INBOX_SWEEP_SECONDS)
    socket_handler = None
    draining = threading.Event()
    if settings.slack.socket_mode:
        socket_handler = SocketModeHandler(edge.app, settings.slack.app_token)
        socket_handler.connect()  # type: ignore[no-untyped-call]

        def connected() -> bool:
            return bool(socket_handler.client.is_connected())

        connected_check: Callable[[], bool] = connected
        app = wsgi_app(
            partial(readiness, backend, settings.mode, connected_check, draining),
            metrics=partial(exposition, registry),
        )
    else:
        connected_check = SlackAuthCheck(edge.client)
        app = wsgi_app(
            partial(readiness, backend, settings.mode, connected_check, draining),
            slack=SlackEndpoint(edge.app, settings.slack.signing_secret, replay_guard(backend.signatures)),
            slack_path=SLACK_PATH,
            metrics=partial(exposition, registry),
        )
    health_app = wsgi_app(
        partial(readiness, backend, settings.mode, connected_check, draining),
        metrics=partial(exposition, registry),
    )
    # Probes and scrapes get a listener (and threads) of their own: whatever holds the main port's
    # threads, a kubelet probe is answered, so no replica is restarted for being attacked.
    health = HttpServer(
        health_app, host or settings.http.host, settings.http.health_port, health_limits(settings)
    ).start()
    http = HttpServer(
        app, host or settings.http.host, settings.http.port if port is None else port, http_limits(settings)
    ).start()
    logger.info(
        "kfbot serving: provisioner=%s, slack=%s, http port %d, health port %d",
        settings.mode,
        "socket-mode" if socket_handler is not None else "http",
        http.port,
        health.port,
    )
    return Running(
        settings, backend, edge, http, stop_event, worker, scheduler, socket_handler, registry, draining,
        health=health,
    )  # fmt: skip


INBOX_SWEEP_SECONDS = 2.0
"""How often a replica looks for acked Slack work nobody is doing (another replica stopped)."""


def start_inbox_sweep(inbox: Inbox, stop: threading.Event, every: float) -> threading.Thread:
    """Each replica claims inbox rows whose lease ran out (a replica stopped or crashed mid-work, a
    full pool) while it has room; the first sweep runs at start, so a restarted replica picks up
    its own leftovers at once."""

    def run() -> None:
        while not stop.is_set():
            try:
                inbox.sweep()
            except Exception:  # a database blip must not end the sweep
                logger.exception("inbox sweep failed")
            stop.wait(every)

    thread = threading.Thread(target=run, name="kfbot-inbox", daemon=True)
    thread.start()
    return thread


def http_limits(settings: Settings) -> HttpLimits:
    http = settings.http
    return HttpLimits(
        backlog=http.backlog,
        threads=http.threads,
        queue=http.queue,
        read_timeout=http.timeout,
        read_deadline=http.read_deadline,
        shutdown_seconds=http.shutdown_seconds,
    )


def health_limits(settings: Settings) -> HttpLimits:
    """The health listener's: a few threads (kubelet probes and one Prometheus scrape at a time),
    a short queue; the same deadlines as the main port."""
    return replace(http_limits(settings), backlog=128, threads=4, queue=16)


def serve(settings: Settings) -> int:
    """``kfbot serve``: run until SIGTERM/SIGINT."""
    running = start_slack(settings)
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not done.wait(1.0):
            if not running.worker.is_alive():
                logger.error("the provisioning worker stopped; exiting so the pod restarts")
                return 1
    finally:
        running.stop()
    return 0
