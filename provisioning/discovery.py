"""What was made by hand: the objects of workspaces the bot does not manage (``workspace.adopt``'s
plan, ``/kf workspace scan``). Reads only; nothing here writes to the cluster or AWS.

A workspace's objects are tied to its Profile (namespace) in one of two ways:

* **by name**: the namespace template (``KFBOT_NAME_NAMESPACE``) read backwards gives the
  project (``aic-ns-{project}-ws`` and ``aic-ns-proj1-ws`` give ``proj1``); the bucket template
  renders from it, and a nodegroup whose name the nodegroup template matches for that project
  (any ``{spec}``) is its own;
* **by tag or label**: a bucket tag, or a nodegroup tag or label, whose value is the namespace
  (runbooks that named the Profile by hand tag the rest with it).

IAM: each shared policy (``KFBOT_IAM_POLICY_ARNS``) whose default version lists a found bucket's
ARNs. Dex: the owner's login, wherever Dex keeps it (a ``staticPasswords`` entry with an inline
``hash:`` or ``hashFromEnv``, or a Password object). Whatever the registry records for a live
workspace, or carries the bot's mark, is managed and never offered.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers import workspace_iam
from handlers.actions import ActionName
from handlers.errors import InvalidInput, KfError, PermanentError
from handlers.naming import RESERVED_NAMESPACES, NamingSettings, names_other_namespace, normalize_email
from handlers.naming import show_value as naming_show
from handlers.plan import JSON, as_list
from handlers.ports import Discovery, FoundObject, UnmanagedGroup
from handlers.settings import CoreSettings
from provisioning.aws import BOT_SID, MARK_TAG, AwsActions, bucket_of, statement_form
from provisioning.dex import DexActions, DexLogin
from provisioning.k8s import MANAGED_BY_KEY, MANAGED_BY_VALUE
from provisioning.kubeflow import KubeflowActions
from provisioning.settings import KubeflowSettings
from provisioning.store import Database

_PROJECT = "project"


def _pattern(template: str, settings: NamingSettings) -> re.Pattern[str]:
    """``template`` as a regex: NAME/project a group (the same value wherever it appears), the
    settings placeholders their values, ``{spec}`` any short name."""
    fixed = {"region_alias": settings.region_alias, "infra": settings.infra, "env": settings.env}
    parts: list[str] = []
    seen = False
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name in ("name", "project"):
            parts.append(f"(?P={_PROJECT})" if seen else f"(?P<{_PROJECT}>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)")
            seen = True
        elif name == "spec":
            parts.append("[A-Za-z0-9-]+")
        elif name is not None:
            parts.append(re.escape(fixed.get(name, "")))
    return re.compile("".join(parts))


def _project(template: str, settings: NamingSettings, value: str) -> str | None:
    match = _pattern(template, settings).fullmatch(value)
    return match.group(_PROJECT) if match and _PROJECT in match.groupdict() else None


def _tagged(values: Mapping[str, str], namespace: str, what: str) -> str | None:
    return next((f"{what} {key}" for key, value in sorted(values.items()) if value == namespace), None)


def _names_other(world: _World, namespace: str, values: Mapping[str, str], what: str) -> str | None:
    return names_other_namespace(namespace, values, world.profiles, what)


def _form(identity: str) -> str:
    """``statement_form`` of a statement given by its ``statement_identity`` (its whole text)."""
    return statement_form(json.loads(identity))


def _is_user_id(value: str) -> bool:
    try:
        return normalize_email(value) == value
    except InvalidInput:
        return False


def _principal_namespace(principal: str) -> str:
    """``cluster.local/ns/<namespace>/sa/<account>`` -> the namespace (empty if not that shape)."""
    parts = principal.split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" else ""


def _nodegroup_params(group: Mapping[str, Any]) -> dict[str, JSON]:
    """A described nodegroup in ``aws.nodegroup``'s params shape (what the registry records)."""
    scaling = group.get("scalingConfig") or {}
    return {
        "cluster": str(group.get("clusterName", "")),
        "name": str(group.get("nodegroupName", "")),
        "instance_types": [str(t) for t in group.get("instanceTypes") or []],
        "ami_type": str(group.get("amiType", "")),
        "scaling": {k: int(scaling.get(k, 0)) for k in ("minSize", "maxSize", "desiredSize")},
        "labels": {str(k): str(v) for k, v in (group.get("labels") or {}).items()},
        "taints": [
            {
                "key": str(t.get("key", "")),
                "value": str(t.get("value", "")),
                "effect": str(t.get("effect", "")),
            }
            for t in group.get("taints") or []
        ],
        "subnets": [str(s) for s in group.get("subnets") or []],
        "node_role": str(group.get("nodeRole", "")),
        "tags": {str(k): str(v) for k, v in (group.get("tags") or {}).items()},
    }


