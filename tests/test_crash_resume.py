"""A worker killed mid-request (SIGKILL, no cleanup at all) is resumed by another after its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from handlers import kinds, services
from handlers.model import RequestState
from handlers.plan import StepStatus
from tests.harness import ALICE, build_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("killed_at", ["dex.user", "aws.bucket"])
def test_killed_worker_is_resumed_after_its_lease(db_url: str, tmp_path: Path, killed_at: str) -> None:
    stack = build_stack(db_url)
    rid = services.submit(
        stack.core, ALICE, kinds.WorkspaceCreate("team-a", ALICE.email), idempotency_key="t"
    ).request.id
    stack.approve(rid)
    marker = tmp_path / "reached"
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", db_url, str(marker), killed_at],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert worker.poll() is None, "the worker exited before reaching the step"
            assert time.monotonic() < deadline, "the worker never reached the step"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    with stack.backend.db.uow() as uow:
        before = {r.key: r.status for r in uow.work.steps(rid)}
    killed_step = {"dex.user": f"DexUser/{ALICE.email}", "aws.bucket": "Bucket/kf-team-a"}[killed_at]
    assert before[killed_step] is StepStatus.RUNNING, "the step was recorded as started before its call"

    assert stack.run() == 0, "the dead worker's lease still holds the request"
    stack.clock.advance(timedelta(seconds=31))
    assert stack.run() == 1
    assert stack.request(rid).state is RequestState.SUCCEEDED
    with stack.backend.db.uow() as uow:
        after = {r.key: r for r in uow.work.steps(rid)}
    assert all(r.status is StepStatus.DONE for r in after.values())
    assert before["Profile/team-a"] is StepStatus.DONE
    assert "kubeflow.profile" not in stack.world.ensure_calls, (
        "a step the dead worker finished is not run again"
    )
    assert killed_at in stack.world.ensure_calls
    assert after[killed_step].outcome is not None and after[killed_step].outcome.created
