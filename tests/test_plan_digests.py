"""Plans stored before a reshaping must still match their digest after it: the engine re-renders a
plan at approved -> applying and sends it back to pending when the digest moved. So the step
params every kind emits are frozen here as the digests the code of 7b032e4 (before request kinds
became modules and step params became typed) computed for the same inputs. A failure here means an
approved request from before the upgrade would need a new approval: change the golden value only
together with a migration that re-digests stored plans."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from handlers import kinds
from handlers.plan import JSON, Plan
from handlers.ports import Discovery, FoundObject, TokenFacts, WorkspaceFacts
from handlers.settings import RUNBOOK_NODEGROUP, CoreSettings, NodegroupStyle
from tests.fakes.facts import StaticFacts
from tests.test_kinds import RUNBOOK


def _dex(mode: str) -> CoreSettings:
    return dataclasses.replace(RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, dex_mode=mode))


CONFIGMAP, EXTERNAL = _dex("configmap"), _dex("external")
OIDC = (
    "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
)
RUNBOOK_STYLE = dataclasses.replace(
    RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, nodegroup=RUNBOOK_NODEGROUP)
)
DISK_ONLY = dataclasses.replace(
    RUNBOOK, workspace=dataclasses.replace(RUNBOOK.workspace, nodegroup=NodegroupStyle(disk_size=50))
)
ISOLATED = dataclasses.replace(
    RUNBOOK_STYLE,
    workspace=dataclasses.replace(
        RUNBOOK_STYLE.workspace, workspace_iam="per-workspace", oidc_provider_arn=OIDC, iam_policy_arns=()
    ),
)


def _plan(
    kind: kinds.RequestKind, facts: StaticFacts | None = None, settings: CoreSettings = RUNBOOK
) -> Plan:
    return kind.plan(kinds.PlanContext(settings, facts or StaticFacts(), "RGOLD01"))


def _created(plan: Plan) -> dict[str, object]:
    return {s.key: {"action": s.action, "params": dict(s.params)} for s in plan.steps}


def _team() -> WorkspaceFacts:
    """A GPU workspace as the registry records it after its create request, with a view and an
    edit contributor, edit and view tokens, and a quota partly in use."""
    create = _plan(kinds.WorkspaceCreate("team-a", "owner@example.com", gpu=1))
    return WorkspaceFacts(
        "team-a",
        "aic-ns-team-a-ws",
        "owner@example.com",
        contributors={"b@example.com": "edit", "c@example.com": "view"},
        quota={"cpu": "8", "memory": "32Gi", "requests.nvidia.com/gpu": "1"},
        quota_used={"cpu": "6", "requests.nvidia.com/gpu": "1"},
        quota_enforced={"cpu": "8"},
        created=_created(create),
        pvcs=0,
        recorded_grants={"b@example.com": "edit", "c@example.com": "view"},
        tokens={
            "RTOKEN1": TokenFacts("b@example.com", "edit"),
            "RTOKEN2": TokenFacts("b@example.com", "view"),
            "RTOKEN3": TokenFacts("c@example.com", "view"),
        },
    )


def _unpinned() -> WorkspaceFacts:
    """A GPU workspace made before pinning: its nodegroup has only the GPU taint."""
    ws = _team()
    created = {}
    for key, entry in ws.created.items():
        params = dict(entry["params"])
        if entry["action"] == "aws.nodegroup":
            params["taints"] = [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
        if entry["action"] == "kubeflow.poddefault":
            params["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        created[key] = {"action": entry["action"], "params": params}
    return dataclasses.replace(ws, created=created)


def _with_collaborator_login() -> WorkspaceFacts:
    """``_team`` after a share made b's Dex login (recorded with the workspace, as the owner's)."""
    ws = _team()
    login = {"email": "b@example.com", "username": "b", "mode": "password-cr"}
    return dataclasses.replace(
        ws, created={**ws.created, "DexUser/b@example.com": {"action": "dex.user", "params": login}}
    )


def _isolated() -> WorkspaceFacts:
    """A workspace made with the runbook's nodegroup (a launch template) and its own IAM role."""
    create = _plan(kinds.WorkspaceCreate("team-a", "owner@example.com", gpu=1), settings=ISOLATED)
    return dataclasses.replace(_team(), created=_created(create))


def _facts(ws: WorkspaceFacts | None = None, **extra: object) -> StaticFacts:
    ws = ws or _team()
    return StaticFacts(workspaces={ws.name: ws}, **extra)  # type: ignore[arg-type]


