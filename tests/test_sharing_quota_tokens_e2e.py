"""Sharing, quota changes and tokens end to end (issue 4), against the real composition.

The live backend (``provisioning.build_backend(..., kube_api=...)``: store, engine, live Kubeflow
actions, facts, secrets) talks to the fake apiserver, which plays the profile controller and
validates Profiles and AuthorizationPolicies against the real CRD schemas; AWS is moto. Each test
starts from a workspace made the real way (a create request, approved by an admin, applied).
People are told through the real ``SlackNotifier`` into the fake Slack, so "who was told" is what
Slack holds. Timed work runs through ``backend.sweep_timers(handle_timer)`` under a ``FakeClock``.
The last test drives the Slack edge itself (``bot.app.start_slack`` with live settings).
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
import yaml
from kubernetes import client
from slack_sdk import WebClient

from bot import app as composition
from bot import blocks, render
from bot import logging as botlog
from bot.controls import control
from bot.identity import Identity
from bot.notify import SlackNotifier
from bot.offboard import slack_id_recorder
from bot.settings import Settings
from handlers import errors, kinds, parse, services
from handlers.model import SYSTEM, Actor, Request, RequestState
from handlers.naming import kfam_binding_name
from handlers.settings import CoreSettings, PolicySettings, TokenSettings, WorkspaceDefaults
from provisioning import GrantRecord, audit, build_backend, store
from provisioning.backend import Backend
from provisioning.settings import KubeflowSettings, ProvisioningSettings
from tests.fakes.apiserver import (
    DEFAULT_AUDIENCE,
    FakeApiServer,
    crd_schemas_available,
    decode_token,
    reference_dir,
)
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.kfam import KFAM_VECTORS
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    slash_command_body,
)
from tests.harness import AUDIT_KEY, engine_settings

ADMIN_CHANNEL = "CADMINS01"
ALICE = Actor("U0ALICE01", "alice@example.com")  # owns team-a
BOB = Actor("U0BOB0001", "bob@example.com")
CAROL = Actor("U0CAROL01", "carol@example.com")
DAVE = Actor("U0DAVE001", "dave@example.com")
ADMIN = Actor("U0ADMIN01", "admin@example.com", is_admin=True)
PEOPLE = (ALICE, BOB, CAROL, DAVE, ADMIN)
NS = "team-a"
GPU = "requests.nvidia.com/gpu"
RBAC = "rbac.authorization.k8s.io"
RBAC_V1 = f"{RBAC}/v1"
ISTIO = "security.istio.io/v1beta1"
PROFILES = "kubeflow.org/v1"
TOKEN_LABEL = "kf-chatops/token-id"
DEFAULT_PRINCIPALS = [
    "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    "cluster.local/ns/kubeflow/sa/ml-pipeline-ui",
]
_ID = re.compile(r"\bR[A-Z0-9]{6}\b")


# -- the world ---------------------------------------------------------------------------------------


@dataclass
class Live:
    backend: Backend
    core: services.Core
    clock: FakeClock
    api: FakeApiServer
    slack: FakeSlack

    # -- acting as people ----------------------------------------------------------------------------
    def kf(self, actor: Actor, text: str) -> Request | str:
        """``/kf text`` as the Slack listener runs it: a request (applied as far as it goes without
        an admin), or the text a control command answers."""
        command = parse.parse_command(
            text, requester_email=actor.email, resolve_user=_no_mentions, settings=self.core.settings
        )
        if isinstance(command, parse.Control):
            return control(self.core, self.backend, actor, command)
        assert not isinstance(command, parse.WorkspaceForm | parse.PasswordReset)
        submitted = services.submit(self.core, actor, command, idempotency_key=None)
        self.run()
        return self.request(submitted.request.id)

    def request_for(self, actor: Actor, text: str) -> Request:
        result = self.kf(actor, text)
        assert isinstance(result, Request), result
        return result

    def text_for(self, actor: Actor, text: str) -> str:
        result = self.kf(actor, text)
        assert isinstance(result, str), result
        return result

    def approve(self, request_id: str) -> Request:
        services.decide(self.core, ADMIN, request_id, approve=True, decision_key=f"test:{request_id}")
        self.run()
        return self.request(request_id)

    def run(self) -> int:
        return self.backend.run_until_idle(self.core.notifier)

    def sweep(self) -> int:
        handled = self.backend.sweep_timers(
            lambda kind, ref, payload: services.handle_timer(self.core, kind, ref, payload)
        )
        self.run()
        return handled

    def later(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        self.sweep()

    # -- reading the world ---------------------------------------------------------------------------
    def request(self, request_id: str) -> Request:
        with self.backend.uow() as uow:
            return uow.requests.get(request_id)

    def requests(self, kind: str | None = None) -> list[Request]:
        with self.backend.uow() as uow:
            return uow.requests.list(kind=kind, limit=1000)

    def request_count(self) -> int:
        return len(self.requests())

    def dms(self, actor: Actor) -> list[str]:
        return [str(m.get("text", "")) for m in self.slack.messages_in(self.slack.dm_channel(actor.user_id))]

    def admin_posts(self) -> list[str]:
        return [str(m.get("text", "")) for m in self.slack.messages_in(ADMIN_CHANNEL)]

    def binding(self, name: str) -> dict[str, Any] | None:
        return self.api.get(RBAC_V1, "rolebindings", name, NS)

    def policy(self, name: str) -> dict[str, Any] | None:
        return self.api.get(ISTIO, "authorizationpolicies", name, NS)

    def contributor_bindings(self) -> dict[str, str]:
        """KFAM-named RoleBindings in the namespace: name -> subject."""
        return {
            b["metadata"]["name"]: b["subjects"][0]["name"]
            for b in self.api.list(RBAC_V1, "rolebindings", NS)
            if b["metadata"]["name"].startswith("user-")
        }

    def hard(self) -> dict[str, str]:
        profile = self.api.get(PROFILES, "profiles", NS)
        assert profile is not None
        return dict(profile["spec"]["resourceQuotaSpec"]["hard"])

    def grants(self) -> dict[str, GrantRecord]:
        with self.backend.db.uow() as uow:
            return {g.user: g for g in uow.registry.grants(NS)}

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.backend.audit_export("jsonl", None)]

    def delete_by_hand(self, api_version: str, plural: str, name: str) -> None:
        base = "/apis/" + api_version if "/" in api_version else "/api/" + api_version
        code, _, _ = self.api.handle("DELETE", f"{base}/namespaces/{NS}/{plural}/{name}", "", b"")
        assert code == 200, code

    def patch_profile_by_hand(self, hard: dict[str, str | None]) -> None:
        body = json.dumps({"spec": {"resourceQuotaSpec": {"hard": hard}}}).encode()
        code, answer, _ = self.api.handle(
            "PATCH", f"/apis/{PROFILES}/profiles/{NS}", "application/merge-patch+json", body
        )
        assert code == 200, answer


def _no_mentions(user_id: str) -> str:
    raise AssertionError("tests type emails")


def core_settings(**tokens: Any) -> CoreSettings:
    return CoreSettings(
        policy=PolicySettings(admin_users=frozenset({ADMIN.user_id})),
        workspace=WorkspaceDefaults(dex_mode="external"),  # no IAM policies, no nodegroup
        tokens=TokenSettings(api_audience=DEFAULT_AUDIENCE, **tokens),
    )


LiveFactory = Callable[..., Live]


@pytest.fixture
def make_live(
    apiserver: FakeApiServer,
    kube_api_client: client.ApiClient,
    aws: AwsEnv,
    fake_slack: FakeSlack,
    tmp_path: Path,
) -> Iterator[LiveFactory]:
    backends: list[Backend] = []

    def make(kubeflow: KubeflowSettings | None = None, core: CoreSettings | None = None) -> Live:
        clock = FakeClock()
        apiserver.clock = clock.now
        for actor in PEOPLE:
            fake_slack.add_user(actor.user_id, actor.email)
        settings = ProvisioningSettings(
            mode="live",
            database_url=f"sqlite:///{tmp_path / 'kfbot.db'}",
            audit_key=AUDIT_KEY,
            engine=engine_settings(),
            kubeflow=kubeflow or KubeflowSettings(kube_api_url="https://api.example:6443"),
            aws_endpoint_url=aws.url,
        )
        core = core or core_settings()
        backend = build_backend(settings, core, clock, kube_api=kube_api_client)
        backends.append(backend)
        backend.migrate()
        slack = WebClient(token=BOT_TOKEN, base_url=fake_slack.base_url)
        notifier = SlackNotifier(
            slack, ADMIN_CHANNEL, Identity(slack, core).user_id_for_email,
            seen=slack_id_recorder(core, backend),  # as bot.app wires it
        )
        world = Live(
            backend,
            services.Core(core, backend.uow, backend.facts, clock, notifier, backend.secrets),
            clock,
            apiserver,
            fake_slack,
        )
        created = world.request_for(ALICE, f"workspace new {NS}")
        assert world.approve(created.id).state is RequestState.SUCCEEDED
        seed_root_ca(apiserver)
        return world

    yield make
    for backend in backends:
        backend.close()


@pytest.fixture
def live(make_live: LiveFactory) -> Live:
    return make_live()


def seed_root_ca(api: FakeApiServer) -> None:
    """kube-controller-manager's part: every namespace gets the cluster CA as kube-root-ca.crt."""
    api.seed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": NS},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"},
        }
    )


