"""One scan of where the GPUs are and what they do: the ``handlers.cost.inventory.Inventory``.

Why it is built the way it is:

* **A bounded number of calls per kind.** The scan runs every few minutes on clusters with up to
  100 nodegroups (EKS's quota is 30 per cluster by default) and tens of thousands of pods. So it
  never asks per node or per pod: nodes, pods, StatefulSets and Notebooks are each one paginated
  list (``limit``/``continue``, ``PAGE_SIZE`` items a page, as kubectl chunks), pods with a field
  selector that leaves out finished ones. No selector can pick pods that request GPUs, so that
  filter is client-side, page by page, and nothing but the GPU pods is kept. EKS has no
  "describe all": ``ListNodegroups`` (paginated) and one ``DescribeNodegroup`` each, run a few at
  a time. GPU counts per instance type come from one ``DescribeInstanceTypes`` for all types not
  seen before (cached for the life of the scanner), falling back to the built-in table.
* **Raw JSON.** The kubernetes client's model deserialisation costs ~10x ``json.loads`` on a big
  pod list; every list here is read with ``_preload_content=False`` and parsed as plain dicts.
* **Pods to Notebooks through the controller's own objects.** Kubeflow's notebook controller makes
  one StatefulSet per Notebook, controlled by it (``ctrl.SetControllerReference``), and the
  StatefulSet makes the pod ``NAME-0``. So a pod is a notebook's when its controller is a
  StatefulSet whose controller is a ``kubeflow.org`` Notebook; labels (which users can set) are not
  trusted for that.
* **Notebook activity, read as Kubeflow's culler reads it** (``culling_controller.go``):
  ``GET http://NAME.NAMESPACE.svc.DOMAIN/notebook/NAMESPACE/NAME/api/kernels``, plus
  ``/api/terminals`` because a training run in a terminal has no busy kernel. A kernel whose
  ``execution_state`` is anything but ``idle`` is activity (the culler's rule). The verdict is
  ``idle`` only when both lists were read, there is at least one kernel, and every
  ``last_activity`` is older than the idle window; any sign of activity makes it ``busy``;
  everything else (no kernels, 404, timeout, unreachable, not a Jupyter server) is ``unknown``
  with a note, never idle. Only notebooks whose pod holds a GPU on a node now are probed, a few at
  a time, each read bounded by ``CostProbeSettings.request_timeout``.
* **Prometheus** (when configured): the DCGM exporter's ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (0-1,
  also right for MIG slices) and ``DCGM_FI_DEV_GPU_UTIL`` (0-100, scaled to 0-1): per pod the
  highest value of every series of both over the idle window (``max_over_time``), so a series
  injected by another scrape target can make a GPU look busier, never idle. A series names its pod
  by ``pod``/``namespace``, or by ``exported_pod``/``exported_namespace`` when Prometheus renamed
  them because the scrape target's own labels (the exporter's pod) took those names: then the
  exported ones are the workload's.
* **A partial failure never fails the scan.** Each source's failure is translated at this boundary
  (``provisioning.k8s.translate``, ``provisioning.aws._aws_call``, or a note for the notebook and
  Prometheus reads) and becomes a line in ``Inventory.notes``; the decision then degrades (an
  unreadable source cannot make anything look idle: no pods read means no nodegroup is reported
  empty, see ``handlers.cost.idle``). ``Inventory.calls`` counts every API call per kind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlencode

import boto3
import msgspec
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from handlers import prices
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
from handlers.errors import KfError
from handlers.ports import Clock
from provisioning.aws import _CLIENT_CONFIG, _aws_call
from provisioning.k8s import Kind, scrub, translate
from provisioning.settings import CostProbeSettings

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_eks import EKSClient

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")

GPU_RESOURCE: Final = "nvidia.com/gpu"
NODEGROUP_LABEL: Final = "eks.amazonaws.com/nodegroup"
INSTANCE_TYPE_LABELS: Final = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
STOP_ANNOTATION: Final = "kubeflow-resource-stopped"
SERVER_TYPE_ANNOTATION: Final = "notebooks.kubeflow.org/server-type"
"""Set by Kubeflow's Jupyter web app: ``jupyter``, ``group-one`` (VS Code), ``group-two`` (RStudio)."""
NON_JUPYTER_SERVERS: Final[Mapping[str, str]] = {"group-one": "VS Code", "group-two": "RStudio"}
RUNNING_PODS: Final = "status.phase!=Succeeded,status.phase!=Failed"
JUPYTER_MAX_BYTES: Final = 1 << 20
"""A kernels or terminals list bigger than 1 MiB is not a notebook server's answer."""
PROMETHEUS_MAX_BYTES: Final = 32 << 20
"""One series per GPU pod: 32 MiB is far above any cluster's answer."""
PAGE_SIZE: Final = 500
"""Items per list page: kubectl's chunk size; 40 pages for 20k pods."""
ENGINE_ACTIVE: Final = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
GPU_UTIL: Final = "DCGM_FI_DEV_GPU_UTIL"
_TRAINING_KINDS: Final = frozenset(
    {"PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob", "JAXJob", "MXJob"}
)
"""Kubeflow training-operator kinds (``kubeflow.org``) whose pods they own directly."""

