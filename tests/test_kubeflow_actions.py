"""Live Kubeflow actions against the fake apiserver, through the official client.

Every test asserts on the state the fake ends up in (what a real cluster would hold), not on the
calls made. The fake plays the profile controller, validates Profiles and AuthorizationPolicies
against the real CRD schemas (when ../shared/reference is present) and applies RBAC defaulting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from handlers import kinds
from handlers.errors import PermanentError, TemporaryError
from handlers.naming import kfam_binding_name
from handlers.plan import StepOutcome
from handlers.settings import CoreSettings
from provisioning import k8s
from provisioning.kubeflow import KubeflowActions
from provisioning.settings import KubeflowSettings
from tests.fakes.apiserver import FakeApiServer, crd_schemas_available
from tests.fakes.clock import FakeClock
from tests.fakes.facts import StaticFacts
from tests.fakes.kfam import KFAM_VECTORS

RBAC = "rbac.authorization.k8s.io"
RBAC_V1 = f"{RBAC}/v1"
ISTIO = "security.istio.io/v1beta1"
OWNER = "owner@example.com"
HARD = {"cpu": "8", "memory": "32Gi", "requests.nvidia.com/gpu": "1", "persistentvolumeclaims": "5",
        "requests.storage": "100Gi"}
MANAGED = {"app.kubernetes.io/managed-by": "kf-chatops"}
DEFAULT_PRINCIPALS = ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
                      "cluster.local/ns/kubeflow/sa/ml-pipeline-ui"]



class HookClock(FakeClock):
    """A fake clock that runs a callback on each sleep (to change the world while a step polls)."""

    def __init__(self, on_sleep: Callable[[int], None]) -> None:
        super().__init__()
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.on_sleep(len(self.slept))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings() -> KubeflowSettings:
    return KubeflowSettings(namespace_timeout=60.0, poll_interval=2.0, kube_api_url="https://api.example:6443")


@pytest.fixture
def kf(kube_api_client: client.ApiClient, settings: KubeflowSettings, clock: FakeClock) -> KubeflowActions:
    return KubeflowActions(kube_api_client, settings, clock)


def profile_params(name: str = "team-a", owner: str = OWNER,
                   hard: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "owner": owner, "hard": dict(HARD if hard is None else hard),
            "labels": dict(MANAGED)}


def workspace(kf: KubeflowActions, name: str = "team-a") -> str:
    kf.registry()["kubeflow.profile"].ensure(profile_params(name))
    return name


def share(kf: KubeflowActions, ns: str, user: str, role: str = "edit") -> StepOutcome:
    return kf.registry()["kubeflow.contributor"].ensure({"namespace": ns, "user": user, "role": role})


def unshare(kf: KubeflowActions, ns: str, user: str) -> StepOutcome:
    return kf.registry()["kubeflow.contributor.remove"].ensure({"namespace": ns, "user": user})


def pair(server: FakeApiServer, ns: str, name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return server.get(RBAC_V1, "rolebindings", name, ns), server.get(ISTIO, "authorizationpolicies", name, ns)


# -- Profile ------------------------------------------------------------------------------------


def test_profile_has_the_reference_shape_and_the_controllers_namespace_is_awaited(
        apiserver: FakeApiServer, kf: KubeflowActions, clock: FakeClock) -> None:
    apiserver.profile_controller_delay = 3  # the namespace shows up on the 4th look

    outcome = kf.registry()["kubeflow.profile"].ensure(profile_params())

    assert outcome.created is True
    profile = apiserver.get("kubeflow.org/v1", "profiles", "team-a")
    assert profile is not None
    assert profile["metadata"]["labels"] == MANAGED
    assert profile["spec"] == {"owner": {"kind": "User", "name": OWNER}, "resourceQuotaSpec": {"hard": HARD}}
    namespace = apiserver.get("v1", "namespaces", "team-a")
    assert namespace is not None and namespace["metadata"]["annotations"]["owner"] == OWNER
    assert len(clock.slept) == 3 and set(clock.slept) == {2.0}
    quota = apiserver.get("v1", "resourcequotas", "kf-resource-quota", "team-a")
    assert quota is not None and quota["spec"]["hard"] == HARD


def test_profile_without_quota_has_no_resource_quota_spec(apiserver: FakeApiServer,
                                                          kf: KubeflowActions) -> None:
    kf.registry()["kubeflow.profile"].ensure(profile_params(hard={}))
    profile = apiserver.get("kubeflow.org/v1", "profiles", "team-a")
    assert profile is not None and profile["spec"] == {"owner": {"kind": "User", "name": OWNER}}


def test_profile_rerun_is_idempotent_and_undo_removes_only_what_it_made(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    action = kf.registry()["kubeflow.profile"]
    first = action.ensure(profile_params())
    second = action.ensure(profile_params())

    assert (first.created, second.created) == (True, False)
    assert len(apiserver.list("kubeflow.org/v1", "profiles")) == 1
    action.undo(profile_params(), second)  # found, not made: left alone
    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is not None
    action.undo(profile_params(), first)
    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is None
    assert apiserver.get("v1", "namespaces", "team-a") is None  # the controller's objects go with it


def test_namespace_of_someone_else_is_refused_before_anything_is_created(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    apiserver.seed({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "team-a", "annotations": {"owner": "mallory@example.com"}}})

    with pytest.raises(PermanentError, match=re.escape("not owned by owner@example.com")):
        kf.registry()["kubeflow.profile"].ensure(profile_params())

    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is None


def test_profile_of_another_owner_is_refused(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    kf.registry()["kubeflow.profile"].ensure(profile_params(owner="bob@example.com"))
    with pytest.raises(PermanentError, match=re.escape("owned by bob@example.com")):
        kf.registry()["kubeflow.profile"].ensure(profile_params())
    profile = apiserver.get("kubeflow.org/v1", "profiles", "team-a")
    assert profile is not None and profile["spec"]["owner"]["name"] == "bob@example.com"


def test_failed_condition_is_surfaced_and_the_profile_the_step_made_is_removed(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, settings: KubeflowSettings) -> None:
    def namespace_taken_meanwhile(sleeps: int) -> None:
        if sleeps == 1:  # someone else's namespace appears while the controller is still slow
            apiserver.seed({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "team-a", "annotations": {"owner": "mallory@example.com"}}})
            apiserver.run_profile_controller()

    apiserver.profile_controller_delay = 5
    kf = KubeflowActions(kube_api_client, settings, HookClock(namespace_taken_meanwhile))

    with pytest.raises(PermanentError, match="namespace already exist, but not owned by profile creator"):
        kf.registry()["kubeflow.profile"].ensure(profile_params())

    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is None


def test_failed_condition_on_an_existing_profile_is_reported(apiserver: FakeApiServer,
                                                             kf: KubeflowActions) -> None:
    apiserver.profile_controller = False
    apiserver.seed({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "team-a"},
                    "spec": {"owner": {"kind": "User", "name": OWNER}},
                    "status": {"conditions": [{"type": "Failed", "message": "plugin AwsIamForServiceAccount: "
                                                                            "AccessDenied"}]}})
    with pytest.raises(PermanentError, match="AccessDenied"):
        kf.registry()["kubeflow.profile"].ensure(profile_params())
    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is not None  # not ours to delete


def test_slow_controller_is_a_temporary_error_after_the_timeout(apiserver: FakeApiServer, kf: KubeflowActions,
                                                                clock: FakeClock) -> None:
    apiserver.profile_controller = False
    with pytest.raises(TemporaryError, match="has not created namespace"):
        kf.registry()["kubeflow.profile"].ensure(profile_params())
    assert sum(clock.slept) >= 60.0


def test_profile_remove_keeps_data_unless_purged(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = "team-a"
    kf.registry()["kubeflow.profile"].ensure({**profile_params(ns), "_request": "RREQ1"})
    for i in range(2):
        apiserver.seed({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": f"vol-{i}", "namespace": ns}, "spec": {}})
    remove = kf.registry()["kubeflow.profile.remove"]

    with pytest.raises(PermanentError, match="2 PersistentVolumeClaim"):
        remove.ensure({**profile_params(), "purge_data": False})
    assert apiserver.get("kubeflow.org/v1", "profiles", ns) is not None

    outcome = remove.ensure({**profile_params(), "purge_data": True})
    assert outcome.details["deleted"] is True
    assert apiserver.get("kubeflow.org/v1", "profiles", ns) is None
    assert apiserver.get("v1", "namespaces", ns) is None
    assert remove.ensure({**profile_params(), "purge_data": True}).created is False  # already gone: done


def test_profile_remove_refuses_a_profile_without_the_mark_unless_adopted(
    apiserver: FakeApiServer, kf: KubeflowActions
) -> None:
    ns = workspace(kf)  # called directly: made without a request's mark, as if by hand
    remove = kf.registry()["kubeflow.profile.remove"]

    with pytest.raises(PermanentError, match="Kubeflow Profile `team-a` carries neither"):
        remove.ensure({**profile_params(), "purge_data": True})
    assert apiserver.get("kubeflow.org/v1", "profiles", ns) is not None
    assert apiserver.get("v1", "namespaces", ns) is not None

    outcome = remove.ensure({**profile_params(), "purge_data": True, "adopted": True})
    assert outcome.details["deleted"] is True
    assert apiserver.get("kubeflow.org/v1", "profiles", ns) is None


# -- PodDefault ---------------------------------------------------------------------------------


def planned_poddefault(name: str = "team-a") -> dict[str, Any]:
    """The PodDefault step of a real GPU workspace plan (default settings)."""
    context = kinds.PlanContext(CoreSettings(), StaticFacts(), "R1")
    plan = kinds.WorkspaceCreate(name, OWNER, gpu=1).plan(context)
    return dict(next(s.params for s in plan.steps if s.action == "kubeflow.poddefault"))


@pytest.mark.skipif(not crd_schemas_available(),
                    reason="../shared/reference/kubeflow-manifests is absent: no PodDefault CRD to check")
def test_the_planned_poddefault_tolerates_the_nodegroup_and_the_real_crd_prunes_nothing(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    params = planned_poddefault()
    action = kf.registry()["kubeflow.poddefault"]
    outcome = action.ensure(params)
    assert outcome.created is True and action.ensure(params).created is False

    pd = apiserver.get("kubeflow.org/v1alpha1", "poddefaults", "team-a-g4dn-xlarge", ns)
    assert pd is not None and pd["metadata"]["labels"] == MANAGED
    assert pd["spec"] == {"selector": {"matchLabels": {"team-a-g4dn-xlarge": "true"}},
                          "desc": "Run on the g4dn.xlarge nodegroup",
                          "tolerations": [
                              {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                              {"key": "kf-chatops/dedicated", "operator": "Equal", "value": ns,
                               "effect": "NoSchedule"}]}
    # What was sent is what the CRD's schema kept: no field outside PodDefault v1alpha1.
    sent = [r.body for r in apiserver.requests if r.method == "POST" and r.path.endswith("/poddefaults")]
    assert sent and all(body["spec"] == pd["spec"] for body in sent)
    action.undo(params, outcome)
    assert apiserver.get("kubeflow.org/v1alpha1", "poddefaults", "team-a-g4dn-xlarge", ns) is None


def test_a_drifted_poddefault_of_ours_converges_and_a_foreign_one_without_the_tolerations_is_refused(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    params = planned_poddefault()
    action = kf.registry()["kubeflow.poddefault"]
    old_style = {**params, "tolerations": params["tolerations"][:1]}  # made before pinning
    action.ensure(old_style)

    action.ensure(params)
    pd = apiserver.get("kubeflow.org/v1alpha1", "poddefaults", "team-a-g4dn-xlarge", ns)
    assert pd is not None and pd["spec"]["tolerations"] == params["tolerations"]

    other = workspace(kf, "other")
    apiserver.seed({"apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault",
                    "metadata": {"name": "team-a-g4dn-xlarge", "namespace": other},
                    "spec": {"selector": {"matchLabels": {"x": "true"}}, "tolerations": []}})
    with pytest.raises(PermanentError, match="did not make"):
        action.ensure({**params, "namespace": other})
    foreign = apiserver.get("kubeflow.org/v1alpha1", "poddefaults", "team-a-g4dn-xlarge", other)
    assert foreign is not None and foreign["spec"]["tolerations"] == []


# -- contributors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("email", "expected"), KFAM_VECTORS)
def test_contributor_pair_is_exactly_kfams(apiserver: FakeApiServer, kf: KubeflowActions,
                                           email: str, expected: str) -> None:
    ns = workspace(kf)
    outcome = share(kf, ns, email)

    assert outcome.created is True and kfam_binding_name(email, "edit") == expected
    binding, policy = pair(apiserver, ns, expected)
    assert binding is not None and policy is not None
    assert binding["metadata"]["annotations"] == {"user": email, "role": "edit"}
    assert binding["metadata"]["labels"] == MANAGED
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"}
    assert binding["subjects"] == [{"apiGroup": RBAC, "kind": "User", "name": email}]
    assert policy["metadata"]["annotations"] == {"user": email, "role": "edit"}
    assert policy["metadata"]["labels"] == MANAGED
    assert policy["spec"] == {"rules": [{
        "when": [{"key": "request.headers[kubeflow-userid]", "values": [email]}],
        "from": [{"source": {"principals": DEFAULT_PRINCIPALS}}]}]}
    # The dashboard's list (KFAM) reads exactly this back.
    assert kf.workspace_state(ns).contributors == {email: "edit"}


@pytest.mark.skipif(not crd_schemas_available(),
                    reason="../shared/reference (the real CRD schemas) is absent")
def test_authorization_policy_passes_the_real_crd_schema(apiserver: FakeApiServer,
                                                         kf: KubeflowActions) -> None:
    assert apiserver.schema_validation
    ns = workspace(kf)
    share(kf, ns, "alice@example.com", "view")
    _, policy = pair(apiserver, ns, "user-alice-example-com-clusterrole-view")
    # Nothing pruned: every field we sent is in the schema.
    assert policy is not None
    assert policy["spec"]["rules"][0]["from"][0]["source"]["principals"] == DEFAULT_PRINCIPALS
    # And the fake does reject what the schema refuses, so the check above means something.
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(kf.kube.api).create_namespaced_custom_object(
            "security.istio.io", "v1beta1", ns, "authorizationpolicies",
            {"apiVersion": ISTIO, "kind": "AuthorizationPolicy", "metadata": {"name": "bad"},
             "spec": {"action": "MAYBE"}})
    assert err.value.status == 422


def test_rerun_of_an_identical_pair_creates_nothing(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    share(kf, ns, "alice@example.com")
    again = share(kf, ns, "alice@example.com")
    assert again.created is False
    assert again.details["created_halves"] == []


def test_kfam_name_collision_is_refused_and_changes_nothing(apiserver: FakeApiServer,
                                                            kf: KubeflowActions) -> None:
    ns = workspace(kf)
    share(kf, ns, "a.b@x.com")
    before = pair(apiserver, ns, "user-a-b-x-com-clusterrole-edit")

    with pytest.raises(PermanentError, match=re.escape("a.b@x.com, not a-b@x.com")):
        share(kf, ns, "a-b@x.com")
    with pytest.raises(PermanentError, match="KFAM names"):
        unshare(kf, ns, "a-b@x.com")

    assert pair(apiserver, ns, "user-a-b-x-com-clusterrole-edit") == before


def test_role_change_replaces_the_pair_and_undo_restores_it(apiserver: FakeApiServer,
                                                            kf: KubeflowActions) -> None:
    ns = workspace(kf)
    user = "alice@example.com"
    share(kf, ns, user, "edit")
    outcome = share(kf, ns, user, "view")

    assert outcome.created is True and outcome.details["previous_role"] == "edit"
    assert pair(apiserver, ns, kfam_binding_name(user, "edit")) == (None, None)
    binding, policy = pair(apiserver, ns, kfam_binding_name(user, "view"))
    assert binding is not None and binding["roleRef"]["name"] == "kubeflow-view" and policy is not None
    assert kf.workspace_state(ns).contributors == {user: "view"}

    kf.registry()["kubeflow.contributor"].undo({"namespace": ns, "user": user, "role": "view"}, outcome)
    assert pair(apiserver, ns, kfam_binding_name(user, "view")) == (None, None)
    assert all(half is not None for half in pair(apiserver, ns, kfam_binding_name(user, "edit")))
    assert kf.workspace_state(ns).contributors == {user: "edit"}


@pytest.mark.parametrize("missing", ["rolebindings", "authorizationpolicies"])
def test_share_repairs_a_missing_half(apiserver: FakeApiServer, kf: KubeflowActions, missing: str) -> None:
    ns = workspace(kf)
    share(kf, ns, "alice@example.com")
    name = "user-alice-example-com-clusterrole-edit"
    _delete(kf, missing, ns, name)

    outcome = share(kf, ns, "alice@example.com")

    assert outcome.created is True and len(outcome.details["created_halves"]) == 1
    assert all(half is not None for half in pair(apiserver, ns, name))


@pytest.mark.parametrize("missing", ["rolebindings", "authorizationpolicies"])
def test_unshare_with_a_missing_half_removes_the_other(apiserver: FakeApiServer, kf: KubeflowActions,
                                                      missing: str) -> None:
    ns = workspace(kf)
    share(kf, ns, "alice@example.com")
    name = "user-alice-example-com-clusterrole-edit"
    _delete(kf, missing, ns, name)

    outcome = unshare(kf, ns, "alice@example.com")

    assert outcome.created is True
    assert pair(apiserver, ns, name) == (None, None)
    assert unshare(kf, ns, "alice@example.com").created is False  # nothing there: success


def test_unshare_never_touches_the_owners_objects(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    unshare(kf, ns, OWNER)
    assert apiserver.get(RBAC_V1, "rolebindings", "namespaceAdmin", ns) is not None
    assert apiserver.get(ISTIO, "authorizationpolicies", "ns-owner-access-istio", ns) is not None


def test_unshare_refuses_a_binding_whose_subject_is_someone_else(apiserver: FakeApiServer,
                                                                 kf: KubeflowActions) -> None:
    ns = workspace(kf)
    name = kfam_binding_name("alice@example.com", "edit")
    apiserver.seed({"apiVersion": RBAC_V1, "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": ns, "annotations": {"user": "alice@example.com",
                                                                                "role": "edit"}},
                    "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"},
                    "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "eve@example.com"}]})
    with pytest.raises(PermanentError, match=re.escape("eve@example.com")):
        unshare(kf, ns, "alice@example.com")
    assert apiserver.get(RBAC_V1, "rolebindings", name, ns) is not None


def _writes(server: FakeApiServer) -> list[str]:
    return [json.dumps(r.body) for r in server.requests if r.method in ("POST", "PUT", "PATCH")]


@pytest.mark.parametrize(
    ("settings_", "user"),
    [
        (KubeflowSettings(), "*@example.com"),
        (KubeflowSettings(), "a*"),
        (KubeflowSettings(), "*"),
        # bob holds a view grant: the role change must be refused before his old pair is deleted
        (KubeflowSettings(userid_prefix="*"), "bob@example.com"),
        (KubeflowSettings(ingress_principal="cluster.local/ns/istio-system/*"), "bob@example.com"),
    ],
)
def test_a_value_istio_would_read_as_a_wildcard_never_reaches_the_cluster(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, clock: FakeClock,
        settings_: KubeflowSettings, user: str) -> None:
    good = KubeflowActions(kube_api_client, KubeflowSettings(), clock)
    ns = workspace(good)
    share(good, ns, "bob@example.com", "view")
    before = _writes(apiserver)

    with pytest.raises(PermanentError, match="wildcard"):
        share(KubeflowActions(kube_api_client, settings_, clock), ns, user, "edit")

    assert _writes(apiserver) == before
    assert not any("*" in body for body in _writes(apiserver))
    assert [r for r in apiserver.requests if r.method == "DELETE"] == []


def test_a_profile_owner_with_a_wildcard_is_refused_before_any_write(apiserver: FakeApiServer,
                                                                      kf: KubeflowActions) -> None:
    with pytest.raises(PermanentError, match="wildcard"):
        kf.registry()["kubeflow.profile"].ensure(profile_params("team-w", owner="*@example.com"))
    assert _writes(apiserver) == []


def _delete(kf: KubeflowActions, plural: str, ns: str, name: str) -> None:
    kind = k8s.ROLE_BINDING if plural == "rolebindings" else k8s.AUTHORIZATION_POLICY
    assert kf.kube.delete(kind, name, ns)


# -- identity -----------------------------------------------------------------------------------


def _profiles_deployment(containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "profiles-deployment", "namespace": "kubeflow"},
            "spec": {"selector": {"matchLabels": {"app": "profiles"}},
                     "template": {"metadata": {"labels": {"app": "profiles"}},
                                  "spec": {"containers": containers}}}}


def _seed_kubeflow_namespace(server: FakeApiServer) -> None:
    server.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}})


def test_identity_is_read_from_the_profiles_deployment(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    _seed_kubeflow_namespace(apiserver)
    apiserver.seed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "profiles-config-4b8d", "namespace": "kubeflow"},
                    "data": {"USERID_HEADER": "x-auth-email", "USERID_PREFIX": "accounts:"}})
    apiserver.seed(_profiles_deployment([
        {"name": "kfam", "image": "kfam", "envFrom": [{"configMapRef": {"name": "profiles-config-4b8d"}}]},
        {"name": "manager", "image": "manager", "env": [
            {"name": "ISTIO_INGRESS_GATEWAY_PRINCIPAL", "value": "cluster.local/ns/gw/sa/gateway"},
            {"name": "KFP_UI_PRINCIPAL",
             "valueFrom": {"configMapKeyRef": {"name": "profiles-config-4b8d", "key": "KFP"}}}]},
    ]))
    identity = kf.identity_config()

    assert (identity.header, identity.prefix) == ("x-auth-email", "accounts:")
    assert identity.principals == ["cluster.local/ns/gw/sa/gateway", DEFAULT_PRINCIPALS[1]]
    assert identity.sources == {"header": "profiles-deployment", "prefix": "profiles-deployment",
                                "ingress_principal": "profiles-deployment", "kfp_ui_principal": "default"}
    ns = workspace(kf)
    share(kf, ns, "alice@example.com")
    _, policy = pair(apiserver, ns, "user-alice-example-com-clusterrole-edit")
    assert policy is not None and policy["spec"]["rules"][0] == {
        "when": [{"key": "request.headers[x-auth-email]", "values": ["accounts:alice@example.com"]}],
        "from": [{"source": {"principals": ["cluster.local/ns/gw/sa/gateway", DEFAULT_PRINCIPALS[1]]}}]}


def test_identity_falls_back_to_the_manifests_defaults_and_settings_win(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, clock: FakeClock) -> None:
    fallback = KubeflowActions(kube_api_client, KubeflowSettings(), clock).identity_config()
    assert (fallback.header, fallback.prefix) == ("kubeflow-userid", "")
    assert fallback.principals == DEFAULT_PRINCIPALS
    assert set(fallback.sources.values()) == {"default"}

    _seed_kubeflow_namespace(apiserver)
    apiserver.seed(_profiles_deployment([{"name": "manager", "image": "m", "env": [
        {"name": "USERID_HEADER", "value": "from-deployment"}, {"name": "USERID_PREFIX", "value": "p:"}]}]))
    mixed = KubeflowActions(kube_api_client, KubeflowSettings(userid_header="from-settings"), clock)
    identity = mixed.identity_config()
    assert (identity.header, identity.prefix) == ("from-settings", "p:")
    assert identity.sources["header"] == "settings" and identity.sources["prefix"] == "profiles-deployment"
    reads = len(apiserver.requests)
    mixed.identity_config()
    assert len(apiserver.requests) == reads  # cached after the first read


# -- quota --------------------------------------------------------------------------------------


def test_quota_merge_patch_nulls_removed_resources_and_undo_restores(apiserver: FakeApiServer,
                                                                     kf: KubeflowActions) -> None:
    ns = workspace(kf)
    new = {"cpu": "16", "memory": "32Gi", "requests.nvidia.com/gpu": "4"}
    action = kf.registry()["kubeflow.quota"]

    outcome = action.ensure({"profile": ns, "hard": new})

    assert outcome.created is True and outcome.details == {"previous": HARD}
    profile = apiserver.get("kubeflow.org/v1", "profiles", ns)
    assert profile is not None and profile["spec"]["resourceQuotaSpec"]["hard"] == new
    patches = [r for r in apiserver.requests if r.method == "PATCH" and r.path.endswith(f"/profiles/{ns}")]
    assert patches and patches[-1].content_type == "application/merge-patch+json"
    quota = apiserver.get("v1", "resourcequotas", "kf-resource-quota", ns)
    assert quota is not None and quota["spec"]["hard"] == new  # the controller followed the Profile
    assert kf.workspace_state(ns).profile_hard == new

    assert action.ensure({"profile": ns, "hard": new}).created is False
    action.undo({"profile": ns, "hard": new}, outcome)
    profile = apiserver.get("kubeflow.org/v1", "profiles", ns)
    assert profile is not None and profile["spec"]["resourceQuotaSpec"]["hard"] == HARD


def test_quota_undo_does_not_clobber_a_later_change(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    action = kf.registry()["kubeflow.quota"]
    outcome = action.ensure({"profile": ns, "hard": {**HARD, "cpu": "16"}})
    kf.kube.merge_patch(k8s.PROFILE, ns, {"spec": {"resourceQuotaSpec": {"hard": {"cpu": "32"}}}})

    with pytest.raises(PermanentError, match="changed by someone else"):
        action.undo({"profile": ns, "hard": {**HARD, "cpu": "16"}}, outcome)
    profile = apiserver.get("kubeflow.org/v1", "profiles", ns)
    assert profile is not None and profile["spec"]["resourceQuotaSpec"]["hard"]["cpu"] == "32"


# -- token accounts -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["edit", "view"])
def test_token_account_is_labelled_and_never_a_contributor(apiserver: FakeApiServer, kf: KubeflowActions,
                                                           role: str) -> None:
    ns = workspace(kf)
    params = {"namespace": ns, "name": "kfbot-token-r42", "role": role, "token_id": "R42",
              "audiences": ["https://kubernetes.default.svc"], "ttl_seconds": 3600}
    action = kf.registry()["kubeflow.token_account"]
    outcome = action.ensure(params)
    assert outcome.created is True and action.ensure(params).created is True  # its own, by token id

    labels = {**MANAGED, "kf-chatops/token-id": "R42"}
    account = apiserver.get("v1", "serviceaccounts", "kfbot-token-r42", ns)
    binding = apiserver.get(RBAC_V1, "rolebindings", "kfbot-token-r42", ns)
    assert account is not None and binding is not None
    for obj in (account, binding):
        assert obj["metadata"]["labels"] == labels
        assert not {"user", "role"} & set(obj["metadata"].get("annotations") or {})
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": f"kubeflow-{role}"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kfbot-token-r42", "namespace": ns}]
    assert kf.workspace_state(ns).contributors == {}

    action.undo(params, outcome)
    assert apiserver.get("v1", "serviceaccounts", "kfbot-token-r42", ns) is None
    assert apiserver.get(RBAC_V1, "rolebindings", "kfbot-token-r42", ns) is None
    remove = kf.registry()["kubeflow.token_account.remove"]
    assert remove.ensure({"namespace": ns, "name": "kfbot-token-r42"}).created is False  # 404 is fine


def test_token_account_remove_deletes_both(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    kf.registry()["kubeflow.token_account"].ensure(
        {"namespace": ns, "name": "kfbot-token-r7", "role": "edit", "token_id": "R7", "audiences": [],
         "ttl_seconds": 600})
    remove = kf.registry()["kubeflow.token_account.remove"]
    outcome = remove.ensure({"namespace": ns, "name": "kfbot-token-r7"})
    assert sorted(outcome.details["removed"]) == ["RoleBinding", "ServiceAccount"]
    assert apiserver.get("v1", "serviceaccounts", "kfbot-token-r7", ns) is None


# -- read models --------------------------------------------------------------------------------


def test_workspace_state(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    share(kf, ns, "alice@example.com", "edit")
    share(kf, ns, "bob@example.com", "view")
    apiserver.seed({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data", "namespace": ns}, "spec": {}})

    state = kf.workspace_state(ns)

    assert state.exists and state.owner == OWNER and state.pvcs == 1
    assert state.contributors == {"alice@example.com": "edit", "bob@example.com": "view"}
    assert state.quota.hard == HARD and set(state.quota.used) == set(HARD)
    missing = kf.workspace_state("nope")
    assert missing.exists is False and missing.owner is None and missing.profile_hard is None


# -- error translation (provisioning/k8s.py) ------------------------------------------------------


def test_forbidden_names_the_missing_permission(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    apiserver.fail_next("POST", r"/rolebindings$", 403)
    with pytest.raises(PermanentError) as err:
        share(kf, ns, "alice@example.com")
    assert err.value.user_message.startswith(
        "The bot's ServiceAccount may not create rolebindings.rbac.authorization.k8s.io in namespace team-a")


def test_server_errors_are_temporary_and_invalid_is_permanent_without_secrets(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    apiserver.fail_next("GET", r"/namespaces/team-a$", 500)
    with pytest.raises(TemporaryError):
        share(kf, ns, "alice@example.com")
    leaky = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
             "message": "Secret \"x\" is invalid: data[K]: $2b$12$" + "a" * 53
                        + " eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig" + "\nsecond line" + "z" * 400}
    apiserver.fail_next("POST", r"/rolebindings$", 422, body=leaky)
    with pytest.raises(PermanentError) as err:
        share(kf, ns, "alice@example.com")
    message = err.value.user_message
    assert "$2b$" not in message and "eyJ" not in message and "\n" not in message
    assert "is invalid" in message and len(message) < 400


def test_translate_honours_retry_after_and_connection_errors_are_temporary(clock: FakeClock) -> None:
    throttled = ApiException(status=429, reason="Too Many Requests")
    throttled.headers = {"Retry-After": "7"}
    error = k8s.translate(throttled, verb="list", kind=k8s.PROFILE, namespace=None, name=None)
    assert isinstance(error, TemporaryError) and error.delay == 7.0

    unreachable = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    unreachable.configuration.retries = 0
    kf = KubeflowActions(unreachable, KubeflowSettings(), clock)
    with pytest.raises(TemporaryError, match=r"could not be reached|connection failed"):
        kf.workspace_state("team-a")


def test_no_io_at_construction(clock: FakeClock) -> None:
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    KubeflowActions(api, KubeflowSettings(), clock).registry()  # would raise if it connected


def test_outcomes_are_plain_json(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    outcomes = [kf.registry()["kubeflow.profile"].ensure(profile_params()), share(kf, ns, "a@example.com"),
                share(kf, ns, "a@example.com", "view"), unshare(kf, ns, "a@example.com")]
    for outcome in outcomes:  # the store keeps details as JSON
        assert StepOutcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome


def test_a_profile_still_being_deleted_is_retried_later(apiserver: FakeApiServer,
                                                        kf: KubeflowActions) -> None:
    apiserver.profile_controller = False  # nobody removes the finalizer
    apiserver.seed({"apiVersion": "kubeflow.org/v1", "kind": "Profile",
                    "metadata": {"name": "team-a", "finalizers": ["profile-finalizer"],
                                 "deletionTimestamp": "2026-11-22T08:00:00Z"},
                    "spec": {"owner": {"kind": "User", "name": OWNER}}})
    with pytest.raises(TemporaryError, match="being deleted"):
        kf.registry()["kubeflow.profile"].ensure(profile_params())


def test_writes_into_a_missing_namespace_are_permanent(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    with pytest.raises(PermanentError, match="`ghost` does not exist"):
        share(kf, "ghost", "alice@example.com")
    params = {"namespace": "ghost", "name": "ng", "tolerations": [], "description": "x"}
    with pytest.raises(PermanentError, match="namespace ghost does not exist"):
        kf.registry()["kubeflow.poddefault"].ensure(params)


# -- ownership marks ----------------------------------------------------------------------------
# The engine passes the request id as params["_request"]; objects carry it as a label, and a step
# that finds its object claims it (created=True) only when the label names its own request.

MARK = "kf-chatops/request"


def by(request: str, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "_request": request}


def test_profile_made_by_an_attempt_whose_wait_ran_out_is_still_the_requests_own(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    action = kf.registry()["kubeflow.profile"]
    apiserver.profile_controller_delay = 1000  # the namespace does not come in time
    with pytest.raises(TemporaryError, match="has not created namespace"):
        action.ensure(by("R1", profile_params()))
    profile = apiserver.get("kubeflow.org/v1", "profiles", "team-a")
    assert profile is not None and profile["metadata"]["labels"] == {**MANAGED, MARK: "R1"}
    apiserver.run_profile_controller()

    retried = action.ensure(by("R1", profile_params()))
    other = action.ensure(by("R2", profile_params()))

    assert (retried.created, other.created) == (True, False)
    action.undo(by("R1", profile_params()), retried)
    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is None


def test_an_unmarked_profile_is_never_claimed(apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    kf.registry()["kubeflow.profile"].ensure(profile_params())  # a human's (or an older bot's)

    outcome = kf.registry()["kubeflow.profile"].ensure(by("R1", profile_params()))

    assert outcome.created is False
    profile = apiserver.get("kubeflow.org/v1", "profiles", "team-a")
    assert profile is not None and MARK not in profile["metadata"]["labels"]


def test_poddefault_contributor_and_token_pairs_carry_the_mark(apiserver: FakeApiServer,
                                                               kf: KubeflowActions) -> None:
    ns = workspace(kf)
    registry = kf.registry()
    pd = by("R1", {"namespace": ns, "name": "ng-gpu", "tolerations": []})
    share_params = by("R2", {"namespace": ns, "user": "bob@example.com", "role": "edit"})
    token = by("R3", {"namespace": ns, "name": "kf-token-r3", "role": "view", "token_id": "R3"})

    assert registry["kubeflow.poddefault"].ensure(pd).created is True
    assert registry["kubeflow.contributor"].ensure(share_params).created is True
    registry["kubeflow.token_account"].ensure(token)

    # A retry of the same request claims what it made; another request never does.
    assert registry["kubeflow.poddefault"].ensure(pd).created is True
    assert registry["kubeflow.poddefault"].ensure({**pd, "_request": "R9"}).created is False
    again = registry["kubeflow.contributor"].ensure(share_params)
    assert again.created is True and again.details["created_halves"] == ["RoleBinding",
                                                                         "AuthorizationPolicy"]
    assert registry["kubeflow.contributor"].ensure({**share_params, "_request": "R9"}).created is False
    name = kfam_binding_name("bob@example.com", "edit")
    binding, policy = pair(apiserver, ns, name)
    assert binding is not None and policy is not None
    assert binding["metadata"]["labels"] == policy["metadata"]["labels"] == {**MANAGED, MARK: "R2"}
    made = apiserver.get("kubeflow.org/v1alpha1", "poddefaults", "ng-gpu", ns)
    assert made is not None and made["metadata"]["labels"] == {**MANAGED, MARK: "R1"}
    for plural in ("serviceaccounts", "rolebindings"):
        api_version = "v1" if plural == "serviceaccounts" else RBAC_V1
        obj = apiserver.get(api_version, plural, "kf-token-r3", ns)
        assert obj is not None and obj["metadata"]["labels"][MARK] == "R3"


def test_a_request_id_that_cannot_be_a_label_is_refused_before_any_write(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    with pytest.raises(PermanentError, match="ownership label"):
        kf.registry()["kubeflow.profile"].ensure(by("not a label!", profile_params()))
    assert apiserver.get("kubeflow.org/v1", "profiles", "team-a") is None


# -- the bot's notebook-activity policy (cost control) ----------------------------------------------

BOT = "cluster.local/ns/kf-chatops/sa/kf-chatops"


def planned_activity_policy(name: str = "team-a") -> dict[str, Any]:
    context = kinds.PlanContext(CoreSettings(), StaticFacts(), "RPLAN01")
    plan = kinds.WorkspaceCreate(name, OWNER).plan(context)
    return dict(next(s.params for s in plan.steps if s.action == "kubeflow.notebook_activity"))


def test_the_activity_policy_lets_only_the_bot_get_kernels_and_terminals(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    params = {**planned_activity_policy(), "_request": "RPLAN01"}
    assert params["namespace"] == ns
    action = kf.registry()["kubeflow.notebook_activity"]
    outcome = action.ensure(params)
    assert outcome.created is True and action.ensure(params).created is True  # its own mark
    policy = apiserver.get(ISTIO, "authorizationpolicies", "kfbot-notebook-activity", ns)
    assert policy is not None and policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kf-chatops"
    # Exactly what was planned survived the real CRD's schema (validated and pruned by the fake).
    assert policy["spec"] == {
        "action": "ALLOW",
        "rules": [{
            "from": [{"source": {"principals": [BOT]}}],
            "to": [{"operation": {"methods": ["GET"], "paths": ["*/api/kernels", "*/api/terminals"]}}],
        }],
    }
    action.undo(params, outcome)
    assert apiserver.get(ISTIO, "authorizationpolicies", "kfbot-notebook-activity", ns) is None


def test_a_drifted_activity_policy_converges_and_a_foreign_one_is_refused(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    ns = workspace(kf)
    params = planned_activity_policy()
    action = kf.registry()["kubeflow.notebook_activity"]
    action.ensure(params)
    client.CustomObjectsApi(kf.kube.api).patch_namespaced_custom_object(
        "security.istio.io", "v1beta1", ns, "authorizationpolicies", "kfbot-notebook-activity",
        {"spec": {"rules": [{"to": [{"operation": {"paths": ["*"]}}]}]}},
    )
    assert action.ensure(params).created is False  # made without a request: not this request's
    policy = apiserver.get(ISTIO, "authorizationpolicies", "kfbot-notebook-activity", ns)
    assert policy is not None and policy["spec"]["rules"][0]["from"] == [{"source": {"principals": [BOT]}}]

    other = workspace(kf, "other")
    apiserver.seed({"apiVersion": ISTIO, "kind": "AuthorizationPolicy",
                    "metadata": {"name": "kfbot-notebook-activity", "namespace": other},
                    "spec": {"rules": [{}]}})
    with pytest.raises(PermanentError, match="did not make"):
        action.ensure({"namespace": other})
    foreign = apiserver.get(ISTIO, "authorizationpolicies", "kfbot-notebook-activity", other)
    assert foreign is not None and foreign["spec"] == {"rules": [{}]}


@pytest.mark.parametrize("principal", ["*", "cluster.local/ns/kf-chatops/sa/*", ""])
def test_a_wildcard_bot_principal_is_never_written(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, settings: KubeflowSettings,
        clock: FakeClock, principal: str) -> None:
    kf = KubeflowActions(kube_api_client, settings, clock, principal)
    ns = workspace(kf)
    with pytest.raises(PermanentError, match="wildcard"):
        kf.registry()["kubeflow.notebook_activity"].ensure({"namespace": ns})
    assert apiserver.get(ISTIO, "authorizationpolicies", "kfbot-notebook-activity", ns) is None


def test_the_dry_run_shows_the_pair_a_role_change_writes_and_the_pair_it_deletes(
        apiserver: FakeApiServer, kf: KubeflowActions) -> None:
    """What ``kfbot plan`` and a dry-run thread show for a share is what the live action does:
    the same RoleBinding and the full AuthorizationPolicy (with the default identity), and the
    DELETEs of the old role's pair."""
    from provisioning import dryrun  # noqa: PLC0415 - only this test reads the dry-run rendering

    ns, user = workspace(kf), "alice@example.com"
    share(kf, ns, user, "edit")
    share(kf, ns, user, "view")  # a role change

    calls = dryrun.render("kubeflow.contributor", {"namespace": ns, "user": user, "role": "view"})
    posted = {c.split(" ", 2)[1]: json.loads(c.split(" ", 2)[2]) for c in calls if c.startswith("POST ")}
    binding, policy = pair(apiserver, ns, "user-alice-example-com-clusterrole-view")
    assert binding is not None and policy is not None
    shown_rb = posted[f"/apis/{RBAC_V1}/namespaces/{ns}/rolebindings"]
    shown_ap = posted[f"/apis/{ISTIO}/namespaces/{ns}/authorizationpolicies"]
    for shown, live in ((shown_rb, binding), (shown_ap, policy)):
        meta = live["metadata"]
        mine = {k: meta[k] for k in ("name", "namespace", "annotations")}
        assert {k: shown["metadata"][k] for k in mine} == mine
        assert shown["metadata"]["labels"].items() <= meta["labels"].items()
        assert (shown["apiVersion"], shown["kind"]) == (live["apiVersion"], live["kind"])
    assert (shown_rb["roleRef"], shown_rb["subjects"]) == (binding["roleRef"], binding["subjects"])
    assert shown_ap["spec"] == policy["spec"]

    old = "user-alice-example-com-clusterrole-edit"
    assert pair(apiserver, ns, old) == (None, None)  # live: the old pair is gone...
    deletes = [c.split(": ", 1)[1] for c in calls if "DELETE " in c]
    assert deletes == [f"DELETE /apis/{RBAC_V1}/namespaces/{ns}/rolebindings/{old}",
                       f"DELETE /apis/{ISTIO}/namespaces/{ns}/authorizationpolicies/{old}"]  # ...and shown
