"""Test-suite wiring: the fakes that speak real protocols, loaded for every test module, a log
capture at DEBUG through the bot's own handler, and the figures some suites report at the end of
the run (``tests.fakes.figures``)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from bot import logging as log
from tests.fakes.figures import FIGURES, merge

# Hypothesis fails an example slower than 200 ms, or slow data generation, by default: a claim on
# speed that a loaded CI machine breaks (speed is measured by bench/). Tests that set their own
# settings inherit this profile for what they leave out.
settings.register_profile("kfbot", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kfbot")

pytest_plugins = [
    "tests.fakes.apiserver_fixtures",
    "tests.fakes.slack_fixtures",
    "tests.fakes.aws_fixtures",
    "tests.fakes.db_fixtures",
    "tests.fakes.cost_fixtures",
]


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Everything logged, at DEBUG, through ``bot.logging.configure``'s handler and filters (JSON)."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {n: logging.getLogger(n).level for n in log.QUIET_LOGGERS})
    log.configure(fmt="json", level="DEBUG", provisioner="live", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            if handler not in saved[1]:
                root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # On a pytest-xdist worker: hand this process's figures to the controller, which reports them.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["figures"] = json.dumps(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    merge(json.loads(getattr(node, "workeroutput", {}).get("figures", "{}")))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("what the generated suites explored")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value}")
