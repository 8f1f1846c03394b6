"""Request kinds: one module per kind, each holding everything about it.

A kind module (``quota.py`` is a full example; docs/ARCHITECTURE.md walks through it) holds the
frozen dataclass (arguments, validation on construction), its ``SYNTAX`` (``/kf`` words, flags;
``handlers.parse`` runs it), its ``POLICY`` row (who may ask, what applies without an admin;
``handlers.policy`` reads all rows as one table), its pure ``plan``, its pure ``on_success`` (the
registry changes and timers the engine records), its ``TIMERS`` with their handlers, and its
texts. ``base`` holds the protocol and what kinds share. This package is the registry: a new kind
is a new module plus one line in ``KINDS``.
"""

from __future__ import annotations

from collections.abc import Mapping

from handlers import errors
from handlers.kinds import base
from handlers.kinds.base import (
    MANAGED_BY,
    ROLES,
    Applied,
    PlanContext,
    RequestKind,
    Success,
    Syntax,
    SystemRequest,
    TimerKind,
    TimerNotice,
    TimerSpec,
    people_to_tell,
    to_args,
    token_account_name,
)
from handlers.kinds.drift_adopt import DriftAdopt
from handlers.kinds.drift_cleanup import DriftCleanup
from handlers.kinds.gpu_hold import GpuHold
from handlers.kinds.gpu_scale import DOWN_SYNTAX, DOWN_USAGE, GpuScale
from handlers.kinds.login_remove import LoginRemove
from handlers.kinds.notebook_stop import NotebookStop
from handlers.kinds.password_reset import PasswordResetFor
from handlers.kinds.quota import QUOTA_FLAGS, QuotaChange, quota_subject, quota_timer_ref
from handlers.kinds.share import Share
from handlers.kinds.token_issue import AUDIENCES, PIPELINES_AUDIENCE, TokenIssue
from handlers.kinds.token_revoke import TokenRevoke
from handlers.kinds.unshare import Unshare
from handlers.kinds.workspace_adopt import ADOPT_BUTTON, WorkspaceAdopt, adopt_button_value, adopt_from_button
from handlers.kinds.workspace_create import (
    GPU_RESOURCE,
    GPU_TAINT,
    PINNING_LIMITS,
    WorkspaceCreate,
    gpu_nodegroup_taints,
)
from handlers.kinds.workspace_delete import WorkspaceDelete
from handlers.kinds.workspace_pin import WorkspacePin
from handlers.kinds.workspace_resize import WorkspaceResize
from handlers.kinds.workspace_transfer import WorkspaceTransfer
from handlers.model import Actor
from handlers.plan import JSON
from handlers.ports import Facts
from handlers.settings import CoreSettings

KINDS: Mapping[str, type[RequestKind]] = {
    cls.KIND: cls
    for cls in (
        WorkspaceCreate,
        WorkspaceDelete,
        WorkspacePin,
        Share,
        Unshare,
        QuotaChange,
        TokenIssue,
        TokenRevoke,
        NotebookStop,
        GpuScale,
        GpuHold,
        WorkspaceResize,
        WorkspaceTransfer,
        PasswordResetFor,
        WorkspaceAdopt,
        DriftAdopt,
        DriftCleanup,
        LoginRemove,
    )
}

_MORE_SYNTAXES: tuple[tuple[Syntax, str], ...] = ((DOWN_SYNTAX, DOWN_USAGE),)
"""Kinds spelled more than one way (``/kf gpu down`` is ``gpu.scale`` with 0 nodes)."""
SYNTAXES: Mapping[str, Syntax] = {
    **{cls.SYNTAX.command: cls.SYNTAX for cls in KINDS.values()},
    **{syntax.command: syntax for syntax, _ in _MORE_SYNTAXES},
}
"""``/kf`` words -> the kind's syntax (``handlers.parse`` runs them)."""
USAGES: Mapping[str, str] = {
    **{cls.SYNTAX.command: cls.USAGE for cls in KINDS.values()},
    **{syntax.command: usage for syntax, usage in _MORE_SYNTAXES},
}

TIMERS: Mapping[str, TimerKind] = {t.name: t for cls in KINDS.values() for t in cls.TIMERS}
"""Timer kind -> its handler, for every timer a kind's success schedules."""


def complete(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> RequestKind:
    """``kind`` with what its command's shorthand left out filled in (``Syntax.complete``)."""
    fill = type(kind).SYNTAX.complete
    return kind if fill is None else fill(kind, actor, facts, settings)


def from_args(kind_name: str, args: Mapping[str, JSON]) -> RequestKind:
    cls = KINDS.get(kind_name)
    if cls is None:
        raise errors.InvalidInput(f"Unknown request kind {kind_name!r}.")
    return base.from_args(cls, args)


__all__ = [
    "ADOPT_BUTTON",
    "AUDIENCES",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "KINDS",
    "MANAGED_BY",
    "PINNING_LIMITS",
    "PIPELINES_AUDIENCE",
    "QUOTA_FLAGS",
    "ROLES",
    "SYNTAXES",
    "TIMERS",
    "USAGES",
    "Applied",
    "DriftAdopt",
    "DriftCleanup",
    "GpuHold",
    "GpuScale",
    "LoginRemove",
    "NotebookStop",
    "PasswordResetFor",
    "PlanContext",
    "QuotaChange",
    "RequestKind",
    "Share",
    "Success",
    "SystemRequest",
    "TimerKind",
    "TimerNotice",
    "TimerSpec",
    "TokenIssue",
    "TokenRevoke",
    "Unshare",
    "WorkspaceAdopt",
    "WorkspaceCreate",
    "WorkspaceDelete",
    "WorkspacePin",
    "WorkspaceResize",
    "WorkspaceTransfer",
    "adopt_button_value",
    "adopt_from_button",
    "complete",
    "from_args",
    "gpu_nodegroup_taints",
    "people_to_tell",
    "quota_subject",
    "quota_timer_ref",
    "to_args",
    "token_account_name",
]
