"""Adoption attacked (findings H1, M3, L3 of the second outside round), through the real code:
fake apiserver with its profile controller, moto, the runbook seed (``tests.fakes.runbook``).

* H1: a Profile anyone may make (Kubeflow self-registration) named after a namespace Kubeflow did
  not make for it (an operator's, the bot's own) is never offered nor adopted, at plan or apply
  time: only the profile controller's marks on the namespace tie it to the Profile.
* M3: an object whose tag names another namespace is skipped, and the plan says so, even when
  the naming template matches its name.
* L3: the contributors KFAM lists become recorded grants, one plan line each, so the drift report
  does not call them "added by hand"; a RoleBinding that only looks like KFAM's is not one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from bot import blocks
from handlers import drift, errors, kinds
from handlers.model import Actor, RequestState
from handlers.naming import kfam_binding_name
from handlers.plan import Plan
from provisioning.kubeflow import profile_namespace_problem
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.runbook import NAMESPACE_TAG, RUNBOOK_ENV, RunbookWorkspace, seed_runbook_workspace
from tests.live_harness import ADMIN, ADMIN2, AwsWorld, LiveStack, live_stack, seed_aws

MALLORY = Actor("UMALLORY1", "mallory@example.com")
NAMESPACES = ("v1", "namespaces")
PROFILES = ("kubeflow.org/v1", "profiles")
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture
def runbook(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> Iterator[tuple[LiveStack, RunbookWorkspace]]:
    with live_stack(sqlite_url, apiserver, world, env=RUNBOOK_ENV) as stack:
        yield stack, seed_runbook_workspace(apiserver, world)


def self_registered(apiserver: FakeApiServer, name: str, owner: str = MALLORY.email) -> None:
    """A Profile as the dashboard's registration flow makes one (KFAM's POST, any user)."""
    apiserver.create(
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "Profile",
            "metadata": {"name": name},
            "spec": {"owner": {"kind": "User", "name": owner}},
        }
    )


def kfam_pair(user: str, role: str, namespace: str) -> list[dict[str, Any]]:
    """KFAM's RoleBinding + AuthorizationPolicy for ``user`` (kubeflow-reference §2.2)."""
    meta = {"name": kfam_binding_name(user, role), "namespace": namespace,
            "annotations": {"user": user, "role": role}}
    rule = {"when": [{"key": "request.headers[kubeflow-userid]", "values": [user]}]}
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": f"kubeflow-{role}"},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": user}],
        },
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "AuthorizationPolicy",
            "metadata": dict(meta),
            "spec": {"rules": [rule]},
        },
    ]


def adopt_buttons(stack: LiveStack) -> set[str]:
    groups = stack.backend.scan_unmanaged()
    assert groups is not None
    _, message = blocks.scan_message(groups)
    return {
        kinds.adopt_from_button(e["value"]).namespace
        for b in message
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == kinds.ADOPT_BUTTON
    }


