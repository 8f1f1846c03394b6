"""What the provisioning layer reports to Prometheus: step durations and failures (the engine),
scheduler sweeps and due rows handled (the sweeper), and requests by kind and state (counted in
the database when Prometheus scrapes).

``Metrics`` is a small typed object, not a global: the composition root creates one on the
``CollectorRegistry`` it serves on ``/metrics`` and passes it to ``build_backend``. Made without a
registry (the default everywhere else: tests, ``kfbot shell``, maintenance commands) its
collectors work but are registered nowhere, so nothing here ever touches prometheus_client's
global default registry and importing this module has no side effects.

Label values are action names, request kinds and states, timer kinds and fixed result words: a
small, bounded set, and never anything a user typed or a secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from handlers.model import RequestState
from provisioning import store
from provisioning.store import Database

log = logging.getLogger(__name__)

STEP_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds: a Kubernetes write takes milliseconds, a nodegroup many minutes."""

RequestCounts = Mapping[tuple[str, str], int]
"""(kind, state) -> number of requests."""

# Step results (the ``result`` label of kfbot_step_duration_seconds).
OK: Final = "ok"
RETRY: Final = "retry"
"""A temporary error: the engine retries the step."""
ERROR: Final = "error"
"""A permanent error: the step failed."""
CRASH: Final = "crash"
"""An unexpected exception in the action (a bug): the step failed."""


def count_requests(db: Database) -> dict[tuple[str, str], int]:
    """One ``GROUP BY`` over the requests table, on a reader connection (never blocks writers)."""
    table = store.requests
    query = sa.select(table.c.kind, table.c.state, sa.func.count()).group_by(table.c.kind, table.c.state)
    with db.reader() as conn:
        return {(str(kind), str(state)): int(n) for kind, state, n in conn.execute(query)}


_REQUESTS_HELP: Final = "Requests by kind and state, counted in the database at scrape time."
_UP_HELP: Final = "1 when the requests table could be read at scrape time, else 0."


class RequestsCollector(Collector):
    """``kfbot_requests{kind,state}`` counted at scrape time, and ``kfbot_database_up``.

    Every state of a kind that has requests is exported (0 where none), so a series drops to 0
    instead of disappearing. A database that cannot be read gives ``kfbot_database_up 0`` and no
    request series; the scrape itself never fails."""

    def __init__(self, count: Callable[[], RequestCounts]) -> None:
        self._count = count

    def describe(self) -> Iterator[Metric]:
        # Describing without counting: registering this collector must not query the database.
        yield GaugeMetricFamily("kfbot_requests", _REQUESTS_HELP, labels=["kind", "state"])
        yield GaugeMetricFamily("kfbot_database_up", _UP_HELP)

    def collect(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily("kfbot_requests", _REQUESTS_HELP, labels=["kind", "state"])
        up = GaugeMetricFamily("kfbot_database_up", _UP_HELP)
        try:
            counts = dict(self._count())
        except Exception as exc:  # a scrape reports, it never fails
            log.warning("could not count requests for /metrics: %s", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        states = [s.value for s in RequestState]
        for kind in sorted({kind for kind, _ in counts}):
            for state in states + sorted({s for k, s in counts if k == kind and s not in states}):
                requests.add_metric([kind, state], float(counts.get((kind, state), 0)))
        up.add_metric([], 1.0)
        yield requests
        yield up


class Metrics:
    """The engine's and the sweeper's instruments. ``registry=None``: working but unregistered."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry
        self.step_duration = Histogram(
            "kfbot_step_duration_seconds",
            "Duration of one attempt of a plan step's action, by action and result "
            "(ok, retry: a temporary error, error: a permanent error, crash: an unexpected exception).",
            ["action", "result"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.step_failures = Counter(
            "kfbot_step_failures",
            "Plan steps that failed for good (after retries), by action.",
            ["action"],
            registry=registry,
        )
        self.undo_failures = Counter(
            "kfbot_step_undo_failures",
            "Compensations (undo of a completed step) that failed and left a request needs-attention.",
            ["action"],
            registry=registry,
        )
        self.sweeps = Counter(
            "kfbot_scheduler_sweeps", "Timer sweeps run by the elected leader.", registry=registry
        )
        self.timers_handled = Counter(
            "kfbot_timers_handled",
            "Due timer rows handled by the sweeper, by timer kind and result (ok, error).",
            ["kind", "result"],
            registry=registry,
        )
        self._requests: RequestsCollector | None = None
        self._lock = threading.Lock()

    # -- the engine ------------------------------------------------------------------------------
    def step_attempt(self, action: str, seconds: float, result: str) -> None:
        self.step_duration.labels(action=action, result=result).observe(max(seconds, 0.0))

    def step_failed(self, action: str) -> None:
        self.step_failures.labels(action=action).inc()

    def undo_failed(self, action: str) -> None:
        self.undo_failures.labels(action=action).inc()

    # -- the sweeper -----------------------------------------------------------------------------
    def swept(self) -> None:
        self.sweeps.inc()

    def timer_handled(self, kind: str, ok: bool) -> None:
        self.timers_handled.labels(kind=kind, result=OK if ok else ERROR).inc()

    # -- scrape-time counts ----------------------------------------------------------------------
    def watch_requests(self, count: Callable[[], RequestCounts]) -> None:
        """Export ``count()`` as ``kfbot_requests`` on every scrape (replacing an earlier source).
        Without a registry there is nobody to scrape, and nothing is counted."""
        if self.registry is None:
            return
        with self._lock:
            if self._requests is not None:
                self.registry.unregister(self._requests)
            self._requests = RequestsCollector(count)
            self.registry.register(self._requests)
