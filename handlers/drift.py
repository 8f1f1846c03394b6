"""Drift: where the cluster and the bot's registry disagree, and what each report button may do.

Pure. ``provisioning.Backend.drift_inventory`` reads the registry and the cluster into a
``DriftInventory``; ``find`` turns it into ``DriftItem``s (one per disagreement, each with a stable
``key``); the report (``bot/drift.py``) shows them with buttons whose value is that key and a digest
of what the line showed (``DriftItem.value``).

**A button value is never trusted.** A click is answered by reading the drift again and looking the
key up (``resolve``): a key that is not in the current drift (forged, or the drift no longer
holds) is refused, so is a drift whose values differ from those the button's line showed (changed
since the report: nobody adopts or restores values they never saw), and what a button files is
built from the item found now, never from the value.

**Everything read from the cluster is shown as a value, never as markup or a person.** Names on
a Profile, a RoleBinding or a tag are whatever someone typed into the dashboard or the cloud
(``o'brien@example.com``, ``Jane Doe``, ``UADMIN002``, ``<!channel>``): only an exact email becomes
a ``naming.person`` (which the Slack edge turns into a mention only when Slack resolves the email),
anything else is ``naming.show_value`` text; a key part that a button value cannot carry is hashed.
The report never raises over such a name.
**Restore** and **Clean up** file normal requests as the clicking person (``restore_request``,
``cleanup_request``): the approval gate decides as for the typed command. **Adopt into the record**
(``adopt_request``) changes only the registry, as a system decision, and only for an admin who
does not benefit (``check_may_adopt``).

Not drift: a nodegroup's desired size (Cluster Autoscaler and the cost actions move it all day);
only its minimum and maximum are compared.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from handlers import errors, naming, policy
from handlers.kinds.drift_adopt import DriftAdopt
from handlers.kinds.drift_cleanup import DriftCleanup
from handlers.kinds.quota import QUOTA_FLAGS, QuotaChange
from handlers.kinds.share import Share
from handlers.kinds.unshare import Unshare
from handlers.kinds.workspace_resize import WorkspaceResize
from handlers.model import Actor
from handlers.plan import JSON
from handlers.settings import CoreSettings, kubeflow_user_id

ADOPT = "drift_adopt"
RESTORE = "drift_restore"
CLEAN_UP = "drift_cleanup"
ACTIONS = (ADOPT, RESTORE, CLEAN_UP)
"""The report's button action ids."""
_KEY = re.compile(r"[a-z-]{3,24}:[A-Za-z0-9._@+:/~-]{1,250}")
_SEEN = 16
"""Hex digits of the digest of what a line showed, in its buttons' value (``key#digest``)."""
_VALUE = re.compile(rf"({_KEY.pattern})#([0-9a-f]{{{_SEEN}}})")
_KEY_PART = re.compile(r"[A-Za-z0-9._@+/-]{1,100}")
_PLAIN = re.compile(r"[A-Za-z0-9.-]{1,63}")
"""A value read from the cluster shown without quoting (``edit``, ``8Gi``): nothing markup."""


class What(StrEnum):
    CONTRIBUTOR_ADDED = "contributor-added"
    CONTRIBUTOR_REMOVED = "contributor-removed"
    CONTRIBUTOR_ROLE = "contributor-role"
    QUOTA = "quota"
    SCALING = "scaling"
    ORPHAN_BUCKET = "orphan-bucket"
    ORPHAN_NODEGROUP = "orphan-nodegroup"
    ORPHAN_IAM = "orphan-iam"
    ORPHAN_DEX = "orphan-dex"
    UNKNOWN_PROFILE = "unknown-profile"


# -- what provisioning reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    min_size: int
    max_size: int
    desired_size: int | None = None
    """Read and shown, never compared."""


@dataclass(frozen=True)
class RecordedNodegroup:
    key: str
    """The registry's step key for it (``UpdateWorkspaceObjects`` merges under it)."""
    name: str
    recorded: Scaling
    live: Scaling | None
    """None: EKS does not have it (or could not be read: see the inventory's notes)."""


@dataclass(frozen=True)
class WorkspaceSeen:
    """One workspace of the registry, as recorded and as the cluster has it."""

    name: str
    namespace: str
    owner: str
    grants: Mapping[str, str]
    """Recorded grants, user -> role."""
    quota: Mapping[str, str]
    """The quota the registry recorded last (``spec.resourceQuotaSpec.hard``)."""
    contributors: Mapping[str, str] | None
    """The cluster's contributors by KFAM's listing rule; None when the Profile is gone."""
    hard: Mapping[str, str] | None
    """The Profile's ``resourceQuotaSpec.hard`` now; None when the Profile is gone."""
    nodegroups: tuple[RecordedNodegroup, ...] = ()


