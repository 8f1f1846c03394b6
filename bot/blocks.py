"""Block Kit for the approval card, the DMs and the modals, built with ``slack_sdk.models``.

Everything here is pure: request in, blocks out. Block Kit rejects a message outright when a
limit is exceeded (``invalid_blocks``), so every text is cut to fit *before* it is built:
3000 characters per section, 150 per header, 75 per button label, 24 per modal title, 50 blocks
per message and 100 per modal. Long plans are split into several code blocks and, past the block
limit, end with a note pointing at ``kfbot plan``. User text is escaped with
``naming.escape_slack_text`` (via ``render.SLACK``) everywhere; free text (a reject reason) is
shown in a code block (``render.Style.text``).

Button values carry the request id and, for decisions, the version the card showed
(``R7KQ2M:3``): a click on a card made stale by a plan change cannot approve the new plan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot import payloads, render
from bot.payloads import BlockDict, Blocks
from handlers import errors, kinds, naming
from handlers.actions import ActionName, is_removal
from handlers.model import Request, RequestState
from handlers.plan import Plan
from handlers.ports import RevealedSecret, UnmanagedGroup

SECTION_LIMIT = 3000
HEADER_LIMIT = 150
BUTTON_LIMIT = 75
TITLE_LIMIT = 24
MESSAGE_BLOCKS = 50
MODAL_BLOCKS = 100
FALLBACK_LIMIT = 3000
S = render.SLACK

APPROVE = "kf_approve"
REJECT = "kf_reject"
VIEW_PLAN = "kf_view_plan"
SHOW_TOKEN = "kf_show_token"  # noqa: S105 - an action id, not a secret
SET_PASSWORD = "kf_set_password"  # noqa: S105 - an action id
REJECT_VIEW = "kf_reject_reason"
WORKSPACE_VIEW = "kf_workspace_form"
REASON_BLOCK = "reason"


def md(text: str, limit: int = SECTION_LIMIT) -> MarkdownTextObject:
    return MarkdownTextObject(text=naming.truncate(text or " ", limit))


def plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=naming.truncate(text or " ", limit), emoji=True)


def section(text: str) -> SectionBlock:
    return SectionBlock(text=md(text))


def button(
    text: str, action_id: str, value: str, style: str | None = None, confirm: ConfirmObject | None = None
) -> ButtonElement:
    return ButtonElement(
        text=plain(text, BUTTON_LIMIT),
        action_id=action_id,
        value=naming.truncate(value, 2000),
        style=style,
        confirm=confirm,
    )


def fallback(text: str) -> str:
    return naming.truncate(text, FALLBACK_LIMIT)


def to_dicts(blocks: Sequence[Block]) -> Blocks:
    return [b.to_dict() for b in blocks[:MESSAGE_BLOCKS]]


def decision_value(request: Request) -> str:
    return f"{request.id}:{request.version}"


STALE_BUTTON_TEXT = (
    "This button does not say which version of the request it was for (an old or altered card), "
    "so it cannot decide anything; use the request's newest card, or `/kf requests`."
)


_VERSION = re.compile(r"[0-9]{1,18}")


def parse_decision_value(value: str) -> tuple[str, int]:
    """``R7KQ2M:3`` -> (``R7KQ2M``, 3). A value without its version is refused: ``decide`` checks
    the version against the request's, and a decision without one would skip that stale-card check."""
    request_id, _, version = value.partition(":")
    # [0-9], not isdigit(): "²" passes isdigit() and int() raises on it; an Arabic-Indic 3 would become 3.
    if not request_id or not _VERSION.fullmatch(version):
        raise errors.InvalidInput(STALE_BUTTON_TEXT)
    return request_id, int(version)


def _steps(plan: Plan) -> str:
    return f"{len(plan.steps)} step{'' if len(plan.steps) == 1 else 's'}"


# -- the approval card ---------------------------------------------------------------------------------


HEADINGS = {
    RequestState.PENDING: "Approval needed",
    RequestState.APPROVED: "Approved",
    RequestState.APPLYING: "Applying",
    RequestState.SUCCEEDED: "Done",
    RequestState.REJECTED: "Rejected",
    RequestState.CANCELLED: "Cancelled",
    RequestState.EXPIRED: "Expired",
    RequestState.COMPENSATING: "Failed, undoing",
    RequestState.FAILED: "Failed",
    RequestState.NEEDS_ATTENTION: "Needs attention",
}


CONFIRM_TEXT_LIMIT = 300
"""Block Kit's limit on a confirm dialog's text (title 100, buttons 30)."""


