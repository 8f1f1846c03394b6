"""Who is told what about a committed change of a request: one pure function, ``route``.

The Slack and shell notifiers (``bot/notify.py``) are transports: they render each ``Notice``
(Block Kit or text) and deliver it, and decide nothing about audiences. A notice carries
structure (who, what kind of message, the request, the event), never markup.

Where a request kind changes who is told or what they may press, the decision is keyed by the
kind's name in the small tables below (``SECRET_BUTTONS``, ``ACCESS_CHANGES``, ``KEEPS_DATA``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from handlers import kinds
from handlers.model import SYSTEM, Event, EventType, Request, RequestState


class Audience(StrEnum):
    ADMINS = "admin channel"
    """The admin channel, outside any card."""
    CARD = "card"
    """The request's approval card in the admin channel."""
    THREAD = "thread"
    """The card's thread."""
    REQUESTER = "requester"
    """A DM to the requester (never the bot itself)."""
    PERSON = "person"
    """A DM to someone named by email (``Notice.to``)."""


class Say(StrEnum):
    CARD_POSTED = "card.posted"
    CARD_SUPERSEDED = "card.superseded"
    """The plan changed after approval: the old card says so; a new card follows."""
    CARD_UPDATED = "card.updated"
    PROGRESS = "progress"
    """One line about ``Notice.event``."""
    DECISION = "decision"
    REPLANNED = "replanned"
    RESULT = "result"
    MADE_FOR_YOU = "made_for_you"
    """A workspace made for an owner other than its requester."""
    PASSWORD_OFFERED = "password_offered"  # noqa: S105 (a message kind, not a secret)
    """An admin let this person set a new password (``password.reset``)."""
    ACCESS_CHANGED = "access_changed"
    """Someone else gave or removed this person's access (``Notice.access``)."""
    TIME_LIMIT = "time_limit"
    """A request of the bot's own (an expiry) finished; for the people it concerns."""
    TIMER_MESSAGE = "timer_message"
    """A timer's own message (``Notice.message``), e.g. a quota revert skipped."""
    ADMIN_NOTE = "admin_note"
    """A refused request, or one needing attention that has no card to show it."""


class Button(StrEnum):
    SHOW_TOKEN = "show_token"  # noqa: S105 (a button, not a secret)
    SET_PASSWORD = "set_password"  # noqa: S105


class Access(StrEnum):
    GIVEN = "given"
    REMOVED = "removed"
    OWNED = "owned"


@dataclass(frozen=True)
class Notice:
    """One message to one audience.

    Attributes:
        event: the event a ``PROGRESS`` line is about.
        to: the email of a ``PERSON``.
        button: a secret the recipient may reveal with one press.
        kept: a ``RESULT`` that should list what the steps kept (read from their outcomes).
        access: for ``ACCESS_CHANGED``.
        message: a ``TIMER_MESSAGE``'s text, written by the core.
    """

    audience: Audience
    say: Say
    request: Request
    event: Event | None = None
    to: str | None = None
    button: Button | None = None
    kept: bool = False
    access: Access | None = None
    message: str | None = None


def _password_button(request: Request) -> Button | None:
    # Only a workspace whose plan makes a Dex login has a password to set.
    return Button.SET_PASSWORD if any(s.action == "dex.user" for s in request.plan.steps) else None


SECRET_BUTTONS: Mapping[str, Callable[[Request], Button | None]] = {
    kinds.TokenIssue.KIND: lambda request: Button.SHOW_TOKEN,
    kinds.WorkspaceCreate.KIND: _password_button,
    kinds.Share.KIND: _password_button,
    kinds.PasswordResetFor.KIND: lambda request: Button.SET_PASSWORD,
    kinds.WorkspaceTransfer.KIND: _password_button,
}
"""Kind -> the secret its success hands out (the requester's token; the password of the login it
made or reset, for the person ``_login_holder`` names)."""


def _login_holder(request: Request) -> str:
    """Whose login a ``SET_PASSWORD`` button is for: a new workspace's owner, a share's grantee, a
    reset's person; else the requester."""
    return str(request.args.get("owner") or _access_holder(request) or request.requester_email)


def _access_holder(request: Request) -> str:
    """The person an access change is about: a share's ``user``, a transfer's new owner ``to``."""
    return str(request.args.get("user") or request.args.get("to") or "")


ACCESS_CHANGES: Mapping[str, Access] = {
    kinds.Share.KIND: Access.GIVEN,
    kinds.Unshare.KIND: Access.REMOVED,
    kinds.WorkspaceTransfer.KIND: Access.OWNED,
}
"""Kinds whose ``user`` (or ``to``) argument is told when someone else changed their access."""
KEEPS_DATA = frozenset({kinds.WorkspaceDelete.KIND})
"""Kinds whose steps may keep data (a non-empty bucket) that the result must mention."""


def keeps_data(request: Request) -> bool:
    """Whether ``request`` removes what may hold data (``KEEPS_DATA``): its result names what was
    kept, and its failure says that what was removed stays removed (nothing is recreated)."""
    return request.kind in KEEPS_DATA

