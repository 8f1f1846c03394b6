"""The idle report's buttons over the Slack edge: signed ``block_actions`` over real HTTP to the
running bot (SQLite, the dry-run provisioner), the fake Slack Web API capturing the replies.

A click files the request the command would, as the clicking user, through the same service path
(the kind's policy row decides); a stranger's click gets an ephemeral refusal; a forged ``value``
gets a clear message; in both cases nothing is recorded. The pure reading of values
(``handlers.cost.buttons``) is checked against generated values too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import blocks
from bot.app import Running
from handlers import errors
from handlers.cost import buttons
from handlers.kinds import GpuHold, GpuScale, NotebookStop
from handlers.model import EventType, RequestState
from handlers.settings import CoreSettings, CostSettings
from tests.fakes.facts import StaticFacts
from tests.fakes.messages import assert_slack_inert
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, block_action_body, post_signed
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    REQUEST_ID,
    add_users,
    card_for,
    click,
    new_workspace_request,
    requests_in_db,
    response_texts,
    settings_for,
    wait_response,
    wait_state,
)
from tests.test_plan_digests import _team

COST_CHANNEL = "C0COSTS01"
ZONE = "Europe/Berlin"


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path, KFBOT_TIMEZONE=ZONE)) as running:
        rid = new_workspace_request(running, fake_slack)  # Alice's GPU workspace team-a
        click(running, fake_slack, card_for(fake_slack, rid), blocks.APPROVE, user=BOB)
        wait_state(running, rid, RequestState.SUCCEEDED)
        yield running


def workspace(bot: Running) -> tuple[str, str]:
    """(namespace, GPU nodegroup) of team-a, as the registry recorded them."""
    view = bot.backend.workspace_view("team-a", live=False)
    assert view is not None
    (nodegroup,) = [
        e["params"]["name"] for e in view.record.created.values() if e["action"] == "aws.nodegroup"
    ]
    return view.record.namespace, str(nodegroup)


def report(targets: dict[str, str]) -> dict[str, Any]:
    """A report message with one button per action id (as the idle report builds them)."""
    elements = [
        {
            "type": "button",
            "action_id": action,
            "text": {"type": "plain_text", "text": action},
            "value": value,
        }
        for action, value in targets.items()
    ]
    return {
        "channel": COST_CHANNEL,
        "ts": "1764900000.000100",
        "blocks": [{"type": "actions", "elements": elements}],
    }


def press(bot: Running, fake: FakeSlack, action: str, value: str, *, user: str, name: str) -> str:
    assert click(bot, fake, report({action: value}), action, user=user, name=name) == 200
    found: str = fake.wait_for(
        lambda: (response_texts(fake, name) or [None])[-1], 15.0, f"the reply at {name}"
    )
    return found


def filed(bot: Running, reply: str) -> Any:
    match = REQUEST_ID.search(reply)
    assert match, reply
    return next(r for r in requests_in_db(bot) if r.id == match.group(0))


def rule_of(bot: Running, request_id: str) -> str:
    with bot.backend.uow() as uow:
        trail = uow.audit.trail(request_id)
    return next(str(e.data.get("rule")) for e in trail if e.type is EventType.AUTO_APPROVED)


def test_each_button_files_its_request_as_the_clicking_user(bot: Running, fake_slack: FakeSlack) -> None:
    namespace, nodegroup = workspace(bot)
    stop = press(
        bot,
        fake_slack,
        buttons.STOP_NOTEBOOK,
        buttons.button_value("team-a", f"notebook:{namespace}/nb1"),
        user=ALICE,
        name="stop",
    )
    request = filed(bot, stop)
    assert (request.kind, dict(request.args), request.requester_id) == (
        "notebook.stop",
        {"workspace": "team-a", "notebook": "nb1", "idle_for": "2h"},
        ALICE,
    )
    assert rule_of(bot, request.id) == "auto:notebook.stop"
    wait_state(bot, request.id, RequestState.SUCCEEDED)

    # An admin scales the workspace down from a nodegroup's row.
    down = filed(
        bot,
        press(
            bot,
            fake_slack,
            buttons.SCALE_DOWN,
            buttons.button_value("team-a", f"nodegroup:{nodegroup}"),
            user=CAROL,
            name="down",
        ),
    )
    assert (down.kind, dict(down.args), down.requester_id) == (
        "gpu.scale",
        {"workspace": "team-a", "nodes": 0},
        CAROL,
    )
    wait_state(bot, down.id, RequestState.SUCCEEDED)

    keep = filed(
        bot,
        press(
            bot,
            fake_slack,
            buttons.KEEP_4H,
            buttons.button_value("team-a", f"nodegroup:{nodegroup}"),
            user=ALICE,
            name="keep",
        ),
    )
    assert dict(keep.args) == {
        "workspace": "team-a",
        "target": f"nodegroup:{nodegroup}",
        "until": None,
        "duration": "4h",
    }
    done = wait_state(bot, keep.id, RequestState.SUCCEEDED)
    snooze = filed(
        bot,
        press(
            bot,
            fake_slack,
            buttons.SNOOZE,
            buttons.button_value("team-a", "workspace:team-a"),
            user=ALICE,
            name="snooze",
        ),
    )
    until = datetime.fromisoformat(str(snooze.args["until"]))
    local = until.astimezone(ZoneInfo(ZONE))
    assert (local.hour, local.minute) == (9, 0)
    assert timedelta(0) < until - snooze.created_at <= timedelta(days=1, hours=9)
    wait_state(bot, snooze.id, RequestState.SUCCEEDED)
    with bot.backend.db.uow() as uow:
        holds = uow.registry.holds(done.updated_at)
    assert holds == {
        f"nodegroup:{nodegroup}": done.updated_at + timedelta(hours=4),
        "workspace:team-a": until,
    }


def test_a_strangers_click_gets_an_ephemeral_refusal_and_nothing_is_recorded(
    bot: Running, fake_slack: FakeSlack
) -> None:
    namespace, nodegroup = workspace(bot)
    before = len(requests_in_db(bot))
    values = {
        buttons.STOP_NOTEBOOK: buttons.button_value("team-a", f"notebook:{namespace}/nb1"),
        buttons.SCALE_DOWN: buttons.button_value("team-a", f"nodegroup:{nodegroup}"),
        buttons.KEEP_4H: buttons.button_value("team-a", "workspace:team-a"),
        buttons.SNOOZE: buttons.button_value("team-a", "workspace:team-a"),
    }
    for action, value in values.items():
        reply = press(bot, fake_slack, action, value, user=DAVE, name=f"dave-{action}")
        assert "Only the owner of `team-a` or an admin" in reply, reply
    replies = fake_slack.responses
    assert all(
        r.get("response_type") == "ephemeral" for k in replies if k.startswith("dave-") for r in replies[k]
    )
    assert len(requests_in_db(bot)) == before


HOSTILE = [
    ("", "not JSON"),
    ("stop", "not JSON"),
    ("[]", "exactly a workspace and a target"),
    ('{"workspace": "team-a"}', "exactly a workspace and a target"),
    ('{"workspace": "team-a", "target": "workspace:team-a", "nodes": 0}', "exactly a workspace and a target"),
    ('{"workspace": 7, "target": "workspace:team-a"}', "must be text"),
    ('{"workspace": "<!channel>", "target": "workspace:team-a"}', "workspace name"),
    ('{"workspace": "team-a", "target": "workspace:team-*"}', "workspace name"),
    ('{"workspace": "team-a", "target": "workspace:team-b"}', "another workspace"),
    ('{"workspace": "team-a", "target": "notebook:kubeflow/ml-pipeline"}', "is not in"),
    ('{"workspace": "team-a", "target": "nodegroup:hand-made"}', "not one kf-chatops made"),
    ('{"workspace": "team-a", "target": "pod:team-a/x"}', "not something the bot can keep or snooze"),
    ('{"workspace": "nobody", "target": "workspace:nobody"}', "There is no workspace `nobody`"),
    ("x" * 3000, "too long"),
    ('{"workspace": "team-a", "target": "workspace:team-a\\u202e"}', "workspace name"),
]


@pytest.mark.parametrize(("value", "said"), HOSTILE, ids=[f"v{i}" for i in range(len(HOSTILE))])
def test_a_forged_value_gets_a_clear_message_and_nothing_is_applied(
    bot: Running, fake_slack: FakeSlack, value: str, said: str
) -> None:
    before = [(r.id, r.state) for r in requests_in_db(bot)]
    reply = press(bot, fake_slack, buttons.SNOOZE, value, user=ALICE, name="forged")
    assert said in reply, reply
    assert "Traceback" not in reply and len(reply) < 600
    assert [(r.id, r.state) for r in requests_in_db(bot)] == before
    assert_slack_inert(reply)


def test_stop_needs_a_notebook_and_scale_down_a_nodegroup(bot: Running, fake_slack: FakeSlack) -> None:
    before = len(requests_in_db(bot))
    reply = press(
        bot,
        fake_slack,
        buttons.STOP_NOTEBOOK,
        buttons.button_value("team-a", "workspace:team-a"),
        user=ALICE,
        name="stop-ws",
    )
    assert "Stop notebook needs a notebook" in reply
    namespace, _ = workspace(bot)
    reply = press(
        bot,
        fake_slack,
        buttons.SCALE_DOWN,
        buttons.button_value("team-a", f"notebook:{namespace}/nb1"),
        user=ALICE,
        name="down-nb",
    )
    assert "Scale to 0 needs a nodegroup or a workspace" in reply
    assert len(requests_in_db(bot)) == before


def test_a_redelivered_click_files_once(bot: Running, fake_slack: FakeSlack) -> None:
    body = block_action_body(
        buttons.KEEP_4H,
        buttons.button_value("team-a", "workspace:team-a"),
        user_id=ALICE,
        channel_id=COST_CHANNEL,
        message_ts="1764900000.000100",
        response_url=fake_slack.response_url("twice"),
    )
    # Delivered twice, signed anew each time (identical bytes are a replay: test_slack_replay).
    for age in (2, 1):
        assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=int(time.time()) - age)[0] == 200
    wait_response(fake_slack, "twice", "Already recorded")
    assert len([r for r in requests_in_db(bot) if r.kind == "gpu.hold"]) == 1


# -- the pure reading of values ---------------------------------------------------------------------

FACTS = StaticFacts(workspaces={"team-a": _team()})
NOW = datetime(2026, 12, 5, 22, 30, tzinfo=UTC)
CORE = CoreSettings(cost=CostSettings(timezone=ZONE))


def test_values_map_to_the_commands_kinds() -> None:
    ns = _team().namespace
    read = lambda action, target: buttons.request_for(  # noqa: E731
        action, buttons.button_value("team-a", target), now=NOW, settings=CORE, facts=FACTS
    )
    # A click stops only what is still idle when the stop applies (the report may be minutes old).
    assert read(buttons.STOP_NOTEBOOK, f"notebook:{ns}/nb1") == NotebookStop(
        "team-a", "nb1", idle_for=CORE.cost.idle_after
    )
    assert read(buttons.SCALE_DOWN, "workspace:team-a") == GpuScale("team-a", 0)
    assert read(buttons.KEEP_4H, f"notebook:{ns}/nb1") == GpuHold(
        "team-a", f"notebook:{ns}/nb1", duration=timedelta(hours=4)
    )
    # 22:30 UTC is 23:30 in Berlin: tomorrow 09:00 there is 08:00 UTC the next day.
    assert read(buttons.SNOOZE, "workspace:team-a") == GpuHold(
        "team-a", "workspace:team-a", until="2026-12-06T08:00:00+00:00"
    )


@settings(max_examples=300, deadline=None)
@given(
    action=st.sampled_from(buttons.ACTIONS),
    value=st.one_of(
        st.text(max_size=300),
        st.builds(
            json.dumps,
            st.dictionaries(
                st.sampled_from(["workspace", "target", "x"]),
                st.one_of(st.text(max_size=80), st.integers(), st.none()),
            ),
        ),
    ),
)
def test_any_value_is_read_or_refused_with_a_clear_message(action: str, value: str) -> None:
    try:
        kind = buttons.request_for(action, value, now=NOW, settings=CORE, facts=FACTS)
    except errors.KfError as refused:
        assert refused.user_message and "Traceback" not in refused.user_message
        return
    assert type(kind).__name__ in ("NotebookStop", "GpuScale", "GpuHold")
    assert getattr(kind, "workspace") == "team-a"  # noqa: B009 (any of the three kinds)