def test_the_fake_controller_marks_only_the_namespaces_it_makes(apiserver: FakeApiServer) -> None:
    """What H1's check reads, as kubeflow-reference §1.2 has the controller write it; every mark
    taken away on its own makes the namespace not the Profile's."""
    apiserver.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu-operator"}})
    self_registered(apiserver, "gpu-operator")
    self_registered(apiserver, "team-ok", "ok@example.com")
    system, refused = apiserver.get(*NAMESPACES, "gpu-operator"), apiserver.get(*PROFILES, "gpu-operator")
    assert system is not None and refused is not None
    assert "owner" not in (system["metadata"].get("annotations") or {})
    assert not system["metadata"].get("ownerReferences")
    assert refused["status"]["conditions"][-1]["type"] == "Failed"
    assert "controller refused" in (profile_namespace_problem(refused, system) or "")

    profile, namespace = apiserver.get(*PROFILES, "team-ok"), apiserver.get(*NAMESPACES, "team-ok")
    assert profile is not None and namespace is not None
    assert namespace["metadata"]["annotations"]["owner"] == "ok@example.com"
    assert namespace["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeflow-profile"
    (ref,) = namespace["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "Profile", "team-ok", profile["metadata"]["uid"], True
    )
    assert profile_namespace_problem(profile, namespace) is None

    def without(path: tuple[str, ...], value: Any = None) -> dict[str, Any]:
        changed = copy.deepcopy(namespace)
        target = changed
        for key in path[:-1]:
            target = target[key]
        if value is None:
            target.pop(path[-1])
        else:
            target[path[-1]] = value
        return changed

    for changed in (
        without(("metadata", "annotations", "owner")),
        without(("metadata", "annotations", "owner"), MALLORY.email),
        without(("metadata", "labels", "app.kubernetes.io/part-of")),
        without(("metadata", "ownerReferences")),
        without(("metadata", "ownerReferences"), [{**ref, "uid": "another-profile"}]),
        without(("metadata", "ownerReferences"), [{**ref, "controller": False}]),
        without(("metadata", "ownerReferences"), [{**ref, "name": "other"}]),
    ):
        assert profile_namespace_problem(profile, changed) is not None, changed["metadata"]
    assert profile_namespace_problem(profile, None) is not None
    failed = {**profile, "status": {"conditions": [{"type": "Failed", "message": "x"}]}}
    assert profile_namespace_problem(failed, namespace) is not None


def test_a_profile_over_a_namespace_kubeflow_did_not_make_is_never_adopted(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    api = stack.apiserver
    # An operator's namespace (Helm made it), then Mallory's self-registered Profile of that name.
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu-operator"}})
    self_registered(api, "gpu-operator")
    # A namespace an admin made by hand and annotated, copying the marks except the ownerReference
    # (which only the controller's create gives); the controller accepts the Profile over it.
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "team-x",
                "annotations": {"owner": MALLORY.email},
                "labels": {"app.kubernetes.io/part-of": "kubeflow-profile"},
            },
        }
    )
    self_registered(api, "team-x")
    profile = api.get(*PROFILES, "team-x")
    assert profile is not None and not (profile.get("status") or {}).get("conditions")

    assert adopt_buttons(stack) == {made.namespace}
    for namespace, why in (
        ("gpu-operator", "profile controller refused it"),
        ("team-x", "not owned by the Profile"),
    ):
        with pytest.raises(errors.InvalidInput, match=why):
            stack.submit(ADMIN, f"workspace adopt {namespace}")
        with pytest.raises(errors.InvalidInput, match="not adoptable"):  # the scan's button, forged
            kinds.adopt_from_button(kinds.adopt_button_value(namespace)).plan(
                kinds.PlanContext(stack.core.settings, stack.core.facts, "r1")
            )
        with pytest.raises(errors.NotFound):  # and so Mallory has nothing of it
            stack.submit(MALLORY, f"token {namespace} --ttl 1h")
    with pytest.raises(errors.InvalidInput, match="belongs to the platform"):
        stack.submit(ADMIN, "workspace adopt kf-chatops")  # DEPLOY.md's namespace, reserved by name
    assert stack.requests() == []
    assert api.list("rbac.authorization.k8s.io/v1", "rolebindings", "gpu-operator") == []


