"""The action protocol: how a plan step is carried out.

Each step names an action (``Step.action``). An action is idempotent: ``ensure`` reads first and
creates or patches only what differs, treats "already exists" as success, and reports whether it
created the object. ``undo`` removes only what ``ensure`` created (``outcome.created``) and treats
"already gone" as success. Both raise only ``handlers.errors`` types: ``TemporaryError`` for what
a retry can fix, ``PermanentError`` for what it cannot; third-party errors are translated here at
the adapter boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from handlers.plan import JSON, StepOutcome


class Action(Protocol):
    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome: ...

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None: ...


REQUEST_MARK = "_request"
"""The param key under which the engine passes the id of the request an action runs for; actions
mark what they create with it, so a retried step knows its own objects."""


@dataclass(frozen=True)
class BoundAction:
    """An ``Action`` made of two callables, so one adapter class can offer several actions."""

    ensure_fn: Callable[[Mapping[str, JSON]], StepOutcome]
    undo_fn: Callable[[Mapping[str, JSON], StepOutcome], None]

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        return self.ensure_fn(params)

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        self.undo_fn(params, outcome)


ActionRegistry = Mapping[str, Action]
"""Action name (``"aws.bucket"``) -> implementation."""


class KeyedLock(Protocol):
    """A cross-process mutex by name (a database lock), for read-modify-write on remote objects
    that offer no compare-and-set, such as an IAM managed policy."""

    def hold(self, key: str) -> AbstractContextManager[None]: ...
