"""The App Home tab through the real bot and the fake Slack: signed ``app_home_opened`` events,
``views.publish`` recorded and validated by the fake (type home, at most 100 blocks, button
values), each actor kind (requester, stranger, admin, admin the request is for, a user Slack
knows no email of), and Cancel / Revoke / Approve clicked on the tab going through the same gate
as elsewhere. Pure parts: the 100-block cut (a property) and the debounce."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot import blocks, home
from bot.app import Running, home_sources
from handlers import home as core_home
from handlers.model import SYSTEM, Event, EventType, Request, RequestState
from handlers.plan import Plan
from provisioning import NodeUsage
from tests.fakes.slack import (
    SIGNING_SECRET,
    FakeSlack,
    app_home_opened,
    home_action_body,
    post_signed,
    view_submission_body,
)
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    EVE,
    REQUEST_ID,
    WAIT,
    add_users,
    audit_types,
    card_for,
    requests_in_db,
    settings_for,
    slash,
    wait_state,
    wait_until,
)
from tests.fakes.slack_socket import event_payload


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(
        settings_for(
            fake_slack,
            tmp_path,
            KFBOT_HOME_REFRESH_SECONDS="0.3",
            KFBOT_DASHBOARD_URL="https://kf.example.com/",
        )
    ) as running:
        yield running


def publishes(fake: FakeSlack, user: str) -> int:
    return sum(1 for p in fake.calls_to("views.publish") if p.get("user_id") == user)


def open_home(bot: Running, fake: FakeSlack, user: str, *, tab: str = "home") -> dict[str, Any]:
    before = publishes(fake, user)
    body = json.dumps(event_payload(app_home_opened(user, tab=tab))).encode()
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    assert status == 200
    fake.wait_for(lambda: publishes(fake, user) > before, WAIT, f"views.publish for {user}")
    view = fake.home_view(user)
    assert view is not None and view["type"] == "home" and len(view["blocks"]) <= 100
    return view


def buttons(view: dict[str, Any]) -> list[tuple[str, str]]:
    """(action_id, value) of every button on the view."""
    found = []
    for block in view["blocks"]:
        for element in [block.get("accessory") or {}, *block.get("elements", [])]:
            if element.get("type") == "button":
                found.append((element["action_id"], element.get("value", "")))
    return found


def click_home(bot: Running, fake: FakeSlack, user: str, action_id: str, value: str) -> None:
    view = fake.home_view(user) or {"id": "VNONE", "blocks": []}
    status, _, _ = post_signed(
        bot.url, home_action_body(view, action_id, value, user_id=user), SIGNING_SECRET
    )
    assert status == 200


def dms(fake: FakeSlack, user: str) -> list[str]:
    return [str(m.get("text", "")) for m in fake.messages_in(fake.dm_channel(user))]


def wait_dm(fake: FakeSlack, user: str, needle: str) -> str:
    found: str = fake.wait_for(
        lambda: next((t for t in dms(fake, user) if needle in t), None),
        WAIT,
        f"a DM to {user} with {needle!r}",
    )
    return found


def new_request(bot: Running, fake: FakeSlack, text: str, *, user: str) -> str:
    reply = slash(bot, fake, text, user=user, name=f"r-{user}-{len(text)}-{abs(hash(text))}")
    match = REQUEST_ID.search(reply)
    assert match, reply
    return match.group(0)


def test_each_person_sees_their_own_and_no_admin_approves_what_is_for_them(
    bot: Running, fake_slack: FakeSlack
) -> None:
    mine = new_request(bot, fake_slack, "workspace new team-a --gpu 1", user=ALICE)
    for_carol = new_request(bot, fake_slack, "workspace new team-c --owner carol@example.com", user=DAVE)

    alice = open_home(bot, fake_slack, ALICE)
    text = json.dumps(alice)
    assert mine in text and for_carol not in text
    assert "dry run" in text.lower() and "<https://kf.example.com|" in text
    assert buttons(alice) == [(home.HOME_CANCEL, mine)]  # no Approve for a non-admin

    dave = json.dumps(open_home(bot, fake_slack, DAVE))
    assert for_carol in dave and mine not in dave  # a stranger sees nothing of Alice's

    eve = json.dumps(open_home(bot, fake_slack, EVE))  # Slack knows no email of hers
    assert mine not in eve and for_carol not in eve and "email" in eve.lower()

    requests = {r.id: r for r in requests_in_db(bot)}
    bob = open_home(bot, fake_slack, BOB)
    approvals = {v for a, v in buttons(bob) if a == blocks.APPROVE}
    assert approvals == {blocks.decision_value(requests[mine]), blocks.decision_value(requests[for_carol])}
    assert (blocks.REJECT, blocks.decision_value(requests[mine])) in buttons(bob)

    carol = open_home(bot, fake_slack, CAROL)
    assert {v for a, v in buttons(carol) if a == blocks.APPROVE} == {blocks.decision_value(requests[mine])}
    assert for_carol in json.dumps(carol) and "for you" in json.dumps(carol)

    # Forged clicks on the tab meet decide's gate: Carol on the request for her, Dave not an admin.
    click_home(bot, fake_slack, CAROL, blocks.APPROVE, blocks.decision_value(requests[for_carol]))
    wait_dm(fake_slack, CAROL, "another admin has to decide")
    click_home(bot, fake_slack, DAVE, blocks.APPROVE, blocks.decision_value(requests[mine]))
    wait_dm(fake_slack, DAVE, "Only admins")
    assert {r.id: r.state for r in requests_in_db(bot)} == {
        mine: RequestState.PENDING,
        for_carol: RequestState.PENDING,
    }

    # Bob approves from his tab; the second click is the same decision, not a second one.
    click_home(bot, fake_slack, BOB, blocks.APPROVE, blocks.decision_value(requests[mine]))
    wait_state(bot, mine, RequestState.SUCCEEDED)
    click_home(bot, fake_slack, BOB, blocks.APPROVE, blocks.decision_value(requests[mine]))
    wait_dm(fake_slack, BOB, "already")
    assert audit_types(bot).count("request.approved") == 1

    # Alice's tab was refreshed without her opening it again: her workspace, no open request.
    def refreshed() -> bool:
        view = json.dumps(fake_slack.home_view(ALICE))
        return "team-a" in view and home.HOME_CANCEL not in view

    wait_until(refreshed, "Alice's Home to show her new workspace")

    # Reject from the tab: the card's modal, the card's decision.
    other = new_request(bot, fake_slack, "workspace new team-d", user=DAVE)
    other_request = next(r for r in requests_in_db(bot) if r.id == other)
    click_home(bot, fake_slack, BOB, blocks.REJECT, blocks.decision_value(other_request))
    modal = fake_slack.wait_for(
        lambda: [v for v in fake_slack.views.values() if v.get("callback_id") == blocks.REJECT_VIEW], WAIT
    )[0]
    body = view_submission_body(
        blocks.REJECT_VIEW,
        {"reason": {"reason": "not now"}},
        user_id=BOB,
        private_metadata=modal["private_metadata"],
        view_id=modal["id"],
    )
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
    assert wait_state(bot, other, RequestState.REJECTED).decided_by == BOB

    # Cancel from the tab: not by someone else (Alice on Dave's request), by its requester yes.
    click_home(bot, fake_slack, ALICE, home.HOME_CANCEL, for_carol)
    wait_dm(fake_slack, ALICE, "Only the requester or an admin")
    assert wait_state(bot, for_carol, RequestState.PENDING)
    click_home(bot, fake_slack, DAVE, home.HOME_CANCEL, for_carol)
    wait_state(bot, for_carol, RequestState.CANCELLED)


def test_tokens_are_revoked_from_the_tab_only_by_who_may_and_a_grantee_is_refreshed(
    bot: Running, fake_slack: FakeSlack
) -> None:
    workspace = new_request(bot, fake_slack, "workspace new team-a", user=ALICE)
    [request] = requests_in_db(bot)
    bob = open_home(bot, fake_slack, BOB)
    click_home(bot, fake_slack, BOB, blocks.APPROVE, blocks.decision_value(request))
    assert (blocks.APPROVE, blocks.decision_value(request)) in buttons(bob)
    wait_state(bot, workspace, RequestState.SUCCEEDED)
    token_request = new_request(bot, fake_slack, "token team-a --read-only", user=ALICE)
    wait_state(bot, token_request, RequestState.SUCCEEDED)

    now = datetime.now(UTC)  # GPU node time the scans recorded this month (the usage ledger)
    for minutes in (1, 0):
        usage = NodeUsage("n1", "kf-team-a-gpu", "team-a", "g5.xlarge", idle=False, hourly_usd=6.0)
        bot.backend.usage.record(now - timedelta(minutes=minutes), [usage])
    month = {m.workspace: m.usd for m in bot.backend.month_usage()}
    assert month["team-a"] > 0

    alice = open_home(bot, fake_slack, ALICE)
    assert f"${month['team-a']:,.2f} GPU this month" in json.dumps(alice)
    # GPU nodes come from the last scan (dry-run has none); with one, the tab counts them.
    sources = dataclasses.replace(home_sources(bot.backend), gpu_nodes=lambda: {"team-a": 2})
    actor = bot.edge.deps.identity.actor(ALICE)
    gathered = home.gather(bot.edge.deps.core, sources, actor, dry_run=False, dashboard_url=None)
    assert "2 GPU nodes running" in json.dumps(home.render_home(gathered))
    [(_, token_id)] = [b for b in buttons(alice) if b[0] == home.HOME_REVOKE]
    assert "team-a" in json.dumps(alice) and "(owner)" in json.dumps(alice)

    click_home(bot, fake_slack, DAVE, home.HOME_REVOKE, token_id)  # a stranger's forged click
    wait_dm(fake_slack, DAVE, "Only the token's requester")
    assert bot.backend.tokens(ALICE)  # still active

    click_home(bot, fake_slack, ALICE, home.HOME_REVOKE, token_id)
    wait_until(lambda: not bot.backend.tokens(ALICE), "the token to be revoked")
    wait_until(
        lambda: home.HOME_REVOKE not in json.dumps(fake_slack.home_view(ALICE)),
        "Alice's tab without the token",
    )
    click_home(bot, fake_slack, ALICE, home.HOME_REVOKE, "x" * 40 + "<@U1>")  # not a token id
    wait_dm(fake_slack, ALICE, "not a token id")

    # A grant shows on the grantee's tab with its end; a stranger (and an admin not in it) sees none.
    share = new_request(bot, fake_slack, "share team-a dave@example.com --role view --for 7d", user=ALICE)
    wait_state(bot, share, RequestState.SUCCEEDED)
    # Dave never opened his tab: the grant is his, so it is drawn for him all the same.
    wait_until(
        lambda: "view on *team-a*, until" in json.dumps(fake_slack.home_view(DAVE)),
        "the grantee's tab to show the grant without being opened",
    )
    dave = json.dumps(open_home(bot, fake_slack, DAVE))
    assert "view on *team-a*, until" in dave and "*team-a* (view)" in dave
    for outsider in (EVE, CAROL):
        assert "team-a" not in json.dumps(open_home(bot, fake_slack, outsider))


def test_the_messages_tab_publishes_nothing_and_a_burst_refreshes_once(
    bot: Running, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = json.dumps(event_payload(app_home_opened(ALICE, tab="messages"))).encode()
    assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
    open_home(bot, fake_slack, BOB)
    time.sleep(0.2)
    assert publishes(fake_slack, ALICE) == 0  # only the Home tab is ours to draw

    # The burst must fall within one debounce window whatever the machine's load: the refresh
    # thread is kept busy publishing Eve's tab (Slack does not answer) until all four changes
    # have reached the Home, so none of them can start a window of its own.
    assert bot.edge.home is not None
    announced: list[str] = []
    changed = bot.edge.home.changed

    def noting(request: Request, events: Any) -> None:
        changed(request, events)
        announced.append(request.id)

    monkeypatch.setattr(bot.edge.home, "changed", noting)
    opened, eve = publishes(fake_slack, BOB), publishes(fake_slack, EVE)
    fake_slack.hold_method("views.publish")
    bot.edge.home.debouncer.touch([EVE])
    wait_until(lambda: publishes(fake_slack, EVE) > eve, "the refresh thread to be held by Eve's tab")
    ids = [new_request(bot, fake_slack, f"workspace new {n}", user=ALICE) for n in ("b1", "b2", "b3", "b4")]
    wait_until(lambda: set(ids) <= set(announced), "the four changes to reach the Home")
    assert publishes(fake_slack, BOB) == opened
    fake_slack.hold_method("views.publish", held=False)

    wait_until(lambda: publishes(fake_slack, BOB) > opened, "Bob's tab to be refreshed")
    assert sum(1 for r in requests_in_db(bot) if r.state is RequestState.PENDING) == 4
    view = json.dumps(fake_slack.home_view(BOB))
    assert all(r.id in view for r in requests_in_db(bot))
    assert publishes(fake_slack, BOB) - opened == 1  # four changes, one refresh


def test_debouncer_runs_once_per_key_per_burst() -> None:
    """On a clock the test moves (real sleeps raced the loop of touches and the debouncer's
    thread on a loaded machine): touches within the delay join one burst, nothing runs before
    it is due, and a touch after the burst has run starts a new one."""
    now = [100.0]
    ran: list[str] = []
    lock = threading.Lock()

    def action(key: str) -> None:
        with lock:
            ran.append(key)

    def ran_now() -> list[str]:
        with lock:
            return sorted(ran)

    debouncer = home.Debouncer(0.2, action, monotonic=lambda: now[0])
    try:
        for _ in range(50):
            debouncer.touch(["U1", "U2"])
            now[0] += 0.003  # all 50 within the 0.2 s: one burst
        debouncer.touch([])  # wakes the thread: the burst is not due yet
        assert ran_now() == []
        now[0] = 100.2
        debouncer.touch([])
        wait_until(lambda: ran_now() == ["U1", "U2"], "the burst to run")
        debouncer.touch(["U1"])  # a later change is a new burst
        now[0] = 100.4
        debouncer.touch([])
        wait_until(lambda: len(ran_now()) == 3, "the second burst to run")
        assert ran_now() == ["U1", "U1", "U2"]
    finally:
        debouncer.close()


def approve_button(view: dict[str, Any], request_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        e
        for b in view["blocks"]
        for e in [b.get("accessory") or {}, *b.get("elements", [])]
        if e.get("action_id") == blocks.APPROVE and e.get("value", "").startswith(f"{request_id}:")
    )
    return found


def test_a_transfer_on_the_tab_says_what_the_card_says_and_asks_to_confirm(
    bot: Running, fake_slack: FakeSlack
) -> None:
    made = new_request(bot, fake_slack, "workspace new team-a", user=ALICE)
    [request] = requests_in_db(bot)
    click_home(bot, fake_slack, BOB, blocks.APPROVE, blocks.decision_value(request))
    wait_state(bot, made, RequestState.SUCCEEDED)
    transfer = new_request(bot, fake_slack, "workspace transfer team-a --to dave@example.com", user=BOB)

    card = card_for(fake_slack, transfer)
    carol = open_home(bot, fake_slack, CAROL)
    text = json.dumps(carol, ensure_ascii=False)
    # The plan's warnings, as on the card: the data goes along, the old owner loses access.
    assert "goes to the new owner" in text and "alice@example.com loses the owner's access" in text
    assert "goes to the new owner" in json.dumps(card, ensure_ascii=False)

    # Approve asks first, on the tab as on the card (the same dialog): no takeover in one click.
    on_tab = approve_button(carol, transfer)["confirm"]
    on_card = approve_button({"blocks": card["blocks"]}, transfer)["confirm"]
    assert on_tab == on_card
    assert on_tab["title"]["text"] == "Approve a transfer?" and on_tab["style"] == "danger"
    said = on_tab["text"]["text"]
    assert "dave@example.com the owner of `team-a`" in said and "loses the owner's access" in said
    assert len(said) <= blocks.CONFIRM_TEXT_LIMIT
    assert wait_state(bot, transfer, RequestState.PENDING)


def test_a_forged_version_is_refused_in_words_and_decides_nothing(
    bot: Running, fake_slack: FakeSlack
) -> None:
    """``²`` passes ``isdigit()`` and ``int()`` raises on it; ``int()`` reads an Arabic-Indic or a
    full-width 3 as 3. None of them is a version the card offered."""
    asked = new_request(bot, fake_slack, "workspace new team-a", user=ALICE)
    open_home(bot, fake_slack, BOB)

    def refusals() -> int:
        return sum("does not say which version" in t for t in dms(fake_slack, BOB))

    for version in ["²", "\u0663", "\uff13", "1²", "", "-1", " 1", "1_0"]:
        before = refusals()
        click_home(bot, fake_slack, BOB, blocks.APPROVE, f"{asked}:{version}")
        wait_until(lambda: refusals() > before, f"the refusal of version {version!r}")  # noqa: B023
    # The reject modal's metadata, forged the same way: not JSON, not an object, a version of true.
    for metadata in ["not json", "[1]", json.dumps({"r": asked, "v": True, "c": "", "t": ""})]:
        before = refusals()
        body = view_submission_body(
            blocks.REJECT_VIEW, {"reason": {"reason": "x"}}, user_id=BOB, private_metadata=metadata
        )
        assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
        wait_until(lambda: refusals() > before, f"the refusal of metadata {metadata!r}")  # noqa: B023
    assert not any("Something went wrong" in t for t in dms(fake_slack, BOB))
    assert wait_state(bot, asked, RequestState.PENDING)
    assert "request.approved" not in audit_types(bot) and "request.rejected" not in audit_types(bot)


def test_only_slack_users_get_a_tab_published(bot: Running, fake_slack: FakeSlack) -> None:
    """The bot's own requests (offboarding, a grant's time limit) and the shell's have a requester
    Slack has no Home for: the admins' tabs are refreshed, no publish is tried for them."""
    assert bot.edge.home is not None
    at = datetime.now(UTC)
    before = publishes(fake_slack, BOB)
    for requester in (SYSTEM.user_id, "shell:alice@example.com"):
        request = dataclasses.replace(
            _request(1, RequestState.PENDING, requester), id=f"RSYS{len(requester)}"
        )
        bot.edge.home.changed(request, [Event(EventType.CREATED, request.id, at, requester)])
    wait_until(lambda: publishes(fake_slack, BOB) > before, "the admins' tabs to be refreshed")
    time.sleep(0.5)  # past the debounce: a publish for the requester would have been tried by now
    tried = {str(p.get("user_id")) for p in fake_slack.calls_to("views.publish")}
    assert SYSTEM.user_id not in tried and "shell:alice@example.com" not in tried
    assert all(home.SLACK_USER_ID.fullmatch(u) for u in tried)


