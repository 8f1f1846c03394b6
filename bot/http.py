"""The HTTP face of ``kfbot serve``: ``/slack/events`` (HTTP mode), ``/healthz``, ``/readyz``
and ``/metrics``.

A plain WSGI app on a threaded ``wsgiref`` server: ``bot.signing.SlackEndpoint`` verifies Slack's
signed requests and hands only those to Bolt, and one thread per request lets Bolt's 3-second
ack window hold while other requests are in flight. In Socket Mode the same server serves only
the health endpoints.

``/healthz`` says the process is up. ``/readyz`` says whether it can do its job: the database is
reachable and migrated, Slack is connected, and which provisioner is active; 503 when not ready.
``/metrics`` is the Prometheus text format of the running bot's own registry (``bot.metrics``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)
Wsgi = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]
Readiness = Callable[[], tuple[bool, dict[str, object]]]
Exposition = Callable[[str], tuple[bytes, str]]
"""The metrics page and its content type for an ``Accept`` header (``bot.metrics.exposition``)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(WSGIRequestHandler):
    timeout = 30  # seconds per socket read or write: a client that stalls mid-request frees its thread

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("http %s", format % args)


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
    """A threaded WSGI server on its own thread; ``port`` 0 picks a free one (tests)."""

    def __init__(self, app: Wsgi, host: str, port: int) -> None:
        self._server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def url(self, path: str = "") -> str:
        raw = self._server.server_address[0]
        host = raw.decode() if isinstance(raw, bytes) else str(raw)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
        return f"http://{host}:{self.port}{path}"

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="kfbot-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
