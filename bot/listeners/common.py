"""What every listener shares: the dependencies, the correlation id, the global error handler
and the one way to answer the person who acted."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

from slack_bolt import Ack, BoltContext, BoltResponse, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

import provisioning
from bot import logging as log
from bot import render
from bot.controls import WorkspaceReads
from bot.drift import DriftDesk
from bot.home import Home
from bot.identity import Identity
from bot.offboard import OffboardBackend
from bot.payloads import text_at
from bot.settings import Settings
from bot.signing import unrecorded
from bot.team import ServedTeam, refusal
from handlers import errors
from handlers.plan import JSON
from handlers.services import Core

logger = logging.getLogger(__name__)


BUSY_TEXT = (
    "kf-chatops could not get to your request within 30 minutes, so it was dropped; please send it again."
)
WORK_THREADS = 8
"""Default size of the pool that runs listeners' work after their ack (``WorkPool``)."""
QUICK_BUSY_TEXT = "kf-chatops is busy right now; click again in a moment."
QUICK_THREADS = 4
"""Size of the pool for clicks that only open a modal (``Deps.quick``): never behind bulk work."""
LISTENER_THREADS = 16
"""Default size of Bolt's ``listener_executor``: it runs listeners up to their ``ack()`` (and the
short hand-over to ``WorkPool``), so it only needs to cover Slack requests arriving together."""
RESPONSE_URL_LIFETIME = timedelta(minutes=30)
"""Slack's ``response_url`` answers for 30 minutes: an acked request not handled by then is told
"busy" (``BUSY_TEXT``) by DM; before that it waits its turn in the inbox."""
REDELIVERY_WAIT_SECONDS = 60.0
"""How long a redelivered request waits for this replica's run of its first copy."""
INBOX_LEASE = timedelta(minutes=2)
"""How long a replica's claim on an inbox row stands before another replica may take the row; a
heartbeat renews it every third of that while the work runs."""

Handler = Callable[[Mapping[str, object], WebClient, "Respond | None", str], None]
"""Durable work of a Slack request, from its payload alone: (body, client, respond, correlation
id). The same function runs the request in the replica that acked it and, from the inbox, in any
other."""


