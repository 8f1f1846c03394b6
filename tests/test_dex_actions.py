"""Live Dex actions against the fake apiserver: Password objects, and static users in the ConfigMap
with their hashes in Secret ``dex-passwords`` and one restart requested through a row (played here
by ``Restarts``; the real row is tested end to end in tests/test_workspace_e2e.py)."""

from __future__ import annotations

import base64
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
import yaml
from kubernetes import client

from handlers.errors import PermanentError, TemporaryError
from handlers.naming import dex_password_object_name
from handlers.plan import JSON, StepOutcome
from provisioning import k8s
from provisioning.dex import DexActions, env_key_for, user_id_for
from provisioning.settings import DexSettings
from tests.fakes.apiserver import FakeApiServer, reference_dir
from tests.fakes.clock import FakeClock

COST = 10  # the cheapest cost Dex accepts keeps the tests fast
DEFAULT_HASH = "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72"
# Used only when ../shared/reference is absent: the shape of manifests' common/dex/base config.
MINIMAL_CONFIG = """\
issuer: http://dex.auth.svc.cluster.local:5556/dex
storage: {type: kubernetes, config: {inCluster: true}}
enablePasswordDB: true
staticPasswords:
- email: user@example.com
  hashFromEnv: DEX_USER_PASSWORD
  username: user
  userID: "15841185641784"
"""


def _reference(name: str) -> dict[str, Any] | None:
    path = reference_dir() / "kubeflow-manifests" / name
    return yaml.safe_load(Path(path).read_text()) if path.exists() else None


def install_dex(server: FakeApiServer, api: client.ApiClient, *, load_secret: bool = True) -> None:
    """Dex as Kubeflow 1.9+ ships it, in namespace auth."""
    server.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "auth"}})
    cm = _reference("dex-config-map.yaml") or {"data": {"config.yaml": MINIMAL_CONFIG}}
    server.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dex", "namespace": "auth"},
                 "data": cm["data"]})
    # Stored as a real apiserver keeps it: the manifests' stringData folded into base64 data.
    hashed = base64.b64encode(DEFAULT_HASH.encode()).decode()
    server.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": "dex-passwords", "namespace": "auth"},
                 "data": {"DEX_USER_PASSWORD": hashed}})
    deployment = _reference("dex-deployment.yaml") or {"spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "dex"}},
        "template": {"metadata": {"labels": {"app": "dex"}}, "spec": {"containers": [
            {"name": "dex", "image": "ghcr.io/dexidp/dex:v2.45.0",
             "envFrom": [{"secretRef": {"name": "dex-oidc-client"}},
                         {"secretRef": {"name": "dex-passwords"}}]}]}}}}
    if not load_secret:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            container["envFrom"] = [{"secretRef": {"name": "dex-oidc-client"}}]
    # Created through the API (not seeded) so the fake's rollout controller gives it a status.
    k8s.Kube(api).create(k8s.DEPLOYMENT, {"metadata": {"name": "dex", "namespace": "auth"},
                                          "spec": deployment["spec"]})


@dataclass
class Restarts:
    """The timers table's part in Dex restarts (``RestartRequester``): one pending request, moved
    by each write that asks with ``move``; ``fire`` is the sweeper running it once it is due."""

    clock: Any
    due: datetime | None = None
    asked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, due_at: datetime, *, move: bool) -> None:
        with self.lock:
            self.asked += 1
            if move or self.due is None:
                self.due = due_at

    def fire(self, actions: DexActions) -> bool:
        with self.lock:
            due = self.due
        if due is None or due > self.clock.now():
            return False
        actions.restart_timer(actions.restart_ref, {})
        with self.lock:
            if self.due == due:  # not moved meanwhile
                self.due = None
        return True


def dex(api: client.ApiClient, mode: str, clock: Any = None, **kwargs: Any) -> DexActions:
    settings = DexSettings(mode=mode, bcrypt_cost=COST,  # type: ignore[arg-type]
                           restart_quiet_period=kwargs.pop("quiet", 5.0))
    clock = clock or FakeClock()
    kwargs.setdefault("request_restart", Restarts(clock))
    return DexActions(api, settings, clock, **kwargs)


def restarts_of(actions: DexActions) -> Restarts:
    return cast(Restarts, actions._request_restart)  # the port these tests gave it


