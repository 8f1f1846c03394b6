"""Slack's Socket Mode endpoint, faked over a real WebSocket on 127.0.0.1.

What the real service does, as slack_sdk's Socket Mode clients (``slack_sdk/socket_mode``) and
Slack's Socket Mode documentation describe it:

- ``apps.connections.open``, called with the app-level token (``xapp-…``), answers a single-use
  ``wss://wss-primary.slack.com/link/?ticket=…&app_id=…`` URL; here ``FakeSlack`` answers
  ``ws://127.0.0.1:PORT/link/?ticket=…`` from ``FakeSocketMode.issue_url``. A ticket is good for
  one connection; any other upgrade is refused with 403, as Slack does.
- On connect the server sends ``{"type": "hello", "num_connections": N, "debug_info": {…},
  "connection_info": {"app_id": …}}``.
- Each delivery is an envelope ``{"envelope_id", "type": "slash_commands" | "interactive" |
  "events_api", "payload", "accepts_response_payload", "retry_attempt", "retry_reason"}`` whose
  ``payload`` is what HTTP mode would POST (the decoded form of a slash command, the ``payload``
  JSON of an interaction, the ``event_callback`` of an event).
- The client acknowledges with ``{"envelope_id": …}``, plus ``"payload"`` when it answers inline
  (a modal's ``response_action``). Slack redelivers an envelope not acknowledged in time.
- ``{"type": "disconnect", "reason": "refresh_requested", "debug_info": {…}}`` asks the client to
  open a new connection (it calls ``apps.connections.open`` again) before this one is closed.

Tests assert on what a client did over the socket: the acknowledgements it sent (``ack_for``),
how many connections it opened (``connections``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from tests.fakes.slack import DEFAULT_APP_ID, DEFAULT_TEAM_ID

Json = dict[str, Any]


def slash_payload(body: bytes) -> Json:
    """A slash command's envelope payload: the url-encoded body HTTP mode gets, decoded."""
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def interactive_payload(body: bytes) -> Json:
    """An interaction's envelope payload: the JSON in HTTP mode's ``payload`` form field."""
    return cast(Json, json.loads(parse_qs(body.decode("utf-8"))["payload"][0]))


def event_payload(event: Mapping[str, Any], *, team_id: str = DEFAULT_TEAM_ID) -> Json:
    """An Events API ``event_callback`` as Slack wraps an event for delivery."""
    return {
        "token": "verification-token", "team_id": team_id, "context_team_id": team_id,
        "context_enterprise_id": None, "api_app_id": DEFAULT_APP_ID, "event": dict(event),
        "type": "event_callback", "event_id": f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()), "is_ext_shared_channel": False,
        "authorizations": [{"enterprise_id": None, "team_id": team_id, "user_id": "UKFBOT001",
                            "is_bot": True, "is_enterprise_install": False}],
    }  # fmt: skip


