"""AWS test fixtures: real boto3 over HTTP against moto's server, plus a fault proxy.

moto answers S3, IAM, EKS and STS like AWS does, but it cannot throttle, fail with a 5xx or show
a nodegroup that is still CREATING or has CREATE_FAILED (its EKS changes are instant). For those
the tests put ``FaultProxy`` between boto3 and moto: a small HTTP server that forwards everything
and, for requests matching a rule, answers with a canned AWS error body or edits moto's JSON answer.
So boto3 is never mocked, and tests still assert on the state moto ends up with.

Load with ``pytest_plugins = ["tests.fakes.aws_fixtures"]``.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from provisioning.aws import AwsActions, AwsSettings
from tests.fakes import iam_simulator
from tests.fakes.clock import FakeClock

ACCOUNT_ID = "123456789012"


class ThreadKeyedLock:
    """In-process ``KeyedLock`` (one ``threading.Lock`` per key), for tests; the bot's is a DB lock."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.held: list[str] = []

    def hold(self, key: str) -> AbstractContextManager[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())

        @contextmanager
        def holding() -> Iterator[None]:
            with lock:
                self.held.append(key)
                yield

        return holding()


class MotoServer:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""
        self._session: boto3.Session | None = None

    def start(self) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    def boto_session(self) -> boto3.Session:
        """One session for all tests: each new session loads the service models again (~0.2 s)."""
        if self._session is None:
            self._session = boto3.Session()
        return self._session

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request):
            pass

    def reset(self) -> None:
        self._post("/moto-api/reset")

    @contextmanager
    def iam_enforced(self) -> Iterator[None]:
        """From here on moto checks signatures and IAM policies, as AWS does; set up users first."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")


@dataclass
class Fault:
    """A rule of the proxy: match a request, then answer ``status``/``body`` or edit moto's JSON.

    ``times`` is how often the rule fires (None: always); ``rewrite`` applies to moto's 2xx
    answers only and leaves the request to reach moto.
    """

    method: str
    path: str
    body_contains: str = ""
    status: int = 500
    body: bytes = b""
    content_type: str = "text/xml"
    times: int | None = 1
    rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    fired: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        live = self.times is None or self.fired < self.times
        return (
            live
            and method == self.method
            and re.search(self.path, path) is not None
            and self.body_contains.encode() in body
        )


_HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive", "expect"}


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def pick(self, method: str, path: str, body: bytes) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    if fault.rewrite is None:
                        fault.fired += 1
                    return fault
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, every answer would wait for
    # the client's delayed ACK (~40 ms), which over a workspace's AWS calls costs seconds.
    disable_nagle_algorithm = True
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on state, not on a request log."""

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.pick(self.command, self.path, body)
        if fault is not None and fault.rewrite is None:
            self._answer(fault.status, {"Content-Type": fault.content_type}, fault.body)
            return
        upstream = http.client.HTTPConnection(self.server.upstream.hostname or "", self.server.upstream.port)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        answer = response.read()
        out_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
        if fault is not None and fault.rewrite is not None and 200 <= response.status < 300:
            with self.server.lock:
                fault.fired += 1
            answer = json.dumps(fault.rewrite(json.loads(answer))).encode()
        upstream.close()
        self._answer(
            response.status,
            out_headers,
            answer,
            head=self.command == "HEAD",
            length=response.getheader("Content-Length"),
        )

    def _answer(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes,
        *,
        head: bool = False,
        length: str | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", length if head and length else str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay


def aws_error_xml(code: str, message: str) -> bytes:
    """An AWS query/REST-XML error body (IAM, STS, S3 all parse this shape)."""
    return (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
        f"</Error><RequestId>req-1</RequestId></ErrorResponse>"
    ).encode()


@dataclass
class AwsEnv:
    """What a test needs: moto's URL, clients for asserting on state, and an actions factory."""

    server: MotoServer
    clock: FakeClock = field(default_factory=FakeClock)
    lock: ThreadKeyedLock = field(default_factory=ThreadKeyedLock)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, service: str, region: str = "us-east-1") -> Any:
        """A plain boto3 client on moto, for arranging and asserting (cached: clients are slow to make)."""
        if (service, region) not in self._clients:
            self._clients[service, region] = boto3.client(service, region_name=region, endpoint_url=self.url)
        return self._clients[service, region]

    def actions(
        self, endpoint_url: str | None = None, session: boto3.Session | None = None, **settings: Any
    ) -> AwsActions:
        """``AwsActions`` over moto (or ``endpoint_url``, e.g. a ``FaultProxy``), fast polling."""
        merged: dict[str, Any] = {"poll_interval": 5.0, "nodegroup_active_timeout": 60.0, **settings}
        return AwsActions(
            AwsSettings(endpoint_url=endpoint_url, **merged),
            self.clock,
            self.lock,
            session or self.server.boto_session(),
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AwsEnv:
    """A clean moto and an environment in which boto3 reaches only moto, never a real account."""
    moto_server.reset()
    for name in (
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # One attempt per call: fault rules then fire exactly when a test says, and no backoff sleeps.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    iam_simulator.install(monkeypatch)  # moto lacks iam:SimulatePrincipalPolicy (kfbot doctor)
    return AwsEnv(moto_server)


@pytest.fixture
def fault_proxy(aws: AwsEnv) -> Iterator[FaultProxy]:
    proxy = FaultProxy(aws.url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join()
