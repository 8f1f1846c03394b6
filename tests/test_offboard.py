"""Offboarding (issue 12) end to end: the live backend against the fake apiserver (which plays the
profile controller, its takeover guard included) and moto, Slack's Web API played by the fake
Slack (``users.info`` of a deactivated user says ``deleted: true``, an id it no longer has says
``user_not_found``, ``users.lookupByEmail`` does not find deactivated users, a 429 carries
``Retry-After``), and ``bot.offboard.Offboarder`` asking it through a real ``WebClient``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from slack_sdk import WebClient

from bot.offboard import MAX_WAIT, Offboarder
from bot.settings import Settings, SettingsError
from handlers import errors, kinds, services
from handlers.model import SYSTEM, Actor, RequestState
from handlers.offboard import Presence, SlackAnswer, judge
from handlers.ports import DataHeld
from tests import test_plan_digests as _digests
from tests.fakes.facts import StaticFacts
from tests.fakes.slack import BOT_TOKEN
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

__all__ = ["make_live"]  # the fixture, used by name

OUTSIDER = "partner@outside.example"
"""A collaborator with no Slack account."""


def offboarder(live: Live) -> Offboarder:
    # No retry handler: the 429 must reach the offboarder, which is what these tests are about.
    client = WebClient(token=BOT_TOKEN, base_url=live.slack.base_url)
    return Offboarder(client, live.backend, live.core, live.clock)


def _team(live: Live) -> tuple[str, str]:
    """team-a (owned by Alice) shared with Bob (view) and Carol (edit) and an outsider; Bob holds a
    token. Returns (Bob's grant request, Bob's token)."""
    bob = live.request_for(ALICE, f"share {NS} {BOB.email} --role view")
    assert bob.state is RequestState.SUCCEEDED
    assert live.request_for(ALICE, f"share {NS} {CAROL.email} --role edit").state is RequestState.SUCCEEDED
    assert live.request_for(ALICE, f"share {NS} {OUTSIDER} --role view").state is RequestState.SUCCEEDED
    token = live.request_for(BOB, f"token {NS} --read-only")
    assert token.state is RequestState.SUCCEEDED
    return bob.id, token.id


def _filed(live: Live) -> list[str]:
    return [r.kind for r in live.requests() if r.requester_id == SYSTEM.user_id]


# -- Slack's answers ---------------------------------------------------------------------------------

JUDGED = [
    (SlackAnswer(by_id=True, slack_id="U1", deleted=True), Presence.LEFT),
    (SlackAnswer(by_id=True, slack_id="U1", deleted=False), Presence.ACTIVE),
    (SlackAnswer(by_id=True, slack_id="U1", error="user_not_found"), Presence.LEFT),
    (SlackAnswer(by_id=False, error="users_not_found"), Presence.NEVER_KNOWN),
    (SlackAnswer(by_id=True, error="ratelimited", status=429, retry_after=30), Presence.UNKNOWN),
    (SlackAnswer(by_id=False, error="ratelimited", status=429, retry_after=30), Presence.UNKNOWN),
    (SlackAnswer(by_id=True, error="no_answer", status=0), Presence.UNKNOWN),
    (SlackAnswer(by_id=True, error="fatal_error"), Presence.UNKNOWN),
    (SlackAnswer(by_id=True, error="invalid_auth"), Presence.UNKNOWN),
    (SlackAnswer(by_id=True, slack_id="U1", deleted=True, status=500), Presence.UNKNOWN),
    # "users_not_found" from users.info is no statement about a known id
    (SlackAnswer(by_id=True, error="users_not_found"), Presence.UNKNOWN),
]


@pytest.mark.parametrize(("answer", "presence"), JUDGED)
def test_only_deleted_or_a_vanished_known_id_is_left(answer: SlackAnswer, presence: Presence) -> None:
    assert judge(answer) is presence


# -- end to end --------------------------------------------------------------------------------------


def test_slack_ids_are_recorded_when_access_is_granted(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    people = {p.user: p for p in live.backend.people()}
    assert people[ALICE.email].slack_ids == (ALICE.user_id,)  # she asked for her workspace
    assert people[ALICE.email].owns == (NS,)
    # Bob's and Carol's grants were asked for by Alice: their ids are the accounts the bot found
    # by email to tell them of the share (and Bob's token's, which he asked for himself).
    assert people[BOB.email].slack_ids == (BOB.user_id,)
    assert people[CAROL.email].slack_ids == (CAROL.user_id,)
    assert people[OUTSIDER].grants == (NS,) and people[OUTSIDER].slack_ids == ()
    offboarder(live).run_once()
    # The outsider stays unknown to Slack.
    people = {p.user: p for p in live.backend.people()}
    assert people[CAROL.email].slack_ids == (CAROL.user_id,)
    assert people[OUTSIDER].slack_ids == ()
    assert _filed(live) == []


def test_a_deactivated_grantee_loses_grant_and_token_and_a_second_run_files_nothing(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    _, token = _team(live)
    live.slack.deactivate_user(BOB.user_id)
    first = offboarder(live).run_once()
    live.run()
    assert [r.user for r in first.results if r.presence is Presence.LEFT] == [BOB.email]
    unshare = live.requests(kinds.Unshare.KIND)[0]
    assert unshare.requester_id == SYSTEM.user_id and unshare.state is RequestState.SUCCEEDED
    assert BOB.email not in live.grants()
    assert live.backend.facts.token_owner(token) is None
    assert not [b for b in live.contributor_bindings().values() if b == BOB.email]
    # The audit log names the system rule and what Slack said.
    approved = [
        e for e in live.audit() if e["request_id"] == unshare.id and e["type"] == "request.auto_approved"
    ]
    assert approved[0]["data"]["rule"] == "system:offboard"
    assert approved[0]["data"]["trigger"] == f"slack:{BOB.user_id}:deleted"
    before = len(live.requests())
    second = offboarder(live).run_once()
    assert len(live.requests()) == before
    assert all(not r.filed for r in second.results)


def test_a_left_owner_gets_a_transfer_card_and_the_approved_transfer_moves_the_profile(
    make_live: LiveFactory,
) -> None:
    live = make_live()
    live.api.seed(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
        }
    )
    _team(live)
    live.slack.deactivate_user(ALICE.user_id)
    offboarder(live).run_once()
    live.run()
    (transfer,) = live.requests(kinds.WorkspaceTransfer.KIND)
    # Nothing changes hands without an admin; the first edit contributor is proposed.
    assert transfer.state is RequestState.PENDING and transfer.args["to"] == CAROL.email
    card = next(m for m in live.slack.messages_in(ADMIN_CHANNEL) if transfer.id in str(m))
    assert "1 PersistentVolumeClaim(s) (20.0 GiB requested)" in str(card)
    assert "bucket `" in str(card)
    # Carol may not approve her own gain; another admin does.
    with pytest.raises(errors.Forbidden):
        services.decide(
            live.core,
            Actor(CAROL.user_id, CAROL.email, is_admin=True),
            transfer.id,
            approve=True,
            decision_key="carol",
        )
    assert live.approve(transfer.id).state is RequestState.SUCCEEDED
    profile = live.api.get(PROFILES, "profiles", NS)
    assert profile is not None and profile["spec"]["owner"] == {"kind": "User", "name": CAROL.email}
    namespace = live.api.get("v1", "namespaces", NS)
    assert namespace is not None and namespace["metadata"]["annotations"]["owner"] == CAROL.email
    admin_binding = live.api.get(RBAC_V1, "rolebindings", "namespaceAdmin", NS)
    assert admin_binding is not None and admin_binding["subjects"][0]["name"] == CAROL.email
    # The registry follows, and the new owner's rights are recognised (audit-backed owner check).
    ws = live.backend.facts.workspace(NS)
    assert ws is not None and ws.owner == CAROL.email
    assert CAROL.email not in live.grants()  # her contributor grant gave way to ownership
    assert live.request_for(CAROL, f"share {NS} {BOB.email} --role edit").state is RequestState.SUCCEEDED
    assert live.backend.facts.owned_workspaces(ALICE.email) == ()
    # An owner written into the registry by hand, not by a transfer the audit log holds, gets nothing.
    with live.backend.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE workspaces SET owner = :o WHERE name = :n"), {"o": BOB.email, "n": NS})
    with pytest.raises(errors.Inconsistent):
        live.backend.facts.workspace(NS)


def test_a_429_files_nothing_and_its_retry_after_is_waited_out(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    live.slack.deactivate_user(BOB.user_id)
    checker = offboarder(live)
    live.slack.rate_limit_next("users.info", retry_after=int(MAX_WAIT) + 60)
    too_long = checker.run_once()
    assert too_long.stopped is not None and _filed(live) == []
    # On demand, a 429 says when to try again and files nothing.
    live.slack.rate_limit_next("users.info", retry_after=30)
    said = checker.check_now(ADMIN, BOB.email)
    assert "wait 30s" in said and _filed(live) == []
    # A short Retry-After is waited out (on the bot's clock), then the person is asked again.
    live.slack.rate_limit_next("users.info", retry_after=7)
    slept = len(live.clock.slept)
    checker.run_once()
    assert 7 in live.clock.slept[slept:]
    assert kinds.Unshare.KIND in _filed(live)


def test_an_email_slack_never_knew_is_never_left(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    said = offboarder(live).check_now(ADMIN, OUTSIDER)
    # Not "not a Slack user": Slack cannot tell someone outside it from someone deactivated.
    assert "could not be checked: no Slack id is recorded" in said and _filed(live) == []


def test_a_known_id_slack_no_longer_has_is_left(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    live.slack.forget_user(BOB.user_id)
    said = offboarder(live).check_now(ADMIN, BOB.email)
    assert "left Slack" in said
    assert kinds.Unshare.KIND in _filed(live)


def test_only_admins_offboard_and_only_owners_or_admins_ask_for_a_transfer(make_live: LiveFactory) -> None:
    live = make_live()
    _team(live)
    live.slack.deactivate_user(BOB.user_id)
    with pytest.raises(errors.Forbidden):
        offboarder(live).check_now(CAROL, BOB.email)
    with pytest.raises(errors.InvalidInput):
        offboarder(live).check_now(ADMIN, "not an email")
    assert _filed(live) == []
    with pytest.raises(errors.Forbidden):
        live.kf(CAROL, f"workspace transfer {NS} --to {CAROL.email}")
    with pytest.raises(errors.InvalidInput):
        live.kf(ALICE, f"workspace transfer {NS} --to {ALICE.email}")  # owns it already
    own = live.request_for(ALICE, f"workspace transfer {NS} --to {BOB.email}")
    assert own.state is RequestState.PENDING  # an admin decides even the owner's own transfer
    assert [s.action for s in own.plan.steps] == ["kubeflow.profile.owner", "kubeflow.contributor.remove"]


# -- the transfer's plan (pure) -------------------------------------------------------------------------


def test_a_transfer_removes_the_old_owners_login_only_when_offboarding_and_unused_elsewhere() -> None:
    ws = _digests._team()
    held = DataHeld(pvcs=2, pvc_bytes=3 * 2**30, bucket="s3-use1-infra-dev-team-a", bucket_bytes=5 * 2**20)

    def actions(kind: kinds.WorkspaceTransfer, **extra: object) -> list[str]:
        facts = StaticFacts(workspaces={ws.name: ws}, data={ws.name: held}, **extra)  # type: ignore[arg-type]
        return [s.action for s in _digests._plan(kind, facts).steps]

    offboarded = kinds.WorkspaceTransfer("team-a", "d@example.com", offboarded=True)
    assert "dex.user.remove" in actions(offboarded)
    assert "dex.user.remove" not in actions(offboarded, users_elsewhere={"owner@example.com"})
    assert "dex.user.remove" not in actions(kinds.WorkspaceTransfer("team-a", "d@example.com"))
    plan = _digests._plan(offboarded, StaticFacts(workspaces={ws.name: ws}, data={ws.name: held}))
    assert plan.warnings[0].startswith(
        "It holds 2 PersistentVolumeClaim(s) (3.0 GiB requested) "
        "and bucket `s3-use1-infra-dev-team-a` (5.0 MiB)"
    )


# -- settings ----------------------------------------------------------------------------------------


def test_offboard_settings() -> None:
    assert Settings.from_env({}).core.offboard.every == timedelta(days=1)
    assert Settings.from_env({"KFBOT_OFFBOARD_EVERY": "off"}).core.offboard.every is None
    assert Settings.from_env({"KFBOT_OFFBOARD_EVERY": "12h"}).core.offboard.every == timedelta(hours=12)
    owner = Settings.from_env({"KFBOT_OFFBOARD_OWNER": "Platform@Example.com"}).core.offboard.owner
    assert owner == "platform@example.com"
    for name, value in (
        ("KFBOT_OFFBOARD_EVERY", "30m"),  # a users.info per person more than hourly
        ("KFBOT_OFFBOARD_EVERY", "soon"),
        ("KFBOT_OFFBOARD_OWNER", "not an email"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
