"""The step engine: applies approved requests, one claimed request at a time per worker
(``Backend.start_worker`` runs ``EngineSettings.workers`` of them per process).

Why it looks like this:

* **Claims are leases.** A worker claims a request row (``claimed_by``, ``lease_until``) in a
  short transaction and a heartbeat renews the lease while a step runs (a nodegroup can take
  many minutes). Every outcome write checks the claim, so a worker that lost its lease (paused,
  partitioned) records nothing; another worker takes over once the lease has expired and resumes
  from the last recorded step.
* **Each step's outcome is committed before the next step starts**, and a RUNNING record is
  committed before its call goes out. Actions are idempotent (read, then create or patch), so
  re-running a step whose outcome was not recorded is safe. Whether the bot *created* an object
  must survive that too (compensation and delete remove only what the bot made), so the engine
  passes the request id to every action as ``params["_request"]``; actions mark what they create
  with it and report ``created=True`` when they find their own mark. That is exact across crashes
  and in-process retries, and never claims an object that existed before the request.
* **A step that must wait does not hold a worker** (kopf's ``TemporaryError(delay)``). On a
  temporary error (throttled, a rollout in progress, a namespace not there yet) the engine records
  the step RUNNING with the error, its attempts and ``first_failure_at``, then *defers* the
  request: it gives up its claim but leaves the row unclaimable until ``retry_at = now +
  max(delay, backoff(attempts))`` (``claimed_by`` NULL, ``lease_until`` = retry_at; see
  ``SqlWork.defer``), and takes other work. Backoff is capped exponential; a step still failing
  temporarily ``step_deadline`` after its persisted first failure counts as permanent. Undo waits
  the same way. ``run_until_idle`` returns when nothing is claimable *now*; ``run_forever`` waits
  for a wake-up (``provisioning.store.wakeup``) with polling as the fallback.
* **One subject at a time.** Workers run independent requests concurrently, but a request is
  claimed only at the head of its subject's queue (``SqlWork.claim_request``), so two requests
  about one workspace or grant never run at once, not even interleaved by a deferred step.
* **A permanent failure compensates** completed steps in reverse, undoing only objects the bot
  created; an undo that fails leaves the request ``needs-attention`` for admins.
* **Notices go through an outbox.** What a change is to tell people is appended to
  ``notification_outbox`` in the change's own transaction (``_notify``) and delivered afterwards
  by ``provisioning.publisher``: a step never waits on Slack's per-channel pace, and a crash after
  the commit loses no notice. ``run_until_idle`` drains it before returning.
* **Approved == applied.** At approved -> applying the plan is rendered again; a different digest
  sends the request back to pending for a new approval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from handlers import errors, kinds, policy, services
from handlers.actions import is_removal
from handlers.kinds import PlanContext
from handlers.kinds.base import (
    Applied,
    DeleteGrant,
    DeleteWorkspace,
    PutGrant,
    PutHold,
    PutToken,
    PutWorkspace,
    RegistryChange,
    RevokeToken,
    SetOwner,
    UpdateWorkspaceObjects,
)
from handlers.model import SYSTEM, Event, EventType, Request, RequestState
from handlers.plan import JSON, Step, StepOutcome, StepStatus, as_object
from handlers.ports import Clock, Facts, Notifier
from handlers.settings import CoreSettings, kubeflow_user_id
from provisioning.actions import REQUEST_MARK, ActionRegistry
from provisioning.metrics import CRASH, ERROR, OK, RETRY, Metrics
from provisioning.publisher import Publisher
from provisioning.settings import EngineSettings
from provisioning.store import Database, LeaseLost, ProvisioningUnitOfWork, StepRecord

log = logging.getLogger(__name__)


def marked(step: Step, request: Request) -> dict[str, JSON]:
    return {**step.params, REQUEST_MARK: request.id}


LogContext = Callable[[str], AbstractContextManager[Any]]
"""Binds a correlation id to every log record made inside (``bot.logging.bound``, injected by the
composition root: provisioning never imports the Slack edge)."""


def no_log_context(correlation_id: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext(correlation_id)


@dataclass(frozen=True)
class _Wait:
    """A step (or an undo) failed temporarily: the request is deferred until ``retry_at``."""

    retry_at: datetime
    reason: str


@dataclass(frozen=True)
class _Failed:
    """A step (or an undo) failed for good: ``reason`` for people, and the first failure to record."""

    reason: str
    first_failure: datetime | None


@dataclass
class _Heartbeat:
    """Renews the lease on a claimed request from a side thread while a step runs."""

    engine: Engine
    request_id: str
    lost: threading.Event
    stop: threading.Event

    def run(self) -> None:
        interval = max(self.engine.settings.lease.total_seconds() / 3, 0.05)
        while not self.stop.wait(interval):
            now = self.engine.clock.now()
            with self.engine.db.uow() as uow:
                if not uow.work.renew(
                    self.request_id, self.engine.settings.worker_id, now, now + self.engine.settings.lease
                ):
                    self.lost.set()
                    return
                uow.commit()


class Engine:
    def __init__(
        self,
        db: Database,
        actions: ActionRegistry,
        core: CoreSettings,
        facts: Facts,
        clock: Clock,
        settings: EngineSettings,
        notifier: Notifier,
        *,
        metrics: Metrics | None = None,
        log_context: LogContext = no_log_context,
    ) -> None:
        self.db, self.actions, self.core, self.facts = db, actions, core, facts
        self.clock, self.settings, self.notifier = clock, settings, notifier
        self.metrics = metrics or Metrics()
        self.log_context = log_context

    # -- loop ----------------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim one request and take it as far as it goes. False when there was nothing to do."""
        now = self.clock.now()
        with self.db.uow() as uow:
            request = uow.work.claim_request(self.settings.worker_id, now, now + self.settings.lease)
            uow.commit()
        if request is None:
            return False
        # Everything logged while this request is processed (the engine, the actions, the
        # notifier) carries its correlation id: the "ref" its requester may have been shown.
        with self.log_context(request.correlation_id or request.id):
            try:
                self._process(request)
            except LeaseLost:
                log.warning(
                    "lost the lease on %s; another worker resumes it",
                    request.id,
                    extra={"correlation_id": request.correlation_id},
                )
        return True

    def run_until_idle(self, limit: int = 1000) -> int:
        """Work until nothing is claimable now, then deliver the notices that work recorded (and
        any left over), in order: for ``kfbot shell`` and tests, which read them at once."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        self.publisher().drain()
        return done

    def publisher(self) -> Publisher:
        """A publisher of this engine's outbox, delivering through its notifier under its id."""
        return Publisher(self.db, self.notifier, self.clock, self.settings, worker_id=self.settings.worker_id)

    def run_forever(self, stop: threading.Event) -> None:
        """Work until ``stop``; when idle, wait for a wake-up (``Database.work_signal``: an
        approval here or, on PostgreSQL, in another replica) or the poll interval. Whoever sets
        ``stop`` notifies the signal so idle workers see it at once (``Backend.start_worker``)."""
        signal = self.db.work_signal
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("engine loop failed; retrying")
                busy = False
            if not busy and not stop.is_set():
                # A wake-up that came during the empty claim left its token: no wait then.
                signal.wait(self.settings.poll_interval)

    # -- one request ---------------------------------------------------------------------------
    def _process(self, request: Request) -> None:
        begun = self._authorized(request) and (
            request.state is not RequestState.APPROVED or self._begin(request)
        )
        if not begun:
            # Nothing more to do now (refused, failed, or back to pending): give the claim back at
            # once, so a new approval is taken at once, not when this lease runs out.
            self._release(request)
            return
        wait: _Wait | None = None
        if request.state is RequestState.APPLYING:
            wait = self._apply(request)
        if wait is None and request.state is RequestState.COMPENSATING:
            wait = self._compensate(request)
        if wait is None:
            self._release(request)
        else:
            # A step waits: give the request back, untouchable until its retry time, and take
            # other work meanwhile (no worker sleeps through a backoff holding a lease).
            with self.db.uow() as uow:
                uow.work.defer(request.id, self.settings.worker_id, self.clock.now(), wait.retry_at)
                uow.commit()
        if wait is not None:
            log.info(
                "%s waits until %s: %s",
                request.id,
                wait.retry_at.isoformat(),
                wait.reason,
                extra={"correlation_id": request.correlation_id, "request_id": request.id},
            )

    def _release(self, request: Request) -> None:
        with self.db.uow() as uow:
            # A request of the same subject may queue behind this one (SqlWork.claim_request):
            # wake the workers, here and in other replicas, rather than leave it to their poll.
            uow.work.release(request.id, self.settings.worker_id, wake=request.subject is not None)
            uow.commit()

    def _authorized(self, request: Request) -> bool:
        """Refuse work whose audit trail does not authorize its plan (a state set by hand in the
        database, a plan edited there): nothing is applied or undone, and admins are told."""
        with self.db.uow() as uow:
            problem = policy.authorization_problem(request, uow.audit.trail(request.id))
        if problem is None:
            return True
        log.error(
            "refused to apply %s: %s",
            request.id,
            problem,
            extra={"correlation_id": request.correlation_id, "request_id": request.id},
        )
        before = request.version
        request.refuse(
            f"{problem}. Nothing was applied. Was the database edited by hand? "
            "Check `kfbot audit verify`.",
            self.clock.now(),
        )
        self._save(request, before)
        return False

    def _begin(self, request: Request) -> bool:
        try:
            current = kinds.from_args(request.kind, request.args).plan(
                PlanContext(self.core, self.facts, request.id)
            )
        except errors.KfError as exc:
            # The world moved under the request (the name got taken, the workspace is gone):
            # nothing was applied, so it fails without compensation.
            before = request.version
            now = self.clock.now()
            request.begin_apply(request.plan, now)
            request.start_compensation(f"The plan cannot be built any more: {exc.user_message}", now)
            request.fail(now)
            self._save(request, before)
            return False
        before = request.version
        now = self.clock.now()
        started = request.begin_apply(current, now)
        # Back to pending with a new plan: it waits for an admin again, so it expires again.
        self._save(
            request,
            before,
            on_commit=None
            if started
            else lambda uow: services.schedule_decision_timers(uow.timers, self.core, request.id, now),
        )
        return started

    def _apply(self, request: Request) -> _Wait | None:
        records = {r.idx: r for r in self._steps(request.id)}
        for idx, step in enumerate(request.plan.steps):
            record = records.get(idx)
            if record is not None and record.status is StepStatus.DONE:
                continue
            result = self._run_step(request, idx, step, record)
            if isinstance(result, _Wait):
                return result
            if result is not None:
                before = request.version
                request.start_compensation(
                    f"Step {idx + 1} of {len(request.plan.steps)} "
                    f"({step.summary or step.key}) failed: {result}",
                    self.clock.now(),
                )
                self._save(request, before)
                return None
        before = request.version
        now = self.clock.now()
        request.succeed(now)
        self._save(request, before, on_commit=lambda uow: self._record_success(uow, request, now))
        return None

    def _run_step(
        self, request: Request, idx: int, step: Step, record: StepRecord | None
    ) -> _Wait | str | None:
        """One attempt at step ``idx``: None when it is DONE, the user-facing reason when it failed
        for good, a ``_Wait`` when it failed temporarily and the request is to be deferred."""
        action = self.actions.get(step.action)
        attempts = record.attempts if record else 0
        first_failure = record.first_failure_at if record else None
        if record is None or record.status is not StepStatus.RUNNING:
            self._record(request, idx, step, StepStatus.RUNNING, attempts=attempts,
                         first_failure=first_failure, event=(EventType.STEP_STARTED, {"action": step.action}))
        # else: a retry (deferred, or resumed after a crash): its RUNNING record is already there.
        if action is None:
            return self._step_failed(
                request,
                idx,
                step,
                attempts,
                first_failure,
                f"this bot has no implementation of `{step.action}`",
            )
        attempts += 1

        def wait(first_failure: datetime, message: str) -> None:
            self._record(request, idx, step, StepStatus.RUNNING, attempts=attempts,
                         first_failure=first_failure, error=message)

        result = self._attempt(request, step, lambda: action.ensure(marked(step, request)), "step",
                               attempts=attempts, first_failure=first_failure, wait=wait, metered=True)
        if isinstance(result, _Wait):
            return result
        if isinstance(result, _Failed):
            return self._step_failed(request, idx, step, attempts, result.first_failure, result.reason)
        # What a removal kept rather than lose data goes into its line ("kept: S3 bucket ...").
        done: dict[str, JSON] = {"created": result.created}
        if result.kept:
            done["kept"] = list(result.kept)
        self._record(request, idx, step, StepStatus.DONE, outcome=result, attempts=attempts,
                     first_failure=first_failure, event=(EventType.STEP_SUCCEEDED, done))
        return None

    def _step_failed(
        self,
        request: Request,
        idx: int,
        step: Step,
        attempts: int,
        first_failure: datetime | None,
        reason: str,
    ) -> str:
        self.metrics.step_failed(step.action)
        log.warning(
            "step %s (%s) of %s failed: %s",
            step.key,
            step.action,
            request.id,
            reason,
            extra={"correlation_id": request.correlation_id, "request_id": request.id},
        )
        self._record(request, idx, step, StepStatus.FAILED, attempts=attempts, first_failure=first_failure,
                     error=reason, event=(EventType.STEP_FAILED, {"error": reason}))
        return reason

    def _backoff(self, attempts: int) -> float:
        return float(min(self.settings.retry_max, self.settings.retry_initial * 2 ** (attempts - 1)))

    def _retry_at(self, now: datetime, exc: errors.TemporaryError, attempts: int) -> datetime:
        return now + timedelta(seconds=max(exc.delay, self._backoff(attempts)))

    def _with_heartbeat(self, request: Request, call: Callable[[], StepOutcome]) -> StepOutcome:
        beat = _Heartbeat(self, request.id, threading.Event(), threading.Event())
        thread = threading.Thread(target=beat.run, name=f"lease-{request.id}", daemon=True)
        thread.start()
        try:
            return call()
        finally:
            beat.stop.set()
            thread.join()

    def _compensate(self, request: Request) -> _Wait | None:
        problems: list[str] = []
        for record in sorted(self._steps(request.id), key=lambda r: r.idx, reverse=True):
            if record.status is not StepStatus.DONE or record.idx >= len(request.plan.steps):
                continue
            step = request.plan.steps[record.idx]
            outcome = record.outcome or StepOutcome(created=False)
            result = self._undo(request, record.idx, step, outcome, record) if outcome.created else None
            if isinstance(result, _Wait):
                return result
            if result is not None:
                self.metrics.undo_failed(step.action)
                log.warning(
                    "undo of step %s (%s) of %s failed: %s",
                    step.key,
                    step.action,
                    request.id,
                    result,
                    extra={"correlation_id": request.correlation_id, "request_id": request.id},
                )
                problems.append(f"{step.summary or step.key}: {result}")
                continue
            # Compensation is done with the step either way; only an undo that ran on something
            # the bot made is told as "undone" (a removal's undo restores nothing, and a step
            # that found its object had nothing to undo).
            restored = outcome.created and not is_removal(step.action)
            self._record(request, record.idx, step, StepStatus.UNDONE, outcome=outcome,
                         attempts=record.attempts,
                         event=(EventType.STEP_UNDONE, {"removed": True}) if restored else None)
        before = request.version
        now = self.clock.now()
        if problems:
            request.need_attention(
                "could not undo " + "; ".join(problems) + ". Fix it and `/kf retry " + request.id + "`.", now
            )
        else:
            request.fail(now)
        self._save(request, before)
        return None

    def _undo(
        self, request: Request, idx: int, step: Step, outcome: StepOutcome, record: StepRecord
    ) -> _Wait | str | None:
        """One attempt at undoing a DONE step: None when undone, the reason when it failed for
        good, a ``_Wait`` when it failed temporarily. An undo that waits is kept on the DONE
        record with its error set: then ``attempts`` and ``first_failure_at`` count the undo."""
        action = self.actions.get(step.action)
        if action is None:
            return f"no implementation of `{step.action}`"

        def undo() -> StepOutcome:
            action.undo(marked(step, request), outcome)
            return outcome

        undoing = record.error is not None
        attempts = (record.attempts if undoing else 0) + 1

        def wait(first_failure: datetime, message: str) -> None:
            self._record(request, idx, step, StepStatus.DONE, outcome=outcome, attempts=attempts,
                         first_failure=first_failure, error=f"undo: {message}")

        result = self._attempt(request, step, undo, "undo", attempts=attempts,
                               first_failure=record.first_failure_at if undoing else None, wait=wait,
                               metered=False)
        if isinstance(result, _Wait):
            return result
        return result.reason if isinstance(result, _Failed) else None

    def _attempt(
        self,
        request: Request,
        step: Step,
        call: Callable[[], StepOutcome],
        what: str,
        *,
        attempts: int,
        first_failure: datetime | None,
        wait: Callable[[datetime, str], None],
        metered: bool,
    ) -> StepOutcome | _Wait | _Failed:
        """The ``attempts``-th try at a step's ensure or undo (``what``), under a heartbeat, and the
        ladder both share: a temporary error is recorded by ``wait(first_failure, message)`` and
        defers the request (capped backoff) until ``step_deadline`` after its first failure, then
        counts as permanent like any ``KfError``; an unexpected error is permanent too (logged with
        its traceback); ``LeaseLost`` goes up: another worker owns the request now."""
        started = time.monotonic()

        def meter(result: str) -> None:
            if metered:
                self.metrics.step_attempt(step.action, time.monotonic() - started, result)

        try:
            outcome = self._with_heartbeat(request, call)
        except errors.TemporaryError as exc:
            meter(RETRY)
            now = self.clock.now()
            first_failure = first_failure or now
            if now - first_failure >= self.settings.step_deadline:
                return _Failed(f"{exc.user_message} (still failing after {self.settings.step_deadline})",
                               first_failure)
            wait(first_failure, exc.user_message)
            return _Wait(self._retry_at(now, exc, attempts), exc.user_message)
        except errors.KfError as exc:
            meter(ERROR)
            return _Failed(exc.user_message, first_failure)
        except LeaseLost:
            raise
        except Exception:
            meter(CRASH)
            log.exception(
                "%s of step %s of %s crashed",
                what,
                step.key,
                request.id,
                extra={"correlation_id": request.correlation_id},
            )
            return _Failed(f"an unexpected error (ref {request.correlation_id})", first_failure)
        meter(OK)
        return outcome

    # -- persistence ---------------------------------------------------------------------------
    def _steps(self, request_id: str) -> list[StepRecord]:
        with self.db.uow() as uow:
            return uow.work.steps(request_id)

    def _record(
        self,
        request: Request,
        idx: int,
        step: Step,
        status: StepStatus,
        *,
        attempts: int,
        first_failure: datetime | None = None,
        outcome: StepOutcome | None = None,
        error: str | None = None,
        event: tuple[EventType, dict[str, JSON]] | None = None,
    ) -> None:
        """Write step ``idx``'s record; ``event`` (its type and data beside the step's idx and key)
        goes to the audit log in the same transaction and is then announced."""
        events = [] if event is None else [
            Event(event[0], request.id, self.clock.now(), None, {"idx": idx, "key": step.key, **event[1]})
        ]
        with self.db.uow() as uow:
            uow.work.record_step(
                request.id,
                self.settings.worker_id,
                self.clock.now(),
                idx,
                step.key,
                step.action,
                status,
                outcome=outcome,
                error=error,
                attempts=attempts,
                first_failure_at=first_failure,
            )
            uow.audit.append(events)
            self._notify(uow, request, events)
            uow.commit()
        self._notified(events)

    def _save(
        self,
        request: Request,
        expected_version: int,
        on_commit: Callable[[ProvisioningUnitOfWork], None] | None = None,
    ) -> None:
        events = request.take_events()
        with self.db.uow() as uow:
            uow.work.save_claimed(request, expected_version, self.settings.worker_id, self.clock.now())
            if on_commit is not None:
                on_commit(uow)
            uow.audit.append(events)
            self._notify(uow, request, events)
            uow.commit()
        self._notified(events)

    def _notify(self, uow: ProvisioningUnitOfWork, request: Request, events: list[Event]) -> None:
        """Record what to announce in the transaction of the change (the outbox): applying never
        waits on Slack's pace, and a crash after the commit loses no notice. The request is
        snapshotted as it is now, so each notice shows the state it is about."""
        uow.outbox.append(request, events, self.clock.now())

    def _notified(self, events: list[Event]) -> None:
        if events:
            self.db.outbox_signal.notify()  # after the commit: the publisher must see the row

    def _record_success(self, uow: ProvisioningUnitOfWork, request: Request, now: datetime) -> None:
        """Keep the registry (workspaces, grants, tokens) and timed work in step with what was
        applied: the kind says what (``on_success``, pure), this writes it."""
        outcomes = {r.idx: r.outcome for r in uow.work.steps(request.id)}
        email = request.requester_email
        user = kubeflow_user_id(self.core, email) if email else ""
        done = Applied(request.id, request.requester_id, request.plan, outcomes, now, email, user)
        success = kinds.from_args(request.kind, request.args).on_success(done)
        for change in success.changes:
            _apply_change(uow, change, now)
        for timer in success.cancel:
            uow.timers.cancel(timer.kind, timer.ref)
        for spec in success.timers:
            payload = dict(spec.payload)
            pending = uow.timers.pending_payload(spec.kind, spec.ref) if spec.keep_pending else None
            for key in spec.keep_pending:
                if pending and pending.get(key):
                    payload[key] = pending[key]
            uow.timers.schedule(spec.kind, spec.ref, spec.due_at, payload)
            # The timers table is not keyed; this audit row is what the sweeper trusts it by.
            vouch: dict[str, JSON] = {"timer": spec.kind, "ref": spec.ref, "payload": payload}
            uow.audit.append([Event(EventType.TIMER_SCHEDULED, request.id, now, SYSTEM.user_id, vouch)])


