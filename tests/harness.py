"""Builds the real core + provisioning stack for tests, with a scripted world at the Action port.

The engine, store, audit log and services are the real ones over SQLite or PostgreSQL; only the
actions are replaced, by ``ScriptedWorld``, which keeps objects in memory so tests can assert on
what exists, and fails, blocks or crashes on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from handlers import errors, kinds, services
from handlers.model import Actor, Event, Request
from handlers.plan import JSON, StepOutcome, canonical_json
from handlers.ports import Delivery
from handlers.settings import CoreSettings, PolicySettings
from provisioning import dryrun
from provisioning.backend import Backend, DryRunSecrets
from provisioning.facts import RegistryFacts
from provisioning.settings import EngineSettings, ProvisioningSettings
from provisioning.store import Database
from tests.fakes.clock import FakeClock

AUDIT_KEY = b"test-audit-key-not-secret"
ALICE = Actor("UALICE", "alice@example.com")
BOB = Actor("UBOB", "bob@example.com")
ADMIN = Actor("UADMIN", "admin@example.com", is_admin=True)
ADMIN2 = Actor("UADMIN2", "admin2@example.com", is_admin=True)
CORE = CoreSettings(policy=PolicySettings(admin_users=frozenset({"UADMIN", "UADMIN2"})))


@dataclass
class ScriptedWorld:
    """Objects keyed by (action, params); scripted failures per action, consumed in order."""

    objects: dict[tuple[str, str], Mapping[str, JSON]] = field(default_factory=dict)
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    undo_failures: dict[str, list[Exception]] = field(default_factory=dict)
    before_ensure: dict[str, Callable[[], None]] = field(default_factory=dict)
    ensure_calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def key(action: str, params: Mapping[str, JSON]) -> tuple[str, str]:
        return action.removesuffix(".remove"), canonical_json(
            params.get("name") or params.get("bucket") or params.get("email") or params
        )

    def fail(self, action: str, *excs: Exception) -> None:
        self.failures.setdefault(action, []).extend(excs)

    def registry(self) -> dict[str, ScriptedAction]:
        return {name: ScriptedAction(self, name) for name in dryrun.RENDERERS}


@dataclass
class ScriptedAction:
    world: ScriptedWorld
    name: str

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        hook = self.world.before_ensure.get(self.name)
        if hook is not None:
            hook()
        with self.world.lock:
            self.world.ensure_calls.append(self.name)
            pending = self.world.failures.get(self.name)
            if pending:
                raise pending.pop(0)
            key = self.world.key(self.name, params)
            if self.name.endswith(".remove"):
                self.world.objects.pop(key, None)
                return StepOutcome(created=False)
            existing = self.world.objects.get(key)
            if existing is not None:
                # Like the live actions: an object carrying this request's mark is one it made.
                return StepOutcome(created=existing.get("_request") == params.get("_request"))
            self.world.objects[key] = params
            return StepOutcome(created=True)

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        with self.world.lock:
            pending = self.world.undo_failures.get(self.name)
            if pending:
                raise pending.pop(0)
            if outcome.created:
                self.world.objects.pop(self.world.key(self.name, params), None)


@dataclass
class RecordingNotifier:
    """The Notifier port, recording what people would have been told."""

    published: list[tuple[str, str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: tuple[str, str] | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        with self.lock:
            self.published.append((request.id, request.state.value, [e.type.value for e in events]))
            return Delivery(card=card or ("CADMIN", f"{len(self.published)}.0001"), sent=("recording",))

    def types_for(self, request_id: str) -> list[str]:
        return [t for rid, _, types in self.published if rid == request_id for t in types]


@dataclass
class Stack:
    backend: Backend
    core: services.Core
    clock: FakeClock
    world: ScriptedWorld
    notifier: RecordingNotifier

    def request(self, request_id: str) -> Request:
        with self.backend.uow() as uow:
            return uow.requests.get(request_id)

    def run(self) -> int:
        return self.backend.run_until_idle(self.notifier)

    def approve(self, request_id: str, actor: Actor = ADMIN) -> Request:
        return services.decide(
            self.core, actor, request_id, approve=True, decision_key=f"test:{request_id}:{actor.user_id}"
        )


def make_workspace(stack: Stack, name: str, owner: Actor, admin: Actor = ADMIN) -> None:
    """A workspace made the way the bot makes one (filed, approved, applied), so the registry row
    and the audit log agree; a row written straight into the registry would be refused."""
    create = kinds.WorkspaceCreate(name, owner.email)
    request = services.submit(stack.core, owner, create, idempotency_key=None)
    stack.approve(request.request.id, admin)
    stack.run()


def engine_settings(worker_id: str = "worker-1") -> EngineSettings:
    return EngineSettings(
        worker_id=worker_id,
        lease=timedelta(seconds=30),
        step_deadline=timedelta(minutes=5),
        retry_initial=1.0,
        retry_max=8.0,
        poll_interval=0.01,
    )


def build_stack(
    db_url: str,
    *,
    clock: FakeClock | None = None,
    world: ScriptedWorld | None = None,
    core: CoreSettings = CORE,
    worker_id: str = "worker-1",
    migrate: bool = True,
) -> Stack:
    clock = clock or FakeClock()
    world = world or ScriptedWorld()
    settings = ProvisioningSettings(
        database_url=db_url, audit_key=AUDIT_KEY, engine=engine_settings(worker_id)
    )
    db = Database(db_url, audit_key=AUDIT_KEY, now=clock.now)
    if migrate:
        db.migrate()
    backend = Backend(
        settings, core, clock, db, world.registry(), RegistryFacts(db, clock), DryRunSecrets(), None
    )
    notifier = RecordingNotifier()
    core_services = services.Core(core, backend.uow, backend.facts, clock, notifier, backend.secrets)
    return Stack(backend, core_services, clock, world, notifier)


def temporary(message: str = "throttled") -> errors.TemporaryError:
    return errors.TemporaryError(message, delay=0.0)
