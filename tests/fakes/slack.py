"""A fake Slack Web API on 127.0.0.1, plus the signed requests Slack would send to the app.

The real ``slack_sdk.WebClient(base_url=fake.base_url)`` talks to ``FakeSlack`` over HTTP, as in
bolt-python's own tests (no patching of ``WebClient``). The fake keeps state (messages after
updates, modals, ephemerals, ``response_url`` posts) so tests assert on outcomes, not call order.

Request bodies (``slash_command_body`` and friends) are the recorded payloads in
``../shared/reference/slack-payloads/`` (override with ``KFBOT_REFERENCE_DIR``), parsed and with
their ids and values replaced. Where that folder is absent (a fresh clone) a built-in minimal
shape with the same keys is used instead, so the suite still runs; ``reference_available()``
lets conformance tests skip with a reason.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier

SIGNING_SECRET = "test-signing-secret"
# Built at runtime so no literal in the repo trips the pre-commit token scanner.
BOT_TOKEN = "xoxb-" + "test"
DEFAULT_TEAM_ID = "T111"
DEFAULT_TEAM = "kf-test"
DEFAULT_BOT_USER_ID = "UKFBOT001"
DEFAULT_BOT_ID = "BKFBOT001"
DEFAULT_APP_ID = "AKFBOT001"
# Form-encoded callers send these as JSON strings; JSON callers send them as objects.
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "files")
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}

Json = dict[str, Any]


def reference_dir() -> Path:
    """Where the recorded Slack payloads live; read at call time so tests can repoint it."""
    env = os.environ.get("KFBOT_REFERENCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "reference"


def reference_available() -> bool:
    return (reference_dir() / "slack-payloads").is_dir()


def _reference_text(name: str) -> str | None:
    path = reference_dir() / "slack-payloads" / name
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _reference_form(name: str) -> dict[str, str] | None:
    text = _reference_text(name)
    if text is None:
        return None
    # The recorded view_submission was url-encoded once more as a whole ("payload%3D...").
    if text.startswith("payload%3D"):
        text = unquote(text)
    return dict(parse_qsl(text, keep_blank_values=True))


def _reference_payload(name: str) -> Json | None:
    form = _reference_form(name)
    return cast(Json, json.loads(form["payload"])) if form and "payload" in form else None


@dataclass(frozen=True)
class SlackCall:
    method: str
    params: Json
    token: str | None


class SocketModeEndpoint(Protocol):
    def issue_url(self) -> str: ...


class _ApiError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    # The benchmark's bursts answer hundreds of response_urls at once: a backlog of 5 (the
    # socketserver default) would make the fake, not the bot, reset connections.
    request_queue_size = 1024
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        fake = cast(_FakeServer, self.server).fake
        status, headers, body = fake.serve(
            url.path, url.query, self.headers.get("Content-Type", ""), self.headers.get("Authorization"), raw
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # Slack accepts GET with a query string; slack_sdk always POSTs

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep pytest output readable; calls are recorded in FakeSlack.calls


def _parse_body(content_type: str, raw: bytes) -> Json:
    if not raw:
        return {}
    text = raw.decode("utf-8")
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError:
            return {"_invalid_json": text}
        return loaded if isinstance(loaded, dict) else {"_body": loaded}
    return dict(parse_qsl(text, keep_blank_values=True))


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


class FakeSlack:
    """Stateful fake of the Slack Web API methods kf-chatops uses, served on 127.0.0.1:<free port>.

    Use as a context manager (or ``start()``/``stop()``); point clients at ``base_url``.
    Directory data (users, user groups) survives ``reset()`` unless ``reset(users=True)``.
    """

    def __init__(
        self,
        *,
        team_id: str = DEFAULT_TEAM_ID,
        team: str = DEFAULT_TEAM,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        bot_id: str = DEFAULT_BOT_ID,
        app_id: str = DEFAULT_APP_ID,
        bot_name: str = "kfbot",
    ) -> None:
        self.team_id, self.team, self.bot_name = team_id, team, bot_name
        self.bot_user_id, self.bot_id, self.app_id = bot_user_id, bot_id, app_id
        # None accepts any non-empty token; a set makes other tokens answer invalid_auth.
        self.accepted_tokens: set[str] | None = None
        self._lock = threading.RLock()
        self._users: dict[str, Json] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._seq = 0
        self._calls: list[SlackCall] = []
        self._messages: dict[tuple[str, str], Json] = {}
        self._views: dict[str, Json] = {}
        self._home_tabs: dict[str, str] = {}
        self._ephemerals: list[Json] = []
        self._responses: dict[str, list[Json]] = {}
        self._rate_limits: dict[str, list[int]] = {}
        self._channel_rate: tuple[float, float] | None = None  # (messages per second, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, at)
        self._held_channels: set[str] = set()
        self._held_methods: dict[str, threading.Event] = {}
        self.auth_extra: Json = {}
        """Fields auth.test answers on top of the workspace's (an Enterprise Grid org-wide install)."""
        self.throttled = 0
        """chat.postMessage calls answered 429 by the per-channel limit."""
        self._failures: dict[str, list[str]] = {}
        self._used_triggers: set[str] = set()
        self._opened: set[str] = set()
        self._methods: dict[str, Callable[[Json], Json]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "users.info": self._users_info,
            "users.lookupByEmail": self._users_lookup_by_email,
            "conversations.open": self._conversations_open,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "usergroups.users.list": self._usergroups_users_list,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "apps.connections.open": self._apps_connections_open,
        }
        # The external upload flow: id -> {name, length, alt_txt, data (None until POSTed)}.
        self._files: dict[str, Json] = {}
        # The WebSocket side of Socket Mode (tests.fakes.slack_socket.FakeSocketMode), when a test
        # runs the bot that way; apps.connections.open answers its URLs.
        self.socket_mode: SocketModeEndpoint | None = None
        self._server = _FakeServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeSlack:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        for method in list(self._held_methods):
            self.hold_method(method, held=False)  # a test that failed while holding: let go
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Like ``https://slack.com/api/``: slack_sdk joins method names onto it, so the slash matters."""
        return f"http://127.0.0.1:{self.port}/api/"

    # -- test set-up ---------------------------------------------------------------------------
    def add_user(
        self,
        user_id: str,
        email: str | None = None,
        name: str | None = None,
        is_admin: bool = False,
        deleted: bool = False,
        real_name: str | None = None,
    ) -> Json:
        name = name or (email.split("@")[0] if email else user_id.lower())
        real_name = real_name or name.replace(".", " ").title()
        profile: Json = {
            "title": "", "phone": "", "skype": "", "real_name": real_name,
            "real_name_normalized": real_name, "display_name": name, "display_name_normalized": name,
            "status_text": "", "status_emoji": "", "avatar_hash": "g0000000000", "team": self.team_id,
        }  # fmt: skip
        if email is not None:  # Slack omits the key when the app lacks users:read.email or there is none
            profile["email"] = email
        user: Json = {
            "id": user_id, "team_id": self.team_id, "name": name, "deleted": deleted, "color": "9f69e7",
            "real_name": real_name, "tz": "America/Los_Angeles", "tz_label": "Pacific Standard Time",
            "tz_offset": -28800, "profile": profile, "is_admin": is_admin, "is_owner": False,
            "is_primary_owner": False, "is_restricted": False, "is_ultra_restricted": False,
            "is_bot": False, "is_app_user": False, "updated": 1700000000,
            "is_email_confirmed": email is not None,
        }  # fmt: skip
        with self._lock:
            self._users[user_id] = user
        return copy.deepcopy(user)

    def deactivate_user(self, user_id: str) -> None:
        """A Slack admin deactivates the account: ``users.info`` still answers, with ``deleted:
        true``; ``users.lookupByEmail`` no longer finds it (docs.slack.dev: users.info, user type)."""
        with self._lock:
            self._users[user_id]["deleted"] = True

    def forget_user(self, user_id: str) -> None:
        """The id is gone from this workspace (an Enterprise Grid user moved out, a workspace
        migration): ``users.info`` answers ``user_not_found``."""
        with self._lock:
            del self._users[user_id]

    def set_usergroup(self, group_id: str, user_ids: list[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(user_ids)

    def rate_limit_next(self, method: str, retry_after: int = 1) -> None:
        """The next call to ``method`` answers 429 with ``Retry-After`` (queued; one per call)."""
        with self._lock:
            self._rate_limits.setdefault(method, []).append(retry_after)

    def limit_channel_rate(self, per_second: float = 1.0, burst: float = 5.0) -> None:
        """Throttle chat.postMessage per channel as Slack does ("1 per second per channel, short
        bursts allowed": docs.slack.dev/apis/web-api/rate-limits): a token bucket of ``burst``
        refilled at ``per_second``; an empty bucket answers HTTP 429 with ``Retry-After`` (whole
        seconds, at least 1) and ``{"ok": false, "error": "ratelimited"}``, and posts nothing."""
        with self._lock:
            self._channel_rate = (per_second, burst)
            self._buckets.clear()

    def hold_channel(self, channel: str, held: bool = True) -> None:
        """While held, chat.postMessage to ``channel`` answers 429 (``Retry-After: 1``) and posts
        nothing: a channel out of tokens for as long as a test needs, so what must not wait for
        Slack's pace is proved without racing a clock."""
        with self._lock:
            if held:
                self._held_channels.add(channel)
            else:
                self._held_channels.discard(channel)

    def hold_method(self, method: str, held: bool = True) -> None:
        """While held, a call to ``method`` is recorded and then not answered until released: the
        caller's thread is busy for as long as a test needs, so what must happen meanwhile is
        proved without racing a clock."""
        with self._lock:
            if held:
                self._held_methods.setdefault(method, threading.Event())
                return
            gate = self._held_methods.pop(method, None)
        if gate is not None:
            gate.set()

    def _throttled(self, method: str, params: Json) -> int | None:
        """Seconds to wait when the per-channel limit refuses this call, else None (and a token spent)."""
        if method != "chat.postMessage":
            return None
        if str(params.get("channel", "")) in self._held_channels:
            return 1
        if self._channel_rate is None:
            return None
        rate, burst = self._channel_rate
        channel = str(params.get("channel", ""))
        now = time.monotonic()
        tokens, at = self._buckets.get(channel, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[channel] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / rate))
        self._buckets[channel] = (tokens - 1, now)
        return None

    def fail_next(self, method: str, error: str) -> None:
        """The next call to ``method`` answers ``ok: false`` with ``error`` (queued; one per call)."""
        with self._lock:
            self._failures.setdefault(method, []).append(error)

    def response_url(self, name: str = "default") -> str:
        """A URL on this server that records what is POSTed to it in ``responses[name]``."""
        return f"http://127.0.0.1:{self.port}/response_url/{name}"

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id that conversations.open / chat.postMessage(channel=user) give for a user."""
        return "D" + user_id[1:]

    def reset(self, users: bool = False) -> None:
        with self._lock:
            for store in (self._calls, self._ephemerals):
                store.clear()
            for table in (self._messages, self._views, self._home_tabs, self._responses,
                          self._rate_limits, self._failures):  # fmt: skip
                table.clear()
            self._files.clear()
            self._used_triggers.clear()
            self._opened.clear()
            self.socket_mode = None
            # A held channel, a rate limit or an org-wide auth.test outlive no test.
            self._held_channels.clear()
            self._channel_rate = None
            self._buckets.clear()
            self.auth_extra = {}
            held, self._held_methods = list(self._held_methods.values()), {}
            if users:
                self._users.clear()
                self._usergroups.clear()
                self.accepted_tokens = None
        for gate in held:
            gate.set()

    # -- what tests read (snapshots, so a listener thread can't mutate them mid-assert) ----------
    @property
    def calls(self) -> list[SlackCall]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def calls_to(self, method: str) -> list[Json]:
        return [call.params for call in self.calls if call.method == method]

    @property
    def messages(self) -> dict[tuple[str, str], Json]:
        """(channel, ts) -> latest message (after chat.update), with ``channel`` and ``thread_ts``."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def messages_in(self, channel: str) -> list[Json]:
        return [m for (ch, _), m in sorted(self.messages.items()) if ch == channel]

    def replies(self, channel: str, thread_ts: str) -> list[Json]:
        return [
            m for m in self.messages_in(channel) if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts
        ]

    @property
    def views(self) -> dict[str, Json]:
        """view id -> latest view (opened, updated or published), in opening order."""
        with self._lock:
            return copy.deepcopy(self._views)

    def last_view(self) -> Json:
        views = list(self.views.values())
        if not views:
            raise AssertionError("no view was opened or published")
        return views[-1]

    @property
    def ephemerals(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    @property
    def responses(self) -> dict[str, list[Json]]:
        with self._lock:
            return copy.deepcopy(self._responses)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, message: str = "") -> Any:
        """Poll until ``predicate()`` is truthy and return its value.

        Bolt runs listeners after ``ack()`` on a worker thread, so side effects land later than
        the HTTP reply. Lookup errors inside the predicate count as "not yet". The timeout only
        bounds a hang: it is generous because a loaded CI machine runs those threads late.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
            except (KeyError, IndexError, StopIteration) as err:
                result, last_error = None, err
            if result:
                return result
            if time.monotonic() >= deadline:
                seen = [c.method for c in self.calls]
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message or _describe(predicate)}"
                    f"\n  last lookup error: {last_error!r}\n  Slack calls so far: {seen}"
                    f"\n  response_url posts: { {k: len(v) for k, v in self.responses.items()} }"
                )
            time.sleep(0.01)

    # -- HTTP ----------------------------------------------------------------------------------
    def serve(
        self, path: str, query: str, content_type: str, authorization: str | None, raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/response_url/"):
            with self._lock:
                name = unquote(path.removeprefix("/response_url/"))
                self._responses.setdefault(name, []).append(_parse_body(content_type, raw))
            return 200, {"Content-Type": "text/html"}, b"ok"
        if path.startswith("/upload/v1/"):  # like https://files.slack.com/upload/v1/...: no token
            return self._upload(path.removeprefix("/upload/v1/"), raw)
        if not path.startswith("/api/"):
            return 404, {"Content-Type": "text/plain"}, b"not found"
        method = path.removeprefix("/api/")
        params: Json = dict(parse_qsl(query, keep_blank_values=True))
        params.update(_parse_body(content_type, raw))
        body_token = params.pop("token", None)
        token = authorization.split(" ", 1)[1] if authorization and " " in authorization else body_token
        for key in _JSON_FIELDS:
            if isinstance(params.get(key), str) and params[key][:1] in ("[", "{"):
                params[key] = json.loads(params[key])
        with self._lock:
            self._calls.append(SlackCall(method, copy.deepcopy(params), token))
            gate = self._held_methods.get(method)
            if gate is None:
                return self._respond(method, params, token)
        gate.wait(60)
        with self._lock:
            return self._respond(method, params, token)

    def _respond(self, method: str, params: Json, token: str | None) -> tuple[int, dict[str, str], bytes]:
        """The answer to a recorded API call (under ``_lock``)."""
        if self._rate_limits.get(method):
            retry_after = self._rate_limits[method].pop(0)
            body = json.dumps({"ok": False, "error": "ratelimited"}).encode()
            return 429, {**_JSON_HEADERS, "Retry-After": str(retry_after)}, body
        if (wait := self._throttled(method, params)) is not None:
            self.throttled += 1
            body = json.dumps({"ok": False, "error": "ratelimited"}).encode()
            return 429, {**_JSON_HEADERS, "Retry-After": str(wait)}, body
        try:
            answer = self._answer(method, params, token)
        except _ApiError as err:
            answer = {"ok": False, "error": err.error}
        return 200, dict(_JSON_HEADERS), json.dumps(answer).encode()

    def _answer(self, method: str, params: Json, token: str | None) -> Json:
        if self._failures.get(method):
            raise _ApiError(self._failures[method].pop(0))
        handler = self._methods.get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method", "req_method": method}
        if not token:
            raise _ApiError("not_authed")
        # Slack keeps the token kinds apart: only an app-level token opens a socket, and an
        # app-level token calls nothing else.
        if (method == "apps.connections.open") != token.startswith("xapp-"):
            raise _ApiError("not_allowed_token_type")
        if self.accepted_tokens is not None and token not in self.accepted_tokens:
            raise _ApiError("invalid_auth")
        return handler(params)

    # -- helpers -------------------------------------------------------------------------------
    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _next_ts(self) -> str:
        micros = 1_700_000_000_000_000 + self._next() * 100
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _user(self, user_id: Any, missing: str = "user_not_found") -> Json:
        user = self._users.get(str(user_id or ""))
        if user is None:
            raise _ApiError(missing)
        return user

    def _dm(self, user_id: str, missing: str) -> str:
        if user_id != self.bot_user_id and self._user(user_id, missing)["deleted"]:
            raise _ApiError("user_disabled")
        return self.dm_channel(user_id)

    def _channel(self, params: Json) -> str:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        # Posting to a user id lands in the app's DM with them, and Slack answers with the D id.
        return self._dm(channel, "channel_not_found") if channel[0] in "UW" else channel

    def _stored(self, params: Json) -> tuple[tuple[str, str], Json]:
        key = (str(params.get("channel") or ""), str(params.get("ts") or ""))
        if key not in self._messages:
            raise _ApiError("message_not_found")
        return key, self._messages[key]

    @staticmethod
    def _require_content(params: Json) -> None:
        if not any(params.get(k) for k in ("text", "blocks", "attachments")):
            raise _ApiError("no_text")

    def _view(self, submitted: Any, view_id: str, previous: Json | None = None) -> Json:
        if not isinstance(submitted, dict):
            raise _ApiError("invalid_arguments")
        view: Json = {
            "team_id": self.team_id, "type": "modal", "blocks": [], "private_metadata": "", "callback_id": "",
            "state": {"values": {}}, "clear_on_close": False, "notify_on_close": False, "close": None,
            "submit": None, "previous_view_id": None, "root_view_id": view_id, "app_id": self.app_id,
            "external_id": "", "app_installed_team_id": self.team_id, "bot_id": self.bot_id,
        }  # fmt: skip
        if previous is not None:
            view.update(root_view_id=previous["root_view_id"], previous_view_id=previous["previous_view_id"])
        view.update(copy.deepcopy(submitted))
        view.update(id=view_id, hash=f"{int(time.time())}.{secrets.token_hex(4)}")
        self._views[view_id] = view
        return copy.deepcopy(view)

    # -- Web API methods -----------------------------------------------------------------------
    def _auth_test(self, params: Json) -> Json:
        shape = json.loads(_reference_text("method_auth.test.json") or "{}")
        return {
            **shape, "ok": True, "url": f"https://{self.team}.slack.com/", "team": self.team,
            "user": self.bot_name, "team_id": self.team_id, "user_id": self.bot_user_id,
            "bot_id": self.bot_id, "is_enterprise_install": False, **self.auth_extra,
        }  # fmt: skip

    def _chat_post_message(self, params: Json) -> Json:
        channel = self._channel(params)
        self._require_content(params)
        ts = self._next_ts()
        message: Json = {
            "user": self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": params.get("text", ""),
            "team": self.team_id,
        }
        message.update({k: params[k] for k in ("blocks", "attachments", "metadata") if k in params})
        if params.get("thread_ts"):
            message["thread_ts"] = thread_ts = str(params["thread_ts"])
            parent = self._messages.get((channel, thread_ts))
            if parent is not None:
                replies = parent.get("reply_count", 0) + 1
                parent.update(thread_ts=thread_ts, reply_count=replies, latest_reply=ts)
        self._messages[(channel, ts)] = {**copy.deepcopy(message), "channel": channel}
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _chat_update(self, params: Json) -> Json:
        (channel, ts), stored = self._stored(params)
        # Slack keeps the previous blocks/attachments when the update omits them.
        stored.update({k: params[k] for k in ("text", "blocks", "attachments", "metadata") if k in params})
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        message = {k: copy.deepcopy(v) for k, v in stored.items() if k != "channel"}
        return {"ok": True, "channel": channel, "ts": ts, "text": stored.get("text", ""), "message": message}

    def _chat_post_ephemeral(self, params: Json) -> Json:
        channel = self._channel(params)
        user_id = str(params.get("user") or "")
        known = self._users.get(user_id)
        if not user_id or (known is not None and known["deleted"]):
            raise _ApiError("user_not_in_channel")
        self._require_content(params)
        ts = self._next_ts()
        keep = ("text", "blocks", "attachments", "thread_ts")
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user_id,
                "message_ts": ts,
                **{k: copy.deepcopy(params[k]) for k in keep if k in params},
            }
        )
        return {"ok": True, "message_ts": ts}

    def _chat_delete(self, params: Json) -> Json:
        key, _ = self._stored(params)
        del self._messages[key]
        return {"ok": True, "channel": key[0], "ts": key[1]}

    def _users_info(self, params: Json) -> Json:
        if params.get("user") == self.bot_user_id:
            profile = {"bot_id": self.bot_id, "real_name": self.bot_name, "team": self.team_id}
            bot = {
                "id": self.bot_user_id,
                "team_id": self.team_id,
                "name": self.bot_name,
                "deleted": False,
                "real_name": self.bot_name,
                "profile": profile,
                "is_bot": True,
                "is_app_user": False,
            }
            return {"ok": True, "user": bot}
        return {"ok": True, "user": copy.deepcopy(self._user(params.get("user")))}

    def _users_lookup_by_email(self, params: Json) -> Json:
        email = str(params.get("email") or "").lower()
        for user in self._users.values():
            # Slack does not find deactivated users by email.
            if not user["deleted"] and user["profile"].get("email", "").lower() == email:
                return {"ok": True, "user": copy.deepcopy(user)}
        raise _ApiError("users_not_found")

    def _conversations_open(self, params: Json) -> Json:
        if params.get("channel"):
            return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": params["channel"]}}
        users = [u for u in str(params.get("users") or "").split(",") if u]
        if not users:
            raise _ApiError("users_list_not_supplied")
        ids = [self._dm(u, "user_not_found") for u in users]
        channel_id = ids[0] if len(ids) == 1 else "G" + "".join(sorted(u[1:] for u in users))[:10]
        answer: Json = {"ok": True, "channel": {"id": channel_id}}
        if channel_id in self._opened:
            answer.update(no_op=True, already_open=True)
        self._opened.add(channel_id)
        return answer

    def _views_open(self, params: Json) -> Json:
        trigger = str(params.get("trigger_id") or "")
        if not trigger:
            raise _ApiError("invalid_arguments")
        if trigger in self._used_triggers:  # a trigger opens one view only, as on real Slack
            raise _ApiError("exchanged_trigger_id")
        self._used_triggers.add(trigger)
        return {"ok": True, "view": self._view(params.get("view"), f"V{self._next():08d}")}

    def _views_update(self, params: Json) -> Json:
        view_id = params.get("view_id")
        if not view_id and params.get("external_id"):
            found = [v["id"] for v in self._views.values() if v.get("external_id") == params["external_id"]]
            view_id = found[-1] if found else None
        previous = self._views.get(str(view_id or ""))
        if previous is None:
            raise _ApiError("not_found")
        if params.get("hash") and params["hash"] != previous["hash"]:
            raise _ApiError("hash_conflict")
        return {"ok": True, "view": self._view(params.get("view"), previous["id"], previous)}

    def _views_publish(self, params: Json) -> Json:
        user_id = str(params.get("user_id") or "")
        self._user(user_id)
        submitted = params.get("view")
        if isinstance(submitted, dict):
            submitted = {"type": "home", **submitted}
            # Slack's rules for a Home tab view (docs.slack.dev/reference/views/home-tab-views):
            # type "home", at most 100 blocks; Block Kit's: action ids and values of at most 255
            # and 2000 characters, action ids unique within their block.
            blocks = submitted.get("blocks")
            if submitted.get("type") != "home" or not isinstance(blocks, list) or len(blocks) > HOME_BLOCKS:
                raise _ApiError("invalid_arguments")
            for block in blocks:
                seen: set[str] = set()  # action ids are unique within a block, not a view
                for element in _elements([block]):
                    action_id = str(element.get("action_id") or "")
                    too_long = len(action_id) > 255 or len(str(element.get("value") or "")) > 2000
                    if too_long or action_id in seen:
                        raise _ApiError("invalid_arguments")
                    if action_id:
                        seen.add(action_id)
        view_id = self._home_tabs.get(user_id) or f"V{self._next():08d}"
        self._home_tabs[user_id] = view_id
        return {"ok": True, "view": self._view(submitted, view_id)}

    def home_view(self, user_id: str) -> Json | None:
        """The Home tab last published for ``user_id`` (None: never)."""
        with self._lock:
            view_id = self._home_tabs.get(user_id)
            return copy.deepcopy(self._views[view_id]) if view_id in self._views else None

    # -- the external upload flow (files.getUploadURLExternal, POST, files.completeUploadExternal) --
    @property
    def files(self) -> dict[str, Json]:
        """Uploaded files by id: name, title, length, alt_txt, data (bytes), channel, thread_ts."""
        with self._lock:
            return copy.deepcopy(self._files)

    def _files_get_upload_url_external(self, params: Json) -> Json:
        # Slack: filename and length (bytes) are required; the answer is an upload URL and a file
        # id that stays private until files.completeUploadExternal shares it.
        filename = str(params.get("filename") or "")
        try:
            length = int(params.get("length") or 0)
        except (TypeError, ValueError):
            length = 0
        if not filename or length <= 0:
            raise _ApiError("invalid_arguments")
        file_id = f"F{self._next():08d}"
        self._files[file_id] = {"name": filename, "length": length, "alt_txt": params.get("alt_txt"),
                                "data": None, "title": None, "channel": None, "thread_ts": None}
        url = f"http://127.0.0.1:{self.port}/upload/v1/{file_id}"
        return {"ok": True, "upload_url": url, "file_id": file_id}

    def _upload(self, file_id: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._calls.append(SlackCall("upload", {"file_id": file_id, "bytes": len(raw)}, None))
            entry = self._files.get(file_id)
            if entry is None or entry["data"] is not None:
                return 404, {"Content-Type": "text/plain"}, b"not found"
            entry["data"] = raw
        return 200, {"Content-Type": "text/plain"}, f"OK - {len(raw)}".encode()

    def _files_complete_upload_external(self, params: Json) -> Json:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            raise _ApiError("invalid_arguments")
        channel = str(params.get("channel_id") or "")
        thread_ts = str(params.get("thread_ts") or "") or None
        if thread_ts is not None and not channel:
            raise _ApiError("invalid_arguments")
        done: list[Json] = []
        for item in files:
            entry = self._files.get(str(item.get("id") if isinstance(item, dict) else ""))
            # A file never POSTed to its upload URL (or of a wrong size) cannot be completed.
            if entry is None or entry["data"] is None or len(entry["data"]) != entry["length"]:
                raise _ApiError("file_not_found")
            entry.update(title=item.get("title") or entry["name"], channel=channel or None,
                         thread_ts=thread_ts)
            done.append({"id": item["id"], "name": entry["name"], "title": entry["title"],
                         "size": entry["length"], "mimetype": "image/png" if entry["name"].endswith(".png")
                         else "application/octet-stream"})
        if channel:
            ts = self._next_ts()
            message: Json = {"type": "message", "ts": ts, "user": self.bot_user_id, "bot_id": self.bot_id,
                             "text": params.get("initial_comment", ""), "files": done, "channel": channel}
            if thread_ts:
                message["thread_ts"] = thread_ts
                parent = self._messages.get((channel, thread_ts))
                if parent is not None:
                    parent.update(thread_ts=thread_ts, reply_count=parent.get("reply_count", 0) + 1,
                                  latest_reply=ts)
            self._messages[(channel, ts)] = message
        return {"ok": True, "files": done}

    def _apps_connections_open(self, params: Json) -> Json:
        if self.socket_mode is None:
            raise _ApiError("invalid_auth")  # no app here has Socket Mode turned on
        return {"ok": True, "url": self.socket_mode.issue_url()}

    def _usergroups_users_list(self, params: Json) -> Json:
        group = str(params.get("usergroup") or "")
        if group not in self._usergroups:
            raise _ApiError("no_such_subteam")
        return {"ok": True, "users": list(self._usergroups[group])}


# ---- what Slack sends to the app ------------------------------------------------------------
HOME_BLOCKS = 100


def _elements(blocks: list[Any]) -> Iterator[Json]:
    """Interactive elements of a view's blocks: section accessories and actions blocks' elements."""
    for block in blocks:
        if not isinstance(block, dict):
            continue
        accessory = block.get("accessory")
        if isinstance(accessory, dict):
            yield accessory
        for element in block.get("elements") or []:
            if isinstance(element, dict) and element.get("type") == "button":
                yield element


def app_home_opened(user_id: str, *, tab: str = "home", view: Json | None = None) -> Json:
    """The ``app_home_opened`` event; ``view``: the tab's current view (sent once one was published)."""
    event: Json = {
        "type": "app_home_opened", "user": user_id, "channel": "D" + user_id[1:], "tab": tab,
        "event_ts": f"{time.time():.6f}",
    }  # fmt: skip
    if view is not None:
        event["view"] = view
    return event


def home_action_body(
    view: Json,
    action_id: str,
    value: str,
    *,
    user_id: str,
    user_name: str = "alice",
    team_id: str = DEFAULT_TEAM_ID,
) -> bytes:
    """A button click on the App Home tab: a ``block_actions`` whose container is the view (no
    channel, no message, no response_url), as Slack sends it."""
    block_id = next(
        (
            str(b.get("block_id") or "")
            for b in view.get("blocks", [])
            for e in _elements([b])
            if e.get("action_id") == action_id and e.get("value") == value
        ),
        "b",
    )
    label = {"type": "plain_text", "text": action_id, "emoji": True}
    payload = {
        "type": "block_actions", **_user_and_team(user_id, user_name, team_id), "token": "verification-token",
        "container": {"type": "view", "view_id": view["id"]},
        "trigger_id": random_trigger_id(), "view": view, "state": {"values": {}},
        "actions": [{"type": "button", "action_id": action_id, "block_id": block_id, "text": label,
                     "value": value, "action_ts": f"{time.time():.6f}"}],
        "is_enterprise_install": False, "enterprise": None,
    }  # fmt: skip
    return urlencode({"payload": json.dumps(payload)}).encode()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack adds to a request: v0 HMAC-SHA256 over ``v0:{timestamp}:{body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    if signature is None:
        raise ValueError("slack_sdk could not sign this body")
    is_json = body.lstrip().startswith(b"{")
    content_type = "application/json" if is_json else "application/x-www-form-urlencoded"
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature, "Content-Type": content_type}


def random_trigger_id() -> str:
    return f"{secrets.randbelow(10**13)}.{secrets.randbelow(10**13)}.{secrets.token_hex(16)}"


def slash_command_body(
    text: str,
    *,
    user_id: str,
    user_name: str = "alice",
    command: str = "/kf",
    channel_id: str = "C111",
    team_id: str = DEFAULT_TEAM_ID,
    trigger_id: str | None = None,
    response_url: str,
) -> bytes:
    """The url-encoded body of a slash command (reference: payload_slash_command.urlencoded)."""
    form = _reference_form("payload_slash_command.urlencoded") or {
        "token": "verification-token", "team_id": "", "team_domain": "", "channel_id": "",
        "channel_name": "kf-admins", "user_id": "", "user_name": "", "command": "", "text": "",
        "api_app_id": "", "is_enterprise_install": "false", "response_url": "", "trigger_id": "",
    }  # fmt: skip
    form.update(
        team_id=team_id,
        team_domain=DEFAULT_TEAM,
        channel_id=channel_id,
        user_id=user_id,
        user_name=user_name,
        command=command,
        text=text,
        api_app_id=DEFAULT_APP_ID,
        response_url=response_url,
        trigger_id=trigger_id or random_trigger_id(),
    )
    return urlencode(form).encode()


def _user_and_team(user_id: str, user_name: str, team_id: str) -> Json:
    return {
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "team": {"id": team_id, "domain": DEFAULT_TEAM},
        "api_app_id": DEFAULT_APP_ID,
    }


def block_action_body(
    action_id: str,
    value: str,
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    block_id: str = "b",
    trigger_id: str | None = None,
    response_url: str | None = None,
    message_blocks: list[Json] | None = None,
    user_name: str = "alice",
    team_id: str = DEFAULT_TEAM_ID,
) -> bytes:
    """A button click on a bot message (reference: payload_block_action_button.urlencoded).

    Without ``response_url`` the key is left out, so a listener's ``respond()`` fails loudly
    instead of posting to hooks.slack.com; pass ``fake.response_url(name)`` to capture it.
    """
    payload = _reference_payload("payload_block_action_button.urlencoded") or {
        "token": "verification-token", "enterprise": None, "is_enterprise_install": False,
        "channel": {"name": "kf-admins"}, "message": {"text": "This content can't be displayed."},
    }  # fmt: skip
    label = {"type": "plain_text", "text": action_id, "emoji": True}
    button = {"type": "button", "action_id": action_id, "text": label, "value": value}
    blocks = (
        message_blocks
        if message_blocks is not None
        else [{"type": "actions", "block_id": block_id, "elements": [button]}]
    )
    message = {
        **payload.get("message", {}),
        "type": "message",
        "user": DEFAULT_BOT_USER_ID,
        "bot_id": DEFAULT_BOT_ID,
        "ts": message_ts,
        "team": team_id,
        "blocks": blocks,
    }
    container = {"type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False}
    payload.update(
        _user_and_team(user_id, user_name, team_id),
        type="block_actions",
        container=container,
        trigger_id=trigger_id or random_trigger_id(),
        channel={"id": channel_id, "name": payload.get("channel", {}).get("name", "kf-admins")},
        message=message,
        state={"values": {}},
        actions=[{**button, "block_id": block_id, "action_ts": f"{time.time():.6f}"}],
    )
    payload.pop("response_url", None)
    if response_url is not None:
        payload["response_url"] = response_url
    return urlencode({"payload": json.dumps(payload)}).encode()


def view_submission_body(
    callback_id: str,
    values: Mapping[str, Mapping[str, str | Json | None]],
    *,
    user_id: str,
    private_metadata: str = "",
    view_id: str | None = None,
    trigger_id: str | None = None,
    user_name: str = "alice",
    team_id: str = DEFAULT_TEAM_ID,
) -> bytes:
    """A modal submission (reference: payload_view_submission.urlencoded).

    ``values`` is ``{block_id: {action_id: text}}``; a text becomes Slack's
    ``{"type": "plain_text_input", "value": text}``, a dict (e.g. a static_select state) is used as is.
    """
    payload = _reference_payload("payload_view_submission.urlencoded") or {
        "token": "verification-token", "view": {"title": {"type": "plain_text", "text": "kf"}},
        "is_enterprise_install": False, "enterprise": None,
    }  # fmt: skip
    state: dict[str, Json] = {}
    blocks: list[Json] = []
    for block_id, actions in values.items():
        for action_id, entry in actions.items():
            element = dict(entry) if isinstance(entry, dict) else {"type": "plain_text_input", "value": entry}
            state.setdefault(block_id, {})[action_id] = element
            blocks.append(
                {
                    "type": "input",
                    "block_id": block_id,
                    "optional": False,
                    "dispatch_action": False,
                    "label": {"type": "plain_text", "text": block_id, "emoji": True},
                    "element": {"type": element["type"], "action_id": action_id},
                }
            )
    vid = view_id or f"V{secrets.token_hex(5).upper()}"
    view = {
        **payload.get("view", {}), "id": vid, "team_id": team_id, "type": "modal", "blocks": blocks,
        "private_metadata": private_metadata, "callback_id": callback_id, "state": {"values": state},
        "hash": f"{int(time.time())}.{secrets.token_hex(4)}", "previous_view_id": None, "root_view_id": vid,
        "app_id": DEFAULT_APP_ID, "app_installed_team_id": team_id, "bot_id": DEFAULT_BOT_ID,
    }  # fmt: skip
    payload.update(
        _user_and_team(user_id, user_name, team_id),
        type="view_submission",
        trigger_id=trigger_id or random_trigger_id(),
        view=view,
        response_urls=[],
    )
    return urlencode({"payload": json.dumps(payload)}).encode()


def post_signed(
    url: str,
    body: bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    headers_override: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` signed with ``secret``; returns (status, headers, body) for 4xx/5xx too."""
    headers = {**sign(body, secret, timestamp), **(headers_override or {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:  # the timeout bounds a hang: a loaded machine acks late, and an ack is not a speed claim
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


class _QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # Threads per request, so concurrent clicks (double approval) really overlap.
    daemon_threads = True


@contextlib.contextmanager
def serve_bolt(app: App, path: str = "/slack/events") -> Iterator[str]:
    """Serve a Bolt app over HTTP on 127.0.0.1 via Bolt's WSGI adapter; yields the events URL."""
    server = make_server(
        "127.0.0.1", 0, SlackRequestHandler(app, path=path),
        server_class=_ThreadingWSGIServer, handler_class=_QuietWSGIHandler,
    )  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
