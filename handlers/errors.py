"""Our own small error hierarchy.

Every error a user can see derives from ``KfError`` and carries a message written for that user
(never a raw API payload). Adapters translate third-party exceptions into these at their boundary
(``raise ... from exc``), so the edges need to know only this module. Anything that is not a
``KfError`` is a bug: the edge logs it with a correlation id and shows the user only the id.
"""

from __future__ import annotations


class KfError(Exception):
    """A failure we expected and can explain; ``user_message`` is neutral text for people, no
    markup (``handlers.naming``, "text for people"): each edge renders it in its medium."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class Misconfigured(KfError):
    """The deployment lacks what the command needs (no Kubernetes credentials, Slack unreachable at
    start); the message says what to set or check."""


class InvalidInput(KfError):
    """Bad names, emails, sizes or flags. Nothing was recorded or applied."""

    def __init__(self, user_message: str, *, usage: str | None = None, field: str | None = None) -> None:
        super().__init__(user_message)
        self.usage = usage
        self.field = field


class SubjectBusy(InvalidInput):
    """Another open request is about the same thing (a workspace name, a grant, a quota)."""

    def __init__(
        self, other_id: str, other_state: str, holder_id: str = "", *, user_message: str | None = None
    ) -> None:
        super().__init__(user_message or f"{other_id} about the same thing is still open ({other_state}).")
        self.other_id = other_id
        self.other_state = other_state
        self.holder_id = holder_id
        """The user id of the person whose request holds the subject."""


class NotFound(KfError):
    """The request, workspace or object named does not exist."""


class Forbidden(KfError):
    """The actor may not do this (not an admin, own request, not the owner)."""


class Inconsistent(KfError):
    """A stored row contradicts the audit log (edited in the database): nothing is done on it."""


class IllegalTransition(KfError):
    """A request was asked to move to a state its current state does not lead to."""


class StaleVersion(KfError):
    """Another writer changed the row first (optimistic concurrency); re-read and decide again."""


class AlreadyDone(KfError):
    """A duplicate delivery or second click: the first one already took effect."""


class ProvisioningError(KfError):
    """A step failed while applying a plan."""


class TemporaryError(ProvisioningError):
    """Worth retrying: throttling, 5xx, a webhook or controller not ready yet."""

    def __init__(self, user_message: str, *, delay: float = 2.0) -> None:
        super().__init__(user_message)
        self.delay = delay


class PermanentError(ProvisioningError):
    """Retrying cannot help: invalid, forbidden, a name collision, a quota limit."""
