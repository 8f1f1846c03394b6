"""Figures a suite reports at the end of the run: ``tests/conftest.py`` prints them in pytest's
terminal summary (shown without ``-s``), e.g. how many hostile requests were sent and accepted."""

from __future__ import annotations

from collections import Counter

FIGURES: Counter[str] = Counter()


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the figure ``name`` (``n=0`` makes a figure show up even when it stays 0)."""
    FIGURES[name] += n
