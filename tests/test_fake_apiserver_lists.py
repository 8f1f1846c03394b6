"""The fake apiserver's paginated lists, StatefulSets and Notebooks behave like kube-apiserver's,
as seen through the official client (the GPU scan's correctness rests on them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fakes.apiserver import FakeApiServer, crd_schemas_available
from tests.fakes.gpu_cluster import ensure_namespace, notebook, notebook_statefulset, training_pod


def seed_pods(apiserver: FakeApiServer, count: int, namespaces: int = 3) -> set[tuple[str, str]]:
    keys = set()
    for i in range(count):
        namespace = f"ns-{i % namespaces}"
        ensure_namespace(apiserver, namespace)
        apiserver.seed(training_pod(namespace, f"pod-{i:03d}", "node-a", "job", gpus=i % 2))
        keys.add((namespace, f"pod-{i:03d}"))
    return keys


def raw_list(core: client.CoreV1Api, **kwargs: Any) -> dict[str, Any]:
    response = core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
    body: dict[str, Any] = json.loads(response.data)
    return body


def test_limit_and_continue_page_through_every_item_once(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    keys = seed_pods(apiserver, 23)
    core = client.CoreV1Api(kube_api_client)
    seen: list[tuple[str, str]] = []
    pages, token, remaining = 0, None, []
    while True:
        body = raw_list(core, limit=5, **({"_continue": token} if token else {}))
        pages += 1
        seen += [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in body["items"]]
        token = body["metadata"].get("continue")
        remaining.append(body["metadata"].get("remainingItemCount"))
        if not token:
            break
        assert "ns-" not in token  # opaque
    assert pages == 5 and len(seen) == 23 and set(seen) == keys
    assert seen == sorted(seen)  # key order, like etcd
    assert remaining == [18, 13, 8, 3, None]  # absent on the last page, as the apiserver does


def test_a_selector_leaves_out_the_remaining_count_and_still_pages(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    seed_pods(apiserver, 12)
    done = training_pod("ns-0", "finished", "node-a", "job")
    done["status"]["phase"] = "Succeeded"
    apiserver.seed(done)
    core = client.CoreV1Api(kube_api_client)
    first = raw_list(core, limit=5, field_selector="status.phase!=Succeeded")
    assert len(first["items"]) == 5 and "remainingItemCount" not in first["metadata"]
    rest = raw_list(
        core, limit=50, field_selector="status.phase!=Succeeded", _continue=first["metadata"]["continue"]
    )
    names = {p["metadata"]["name"] for p in first["items"] + rest["items"]}
    assert len(names) == 12 and "finished" not in names and "continue" not in rest["metadata"]


def test_a_compacted_continue_token_is_410_expired_and_garbage_is_400(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    seed_pods(apiserver, 6)
    core = client.CoreV1Api(kube_api_client)
    token = raw_list(core, limit=2)["metadata"]["continue"]
    apiserver.compact()
    with pytest.raises(ApiException) as expired:
        raw_list(core, limit=2, _continue=token)
    assert expired.value.status == 410 and json.loads(expired.value.body)["reason"] == "Expired"
    with pytest.raises(ApiException) as garbage:
        raw_list(core, limit=2, _continue="not-a-token")
    assert garbage.value.status == 400


def test_statefulsets_are_served(apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    ensure_namespace(apiserver, "ws-a")
    created = apiserver.create(notebook("ws-a", "lab"))
    apiserver.seed(notebook_statefulset(created))
    sets = client.AppsV1Api(kube_api_client).list_stateful_set_for_all_namespaces()
    [sts] = sets.items
    owner = sts.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "Notebook",
        "lab",
        created["metadata"]["uid"],
        True,
    )


@pytest.mark.skipif(
    not crd_schemas_available(), reason="../shared/reference is absent: no Notebook CRD schema"
)
def test_notebooks_are_validated_and_pruned_against_the_real_crd(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    ensure_namespace(apiserver, "ws-a")
    custom = client.CustomObjectsApi(kube_api_client)
    body = notebook("ws-a", "lab")
    body["spec"]["template"]["spec"]["containers"][0]["notAField"] = True
    custom.create_namespaced_custom_object("kubeflow.org", "v1beta1", "ws-a", "notebooks", body)
    stored = apiserver.get("kubeflow.org/v1", "notebooks", "lab", "ws-a")
    assert stored is not None and "notAField" not in stored["spec"]["template"]["spec"]["containers"][0]

    broken = notebook("ws-a", "broken")
    broken["spec"]["template"]["spec"]["containers"][0]["resources"] = "lots"
    with pytest.raises(ApiException) as invalid:
        custom.create_namespaced_custom_object("kubeflow.org", "v1", "ws-a", "notebooks", broken)
    assert invalid.value.status == 422
    assert apiserver.get("kubeflow.org/v1", "notebooks", "broken", "ws-a") is None
    [listed] = custom.list_cluster_custom_object("kubeflow.org", "v1", "notebooks")["items"]
    assert listed["metadata"]["name"] == "lab" and listed["apiVersion"] == "kubeflow.org/v1"
