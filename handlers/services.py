"""Use cases: one function per thing a person (or a timer) does with a request.

Each function opens one unit of work, loads what it needs, lets the aggregate decide, writes with
the version it read, appends the resulting events to the audit log in the same transaction, and
only after the commit tells people (the notifier). A lost race surfaces as ``AlreadyDone`` with
what happened instead, never as a second decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from handlers import drift, errors, kinds, naming, policy
from handlers.cost import autostop
from handlers.errors import SubjectBusy
from handlers.kinds import PlanContext, RequestKind
from handlers.model import OPEN_STATES, SYSTEM, WORK_STATES, Actor, Event, EventType, Request, RequestState
from handlers.notifications import STEP_EVENTS
from handlers.plan import JSON, Plan, canonical_json
from handlers.ports import (
    Clock,
    Facts,
    Notifier,
    RevealedSecret,
    SecretIssuer,
    Timers,
    UnitOfWork,
    UnitOfWorkFactory,
)
from handlers.settings import CoreSettings

_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: ids are read aloud and retyped
SYSTEM_RETRY = timedelta(minutes=5)
"""How long an expiry waits when another request about the same grant/quota is being applied."""
log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "R" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))


@dataclass(frozen=True)
class Core:
    """Everything the use cases need, wired once by the composition root."""

    settings: CoreSettings
    uow: UnitOfWorkFactory
    facts: Facts
    clock: Clock
    notifier: Notifier
    secrets: SecretIssuer
    new_id: Callable[[], str] = new_request_id


@dataclass(frozen=True)
class Submitted:
    request: Request
    duplicate: bool
    """True when the idempotency key was seen before: nothing new was recorded."""
    auto_reason: str | None = None


_UNREAD = ("", "")
"""``announce``'s default ``card``: not read yet, so announce reads it in a transaction of its own."""


def announce(
    uow: UnitOfWorkFactory,
    notifier: Notifier,
    clock: Clock,
    request: Request,
    events: Sequence[Event],
    card: tuple[str, str] | None = _UNREAD,
    threads: Mapping[str, str] | None = None,
) -> None:
    """Tell people about a committed change, then record where the card went and who was told.

    Runs outside any transaction: a Slack round-trip must never hold a database lock (on SQLite
    that would stall every other writer). ``card``: where the request's card is, when the caller
    read it in the transaction that made the change (a decision is then one transaction before
    Slack is called, and one after to record the delivery). ``threads``: the request's thread
    messages, read with ``card`` (the outbox claim does); left out, they are read with the card
    when a step's notice needs them.
    """
    if not events:
        return
    # Only a step's notices edit a thread message of their own; the rest need not read them.
    steps = threads is None and any(e.type in STEP_EVENTS for e in events)
    if card is _UNREAD or steps:
        with uow() as tx:
            if card is _UNREAD:
                card = tx.requests.card(request.id)
            if steps:
                threads = tx.requests.thread_messages(request.id)
    delivery = notifier.publish(request, events, card, threads)
    moved = delivery.card is not None and delivery.card != card
    if not (moved or delivery.sent or delivery.threads):
        return
    with uow() as tx:
        if moved and delivery.card is not None:
            tx.requests.set_card(request.id, *delivery.card)
        for key, ts in delivery.threads.items():
            tx.requests.set_thread_message(request.id, key, ts)
        if delivery.sent:
            tx.audit.append(
                [
                    Event(
                        EventType.NOTIFIED,
                        request.id,
                        clock.now(),
                        SYSTEM.user_id,
                        {"to": list(delivery.sent), "about": [e.type.value for e in events]},
                    )
                ]
            )
        tx.commit()


def _announce(
    core: Core, request: Request, events: Sequence[Event], card: tuple[str, str] | None = _UNREAD
) -> None:
    announce(core.uow, core.notifier, core.clock, request, events, card)


@dataclass(frozen=True)
class _Committed:
    events: list[Event]
    card: tuple[str, str] | None
    """Where the request's card is, read in the same transaction (for ``announce``)."""


