"""One Slack team (docs/SECURITY.md, "One Slack team"): the bot serves the team of its bot token.

The signing secret and the app-level token are the app's, so a second installation of the app
(another workspace, or org-wide on Enterprise Grid) sends requests signed and delivered exactly like
ours. Here such requests, for every entry point the bot registers (``/kf``, a durable click, a click
that opens a modal, both modals, ``app_home_opened``, a Home click, an event nobody handles), come
from another team or from none, over signed HTTP and over Socket Mode, with a user id that collides
with an admin's: they are acknowledged and nothing is recorded, applied, looked up or posted. The
same payloads from our team work. Start-up refuses a ``KFBOT_SLACK_TEAM_ID`` that is not the bot
token's team, and an org-wide token.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import blocks, home
from bot.app import Running
from bot.listeners.common import TEAM_REFUSED_TEXT
from bot.settings import TEAM_ID, Settings, SettingsError, sqlite_path
from bot.team import ServedTeam, from_auth_test, refusal
from handlers import errors
from handlers.model import RequestState
from tests.fakes.cli import kfbot
from tests.fakes.slack import (
    BOT_TOKEN,
    DEFAULT_TEAM_ID,
    SIGNING_SECRET,
    FakeSlack,
    _reference_form,
    _reference_payload,
    app_home_opened,
    block_action_body,
    home_action_body,
    post_signed,
    reference_available,
    slash_command_body,
    view_submission_body,
)
from tests.fakes.slack_bot import ADMIN_CHANNEL, running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    button,
    card_for,
    new_workspace_request,
    requests_in_db,
    settings_for,
    settle,
    wait_state,
)
from tests.fakes.slack_socket import FakeSocketMode, event_payload, interactive_payload, slash_payload

Json = dict[str, Any]
OTHER_TEAM = "T0OTHER99"
SERVED = ServedTeam(DEFAULT_TEAM_ID)
REFUSAL_LOG = "refused a Slack request from"


# -- the payloads, from the fakes' builders (themselves built on the reference bodies) -----------


def command(team_id: str, *, user: str = ALICE, url: str = "https://hooks.example/x") -> Json:
    return slash_payload(slash_command_body("requests", user_id=user, response_url=url, team_id=team_id))


def click(team_id: str) -> Json:
    body = block_action_body(
        blocks.APPROVE,
        "R000001:1",
        user_id=BOB,
        channel_id=ADMIN_CHANNEL,
        message_ts="1.000001",
        team_id=team_id,
    )
    return interactive_payload(body)


def home_click(team_id: str) -> Json:
    view = {"id": "VHOME0001", "type": "home", "blocks": []}
    return interactive_payload(
        home_action_body(view, home.HOME_CANCEL, "R000001", user_id=ALICE, team_id=team_id)
    )


def submission(team_id: str) -> Json:
    body = view_submission_body(
        blocks.WORKSPACE_VIEW, {"name": {"name": "team-x"}}, user_id=ALICE, team_id=team_id
    )
    return interactive_payload(body)


def event(team_id: str) -> Json:
    return event_payload(app_home_opened(ALICE), team_id=team_id)


KINDS: dict[str, Callable[[str], Json]] = {
    "command": command,
    "click": click,
    "home click": home_click,
    "view submission": submission,
    "event": event,
}

# Where Slack names the team in each shape (the reference bodies, the Events API envelope).
TEAM_FIELDS: tuple[tuple[str, ...], ...] = (
    ("team_id",),
    ("context_team_id",),
    ("team", "id"),
    ("user", "team_id"),
    ("view", "team_id"),
    ("view", "app_installed_team_id"),
    ("authorizations", "0", "team_id"),
)


def _lookup(payload: Json, path: tuple[str, ...]) -> tuple[Any, str] | None:
    """The container holding ``path``'s last key, and that key; None where the shape lacks it."""
    node: Any = payload
    for key in path[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return (node, path[-1]) if isinstance(node, dict) and path[-1] in node else None


def fields_in(payload: Json) -> list[tuple[str, ...]]:
    return [path for path in TEAM_FIELDS if _lookup(payload, path) is not None]


def without_team(payload: Json) -> Json:
    """The payload with every team field removed (what an unknown sender, or a broken proxy, sends)."""
    bare = copy.deepcopy(payload)
    for path in TEAM_FIELDS:
        found = _lookup(bare, path)
        if found is not None:
            node, key = found
            del node[key]
    bare.pop("team", None)
    return bare


def with_field(payload: Json, path: tuple[str, ...], value: object) -> Json:
    changed = copy.deepcopy(payload)
    found = _lookup(changed, path)
    assert found is not None
    node, key = found
    node[key] = value
    return changed


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_our_payloads_are_served_and_another_teams_or_none_are_refused(kind: str) -> None:
    ours = KINDS[kind](DEFAULT_TEAM_ID)
    assert fields_in(ours), "the fake must name the team where Slack does"
    assert refusal(ours, SERVED) is None
    assert refusal(KINDS[kind](OTHER_TEAM), SERVED) == "another team"
    assert refusal(without_team(ours), SERVED) == "no team"


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(KINDS)),
    team=st.one_of(
        st.from_regex(TEAM_ID, fullmatch=True), st.text(max_size=12), st.sampled_from(["", "t111"])
    ),
)
def test_a_payload_is_served_exactly_when_its_team_is_ours(kind: str, team: str) -> None:
    served = refusal(KINDS[kind](team), SERVED) is None
    assert served is (team == DEFAULT_TEAM_ID)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(KINDS)),
    index=st.integers(min_value=0, max_value=len(TEAM_FIELDS)),
    value=st.one_of(
        st.from_regex(TEAM_ID, fullmatch=True).filter(lambda t: t != DEFAULT_TEAM_ID),
        st.just(""),
        st.integers(),
        st.lists(st.just(DEFAULT_TEAM_ID), max_size=1),
        st.dictionaries(st.just("id"), st.just(DEFAULT_TEAM_ID), max_size=1),
    ),
)
def test_any_one_team_field_naming_another_team_refuses(kind: str, index: int, value: object) -> None:
    """A payload whose team fields disagree (a user of another team clicking in a shared channel, a
    view opened elsewhere) is refused whichever field it is."""
    ours = KINDS[kind](DEFAULT_TEAM_ID)
    paths = fields_in(ours)
    path = paths[index % len(paths)]
    assert refusal(with_field(ours, path, value), SERVED) is not None


