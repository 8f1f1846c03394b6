"""Which GPUs sit idle, and since when: one scan's ``Inventory`` plus what earlier scans stored.

Pure. ``classify`` takes the inventory, the stored signals (key -> when first seen), the holds,
``now`` and the cost settings, and returns the signal rows to write and delete and the idle items
to report. The rules, each a property in ``tests/test_cost_idle.py``:

* **Unknown is never idle.** A notebook whose server did not answer, or answered without kernels,
  is idle only when Prometheus says its GPUs are unused (signal 3); a non-notebook workload only
  ever through signal 3; without utilisation data there is no signal 3.
* **A busy GPU overrides signal 2**: a notebook whose kernels look idle but whose GPU is working
  (a background process) is not idle. A notebook Jupyter calls busy is not idle either.
* **The clock does not reset**: ``first_seen`` of a signal that still holds is the stored one, so
  repeated scans and restarts keep it; only activity (a ``last_activity`` newer than the signal's
  start) or the signal lapsing (busy, gone, unknown) starts it again.
* **Never reported**: a nodegroup not in a steady status, a stopped notebook, a pending pod, an
  item held (``gpu_holds``: ``nodegroup:``, ``notebook:`` or ``workspace:`` target) and anything
  idle for less than ``idle_after``.
* **Established** idleness is what auto-stop may act on: the evidence covers the whole period
  (a node whose GPUs the device plugin reported; a notebook whose own server dates its last
  activity, and whose GPU Prometheus, when configured, saw unused; utilisation data for signal 3)
  and, for a nodegroup, every node of it is empty and no GPU pod of its workspace is pending
  (scaling to 0 would stop nothing busy and strand nothing waiting).

Prices are on-demand list prices (``handlers.prices.hourly_price``, the operator's overrides
winning); a notebook or pod costs its share of its node (its GPUs over the node's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from handlers import naming, prices
from handlers.cost.inventory import STEADY_STATUSES, GpuPod, Inventory, Node, Nodegroup, Notebook
from handlers.plan import JSON
from handlers.settings import CostSettings

SignalName = Literal["empty-node", "idle-notebook", "unused-gpu"]
ItemKind = Literal["nodes", "notebook", "pod"]

PRICE_BASIS = "on-demand list price"
"""How every dollar figure here is to be read (no Savings Plans, no Spot)."""


def node_key(nodegroup: str, node: str) -> str:
    return f"node:{nodegroup}/{node}"


def notebook_key(namespace: str, name: str) -> str:
    return f"notebook:{namespace}/{name}"


def pod_key(namespace: str, name: str) -> str:
    return f"pod:{namespace}/{name}"


def nodegroup_target(name: str) -> str:
    return f"nodegroup:{name}"


def workspace_target(name: str) -> str:
    return f"workspace:{name}"


@dataclass(frozen=True)
class StoredSignal:
    """A ``gpu_signals`` row as the previous scans left it."""

    key: str
    signal: str
    first_seen: datetime
    last_seen: datetime
    reported_at: datetime | None = None
    warned_at: datetime | None = None


@dataclass(frozen=True)
class SignalRow:
    """A ``gpu_signals`` row to write (insert, or update keeping ``reported_at``/``warned_at``)."""

    key: str
    kind: Literal["node", "notebook", "pod"]
    workspace: str | None
    nodegroup: str | None
    signal: SignalName
    first_seen: datetime
    last_seen: datetime
    detail: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """A keep or snooze: ``target`` is not reported nor auto-stopped before ``until``."""

    target: str
    until: datetime


@dataclass(frozen=True)
class IdleItem:
    """One thing to report: a nodegroup's empty nodes, an idle notebook, or an unused GPU pod."""

    key: str
    """``nodegroup:<name>``, ``notebook:<ns>/<name>`` or ``pod:<ns>/<name>``: the report's item id
    and, for the first two, the hold and button target."""
    kind: ItemKind
    workspace: str | None
    """None: unattributed (a nodegroup or namespace the registry does not know)."""
    what: str
    """Neutral words, the cluster's names as code spans (``naming.show_value``) so that Slack
    links none of them (a pod may be named ``evil.com-0``): ``nodegroup `ng-a`: 2 x g5.xlarge``,
    ``notebook `team-a/nb```."""
    since: datetime
    gpus: int
    hourly_usd: float | None
    """Now, at the on-demand list price; None when the price table does not know the type."""
    spent_usd: float | None
    """Idle so far (``hourly_usd`` times the time since each signal started)."""
    established: bool
    signals: tuple[str, ...]
    """The ``gpu_signals`` keys behind the item (reported_at / warned_at are set on them)."""
    nodegroup: str | None = None
    nodes: int = 0
    instance_type: str = ""
    namespace: str | None = None
    name: str | None = None
    reason: str = ""
    """Which signal made it idle, in words (``no GPU pod``, ``kernels and terminals idle``)."""

    @property
    def target(self) -> str | None:
        """The hold / action target, None for a pod (a non-notebook workload is the owner's to
        stop; the report only says it)."""
        return None if self.kind == "pod" else self.key

    @property
    def stoppable(self) -> bool:
        """Whether a button or auto-stop may act on it: a workspace's notebook, or a workspace's
        nodegroup whose nodes are all empty."""
        return self.workspace is not None and self.kind != "pod"


