"""Offboarding: when Slack says a person left, take the access the bot gave them and ask the admins
who gets the workspaces they own.

Pure rules, and the one use case that files the requests (``offboard``). The Slack edge
(``bot/offboard.py``) asks Slack about each person and hands the answer here as a ``SlackAnswer``;
``judge`` turns what Slack said into a ``Presence``. Only ``LEFT`` acts:

* ``users.info`` on a recorded id says ``deleted: true``, or ``user_not_found`` for an id that
  was once known: left (the edge first checks that no active account has their Slack address);
* ``users.lookupByEmail`` (nobody recorded an id) finding nobody: Slack never knew the email (a
  collaborator outside Slack): never left;
* any other error, a timeout, a 429: unknown, asked again on the next run (after ``Retry-After``).

A run that finds implausibly many people left (``implausible``) files nothing.

For someone who left, the bot files, as requests of its own (requester ``system``): an
``unshare`` per grant (which takes the tokens that grant made) and a ``token.revoke`` per other
token, auto-applied under the rule ``system:offboard`` (taking access away from someone Slack
deactivated benefits nobody, as an expiry does not), and a ``workspace.transfer`` per workspace
they own, which waits for an admin like any transfer (it gives someone a workspace and its data).
Each request's idempotency key names the person, the Slack id and what it is about, so a second
run files nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from handlers import errors, kinds, naming, policy
from handlers.model import SYSTEM, Request, RequestState
from handlers.ports import Facts
from handlers.services import AutoDecision, Core, cancel, record_system
from handlers.settings import CoreSettings

TRIGGER = "offboard"
RULE = policy.system_rule(TRIGGER)
REASON = "the person left Slack"
MOST_LEFT = 2
"""A run files for at most this many people judged left, or a fifth of those asked if more: past
that, Slack's answers are implausible (a token for another Slack workspace answers
``user_not_found`` for everyone), so the run files nothing and tells the admins."""


def implausible(asked: int, left: int) -> bool:
    """Too many of the ``asked`` people came back left for one run to act on (``MOST_LEFT``)."""
    return left > max(MOST_LEFT, asked // 5)


@dataclass(frozen=True)
class Person:
    """Someone the bot gave access to, as the registry records them."""

    user: str
    """The Kubeflow user id of an owner or grantee, or the Slack email of a token's requester."""
    slack_ids: tuple[str, ...] = ()
    """The Slack ids recorded when the access was granted (a token's requester, always)."""
    owns: tuple[str, ...] = ()
    grants: tuple[str, ...] = ()
    tokens: tuple[tuple[str, str], ...] = ()
    """(token id, workspace) of active tokens."""


def offboard_emails(settings: CoreSettings, user: str) -> tuple[str, ...]:
    """The Slack emails ``user`` (a ``Person.user``) is known by: the emails ``KFBOT_USER_ID_MAP``
    maps to that Kubeflow id, and the address itself unless the map makes it someone's Kubeflow id
    (then a Slack account with that address is somebody else)."""
    mapping = settings.workspace.user_id_map
    emails = [email for email, kubeflow in sorted(mapping.items()) if kubeflow == user]
    if user not in mapping.values():
        emails.append(user)
    return tuple(dict.fromkeys(e for e in emails if "@" in e))


class Presence(StrEnum):
    ACTIVE = "active"
    LEFT = "left"
    NEVER_KNOWN = "never known"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SlackAnswer:
    """What one Slack call said: ``user`` (the user object) or ``error``; ``status`` the HTTP status
    (0: no answer, a timeout); ``retry_after`` Slack's ``Retry-After`` in seconds on a 429."""

    by_id: bool
    """``users.info`` on a recorded id (else ``users.lookupByEmail``)."""
    slack_id: str | None = None
    deleted: bool | None = None
    error: str | None = None
    status: int = 200
    retry_after: float | None = None


