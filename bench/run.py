"""Benchmark the deployed shape: ``kfbot serve`` replicas on one PostgreSQL, driven by bursts.

For each replica count (1, 2) it makes a fresh PostgreSQL schema, migrates it, starts the
replicas as separate ``kfbot serve`` processes (dry-run, Slack's Web API played by the test fake
in this process), and for each burst size (50, 100, 200) has the load generator
(``bench/load.py``, a process of its own) send that many signed ``/kf workspace new`` commands at
once, spread over the replicas, then the same number of Approve clicks at once. Measured:

* **TCP errors**: connections refused, reset or timed out (Slack does not retry);
* **ack** p50/p99 of commands and clicks (HTTP request -> 200; Slack's budget is 3 s), and the
  TCP connect time p99 (a full listen backlog shows as SYN retransmits, ~1 s);
* **reply** p50/p99: command sent -> its ephemeral answer seen at ``response_url``;
* **busy** answers, and **lost**: acked but never recorded and not answered busy (a command with
  no request row, an approval whose request never left pending);
* **recorded -> succeeded** p50/p99: the approval's ``decided_at`` -> the request's success,
  from the database (dry-run work: this is the engine's pick-up and bookkeeping);
* **RSS** per replica, idle after start and after the run, and the ratio; start-to-ready.

It prints one table and, with ``--json PATH``, writes the same rows as JSON. ``--profile``
runs each replica under cProfile (every thread, ``bench/profiled.py``) and prints where the time
went. The fake Slack enforces no rate limit here (see the README's benchmark section).

Usage: ``python -m bench.run [--replicas 1,2] [--bursts 50,100,200] [--json out.json] [--profile]``
(``KFBOT_TEST_POSTGRES_URL`` names the server; default ``postgresql+psycopg://postgres@127.0.0.1/test``).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bot import blocks
from bot.listeners.common import BUSY_TEXT
from provisioning.store import Database, audit_events, requests
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, block_action_body, slash_command_body

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "U0ADMIN01"
ADMIN_CHANNEL = "CADMINS01"
AUDIT_KEY = "bench-audit-key-0123456789abcdef"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_ID = re.compile(r"\bR[A-Z0-9]{6}\b")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "mean": float("nan")}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


def wait_for(predicate: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the deployment ---------------------------------------------------------------------------------


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int
    ready_s: float
    rss_idle: int = 0
    profile: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"


@dataclass
class Deployment:
    db_url: str
    fake: FakeSlack
    replicas: list[Replica] = field(default_factory=list)


def fresh_schema(server: str) -> tuple[str, Callable[[], None]]:
    schema = f"kfbot_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, poolclass=NullPool, hide_parameters=True)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def start_replica(n: int, db_url: str, fake: FakeSlack, workdir: Path, profile: bool) -> Replica:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "KFBOT_SLACK_API_URL": fake.base_url,
        "KFBOT_ADMIN_CHANNEL": ADMIN_CHANNEL,
        "KFBOT_ADMIN_USERS": ADMIN,
        "KFBOT_DATABASE_URL": db_url,
        "KFBOT_AUDIT_KEY": AUDIT_KEY,
        "KFBOT_HTTP_HOST": "127.0.0.1",
        "KFBOT_HTTP_PORT": str(port),
        "KFBOT_HEALTH_PORT": "0",  # replicas share this machine: the kernel picks each one's probe port
        "KFBOT_WORKER_ID": f"replica-{n}",
        "KFBOT_LOG_LEVEL": "WARNING",
    }
    out = (workdir / f"replica-{n}.log").open("wb")
    profile_path = workdir / f"replica-{n}.prof" if profile else None
    if profile_path is not None:
        env["KFBOT_BENCH_PROFILE"] = str(profile_path)
        command = [sys.executable, "-m", "bench.profiled", "serve"]
    else:
        command = [sys.executable, "-m", "bot.cli", "serve"]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"replica {n} exited: see {out.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    if not wait_for(ready, timeout=30, every=0.02):
        raise RuntimeError(f"replica {n} not ready after 30 s: see {out.name}")
    return Replica(process, port, time.monotonic() - started, profile=profile_path)


def stop(replica: Replica) -> None:
    replica.process.send_signal(signal.SIGTERM)
    try:
        replica.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        replica.process.kill()
        replica.process.wait()


# -- one burst --------------------------------------------------------------------------------------


def load(
    bodies: list[tuple[str, bytes]], meanwhile: Callable[[Callable[[], bool]], None]
) -> list[dict[str, Any]]:
    """Fire the bodies at once from the load generator's own process; ``meanwhile(finished)``
    runs here while it does (watching the answers arrive)."""
    job = {"secret": SIGNING_SECRET, "requests": [{"url": u, "body": b.decode()} for u, b in bodies]}
    with tempfile.TemporaryFile() as out:
        generator = subprocess.Popen(
            [sys.executable, "-m", "bench.load"], stdin=subprocess.PIPE, stdout=out, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert generator.stdin is not None
        generator.stdin.write(json.dumps(job).encode())
        generator.stdin.close()
        meanwhile(lambda: generator.poll() is not None)
        if generator.wait(timeout=300) != 0:
            raise RuntimeError("the load generator failed")
        out.seek(0)
        results: list[dict[str, Any]] = json.loads(out.read())
    return results


class Answers:
    """When each ``response_url`` name was first answered, and the text (polled every 5 ms)."""

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self.seen: dict[str, tuple[float, str]] = {}

    def poll(self) -> None:
        answers, now = self.fake.responses, time.time()
        for name, posted in answers.items():
            if name not in self.seen and posted:
                self.seen[name] = (now, str(posted[0].get("text", "")))

    def watch(self, until: Callable[[], bool]) -> None:
        while not until():
            self.poll()
            time.sleep(0.005)
        self.poll()

    def wait_for(self, names: set[str], timeout: float) -> None:
        def all_seen() -> bool:
            self.poll()
            return names <= set(self.seen)

        wait_for(all_seen, timeout, every=0.005)


def card_for(fake: FakeSlack, request_id: str) -> dict[str, Any] | None:
    for message in fake.messages_in(ADMIN_CHANNEL):
        if request_id in str(message.get("text", "")) and not message.get("thread_ts"):
            return message
    return None


def run_burst(dep: Deployment, size: int, tag: str) -> dict[str, Any]:
    fake, urls = dep.fake, [r.url for r in dep.replicas]
    users = [f"U{tag}{i:04d}".upper() for i in range(size)]
    for user in users:
        fake.add_user(user, f"{user.lower()}@example.com", user.lower())
    names = [f"cmd-{tag}-{i}" for i in range(size)]
    bodies = [
        (urls[i % len(urls)], slash_command_body(
            f"workspace new w{tag}-{i}", user_id=users[i], response_url=fake.response_url(names[i])))
        for i in range(size)
    ]
    answers = Answers(fake)
    commands = load(bodies, answers.watch)
    acked_names = {n for n, c in zip(names, commands, strict=True) if c["status"] == 200}
    answers.wait_for(acked_names, 60)
    replies = {n: r for n, r in answers.seen.items() if n in acked_names}
    busy = sum(1 for _, text in replies.values() if BUSY_TEXT in text)
    db = Database(dep.db_url, audit_key=AUDIT_KEY.encode())
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(requests.c.id, requests.c.requester_id).where(requests.c.requester_id.in_(users))
            ).all()
        recorded = {r.requester_id: r.id for r in rows}
        # Silently lost: acked, not recorded, and not answered "busy" (those are counted apart).
        told_busy = {n for n, (_, text) in replies.items() if BUSY_TEXT in text}
        lost_commands = sum(
            1 for user, name, c in zip(users, names, commands, strict=True)
            if c["status"] == 200 and user not in recorded and name not in told_busy
        )
        ids = list(recorded.values())
        wait_for(lambda: all(card_for(fake, rid) for rid in ids), 60)
        clicks: list[tuple[str, bytes]] = []
        clicked: list[str] = []
        for i, request_id in enumerate(ids):
            card = card_for(fake, request_id)
            if card is None:
                continue
            button = next(e for b in card.get("blocks", []) for e in b.get("elements", [])
                          if e.get("action_id") == blocks.APPROVE)
            clicks.append((urls[i % len(urls)], block_action_body(
                blocks.APPROVE, button["value"], user_id=ADMIN, channel_id=ADMIN_CHANNEL,
                message_ts=card["ts"], response_url=fake.response_url(f"click-{tag}-{i}"),
                message_blocks=card.get("blocks"))))
            clicked.append(request_id)
        approvals = load(clicks, lambda finished: wait_for(finished, 300))
        acked = [rid for rid, a in zip(clicked, approvals, strict=True) if a["status"] == 200]

        def states() -> dict[str, Any]:
            with db.engine.connect() as conn:
                got = conn.execute(
                    sa.select(requests.c.id, requests.c.state, requests.c.decided_at, requests.c.updated_at)
                    .where(requests.c.id.in_(acked))
                ).all()
            return {r.id: r for r in got}

        wait_for(lambda: all(r.state == "succeeded" for r in states().values()), 120, every=0.2)
        final = states()
        with db.engine.connect() as conn:
            # Exactly once: each request's success is in the audit log once.
            per_request = conn.execute(
                sa.select(audit_events.c.request_id, audit_events.c.type, sa.func.count())
                .where(audit_events.c.request_id.in_(acked), audit_events.c.type == "request.succeeded")
                .group_by(audit_events.c.request_id, audit_events.c.type)
            ).all()
        twice = {rid for rid, _, n in per_request if n != 1}
    finally:
        db.dispose()
    sent = {n: c["sent"] for n, c in zip(names, commands, strict=True)}
    everything = commands + approvals
    return {
        "burst": size,
        "tcp_errors": sum(1 for r in everything if r["error"]),
        "http_errors": sum(1 for r in everything if r["status"] not in (None, 200)),
        "connect_ms": percentiles([r["connect_ms"] for r in everything if r["connect_ms"] is not None]),
        "command_ack_ms": percentiles([r["ack_ms"] for r in commands if r["ack_ms"] is not None]),
        "click_ack_ms": percentiles([r["ack_ms"] for r in approvals if r["ack_ms"] is not None]),
        "reply_ms": percentiles([(t - sent[n]) * 1000 for n, (t, _) in replies.items()]),
        "busy": busy,
        "lost_commands": lost_commands,
        "lost_approvals": sum(1 for r in final.values() if r.state == "pending")
        + len(set(acked) - set(final)),
        "not_succeeded": sum(1 for r in final.values() if r.state != "succeeded"),
        "succeeded": sum(1 for r in final.values() if r.state == "succeeded"),
        "succeeded_more_than_once": len(twice),
        "commands_acked": len(acked_names),
        "decided_to_succeeded_ms": percentiles(
            [(r.updated_at - r.decided_at).total_seconds() * 1000 for r in final.values()
             if r.state == "succeeded" and r.decided_at is not None]
        ),
    }


# -- the run --------------------------------------------------------------------------------------


def run(
    replica_counts: Sequence[int], bursts: Sequence[int], profile: bool, slack_rate: float | None = None
) -> list[dict[str, Any]]:
    server = os.environ.get("KFBOT_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    rows: list[dict[str, Any]] = []
    for count in replica_counts:
        db_url, drop = fresh_schema(server)
        try:
            migrator = Database(db_url, audit_key=AUDIT_KEY.encode())
            migrator.migrate()
            migrator.dispose()
            with tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
                if slack_rate is not None:  # Slack's own pace: chat.postMessage per channel
                    fake.limit_channel_rate(per_second=slack_rate, burst=5)
                fake.add_user(ADMIN, "admin@example.com", "admin")
                dep = Deployment(db_url, fake)
                try:
                    for n in range(1, count + 1):
                        dep.replicas.append(start_replica(n, db_url, fake, Path(tmp), profile))
                    time.sleep(1.0)  # let start-up garbage settle before the idle reading
                    for replica in dep.replicas:
                        replica.rss_idle = rss_kib(replica.process.pid)
                    for size in bursts:
                        row = run_burst(dep, size, f"{count}x{size}")
                        row["replicas"] = count
                        row["rss_kib"] = [rss_kib(r.process.pid) for r in dep.replicas]
                        row["rss_idle_kib"] = [r.rss_idle for r in dep.replicas]
                        row["ready_s"] = [round(r.ready_s, 2) for r in dep.replicas]
                        rows.append(row)
                finally:
                    for replica in dep.replicas:
                        stop(replica)
                if profile:
                    report_profile([r.profile for r in dep.replicas if r.profile is not None], count)
        finally:
            drop()
    return rows


def report_profile(paths: list[Path], count: int) -> None:
    present = [str(p) for p in paths if p.exists()]
    if not present:
        print(f"(no profile written by the {count}-replica run)")
        return
    stats = pstats.Stats(*present)
    print(f"\n-- profile, {count} replica(s), CPU time of every thread: own time --")
    stats.sort_stats("tottime").print_stats(15)
    print(f"-- profile, {count} replica(s): cumulative, kf-chatops' own functions --")
    stats.sort_stats("cumulative").print_stats(r"/(handlers|provisioning|bot)/", 30)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'repl':>4} {'burst':>5} {'tcp err':>7} {'conn p99':>8} {'cmd ack p50/p99':>16} "
            f"{'click ack p50/p99':>18} {'reply p50/p99':>15} {'busy':>4} {'lost':>4} {'applied':>7} "
            f"{'decided->ok p50/p99':>20} {'RSS MiB idle->after (ratio)':>30} {'ready s':>9}")
    lines = [head, "-" * len(head)]

    def pair(p: dict[str, float]) -> str:
        return f"{p['p50']:.0f}/{p['p99']:.0f}"

    for r in rows:
        rss = " ".join(f"{i / 1024:.0f}->{a / 1024:.0f}({a / max(i, 1):.2f})"
                       for i, a in zip(r["rss_idle_kib"], r["rss_kib"], strict=True))
        lost = r["lost_commands"] + r["lost_approvals"]
        twice = r["succeeded_more_than_once"]
        applied = f"{r['succeeded']}" + (f"!{twice}" if twice else "")
        lines.append(
            f"{r['replicas']:>4} {r['burst']:>5} {r['tcp_errors']:>7} {r['connect_ms']['p99']:>8.0f} "
            f"{pair(r['command_ack_ms']):>16} {pair(r['click_ack_ms']):>18} {pair(r['reply_ms']):>15} "
            f"{r['busy']:>4} {lost:>4} {applied:>7} {pair(r['decided_to_succeeded_ms']):>20} "
            f"{rss:>30} "
            f"{','.join(str(s) for s in r['ready_s']):>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="replica counts, comma-separated")
    parser.add_argument("--bursts", default="50,100,200", help="burst sizes, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--profile", action="store_true", help="profile the replicas (cProfile, all threads)")
    parser.add_argument(
        "--slack-rate",
        type=float,
        help="enforce Slack's per-channel chat.postMessage pace (messages a second; Slack's is about 1)",
    )
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.replicas.split(",")]
    bursts = [int(x) for x in args.bursts.split(",")]
    rows = run(counts, bursts, args.profile, args.slack_rate)
    cpus = os.cpu_count()
    print(f"kf-chatops bench: kfbot serve x{'/'.join(map(str, counts))}, PostgreSQL, dry-run, fake Slack "
          f"({'no rate limit' if args.slack_rate is None else f'{args.slack_rate:g} msg/s per channel'}), "
          f"{cpus} CPUs; times in ms; lost = acked, not recorded, not told busy; "
          "applied = requests succeeded (!N: N recorded success twice)")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    failed = any(
        r["lost_commands"] or r["lost_approvals"] or r["not_succeeded"] or r["succeeded_more_than_once"]
        for r in rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
