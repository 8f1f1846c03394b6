"""``/metrics``: the Prometheus registry of one running bot, and what the Slack edge observes.

The composition root (``bot.app.start_slack``) makes one ``CollectorRegistry`` per running bot
(never prometheus_client's global default registry, and nothing at import) and hands it to:

* ``provisioning.Metrics``: step durations and failures (the engine), scheduler sweeps and due
  timer rows (the sweeper), ``kfbot_requests{kind,state}`` counted in the database at scrape time;
* ``BotMetrics`` here: approval latency, Slack API errors and rate limits, and ``kfbot_info``.

Slack calls are observed by ``SlackCallObserver``, a slack_sdk ``RetryHandler`` that never asks
for a retry: the ``WebClient`` consults its retry handlers after every response (200 with
``ok: false``, 429, other HTTP errors) and connection error, and Bolt copies the handler list
into the client it makes for each listener, so every call the bot makes passes it, whichever
component makes it. It is listed first, so it also sees the 429s the rate-limit handler retries.

Approval latency is observed by ``MeteredNotifier`` when a decision is published (the moment it
is committed): ``created_at`` -> ``decided_at`` of approved and rejected requests. Auto-approvals
(no human in the loop, latency 0) are not observed.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from handlers.model import Event, EventType, Request
from handlers.ports import Delivery, Notifier

logger = logging.getLogger(__name__)
APPROVAL_BUCKETS: Final = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0)
"""Seconds: a minute to the default 72 h request TTL."""
_DECISIONS: Final = {EventType.APPROVED: "approved", EventType.REJECTED: "rejected"}


def _version() -> str:
    try:
        return importlib.metadata.version("kf-chatops")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class BotMetrics:
    """The Slack edge's instruments; ``registry=None``: working but unregistered."""

    def __init__(self, registry: CollectorRegistry | None = None, *, provisioner: str = "dry-run") -> None:
        self.registry = registry
        self.approval_latency = Histogram(
            "kfbot_approval_latency_seconds",
            "Time from a request's creation to an admin's decision, by decision (approved, rejected).",
            ["decision"],
            buckets=APPROVAL_BUCKETS,
            registry=registry,
        )
        self.slack_errors = Counter(
            "kfbot_slack_api_errors",
            "Slack Web API calls that failed, by method and error (Slack's error code, http_<status>, "
            "or the connection error's type). Rate limits are counted in kfbot_slack_rate_limited_total.",
            ["method", "error"],
            registry=registry,
        )
        self.slack_rate_limited = Counter(
            "kfbot_slack_rate_limited",
            "Slack Web API calls answered 429 (rate limited), by method; the client retries them.",
            ["method"],
            registry=registry,
        )
        self.info = Info("kfbot", "The running kfbot: version and active provisioner.", registry=registry)
        self.info.info({"version": _version(), "provisioner": provisioner})

    def observe_decision(self, request: Request, events: Sequence[Event]) -> None:
        for event in events:
            decision = _DECISIONS.get(event.type)
            if decision is None or request.decided_at is None:
                continue
            seconds = (request.decided_at - request.created_at).total_seconds()
            self.approval_latency.labels(decision=decision).observe(max(seconds, 0.0))


def new_registry(provisioner: str) -> tuple[CollectorRegistry, BotMetrics]:
    """A fresh registry with process metrics and the Slack edge's instruments on it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry, BotMetrics(registry, provisioner=provisioner)


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The page Prometheus scrapes and its content type: the text format, or OpenMetrics when the
    scraper's ``Accept`` header asks for it."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


def _method(request: HttpRequest) -> str:
    path = request.url.split("?", 1)[0]
    return path.rsplit("/api/", 1)[-1] if "/api/" in path else "unknown"


class SlackCallObserver(RetryHandler):
    """Counts Slack API errors and rate limits; never retries (see the module docstring)."""

    def __init__(self, metrics: BotMetrics) -> None:
        super().__init__(max_retry_count=0)
        self._metrics = metrics

    def can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        # Called once per attempt: a 429 that the next handler retries is counted once per 429.
        method = _method(request)
        if response is None:
            self._metrics.slack_errors.labels(method=method, error=type(error).__name__).inc()
        elif response.status_code == 429:
            self._metrics.slack_rate_limited.labels(method=method).inc()
        elif response.status_code >= 400:
            self._metrics.slack_errors.labels(method=method, error=f"http_{response.status_code}").inc()
        else:
            body: object = response.body  # declared a dict; checked, as a reply may not be JSON
            if isinstance(body, dict) and body.get("ok") is False:
                error_code = str(body.get("error") or "unknown")[:64]
                self._metrics.slack_errors.labels(method=method, error=error_code).inc()
        return False

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return False


class MeteredNotifier:
    """A ``Notifier`` that observes approval latency, then delegates."""

    def __init__(self, inner: Notifier, metrics: BotMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: tuple[str, str] | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        try:
            self._metrics.observe_decision(request, events)
        except Exception:  # a metric never stops a notification (the port must not raise)
            logger.exception("could not observe the decision on %s", request.id)
        return self.inner.publish(request, events, card, threads)
