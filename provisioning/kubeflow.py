"""Live Kubeflow actions: Profiles, contributors (KFAM's pair), quotas, PodDefaults, token accounts.

The objects must be indistinguishable from what Kubeflow's own components make
(``docs/kubeflow-reference.md``), because those components read them back:

* **Profiles** are only created; the profile controller makes the namespace and everything in it.
  The bot waits for the namespace to carry ``owner: <owner>`` (that is when the controller has
  finished the part the next steps need) and reports the controller's ``Failed`` condition in its
  own words. It refuses up front what the controller would refuse: a namespace that exists with
  another (or no) owner, so one tenant can never take over another's namespace.
* **Contributors** are KFAM's RoleBinding + AuthorizationPolicy pair, created directly because KFAM
  is not reachable for a bot in a stock install (only the dashboard's mesh principal may call it).
  Same name (``naming.kfam_binding_name``), same ``user``/``role`` annotations, exactly one subject
  (KFAM's list fails for the whole namespace otherwise), ``apiGroup`` set explicitly. KFAM's names
  are lossy (``a.b@x.com`` and ``a-b@x.com`` collide), so the existing subject is always compared
  before anything is created or deleted. The two halves are never left alone: a missing half is
  repaired on share and its partner removed on unshare.
* **Quotas** change only ``Profile.spec.resourceQuotaSpec`` by merge patch; the controller owns
  ``kf-resource-quota`` and would revert any direct edit.
* **Token accounts** are a ServiceAccount + RoleBinding per token with *no* ``user``/``role``
  annotations, so KFAM and the dashboard never list them as contributors.
* **Identity** (header, prefix, principals) must equal what the profile controller writes into
  ``ns-owner-access-istio``; settings win, else the bot reads the profiles Deployment's environment
  once, else it uses the kubeflow/manifests values.

* **Ownership** survives crashes and retries: every object a step creates (Profile, PodDefault,
  the contributor pair, the token pair) carries the label ``kf-chatops/request: <request id>``
  (``k8s.MARK_KEY``) from its create call on, and a step that finds its object reports
  ``created=True`` only when the label names its own request. A Profile made by an attempt whose
  namespace wait ran out, or by a worker killed before recording, is therefore still undone;
  one made by a human or another request never is. Residual gap: a contributor step that
  *replaces* another role's pair records ``previous_role`` only in its outcome, so a worker killed
  after the old pair was deleted but before the outcome was written loses what to restore on undo
  (the new pair itself is still marked and undone).

Waiting uses the injected ``Clock``: a wait that runs out is a ``TemporaryError`` (the engine
retries within the step's deadline). Nothing talks to the cluster at import or construction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, timedelta
from typing import Any, Final

from kubernetes import client

from handlers import workspace_iam
from handlers.actions import (
    KFAM_IDENTITY_DEFAULTS,
    NOTEBOOK_ACTIVITY_PATHS,
    NOTEBOOK_ACTIVITY_POLICY,
    ActionName,
    AdoptParams,
    ContributorParams,
    ContributorRemoveParams,
    GpuPodsAbsentParams,
    NotebookActivityParams,
    NotebookIdleParams,
    NotebookStopParams,
    PodDefaultParams,
    ProfileOwnerParams,
    ProfileParams,
    ProfileRemoveParams,
    QuotaParams,
    StepParams,
    TokenAccountParams,
    TokenAccountRemoveParams,
)
from handlers.cost.inventory import NotebookActivity
from handlers.errors import InvalidInput, NotFound, PermanentError, TemporaryError
from handlers.naming import kfam_binding_name, show_value
from handlers.plan import JSON, StepOutcome
from handlers.ports import Clock
from handlers.units import parse_quantity
from provisioning import k8s
from provisioning.actions import Action, TypedAction, check_removable, registry_of
from provisioning.k8s import Kube, Obj
from provisioning.records import QuotaState, WorkspaceState
from provisioning.settings import CostProbeSettings, KubeflowSettings

log = logging.getLogger(__name__)

RBAC_GROUP: Final = "rbac.authorization.k8s.io"
QUOTA_NAME: Final = "kf-resource-quota"
TOKEN_ID_LABEL: Final = "kf-chatops/token-id"  # noqa: S105 - a label key, not a secret
CONTRIBUTOR_ROLES: Final = ("edit", "view")
KFAM_ROLES: Final = ("edit", "view", "admin")

# kubeflow/manifests values (applications/profiles/upstream/manager/kustomization.yaml).
STOP_ANNOTATION: Final = "kubeflow-resource-stopped"
"""Kubeflow's stop annotation (notebook controller, jupyter web app)."""
NODEGROUP_LABEL: Final = "eks.amazonaws.com/nodegroup"
GPU: Final = "nvidia.com/gpu"
_RUNNING: Final = "status.phase!=Succeeded,status.phase!=Failed"
"""Field selector for pods that still hold their resources."""


