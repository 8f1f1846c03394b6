"""``token``: a ServiceAccount in a workspace whose token (Kubernetes or Kubeflow Pipelines
audience) its requester sees once, by clicking; it expires after ``--ttl``. A token no stronger
than the requester's own role applies at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from handlers import errors, naming, units
from handlers.actions import ActionName
from handlers.kinds.base import (
    TOKEN_EXPIRE,
    Applied,
    Flag,
    Parsed,
    PlanContext,
    PolicyRow,
    PutToken,
    RequestKind,
    Success,
    Syntax,
    SystemRequest,
    TimerKind,
    TimerResult,
    TimerSpec,
    kubeflow_user,
    require_workspace,
    short_name,
    text,
    token_account_name,
)
from handlers.kinds.token_revoke import TokenRevoke
from handlers.model import Actor
from handlers.plan import JSON, Plan, Step, as_texts
from handlers.ports import Facts
from handlers.settings import MIN_TOKEN_TTL, CoreSettings

AUDIENCES = ("kubernetes", "pipelines")
PIPELINES_AUDIENCE = "pipelines.kubeflow.org"


def _auto(kind: RequestKind, actor: Actor, facts: Facts, settings: CoreSettings) -> str | None:
    assert isinstance(kind, TokenIssue)
    ws = facts.workspace(kind.workspace)
    if ws is None:
        return None
    user = kubeflow_user(actor, settings)
    own_role = "edit" if ws.owner == user else ws.contributors.get(user)
    if own_role == "edit" or (own_role == "view" and kind.role == "view"):
        article = "an" if kind.role == "edit" else "a"
        return f"{article} {kind.role} token within the requester's own {own_role} role"
    return None


def _expire(ref: str, payload: Mapping[str, JSON], facts: Facts) -> TimerResult:
    """A token ran out: the bot revokes its account (unless it is gone already)."""
    if facts.token_owner(ref) is None:
        return None
    return SystemRequest(TokenRevoke(ref), f"timer:{TOKEN_EXPIRE}:{ref}")


def _build(p: Parsed) -> TokenIssue:
    options = dict(p.options)
    typed = options.pop("ttl", None)
    limits = p.settings.tokens
    # Read against the token limits here, so the message echoes what was typed (`48h`, not `2d`)
    # and names the token range rather than the generic one.
    ttl = (
        limits.default_ttl
        if typed is None
        else units.parse_duration(str(typed), minimum=MIN_TOKEN_TTL, maximum=limits.max_ttl, what="--ttl")
    )
    return TokenIssue(p.positional[0], ttl=ttl, **options)


@dataclass(frozen=True)
class TokenIssue:
    KIND: ClassVar[str] = "token"
    USAGE: ClassVar[str] = "/kf token WORKSPACE [--ttl 1h] [--audience kubernetes|pipelines] [--read-only]"
    SYNTAX: ClassVar[Syntax] = Syntax(
        "token",
        ("WORKSPACE",),
        {
            "--ttl": Flag("ttl", text),
            "--audience": Flag("audience", text),
            "--read-only": Flag("read_only", None),
        },
        _build,
    )
    POLICY: ClassVar[PolicyRow] = PolicyRow(auto_apply=_auto)
    TIMERS: ClassVar[tuple[TimerKind, ...]] = (TimerKind(TOKEN_EXPIRE, "the token expired", _expire),)

    workspace: str
    ttl: timedelta
    audience: str = "kubernetes"
    read_only: bool = False

    def __post_init__(self) -> None:
        naming.validate_workspace_name(self.workspace)
        if self.audience not in AUDIENCES:
            raise errors.InvalidInput(
                f"--audience must be `kubernetes` or `pipelines`, not {naming.show_value(self.audience)}.",
                field="audience",
            )

    @property
    def role(self) -> str:
        return "view" if self.read_only else "edit"

    def audiences(self, settings: CoreSettings) -> list[str]:
        """What the TokenRequest asks for. ``kubernetes`` asks for none: the API server then uses
        its own default audience, as ``kubectl create token`` does (kubeflow-reference §5), so a
        wrong ``KFBOT_TOKEN_API_AUDIENCE`` cannot make a token kubectl refuses. ``pipelines`` needs
        both audiences named, the API server's from that setting."""
        if self.audience == "pipelines":
            return [PIPELINES_AUDIENCE, settings.tokens.api_audience]
        return []

    def subject(self) -> str | None:
        return None  # each token is its own account; parallel requests are fine

    def describe(self) -> str:
        return (
            f"{self.role} token for `{self.workspace}` ({self.audience}, {units.format_duration(self.ttl)})"
        )

    def title(self, requester: str) -> str:
        """The card's header: the request in words, plain text (``RequestKind.title``)."""
        return (
            f"{self.role.capitalize()} token for {self.workspace} ({units.format_duration(self.ttl)}) "
            f"for {short_name(requester)}"
        )

    def beneficiaries(self, facts: Facts) -> tuple[str, ...]:
        return ()  # the token is the requester's own

    def plan(self, ctx: PlanContext) -> Plan:
        limits = ctx.settings.tokens
        units.check_range(self.ttl, minimum=MIN_TOKEN_TTL, maximum=limits.max_ttl, what="--ttl")
        ws = require_workspace(ctx, self.workspace)
        name = token_account_name(ctx.request_id)
        return Plan.of(
            [
                Step(
                    ActionName.TOKEN_ACCOUNT,
                    f"TokenAccount/{ws.namespace}/{name}",
                    {
                        "namespace": ws.namespace,
                        "name": name,
                        "role": self.role,
                        "token_id": ctx.request_id,
                        "audiences": self.audiences(ctx.settings),
                        "ttl_seconds": int(self.ttl.total_seconds()),
                    },
                    f"ServiceAccount `{name}` bound to kubeflow-{self.role} in `{ws.namespace}`; "
                    "the token is made when you click Show token",
                )
            ]
        )

    def on_success(self, done: Applied) -> Success:
        params = done.plan.steps[0].params
        token = PutToken(
            done.request_id,
            done.requester_id,
            self.workspace,
            str(params["namespace"]),
            str(params["name"]),
            self.role,
            as_texts(params["audiences"]),
            done.at + self.ttl,
        )
        expiry = TimerSpec(TOKEN_EXPIRE, done.request_id, done.at + self.ttl, {"request_id": done.request_id})
        return Success(changes=(token,), timers=(expiry,))
