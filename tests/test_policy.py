"""The authorization matrix, as a table: who may ask, who may decide, what applies by itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from handlers import errors, kinds, policy
from handlers.model import Actor, Request
from handlers.plan import Plan
from handlers.ports import WorkspaceFacts
from handlers.settings import CoreSettings, PolicySettings, WorkspaceDefaults
from tests.fakes.facts import StaticFacts

OWNER = Actor("UOWNER", "owner@example.com")
EDITOR = Actor("UEDITOR", "editor@example.com")
VIEWER = Actor("UVIEWER", "viewer@example.com")
STRANGER = Actor("USTRANGER", "stranger@example.com")
ADMIN = Actor("UADMIN", "admin@example.com", is_admin=True)
MAPPED = Actor("UMAPPED", "mapped@slack.example.com")
"""A user whose Kubeflow login has another form (``KFBOT_USER_ID_MAP``)."""
MAPPED_ID = "mapped@kf.example.org"
SETTINGS = CoreSettings(
    policy=PolicySettings(admin_users=frozenset({"UADMIN"}), admin_group="S123"),
    workspace=WorkspaceDefaults(user_id_map={MAPPED.email: MAPPED_ID}),
)
FACTS = StaticFacts(
    workspaces={
        "team-a": WorkspaceFacts(
            name="team-a",
            namespace="team-a",
            owner=OWNER.email,
            contributors={EDITOR.email: "edit", VIEWER.email: "view"},
            quota={"requests.nvidia.com/gpu": "2", "cpu": "8", "memory": "32Gi", "requests.storage": "100Gi"},
        ),
        # Recorded under the mapped Kubeflow id, as the Profile owner and the registry hold it.
        "team-m": WorkspaceFacts(
            name="team-m",
            namespace="team-m",
            owner=MAPPED_ID,
            contributors={EDITOR.email: "edit"},
            quota={"requests.nvidia.com/gpu": "2"},
        ),
        # An owner who raised the GPU quota 2 -> 3 themselves: the admin-approved baseline is still 2.
        "team-q": WorkspaceFacts(
            name="team-q",
            namespace="team-q",
            owner=OWNER.email,
            quota={"requests.nvidia.com/gpu": "3", "cpu": "8"},
            quota_baseline={"requests.nvidia.com/gpu": "2", "cpu": "8"},
        ),
        # An owner who lowered the GPU quota 2 -> 0 themselves: raising back up to 2 + 1 is theirs.
        "team-l": WorkspaceFacts(
            name="team-l",
            namespace="team-l",
            owner=OWNER.email,
            quota={"requests.nvidia.com/gpu": "0"},
            quota_baseline={"requests.nvidia.com/gpu": "2"},
        ),
        "team-c": WorkspaceFacts(
            name="team-c", namespace="team-c", owner=OWNER.email, contributors={MAPPED_ID: "view"}
        ),
    },
    tokens={"RTOKEN1": (EDITOR.user_id, "team-a"), "RTOKENM": (EDITOR.user_id, "team-m")},
)
ACTORS = {
    "owner": OWNER,
    "editor": EDITOR,
    "viewer": VIEWER,
    "stranger": STRANGER,
    "admin": ADMIN,
    "mapped": MAPPED,
}

create = kinds.WorkspaceCreate("team-b", "owner@example.com", gpu=1)
delete = kinds.WorkspaceDelete("team-a", "team-a")
share = kinds.Share("team-a", "friend@example.com")
unshare_editor = kinds.Unshare("team-a", EDITOR.email)
gpu_plus_1 = kinds.QuotaChange("team-a", gpu="3")
gpu_plus_4 = kinds.QuotaChange("team-a", gpu="6")
gpu_down = kinds.QuotaChange("team-a", gpu="0", memory="64Gi")
HOUR = timedelta(hours=1)
edit_token = kinds.TokenIssue("team-a", HOUR)
view_token = kinds.TokenIssue("team-a", HOUR, read_only=True)
revoke = kinds.TokenRevoke("RTOKEN1")

# (request, actor) -> does it apply without an admin?  (False = an admin must approve)
AUTO_APPLY_TABLE = [
    (create, "owner", False),
    (create, "admin", False),
    (delete, "owner", False),
    (delete, "admin", False),
    (share, "owner", True),
    (share, "editor", False),
    (share, "stranger", False),
    (share, "admin", False),
    (unshare_editor, "owner", True),
    (unshare_editor, "editor", True),
    (unshare_editor, "viewer", False),
    (unshare_editor, "admin", False),
    (gpu_plus_1, "owner", True),
    (gpu_plus_4, "owner", False),
    (gpu_plus_1, "editor", False),
    (gpu_down, "owner", False),  # memory +32Gi exceeds the 16Gi self-service step, though GPU goes down
    (kinds.QuotaChange("team-a", gpu="1"), "owner", True),
    (edit_token, "owner", True),
    (edit_token, "editor", True),
    (edit_token, "viewer", False),
    (view_token, "viewer", True),
    (edit_token, "stranger", False),
    (view_token, "stranger", False),
    (revoke, "editor", True),
    (revoke, "owner", False),
    (revoke, "admin", False),
    # Self-service raises are judged against the approved baseline, not the current value (no ratchet).
    (kinds.QuotaChange("team-q", gpu="4"), "owner", False),  # +1 on 3, but +2 on the baseline 2
    (kinds.QuotaChange("team-q", gpu="3", cpu="12"), "owner", True),  # GPU unchanged, CPU within its step
    (kinds.QuotaChange("team-q", gpu="1"), "owner", True),
    (kinds.QuotaChange("team-l", gpu="3"), "owner", True),  # +3 on 0, but +1 on the baseline 2
    (kinds.QuotaChange("team-l", gpu="4"), "owner", False),
    # KFBOT_USER_ID_MAP: the mapped owner is the owner, the mapped contributor a contributor.
    (kinds.Share("team-m", "friend@example.com"), "mapped", True),
    (kinds.Unshare("team-m", EDITOR.email), "mapped", True),
    (kinds.QuotaChange("team-m", gpu="3"), "mapped", True),
    (kinds.TokenIssue("team-m", HOUR), "mapped", True),
    (kinds.TokenIssue("team-c", HOUR, read_only=True), "mapped", True),
    (kinds.Unshare("team-c", MAPPED.email), "mapped", True),
    (kinds.Share("team-a", "friend@example.com"), "mapped", False),
]


@pytest.mark.parametrize(
    ("kind", "who", "auto"), AUTO_APPLY_TABLE, ids=[f"{k.KIND}-{w}-{a}" for k, w, a in AUTO_APPLY_TABLE]
)
def test_auto_apply_table(kind: kinds.RequestKind, who: str, auto: bool) -> None:
    reason = policy.auto_apply_reason(kind, ACTORS[who], FACTS, SETTINGS)
    assert (reason is not None) is auto, reason


ADMIN_MAPPED = Actor("UADMINM", "admin1@example.com", is_admin=True)
"""An admin whose Kubeflow id differs from their Slack email (``KFBOT_USER_ID_MAP``)."""
ADMIN_MAPPED_ID = "admin1@corp.example.com"
DECIDE_SETTINGS = CoreSettings(
    policy=PolicySettings(admin_users=frozenset({"UADMIN", "UADMINM"})),
    workspace=WorkspaceDefaults(user_id_map={MAPPED.email: MAPPED_ID, ADMIN_MAPPED.email: ADMIN_MAPPED_ID}),
)
DECIDE_FACTS = StaticFacts(
    workspaces={
        **FACTS.workspaces,
        "adminws": WorkspaceFacts("adminws", "adminws", ADMIN.email),
        "collab": WorkspaceFacts("collab", "collab", OWNER.email, contributors={ADMIN.email: "view"}),
        "corp": WorkspaceFacts("corp", "corp", ADMIN_MAPPED_ID),
    }
)
DECIDERS = {**ACTORS, "admin-mapped": ADMIN_MAPPED}

DECIDE_TABLE: list[tuple[str, str, kinds.RequestKind, bool]] = [
    # (decider, requester, request, allowed)
    ("admin", "owner", share, True),  # an admin decides someone else's request
    ("admin", "admin", share, False),  # never their own
    ("owner", "editor", share, False),  # owners are not admins
    ("stranger", "owner", share, False),
    ("admin", "stranger", kinds.Share("team-a", ADMIN.email), False),  # a share that grants the admin
    ("admin", "stranger", kinds.Unshare("team-a", ADMIN.email), False),
    ("admin", "stranger", kinds.WorkspaceCreate("w", ADMIN.email), False),  # a workspace they would own
    ("admin", "stranger", kinds.Share("team-a", EDITOR.email), True),
    # A workspace's quota and deletion are for its owner and its contributors.
    ("admin", "stranger", kinds.QuotaChange("adminws", gpu="64"), False),
    ("admin", "stranger", kinds.QuotaChange("collab", gpu="64"), False),
    ("admin", "stranger", kinds.WorkspaceDelete("collab", "collab"), False),
    ("admin", "stranger", kinds.QuotaChange("team-a", gpu="64"), True),
    # Mapped and unmapped forms of one person are one person.
    ("admin-mapped", "stranger", kinds.WorkspaceCreate("x", ADMIN_MAPPED.email), False),
    ("admin-mapped", "stranger", kinds.WorkspaceCreate("x", ADMIN_MAPPED_ID), False),
    ("admin-mapped", "stranger", kinds.Share("team-a", ADMIN_MAPPED.email), False),
    ("admin-mapped", "stranger", kinds.Share("team-a", ADMIN_MAPPED_ID), False),
    ("admin-mapped", "stranger", kinds.QuotaChange("corp", gpu="9"), False),
    ("admin-mapped", "stranger", kinds.Share("team-a", "friend@example.com"), True),
]


@pytest.mark.parametrize(
    ("decider", "requester", "kind", "allowed"),
    DECIDE_TABLE,
    ids=[f"{d}-{r}-{k.describe()}-{a}" for d, r, k, a in DECIDE_TABLE],
)
def test_who_may_decide(decider: str, requester: str, kind: kinds.RequestKind, allowed: bool) -> None:
    req = Request(
        id="RX",
        kind=kind.KIND,
        args=kinds.to_args(kind),
        requester_id=ACTORS[requester].user_id,
        requester_email=ACTORS[requester].email,
        plan=Plan.of([]),
        created_at=datetime.now(UTC),
    )
    if allowed:
        policy.check_may_decide(DECIDERS[decider], req, DECIDE_SETTINGS, DECIDE_FACTS)
    else:
        with pytest.raises(errors.Forbidden):
            policy.check_may_decide(DECIDERS[decider], req, DECIDE_SETTINGS, DECIDE_FACTS)


REQUEST_TABLE = [
    (delete, "owner", True),
    (delete, "admin", True),
    (delete, "editor", False),
    (delete, "stranger", False),
    (revoke, "editor", True),
    (revoke, "owner", True),
    (revoke, "admin", True),
    (revoke, "viewer", False),
    (share, "stranger", True),  # anyone may ask; an admin decides
    (kinds.WorkspaceDelete("team-m", "team-m"), "mapped", True),  # owner under the mapped id
    (kinds.TokenRevoke("RTOKENM"), "mapped", True),
    (delete, "mapped", False),
]


@pytest.mark.parametrize(
    ("kind", "who", "allowed"), REQUEST_TABLE, ids=[f"{k.KIND}-{w}-{a}" for k, w, a in REQUEST_TABLE]
)
def test_who_may_ask(kind: kinds.RequestKind, who: str, allowed: bool) -> None:
    if allowed:
        policy.check_may_request(kind, ACTORS[who], FACTS, SETTINGS)
    else:
        with pytest.raises(errors.Forbidden):
            policy.check_may_request(kind, ACTORS[who], FACTS, SETTINGS)


def test_admins_come_from_the_list_and_the_group() -> None:
    assert policy.is_admin("UADMIN", SETTINGS)
    assert policy.is_admin("UGROUPIE", SETTINGS, group_members=["UGROUPIE"])
    assert not policy.is_admin("UOWNER", SETTINGS, group_members=["UGROUPIE"])


def test_token_ttl_bounds_name_the_range() -> None:
    ctx = kinds.PlanContext(SETTINGS, FACTS, "RT1")
    with pytest.raises(errors.InvalidInput, match="10m"):
        kinds.TokenIssue("team-a", ttl=timedelta(minutes=5)).plan(ctx)
    with pytest.raises(errors.InvalidInput, match=r"1d|24h"):
        kinds.TokenIssue("team-a", ttl=timedelta(days=2)).plan(ctx)
    assert kinds.TokenIssue("team-a", ttl=timedelta(minutes=10)).plan(ctx).steps
