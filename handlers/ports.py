"""Ports: what the core needs from the outside world, as Protocols.

``provisioning`` implements storage, facts and secrets; ``bot`` implements the notifier. Tests
run the core against the real implementations over SQLite/PostgreSQL; only pure-logic tests use
small in-memory fakes of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from handlers.model import Event, Request, RequestState
from handlers.plan import JSON


class Clock(Protocol):
    """Time, injected so tests drive it (timeouts, polling, expiry)."""

    def now(self) -> datetime:
        """An aware UTC datetime."""
        ...

    def sleep(self, seconds: float) -> None: ...


class RequestRepository(Protocol):
    def add(self, request: Request, idempotency_key: str | None = None) -> Request:
        """Insert a new request. If ``idempotency_key`` was used before, insert nothing and return
        the request stored under it (a duplicate delivery). Raise ``errors.SubjectBusy`` when a
        concurrent insert took the request's subject since the caller checked it (the store
        enforces the submission rule of ``services._record`` with unique indexes)."""
        ...

    def find_by_key(self, idempotency_key: str) -> Request | None: ...

    def get(self, request_id: str) -> Request:
        """Raises ``errors.NotFound``."""
        ...

    def save(self, request: Request, expected_version: int) -> None:
        """Write the request if its stored version is still ``expected_version``; else raise
        ``errors.StaleVersion`` and write nothing."""
        ...

    def list(
        self,
        *,
        requester_id: str | None = None,
        states: Sequence[RequestState] | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int | None = 50,
    ) -> list[Request]:
        """Newest first; ``limit=None`` for all that match (filter by an indexed field then)."""
        ...

    def set_card(self, request_id: str, channel: str, ts: str) -> None:
        """Remember where the approval card was posted (not versioned: it is not a decision)."""
        ...

    def card(self, request_id: str) -> tuple[str, str] | None: ...

    def thread_messages(self, request_id: str) -> dict[str, str]:
        """The ts of each message kept up to date in the card's thread (``Delivery.threads``)."""
        ...

    def set_thread_message(self, request_id: str, key: str, ts: str) -> None:
        """Remember (or replace) the ts of the thread message ``key`` (``step:<idx>``)."""
        ...


class DecisionKeys(Protocol):
    def claim(self, key: str, request_id: str) -> bool:
        """Record a decision key (message ts + action + user + version) under a unique
        constraint; False when it was already recorded (a second click or redelivery)."""
        ...


class AuditLog(Protocol):
    def append(self, events: Sequence[Event]) -> None:
        """Append in order, chained; secrets must already have been replaced by fingerprints."""
        ...

    def trail(self, request_id: str) -> list[Event]:
        """The request's events in order, only those whose MAC checks out (written with the key)."""
        ...


class Timers(Protocol):
    def schedule(self, kind: str, ref: str, due_at: datetime, payload: dict[str, JSON] | None = None) -> None:
        """Create or move the timer (kind, ref): one pending timer per pair."""
        ...

    def cancel(self, kind: str, ref: str) -> None: ...

    def pending_payload(self, kind: str, ref: str) -> dict[str, JSON] | None:
        """The payload of the pending timer (kind, ref), or None when there is none."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. Leaving the ``with`` block without ``commit()`` rolls back."""

    requests: RequestRepository
    decisions: DecisionKeys
    audit: AuditLog
    timers: Timers

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> AbstractContextManager[UnitOfWork]: ...


@dataclass(frozen=True)
class TokenFacts:
    """A token account the bot made in a workspace and has not removed."""

    holder: str
    """The requester's email: the person the token was made for."""
    role: str
    """``edit`` or ``view``."""