@dataclass(frozen=True)
class Orphan:
    """An object the bot made (or tagged) for a workspace the registry no longer has."""

    what: str
    """``bucket``, ``nodegroup``, ``iam`` (a bucket the bot's IAM statement still grants) or
    ``dex`` (a login the bot made for a gone workspace, used by no workspace now)."""
    name: str
    workspace: str
    """The gone workspace's name when the object says it (its tag); empty when unknown."""
    detail: str = ""


@dataclass(frozen=True)
class DriftInventory:
    taken_at: datetime
    workspaces: tuple[WorkspaceSeen, ...] = ()
    orphans: tuple[Orphan, ...] = ()
    unknown_profiles: tuple[tuple[str, str], ...] = ()
    """(namespace, owner) of Profiles the registry does not know."""
    notes: tuple[str, ...] = ()


# -- what is reported ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftItem:
    key: str
    what: What
    workspace: str | None
    owner: str | None
    """The workspace's recorded owner (who may see and restore it); None: admins only."""
    text: str
    data: Mapping[str, JSON] = field(default_factory=dict)
    """What the buttons act on, as found now (user, role, quotas, scaling, object name)."""

    @property
    def value(self) -> str:
        """Its buttons' value: the key and a digest of what the line shows (``resolve``)."""
        return f"{self.key}#{self.seen}"

    @property
    def seen(self) -> str:
        shown = json.dumps([self.key, self.text, self.data], sort_keys=True, default=str)
        return hashlib.sha256(shown.encode()).hexdigest()[:_SEEN]

    @property
    def actions(self) -> tuple[str, ...]:
        if self.what in (What.ORPHAN_BUCKET, What.ORPHAN_NODEGROUP, What.ORPHAN_IAM, What.ORPHAN_DEX):
            return (CLEAN_UP,)
        if self.what is What.UNKNOWN_PROFILE:
            return ()
        return (ADOPT, RESTORE)


def _key(what: What, *parts: str) -> str:
    return ":".join((what.value, *map(_key_part, parts)))


def _key_part(part: str) -> str:
    # A name from the cluster a button value cannot carry (a quote, a space, a bidi control):
    # hashed, so the key stays unique and the strict value pattern holds (``~`` is no name's).
    if _KEY_PART.fullmatch(part):
        return part
    return "~" + hashlib.sha256(part.encode()).hexdigest()[:24]


def _who(user: str) -> str:
    """A person read from the cluster: an exact email is a person (a mention where Slack knows
    it), anything else (``Jane Doe``, ``UADMIN002``, ``o'brien@x``) shown as a value."""
    try:
        email = naming.normalize_email(user)
    except errors.KfError:
        email = ""
    if email and email == user and naming.is_person_id(email):
        return naming.person(email)
    return naming.show_value(user)


