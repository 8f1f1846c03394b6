"""The HTTP face of ``kfbot serve``: ``/slack/events`` (HTTP mode), ``/healthz``, ``/readyz``
and ``/metrics``.

A WSGI app on cheroot (the production WSGI server of CherryPy; see docs/ARCHITECTURE.md, "The HTTP
server", for why this one), configured explicitly rather than trusting its defaults, by
``HttpLimits``: the listen backlog (cheroot's default is 5, which resets or stalls a burst of
slash commands), a bounded thread pool and accept queue (the connection limit: past it a
connection is answered 503 at once), a body limit enforced from ``Content-Length`` before a byte
of the body is read (a chunked body is refused), a header size limit, a read timeout per socket
operation and a *deadline* for the whole request (line, headers and body, which the server reads
itself before the app runs), so a client that trickles is cut off however regularly it sends; a
connection that has sent nothing waits without a thread. ``bot.signing.SlackEndpoint`` verifies
Slack's signed requests and hands only those to Bolt; in Socket Mode the same server serves only
the health endpoints. ``kfbot serve`` runs a second, small server for the health endpoints alone
(``KFBOT_HEALTH_PORT``), so the probes never queue behind the Slack port.

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
import io
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
    backlog 5, unlimited body and headers, no deadline on a request)."""

    backlog: int = 1024
    """``listen()`` backlog: connections the kernel holds while every thread is busy."""
    threads: int = 64
    """Threads that read requests and run the app (verify, Bolt, ``ack()``); the work after an ack
    runs elsewhere (``bot.listeners.common.WorkPool``), so these are only ever briefly busy. An
    idle thread costs a stack that is mostly untouched (tens of KB resident)."""
    queue: int = 256
    """Connections that sent their first byte and wait for a thread; past ``threads + queue`` a
    connection is answered 503 at once (the connection limit). At least 1: cheroot hands it to
    ``queue.Queue``, where 0 means unbounded."""
    read_timeout: float = 10.0
    """Seconds one socket read or write may block; also how long a connection may stay silent
    (new, or kept alive between requests) before it is closed. A silent connection holds no
    thread, only its socket."""
    read_deadline: float = 5.0
    """Seconds from a request's first byte reaching a thread to the last byte of its body: request
    line, headers and body together. However slowly a client sends, it holds a thread no longer."""
    shutdown_seconds: float = 20.0
    """On stop, how long requests in flight are given to be answered."""
    max_body_bytes: int = MAX_BODY_BYTES


class _ReadDeadline:
    """The whole-request deadline. cheroot's own ``timeout`` is per socket operation, so a client
    that sends a byte every few seconds (in its headers or in its body) would hold a thread for as
    long as it likes; this watch shuts down the socket of any connection whose request (line,
    headers and body) is not complete within the deadline, which ends the blocked read and frees
    the thread."""

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

    def end(self, conn: object) -> bool:
        """Stop watching ``conn``; False when its deadline had already cut it off."""
        with self._lock:
            return self._reading.pop(id(conn), None) is not None

    def _run(self) -> None:
        tick = min(0.25, self._deadline / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (due, _) in self._reading.items() if due <= now]
                socks = [self._reading.pop(key)[1] for key in late]
            for sock in socks:
                logger.info("http: cut off a client that did not send its request in time")
                with contextlib.suppress(OSError):  # already gone
                    sock.shutdown(socket.SHUT_RDWR)


class _Request(cheroot_server.HTTPRequest):
    """A request read whole, under the deadline, before the app sees it."""

    def parse_request(self) -> None:
        watch: _ReadDeadline = self.server.read_deadline
        watch.begin(self.conn, self.conn.socket)
        try:
            super().parse_request()
        finally:
            if not self.ready:  # refused or cut off: no body will be read
                watch.end(self.conn)

    def respond(self) -> None:
        # cheroot's respond hands the app a stream on the socket, so the body would be read at
        # the app's pace, outside any deadline; this one reads it first, under the deadline.
        watch: _ReadDeadline = self.server.read_deadline
        try:
            body = self._read_body()
        finally:
            in_time = watch.end(self.conn)
        if body is None:
            return
        if not in_time:  # the watch shut the socket: no answer can go out
            self.close_connection = True
            return
        if len(body) < int(self.inheaders.get(b"Content-Length", 0)):  # the client stopped sending
            self.close_connection = True
            self.simple_response("400 Bad Request", "The body is shorter than its Content-Length.")
            return
        self.rfile = cheroot_server.KnownLengthRFile(io.BytesIO(body), len(body))
        self.server.gateway(self).respond()
        if self.ready:
            self.ensure_headers_sent()
        if self.chunked_write:
            self.conn.wfile.write(b"0\r\n\r\n")

    def _read_body(self) -> bytes | None:
        """The body as far as it came (short when the client stopped, or the deadline shut the
        socket), or None when the request was answered here."""
        if self.chunked_read:
            # Slack always sends Content-Length; a chunked body has no size to refuse it by, nor
            # to read it by in one bounded piece.
            self.close_connection = True
            self.simple_response("411 Length Required", "A Content-Length is required.")
            return None
        length = int(self.inheaders.get(b"Content-Length", 0))  # cheroot checked it is a number
        if length > self.server.max_request_body_size:
            self.close_connection = True  # the unread body must not be taken for the next request
            self.simple_response("413 Request Entity Too Large", "The request body is too large.")
            return None
        body: bytes = self.conn.rfile.read(length) if length else b""
        return body


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    waited = False
    """Set once the connection has waited for its first byte without a thread."""


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
        self.read_deadline = _ReadDeadline(limits.read_deadline)

    def process_conn(self, conn: _Connection) -> None:
        # cheroot gives a thread to every connection it accepts, so connections that never send a
        # byte each hold one; a new connection waits in the selector instead, like a kept-alive
        # one, and takes a thread when its first byte arrives (or is closed after read_timeout).
        if not conn.waited:
            conn.waited = True
            self._connections.put(conn)  # type: ignore[attr-defined]  # set by prepare(); not in the stubs
            return
        super().process_conn(conn)

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
        self._server.read_deadline.start()
        self._thread = threading.Thread(target=self._server.serve, name="kfbot-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, answer the requests already taken (up to ``shutdown_seconds``), end."""
        self._server.stop()
        self._server.read_deadline.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
