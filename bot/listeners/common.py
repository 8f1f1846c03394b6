"""What every listener shares: the dependencies, the correlation id, the global error handler
and the one way to answer the person who acted."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_bolt import BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from bot import logging as log
from bot import render
from bot.controls import WorkspaceReads
from bot.identity import Identity
from bot.payloads import text_at
from bot.settings import Settings
from handlers import errors
from handlers.services import Core

logger = logging.getLogger(__name__)


BUSY_TEXT = "kf-chatops is busy right now; try again in a minute."
WORK_THREADS = 8
"""Default size of the pool that runs listeners' work after their ack (``WorkPool``)."""
LISTENER_THREADS = 16
"""Default size of Bolt's ``listener_executor``: it runs listeners up to their ``ack()`` (and the
short hand-over to ``WorkPool``), so it only needs to cover Slack requests arriving together."""


class WorkPool:
    """Runs listeners' work after their ack, on threads of its own, so a slow use case (a Dex
    restart, bcrypt at cost 16, a live read) never holds one of Bolt's listener threads, and the
    ``ack()`` of the next Slack request never waits behind it. Bounded: ``threads`` workers and at
    most ``queue`` more waiting; past that a click is answered "busy" instead of queued."""

    def __init__(self, threads: int = WORK_THREADS, queue: int | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kfbot-work")
        self._slots = threading.BoundedSemaphore(threads + (threads * 4 if queue is None else queue))

    def submit(self, work: Callable[[], None]) -> bool:
        """Queue ``work``; False (nothing queued) when the pool is full or shut down."""
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                work()
            finally:
                self._slots.release()

        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down
            self._slots.release()
            return False
        return True

    def shutdown(self, wait: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


@dataclass(frozen=True)
class Deps:
    """What the listeners need, wired by ``bot.app``."""

    settings: Settings
    core: Core
    identity: Identity
    backend: WorkspaceReads
    """``provisioning.Backend``'s read models (workspaces, contributors, tokens)."""
    pool: WorkPool = field(default_factory=WorkPool)
    """Where work after an ack runs (``after_ack``)."""


FROM_SLACK = "kfbot_from_slack"
"""Context key set once a request is known to come from Slack (see ``correlation_middleware``)."""


def correlation_middleware(context: BoltContext, next: Callable[[], None]) -> None:
    # Bolt runs its own middleware (request verification, authorization) before ours, so a request
    # that gets here came from Slack: signed (HTTP) or over the authenticated socket (Socket Mode).
    context[FROM_SLACK] = True
    context["correlation_id"] = log.new_correlation_id()
    next()


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
    """Hand a listener's work, once it has acked, to ``deps.pool`` (never run on Bolt's listener
    thread: see ``WorkPool``); it runs with the correlation id bound, and a failure goes to
    ``on_error``, the same single handler ``@app.error`` is. A full pool answers "busy".

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

    if not deps.pool.submit(run):
        with log.bound(cid):
            logger.warning("work pool full; refused a Slack request")
            tell(body, client, respond, BUSY_TEXT)


def user_id(body: Mapping[str, object]) -> str:
    return text_at(body, "user_id") or text_at(body, "user", "id")


def on_error(
    error: Exception,
    body: Mapping[str, object],
    context: BoltContext,
    client: WebClient,
    respond: Respond | None,
) -> None:
    if not context.get(FROM_SLACK):
        # Bolt also calls this handler for a failure inside its own middleware, before the request
        # was verified: then the body is anyone's, and its response_url or channel names no one
        # to answer. Only the error's type is logged, nothing of the request.
        logger.warning("a Slack request failed in Bolt's middleware, before ours: %s", type(error).__name__)
        return
    cid = correlation(context)
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
