"""The hand-made runbook workspace (tests/fakes/runbook.py) is what the runbook makes, and valid."""

from __future__ import annotations

import base64

import pytest
import yaml

from handlers.naming import kfam_binding_name
from provisioning.aws import BOT_SID
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.runbook import NAMESPACE, seed_runbook_workspace
from tests.live_harness import (
    DEX_NAMESPACE,
    AwsWorld,
    aws_client,
    bucket_arns,
    default_document,
    live_stack,
    seed_aws,
)


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.mark.parametrize(
    ("dex_mode", "hash_from_env"), [("password-cr", False), ("configmap", False), ("configmap", True)]
)
def test_seed_makes_the_runbook_workspace(
    apiserver: FakeApiServer, world: AwsWorld, sqlite_url: str, dex_mode: str, hash_from_env: bool
) -> None:
    with live_stack(sqlite_url, apiserver, world, dex_mode=dex_mode):
        made = seed_runbook_workspace(apiserver, world, dex_mode=dex_mode, hash_from_env=hash_from_env)
    assert (made.bucket, made.nodegroup) == ("s3-an2-aic-dev-proj1", "ng-an2-aicond-proj1-ws-standard")
    namespace = apiserver.get("v1", "namespaces", NAMESPACE)
    assert namespace is not None and namespace["metadata"]["annotations"]["owner"] == made.owner
    binding = apiserver.get(
        "rbac.authorization.k8s.io/v1", "rolebindings", made.contributor_binding, NAMESPACE
    )
    assert made.contributor_binding == kfam_binding_name(made.contributor, "edit")
    assert binding is not None and binding["subjects"][0]["name"] == made.contributor
    assert apiserver.get(
        "security.istio.io/v1beta1", "authorizationpolicies", made.contributor_binding, NAMESPACE
    )
    if dex_mode == "password-cr":
        password = apiserver.get("dex.coreos.com/v1", "passwords", made.dex_login, DEX_NAMESPACE)
        assert password is not None and base64.b64decode(password["hash"]).startswith(b"$2y$10$")
    else:
        cm = apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
        assert cm is not None
        entry = next(
            e
            for e in yaml.safe_load(cm["data"]["config.yaml"])["staticPasswords"]
            if e["email"] == made.owner
        )
        assert ("hashFromEnv" in entry) is hash_from_env and ("hash" in entry) is not hash_from_env
    tags = aws_client(world.endpoint_url, "s3").get_bucket_tagging(Bucket=made.bucket)["TagSet"]
    assert {"Key": "Namespace", "Value": NAMESPACE} in tags
    for arn in made.policy_arns:
        statements = default_document(world.endpoint_url, arn)["Statement"]
        ours = [s for s in statements if s.get("Sid") == made.policy_sid]
        assert ours and ours[0]["Resource"] == bucket_arns(made.bucket)
        assert not [s for s in statements if s.get("Sid") == BOT_SID]
    group = aws_client(world.endpoint_url, "eks").describe_nodegroup(
        clusterName=made.cluster, nodegroupName=made.nodegroup
    )["nodegroup"]
    assert group["labels"]["alpha.eksctl.io/nodegroup-name"] == made.nodegroup
    assert group["tags"]["alpha.eksctl.io/nodegroup-type"] == "managed"
    assert "kf-chatops/request" not in group["tags"]
