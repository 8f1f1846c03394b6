"""Plans: the concrete steps a request will take, as data.

A plan is built by a request kind from its arguments and the settings, and nothing else it
observed: the digest covers only the desired end state (actions, object keys and desired
parameters), never resourceVersions, existing policy versions or usage. That makes "approved ==
applied" checkable: at approved -> applying the plan is rendered again and its digest compared
with the approved one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

JSON: TypeAlias = "Mapping[str, JSON] | Sequence[JSON] | str | int | float | bool | None"
"""A JSON value, read-only: what plans, outcomes and stored rows hold (``canonical_json`` still
rejects NaN and infinities, which the type cannot express)."""


def as_object(value: JSON) -> Mapping[str, JSON]:
    """``value`` read as a JSON object; TypeError for any other value."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def as_list(value: JSON) -> Sequence[JSON]:
    """``value`` read as a JSON array; TypeError for any other value (a string too, though it is a
    ``Sequence``)."""
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a JSON array, got {type(value).__name__}")
    return value


def as_text(value: JSON) -> str:
    """``value`` read as a JSON string; TypeError for any other value."""
    if not isinstance(value, str):
        raise TypeError(f"expected a JSON string, got {type(value).__name__}")
    return value


def as_texts(value: JSON) -> tuple[str, ...]:
    """``value`` read as a JSON array of strings; TypeError for any other value."""
    return tuple(as_text(item) for item in as_list(value))


def as_text_map(value: JSON) -> dict[str, str]:
    """``value`` read as a JSON object of strings; TypeError for any other value."""
    return {key: as_text(item) for key, item in as_object(value).items()}


def canonical_json(value: JSON) -> str:
    """Stable JSON text: sorted keys, no whitespace; raises TypeError for non-JSON values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Step:
    """One idempotent ``ensure``-style action.

    Attributes:
        action: which adapter operation runs it, e.g. ``"kubeflow.profile"`` or ``"aws.bucket"``.
        key: the identity of the object it manages, unique within a plan (``"Profile/team-a"``).
        params: the desired object or call parameters; JSON only, part of the plan digest.
        summary: one line for people; not part of the digest.
    """

    action: str
    key: str
    params: Mapping[str, JSON]
    summary: str = ""

    def identity(self) -> JSON:
        return {"action": self.action, "key": self.key, "params": self.params}

    def to_json(self) -> dict[str, JSON]:
        return {"action": self.action, "key": self.key, "params": dict(self.params), "summary": self.summary}

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Step:
        return cls(
            action=as_text(data["action"]),
            key=as_text(data["key"]),
            params=as_object(data["params"]),
            summary=as_text(data.get("summary", "")),
        )


@dataclass(frozen=True)
class Plan:
    """Ordered steps plus warnings for the approver (warnings are advice, not part of the digest)."""

    steps: tuple[Step, ...]
    warnings: tuple[str, ...] = ()
    cost: Mapping[str, JSON] = field(default_factory=dict)

    def digest(self) -> str:
        body = canonical_json([step.identity() for step in self.steps])
        return hashlib.sha256(body.encode()).hexdigest()

    def to_json(self) -> dict[str, JSON]:
        return {
            "steps": [step.to_json() for step in self.steps],
            "warnings": list(self.warnings),
            "cost": dict(self.cost),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Plan:
        return cls(
            steps=tuple(Step.from_json(as_object(s)) for s in as_list(data["steps"])),
            warnings=as_texts(data.get("warnings", ())),
            cost=as_object(data.get("cost", {})),
        )

    @classmethod
    def of(
        cls, steps: Sequence[Step], warnings: Sequence[str] = (), cost: Mapping[str, JSON] | None = None
    ) -> Plan:
        keys = [s.key for s in steps]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate step keys in plan: {keys}")
        return cls(steps=tuple(steps), warnings=tuple(warnings), cost=dict(cost or {}))


class StepStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNDONE = "undone"


@dataclass(frozen=True)
class StepOutcome:
    """What an ``ensure`` found or did.

    Attributes:
        created: True when the bot created the object (so compensation and delete may remove it);
            False when it already existed and is left alone.
        details: observed facts compensation needs (a previous value, an id AWS assigned). Never a
            secret.
        kept: what a removal left in place rather than lose data, named for people
            (``S3 bucket `b` ``): a non-empty bucket without ``--purge-data``.
    """

    created: bool
    details: Mapping[str, JSON] = field(default_factory=dict)
    kept: tuple[str, ...] = ()

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"created": self.created, "details": dict(self.details)}
        if self.kept:
            out["kept"] = list(self.kept)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> StepOutcome:
        return cls(
            created=bool(data["created"]),
            details=as_object(data.get("details", {})),
            kept=tuple(str(k) for k in as_list(data.get("kept") or ())),
        )
