"""``drift.adopt``: the registry follows the cluster for one drift (the drift report's **Adopt into
the record** button; ``handlers.drift`` builds it from the drift as read at the click).

Nothing changes in the cluster, so the plan has no step; on success the engine records what the
cluster has: a grant added or changed by hand (``PutGrant``, which ``policy.grant_recorded``
accepts from this kind's audit trail as from a share), a grant removed by hand (``DeleteGrant``),
a quota edited by hand (``RegistryFacts`` reads the newest of the quota changes and these), a
nodegroup's minimum and maximum (``UpdateWorkspaceObjects``). It is filed as a system decision
(``system:drift.adopt``, the clicking admin named in its trigger and ``adopted_by``) only through
``services.adopt_drift``, which refuses anyone but an admin who does not benefit; the typed
command is refused (the value must come from the drift read now, never from what someone typed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from handlers import errors, naming
from handlers.kinds.base import (
    Applied,
    DeleteGrant,
    Parsed,
    PlanContext,
    PolicyRow,
    PutGrant,
    RegistryChange,
    Success,
    Syntax,
    TimerKind,
    UpdateWorkspaceObjects,
    check_role,
    require_workspace,
    short_name,
    workspace_people,
)
from handlers.kinds.quota import quota_subject
from handlers.plan import Plan
from handlers.ports import Facts

USAGE = "/kf drift (Adopt into the record is a button of the drift report)"
WHATS = ("grant", "ungrant", "quota", "scaling")
_QUANTITY = 64


def _short(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _QUANTITY


def _build(p: Parsed) -> DriftAdopt:
    raise errors.InvalidInput(
        "Adopt into the record is a button of the drift report (`/kf drift`): it records what the "
        "cluster has now, never a value typed here.",
        usage=USAGE,
    )


@dataclass(frozen=True)
class DriftAdopt:
    KIND: ClassVar[str] = "drift.adopt"
    USAGE: ClassVar[str] = USAGE
    SYNTAX: ClassVar[Syntax] = Syntax("drift adopt", ("KEY",), {}, _build)
    POLICY: ClassVar[PolicyRow] = PolicyRow()  # only ever a system decision (services.adopt_drift)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    drift: str
    workspace: str
    what: str
    adopted_by: str
    user: str | None = None
    role: str | None = None
    hard: Mapping[str, str] = field(default_factory=dict)
    """quota: the whole quota to record (the Profile's ``resourceQuotaSpec.hard`` now)."""
    step: str | None = None
    min_size: int | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "adopted_by", naming.normalize_email(self.adopted_by))
        if self.what not in WHATS:
            raise errors.InvalidInput(f"{naming.show_value(str(self.what))} is not a drift to adopt.")
        if not isinstance(self.drift, str) or not 3 <= len(self.drift) <= 300:
            raise errors.InvalidInput("A drift key is 3 to 300 characters.", field="drift")
        if self.what in ("grant", "ungrant"):
            object.__setattr__(self, "user", naming.normalize_email(str(self.user or "")))
        if self.what == "grant":
            check_role(str(self.role))
        if self.what == "quota":
            hard = self.hard if isinstance(self.hard, Mapping) else {}
            if not hard or not all(_short(k) and _short(v) for k, v in hard.items()):
                raise errors.InvalidInput("A quota to adopt names resources and values.", field="hard")
            object.__setattr__(self, "hard", dict(hard))
        if self.what == "scaling":
            sizes = (self.min_size, self.max_size)
            if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 1000 for s in sizes):
                raise errors.InvalidInput("A scaling to adopt has whole minimum and maximum sizes.")
            assert self.min_size is not None and self.max_size is not None
            if self.min_size > self.max_size or not self.step:
                raise errors.InvalidInput("A scaling to adopt names its nodegroup and min <= max.")

    def subject(self) -> str:
        if self.what in ("grant", "ungrant"):
            return f"grant:{self.workspace}:{self.user}"
        if self.what == "quota":
            return quota_subject(self.workspace)
        return f"drift:{self.workspace}:{self.step}"

    def describe(self) -> str:
        return f"record what the cluster has for `{self.drift}` (adopted by {self.adopted_by})"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Adopt into the record: {self.what} of {self.workspace}, by {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        people = workspace_people(facts, self.workspace)
        return (*people, self.user) if self.user else people

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        if self.what == "scaling" and self.step not in ws.created:
            raise errors.InvalidInput(f"`{self.workspace}` has no nodegroup recorded as {self.step}.")
        return Plan.of(
            [],
            [f"Nothing changes in the cluster: the bot's record of `{self.workspace}` takes the "
             f"cluster's state ({self._what()})."],
        )

    def _what(self) -> str:
        if self.what == "grant":
            return f"{self.user} has {self.role} access"
        if self.what == "ungrant":
            return f"{self.user} has no access"
        if self.what == "quota":
            return "quota " + ", ".join(f"{k}={v}" for k, v in sorted(self.hard.items()))
        return f"nodegroup scales {self.min_size}-{self.max_size}"

    def on_success(self, done: Applied) -> Success:
        changes: tuple[RegistryChange, ...] = ()
        if self.what == "grant":
            changes = (PutGrant(self.workspace, str(self.user), str(self.role), done.request_id, None),)
        elif self.what == "ungrant":
            changes = (DeleteGrant(self.workspace, str(self.user)),)
        elif self.what == "scaling":
            scaling = {"minSize": self.min_size, "maxSize": self.max_size, "desiredSize": self.min_size}
            changes = (UpdateWorkspaceObjects(self.workspace, merge={str(self.step): {"scaling": scaling}}),)
        return Success(changes=changes)  # a quota is read back from this request (RegistryFacts)
