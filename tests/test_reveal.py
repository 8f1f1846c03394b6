"""Secrets are made at the click, for their owner only, and never inside a database transaction."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from handlers import errors, kinds, services
from handlers.model import Actor, Request
from handlers.ports import RevealedSecret
from tests.harness import ALICE, BOB, Stack, build_stack


def succeed(stack: Stack, kind: kinds.RequestKind, actor: Actor = ALICE) -> str:
    submitted = services.submit(stack.core, actor, kind, idempotency_key=f"k-{kind.KIND}")
    if submitted.auto_reason is None:
        stack.approve(submitted.request.id)
    stack.run()
    return submitted.request.id


def test_a_password_is_only_set_on_a_login_the_bot_made(sqlite_url: str) -> None:
    stack = build_stack(sqlite_url)
    with pytest.raises(errors.Forbidden, match="did not make a Kubeflow login"):
        services.reveal_password(stack.core, ALICE)
    succeed(stack, kinds.WorkspaceCreate("team-a", ALICE.email))
    assert services.reveal_password(stack.core, ALICE).kind == "password"
    with pytest.raises(errors.Forbidden):
        services.reveal_password(stack.core, BOB)


class _WritesDuringIssue:
    """A secret issuer that, while "making the token", checks another thread can still write."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.writer_finished = False

    def password(self, email: str) -> RevealedSecret:
        raise AssertionError("not used")

    def token(self, request: Request) -> RevealedSecret:
        def write() -> None:
            with self.stack.backend.uow() as uow:
                uow.timers.schedule("test.probe", "x", self.stack.clock.now() + timedelta(hours=1))
                uow.commit()
            self.writer_finished = True

        other = threading.Thread(target=write)
        other.start()
        # Blocked, the writer would sit out SQLite's 30 s busy timeout; 25 s tells that apart
        # without failing a writer that is merely late on a loaded machine.
        other.join(timeout=25)
        return RevealedSecret(kind="token", value="not-a-real-token", fingerprint="f")


def test_the_token_is_made_outside_any_transaction(sqlite_url: str) -> None:
    stack = build_stack(sqlite_url)
    succeed(stack, kinds.WorkspaceCreate("team-a", ALICE.email))
    rid = succeed(stack, kinds.TokenIssue("team-a", timedelta(hours=1)))
    issuer = _WritesDuringIssue(stack)
    core = services.Core(
        stack.core.settings, stack.core.uow, stack.core.facts, stack.clock, stack.notifier, issuer
    )
    services.reveal_token(core, ALICE, rid)
    assert issuer.writer_finished, "another writer was blocked while the token was being made"
    with pytest.raises(errors.Forbidden):
        services.reveal_token(core, BOB, rid)
