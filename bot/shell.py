"""``kfbot shell``: the Slack bot without Slack, for a laptop and for demos.

Lines go through the same parser, use cases and provisioning backend as Slack, and print what
Slack would show (``bot.render``). Where Slack shows a button the shell prints the command that
presses it (``[Approve: approve R7KQ2M]``). After every line the backend applies whatever can be
applied now (``run_until_idle``), so results show at once. Shell users are ``shell:<email>``;
only ``--admin`` (or ``as EMAIL --admin``) makes one an admin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import provisioning
from bot import logging as log
from bot import render
from bot.controls import control
from handlers import errors, naming, parse, policy, services
from handlers.model import Actor, Request, RequestState
from handlers.ports import Notifier, RevealedSecret
from handlers.settings import CoreSettings

logger = logging.getLogger(__name__)
S = render.SHELL

SHELL_HELP = """Shell commands:
  /kf …                  any Slack command (try `/kf help`)
  approve [ID]           approve a request (admins; no ID: the only one waiting)
  reject ID REASON…      reject a request with a reason (admins)
  show ID                the full plan of a request (the card's View plan button)
  reveal ID              show a token once (the DM's Show token button)
  password               set a new password for your own Kubeflow login (Set my password)
  as EMAIL [--admin]     act as someone else
  whoami · help · quit"""


def shell_actor(email: str, *, admin: bool, settings: CoreSettings) -> Actor:
    """The shell's actor (``--as``, ``as``), under the same rule as Slack's
    (``policy.check_slack_address``)."""
    address = naming.normalize_email(email)
    policy.check_slack_address(settings, address)
    return Actor(user_id=f"shell:{address}", email=address, is_admin=admin)


def _no_mentions(user_id: str) -> str:
    raise errors.InvalidInput("Slack mentions do not work in the shell; type the email address.")


@dataclass
class Shell:
    core: services.Core
    backend: provisioning.Backend
    notifier: Notifier
    out: TextIO
    actor: Actor
    failures: int = 0

    def say(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    @property
    def prompt(self) -> str:
        return f"kfbot({self.actor.email}{', admin' if self.actor.is_admin else ''})> "

    def run(self, lines: Iterable[str], *, echo: bool) -> int:
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if echo:  # a piped script's control characters must not drive the terminal
                self.say(self.prompt + S.esc(line))
            if not self.execute(line):
                break
        return 0

    def execute(self, line: str) -> bool:
        """Run one line; False to quit. Errors are printed, never raised: the shell goes on."""
        cid = log.new_correlation_id()
        with log.bound(cid):
            try:
                keep_going = self._dispatch(line, cid)
            except errors.KfError as exc:
                self.failures += 1
                self.say("error: " + render.error_text(exc, S))
                keep_going = True
            except Exception:  # the shell's one global handler, like @app.error on Slack
                self.failures += 1
                logger.exception("shell command failed")
                self.say(render.internal_error_text(cid))
                keep_going = True
            if keep_going:
                self.backend.run_until_idle(self.notifier)
        return keep_going

    def _dispatch(self, line: str, cid: str) -> bool:
        word, _, rest = line.partition(" ")
        word = word.lower()
        core = self.core
        if word in ("quit", "exit", "q"):
            return False
        if word in ("help", "?"):
            self.say(SHELL_HELP)
        elif word in ("/kf", "kf"):
            self._kf(rest, cid)
        elif word == "whoami":
            self.say(f"{self.actor.email}{' (admin)' if self.actor.is_admin else ''}")
        elif word == "as":
            args = parse.tokenize(rest)  # the same reading, and the same clear refusals, as /kf
            admin = "--admin" in args
            emails = [a for a in args if a != "--admin"]
            if len(emails) != 1 or any(a.startswith("--") for a in emails):
                raise errors.InvalidInput("Use `as EMAIL [--admin]`.")
            self.actor = shell_actor(emails[0], admin=admin, settings=core.settings)
            self.say(f"You are now {self.actor.email}{' (admin)' if admin else ''}.")
        elif word in ("approve", "reject"):
            if not self.actor.is_admin:
                raise errors.InvalidInput(
                    f"Only admins {word} requests; `as EMAIL --admin` acts as one in this shell."
                )
            request_id, _, reason = rest.strip().partition(" ")
            request = (
                services.get_request(core, self.actor, parse.request_id(request_id))
                if request_id
                else self._only_pending(word)
            )
            key = f"shell:{word}:{self.actor.user_id}:{request.id}:{request.version}"
            services.decide(
                core,
                self.actor,
                request.id,
                approve=word == "approve",
                decision_key=key,
                reason=reason,
                seen_version=request.version,
            )
            self.say(f"You {'approved' if word == 'approve' else 'rejected'} `{request.id}`.")
        elif word == "show":
            request = services.get_request(core, self.actor, parse.request_id(rest))
            self.say(
                render.request_detail(request, S)
                + "\n\nFull plan:\n"
                + render.plan_full(request.plan, S, self.backend.render_step)
            )
        elif word == "reveal":
            secret = services.reveal_token(core, self.actor, parse.request_id(rest))
            self._show_secret(secret)
        elif word == "password":
            self._show_secret(services.reveal_password(core, self.actor))
        else:
            raise errors.InvalidInput(f"Unknown shell command `{naming.truncate(word, 20)}`. Type `help`.")
        return True

    def _only_pending(self, word: str) -> Request:
        """``approve`` without an id: the one pending request the actor may decide, if there is one."""
        pending = [
            r
            for r in services.list_requests(self.core, self.actor)
            if r.state is RequestState.PENDING and r.requester_id != self.actor.user_id
        ]
        if len(pending) != 1:
            raise errors.InvalidInput(
                f"Use `{word} ID{' REASON' if word == 'reject' else ''}`"
                f" ({len(pending)} requests are waiting for you)."
            )
        return pending[0]

    def _show_secret(self, secret: RevealedSecret) -> None:
        log.forget_later(secret.value)
        self.say(f"Your new {secret.kind} (shown once; kf-chatops does not keep it):\n{secret.value}")
        if secret.expires_at is not None:
            self.say(f"Expires {S.when(secret.expires_at)}")
        for label, text in secret.extra.items():
            self.say(f"{label}:\n{text}")
        self.say(f"Fingerprint {secret.fingerprint}")

    def _kf(self, text: str, cid: str) -> None:
        parsed = parse.parse_command(
            text, requester_email=self.actor.email, resolve_user=_no_mentions, settings=self.core.settings
        )
        if isinstance(parsed, parse.WorkspaceForm):
            self.say(
                "The form opens only in Slack; here type `/kf workspace new NAME [options]`.\n"
                f"Usage: `{parse.USAGE['workspace new']}`"
            )
            return
        if isinstance(parsed, parse.PasswordReset):
            self.say(
                "A new password for your own Kubeflow login is made when you press the button.\n"
                "[Set my password: password]"
            )
            return
        if isinstance(parsed, parse.Control):
            self.say(control(self.core, self.backend, self.actor, parsed, S))
            return
        result = services.submit(self.core, self.actor, parsed, idempotency_key=None, correlation_id=cid)
        self.say(
            render.submitted_text(
                result.request, duplicate=result.duplicate, auto_reason=result.auto_reason, style=S
            )
        )
