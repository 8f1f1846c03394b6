"""The cost-control kinds end to end on the live composition: the fake apiserver (Notebooks created
through the API, so validated against the real Notebook CRD; Nodes and Pods), moto for EKS, the
real store, audit log and engine.

* ``notebook.stop`` sets ``kubeflow-resource-stopped`` the way the jupyter web app does (merge
  patch, ``%Y-%m-%dT%H:%M:%SZ`` UTC), keeps an earlier stop, fails clearly on a missing notebook.
* ``gpu.scale`` down refuses when a GPU pod appeared on the nodegroup (or is pending in the
  workspace) between the report and the click; up within the approved maximum applies at once,
  above it waits for an admin and only then raises the maximum.
* ``gpu.hold`` records a bounded ``gpu_holds`` row in the success transaction.
* ``workspace.resize`` rescales, or replaces the GPU nodegroup and removes the old one only once no
  GPU pod runs on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from handlers import errors, kinds, services
from handlers.cost import autostop
from handlers.model import EventType, RequestState
from provisioning import k8s
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.jupyter import FakeJupyter
from tests.live_harness import ADMIN, ADMIN2, ALICE, BOB, CLUSTER, LiveStack, live_stack, seed_aws

NAMESPACE = "team-a"
NODEGROUP = "team-a-g4dn-xlarge"
STOPPED = "kubeflow-resource-stopped"


@pytest.fixture
def stack(sqlite_url: str, apiserver: FakeApiServer, aws: AwsEnv) -> Iterator[LiveStack]:
    with live_stack(sqlite_url, apiserver, seed_aws(aws.url)) as built:
        done = built.apply(ALICE, "workspace new team-a --gpu 1")
        assert done.state is RequestState.SUCCEEDED, done.error
        yield built


def notebook(name: str, gpus: int = 1) -> dict[str, Any]:
    """A Notebook as the jupyter web app creates it (only fields of the kubeflow.org/v1 CRD)."""
    container: dict[str, Any] = {
        "name": name,
        "image": "kubeflownotebookswg/jupyter-pytorch-cuda-full:v1.9.0",
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {"template": {"spec": {"containers": [container], "serviceAccountName": "default-editor"}}},
    }


def node(name: str, nodegroup: str = NODEGROUP) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"eks.amazonaws.com/nodegroup": nodegroup}},
        "status": {"allocatable": {"nvidia.com/gpu": "1"}},
    }


def gpu_pod(
    name: str, node_name: str | None, phase: str = "Running", namespace: str = NAMESPACE
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "pytorch", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": {"phase": phase},
    }


def scaling(stack: LiveStack, name: str = NODEGROUP) -> dict[str, int]:
    group = stack.aws("eks").describe_nodegroup(clusterName=CLUSTER, nodegroupName=name)["nodegroup"]
    return dict(group["scalingConfig"])


def nodegroups(stack: LiveStack) -> list[str]:
    return sorted(stack.aws("eks").list_nodegroups(clusterName=CLUSTER)["nodegroups"])


def recorded(stack: LiveStack) -> dict[str, Any]:
    view = stack.backend.workspace_view("team-a", live=False)
    assert view is not None
    return dict(view.record.created)


def audit_rule(stack: LiveStack, request_id: str) -> str:
    with stack.backend.uow() as uow:
        trail = uow.audit.trail(request_id)
    (approved,) = [e for e in trail if e.type in (EventType.AUTO_APPROVED, EventType.APPROVED)]
    return str(approved.data.get("rule") or approved.actor)


# -- notebook.stop ----------------------------------------------------------------------------------


def test_stop_sets_the_dashboards_annotation_by_merge_patch_and_keeps_an_earlier_stop(
    stack: LiveStack,
) -> None:
    stack.kube().create(k8s.NOTEBOOK, notebook("nb1"))
    assert isinstance(stack.clock, FakeClock)
    done = stack.submit(ALICE, "gpu stop team-a/nb1")
    assert done.state is RequestState.APPROVED  # the owner's stop applies without an admin
    stack.run()
    assert stack.request(done.id).state is RequestState.SUCCEEDED
    assert audit_rule(stack, done.id) == "auto:notebook.stop"
    stored = stack.apiserver.get("kubeflow.org/v1", "notebooks", "nb1", NAMESPACE)
    assert stored is not None
    stamp = stored["metadata"]["annotations"][STOPPED]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert stamp == stack.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    patches = [r for r in stack.apiserver.requests if r.method == "PATCH" and "/notebooks/nb1" in r.path]
    assert [r.content_type.split(";")[0] for r in patches] == ["application/merge-patch+json"]
    assert patches[0].body == {"metadata": {"annotations": {STOPPED: stamp}}}  # nothing else touched
    assert stored["spec"]["template"]["spec"]["containers"][0]["name"] == "nb1"

    # An admin stopping it again: succeeds, keeps the first stop's time, sends no patch.
    stack.clock.advance(timedelta(hours=1))
    again = stack.apply(ADMIN, "gpu stop team-a/nb1")
    assert again.state is RequestState.SUCCEEDED, again.error
    assert audit_rule(stack, again.id) == "auto:notebook.stop"
    after = stack.apiserver.get("kubeflow.org/v1", "notebooks", "nb1", NAMESPACE)
    assert after is not None and after["metadata"]["annotations"][STOPPED] == stamp
    assert len([r for r in stack.apiserver.requests if r.method == "PATCH" and "/notebooks/" in r.path]) == 1


AUTO_STOP_CASES = {
    "idle-for-3h": ("idle", True),
    "busy-kernel-since-the-scan": ("busy", False),
    "terminal-used-since-the-scan": ("terminal", False),
    "server-unreadable": ("rbac-denied", False),
}


@pytest.mark.parametrize("case", sorted(AUTO_STOP_CASES))
def test_the_bots_own_stop_reads_the_notebook_again_and_stops_only_if_idle(
    sqlite_url: str, apiserver: FakeApiServer, aws: AwsEnv, jupyter: FakeJupyter, case: str
) -> None:
    """Auto-stop's request (``idle_for`` set) applies only after ``kubeflow.notebook.idle`` read
    the notebook's server through the scan's probe: work resumed after the last scan (a busy
    kernel, a terminal used), or a server that cannot be read, fails the request at the guard with
    the notebook untouched; the scan's verdict, or any database row, is never enough."""
    work, stops = AUTO_STOP_CASES[case]
    with live_stack(
        sqlite_url, apiserver, seed_aws(aws.url), notebook_url=lambda namespace, name: jupyter.url
    ) as stack:
        assert stack.apply(ALICE, "workspace new team-a --gpu 1").state is RequestState.SUCCEEDED
        stack.kube().create(k8s.NOTEBOOK, notebook("nb1"))
        now = stack.clock.now()
        jupyter.kernel(NAMESPACE, "nb1", now - timedelta(hours=3))
        if work == "busy":
            jupyter.kernel(NAMESPACE, "nb1", now - timedelta(hours=3), state="busy")
        elif work == "terminal":
            jupyter.terminal(NAMESPACE, "nb1", now - timedelta(minutes=5))
        elif work == "rbac-denied":
            jupyter.server(NAMESPACE, "nb1", mode="rbac-denied")
        ref = f"notebook:{NAMESPACE}/nb1"
        kind = kinds.NotebookStop("team-a", "nb1", idle_for=timedelta(hours=2))
        key = f"cost.auto_stop:{ref}:t"
        filed = services._system_request(stack.core, kind, key, (autostop.TIMER, ref, {}))
        assert filed is not None
        stack.run()

        done = stack.request(filed.request.id)
        stored = stack.apiserver.get("kubeflow.org/v1", "notebooks", "nb1", NAMESPACE)
        assert stored is not None
        stopped = STOPPED in (stored["metadata"].get("annotations") or {})
        assert stopped is stops
        assert "/notebook/team-a/nb1/api/kernels" in jupyter.requests
        if stops:
            assert done.state is RequestState.SUCCEEDED, done.error
        else:
            assert done.state is RequestState.FAILED
            assert "Not stopped automatically" in (done.error or "")
            patches = [r for r in stack.apiserver.requests if r.method == "PATCH" and "/notebooks/" in r.path]
            assert patches == []


