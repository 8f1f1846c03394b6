"""``/kf gpu status``, the report's content and rendering, the auto-stop timer's re-check, and the
cost store (gpu_signals, cost_reports, gpu_usage) on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import render
from bot.controls import control
from bot.cost import mentions, report_blocks
from handlers import errors, kinds, naming, parse, services
from handlers.cost import autostop, idle, report
from handlers.cost.idle import IdleItem, SignalRow
from handlers.cost.inventory import (
    GpuPod,
    GpuUtilisation,
    Inventory,
    Node,
    Nodegroup,
    Notebook,
    NotebookActivity,
)
from handlers.kinds.base import SystemRequest
from handlers.model import Actor
from handlers.ports import IdleFacts, WorkspaceFacts
from handlers.settings import CostSettings
from provisioning.store import Database
from tests.fakes.facts import StaticFacts
from tests.harness import ADMIN, ALICE, BOB, CORE, Stack, build_stack, make_workspace

pytest_plugins = ["tests.fakes.db_fixtures"]
T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
CAROL = Actor("UCAROL", "carol@example.com")


# -- /kf gpu status ---------------------------------------------------------------------------------


def parse_text(text: str) -> parse.Command:
    return parse.parse_command(text, requester_email=ALICE.email, resolve_user=lambda u: u, settings=CORE)


def test_gpu_status_parses_and_refuses_bad_input() -> None:
    assert parse_text("gpu status") == parse.GpuStatus()
    assert parse_text("GPU Status team-a") == parse.GpuStatus("team-a")
    for bad in ("gpu status a b", "gpu status <!channel>", "gpu status Team_A"):
        with pytest.raises(errors.InvalidInput):
            parse_text(bad)


@pytest.fixture
def stack(db_url: str) -> Iterator[Stack]:
    s = build_stack(db_url, core=dataclasses.replace(CORE, cost=CostSettings(idle_after=timedelta(hours=2))))
    make_workspace(s, "team-a", ALICE)
    make_workspace(s, "team-b", BOB)
    ns_a = next(w.namespace for w in s.backend.workspaces() if w.name == "team-a")
    groups = (
        Nodegroup("ng-a", "team-a", "g5.xlarge", 1, "ACTIVE", 1, 2, 2),
        Nodegroup("ng-b", "team-b", "g5.xlarge", 1, "ACTIVE", 1, 2, 1),
        Nodegroup("by-hand", None, "g4dn.xlarge", 1, "ACTIVE", 1, 1, 1),
    )
    nodes = (
        Node("a1", "ng-a", "g5.xlarge", 1, T0),
        Node("a2", "ng-a", "g5.xlarge", 1, T0),
        Node("b1", "ng-b", "g5.xlarge", 1, T0),
        Node("h1", "by-hand", "g4dn.xlarge", 1, T0),
    )
    pods = (GpuPod(ns_a, "train", "a1", 1, "job"),)

    def inventory(window: timedelta) -> Inventory:
        return Inventory(s.clock.now(), "us-east-1", groups, nodes, pods)

    s.backend.gpu_inventory = inventory  # type: ignore[method-assign]
    s.backend.observe_idle()
    s.clock.advance(timedelta(hours=3))
    s.backend.observe_idle()
    yield s
    s.backend.close()


def status(stack: Stack, actor: Actor, text: str = "gpu status") -> str:
    command = parse_text(text)
    assert isinstance(command, parse.GpuStatus)
    return control(stack.core, stack.backend, actor, command, render.SHELL)


def test_admins_see_everything_owners_their_own_strangers_nothing(stack: Stack) -> None:
    everything = status(stack, ADMIN)
    assert all(ng in everything for ng in ("ng-a", "ng-b", "by-hand"))
    assert "2 GPUs, 1 in use" in everything and "on-demand list price" in everything
    assert "This month" in everything and "node-hours" in everything
    alice = status(stack, ALICE)
    assert "ng-a" in alice and "ng-b" not in alice and "by-hand" not in alice and "team-b" not in alice
    assert "No GPU nodegroups" in status(stack, CAROL) and "ng-" not in status(stack, CAROL)
    assert "ng-b" in status(stack, ADMIN, "gpu status team-b")


def test_naming_a_workspace_of_someone_else_reveals_nothing(stack: Stack) -> None:
    for name in ("team-b", "no-such"):
        with pytest.raises(errors.NotFound) as caught:
            status(stack, ALICE, f"gpu status {name}")
        assert caught.value.user_message == f"There is no workspace `{name}` of yours."


def test_a_contributor_sees_the_workspace(stack: Stack) -> None:
    shared = services.submit(stack.core, BOB, kinds.Share("team-b", CAROL.email), idempotency_key=None)
    assert shared.auto_reason is not None
    stack.run()
    text = status(stack, CAROL)
    assert "ng-b" in text and "ng-a" not in text


def test_status_persists_nothing(stack: Stack) -> None:
    with stack.backend.db.uow() as uow:
        before = uow.cost.signal_rows()
    stack.clock.advance(timedelta(hours=1))
    status(stack, ADMIN)
    with stack.backend.db.uow() as uow:
        assert uow.cost.signal_rows() == before


def test_concurrent_status_calls_share_one_scan_and_never_wait_behind_it(stack: Stack) -> None:
    """Anyone in Slack can type ``/kf gpu status``; each must not be a full scan of EKS, the
    apiserver, Prometheus and every notebook server on a shared work thread. With a scan in flight
    (held here until released), eight more calls are answered at once from the last scan, "as of"
    its time, and none starts a scan of its own; then a call within the scan interval reuses it."""
    scans: list[datetime] = []
    started, release = threading.Event(), threading.Event()
    groups = (Nodegroup("ng-a", "team-a", "g5.xlarge", 1, "ACTIVE", 1, 2, 2),)

    def slow_inventory(window: timedelta) -> Inventory:
        scans.append(stack.clock.now())
        started.set()
        release.wait(30)
        return Inventory(stack.clock.now(), "us-east-1", groups, (Node("a1", "ng-a", "g5.xlarge", 1, T0),))

    last_scan = stack.clock.now()
    stack.backend.gpu_inventory = slow_inventory  # type: ignore[method-assign]
    stack.clock.advance(CostSettings().scan_interval + timedelta(minutes=1))
    first = threading.Thread(target=status, args=(stack, ADMIN), daemon=True)
    first.start()
    assert started.wait(30)
    answers: list[str] = []
    others = [
        threading.Thread(target=lambda: answers.append(status(stack, ADMIN)), daemon=True) for _ in range(8)
    ]
    for t in others:
        t.start()
    for t in others:
        t.join(30)
    in_flight = len(scans)
    release.set()
    first.join(30)

    assert in_flight == 1, f"{in_flight} scans at once"
    assert len(answers) == 8, "status calls waited behind the scan in flight"
    assert all(render.SHELL.when(last_scan) in a and "as of" in a for a in answers)
    status(stack, ADMIN)
    assert len(scans) == 1, "a status call within the scan interval scanned again"


# -- the report's content and its Slack rendering ----------------------------------------------------


def item(key: str = "notebook:ws-a/nb", workspace: str | None = "team-a", **kw: object) -> IdleItem:
    base: dict[str, object] = dict(
        key=key,
        kind="notebook",
        workspace=workspace,
        what=f"notebook {key.split(':', 1)[1]}",
        since=T0,
        gpus=1,
        hourly_usd=1.006,
        spent_usd=3.018,
        established=True,
        signals=(key,),
        namespace="ws-a",
        name="nb",
        reason="kernels and terminals idle",
    )
    base.update(kw)
    return IdleItem(**base)  # type: ignore[arg-type]


def test_report_groups_by_workspace_with_owner_and_buttons() -> None:
    rep = report.build(
        [item(), item("nodegroup:ng-x", None, kind="nodes", what="nodegroup ng-x: 1 x g5.xlarge")],
        {"team-a": "alice@example.com"},
        ["GPU utilisation unavailable"],
        T0 + timedelta(hours=3),
    )
    assert [s.workspace for s in rep.sections] == ["team-a", None]
    assert naming.person("alice@example.com") in rep.sections[0].heading
    (nb,) = rep.sections[0].entries
    assert [b.action_id for b in nb.buttons] == [report.STOP_NOTEBOOK, report.KEEP, report.SNOOZE]
    assert json.loads(nb.buttons[0].value) == {"workspace": "team-a", "target": "notebook:ws-a/nb"}
    assert rep.sections[1].entries[0].buttons == ()  # unattributed: nothing the bot may file
    assert "Note: GPU utilisation unavailable" in rep.text() and "on-demand list price" in rep.text()
    assert "$1.01/hour now, $3.02 spent idle so far" in nb.text


def test_the_digest_ignores_what_grows_by_itself_but_not_what_changed() -> None:
    first = report.build([item()], {}, [], T0)
    later = report.build([item(spent_usd=9.0)], {}, [], T0 + timedelta(hours=1))
    assert first.digest() == later.digest() and first.text() != later.text()
    for changed in (
        report.build([item(hourly_usd=2.0)], {}, [], T0),
        report.build([item(established=False)], {}, [], T0),
        report.build([item()], {}, ["Prometheus unreachable"], T0),
        report.build([item()], {}, [], T0, auto_stops={"notebook:ws-a/nb": T0}),
        report.build([item(), item("notebook:ws-a/two")], {}, [], T0),
    ):
        assert changed.digest() != first.digest()


def test_changes_between_reports() -> None:
    a = report.build([item()], {}, [], T0).items
    b = report.build(
        [item("nodegroup:ng-a", kind="nodes", what="nodegroup ng-a: 2 x g5.xlarge")], {}, [], T0
    ).items
    assert report.changes(a, a) is None
    assert report.changes(a, b) == (
        "Newly idle: nodegroup ng-a: 2 x g5.xlarge. No longer reported: notebook ws-a/nb."
    )


@given(st.text(min_size=1, max_size=60))
def test_hostile_names_from_the_cluster_render_inert_in_slack(name: str) -> None:
    hostile = item(what=f"notebook ws-a/{name}")
    text, blks = report_blocks(
        report.build([hostile], {"team-a": "alice@example.com"}, [name], T0), lambda e: None
    )
    rendered = text + json.dumps([b.to_dict() for b in blks], ensure_ascii=False)
    # No mention, broadcast or link can be forged: every '<' a name carried is escaped.
    assert "<" not in rendered


def outside_code_spans(text: str) -> str:
    return re.sub(r"`[^`]*`", "", text)


def test_names_from_the_cluster_are_code_spans_so_slack_links_none_of_them() -> None:
    """A pod named like a domain (``evil.com-0``, valid in Kubernetes) in the report, its change
    note, its last warning and ``/kf gpu status``: always inside a code span, never bare text that
    Slack would turn into a link."""
    groups = (Nodegroup("ng-a", "team-a", "g5.xlarge", 1, "ACTIVE", 1, 2, 2),)
    nodes = (Node("n1", "ng-a", "g5.xlarge", 1, T0), Node("n2", "ng-a", "g5.xlarge", 1, T0))
    pods = (GpuPod("ws-a", "evil.com-0", "n1", 1, "other"), GpuPod("ws-a", "nb-0", "n2", 1, "notebook", "nb"))
    inv = Inventory(
        T0,
        "us-east-1",
        groups,
        nodes,
        pods,
        (Notebook("ws-a", "nb", False, 1, "jupyter"),),
        {("ws-a", "nb"): NotebookActivity("idle", T0 - timedelta(days=1))},
        utilisation=GpuUtilisation({("ws-a", "evil.com-0"): 0.0, ("ws-a", "nb-0"): 0.0}),
    )
    cost = CostSettings(idle_after=timedelta(hours=2))
    first = idle.classify(inv, [], [], T0, cost, namespaces={"ws-a": "team-a"})
    stored = [idle.StoredSignal(r.key, r.signal, r.first_seen, r.last_seen) for r in first.upsert]
    later = dataclasses.replace(inv, taken_at=T0 + timedelta(hours=3))
    items = idle.classify(
        later, stored, [], T0 + timedelta(hours=3), cost, namespaces={"ws-a": "team-a"}
    ).items
    assert {i.key for i in items} == {"pod:ws-a/evil.com-0", "notebook:ws-a/nb"}
    rep = report.build(items, {"team-a": "alice@example.com"}, [], T0 + timedelta(hours=3))
    text, blks = report_blocks(rep, lambda e: None)
    slack_texts = [
        text,
        json.dumps([b.to_dict() for b in blks], ensure_ascii=False),
        render.SLACK.message(report.changes({}, rep.items) or ""),
        *(render.SLACK.message(report.warning(i, T0)) for i in items),
        *(render.SLACK.message(report.entry_text(i, T0)) for i in items),
    ]
    for rendered in slack_texts:
        assert "evil.com" not in outside_code_spans(rendered), rendered
    assert "`ws-a/evil.com-0`" in text and "`ws-a/nb`" in text


def test_owner_mention_only_for_a_slack_id() -> None:
    text = "Workspace x (owner " + naming.person("alice@example.com") + ")"
    assert render.SLACK.message(mentions(text, lambda e: "UALICE")) == "Workspace x (owner <@UALICE>)"
    assert (
        render.SLACK.message(mentions(text, lambda e: "U1><!channel>"))
        == "Workspace x (owner alice@example.com)"
    )
    assert render.SLACK.message(mentions(text, lambda e: None)) == "Workspace x (owner alice@example.com)"


# -- the auto-stop timer's re-check (pure, against the Facts port) ---------------------------------


def facts_for(**kw: object) -> StaticFacts:
    seen: dict[str, object] = dict(
        target="notebook:ws-a/nb",
        workspace="team-a",
        since=T0,
        last_seen=T0 + timedelta(hours=4),
        established=True,
        held=False,
        warned=True,
    )
    seen.update(kw)
    return StaticFacts(
        workspaces={"team-a": WorkspaceFacts("team-a", "ws-a", "alice@example.com")},
        idle={"notebook:ws-a/nb": IdleFacts(**seen)},  # type: ignore[arg-type]
    )


PAYLOAD = {
    "request_id": "cost:notebook:ws-a/nb",
    "workspace": "team-a",
    "target": "notebook:ws-a/nb",
    "since": T0.isoformat(),
    "seen_after": (T0 + timedelta(hours=3, minutes=40)).isoformat(),
    "idle_for": "2h",
}


@pytest.mark.parametrize(
    "change",
    [
        {"held": True},
        {"established": False},
        {"warned": False},
        {"since": T0 + timedelta(minutes=5)},  # busy in between: a new idle stretch
        {"last_seen": T0 + timedelta(hours=3)},  # the scans stopped seeing it
        {"workspace": "team-b"},
    ],
)
def test_the_timer_does_nothing_unless_still_idle_established_unheld_and_warned(
    change: dict[str, object],
) -> None:
    assert autostop.TIMER.handle("notebook:ws-a/nb", PAYLOAD, facts_for(**change)) is None


def test_the_timer_does_nothing_for_a_signal_that_lapsed_or_a_bad_payload() -> None:
    assert autostop.TIMER.handle("notebook:ws-a/nb", PAYLOAD, StaticFacts()) is None
    assert autostop.TIMER.handle("notebook:ws-a/nb", {**PAYLOAD, "since": 3}, facts_for()) is None
    # Without the idle period its guard re-checks, a notebook is never stopped automatically.
    no_guard = {k: v for k, v in PAYLOAD.items() if k != "idle_for"}
    assert autostop.TIMER.handle("notebook:ws-a/nb", no_guard, facts_for()) is None


def test_the_timer_never_stops_a_notebook_outside_the_workspaces_namespace() -> None:
    """The timer's ref names the notebook's namespace: only in the workspace's own namespace is the
    notebook the workspace's (``notebook.stop`` names it by workspace and name alone)."""
    elsewhere = dataclasses.replace(
        facts_for(), workspaces={"team-a": WorkspaceFacts("team-a", "ws-other", "alice@example.com")}
    )
    assert autostop.TIMER.handle("notebook:ws-a/nb", PAYLOAD, elsewhere) is None
    gone = dataclasses.replace(facts_for(), workspaces={})
    assert autostop.TIMER.handle("notebook:ws-a/nb", PAYLOAD, gone) is None


