"""The request aggregate and its state machine.

Invariants, enforced here and nowhere else:

* a request moves only along ``TRANSITIONS``; anything else raises ``IllegalTransition``;
* nobody decides their own request;
* the plan that is applied is the plan that was approved: at approved -> applying the caller
  passes the digest of the plan rendered *now*; if it differs, the request goes back to pending
  with the new plan and its approval cleared;
* every change bumps ``version``; the repository writes only if the version it read is still
  current, so of two admins approving at once exactly one wins (``StaleVersion`` for the other).

Each change appends an ``Event``; the service layer hands them to the audit log and notifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from handlers import errors
from handlers.plan import JSON, Plan


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    APPLYING = "applying"
    SUCCEEDED = "succeeded"
    COMPENSATING = "compensating"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs-attention"


S = RequestState
TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    S.PENDING: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED, S.EXPIRED}),
    # -> needs-attention: the engine refuses work whose audit trail does not authorize its plan.
    S.APPROVED: frozenset({S.APPLYING, S.PENDING, S.CANCELLED, S.NEEDS_ATTENTION}),
    S.APPLYING: frozenset({S.SUCCEEDED, S.COMPENSATING, S.NEEDS_ATTENTION}),
    S.COMPENSATING: frozenset({S.FAILED, S.NEEDS_ATTENTION}),
    # /kf retry: an admin sends a failed or stuck request through apply again (steps are idempotent);
    # only from these two states (``Request.retry``), never from pending: a retry is not an approval.
    S.FAILED: frozenset({S.APPROVED}),
    S.NEEDS_ATTENTION: frozenset({S.APPROVED}),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
    S.SUCCEEDED: frozenset(),
}
OPEN_STATES = frozenset({S.PENDING, S.APPROVED, S.APPLYING, S.COMPENSATING})
"""States in which a request still holds its subject (a workspace name, a grant)."""
WORK_STATES = frozenset({S.APPROVED, S.APPLYING, S.COMPENSATING})
"""States the provisioning worker picks up."""
RETRYABLE_STATES = frozenset({S.FAILED, S.NEEDS_ATTENTION})
"""States ``/kf retry`` takes a request from: work that ran under an approval and stopped."""


class EventType(StrEnum):
    CREATED = "request.created"
    AUTO_APPROVED = "request.auto_approved"
    APPROVED = "request.approved"
    REJECTED = "request.rejected"
    CANCELLED = "request.cancelled"
    EXPIRED = "request.expired"
    PLAN_CHANGED = "request.plan_changed"
    APPLY_STARTED = "request.apply_started"
    SUCCEEDED = "request.succeeded"
    COMPENSATING = "request.compensating"
    FAILED = "request.failed"
    NEEDS_ATTENTION = "request.needs_attention"
    RETRIED = "request.retried"
    REFUSED = "request.refused"
    """The engine found no authorization of the current plan in the audit trail and applied nothing."""
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_UNDONE = "step.undone"
    NUDGED = "request.nudged"
    NOTIFIED = "notification.sent"
    SECRET_REVEALED = "secret.revealed"  # noqa: S105 (an event name, not a secret)
    TIMER_FIRED = "timer.fired"
    TIMER_SCHEDULED = "timer.scheduled"
    """A kind's timer set when its request succeeded: the record that vouches for the timer row."""


@dataclass(frozen=True)
class Event:
    type: EventType
    request_id: str | None
    at: datetime
    actor: str | None = None
    data: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Actor:
    """Who is acting: a Slack user (or a shell persona) with their lowercased Kubeflow email."""

    user_id: str
    email: str
    is_admin: bool = False


SYSTEM = Actor(user_id="kfbot", email="kfbot@system", is_admin=True)
REFUSED_PREFIX = "Refused: "
"""Starts the error of a request the engine refused to apply (``Request.refuse``)."""