@pytest.mark.parametrize("kind", list(KINDS))
def test_enterprise_grid_payloads_must_be_of_our_organisation_and_not_an_org_wide_install(kind: str) -> None:
    ours = KINDS[kind](DEFAULT_TEAM_ID)
    in_grid = {**ours, "enterprise_id": "E0GRID001"}
    assert refusal(in_grid, SERVED) == "another enterprise"
    assert refusal(in_grid, ServedTeam(DEFAULT_TEAM_ID, "E0GRID001")) is None
    assert (
        refusal({**ours, "enterprise": {"id": "E0OTHER01"}}, ServedTeam(DEFAULT_TEAM_ID, "E0GRID001"))
        is not None
    )
    for org_wide in (True, "true", "1"):
        assert refusal({**ours, "is_enterprise_install": org_wide}, SERVED) == "an org-wide installation"
    for workspace in (False, "false", None):
        assert refusal({**ours, "is_enterprise_install": workspace}, SERVED) is None


def _reference(name: str) -> Json:
    found = _reference_payload(name) or _reference_form(name)
    assert found is not None
    return dict(found)


@pytest.mark.skipif(not reference_available(), reason="../shared/reference is not beside the repository")
@pytest.mark.parametrize(
    "name",
    [
        "payload_slash_command.urlencoded",
        "payload_block_action_button.urlencoded",
        "payload_view_submission.urlencoded",
    ],
)
def test_the_real_bodies_are_served_only_for_their_own_team(name: str) -> None:
    real = _reference(name)
    assert refusal(real, ServedTeam("T01ND2P8N91")) is None
    assert refusal(real, SERVED) == "another team"
    assert refusal(without_team(real), ServedTeam("T01ND2P8N91")) == "no team"


