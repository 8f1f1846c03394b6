"""Test-suite wiring: the fakes that speak real protocols, loaded for every test module."""

from __future__ import annotations

pytest_plugins = [
    "tests.fakes.apiserver_fixtures",
    "tests.fakes.slack_fixtures",
    "tests.fakes.aws_fixtures",
    "tests.fakes.db_fixtures",
]