def _legacy_discovery() -> Discovery:
    """The runbook's hand-made workspace as discovery finds it (tests/fakes/runbook.py)."""
    bucket, group = "s3-use1-infra-dev-proj1", "ng-use1-aicond-proj1-ws-g4dnxl"
    arns = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    policy = "arn:aws:iam::123456789012:policy/kf-notebooks-s3"
    owner, ns = "legacy.owner@example.com", "aic-ns-legacy-ws"
    nodegroup: dict[str, JSON] = {
        "cluster": "kubeflow", "name": group, "instance_types": ["g4dn.xlarge"], "ami_type": "AL2_x86_64_GPU",
        "scaling": {"minSize": 0, "maxSize": 2, "desiredSize": 0}, "labels": {}, "subnets": [],
        "node_role": "", "tags": {},
        "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
    }
    login: dict[str, JSON] = {"email": owner, "username": "legacy", "user_id": "u1", "mode": "configmap"}
    return Discovery(
        namespace=ns,
        profile_exists=True,
        owner=owner,
        managed_by=None,
        objects=(
            FoundObject("kubeflow.profile", f"Profile/{ns}", ns,
                        {"name": ns, "owner": owner, "hard": {"cpu": "16"}, "labels": {}}, "name"),
            FoundObject("dex.user", f"DexUser/{owner}", owner, login, "owner's email, inline hash"),
            FoundObject("aws.bucket", f"Bucket/{bucket}", bucket,
                        {"bucket": bucket, "region": "us-east-1", "tags": {"Namespace": ns}}, "tag"),
            FoundObject("aws.iam_resources", f"IamPolicy/{policy}", policy,
                        {"policy_arn": policy, "resources": list(arns)}, "the bucket's ARNs", tuple(arns)),
            FoundObject("aws.nodegroup", f"Nodegroup/{group}", group, nodegroup, "tag Namespace"),
        ),
    )


def _legacy_discovery_shapes() -> Discovery:
    """The same workspace found by a discovery that records the shapes the runbook wrote (its
    statements, the static entry's hash) and the workspace's IAM role."""
    found = _legacy_discovery()
    objects = []
    for obj in found.objects:
        params = dict(obj.params)
        if obj.action == "aws.iam_resources":
            params.update(statements=["AicProj1Bucket"], deny_statements=["NoDelete"])
        elif obj.action == "dex.user":
            params.update(static_entry="hashFromEnv", env_key="DEX_LEGACY_OWNER_PASSWORD")
        objects.append(dataclasses.replace(obj, params=params))
    role: dict[str, JSON] = {
        "name": "aic-proj1-notebooks", "arn": "arn:aws:iam::123456789012:role/aic-proj1-notebooks",
        "namespace": found.namespace, "service_account": "default-editor",
        "bucket": "s3-use1-infra-dev-proj1", "tags": {}, "trusts_namespace": True, "other_buckets": [],
    }
    objects.append(FoundObject("aws.workspace_role", "IamRole/aic-proj1-notebooks", "aic-proj1-notebooks",
                               role, "the Profile's AwsIamForServiceAccount plugin"))
    return dataclasses.replace(found, objects=tuple(objects))


def _adoptable(discovery: Discovery | None = None) -> StaticFacts:
    return StaticFacts(found={"aic-ns-legacy-ws": discovery or _legacy_discovery()})


def _adopted(discovery: Discovery | None = None) -> StaticFacts:
    """The legacy workspace as the registry records it after its adoption."""
    plan = _plan(kinds.WorkspaceAdopt("aic-ns-legacy-ws"), _adoptable(discovery), RUNBOOK)
    created = {s.key: {"action": s.params["object"], "params": s.params["params"], "adopted": True}
               for s in plan.steps}
    ws = WorkspaceFacts("aic-ns-legacy-ws", "aic-ns-legacy-ws", "legacy.owner@example.com", created=created,
                        pvcs=0)
    return StaticFacts(workspaces={ws.name: ws})


def _owner_left(discovery: Discovery | None = None) -> StaticFacts:
    """The adopted workspace after its owner left and an admin gave it to someone else: the adopted
    login of the old owner stays recorded (``login.remove``)."""
    facts = _adopted(discovery)
    ws = facts.workspaces["aic-ns-legacy-ws"]
    facts.workspaces[ws.name] = dataclasses.replace(ws, owner="carol@example.com")
    return facts


