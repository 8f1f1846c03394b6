"""The idle decision's rules (handlers/cost/idle.py), as properties over generated inventories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.cost import idle
from handlers.cost.idle import Hold, StoredSignal, classify
from handlers.cost.inventory import (
    GpuPod,
    GpuUtilisation,
    Inventory,
    Node,
    Nodegroup,
    Notebook,
    NotebookActivity,
)
from handlers.settings import CostSettings

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
COST = CostSettings(idle_after=timedelta(hours=2))
NS = {"ws-a": "team-a", "ws-b": "team-b"}


def group(
    name: str = "ng-a", ws: str | None = "team-a", status: str = "ACTIVE", itype: str = "g5.xlarge"
) -> Nodegroup:
    return Nodegroup(name, ws, itype, 1, status, 0, 4, 1)


def node(name: str, ng: str = "ng-a", gpus: int = 1, itype: str = "g5.xlarge") -> Node:
    return Node(name, ng, itype, gpus, T0 - timedelta(days=1))


def nb_pod(nb: str, node_name: str, ns: str = "ws-a") -> GpuPod:
    return GpuPod(ns, f"{nb}-0", node_name, 1, "notebook", nb)


def stored_from(obs: idle.Observation) -> list[StoredSignal]:
    return [StoredSignal(r.key, r.signal, r.first_seen, r.last_seen) for r in obs.upsert]


def run(
    inv: Inventory, stored: list[StoredSignal], now: datetime, holds: tuple[Hold, ...] = ()
) -> idle.Observation:
    return classify(inv, stored, holds, now, COST, namespaces=NS)


# -- generated worlds ---------------------------------------------------------------------------------

ACTIVITY = st.sampled_from(["busy", "idle", "unknown"])
UTIL = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))


@st.composite
def worlds(draw: st.DrawFn) -> Inventory:
    groups = [
        group("ng-a", "team-a", draw(st.sampled_from(["ACTIVE", "UPDATING", "DEGRADED"]))),
        group("ng-b", draw(st.sampled_from(["team-b", None])), draw(st.sampled_from(["ACTIVE", "CREATING"]))),
    ]
    nodes = [
        node(f"n{i}", draw(st.sampled_from(["ng-a", "ng-b"])), draw(st.integers(0, 1)))
        for i in range(draw(st.integers(0, 4)))
    ]
    pods: list[GpuPod] = []
    notebooks: list[Notebook] = []
    activity: dict[tuple[str, str], NotebookActivity] = {}
    by_pod: dict[tuple[str, str], float] = {}
    for i in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from([n.name for n in nodes] + [None])) if nodes else None
        ns = draw(st.sampled_from(["ws-a", "ws-b", "other"]))
        if draw(st.booleans()):
            name = f"nb{i}"
            pods.append(GpuPod(ns, f"{name}-0", where, 1, "notebook", name))
            notebooks.append(Notebook(ns, name, draw(st.booleans()), 1, "jupyter"))
            state = draw(ACTIVITY)
            last = T0 - timedelta(hours=draw(st.integers(0, 10))) if state != "unknown" else None
            activity[(ns, name)] = NotebookActivity(state, last)
        else:
            pods.append(
                GpuPod(ns, f"job{i}", where, 1, draw(st.sampled_from(["job", "pytorchjob", "other"])))
            )
        util = draw(UTIL)
        if util is not None:
            by_pod[(ns, pods[-1].name)] = util
    utilisation = draw(st.sampled_from([None, GpuUtilisation(by_pod), GpuUtilisation(by_pod, "unreachable")]))
    return Inventory(
        T0, "us-east-1", tuple(groups), tuple(nodes), tuple(pods), tuple(notebooks), activity, utilisation
    )


def later(inv: Inventory, hours: float) -> Inventory:
    return Inventory(
        inv.taken_at + timedelta(hours=hours),
        inv.region,
        inv.nodegroups,
        inv.nodes,
        inv.pods,
        inv.notebooks,
        inv.activity,
        inv.utilisation,
    )


@settings(max_examples=200, deadline=None)
@given(worlds(), st.lists(st.floats(min_value=0.1, max_value=5.0), min_size=1, max_size=5))
def test_first_seen_never_moves_while_the_same_world_is_observed(inv: Inventory, steps: list[float]) -> None:
    stored: list[StoredSignal] = []
    firsts: dict[str, datetime] = {}
    now = T0
    for step in steps:
        obs = run(inv, stored, now)
        for row in obs.upsert:
            assert firsts.setdefault(row.key, row.first_seen) == row.first_seen
            assert row.first_seen <= now and row.last_seen == now
        assert not obs.delete  # nothing changed in the world: nothing lapses
        stored = stored_from(obs)  # what a restart reads back from the database
        now += timedelta(hours=step)


@settings(max_examples=300, deadline=None)
@given(worlds(), st.floats(min_value=0, max_value=10))
def test_never_idle_what_the_rules_exclude(inv: Inventory, hours: float) -> None:
    stored = stored_from(run(inv, [], T0))
    now = T0 + timedelta(hours=hours)
    obs = run(inv, stored, now)
    util = inv.utilisation
    usable = util is not None and not util.note
    groups = {g.name: g for g in inv.nodegroups}
    nodes = {n.name: n for n in inv.nodes}
    for item in obs.items + obs.held:
        assert now - item.since >= COST.idle_after
        assert item.nodegroup is None or groups[item.nodegroup].status in ("ACTIVE", "DEGRADED")
        if item.kind == "notebook":
            nb = next(n for n in inv.notebooks if (n.namespace, n.name) == (item.namespace, item.name))
            assert not nb.stopped
            pod = next(
                p
                for p in inv.pods
                if p.workload == "notebook" and p.notebook == nb.name and p.namespace == nb.namespace
            )
            peak = util.by_pod.get((pod.namespace, pod.name)) if usable and util else None
            state = inv.activity[(nb.namespace, nb.name)].state
            # Unknown is never idle (unless the GPU itself is seen unused); busy util overrides.
            assert state != "busy"
            assert peak is None or peak < COST.idle_gpu_util
            assert state == "idle" or peak is not None
        if item.kind == "pod":
            assert usable and util is not None
            assert util.by_pod[(item.namespace or "", item.name or "")] < COST.idle_gpu_util
        if item.kind == "nodes":
            occupied = {p.node for p in inv.pods}
            assert all(nodes[s.rsplit("/", 1)[1]].name not in occupied for s in item.signals)


@settings(max_examples=200, deadline=None)
@given(
    worlds(), st.sampled_from(["nodegroup:ng-a", "nodegroup:ng-b", "workspace:team-a", "workspace:team-b"])
)
def test_a_held_item_is_never_reported(inv: Inventory, target: str) -> None:
    stored = stored_from(run(inv, [], T0))
    now = T0 + timedelta(hours=3)
    hold = Hold(target, now + timedelta(hours=1))
    obs = run(inv, stored, now, (hold,))
    for item in obs.items:
        assert not idle.is_held(item, frozenset({target}))
    unheld = run(inv, stored, now)
    assert {i.key for i in obs.items} | {i.key for i in obs.held} == {i.key for i in unheld.items}
    expired = run(inv, stored, now, (Hold(target, now),))  # a hold that ran out holds nothing
    assert [i.key for i in expired.items] == [i.key for i in unheld.items]


def test_an_empty_node_is_reported_after_idle_after_with_price_and_grouping() -> None:
    inv = Inventory(T0, "us-east-1", (group(),), (node("n1"), node("n2")))
    first = run(inv, [], T0)
    assert first.items == () and {r.key for r in first.upsert} == {"node:ng-a/n1", "node:ng-a/n2"}
    obs = run(later(inv, 2.5), stored_from(first), T0 + timedelta(hours=2.5))
    (item,) = obs.items
    assert item.key == "nodegroup:ng-a" and item.workspace == "team-a" and item.nodes == 2
    assert item.what == "nodegroup `ng-a`: 2 x g5.xlarge" and item.since == T0
    assert item.hourly_usd == 2 * 1.006
    assert abs((item.spent_usd or 0) - 2 * 1.006 * 2.5) < 1e-9
    assert item.established


def test_price_overrides_win_and_unknown_types_say_so() -> None:
    inv = Inventory(T0, "us-east-1", (group(itype="g9.weird"),), (node("n1", itype="g9.weird"),))
    stored = stored_from(run(inv, [], T0))
    (item,) = run(inv, stored, T0 + timedelta(hours=3)).items
    assert item.hourly_usd is None and item.spent_usd is None
    priced = classify(inv, stored, (), T0 + timedelta(hours=3), COST, price_overrides={"g9.weird": 2.0})
    assert priced.items[0].hourly_usd == 2.0


def test_a_node_with_a_gpu_pod_is_busy_and_a_partly_busy_group_is_not_established() -> None:
    pods = (GpuPod("ws-a", "train", "n1", 1, "job"),)
    inv = Inventory(T0, "us-east-1", (group(),), (node("n1"), node("n2")), pods)
    stored = stored_from(run(inv, [], T0))
    (item,) = run(inv, stored, T0 + timedelta(hours=3)).items
    assert item.signals == ("node:ng-a/n2",) and not item.established  # scaling to 0 would stop n1


def test_a_nodegroup_being_updated_is_never_reported_and_its_clock_restarts() -> None:
    inv = Inventory(T0, "us-east-1", (group(),), (node("n1"),))
    stored = stored_from(run(inv, [], T0))
    updating = Inventory(T0, "us-east-1", (group(status="UPDATING"),), (node("n1"),))
    obs = run(updating, stored, T0 + timedelta(hours=3))
    assert obs.items == () and obs.delete == ("node:ng-a/n1",)


def test_notebook_idle_since_its_last_activity_and_new_activity_restarts_the_clock() -> None:
    nb = Notebook("ws-a", "nb", False, 1, "jupyter")
    base = dict(nodegroups=(group(),), nodes=(node("n1"),), pods=(nb_pod("nb", "n1"),), notebooks=(nb,))
    act = {("ws-a", "nb"): NotebookActivity("idle", T0 - timedelta(hours=5))}
    inv = Inventory(T0, "us-east-1", activity=act, **base)  # type: ignore[arg-type]
    (item,) = run(inv, [], T0).items
    assert item.kind == "notebook" and item.since == T0 - timedelta(hours=5) and item.established
    assert item.key == "notebook:ws-a/nb" and item.workspace == "team-a"
    assert item.hourly_usd == 1.006
    # Someone ran a cell an hour ago: the old signal does not hold, the clock starts again.
    act2 = {("ws-a", "nb"): NotebookActivity("idle", T0 + timedelta(hours=1))}
    inv2 = Inventory(T0, "us-east-1", activity=act2, **base)  # type: ignore[arg-type]
    obs = run(inv2, stored_from(run(inv, [], T0)), T0 + timedelta(hours=2))
    assert obs.items == ()
    assert next(r for r in obs.upsert if r.key == "notebook:ws-a/nb").first_seen == T0 + timedelta(hours=1)


def test_unknown_activity_is_never_idle_and_a_busy_gpu_overrides_idle_kernels() -> None:
    nb = Notebook("ws-a", "nb", False, 1, "jupyter")
    base = dict(nodegroups=(group(),), nodes=(node("n1"),), pods=(nb_pod("nb", "n1"),), notebooks=(nb,))
    unknown = Inventory(
        T0, "us-east-1", activity={("ws-a", "nb"): NotebookActivity("unknown", note="404")}, **base
    )  # type: ignore[arg-type]
    assert run(unknown, [], T0 + timedelta(days=3)).items == ()
    idle_kernels = {("ws-a", "nb"): NotebookActivity("idle", T0 - timedelta(days=1))}
    busy_gpu = Inventory(
        T0, "us-east-1", activity=idle_kernels, utilisation=GpuUtilisation({("ws-a", "nb-0"): 0.9}), **base
    )  # type: ignore[arg-type]
    obs = run(busy_gpu, [], T0)
    assert obs.items == () and "notebook:ws-a/nb" in obs.busy
    # Prometheus configured but unreachable: reported from the kernels, but not established.
    degraded = Inventory(
        T0, "us-east-1", activity=idle_kernels, utilisation=GpuUtilisation({}, "unreachable"), **base
    )  # type: ignore[arg-type]
    (item,) = run(degraded, [], T0).items
    assert not item.established and any("unreachable" in n for n in run(degraded, [], T0).notes)


def test_a_stopped_notebook_is_never_reported() -> None:
    nb = Notebook("ws-a", "nb", True, 1, "jupyter")
    inv = Inventory(
        T0,
        "us-east-1",
        (group(),),
        (node("n1"),),
        (nb_pod("nb", "n1"),),
        (nb,),
        {("ws-a", "nb"): NotebookActivity("idle", T0 - timedelta(days=2))},
    )
    assert run(inv, [], T0).items == ()


def test_a_job_is_reported_only_through_unused_gpus() -> None:
    pods = (GpuPod("ws-b", "train", "n1", 1, "pytorchjob"),)
    inv = Inventory(T0, "us-east-1", (group(),), (node("n1"),), pods)
    assert run(inv, [], T0 + timedelta(days=1)).items == ()
    unused = Inventory(
        T0,
        "us-east-1",
        (group(),),
        (node("n1"),),
        pods,
        utilisation=GpuUtilisation({("ws-b", "train"): 0.01}),
    )
    stored = stored_from(run(unused, [], T0))
    (item,) = run(unused, stored, T0 + timedelta(hours=2)).items
    assert item.kind == "pod" and item.workspace == "team-b" and item.target is None and not item.stoppable


def test_a_start_in_another_zone_is_stored_in_utc_as_the_database_returns_it() -> None:
    berlin = timezone(timedelta(hours=1))
    nb = Notebook("ws-a", "nb", False, 1, "jupyter")
    last = (T0 - timedelta(hours=5)).astimezone(berlin)
    inv = Inventory(
        T0,
        "us-east-1",
        (group(),),
        (node("n1"),),
        (nb_pod("nb", "n1"),),
        (nb,),
        {("ws-a", "nb"): NotebookActivity("idle", last)},
    )
    (row,) = [r for r in run(inv, [], T0).upsert if r.key == "notebook:ws-a/nb"]
    assert row.first_seen == last and row.first_seen.tzinfo is UTC
    assert run(inv, [], T0).items[0].since.isoformat() == (T0 - timedelta(hours=5)).isoformat()


def test_a_pending_gpu_pod_of_the_workspace_keeps_its_nodegroup_from_being_established() -> None:
    inv = Inventory(T0, "us-east-1", (group(),), (node("n1"),), (GpuPod("ws-a", "waiting", None, 1, "job"),))
    stored = stored_from(run(inv, [], T0))
    (item,) = run(inv, stored, T0 + timedelta(hours=3)).items
    assert not item.established
    elsewhere = Inventory(
        T0, "us-east-1", (group(),), (node("n1"),), (GpuPod("ws-b", "waiting", None, 1, "job"),)
    )
    (item,) = run(elsewhere, stored, T0 + timedelta(hours=3)).items
    assert item.established  # team-b's pod cannot use team-a's tainted nodes


def test_a_notebook_belongs_to_its_namespace_never_to_the_nodegroup_it_runs_on() -> None:
    """A Notebook in a namespace no workspace owns, scheduled onto team-a's nodegroup (tolerations
    written by hand), is unattributed: no buttons, no auto-stop, no owner, whatever node it uses."""
    inv = Inventory(
        T0,
        "us-east-1",
        (group(),),
        (node("n1"), node("n2")),
        (nb_pod("train", "n1"), nb_pod("train", "n2", ns="evil"), GpuPod("evil", "job-0", "n2", 1, "job")),
        (Notebook("ws-a", "train", False, 1, "jupyter"), Notebook("evil", "train", False, 1, "jupyter")),
        {
            ("ws-a", "train"): NotebookActivity("busy", T0),
            ("evil", "train"): NotebookActivity("idle", T0 - timedelta(days=1)),
        },
        utilisation=GpuUtilisation({("evil", "job-0"): 0.0}),
    )
    stored = stored_from(run(inv, [], T0))
    obs = run(inv, stored, T0 + timedelta(hours=3))
    by_key = {i.key: i for i in obs.items}
    assert set(by_key) == {"notebook:evil/train", "pod:evil/job-0"}
    for item in by_key.values():
        assert item.workspace is None and not item.stoppable
    assert all(r.workspace is None for r in obs.upsert if r.key.startswith(("notebook:evil", "pod:evil")))
