"""Replay a simulated week of GPU workspaces through the idle-GPU decision code.

A seeded workload model (``World``) runs minute by minute: GPU nodegroups with Cluster Autoscaler
(empty nodes above the minimum go after 10 min, a pending GPU pod brings a node up in 5 min),
Jupyter notebooks whose owners work in blocks during working hours and leave them open some
nights and weekends, notebooks whose owners start terminal training runs before leaving,
non-Jupyter (VS Code) notebooks whose activity the bot cannot read, PyTorchJob pods running for
hours, and nodegroups whose minimum keeps nodes up. The same demand is replayed in three
scenarios:

* **no bot**: nothing stops anything;
* **reports only**: every ``scan_interval`` the bot decides; owners click *Stop notebook* / *Scale
  to 0* on ``--click-share`` of the items the report newly lists, after a delay (within working
  hours, else the next morning), while the item is still listed;
* **auto-stop**: ``KFBOT_AUTO_STOP_AFTER`` set, nobody clicks.

The bot side is the product's own code, called as ``provisioning.Backend.observe_idle`` and
``bot.cost.CostReporter.scan`` call it: ``handlers.cost.idle.classify`` with the signals stored by
the previous scans (an in-memory mirror of ``provisioning.store.cost``: ``reported_at`` and
``warned_at`` kept on update), ``handlers.cost.autostop.plan`` (timers scheduled, cancelled,
last warnings), the ``cost.auto_stop`` timer handler (``autostop.TIMER``) re-checking through
``Facts.idle_item`` (mirroring ``provisioning.facts``) when due, the button reader
``handlers.cost.buttons.request_for`` for clicks, and the request kinds' own plans
(``notebook.stop``, ``gpu.scale``) whose steps are applied to the simulated cluster
(``kubeflow.gpu_pods.absent`` refuses when a GPU pod runs on the nodegroup or one of the
workspace waits). A due timer fires before the scan of the same minute (the worst order).

Idle GPU time is the ground truth of the world, not the bot's view: every minute, each GPU of a
node that is up and not used by a busy workload (an active notebook user, a running terminal
run, a training job) is idle, priced at its share of the node's on-demand list price. A stop of
anything busy at that moment is a failure.

Usage: ``python -m bench.week [--seed 7] [--days 7] [--workspaces 15] [--click-share 0.5]
[--auto-stop-after 60]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from handlers import prices
from handlers.actions import ActionName
from handlers.cost import autostop, buttons
from handlers.cost.idle import Hold, IdleItem, StoredSignal, classify
from handlers.cost.inventory import (
    GpuPod,
    GpuUtilisation,
    Inventory,
    Node,
    Nodegroup,
    Notebook,
    NotebookActivity,
    Workload,
)
from handlers.kinds import GpuScale, NotebookStop, RequestKind
from handlers.kinds.base import PlanContext, SystemRequest
from handlers.kinds.workspace_create import GPU_TAINT
from handlers.plan import JSON
from handlers.ports import DataHeld, IdleFacts, WorkspaceFacts
from handlers.settings import CoreSettings, CostSettings

REGION = "us-east-1"
CLUSTER = "kf"
START = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday, 00:00 UTC
INSTANCE_TYPES = ("g4dn.xlarge", "g5.xlarge", "g5.2xlarge", "g4dn.12xlarge")
INSTANCE_WEIGHTS = (4, 4, 2, 1)
BOOT_MINUTES = 5
CA_UNNEEDED_MINUTES = 10
"""Cluster Autoscaler's default ``scale-down-unneeded-time``."""
GOAL_REMOVED = 0.80
IDLE_AFTER_MINUTES = int(CostSettings().idle_after.total_seconds() // 60)

Kind = str  # "jupyter" | "terminal" | "vscode"


def minute_at(m: int) -> datetime:
    return START + timedelta(minutes=m)


def working_hours(m: int) -> bool:
    at = minute_at(m)
    return at.weekday() < 5 and 9 <= at.hour < 18


# -- the workload model ----------------------------------------------------------------------------


@dataclass
class NotebookSpec:
    namespace: str
    name: str
    nodegroup: str
    kind: Kind
    busy: bytearray
    """1 for each minute its owner works in it (kernels or terminals active, GPU in use)."""
    opens: frozenset[int]
    """Minutes the owner (re)starts it if stopped: the start of each working block."""
    closes: frozenset[int]
    """Minutes the owner stops it on leaving (the other evenings it stays open)."""


@dataclass
class JobSpec:
    namespace: str
    name: str
    nodegroup: str
    gpus: int
    submit: int
    minutes: int


@dataclass
class GroupSpec:
    name: str
    workspace: str
    instance_type: str
    gpus: int
    min_size: int
    max_size: int


@dataclass
class Demand:
    """What people do, independent of the bot: the same in every scenario."""

    minutes: int
    workspaces: dict[str, str]
    """Workspace -> namespace."""
    groups: list[GroupSpec]
    notebooks: list[NotebookSpec]
    jobs: list[JobSpec]


def _blocks(rng: random.Random, arrive: int, leave: int) -> list[tuple[int, int]]:
    """Working blocks between arrival and departure, with pauses (meetings, lunch)."""
    out, t = [], arrive
    while t < leave:
        end = min(leave, t + rng.randint(30, 150))
        out.append((t, end))
        t = end + rng.randint(10, 100)
    return out


def demand(seed: int, days: int, workspaces: int) -> Demand:
    rng = random.Random(seed)
    total = days * 1440
    spaces: dict[str, str] = {}
    groups: list[GroupSpec] = []
    notebooks: list[NotebookSpec] = []
    jobs: list[JobSpec] = []
    for w in range(workspaces):
        ws = f"team-{w:02d}"
        spaces[ws] = ws
        itype = rng.choices(INSTANCE_TYPES, INSTANCE_WEIGHTS)[0]
        gpus = prices.gpus_per_instance(itype) or 1
        main = GroupSpec(f"{ws}-gpu", ws, itype, gpus, 1 if rng.random() < 0.35 else 0, 4)
        groups.append(main)
        job_group = main
        if w % 7 == 3:
            # A workspace with a second nodegroup (mid-resize, or a big one for training).
            job_group = GroupSpec(f"{ws}-big", ws, "g5.12xlarge", 4, 0, 2)
            groups.append(job_group)
        kind: Kind = rng.choices(("jupyter", "terminal", "vscode"), (6, 2, 2))[0]
        forget = rng.uniform(0.2, 0.7)
        busy = bytearray(total)
        opens: set[int] = set()
        closes: set[int] = set()
        for day in range(days):
            base = day * 1440
            if minute_at(base).weekday() >= 5 or rng.random() < 0.15:
                continue  # weekend, or out that day
            arrive = base + rng.randint(8 * 60, 10 * 60 + 30)
            leave = min(total - 1, arrive + rng.randint(450, 570))
            for start, end in _blocks(rng, arrive, leave):
                busy[start:end] = b"\x01" * (end - start)
                opens.add(start)
            if kind == "terminal" and rng.random() < 0.6:
                run_end = min(total, leave + rng.randint(120, 14 * 60))
                busy[leave:run_end] = b"\x01" * (run_end - leave)
            elif rng.random() >= forget:
                closes.add(leave)
        notebooks.append(NotebookSpec(ws, "lab", main.name, kind, busy, frozenset(opens), frozenset(closes)))
        if rng.random() < 0.45:
            for j in range(rng.randint(1, 4)):
                jobs.append(
                    JobSpec(
                        ws,
                        f"train-{j}-worker-0",
                        job_group.name,
                        min(job_group.gpus, rng.choice((1, 1, 4))),
                        rng.randint(0, total - 60),
                        rng.randint(120, 12 * 60),
                    )
                )
    return Demand(total, spaces, groups, notebooks, jobs)


# -- the simulated cluster -------------------------------------------------------------------------


@dataclass
class SimNode:
    name: str
    group: GroupSpec
    created: int
    ready: int
    empty_since: int | None = None


@dataclass
class SimPod:
    namespace: str
    name: str
    group: str
    gpus: int
    workload: Workload
    notebook: NotebookSpec | None = None
    job: JobSpec | None = None
    node: str | None = None
    started: int | None = None


@dataclass(frozen=True)
class BusyStop:
    minute: int
    what: str
    kind: str
    """The request kind that stopped it."""
    busy_since: int
    """The minute its current busy stretch began."""
    last_scan: int | None
    """The minute of the last scan before the stop."""

    def __str__(self) -> str:
        scan = "no scan" if self.last_scan is None else f"last scan {minute_at(self.last_scan):%a %H:%M}"
        return (
            f"{minute_at(self.minute):%a %H:%M} {self.kind} stopped {self.what}, busy since "
            f"{minute_at(self.busy_since):%a %H:%M} ({scan})"
        )


@dataclass
class Stats:
    idle_gpu_minutes: float = 0.0
    idle_usd: float = 0.0
    gpu_minutes: float = 0.0
    busy_stops: int = 0
    stops: int = 0
    scale_downs: int = 0
    refused: int = 0
    refused_log: list[str] = field(default_factory=list)
    """Each ``gpu.scale`` refused by its apply-time check, and what it found."""
    stopped_kinds: dict[str, int] = field(default_factory=dict)
    """Notebook kind (jupyter, terminal, vscode) -> stops by the bot or a click."""
    reopened: int = 0
    """Notebooks their owner had to start again after the bot stopped them."""
    idle_past_after: float = 0.0
    """Idle GPU-minutes past ``idle_after`` into their idle stretch: the most a bot that waits
    ``idle_after`` before it reports could remove."""
    idle_by: dict[str, float] = field(default_factory=dict)
    """Idle GPU-minutes by where they sit (``--verbose``)."""
    busy_log: list[BusyStop] = field(default_factory=list)
    """Each stop of something busy at that moment."""


class World:
    def __init__(self, d: Demand) -> None:
        self.d = d
        self.groups = {g.name: g for g in d.groups}
        self.min_size = {g.name: g.min_size for g in d.groups}
        self.nodes: dict[str, SimNode] = {}
        self.pods: dict[tuple[str, str], SimPod] = {}
        self.stopped = {(n.namespace, n.name): True for n in d.notebooks}
        self.stopped_by_bot: set[tuple[str, str]] = set()
        self.last_active: dict[tuple[str, str], int] = {}
        self.streak: dict[str, int] = {}
        """Node or pod -> minutes idle in a row (its GPUs unused)."""
        self.last_gpu: dict[tuple[str, str], int] = {}
        """(namespace, notebook) -> the last minute its GPU worked (what DCGM would have seen)."""
        self.serial = 0
        self.stats = Stats()
        self.last_scan: int | None = None
        self.jobs_at: dict[int, list[JobSpec]] = {}
        for job in d.jobs:
            self.jobs_at.setdefault(job.submit, []).append(job)
        for g in d.groups:
            for _ in range(g.min_size):
                self._add_node(g, -BOOT_MINUTES, 0)

    def _add_node(self, g: GroupSpec, created: int, ready: int) -> None:
        self.serial += 1
        name = f"ip-10-0-{self.serial // 250}-{self.serial % 250}.ec2.internal"
        self.nodes[name] = SimNode(name, g, created, ready)

    def busy(self, pod: SimPod, m: int) -> bool:
        if pod.node is None:
            return False
        if pod.job is not None:
            return True
        return pod.notebook is not None and bool(pod.notebook.busy[m])

    # -- people and the autoscaler ---------------------------------------------------------------
    def step(self, m: int) -> None:
        for nb in self.d.notebooks:
            key = (nb.namespace, nb.name)
            if m in nb.opens and self.stopped[key]:
                self.stopped[key] = False
                if key in self.stopped_by_bot:
                    self.stats.reopened += 1
                    self.stopped_by_bot.discard(key)
                self.pods[key] = SimPod(nb.namespace, f"{nb.name}-0", nb.nodegroup, 1, "notebook", nb)
            elif m in nb.closes and not self.stopped[key]:
                self._stop_notebook(key)
            if nb.busy[m] and not self.stopped[key]:
                self.last_active[key] = m
                self.last_gpu[key] = m
        for job in self.jobs_at.get(m, ()):
            self.pods[(job.namespace, job.name)] = SimPod(
                job.namespace, job.name, job.nodegroup, job.gpus, "pytorchjob", job=job
            )
        for key, pod in list(self.pods.items()):
            if pod.job is not None and pod.started is not None and m >= pod.started + pod.job.minutes:
                del self.pods[key]
        self._schedule(m)
        self._autoscale(m)

    def _stop_notebook(self, key: tuple[str, str]) -> None:
        self.stopped[key] = True
        self.pods.pop(key, None)

    def _free(self, node: SimNode) -> int:
        return node.group.gpus - sum(p.gpus for p in self.pods.values() if p.node == node.name)

    def _schedule(self, m: int) -> None:
        for pod in self.pods.values():
            if pod.node is not None:
                continue
            for node in self.nodes.values():
                if node.group.name == pod.group and node.ready <= m and self._free(node) >= pod.gpus:
                    pod.node, pod.started = node.name, m
                    if pod.notebook is not None:
                        self.last_active[(pod.namespace, pod.notebook.name)] = m
                    break

    def _autoscale(self, m: int) -> None:
        for g in self.d.groups:
            mine = [n for n in self.nodes.values() if n.group.name == g.name]
            waiting = any(p.node is None and p.group == g.name for p in self.pods.values())
            booting = any(n.ready > m for n in mine)
            if waiting and not booting and len(mine) < g.max_size:
                self._add_node(g, m, m + BOOT_MINUTES)
                continue
            for node in mine:
                empty = node.ready <= m and self._free(node) == g.gpus
                node.empty_since = (
                    (node.empty_since if node.empty_since is not None else m) if empty else None
                )
            removable = [
                n for n in mine if n.empty_since is not None and m - n.empty_since >= CA_UNNEEDED_MINUTES
            ]
            keep = len(mine) - self.min_size[g.name]
            for node in removable[: max(keep, 0)]:
                del self.nodes[node.name]

    def account(self, m: int) -> None:
        for node in self.nodes.values():
            if node.ready > m:
                continue
            on = [p for p in self.pods.values() if p.node == node.name]
            used = sum(p.gpus for p in on if self.busy(p, m))
            idle = node.group.gpus - used
            by = self.stats.idle_by
            streaks = {node.name: not on, **{f"{p.namespace}/{p.name}": not self.busy(p, m) for p in on}}
            for key, idle_now in streaks.items():
                self.streak[key] = self.streak.get(key, 0) + 1 if idle_now else 0
            if self.streak[node.name] > IDLE_AFTER_MINUTES:
                self.stats.idle_past_after += node.group.gpus
            for p in on:
                if self.streak[f"{p.namespace}/{p.name}"] > IDLE_AFTER_MINUTES:
                    self.stats.idle_past_after += p.gpus
            if not on:
                by["empty node"] = by.get("empty node", 0.0) + idle
            else:
                free = node.group.gpus - sum(p.gpus for p in on)
                by["free beside a pod"] = by.get("free beside a pod", 0.0) + free
                for p in on:
                    if not self.busy(p, m):
                        what = f"idle {p.notebook.kind} notebook" if p.notebook else "idle job"
                        by[what] = by.get(what, 0.0) + p.gpus
            price = prices.hourly_price(REGION, node.group.instance_type, {}) or 0.0
            self.stats.gpu_minutes += node.group.gpus
            self.stats.idle_gpu_minutes += idle
            self.stats.idle_usd += price * idle / node.group.gpus / 60.0

    # -- what the scan sees -------------------------------------------------------------------------
    def inventory(self, m: int, util_window: int | None = None) -> Inventory:
        """``util_window``: minutes of DCGM utilisation Prometheus gives (None: not configured)."""
        now = minute_at(m)
        groups = []
        for g in self.d.groups:
            count = sum(1 for n in self.nodes.values() if n.group.name == g.name)
            groups.append(
                Nodegroup(
                    g.name,
                    g.workspace,
                    g.instance_type,
                    g.gpus,
                    "ACTIVE",
                    self.min_size[g.name],
                    g.max_size,
                    count,
                )
            )
        nodes = tuple(
            Node(n.name, n.group.name, n.group.instance_type, n.group.gpus, minute_at(n.created))
            for n in self.nodes.values()
            if n.ready <= m
        )
        pods = tuple(
            GpuPod(p.namespace, p.name, p.node, p.gpus, p.workload, p.notebook.name if p.notebook else None)
            for p in self.pods.values()
        )
        notebooks = []
        activity: dict[tuple[str, str], NotebookActivity] = {}
        for nb in self.d.notebooks:
            key = (nb.namespace, nb.name)
            vscode = nb.kind == "vscode"
            notebooks.append(
                Notebook(
                    nb.namespace,
                    nb.name,
                    self.stopped[key],
                    1,
                    "codercom/code-server:4" if vscode else "kubeflownotebookswg/jupyter-pytorch-cuda",
                    "group-one" if vscode else "jupyter",
                )
            )
            pod = self.pods.get(key)
            if pod is None or pod.node is None:
                continue
            if vscode:
                activity[key] = NotebookActivity("unknown", note="not a Jupyter server")
            elif nb.busy[m]:
                activity[key] = NotebookActivity("busy", now)
            else:
                activity[key] = NotebookActivity("idle", minute_at(self.last_active.get(key, m)))
        utilisation = None
        if util_window is not None:
            peaks: dict[tuple[str, str], float] = {}
            for p in self.pods.values():
                if p.node is None:
                    continue
                if p.notebook is None:
                    peaks[(p.namespace, p.name)] = 0.9  # a training job works its GPU
                else:
                    last = self.last_gpu.get((p.namespace, p.notebook.name))
                    peaks[(p.namespace, p.name)] = (
                        0.9 if last is not None and m - last <= util_window else 0.0
                    )
            utilisation = GpuUtilisation(peaks)
        return Inventory(now, REGION, tuple(groups), nodes, pods, tuple(notebooks), activity, utilisation)

    def _busy_stop(self, pod: SimPod, m: int, kind: str) -> None:
        since = m
        if pod.notebook is not None:
            while since > 0 and pod.notebook.busy[since - 1]:
                since -= 1
        elif pod.started is not None:
            since = pod.started
        self.stats.busy_stops += 1
        self.stats.busy_log.append(
            BusyStop(m, f"{pod.workload} {pod.namespace}/{pod.name}", kind, since, self.last_scan)
        )

    # -- the bot's requests, applied step by step as their plans say --------------------------------
    def apply(self, kind: RequestKind, m: int, facts: SimFacts, settings: CoreSettings) -> None:
        plan = kind.plan(PlanContext(settings, facts, "bench"))
        for step in plan.steps:
            p = step.params
            if step.action == ActionName.NOTEBOOK_STOP:
                key = (str(p["namespace"]), str(p["name"]))
                if self.stopped[key]:
                    continue
                pod = self.pods.get(key)
                self.stats.stops += 1
                nb_kind = next(n.kind for n in self.d.notebooks if (n.namespace, n.name) == key)
                self.stats.stopped_kinds[nb_kind] = self.stats.stopped_kinds.get(nb_kind, 0) + 1
                if pod is not None and self.busy(pod, m):
                    self._busy_stop(pod, m, kind.KIND)
                self._stop_notebook(key)
                self.stopped_by_bot.add(key)
            elif step.action == ActionName.NOTEBOOK_IDLE:
                # The guard of the bot's own stop reads the notebook again, as the live probe does:
                # refused unless Jupyter says idle for the whole period right now.
                key = (str(p["namespace"]), str(p["name"]))
                if self.stopped[key] or self.pods.get(key) is None:
                    continue
                nb = next(n for n in self.d.notebooks if (n.namespace, n.name) == key)
                window = int(str(p["idle_seconds"])) // 60
                recent = nb.busy[max(0, m - window) : m + 1]
                if nb.kind == "vscode" or any(recent):
                    self.stats.refused += 1
                    self.stats.refused_log.append(
                        f"{minute_at(m):%a %H:%M} {kind.KIND} refused: {key[0]}/{key[1]} not idle now"
                    )
                    return  # the guard fails permanently: nothing is stopped
            elif step.action == ActionName.GPU_PODS_ABSENT:
                group, namespace = str(p["nodegroup"]), str(p["namespace"])
                on_group = {n.name for n in self.nodes.values() if n.group.name == group}
                found = [
                    f"{x.namespace}/{x.name}" + (" (pending)" if x.node is None else "")
                    for x in self.pods.values()
                    if (x.node in on_group) or (x.node is None and x.namespace == namespace)
                ]
                if found:
                    self.stats.refused += 1
                    self.stats.refused_log.append(
                        f"{minute_at(m):%a %H:%M} {kind.KIND} refused on {group}: {', '.join(found)}"
                    )
                    return  # the step refuses permanently: the request fails here
            elif step.action == ActionName.NODEGROUP_SCALING:
                group = str(p["name"])
                self.min_size[group] = int(str(p["min_size"]))
                desired = int(str(p["desired_size"]))
                mine = [n for n in self.nodes.values() if n.group.name == group]
                self.stats.scale_downs += 1
                for node in mine[desired:]:
                    for x in [x for x in self.pods.values() if x.node == node.name]:
                        if self.busy(x, m):
                            self._busy_stop(x, m, kind.KIND)
                        x.node = None  # evicted: pending again
                    del self.nodes[node.name]


# -- the bot's stored state (a mirror of provisioning.store.cost and provisioning.facts) ----------


@dataclass
class Row:
    signal: StoredSignal
    workspace: str | None
    detail: Mapping[str, JSON]


@dataclass
class SimFacts:
    """``handlers.ports.Facts`` over the in-memory store and the registry the demand implies."""

    d: Demand
    rows: dict[str, Row] = field(default_factory=dict)
    holds: list[Hold] = field(default_factory=list)
    now: datetime = START

    def workspace(self, name: str) -> WorkspaceFacts | None:
        ns = self.d.workspaces.get(name)
        if ns is None:
            return None
        created: dict[str, Mapping[str, JSON]] = {}
        for g in self.d.groups:
            if g.workspace == name:
                params: dict[str, JSON] = {
                    "cluster": CLUSTER,
                    "name": g.name,
                    "instance_types": [g.instance_type],
                    "scaling": {"minSize": g.min_size, "desiredSize": g.min_size, "maxSize": g.max_size},
                    "taints": [dict(GPU_TAINT)],
                }
                created[f"Nodegroup/{g.name}"] = {"action": ActionName.NODEGROUP.value, "params": params}
        return WorkspaceFacts(name, ns, f"owner@{name}.example", created=created)

    def user_in_use(self, user: str, except_workspace: str) -> bool:
        return False

    def owned_workspaces(self, user: str) -> tuple[str, ...]:
        return ()

    def bot_made_login(self, user: str) -> bool:
        return False

    def token_owner(self, token_id: str) -> tuple[str, str] | None:
        return None

    def data_held(self, workspace: str) -> DataHeld:
        return DataHeld()

    def idle_item(self, target: str) -> IdleFacts | None:
        rows = [r for r in self.rows.values() if r.detail.get("item") == target]
        if not rows:
            return None
        workspace = rows[0].workspace
        covering = {target} | ({f"workspace:{workspace}"} if workspace else set())
        return IdleFacts(
            target=target,
            workspace=workspace,
            since=min(r.signal.first_seen for r in rows),
            last_seen=min(r.signal.last_seen for r in rows),
            established=all(r.detail.get("established") is True for r in rows),
            held=any(h.target in covering and h.until > self.now for h in self.holds),
            warned=any(r.signal.warned_at is not None for r in rows),
        )


@dataclass
class Bot:
    settings: CoreSettings
    facts: SimFacts
    prometheus: bool = False
    """``KFBOT_PROMETHEUS_URL`` set: the inventory carries DCGM utilisation (signal 3)."""
    timers: dict[str, tuple[datetime, dict[str, JSON]]] = field(default_factory=dict)
    listed: dict[str, IdleItem] = field(default_factory=dict)
    """What the report message lists now (edited by every scan)."""
    clicks: dict[str, int] = field(default_factory=dict)
    """Item key -> the minute its owner clicks Stop / Scale to 0 (reports-only)."""

    def scan(self, world: World, m: int, rng: random.Random | None, click_share: float) -> None:
        cost = self.settings.cost
        now = minute_at(m)
        self.facts.now = now
        stored = [r.signal for r in self.facts.rows.values()]
        window = int(cost.idle_after.total_seconds() // 60) if self.prometheus else None
        world.last_scan = m
        obs = classify(
            world.inventory(m, window),
            stored,
            self.facts.holds,
            now,
            cost,
            namespaces={ns: ws for ws, ns in world.d.workspaces.items()},
        )
        for up in obs.upsert:
            old = self.facts.rows.get(up.key)
            signal = StoredSignal(
                up.key,
                up.signal,
                up.first_seen,
                up.last_seen,
                old.signal.reported_at if old else None,
                old.signal.warned_at if old else None,
            )
            self.facts.rows[up.key] = Row(signal, up.workspace, dict(up.detail))
        for key in obs.delete:
            self.facts.rows.pop(key, None)
        warned = frozenset(
            str(r.detail.get("item")) for r in self.facts.rows.values() if r.signal.warned_at is not None
        )
        pending = {t: due for t, (due, _) in self.timers.items()}
        stops = autostop.plan(obs.items, pending, warned, now, cost)
        for target in stops.cancel:
            self.timers.pop(target, None)
        for item, due in stops.schedule:
            assert item.target is not None
            self.timers[item.target] = (due, autostop.payload(item, due, cost))
        previous, self.listed = self.listed, {i.key: i for i in obs.items}
        for item in obs.items:
            self._mark(item.signals, reported=now)
            new = item.key not in previous and item.target is not None and item.workspace is not None
            if rng is not None and new and rng.random() < click_share:
                self.clicks[item.key] = _click_minute(rng, m)
        for key in [k for k in self.clicks if k not in self.listed]:
            del self.clicks[key]  # the message no longer lists it: no button to press
        for item, _ in stops.warn:
            self._mark(item.signals, warned=now)

    def _mark(
        self, keys: Sequence[str], *, reported: datetime | None = None, warned: datetime | None = None
    ) -> None:
        for key in keys:
            row = self.facts.rows[key]
            s = row.signal
            if reported is not None and s.reported_at is None:
                s = replace(s, reported_at=reported)
            if warned is not None:
                s = replace(s, warned_at=warned)
            row.signal = s

    def fire(self, world: World, m: int) -> None:
        now = minute_at(m)
        self.facts.now = now
        for target, (due, body) in sorted(self.timers.items()):
            if due > now:
                continue
            del self.timers[target]
            result = autostop.TIMER.handle(target, body, self.facts)
            if isinstance(result, SystemRequest):
                world.apply(result.kind, m, self.facts, self.settings)

    def click(self, world: World, m: int) -> None:
        for key, at in sorted(self.clicks.items()):
            if at != m:
                continue
            del self.clicks[key]
            item = self.listed.get(key)
            if item is None or item.workspace is None or item.target is None:
                continue
            action = buttons.STOP_NOTEBOOK if item.kind == "notebook" else buttons.SCALE_DOWN
            value = buttons.button_value(item.workspace, item.target)
            kind = buttons.request_for(
                action, value, now=minute_at(m), settings=self.settings, facts=self.facts
            )
            assert isinstance(kind, NotebookStop | GpuScale)
            world.apply(kind, m, self.facts, self.settings)


def _click_minute(rng: random.Random, m: int) -> int:
    """Within working hours a few minutes to an hour and a half later; else the next morning."""
    at = m + rng.randint(5, 90)
    while not working_hours(at):
        at = (at // 60 + 1) * 60  # the next hour
    return at + (rng.randint(0, 60) if not working_hours(m) else 0)


# -- the replay --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    scenario: str
    stats: Stats
    seconds: float


NO_BOT = "no bot"
REPORTS = "reports only"
AUTO = "auto-stop"
AUTO_DCGM = "auto-stop+DCGM"
SCENARIOS = (NO_BOT, REPORTS, AUTO, AUTO_DCGM)


def replay(
    d: Demand,
    scenario: str,
    *,
    seed: int,
    click_share: float,
    auto_stop_after: timedelta,
    scan_first: bool = False,
) -> Result:
    """``scan_first``: a timer due at a scan's minute fires after that scan (which may cancel
    it); by default before it, on what the previous scan saw (the worst order)."""
    began = time.perf_counter()
    world = World(d)
    auto = scenario in (AUTO, AUTO_DCGM)
    cost = CostSettings(auto_stop_after=auto_stop_after if auto else None)
    bot = None
    if scenario != NO_BOT:
        bot = Bot(CoreSettings(cost=cost), SimFacts(d), prometheus=scenario == AUTO_DCGM)
    rng = random.Random(seed + 1) if scenario == REPORTS else None
    every = int(cost.scan_interval.total_seconds() // 60)
    for m in range(d.minutes):
        world.step(m)
        if bot is not None:
            scanning = m % every == 0
            if scanning and scan_first:
                bot.scan(world, m, rng, click_share)
            bot.fire(world, m)
            bot.click(world, m)
            if scanning and not scan_first:
                bot.scan(world, m, rng, click_share)
        world.account(m)
    return Result(scenario, world.stats, time.perf_counter() - began)


def run(
    *,
    seed: int = 7,
    days: int = 7,
    workspaces: int = 15,
    click_share: float = 0.5,
    auto_stop_after: timedelta = timedelta(hours=1),
    scan_first: bool = False,
) -> list[Result]:
    d = demand(seed, days, workspaces)
    return [
        replay(
            d, s, seed=seed, click_share=click_share, auto_stop_after=auto_stop_after, scan_first=scan_first
        )
        for s in SCENARIOS
    ]


def removed(results: Sequence[Result], r: Result) -> float:
    base = results[0].stats.idle_gpu_minutes
    return 1.0 - r.stats.idle_gpu_minutes / base if base else 0.0


def of_reach(results: Sequence[Result], r: Result) -> float:
    """Removed, as a share of what a bot that waits ``idle_after`` could remove at most."""
    base = results[0].stats
    gone = base.idle_gpu_minutes - r.stats.idle_gpu_minutes
    return gone / base.idle_past_after if base.idle_past_after else 0.0


def table(
    results: Sequence[Result],
    *,
    seed: int,
    days: int,
    workspaces: int,
    click_share: float,
    auto_stop_after: timedelta,
    scan_first: bool,
) -> str:
    base = results[0].stats
    reachable = base.idle_past_after / base.idle_gpu_minutes if base.idle_gpu_minutes else 0.0
    order = "after" if scan_first else "before (worst order)"
    head = (
        f"kf-chatops week replay: seed {seed}, {days} days, {workspaces} workspaces; scans every 10 min, "
        f"KFBOT_IDLE_AFTER 2h, KFBOT_AUTO_STOP_AFTER {auto_stop_after}, owners click on "
        f"{click_share:.0%} of newly reported items; a due timer fires {order} the scan of its minute; "
        f"$ = on-demand list price ({REGION}). Without the bot {reachable:.0%} of the idle GPU-hours "
        "lie past 2h into their idle stretch: the most a bot that waits KFBOT_IDLE_AFTER can remove "
        "('of reach': the share of that removed)."
    )
    lines = [
        *textwrap.wrap(head, 110),
        f"{'scenario':<15} {'GPU-h':>6} {'idle GPU-h':>10} {'idle $':>8} {'removed':>7} {'of reach':>8} "
        f"{'busy stopped':>12} {'nb stops':>8} {'ng to 0':>7} {'refused':>7} {'reopened':>8} {'wall s':>6}",
    ]
    for r in results:
        s = r.stats
        lines.append(
            f"{r.scenario:<15} {s.gpu_minutes / 60:>6.0f} {s.idle_gpu_minutes / 60:>10.1f} "
            f"{s.idle_usd:>8.2f} {removed(results, r):>7.1%} {of_reach(results, r):>8.1%} "
            f"{s.busy_stops:>12} {s.stops:>8} "
            f"{s.scale_downs:>7} {s.refused:>7} {s.reopened:>8} {r.seconds:>6.2f}"
        )
    for r in results:
        lines += [f"  {r.scenario}: {b}" for b in r.stats.busy_log]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.week", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--workspaces", type=int, default=15)
    parser.add_argument("--click-share", type=float, default=0.5, help="0..1 (reports only)")
    parser.add_argument("--auto-stop-after", type=int, default=60, help="minutes (KFBOT_AUTO_STOP_AFTER)")
    parser.add_argument(
        "--scan-first",
        action="store_true",
        help="a timer due at a scan's minute fires after that scan (default: before)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.click_share <= 1.0 or args.days < 1 or args.workspaces < 1:
        parser.error("--click-share is 0..1; --days and --workspaces at least 1")
    after = timedelta(minutes=args.auto_stop_after)
    results = run(
        seed=args.seed,
        days=args.days,
        workspaces=args.workspaces,
        click_share=args.click_share,
        auto_stop_after=after,
        scan_first=args.scan_first,
    )
    print(
        table(
            results,
            seed=args.seed,
            days=args.days,
            workspaces=args.workspaces,
            click_share=args.click_share,
            auto_stop_after=after,
            scan_first=args.scan_first,
        )
    )
    best = max(removed(results, r) for r in results if r.scenario in (AUTO, AUTO_DCGM))
    busy = sum(r.stats.busy_stops for r in results)
    print(
        f"goal: >= {GOAL_REMOVED:.0%} of idle GPU-hours removed with auto-stop ({best:.1%}: "
        f"{'met' if best >= GOAL_REMOVED else 'missed'}), 0 busy stopped ({busy}: "
        f"{'met' if busy == 0 else 'missed'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
