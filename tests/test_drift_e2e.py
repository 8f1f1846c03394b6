"""Drift (issue 12) end to end: the live backend against the fake apiserver (Profiles and
AuthorizationPolicies validated against the real CRDs) and moto, the report posted into the fake
Slack. A workspace is made the real way (``tests.test_sharing_quota_tokens_e2e``'s world); then hands
edit the cluster as people do: a contributor added the way the dashboard's Manage Contributors
(KFAM) adds one, the Profile's quota edited, a bucket left tagged for a workspace that is gone."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk import WebClient

from bot import app as composition
from bot import blocks
from bot.digest import DigestSchedule
from bot.drift import DRIFT_REF, DRIFT_TIMER, DriftDesk
from bot.settings import Settings
from handlers import drift, errors, kinds, services
from handlers.model import SYSTEM, Actor, RequestState
from handlers.naming import dex_password_object_name, kfam_binding_name
from handlers.settings import CoreSettings, PolicySettings
from provisioning.aws import BOT_SID
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.clock import FakeClock
from tests.fakes.runbook import RUNBOOK_ENV, seed_runbook_workspace
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, post_signed, slash_command_body
from tests.live_harness import ADMIN as H_ADMIN
from tests.live_harness import ADMIN2 as H_ADMIN2
from tests.live_harness import ALICE as H_ALICE
from tests.live_harness import BOB as H_BOB
from tests.live_harness import DEX_NAMESPACE, aws_client, default_document, live_stack, seed_aws
from tests.test_sharing_quota_tokens_e2e import (  # noqa: F401 (fixtures)
    _ID,
    ADMIN,
    ADMIN_CHANNEL,
    ALICE,
    BOB,
    ISTIO,
    NS,
    RBAC,
    RBAC_V1,
    Live,
    LiveFactory,
    _click,
    _kubeconfig,
    _slash,
    _state,
    core_settings,
    make_live,
    restore_logging,
)

ADMIN2 = Actor("U0ADMIN02", "admin2@example.com", is_admin=True)
EVE = "eve@example.com"
ORPHAN = "s3-an2-aic-dev-gone"


@pytest.fixture
def world(make_live: LiveFactory, aws: AwsEnv) -> Live:  # noqa: F811 (the imported fixture)
    aws.client("eks").create_cluster(
        name="kubeflow", roleArn="arn:aws:iam::123456789012:role/eks",
        resourcesVpcConfig={"subnetIds": ["subnet-a", "subnet-b"]},
    )
    base = core_settings()
    core = dataclasses.replace(
        base, policy=PolicySettings(admin_users=frozenset({ADMIN.user_id, ADMIN2.user_id}))
    )
    live = make_live(core=core)
    live.slack.add_user(ADMIN2.user_id, ADMIN2.email)
    return live


def desk(live: Live, schedule: str | None = "0 9 * * mon") -> DriftDesk:
    client = WebClient(token=BOT_TOKEN, base_url=live.slack.base_url)
    return DriftDesk(
        live.backend, client, ADMIN_CHANNEL, live.core, lambda email: None, live.clock,
        DigestSchedule(schedule, "UTC") if schedule else None,
    )


def post(live: Live, path: str, obj: dict[str, Any]) -> None:
    code, answer, _ = live.api.handle("POST", path, "application/json", json.dumps(obj).encode())
    assert code == 201, answer


def add_contributor_by_hand(live: Live, user: str, role: str = "edit") -> None:
    """What KFAM writes for the dashboard's Manage Contributors: a RoleBinding and an
    AuthorizationPolicy named ``user-<email folded>-clusterrole-<role>``, annotated user/role."""
    name = kfam_binding_name(user, role)
    notes = {"user": user, "role": role}
    post(live, f"/apis/{RBAC_V1}/namespaces/{NS}/rolebindings", {
        "apiVersion": RBAC_V1, "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": NS, "annotations": notes},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": f"kubeflow-{role}"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": user}],
    })
    post(live, f"/apis/{ISTIO}/namespaces/{NS}/authorizationpolicies", {
        "apiVersion": ISTIO, "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": NS, "annotations": notes},
        "spec": {"rules": [{"when": [{"key": "request.headers[kubeflow-userid]", "values": [user]}]}]},
    })


def orphan_bucket(aws: AwsEnv, workspace: str = "gone") -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=ORPHAN)
    tags = {"kf-chatops/workspace": workspace, "app.kubernetes.io/managed-by": "kf-chatops",
            "kf-chatops/request": "R-GONE"}  # as the bot's create for `gone` marked it
    tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
    s3.put_bucket_tagging(Bucket=ORPHAN, Tagging={"TagSet": tag_set})


def bucket_exists(aws: AwsEnv, name: str) -> bool:
    try:
        aws.client("s3").head_bucket(Bucket=name)
    except ClientError:
        return False
    return True


def items(live: Live) -> dict[str, drift.DriftItem]:
    return {i.key: i for i in drift.find(live.backend.drift_inventory())}


def value_of(live: Live, key: str) -> str:
    """The button value the report shows now for ``key`` (the key and a digest of the line)."""
    return items(live)[key].value


def hand_edits(live: Live, aws: AwsEnv) -> tuple[str, str, str]:
    assert live.hard()["cpu"] != "99"
    add_contributor_by_hand(live, EVE)
    live.patch_profile_by_hand({"cpu": "99"})
    orphan_bucket(aws)
    return f"contributor-added:{NS}:{EVE}", f"quota:{NS}", f"orphan-bucket:{ORPHAN}"


def test_a_workspace_as_the_bot_made_it_has_no_drift(world: Live) -> None:
    assert items(world) == {}
    assert "No drift" in world.text_for(ADMIN, "drift")


def test_drift_finds_the_hand_edits_and_each_button_does_what_it_says(world: Live, aws: AwsEnv) -> None:
    original_cpu = world.hard()["cpu"]
    contributor, quota, orphan = hand_edits(world, aws)
    found = items(world)
    # The bot's own bucket (tagged for the live workspace) is no orphan.
    assert set(found) == {contributor, quota, orphan}, found
    assert found[quota].data["hard"] == {"cpu": "99"}
    assert found[quota].data["recorded"] == {"cpu": original_cpu}
    assert found[contributor].data == {"user": EVE, "role": "edit"}
    d = desk(world)

    # Adopt into the record: an admin who does not benefit; the registry follows the cluster, as a
    # system decision naming the admin, and the cluster is not touched.
    with pytest.raises(errors.Forbidden):
        d.click(drift.ADOPT, found[contributor].value, ALICE, "k-alice")  # the owner benefits, no admin
    adopted = d.click(drift.ADOPT, found[contributor].value, ADMIN, "k-adopt")
    assert adopted.request.requester_id == SYSTEM.user_id and adopted.request.plan.steps == ()
    world.run()
    assert world.request(adopted.request.id).state is RequestState.SUCCEEDED
    assert world.grants()[EVE].role == "edit"
    approval = next(e for e in world.audit()
                    if e["request_id"] == adopted.request.id and e["type"] == "request.auto_approved")
    assert approval["data"]["rule"] == "system:drift.adopt" and ADMIN.user_id in approval["data"]["trigger"]
    assert contributor not in items(world)
    # The adopted grant is a recorded grant: the owner's facts accept it (no Inconsistent).
    assert world.backend.facts.workspace(NS) is not None

    # Restore the quota as the owner: a normal quota request (the owner lowering it applies at once).
    restored = d.click(drift.RESTORE, found[quota].value, ALICE, "k-restore")
    assert restored.request.kind == kinds.QuotaChange.KIND and restored.request.requester_id == ALICE.user_id
    world.run()
    assert world.request(restored.request.id).state is RequestState.SUCCEEDED
    assert world.hard()["cpu"] == original_cpu
    assert quota not in items(world)

    # Clean up the orphan bucket: only admins see it; an admin files it, another admin approves.
    with pytest.raises(errors.NotFound):
        d.click(drift.CLEAN_UP, found[orphan].value, ALICE, "k-alice-clean")
    cleanup = d.click(drift.CLEAN_UP, found[orphan].value, ADMIN, "k-clean")
    assert cleanup.request.kind == kinds.DriftCleanup.KIND and cleanup.request.state is RequestState.PENDING
    world.run()
    assert bucket_exists(aws, ORPHAN)  # nothing changes before an approval
    with pytest.raises(errors.Forbidden):
        world.approve(cleanup.request.id)  # ADMIN filed it: the requester never decides
    services.decide(world.core, ADMIN2, cleanup.request.id, approve=True, decision_key="t:clean")
    world.run()
    assert world.request(cleanup.request.id).state is RequestState.SUCCEEDED
    assert not bucket_exists(aws, ORPHAN)
    assert items(world) == {}


def test_buttons_refuse_forged_values_stale_drift_and_admins_who_benefit(world: Live, aws: AwsEnv) -> None:
    original_cpu = world.hard()["cpu"]
    contributor, quota, orphan = hand_edits(world, aws)
    d = desk(world)
    found = items(world)
    before = world.request_count()
    seen = "#" + "0" * 16
    forged = [
        (drift.ADOPT, f"contributor-added:{NS}:mallory@example.com{seen}", errors.NotFound),  # no drift
        (drift.ADOPT, f"contributor-added:other-ws:x@example.com{seen}", errors.NotFound),
        (drift.ADOPT, contributor + seen, errors.NotFound),  # a drift, not the values its line showed
        (drift.ADOPT, contributor, errors.InvalidInput),  # a bare key: an old report's button
        (drift.RESTORE, "'; DROP TABLE requests; --", errors.InvalidInput),
        (drift.RESTORE, "quota:" + "a" * 400 + seen, errors.InvalidInput),
        (drift.CLEAN_UP, found[contributor].value, errors.InvalidInput),  # not this drift's button
        (drift.ADOPT, found[orphan].value, errors.InvalidInput),
        (drift.CLEAN_UP, f"orphan-bucket:{NS}-bucket-of-a-live-workspace{seen}", errors.NotFound),
    ]
    for action, value, error in forged:
        with pytest.raises(error):
            d.click(action, value, ADMIN, f"k-{action}-{len(value)}")
    # A stranger sees none of it, and the owner sees only their workspace's drift.
    with pytest.raises(errors.NotFound):
        d.click(drift.RESTORE, found[quota].value, BOB, "k-bob")
    assert "No drift" in world.text_for(BOB, "drift")
    alice_sees = world.text_for(ALICE, "drift")
    assert "eve@example.com" in alice_sees and ORPHAN not in alice_sees
    assert ORPHAN in world.text_for(ADMIN, "drift")
    # A drift fixed meanwhile: the button finds nothing to act on.
    world.patch_profile_by_hand({"cpu": original_cpu})
    with pytest.raises(errors.NotFound):
        d.click(drift.RESTORE, found[quota].value, ALICE, "k-stale")
    assert world.request_count() == before
    # An admin whose own access the drift is may not adopt it; another admin may.
    add_contributor_by_hand(world, ADMIN.email, "view")
    mine = f"contributor-added:{NS}:{ADMIN.email}"
    with pytest.raises(errors.Forbidden):
        d.click(drift.ADOPT, value_of(world, mine), ADMIN, "k-mine")
    assert world.request_count() == before
    d.click(drift.ADOPT, value_of(world, mine), ADMIN2, "k-other-admin")
    assert world.request_count() == before + 1
    world.run()

    # Adopting a hand-edited quota: the record takes the Profile's whole quota, nothing else moves.
    world.patch_profile_by_hand({"cpu": "77"})
    cluster = world.hard()
    adopted = d.click(drift.ADOPT, value_of(world, quota), ADMIN2, "k-adopt-quota")
    world.run()
    assert world.request(adopted.request.id).state is RequestState.SUCCEEDED
    assert world.hard() == cluster
    assert quota not in items(world)
    assert set(items(world)) == {orphan, contributor}  # every other resource is recorded as before


def test_the_report_is_edited_not_reposted(world: Live, aws: AwsEnv) -> None:
    add_contributor_by_hand(world, EVE)
    d = desk(world)
    d.keep_scheduled()
    with world.backend.db.uow() as uow:
        assert uow.work.pending_due(DRIFT_TIMER, DRIFT_REF) is not None
    posts_before = len(world.slack.messages_in(ADMIN_CHANNEL))
    d.handle("someone-else", {"channel": "CEVIL"})  # a forged row: refused, nothing posted
    assert len(world.slack.messages_in(ADMIN_CHANNEL)) == posts_before
    d.handle(DRIFT_REF, {"channel": "CEVIL"})  # the payload is never read
    assert world.slack.messages_in("CEVIL") == []
    reports = [m for m in world.slack.messages_in(ADMIN_CHANNEL) if "Drift" in str(m.get("text"))]
    assert len(reports) == 1 and len(world.slack.messages_in(ADMIN_CHANNEL)) == posts_before + 1
    assert EVE in json.dumps(reports[0].get("blocks"))
    assert d.publish() is None  # nothing changed: not even an edit
    world.patch_profile_by_hand({"cpu": "99"})
    assert d.publish() == "edited"
    reports = [m for m in world.slack.messages_in(ADMIN_CHANNEL) if "Drift" in str(m.get("text"))]
    assert len(reports) == 1 and "99" in json.dumps(reports[0].get("blocks"))
    assert len(world.slack.messages_in(ADMIN_CHANNEL)) == posts_before + 1

    # Restore a hand-added contributor: the owner's unshare (applies at once), both halves gone.
    eve = value_of(world, f"contributor-added:{NS}:{EVE}")
    restored = d.click(drift.RESTORE, eve, ALICE, "k-restore-eve")
    assert restored.request.kind == kinds.Unshare.KIND and restored.request.requester_id == ALICE.user_id
    world.run()
    assert world.request(restored.request.id).state is RequestState.SUCCEEDED
    name = kfam_binding_name(EVE, "edit")
    assert world.binding(name) is None and world.policy(name) is None
    assert d.publish() == "edited"
    reports = [m for m in world.slack.messages_in(ADMIN_CHANNEL) if "Drift" in str(m.get("text"))]
    assert len(reports) == 1 and EVE not in json.dumps(reports[0].get("blocks"))


def _seen(recorded: drift.Scaling, live: drift.Scaling) -> drift.DriftInventory:
    ws = drift.WorkspaceSeen(
        "team-a", "team-a", "alice@example.com", {}, {}, {}, {},
        (drift.RecordedNodegroup("Nodegroup/k/ng", "ng", recorded, live),),
    )
    return drift.DriftInventory(datetime(2026, 12, 5, tzinfo=UTC), (ws,))


@settings(max_examples=60, deadline=None)
@given(
    bounds=st.tuples(st.integers(0, 5), st.integers(0, 5)).map(sorted),
    live=st.tuples(st.integers(0, 5), st.integers(0, 5)).map(sorted),
    desired=st.integers(0, 10),
)
def test_only_the_bounds_are_drift_never_the_desired_size(
    bounds: list[int], live: list[int], desired: int
) -> None:
    found = drift.find(_seen(drift.Scaling(*bounds, 2), drift.Scaling(*live, desired)))
    assert len(found) == (0 if bounds == live else 1)
    assert all(i.data["min_size"] == live[0] and i.data["max_size"] == live[1] for i in found)


def test_desired_size_changes_are_not_drift_bounds_are() -> None:
    recorded = drift.Scaling(1, 4, 2)
    (item,) = drift.find(_seen(recorded, drift.Scaling(0, 4, 3)))
    assert item.what is drift.What.SCALING and item.actions == (drift.ADOPT, drift.RESTORE)
    (item,) = drift.find(_seen(recorded, drift.Scaling(1, 8, 1)))
    restore = drift.restore_request(item)
    assert isinstance(restore, kinds.WorkspaceResize) and (restore.nodes_min, restore.nodes_max) == (1, 4)
    adopt = drift.adopt_request(item, ADMIN2, CoreSettings())
    assert (adopt.min_size, adopt.max_size, adopt.step) == (1, 8, "Nodegroup/k/ng")


def test_through_the_slack_edge_kf_drift_shows_buttons_and_a_click_adopts(
    apiserver: FakeApiServer,
    aws: AwsEnv,
    fake_slack: FakeSlack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,  # noqa: F811 (the imported fixture)
) -> None:
    """The real composition over signed HTTP: ``/kf drift`` answers with the report's buttons, the
    weekly timer is pending, and an Adopt click (a recorded, acked click) adopts the grant."""
    for actor in (ALICE, ADMIN, ADMIN2):
        fake_slack.add_user(actor.user_id, actor.email)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", apiserver.url)))
    settings = Settings.from_env({
        "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake_slack.base_url, "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": f"{ADMIN.user_id},{ADMIN2.user_id}",
        "KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}",
        "KFBOT_AUDIT_KEY": "test-audit-key-0123456789abcdef", "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0", "KFBOT_HEALTH_PORT": "0", "KFBOT_WORKER_ID": "drift-edge-test",
        "KFBOT_PROVISIONER": "live", "KFBOT_DEX_MODE": "external",
        "KFBOT_KUBE_API_URL": "https://api.example:6443", "KFBOT_DRIFT_REPORT": "0 9 * * mon",
        "KFBOT_NODEGROUP_SUBNETS": "subnet-0a1b2c3d",
        "KFBOT_NODE_ROLE_ARN": "arn:aws:iam::123456789012:role/kf-nodes",
    })
    engine = dataclasses.replace(settings.provisioning.engine, poll_interval=0.05)
    provisioning = dataclasses.replace(settings.provisioning, engine=engine)
    settings = dataclasses.replace(settings, provisioning=provisioning)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    apiserver.clock = clock.now
    backend = composition.build_backend(settings)
    backend.migrate()
    backend.close()
    bot = composition.start_slack(settings, clock=clock, port=0)
    try:
        create = _ID.search(_slash(bot, fake_slack, ALICE, f"workspace new {NS}", "create"))
        assert create is not None
        rid = create.group(0)
        card = fake_slack.wait_for(
            lambda: next((m for m in fake_slack.messages_in(ADMIN_CHANNEL) if rid in m["text"]), None), 15.0
        )
        _click(bot, fake_slack, ADMIN, card, blocks.APPROVE)
        _state(bot, create.group(0), RequestState.SUCCEEDED, fake_slack)
        hands = Live(bot.backend, None, clock, apiserver, fake_slack)  # type: ignore[arg-type]
        add_contributor_by_hand(hands, EVE)
        with bot.backend.db.uow() as uow:
            assert uow.work.pending_due(DRIFT_TIMER, DRIFT_REF) is not None  # the weekly report
        url = fake_slack.response_url("drift")
        body = slash_command_body("drift", user_id=ADMIN.user_id, response_url=url)
        assert post_signed(bot.url, body, SIGNING_SECRET)[0] == 200
        reply = fake_slack.wait_for(lambda: fake_slack.responses.get("drift"), 60.0)[0]
        assert EVE in json.dumps(reply["blocks"])
        report = {"channel": ADMIN_CHANNEL, "ts": "1700000000.000100", "blocks": reply["blocks"]}
        _click(bot, fake_slack, ADMIN2, report, drift.ADOPT)

        def adopted() -> bool:
            with bot.backend.db.uow() as uow:
                return EVE in {g.user for g in uow.registry.grants(NS)}

        fake_slack.wait_for(adopted, 60.0, "the grant to be adopted")
    finally:
        bot.stop()


def test_runbook_workspace_is_an_unknown_profile_and_nodegroup_bounds_moved_by_hand_are_drift(
    apiserver: FakeApiServer, aws: AwsEnv, sqlite_url: str
) -> None:
    """The runbook's hand-made workspace (tests/fakes/runbook.py) beside a bot-made GPU workspace:
    the Profile is one the bot does not know (no button: adopting it is ``/kf workspace adopt``),
    its untagged bucket and nodegroup are no orphans; the bot's nodegroup moved by the autoscaler
    (desired size) is no drift, its bounds moved by hand are, and Restore/Adopt act on them."""
    world = seed_aws(aws.url)
    with live_stack(sqlite_url, apiserver, world, env=RUNBOOK_ENV) as stack:
        made = seed_runbook_workspace(apiserver, world, dex_mode="password-cr")
        done = stack.apply(H_ALICE, "workspace new proj2 --gpu 1")
        assert done.state is RequestState.SUCCEEDED, done.error
        found = {i.key: i for i in drift.find(stack.backend.drift_inventory())}
        assert set(found) == {f"unknown-profile:{made.namespace}"}, found
        assert found[f"unknown-profile:{made.namespace}"].actions == ()

        (nodegroup,) = [
            str(e["params"]["name"]) for e in stack.backend.workspaces()[0].created.values()  # type: ignore[index]
            if e["action"] == "aws.nodegroup"
        ]
        eks = aws_client(world.endpoint_url, "eks")
        before = eks.describe_nodegroup(clusterName=world.cluster, nodegroupName=nodegroup)["nodegroup"]
        low, high = before["scalingConfig"]["minSize"], before["scalingConfig"]["maxSize"]
        eks.update_nodegroup_config(clusterName=world.cluster, nodegroupName=nodegroup,
                                    scalingConfig={"minSize": low, "maxSize": high, "desiredSize": high})
        assert [i.what for i in drift.find(stack.backend.drift_inventory())] == [drift.What.UNKNOWN_PROFILE]

        eks.update_nodegroup_config(clusterName=world.cluster, nodegroupName=nodegroup,
                                    scalingConfig={"minSize": low, "maxSize": high + 3, "desiredSize": high})
        desk_ = DriftDesk(stack.backend, WebClient(token=BOT_TOKEN), "CDRIFT", stack.core, lambda e: None,
                          stack.clock, None)
        key = f"scaling:proj2:{nodegroup}"
        restore = desk_.click(drift.RESTORE, now(stack, key), H_ADMIN, "k-restore-scaling")
        assert restore.request.kind == kinds.WorkspaceResize.KIND
        assert restore.request.state is RequestState.PENDING  # a resize waits for an admin
        stack.approve(restore.request.id, H_ADMIN2)
        stack.run()
        assert stack.request(restore.request.id).state is RequestState.SUCCEEDED
        after = eks.describe_nodegroup(clusterName=world.cluster, nodegroupName=nodegroup)["nodegroup"]
        assert (after["scalingConfig"]["minSize"], after["scalingConfig"]["maxSize"]) == (low, high)

        eks.update_nodegroup_config(clusterName=world.cluster, nodegroupName=nodegroup,
                                    scalingConfig={"minSize": low, "maxSize": high + 1, "desiredSize": low})
        adopted = desk_.click(drift.ADOPT, now(stack, key), H_ADMIN2, "k-adopt-scaling")
        stack.run()
        assert stack.request(adopted.request.id).state is RequestState.SUCCEEDED
        assert [i.what for i in drift.find(stack.backend.drift_inventory())] == [drift.What.UNKNOWN_PROFILE]

        # A bucket the bot's IAM statement still grants though no workspace records it (a delete
        # that stopped halfway): an orphan IAM grant; Clean up removes it from the bot's statement
        # only, leaving the runbook's statement (which grants the runbook bucket) alone.
        for arn in world.policy_arns:
            grant_in_bot_statement(world.endpoint_url, arn, "s3-an2-aic-dev-gone")
        orphan = "orphan-iam:s3-an2-aic-dev-gone"
        found = {i.key: i for i in drift.find(stack.backend.drift_inventory())}
        assert set(found) == {orphan, f"unknown-profile:{made.namespace}"}, found
        cleanup = desk_.click(drift.CLEAN_UP, found[orphan].value, H_ADMIN, "k-clean-iam")
        stack.approve(cleanup.request.id, H_ADMIN2)
        stack.run()
        assert stack.request(cleanup.request.id).state is RequestState.SUCCEEDED
        for arn in world.policy_arns:
            document = default_document(world.endpoint_url, arn)
            assert "s3-an2-aic-dev-gone" not in json.dumps(document)
            assert made.policy_sid in json.dumps(document)  # the runbook's own statement stays
        assert [i.what for i in drift.find(stack.backend.drift_inventory())] == [drift.What.UNKNOWN_PROFILE]


def now(stack: Any, key: str) -> str:
    return next(i.value for i in drift.find(stack.backend.drift_inventory()) if i.key == key)


def grant_in_bot_statement(endpoint_url: str, policy_arn: str, bucket: str) -> None:
    iam = aws_client(endpoint_url, "iam")
    document = default_document(endpoint_url, policy_arn)
    ours = next(s for s in document["Statement"] if s.get("Sid") == BOT_SID)
    resources = ours["Resource"] if isinstance(ours["Resource"], list) else [ours["Resource"]]
    ours["Resource"] = [*resources, f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    for old in iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]:
        if not old["IsDefaultVersion"]:
            iam.delete_policy_version(PolicyArn=policy_arn, VersionId=old["VersionId"])
    iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def test_a_dex_login_left_by_two_deleted_workspaces_is_an_orphan_cleaned_up(
    apiserver: FakeApiServer, aws: AwsEnv, sqlite_url: str
) -> None:
    """Workspace one makes Bob's login; workspace two finds it; deleting one keeps it (Bob owns
    two), deleting two leaves it (two did not make it): a login nobody uses, the bot's orphan."""
    world = seed_aws(aws.url)
    with live_stack(sqlite_url, apiserver, world, env=RUNBOOK_ENV) as stack:
        for name in ("one", "two"):
            assert stack.apply(H_ADMIN, f"workspace new {name} --owner {H_BOB.email}",
                               approver=H_ADMIN2).state is RequestState.SUCCEEDED
        for name in ("one", "two"):
            done = stack.apply(H_ADMIN, f"workspace delete {name} --confirm {name}", approver=H_ADMIN2)
            assert done.state is RequestState.SUCCEEDED, done.error
        key = f"orphan-dex:{H_BOB.email}"
        login = ("dex.coreos.com/v1", "passwords", dex_password_object_name(H_BOB.email), DEX_NAMESPACE)
        assert apiserver.get(*login) is not None
        found = {i.key: i for i in drift.find(stack.backend.drift_inventory())}
        assert key in found and found[key].actions == (drift.CLEAN_UP,), found
        desk_ = DriftDesk(stack.backend, WebClient(token=BOT_TOKEN), "CDRIFT", stack.core, lambda e: None,
                          stack.clock, None)
        cleanup = desk_.click(drift.CLEAN_UP, found[key].value, H_ADMIN, "k-clean-dex")
        stack.approve(cleanup.request.id, H_ADMIN2)
        stack.run()
        assert stack.request(cleanup.request.id).state is RequestState.SUCCEEDED
        assert key not in {i.key for i in drift.find(stack.backend.drift_inventory())}
        assert apiserver.get(*login) is None
