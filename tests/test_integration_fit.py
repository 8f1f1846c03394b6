"""Where the features merged together (#12, #13) meet: each command answers once, the shell says
what it cannot do, docs and the chart know every setting, every kind reads in words."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bot import render
from bot.app import Running
from handlers import kinds, policy
from handlers.actions import ActionName
from handlers.kinds import workspace_delete
from handlers.kinds.base import UpdateWorkspaceObjects
from handlers.model import SYSTEM, Actor, EventType, RequestState
from handlers.notifications import Access, Audience, Button, Say, route
from handlers.plan import Step, StepOutcome
from provisioning import dryrun
from tests import test_plan_digests as digests
from tests.fakes.facts import StaticFacts
from tests.fakes.slack import FakeSlack
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import BOB, add_users, response_texts, settings_for, slash
from tests.harness import CORE
from tests.test_notifications import BOB as BOB_ROW
from tests.test_notifications import CAROL, event, request
from tests.test_shell import request_count, run_shell


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        yield running


def test_offboard_and_scan_answer_once_over_slack(bot: Running, fake_slack: FakeSlack) -> None:
    """Each read-only admin command gets one ephemeral reply: no second, stale "not available"
    error after the answer, no duplicate plain-text copy of the scan."""
    said = slash(bot, fake_slack, "offboard nobody@example.com", user=BOB, name="offboard")
    assert "holds nothing the bot granted" in said, said
    said = slash(bot, fake_slack, "workspace scan", user=BOB, name="scan")
    assert "needs the live cluster" in said, said
    time.sleep(1.0)  # a second reply, if any, follows within the same handler at once
    assert len(response_texts(fake_slack, "offboard")) == 1, response_texts(fake_slack, "offboard")
    assert len(response_texts(fake_slack, "scan")) == 1, response_texts(fake_slack, "scan")


RUNBOOK_IAM = {
    "KFBOT_NODEGROUP_STYLE": "runbook",
    "KFBOT_WORKSPACE_IAM": "per-workspace",
    "KFBOT_OIDC_PROVIDER_ARN": (
        "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABC"
    ),
}


def test_a_runbook_nodegroup_with_its_own_role_is_recorded_and_planned_in_words(tmp_path: Path) -> None:
    """The runbook's launch template carries ``imds_tokens`` (``required``, an IMDS mode, no secret):
    the audit chain's secret check must record its plan, not refuse the request."""
    out = run_shell(tmp_path, "/kf workspace new team-a --gpu 1\n", **RUNBOOK_IAM)
    assert "error" not in out.lower(), out
    assert request_count(tmp_path) == 1


def test_every_removal_a_delete_plans_is_said_in_words() -> None:
    """Each create action a workspace records has its removal in prose (the delete card of a
    per-workspace-IAM, runbook-style workspace said `remove LaunchTemplate/…`, `remove IamRole/…`)."""

    params = {
        "name": "team-a-g4dn-xlarge",
        "bucket": "kf-team-a",
        "email": "alice@example.com",
        "policy_arn": "arn:aws:iam::123456789012:policy/kf-buckets",
    }
    for create, removal in workspace_delete._REMOVAL.items():
        if removal is None:
            continue
        said = workspace_delete._prose(removal, params, f"Key/{create}")
        assert "Key/" not in said and said.startswith("remove "), (create, said)
    assert workspace_delete._prose(
        ActionName.LAUNCH_TEMPLATE_REMOVE, params, "LaunchTemplate/team-a-g4dn-xlarge"
    ) == "remove EC2 launch template `team-a-g4dn-xlarge`"
    assert workspace_delete._prose(
        ActionName.WORKSPACE_ROLE_REMOVE, {"name": "kfbot-ws-team-a"}, "IamRole/kfbot-ws-team-a"
    ) == "remove IAM role `kfbot-ws-team-a` (its inline policies deleted, managed ones detached)"


def test_the_shell_says_offboarding_needs_slack(tmp_path: Path) -> None:
    out = run_shell(tmp_path, "/kf offboard bob@example.com\n", as_="carol@example.com", admin=True)
    assert "needs Slack" in out and "not available here" not in out, out
    assert request_count(tmp_path) == 0


