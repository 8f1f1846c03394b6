"""The step engine: applies approved requests, one claimed request at a time per worker.

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
  the same way. ``run_until_idle`` returns when nothing is claimable *now*; ``run_forever`` polls.
* **A permanent failure compensates** completed steps in reverse, undoing only objects the bot
  created; an undo that fails leaves the request ``needs-attention`` for admins.
* **Approved == applied.** At approved -> applying the plan is rendered again; a different digest
  sends the request back to pending for a new approval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from handlers import errors, kinds, policy, services
from handlers.kinds import PlanContext
from handlers.model import Event, EventType, Request, RequestState
from handlers.plan import JSON, Step, StepOutcome, StepStatus
from handlers.ports import Clock, Facts, Notifier
from handlers.settings import CoreSettings
from provisioning.actions import REQUEST_MARK, ActionRegistry
from provisioning.metrics import CRASH, ERROR, OK, RETRY, Metrics
from provisioning.settings import EngineSettings
from provisioning.store import Database, LeaseLost, SqlUnitOfWork, StepRecord

log = logging.getLogger(__name__)


def marked(step: Step, request: Request) -> dict[str, JSON]:
    return {**step.params, REQUEST_MARK: request.id}


LogContext = Callable[[str], AbstractContextManager[Any]]
"""Binds a correlation id to every log record made inside (``bot.logging.bound``, injected by the
composition root: provisioning never imports the Slack edge)."""


def no_log_context(correlation_id: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext(correlation_id)


REMOVAL_SUFFIX = ".remove"
"""Actions named ``*.remove`` delete; their undo restores nothing."""


@dataclass(frozen=True)
class _Wait:
    """A step (or an undo) failed temporarily: the request is deferred until ``retry_at``."""

    retry_at: datetime
    reason: str


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
        done = 0
        while done < limit and self.run_once():
            done += 1
        return done

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("engine loop failed; retrying")
                busy = False
            if not busy:
                stop.wait(self.settings.poll_interval)

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
            uow.work.release(request.id, self.settings.worker_id)
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
            self._record(
                request,
                idx,
                step,
                StepStatus.RUNNING,
                attempts=attempts,
                first_failure=first_failure,
                event=self._step_event(
                    EventType.STEP_STARTED, request, {"idx": idx, "key": step.key, "action": step.action}
                ),
            )
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
        started = time.monotonic()
        try:
            outcome = self._with_heartbeat(request, lambda: action.ensure(marked(step, request)))
        except errors.TemporaryError as exc:
            self.metrics.step_attempt(step.action, time.monotonic() - started, RETRY)
            now = self.clock.now()
            first_failure = first_failure or now
            if now - first_failure >= self.settings.step_deadline:
                return self._step_failed(
                    request,
                    idx,
                    step,
                    attempts,
                    first_failure,
                    f"{exc.user_message} (still failing after {self.settings.step_deadline})",
                )
            self._record(
                request,
                idx,
                step,
                StepStatus.RUNNING,
                attempts=attempts,
                first_failure=first_failure,
                error=exc.user_message,
            )
            return _Wait(self._retry_at(now, exc, attempts), exc.user_message)
        except errors.KfError as exc:
            self.metrics.step_attempt(step.action, time.monotonic() - started, ERROR)
            return self._step_failed(request, idx, step, attempts, first_failure, exc.user_message)
        except LeaseLost:
            raise
        except Exception:
            self.metrics.step_attempt(step.action, time.monotonic() - started, CRASH)
            log.exception(
                "step %s of %s crashed",
                step.key,
                request.id,
                extra={"correlation_id": request.correlation_id},
            )
            return self._step_failed(
                request,
                idx,
                step,
                attempts,
                first_failure,
                f"an unexpected error (ref {request.correlation_id})",
            )
        self.metrics.step_attempt(step.action, time.monotonic() - started, OK)
        self._record(
            request,
            idx,
            step,
            StepStatus.DONE,
            outcome=outcome,
            attempts=attempts,
            first_failure=first_failure,
            event=self._step_event(
                EventType.STEP_SUCCEEDED, request, {"idx": idx, "key": step.key, "created": outcome.created}
            ),
        )
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
        self._record(
            request,
            idx,
            step,
            StepStatus.FAILED,
            attempts=attempts,
            first_failure=first_failure,
            error=reason,
            event=self._step_event(
                EventType.STEP_FAILED, request, {"idx": idx, "key": step.key, "error": reason}
            ),
        )
        return reason

    def _step_event(self, type_: EventType, request: Request, data: dict[str, JSON]) -> Event:
        return Event(type_, request.id, self.clock.now(), None, data)

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
            restored = outcome.created and not step.action.endswith(REMOVAL_SUFFIX)
            self._record(
                request,
                record.idx,
                step,
                StepStatus.UNDONE,
                outcome=outcome,
                attempts=record.attempts,
                event=self._step_event(
                    EventType.STEP_UNDONE, request, {"idx": record.idx, "key": step.key, "removed": True}
                )
                if restored
                else None,
            )
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
        first_failure = record.first_failure_at if undoing else None
        try:
            self._with_heartbeat(request, undo)
            return None
        except errors.TemporaryError as exc:
            now = self.clock.now()
            first_failure = first_failure or now
            if now - first_failure >= self.settings.step_deadline:
                return exc.user_message
            self._record(
                request,
                idx,
                step,
                StepStatus.DONE,
                outcome=outcome,
                attempts=attempts,
                first_failure=first_failure,
                error=f"undo: {exc.user_message}",
            )
            return _Wait(self._retry_at(now, exc, attempts), exc.user_message)
        except errors.KfError as exc:
            return exc.user_message
        except LeaseLost:
            raise
        except Exception:
            log.exception(
                "undo of %s for %s crashed",
                step.key,
                request.id,
                extra={"correlation_id": request.correlation_id},
            )
            return f"an unexpected error (ref {request.correlation_id})"

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
        event: Event | None = None,
    ) -> None:
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
            if event is not None:
                uow.audit.append([event])
            uow.commit()
        if event is not None:
            self._notify(request, [event])

    def _save(
        self,
        request: Request,
        expected_version: int,
        on_commit: Callable[[SqlUnitOfWork], None] | None = None,
    ) -> None:
        events = request.take_events()
        with self.db.uow() as uow:
            uow.work.save_claimed(request, expected_version, self.settings.worker_id, self.clock.now())
            if on_commit is not None:
                on_commit(uow)
            uow.audit.append(events)
            uow.commit()
        self._notify(request, events)

    def _notify(self, request: Request, events: list[Event]) -> None:
        services.announce(self.db.uow, self.notifier, self.clock, request, events)

    def _record_success(self, uow: SqlUnitOfWork, request: Request, now: datetime) -> None:
        """Keep the registry (workspaces, grants, tokens) and timed work in step with what was applied."""
        kind = kinds.from_args(request.kind, request.args)
        outcomes = {r.idx: r.outcome for r in uow.work.steps(request.id)}
        for timer in kind.timers_after_success(request.id, now):
            payload = dict(timer.payload)
            if isinstance(kind, kinds.QuotaChange):
                payload.update(_quota_revert(uow, timer.ref, str(payload["resource"]), request, outcomes))
            uow.timers.schedule(timer.kind, timer.ref, timer.due_at, payload)
        if isinstance(kind, kinds.QuotaChange) and kind.duration is None:
            # A lasting change (a person's, or a revert) supersedes a pending temporary one.
            for resource in kind.changes():
                uow.timers.cancel("quota.revert", kinds.quota_timer_ref(kind.workspace, resource))
        _REGISTRY_UPDATES.get(request.kind, _no_update)(uow, request, kind, outcomes, now)
        for step in request.plan.steps:
            # Token accounts removed because their holder lost access (unshare, a lowered grant).
            if step.action == "kubeflow.token_account.remove" and "token_id" in step.params:
                token_id = str(step.params["token_id"])
                uow.registry.revoke_token(token_id, now)
                uow.timers.cancel("token.expire", token_id)


Outcomes = Mapping[int, StepOutcome | None]


def _quota_revert(
    uow: SqlUnitOfWork, ref: str, resource: str, request: Request, outcomes: Outcomes
) -> dict[str, JSON]:
    """What a temporary quota change reverts at expiry: ``set`` (the value it set, to notice a
    change made since) and ``previous`` (the value to restore). Raising again while a raise is
    still temporary keeps the value from before the first one, so the revert goes all the way."""
    outcome = outcomes.get(0)
    before = dict(outcome.details.get("previous", {})) if outcome else {}
    set_to = request.plan.steps[0].params["hard"].get(resource)
    previous = {resource: before[resource]} if resource in before else {}
    pending = uow.timers.pending_payload("quota.revert", ref)
    if pending is not None and resource in (pending.get("previous") or {}):
        previous = {resource: pending["previous"][resource]}
    return {"set": {resource: set_to}, "previous": previous}


def _no_update(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    return None


def _workspace_created(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.WorkspaceCreate)
    created = {
        step.key: {"action": step.action, "params": dict(step.params)}
        for idx, step in enumerate(request.plan.steps)
        if (outcome := outcomes.get(idx)) is not None and outcome.created
    }
    profile = request.plan.steps[0]
    uow.registry.put_workspace(
        kind.name, str(profile.params["name"]), str(profile.params["owner"]), request.id, created, now
    )


def _workspace_deleted(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.WorkspaceDelete)
    uow.registry.mark_workspace_deleted(kind.name, now)
    # The namespace, and every token account in it, went with the Profile.
    uow.registry.revoke_tokens_in(kind.name, now)


def _workspace_pinned(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    """Record the pinned PodDefault and nodegroup taints over the create-time params, so the next
    ``pin --all`` passes the workspace by and the registry says what the objects are now."""
    assert isinstance(kind, kinds.WorkspacePin)
    row = uow.registry.get_workspace(kind.name)
    if row is None:
        return
    created = dict(row.created)
    for step in request.plan.steps:
        entry = created.get(step.key)
        if entry is None:
            continue
        if step.action == "kubeflow.poddefault":
            params = dict(step.params)
        else:
            params = {**entry["params"], "taints": step.params["taints"]}
        created[step.key] = {**entry, "params": params}
    uow.registry.put_workspace(kind.name, row.namespace, row.owner, row.request_id, created, row.created_at)


def _granted(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.Share)
    expires = now + kind.duration if kind.duration else None
    uow.registry.put_grant(
        kind.workspace, str(request.plan.steps[0].params["user"]), kind.role, request.id, expires, now
    )
    if kind.duration is None:
        uow.timers.cancel("grant.expire", f"{kind.workspace}:{kind.user}")


def _ungranted(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.Unshare)
    uow.registry.delete_grant(kind.workspace, str(request.plan.steps[0].params["user"]))
    uow.timers.cancel("grant.expire", f"{kind.workspace}:{kind.user}")


def _token_issued(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.TokenIssue)
    params = request.plan.steps[0].params
    uow.registry.put_token(
        request.id,
        request.requester_id,
        kind.workspace,
        str(params["namespace"]),
        str(params["name"]),
        kind.role,
        list(params["audiences"]),
        now + kind.ttl,
        now,
    )


def _token_revoked(
    uow: SqlUnitOfWork, request: Request, kind: kinds.RequestKind, outcomes: Outcomes, now: datetime
) -> None:
    assert isinstance(kind, kinds.TokenRevoke)
    uow.registry.revoke_token(kind.token_id, now)
    uow.timers.cancel("token.expire", kind.token_id)


_REGISTRY_UPDATES: Mapping[
    str, Callable[[SqlUnitOfWork, Request, kinds.RequestKind, Outcomes, datetime], None]
] = {
    kinds.WorkspaceCreate.KIND: _workspace_created,
    kinds.WorkspaceDelete.KIND: _workspace_deleted,
    kinds.WorkspacePin.KIND: _workspace_pinned,
    kinds.Share.KIND: _granted,
    kinds.Unshare.KIND: _ungranted,
    kinds.TokenIssue.KIND: _token_issued,
    kinds.TokenRevoke.KIND: _token_revoked,
}