def test_start_up_takes_the_token_team_and_refuses_another_or_an_org_wide_token() -> None:
    answer = {"ok": True, "team": "kf-test", "team_id": DEFAULT_TEAM_ID, "is_enterprise_install": False}
    assert from_auth_test(answer, None) == SERVED
    assert from_auth_test(answer, DEFAULT_TEAM_ID) == SERVED
    assert from_auth_test({**answer, "enterprise_id": "E0GRID001"}, None) == ServedTeam(
        DEFAULT_TEAM_ID, "E0GRID001"
    )
    with pytest.raises(errors.Misconfigured) as mismatch:
        from_auth_test(answer, OTHER_TEAM)
    assert OTHER_TEAM in mismatch.value.user_message and DEFAULT_TEAM_ID in mismatch.value.user_message
    assert "KFBOT_SLACK_TEAM_ID" in mismatch.value.user_message
    with pytest.raises(errors.Misconfigured, match="org-wide"):
        from_auth_test({**answer, "is_enterprise_install": True}, None)
    for no_team in ({}, {**answer, "team_id": None}, {**answer, "team_id": "E0GRID001"}):
        with pytest.raises(errors.Misconfigured):
            from_auth_test(no_team, None)


@pytest.mark.parametrize("bad", ["t111", "T1", "U0ALICE01", "T1-11", "T11\u0661", "Tabc", "E0GRID001"])
def test_kfbot_slack_team_id_must_be_a_team_id(bad: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"KFBOT_SLACK_TEAM_ID": bad})
    assert "KFBOT_SLACK_TEAM_ID" in str(refused.value)
    assert Settings.from_env({"KFBOT_SLACK_TEAM_ID": "T0123ABCD"}).slack.team_id == "T0123ABCD"
    assert Settings.from_env({}).slack.team_id is None


# -- the running bot over signed HTTP --------------------------------------------------------------


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


TABLES = (
    "requests",
    "slack_inbox",
    "audit_events",
    "idempotency_keys",
    "decision_keys",
    "notification_outbox",
)


def rows(bot: Running) -> dict[str, int]:
    """Rows of every table a served request writes (read-only, beside the bot's own connections)."""
    path = sqlite_path(bot.settings.provisioning.database_url)
    assert path is not None
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return {table: conn.execute(f"select count(*) from {table}").fetchone()[0] for table in TABLES}


def form_body(payload: Json) -> bytes:
    """HTTP mode's body for a decoded payload: a slash command's form, an interaction's ``payload``
    field, an event's JSON."""
    if "command" in payload:
        return urlencode(payload).encode()
    if payload.get("type") == "event_callback":
        return json.dumps(payload).encode()
    return urlencode({"payload": json.dumps(payload)}).encode()


def refused_over_http(bot: Running, fake: FakeSlack, payload: Json, caplog: pytest.LogCaptureFixture) -> None:
    """Send ``payload`` from another team and with no team: each is answered 200 (nothing or the
    short text), logged once, and nothing follows: no Slack call, no row, no response."""
    before = settle(fake)
    tables = rows(bot)
    warnings = len([r for r in caplog.records if REFUSAL_LOG in r.getMessage()])
    variants = [_retarget(payload, OTHER_TEAM), without_team(payload)]
    for variant in variants:
        status, _, answer = post_signed(bot.url, form_body(variant), SIGNING_SECRET)
        assert status == 200
        assert answer.decode() == (TEAM_REFUSED_TEXT if "command" in variant else "")
    assert settle(fake) == before, [c.method for c in fake.calls[before:]]
    assert rows(bot) == tables
    assert "foreign" not in fake.responses
    refusals = [r for r in caplog.records if REFUSAL_LOG in r.getMessage()][warnings:]
    assert [r.levelno for r in refusals] == [logging.WARNING] * len(variants)
    for record in refusals:  # the reason, never a value of the payload
        assert not {ALICE, BOB, OTHER_TEAM, "team-x", "foreign"} & set(
            record.getMessage().replace(":", " ").split()
        )


