"""A fake of the notebook servers behind Kubeflow's Notebook Services, over HTTP.

Each notebook is served under its ``NB_PREFIX`` (``/notebook/NAMESPACE/NAME``), as the notebook
controller configures Jupyter, with Jupyter Server's REST shapes (``jupyter_server``'s
``kernel_model`` and ``TerminalManager.list``):

- ``GET .../api/kernels`` -> ``[{"id", "name", "last_activity", "execution_state", "connections"}]``
- ``GET .../api/terminals`` -> ``[{"name", "last_activity"}]``

times written as ``jupyter_server._tz.isoformat`` does (``2026-03-02T08:00:00.000000Z``). What a
real deployment can also answer: a path nobody serves (Tornado's HTML 404), a server without the
terminals extension (404 on ``/api/terminals`` only), Istio refusing the caller (403
``RBAC: access denied``, text), a non-Jupyter server (VS Code, RStudio: an HTML page), and a
server too slow to answer within the caller's timeout (``delay``); and, since a notebook server
is whatever its user runs, one that sends megabytes (``huge``), drips its answer a byte at a
time (``drip``), or drips without end, each byte well within a per-read timeout: after its headers
(``drip-forever``, a body that never ends) or before them (``drip-head``, a status line that never
ends).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from tests.fakes.local_http import FakeHttpServer, LocalHttpFake

Mode = Literal["jupyter", "no-terminals", "rbac-denied", "html", "huge", "drip", "drip-forever", "drip-head"]


def jupyter_time(moment: datetime) -> str:
    """``jupyter_server._tz.isoformat``: ISO 8601 with microseconds, ``Z`` for UTC."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Server:
    kernels: list[dict[str, Any]] = field(default_factory=list)
    terminals: list[dict[str, Any]] = field(default_factory=list)
    mode: Mode = "jupyter"
    delay: float = 0.0
    drip_interval: float = 0.02
    """Seconds between two dripped bytes."""


class FakeJupyter(LocalHttpFake):
    def __init__(self) -> None:
        super().__init__(_Handler, "fake-jupyter")
        self._servers: dict[tuple[str, str], Server] = {}
        self.requests: list[str] = []

    def reset(self) -> None:
        with self._lock:
            self._servers.clear()
            self.requests.clear()

    # -- arranging ------------------------------------------------------------------------------

    def server(
        self,
        namespace: str,
        name: str,
        *,
        mode: Mode = "jupyter",
        delay: float = 0.0,
        drip_interval: float = 0.02,
    ) -> Server:
        with self._lock:
            server = self._servers.setdefault((namespace, name), Server())
            server.mode, server.delay, server.drip_interval = mode, delay, drip_interval
            return server

    def server_of(self, path: str) -> Server | None:
        with self._lock:
            parts = path.split("?", 1)[0].strip("/").split("/")
            if len(parts) == 5 and parts[0] == "notebook" and parts[3] == "api":
                return self._servers.get((parts[1], parts[2]))
            return None

    def kernel(
        self,
        namespace: str,
        name: str,
        last_activity: datetime,
        state: str = "idle",
        kernel_name: str = "python3",
        connections: int = 1,
    ) -> None:
        server = self.server(namespace, name, mode=self._servers.get((namespace, name), Server()).mode)
        with self._lock:
            server.kernels.append(
                {
                    "id": str(uuid.uuid4()),
                    "name": kernel_name,
                    "last_activity": jupyter_time(last_activity),
                    "execution_state": state,
                    "connections": connections,
                }
            )

    def terminal(self, namespace: str, name: str, last_activity: datetime) -> None:
        server = self.server(namespace, name, mode=self._servers.get((namespace, name), Server()).mode)
        with self._lock:
            server.terminals.append(
                {"name": str(len(server.terminals) + 1), "last_activity": jupyter_time(last_activity)}
            )

    # -- serving ----------------------------------------------------------------------------------

    def answer(self, path: str) -> tuple[int, str, bytes, float]:
        with self._lock:
            self.requests.append(path)
            parts = path.split("?", 1)[0].strip("/").split("/")
            server = None
            if len(parts) == 5 and parts[0] == "notebook" and parts[3] == "api":
                server = self._servers.get((parts[1], parts[2]))
            if server is None:
                return 404, "text/html", _tornado_404(), 0.0
            what = parts[4]
            if server.mode == "rbac-denied":
                return 403, "text/plain", b"RBAC: access denied", server.delay
            if server.mode == "html":
                return (
                    200,
                    "text/html",
                    b"<!doctype html><html><head><title>code-server</title></head></html>",
                    server.delay,
                )
            if server.mode == "huge":
                junk = [
                    {"name": str(i), "last_activity": "2026-01-01T00:00:00.000000Z"} for i in range(40_000)
                ]
                return 200, "application/json", json.dumps(junk).encode(), server.delay
            if server.mode == "drip":
                return 200, "application/json", b"[" + b" " * 400 + b"]", -1.0
            if what == "kernels":
                return 200, "application/json", json.dumps(server.kernels).encode(), server.delay
            if what == "terminals" and server.mode != "no-terminals":
                return 200, "application/json", json.dumps(server.terminals).encode(), server.delay
            return 404, "text/html", _tornado_404(), server.delay


def _tornado_404() -> bytes:
    return b"<html><title>404: Not Found</title><body>404: Not Found</body></html>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeHttpServer

    def do_GET(self) -> None:
        server = self.server.fake.server_of(self.path)
        if server is not None and server.mode in ("drip-forever", "drip-head"):
            self.server.fake.answer(self.path)  # logged like any request
            self._drip_forever(server)
            return
        status, ctype, body, delay = self.server.fake.answer(self.path)
        if delay > 0:
            time.sleep(delay)  # a slow server: the caller's timeout must cut it off
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if delay < 0:  # drip: a byte every 20 ms, each read well within a per-read timeout
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.02)
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up (its timeout)

    def _drip_forever(self, server: Server) -> None:
        """A byte every ``drip_interval`` until the caller hangs up: after the headers of a body
        said to be 100 kB (``drip-forever``), or as a status line that never ends (``drip-head``)."""
        try:
            if server.mode == "drip-forever":
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n["
                )
            else:
                self.wfile.write(b"HTTP/1.1 2")
            self.wfile.flush()
            while True:
                time.sleep(server.drip_interval)
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            self.close_connection = True  # the caller hung up: its deadline

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``FakeJupyter.requests`` is the log."""