def test_the_timer_files_notebook_stop() -> None:
    result = autostop.TIMER.handle("notebook:ws-a/nb", PAYLOAD, facts_for())
    assert isinstance(result, SystemRequest)
    # idle_for: the stop's guard step reads the notebook again when it applies.
    assert kinds.to_args(result.kind) == {"workspace": "team-a", "notebook": "nb", "idle_for": "2h"}
    assert result.key == f"cost.auto_stop:notebook:ws-a/nb:{T0.isoformat()}"


def test_auto_stop_plan() -> None:
    cost = CostSettings(auto_stop_after=timedelta(hours=1), scan_interval=timedelta(minutes=10))
    now = T0 + timedelta(hours=3)
    shaky = item("notebook:ws-a/other", established=False)
    pod = item("pod:ws-a/job", kind="pod")
    plan = autostop.plan([item(), shaky, pod], {"notebook:gone/x": now}, frozenset(), now, cost)
    assert [(i.key, d) for i, d in plan.schedule] == [("notebook:ws-a/nb", now + timedelta(hours=1))]
    assert plan.cancel == ("notebook:gone/x",) and plan.warn == ()
    soon = autostop.plan([item()], {"notebook:ws-a/nb": now + timedelta(minutes=5)}, frozenset(), now, cost)
    assert [i.key for i, _ in soon.warn] == ["notebook:ws-a/nb"] and soon.schedule == ()
    warned = autostop.plan([item()], {"notebook:ws-a/nb": now}, frozenset({"notebook:ws-a/nb"}), now, cost)
    assert warned.warn == ()
    off = autostop.plan([item()], {"notebook:ws-a/nb": now}, frozenset(), now, CostSettings())
    assert off.schedule == () and off.cancel == ("notebook:ws-a/nb",)


