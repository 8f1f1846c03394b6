"""Slack says dry-run when it is one, and never when it is not (#13).

The same flow (``/kf workspace new``, Approve, the plan applied) runs through the real bot over
signed HTTP twice: with the dry-run provisioner, and live over the fake apiserver and moto. In a
dry run every version of the card, every thread line and every DM says so; live, none of what
the bot posted mentions a dry run or what a step "would" do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bot import app as composition
from bot import blocks
from bot.app import Running
from bot.settings import Settings
from handlers.model import RequestState
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.aws_fixtures import AwsEnv
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.fakes.slack_bot import ADMIN_CHANNEL, running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    WAIT,
    add_users,
    card_for,
    click,
    new_workspace_request,
    settings_for,
    wait_state,
)
from tests.live_harness import AwsWorld, live_env, seed_aws, seed_kube, tune_for_tests, write_kubeconfig

DRY = re.compile(r"dry[ -]run|\bwould\b", re.IGNORECASE)


@pytest.fixture
def world(aws: AwsEnv) -> AwsWorld:
    return seed_aws(aws.url)


@pytest.fixture
def dry_bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    add_users(fake_slack)
    with running_bot(settings_for(fake_slack, tmp_path)) as running:
        assert running.backend.mode == "dry-run"
        yield running


@pytest.fixture
def live_bot(
    fake_slack: FakeSlack,
    apiserver: FakeApiServer,
    world: AwsWorld,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Running]:
    add_users(fake_slack)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)))
    with client.ApiClient(client.Configuration(host=apiserver.url)) as api:
        seed_kube(apiserver, api, "password-cr")
    env = {
        **live_env(sqlite_url, world),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake_slack.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": BOB,
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": "0",
        "KFBOT_HEALTH_PORT": "0",
    }
    settings: Settings = tune_for_tests(Settings.from_env(env))
    migrating = composition.build_backend(settings)
    migrating.migrate()
    migrating.close()
    running = composition.start_slack(settings, port=0)
    try:
        assert running.backend.mode == "live"
        yield running
    finally:
        running.stop()


def approve_and_finish(bot: Running, fake: FakeSlack) -> str:
    request_id = new_workspace_request(bot, fake)
    card = card_for(fake, request_id)
    assert click(bot, fake, card, blocks.APPROVE, user=BOB) == 200
    wait_state(bot, request_id, RequestState.SUCCEEDED)
    fake.wait_for(lambda: done_dm(fake), WAIT, "the done DM")
    # the card's last update may land after the DM: wait for it before reading every version
    fake.wait_for(lambda: fake.messages[(card["channel"], card["ts"])]["text"].startswith("Done"), WAIT)
    return request_id


def done_dm(fake: FakeSlack) -> dict[str, Any] | None:
    return next((m for m in fake.messages_in(fake.dm_channel(ALICE)) if "is done" in m["text"]), None)


def card_versions(fake: FakeSlack) -> list[dict[str, Any]]:
    """Every card as posted and as each update left it."""
    return [
        c.params
        for c in fake.calls
        if c.params.get("channel") == ADMIN_CHANNEL
        and not c.params.get("thread_ts")
        and c.method in ("chat.postMessage", "chat.update")
        and c.params.get("blocks")
    ]


def thread_lines(fake: FakeSlack) -> list[str]:
    """Every version of every thread message: as posted, and as each edit left it (a step's
    message is edited in place as the step progresses)."""
    threaded = {key for key, m in fake.messages.items() if m.get("thread_ts") not in (None, m["ts"])}
    return [
        str(c.params["text"])
        for c in fake.calls
        if (c.method == "chat.postMessage" and c.params.get("thread_ts"))
        or (c.method == "chat.update" and (c.params.get("channel"), c.params.get("ts")) in threaded)
    ]


def everything_posted(fake: FakeSlack) -> str:
    posted = [c.params for c in fake.calls if c.method.startswith(("chat.", "views."))]
    return json.dumps([posted, fake.responses], ensure_ascii=False)


def test_a_dry_run_says_so_on_the_card_in_every_thread_line_and_in_every_dm(
    dry_bot: Running, fake_slack: FakeSlack
) -> None:
    request_id = approve_and_finish(dry_bot, fake_slack)

    versions = card_versions(fake_slack)
    assert len(versions) >= 2  # posted, then updated as it was decided and applied
    for version in versions:
        header = version["blocks"][0]
        assert header["type"] == "header" and "(dry run)" in header["text"]["text"], header
        assert "Dry run" in json.dumps(version["blocks"])
    assert "Done (dry run)" in versions[-1]["blocks"][0]["text"]["text"]

    lines = thread_lines(fake_slack)
    assert lines and all(DRY.search(line) for line in lines), [line for line in lines if not DRY.search(line)]
    assert any(line.startswith("✔ would create: S3 bucket") for line in lines), lines
    assert any("s3:CreateBucket" in line for line in lines)  # the calls it would make
    assert not any("(created)" in line for line in lines)

    dms = [m["text"] for m in fake_slack.messages_in(fake_slack.dm_channel(ALICE))]
    assert dms and all("Dry run" in text or "dry run" in text for text in dms), dms
    done = done_dm(fake_slack)
    assert done is not None and f"`{request_id}` is done (dry run)" in done["text"]
    assert "changed nothing in Kubeflow, Dex or AWS" in json.dumps(done["blocks"])


def test_live_mode_never_mentions_a_dry_run(live_bot: Running, fake_slack: FakeSlack) -> None:
    request_id = approve_and_finish(live_bot, fake_slack)

    posted = everything_posted(fake_slack)
    assert request_id in posted and "is done" in posted  # the flow did post what is checked
    assert thread_lines(fake_slack) and card_versions(fake_slack)
    assert not DRY.search(posted), DRY.findall(posted)
    assert any("(created)" in line for line in thread_lines(fake_slack))
