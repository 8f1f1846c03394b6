"""``login.remove`` (issue 12, Offboarding): an adopted Dex login leaves only with another admin's
approval, and offboarding files that request for a departed owner.

On the live composition (fake apiserver + moto) seeded by ``tests.fakes.runbook`` in ``password-cr``
(a ``passwords.dex.coreos.com`` object) and ``configmap`` (an inline-hash ``staticPasswords`` entry)
modes, adopted, plus a second hand-made login that nothing names: the removal takes exactly the
departed owner's login, in the shape adoption recorded, and forgets its record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import pytest
import yaml

from handlers import errors, kinds, services
from handlers.kinds.base import UpdateWorkspaceObjects
from handlers.model import SYSTEM, Actor, RequestState
from handlers.naming import dex_password_object_name
from handlers.offboard import SlackAnswer, offboard
from handlers.plan import JSON
from handlers.ports import WorkspaceFacts
from provisioning.aws import AwsActions
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.facts import StaticFacts
from tests.fakes.runbook import (
    RUNBOOK_ENV,
    RunbookWorkspace,
    _contributor,
    _dex_login,
    seed_runbook_workspace,
)
from tests.live_harness import (
    ADMIN,
    ADMIN2,
    DEX_NAMESPACE,
    AwsWorld,
    LiveStack,
    dex_secret_data,
    dex_static_passwords,
    live_stack,
    seed_aws,
)
from tests.test_kinds import RUNBOOK

BYSTANDER = "bystander@example.com"
"""A login made by hand that no workspace records: never the bot's to remove."""
Seeded = tuple[LiveStack, RunbookWorkspace]
RUNBOOK_AT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture(params=["password-cr", "configmap"])
def runbook(request: pytest.FixtureRequest, sqlite_url: str, apiserver: FakeApiServer,
            world: AwsWorld) -> Iterator[Seeded]:
    mode = str(request.param)
    with live_stack(sqlite_url, apiserver, world, dex_mode=mode, env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode=mode)
        _dex_login(apiserver, mode, BYSTANDER, hash_from_env=False)
        done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
        assert done.state is RequestState.SUCCEEDED, done.error
        yield stack, made


def _logins(stack: LiveStack, mode: str) -> set[str]:
    """The emails Dex has a login for, read back as Dex reads them."""
    if mode == "password-cr":
        return {str(o["email"]) for o in stack.apiserver.list("dex.coreos.com/v1", "passwords")}
    cm = stack.apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
    assert cm is not None
    entries = yaml.safe_load(cm["data"]["config.yaml"]).get("staticPasswords") or []
    return {str(e["email"]) for e in entries}


def _recorded(stack: LiveStack, user: str) -> list[str]:
    return [w.name for w in stack.backend.workspaces() if f"DexUser/{user}" in w.created]


def _settle(stack: LiveStack, rounds: int = 40) -> None:
    """Run the engine and the sweeper until nothing is approved or applying (a configmap-mode Dex
    step waits for the one restart its timer asks for), a fake second a round."""
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


def _offboard(stack: LiveStack, user: str) -> tuple[str, ...]:
    (person,) = [p for p in stack.backend.people() if p.user == user]
    return offboard(stack.core, person, SlackAnswer(by_id=True, slack_id="ULEGACY", deleted=True)).filed