def _commit(core: Core, uow: UnitOfWork, request: Request, expected_version: int) -> _Committed:
    events = request.take_events()
    uow.requests.save(request, expected_version)
    uow.audit.append(events)
    card = uow.requests.card(request.id)
    uow.commit()
    return _Committed(events, card)


def build_plan(core: Core, kind: RequestKind, request_id: str) -> Plan:
    return kind.plan(PlanContext(core.settings, core.facts, request_id))


def preview(core: Core, actor: Actor, kind: RequestKind) -> tuple[Plan, str | None]:
    """The plan and the auto-apply reason, without recording anything (``kfbot plan``)."""
    kind = kinds.complete(kind, actor, core.facts, core.settings)
    policy.check_may_request(kind, actor, core.facts, core.settings)
    return build_plan(core, kind, "RPREVIEW"), policy.auto_apply_reason(
        kind, actor, core.facts, core.settings
    )


def submit(
    core: Core,
    actor: Actor,
    kind: RequestKind,
    *,
    idempotency_key: str | None,
    correlation_id: str = "",
    recorded: Callable[[Submitted], None] | None = None,
) -> Submitted:
    """Record the request, then announce it. ``recorded`` is called once it is committed and before
    anyone is told: the requester's answer goes first, so it never waits behind the admin card,
    which Slack paces at about one message a second per channel."""
    kind = kinds.complete(kind, actor, core.facts, core.settings)
    policy.check_may_request(kind, actor, core.facts, core.settings)
    reason = policy.auto_apply_reason(kind, actor, core.facts, core.settings)
    auto = None if reason is None else AutoDecision(policy.auto_rule(kind), reason)
    return _record(core, actor, kind, idempotency_key, auto, correlation_id, recorded)


@dataclass(frozen=True)
class AutoDecision:
    """Why a request applies without an admin, as the audit log records it: the policy rule, the
    words for people, and for the bot's own decisions what triggered them (a timer, a cascade)."""

    rule: str
    reason: str
    trigger: str | None = None


def _record(
    core: Core,
    actor: Actor,
    kind: RequestKind,
    idempotency_key: str | None,
    auto: AutoDecision | None,
    correlation_id: str,
    recorded: Callable[[Submitted], None] | None = None,
) -> Submitted:
    if idempotency_key is not None:
        with core.uow() as uow:
            seen = uow.requests.find_by_key(idempotency_key)
        if seen is not None:
            return _told(Submitted(seen, duplicate=True), recorded)
    request_id = core.new_id()
    plan = build_plan(core, kind, request_id)
    now = core.clock.now()
    request = Request(
        id=request_id,
        kind=kind.KIND,
        args=kinds.to_args(kind),
        requester_id=actor.user_id,
        requester_email=actor.email,
        plan=plan,
        created_at=now,
        updated_at=now,
        correlation_id=correlation_id or request_id,
        subject=kind.subject(),
    )
    request.events.append(
        Event(
            EventType.CREATED,
            request_id,
            now,
            actor.user_id,
            {
                "kind": kind.KIND,
                "args": request.args,
                "requester_email": actor.email,
                "summary": kind.describe(),
                "plan": plan.to_json(),
                "plan_digest": request.plan_digest,
            },
        )
    )
    if auto is not None:
        request.approve(SYSTEM, now, auto=True)
        request.reason = auto.reason
        # The audit log records why no admin was asked, beside the auto-approval itself: the
        # engine applies nothing whose authorization does not name its rule.
        last = request.events[-1]
        named: dict[str, JSON] = {"reason": auto.reason, "rule": auto.rule}
        if auto.trigger is not None:
            named["trigger"] = auto.trigger
        request.events[-1] = dataclasses.replace(last, data={**last.data, **named})
    with core.uow() as uow, _busy_as_seen_by(actor):
        # A pending request (waiting for an admin) must not hold off an expiry: otherwise anyone
        # could keep a grant alive by keeping a request about it pending. Only one being applied
        # blocks the bot's own requests, and briefly. The store's unique indexes enforce the same
        # rule against a concurrent submission that this check cannot see yet (``add``).
        _refuse_open_duplicate(
            uow, request, WORK_STATES if actor.user_id == SYSTEM.user_id else OPEN_STATES
        )
        stored = uow.requests.add(request, idempotency_key)
        if stored.id != request.id:
            return _told(Submitted(stored, duplicate=True), recorded)
        if auto is None:
            schedule_decision_timers(uow.timers, core.settings, request.id, now)
        events = request.take_events()
        uow.audit.append(events)
        uow.commit()
    submitted = _told(
        Submitted(request, duplicate=False, auto_reason=None if auto is None else auto.reason), recorded
    )
    _announce(core, request, events, None)  # just inserted: it has no card yet
    return submitted


