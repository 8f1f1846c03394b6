"""Benchmark the Slack edge end to end, in one run, reported as percentiles and ratios.

What it measures, through the real composition (``bot.app.start_slack``: signed HTTP requests,
Bolt, SQLite, the dry-run provisioner, the worker thread) with Slack's Web API played by the
test fake:

* **ack latency** of ``/kf workspace new`` (HTTP request -> 200): Slack gives up on an
  interaction after 3 s, so the ratio p99 / 3000 ms must stay well below 1;
* **reply latency** (request -> the ephemeral answer at ``response_url``);
* **apply latency** (Approve click -> request ``succeeded``), which includes the worker's poll;
* **memory**: resident set size after the run relative to before it (and per request).

Usage: ``.venv/bin/python -m bench.run [--requests 200] [--concurrency 8] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot import blocks
from bot.settings import Settings
from handlers.model import RequestState
from tests.fakes.slack import (
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    post_signed,
    slash_command_body,
)
from tests.fakes.slack_bot import ADMIN_CHANNEL, bot_settings, running_bot

SLACK_ACK_BUDGET_MS = 3000.0
ADMIN = "U0ADMIN01"
_ID = re.compile(r"\bR[A-Z0-9]{6}\b")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError("benchmark step timed out")


def settings_for(fake: FakeSlack, workdir: Path) -> Settings:
    return bot_settings(fake, workdir, admins=ADMIN, KFBOT_LOG_LEVEL="WARNING")


def run(requests: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
        workdir = Path(tmp)
        fake.add_user(ADMIN, "admin@example.com", "admin")
        users = [f"U0REQ{i:04d}" for i in range(requests)]
        for user in users:
            fake.add_user(user, f"{user.lower()}@example.com", user.lower())
        with running_bot(settings_for(fake, workdir)) as running:
            rss_before = rss_kib()
            acks: list[float] = []
            replies: list[float] = []
            ids: list[str] = []
            lock = threading.Lock()

            def command(i: int) -> None:
                name = f"r{i}"
                body = slash_command_body(
                    f"workspace new bench-{i}", user_id=users[i], response_url=fake.response_url(name)
                )
                start = time.perf_counter()
                status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
                acked = time.perf_counter()
                if status != 200:
                    raise RuntimeError(f"slash command answered {status}")
                reply = wait_for(lambda: fake.responses.get(name))
                done = time.perf_counter()
                match = _ID.search(str(reply[0].get("text", "")))
                if match is None:
                    raise RuntimeError(f"no request id in {reply[0]}")
                with lock:
                    acks.append((acked - start) * 1000)
                    replies.append((done - start) * 1000)
                    ids.append(match.group(0))

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(command, range(requests)))

            applies: list[float] = []

            def approve(request_id: str) -> None:
                card = wait_for(
                    lambda: next(
                        (
                            m
                            for m in fake.messages_in(ADMIN_CHANNEL)
                            if request_id in m.get("text", "") and not m.get("thread_ts")
                        ),
                        None,
                    )
                )
                button = next(
                    e
                    for b in card.get("blocks", [])
                    for e in b.get("elements", [])
                    if e.get("action_id") == blocks.APPROVE
                )
                body = block_action_body(
                    blocks.APPROVE,
                    button["value"],
                    user_id=ADMIN,
                    channel_id=ADMIN_CHANNEL,
                    message_ts=card["ts"],
                    response_url=fake.response_url(f"a{request_id}"),
                    message_blocks=card.get("blocks"),
                )
                start = time.perf_counter()
                status, _, _ = post_signed(running.url, body, SIGNING_SECRET)
                if status != 200:
                    raise RuntimeError(f"approve answered {status}")

                def succeeded() -> bool:
                    with running.backend.uow() as uow:
                        return uow.requests.get(request_id).state is RequestState.SUCCEEDED

                wait_for(succeeded)
                with lock:
                    applies.append((time.perf_counter() - start) * 1000)

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(approve, ids))
            rss_after = rss_kib()
    ack = percentiles(acks)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ack_ms": ack,
        "reply_ms": percentiles(replies),
        "apply_ms": percentiles(applies),
        "ratios": {
            "ack_p99_vs_slack_3s_budget": ack["p99"] / SLACK_ACK_BUDGET_MS,
            "rss_after_vs_before": rss_after / max(rss_before, 1),
        },
        "rss_kib": {
            "before": rss_before,
            "after": rss_after,
            "growth_per_request": (rss_after - rss_before) / max(requests, 1),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args(argv)
    result = run(args.requests, args.concurrency)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"kf-chatops bench: {result['requests']} requests, concurrency {result['concurrency']} "
        "(SQLite, dry-run, fake Slack, real HTTP)"
    )
    print(f"{'metric':<12}{'n':>6}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}   (ms)")
    for key in ("ack_ms", "reply_ms", "apply_ms"):
        p = result[key]
        print(
            f"{key[:-3]:<12}{p['n']:>6}{p['p50']:>10.1f}{p['p95']:>10.1f}{p['p99']:>10.1f}{p['max']:>10.1f}"
        )
    r = result["ratios"]
    print(f"ack p99 / Slack's 3 s budget: {r['ack_p99_vs_slack_3s_budget']:.3f}")
    print(
        f"RSS after / before: {r['rss_after_vs_before']:.2f} "
        f"({result['rss_kib']['growth_per_request']:.1f} KiB per request)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