def _plain(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else naming.show_value(value)


def find(inv: DriftInventory) -> list[DriftItem]:
    items: list[DriftItem] = []
    for ws in inv.workspaces:
        items += _contributors(ws)
        items += _quota(ws)
        items += _scaling(ws)
    for orphan in inv.orphans:
        what, label = _ORPHANS[orphan.what]
        more = f" ({naming.show_value(orphan.detail, 200)[1:-1]})" if orphan.detail else ""
        whose = "its workspace" + (f" {naming.show_value(orphan.workspace)}" if orphan.workspace else "")
        items.append(
            DriftItem(
                _key(what, orphan.name),
                what,
                None,
                None,
                f"Orphan {label} {naming.show_value(orphan.name)}: {whose} is gone{more}.",
                {"name": orphan.name, "workspace": orphan.workspace},
            )
        )
    for namespace, owner in inv.unknown_profiles:
        items.append(
            DriftItem(
                _key(What.UNKNOWN_PROFILE, namespace),
                What.UNKNOWN_PROFILE,
                None,
                None,
                f"Profile {naming.show_value(namespace)} (owner {_who(owner) if owner else 'unknown'}) "
                "is not one the bot knows.",
                {"namespace": namespace},
            )
        )
    return sorted(items, key=lambda i: i.key)


_ORPHANS = {
    "bucket": (What.ORPHAN_BUCKET, "S3 bucket"),
    "nodegroup": (What.ORPHAN_NODEGROUP, "nodegroup"),
    "iam": (What.ORPHAN_IAM, "IAM grant of bucket"),
    "dex": (What.ORPHAN_DEX, "Dex login"),
}


def _contributors(ws: WorkspaceSeen) -> list[DriftItem]:
    if ws.contributors is None:
        return []
    out = []
    for user, role in sorted(ws.contributors.items()):
        if user == ws.owner:
            continue
        recorded = ws.grants.get(user)
        if recorded is None:
            out.append(DriftItem(
                _key(What.CONTRIBUTOR_ADDED, ws.name, user), What.CONTRIBUTOR_ADDED, ws.name, ws.owner,
                f"`{ws.name}`: {_who(user)} has {_plain(role)} access in the cluster that the bot did "
                "not grant (added by hand).",
                {"user": user, "role": role},
            ))
        elif recorded != role:
            out.append(DriftItem(
                _key(What.CONTRIBUTOR_ROLE, ws.name, user), What.CONTRIBUTOR_ROLE, ws.name, ws.owner,
                f"`{ws.name}`: {_who(user)} has {_plain(role)} access in the cluster; the bot "
                f"granted {_plain(recorded)}.",
                {"user": user, "role": role, "recorded": recorded},
            ))
    for user, role in sorted(ws.grants.items()):
        if user not in ws.contributors:
            out.append(DriftItem(
                _key(What.CONTRIBUTOR_REMOVED, ws.name, user), What.CONTRIBUTOR_REMOVED, ws.name,
                ws.owner,
                f"`{ws.name}`: {_who(user)}'s {_plain(role)} access, granted by the bot, is gone from "
                "the cluster (removed by hand).",
                {"user": user, "recorded": role},
            ))
    return out


def _quota(ws: WorkspaceSeen) -> list[DriftItem]:
    if ws.hard is None:
        return []
    names = sorted(set(ws.quota) | set(ws.hard))
    changed = [r for r in names if ws.quota.get(r) != ws.hard.get(r)]
    if not changed:
        return []
    shown = ", ".join(
        f"{naming.show_value(r)} {_plain(ws.hard.get(r, 'unset'))} "
        f"(recorded {_plain(ws.quota.get(r, 'unset'))})" for r in changed
    )
    data: dict[str, JSON] = {
        "hard": {r: ws.hard[r] for r in changed if r in ws.hard},
        "recorded": {r: ws.quota[r] for r in changed if r in ws.quota},
        "cluster": dict(ws.hard),
    }
    return [DriftItem(
        _key(What.QUOTA, ws.name), What.QUOTA, ws.name, ws.owner,
        f"`{ws.name}`: the Profile's quota was edited by hand: {shown}.", data,
    )]


def _scaling(ws: WorkspaceSeen) -> list[DriftItem]:
    out = []
    for ng in ws.nodegroups:
        live = ng.live
        if live is None:
            continue
        if (live.min_size, live.max_size) == (ng.recorded.min_size, ng.recorded.max_size):
            continue  # the desired size is the autoscaler's: never drift
        out.append(DriftItem(
            _key(What.SCALING, ws.name, ng.name), What.SCALING, ws.name, ws.owner,
            f"`{ws.name}`: nodegroup {naming.show_value(ng.name)} scales {live.min_size}-{live.max_size} "
            f"nodes; the bot recorded {ng.recorded.min_size}-{ng.recorded.max_size} "
            "(changed outside the bot).",
            {
                "nodegroup": ng.name, "step": ng.key, "min_size": live.min_size, "max_size": live.max_size,
                "recorded_min": ng.recorded.min_size, "recorded_max": ng.recorded.max_size,
            },
        ))
    return out


# -- who sees what, what a click may do ------------------------------------------------------------


def may_see(item: DriftItem, actor: Actor, settings: CoreSettings) -> bool:
    """Admins see everything; an owner sees the drift of the workspaces they own (the registry's
    owner, compared as Kubeflow ids like every identity check); orphans and unknown Profiles are
    the admins'."""
    if actor.is_admin:
        return True
    return item.owner is not None and item.owner == policy.kubeflow_user(actor, settings)


def visible(items: Iterable[DriftItem], actor: Actor, settings: CoreSettings) -> list[DriftItem]:
    return [i for i in items if may_see(i, actor, settings)]


def check_value(value: str) -> tuple[str, str]:
    """A button value as (drift key, digest of what its line showed), or ``InvalidInput`` (it is
    untrusted input; a bare key, as buttons carried before the digest, is refused too)."""
    found = _VALUE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise errors.InvalidInput(
            "That button does not name a drift the bot reported (or is from an old report): "
            "`/kf drift` shows the drift as it is now."
        )
    return found.group(1), found.group(2)


def resolve(
    items: Sequence[DriftItem], action: str, value: str, actor: Actor, settings: CoreSettings
) -> DriftItem:
    """The item a click acts on, read now: refused when the key is not a drift now (forged, or
    fixed meanwhile), when the clicker may not see it, when the button is not one of its own, or
    when the drift now shows other values than the button's line did (changed since the report)."""
    key, seen = check_value(value)
    item = next((i for i in items if i.key == key), None)
    if item is None or not may_see(item, actor, settings):
        raise errors.NotFound(
            "That drift no longer holds (or is not yours to see): nothing was done. "
            "`/kf drift` shows the drift as it is now."
        )
    if action not in item.actions:
        raise errors.InvalidInput("That button does not apply to this drift.")
    if seen != item.seen:
        raise errors.NotFound(
            "That drift changed since the report was posted (the cluster now shows other values "
            "than the ones you saw): nothing was done. `/kf drift` shows it as it is now."
        )
    return item


def adopt_request(item: DriftItem, actor: Actor, settings: CoreSettings) -> DriftAdopt:
    """The registry follows the cluster: the record change, as found now."""
    assert item.workspace is not None
    data = item.data
    adopted_by = policy.kubeflow_user(actor, settings)
    if item.what in (What.CONTRIBUTOR_ADDED, What.CONTRIBUTOR_ROLE):
        return DriftAdopt(item.key, item.workspace, "grant", adopted_by, user=str(data["user"]),
                          role=str(data["role"]))
    if item.what is What.CONTRIBUTOR_REMOVED:
        return DriftAdopt(item.key, item.workspace, "ungrant", adopted_by, user=str(data["user"]))
    if item.what is What.QUOTA:
        # The record takes the Profile's whole quota as it is now (a resource removed by hand
        # leaves the record too).
        return DriftAdopt(item.key, item.workspace, "quota", adopted_by, hard=_map(data["cluster"]))
    if item.what is What.SCALING:
        return DriftAdopt(item.key, item.workspace, "scaling", adopted_by, step=str(data["step"]),
                          min_size=_int(data["min_size"]), max_size=_int(data["max_size"]))
    raise errors.InvalidInput("That drift has nothing to adopt into the record.")


def check_may_adopt(kind: DriftAdopt, actor: Actor, beneficiaries: Iterable[str],
                    settings: CoreSettings) -> None:
    """Adopt into the record is an admin's decision, never one that benefits them."""
    if not actor.is_admin:
        raise errors.Forbidden("Only an admin can adopt a drift into the record.")
    user = policy.kubeflow_user(actor, settings)
    # Compared as Kubeflow ids: an admin mapped by KFBOT_USER_ID_MAP is the same person as their email.
    people = {kubeflow_user_id(settings, b) for b in beneficiaries} | set(beneficiaries)
    if user in people:
        raise errors.Forbidden(
            "You benefit from this drift (it is your workspace or your access): another admin "
            "has to adopt it."
        )


def restore_request(item: DriftItem) -> Share | Unshare | QuotaChange | WorkspaceResize:
    """Re-apply the recorded state: the request its command would file."""
    assert item.workspace is not None
    data = item.data
    if item.what is What.CONTRIBUTOR_ADDED:
        return Unshare(item.workspace, str(data["user"]))
    if item.what in (What.CONTRIBUTOR_REMOVED, What.CONTRIBUTOR_ROLE):
        return Share(item.workspace, str(data["user"]), role=str(data["recorded"]))
    if item.what is What.QUOTA:
        recorded = _map(data["recorded"])
        by_resource = {resource: flag for flag, resource in QUOTA_FLAGS.items()}
        values = {by_resource[r]: v for r, v in recorded.items() if r in by_resource}
        if not values or set(recorded) - set(by_resource):
            raise errors.InvalidInput(
                "The recorded quota names resources `/kf quota` does not set; restore it by hand "
                "or adopt the cluster's value."
            )
        return QuotaChange(item.workspace, gpu=values.get("gpu"), cpu=values.get("cpu"),
                           memory=values.get("memory"), storage=values.get("storage"))
    if item.what is What.SCALING:
        return WorkspaceResize(item.workspace, _int(data["recorded_min"]), _int(data["recorded_max"]))
    raise errors.InvalidInput("That drift has no recorded state to restore.")


def cleanup_request(item: DriftItem) -> DriftCleanup:
    target = {
        What.ORPHAN_BUCKET: "bucket", What.ORPHAN_NODEGROUP: "nodegroup", What.ORPHAN_IAM: "iam",
        What.ORPHAN_DEX: "dex",
    }
    workspace = str(item.data.get("workspace") or "") or None
    return DriftCleanup(f"{target[item.what]}:{item.data['name']}", workspace=workspace)


def _map(value: JSON) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _int(value: JSON) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidInput("That drift's sizes are not whole numbers.")
    return value


def digest(items: Sequence[DriftItem]) -> str:
    """What the report shows (keys and texts): unchanged -> the message is not edited."""
    text = "\n".join(f"{i.key}\t{i.text}" for i in items)
    return hashlib.sha256(text.encode()).hexdigest()


def text(items: Sequence[DriftItem], notes: Sequence[str]) -> str:
    """The drift as neutral core text (each edge renders it: ``Style.message``)."""
    if not items:
        lines = ["No drift: the cluster matches the bot's record."]
    else:
        lines = [f"Drift: {len(items)} thing(s) differ between the cluster and the bot's record."]
        lines += [f"- {i.text}" for i in items]
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines)