@dataclass(frozen=True)
class Observation:
    upsert: tuple[SignalRow, ...]
    delete: tuple[str, ...]
    items: tuple[IdleItem, ...]
    """Idle at least ``idle_after`` and not held, ordered by workspace then key."""
    held: tuple[IdleItem, ...] = ()
    """Idle long enough but held (``/kf gpu status`` shows them, the report does not)."""
    notes: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    """Keys seen busy this scan (pending auto-stops of theirs are cancelled)."""


def held_targets(holds: Iterable[Hold], now: datetime) -> frozenset[str]:
    return frozenset(h.target for h in holds if h.until > now)


def is_held(item: IdleItem, targets: frozenset[str]) -> bool:
    keys = {item.key}
    if item.nodegroup is not None and item.kind == "nodes":
        keys.add(nodegroup_target(item.nodegroup))
    if item.workspace is not None:
        keys.add(workspace_target(item.workspace))
    return bool(keys & targets)


@dataclass
class _Ctx:
    inventory: Inventory
    stored: Mapping[str, StoredSignal]
    now: datetime
    settings: CostSettings
    overrides: Mapping[str, float]
    namespaces: Mapping[str, str]
    rows: dict[str, SignalRow] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)

    def price(self, instance_type: str) -> float | None:
        return prices.hourly_price(self.inventory.region, instance_type, self.overrides)

    def keep(self, row: SignalRow, *, activity_at: datetime | None = None) -> SignalRow:
        """The row with the stored ``first_seen`` while the signal holds; a new start when none is
        stored, or when the source dates activity after the stored start (it was not idle then)."""
        old = self.stored.get(row.key)
        start = row.first_seen
        if (
            old is not None
            and old.signal == row.signal
            and (activity_at is None or activity_at <= old.first_seen)
        ):
            start = old.first_seen
        # In UTC, as the database gives it back: the auto-stop timer compares the start it was
        # scheduled for with the stored one.
        start = min(start, self.now).astimezone(UTC)
        kept = SignalRow(
            row.key, row.kind, row.workspace, row.nodegroup, row.signal, start, self.now, row.detail
        )
        self.rows[row.key] = kept
        return kept

    def idle_long_enough(self, since: datetime) -> bool:
        return self.now - since >= self.settings.idle_after


def _shown(name: str) -> str:
    """A name from the cluster as a code span, whole (Kubernetes and EKS bound its length, and a
    cut name could pass for another)."""
    return naming.show_value(name, limit=len(name))


def _hours(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.0) / 3600.0


def _share(price: float | None, gpus: int, of: int) -> float | None:
    if price is None or of <= 0:
        return None
    return price * min(gpus, of) / of