def test_a_departed_owners_adopted_login_is_removed_only_with_another_admin(runbook: Seeded) -> None:
    stack, made = runbook
    owner = made.owner
    assert _recorded(stack, owner) == [made.namespace]

    # While they own the workspace, an admin's own request is refused with the reason.
    with pytest.raises(errors.InvalidInput, match=f"still owns `{made.namespace}`"):
        stack.submit(ADMIN, f"login remove {owner}")

    filed = [stack.request(rid) for rid in _offboard(stack, owner)]
    assert sorted(r.kind for r in filed) == [kinds.LoginRemove.KIND, kinds.WorkspaceTransfer.KIND]
    (removal,) = [r for r in filed if r.kind == kinds.LoginRemove.KIND]
    (transfer,) = [r for r in filed if r.kind == kinds.WorkspaceTransfer.KIND]
    assert removal.requester_id == SYSTEM.user_id and removal.state is RequestState.PENDING
    assert removal.plan.steps == ()  # nothing to remove while they still own the workspace
    assert _offboard(stack, owner) == ()  # a second run files nothing twice

    # The person the login belongs to never decides it, even as an admin.
    as_admin = Actor("ULEGACY", owner, is_admin=True)
    with pytest.raises(errors.Forbidden):
        services.decide(stack.core, as_admin, removal.id, approve=True, decision_key="self")

    stack.approve(transfer.id, ADMIN)
    _settle(stack)
    assert stack.request(transfer.id).state is RequestState.SUCCEEDED
    before = _logins(stack, made.dex_mode)
    assert {owner, BYSTANDER} <= before

    # Approved once their access is gone: the re-plan at apply finds the removal, which an admin
    # approves again having seen it.
    stack.approve(removal.id, ADMIN)
    _settle(stack)
    replanned = stack.request(removal.id)
    assert replanned.state is RequestState.PENDING
    (step,) = replanned.plan.steps
    assert (step.action, step.key) == ("dex.user.remove", f"{made.namespace}:DexUser/{owner}")
    assert step.params["adopted"] is True and step.params["email"] == owner
    if made.dex_mode == "configmap":
        assert step.params["static_entry"] == "hash" and "inline hash" in step.summary
    assert _logins(stack, made.dex_mode) == before  # nothing moved before the second approval

    stack.approve(removal.id, ADMIN2)
    _settle(stack)
    done = stack.request(removal.id)
    assert done.state is RequestState.SUCCEEDED, done.error
    assert _logins(stack, made.dex_mode) == before - {owner}
    if made.dex_mode == "password-cr":
        assert stack.apiserver.get("dex.coreos.com/v1", "passwords", dex_password_object_name(owner),
                                   DEX_NAMESPACE) is None
    assert _recorded(stack, owner) == []
    (record,) = stack.backend.workspaces()
    assert record.owner != owner and f"Profile/{made.namespace}" in record.created  # the rest stays


def _hand_made_profile(stack: LiveStack, name: str, owner: str) -> None:
    """A Profile made in the dashboard or with kubectl: ``/kf workspace scan`` lists it, the bot's
    record does not."""
    stack.apiserver.create({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name},
                            "spec": {"owner": {"kind": "User", "name": owner}}})


def test_a_login_is_kept_while_its_holder_owns_a_profile_the_bot_does_not_manage(runbook: Seeded) -> None:
    """The login opens every Profile its holder owns, managed or not: after the adopted workspace
    is transferred away, removing the login is refused while they own hand-made `other-ws`, at
    plan time with the reason, and again when an approved removal re-plans at apply."""
    stack, made = runbook
    owner = made.owner
    filed = [stack.request(rid) for rid in _offboard(stack, owner)]
    (removal,) = [r for r in filed if r.kind == kinds.LoginRemove.KIND]
    (transfer,) = [r for r in filed if r.kind == kinds.WorkspaceTransfer.KIND]
    stack.approve(transfer.id, ADMIN)
    _settle(stack)
    assert stack.request(transfer.id).state is RequestState.SUCCEEDED
    stack.approve(removal.id, ADMIN)
    _settle(stack)
    assert [s.action for s in stack.request(removal.id).plan.steps] == ["dex.user.remove"]

    # The hand-made Profile appears while the removal waits for its second admin.
    _hand_made_profile(stack, "aic-ns-other-ws", owner)
    with pytest.raises(errors.InvalidInput, match="the owner of Profile `aic-ns-other-ws`"):
        services.build_plan(stack.core, kinds.LoginRemove(owner), "RPREVIEW")  # an admin's own ask
    stack.approve(removal.id, ADMIN2)
    _settle(stack)
    replanned = stack.request(removal.id)
    assert replanned.state is RequestState.PENDING and replanned.plan.steps == (), replanned
    warnings = replanned.plan.warnings
    assert any("the owner of Profile `aic-ns-other-ws`" in w for w in warnings), warnings
    assert owner in _logins(stack, made.dex_mode)


