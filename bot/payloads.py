"""The shapes of what Slack sends bot/ and what bot/ sends back, as far as bot/ reads or builds them.

Bolt hands listeners the request payload as a plain dict; these TypedDicts name the keys bot/ reads
(``total=False``: Slack omits keys depending on where the click or command came from). Where the
shape depends on the kind of request (the error handler, ``tell``) or on the Web API method, a payload
is read as ``Mapping[str, object]`` through ``text_at``, which never raises on a missing or odd key.
Reference payloads: ../shared/reference (slash command, block_actions, view_submission).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias, TypedDict

BlockDict: TypeAlias = dict[str, object]
"""One Block Kit block or view as JSON: what ``slack_sdk.models``' ``to_dict()`` returns."""
Blocks: TypeAlias = list[BlockDict]


class SlashCommand(TypedDict, total=False):
    """A ``/kf`` command (Bolt's ``command`` and ``body`` are the same form)."""

    user_id: str
    channel_id: str
    text: str
    trigger_id: str
    response_url: str


class User(TypedDict, total=False):
    id: str


class Channel(TypedDict, total=False):
    id: str


class Container(TypedDict, total=False):
    """Where a clicked button is: a message (``message_ts``, ``channel_id``) or a view."""

    type: str
    message_ts: str
    channel_id: str


class Message(TypedDict, total=False):
    ts: str


class Action(TypedDict, total=False):
    """One element of a ``block_actions`` payload's ``actions`` (Bolt's ``action``)."""

    action_id: str
    block_id: str
    value: str
    action_ts: str
    """Unique per click (a redelivery repeats it): the report buttons' idempotency key."""


class BlockActions(TypedDict, total=False):
    """A button click."""

    user: User
    container: Container
    channel: Channel
    actions: list[Action]
    trigger_id: str
    message: Message
    response_url: str


class InputState(TypedDict, total=False):
    """One input's submitted state: ``value`` is absent or null when a plain-text input was left empty."""

    type: str
    value: str | None


class ViewState(TypedDict, total=False):
    values: dict[str, dict[str, InputState]]
    """``{block_id: {action_id: state}}``."""


class View(TypedDict, total=False):
    id: str
    callback_id: str
    private_metadata: str
    state: ViewState


class ViewSubmission(TypedDict, total=False):
    """A modal's submit (Bolt's ``body``; its ``view`` is Bolt's ``view``)."""

    user: User
    view: View
    trigger_id: str


def text_at(data: Mapping[str, object], *path: str) -> str:
    """The scalar at ``path`` (``"container", "channel_id"``) as text; "" where a key is missing,
    empty or not a scalar. For payloads whose shape varies (any listener's body, a Web API answer)."""
    value: object = data
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return "" if not value or isinstance(value, Mapping | list) else str(value)