def record_system(core: Core, kind: RequestKind, key: str, auto: AutoDecision | None) -> Submitted:
    """A request of the bot's own (offboarding): auto-applied under ``auto``'s system rule, or
    waiting for an admin when ``auto`` is None. ``key`` makes filing it again a no-op; a request
    about the same subject being applied raises ``SubjectBusy``."""
    return _record(core, SYSTEM, kind, key, auto, key)


def _told(submitted: Submitted, recorded: Callable[[Submitted], None] | None) -> Submitted:
    if recorded is not None:
        try:
            recorded(submitted)
        except Exception:  # the request is committed: failing to answer must not keep it unannounced
            log.exception("could not answer the requester of %s", submitted.request.id)
    return submitted


def schedule_decision_timers(timers: Timers, settings: CoreSettings, request_id: str, now: datetime) -> None:
    """A request waiting for an admin expires after the TTL and nudges approvers meanwhile."""
    timers.schedule("request.expire", request_id, now + settings.policy.request_ttl)
    timers.schedule("request.nudge", request_id, now + settings.policy.nudge_after)


@contextlib.contextmanager
def _busy_as_seen_by(actor: Actor) -> Iterator[None]:
    """A busy subject, told the way ``/kf requests`` would show it to ``actor``: their own request
    by id with how to withdraw it; someone else's by id and person to an admin only; to anyone
    else, that it exists, without another person's request id."""
    try:
        yield
    except SubjectBusy as exc:
        if actor.user_id == SYSTEM.user_id:
            raise
        if exc.holder_id == actor.user_id:
            text = (
                f"You already asked for this: `{exc.other_id}` is still open ({exc.other_state}). "
                f"Wait for it, or withdraw it with `/kf cancel {exc.other_id}`."
            )
        elif actor.is_admin:
            who = naming.person(exc.holder_id) if naming.is_person_id(exc.holder_id) else "another person"
            text = (
                f"`{exc.other_id}` by {who} about the same thing is still open ({exc.other_state}); "
                "it has to be decided or finished first."
            )
        else:
            text = (
                "Another person's request about the same thing is still open; try again once it "
                "has been decided."
            )
        raise SubjectBusy(exc.other_id, exc.other_state, exc.holder_id, user_message=text) from None


def _refuse_open_duplicate(uow: UnitOfWork, request: Request, states: frozenset[RequestState]) -> None:
    if request.subject is None:
        return
    newest = uow.requests.list(subject=request.subject, states=sorted(states), limit=1)
    if newest:
        raise SubjectBusy(newest[0].id, newest[0].state.value, newest[0].requester_id)


