"""A fake Prometheus HTTP API (``/api/v1/query``, ``/api/v1/query_range``) over stored samples.

The envelope and result shapes are Prometheus's (docs "HTTP API"): ``{"status": "success", "data":
{"resultType": "vector", "result": [{"metric": {...}, "value": [<unix time>, "<value>"]}]}}``,
``"matrix"`` with ``"values"`` for ranges, sample values as strings in Go's shortest float form
(``"0.5"``, ``"37"``, ``"NaN"``); errors ``{"status": "error", "errorType", "error"}`` with 400
(``bad_data``), 422 (``execution``) or 503 (``timeout``/``unavailable``).

It evaluates the PromQL this bot sends, and only that (anything else is a 400 ``bad_data``, as an
unparsable query would be): an instant selector ``metric{label="value",...}`` (5 minute lookback),
``max_over_time(selector[<duration>])`` and ``max by (labels) (<one of those>)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.local_http import FakeHttpServer, LocalHttpFake

LOOKBACK = 300.0
_SELECTOR = r"(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<matchers>[^}]*)\})?"
_MAX_BY = re.compile(r"^max\s+by\s*\((?P<by>[^)]*)\)\s*\((?P<inner>.*)\)$")
_OVER_TIME = re.compile(rf"^max_over_time\(\s*{_SELECTOR}\[(?P<range>\d+)(?P<unit>[smhd])\]\s*\)$")
_INSTANT = re.compile(rf"^{_SELECTOR}$")
_MATCHER = re.compile(r'^\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?P<value>[^"]*)"\s*$')
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class QueryError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


@dataclass
class Series:
    labels: dict[str, str]
    samples: list[tuple[float, float]] = field(default_factory=list)


def go_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``, as Prometheus writes sample values."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() else repr(value)


class FakePrometheus(LocalHttpFake):
    def __init__(self) -> None:
        super().__init__(_Handler, "fake-prometheus")
        self.series: list[Series] = []
        self.requests: list[dict[str, str]] = []
        self._fail: list[tuple[int, str, str]] = []

    def reset(self) -> None:
        with self._lock:
            self.series.clear()
            self.requests.clear()
            self._fail.clear()

    def add(self, metric: str, labels: Mapping[str, str], samples: list[tuple[datetime, float]]) -> None:
        with self._lock:
            self.series.append(
                Series({"__name__": metric, **labels}, [(t.timestamp(), float(v)) for t, v in samples])
            )

    def fail_next(
        self,
        status: int = 503,
        error_type: str = "timeout",
        message: str = "query timed out in expression evaluation",
    ) -> None:
        with self._lock:
            self._fail.append((status, error_type, message))

    # -- evaluation ---------------------------------------------------------------------------------

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"path": path, **params})
            if self._fail:
                status, error_type, message = self._fail.pop(0)
                return status, {"status": "error", "errorType": error_type, "error": message}
            try:
                if path == "/api/v1/query":
                    at = _time(params.get("time"), default=datetime.now().timestamp())
                    result = [
                        {"metric": labels, "value": [at, go_float(value)]}
                        for labels, value in self._evaluate(params.get("query", ""), at)
                    ]
                    return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
                if path == "/api/v1/query_range":
                    return 200, self._range(params)
            except QueryError as err:
                return err.status, {"status": "error", "errorType": err.error_type, "error": err.message}
            return 404, {"status": "error", "errorType": "not_found", "error": "not found"}

    def _range(self, params: dict[str, str]) -> dict[str, Any]:
        start, end = _time(params.get("start")), _time(params.get("end"))
        step = float(params.get("step") or "0")
        if step <= 0:
            raise QueryError(
                400,
                "bad_data",
                'invalid parameter "step": zero or negative query resolution '
                "step widths are not accepted. Try a positive integer",
            )
        if end < start:
            raise QueryError(400, "bad_data", "end timestamp must not be before start time")
        rows: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        t = start
        while t <= end:
            for labels, value in self._evaluate(params.get("query", ""), t):
                rows.setdefault(tuple(sorted(labels.items())), []).append([t, go_float(value)])
            t += step
        result = [{"metric": dict(key), "values": values} for key, values in rows.items()]
        return {"status": "success", "data": {"resultType": "matrix", "result": result}}

    def _evaluate(self, query: str, at: float) -> list[tuple[dict[str, str], float]]:
        query = query.strip()
        if (m := _MAX_BY.match(query)) is not None:
            by = [label.strip() for label in m["by"].split(",") if label.strip()]
            groups: dict[tuple[tuple[str, str], ...], float] = {}
            for labels, value in self._evaluate(m["inner"], at):
                key = tuple((k, labels[k]) for k in by if labels.get(k))
                groups[key] = (
                    value if key not in groups or math.isnan(groups[key]) else max(groups[key], value)
                )
            return [(dict(key), value) for key, value in groups.items()]
        if (m := _OVER_TIME.match(query)) is not None:
            window = int(m["range"]) * _UNITS[m["unit"]]
            out = []
            for series in self._select(m["metric"], m["matchers"]):
                values = [v for t, v in series.samples if at - window < t <= at]
                if values:
                    labels = {k: v for k, v in series.labels.items() if k != "__name__"}
                    out.append((labels, max(values)))
            return out
        if (m := _INSTANT.match(query)) is not None:
            out = []
            for series in self._select(m["metric"], m["matchers"]):
                recent = [(t, v) for t, v in series.samples if at - LOOKBACK < t <= at]
                if recent:
                    out.append((dict(series.labels), max(recent)[1]))
            return out
        raise QueryError(
            400,
            "bad_data",
            f'invalid parameter "query": 1:1: parse error: unexpected '
            f"expression the fake does not evaluate: {query[:60]!r}",
        )

    def _select(self, metric: str, matchers: str | None) -> list[Series]:
        wanted: dict[str, str] = {}
        for part in (matchers or "").split(","):
            if not part.strip():
                continue
            m = _MATCHER.match(part)
            if m is None:
                raise QueryError(400, "bad_data", f"parse error: unsupported matcher {part!r}")
            wanted[m["name"]] = m["value"]
        return [
            s
            for s in self.series
            if s.labels.get("__name__") == metric and all(s.labels.get(k, "") == v for k, v in wanted.items())
        ]


def _time(text: str | None, default: float | None = None) -> float:
    if not text:
        if default is None:
            raise QueryError(400, "bad_data", "invalid parameter: missing time")
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise QueryError(400, "bad_data", f"cannot parse {text!r} to a valid timestamp") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeHttpServer

    def _serve(self) -> None:
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        if self.command == "POST":  # the API takes form-encoded POSTs too
            length = int(self.headers.get("Content-Length") or 0)
            params.update(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        status, body = self.server.fake.answer(split.path, params)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: ``FakePrometheus.requests`` is the log."""