def succeeded(request: Request | str) -> Request:
    assert isinstance(request, Request), request
    assert request.state is RequestState.SUCCEEDED, (request.state, request.error)
    return request


def refused(live: Live, actor: Actor, text: str) -> str:
    """The message a refused command gets; nothing may be recorded."""
    before = live.request_count()
    with pytest.raises(errors.KfError) as caught:
        live.kf(actor, text)
    assert live.request_count() == before
    return caught.value.user_message


def crd_validator() -> jsonschema.Draft7Validator:
    path = reference_dir() / "kubeflow-manifests" / "authorizationpolicies.security.istio.io.crd.yaml"
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


# -- sharing -----------------------------------------------------------------------------------------


def test_grants_are_kfams_pair_with_kfams_names_one_subject_and_a_valid_policy(live: Live) -> None:
    for email, expected in KFAM_VECTORS:
        request = succeeded(live.kf(ALICE, f"share {NS} {email}"))
        user = email.lower()  # Kubeflow ids are the lowercased email (Dex's email claim)
        assert request.plan.steps[0].params["user"] == user
        binding, policy = live.binding(expected), live.policy(expected)
        assert binding is not None and policy is not None, expected
        assert binding["metadata"]["annotations"] == {"user": user, "role": "edit"}
        assert policy["metadata"]["annotations"] == {"user": user, "role": "edit"}
        assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"}
        assert binding["subjects"] == [{"apiGroup": RBAC, "kind": "User", "name": user}]
        assert policy["spec"] == {
            "rules": [
                {
                    "when": [{"key": "request.headers[kubeflow-userid]", "values": [user]}],
                    "from": [{"source": {"principals": DEFAULT_PRINCIPALS}}],
                }
            ]
        }
        if crd_schemas_available():
            assert live.api.schema_validation  # the fake refused any invalid policy on create
            crd_validator().validate(policy)
    assert set(live.contributor_bindings()) == {name for _, name in KFAM_VECTORS}
    # Owner shares apply without an admin, and the audit log says so and why.
    shares = {r.id for r in live.requests(kind="share")}
    audit = [e for e in live.audit() if e["request_id"] in shares]
    approvals = [e for e in audit if e["type"] == "request.auto_approved"]
    assert len(shares) == len(approvals) == len(KFAM_VECTORS)
    assert all(e["actor"] == SYSTEM.user_id for e in approvals)
    assert all(e["data"]["reason"] == "the owner shares their own workspace" for e in approvals)
    assert not [e for e in audit if e["type"] == "request.approved"]
    assert not [p for p in live.admin_posts() if "share" in p], "no approval card"


