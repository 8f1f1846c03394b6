"""Notifiers: how committed changes of a request reach people (``handlers.ports.Notifier``).

``SlackNotifier`` posts the approval card into the admin channel, updates it in place after a
decision, threads apply progress under it and DMs the requester (and a workspace's owner) the
decision and the result, with the "Show token" / "Set my password" buttons where a secret is to
be handed out. ``ShellNotifier`` prints the same texts for ``kfbot shell`` and names the shell
command where Slack would show a button.

The port's contract is that delivery never fails a use case: the change is committed before
``publish`` runs. So every Slack call is guarded, failures are logged with the request's
correlation id and the rest of the deliveries still go out. Rate limits are retried by the
client's ``RateLimitErrorRetryHandler`` (set up in ``bot.app``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot import blocks, render
from bot import logging as log
from handlers import kinds
from handlers.model import SYSTEM, Event, EventType, Request, RequestState
from handlers.ports import Delivery

logger = logging.getLogger(__name__)
Card = tuple[str, str]
StepCalls = Callable[[str, Mapping[str, Any]], list[str]]
"""``backend.render_step``: the calls a dry-run step would make, shown under its progress line."""


def step_calls(calls: StepCalls | None, request: Request, event: Event, *, prefix: str) -> str:
    if calls is None or event.type is not EventType.STEP_SUCCEEDED:
        return ""
    step = render.step_of(request, event.data)
    if step is None:
        return ""
    return "".join(prefix + line for line in calls(step.action, step.params))


_DECISIONS = (EventType.APPROVED, EventType.REJECTED, EventType.EXPIRED)
_RESULTS = (EventType.SUCCEEDED, EventType.FAILED, EventType.NEEDS_ATTENTION, EventType.REFUSED)
_CARD_CHANGES = frozenset(
    {
        EventType.APPROVED,
        EventType.REJECTED,
        EventType.CANCELLED,
        EventType.EXPIRED,
        EventType.RETRIED,
        EventType.APPLY_STARTED,
        EventType.SUCCEEDED,
        EventType.COMPENSATING,
        EventType.FAILED,
        EventType.NEEDS_ATTENTION,
        EventType.REFUSED,
    }
)


def replan_dm(request: Request, style: render.Style) -> str:
    what = f"`{request.id}` ({render.describe(request, style)})"
    return (
        f"Your request {what} is waiting for an admin again: what it would change differs from what "
        "was approved, so it needs a new approval. You will hear when it is decided."
    )


def decision_dm(request: Request, style: render.Style) -> str:
    what = f"`{request.id}` ({render.describe(request, style)})"
    if request.state is RequestState.REJECTED:
        who = style.user(request.decided_by)
        return f"Your request {what} was rejected by {who}: {style.text(request.reason or '')}"
    if request.state is RequestState.EXPIRED:
        return f"Your request {what} expired: no admin decided in time. Ask again if you still need it."
    return f"Your request {what} was approved by {style.user(request.decided_by)}; applying it now."


StepDetails = Callable[[str], Mapping[int, Mapping[str, Any]]]
"""Request id -> the recorded outcome details of its steps, by step index."""


def kept_at_apply(request: Request, step_details: StepDetails | None) -> list[str]:
    """What a finished delete's steps kept beyond its plan (read only for succeeded deletes)."""
    if (
        step_details is None
        or request.kind != kinds.WorkspaceDelete.KIND
        or request.state is not RequestState.SUCCEEDED
    ):
        return []
    return render.kept_at_apply(request, step_details(request.id))


def concerned_text(request: Request, style: render.Style) -> str:
    """For the people a request of the bot's own (an expiry) concerns: the grantee and owner of
    an expired grant, the owner of a reverted quota."""
    return f"⏰ A time limit ran out. {render.result_text(request, style)}"


