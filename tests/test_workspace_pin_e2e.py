"""Pinning a GPU workspace made before issue 8, end to end on the live composition.

The workspace is made by the bot and then put back into the state the previous version left
(nodegroup with only the ``nvidia.com/gpu`` taint, PodDefault with only its toleration, the
registry's create-time params with a nodeSelector). ``/kf workspace pin`` must then update the
PodDefault first and taint the nodegroup second, resume across a deferral between the two, and
change nothing when run again. AWS is reached through the fault proxy, so the test counts the
UpdateNodegroupConfig calls and can make EKS look busy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from bot import render
from bot.controls import control
from handlers import errors, parse, scheduling
from handlers.model import EventType, RequestState
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv, Fault, FaultProxy
from tests.fakes.clock import FakeClock
from tests.live_harness import ADMIN, ADMIN2, ALICE, CLUSTER, LiveStack, live_stack, seed_aws

NODEGROUP = "team-a-g4dn-xlarge"
PODDEFAULT = ("kubeflow.org/v1alpha1", "poddefaults", NODEGROUP, "team-a")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
WORKSPACE_TAINT = {"key": "kf-chatops/dedicated", "value": "team-a", "effect": "NO_SCHEDULE"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
def stack(
    sqlite_url: str,
    apiserver: FakeApiServer,
    aws: AwsEnv,
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LiveStack]:
    world = dataclasses.replace(seed_aws(aws.url), endpoint_url=fault_proxy.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)  # the bot's AWS chain, through the proxy
    with live_stack(sqlite_url, apiserver, world) as built:
        yield built


def taints(stack: LiveStack) -> list[dict[str, str]]:
    group = stack.aws("eks").describe_nodegroup(clusterName=CLUSTER, nodegroupName=NODEGROUP)["nodegroup"]
    return list(group["taints"])


def made_before_pinning(stack: LiveStack) -> None:
    """A GPU workspace as the version before issue 8 left it, in AWS, Kubernetes and the registry."""
    done = stack.apply(ALICE, "workspace new team-a --gpu 1")
    assert done.state is RequestState.SUCCEEDED, done.error
    stack.aws("eks").update_nodegroup_config(
        clusterName=CLUSTER, nodegroupName=NODEGROUP, taints={"removeTaints": [WORKSPACE_TAINT]}
    )
    poddefault = stack.apiserver.get(*PODDEFAULT)
    assert poddefault is not None
    poddefault["spec"]["tolerations"] = [GPU_TOLERATION]
    stack.apiserver.seed(poddefault)
    with stack.backend.db.uow() as uow:
        row = uow.registry.get_workspace("team-a")
        created = dict(row.created)
        created[f"Nodegroup/{NODEGROUP}"]["params"]["taints"] = [GPU_TAINT]
        pd = created[f"PodDefault/team-a/{NODEGROUP}"]["params"]
        pd.update(tolerations=[GPU_TOLERATION], node_selector={"kf-chatops/workspace": NODEGROUP})
        uow.registry.put_workspace(
            "team-a", row.namespace, row.owner, row.request_id, created, row.created_at
        )
        uow.commit()
    assert taints(stack) == [GPU_TAINT]


def pin_all(stack: LiveStack) -> str:
    return control(stack.core, stack.backend, ADMIN2, parse.PinAll(), render.SHELL)


def step_order(stack: LiveStack, request_id: str) -> list[str]:
    events = [json.loads(line) for line in stack.backend.audit_export("jsonl", None)]
    return [
        e["data"]["key"]
        for e in events
        if e.get("request_id") == request_id and e["type"] == EventType.STEP_SUCCEEDED.value
    ]


def poddefault_writes(stack: LiveStack) -> int:
    return sum(1 for r in stack.apiserver.requests
               if r.method in ("POST", "PATCH") and "/poddefaults" in r.path)


def test_pin_all_tolerates_first_taints_second_resumes_after_a_deferral_and_reruns_as_a_no_op(
    stack: LiveStack, fault_proxy: FaultProxy
) -> None:
    made_before_pinning(stack)
    assert isinstance(stack.clock, FakeClock)
    updates = fault_proxy.add(
        Fault("POST", f"/node-groups/{NODEGROUP}/update-config$", times=None, rewrite=lambda a: a)
    )

    def busy(answer: dict[str, Any]) -> dict[str, Any]:
        answer["nodegroup"]["status"] = "UPDATING"  # someone else's update: the taint step must wait
        return answer


    # An admin files one request per workspace that needs it; nothing applies before another approves.
    text = pin_all(stack)
    (request,) = [r for r in stack.requests() if r.kind == "workspace.pin"]
    assert f"`team-a`: filed `{request.id}`" in text and request.state is RequestState.PENDING
    assert "hand-made nodegroup" in request.plan.warnings[0]
    assert stack.run() == 0 and taints(stack) == [GPU_TAINT]
    with pytest.raises(errors.Forbidden, match="own request"):
        stack.approve(request.id, ADMIN2)
    stack.approve(request.id, ADMIN)
    eks_busy = fault_proxy.add(Fault("GET", f"/node-groups/{NODEGROUP}$", times=1, rewrite=busy))

    # First pass: the PodDefault gets the toleration; EKS is busy, so the taint step defers.
    stack.run()
    waiting = stack.request(request.id)
    assert waiting.state is RequestState.APPLYING and eks_busy.fired == 1
    poddefault = stack.apiserver.get(*PODDEFAULT)
    assert poddefault is not None
    assert poddefault["spec"]["tolerations"][-1] == {
        "key": "kf-chatops/dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"}
    assert taints(stack) == [GPU_TAINT] and updates.fired == 0
    writes = poddefault_writes(stack)

    # Later: the request resumes at the taint step; the PodDefault step is not run again.
    stack.clock.advance(timedelta(minutes=2))
    stack.run()
    done = stack.request(request.id)
    assert done.state is RequestState.SUCCEEDED, done.error
    assert step_order(stack, request.id) == [f"PodDefault/team-a/{NODEGROUP}", f"Nodegroup/{NODEGROUP}"]
    assert poddefault_writes(stack) == writes and updates.fired == 1
    assert taints(stack) == [GPU_TAINT, WORKSPACE_TAINT]
    poddefault = stack.apiserver.get(*PODDEFAULT)
    assert poddefault is not None and "nodeSelector" not in poddefault["spec"]
    node = [scheduling.node_taint(t) for t in taints(stack)]
    assert scheduling.tolerates(poddefault["spec"]["tolerations"], node)
    assert not scheduling.tolerates([GPU_TOLERATION], node)

    # The registry knows: pin --all has nothing left, and a delete still finds the nodegroup.
    assert "nothing to pin" in pin_all(stack)
    view = stack.backend.workspace_view("team-a", live=False)
    assert view is not None and view.record.created[f"Nodegroup/{NODEGROUP}"]["params"]["taints"] == [
        GPU_TAINT, WORKSPACE_TAINT]

    # Pinning again (an admin's explicit request) changes nothing.
    again = stack.apply(ADMIN2, "workspace pin team-a", approver=ADMIN)
    assert again.state is RequestState.SUCCEEDED, again.error
    assert updates.fired == 1 and taints(stack) == [GPU_TAINT, WORKSPACE_TAINT]
    assert poddefault_writes(stack) == writes + 1  # the create call that finds it; no patch
    assert stack.apiserver.get(*PODDEFAULT) == poddefault


def test_pin_all_is_for_admins_and_skips_workspaces_with_an_open_request(stack: LiveStack) -> None:
    made_before_pinning(stack)
    with pytest.raises(errors.Forbidden, match="Only admins"):
        control(stack.core, stack.backend, ALICE, parse.PinAll(), render.SHELL)
    first = pin_all(stack)
    second = pin_all(stack)
    assert "filed" in first
    assert "`team-a`: skipped:" in second and "still open" in second
    assert len([r for r in stack.requests() if r.kind == "workspace.pin"]) == 1
