"""``kfbot serve`` as its own process under load: bursts, oversized bodies, slow clients, SIGTERM.

Black-box like ``test_http_edge``: raw HTTP on sockets, the fake Slack, the database file. What
counts is what a client or Slack could observe: every connection answered (no reset), a 413
before the body was sent, a slow client cut off while others are served, and after a SIGTERM in
the middle of a burst, every command that got its 200 recorded as a request once the inbox has
been drained (by a second replica on the same database).
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.cli import env_for, free_port, kfbot, readyz
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, sign, slash_command_body
from tests.fakes.slack_bot import ADMIN_CHANNEL

pytestmark = pytest.mark.slow

ALICE = "U0ALICE01"
WAIT = 60.0


@dataclass
class Serve:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    health_port: int


@contextmanager
def serving(workdir: Path, fake: FakeSlack, **env: str) -> Iterator[Serve]:
    port = free_port()
    environ = env_for(
        workdir,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        KFBOT_ADMIN_CHANNEL=ADMIN_CHANNEL,
        KFBOT_SLACK_API_URL=fake.base_url,
        KFBOT_HTTP_HOST="127.0.0.1",
        KFBOT_HTTP_PORT=str(port),
        KFBOT_LOG_FORMAT="text",
        **{"KFBOT_HEALTH_PORT": str(free_port()), **env},
    )
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve"], cwd=workdir, env=environ,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        fake.wait_for(lambda: readyz(port) or proc.poll() is not None, 30, "kfbot serve to be ready")
        assert proc.poll() is None, log.read_text()
        yield Serve(port, proc, log, int(environ["KFBOT_HEALTH_PORT"]))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


TRY_AGAIN = -2
"""``command``'s result for a 200 that says "could not record this; try again": nothing was done."""


def command(port: int, text: str, trigger: str, fake: FakeSlack) -> int:
    """One signed ``/kf`` over its own connection; the status, -1 when the connection failed, or
    ``TRY_AGAIN`` (the edge could not record it in time: answered, and nothing done)."""
    body = slash_command_body(
        text, user_id=ALICE, trigger_id=trigger, response_url=fake.response_url(trigger)
    )
    signed = sign(body, SIGNING_SECRET).items()
    head = ["POST /slack/events HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in signed)]  # fmt: skip
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return -1
    head_lines = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    if not answer.startswith(b"HTTP/") or b"server: kf-chatops" not in head_lines:
        # Not our replica's answer: a connection made after it closed its port can reach whichever
        # process took the port next (another xdist worker's server). For this replica: refused.
        return -1
    if b"could not record this; try again" in answer:
        return TRY_AGAIN
    return int(answer.split(b" ", 2)[1])


def burst(port: int, fake: FakeSlack, n: int, prefix: str) -> dict[str, int]:
    """``n`` commands at once, each on its own connection and thread: trigger id -> status."""
    triggers = [f"{prefix}{i:04d}.{i}.trigger" for i in range(n)]
    start = threading.Barrier(n)

    def one(i: int) -> int:
        start.wait()
        return command(port, f"workspace new {prefix}-{i:03d}", triggers[i], fake)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return dict(zip(triggers, pool.map(one, range(n)), strict=True))


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def recorded_triggers(db: Path) -> set[str]:
    return {str(key).removeprefix("slash:") for (key,) in rows(db, "select key from idempotency_keys")}


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_user(ALICE, "alice@example.com")
        yield fake


def test_a_burst_of_120_commands_is_answered_without_a_reset_and_each_is_recorded(
    tmp_path: Path, fake: FakeSlack
) -> None:
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake) as serve:
        statuses = burst(serve.port, fake, 120, "burst")
        assert sorted(set(statuses.values())) == [200], [s for s in statuses.values() if s != 200]
        fake.wait_for(lambda: len(recorded_triggers(tmp_path / "kfbot.db")) == 120, WAIT, "120 requests")
        fake.wait_for(lambda: all(fake.responses.get(t) for t in statuses), WAIT, "120 replies")
        fake.wait_for(lambda: rows(tmp_path / "kfbot.db", "select count(*) from slack_inbox") == [(0,)], WAIT)
    assert recorded_triggers(tmp_path / "kfbot.db") == set(statuses)
    assert rows(tmp_path / "kfbot.db", "select count(*) from requests") == [(120,)]
    assert "busy" not in " ".join(str(r) for replies in fake.responses.values() for r in replies)


