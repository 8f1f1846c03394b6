"""Notifiers: how committed changes of a request reach people (``handlers.ports.Notifier``).

Who is told what is decided once, by ``handlers.notifications.route``; the notifiers here are
transports that render its notices and deliver them. ``SlackNotifier`` posts the approval card
into the admin channel, updates it in place, threads progress under it and sends DMs (with the
"Show token" / "Set my password" buttons where a secret is to be handed out). ``ShellNotifier``
prints the same notices for ``kfbot shell`` and names the shell command where Slack would show a
button.

The port's contract is that delivery never fails a use case: the change is committed before
``publish`` runs. So every Slack call is guarded, failures are logged with the request's
correlation id and the rest of the deliveries still go out. Rate limits are retried by the
client's ``RateLimitErrorRetryHandler`` (set up in ``bot.app``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TextIO, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot import blocks, render
from bot import logging as log
from bot.payloads import Blocks, text_at
from handlers.model import Event, EventType, Request, RequestState
from handlers.notifications import Audience, Button, Notice, Say, route, step_message
from handlers.plan import JSON
from handlers.ports import Delivery

T = TypeVar("T")

logger = logging.getLogger(__name__)
Card = tuple[str, str]
StepCalls = Callable[[str, Mapping[str, JSON]], list[str]]
"""``backend.render_step``: the calls a dry-run step would make, shown under its progress line."""
Expiry = Callable[[str], datetime | None]
"""``backend.pending_expiry``: request id -> when it expires if nobody decides (shown on its card)."""
KeptBySteps = Callable[[str], Sequence[str]]
"""``backend.kept_by_steps``: request id -> what its steps kept rather than lose data."""
_FINISHED = (RequestState.SUCCEEDED, RequestState.FAILED, RequestState.NEEDS_ATTENTION)


class _Transport:
    """What both transports share: the router's notices in order, the card they are about, the
    dry-run calls under a step's line and what a delete's steps kept. ``dry_run``: the
    provisioner changes nothing, and every card, thread line and message says so."""

    style: render.Style

    def __init__(
        self,
        calls: StepCalls | None,
        kept_by_steps: KeptBySteps | None,
        *,
        dry_run: bool = False,
        dashboard_url: str | None = None,
        expiry: Expiry | None = None,
    ) -> None:
        self._calls = calls
        self._kept_by_steps = kept_by_steps
        self.dry_run = dry_run
        self.dashboard_url = dashboard_url
        self._expiry = expiry

    def _expires_at(self, request: Request) -> datetime | None:
        if self._expiry is None or request.state is not RequestState.PENDING:
            return None
        try:
            return self._expiry(request.id)
        except Exception:  # the card goes out without its expiry rather than not at all
            logger.warning("could not read when %s expires", request.id, exc_info=True)
            return None

    def _deliver_all(self, request: Request, events: Sequence[Event], card: Card | None) -> Card | None:
        """Deliver every notice; returns the card posted now, if one was."""
        posted: Card | None = None
        for notice in route(request, events, card is not None):
            current = posted or card
            if notice.say is Say.CARD_POSTED:
                posted = self._post_card(request) or posted
            elif notice.audience in (Audience.CARD, Audience.THREAD):
                if current is not None:
                    self._on_card(notice, current)
            else:
                self._tell(notice, self._text(notice))
        return posted

    def _text(self, notice: Notice) -> str:
        kept: list[str] = []
        if notice.kept and self._kept_by_steps is not None:
            kept = render.kept_at_apply(self._kept_by_steps(notice.request.id))
        return render.notice_text(
            notice, self.style, kept, dry_run=self.dry_run, dashboard_url=self.dashboard_url
        )

    def _step_calls(self, notice: Notice) -> list[str]:
        event = notice.event
        if self._calls is None or event is None or event.type is not EventType.STEP_SUCCEEDED:
            return []
        step = render.step_of(notice.request, event.data)
        return [] if step is None else self._calls(step.action, step.params)

    def _post_card(self, request: Request) -> Card | None:
        raise NotImplementedError

    def _on_card(self, notice: Notice, card: Card) -> None:
        raise NotImplementedError

    def _tell(self, notice: Notice, text: str) -> None:
        raise NotImplementedError


def _is_slack_user(user_id: str) -> bool:
    return user_id[:1] in ("U", "W")


_SLACK_BUTTONS: Mapping[Button, tuple[str, str, str]] = {
    Button.SHOW_TOKEN: (
        "Show token",
        blocks.SHOW_TOKEN,
        "\nYour token is made when you click the button, and shown once.",
    ),
    Button.SET_PASSWORD: (
        "Set my password",
        blocks.SET_PASSWORD,
        "\nSet your Kubeflow password with the button; it is shown once.",
    ),
}


class ChannelPacer:
    """Slack posts about one message per second per channel (short bursts tolerated) and answers
    429 with ``Retry-After`` past that, while the client's own retry handler gives up after two
    tries. Calls to one channel take turns in arrival order (a ticket queue, not a plain lock,
    which would let a late thread overtake), and a 429 waits ``Retry-After`` and tries again while
    keeping the turn: a burst of cards arrives complete and in order, and other channels are not
    held up. A channel still throttled after ``max_wait`` seconds gives up (logged by the caller)."""

    def __init__(self, max_wait: float = 900.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self._max_wait, self._sleep = max_wait, sleep
        self._lock = threading.Condition()
        self._tickets: dict[str, list[int]] = {}  # channel -> [next ticket, now serving]

    def call(self, channel: str, call: Callable[[], T]) -> T:
        with self._lock:
            turn = self._tickets.setdefault(channel, [0, 0])
            ticket = turn[0]
            turn[0] += 1
            while turn[1] != ticket:
                self._lock.wait()
        try:
            return self._until_accepted(call)
        finally:
            with self._lock:
                turn[1] += 1
                if turn[0] == turn[1]:
                    del self._tickets[channel]
                self._lock.notify_all()

    def _until_accepted(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._max_wait
        while True:
            try:
                return call()
            except SlackApiError as exc:
                wait = retry_after(exc)
                if wait is None or time.monotonic() + wait > deadline:
                    raise
                logger.info("Slack asked to slow down; retrying in %.0f s", wait)
                self._sleep(wait)


def retry_after(exc: SlackApiError) -> float | None:
    """Seconds Slack asked to wait (429 ``Retry-After``), or None when it is another error."""
    response = exc.response
    if response is None or response.status_code != 429:
        return None
    for name, value in (response.headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(1.0, float(raw))
            except (TypeError, ValueError):
                break
    return 1.0


class SlackNotifier(_Transport):
    style = render.SLACK

    def __init__(
        self,
        client: WebClient,
        admin_channel: str,
        find_user: Callable[[str], str | None],
        calls: StepCalls | None = None,
        kept_by_steps: KeptBySteps | None = None,
        pacer: ChannelPacer | None = None,
        *,
        dry_run: bool = False,
        dashboard_url: str | None = None,
        confirm_above: float | None = None,
        expiry: Expiry | None = None,
        seen: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(calls, kept_by_steps, dry_run=dry_run, dashboard_url=dashboard_url, expiry=expiry)
        self._confirm_above = confirm_above
        self._client = client
        self._channel = admin_channel
        self._find_user = find_user
        self._seen = seen
        """(email, Slack id) of someone whose access just changed, found to tell them
        (``bot.offboard.slack_id_recorder``: offboarding asks about that id later)."""
        self._sent = threading.local()
        self._pacer = pacer or ChannelPacer()

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: Card | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        # Listener threads and the engine publish concurrently: each call collects its own deliveries.
        self._sent.messages = []
        self._sent.threads = dict(threads or {})
        self._sent.posted = {}
        new_card: Card | None = None
        with log.bound(request.correlation_id or log.correlation_id() or request.id):
            try:
                new_card = self._deliver_all(request, events, card)
            except Exception:
                # The port forbids raising: the change is committed; a rendering bug must not
                # stop the engine or the listener. It is logged with the correlation id.
                logger.exception("could not notify about %s", request.id, extra={"request_id": request.id})
        return Delivery(card=new_card, sent=tuple(self._sent.messages), threads=dict(self._sent.posted))

    # -- delivery ------------------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: str | Blocks) -> Mapping[str, object]:
        """``WebClient.<method>(**kwargs)``'s answer, read with ``text_at`` (its shape is the
        method's); empty when the call failed (logged)."""
        channel = kwargs.get("channel")
        try:
            if method.startswith("chat_") and isinstance(channel, str):
                response = self._pacer.call(channel, lambda: getattr(self._client, method)(**kwargs))
            else:
                response = getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error", "?") if exc.response is not None else "?"
            logger.warning(
                "Slack %s failed: %s", method, error, extra={"slack_method": method, "slack_error": error}
            )
            return {}
        except (SlackClientError, OSError) as exc:
            logger.warning("Slack %s failed: %s", method, type(exc).__name__, extra={"slack_method": method})
            return {}
        if method.startswith("chat_"):
            self._sent.messages.append(f"{method}:{kwargs.get('channel', '')}")
        return dict(response.data) if isinstance(response.data, dict) else {}

    def _post_card(self, request: Request) -> Card | None:
        text, blks = blocks.card(
            request,
            dry_run=self.dry_run,
            confirm_above=self._confirm_above,
            expires_at=self._expires_at(request),
        )
        answer = self._call("chat_postMessage", channel=self._channel, text=text, blocks=blks)
        ts = text_at(answer, "ts")
        if not ts:
            return None
        return text_at(answer, "channel") or self._channel, ts

    def _on_card(self, notice: Notice, card: Card) -> None:
        if notice.audience is Audience.THREAD:
            line = self._text(notice)
            calls = "\n".join(self._step_calls(notice))
            if calls:
                line += f"\n```{render.SLACK.esc(calls)}```"
            if line:
                self._thread_line(notice, card, blocks.fallback(line))
            return
        text, blks = blocks.card(
            notice.request,
            superseded=notice.say is Say.CARD_SUPERSEDED,
            dry_run=self.dry_run,
            confirm_above=self._confirm_above,
            expires_at=self._expires_at(notice.request),
        )
        self._call("chat_update", channel=card[0], ts=card[1], text=text, blocks=blks)

    def _thread_line(self, notice: Notice, card: Card, text: str) -> None:
        """One message per plan step: its start posts it, and what becomes of the step (done,
        failed, undone) edits it in place; the ts is returned in ``Delivery.threads`` and stored,
        so a restart or another replica's publisher edits the same message. A step started again
        (a retry) gets a new message. An edit that fails (the message was deleted, or Slack could
        not be reached past the pacer's retries) posts the line again: a stale "▶" would say the
        step still runs."""
        key = step_message(notice.event)
        known: dict[str, str] = self._sent.threads
        ts = known.get(key) if key is not None else None
        started = notice.event is not None and notice.event.type is EventType.STEP_STARTED
        if ts is not None and not started and self._call("chat_update", channel=card[0], ts=ts, text=text):
            return
        answer = self._call("chat_postMessage", channel=card[0], thread_ts=card[1], text=text)
        posted = text_at(answer, "ts")
        if key is not None and posted:
            known[key] = self._sent.posted[key] = posted

    def _tell(self, notice: Notice, text: str) -> None:
        if notice.audience is Audience.ADMINS:
            self._call("chat_postMessage", channel=self._channel, text=blocks.fallback(text))
            return
        action = None
        if notice.button is not None:
            label, action_id, note = _SLACK_BUTTONS[notice.button]
            text += note
            action = (label, action_id, notice.request.id)
        if notice.audience is Audience.REQUESTER:
            self._dm(notice.request.requester_id, text, action)
            return
        user_id = self._find_user(notice.to or "")
        if user_id is None:
            logger.warning("no Slack user with the email of a person to tell", extra={"event": "notify"})
            return
        if self._seen is not None and notice.say is Say.ACCESS_CHANGED and notice.to:
            try:
                self._seen(notice.to, user_id)
            except Exception:  # recording the id must not cost the person their news
                logger.warning("could not record a Slack id", exc_info=True, extra={"event": "notify"})
        self._dm(user_id, text, action)

    def _dm(self, user_id: str, text: str, action: tuple[str, str, str] | None) -> None:
        if not _is_slack_user(user_id):
            return
        opened = self._call("conversations_open", users=user_id)
        channel = text_at(opened, "channel", "id")
        if not channel:
            return
        fallback_text, blks = blocks.dm(text, action=action)
        self._call("chat_postMessage", channel=channel, text=fallback_text, blocks=blks)