def gpu_request(pod: Mapping[str, Any]) -> int:
    """GPUs a pod asks for: the sum over its containers of ``nvidia.com/gpu`` requests (limits when
    no request is given: Kubernetes then defaults the request to the limit)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {} if isinstance(container, dict) else {}
        value = (resources.get("requests") or {}).get(GPU, (resources.get("limits") or {}).get(GPU, 0))
        try:
            total += int(str(value))
        except ValueError:
            continue  # not a whole count: not something the device plugin hands out
    return total


DEFAULT_HEADER: Final = KFAM_IDENTITY_DEFAULTS["header"]
DEFAULT_PREFIX: Final = KFAM_IDENTITY_DEFAULTS["prefix"]
DEFAULT_INGRESS_PRINCIPAL: Final = KFAM_IDENTITY_DEFAULTS["ingress_principal"]
DEFAULT_KFP_UI_PRINCIPAL: Final = KFAM_IDENTITY_DEFAULTS["kfp_ui_principal"]

_ENV_NAMES: Final = {
    "header": "USERID_HEADER",
    "prefix": "USERID_PREFIX",
    "ingress_principal": "ISTIO_INGRESS_GATEWAY_PRINCIPAL",
    "kfp_ui_principal": "KFP_UI_PRINCIPAL",
}
_DEFAULTS: Final = {
    "header": DEFAULT_HEADER,
    "prefix": DEFAULT_PREFIX,
    "ingress_principal": DEFAULT_INGRESS_PRINCIPAL,
    "kfp_ui_principal": DEFAULT_KFP_UI_PRINCIPAL,
}


_Pair = tuple[Obj | None, Obj | None]
"""A KFAM grant: (RoleBinding, AuthorizationPolicy); either half may be missing."""


@dataclass(frozen=True)
class IdentityConfig:
    """How Kubeflow recognises a user in AuthorizationPolicies, and where each value came from."""

    header: str
    prefix: str
    ingress_principal: str
    kfp_ui_principal: str
    sources: Mapping[str, str] = field(default_factory=dict)
    """field -> ``settings`` | ``profiles-deployment`` | ``default``."""

    @property
    def principals(self) -> list[str]:
        return [self.ingress_principal, self.kfp_ui_principal]


def istio_literal(value: str, what: str) -> str:
    """``value`` if Istio can only read it as itself in an AuthorizationPolicy; else a
    ``PermanentError``. Istio reads ``abc*`` as a prefix match, ``*abc`` as a suffix match and
    ``*`` as "present at all", in header values and principals alike; the bot only ever means one
    exact user or workload, so a ``*`` anywhere is refused (``naming.normalize_email`` already keeps
    it out of emails; this is the last check before the cluster)."""
    if not value or "*" in value:
        raise PermanentError(
            f"Refusing to write {what} {show_value(value)} into an AuthorizationPolicy: Istio would "
            "read '*' as a wildcard and let other users through. Check the email and the identity "
            "settings (KFBOT_USERID_PREFIX, the mesh principals)."
        )
    return value


def _str_map(value: JSON) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _subjects(binding: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = binding.get("subjects")
    return [s for s in value if isinstance(s, dict)] if isinstance(value, list) else []


def _profile_hard(profile: Mapping[str, Any]) -> dict[str, str]:
    spec = profile.get("spec") or {}
    return _str_map((spec.get("resourceQuotaSpec") or {}).get("hard"))


def _profile_owner(profile: Mapping[str, Any]) -> str | None:
    owner = (profile.get("spec") or {}).get("owner") or {}
    name = owner.get("name") if isinstance(owner, dict) else None
    return name if isinstance(name, str) else None


def profile_users(kube: Kube) -> dict[str, dict[str, str]]:
    """user -> {Profile name: ``owner`` or the role they hold} over every Profile in the cluster,
    the bot's or not (a login opens all of them). Two list calls whatever the cluster's size:
    the Profiles, and the RoleBindings of every namespace. A user holds a role in a Profile's
    namespace when they are a ``User`` subject (address case-folded) of any RoleBinding there
    to ``kubeflow-admin|edit|view``: KFAM's annotations are not required (a co-owner KFAM
    wrote with ``role: admin``, a binding made with kubectl), since Kubernetes RBAC and the
    dashboard honour the subject, not the annotation. Group subjects are not expanded (who is
    in a group is the identity provider's, not the cluster's). A read that fails raises: no
    login is judged unused on a guess."""
    uses: dict[str, dict[str, str]] = {}
    names: set[str] = set()
    for profile in kube.list(k8s.PROFILE):
        name = str(profile["metadata"]["name"])
        names.add(name)
        if owner := _profile_owner(profile):
            uses.setdefault(owner.strip().lower(), {})[name] = "owner"
    for binding in kube.list(k8s.ROLE_BINDING):  # every namespace, one call
        namespace = (binding.get("metadata") or {}).get("namespace")
        ref = binding.get("roleRef") or {}
        role = str(ref.get("name") or "").removeprefix("kubeflow-")
        if namespace not in names or ref.get("kind") != "ClusterRole" or role not in KFAM_ROLES \
                or ref.get("name") != f"kubeflow-{role}":
            continue
        for subject in _subjects(binding):
            user = subject.get("name")
            if subject.get("kind") == "User" and isinstance(user, str) and user.strip():
                uses.setdefault(user.strip().lower(), {}).setdefault(str(namespace), role)
    return uses


PROFILE_NAMESPACE_LABEL: Final = ("app.kubernetes.io/part-of", "kubeflow-profile")
"""The namespace label every profile controller install adds (the manifests' and the dashboard's
``namespace-labels.yaml``, kubeflow-reference §1.2)."""


def profile_namespace_problem(profile: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> str | None:
    """Why ``namespace`` is not the one the profile controller made for ``profile`` (None: it is).

    The controller creates a Profile's namespace with annotation ``owner: <spec.owner.name>``, the
    namespace labels and a controller ownerReference to the Profile (kubeflow-reference §1.2), and
    refuses an existing namespace with another owner, leaving only a ``Failed`` condition. Anyone
    may make a Profile (self-registration), so a Profile named after a namespace someone else made
    (``gpu-operator``, the bot's own) proves nothing: only these marks tie the two together."""
    meta = profile.get("metadata") or {}
    name, owner = str(meta.get("name", "")), _profile_owner(profile)
    conditions = (profile.get("status") or {}).get("conditions") or []
    last = conditions[-1] if conditions and isinstance(conditions[-1], Mapping) else {}
    if last.get("type") == "Failed":
        return f"the profile controller refused it ({last.get('message') or 'Failed'})"
    if namespace is None:
        return "the profile controller has made no namespace for it"
    if k8s.annotations_of(namespace).get("owner") != owner or not owner:
        return "its namespace's `owner` annotation does not name the Profile's owner"
    key, value = PROFILE_NAMESPACE_LABEL
    if k8s.labels_of(namespace).get(key) != value:
        return f"its namespace lacks the profile label `{key}: {value}`"
    refs = (namespace.get("metadata") or {}).get("ownerReferences") or []
    if not any(
        isinstance(ref, Mapping) and ref.get("kind") == "Profile" and ref.get("name") == name
        and ref.get("controller") is True and ref.get("uid") == meta.get("uid")
        for ref in refs
    ):
        return "its namespace is not owned by the Profile (no controller ownerReference to it)"
    return None


NotebookActivityProbe = Callable[[str, str, timedelta], NotebookActivity]
"""``(namespace, name, idle window) -> activity now``: ``GpuScanner.notebook_activity``."""


class KubeflowActions:
    def __init__(self, api: client.ApiClient, settings: KubeflowSettings, clock: Clock,
                 bot_principal: str = CostProbeSettings.bot_principal,
                 notebook_activity: NotebookActivityProbe | None = None) -> None:
        self.kube = Kube(api)
        self.notebook_activity = notebook_activity
        self.settings = settings
        self.clock = clock
        self.bot_principal = bot_principal
        self._identity: IdentityConfig | None = None
        self._identity_lock = threading.Lock()

    def registry(self) -> dict[str, Action]:
        return registry_of(
            TypedAction(ProfileParams, self.ensure_profile, self.undo_profile),
            TypedAction(ProfileRemoveParams, self.remove_profile, k8s.no_undo),
            TypedAction(PodDefaultParams, self.ensure_poddefault, self.undo_poddefault),
            TypedAction(ContributorParams, self.ensure_contributor, self.undo_contributor),
            TypedAction(ContributorRemoveParams, self.remove_contributor, k8s.no_undo),
            TypedAction(QuotaParams, self.ensure_quota, self.undo_quota),
            TypedAction(TokenAccountParams, self.ensure_token_account, self.undo_token_account),
            TypedAction(TokenAccountRemoveParams, self.remove_token_account, k8s.no_undo),
            TypedAction(NotebookStopParams, self.stop_notebook, k8s.no_undo),
            TypedAction(GpuPodsAbsentParams, self.check_gpu_pods_absent, k8s.no_undo),
            TypedAction(NotebookActivityParams, self.ensure_notebook_activity, self.undo_notebook_activity),
            TypedAction(NotebookIdleParams, self.check_notebook_idle, k8s.no_undo),
            TypedAction(ProfileOwnerParams, self.ensure_profile_owner, self.undo_profile_owner),
            TypedAction(AdoptParams, self.check_adopted_profile, k8s.no_undo),
        )

    # -- waiting -----------------------------------------------------------------------------

    def _elapsed(self, since: Any) -> float:
        return float((self.clock.now() - since).total_seconds())

    # -- identity ----------------------------------------------------------------------------

    def identity_config(self) -> IdentityConfig:
        """Settings win; else the profiles Deployment's env; else kubeflow/manifests defaults.

        Read once and cached: the values change only when Kubeflow is reinstalled, and every share
        would otherwise read a Deployment. A failure that a retry may fix is raised, not cached,
        because a wrong principal would write AuthorizationPolicies that silently grant nothing."""
        with self._identity_lock:
            if self._identity is None:
                self._identity = self._read_identity()
            return self._identity

    def _read_identity(self) -> IdentityConfig:
        s = self.settings
        from_settings = {"header": s.userid_header, "prefix": s.userid_prefix,
                         "ingress_principal": s.ingress_principal, "kfp_ui_principal": s.kfp_ui_principal}
        values: dict[str, str] = {}
        sources: dict[str, str] = {}
        for key, value in from_settings.items():
            if value is not None:
                values[key], sources[key] = value, "settings"
        missing = [key for key in _ENV_NAMES if key not in values]
        if missing:
            env = self._profiles_env([_ENV_NAMES[key] for key in missing])
            for key in missing:
                if _ENV_NAMES[key] in env:
                    values[key], sources[key] = env[_ENV_NAMES[key]], "profiles-deployment"
                else:
                    values[key], sources[key] = _DEFAULTS[key], "default"
        if not values["header"]:
            raise PermanentError("The identity header (USERID_HEADER) is empty; set KFBOT_USERID_HEADER.")
        return IdentityConfig(header=values["header"], prefix=values["prefix"],
                              ingress_principal=values["ingress_principal"],
                              kfp_ui_principal=values["kfp_ui_principal"], sources=sources)

    def _profiles_env(self, names: list[str]) -> dict[str, str]:
        """The named env values of the profiles Deployment, following ``value``,
        ``valueFrom.configMapKeyRef`` and ``envFrom.configMapRef`` (manifests have used all three)."""
        ns, name = self.settings.profiles_namespace, self.settings.profiles_deployment
        try:
            deployment = self.kube.get(k8s.DEPLOYMENT, name, ns)
        except TemporaryError:
            raise
        except PermanentError as exc:  # typically 403: the bot may not read kubeflow's Deployments
            log.warning("cannot read Deployment %s/%s for identity settings, using defaults: %s", ns, name,
                        exc.user_message)
            return {}
        if deployment is None:
            log.warning("Deployment %s/%s not found; identity settings fall back to kubeflow/manifests "
                        "defaults", ns, name)
            return {}
        template = (deployment.get("spec") or {}).get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        # The manager container is the one that writes ns-owner-access-istio; prefer its values.
        containers = sorted(containers, key=lambda c: c.get("name") != "manager")
        found: dict[str, str] = {}
        config_maps: dict[str, dict[str, str]] = {}

        def config_map(cm_name: str) -> dict[str, str]:
            if cm_name not in config_maps:
                try:
                    cm = self.kube.get(k8s.CONFIG_MAP, cm_name, ns)
                except PermanentError as exc:
                    log.warning("cannot read ConfigMap %s/%s: %s", ns, cm_name, exc.user_message)
                    cm = None
                config_maps[cm_name] = _str_map((cm or {}).get("data"))
            return config_maps[cm_name]

        for container in containers:
            for env in container.get("env") or []:
                key = env.get("name")
                if key not in names or key in found:
                    continue
                if "value" in env:
                    found[key] = str(env.get("value") or "")
                    continue
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef") or {}
                if ref.get("name") and ref.get("key") in config_map(ref["name"]):
                    found[key] = config_map(ref["name"])[ref["key"]]
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or {}
                if not ref.get("name"):
                    continue
                prefix = source.get("prefix") or ""
                for cm_key, value in config_map(ref["name"]).items():
                    key = prefix + cm_key
                    if key in names and key not in found:
                        found[key] = value
        return found

    # -- profile -----------------------------------------------------------------------------

    def ensure_profile(self, params: ProfileParams) -> StepOutcome:
        name, owner = params.name, params.owner
        # The profile controller copies the owner into the namespace's own AuthorizationPolicy.
        istio_literal(owner, "the owner")
        hard = dict(params.hard)
        existing = self.kube.get(k8s.PROFILE, name)
        created = False
        if existing is None:
            namespace = self.kube.get(k8s.NAMESPACE, name)
            if namespace is not None and k8s.annotations_of(namespace).get("owner") != owner:
                # Exactly the controller's rule: it would set a Failed condition and stop.
                raise PermanentError(f"The namespace `{name}` already exists and is not owned by {owner}; "
                                     "Kubeflow will not hand it to a new Profile. Pick another name.")
            spec: dict[str, Any] = {"owner": {"kind": "User", "name": owner}}
            if hard:
                spec["resourceQuotaSpec"] = {"hard": hard}
            if params.aws_iam_role:
                spec["plugins"] = [workspace_iam.profile_plugin(params.aws_iam_role)]
            labels = {**params.labels, **k8s.mark_labels(params)}
            body: Obj = {"metadata": {"name": name, "labels": labels}, "spec": spec}
            existing, created = self.kube.create(k8s.PROFILE, body)
        # Found with this request's mark: an earlier attempt made it (a crash or a wait that ran out
        # before its outcome was recorded), so it is still ours to undo.
        created = created or k8s.marked_by(existing, params)
        if k8s.meta(existing).get("deletionTimestamp"):
            # A delete of this workspace is still finishing; creating now would race the finalizer.
            raise TemporaryError(f"The Profile `{name}` is being deleted; the bot will try again.",
                                 delay=10.0)
        current_owner = _profile_owner(existing)
        if current_owner != owner:
            raise PermanentError(f"A Profile `{name}` already exists, owned by {current_owner or 'nobody'}; "
                                 f"it cannot become {owner}'s workspace.")
        if created and params.aws_iam_role:
            self._converge_role_plugin(existing, params.aws_iam_role)
        try:
            self._await_namespace(name, owner)
        except PermanentError:
            if created:  # the step records nothing when it fails, so nobody else would remove it
                self.kube.delete(k8s.PROFILE, name)
            raise
        return StepOutcome(created=created, details={"profile": name, "owner": owner})

    def _converge_role_plugin(self, profile: Obj, role: str) -> None:
        """A Profile this request made (found again on a retry) that lost the role plugin since,
        say to a hand edit: put the plugin back, keeping any other plugin as it is."""
        plugins = [p for p in (profile.get("spec") or {}).get("plugins") or [] if isinstance(p, dict)]
        wanted = workspace_iam.profile_plugin(role)
        if wanted in plugins:
            return
        others = [p for p in plugins if p.get("kind") != workspace_iam.PLUGIN_KIND]
        self.kube.merge_patch(k8s.PROFILE, str(k8s.meta(profile).get("name")),
                              {"spec": {"plugins": [*others, wanted]}})

    def _await_namespace(self, name: str, owner: str) -> None:
        start = self.clock.now()
        while True:
            namespace = self.kube.get(k8s.NAMESPACE, name)
            if namespace is not None and k8s.annotations_of(namespace).get("owner") == owner:
                return
            profile = self.kube.get(k8s.PROFILE, name)
            if profile is None:
                raise TemporaryError(f"The Profile `{name}` disappeared while the bot waited for its "
                                     "namespace.")
            for condition in (profile.get("status") or {}).get("conditions") or []:
                if isinstance(condition, dict) and condition.get("type") == "Failed":
                    message = k8s.scrub(str(condition.get("message") or "no message"))
                    raise PermanentError(f"Kubeflow's profile controller refused `{name}`: {message}")
            if self._elapsed(start) >= self.settings.namespace_timeout:
                raise TemporaryError(f"The profile controller has not created namespace `{name}` after "
                                     f"{self.settings.namespace_timeout:.0f}s; is it running?", delay=10.0)
            self.clock.sleep(self.settings.poll_interval)

    def undo_profile(self, params: ProfileParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self.kube.delete(k8s.PROFILE, params.name)

    def remove_profile(self, params: ProfileRemoveParams) -> StepOutcome:
        name = params.name
        profile = self.kube.get(k8s.PROFILE, name)
        deleted = False
        if profile is not None and not (profile.get("metadata") or {}).get("deletionTimestamp"):
            # The Profile takes its namespace and everything in it: only the bot's (its create
            # call writes the mark) or one the approved step names as adopted.
            check_removable(f"Kubeflow Profile `{name}`", marked=k8s.MARK_KEY in k8s.labels_of(profile),
                            adopted=params.adopted)
            pvcs = self.kube.list(k8s.PVC, name)
            if pvcs and not params.purge_data:
                raise PermanentError(f"Namespace `{name}` still has {len(pvcs)} PersistentVolumeClaim(s); "
                                     "deleting it would delete their data. Delete them first or use "
                                     "--purge-data.")
            deleted = self.kube.delete(k8s.PROFILE, name)
        if profile is None:
            namespace = self.kube.get(k8s.NAMESPACE, name)
            if namespace is None or not k8s.meta(namespace).get("deletionTimestamp"):
                # No Profile and no namespace being deleted: nothing of ours is left to wait for.
                return StepOutcome(created=False, details={"profile": name, "deleted": False})
        start = self.clock.now()
        while self.kube.get(k8s.NAMESPACE, name) is not None:
            if self._elapsed(start) >= self.settings.namespace_timeout:
                raise TemporaryError(f"Namespace `{name}` is still terminating after "
                                     f"{self.settings.namespace_timeout:.0f}s.", delay=10.0)
            self.clock.sleep(self.settings.poll_interval)
        return StepOutcome(created=deleted, details={"profile": name, "deleted": deleted})

    # -- owner (workspace.transfer) ----------------------------------------------------------

    def ensure_profile_owner(self, params: ProfileOwnerParams) -> StepOutcome:
        """Hand the Profile to ``owner``. The profile controller reconciles a namespace only while
        its ``owner`` annotation equals ``spec.owner.name`` (its takeover guard: otherwise it sets
        Failed and stops), and re-syncs the subjects of ``namespaceAdmin`` and the spec of
        ``ns-owner-access-istio`` but never their annotations; so the annotation is moved first,
        then the Profile, then the bot waits until ``namespaceAdmin`` names the new owner."""
        name, owner = params.name, params.owner
        istio_literal(owner, "the new owner")
        profile = self.kube.get(k8s.PROFILE, name)
        if profile is None:
            raise PermanentError(f"There is no Profile `{name}` to hand over.")
        current = _profile_owner(profile)
        if current not in (params.previous, owner):
            raise PermanentError(f"The Profile `{name}` is owned by {current or 'nobody'} now, not "
                                 f"{params.previous}; nothing was changed.")
        changed = current != owner
        self._set_owner(name, owner)
        self._await_owner(name, owner)
        return StepOutcome(created=changed, details={"profile": name, "previous": params.previous})

    def _set_owner(self, name: str, owner: str) -> None:
        self.kube.merge_patch(k8s.NAMESPACE, name, {"metadata": {"annotations": {"owner": owner}}})
        self.kube.merge_patch(k8s.PROFILE, name, {"spec": {"owner": {"kind": "User", "name": owner}}})

    def _await_owner(self, name: str, owner: str) -> None:
        start = self.clock.now()
        while True:
            binding = self.kube.get(k8s.ROLE_BINDING, "namespaceAdmin", name)
            if binding is not None and [s.get("name") for s in _subjects(binding)] == [owner]:
                return
            if self._elapsed(start) >= self.settings.namespace_timeout:
                raise TemporaryError(f"The profile controller has not handed `{name}` to {owner} after "
                                     f"{self.settings.namespace_timeout:.0f}s; is it running?", delay=10.0)
            self.clock.sleep(self.settings.poll_interval)

    def undo_profile_owner(self, params: ProfileOwnerParams, outcome: StepOutcome) -> None:
        if not outcome.created:
            return
        profile = self.kube.get(k8s.PROFILE, params.name)
        if profile is None or _profile_owner(profile) != params.owner:
            return  # gone, or someone moved it since: not ours to put back
        self._set_owner(params.name, params.previous)

    # -- PodDefault --------------------------------------------------------------------------

    def _poddefault_body(self, params: PodDefaultParams) -> Obj:
        # Only fields of the PodDefault CRD (kubeflow.org/v1alpha1): it has no nodeSelector, and an
        # apiserver prunes what its schema lacks, so the nodegroup is reached by tolerations alone.
        name = params.name
        spec: dict[str, Any] = {"selector": {"matchLabels": {name: "true"}},
                                "desc": params.description or f"Run on nodegroup {name}"}
        if params.tolerations:
            spec["tolerations"] = [dict(t) for t in params.tolerations]
        metadata = {"name": name, "namespace": params.namespace,
                    "labels": {**k8s.MANAGED_BY, **k8s.mark_labels(params)}}
        return {"metadata": metadata, "spec": spec}

    def ensure_poddefault(self, params: PodDefaultParams) -> StepOutcome:
        body = self._poddefault_body(params)
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        existing, made = self.kube.create(k8s.POD_DEFAULT, body)
        if not made and k8s.is_managed(existing) and existing.get("spec") != body["spec"]:
            # Ours but drifted (edited by hand, or an older bot): converge on the planned spec.
            self.kube.merge_patch(k8s.POD_DEFAULT, name, {"spec": body["spec"]}, namespace)
        elif not made and not k8s.is_managed(existing):
            have = (existing.get("spec") or {}).get("tolerations") or []
            if any(t not in have for t in body["spec"].get("tolerations", [])):
                # Left alone, it would not let notebooks onto the tainted nodegroup it is named after.
                raise PermanentError(f"A PodDefault `{name}` that kf-chatops did not make already exists in "
                                     f"`{namespace}` without the tolerations for nodegroup `{name}`; it was "
                                     "left alone. Remove or rename it, then retry.")
        created = made or k8s.marked_by(existing, params)  # made by an earlier attempt of this request
        return StepOutcome(created=created, details={"poddefault": body["metadata"]["name"]})

    def undo_poddefault(self, params: PodDefaultParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self.kube.delete(k8s.POD_DEFAULT, params.name, params.namespace)

    # -- the bot's notebook-activity read (idle-GPU detection) --------------------------------

    def notebook_activity_policy(self, params: NotebookActivityParams) -> Obj:
        """``kfbot-notebook-activity``: ALLOW, no selector (every workload of the namespace, like
        ``ns-owner-access-istio``), one rule: from the bot's principal only, GET only, paths
        ``*/api/kernels`` and ``*/api/terminals``. Istio's classic path matching knows exact,
        prefix (``abc*``), suffix (``*abc``) and presence (``*``) only; ``/notebook/<ns>/*/api/
        kernels`` would be one literal path, and the ``{*}`` templates need Istio 1.22+ (Kubeflow
        1.8 ships 1.17). So the suffix form, the one the profile controller itself writes for the
        notebook controller; the namespace is bounded by where the policy lives. The principal
        goes through ``istio_literal``: a ``*`` in ``KFBOT_BOT_PRINCIPAL`` would admit everyone."""
        principal = istio_literal(self.bot_principal, "the bot's principal (KFBOT_BOT_PRINCIPAL)")
        return {
            "metadata": {"name": NOTEBOOK_ACTIVITY_POLICY, "namespace": params.namespace,
                         "labels": {**k8s.MANAGED_BY, **k8s.mark_labels(params)}},
            "spec": {
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": [principal]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": list(NOTEBOOK_ACTIVITY_PATHS)}}],
                }],
            },
        }

    def ensure_notebook_activity(self, params: NotebookActivityParams) -> StepOutcome:
        body = self.notebook_activity_policy(params)
        namespace = params.namespace
        existing, made = self.kube.create(k8s.AUTHORIZATION_POLICY, body)
        if not made and not k8s.is_managed(existing):
            # Someone else's policy under our name: widening or replacing it is not ours to do.
            raise PermanentError(
                f"An AuthorizationPolicy `{NOTEBOOK_ACTIVITY_POLICY}` that kf-chatops did not make "
                f"already exists in `{namespace}`; it was left alone. Remove or rename it, then retry."
            )
        if not made and existing.get("spec") != body["spec"]:
            # Ours but drifted (edited by hand, or KFBOT_BOT_PRINCIPAL changed): back to the plan.
            self.kube.merge_patch(k8s.AUTHORIZATION_POLICY, NOTEBOOK_ACTIVITY_POLICY,
                                  {"spec": body["spec"]}, namespace)
        created = made or k8s.marked_by(existing, params)
        return StepOutcome(created=created, details={"authorization_policy": NOTEBOOK_ACTIVITY_POLICY})

    def undo_notebook_activity(self, params: NotebookActivityParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self.kube.delete(k8s.AUTHORIZATION_POLICY, NOTEBOOK_ACTIVITY_POLICY, params.namespace)

    # -- contributors (KFAM's pair) ----------------------------------------------------------

    def _pair(self, namespace: str, user: str, role: str,
              mark: Mapping[str, str] | None = None) -> tuple[Obj, Obj]:
        name = kfam_binding_name(user, role)
        def metadata() -> Obj:  # each object gets its own dicts: they are mutated and sent separately
            return {"name": name, "namespace": namespace, "annotations": {"user": user, "role": role},
                    "labels": {**k8s.MANAGED_BY, **(mark or {})}}

        binding: Obj = {
            "metadata": metadata(),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": f"kubeflow-{role}"},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": user}],
        }
        policy: Obj = {"metadata": metadata(), "spec": {"rules": [self._policy_rule(user)]}}
        return binding, policy

    def _policy_rule(self, user: str) -> Obj:
        """The AuthorizationPolicy rule letting ``user`` in, every value checked by ``istio_literal``."""
        identity = self.identity_config()
        value = istio_literal(identity.prefix + user, "the identity header value")
        principals = [istio_literal(p, "the principal") for p in identity.principals]
        return {"when": [{"key": f"request.headers[{identity.header}]", "values": [value]}],
                "from": [{"source": {"principals": principals}}]}

    @staticmethod
    def _subject_names(binding: Obj) -> list[str]:
        return [str(s.get("name")) for s in _subjects(binding)]

    def _lookup(self, namespace: str, user: str) -> tuple[dict[str, _Pair], dict[str, str]]:
        """KFAM pairs under ``user``'s computed names: ``(mine, clashes)``.

        ``mine``: role -> (RoleBinding, AuthorizationPolicy) belonging to ``user`` (either half may
        be None). ``clashes``: role -> who holds that name instead. Looking up by KFAM's computed
        names (not by annotation alone) keeps the owner's ``namespaceAdmin``, which also carries
        ``user``/``role`` annotations, out of reach."""
        mine: dict[str, _Pair] = {}
        clashes: dict[str, str] = {}
        for role in KFAM_ROLES:
            name = kfam_binding_name(user, role)
            binding = self.kube.get(k8s.ROLE_BINDING, name, namespace)
            policy = self.kube.get(k8s.AUTHORIZATION_POLICY, name, namespace)
            if binding is not None and self._subject_names(binding) != [user]:
                clashes[role] = ", ".join(self._subject_names(binding)) or "no subject"
            elif policy is not None and k8s.annotations_of(policy).get("user") not in (None, user):
                clashes[role] = k8s.annotations_of(policy)["user"]
            elif binding is not None or policy is not None:
                mine[role] = (binding, policy)
        return mine, clashes

    @staticmethod
    def _clash_error(namespace: str, user: str, role: str, holder: str) -> PermanentError:
        return PermanentError(
            f"`{kfam_binding_name(user, role)}` in `{namespace}` already grants {role} access to {holder}, "
            f"not {user}. KFAM names fold every non-alphanumeric character to `-`, so these addresses share "
            "one name and Kubeflow cannot hold a grant for both; remove the other grant first or use another "
            "address.")

    def _create_pair(self, namespace: str, user: str, role: str,
                     params: StepParams | None = None) -> tuple[bool, bool]:
        """Create both halves, or converge existing ones; returns which halves this step's request
        created (now, or in an earlier attempt: found carrying its mark)."""
        params = params or StepParams()  # no request: what it makes is not marked as a request's
        binding, policy = self._pair(namespace, user, role, k8s.mark_labels(params))
        name = binding["metadata"]["name"]
        existing_rb, rb_made = self.kube.create(k8s.ROLE_BINDING, binding)
        if not rb_made and (existing_rb.get("roleRef") != binding["roleRef"]
                            or _subjects(existing_rb) != binding["subjects"]
                            or k8s.annotations_of(existing_rb) != binding["metadata"]["annotations"]):
            if self._subject_names(existing_rb) != [user]:
                raise self._clash_error(namespace, user, role, ", ".join(self._subject_names(existing_rb)))
            # roleRef is immutable, so a drifted binding is replaced rather than patched. The
            # replacement keeps the found labels: it stands in for someone else's grant, and this
            # request's mark on it would let a retry claim (and an undo delete) that grant.
            self.kube.delete(k8s.ROLE_BINDING, name, namespace)
            replacement = {**binding, "metadata": {**binding["metadata"],
                                                   "labels": k8s.labels_of(existing_rb)}}
            self.kube.create(k8s.ROLE_BINDING, replacement)
        existing_ap, ap_made = self.kube.create(k8s.AUTHORIZATION_POLICY, policy)
        if not ap_made and existing_ap.get("spec") != policy["spec"]:
            holder = k8s.annotations_of(existing_ap).get("user")
            if holder not in (None, user):
                raise self._clash_error(namespace, user, role, holder)
            # The principals or header changed (settings, a Kubeflow upgrade): the policy follows.
            self.kube.merge_patch(k8s.AUTHORIZATION_POLICY, name, {"spec": policy["spec"]}, namespace)
        # Found carrying this request's mark: made by an earlier attempt of the same step.
        return (rb_made or k8s.marked_by(existing_rb, params),
                ap_made or k8s.marked_by(existing_ap, params))

    def _delete_pair(self, namespace: str, name: str) -> list[str]:
        removed = []
        if self.kube.delete(k8s.ROLE_BINDING, name, namespace):
            removed.append("RoleBinding")
        if self.kube.delete(k8s.AUTHORIZATION_POLICY, name, namespace):
            removed.append("AuthorizationPolicy")
        return removed

    def ensure_contributor(self, params: ContributorParams) -> StepOutcome:
        namespace, user, role = params.namespace, params.user, params.role
        if role not in CONTRIBUTOR_ROLES:
            raise PermanentError(f"A contributor role must be edit or view, not {role}.")
        self._policy_rule(user)  # a value Istio would read as a wildcard is refused before any write
        if self.kube.get(k8s.NAMESPACE, namespace) is None:
            raise PermanentError(f"The workspace namespace `{namespace}` does not exist.")
        mine, clashes = self._lookup(namespace, user)
        # Every check happens before the first write, so a refused share changes nothing.
        if role in clashes:
            raise self._clash_error(namespace, user, role, clashes[role])
        previous = [r for r in CONTRIBUTOR_ROLES if r != role and r in mine]
        for old in previous:  # one grant per (workspace, user): a new role replaces the old pair
            self._delete_pair(namespace, kfam_binding_name(user, old))
        rb_created, ap_created = self._create_pair(namespace, user, role, params)
        halves = [h for h, made in (("RoleBinding", rb_created), ("AuthorizationPolicy", ap_created)) if made]
        details: dict[str, JSON] = {"binding": kfam_binding_name(user, role), "created_halves": halves}
        if previous:
            details["previous_role"] = previous[0]
        return StepOutcome(created=bool(halves or previous), details=details)

    def undo_contributor(self, params: ContributorParams, outcome: StepOutcome) -> None:
        if not outcome.created:
            return
        namespace, user, role = params.namespace, params.user, params.role
        # Both halves go, even one that pre-existed alone: a lone half is never a useful state.
        self._delete_pair(namespace, kfam_binding_name(user, role))
        previous = outcome.details.get("previous_role")
        if isinstance(previous, str) and previous in CONTRIBUTOR_ROLES:
            self._create_pair(namespace, user, previous)

    def remove_contributor(self, params: ContributorRemoveParams) -> StepOutcome:
        namespace, user = params.namespace, params.user
        mine, clashes = self._lookup(namespace, user)
        if clashes:  # deleting by name would remove someone else's grant
            role, holder = next(iter(clashes.items()))
            raise self._clash_error(namespace, user, role, holder)
        removed: dict[str, JSON] = {}
        for role in mine:
            halves = self._delete_pair(namespace, kfam_binding_name(user, role))
            if halves:
                removed[role] = list(halves)
        return StepOutcome(created=bool(removed), details={"removed": removed})

    # -- quota -------------------------------------------------------------------------------

    def _set_hard(self, profile: str, old: Mapping[str, str], new: Mapping[str, str]) -> None:
        # A merge patch merges maps: resources dropped from `hard` must be sent as null.
        patch_hard: dict[str, JSON] = {key: None for key in old if key not in new}
        patch_hard.update(new)
        self.kube.merge_patch(k8s.PROFILE, profile, {"spec": {"resourceQuotaSpec": {"hard": patch_hard}}})

    def ensure_quota(self, params: QuotaParams) -> StepOutcome:
        name, hard = params.profile, params.hard
        profile = self.kube.get(k8s.PROFILE, name)
        if profile is None:
            raise PermanentError(f"There is no Profile `{name}` to change the quota of.")
        previous = _profile_hard(profile)
        if previous == hard:
            return StepOutcome(created=False, details={"previous": dict(previous)})
        self._set_hard(name, previous, hard)
        return StepOutcome(created=True, details={"previous": dict(previous)})

    def undo_quota(self, params: QuotaParams, outcome: StepOutcome) -> None:
        if not outcome.created:
            return
        name = params.profile
        previous = _str_map(outcome.details.get("previous"))
        profile = self.kube.get(k8s.PROFILE, name)
        if profile is None:
            return
        current = _profile_hard(profile)
        if current == previous:
            return
        if current != params.hard:
            # Someone changed it after us: restoring would clobber their change.
            raise PermanentError(f"The quota of `{name}` was changed by someone else since the bot set it; "
                                 "it was not reverted.")
        self._set_hard(name, current, previous)

    # -- notebooks and GPU pods (cost control) -----------------------------------------------

    def stop_notebook(self, params: NotebookStopParams) -> StepOutcome:
        """Kubeflow's Stop, as the jupyter web app does it: a JSON merge patch setting the
        ``kubeflow-resource-stopped`` annotation to the time, ``%Y-%m-%dT%H:%M:%SZ`` in UTC. The
        notebook controller scales the StatefulSet to zero; the volumes stay. A notebook stopped
        already keeps its annotation (and its time): not undone by compensation either, since
        starting a notebook again is its owner's call."""
        name, namespace = params.name, params.namespace
        notebook = self.kube.get(k8s.NOTEBOOK, name, namespace)
        if notebook is None:
            raise NotFound(
                f"There is no notebook `{name}` in `{namespace}` (deleted already?); nothing was stopped."
            )
        since = k8s.annotations_of(notebook).get(STOP_ANNOTATION)
        if since is not None:
            return StepOutcome(created=False, details={"stopped_at": since, "already_stopped": True})
        stamp = self.clock.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.kube.merge_patch(k8s.NOTEBOOK, name, {"metadata": {"annotations": {STOP_ANNOTATION: stamp}}},
                              namespace)
        return StepOutcome(created=True, details={"stopped_at": stamp})

    def check_notebook_idle(self, params: NotebookIdleParams) -> StepOutcome:
        """The guard before an automatic stop: the notebook's server, read now, says it has been
        idle for at least ``idle_seconds``. Busy, unknown (unreadable, no kernels, a non-Jupyter
        server) or no probe at all: refused, nothing stopped. A notebook stopped already passes
        (the stop step keeps it as it is)."""
        name, namespace = params.name, params.namespace
        window = timedelta(seconds=params.idle_seconds)
        notebook = self.kube.get(k8s.NOTEBOOK, name, namespace)
        if notebook is not None and STOP_ANNOTATION in k8s.annotations_of(notebook):
            return StepOutcome(created=False, details={"already_stopped": True})
        if self.notebook_activity is None:
            raise PermanentError(f"Not stopped: the activity of notebook `{name}` in `{namespace}` cannot be "
                                 "read here, and an automatic stop needs it. Nothing was changed.")
        activity = self.notebook_activity(namespace, name, window)
        last = activity.last_activity.isoformat() if activity.last_activity else None
        if activity.state == "idle":
            return StepOutcome(created=False, details={"state": "idle", "last_activity": last})
        why = ("it is in use now" if activity.state == "busy"
               else f"its activity cannot be read now ({k8s.scrub(activity.note) or 'no answer'})")
        raise PermanentError(f"Not stopped automatically: notebook `{name}` in `{namespace}` has not been "
                             f"idle for {params.idle_seconds // 60} minutes, {why}. Nothing was changed.")

    def gpu_pods_on(self, nodegroup: str, namespace: str) -> list[str]:
        """``namespace/name`` of every non-terminated pod that requests ``nvidia.com/gpu`` on the
        nodes of EKS nodegroup ``nodegroup``, and of the pending ones of ``namespace`` (if given).
        One list of the nodegroup's nodes, then one pod list per node (a nodegroup has few)."""
        nodes = self.kube.list(k8s.NODE, label_selector=f"{NODEGROUP_LABEL}={nodegroup}")
        pods: list[Obj] = []
        for node in nodes:
            node_name = k8s.meta(node).get("name")
            if node_name:
                pods += self.kube.list(k8s.POD, field_selector=f"spec.nodeName={node_name},{_RUNNING}")
        if namespace:
            pods += self.kube.list(k8s.POD, namespace, field_selector="status.phase=Pending")
        return sorted(
            {f"{k8s.meta(p).get('namespace')}/{k8s.meta(p).get('name')}" for p in pods if gpu_request(p) > 0}
        )

    def check_gpu_pods_absent(self, params: GpuPodsAbsentParams) -> StepOutcome:
        found = self.gpu_pods_on(params.nodegroup, params.namespace)
        if not found:
            return StepOutcome(created=False, details={"gpu_pods": []})
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        shown = ", ".join(f"`{p}`" for p in found[:5]) + more
        if params.wait:
            raise TemporaryError(f"Waiting for {len(found)} GPU pod(s) on nodegroup `{params.nodegroup}` to "
                                 f"finish: {shown}.", delay=60.0)
        raise PermanentError(f"Not scaled down: {len(found)} GPU pod(s) run or wait for nodegroup "
                             f"`{params.nodegroup}` now: {shown}. Nothing was changed.")

    # -- token accounts ----------------------------------------------------------------------

    def ensure_token_account(self, params: TokenAccountParams) -> StepOutcome:
        namespace, name, role, token_id = params.namespace, params.name, params.role, params.token_id
        if role not in CONTRIBUTOR_ROLES:
            raise PermanentError(f"A token's role must be edit or view, not {role}.")
        object_labels = {**k8s.MANAGED_BY, TOKEN_ID_LABEL: token_id, **k8s.mark_labels(params)}
        account: Obj = {"metadata": {"name": name, "namespace": namespace, "labels": dict(object_labels)}}
        binding: Obj = {
            "metadata": {"name": name, "namespace": namespace, "labels": dict(object_labels)},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": f"kubeflow-{role}"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }
        made = []
        for kind, body in ((k8s.SERVICE_ACCOUNT, account), (k8s.ROLE_BINDING, binding)):
            existing, created = self.kube.create(kind, body)
            if not created and k8s.labels_of(existing).get(TOKEN_ID_LABEL) != token_id:
                raise PermanentError(f"A {kind.kind} `{name}` that is not this token's already exists in "
                                     f"`{namespace}`.")
            if not created and kind is k8s.ROLE_BINDING and existing.get("roleRef") != binding["roleRef"]:
                raise PermanentError(f"The token's RoleBinding `{name}` grants another role; revoke the "
                                     "token.")
            made.append(created)
        # The names embed the token id, so an existing pair labelled with it is this step's own.
        return StepOutcome(created=True, details={"account": name, "token_id": token_id,
                                                  "found_existing": not any(made)})

    def undo_token_account(self, params: TokenAccountParams, outcome: StepOutcome) -> None:
        if outcome.created:
            self._remove_token_account(params.namespace, params.name)

    def remove_token_account(self, params: TokenAccountRemoveParams) -> StepOutcome:
        return self._remove_token_account(params.namespace, params.name)

    def _remove_token_account(self, namespace: str, name: str) -> StepOutcome:
        removed = []
        for kind in (k8s.ROLE_BINDING, k8s.SERVICE_ACCOUNT):
            existing = self.kube.get(kind, name, namespace)
            if existing is None:
                continue
            if TOKEN_ID_LABEL not in k8s.labels_of(existing):
                raise PermanentError(f"{kind.kind} `{name}` in `{namespace}` was not made by the bot for a "
                                     "token; it was left alone.")
            if self.kube.delete(kind, name, namespace):
                removed.append(kind.kind)
        # Deleting the ServiceAccount is what invalidates its tokens.
        return StepOutcome(created=bool(removed), details={"removed": removed})

    # -- read models -------------------------------------------------------------------------

    def pvc_storage(self, namespace: str) -> tuple[int, int]:
        """(PersistentVolumeClaims, bytes they request) in the namespace."""
        claims = self.kube.list(k8s.PVC, namespace)
        total = 0
        for claim in claims:
            resources = (claim.get("spec") or {}).get("resources") or {}
            requested = (resources.get("requests") or {}).get("storage")
            if isinstance(requested, str):
                try:
                    total += int(parse_quantity(requested, "storage"))
                except InvalidInput:
                    continue  # the apiserver validated it; a form we cannot read counts as 0
        return len(claims), total

    def check_adopted_profile(self, params: AdoptParams) -> StepOutcome:
        """``kubeflow.adopt``: the Profile a ``workspace.adopt`` records must still be there; only
        read, never written (adoption records, it changes nothing)."""
        if params.object == ActionName.CONTRIBUTOR:
            return self._check_adopted_contributor(params)
        profile = self.kube.get(k8s.PROFILE, params.name)
        if profile is None:
            raise PermanentError(f"The Profile `{params.name}` is gone; nothing was recorded.")
        problem = profile_namespace_problem(profile, self.kube.get(k8s.NAMESPACE, params.name))
        if problem is not None:
            raise PermanentError(
                f"The Profile `{params.name}` is not adoptable: {problem}; nothing was recorded."
            )
        return StepOutcome(created=False, details={"adopted": True})

    def _check_adopted_contributor(self, params: AdoptParams) -> StepOutcome:
        namespace, user, role = (str(params.params.get(k, "")) for k in ("namespace", "user", "role"))
        if self.contributor_pairs(namespace).get(user) != role:
            raise PermanentError(
                f"The {role} access of {user} in `{namespace}` is gone or changed; nothing was recorded."
            )
        return StepOutcome(created=False, details={"adopted": True})

    def profile_problems(self) -> dict[str, str | None]:
        """Each Profile's name -> why its namespace is not the profile controller's (None: it is)."""
        namespaces = {str(n["metadata"]["name"]): n for n in self.kube.list(k8s.NAMESPACE)}
        problems: dict[str, str | None] = {}
        for profile in self.kube.list(k8s.PROFILE):
            name = str(profile["metadata"]["name"])
            problems[name] = profile_namespace_problem(profile, namespaces.get(name))
        return problems

    def contributor_pairs(self, namespace: str) -> dict[str, str]:
        """user -> role of the contributors KFAM would list in ``namespace`` whose RoleBinding is
        exactly KFAM's (its computed name, one subject who is that user, ``kubeflow-<role>``)."""
        found: dict[str, str] = {}
        for binding in self.kube.list(k8s.ROLE_BINDING, namespace):
            notes = k8s.annotations_of(binding)
            user, role = notes.get("user"), notes.get("role")
            if not user or role not in KFAM_ROLES or role == "admin":
                continue
            if (
                binding["metadata"].get("name") == kfam_binding_name(user, role)
                and self._subject_names(binding) == [user]
                and (binding.get("roleRef") or {}).get("name") == f"kubeflow-{role}"
            ):
                found[user] = role
        return found

    def profile_users(self) -> dict[str, dict[str, str]]:
        """``profile_users`` of this cluster (the in-use check of planning)."""
        return profile_users(self.kube)

    def profiles(self) -> list[tuple[str, str | None, dict[str, str], dict[str, str]]]:
        """(name, owner, quota ``hard``, labels) of every Profile, for adoption's discovery."""
        return [
            (
                str(p["metadata"]["name"]),
                _profile_owner(p),
                _profile_hard(p),
                _str_map((p.get("metadata") or {}).get("labels")),
            )
            for p in self.kube.list(k8s.PROFILE)
        ]

    def profile_iam_role(self, namespace: str) -> str | None:
        """The role the Profile's ``AwsIamForServiceAccount`` plugin names (``spec.awsIamRole``),
        for adoption; None without a Profile or such a plugin."""
        profile = self.kube.get(k8s.PROFILE, namespace)
        for plugin in ((profile or {}).get("spec") or {}).get("plugins") or []:
            if isinstance(plugin, Mapping) and plugin.get("kind") == workspace_iam.PLUGIN_KIND:
                role = (plugin.get("spec") or {}).get("awsIamRole")
                if isinstance(role, str) and role:
                    return role
        return None

    def workspace_state(self, namespace: str) -> WorkspaceState:
        """The live truth about one workspace, for ``/kf workspace show`` and planning facts."""
        profile = self.kube.get(k8s.PROFILE, namespace)
        found = WorkspaceState(
            namespace=namespace,
            profile_exists=profile is not None,
            owner=_profile_owner(profile) if profile is not None else None,
            profile_hard=_profile_hard(profile) if profile is not None else None,
        )
        if self.kube.get(k8s.NAMESPACE, namespace) is None:
            return found
        quota = QuotaState()
        resource_quota = self.kube.get(k8s.RESOURCE_QUOTA, QUOTA_NAME, namespace)
        if resource_quota is not None:
            status = resource_quota.get("status") or {}
            quota = QuotaState(
                hard=_str_map(status.get("hard") or (resource_quota.get("spec") or {}).get("hard")),
                used=_str_map(status.get("used")),
            )
        contributors: dict[str, str] = {}
        for binding in self.kube.list(k8s.ROLE_BINDING, namespace):
            notes = k8s.annotations_of(binding)
            user, role = notes.get("user"), notes.get("role")
            # KFAM's own listing rule (both annotations); the owner's admin binding is not a contributor.
            if user and role and role != "admin":
                contributors[user] = role
        return replace(
            found,
            exists=True,
            quota=quota,
            contributors=contributors,
            pvcs=len(self.kube.list(k8s.PVC, namespace)),
        )