def test_a_kfam_name_collision_is_refused_and_changes_nothing(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} a.b@x.com"))
    name = kfam_binding_name("a.b@x.com", "edit")
    before = (live.binding(name), live.policy(name))

    message = refused(live, ALICE, f"share {NS} a-b@x.com")
    assert "a-b@x.com" in message and "a.b@x.com" in message and f"`{name}`" in message
    message = refused(live, ALICE, f"unshare {NS} a-b@x.com")
    assert "a.b@x.com" in message
    assert (live.binding(name), live.policy(name)) == before
    assert set(live.grants()) == {"a.b@x.com"}

    # A binding made by hand without KFAM's annotations escapes the planner; the action still
    # compares the subject before it writes anything.
    other = kfam_binding_name("c.d@x.com", "edit")
    live.api.seed(
        {
            "apiVersion": RBAC_V1,
            "kind": "RoleBinding",
            "metadata": {"name": other, "namespace": NS},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "c.d@x.com"}],
        }
    )
    seeded = live.binding(other)
    request = live.request_for(ALICE, f"share {NS} c-d@x.com")
    assert request.state is RequestState.FAILED
    assert "c.d@x.com" in (request.error or "") and "share one name" in (request.error or "")
    assert live.binding(other) == seeded and live.policy(other) is None
    assert "c-d@x.com" not in live.grants()


