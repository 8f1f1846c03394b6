"""The core's texts for people are neutral (``handlers.naming``, "text for people") and each edge
renders them: Slack escapes the whole text and turns the core's ``naming.person`` placeholders
into mentions; the shell shows the text as written, people as plain names."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import render
from handlers import errors, naming, services
from handlers.model import Request, RequestState
from handlers.plan import Plan
from tests.fakes.messages import PROPERTY, assert_slack_inert

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SLACK_IDS = st.from_regex(r"[UW][A-Z0-9]{8}", fullmatch=True)
OTHER_IDS = st.sampled_from(["shell:alice@example.com", "kfbot"])
HOSTILE = st.one_of(
    st.text(max_size=60),
    st.sampled_from([
        "<!channel>", "<@U0ADMIN01>", "<#C0GENERAL>", "<http://evil.example|click me>", "&amp;",
        "&lt;b&gt;", "@here", "\x1e@U0ADMIN01\x1e", "\x1e@shell:x\x1e", "a\u202eb", "\x1b[31m",
    ]),
)
# The core's own wording: printable ASCII, including markup characters it may use as text.
WORDING = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
# A part of a core message: (core text, what the shell shows, the Slack mention it places).
Part = tuple[str, str, str | None]


def _parts() -> st.SearchStrategy[Part]:
    return st.one_of(
        WORDING.map(lambda text: (text, text, None)),
        HOSTILE.map(naming.show_value).map(lambda shown: (shown, shown, None)),
        SLACK_IDS.map(lambda uid: (naming.person(uid), uid, f"<@{uid}>")),
        OTHER_IDS.map(lambda uid: (naming.person(uid), render.SHELL.user(uid), None)),
    )


@PROPERTY
@given(st.lists(_parts(), max_size=8))
def test_slack_shows_only_the_mentions_the_core_placed_and_the_shell_no_escapes(parts: list[Part]) -> None:
    message = "".join(text for text, _, _ in parts)
    slack = render.SLACK.message(message)
    placed = [mention for _, _, mention in parts if mention is not None]
    assert re.findall(r"<@[^>]*>", slack) == placed
    rest = re.sub(r"<@[UW][A-Z0-9]+>", "", slack)
    assert not re.search(r"[<>]|&(?!amp;|lt;|gt;)", rest), slack
    assert_slack_inert(slack)
    shell = render.SHELL.message(message)
    assert shell == "".join(shown for _, shown, _ in parts)
    for entity in ("&lt;", "&gt;", "&amp;"):
        assert (entity in shell) == (entity in message), shell


@PROPERTY
@given(HOSTILE)
def test_a_refusal_that_shows_a_hostile_value_is_inert_in_slack_and_literal_in_the_shell(value: str) -> None:
    value = "<" + value  # always refused, and the refusal shows it
    with pytest.raises(errors.InvalidInput) as refused:
        naming.validate_dns1123_label(value, "namespace")
    slack = render.error_text(refused.value, render.SLACK)
    assert_slack_inert(slack)
    assert "<@" not in slack  # a value never becomes a mention
    shell = render.error_text(refused.value, render.SHELL)
    assert shell == refused.value.user_message and naming.show_value(value) in shell


def _decided(state: RequestState, error: str | None = None) -> Request:
    return Request(
        id="RTEST01", kind="workspace.create", args={"name": "team-a"}, requester_id="UALICE01",
        requester_email="alice@example.com", plan=Plan.of(()), created_at=NOW, state=state,
        decided_by="UBOB0001", decided_at=NOW, updated_at=NOW, error=error,
    )


def test_who_decided_is_a_mention_in_slack_and_a_name_in_the_shell() -> None:
    text = services.already_text(_decided(RequestState.APPROVED))
    assert render.SLACK.message(text) == "RTEST01 is already approved by <@UBOB0001>."
    assert render.SHELL.message(text) == "RTEST01 is already approved by UBOB0001."


def test_a_refusal_kept_as_a_request_error_is_escaped_once() -> None:
    """A step's refusal is stored as the request's error and shown later: Slack escapes it once
    (not ``&amp;lt;``), the shell shows it as typed (not ``&lt;``)."""
    with pytest.raises(errors.InvalidInput) as refused:
        naming.validate_dns1123_label("a<b&c", "namespace")
    failed = _decided(RequestState.FAILED, error=refused.value.user_message)
    slack = render.result_text(failed, render.SLACK)
    assert "`a&lt;b&amp;c`" in slack and "&amp;lt;" not in slack
    assert "`a<b&c`" in render.result_text(failed, render.SHELL)