def test_the_marks_are_read_again_when_the_adoption_applies(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    namespace = stack.apiserver.get(*NAMESPACES, made.namespace)
    assert namespace is not None
    namespace["metadata"]["annotations"]["owner"] = MALLORY.email  # changed after the plan was made
    stack.apiserver.seed(namespace)
    stack.approve(request.id, ADMIN2)
    stack.run()
    # FAILED with the reason, not merely "not SUCCEEDED": a request the engine never ran (still
    # APPROVED) or an approval refused (still PENDING) would pass that, with no re-check at all.
    refused = stack.request(request.id)
    assert refused.state is RequestState.FAILED, (refused.state, refused.error)
    assert "`owner` annotation does not name the Profile's owner" in str(refused.error), refused.error
    assert stack.backend.workspaces() == []


def test_the_bots_own_namespace_is_never_adopted(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> None:
    env = {**RUNBOOK_ENV, "KFBOT_BOT_PRINCIPAL": "cluster.local/ns/chatops-prod/sa/kf-chatops"}
    with live_stack(sqlite_url, apiserver, world, env=env) as stack:
        # Once a Profile's namespace (every mark in place), now where the bot and its secrets run.
        self_registered(apiserver, "chatops-prod")
        assert adopt_buttons(stack) == set()
        with pytest.raises(errors.InvalidInput, match="the bot's own namespace"):
            stack.submit(ADMIN, "workspace adopt chatops-prod")


def test_adoption_by_name_skips_objects_tagged_for_another_namespace(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    # Mallory's Profile renders the template's names of the runbook's project (proj1).
    self_registered(stack.apiserver, "aic-ns-proj1-ws")

    def their_plan() -> Plan:
        kind = stack.kind(ADMIN, "workspace adopt aic-ns-proj1-ws")
        return kind.plan(kinds.PlanContext(stack.core.settings, stack.core.facts, "r1"))

    plan = their_plan()
    assert [s.key for s in plan.steps] == ["Profile/aic-ns-proj1-ws"]
    skipped = f"`{NAMESPACE_TAG}` names `{made.namespace}`"
    for what, name in (("S3 bucket", made.bucket), ("EKS nodegroup", made.nodegroup)):
        assert any(w.startswith(f"Skipped {what} `{name}`: its tag") and skipped in w for w in plan.warnings)
    groups = {g.label: g for g in stack.backend.scan_unmanaged() or ()}
    assert {o.key for o in groups["aic-ns-proj1-ws"].objects} == {"Profile/aic-ns-proj1-ws"}
    assert {f"Bucket/{made.bucket}", f"Nodegroup/{made.nodegroup}"} <= {
        o.key for o in groups[made.namespace].objects
    }

    legacy = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    stack.approve(legacy.id, ADMIN2)
    stack.run()
    assert stack.request(legacy.id).state is RequestState.SUCCEEDED
    # Recorded by the legacy workspace now: not even named as skipped, just never offered.
    plan = their_plan()
    assert [s.key for s in plan.steps] == ["Profile/aic-ns-proj1-ws"]
    assert not any(made.bucket in w for w in plan.warnings)


def test_existing_contributors_are_adopted_as_grants_and_not_reported_as_drift(
    runbook: tuple[LiveStack, RunbookWorkspace],
) -> None:
    stack, made = runbook
    # Only looks like KFAM's: named and annotated for eve, but the subject is Mallory.
    name = kfam_binding_name("eve@example.com", "edit")
    stack.apiserver.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": name,
                "namespace": made.namespace,
                "annotations": {"user": "eve@example.com", "role": "edit"},
            },
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": MALLORY.email}],
        }
    )
    # KFAM's shape exactly, but its user is no person a grant could name (a Slack id's look).
    for binding in kfam_pair("UADMIN002", "view", made.namespace):
        stack.apiserver.create(binding)
    request = stack.submit(ADMIN, f"workspace adopt {made.namespace}")
    lines = [s.summary for s in request.plan.steps if s.key.startswith("Contributor/")]
    assert lines == [f"adopt contributor `{made.contributor}` (found by KFAM's RoleBinding, role edit)"]
    assert "Not adopted: contributor `UADMIN002`, not an email address." in request.plan.warnings
    with pytest.raises(errors.Forbidden):  # an admin who is a contributor gains a recorded grant
        stack.approve(request.id, Actor("UHELPER1", made.contributor, is_admin=True))
    stack.approve(request.id, ADMIN2)
    stack.run()
    assert stack.request(request.id).state is RequestState.SUCCEEDED
    adopted = stack.backend.facts.workspace(made.namespace)
    assert adopted is not None and adopted.recorded_grants == {made.contributor: "edit"}

    added = {
        str(i.data["user"])
        for i in drift.find(stack.backend.drift_inventory())
        if i.what is drift.What.CONTRIBUTOR_ADDED and i.workspace == made.namespace
    }
    assert made.contributor not in added
    assert {"eve@example.com", "UADMIN002"} <= added  # not adopted: still someone's to explain