def test_sharing_again_with_another_role_replaces_the_pair(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    request = succeeded(live.kf(ALICE, f"share {NS} bob@example.com --role view"))
    assert any("an edit contributor now" in w for w in request.plan.warnings)
    assert live.contributor_bindings() == {kfam_binding_name(BOB.email, "view"): BOB.email}
    assert live.policy(kfam_binding_name(BOB.email, "edit")) is None
    view = live.policy(kfam_binding_name(BOB.email, "view"))
    assert view is not None and view["metadata"]["annotations"]["role"] == "view"
    binding = live.binding(kfam_binding_name(BOB.email, "view"))
    assert binding is not None and binding["roleRef"]["name"] == "kubeflow-view"
    assert live.grants()[BOB.email].role == "view"


def test_unshare_removes_both_halves_and_a_lone_half_is_repaired_or_removed(live: Live) -> None:
    name = kfam_binding_name(BOB.email, "edit")
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    # A half lost by hand: sharing again repairs it.
    live.delete_by_hand(ISTIO, "authorizationpolicies", name)
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    assert live.binding(name) is not None and live.policy(name) is not None
    # The other half lost: unshare removes the one left, never leaves it alone.
    live.delete_by_hand(RBAC_V1, "rolebindings", name)
    succeeded(live.kf(ALICE, f"unshare {NS} bob@example.com"))
    assert live.binding(name) is None and live.policy(name) is None
    assert BOB.email not in live.grants()
    # And the plain case: both halves go.
    succeeded(live.kf(ALICE, f"share {NS} carol@example.com --role view"))
    succeeded(live.kf(ALICE, f"unshare {NS} carol@example.com"))
    assert live.contributor_bindings() == {}
    assert not [
        p
        for p in live.api.list(ISTIO, "authorizationpolicies", NS)
        if p["metadata"]["name"] not in ("ns-owner-access-istio", "kfbot-notebook-activity")
    ]


def test_only_the_owner_shares_without_an_admin(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    pending = []
    for actor, text in (
        (BOB, f"share {NS} carol@example.com"),
        (DAVE, f"share {NS} dave@example.com --role view"),
    ):
        request = live.request_for(actor, text)
        assert request.state is RequestState.PENDING, text
        assert any(request.id in post for post in live.admin_posts()), "an approval card was posted"
        pending.append(request)
    assert live.contributor_bindings().keys() == {kfam_binding_name(BOB.email, "edit")}
    assert "still open" in refused(live, ALICE, f"share {NS} dave@example.com")
    for request in pending:
        succeeded(live.approve(request.id))
    assert kfam_binding_name(DAVE.email, "view") in live.contributor_bindings()
    assert kfam_binding_name(CAROL.email, "edit") in live.contributor_bindings()
    assert any("<@U0BOB0001> gave you edit access" in dm for dm in live.dms(CAROL)), "the grantee is told"


def test_a_timed_grant_is_revoked_at_expiry_and_both_people_are_told(live: Live) -> None:
    name = kfam_binding_name(BOB.email, "edit")
    for _ in range(2):  # the same grant can expire again after it was given again
        succeeded(live.kf(ALICE, f"share {NS} bob@example.com --for 7d"))
        assert any("gave you edit access" in dm and "for 1w" in dm for dm in live.dms(BOB))
        bob_before, alice_before = len(live.dms(BOB)), len(live.dms(ALICE))
        live.later(timedelta(days=7) - timedelta(minutes=1))
        assert live.binding(name) is not None and live.policy(name) is not None
        live.later(timedelta(minutes=2))
        assert live.binding(name) is None and live.policy(name) is None
        assert BOB.email not in live.grants()
        for actor, before in ((BOB, bob_before), (ALICE, alice_before)):
            told = live.dms(actor)[before:]
            assert len(told) == 1, (actor, told)
            assert "time limit ran out" in told[0] and f"remove bob@example.com from `{NS}`" in told[0]
    revokes = live.requests(kind="unshare")
    assert len(revokes) == 2 and all(r.requester_id == SYSTEM.user_id for r in revokes)


def test_sharing_again_with_for_extends_the_grant(live: Live) -> None:
    name = kfam_binding_name(BOB.email, "edit")
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com --for 7d"))
    live.later(timedelta(days=5))
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com --for 7d"))
    assert live.grants()[BOB.email].expires_at == live.clock.now() + timedelta(days=7)
    live.later(timedelta(days=3))  # past the first expiry
    assert live.binding(name) is not None
    assert BOB.email in live.grants()
    # Bob asks to keep it himself: that waits for an admin and must not hold off the expiry.
    live.later(timedelta(days=2))
    pending = live.request_for(BOB, f"share {NS} bob@example.com --for 30d")
    assert pending.state is RequestState.PENDING
    live.later(timedelta(days=2, minutes=1))
    assert live.binding(name) is None and live.policy(name) is None
    assert live.request(pending.id).state is RequestState.PENDING  # an admin may still grant it


def test_an_expiry_waits_for_a_request_being_applied_about_the_same_grant(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com --for 7d"))
    live.clock.advance(timedelta(days=6))
    asked = live.request_for(BOB, f"share {NS} bob@example.com --role view --for 7d")
    live.clock.advance(timedelta(days=1, minutes=1))
    services.decide(live.core, ADMIN, asked.id, approve=True, decision_key="t")  # approved, not yet applied
    assert live.backend.sweep_timers(lambda k, r, p: services.handle_timer(live.core, k, r, p)) == 1
    with live.backend.db.uow() as uow:
        due = uow.connection.execute(
            sa.select(store.timers.c.due_at).where(
                store.timers.c.kind == "grant.expire", store.timers.c.done_at.is_(None)
            )
        ).scalar_one()
    assert due == live.clock.now() + services.SYSTEM_RETRY, "the expiry comes back, it is not lost"
    assert not live.requests(kind="unshare")
    live.run()  # the admin-approved grant applies and sets its own expiry
    assert live.grants()[BOB.email].role == "view"
    live.later(timedelta(days=7, minutes=1))
    assert live.contributor_bindings() == {}


def test_contributors_lists_expiry_and_marks_drift_both_ways(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com --for 7d"))
    succeeded(live.kf(ALICE, f"share {NS} carol@example.com --role view"))
    succeeded(live.kf(ALICE, f"token {NS}"))  # a token account is never a contributor
    # A pair made by hand, as KFAM (the dashboard) makes it, and a binding deleted by hand.
    dave = kfam_binding_name(DAVE.email, "edit")
    notes = {"user": DAVE.email, "role": "edit"}
    live.api.seed(
        {
            "apiVersion": RBAC_V1,
            "kind": "RoleBinding",
            "metadata": {"name": dave, "namespace": NS, "annotations": notes},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "kubeflow-edit"},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": DAVE.email}],
        }
    )
    live.api.seed(
        {
            "apiVersion": ISTIO,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": dave, "namespace": NS, "annotations": notes},
            "spec": {
                "rules": [{"when": [{"key": "request.headers[kubeflow-userid]", "values": [DAVE.email]}]}]
            },
        }
    )
    live.delete_by_hand(RBAC_V1, "rolebindings", kfam_binding_name(CAROL.email, "view"))
    lines = live.text_for(ALICE, f"contributors {NS}").splitlines()
    bob = next(line for line in lines if BOB.email in line)
    expires = live.grants()[BOB.email].expires_at
    assert "(edit)" in bob and "until" in bob and str(int(expires.timestamp())) in bob
    assert "only" not in bob and "missing" not in bob
    assert "missing in the cluster" in next(line for line in lines if CAROL.email in line)
    assert "in the cluster only" in next(line for line in lines if DAVE.email in line)
    assert not any("kfbot-token" in line for line in lines)
    assert len(lines) == 4  # the heading and three people


# -- identity settings -------------------------------------------------------------------------------


def _profiles_deployment(api: FakeApiServer) -> None:
    """The profiles Deployment as kubeflow/manifests ships it: env from a ConfigMap, plus direct values."""
    api.seed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "profiles-config-5h8tk2c8fm", "namespace": "kubeflow"},
            "data": {"USERID_HEADER": "x-auth-email", "USERID_PREFIX": "accounts:", "ADMIN": ""},
        }
    )
    api.seed(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "profiles-deployment", "namespace": "kubeflow"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "kfam", "env": [{"name": "USERID_HEADER", "value": "wrong-container"}]},
                            {
                                "name": "manager",
                                "envFrom": [{"configMapRef": {"name": "profiles-config-5h8tk2c8fm"}}],
                                "env": [
                                    {
                                        "name": "ISTIO_INGRESS_GATEWAY_PRINCIPAL",
                                        "value": "cluster.local/ns/gw/sa/gw",
                                    },
                                    {
                                        "name": "KFP_UI_PRINCIPAL",
                                        "valueFrom": {
                                            "configMapKeyRef": {"name": "kfp-ui", "key": "principal"}
                                        },
                                    },
                                ],
                            },
                        ]
                    }
                }
            },
        }
    )
    api.seed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kfp-ui", "namespace": "kubeflow"},
            "data": {"principal": "cluster.local/ns/kfp/sa/ui"},
        }
    )