NODE: Final = Kind("Node", "", "v1", "nodes", False, "CoreV1Api", "node")
POD: Final = Kind("Pod", "", "v1", "pods", True, "CoreV1Api", "pod")
STATEFUL_SET: Final = Kind("StatefulSet", "apps", "v1", "statefulsets", True, "AppsV1Api", "stateful_set")
NOTEBOOK: Final = Kind("Notebook", "kubeflow.org", "v1", "notebooks", True)

NotebookUrl = Callable[[str, str], str]
"""``(namespace, name) -> base URL`` of a notebook server (scheme and host); the scan appends
``/notebook/NAMESPACE/NAME/api/...``. Tests point it at a local fake."""


def cluster_notebook_url(cluster_domain: str) -> NotebookUrl:
    """The Service the notebook controller makes for each Notebook (port 80, ``http-NAME``)."""

    def url(namespace: str, name: str) -> str:
        return f"http://{name}.{namespace}.svc.{cluster_domain}"

    return url


@dataclass(frozen=True)
class ScanLimits:
    page_size: int = PAGE_SIZE
    eks_page_size: int = 100
    """``ListNodegroups`` ``maxResults`` (EKS's maximum)."""
    probe_concurrency: int = 8
    """Notebook servers read at once."""
    describe_concurrency: int = 8
    """``DescribeNodegroup`` calls at once (EKS throttles a burst of 100)."""
    list_timeout: float = 60.0
    """Seconds per list page (a 500-pod page is a few MB)."""
    probe_budget: float = 60.0
    """Seconds for all the notebook probes of one scan: each GET is cut at
    ``CostProbeSettings.request_timeout``, but hundreds of slow servers would still add up; a
    notebook not read within the budget is ``unknown`` (never idle) this time."""