def test_a_body_over_the_limit_is_refused_before_it_is_sent(tmp_path: Path, fake: FakeSlack) -> None:
    """Headers announcing 2 MB, and not a byte of body: the 413 comes back anyway, so the server
    decided from Content-Length without waiting for (or reading) the body."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake) as serve, socket.create_connection(("127.0.0.1", serve.port), 10) as sock:
        sock.sendall(
            b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2097152\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]


def test_a_chunked_body_is_refused_without_being_read(tmp_path: Path, fake: FakeSlack) -> None:
    """Slack always sends Content-Length; a chunked body (whose size nobody announced) is refused
    by the server before a chunk is read, and the connection closed: the client is still sending
    when the answer comes back."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    chunk = b"x" * 65536
    with serving(tmp_path, fake) as serve, socket.create_connection(("127.0.0.1", serve.port), 10) as sock:
        sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")  # the first of many, never the last
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 411 "), answer[:80]


Slow = tuple[socket.socket, socket.socket, threading.Event, list[threading.Thread], dict[str, float]]


def _hold_two_threads(port: int) -> Slow:
    """Two slow clients: one stops mid-headers, one trickles a header byte at a time (each read
    succeeds, so only the request deadline stops it). ``cut`` gets the moment each was
    disconnected by the server; setting the event stops the trickle."""
    silent = socket.create_connection(("127.0.0.1", port), 10)
    silent.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Le")
    trickle = socket.create_connection(("127.0.0.1", port), 10)
    trickle.sendall(b"POST /slack/events HTTP/1.1\r\n")
    cut: dict[str, float] = {}
    stop = threading.Event()

    def keep_trickling() -> None:
        try:
            while not stop.is_set():
                trickle.sendall(b"X")
                stop.wait(0.2)
        except OSError:
            cut["trickle"] = time.monotonic()

    def watch_silent() -> None:
        silent.settimeout(120)
        try:
            silent.recv(1)  # EOF, a reset, or an answer (a 408, say) before the close
        except TimeoutError:
            return  # still connected: not cut
        except OSError:
            pass
        cut["silent"] = time.monotonic()

    threads = [
        threading.Thread(target=keep_trickling, daemon=True),
        threading.Thread(target=watch_silent, daemon=True),
    ]
    for thread in threads:
        thread.start()
    return silent, trickle, stop, threads, cut


def test_slow_clients_do_not_block_others(tmp_path: Path, fake: FakeSlack) -> None:
    """Two slow clients hold two of four threads, with limits they cannot reach during the test:
    a signed command is answered while both are still connected, so it waited for neither. (A
    short limit raced the command against the cut-off on a loaded machine; the cut-off itself
    is proved by the next test.)"""
    assert kfbot(tmp_path, "migrate").returncode == 0
    env = {"KFBOT_HTTP_THREADS": "4", "KFBOT_HTTP_TIMEOUT": "120", "KFBOT_HTTP_READ_DEADLINE": "60"}
    with serving(tmp_path, fake, **env) as serve:
        silent, trickle, stop, threads, cut = _hold_two_threads(serve.port)
        try:
            answered = command(serve.port, "workspace new team-ok", "ok.1.trigger", fake)
            held = dict(cut)
        finally:
            stop.set()
            for sock in (silent, trickle):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the watcher's recv
                sock.close()
            for thread in threads:
                thread.join(timeout=10)
    assert answered == 200
    assert held == {}  # neither slow client had been let go when the command was answered


