"""The notification router (``handlers.notifications.route``) and its two transports.

The router is pure: who is told what follows from the request and its events. The transports
(``bot.notify``) only render: the same events reach the same audiences in Slack (over HTTP, on
the fake Web API) and in the shell.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk import WebClient

from bot.notify import ShellNotifier, SlackNotifier
from handlers import kinds
from handlers.model import SYSTEM, Event, EventType, Request, RequestState
from handlers.notifications import Access, Audience, Button, Notice, Say, route
from handlers.plan import Plan, Step
from tests.fakes.slack import BOT_TOKEN, FakeSlack

NOW = datetime(2026, 11, 22, tzinfo=UTC)
ADMIN_CHANNEL = "CADMINS01"
ALICE, BOB, CAROL = (
    ("UALICE01", "alice@example.com"),
    ("UBOB0001", "bob@example.com"),
    ("UCAROL01", "carol@example.com"),
)
PROFILE = Step("kubeflow.profile", "Profile/team-a", {"name": "team-a"}, "Profile team-a")
DEX = Step("dex.user", "DexUser/carol", {"email": CAROL[1]}, "Dex login for carol")


def request(
    kind: str = kinds.WorkspaceCreate.KIND,
    state: RequestState = RequestState.PENDING,
    args: dict[str, object] | None = None,
    steps: tuple[Step, ...] = (PROFILE,),
    requester: tuple[str, str] = ALICE,
) -> Request:
    return Request(
        id="RTEST01",
        kind=kind,
        args=dict(args or {"name": "team-a"}),  # type: ignore[arg-type]
        requester_id=requester[0],
        requester_email=requester[1],
        plan=Plan.of(steps),
        created_at=NOW,
        state=state,
        decided_by=BOB[0] if state is not RequestState.PENDING else None,
        decided_at=NOW,
        updated_at=NOW,
    )


def event(t: EventType, **data: object) -> Event:
    return Event(t, "RTEST01", NOW, SYSTEM.user_id, data)  # type: ignore[arg-type]


def said(notices: list[Notice]) -> list[tuple[Audience, Say, str | None]]:
    return [(n.audience, n.say, n.to) for n in notices]


# -- the router (pure) -------------------------------------------------------------------------------


def test_a_new_pending_request_gets_one_card_and_nothing_else() -> None:
    assert said(route(request(), [event(EventType.CREATED)], has_card=False)) == [
        (Audience.CARD, Say.CARD_POSTED, None)
    ]
    assert route(request(), [event(EventType.CREATED)], has_card=True) == []


def test_a_decision_updates_the_card_and_tells_the_requester() -> None:
    approved = request(state=RequestState.APPROVED)
    assert said(route(approved, [event(EventType.APPROVED)], has_card=True)) == [
        (Audience.REQUESTER, Say.DECISION, None),
        (Audience.CARD, Say.CARD_UPDATED, None),
    ]


def test_a_changed_plan_supersedes_the_card_posts_a_new_one_and_tells_the_requester() -> None:
    back = request(state=RequestState.PENDING)
    assert said(route(back, [event(EventType.PLAN_CHANGED)], has_card=True)) == [
        (Audience.CARD, Say.CARD_SUPERSEDED, None),
        (Audience.THREAD, Say.PROGRESS, None),
        (Audience.CARD, Say.CARD_POSTED, None),
        (Audience.REQUESTER, Say.REPLANNED, None),
    ]


def test_a_token_hands_out_its_show_token_button_only_on_success() -> None:
    done = request(kinds.TokenIssue.KIND, RequestState.SUCCEEDED, {"workspace": "team-a"})
    (result,) = [n for n in route(done, [event(EventType.SUCCEEDED)], has_card=False)]
    assert (result.audience, result.say, result.button) == (Audience.REQUESTER, Say.RESULT, Button.SHOW_TOKEN)
    failed = replace(done, state=RequestState.FAILED)
    assert [n.button for n in route(failed, [event(EventType.FAILED)], has_card=False)] == [None]


def test_a_workspace_made_for_someone_else_gives_the_password_button_to_its_owner() -> None:
    done = request(
        state=RequestState.SUCCEEDED, args={"name": "team-a", "owner": CAROL[1]}, steps=(PROFILE, DEX)
    )
    notices = route(done, [event(EventType.SUCCEEDED)], has_card=True)
    assert [(n.audience, n.say, n.to, n.button) for n in notices if n.audience is not Audience.THREAD] == [
        (Audience.REQUESTER, Say.RESULT, None, None),
        (Audience.PERSON, Say.MADE_FOR_YOU, CAROL[1], Button.SET_PASSWORD),
        (Audience.CARD, Say.CARD_UPDATED, None, None),
    ]
    own = replace(done, args={"name": "team-a"})
    assert [n.button for n in route(own, [event(EventType.SUCCEEDED)], has_card=False)] == [
        Button.SET_PASSWORD
    ]
    without_login = replace(own, plan=Plan.of([PROFILE]))
    assert [n.button for n in route(without_login, [event(EventType.SUCCEEDED)], has_card=False)] == [None]


@pytest.mark.parametrize(
    ("kind", "access"), [(kinds.Share.KIND, Access.GIVEN), (kinds.Unshare.KIND, Access.REMOVED)]
)
def test_the_person_whose_access_someone_else_changed_is_told(kind: str, access: Access) -> None:
    done = request(kind, RequestState.SUCCEEDED, {"workspace": "team-a", "user": CAROL[1]})
    told = [
        n for n in route(done, [event(EventType.SUCCEEDED)], has_card=False) if n.audience is Audience.PERSON
    ]
    assert [(n.say, n.to, n.access) for n in told] == [(Say.ACCESS_CHANGED, CAROL[1], access)]
    self_service = replace(done, args={"workspace": "team-a", "user": ALICE[1]})
    assert all(
        n.audience is not Audience.PERSON for n in route(self_service, [event(EventType.SUCCEEDED)], False)
    )


def test_a_share_that_made_a_login_gives_the_password_button_to_the_grantee_only() -> None:
    grant = Step("kubeflow.contributor", "Contributor/team-a/carol", {"user": CAROL[1]}, "edit for carol")
    done = request(
        kinds.Share.KIND, RequestState.SUCCEEDED, {"workspace": "team-a", "user": CAROL[1]}, (grant, DEX)
    )
    notices = route(done, [event(EventType.SUCCEEDED)], has_card=False)
    assert [(n.audience, n.say, n.to, n.button) for n in notices] == [
        (Audience.REQUESTER, Say.RESULT, None, None),
        (Audience.PERSON, Say.ACCESS_CHANGED, CAROL[1], Button.SET_PASSWORD),
    ]
    # Carol asked for access herself (an admin approved): her own result carries it.
    hers = replace(done, requester_id=CAROL[0], requester_email=CAROL[1])
    assert [(n.audience, n.button) for n in route(hers, [event(EventType.SUCCEEDED)], False)] == [
        (Audience.REQUESTER, Button.SET_PASSWORD)
    ]
    # No login made (she had one), or the share failed: no button for anyone.
    for other in (replace(done, plan=Plan.of([grant])), replace(done, state=RequestState.FAILED)):
        assert all(n.button is None for n in route(other, [event(EventType.SUCCEEDED)], False))


def test_an_admins_reset_sends_the_button_to_the_person_and_not_to_the_admin() -> None:
    done = request(kinds.PasswordResetFor.KIND, RequestState.SUCCEEDED, {"user": CAROL[1]}, ())
    notices = route(done, [event(EventType.SUCCEEDED)], has_card=False)
    assert [(n.audience, n.say, n.to, n.button) for n in notices] == [
        (Audience.REQUESTER, Say.RESULT, None, None),
        (Audience.PERSON, Say.PASSWORD_OFFERED, CAROL[1], Button.SET_PASSWORD),
    ]


def test_the_admins_hear_of_a_refusal_and_of_trouble_nobody_can_see_on_a_card() -> None:
    stuck = request(state=RequestState.NEEDS_ATTENTION)
    assert (Audience.ADMINS, Say.ADMIN_NOTE, None) in said(
        route(stuck, [event(EventType.NEEDS_ATTENTION)], has_card=False)
    )
    assert (Audience.ADMINS, Say.ADMIN_NOTE, None) not in said(
        route(stuck, [event(EventType.NEEDS_ATTENTION)], has_card=True)
    )
    assert (Audience.ADMINS, Say.ADMIN_NOTE, None) in said(
        route(stuck, [event(EventType.REFUSED)], has_card=True)
    )


def test_a_request_of_the_bot_tells_the_people_it_names_and_never_dms_the_bot() -> None:
    expiry = request(
        kinds.Unshare.KIND,
        RequestState.SUCCEEDED,
        {"workspace": "team-a", "user": CAROL[1], "notify": [CAROL[1], ALICE[1]]},
        requester=(SYSTEM.user_id, SYSTEM.email),
    )
    notices = route(expiry, [event(EventType.SUCCEEDED)], has_card=False)
    assert said(notices) == [
        (Audience.PERSON, Say.TIME_LIMIT, CAROL[1]),
        (Audience.PERSON, Say.TIME_LIMIT, ALICE[1]),
    ]
    fired = event(
        EventType.TIMER_FIRED, message="The quota was not reverted.", notify=[ALICE[1]], admins=True
    )
    assert said(route(expiry, [fired], has_card=False)) == [
        (Audience.PERSON, Say.TIMER_MESSAGE, ALICE[1]),
        (Audience.ADMINS, Say.TIMER_MESSAGE, None),
    ]


_EVENTS = st.lists(st.sampled_from(list(EventType)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    types=_EVENTS,
    state=st.sampled_from(list(RequestState)),
    has_card=st.booleans(),
    system=st.booleans(),
)
def test_router_properties(types: list[EventType], state: RequestState, has_card: bool, system: bool) -> None:
    """Whatever the events: the bot is never DMed, nothing goes to a card that does not exist,
    the card is updated at most once and last, and every progress line names its event."""
    r = request(state=state, requester=(SYSTEM.user_id, SYSTEM.email) if system else ALICE)
    notices = route(r, [event(t) for t in types], has_card)
    if system:
        assert all(n.audience is not Audience.REQUESTER for n in notices)
    card = has_card
    for n in notices:
        if n.say is Say.CARD_POSTED:
            card = True
        elif n.audience in (Audience.CARD, Audience.THREAD):
            assert card, notices
        if n.say is Say.PROGRESS:
            assert n.event is not None
        if n.audience is Audience.PERSON:
            assert n.to
    updates = [i for i, n in enumerate(notices) if n.say is Say.CARD_UPDATED]
    assert updates in ([], [len(notices) - 1])


# -- the transports deliver what the router says, to the same audiences --------------------------------

_SHELL_LINE = re.compile(r"^\[(admin channel|card \S+|thread \S+|DM to (\S+))\]", re.MULTILINE)


def _shell_audiences(text: str) -> list[str]:
    found: list[str] = []
    for match in _SHELL_LINE.finditer(text):
        head = match.group(1)
        if head == "admin channel":
            following = text[match.end() :].split("\n[", 1)[0]
            found.append("card" if "[Approve: approve" in following else "admins")
        else:
            found.append(f"dm:{match.group(2)}" if match.group(2) else head.split(" ")[0])
    return found


def _slack_audiences(fake: FakeSlack, emails: dict[str, str]) -> list[str]:
    found: list[str] = []
    for call in fake.calls:
        params = call.params
        if call.method == "chat.update":
            found.append("card")
        elif call.method == "chat.postMessage" and params.get("channel") == ADMIN_CHANNEL:
            found.append(
                "thread" if params.get("thread_ts") else "card" if params.get("blocks") else "admins"
            )
        elif call.method == "chat.postMessage":
            found.append(f"dm:{emails[str(params['channel'])]}")
    return found


SCENARIOS = {
    "created": (request(), [EventType.CREATED], False),
    "approved": (request(state=RequestState.APPROVED), [EventType.APPROVED], True),
    "applied for someone else": (
        request(
            state=RequestState.SUCCEEDED, args={"name": "team-a", "owner": CAROL[1]}, steps=(PROFILE, DEX)
        ),
        [EventType.APPLY_STARTED, EventType.SUCCEEDED],
        True,
    ),
    "shared without a card": (
        request(kinds.Share.KIND, RequestState.SUCCEEDED, {"workspace": "team-a", "user": CAROL[1]}),
        [EventType.SUCCEEDED],
        False,
    ),
    "stuck without a card": (request(state=RequestState.NEEDS_ATTENTION), [EventType.NEEDS_ATTENTION], False),
    "refused": (request(state=RequestState.NEEDS_ATTENTION), [EventType.REFUSED], True),
    "plan changed": (request(), [EventType.PLAN_CHANGED], True),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_slack_and_the_shell_deliver_the_same_audiences(name: str, fake_slack: FakeSlack) -> None:
    r, types, has_card = SCENARIOS[name]
    people = {ALICE[0]: ALICE[1], BOB[0]: BOB[1], CAROL[0]: CAROL[1]}
    for user_id, email in people.items():
        fake_slack.add_user(user_id, email)
    by_email = {email: user_id for user_id, email in people.items()}
    card = (ADMIN_CHANNEL, "1700000000.000100") if has_card else None
    events = [event(t) for t in types]

    slack = SlackNotifier(
        WebClient(token=BOT_TOKEN, base_url=fake_slack.base_url), ADMIN_CHANNEL, by_email.get
    )
    slack.publish(r, events, card)
    out = io.StringIO()
    ShellNotifier(out).publish(r, events, ("shell", r.id) if has_card else None)

    dm_channels = {fake_slack.dm_channel(user_id): email for user_id, email in people.items()}
    slack_audiences = _slack_audiences(fake_slack, dm_channels)
    shell_audiences = _shell_audiences(out.getvalue())
    expected = [
        "dm:" + (n.to or r.requester_email)
        if n.audience in (Audience.REQUESTER, Audience.PERSON)
        else "admins"
        if n.audience is Audience.ADMINS
        else n.audience.value
        for n in route(r, events, has_card)
        if n.audience is not Audience.THREAD or n.say is not Say.PROGRESS or n.event is not None
    ]
    assert slack_audiences == shell_audiences == expected, out.getvalue()
