"""The idle report end to end: real store (SQLite and PostgreSQL), the reporter over the fake Slack
Web API, a simulated clock. The cluster scan is fed at its one seam (``Backend.gpu_inventory``):
the scan's own tests cover the Kubernetes, EKS, Jupyter and Prometheus protocols."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from slack_sdk import WebClient

from bot.cost import CostReporter
from bot.scheduler import JOB_ID, SCAN_JOB_ID, start_scheduler
from bot.scheduler import scan_once as scan_job
from handlers import errors, kinds, services
from handlers.cost import autostop
from handlers.cost.inventory import GpuPod, Inventory, Node, Nodegroup, Notebook, NotebookActivity
from handlers.model import EventType
from handlers.settings import CostSettings
from provisioning.store.schema import audit_events, timers
from provisioning.store.schema import gpu_holds as gpu_holds_table
from provisioning.store.schema import gpu_signals as gpu_signals_table
from tests.fakes.slack import FakeSlack
from tests.harness import ALICE, CORE, Stack, build_stack, make_workspace

pytest_plugins = ["tests.fakes.slack_fixtures", "tests.fakes.db_fixtures"]

COST = CostSettings(idle_after=timedelta(hours=2), scan_interval=timedelta(minutes=10), cost_channel="CCOST")


class World:
    """What the cluster holds; each scan reads it at the stack's clock."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.groups = [Nodegroup("ng-a", "team-a", "g5.xlarge", 1, "ACTIVE", 1, 2, 1)]
        self.nodes = [Node("n1", "ng-a", "g5.xlarge", 1, stack.clock.now())]
        self.pods: list[GpuPod] = []
        self.notebooks: list[Notebook] = []
        self.activity: dict[tuple[str, str], NotebookActivity] = {}
        self.calls = 0

    def inventory(self, window: timedelta) -> Inventory:
        self.calls += 1
        return Inventory(
            self.stack.clock.now(),
            "us-east-1",
            tuple(self.groups),
            tuple(self.nodes),
            tuple(self.pods),
            tuple(self.notebooks),
            dict(self.activity),
        )


def setup(
    db_url: str, fake_slack: FakeSlack, cost: CostSettings = COST, **kw: object
) -> tuple[Stack, World, CostReporter]:
    stack = build_stack(db_url, core=dataclasses.replace(CORE, cost=cost), **kw)  # type: ignore[arg-type]
    fake_slack.add_user("UALICE", "alice@example.com")
    world = World(stack)
    return stack, world, reporter_for(stack, world, fake_slack, cost)


def reporter_for(
    stack: Stack, world: World, fake_slack: FakeSlack, cost: CostSettings = COST
) -> CostReporter:
    stack.backend.gpu_inventory = world.inventory  # type: ignore[method-assign]
    client = WebClient(token="xoxb-test", base_url=fake_slack.base_url)

    def find(email: str) -> str | None:
        try:
            return str(client.users_lookupByEmail(email=email)["user"]["id"])
        except Exception:
            return None

    return CostReporter(client, stack.backend, stack.backend.uow, stack.clock, cost, "CADMIN", find)


def namespace(stack: Stack, name: str) -> str:
    return next(w.namespace for w in stack.backend.workspaces() if w.name == name)


def make_gpu_workspace(stack: Stack, name: str) -> None:
    """A workspace with a bot-made GPU nodegroup (what ``gpu.scale`` scales), made as the bot does."""
    create = kinds.WorkspaceCreate(name, ALICE.email, gpu=1)
    request = services.submit(stack.core, ALICE, create, idempotency_key=None)
    stack.approve(request.request.id)
    stack.run()
    assert stack.request(request.request.id).state.value == "succeeded"


def top_level(fake_slack: FakeSlack, channel: str) -> list[dict[str, object]]:
    return [
        m
        for m in fake_slack.messages_in(channel)
        if not m.get("thread_ts") or m.get("thread_ts") == m.get("ts")
    ]


