"""The approval card and its thread, as Slack shows them (#13, "Cards and threads").

Through the real core, store, engine and outbox publisher, and the real ``SlackNotifier`` over the
fake Slack Web API: the card's header says the request in words and, while it waits, when it
expires; each plan step has ONE message in the card's thread, posted when the step starts and
edited in place (``chat.update``) as it finishes, fails or is undone. Where that message is
(its ts) is stored through the publisher's ``announce``, so a restarted process, a 429 or a
message someone deleted still leaves one message per step. Removal steps say what became of
what they remove; the shell prints the same header and words.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from slack_sdk import WebClient

from bot import blocks, render
from bot.notify import ChannelPacer, ShellNotifier, SlackNotifier
from handlers import errors, kinds, services
from handlers.model import Actor, Event, EventType, Request, RequestState
from handlers.plan import JSON, Plan, Step, StepOutcome
from provisioning import dryrun
from provisioning.publisher import Publisher
from tests.fakes.slack import BOT_TOKEN, FakeSlack
from tests.harness import ADMIN, ALICE, BOB, ScriptedAction, ScriptedWorld, Stack, build_stack
from tests.test_plan_digests import CASES

pytest_plugins = ["tests.fakes.db_fixtures"]

ADMIN_CHANNEL = "CADMINS01"
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        for user, email in (
            ("UALICE", "alice@example.com"),
            ("UBOB", "bob@example.com"),
            ("UADMIN", "admin@example.com"),
        ):
            fake.add_user(user, email)
        yield fake


def slack_notifier(fake: FakeSlack, stack: Stack, *, dry_run: bool = False) -> SlackNotifier:
    """A notifier as ``bot.app`` builds one; each call is a new one (a restarted process keeps
    nothing in memory). 429s are waited out without sleeping."""
    return SlackNotifier(
        WebClient(token=BOT_TOKEN, base_url=fake.base_url),
        ADMIN_CHANNEL,
        lambda email: None,
        calls=dryrun.render if dry_run else None,
        kept_by_steps=stack.backend.kept_by_steps,
        pacer=ChannelPacer(sleep=lambda seconds: None),
        dry_run=dry_run,
        expiry=stack.backend.pending_expiry,
    )


def with_notifier(stack: Stack, notifier: Any) -> Stack:
    stack.core = dataclasses.replace(stack.core, notifier=notifier)
    return stack


def file_workspace(stack: Stack, name: str = "team-a", owner: Actor = ALICE) -> Request:
    return services.submit(
        stack.core, owner, kinds.WorkspaceCreate(name, owner.email), idempotency_key=None
    ).request


def card_of(stack: Stack, request_id: str) -> tuple[str, str]:
    with stack.backend.db.uow() as uow:
        card = uow.requests.card(request_id)
    assert card is not None
    return card


def apply_without_delivery(stack: Stack) -> None:
    """Run the engine only: its notices wait in the outbox (as when Slack is slow or down)."""
    engine = stack.backend.engine(stack.notifier)
    while engine.run_once():
        pass


def publisher(stack: Stack, notifier: Any) -> Publisher:
    return Publisher(stack.backend.db, notifier, stack.clock, stack.backend.settings.engine, worker_id="p1")


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def thread_calls(fake: FakeSlack, card: tuple[str, str]) -> tuple[int, int]:
    """(messages posted into the card's thread, edits of messages in it)."""
    replies = {m["ts"] for m in fake.replies(*card)}
    posts = [c for c in fake.calls_to("chat.postMessage") if c.get("thread_ts") == card[1]]
    edits = [c for c in fake.calls_to("chat.update") if c.get("ts") in replies]
    return len(posts), len(edits)


def step_messages(fake: FakeSlack, card: tuple[str, str]) -> list[dict[str, Any]]:
    """The thread's messages between the "Applying" line and the result."""
    return fake.replies(*card)[1:-1]


# -- the card ---------------------------------------------------------------------------------------


def test_the_card_says_the_request_in_words_and_when_it_expires(sqlite_url: str, fake: FakeSlack) -> None:
    stack = build_stack(sqlite_url)
    with_notifier(stack, slack_notifier(fake, stack))
    request = file_workspace(stack)
    card = card_of(stack, request.id)
    posted = fake.messages[card]
    header = posted["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "Approval needed: New workspace team-a for alice"
    assert request.id in json_text(posted["blocks"])  # the id is still on the card, in its body
    due = stack.backend.pending_expiry(request.id)
    assert due is not None and due > stack.clock.now()
    expiry = [b for b in posted["blocks"] if b["type"] == "context"]
    assert (
        expiry and f"<!date^{int(due.timestamp())}^" in json_text(expiry) and "Expires" in json_text(expiry)
    )

    stack.approve(request.id)
    stack.backend.run_until_idle(stack.core.notifier)
    done = fake.messages[card]
    assert done["blocks"][0]["text"]["text"] == "Done: New workspace team-a for alice"
    assert "Expires" not in json_text(done["blocks"])  # decided: it no longer expires


def test_every_kind_titles_its_card_in_plain_words() -> None:
    seen = set()
    for kind, _, _ in CASES.values():
        title = kind.title("carol@example.com")
        seen.add(type(kind).KIND)
        assert title and title[0].isupper() and "\n" not in title, title
        assert not set(title) & set("`*_<>&"), f"{type(kind).KIND}: markup in {title!r}"
        assert len(title) <= blocks.HEADER_LIMIT - len("Approval needed (dry run): ")
        named = next((getattr(kind, f) for f in ("workspace", "name") if getattr(kind, f, None)), None)
        if named:
            assert str(named) in title, title
    assert seen == set(kinds.KINDS)
    assert kinds.Share("team-a", "bob@example.com", "edit").title("alice@example.com") == (
        "Share team-a with bob (edit) for alice"
    )


# -- one thread message per step ------------------------------------------------------------------


def test_each_step_has_one_thread_message_edited_as_it_progresses(sqlite_url: str, fake: FakeSlack) -> None:
    stack = build_stack(sqlite_url)
    with_notifier(stack, slack_notifier(fake, stack))
    request = file_workspace(stack)
    steps = len(request.plan.steps)
    assert steps >= 4
    stack.approve(request.id)
    stack.backend.run_until_idle(stack.core.notifier)

    card = card_of(stack, request.id)
    replies = fake.replies(*card)
    # "Applying", one message per step, the result: not two per step as before.
    assert len(replies) == steps + 2, [m["text"] for m in replies]
    assert replies[0]["text"].startswith(f"Applying `{request.id}`")
    assert replies[-1]["text"].startswith(f"✅ `{request.id}` is done")
    for message, step in zip(step_messages(fake, card), request.plan.steps, strict=True):
        assert "edited" in message, message  # posted as "▶ ..." when the step started
        assert message["text"] == f"✔ {render.SLACK.esc(step.summary)} (created)"
    assert thread_calls(fake, card) == (steps + 2, steps)


def test_a_restarted_publisher_edits_the_messages_the_old_one_posted(
    sqlite_url: str, fake: FakeSlack
) -> None:
    stack = build_stack(sqlite_url)
    with_notifier(stack, slack_notifier(fake, stack))
    request = file_workspace(stack)
    stack.approve(request.id)
    apply_without_delivery(stack)
    steps = len(request.plan.steps)
    before = publisher(stack, slack_notifier(fake, stack))
    # The first process delivers "Applying", the first step's start and end, the second step's
    # start; then it dies.
    for _ in range(4):
        assert before.publish_one()
    card = card_of(stack, request.id)
    second = fake.replies(*card)[2]
    assert second["text"].startswith("▶ ") and "edited" not in second
    fake.rate_limit_next("chat.update", retry_after=1)  # and the new one meets a 429 at once

    after = publisher(stack, slack_notifier(fake, stack))  # nothing of the old one in memory
    after.drain()

    replies = fake.replies(*card)
    assert len(replies) == steps + 2, [m["text"] for m in replies]
    assert replies[2]["ts"] == second["ts"] and replies[2]["text"].startswith("✔ ") and "edited" in replies[2]
    assert all(m["text"].startswith("✔ ") and "edited" in m for m in step_messages(fake, card))
    updates = [c for c in fake.calls if c.method == "chat.update" and c.params.get("ts") != card[1]]
    assert len(updates) == steps + 1  # one per step, and the one answered 429 sent again


def test_a_step_message_someone_deleted_is_posted_again(sqlite_url: str, fake: FakeSlack) -> None:
    stack = build_stack(sqlite_url)
    with_notifier(stack, slack_notifier(fake, stack))
    request = file_workspace(stack)
    stack.approve(request.id)
    apply_without_delivery(stack)
    first = publisher(stack, slack_notifier(fake, stack))
    assert first.publish_one() and first.publish_one()  # "Applying", the first step's start
    card = card_of(stack, request.id)
    gone = fake.replies(*card)[1]
    WebClient(token=BOT_TOKEN, base_url=fake.base_url).chat_delete(channel=card[0], ts=gone["ts"])

    first.drain()

    replies = fake.replies(*card)
    texts = [m["text"] for m in replies]
    assert len(texts) == len(request.plan.steps) + 2 and texts[1].startswith("✔ "), texts
    with stack.backend.db.uow() as uow:
        stored = uow.requests.thread_messages(request.id)
    assert stored["step:0"] == replies[1]["ts"] != gone["ts"]  # the new message is the one kept up


def test_a_failed_step_and_the_undo_edit_their_messages_and_a_retry_posts_new_ones(
    sqlite_url: str, fake: FakeSlack
) -> None:
    world = ScriptedWorld()
    world.fail("aws.bucket", errors.PermanentError("AccessDenied"))
    stack = build_stack(sqlite_url, world=world)
    with_notifier(stack, slack_notifier(fake, stack))
    request = file_workspace(stack)
    failing = next(i for i, s in enumerate(request.plan.steps) if s.action == "aws.bucket")
    stack.approve(request.id)
    stack.backend.run_until_idle(stack.core.notifier)
    assert stack.request(request.id).state is RequestState.FAILED

    card = card_of(stack, request.id)
    texts = [m["text"] for m in fake.replies(*card)]
    steps = texts[1 : 2 + failing]
    assert len(steps) == failing + 1, texts  # one message per step that started
    assert all(t.startswith("↩ undone: ") for t in steps[:failing]), steps
    assert steps[failing].startswith("✖ ") and "AccessDenied" in steps[failing], steps

    services.retry(stack.core, ADMIN, request.id)
    stack.backend.run_until_idle(stack.core.notifier)
    assert stack.request(request.id).state is RequestState.SUCCEEDED
    after = [m["text"] for m in fake.replies(*card)][len(texts) :]
    # The retry's run has messages of its own; the first run's stay as they ended.
    assert sum(t.startswith("✔ ") for t in after) == len(request.plan.steps), after
    assert [m["text"] for m in fake.replies(*card)][: len(texts)] == texts


# -- removals ----------------------------------------------------------------------------------------


class _KeepingWorld(ScriptedWorld):
    """Live outcomes of removals: the bucket holds data and is kept; the rest are removed."""

    def registry(self) -> dict[str, ScriptedAction]:
        actions = super().registry()
        for name in actions:
            if name.endswith(".remove"):
                actions[name] = _Removal(self, name)  # type: ignore[assignment]
        return actions


@dataclasses.dataclass
class _Removal(ScriptedAction):
    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        if self.name == "aws.bucket.remove":
            return StepOutcome(created=False, kept=(f"S3 bucket `{params['bucket']}`",))
        return StepOutcome(created=self.name != "dex.user.remove")  # Dex: already gone


def test_a_delete_says_removed_kept_or_gone_per_step_in_prose(sqlite_url: str, fake: FakeSlack) -> None:
    stack = build_stack(sqlite_url, world=_KeepingWorld())
    with_notifier(stack, slack_notifier(fake, stack))
    made = file_workspace(stack)
    stack.approve(made.id)
    stack.backend.run_until_idle(stack.core.notifier)
    delete = services.submit(
        stack.core, ALICE, kinds.WorkspaceDelete("team-a", confirm="team-a"), idempotency_key=None
    ).request
    summaries = [s.summary for s in delete.plan.steps]
    assert "remove Kubeflow Profile `team-a` and its namespace" in summaries, summaries
    assert not any("/" in s.split("`")[0] for s in summaries), summaries  # words, not Kind/name keys
    stack.approve(delete.id)
    stack.backend.run_until_idle(stack.core.notifier)

    texts = [m["text"] for m in step_messages(fake, card_of(stack, delete.id))]
    assert not any("(created)" in t for t in texts), texts
    assert "✔ removed: Kubeflow Profile `team-a` and its namespace" in texts, texts
    assert any(t.startswith("✔ kept: S3 bucket `") and "holds data" in t for t in texts), texts
    assert any(t.startswith("✔ already gone: the Dex login for alice@example.com") for t in texts), texts


def test_removal_lines_in_a_dry_run_say_would_remove() -> None:
    step = Step(
        "aws.nodegroup.remove", "Nodegroup/ng", {"cluster": "c", "name": "ng"}, "remove EKS nodegroup `ng`"
    )
    request = Request(
        "RDRY001",
        "workspace.delete",
        {"name": "t"},
        "UALICE",
        "alice@example.com",
        Plan.of([step]),
        created_at=T0,
    )
    event = Event(
        EventType.STEP_SUCCEEDED, request.id, T0, None, {"idx": 0, "key": step.key, "created": True}
    )
    assert render.event_text(request, event, render.SLACK, dry_run=True) == (
        "✔ would remove: EKS nodegroup `ng` (dry run)"
    )
    assert render.event_text(request, event, render.SLACK) == "✔ removed: EKS nodegroup `ng`"


@pytest.mark.parametrize(
    ("created", "dry_run", "line"),
    [
        (True, False, "✔ removed: ServiceAccount `kf-tok`"),
        (False, False, "✔ already gone: ServiceAccount `kf-tok`"),
        (True, True, "✔ would remove: ServiceAccount `kf-tok` (bob's edit token T1 stops working) (dry run)"),
    ],
)
def test_a_token_removal_is_told_by_what_it_removes(created: bool, dry_run: bool, line: str) -> None:
    step = Step(
        "kubeflow.token_account.remove",
        "TokenAccount/ns/kf-tok",
        {"namespace": "ns", "name": "kf-tok", "token_id": "T1"},
        "delete ServiceAccount `kf-tok` (bob's edit token T1 stops working)",
    )
    request = Request(
        "RDRY002",
        "token.revoke",
        {"token_id": "T1"},
        "UBOB",
        "bob@example.com",
        Plan.of([step]),
        created_at=T0,
    )
    data: dict[str, JSON] = {"idx": 0, "key": step.key, "created": created}
    event = Event(EventType.STEP_SUCCEEDED, request.id, T0, None, data)
    assert render.event_text(request, event, render.SLACK, dry_run=dry_run) == line


# -- the dry run lists every call --------------------------------------------------------------------


def test_a_role_change_dry_run_lists_the_old_pairs_delete_and_the_full_policy() -> None:
    calls = dryrun.render(
        "kubeflow.contributor", {"namespace": "team-a", "user": "bob@example.com", "role": "view"}
    )
    old = "user-bob-example-com-clusterrole-edit"
    assert any(
        c.endswith(f"DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings/{old}")
        for c in calls
    ), calls
    assert any(
        c.endswith(f"DELETE /apis/security.istio.io/v1beta1/namespaces/team-a/authorizationpolicies/{old}")
        for c in calls
    )
    policy = next(c for c in calls if c.startswith("POST /apis/security.istio.io/"))
    body = json.loads(policy.split(" ", 2)[2])
    assert body["spec"] == {
        "rules": [
            {
                "when": [{"key": "request.headers[kubeflow-userid]", "values": ["bob@example.com"]}],
                "from": [
                    {
                        "source": {
                            "principals": [
                                "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
                                "cluster.local/ns/kubeflow/sa/ml-pipeline-ui",
                            ]
                        }
                    }
                ],
            }
        ]
    }


# -- the shell ------------------------------------------------------------------------------------------


def test_the_shell_prints_the_same_header_expiry_and_removal_words(sqlite_url: str) -> None:
    stack = build_stack(sqlite_url)
    out = io.StringIO()
    shell = ShellNotifier(
        out,
        calls=dryrun.render,
        kept_by_steps=stack.backend.kept_by_steps,
        dry_run=True,
        expiry=stack.backend.pending_expiry,
    )
    with_notifier(stack, shell)
    request = file_workspace(stack, owner=BOB)
    printed = out.getvalue()
    assert "[admin channel] Approval needed (dry run): New workspace team-a for bob" in printed, printed
    assert "Expires 20" in printed and "UTC if no admin decides by then." in printed
    stack.approve(request.id)
    stack.backend.run_until_idle(shell)
    delete = services.submit(
        stack.core, BOB, kinds.WorkspaceDelete("team-a", confirm="team-a"), idempotency_key=None
    ).request
    stack.approve(delete.id)
    stack.backend.run_until_idle(shell)
    printed = out.getvalue()
    assert "Approval needed (dry run): Delete workspace team-a, for bob" in printed
    assert "✔ would remove: Kubeflow Profile `team-a` and its namespace (dry run)" in printed, printed
    assert "(created)" not in printed
