"""The ``kfbot-notebook-activity`` AuthorizationPolicy in plans: a new workspace gets it right after
its Profile; ``/kf workspace pin`` (and ``--all``) adds it to a workspace made before it, records it
when made, and passes a workspace that has it by; deleting a workspace leaves it to the namespace."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from bot.settings import Settings, SettingsError
from handlers import errors, kinds
from handlers.actions import ActionName
from handlers.kinds.base import UpdateWorkspaceObjects
from handlers.plan import StepOutcome
from handlers.ports import WorkspaceFacts
from tests.test_plan_digests import _facts, _plan, _team, _unpinned

AT = datetime(2026, 3, 2, tzinfo=UTC)
KEY = "AuthorizationPolicy/aic-ns-team-a-ws/kfbot-notebook-activity"


def _without_policy(ws: WorkspaceFacts) -> WorkspaceFacts:
    return dataclasses.replace(ws, created={k: v for k, v in ws.created.items() if k != KEY})


def test_create_plans_the_policy_right_after_the_profile() -> None:
    plan = _plan(kinds.WorkspaceCreate("team-a", "owner@example.com", gpu=1))
    assert [s.action for s in plan.steps[:2]] == [ActionName.PROFILE, ActionName.NOTEBOOK_ACTIVITY]
    step = plan.steps[1]
    # No principal, path or method in the params: a request cannot choose whom the policy admits.
    assert (step.key, dict(step.params)) == (KEY, {"namespace": "aic-ns-team-a-ws"})


def test_pin_adds_the_policy_to_a_workspace_made_before_it_and_records_it() -> None:
    ws = _without_policy(_team())  # pinned already: only the policy is missing
    assert kinds.WorkspacePin.pending(ws)
    plan = _plan(kinds.WorkspacePin("team-a"), _facts(ws))
    assert plan.steps[-1].key == KEY and plan.steps[-1].action == ActionName.NOTEBOOK_ACTIVITY
    outcomes = {i: StepOutcome(created=True) for i in range(len(plan.steps))}
    done = kinds.Applied("RPIN001", "UADMIN", plan, outcomes, AT)
    [change] = kinds.WorkspacePin("team-a").on_success(done).changes
    assert isinstance(change, UpdateWorkspaceObjects)
    entry = {"action": ActionName.NOTEBOOK_ACTIVITY, "params": {"namespace": ws.namespace}}
    assert change.add == {KEY: entry}
    # Someone else's policy (found, not made): nothing recorded, so a delete never claims it.
    last = len(plan.steps) - 1
    found = kinds.Applied("RPIN001", "UADMIN", plan, {**outcomes, last: StepOutcome(created=False)}, AT)
    [change] = kinds.WorkspacePin("team-a").on_success(found).changes
    assert isinstance(change, UpdateWorkspaceObjects) and change.add == {}


def test_pin_of_a_cpu_workspace_without_the_policy_plans_only_the_policy() -> None:
    create = _plan(kinds.WorkspaceCreate("team-a", "owner@example.com"))
    created = {s.key: {"action": s.action, "params": dict(s.params)} for s in create.steps if s.key != KEY}
    ws = dataclasses.replace(_team(), created=created)
    plan = _plan(kinds.WorkspacePin("team-a"), _facts(ws))
    assert [s.action for s in plan.steps] == [ActionName.NOTEBOOK_ACTIVITY]
    assert plan.warnings == ()


def test_a_workspace_with_the_policy_and_its_taints_is_passed_by() -> None:
    assert not kinds.WorkspacePin.pending(_team())
    assert kinds.WorkspacePin.pending(_unpinned())
    cpu = _plan(kinds.WorkspaceCreate("team-a", "owner@example.com"))
    ws = dataclasses.replace(_team(), created={s.key: {"action": s.action, "params": dict(s.params)}
                                               for s in cpu.steps})
    with pytest.raises(errors.InvalidInput, match="nothing to pin"):
        _plan(kinds.WorkspacePin("team-a"), _facts(ws))


def test_delete_leaves_the_policy_to_the_namespace() -> None:
    plan = _plan(kinds.WorkspaceDelete("team-a", "team-a"), _facts())
    assert all(s.key != KEY for s in plan.steps)


@pytest.mark.parametrize(
    "principal",
    ["*", "cluster.local/ns/kf-chatops/sa/*", "cluster.local/ns/*/sa/kf-chatops", "kf-chatops",
     "cluster.local/ns//sa/x", "cluster.local/ns/a/sa/b/c"],
)
def test_a_hostile_bot_principal_stops_the_bot_at_start(principal: str) -> None:
    with pytest.raises(SettingsError, match="KFBOT_BOT_PRINCIPAL"):
        Settings.from_env({"KFBOT_BOT_PRINCIPAL": principal})
    ok = Settings.from_env({"KFBOT_BOT_PRINCIPAL": "spiffe.example/ns/ops/sa/kfbot"})
    assert ok.provisioning.cost.bot_principal == "spiffe.example/ns/ops/sa/kfbot"
