# ruff: noqa: PLC0415  (the live adapters are imported lazily on purpose, see _build_live)
"""Assembles the provisioning layer from settings: the database, the actions (dry-run or live),
facts, secrets, the engine and the timer sweeper. ``provisioning/__init__.py`` re-exports it;
``bot/app.py`` (the composition root) is its only caller."""

from __future__ import annotations

import logging
import secrets as pysecrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from handlers import prices
from handlers.actions import ActionName
from handlers.cost import autostop, idle
from handlers.cost.digest import BilledCost, Period
from handlers.cost.inventory import Inventory, NotebookActivity
from handlers.drift import DriftInventory, Orphan, RecordedNodegroup, Scaling, WorkspaceSeen
from handlers.errors import KfError
from handlers.model import Request
from handlers.offboard import Person
from handlers.plan import JSON, as_list, as_object
from handlers.ports import Clock, DataHeld, Facts, Notifier, RevealedSecret, SecretIssuer, UnmanagedGroup
from handlers.settings import CoreSettings
from provisioning import audit, dryrun
from provisioning import doctor as checks
from provisioning.actions import ActionRegistry
from provisioning.engine import Engine, LogContext, no_log_context
from provisioning.facts import LiveWorkspaces, RegistryFacts
from provisioning.metrics import Metrics, count_requests
from provisioning.records import (
    Contributor,
    CostReportRecord,
    DriftReportRecord,
    IdleScan,
    MonthUsage,
    TokenRecord,
    WorkspaceRecord,
    WorkspaceView,
)
from provisioning.settings import ProvisioningSettings
from provisioning.store import (
    Database,
    LeaderElection,
    NodeUsage,
    SeenSignatures,
    SqlInbox,
    SqlUnitOfWork,
    UsageLedger,
)
from provisioning.store.wakeup import PgWakeups

if TYPE_CHECKING:
    from provisioning.costexplorer import CostExplorer
    from provisioning.dex import RestartRequester
    from provisioning.gpu_scan import GpuScanner

log = logging.getLogger(__name__)

