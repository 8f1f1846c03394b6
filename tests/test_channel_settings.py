"""Every channel setting is a Slack conversation id, checked at start-up.

chat.postMessage takes a channel's name, but chat.update needs its id (Slack answers
``channel_not_found``): the drift and idle reports, edited by the configured channel, were posted
again beside their stale copies at every change. And a name is whatever channel holds it today
(rename the admins' channel, and whoever creates one of the old name gets the cards). A typo'd
``KFBOT_WORKSPACE_CHANNELS`` key quietly sent that workspace's reports to the default channel.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.settings import CHANNEL_ID, Settings, SettingsError

SINGLE = ("KFBOT_ADMIN_CHANNEL", "KFBOT_DRIFT_CHANNEL", "KFBOT_COST_CHANNEL")
ALL = (*SINGLE, "KFBOT_WORKSPACE_CHANNELS")

ids = st.from_regex(re.compile(r"[CG][A-Z0-9]{8,12}"), fullmatch=True)


def _read(name: str, value: str) -> Settings:
    return Settings.from_env({name: value})


def _channel(s: Settings, name: str) -> str:
    return {
        "KFBOT_ADMIN_CHANNEL": s.slack.admin_channel,
        "KFBOT_DRIFT_CHANNEL": s.slack.drift_channel,
        "KFBOT_COST_CHANNEL": s.core.cost.cost_channel,
    }[name]


@pytest.mark.parametrize("name", SINGLE)
@settings(max_examples=60, deadline=None)
@given(channel=ids)
def test_any_conversation_id_is_accepted(name: str, channel: str) -> None:
    assert _channel(_read(name, channel), name) == channel


@pytest.mark.parametrize("name", SINGLE)
@settings(max_examples=150, deadline=None)
@given(value=st.text(min_size=1, max_size=30))
@example(value="#kf-admins")
@example(value="kf-admins")
@example(value="c0123abcd")  # a channel name: Slack lowercases names, never ids
@example(value="D0123ABCD")  # a DM: one person, not a channel
@example(value="U0123ABCD")  # a person
@example(value="C0123")  # too short to be an id
@example(value="<#C0123ABCD|kf-admins>")
@example(value="https://acme.slack.com/archives/C0123ABCD")
@example(value="C0123ABCD,C0456EFGH")
@example(value="C0123 ABCD")
@example(value="C0123ABCD\u200b")
@example(value="\uff23\uff10\uff11\uff12\uff13\uff21\uff22\uff23\uff24")  # full-width C0123ABCD
def test_anything_but_an_id_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    stripped = value.strip()
    if not stripped or CHANNEL_ID.fullmatch(stripped):
        return  # unset (the default), or an id: the property above
    with pytest.raises(SettingsError) as refused:
        _read(name, value)
    assert refused.value.problems and all(name in problem for problem in refused.value.problems)


@pytest.mark.parametrize("name", ALL)
def test_a_channel_name_is_refused_with_where_to_find_the_id(name: str) -> None:
    value = "team-a=#kf-admins" if name == "KFBOT_WORKSPACE_CHANNELS" else "#kf-admins"
    with pytest.raises(SettingsError) as refused:
        _read(name, value)
    (problem,) = refused.value.problems
    assert problem.startswith(name) and "'#kf-admins'" in problem
    assert "channel id (C… or G…), not its name" in problem and "About tab" in problem


@pytest.mark.parametrize("name", ALL)
def test_a_direct_message_is_refused_for_every_channel_setting(name: str) -> None:
    value = "team-a=D0123ABCD" if name == "KFBOT_WORKSPACE_CHANNELS" else "D0123ABCD"
    with pytest.raises(SettingsError, match=rf"^{name}: .*direct message.*private channel is fine"):
        _read(name, value)


@pytest.mark.parametrize(
    ("value", "suggested"),
    [
        ("<#C0123ABCD|kf-admins>", "C0123ABCD"),
        ("https://acme.slack.com/archives/G0123ABCD", "G0123ABCD"),
    ],
)
def test_a_pasted_link_or_mention_suggests_the_id_inside_it(value: str, suggested: str) -> None:
    with pytest.raises(SettingsError, match=rf"KFBOT_ADMIN_CHANNEL: .*did you mean {suggested}\?"):
        _read("KFBOT_ADMIN_CHANNEL", value)


def test_workspace_channels_map_valid_workspaces_to_ids() -> None:
    s = _read("KFBOT_WORKSPACE_CHANNELS", "team-a=C0TEAMA01, team-b = G0TEAMB01")
    assert dict(s.core.cost.workspace_channels) == {"team-a": "C0TEAMA01", "team-b": "G0TEAMB01"}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("Team-A=C0TEAMA01", "lowercase: try `team-a`"),  # the message `workspace new` gives
        ("team_a=C0TEAMA01", "contains '_'"),
        ("team-a-=C0TEAMA01", "must end with a letter or digit"),
        ("1team=C0TEAMA01", "must start with a letter"),
        ("team-a=C0TEAMA01,team-a=C0TEAMA02", "`team-a` is given twice"),
        ("team-a=C0TEAMA01,team-a=C0TEAMA01", "`team-a` is given twice"),
        ("team-a=kf-team-a", "team-a: 'kf-team-a' is not a channel id"),
    ],
)
def test_bad_workspace_channels_stop_start_up(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        _read("KFBOT_WORKSPACE_CHANNELS", value)
    (problem,) = refused.value.problems
    assert problem.startswith("KFBOT_WORKSPACE_CHANNELS: ") and says in problem


@settings(max_examples=150, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cc",)),
                     min_size=1, max_size=30))
def test_a_workspace_channel_that_is_not_an_id_is_refused(value: str) -> None:
    if not value.strip() or CHANNEL_ID.fullmatch(value.strip()):
        return
    with pytest.raises(SettingsError) as refused:
        _read("KFBOT_WORKSPACE_CHANNELS", f"team-a={value}")
    assert all(problem.startswith("KFBOT_WORKSPACE_CHANNELS") for problem in refused.value.problems)


@settings(max_examples=60, deadline=None)
@given(channel=ids)
def test_a_workspace_channel_that_is_an_id_is_accepted(channel: str) -> None:
    s = _read("KFBOT_WORKSPACE_CHANNELS", f"team-a={channel}")
    assert dict(s.core.cost.workspace_channels) == {"team-a": channel}


@pytest.mark.parametrize(
    "name", ["KFBOT_WORKSPACE_CHANNELS", "KFBOT_PRICE_OVERRIDES", "KFBOT_USER_ID_MAP", "KFBOT_INSTANCE_SPECS"]
)
def test_a_repeated_key_in_any_pairs_setting_is_refused(name: str) -> None:
    value = {
        "KFBOT_WORKSPACE_CHANNELS": "a=C0TEAMA01,b=C0TEAMB01,a=C0TEAMA02",
        "KFBOT_PRICE_OVERRIDES": "g4dn.xlarge=0.5,g4dn.xlarge=0.6",
        "KFBOT_USER_ID_MAP": "alice@x.com=a@corp.com,alice@x.com=b@corp.com",
        "KFBOT_INSTANCE_SPECS": "g4dn.xlarge=g4dn,g4dn.xlarge=g4",
    }[name]
    with pytest.raises(SettingsError, match=rf"^{name}: .* is given twice"):
        _read(name, value)


def test_every_bad_channel_setting_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(
            {
                "KFBOT_ADMIN_CHANNEL": "#kf-admins",
                "KFBOT_DRIFT_CHANNEL": "drift",
                "KFBOT_COST_CHANNEL": "D0123ABCD",
                "KFBOT_WORKSPACE_CHANNELS": "Team-A=C0TEAMA01",
            }
        )
    assert sorted(p.split(":")[0] for p in refused.value.problems) == sorted(ALL)
