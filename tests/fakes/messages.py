"""Checks the input suites share: a refusal is an ``InvalidInput`` whose message is safe to show in
Slack, and hypothesis settings that leave no files behind."""

from __future__ import annotations

import pytest
from hypothesis import settings

from handlers import errors

# No example database: these run in CI checkouts and must leave no files behind.
PROPERTY = settings(deadline=None, database=None)
SAFE_EXTRA = {"…", "\u200b"}


def assert_safe_message(message: str) -> None:
    """A user_message must be printable ASCII (plus our ellipsis / ZWSP) with no raw Slack markup."""
    assert message
    unexpected = {c for c in message if not (" " <= c <= "~") and c not in SAFE_EXTRA}
    assert not unexpected, (message, unexpected)
    assert "<" not in message and ">" not in message, message


def rejection(func: object, *args: object, **kwargs: object) -> errors.InvalidInput:
    with pytest.raises(errors.InvalidInput) as info:
        func(*args, **kwargs)  # type: ignore[operator]
    assert_safe_message(info.value.user_message)
    return info.value
