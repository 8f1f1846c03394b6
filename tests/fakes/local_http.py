"""A fake HTTP service on 127.0.0.1 served from a daemon thread: what the fake notebook server and
the fake Prometheus share (the fake apiserver and fake Slack have richer lifecycles of their own)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: Any) -> None:
        super().__init__(address, handler)
        self.fake = fake


class LocalHttpFake:
    """Subclasses pass their request handler; the handler reaches the fake as ``self.server.fake``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._lock = threading.Lock()
        self._httpd = FakeHttpServer(("127.0.0.1", 0), handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True, name=name
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
