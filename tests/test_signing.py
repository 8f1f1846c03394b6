"""The gate of ``/slack/events`` from inside: ``bot.signing.signature_error`` against slack_sdk's
own signer, and the defences behind the gate that hold even for a request that reaches Bolt
without it: the error handler answers no one for an unverified request, and Bolt's log lines
never carry a body. (``tests/test_http_edge.py`` attacks the running server from outside.)"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.app import Running
from bot.signing import MAX_SKEW_SECONDS, SlackEndpoint, signature_error
from provisioning.store import Database
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, slash_command_body
from tests.fakes.slack_bot import bot_settings, running_bot

SECRET = SIGNING_SECRET.encode()
NOW = 1_800_000_000
MARKER = "kfmarker-signing-0badc0de"
UNUSED_APP = App(token=BOT_TOKEN, signing_secret=SIGNING_SECRET, token_verification_enabled=False)
"""For requests the endpoint refuses before dispatch (it never calls Slack)."""


def slack_sdk_signature(timestamp: str, body: bytes) -> str:
    made = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=timestamp, body=body)
    assert made is not None
    return made


@settings(max_examples=200)
@given(body=st.text(max_size=300).map(str.encode), skew=st.integers(-MAX_SKEW_SECONDS, MAX_SKEW_SECONDS))
def test_slack_sdk_signatures_within_the_window_are_accepted(body: bytes, skew: int) -> None:
    timestamp = str(NOW + skew)
    assert signature_error(SECRET, timestamp, slack_sdk_signature(timestamp, body), body, NOW) is None


@settings(max_examples=200)
@given(body=st.text(min_size=1, max_size=300).map(str.encode), data=st.data())
def test_any_changed_byte_of_the_body_or_signature_is_refused(body: bytes, data: st.DataObject) -> None:
    timestamp = str(NOW)
    good = slack_sdk_signature(timestamp, body)
    at = data.draw(st.integers(0, len(body) - 1))
    tampered = body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]
    assert signature_error(SECRET, timestamp, good, tampered, NOW) == "signature mismatch"
    spot = data.draw(st.integers(len("v0="), len(good) - 1))
    flipped = good[:spot] + ("0" if good[spot] != "0" else "1") + good[spot + 1 :]
    assert signature_error(SECRET, timestamp, flipped, body, NOW) == "signature mismatch"


@settings(max_examples=300)
@given(timestamp=st.text(max_size=30), sig=st.text(max_size=80), body=st.binary(max_size=100))
def test_arbitrary_headers_never_raise_and_are_refused(timestamp: str, sig: str, body: bytes) -> None:
    assert signature_error(SECRET, timestamp, sig, body, NOW) is not None


WINDOW = MAX_SKEW_SECONDS


@pytest.mark.parametrize(
    ("skew", "accepted"), [(-WINDOW - 1, False), (-WINDOW, True), (WINDOW, True), (WINDOW + 1, False)]
)
def test_the_replay_window_is_five_minutes_either_way(skew: int, accepted: bool) -> None:
    timestamp = str(NOW + skew)
    error = signature_error(SECRET, timestamp, slack_sdk_signature(timestamp, b"x=1"), b"x=1", NOW)
    assert (error is None) == accepted


KEYS = ["team", "user", "enterprise", "channel", "type", "event", "view", "container", "authorizations"]
"""Keys Bolt reads while building a request's context."""
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON, form=st.booleans())
def test_a_signed_body_bolt_cannot_parse_is_400_not_500(value: object, form: bool) -> None:
    """Slack never signs these; should the secret leak, they still must not crash the endpoint."""
    text = f"payload={json.dumps(value)}" if form else json.dumps(value)
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    try:
        BoltRequest(body=text, headers={"content-type": content_type})
    except Exception:  # whatever Bolt's parser raises, the endpoint must absorb
        parseable = False
    else:
        parseable = True
    assume(not parseable)
    body = text.encode()
    timestamp = str(int(time.time()))
    environ = {
        "REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "HTTP_X_SLACK_REQUEST_TIMESTAMP": timestamp,
        "HTTP_X_SLACK_SIGNATURE": slack_sdk_signature(timestamp, body),
    }  # fmt: skip
    statuses: list[str] = []
    SlackEndpoint(UNUSED_APP, SIGNING_SECRET)(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["400 Bad Request"]


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path) -> Iterator[Running]:
    fake_slack.add_user("U0EVIL001", "evil@example.com")
    with running_bot(bot_settings(fake_slack, tmp_path, admins="U0ADMIN01")) as running:
        yield running


def unverified(fake: FakeSlack, timestamp: str) -> BoltRequest:
    """A hostile slash command handed to Bolt directly, past the WSGI gate (as if it were missing)."""
    body = slash_command_body(
        f"workspace new {MARKER}",
        user_id="U0EVIL001",
        channel_id="C0EVIL001",
        response_url=fake.response_url("evil"),
    )
    headers: dict[str, str | Sequence[str]] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": "v0=" + "0" * 64,
    }
    return BoltRequest(body=body.decode(), headers=headers)


def test_the_error_handler_answers_no_one_for_a_request_bolt_failed_to_verify(
    bot: Running, fake_slack: FakeSlack
) -> None:
    """slack_sdk's verifier raises on a non-numeric timestamp and Bolt passes that to ``@app.error``
    with the unverified body: its response_url and channel must not be answered."""
    response = bot.edge.app.dispatch(unverified(fake_slack, "abc"))
    assert response.status == 500  # Bolt's own answer; the gate in front never lets this through
    time.sleep(0.3)
    assert fake_slack.responses == {}
    assert [c.method for c in fake_slack.calls if c.method.startswith(("chat.", "conversations."))] == []


def test_bolt_never_logs_a_body_at_any_level(
    bot: Running, fake_slack: FakeSlack, debug_log: io.StringIO
) -> None:
    """Bolt 1.x logs a request that fails its signature check, body and all, at INFO."""
    response = bot.edge.app.dispatch(unverified(fake_slack, str(int(time.time()))))
    assert response.status == 401
    logging.getLogger("slack_bolt.Any").warning(
        "middleware skipped next() for the request (%s)", {"text": MARKER}
    )
    logging.getLogger("bot.listeners").info("still logged")
    text = debug_log.getvalue()
    assert MARKER not in text
    assert "middleware skipped next() for the request ([body omitted]" in text
    assert "still logged" in text


def test_a_new_sqlite_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask, which leaves new files world-readable
    try:
        db = Database(f"sqlite:///{tmp_path / 'kfbot.db'}", audit_key=b"k" * 32)
        db.migrate()
        with db.engine.connect():
            files = sorted(tmp_path.iterdir())
            assert [f.name for f in files] == ["kfbot.db", "kfbot.db-shm", "kfbot.db-wal"]
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        db.dispose()
    finally:
        os.umask(previous)
