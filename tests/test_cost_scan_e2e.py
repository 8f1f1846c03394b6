"""The idle report fed by the real scan: the fake apiserver (Nodes, Pods, StatefulSets, Notebooks
validated against the CRD), moto (EKS), the fake Jupyter server, the fake Slack Web API and a
simulated clock, through ``Backend.observe_idle`` and the reporter."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from kubernetes import client
from slack_sdk import WebClient

from bot.cost import CostReporter
from handlers.actions import ActionName
from handlers.settings import CoreSettings, CostSettings, WorkspaceDefaults
from provisioning import ProvisioningSettings, build_backend
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.gpu_cluster import (
    CLUSTER,
    EPOCH,
    GroupSpec,
    add_notebook,
    create_eks_cluster,
    create_nodegroup,
    seed_nodes,
)
from tests.fakes.jupyter import FakeJupyter
from tests.fakes.slack import FakeSlack


def test_a_scanned_idle_notebook_and_empty_node_are_reported_once_and_the_clock_is_kept(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    kube_api_client: client.ApiClient,
    jupyter: FakeJupyter,
    fake_slack: FakeSlack,
    tmp_path: Path,
) -> None:
    clock = FakeClock(EPOCH + timedelta(hours=6))
    create_eks_cluster(aws.client("eks"))
    group = GroupSpec("team-a-gpu", nodes=2)
    create_nodegroup(aws.client("eks"), group)
    nodes = seed_nodes(apiserver, group)
    add_notebook(apiserver, "team-a", "lab", node_name=nodes[0])
    jupyter.kernel("team-a", "lab", clock.now() - timedelta(hours=5))
    jupyter.terminal("team-a", "lab", clock.now() - timedelta(hours=5))
    cost = CostSettings(idle_after=timedelta(hours=2), cost_channel="CCOST")
    core = CoreSettings(workspace=WorkspaceDefaults(cluster=CLUSTER), cost=cost)
    settings = ProvisioningSettings(
        mode="live",
        database_url=f"sqlite:///{tmp_path}/kfbot.db",
        audit_key=b"k" * 32,
        aws_endpoint_url=aws.url,
    )
    backend = build_backend(
        settings, core, clock, kube_api=kube_api_client, notebook_url=lambda namespace, name: jupyter.url
    )
    backend.migrate()
    created = {
        "nodegroup": {
            "action": ActionName.NODEGROUP.value,
            "params": {"cluster": CLUSTER, "name": group.name},
        }
    }
    with backend.db.uow() as uow:  # the registry row a workspace create leaves
        uow.registry.put_workspace("team-a", "team-a", "alice@example.com", "R1", created, clock.now())
        uow.commit()
    fake_slack.add_user("UALICE", "alice@example.com")
    slack = WebClient(token="xoxb-test", base_url=fake_slack.base_url)
    reporter = CostReporter(slack, backend, backend.uow, clock, cost, "CADMIN", lambda email: "UALICE")

    out = reporter.scan_once()  # the notebook has been idle 5h by its own server's dates
    assert out.posted == ("CCOST",)
    (msg,) = fake_slack.messages_in("CCOST")
    assert "notebook `team-a/lab`" in str(msg["text"]) and "<@UALICE>" in str(msg["text"])
    assert "nodegroup `team-a-gpu`" not in str(msg["text"])  # its empty node: not 2h yet

    clock.advance(timedelta(hours=2, minutes=5))
    out = reporter.scan_once()
    assert out.edited == out.threaded == ("CCOST",)
    (msg,) = fake_slack.messages_in("CCOST")[:1]
    assert "nodegroup `team-a-gpu`: 1 x g4dn.xlarge" in str(msg["text"]) and "1 of 2 nodes" in str(
        msg["text"]
    )
    scan = backend.gpu_status()
    nb = next(i for i in scan.observation.items if i.kind == "notebook")
    assert nb.since == EPOCH + timedelta(hours=1) and nb.established
    assert [(f.nodegroup, f.nodes, f.gpus_in_use) for f in scan.fleet] == [("team-a-gpu", 2, 1)]
    backend.close()