CASES: dict[str, tuple[kinds.RequestKind, StaticFacts | None, CoreSettings]] = {
    "create-gpu": (kinds.WorkspaceCreate("team-a", "Owner@Example.com", gpu=1), None, RUNBOOK),
    "create-cpu-nodegroup": (
        kinds.WorkspaceCreate(
            "cpu-ws", "a@example.com", cpu="4", memory="8Gi", storage="20Gi", pvcs=3,
            instance_type="m5.large", nodes_min=1, nodes_max=3, desired=2,
        ),
        None,
        RUNBOOK,
    ),
    "create-gpu-configmap": (
        kinds.WorkspaceCreate("big", "a@example.com", gpu=4, instance_type="p3.8xlarge"), None, CONFIGMAP
    ),
    "create-external-dex": (kinds.WorkspaceCreate("plain", "a@example.com"), None, EXTERNAL),
    "delete-keep-data": (kinds.WorkspaceDelete("team-a", "team-a"), _facts(), RUNBOOK),
    "delete-purge-login-in-use": (
        kinds.WorkspaceDelete("team-a", "team-a", purge_data=True),
        _facts(users_elsewhere={"owner@example.com"}),
        RUNBOOK,
    ),
    "pin": (kinds.WorkspacePin("team-a"), _facts(_unpinned()), RUNBOOK),
    "share-edit-for-a-week": (
        kinds.Share("team-a", "d@example.com", duration=timedelta(days=7)), _facts(), RUNBOOK
    ),
    "share-lowered-to-view": (kinds.Share("team-a", "b@example.com", role="view"), _facts(), RUNBOOK),
    "unshare-with-tokens": (kinds.Unshare("team-a", "b@example.com"), _facts(), RUNBOOK),
    "unshare-expiry": (
        kinds.Unshare("team-a", "c@example.com", notify=("c@example.com", "owner@example.com")),
        _facts(),
        RUNBOOK,
    ),
    "quota-raise-for-3d": (
        kinds.QuotaChange("team-a", gpu="2", cpu="4", duration=timedelta(days=3)), _facts(), RUNBOOK
    ),
    "quota-revert-unset": (
        kinds.QuotaChange("team-a", cpu="8", notify=("owner@example.com",), unset=("memory",)),
        _facts(),
        RUNBOOK,
    ),
    "token-kubernetes": (kinds.TokenIssue("team-a", ttl=timedelta(hours=1)), _facts(), RUNBOOK),
    "token-pipelines-read-only": (
        kinds.TokenIssue("team-a", ttl=timedelta(hours=8), audience="pipelines", read_only=True),
        _facts(),
        RUNBOOK,
    ),
    "token-revoke": (
        kinds.TokenRevoke("RTOKEN1"), _facts(tokens={"RTOKEN1": ("U1", "team-a")}), RUNBOOK
    ),
    # Cost control (#11): frozen from their first release on.
    "notebook-stop": (kinds.NotebookStop("team-a", "train-1"), _facts(), RUNBOOK),
    "notebook-auto-stop": (
        kinds.NotebookStop("team-a", "train-1", idle_for=timedelta(hours=2)),
        _facts(),
        RUNBOOK,
    ),
    "gpu-down": (kinds.GpuScale("team-a", 0), _facts(), RUNBOOK),
    "gpu-up-within-max": (kinds.GpuScale("team-a", 1), _facts(), RUNBOOK),
    "gpu-up-above-max": (kinds.GpuScale("team-a", 5), _facts(), RUNBOOK),
    "hold-snooze-notebook": (
        kinds.GpuHold("team-a", "notebook:aic-ns-team-a-ws/train-1", duration=timedelta(days=1)),
        _facts(),
        RUNBOOK,
    ),
    "hold-until-workspace": (
        kinds.GpuHold("team-a", "workspace:team-a", until="2026-12-06T09:00:00+01:00"), _facts(), RUNBOOK
    ),
    "resize-nodes": (kinds.WorkspaceResize("team-a", 0, 4), _facts(), RUNBOOK),
    "resize-instance-type": (kinds.WorkspaceResize("team-a", 0, 2, "g5.xlarge"), _facts(), RUNBOOK),
    # Offboarding (#12): frozen from their first release on.
    "transfer-to-contributor": (kinds.WorkspaceTransfer("team-a", "b@example.com"), _facts(), RUNBOOK),
    "transfer-offboarded-owner": (
        kinds.WorkspaceTransfer("team-a", "d@example.com", offboarded=True), _facts(), RUNBOOK
    ),
    # Collaborator logins (#12): frozen from their first release on.
    "share-makes-login": (
        kinds.Share("team-a", "d@example.com"), _facts(without_login={"d@example.com"}), RUNBOOK
    ),
    "share-makes-login-configmap": (
        kinds.Share("team-a", "d@example.com"), _facts(without_login={"d@example.com"}), CONFIGMAP
    ),
    "unshare-removes-login": (
        kinds.Unshare("team-a", "b@example.com"), _facts(_with_collaborator_login()), RUNBOOK
    ),
    "password-reset": (
        kinds.PasswordResetFor("b@example.com"), _facts(logins_made={"b@example.com"}), RUNBOOK
    ),
    # Issue 12: the runbook's nodegroup fields and per-workspace IAM, frozen from their first release.
    "create-runbook-nodegroup": (
        kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1), None, RUNBOOK_STYLE
    ),
    "create-disk-size-only": (kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1), None, DISK_ONLY),
    "create-per-workspace-iam": (kinds.WorkspaceCreate("team-a", "a@example.com", gpu=1), None, ISOLATED),
    "delete-per-workspace-iam": (kinds.WorkspaceDelete("team-a", "team-a"), _facts(_isolated()), ISOLATED),
    # Adoption (issue 12), frozen from its first release on.
    "adopt-runbook": (kinds.WorkspaceAdopt("aic-ns-legacy-ws"), _adoptable(), RUNBOOK),
    "adopt-owner-given": (kinds.WorkspaceAdopt("aic-ns-legacy-ws", "Carol@Example.com"), _adoptable(),
                          RUNBOOK),
    "delete-adopted-named": (
        kinds.WorkspaceDelete("aic-ns-legacy-ws", "aic-ns-legacy-ws", delete_adopted=True), _adopted(),
        RUNBOOK,
    ),
    "gpu-down-adopted": (kinds.GpuScale("aic-ns-legacy-ws", 0), _adopted(), RUNBOOK),
    # The adopted role and the runbook's shapes (issue 12 follow-up), frozen from their first release.
    "adopt-runbook-role-and-shapes": (
        kinds.WorkspaceAdopt("aic-ns-legacy-ws"), _adoptable(_legacy_discovery_shapes()), RUNBOOK
    ),
    "delete-adopted-role-and-shapes": (
        kinds.WorkspaceDelete("aic-ns-legacy-ws", "aic-ns-legacy-ws", delete_adopted=True),
        _adopted(_legacy_discovery_shapes()), RUNBOOK,
    ),
    # Drift (#12): frozen from their first release on.
    "drift-adopt-grant": (
        kinds.DriftAdopt("contributor-added:team-a:d@example.com", "team-a", "grant", "admin@example.com",
                         user="d@example.com", role="view"),
        _facts(),
        RUNBOOK,
    ),
    "drift-cleanup-bucket": (
        kinds.DriftCleanup("bucket:s3-an2-aic-dev-gone", workspace="gone"),
        StaticFacts(orphans={"bucket:s3-an2-aic-dev-gone"}),
        RUNBOOK,
    ),
    # login.remove (#12): frozen from its first release on.
    "login-remove-adopted": (
        kinds.LoginRemove("legacy.owner@example.com"), _owner_left(_legacy_discovery_shapes()), RUNBOOK
    ),
    "login-remove-offboarded-waits": (
        kinds.LoginRemove("legacy.owner@example.com", offboarded=True), _adopted(_legacy_discovery_shapes()),
        RUNBOOK,
    ),
    "drift-cleanup-nodegroup-purge": (
        kinds.DriftCleanup("nodegroup:ng-an2-aicond-gone-ws-standard", purge_data=True),
        StaticFacts(orphans={"nodegroup:ng-an2-aicond-gone-ws-standard"}),
        RUNBOOK,
    ),
    "drift-cleanup-iam": (
        kinds.DriftCleanup("iam:s3-an2-aic-dev-gone"),
        StaticFacts(orphans={"iam:s3-an2-aic-dev-gone"}),
        RUNBOOK,
    ),
    "drift-cleanup-dex": (
        kinds.DriftCleanup("dex:Gone.Owner@example.com"),
        StaticFacts(orphans={"dex:gone.owner@example.com"}),
        RUNBOOK,
    ),
}

