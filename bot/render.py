"""Plain text for people: Slack's fallback text and ephemeral replies, and the local shell.

The same functions serve both so the shell shows what Slack would show. ``Style`` carries the
two differences: Slack needs every text escaped (``naming.escape_slack_text``: no forged
mentions, links or ``@channel``) and shows users as ``<@U…>`` mentions and times as
``<!date^…>``; the shell prints plain text with control characters masked. Texts the core
writes (``KfError.user_message``) are neutral, with people as ``naming.person`` placeholders:
``Style.message`` renders them, so the only markup in Slack text is the markup written here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from handlers import errors, kinds, naming, parse, services
from handlers.actions import ActionName, is_removal
from handlers.cost import report as cost_report
from handlers.cost.idle import PRICE_BASIS
from handlers.model import REFUSED_PREFIX, SYSTEM, Event, EventType, Request, RequestState
from handlers.notifications import Access, Notice, Say, keeps_data
from handlers.plan import JSON, Plan, Step
from handlers.ports import UnmanagedGroup
from provisioning import (
    Contributor,
    GrantRecord,
    IdleScan,
    QuotaState,
    TokenRecord,
    WorkspaceRecord,
    WorkspaceView,
)

# C0 and C1 controls (a terminal reads ESC and CSI as commands) and bidirectional controls.
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f" + "".join(sorted(naming.BIDI_CONTROLS)) + "]"
)
_FENCE = "```"
LITERAL_LIMIT = 1500
"""Longest escaped free text in one Slack text: leaves room in a 2000-character context block."""
DRY_RUN_NOTE = "Dry run: kf-chatops changed nothing in Kubeflow, Dex or AWS."
"""Under every DM and admin-channel message a dry-run bot sends: people must not take a dry run
for the real thing (a "done" that made no workspace)."""
_NOT_RUN = (RequestState.PENDING, RequestState.REJECTED, RequestState.CANCELLED, RequestState.EXPIRED)
"""States in which nothing was going to run, dry or not: their messages need no dry-run note."""
_CREATES = frozenset(
    {
        ActionName.PROFILE,
        ActionName.PODDEFAULT,
        ActionName.CONTRIBUTOR,
        ActionName.TOKEN_ACCOUNT,
        ActionName.DEX_USER,
        ActionName.BUCKET,
        ActionName.NODEGROUP,
    }
)


def _shell_text(text: str) -> str:
    return _CONTROL.sub("?", text)


def fence_safe(text: str) -> str:
    """``text`` escaped for the inside of a Slack code block: no ``&<>`` markup, no closing fence."""
    return naming.escape_slack_text(text).replace(_FENCE, "`\u200b``")


def slack_literal(text: str) -> str:
    """Free text as a Slack code block: Slack has no escape for ``*``, ``_``, ``~`` and backticks
    in ``mrkdwn``, but nothing inside a code block is formatted, linked or mentioned."""
    # Cut after escaping (each '<' becomes four characters) so that the closing fence always
    # survives the Block Kit limits of the text around it.
    inner = naming.truncate(fence_safe(text), LITERAL_LIMIT)
    # A backtick against the fence would merge with it and end the block early.
    if inner.startswith("`"):
        inner = "\u200b" + inner
    if inner.endswith("`"):
        inner += "\u200b"
    return f"{_FENCE}{inner}{_FENCE}"


SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
"""What Slack user ids look like; anything else is not rendered as a mention."""


@dataclass(frozen=True)
class Style:
    esc: Callable[[str], str]
    slack: bool

    def user(self, user_id: str | None, email: str | None = None) -> str:
        if not user_id:
            return "someone"
        if user_id == SYSTEM.user_id:
            return "kfbot"
        if user_id.startswith("shell:"):
            return self.esc(user_id.removeprefix("shell:"))
        if self.slack and SLACK_USER_ID.fullmatch(user_id):
            # Only a well-formed id becomes a mention: an id edited in the database
            # (``U1><!channel>``) is shown as escaped text.
            return f"<@{user_id}>"
        return self.esc(email or user_id)

    def when(self, at: datetime | None) -> str:
        if at is None:
            return "?"
        iso = at.strftime("%Y-%m-%d %H:%M UTC")
        if self.slack:
            return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{iso}>"
        return iso

    def text(self, free: str) -> str:
        """Free text a person typed (a reject reason) as inert literal text: a code block in
        Slack, control characters masked in the shell."""
        return slack_literal(free) if self.slack else _shell_text(free)

    def message(self, core_text: str) -> str:
        """A neutral text of the core (``KfError.user_message``): escaped as a whole, with its
        ``naming.person`` placeholders rendered as people."""
        # split() with the one group alternates text (even places) and user ids (odd places).
        parts = naming.PERSON.split(core_text)
        return "".join(self.user(part) if odd % 2 else self.esc(part) for odd, part in enumerate(parts))


SLACK = Style(naming.escape_slack_text, slack=True)
SHELL = Style(_shell_text, slack=False)

STATE_WORDS: Mapping[RequestState, str] = {
    RequestState.PENDING: "waiting for an admin",
    RequestState.APPROVED: "approved, queued to apply",
    RequestState.REJECTED: "rejected",
    RequestState.CANCELLED: "cancelled",
    RequestState.EXPIRED: "expired (nobody decided in time)",
    RequestState.APPLYING: "applying",
    RequestState.SUCCEEDED: "done",
    RequestState.COMPENSATING: "failed; undoing what was made",
    RequestState.FAILED: "failed (what was made has been removed)",
    RequestState.NEEDS_ATTENTION: "needs an admin's attention",
}


# -- errors and help -------------------------------------------------------------------------------


def error_text(exc: errors.KfError, style: Style) -> str:
    text = style.message(exc.user_message)
    usage = getattr(exc, "usage", None)
    if usage:
        text += f"\nUsage: `{usage}`"
    return text


def internal_error_text(cid: str) -> str:
    return f"Something went wrong (ref {cid}). An admin can find the details in the logs."


def help_text(topic: str = "") -> str:
    topic = topic.strip().lower()
    if topic:
        matches = {k: v for k, v in parse.USAGE.items() if k == topic or k.startswith(topic + " ")}
        if matches:
            return "\n".join(f"`{usage}`" for usage in matches.values())
    lines = ["*kf-chatops*: ask for Kubeflow workspaces, sharing, quotas and tokens; admins approve.", ""]
    lines += [f"• `{usage}`" for usage in parse.USAGE.values()]
    lines += [
        "",
        "Requests that grant something new wait for an admin's approval; you get a DM with the result.",
    ]
    return "\n".join(lines)


# -- requests --------------------------------------------------------------------------------------


def describe(request: Request, style: Style) -> str:
    try:
        text = kinds.from_args(request.kind, request.args).describe()
    except (errors.KfError, TypeError, ValueError):
        text = request.kind
    return style.esc(text)


def title(request: Request) -> str:
    """The request in words, as its kind puts it (``RequestKind.title``), unescaped plain text:
    "New workspace team-a for alice"."""
    try:
        return kinds.from_args(request.kind, request.args).title(request.requester_email)
    except (errors.KfError, TypeError, ValueError):
        return f"{request.kind} {request.id}"


def expiry_text(expires_at: datetime | None, style: Style) -> str:
    """When a pending request expires, for its card; empty when it has no expiry."""
    if expires_at is None:
        return ""
    return f"Expires {style.when(expires_at)} if no admin decides by then."


def args_text(request: Request, style: Style) -> str:
    shown = []
    for key, value in request.args.items():
        if value is None or value is False or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        shown.append(f"{key}={style.esc(naming.truncate(text, 200))}")
    return ", ".join(shown) or "(none)"


def request_line(request: Request, style: Style) -> str:
    who = style.user(request.requester_id, request.requester_email)
    return f"`{request.id}` {describe(request, style)}: {STATE_WORDS[request.state]} (requested by {who})"


def request_list(requests: Sequence[Request], style: Style, *, admin: bool) -> str:
    if not requests:
        return "No requests." if admin else "You have no requests."
    heading = "Pending requests and yours:" if admin else "Your requests:"
    return "\n".join([heading, *(f"• {request_line(r, style)}" for r in requests)])


def cost_text(cost: Mapping[str, JSON]) -> str:
    if not cost.get("hourly_max"):
        return ""
    return (
        f"up to ${cost['hourly_max']:.2f}/hour (~${cost.get('monthly_max', 0):,.0f}/month) for "
        f"{cost.get('max_nodes', '?')} x {cost.get('instance_type', '?')} "
        f"at ${cost.get('hourly_per_node', 0):.3f}/hour, "
        "on-demand list price"
    )


def plan_summary(plan: Plan, style: Style) -> str:
    lines = [f"{n}. {style.esc(step.summary or step.key)}" for n, step in enumerate(plan.steps, 1)]
    if not lines:
        lines = ["(nothing to do)"]
    for warning in plan.warnings:
        lines.append(f"⚠ {style.esc(warning)}")
    cost = cost_text(plan.cost)
    if cost:
        lines.append(f"Cost: {cost}")
    return "\n".join(lines)


def step_params(step: Step) -> str:
    return json.dumps(dict(step.params), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def plan_full(
    plan: Plan, style: Style, calls: Callable[[str, Mapping[str, JSON]], list[str]] | None = None
) -> str:
    """Every step with its action, object, parameters and (with ``calls``, the backend's
    ``render_step``) the API calls it makes (``kfbot plan``, the shell's ``show``)."""
    lines: list[str] = []
    for n, step in enumerate(plan.steps, 1):
        lines.append(f"{n}. {style.esc(step.summary or step.key)}")
        lines.append(f"   action: {step.action}   object: {style.esc(step.key)}")
        lines.append("   params:")
        lines.extend("     " + style.esc(line) for line in step_params(step).splitlines())
        if calls is not None:
            lines.append("   calls:")
            lines.extend("     " + style.esc(call) for call in calls(step.action, step.params))
    if not plan.steps:
        lines.append("(nothing to do)")
    lines.extend(f"⚠ {style.esc(w)}" for w in plan.warnings)
    cost = cost_text(plan.cost)
    if cost:
        lines.append(f"Cost: {cost}")
    lines.append(f"Plan digest: {plan.digest()[:16]}")
    return "\n".join(lines)


def request_detail(request: Request, style: Style) -> str:
    who = style.user(request.requester_id, request.requester_email)
    if style.esc(request.requester_email) not in who:
        who += f" ({style.esc(request.requester_email)})"
    lines = [
        f"Request `{request.id}`: {describe(request, style)}",
        f"Requested by {who} · {request.kind} · {STATE_WORDS[request.state]}",
        f"Arguments: {args_text(request, style)}",
        "Plan:",
        plan_summary(request.plan, style),
    ]
    return "\n".join(lines)


def submitted_text(request: Request, *, duplicate: bool, auto_reason: str | None, style: Style) -> str:
    if duplicate:
        return f"Already recorded as `{request.id}` ({STATE_WORDS[request.state]})."
    head = f"Request `{request.id}` recorded: {describe(request, style)}."
    if request.state is RequestState.PENDING:
        tail = "An admin has to approve it; you will get a DM with the decision and the result."
    elif auto_reason:
        tail = f"It applies without an admin ({style.esc(auto_reason)}); you will get a DM with the result."
    else:
        tail = STATE_WORDS[request.state]
    return f"{head}\n{tail}\n{plan_summary(request.plan, style)}"


def decision_text(request: Request, style: Style) -> str:
    who = style.user(request.decided_by)
    when = style.when(request.decided_at or request.updated_at)
    if request.state is RequestState.REJECTED:
        return f"Rejected by {who} at {when}: {style.text(request.reason or '')}"
    if request.state is RequestState.CANCELLED:
        note = f" {style.text(request.reason)}" if request.reason else ""
        return f"Cancelled at {style.when(request.updated_at)}.{note}"
    if request.state is RequestState.EXPIRED:
        return f"Expired at {style.when(request.updated_at)}: nobody decided in time."
    if request.decided_by == SYSTEM.user_id:
        return f"Applies without an admin ({style.esc(request.reason or 'policy')})."
    if request.decided_by:
        return f"Approved by {who} at {when}. State: {STATE_WORDS[request.state]}."
    return STATE_WORDS[request.state]


def kept_at_apply(kept: Sequence[str]) -> list[str]:
    """The notes for what a delete's steps kept rather than lose data (``StepOutcome.kept``: a
    bucket that holds objects, without ``--purge-data``)."""
    return [
        f"{item} holds data and is kept; ask again with `--purge-data` to delete it too."
        for item in kept
    ]


def result_text(request: Request, style: Style, kept: Sequence[str] = (), *, dry_run: bool = False) -> str:
    """The requester's DM once a request has finished (or is stuck). ``kept``: what the steps
    themselves kept (``kept_at_apply``), beside what the plan already said would be kept."""
    what = describe(request, style) + (" (dry run)" if dry_run else "")
    deleting = keeps_data(request)
    if request.state is RequestState.SUCCEEDED:
        # What a delete deliberately left in place (its plan's notes on data and logins it keeps,
        # and what its steps kept) is part of its result.
        notes = [*(request.plan.warnings if deleting else ()), *kept]
        done = "is done (dry run)" if dry_run else "is done"
        head = f"✅ `{request.id}` {done}: {describe(request, style)}."
        return head + "".join(f"\n• {style.esc(n)}" for n in notes)
    if request.state is RequestState.FAILED:
        # Removals are not undone (deleted data cannot be brought back): say what that means.
        undone = (
            "What was removed before the failure stays removed; the rest is still there."
            if deleting
            else "What had been made was removed."
        )
        return (
            f"❌ `{request.id}` failed: {what}. {undone}\n"
            f"Reason: {style.esc(request.error or 'unknown')}"
        )
    if request.state is RequestState.NEEDS_ATTENTION and (request.error or "").startswith(REFUSED_PREFIX):
        error = style.esc(request.error or "")
        return f"⛔ `{request.id}` was not applied: {what}. The admins have been told.\n{error}"
    if request.state is RequestState.NEEDS_ATTENTION:
        return (
            f"⚠ `{request.id}` failed and could not be fully undone: {what}. The admins have been told.\n"
            f"Reason: {style.esc(request.error or 'unknown')}"
        )
    return f"`{request.id}`: {STATE_WORDS[request.state]}."


def step_of(request: Request, data: Mapping[str, JSON]) -> Step | None:
    idx = data.get("idx")
    if isinstance(idx, int) and 0 <= idx < len(request.plan.steps):
        return request.plan.steps[idx]
    key = data.get("key")
    return next((s for s in request.plan.steps if s.key == key), None)


def step_name(request: Request, data: Mapping[str, JSON]) -> str:
    step = step_of(request, data)
    if step is not None and step.summary:
        return step.summary
    return str(data.get("key") or data.get("summary") or "")


def _would(step: Step | None) -> str:
    """What a dry-run step would have done, in one verb."""
    if step is None:
        return "apply"
    if is_removal(step.action):
        return "remove"
    return "create" if step.action in _CREATES else "apply"


def removed_object(summary: str) -> str:
    """What a removal step's summary removes: "remove S3 bucket `b`" -> "S3 bucket `b`"."""
    for verb in ("remove ", "delete "):
        if summary.startswith(verb):
            return summary.removeprefix(verb)
    return summary


def _removed_text(step: str, removed: JSON, kept: JSON, style: Style) -> str:
    """A finished removal step: what it removed, what it kept rather than lose data
    (``StepOutcome.kept``), or that there was nothing left to remove. ``step`` is escaped."""
    # The plan's words without its conditions: "S3 bucket `b` (kept if it holds data)".
    what = removed_object(step).split(" (", 1)[0]
    if isinstance(kept, list) and kept:
        items = style.esc(", ".join(str(k) for k in kept))
        return f"✔ kept: {items}, because it holds data (`--purge-data` deletes it)"
    if removed is True:
        return f"✔ removed: {what}"
    return f"✔ already gone: {what}"


def event_text(request: Request, event: Event, style: Style, *, dry_run: bool = False) -> str | None:
    """One progress line for the card's thread (None: not worth a line). In a dry run each line
    says so, and a finished step says what it *would* have done: nothing was."""
    data = event.data
    step = style.esc(step_name(request, data))
    t = event.type
    if t is EventType.APPLY_STARTED:
        count = len(request.plan.steps)
        steps = f"{count} step{'' if count == 1 else 's'}"
        if dry_run:
            return (
                f"Dry run of `{request.id}` ({steps}): each step shows the calls it would make, none is made."
            )
        return f"Applying `{request.id}` ({steps})…"
    if t is EventType.STEP_STARTED:
        return f"▶ {step}" + (" (dry run)" if dry_run else "")
    if t is EventType.STEP_SUCCEEDED:
        made = data.get("created")
        if dry_run:
            verb = _would(step_of(request, data))
            what = removed_object(step) if verb == "remove" else step.removeprefix(verb + " ")
            return f"✔ would {verb}: {what} (dry run)"
        planned = step_of(request, data)
        if planned is not None and is_removal(planned.action):
            return _removed_text(step, made, data.get("kept"), style)
        note = " (created)" if made is True else " (already there)" if made is False else ""
        return f"✔ {step}{note}"
    if t is EventType.STEP_FAILED:
        return f"✖ {step}: {style.esc(str(data.get('error') or ''))}"
    if t is EventType.STEP_UNDONE:
        return f"↩ {'would undo' if dry_run else 'undone'}: {step}"
    if t is EventType.COMPENSATING:
        return f"Failed: {style.esc(str(data.get('error') or request.error or ''))}. Undoing completed steps…"
    if t in (EventType.SUCCEEDED, EventType.FAILED, EventType.NEEDS_ATTENTION, EventType.REFUSED):
        return result_text(request, style, dry_run=dry_run)
    if t is EventType.RETRIED:
        return f"Retry requested by {style.user(event.actor)}."
    if t is EventType.NUDGED:
        return f"Still waiting for an approver: `{request.id}`."
    if t is EventType.PLAN_CHANGED:
        return "The plan changed since it was approved; it needs a new approval (see the new card)."
    return None


# -- notices (``handlers.notifications``) -------------------------------------------------------------


def replan_dm(request: Request, style: Style) -> str:
    what = f"`{request.id}` ({describe(request, style)})"
    return (
        f"Your request {what} is waiting for an admin again: what it would change differs from what "
        "was approved, so it needs a new approval. You will hear when it is decided."
    )


def decision_dm(request: Request, style: Style, *, dry_run: bool = False) -> str:
    what = f"`{request.id}` ({describe(request, style)})"
    if request.state is RequestState.REJECTED:
        who = style.user(request.decided_by)
        return f"Your request {what} was rejected by {who}: {style.text(request.reason or '')}"
    if request.state is RequestState.EXPIRED:
        return f"Your request {what} expired: no admin decided in time. Ask again if you still need it."
    applying = "running it as a dry run (nothing will be changed)" if dry_run else "applying it now"
    return f"Your request {what} was approved by {style.user(request.decided_by)}; {applying}."


def access_text(request: Request, access: Access, style: Style) -> str:
    """For the person whose access someone else gave or removed."""
    who = style.user(request.requester_id, request.requester_email)
    workspace = style.esc(str(request.args.get("workspace") or request.args.get("name")))
    login = any(step.action == ActionName.DEX_USER for step in request.plan.steps)
    if access is Access.OWNED:
        by = "kf-chatops (the previous owner left)" if request.requester_id == SYSTEM.user_id else who
        text = f"{by} made you the owner of Kubeflow workspace `{workspace}` (`{request.id}`)."
        return text + (" A Kubeflow login was made for you: set its password to sign in." if login else "")
    if access is Access.REMOVED:
        return f"{who} removed your access to Kubeflow workspace `{workspace}` (`{request.id}`)."
    until = f" for {style.esc(str(request.args['duration']))}" if request.args.get("duration") else ""
    role = style.esc(str(request.args.get("role") or "edit"))
    text = f"{who} gave you {role} access to Kubeflow workspace `{workspace}`{until} (`{request.id}`)."
    if any(step.action == ActionName.DEX_USER for step in request.plan.steps):
        text += " A Kubeflow login was made for you: set its password to sign in."
    return text


def next_steps(
    request: Request, style: Style, dashboard_url: str | None = None, *, dry_run: bool = False
) -> str:
    """What to do with a workspace a request just made: where to open it, where the data goes,
    which PodDefault to pick in the notebook form (by its description, which is what Kubeflow's
    form lists under "Configurations"), how to log in, and ``/kf gpu status`` for GPU nodes.
    Read from the plan's steps (what was made), so no kind is named here; empty when the request
    made no Profile or did not succeed."""
    made = {step.action: step.params for step in request.plan.steps}
    profile = made.get(ActionName.PROFILE)
    if profile is None or request.state is not RequestState.SUCCEEDED:
        return ""
    namespace = style.esc(str(profile.get("name") or ""))
    owner = style.esc(str(request.args.get("owner") or request.requester_email))
    if dashboard_url and style.slack:
        where = f"<{style.esc(dashboard_url)}/?ns={namespace}|the Kubeflow dashboard>"
    elif dashboard_url:
        where = f"the Kubeflow dashboard ({style.esc(dashboard_url)}/?ns={namespace})"
    else:
        where = "your Kubeflow dashboard"
    lines = [f"Open {where} and choose the namespace `{namespace}`."]
    dex = made.get(ActionName.DEX_USER)
    if dex is not None:
        lines.append(
            f"Log in as `{owner}` with the Kubeflow password its owner sets with “Set my password” "
            "(shown once; `/kf password reset` makes a new one)."
        )
    else:
        lines.append(f"Log in as `{owner}` through your organisation's sign-in (the bot makes no password).")
    bucket = made.get(ActionName.BUCKET)
    if bucket is not None:
        lines.append(f"Your data bucket: `s3://{style.esc(str(bucket.get('bucket') or ''))}`.")
    poddefault = made.get(ActionName.PODDEFAULT)
    if poddefault is not None:
        description = style.esc(str(poddefault.get("description") or poddefault.get("name") or ""))
        lines.append(
            f"For a GPU notebook: in the New Notebook form, under “Configurations”, tick “{description}” "
            f"(PodDefault `{style.esc(str(poddefault.get('name') or ''))}`), and ask for GPUs."
        )
        lines.append("`/kf gpu status` shows your GPU nodes, what runs on them and what they cost.")
    heading = "Next steps, once this runs for real" if dry_run else "Next steps"
    head = f"*{heading}*" if style.slack else f"{heading}:"
    return "\n".join([head, *(f"• {line}" for line in lines)])


def notice_text(
    notice: Notice,
    style: Style,
    kept: Sequence[str] = (),
    *,
    dry_run: bool = False,
    dashboard_url: str | None = None,
) -> str:
    """The text of a notice other than a card (cards are the transports' own layout). In a dry
    run, what goes to a person or the admin channel (not a thread line, which says it itself)
    ends with ``DRY_RUN_NOTE``."""
    text = _notice_text(notice, style, kept, dry_run)
    if notice.say in (Say.RESULT, Say.MADE_FOR_YOU) and (
        steps := next_steps(notice.request, style, dashboard_url, dry_run=dry_run)
    ):
        text += "\n" + steps
    if dry_run and text and notice.say is not Say.PROGRESS and notice.request.state not in _NOT_RUN:
        text += f"\n_{DRY_RUN_NOTE}_" if style.slack else f"\n({DRY_RUN_NOTE})"
    return text


_TIMER_REASONS = frozenset(timer.reason for timer in kinds.TIMERS.values())
"""Why a timer's request acted (``the grant expired``); another reason of the bot's own is not a
time limit."""


def _notice_text(notice: Notice, style: Style, kept: Sequence[str], dry_run: bool) -> str:
    request, say = notice.request, notice.say
    if say is Say.PROGRESS and notice.event is not None:
        return event_text(request, notice.event, style, dry_run=dry_run) or ""
    if say is Say.DECISION:
        return decision_dm(request, style, dry_run=dry_run)
    if say is Say.REPLANNED:
        return replan_dm(request, style)
    if say in (Say.RESULT, Say.ADMIN_NOTE):
        return result_text(request, style, kept, dry_run=dry_run)
    if say is Say.MADE_FOR_YOU:
        return f"A Kubeflow workspace was made for you: {describe(request, style)}."
    if say is Say.PASSWORD_OFFERED:
        login = style.esc(str(request.args.get("user") or ""))
        return (
            f"An admin let you set a new password for your Kubeflow login {login} (`{request.id}`). "
            "Your current password keeps working until you do; nobody else sees the new one."
        )
    if say is Say.ACCESS_CHANGED and notice.access is not None:
        return access_text(request, notice.access, style)
    if say is Say.TIME_LIMIT:
        # For the people a request of the bot's own (an expiry) concerns: the grantee and owner of
        # an expired grant, the owner of a reverted quota.
        done = result_text(request, style, dry_run=dry_run)
        if request.reason and request.reason not in _TIMER_REASONS:
            # Not a timer: offboarding acts on Slack's word, and says so rather than a time limit.
            return f"kf-chatops acted on its own ({style.esc(request.reason)}). {done}"
        return f"⏰ A time limit ran out. {done}"
    if say is Say.TIMER_MESSAGE:
        return style.message(notice.message or "")
    return decision_text(request, style)


# -- read models -------------------------------------------------------------------------------------


def workspaces_text(rows: Sequence[WorkspaceRecord], style: Style, *, admin: bool) -> str:
    if not rows:
        return "No workspaces." if admin else "You own no workspaces."
    lines = ["Workspaces:" if admin else "Your workspaces:"]
    for row in rows:
        lines.append(
            f"• `{style.esc(row.name)}` namespace `{style.esc(row.namespace)}`, "
            f"owner {style.esc(row.owner)}, since {style.when(row.created_at)}"
        )
    return "\n".join(lines)


_FOUND_WHAT = {
    "kubeflow.profile": "Profile",
    "dex.user": "Dex login",
    "aws.bucket": "bucket",
    "aws.iam_resources": "IAM policy",
    "aws.nodegroup": "nodegroup",
}


def scan_group_text(group: UnmanagedGroup, style: Style) -> str:
    """One group of ``/kf workspace scan``: its likely workspace and each object on a line. Every
    name comes from the cluster or AWS, made by hand: escaped like any other outside text."""
    head = (
        f"*Profile `{style.esc(group.namespace)}`*"
        if group.namespace
        else f"*{style.esc(group.label)}* (no Profile: not adoptable as it is)"
    )
    lines = [head]
    for obj in group.objects:
        what = _FOUND_WHAT.get(obj.action, obj.action)
        lines.append(f"• {what} `{style.esc(obj.name)}` ({style.esc(obj.found_by)})")
    return "\n".join(lines)


def scan_text(groups: Sequence[UnmanagedGroup] | None, style: Style) -> str:
    if groups is None:
        return "Scanning needs the live cluster; this bot runs without one (dry run)."
    if not groups:
        return (
            "Nothing to adopt: every Profile, bucket, nodegroup and Dex login found is managed by "
            "kf-chatops or is not a Kubeflow workspace (system namespaces, and Profiles whose namespace "
            "Kubeflow did not make, are never offered)."
        )
    intro = "Not managed by kf-chatops, grouped by likely workspace (`/kf workspace adopt NAMESPACE`):"
    return "\n\n".join([intro, *(scan_group_text(g, style) for g in groups)])


def pins_text(filed: Sequence[services.PinFiled], style: Style) -> str:
    if not filed:
        return "Every GPU nodegroup kf-chatops made carries its workspace taint already; nothing to pin."
    lines = ["Pin requests (each waits for another admin's approval):"]
    for f in filed:
        what = f"filed `{f.request_id}`" if f.request_id else f"skipped: {style.message(f.reason)}"
        lines.append(f"• `{style.esc(f.workspace)}`: {what}")
    return "\n".join(lines)


def grant_line(grant: GrantRecord | Contributor, style: Style) -> str:
    line = f"{style.esc(grant.user)} ({style.esc(grant.role)})"
    if grant.expires_at is not None:
        line += f" until {style.when(grant.expires_at)}"
    if isinstance(grant, Contributor):
        if grant.in_cluster is False:
            line += " — missing in the cluster"
        if not grant.recorded:
            line += " — in the cluster only (not granted through kf-chatops)"
    return line


def quota_text(quota: QuotaState, style: Style) -> str:
    """The enforced ResourceQuota with its usage, per resource: ``cpu=8 (used 1)``."""
    return ", ".join(
        f"{style.esc(resource)}={style.esc(hard)}"
        + (f" (used {style.esc(quota.used[resource])})" if resource in quota.used else "")
        for resource, hard in sorted(quota.hard.items())
    )


def workspace_text(view: WorkspaceView, style: Style) -> str:
    record = view.record
    lines = [
        f"Workspace `{style.esc(record.name)}`",
        f"Namespace `{style.esc(record.namespace)}` · owner {style.esc(record.owner)} · "
        f"created {style.when(record.created_at)} "
        f"by request `{style.esc(str(record.request_id))}`",
    ]
    if record.created:
        lines.append("Made by kf-chatops: " + ", ".join(f"`{style.esc(key)}`" for key in record.created))
    grants = view.grants
    lines.append("Contributors: " + (", ".join(grant_line(g, style) for g in grants) if grants else "none"))
    if view.live is not None and view.live.quota.hard:
        lines.append("Quota: " + quota_text(view.live.quota, style))
    lines.extend(f"⚠ {style.esc(note)}" for note in view.drift)
    return "\n".join(lines)


def contributors_text(workspace: str, rows: Sequence[Contributor], style: Style) -> str:
    if not rows:
        return f"`{style.esc(workspace)}` has no contributors besides its owner."
    return "\n".join(
        [f"Contributors of `{style.esc(workspace)}`:", *(f"• {grant_line(r, style)}" for r in rows)]
    )


def tokens_text(rows: Sequence[TokenRecord], style: Style) -> str:
    if not rows:
        return "You have no active tokens."
    lines = ["Your active tokens (revoke with `/kf token revoke ID`):"]
    for row in rows:
        lines.append(
            f"• `{style.esc(row.token_id)}` {style.esc(row.role)} in "
            f"`{style.esc(row.workspace)}`, expires {style.when(row.expires_at)}"
        )
    return "\n".join(lines)


def gpu_status_text(scan: IdleScan, style: Style) -> str:
    """``/kf gpu status``: GPU nodegroups, GPUs in use, idle items, $/hour now and this month."""
    now = scan.taken_at
    lines = [f"*GPU status* (as of {style.when(now)}, the last scan)"]
    if not scan.fleet:
        lines.append("No GPU nodegroups you can see.")
    hourly = 0.0
    for f in scan.fleet:
        owner = style.esc(f.workspace) if f.workspace else "unattributed"
        price = cost_report.money(f.hourly_usd)
        hourly += f.hourly_usd or 0.0
        lines.append(
            f"• `{style.esc(f.nodegroup)}` ({owner}): {f.nodes} x {style.esc(f.instance_type)}, "
            f"{f.gpus} GPUs, {f.gpus_in_use} in use, {price}/hour ({style.esc(f.status)})"
        )
    if scan.fleet:
        lines.append(f"Now: {cost_report.money(hourly)}/hour ({PRICE_BASIS}).")
    if scan.observation.items:
        lines.append("*Idle:*")
        lines += [f"• {style.message(cost_report.entry_text(i, now))}" for i in scan.observation.items]
    else:
        lines.append("Nothing idle.")
    if scan.observation.held:
        lines.append("*Idle but kept or snoozed:*")
        lines += [f"• {style.message(i.what)}" for i in scan.observation.held]
    for note in scan.observation.notes:
        lines.append(f"Note: {style.message(note)}")
    if scan.month:
        lines.append("*This month* (GPU node time the scans observed):")
        for m in sorted(scan.month, key=lambda m: m.workspace or "\uffff"):
            who = style.esc(m.workspace) if m.workspace else "unattributed"
            lines.append(
                f"• {who}: {m.node_hours:.1f} node-hours, {cost_report.money(m.usd)}; "
                f"idle {m.idle_hours:.1f} h, {cost_report.money(m.idle_usd)}"
            )
    return "\n".join(lines)
