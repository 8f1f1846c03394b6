"""Slack user -> ``Actor``: who is acting, by their Kubeflow email, and whether they are an admin.

The email comes from ``users.info`` (the app needs ``users:read.email``), lowercased, because
Kubeflow compares user ids byte for byte. A user without an email cannot be mapped to a Kubeflow
identity, so they get a clear refusal rather than a guess. Admins are ``KFBOT_ADMIN_USERS`` plus
the members of ``KFBOT_ADMIN_GROUP`` (``usergroups.users.list``). Both lookups are cached briefly:
a click storm must not become a ``users.info`` storm (Slack rate-limits it at tier 4).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from handlers import errors, naming, policy
from handlers.model import Actor
from handlers.settings import CoreSettings, mapped_away, slack_emails

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _TtlCache(Generic[T]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._items: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] < self._clock():
                return None
            return hit[1]

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = (self._clock() + self._ttl, value)


class Identity:
    def __init__(self, client: WebClient, core: CoreSettings, *, cache_seconds: float = 60.0) -> None:
        self._client = client
        self._core = core
        self._users: _TtlCache[str] = _TtlCache(cache_seconds)
        self._groups: _TtlCache[list[str]] = _TtlCache(cache_seconds)

    def email(self, user_id: str) -> str:
        """The lowercased email of a Slack user; ``KfError`` when there is none."""
        cached = self._users.get(user_id)
        if cached is not None:
            return cached
        try:
            user = self._client.users_info(user=user_id)["user"]
        except SlackApiError as exc:
            error = exc.response.get("error", "") if exc.response is not None else ""
            if error in ("user_not_found", "users_not_found"):
                raise errors.NotFound(f"Slack does not know the user {naming.show_value(user_id)}.") from exc
            raise
        if user.get("deleted"):
            raise errors.Forbidden("That Slack account is deactivated.")
        if user.get("is_bot") or user.get("is_app_user"):
            raise errors.Forbidden("Bots and apps cannot make requests.")
        raw = (user.get("profile") or {}).get("email")
        if not raw:
            raise errors.InvalidInput(
                "Your Slack profile has no email address, and kf-chatops knows people in Kubeflow by "
                "email. Ask a Slack admin to add one (or, if it is there, to grant the app the "
                "`users:read.email` scope).",
                field="email",
            )
        try:
            email = naming.normalize_email(str(raw))
        except errors.InvalidInput as exc:
            raise errors.InvalidInput(
                f"The email address in this Slack profile cannot be used with Kubeflow. {exc.user_message}",
                field="email",
            ) from exc
        self._users.put(user_id, email)
        return email

    def email_of_other(self, user_id: str) -> str:
        """For mentions in commands (``/kf share ws <@U123>``)."""
        try:
            email = self.email(user_id)
        except errors.InvalidInput as exc:
            raise errors.InvalidInput(
                f"{naming.person(user_id)} has no usable email address in Slack; type their email instead.",
                field="user",
            ) from exc
        if mapped_away(self._core, email):
            # The account is not the person the map gives that Kubeflow id (see ``actor``).
            raise errors.InvalidInput(
                f"The Slack address of {naming.person(user_id)} is a Kubeflow id mapped from another "
                "address (`KFBOT_USER_ID_MAP`); type the address of the person you mean instead.",
                field="user",
            )
        return email

    def is_admin(self, user_id: str) -> bool:
        return policy.is_admin(user_id, self._core, self._group_members())

    def admin_ids(self) -> list[str]:
        """The admins' Slack user ids: ``KFBOT_ADMIN_USERS`` and the admin group's members."""
        return sorted({*self._core.policy.admin_users, *self._group_members()})

    def _group_members(self) -> list[str]:
        group = self._core.policy.admin_group
        if not group:
            return []
        cached = self._groups.get(group)
        if cached is not None:
            return list(cached)
        try:
            members = list(self._client.usergroups_users_list(usergroup=group)["users"])
        except SlackApiError:
            logger.warning("could not read admin user group %s; treating it as empty", group, exc_info=True)
            return []
        self._groups.put(group, members)
        return members

    def actor(self, user_id: str) -> Actor:
        """Every Slack actor is made here (commands, buttons, modals, App Home), so the rule of
        who may act at all (``policy.check_slack_address``) holds for each of them."""
        email = self.email(user_id)
        policy.check_slack_address(self._core, email)
        return Actor(user_id=user_id, email=email, is_admin=self.is_admin(user_id))

    def user_id_for_email(self, email: str) -> str | None:
        """The Slack user with this email, for DMs to someone other than the requester. An address
        ``KFBOT_USER_ID_MAP`` maps to is a Kubeflow id: the DM goes to the Slack address mapped to
        it, never to an account that happens to hold that address."""
        for address in slack_emails(self._core, email) if mapped_away(self._core, email) else (email,):
            try:
                user = self._client.users_lookupByEmail(email=address)["user"]
            except SlackApiError:
                continue
            return str(user["id"])
        return None