GOLDEN: dict[str, str] = {
    "create-cpu-nodegroup": "e4d97b035057fa83c6f035874b2bd2f2c54547a6ca8c95cd86ec7edbfa174c6b",
    "create-external-dex": "9c934df93c4ce00900aea22fe324747f58e22094b56b95f4d1651233bb414f24",
    "create-gpu": "342585f58d3c89e9a38771bacff4da4430c20528eeaccf72c7055cdbe837e3f5",
    "create-gpu-configmap": "379e6a245c518249f60b8baaeab1725cc4a7846c2e30b476bb721948dd34abf2",
    "delete-keep-data": "10e041267c95a7d2f075002beab47fac8efaa0ef67cd476163271e9341600d78",
    "delete-purge-login-in-use": "145f3c6d1669c7ac632e6204e48cbbc2f3c8aacfca62871f3ee87715b21ef0d7",
    "pin": "577b316e4f2fe000bdf8a3241b427742496ef4ed6eb87d51ce55e801e5ae8727",
    "quota-raise-for-3d": "9b8d8030fab9452582b16b4155b6913899abb4edc7e8bfa4b43ffd8e258f3ed6",
    "quota-revert-unset": "fe2b476987ccaf80de46faaad09512c930fdbd2bd71cf88668a11abd5f6cf50b",
    "share-edit-for-a-week": "0ccb13d672bb94119838e3d10447d9617b80486ed1453f4d711f77cb40c0906c",
    "share-lowered-to-view": "173f4f8d9b7a493de7d2838fa72e75dd8b8911c7fe34b55b127a410905d9a9bd",
    "token-kubernetes": "02476b2dab0e811ed87f8c89a08d468ac35b2e6b283e247865df786d2f12cc24",
    "token-pipelines-read-only": "20d6993546869f82949a206a088bffd3f9bc747e8205f5752d95b3920646cc5d",
    "token-revoke": "43090ebcce96ef0811de49e001eb40fb1a568804dcf1187fbf9d24d482ef507b",
    "unshare-expiry": "36de92d54e6ab595caef8a777b84332c447e3d681b37ecca0454264e7fc50221",
    "unshare-with-tokens": "749d978662059e67879768412ed3d74f072dd88930956ba993f8de097e2146fd",
    # Cost control (#11), computed by their first release: a hold has no step (nothing changes in
    # the cluster), so every hold's plan has the empty plan's digest; its effect is its arguments,
    # which the engine checks against the audit log's ``request.created`` (invariant 1).
    "gpu-down": "c639b5fcd9d86d833a5dc42b344f2725388617494809528dc2ba619a958fcd6d",
    "gpu-up-above-max": "2e4547348abf2f5bc962234322dac8e9a6320ec5eeb84eb54f30b16f4c5e3217",
    "gpu-up-within-max": "12c0b0f060aa95b6510e2b74d2c7fb81a0df312335fc961b2b738ced7f2a3355",
    "hold-snooze-notebook": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
    "hold-until-workspace": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
    "notebook-stop": "346a3007d5d26a8d36d2c9c12c88cc76460900944a60cf7e1d169da1fb5cb246",
    # The bot's own stop (auto-stop) with its guard step (kubeflow.notebook.idle), added after
    # an outside review found the stop trusted the database alone.
    "notebook-auto-stop": "525fa49f2065709cfd102d5698eef411b1e8bd4476a45ab2b3d9a8b4fafba824",
    "resize-instance-type": "e671976cb545ed94d1a7d0f50f8699737ddba7bd10ca3384d479f0fd1e4baabb",
    "resize-nodes": "7d796baa4196f84fc770ac1a43bb8a0b047134de2f8d40f897490c3257392028",
    # Offboarding (#12), computed by its first release.
    "transfer-offboarded-owner": "48f0f0db052085634251cd79cf77b51c58ab4755db13160489440005bec1dc52",
    "transfer-to-contributor": "44a31a0fc150960b7c050102d055281d1c15a80b17702a7f529d08ea03743630",
    # Collaborator logins (#12), computed by their first release. A share that makes the grantee's
    # login adds a ``dex.user`` step after the grant; one whose grantee has a login keeps the
    # digest above. A reset has no step (nothing changes until the person presses the button),
    # so its digest is the empty plan's, like a hold's.
    "share-makes-login": "558f5955a866a99ab92429ab97f3b167111fece62e09f33d786e43e9c4fd5ef4",
    "share-makes-login-configmap": "aef080828bfcd165e0ee20c5fec6b97817546f2fec9d3af74012785ad59dc498",
    "unshare-removes-login": "e54688b9d09d45df22bf3475bc8ff91074ff12071a31d6ae5bcd17f48ffb09de",
    "password-reset": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
    "create-runbook-nodegroup": "e14c5257ad7ce9ef071396d77e1e9a3b8ecf51a93a24219c8121a2d53ff90d61",
    "create-disk-size-only": "c413034c0c9d73befb411f6829380dbc47ac4879937f3d14e58c6893bb37eed0",
    "create-per-workspace-iam": "bbe3c35a183836ec8c07bdd9a47c88ff96883eb41266c9734376f2fcb7278796",
    "delete-per-workspace-iam": "ed304d43d40d2613c07830b0a8a0acdc7bb6029b65ac38dc52ad0420a88f7b31",
    # Adoption (issue 12), computed by its first release.
    "adopt-runbook": "3d1e01c2a0b09d1739ca96cc5ba35b0112d5912af56d25f398306d61718baaa3",
    "adopt-owner-given": "daaf0b7164a121c128f2007c118fdbd20af792f7151fa8fdcb25405e0fb57adc",
    # The adopted bucket and nodegroup steps carry the namespace their tags are re-checked against
    # when they run (a hand-over to another team since): moved on purpose, see below.
    "delete-adopted-named": "f4d3ca2f0dd1581a5493d5228efb04fcc8475a644ec8b43519d42ff2ba87b3d2",
    "gpu-down-adopted": "95389eddb2d9dd0348400f52af283c66b01e017cc42ed5546a567352ce963584",
    "drift-adopt-grant": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
    "drift-cleanup-bucket": "ab8580284c211aa52167f5b261a7e3bae92c5fa3fcccc00ef4eaafd26f2a8287",
    "drift-cleanup-iam": "800b5995c237f2f309fe220f7315d87b710b99f6de5bc8ae439490193a12d1a9",
    "drift-cleanup-dex": "f6ed582cf629836dca3caf31aab8e3cdf26b8e48b4fcb0fddde00715adee0dbc",
    "drift-cleanup-nodegroup-purge": "8b1aaf7e665c5aeddc3932e7e62b8b3acd8136c6d2fbaec836071433d063ca92",
    "adopt-runbook-role-and-shapes": "a8c1afb6dd7adc5ef6ae07e52e32525c2754cee6c4ce466e33c3d090e382fa22",
    "delete-adopted-role-and-shapes": "46a0af447d7df81d8fda47aea5359391ca3e18a5e1757ec8edc3f4b775db63a6",
    # login.remove (#12), computed by its first release. One waiting on the access offboarding
    # takes has no step yet: the empty plan's digest, so the re-plan at apply finds the removal.
    "login-remove-adopted": "c4103bcdc643f20861c77fd32e3514086ecfedb54543102064a58e1b156006e0",
    "login-remove-offboarded-waits": "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945",
}
"""Computed by the code of 7b032e4 for ``CASES``, except the cost-control kinds (by their first
release) and ``create-*``: issue 11 added the ``kfbot-notebook-activity`` AuthorizationPolicy step
to ``workspace.create`` on purpose, so a create approved before that upgrade and not yet applied
goes back to pending once (the engine's digest check): its approver never saw the new policy, and
must. Likewise ``delete-adopted-*``: a delete naming ``--delete-adopted`` approved before the
hand-over re-check (the adopted bucket's and nodegroup's ``namespace``) is asked again once; and
every plan with a ``dex.user.remove`` step of a delete, unshare or transfer (``except_namespace``:
the removal re-checks at apply that nobody uses the login, except through the workspace it
leaves), and ``delete-adopted-*`` again for the recorded statements' forms (a statement reusing a
recorded Sid is kept). Nothing of this release was deployed before these changes."""


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_digest_is_the_one_stored_plans_carry(case: str) -> None:
    kind, facts, settings = CASES[case]
    assert _plan(kind, facts, settings).digest() == GOLDEN[case]


def test_every_kind_has_a_golden_plan() -> None:
    assert {type(kind).KIND for kind, _, _ in CASES.values()} == set(kinds.KINDS)