class FakeSocketMode:
    """The WebSocket side of Socket Mode. Start it (or use it as a context manager) and hand it to
    ``FakeSlack.socket_mode``, which then answers ``apps.connections.open`` with ``issue_url()``."""

    def __init__(self, *, app_id: str = DEFAULT_APP_ID) -> None:
        self.app_id = app_id
        self._lock = threading.Condition()
        self._tickets: set[str] = set()
        self._current: ServerConnection | None = None
        self._opened = 0
        self._refused = 0
        self._acks: dict[str, Json] = {}
        self._envelopes: dict[str, Json] = {}
        self._strays: list[str] = []
        self._server: Server = serve(self._session, "127.0.0.1", 0, process_request=self._check_ticket)
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeSocketMode:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    def issue_url(self) -> str:
        """What ``apps.connections.open`` answers: a URL with a fresh single-use ticket."""
        ticket = secrets.token_hex(16)
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"

    # -- what the client did -------------------------------------------------------------------
    @property
    def connections(self) -> int:
        """Connections accepted so far (each used a ticket from ``apps.connections.open``)."""
        with self._lock:
            return self._opened

    @property
    def refused(self) -> int:
        """Upgrades refused for a missing, unknown or reused ticket."""
        with self._lock:
            return self._refused

    @property
    def unacknowledged(self) -> list[str]:
        with self._lock:
            return [eid for eid in self._envelopes if eid not in self._acks]

    @property
    def strays(self) -> list[str]:
        """Messages from the client that acknowledge no envelope we sent."""
        with self._lock:
            return list(self._strays)

    def wait_connected(self, count: int = 1, timeout: float = 60.0) -> None:
        """Until ``count`` connections have been opened and the latest one is live."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._opened >= count and self._current is not None, timeout):
                raise AssertionError(
                    f"no Socket Mode connection #{count} within {timeout}s ({self._opened} so far)"
                )

    def ack_for(self, envelope_id: str, timeout: float = 60.0) -> Json:
        """The client's acknowledgement of ``envelope_id`` (fails when none comes)."""
        with self._lock:
            if not self._lock.wait_for(lambda: envelope_id in self._acks, timeout):
                raise AssertionError(f"envelope {envelope_id} was not acknowledged within {timeout}s")
            return self._acks[envelope_id]

    # -- what Slack sends ----------------------------------------------------------------------
    def deliver(
        self, kind: str, payload: Mapping[str, Any], *, accepts_response_payload: bool, retry_attempt: int = 0
    ) -> str:
        """Send one envelope over the live connection; its ``envelope_id``."""
        envelope_id = (
            f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        )
        envelope: Json = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": dict(payload),
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": retry_attempt,
            "retry_reason": "" if retry_attempt == 0 else "timeout",
        }
        with self._lock:
            self._envelopes[envelope_id] = envelope
        self._send(envelope)
        return envelope_id

    def slash(self, body: bytes) -> str:
        return self.deliver("slash_commands", slash_payload(body), accepts_response_payload=True)

    def interactive(self, body: bytes) -> str:
        payload = interactive_payload(body)
        # Slack lets a view submission answer inline (response_action); a button click cannot.
        inline = payload.get("type") == "view_submission"
        return self.deliver("interactive", payload, accepts_response_payload=inline)

    def event(self, event: Mapping[str, Any]) -> str:
        return self.deliver("events_api", event_payload(event), accepts_response_payload=False)

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the client to reconnect; the old connection is closed once a new one is open."""
        with self._lock:
            old, opened = self._current, self._opened
        assert old is not None, "no live connection to refresh"
        self._send({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})
        with self._lock:
            renewed = self._lock.wait_for(lambda: self._opened > opened, 60.0)
        old.close()
        if not renewed:
            raise AssertionError(f"the client did not reconnect after a disconnect ({reason})")

    # -- the server ----------------------------------------------------------------------------
    def _send(self, message: Json) -> None:
        with self._lock:
            connection = self._current
        if connection is None:
            raise AssertionError("no live Socket Mode connection")
        connection.send(json.dumps(message))

    def _check_ticket(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        ticket = (parse_qs(url.query).get("ticket") or [""])[0]
        with self._lock:
            if url.path == "/link/" and ticket in self._tickets:
                self._tickets.discard(ticket)  # single use, like Slack's
                return None
            self._refused += 1
        return connection.respond(HTTPStatus.FORBIDDEN, "invalid ticket\n")

    def _session(self, connection: ServerConnection) -> None:
        with self._lock:
            self._opened += 1
            opened = self._opened
            self._current = connection
            self._lock.notify_all()
        hello = {
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }
        connection.send(json.dumps(hello))
        try:
            for raw in connection:
                self._received(raw)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if self._current is connection and self._opened == opened:
                    self._current = None
                self._lock.notify_all()

    def _received(self, raw: str | bytes) -> None:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        with self._lock:
            envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
            if (
                isinstance(envelope_id, str)
                and envelope_id in self._envelopes
                and envelope_id not in self._acks
            ):
                self._acks[envelope_id] = cast(Json, message)
                self._lock.notify_all()
            else:
                self._strays.append(text[:200])