@pytest.mark.parametrize(
    ("settings", "header", "value", "principals"),
    [
        pytest.param(
            KubeflowSettings(),
            "x-auth-email",
            "accounts:bob@example.com",
            ["cluster.local/ns/gw/sa/gw", "cluster.local/ns/kfp/sa/ui"],
            id="from-the-profiles-deployment",
        ),
        pytest.param(
            KubeflowSettings(userid_header="kubeflow-userid", userid_prefix="", kfp_ui_principal="p/kfp"),
            "kubeflow-userid",
            "bob@example.com",
            ["cluster.local/ns/gw/sa/gw", "p/kfp"],
            id="settings-win",
        ),
    ],
)
def test_identity_comes_from_settings_else_the_profiles_deployment(
    make_live: LiveFactory,
    apiserver: FakeApiServer,
    settings: KubeflowSettings,
    header: str,
    value: str,
    principals: list[str],
) -> None:
    _profiles_deployment(apiserver)
    live = make_live(kubeflow=settings)
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    policy = live.policy(kfam_binding_name(BOB.email, "edit"))
    assert policy is not None
    assert policy["spec"]["rules"] == [
        {
            "when": [{"key": f"request.headers[{header}]", "values": [value]}],
            "from": [{"source": {"principals": principals}}],
        }
    ]
    # (Without a Deployment, the manifests defaults: see the first test.)


# -- quota -------------------------------------------------------------------------------------------


def seed_usage(live: Live, used: dict[str, str]) -> None:
    """The kube-controller-manager's part: usage in ``status`` of the controller's ResourceQuota."""
    quota = live.api.get("v1", "resourcequotas", "kf-resource-quota", NS)
    assert quota is not None, "the profile controller made kf-resource-quota"
    quota["status"] = {"hard": dict(quota["spec"]["hard"]), "used": used}
    live.api.seed(quota)