@dataclass(frozen=True)
class WorkspaceFacts:
    """What the planner and the policy need to know about an existing workspace."""

    name: str
    namespace: str
    owner: str
    """The owner's Kubeflow user id (lowercased email)."""
    contributors: dict[str, str] = field(default_factory=dict)
    """user id -> role (``edit``/``view``) for grants that exist now."""
    quota: dict[str, str] = field(default_factory=dict)
    """``spec.resourceQuotaSpec.hard`` of the Profile."""
    quota_baseline: dict[str, str] = field(default_factory=dict)
    """Per resource, the quota a person last approved (an admin's lasting change, else the value at
    creation): owners' self-service raises are judged against it, not against ``quota``, so
    repeated small raises cannot ratchet. A resource absent here is judged against ``quota``."""
    quota_used: dict[str, str] = field(default_factory=dict)
    """``status.used`` of the namespace's ``kf-resource-quota`` (empty when unknown)."""
    quota_enforced: dict[str, str] = field(default_factory=dict)
    """``status.hard`` of ``kf-resource-quota``: the limits in force now (empty when unknown)."""
    created: dict[str, Mapping[str, JSON]] = field(default_factory=dict)
    """Objects the bot created for this workspace, by step key, with their params (for delete)."""
    pvcs: int | None = None
    """PersistentVolumeClaims in the namespace now (None when unknown: no cluster to ask)."""
    recorded_grants: dict[str, str] = field(default_factory=dict)
    """user id -> role of the grants the bot recorded (``contributors`` is the cluster's view when
    there is one): a grant whose RoleBinding was deleted by hand still has its other half."""
    tokens: dict[str, TokenFacts] = field(default_factory=dict)
    """token id -> its holder and role, for every token account not removed yet: losing access
    takes the tokens that access made with it."""


@dataclass(frozen=True)
class DataHeld:
    """What a workspace holds now, for whoever decides its fate (a transfer's approver). None:
    unknown (no cluster or AWS to ask, or the read failed)."""

    pvcs: int | None = None
    pvc_bytes: int | None = None
    """Storage the PersistentVolumeClaims request, summed."""
    bucket: str | None = None
    bucket_bytes: int | None = None
    bucket_more: bool = False
    """The bucket has more objects than were counted: ``bucket_bytes`` is a lower bound."""


@dataclass(frozen=True)
class IdleFacts:
    """What the last scans recorded about an idle item (``gpu_signals``, ``gpu_holds``): what the
    auto-stop timer re-checks before it acts."""

    target: str
    """``nodegroup:<name>`` or ``notebook:<namespace>/<name>``."""
    workspace: str | None
    since: datetime
    last_seen: datetime
    """When a scan last saw every signal behind the item hold."""
    established: bool
    held: bool
    """A keep or snooze covers it now."""
    warned: bool
    """The report's last warning before an auto-stop was posted."""


@dataclass(frozen=True)
class FoundObject:
    """An object made by hand that adoption would record: ``action`` is the create action it
    stands for, ``key`` its registry key (``Bucket/NAME``), ``params`` shaped as that action's
    params, ``found_by`` how it was tied to the workspace (``name``, ``tag Namespace``, ...)."""

    action: str
    key: str
    name: str
    params: Mapping[str, JSON]
    found_by: str
    resources: tuple[str, ...] = ()
    """IAM policies: the bucket ARNs the policy lists (what the adoption check re-reads)."""


@dataclass(frozen=True)
class Discovery:
    """What exists by hand for one namespace (``Facts.discover``)."""

    namespace: str
    profile_exists: bool
    owner: str | None
    """The Profile's ``spec.owner.name`` (None: no Profile or no owner)."""
    managed_by: str | None
    """The registry's workspace that holds this namespace already, if any."""
    objects: tuple[FoundObject, ...] = ()
    notes: tuple[str, ...] = ()
    refused: str | None = None
    """Why the Profile is not adoptable (its namespace is not the one the profile controller made
    for it, or it is the platform's); None: it is."""


@dataclass(frozen=True)
class UnmanagedGroup:
    """``/kf workspace scan``: objects the bot does not manage that look like one workspace.
    ``namespace``: the Profile they belong to (None: no Profile found; not adoptable as is)."""

    label: str
    namespace: str | None
    objects: tuple[FoundObject, ...]


