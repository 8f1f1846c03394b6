"""Offboarding at the Slack edge: ask Slack whether each person the bot gave access to left, and hand
the answers to ``handlers.offboard`` (which files what that takes).

A person with recorded Slack ids is asked about by id (``users.info``: ``deleted: true`` or
``user_not_found`` for an id once known means left); one without is looked up by email
(``users.lookupByEmail``; Slack does not find deactivated users by email, so nobody found means
"never known", never "left"), and the id found is recorded for the next run. A 429 answers
"unknown" with its ``Retry-After``: the daily run waits that long before it asks anyone else
(at most ``MAX_WAIT``, else it stops and the next run goes on), ``/kf offboard`` says when to try
again. Errors and timeouts are "unknown" too: nothing is filed on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot import logging as log
from handlers import errors, naming
from handlers.model import Actor
from handlers.offboard import Offboarded, Person, Presence, SlackAnswer, describe, judge, offboard
from handlers.ports import Clock
from handlers.services import Core
from handlers.settings import kubeflow_user_id

logger = logging.getLogger(__name__)
MAX_WAIT = 300.0
"""The longest ``Retry-After`` a run waits out before it stops (seconds)."""


class OffboardBackend(Protocol):
    """What offboarding uses of ``provisioning.Backend``."""

    def try_lead(self) -> bool: ...

    def people(self) -> list[Person]: ...

    def record_slack_id(self, user: str, slack_id: str) -> None: ...


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
    def __init__(self, client: WebClient, backend: OffboardBackend, core: Core, clock: Clock) -> None:
        self._client, self._backend, self._core, self._clock = client, backend, core, clock

    def ask(self, person: Person) -> SlackAnswer:
        """What Slack says about ``person`` (the first answer that is not "active" wins, so one of
        several recorded ids being gone or unanswered is never hidden by another)."""
        if not person.slack_ids:
            return self._lookup(person)
        answer = SlackAnswer(by_id=True)
        for slack_id in person.slack_ids:
            answer = self._info(slack_id)
            if judge(answer) is not Presence.ACTIVE:
                return answer
        return answer

    def _info(self, slack_id: str) -> SlackAnswer:
        try:
            user = self._client.users_info(user=slack_id)["user"]
        except SlackApiError as exc:
            return _failed(exc, True, slack_id)
        except (SlackClientError, OSError):
            return SlackAnswer(by_id=True, slack_id=slack_id, error="no_answer", status=0)
        return SlackAnswer(by_id=True, slack_id=slack_id, deleted=bool(user.get("deleted")))

    def _lookup(self, person: Person) -> SlackAnswer:
        if "@" not in person.user:
            # A Kubeflow id mapped from an email (KFBOT_USER_ID_MAP) is no Slack email: never known.
            return SlackAnswer(by_id=False, error="users_not_found")
        try:
            user = self._client.users_lookupByEmail(email=person.user)["user"]
        except SlackApiError as exc:
            return _failed(exc, False, None)
        except (SlackClientError, OSError):
            return SlackAnswer(by_id=False, error="no_answer", status=0)
        slack_id = str(user.get("id") or "")
        if slack_id and not user.get("deleted"):
            self._backend.record_slack_id(person.user, slack_id)
        return SlackAnswer(by_id=False, slack_id=slack_id or None, deleted=bool(user.get("deleted")))

    def check(self, person: Person) -> tuple[Offboarded, SlackAnswer]:
        answer = self.ask(person)
        return offboard(self._core, person, answer), answer

    def run_once(self, people: Sequence[Person] | None = None) -> RunOutcome:
        """The scheduled check (leader only): everyone, one after the other."""
        if not self._backend.try_lead():
            return RunOutcome(led=False)
        results: list[Offboarded] = []
        for person in self._backend.people() if people is None else people:
            result, answer = self.check(person)
            if answer.retry_after is not None:
                if answer.retry_after > MAX_WAIT:
                    return RunOutcome(True, tuple(results), f"Slack asked to wait {answer.retry_after:.0f}s")
                self._clock.sleep(answer.retry_after)
                result, answer = self.check(person)
            results.append(result)
            if result.presence is Presence.LEFT:
                logger.info("offboarding %s: %s", person.user, describe(result))
        return RunOutcome(True, tuple(results))

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
            result, answer = self.check(person)
            if answer.retry_after is not None:
                lines.append(
                    f"Slack asked to wait {answer.retry_after:.0f}s before asking about "
                    f"{naming.show_value(person.user)}; nothing was filed. Try again then."
                )
                continue
            lines.append(describe(result))
        return "\n".join(lines)


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