@dataclass
class Request:
    id: str
    kind: str
    args: Mapping[str, JSON]
    requester_id: str
    requester_email: str
    plan: Plan
    created_at: datetime
    state: RequestState = RequestState.PENDING
    version: int = 0
    plan_digest: str = ""
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    error: str | None = None
    correlation_id: str = ""
    updated_at: datetime | None = None
    subject: str | None = None
    """What the request is about (``RequestKind.subject``): at most one open request holds it."""
    events: list[Event] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.plan_digest:
            self.plan_digest = self.plan.digest()

    # -- decisions ---------------------------------------------------------------------------
    def approve(self, actor: Actor, at: datetime, *, auto: bool = False) -> None:
        if not auto and actor.user_id == self.requester_id:
            raise errors.Forbidden("You cannot approve your own request.")
        self._move(RequestState.APPROVED, at)
        self.decided_by, self.decided_at = actor.user_id, at
        self._emit(
            EventType.AUTO_APPROVED if auto else EventType.APPROVED,
            at,
            actor.user_id,
            {"plan_digest": self.plan_digest},
        )

    def reject(self, actor: Actor, reason: str, at: datetime) -> None:
        if actor.user_id == self.requester_id:
            raise errors.Forbidden("You cannot reject your own request; use `/kf cancel` instead.")
        self._move(RequestState.REJECTED, at)
        self.decided_by, self.decided_at, self.reason = actor.user_id, at, reason
        self._emit(EventType.REJECTED, at, actor.user_id, {"reason": reason})

    def cancel(self, actor: Actor, at: datetime) -> None:
        if actor.user_id != self.requester_id and not actor.is_admin:
            raise errors.Forbidden("Only the requester or an admin can cancel a request.")
        self._move(RequestState.CANCELLED, at)
        self._emit(EventType.CANCELLED, at, actor.user_id)

    def expire(self, at: datetime) -> None:
        self._move(RequestState.EXPIRED, at)
        self._emit(EventType.EXPIRED, at, SYSTEM.user_id)

    # -- apply -------------------------------------------------------------------------------
    def begin_apply(self, current: Plan, at: datetime) -> bool:
        """Start applying if ``current`` is the approved plan; else return to pending with it.

        Returns True when the request is now applying.
        """
        if self.state is RequestState.APPROVED and current.digest() != self.plan_digest:
            old = self.plan_digest
            self._move(RequestState.PENDING, at)
            self.plan, self.plan_digest = current, current.digest()
            self.decided_by = self.decided_at = None
            self._emit(EventType.PLAN_CHANGED, at, SYSTEM.user_id, {"old": old, "new": self.plan_digest})
            return False
        self._move(RequestState.APPLYING, at)
        self._emit(EventType.APPLY_STARTED, at, SYSTEM.user_id, {"plan_digest": self.plan_digest})
        return True

    def succeed(self, at: datetime) -> None:
        self._move(RequestState.SUCCEEDED, at)
        self.error = None
        self._emit(EventType.SUCCEEDED, at, SYSTEM.user_id)

    def start_compensation(self, error: str, at: datetime) -> None:
        self._move(RequestState.COMPENSATING, at)
        self.error = error
        self._emit(EventType.COMPENSATING, at, SYSTEM.user_id, {"error": error})

    def fail(self, at: datetime) -> None:
        self._move(RequestState.FAILED, at)
        self._emit(EventType.FAILED, at, SYSTEM.user_id, {"error": self.error})

    def need_attention(self, problem: str, at: datetime) -> None:
        self._move(RequestState.NEEDS_ATTENTION, at)
        self.error = f"{self.error}; {problem}" if self.error else problem
        self._emit(EventType.NEEDS_ATTENTION, at, SYSTEM.user_id, {"error": self.error})

    def refuse(self, problem: str, at: datetime) -> None:
        """The engine's refusal to apply work nobody authorized (a direct database edit): admins
        look at it; ``retry`` only brings it back to the same check."""
        self._move(RequestState.NEEDS_ATTENTION, at)
        self.error = REFUSED_PREFIX + problem
        self._emit(EventType.REFUSED, at, SYSTEM.user_id, {"error": problem, "plan_digest": self.plan_digest})

    def retry(self, actor: Actor, at: datetime) -> None:
        if not actor.is_admin:
            raise errors.Forbidden("Only an admin can retry a request.")
        if self.state not in RETRYABLE_STATES:
            # Above all not from pending: that would apply a plan no admin approved.
            raise errors.IllegalTransition(
                f"Request {self.id} is {self.state.value}; only failed or needs-attention requests "
                "can be retried."
            )
        # The approval stands as given: a retry re-runs the approved plan, it is not a new decision
        # (and must not let an admin turn their own request into one they approved).
        self._move(RequestState.APPROVED, at)
        self._emit(EventType.RETRIED, at, actor.user_id)

    # -- internals ---------------------------------------------------------------------------
    def _move(self, target: RequestState, at: datetime) -> None:
        if target not in TRANSITIONS[self.state]:
            raise errors.IllegalTransition(
                f"Request {self.id} is {self.state.value}; it cannot become {target.value}."
            )
        self.state = target
        self.updated_at = at
        self.version += 1

    def _emit(
        self, type_: EventType, at: datetime, actor: str | None, data: Mapping[str, JSON] | None = None
    ) -> None:
        self.events.append(Event(type_, self.id, at, actor, dict(data or {})))

    def take_events(self) -> list[Event]:
        taken, self.events = self.events, []
        return taken