def judge(answer: SlackAnswer) -> Presence:
    if answer.status == 429 or answer.error == "ratelimited" or answer.status != 200:
        return Presence.UNKNOWN
    if answer.error is None:
        return Presence.LEFT if answer.deleted is True else Presence.ACTIVE
    if answer.by_id and answer.error == "user_not_found":
        return Presence.LEFT  # an id Slack once gave us is gone
    if not answer.by_id and answer.error == "users_not_found":
        return Presence.NEVER_KNOWN
    return Presence.UNKNOWN


@dataclass(frozen=True)
class Offboarded:
    """What one run did for one person."""

    user: str
    presence: Presence
    filed: tuple[str, ...] = ()
    """Ids of requests filed now (a second run files none)."""
    already: tuple[str, ...] = ()
    """Ids of requests an earlier run filed."""
    skipped: tuple[str, ...] = field(default_factory=tuple)
    """Why something was not filed (a request about it still open, nobody to hand a workspace to)."""
    unplaced: tuple[str, ...] = ()
    """Workspaces they own that nobody was proposed for: the admins are told."""
    withdrawn: tuple[str, ...] = ()
    """Ids of pending offboarding transfers cancelled because Slack finds the owner active again."""


def proposed_owner(
    core: Core, person: Person, workspace: str, gone: frozenset[str] = frozenset()
) -> str | None:
    """Who a left owner's workspace is offered to: its first edit contributor who is not the person
    and not among ``gone`` (people the same run found left: their grants are being taken), else
    ``KFBOT_OFFBOARD_OWNER``; the admin who decides sees the name and can reject and file another
    transfer."""
    ws = core.facts.workspace(workspace)
    if ws is not None:
        for user, role in sorted(ws.contributors.items()):
            if role == "edit" and user != person.user and user not in gone and "@" in user:
                return user
    return core.settings.offboard.owner or None


WITHDRAWN = "Withdrawn by the bot: Slack finds the owner active again."


def withdraw_transfers(core: Core, person: Person) -> tuple[str, ...]:
    """Cancel (as the bot, their requester) what offboarding filed for ``person`` and is still
    pending: the transfers of the workspaces they own and the removal of their adopted login. They
    were filed because Slack said the person left, and Slack now says otherwise. A request anyone
    else filed, or one already decided, is left alone."""
    filed = [(kinds.WorkspaceTransfer.KIND, f"workspace:{workspace}") for workspace in person.owns]
    filed.append((kinds.LoginRemove.KIND, kinds.LoginRemove(person.user).subject()))
    pending: list[Request] = []
    with core.uow() as uow:
        for kind, subject in filed:
            pending += uow.requests.list(
                requester_id=SYSTEM.user_id,
                states=[RequestState.PENDING],
                kind=kind,
                subject=subject,
                limit=None,
            )
    withdrawn: list[str] = []
    for request in pending:
        if request.args.get("offboarded") is not True:
            continue
        try:
            cancel(core, SYSTEM, request.id, WITHDRAWN)
        except (errors.IllegalTransition, errors.StaleVersion):
            continue  # decided meanwhile: the admin's decision stands
        withdrawn.append(request.id)
    return tuple(withdrawn)


