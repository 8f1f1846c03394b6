"""Cost guards (#13), through the real bot over signed HTTP and the fake Slack Web API.

- ``--instance-type`` must be a type the bot can price (its table or ``KFBOT_PRICE_OVERRIDES``);
  anything else is refused naming the closest known types, and nothing is recorded.
- ``KFBOT_MAX_NODES`` caps ``--nodes MAX`` for a new workspace and a resize.
- Approve asks "are you sure?" (a Block Kit ``confirm`` object) on a card whose cost may exceed
  ``KFBOT_CONFIRM_ABOVE`` a month, stating the cost, and on every delete, stating what goes.
- A GPU quota card says how many GPUs the workspace's nodegroups can hold, and warns when the
  quota cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import blocks
from bot.app import Running
from bot.settings import Settings, SettingsError
from handlers.model import RequestState
from tests.fakes.slack import FakeSlack
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    REQUEST_ID,
    add_users,
    button,
    card_for,
    click,
    requests_in_db,
    settings_for,
    slash,
    wait_state,
)


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    settings = settings_for(
        fake_slack, tmp_path, KFBOT_PRICE_OVERRIDES="m7i.large=0.1008", KFBOT_MAX_NODES="10"
    )
    with running_bot(settings) as running:
        yield running


def ask(bot: Running, fake: FakeSlack, text: str, *, user: str = ALICE) -> tuple[str | None, str]:
    """``/kf TEXT``: (the request id it filed or None, the reply)."""
    reply = slash(bot, fake, text, user=user, name=f"ask{len(fake.responses)}")
    match = REQUEST_ID.search(reply)
    return (match.group(0) if match else None), reply


def made(bot: Running, fake: FakeSlack, name: str = "team-a") -> None:
    request_id, reply = ask(bot, fake, f"workspace new {name} --gpu 1")
    assert request_id, reply
    assert click(bot, fake, card_for(fake, request_id), blocks.APPROVE, user=BOB) == 200
    wait_state(bot, request_id, RequestState.SUCCEEDED)


def approve_confirm(fake: FakeSlack, request_id: str) -> dict[str, Any] | None:
    found = button(card_for(fake, request_id), blocks.APPROVE)
    assert found is not None
    confirm: dict[str, Any] | None = found.get("confirm")
    return confirm


# -- instance types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("g5.xlarg", "`g5.xlarge`"),
        ("g4dn.xlage", "`g4dn.xlarge`"),
        ("p5.48xlarg", "`p5.48xlarge`"),
        ("foo.bar", "`g"),  # nothing alike: common GPU types are offered
        ("m5.larg", "`m5.large`"),  # CPU types are priced too
        ("m7i.larg", "`m7i.large`"),  # and a type the operator priced is known
    ],
)
def test_an_unknown_instance_type_is_refused_with_the_closest_known_ones(
    bot: Running, fake_slack: FakeSlack, typed: str, suggested: str
) -> None:
    request_id, reply = ask(bot, fake_slack, f"workspace new team-a --gpu 1 --instance-type {typed}")

    assert request_id is None and "knows a price for" in reply and "Did you mean" in reply
    assert suggested in reply and "KFBOT_PRICE_OVERRIDES" in reply
    assert requests_in_db(bot) == []


def test_a_priced_type_is_accepted(bot: Running, fake_slack: FakeSlack) -> None:
    for name, typed in (("t-g5", "g5.xlarge"), ("t-m5", "m5.large"), ("t-m7i", "m7i.large")):
        request_id, reply = ask(bot, fake_slack, f"workspace new {name} --instance-type {typed}")
        assert request_id is not None, reply


def test_a_resize_to_an_unknown_type_is_refused(bot: Running, fake_slack: FakeSlack) -> None:
    made(bot, fake_slack)
    before = len(requests_in_db(bot))
    request_id, reply = ask(bot, fake_slack, "workspace resize team-a --nodes 0:2 --instance-type g6.xlarg")
    assert request_id is None and "`g6.xlarge`" in reply
    assert len(requests_in_db(bot)) == before


# -- KFBOT_MAX_NODES ---------------------------------------------------------------------------------


def test_nodes_above_the_limit_are_refused_and_at_the_limit_accepted(
    bot: Running, fake_slack: FakeSlack
) -> None:
    request_id, reply = ask(bot, fake_slack, "workspace new team-a --gpu 1 --nodes 0:100")
    assert request_id is None and "KFBOT_MAX_NODES" in reply and "10" in reply
    assert requests_in_db(bot) == []

    request_id, reply = ask(bot, fake_slack, "workspace new team-a --gpu 1 --nodes 0:10")
    assert request_id is not None, reply


def test_a_resize_above_the_limit_is_refused(bot: Running, fake_slack: FakeSlack) -> None:
    made(bot, fake_slack)
    request_id, reply = ask(bot, fake_slack, "workspace resize team-a --nodes 0:11")
    assert request_id is None and "KFBOT_MAX_NODES" in reply


@pytest.mark.parametrize("value", ["0", "101", "ten", "2.5"])
def test_a_bad_max_nodes_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KFBOT_MAX_NODES": value})
    assert "KFBOT_MAX_NODES" in caught.value.user_message


# -- the confirm dialog on Approve -----------------------------------------------------------------------


def test_a_costly_card_asks_to_confirm_with_its_cost(bot: Running, fake_slack: FakeSlack) -> None:
    request_id, reply = ask(
        bot, fake_slack, "workspace new team-a --gpu 8 --instance-type p4d.24xlarge --nodes 0:4"
    )
    assert request_id is not None, reply

    confirm = approve_confirm(fake_slack, request_id)
    assert confirm is not None
    text = confirm["text"]["text"]
    assert "/month" in text and "p4d.24xlarge" in text and "$64,123" in text  # 4 x 21.96 x 730
    assert confirm["title"]["text"] == "Approve this cost?" and confirm["style"] == "danger"
    assert confirm["confirm"]["text"] == "Approve" and confirm["deny"]["text"] == "Cancel"
    assert len(text) <= 300 and len(confirm["title"]["text"]) <= 100
    # Reject needs no confirmation: it has its own modal
    assert "confirm" not in (button(card_for(fake_slack, request_id), blocks.REJECT) or {})


def test_a_costly_resize_asks_to_confirm(bot: Running, fake_slack: FakeSlack) -> None:
    made(bot, fake_slack)  # g4dn.xlarge, 0..2
    request_id, reply = ask(bot, fake_slack, "workspace resize team-a --nodes 0:10")
    assert request_id is not None, reply
    confirm = approve_confirm(fake_slack, request_id)
    assert confirm is not None and "10 x g4dn.xlarge" in confirm["text"]["text"]  # ~$3,840/month
    assert "$3,840/month" in confirm["text"]["text"]


def test_a_cheap_card_approves_in_one_click(bot: Running, fake_slack: FakeSlack) -> None:
    request_id, reply = ask(bot, fake_slack, "workspace new team-a --gpu 1")  # 2 x g4dn.xlarge, ~$768/month
    assert request_id is not None, reply
    assert approve_confirm(fake_slack, request_id) is None


def test_the_threshold_is_a_setting(fake_slack: FakeSlack, tmp_path: Path) -> None:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path, KFBOT_CONFIRM_ABOVE="500")) as running:
        request_id, reply = ask(running, fake_slack, "workspace new team-a --gpu 1")
        assert request_id is not None, reply
        confirm = approve_confirm(fake_slack, request_id)
        assert confirm is not None and "$768/month" in confirm["text"]["text"]


def test_every_delete_asks_to_confirm_naming_what_goes(bot: Running, fake_slack: FakeSlack) -> None:
    made(bot, fake_slack)
    request_id, reply = ask(bot, fake_slack, "workspace delete team-a --confirm team-a")
    assert request_id is not None, reply

    confirm = approve_confirm(fake_slack, request_id)
    assert confirm is not None and confirm["title"]["text"] == "Approve a deletion?"
    text = confirm["text"]["text"]
    assert text.startswith("This deletes ") and "Kubeflow Profile `team-a`" in text
    assert "S3 bucket `kf-team-a`" in text
    assert "remove " not in text


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "lots"])
def test_a_bad_confirm_threshold_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KFBOT_CONFIRM_ABOVE": value})
    assert "KFBOT_CONFIRM_ABOVE" in caught.value.user_message


# -- what a GPU quota can use ----------------------------------------------------------------------------


def test_a_gpu_quota_card_shows_the_capacity_and_warns_when_it_cannot_be_reached(
    bot: Running, fake_slack: FakeSlack
) -> None:
    made(bot, fake_slack)  # g4dn.xlarge, 0..2 nodes: 2 GPUs at most

    # asked by an admin, so it waits for another admin's approval (the owner's +1 would apply at once)
    reachable, reply = ask(bot, fake_slack, "quota team-a --gpu 2", user=BOB)
    assert reachable is not None, reply
    card = json.dumps(card_for(fake_slack, reachable)["blocks"])
    assert "hold at most 2 GPUs" in card and "cannot be reached" not in card
    assert ask(bot, fake_slack, f"cancel {reachable}", user=BOB)[1]

    too_much, reply = ask(bot, fake_slack, "quota team-a --gpu 8", user=BOB)
    assert too_much is not None, reply
    card = json.dumps(card_for(fake_slack, too_much)["blocks"], ensure_ascii=False)
    assert "hold at most 2 GPUs" in card
    assert "A GPU quota of 8 cannot be reached" in card and "workspace resize team-a" in card
