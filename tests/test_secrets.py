"""Secrets made on the owner's click: Dex passwords (only the hash travels) and TokenRequest tokens
with a ready kubeconfig, against the fake apiserver."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from kubernetes import client

from handlers.errors import NotFound, PermanentError
from handlers.model import Request, RequestState
from handlers.naming import dex_password_object_name
from handlers.plan import Plan, Step
from provisioning.dex import DexActions, env_key_for
from provisioning.kubeflow import KubeflowActions
from provisioning.secrets import Secrets, generate_password
from provisioning.settings import KubeflowSettings
from tests.fakes.apiserver import FakeApiServer, decode_token
from tests.fakes.clock import FakeClock
from tests.test_dex_actions import dex, ensure_user, install_dex, secret_data

NS = "team-a"
API_URL = "https://kube.example.com:6443"
API_AUDIENCE = "https://kubernetes.default.svc"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


@pytest.fixture
def clock(apiserver: FakeApiServer) -> FakeClock:
    clock = FakeClock()
    apiserver.clock = clock.now  # the fake stamps tokens with the same time the bot sees
    return clock


def request_log_text(server: FakeApiServer) -> str:
    return json.dumps([[r.method, r.path, r.query, r.body] for r in server.requests], default=str)


def secrets_for(api: client.ApiClient, clock: FakeClock, dex_actions: DexActions | None = None,
                **settings: Any) -> Secrets:
    kubeflow = KubeflowSettings(kube_api_url=API_URL, **settings)
    return Secrets(api, kubeflow, dex_actions or dex(api, "password-cr", clock), clock, bcrypt_cost=10)


# -- passwords ------------------------------------------------------------------------------------


def test_generated_passwords_are_long_and_random() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50 and all(len(p) >= 16 for p in passwords)


@pytest.mark.parametrize("mode", ["password-cr", "configmap"])
def test_password_reveal_writes_only_a_hash_the_password_verifies_against(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, clock: FakeClock, mode: str) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, mode, clock)
    ensure_user(actions, {"email": "alice@example.com", "username": "alice", "mode": mode})
    restarts_before = sum(1 for r in apiserver.requests if r.method == "PATCH" and "deployments" in r.path)

    secret = secrets_for(kube_api_client, clock, actions).password("Alice@Example.com")

    assert secret.kind == "password" and len(secret.value) >= 16
    assert secret.fingerprint == hashlib.sha256(secret.value.encode()).hexdigest()[:12]
    if mode == "password-cr":
        name = dex_password_object_name("alice@example.com")
        obj = apiserver.get("dex.coreos.com/v1", "passwords", name, "auth")
        stored = base64.b64decode(obj["hash"]) if obj else b""
    else:
        stored = secret_data(apiserver)[env_key_for("alice@example.com")].encode()
        restarts = sum(1 for r in apiserver.requests if r.method == "PATCH" and "deployments" in r.path)
        assert restarts == restarts_before + 1  # Dex restarted to load the new hash before the reveal
    assert bcrypt.checkpw(secret.value.encode(), stored)
    assert secret.value not in request_log_text(apiserver)  # only its hash ever travelled


def test_password_for_someone_without_a_dex_login_is_refused(apiserver: FakeApiServer,
                                                             kube_api_client: client.ApiClient,
                                                             clock: FakeClock) -> None:
    install_dex(apiserver, kube_api_client)
    with pytest.raises(PermanentError, match="no login"):
        secrets_for(kube_api_client, clock).password("nobody@example.com")


# -- tokens ---------------------------------------------------------------------------------------


def token_request(clock: FakeClock, audiences: list[str], ttl: timedelta = timedelta(hours=1),
                  succeeded_ago: timedelta = timedelta(0), name: str = "kfbot-token-r42") -> Request:
    params = {"namespace": NS, "name": name, "role": "edit", "token_id": "R42", "audiences": audiences,
              "ttl_seconds": int(ttl.total_seconds())}
    at = clock.now() - succeeded_ago
    return Request(id="R42", kind="token", args={}, requester_id="U1", requester_email="alice@example.com",
                   plan=Plan.of([Step("kubeflow.token_account", f"TokenAccount/{NS}/{name}", params)]),
                   created_at=at - timedelta(minutes=1), state=RequestState.SUCCEEDED, updated_at=at)


def setup_account(server: FakeApiServer, api: client.ApiClient, clock: FakeClock, request: Request) -> None:
    server.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    server.seed({"apiVersion": "v1", "kind": "ConfigMap", "data": {"ca.crt": CA_PEM},
                 "metadata": {"name": "kube-root-ca.crt", "namespace": NS}})
    KubeflowActions(api, KubeflowSettings(), clock).registry()["kubeflow.token_account"].ensure(
        request.plan.steps[0].params)


def requested_seconds(server: FakeApiServer) -> int:
    posts = [r for r in server.requests if r.method == "POST" and r.path.endswith("/token")]
    return int(posts[-1].body["spec"]["expirationSeconds"])


def test_kubernetes_token_comes_with_a_ready_kubeconfig(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, clock: FakeClock) -> None:
    request = token_request(clock, [API_AUDIENCE], succeeded_ago=timedelta(minutes=20))
    setup_account(apiserver, kube_api_client, clock, request)

    secret = secrets_for(kube_api_client, clock).token(request)

    claims = decode_token(secret.value)
    assert claims["aud"] == [API_AUDIENCE] and claims["sub"] == f"system:serviceaccount:{NS}:kfbot-token-r42"
    assert requested_seconds(apiserver) == 40 * 60  # what is left of the one-hour grant
    assert secret.expires_at == clock.now() + timedelta(minutes=40)
    assert secret.fingerprint == hashlib.sha256(secret.value.encode()).hexdigest()[:12]
    config = yaml.safe_load(secret.extra["kubeconfig"])
    assert config["kind"] == "Config" and config["current-context"] == config["contexts"][0]["name"]
    ca_data = base64.b64encode(CA_PEM.encode()).decode()
    assert config["clusters"][0]["cluster"] == {"server": API_URL, "certificate-authority-data": ca_data}
    assert config["users"][0]["user"] == {"token": secret.value}
    context = config["contexts"][0]["context"]
    assert context == {"cluster": config["clusters"][0]["name"], "user": config["users"][0]["name"],
                       "namespace": NS}
    assert "kfp" not in secret.extra
    assert secret.value not in request_log_text(apiserver)


def test_pipelines_token_has_both_audiences_and_a_kfp_snippet(apiserver: FakeApiServer,
                                                              kube_api_client: client.ApiClient,
                                                              clock: FakeClock, tmp_path: Path) -> None:
    request = token_request(clock, ["pipelines.kubeflow.org", API_AUDIENCE])
    setup_account(apiserver, kube_api_client, clock, request)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\nFROMFILE\n-----END CERTIFICATE-----\n")

    secret = secrets_for(kube_api_client, clock, kube_ca_file=str(ca_file)).token(request)

    assert decode_token(secret.value)["aud"] == ["pipelines.kubeflow.org", API_AUDIENCE]
    snippet = secret.extra["kfp"]
    assert "kfp.Client(host=" in snippet and f"existing_token={secret.value!r}" in snippet
    assert f"namespace={NS!r}" in snippet
    compile(snippet, "<kfp snippet>", "exec")  # it is valid Python
    cluster = yaml.safe_load(secret.extra["kubeconfig"])["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca_file.read_bytes()


def test_token_lifetime_is_at_least_ten_minutes_and_the_servers_cap_is_reported(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, clock: FakeClock) -> None:
    almost_over = token_request(clock, [API_AUDIENCE], succeeded_ago=timedelta(minutes=58))
    setup_account(apiserver, kube_api_client, clock, almost_over)
    issuer = secrets_for(kube_api_client, clock)

    secret = issuer.token(almost_over)
    assert requested_seconds(apiserver) == 600

    apiserver.max_token_expiration_seconds = 900  # kube-apiserver caps silently
    capped = issuer.token(token_request(clock, [API_AUDIENCE], ttl=timedelta(hours=24)))
    assert requested_seconds(apiserver) == 24 * 3600
    assert capped.expires_at == clock.now() + timedelta(seconds=900)
    assert secret.value != capped.value

    with pytest.raises(PermanentError, match="ran out"):
        issuer.token(token_request(clock, [API_AUDIENCE], succeeded_ago=timedelta(hours=2)))


def test_revoked_account_gives_no_token(apiserver: FakeApiServer, kube_api_client: client.ApiClient,
                                        clock: FakeClock) -> None:
    request = token_request(clock, [API_AUDIENCE])
    setup_account(apiserver, kube_api_client, clock, request)
    kf = KubeflowActions(kube_api_client, KubeflowSettings(), clock)
    remove = kf.registry()["kubeflow.token_account.remove"]
    remove.ensure({"namespace": NS, "name": "kfbot-token-r42"})
    with pytest.raises(NotFound, match=re.escape("gone (revoked or expired)")):
        secrets_for(kube_api_client, clock).token(request)


def test_missing_api_url_or_ca_is_refused_before_a_token_exists(apiserver: FakeApiServer,
                                                                kube_api_client: client.ApiClient,
                                                                clock: FakeClock) -> None:
    request = token_request(clock, [API_AUDIENCE])
    setup_account(apiserver, kube_api_client, clock, request)
    apiserver.seed({"apiVersion": "v1", "kind": "ConfigMap", "data": {},
                    "metadata": {"name": "kube-root-ca.crt", "namespace": NS}})
    with pytest.raises(PermanentError, match=re.escape("kube-root-ca.crt")):
        secrets_for(kube_api_client, clock).token(request)
    no_url = Secrets(kube_api_client, KubeflowSettings(), dex(kube_api_client, "password-cr"), clock, 10)
    with pytest.raises(PermanentError, match="KFBOT_KUBE_API_URL"):
        no_url.token(request)
    assert not [r for r in apiserver.requests if r.path.endswith("/token")]