class Facts(Protocol):
    """Read-only view of the current world, for planning and policy."""

    def workspace(self, name: str) -> WorkspaceFacts | None: ...

    def user_in_use(self, user: str, except_workspace: str) -> str | None:
        """Why the Dex login of ``user`` is still needed, as a noun phrase (``the owner of `x```,
        ``a contributor (edit) of Profile `y```), or None: they own or hold a grant on no workspace other than
        ``except_workspace`` and, with a cluster to read, own or contribute to no Profile other than
        its namespace, the bot's or a hand-made one. Read at plan time and again at apply."""
        ...

    def owned_workspaces(self, user: str) -> tuple[str, ...]:
        """Names of the live workspaces the registry records ``user`` (a Kubeflow user id) as owning,
        sorted (``/kf gpu stop NOTEBOOK`` finds the requester's one workspace with it; whoever it
        names, the kind's rules then check ownership through ``workspace``)."""
        ...

    def bot_made_login(self, user: str) -> bool:
        """Whether a live workspace records the bot making the Dex login of ``user`` (its create
        request for the owner, a share for a collaborator)."""
        ...

    def login_origin(self, user: str) -> str | None:
        """``made`` or ``adopted`` when a live workspace records the Dex login of ``user`` as made
        or adopted by the bot (an entry of ``created`` whose action is ``dex.user``, with
        ``"adopted": true`` for an adopted one); None for any other login, or none."""
        ...

    def login_records(self, user: str) -> tuple[str, ...]:
        """Names of the live workspaces whose ``created`` map records the Dex login of ``user``
        (a ``dex.user`` entry, made or adopted), sorted (``login.remove`` forgets each)."""
        ...

    def has_login(self, user: str) -> bool | None:
        """Whether Dex has a login for ``user`` now, whoever made it (a Password object or a
        ``staticPasswords`` entry); None when there is no Dex to ask (dry run, ``external``)."""
        ...

    def login_key_shared_with(self, user: str) -> tuple[str, tuple[str, ...]] | None:
        """(Secret key, other logins) when the ``staticPasswords`` entry of ``user`` names a
        ``hashFromEnv`` key other entries name too (a runbook that gave several logins one key);
        None otherwise, or with no Dex to ask."""
        ...

    def token_owner(self, token_id: str) -> tuple[str, str] | None:
        """(requester user id, workspace) of an issued token, if it is still active."""
        ...

    def idle_item(self, target: str) -> IdleFacts | None:
        """What the scans last recorded about ``target`` being idle; None when no signal holds."""
        ...

    def data_held(self, workspace: str) -> DataHeld:
        """The volumes and bucket data of a live workspace, read now (for a transfer's card)."""
        ...

    def discover(self, namespace: str) -> Discovery | None:
        """What was made by hand for ``namespace`` (Profile, owner, Dex login, bucket, IAM
        policies, nodegroups), minus what the registry holds; None without a cluster to read."""
        ...

    def adopted_changes(self, namespace: str) -> Mapping[str, str] | None:
        """What a delete with ``--delete-adopted`` keeps of workspace ``namespace``'s adopted
        objects because of a change since adoption, read now: registry key -> a "kept: <why>"
        line (a bucket or nodegroup tagged for another namespace is not removed; a policy's
        statement the adoption did not record keeps the bucket). None without a cluster to read."""
        ...

    def orphan(self, target: str) -> bool | None:
        """Whether the drift report's orphan list holds ``target`` (``bucket:NAME``,
        ``nodegroup:NAME``, ``iam:BUCKET``, ``dex:EMAIL``) now, read afresh: never an object any
        live workspace records (made or adopted). None without a cluster to read (dry run)."""
        ...


@dataclass(frozen=True)
class Delivery:
    """What one ``publish`` did, for the request row and the audit log."""

    card: tuple[str, str] | None = None
    """(channel, ts) of the approval card when this publish posted one."""
    sent: tuple[str, ...] = ()
    """Where people were told, e.g. ``chat.postMessage:C123``; recorded as ``notification.sent``."""
    threads: Mapping[str, str] = field(default_factory=dict)
    """Thread messages this publish posted, key (``step:<idx>``) -> ts: later notices about the
    same step edit that message instead of posting another (``RequestRepository.set_thread_message``)."""


class Notifier(Protocol):
    """Tells people what happened; Slack in production, stdout in the shell."""

    def publish(
        self,
        request: Request,
        events: Sequence[Event],
        card: tuple[str, str] | None,
        threads: Mapping[str, str] | None = None,
    ) -> Delivery:
        """Deliver the events of one committed change. Must not raise for delivery failures:
        the change is committed already. ``threads``: the thread messages posted before
        (``Delivery.threads`` of earlier publishes), which a step's later notices edit."""
        ...


@dataclass(frozen=True)
class RevealedSecret:
    """A secret made at the moment its owner asked to see it. ``value`` goes to that person's
    modal only; ``fingerprint`` (a short hash) is what the audit log keeps."""

    kind: str
    """``password`` or ``token``."""
    value: str
    fingerprint: str
    expires_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)
    """Ready-to-use text built around the secret (a kubeconfig, a ``kfp.Client`` snippet)."""


class SecretIssuer(Protocol):
    def password(self, email: str) -> RevealedSecret:
        """Generate a password for the Dex user ``email``, store only its hash, return it."""
        ...

    def token(self, request: Request) -> RevealedSecret:
        """Make a TokenRequest for the account the token request created."""
        ...
