"""Logins for collaborators (issue 12): a share with someone Dex has no login for makes one, the
grantee sets its password from their DM, the login goes with their last access; an admin's
``/kf password reset EMAIL`` hands a person the same button and never the password.

The stack is the live composition (``tests.live_harness``): the Dex adapter writes Password objects
(``password-cr``) or Dex's own ConfigMap, Secret and Deployment read from Kubeflow's manifests
(``configmap``) in the fake apiserver; AWS is moto. The last tests drive the Slack edge itself
(``bot.app.start_slack``) and press the DM's button through the fake Slack.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from kubernetes import client

from bot import app as composition
from bot import blocks
from bot.settings import Settings
from handlers import errors, kinds, notifications, parse, services
from handlers.model import Actor, Request, RequestState
from handlers.naming import dex_password_object_name
from handlers.notifications import Audience, Button
from handlers.settings import CoreSettings
from provisioning import dex as dex_adapter
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.clock import FakeClock
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.fakes.slack_bot import ADMIN_CHANNEL
from tests.fakes.slack_edge import REQUEST_ID, button, card_for, click, slash, wait_state, wait_until
from tests.live_harness import (
    ADMIN,
    ADMIN2,
    ALICE,
    DEX_NAMESPACE,
    AwsWorld,
    LiveStack,
    dex_secret_data,
    dex_static_passwords,
    dump_database,
    live_env,
    live_stack,
    seed_aws,
    seed_kube,
    tune_for_tests,
    write_kubeconfig,
)
from tests.test_adopt_attacks import kfam_pair

CAROL = Actor("UCAROL001", "carol@example.com")
DAVE = Actor("UDAVE0001", "dave@example.com")
EVE = Actor("UEVE00001", "eve@example.com")
DEX_PASSWORDS = ("dex.coreos.com/v1", "passwords")
NO_IAM = {"KFBOT_IAM_POLICY_ARNS": ""}
"""Workspaces without the shared IAM policies: logins do not touch them, and moto's IAM is slow."""
HOSTILE_EMAILS = (
    "*@example.com",  # an Istio wildcard
    "carol@example.com*",
    "c*rol@example.com",
    "\u0441arol@example.com",  # Cyrillic es: a look-alike of carol@
    "carol@ex\u0430mple.com",  # Cyrillic a in the domain
    "carol%40example.com@evil.test",
    "carol@example.com\u202e",
    "<mailto:carol@example.com|alice@example.com>",
    "=carol@example.com",
)