def _apply_change(uow: ProvisioningUnitOfWork, change: RegistryChange, now: datetime) -> None:
    registry = uow.registry
    match change:
        case PutWorkspace(name, namespace, owner, made_by, created, slack_id):
            registry.put_workspace(name, namespace, owner, made_by, created, now, owner_slack_id=slack_id)
        case SetOwner(name, owner, slack_id):
            registry.set_owner(name, owner, slack_id)
        case UpdateWorkspaceObjects(name, replace, merge, add, remove):
            row = registry.get_workspace(name)
            if row is None:
                return
            created = {key: entry for key, entry in row.created.items() if key not in remove}
            created.update({key: dict(entry) for key, entry in add.items()})
            for key, params in replace.items():
                if key in created:
                    created[key] = {**created[key], "params": dict(params)}
            for key, params in merge.items():
                if key in created:
                    created[key] = {**created[key], "params": {**as_object(created[key]["params"]), **params}}
            registry.put_workspace(name, row.namespace, row.owner, row.request_id, created, row.created_at)
        case DeleteWorkspace(name):
            registry.forget_workspace(name, now)
        case PutGrant(workspace, user, role, granted_by, expires_at, slack_id):
            registry.put_grant(workspace, user, role, granted_by, expires_at, now, slack_id=slack_id)
        case DeleteGrant(workspace, user):
            registry.delete_grant(workspace, user)
        case PutToken(token_id, requester_id, workspace, namespace, account, role, audiences, expires_at):
            registry.put_token(
                token_id, requester_id, workspace, namespace, account, role, list(audiences), expires_at, now
            )
        case RevokeToken(token_id):
            registry.revoke_token(token_id, now)
        case PutHold(target, until, held_by, made_by):
            registry.put_hold(target, until, held_by, made_by, now)