def test_resetting_an_adopted_login_waits_for_an_admin_a_made_one_does_not() -> None:
    """#12: adopted logins only with approval. A hand-made login the bot adopted is reset only after
    another admin approves, and the card says why; one the bot made applies at the admin's word."""

    admin = Actor(user_id="UADMIN", email="admin@example.com", is_admin=True)
    facts = StaticFacts(logins_made={"made@example.com"}, logins_adopted={"legacy@example.com"})
    made, adopted = kinds.PasswordResetFor("made@example.com"), kinds.PasswordResetFor("legacy@example.com")
    assert policy.auto_apply_reason(made, admin, facts, CORE) is not None
    assert policy.auto_apply_reason(adopted, admin, facts, CORE) is None
    ctx = kinds.PlanContext(CORE, facts, "RPLAN01")
    warned = adopted.plan(ctx).warnings
    assert any("adopted" in w and "approv" in w for w in warned), warned
    assert not any("adopted" in w for w in made.plan(ctx).warnings)


ROOT = Path(__file__).resolve().parent.parent
_NAME = r"KFBOT_[A-Z0-9_]*[A-Z0-9]"


def _settings_read() -> set[str]:

    return set(re.findall(rf'"({_NAME})"', (ROOT / "bot" / "settings.py").read_text()))


def test_docs_settings_lists_every_setting_the_bot_reads_and_no_other() -> None:

    documented = set(re.findall(rf"^\| `({_NAME})`", (ROOT / "docs" / "SETTINGS.md").read_text(), re.M))
    read = _settings_read()
    assert read - documented == set(), "read but not in docs/SETTINGS.md"
    assert documented - read == set(), "in docs/SETTINGS.md but never read"


BROWNFIELD = {
    "KFBOT_WORKSPACE_IAM": "workspaceIam",
    "KFBOT_OIDC_PROVIDER_ARN": "oidcProviderArn",
    "KFBOT_NODEGROUP_STYLE": "nodegroupStyle",
    "KFBOT_NODE_DISK_SIZE": "diskSize",
    "KFBOT_NODE_DISK_TYPE": "diskType",
    "KFBOT_NODE_EKSCTL_LABELS": "eksctlLabels",
    "KFBOT_NODE_IMDS_TOKENS": "imdsTokens",
    "KFBOT_NODE_IMDS_HOP_LIMIT": "imdsHopLimit",
    "KFBOT_NODE_INSTANCE_TAGS": "instanceTags",
    "KFBOT_DRIFT_REPORT": "report",
    "KFBOT_DRIFT_CHANNEL": "channel",
    "KFBOT_OFFBOARD_EVERY": "every",
    "KFBOT_OFFBOARD_OWNER": "owner",
    "KFBOT_HOME_REFRESH_SECONDS": "refreshSeconds",
}


def test_the_chart_exposes_the_new_settings_as_values() -> None:
    """The chart passes settings through values.yaml (as the cost settings): each #12/#13 setting
    has a value documented by its name, the env block names it, and the chart names no setting
    the bot does not read (a typo there is a setting silently ignored)."""


    chart = ROOT / "helm" / "kf-chatops"
    helpers = (chart / "templates" / "_helpers.tpl").read_text()
    values_text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    leaves = {
        **values["aws"], **values["aws"]["node"], **values["drift"], **values["offboard"], **values["home"]
    }
    for name, key in BROWNFIELD.items():
        assert name in _settings_read(), name
        assert f'"{name}"' in helpers, f"{name} is not passed by the chart"
        assert name in values_text and key in leaves and leaves[key] == "", (name, key)
    assert set(re.findall(_NAME, helpers)) - _settings_read() == set()


def test_an_offboarding_transfer_removes_a_made_login_and_leaves_an_adopted_one_to_login_remove() -> None:
    """The approver of a left owner's transfer sees the made login go with it; an adopted one stays
    (a step without ``adopted`` and the recorded shape failed the whole transfer at apply), and the
    card says ``login.remove`` takes it."""


    ws = digests._team()
    key = next(k for k, e in ws.created.items() if e["action"] == "dex.user")
    adopted = dataclasses.replace(ws, created={**ws.created, key: {**ws.created[key], "adopted": True}})
    transfer = kinds.WorkspaceTransfer(ws.name, "d@example.com", offboarded=True)
    made_plan = digests._plan(transfer, StaticFacts(workspaces={ws.name: ws}))
    (step,) = [s for s in made_plan.steps if s.action == "dex.user.remove"]
    assert "made" in step.summary, step.summary
    adopted_plan = digests._plan(transfer, StaticFacts(workspaces={ws.name: adopted}))
    assert "dex.user.remove" not in [s.action for s in adopted_plan.steps]
    assert any("`login.remove` takes it" in w for w in adopted_plan.warnings), adopted_plan.warnings