def test_slow_clients_are_cut_off(tmp_path: Path, fake: FakeSlack) -> None:
    """The same two slow clients with short limits: the server disconnects both (the silent one
    at its idle timeout, the trickling one at the request deadline, though every read succeeds)."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake, KFBOT_HTTP_THREADS="4", KFBOT_HTTP_TIMEOUT="3") as serve:
        silent, trickle, stop, threads, cut = _hold_two_threads(serve.port)
        try:
            for thread in threads:
                thread.join(timeout=60)
        finally:
            stop.set()
            silent.close()
            trickle.close()
    assert set(cut) == {"silent", "trickle"}  # both were disconnected by the server


def test_sigterm_during_a_burst_loses_no_acked_command(tmp_path: Path, fake: FakeSlack) -> None:
    """SIGTERM while 100 commands arrive: the replica stops accepting, answers what it took, and
    exits 0 within its shutdown budget. Every command that got a 200 is then either a request
    already or a row in the inbox; a second replica on the same database finishes the rest. So
    each acked command ends as exactly one request, and nothing un-acked was recorded twice."""
    db = tmp_path / "kfbot.db"
    assert kfbot(tmp_path, "migrate").returncode == 0
    statuses: dict[str, int] = {}
    with serving(tmp_path, fake, KFBOT_SHUTDOWN_SECONDS="15") as serve:
        done = threading.Event()

        def run() -> None:
            statuses.update(burst(serve.port, fake, 100, "term"))
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        fake.wait_for(lambda: len(fake.responses) >= 5, WAIT, "the burst to be under way")
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=40) == 0
        thread.join(timeout=60)
        assert done.is_set()
    acked = {t for t, status in statuses.items() if status == 200}
    assert acked  # the burst was under way
    # Answered, told to try again (a write that waited past the edge's bound), or refused at the
    # door: never a 5xx, and a command told to try again was never carried out.
    assert set(statuses.values()) <= {200, TRY_AGAIN, -1}
    told_again = {t for t, status in statuses.items() if status == TRY_AGAIN}
    inbox = {str(key).removeprefix("command:") for (key,) in rows(db, "select key from slack_inbox")}
    print(f"SIGTERM burst: {len(acked)} acked, {len(statuses) - len(acked)} refused at the door, "
          f"{len(inbox)} left in the inbox for another replica")  # fmt: skip
    assert acked <= recorded_triggers(db) | inbox
    with serving(tmp_path, fake):  # another replica: it takes the inbox over
        fake.wait_for(lambda: rows(db, "select count(*) from slack_inbox") == [(0,)], WAIT, "the inbox")
    assert acked <= recorded_triggers(db) and not told_again & recorded_triggers(db)
    assert rows(db, "select count(*) from requests") == [(len(recorded_triggers(db)),)]


def test_the_listen_backlog_is_1024(tmp_path: Path, fake: FakeSlack) -> None:
    """What the kernel holds for the listening socket (``ss`` shows the backlog as Send-Q)."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake) as serve:
        listing = subprocess.run(
            ["ss", "-Hltn", f"sport = :{serve.port}"], capture_output=True, text=True, check=True
        ).stdout.split()
    assert listing[0] == "LISTEN" and int(listing[2]) >= 1024, listing