def decide(
    core: Core,
    actor: Actor,
    request_id: str,
    *,
    approve: bool,
    decision_key: str,
    reason: str = "",
    seen_version: int | None = None,
) -> Request:
    """Approve or reject. ``seen_version`` is the version the card showed: a card made stale by a
    plan change cannot approve the new plan. A reject's reason is checked before anything is read
    or recorded (``naming.free_text``)."""
    if not approve:
        if not reason.strip():
            raise errors.InvalidInput("Say why the request is rejected.", field="reason")
        reason = naming.free_text(reason, what="reason", field="reason")
    with core.uow() as uow:
        request = uow.requests.get(request_id)
        policy.check_may_decide(actor, request, core.settings, core.facts)
        if request.state is not RequestState.PENDING:
            raise errors.AlreadyDone(already_text(request))
        if seen_version is not None and seen_version != request.version:
            raise errors.AlreadyDone(
                f"The plan of {request.id} changed since this card was posted; use the new card."
            )
        if not uow.decisions.claim(decision_key, request.id):
            raise errors.AlreadyDone(already_text(request))
        before = request.version
        now = core.clock.now()
        if approve:
            request.approve(actor, now)
        else:
            request.reject(actor, reason, now)
        uow.timers.cancel("request.expire", request.id)
        uow.timers.cancel("request.nudge", request.id)
        try:
            committed = _commit(core, uow, request, before)
        except errors.StaleVersion:
            committed = None
    if committed is None:
        # Read the winner's decision in a new transaction: the failed one may still see the
        # snapshot from before it (SQLite), which would say "already pending".
        with core.uow() as uow:
            raise errors.AlreadyDone(already_text(uow.requests.get(request_id)))
    _announce(core, request, committed.events, committed.card)
    return request


def pending_decision(core: Core, actor: Actor, request_id: str) -> Request:
    """The request behind a Reject click, once the actor may decide it (before the reason modal
    opens): the same rule ``decide`` applies, so no edge repeats it."""
    if not actor.is_admin:  # before any lookup: a stranger learns nothing about the request
        raise errors.Forbidden("Only admins can approve or reject requests.")
    with core.uow() as uow:
        request = uow.requests.get(request_id)
    policy.check_may_decide(actor, request, core.settings, core.facts)
    if request.state is not RequestState.PENDING:
        raise errors.AlreadyDone(already_text(request))
    return request


def already_text(request: Request) -> str:
    decided_by = request.decided_by
    # A decider that is no user id (a row edited in the database) is left out, not an error.
    known = decided_by and decided_by != SYSTEM.user_id and naming.is_person_id(decided_by)
    who = f" by {naming.person(decided_by)}" if known and decided_by else ""
    return f"{request.id} is already {request.state.value}{who}."


def cancel(core: Core, actor: Actor, request_id: str, reason: str | None = None) -> Request:
    """``reason``: a note the card shows (the bot withdrawing a request of its own says why)."""

    def change(request: Request, now: datetime) -> None:
        request.cancel(actor, now)
        if reason is not None:
            request.reason = reason

    return _change(core, request_id, change, cancel_timers=True)


def retry(core: Core, actor: Actor, request_id: str, *, key: str | None = None) -> Request:
    """``/kf retry``: re-run stopped work under its approval. Re-running is a decision too (the
    world may have moved since the approval), so the one rule for deciding applies. ``key`` (Slack:
    ``retry:<trigger_id>``) is claimed like a decision key, so the same command delivered again
    after its work ended retries nothing, even if the request failed again meanwhile."""

    def change(request: Request, now: datetime) -> None:
        request.retry(actor, now)  # first: says which states can be retried at all
        policy.check_may_decide(actor, request, core.settings, core.facts)

    return _change(core, request_id, change, key=key)


def expire(core: Core, request_id: str) -> Request | None:
    """Timer: a request nobody decided within the TTL. A decided one is left alone."""
    try:
        return _change(core, request_id, lambda r, now: r.expire(now), cancel_timers=True)
    except errors.IllegalTransition:
        return None


def _change(
    core: Core,
    request_id: str,
    change: Callable[[Request, datetime], None],
    *,
    cancel_timers: bool = False,
    key: str | None = None,
) -> Request:
    with core.uow() as uow:
        request = uow.requests.get(request_id)
        before = request.version
        change(request, core.clock.now())
        if key is not None and not uow.decisions.claim(key, request.id):
            raise errors.AlreadyDone(f"This command was already carried out for `{request.id}`.")
        if cancel_timers:
            uow.timers.cancel("request.expire", request.id)
            uow.timers.cancel("request.nudge", request.id)
        committed = _commit(core, uow, request, before)
    _announce(core, request, committed.events, committed.card)
    return request


