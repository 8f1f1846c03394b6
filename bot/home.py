"""The App Home tab: render the core's ``handlers.home.HomeView`` as Block Kit, publish it
(``views.publish``) when a person opens the tab and, debounced, when something of theirs changes.

``Home.view_for(user_id)`` returns the view JSON a person would see (for pictures and tests);
``render`` is pure. Buttons: Approve and Reject are the card's own (``blocks.APPROVE``/``REJECT``,
value ``request:version``), so a click from the Home tab runs the same listener, policy check and
idempotency as one on the card; Cancel and Revoke are ``HOME_CANCEL``/``HOME_REVOKE`` (value: a
request id, a token id), which go through ``services.cancel`` and a ``token.revoke`` request.
Slack refuses a Home view of more than 100 blocks: each list is cut to a fixed number of entries
and ends with "and N more" pointing at the command that lists them all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    SectionBlock,
)

from bot import blocks, render
from bot.payloads import BlockDict
from handlers import errors, home, policy, services
from handlers.model import Actor, Event, EventType, Request
from handlers.ports import Delivery, Notifier
from provisioning import TokenRecord, WorkspaceRecord, WorkspaceView

logger = logging.getLogger(__name__)
S = render.SLACK

HOME_CANCEL = "kf_home_cancel"
HOME_REVOKE = "kf_home_revoke"
SHOWN = {"workspaces": 10, "requests": 10, "tokens": 10, "grants": 15, "approvals": 15, "failures": 5}
"""How many entries of each list the tab shows; with one block per entry (two per approval) and
two per heading, the tab stays well under Slack's 100 blocks whatever the lists hold."""
SLACK_USER_ID = render.SLACK_USER_ID
"""Whose Home tab exists: Slack's users. The bot's own requests (``kfbot``) and the shell's
(``shell:EMAIL``) have a requester Slack has no tab for; ``views.publish`` would only fail."""
DRY_RUN_HOME = (
    "*Dry run*: kf-chatops runs with the dry-run provisioner. Requests are recorded, approved and "
    "shown as they would be applied; nothing is changed in Kubeflow, Dex or AWS."
)


# -- rendering (pure) -------------------------------------------------------------------------------


def _quota(line: home.WorkspaceLine) -> str:
    parts = [
        f"{S.esc(name)} {S.esc(line.quota_used.get(name, '?'))}/{S.esc(hard)}"
        for name, hard in sorted(line.quota_hard.items())
    ]
    return "quota " + ", ".join(parts) if parts else "no quota read"


def _workspace(line: home.WorkspaceLine) -> str:
    bits = [f"*{S.esc(line.name)}* ({line.role})", _quota(line)]
    if line.gpu_nodes is not None:
        bits.append(f"{line.gpu_nodes} GPU node{'s' if line.gpu_nodes != 1 else ''} running")
    if line.month_usd is not None:
        bits.append(f"${line.month_usd:,.2f} GPU this month")
    return " · ".join(bits)


def _more(count: int, command: str) -> ContextBlock:
    return ContextBlock(elements=[blocks.md(f"and {count} more, `{command}`", 2000)])


def _confirm(title: str, text: str, yes: str) -> ConfirmObject:
    return ConfirmObject(
        title=blocks.plain(title, 100),
        text=blocks.plain(text, 300),
        confirm=blocks.plain(yes, 30),
        deny=blocks.plain("Keep", 30),
        style="danger",
    )


def _section(text: str, accessory: ButtonElement | None = None) -> SectionBlock:
    return SectionBlock(text=blocks.md(text), accessory=accessory)


def _list(
    out: list[Block], title: str, entries: Sequence[list[Block]], shown: int, command: str, empty: str
) -> None:
    out.append(HeaderBlock(text=blocks.plain(title, blocks.HEADER_LIMIT)))
    if not entries:
        out.append(ContextBlock(elements=[blocks.md(empty, 2000)]))
        return
    for entry in entries[:shown]:
        out.extend(entry)
    if len(entries) > shown:
        out.append(_more(len(entries) - shown, command))


def _request_entry(line: home.RequestLine) -> list[Block]:
    r = line.request
    text = f"`{r.id}` {render.describe(r, S)}: {render.STATE_WORDS[r.state]}"
    cancel = (
        blocks.button(
            "Cancel",
            HOME_CANCEL,
            r.id,
            "danger",
            _confirm("Cancel this request?", f"{r.id} will not be applied.", "Cancel it"),
        )
        if line.cancellable
        else None
    )
    return [_section(text, cancel)]


