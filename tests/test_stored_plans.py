"""Plans already stored keep working: a database written by commit 7b032e4 (before issue 10
reshaped the store and the step params; tests/fixtures/README.md) is upgraded by the migrations,
and what it holds applies as it would have: a mid-plan request applies without going back to
pending (its stored plan is the one applied), the grant expiry fires, the audit chain verifies.
An approved, not yet started ``workspace.create`` goes back to pending once: issue 11 added the
``kfbot-notebook-activity`` AuthorizationPolicy to that kind's plan on purpose, and its approver
never saw it; approved again, it applies with the policy.

Public surfaces only (``build_backend``, ``services``, ``kfbot``), so this test guards any later
reshaping of step params or digests too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import cli
from handlers import errors, kinds, services
from handlers.model import Actor, Event, EventType, Request, RequestState
from handlers.ports import Delivery
from handlers.settings import CoreSettings, PolicySettings
from provisioning import ProvisioningSettings, build_backend
from tests.fakes.clock import FakeClock

FIXTURE = Path(__file__).parent / "fixtures" / "db_7b032e4.sql"
AUDIT_KEY = "fixture-audit-key-7b032e4"  # the key make_db_7b032e4.py chained the log with
ALICE = Actor("UALICE", "alice@example.com")
CORE = CoreSettings(policy=PolicySettings(admin_users=frozenset({"UADMIN"})))
SHARED, APPLYING, APPROVED, PENDING = "RFIX001", "RFIX003", "RFIX004", "RFIX005"


class Told:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: tuple[str, str] | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        self.events.extend(events)
        return Delivery()


def test_a_database_from_7b032e4_upgrades_and_its_requests_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kfbot.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIXTURE.read_text())
    clock = FakeClock(datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    settings = ProvisioningSettings(database_url=f"sqlite:///{path}", audit_key=AUDIT_KEY.encode())
    backend = build_backend(settings, CORE, clock)
    told = Told()
    core = services.Core(CORE, backend.uow, backend.facts, clock, told, backend.secrets)
    try:
        with pytest.raises(errors.KfError, match="kfbot migrate"):
            backend.check_migrated()
        backend.migrate()

        backend.run_until_idle(told)
        with backend.uow() as uow:
            state = {rid: uow.requests.get(rid).state for rid in (APPLYING, APPROVED, PENDING)}
        assert state == {APPLYING: RequestState.SUCCEEDED, APPROVED: RequestState.PENDING,
                         PENDING: RequestState.PENDING}
        applied = [e for e in told.events if e.request_id == APPLYING]
        assert {e.type for e in applied} >= {EventType.STEP_SUCCEEDED, EventType.SUCCEEDED}
        assert not [e for e in applied if e.type in (EventType.PLAN_CHANGED, EventType.REFUSED)]
        assert [e.type for e in told.events if e.request_id == APPROVED] == [EventType.PLAN_CHANGED]
        services.decide(core, Actor("UADMIN", "admin@example.com", is_admin=True), APPROVED, approve=True,
                        decision_key="fixture:reapprove")
        assert backend.run_until_idle(told) == 1
        with backend.uow() as uow:
            assert uow.requests.get(APPROVED).state is RequestState.SUCCEEDED
        reapplied = {e.type for e in told.events if e.request_id == APPROVED}
        assert reapplied >= {EventType.APPLY_STARTED, EventType.SUCCEEDED}
        gpu = backend.workspace_view("team-g", live=False)
        assert gpu is not None and {e["action"] for e in gpu.record.created.values()} >= {
            "aws.nodegroup", "kubeflow.poddefault", "kubeflow.notebook_activity"}

        # The stored pending request still holds its subject (filled in by the upgrade).
        with pytest.raises(services.SubjectBusy, match=PENDING):
            services.submit(core, ALICE, kinds.WorkspaceCreate("team-p", ALICE.email), idempotency_key="k1")

        # Bob's one-day view grant on team-s runs out: the bot's unshare applies.
        shared = backend.workspace_view("team-s", live=False)
        assert shared is not None and shared.grants != ()
        clock.advance(timedelta(days=1))
        backend.sweep_timers(lambda kind, ref, payload: services.handle_timer(core, kind, ref, payload))
        assert backend.run_until_idle(told) == 1
        shared = backend.workspace_view("team-s", live=False)
        assert shared is not None and shared.grants == ()
        with backend.uow() as uow:
            unshares = uow.requests.list(kind=kinds.Unshare.KIND)
        assert [(r.state, r.requester_id) for r in unshares] == [(RequestState.SUCCEEDED, "kfbot")]
        shared = backend.workspace_view("team-s", live=False)
        assert shared is not None and shared.record.request_id == SHARED
    finally:
        backend.close()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KFBOT_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("KFBOT_AUDIT_KEY", AUDIT_KEY)
    assert cli.main(["audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