def classify(
    inventory: Inventory,
    stored: Iterable[StoredSignal],
    holds: Iterable[Hold],
    now: datetime,
    settings: CostSettings,
    *,
    price_overrides: Mapping[str, float] | None = None,
    namespaces: Mapping[str, str] | None = None,
) -> Observation:
    """Decide one scan. ``namespaces`` maps a workspace namespace to its workspace name (pods and
    notebooks elsewhere are unattributed)."""
    ctx = _Ctx(
        inventory,
        {s.key: s for s in stored},
        now,
        settings,
        price_overrides or {},
        namespaces or {},
    )
    items = [*_empty_nodes(ctx), *_workloads(ctx)]
    for item in items:
        # Each signal row names the item it makes up, so the auto-stop timer can re-check the
        # item from the database alone (``Facts.idle_item``).
        for key in item.signals:
            row = ctx.rows[key]
            marks: dict[str, JSON] = {"item": item.key, "established": item.established}
            ctx.rows[key] = dataclasses.replace(row, detail={**row.detail, **marks})
    targets = held_targets(holds, now)
    shown = sorted(
        (i for i in items if not is_held(i, targets)), key=lambda i: (i.workspace or "\uffff", i.key)
    )
    held = sorted((i for i in items if is_held(i, targets)), key=lambda i: (i.workspace or "\uffff", i.key))
    delete = tuple(sorted(k for k in ctx.stored if k not in ctx.rows))
    notes = list(inventory.notes)
    if inventory.utilisation is not None and inventory.utilisation.note:
        notes.append(f"GPU utilisation unavailable ({inventory.utilisation.note}): signals 1-2 only")
    return Observation(
        upsert=tuple(ctx.rows[k] for k in sorted(ctx.rows)),
        delete=delete,
        items=tuple(shown),
        held=tuple(held),
        notes=tuple(dict.fromkeys(notes)),
        busy=tuple(sorted(set(ctx.busy))),
    )


# -- signal 1: empty GPU nodes, grouped per nodegroup ------------------------------------------------


def _empty_nodes(ctx: _Ctx) -> list[IdleItem]:
    inv = ctx.inventory
    occupied = {p.node for p in inv.pods if p.node is not None and p.gpus > 0}
    by_group: dict[str, list[Node]] = {}
    for node in inv.nodes:
        by_group.setdefault(node.nodegroup, []).append(node)
    items: list[IdleItem] = []
    for group in inv.nodegroups:
        if group.gpus_per_node <= 0 or group.status not in STEADY_STATUSES:
            continue  # a CPU nodegroup, or one being created, updated or deleted: no signal at all
        nodes = sorted(by_group.get(group.name, []), key=lambda n: n.name)
        empty = [n for n in nodes if n.name not in occupied]
        for n in nodes:
            if n.name in occupied:
                ctx.busy.append(node_key(group.name, n.name))
        rows = [
            ctx.keep(
                SignalRow(
                    node_key(group.name, n.name),
                    "node",
                    group.workspace,
                    group.name,
                    "empty-node",
                    ctx.now,
                    ctx.now,
                    {"instance_type": n.instance_type or group.instance_type, "gpus": n.gpus},
                )
            )
            for n in empty
        ]
        item = _nodegroup_item(ctx, group, nodes, empty, rows)
        if item is not None:
            items.append(item)
    return items


def _nodegroup_item(
    ctx: _Ctx, group: Nodegroup, nodes: Sequence[Node], empty: Sequence[Node], rows: Sequence[SignalRow]
) -> IdleItem | None:
    due = [(n, r) for n, r in zip(empty, rows, strict=True) if ctx.idle_long_enough(r.first_seen)]
    if not due:
        return None
    hourly = 0.0
    spent = 0.0
    priced = True
    types: dict[str, int] = {}
    for node, row in due:
        itype = node.instance_type or group.instance_type
        types[itype] = types.get(itype, 0) + 1
        price = ctx.price(itype)
        if price is None:
            priced = False
            continue
        hourly += price
        spent += price * _hours(ctx.now - row.first_seen)
    shape = ", ".join(f"{count} x {itype}" for itype, count in sorted(types.items()))
    gpus = sum(n.gpus or group.gpus_per_node for n, _ in due)
    all_empty = len(due) == len(nodes) and len(nodes) > 0
    # A pending GPU pod of the workspace (or of a namespace no workspace owns) may be waiting for
    # exactly these nodes: scaling them away would strand it.
    waiting = any(
        p.node is None and p.gpus > 0 and ctx.namespaces.get(p.namespace) in (None, group.workspace)
        for p in ctx.inventory.pods
    )
    established = all_empty and not waiting and all(n.gpus > 0 for n, _ in due)
    return IdleItem(
        key=nodegroup_target(group.name),
        kind="nodes",
        workspace=group.workspace,
        what=f"nodegroup {_shown(group.name)}: {shape}",
        since=min(r.first_seen for _, r in due),
        gpus=gpus,
        hourly_usd=hourly if priced else None,
        spent_usd=spent if priced else None,
        established=established,
        signals=tuple(r.key for _, r in due),
        nodegroup=group.name,
        nodes=len(due),
        instance_type=group.instance_type,
        reason="no GPU pod on " + ("any node" if all_empty else f"{len(due)} of {len(nodes)} nodes"),
    )


