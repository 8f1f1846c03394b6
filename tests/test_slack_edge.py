"""The Slack edge end to end: signed requests over real HTTP to the app served by ``bot.http``,
Slack's Web API played by the fake in ``tests/fakes/slack.py``, and the real composition
(``bot.app.start_slack``: SQLite + the dry-run provisioner, the worker thread, the scheduler).

Assertions are on outcomes: what the admin channel, the DMs, the modals and the ``response_url``
posts hold afterwards, and what the database recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot import app as composition
from bot import blocks, controls, render
from bot import logging as log
from bot.app import Running
from bot.http import HttpServer, wsgi_app
from bot.scheduler import sweep_once
from handlers import parse
from handlers.model import Request, RequestState
from handlers.plan import Plan, Step
from provisioning import WorkspaceView
from tests.fakes.clock import FakeClock
from tests.fakes.slack import (
    SIGNING_SECRET,
    FakeSlack,
    post_signed,
    slash_command_body,
    view_submission_body,
)
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    EVE,
    GRACE,
    REQUEST_ID,
    WAIT,
    add_users,
    audit_types,
    button,
    card_for,
    cards,
    click,
    dm_texts,
    get,
    new_workspace_request,
    requests_in_db,
    response_texts,
    settings_for,
    slash,
    wait_response,
    wait_state,
)


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


def reject_form(fake: FakeSlack) -> dict[str, Any]:
    """The "why reject?" modal the Reject button opened."""
    found: dict[str, Any] = fake.wait_for(
        lambda: [v for v in fake.views.values() if v.get("callback_id") == blocks.REJECT_VIEW], WAIT
    )[0]
    return found


def submit_reason(bot: Running, view: dict[str, Any], reason: str) -> tuple[int, bytes]:
    """Bob submits ``reason`` in the reject modal; the HTTP status and the body of the ack."""
    body = view_submission_body(
        blocks.REJECT_VIEW,
        {"reason": {"reason": reason}},
        user_id=BOB,
        private_metadata=view["private_metadata"],
        view_id=view["id"],
    )
    status, _, answer = post_signed(bot.url, body, SIGNING_SECRET)
    return status, answer


# -- the happy paths -------------------------------------------------------------------------------------


def test_slash_command_records_one_request_and_posts_the_card(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)

    [request] = requests_in_db(bot)
    assert (request.id, request.state, request.requester_email) == (
        request_id,
        RequestState.PENDING,
        "alice@example.com",
    )
    card = card_for(fake_slack, request_id)
    text = json.dumps(card["blocks"])
    assert f"<@{ALICE}>" in text and "workspace.create" in text and "team-a" in text
    assert "EKS nodegroup" in text and "/hour" in text  # plan summary with cost
    assert {button(card, a) is not None for a in (blocks.APPROVE, blocks.REJECT, blocks.VIEW_PLAN)} == {True}
    assert button(card, blocks.APPROVE)["value"] == f"{request_id}:{request.version}"  # type: ignore[index]


def test_approve_updates_the_card_threads_progress_and_dms_the_requester(
    bot: Running, fake_slack: FakeSlack
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    assert click(bot, fake_slack, card, blocks.APPROVE, user=BOB) == 200

    wait_state(bot, request_id, RequestState.SUCCEEDED)
    updated = fake_slack.wait_for(
        lambda: (
            fake_slack.messages[(card["channel"], card["ts"])].get("edited")
            and "Done" in fake_slack.messages[(card["channel"], card["ts"])]["text"]
            and fake_slack.messages[(card["channel"], card["ts"])]
        ),
        WAIT,
    )
    assert button(updated, blocks.APPROVE) is None and button(updated, blocks.REJECT) is None
    assert f"Approved by <@{BOB}>" in json.dumps(updated["blocks"])
    thread = [m["text"] for m in fake_slack.replies(card["channel"], card["ts"])]
    assert any("Dry run of" in t for t in thread) and any("S3 bucket" in t for t in thread)
    assert any("s3:CreateBucket" in t for t in thread)  # the dry-run rendering of each step
    dms = fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, ALICE) if "is done" in t], WAIT)
    assert any(f"approved by <@{BOB}>" in t for t in dm_texts(fake_slack, ALICE))
    dm = next(m for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE)) if m["text"] == dms[0])
    assert button(dm, blocks.SET_PASSWORD) is not None  # the owner sets their Dex password with a click
    assert audit_types(bot).count("request.approved") == 1


def test_reject_asks_for_a_reason_in_a_modal(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    assert click(bot, fake_slack, card, blocks.REJECT, user=BOB) == 200
    view = reject_form(fake_slack)
    assert requests_in_db(bot)[0].state is RequestState.PENDING  # nothing decided before the reason

    status, answer = submit_reason(bot, view, "")
    assert status == 200 and json.loads(answer)["response_action"] == "errors"

    reason = "Too big for this quarter <!channel> @here <@U0DAVE001>"
    assert submit_reason(bot, view, reason)[0] == 200

    request = wait_state(bot, request_id, RequestState.REJECTED)
    assert request.reason == reason
    dm = fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, ALICE) if "rejected" in t], WAIT)[0]
    assert "Too big for this quarter" in dm
    assert "<!channel>" not in dm and "&lt;!channel&gt;" in dm and "<@U0DAVE001>" not in dm  # escaped
    updated = fake_slack.wait_for(
        lambda: (
            "Rejected" in fake_slack.messages[(card["channel"], card["ts"])]["text"]
            and fake_slack.messages[(card["channel"], card["ts"])]
        ),
        WAIT,
    )
    assert button(updated, blocks.APPROVE) is None


def test_a_reason_with_markup_shows_literally_and_one_with_controls_is_refused(
    bot: Running, fake_slack: FakeSlack
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)
    assert click(bot, fake_slack, card, blocks.REJECT, user=BOB) == 200
    view = reject_form(fake_slack)

    refused = [("no\x00pe", "U+0000"), ("fine \u202eenif", "U+202E"), ("x" * 1001, "limit is 1000")]
    for reason, shown in refused:
        status, answer = submit_reason(bot, view, reason)
        assert status == 200 and shown in json.loads(answer)["errors"]["reason"]
    assert requests_in_db(bot)[0].state is RequestState.PENDING

    reason = "*not* _now_ ~ever~ `x` <!here> & <http://evil.example|docs>"
    assert submit_reason(bot, view, reason)[0] == 200

    assert wait_state(bot, request_id, RequestState.REJECTED).reason == reason
    updated = fake_slack.wait_for(
        lambda: (
            "Rejected" in fake_slack.messages[(card["channel"], card["ts"])]["text"]
            and fake_slack.messages[(card["channel"], card["ts"])]
        ),
        WAIT,
    )
    literal = "```*not* _now_ ~ever~ `x` &lt;!here&gt; &amp; &lt;http://evil.example|docs&gt;```"
    context = [e["text"] for b in updated["blocks"] if b["type"] == "context" for e in b["elements"]]
    assert any(text.endswith(": " + literal) for text in context), context
    dm = fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, ALICE) if "rejected" in t], WAIT)[0]
    assert dm.endswith(": " + literal)


@pytest.mark.parametrize("email", ["*@example.com", "_it_@example.com", "=cmd@example.com", "a&b@x.com"])
def test_wildcard_emails_are_refused_at_the_edge(bot: Running, fake_slack: FakeSlack, email: str) -> None:
    reply = slash(bot, fake_slack, f"share team-a '{email}'", name="share")
    assert reply.startswith("The email address"), reply
    fake_slack.add_user("U0MALLORY", email, "mallory")  # a Slack profile can carry one too
    reply = slash(bot, fake_slack, "requests", user="U0MALLORY", name="mallory")
    assert reply.startswith("The email address in this Slack profile cannot be used with Kubeflow.")
    assert requests_in_db(bot) == [] and cards(fake_slack) == []


def test_view_plan_opens_every_step_in_a_modal(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    assert click(bot, fake_slack, card, blocks.VIEW_PLAN, user=BOB) == 200

    view = fake_slack.wait_for(lambda: list(fake_slack.views.values())[-1], WAIT)
    text = json.dumps(view["blocks"])
    assert request_id in view["title"]["text"]
    for action in ("kubeflow.profile", "dex.user", "aws.bucket", "aws.nodegroup", "kubeflow.poddefault"):
        assert action in text
    assert '\\"minSize\\": 0' in text  # the params, as code


def test_workspace_form_validates_on_the_fields_and_records_once(bot: Running, fake_slack: FakeSlack) -> None:
    slash_body = slash_command_body(
        "workspace new", user_id=ALICE, response_url=fake_slack.response_url("form")
    )
    assert post_signed(bot.url, slash_body, SIGNING_SECRET)[0] == 200
    view = fake_slack.wait_for(lambda: list(fake_slack.views.values())[-1], WAIT)
    assert view["callback_id"] == blocks.WORKSPACE_VIEW

    bad = view_submission_body(
        blocks.WORKSPACE_VIEW,
        {"name": {"name": "Team_A"}, "gpu": {"gpu": "2"}},
        user_id=ALICE,
        view_id="VFORM00001",
    )
    status, _, answer = post_signed(bot.url, bad, SIGNING_SECRET)
    assert status == 200
    assert set(json.loads(answer)["errors"]) == {"name"}
    bad_nodes = view_submission_body(
        blocks.WORKSPACE_VIEW,
        {"name": {"name": "team-b"}, "nodes": {"nodes": "3"}},
        user_id=ALICE,
        view_id="VFORM00001",
    )
    assert set(json.loads(post_signed(bot.url, bad_nodes, SIGNING_SECRET)[2])["errors"]) == {"nodes"}

    good = view_submission_body(
        blocks.WORKSPACE_VIEW,
        {"name": {"name": "team-b"}, "gpu": {"gpu": "1"}},
        user_id=ALICE,
        view_id="VFORM00002",
    )
    # A redelivered submission (signed anew: identical bytes are a replay, test_slack_replay)
    # records nothing new.
    for age in (1, 2):
        status, _, answer = post_signed(bot.url, good, SIGNING_SECRET, timestamp=int(time.time()) - age)
        assert status == 200 and answer in (b"", b"{}")
    fake_slack.wait_for(lambda: len([t for t in dm_texts(fake_slack, ALICE) if "recorded" in t]) >= 2, WAIT)
    assert [r.args["name"] for r in requests_in_db(bot)] == ["team-b"]


# -- security and idempotency ---------------------------------------------------------------------------


def test_bad_signature_and_stale_timestamp_are_401(bot: Running, fake_slack: FakeSlack) -> None:
    body = slash_command_body("requests", user_id=ALICE, response_url=fake_slack.response_url("sig"))
    assert post_signed(bot.url, body, "not-the-signing-secret")[0] == 401
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=int(time.time()) - 600)[0] == 401
    time.sleep(0.2)
    assert fake_slack.responses.get("sig") is None and requests_in_db(bot) == []


def test_a_redelivered_slash_command_records_one_request(bot: Running, fake_slack: FakeSlack) -> None:
    trigger = "1234567890.1234567890.abcdef0123456789abcdef0123456789"
    first = slash(bot, fake_slack, "workspace new team-a", trigger_id=trigger, name="dup")
    # The same command signed at another time (the first's timestamp again would make the identical
    # bytes, a replay: test_slack_replay).
    body = slash_command_body(
        "workspace new team-a", user_id=ALICE, response_url=fake_slack.response_url("dup"), trigger_id=trigger
    )
    assert post_signed(bot.url, body, SIGNING_SECRET, timestamp=int(time.time()) - 30)[0] == 200
    replies = fake_slack.wait_for(lambda: fake_slack.responses["dup"][1:], WAIT, "the second reply")
    second = str(replies[0].get("text"))

    assert "recorded" in first and "Already recorded" in second
    assert len(requests_in_db(bot)) == 1
    assert len(cards(fake_slack)) == 1


def test_a_double_click_makes_one_decision(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    threads = [
        threading.Thread(
            target=click, args=(bot, fake_slack, card, blocks.APPROVE), kwargs={"user": BOB, "name": "double"}
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    replies = fake_slack.wait_for(
        lambda: len(response_texts(fake_slack, "double")) >= 2 and response_texts(fake_slack, "double"), WAIT
    )
    assert sum("You approved" in t for t in replies) == 1
    # The second click finds the first's decision (the worker may already be applying it).
    assert (
        sum(
            bool(re.search(rf"{request_id} is already (approved|applying|succeeded) by <@{BOB}>", t))
            for t in replies
        )
        == 1
    ), replies
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    assert audit_types(bot).count("request.approved") == 1
    assert audit_types(bot).count("request.apply_started") == 1


@pytest.mark.parametrize(
    ("clicker", "requester", "action", "outcome"),
    [
        # who clicks, who asked, which button or command, what happens
        (ALICE, ALICE, blocks.APPROVE, "Only admins"),
        (DAVE, ALICE, blocks.APPROVE, "Only admins"),
        (DAVE, ALICE, blocks.REJECT, "Only admins"),
        (CAROL, CAROL, blocks.APPROVE, "cannot decide your own request"),
        (CAROL, CAROL, blocks.REJECT, "cannot decide your own request"),
        (BOB, ALICE, blocks.APPROVE, "approved"),
        (GRACE, ALICE, blocks.APPROVE, "approved"),  # admin through KFBOT_ADMIN_GROUP
        (BOB, ALICE, blocks.REJECT, "modal"),
        (DAVE, ALICE, blocks.VIEW_PLAN, "There is no request"),
        (ALICE, ALICE, blocks.VIEW_PLAN, "modal"),
        (BOB, ALICE, blocks.VIEW_PLAN, "modal"),
        (DAVE, ALICE, "cancel", "Only the requester or an admin"),
        (ALICE, ALICE, "cancel", "cancelled"),
        (BOB, ALICE, "cancel", "cancelled"),
        (ALICE, ALICE, "retry", "Only an admin"),
    ],
)
def test_authorization_matrix(
    bot: Running, fake_slack: FakeSlack, clicker: str, requester: str, action: str, outcome: str
) -> None:
    request_id = new_workspace_request(bot, fake_slack, user=requester)
    card = card_for(fake_slack, request_id)

    if action in ("cancel", "retry"):
        reply = slash(bot, fake_slack, f"{action} {request_id}", user=clicker, name="matrix")
        expected = outcome if outcome != "cancelled" else f"Cancelled `{request_id}`"
        assert expected in reply
        state = RequestState.CANCELLED if outcome == "cancelled" else RequestState.PENDING
        assert requests_in_db(bot)[0].state is state
        return
    assert click(bot, fake_slack, card, action, user=clicker, name="matrix") == 200
    if outcome == "approved":
        wait_response(fake_slack, "matrix", "You approved")
        wait_state(bot, request_id, RequestState.SUCCEEDED)
    elif outcome == "modal":
        fake_slack.wait_for(lambda: fake_slack.views, WAIT)
        assert requests_in_db(bot)[0].state is RequestState.PENDING
    else:
        reply = wait_response(fake_slack, "matrix", outcome)
        assert fake_slack.responses["matrix"][0].get("response_type") == "ephemeral", reply
        assert not fake_slack.views
        assert requests_in_db(bot)[0].state is RequestState.PENDING
        assert "request.approved" not in audit_types(bot)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("frobnicate", "Unknown command"),
        ("workspace new Team_A", "lowercase letters"),
        ("workspace new team-a --gpu two", "whole number"),
        ("workspace new team-a --colour blue", "Usage: `/kf workspace new NAME"),
        ("share team-a", "Usage: `/kf share WORKSPACE USER"),
        ("token team-a --ttl 2h --ttl 3h", "given twice"),
        ("workspace new team-a; rm -rf /", "Too many arguments"),
        ("quota team-a", "Say what to change"),
    ],
)
def test_malformed_input_gets_usage_and_records_nothing(
    bot: Running, fake_slack: FakeSlack, text: str, expected: str
) -> None:
    reply = slash(bot, fake_slack, text, name="bad")

    assert expected in reply
    assert fake_slack.responses["bad"][0]["response_type"] == "ephemeral"
    assert requests_in_db(bot) == [] and cards(fake_slack) == []


def test_a_user_without_email_gets_a_clear_error(bot: Running, fake_slack: FakeSlack) -> None:
    reply = slash(bot, fake_slack, "workspace new team-e", user=EVE, name="eve")
    assert "no email address" in reply and "users:read.email" in reply
    assert requests_in_db(bot) == []


def test_an_unexpected_error_shows_only_a_reference(bot: Running, fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("users.info", "fatal_error")
    reply = slash(bot, fake_slack, "requests", user=DAVE, name="boom")
    assert re.fullmatch(r"Something went wrong \(ref [0-9A-F]{8}\)\. .*", reply)
    assert "fatal_error" not in reply


def test_help_requests_cancel_and_read_models(bot: Running, fake_slack: FakeSlack) -> None:
    assert "/kf workspace new NAME" in slash(bot, fake_slack, "help", name="help")
    assert "no requests" in slash(bot, fake_slack, "requests", name="mine")
    request_id = new_workspace_request(bot, fake_slack)
    assert request_id in slash(bot, fake_slack, "requests", user=BOB, name="pending")
    assert "no workspace" in slash(bot, fake_slack, "workspace show team-a", name="show").lower()
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    assert "`team-a`" in slash(bot, fake_slack, "workspace list", name="list")
    assert "owner alice@example.com" in slash(bot, fake_slack, "workspace show team-a", name="show2")
    assert "There is no workspace" in slash(bot, fake_slack, "workspace show team-a", user=DAVE, name="show3")
    assert "no contributors" in slash(bot, fake_slack, "contributors team-a", name="contrib")


def test_token_and_password_are_made_at_the_click_and_shown_once(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    reply = slash(bot, fake_slack, "token team-a --ttl 2h", name="token")
    token_id = REQUEST_ID.search(reply).group(0)  # type: ignore[union-attr]
    wait_state(bot, token_id, RequestState.SUCCEEDED)
    dm = fake_slack.wait_for(
        lambda: next(
            (m for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE)) if button(m, blocks.SHOW_TOKEN)),
            None,
        ),
        WAIT,
    )
    assert len(fake_slack.views) == 0

    def last_view_saying(needle: str) -> dict[str, Any] | None:
        views = list(fake_slack.views.values())
        return views[-1] if views and needle in json.dumps(views[-1]["blocks"]) else None

    # The modal opens at the click ("Working…") and then says why there is nothing to show.
    click(bot, fake_slack, dm, blocks.SHOW_TOKEN, user=BOB, name="steal")
    fake_slack.wait_for(lambda: last_view_saying("Only the person who asked"), WAIT)
    click(bot, fake_slack, dm, blocks.SHOW_TOKEN, user=ALICE, name="show")
    view = fake_slack.wait_for(lambda: last_view_saying("shown once"), WAIT)
    assert "Your token" in view["title"]["text"]

    password_dm = next(
        m for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE)) if button(m, blocks.SET_PASSWORD)
    )
    click(bot, fake_slack, password_dm, blocks.SET_PASSWORD, user=ALICE, name="password")
    fake_slack.wait_for(lambda: len(fake_slack.views) == 3 and last_view_saying("shown once"), WAIT)
    assert "Your password" in fake_slack.last_view()["title"]["text"]
    assert "secret.revealed" in audit_types(bot)
    # The secrets went into the modals only, never into a message.
    secrets = [
        json.dumps(v["blocks"]).split("```")[1] for v in fake_slack.views.values() if "```" in json.dumps(v)
    ]
    assert len(secrets) == 2
    posted = json.dumps([c.params for c in fake_slack.calls if c.method.startswith("chat.")])
    assert all(s not in posted for s in secrets)


def test_slack_failures_never_fail_a_request(bot: Running, fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit_next("chat.postMessage", retry_after=1)  # retried by the client's handler
    first = new_workspace_request(bot, fake_slack)
    assert card_for(fake_slack, first)

    fake_slack.fail_next("chat.postMessage", "channel_not_found")  # the card cannot be posted
    reply = slash(bot, fake_slack, "workspace new team-b", name="nocard")
    assert "recorded" in reply
    assert {r.args["name"] for r in requests_in_db(bot)} == {"team-a", "team-b"}


def test_the_sweeper_expires_a_pending_request(fake_slack: FakeSlack, tmp_path: Path) -> None:
    fake_slack.add_user(ALICE, "alice@example.com")
    settings = settings_for(fake_slack, tmp_path, KFBOT_REQUEST_TTL="1h", KFBOT_NUDGE_AFTER="30m")
    backend = composition.build_backend(settings)
    backend.migrate()
    backend.close()
    clock = FakeClock(datetime.now(UTC))
    running = composition.start_slack(settings, clock=clock, port=0)
    try:
        request_id = new_workspace_request(running, fake_slack)
        card = card_for(fake_slack, request_id)

        def card_recorded() -> bool:
            # Slack has the card a moment before the bot records where it is; the nudge threads
            # under the recorded card, so the clock moves only once it is.
            with running.backend.uow() as uow:
                return uow.requests.card(request_id) is not None

        fake_slack.wait_for(card_recorded, WAIT, "the card recorded")
        clock.advance(timedelta(minutes=31))
        sweep_once(running.backend, running.edge.deps.core)
        fake_slack.wait_for(
            lambda: any(
                "Still waiting" in m["text"] for m in fake_slack.replies(card["channel"], card["ts"])
            ),
            WAIT,
        )
        clock.advance(timedelta(hours=1))
        sweep_once(running.backend, running.edge.deps.core)
        wait_state(running, request_id, RequestState.EXPIRED)
        fake_slack.wait_for(
            lambda: "Expired" in fake_slack.messages[(card["channel"], card["ts"])]["text"], WAIT
        )
        fake_slack.wait_for(lambda: any("expired" in t for t in dm_texts(fake_slack, ALICE)), WAIT)
    finally:
        running.stop()


# -- health ---------------------------------------------------------------------------------------------


def test_healthz_and_readyz(bot: Running) -> None:
    assert get(bot.http.url("/healthz")) == (200, {"status": "ok"})
    status, ready = get(bot.http.url("/readyz"))
    assert status == 200
    assert ready["ready"] is True and ready["database"] is True and ready["migrated"] is True
    assert ready["slack"] is True and ready["provisioner"] == "dry-run"


def test_readyz_is_503_on_a_database_that_is_behind(fake_slack: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(fake_slack, tmp_path)
    backend = composition.build_backend(settings)  # never migrated
    server = HttpServer(
        wsgi_app(lambda: composition.readiness(backend, "dry-run", lambda: True)), "127.0.0.1", 0
    )
    server.start()
    try:
        status, body = get(server.url("/readyz"))
    finally:
        server.stop()
        backend.close()
    assert status == 503 and body["ready"] is False and body["migrated"] is False
    assert "kfbot migrate" in str(body.get("problem"))


def test_serve_refuses_a_database_that_is_behind(fake_slack: FakeSlack, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="kfbot migrate"):
        composition.start_slack(settings_for(fake_slack, tmp_path), port=0)


# -- Block Kit limits and escaping (pure) ----------------------------------------------------------------


def _huge_request() -> Request:
    steps = [
        Step(
            "kubeflow.profile",
            f"Profile/p{n}",
            {"name": f"p{n}", "blob": "x" * 5000, "n": n},
            f"step {n} <!channel> " + "y" * 300,
        )
        for n in range(120)
    ]
    plan = Plan.of(steps, warnings=["w" * 4000])
    now = datetime(2026, 11, 22, tzinfo=UTC)
    return Request(
        id="RHUGE01",
        kind="workspace.create",
        args={"name": "<@U0EVIL>" + "z" * 5000, "owner": "a@b.co"},
        requester_id=ALICE,
        requester_email="alice@example.com",
        plan=plan,
        created_at=now,
    )


def _section_texts(block_list: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in block_list if b["type"] == "section"]


def test_blocks_stay_within_block_kit_limits_and_escape_user_text() -> None:
    request = _huge_request()
    text, card = blocks.card(request)
    assert len(card) <= blocks.MESSAGE_BLOCKS and len(text) <= blocks.FALLBACK_LIMIT
    assert all(len(t) <= blocks.SECTION_LIMIT for t in _section_texts(card))
    assert "<!channel>" not in json.dumps(card) and "<@U0EVIL>" not in json.dumps(card)
    modal = blocks.plan_modal(request)
    assert len(modal["blocks"]) <= blocks.MODAL_BLOCKS and len(modal["title"]["text"]) <= blocks.TITLE_LIMIT
    assert all(len(t) <= blocks.SECTION_LIMIT for t in _section_texts(modal["blocks"]))
    assert "kfbot plan" in json.dumps(modal["blocks"][-1])
    for chunk in blocks.code_chunks("a" * 10_000 + "\n" + "b```c\n" * 2000):
        assert len(chunk) <= blocks.SECTION_LIMIT and chunk.count("```") == 2


def test_the_log_filter_never_lets_secrets_through() -> None:
    log.forget_later("s3cr3t-password-value")
    record_text = log.scrub(
        "made s3cr3t-password-value and " + "xoxb-" + "123456-abcdef and password=hunter22 "
        "and eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLXZhbHVl"
    )
    assert "s3cr3t" not in record_text and "xoxb-123456" not in record_text and "hunter22" not in record_text
    assert "eyJhbGci" not in record_text
    assert render.internal_error_text("ABCD1234").startswith("Something went wrong (ref ABCD1234)")


# -- the workspace form acks before any Slack, database or Kubernetes call ----------------------------


def _submit_form(running: Running, user: str, name: str, view_id: str) -> tuple[int, bytes]:
    body = view_submission_body(
        blocks.WORKSPACE_VIEW, {"name": {"name": name}, "gpu": {"gpu": "1"}}, user_id=user, view_id=view_id
    )
    status, _, answer = post_signed(running.url, body, SIGNING_SECRET)
    return status, answer


def test_a_taken_name_is_told_after_the_ack(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)

    status, answer = _submit_form(bot, ALICE, "team-a", "VFORMTAKEN")

    assert status == 200 and answer in (b"", b"{}")  # acked: no field errors from the plan
    fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, ALICE) if "already exists" in t], WAIT)
    assert len(requests_in_db(bot)) == 1


def test_the_form_acks_even_when_slack_cannot_say_who_the_user_is(
    bot: Running, fake_slack: FakeSlack
) -> None:
    fake_slack.fail_next("users.info", "fatal_error")

    status, answer = _submit_form(bot, DAVE, "team-d", "VFORMUSERS")

    assert status == 200 and answer in (b"", b"{}")
    fake_slack.wait_for(lambda: [t for t in dm_texts(fake_slack, DAVE) if "Something went wrong" in t], WAIT)
    assert requests_in_db(bot) == []


def test_readyz_reports_slack_from_a_cached_auth_test(bot: Running, fake_slack: FakeSlack) -> None:
    fake_slack.accepted_tokens = {"xoxb-" + "some-other-token"}  # the bot's token was revoked
    before = len(fake_slack.calls_to("auth.test"))

    status, body = get(bot.http.url("/readyz"))
    again, _ = get(bot.http.url("/readyz"))

    assert status == 503 and body["slack"] is False and body["database"] is True
    assert again == 503
    assert len(fake_slack.calls_to("auth.test")) == before + 1  # cached between probes


def test_show_and_contributors_authorize_on_the_registry_and_read_live_once(
    bot: Running, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    click(bot, fake_slack, card_for(fake_slack, request_id), blocks.APPROVE, user=BOB)
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    backend, core = bot.backend, bot.edge.deps.core
    real_view = backend.workspace_view
    live_reads: list[str] = []

    def workspace_view(name: str, *, live: bool = True) -> WorkspaceView | None:
        if live:
            live_reads.append(name)
        return real_view(name, live=live)

    monkeypatch.setattr(backend, "workspace_view", workspace_view)
    dave, alice = bot.edge.deps.identity.actor(DAVE), bot.edge.deps.identity.actor(ALICE)

    for command in (parse.WorkspaceShow("team-a"), parse.Contributors("team-a")):
        with pytest.raises(Exception, match="There is no workspace"):
            controls.control(core, backend, dave, command)
    assert live_reads == []

    assert "no contributors" in controls.control(core, backend, alice, parse.Contributors("team-a"))
    assert live_reads == ["team-a"]


def test_a_decision_without_a_version_is_refused(bot: Running, fake_slack: FakeSlack) -> None:
    request_id = new_workspace_request(bot, fake_slack)
    card = card_for(fake_slack, request_id)

    assert click(bot, fake_slack, card, blocks.APPROVE, user=BOB, name="nover", value=request_id) == 200

    wait_response(fake_slack, "nover", "does not say which version")
    assert fake_slack.responses["nover"][0]["response_type"] == "ephemeral"
    time.sleep(0.3)
    assert requests_in_db(bot)[0].state is RequestState.PENDING