def offboard(
    core: Core, person: Person, answer: SlackAnswer, gone: frozenset[str] = frozenset()
) -> Offboarded:
    """File what offboarding ``person`` takes, if ``answer`` says they left; nothing otherwise.
    ``gone``: others the same run found left, never proposed as a new owner. Someone Slack finds
    active has their pending offboarding transfers withdrawn (they came back)."""
    presence = judge(answer)
    if presence is Presence.ACTIVE and person.owns:
        return Offboarded(person.user, presence, withdrawn=withdraw_transfers(core, person))
    if presence is not Presence.LEFT:
        return Offboarded(person.user, presence)
    said = "deleted" if answer.error is None else answer.error
    trigger = f"slack:{answer.slack_id or person.user}:{said}"
    who = f"{TRIGGER}:{person.user}:{answer.slack_id or '-'}"
    filed: list[str] = []
    already: list[str] = []
    skipped: list[str] = []
    unplaced: list[str] = []
    auto = AutoDecision(RULE, REASON, trigger)

    def file(kind: kinds.RequestKind, key: str, decision: AutoDecision | None) -> None:
        try:
            done = record_system(core, kind, key, decision)
            # A transfer that expired was decided by nobody: file it again (a rejection stands).
            while done.duplicate and decision is None and done.request.state is RequestState.EXPIRED:
                done = record_system(core, kind, f"{key}:after:{done.request.id}", None)
        except errors.SubjectBusy as exc:
            skipped.append(f"{kind.describe()}: {exc.user_message or 'a request about it is still open'}")
            return
        except (errors.InvalidInput, errors.NotFound) as exc:
            skipped.append(f"{kind.describe()}: {exc.user_message}")
            return
        (already if done.duplicate else filed).append(done.request.id)

    for workspace in person.grants:
        owner = _owner(core.facts, workspace)
        notify = (owner,) if owner else ()
        file(kinds.Unshare(workspace, person.user, notify=notify), f"{who}:grant:{workspace}", auto)
    granted = set(person.grants)
    for token_id, workspace in person.tokens:
        if workspace in granted:
            continue  # the unshare of that grant removes the tokens it made
        file(kinds.TokenRevoke(token_id), f"{who}:token:{token_id}", auto)
    for workspace in person.owns:
        to = proposed_owner(core, person, workspace, gone)
        if to is None:
            unplaced.append(workspace)
            skipped.append(
                f"`{workspace}` has nobody to hand it to: file "
                f"`/kf workspace transfer {workspace} --to EMAIL`, or set KFBOT_OFFBOARD_OWNER."
            )
            continue
        transfer = kinds.WorkspaceTransfer(workspace, to, offboarded=True)
        file(transfer, f"{who}:transfer:{workspace}", None)

    # -- login.remove (#12): an adopted login never goes with the access; an admin decides -----
    if core.facts.login_origin(person.user) == "adopted":
        file(kinds.LoginRemove(person.user, offboarded=True), f"{who}:login", None)
    return Offboarded(person.user, presence, tuple(filed), tuple(already), tuple(skipped), tuple(unplaced))


def _owner(facts: Facts, workspace: str) -> str | None:
    ws = facts.workspace(workspace)
    return None if ws is None else ws.owner


def describe(result: Offboarded) -> str:
    """One line for the admin who ran ``/kf offboard`` (values quoted raw, as core texts are)."""
    user = naming.show_value(result.user)
    if result.presence is not Presence.LEFT:
        why = {
            Presence.ACTIVE: "is active in Slack",
            Presence.NEVER_KNOWN: (
                "could not be checked: no Slack id is recorded for them and Slack finds no active "
                "account by that email (Slack does not look up deactivated accounts by email, so "
                "this is someone outside Slack or someone who left before the bot recorded their "
                "id); if they left, take their access with `/kf unshare`"
            ),
            Presence.UNKNOWN: "could not be checked (Slack did not answer); the daily check tries again",
        }[result.presence]
        said = f"{user} {why}; nothing was filed."
        if result.withdrawn:
            ids = ", ".join(f"`{i}`" for i in result.withdrawn)
            said += f" Withdrawn: {ids} (the transfer filed when they were judged left)."
        return said
    parts = [f"{user} left Slack."]
    if result.filed:
        parts.append("Filed " + ", ".join(f"`{i}`" for i in result.filed) + ".")
    if result.already:
        parts.append("Filed before: " + ", ".join(f"`{i}`" for i in result.already) + ".")
    parts.extend(result.skipped)
    if len(parts) == 1:
        parts.append("They hold nothing the bot granted.")
    return " ".join(parts)