def test_report_posted_once_then_edited_threaded_held_cleared_and_the_clock_survives_a_restart(
    db_url: str, fake_slack: FakeSlack
) -> None:
    stack, world, reporter = setup(db_url, fake_slack)
    make_workspace(stack, "team-a", ALICE)
    start = stack.clock.now()

    assert reporter.scan_once().posted == ()  # empty, but not for idle_after yet
    assert fake_slack.messages_in("CCOST") == []
    stack.clock.advance(timedelta(hours=2, minutes=5))
    out = reporter.scan_once()
    assert out.posted == ("CCOST",)
    (msg,) = fake_slack.messages_in("CCOST")
    assert "nodegroup `ng-a`: 1 x g5.xlarge" in str(msg["text"]) and "<@UALICE>" in str(msg["text"])
    assert "on-demand list price" in str(msg["text"])
    actions = [e for b in msg["blocks"] for e in b.get("elements", []) if b["type"] == "actions"]  # type: ignore[union-attr]
    assert [a["action_id"] for a in actions] == ["cost_scale_down", "cost_keep", "cost_snooze"]
    assert json.loads(actions[0]["value"]) == {"workspace": "team-a", "target": "nodegroup:ng-a"}

    # Same minute: nothing to say, nothing sent.
    sent = len(fake_slack.calls)
    assert reporter.scan_once() == type(out)(led=True)
    assert len(fake_slack.calls) == sent

    # Later: only the dollars idle so far grew; what is idle did not change, so nothing is sent.
    stack.clock.advance(timedelta(minutes=10))
    sent = len(fake_slack.calls)
    assert reporter.scan_once() == type(out)(led=True)
    assert len(fake_slack.calls) == sent and len(top_level(fake_slack, "CCOST")) == 1

    # A notebook goes idle: edited, and a thread note says what is new.
    ns = namespace(stack, "team-a")
    world.nodes.append(Node("n2", "ng-a", "g5.xlarge", 1, stack.clock.now()))
    world.pods.append(GpuPod(ns, "nb-0", "n2", 1, "notebook", "nb"))
    world.notebooks.append(Notebook(ns, "nb", False, 1, "jupyter"))
    world.activity[(ns, "nb")] = NotebookActivity("idle", stack.clock.now() - timedelta(hours=3))
    out = reporter.scan_once()
    assert out.edited == out.threaded == ("CCOST",)
    ts = str(top_level(fake_slack, "CCOST")[0]["ts"])
    (note,) = (
        fake_slack.replies("CCOST", ts)[1:]
        if fake_slack.replies("CCOST", ts)[0]["ts"] == ts
        else fake_slack.replies("CCOST", ts)
    )
    assert "Newly idle: notebook" in str(note["text"])

    # The owner pressed Keep on the nodegroup (the gpu.hold kind writes this row).
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.insert(gpu_holds_table).values(
                target="nodegroup:ng-a",
                until=stack.clock.now() + timedelta(hours=4),
                held_by="UALICE",
                request_id=None,
                created_at=stack.clock.now(),
            )
        )
    stack.clock.advance(timedelta(minutes=10))
    out = reporter.scan_once()
    assert out.threaded == ("CCOST",)
    text = str(top_level(fake_slack, "CCOST")[0]["text"])
    assert "nodegroup `ng-a`" not in text and "notebook" in text

    # A restart: a new backend on the same database keeps the node's idle clock.
    stack.backend.close()
    again = build_stack(db_url, clock=stack.clock, core=stack.core.settings, migrate=False)
    reporter = reporter_for(again, world, fake_slack)
    world.stack = again
    with again.backend.db.engine.begin() as conn:
        conn.execute(sa.delete(gpu_holds_table))
    stack.clock.advance(timedelta(minutes=10))
    scan = again.backend.observe_idle()
    ng = next(i for i in scan.observation.items if i.key == "nodegroup:ng-a")
    assert ng.since == start

    # Everything busy: the same message now says nothing is idle; the next scan says nothing.
    world.pods = [GpuPod(ns, "nb-0", "n2", 1, "notebook", "nb"), GpuPod(ns, "train", "n1", 1, "job")]
    world.activity[(ns, "nb")] = NotebookActivity("busy", stack.clock.now())
    out = reporter.scan_once()
    assert out.cleared == ("CCOST",)
    (msg,) = top_level(fake_slack, "CCOST")
    assert "Nothing is idle any more" in str(msg["text"])
    sent = len(fake_slack.calls)
    reporter.scan_once()
    assert len(fake_slack.calls) == sent
    again.backend.close()