TimerHandler = Callable[[str, str, dict[str, JSON]], None]
"""``(kind, ref, payload)``: what ``Backend.sweep_timers`` calls for a due timer."""
PROVISIONING_TIMERS = "provisioning."
"""Timer kinds with this prefix are provisioning's own (``Backend.sweep_timers`` routes them)."""
ProvisioningTimerHandler = Callable[[str, Mapping[str, JSON]], None]
"""``(ref, payload)``: a provisioning-owned timer's handler."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class DryRunSecrets:
    """Dry-run makes no secrets: there is no Dex and no ServiceAccount to make them for."""

    def password(self, email: str) -> RevealedSecret:
        return RevealedSecret(kind="password", value="(dry-run: no password was set)", fingerprint="dry-run")

    def token(self, request: Request) -> RevealedSecret:
        return RevealedSecret(kind="token", value="(dry-run: no token was made)", fingerprint="dry-run")


class Backend:
    def __init__(
        self,
        settings: ProvisioningSettings,
        core: CoreSettings,
        clock: Clock,
        db: Database,
        actions: ActionRegistry,
        facts: Facts,
        secrets: SecretIssuer,
        live: LiveWorkspaces | None,
        *,
        metrics: Metrics | None = None,
        log_context: LogContext = no_log_context,
        parts: checks.LiveParts | None = None,
        kube_api: Any | None = None,
        timer_handlers: Mapping[str, ProvisioningTimerHandler] | None = None,
        gpu_scanner: GpuScanner | None = None,
        notebook_url: Callable[[str, str], str] | None = None,
    ) -> None:
        self.settings, self.core, self.clock, self.db = settings, core, clock, db
        self.mode = settings.mode
        self.actions, self.facts, self.secrets, self._live = actions, facts, secrets, live
        self.metrics = metrics or Metrics()
        self._log_context = log_context
        self._parts, self._kube_api = parts, kube_api
        self._leader = LeaderElection(db, "kfbot-scheduler")
        self._timer_handlers = dict(timer_handlers or {})
        self._gpu_scanner, self._notebook_url = gpu_scanner, notebook_url
        self._scanner_lock = threading.Lock()
        self._status_scan = threading.Lock()
        """Held by the one status scan in flight (``gpu_status``)."""
        self._last_inventory: Inventory | None = None
        """The newest scan this process made (the scheduled one or a status one)."""
        self.wakeups: PgWakeups | None = None
        """The running listener for other replicas' work notifications (``start_worker``, PostgreSQL)."""
        self._usage: UsageLedger | None = None
        self._cost_explorer: CostExplorer | None = None
        self.inbox = SqlInbox(db)
        """Slack requests acked and not yet finished (``provisioning/store/inbox.py``)."""
        self.signatures = SeenSignatures(db)
        """Signatures of accepted Slack requests, the replay guard (``provisioning/store/replay.py``)."""

    def uow(self) -> SqlUnitOfWork:
        """The core's unit of work: only what ``handlers.ports.UnitOfWork`` declares."""
        return self.db.core_uow()

    # -- schema ----------------------------------------------------------------------------------
    def migrate(self) -> None:
        self.db.migrate()

    def check_migrated(self) -> None:
        self.db.check_migrated()

    # -- work ------------------------------------------------------------------------------------
    def engine(self, notifier: Notifier, *, worker_id: str | None = None) -> Engine:
        settings = self.settings.engine
        if worker_id is not None:
            settings = replace(settings, worker_id=worker_id)
        return Engine(
            self.db,
            self.actions,
            self.core,
            self.facts,
            self.clock,
            settings,
            notifier,
            metrics=self.metrics,
            log_context=self._log_context,
        )

    def run_until_idle(self, notifier: Notifier) -> int:
        return self.engine(notifier).run_until_idle()

    def start_worker(self, notifier: Notifier, stop: threading.Event) -> threading.Thread:
        """Start the engine: ``settings.engine.workers`` worker threads, each claiming under its
        own id (``WORKER_ID/N``: a lease is one worker's, not the process's), the outbox
        publisher that delivers their notices (``WORKER_ID/outbox``), and on PostgreSQL
        the listener for other replicas' work notifications. The returned thread supervises them:
        it ends when ``stop`` is set (after the workers finished what they hold) or when a worker
        died, so ``kfbot serve`` can exit and let the pod restart."""
        workers = [
            threading.Thread(
                target=self.engine(notifier, worker_id=f"{self.settings.engine.worker_id}/{n}").run_forever,
                args=(stop,),
                name=f"kfbot-engine-{n}",
                daemon=True,
            )
            for n in range(1, max(1, self.settings.engine.workers) + 1)
        ]
        # One publisher per process delivers the workers' notices (the outbox) at Slack's pace,
        # so no worker waits on it; any replica's publisher drains rows another one left.
        publisher = threading.Thread(
            target=self.engine(notifier, worker_id=f"{self.settings.engine.worker_id}/outbox")
            .publisher()
            .run_forever,
            args=(stop,),
            name="kfbot-outbox",
            daemon=True,
        )
        self.wakeups = self.db.wakeups()
        listener = (
            None
            if self.wakeups is None
            else threading.Thread(target=self.wakeups.run, args=(stop,), name="kfbot-wakeups", daemon=True)
        )

        def supervise() -> None:
            for thread in workers:
                thread.start()
            publisher.start()
            if listener is not None:
                listener.start()
            try:
                while not stop.wait(1.0):
                    if not all(t.is_alive() for t in [*workers, publisher]):
                        log.error("an engine worker stopped unexpectedly")
                        return
            finally:
                self.db.work_signal.notify_all()  # idle workers see the stop now, not after a poll
                self.db.outbox_signal.notify_all()
            for thread in workers:
                thread.join()
            # A delivery may be waiting out Slack's pace: not joined for long, its row stays and
            # is delivered (again) by whichever publisher claims it next.
            publisher.join(timeout=5.0)
            if listener is not None:
                listener.join()

        supervisor = threading.Thread(target=supervise, name="kfbot-engine", daemon=True)
        supervisor.start()
        return supervisor

    def sweep_timers(self, on_timer: TimerHandler, limit: int = 50) -> int:
        """Run due timers, each claimed with a lease so two sweepers never both run one.

        Kinds starting with ``provisioning.`` belong to this layer (a requested Dex restart) and
        go to its own handlers; every other kind goes to ``on_timer`` (the core's)."""
        worker, lease = self.settings.engine.worker_id, self.settings.engine.lease
        now = self.clock.now()
        with self.db.uow() as uow:
            due = uow.work.claim_timers(worker, now, now + lease, limit)
            uow.commit()
        self.metrics.swept()
        for timer in due:
            try:
                self._timer_handler(timer.kind, on_timer)(timer.kind, timer.ref, dict(timer.payload or {}))
            except Exception as exc:
                log.exception("timer %s %s failed", timer.kind, timer.ref)
                self.metrics.timer_handled(timer.kind, ok=False)
                with self.db.uow() as uow:
                    uow.work.fail_timer(timer.id, worker, type(exc).__name__, self.clock.now() + lease)
                    uow.commit()
                continue
            self.metrics.timer_handled(timer.kind, ok=True)
            with self.db.uow() as uow:
                uow.work.finish_timer(timer.id, worker, self.clock.now())
                uow.commit()
        return len(due)

    def _timer_handler(self, kind: str, on_timer: TimerHandler) -> TimerHandler:
        if not kind.startswith(PROVISIONING_TIMERS):
            return on_timer
        handler = self._timer_handlers.get(kind)
        if handler is None:
            raise LookupError(f"no handler for provisioning timer {kind!r} in {self.mode} mode")

        def run(kind: str, ref: str, payload: dict[str, JSON]) -> None:
            handler(ref, payload)

        return run

    # -- cost: observed GPU node time (the scans write it, the digest reads it) -------------------
    @property
    def usage(self) -> UsageLedger:
        """GPU node time per node per UTC day (``provisioning.store.usage``)."""
        if self._usage is None:
            self._usage = UsageLedger(self.db, self.core.cost.scan_interval)
        return self._usage

    def billed_cost(self, period: Period) -> BilledCost | None:
        """Billed EC2 cost per workspace tag from Cost Explorer (``KFBOT_COST_EXPLORER=on``), None
        when it is off. Raises ``KfError`` when Cost Explorer cannot answer."""
        if not self.settings.cost.cost_explorer:
            return None
        from provisioning.costexplorer import CostExplorer  # boto3 only when it is on

        if self._cost_explorer is None:
            self._cost_explorer = CostExplorer(self.settings.aws_endpoint_url)
        return self._cost_explorer.billed(period)

    def keep_timer(self, kind: str, ref: str, due_at: datetime | None, *, keep_overdue: bool = True) -> None:
        """Make the one pending (kind, ref) timer due at ``due_at`` (None: no pending timer). With
        ``keep_overdue`` a pending row already due stays as it is, so a timer missed while the bot
        was down still fires (once) instead of being pushed to its next time. For the bot's own
        schedules (the cost digest), whose next time is computed, not stored by a request."""
        with self.db.uow() as uow:
            if due_at is None:
                uow.timers.cancel(kind, ref)
            else:
                pending = uow.work.pending_due(kind, ref)
                overdue = pending is not None and pending <= self.clock.now() and keep_overdue
                if pending != due_at and not overdue:
                    uow.timers.schedule(kind, ref, due_at, {})
            uow.commit()

    def try_lead(self) -> bool:
        return self._leader.try_acquire()

    # -- cost control: idle GPUs ----------------------------------------------------------------
    def observe_idle(self) -> IdleScan:
        """One observation: scan, decide, and persist the signals (with the GPU node time) in one
        transaction, so a restart keeps every idle clock. Returns what to report."""
        return self._idle_scan(persist=True)

    def gpu_status(self) -> IdleScan:
        """``/kf gpu status``: the newest scan, decided against the stored signals, persisting
        nothing, with this month's GPU node time. Anyone in Slack can ask, so a call never scans
        the cluster for itself: it reads the last scan when that is younger than the scan interval
        (the scheduled scan refreshes it on the leader), else one shared scan runs (a caller that
        finds it in flight is answered from the older scan at once, never waits behind it). The
        answer is "as of" the scan's time (``IdleScan.taken_at``)."""
        fresh = self._fresh_inventory()
        if fresh is not None:
            return self._idle_scan(persist=False, inventory=fresh)
        if not self._status_scan.acquire(blocking=self._last_inventory is None):
            last = self._last_inventory
            if last is not None:
                return self._idle_scan(persist=False, inventory=last)
            self._status_scan.acquire()
        try:
            inventory = self._fresh_inventory()  # a scan may have ended while this call waited
            return self._idle_scan(persist=False, inventory=inventory)
        finally:
            self._status_scan.release()

    def _fresh_inventory(self) -> Inventory | None:
        last = self._last_inventory
        if last is not None and self.clock.now() - last.taken_at < self.core.cost.scan_interval:
            return last
        return None

    def _idle_scan(self, *, persist: bool, inventory: Inventory | None = None) -> IdleScan:
        cost = self.core.cost
        if inventory is None:
            inventory = self.gpu_inventory(cost.idle_after)
            self._last_inventory = inventory
        now = self.clock.now() if persist else inventory.taken_at
        overrides = self.core.workspace.price_overrides
        with self.db.uow(read_only=not persist) as uow:
            rows = uow.registry.list_workspaces()
            namespaces = {w.namespace: w.name for w in rows}
            owners = {w.name: w.owner for w in rows}
            observation = idle.classify(
                inventory,
                uow.cost.signals(for_update=persist),
                uow.cost.holds(now),
                now,
                cost,
                price_overrides=overrides,
                namespaces=namespaces,
            )
            if persist:
                uow.cost.apply(observation.upsert, observation.delete)
            warned = {str(s.detail.get("item")) for s in uow.cost.signal_rows() if s.warned_at is not None}
            pending = uow.cost.pending_timers(autostop.AUTO_STOP)
            if persist:
                uow.commit()
        ledger = self.usage
        if persist:
            ledger.record(now, _node_usage(inventory, observation, overrides))
        return IdleScan(
            now,
            observation,
            idle.fleet(inventory, overrides),
            owners,
            frozenset(warned),
            pending,
            () if persist else _month(ledger, now),
        )

    def month_usage(self) -> tuple[MonthUsage, ...]:
        """GPU node time and its cost per workspace this UTC month, from the usage ledger (the App
        Home's "$ this month"); reads the database only."""
        return _month(self.usage, self.clock.now())

    def gpu_nodes_running(self) -> dict[str, int] | None:
        """Workspace -> GPU nodes in its nodegroups at the last scan; None when this process has
        not scanned (dry-run, or not the leader yet). Never scans: the App Home must not cost a
        cluster-wide read per person who opens it."""
        last = self._last_inventory
        if last is None:
            return None
        counts: dict[str, int] = {}
        for line in idle.fleet(last, self.core.workspace.price_overrides):
            if line.workspace is not None:
                counts[line.workspace] = counts.get(line.workspace, 0) + line.nodes
        return counts

    def mark_cost_signals(
        self, keys: Sequence[str], *, reported: datetime | None = None, warned: datetime | None = None
    ) -> None:
        with self.db.uow() as uow:
            uow.cost.mark(keys, reported=reported, warned=warned)
            uow.commit()

    def cost_report(self, channel: str) -> CostReportRecord | None:
        with self.db.uow(read_only=True) as uow:
            row = uow.cost.report(channel)
        return None if row is None else CostReportRecord(row.channel, row.ts, row.digest, row.items)

    def cost_reports(self) -> list[CostReportRecord]:
        with self.db.uow(read_only=True) as uow:
            return [CostReportRecord(r.channel, r.ts, r.digest, r.items) for r in uow.cost.reports()]

    def save_cost_report(self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON]) -> None:
        with self.db.uow() as uow:
            uow.cost.put_report(channel, ts, digest, items, self.clock.now())
            uow.commit()

    def drop_cost_report(self, channel: str) -> None:
        with self.db.uow() as uow:
            uow.cost.delete_report(channel)
            uow.commit()

    # -- drift: the registry against the cluster ----------------------------------------------------
    def drift_inventory(self) -> DriftInventory:
        """What the registry records and what the cluster has, for ``handlers.drift.find``: per
        workspace its grants, quota and nodegroup bounds, recorded and live; bot-tagged buckets and
        nodegroups whose workspace the registry no longer has; Profiles it does not know. Dry-run
        has no cluster: the recorded side only, with a note. Reads nothing it could change."""
        now = self.clock.now()
        recorded: list[tuple[WorkspaceRecord, dict[str, str], dict[str, str]]] = []
        logins: dict[str, str] = {}
        """Email -> the gone workspace whose create made the Dex login, for logins nobody uses now."""
        with self.db.uow(read_only=True) as uow:
            for row in uow.registry.list_workspaces():
                grants = {g.user: g.role for g in uow.registry.grants(row.name)}
                recorded.append((row, grants, RegistryFacts.recorded_quota(uow, row.name, row)))
            for gone in uow.registry.deleted_workspaces():
                for entry in gone.created.values():
                    email = str(as_object(entry["params"]).get("email") or "")
                    if entry.get("action") == ActionName.DEX_USER and email:
                        logins.setdefault(email, gone.name)
        if self.mode != "live" or self._live is None:
            seen = tuple(
                WorkspaceSeen(row.name, row.namespace, row.owner, grants, quota, None, None)
                for row, grants, quota in recorded
            )
            return DriftInventory(now, seen, notes=("Dry-run mode has no cluster to compare with.",))
        from provisioning import k8s
        from provisioning.costexplorer import WORKSPACE_TAG

        parts = self._live_parts()
        cluster = self.core.workspace.cluster
        notes: list[str] = []
        workspaces = []
        for row, grants, quota in recorded:
            state = self._live.workspace_state(row.namespace)
            nodegroups = []
            for key, entry in row.created.items():
                if entry.get("action") != ActionName.NODEGROUP:
                    continue
                params = entry.get("params")
                if not isinstance(params, dict) or params.get("cluster") != cluster:
                    continue
                name = str(params.get("name"))
                described = parts.aws.describe_nodegroup(cluster, name)
                live = None if described is None else _scaling(described.get("scalingConfig"))
                recorded_scaling = _scaling(params.get("scaling")) or Scaling(0, 0)
                nodegroups.append(RecordedNodegroup(key, name, recorded_scaling, live))
            workspaces.append(
                WorkspaceSeen(
                    row.name,
                    row.namespace,
                    row.owner,
                    grants,
                    quota,
                    dict(state.contributors) if state.profile_exists else None,
                    dict(state.profile_hard) if state.profile_hard is not None else None,
                    tuple(nodegroups),
                )
            )
        names = {row.name for row, _, _ in recorded}
        # Whatever a live workspace records (made or adopted) is no orphan, whatever its tags say.
        held = _recorded_objects(row for row, _, _ in recorded)
        orphans: list[Orphan] = []
        sources: list[tuple[str, Callable[[], dict[str, str]]]] = [
            ("bucket", lambda: parts.aws.tagged_buckets(WORKSPACE_TAG))
        ]
        if cluster:
            sources.append(("nodegroup", lambda: parts.aws.tagged_nodegroups(cluster, WORKSPACE_TAG)))
        for what, read in sources:
            try:
                tagged = read()
            except KfError as exc:  # one unreadable source leaves the rest of the report standing
                notes.append(f"Orphan {what}s were not checked: {exc.user_message}")
                continue
            orphans += [
                Orphan(what, name, ws)
                for name, ws in sorted(tagged.items())
                if ws not in names and name not in held[what]
            ]
        kept = held["iam"]
        granted: dict[str, list[str]] = {}
        for arn in self.core.workspace.iam_policy_arns:
            try:
                for bucket in parts.aws.bot_policy_buckets(arn):
                    granted.setdefault(bucket, []).append(arn.rsplit("/", 1)[-1])
            except KfError as exc:
                notes.append(f"IAM policy {arn.rsplit('/', 1)[-1]} was not checked: {exc.user_message}")
        orphans += [
            Orphan("iam", bucket, "", "granted by " + ", ".join(policies))
            for bucket, policies in sorted(granted.items())
            if bucket not in kept
        ]
        in_use = {row.owner for row, _, _ in recorded} | {u for _, grants, _ in recorded for u in grants}
        for email, gone_name in sorted(logins.items()):
            if email in in_use or gone_name in names or email in held["dex"]:
                continue
            try:
                if parts.dex.user_exists(email):
                    orphans.append(Orphan("dex", email, gone_name))
            except KfError as exc:
                notes.append(f"Dex logins were not checked: {exc.user_message}")
                break
        namespaces = {row.namespace for row, _, _ in recorded}
        unknown = tuple(
            (str(p["metadata"]["name"]), str(((p.get("spec") or {}).get("owner") or {}).get("name") or ""))
            for p in parts.kube.list(k8s.PROFILE)
            if p["metadata"]["name"] not in namespaces
        )
        return DriftInventory(now, tuple(workspaces), tuple(orphans), unknown, tuple(notes))

    def orphan_targets(self) -> set[str]:
        """The drift report's orphans as ``drift.cleanup`` targets (``bucket:NAME``, ...), read
        now: what a clean-up's plan checks, at filing and again before it applies."""
        return {f"{o.what}:{o.name}" for o in self.drift_inventory().orphans}

    def drift_report(self, channel: str) -> DriftReportRecord | None:
        with self.db.uow(read_only=True) as uow:
            row = uow.drift.get(channel)
        return None if row is None else DriftReportRecord(row.channel, row.ts, row.digest, row.items)

    def save_drift_report(self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON]) -> None:
        with self.db.uow() as uow:
            uow.drift.put(channel, ts, digest, items, self.clock.now())
            uow.commit()

    # -- audit -----------------------------------------------------------------------------------
    def audit_verify(self, expect_head: str | None = None) -> audit.VerifyResult:
        return audit.verify(self.db, self.settings.audit_key, expect_head)

    def audit_export(self, fmt: str, since: datetime | None = None) -> Iterator[str]:
        return audit.export(self.db, fmt, since)

    # -- read models -----------------------------------------------------------------------------
    def render_step(self, action: str, params: Mapping[str, JSON]) -> list[str]:
        """The calls and objects a step makes, as text (plans, cards, ``kfbot plan``)."""
        return dryrun.render(action, params)

    def scan_unmanaged(self) -> tuple[UnmanagedGroup, ...] | None:
        """``/kf workspace scan``: what exists that the bot does not manage, grouped by likely
        workspace (reads only); None without a cluster (dry run)."""
        if self._parts is None:
            return None
        from provisioning.discovery import Discoverer

        parts = self._parts
        return Discoverer(self.db, self.core, parts.kubeflow, parts.dex, parts.aws).scan()

    def workspaces(self, owner: str | None = None) -> list[WorkspaceRecord]:
        with self.db.uow() as uow:
            return uow.registry.list_workspaces(owner=owner)

    def workspace_view(self, name: str, *, live: bool = True) -> WorkspaceView | None:
        """The registry row with its grants and, when ``live`` (and the provisioner is live), the
        cluster's state and the drift; ``live=False`` reads the database only (authorization)."""
        with self.db.uow() as uow:
            row = uow.registry.get_workspace(name)
            if row is None:
                return None
            grants = tuple(uow.registry.grants(name))
        view = WorkspaceView(record=row, grants=grants)
        if live and self._live is not None:
            state = self._live.workspace_state(row.namespace)
            drift = _drift({g.user: g.role for g in grants}, dict(state.contributors), row.owner, state.owner)
            view = replace(view, live=state, drift=tuple(drift))
        return view

    def contributors(self, workspace: str, *, view: WorkspaceView | None = None) -> list[Contributor]:
        """``view``: this workspace's ``workspace_view``, when the caller already read it."""
        view = view if view is not None else self.workspace_view(workspace)
        if view is None:
            return []
        live = dict(view.live.contributors) if view.live is not None else None
        recorded = {g.user for g in view.grants}
        rows = [
            Contributor(
                workspace=g.workspace,
                user=g.user,
                role=g.role,
                expires_at=g.expires_at,
                in_cluster=None if live is None else g.user in live,
            )
            for g in view.grants
        ]
        if live is not None:
            rows += [
                Contributor(workspace=workspace, user=user, role=role, in_cluster=True, recorded=False)
                for user, role in live.items()
                if user not in recorded
            ]
        return rows

    def people(self) -> list[Person]:
        """Everyone the bot gave access to (owners, grantees, token holders), for offboarding."""
        with self.db.uow() as uow:
            return uow.registry.people()

    def record_slack_id(self, user: str, slack_id: str) -> None:
        """``user``'s Slack id, found by email where their grants recorded none."""
        with self.db.uow() as uow:
            uow.registry.record_slack_id(user, slack_id)
            uow.commit()

    def tokens(self, requester_id: str) -> list[TokenRecord]:
        now = self.clock.now()
        with self.db.uow() as uow:
            return [t for t in uow.registry.tokens_of(requester_id) if t.expires_at > now]

    def kept_by_steps(self, request_id: str) -> tuple[str, ...]:
        """What a request's steps kept rather than lose data (``StepOutcome.kept``), in step order."""
        with self.db.uow() as uow:
            records = uow.work.steps(request_id)
        ordered = sorted(records, key=lambda r: r.idx)
        return tuple(item for r in ordered if r.outcome is not None for item in r.outcome.kept)

    def pending_expiry(self, request_id: str) -> datetime | None:
        """When a pending request expires if no admin decides (its ``request.expire`` timer);
        None when it has no such timer (decided, or not waiting for an admin)."""
        with self.db.uow() as uow:
            return uow.work.pending_due("request.expire", request_id)

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> requests: one GROUP BY (``kfbot_requests`` on /metrics)."""
        return count_requests(self.db)

    # -- cost control ----------------------------------------------------------------------------
    def gpu_inventory(self, idle_window: timedelta) -> Inventory:
        """One scan of the GPU nodegroups, nodes, GPU pods and Notebooks, with notebook activity and
        (when configured) Prometheus utilisation over ``idle_window`` (``provisioning.gpu_scan``).
        Nodegroups map to workspaces through the registry (the nodegroups the bot made for each);
        the others are unattributed. Dry-run has no cluster: an empty inventory that says so."""
        if self.mode != "live":
            return Inventory(taken_at=self.clock.now(), region=self.settings.aws_region,
                             notes=("Dry-run mode has no cluster to scan.",))
        from provisioning.gpu_scan import nodegroup_workspaces

        records = [(w.name, w.created) for w in self.workspaces()]
        mapping = nodegroup_workspaces(records, self.core.workspace.cluster, ActionName.NODEGROUP)
        return self._scanner().scan(idle_window, mapping)

    def _scanner(self) -> GpuScanner:
        with self._scanner_lock:
            if self._gpu_scanner is None:
                from provisioning.gpu_scan import GpuScanner

                self._gpu_scanner = GpuScanner(
                    self._live_parts().kube.api,
                    region=self.settings.aws_region,
                    cluster=self.core.workspace.cluster,
                    probe=self.settings.cost,
                    clock=self.clock,
                    aws_endpoint_url=self.settings.aws_endpoint_url,
                    notebook_url=self._notebook_url,
                )
            return self._gpu_scanner

    # -- kfbot doctor ----------------------------------------------------------------------------
    def doctor(self, *, live: bool) -> checks.DoctorReport:
        """The database checks, and with ``live`` the Kubernetes, Kubeflow, Dex, identity and AWS
        checks (on the live adapters; in dry-run they are made for the occasion, touching nothing)."""
        results = checks.check_database(self.db)
        if live:
            results += checks.run_live_checks(self.settings, self.core.workspace, self._live_parts)
        else:
            results.append(checks.skipped_live_checks(self.mode))
        return checks.DoctorReport(tuple(results))

    def _live_parts(self) -> checks.LiveParts:
        if self._parts is None:
            self._parts = _live_parts(self.settings, self.clock, self.db, self._kube_api, self._notebook_url)
        return self._parts

    def readiness(self) -> dict[str, object]:
        status: dict[str, object] = {"provisioner": self.mode}
        try:
            self.db.check_migrated()
            status.update(database=True, migrated=True)
        except Exception as exc:  # readiness reports, it does not raise
            status.update(
                database=False, migrated=False, problem=getattr(exc, "user_message", type(exc).__name__)
            )
        return status

    def close(self) -> None:
        self._leader.release()
        self.db.dispose()


def _node_usage(
    inventory: Inventory, observation: idle.Observation, overrides: Mapping[str, float]
) -> list[NodeUsage]:
    """Every node of a GPU nodegroup this scan saw, idle when signal 1 holds for it."""
    empty = {r.key for r in observation.upsert if r.signal == "empty-node"}
    groups = {g.name: g for g in inventory.nodegroups if g.gpus_per_node > 0}
    out = []
    for node in inventory.nodes:
        group = groups.get(node.nodegroup)
        if group is None:
            continue
        itype = node.instance_type or group.instance_type
        out.append(
            NodeUsage(
                node=node.name,
                nodegroup=node.nodegroup,
                workspace=group.workspace,
                instance_type=itype,
                idle=idle.node_key(node.nodegroup, node.name) in empty,
                hourly_usd=prices.hourly_price(inventory.region, itype, overrides),
                created_at=node.created_at,
            )
        )
    return out


def _month(ledger: UsageLedger, now: datetime) -> tuple[MonthUsage, ...]:
    """GPU node time per workspace since the first of ``now``'s UTC month."""
    today = now.astimezone(UTC).date()
    totals: dict[str | None, list[float]] = {}
    for day in ledger.days(today.replace(day=1), today + timedelta(days=1)):
        acc = totals.setdefault(day.workspace, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate((day.seconds, day.idle_seconds, day.usd, day.idle_usd)):
            acc[i] += value
    return tuple(
        MonthUsage(ws, acc[0] / 3600, acc[1] / 3600, acc[2], acc[3])
        for ws, acc in sorted(totals.items(), key=lambda kv: kv[0] or "\uffff")
    )


def _scaling(config: object) -> Scaling | None:
    """EKS's ``scalingConfig`` (or the registry's record of it) as bounds; None when absent."""
    if not isinstance(config, Mapping):
        return None
    low, high, desired = config.get("minSize"), config.get("maxSize"), config.get("desiredSize")
    if not isinstance(low, int) or not isinstance(high, int):
        return None
    return Scaling(low, high, desired if isinstance(desired, int) else None)


def _drift(recorded: dict[str, str], live: dict[str, str], owner: str, live_owner: str | None) -> list[str]:
    notes = [
        f"{u} has {r} access in the cluster but not in the audit log (added by hand?)"
        for u, r in live.items()
        if u not in recorded
    ]
    notes += [
        f"{u} should have {r} access but the cluster has {live.get(u, 'none')}"
        for u, r in recorded.items()
        if live.get(u) != r
    ]
    if live_owner not in (None, owner):
        notes.append(f"the Profile owner is {live_owner}, the bot recorded {owner}")
    return notes


def build_backend(
    settings: ProvisioningSettings,
    core: CoreSettings,
    clock: Clock,
    *,
    kube_api: Any | None = None,
    metrics: Metrics | None = None,
    log_context: LogContext = no_log_context,
    notebook_url: Callable[[str, str], str] | None = None,
) -> Backend:
    """Build the backend ``settings.mode`` names. ``kube_api`` (a ``kubernetes.client.ApiClient``)
    replaces the standard kubeconfig/in-cluster discovery; tests point it at a fake apiserver.
    ``metrics`` (default: unregistered) receives step, sweep and request-count observations;
    ``log_context`` binds a request's correlation id around its processing (``bot.logging.bound``);
    ``notebook_url`` (``(namespace, name) -> base URL``) replaces the notebook Services' cluster DNS
    names for the GPU scan's activity reads (tests point it at a fake Jupyter server)."""
    db = Database(settings.database_url, audit_key=settings.audit_key, now=clock.now)
    metrics = metrics or Metrics()
    if settings.mode != "live":
        backend = Backend(
            settings,
            core,
            clock,
            db,
            dryrun.registry(),
            RegistryFacts(db, clock),
            DryRunSecrets(),
            None,
            metrics=metrics,
            log_context=log_context,
            kube_api=kube_api,
        )
    else:
        backend = _build_live(settings, core, clock, db, kube_api, metrics, log_context, notebook_url)
    metrics.watch_requests(backend.request_counts)
    return backend


def _dex_restart_requester(db: Database, ref: str) -> RestartRequester:
    """The Dex actions' ``RestartRequester`` over the timers table: one pending
    ``provisioning.dex.restart`` row per Deployment, moved by each new write."""
    from provisioning.dex import RESTART_TIMER

    def request_restart(due_at: datetime, *, move: bool) -> None:
        with db.uow() as uow:
            if move or uow.timers.pending_payload(RESTART_TIMER, ref) is None:
                uow.timers.schedule(RESTART_TIMER, ref, due_at, {})
                uow.commit()

    return request_restart


def _notebook_probe(
    api: Any, settings: ProvisioningSettings, clock: Clock, notebook_url: Callable[[str, str], str] | None
) -> Callable[[str, str, timedelta], NotebookActivity]:
    """The auto-stop guard's read of a notebook server: the scan's own probe (``GpuScanner``,
    which reads nothing until asked)."""
    from provisioning.gpu_scan import GpuScanner

    scanner = GpuScanner(api, region=settings.aws_region, cluster="", probe=settings.cost, clock=clock,
                         aws_endpoint_url=settings.aws_endpoint_url, notebook_url=notebook_url)
    return scanner.notebook_activity


def _live_parts(
    settings: ProvisioningSettings,
    clock: Clock,
    db: Database,
    kube_api: Any | None,
    notebook_url: Callable[[str, str], str] | None = None,
) -> checks.LiveParts:
    # Imported here so the dry-run default (the local shell) never loads the cloud SDKs.
    from provisioning.aws import AwsActions, AwsSettings
    from provisioning.dex import DexActions
    from provisioning.k8s import Kube, api_client_from_environment
    from provisioning.kubeflow import KubeflowActions
    from provisioning.store import DbLock

    api = kube_api if kube_api is not None else api_client_from_environment()
    kubeflow = KubeflowActions(
        api,
        settings.kubeflow,
        clock,
        settings.cost.bot_principal,
        _notebook_probe(api, settings, clock, notebook_url),
    )
    return checks.LiveParts(
        kube=Kube(api),
        kubeflow=kubeflow,
        dex=DexActions(
            api,
            settings.dex,
            clock,
            request_restart=_dex_restart_requester(db, f"{settings.dex.namespace}/{settings.dex.deployment}"),
        ),
        aws=AwsActions(
            AwsSettings(region=settings.aws_region, endpoint_url=settings.aws_endpoint_url),
            clock,
            DbLock(db),
            profile_names=lambda: [profile[0] for profile in kubeflow.profiles()],
        ),
    )


def _build_live(
    settings: ProvisioningSettings,
    core: CoreSettings,
    clock: Clock,
    db: Database,
    kube_api: Any | None,
    metrics: Metrics,
    log_context: LogContext,
    notebook_url: Callable[[str, str], str] | None = None,
) -> Backend:
    from provisioning.dex import RESTART_TIMER
    from provisioning.discovery import Discoverer
    from provisioning.secrets import Secrets

    parts = _live_parts(settings, clock, db, kube_api, notebook_url)
    kubeflow, dex, aws = parts.kubeflow, parts.dex, parts.aws
    discoverer = Discoverer(db, core, kubeflow, dex, aws)
    actions: ActionRegistry = {**kubeflow.registry(), **dex.registry(), **aws.registry()}
    secrets = Secrets(parts.kube.api, settings.kubeflow, dex, clock, settings.dex.bcrypt_cost)
    facts = RegistryFacts(
        db,
        clock,
        kubeflow,
        discoverer,
        data=_LiveData(kubeflow, aws),
        logins=None if settings.dex.mode == "external" else dex,
    )
    backend = Backend(
        settings,
        core,
        clock,
        db,
        actions,
        facts,
        secrets,
        kubeflow,
        metrics=metrics,
        log_context=log_context,
        parts=parts,
        kube_api=kube_api,
        timer_handlers={RESTART_TIMER: dex.restart_timer},
        notebook_url=notebook_url,
    )
    facts.orphans = backend.orphan_targets
    return backend


def _recorded_objects(rows: Iterable[WorkspaceRecord]) -> dict[str, set[str]]:
    """What the given workspaces record, made or adopted, by drift orphan kind: bucket and
    nodegroup names, the buckets their IAM entries grant (``iam``), Dex login emails."""
    held: dict[str, set[str]] = {"bucket": set(), "nodegroup": set(), "iam": set(), "dex": set()}
    for row in rows:
        for entry in row.created.values():
            params = as_object(entry.get("params") or {})
            action = entry.get("action")
            if action == ActionName.BUCKET:
                held["bucket"].add(str(params.get("bucket")))
                held["iam"].add(str(params.get("bucket")))
            elif action == ActionName.NODEGROUP:
                held["nodegroup"].add(str(params.get("name")))
            elif action == ActionName.IAM_RESOURCES:
                for arn in as_list(params.get("resources") or []):
                    bucket = str(arn).removeprefix("arn:aws:s3:::").split("/", 1)[0]
                    if str(arn).startswith("arn:aws:s3:::") and bucket:
                        held["iam"].add(bucket)
            elif action == ActionName.DEX_USER:
                held["dex"].add(str(params.get("email") or "").lower())
    return held


class _LiveData:
    """A transfer card's sizes: volumes from the cluster, bytes from S3."""

    def __init__(self, kubeflow: Any, aws: Any) -> None:
        self._kubeflow, self._aws = kubeflow, aws

    def data_held(self, namespace: str, bucket: str | None) -> DataHeld:
        pvcs, pvc_bytes = self._kubeflow.pvc_storage(namespace)
        size = self._aws.bucket_bytes(bucket) if bucket else None
        return DataHeld(pvcs=pvcs, pvc_bytes=pvc_bytes, bucket=bucket,
                        bucket_bytes=None if size is None else size[0],
                        bucket_more=bool(size and size[1]))


def generate_audit_key() -> bytes:
    return pysecrets.token_bytes(32)