def grantee_text(request: Request, style: render.Style) -> str | None:
    """For the person a share or unshare by someone else is about; None: nobody else to tell."""
    user = str(request.args.get("user") or "")
    if request.requester_id == SYSTEM.user_id or not user or user == request.requester_email:
        return None
    who, workspace = (
        style.user(request.requester_id, request.requester_email),
        style.esc(str(request.args.get("workspace"))),
    )
    if request.kind == kinds.Share.KIND:
        until = f" for {style.esc(str(request.args['duration']))}" if request.args.get("duration") else ""
        role = style.esc(str(request.args.get("role") or "edit"))
        return f"{who} gave you {role} access to Kubeflow workspace `{workspace}`{until} (`{request.id}`)."
    if request.kind == kinds.Unshare.KIND:
        return f"{who} removed your access to Kubeflow workspace `{workspace}` (`{request.id}`)."
    return None


def needs_password_button(request: Request) -> bool:
    return request.kind == kinds.WorkspaceCreate.KIND and any(
        s.action == "dex.user" for s in request.plan.steps
    )


def _is_slack_user(user_id: str) -> bool:
    return user_id[:1] in ("U", "W")


class SlackNotifier:
    def __init__(
        self,
        client: WebClient,
        admin_channel: str,
        find_user: Callable[[str], str | None],
        calls: StepCalls | None = None,
        step_details: StepDetails | None = None,
    ) -> None:
        self._client = client
        self._channel = admin_channel
        self._find_user = find_user
        self._calls = calls
        self._step_details = step_details
        self._sent = threading.local()

    def publish(self, request: Request, events: Sequence[Event], card: Card | None) -> Delivery:
        # Listener threads and the engine publish concurrently: each call collects its own deliveries.
        self._sent.messages = []
        new_card: Card | None = None
        with log.bound(request.correlation_id or log.correlation_id() or request.id):
            try:
                new_card = self._publish(request, events, card)
            except Exception:
                # The port forbids raising: the change is committed; a rendering bug must not
                # stop the engine or the listener. It is logged with the correlation id.
                logger.exception("could not notify about %s", request.id, extra={"request_id": request.id})
        return Delivery(card=new_card, sent=tuple(self._sent.messages))

    # -- delivery ------------------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            response = getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            error = exc.response.get("error", "?") if exc.response is not None else "?"
            logger.warning(
                "Slack %s failed: %s", method, error, extra={"slack_method": method, "slack_error": error}
            )
            return None
        except (SlackClientError, OSError) as exc:
            logger.warning("Slack %s failed: %s", method, type(exc).__name__, extra={"slack_method": method})
            return None
        if method.startswith("chat_"):
            self._sent.messages.append(f"{method}:{kwargs.get('channel', '')}")
        return dict(response.data) if isinstance(response.data, dict) else {}

    def _publish(self, request: Request, events: Sequence[Event], card: Card | None) -> Card | None:
        new_card: Card | None = None
        update = False
        for event in events:
            t = event.type
            if (
                t is EventType.CREATED
                and request.state is RequestState.PENDING
                and card is None
                and new_card is None
            ):
                new_card = self._post_card(request)
                continue
            if t is EventType.PLAN_CHANGED:
                if card is not None:
                    text, blks = blocks.card(request, superseded=True)
                    self._call("chat_update", channel=card[0], ts=card[1], text=text, blocks=blks)
                    self._thread(card, render.event_text(request, event, render.SLACK))
                new_card = self._post_card(request)
                self._dm(request.requester_id, replan_dm(request, render.SLACK))
                continue
            update = update or t in _CARD_CHANGES
            current = new_card or card
            if current is not None:
                line = render.event_text(request, event, render.SLACK)
                calls = step_calls(self._calls, request, event, prefix="\n")
                self._thread(
                    current,
                    line + (f"\n```{render.SLACK.esc(calls.strip())}```" if calls else "") if line else None,
                )
            if t is EventType.TIMER_FIRED:
                self._timer_message(event)
            if t in _DECISIONS:
                self._dm(request.requester_id, decision_dm(request, render.SLACK))
            elif t in _RESULTS:
                self._results(request)
                self._tell_concerned(request)
                if t is EventType.REFUSED or (t is EventType.NEEDS_ATTENTION and current is None):
                    self._call(
                        "chat_postMessage",
                        channel=self._channel,
                        text=blocks.fallback(render.result_text(request, render.SLACK)),
                    )
        current = new_card or card
        if update and current is not None:
            text, blks = blocks.card(request)
            self._call("chat_update", channel=current[0], ts=current[1], text=text, blocks=blks)
        return new_card

    def _post_card(self, request: Request) -> Card | None:
        text, blks = blocks.card(request)
        answer = self._call("chat_postMessage", channel=self._channel, text=text, blocks=blks)
        if not answer or not answer.get("ts"):
            return None
        return str(answer.get("channel") or self._channel), str(answer["ts"])

    def _thread(self, card: Card, text: str | None) -> None:
        if text:
            self._call("chat_postMessage", channel=card[0], thread_ts=card[1], text=blocks.fallback(text))

    def _dm(self, user_id: str, text: str, action: tuple[str, str, str] | None = None) -> None:
        if not _is_slack_user(user_id):
            return
        opened = self._call("conversations_open", users=user_id)
        channel = (opened or {}).get("channel", {}).get("id")
        if not channel:
            return
        fallback_text, blks = blocks.dm(text, action=action)
        self._call("chat_postMessage", channel=channel, text=fallback_text, blocks=blks)

    def _dm_email(self, email: str, text: str) -> None:
        user_id = self._find_user(email)
        if user_id is None:
            logger.warning("no Slack user with the email of a person to tell", extra={"event": "notify"})
            return
        self._dm(user_id, text)

    def _timer_message(self, event: Event) -> None:
        """A timer that did not make a request (a quota revert skipped so as not to clobber a newer
        change): its message goes to the people it names, and to the admins when it says so."""
        message = event.data.get("message")
        if not isinstance(message, str) or not message:
            return
        for email in kinds.people_to_tell(event.data):
            self._dm_email(email, message)
        if event.data.get("admins"):
            self._call("chat_postMessage", channel=self._channel, text=blocks.fallback(message))

    def _tell_concerned(self, request: Request) -> None:
        if request.state is not RequestState.SUCCEEDED and request.requester_id != SYSTEM.user_id:
            return
        if request.requester_id == SYSTEM.user_id:
            for email in kinds.people_to_tell(request.args):
                self._dm_email(email, concerned_text(request, render.SLACK))
            return
        text = grantee_text(request, render.SLACK)
        if text is not None:
            self._dm_email(str(request.args["user"]), text)

    def _results(self, request: Request) -> None:
        text = render.result_text(request, render.SLACK, kept_at_apply(request, self._step_details))
        succeeded = request.state is RequestState.SUCCEEDED
        if succeeded and request.kind == kinds.TokenIssue.KIND:
            self._dm(
                request.requester_id,
                text + "\nYour token is made when you click the button, and shown once.",
                action=("Show token", blocks.SHOW_TOKEN, request.id),
            )
            return
        if succeeded and needs_password_button(request):
            owner = str(request.args.get("owner") or request.requester_email)
            button = ("Set my password", blocks.SET_PASSWORD, request.id)
            note = "\nSet your Kubeflow password with the button; it is shown once."
            if owner == request.requester_email:
                self._dm(request.requester_id, text + note, action=button)
                return
            self._dm(request.requester_id, text)
            owner_id = self._find_user(owner)
            if owner_id is not None:
                self._dm(
                    owner_id,
                    f"A Kubeflow workspace was made for you: {render.describe(request, render.SLACK)}."
                    + note,
                    action=button,
                )
            return
        self._dm(request.requester_id, text)


