"""``/slack/events`` attacked over real HTTP, with ``kfbot serve`` as a separate process.

Black-box, so it stays valid when the HTTP server is replaced: requests are raw bytes on a socket,
and what counts is only what anyone could observe: the status code, the fake Slack (API calls and
``response_url`` posts), the database file and the process's stderr (logs at DEBUG).

One server per module. The module fixture first sends a correctly signed slash command (the
positive control) and a replay of it; then the fake Slack is reset and the tables counted. Every
hostile request after that must get a 4xx and leave both untouched, and nothing of its body (each
carries ``MARKER``) may reach the logs. The figures (sent, wrongly accepted) are printed in the
terminal summary (``tests.fakes.figures``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.signing import MAX_BODY_BYTES
from tests.fakes.cli import env_for, free_port, kfbot, readyz
from tests.fakes.figures import count
from tests.fakes.slack import (
    BOT_TOKEN,
    DEFAULT_TEAM_ID,
    SIGNING_SECRET,
    FakeSlack,
    block_action_body,
    sign,
    slash_command_body,
    view_submission_body,
)
from tests.fakes.slack_bot import ADMIN_CHANNEL

pytestmark = pytest.mark.slow

MARKER = f"kfmarker{secrets.token_hex(8)}"
ALICE = "U0ALICE01"
EVIL = "U0EVIL001"  # a real user of the fake workspace: a request that got through could reach them
EVIL_CHANNEL = "C0EVIL001"
EVENTS = "/slack/events"
TABLES = ("requests", "audit_events", "idempotency_keys", "decision_keys", "timers")
SENT = "hostile HTTP requests sent to kfbot serve"
ACCEPTED = "hostile HTTP requests wrongly accepted (2xx/3xx)"
SERVER_ERRORS = "hostile HTTP requests answered 5xx"
WAIT = 60.0  # bounds a hang, not a claim: kfbot serve runs late on a loaded machine
SKEW = 360
"""Seconds off now for a stale or future timestamp: past Slack's 300, with room for a slow run."""
FORM = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"


