"""The "done" DM gives the next step (#13): where to open the workspace, its bucket, the PodDefault
to tick in the notebook form, how to log in (Dex mode aware) and ``/kf gpu status`` for GPU
workspaces. Run through the real bot over signed HTTP and the fake Slack; the dashboard URL is
``KFBOT_DASHBOARD_URL``, checked at start-up because it becomes a Slack link."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import blocks
from bot.app import Running
from bot.settings import Settings, SettingsError
from handlers.model import RequestState
from tests.fakes.slack import FakeSlack
from tests.fakes.slack_bot import running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    REQUEST_ID,
    WAIT,
    add_users,
    card_for,
    click,
    settings_for,
    slash,
    wait_state,
)

DASHBOARD = "https://kubeflow.example.com"


@pytest.fixture
def start(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Any]:
    add_users(fake_slack)
    started: list[Any] = []

    def run(**env: str) -> Running:
        context = running_bot(settings_for(fake_slack, tmp_path, **env))
        started.append(context)
        return context.__enter__()

    yield run
    for context in started:
        context.__exit__(None, None, None)


def done_dm(bot: Running, fake: FakeSlack, command: str) -> str:
    """``/kf COMMAND`` by Alice, approved by Bob: the text of Alice's "done" DM (blocks included)."""
    reply = slash(bot, fake, command, user=ALICE, name="done")
    match = REQUEST_ID.search(reply)
    assert match, reply
    request_id = match.group(0)
    assert click(bot, fake, card_for(fake, request_id), blocks.APPROVE, user=BOB) == 200
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    message: dict[str, Any] = fake.wait_for(
        lambda: next(
            (m for m in fake.messages_in(fake.dm_channel(ALICE)) if f"`{request_id}` is done" in m["text"]),
            None,
        ),
        WAIT,
        "the done DM",
    )
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_a_gpu_workspace_dm_links_the_dashboard_and_names_bucket_poddefault_login_and_gpu_status(
    start: Any, fake_slack: FakeSlack
) -> None:
    bot = start(KFBOT_DASHBOARD_URL=DASHBOARD + "/")
    text = done_dm(bot, fake_slack, "workspace new team-a --gpu 1")

    assert "Next steps" in text
    assert f"<{DASHBOARD}/?ns=team-a|the Kubeflow dashboard>" in text and "namespace `team-a`" in text
    assert "`s3://kf-team-a`" in text
    # the PodDefault as Kubeflow's notebook form lists it: by its description
    assert "under “Configurations”, tick “Run on the g4dn.xlarge nodegroup”" in text
    assert "PodDefault `team-a-g4dn-xlarge`" in text
    assert "Log in as `alice@example.com`" in text and "Set my password" in text
    assert "`/kf gpu status`" in text
    assert "once this runs for real" in text  # the default provisioner is dry-run


def test_a_cpu_workspace_gets_no_gpu_lines_and_without_a_url_no_link(
    start: Any, fake_slack: FakeSlack
) -> None:
    bot = start()
    text = done_dm(bot, fake_slack, "workspace new team-b")

    assert "Next steps" in text and "namespace `team-b`" in text and "your Kubeflow dashboard" in text
    assert "<http" not in text
    assert "Configurations" not in text and "/kf gpu status" not in text


def test_with_an_external_identity_provider_the_dm_says_to_use_its_sign_in(
    start: Any, fake_slack: FakeSlack
) -> None:
    bot = start(KFBOT_DEX_MODE="external")
    text = done_dm(bot, fake_slack, "workspace new team-c --gpu 1")

    assert "through your organisation's sign-in" in text
    assert "Set my password" not in text


def test_other_requests_get_no_next_steps(start: Any, fake_slack: FakeSlack) -> None:
    bot = start()
    done_dm(bot, fake_slack, "workspace new team-a")
    dms = [m["text"] for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE))]
    assert sum("Next steps" in t for t in dms) == 1  # the done DM only, not "approved"


@pytest.mark.parametrize(
    "value",
    [
        "kubeflow.example.com",
        "javascript:alert(1)",
        "https://kf.example.com/|<!channel>",
        "https://kf.example.com/>x",
        "https://kf.example.com/<x",
        "https://kf.example.com/a b",
        'https://kf.example.com/"',
        "https://kf.example.com/`x`",
        "https://kf.exämple.com/",
        "https://kf.example.com/\u202e",
    ],
)
def test_a_dashboard_url_that_is_not_a_plain_link_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KFBOT_DASHBOARD_URL": value})
    assert "KFBOT_DASHBOARD_URL" in caught.value.user_message


def test_a_dashboard_url_is_read() -> None:
    settings = Settings.from_env({"KFBOT_DASHBOARD_URL": "https://kf.example.com/"})
    assert settings.slack.dashboard_url == "https://kf.example.com"
    assert Settings.from_env({}).slack.dashboard_url is None