def ensure_user(actions: DexActions, params: dict[str, JSON], rounds: int = 20) -> StepOutcome:
    """What the engine and the sweeper do together: on a wait, let the delay pass, run the restart
    once it is due, and try again."""
    for _ in range(rounds):
        try:
            return actions.registry()["dex.user"].ensure(params)
        except TemporaryError as exc:
            actions.clock.sleep(exc.delay)
            restarts_of(actions).fire(actions)
    raise AssertionError(f"the Dex step did not complete in {rounds} attempts")


def static_passwords(server: FakeApiServer) -> list[dict[str, Any]]:
    cm = server.get("v1", "configmaps", "dex", "auth")
    assert cm is not None
    return list(yaml.safe_load(cm["data"]["config.yaml"])["staticPasswords"])


def secret_data(server: FakeApiServer) -> dict[str, str]:
    secret = server.get("v1", "secrets", "dex-passwords", "auth")
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def restarts(server: FakeApiServer) -> int:
    return sum(1 for r in server.requests if r.method == "PATCH" and r.path.endswith("/deployments/dex"))


def user_params(email: str, mode: str, username: str | None = None) -> dict[str, Any]:
    return {"email": email, "username": username or email.split("@", 1)[0], "mode": mode}


# -- password-cr ----------------------------------------------------------------------------------


def test_password_object_is_named_by_dex_and_shaped_like_dex_storage(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "password-cr")

    outcome = actions.registry()["dex.user"].ensure(user_params("admin@example.com", "password-cr"))

    assert outcome.created is True
    name = dex_password_object_name("admin@example.com")
    assert name == "mfsg22loibsxqylnobwgkltdn5w4x4u44scceizf"  # the reference's test vector
    obj = apiserver.get("dex.coreos.com/v1", "passwords", name, "auth")
    assert obj is not None and "spec" not in obj
    assert (obj["email"], obj["username"]) == ("admin@example.com", "admin")
    assert obj["userID"] == user_id_for("ADMIN@example.com") and uuid.UUID(obj["userID"])
    hashed = base64.b64decode(obj["hash"])
    assert re.fullmatch(rb"\$2[aby]\$10\$[./A-Za-z0-9]{53}", hashed)
    assert bcrypt.checkpw(b"not the password", hashed) is False  # a real bcrypt hash bcrypt can check
    assert actions.user_exists("Admin@Example.com")
    assert restarts(apiserver) == 0  # Dex reads storage on each login: no restart


