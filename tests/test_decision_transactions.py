"""A decision is one database transaction, and nobody is told (Slack) while one is open.

Counted on the real store with SQLAlchemy's engine events: the transactions a use case commits
before the notifier is called, and the connections checked out while it is called (a Slack
round trip inside a transaction would hold its locks, and on SQLite stall every other writer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import event

from handlers import kinds, services
from handlers.model import Event, Request
from handlers.ports import Delivery
from tests.harness import ADMIN, ALICE, Stack, build_stack

pytest_plugins = ["tests.fakes.db_fixtures"]


class Ledger:
    """What happened, in order: each transaction begun and committed, and each publish with the
    connections open then."""

    def __init__(self, stack: Stack) -> None:
        self.entries: list[str] = []
        engine = stack.backend.db.engine
        event.listen(engine, "begin", lambda conn: self.entries.append("begin"))
        event.listen(engine, "commit", lambda conn: self.entries.append("commit"))
        recording = stack.notifier.publish

        def publish(
            request: Request,
            events: Sequence[Event],
            card: tuple[str, str] | None,
            threads: Mapping[str, str] | None = None,
        ) -> Delivery:
            self.entries.append(f"publish:{engine.pool.checkedout()}")  # type: ignore[attr-defined]
            return recording(request, events, card, threads)

        stack.notifier.publish = publish  # type: ignore[method-assign]


def test_an_approval_commits_once_then_tells_with_no_transaction_open(db_url: str) -> None:
    stack = build_stack(db_url)
    request = services.submit(stack.core, ALICE, kinds.WorkspaceCreate("one-tx", ALICE.email),
                              idempotency_key=None).request
    stack.run()  # nothing to do yet: it waits for an admin
    ledger = Ledger(stack)
    stack.approve(request.id, ADMIN)
    # The decision (request, decision key, timers, audit, and where the card is) in one
    # transaction; Slack with no connection checked out; then the delivery recorded.
    assert ledger.entries == ["begin", "commit", "publish:0", "begin", "commit"]


def test_a_rejection_commits_once_then_tells_with_no_transaction_open(db_url: str) -> None:
    stack = build_stack(db_url)
    request = services.submit(stack.core, ALICE, kinds.WorkspaceCreate("one-tx-r", ALICE.email),
                              idempotency_key=None).request
    ledger = Ledger(stack)
    services.decide(stack.core, ADMIN, request.id, approve=False, reason="not now",
                    decision_key=f"test:{request.id}:reject")
    assert ledger.entries == ["begin", "commit", "publish:0", "begin", "commit"]


def test_the_engine_never_tells_inside_a_transaction(db_url: str) -> None:
    stack = build_stack(db_url)
    request = services.submit(stack.core, ALICE, kinds.WorkspaceCreate("one-tx-e", ALICE.email),
                              idempotency_key=None).request
    stack.approve(request.id, ADMIN)
    ledger = Ledger(stack)
    assert stack.run() == 1
    published = [e for e in ledger.entries if e.startswith("publish:")]
    assert published and set(published) == {"publish:0"}
    # Each notice follows the commit of the outbox claim that read its card: no transaction of its
    # own to find the card.
    for i, entry in enumerate(ledger.entries):
        if entry.startswith("publish:"):
            assert ledger.entries[i - 1] == "commit"