def test_workspace_channels_and_unattributed_items(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, workspace_channels={"team-a": "CTEAMA"})
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    world.groups.append(Nodegroup("by-hand", None, "g4dn.xlarge", 1, "ACTIVE", 1, 1, 1))
    world.nodes.append(Node("h1", "by-hand", "g4dn.xlarge", 1, stack.clock.now()))
    reporter.scan_once()
    stack.clock.advance(timedelta(hours=3))
    out = reporter.scan_once()
    assert set(out.posted) == {"CTEAMA", "CCOST"}
    (team,) = fake_slack.messages_in("CTEAMA")
    (other,) = fake_slack.messages_in("CCOST")
    assert "ng-a" in str(team["text"]) and "by-hand" not in str(team["text"])
    assert "Unattributed" in str(other["text"])
    assert not any(b["type"] == "actions" for b in other["blocks"])  # type: ignore[index]
    stack.backend.close()


@pytest.mark.postgres
def test_two_replicas_post_one_report(postgres_url: str, fake_slack: FakeSlack) -> None:
    stack, world, first = setup(postgres_url, fake_slack)
    make_workspace(stack, "team-a", ALICE)
    other = build_stack(
        postgres_url, clock=stack.clock, core=stack.core.settings, migrate=False, worker_id="w2"
    )
    second = reporter_for(other, world, fake_slack)
    first.scan_once()
    second.scan_once()
    stack.clock.advance(timedelta(hours=3))
    outs = [first.scan_once(), second.scan_once(), second.scan_once(), first.scan_once()]
    assert [o.led for o in outs] == [True, False, False, True]
    assert len(fake_slack.messages_in("CCOST")) == 1
    stack.backend.close()
    other.backend.close()


# -- auto-stop ---------------------------------------------------------------------------------------


def sweep(stack: Stack) -> int:
    return stack.backend.sweep_timers(lambda k, r, p: services.handle_timer(stack.core, k, r, p))


def pending(stack: Stack) -> dict[str, datetime]:
    with stack.backend.db.uow() as uow:
        return uow.cost.pending_timers(autostop.AUTO_STOP)


def test_auto_stop_is_off_unless_enabled(db_url: str, fake_slack: FakeSlack) -> None:
    stack, _, reporter = setup(db_url, fake_slack)
    make_workspace(stack, "team-a", ALICE)
    reporter.scan_once()
    stack.clock.advance(timedelta(hours=3))
    reporter.scan_once()
    assert pending(stack) == {}
    assert "automatically" not in str(fake_slack.messages_in("CCOST")[0]["text"])
    stack.backend.close()


def test_auto_stop_scheduled_vouched_warned_and_cancelled_when_busy(
    db_url: str, fake_slack: FakeSlack
) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    reporter.scan_once()
    stack.clock.advance(timedelta(hours=2, minutes=5))
    reporter.scan_once()
    due = pending(stack)
    assert list(due) == ["nodegroup:ng-a"]
    assert "scaled to 0 automatically" in str(fake_slack.messages_in("CCOST")[0]["text"])
    with stack.backend.uow() as uow:
        (vouch,) = [e for e in uow.audit.trail("cost:nodegroup:ng-a") if e.type is EventType.TIMER_SCHEDULED]
    assert vouch.data["ref"] == "nodegroup:ng-a"

    # Within one scan of firing: one last warning in the report's thread, once.
    stack.clock.advance(timedelta(minutes=55))
    out = reporter.scan_once()
    assert out.warned == ("nodegroup:ng-a",)
    assert reporter.scan_once().warned == ()
    ts = str(fake_slack.messages_in("CCOST")[0]["ts"])
    assert any("Last warning" in str(m["text"]) for m in fake_slack.replies("CCOST", ts))

    # A GPU pod appears: the scan cancels the timer.
    world.pods.append(GpuPod(namespace(stack, "team-a"), "train", "n1", 1, "job"))
    reporter.scan_once()
    assert pending(stack) == {}
    stack.backend.close()


def test_a_forged_auto_stop_timer_is_refused(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, _, _ = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    payload = {
        "request_id": "cost:nodegroup:ng-a",
        "workspace": "team-a",
        "target": "nodegroup:ng-a",
        "since": stack.clock.now().isoformat(),
        "seen_after": stack.clock.now().isoformat(),
    }
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.insert(timers).values(
                kind=autostop.AUTO_STOP, ref="nodegroup:ng-a", due_at=stack.clock.now(), payload=payload
            )
        )
    assert sweep(stack) == 1
    with stack.backend.db.engine.connect() as conn:
        fired = conn.execute(sa.select(audit_events.c.data).where(audit_events.c.type == "timer.fired")).all()
    assert [(d.data["ref"], d.data["refused"]) for d in fired] == [
        ("nodegroup:ng-a", "the audit log does not vouch for this timer")
    ]
    with stack.backend.uow() as uow:
        assert uow.requests.list(limit=None) == uow.requests.list(kind="workspace.create", limit=None)
    stack.backend.close()