def _token_entry(token: home.TokenInput) -> list[Block]:
    text = (
        f"`{S.esc(token.token_id)}` {S.esc(token.role)} token for *{S.esc(token.workspace)}*, "
        f"expires {S.when(token.expires_at)}"
    )
    revoke = blocks.button(
        "Revoke",
        HOME_REVOKE,
        token.token_id,
        "danger",
        _confirm("Revoke this token?", f"Token {token.token_id} stops working.", "Revoke"),
    )
    return [_section(text, revoke)]


def _approval_entry(line: home.ApprovalLine, confirm_above: float | None) -> list[Block]:
    r = line.request
    who = S.user(r.requester_id, r.requester_email)
    text = f"`{r.id}` {render.describe(r, S)} (requested by {who})"
    # The plan's warnings (what a transfer hands over, who loses access) as the card shows them:
    # the Approve below must not be the first an admin learns of them.
    text += "".join(f"\n⚠ {S.esc(w)}" for w in r.plan.warnings)
    cost = render.cost_text(r.plan.cost)
    if cost:
        text += f"\n{cost}"
    if not line.may_decide:
        return [_section(text), ContextBlock(elements=[blocks.md(S.message(line.why_not), 2000)])]
    return [
        _section(text),
        ActionsBlock(
            block_id=f"home-decide:{r.id}",
            elements=[
                blocks.button("View plan", blocks.VIEW_PLAN, r.id),
                blocks.button(
                    "Approve",
                    blocks.APPROVE,
                    blocks.decision_value(r),
                    "primary",
                    blocks.approve_confirm(r.plan, confirm_above),
                ),
                blocks.button("Reject", blocks.REJECT, blocks.decision_value(r), "danger"),
            ],
        ),
    ]


def _lines_section(lines: Sequence[str]) -> list[Block]:
    return [_section("\n".join(lines))]


def render_home(view: home.HomeView, *, confirm_above: float | None = None) -> BlockDict:
    """The ``views.publish`` view of ``view``: at most ``home.HOME_BLOCK_LIMIT`` blocks."""
    out: list[Block] = [
        HeaderBlock(text=blocks.plain("kf-chatops" + (" (dry run)" if view.dry_run else ""), 150))
    ]
    if view.dry_run:
        out.append(_section(DRY_RUN_HOME))
    intro = "Your Kubeflow workspaces, requests, tokens and access. `/kf help` lists the commands."
    if view.dashboard_url:
        intro += f" <{view.dashboard_url}|Open the Kubeflow dashboard>."
    out.append(ContextBlock(elements=[blocks.md(intro, 2000)]))
    _list(
        out,
        "Your workspaces",
        [[_section(_workspace(w))] for w in view.workspaces],
        SHOWN["workspaces"],
        "/kf workspace list",
        "You own or work in no workspace. `/kf workspace new NAME` asks for one.",
    )
    _list(
        out,
        "Your open requests",
        [_request_entry(r) for r in view.requests],
        SHOWN["requests"],
        "/kf requests",
        "No open requests.",
    )
    _list(
        out,
        "Your tokens",
        [_token_entry(t) for t in view.tokens],
        SHOWN["tokens"],
        "/kf tokens",
        "No active tokens.",
    )
    grant_lines = [
        f"• {S.esc(g.role)} on *{S.esc(g.workspace)}*, "
        + (f"until {S.when(g.expires_at)}" if g.expires_at else "no end date")
        for g in view.grants
    ]
    _list(
        out,
        "Access you hold",
        [_lines_section(grant_lines[: SHOWN["grants"]])] if grant_lines else [],
        1,
        "/kf workspace list",
        "No access to other people's workspaces.",
    )
    if len(grant_lines) > SHOWN["grants"]:
        out.append(_more(len(grant_lines) - SHOWN["grants"], "/kf workspace list"))
    if view.is_admin:
        out.append(DividerBlock())
        _list(
            out,
            "Waiting for an admin",
            [_approval_entry(a, confirm_above) for a in view.approvals],
            SHOWN["approvals"],
            "/kf requests",
            "Nothing waits for a decision.",
        )
        failure_lines = [
            f"• `{r.id}` {render.describe(r, S)}: {render.STATE_WORDS[r.state]} ({S.when(r.updated_at)})"
            for r in view.failures[: SHOWN["failures"]]
        ]
        _list(
            out,
            "Last failures",
            [_lines_section(failure_lines)] if failure_lines else [],
            1,
            "/kf requests",
            "No failures.",
        )
    return {"type": "home", "blocks": [b.to_dict() for b in out[: home.HOME_BLOCK_LIMIT]]}


