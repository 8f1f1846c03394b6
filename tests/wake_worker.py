"""A replica's engine in a process of its own, for the cross-process wake-up test: workers that
poll only once an hour, so a request it applies promptly was woken by a PostgreSQL notification.

Usage: python -m tests.wake_worker DB_URL READY_FILE
Writes READY_FILE once its listener is up and its workers are idle; exits when stdin closes.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

from tests.harness import build_stack


def main(db_url: str, ready: str) -> None:
    stack = build_stack(db_url, worker_id="replica-2", migrate=False)
    engine = dataclasses.replace(stack.backend.settings.engine, poll_interval=3600.0, workers=2)
    stack.backend.settings = dataclasses.replace(stack.backend.settings, engine=engine)
    stop = threading.Event()
    supervisor = stack.backend.start_worker(stack.notifier, stop)
    wakeups = stack.backend.wakeups
    assert wakeups is not None, "the wake-up test needs PostgreSQL"
    while not (wakeups.listening.is_set() and stack.backend.db.work_signal.waiting == engine.workers):
        time.sleep(0.01)
    Path(ready).write_text("ready")
    sys.stdin.read()  # the test closes our stdin to stop us
    stop.set()
    supervisor.join(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
