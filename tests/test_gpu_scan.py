"""The GPU scan over real protocols: the fake apiserver (paginated lists, the real Notebook CRD),
moto (EKS, EC2 DescribeInstanceTypes), a fake Jupyter server and a fake Prometheus HTTP API."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from handlers.actions import ActionName
from handlers.cost.inventory import Inventory
from handlers.settings import CoreSettings, WorkspaceDefaults
from provisioning import ProvisioningSettings, build_backend
from provisioning.gpu_scan import GpuScanner, ScanLimits, judge_activity, pod_of
from provisioning.settings import CostProbeSettings
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv, Fault, FaultProxy
from tests.fakes.clock import FakeClock
from tests.fakes.gpu_cluster import (
    CLUSTER,
    EPOCH,
    GroupSpec,
    add_notebook,
    create_eks_cluster,
    create_nodegroup,
    ensure_namespace,
    filler_pods,
    seed_nodes,
    seed_pods,
    training_pod,
    workload_pod,
)
from tests.fakes.jupyter import FakeJupyter, Mode
from tests.fakes.prometheus import FakePrometheus

NOW = EPOCH + timedelta(hours=6)
WINDOW = timedelta(hours=2)
LONG_AGO = NOW - timedelta(hours=5)
RECENT = NOW - timedelta(minutes=10)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def make_scanner(
    kube_api_client: client.ApiClient, aws: AwsEnv, clock: FakeClock, jupyter: FakeJupyter
) -> Callable[..., GpuScanner]:
    create_eks_cluster(aws.client("eks"))

    def make(
        *,
        prometheus_url: str | None = None,
        notebook_url: str | None = None,
        endpoint: str | None = None,
        timeout: float = 10.0,
        **limits: Any,
    ) -> GpuScanner:
        # The default only bounds a hang: an answer from a fake on this machine must never be cut
        # for being late under load. A test that proves a cut passes a short timeout of its own.
        base = notebook_url or jupyter.url
        return GpuScanner(
            kube_api_client,
            region="us-east-1",
            cluster=CLUSTER,
            probe=CostProbeSettings(prometheus_url=prometheus_url, request_timeout=timeout),
            clock=clock,
            aws_endpoint_url=endpoint or aws.url,
            session=aws.server.boto_session(),
            notebook_url=lambda namespace, name: base,
            limits=ScanLimits(**limits),
        )

    return make


def add_group(apiserver: FakeApiServer, aws: AwsEnv, group: GroupSpec) -> list[str]:
    create_nodegroup(aws.client("eks"), group)
    return seed_nodes(apiserver, group)


def gpu_pod_keys(inventory: Inventory) -> set[tuple[str, str]]:
    return {(p.namespace, p.name) for p in inventory.pods}


# -- nodegroups and instance types -------------------------------------------------------------------


def test_nodegroups_are_listed_page_by_page_described_and_attributed(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    groups = [GroupSpec(f"ws-{i}-gpu", "g4dn.xlarge", nodes=1) for i in range(7)]
    for group in groups:
        add_group(apiserver, aws, group)
    add_group(apiserver, aws, GroupSpec("system", "m5.large", nodes=2, gpus=0))
    add_group(apiserver, aws, GroupSpec("big", "p4d.24xlarge", nodes=1, gpus=8))

    inventory = make_scanner(eks_page_size=3).scan(WINDOW, {"ws-0-gpu": "ws-0", "ws-3-gpu": "ws-3"})

    names = [g.name for g in inventory.nodegroups]
    assert names == sorted([g.name for g in groups] + ["big"])  # the CPU nodegroup is left out
    assert inventory.calls["eks.ListNodegroups"] == math.ceil(9 / 3)
    assert inventory.calls["eks.DescribeNodegroup"] == 9
    by_name = {g.name: g for g in inventory.nodegroups}
    assert by_name["ws-0-gpu"].workspace == "ws-0" and by_name["ws-3-gpu"].workspace == "ws-3"
    assert by_name["big"].workspace is None  # made by hand: unattributed
    assert (by_name["big"].gpus_per_node, by_name["big"].instance_type) == (8, "p4d.24xlarge")
    assert (by_name["ws-1-gpu"].status, by_name["ws-1-gpu"].desired_size, by_name["ws-1-gpu"].max_size) == (
        "ACTIVE",
        1,
        2,
    )
    assert {n.nodegroup for n in inventory.nodes} == set(by_name)
    assert all(n.gpus == by_name[n.nodegroup].gpus_per_node for n in inventory.nodes)
    assert inventory.notes == () and inventory.unread == frozenset()


def test_gpu_counts_come_from_ec2_once_then_from_the_cache(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    add_group(apiserver, aws, GroupSpec("a", "g5.12xlarge", gpus=4))
    add_group(apiserver, aws, GroupSpec("b", "g6.xlarge"))
    scanner = make_scanner()

    first = scanner.scan(WINDOW, {})
    second = scanner.scan(WINDOW, {})

    assert first.calls["ec2.DescribeInstanceTypes"] == 1
    assert "ec2.DescribeInstanceTypes" not in second.calls
    assert {g.name: g.gpus_per_node for g in second.nodegroups} == {"a": 4, "b": 1}


def test_gpu_counts_fall_back_to_the_table_when_ec2_fails(
    apiserver: FakeApiServer, aws: AwsEnv, fault_proxy: FaultProxy, make_scanner: Callable[..., GpuScanner]
) -> None:
    add_group(apiserver, aws, GroupSpec("a", "g5.12xlarge", gpus=4))
    fault_proxy.add(Fault("POST", "/", body_contains="Action=DescribeInstanceTypes", status=500, times=None))

    inventory = make_scanner(endpoint=fault_proxy.url).scan(WINDOW, {})

    assert [(g.name, g.gpus_per_node) for g in inventory.nodegroups] == [("a", 4)]  # handlers.prices' table
    assert any("EC2 instance types could not be read" in note for note in inventory.notes)
    assert all("<" not in note for note in inventory.notes)  # no raw AWS body


# -- pods ---------------------------------------------------------------------------------------------


def test_pods_are_read_page_by_page_and_only_running_gpu_pods_kept(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", nodes=2))
    filler = seed_pods(apiserver, filler_pods(730))
    ensure_namespace(apiserver, "team-a")
    apiserver.seed(training_pod("team-a", "train-0", nodes[0], "pytorchjob"))
    apiserver.seed(training_pod("team-a", "train-1", None, "job"))  # pending: still holds a claim
    done = training_pod("team-a", "train-old", nodes[1], "job")
    done["status"]["phase"] = "Succeeded"
    apiserver.seed(done)

    inventory = make_scanner(page_size=100).scan(WINDOW, {})

    assert gpu_pod_keys(inventory) == {("team-a", "train-0"), ("team-a", "train-1")}
    assert inventory.calls["k8s.list pods"] == math.ceil((filler + 2) / 100)
    pending = next(p for p in inventory.pods if p.name == "train-1")
    assert pending.node is None and pending.gpus == 1
    pod_lists = [r for r in apiserver.requests if r.path == "/api/v1/pods"]
    assert all(r.query["fieldSelector"] == "status.phase!=Succeeded,status.phase!=Failed" for r in pod_lists)
    assert all(r.query["limit"] == "100" for r in pod_lists)


def test_an_expired_continue_token_restarts_the_list_and_counts_each_pod_once(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu"))
    ensure_namespace(apiserver, "team-a")
    for i in range(5):
        apiserver.seed(training_pod("team-a", f"train-{i}", nodes[0], "job"))
    apiserver.fail_next("GET", r"^/api/v1/pods$", 410, query_regex="continue=")

    inventory = make_scanner(page_size=2).scan(WINDOW, {})

    assert sorted(p.name for p in inventory.pods) == [f"train-{i}" for i in range(5)]
    # the first page, the continued one answered 410 Expired, then the whole list again (3 pages)
    assert inventory.calls["k8s.list pods"] == 1 + 1 + 3
    assert inventory.notes == ()


@pytest.mark.parametrize("size", [(2, 2, 150), (6, 5, 1200)])
def test_list_calls_do_not_grow_with_nodes_and_pods(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner], size: tuple[int, int, int]
) -> None:
    groups, nodes_each, pods = size
    for g in range(groups):
        nodes = add_group(apiserver, aws, GroupSpec(f"ws-{g}-gpu", nodes=nodes_each))
        ensure_namespace(apiserver, f"ws-{g}")
        for n, node_name in enumerate(nodes):
            apiserver.seed(training_pod(f"ws-{g}", f"run-{n}", node_name, "job"))
    seed_pods(apiserver, filler_pods(pods))

    inventory = make_scanner(page_size=5000).scan(WINDOW, {})

    assert len(inventory.nodes) == groups * nodes_each and len(inventory.pods) == groups * nodes_each
    k8s = {k: v for k, v in inventory.calls.items() if k.startswith("k8s.")}
    assert k8s == {
        "k8s.list nodes": 1,
        "k8s.list pods": 1,
        "k8s.list statefulsets": 1,
        "k8s.list notebooks": 1,
    }
    assert inventory.calls["eks.ListNodegroups"] == 1
    assert inventory.calls["eks.DescribeNodegroup"] == groups  # one per nodegroup, never per node
    assert inventory.calls["ec2.DescribeInstanceTypes"] == 1


def test_workloads_are_told_apart_by_their_controllers_not_their_labels(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", nodes=1, gpus=8, instance_type="p4d.24xlarge"))
    node = nodes[0]
    add_notebook(apiserver, "ws-a", "lab", node_name=node)
    for kind in ("job", "pytorchjob", "pipeline", "other"):
        apiserver.seed(training_pod("ws-a", f"{kind}-pod", node, kind))
    impostor = training_pod("ws-a", "impostor", node, "other")
    impostor["metadata"]["labels"]["notebook-name"] = "lab"  # a label anyone can set
    apiserver.seed(impostor)
    two = workload_pod("ws-a", "two-gpus", node_name=node, gpus=2)  # no owner at all
    apiserver.seed(two)

    inventory = make_scanner().scan(WINDOW, {})

    workloads = {p.name: (p.workload, p.notebook) for p in inventory.pods}
    assert workloads == {
        "lab-0": ("notebook", "lab"),
        "job-pod": ("job", None),
        "pytorchjob-pod": ("pytorchjob", None),
        "pipeline-pod": ("pipeline", None),
        "other-pod": ("other", None),
        "impostor": ("other", None),
        "two-gpus": ("other", None),
    }
    assert next(p for p in inventory.pods if p.name == "two-gpus").gpus == 2
    assert [(nb.name, nb.gpus, nb.stopped) for nb in inventory.notebooks] == [("lab", 1, False)]


# -- notebook activity ---------------------------------------------------------------------------------


def arrange(jupyter: FakeJupyter, case: str) -> None:
    ns, name = "ws-a", "lab"
    if case == "busy-kernel":
        jupyter.kernel(ns, name, LONG_AGO, state="busy")
        jupyter.kernel(ns, name, LONG_AGO)
        jupyter.server(ns, name)
    elif case == "idle-kernels-recent-terminal":
        jupyter.kernel(ns, name, LONG_AGO)
        jupyter.terminal(ns, name, RECENT)
    elif case == "terminal-only-training":
        jupyter.terminal(ns, name, RECENT)
    elif case == "all-old":
        jupyter.kernel(ns, name, LONG_AGO)
        jupyter.kernel(ns, name, LONG_AGO - timedelta(hours=1))
        jupyter.terminal(ns, name, LONG_AGO)
    elif case == "old-kernels-no-terminals":
        jupyter.kernel(ns, name, LONG_AGO)
        jupyter.server(ns, name)
    elif case == "no-kernels":
        jupyter.server(ns, name)
    elif case == "terminals-404":
        jupyter.server(ns, name, mode="no-terminals")
        jupyter.kernel(ns, name, LONG_AGO)
    elif case == "rbac-denied":
        jupyter.server(ns, name, mode="rbac-denied")
    elif case == "html":
        jupyter.server(ns, name, mode="html")
    elif case == "slow":
        jupyter.server(ns, name, delay=1.5)
    elif case == "huge":
        jupyter.server(ns, name, mode="huge")
    elif case == "drip":
        jupyter.server(ns, name, mode="drip")
    elif case == "404":
        pass  # nothing serves /notebook/ws-a/lab


ACTIVITY_CASES = {
    "busy-kernel": ("busy", ""),
    "idle-kernels-recent-terminal": ("busy", ""),
    "terminal-only-training": ("busy", ""),
    "all-old": ("idle", ""),
    "old-kernels-no-terminals": ("idle", ""),
    "no-kernels": ("unknown", "no kernels"),
    "terminals-404": ("unknown", "HTTP 404 to /api/terminals"),
    "rbac-denied": ("unknown", "HTTP 403"),
    "html": ("unknown", "does not answer like Jupyter"),
    "slow": ("unknown", "timed out"),
    "404": ("unknown", "HTTP 404 to /api/kernels"),
    "huge": ("unknown", "answered more than 1024 KiB"),
    "drip": ("unknown", "timed out"),
}


@pytest.mark.parametrize("case", sorted(ACTIVITY_CASES))
def test_notebook_activity_is_read_like_the_culler_reads_it(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    jupyter: FakeJupyter,
    make_scanner: Callable[..., GpuScanner],
    case: str,
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu"))
    add_notebook(apiserver, "ws-a", "lab", node_name=nodes[0])
    arrange(jupyter, case)

    state, note = ACTIVITY_CASES[case]
    # Only a server that cannot answer in time (1.5 s late, or 8 s of dripping) meets the short
    # timeout; the rest answer within a hang's bound, however loaded the machine.
    cut = note == "timed out"
    inventory = make_scanner(timeout=0.5 if cut else 10.0).scan(WINDOW, {})

    activity = inventory.activity[("ws-a", "lab")]
    assert activity.state == state, activity
    assert note in activity.note
    assert inventory.calls["jupyter"] == 2
    assert jupyter.requests[:2] == ["/notebook/ws-a/lab/api/kernels", "/notebook/ws-a/lab/api/terminals"]
    if state == "idle":
        assert activity.last_activity == LONG_AGO


def test_an_unreachable_notebook_server_is_unknown(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu"))
    add_notebook(apiserver, "ws-a", "lab", node_name=nodes[0])

    inventory = make_scanner(notebook_url=closed_port_url()).scan(WINDOW, {})

    activity = inventory.activity[("ws-a", "lab")]
    assert (activity.state, "unreachable" in activity.note) == ("unknown", True)


def test_only_notebooks_holding_a_gpu_now_and_serving_jupyter_are_probed(
    apiserver: FakeApiServer, aws: AwsEnv, jupyter: FakeJupyter, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", gpus=8, instance_type="p4d.24xlarge"))
    add_notebook(apiserver, "ws-a", "running", node_name=nodes[0])
    add_notebook(apiserver, "ws-a", "stopped", node_name=None, stopped_at=NOW - timedelta(days=1))
    add_notebook(apiserver, "ws-a", "pending", node_name=None)
    add_notebook(apiserver, "ws-a", "vscode", node_name=nodes[0], server_type="group-one")
    add_notebook(apiserver, "ws-a", "cpu", node_name=nodes[0], gpus=0)
    jupyter.kernel("ws-a", "running", LONG_AGO)
    jupyter.terminal("ws-a", "running", LONG_AGO)

    inventory = make_scanner().scan(WINDOW, {})

    assert set(inventory.activity) == {("ws-a", "running"), ("ws-a", "vscode")}
    assert inventory.activity[("ws-a", "running")].state == "idle"
    vscode = inventory.activity[("ws-a", "vscode")]
    assert vscode.state == "unknown" and "VS Code" in vscode.note
    assert {r.split("/")[3] for r in jupyter.requests} == {"running"}
    assert {nb.name: nb.stopped for nb in inventory.notebooks}["stopped"] is True


def test_judge_activity_never_calls_idle_without_full_old_evidence() -> None:
    old = {"execution_state": "idle", "last_activity": "2026-03-02T09:00:00.000000Z"}
    fresh_terminal = {"name": "1", "last_activity": "2026-03-02T13:55:00.000000Z"}
    assert judge_activity([old], [], NOW, WINDOW).state == "idle"
    assert judge_activity([old], "unreachable", NOW, WINDOW).state == "unknown"
    assert judge_activity("unreachable", [fresh_terminal], NOW, WINDOW).state == "busy"
    assert judge_activity([{**old, "execution_state": "starting"}], [], NOW, WINDOW).state == "busy"
    assert judge_activity([{**old, "last_activity": "yesterday"}], [], NOW, WINDOW).state == "unknown"


# -- Prometheus --------------------------------------------------------------------------------------


@pytest.fixture
def gpu_pods(apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]) -> list[str]:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", gpus=8, instance_type="p4d.24xlarge"))
    ensure_namespace(apiserver, "ws-a")
    for name in ("train-a", "train-b", "train-c"):
        apiserver.seed(training_pod("ws-a", name, nodes[0], "pytorchjob"))
    return nodes


def samples(*values: float) -> list[tuple[Any, float]]:
    return [(NOW - timedelta(minutes=10 * i), v) for i, v in enumerate(values)]


def test_both_dcgm_metrics_are_read_and_the_busiest_value_per_pod_counts(
    gpu_pods: list[str], prometheus: FakePrometheus, make_scanner: Callable[..., GpuScanner]
) -> None:
    exporter = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x7k2p"}
    prometheus.add(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        {"gpu": "0", "exported_namespace": "ws-a", "exported_pod": "train-a", **exporter},
        samples(0.01, 0.72),
    )
    prometheus.add(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        {"gpu": "1", "exported_namespace": "ws-a", "exported_pod": "train-a", **exporter},
        samples(0.02),
    )
    prometheus.add(
        "DCGM_FI_DEV_GPU_UTIL",
        {"gpu": "0", "exported_namespace": "ws-a", "exported_pod": "train-a", **exporter},
        samples(3),
    )
    prometheus.add("DCGM_FI_DEV_GPU_UTIL", {"gpu": "2", "namespace": "ws-a", "pod": "train-b"}, samples(3, 4))
    # older than the window: not seen
    prometheus.add(
        "DCGM_FI_DEV_GPU_UTIL",
        {"gpu": "3", "namespace": "ws-a", "pod": "train-c"},
        [(NOW - timedelta(hours=3), 90.0), (NOW - timedelta(minutes=1), 1.0)],
    )

    inventory = make_scanner(prometheus_url=prometheus.url).scan(WINDOW, {})

    assert inventory.utilisation is not None
    assert dict(inventory.utilisation.by_pod) == {
        ("ws-a", "train-a"): 0.72,
        ("ws-a", "train-b"): 0.04,
        ("ws-a", "train-c"): 0.01,
    }
    assert inventory.utilisation.note == ""
    assert inventory.calls["prometheus"] == 2
    queries = [r["query"] for r in prometheus.requests]
    assert all("max_over_time" in q and "[7200s]" in q for q in queries)


def test_an_injected_series_can_make_a_gpu_look_busier_never_idle(
    gpu_pods: list[str], prometheus: FakePrometheus, make_scanner: Callable[..., GpuScanner]
) -> None:
    """Any pod Prometheus scrapes can publish a series whose (exported_)pod labels name another
    namespace's pod. Per pod the busiest value of every series of both metrics counts, so a lying
    ``0`` never hides real work."""
    exporter = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x7k2p"}
    liar = {"namespace": "evil", "pod": "metrics-0"}
    victim = {"exported_namespace": "ws-a", "exported_pod": "train-a"}
    prometheus.add("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", **victim, **exporter}, samples(97))
    prometheus.add("DCGM_FI_PROF_GR_ENGINE_ACTIVE", {"gpu": "0", **victim, **liar}, samples(0))
    # The other way round: real engine activity, a lying GPU_UTIL of 0.
    prometheus.add(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        {"gpu": "1", "exported_namespace": "ws-a", "exported_pod": "train-b", **exporter},
        samples(0.6),
    )
    prometheus.add(
        "DCGM_FI_DEV_GPU_UTIL",
        {"gpu": "1", "exported_namespace": "ws-a", "exported_pod": "train-b", **liar},
        samples(0),
    )
    # A lie can only raise a value: an injected 100 makes train-c busy (never idle, never stopped).
    prometheus.add(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE", {"gpu": "2", "namespace": "ws-a", "pod": "train-c"}, samples(0)
    )
    prometheus.add(
        "DCGM_FI_DEV_GPU_UTIL",
        {"gpu": "2", "exported_namespace": "ws-a", "exported_pod": "train-c", **liar},
        samples(100),
    )

    inventory = make_scanner(prometheus_url=prometheus.url).scan(WINDOW, {})

    assert inventory.utilisation is not None
    assert dict(inventory.utilisation.by_pod) == {
        ("ws-a", "train-a"): 0.97,
        ("ws-a", "train-b"): 0.6,
        ("ws-a", "train-c"): 1.0,
    }


def test_prometheus_unreachable_or_unlabelled_degrades_with_a_note(
    gpu_pods: list[str], prometheus: FakePrometheus, make_scanner: Callable[..., GpuScanner]
) -> None:
    down = make_scanner(prometheus_url=closed_port_url()).scan(WINDOW, {})
    assert down.utilisation is not None and dict(down.utilisation.by_pod) == {}
    assert "unreachable" in down.utilisation.note and "prometheus" in down.unread

    prometheus.add("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", "Hostname": "ip-10-0-1-23"}, samples(0))
    unlabelled = make_scanner(prometheus_url=prometheus.url).scan(WINDOW, {})
    assert unlabelled.utilisation is not None and dict(unlabelled.utilisation.by_pod) == {}
    assert "pod labels" in unlabelled.utilisation.note

    prometheus.add("DCGM_FI_DEV_GPU_UTIL", {"gpu": "1", "namespace": "ws-a", "pod": "train-a"}, samples(50))
    prometheus.fail_next(503)  # the ENGINE_ACTIVE query times out; GPU_UTIL still answers
    partial = make_scanner(prometheus_url=prometheus.url).scan(WINDOW, {})
    assert partial.utilisation is not None and dict(partial.utilisation.by_pod) == {("ws-a", "train-a"): 0.5}


def test_pod_of_prefers_the_exported_labels() -> None:
    assert pod_of({"pod": "dcgm", "namespace": "gpu", "exported_pod": "p", "exported_namespace": "ns"}) == (
        "ns",
        "p",
    )
    assert pod_of({"pod": "p", "namespace": "ns"}) == ("ns", "p")
    assert pod_of({"pod": "p"}) is None


# -- partial failures ----------------------------------------------------------------------------------


def test_a_failing_source_becomes_a_note_and_the_rest_is_still_read(
    apiserver: FakeApiServer, aws: AwsEnv, jupyter: FakeJupyter, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu"))
    add_notebook(apiserver, "ws-a", "lab", node_name=nodes[0])
    apiserver.fail_next("GET", r"^/api/v1/pods$", 500, times=10)
    apiserver.fail_next("GET", r"^/apis/kubeflow.org/v1/notebooks$", 403)

    inventory = make_scanner().scan(WINDOW, {})

    assert inventory.unread == frozenset({"pods", "notebooks"})
    assert [n.name for n in inventory.nodes] == nodes and inventory.pods == () and inventory.activity == {}
    assert any(note.startswith("Pods could not be listed") for note in inventory.notes)
    assert any("notebooks.kubeflow.org" in note and "RBAC" in note for note in inventory.notes)
    assert all("injected fault" not in note for note in inventory.notes)  # no raw Status text for 5xx


def test_an_object_of_an_unexpected_shape_is_a_note_not_a_failed_scan(
    apiserver: FakeApiServer, aws: AwsEnv, make_scanner: Callable[..., GpuScanner]
) -> None:
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu"))
    ensure_namespace(apiserver, "ws-a")
    apiserver.seed(training_pod("ws-a", "train", nodes[0], "job"))
    # seeded past validation: a Notebook whose annotations are a list (no CRD schema would allow it)
    apiserver.seed(
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "Notebook",
            "metadata": {"name": "odd", "namespace": "ws-a", "annotations": ["x"]},
            "spec": {},
        }
    )
    apiserver.fail_next(
        "GET", r"^/apis/apps/v1/statefulsets$", 200, body={"kind": "StatefulSetList", "items": 5}
    )

    inventory = make_scanner().scan(WINDOW, {})

    assert inventory.unread == frozenset({"notebooks", "statefulsets"})
    assert [p.name for p in inventory.pods] == ["train"] and len(inventory.nodes) == 1
    assert "Kubeflow Notebooks could not be read (an unexpected failure; the bot's log has the details)." in (
        inventory.notes
    )
    assert any("StatefulSets could not be listed" in note for note in inventory.notes)


def test_eks_failure_becomes_a_note(
    apiserver: FakeApiServer, aws: AwsEnv, fault_proxy: FaultProxy, make_scanner: Callable[..., GpuScanner]
) -> None:
    add_group(apiserver, aws, GroupSpec("ws-gpu"))
    fault_proxy.add(
        Fault(
            "GET",
            r"/clusters/kubeflow/node-groups",
            status=403,
            content_type="application/json",
            body=b'{"message": "User is not authorized"}',
            times=None,
        )
    )

    inventory = make_scanner(endpoint=fault_proxy.url).scan(WINDOW, {})

    assert inventory.nodegroups == () and "nodegroups" in inventory.unread
    assert any("could not be listed" in note and "eks" in note.lower() for note in inventory.notes)


# -- the public surface ----------------------------------------------------------------------------------


def test_backend_attributes_nodegroups_from_the_registry_in_live_mode(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    kube_api_client: client.ApiClient,
    clock: FakeClock,
    tmp_path: Path,
    jupyter: FakeJupyter,
    make_scanner: Callable[..., GpuScanner],
) -> None:

    nodes = add_group(apiserver, aws, GroupSpec("team-a-gpu"))
    add_group(apiserver, aws, GroupSpec("hand-made"))
    add_notebook(apiserver, "team-a", "lab", node_name=nodes[0])
    jupyter.kernel("team-a", "lab", LONG_AGO)
    jupyter.terminal("team-a", "lab", LONG_AGO)
    settings = ProvisioningSettings(
        mode="live",
        database_url=f"sqlite:///{tmp_path}/kfbot.db",
        audit_key=b"k" * 32,
        aws_endpoint_url=aws.url,
    )
    backend = build_backend(
        settings,
        CoreSettings(workspace=WorkspaceDefaults(cluster=CLUSTER)),
        clock,
        kube_api=kube_api_client,
        notebook_url=lambda namespace, name: jupyter.url,
    )
    backend.migrate()
    created = {
        "nodegroup": {
            "action": ActionName.NODEGROUP.value,
            "params": {"cluster": CLUSTER, "name": "team-a-gpu"},
        },
        "other-cluster": {
            "action": ActionName.NODEGROUP.value,
            "params": {"cluster": "elsewhere", "name": "hand-made"},
        },
        "bucket": {"action": ActionName.BUCKET.value, "params": {"bucket": "hand-made"}},
    }
    with backend.db.uow() as uow:
        uow.registry.put_workspace("team-a", "team-a", "alice@example.com", "R1", created, NOW)
        uow.commit()

    inventory = backend.gpu_inventory(WINDOW)

    assert {g.name: g.workspace for g in inventory.nodegroups} == {"team-a-gpu": "team-a", "hand-made": None}
    assert inventory.taken_at == NOW and inventory.region == "us-east-1"
    assert inventory.activity[("team-a", "lab")].state == "idle"  # read from the injected notebook URL
    backend.close()


def test_backend_in_dry_run_says_there_is_no_cluster(tmp_path: Path, clock: FakeClock) -> None:

    backend = build_backend(
        ProvisioningSettings(database_url=f"sqlite:///{tmp_path}/kfbot.db", audit_key=b"k" * 32),
        CoreSettings(),
        clock,
    )
    inventory = backend.gpu_inventory(WINDOW)
    assert inventory.nodegroups == () and inventory.pods == () and inventory.calls == {}
    assert inventory.notes == ("Dry-run mode has no cluster to scan.",)
    backend.close()


def _scan_in_thread(scanner: GpuScanner, limit: float) -> Inventory | None:
    """The scan on its own thread, given up on after ``limit`` s: an unbounded scan must fail the
    test, not hang the suite."""
    out: list[Inventory] = []
    worker = threading.Thread(target=lambda: out.append(scanner.scan(WINDOW, {})), daemon=True)
    worker.start()
    worker.join(limit)
    return out[0] if out else None


@pytest.mark.parametrize("mode", ["drip-forever", "drip-head"])
def test_a_server_that_drips_without_end_cannot_hold_up_the_scan(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    jupyter: FakeJupyter,
    make_scanner: Callable[..., GpuScanner],
    mode: Mode,
) -> None:
    """Each byte comes well within the per-read timeout (0.3 s < 2 s), so only a deadline over
    the whole answer (status line and headers included) ends the read; and a connection left
    half-read must never serve the next GET (it would read the drip as its status line). The
    deadline is 2 s, not 0.5, so the healthy server's answer is not cut on a loaded machine."""
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", gpus=8, instance_type="p4d.24xlarge"))
    add_notebook(apiserver, "ws-a", "evil", node_name=nodes[0])
    add_notebook(apiserver, "ws-a", "lab", node_name=nodes[0])
    jupyter.server("ws-a", "evil", mode=mode, drip_interval=0.3)
    jupyter.kernel("ws-a", "lab", LONG_AGO)
    jupyter.terminal("ws-a", "lab", LONG_AGO)

    inventory = _scan_in_thread(make_scanner(timeout=2.0, probe_concurrency=1), limit=60)

    assert inventory is not None, "the scan hung on a dripping notebook server"
    evil = inventory.activity[("ws-a", "evil")]
    assert (evil.state, "timed out" in evil.note) == ("unknown", True), evil
    assert inventory.activity[("ws-a", "lab")].state == "idle"
    assert jupyter.requests.count("/notebook/ws-a/evil/api/terminals") == 1


def test_the_notebook_probes_of_one_scan_stop_at_their_budget(
    apiserver: FakeApiServer, aws: AwsEnv, jupyter: FakeJupyter, make_scanner: Callable[..., GpuScanner]
) -> None:
    """One probe at a time, each cut at 2 x 0.5 s, and a budget of 1.2 s for all: the third and
    fourth server cannot have been read, and are unknown with the reason."""
    nodes = add_group(apiserver, aws, GroupSpec("ws-gpu", gpus=8, instance_type="p4d.24xlarge"))
    for i in range(4):
        add_notebook(apiserver, "ws-a", f"evil{i}", node_name=nodes[0])
        jupyter.server("ws-a", f"evil{i}", mode="drip-forever", drip_interval=0.1)

    inventory = _scan_in_thread(make_scanner(timeout=0.5, probe_concurrency=1, probe_budget=1.2), limit=30)

    assert inventory is not None, "the scan hung"
    states = {key: a for key, a in inventory.activity.items()}
    assert all(a.state == "unknown" for a in states.values()), states
    assert sum("budget" in a.note for a in states.values()) >= 2, states
