"""Figures that suites report at the end of a run (``pytest_terminal_summary`` in tests/conftest.py,
shown without ``-s``): how much the generated security suites explored, so a run says what it
proved, not only that it passed."""

from __future__ import annotations

FIGURES: dict[str, int | str] = {}


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the figure ``name`` (``n=0`` makes a figure show up even when it stays 0)."""
    value = FIGURES.get(name, 0)
    FIGURES[name] = (value if isinstance(value, int) else 0) + n


def report(suite: str, line: str) -> None:
    """Set a suite's one-line summary; a suite overwrites its own line as it goes."""
    FIGURES[suite] = line


def merge(other: dict[str, int | str]) -> None:
    """Fold in the figures of another process (a pytest-xdist worker): counts add up, the
    suites' lines of several workers are kept side by side."""
    for name, value in other.items():
        mine = FIGURES.get(name)
        if isinstance(value, int) and isinstance(mine, int | None):
            FIGURES[name] = (mine or 0) + value
        else:
            FIGURES[name] = value if mine is None else f"{mine}; {value}"
