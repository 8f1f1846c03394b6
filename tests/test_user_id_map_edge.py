"""``KFBOT_USER_ID_MAP`` at the edge: a Slack account whose address is a map *target* (a Kubeflow
id another Slack address is mapped to) and not itself a key is refused wherever an actor is made
(slash command, button, Set my password, the shell's ``--as`` and ``as``), so no Slack account can
act as the mapped person; DMs for that Kubeflow id go to the Slack address mapped to it.

The Slack tests drive the real composition (``bot.app.start_slack``: SQLite, dry-run provisioner)
with signed requests against the fake Slack Web API.
"""

from __future__ import annotations

import io
import json
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import blocks, cli
from bot.app import Running
from bot.settings import Settings
from bot.shell import shell_actor
from handlers import errors, policy
from handlers.model import RequestState
from handlers.settings import CoreSettings, WorkspaceDefaults, kubeflow_user_id, slack_emails
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, block_action_body, post_signed
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ADMIN_GROUP,
    ALICE,
    BOB,
    DAVE,
    GRACE,
    WAIT,
    add_users,
    audit_types,
    card_for,
    click,
    dm_texts,
    new_workspace_request,
    requests_in_db,
    settings_for,
    slash,
    wait_response,
    wait_state,
)

MAPPED = "alice@ad.example.com"
"""Alice's Kubeflow id: ``KFBOT_USER_ID_MAP`` maps her Slack address alice@example.com to it."""
OTHER = "U0OTHER01"
"""Another Slack account, whose address is Alice's Kubeflow id."""
REFUSAL = "is a Kubeflow id"


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    fake_slack.add_user(OTHER, MAPPED, "other")
    fake_slack.set_usergroup(ADMIN_GROUP, [GRACE, OTHER])  # an admin, even: refused all the same
    settings_ = settings_for(fake_slack, tmp_path, KFBOT_USER_ID_MAP=f"alice@example.com={MAPPED}")
    with running_bot(settings_) as b:
        yield b


def _press_set_password(bot: Running, fake: FakeSlack, user: str, name: str) -> None:
    body = block_action_body(
        blocks.SET_PASSWORD,
        "",
        user_id=user,
        channel_id=fake.dm_channel(user),
        message_ts="1700000000.000100",
        response_url=fake.response_url(name),
    )
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200


def test_a_slack_account_at_a_mapped_id_cannot_act_as_the_mapped_person(
    bot: Running, fake_slack: FakeSlack
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)  # Alice's workspace and Dex login (MAPPED)
    # A card's button: the other account (an admin) cannot approve Dave's request either.
    daves = new_workspace_request(bot, fake_slack, user=DAVE, name="team-d")
    card = card_for(fake_slack, daves)
    assert click(bot, fake_slack, card, blocks.APPROVE, user=OTHER, name="approve") == 200
    wait_response(fake_slack, "approve", REFUSAL)
    assert wait_state(bot, daves, RequestState.PENDING).decided_by is None
    recorded = len(requests_in_db(bot))

    # Slash commands: sharing Alice's workspace, her password, listing her workspaces.
    for n, text in enumerate(("share team-a dave@example.com", "password reset", "workspace list")):
        reply = slash(bot, fake_slack, text, user=OTHER, name=f"other-{n}")
        assert REFUSAL in reply and "ask an admin" in reply, (text, reply)
        assert "team-a" not in reply
    # Set my password: no modal, no secret, the reason where the click was.
    _press_set_password(bot, fake_slack, OTHER, "other-pw")
    wait_response(fake_slack, "other-pw", REFUSAL)
    assert fake_slack.calls_to("views.open") == []
    assert "secret.revealed" not in audit_types(bot)
    assert len(requests_in_db(bot)) == recorded

    # Alice herself, by her Slack address, still gets her own login's password.
    _press_set_password(bot, fake_slack, ALICE, "alice-pw")
    update = fake_slack.wait_for(lambda: fake_slack.calls_to("views.update"), WAIT)[0]
    assert "Your password" in json.dumps(update["view"])
    assert audit_types(bot).count("secret.revealed") == 1