def test_quota_patches_the_profile_and_the_card_shows_used_and_hard(live: Live) -> None:
    seed_usage(live, {"cpu": "3", "memory": "10Gi", GPU: "0", "requests.storage": "20Gi"})
    before = live.hard()
    live.api.requests.clear()
    request = live.request_for(ALICE, f"quota {NS} --cpu 16 --memory 24Gi")
    assert request.state is RequestState.PENDING  # +8 CPUs is more than the self-service step
    card = next(m for m in live.slack.messages_in(ADMIN_CHANNEL) if request.id in m["text"])
    shown = html.unescape(json.dumps(card["blocks"]))
    assert (
        "cpu: 8 -> 16 (used 3 of 8 now)" in shown and "memory: 32Gi -> 24Gi (used 10Gi of 32Gi now)" in shown
    )
    succeeded(live.approve(request.id))
    assert live.hard() == {**before, "cpu": "16", "memory": "24Gi"}
    writes = [r for r in live.api.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert [(r.method, r.path, r.content_type) for r in writes] == [
        ("PATCH", f"/apis/kubeflow.org/v1/profiles/{NS}", "application/merge-patch+json")
    ]
    assert writes[0].body == {
        "spec": {"resourceQuotaSpec": {"hard": {**before, "cpu": "16", "memory": "24Gi"}}}
    }
    quota = live.api.get("v1", "resourcequotas", "kf-resource-quota", NS)
    assert quota is not None and quota["spec"]["hard"]["cpu"] == "16"  # the controller followed


def test_workspace_show_lists_the_live_quota_per_resource_with_its_usage(live: Live) -> None:
    seed_usage(live, {"cpu": "3", "memory": "10Gi"})
    for style in (render.SLACK, render.SHELL):
        shown = control(live.core, live.backend, ALICE, parse.WorkspaceShow(NS), style)
        quota = next(line for line in shown.splitlines() if line.startswith("Quota: "))
        assert "cpu=8 (used 3)" in quota and "memory=32Gi (used 10Gi)" in quota, quota
        assert "hard=" not in quota and "{" not in quota, quota


def test_quota_auto_applies_for_the_owner_within_the_step_only(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    assert live.request_for(ALICE, f"quota {NS} --gpu 1").state is RequestState.SUCCEEDED  # +1 GPU
    assert live.request_for(ALICE, f"quota {NS} --cpu 4 --memory 48Gi").state is RequestState.SUCCEEDED
    assert live.request_for(ALICE, f"quota {NS} --storage 150Gi").state is RequestState.SUCCEEDED
    assert live.hard() == {
        "cpu": "4", "memory": "48Gi", GPU: "1", "persistentvolumeclaims": "10", "requests.storage": "150Gi"
    }  # fmt: skip
    big = live.request_for(ALICE, f"quota {NS} --gpu 3")
    assert big.state is RequestState.PENDING
    services.cancel(live.core, ALICE, big.id)
    for actor in (BOB, ADMIN):  # a contributor, even an admin, asks like anyone else
        request = live.request_for(actor, f"quota {NS} --gpu 2")
        assert request.state is RequestState.PENDING, actor
        services.cancel(live.core, actor, request.id)
    assert live.request_for(ALICE, f"quota {NS} --gpu 0").state is RequestState.SUCCEEDED  # decrease
    assert live.hard()[GPU] == "0"


def test_repeated_small_raises_cannot_ratchet_past_the_approved_quota(live: Live) -> None:
    assert live.hard()[GPU] == "0"
    assert live.request_for(ALICE, f"quota {NS} --gpu 1").state is RequestState.SUCCEEDED  # +1: the step
    second = live.request_for(ALICE, f"quota {NS} --gpu 2")  # +1 on 1, but +2 on the approved 0
    assert second.state is RequestState.PENDING
    assert live.hard()[GPU] == "1"
    succeeded(live.approve(second.id))
    # What an admin approved is the new baseline: one more step is the owner's again, two are not.
    assert live.request_for(ALICE, f"quota {NS} --gpu 3").state is RequestState.SUCCEEDED
    assert live.request_for(ALICE, f"quota {NS} --gpu 4").state is RequestState.PENDING


def test_a_temporary_raise_reverts_at_expiry(live: Live) -> None:
    succeeded(live.kf(ALICE, f"quota {NS} --gpu 1 --for 3d"))
    live.later(timedelta(days=1))
    again = live.request_for(ALICE, f"quota {NS} --gpu 2 --for 3d")  # raised again while temporary
    assert again.state is RequestState.PENDING  # +2 on the approved 0: more than the step
    succeeded(live.approve(again.id))
    live.patch_profile_by_hand({"persistentvolumeclaims": "12"})  # another resource: not ours to guard
    live.later(timedelta(days=2, minutes=1))  # the first raise's time: it was moved
    assert live.hard()[GPU] == "2"
    before = len(live.dms(ALICE))
    live.later(timedelta(days=1))
    assert live.hard()[GPU] == "0", "back to the value before the first raise"
    assert live.hard()["persistentvolumeclaims"] == "12"
    assert any("time limit ran out" in dm and f"{GPU}=0" in dm for dm in live.dms(ALICE)[before:])
    # A lasting change of the same resource supersedes a pending temporary one.
    succeeded(live.kf(ALICE, f"quota {NS} --gpu 1 --for 3d"))
    succeeded(live.kf(ALICE, f"quota {NS} --gpu 1"))
    live.later(timedelta(days=4))
    assert live.hard()[GPU] == "1"


def test_a_temporary_quota_on_a_resource_that_had_none_is_removed_at_expiry(live: Live) -> None:
    live.patch_profile_by_hand({GPU: None})  # an admin took the GPU limit out with kubectl
    assert GPU not in live.hard()
    succeeded(live.kf(ALICE, f"quota {NS} --gpu 1 --for 3d"))
    assert live.hard()[GPU] == "1"
    live.api.requests.clear()
    live.later(timedelta(days=3, minutes=1))
    assert GPU not in live.hard(), "the revert takes the resource out of hard again"
    patches = [r for r in live.api.requests if r.method == "PATCH" and "/profiles/" in r.path]
    assert patches and patches[-1].body["spec"]["resourceQuotaSpec"]["hard"][GPU] is None  # merge patch null
    assert live.hard()["cpu"] == "8"  # the rest is untouched


def test_a_revert_never_clobbers_a_newer_change_and_tells_owner_and_admins(live: Live) -> None:
    succeeded(live.kf(ALICE, f"quota {NS} --gpu 1 --for 3d"))
    live.patch_profile_by_hand({GPU: "4"})  # an admin with kubectl, meanwhile
    admin_before, alice_before = len(live.admin_posts()), len(live.dms(ALICE))
    live.later(timedelta(days=3, minutes=1))
    assert live.hard()[GPU] == "4"
    told = live.dms(ALICE)[alice_before:]
    assert len(told) == 1 and "not reverted" in told[0] and f"{GPU}=4 now" in told[0]
    assert [p for p in live.admin_posts()[admin_before:] if "not reverted" in p] == told
    assert live.request_count() == 2, "no revert request was made"


# -- tokens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "expected"),
    [("kubernetes", [DEFAULT_AUDIENCE]), ("pipelines", ["pipelines.kubeflow.org", DEFAULT_AUDIENCE])],
)
def test_token_audiences(live: Live, audience: str, expected: list[str]) -> None:
    request = succeeded(live.kf(ALICE, f"token {NS} --audience {audience}"))
    secret = services.reveal_token(live.core, ALICE, request.id)
    claims = decode_token(secret.value)
    assert claims["aud"] == expected
    assert claims["sub"] == f"system:serviceaccount:{NS}:{kinds.token_account_name(request.id)}"
    config = yaml.safe_load(secret.extra["kubeconfig"])
    assert config["users"][0]["user"]["token"] == secret.value
    assert config["clusters"][0]["cluster"]["server"] == "https://api.example:6443"
    assert ("kfp" in secret.extra) is (audience == "pipelines")


def test_a_kubernetes_token_asks_for_no_audience_so_a_wrong_setting_cannot_break_kubectl(
    make_live: LiveFactory,
) -> None:
    core = core_settings()
    core = dataclasses.replace(core, tokens=dataclasses.replace(core.tokens, api_audience="https://wrong.example"))
    live = make_live(core=core)
    request = succeeded(live.kf(ALICE, f"token {NS} --audience kubernetes"))
    live.api.requests.clear()
    secret = services.reveal_token(live.core, ALICE, request.id)
    posted = [r for r in live.api.requests if r.method == "POST" and r.path.endswith("/token")]
    assert len(posted) == 1 and "audiences" not in posted[0].body["spec"]  # as `kubectl create token`
    assert decode_token(secret.value)["aud"] == [DEFAULT_AUDIENCE]  # the API server's own default


def test_a_ttl_outside_ten_minutes_to_the_maximum_is_refused(make_live: LiveFactory) -> None:
    live = make_live(core=core_settings(max_ttl=timedelta(hours=12)))
    for ttl in ("5m", "13h"):
        message = refused(live, ALICE, f"token {NS} --ttl {ttl}")
        assert "10m" in message and "12h" in message, message
    succeeded(live.kf(ALICE, f"token {NS} --ttl 10m"))
    succeeded(live.kf(ALICE, f"token {NS} --ttl 12h"))


def test_without_an_admin_a_token_is_at_most_the_requesters_role(live: Live) -> None:
    succeeded(live.kf(ALICE, f"share {NS} bob@example.com"))
    succeeded(live.kf(ALICE, f"share {NS} carol@example.com --role view"))
    cases = [
        (ALICE, "", RequestState.SUCCEEDED),
        (BOB, "", RequestState.SUCCEEDED),
        (BOB, " --read-only", RequestState.SUCCEEDED),
        (CAROL, " --read-only", RequestState.SUCCEEDED),
        (CAROL, "", RequestState.PENDING),
        (DAVE, " --read-only", RequestState.PENDING),
    ]
    for actor, flags, state in cases:
        request = live.request_for(actor, f"token {NS}{flags}")
        assert request.state is state, (actor.email, flags)
        if state is RequestState.SUCCEEDED:
            binding = live.binding(kinds.token_account_name(request.id))
            assert binding is not None
            assert binding["roleRef"]["name"] == ("kubeflow-view" if flags else "kubeflow-edit")
    pending = live.request_for(CAROL, f"token {NS} --ttl 2h")
    succeeded(live.approve(pending.id))


def test_tokens_have_their_own_accounts_and_are_revoked_and_swept(live: Live) -> None:
    first = succeeded(live.kf(ALICE, f"token {NS} --ttl 1h"))
    second = succeeded(live.kf(ALICE, f"token {NS} --ttl 3h --read-only"))
    for request in (first, second):
        name = kinds.token_account_name(request.id)
        account = live.api.get("v1", "serviceaccounts", name, NS)
        binding = live.binding(name)
        assert account is not None and binding is not None
        for obj in (account, binding):
            assert obj["metadata"]["labels"][TOKEN_LABEL] == request.id
            assert not {"user", "role"} & set(obj["metadata"].get("annotations") or {})
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NS}]
    listed = live.text_for(ALICE, "tokens")
    assert first.id in listed and second.id in listed
    assert live.text_for(BOB, "tokens") == "You have no active tokens."
    assert live.backend.contributors(NS) == []

    assert "Only the token's requester" in refused(live, BOB, f"token revoke {second.id}")
    succeeded(live.kf(ALICE, f"token revoke {second.id}"))
    gone = kinds.token_account_name(second.id)
    assert live.api.get("v1", "serviceaccounts", gone, NS) is None and live.binding(gone) is None
    with pytest.raises(errors.NotFound):
        services.reveal_token(live.core, ALICE, second.id)
    listed = live.text_for(ALICE, "tokens")
    assert first.id in listed and second.id not in listed

    live.later(timedelta(minutes=59))
    assert live.api.get("v1", "serviceaccounts", kinds.token_account_name(first.id), NS) is not None
    live.later(timedelta(minutes=2))
    assert live.api.get("v1", "serviceaccounts", kinds.token_account_name(first.id), NS) is None
    assert live.binding(kinds.token_account_name(first.id)) is None
    assert live.text_for(ALICE, "tokens") == "You have no active tokens."
    assert not [
        a for a in live.api.list("v1", "serviceaccounts", NS) if a["metadata"]["name"].startswith("kfbot")
    ]


