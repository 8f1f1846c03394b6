"""``token.revoke``: delete a token's ServiceAccount, so every token made for it stops working.
Its requester revoking it applies at once; a token's expiry files one too."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from handlers import errors
from handlers.actions import ActionName
from handlers.kinds.base import (
    TOKEN_EXPIRE,
    Applied,
    CancelTimer,
    PlanContext,
    PolicyRow,
    RequestKind,
    RevokeToken,
    Success,
    Syntax,
    TimerKind,
    kubeflow_user,
    require_workspace,
    short_name,
    token_account_name,
)
from handlers.model import Actor
from handlers.plan import Plan, Step
from handlers.ports import Facts
from handlers.settings import CoreSettings


def _may_request(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> None:
    assert isinstance(kind, TokenRevoke)
    if actor.is_admin:
        return
    owner = facts.token_owner(kind.token_id)
    ws = facts.workspace(owner[1]) if owner else None
    if (
        owner is not None
        and actor.user_id != owner[0]
        and (ws is None or ws.owner != kubeflow_user(actor, settings))
    ):
        raise errors.Forbidden("Only the token's requester, the workspace owner or an admin can revoke it.")


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, TokenRevoke)
    owner = facts.token_owner(kind.token_id)
    return "the requester revokes their own token" if owner and owner[0] == actor.user_id else None


@dataclass(frozen=True)
class TokenRevoke:
    KIND: ClassVar[str] = "token.revoke"
    USAGE: ClassVar[str] = "/kf token revoke TOKEN_ID"
    SYNTAX: ClassVar[Syntax] = Syntax(
        "token revoke", ("TOKEN_ID",), {}, lambda p: TokenRevoke(p.positional[0])
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto, may_request=_may_request)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = ()

    token_id: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,32}", self.token_id):
            raise errors.InvalidInput("That is not a token id; `/kf tokens` lists yours.", usage=self.USAGE)

    def subject(self) -> str:
        return f"token:{self.token_id}"

    def describe(self) -> str:
        return f"revoke token {self.token_id}"

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return f"Revoke token {self.token_id}, for {short_name(requester)}"

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return ()  # taking a token away benefits nobody

    def plan(self, ctx: PlanContext) -> Plan:
        owner = ctx.facts.token_owner(self.token_id)
        if owner is None:
            raise errors.NotFound(f"Token {self.token_id} is not active.")
        ws = require_workspace(ctx, owner[1])
        name = token_account_name(self.token_id)
        return Plan.of(
            [
                Step(
                    ActionName.TOKEN_ACCOUNT_REMOVE,
                    f"TokenAccount/{ws.namespace}/{name}",
                    {"namespace": ws.namespace, "name": name},
                    f"delete ServiceAccount `{name}` (its tokens stop working)",
                )
            ]
        )

    def on_success(self, done: Applied) -> Success:
        return Success(
            changes=(RevokeToken(self.token_id),), cancel=(CancelTimer(TOKEN_EXPIRE, self.token_id),)
        )