def error_home(text: str) -> BlockDict:
    return {
        "type": "home",
        "blocks": [HeaderBlock(text=blocks.plain("kf-chatops", 150)).to_dict(), _section(text).to_dict()],
    }


# -- reading and publishing -------------------------------------------------------------------------


@dataclass
class HomeSources:
    """The backend's reads the Home tab uses, as callables (the composition root binds them)."""

    workspaces: Callable[[], list[WorkspaceRecord]]
    workspace_view: Callable[[str, bool], WorkspaceView | None]
    """(name, live): ``Backend.workspace_view``."""
    tokens: Callable[[str], list[TokenRecord]]
    month_usd: Callable[[], dict[str, float]]
    gpu_nodes: Callable[[], dict[str, int] | None]


def gather(
    core: services.Core, sources: HomeSources, actor: Actor, *, dry_run: bool, dashboard_url: str | None
) -> home.HomeView:
    """Read what the core needs for ``actor``'s Home tab and let it decide what is shown. The
    registry (database only) for every workspace; the live view (the quota, a cluster read) only
    for those the core says are the person's (a failed read shows no quota)."""
    month = sources.month_usd()
    nodes = sources.gpu_nodes()
    inputs: dict[str, home.WorkspaceInput] = {}
    for row in sources.workspaces():
        view = sources.workspace_view(row.name, False)
        grants = tuple(home.GrantInput(g.user, g.role, g.expires_at) for g in (view.grants if view else ()))
        inputs[row.name] = home.WorkspaceInput(
            name=row.name,
            owner=row.owner,
            grants=grants,
            gpu_nodes=None if nodes is None else nodes.get(row.name, 0),
            month_usd=month.get(row.name),
        )
    for name in home.theirs(core, actor, inputs.values()):
        try:
            live = sources.workspace_view(name, True)
        except errors.KfError:
            logger.warning("App Home: could not read workspace %s", name)
            continue
        state = live.live if live is not None else None
        if state is not None:
            inputs[name] = replace(
                inputs[name], quota_hard=dict(state.quota.hard), quota_used=dict(state.quota.used)
            )
    tokens = [
        home.TokenInput(t.token_id, t.workspace, t.role, t.expires_at) for t in sources.tokens(actor.user_id)
    ]
    return home.build(
        core, actor, workspaces=inputs.values(), tokens=tokens, dry_run=dry_run, dashboard_url=dashboard_url
    )


_FOR_PEOPLE = "for-people-of:"
"""A debouncer key that stands for the people a succeeded request was for (resolved when it fires)."""
_PERSON_BY_EMAIL = "person-by-email:"
"""A debouncer key for one person named by email (their Slack id is looked up when it fires)."""