class ShellNotifier(_Transport):
    """Prints what Slack would post; buttons become the shell command that presses them."""

    style = render.SHELL

    def __init__(
        self,
        out: TextIO,
        calls: StepCalls | None = None,
        kept_by_steps: KeptBySteps | None = None,
        *,
        dry_run: bool = False,
        dashboard_url: str | None = None,
        expiry: Expiry | None = None,
    ) -> None:
        super().__init__(calls, kept_by_steps, dry_run=dry_run, dashboard_url=dashboard_url, expiry=expiry)
        self._out = out
        self._sent: list[str] = []

    def _print(self, prefix: str, text: str) -> None:
        self._sent.append(f"shell:{prefix.strip('[]').split(' ')[0]}")
        lines = text.splitlines() or [""]
        self._out.write(f"{prefix} {lines[0]}\n")
        for line in lines[1:]:
            self._out.write(f"{' ' * len(prefix)} {line}\n")
        self._out.flush()

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: Card | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        self._sent = []
        new_card = self._deliver_all(request, events, card)
        return Delivery(card=new_card, sent=tuple(dict.fromkeys(self._sent)))

    def _post_card(self, request: Request) -> Card | None:
        dry = f"({render.DRY_RUN_NOTE} Approving runs the plan as a dry run.)\n" if self.dry_run else ""
        heading = blocks.HEADINGS[request.state] + (" (dry run)" if self.dry_run else "")
        expiry = render.expiry_text(self._expires_at(request), self.style)
        self._print(
            "[admin channel]",
            f"{heading}: {self.style.esc(render.title(request))}\n"
            + dry
            + render.request_detail(request, self.style)
            + "\n"
            + (f"{expiry}\n" if expiry else "")
            + f"[View plan: show {request.id}] [Approve: approve {request.id}] "
            f"[Reject: reject {request.id} REASON]",
        )
        return ("shell", request.id)

    def _on_card(self, notice: Notice, card: Card) -> None:
        request = notice.request
        if notice.audience is Audience.THREAD:
            calls = "".join(f"\n    would: {line}" for line in self._step_calls(notice))
            self._print(f"[thread {request.id}]", self._text(notice) + calls)
        elif notice.say is Say.CARD_SUPERSEDED:
            self._print(f"[card {request.id}]", "Superseded: the plan changed; a new card follows.")
        elif request.state in _FINISHED:
            dry = " (dry run)" if self.dry_run else ""
            self._print(f"[card {request.id}]", f"{blocks.HEADINGS[request.state]}{dry}.")
        else:
            self._print(f"[card {request.id}]", render.decision_text(request, self.style))

    def _tell(self, notice: Notice, text: str) -> None:
        request = notice.request
        if notice.audience is Audience.ADMINS:
            self._print("[admin channel]", text)
            return
        if notice.button is Button.SHOW_TOKEN:
            text += f"\n[Show token: reveal {request.id}]"
        elif notice.button is Button.SET_PASSWORD:
            text += (
                "\n[Set my password: password]"
                if notice.audience is Audience.REQUESTER
                else f"\n[Set my password: `as {notice.to}`, then `password`]"
            )
        self._print(f"[DM to {notice.to or request.requester_email}]", text)


class NullNotifier:
    """For ``kfbot plan`` and maintenance commands: nothing is published."""

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: Card | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        return Delivery()