def _request(i: int, state: RequestState, requester: str) -> Request:
    return Request(
        id=f"R{i:06d}"[:7],
        kind="workspace.create",
        args={"name": f"ws-{i}", "owner": "x@example.com"},
        requester_id=requester,
        requester_email="x@example.com",
        plan=Plan(steps=()),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        state=state,
        version=i,
    )


@settings(max_examples=25, deadline=None)
@example(counts=(40, 40, 40, 40, 40, 40), admin=True, dry_run=True)  # every list past its cut
@given(
    counts=st.tuples(*(st.integers(0, 40) for _ in range(6))),
    admin=st.booleans(),
    dry_run=st.booleans(),
)
def test_the_view_never_exceeds_100_blocks_and_says_what_it_left_out(
    counts: tuple[int, int, int, int, int, int], admin: bool, dry_run: bool
) -> None:
    n_ws, n_req, n_tok, n_grant, n_appr, n_fail = counts
    at = datetime(2026, 1, 1, tzinfo=UTC)
    view = core_home.HomeView(
        user_id="U1",
        is_admin=admin,
        dry_run=dry_run,
        dashboard_url="https://kf.example.com/",
        workspaces=tuple(
            core_home.WorkspaceLine(
                f"ws-{i}", "owner", {"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "1"}, 1, 3.5
            )
            for i in range(n_ws)
        ),
        requests=tuple(
            core_home.RequestLine(_request(i, RequestState.PENDING, "U1"), cancellable=True)
            for i in range(n_req)
        ),
        tokens=tuple(
            core_home.TokenInput(f"tok-{i}", "ws", "view", at + timedelta(days=1)) for i in range(n_tok)
        ),
        grants=tuple(core_home.GrantLine(f"ws-{i}", "edit", None) for i in range(n_grant)),
        approvals=tuple(
            core_home.ApprovalLine(
                _request(100 + i, RequestState.PENDING, "U2"), may_decide=i % 3 != 0, why_not="no"
            )
            for i in range(n_appr)
        ),
        failures=tuple(_request(200 + i, RequestState.FAILED, "U2") for i in range(n_fail)),
    )
    rendered = home.render_home(view)
    text = json.dumps(rendered)
    assert len(rendered["blocks"]) <= core_home.HOME_BLOCK_LIMIT
    assert ("dry run" in text.lower()) is dry_run
    sections = {"workspaces": n_ws, "requests": n_req, "tokens": n_tok, "grants": n_grant}
    if admin:
        sections["approvals"] = n_appr
    expected = sorted(n - home.SHOWN[k] for k, n in sections.items() if n > home.SHOWN[k])
    assert sorted(int(n) for n in re.findall(r"and (\d+) more", text)) == expected
    cancels = [
        v
        for b in rendered["blocks"]
        if (v := (b.get("accessory") or {}).get("action_id")) == home.HOME_CANCEL
    ]
    assert len(cancels) == min(n_req, home.SHOWN["requests"])
    approves = [
        e["value"]
        for b in rendered["blocks"]
        for e in b.get("elements", [])
        if e.get("action_id") == blocks.APPROVE
    ]
    assert len(approves) == (
        sum(1 for i in range(min(n_appr, home.SHOWN["approvals"])) if i % 3 != 0) if admin else 0
    )
    assert all(blocks.parse_decision_value(v) for v in approves)