class Debouncer:
    """Runs ``action(key)`` once per key, ``delay`` seconds after the first ``touch`` of a burst;
    touches while one is scheduled join it. One daemon thread."""

    def __init__(
        self, delay: float, action: Callable[[str], None], monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._delay, self._action, self._monotonic = delay, action, monotonic
        self._due: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def touch(self, keys: Iterable[str]) -> None:
        with self._cond:
            if self._closed:
                return
            now = self._monotonic()
            for key in keys:
                self._due.setdefault(key, now + self._delay)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kfbot-home", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = self._monotonic()
                    ready = [k for k, at in self._due.items() if at <= now]
                    if ready:
                        for key in ready:
                            del self._due[key]
                        break
                    wait = min(self._due.values()) - now if self._due else None
                    self._cond.wait(wait)
                if self._closed:
                    return
            for key in ready:
                try:
                    self._action(key)
                except Exception:  # one person's Home failing must not stop the others'
                    logger.exception("could not refresh an App Home")


class Home:
    """Publishes people's Home tabs: on open, and, debounced, for everyone a committed change
    concerns (the requester, the admins when the pending or failed lists change, and the people a
    request that succeeded was for: a grantee, a new owner, a token holder). Slack keeps the last
    published view, so a tab opened on another replica, or never opened, is kept current too."""

    def __init__(
        self,
        core_of: Callable[[], services.Core],
        sources: HomeSources,
        client: WebClient,
        actor_of: Callable[[str], Actor],
        admins: Callable[[], Iterable[str]],
        user_id_for_email: Callable[[str], str | None],
        *,
        dry_run: bool,
        dashboard_url: str | None,
        confirm_above: float | None,
        refresh_seconds: float,
    ) -> None:
        self._core_of, self._sources, self._client = core_of, sources, client
        self._actor_of, self._admins = actor_of, admins
        self._dry_run, self._dashboard_url, self._confirm_above = dry_run, dashboard_url, confirm_above
        self._user_id_for_email = user_id_for_email
        self._succeeded: dict[str, Request] = {}
        self._succeeded_lock = threading.Lock()
        self.debouncer = Debouncer(refresh_seconds, self._refresh)

    def view_for(self, user_id: str) -> BlockDict:
        """The Home view JSON ``user_id`` sees now (what ``publish`` sends)."""
        try:
            actor = self._actor_of(user_id)
            view = gather(
                self._core_of(),
                self._sources,
                actor,
                dry_run=self._dry_run,
                dashboard_url=self._dashboard_url,
            )
        except errors.KfError as refused:
            return error_home(render.error_text(refused, S))
        return render_home(view, confirm_above=self._confirm_above)

    def opened(self, user_id: str) -> None:
        self.publish(user_id)

    def _refresh(self, key: str) -> None:
        if key.startswith(_PERSON_BY_EMAIL):
            self._refresh_by_email(key.removeprefix(_PERSON_BY_EMAIL))
            return
        request_id = key.removeprefix(_FOR_PEOPLE)
        if request_id == key:
            self.publish(key)
            return
        with self._succeeded_lock:
            request = self._succeeded.pop(request_id, None)
        if request is None:
            return
        # Who a request is for is read here, on the debouncer's thread, not on the notifier's
        # path: it may ask the cluster (a quota's contributors). Each person then gets a key of
        # their own, so a burst of requests for one person costs one Slack lookup and one publish.
        core = self._core_of()
        emails = {e.lower() for e in policy.beneficiaries(request, core.settings, core.facts) if "@" in e}
        emails.discard(request.requester_email.lower())  # the requester's tab has its own key
        if emails:
            self.debouncer.touch(sorted(_PERSON_BY_EMAIL + e for e in emails))

    def _refresh_by_email(self, email: str) -> None:
        user_id = self._user_id_for_email(email)
        if user_id is not None:
            self.publish(user_id)

    def publish(self, user_id: str) -> None:
        if not SLACK_USER_ID.fullmatch(user_id):
            logger.debug("no App Home to publish for %s (not a Slack user)", user_id)
            return
        view = self.view_for(user_id)
        try:
            self._client.views_publish(user_id=user_id, view=view)
        except (SlackClientError, OSError) as exc:
            logger.warning("views.publish for %s failed: %s", user_id, type(exc).__name__)

    def changed(self, request: Request, events: Sequence[Event]) -> None:
        """A committed change: republish, debounced, the tabs it makes stale."""
        try:
            admins = list(self._admins())
        except Exception:  # the group lookup failing must not cost the requester their refresh
            logger.warning("App Home: could not list the admins", exc_info=True)
            admins = []
        stale = set(home.audience(request, events, admins))
        if any(e.type is EventType.SUCCEEDED for e in events):
            with self._succeeded_lock:
                self._succeeded[request.id] = request
            stale.add(_FOR_PEOPLE + request.id)
        if stale:
            self.debouncer.touch(sorted(stale))

    def close(self) -> None:
        self.debouncer.close()


class HomeNotifier:
    """A notifier that tells ``Home`` about each change it delivered (every change passes through
    ``services.announce`` and so through here, engine progress included)."""

    def __init__(self, inner: Notifier, home_of: Callable[[], Home | None]) -> None:
        self._inner, self._home_of = inner, home_of

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: tuple[str, str] | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        delivery = self._inner.publish(request, events, card, threads)
        target = self._home_of()
        if target is not None:
            target.changed(request, events)
        return delivery
