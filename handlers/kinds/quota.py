"""``quota``: change a workspace's Profile quota, for good or ``--for`` a while.

The owner lowering it, or raising it within the self-service step over the approved baseline,
applies at once; anything more waits for an admin. A temporary change schedules one
``quota.revert`` timer per resource; when it is due the bot files a quota change of its own back
to the value before, unless someone changed the quota since (then it says so instead)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from handlers import errors, naming, prices, units
from handlers.actions import ActionName
from handlers.kinds.base import (
    Applied,
    CancelTimer,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    SystemRequest,
    TimerKind,
    TimerNotice,
    TimerResult,
    TimerSpec,
    from_args,
    kubeflow_user,
    notify_list,
    require_workspace,
    short_name,
    text,
    workspace_people,
)
from handlers.kinds.gpu_common import bot_nodegroups, scaling_of
from handlers.kinds.workspace_create import GPU_RESOURCE
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, as_object, as_text
from handlers.ports import Facts, WorkspaceFacts
from handlers.settings import CoreSettings

QUOTA_FLAGS = {"gpu": GPU_RESOURCE, "cpu": "cpu", "memory": "memory", "storage": "requests.storage"}
QUOTA_REVERT = "quota.revert"


def quota_subject(workspace: str) -> str:
    """The subject of every quota change of ``workspace`` (an indexed column of the store)."""
    return f"quota:{workspace}"


def quota_timer_ref(workspace: str, resource: str) -> str:
    return f"{workspace}:{resource}"


def _below(wanted: str, used: str, resource: str) -> bool:
    try:
        return units.parse_quantity(wanted, resource) < units.parse_quantity(used, resource)
    except errors.InvalidInput:  # a usage the cluster reports in a form we do not parse: no advice
        return False


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, QuotaChange)
    ws = facts.workspace(kind.workspace)
    if ws is None or ws.owner != kubeflow_user(actor, settings):
        return None
    steps = settings.policy.quota_auto_increase
    for resource, value in kind.changes().items():
        wanted = units.parse_quantity(value, resource)
        current = units.parse_quantity(ws.quota.get(resource, "0"), resource)
        if wanted <= current:
            continue  # a decrease (or no change) is always the owner's to make
        # A raise is judged against the approved baseline, not the current value: otherwise
        # repeated +step requests would climb without limit.
        approved = ws.quota_baseline.get(resource, ws.quota.get(resource, "0"))
        baseline = units.parse_quantity(approved, resource)
        if wanted - baseline > units.parse_quantity(steps.get(resource, "0"), resource):
            return None
    return "the owner lowers the quota or raises it within the self-service step"


def _revert(ref: str, payload: Mapping[str, JSON], facts: Facts) -> TimerResult:
    """Undo a temporary quota change, unless someone changed the quota since: then say so instead
    of clobbering their change."""
    workspace = str(payload.get("workspace") or ref)
    ws = facts.workspace(workspace)
    if ws is None:
        return None
    was_set, previous = as_object(payload.get("set", {})), as_object(payload.get("previous", {}))
    changed = {r: v for r, v in was_set.items() if ws.quota.get(r) != v}
    origin_id = str(payload.get("request_id", ""))
    if changed:
        now_values = ", ".join(f"{r}={ws.quota.get(r, 'unset')}" for r in sorted(changed))
        return TimerNotice(
            origin_id,
            f"The temporary quota of `{workspace}` (`{origin_id}`) ran out but was not "
            f"reverted: someone changed it since ({now_values} now), and the bot does not "
            "overwrite that. Change it with `/kf quota` if it should go back.",
            # The owner and the admins decide what the quota should be now.
            notify=(ws.owner,),
        )
    revert = {r: previous.get(r) for r in was_set}
    restore = {
        flag: as_text(revert[resource])
        for flag, resource in QUOTA_FLAGS.items()
        if resource in revert and revert[resource] is not None
    }
    # A resource the raise added where there was none goes away again (null in the merge patch).
    unset = tuple(r for r, v in revert.items() if v is None and r in ws.quota)
    if not (restore or unset):
        return None
    return SystemRequest(
        QuotaChange(
            workspace,
            gpu=restore.get("gpu"),
            cpu=restore.get("cpu"),
            memory=restore.get("memory"),
            storage=restore.get("storage"),
            notify=(ws.owner,),
            unset=unset or None,
        ),
        f"timer:{QUOTA_REVERT}:{origin_id}",
    )


def lasting_values(args: Mapping[str, JSON]) -> dict[str, str]:
    """The values a stored quota request set for good (none when it was temporary: it lapses)."""
    change = from_args(QuotaChange, args)
    return {} if change.duration is not None else change.changes()


def _build(p: Parsed) -> QuotaChange:
    return QuotaChange(p.positional[0], **p.options)


@dataclass(frozen=True)
class QuotaChange:
    KIND: ClassVar[str] = "quota"
    USAGE: ClassVar[str] = (
        "/kf quota WORKSPACE [--gpu N] [--cpu N] [--memory 32Gi] [--storage 200Gi] [--for 3d]"
    )
    SYNTAX: ClassVar[Syntax] = Syntax(
        "quota",
        ("WORKSPACE",),
        {
            **{f"--{flag}": Flag(flag, text) for flag in QUOTA_FLAGS},
            "--for": Flag("duration", units.parse_duration),
        },
        _build,
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = (
        TimerKind(QUOTA_REVERT, "the temporary quota ran out", _revert),
    )

    workspace: str
    gpu: str | None = None
    cpu: str | None = None
    memory: str | None = None
    storage: str | None = None
    duration: timedelta | None = None
    notify: tuple[str, ...] | None = None
    """Set by the bot on a revert at expiry: who is told of the outcome (the owner)."""
    unset: tuple[str, ...] | None = None
    """Set by the bot on a revert at expiry: resources the raise added to ``hard`` where there was
    no value before, removed again (sent as null in the merge patch)."""

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        object.__setattr__(self, "notify", notify_list(self.notify))
        if self.unset is not None:
            if not isinstance(self.unset, list | tuple) or not all(
                r in QUOTA_FLAGS.values() for r in self.unset
            ):
                raise errors.InvalidInput("`unset` is a list of quota resources.", field="unset")
            object.__setattr__(self, "unset", tuple(r for r in self.unset if r not in self.changes()) or None)
        if self.gpu is not None:
            object.__setattr__(self, "gpu", units.normalize_count(self.gpu, "--gpu", 512, allow_zero=True))
        if self.cpu is not None:
            object.__setattr__(self, "cpu", units.normalize_cpu(self.cpu))
        if self.memory is not None:
            object.__setattr__(self, "memory", units.normalize_memory(self.memory))
        if self.storage is not None:
            object.__setattr__(self, "storage", units.normalize_storage(self.storage))
        if not self.changes() and not self.unset:
            raise errors.InvalidInput(
                "Say what to change: --gpu, --cpu, --memory or --storage.", usage=self.USAGE
            )

    def changes(self) -> dict[str, str]:
        return {
            resource: getattr(self, flag)
            for flag, resource in QUOTA_FLAGS.items()
            if getattr(self, flag) is not None
        }

    def subject(self) -> str:
        return quota_subject(self.workspace)

    def describe(self) -> str:
        parts = ", ".join(
            [f"{k}={v}" for k, v in self.changes().items()] + [f"{k} unset" for k in self.unset or ()]
        )
        until = f" for {units.format_duration(self.duration)}" if self.duration else ""
        return f"quota of `{self.workspace}`: {parts}{until}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        parts = ", ".join(
            [f"{k}={v}" for k, v in self.changes().items()] + [f"{k} unset" for k in self.unset or ()]
        )
        until = f" for {units.format_duration(self.duration)}" if self.duration else ""
        return f"Quota of {self.workspace}: {parts}{until}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return workspace_people(facts, self.workspace)

    def plan(self, ctx: PlanContext) -> Plan:
        ws = require_workspace(ctx, self.workspace)
        removed = [r for r in self.unset or () if r in ws.quota]
        hard = {r: v for r, v in {**ws.quota, **self.changes()}.items() if r not in removed}
        parts: list[str] = [f"{r}: {ws.quota[r]} -> unset" for r in removed]
        warnings: list[str] = []
        for resource, wanted in self.changes().items():
            part = f"{resource}: {ws.quota.get(resource, 'unset')} -> {wanted}"
            used = ws.quota_used.get(resource)
            if used is not None:
                # What the approver weighs: how much of the limit in force is taken right now.
                limit = ws.quota_enforced.get(resource, ws.quota.get(resource, "unset"))
                part += f" (used {used} of {limit} now)"
                if _below(wanted, used, resource):
                    warnings.append(
                        f"{resource} {wanted} is below the {used} in use now: running pods keep "
                        "their share, new ones wait until usage drops."
                    )
            if resource == GPU_RESOURCE:
                part += gpu_capacity_note(self.workspace, ws, wanted, warnings)
            parts.append(part)
        return Plan.of(
            [
                Step(
                    ActionName.QUOTA,
                    f"Quota/{ws.namespace}",
                    {"profile": ws.namespace, "hard": hard},
                    f"Profile `{ws.namespace}` quota {', '.join(parts)}",
                )
            ],
            warnings,
        )

    def on_success(self, done: Applied) -> Success:
        """A lasting change (a person's, or a revert) supersedes a pending temporary one; a
        temporary one schedules one revert per resource, so a later change of one resource moves
        or cancels only its own. The revert records the value it set (to notice a change made
        since) and the value to restore; raising again while a raise is still temporary keeps the
        value from before the first one (``keep_pending``), so the revert goes all the way."""
        if self.duration is None:
            return Success(
                cancel=tuple(
                    CancelTimer(QUOTA_REVERT, quota_timer_ref(self.workspace, r)) for r in self.changes()
                )
            )
        outcome = done.outcomes.get(0)
        before = as_object(outcome.details.get("previous", {})) if outcome else {}
        hard = as_object(done.plan.steps[0].params["hard"])
        return Success(
            timers=tuple(
                TimerSpec(
                    QUOTA_REVERT,
                    quota_timer_ref(self.workspace, resource),
                    done.at + self.duration,
                    {
                        "workspace": self.workspace,
                        "resource": resource,
                        "request_id": done.request_id,
                        "set": {resource: hard.get(resource)},
                        "previous": {resource: before[resource]} if resource in before else {},
                    },
                    keep_pending=("previous",),
                )
                for resource in self.changes()
            )
        )


def gpu_capacity_note(workspace: str, ws: WorkspaceFacts, wanted: str, warnings: list[str]) -> str:
    """What a GPU quota can actually use: the GPUs the workspace's bot-made nodegroups hold at
    their maximum (nodes x GPUs per node, as the registry records them). Returned for the quota
    step's line; a warning is added when the quota cannot be reached."""
    try:
        asked = int(wanted)
    except ValueError:
        return ""
    total, known, parts = 0, True, []
    for _, params in bot_nodegroups(ws):
        types = params.get("instance_types")
        instance_type = str(types[0]) if isinstance(types, list) and types else ""
        high = scaling_of(params)[2]
        gpus = prices.gpus_per_instance(instance_type)
        if gpus is None:
            known = False
            continue
        total += high * gpus
        parts.append(f"{params.get('name')}: {high} x {instance_type} x {gpus} GPU")
    if not parts and known:
        if asked > 0:
            warnings.append(
                f"`{workspace}` has no GPU nodegroup made by kf-chatops, so a GPU quota of {asked} can "
                "only be used on GPU nodes the cluster has otherwise."
            )
        return "; no GPU nodegroup of its own"
    if known and asked > total:
        warnings.append(
            f"A GPU quota of {asked} cannot be reached: the nodegroups of `{workspace}` hold at most "
            f"{total} GPU{'' if total == 1 else 's'} ({'; '.join(parts)}). Ask for "
            f"`/kf workspace resize {workspace} --nodes MIN:MAX` too, or a smaller quota."
        )
    return f"; its nodegroups hold at most {total} GPU{'' if total == 1 else 's'}" if known else ""
