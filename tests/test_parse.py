"""``handlers.parse``: every command and flag as a table; bad input and injection attempts are refused
with a clear message (and usage where it helps), or stay inert text inside a validated value."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from handlers import errors, kinds, parse
from handlers.settings import CoreSettings
from tests.fakes.messages import assert_slack_inert, slack_text

ME = "alice@example.com"
USERS = {"U0BOB0001": "bob@example.com"}


def resolve(user_id: str) -> str:
    if user_id not in USERS:
        raise errors.InvalidInput(f"<@{user_id}> has no email address in Slack.")
    return USERS[user_id]


def p(text: str) -> Any:
    return parse.parse_command(text, requester_email=ME, resolve_user=resolve, settings=CoreSettings())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", parse.Help()),
        ("help", parse.Help()),
        ("help share", parse.Help("share")),
        ("--help", parse.Help()),
        ("requests", parse.ListRequests()),
        ("cancel r7kq2m", parse.Cancel("R7KQ2M")),
        ("retry R7KQ2M", parse.Retry("R7KQ2M")),
        ("workspace new", parse.WorkspaceForm()),
        ("workspace list", parse.WorkspaceList()),
        ("ws show team-a", parse.WorkspaceShow("team-a")),
        ("contributors team-a", parse.Contributors("team-a")),
        ("tokens", parse.Tokens()),
        ("password reset", parse.PasswordReset()),
        ("workspace new team-a", kinds.WorkspaceCreate("team-a", ME)),
        (
            "workspace create team-a --owner Bob@Example.com",
            kinds.WorkspaceCreate("team-a", "bob@example.com"),
        ),
        ("workspace new team-a --owner <@U0BOB0001|bob>", kinds.WorkspaceCreate("team-a", "bob@example.com")),
        (
            "workspace new team-a --owner <mailto:bob@example.com|bob@example.com>",
            kinds.WorkspaceCreate("team-a", "bob@example.com"),
        ),
        (
            "workspace new team-a --gpu 2 --cpu 16 --memory 64Gi --storage 1Ti --pvcs 5 "
            "--instance-type g5.xlarge --nodes 1:3 --desired 2",
            kinds.WorkspaceCreate(
                "team-a",
                ME,
                gpu=2,
                cpu="16",
                memory="64Gi",
                storage="1Ti",
                pvcs=5,
                instance_type="g5.xlarge",
                nodes_min=1,
                nodes_max=3,
                desired=2,
            ),
        ),
        ("workspace new team-a --gpu=2", kinds.WorkspaceCreate("team-a", ME, gpu=2)),
        ("workspace delete team-a --confirm team-a", kinds.WorkspaceDelete("team-a", "team-a")),
        (
            "workspace delete team-a --confirm team-a --purge-data",
            kinds.WorkspaceDelete("team-a", "team-a", True),
        ),
        ("workspace pin team-a", kinds.WorkspacePin("team-a")),
        ("ws pin --all", parse.PinAll()),
        ("share team-a bob@example.com", kinds.Share("team-a", "bob@example.com")),
        (
            "share team-a <@U0BOB0001> --role view --for 3d",
            kinds.Share("team-a", "bob@example.com", "view", timedelta(days=3)),
        ),
        ("unshare team-a bob@example.com", kinds.Unshare("team-a", "bob@example.com")),
        ("quota team-a --gpu 4 --for 1w", kinds.QuotaChange("team-a", gpu="4", duration=timedelta(weeks=1))),
        (
            "quota team-a --memory 32Gi --storage 200Gi --cpu 8",
            kinds.QuotaChange("team-a", cpu="8", memory="32Gi", storage="200Gi"),
        ),
        ("token team-a", kinds.TokenIssue("team-a", CoreSettings().tokens.default_ttl)),
        (
            "token team-a --ttl 2h --audience pipelines --read-only",
            kinds.TokenIssue("team-a", timedelta(hours=2), "pipelines", True),
        ),
        ("token revoke R7KQ2M", kinds.TokenRevoke("R7KQ2M")),
        # Slack's smart quotes are plain quotes.
        ("\u201cshare\u201d team-a \u2018bob@example.com\u2019", kinds.Share("team-a", "bob@example.com")),
    ],
)
def test_every_command_and_flag(text: str, expected: object) -> None:
    assert p(text) == expected


@pytest.mark.parametrize(
    ("text", "message", "usage"),
    [
        ("frobnicate", "Unknown command", None),
        ("workspace", "workspace new|delete|list|show|pin", "workspace new"),
        ("workspace pin", "Missing arguments", "workspace pin"),
        ("workspace pin --all team-a", "takes no arguments", "workspace pin"),
        ("workspace pin Team-A", "Workspace names", None),
        ("workspace new team-a --colour blue", "Unknown option `--colour`", "workspace new"),
        ("workspace new team-a --gpu 1 --gpu 2", "given twice", "workspace new"),
        ("workspace new team-a --gpu", "needs a value", "workspace new"),
        ("workspace new team-a --gpu --cpu 2", "needs a value", "workspace new"),
        ("workspace new team-a --gpu two", "whole number", None),
        ("workspace new team-a --nodes 3:1", "MIN is larger", None),
        ("workspace new team-a --nodes 1-3", "MIN:MAX", None),
        ("workspace new team-a team-b", "Too many arguments", "workspace new"),
        ("workspace delete team-a", "repeat its name", None),
        ("workspace delete team-a --confirm team-b", "repeat its name", None),
        ("workspace delete team-a --purge-data=yes --confirm team-a", "takes no value", "workspace delete"),
        ("share team-a", "Missing arguments", "share"),
        ("share team-a bob@example.com --role admin", "--role must be", None),
        ("share team-a <@U0NOMAIL1>", "no email address", None),
        ("share team-a <mailto:evil@example.com|bob@example.com>", "points to", None),
        ("quota team-a", "Say what to change", "quota"),
        ("token team-a --audience everything", "--audience must be", None),
        ("token team-a --ttl 2h --ttl 3h", "given twice", "token"),
        # Echoed as typed, against the token limit (KFBOT_TOKEN_MAX_TTL), not the generic range.
        ("token team-a --ttl 48h", "--ttl `48h` is too long; allowed: 10m to 1d", None),
        ("token team-a --ttl 999d", "--ttl `999d` is too long; allowed: 10m to 1d", None),
        ("token team-a --ttl 5m", "--ttl `5m` is too short; allowed: 10m to 1d", None),
        ("token team-a --ttl 0", "--ttl `0` is zero; allowed: 10m to 1d", None),
        ("token revoke", "Missing arguments", "token revoke"),
        ("cancel", "Missing arguments", "cancel"),
        ("cancel 1234", "is not a request id", "cancel"),
        ("requests --all", "takes no arguments", "requests"),
        ("requests extra", "`/kf requests` takes no arguments; `extra` is one too many", "requests"),
        ("workspace new team-b \u2013gpu 1", "type `--gpu`", "workspace new"),
        ("workspace new team-b \u2014gpu 1", "type `--gpu`", "workspace new"),
        ("password", "Missing arguments", "password reset"),
        ("password change", "Did you mean", "password reset"),
        ("x" * 1001, "too long", None),
    ],
)
def test_malformed_input_is_refused_with_usage(text: str, message: str, usage: str | None) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        p(text)
    assert message in info.value.user_message
    if usage is not None:
        assert info.value.usage == parse.USAGE[usage]


@pytest.mark.parametrize(
    "text",
    [
        "workspace new team-a; rm -rf /",
        "workspace new team-a && rm -rf /",
        "workspace new $(rm -rf /)",
        "workspace new `rm -rf /`",
        "workspace new team-a|sh",
        "workspace new 'team-a\nkind: Secret'",
        "workspace new team-a\rreject",
        "workspace new team-a\x00",
        "workspace new \"team-a\" --cpu '{cpu: 64}'",
        "workspace new team-a --memory '16Gi\n  limits: {}'",
        "workspace new team-a --owner 'a@b.co\nroot: true'",
        "workspace new *anchor",
        "workspace new '&anchor team-a'",
        "workspace new 'team-a: {x: 1}'",
        "workspace new ../../etc",
        "workspace new team-\u0430",  # a Cyrillic look-alike of 'a'
        "workspace new <!channel>",
        "share team-a '@here'",
        "share team-a bob@example.com --role 'edit; delete'",
        "quota team-a --gpu '1 || true'",
        "token team-a --audience 'kubernetes\" --as=system:masters'",
        "workspace new 'unclosed",
    ],
)
def test_injection_attempts_are_refused(text: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        p(text)
    # Slack shows the input escaped, so it cannot ping or link there either.
    assert_slack_inert(slack_text(info.value.user_message))


def test_shell_metacharacters_in_flag_values_stay_inert_text() -> None:
    """Nothing is ever run by a shell: a metacharacter inside a quoted value is just part of the
    string, and the kinds' own validators refuse it before any plan exists."""
    with pytest.raises(errors.InvalidInput):
        p("workspace new team-a --instance-type 'g4dn.xlarge;id'")
    share = p("share team-a 'bob+ops@example.com'")
    assert share == kinds.Share("team-a", "bob+ops@example.com")


_OTHER_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
"""Digits of other scripts (Arabic-Indic U+0663, full-width U+FF13, ...): ``\\d`` and ``isdigit()`` take
them and ``int()`` reads them, so a pattern that means "a number" says ``[0-9]``."""


@settings(max_examples=30, deadline=None)
@example(digit="\u0663")
@example(digit="\uff13")
@given(digit=_OTHER_DIGITS)
def test_numbers_are_ascii_digits_only(digit: str) -> None:
    for text in (
        f"workspace new team-a --gpu {digit}",
        f"workspace new team-a --pvcs 1{digit}",
        f"workspace new team-a --nodes 0:{digit}",
        f"gpu up team-a {digit}",
    ):
        with pytest.raises(errors.InvalidInput):
            p(text)
    for field, value in (("gpu", digit), ("nodes", f"{digit}:2")):
        with pytest.raises(errors.InvalidInput) as refused:
            parse.workspace_from_form({"name": "team-a", field: value}, ME)
        assert refused.value.field == field