def test_the_new_owner_of_a_transfer_is_told_and_gets_the_login_they_lack() -> None:
    """Logins x transfer x offboarding: a workspace handed to someone Dex has no login for would
    leave its new owner unable to sign in; the plan makes one as a share does, and the new owner
    (told even when offboarding, the bot itself, filed the transfer) gets the Set my password button."""


    ws = digests._team()
    transfer = kinds.WorkspaceTransfer(ws.name, CAROL[1], offboarded=True)
    plan = digests._plan(transfer, StaticFacts(workspaces={ws.name: ws}, without_login={CAROL[1]}))
    (login,) = [s for s in plan.steps if s.action == "dex.user"]
    assert login.params["email"] == CAROL[1] and any("no Kubeflow login" in w for w in plan.warnings)
    had_one = digests._plan(transfer, StaticFacts(workspaces={ws.name: ws}))
    assert "dex.user" not in [s.action for s in had_one.steps]

    owner = Step("kubeflow.profile.owner", "ProfileOwner/team-a", {"name": "team-a", "owner": CAROL[1]}, "o")
    args = {"name": "team-a", "to": CAROL[1], "offboarded": True}
    for requester in (BOB_ROW, (SYSTEM.user_id, SYSTEM.email)):
        done = request(kinds.WorkspaceTransfer.KIND, RequestState.SUCCEEDED, args, (owner, login), requester)
        told = [n for n in route(done, [event(EventType.SUCCEEDED)], False) if n.to == CAROL[1]]
        assert [(n.say, n.access, n.button) for n in told] == [
            (Say.ACCESS_CHANGED, Access.OWNED, Button.SET_PASSWORD)
        ], told
        others = [n for n in route(done, [event(EventType.SUCCEEDED)], False) if n.to != CAROL[1]]
        assert all(n.button is None for n in others)
        text = render.access_text(done, Access.OWNED, render.SHELL)
        assert "owner of Kubeflow workspace `team-a`" in text and "login was made" in text, text
    # The login it made is recorded with the workspace (Set my password, unshare and delete read it);
    # one found at apply is someone else's.
    at = datetime(2026, 12, 5, tzinfo=UTC)
    for created, recorded in ((True, {login.key}), (False, set())):
        outcomes = {i: StepOutcome(created=created) for i in range(len(plan.steps))}
        success = transfer.on_success(kinds.Applied("RXFER01", "UADMIN", plan, outcomes, at))
        added = {k for c in success.changes if isinstance(c, UpdateWorkspaceObjects) for k in c.add}
        assert added == recorded, success.changes
    plain = request(kinds.WorkspaceTransfer.KIND, RequestState.SUCCEEDED, args, (owner,), BOB_ROW)
    told = [n for n in route(plain, [event(EventType.SUCCEEDED)], False) if n.audience is Audience.PERSON]
    assert [(n.to, n.button) for n in told] == [(CAROL[1], None)]
    failed = dataclasses.replace(plain, state=RequestState.FAILED)
    assert not [n for n in route(failed, [event(EventType.FAILED)], False) if n.audience is Audience.PERSON]


def test_the_dry_run_lists_the_calls_that_remove_a_login() -> None:
    """Unshare, transfer and delete remove logins now; their dry run names the call, as the
    create's does, in either Dex mode."""
    email = "carol@example.com"
    cr = dryrun.RENDERERS[ActionName.DEX_USER_REMOVE]({"email": email, "mode": "password-cr"})
    made = dryrun.RENDERERS[ActionName.DEX_USER]({"email": email, "mode": "password-cr", "username": "c"})
    assert cr[0].startswith("DELETE ") and made[0].split(" ", 2)[1] == cr[0].split(" ", 2)[1], (cr, made)
    cm = dryrun.RENDERERS[ActionName.DEX_USER_REMOVE]({"email": email, "mode": "configmap"})
    assert any("staticPasswords" in line and "ConfigMap auth/dex" in line for line in cm), cm
    assert any("restart Deployment auth/dex" in line for line in cm), cm


def test_the_owner_told_of_an_offboarding_unshare_hears_why_not_of_a_time_limit() -> None:
    """Offboarding's unshare tells the workspace's owner as an expiry does; it is no time limit."""
    args = {"workspace": "team-a", "user": CAROL[1], "notify": ["alice@example.com"]}
    grant = Step("kubeflow.contributor.remove", "Contributor/team-a/carol", {"user": CAROL[1]}, "remove")
    bot = (SYSTEM.user_id, SYSTEM.email)
    cases = (("the person left Slack", "the person left Slack"), ("the grant expired", "time limit"))
    for reason, said in cases:
        unshare = request(kinds.Unshare.KIND, RequestState.SUCCEEDED, args, (grant,), bot)
        done = dataclasses.replace(unshare, reason=reason)
        (notice,) = route(done, [event(EventType.SUCCEEDED)], False)
        text = render.notice_text(notice, render.SHELL)
        assert said in text and (said == "time limit" or "time limit" not in text), text