def test_past_threads_and_queue_a_connection_is_answered_503_at_once(tmp_path: Path, fake: FakeSlack) -> None:
    """The connection limit: two threads held by clients that send half a request line, one more
    such client waiting in the queue of one; the next connection gets 503 instead of waiting."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    env = {"KFBOT_HTTP_THREADS": "2", "KFBOT_HTTP_QUEUE": "1", "KFBOT_HTTP_TIMEOUT": "20"}
    with serving(tmp_path, fake, **env) as serve:
        holders = []
        for _ in range(3):
            holder = socket.create_connection(("127.0.0.1", serve.port), 10)
            holder.sendall(b"GET /healthz HTT")
            holders.append(holder)
            time.sleep(0.3)  # let the server take each one before the next (ordering, not a timing assertion)
        try:
            with socket.create_connection(("127.0.0.1", serve.port), 10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = sock.recv(65536)
        finally:
            for holder in holders:
                holder.close()
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]


SLOW_BODY_HEAD = (
    b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"X-Slack-Request-Timestamp: 1\r\nX-Slack-Signature: v0=00\r\nContent-Length: 1000\r\n\r\n"
)


def health(port: int, path: str = "/healthz") -> int:
    """The status of a GET on ``path``, or -1 when it was not answered within 30 s (a starved
    listener never answers; a loaded machine answers late)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = sock.recv(65536)
    except OSError:
        return -1
    head_lines = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    if not answer.startswith(b"HTTP/") or b"server: kf-chatops" not in head_lines:
        # Not our replica's answer: a connection made after it closed its port can reach whichever
        # process took the port next (another xdist worker's server). For this replica: refused.
        return -1
    if b"could not record this; try again" in answer:
        return TRY_AGAIN
    return int(answer.split(b" ", 2)[1])


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent on ``sock`` before it closed it (EOF or reset), or None when it was
    still open after ``within`` seconds."""
    sock.settimeout(within)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk  # an answer (a 408, say) before the close is fine
    except TimeoutError:
        return None
    except OSError:
        pass
    return answer


def test_slow_bodies_and_idle_connections_starve_neither_commands_nor_health(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """The atk2 slowloris, both halves at once with the default limits: 32 unsigned requests that
    declare a 1000-byte body and trickle it a byte a second (every read succeeds, so no per-read
    timeout ends them), and 32 connections that never send a byte. A signed ``/kf help`` is still
    answered (the generous bound is the read deadline plus slack, never a performance claim),
    ``/healthz``, ``/readyz`` and ``/metrics`` on the health listener answer during the attack, and every
    trickling connection is closed by the server at the read deadline."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake) as serve:
        idle = [socket.create_connection(("127.0.0.1", serve.port), 10) for _ in range(32)]
        slow = [socket.create_connection(("127.0.0.1", serve.port), 10) for _ in range(32)]
        for sock in slow:
            sock.sendall(SLOW_BODY_HEAD)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                for sock in slow:
                    with suppress(OSError):
                        sock.send(b"a")
                stop.wait(1.0)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            time.sleep(1.0)  # ordering: the server has taken the slow and idle connections first
            paths = ("/healthz", "/readyz", "/metrics")
            health_during = tuple(health(serve.health_port, path) for path in paths)
            answered = command(serve.port, "help", "help.1.trigger", fake)
            health_after = health(serve.health_port)
            with ThreadPoolExecutor(max_workers=32) as pool:
                cut = [answer is not None for answer in pool.map(lambda s: closed_by_server(s, 20.0), slow)]
            fake.wait_for(lambda: fake.responses.get("help.1.trigger"), WAIT, "the help reply")
        finally:
            stop.set()
            trickler.join(timeout=10)
            for sock in idle + slow:
                sock.close()
    assert health_during == (200, 200, 200)
    assert answered == 200
    assert health_after == 200
    assert all(cut), f"{cut.count(False)} of 32 trickling connections were still open after 20 s"


def test_a_request_trickling_its_body_is_cut_off_at_the_read_deadline(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """One signed-looking request whose body arrives a byte every 0.3 s: each read succeeds, so
    only the whole-request deadline stops it. The server closes it without a 2xx, and it is still
    open a moment after the headers (the deadline runs from the first byte, not per read). The
    deadline is ten times that moment, so a stalled test thread does not see the cut early."""
    assert kfbot(tmp_path, "migrate").returncode == 0
    with serving(tmp_path, fake, KFBOT_HTTP_READ_DEADLINE="5") as serve:
        with socket.create_connection(("127.0.0.1", serve.port), 10) as sock:
            sock.sendall(SLOW_BODY_HEAD)
            stop = threading.Event()

            def trickle() -> None:
                while not stop.is_set():
                    with suppress(OSError):
                        sock.send(b"a")
                    stop.wait(0.3)

            trickler = threading.Thread(target=trickle)
            trickler.start()
            try:
                early = closed_by_server(sock, 0.5)
                answer = closed_by_server(sock, 20.0)
            finally:
                stop.set()
                trickler.join(timeout=5)
        assert health(serve.port) == 200  # the thread it held serves again
        assert health(serve.health_port, "/slack/events") == 404  # the health listener serves no Slack
    assert early is None  # not cut off before its deadline
    assert answer is not None  # but cut off, though every read succeeded
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:80]
