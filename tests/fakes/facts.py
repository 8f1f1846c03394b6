"""In-memory facts for tests of the pure core only (planning and policy); everything with I/O is
tested against the real registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from handlers.ports import DataHeld, Discovery, IdleFacts, WorkspaceFacts


@dataclass
class StaticFacts:
    workspaces: dict[str, WorkspaceFacts] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    users_elsewhere: set[str] = field(default_factory=set)
    logins_made: set[str] = field(default_factory=set)
    logins_adopted: set[str] = field(default_factory=set)
    without_login: set[str] = field(default_factory=set)
    shared_keys: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    """Users Dex has no login for (everyone else has one)."""
    idle: dict[str, IdleFacts] = field(default_factory=dict)
    data: dict[str, DataHeld] = field(default_factory=dict)
    found: dict[str, Discovery] = field(default_factory=dict)
    orphans: set[str] = field(default_factory=set)
    """``drift.cleanup`` targets the drift report lists as orphans now."""

    def workspace(self, name: str) -> WorkspaceFacts | None:
        return self.workspaces.get(name)

    def user_in_use(self, user: str, except_workspace: str) -> str | None:
        return "a collaborator on `elsewhere`" if user in self.users_elsewhere else None

    def owned_workspaces(self, user: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, ws in self.workspaces.items() if ws.owner == user))

    def bot_made_login(self, user: str) -> bool:
        return user in self.logins_made

    def login_origin(self, user: str) -> str | None:
        if user in self.logins_made:
            return "made"
        return "adopted" if user in self.logins_adopted else None

    def login_records(self, user: str) -> tuple[str, ...]:
        return tuple(sorted(
            name for name, ws in self.workspaces.items()
            if any(e.get("action") == "dex.user" and isinstance(e.get("params"), dict)
                   and e["params"].get("email") == user for e in ws.created.values())
        ))

    def has_login(self, user: str) -> bool | None:
        return user not in self.without_login

    def login_key_shared_with(self, user: str) -> tuple[str, tuple[str, ...]] | None:
        return self.shared_keys.get(user)

    def token_owner(self, token_id: str) -> tuple[str, str] | None:
        return self.tokens.get(token_id)

    def idle_item(self, target: str) -> IdleFacts | None:
        return self.idle.get(target)

    def data_held(self, workspace: str) -> DataHeld:
        return self.data.get(workspace, DataHeld())

    def discover(self, namespace: str) -> Discovery | None:
        return self.found.get(namespace)

    def adopted_changes(self, namespace: str) -> Mapping[str, str] | None:
        return None

    def orphan(self, target: str) -> bool | None:
        return target in self.orphans