class _Calls:
    """Thread-safe call counter: ``Inventory.calls``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


@dataclass
class _Scan:
    """What one scan collects; each source fills its part or adds a note."""

    now: datetime
    idle_window: timedelta
    calls: _Calls = field(default_factory=_Calls)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)


class GpuScanner:
    """Builds an ``Inventory``; one instance lives as long as the bot (it caches instance types).

    Nothing is read at construction; every call happens in ``scan``."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        region: str,
        cluster: str,
        probe: CostProbeSettings,
        clock: Clock,
        aws_endpoint_url: str | None = None,
        session: boto3.Session | None = None,
        notebook_url: NotebookUrl | None = None,
        limits: ScanLimits | None = None,
    ) -> None:
        self._api = api
        self._region, self._cluster, self._probe, self._clock = region, cluster, probe, clock
        self._endpoint, self._session = aws_endpoint_url, session
        self._notebook_url = notebook_url or cluster_notebook_url(probe.cluster_domain)
        self._limits = limits or ScanLimits()
        self._gpu_types: dict[str, int] = {}
        self._types_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        self._eks_client: EKSClient | None = None
        self._ec2_client: EC2Client | None = None

    # -- the scan ----------------------------------------------------------------------------------

    def scan(self, idle_window: timedelta, workspaces: Mapping[str, str]) -> Inventory:
        """``workspaces``: nodegroup name -> workspace, from the bot's registry; a nodegroup not in
        it is unattributed (``Nodegroup.workspace`` None)."""
        run = _Scan(now=self._clock.now(), idle_window=idle_window)
        with ThreadPoolExecutor(max_workers=6, thread_name_prefix="kfbot-scan") as pool:
            nodegroups_f = pool.submit(self._nodegroups, run, workspaces)
            nodes_f = pool.submit(self._nodes, run)
            pods_f = pool.submit(self._gpu_pod_objects, run)
            sets_f = pool.submit(self._notebook_sets, run)
            notebooks_f = pool.submit(self._notebooks, run)
            utilisation_f = pool.submit(self._utilisation, run) if self._probe.prometheus_url else None
            raw_nodes = _settle(run, nodes_f, "Nodes")
            nodegroups = _settle(run, nodegroups_f, "EKS nodegroups")
            raw_pods = _settle(run, pods_f, "Pods")
            sets = _settle(run, sets_f, "StatefulSets")
            notebooks = _settle(run, notebooks_f, "Kubeflow Notebooks")
            utilisation = _settle(run, utilisation_f, "Prometheus") if utilisation_f is not None else None
        sources = {
            "nodegroups": nodegroups,
            "nodes": raw_nodes,
            "pods": raw_pods,
            "statefulsets": sets,
            "notebooks": notebooks,
        }
        unread = {name for name, value in sources.items() if value is None}
        if utilisation is not None and not utilisation.by_pod and utilisation.note:
            unread.add("prometheus")
        nodegroups = self._fill_instance_types(nodegroups, raw_nodes)
        gpu_groups = tuple(g for g in nodegroups if g.gpus_per_node > 0)
        group_names = {g.name for g in gpu_groups}
        types = {g.name: g.instance_type for g in gpu_groups}
        nodes = tuple(
            n
            for n in (_node(obj, types) for obj in raw_nodes or [])
            if n is not None and n.nodegroup in group_names
        )
        pods = tuple(_gpu_pod(obj, sets) for obj in raw_pods) if raw_pods is not None else ()
        if raw_pods is None:
            run.note("Without the pod list no node or notebook can be judged idle this time.")
        by_name = {(nb.namespace, nb.name): nb for nb in notebooks or ()}
        activity = self._activity(run, pods, by_name) if notebooks is not None else {}
        if utilisation is not None and raw_pods is not None:
            keep = {(p.namespace, p.name) for p in pods}
            utilisation = GpuUtilisation(
                by_pod={k: v for k, v in utilisation.by_pod.items() if k in keep}, note=utilisation.note
            )
        return Inventory(
            taken_at=run.now,
            region=self._region,
            nodegroups=gpu_groups,
            nodes=nodes,
            pods=pods,
            notebooks=tuple(sorted(by_name.values(), key=lambda nb: (nb.namespace, nb.name))),
            activity=activity,
            utilisation=utilisation,
            notes=tuple(sorted(set(run.notes))),  # threads add them in any order; reports compare them
            unread=frozenset(unread),
            calls=run.calls.snapshot(),
        )

    # -- AWS ---------------------------------------------------------------------------------------

    def _boto(self) -> boto3.Session:
        if self._session is None:
            self._session = boto3.Session()
        return self._session

    def _eks(self) -> EKSClient:
        with self._clients_lock:
            if self._eks_client is None:
                self._eks_client = self._boto().client(
                    "eks", region_name=self._region, endpoint_url=self._endpoint, config=_CLIENT_CONFIG
                )
            return self._eks_client

    def _ec2(self) -> EC2Client:
        with self._clients_lock:
            if self._ec2_client is None:
                self._ec2_client = self._boto().client(
                    "ec2", region_name=self._region, endpoint_url=self._endpoint, config=_CLIENT_CONFIG
                )
            return self._ec2_client

    def _nodegroups(self, run: _Scan, workspaces: Mapping[str, str]) -> list[Nodegroup] | None:
        try:
            names = self._nodegroup_names(run)
        except KfError as exc:
            run.note(f"EKS nodegroups of cluster {self._cluster} could not be listed: {exc.user_message}")
            return None
        described: list[Obj] = []
        workers = max(1, min(self._limits.describe_concurrency, len(names)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kfbot-eks") as pool:
            futures = [(name, pool.submit(self._describe, run, name)) for name in names]
            for name, future in futures:
                try:
                    described.append(future.result())
                except KfError as exc:
                    run.note(f"EKS nodegroup {name} could not be read: {exc.user_message}")
        gpus = self._gpu_counts(run, {t for ng in described for t in ng.get("instanceTypes") or []})
        result = []
        for ng in described:
            instance_types = [str(t) for t in ng.get("instanceTypes") or []]
            scaling = ng.get("scalingConfig") or {}
            name = str(ng.get("nodegroupName", ""))
            result.append(
                Nodegroup(
                    name=name,
                    workspace=workspaces.get(name),
                    instance_type=instance_types[0] if instance_types else "",
                    gpus_per_node=max((gpus.get(t, 0) for t in instance_types), default=0),
                    status=str(ng.get("status", "")),
                    min_size=int(scaling.get("minSize", 0)),
                    max_size=int(scaling.get("maxSize", 0)),
                    desired_size=int(scaling.get("desiredSize", 0)),
                )
            )
        return sorted(result, key=lambda g: g.name)

    def _nodegroup_names(self, run: _Scan) -> list[str]:
        names: list[str] = []
        token: str | None = None
        with _aws_call(f"listing the nodegroups of EKS cluster {self._cluster}"):
            while True:
                run.calls.add("eks.ListNodegroups")
                if token:
                    page = self._eks().list_nodegroups(
                        clusterName=self._cluster, maxResults=self._limits.eks_page_size, nextToken=token
                    )
                else:
                    page = self._eks().list_nodegroups(
                        clusterName=self._cluster, maxResults=self._limits.eks_page_size
                    )
                names += page.get("nodegroups", [])
                token = page.get("nextToken")
                if not token:
                    return names

    def _describe(self, run: _Scan, name: str) -> Obj:
        run.calls.add("eks.DescribeNodegroup")
        with _aws_call(f"reading EKS nodegroup {name}"):
            return dict(
                self._eks().describe_nodegroup(clusterName=self._cluster, nodegroupName=name)["nodegroup"]
            )

    def _gpu_counts(self, run: _Scan, instance_types: set[str]) -> dict[str, int]:
        """GPUs per instance type: EC2's answer (cached), else the built-in table for what EC2
        could not say."""
        with self._types_lock:
            unknown = sorted(t for t in instance_types if t not in self._gpu_types)
        if unknown:
            try:
                found = self._describe_instance_types(run, unknown)
            except KfError as exc:
                found = {}
                run.note(
                    f"EC2 instance types could not be read ({exc.user_message}); GPU counts come "
                    "from the built-in table."
                )
            with self._types_lock:
                self._gpu_types.update(found)
        with self._types_lock:
            counts = {t: self._gpu_types[t] for t in instance_types if t in self._gpu_types}
        for t in instance_types - counts.keys():
            info = prices.gpu_instance_info(t)
            counts[t] = info.gpus if info is not None else 0
            if info is None:
                run.note(f"The GPU count of instance type {t} is unknown; its nodegroups are left out.")
        return counts

    def _describe_instance_types(self, run: _Scan, types: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with _aws_call("reading EC2 instance types"):
            for start in range(0, len(types), 100):  # DescribeInstanceTypes takes at most 100 names
                token: str | None = None
                while True:
                    run.calls.add("ec2.DescribeInstanceTypes")
                    chunk = list(types[start : start + 100])
                    if token:
                        page = self._ec2().describe_instance_types(InstanceTypes=chunk, NextToken=token)  # type: ignore[arg-type]
                    else:
                        page = self._ec2().describe_instance_types(InstanceTypes=chunk)  # type: ignore[arg-type]
                    for info in page.get("InstanceTypes", []):
                        gpus = info.get("GpuInfo", {}).get("Gpus", [])
                        found[str(info.get("InstanceType"))] = sum(int(g.get("Count", 0)) for g in gpus)
                    token = page.get("NextToken")
                    if not token:
                        break
        return found

    def _fill_instance_types(
        self, nodegroups: list[Nodegroup] | None, nodes: list[Obj] | None
    ) -> list[Nodegroup]:
        """A nodegroup made from a launch template has no ``instanceTypes``: take its nodes' label."""
        if nodegroups is None:
            return []
        missing = [g for g in nodegroups if not g.instance_type]
        if not missing or not nodes:
            return nodegroups
        seen: dict[str, str] = {}
        for obj in nodes:
            labels = _labels(obj)
            group, itype = labels.get(NODEGROUP_LABEL, ""), _instance_type(labels)
            if group and itype:
                seen.setdefault(group, itype)
        result = []
        for g in nodegroups:
            itype = g.instance_type or seen.get(g.name, "")
            if g.instance_type or not itype:
                result.append(g)
                continue
            with self._types_lock:
                count = self._gpu_types.get(itype)
            if count is None:
                info = prices.gpu_instance_info(itype)
                count = info.gpus if info is not None else 0
            result.append(
                Nodegroup(g.name, g.workspace, itype, count, g.status, g.min_size, g.max_size, g.desired_size)
            )
        return result

    # -- Kubernetes --------------------------------------------------------------------------------

    def _pages(
        self,
        run: _Scan,
        kind: Kind,
        fetch: Callable[..., Any],
        decode: Callable[[bytes], tuple[Sequence[Obj], str]] | None = None,
        **kwargs: Any,
    ) -> Iterator[Obj]:
        """Every item of a list, page by page (``limit``/``continue``) as raw JSON; ``decode``
        (default: ``json.loads``) turns a page's bytes into the items wanted and the token.

        A ``continue`` token the apiserver no longer has (410 Gone after an etcd compaction)
        restarts the list once from the beginning; callers key what they keep by name, so an item
        seen twice is not counted twice."""
        token: str | None = None
        restarted = False
        while True:
            run.calls.add(f"k8s.list {kind.plural}")
            args = dict(
                kwargs,
                limit=self._limits.page_size,
                _preload_content=False,
                _request_timeout=self._limits.list_timeout,
            )
            if token:
                args["_continue"] = token
            try:
                response = fetch(**args)
                items, token = (decode or _decode_list)(response.data)
            except ApiException as exc:
                if exc.status == 410 and token and not restarted:
                    restarted, token = True, None
                    continue
                raise translate(exc, verb="list", kind=kind, namespace=None, name=None) from exc
            except urllib3.exceptions.HTTPError as exc:
                raise translate(exc, verb="list", kind=kind, namespace=None, name=None) from exc
            except ValueError as exc:
                raise KfError(f"The Kubernetes API sent an unreadable {kind.plural} list.") from exc
            yield from items
            if not token:
                return

    def _list(
        self, run: _Scan, kind: Kind, fetch: Callable[..., Any], what: str, **kwargs: Any
    ) -> list[Obj] | None:
        try:
            return list(self._pages(run, kind, fetch, **kwargs))
        except KfError as exc:
            run.note(f"{what} could not be listed: {exc.user_message}")
            return None

    def _nodes(self, run: _Scan) -> list[Obj] | None:
        core = client.CoreV1Api(self._api)
        return self._list(run, NODE, core.list_node, "Nodes", label_selector=NODEGROUP_LABEL)

    def _gpu_pod_objects(self, run: _Scan) -> list[Obj] | None:
        """Non-terminated pods that request GPUs, keyed so a restarted list counts each once."""
        core = client.CoreV1Api(self._api)
        kept: dict[tuple[str, str], Obj] = {}
        try:
            pages = self._pages(
                run, POD, core.list_pod_for_all_namespaces, _decode_gpu_pods, field_selector=RUNNING_PODS
            )
            for obj in pages:
                if _pod_gpus(obj) > 0:
                    meta = obj.get("metadata") or {}
                    kept[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = obj
        except KfError as exc:
            run.note(f"Pods could not be listed: {exc.user_message}")
            return None
        return [kept[k] for k in sorted(kept)]

    def _notebook_sets(self, run: _Scan) -> dict[tuple[str, str], str] | None:
        """(namespace, StatefulSet) -> the Notebook that controls it."""
        apps = client.AppsV1Api(self._api)
        objs = self._list(run, STATEFUL_SET, apps.list_stateful_set_for_all_namespaces, "StatefulSets")
        if objs is None:
            run.note("Without StatefulSets, notebook pods cannot be told from other GPU pods.")
            return None
        sets: dict[tuple[str, str], str] = {}
        for obj in objs:
            owner = _controller(obj)
            if owner and owner.get("kind") == "Notebook" and _group(owner) == NOTEBOOK.group:
                meta = obj.get("metadata") or {}
                sets[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = str(owner.get("name", ""))
        return sets

    def _notebooks(self, run: _Scan) -> list[Notebook] | None:
        custom = client.CustomObjectsApi(self._api)

        def fetch(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(
                NOTEBOOK.group, NOTEBOOK.version, NOTEBOOK.plural, **kwargs
            )

        objs = self._list(run, NOTEBOOK, fetch, "Kubeflow Notebooks")
        return None if objs is None else [_notebook(obj) for obj in objs]

    # -- notebook servers --------------------------------------------------------------------------

    def _activity(
        self, run: _Scan, pods: Sequence[GpuPod], notebooks: Mapping[tuple[str, str], Notebook]
    ) -> dict[tuple[str, str], NotebookActivity]:
        holding = sorted(
            {(p.namespace, p.notebook) for p in pods if p.workload == "notebook" and p.notebook and p.node}
        )
        result: dict[tuple[str, str], NotebookActivity] = {}
        to_probe: list[tuple[str, str]] = []
        for key in holding:
            nb = notebooks.get((key[0], str(key[1])))
            if nb is None:
                result[(key[0], str(key[1]))] = NotebookActivity("unknown", note="its Notebook was not found")
            elif nb.stopped:
                continue  # stopping: never idle, nothing to read
            elif (server := NON_JUPYTER_SERVERS.get(nb.server_type)) is not None:
                result[(nb.namespace, nb.name)] = NotebookActivity(
                    "unknown", note=f"a {server} server, not Jupyter: its activity cannot be read"
                )
            else:
                to_probe.append((nb.namespace, nb.name))
        if not to_probe:
            return result
        workers = max(1, min(self._limits.probe_concurrency, len(to_probe)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kfbot-probe")
        try:
            futures = {key: pool.submit(self._probe_notebook, run, *key) for key in to_probe}
            wait(futures.values(), timeout=self._limits.probe_budget)
            late = 0
            for key, future in futures.items():
                if future.done() and not future.cancelled():
                    result[key] = future.result()
                else:
                    late += 1
                    result[key] = NotebookActivity(
                        "unknown", note="not read within the scan's time budget for notebook servers"
                    )
            if late:
                run.note(f"{late} notebook server(s) were not read within the scan's time budget.")
        finally:
            # Probes still running end at their own deadline; the scan does not wait for them.
            pool.shutdown(wait=False, cancel_futures=True)
        return result

    def notebook_activity(self, namespace: str, name: str, idle_window: timedelta) -> NotebookActivity:
        """One notebook server's activity now, read as the scan reads it (the guard before an
        automatic stop, ``kubeflow.notebook.idle``)."""
        return self._probe_notebook(_Scan(now=self._clock.now(), idle_window=idle_window), namespace, name)

    def _probe_notebook(self, run: _Scan, namespace: str, name: str) -> NotebookActivity:
        base = f"{self._notebook_url(namespace, name)}/notebook/{quote(namespace)}/{quote(name)}/api"
        kernels = self._read_jupyter(run, f"{base}/kernels", "kernels")
        terminals = self._read_jupyter(run, f"{base}/terminals", "terminals")
        return judge_activity(kernels, terminals, run.now, run.idle_window)

    def _read_jupyter(self, run: _Scan, url: str, what: str) -> list[Obj] | str:
        """The list the server sent, or why there is none (a note)."""
        run.calls.add("jupyter")
        answer = self._get(url, JUPYTER_MAX_BYTES)
        if isinstance(answer, str):
            return f"the notebook server {answer} (/api/{what})"
        status, data = answer
        if status != 200:
            return f"the notebook server answered HTTP {status} to /api/{what}"
        try:
            body = json.loads(data)
        except ValueError:
            return f"the notebook server does not answer like Jupyter (/api/{what} is not JSON)"
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            return f"the notebook server does not answer like Jupyter (/api/{what} is not a list)"
        return body

    def _get(self, url: str, limit: int) -> tuple[int, bytes] | str:
        """GET with a hard deadline for the whole exchange and a size cap, or why not ("timed out",
        "unreachable", "answered more than N bytes"). A notebook server is whatever its user runs:
        it may drip bytes (each within a per-read timeout, which each byte would reset) or send
        megabytes, and neither may hold up or bloat the scan. So every GET has its own connection,
        closed after the answer and never pooled (a half-read one would hand its leftover drip to
        the next GET as a status line), and a watchdog shuts its socket down at the deadline, which
        ends any read in progress, status line and headers included."""
        deadline = time.monotonic() + self._probe.request_timeout
        parsed = urllib3.util.parse_url(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return "unreachable"
        secure = parsed.scheme == "https"
        conn = (urllib3.connection.HTTPSConnection if secure else urllib3.connection.HTTPConnection)(
            parsed.host, parsed.port, timeout=self._probe.request_timeout
        )
        watchdog = threading.Timer(self._probe.request_timeout, _cut, args=(conn,))
        watchdog.daemon = True
        try:
            try:
                watchdog.start()
                conn.connect()
                if time.monotonic() > deadline:
                    return "timed out"  # the watchdog may have fired before the socket existed
                conn.request(
                    "GET", parsed.request_uri, headers={"Accept": "application/json"}, preload_content=False
                )
                response = conn.getresponse()
                chunks: list[bytes] = []
                size = 0
                while chunk := response.read1(64 * 1024):  # what one recv gave: the deadline holds
                    size += len(chunk)
                    if size > limit:
                        return f"answered more than {limit // 1024} KiB"
                    if time.monotonic() > deadline:
                        return "timed out"
                    chunks.append(chunk)
            except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
                return "timed out" if time.monotonic() >= deadline else _failure(exc)
            if time.monotonic() > deadline:
                return "timed out"  # cut by the watchdog: what was read is not the whole answer
            return response.status, b"".join(chunks)
        finally:
            watchdog.cancel()
            conn.close()

    # -- Prometheus --------------------------------------------------------------------------------

    def _utilisation(self, run: _Scan) -> GpuUtilisation:
        window = max(60, int(run.idle_window.total_seconds()))
        series: dict[str, list[Obj]] = {}
        failures: list[str] = []
        for metric in (ENGINE_ACTIVE, GPU_UTIL):
            query = (
                f"max by (namespace, pod, exported_namespace, exported_pod) "
                f"(max_over_time({metric}[{window}s]))"
            )
            outcome = self._prometheus(run, query)
            if isinstance(outcome, str):
                failures.append(outcome)
            else:
                series[metric] = outcome
        if not series:
            return GpuUtilisation(
                by_pod={},
                note=f"Prometheus could not be read ({failures[0]}); GPU utilisation is not used this time.",
            )
        by_pod: dict[tuple[str, str], float] = {}
        unlabelled = 0
        # Busy wins: any pod Prometheus scrapes can publish a series naming another pod, so only the
        # highest value of every series of both metrics counts; a lie can then only make a GPU look
        # busier (never reported, never stopped), never idle.
        for metric, scale in ((GPU_UTIL, 100.0), (ENGINE_ACTIVE, 1.0)):
            for item in series.get(metric, []):
                key = pod_of(item.get("metric") or {})
                value = _sample(item.get("value"))
                if key is None:
                    unlabelled += 1
                    continue
                if value is None:
                    continue
                share = min(max(value / scale, 0.0), 1.0)
                by_pod[key] = max(by_pod.get(key, 0.0), share)
        note = ""
        if not by_pod:
            note = (
                "Prometheus has no DCGM GPU metrics with pod labels (enable the DCGM exporter's "
                "Kubernetes pod mapping); GPU utilisation is not used this time."
            )
        return GpuUtilisation(by_pod=by_pod, note=note)

    def _prometheus(self, run: _Scan, query: str) -> list[Obj] | str:
        base = str(self._probe.prometheus_url).rstrip("/")
        params = urlencode({"query": query, "time": f"{run.now.timestamp():.3f}"})
        run.calls.add("prometheus")
        answer = self._get(f"{base}/api/v1/query?{params}", PROMETHEUS_MAX_BYTES)
        if isinstance(answer, str):
            return answer
        status, data = answer
        try:
            body = json.loads(data)
        except ValueError:
            return f"HTTP {status}, not a Prometheus answer"
        if not isinstance(body, dict):
            return f"HTTP {status}, not a Prometheus answer"
        if body.get("status") != "success":
            return f"HTTP {status}: {scrub(str(body.get('errorType', 'error')))}"
        vector = body.get("data") or {}
        if not isinstance(vector, dict) or vector.get("resultType") != "vector":
            return "an answer that is not an instant vector"
        result = vector.get("result")
        return [item for item in result if isinstance(item, dict)] if isinstance(result, list) else []


# -- pure pieces (tested directly and through the scan) ---------------------------------------------


def _settle(run: _Scan, future: Future[T], what: str) -> T | None:
    """A source's result; a failure that is not one of ours (a bug, an answer of a shape nobody
    expected) is logged and becomes a note, so one source never fails the scan."""
    try:
        return future.result()
    except Exception:
        log.exception("the GPU scan failed to read %s", what)
        run.note(f"{what} could not be read (an unexpected failure; the bot's log has the details).")
        return None


def _decode_list(data: bytes) -> tuple[list[Obj], str]:
    page = json.loads(data)
    if not isinstance(page, dict):
        raise ValueError("not a list")
    raw = page.get("items") or []
    if not isinstance(raw, list):
        raise ValueError("items is not a list")
    items = [item for item in raw if isinstance(item, dict)]
    return items, str((page.get("metadata") or {}).get("continue") or "")


class _Owner(msgspec.Struct, rename="camel", frozen=True):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    controller: bool = False


class _Meta(msgspec.Struct, rename="camel", frozen=True):
    name: str = ""
    namespace: str = ""
    owner_references: tuple[_Owner, ...] = ()


class _Resources(msgspec.Struct, frozen=True):
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}


class _Container(msgspec.Struct, frozen=True):
    resources: _Resources = _Resources()


class _PodSpec(msgspec.Struct, rename="camel", frozen=True):
    node_name: str = ""
    containers: tuple[_Container, ...] = ()
    init_containers: tuple[_Container, ...] = ()


class _Pod(msgspec.Struct, frozen=True):
    metadata: _Meta = _Meta()
    spec: _PodSpec = _PodSpec()


class _ListMeta(msgspec.Struct, frozen=True):
    continue_: str = msgspec.field(default="", name="continue")


class _PodList(msgspec.Struct, frozen=True):
    metadata: _ListMeta = _ListMeta()
    items: tuple[_Pod, ...] = ()


_POD_LIST: Final = msgspec.json.Decoder(_PodList)


def _decode_gpu_pods(data: bytes) -> tuple[list[Obj], str]:
    """A pod page reduced to the GPU pods, each with only the fields the scan reads.

    A pod body is ~8 KB (containers, env, volumes, status) and a page has 500 of them; decoding
    only names, owners, node and resources skips the rest without building it, ~7x faster than
    ``json.loads``. A page that does not fit these types (a field of an unexpected JSON type)
    is read with ``json.loads`` instead."""
    try:
        page = _POD_LIST.decode(data)
    except msgspec.ValidationError:
        return _decode_list(data)
    except msgspec.DecodeError as exc:
        raise ValueError("not JSON") from exc
    pods = [msgspec.to_builtins(pod) for pod in page.items if _pod_gpus_struct(pod) > 0]
    return [p for p in pods if isinstance(p, dict)], page.metadata.continue_


def _pod_gpus_struct(pod: _Pod) -> int:
    def gpus(container: _Container) -> int:
        resources = container.resources
        return _quantity(resources.requests.get(GPU_RESOURCE, resources.limits.get(GPU_RESOURCE, 0)))

    main = sum(gpus(c) for c in pod.spec.containers)
    return max(main, max((gpus(c) for c in pod.spec.init_containers), default=0))


def judge_activity(
    kernels: list[Obj] | str, terminals: list[Obj] | str, now: datetime, window: timedelta
) -> NotebookActivity:
    """The culler's reading of ``/api/kernels`` and ``/api/terminals``; a ``str`` is why that list
    could not be read. Busy on any sign of activity; idle only on full, old evidence."""
    times: list[datetime] = []
    busy_kernel = False
    for kernel in kernels if isinstance(kernels, list) else []:
        busy_kernel = busy_kernel or kernel.get("execution_state") != "idle"
        if (t := _parse_time(kernel.get("last_activity"))) is not None:
            times.append(t)
    for terminal in terminals if isinstance(terminals, list) else []:
        if (t := _parse_time(terminal.get("last_activity"))) is not None:
            times.append(t)
    latest = max(times, default=None)
    if busy_kernel or (latest is not None and now - latest < window):
        return NotebookActivity("busy", last_activity=latest)
    problems = [p for p in (kernels, terminals) if isinstance(p, str)]
    if problems:
        return NotebookActivity("unknown", last_activity=latest, note="; ".join(problems))
    assert isinstance(kernels, list) and isinstance(terminals, list)
    if not kernels:
        return NotebookActivity("unknown", last_activity=latest, note="the notebook server has no kernels")
    expected = len(kernels) + len(terminals)
    if len(times) < expected:
        return NotebookActivity(
            "unknown",
            last_activity=latest,
            note="the notebook server sent a last_activity that cannot be read",
        )
    return NotebookActivity("idle", last_activity=latest)


def pod_of(labels: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (namespace, pod) a DCGM series is about. ``exported_*`` wins: Prometheus renames the
    exporter's ``pod``/``namespace`` to those when the scrape target (the exporter's own pod)
    already has them, so then ``pod`` is the exporter, not the workload."""
    for ns_key, pod_key in (("exported_namespace", "exported_pod"), ("namespace", "pod")):
        pod, namespace = labels.get(pod_key), labels.get(ns_key)
        if pod and namespace:
            return str(namespace), str(pod)
    return None


def _failure(exc: BaseException) -> str:
    """ "timed out" or "unreachable"; urllib3's NewConnectionError is (for history) a timeout too."""
    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return "unreachable"
    timeouts = (urllib3.exceptions.TimeoutError, TimeoutError)
    return "timed out" if isinstance(cause, timeouts) else "unreachable"


def _cut(conn: urllib3.connection.HTTPConnection) -> None:
    """The watchdog: shutting the socket down ends a read blocked in another thread at once."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: the GET ended first
            sock.shutdown(socket.SHUT_RDWR)


def _sample(value: Any) -> float | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    try:
        number = float(value[1])
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _quantity(value: Any) -> int:
    """A GPU count as Kubernetes writes it (``"1"``, ``1``); anything else counts as none."""
    try:
        return max(int(str(value)), 0)
    except ValueError:
        return 0


def _container_gpus(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    # Extended resources default their request to the limit; an object seeded without defaults
    # may carry only the limit.
    return _quantity(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE, 0)))


def _pod_gpus(obj: Mapping[str, Any]) -> int:
    """Kubernetes' effective request: the larger of the containers' sum and any init container."""
    spec = obj.get("spec") or {}
    main = sum(_container_gpus(c) for c in spec.get("containers") or [] if isinstance(c, dict))
    init = max(
        (_container_gpus(c) for c in spec.get("initContainers") or [] if isinstance(c, dict)), default=0
    )
    return max(main, init)


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _instance_type(labels: Mapping[str, str]) -> str:
    return next((labels[k] for k in INSTANCE_TYPE_LABELS if labels.get(k)), "")


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, dict) and r.get("controller")), None)


def _group(ref: Mapping[str, Any]) -> str:
    api_version = str(ref.get("apiVersion", ""))
    return api_version.rpartition("/")[0]


def _workload(
    obj: Mapping[str, Any], sets: Mapping[tuple[str, str], str] | None
) -> tuple[Workload, str | None]:
    owner = _controller(obj)
    if owner is None:
        return "other", None
    kind, group = owner.get("kind"), _group(owner)
    namespace = str((obj.get("metadata") or {}).get("namespace", ""))
    if kind == "StatefulSet" and group == "apps" and sets is not None:
        notebook = sets.get((namespace, str(owner.get("name", ""))))
        return ("notebook", notebook) if notebook else ("other", None)
    if kind == "Job" and group == "batch":
        return "job", None
    if kind in _TRAINING_KINDS and group == "kubeflow.org":
        return "pytorchjob", None
    if kind == "Workflow" and group == "argoproj.io":
        return "pipeline", None
    return "other", None


def _gpu_pod(obj: Mapping[str, Any], sets: Mapping[tuple[str, str], str] | None) -> GpuPod:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    workload, notebook = _workload(obj, sets)
    return GpuPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node=str(spec["nodeName"]) if spec.get("nodeName") else None,
        gpus=_pod_gpus(obj),
        workload=workload,
        notebook=notebook,
    )


def _node(obj: Mapping[str, Any], types: Mapping[str, str]) -> Node | None:
    meta, labels = obj.get("metadata") or {}, _labels(obj)
    group = labels.get(NODEGROUP_LABEL)
    created = _parse_time(meta.get("creationTimestamp"))
    if not group or created is None:
        return None
    allocatable = (obj.get("status") or {}).get("allocatable") or {}
    return Node(
        name=str(meta.get("name", "")),
        nodegroup=group,
        instance_type=_instance_type(labels) or types.get(group, ""),
        gpus=_quantity(allocatable.get(GPU_RESOURCE, 0)),
        created_at=created,
    )


def _notebook(obj: Mapping[str, Any]) -> Notebook:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    containers = ((((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    containers = [c for c in containers if isinstance(c, dict)]
    resources = [c.get("resources") or {} for c in containers]
    gpus = sum(
        _quantity((r.get("limits") or {}).get(GPU_RESOURCE, (r.get("requests") or {}).get(GPU_RESOURCE, 0)))
        for r in resources
    )
    return Notebook(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        stopped=STOP_ANNOTATION in annotations,
        gpus=gpus,
        image=str(containers[0].get("image", "")) if containers else "",
        server_type=str(annotations.get(SERVER_TYPE_ANNOTATION) or "jupyter"),
    )


def nodegroup_workspaces(
    records: Sequence[tuple[str, Mapping[str, Mapping[str, Any]]]], cluster: str, create_action: str
) -> dict[str, str]:
    """Nodegroup name -> workspace from the registry: each workspace's ``created`` entries whose
    action is the nodegroup create action (the ones ``workspace.pin`` and ``workspace.delete``
    read), in ``cluster``."""
    mapping: dict[str, str] = {}
    for workspace, created in records:
        for entry in created.values():
            params = entry.get("params")
            if entry.get("action") != create_action or not isinstance(params, Mapping):
                continue
            if str(params.get("cluster", cluster)) == cluster and params.get("name"):
                mapping[str(params["name"])] = workspace
    return mapping
