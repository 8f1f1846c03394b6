"""The gate of ``/slack/events``: Slack's request signature, checked in front of Bolt.

Why not leave it to Bolt: its verifier calls ``int()`` on the timestamp header, so ``abc`` raises
inside Bolt's middleware; Bolt hands that error to ``@app.error`` with the unverified body, and its
failure path logs the whole body. A WSGI layer of our own also keeps the rule independent of the
HTTP server that runs it.

The order is the point: method, a bounded ``Content-Length``, the exact bytes, the timestamp
(ASCII digits within ``MAX_SKEW_SECONDS`` of now, either way), the ``v0=`` HMAC-SHA256 compared in
constant time; only then are the bytes decoded, parsed and handed to Bolt. A refused request is
answered 4xx (never 500) and leaves one log line: its size and the reason; the bytes of one that
failed verification are never parsed, dispatched or logged. A verified request's signature is
then recorded (``Seen``: ``provisioning.SeenSignatures``, shared by the replicas) before Bolt sees
it: the same signature again, a replay of the captured bytes within the window, is answered an
empty 200 and dropped. Slack's own retries are new requests (an event's retry carries a new
timestamp, so a new signature, and ``X-Slack-Retry-Num``) and are served as any other.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from wsgiref.types import StartResponse, WSGIEnvironment

from slack_bolt import App
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_bolt.adapter.wsgi.http_response import WsgiHttpResponse
from slack_bolt.request import BoltRequest

import provisioning
from bot import logging as log
from bot.http import MAX_BODY_BYTES, json_response

logger = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 300
"""Slack's own replay window for the signature's timestamp."""
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # not \d: int() would also take other scripts' digits
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "application/json"})
_CHUNK = 64 * 1024
REPLAY_SKEW_SECONDS = 60
"""How far replicas' clocks may disagree: a signature is kept this long past the window, so a
replica whose clock is behind cannot accept it again after another pruned it."""

UNRECORDED_TEXT = "kf-chatops could not record this; try again (ref {ref})."
"""The whole answer to a slash command the edge could not record (its signature or its inbox row:
the database failed or held a lock too long): nothing was done, so asking again is safe. Other
requests get an empty 200 (Slack would only retry an event, never a click or a submission)."""


def unrecorded(body: object, cid: str) -> str:
    """The answer to a request that could not be recorded: the try-again text for a slash command,
    else nothing. Never a 5xx: Slack shows the person an opaque failure for one."""
    return UNRECORDED_TEXT.format(ref=cid) if isinstance(body, dict) and body.get("command") else ""


Seen = Callable[[str, int], bool]
"""(signature, its timestamp) -> True the first time, False for a replay."""


def replay_guard(signatures: provisioning.SeenSignatures) -> Seen:
    """``Seen`` over the database: a signature is kept until its timestamp's window (and the skew
    between replicas) has passed, after which ``signature_error`` refuses it anyway."""

    def first(signature: str, timestamp: int) -> bool:
        expires = datetime.fromtimestamp(timestamp + MAX_SKEW_SECONDS + REPLAY_SKEW_SECONDS, UTC)
        return signatures.first(signature, expires, now=datetime.now(UTC))

    return first


class _Refused(Exception):
    def __init__(self, status: str, reason: str, size: int = 0, answer: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.size = status, reason, size
        self.answer = answer or reason


def signature_error(secret: bytes, timestamp: str, signature: str, body: bytes, now: float) -> str | None:
    """None when ``signature`` is Slack's ``v0`` signature of ``body`` made with ``secret`` at
    ``timestamp``, and ``timestamp`` is within ``MAX_SKEW_SECONDS`` of ``now``; else the reason."""
    if not _TIMESTAMP.fullmatch(timestamp):
        return "malformed timestamp"
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        return "timestamp outside the replay window"
    if not _SIGNATURE.fullmatch(signature):
        return "malformed signature"
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    expected = b"v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest().encode("ascii")
    if not hmac.compare_digest(expected, signature.encode("ascii")):
        return "signature mismatch"
    return None


class SlackEndpoint:
    """WSGI app for ``/slack/events``: verifies, then dispatches to the Bolt ``app``."""

    def __init__(self, app: App, signing_secret: str, seen: Seen | None = None) -> None:
        self._app, self._secret, self._seen = app, signing_secret.encode(), seen

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            request = self._verified(environ)
        except _Refused as refused:
            logger.info("refused a request to /slack/events: %s (%d bytes)", refused.reason, refused.size)
            headers = [("Allow", "POST")] if refused.status.startswith("405") else []
            return json_response(start_response, refused.status, {"error": refused.answer}, headers)
        if self._seen is not None:
            signature = str(environ.get("HTTP_X_SLACK_SIGNATURE", ""))
            timestamp = int(str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")))  # verified digits
            try:
                first = self._seen(signature, timestamp)
            except Exception as exc:  # fail closed: unrecorded, it could be carried out twice
                with log.bound(log.new_correlation_id()) as cid:
                    logger.warning(
                        "could not record a Slack request's signature; answered try again, nothing done: %s",
                        type(exc).__name__,
                    )
                answer = unrecorded(request.body, cid)
                if answer:
                    return json_response(start_response, "200 OK", {"text": answer})
                start_response("200 OK", [("Content-Length", "0")])
                return [b""]
            if not first:
                logger.info("dropped a replayed Slack request (its signature was seen)")
                start_response("200 OK", [("Content-Length", "0")])
                return [b""]
        try:
            response = self._app.dispatch(request)
        except Exception as exc:  # raised in Bolt, before any code of ours: one line, no payload
            # Bolt reads a signed payload's shape (its first action, its view's type, a workflow
            # step) while building arguments for middleware and listeners alike, so a shape Slack
            # never sends raises before the catch-all listeners (``bot.listeners``) or even
            # ``@app.error`` could take it: acknowledged and dropped, like any unhandled interaction.
            with log.bound(log.new_correlation_id()):
                logger.warning("dropped a signed Slack request Bolt could not read: %s", type(exc).__name__)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        wsgi = WsgiHttpResponse(status=response.status, headers=response.headers, body=response.body)
        start_response(wsgi.status, wsgi.get_headers())
        return wsgi.get_body()

    def _verified(self, environ: WSGIEnvironment) -> BoltRequest:
        if environ.get("REQUEST_METHOD") != "POST":
            raise _Refused("405 Method Not Allowed", "method not allowed")
        body = self._body(environ)
        reason = signature_error(
            self._secret,
            str(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")),
            str(environ.get("HTTP_X_SLACK_SIGNATURE", "")),
            body,
            time.time(),  # wall-clock time, as Slack's: not the core's clock, which tests may move
        )
        if reason is not None:
            raise _Refused("401 Unauthorized", reason, len(body), answer="invalid request")
        # Verified: from here on the bytes are Slack's, so parsing them is safe to attempt.
        media_type = str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()
        if media_type not in _MEDIA_TYPES:
            raise _Refused("415 Unsupported Media Type", "unsupported content type", len(body))
        try:
            return BoltRequest(
                body=body.decode("utf-8"),
                query=str(environ.get("QUERY_STRING", "")),
                headers=WsgiHttpRequest(environ).get_headers(),
            )
        except (ValueError, TypeError, AttributeError, LookupError) as exc:  # bad UTF-8 or JSON, odd shapes
            raise _Refused("400 Bad Request", f"unparseable body ({type(exc).__name__})", len(body)) from None

    def _body(self, environ: WSGIEnvironment) -> bytes:
        declared = str(environ.get("CONTENT_LENGTH") or "")
        if not declared:
            raise _Refused("411 Length Required", "no Content-Length")
        if not declared.isascii() or not declared.isdigit():
            raise _Refused("400 Bad Request", "invalid Content-Length")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            raise _Refused("413 Request Entity Too Large", "body too large", length)
        stream = environ["wsgi.input"]
        chunks: list[bytes] = []
        remaining = length
        while remaining:
            try:
                chunk = stream.read(min(remaining, _CHUNK))
            except OSError:  # the client stalled past the server's timeout or went away
                chunk = b""
            if not chunk:
                raise _Refused("400 Bad Request", "body shorter than its Content-Length", length - remaining)
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