def test_delete_adopted_keeps_the_login_of_a_contributor_of_a_profile_the_bot_does_not_manage(
    runbook: Seeded,
) -> None:
    """``--delete-adopted`` takes the adopted login only when nobody uses it: the owner is a KFAM
    contributor (Manage Contributors) of hand-made `team-x`, so it stays and the plan says why."""
    stack, made = runbook
    _hand_made_profile(stack, "team-x", "carol@example.com")
    _contributor(stack.apiserver, "team-x", made.owner)
    delete = stack.submit(
        ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace} --delete-adopted"
    )
    assert "dex.user.remove" not in [s.action for s in delete.plan.steps], delete.plan.steps
    assert any("is kept" in w and "`team-x`" in w for w in delete.plan.warnings), delete.plan.warnings
    stack.approve(delete.id, ADMIN2)
    _settle(stack)
    assert stack.request(delete.id).state is RequestState.SUCCEEDED, stack.request(delete.id).error
    assert made.owner in _logins(stack, made.dex_mode)


@pytest.mark.parametrize("mode", ["password-cr", "configmap"])
def test_delete_adopted_keeps_a_login_whose_holder_became_a_contributor_while_it_applied(
    mode: str, sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan and its re-plan at apply find the login unused, but the Dex step runs after the
    nodegroup is deleted (minutes on EKS): a contributor the dashboard adds meanwhile keeps it. The
    request still succeeds, and its step says the login was kept and why (as a bucket that came to
    hold data is kept)."""
    removing = AwsActions._remove_nodegroup

    added: list[str] = []

    def while_draining(actions: AwsActions, params: Any) -> Any:
        if not added:  # Manage Contributors, mid-apply (a retried step adds it once)
            added.append(_contributor(apiserver, "team-x", made.owner))
        return removing(actions, params)

    monkeypatch.setattr(AwsActions, "_remove_nodegroup", while_draining)  # before the stack binds it
    with live_stack(sqlite_url, apiserver, world, dex_mode=mode, env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode=mode)
        adopted = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
        assert adopted.state is RequestState.SUCCEEDED, adopted.error
        _hand_made_profile(stack, "team-x", "carol@example.com")
        delete = stack.submit(
            ADMIN, f"workspace delete {made.namespace} --confirm {made.namespace} --delete-adopted"
        )
        assert "dex.user.remove" in [s.action for s in delete.plan.steps], delete.plan.steps
        stack.approve(delete.id, ADMIN2)
        _settle(stack)
        assert stack.request(delete.id).state is RequestState.SUCCEEDED, stack.request(delete.id).error
        assert made.owner in _logins(stack, mode)
        assert f"Dex login `{made.owner}`" in stack.backend.kept_by_steps(delete.id)


def test_setting_a_password_never_changes_another_login_sharing_its_secret_key(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> None:
    """The runbook pointed two ``staticPasswords`` entries (the owner's and helper's) at one
    ``hashFromEnv`` Secret key. The owner's "Set my password" gives the owner's entry a key of its
    own: the new password opens the owner's login only, helper's hash is untouched."""
    with live_stack(sqlite_url, apiserver, world, dex_mode="configmap", env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode="configmap", hash_from_env=True)
        cm = apiserver.get("v1", "configmaps", "dex", DEX_NAMESPACE)
        assert cm is not None
        config = yaml.safe_load(cm["data"]["config.yaml"])
        (shared,) = [e["hashFromEnv"] for e in config["staticPasswords"] if e["email"] == made.owner]
        config["staticPasswords"].append({"email": BYSTANDER, "username": "bystander", "userID": "b-2",
                                          "hashFromEnv": shared})
        cm["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
        apiserver.seed(cm)
        done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
        assert done.state is RequestState.SUCCEEDED, done.error
        before = dex_secret_data(apiserver)[shared]
        # An admin's reset says so on its card before anyone presses anything.
        reset = services.build_plan(stack.core, kinds.PasswordResetFor(made.owner), "RPREVIEW")
        assert any(f"shares Secret key `{shared}` with {BYSTANDER}" in w for w in reset.warnings), reset

        password = services.reveal_password(stack.core, Actor("ULEGACY", made.owner)).value
        entries = {e["email"]: e for e in dex_static_passwords(apiserver)}
        data = dex_secret_data(apiserver)
        assert entries[BYSTANDER]["hashFromEnv"] == shared and data[shared] == before
        own = entries[made.owner]["hashFromEnv"]
        assert own != shared
        assert bcrypt.checkpw(password.encode(), data[own].replace("$2y$", "$2b$").encode())
        assert not bcrypt.checkpw(password.encode(), data[shared].replace("$2y$", "$2b$").encode())


def test_setting_a_password_on_kubeflow_1_7_keeps_the_inline_hash_where_dex_reads_it(
    sqlite_url: str, apiserver: FakeApiServer, world: AwsWorld
) -> None:
    """Kubeflow 1.7/1.8: inline hashes and a Dex Deployment that loads no Secret of ours. The
    owner's "Set my password" writes the new hash inline in the owner's entry (an entry moved to
    `hashFromEnv` would have no hash and Dex would not start); the password opens that login."""
    with live_stack(sqlite_url, apiserver, world, dex_mode="configmap", env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode="configmap", hash_from_env=False)
        deployment = apiserver.get("apps/v1", "deployments", "dex", DEX_NAMESPACE)
        assert deployment is not None
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            container.pop("envFrom", None)
        apiserver.seed(deployment)
        done = stack.apply(ADMIN, f"workspace adopt {made.namespace}", approver=ADMIN2)
        assert done.state is RequestState.SUCCEEDED, done.error
        secret_before = dex_secret_data(apiserver)

        password = services.reveal_password(stack.core, Actor("ULEGACY", made.owner)).value

        (entry,) = [e for e in dex_static_passwords(apiserver) if e["email"] == made.owner]
        assert "hashFromEnv" not in entry
        assert bcrypt.checkpw(password.encode(), entry["hash"].replace("$2y$", "$2b$").encode())
        assert dex_secret_data(apiserver) == secret_before


@pytest.mark.parametrize("runbook", ["configmap"], indirect=True)  # who may ask is not a Dex matter
def test_only_admins_ask_and_only_for_logins_the_bot_made_or_adopted(runbook: Seeded) -> None:
    stack, made = runbook
    helper = Actor("UHELPER", made.contributor)
    with pytest.raises(errors.Forbidden):
        stack.submit(helper, f"login remove {made.owner}")
    owner = Actor("ULEGACY", made.owner)
    with pytest.raises(errors.Forbidden):
        stack.submit(owner, f"login remove {made.owner}")
    with pytest.raises(errors.InvalidInput, match="neither made nor adopted"):
        stack.submit(ADMIN, f"login remove {BYSTANDER}")
    with pytest.raises(errors.InvalidInput, match="neither made nor adopted"):
        stack.submit(ADMIN, f"login remove {made.contributor}")  # adopted as a grant, no login record
    assert _logins(stack, made.dex_mode) >= {made.owner, BYSTANDER}


# -- the plan (pure) --------------------------------------------------------------------------------


def _legacy(owner: str, entry: dict[str, JSON]) -> StaticFacts:
    ws = WorkspaceFacts("legacy", "legacy", owner, created={"DexUser/gone@example.com": entry}, pvcs=0)
    return StaticFacts(workspaces={ws.name: ws})


ADOPTED_NO_SHAPE: dict[str, JSON] = {
    "action": "dex.user", "adopted": True, "params": {"email": "gone@example.com", "mode": "configmap"},
}
MADE: dict[str, JSON] = {"action": "dex.user", "params": {"email": "gone@example.com", "mode": "password-cr"}}


@pytest.mark.parametrize(
    ("facts", "mode", "refusal"),
    [
        (_legacy("carol@example.com", MADE), "external", "upstream identity provider"),
        (_legacy("carol@example.com", ADOPTED_NO_SHAPE), "configmap", "did not record the shape"),
        (_legacy("gone@example.com", MADE), "password-cr", "still owns `legacy`"),
        (StaticFacts(), "password-cr", "neither made nor adopted"),
    ],
)
def test_the_plan_refuses_with_the_reason(facts: StaticFacts, mode: str, refusal: str) -> None:
    settings = dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, dex_mode=mode))
    with pytest.raises(errors.InvalidInput, match=refusal):
        kinds.LoginRemove("Gone@Example.com").plan(kinds.PlanContext(settings, facts, "R1"))


def test_a_made_login_left_without_access_is_removed_as_the_bots_own() -> None:
    plan = kinds.LoginRemove("gone@example.com").plan(
        kinds.PlanContext(RUNBOOK, _legacy("carol@example.com", MADE), "R1")
    )
    (step,) = plan.steps
    assert step.key == "legacy:DexUser/gone@example.com" and "adopted" not in step.params
    applied = kinds.Applied("R1", "UADMIN001", plan, {0: None}, RUNBOOK_AT)
    (change,) = kinds.LoginRemove("gone@example.com").on_success(applied).changes
    assert change == UpdateWorkspaceObjects("legacy", remove=("DexUser/gone@example.com",))