def approve_confirm(plan: Plan, confirm_above: float | None) -> ConfirmObject | None:
    """The "are you sure?" dialog Slack shows before an Approve click is sent: for a plan that
    deletes (what it deletes) and for one whose cost may exceed ``confirm_above`` USD a month
    (``KFBOT_CONFIRM_ABOVE``; what it may cost), and for one that hands a workspace to a new
    owner (who, and the plan's warnings: the data goes along, the old owner loses access).
    None: one click approves."""
    removed = [
        render.removed_object(step.summary or step.key) for step in plan.steps if is_removal(step.action)
    ]
    monthly = plan.cost.get("monthly_max")
    costly = (
        confirm_above is not None
        and isinstance(monthly, int | float)
        and not isinstance(monthly, bool)
        and monthly > confirm_above
    )
    handed = [step for step in plan.steps if step.action == ActionName.PROFILE_OWNER]
    if not removed and not costly and not handed:
        return None
    lines: list[str] = []
    if costly:
        lines.append(f"This may cost {render.cost_text(plan.cost)}.")
    for step in handed:  # a takeover: one click must not give a workspace and its data away
        params = step.params
        lines.append(f"This makes {params.get('owner')} the owner of `{params.get('name')}`.")
        lines.extend(plan.warnings)
    if removed:
        lines.append("This deletes " + "; ".join(removed) + ".")
    title = "Approve a transfer?" if handed else "Approve a deletion?" if removed else "Approve this cost?"
    return ConfirmObject(
        title=plain(title, 100),
        text=plain(" ".join(lines), CONFIRM_TEXT_LIMIT),
        confirm=plain("Approve", 30),
        deny=plain("Cancel", 30),
        style="danger",
    )


DRY_RUN_CARD = (
    "*Dry run*: kf-chatops runs with the dry-run provisioner. Approving records the decision and "
    "shows every call the plan would make; nothing is changed in Kubeflow, Dex or AWS."
)


def card(
    request: Request,
    *,
    superseded: bool = False,
    dry_run: bool = False,
    confirm_above: float | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, Blocks]:
    """The approval card: (fallback text, blocks). Buttons only while the request is pending.
    The header says its state and the request in words ("Approval needed: New workspace team-a
    for alice", ``RequestKind.title``). ``dry_run``: the header and a first section say so,
    whatever the state ("Done (dry run)"). ``expires_at``: when a pending request expires."""
    heading = ("Superseded" if superseded else HEADINGS[request.state]) + (" (dry run)" if dry_run else "")
    who = S.user(request.requester_id, request.requester_email)
    # The header is plain text, but escaped as every text the bot sends is (no markup survives).
    blocks: list[Block] = [
        HeaderBlock(text=plain(f"{heading}: {S.esc(render.title(request))}", HEADER_LIMIT)),
        *([section(DRY_RUN_CARD)] if dry_run else []),
        section(
            f"*{render.describe(request, S)}*\n*Requested by* {who} ({S.esc(request.requester_email)})\n"
            f"*Request* `{request.id}` · *Kind* `{request.kind}`"
        ),
        section(f"*Arguments*\n{render.args_text(request, S)}"),
        section(f"*Plan* ({_steps(request.plan)})\n{render.plan_summary(request.plan, S)}"),
    ]
    if superseded:
        blocks.append(
            ContextBlock(elements=[md("The plan changed; a new card was posted for the new plan.", 2000)])
        )
    elif request.state is RequestState.PENDING:
        if expires_at is not None:
            blocks.append(ContextBlock(elements=[md(render.expiry_text(expires_at, S), 2000)]))
        blocks.append(
            ActionsBlock(
                block_id=f"decide:{request.id}",
                elements=[
                    button("View plan", VIEW_PLAN, request.id),
                    button(
                        "Approve",
                        APPROVE,
                        decision_value(request),
                        "primary",
                        approve_confirm(request.plan, confirm_above),
                    ),
                    button("Reject", REJECT, decision_value(request), "danger"),
                ],
            )
        )
    else:
        blocks.append(
            ActionsBlock(block_id=f"plan:{request.id}", elements=[button("View plan", VIEW_PLAN, request.id)])
        )
        blocks.append(ContextBlock(elements=[md(render.decision_text(request, S), 2000)]))
        if request.state in (RequestState.FAILED, RequestState.NEEDS_ATTENTION) and request.error:
            blocks.append(section(f"*Error*\n{S.esc(request.error)}"))
    text = f"{heading}: {request.id} {render.describe(request, S)} (requested by {who})"
    return fallback(text), to_dicts(blocks)