class WorkPool:
    """Runs listeners' work after their ack, on threads of its own, so a slow use case (a Dex
    restart, bcrypt at cost 16, a live read) never holds one of Bolt's listener threads, and the
    ``ack()`` of the next Slack request never waits behind it. Bounded: ``threads`` workers and at
    most ``queue`` more waiting. A full pool refuses (``submit`` is False): the durable work it
    could not take stays in the inbox (``Inbox``), which is the real queue; this one only saves a
    database round-trip in the common case."""

    def __init__(self, threads: int = WORK_THREADS, queue: int | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kfbot-work")
        self._capacity = threads + (threads * 4 if queue is None else queue)
        self._lock = threading.Condition()
        self._taken = 0
        self._waiting: dict[int, str] = {}  # submitted, not started: id -> tag
        self._closed = False

    def free(self) -> int:
        with self._lock:
            return 0 if self._closed else self._capacity - self._taken

    def submit(self, work: Callable[[], None], tag: str = "") -> bool:
        """Queue ``work``; False (nothing queued) when the pool is full or shut down."""
        with self._lock:
            if self._closed or self._taken >= self._capacity:
                return False
            self._taken += 1
            token = id(work)
            self._waiting[token] = tag

        def run() -> None:
            with self._lock:
                started = self._waiting.pop(token, None) is not None
            try:
                if started:
                    work()
            finally:
                with self._lock:
                    self._taken -= 1
                    self._lock.notify_all()

        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down
            with self._lock:
                self._waiting.pop(token, None)
                self._taken -= 1
            return False
        return True

    def drain(self, timeout: float) -> list[str]:
        """Stop taking work, give what was taken up to ``timeout`` seconds to finish, and return
        the tags of work that never started (it will not run here)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            while self._taken and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            never = [tag for tag in self._waiting.values() if tag]
            self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return never

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


class Inbox:
    """Durable hand-over of acked Slack work (``provisioning.SqlInbox``): ``record`` before the ack,
    ``run`` after it, ``sweep`` for rows nobody is working on (another replica stopped, or this
    one's pool was full). A row is deleted when its handler returns or fails (a failure is told to
    the person, as before); only a process that dies mid-work leaves it, for the next claim.

    A row's work runs once: a job runs only after it ``take``s the row's lease (one that waited in
    the pool past the lease may find another replica holding it, or the row done), a heartbeat
    renews the lease while it runs, and the sweep never queues a row this replica already holds."""

    def __init__(
        self,
        store: provisioning.SqlInbox,
        pool: WorkPool,
        owner: str | None = None,
        lease: timedelta | None = None,
    ) -> None:
        self.store, self.pool = store, pool
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease = lease or INBOX_LEASE
        self._handlers: dict[str, Handler] = {}
        self._inflight: dict[str, threading.Event] = {}  # fresh keys this replica is running
        self._held: set[str] = set()  # rows queued or running here (fresh or swept)
        self._inflight_lock = threading.Lock()
        self.client: WebClient | None = None
        """The bot's own client, for work swept from the inbox (set by ``bot.app``)."""
        self.team: ServedTeam | None = None
        """The one team served (set by ``bot.app``): the sweep holds its rows to the rule
        ``team_middleware`` holds live requests to; unset, it sweeps nothing."""

    def handler(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def record(self, kind: str, body: Mapping[str, object]) -> tuple[str, bool]:
        """Store a verified request before it is acked: its key, and False for a redelivery (the
        key is there already)."""
        now = datetime.now(UTC)  # Slack's clock (response_url lifetime), not the core's
        trigger = text_at(body, "trigger_id") or secrets.token_hex(12)
        key = f"{kind}:{trigger}"
        payload = cast(
            dict[str, JSON], json.loads(json.dumps({k: v for k, v in body.items() if k != "token"}))
        )
        fresh = self.store.record(
            key, kind, payload, owner=self.owner, now=now, lease_until=now + self.lease,
            expires_at=now + RESPONSE_URL_LIFETIME,
        )  # fmt: skip
        return key, fresh

    def run(
        self,
        kind: str,
        key: str,
        fresh: bool,
        body: Mapping[str, object],
        client: WebClient,
        respond: Respond | None,
        context: BoltContext,
    ) -> None:
        """Run a recorded request on the pool. A redelivery (not ``fresh``) runs from memory only,
        after this replica's run of the first copy ends, so the use case finds the first copy's
        request and says "already recorded" (two concurrent submissions of one key would race)."""
        cid = correlation(context)
        if fresh:
            with self._inflight_lock:
                self._inflight[key] = threading.Event()
                self._held.add(key)
        job = self._job(
            kind, key if fresh else None, body, client, respond, cid, context, after=None if fresh else key
        )
        if self.pool.submit(job, key if fresh else ""):
            return
        with log.bound(cid):
            logger.info("work pool full; the request waits in the inbox")
        if fresh:
            self._done(key)
            self.store.release([key], self.owner)

    def _hold(self, key: str) -> bool:
        """Mark ``key`` queued here; False when it is already (a sweep re-claiming a row whose
        lease ran out while it waited in this pool: queuing it again would run it twice)."""
        with self._inflight_lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def _done(self, key: str) -> None:
        with self._inflight_lock:
            event = self._inflight.pop(key, None)
            self._held.discard(key)
        if event is not None:
            event.set()

    @contextmanager
    def _heartbeat(self, key: str) -> Iterator[None]:
        """Renew this replica's lease on ``key`` every third of the lease while the work runs (as
        the engine's step heartbeat does), so no sweep takes work that is slow, not dead."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease.total_seconds() / 3):
                try:
                    if not self.store.renew(key, self.owner, datetime.now(UTC) + self.lease):
                        logger.warning("lost the inbox lease of running work; another replica may run it")
                        return
                except Exception:  # a database blip: the next beat tries again within the lease
                    logger.exception("could not renew an inbox lease")

        thread = threading.Thread(target=beat, name="kfbot-inbox-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _job(
        self,
        kind: str,
        key: str | None,
        body: Mapping[str, object],
        client: WebClient,
        respond: Respond | None,
        cid: str,
        context: BoltContext | None,
        *,
        after: str | None = None,
    ) -> Callable[[], None]:
        handler = self._handlers[kind]

        def run() -> None:
            with log.bound(cid):
                if after is not None:
                    with self._inflight_lock:
                        first = self._inflight.get(after)
                    if first is not None:
                        first.wait(REDELIVERY_WAIT_SECONDS)
                if key is not None and not self._take(key):
                    return
                try:
                    if key is None:
                        handler(body, client, respond, cid)
                    else:
                        with self._heartbeat(key):
                            handler(body, client, respond, cid)
                except Exception as error:  # the one handler, reached without Bolt's post-ack race
                    on_error(error, body, context, client, respond)
                finally:
                    if key is not None:
                        try:
                            self.store.finish(key)
                        finally:
                            self._done(key)

        return run

    def _take(self, key: str) -> bool:
        """Take the row's lease right before its work starts; False (and nothing runs here) when
        another replica took it meanwhile or its work is done."""
        try:
            taken = self.store.take(key, self.owner, datetime.now(UTC), datetime.now(UTC) + self.lease)
        except Exception:  # the row stays, so a sweep runs it once the database answers
            logger.exception("could not take an inbox row's lease; the sweep will")
            taken = False
        if not taken:
            logger.info("an inbox row is another replica's or done; not run here")
            self._done(key)
        return taken

    def sweep(self) -> int:
        """Claim rows nobody is working on, as many as the pool has room for, and run them;
        one past ``expires_at`` is told "busy" instead, and one not from the served team (the
        rule of ``bot.team.refusal``) is dropped untold. The number claimed."""
        client, team = self.client, self.team
        if client is None or team is None:
            return 0
        now = datetime.now(UTC)
        items = self.store.claim(self.owner, now, now + self.lease, self.pool.free())
        for item in items:
            if not self._hold(item.key):
                continue  # queued or running here already: the claim only renewed our lease
            body: Mapping[str, object] = dict(item.payload)
            cid = log.new_correlation_id()
            if not item.authentic:  # not written by an edge holding the audit key: never run or told
                with log.bound(cid):
                    logger.warning("dropped an inbox row without a valid MAC (not recorded by the edge)")
                self.store.finish(item.key)
                self._done(item.key)
                continue
            if item.kind not in self._handlers:
                logger.error("inbox row of unknown kind %s dropped", item.kind)
                self.store.finish(item.key)
                self._done(item.key)
                continue
            # A row recorded by another build, or before KFBOT_SLACK_TEAM_ID changed, never passed
            # this replica's team_middleware: the same rule, before it is run or told anything.
            reason = refusal(body, team)
            if reason is not None:
                with log.bound(cid):
                    logger.warning("dropped an inbox row from %s: kf-chatops serves one team", reason)
                self.store.finish(item.key)
                self._done(item.key)
                continue
            if item.expires_at <= now:
                with log.bound(cid):
                    logger.warning("an acked Slack request expired in the inbox; told the user")
                    tell(body, client, None, BUSY_TEXT)
                self.store.finish(item.key)
                self._done(item.key)
                continue
            url = text_at(body, "response_url")
            respond = Respond(response_url=url) if url else None
            if not self.pool.submit(
                self._job(item.kind, item.key, body, client, respond, cid, None), item.key
            ):
                self._done(item.key)
                self.store.release([item.key], self.owner)
        return len(items)

    def drain(self, timeout: float) -> None:
        """Shutdown: finish what the pool holds within ``timeout``; hand the rest back."""
        never = self.pool.drain(timeout)
        for key in never:
            self._done(key)
        self.store.release(never, self.owner)


@dataclass(frozen=True)
class Deps:
    """What the listeners need, wired by ``bot.app``."""

    settings: Settings
    core: Core
    identity: Identity
    backend: WorkspaceReads
    """``provisioning.Backend``'s read models (workspaces, contributors, tokens)."""
    inbox: Inbox
    """Where acked work is recorded and run (``durable``)."""
    drift: DriftDesk | None = None
    """The drift report's desk (``/kf drift`` and its buttons); None: not wired (the shell)."""
    quick: WorkPool = field(default_factory=lambda: WorkPool(QUICK_THREADS))
    people: OffboardBackend | None = None
    """``provisioning.Backend`` for ``/kf offboard`` (who holds access, their Slack ids)."""
    """Where clicks that only open a modal run (``after_ack``): within the ``trigger_id``'s 3 s,
    never queued behind bulk work."""
    home: Home | None = None
    """Publishes App Home tabs (``bot.home``); None where there is no Slack app."""

    @property
    def pool(self) -> WorkPool:
        return self.inbox.pool


def durable(
    deps: Deps,
    kind: str,
    ack: Ack,
    body: Mapping[str, object],
    context: BoltContext,
    client: WebClient,
    respond: Respond | None,
) -> None:
    """Record, ack, run: the request is in the database before Slack hears 200, so a stop or a crash
    after the ack loses nothing."""
    try:
        key, fresh = deps.inbox.record(kind, body)
    except Exception as exc:  # unrecorded, so not done: a 5xx would tell the person nothing
        cid = correlation(context)
        with log.bound(cid):
            logger.warning(
                "could not record a Slack request; answered try again, nothing done: %s", type(exc).__name__
            )
        answer = unrecorded(dict(body), cid)
        if answer:
            ack(answer)
        else:
            ack()
        return
    ack()
    # A redelivery (the first copy's row stands) still runs, from memory only and after the first,
    # so it is answered as before ("already recorded").
    try:
        deps.inbox.run(kind, key, fresh, body, client, respond, context)
    except Exception:  # acked and recorded: the inbox sweep runs it; Slack must still get its 200
        logger.exception("could not hand an acked request to the work pool; the inbox sweep will")


FROM_SLACK = "kfbot_from_slack"
"""Context key set once a request is known to come from Slack (see ``correlation_middleware``)."""


def correlation_middleware(context: BoltContext, next: Callable[[], None]) -> None:
    # Bolt runs its own middleware (request verification, authorization) before ours, so a request
    # that gets here came from Slack: signed (HTTP) or over the authenticated socket (Socket Mode).
    context[FROM_SLACK] = True
    context["correlation_id"] = log.new_correlation_id()
    next()


TEAM_REFUSED_TEXT = "kf-chatops does not serve this Slack workspace; nothing was done."
"""The whole answer to a slash command from another team (other requests get an empty 200)."""


def team_middleware(served: ServedTeam) -> Callable[..., BoltResponse]:
    """Bolt's global middleware that serves only ``served`` (``bot.team``): installed right after
    the correlation id, so it runs after Bolt's verification and before every listener, for both
    transports. A refused request is answered 200 at once (Slack must not retry it), and nothing
    of it is recorded, looked up or posted; the log has the reason and the correlation id, never
    the payload."""

    def check_team(
        body: Mapping[str, object], context: BoltContext, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        reason = refusal(body, served)
        if reason is None:
            return next()
        with log.bound(correlation(context)):
            logger.warning("refused a Slack request from %s: kf-chatops serves one team", reason)
        return BoltResponse(status=200, body=TEAM_REFUSED_TEXT if body.get("command") else "")

    return check_team


def correlation(context: BoltContext) -> str:
    cid = context.get("correlation_id")
    if not cid:
        cid = context["correlation_id"] = log.new_correlation_id()
    return str(cid)


def after_ack(
    deps: Deps,
    context: BoltContext,
    body: Mapping[str, object],
    client: WebClient,
    respond: Respond | None,
    work: Callable[[], None],
) -> None:
    """Hand a click's modal work, once it has acked, to ``deps.quick`` (never run on Bolt's listener
    thread: see ``WorkPool``); it runs with the correlation id bound, and a failure goes to
    ``on_error``, the same single handler ``@app.error`` is. Not durable: a modal must open within
    the click's 3 s or not at all, so a full pool says so and the person clicks again.

    Why not simply let the exception reach ``@app.error``: with ``process_before_response=False``
    Bolt 1.30 (``listener/thread_runner.py``) sets ``ack.response`` back to None when a listener
    raises after ``ack()``; if that happens before the HTTP thread has seen the ack, Slack gets a
    404 "unhandled request" three seconds later instead of the 200 it was owed. Refusals (not an
    admin, already approved) fail within milliseconds, so they hit that race routinely.
    """
    cid = correlation(context)

    def run() -> None:
        with log.bound(cid):
            try:
                work()
            except Exception as error:  # the one handler, reached without Bolt's post-ack race
                on_error(error, body, context, client, respond)

    if not deps.quick.submit(run):
        with log.bound(cid):
            logger.warning("quick pool full; refused a click")
            tell(body, client, respond, QUICK_BUSY_TEXT)


def user_id(body: Mapping[str, object]) -> str:
    return text_at(body, "user_id") or text_at(body, "user", "id")


def on_error(
    error: Exception,
    body: Mapping[str, object],
    context: BoltContext | None,
    client: WebClient,
    respond: Respond | None,
) -> None:
    if context is not None and not context.get(FROM_SLACK):
        # Bolt also calls this handler for a failure inside its own middleware, before the request
        # was verified: then the body is anyone's, and its response_url or channel names no one
        # to answer. Only the error's type is logged, nothing of the request.
        logger.warning("a Slack request failed in Bolt's middleware, before ours: %s", type(error).__name__)
        return
    cid = correlation(context) if context is not None else log.correlation_id() or log.new_correlation_id()
    with log.bound(cid):
        tell(body, client, respond, error_reply(error, cid))


def error_reply(error: Exception, cid: str) -> str:
    """What the person who acted is told about a failure, logged once: a ``KfError``'s own
    message, anything else only a reference (``cid``) to the logs, never its details."""
    if isinstance(error, errors.KfError):
        logger.info("refused %s: %s", type(error).__name__, error.user_message)
        return render.error_text(error, render.SLACK)
    logger.error("unhandled error in a Slack listener", exc_info=error)
    return render.internal_error_text(cid)


def _channel_of(body: Mapping[str, object]) -> str | None:
    channel = (
        text_at(body, "channel_id")
        or text_at(body, "channel", "id")
        or text_at(body, "container", "channel_id")
    )
    if channel:
        return channel
    metadata = text_at(body, "view", "private_metadata")
    if metadata.startswith("{"):
        try:
            found = json.loads(metadata).get("c")
        except ValueError:
            return None
        return str(found) if found else None
    return None


def tell(body: Mapping[str, object], client: WebClient, respond: Respond | None, text: str) -> None:
    """An ephemeral note to the person who acted: via response_url where Slack gave one, else an
    ephemeral message in the channel, else a DM. Delivery failures are logged, never raised."""
    uid = user_id(body)
    try:
        if respond is not None and respond.response_url:
            respond(text=text, response_type="ephemeral", replace_original=False)
            return
        channel = _channel_of(body)
        if channel and not channel.startswith("D"):
            client.chat_postEphemeral(channel=channel, user=uid, text=text)
        elif uid:
            client.chat_postMessage(channel=uid, text=text)
    except (SlackClientError, OSError) as exc:
        logger.warning("could not tell %s: %s", uid, type(exc).__name__)