def test_password_cr_existing_user_is_found_not_created(apiserver: FakeApiServer,
                                                        kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    action = dex(kube_api_client, "password-cr").registry()["dex.user"]
    first = action.ensure(user_params("alice@example.com", "password-cr"))
    second = action.ensure(user_params("alice@example.com", "password-cr"))
    assert (first.created, second.created) == (True, False)

    static = action.ensure(user_params("user@example.com", "password-cr"))  # in staticPasswords already
    assert static.created is False and static.details["found"] == "staticPasswords"
    assert apiserver.get("dex.coreos.com/v1", "passwords", dex_password_object_name("user@example.com"),
                         "auth") is None

    action.undo(user_params("alice@example.com", "password-cr"), second)  # not created: kept
    assert apiserver.list("dex.coreos.com/v1", "passwords", "auth")
    action.undo(user_params("alice@example.com", "password-cr"), first)
    assert apiserver.list("dex.coreos.com/v1", "passwords", "auth") == []


def test_password_cr_remove(apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "password-cr")
    made = {**user_params("alice@example.com", "password-cr"), "_request": "R1"}  # marked, as the engine does
    actions.registry()["dex.user"].ensure(made)
    remove = actions.registry()["dex.user.remove"]
    assert remove.ensure({"email": "alice@example.com", "mode": "password-cr"}).created is True
    assert not actions.user_exists("alice@example.com")
    assert remove.ensure({"email": "alice@example.com", "mode": "password-cr"}).created is False


def test_password_cr_remove_refuses_a_login_the_bot_did_not_make_unless_adopted(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    """A Password made by hand (no mark; Dex's storage shape) is never deleted by a removal step,
    however it was filed (a drift clean-up, a stale record); an adopted record's step may."""
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "password-cr")
    name = dex_password_object_name("hand@example.com")
    apiserver.create({"apiVersion": "dex.coreos.com/v1", "kind": "Password",
                      "metadata": {"name": name, "namespace": "auth"}, "email": "hand@example.com",
                      "hash": "JDJ5JDEwJA==", "username": "hand", "userID": "hand-1"})
    remove = actions.registry()["dex.user.remove"]

    with pytest.raises(PermanentError, match="neither kf-chatops's mark nor an adopted record"):
        remove.ensure({"email": "hand@example.com", "mode": "password-cr"})
    assert actions.user_exists("hand@example.com")

    adopted = remove.ensure({"email": "hand@example.com", "mode": "password-cr", "adopted": True})
    assert adopted.created is True
    assert not actions.user_exists("hand@example.com")


# -- configmap ------------------------------------------------------------------------------------


def test_configmap_user_gets_an_entry_a_hash_key_and_one_restart(apiserver: FakeApiServer,
                                                                  kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    clock = FakeClock()
    actions = dex(kube_api_client, "configmap", clock)
    action = actions.registry()["dex.user"]
    requested = restarts_of(actions)

    with pytest.raises(TemporaryError, match="waiting for Dex to restart") as waiting:
        action.ensure(user_params("alice@example.com", "configmap"))

    # Written at once; the restart is asked for, after the quiet period, and nobody slept.
    assert waiting.value.delay == 5.0 and clock.slept == []
    assert requested.due == clock.now() + timedelta(seconds=5) and restarts(apiserver) == 0
    key = env_key_for("alice@example.com")
    assert {"email": "alice@example.com", "hashFromEnv": key, "username": "alice",
            "userID": user_id_for("alice@example.com")} in static_passwords(apiserver)
    data = secret_data(apiserver)
    assert data["DEX_USER_PASSWORD"] == DEFAULT_HASH  # the existing user is untouched
    assert re.fullmatch(r"\$2[aby]\$10\$[./A-Za-z0-9]{53}", data[key])

    clock.advance(timedelta(seconds=5))
    assert requested.fire(actions) and restarts(apiserver) == 1
    outcome = action.ensure(user_params("alice@example.com", "configmap"))  # the retry
    assert outcome.created is False  # no mark: this test passes no request id (see the marks below)
    deployment = apiserver.get("apps/v1", "deployments", "dex", "auth")
    assert deployment is not None
    assert "kubectl.kubernetes.io/restartedAt" in deployment["spec"]["template"]["metadata"]["annotations"]

    again = action.ensure(user_params("alice@example.com", "configmap"))
    assert again.created is False and restarts(apiserver) == 1  # Dex runs this config already
    assert action.ensure(user_params("user@example.com", "configmap")).created is False  # hand-made user
    assert requested.due is None


def test_twenty_concurrent_additions_lose_nobody_and_restart_once(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    clock = FakeClock()
    actions = dex(kube_api_client, "configmap", clock, quiet=0.5)
    action = actions.registry()["dex.user"]
    emails = [f"user{i:02d}@example.com" for i in range(20)]

    def mark(email: str) -> str:
        return "R" + email[4:6]

    failures: list[BaseException] = []
    start = threading.Barrier(len(emails))

    def add(email: str) -> None:
        try:
            start.wait()
            with pytest.raises(TemporaryError, match="waiting for Dex to restart"):
                action.ensure({**user_params(email, "configmap"), "_request": mark(email)})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(email,)) for email in emails]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert restarts(apiserver) == 0 and restarts_of(actions).asked == 20

    clock.advance(timedelta(seconds=0.5))
    assert restarts_of(actions).fire(actions)
    outcomes = [action.ensure({**user_params(e, "configmap"), "_request": mark(e)}) for e in emails]

    assert all(o.created for o in outcomes)
    entries = {e["email"]: e for e in static_passwords(apiserver)}
    assert set(emails) <= set(entries) and len(entries) == 21
    data = secret_data(apiserver)
    assert all(entries[e]["hashFromEnv"] in data for e in emails) and len(data) == 21
    assert restarts(apiserver) == 1
    conflicts = [r for r in apiserver.requests if r.method == "PUT"]
    assert len(conflicts) >= 40  # every write was a PUT carrying a resourceVersion


def test_a_restart_timer_run_twice_restarts_once_and_a_later_write_asks_again(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    clock = FakeClock()
    actions = dex(kube_api_client, "configmap", clock, quiet=10.0)
    requested = restarts_of(actions)
    for i, email in enumerate(("a@example.com", "b@example.com")):
        with pytest.raises(TemporaryError):
            actions.registry()["dex.user"].ensure(user_params(email, "configmap"))
        assert requested.due == clock.now() + timedelta(seconds=10)  # each write pushes it back
        clock.advance(timedelta(seconds=6 - i))
    actions.restart_timer(actions.restart_ref, {})
    actions.restart_timer(actions.restart_ref, {})  # run again (a sweeper died before finishing it)
    assert restarts(apiserver) == 1

    ensure_user(actions, user_params("c@example.com", "configmap"))
    assert restarts(apiserver) == 2


def test_configmap_remove_takes_only_the_bots_entry(apiserver: FakeApiServer,
                                                    kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    outcome = ensure_user(actions, {**user_params("alice@example.com", "configmap"), "_request": "R1"})
    assert outcome.created is True

    actions.registry()["dex.user"].undo(user_params("alice@example.com", "configmap"), outcome)

    assert [e["email"] for e in static_passwords(apiserver)] == ["user@example.com"]
    assert list(secret_data(apiserver)) == ["DEX_USER_PASSWORD"]
    # The removal asks for a restart (the login goes with it) without waiting for it.
    assert restarts(apiserver) == 1 and restarts_of(actions).due is not None
    actions.clock.sleep(5.0)
    assert restarts_of(actions).fire(actions) and restarts(apiserver) == 2  # one to add, one to forget
    remove = actions.registry()["dex.user.remove"]
    assert remove.ensure({"email": "user@example.com", "mode": "configmap"}).created is False  # hand-made
    assert len(static_passwords(apiserver)) == 1 and restarts_of(actions).due is None


def test_yaml_metacharacters_stay_data(apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    hostile = "x: y\n- email: evil@example.com #"
    ensure_user(actions, user_params("odd+tag@example.com", "configmap", username=hostile))
    entries = static_passwords(apiserver)
    assert [e["email"] for e in entries] == ["user@example.com", "odd+tag@example.com"]
    assert entries[1]["username"] == hostile


def test_unfinished_rollout_is_temporary_and_a_rerun_completes(apiserver: FakeApiServer,
                                                               kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    action = actions.registry()["dex.user"]
    apiserver.hold_rollouts = True
    with pytest.raises(TemporaryError, match="waiting for Dex to restart"):
        action.ensure(user_params("alice@example.com", "configmap"))
    actions.clock.sleep(5.0)
    assert restarts_of(actions).fire(actions)
    with pytest.raises(TemporaryError, match="has not finished restarting"):
        action.ensure(user_params("alice@example.com", "configmap"))
    apiserver.complete_rollouts()

    outcome = action.ensure(user_params("alice@example.com", "configmap"))

    assert outcome.created is False and restarts(apiserver) == 1  # the restart it asked for is enough
    assert actions.user_exists("alice@example.com")


def test_dex_that_does_not_load_the_secret_is_refused(apiserver: FakeApiServer,
                                                      kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client, load_secret=False)
    with pytest.raises(PermanentError, match="does not load Secret"):
        dex(kube_api_client, "configmap").registry()["dex.user"].ensure(
            user_params("a@example.com", "configmap"))
    assert len(static_passwords(apiserver)) == 1


def test_external_mode_does_nothing(apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    actions = dex(kube_api_client, "external")
    assert actions.registry()["dex.user"].ensure(user_params("a@example.com", "external")).created is False
    remove = actions.registry()["dex.user.remove"]
    assert remove.ensure({"email": "a@example.com", "mode": "external"}).created is False
    assert actions.user_exists("a@example.com") is False
    assert apiserver.requests == []


@pytest.mark.parametrize("cost", [9, 17])
def test_bcrypt_cost_outside_what_dex_accepts_is_refused(kube_api_client: client.ApiClient,
                                                         cost: int) -> None:
    with pytest.raises(ValueError, match="10 to 16"):
        DexActions(kube_api_client, DexSettings(bcrypt_cost=cost), FakeClock())


# -- ownership marks ------------------------------------------------------------------------------
# The engine passes the request id as params["_request"]; what a step makes carries it, and a step
# that finds a user claims it (created=True) only when the mark names its own request.

MARK = "kf-chatops/request"


def test_password_object_carries_the_mark_and_only_its_request_claims_it(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    action = dex(kube_api_client, "password-cr").registry()["dex.user"]
    params = {**user_params("alice@example.com", "password-cr"), "_request": "R1"}

    first = action.ensure(params)
    retried = action.ensure(params)  # a worker killed before recording `first` runs it again
    other = action.ensure({**params, "_request": "R2"})

    assert (first.created, retried.created, other.created) == (True, True, False)
    obj = apiserver.get("dex.coreos.com/v1", "passwords", dex_password_object_name("alice@example.com"),
                        "auth")
    assert obj is not None and obj["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kf-chatops",
                                                             MARK: "R1"}
    actions = dex(kube_api_client, "password-cr")
    actions.set_password_hash("alice@example.com", bcrypt.hashpw(b"pw", bcrypt.gensalt(COST)).decode())
    obj = apiserver.get("dex.coreos.com/v1", "passwords", dex_password_object_name("alice@example.com"),
                        "auth")
    assert obj is not None and obj["metadata"]["labels"][MARK] == "R1"  # a new password keeps the mark


def test_a_hand_made_password_object_is_never_claimed(apiserver: FakeApiServer,
                                                      kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    name = dex_password_object_name("alice@example.com")
    apiserver.seed({"apiVersion": "dex.coreos.com/v1", "kind": "Password",
                    "metadata": {"name": name, "namespace": "auth"}, "email": "alice@example.com",
                    "hash": base64.b64encode(DEFAULT_HASH.encode()).decode(), "username": "alice",
                    "userID": "1"})
    action = dex(kube_api_client, "password-cr").registry()["dex.user"]

    outcome = action.ensure({**user_params("alice@example.com", "password-cr"), "_request": "R1"})

    assert outcome.created is False
    obj = apiserver.get("dex.coreos.com/v1", "passwords", name, "auth")
    assert obj is not None and "labels" not in obj["metadata"]


def test_configmap_entry_survives_a_rollout_timeout_as_the_requests_own(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    action = actions.registry()["dex.user"]
    params = {**user_params("alice@example.com", "configmap"), "_request": "R1"}
    apiserver.hold_rollouts = True
    with pytest.raises(TemporaryError, match="waiting for Dex to restart"):
        action.ensure(params)
    actions.clock.sleep(5.0)
    restarts_of(actions).fire(actions)
    with pytest.raises(TemporaryError, match="has not finished restarting"):
        action.ensure(params)
    apiserver.hold_rollouts = False
    apiserver.complete_rollouts()
    cm = apiserver.get("v1", "configmaps", "dex", "auth")
    key = env_key_for("alice@example.com")
    assert cm is not None and cm["metadata"]["annotations"][f"{MARK}.{key}"] == "R1"

    retried = action.ensure(params)
    other = action.ensure({**params, "_request": "R2"})
    hand_made = action.ensure({**user_params("user@example.com", "configmap"), "_request": "R1"})

    assert (retried.created, other.created, hand_made.created) == (True, False, False)
    action.undo(params, retried)
    cm = apiserver.get("v1", "configmaps", "dex", "auth")
    assert cm is not None and f"{MARK}.{key}" not in (cm["metadata"].get("annotations") or {})
    assert [e["email"] for e in static_passwords(apiserver)] == ["user@example.com"]


def test_configmap_entry_is_taken_back_when_the_step_fails_for_good(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)

    def refuse(due_at: datetime, *, move: bool) -> None:
        raise PermanentError("The Dex restart cannot be scheduled.")

    action = dex(kube_api_client, "configmap", request_restart=refuse).registry()["dex.user"]

    with pytest.raises(PermanentError, match="cannot be scheduled"):
        action.ensure({**user_params("alice@example.com", "configmap"), "_request": "R1"})

    assert [e["email"] for e in static_passwords(apiserver)] == ["user@example.com"]
    assert list(secret_data(apiserver)) == ["DEX_USER_PASSWORD"]


def test_a_forbidden_restart_fails_the_timer_not_silently(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    with pytest.raises(TemporaryError):
        actions.registry()["dex.user"].ensure(user_params("alice@example.com", "configmap"))
    apiserver.fail_next("PATCH", "/deployments/dex$", 403)  # the restart is forbidden

    with pytest.raises(PermanentError, match="may not patch"):
        actions.restart_timer(actions.restart_ref, {})
    assert restarts(apiserver) == 1  # tried (and refused): the sweeper records the error and retries


def _share_key(server: FakeApiServer, email: str, key: str) -> None:
    """A hand-made ``staticPasswords`` entry for ``email`` naming Secret key ``key``, as a runbook
    that points two logins at one key writes it."""
    cm = server.get("v1", "configmaps", "dex", "auth")
    assert cm is not None
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config["staticPasswords"].append({"email": email, "hashFromEnv": key, "username": "x", "userID": "x-1"})
    cm["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
    server.seed(cm)


def test_a_new_login_never_names_a_secret_key_another_login_names(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """The key kf-chatops would keep alice's hash under already holds someone else's: her entry
    would sign in with their password (and her reveal would set theirs), so nothing is written."""
    install_dex(apiserver, kube_api_client)
    key = env_key_for("alice@example.com")
    _share_key(apiserver, "user@example.com", key)
    hashed = base64.b64encode(DEFAULT_HASH.encode()).decode()
    secret = apiserver.get("v1", "secrets", "dex-passwords", "auth")
    assert secret is not None
    secret["data"][key] = hashed
    apiserver.seed(secret)
    before = static_passwords(apiserver)

    with pytest.raises(PermanentError, match=f"`{key}`.*user@example.com.*key of its own"):
        ensure_user(dex(kube_api_client, "configmap"), user_params("alice@example.com", "configmap"))
    assert static_passwords(apiserver) == before and secret_data(apiserver)[key] == DEFAULT_HASH


def test_a_password_set_on_a_shared_key_moves_that_login_alone_and_its_removal_finds_it(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """Two entries name ``DEX_USER_PASSWORD``: setting one's password gives that entry a key of its
    own (the other keeps the old hash); removing the adopted login later finds it there, takes its
    key, and leaves the shared one to the login still naming it."""
    install_dex(apiserver, kube_api_client)
    _share_key(apiserver, "helper@example.com", "DEX_USER_PASSWORD")
    actions = dex(kube_api_client, "configmap")
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    actions.set_password_hash("user@example.com", new)

    entries = {e["email"]: e for e in static_passwords(apiserver)}
    own = env_key_for("user@example.com")
    assert entries["user@example.com"]["hashFromEnv"] == own
    assert entries["helper@example.com"]["hashFromEnv"] == "DEX_USER_PASSWORD"
    assert secret_data(apiserver) == {"DEX_USER_PASSWORD": DEFAULT_HASH, own: new}

    remove = actions.registry()["dex.user.remove"]
    remove.ensure({"email": "user@example.com", "mode": "configmap", "adopted": True,
                   "static_entry": "hashFromEnv", "env_key": "DEX_USER_PASSWORD"})
    assert [e["email"] for e in static_passwords(apiserver)] == ["helper@example.com"]
    assert secret_data(apiserver) == {"DEX_USER_PASSWORD": DEFAULT_HASH}


def test_removing_the_bots_login_leaves_a_secret_key_another_login_came_to_name(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """After the bot made alice's login, a hand edit pointed another entry at her key: removing
    alice's login takes her entry only; the key stays while that entry names it."""
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    ensure_user(actions, {**user_params("alice@example.com", "configmap"), "_request": "R1"})
    key = env_key_for("alice@example.com")
    _share_key(apiserver, "helper@example.com", key)

    actions.registry()["dex.user.remove"].ensure({"email": "alice@example.com", "mode": "configmap"})
    assert [e["email"] for e in static_passwords(apiserver)] == ["user@example.com", "helper@example.com"]
    assert key in secret_data(apiserver)


# -- the removal's own in-use check ---------------------------------------------------------------


def _profile_with_binding(apiserver: FakeApiServer, profile: str, user: str, role: str) -> None:
    apiserver.create({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": profile},
                      "spec": {"owner": {"kind": "User", "name": "owner@example.com"}}})
    apiserver.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                      "metadata": {"name": "by-hand", "namespace": profile},
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": f"kubeflow-{role}"},
                      "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


@pytest.mark.parametrize("mode", ["password-cr", "configmap"])
def test_a_login_whose_holder_gained_access_since_the_plan_is_kept_by_the_removal_itself(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, mode: str) -> None:
    """The plan's in-use check can be minutes old when the removal runs (a nodegroup drains
    first): the step reads the cluster again and keeps a login its holder now uses, saying why,
    as a bucket that came to hold data is kept. The request's own namespace does not count."""
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, mode)
    ensure_user(actions, {**user_params("alice@example.com", mode), "_request": "R1"})
    _profile_with_binding(apiserver, "team-x", "Alice@Example.com", "view")
    _profile_with_binding(apiserver, "team-a", "alice@example.com", "admin")
    remove = actions.registry()["dex.user.remove"]

    kept = remove.ensure({"email": "alice@example.com", "mode": mode, "except_namespace": "team-a"})
    assert kept.created is False and kept.kept == ("Dex login `alice@example.com`",)
    assert "`team-x`" in str(kept.details["reason"]) and kept.details["deleted"] is False
    assert actions.user_exists("alice@example.com")

    k8s.Kube(kube_api_client).delete(k8s.ROLE_BINDING, "by-hand", "team-x")
    gone = remove.ensure({"email": "alice@example.com", "mode": mode, "except_namespace": "team-a"})
    assert gone.created is True and gone.kept == ()
    assert not actions.user_exists("alice@example.com")


def test_an_adopted_static_login_whose_holder_gained_access_is_kept(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient) -> None:
    """The adopted ``staticPasswords`` path checks again too (``--delete-adopted``)."""
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "configmap")
    _profile_with_binding(apiserver, "team-x", "user@example.com", "edit")
    outcome = actions.registry()["dex.user.remove"].ensure(
        {"email": "user@example.com", "mode": "configmap", "adopted": True,
         "static_entry": "hashFromEnv", "env_key": "DEX_USER_PASSWORD"})
    assert outcome.kept == ("Dex login `user@example.com`",), outcome
    assert [e["email"] for e in static_passwords(apiserver)] == ["user@example.com"]


@pytest.mark.parametrize("stored", ["victim@example.com", "", None])
def test_a_password_is_never_set_on_a_password_object_that_names_another_email(
        apiserver: FakeApiServer, kube_api_client: client.ApiClient, stored: str | None) -> None:
    """Dex signs in whoever the Password object's ``email`` names, not whom its name was derived
    from: an object under alice's name carrying the victim's email (a restore or hand edit gone
    wrong) would give the presser a password for the victim. Refused as creating a login refuses
    such storage, and the hash stays as it was."""
    install_dex(apiserver, kube_api_client)
    actions = dex(kube_api_client, "password-cr")
    name = dex_password_object_name("alice@example.com")
    body: dict[str, Any] = {"apiVersion": "dex.coreos.com/v1", "kind": "Password",
                            "metadata": {"name": name, "namespace": "auth"},
                            "hash": "JDJ5JDEwJA==", "username": "victim", "userID": "victim-1"}
    if stored is not None:
        body["email"] = stored
    apiserver.create(body)
    hashed = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    with pytest.raises(PermanentError, match="holds another email; Dex's storage is inconsistent"):
        actions.set_password_hash("alice@example.com", hashed)
    found = apiserver.get("dex.coreos.com/v1", "passwords", name, "auth")
    assert found is not None and found["hash"] == "JDJ5JDEwJA=="

    # The same object naming alice (in another case, as Dex folds it) takes the hash.
    k8s.Kube(kube_api_client).delete(k8s.DEX_PASSWORD, name, "auth")
    apiserver.create({**body, "email": "Alice@Example.com"})
    actions.set_password_hash("alice@example.com", hashed)
    found = apiserver.get("dex.coreos.com/v1", "passwords", name, "auth")
    assert found is not None and base64.b64decode(found["hash"]).decode() == hashed
def _make_inline(server: FakeApiServer, email: str) -> None:
    """``email``'s entry with its hash inline, as the Kubeflow 1.7/1.8 runbook writes it."""
    cm = server.get("v1", "configmaps", "dex", "auth")
    assert cm is not None
    config = yaml.safe_load(cm["data"]["config.yaml"])
    for entry in config["staticPasswords"]:
        if entry["email"] == email:
            entry.pop("hashFromEnv", None)
            entry["hash"] = DEFAULT_HASH
    cm["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
    server.seed(cm)


def test_a_password_set_keeps_an_inline_entry_inline_when_dex_does_not_load_the_secret(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """Kubeflow 1.7/1.8: Dex loads no ``dex-passwords``, so an entry moved to ``hashFromEnv`` would
    have no hash and Dex would not start. The new hash goes inline, where the runbook put it."""
    install_dex(apiserver, kube_api_client, load_secret=False)
    _make_inline(apiserver, "user@example.com")
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()
    secret_before = secret_data(apiserver)

    dex(kube_api_client, "configmap").set_password_hash("user@example.com", new)

    [entry] = static_passwords(apiserver)
    assert "hashFromEnv" not in entry and entry["hash"] == new
    assert secret_data(apiserver) == secret_before and restarts(apiserver) == 1


def test_a_password_set_on_a_shared_key_goes_inline_when_dex_does_not_load_the_secret(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    install_dex(apiserver, kube_api_client, load_secret=False)
    _share_key(apiserver, "helper@example.com", "DEX_USER_PASSWORD")
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    dex(kube_api_client, "configmap").set_password_hash("user@example.com", new)

    entries = {e["email"]: e for e in static_passwords(apiserver)}
    assert entries["user@example.com"].get("hash") == new and "hashFromEnv" not in entries["user@example.com"]
    assert entries["helper@example.com"]["hashFromEnv"] == "DEX_USER_PASSWORD"
    assert secret_data(apiserver) == {"DEX_USER_PASSWORD": DEFAULT_HASH}


def test_a_password_set_under_a_key_dex_does_not_load_is_refused(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """The entry names its own key but the Deployment does not load our Secret: a hash written
    there would never reach Dex, so the user would be shown a password that does not work."""
    install_dex(apiserver, kube_api_client, load_secret=False)
    before = static_passwords(apiserver)
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    with pytest.raises(PermanentError, match="does not load Secret `dex-passwords`"):
        dex(kube_api_client, "configmap").set_password_hash("user@example.com", new)
    assert static_passwords(apiserver) == before
    assert secret_data(apiserver) == {"DEX_USER_PASSWORD": DEFAULT_HASH} and restarts(apiserver) == 0


def test_a_password_set_under_a_key_loaded_by_a_secret_key_ref_is_written(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """A Deployment that loads the one key with ``env[].valueFrom.secretKeyRef`` loads it too."""
    install_dex(apiserver, kube_api_client, load_secret=False)
    deployment = apiserver.get("apps/v1", "deployments", "dex", "auth")
    assert deployment is not None
    deployment["spec"]["template"]["spec"]["containers"][0]["env"] = [{
        "name": "DEX_USER_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "dex-passwords", "key": "DEX_USER_PASSWORD"}}}]
    apiserver.seed(deployment)
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    dex(kube_api_client, "configmap").set_password_hash("user@example.com", new)
    assert secret_data(apiserver) == {"DEX_USER_PASSWORD": new}


class _AdminEditsBeforeTheSecretWrite(DexActions):
    """Plays an admin who, after the bot read the config and before its Secret write, moves
    user@example.com to a fresh key and hands the old one (with a hash of its own) to carol."""

    carol = bcrypt.hashpw(b"carol-own-password", bcrypt.gensalt(COST)).decode()
    server: FakeApiServer

    def _write_secret_key(self, key: str, bcrypt_hash: str, **kwargs: Any) -> bool:
        if key == "DEX_USER_PASSWORD" and not kwargs.get("only_if_absent"):
            cm = self.server.get("v1", "configmaps", "dex", "auth")
            assert cm is not None
            config = yaml.safe_load(cm["data"]["config.yaml"])
            config["staticPasswords"][0]["hashFromEnv"] = "DEX_USER_PASSWORD_V2"
            config["staticPasswords"].append({"email": "carol@example.com", "hashFromEnv": key,
                                              "username": "carol", "userID": "carol-1"})
            cm["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
            self.server.seed(cm)
            secret = self.server.get("v1", "secrets", "dex-passwords", "auth")
            assert secret is not None
            secret["data"]["DEX_USER_PASSWORD_V2"] = secret["data"][key]
            secret["data"][key] = base64.b64encode(self.carol.encode()).decode()
            self.server.seed(secret)
        return super()._write_secret_key(key, bcrypt_hash, **kwargs)


def test_a_password_set_racing_an_admin_who_hands_the_key_to_another_login_writes_only_its_own(
    apiserver: FakeApiServer, kube_api_client: client.ApiClient
) -> None:
    """The check that no other entry names the key is made again right before the Secret write:
    carol keeps her own hash and the new password lands under the key user's entry names now."""
    install_dex(apiserver, kube_api_client)
    settings = DexSettings(mode="configmap", bcrypt_cost=COST)
    clock = FakeClock()
    actions = _AdminEditsBeforeTheSecretWrite(kube_api_client, settings, clock,
                                              request_restart=Restarts(clock))
    actions.server = apiserver
    new = bcrypt.hashpw(b"new-password", bcrypt.gensalt(COST)).decode()

    actions.set_password_hash("user@example.com", new)

    data = secret_data(apiserver)
    assert data["DEX_USER_PASSWORD"] == _AdminEditsBeforeTheSecretWrite.carol
    assert data["DEX_USER_PASSWORD_V2"] == new