@pytest.fixture
def world(aws: Any) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture(params=["password-cr", "configmap"])
def stack(
    request: pytest.FixtureRequest, sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> Iterator[LiveStack]:
    mode = request.param
    with live_stack(sqlite_url, apiserver, world, dex_mode=mode, quiet_period=1.0, env=NO_IAM) as built:
        _apply(built, ALICE, "workspace new team-a")
        yield built


@pytest.fixture
def password_cr(sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld) -> Iterator[LiveStack]:
    with live_stack(sqlite_url, apiserver, world, env=NO_IAM) as built:
        _apply(built, ALICE, "workspace new team-a")
        yield built


def _mode(stack: LiveStack) -> str:
    return stack.settings.core.workspace.dex_mode


def _settle(stack: LiveStack, rounds: int = 40) -> None:
    """Run the engine and the sweeper (a configmap-mode step waits for the one Dex restart its
    timer asks for), moving the fake clock a second a round, until nothing is open."""
    assert isinstance(stack.clock, FakeClock)
    for _ in range(rounds):
        stack.run()
        stack.backend.sweep_timers(
            lambda kind, ref, payload: services.handle_timer(stack.core, kind, ref, payload)
        )
        if not [r for r in stack.requests() if r.state in (RequestState.APPROVED, RequestState.APPLYING)]:
            return
        stack.clock.advance(timedelta(seconds=1))
    raise AssertionError([(r.id, r.state, r.error) for r in stack.requests()])


def _apply(stack: LiveStack, actor: Actor, text: str, approver: Actor = ADMIN) -> Request:
    request = stack.submit(actor, text)
    if request.state is RequestState.PENDING:
        stack.approve(request.id, approver)
    _settle(stack)
    done = stack.request(request.id)
    assert done.state is RequestState.SUCCEEDED, (done.state, done.error)
    return done


def _login_hash(stack: LiveStack, email: str) -> str | None:
    """The bcrypt hash Dex would check ``email``'s password against, wherever this mode keeps it."""
    if _mode(stack) == "password-cr":
        obj = stack.apiserver.get(*DEX_PASSWORDS, dex_password_object_name(email), DEX_NAMESPACE)
        return None if obj is None else base64.b64decode(obj["hash"]).decode()
    entry = next((e for e in dex_static_passwords(stack.apiserver) if e["email"] == email), None)
    if entry is None:
        return None
    if "hash" in entry:  # an inline hash, as a hand-made entry has
        return str(entry["hash"])
    return dex_secret_data(stack.apiserver).get(entry["hashFromEnv"])


def _reveal(stack: LiveStack, actor: Actor) -> str:
    """The DM button's use case (in configmap mode it restarts Dex and waits for the rollout)."""
    return services.reveal_password(stack.core, actor).value


def _result_notices(stack: LiveStack, request: Request) -> list[notifications.Notice]:
    """Who the router tells what about ``request``'s success (what the Slack and shell notifiers
    deliver)."""
    with stack.backend.uow() as uow:
        trail = uow.audit.trail(request.id)
    succeeded = [e for e in trail if e.type.value == "request.succeeded"]
    assert succeeded, [e.type for e in trail]
    return notifications.route(request, succeeded, has_card=True)


# -- sharing with someone who has no login ------------------------------------------------------------


def test_a_collaborator_without_a_login_gets_one_and_sets_it_a_hand_made_one_is_left_alone(
    stack: LiveStack,
) -> None:
    assert _login_hash(stack, CAROL.email) is None
    share = _apply(stack, ALICE, f"share team-a {CAROL.email}")
    # The plan said so, and made the login as an owner's is made: a hash of bytes nobody has.
    assert any("has no Kubeflow login today" in w for w in share.plan.warnings), share.plan.warnings
    assert [s.action for s in share.plan.steps] == ["kubeflow.contributor", "dex.user"]
    unusable = _login_hash(stack, CAROL.email)
    assert unusable is not None and re.fullmatch(r"\$2[aby]\$10\$.{53}", unusable)
    # Carol (not Alice, who asked) is told, with the button.
    told = [(n.audience, n.to, n.button) for n in _result_notices(stack, share)]
    assert (Audience.REQUESTER, None, None) in told
    assert (Audience.PERSON, CAROL.email, Button.SET_PASSWORD) in told
    # Her click: a password shown once, only its hash in Dex, verifying.
    password = _reveal(stack, CAROL)
    stored = _login_hash(stack, CAROL.email)
    assert stored is not None and stored != unusable and bcrypt.checkpw(password.encode(), stored.encode())
    assert password not in json.dumps([(r.method, r.path, r.body) for r in stack.apiserver.requests])
    assert password not in "".join(stack.backend.audit_export("jsonl", None))

    # An admin's reset: her DM gets the button again; nothing changes until she presses it.
    reset = _apply(stack, ADMIN, f"password reset {CAROL.email}")
    assert reset.kind == "password.reset" and reset.plan.steps == ()
    told = [
        (n.audience, n.to, n.button)
        for n in _result_notices(stack, reset)
        if n.audience in (Audience.REQUESTER, Audience.PERSON)
    ]
    assert told == [(Audience.REQUESTER, None, None), (Audience.PERSON, CAROL.email, Button.SET_PASSWORD)]
    assert _login_hash(stack, CAROL.email) == stored

    # Her last access goes: the login the share made goes with it; Alice's own stays.
    gone = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert [s.action for s in gone.plan.steps][-1] == "dex.user.remove"
    _settle(stack)
    assert _login_hash(stack, CAROL.email) is None
    if _mode(stack) == "configmap":
        assert dex_adapter.env_key_for(CAROL.email) not in dex_secret_data(stack.apiserver)
    with pytest.raises(errors.Forbidden):
        services.reveal_password(stack.core, CAROL)
    assert "made no Dex login" in _refused(stack, ADMIN, f"password reset {CAROL.email}")
    assert _login_hash(stack, ALICE.email) is not None

    _hand_made_login_is_used_as_it_is_never_removed_nor_reset(stack)


def _hand_made_login_is_used_as_it_is_never_removed_nor_reset(stack: LiveStack) -> None:
    hand = bcrypt.hashpw(b"set-by-an-admin", bcrypt.gensalt(10)).decode()
    if _mode(stack) == "password-cr":
        stack.apiserver.seed(
            {
                "apiVersion": "dex.coreos.com/v1",
                "kind": "Password",
                "metadata": {"name": dex_password_object_name(DAVE.email), "namespace": DEX_NAMESPACE},
                "email": DAVE.email,
                "hash": base64.b64encode(hand.encode()).decode(),
                "username": "dave",
                "userID": "hand-made",
            }
        )
    else:
        _static_entry_by_hand(stack, DAVE.email, hand)
    share = _apply(stack, ALICE, f"share team-a {DAVE.email}")
    assert [s.action for s in share.plan.steps] == ["kubeflow.contributor"]
    assert not any("login" in w for w in share.plan.warnings)
    assert all(n.button is None for n in _result_notices(stack, share))
    unshare = _apply(stack, ALICE, f"unshare team-a {DAVE.email}")
    assert [s.action for s in unshare.plan.steps] == ["kubeflow.contributor.remove"]
    assert _login_hash(stack, DAVE.email) == hand
    # Not the bot's: neither she nor an admin can reset it through the bot.
    with pytest.raises(errors.Forbidden):
        services.reveal_password(stack.core, DAVE)
    assert "made by hand" in _refused(stack, ADMIN, f"password reset {DAVE.email}")


def test_the_login_stays_while_other_access_remains_and_goes_with_expiry_or_delete(
    password_cr: LiveStack,
) -> None:
    stack = password_cr
    # The admin's own workspace (approved by another admin): a second place for Carol, and a
    # login the bot made for an admin.
    _apply(stack, ADMIN, "workspace new team-b", approver=ADMIN2)
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    second = _apply(stack, ADMIN, f"share team-b {CAROL.email}")
    assert "dex.user" not in [s.action for s in second.plan.steps]  # she has one now
    kept = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert "dex.user.remove" not in [s.action for s in kept.plan.steps]
    assert any("is kept" in w for w in kept.plan.warnings)
    assert _login_hash(stack, CAROL.email) is not None

    # A grant that expires takes the login it made (Dave's, in team-a).
    _apply(stack, ALICE, f"share team-a {DAVE.email} --for 1d")
    assert _login_hash(stack, DAVE.email) is not None
    assert isinstance(stack.clock, FakeClock)
    stack.clock.advance(timedelta(days=1, seconds=1))
    _settle(stack)
    expiry = next(r for r in stack.requests() if r.kind == "unshare" and r.args["user"] == DAVE.email)
    assert expiry.state is RequestState.SUCCEEDED, expiry.error
    assert _login_hash(stack, DAVE.email) is None

    # Deleting a workspace removes its collaborators' logins that have no other access.
    _apply(stack, ALICE, f"share team-a {EVE.email}")
    delete = _apply(stack, ALICE, "workspace delete team-a --confirm team-a")
    assert f"DexUser/{EVE.email}" in [s.key for s in delete.plan.steps]
    assert _login_hash(stack, EVE.email) is None and _login_hash(stack, ALICE.email) is None

    # Who may reset whom: owner, contributor and stranger are refused, nothing recorded.
    for actor in (ALICE, CAROL, Actor("USTRANGE1", "stranger@example.com")):
        assert "Only admins" in _refused(stack, actor, f"password reset {DAVE.email}")
    # Anyone's own address is their own button, no request (an admin's included).
    for actor in (ALICE, CAROL, ADMIN):
        parsed = parse.parse_command(
            f"password reset {actor.email.upper()}",
            requester_email=actor.email,
            resolve_user=_no_mentions,
            settings=stack.core.settings,
        )
        assert isinstance(parsed, parse.PasswordReset)
    # An admin whose own login it is (filed directly, as an alias would reach it) waits for another.
    mine = services.submit(stack.core, ADMIN, kinds.PasswordResetFor(ADMIN.email), idempotency_key=None)
    assert mine.request.state is RequestState.PENDING and mine.auto_reason is None
    with pytest.raises(errors.Forbidden):
        stack.approve(mine.request.id, ADMIN)
    stack.approve(mine.request.id, ADMIN2)
    _settle(stack)
    assert stack.request(mine.request.id).state is RequestState.SUCCEEDED


def test_a_login_stays_while_a_contributor_added_by_hand_elsewhere_still_uses_it(
    password_cr: LiveStack,
) -> None:
    """The registry is not the only record of who signs in: a contributor the dashboard's Manage
    Contributors added to another workspace uses the same login, so an owner's self-service unshare
    (applied alone) must not take it (the login is the person's, not the grant's)."""
    stack = password_cr
    _apply(stack, ADMIN, "workspace new team-b", approver=ADMIN2)
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    assert _login_hash(stack, CAROL.email) is not None
    (team_b,) = [w for w in stack.backend.workspaces() if w.name == "team-b"]
    for binding in kfam_pair(CAROL.email, "edit", team_b.namespace):  # by hand, as KFAM writes it
        stack.apiserver.create(binding)

    unshare = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert unshare.state is RequestState.SUCCEEDED, unshare.error
    assert "dex.user.remove" not in [s.action for s in unshare.plan.steps], unshare.plan.steps
    assert any("is kept" in w for w in unshare.plan.warnings), unshare.plan.warnings
    assert _login_hash(stack, CAROL.email) is not None


def test_a_login_stays_while_its_holder_contributes_to_a_profile_the_bot_does_not_manage(
    password_cr: LiveStack,
) -> None:
    """A hand-made Profile (``/kf workspace scan`` lists it; the bot's record does not) is used with
    the same login: carol, a KFAM contributor of team-x, keeps hers when an owner's self-service
    unshare takes her last grant the bot knows of, and the plan says why."""
    stack = password_cr
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    stack.apiserver.create({"apiVersion": "kubeflow.org/v1", "kind": "Profile",
                            "metadata": {"name": "team-x"},
                            "spec": {"owner": {"kind": "User", "name": "dave@example.com"}}})
    for binding in kfam_pair(CAROL.email, "edit", "team-x"):  # by hand, as KFAM writes it
        stack.apiserver.create(binding)

    seen = len(stack.apiserver.requests)
    unshare = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert "dex.user.remove" not in [s.action for s in unshare.plan.steps], unshare.plan.steps
    assert any("is kept" in w and "`team-x`" in w for w in unshare.plan.warnings), unshare.plan.warnings
    # The cluster is read whole, once per plan (and once more at apply), not namespace by namespace.
    reads = [r.path for r in stack.apiserver.requests[seen:] if r.method == "GET"]
    assert reads.count("/apis/rbac.authorization.k8s.io/v1/rolebindings") == 2, reads
    assert not [p for p in reads if p.startswith("/apis/rbac.authorization.k8s.io/v1/namespaces/team-x/")]
    assert _login_hash(stack, CAROL.email) is not None


@pytest.mark.parametrize("shape", ["kfam-admin", "unannotated-edit", "unannotated-view-other-case"])
def test_a_login_stays_while_its_holder_is_a_user_subject_of_any_kubeflow_binding(
    password_cr: LiveStack, shape: str,
) -> None:
    """Any User subject of a RoleBinding to kubeflow-admin/edit/view in a Profile's namespace signs
    in with the login: a co-owner KFAM wrote with ``role: admin`` (not the owner's own
    ``namespaceAdmin``), and a binding written by hand without KFAM's annotations, whatever the
    case of the address. Only the Profile owner's binding was ever the owner's."""
    stack = password_cr
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    stack.apiserver.create({"apiVersion": "kubeflow.org/v1", "kind": "Profile",
                            "metadata": {"name": "team-x"},
                            "spec": {"owner": {"kind": "User", "name": "dave@example.com"}}})
    if shape == "kfam-admin":
        binding = kfam_pair(CAROL.email, "admin", "team-x")[0]
    else:
        role = "edit" if shape == "unannotated-edit" else "view"
        name = CAROL.email if role == "edit" else CAROL.email.upper()
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "by-hand", "namespace": "team-x"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": f"kubeflow-{role}"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"},
                                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}]}
    stack.apiserver.create(binding)

    unshare = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert unshare.state is RequestState.SUCCEEDED, unshare.error
    assert "dex.user.remove" not in [s.action for s in unshare.plan.steps], unshare.plan.steps
    assert any("is kept" in w and "`team-x`" in w for w in unshare.plan.warnings), unshare.plan.warnings
    assert _login_hash(stack, CAROL.email) is not None