def nudge(core: Core, request_id: str) -> None:
    """Timer: remind approvers of a request still pending; reschedules itself."""
    with core.uow() as uow:
        request = uow.requests.get(request_id)
        if request.state is not RequestState.PENDING:
            return
        now = core.clock.now()
        event = Event(EventType.NUDGED, request.id, now, SYSTEM.user_id)
        uow.audit.append([event])
        uow.timers.schedule("request.nudge", request.id, now + core.settings.policy.nudge_after)
        uow.commit()
    _announce(core, request, [event])


def list_requests(core: Core, actor: Actor) -> list[Request]:
    """Mine (newest first); admins also see every pending request."""
    with core.uow() as uow:
        mine = uow.requests.list(requester_id=actor.user_id, limit=20)
        if not actor.is_admin:
            return mine
        pending = uow.requests.list(states=[RequestState.PENDING], limit=50)
    seen = {r.id for r in pending}
    return pending + [r for r in mine if r.id not in seen]


@dataclass(frozen=True)
class PinFiled:
    """What ``pin_all`` did for one workspace: filed ``request_id``, or skipped for ``reason``."""

    workspace: str
    request_id: str | None = None
    reason: str = ""


def pin_all(core: Core, actor: Actor, workspaces: Sequence[str]) -> list[PinFiled]:
    """``/kf workspace pin --all``: an admin files one pin request for each of ``workspaces`` whose
    bot-made GPU nodegroups lack their workspace taint (the registry says which). Each request
    waits for another admin like any other; a workspace with a request about it still open, or
    with a PodDefault the bot did not make, is skipped and reported."""
    if not actor.is_admin:
        raise errors.Forbidden("Only admins can ask to pin every workspace.")
    filed: list[PinFiled] = []
    for name in workspaces:
        ws = core.facts.workspace(name)
        if ws is None or not kinds.WorkspacePin.pending(ws):
            continue
        try:
            result = submit(core, actor, kinds.WorkspacePin(name), idempotency_key=None)
        except errors.InvalidInput as exc:
            filed.append(PinFiled(name, reason=exc.user_message))
        else:
            filed.append(PinFiled(name, request_id=result.request.id))
    return filed


def may_see_request(actor: Actor, request: Request) -> bool:
    """Who may see a request at all: its requester and the admins (``list_requests`` narrows what
    is listed; nothing shows more than this)."""
    return actor.is_admin or request.requester_id == actor.user_id


def recent_failures(core: Core, actor: Actor, limit: int = 5) -> list[Request]:
    """The newest stopped requests (failed, needs attention), for an admin's App Home; nothing
    for anyone else."""
    if not actor.is_admin:
        return []
    with core.uow() as uow:
        stopped = uow.requests.list(states=[RequestState.FAILED, RequestState.NEEDS_ATTENTION], limit=limit)
    return [r for r in stopped if may_see_request(actor, r)]


def get_request(core: Core, actor: Actor, request_id: str) -> Request:
    with core.uow() as uow:
        request = uow.requests.get(request_id)
    if not may_see_request(actor, request):
        raise errors.NotFound(f"There is no request {request_id} of yours.")
    return request