def test_stopping_a_missing_notebook_fails_with_a_clear_message(stack: LiveStack) -> None:
    done = stack.apply(ALICE, "gpu stop team-a/gone")
    assert done.state is RequestState.FAILED
    assert "There is no notebook `gone` in `team-a`" in (done.error or "")


def test_a_stranger_cannot_stop_a_notebook_and_nothing_is_recorded(stack: LiveStack) -> None:
    stack.kube().create(k8s.NOTEBOOK, notebook("nb1"))
    before = len(stack.requests())
    with pytest.raises(errors.Forbidden, match="Only the owner of `team-a` or an admin"):
        stack.submit(BOB, "gpu stop team-a/nb1")
    assert len(stack.requests()) == before
    stored = stack.apiserver.get("kubeflow.org/v1", "notebooks", "nb1", NAMESPACE)
    assert stored is not None and STOPPED not in (stored["metadata"].get("annotations") or {})


# -- gpu.scale --------------------------------------------------------------------------------------


def test_scale_down_sets_min_and_desired_to_zero_and_keeps_the_maximum(stack: LiveStack) -> None:
    stack.apiserver.seed(node("ip-10-0-0-1"))
    stack.apiserver.seed(gpu_pod("other-team", "ip-10-0-0-9", namespace="default"))  # another node
    stack.apiserver.seed(gpu_pod("finished", "ip-10-0-0-1", phase="Succeeded"))  # holds no GPU any more
    cpu_only = gpu_pod("cpu-only", "ip-10-0-0-1")
    cpu_only["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    stack.apiserver.seed(cpu_only)
    stack.aws("eks").update_nodegroup_config(
        clusterName=CLUSTER,
        nodegroupName=NODEGROUP,
        scalingConfig={"minSize": 1, "maxSize": 2, "desiredSize": 1},
    )
    done = stack.apply(ALICE, "gpu down team-a")
    assert done.state is RequestState.SUCCEEDED, done.error
    assert audit_rule(stack, done.id) == "auto:gpu.scale"
    assert scaling(stack) == {"minSize": 0, "maxSize": 2, "desiredSize": 0}
    assert recorded(stack)[f"Nodegroup/{NODEGROUP}"]["params"]["scaling"] == {
        "minSize": 0,
        "maxSize": 2,
        "desiredSize": 0,
    }


@pytest.mark.parametrize("appears", ["a GPU pod on its node", "a pending GPU pod of the workspace"])
def test_scale_down_is_refused_when_a_gpu_pod_appears_between_report_and_click(
    stack: LiveStack, appears: str
) -> None:
    stack.apiserver.seed(node("ip-10-0-0-1"))
    before = scaling(stack)
    # The owner clicks (the request is filed and auto-approved) ...
    request = stack.submit(ALICE, "gpu down team-a")
    assert request.state is RequestState.APPROVED
    # ... and before the engine acts, someone starts GPU work.
    if appears.startswith("a GPU pod on"):
        stack.apiserver.seed(gpu_pod("train", "ip-10-0-0-1"))
    else:
        stack.apiserver.seed(gpu_pod("queued", None, phase="Pending"))
    stack.run()
    done = stack.request(request.id)
    assert done.state is RequestState.FAILED
    assert "Not scaled down: 1 GPU pod(s)" in (done.error or "") and "team-a/" in (done.error or "")
    assert scaling(stack) == before


def test_scale_up_within_the_approved_maximum_applies_above_it_waits_for_an_admin(stack: LiveStack) -> None:
    within = stack.submit(ALICE, "gpu up team-a 2")
    assert within.state is RequestState.APPROVED
    stack.run()
    assert stack.request(within.id).state is RequestState.SUCCEEDED
    assert scaling(stack) == {"minSize": 0, "maxSize": 2, "desiredSize": 2}

    above = stack.submit(ALICE, "gpu up team-a 4")
    assert above.state is RequestState.PENDING and stack.run() == 0
    assert scaling(stack)["maxSize"] == 2
    assert any("above the approved maximum of 2" in w for w in above.plan.warnings)
    with pytest.raises(errors.Forbidden):
        stack.approve(above.id, ALICE)
    stack.approve(above.id, ADMIN)
    stack.run()
    assert stack.request(above.id).state is RequestState.SUCCEEDED
    assert scaling(stack) == {"minSize": 0, "maxSize": 4, "desiredSize": 4}
    # The raised maximum is the approved one now: 3 is within it.
    assert stack.submit(ALICE, "gpu up team-a 3").state is RequestState.APPROVED


def test_a_workspace_without_a_bot_made_gpu_nodegroup_has_nothing_to_scale(stack: LiveStack) -> None:
    assert stack.apply(ADMIN, "workspace new plain", approver=ADMIN2).state is RequestState.SUCCEEDED
    with pytest.raises(errors.InvalidInput, match="no GPU nodegroup made by kf-chatops"):
        stack.submit(ADMIN, "gpu down plain")


# -- gpu.hold ---------------------------------------------------------------------------------------


def holds(stack: LiveStack) -> dict[str, Any]:
    with stack.backend.db.uow() as uow:
        return uow.registry.holds(stack.clock.now())


def test_snooze_records_a_bounded_hold_in_the_success_transaction(stack: LiveStack) -> None:
    done = stack.apply(ALICE, "gpu snooze team-a/nb1 1d")
    assert done.state is RequestState.SUCCEEDED, done.error
    assert audit_rule(stack, done.id) == "auto:gpu.hold"
    assert done.plan.steps == ()
    assert holds(stack) == {"notebook:team-a/nb1": done.updated_at + timedelta(days=1)}
    with pytest.raises(errors.InvalidInput, match="allowed: 1m to 1w"):
        stack.submit(ALICE, "gpu snooze team-a 8d")
    with pytest.raises(errors.Forbidden):
        stack.submit(BOB, "gpu snooze team-a 1d")
    assert isinstance(stack.clock, FakeClock)
    stack.clock.advance(timedelta(days=1, seconds=1))
    assert holds(stack) == {}


# -- workspace.resize -------------------------------------------------------------------------------


def test_resize_nodes_waits_for_an_admin_and_changes_only_the_bounds(stack: LiveStack) -> None:
    request = stack.submit(ALICE, "workspace resize team-a --nodes 1:3")
    assert request.state is RequestState.PENDING
    assert any("$" in w and "on-demand list price" in w for w in request.plan.warnings)
    stack.approve(request.id, ADMIN)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED
    assert scaling(stack) == {"minSize": 1, "maxSize": 3, "desiredSize": 1}
    assert recorded(stack)[f"Nodegroup/{NODEGROUP}"]["params"]["scaling"]["maxSize"] == 3


def test_only_the_owner_or_an_admin_may_ask_to_resize_and_a_stranger_learns_nothing(stack: LiveStack) -> None:
    """A resize's plan names the nodegroups, their sizes and costs: a stranger is told the same
    whether the workspace exists or not, on the command and the preview path alike; a contributor
    is refused; an admin who is not the workspace's asks, and another admin decides."""
    before = len(stack.requests())
    answers = []
    for name in ("team-a", "team-z"):
        for ask in (
            stack.submit,
            lambda actor, text: services.preview(stack.core, actor, stack.kind(actor, text)),
        ):
            with pytest.raises(errors.NotFound) as refused:
                ask(BOB, f"workspace resize {name} --nodes 0:2")
            answers.append(str(refused.value).replace(name, "NAME"))
    assert answers == ["There is no workspace `NAME` of yours."] * 4
    assert NODEGROUP not in " ".join(answers) and "$" not in " ".join(answers)

    shared = stack.apply(ALICE, "share team-a bob@example.com")
    assert shared.state is RequestState.SUCCEEDED, shared.error
    with pytest.raises(errors.Forbidden, match="Only the owner of `team-a` or an admin"):
        stack.submit(BOB, "workspace resize team-a --nodes 0:2")
    assert len(stack.requests()) == before + 1  # the share only

    request = stack.submit(ADMIN, "workspace resize team-a --nodes 0:3")
    assert request.state is RequestState.PENDING
    stack.approve(request.id, ADMIN2)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED


def test_resize_refuses_an_unknown_instance_type(stack: LiveStack) -> None:
    with pytest.raises(errors.InvalidInput, match="not a GPU instance type the bot knows"):
        stack.submit(ALICE, "workspace resize team-a --nodes 0:2 --instance-type m5.large")


def test_resize_to_another_type_removes_the_old_nodegroup_only_once_no_gpu_pod_runs_on_it(
    stack: LiveStack,
) -> None:
    assert isinstance(stack.clock, FakeClock)
    new = "team-a-g5-xlarge"
    stack.apiserver.seed(node("ip-10-0-0-1"))
    stack.apiserver.seed(gpu_pod("train", "ip-10-0-0-1"))
    request = stack.submit(ALICE, "workspace resize team-a --nodes 0:2 --instance-type g5.xlarge")
    stack.approve(request.id, ADMIN)
    stack.run()
    waiting = stack.request(request.id)
    assert waiting.state is RequestState.APPLYING  # deferred: a GPU pod still runs on the old one
    assert nodegroups(stack) == [NODEGROUP, new]
    group = stack.aws("eks").describe_nodegroup(clusterName=CLUSTER, nodegroupName=new)["nodegroup"]
    assert group["instanceTypes"] == ["g5.xlarge"]
    assert {"key": "kf-chatops/dedicated", "value": NAMESPACE, "effect": "NO_SCHEDULE"} in group["taints"]
    poddefault = stack.apiserver.get("kubeflow.org/v1alpha1", "poddefaults", NODEGROUP, NAMESPACE)
    assert poddefault is not None and poddefault["spec"]["desc"] == "Run on the g5.xlarge nodegroup"

    assert stack.kube().delete(k8s.POD, "train", NAMESPACE)
    stack.clock.advance(timedelta(minutes=2))
    stack.run()
    done = stack.request(request.id)
    assert done.state is RequestState.SUCCEEDED, done.error
    assert nodegroups(stack) == [new]
    created = recorded(stack)
    assert f"Nodegroup/{new}" in created and f"Nodegroup/{NODEGROUP}" not in created
    assert (
        created[f"PodDefault/{NAMESPACE}/{NODEGROUP}"]["params"]["description"]
        == "Run on the g5.xlarge nodegroup"
    )
    # The next scale-down acts on the new nodegroup.
    assert stack.apply(ALICE, "gpu down team-a").state is RequestState.SUCCEEDED
    assert scaling(stack, new) == {"minSize": 0, "maxSize": 2, "desiredSize": 0}


def test_stop_by_notebook_name_alone_finds_the_requesters_one_workspace(stack: LiveStack) -> None:
    stack.kube().create(k8s.NOTEBOOK, notebook("nb1"))
    done = stack.apply(ALICE, "gpu stop nb1")
    assert done.state is RequestState.SUCCEEDED, done.error
    assert dict(done.args) == {"workspace": "team-a", "notebook": "nb1", "idle_for": None}  # resolved
    stored = stack.apiserver.get("kubeflow.org/v1", "notebooks", "nb1", NAMESPACE)
    assert stored is not None and STOPPED in stored["metadata"]["annotations"]
    # Someone who owns no workspace, or several, is asked to say whose notebook.
    with pytest.raises(errors.InvalidInput, match="You own no workspace"):
        stack.submit(ADMIN, "gpu stop nb1")
    assert stack.apply(ALICE, "workspace new team-b").state is RequestState.SUCCEEDED
    with pytest.raises(errors.InvalidInput, match=r"You own 2 workspaces.*team-a|WORKSPACE/nb1"):
        stack.submit(ALICE, "gpu stop nb1")


# -- the gate's limits on the cost kinds (atk2) -------------------------------------------------------


@pytest.fixture
def capped(db_url: str, apiserver: FakeApiServer, aws: AwsEnv) -> Iterator[LiveStack]:
    """team-a (owner alice, one GPU nodegroup) on either database, with ``KFBOT_MAX_NODES=4``."""
    with live_stack(db_url, apiserver, seed_aws(aws.url), env={"KFBOT_MAX_NODES": "4"}) as built:
        done = built.apply(ALICE, "workspace new team-a --gpu 1")
        assert done.state is RequestState.SUCCEEDED, done.error
        yield built


def request_count(stack: LiveStack) -> int:
    with stack.backend.uow() as uow:
        return len(uow.requests.list())


def test_gpu_up_above_max_nodes_is_refused_at_planning_so_no_admin_can_approve_it(capped: LiveStack) -> None:
    before = request_count(capped)
    for actor in (ALICE, ADMIN):
        with pytest.raises(
            errors.InvalidInput, match=r"`/kf gpu up` N 100 is above the limit of 4 .*KFBOT_MAX_NODES"
        ):
            capped.submit(actor, "gpu up team-a 100")
    assert request_count(capped) == before and scaling(capped)["maxSize"] < 4
    # At the cap an admin decides, and the maximum approved is the cap, which is all the owner
    # can then apply alone.
    at_cap = capped.submit(ALICE, "gpu up team-a 4")
    assert at_cap.state is RequestState.PENDING
    capped.approve(at_cap.id, ADMIN)
    capped.run()
    assert scaling(capped)["maxSize"] == 4
    with pytest.raises(errors.InvalidInput, match="KFBOT_MAX_NODES"):
        capped.submit(ALICE, "gpu up team-a 5")


def test_an_admin_who_works_in_the_workspace_waits_for_another_admin(capped: LiveStack) -> None:
    assert capped.apply(ALICE, f"share team-a {ADMIN.email}").state is RequestState.SUCCEEDED
    for text in ("gpu snooze team-a 7d", "gpu stop team-a/nb1", "gpu up team-a 1", "gpu down team-a"):
        mine = capped.submit(ADMIN, text)
        assert mine.state is RequestState.PENDING, text
        with pytest.raises(errors.Forbidden):
            capped.approve(mine.id, ADMIN)
        assert capped.approve(mine.id, ADMIN2).state is RequestState.APPROVED
        assert audit_rule(capped, mine.id) == ADMIN2.user_id
        capped.run()
    # An admin with no part in the workspace, and its owner, still apply alone.
    assert capped.submit(ADMIN2, "gpu snooze team-a 1d").state is RequestState.APPROVED
    capped.run()
    assert capped.submit(ALICE, "gpu snooze team-a 2d").state is RequestState.APPROVED