DECISIONS = frozenset({EventType.APPROVED, EventType.REJECTED, EventType.EXPIRED})
RESULTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.NEEDS_ATTENTION, EventType.REFUSED})
PROGRESS = frozenset(
    {
        EventType.APPLY_STARTED,
        EventType.STEP_STARTED,
        EventType.STEP_SUCCEEDED,
        EventType.STEP_FAILED,
        EventType.STEP_UNDONE,
        EventType.COMPENSATING,
        EventType.RETRIED,
        EventType.NUDGED,
        EventType.PLAN_CHANGED,
        *RESULTS,
    }
)
"""Events that get a line in the card's thread."""
STEP_EVENTS = frozenset(
    {EventType.STEP_STARTED, EventType.STEP_SUCCEEDED, EventType.STEP_FAILED, EventType.STEP_UNDONE}
)
"""A step's events: they share one thread message (``step_message``), posted at the start and
edited after it."""


def step_message(event: Event | None) -> str | None:
    """The thread message a step's event belongs to (``step:<idx>``), the key under which its ts
    is stored (``Delivery.threads``); None for every other line."""
    if event is None or event.type not in STEP_EVENTS:
        return None
    idx = event.data.get("idx")
    return f"step:{idx}" if isinstance(idx, int) and not isinstance(idx, bool) else None


CARD_CHANGES = frozenset(
    {
        *DECISIONS,
        *RESULTS,
        EventType.CANCELLED,
        EventType.RETRIED,
        EventType.APPLY_STARTED,
        EventType.COMPENSATING,
    }
)
"""Events after which the card shows a new state (updated once per batch)."""


def route(request: Request, events: Sequence[Event], has_card: bool) -> list[Notice]:
    """The notices for ``events`` of ``request`` (its state after them), in delivery order.
    ``has_card``: the request already has an approval card."""
    notices: list[Notice] = []
    card_changed = False

    def tell_requester(say: Say) -> None:
        if request.requester_id != SYSTEM.user_id:  # the bot's own requests have nobody to DM
            notices.append(Notice(Audience.REQUESTER, say, request))

    for event in events:
        t = event.type
        if t is EventType.CREATED and request.state is RequestState.PENDING and not has_card:
            notices.append(Notice(Audience.CARD, Say.CARD_POSTED, request))
            has_card = True
            continue
        if t is EventType.PLAN_CHANGED:
            if has_card:
                notices.append(Notice(Audience.CARD, Say.CARD_SUPERSEDED, request))
                notices.append(Notice(Audience.THREAD, Say.PROGRESS, request, event=event))
            notices.append(Notice(Audience.CARD, Say.CARD_POSTED, request))
            has_card = True
            tell_requester(Say.REPLANNED)
            continue
        card_changed = card_changed or t in CARD_CHANGES
        if has_card and t in PROGRESS:
            notices.append(Notice(Audience.THREAD, Say.PROGRESS, request, event=event))
        if t is EventType.TIMER_FIRED:
            notices.extend(_timer_message(request, event))
        if t in DECISIONS:
            tell_requester(Say.DECISION)
        elif t in RESULTS:
            notices.extend(_result(request))
            if t is EventType.REFUSED or (t is EventType.NEEDS_ATTENTION and not has_card):
                notices.append(Notice(Audience.ADMINS, Say.ADMIN_NOTE, request))
    if card_changed and has_card:
        notices.append(Notice(Audience.CARD, Say.CARD_UPDATED, request))
    return notices


def _timer_message(request: Request, event: Event) -> list[Notice]:
    message = event.data.get("message")
    if not isinstance(message, str) or not message:
        return []
    notices = [
        Notice(Audience.PERSON, Say.TIMER_MESSAGE, request, to=email, message=message)
        for email in kinds.people_to_tell(event.data)
    ]
    if event.data.get("admins"):
        notices.append(Notice(Audience.ADMINS, Say.TIMER_MESSAGE, request, message=message))
    return notices


def _result(request: Request) -> list[Notice]:
    succeeded = request.state is RequestState.SUCCEEDED
    kept = succeeded and keeps_data(request)
    secret = SECRET_BUTTONS.get(request.kind)
    button = secret(request) if succeeded and secret is not None else None
    holder = _login_holder(request)
    access = ACCESS_CHANGES.get(request.kind)
    # A password button goes to the person whose login it is, never to a requester acting for them.
    theirs = button if button is Button.SET_PASSWORD and holder != request.requester_email else None
    user = _access_holder(request)
    # A share or transfer that made the person's login hands them its button with the news.
    change = (
        [Notice(Audience.PERSON, Say.ACCESS_CHANGED, request, to=user, access=access, button=theirs)]
        if succeeded and access is not None and user and user != request.requester_email
        else []
    )
    if request.requester_id == SYSTEM.user_id:
        # Offboarding hands a left owner's workspace over as the bot: its new owner still hears.
        told = kinds.people_to_tell(request.args)
        limits = [Notice(Audience.PERSON, Say.TIME_LIMIT, request, to=email) for email in told]
        return [*limits, *(change if access is Access.OWNED else [])]
    notices: list[Notice]
    if theirs is None:
        notices = [Notice(Audience.REQUESTER, Say.RESULT, request, kept=kept, button=button)]
    else:
        notices = [Notice(Audience.REQUESTER, Say.RESULT, request, kept=kept)]
        if request.kind == kinds.PasswordResetFor.KIND:
            notices.append(Notice(Audience.PERSON, Say.PASSWORD_OFFERED, request, to=holder, button=theirs))
        elif access is None:
            notices.append(Notice(Audience.PERSON, Say.MADE_FOR_YOU, request, to=holder, button=theirs))
    return [*notices, *change]