def raw_request(
    method: str, headers: Mapping[str, str], body: bytes = b"", *, length: str | None = "auto"
) -> bytes:
    """An HTTP/1.1 request as bytes; ``length`` None sends no Content-Length, a string sends it as is."""
    lines = [f"{method} {EVENTS} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == 'auto' else length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def signature(timestamp: str, body: bytes, secret: str = SIGNING_SECRET) -> str:
    """Slack's ``v0`` signature over any timestamp string, including ones Slack would never send."""
    base = b"v0:" + timestamp.encode("utf-8") + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class Edge:
    port: int
    fake: FakeSlack
    db: Path
    log: Path
    baseline: dict[str, int] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)

    def exchange(self, raw: bytes) -> int:
        """Send ``raw``, close our side, read the whole answer; its status code."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/"), f"no HTTP answer: {answer[:80]!r}"
        return int(answer.split(b" ", 2)[1])

    def hostile(self, raw: bytes) -> int:
        """``exchange`` for a request that must be refused, counted in the run's figures."""
        status = self.exchange(raw)
        count(SENT)
        count(ACCEPTED, int(status < 400))
        count(SERVER_ERRORS, int(status >= 500))
        return status

    def post(self, body: bytes, headers: Mapping[str, str], *, method: str = "POST") -> int:
        return self.hostile(raw_request(method, headers, body))

    def counts(self) -> dict[str, int]:
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            return {table: conn.execute(f"select count(*) from {table}").fetchone()[0] for table in TABLES}

    def logs(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def assert_untouched(self) -> None:
        """No Slack call (but /readyz's ``auth.test``), no response_url post, no new row, no body logged."""
        assert [c.method for c in self.fake.calls if c.method != "auth.test"] == []
        assert self.fake.responses == {}
        assert self.counts() == self.baseline
        logs = self.logs()
        assert MARKER not in logs
        assert "Traceback" not in logs


def hostile_body(kind: str, fake: FakeSlack) -> bytes:
    """A body that names a response_url on the fake, a channel and a user, and carries ``MARKER``."""
    url = fake.response_url("hostile")
    if kind == "slash":
        return slash_command_body(
            f"workspace new {MARKER}", user_id=EVIL, channel_id=EVIL_CHANNEL, response_url=url
        )
    if kind == "action":
        return block_action_body(
            "approve", MARKER, user_id=EVIL, channel_id=EVIL_CHANNEL, message_ts="1.000001", response_url=url
        )
    if kind == "view":
        return view_submission_body("workspace_new", {"name": {"value": MARKER}}, user_id=EVIL)
    payload = {
        "type": "event_callback", "response_url": url, "channel_id": EVIL_CHANNEL, "user_id": EVIL,
        "event": {"type": "app_home_opened", "user": EVIL, "channel": EVIL_CHANNEL}, "text": MARKER,
    }  # fmt: skip
    if kind == "event":
        return json.dumps(payload).encode()
    if kind == "bad_json":
        return json.dumps(payload).encode()[:-7]
    if kind == "bad_utf8":
        return b"\xff\xfe" + json.dumps(payload).encode() + b"\xc3\x28"
    if kind == "truncated":
        full = hostile_body("slash", fake)
        return full[: full.index(MARKER.encode()) + len(MARKER)]
    raise AssertionError(kind)


BODY_KINDS = ("slash", "action", "view", "event", "bad_json", "bad_utf8", "truncated")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    for figure in (SENT, ACCEPTED, SERVER_ERRORS):
        count(figure, 0)
    workdir = tmp_path_factory.mktemp("http-edge")
    with FakeSlack() as fake:
        fake.add_user(ALICE, "alice@example.com")
        fake.add_user(EVIL, "evil@example.com")
        assert kfbot(workdir, "migrate").returncode == 0
        port = free_port()
        env = env_for(
            workdir,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            KFBOT_ADMIN_CHANNEL=ADMIN_CHANNEL,
            KFBOT_SLACK_API_URL=fake.base_url,
            KFBOT_HTTP_HOST="127.0.0.1",
            KFBOT_HTTP_PORT=str(port),
            KFBOT_LOG_LEVEL="DEBUG",
        )
        log = workdir / "serve.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve"], cwd=workdir, env=env,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            fake.wait_for(lambda: readyz(port), 60, "kfbot serve to be ready")
            edge = Edge(port, fake, workdir / "kfbot.db", log)
            edge.control = positive_control(edge)
            fake.reset()
            edge.baseline = edge.counts()
            yield edge
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def positive_control(edge: Edge) -> dict[str, Any]:
    """A signed ``/kf`` command, then the same bytes again (a replay inside the 5-minute window)."""
    fake = edge.fake
    body = slash_command_body(
        "workspace new team-a", user_id=ALICE, response_url=fake.response_url("control")
    )
    request = raw_request("POST", sign(body, SIGNING_SECRET), body)
    first = edge.exchange(request)
    fake.wait_for(lambda: fake.messages_in(ADMIN_CHANNEL) and fake.responses.get("control"), WAIT)
    replay = edge.exchange(request)  # answered and dropped: its signature was seen
    calls = -1
    while calls != len(fake.calls):  # let the control's last Slack calls land before the reset
        calls = len(fake.calls)
        time.sleep(0.3)
    return {
        "statuses": (first, replay),
        "cards": len(fake.messages_in(ADMIN_CHANNEL)),
        "counts": edge.counts(),
        "replies": [r.get("text", "") for r in fake.responses["control"]],
    }


def test_a_signed_command_works_and_its_replay_changes_nothing(edge: Edge) -> None:
    assert edge.control["statuses"] == (200, 200)
    assert edge.control["cards"] == 1
    assert edge.control["counts"]["requests"] == 1
    assert edge.control["counts"]["idempotency_keys"] == 1
    assert len(edge.control["replies"]) == 1  # the replay is not answered again


def test_the_database_files_are_private(edge: Edge) -> None:
    files = [edge.db, *(edge.db.with_name(edge.db.name + suffix) for suffix in ("-wal", "-shm"))]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


def test_a_tampered_body_is_401(edge: Edge) -> None:
    body = slash_command_body(
        "workspace new team-b", user_id=EVIL, response_url=edge.fake.response_url("hostile")
    )
    headers = sign(body, SIGNING_SECRET)
    assert edge.post(body.replace(b"team-b", MARKER.encode()), headers) == 401
    edge.assert_untouched()


NOW = "{now}"


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "",
        "1e9",
        "1.5",
        "-1",
        "0",
        "9" * 40,
        "+" + NOW,
        "1_" + NOW,
        "0x10",
        "arabic-indic-now",
        "stale",
        "future",
    ],
)
def test_a_timestamp_that_is_not_fresh_digits_is_401(edge: Edge, timestamp: str) -> None:
    """Each is signed correctly over its own timestamp: only the timestamp is wrong. ``int()`` reads
    ``+now``, ``1_now`` and now in Arabic-Indic digits as numbers."""
    now = int(time.time())
    special = {
        "stale": str(now - SKEW),
        "future": str(now + SKEW),
        "arabic-indic-now": "".join(chr(0x660 + int(digit)) for digit in str(now)),
    }
    timestamp = special.get(timestamp, timestamp.replace(NOW, str(now)))
    body = hostile_body("slash", edge.fake)
    headers = {
        "Content-Type": FORM,
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature(timestamp, body),
    }
    assert edge.post(body, headers) == 401
    edge.assert_untouched()


