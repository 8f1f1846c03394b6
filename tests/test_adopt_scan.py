"""``/kf workspace scan`` and its Adopt button over the Slack edge: signed requests over real HTTP
to the running bot (SQLite, the dry-run provisioner), the fake Slack Web API capturing replies.

Scanning is for admins only; the button files ``workspace adopt`` as the clicker through the normal
gate (a non-admin's click is refused, nothing recorded); a forged value is read as hostile input and
refused with a clear message. What a live scan finds is tested in tests/test_workspace_adopt_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import blocks
from bot.app import Running
from handlers import errors, kinds
from handlers.ports import FoundObject, UnmanagedGroup
from provisioning.discovery import _project
from tests.fakes.messages import assert_slack_inert
from tests.fakes.runbook import RUNBOOK_NAMING
from tests.fakes.slack import FakeSlack
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    BOB,
    DAVE,
    add_users,
    click,
    requests_in_db,
    response_texts,
    settings_for,
    slash,
)


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


def scan_message(value: str) -> dict[str, Any]:
    """A scan reply with one Adopt button (as ``bot.blocks.scan_message`` builds it)."""
    element = {
        "type": "button",
        "action_id": kinds.ADOPT_BUTTON,
        "text": {"type": "plain_text", "text": "Adopt"},
    }
    return {
        "channel": "D0BOB",
        "ts": "1764900000.000200",
        "blocks": [{"type": "actions", "elements": [{**element, "value": value}]}],
    }


def press(bot: Running, fake: FakeSlack, value: str, *, user: str, name: str) -> str:
    assert click(bot, fake, scan_message(value), kinds.ADOPT_BUTTON, user=user, name=name) == 200
    found: str = fake.wait_for(
        lambda: (response_texts(fake, name) or [None])[-1], 15.0, f"the reply at {name}"
    )
    return found


HOSTILE = [
    ("", "not JSON"),
    ("[]", "exactly a namespace"),
    ('{"namespace": "aic-ns-legacy-ws", "owner": "eve@example.com"}', "exactly a namespace"),
    ('{"namespace": 7}', "exactly a namespace"),
    ('{"namespace": "<!channel>"}', "workspace name"),
    ('{"namespace": "kube-system"}', "belongs to the platform"),
    ('{"namespace": "kubeflow"}', "belongs to the platform"),
    ('{"namespace": "team-a\\u202e"}', "workspace name"),
    ("x" * 3000, "too long"),
]


def test_scan_is_for_admins_and_the_adopt_button_goes_through_the_gate(
    bot: Running, fake_slack: FakeSlack
) -> None:
    assert "Only admins can scan" in slash(bot, fake_slack, "workspace scan", user=DAVE, name="dave-scan")
    assert "needs the live cluster" in slash(bot, fake_slack, "workspace scan", user=BOB, name="bob-scan")

    value = kinds.adopt_button_value("aic-ns-legacy-ws")
    reply = press(bot, fake_slack, value, user=DAVE, name="dave-adopt")
    assert "Only an admin can ask to adopt" in reply, reply
    # An admin's click is the command: here the dry run has no cluster to find the workspace in.
    reply = press(bot, fake_slack, value, user=BOB, name="bob-adopt")
    assert "needs the live cluster" in reply, reply
    for i, (forged, said) in enumerate(HOSTILE):
        reply = press(bot, fake_slack, forged, user=BOB, name=f"forged-{i}")
        assert said in reply and "Traceback" not in reply and len(reply) < 600, reply
        assert_slack_inert(reply)
    replies = fake_slack.responses
    assert all(r.get("response_type") == "ephemeral" for k in replies for r in replies[k])
    assert requests_in_db(bot) == []


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=80), st.dictionaries(st.text(max_size=8), st.text(max_size=20)).map(str)))
def test_any_button_value_is_read_or_refused_with_a_clear_message(value: str) -> None:
    for candidate in (value, json.dumps({"namespace": value})):
        try:
            kind = kinds.adopt_from_button(candidate)
        except errors.InvalidInput as refused:
            assert refused.user_message and "Traceback" not in refused.user_message
        else:
            assert kind.namespace == json.loads(candidate)["namespace"]
            assert kind.owner is None  # a button never names an owner


def test_names_found_by_hand_are_escaped_in_the_scan() -> None:
    """Names come from the cluster and AWS, written by hand (a Dex email in config.yaml, a tag):
    the scan shows them inert, and a group without a Profile gets no Adopt button."""
    hostile = "<!channel>@example.com"
    groups = (
        UnmanagedGroup(
            "team-x", "team-x", (FoundObject("dex.user", f"DexUser/{hostile}", hostile, {}, "tag <@U1>"),)
        ),
        UnmanagedGroup(
            "Dex logins", None, (FoundObject("dex.user", "DexUser/x", "*bold* <http://e|x>", {}, "&"),)
        ),
    )
    text, message = blocks.scan_message(groups)
    assert_slack_inert(text)
    for block in message:
        if block["type"] == "section":
            assert_slack_inert(block["text"]["text"])
    values = [e["value"] for b in message if b["type"] == "actions" for e in b["elements"]]
    assert values == [kinds.adopt_button_value("team-x")]


def test_naming_templates_read_backwards_give_the_project() -> None:
    """Discovery "by name": the namespace gives the project, which the bucket and nodegroup names
    must give back (any ``{spec}``); the settings placeholders must match their values."""
    naming = RUNBOOK_NAMING
    assert _project(naming.namespace, naming, "aic-ns-proj1-ws") == "proj1"
    assert _project(naming.bucket, naming, "s3-an2-aic-dev-proj1") == "proj1"
    assert _project(naming.nodegroup, naming, "ng-an2-aicond-proj1-ws-standard") == "proj1"
    assert _project(naming.nodegroup, naming, "ng-an2-aicond-proj1-ws-g4dn-xlarge") == "proj1"
    assert _project(naming.bucket, naming, "s3-use1-aic-dev-proj1") is None  # another region alias
    assert _project(naming.namespace, naming, "aic-ns-legacy-ws") == "legacy"
    assert _project(naming.namespace, naming, "kubeflow") is None
    assert _project("{project}-{project}", naming, "a-b") is None  # one NAME, wherever it appears
