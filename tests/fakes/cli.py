"""Running ``kfbot`` (``python -m bot.cli``) as a subprocess, the way an operator does, with an
environment free of the developer's own ``KFBOT_``/``SLACK_`` variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

AUDIT_KEY = "cli-test-audit-key-0123456789abcdef"


def clean_env(**extra: str) -> dict[str, str]:
    """No KFBOT_/SLACK_ variables: the defaults of a fresh checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFBOT_", "SLACK_"))}
    return {**env, **extra}


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment with a SQLite database in ``tmp_path``, an audit key, and the health
    listener on a port of the kernel's choosing (tests run side by side)."""
    database = {"KFBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'kfbot.db'}", "KFBOT_AUDIT_KEY": AUDIT_KEY}
    return clean_env(**{**database, "KFBOT_HEALTH_PORT": "0", **extra})


def run_kfbot(
    cwd: Path, args: list[str], env: Mapping[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        input=stdin,
        text=True,
        capture_output=True,
        env=dict(env),
        timeout=120,
        check=False,
    )


def kfbot(tmp_path: Path, *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    """``kfbot ARGS`` in ``tmp_path`` with ``env_for(tmp_path, **extra)``."""
    return run_kfbot(tmp_path, list(args), env_for(tmp_path, **extra), stdin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readyz(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            answer: dict[str, object] = json.loads(resp.read())
            return answer
    except OSError:
        time.sleep(0.1)
        return None
