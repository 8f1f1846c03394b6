"""Control commands (help, requests, cancel, retry, workspace list/show/pin --all, contributors,
tokens):
the text each answers, shared by the Slack listener and ``kfbot shell`` (so the shell does not
import the Slack edge). Typed against ``WorkspaceReads``, the read models of
``provisioning.Backend`` these commands use."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from bot import render
from handlers import drift, errors, parse, policy, services
from handlers.model import Actor
from handlers.ports import UnmanagedGroup
from provisioning import Contributor, IdleScan, TokenRecord, WorkspaceRecord, WorkspaceView


class WorkspaceReads(Protocol):
    """What control commands read from ``provisioning.Backend``."""

    def workspaces(self, owner: str | None = None) -> list[WorkspaceRecord]: ...

    def workspace_view(self, name: str, *, live: bool = True) -> WorkspaceView | None: ...

    def contributors(self, workspace: str, *, view: WorkspaceView | None = None) -> list[Contributor]: ...

    def tokens(self, requester_id: str) -> list[TokenRecord]: ...

    def gpu_status(self) -> IdleScan: ...

    def scan_unmanaged(self) -> tuple[UnmanagedGroup, ...] | None: ...
    def drift_inventory(self) -> drift.DriftInventory: ...


def _visible(core: services.Core, actor: Actor, view: WorkspaceView | None, name: str) -> WorkspaceView:
    policy.check_may_see_workspace(
        actor,
        core.settings,
        name,
        None if view is None else view.record.owner,
        () if view is None else [g.user for g in view.grants],
    )
    assert view is not None  # the policy refuses a missing workspace
    return view


def _authorized_view(core: services.Core, backend: WorkspaceReads, actor: Actor, name: str) -> WorkspaceView:
    """Authorize on the registry row (no Kubernetes read), then read the live view once."""
    _visible(core, actor, backend.workspace_view(name, live=False), name)
    return _visible(core, actor, backend.workspace_view(name), name)


def control(
    core: services.Core,
    backend: WorkspaceReads,
    actor: Actor,
    command: parse.Control,
    style: render.Style = render.SLACK,
    key: str | None = None,
) -> str:
    """Text for a control command; shared by Slack and the shell. ``key``: the delivery's
    idempotency key (Slack's ``trigger_id``), for the commands that change something once."""
    if isinstance(command, parse.Help):
        return render.help_text(command.topic)
    if isinstance(command, parse.ListRequests):
        return render.request_list(services.list_requests(core, actor), style, admin=actor.is_admin)
    if isinstance(command, parse.Cancel):
        request = services.cancel(core, actor, command.request_id)
        return f"Cancelled `{request.id}`: {render.describe(request, style)}."
    if isinstance(command, parse.Retry):
        request = services.retry(core, actor, command.request_id, key=None if key is None else f"retry:{key}")
        return f"`{request.id}` goes through apply again; progress follows in the card's thread."
    if isinstance(command, parse.WorkspaceList):
        rows = backend.workspaces(None if actor.is_admin else policy.kubeflow_user(actor, core.settings))
        return render.workspaces_text(rows, style, admin=actor.is_admin)
    if isinstance(command, parse.WorkspaceShow):
        return render.workspace_text(_authorized_view(core, backend, actor, command.name), style)
    if isinstance(command, parse.Contributors):
        view = _authorized_view(core, backend, actor, command.workspace)
        contributors = backend.contributors(command.workspace, view=view)
        return render.contributors_text(command.workspace, contributors, style)
    if isinstance(command, parse.Tokens):
        return render.tokens_text(backend.tokens(actor.user_id), style)
    if isinstance(command, parse.GpuStatus):
        return render.gpu_status_text(gpu_status(core, backend, actor, command.workspace), style)
    if isinstance(command, parse.WorkspaceScan):
        return render.scan_text(scan(backend, actor), style)
    if isinstance(command, parse.Drift):
        inventory = backend.drift_inventory()
        items = drift.visible(drift.find(inventory), actor, core.settings)
        return style.message(drift.text(items, inventory.notes))
    if isinstance(command, parse.Offboard):
        # "Left" is Slack's answer (users.info by the recorded id); the shell has no Slack to ask.
        raise errors.InvalidInput(
            "`/kf offboard` needs Slack: it asks Slack whether the person left. Run it in Slack."
        )
    if isinstance(command, parse.PinAll):
        names = [row.name for row in backend.workspaces()]
        return render.pins_text(services.pin_all(core, actor, names), style)
    raise errors.InvalidInput("That command is not available here.")


def scan(backend: WorkspaceReads, actor: Actor) -> tuple[UnmanagedGroup, ...] | None:
    """``/kf workspace scan``: admins only (it lists every Profile, bucket and login), refused
    before anything is read."""
    if not actor.is_admin:
        raise errors.Forbidden("Only admins can scan for workspaces the bot does not manage.")
    return backend.scan_unmanaged()


def gpu_status(core: services.Core, backend: WorkspaceReads, actor: Actor, workspace: str | None) -> IdleScan:
    """``/kf gpu status``: what the actor may see of the last scan (``Backend.gpu_status``). A named
    workspace is checked like ``/kf workspace show`` before anything is read; without one an admin
    sees everything (unattributed nodegroups included), anyone else the workspaces they own or
    contribute to."""
    allowed: set[str] | None
    if workspace is not None:
        _visible(core, actor, backend.workspace_view(workspace, live=False), workspace)
        allowed = {workspace}
    elif actor.is_admin:
        allowed = None
    else:
        user = policy.kubeflow_user(actor, core.settings)
        allowed = set()
        for row in backend.workspaces():
            view = backend.workspace_view(row.name, live=False)
            if view is not None and (row.owner == user or user in {g.user for g in view.grants}):
                allowed.add(row.name)
    scan = backend.gpu_status()
    if allowed is None:
        return scan

    def mine(ws: str | None) -> bool:
        return ws is not None and ws in allowed

    obs = scan.observation
    return dataclasses.replace(
        scan,
        observation=dataclasses.replace(
            obs,
            items=tuple(i for i in obs.items if mine(i.workspace)),
            held=tuple(i for i in obs.held if mine(i.workspace)),
            upsert=(),
            delete=(),
            busy=(),
        ),
        fleet=tuple(f for f in scan.fleet if mine(f.workspace)),
        owners={k: v for k, v in scan.owners.items() if mine(k)},
        month=tuple(m for m in scan.month if mine(m.workspace)),
        pending_stops={},
        warned=frozenset(),
    )