def test_a_cancelled_auto_stop_re_inserted_with_forged_signals_is_refused(
    db_url: str, fake_slack: FakeSlack
) -> None:
    """The DB writer's replay: the notebook was idle, the stop was scheduled (and vouched for) and
    warned about; its owner went back to work and the scan cancelled the timer. Re-inserting the
    timer row with the vouched payload and writing back the signal rows it re-checks (no MAC) must
    not stop the busy notebook: the latest scheduling of that timer is followed by its cancellation."""
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    ns = namespace(stack, "team-a")
    target = f"notebook:{ns}/nb"
    world.pods.append(GpuPod(ns, "nb-0", "n1", 1, "notebook", "nb"))
    world.notebooks.append(Notebook(ns, "nb", False, 1, "jupyter"))
    world.activity[(ns, "nb")] = NotebookActivity("idle", stack.clock.now() - timedelta(hours=3))
    reporter.scan_once()
    stack.clock.advance(timedelta(minutes=55))
    assert reporter.scan_once().warned == (target,)
    with stack.backend.db.engine.connect() as conn:
        signals = [dict(r) for r in conn.execute(sa.select(gpu_signals_table)).mappings()]
    with stack.backend.uow() as uow:
        body = uow.timers.pending_payload(autostop.AUTO_STOP, target)
    assert body is not None

    world.activity[(ns, "nb")] = NotebookActivity("busy", stack.clock.now())
    reporter.scan_once()
    assert pending(stack) == {}
    with stack.backend.uow() as uow:
        assert any("cancelled" in e.data for e in uow.audit.trail(autostop.origin(target)))

    stack.clock.advance(timedelta(minutes=10))
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.insert(timers).values(
                kind=autostop.AUTO_STOP, ref=target, due_at=stack.clock.now(), payload=dict(body)
            )
        )
        conn.execute(sa.delete(gpu_signals_table))
        conn.execute(
            sa.insert(gpu_signals_table), [{**row, "last_seen": stack.clock.now()} for row in signals]
        )
    assert sweep(stack) == 1
    with stack.backend.uow() as uow:
        assert uow.requests.list(kind="notebook.stop", limit=None) == []
        trail = uow.audit.trail(autostop.origin(target))
    assert trail[-1].data.get("refused") == "the audit log does not vouch for this timer"
    stack.backend.close()


def _fire(
    stack: Stack, world: World, reporter: CostReporter, *, keep: Callable[[], None] | None = None
) -> None:
    reporter.scan_once()
    stack.clock.advance(timedelta(hours=2, minutes=5))
    reporter.scan_once()
    stack.clock.advance(timedelta(minutes=55))
    reporter.scan_once()  # the last warning
    if keep is not None:
        keep()
        reporter.scan_once()
    stack.clock.advance(timedelta(minutes=10))
    reporter.scan_once()
    sweep(stack)