def test_a_binding_to_another_role_or_outside_a_profile_is_no_use_of_the_login(
    password_cr: LiveStack,
) -> None:
    """The widened check still lets a login go: a binding to a ClusterRole that is not Kubeflow's,
    or in a namespace no Profile owns, opens no dashboard."""
    stack = password_cr
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    stack.apiserver.create({"apiVersion": "kubeflow.org/v1", "kind": "Profile",
                            "metadata": {"name": "team-x"},
                            "spec": {"owner": {"kind": "User", "name": "dave@example.com"}}})
    for namespace, role in (("team-x", "cluster-admin"), ("default", "kubeflow-admin")):
        stack.apiserver.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                                "metadata": {"name": "by-hand", "namespace": namespace},
                                "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                            "kind": "ClusterRole", "name": role},
                                "subjects": [{"kind": "User", "name": CAROL.email}]})
    unshare = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
    assert unshare.state is RequestState.SUCCEEDED, unshare.error
    assert "dex.user.remove" in [s.action for s in unshare.plan.steps], unshare.plan.steps
    assert _login_hash(stack, CAROL.email) is None


def test_set_my_password_refuses_a_password_object_that_names_someone_else(password_cr: LiveStack) -> None:
    """A Password object under carol's name that carries the victim's email (a restore gone
    wrong) signs in as the victim: "Set my password" refuses with the reason, as making a login
    does, and the object's hash stays as it was."""
    stack = password_cr
    _apply(stack, ALICE, f"share team-a {CAROL.email}")
    name = dex_password_object_name(CAROL.email)
    tampered = stack.apiserver.get(*DEX_PASSWORDS, name, DEX_NAMESPACE)
    assert tampered is not None
    stack.apiserver.seed({**tampered, "email": "victim@example.com", "username": "victim"})

    with pytest.raises(errors.PermanentError, match="Dex's storage is inconsistent"):
        services.reveal_password(stack.core, CAROL)
    after = stack.apiserver.get(*DEX_PASSWORDS, name, DEX_NAMESPACE)
    assert after is not None and after["hash"] == tampered["hash"]


