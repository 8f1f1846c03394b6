"""Checks the input suites share: a refusal is an ``InvalidInput`` whose message is neutral text a
person can read and that every edge shows inertly, and hypothesis settings that leave no files
behind."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import settings

from bot import render
from handlers import errors, naming

# No example database: these run in CI checkouts and must leave no files behind.
PROPERTY = settings(deadline=None, database=None)
SAFE_EXTRA = {"…", "\u200b"}
# Slack markup the bot writes itself: a mention of a Slack user id, a date.
OUR_SLACK_MARKUP = re.compile(r"<@[UW][A-Z0-9]+>|<!date\^\d+\^[^|<>]*\|[^<>]*>")
_SLACK_UNESCAPED = re.compile(r"[<>]|&(?!amp;|lt;|gt;)")


def slack_text(message: str) -> str:
    """A core text as Slack shows it."""
    return render.SLACK.message(message)


def assert_slack_inert(slack: str) -> None:
    """No ``<``, ``>`` or ``&`` in Slack text that is not an escape or markup the bot wrote."""
    bare = OUR_SLACK_MARKUP.sub("", slack)
    assert not _SLACK_UNESCAPED.search(bare), f"Slack would parse markup in {slack!r}"
    assert not re.search(r"(?:^|\s)@(?:channel|here|everyone)", slack, re.IGNORECASE), slack


def _seen_as_itself(char: str) -> bool:
    # Printable ASCII, or a letter, digit, punctuation or symbol echoed as typed (`tëam`); never
    # a control, format (bidi), separator or combining character, which show_value spells out.
    if " " <= char <= "~" or char in SAFE_EXTRA:
        return True
    return unicodedata.category(char)[0] in "LNPS" and char not in naming.BIDI_CONTROLS


def assert_safe_message(message: str) -> None:
    """A user_message holds only characters that show as themselves (plus our ellipsis / ZWSP and
    ``naming.person`` placeholders), no Slack markup once rendered, and the shell shows it as
    written."""
    assert message
    bare = naming.PERSON.sub("", message)
    unexpected = {c for c in bare if not _seen_as_itself(c)}
    assert not unexpected, (message, unexpected)
    assert_slack_inert(slack_text(message))
    if bare == message:
        assert render.SHELL.message(message) == message


def rejection(func: object, *args: object, **kwargs: object) -> errors.InvalidInput:
    with pytest.raises(errors.InvalidInput) as info:
        func(*args, **kwargs)  # type: ignore[operator]
    assert_safe_message(info.value.user_message)
    return info.value