# -- signals 2 and 3: notebooks and pods holding GPUs ----------------------------------------------


def _workloads(ctx: _Ctx) -> list[IdleItem]:
    inv = ctx.inventory
    notebooks = {(nb.namespace, nb.name): nb for nb in inv.notebooks}
    nodes = {n.name: n for n in inv.nodes}
    groups = {g.name: g for g in inv.nodegroups}
    util = inv.utilisation
    usable_util = util is not None and not util.note
    items: list[IdleItem] = []
    for pod in sorted(inv.pods, key=lambda p: (p.namespace, p.name)):
        node = nodes.get(pod.node) if pod.node is not None else None
        if node is None or pod.gpus <= 0:
            continue  # pending, or on a node this scan does not know: it holds no GPU we can price
        group = groups.get(node.nodegroup)
        if group is not None and group.status not in STEADY_STATUSES:
            continue
        # Its namespace, never the nodegroup it runs on: anyone may tolerate a workspace's taint, and
        # a pod elsewhere must not be reported, held or stopped as the workspace's.
        workspace = ctx.namespaces.get(pod.namespace)
        peak = util.by_pod.get((pod.namespace, pod.name)) if util is not None and usable_util else None
        gpu_busy = peak is not None and peak >= ctx.settings.idle_gpu_util
        gpu_unused = peak is not None and peak < ctx.settings.idle_gpu_util
        per_node = node.gpus or (group.gpus_per_node if group is not None else 0)
        hourly = _share(ctx.price(node.instance_type), pod.gpus, per_node)
        unused_row: SignalRow | None = None
        if gpu_unused:
            unused_row = ctx.keep(
                SignalRow(
                    pod_key(pod.namespace, pod.name),
                    "pod",
                    workspace,
                    node.nodegroup,
                    "unused-gpu",
                    ctx.now,
                    ctx.now,
                    {"gpus": pod.gpus, "peak": peak, "workload": pod.workload},
                )
            )
        elif gpu_busy:
            ctx.busy.append(pod_key(pod.namespace, pod.name))
        if pod.workload == "notebook" and pod.notebook is not None:
            nb = notebooks.get((pod.namespace, pod.notebook))
            if nb is None or nb.stopped:
                continue  # stopped (its pod is going) or not a Notebook we can see: never reported
            item = _notebook(
                ctx,
                nb,
                pod,
                node.nodegroup,
                workspace,
                hourly,
                unused_row,
                gpu_busy,
                util is not None,
                node.instance_type,
            )
        else:
            item = _pod(ctx, pod, node, workspace, hourly, unused_row)
        if item is not None:
            items.append(item)
    return items


