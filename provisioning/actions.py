"""The action protocol: how a plan step is carried out.

Each step names an action (``Step.action``). An action is idempotent: ``ensure`` reads first and
creates or patches only what differs, treats "already exists" as success, and reports whether it
created the object. ``undo`` removes only what ``ensure`` created (``outcome.created``) and treats
"already gone" as success. Both raise only ``handlers.errors`` types: ``TemporaryError`` for what
a retry can fix, ``PermanentError`` for what it cannot; third-party errors are translated here at
the adapter boundary.

Live actions are ``TypedAction``s: the step's params are parsed into the action's type
(``handlers.actions.PARAMS``) once, before the adapter's code runs, so a malformed stored step is a
``PermanentError`` naming the action and the field and no call goes out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from handlers.actions import REQUEST_MARK, StepParams
from handlers.errors import PermanentError
from handlers.plan import JSON, StepOutcome

__all__ = [
    "REQUEST_MARK", "Action", "ActionRegistry", "KeyedLock", "TypedAction", "check_removable", "registry_of",
]


def check_removable(what: str, *, marked: bool, adopted: bool) -> None:
    """The one ownership rule every removal action (``*.remove``) applies before it deletes.

    An object goes only if it carries the bot's mark (``kf-chatops/request``, which only the bot
    writes, at creation) or the step says ``adopted: true`` (the planner copies it from a live
    workspace's adopted registry entry, and the plan was approved). Anything else -- a bucket the
    bot once tagged but never made, a nodegroup or Dex login made by hand -- is someone else's,
    whatever a drift report or a stale record says."""
    if marked or adopted:
        return
    raise PermanentError(
        f"{what} carries neither kf-chatops's mark nor an adopted record naming it; "
        "the bot did not make it, so it was left alone."
    )


class Action(Protocol):
    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome: ...

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None: ...


P = TypeVar("P", bound=StepParams)


@dataclass(frozen=True)
class TypedAction(Generic[P]):
    """An ``Action`` made of two callables over ``params_type`` (so one adapter class can offer
    several actions); its name is ``params_type.ACTION``."""

    params_type: type[P]
    ensure_fn: Callable[[P], StepOutcome]
    undo_fn: Callable[[P, StepOutcome], None]

    def ensure(self, params: Mapping[str, JSON]) -> StepOutcome:
        return self.ensure_fn(self.params_type.parse(params))

    def undo(self, params: Mapping[str, JSON], outcome: StepOutcome) -> None:
        self.undo_fn(self.params_type.parse(params), outcome)


ActionRegistry = Mapping[str, Action]
"""Action name (``"aws.bucket"``) -> implementation."""


def registry_of(*actions: TypedAction[Any]) -> dict[str, Action]:
    """An adapter's registry, each action under the name its params type belongs to."""
    return {str(action.params_type.ACTION): action for action in actions}


class KeyedLock(Protocol):
    """A cross-process mutex by name (a database lock), for read-modify-write on remote objects
    that offer no compare-and-set, such as an IAM managed policy."""

    def hold(self, key: str) -> AbstractContextManager[None]: ...