@pytest.mark.parametrize(
    "missing",
    [
        ("X-Slack-Request-Timestamp",),
        ("X-Slack-Signature",),
        ("X-Slack-Request-Timestamp", "X-Slack-Signature"),
    ],
)
def test_missing_signature_headers_are_401(edge: Edge, missing: tuple[str, ...]) -> None:
    body = hostile_body("slash", edge.fake)
    headers = {k: v for k, v in sign(body, SIGNING_SECRET).items() if k not in missing}
    assert edge.post(body, headers) == 401
    edge.assert_untouched()


@pytest.mark.parametrize(
    "forge",
    [
        lambda ts, body: "garbage",
        lambda ts, body: "v0=" + "0" * 64,
        lambda ts, body: signature(ts, body).upper(),
        lambda ts, body: "v1=" + signature(ts, body)[3:],
        lambda ts, body: signature(ts, body) + "0",
        lambda ts, body: signature(ts, body, "not-the-signing-secret"),
        lambda ts, body: signature(str(int(ts) - 1), body),
        lambda ts, body: signature(ts, body + b"&x=1"),
    ],
    ids=["garbage", "zeros", "uppercase", "v1", "longer", "wrong-secret", "other-timestamp", "other-body"],
)
def test_a_forged_signature_is_401(edge: Edge, forge: Any) -> None:
    body = hostile_body("action", edge.fake)
    ts = str(int(time.time()))
    headers = {"Content-Type": FORM, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": forge(ts, body)}
    assert edge.post(body, headers) == 401
    edge.assert_untouched()


@pytest.mark.parametrize("kind", BODY_KINDS)
@pytest.mark.parametrize(
    "content_type", [FORM, JSON_TYPE, "text/plain", "multipart/form-data; boundary=x", None]
)
def test_unsigned_bodies_of_any_shape_are_401_and_never_parsed(
    edge: Edge, kind: str, content_type: str | None
) -> None:
    body = hostile_body(kind, edge.fake)
    headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=" + "a" * 64}
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert edge.post(body, headers) == 401
    edge.assert_untouched()


@pytest.mark.parametrize(
    ("kind", "content_type", "status"),
    [
        ("bad_json", JSON_TYPE, 400),
        ("bad_utf8", JSON_TYPE, 400),
        ("bad_utf8", FORM, 400),
        ("json_array", JSON_TYPE, 400),
        ("payload_not_json", FORM, 400),
        ("event", "text/plain", 415),
        ("slash", "", 415),
    ],
)
def test_signed_but_malformed_bodies_are_400_or_415(
    edge: Edge, kind: str, content_type: str, status: int
) -> None:
    """Slack never sends these; if the secret leaked, they must still not crash the server."""
    extra = {"json_array": json.dumps([MARKER]).encode(), "payload_not_json": f"payload={MARKER}%7B".encode()}
    body = extra.get(kind) or hostile_body(kind, edge.fake)
    ts = str(int(time.time()))  # signed over the raw bytes: slack_sdk's signer only takes UTF-8
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(ts, body),
    }
    assert edge.post(body, headers) == status
    edge.assert_untouched()


def test_a_body_over_the_limit_is_413_before_it_is_read(edge: Edge) -> None:
    """Only the headers are sent: a server that started reading would see the body end early (400)."""
    headers = {"Content-Type": FORM, **sign(b"x", SIGNING_SECRET)}
    for size in (2 * 1024 * 1024, MAX_BODY_BYTES + 1, 10**15):
        assert edge.hostile(raw_request("POST", headers, length=str(size))) == 413
    edge.assert_untouched()


