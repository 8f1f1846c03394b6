"""``kfbot`` subcommands as a user runs them: subprocesses with their own environment."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot import cli
from tests.fakes.cli import clean_env, env_for, free_port, kfbot, readyz, run_kfbot
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, post_signed, slash_command_body


def rows(tmp_path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(tmp_path / "kfbot.db") as conn:
        return list(conn.execute(query))


def test_subcommand_table_has_room_for_more() -> None:
    assert list(cli.COMMANDS) == ["serve", "shell", "migrate", "plan", "audit", "doctor"]
    parser = cli.build_parser()
    assert parser.parse_args(["audit", "export", "--format", "csv"]).format == "csv"


def test_plan_prints_every_step_and_records_nothing(tmp_path: Path) -> None:
    done = kfbot(
        tmp_path, "plan", "/kf workspace new team-a --gpu 1 --nodes 0:3", "--as", "alice@example.com"
    )

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Approval: needs an admin" in out and "Provisioner: dry-run" in out
    for action in ("kubeflow.profile", "dex.user", "aws.bucket", "aws.nodegroup", "kubeflow.poddefault"):
        assert f"action: {action}" in out
    assert "POST /apis/kubeflow.org/v1/profiles" in out and "s3:CreateBucket kf-team-a" in out
    assert '"maxSize": 3' in out and "Nothing was applied or recorded." in out
    assert not (tmp_path / "kfbot.db").exists()


def test_plan_on_an_existing_database_records_nothing_in_it(tmp_path: Path) -> None:
    shell = kfbot(tmp_path, "shell", "--as", "alice@example.com", stdin="/kf workspace new team-a\n")
    assert shell.returncode == 0

    def counts() -> list[tuple[object, ...]]:
        requests = rows(tmp_path, "select count(*) from requests")
        return requests + rows(tmp_path, "select count(*) from audit_events")

    before = counts()
    done = kfbot(tmp_path, "plan", "/kf workspace new team-b --gpu 1", "--as", "bob@example.com")
    assert done.returncode == 0, done.stderr
    assert counts() == before


def test_plan_refuses_what_is_not_a_request(tmp_path: Path) -> None:
    done = kfbot(tmp_path, "plan", "/kf requests", "--as", "alice@example.com")
    assert done.returncode == 2 and "shows the plan of a request" in done.stderr
    bad = kfbot(tmp_path, "plan", "/kf workspace new Team_A", "--as", "alice@example.com")
    assert bad.returncode == 2 and "lowercase" in bad.stderr


def test_audit_verify_ok_then_catches_an_edited_row(tmp_path: Path) -> None:
    shell = kfbot(tmp_path, "shell", "--as", "alice@example.com", stdin="/kf workspace new team-a\n")
    request_id = re.search(r"\bR[A-Z0-9]{6}\b", shell.stdout).group(0)  # type: ignore[union-attr]
    kfbot(tmp_path, "shell", "--as", "bob@example.com", "--admin", stdin=f"approve {request_id}\n")

    ok = kfbot(tmp_path, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    head = re.search(r"head (\S+)", ok.stdout).group(1)  # type: ignore[union-attr]
    assert kfbot(tmp_path, "audit", "verify", "--expect-head", head).returncode == 0
    exported = kfbot(tmp_path, "audit", "export", "--format", "jsonl").stdout.splitlines()
    types = [json.loads(line)["type"] for line in exported]
    assert types[:3] == ["request.created", "notification.sent", "request.approved"]
    assert kfbot(tmp_path, "audit", "export", "--format", "csv").stdout.startswith("seq,")

    with sqlite3.connect(tmp_path / "kfbot.db") as conn:
        conn.execute("update audit_events set actor = 'shell:mallory@example.com' where seq = 2")
    bad = kfbot(tmp_path, "audit", "verify")
    assert bad.returncode == 1 and "seq 2" in bad.stdout

    wrong_key = kfbot(tmp_path, "audit", "verify", KFBOT_AUDIT_KEY="another-key-0123456789abcdef")
    assert wrong_key.returncode == 1


def test_audit_verify_catches_a_truncated_tail_with_expect_head(tmp_path: Path) -> None:
    kfbot(
        tmp_path,
        "shell",
        "--as",
        "alice@example.com",
        stdin="/kf workspace new team-a\n/kf workspace new team-b\n",
    )
    head = re.search(r"head (\S+)", kfbot(tmp_path, "audit", "verify").stdout).group(1)  # type: ignore[union-attr]
    with sqlite3.connect(tmp_path / "kfbot.db") as conn:
        last = conn.execute("select max(seq) from audit_events").fetchone()[0]
        conn.execute("delete from audit_events where seq = ?", (last,))
        conn.execute(
            "update audit_head set seq = seq - 1, mac = (select mac from audit_events "
            "order by seq desc limit 1)"
        )
    assert kfbot(tmp_path, "audit", "verify", "--expect-head", head).returncode == 1


def test_serve_refuses_a_database_that_is_behind_and_never_creates_it(tmp_path: Path) -> None:
    done = kfbot(
        tmp_path,
        "serve",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        KFBOT_ADMIN_CHANNEL="CADMINS01",
    )
    assert done.returncode == 2 and "kfbot migrate" in done.stderr
    assert not (tmp_path / "kfbot.db").exists()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"KFBOT_AUDIT_KEY": ""}, "KFBOT_AUDIT_KEY"),
        ({"KFBOT_AUDIT_KEY": "short"}, "KFBOT_AUDIT_KEY"),
        ({"KFBOT_ADMIN_CHANNEL": ""}, "KFBOT_ADMIN_CHANNEL"),
        ({"KFBOT_ADMIN_CHANNEL": "#kf-admins"}, "KFBOT_ADMIN_CHANNEL"),  # a name: chat.update needs the id
        ({"KFBOT_WORKSPACE_CHANNELS": "team-a=C0TEAMA01,team-a=C0TEAMA02"}, "KFBOT_WORKSPACE_CHANNELS"),
        ({"SLACK_SIGNING_SECRET": ""}, "SLACK_SIGNING_SECRET"),
        ({"KFBOT_HTTP_PORT": "http"}, "KFBOT_HTTP_PORT"),
        ({"KFBOT_REQUEST_TTL": "forever"}, "KFBOT_REQUEST_TTL"),
    ],
)
def test_serve_names_the_bad_setting(tmp_path: Path, extra: dict[str, str], named: str) -> None:
    settings = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_ADMIN_CHANNEL": "CADMINS01",
        **extra,
    }
    done = kfbot(tmp_path, "serve", **settings)
    assert done.returncode == 2 and named in done.stderr


@pytest.mark.slow
def test_serve_end_to_end_over_http(tmp_path: Path, fake_slack: FakeSlack) -> None:
    fake_slack.add_user("U0ALICE01", "alice@example.com")
    assert kfbot(tmp_path, "migrate").returncode == 0
    port = free_port()
    env = env_for(
        tmp_path,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        KFBOT_ADMIN_CHANNEL="CADMINS01",
        KFBOT_SLACK_API_URL=fake_slack.base_url,
        KFBOT_HTTP_HOST="127.0.0.1",
        KFBOT_HTTP_PORT=str(port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready = fake_slack.wait_for(lambda: readyz(port), 60, "kfbot serve to be ready")
        assert ready["provisioner"] == "dry-run" and ready["migrated"] is True
        body = slash_command_body(
            "workspace new team-a", user_id="U0ALICE01", response_url=fake_slack.response_url("serve")
        )
        assert post_signed(f"http://127.0.0.1:{port}/slack/events", body, SIGNING_SECRET)[0] == 200
        fake_slack.wait_for(lambda: fake_slack.messages_in("CADMINS01"), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("provisioner=dry-run" in entry["msg"] for entry in logs)
    assert all(entry["provisioner"] == "dry-run" for entry in logs)
    assert BOT_TOKEN not in stderr


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    assert kfbot(tmp_path, "migrate").returncode == 0
    again = kfbot(tmp_path, "migrate")
    assert again.returncode == 0 and "migrated" in again.stdout


# -- errors people see: one line, what to do, no traceback (#13) ---------------------------------------


def _one_clean_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("kfbot:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["plan", "shell"])
def test_live_without_kubernetes_credentials_says_what_to_set(tmp_path: Path, command: str) -> None:
    args = ["/kf workspace new team-a"] if command == "plan" else []
    done = kfbot(
        tmp_path,
        command,
        *args,
        "--as",
        "alice@example.com",
        KFBOT_PROVISIONER="live",
        KUBECONFIG=str(tmp_path / "missing-kubeconfig"),
        KUBERNETES_SERVICE_HOST="",
    )
    line = _one_clean_line(done)
    assert "Kubernetes credentials" in line and "KUBECONFIG" in line


def test_plan_writes_no_file_where_it_runs(tmp_path: Path) -> None:
    env = clean_env()  # the fresh-checkout defaults: ./kfbot.db and a generated key file
    done = run_kfbot(tmp_path, ["plan", "/kf workspace new team-a --gpu 1", "--as", "a@example.com"], env)
    assert done.returncode == 0, done.stderr
    assert "Nothing was applied or recorded." in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_serve_with_slack_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    assert kfbot(tmp_path, "migrate").returncode == 0
    done = kfbot(
        tmp_path,
        "serve",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        KFBOT_ADMIN_CHANNEL="CADMINS01",
        KFBOT_SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/",
    )
    line = _one_clean_line(done)
    assert "Slack did not accept the bot" in line and "SLACK_BOT_TOKEN" in line


def test_serve_names_every_missing_setting_at_once(tmp_path: Path) -> None:
    done = kfbot(tmp_path, "serve", KFBOT_AUDIT_KEY="", KFBOT_PROVISIONER="live", KFBOT_LOG_LEVEL="loud")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    # A malformed variable is reported with the others, not one per restart.
    assert "KFBOT_LOG_LEVEL" in done.stderr
    done = kfbot(tmp_path, "serve", KFBOT_AUDIT_KEY="", KFBOT_PROVISIONER="live")
    for missing in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "KFBOT_ADMIN_CHANNEL",
        "KFBOT_AUDIT_KEY",
        "KFBOT_NODEGROUP_SUBNETS",
        "KFBOT_NODE_ROLE_ARN",
    ):
        assert f"kfbot: setting error: {missing}" in done.stderr, done.stderr
    assert not (tmp_path / "kfbot.db").exists()


def test_audit_export_into_a_closed_pipe_ends_with_one_line(tmp_path: Path) -> None:
    # Well over a pipe's 64 KiB buffer, so the export is still writing when the reader leaves.
    commands = "".join(f"/kf workspace new team-{i}\n" for i in range(150))
    assert kfbot(tmp_path, "shell", "--as", "alice@example.com", stdin=commands).returncode == 0
    reader = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "audit", "export"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert reader.stdout is not None and reader.stderr is not None
    first = reader.stdout.readline()
    reader.stdout.close()  # `| head -1`
    _, err = reader.communicate(timeout=60)
    assert json.loads(first)["type"]
    assert reader.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "kfbot: the output was closed before the export finished (broken pipe)."
    ]