# -- DMs -------------------------------------------------------------------------------------------------


def scan_message(groups: Sequence[UnmanagedGroup] | None) -> tuple[str, Blocks]:
    """``/kf workspace scan``: one section per group and, for a group with a Profile, an Adopt
    button that files ``workspace adopt NAMESPACE`` as the clicker (through the normal gate)."""
    text = render.scan_text(groups, S)
    if not groups:
        return fallback(text), to_dicts([section(text)])
    blocks: list[Block] = [section("Not managed by kf-chatops, grouped by likely workspace:")]
    for group in groups[: (MESSAGE_BLOCKS - 1) // 2]:
        blocks.append(section(render.scan_group_text(group, S)))
        if group.namespace:
            value = kinds.adopt_button_value(group.namespace)
            label = f"Adopt {group.namespace}"
            blocks.append(ActionsBlock(elements=[button(label, kinds.ADOPT_BUTTON, value, "primary")]))
    return fallback(text), to_dicts(blocks)


def dm(text: str, *, action: tuple[str, str, str] | None = None) -> tuple[str, Blocks]:
    """A DM with an optional button ``(label, action_id, value)``."""
    blocks: list[Block] = [section(text)]
    if action is not None:
        label, action_id, value = action
        blocks.append(ActionsBlock(elements=[button(label, action_id, value, "primary")]))
    return fallback(text), to_dicts(blocks)


# -- modals ----------------------------------------------------------------------------------------------


def code_chunks(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """``text`` as code blocks that each fit a section (split on lines where possible)."""
    safe = render.fence_safe(text)
    room = limit - 8
    chunks: list[str] = []
    current = ""
    for whole in safe.splitlines(keepends=True):
        pieces = [whole[i : i + room] for i in range(0, len(whole), room)] or [whole]
        for piece in pieces:
            if current and len(current) + len(piece) > room:
                chunks.append(current)
                current = ""
            current += piece
    if current or not chunks:
        chunks.append(current)
    return [f"```{chunk.rstrip(chr(10))}```" for chunk in chunks]


def _fit(blocks: list[Block], limit: int, note: str) -> list[Block]:
    if len(blocks) <= limit:
        return blocks
    return [*blocks[: limit - 1], ContextBlock(elements=[md(note, 2000)])]


def _modal(
    title: str,
    blocks: list[Block],
    *,
    callback_id: str = "",
    close: str = "Close",
    submit: str | None = None,
    private_metadata: str = "",
) -> BlockDict:
    view = View(
        type="modal",
        callback_id=callback_id or None,
        title=plain(title, TITLE_LIMIT),
        close=plain(close, TITLE_LIMIT),
        submit=plain(submit, TITLE_LIMIT) if submit else None,
        blocks=blocks[:MODAL_BLOCKS],
        private_metadata=naming.truncate(private_metadata, 3000) if private_metadata else None,
    )
    return view.to_dict()


def plan_modal(request: Request) -> BlockDict:
    return _modal(f"Plan {request.id}", plan_blocks(request.plan, request_id=request.id))


def plan_blocks(plan: Plan, *, request_id: str) -> list[Block]:
    blocks: list[Block] = []
    for n, step in enumerate(plan.steps, 1):
        blocks.append(
            section(f"*{n}. {S.esc(step.summary or step.key)}*\n`{step.action}` · `{S.esc(step.key)}`")
        )
        blocks.extend(section(chunk) for chunk in code_chunks(render.step_params(step)))
    if not plan.steps:
        blocks.append(section("(nothing to do)"))
    extra = [f"⚠ {S.esc(w)}" for w in plan.warnings]
    cost = render.cost_text(plan.cost)
    if cost:
        extra.append(f"*Cost*: {cost}")
    extra.append(f"Plan digest `{plan.digest()[:16]}`")
    blocks.append(DividerBlock())
    blocks.append(section("\n".join(extra)))
    return _fit(
        blocks,
        MODAL_BLOCKS,
        f"The plan is too long to show in full here; run `kfbot plan` or see the "
        f"audit export for {request_id}.",
    )


def secret_modal(secret: RevealedSecret, *, request_id: str | None) -> BlockDict:
    """The one place a secret is ever shown. It is not stored, logged or posted anywhere else."""
    what = "token" if secret.kind == "token" else "password"
    blocks: list[Block] = [
        section(
            f"Your new {what}{f' for `{request_id}`' if request_id else ''}. *It is shown once*: "
            "copy it now. "
            "kf-chatops does not keep it; click again for a new one."
        )
    ]
    blocks.extend(section(chunk) for chunk in code_chunks(secret.value))
    if secret.expires_at is not None:
        blocks.append(ContextBlock(elements=[md(f"Expires {S.when(secret.expires_at)}", 2000)]))
    for label, text in secret.extra.items():
        blocks.append(section(f"*{S.esc(label)}*"))
        blocks.extend(section(chunk) for chunk in code_chunks(text))
    blocks.append(ContextBlock(elements=[md(f"Fingerprint `{S.esc(secret.fingerprint)}`", 2000)]))
    return _modal(f"Your {what}", _fit(blocks, MODAL_BLOCKS, "Some of the text did not fit."))


def working_modal(title: str) -> BlockDict:
    """Opened at once with a click's ``trigger_id`` (valid ~3 s) while the slow part runs; the
    listener then ``views.update``s it with the result (``notice_modal`` or ``secret_modal``)."""
    return _modal(title, [section("Working… this takes a few seconds.")])


def notice_modal(title: str, text: str) -> BlockDict:
    return _modal(title, [section(text)])


@dataclass(frozen=True)
class RejectContext:
    request_id: str
    version: int | None
    channel: str
    message_ts: str

    def dump(self) -> str:
        return json.dumps({"r": self.request_id, "v": self.version, "c": self.channel, "t": self.message_ts})

    @classmethod
    def load(cls, text: str) -> RejectContext:
        # Slack hands back what ``dump`` wrote, but a forged submission may carry anything: what
        # is not an object with an integer version (``true`` is not one) decides nothing.
        try:
            data = json.loads(text or "{}")
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            data = {}
        version = data.get("v")
        return cls(
            str(data.get("r", "")),
            version if isinstance(version, int) and not isinstance(version, bool) else None,
            str(data.get("c", "")),
            str(data.get("t", "")),
        )


def reject_modal(request: Request, context: RejectContext) -> BlockDict:
    blocks: list[Block] = [
        section(
            f"Reject `{request.id}`: {render.describe(request, S)} (by "
            f"{S.user(request.requester_id, request.requester_email)})?"
        ),
        InputBlock(
            block_id=REASON_BLOCK,
            label=plain("Reason (sent to the requester)", 2000),
            element=PlainTextInputElement(
                action_id=REASON_BLOCK, multiline=True, max_length=1000, min_length=1
            ),
        ),
    ]
    return _modal(
        f"Reject {request.id}",
        blocks,
        callback_id=REJECT_VIEW,
        submit="Reject",
        close="Cancel",
        private_metadata=context.dump(),
    )


WORKSPACE_FIELDS: Sequence[tuple[str, str, str, bool]] = (
    # block/action id, label, placeholder, optional
    ("name", "Workspace name", "team-vision", False),
    ("owner", "Owner email (default: you)", "alice@example.com", True),
    ("gpu", "GPUs (quota)", "0", True),
    ("cpu", "CPU (quota)", "8", True),
    ("memory", "Memory (quota)", "32Gi", True),
    ("storage", "Storage (quota)", "100Gi", True),
    ("instance_type", "Instance type for a nodegroup", "g4dn.xlarge", True),
    ("nodes", "Nodes MIN:MAX", "0:2", True),
)
FIELD_BLOCKS: Mapping[str, str] = {
    "name": "name",
    "owner": "owner",
    "email": "owner",
    "user": "owner",
    "gpu": "gpu",
    "cpu": "cpu",
    "memory": "memory",
    "storage": "storage",
    "instance_type": "instance_type",
    "nodes": "nodes",
    "nodes_min": "nodes",
    "nodes_max": "nodes",
    "desired": "nodes",
    "reason": REASON_BLOCK,
}


def workspace_modal() -> BlockDict:
    blocks: list[Block] = [
        InputBlock(
            block_id=block_id,
            label=plain(label, 2000),
            optional=optional,
            element=PlainTextInputElement(action_id=block_id, placeholder=plain(hint, 150), max_length=254),
        )
        for block_id, label, hint, optional in WORKSPACE_FIELDS
    ]
    return _modal("New workspace", blocks, callback_id=WORKSPACE_VIEW, submit="Request", close="Cancel")


def form_values(view: payloads.View) -> dict[str, str]:
    """``{block_id: text}`` from a submitted view's state (empty inputs left out)."""
    out: dict[str, str] = {}
    for block_id, actions in (view.get("state", {}).get("values", {}) or {}).items():
        for entry in actions.values():
            value = entry.get("value") if isinstance(entry, Mapping) else None
            if isinstance(value, str) and value.strip():
                out[block_id] = value.strip()
    return out