def test_external_mode_changes_nothing(sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld) -> None:
    with live_stack(sqlite_url, apiserver, world, dex_mode="external", env=NO_IAM) as stack:
        _apply(stack, ALICE, "workspace new team-a")
        share = _apply(stack, ALICE, f"share team-a {CAROL.email}")
        assert [s.action for s in share.plan.steps] == ["kubeflow.contributor"]
        assert share.plan.warnings == ()
        assert all(n.button is None for n in _result_notices(stack, share))
        assert stack.apiserver.list(*DEX_PASSWORDS, DEX_NAMESPACE) == []
        unshare = _apply(stack, ALICE, f"unshare team-a {CAROL.email}")
        assert [s.action for s in unshare.plan.steps] == ["kubeflow.contributor.remove"]
        assert "identity provider" in _refused(stack, ADMIN, f"password reset {ALICE.email}")


@pytest.mark.parametrize("email", HOSTILE_EMAILS)
def test_hostile_addresses_are_refused_as_share_refuses_them(email: str) -> None:
    for actor, text in ((ALICE, f"share team-a {email}"), (ADMIN, f"password reset {email}")):
        with pytest.raises(errors.InvalidInput):
            parse.parse_command(
                text, requester_email=actor.email, resolve_user=_no_mentions, settings=CoreSettings()
            )