def _notebook(
    ctx: _Ctx,
    nb: Notebook,
    pod: GpuPod,
    nodegroup: str,
    workspace: str | None,
    hourly: float | None,
    unused_row: SignalRow | None,
    gpu_busy: bool,
    util_configured: bool,
    instance_type: str,
) -> IdleItem | None:
    key = notebook_key(nb.namespace, nb.name)
    activity = ctx.inventory.activity.get((nb.namespace, nb.name))
    state = activity.state if activity is not None else "unknown"
    if gpu_busy or state == "busy":
        ctx.busy.append(key)
        ctx.rows.pop(pod_key(pod.namespace, pod.name), None)
        return None
    idle_row: SignalRow | None = None
    if state == "idle":
        last = activity.last_activity if activity is not None else None
        start = min(last, ctx.now) if last is not None else ctx.now
        idle_row = ctx.keep(
            SignalRow(
                key, "notebook", workspace, nodegroup, "idle-notebook", start, ctx.now, {"gpus": pod.gpus}
            ),
            activity_at=last,
        )
    rows = [r for r in (idle_row, unused_row) if r is not None]
    if not rows:
        return None  # unknown activity and no utilisation saying otherwise: never idle
    since = min(r.first_seen for r in rows)
    if not ctx.idle_long_enough(since):
        return None
    last_known = activity is not None and activity.last_activity is not None
    if idle_row is not None and ctx.idle_long_enough(idle_row.first_seen):
        # Jupyter's own dates cover the period; a configured Prometheus must agree.
        established = last_known and (not util_configured or unused_row is not None)
        reason = "kernels and terminals idle"
    else:
        established = unused_row is not None and ctx.idle_long_enough(unused_row.first_seen)
        reason = "GPU unused"
    if unused_row is not None and idle_row is not None:
        reason = "kernels and terminals idle, GPU unused"
    return IdleItem(
        key=key,
        kind="notebook",
        workspace=workspace,
        what=f"notebook {_shown(f'{nb.namespace}/{nb.name}')}",
        since=since,
        gpus=pod.gpus,
        hourly_usd=hourly,
        spent_usd=None if hourly is None else hourly * _hours(ctx.now - since),
        established=established,
        signals=tuple(r.key for r in rows),
        nodegroup=nodegroup,
        instance_type=instance_type,
        namespace=nb.namespace,
        name=nb.name,
        reason=reason,
    )


def _pod(
    ctx: _Ctx,
    pod: GpuPod,
    node: Node,
    workspace: str | None,
    hourly: float | None,
    row: SignalRow | None,
) -> IdleItem | None:
    if row is None or not ctx.idle_long_enough(row.first_seen):
        return None  # a non-notebook workload is idle only by its unused GPUs
    return IdleItem(
        key=row.key,
        kind="pod",
        workspace=workspace,
        what=f"{pod.workload} pod {_shown(f'{pod.namespace}/{pod.name}')}",
        since=row.first_seen,
        gpus=pod.gpus,
        hourly_usd=hourly,
        spent_usd=None if hourly is None else hourly * _hours(ctx.now - row.first_seen),
        established=True,
        signals=(row.key,),
        nodegroup=node.nodegroup,
        instance_type=node.instance_type,
        namespace=pod.namespace,
        name=pod.name,
        reason="GPU unused",
    )


@dataclass(frozen=True)
class FleetLine:
    """One GPU nodegroup as ``/kf gpu status`` shows it."""

    nodegroup: str
    workspace: str | None
    status: str
    instance_type: str
    nodes: int
    gpus: int
    gpus_in_use: int
    hourly_usd: float | None


def fleet(inventory: Inventory, price_overrides: Mapping[str, float] | None = None) -> tuple[FleetLine, ...]:
    """Every GPU nodegroup with its nodes, GPUs, GPUs requested by running pods, and $/hour now."""
    overrides = price_overrides or {}
    node_group = {n.name: n.nodegroup for n in inventory.nodes}
    in_use: dict[str, int] = {}
    for pod in inventory.pods:
        group = node_group.get(pod.node or "")
        if group is not None:
            in_use[group] = in_use.get(group, 0) + pod.gpus
    lines = []
    for g in sorted(inventory.nodegroups, key=lambda g: g.name):
        if g.gpus_per_node <= 0:
            continue
        nodes = [n for n in inventory.nodes if n.nodegroup == g.name]
        hourly: float | None = 0.0
        for n in nodes:
            price = prices.hourly_price(inventory.region, n.instance_type or g.instance_type, overrides)
            hourly = None if price is None or hourly is None else hourly + price
        lines.append(
            FleetLine(
                g.name,
                g.workspace,
                g.status,
                g.instance_type,
                len(nodes),
                sum(n.gpus or g.gpus_per_node for n in nodes),
                in_use.get(g.name, 0),
                hourly,
            )
        )
    return tuple(lines)
