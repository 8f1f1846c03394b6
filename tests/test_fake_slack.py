"""The fake Slack Web API works through the real clients: slack_sdk's WebClient and a Bolt app over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    reference_available,
    reference_dir,
    serve_bolt,
    sign,
    slash_command_body,
    view_submission_body,
)

# Until the lead's conftest loads it for everyone; pytest ignores a second registration.

ADMINS = "CADMINS01"


def _error(call: Callable[[], Any]) -> str:
    with pytest.raises(SlackApiError) as info:
        call()
    return str(info.value.response["error"])


# ---- WebClient against the fake ----------------------------------------------------------------
def test_auth_test_has_the_bot_identity(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    answer = slack_client.auth_test()
    assert answer.data == {
        "ok": True,
        "url": "https://kf-test.slack.com/",
        "team": "kf-test",
        "user": "kfbot",
        "team_id": "T111",
        "user_id": fake_slack.bot_user_id,
        "bot_id": fake_slack.bot_id,
        "is_enterprise_install": False,
    }
    assert fake_slack.calls[0].token == BOT_TOKEN  # sent as the Authorization bearer header


def test_messages_threads_updates_and_deletes(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    card = [{"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": "*new workspace*"}}]
    first = slack_client.chat_postMessage(channel=ADMINS, text="request 1", blocks=card)
    second = slack_client.chat_postMessage(channel=ADMINS, text="request 2")
    assert first["channel"] == ADMINS and first["message"]["blocks"] == card
    assert first["message"]["bot_id"] == fake_slack.bot_id and first["message"]["ts"] == first["ts"]
    assert float(first["ts"]) < float(second["ts"]) and len(first["ts"].split(".")[1]) == 6

    reply = slack_client.chat_postMessage(channel=ADMINS, thread_ts=first["ts"], text="provisioning…")
    assert fake_slack.replies(ADMINS, first["ts"]) == [fake_slack.messages[(ADMINS, reply["ts"])]]
    assert fake_slack.messages[(ADMINS, first["ts"])]["reply_count"] == 1

    # Slack keeps the previous blocks when chat.update omits them, and drops them on blocks=[].
    updated = slack_client.chat_update(channel=ADMINS, ts=first["ts"], text="approved by bob")
    assert updated["ts"] == first["ts"] and updated["message"]["blocks"] == card
    stored = fake_slack.messages[(ADMINS, first["ts"])]
    assert stored["text"] == "approved by bob" and stored["blocks"] == card and "edited" in stored
    slack_client.chat_update(channel=ADMINS, ts=first["ts"], text="done", blocks=[])
    assert fake_slack.messages[(ADMINS, first["ts"])]["blocks"] == []

    assert slack_client.chat_delete(channel=ADMINS, ts=second["ts"]).data == {
        "ok": True,
        "channel": ADMINS,
        "ts": second["ts"],
    }
    assert (ADMINS, second["ts"]) not in fake_slack.messages
    assert (
        _error(lambda: slack_client.chat_update(channel=ADMINS, ts=second["ts"], text="x"))
        == "message_not_found"
    )
    with pytest.warns(UserWarning, match="top-level `text`"):
        assert _error(lambda: slack_client.chat_postMessage(channel=ADMINS)) == "no_text"


def test_ephemeral_and_direct_messages(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    fake_slack.add_user("UALICE01", email="alice@example.com")
    fake_slack.add_user("UGONE001", email="gone@example.com", deleted=True)
    eph = slack_client.chat_postEphemeral(channel="C111", user="UALICE01", text="queued as #7")
    assert fake_slack.ephemerals == [
        {"channel": "C111", "user": "UALICE01", "message_ts": eph["message_ts"], "text": "queued as #7"}
    ]

    opened = slack_client.conversations_open(users="UALICE01")
    dm = fake_slack.dm_channel("UALICE01")
    assert opened.data == {"ok": True, "channel": {"id": dm}} and dm.startswith("D")
    assert slack_client.conversations_open(users="UALICE01")["already_open"] is True
    # Posting to a user id lands in the DM, and Slack answers with the D channel.
    assert slack_client.chat_postMessage(channel="UALICE01", text="approved")["channel"] == dm
    assert [m["text"] for m in fake_slack.messages_in(dm)] == ["approved"]

    assert _error(lambda: slack_client.conversations_open(users="UNOBODY1")) == "user_not_found"
    assert _error(lambda: slack_client.conversations_open(users="UGONE001")) == "user_disabled"


def test_user_directory(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    fake_slack.add_user("UALICE01", email="Alice@Example.com", is_admin=True)
    fake_slack.add_user("UNOMAIL1", name="bob")
    fake_slack.add_user("UGONE001", email="gone@example.com", deleted=True)

    alice = slack_client.users_info(user="UALICE01")["user"]
    assert alice["profile"]["email"] == "Alice@Example.com" and alice["is_admin"] is True
    assert alice["deleted"] is False and alice["team_id"] == "T111"
    assert "email" not in slack_client.users_info(user="UNOMAIL1")["user"]["profile"]
    assert slack_client.users_info(user="UGONE001")["user"]["deleted"] is True
    assert slack_client.users_info(user=fake_slack.bot_user_id)["user"]["is_bot"] is True
    assert _error(lambda: slack_client.users_info(user="UNOBODY1")) == "user_not_found"

    assert slack_client.users_lookupByEmail(email="alice@example.com")["user"]["id"] == "UALICE01"
    assert _error(lambda: slack_client.users_lookupByEmail(email="x@example.com")) == "users_not_found"
    # Slack does not find deactivated users by email.
    assert _error(lambda: slack_client.users_lookupByEmail(email="gone@example.com")) == "users_not_found"

    fake_slack.set_usergroup("SADMINS1", ["UALICE01"])
    assert slack_client.usergroups_users_list(usergroup="SADMINS1")["users"] == ["UALICE01"]
    assert _error(lambda: slack_client.usergroups_users_list(usergroup="SNOPE001")) == "no_such_subteam"


def test_views_open_update_publish(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    fake_slack.add_user("UALICE01")
    modal = {
        "type": "modal",
        "callback_id": "ws_new",
        "title": {"type": "plain_text", "text": "New workspace"},
        "blocks": [{"type": "input", "block_id": "name", "element": {"type": "plain_text_input"}}],
    }
    opened = slack_client.views_open(trigger_id="123.456.abc", view=modal)["view"]
    assert opened["id"].startswith("V") and opened["blocks"] == modal["blocks"]
    assert opened["callback_id"] == "ws_new" and opened["root_view_id"] == opened["id"] and opened["hash"]
    assert fake_slack.last_view() == opened and fake_slack.views[opened["id"]]["title"] == modal["title"]
    # A trigger opens one view only.
    assert (
        _error(lambda: slack_client.views_open(trigger_id="123.456.abc", view=modal))
        == "exchanged_trigger_id"
    )

    changed = {**modal, "blocks": []}
    updated = slack_client.views_update(view_id=opened["id"], hash=opened["hash"], view=changed)["view"]
    assert updated["id"] == opened["id"] and fake_slack.views[opened["id"]]["blocks"] == []
    stale = lambda: slack_client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)  # noqa: E731
    assert _error(stale) == "hash_conflict"
    assert _error(lambda: slack_client.views_update(view_id="VNOPE", view=modal)) == "not_found"

    home = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]}
    published = slack_client.views_publish(user_id="UALICE01", view=home)["view"]
    again = slack_client.views_publish(user_id="UALICE01", view=home)["view"]
    assert published["type"] == "home" and again["id"] == published["id"]


def test_form_encoded_calls_and_token_in_body(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    # chat.delete and conversations.open go form-encoded from slack_sdk; JSON-ish fields arrive as strings.
    slack_client.api_call(
        "chat.postMessage",
        params={"channel": ADMINS, "blocks": json.dumps([{"type": "divider"}]), "text": "t"},
    )
    assert fake_slack.calls_to("chat.postMessage")[-1]["blocks"] == [{"type": "divider"}]
    no_header = WebClient(base_url=fake_slack.base_url)
    assert no_header.api_call("auth.test", params={"token": "xoxb-" + "inbody"})["ok"] is True
    assert fake_slack.calls[-1].token == "xoxb-inbody" and fake_slack.calls[-1].params == {}


def test_auth_errors_and_unknown_methods(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    assert _error(lambda: WebClient(base_url=fake_slack.base_url).auth_test()) == "not_authed"
    fake_slack.accepted_tokens = {"xoxb-" + "other"}
    assert _error(slack_client.auth_test) == "invalid_auth"
    fake_slack.accepted_tokens = None
    assert _error(lambda: slack_client.api_call("files.upload.nope")) == "unknown_method"


def test_fail_next_answers_once(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    fake_slack.fail_next("chat.postMessage", "channel_not_found")
    assert _error(lambda: slack_client.chat_postMessage(channel=ADMINS, text="x")) == "channel_not_found"
    assert slack_client.chat_postMessage(channel=ADMINS, text="x")["ok"] is True


def test_rate_limit_then_retry_handler(fake_slack: FakeSlack) -> None:
    plain = WebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
    fake_slack.rate_limit_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as info:
        plain.chat_postMessage(channel=ADMINS, text="x")
    assert info.value.response.status_code == 429 and info.value.response["error"] == "ratelimited"
    assert info.value.response.headers["Retry-After"] == "7"

    retrying = WebClient(
        token=BOT_TOKEN,
        base_url=fake_slack.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake_slack.reset()
    fake_slack.rate_limit_next("chat.postMessage", retry_after=0)
    assert retrying.chat_postMessage(channel=ADMINS, text="x")["ok"] is True
    assert len(fake_slack.calls_to("chat.postMessage")) == 2 and len(fake_slack.messages) == 1


def test_reset_keeps_the_directory_unless_asked(fake_slack: FakeSlack, slack_client: WebClient) -> None:
    fake_slack.add_user("UALICE01")
    slack_client.chat_postMessage(channel=ADMINS, text="x")
    fake_slack.reset()
    assert fake_slack.calls == [] and fake_slack.messages == {}
    assert slack_client.users_info(user="UALICE01")["ok"] is True
    fake_slack.reset(users=True)
    assert _error(lambda: slack_client.users_info(user="UALICE01")) == "user_not_found"


def test_wait_for_explains_a_timeout(fake_slack: FakeSlack) -> None:
    with pytest.raises(AssertionError, match=r"(?s)timed out after 0.05s.*calls_to\(\"views.open\"\)"):
        fake_slack.wait_for(lambda: fake_slack.calls_to("views.open")[0], timeout=0.05)


# ---- request builders -------------------------------------------------------------------------
def _payload(body: bytes) -> dict[str, Any]:
    return dict(json.loads(dict(parse_qsl(body.decode()))["payload"]))


def test_signature_matches_slack_sdk_verifier() -> None:
    body = b"token=x&text=hello"
    headers = sign(body, SIGNING_SECRET)
    assert SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.skipif(not reference_available(), reason=f"no reference payloads in {reference_dir()}")
def test_builders_keep_the_reference_shapes() -> None:
    ref = reference_dir() / "slack-payloads"
    slash = dict(parse_qsl(slash_command_body("share ws a", user_id="U1", response_url="http://r").decode()))
    recorded = dict(
        parse_qsl((ref / "payload_slash_command.urlencoded").read_text().strip(), keep_blank_values=True)
    )
    assert list(slash) == list(recorded) and slash["text"] == "share ws a" and slash["command"] == "/kf"

    action = _payload(block_action_body("approve", "7", user_id="U2", channel_id="C9", message_ts="1.000100"))
    recorded_action = json.loads(
        dict(parse_qsl((ref / "payload_block_action_button.urlencoded").read_text()))["payload"]
    )
    assert set(recorded_action) - {"response_url"} <= set(action)
    assert action["actions"][0] | {"action_ts": None} == {
        "type": "button",
        "action_id": "approve",
        "block_id": "b",
        "value": "7",
        "text": {"type": "plain_text", "text": "approve", "emoji": True},
        "action_ts": None,
    }
    view = _payload(view_submission_body("ws_new", {"name": {"name_input": "team-a"}}, user_id="U3"))["view"]
    assert view["state"]["values"] == {
        "name": {"name_input": {"type": "plain_text_input", "value": "team-a"}}
    }
    assert view["title"]["text"] == "Modal Title"  # kept from the recording


def test_builders_work_without_the_reference_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KFBOT_REFERENCE_DIR", str(tmp_path / "absent"))
    assert not reference_available()
    slash = dict(parse_qsl(slash_command_body("help", user_id="U1", response_url="http://r").decode()))
    assert slash["user_id"] == "U1" and slash["trigger_id"].count(".") == 2
    body = view_submission_body("cb", {"b": {"a": None}}, user_id="U1", private_metadata="42")
    assert _payload(body)["view"]["private_metadata"] == "42"
    assert _payload(block_action_body("x", "y", user_id="U", channel_id="C", message_ts="1.1"))["type"] == (
        "block_actions"
    )


# ---- a Bolt app over HTTP -----------------------------------------------------------------------
@pytest.fixture
def bolt(fake_slack: FakeSlack) -> Iterator[tuple[App, str, list[dict[str, Any]]]]:
    # Bolt takes the token from the client it is given; App(token=...) next to client= is ignored.
    app = App(client=WebClient(token=BOT_TOKEN, base_url=fake_slack.base_url), signing_secret=SIGNING_SECRET)
    seen: list[dict[str, Any]] = []

    @app.command("/kf")
    def kf(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack("on it")
        seen.append(body)
        client.chat_postMessage(channel=ADMINS, text=f"request from <@{body['user_id']}>: {body['text']}")
        respond(text="queued as #1", response_type="ephemeral")

    @app.action("approve")
    def approve(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        client.chat_update(
            channel=body["channel"]["id"], ts=body["message"]["ts"], text="approved", blocks=[]
        )

    @app.view("ws_new")
    def ws_new(ack: Ack, view: dict[str, Any]) -> None:
        name = view["state"]["values"]["name"]["name_input"]["value"]
        if not name:
            ack(response_action="errors", errors={"name": "required"})
            return
        ack()
        seen.append({"name": name, "meta": view["private_metadata"]})

    with serve_bolt(app) as url:
        yield app, url, seen


def test_app_construction_calls_auth_test_once(
    fake_slack: FakeSlack, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    assert len(fake_slack.calls_to("auth.test")) == 1


def test_signed_slash_command_runs_and_responds(
    fake_slack: FakeSlack, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    _, url, seen = bolt
    body = slash_command_body(
        "workspace new team-a", user_id="UALICE01", response_url=fake_slack.response_url("slash")
    )
    status, _, reply = post_signed(url, body, SIGNING_SECRET)
    assert (status, reply) == (200, b"on it")
    posted = fake_slack.wait_for(lambda: fake_slack.responses["slash"])
    assert posted == [{"text": "queued as #1", "response_type": "ephemeral"}]
    assert seen[0]["text"] == "workspace new team-a"
    assert fake_slack.messages_in(ADMINS)[0]["text"] == "request from <@UALICE01>: workspace new team-a"


def test_bad_signature_and_stale_timestamp_are_rejected(
    fake_slack: FakeSlack, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    _, url, seen = bolt
    body = slash_command_body("help", user_id="UALICE01", response_url=fake_slack.response_url("bad"))
    forged = post_signed(url, body, SIGNING_SECRET, headers_override={"X-Slack-Signature": "v0=" + "0" * 64})
    wrong_secret = post_signed(url, body, "not-the-secret")
    stale = post_signed(url, body, SIGNING_SECRET, timestamp=int(time.time()) - 6 * 60)
    assert [forged[0], wrong_secret[0], stale[0]] == [401, 401, 401]
    time.sleep(0.1)  # nothing may have run in the background either
    assert seen == [] and fake_slack.responses == {} and fake_slack.messages == {}


def test_block_action_dispatches_to_the_action_listener(
    fake_slack: FakeSlack, slack_client: WebClient, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    _, url, _ = bolt
    card = slack_client.chat_postMessage(channel=ADMINS, text="request #1", blocks=[{"type": "divider"}])
    body = block_action_body("approve", "1", user_id="UBOB0001", channel_id=ADMINS, message_ts=card["ts"])
    assert post_signed(url, body, SIGNING_SECRET)[0] == 200
    fake_slack.wait_for(lambda: fake_slack.messages[(ADMINS, card["ts"])]["text"] == "approved")
    assert fake_slack.messages[(ADMINS, card["ts"])]["blocks"] == []


def test_view_submission_dispatches_and_can_return_errors(
    fake_slack: FakeSlack, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    _, url, seen = bolt
    good = view_submission_body(
        "ws_new", {"name": {"name_input": "team-a"}}, user_id="U1", private_metadata="7"
    )
    assert post_signed(url, good, SIGNING_SECRET)[0] == 200
    fake_slack.wait_for(lambda: seen)
    assert seen == [{"name": "team-a", "meta": "7"}]

    empty = view_submission_body("ws_new", {"name": {"name_input": None}}, user_id="U1")
    status, _, reply = post_signed(url, empty, SIGNING_SECRET)
    assert status == 200 and json.loads(reply) == {
        "response_action": "errors",
        "errors": {"name": "required"},
    }


def test_concurrent_requests_are_served_in_parallel(
    fake_slack: FakeSlack, slack_client: WebClient, bolt: tuple[App, str, list[dict[str, Any]]]
) -> None:
    _, url, _ = bolt
    card = slack_client.chat_postMessage(channel=ADMINS, text="request #2")
    bodies = [
        block_action_body("approve", "2", user_id=f"UADMIN0{i}", channel_id=ADMINS, message_ts=card["ts"])
        for i in range(4)
    ]
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda b=b: statuses.append(post_signed(url, b, SIGNING_SECRET)[0]))
        for b in bodies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert statuses == [200] * 4
    fake_slack.wait_for(lambda: len(fake_slack.calls_to("chat.update")) == 4)
