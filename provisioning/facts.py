"""Facts for planning and policy: the bot's registry (what it created, grants, tokens) joined with
the live cluster where a live backend is active.

The registry says what the bot did; the cluster says what is true now. Planning reads ownership
and created objects from the registry (the bot must only ever remove what it made) and
contributors and quota from the cluster when it can see it, so a grant added by hand in the
dashboard is not silently overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Protocol

from handlers import errors, kinds, policy
from handlers.actions import ActionName
from handlers.kinds.quota import lasting_values
from handlers.model import SYSTEM, Request, RequestState
from handlers.plan import as_object, as_text_map
from handlers.ports import Clock, DataHeld, Discovery, IdleFacts, TokenFacts, WorkspaceFacts
from provisioning.records import GrantRecord, TokenRecord, WorkspaceRecord, WorkspaceState
from provisioning.store import Database, SqlUnitOfWork


def _inconsistent(what: str) -> errors.Inconsistent:
    return errors.Inconsistent(
        f"The bot's record of {what} does not match its audit log, so it does nothing with it; "
        "the admins should run `kfbot audit verify` and check the database."
    )


class LiveWorkspaces(Protocol):
    def workspace_state(self, namespace: str) -> WorkspaceState: ...

    def profile_users(self) -> dict[str, dict[str, str]]: ...


class LiveData(Protocol):
    def data_held(self, namespace: str, bucket: str | None) -> DataHeld:
        """The namespace's volumes and the bucket's bytes, read now."""
        ...


class DexLogins(Protocol):
    def user_exists(self, email: str) -> bool: ...

    def key_shared_with(self, email: str) -> tuple[str, tuple[str, ...]] | None: ...


class Discover(Protocol):
    def discover(self, namespace: str) -> Discovery: ...

    def adopted_changes(self, namespace: str) -> dict[str, str]: ...


class RegistryFacts:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        live: LiveWorkspaces | None = None,
        discoverer: Discover | None = None,
        data: LiveData | None = None,
        logins: DexLogins | None = None,
    ) -> None:
        self.db, self.clock, self.live, self.data, self.logins = db, clock, live, data, logins
        self.discoverer = discoverer
        self.orphans: Callable[[], AbstractSet[str]] | None = None
        """The drift report's orphan targets, read now (``Backend.orphan_targets``, set by the
        live composition, which builds the backend after its facts); None: no cluster."""

    def discover(self, namespace: str) -> Discovery | None:
        return None if self.discoverer is None else self.discoverer.discover(namespace)

    def adopted_changes(self, namespace: str) -> Mapping[str, str] | None:
        return None if self.discoverer is None else self.discoverer.adopted_changes(namespace)

    def orphan(self, target: str) -> bool | None:
        return None if self.orphans is None else target in self.orphans()

    def workspace(self, name: str) -> WorkspaceFacts | None:
        with self.db.uow() as uow:
            row = uow.registry.get_workspace(name)
            if row is None or row.deleted_at is not None:
                return None
            self._check_owner(uow, row)
            rows = uow.registry.grants(name)
            self._check_grants(uow, name, rows)
            grants = {g.user: g.role for g in rows if not self._expired(g.expires_at)}
            recorded = {g.user: g.role for g in rows}
            quota = self._last_quota(uow, name, row)
            baseline = self._quota_baseline(uow, name, row)
            active = uow.registry.tokens_in(name)
            self._check_tokens(uow, name, active)
            tokens = {t.token_id: TokenFacts(holder=str(t.holder), role=t.role) for t in active}
        used: dict[str, str] = {}
        enforced: dict[str, str] = {}
        pvcs: int | None = None
        if self.live is not None:
            state = self.live.workspace_state(row.namespace)
            pvcs = state.pvcs
            grants = dict(state.contributors)
            if state.profile_hard is not None:
                quota = dict(state.profile_hard)
            used, enforced = dict(state.quota.used), dict(state.quota.hard)
        return WorkspaceFacts(
            name=name,
            namespace=row.namespace,
            owner=row.owner,
            contributors=grants,
            quota=quota,
            quota_baseline=baseline,
            quota_used=used,
            quota_enforced=enforced,
            created=dict(row.created),
            pvcs=pvcs,
            recorded_grants=recorded,
            tokens=tokens,
        )

    @staticmethod
    def _check_owner(uow: SqlUnitOfWork, row: WorkspaceRecord) -> None:
        """The owner decides who gets in without an admin, so the registry's row must be the one
        the workspace's create request recorded in the audit log (rows written with the key): the
        request that made it, for this name, succeeded, and named this owner. A row edited in the
        database gets no owner rights."""
        trail = uow.audit.trail(row.request_id) if row.request_id else []
        allowed = policy.owners_recorded(trail, row.name)
        # A transfer since the create names the owner instead (the newest one that succeeded).
        transfers = uow.requests.list(kind=kinds.WorkspaceTransfer.KIND, subject=f"workspace:{row.name}",
                                      states=[RequestState.SUCCEEDED], limit=1)
        if transfers and transfers[0].created_at >= row.created_at:
            allowed = {policy.owner_transferred(uow.audit.trail(transfers[0].id), row.name) or ""}
        if row.owner not in allowed:
            raise _inconsistent(f"workspace `{row.name}`")

    @staticmethod
    def _check_grants(uow: SqlUnitOfWork, name: str, grants: Sequence[GrantRecord]) -> None:
        """A grant decides who gets tokens and shares without an admin, so each must be the one a
        succeeded share recorded in the audit log (a row added in the database is refused)."""
        for grant in grants:
            trail = uow.audit.trail(grant.request_id) if grant.request_id else []
            if not policy.grant_recorded(trail, name, grant.user, grant.role):
                raise _inconsistent(f"{grant.user}'s grant in `{name}`")

    @staticmethod
    def _check_tokens(uow: SqlUnitOfWork, name: str, tokens: list[TokenRecord]) -> None:
        """Who holds a token decides which tokens an unshare removes: each must be the one its
        request recorded in the audit log."""
        for token in tokens:
            request = uow.requests.get(token.token_id)
            if policy.record_problem(request, uow.audit.trail(request.id)) is not None:
                raise _inconsistent(f"token {token.token_id} of `{name}`")

    @staticmethod
    def _quota_changes(uow: SqlUnitOfWork, name: str, limit: int | None) -> list[Request]:
        """The applied quota changes of workspace ``name``, newest first (an indexed lookup)."""
        return uow.requests.list(kind=kinds.QuotaChange.KIND, subject=kinds.quota_subject(name),
                                 states=[RequestState.SUCCEEDED], limit=limit)

    @classmethod
    def recorded_quota(cls, uow: SqlUnitOfWork, name: str, row: WorkspaceRecord) -> dict[str, str]:
        """The quota the bot recorded last for ``name`` (what the drift report compares with)."""
        return cls._last_quota(uow, name, row)

    @classmethod
    def _last_quota(cls, uow: SqlUnitOfWork, name: str, row: WorkspaceRecord) -> dict[str, str]:
        # Without a cluster to ask, the quota is what the last applied change set, in this
        # workspace: not one of an earlier workspace of the same name.
        last = cls._quota_changes(uow, name, limit=1)
        adopted = uow.requests.list(kind=kinds.DriftAdopt.KIND, subject=kinds.quota_subject(name),
                                    states=[RequestState.SUCCEEDED], limit=1)
        if adopted and adopted[0].created_at >= row.created_at and (
            not last or adopted[0].created_at >= last[0].created_at
        ):
            return as_text_map(adopted[0].args["hard"])  # an admin adopted a quota edited by hand
        if last and last[0].created_at >= row.created_at:
            return as_text_map(last[0].plan.steps[0].params["hard"])
        for entry in row.created.values():
            if entry["action"] == ActionName.PROFILE:
                return as_text_map(as_object(entry["params"])["hard"])
        return {}

    @classmethod
    def _quota_baseline(cls, uow: SqlUnitOfWork, name: str, row: WorkspaceRecord) -> dict[str, str]:
        """Per resource, the quota a person last approved: the value set by the newest lasting
        change an admin decided, else the Profile's quota at creation. The owner's self-service
        raises (auto-applied), the bot's reverts and temporary raises never move it, so repeated
        small raises cannot climb past it by more than the self-service step."""
        baseline: dict[str, str] = {}
        for entry in row.created.values():
            if entry["action"] == ActionName.PROFILE:
                baseline = {str(k): str(v) for k, v in as_object(as_object(entry["params"])["hard"]).items()}
        decided: dict[str, str] = {}
        for request in cls._quota_changes(uow, name, limit=None):  # newest first
            if request.created_at < row.created_at:
                continue
            if request.decided_by in (None, SYSTEM.user_id):
                continue  # applied without a person's decision: self-service or an expiry
            # A temporary raise lapses; it is no lasting approval.
            for resource, value in lasting_values(request.args).items():
                decided.setdefault(resource, value)
        return {**baseline, **decided}

    def _expired(self, at: datetime | None) -> bool:
        return at is not None and at <= self.clock.now()

    def user_in_use(self, user: str, except_workspace: str) -> str | None:
        with self.db.uow() as uow:
            live = [w for w in uow.registry.list_workspaces() if w.deleted_at is None]
            grants = uow.registry.grants_of(user)
            granted = sorted({g.workspace for g in grants if g.workspace != except_workspace})
        others = [w for w in live if w.name != except_workspace]
        if owned := sorted(w.name for w in others if w.owner == user):
            return f"the owner of `{owned[0]}`"
        if granted:
            return f"a collaborator on `{granted[0]}`"
        if self.live is None:
            return None
        # The registry is not the only record of who signs in: the login opens every Profile that
        # names its holder, including the hand-made ones the bot does not manage (`/kf workspace
        # scan` lists them) and contributors the dashboard's Manage Contributors added. One read
        # of the whole cluster, not one per workspace.
        skip = {w.namespace for w in live if w.name == except_workspace}
        uses = {ns: how for ns, how in self.live.profile_users().get(user.strip().lower(), {}).items()
                if ns not in skip}
        for namespace, how in sorted(uses.items()):
            return (f"the owner of Profile `{namespace}`" if how == "owner"
                    else f"a contributor ({how}) of Profile `{namespace}`")
        return None

    def owned_workspaces(self, user: str) -> tuple[str, ...]:
        with self.db.uow() as uow:
            return tuple(w.name for w in uow.registry.list_workspaces(owner=user))

    def bot_made_login(self, user: str) -> bool:
        return self.login_origin(user) == "made"

    def login_origin(self, user: str) -> str | None:
        with self.db.uow() as uow:
            workspaces = uow.registry.list_workspaces()
        origins = {
            "adopted" if entry.get("adopted") is True else "made"
            for ws in workspaces
            if ws.deleted_at is None
            for entry in ws.created.values()
            if entry["action"] == ActionName.DEX_USER and as_object(entry["params"]).get("email") == user
        }
        # Made wins: the bot answers for a login it made even where another workspace adopted it.
        return "made" if "made" in origins else next(iter(origins), None)

    def login_records(self, user: str) -> tuple[str, ...]:
        with self.db.uow() as uow:
            workspaces = uow.registry.list_workspaces()
        return tuple(sorted(
            ws.name
            for ws in workspaces
            if ws.deleted_at is None
            and any(
                entry["action"] == ActionName.DEX_USER and as_object(entry["params"]).get("email") == user
                for entry in ws.created.values()
            )
        ))

    def has_login(self, user: str) -> bool | None:
        return None if self.logins is None else self.logins.user_exists(user)

    def login_key_shared_with(self, user: str) -> tuple[str, tuple[str, ...]] | None:
        return None if self.logins is None else self.logins.key_shared_with(user)

    def token_owner(self, token_id: str) -> tuple[str, str] | None:
        with self.db.uow() as uow:
            token = uow.registry.token(token_id)
        if token is None or token.revoked_at is not None:
            return None
        return token.requester_id, token.workspace

    def data_held(self, workspace: str) -> DataHeld:
        with self.db.uow() as uow:
            row = uow.registry.get_workspace(workspace)
        if row is None:
            return DataHeld()
        bucket = next((str(as_object(e["params"]).get("bucket")) for e in row.created.values()
                       if e["action"] == ActionName.BUCKET), None)
        if self.data is None:
            return DataHeld(bucket=bucket)
        try:
            return self.data.data_held(row.namespace, bucket)
        except errors.KfError:
            # The card says "unknown"; a transfer is decided by a person, who can look.
            return DataHeld(bucket=bucket)

    def idle_item(self, target: str) -> IdleFacts | None:
        now = self.clock.now()
        with self.db.uow(read_only=True) as uow:
            rows = [s for s in uow.cost.signal_rows() if s.detail.get("item") == target]
            if not rows:
                return None
            workspace = rows[0].workspace
            covering = {target} | ({f"workspace:{workspace}"} if workspace else set())
            held = any(h.target in covering for h in uow.cost.holds(now))
        return IdleFacts(
            target=target,
            workspace=workspace,
            since=min(r.first_seen for r in rows),
            last_seen=min(r.last_seen for r in rows),
            established=all(r.detail.get("established") is True for r in rows),
            held=held,
            warned=any(r.warned_at is not None for r in rows),
        )
