"""Offboarding under the outside attack rounds (first round: findings 1-6; second round: the
tests marked "round 2"): each test replays a finding through the real code paths (the live backend
against the fake apiserver and moto, Slack's Web API played by the fake Slack over HTTP,
``bot.offboard.Offboarder`` asking it through a real ``WebClient``) and asserts what must hold
instead.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot import render
from bot.offboard import TELL_AGAIN, Offboarder
from handlers import errors, kinds, services
from handlers.actions import ActionName
from handlers.model import SYSTEM, RequestState
from handlers.naming import dex_password_object_name
from handlers.offboard import WITHDRAWN, Person, Presence, implausible, offboard_emails, withdraw_transfers
from handlers.settings import CoreSettings, PolicySettings, WorkspaceDefaults
from tests import harness
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.runbook import OWNER as LEGACY_OWNER
from tests.fakes.runbook import RunbookWorkspace
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.live_harness import ADMIN2, DEX_NAMESPACE, LiveStack
from tests.test_adopt_attacks import runbook, world
from tests.test_offboard import OUTSIDER, _team
from tests.test_sharing_quota_tokens_e2e import (
    ADMIN,
    ADMIN_CHANNEL,
    ALICE,
    BOB,
    CAROL,
    NS,
    PROFILES,
    RBAC_V1,
    Live,
    LiveFactory,
    make_live,
)

__all__ = ["make_live", "runbook", "world"]  # the fixtures, used by name


def offboarder(live: Live, client: WebClient | None = None) -> Offboarder:
    client = client or WebClient(token=BOT_TOKEN, base_url=live.slack.base_url)
    return Offboarder(client, live.backend, live.core, live.clock, ADMIN_CHANNEL)


def _filed(live: Live) -> list[str]:
    return [r.kind for r in live.requests() if r.requester_id == SYSTEM.user_id]


def _offboard_posts(live: Live) -> list[str]:
    return [t for t in live.admin_posts() if "left" in t and "Slack" in t]


# -- 1: one of a person's accounts gone is not the person gone ------------------------------------------


def test_a_returning_person_with_a_new_active_account_is_not_left(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)  # Bob's token recorded his first account's id
    live.slack.deactivate_user(BOB.user_id)
    live.slack.add_user("U0BOB0002", BOB.email)  # re-hired: a new account, the same address
    checker = offboarder(live)
    for _ in range(2):  # every daily run, not just the first
        outcome = checker.run_once()
        live.run()
        assert {r.user: r.presence for r in outcome.results}[BOB.email] is Presence.ACTIVE
    assert _filed(live) == [] and BOB.email in live.grants()
    # An admin's check agrees; and once the new account goes too, Bob has left.
    assert "is active in Slack" in checker.check_now(ADMIN, BOB.email)
    live.slack.deactivate_user("U0BOB0002")
    checker.run_once()
    live.run()
    assert kinds.Unshare.KIND in _filed(live) and BOB.email not in live.grants()


# -- 2: implausibly many "left" in one run files nothing ----------------------------------------------


def test_a_run_where_slack_knows_nobody_files_nothing_and_tells_the_admins(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    checker = offboarder(live)
    checker.run_once()  # everyone's id recorded
    for person in (ALICE, BOB, CAROL):  # a token for another Slack workspace: no id resolves
        live.slack.forget_user(person.user_id)
    outcome = checker.run_once()
    live.run()
    assert outcome.stopped is not None and "3 of the 4" in outcome.stopped
    assert outcome.results == () and _filed(live) == []
    assert ALICE.email == live.backend.facts.workspace(NS).owner  # type: ignore[union-attr]
    assert BOB.email in live.grants() and CAROL.email in live.grants()
    assert any("Offboarding stopped" in t and "nothing was filed" in t for t in live.admin_posts())
    # An admin can still offboard one person on purpose.
    assert "left Slack" in checker.check_now(ADMIN, BOB.email)
    assert _filed(live) == [kinds.Unshare.KIND]


@pytest.mark.parametrize(
    ("asked", "left", "stops"),
    [
        (1, 1, False),
        (2, 2, False),
        (3, 3, True),
        (10, 2, False),
        (10, 3, True),
        (100, 20, False),
        (100, 21, True),
    ],
)
def test_the_breaker_allows_a_few_or_a_fifth(asked: int, left: int, stops: bool) -> None:
    assert implausible(asked, left) is stops


# -- 3: KFBOT_USER_ID_MAP: Slack is asked about the Slack address, never the mapped one ----------------

MAPPED = {"alice@example.com": "alice@ad.example.com", "carol@example.com": "carol@ad.example.com"}


def _mapped_core() -> CoreSettings:
    return CoreSettings(
        policy=PolicySettings(admin_users=frozenset({ADMIN.user_id})),
        workspace=WorkspaceDefaults(dex_mode="external", user_id_map=MAPPED),
    )


def test_slack_emails_of_a_mapped_id_are_the_addresses_mapped_to_it() -> None:
    settings = _mapped_core()
    assert offboard_emails(settings, "carol@ad.example.com") == ("carol@example.com",)
    assert offboard_emails(settings, "carol@example.com") == ("carol@example.com",)  # a token's requester
    assert offboard_emails(settings, "bob@example.com") == ("bob@example.com",)
    assert offboard_emails(settings, "svc-account") == ()


def test_a_mapped_person_is_judged_by_their_own_slack_account(make_live: LiveFactory) -> None:
    live = make_live(core=_mapped_core())
    live.slack.add_user("U0OTHER01", "carol@ad.example.com")  # someone else's account, that address
    assert live.request_for(ALICE, f"share {NS} {CAROL.email} --role view").state is RequestState.SUCCEEDED
    # Her workspace's create recorded Alice's own id, though her Kubeflow id is mapped.
    people = {p.user: p for p in live.backend.people()}
    assert people["alice@ad.example.com"].slack_ids == (ALICE.user_id,)
    checker = offboarder(live)
    checker.run_once()
    looked_up = [c.get("email") for c in live.slack.calls_to("users.lookupByEmail")]
    assert "carol@ad.example.com" not in looked_up and CAROL.email in looked_up
    people = {p.user: p for p in live.backend.people()}
    assert people["carol@ad.example.com"].slack_ids == (CAROL.user_id,)
    live.slack.deactivate_user("U0OTHER01")  # the other account goes: Carol is still here
    checker.run_once()
    live.run()
    assert _filed(live) == [] and "carol@ad.example.com" in live.grants()
    # Carol and Alice really leave: both are found, by an admin's check and the daily one.
    live.slack.deactivate_user(CAROL.user_id)
    live.slack.deactivate_user(ALICE.user_id)
    said = checker.check_now(ADMIN, ALICE.email)
    assert "left Slack" in said and "`team-a` has nobody to hand it to" in said
    checker.run_once()
    live.run()
    assert "carol@ad.example.com" not in live.grants()


# -- 4: a transfer ends the new owner's time-limited grant, and nobody unshares an owner ----------------


def test_a_transfer_cancels_the_new_owners_grant_timer_and_an_owner_is_never_unshared(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    share = live.request_for(ALICE, f"share {NS} {CAROL.email} --role edit --for 2h")
    assert share.state is RequestState.SUCCEEDED
    transfer = live.request_for(ALICE, f"workspace transfer {NS} --to {CAROL.email}")
    assert live.approve(transfer.id).state is RequestState.SUCCEEDED
    with live.backend.uow() as uow:
        assert uow.timers.pending_payload("grant.expire", f"{NS}:{CAROL.email}") is None
    token = live.request_for(CAROL, f"token {NS} --ttl 1d")  # the owner's own token
    assert token.state is RequestState.SUCCEEDED
    live.later(timedelta(hours=3))  # past the grant's end
    assert live.requests(kinds.Unshare.KIND) == []
    assert live.backend.facts.token_owner(token.id) is not None
    profile = live.api.get(PROFILES, "profiles", NS)
    assert profile is not None and profile["spec"]["owner"]["name"] == CAROL.email
    admin_binding = live.api.get(RBAC_V1, "rolebindings", "namespaceAdmin", NS)
    assert admin_binding is not None and admin_binding["subjects"][0]["name"] == CAROL.email
    # Nobody, not the owner, an admin, or the bot, files an unshare of the owner.
    for actor in (CAROL, ADMIN):
        with pytest.raises(errors.InvalidInput, match="owns `team-a`"):
            live.kf(actor, f"unshare {NS} {CAROL.email}")
    with pytest.raises(errors.InvalidInput):
        services.record_system(live.core, kinds.Unshare(NS, CAROL.email), "test:owner", None)
    assert live.requests(kinds.Unshare.KIND) == []


# -- 5: a left owner's workspace never waits in silence ----------------------------------------------


def test_a_left_owner_with_nobody_to_take_over_is_told_to_the_admins_and_again_later(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    live.slack.deactivate_user(ALICE.user_id)
    checker = offboarder(live)
    checker.run_once()
    posts = _offboard_posts(live)
    assert len(posts) == 1 and "`team-a` has nobody to hand it to" in posts[0]
    live.clock.advance(timedelta(days=1))
    checker.run_once()
    assert len(_offboard_posts(live)) == 1  # not every day
    live.clock.advance(TELL_AGAIN)
    checker.run_once()
    assert len(_offboard_posts(live)) == 2  # still nobody decided: reminded


def test_an_expired_transfer_is_filed_again_and_a_rejected_one_is_not(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)  # Carol (edit) is proposed
    live.slack.deactivate_user(ALICE.user_id)
    checker = offboarder(live)
    checker.run_once()
    (first,) = live.requests(kinds.WorkspaceTransfer.KIND)
    live.later(timedelta(hours=73))  # nobody decided
    assert live.request(first.id).state is RequestState.EXPIRED
    checker.run_once()
    checker.run_once()  # a second run files nothing more
    transfers = live.requests(kinds.WorkspaceTransfer.KIND)
    assert len(transfers) == 2
    again = next(r for r in transfers if r.id != first.id)
    assert again.state is RequestState.PENDING and again.args["to"] == CAROL.email
    services.decide(live.core, ADMIN, again.id, approve=False, decision_key="no", reason="Alice comes back")
    checker.run_once()
    assert len(live.requests(kinds.WorkspaceTransfer.KIND)) == 2  # admins decided: it stands


# -- 6: a 429 reaches the offboarder at once, whatever the client's retry handlers ----------------------


def test_a_429_is_not_slept_through_by_the_clients_retry_handler(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    client = WebClient(
        token=BOT_TOKEN,
        base_url=live.slack.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],  # as bot.app.make_client
    )
    checker = offboarder(live, client)
    live.slack.rate_limit_next("users.info", retry_after=60)
    started = time.monotonic()
    said = checker.check_now(ADMIN, BOB.email)
    assert time.monotonic() - started < 30  # a handler that slept would take 60 s
    assert "wait 60s" in said and _filed(live) == []
    # The bot's own client keeps its handlers for everything else.
    assert any(isinstance(h, RateLimitErrorRetryHandler) for h in client.retry_handlers)


# -- round 2, finding 1: a token that sees nobody offboards nobody ------------------------------------


def test_a_token_for_another_slack_workspace_files_nothing_though_few_are_left(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    for grantee in (BOB.email, *(f"guest{i}@outside.example" for i in range(8))):
        assert live.request_for(ALICE, f"share {NS} {grantee} --role view").state is RequestState.SUCCEEDED
    # Alice's and Bob's ids are recorded; Slack never knew the guests: the breaker's fifth grows.
    for person in (ALICE, BOB, CAROL, ADMIN):  # the token's Slack workspace has none of them
        live.slack.forget_user(person.user_id)
    assert not implausible(10, 2)  # what the old breaker alone let through
    outcome = offboarder(live).run_once()
    live.run()
    assert outcome.stopped == "Slack knows none of the 2 recorded Slack ids" and outcome.results == ()
    assert _filed(live) == [] and BOB.email in live.grants()
    assert any("Offboarding stopped" in t and "nothing was filed" in t for t in live.admin_posts())


def test_a_run_with_nobody_active_files_nothing_unless_an_admin_is_seen(make_live: LiveFactory) -> None:
    live = make_live()
    for grantee in (BOB.email, OUTSIDER):
        assert live.request_for(ALICE, f"share {NS} {grantee} --role view").state is RequestState.SUCCEEDED
    live.slack.deactivate_user(ALICE.user_id)  # deleted: true, not user_not_found
    live.slack.deactivate_user(BOB.user_id)
    live.slack.forget_user(ADMIN.user_id)
    outcome = offboarder(live).run_once()
    live.run()
    assert outcome.stopped == "Slack found nobody active among the 3 people asked nor the 1 admins"
    assert _filed(live) == [] and BOB.email in live.grants()
    live.slack.add_user(ADMIN.user_id, ADMIN.email)  # the token sees this workspace: Alice and Bob left
    outcome = offboarder(live).run_once()
    live.run()
    assert outcome.stopped is None and BOB.email not in live.grants()


# -- round 2, finding 2: a transfer never removes an adopted (hand-made) login -------------------------


def test_an_offboarding_transfer_keeps_the_adopted_owners_dex_login(
    runbook: tuple[LiveStack, RunbookWorkspace], apiserver: FakeApiServer
) -> None:
    stack, rb = runbook
    password = dex_password_object_name(LEGACY_OWNER)
    assert apiserver.get("dex.coreos.com/v1", "passwords", password, DEX_NAMESPACE) is not None
    adopt = stack.apply(ADMIN, f"workspace adopt {rb.namespace}", approver=ADMIN2)
    assert adopt.state is RequestState.SUCCEEDED
    with FakeSlack() as slack:
        slack.add_user("ULEGACY01", LEGACY_OWNER)
        slack.add_user("UHELPER01", rb.contributor)
        slack.add_user(ADMIN.user_id, ADMIN.email)
        stack.backend.record_slack_id(LEGACY_OWNER, "ULEGACY01")
        slack.deactivate_user("ULEGACY01")
        client = WebClient(token=BOT_TOKEN, base_url=slack.base_url)
        outcome = Offboarder(client, stack.backend, stack.core, stack.clock).run_once()
    transfer = next(
        stack.request(i) for r in outcome.results for i in r.filed
        if stack.request(i).kind == kinds.WorkspaceTransfer.KIND
    )
    assert transfer.plan is not None
    assert ActionName.DEX_USER_REMOVE not in [s.action for s in transfer.plan.steps]
    assert any("adopted Dex login stays" in w for w in transfer.plan.warnings)
    stack.approve(transfer.id, ADMIN)
    stack.run()
    assert stack.request(transfer.id).state is RequestState.SUCCEEDED
    assert apiserver.get("dex.coreos.com/v1", "passwords", password, DEX_NAMESPACE) is not None


# -- round 2, finding 3: a grantee's Slack id is recorded when the share succeeds ----------------------


def test_a_grantee_deactivated_before_any_check_is_found_left(make_live: LiveFactory) -> None:
    live = make_live()
    assert live.request_for(ALICE, f"share {NS} {CAROL.email} --role edit").state is RequestState.SUCCEEDED
    people = {p.user: p for p in live.backend.people()}
    assert people[CAROL.email].slack_ids == (CAROL.user_id,)  # recorded as the bot told her
    live.slack.deactivate_user(CAROL.user_id)  # lookupByEmail no longer finds her
    said = offboarder(live).check_now(ADMIN, CAROL.email)
    assert "left Slack" in said and kinds.Unshare.KIND in _filed(live)
    live.run()
    assert CAROL.email not in live.grants()
    # Someone outside Slack is "could not be checked", never "not a Slack user".
    assert live.request_for(ALICE, f"share {NS} {OUTSIDER} --role view").state is RequestState.SUCCEEDED
    said = offboarder(live).check_now(ADMIN, OUTSIDER)
    assert "could not be checked" in said and "does not look up deactivated accounts" in said


# -- round 2, finding 4: an owner who comes back keeps the workspace -----------------------------------


def test_a_returning_owners_pending_transfer_is_withdrawn(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)  # Carol (edit) is proposed
    live.slack.deactivate_user(ALICE.user_id)
    checker = offboarder(live)
    checker.run_once()
    (transfer,) = live.requests(kinds.WorkspaceTransfer.KIND)
    assert transfer.state is RequestState.PENDING
    live.slack.add_user(ALICE.user_id, ALICE.email)  # reactivated
    outcome = checker.run_once()
    withdrawn = {r.user: r.withdrawn for r in outcome.results}[ALICE.email]
    assert withdrawn == (transfer.id,)
    back = live.request(transfer.id)
    assert back.state is RequestState.CANCELLED and back.reason == WITHDRAWN
    assert WITHDRAWN in render.decision_text(back, render.SLACK)  # the card says why
    assert {r.user: r.withdrawn for r in checker.run_once().results}[ALICE.email] == ()
    assert ALICE.email == live.backend.facts.workspace(NS).owner  # type: ignore[union-attr]


# -- round 2, finding 5: a workspace is never offered to someone the same run found gone --------------


def test_a_left_owners_workspace_is_not_offered_to_a_contributor_who_left_too(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    checker = offboarder(live)
    checker.run_once()  # Carol's id recorded
    live.slack.deactivate_user(ALICE.user_id)
    live.slack.deactivate_user(CAROL.user_id)  # the only edit contributor leaves as well
    outcome = checker.run_once()
    live.run()
    assert live.requests(kinds.WorkspaceTransfer.KIND) == []
    assert {r.user: r.unplaced for r in outcome.results}[ALICE.email] == (NS,)
    assert CAROL.email not in live.grants()
    assert any("`team-a` has nobody to hand it to" in t for t in live.admin_posts())


def test_an_admins_check_of_a_left_owner_does_not_offer_to_a_contributor_who_left(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    _team(live)  # Carol (edit, her id recorded at the share)
    live.slack.deactivate_user(ALICE.user_id)
    live.slack.deactivate_user(CAROL.user_id)
    said = offboarder(live).check_now(ADMIN, ALICE.email)
    assert "`team-a` has nobody to hand it to" in said
    assert live.requests(kinds.WorkspaceTransfer.KIND) == []
    live.slack.add_user(CAROL.user_id, CAROL.email)  # Carol is here after all: she is proposed
    offboarder(live).check_now(ADMIN, ALICE.email)
    (transfer,) = live.requests(kinds.WorkspaceTransfer.KIND)
    assert transfer.args["to"] == CAROL.email


def test_a_returning_persons_pending_login_removal_is_withdrawn(sqlite_url: str) -> None:
    """What offboarding files for an adopted login (``login.remove``, pending for an admin, titled
    "(they left)") must not outlive the person's return: an admin trusting the card would remove
    the login of someone active. Transfers were withdrawn; the login removal stayed pending."""
    core = CoreSettings(workspace=WorkspaceDefaults(dex_mode="password-cr"))
    stack = harness.build_stack(sqlite_url, core=core)
    harness.make_workspace(stack, "team-a", ALICE)
    filed = kinds.LoginRemove(ALICE.email, offboarded=True)
    login = services.submit(stack.core, SYSTEM, filed, idempotency_key=None)
    assert login.request.state is RequestState.PENDING
    person = Person(user=ALICE.email, slack_ids=(ALICE.user_id,), owns=("team-a",))
    assert login.request.id in withdraw_transfers(stack.core, person)
    back = stack.request(login.request.id)
    assert back.state is RequestState.CANCELLED and back.reason == WITHDRAWN
