"""Offboarding at the Slack edge: ask Slack whether each person the bot gave access to left, and hand
the answers to ``handlers.offboard`` (which files what that takes).

A person with recorded Slack ids is asked about by id (``users.info``: ``deleted: true`` or
``user_not_found`` for an id once known means left, unless an active account has their Slack
address); one without is looked up by email (``users.lookupByEmail`` on their Slack address, never
an address ``KFBOT_USER_ID_MAP`` maps to; Slack does not find deactivated users by email, so nobody
found means "never known", never "left"), and the id found is recorded for the next run. A 429 answers
"unknown" with its ``Retry-After``: the daily run waits that long before it asks anyone else
(at most ``MAX_WAIT``, else it stops and the next run goes on), ``/kf offboard`` says when to try
again. Errors and timeouts are "unknown" too: nothing is filed on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot import logging as log
from handlers import errors, naming
from handlers.model import Actor
from handlers.offboard import (
    Offboarded,
    Person,
    Presence,
    SlackAnswer,
    describe,
    implausible,
    judge,
    offboard,
    offboard_emails,
)
from handlers.ports import Clock
from handlers.services import Core
from handlers.settings import CoreSettings, kubeflow_user_id

logger = logging.getLogger(__name__)
MAX_WAIT = 300.0
"""The longest ``Retry-After`` a run waits out before it stops (seconds)."""
TELL_AGAIN = timedelta(days=7)
"""How often the admins are reminded of a left owner's workspace nobody was proposed for."""


def without_rate_limit_retries(client: WebClient) -> WebClient:
    """``client`` without its ``RateLimitErrorRetryHandler``: that handler sleeps any
    ``Retry-After``, uncapped, before the 429 reaches us, so ``MAX_WAIT`` would never apply."""
    handlers = [h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)]
    if len(handlers) == len(client.retry_handlers):
        return client
    return WebClient(
        token=client.token,
        base_url=client.base_url,
        timeout=client.timeout,
        ssl=client.ssl,
        proxy=client.proxy,
        headers=dict(client.headers),
        logger=client.logger,
        retry_handlers=handlers,
    )


class OffboardBackend(Protocol):
    """What offboarding uses of ``provisioning.Backend``."""

    def try_lead(self) -> bool: ...

    def people(self) -> list[Person]: ...

    def record_slack_id(self, user: str, slack_id: str) -> None: ...


def slack_id_recorder(settings: CoreSettings, backend: OffboardBackend) -> Callable[[str, str], None]:
    """What the notifier calls when it finds, by email, the Slack account of someone whose access
    just changed (a grantee told of a share): their Slack id is recorded then, while Slack still
    finds them by email, so a person deactivated before any daily check is still found left by id.
    Only under the person's own Slack address (``offboard_emails``): never an address
    ``KFBOT_USER_ID_MAP`` makes someone's Kubeflow id (another account may hold it)."""

    def record(email: str, slack_id: str) -> None:
        email = naming.normalize_email(email)
        user = kubeflow_user_id(settings, email)
        if email in offboard_emails(settings, user):
            backend.record_slack_id(user, slack_id)

    return record


