"""``kfbot`` under cProfile in every thread, for ``bench.run --profile``.

cProfile only sees the thread that enables it, and ``kfbot serve`` does its work in threads (the
HTTP server's, Bolt's, the work pool, the engine workers): ``threading.setprofile`` starts a
profiler in each new thread on its first event. On exit the profiles are merged and written to
``KFBOT_BENCH_PROFILE``. The timer is each thread's CPU time: waits (the database, Slack, a
lock, an idle queue) cost nothing, so the profile shows what the 2 cores are spent on.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import threading
import time
from typing import Any

from bot import cli

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(frame: Any, event: str, arg: Any) -> None:
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def main() -> int:
    out = os.environ["KFBOT_BENCH_PROFILE"]
    threading.setprofile(_start_in_thread)
    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        return cli.main(sys.argv[1:])
    finally:
        main_profile.disable()
        with _lock:
            profiles = [main_profile, *_profiles]
        for p in profiles:
            p.disable()
        stats = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            stats.add(p)
        stats.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main())
