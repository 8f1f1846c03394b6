"""``kfbot shell``: the README's main job on a fresh machine (SQLite + dry-run, no settings at all),
driven through stdin in a subprocess, and the shell's commands in-process through ``bot.cli``."""

from __future__ import annotations

import io
import re
import sqlite3
import stat
import subprocess
import sys
from argparse import Namespace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import cli
from bot.settings import Settings
from tests.fakes.attacks import REVIEWED_EMAIL_ATTACKS
from tests.fakes.cli import clean_env, run_kfbot

_ID = re.compile(r"\bR[A-Z0-9]{6}\b")


def kfbot(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``kfbot ARGS`` on a fresh checkout: no settings at all."""
    return run_kfbot(cwd, args, clean_env(), stdin)


@pytest.mark.slow
def test_shell_on_a_fresh_checkout_runs_a_request_end_to_end(tmp_path: Path) -> None:
    first = kfbot(
        ["shell", "--as", "alice@example.com"], tmp_path, "/kf workspace new team-a --gpu 1\n/kf requests\n"
    )

    assert first.returncode == 0, first.stderr
    assert "provisioner dry-run" in first.stdout
    request_id = _ID.search(first.stdout).group(0)  # type: ignore[union-attr]
    assert (
        f"[Approve: approve {request_id}]" in first.stdout
        and f"[Reject: reject {request_id} REASON]" in first.stdout
    )
    assert "waiting for an admin" in first.stdout
    key_file = tmp_path / ".kfbot-audit-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and "generated one" in first.stderr
    assert (tmp_path / "kfbot.db").exists()

    second = kfbot(
        ["shell", "--as", "alice@example.com"],
        tmp_path,
        f"approve {request_id}\nas bob@example.com --admin\napprove {request_id}\n/kf requests\nquit\n"
        "/kf help\n",
    )

    out = second.stdout
    assert second.returncode == 0, second.stderr
    assert "error: Only admins can approve or reject requests." in out  # alice may not; the shell goes on
    assert f"You approved `{request_id}`." in out
    assert f"[DM to alice@example.com] Your request `{request_id}`" in out
    assert "would: s3:CreateBucket kf-team-a (us-east-1)" in out  # the dry-run rendering of each step
    assert "would: eks:CreateNodegroup kubeflow/team-a-g4dn-xlarge" in out
    assert f"✅ `{request_id}` is done" in out and "[Set my password: password]" in out
    assert "No requests." in out  # nothing pending any more
    assert "/kf workspace new NAME" not in out.split("quit", 1)[1]  # nothing runs after quit
    assert "generated" not in second.stderr  # the key file is reused


def run_shell(
    tmp_path: Path, lines: str, *, as_: str = "alice@example.com", admin: bool = False, **env: str
) -> str:
    settings = Settings.from_env(
        {
            "KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}",
            "KFBOT_AUDIT_KEY": "shell-test-audit-key-0123456789",
            **env,
        }
    )
    out = io.StringIO()
    code = cli.run_shell(Namespace(as_=as_, admin=admin), settings, stdin=io.StringIO(lines), stdout=out)
    assert code == 0
    return out.getvalue()


def request_count(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "kfbot.db") as conn:
        return int(conn.execute("select count(*) from requests").fetchone()[0])


def test_reject_token_share_and_errors_in_one_session(tmp_path: Path) -> None:
    out = run_shell(tmp_path, "/kf workspace new team-a\n")
    request_id = _ID.search(out).group(0)  # type: ignore[union-attr]
    out = run_shell(
        tmp_path,
        f"reject {request_id}\nreject {request_id} not this quarter\n"
        f"show {request_id}\n/kf cancel {request_id}\n",
        as_="bob@example.com",
        admin=True,
    )
    assert "Say why the request is rejected." in out
    assert f"[card {request_id}] Rejected by bob@example.com" in out and "not this quarter" in out
    assert "calls:" in out and "s3:CreateBucket kf-team-a" in out  # show = the View plan button
    assert "cannot become cancelled" in out

    out = run_shell(tmp_path, "/kf workspace new team-b\n")
    new_id = _ID.search(out.split("[admin channel]")[1]).group(0)  # type: ignore[union-attr]
    out = run_shell(
        tmp_path,
        f"approve {new_id}\nas alice@example.com\n/kf token team-b --ttl 2h\n"
        "/kf share team-b carol@example.com --role view --for 3d\n/kf tokens\n"
        "/kf contributors team-b\n/kf workspace list\n/kf password reset\npassword\n",
        as_="bob@example.com",
        admin=True,
    )
    token_id = re.search(r"\[Show token: reveal (R[A-Z0-9]{6})\]", out).group(1)  # type: ignore[union-attr]
    assert "It applies without an admin" in out
    assert f"`{token_id}` edit in `team-b`" in out
    assert "carol@example.com (view) until" in out
    assert "`team-b` namespace `team-b`, owner alice@example.com" in out
    assert "[Set my password: password]" in out and "shown once" in out

    out = run_shell(tmp_path, f"reveal {token_id}\n", as_="bob@example.com")
    assert "Only the person who asked for this token can see it." in out


def test_a_token_without_ttl_lasts_the_configured_default(tmp_path: Path) -> None:
    out = run_shell(tmp_path, "/kf workspace new team-a\n")
    request_id = _ID.search(out).group(0)  # type: ignore[union-attr]
    run_shell(tmp_path, f"approve {request_id}\n", as_="bob@example.com", admin=True)

    asked = datetime.now(UTC)
    out = run_shell(tmp_path, "/kf token team-a\n/kf tokens\n", KFBOT_TOKEN_DEFAULT_TTL="2h")

    assert "edit token for `team-a` (kubernetes, 2h)" in out
    expires = re.search(r"expires (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", out).group(1)  # type: ignore[union-attr]
    lasts = datetime.strptime(expires, "%Y-%m-%d %H:%M").replace(tzinfo=UTC) - asked
    assert timedelta(hours=2) - timedelta(minutes=1) <= lasts <= timedelta(hours=2, minutes=1)


def test_a_non_admins_approve_says_only_admins_decide(tmp_path: Path) -> None:
    out = run_shell(tmp_path, "/kf workspace new team-a\napprove\nreject\n", as_="dave@example.com")
    assert "Only admins approve requests; `as EMAIL --admin` acts as one in this shell." in out
    assert "Only admins reject requests" in out and "of yours" not in out


def test_unicode_is_echoed_as_typed_and_a_dash_flag_gets_a_hint(tmp_path: Path) -> None:
    out = run_shell(tmp_path, "/kf workspace new t\u00ebam\n/kf workspace new team-b \u2013gpu 1\n")
    assert "`t\u00ebam` contains U+00EB" in out and "\\x" not in out
    assert "type `--gpu`" in out


@pytest.mark.parametrize(
    "line",
    [
        "/kf workspace new team-x; rm -rf /",
        "/kf workspace new $(touch pwned)",
        "/kf workspace new `id`",
        "/kf share team-a 'bob@example.com; drop table requests'",
        "/kf workspace new 'team-x\nkind: Secret'",
        "/kf workspace new team-x --cpu '{a: b}'",
        "/kf workspace new team-x --owner '&alias <<: *x'",
        "/kf quota team-a --memory '1Gi\"; curl evil'",
        "/kf workspace new <!channel>",
        "bogus command",
        "as not-an-email",
    ],
)
def test_injection_attempts_are_refused_and_nothing_is_recorded(tmp_path: Path, line: str) -> None:
    out = run_shell(tmp_path, line + "\n/kf requests\n")
    assert "error:" in out and "You have no requests." in out
    assert request_count(tmp_path) == 0
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# The review's wildcard and markup addresses (issue 9, finding 2).
EMAIL_ATTACKS = REVIEWED_EMAIL_ATTACKS


def test_wildcard_and_markup_emails_are_refused_at_the_edge_and_nothing_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_shell(tmp_path, "/kf workspace new team-a\n")
    request_id = _ID.search(out).group(0)  # type: ignore[union-attr]
    assert "is done" in run_shell(tmp_path, f"approve {request_id}\n", as_="bob@example.com", admin=True)
    recorded = request_count(tmp_path)

    # alice owns team-a: a share by her applies without an admin, so only the parser stands between
    # '*@example.com' and an AuthorizationPolicy that lets the whole domain in.
    lines = "".join(
        f"/kf share team-a '{email}'\n/kf workspace new team-z --owner '{email}'\n" for email in EMAIL_ATTACKS
    )
    out = run_shell(tmp_path, lines)

    assert out.count("error: The email address") == 2 * len(EMAIL_ATTACKS), out
    assert request_count(tmp_path) == recorded
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KFBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'kfbot.db'}")
    monkeypatch.setenv("KFBOT_AUDIT_KEY", "shell-test-audit-key-0123456789")
    for email in EMAIL_ATTACKS:
        assert cli.main(["shell", "--as", email]) == 2
        assert "The email address" in capsys.readouterr().err
    assert request_count(tmp_path) == recorded


def test_a_reason_with_markup_and_controls_is_refused_or_shown_literally(tmp_path: Path) -> None:
    request_id = _ID.search(run_shell(tmp_path, "/kf workspace new team-a\n")).group(0)  # type: ignore[union-attr]
    out = run_shell(
        tmp_path,
        f"reject {request_id} no\x00pe\nreject {request_id} \u202eevil\n"
        f"reject {request_id} *not* _now_ ~ok~ `x` <!here> \x1b[2J\n"
        f"reject {request_id} *not* _now_ ~ok~ `x` <!here>\n",
        as_="bob@example.com",
        admin=True,
    )
    assert "error: The reason contains the invisible control character U+0000" in out
    assert "error: The reason contains the bidirectional control U+202E" in out
    assert "error: The reason contains the invisible control character U+001B" in out
    assert "\x1b" not in out and "\u202e" not in out and "\x00" not in out
    assert "Rejected by bob@example.com at" in out and ": *not* _now_ ~ok~ `x` <!here>" in out


def test_an_unclosed_quote_in_as_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    result = kfbot(["shell", "--as", "alice@example.com"], tmp_path, stdin='as "\n')
    assert "Could not read the command" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "went wrong" not in result.stdout


def test_the_shell_does_not_import_slack_bolt() -> None:
    code = "import sys, bot.shell; sys.exit('slack_bolt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
