"""The benchmark's load generator, in a process of its own so its threads never share a GIL with
the replicas or the fake Slack: fires one burst of signed Slack requests at once and reports,
for each, the TCP connect time, the ack time, the HTTP status or the transport error.

Reads a JSON job on stdin: ``{"secret": ..., "requests": [{"url": ..., "body": ...}, ...]}``;
writes a JSON list of ``{"sent": epoch seconds, "connect_ms", "ack_ms", "status", "error"}``.
Each request is signed when it is sent (Slack's timestamp window is 5 minutes) and uses a
connection of its own, as Slack's would; all threads are released together by a barrier.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.slack import sign

TIMEOUT = 30.0


def fire(url: str, body: bytes, secret: str) -> dict[str, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=TIMEOUT)
    sent = time.time()
    start = time.perf_counter()
    result: dict[str, Any] = {"sent": sent, "connect_ms": None, "ack_ms": None, "status": None, "error": None}
    try:
        conn.connect()
        result["connect_ms"] = (time.perf_counter() - start) * 1000
        conn.request("POST", parts.path, body=body, headers=sign(body, secret))
        response = conn.getresponse()
        response.read()
        result["status"] = response.status
        result["ack_ms"] = (time.perf_counter() - start) * 1000
    except (OSError, http.client.HTTPException) as exc:
        result["error"] = type(exc).__name__
    finally:
        conn.close()
    return result


def burst(requests: list[dict[str, str]], secret: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in requests]
    gate = threading.Barrier(len(requests))

    def one(i: int) -> None:
        gate.wait()
        results[i] = fire(requests[i]["url"], requests[i]["body"].encode(), secret)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(burst(job["requests"], job["secret"]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
