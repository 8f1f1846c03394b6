"""Pinning a workspace's GPU pods to its own nodegroups (issue 8), asked the scheduler's way.

``handlers.scheduling.tolerates`` is Kubernetes' taint filter; the tests feed it the tolerations a
workspace's PodDefault gets and the taints its nodegroup carries, straight from the plans.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import errors, kinds, naming, scheduling
from handlers.ports import WorkspaceFacts
from handlers.settings import CoreSettings
from provisioning import dryrun
from tests.fakes.facts import StaticFacts

GPU = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
NS = "NoSchedule"
OWNER = "owner@example.com"


def ctx(facts: StaticFacts | None = None, settings_: CoreSettings | None = None) -> kinds.PlanContext:
    return kinds.PlanContext(settings_ or CoreSettings(), facts or StaticFacts(), "RPLAN01")


def step(plan: Any, action: str) -> dict[str, Any]:
    return dict(next(s.params for s in plan.steps if s.action == action))


def node_taints(nodegroup_params: dict[str, Any]) -> list[dict[str, str]]:
    return [scheduling.node_taint(t) for t in nodegroup_params["taints"]]


# -- Kubernetes' matching rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"key": "k", "operator": "Equal", "value": "v", "effect": NS}, ("k", "v", NS), True),
        ({"key": "k", "value": "v", "effect": NS}, ("k", "v", NS), True),  # no operator: Equal
        ({"key": "k", "operator": "Equal", "value": "w", "effect": NS}, ("k", "v", NS), False),
        ({"key": "k", "operator": "Exists", "effect": "NoSchedule"}, ("k", "v", "NoSchedule"), True),
        ({"key": "k", "operator": "Exists"}, ("k", "v", "NoExecute"), True),  # empty effect: every effect
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, ("k", "v", "NoSchedule"), False),
        ({"operator": "Exists"}, ("any", "thing", "NoSchedule"), True),  # empty key with Exists: all
        ({"key": "", "operator": "Exists", "effect": "NoSchedule"}, ("any", "x", "NoSchedule"), True),
        ({"key": "other", "operator": "Exists"}, ("k", "v", "NoSchedule"), False),
        ({"key": "k", "operator": "Equal", "effect": "NoSchedule"}, ("k", "", "NoSchedule"), True),
        ({"key": "k", "operator": "Lt", "value": "5"}, ("k", "3", "NoSchedule"), False),  # unknown op
    ],
)
def test_a_toleration_matches_a_taint_as_kubernetes_decides(
    toleration: dict[str, str], taint: tuple[str, str, str], expected: bool
) -> None:
    key, value, effect = taint
    assert scheduling.tolerates_taint(toleration, {"key": key, "value": value, "effect": effect}) is expected


def test_only_no_schedule_and_no_execute_taints_keep_a_pod_off() -> None:
    prefer = {"key": "soft", "value": "x", "effect": "PreferNoSchedule"}
    assert scheduling.tolerates([], [prefer])
    assert not scheduling.tolerates([], [GPU])
    assert not scheduling.tolerates([], [{**GPU, "effect": "NoExecute"}])
    assert scheduling.tolerates([{"key": "nvidia.com/gpu", "operator": "Exists"}], [GPU, prefer])
    assert scheduling.tolerates([], [])


def test_eks_effects_become_the_node_taints_kubernetes_sees() -> None:
    assert scheduling.node_taint({"key": "k", "effect": "NO_EXECUTE"}) == {
        "key": "k",
        "value": "",
        "effect": "NoExecute",
    }
    assert scheduling.node_taint({"key": "k", "value": "v", "effect": "PREFER_NO_SCHEDULE"})["effect"] == (
        "PreferNoSchedule"
    )


# -- workspaces apart ------------------------------------------------------------------------------


workspace_names = st.from_regex(r"[a-z][a-z0-9-]{0,38}[a-z0-9]", fullmatch=True)


def _valid(name: str) -> bool:
    try:
        naming.render_names(CoreSettings().naming, name, "g4dn.xlarge")
    except errors.InvalidInput:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(st.tuples(workspace_names, workspace_names).filter(lambda p: p[0] != p[1] and all(map(_valid, p))))
def test_a_gpu_pod_of_one_workspace_fits_its_own_nodegroup_and_not_anothers(pair: tuple[str, str]) -> None:
    a, b = (kinds.WorkspaceCreate(name, OWNER, gpu=1).plan(ctx()) for name in pair)
    pod_of_a = step(a, "kubeflow.poddefault")["tolerations"]

    assert scheduling.tolerates(pod_of_a, node_taints(step(a, "aws.nodegroup")))
    assert not scheduling.tolerates(pod_of_a, node_taints(step(b, "aws.nodegroup")))
    # A pod that did not tick the PodDefault fits neither.
    assert not scheduling.tolerates([], node_taints(step(a, "aws.nodegroup")))


def test_a_hand_made_nodegroup_with_only_the_gpu_taint_still_takes_any_workspaces_gpu_pod() -> None:
    # The documented gap: tolerations only let pods in, they do not keep them off untainted nodes.
    plan = kinds.WorkspaceCreate("team-a", OWNER, gpu=1).plan(ctx())
    assert scheduling.tolerates(step(plan, "kubeflow.poddefault")["tolerations"], [GPU])


def test_a_cpu_only_nodegroup_gets_no_taint_no_poddefault_and_a_warning_that_it_is_not_pinned() -> None:
    plan = kinds.WorkspaceCreate("team-a", OWNER, instance_type="m5.large").plan(ctx())
    assert step(plan, "aws.nodegroup")["taints"] == []
    assert "kubeflow.poddefault" not in [s.action for s in plan.steps]
    assert any("m5.large is not a GPU type" in w and "do not attract" in w for w in plan.warnings)


@pytest.mark.parametrize("namespace", ["", "a" * 64, "team a", "-team", "t\u0435am"])
def test_a_namespace_that_cannot_be_a_taint_value_is_refused(namespace: str) -> None:
    with pytest.raises(errors.InvalidInput):
        naming.workspace_taint(namespace)


# -- pinning a workspace made before this ----------------------------------------------------------


def old_style(name: str = "team-a") -> WorkspaceFacts:
    """The registry row of a GPU workspace made before pinning: GPU taint only, nodeSelector."""
    plan = kinds.WorkspaceCreate(name, OWNER, gpu=1).plan(ctx())
    created: dict[str, Any] = {}
    for s in plan.steps:
        params = dict(s.params)
        if s.action == "aws.nodegroup":
            params["taints"] = [dict(kinds.GPU_TAINT, effect="NO_SCHEDULE")]
        if s.action == "kubeflow.poddefault":
            params["tolerations"] = params["tolerations"][:1]
            params["node_selector"] = {"kf-chatops/workspace": f"{name}-g4dn-xlarge"}
        created[s.key] = {"action": s.action, "params": params}
    return WorkspaceFacts(name, name, OWNER, created=created)


def test_pin_plans_the_tolerations_first_then_the_taint_of_each_bot_made_gpu_nodegroup() -> None:
    ws = old_style()
    assert kinds.WorkspacePin.pending(ws)

    plan = kinds.WorkspacePin("team-a").plan(ctx(StaticFacts(workspaces={"team-a": ws})))

    assert [(s.action, s.key) for s in plan.steps] == [
        ("kubeflow.poddefault", "PodDefault/team-a/team-a-g4dn-xlarge"),
        ("aws.nodegroup.taints", "Nodegroup/team-a-g4dn-xlarge"),
    ]
    pd, taints = plan.steps[0].params, plan.steps[1].params
    assert "node_selector" not in pd and pd["description"] == "Run on the g4dn.xlarge nodegroup"
    assert taints == {
        "cluster": "kubeflow",
        "name": "team-a-g4dn-xlarge",
        "taints": [
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"},
            {"key": "kf-chatops/dedicated", "value": "team-a", "effect": "NO_SCHEDULE"},
        ],
    }
    assert scheduling.tolerates(pd["tolerations"], node_taints(dict(taints)))
    other = kinds.WorkspacePin("team-b").plan(ctx(StaticFacts(workspaces={"team-b": old_style("team-b")})))
    assert not scheduling.tolerates(pd["tolerations"], node_taints(dict(other.steps[1].params)))
    assert plan.warnings == (kinds.PINNING_LIMITS,)
    # The plan is what a new workspace gets: same PodDefault, same taints.
    fresh = kinds.WorkspaceCreate("team-a", OWNER, gpu=1).plan(ctx())
    assert pd == step(fresh, "kubeflow.poddefault")
    assert taints["taints"] == step(fresh, "aws.nodegroup")["taints"]
    assert not kinds.WorkspacePin.pending(
        WorkspaceFacts("team-a", "team-a", OWNER, created={k: dict(v) for k, v in _created(fresh).items()})
    )


def _created(plan: Any) -> dict[str, Any]:
    return {s.key: {"action": s.action, "params": dict(s.params)} for s in plan.steps}


def test_pin_refuses_a_workspace_without_a_bot_made_gpu_nodegroup_or_poddefault() -> None:
    cpu = kinds.WorkspaceCreate("cpu-ws", OWNER, instance_type="m5.large").plan(ctx())
    no_gpu = WorkspaceFacts("cpu-ws", "cpu-ws", OWNER, created=_created(cpu))
    assert not kinds.WorkspacePin.pending(no_gpu)
    with pytest.raises(errors.InvalidInput, match="nothing to pin"):
        kinds.WorkspacePin("cpu-ws").plan(ctx(StaticFacts(workspaces={"cpu-ws": no_gpu})))

    ws = old_style()
    del ws.created["PodDefault/team-a/team-a-g4dn-xlarge"]  # found, not made, at creation
    with pytest.raises(errors.InvalidInput, match="was not made by kf-chatops"):
        kinds.WorkspacePin("team-a").plan(ctx(StaticFacts(workspaces={"team-a": ws})))
    with pytest.raises(errors.NotFound):
        kinds.WorkspacePin("ghost").plan(ctx())


def test_dry_run_renders_the_pin_plan_and_a_poddefault_without_node_selector() -> None:
    plan = kinds.WorkspacePin("team-a").plan(ctx(StaticFacts(workspaces={"team-a": old_style()})))
    poddefault, taint = (dryrun.render(s.action, {**s.params, "_request": "R1"}) for s in plan.steps)

    assert poddefault[0].startswith("POST /apis/kubeflow.org/v1alpha1/namespaces/team-a/poddefaults ")
    body = json.loads(poddefault[0].split(" ", 2)[2])
    assert set(body["spec"]) == {"desc", "selector", "tolerations"}
    assert body["spec"]["tolerations"][1]["value"] == "team-a"
    assert "kf-chatops/request tag" in taint[0]
    assert taint[1].startswith("eks:UpdateNodegroupConfig kubeflow/team-a-g4dn-xlarge ")
    assert '"addOrUpdateTaints"' in taint[1] and '"kf-chatops/dedicated"' in taint[1]
    assert "until the taints show" in taint[2]
    assert "aws.nodegroup.taints" in dryrun.registry()
