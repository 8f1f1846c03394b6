"""``password.reset``: an admin lets a person set a new password on the Kubeflow login kf-chatops
made or adopted for them (``/kf password reset EMAIL``).

Nothing changes in Dex when it applies: the person gets a DM with the same "Set my password"
button an owner gets, and the password is made only when *they* press it, shown once in their
modal (``services.reveal_password``, which resets only the presser's own login). So no admin ever
sees it, and a forwarded DM resets nothing but the presser's own login. A login the bot neither made
nor adopted (a ``staticPasswords`` entry written by hand, an upstream identity provider) is refused
with the reason, before anything is recorded. ``/kf password reset`` without an address, or with
one's own, is the self-service flow (``handlers.parse.PasswordReset``), not this kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from handlers import errors, naming
from handlers.kinds.base import (
    Applied,
    Parsed,
    PlanContext,
    PolicyRow,
    RequestKind,
    Success,
    Syntax,
    TimerKind,
    short_name,
)
from handlers.kinds.gpu_common import is_for
from handlers.model import Actor
from handlers.plan import Plan
from handlers.ports import Facts
from handlers.settings import CoreSettings, kubeflow_user_id


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    if not actor.is_admin:
        raise errors.Forbidden(
            "Only admins can reset another person's password; `/kf password reset` sets your own."
        )


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    # The admin the login belongs to (an alias of theirs, say) waits for another admin like anyone
    # a request is for; everyone else was refused by ``_may_request``.
    if actor.is_admin and not is_for(actor, kind, facts, settings):
        # #12: an adopted login (made by hand, then adopted) is reset only with another admin's
        # approval; only the logins the bot made are reset at one admin's word.
        assert isinstance(kind, PasswordResetFor)
        if facts.login_origin(kubeflow_user_id(settings, kind.user)) == "adopted":
            return None
        return "an admin lets a person set a new password"
    return None


def _build(p: Parsed) -> PasswordResetFor:
    return PasswordResetFor(p.user(p.positional[0]))


@dataclass(frozen=True)
class PasswordResetFor:
    KIND: ClassVar[str] = "password.reset"
    USAGE: ClassVar[str] = "/kf password reset [EMAIL]"
    SYNTAX: ClassVar[Syntax] = Syntax("password reset", ("EMAIL",), {}, _build)
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto, may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    user: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "user", naming.normalize_email(self.user))

    def subject(self) -> str:
        return f"login:{self.user}"

    def describe(self) -> str:
        return f"let {self.user} set a new Kubeflow password"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Password reset for {short_name(self.user)}, by {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return (self.user,)

    def plan(self, ctx: PlanContext) -> Plan:
        mode = ctx.settings.workspace.dex_mode
        if mode == "external":
            raise errors.InvalidInput(
                "Kubeflow passwords come from the upstream identity provider here "
                "(`KFBOT_DEX_MODE=external`); kf-chatops cannot reset them."
            )
        user = kubeflow_user_id(ctx.settings, self.user)
        if ctx.facts.login_origin(user) is None:
            exists = ctx.facts.has_login(user)
            why = (
                "its Dex login was made by hand, not by kf-chatops (adopt it first, or change it "
                "where it was made)"
                if exists
                else "kf-chatops made no Dex login for them (a share or a new workspace makes one)"
            )
            raise errors.InvalidInput(f"Cannot reset the password of {user}: {why}.", field="user")
        warnings = [
            f"{user} gets a DM with a Set my password button; the new password is made when they "
            "press it and shown only to them. Until then their current password keeps working."
        ]
        if shared := ctx.facts.login_key_shared_with(user):
            key, others = shared
            warnings.append(
                f"The login of {user} shares Secret key `{key}` with {', '.join(others)}: when they "
                f"set their password, their entry moves to a Secret key of its own, so the new "
                f"password opens only their login and {', '.join(others)} keep theirs."
            )
        if ctx.facts.login_origin(user) == "adopted":
            warnings.append(
                f"The login of {user} was made by hand and adopted: its reset waits for another "
                "admin's approval."
            )
        return Plan.of([], warnings)

    def on_success(self, done: Applied) -> Success:
        return Success()