# -- the store ------------------------------------------------------------------------------------------


def test_signals_keep_reported_and_warned_across_upserts(database: Database) -> None:
    row = SignalRow("node:ng/n1", "node", "team-a", "ng", "empty-node", T0, T0, {"item": "nodegroup:ng"})
    with database.uow() as uow:
        uow.cost.apply([row], [])
        uow.cost.mark(["node:ng/n1"], reported=T0, warned=T0)
        uow.commit()
    later = dataclasses.replace(row, last_seen=T0 + timedelta(hours=1))
    with database.uow() as uow:
        uow.cost.apply([later], [])
        uow.cost.mark(["node:ng/n1"], reported=T0 + timedelta(hours=1))  # only the first report counts
        uow.commit()
    with database.uow() as uow:
        (stored,) = uow.cost.signals()
        assert (stored.first_seen, stored.last_seen, stored.reported_at, stored.warned_at) == (
            T0,
            T0 + timedelta(hours=1),
            T0,
            T0,
        )
        uow.cost.apply([], ["node:ng/n1"])
        uow.cost.put_report("C1", "1.0001", "d", {"k": {"what": "x"}}, T0)
        uow.cost.put_report("C1", "1.0001", "e", {}, T0)
        uow.commit()
    with database.uow() as uow:
        assert uow.cost.signals() == []
        report_row = uow.cost.report("C1")
        assert report_row is not None and (report_row.digest, report_row.items) == ("e", {})