@dataclass
class _World:
    """One read of everything, shared by the questions a discovery or a scan asks."""

    profiles: dict[str, tuple[str | None, dict[str, str], dict[str, str]]]
    buckets: list[tuple[str, dict[str, str]]]
    policies: dict[str, list[tuple[str, str, list[str], str]]]
    """Policy ARN -> its statements (``AwsActions.policy_statements``)."""
    nodegroups: list[Mapping[str, Any]]
    logins: list[DexLogin]
    problems: dict[str, str | None] = field(default_factory=dict)
    """Profile -> why its namespace is not the profile controller's (``profile_namespace_problem``)."""
    managed_namespaces: dict[str, str] = field(default_factory=dict)
    managed_keys: set[str] = field(default_factory=set)


class Discoverer:
    def __init__(
        self, db: Database, core: CoreSettings, kubeflow: KubeflowActions, dex: DexActions, aws: AwsActions
    ) -> None:
        self.db, self.core, self.kubeflow, self.dex, self.aws = db, core, kubeflow, dex, aws
        self._own_arn = ""

    def _world(self) -> _World:
        with self.db.uow() as uow:
            rows = [w for w in uow.registry.list_workspaces() if w.deleted_at is None]
        world = _World(
            profiles={name: (owner, hard, labels) for name, owner, hard, labels in self.kubeflow.profiles()},
            buckets=self.aws.buckets(),
            policies={arn: self.aws.policy_statements(arn) for arn in self.core.workspace.iam_policy_arns},
            nodegroups=[dict(n) for n in self.aws.nodegroups(self.core.workspace.cluster)],
            logins=self.dex.logins() if self.core.workspace.dex_mode != "external" else [],
            problems=self.kubeflow.profile_problems(),
        )
        for row in rows:
            world.managed_namespaces[row.namespace] = row.name
            world.managed_keys.update(row.created)
        return world

    def discover(self, namespace: str) -> Discovery:
        return self._discover(self._world(), namespace)

    def _discover(self, world: _World, namespace: str) -> Discovery:
        naming = self.core.naming
        profile = world.profiles.get(namespace)
        objects: list[FoundObject] = []
        notes: list[str] = []
        owner = profile[0] if profile else None
        refused = self._refused(world, namespace) if profile is not None else None
        if refused is not None:
            return Discovery(namespace, True, owner, world.managed_namespaces.get(namespace), refused=refused)
        if profile is not None:
            objects.append(
                FoundObject(
                    ActionName.PROFILE,
                    f"Profile/{namespace}",
                    namespace,
                    {
                        "name": namespace,
                        "owner": owner or "",
                        "hard": dict(profile[1]),
                        "labels": dict(profile[2]),
                    },
                    "name",
                )
            )
        project = _project(naming.namespace, naming, namespace)
        if owner:
            login = next((x for x in world.logins if x.email == owner.lower()), None)
            if login is not None and f"DexUser/{login.email}" not in world.managed_keys:
                params: dict[str, JSON] = {
                    "email": login.email,
                    "username": login.username,
                    "user_id": login.user_id,
                    "mode": login.mode,
                }
                if login.static_entry:  # how the entry keeps its hash: what its removal must match
                    params["static_entry"] = login.static_entry
                if login.hash_from_env:
                    params["env_key"] = login.hash_from_env
                objects.append(
                    FoundObject(
                        ActionName.DEX_USER,
                        f"DexUser/{login.email}",
                        login.email,
                        params,
                        f"owner's email, {login.how}",
                    )
                )
            elif login is None and self.core.workspace.dex_mode != "external":
                notes.append(f"Dex has no login for the owner {owner}.")
        if profile is not None:
            for user, role in sorted(self.kubeflow.contributor_pairs(namespace).items()):
                if user == owner:
                    continue
                if not _is_user_id(user):  # a grant is keyed by a person; this names none
                    notes.append(f"Not adopted: contributor {naming_show(user)}, not an email address.")
                    continue
                objects.append(
                    FoundObject(
                        ActionName.CONTRIBUTOR,
                        f"Contributor/{user}",
                        user,
                        {"namespace": namespace, "user": user, "role": role},
                        f"KFAM's RoleBinding, role {role}",
                    )
                )
        found_buckets: list[str] = []
        for (bucket, tags), how in self.bucket_candidates(world, namespace, project, notes):
            found_buckets.append(bucket)
            objects.append(
                FoundObject(
                    ActionName.BUCKET,
                    f"Bucket/{bucket}",
                    bucket,
                    {"bucket": bucket, "region": self.core.workspace.region, "tags": dict(tags)},
                    how,
                )
            )
        if not found_buckets:
            notes.append("No S3 bucket was found by the naming template or a tag naming the namespace.")
        for arn, statements in sorted(world.policies.items()):
            resources = {r for _, _, listed_in, _ in statements for r in listed_in}
            listed = [
                r
                for b in found_buckets
                for r in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")
                if r in resources
            ]
            if listed:
                iam_params: dict[str, JSON] = {"policy_arn": arn, "resources": list(listed)}
                # The statements as the runbook wrote them, by effect: a removal takes the ARNs
                # out of the Allow ones and never out of a Deny (that would widen access).
                for effect, key in (("Allow", "statements"), ("Deny", "deny_statements")):
                    labels = [
                        label for label, eff, named, _ in statements
                        if eff == effect and label != BOT_SID and set(listed) & set(named)
                    ]
                    if labels:
                        iam_params[key] = labels
                # A Sid-less statement is recognised later by its whole text, never by position.
                shapes = [
                    shape for label, eff, named, shape in statements
                    if eff == "Allow" and label.startswith("#") and set(listed) & set(named)
                ]
                if shapes:
                    iam_params["statement_shapes"] = shapes
                # A Sid is unique within a policy, not over time: a statement with one is recognised
                # later by its Sid and its form (all but its resources, which may grow).
                forms = [
                    _form(shape) for label, eff, named, shape in statements
                    if eff == "Allow" and not label.startswith("#") and label != BOT_SID
                    and set(listed) & set(named)
                ]
                if forms:
                    iam_params["statement_forms"] = forms
                objects.append(
                    FoundObject(
                        ActionName.IAM_RESOURCES,
                        f"IamPolicy/{arn}",
                        arn,
                        iam_params,
                        "the bucket's ARNs in its default version",
                        tuple(listed),
                    )
                )
        for group, how in self.nodegroup_candidates(world, namespace, project, notes):
            name = str(group.get("nodegroupName", ""))
            objects.append(
                FoundObject(ActionName.NODEGROUP, f"Nodegroup/{name}", name, _nodegroup_params(group), how)
            )
        iam_role: FoundObject | None = None
        if profile is not None:
            try:
                iam_role = self._role(world, namespace, found_buckets)
            except PermanentError as exc:
                # The bot's documented permissions reach only its own kfbot-ws-* roles: a team that
                # did not grant the reads still adopts the rest, and the plan says what was not read.
                notes.append(
                    "The workspace's IAM role was not looked for, so none is adopted "
                    f"({exc.user_message}); docs/DEPLOY.md lists the IAM reads adoption needs."
                )
        if iam_role is not None:
            objects.append(iam_role)
            if iam_role.params.get("other_buckets"):
                notes.append(
                    f"IAM role `{iam_role.name}` also grants bucket(s) of other workspaces "
                    f"({', '.join(map(str, as_list(iam_role.params['other_buckets'])))})."
                )
        return Discovery(
            namespace=namespace,
            profile_exists=profile is not None,
            owner=owner,
            managed_by=world.managed_namespaces.get(namespace),
            objects=tuple(objects),
            notes=tuple(notes),
        )

    def adopted_changes(self, namespace: str) -> dict[str, str]:
        """What ``workspace delete --delete-adopted`` keeps of workspace ``namespace``'s adopted
        objects because of a change since adoption, read now: registry key -> why. A bucket or
        nodegroup now tagged (or labelled) for another namespace, by the rule adoption skips them
        by; a policy's ``Allow`` statement listing the bucket that the adoption did not record."""
        with self.db.uow() as uow:
            rows = [w for w in uow.registry.list_workspaces() if w.deleted_at is None]
        row = next((w for w in rows if w.namespace == namespace), None)
        if row is None:
            return {}
        adopted = {k: e for k, e in row.created.items() if e.get("adopted") is True}
        if not adopted:
            return {}
        world = self._world()
        out: dict[str, str] = {}
        tags_of = {bucket: tags for bucket, tags in world.buckets}
        groups = {str(g.get("nodegroupName", "")): g for g in world.nodegroups}
        for key, entry in adopted.items():
            params = entry.get("params") if isinstance(entry.get("params"), Mapping) else {}
            assert isinstance(params, Mapping)
            action = entry.get("action")
            if action == ActionName.BUCKET and str(params.get("bucket")) in tags_of:
                bucket = str(params.get("bucket"))
                other = _names_other(world, namespace, tags_of[bucket], "tag")
                if other:
                    out[key] = f"kept: S3 bucket `{bucket}`, because {other} (handed over since adoption)"
            elif action == ActionName.NODEGROUP and str(params.get("name")) in groups:
                name = str(params.get("name"))
                group = groups[name]
                tags = {str(k): str(v) for k, v in (group.get("tags") or {}).items()}
                labels = {str(k): str(v) for k, v in (group.get("labels") or {}).items()}
                other = _names_other(world, namespace, tags, "tag") or _names_other(
                    world, namespace, labels, "label"
                )
                if other:
                    out[key] = f"kept: EKS nodegroup `{name}`, because {other} (handed over since adoption)"
            elif action == ActionName.IAM_RESOURCES and str(params.get("policy_arn")) in world.policies:
                arn = str(params.get("policy_arn"))
                resources = {str(r) for r in as_list(params.get("resources") or [])}
                sids = {str(s) for s in as_list(params.get("statements") or [])}
                shapes = {str(s) for s in as_list(params.get("statement_shapes") or [])}
                forms = ({str(s) for s in as_list(params.get("statement_forms") or [])}
                         if "statement_forms" in params else None)
                others = [
                    label for label, eff, named, shape in world.policies[arn]
                    if eff == "Allow" and label != BOT_SID and resources & set(named)
                    and not (
                        label in sids and (forms is None or _form(shape) in forms)
                        if not label.startswith("#") else shape in shapes
                    )
                ]
                if others:
                    out[key] = (
                        f"kept: the bucket in statement(s) {', '.join(f'`{s}`' for s in others)} of IAM "
                        f"policy `{arn.rsplit('/', 1)[-1]}`, because the adoption did not record them "
                        "(written since, or changed): only the recorded statements are edited"
                    )
        return out

    def _refused(self, world: _World, namespace: str) -> str | None:
        """Why the Profile ``namespace`` is never adopted: the bot's own namespace, Dex's or the
        profiles' (whatever the settings name them), or a namespace the profile controller did
        not make for this Profile (``kubeflow.profile_namespace_problem``)."""
        kubeflow: KubeflowSettings = self.kubeflow.settings
        platform = {
            self.dex.settings.namespace: "Dex's namespace",
            kubeflow.profiles_namespace: "Kubeflow's namespace",
            _principal_namespace(self.kubeflow.bot_principal): "the bot's own namespace",
        }
        if namespace in platform:
            return f"it is {platform[namespace]}"
        if namespace in RESERVED_NAMESPACES or namespace.startswith(("kube-", "istio-", "knative-")):
            return "it belongs to the platform"
        return world.problems.get(namespace, "the profile controller has made no namespace for it")

    def _own_role_arn(self) -> str:
        # The bot's credentials do not change role while it runs: asked once (a scan adopts many).
        if not self._own_arn:
            try:
                self._own_arn = self.aws.own_role_arn()
            except KfError:
                # Unknown: the node role check still holds; retried at the next adoption.
                return ""
        return self._own_arn

    def _role(self, world: _World, namespace: str, buckets: list[str]) -> FoundObject | None:
        """The workspace's IAM role (per-workspace IAM, or one made by hand for IRSA): the one the
        Profile's plugin names, else the bot's name for it, else one whose trust policy names
        the namespace's ``default-editor`` (``AwsActions.find_workspace_role``)."""
        plugin_role = self.kubeflow.profile_iam_role(namespace)
        found = self.aws.find_workspace_role(namespace, plugin_role)
        if found is None:
            return None
        name = str(found["name"])
        tags = {str(k): str(v) for k, v in dict(found["tags"]).items()}
        if f"IamRole/{name}" in world.managed_keys or MARK_TAG in tags:
            return None
        # The nodes' role and the bot's own keep the cluster and the bot running: never anyone's to
        # adopt (and so never deleted with a workspace), whatever their trust policy names.
        arn = str(found["arn"])
        if arn and arn in {self.core.workspace.node_role_arn, self._own_role_arn()}:
            return None
        if plugin_role and plugin_role.rsplit("/", 1)[-1] == name:
            how = "the Profile's AwsIamForServiceAccount plugin"
        elif name == workspace_iam.role_name(namespace):
            how = "name"
        else:
            how = f"trust policy naming {workspace_iam.subject(namespace)}"
        granted = [b for b in dict.fromkeys(bucket_of(str(r)) for r in found["bucket_resources"]) if b]
        params: dict[str, JSON] = {
            "name": name,
            "arn": str(found["arn"]),
            "namespace": namespace,
            "service_account": workspace_iam.SERVICE_ACCOUNT,
            "bucket": next((b for b in granted if b in buckets), ""),
            "tags": dict(tags),
            "trusts_namespace": bool(found["trusts_namespace"]),
            "other_buckets": [b for b in granted if b not in buckets],
        }
        attached = [str(a) for a in found.get("attached_policies") or []]
        if attached:
            params["attached_policies"] = attached
        return FoundObject(ActionName.WORKSPACE_ROLE, f"IamRole/{name}", name, params, how)

    def bucket_candidates(
        self, world: _World, namespace: str, project: str | None, notes: list[str] | None = None
    ) -> list[tuple[tuple[str, dict[str, str]], str]]:
        naming = self.core.naming
        out: list[tuple[tuple[str, dict[str, str]], str]] = []
        for bucket, tags in world.buckets:
            if f"Bucket/{bucket}" in world.managed_keys or tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE:
                continue
            how = "name" if project and _project(naming.bucket, naming, bucket) == project else None
            how = how or _tagged(tags, namespace, "tag")
            other = _names_other(world, namespace, tags, "tag")
            if how and other:
                if notes is not None:
                    notes.append(f"Skipped S3 bucket `{bucket}`: {other}.")
            elif how:
                out.append(((bucket, tags), how))
        return out

    def nodegroup_candidates(
        self, world: _World, namespace: str, project: str | None, notes: list[str] | None = None
    ) -> list[tuple[Mapping[str, Any], str]]:
        naming = self.core.naming
        out: list[tuple[Mapping[str, Any], str]] = []
        for group in world.nodegroups:
            name = str(group.get("nodegroupName", ""))
            tags = {str(k): str(v) for k, v in (group.get("tags") or {}).items()}
            if f"Nodegroup/{name}" in world.managed_keys or MARK_TAG in tags:
                continue
            labels = {str(k): str(v) for k, v in (group.get("labels") or {}).items()}
            how = "name" if project and _project(naming.nodegroup, naming, name) == project else None
            how = how or _tagged(tags, namespace, "tag") or _tagged(labels, namespace, "label")
            other = _names_other(world, namespace, tags, "tag") or _names_other(
                world, namespace, labels, "label"
            )
            if how and other:
                if notes is not None:
                    notes.append(f"Skipped EKS nodegroup `{name}`: {other}.")
            elif how:
                out.append((group, how))
        return out

    def scan(self) -> tuple[UnmanagedGroup, ...]:
        """Profiles, nodegroups, buckets and Dex logins the bot does not manage, grouped by the
        workspace they most likely belong to."""
        world = self._world()
        naming = self.core.naming
        groups: list[UnmanagedGroup] = []
        claimed: set[str] = set()
        for namespace in sorted(world.profiles):
            if namespace in world.managed_namespaces or namespace in RESERVED_NAMESPACES:
                continue
            if namespace.startswith("kube-"):
                continue
            found = self._discover(world, namespace)
            if found.refused is not None:  # never offered; `workspace adopt` says why
                continue
            claimed.update(o.key for o in found.objects)
            groups.append(UnmanagedGroup(namespace, namespace, found.objects))
        by_project: dict[str, list[FoundObject]] = {}
        for bucket, tags in world.buckets:
            key = f"Bucket/{bucket}"
            if key in claimed or key in world.managed_keys or tags.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE:
                continue
            label = _project(naming.bucket, naming, bucket) or "unattributed"
            by_project.setdefault(label, []).append(
                FoundObject(
                    ActionName.BUCKET, key, bucket, {"bucket": bucket, "tags": dict(tags)}, "no Profile"
                )
            )
        for group in world.nodegroups:
            name = str(group.get("nodegroupName", ""))
            key = f"Nodegroup/{name}"
            if key in claimed or key in world.managed_keys or MARK_TAG in (group.get("tags") or {}):
                continue
            label = _project(naming.nodegroup, naming, name) or "unattributed"
            by_project.setdefault(label, []).append(
                FoundObject(ActionName.NODEGROUP, key, name, _nodegroup_params(group), "no Profile")
            )
        owners = {row_owner for row_owner, _, _ in world.profiles.values() if row_owner}
        for login in world.logins:
            key = f"DexUser/{login.email}"
            if key in claimed or key in world.managed_keys or login.email in owners:
                continue
            by_project.setdefault("Dex logins", []).append(
                FoundObject(
                    ActionName.DEX_USER,
                    key,
                    login.email,
                    {"email": login.email, "mode": login.mode},
                    login.how,
                )
            )
        for label in sorted(by_project):
            groups.append(UnmanagedGroup(label, None, tuple(by_project[label])))
        return tuple(groups)
