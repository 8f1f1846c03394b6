"""The HTTP face of ``kfbot serve``: ``/slack/events`` (HTTP mode), ``/healthz``, ``/readyz``
and ``/metrics``.

A WSGI app on cheroot (the production WSGI server of CherryPy; see docs/ARCHITECTURE.md, "The HTTP
server", for why this one), configured explicitly rather than trusting its defaults, by
``HttpLimits``: the listen backlog (cheroot's default is 5, which resets or stalls a burst of
slash commands), a bounded thread pool and accept queue (the connection limit: past it a
connection is answered 503 at once), a body limit enforced from ``Content-Length`` before a byte
of the body is read (and on chunked bodies as they are read), a header size limit, a read timeout
per socket operation and a *deadline* for the whole request line and headers, so a client that
trickles its headers is cut off however slowly it sends. ``bot.signing.SlackEndpoint`` verifies
Slack's signed requests and hands only those to Bolt; in Socket Mode the same server serves only
the health endpoints.

``HttpServer.stop`` is the graceful half of SIGTERM: the listening socket closes (nothing new is
accepted), requests already read or queued are answered, then the threads end, all within
``HttpLimits.shutdown_seconds``.

``/healthz`` says the process is up. ``/readyz`` says whether it can do its job: the database is
reachable and migrated, Slack is connected, and which provisioner is active; 503 when not ready
(and while draining, so the Service stops sending new traffic).
``/metrics`` is the Prometheus text format of the running bot's own registry (``bot.metrics``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.types import StartResponse, WSGIEnvironment

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi

logger = logging.getLogger(__name__)
Wsgi = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]
Readiness = Callable[[], tuple[bool, dict[str, object]]]
Exposition = Callable[[str], tuple[bytes, str]]
"""The metrics page and its content type for an ``Accept`` header (``bot.metrics.exposition``)."""

MAX_BODY_BYTES = 1024 * 1024
"""Slack's payloads are a few KB; a modal submission stays far below this. The server refuses a
larger ``Content-Length`` with 413 before reading the body; ``bot.signing`` checks it again."""
MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers together; Slack sends well under 4 KB."""


@dataclass(frozen=True)
class HttpLimits:
    """How the server protects itself; every value is set on cheroot explicitly (its defaults:
    backlog 5, unlimited body and headers, no header deadline)."""

    backlog: int = 1024
    """``listen()`` backlog: connections the kernel holds while every thread is busy."""
    threads: int = 32
    """Threads that read requests and run the app (verify, Bolt, ``ack()``); the work after an ack
    runs elsewhere (``bot.listeners.common.WorkPool``), so these are only ever briefly busy."""
    queue: int = 256
    """Accepted connections waiting for a thread; past ``threads + queue`` a connection is
    answered 503 at once (the connection limit). At least 1: cheroot hands it to ``queue.Queue``,
    where 0 means unbounded."""
    read_timeout: float = 10.0
    """Seconds one socket read or write may block."""
    header_deadline: float = 10.0
    """Seconds from a thread taking a connection to the end of its request headers."""
    shutdown_seconds: float = 20.0
    """On stop, how long requests in flight are given to be answered."""
    max_body_bytes: int = MAX_BODY_BYTES


