"""Benchmark the idle-GPU scan (``provisioning.gpu_scan``) at EKS-sized clusters.

For each size it starts the fake apiserver and moto each in its own process (as the real
apiserver and AWS are: they do not share the bot's interpreter), seeds them with a cluster of
N GPU nodegroups (2 nodes each), one GPU pod per node (a fifth of them Kubeflow Notebooks with
their StatefulSets, the rest training jobs) and P pods in all with realistic bodies (~8 KB:
several containers, env, volumes, status), and serves the notebooks' ``/api/kernels`` and
``/api/terminals`` from the fake Jupyter server. Then it runs the scan twice (the second with the
instance-type cache warm) and prints wall time and API calls per kind.

The fake apiserver's first (Python) encoding of the objects is done before the clock starts,
so the times are the bot's: its calls, transfers and decoding, and moto's and the fakes' answers.

Goal: under 5 s at 100 nodegroups / 20k pods on the project's 2-core machine; the list calls
per kind depend on the page size only, never on the number of nodes or pods.

Usage: ``python -m bench.scan [--sizes 30x5000,30x20000,100x5000,100x20000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import boto3
from kubernetes import client

from handlers.cost.inventory import Inventory
from provisioning.gpu_scan import GpuScanner
from provisioning.settings import CostProbeSettings
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
    training_pod,
)
from tests.fakes.jupyter import FakeJupyter

GOAL_SECONDS = 5.0
NOW = EPOCH + timedelta(hours=6)
NODES_PER_GROUP = 2
NOTEBOOK_SHARE = 5  # every fifth GPU node runs a notebook


def _groups(count: int) -> list[GroupSpec]:
    return [
        GroupSpec(f"ws-{i:03d}-gpu", "g5.xlarge" if i % 3 else "g4dn.xlarge", nodes=NODES_PER_GROUP)
        for i in range(count)
    ]


def _serve_apiserver(groups: int, pods: int, conn: Connection) -> None:
    from tests.fakes.apiserver import FakeApiServer  # noqa: PLC0415 (only in the child)

    api = FakeApiServer()
    gpu_pods = 0
    for g, group in enumerate(_groups(groups)):
        namespace = f"ws-{g:03d}"
        ensure_namespace(api, namespace)
        for n, node_name in enumerate(seed_nodes(api, group)):
            if (g * NODES_PER_GROUP + n) % NOTEBOOK_SHARE == 0:
                add_notebook(api, namespace, f"lab-{n}", node_name=node_name)
            else:
                api.seed(training_pod(namespace, f"train-{n}", node_name, "pytorchjob"))
            gpu_pods += 1
    for pod in filler_pods(max(0, pods - gpu_pods)):
        ensure_namespace(api, pod["metadata"]["namespace"])
        api.seed(pod)
    # The real apiserver encodes in Go; the fake's first encoding of 20k pods in Python would be
    # measured as the bot's time. Encode once here (the fake then serves cached encodings).
    for path in (
        "/api/v1/pods",
        "/api/v1/nodes",
        "/apis/apps/v1/statefulsets",
        "/apis/kubeflow.org/v1/notebooks",
    ):
        api.handle("GET", path, "", b"")
    api.start()
    conn.send(api.url)
    conn.recv()  # until told to stop
    api.stop()


def _serve_moto(conn: Connection) -> None:
    import logging  # noqa: PLC0415

    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    conn.send(f"http://{host}:{port}")
    conn.recv()
    server.stop()


def _child(target: Any, *args: Any) -> tuple[mp.Process, Connection, str]:
    parent, child = mp.Pipe()
    process = mp.get_context("fork").Process(target=target, args=(*args, child), daemon=True)
    process.start()
    url = parent.recv()
    return process, parent, str(url)


def _aws_env() -> None:
    home = tempfile.mkdtemp(prefix="kfbot-bench-")
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=f"{home}/config",
        AWS_SHARED_CREDENTIALS_FILE=f"{home}/credentials",
    )
    for name in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def run_size(groups: int, pods: int) -> dict[str, Any]:
    started = time.perf_counter()
    moto, moto_conn, moto_url = _child(_serve_moto)
    api, api_conn, api_url = _child(_serve_apiserver, groups, pods)
    jupyter = FakeJupyter()
    jupyter.start()
    try:
        session = boto3.Session()
        eks = session.client("eks", region_name="us-east-1", endpoint_url=moto_url)
        create_eks_cluster(eks)
        for group in _groups(groups):
            create_nodegroup(eks, group)
        for g in range(groups):
            for n in range(NODES_PER_GROUP):
                if (g * NODES_PER_GROUP + n) % NOTEBOOK_SHARE == 0:
                    ns, name = f"ws-{g:03d}", f"lab-{n}"
                    jupyter.kernel(ns, name, NOW - timedelta(hours=5))
                    jupyter.terminal(
                        ns, name, NOW - timedelta(minutes=3) if g % 2 else NOW - timedelta(hours=4)
                    )
        setup = time.perf_counter() - started
        with client.ApiClient(client.Configuration(host=api_url)) as kube:
            scanner = GpuScanner(
                kube,
                region="us-east-1",
                cluster=CLUSTER,
                probe=CostProbeSettings(),
                clock=FakeClock(NOW),
                aws_endpoint_url=moto_url,
                session=session,
                notebook_url=lambda namespace, name: jupyter.url,
            )
            workspaces = {g.name: f"ws-{i:03d}" for i, g in enumerate(_groups(groups))}
            timings, inventories = [], []
            for _ in range(2):
                t0 = time.perf_counter()
                inventories.append(scanner.scan(timedelta(hours=2), workspaces))
                timings.append(time.perf_counter() - t0)
        return _row(groups, pods, setup, timings, inventories)
    finally:
        jupyter.stop()
        for process, conn in ((api, api_conn), (moto, moto_conn)):
            conn.send("stop")
            process.join(timeout=10)


def _row(
    groups: int, pods: int, setup: float, timings: list[float], inventories: list[Inventory]
) -> dict[str, Any]:
    cold, warm = inventories
    states: dict[str, int] = {}
    for activity in warm.activity.values():
        states[activity.state] = states.get(activity.state, 0) + 1
    return {
        "nodegroups": groups,
        "pods": pods,
        "setup_s": round(setup, 1),
        "cold_s": round(timings[0], 2),
        "warm_s": round(timings[1], 2),
        "gpu_nodes": len(warm.nodes),
        "gpu_pods": len(warm.pods),
        "notebooks": len(warm.notebooks),
        "activity": states,
        "calls_cold": dict(cold.calls),
        "calls_warm": dict(warm.calls),
        "notes": list(warm.notes),
    }


def _table(rows: Sequence[dict[str, Any]]) -> str:
    kinds = sorted({k for r in rows for k in r["calls_cold"]})
    head = ["nodegroups", "pods", "cold s", "warm s", "GPU nodes", "GPU pods", *kinds]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["nodegroups"], r["pods"], r["cold_s"], r["warm_s"], r["gpu_nodes"], r["gpu_pods"]]
        cells += [f"{r['calls_cold'].get(k, 0)}/{r['calls_warm'].get(k, 0)}" for k in kinds]
        lines.append(" | ".join(str(c) for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", default="30x5000,30x20000,100x5000,100x20000", help="NODEGROUPSxPODS, comma separated"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _aws_env()
    rows = []
    for size in args.sizes.split(","):
        groups, pods = (int(x) for x in size.lower().split("x"))
        rows.append(run_size(groups, pods))
        print(f"  measured {groups} nodegroups / {pods} pods", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"GPU scan, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs "
            f"(calls: cold/warm instance-type cache)"
        )
        print(_table(rows))
        for r in rows:
            notes = r["notes"] or "none"
            print(f"{r['nodegroups']}/{r['pods']}: notebook activity {r['activity']}; notes {notes}")
    largest = max(rows, key=lambda r: (r["nodegroups"], r["pods"]))
    ok = largest["cold_s"] < GOAL_SECONDS and largest["warm_s"] < GOAL_SECONDS
    print(
        f"goal: under {GOAL_SECONDS:.0f} s at {largest['nodegroups']}/{largest['pods']}: "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