def test_auto_stop_files_a_system_scale_down_naming_its_rule(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_gpu_workspace(stack, "team-a")
    _fire(stack, world, reporter)
    with stack.backend.uow() as uow:
        (request,) = uow.requests.list(kind="gpu.scale", limit=None)
    assert request.requester_id == "kfbot" and request.args == {"workspace": "team-a", "nodes": 0}
    stack.run()
    with stack.backend.uow() as uow:
        trail = uow.audit.trail(request.id)
    auto = [e for e in trail if e.type is EventType.AUTO_APPROVED]
    assert auto and auto[0].data["rule"] == "system:cost.auto_stop"
    assert stack.request(request.id).state.value == "succeeded"
    assert "aws.nodegroup.scaling" in stack.world.ensure_calls
    # Redelivered or rescheduled for the same idle stretch: nothing new is filed.
    assert sweep(stack) == 0
    stack.backend.close()


def test_auto_stop_files_notebook_stop_for_an_idle_notebook(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    ns = namespace(stack, "team-a")
    world.pods.append(GpuPod(ns, "nb-0", "n1", 1, "notebook", "nb"))
    world.notebooks.append(Notebook(ns, "nb", False, 1, "jupyter"))
    world.activity[(ns, "nb")] = NotebookActivity("idle", stack.clock.now() - timedelta(hours=3))
    reporter.scan_once()  # idle for 3h already: reported and scheduled at once
    assert list(pending(stack)) == [f"notebook:{ns}/nb"]
    stack.clock.advance(timedelta(minutes=55))
    assert reporter.scan_once().warned == (f"notebook:{ns}/nb",)
    stack.clock.advance(timedelta(minutes=10))
    assert sweep(stack) == 1
    with stack.backend.uow() as uow:
        (request,) = uow.requests.list(kind="notebook.stop", limit=None)
    assert request.args == {"workspace": "team-a", "notebook": "nb", "idle_for": "2h"}
    stack.run()
    assert stack.request(request.id).state.value == "succeeded"
    stack.backend.close()


def test_auto_stop_does_nothing_when_held_after_the_warning(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_gpu_workspace(stack, "team-a")

    def keep() -> None:
        with stack.backend.db.engine.begin() as conn:
            conn.execute(
                sa.insert(gpu_holds_table).values(
                    target="workspace:team-a",
                    until=stack.clock.now() + timedelta(days=1),
                    held_by="UALICE",
                    request_id=None,
                    created_at=stack.clock.now(),
                )
            )

    _fire(stack, world, reporter, keep=keep)
    assert pending(stack) == {}
    with stack.backend.uow() as uow:
        assert uow.requests.list(kind="gpu.scale", limit=None) == []
    stack.backend.close()


def test_the_due_timer_is_vouched_for_and_rechecks_the_database(db_url: str, fake_slack: FakeSlack) -> None:
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, _, reporter = setup(db_url, fake_slack, cost)
    make_gpu_workspace(stack, "team-a")
    reporter.scan_once()
    stack.clock.advance(timedelta(hours=2, minutes=5))
    reporter.scan_once()
    stack.clock.advance(timedelta(minutes=55))
    assert reporter.scan_once().warned == ("nodegroup:ng-a",)
    with stack.backend.uow() as uow:
        body = uow.timers.pending_payload(autostop.AUTO_STOP, "nodegroup:ng-a")
    assert body is not None

    seen = stack.backend.facts.idle_item("nodegroup:ng-a")
    assert seen is not None and seen.established and seen.warned and not seen.held
    result = autostop.TIMER.handle("nodegroup:ng-a", body, stack.backend.facts)
    assert result is not None and kinds.to_args(result.kind) == {"workspace": "team-a", "nodes": 0}  # type: ignore[union-attr]

    # Held after the warning: the re-check through the database says no.
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.insert(gpu_holds_table).values(
                target="nodegroup:ng-a",
                until=stack.clock.now() + timedelta(hours=4),
                held_by="UALICE",
                request_id=None,
                created_at=stack.clock.now(),
            )
        )
    assert autostop.TIMER.handle("nodegroup:ng-a", body, stack.backend.facts) is None
    with stack.backend.db.engine.begin() as conn:
        conn.execute(sa.delete(gpu_holds_table))

    # The real timer fires through the sweeper: the audit log vouches for it (no refusal).
    stack.clock.advance(timedelta(minutes=10))
    assert sweep(stack) == 1
    with stack.backend.db.engine.connect() as conn:
        refused = conn.execute(
            sa.select(audit_events.c.data).where(audit_events.c.type == "timer.fired")
        ).all()
    assert not [r for r in refused if r.data.get("refused")]
    with stack.backend.uow() as uow:
        assert len(uow.requests.list(kind="gpu.scale", limit=None)) == 1
    stack.backend.close()


# -- the scheduler's scan job -----------------------------------------------------------------------


def test_the_scan_job_runs_every_scan_interval_on_its_own_thread(db_url: str, fake_slack: FakeSlack) -> None:
    stack, _, reporter = setup(db_url, fake_slack)
    scheduler = start_scheduler(
        stack.backend, stack.core, 3600, cost=reporter, scan_seconds=COST.scan_interval.total_seconds()
    )
    try:
        job = scheduler.get_job(SCAN_JOB_ID)
        assert job is not None and job.trigger.interval == COST.scan_interval
        assert scheduler.get_job(JOB_ID) is not None
    finally:
        scheduler.shutdown(wait=False)
    without = start_scheduler(stack.backend, stack.core, 3600)
    try:
        assert without.get_job(SCAN_JOB_ID) is None
    finally:
        without.shutdown(wait=False)
    stack.backend.close()


def test_a_scan_that_cannot_read_the_cluster_is_logged_and_posts_nothing(
    db_url: str, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    stack, _, reporter = setup(db_url, fake_slack)

    def unreadable(window: timedelta) -> Inventory:
        raise errors.TemporaryError("EKS throttled the scan")

    stack.backend.gpu_inventory = unreadable  # type: ignore[method-assign]
    scan_job(reporter)
    assert "idle-GPU scan skipped" in caplog.text
    assert fake_slack.messages_in("CCOST") == []
    stack.backend.close()


def test_a_notebook_of_another_namespace_on_a_workspaces_nodes_stops_nothing_of_the_workspace(
    db_url: str, fake_slack: FakeSlack
) -> None:
    """The attack: Notebook ``evil/train`` (a namespace no workspace owns) sits idle on team-a's
    nodegroup while team-a's own ``train`` is busy. It is reported unattributed, without buttons
    or team-a's owner, and auto-stop files nothing; even a signal row that names team-a (written
    by an earlier version) cannot make the timer stop team-a's notebook of the same name."""
    cost = dataclasses.replace(COST, auto_stop_after=timedelta(hours=1))
    stack, world, reporter = setup(db_url, fake_slack, cost)
    make_workspace(stack, "team-a", ALICE)
    ns = namespace(stack, "team-a")
    world.nodes.append(Node("n2", "ng-a", "g5.xlarge", 1, stack.clock.now()))
    world.pods += [
        GpuPod(ns, "train-0", "n1", 1, "notebook", "train"),
        GpuPod("evil", "train-0", "n2", 1, "notebook", "train"),
    ]
    world.notebooks += [
        Notebook(ns, "train", False, 1, "jupyter"),
        Notebook("evil", "train", False, 1, "jupyter"),
    ]
    world.activity[(ns, "train")] = NotebookActivity("busy", stack.clock.now())
    world.activity[("evil", "train")] = NotebookActivity("idle", stack.clock.now() - timedelta(hours=3))
    for _ in range(10):  # past the grace period and its last warning
        reporter.scan_once()
        sweep(stack)
        stack.clock.advance(timedelta(minutes=10))
    with stack.backend.uow() as uow:
        assert uow.requests.list(kind="notebook.stop", limit=None) == []
    assert pending(stack) == {}
    (post,) = top_level(fake_slack, "CCOST")
    assert "Unattributed" in str(post["text"]) and "evil/train" in str(post["text"])
    assert "alice" not in str(post["text"]) and "UALICE" not in str(post["text"])
    assert not any(b["type"] == "actions" for b in post["blocks"])  # type: ignore[index]

    # Defence in depth: the timer refuses a notebook outside the workspace's namespace.
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.update(gpu_signals_table)
            .where(gpu_signals_table.c.key == "notebook:evil/train")
            .values(
                workspace="team-a",
                warned_at=stack.clock.now(),
                detail={"item": "notebook:evil/train", "established": True},
            )
        )
    seen = stack.backend.facts.idle_item("notebook:evil/train")
    assert seen is not None and seen.workspace == "team-a" and seen.established and seen.warned
    body = {
        "request_id": "cost:notebook:evil/train",
        "workspace": "team-a",
        "target": "notebook:evil/train",
        "since": seen.since.isoformat(),
        "seen_after": (seen.last_seen - timedelta(minutes=1)).isoformat(),
        "idle_for": "2h",
    }
    assert autostop.TIMER.handle("notebook:evil/train", body, stack.backend.facts) is None
    # The same body for team-a's own namespace would act (the refusal is the namespace, nothing else).
    with stack.backend.db.engine.begin() as conn:
        conn.execute(
            sa.update(gpu_signals_table)
            .where(gpu_signals_table.c.key == "notebook:evil/train")
            .values(detail={"item": f"notebook:{ns}/train", "established": True})
        )
    result = autostop.TIMER.handle(
        f"notebook:{ns}/train", {**body, "target": f"notebook:{ns}/train"}, stack.backend.facts
    )
    expected = {"workspace": "team-a", "notebook": "train", "idle_for": "2h"}
    assert result is not None and kinds.to_args(result.kind) == expected  # type: ignore[union-attr]
    stack.backend.close()