# -- the Slack edge: no token anywhere but the requester's modal ------------------------------------


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "kfbot", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "kfbot"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def _slash(bot: composition.Running, fake: FakeSlack, user: Actor, text: str, name: str) -> str:
    body = slash_command_body(text, user_id=user.user_id, response_url=fake.response_url(name))
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    assert status == 200
    reply = fake.wait_for(lambda: fake.responses.get(name), 60.0, f"the reply to /kf {text}")
    return str(reply[0]["text"])


def _click(
    bot: composition.Running, fake: FakeSlack, user: Actor, message: dict[str, Any], action: str
) -> None:
    value = next(
        e["value"]
        for b in message.get("blocks", [])
        for e in b.get("elements", [])
        if e.get("action_id") == action
    )
    body = block_action_body(
        action,
        value,
        user_id=user.user_id,
        channel_id=message["channel"],
        message_ts=message["ts"],
        response_url=fake.response_url(f"click-{action}"),
        message_blocks=message.get("blocks"),
    )
    status, _, _ = post_signed(bot.url, body, SIGNING_SECRET)
    assert status == 200


def _state(bot: composition.Running, request_id: str, state: RequestState, fake: FakeSlack) -> None:
    def current() -> bool:
        with bot.backend.uow() as uow:
            return uow.requests.get(request_id).state is state

    fake.wait_for(current, 60.0, f"{request_id} to be {state.value}")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    names = ("slack_sdk", "slack_bolt", "urllib3", "apscheduler")
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in names})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for n, level in saved[2].items():
        logging.getLogger(n).setLevel(level)