def _retarget(payload: Json, team: str) -> Json:
    changed = copy.deepcopy(payload)
    for path in fields_in(changed):
        node, key = _lookup(changed, path)  # type: ignore[misc]
        node[key] = team
    if isinstance(changed.get("team"), dict):
        changed["team"]["id"] = team
    return changed


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def test_a_command_from_another_team_is_acked_and_nothing_else(
    bot: Running, fake_slack: FakeSlack, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    foreign = slash_payload(
        slash_command_body(
            "workspace new team-x --gpu 1", user_id=ALICE, response_url=fake_slack.response_url("foreign")
        )
    )
    refused_over_http(bot, fake_slack, foreign, caplog_warnings)
    # the same command from our team is served
    new_workspace_request(bot, fake_slack, name="team-x")
    assert [r.state for r in requests_in_db(bot)] == [RequestState.PENDING]


def test_clicks_from_another_team_never_decide_or_open_anything(
    bot: Running, fake_slack: FakeSlack, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """Bob's id in another workspace is not Bob: his Approve and Reject there do nothing here."""
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)
    for action_id in (blocks.APPROVE, blocks.REJECT, blocks.VIEW_PLAN):
        found = button(card, action_id)
        assert found is not None
        body = block_action_body(
            action_id, found["value"], user_id=BOB, channel_id=card["channel"], message_ts=card["ts"],
            response_url=fake_slack.response_url("foreign"), message_blocks=card.get("blocks"),
        )  # fmt: skip
        refused_over_http(bot, fake_slack, interactive_payload(body), caplog_warnings)
    assert [r.state for r in requests_in_db(bot)] == [RequestState.PENDING]
    # Bob in our workspace approves
    approve = button(card, blocks.APPROVE)
    assert approve is not None
    body = block_action_body(
        blocks.APPROVE, approve["value"], user_id=BOB, channel_id=card["channel"], message_ts=card["ts"],
        response_url=fake_slack.response_url("ours"), message_blocks=card.get("blocks"),
    )  # fmt: skip
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
    wait_state(bot, request_id, RequestState.SUCCEEDED)


def test_modal_submissions_from_another_team_record_nothing(
    bot: Running, fake_slack: FakeSlack, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    reject = view_submission_body(
        blocks.REJECT_VIEW, {"reason": {"reason": "foreign reason"}}, user_id=BOB,
        private_metadata=json.dumps({"r": request_id, "c": ADMIN_CHANNEL}),
    )  # fmt: skip
    refused_over_http(bot, fake_slack, interactive_payload(reject), caplog_warnings)
    form = view_submission_body(
        blocks.WORKSPACE_VIEW, {"name": {"name": "team-x"}}, user_id=ALICE,
        private_metadata=json.dumps({"c": "C111"}),
    )  # fmt: skip
    refused_over_http(bot, fake_slack, interactive_payload(form), caplog_warnings)
    assert [(r.id, r.state) for r in requests_in_db(bot)] == [(request_id, RequestState.PENDING)]


def test_the_app_home_and_events_of_another_team_are_not_served(
    bot: Running, fake_slack: FakeSlack, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    refused_over_http(bot, fake_slack, event_payload(app_home_opened(ALICE)), caplog_warnings)
    assert fake_slack.home_view(ALICE) is None
    reaction = {"type": "reaction_added", "user": ALICE, "reaction": "eyes", "event_ts": "1700000000.000200"}
    refused_over_http(bot, fake_slack, event_payload(reaction), caplog_warnings)
    view = {"id": "VHOME0001", "type": "home", "blocks": []}
    cancel = home_action_body(view, home.HOME_CANCEL, request_id, user_id=ALICE)
    refused_over_http(bot, fake_slack, interactive_payload(cancel), caplog_warnings)
    assert [r.state for r in requests_in_db(bot)] == [RequestState.PENDING]
    # ours: the Home is published
    ours = json.dumps(event_payload(app_home_opened(ALICE))).encode()
    assert post_signed(bot.url, ours, SIGNING_SECRET)[0] == 200
    fake_slack.wait_for(lambda: fake_slack.home_view(ALICE), WAIT, "Alice's App Home")


# -- Socket Mode ------------------------------------------------------------------------------------

APP_TOKEN = "xapp-" + "1-test"


def test_over_socket_mode_other_teams_are_acknowledged_and_dropped(
    fake_slack: FakeSlack, tmp_path: Path, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    add_users(fake_slack)
    with FakeSocketMode() as endpoint:
        fake_slack.socket_mode = endpoint
        with running_bot(settings_for(fake_slack, tmp_path, SLACK_APP_TOKEN=APP_TOKEN)) as running:
            endpoint.wait_connected()
            before = settle(fake_slack)
            url = fake_slack.response_url("foreign")
            slash = slash_payload(slash_command_body("workspace new team-x", user_id=ALICE, response_url=url))
            approve = interactive_payload(
                block_action_body(blocks.APPROVE, "R000001:1", user_id=BOB, channel_id=ADMIN_CHANNEL,
                                  message_ts="1.000001", response_url=url)
            )  # fmt: skip
            form = interactive_payload(
                view_submission_body(blocks.WORKSPACE_VIEW, {"name": {"name": "team-x"}}, user_id=ALICE)
            )
            opened = event_payload(app_home_opened(ALICE))
            sent = []
            for kind, payload in (("slash_commands", slash), ("interactive", approve), ("interactive", form),
                                  ("events_api", opened)):  # fmt: skip
                for variant in (_retarget(payload, OTHER_TEAM), without_team(payload)):
                    inline = kind == "slash_commands" or variant.get("type") == "view_submission"
                    envelope = endpoint.deliver(kind, variant, accepts_response_payload=inline)
                    sent.append((kind, envelope))
            for kind, envelope in sent:
                ack = endpoint.ack_for(envelope)
                expected: Json = {"envelope_id": envelope}
                if kind == "slash_commands":
                    expected["payload"] = {"text": TEAM_REFUSED_TEXT}
                assert ack == expected
            assert settle(fake_slack) == before, [c.method for c in fake_slack.calls[before:]]
            assert requests_in_db(running) == [] and rows(running)["slack_inbox"] == 0
            assert "foreign" not in fake_slack.responses
            assert len([r for r in caplog_warnings.records if REFUSAL_LOG in r.getMessage()]) == len(sent)
        fake_slack.socket_mode = None


# -- start-up ----------------------------------------------------------------------------------------


def test_start_up_refuses_a_team_id_that_is_not_the_tokens(fake_slack: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(fake_slack, tmp_path, KFBOT_SLACK_TEAM_ID=OTHER_TEAM)
    with pytest.raises(errors.Misconfigured) as refused, running_bot(settings):
        pytest.fail("the bot started for another team")
    assert OTHER_TEAM in refused.value.user_message and DEFAULT_TEAM_ID in refused.value.user_message
    # nothing beyond auth.test was asked of Slack
    assert {c.method for c in fake_slack.calls} == {"auth.test"}


def test_start_up_with_the_tokens_team_serves(fake_slack: FakeSlack, tmp_path: Path) -> None:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path, KFBOT_SLACK_TEAM_ID=DEFAULT_TEAM_ID)) as running:
        assert running.edge.team == SERVED
        new_workspace_request(running, fake_slack)


def test_start_up_refuses_an_org_wide_token(
    fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_wide = {"is_enterprise_install": True, "enterprise_id": "E0GRID001"}
    monkeypatch.setattr(fake_slack, "auth_extra", org_wide)  # the fake serves the worker's other tests
    with (
        pytest.raises(errors.Misconfigured, match="org-wide"),
        running_bot(settings_for(fake_slack, tmp_path)),
    ):
        pytest.fail("the bot started with an org-wide token")


def test_kfbot_serve_names_the_mismatch_in_one_line(fake_slack: FakeSlack, tmp_path: Path) -> None:
    assert kfbot(tmp_path, "migrate").returncode == 0
    done = kfbot(
        tmp_path,
        "serve",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        KFBOT_ADMIN_CHANNEL=ADMIN_CHANNEL,
        KFBOT_SLACK_API_URL=fake_slack.base_url,
        KFBOT_SLACK_TEAM_ID=OTHER_TEAM,
    )
    assert done.returncode == 2
    assert (
        "KFBOT_SLACK_TEAM_ID" in done.stderr and OTHER_TEAM in done.stderr and DEFAULT_TEAM_ID in done.stderr
    )
    assert "Traceback" not in done.stderr