class ShellNotifier:
    """Prints what Slack would post; buttons become the shell command that presses them."""

    def __init__(
        self, out: TextIO, calls: StepCalls | None = None, step_details: StepDetails | None = None
    ) -> None:
        self._out = out
        self._calls = calls
        self._step_details = step_details
        self._sent: list[str] = []

    def _print(self, prefix: str, text: str) -> None:
        self._sent.append(f"shell:{prefix.strip('[]').split(' ')[0]}")
        lines = text.splitlines() or [""]
        self._out.write(f"{prefix} {lines[0]}\n")
        for line in lines[1:]:
            self._out.write(f"{' ' * len(prefix)} {line}\n")
        self._out.flush()

    def publish(self, request: Request, events: Sequence[Event], card: Card | None) -> Delivery:
        self._sent = []
        new_card = self._publish(request, events, card)
        return Delivery(card=new_card, sent=tuple(dict.fromkeys(self._sent)))

    def _publish(self, request: Request, events: Sequence[Event], card: Card | None) -> Card | None:
        style = render.SHELL
        new_card: Card | None = None
        for event in events:
            t = event.type
            if (
                t is EventType.CREATED and request.state is RequestState.PENDING and card is None
            ) or t is EventType.PLAN_CHANGED:
                if t is EventType.PLAN_CHANGED:
                    self._print(f"[thread {request.id}]", render.event_text(request, event, style) or "")
                    self._dm(request, replan_dm(request, style))
                self._print(
                    "[admin channel]",
                    render.request_detail(request, style) + "\n"
                    f"[View plan: show {request.id}] [Approve: approve {request.id}] "
                    f"[Reject: reject {request.id} REASON]",
                )
                new_card = ("shell", request.id)
                continue
            has_card = (new_card or card) is not None
            if t in _DECISIONS or t is EventType.CANCELLED or t in _RESULTS:
                if has_card:
                    self._print(
                        f"[card {request.id}]",
                        render.decision_text(request, style)
                        if t not in _RESULTS
                        else f"{blocks.HEADINGS[request.state]}.",
                    )
            else:
                line = render.event_text(request, event, style)
                if line:
                    self._print(
                        f"[{'thread' if has_card else 'progress'} {request.id}]",
                        line + self._step_calls(request, event),
                    )
            if t is EventType.TIMER_FIRED and isinstance(event.data.get("message"), str):
                for email in kinds.people_to_tell(event.data):
                    self._dm(request, str(event.data["message"]), to=email)
                if event.data.get("admins"):
                    self._print("[admin channel]", str(event.data["message"]))
            if t is EventType.REFUSED:
                self._print("[admin channel]", render.result_text(request, style))
            if t in _DECISIONS:
                self._dm(request, decision_dm(request, style))
            elif t in _RESULTS:
                self._result(request)
                if request.requester_id == SYSTEM.user_id:
                    for email in kinds.people_to_tell(request.args):
                        self._dm(request, concerned_text(request, style), to=email)
                elif request.state is RequestState.SUCCEEDED and (text := grantee_text(request, style)):
                    self._dm(request, text, to=str(request.args["user"]))
        return new_card

    def _step_calls(self, request: Request, event: Event) -> str:
        return step_calls(self._calls, request, event, prefix="\n    would: ")

    def _dm(self, request: Request, text: str, to: str | None = None) -> None:
        if request.requester_id.startswith(("shell:", "U", "W")) or to:
            self._print(f"[DM to {to or request.requester_email}]", text)

    def _result(self, request: Request) -> None:
        text = render.result_text(request, render.SHELL, kept_at_apply(request, self._step_details))
        if request.state is RequestState.SUCCEEDED and request.kind == kinds.TokenIssue.KIND:
            self._dm(request, f"{text}\n[Show token: reveal {request.id}]")
        elif request.state is RequestState.SUCCEEDED and needs_password_button(request):
            owner = str(request.args.get("owner") or request.requester_email)
            if owner == request.requester_email:
                self._dm(request, f"{text}\n[Set my password: password]")
            else:
                self._dm(request, text)
                self._dm(
                    request,
                    f"A Kubeflow workspace was made for you: {render.describe(request, render.SHELL)}.\n"
                    f"[Set my password: `as {owner}`, then `password`]",
                    to=owner,
                )
        else:
            self._dm(request, text)


class NullNotifier:
    """For ``kfbot plan`` and maintenance commands: nothing is published."""

    def publish(self, request: Request, events: Sequence[Event], card: Card | None) -> Delivery:
        return Delivery()