def test_the_token_is_only_ever_in_the_requesters_modal(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    fake_slack: FakeSlack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    restore_logging: None,
) -> None:
    for actor in PEOPLE:
        fake_slack.add_user(actor.user_id, actor.email)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = str(_kubeconfig(tmp_path / "kubeconfig", apiserver.url))
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake_slack.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": ADMIN.user_id,
        "KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}",
        "KFBOT_AUDIT_KEY": "test-audit-key-0123456789abcdef",
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0",
        "KFBOT_HEALTH_PORT": "0",
        "KFBOT_WORKER_ID": "token-edge-test",
        "KFBOT_PROVISIONER": "live",
        "KFBOT_NODEGROUP_SUBNETS": "subnet-0a1b2c3d",
        "KFBOT_NODE_ROLE_ARN": "arn:aws:iam::123456789012:role/kf-nodes",
        "KFBOT_DEX_MODE": "external",
        "KFBOT_KUBE_API_URL": "https://api.example:6443",
        "KFBOT_TOKEN_API_AUDIENCE": DEFAULT_AUDIENCE,
    }
    settings = Settings.from_env(env)
    engine = dataclasses.replace(settings.provisioning.engine, poll_interval=0.05)
    settings = dataclasses.replace(
        settings, provisioning=dataclasses.replace(settings.provisioning, engine=engine)
    )
    out = io.StringIO()
    botlog.configure(fmt="json", level="DEBUG", provisioner="live", stream=out)
    caplog.set_level(logging.INFO)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    apiserver.clock = clock.now
    apiserver.max_token_expiration_seconds = 1200  # the apiserver caps what the bot asks for

    backend = composition.build_backend(settings)
    backend.migrate()
    backend.close()
    bot = composition.start_slack(settings, clock=clock, port=0)
    try:
        create = _ID.search(_slash(bot, fake_slack, ALICE, f"workspace new {NS}", "create"))
        assert create is not None
        card = fake_slack.wait_for(
            lambda: next(
                (m for m in fake_slack.messages_in(ADMIN_CHANNEL) if create.group(0) in m["text"]), None
            ),
            15.0,
        )
        _click(bot, fake_slack, ADMIN, card, blocks.APPROVE)
        _state(bot, create.group(0), RequestState.SUCCEEDED, fake_slack)
        seed_root_ca(apiserver)
        token_id = _ID.search(
            _slash(bot, fake_slack, ALICE, f"token {NS} --ttl 2h --audience pipelines", "token")
        )
        assert token_id is not None
        _state(bot, token_id.group(0), RequestState.SUCCEEDED, fake_slack)
        dm = fake_slack.wait_for(
            lambda: next(
                (
                    m
                    for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE.user_id))
                    if blocks.SHOW_TOKEN in json.dumps(m.get("blocks"))
                ),
                None,
            ),
            15.0,
        )
        assert not [r for r in apiserver.requests if r.path.endswith("/token")], (
            "nothing secret before the click"
        )
        _click(bot, fake_slack, ALICE, dm, blocks.SHOW_TOKEN)
        # "Working…" opens at the click; the token arrives by views.update into that modal.
        modal = fake_slack.wait_for(lambda: fake_slack.calls_to("views.update"), 60.0)[0]["view"]
    finally:
        bot.stop()

    text = json.dumps(modal)
    token = next(t for t in re.findall(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", text))
    assert decode_token(token)["aud"] == ["pipelines.kubeflow.org", DEFAULT_AUDIENCE]
    # The expiry shown is the apiserver's (20 minutes), not the 2h asked for.
    expiry = datetime.fromtimestamp(decode_token(token)["exp"], UTC)
    assert expiry == clock.now() + timedelta(seconds=1200)
    assert f"<!date^{int(expiry.timestamp())}^" in text
    assert "kfp.Client" in text and "certificate-authority-data" in text

    calls = [c for c in fake_slack.calls if token in json.dumps(c.params)]
    assert [(c.method, c.params.get("view", {}).get("title", {}).get("text")) for c in calls] == [
        ("views.update", "Your token")
    ]
    dump, audit = _database(settings)
    assert token not in dump and '"audit_events"' in dump and '"tokens"' in dump
    assert token not in json.dumps([dataclasses.asdict(r) for r in apiserver.requests], default=str)
    assert token not in out.getvalue() and out.getvalue(), "the bot's log output"
    assert not [r for r in caplog.records if token in r.getMessage()]
    revealed = [e for e in audit if e["type"] == "secret.revealed"]
    assert (
        len(revealed) == 1 and revealed[0]["data"]["kind"] == "token" and revealed[0]["data"]["fingerprint"]
    )


def _database(settings: Settings) -> tuple[str, list[dict[str, Any]]]:
    """Every row of every table of the bot's database as text, and the audit log."""
    db = store.Database(settings.provisioning.database_url, audit_key=settings.provisioning.audit_key)
    try:
        with db.engine.connect() as conn:
            rows = {
                t.name: [dict(r._mapping) for r in conn.execute(sa.select(t))]
                for t in store.metadata.sorted_tables
            }
        return json.dumps(rows, default=str), [json.loads(line) for line in audit.export(db, "jsonl")]
    finally:
        db.dispose()
