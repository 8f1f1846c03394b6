"""A worker process for crash tests: applies requests until the named action is reached, then
signals the test (a marker file) and hangs there until the test SIGKILLs it.

Usage: python -m tests.crash_worker DB_URL MARKER_FILE ACTION
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.harness import build_stack


def main(db_url: str, marker: str, action: str) -> None:
    stack = build_stack(db_url, worker_id="doomed-worker", migrate=False)

    def hang() -> None:
        Path(marker).write_text("reached")
        while True:
            time.sleep(1)

    stack.world.before_ensure[action] = hang
    stack.run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