def _retry_after(exc: SlackApiError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    for name, value in dict(headers).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            try:
                return max(1.0, float(str(raw)))
            except ValueError:
                return 1.0
    return None


def _failed(exc: SlackApiError, by_id: bool, slack_id: str | None) -> SlackAnswer:
    status = int(getattr(exc.response, "status_code", 0) or 0)
    error = exc.response.get("error") if exc.response is not None else None
    return SlackAnswer(
        by_id=by_id,
        slack_id=slack_id,
        error=str(error or "unknown_error"),
        # Slack answers method errors with HTTP 200 and ``ok: false``; a 429 carries Retry-After.
        status=status or 200,
        retry_after=_retry_after(exc) if status == 429 else None,
    )


@dataclass(frozen=True)
class RunOutcome:
    led: bool
    results: tuple[Offboarded, ...] = ()
    stopped: str | None = None
    """Why the run stopped before everyone was asked (a long ``Retry-After``)."""


class Offboarder:
    def __init__(
        self,
        client: WebClient,
        backend: OffboardBackend,
        core: Core,
        clock: Clock,
        admin_channel: str = "",
    ) -> None:
        self._client = without_rate_limit_retries(client)
        self._backend, self._core, self._clock = backend, core, clock
        self._admin_channel = admin_channel
        self._told: dict[tuple[str, str], datetime] = {}
        """(person, workspace) -> when the admins were last told nobody was proposed for it."""

    def ask(self, person: Person) -> SlackAnswer:
        """What Slack says about ``person``. Any recorded id Slack calls active makes them active,
        and so does an active account under their Slack email (a returning person's new account):
        someone is left only when every id is gone and Slack finds nobody by email. Otherwise the
        first answer that is neither (an error, a 429) is the answer: nothing is filed on it."""
        emails = offboard_emails(self._core.settings, person.user)
        if not person.slack_ids:
            return self._lookup(person, emails)
        answers = [self._info(slack_id) for slack_id in person.slack_ids]
        verdicts = [judge(answer) for answer in answers]
        if Presence.ACTIVE in verdicts:
            return answers[verdicts.index(Presence.ACTIVE)]
        if Presence.UNKNOWN in verdicts:
            return answers[verdicts.index(Presence.UNKNOWN)]
        found = self._lookup(person, emails)
        if judge(found) in (Presence.ACTIVE, Presence.UNKNOWN):
            return found
        return answers[0]

    def _info(self, slack_id: str) -> SlackAnswer:
        try:
            user = self._client.users_info(user=slack_id)["user"]
        except SlackApiError as exc:
            return _failed(exc, True, slack_id)
        except (SlackClientError, OSError):
            return SlackAnswer(by_id=True, slack_id=slack_id, error="no_answer", status=0)
        return SlackAnswer(by_id=True, slack_id=slack_id, deleted=bool(user.get("deleted")))

    def _lookup(self, person: Person, emails: Sequence[str]) -> SlackAnswer:
        """``users.lookupByEmail`` on each of the person's Slack emails (never an address
        ``KFBOT_USER_ID_MAP`` maps to: another account may hold it). The first active account is
        recorded for the next run; nobody found is "never known"."""
        gone: SlackAnswer | None = None
        for email in emails:
            try:
                user = self._client.users_lookupByEmail(email=email)["user"]
            except SlackApiError as exc:
                failed = _failed(exc, False, None)
                if judge(failed) is Presence.NEVER_KNOWN:
                    continue
                return failed
            except (SlackClientError, OSError):
                return SlackAnswer(by_id=False, error="no_answer", status=0)
            slack_id = str(user.get("id") or "")
            answer = SlackAnswer(by_id=False, slack_id=slack_id or None, deleted=bool(user.get("deleted")))
            if judge(answer) is Presence.ACTIVE:
                if slack_id:
                    self._backend.record_slack_id(person.user, slack_id)
                return answer
            gone = gone or answer
        return gone or SlackAnswer(by_id=False, error="users_not_found")

    def check(self, person: Person) -> tuple[Offboarded, SlackAnswer]:
        answer = self.ask(person)
        return offboard(self._core, person, answer), answer

    def run_once(self, people: Sequence[Person] | None = None) -> RunOutcome:
        """The scheduled check (leader only): ask Slack about everyone, then file for those who left,
        unless implausibly many did (``handlers.offboard.implausible``): then nothing is filed and
        the admins are told."""
        if not self._backend.try_lead():
            return RunOutcome(led=False)
        asked: list[tuple[Person, SlackAnswer]] = []
        for person in self._backend.people() if people is None else people:
            answer = self.ask(person)
            if answer.retry_after is not None:
                if answer.retry_after > MAX_WAIT:
                    return RunOutcome(True, (), f"Slack asked to wait {answer.retry_after:.0f}s")
                self._clock.sleep(answer.retry_after)
                answer = self.ask(person)
            asked.append((person, answer))
        left = sum(1 for _, answer in asked if judge(answer) is Presence.LEFT)
        if implausible(len(asked), left):
            stopped = f"Slack said {left} of the {len(asked)} people asked about left"
            self._tell_admins(
                f"Offboarding stopped: {stopped}, more than one check acts on, so nothing was filed. "
                "Check that the bot's token is this Slack workspace's; to offboard someone anyway, "
                "run `/kf offboard EMAIL`. The next check asks again."
            )
            return RunOutcome(True, (), stopped)
        if left and (blind := self._blind(asked)):
            self._tell_admins(
                f"Offboarding stopped: {blind}, so nothing was filed. A token for another Slack "
                "workspace answers so: check that the bot's token is this Slack workspace's. To "
                "offboard someone anyway, run `/kf offboard EMAIL`. The next check asks again."
            )
            return RunOutcome(True, (), blind)
        gone = frozenset(person.user for person, answer in asked if judge(answer) is Presence.LEFT)
        results: list[Offboarded] = []
        for person, answer in asked:
            result = offboard(self._core, person, answer, gone - {person.user})
            results.append(result)
            if result.presence is Presence.LEFT:
                logger.info("offboarding %s: %s", person.user, describe(result))
                self._tell_unplaced(result)
        return RunOutcome(True, tuple(results))

    def _blind(self, asked: Sequence[tuple[Person, SlackAnswer]]) -> str | None:
        """Why Slack's answers show the token cannot see this Slack workspace, if they do: every
        recorded id came back ``user_not_found``, or nobody at all is active -- not one person
        asked, nor any admin in ``KFBOT_ADMIN_USERS`` (Slack ids of this workspace's people)."""
        by_id = [answer for person, answer in asked if person.slack_ids]
        if by_id and all(answer.error == "user_not_found" for answer in by_id):
            return f"Slack knows none of the {len(by_id)} recorded Slack ids"
        if any(judge(answer) is Presence.ACTIVE for _, answer in asked):
            return None
        admins = sorted(self._core.settings.policy.admin_users)
        if any(judge(self._info(admin)) is Presence.ACTIVE for admin in admins):
            return None
        return f"Slack found nobody active among the {len(asked)} people asked" + (
            f" nor the {len(admins)} admins" if admins else ""
        )

    def _tell_unplaced(self, result: Offboarded) -> None:
        """A left owner's workspace nobody was proposed for waits on an admin: they are told on the
        first check that finds it and again every ``TELL_AGAIN`` while it stays so."""
        now = self._clock.now()
        due = [
            w for w in result.unplaced
            if (told := self._told.get((result.user, w))) is None or now - told >= TELL_AGAIN
        ]
        if due and self._tell_admins(describe(result)):
            self._told.update({(result.user, w): now for w in due})

    def _tell_admins(self, text: str) -> bool:
        if not self._admin_channel:
            logger.warning("offboarding: %s", text)
            return False
        try:
            self._client.chat_postMessage(channel=self._admin_channel, text=text)
        except (SlackClientError, OSError) as exc:
            logger.warning("offboarding could not tell the admins: %s", type(exc).__name__)
            return False
        return True

    def check_now(self, actor: Actor, email: str) -> str:
        """``/kf offboard EMAIL`` (admins): check one person now and say what was filed."""
        if not actor.is_admin:
            raise errors.Forbidden("Only admins can offboard someone.")
        user = naming.normalize_email(email)
        mapped = kubeflow_user_id(self._core.settings, user)
        people = [p for p in self._backend.people() if p.user in (user, mapped)]
        if not people:
            return f"{naming.show_value(user)} holds nothing the bot granted; nothing was filed."
        lines = []
        for person in people:
            answer = self.ask(person)
            gone = self._left_contributors(person) if judge(answer) is Presence.LEFT else frozenset()
            result = offboard(self._core, person, answer, gone)
            if answer.retry_after is not None:
                lines.append(
                    f"Slack asked to wait {answer.retry_after:.0f}s before asking about "
                    f"{naming.show_value(person.user)}; nothing was filed. Try again then."
                )
                continue
            lines.append(describe(result))
        return "\n".join(lines)

    def _left_contributors(self, person: Person) -> frozenset[str]:
        """The edit contributors of ``person``'s workspaces whom Slack finds left too: one person's
        check must not offer a workspace to someone the daily run would find gone."""
        if not person.owns:
            return frozenset()
        editors = {
            user
            for name in person.owns
            if (ws := self._core.facts.workspace(name)) is not None
            for user, role in ws.contributors.items()
            if role == "edit" and user != person.user
        }
        return frozenset(
            other.user
            for other in self._backend.people()
            if other.user in editors and judge(self.ask(other)) is Presence.LEFT
        )


def run_job(offboarder: Offboarder) -> None:
    """The scheduler's job: a failure is logged, and the next run asks again."""
    with log.bound(log.new_correlation_id()):
        try:
            outcome = offboarder.run_once()
        except errors.KfError as exc:
            logger.warning("offboarding check skipped: %s", exc.user_message)
            return
        if outcome.stopped:
            logger.warning("offboarding check stopped early: %s", outcome.stopped)