class _HeaderWatch:
    """The header deadline. cheroot's own ``timeout`` is per socket operation, so a client that
    sends a byte every few seconds would hold a thread for as long as it likes; this watch
    shuts down the socket of any connection whose request line and headers are not complete
    within the deadline, which ends the blocked read and frees the thread."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._lock = threading.Lock()
        self._reading: dict[int, tuple[float, socket.socket]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kfbot-http-deadline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def begin(self, conn: object, sock: socket.socket) -> None:
        with self._lock:
            self._reading[id(conn)] = (time.monotonic() + self._deadline, sock)

    def end(self, conn: object) -> None:
        with self._lock:
            self._reading.pop(id(conn), None)

    def _run(self) -> None:
        tick = min(0.25, self._deadline / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (due, _) in self._reading.items() if due <= now]
                socks = [self._reading.pop(key)[1] for key in late]
            for sock in socks:
                logger.info("http: cut off a client that did not finish its headers in time")
                with contextlib.suppress(OSError):  # already gone
                    sock.shutdown(socket.SHUT_RDWR)


class _Request(cheroot_server.HTTPRequest):
    def parse_request(self) -> None:
        watch: _HeaderWatch = self.server.header_watch
        watch.begin(self.conn, self.conn.socket)
        try:
            super().parse_request()
        finally:
            watch.end(self.conn)


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request


class _Server(cheroot_wsgi.Server):
    ConnectionClass = _Connection

    def __init__(self, app: Wsgi, host: str, port: int, limits: HttpLimits) -> None:
        super().__init__(
            (host, port),
            app,
            numthreads=limits.threads,
            max=limits.threads,
            request_queue_size=limits.backlog,
            timeout=limits.read_timeout,  # type: ignore[arg-type]  # cheroot sets it on sockets: floats work
            shutdown_timeout=limits.shutdown_seconds,  # type: ignore[arg-type]
            accepted_queue_size=limits.queue,
            accepted_queue_timeout=0.1,  # type: ignore[arg-type] # a full queue answers 503 now, not after cheroot's 10 s
        )
        self.max_request_body_size = limits.max_body_bytes
        self.max_request_header_size = MAX_HEADER_BYTES
        self.keep_alive_conn_limit = limits.queue  # idle keep-alive connections kept open
        self.server_name = "kf-chatops"
        self.header_watch = _HeaderWatch(limits.header_deadline)

    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        # cheroot prints to stderr by default; route it through our logging, without tracebacks
        # of client misbehaviour (a reset connection is not our error).
        logger.log(level if level >= logging.WARNING else logging.DEBUG, "http: %s", msg)


def json_response(
    start_response: StartResponse,
    status: str,
    body: dict[str, object],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])],
    )
    return [data]


def wsgi_app(
    readiness: Readiness,
    slack: Wsgi | None = None,
    slack_path: str = "/slack/events",
    metrics: Exposition | None = None,
) -> Wsgi:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return route(environ, start_response)
        except Exception:  # the server's own handler would print a raw traceback to stderr
            logger.exception("error serving an HTTP request")
            return json_response(start_response, "500 Internal Server Error", {"error": "internal error"})

    def route(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return json_response(start_response, "200 OK", {"status": "ok"})
        if path == "/metrics" and metrics is not None:
            data, content_type = metrics(environ.get("HTTP_ACCEPT", ""))
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(data)))])
            return [data]
        if path == "/readyz":
            ready, body = readiness()
            return json_response(
                start_response, "200 OK" if ready else "503 Service Unavailable", {"ready": ready, **body}
            )
        if slack is not None and path == slack_path:
            return slack(environ, start_response)
        return json_response(start_response, "404 Not Found", {"error": "not found"})

    return app


class HttpServer:
    """cheroot on its own thread, bound at construction; ``port`` 0 picks a free one (tests)."""

    def __init__(self, app: Wsgi, host: str, port: int, limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()
        if self.limits.queue < 1:
            raise ValueError("HttpLimits.queue must be at least 1 (0 would make cheroot's queue unbounded)")
        self._server = _Server(app, host, port, self.limits)
        self._server.prepare()  # binds and listens now: the port is known and connections queue
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.bind_addr[1])

    def url(self, path: str = "") -> str:
        host = str(self._server.bind_addr[0])
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
        return f"http://{host}:{self.port}{path}"

    def start(self) -> HttpServer:
        self._server.header_watch.start()
        self._thread = threading.Thread(target=self._server.serve, name="kfbot-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, answer the requests already taken (up to ``shutdown_seconds``), end."""
        self._server.stop()
        self._server.header_watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