def reveal_token(core: Core, actor: Actor, request_id: str) -> RevealedSecret:
    """The requester's click on "Show token": make the token now, once, for them only."""
    with core.uow() as uow:
        request = uow.requests.get(request_id)
    if request.requester_id != actor.user_id:
        raise errors.Forbidden("Only the person who asked for this token can see it.")
    with core.uow() as uow:
        problem = policy.record_problem(request, uow.audit.trail(request.id))
    if problem is not None:
        # The row names a requester the audit log does not: someone edited it in the database.
        raise errors.Inconsistent(f"{request_id} cannot be shown: {problem}. The admins should check it.")
    if request.kind != kinds.TokenIssue.KIND or request.state is not RequestState.SUCCEEDED:
        raise errors.InvalidInput(f"{request_id} has no token to show.")
    if core.facts.token_owner(request.id) is None:
        # Revoked, expired, taken with the access that made it, or gone with its workspace: a
        # stale DM button must not mint a fresh token.
        raise errors.NotFound(
            f"The token of {request_id} was revoked; ask for a new one with `/kf token`."
        )
    # The TokenRequest is network I/O: made outside any transaction, recorded in a new one.
    secret = core.secrets.token(request)
    with core.uow() as uow:
        _record_reveal(core, uow, request.id, actor, secret)
    return secret


def reveal_password(core: Core, actor: Actor) -> RevealedSecret:
    """ "Set my password" and ``/kf password reset``: a new password for the actor's own Dex user,
    the one made for their Kubeflow user id (``KFBOT_USER_ID_MAP`` applied)."""
    user = policy.kubeflow_user(actor, core.settings)
    if core.facts.login_origin(user) is None:
        # A login an admin made by hand (a staticPasswords entry, say) is not the bot's to reset;
        # one the bot made (for an owner or a collaborator) or adopted is.
        raise errors.Forbidden(
            "kf-chatops did not make a Kubeflow login for you, so it cannot set its "
            "password; ask the platform admins."
        )
    secret = core.secrets.password(user)
    with core.uow() as uow:
        _record_reveal(core, uow, None, actor, secret)
    return secret


def _record_reveal(
    core: Core, uow: UnitOfWork, request_id: str | None, actor: Actor, secret: RevealedSecret
) -> None:
    expires = secret.expires_at.isoformat() if secret.expires_at else None
    uow.audit.append(
        [
            Event(
                EventType.SECRET_REVEALED,
                request_id,
                core.clock.now(),
                actor.user_id,
                {"kind": secret.kind, "fingerprint": secret.fingerprint, "expires_at": expires},
            )
        ]
    )
    uow.commit()


def handle_timer(core: Core, kind: str, ref: str, payload: Mapping[str, JSON]) -> None:
    """Dispatch one due timer. The kinds' timers (a grant's or a token's expiry, a quota revert)
    become system requests that auto-apply, so they take the same audited, resumable path as
    everything else; their handlers live with the kind that schedules them."""
    if kind == "request.expire":
        expire(core, ref)
        return
    if kind == "request.nudge":
        nudge(core, ref)
        return
    timer = kinds.TIMERS.get(kind) or autostop.TIMERS.get(kind)
    if timer is None:
        raise ValueError(f"unknown timer kind {kind!r}")
    if not _vouched_for(core, kind, ref, payload):
        return
    result = timer.handle(ref, payload, core.facts)
    if isinstance(result, kinds.SystemRequest):
        _system_request(core, result.kind, result.key, (timer, ref, payload))
    elif isinstance(result, kinds.TimerNotice):
        _timer_notice(core, kind, result)


def _vouched_for(core: Core, kind: str, ref: str, payload: Mapping[str, JSON]) -> bool:
    """Whether the audit log vouches for a timer row: the LATEST ``timer.scheduled`` row of its
    origin for this (kind, ref), written with the audit key, records exactly this payload, and no
    row after it records the timer's cancellation. A row inserted or edited in the database would
    otherwise make the bot file a system request (a quota "revert" to any value); vouching by any
    past scheduling would let a cancelled timer be re-inserted (an auto-stop the scan called off).
    Timers set before the bot recorded them are trusted if their origin succeeded."""
    origin = str(payload.get("request_id") or "")
    with core.uow() as uow:
        trail = uow.audit.trail(origin) if origin else []
        scheduled = [e for e in trail if e.type is EventType.TIMER_SCHEDULED]
        wanted = canonical_json({"timer": kind, "ref": ref, "payload": dict(payload)})
        if scheduled:
            vouched = _latest_scheduling_is(trail, kind, ref, wanted)
        else:
            vouched = any(e.type is EventType.SUCCEEDED for e in trail)
        if vouched:
            return True
        event = Event(
            EventType.TIMER_FIRED,
            origin if trail else None,
            core.clock.now(),
            SYSTEM.user_id,
            {"timer": kind, "ref": ref, "refused": "the audit log does not vouch for this timer"},
        )
        uow.audit.append([event])
        uow.commit()
    log.error("refused timer %s %s: the audit log does not vouch for it", kind, ref)
    return False