def _static_entry_by_hand(stack: LiveStack, email: str, bcrypt_hash: str) -> None:
    """An admin's own ``staticPasswords`` entry with an inline hash, as the runbook writes one."""
    cm = stack.apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
    assert cm is not None
    config = yaml.safe_load(cm["data"]["config.yaml"])
    config.setdefault("staticPasswords", []).append(
        {"email": email, "hash": bcrypt_hash, "username": "by-hand", "userID": "hand-made"}
    )
    cm["data"]["config.yaml"] = yaml.safe_dump(config)
    code, answer, _ = stack.apiserver.handle(
        "PUT",
        f"/api/v1/namespaces/{DEX_NAMESPACE}/configmaps/dex",
        "application/json",
        json.dumps(cm).encode(),
    )
    assert code == 200, answer


def _refused(stack: LiveStack, actor: Actor, text: str) -> str:
    """The message a refused command gets; nothing may be recorded."""
    before = len(stack.requests())
    with pytest.raises(errors.KfError) as caught:
        services.submit(stack.core, actor, stack.kind(actor, text), idempotency_key=None)
    assert len(stack.requests()) == before
    return caught.value.user_message


def _no_mentions(user_id: str) -> str:
    raise AssertionError("these tests type emails")


# -- the Slack edge: the DM's button, pressed -----------------------------------------------------------


