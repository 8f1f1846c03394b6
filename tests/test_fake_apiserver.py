"""The fake apiserver behaves like kube-apiserver, as seen through the official `kubernetes` client."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.fakes.apiserver import FakeApiServer, crd_schemas_available, decode_token

# Until tests/conftest.py registers the plugin; harmless afterwards (module fixtures shadow the plugin's).

KF = ("kubeflow.org", "v1", "profiles")


def status_of(err: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == err.status
    return body


def profile(name: str, owner: str = "alice@example.com",
            hard: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"owner": {"kind": "User", "name": owner}}
    if hard is not None:
        spec["resourceQuotaSpec"] = {"hard": hard}
    return {"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name}, "spec": spec}


def deployment(name: str, image: str = "dex:1", replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {"metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [
            {"name": "main", "image": image, "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "proxy:1"}]}}}}


@pytest.fixture
def core(kube_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api_client)


@pytest.fixture
def custom(kube_api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api_client)


@pytest.fixture
def rbac(kube_api_client: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(kube_api_client)


@pytest.fixture
def apps(kube_api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube_api_client)


def test_create_answers_201_with_server_metadata(core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                                 apiserver: FakeApiServer) -> None:
    ns = core.create_namespace({"metadata": {"name": "team-a"}})
    cm = core.create_namespaced_config_map("team-a", {"metadata": {"name": "c"}, "data": {"k": "v"}})
    assert ns.metadata.uid and ns.metadata.creation_timestamp and ns.status.phase == "Active"
    assert int(cm.metadata.resource_version) > int(ns.metadata.resource_version)
    assert cm.metadata.uid != ns.metadata.uid and cm.metadata.generation == 1
    apiserver.profile_controller = False
    created = custom.create_cluster_custom_object(*KF, profile("p1"))  # None unless the answer is 201
    assert created is not None and created["metadata"]["uid"]
    assert [sa.metadata.name for sa in core.list_namespaced_service_account("team-a").items] == ["default"]


def test_duplicate_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'configmaps "c" already exists'
    assert body["details"] == {"name": "c", "kind": "configmaps"}


def test_missing_namespace_and_missing_object_are_404(core: client.CoreV1Api,
                                                      custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("nope", {"metadata": {"name": "sa"}})
    assert err.value.status == 404 and status_of(err.value)["message"] == 'namespaces "nope" not found'
    with pytest.raises(ApiException) as err:
        custom.get_cluster_custom_object(*KF, "ghost")
    body = status_of(err.value)
    assert body["reason"] == "NotFound" and body["message"] == 'profiles.kubeflow.org "ghost" not found'
    assert body["details"] == {"name": "ghost", "kind": "profiles", "group": "kubeflow.org"}


def test_generate_name(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_secret("default", {"metadata": {"generateName": "tok-"},
                                                     "stringData": {"token": "s3cret"}})
    assert made.metadata.name.startswith("tok-") and len(made.metadata.name) == 9
    assert base64.b64decode(made.data["token"]) == b"s3cret" and made.type == "Opaque"


def test_invalid_names_and_label_values_are_422(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespace({"metadata": {"name": "Team.A"}})
    assert err.value.status == 422 and "a lowercase RFC 1123 label" in status_of(err.value)["message"]
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default",
                                          {"metadata": {"name": "c", "labels": {"user": "a@b.com"}}})
    body = status_of(err.value)
    assert body["reason"] == "Invalid" and body["message"].startswith(
        'ConfigMap "c" is invalid: metadata.labels: Invalid value: "a@b.com": a valid label')


def test_put_with_stale_resource_version_is_409(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"v": "1"}})
    first.data = {"v": "2"}
    second = core.replace_namespaced_config_map("c", "default", first)
    assert second.data == {"v": "2"} and second.metadata.generation == 2
    first.data = {"v": "3"}  # still carries the first resourceVersion: a lost update
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("c", "default", first)
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    first.metadata.resource_version = None  # unconditional update
    assert core.replace_namespaced_config_map("c", "default", first).data == {"v": "3"}


def test_concurrent_writers_with_one_resource_version_only_one_wins(core: client.CoreV1Api) -> None:
    base = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"v": "0"}})

    def write(i: int) -> int:
        body = {"metadata": {"name": "c", "resourceVersion": base.metadata.resource_version},
                "data": {"v": str(i + 1)}}  # i + 1: writing the same value back would be a no-op
        try:
            core.replace_namespaced_config_map("c", "default", body)
        except ApiException as err:
            return err.status
        return 200

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = sorted(pool.map(write, range(8)))
    assert outcomes == [200] + [409] * 7


def test_noop_update_keeps_resource_version(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"v": "1"}})
    again = core.patch_namespaced_config_map("c", "default", {"data": {"v": "1"}})
    assert again.metadata.resource_version == made.metadata.resource_version


def test_patch_types(core: client.CoreV1Api, apps: client.AppsV1Api, custom: client.CustomObjectsApi,
                     apiserver: FakeApiServer) -> None:
    apps.create_namespaced_deployment("default", deployment("dex"))
    # a dict body goes out as strategic merge: containers and env merge by name
    main = {"name": "main", "image": "dex:2", "env": [{"name": "B", "value": "2"}]}
    patched = apps.patch_namespaced_deployment("dex", "default",
                                               {"spec": {"template": {"spec": {"containers": [main]}}}})
    containers = patched.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("main", "dex:2"), ("sidecar", "proxy:1")]
    assert [e.name for e in containers[0].env] == ["A", "B"]
    assert apiserver.requests[-1].content_type == "application/strategic-merge-patch+json"
    # a list body goes out as JSON patch
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    cm = core.patch_namespaced_config_map("c", "default", [{"op": "add", "path": "/data/b", "value": "2"}])
    assert cm.data == {"a": "1", "b": "2"}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("c", "default", [{"op": "test", "path": "/data/a", "value": "9"}])
    assert err.value.status == 422
    # custom resources: merge patch works, strategic merge is 415
    apiserver.profile_controller = False
    custom.create_cluster_custom_object(*KF, profile("p1"))
    merged = custom.patch_cluster_custom_object(*KF, "p1", {"metadata": {"labels": {"team": "x"}}})
    assert merged["metadata"]["labels"] == {"team": "x"} and merged["spec"]["owner"]["name"]
    with pytest.raises(ApiException) as err:
        custom.patch_cluster_custom_object(*KF, "p1", {"spec": {}},
                                           _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415 and status_of(err.value)["reason"] == "UnsupportedMediaType"
    stale = {"metadata": {"resourceVersion": "1", "labels": {"team": "y"}}}
    with pytest.raises(ApiException) as err:
        custom.patch_cluster_custom_object(*KF, "p1", stale)
    assert err.value.status == 409


def test_generation_bumps_on_spec_changes_only(custom: client.CustomObjectsApi,
                                               apiserver: FakeApiServer) -> None:
    apiserver.profile_controller = False
    custom.create_cluster_custom_object(*KF, profile("p1"))
    labelled = custom.patch_cluster_custom_object(*KF, "p1", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    quota = {"spec": {"resourceQuotaSpec": {"hard": {"cpu": "1"}}}}
    respecced = custom.patch_cluster_custom_object(*KF, "p1", quota)
    assert respecced["metadata"]["generation"] == 2


def test_deployment_rollout_completes_at_once_unless_held(apps: client.AppsV1Api,
                                                          apiserver: FakeApiServer) -> None:
    made = apps.create_namespaced_deployment("default", deployment("dex", replicas=2))
    assert made.status.observed_generation == 1 and made.status.updated_replicas == 2
    restart = {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}}
    restarted = apps.patch_namespaced_deployment("dex", "default", restart)
    assert restarted.metadata.generation == 2 and restarted.status.observed_generation == 2
    apiserver.hold_rollouts = True
    held = apps.patch_namespaced_deployment("dex", "default", {"spec": {"replicas": 3}})
    assert held.metadata.generation == 3 and held.status.observed_generation == 2
    apiserver.complete_rollouts()
    done = apps.read_namespaced_deployment("dex", "default").status
    assert done.observed_generation == 3 and done.ready_replicas == 3


def test_finalizers_hold_deletion_until_removed(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c", "finalizers": ["example.com/x"]}})
    core.delete_namespaced_config_map("c", "default")
    held = core.read_namespaced_config_map("c", "default")
    assert held.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as err:  # no new finalizers once deletion started
        core.patch_namespaced_config_map("c", "default", [
            {"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/y"}])
    assert err.value.status == 422
    core.patch_namespaced_config_map("c", "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("c", "default")
    assert err.value.status == 404


def test_delete_answers_status_and_namespace_deletion_cascades(core: client.CoreV1Api,
                                                                rbac: client.RbacAuthorizationV1Api,
                                                                apiserver: FakeApiServer) -> None:
    core.create_namespace({"metadata": {"name": "team-a"}})
    core.create_namespaced_config_map("team-a", {"metadata": {"name": "c"}})
    rbac.create_namespaced_role_binding("team-a", {"metadata": {"name": "rb"}, "subjects": [],
                                                   "roleRef": {"kind": "ClusterRole", "name": "view"}})
    answer = core.delete_namespace("team-a")
    assert answer.status == "Success" and answer.details.name == "team-a"
    assert apiserver.list("v1", "configmaps", "team-a") == []
    assert apiserver.list("rbac.authorization.k8s.io/v1", "rolebindings", "team-a") == []
    assert apiserver.get("v1", "namespaces", "team-a") is None


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", ["a"]), ("tier==web", ["a"]), ("tier!=web", ["b", "c"]), ("tier in (web,db)", ["a", "b"]),
    ("tier notin (web)", ["b", "c"]), ("tier", ["a", "b"]), ("!tier", ["c"]), ("tier,env=prod", ["a"]),
])
def test_label_selectors(core: client.CoreV1Api, selector: str, expected: list[str]) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}), ("c", {})):
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})
    listed = core.list_namespaced_config_map("default", label_selector=selector)
    assert [cm.metadata.name for cm in listed.items] == expected


def test_field_selectors_and_cluster_wide_list(core: client.CoreV1Api, apiserver: FakeApiServer) -> None:
    core.create_namespace({"metadata": {"name": "team-a"}})
    for name, namespace, phase in (("p1", "team-a", "Running"), ("p2", "default", "Pending")):
        apiserver.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                        "spec": {"containers": [{"name": "main", "image": "x"}]}, "status": {"phase": phase}})
    everywhere = core.list_pod_for_all_namespaces()
    assert [p.metadata.name for p in everywhere.items] == ["p2", "p1"]
    assert everywhere.kind == "PodList" and int(everywhere.metadata.resource_version) > 0
    running = core.list_pod_for_all_namespaces(field_selector="status.phase=Running")
    assert [p.metadata.name for p in running.items] == ["p1"]
    by_ns = core.list_pod_for_all_namespaces(field_selector="metadata.namespace!=team-a")
    assert [p.metadata.name for p in by_ns.items] == ["p2"]
    named = core.list_namespace(field_selector="metadata.name=team-a")
    assert [n.metadata.name for n in named.items] == ["team-a"]
    with pytest.raises(ApiException) as err:
        core.list_namespace(field_selector="spec.owner=x")
    assert err.value.status == 400


def test_rbac_defaults_and_immutable_role_ref(rbac: client.RbacAuthorizationV1Api) -> None:
    made = rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": "user-alice-example-com-clusterrole-edit"},
        "roleRef": {"kind": "ClusterRole", "name": "kubeflow-edit"},
        "subjects": [{"kind": "User", "name": "alice@example.com"}, {"kind": "ServiceAccount", "name": "x"}]})
    assert made.role_ref.api_group == "rbac.authorization.k8s.io"
    assert [s.api_group for s in made.subjects] == ["rbac.authorization.k8s.io", None]
    with pytest.raises(ApiException) as err:
        rbac.patch_namespaced_role_binding(made.metadata.name, "default",
                                           {"roleRef": {"name": "kubeflow-view"}})
    assert err.value.status == 422 and "cannot change roleRef" in status_of(err.value)["message"]


def test_profile_controller_creates_the_kubeflow_objects(core: client.CoreV1Api,
                                                         custom: client.CustomObjectsApi,
                                                         rbac: client.RbacAuthorizationV1Api,
                                                         apiserver: FakeApiServer) -> None:
    made = custom.create_cluster_custom_object(*KF, profile("team-a"))
    ref = {"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "team-a",
           "uid": made["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    ns = apiserver.get("v1", "namespaces", "team-a")
    assert ns is not None and ns["metadata"]["annotations"] == {"owner": "alice@example.com"}
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"
    assert ns["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeflow-profile"
    assert ns["metadata"]["ownerReferences"] == [ref]
    bindings = {rb.metadata.name: rb for rb in rbac.list_namespaced_role_binding("team-a").items}
    assert set(bindings) == {"default-editor", "default-viewer", "namespaceAdmin"}
    admin = bindings["namespaceAdmin"]
    assert admin.role_ref.name == "kubeflow-admin" and admin.subjects[0].name == "alice@example.com"
    assert admin.metadata.annotations == {"user": "alice@example.com", "role": "admin"}
    assert bindings["default-editor"].subjects[0].to_dict()["kind"] == "ServiceAccount"
    sas = {sa.metadata.name for sa in core.list_namespaced_service_account("team-a").items}
    assert {"default-editor", "default-viewer"} <= sas
    policy = custom.get_namespaced_custom_object("security.istio.io", "v1beta1", "team-a",
                                                 "authorizationpolicies", "ns-owner-access-istio")
    first_rule = policy["spec"]["rules"][0]
    assert first_rule["when"] == [{"key": "request.headers[kubeflow-userid]",
                                   "values": ["alice@example.com"]}]
    assert policy["metadata"]["ownerReferences"] == [ref]
    assert apiserver.list("v1", "resourcequotas", "team-a") == []  # no hard limits: no quota
    # one storage, two versions
    beta = custom.get_cluster_custom_object("kubeflow.org", "v1beta1", "profiles", "team-a")
    assert beta["apiVersion"] == "kubeflow.org/v1beta1"
    assert beta["metadata"]["finalizers"] == ["profile-finalizer"]


def test_profile_quota_follows_spec(custom: client.CustomObjectsApi, apiserver: FakeApiServer) -> None:
    custom.create_cluster_custom_object(*KF, profile("team-a", hard={"cpu": "2"}))
    quota = apiserver.get("v1", "resourcequotas", "kf-resource-quota", "team-a")
    assert quota is not None and quota["spec"] == {"hard": {"cpu": "2"}}
    custom.patch_cluster_custom_object(*KF, "team-a", {"spec": {"resourceQuotaSpec": {"hard": {"cpu": "4"}}}})
    quota = apiserver.get("v1", "resourcequotas", "kf-resource-quota", "team-a")
    assert quota is not None and quota["spec"]["hard"] == {"cpu": "4"}
    custom.patch_cluster_custom_object(*KF, "team-a", {"spec": {"resourceQuotaSpec": {"hard": None}}})
    assert apiserver.get("v1", "resourcequotas", "kf-resource-quota", "team-a") is None


def test_profile_refuses_to_take_over_a_namespace(core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                                  apiserver: FakeApiServer) -> None:
    core.create_namespace({"metadata": {"name": "team-a", "annotations": {"owner": "bob@example.com"}}})
    custom.create_cluster_custom_object(*KF, profile("team-a"))
    got = custom.get_cluster_custom_object(*KF, "team-a")
    assert got["status"]["conditions"] == [{"type": "Failed", "message": "namespace already exist, but not "
                                            "owned by profile creator alice@example.com"}]
    assert apiserver.list("rbac.authorization.k8s.io/v1", "rolebindings", "team-a") == []
    ns = core.read_namespace("team-a")
    assert ns.metadata.annotations == {"owner": "bob@example.com"} and ns.metadata.owner_references is None


def test_deleting_a_profile_removes_its_namespace(core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                                  apiserver: FakeApiServer) -> None:
    custom.create_cluster_custom_object(*KF, profile("team-a", hard={"cpu": "1"}))
    core.create_namespaced_config_map("team-a", {"metadata": {"name": "user-data"}})
    answer = custom.delete_cluster_custom_object(*KF, "team-a")
    assert answer["metadata"]["deletionTimestamp"]  # it had the controller's finalizer
    assert apiserver.get(*("kubeflow.org/v1", "profiles", "team-a")) is None
    assert apiserver.get("v1", "namespaces", "team-a") is None
    assert apiserver.list("v1", "configmaps", "team-a") == []


def test_profile_controller_switches(core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                     apiserver: FakeApiServer) -> None:
    apiserver.profile_controller_delay = 2
    custom.create_cluster_custom_object(*KF, profile("slow"))
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.read_namespace("slow")
        assert err.value.status == 404
    assert core.read_namespace("slow").metadata.annotations == {"owner": "alice@example.com"}
    apiserver.profile_controller_delay = 0
    apiserver.profile_controller = False
    custom.create_cluster_custom_object(*KF, profile("off"))
    assert apiserver.get("v1", "namespaces", "off") is None
    custom.delete_cluster_custom_object(*KF, "off")  # no finalizer was added, so it goes at once
    assert apiserver.get("kubeflow.org/v1", "profiles", "off") is None


def test_token_request(core: client.CoreV1Api, apiserver: FakeApiServer) -> None:
    core.create_namespaced_service_account("default", {"metadata": {"name": "bot"}})
    before = datetime.now(UTC)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=["pipelines.kubeflow.org"], expiration_seconds=7200))
    issued = core.create_namespaced_service_account_token("bot", "default", request)
    claims = decode_token(issued.status.token)
    assert claims["sub"] == "system:serviceaccount:default:bot"
    assert claims["aud"] == ["pipelines.kubeflow.org"]
    lifetime = issued.status.expiration_timestamp - before
    assert timedelta(seconds=7190) < lifetime <= timedelta(seconds=7201)
    assert claims["exp"] == int(issued.status.expiration_timestamp.timestamp())
    default = core.create_namespaced_service_account_token("bot", "default", {"spec": {}})
    assert default.spec.expiration_seconds == 3600 and default.spec.audiences
    apiserver.max_token_expiration_seconds = 1800
    two_hours = {"spec": {"expirationSeconds": 7200}}
    capped = core.create_namespaced_service_account_token("bot", "default", two_hours)
    assert capped.spec.expiration_seconds == 1800


@pytest.mark.parametrize(("seconds", "message"), [
    (599, "spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"),
    (2**32 + 1, "spec.expirationSeconds: Invalid value: 4294967297: may not specify a duration larger than "
                "2^32 seconds"),
])
def test_token_request_bounds(core: client.CoreV1Api, seconds: int, message: str) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account_token("default", "default",
                                                     {"spec": {"expirationSeconds": seconds}})
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid" and body["message"].endswith(message)


def test_token_request_for_missing_service_account_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account_token("ghost", "default", {"spec": {}})
    assert err.value.status == 404 and status_of(err.value)["message"] == 'serviceaccounts "ghost" not found'


def test_status_subresource(custom: client.CustomObjectsApi, apiserver: FakeApiServer) -> None:
    apiserver.profile_controller = False
    with_status = {**profile("p1"), "status": {"conditions": [{"type": "X"}]}}
    made = custom.create_cluster_custom_object(*KF, with_status)
    assert "status" not in made  # status is dropped on create
    conditions = {"status": {"conditions": [{"type": "Successful"}]}}
    assert custom.patch_cluster_custom_object_status(*KF, "p1", conditions)["status"] == conditions["status"]
    ignored = custom.patch_cluster_custom_object(*KF, "p1", {"status": {"conditions": []}})
    assert ignored["status"] == conditions["status"]
    assert custom.get_cluster_custom_object_status(*KF, "p1")["status"] == conditions["status"]


def test_self_subject_access_reviews(kube_api_client: client.ApiClient, apiserver: FakeApiServer) -> None:
    authz = client.AuthorizationV1Api(kube_api_client)

    def allowed(verb: str, resource: str, group: str = "", namespace: str = "") -> bool:
        review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": {
            "verb": verb, "resource": resource, "group": group, "namespace": namespace}}})
        assert review.status.reason
        return bool(review.status.allowed)

    assert allowed("delete", "namespaces")
    apiserver.allow_access("create", "profiles", group="kubeflow.org")
    apiserver.allow_access("*", "rolebindings", group="rbac.authorization.k8s.io", namespace="team-a")
    assert allowed("create", "profiles", "kubeflow.org")
    assert allowed("delete", "rolebindings", "rbac.authorization.k8s.io", "team-a")
    assert not allowed("delete", "rolebindings", "rbac.authorization.k8s.io", "team-b")
    assert not allowed("delete", "profiles", "kubeflow.org")
    apiserver.allow_all_access()
    assert allowed("delete", "profiles", "kubeflow.org")


def test_discovery(kube_api_client: client.ApiClient) -> None:
    assert client.VersionApi(kube_api_client).get_code().major == "1"
    assert client.CoreApi(kube_api_client).get_api_versions().versions == ["v1"]
    groups = {g.name: g for g in client.ApisApi(kube_api_client).get_api_versions().groups}
    assert groups["kubeflow.org"].preferred_version.version == "v1"
    assert {"security.istio.io", "dex.coreos.com", "rbac.authorization.k8s.io", "apps"} <= set(groups)
    core = {r.name: r for r in client.CoreV1Api(kube_api_client).get_api_resources().resources}
    assert core["serviceaccounts/token"].kind == "TokenRequest" and core["namespaces"].namespaced is False
    kubeflow = client.CustomObjectsApi(kube_api_client).get_api_resources("kubeflow.org", "v1beta1")
    assert [(r.name, r.namespaced) for r in kubeflow.resources] == [("profiles", False),
                                                                    ("profiles/status", False),
                                                                    ("notebooks", True),
                                                                    ("notebooks/status", True)]
    dynamic = DynamicClient(kube_api_client)
    assert dynamic.resources.get(api_version="dex.coreos.com/v1", kind="Password").namespaced


def test_crds_are_installed(kube_api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(kube_api_client)
    names = {crd.metadata.name for crd in ext.list_custom_resource_definition().items}
    assert {"profiles.kubeflow.org", "authorizationpolicies.security.istio.io", "poddefaults.kubeflow.org",
            "passwords.dex.coreos.com"} <= names
    assert ext.read_custom_resource_definition("profiles.kubeflow.org").spec.scope == "Cluster"


@pytest.mark.skipif(not crd_schemas_available(),
                    reason="../shared/reference/kubeflow-manifests is absent: no CRD schemas to check")
def test_schema_validation_against_the_reference_crds(custom: client.CustomObjectsApi,
                                                      apiserver: FakeApiServer) -> None:
    assert apiserver.schema_validation
    bad = {**profile("bad"), "spec": {"owner": {"kind": "User"},
                                      "resourceQuotaSpec": {"hard": {"cpu": "2 cores"}}}}
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(*KF, bad)
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith('Profile.kubeflow.org "bad" is invalid: [')
    assert {c["field"] for c in body["details"]["causes"]} == {"spec.owner.name",
                                                               "spec.resourceQuotaSpec.hard.cpu"}
    # PodDefault v1alpha1: spec.selector is required, and there is no spec.nodeSelector to keep.
    pd_api = ("kubeflow.org", "v1alpha1", "default", "poddefaults")
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(*pd_api, {"apiVersion": "kubeflow.org/v1alpha1",
                                                         "kind": "PodDefault", "metadata": {"name": "pd"},
                                                         "spec": {}})
    assert [c["field"] for c in status_of(err.value)["details"]["causes"]] == ["spec.selector"]
    pd = custom.create_namespaced_custom_object(*pd_api, {
        "apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault", "metadata": {"name": "pd"},
        "spec": {"selector": {"matchLabels": {"pd": "true"}}, "nodeSelector": {"a": "b"}}})
    assert pd["spec"] == {"selector": {"matchLabels": {"pd": "true"}}}
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "ap"}, "spec": {"action": "PERMIT"}}
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object("security.istio.io", "v1", "default",
                                               "authorizationpolicies", policy)
    assert 'spec.action: Unsupported value: "PERMIT"' in status_of(err.value)["message"]
    # unknown fields are pruned, as structural schemas do
    apiserver.profile_controller = False
    made = custom.create_cluster_custom_object(*KF, {**profile("ok"), "extra": 1, "spec": {
        "owner": {"kind": "User", "name": "a@b.c", "nickname": "a"}}})
    assert "extra" not in made and made["spec"]["owner"] == {"kind": "User", "name": "a@b.c"}
    apiserver.schema_validation = False
    assert custom.create_cluster_custom_object(*KF, {**bad, "metadata": {"name": "unchecked"}})


def test_fault_injection_and_request_log(core: client.CoreV1Api, apiserver: FakeApiServer) -> None:
    apiserver.fail_next("POST", r"/configmaps$", 500)
    apiserver.fail_next("*", r"/namespaces/default$", 403, times=2)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.read_namespace("default")
        assert status_of(err.value)["reason"] == "Forbidden"
    assert core.read_namespace("default").metadata.name == "default"
    apiserver.fail_next("PATCH", "configmaps", 429, retry_after=7)
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("c", "default", {"data": {"a": "b"}})
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "7"
    posts = [r for r in apiserver.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/api/v1/namespaces/default/configmaps"] * 2
    assert posts[0].body == {"metadata": {"name": "c"}} and posts[0].content_type == "application/json"


def test_seed_get_list_and_dry_run(core: client.CoreV1Api, apiserver: FakeApiServer) -> None:
    node = apiserver.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ip-10-0-0-1",
                           "labels": {"node.kubernetes.io/instance-type": "g5.xlarge"}}})
    assert node["metadata"]["uid"] and node["metadata"]["resourceVersion"]
    assert core.read_node("ip-10-0-0-1").metadata.labels["node.kubernetes.io/instance-type"] == "g5.xlarge"
    assert [n["metadata"]["name"] for n in apiserver.list("v1", "nodes")] == ["ip-10-0-0-1"]
    dry = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}}, dry_run="All")
    assert dry.metadata.name == "c" and apiserver.get("v1", "configmaps", "c", "default") is None
