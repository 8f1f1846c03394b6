"""Figures that suites report at the end of a run (``pytest_terminal_summary`` in tests/conftest.py):
how much the generated security suites explored, so a run says what it proved, not only that it
passed."""

from __future__ import annotations

FIGURES: dict[str, str] = {}
"""Suite name -> one line of figures; a suite overwrites its own line as it goes."""


def report(suite: str, line: str) -> None:
    FIGURES[suite] = line