def test_the_grantee_presses_set_my_password_in_their_dm_and_only_their_modal_shows_it(
    sqlite_url: str,
    apiserver: FakeApiServer,
    world: AwsWorld,
    fake_slack: FakeSlack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO: slack_sdk's DEBUG lines carry request bodies; `kfbot serve` keeps them out of its logs
    # (bot.logging, tested with the owner's password in test_workspace_e2e).
    caplog.set_level(logging.INFO)
    for actor, name in ((ALICE, "alice"), (CAROL, "carol"), (ADMIN, "admin"), (ADMIN2, "admin2")):
        fake_slack.add_user(actor.user_id, actor.email, name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)))
    with client.ApiClient(client.Configuration(host=apiserver.url)) as api:
        seed_kube(apiserver, api, "password-cr")
    env = {
        **live_env(sqlite_url, world, **NO_IAM),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake_slack.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0",
        "KFBOT_HEALTH_PORT": "0",
    }
    settings = tune_for_tests(Settings.from_env(env))
    migrating = composition.build_backend(settings)
    migrating.migrate()
    migrating.close()
    running = composition.start_slack(settings, port=0)
    try:
        created = REQUEST_ID.search(slash(running, fake_slack, "workspace new team-a", user=ALICE.user_id))
        assert created is not None
        click(running, fake_slack, card_for(fake_slack, created.group(0)), blocks.APPROVE, user=ADMIN.user_id)
        wait_state(running, created.group(0), RequestState.SUCCEEDED)

        reply = slash(running, fake_slack, f"share team-a {CAROL.email}", user=ALICE.user_id, name="share")
        shared = REQUEST_ID.search(reply)
        assert shared is not None, reply
        wait_state(running, shared.group(0), RequestState.SUCCEEDED)
        carol_dm = fake_slack.dm_channel(CAROL.user_id)

        def dm_with_button(after: int) -> dict[str, Any] | None:
            found = [m for m in fake_slack.messages_in(carol_dm) if button(m, blocks.SET_PASSWORD)]
            return found[after] if len(found) > after else None

        dm = wait_until(lambda: dm_with_button(0), "Carol's DM with Set my password")
        assert "login was made for you" in dm["text"] and "team-a" in dm["text"]
        # Alice, who asked, gets no password button of Carol's.
        alice_dm = fake_slack.dm_channel(ALICE.user_id)
        assert not [m for m in fake_slack.messages_in(alice_dm) if shared.group(0) in m.get("text", "")
                    and button(m, blocks.SET_PASSWORD)]
        name = dex_password_object_name(CAROL.email)
        unusable = apiserver.get(*DEX_PASSWORDS, name, DEX_NAMESPACE)
        assert unusable is not None

        assert click(running, fake_slack, dm, blocks.SET_PASSWORD, user=CAROL.user_id, name="press") == 200
        view = wait_until(lambda: fake_slack.calls_to("views.update"), "the modal's update")[-1]["view"]
        match = re.search(r"```([A-Za-z0-9]{16,})```", json.dumps(view["blocks"]))
        assert match is not None
        password = match.group(1)
        stored = apiserver.get(*DEX_PASSWORDS, name, DEX_NAMESPACE)
        assert stored is not None and stored["hash"] != unusable["hash"]
        assert bcrypt.checkpw(password.encode(), base64.b64decode(stored["hash"]))

        # The admin's reset: Carol's DM gets the button again; the admin sees no password.
        reply = slash(running, fake_slack, f"password reset {CAROL.email}", user=ADMIN.user_id, name="reset")
        reset = REQUEST_ID.search(reply)
        assert reset is not None, reply
        wait_state(running, reset.group(0), RequestState.SUCCEEDED)
        again = wait_until(lambda: dm_with_button(1), "Carol's second DM with Set my password")
        assert "An admin let you set a new password" in again["text"]
    finally:
        running.stop()

    # The password was in exactly one Slack call (the update of Carol's modal), nowhere else.
    assert [c.method for c in fake_slack.calls if password in json.dumps(c.params)] == ["views.update"]
    assert password not in json.dumps(fake_slack.responses)
    assert password not in caplog.text and password not in dump_database(sqlite_url)