def _latest_scheduling_is(trail: Sequence[Event], kind: str, ref: str, wanted: str) -> bool:
    """The trail's last scheduling of (kind, ref) is ``wanted`` and nothing after it cancelled it."""
    def about(event: Event) -> bool:
        return event.data.get("timer") == kind and event.data.get("ref") == ref

    scheduled = [i for i, e in enumerate(trail) if e.type is EventType.TIMER_SCHEDULED and about(e)]
    latest = scheduled[-1] if scheduled else None
    if latest is None or canonical_json(dict(trail[latest].data)) != wanted:
        return False
    later = trail[latest + 1 :]
    return not any(e.type is EventType.TIMER_FIRED and about(e) and "cancelled" in e.data for e in later)


def _timer_notice(core: Core, timer_kind: str, notice: kinds.TimerNotice) -> None:
    """A timer that must not act: tell the people it names, the origin's requester and the admins
    why, on the request that set the timer."""
    with core.uow() as uow:
        origin = uow.requests.get(notice.origin_id)
        event = Event(
            EventType.TIMER_FIRED,
            notice.origin_id,
            core.clock.now(),
            SYSTEM.user_id,
            {
                "timer": timer_kind,
                "skipped": True,
                "message": notice.message,
                "notify": list(dict.fromkeys((*notice.notify, origin.requester_email))),
                "admins": notice.admins,
            },
        )
        uow.audit.append([event])
        uow.commit()
    _announce(core, origin, [event])


def _system_request(
    core: Core, kind: RequestKind, key: str, timer: tuple[kinds.TimerKind, str, Mapping[str, JSON]]
) -> Submitted | None:
    """Record an expiry as a request of the bot's own that applies without an admin. When a
    request about the same subject is being applied right now, the timer comes back later."""
    timer_kind = timer[0].name
    decision = AutoDecision(policy.system_rule(timer_kind), timer[0].reason, key)
    try:
        return _record(core, SYSTEM, kind, key, decision, key)
    except SubjectBusy as exc:
        _, ref, payload = timer
        with core.uow() as uow:
            uow.timers.schedule(timer_kind, ref, core.clock.now() + SYSTEM_RETRY, dict(payload))
            uow.commit()
        log.info("%s %s waits: %s", timer_kind, ref, exc.user_message)
        return None
    except (errors.InvalidInput, errors.NotFound) as exc:
        # Nothing left to expire (the grant, token or workspace is gone already).
        log.info("%s: nothing to do: %s", key, exc.user_message)
        return None


def adopt_drift(
    core: Core, actor: Actor, kind: kinds.DriftAdopt, *, idempotency_key: str, correlation_id: str = ""
) -> Submitted:
    """Adopt into the record (the drift report's button): the registry takes the cluster's state.
    Only an admin who does not benefit (neither the workspace's people nor the person whose access
    it is) may; it is filed as a system decision (``system:drift.adopt``) naming that admin, and
    changes nothing in the cluster (its plan has no step)."""
    drift.check_may_adopt(kind, actor, kind.beneficiaries(core.facts), core.settings)
    decision = AutoDecision(
        policy.system_rule(kinds.DriftAdopt.KIND),
        f"an admin adopted the cluster's state into the record ({kind.drift})",
        f"drift {kind.drift} adopted by {actor.user_id}",
    )
    return _record(core, SYSTEM, kind, idempotency_key, decision, correlation_id)
