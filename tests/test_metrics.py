"""Operations: ``/metrics`` after real requests, and the correlation ids in the JSON logs.

The bot is the real composition (``bot.app.start_slack``: SQLite, the dry-run provisioner, the
worker, the scheduler, the HTTP server) driven over HTTP with signed Slack requests; Slack's Web
API is the fake in ``tests/fakes/slack.py``. ``/metrics`` is fetched over HTTP and parsed with
prometheus_client's own parser, so the assertions are on what Prometheus would store.
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import provisioning
from bot import app as composition
from bot import blocks
from bot import logging as log
from bot.app import Running
from bot.http import HttpServer, wsgi_app
from bot.metrics import BotMetrics, MeteredNotifier, exposition, new_registry
from bot.notify import NullNotifier
from bot.scheduler import sweep_once
from bot.settings import Settings
from handlers import services
from handlers.errors import TemporaryError
from handlers.kinds import WorkspaceCreate
from handlers.model import Actor, Request, RequestState
from handlers.plan import JSON, Plan, StepOutcome
from handlers.ports import Delivery
from provisioning.metrics import count_requests
from tests.fakes.clock import FakeClock
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
)
from tests.fakes.slack_bot import bot_settings, migrate, running_bot
from tests.fakes.slack_edge import (
    ALICE,
    BOB,
    card_for,
    click,
    new_workspace_request,
    slash,
    wait_state,
    wait_until,
)

_REF = re.compile(r"\(ref ([0-9A-F]{8})\)")


def settings_for(fake: FakeSlack, tmp_path: Path, **extra: str) -> Settings:
    return bot_settings(
        fake, tmp_path, admins=BOB, KFBOT_WORKER_ID="metrics-test", KFBOT_NUDGE_AFTER="30m", **extra
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def bot(fake_slack: FakeSlack, tmp_path: Path, clock: FakeClock) -> Iterator[Running]:
    fake_slack.add_user(ALICE, "alice@example.com", "alice")
    fake_slack.add_user(BOB, "bob@example.com", "bob")
    with running_bot(settings_for(fake_slack, tmp_path), clock) as running:
        yield running


# -- helpers ---------------------------------------------------------------------------------------------


def scrape(bot: Running) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """GET /metrics; returns the content type and {(sample name, labels): value}."""
    with urllib.request.urlopen(bot.http.url("/metrics"), timeout=5) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return content_type, samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


# -- /metrics after requests went through the Slack edge ---------------------------------------------


def test_metrics_after_requests_through_the_slack_edge(
    bot: Running, fake_slack: FakeSlack, clock: FakeClock
) -> None:
    fake_slack.rate_limit_next("chat.postMessage", retry_after=0)  # the first card post is rate limited
    done_id = new_workspace_request(bot, fake_slack, name="team-a")
    card = card_for(fake_slack, done_id)  # posted anyway: the client retried after the 429
    clock.advance(timedelta(minutes=10))
    fake_slack.fail_next("chat.update", "message_not_found")  # the card update after the decision
    assert click(bot, fake_slack, card, blocks.APPROVE, user=BOB) == 200
    done = wait_state(bot, done_id, RequestState.SUCCEEDED)

    pending_id = new_workspace_request(bot, fake_slack, name="team-b")
    card_for(fake_slack, pending_id)
    clock.advance(timedelta(minutes=31))  # past KFBOT_NUDGE_AFTER: the nudge timer is due
    sweep_once(bot.backend, bot.edge.deps.core)

    content_type, samples = scrape(bot)
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    # requests by kind and state, counted in the database at scrape time (0 for the other states)
    assert value(samples, "kfbot_requests", kind="workspace.create", state="succeeded") == 1
    assert value(samples, "kfbot_requests", kind="workspace.create", state="pending") == 1
    assert ("kfbot_requests", frozenset({("kind", "workspace.create"), ("state", "failed")})) in samples
    assert value(samples, "kfbot_database_up") == 1
    # approval latency: one decision, ten minutes after the request was made
    assert value(samples, "kfbot_approval_latency_seconds_count", decision="approved") == 1
    assert value(samples, "kfbot_approval_latency_seconds_sum", decision="approved") == pytest.approx(600)
    assert value(samples, "kfbot_approval_latency_seconds_bucket", decision="approved", le="300.0") == 0
    assert value(samples, "kfbot_approval_latency_seconds_bucket", decision="approved", le="900.0") == 1
    # step durations: one successful attempt per step of the applied plan, labelled by action
    actions = [step.action for step in done.plan.steps]
    assert total(samples, "kfbot_step_duration_seconds_count", result="ok") == len(actions)
    for action in set(actions):
        ok_attempts = value(samples, "kfbot_step_duration_seconds_count", action=action, result="ok")
        assert ok_attempts == actions.count(action)
    assert total(samples, "kfbot_step_failures_total") == 0
    # the scheduler: sweeps (the one at start and ours) and the due nudge it handled
    assert value(samples, "kfbot_scheduler_sweeps_total") >= 1
    assert value(samples, "kfbot_timers_handled_total", kind="request.nudge", result="ok") == 1
    # Slack: the 429 and the failed chat.update
    assert value(samples, "kfbot_slack_rate_limited_total", method="chat.postMessage") == 1
    failed = value(samples, "kfbot_slack_api_errors_total", method="chat.update", error="message_not_found")
    assert failed == 1
    assert value(samples, "kfbot_info", provisioner="dry-run", version=provisioning_version(samples)) == 1
    assert value(samples, "process_cpu_seconds_total") >= 0


def provisioning_version(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    [labels] = [dict(ls) for (n, ls) in samples if n == "kfbot_info"]
    return labels["version"]


def test_each_bot_has_its_own_registry_and_nothing_is_global(fake_slack: FakeSlack, tmp_path: Path) -> None:
    before = set(REGISTRY._names_to_collectors)
    first_settings = settings_for(fake_slack, tmp_path)
    migrate(first_settings)
    first = composition.start_slack(first_settings, port=0)
    second = composition.start_slack(first_settings, port=0)  # a second registry: no "Duplicated timeseries"
    try:
        assert first.registry is not second.registry
        assert value(scrape(first)[1], "kfbot_database_up") == 1
        assert value(scrape(second)[1], "kfbot_database_up") == 1
    finally:
        first.stop()
        second.stop()
    assert set(REGISTRY._names_to_collectors) == before  # the global default registry is untouched


def test_a_failing_step_is_counted_and_the_database_going_away_does_not_fail_the_scrape(
    tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """The shell path (no Slack): a temporary error, then a permanent one, on one step."""
    registry = CollectorRegistry()
    metrics = provisioning.Metrics(registry)
    settings = settings_for(fake_slack, tmp_path)
    clock = FakeClock()
    backend = composition.build_backend(settings, clock, metrics=metrics)
    backend.migrate()
    calls = {"n": 0}

    class Flaky:
        def ensure(self, params: dict[str, JSON]) -> StepOutcome:
            calls["n"] += 1
            if calls["n"] == 1:
                raise TemporaryError("try again")
            raise ValueError("a bug")

        def undo(self, params: dict[str, JSON], outcome: StepOutcome) -> None:
            return None

    backend.actions["kubeflow.profile"] = Flaky()
    core = composition.build_core(settings, backend, NullNotifier(), backend.clock)
    alice = Actor("shell:alice", "alice@example.com")
    kind = WorkspaceCreate(name="team-c", owner="alice@example.com")
    submitted = services.submit(core, alice, kind, idempotency_key=None)
    services.decide(
        core,
        Actor("shell:bob", "bob@example.com", is_admin=True),
        submitted.request.id,
        approve=True,
        decision_key="k1",
    )
    backend.run_until_idle(NullNotifier())  # the temporary error defers the request...
    clock.advance(timedelta(minutes=1))
    backend.run_until_idle(NullNotifier())  # ...and its retry time has come
    text = generate_latest(registry).decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    profile = "kubeflow.profile"
    assert value(samples, "kfbot_step_duration_seconds_count", action=profile, result="retry") == 1
    assert value(samples, "kfbot_step_duration_seconds_count", action=profile, result="crash") == 1
    assert value(samples, "kfbot_step_failures_total", action=profile) == 1
    assert value(samples, "kfbot_requests", kind="workspace.create", state="failed") == 1
    backend.close()
    (tmp_path / "kfbot.db").unlink()
    (tmp_path / "kfbot.db").mkdir()  # a path SQLite cannot open
    text = generate_latest(registry).decode()
    assert "kfbot_database_up 0.0" in text and "kfbot_requests{" not in text


def test_approval_latency_counts_human_decisions_only() -> None:
    registry = CollectorRegistry()
    seen: list[str] = []

    class Inner:
        def publish(self, request: Request, events: Any, card: Any, threads: Any = None) -> Delivery:
            seen.append(request.id)
            return Delivery()

    notifier = MeteredNotifier(Inner(), BotMetrics(registry))
    auto = _request("RAUTO01")
    auto.approve(Actor("kfbot", "kfbot@system", is_admin=True), auto.created_at, auto=True)
    notifier.publish(auto, auto.take_events(), None)
    rejected = _request("RREJ001")
    bob = Actor(BOB, "bob@example.com", is_admin=True)
    rejected.reject(bob, "no", rejected.created_at + timedelta(hours=2))
    notifier.publish(rejected, rejected.take_events(), None)

    assert seen == ["RAUTO01", "RREJ001"]  # every event is still delivered
    assert registry.get_sample_value("kfbot_approval_latency_seconds_count", {"decision": "approved"}) is None
    assert registry.get_sample_value("kfbot_approval_latency_seconds_sum", {"decision": "rejected"}) == 7200


def _request(request_id: str) -> Request:
    return Request(
        id=request_id,
        kind="workspace.create",
        args={"name": "x"},
        requester_id=ALICE,
        requester_email="alice@example.com",
        plan=Plan.of([]),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


# -- structured logs: one correlation id from the user's "ref" to every log line -----------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = log.configure(fmt="json", level="INFO", provisioner="dry-run", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_listener_error_logs_the_ref_the_user_sees(
    bot: Running, fake_slack: FakeSlack, json_logs: io.StringIO
) -> None:
    fake_slack.fail_next("users.info", "fatal_error")
    reply = slash(bot, fake_slack, "requests", user=ALICE, name="boom")
    match = _REF.search(reply)
    assert match, reply
    ref = match.group(1)
    errors = wait_until(
        lambda: [r for r in records(json_logs) if r["level"] == "ERROR" and r.get("correlation_id") == ref],
        "the error logged under the user's ref",
    )
    assert "fatal_error" in errors[0].get("exc", "")  # the detail is in the log, not in Slack
    assert all(r["provisioner"] == "dry-run" for r in records(json_logs))
    assert BOT_TOKEN not in json_logs.getvalue() and SIGNING_SECRET not in json_logs.getvalue()


def test_every_log_line_of_a_request_being_applied_carries_its_correlation_id(
    tmp_path: Path, fake_slack: FakeSlack, json_logs: io.StringIO
) -> None:
    settings = settings_for(fake_slack, tmp_path)
    backend = composition.build_backend(settings, FakeClock())
    backend.migrate()
    action_log = logging.getLogger("provisioning.kubeflow")

    class Crashing:
        def ensure(self, params: dict[str, JSON]) -> StepOutcome:
            action_log.warning("about to fail with password=hunter22-secret")
            raise RuntimeError("boom")

        def undo(self, params: dict[str, JSON], outcome: StepOutcome) -> None:
            return None

    backend.actions["kubeflow.profile"] = Crashing()
    core = composition.build_core(settings, backend, NullNotifier(), backend.clock)
    kind = WorkspaceCreate(name="team-d", owner="alice@example.com")
    alice = Actor("shell:alice", "alice@example.com")
    request = services.submit(core, alice, kind, idempotency_key=None, correlation_id="C0FFEE42").request
    services.decide(
        core, Actor("shell:bob", "bob@example.com", is_admin=True), request.id, approve=True, decision_key="k"
    )
    backend.run_until_idle(NullNotifier())
    failed = request_state(backend, request.id)
    backend.close()

    assert failed.state is RequestState.FAILED and "(ref C0FFEE42)" in (failed.error or "")
    lines = [r for r in records(json_logs) if r["logger"].startswith("provisioning.")]
    assert {r["logger"] for r in lines} >= {"provisioning.kubeflow", "provisioning.engine"}
    assert all(r.get("correlation_id") == "C0FFEE42" for r in lines), lines
    assert "hunter22" not in json_logs.getvalue()


def request_state(backend: Any, request_id: str) -> Request:
    with backend.uow() as uow:
        request: Request = uow.requests.get(request_id)
        return request


def test_metrics_endpoint_is_part_of_the_health_app() -> None:
    """The WSGI app that serves /healthz in both modes serves /metrics; 404 when none is wired."""
    registry, _ = new_registry("live")
    server = HttpServer(
        wsgi_app(lambda: (True, {}), metrics=lambda accept: exposition(registry, accept)), "127.0.0.1", 0
    ).start()
    bare = HttpServer(wsgi_app(lambda: (True, {})), "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(server.url("/metrics"), timeout=5) as resp:
            assert 'kfbot_info{provisioner="live"' in resp.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bare.url("/metrics"), timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()
        bare.stop()


def test_requests_are_counted_with_one_group_by_on_each_database(database: Any) -> None:
    assert count_requests(database) == {}
    with database.uow() as uow:
        for n, state in enumerate([RequestState.PENDING, RequestState.PENDING, RequestState.REJECTED]):
            request = _request(f"RCOUNT{n}")
            request.state = state
            uow.requests.add(request)
        uow.commit()
    counts = count_requests(database)
    assert counts == {("workspace.create", "pending"): 2, ("workspace.create", "rejected"): 1}