def test_a_mention_of_that_account_is_refused_and_dms_for_the_id_reach_the_mapped_person(
    bot: Running, fake_slack: FakeSlack
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    recorded = len(requests_in_db(bot))

    reply = slash(bot, fake_slack, f"share team-a <@{OTHER}>", name="mention")
    assert REFUSAL in reply and "type" in reply, reply
    assert len(requests_in_db(bot)) == recorded

    # An admin lets "alice@ad.example.com" set a new password: the button goes to Alice.
    def offered(user: str) -> list[str]:
        return [t for t in dm_texts(fake_slack, user) if "let you set a new password" in t]

    reply = slash(bot, fake_slack, f"password reset {MAPPED}", user=BOB, name="reset")
    fake_slack.wait_for(lambda: offered(ALICE) or offered(OTHER), WAIT, reply)
    assert len(offered(ALICE)) == 1 and dm_texts(fake_slack, OTHER) == []


# -- the shell ---------------------------------------------------------------------------------------


def _shell_settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}",
            "KFBOT_AUDIT_KEY": "shell-test-audit-key-0123456789",
            "KFBOT_USER_ID_MAP": f"alice@example.com={MAPPED}",
        }
    )


def test_the_shell_refuses_a_mapped_id_as_who_you_are(tmp_path: Path) -> None:
    settings = _shell_settings(tmp_path)
    with pytest.raises(errors.Forbidden, match=REFUSAL):
        cli.run_shell(Namespace(as_=MAPPED.upper(), admin=True), settings, stdin=io.StringIO(""))

    out = io.StringIO()
    code = cli.run_shell(
        Namespace(as_="alice@example.com", admin=False),
        settings,
        stdin=io.StringIO(f"as {MAPPED}\nwhoami\n/kf workspace new team-a\nas {MAPPED} --admin\nwhoami\n"),
        stdout=out,
    )
    text = out.getvalue()
    assert code == 0
    assert text.count(REFUSAL) == 2
    assert text.count("\nalice@example.com\n") == 2  # still Alice, both times
    assert "You are now" not in text


# -- the rule, as a property ---------------------------------------------------------------------------

_ADDRESSES = st.sampled_from(["a@x.com", "b@x.com", "c@x.com", "a@ad.x.com", "b@ad.x.com"])


def _core(mapping: dict[str, str]) -> CoreSettings:
    return CoreSettings(workspace=WorkspaceDefaults(user_id_map=mapping))


def _acts(core: CoreSettings, email: str) -> bool:
    try:
        policy.check_slack_address(core, email)
    except errors.Forbidden:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_ADDRESSES, _ADDRESSES, max_size=4), _ADDRESSES, _ADDRESSES)
def test_only_the_map_makes_two_slack_addresses_one_kubeflow_person(
    mapping: dict[str, str], one: str, two: str
) -> None:
    core = _core(mapping)
    same_id = kubeflow_user_id(core, one) == kubeflow_user_id(core, two)
    if one != two and same_id and _acts(core, one) and _acts(core, two):
        # Two Slack accounts that may act share a Kubeflow id only where the map says so for both.
        assert one in mapping and two in mapping
    # DMs for a Kubeflow id go only to addresses that may act and are that id.
    for address in slack_emails(core, kubeflow_user_id(core, one)):
        assert _acts(core, address) and kubeflow_user_id(core, address) == kubeflow_user_id(core, one)
    if _acts(core, one):
        assert one in slack_emails(core, kubeflow_user_id(core, one))


def test_shell_actor_applies_the_rule() -> None:
    core = _core({"alice@example.com": MAPPED})
    with pytest.raises(errors.Forbidden, match=REFUSAL):
        shell_actor(MAPPED, admin=False, settings=core)
    assert shell_actor("Alice@Example.com", admin=False, settings=core).email == "alice@example.com"
