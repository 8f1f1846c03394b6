"""Test-suite wiring: the fakes that speak real protocols, loaded for every test module."""

from __future__ import annotations

import pytest

from tests.fakes.figures import FIGURES

pytest_plugins = [
    "tests.fakes.apiserver_fixtures",
    "tests.fakes.slack_fixtures",
    "tests.fakes.aws_fixtures",
    "tests.fakes.db_fixtures",
]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("what the generated suites explored")
        for suite, line in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{suite}: {line}")
