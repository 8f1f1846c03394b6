"""``notebook.stop``: stop a Kubeflow Notebook the way the dashboard's Stop button does.

The step sets the Notebook's ``kubeflow-resource-stopped`` annotation to the time of the stop
(RFC 3339, UTC, whole seconds, as Kubeflow's jupyter web app writes it), by JSON merge patch; the
notebook controller then scales its StatefulSet to zero. The pod goes and its GPU with it; its
volumes stay, and Start in the dashboard brings it back. The workspace's owner or an admin stops
at once (``auto:notebook.stop``); anyone else is refused.

The bot's own stop (auto-stop, ``handlers.cost.autostop``) sets ``idle_for``: the plan then starts
with the guard step ``kubeflow.notebook.idle``, which reads the notebook server's activity when the
stop applies, through the scan's own probe, and refuses unless it has been idle for at least that
long. What the last scan saw, or what the database says, is never enough to stop someone's work;
a person's own stop has no guard (they decided)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from handlers import errors, naming, units
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    kubeflow_user,
    require_workspace,
    short_name,
    workspace_people,
)
from handlers.kinds.gpu_common import owner_or_admin_applies, owner_or_admin_may_ask, validate_notebook_name
from handlers.model import Actor
from handlers.plan import Plan, Step
from handlers.ports import Facts
from handlers.settings import CoreSettings

STOP_ANNOTATION = "kubeflow-resource-stopped"
"""Kubeflow's stop annotation (the notebook controller and the jupyter web app read it)."""
USAGE = "/kf gpu stop WORKSPACE/NOTEBOOK|NOTEBOOK"
"""``NOTEBOOK`` alone: in the one workspace the requester owns."""


def split_notebook(text: str) -> tuple[str, str]:
    """``WORKSPACE/NOTEBOOK`` -> (workspace, notebook), each validated."""
    workspace, slash, notebook = text.partition("/")
    if not slash:
        raise errors.InvalidInput(
            f"Name the notebook as WORKSPACE/NOTEBOOK, not {naming.show_value(text)}.", usage=USAGE
        )
    naming.validate_workspace_name(workspace)
    return workspace, validate_notebook_name(notebook)


def _workspace(kind: RequestKind) -> str:
    assert isinstance(kind, NotebookStop)
    return kind.workspace or ""


def _build(p: Parsed) -> NotebookStop:
    text = p.positional[0]
    if "/" in text:
        return NotebookStop(*split_notebook(text))
    return NotebookStop(None, validate_notebook_name(text))


def _complete(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> RequestKind:
    """``/kf gpu stop NOTEBOOK``: the notebook of the one workspace the requester owns."""
    assert isinstance(kind, NotebookStop)
    if kind.workspace is not None:
        return kind
    owned = facts.owned_workspaces(kubeflow_user(actor, settings))
    if len(owned) != 1:
        mine = "no workspace" if not owned else f"{len(owned)} workspaces"
        raise errors.InvalidInput(
            f"You own {mine}, so say whose notebook: `/kf gpu stop WORKSPACE/{kind.notebook}`.", usage=USAGE
        )
    return dataclasses.replace(kind, workspace=owned[0])


@dataclass(frozen=True)
class NotebookStop:
    KIND: ClassVar[str] = "notebook.stop"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax(
        "gpu stop", ("WORKSPACE/NOTEBOOK|NOTEBOOK",), {}, _build, complete=_complete
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(
        auto_apply=owner_or_admin_applies("the workspace's owner or an admin stops a notebook", _workspace),
        may_request=owner_or_admin_may_ask("stop its notebooks", _workspace),
    )
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    workspace: str | None
    """None only between parsing ``/kf gpu stop NOTEBOOK`` and ``_complete``: never recorded."""
    notebook: str
    idle_for: timedelta | None = None
    """Set only by auto-stop: stop only if the notebook has been idle this long when it applies."""

    def __post_init__(self) -> None:
        if self.workspace is not None:
            naming.validate_workspace_name(self.workspace)
        validate_notebook_name(self.notebook)
        if self.idle_for is not None and (
            not isinstance(self.idle_for, timedelta) or self.idle_for < timedelta(minutes=1)
        ):
            raise errors.InvalidInput(
                "The idle period of an automatic stop must be at least 1m.", field="idle_for"
            )

    def subject(self) -> str:
        return f"notebook:{self.workspace}/{self.notebook}"

    def describe(self) -> str:
        return f"stop notebook `{self.notebook}` of `{self.workspace}`"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Stop notebook {self.workspace}/{self.notebook}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.workspace or "")  # their notebook is what stops

    def plan(self, ctx: PlanContext) -> Plan:
        if self.workspace is None:
            raise errors.InvalidInput("Say whose notebook: WORKSPACE/NOTEBOOK.", usage=USAGE)
        ws = require_workspace(ctx, self.workspace)
        guard: list[Step] = []
        if self.idle_for is not None:
            seconds = int(self.idle_for.total_seconds())
            guard.append(
                Step(
                    ActionName.NOTEBOOK_IDLE,
                    f"NotebookIdle/{ws.namespace}/{self.notebook}",
                    {"namespace": ws.namespace, "name": self.notebook, "idle_seconds": seconds},
                    f"check that notebook `{self.notebook}` has been idle for at least "
                    f"{units.format_duration(self.idle_for)} now, from its server's kernels and "
                    "terminals (refused otherwise: nothing stopped)",
                )
            )
        return Plan.of(
            [
                *guard,
                Step(
                    ActionName.NOTEBOOK_STOP,
                    f"Notebook/{ws.namespace}/{self.notebook}",
                    {"namespace": ws.namespace, "name": self.notebook},
                    f"stop Notebook `{self.notebook}` in `{ws.namespace}` (annotation `{STOP_ANNOTATION}`, "
                    "as the dashboard's Stop does)",
                )
            ],
            [
                "The notebook's pod stops and frees its GPU; its volumes and files stay. Start it "
                "again from the Kubeflow dashboard. A notebook stopped already stays as it is."
            ],
        )

    def on_success(self, done: Applied) -> Success:
        return Success()
