"""The action protocol: how a plan step is carried out.

Each step names an action (``Step.action``). An action is idempotent: ``ensure`` reads first and
creates or patches only what differs, treats "already exists" as success, and reports whether it
created the object. ``undo`` removes only what ``ensure`` created (``outcome.created``) and treats
"already gone" as success. Both raise only ``handlers.errors`` types: ``TemporaryError`` for what
a retry can fix, ``PermanentError`` for what it cannot; third-party errors are translated here at
the adapter boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from handlers.plan import JSON, StepOutcome


class Action(Protocol):
    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome: ...

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None: ...


ActionRegistry = Mapping[str, Action]
"""Action name (``"aws.bucket"``) -> implementation."""


class KeyedLock(Protocol):
    """A cross-process mutex by name (a database lock), for read-modify-write on remote objects
    that offer no compare-and-set, such as an IAM managed policy."""

    def hold(self, key: str) -> AbstractContextManager[None]: ...