def test_a_body_at_the_limit_is_read_and_refused_unsigned(edge: Edge) -> None:
    body = (MARKER.encode() * (MAX_BODY_BYTES // len(MARKER) + 1))[:MAX_BODY_BYTES]
    assert (
        edge.post(body, {"Content-Type": FORM, "X-Slack-Request-Timestamp": "1", "X-Slack-Signature": "x"})
        == 401
    )
    edge.assert_untouched()


@pytest.mark.parametrize(
    ("length", "status"), [(None, 411), ("abc", 400), ("-1", 400), ("1e3", 400), ("+5", 400)]
)
def test_a_missing_or_invalid_content_length_is_refused(edge: Edge, length: str | None, status: int) -> None:
    headers = {"Content-Type": FORM, **sign(b"", SIGNING_SECRET)}
    assert edge.hostile(raw_request("POST", headers, length=length)) == status
    edge.assert_untouched()


def test_a_content_length_lie_is_400_or_401(edge: Edge) -> None:
    body = hostile_body("slash", edge.fake)
    headers = sign(body, SIGNING_SECRET)
    # claims more than is sent: the body ends early
    assert edge.hostile(raw_request("POST", headers, body, length=str(len(body) + 500))) == 400
    # claims less: the signature covers the whole body, not the part the length admits
    assert edge.hostile(raw_request("POST", headers, body, length=str(len(body) // 2))) == 401
    edge.assert_untouched()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(edge: Edge, method: str) -> None:
    headers = {"Content-Type": FORM, **sign(b"", SIGNING_SECRET)}
    assert edge.hostile(raw_request(method, headers)) == 405
    edge.assert_untouched()


_HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_characters="\x7f"), max_size=24
)
_TIMESTAMPS = st.one_of(
    st.sampled_from(["fresh", "stale", "future", None, "", "abc", "1e9", "1.5", "-5", "+fresh"]),
    st.integers(-(10**12), 10**13).map(str),
    _HEADER_TEXT,
)
_SIGNATURES = st.sampled_from(["right", "wrong-secret", "other-body", "zeros", "garbage", None, ""])


def forge(kind: str, timestamp: str, body: bytes) -> str:
    """An ``X-Slack-Signature`` value; "right" is correct, and only ever sent with a wrong timestamp."""
    forged = {
        "right": signature(timestamp, body),
        "wrong-secret": signature(timestamp, body, "not-the-signing-secret"),
        "other-body": signature(timestamp, body + b"x"),
        "zeros": "v0=" + "0" * 64,
        "garbage": MARKER,
    }
    return forged.get(kind, kind)


_CONTENT_TYPES = st.sampled_from(
    [FORM, JSON_TYPE, "application/json; charset=utf-8", "text/plain", None, "x/y"]
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(BODY_KINDS),
    padding=st.binary(max_size=2048) | st.just(b"=" * 10_000),
    ts_choice=_TIMESTAMPS,
    sig_choice=_SIGNATURES,
    content_type=_CONTENT_TYPES,
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
)
def test_hostile_requests_are_refused_and_change_nothing(
    edge: Edge,
    kind: str,
    padding: bytes,
    ts_choice: str | None,
    sig_choice: str | None,
    content_type: str | None,
    method: str,
) -> None:
    now = int(time.time())
    timestamp = None if ts_choice is None else {
        "fresh": str(now), "stale": str(now - SKEW), "future": str(now + SKEW), "+fresh": f"+{now}",
    }.get(ts_choice, ts_choice)  # fmt: skip
    fresh = (
        timestamp is not None
        and timestamp.isascii()
        and timestamp.isdigit()
        and abs(int(timestamp) - now) < SKEW
    )
    assume(not (sig_choice == "right" and fresh))  # that one is Slack's own request
    body = hostile_body(kind, edge.fake) + padding if method == "POST" else b""
    headers: dict[str, str] = {} if content_type is None else {"Content-Type": content_type}
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    if sig_choice is not None:
        headers["X-Slack-Signature"] = forge(sig_choice, timestamp or "", body)
    assert edge.post(body, headers, method=method) == (401 if method == "POST" else 405)
    edge.assert_untouched()


MALFORMED_INTERACTIONS = {
    "block_actions without actions": {"type": "block_actions", "actions": [], "response_url": MARKER},
    "view_submission whose view has no type": {
        "type": "view_submission", "view": {"id": "V1", "callback_id": MARKER, "state": {"values": {}}},
    },
    "workflow_step_edit without workflow_step": {"type": "workflow_step_edit", "callback_id": MARKER},
}  # fmt: skip


@pytest.mark.parametrize("payload", list(MALFORMED_INTERACTIONS.values()), ids=list(MALFORMED_INTERACTIONS))
def test_a_signed_interaction_bolt_cannot_read_is_acked_and_dropped(
    edge: Edge, payload: dict[str, Any]
) -> None:
    """Bolt reads an interaction's shape (its first action, its view's type) before any listener or
    middleware of ours: one it cannot read is acknowledged and dropped with one warning line, never
    a 500 and a traceback of the payload (atk4 finding 4)."""
    base = {"team": {"id": DEFAULT_TEAM_ID}, "user": {"id": "U0ALICE01", "team_id": DEFAULT_TEAM_ID},
            "api_app_id": "A111", "trigger_id": "1.2.malformed"}  # fmt: skip
    body = urllib.parse.urlencode({"payload": json.dumps({**base, **payload})}).encode()
    before = edge.logs().count("could not read")
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(ts, body),
    }
    # Signed, so Slack's own (if malformed): answered, not counted among the hostile requests.
    assert edge.exchange(raw_request("POST", headers, body)) == 200
    edge.assert_untouched()
    assert edge.logs().count("could not read") == before + 1
