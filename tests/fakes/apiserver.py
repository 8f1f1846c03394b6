"""A small stateful fake Kubernetes apiserver that the official `kubernetes` client talks to over HTTP.

It behaves like kube-apiserver wherever the bot's correctness depends on it (docs/TESTING.md,
"Kubernetes API"): uid / global resourceVersion / generation bookkeeping; 201, 404, 409, 415 and 422
answers with real Status bodies; optimistic concurrency on PUT; merge, JSON and (approximate)
strategic-merge PATCH; finalizers and deletionTimestamp; ownerReference garbage collection; label and
field selectors; TokenRequest; status subresources; discovery; one storage for all versions of a CRD;
validation and pruning against the real CRD schemas of the reference manifests; RBAC defaulting; name
and label validation; and a hook that plays Kubeflow's profile controller.

Deliberate simplifications:
- deleting a Namespace removes it and everything in it at once: no Terminating phase, and the
  finalizers of the objects inside are ignored;
- controllers (profile controller, Deployment rollouts, garbage collector, the ServiceAccount
  "default" of each new namespace) run synchronously, before the answer to the request that
  triggered them is sent, unless a test holds them back (`profile_controller_delay`, `hold_rollouts`);
- no watch, no server-side apply, no managedFields;
- `limit`/`continue` page in key order (namespace, name) like etcd, with an opaque token and
  `remainingItemCount` (left out with a selector, as the real one does), but later pages are cut
  from the current state, not from the first page's snapshot; `compact()` plays an etcd
  compaction, after which an older token answers 410 Expired;
- strategic merge patch is merge patch plus key-merged lists for a few well-known fields.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonpatch
import jsonpointer
import jsonschema
import yaml

JSON = dict[str, Any]

PROFILE_FINALIZER = "profile-finalizer"


def k8s_annotations(obj: JSON) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
KFP_UI_PRINCIPAL = "cluster.local/ns/kubeflow/sa/ml-pipeline-ui"
NOTEBOOK_PRINCIPAL = "cluster.local/ns/kubeflow/sa/notebook-controller-service-account"
# manifests' applications/profiles/upstream/base/namespace-labels.yaml, for when the reference dir is absent
DEFAULT_NAMESPACE_LABELS = {
    "katib.kubeflow.org/metrics-collector-injection": "enabled",
    "serving.kubeflow.org/inferenceservice": "enabled",
    "pipelines.kubeflow.org/enabled": "true",
    "app.kubernetes.io/part-of": "kubeflow-profile",
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
RBAC_GROUP = "rbac.authorization.k8s.io"
_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what k8s' generateName suffix draws from
# Strategic-merge lists whose items are merged by a key instead of replaced (subset of k8s patchMergeKey).
_SMP_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "ownerReferences": "uid",
}
_EXTRA_FIELD_SELECTORS = {
    "pods": ("spec.nodeName", "spec.serviceAccountName", "status.phase"),
    "secrets": ("type",),
    "events": ("involvedObject.kind", "involvedObject.name", "involvedObject.namespace",
               "involvedObject.uid", "reason", "type"),
}
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_MSG_DNS_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    f"validation is '{_DNS_LABEL}')")
_MSG_DNS_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation "
    f"is '{_DNS_SUBDOMAIN}')")
_MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    f"regex used for validation is '{_LABEL_VALUE}')")
_MSG_LABEL_NAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    f"'{_LABEL_NAME}')")


def reference_dir() -> Path:
    env = os.environ.get("KFBOT_REFERENCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "reference"


def crd_schemas_available() -> bool:
    return any((reference_dir() / "kubeflow-manifests").glob("*.crd.yaml"))


def decode_token(token: str) -> JSON:
    """The claims of a token issued by the fake's TokenRequest (not verified: there is no key)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@dataclass(frozen=True)
class Resource:
    group: str
    versions: tuple[str, ...]  # storage version first; it is also the preferred one
    plural: str
    kind: str
    namespaced: bool
    has_status: bool = False  # a real status subresource: writes to the main endpoint keep the stored status
    custom: bool = False  # served from a CRD, so strategic merge patch is refused
    verbs: tuple[str, ...] = _VERBS

    def api_version(self, version: str | None = None) -> str:
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version

    @property
    def resource_name(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_name(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


RESOURCES = (
    NAMESPACES := Resource("", ("v1",), "namespaces", "Namespace", False, has_status=True),
    SERVICEACCOUNTS := Resource("", ("v1",), "serviceaccounts", "ServiceAccount", True),
    Resource("", ("v1",), "configmaps", "ConfigMap", True),
    Resource("", ("v1",), "secrets", "Secret", True),
    Resource("", ("v1",), "pods", "Pod", True, has_status=True),
    Resource("", ("v1",), "nodes", "Node", False, has_status=True),
    Resource("", ("v1",), "persistentvolumeclaims", "PersistentVolumeClaim", True, has_status=True),
    RESOURCEQUOTAS := Resource("", ("v1",), "resourcequotas", "ResourceQuota", True, has_status=True),
    Resource("", ("v1",), "events", "Event", True),
    DEPLOYMENTS := Resource("apps", ("v1",), "deployments", "Deployment", True, has_status=True),
    Resource("apps", ("v1",), "statefulsets", "StatefulSet", True, has_status=True),
    Resource(RBAC_GROUP, ("v1",), "roles", "Role", True),
    ROLEBINDINGS := Resource(RBAC_GROUP, ("v1",), "rolebindings", "RoleBinding", True),
    Resource(RBAC_GROUP, ("v1",), "clusterroles", "ClusterRole", False),
    CLUSTERROLEBINDINGS := Resource(RBAC_GROUP, ("v1",), "clusterrolebindings", "ClusterRoleBinding", False),
    PROFILES := Resource("kubeflow.org", ("v1", "v1beta1"), "profiles", "Profile", False, True, True),
    Resource("kubeflow.org", ("v1alpha1",), "poddefaults", "PodDefault", True, custom=True),
    # the Notebook CRD serves v1 (storage), v1beta1 (what the notebook controller writes) and v1alpha1
    Resource("kubeflow.org", ("v1", "v1beta1", "v1alpha1"), "notebooks", "Notebook", True, True, True),
    AUTHZ := Resource("security.istio.io", ("v1", "v1beta1"), "authorizationpolicies",
                      "AuthorizationPolicy", True, True, True),
    Resource("dex.coreos.com", ("v1",), "passwords", "Password", True, custom=True),
    CRDS := Resource("apiextensions.k8s.io", ("v1",), "customresourcedefinitions",
                     "CustomResourceDefinition", False, has_status=True),
    Resource("coordination.k8s.io", ("v1",), "leases", "Lease", True),
    SSAR := Resource("authorization.k8s.io", ("v1",), "selfsubjectaccessreviews",
                     "SelfSubjectAccessReview", False, verbs=("create",)),
)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    message: str


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int
    body: JSON | None
    retry_after: int | None
    query: re.Pattern[str] | None = None


@dataclass(frozen=True)
class _AccessRule:
    verb: str
    resource: str
    group: str
    namespace: str | None
    subresource: str
    name: str | None

    def matches(self, attrs: JSON) -> bool:
        def ok(rule: str | None, actual: str) -> bool:
            return rule is None or rule in ("*", actual)

        wanted = (self.verb, self.resource, self.group, self.namespace, self.subresource, self.name)
        fields = ("verb", "resource", "group", "namespace", "subresource", "name")
        return all(ok(rule, attrs.get(f) or "") for rule, f in zip(wanted, fields, strict=True))


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details, self.headers = details, headers or {}

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str, kind: str | None = None) -> JSON:
    details: JSON = {"name": name, "kind": kind or res.plural}
    if res.group:
        details["group"] = res.group
    return details


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.resource_name} "{name}" not found', _details(res, name))


def _conflict(res: Resource, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.resource_name} "{name}": {why}',
                    _details(res, name))


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _invalid(kind_name: str, group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    texts = [f"{e.field}: {e.message}" for e in errors]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details: JSON = {"name": name, "kind": kind,
                     "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{kind_name} "{name}" is invalid: {summary}', details)


def _go(value: Any) -> str:
    """A value as Go's field errors print it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value)


def _required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))


def _invalid_value(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {_go(value)}: {detail}")


def _unsupported(path: str, value: Any, supported: list[Any]) -> FieldError:
    return FieldError(path, "FieldValueNotSupported", f"Unsupported value: {_go(value)}: supported values: "
                      + ", ".join(_go(s) for s in supported))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(obj: JSON) -> JSON:
    """What generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386; with strategic=True, lists in _SMP_MERGE_KEYS merge by key and `$` directives are dropped."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif strategic and key in _SMP_MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_list(result.get(key) or [], value, _SMP_MERGE_KEYS[key])
        elif strategic and key == "finalizers" and isinstance(value, list):
            result[key] = list(dict.fromkeys([*(result.get(key) or []), *value]))  # k8s: patchStrategy merge
        else:
            result[key] = merge_patch(result.get(key), value, strategic)
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            return copy.deepcopy(patch)
        index = next((i for i, old in enumerate(merged)
                      if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(merge_patch({}, item, strategic=True))
        else:
            merged[index] = merge_patch(merged[index], item, strategic=True)
    return merged


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_REQUIREMENT = re.compile(
    r"^(?P<not>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?$")


def label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """kubectl's label selector grammar: =, ==, !=, in, notin, key (exists), !key (does not exist)."""
    requirements: list[tuple[str, str, frozenset[str]]] = []
    for part in _split_top_level(text):
        m = _REQUIREMENT.match(part)
        if not m or (m["not"] and (m["op"] or m["setop"])):
            raise _bad_request(f"unable to parse requirement: found '{part}', expected: valid selector")
        if m["op"]:
            op, values = ("!=" if m["op"] == "!=" else "in"), frozenset([m["value"]])
        elif m["setop"]:
            op, values = m["setop"], frozenset(v.strip() for v in m["values"].split(",") if v.strip())
        else:
            op, values = ("!" if m["not"] else "exists"), frozenset()
        requirements.append((op, m["key"], values))

    def matches(labels: dict[str, str]) -> bool:
        for op, key, values in requirements:
            present = key in labels
            if op == "in" and not (present and labels[key] in values):
                return False
            if op in ("!=", "notin") and present and labels[key] in values:
                return False
            if op in ("exists", "!") and present != (op == "exists"):
                return False
        return True

    return matches


def _dig(obj: JSON, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _field_selector(res: Resource, text: str) -> Callable[[JSON], bool]:
    allowed = ("metadata.name", "metadata.namespace", *_EXTRA_FIELD_SELECTORS.get(res.plural, ()))
    requirements: list[tuple[str, str, bool]] = []
    for part in _split_top_level(text):
        m = re.match(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, value = m.groups()
        if path not in allowed:
            raise _bad_request(f"field label not supported: {path}")
        requirements.append((path, value, op != "!="))
    return lambda obj: all((_dig(obj, path) == value) == equal for path, value, equal in requirements)


def _limit(text: str) -> int:
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"invalid limit: {text!r}") from None
    return max(value, 0)


def _prune(value: Any, schema: JSON, root: bool = False) -> None:
    """Structural-schema pruning, as the apiserver does before validation (unknown fields are dropped)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            kept = {"apiVersion", "kind", "metadata"} if root else set()
            for key in [k for k in value if k not in props and k not in kept]:
                del value[key]
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props and key in props:
                _prune(item, props[key])
            elif isinstance(extra, dict):
                _prune(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune(item, schema["items"])


def _schema_errors(validator: jsonschema.Draft7Validator, obj: JSON) -> list[FieldError]:
    errors: list[FieldError] = []
    for err in validator.iter_errors(obj):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        if err.validator == "required":
            missing = [r for r in err.validator_value if r not in err.instance]
            errors += [_required(f"{path}.{r}".lstrip(".")) for r in missing]
        elif err.validator == "type":
            actual = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                      float: "number", type(None): "null"}[type(err.instance)]
            expected = err.validator_value
            expected = expected if isinstance(expected, str) else ",".join(expected)
            errors.append(FieldError(path, "FieldValueTypeInvalid", f'Invalid value: "{actual}": '
                                     f'{path} in body must be of type {expected}: "{actual}"'))
        elif err.validator == "enum":
            errors.append(_unsupported(path, err.instance, list(err.validator_value)))
        elif err.validator == "pattern":
            detail = f"{path} in body should match '{err.validator_value}'"
            errors.append(_invalid_value(path, err.instance, detail))
        else:
            errors.append(_invalid_value(path, err.instance, err.message))
    return sorted(errors, key=lambda e: e.field)


def _validate_metadata(res: Resource, obj: JSON) -> list[FieldError]:
    meta = obj["metadata"]
    name = meta.get("name", "")
    errors: list[FieldError] = []
    if res is NAMESPACES:
        if len(name) > 63 or not re.fullmatch(_DNS_LABEL, name):
            errors.append(_invalid_value("metadata.name", name, _MSG_DNS_LABEL))
    elif res.group == RBAC_GROUP:  # RBAC names are path segments ("namespaceAdmin", "system:...")
        for bad, what in (("/", "may not contain '/'"), ("%", "may not contain '%'")):
            if bad in name:
                errors.append(_invalid_value("metadata.name", name, what))
        if name in (".", ".."):
            errors.append(_invalid_value("metadata.name", name, f"may not be '{name}'"))
    elif len(name) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, name):
        errors.append(_invalid_value("metadata.name", name, _MSG_DNS_SUBDOMAIN))
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label_name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, prefix)):
            errors.append(_invalid_value("metadata.labels", key, "prefix part " + _MSG_DNS_SUBDOMAIN))
        if len(label_name) > 63 or not re.fullmatch(_LABEL_NAME, label_name):
            errors.append(_invalid_value("metadata.labels", key, _MSG_LABEL_NAME))
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(_LABEL_VALUE, value):
            errors.append(_invalid_value("metadata.labels", value, _MSG_LABEL_VALUE))
    return errors


def _admit_rbac(res: Resource, obj: JSON, old: JSON | None) -> list[FieldError]:
    """k8s SetDefaults_RoleBinding / SetDefaults_Subject, plus the validation the bot can trip over."""
    errors: list[FieldError] = []
    role_ref = obj.setdefault("roleRef", {})
    role_ref["apiGroup"] = role_ref.get("apiGroup") or RBAC_GROUP
    kinds = ["ClusterRole"] if res.kind == "ClusterRoleBinding" else ["Role", "ClusterRole"]
    if role_ref.get("kind") not in kinds:
        errors.append(_unsupported("roleRef.kind", role_ref.get("kind", ""), kinds))
    if not role_ref.get("name"):
        errors.append(_required("roleRef.name"))
    for i, subject in enumerate(obj.get("subjects") or []):
        if subject.get("kind") in ("User", "Group") and not subject.get("apiGroup"):
            subject["apiGroup"] = RBAC_GROUP
        if subject.get("kind") not in ("User", "Group", "ServiceAccount"):
            errors.append(_unsupported(f"subjects[{i}].kind", subject.get("kind", ""),
                                       ["ServiceAccount", "User", "Group"]))
    if old is not None and old.get("roleRef") != role_ref:
        errors.append(_invalid_value("roleRef", role_ref, "cannot change roleRef"))
    return errors


class _ListAnswer(dict[str, Any]):
    """A list answer that also carries its JSON, assembled from cached per-object encodings."""

    encoded: bytes = b""


class FakeApiServer:
    """The fake; see the module docstring. Thread-safe: every request runs under one lock."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None
        self._by_path = {(r.group, v, r.plural): r for r in RESOURCES for v in r.versions}
        self._by_kind = {(r.api_version(v), r.kind): r for r in RESOURCES for v in r.versions}
        self._by_plural = {(r.group, r.plural): r for r in RESOURCES}
        ref = reference_dir()
        self._crds: dict[str, JSON] = {}
        for path in sorted((ref / "kubeflow-manifests").glob("*.crd.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    self._crds[doc["metadata"]["name"]] = doc
        self._schemas = {
            (name, v["name"]): v["schema"]["openAPIV3Schema"]
            for name, crd in self._crds.items() for v in crd["spec"]["versions"] if "schema" in v}
        self._validators = {key: jsonschema.Draft7Validator(s) for key, s in self._schemas.items()}
        labels_file = ref / "kubeflow-manifests" / "profiles-namespace-labels.yaml"
        self._default_namespace_labels = (
            {k: str(v) for k, v in (yaml.safe_load(labels_file.read_text()) or {}).items()}
            if labels_file.exists() else dict(DEFAULT_NAMESPACE_LABELS))
        self.reset()

    # ---- lifecycle and test-facing API -------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-apiserver",
                                        daemon=True)  # a short poll interval makes stop() quick
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self._objects: dict[tuple[str, str, str, str], JSON] = {}
            self._sorted_keys: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
            self._encoded: dict[tuple[tuple[str, str, str, str], str], tuple[JSON, bytes]] = {}
            self._rv = 0
            self._compacted_rv = 0
            self._faults: list[_Fault] = []
            self._access_rules: list[_AccessRule] | None = None  # None: allow everything
            self._reconcile_queue: set[str] = set()
            self._delayed: dict[str, int] = {}
            self._in_controller = False
            self.requests: list[RequestRecord] = []
            self.profile_controller = True
            self.profile_controller_delay = 0
            self.hold_rollouts = False
            self.max_token_expiration_seconds: int | None = None
            self.schema_validation = bool(self._validators)
            self.namespace_labels = dict(self._default_namespace_labels)  # the profile controller's file
            # IAM calls the AwsIamForServiceAccount plugin would make (plugin_iam.go, without
            # annotateOnly: GetRole + UpdateAssumeRolePolicy), as (call, role ARN, namespace).
            self.profile_iam_calls: list[tuple[str, str, str]] = []
            self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
            for res in RESOURCES:
                if res.custom:
                    self._seed_crd(res)
            for name in SYSTEM_NAMESPACES:
                self._create(NAMESPACES, "v1", None, {"metadata": {"name": name}})

    def fail_next(self, method: str, path_regex: str, status: int, times: int = 1, body: JSON | None = None,
                  retry_after: int | None = None, query_regex: str | None = None) -> None:
        """Answer the next `times` matching requests (method or "*", re.search on the path) with `status`.

        Note: urllib3 (under the official client) transparently retries idempotent requests answered 429/503
        when a Retry-After header is present, so set `retry_after` only to test exactly that.
        """
        with self._lock:
            fault = _Fault(method.upper(), re.compile(path_regex), status, times, body, retry_after,
                           re.compile(query_regex) if query_regex is not None else None)
            self._faults.append(fault)

    def allow_access(self, verb: str, resource: str, group: str = "", namespace: str | None = None,
                     subresource: str = "", name: str | None = None) -> None:
        """Answer SelfSubjectAccessReviews from an allow-list (from now on) and add a rule to it.

        "*" is a wildcard for verb, resource and group; None matches any namespace or name.
        """
        with self._lock:
            self._access_rules = [*(self._access_rules or []),
                                  _AccessRule(verb, resource, group, namespace, subresource, name)]

    def allow_all_access(self) -> None:
        with self._lock:
            self._access_rules = None

    def deny_all_access(self) -> None:
        with self._lock:
            self._access_rules = []

    def seed(self, obj: JSON) -> JSON:
        """Store `obj` as-is (no validation, defaults or controllers), filling in missing metadata."""
        with self._lock:
            res = self._by_kind.get((obj.get("apiVersion", ""), obj.get("kind", "")))
            if res is None:
                raise KeyError(f"the fake does not serve {obj.get('apiVersion')} {obj.get('kind')}")
            stored = copy.deepcopy(obj)
            stored["apiVersion"] = res.api_version()
            meta = stored.setdefault("metadata", {})
            if res.namespaced:
                meta.setdefault("namespace", "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _rfc3339(self.clock()))
            meta.setdefault("generation", 1)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[self._key(res, meta.get("namespace"), meta["name"])] = stored
            self._sorted_keys.pop((res.group, res.plural), None)
            return self._serve(res, obj["apiVersion"].rpartition("/")[2], stored)

    def create(self, obj: JSON) -> JSON:
        """Create `obj` as a client's POST would (validation and pruning against the CRD schema,
        defaults, controllers), without HTTP: for seeding objects that must be valid."""
        with self._lock:
            version = obj.get("apiVersion", "").rpartition("/")[2]
            res = self._by_kind.get((obj.get("apiVersion", ""), obj.get("kind", "")))
            if res is None:
                raise KeyError(f"the fake does not serve {obj.get('apiVersion')} {obj.get('kind')}")
            namespace = (obj.get("metadata") or {}).get("namespace") if res.namespaced else None
            created = self._create(res, version, namespace, copy.deepcopy(obj))
            self._run_controllers()
            return created

    def compact(self) -> None:
        """Play an etcd compaction: every `continue` token issued so far answers 410 Expired."""
        with self._lock:
            self._compacted_rv = self._rv + 1

    def get(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> JSON | None:
        group, _, version = api_version.rpartition("/")
        res = self._by_path[(group, version, plural)]
        with self._lock:
            obj = self._objects.get(self._key(res, namespace, name))
            return None if obj is None else self._serve(res, version, obj)

    def list(self, api_version: str, plural: str, namespace: str | None = None) -> list[JSON]:
        group, _, version = api_version.rpartition("/")
        res = self._by_path[(group, version, plural)]
        with self._lock:
            return [self._serve(res, version, o) for k, o in sorted(self._objects.items())
                    if k[:2] == (group, plural) and (namespace is None or k[2] == namespace)]

    def run_profile_controller(self) -> None:
        """Let the profile controller catch up now with Profiles held back by `profile_controller_delay`."""
        with self._lock:
            self._reconcile_queue.update(self._delayed)
            self._delayed.clear()
            self._run_controllers()

    def complete_rollouts(self) -> None:
        """Finish every Deployment rollout held back by `hold_rollouts`."""
        with self._lock:
            for key, obj in list(self._objects.items()):
                if key[:2] == ("apps", "deployments"):
                    new = copy.deepcopy(obj)
                    new["status"] = self._rollout_status(new)
                    self._commit_update(DEPLOYMENTS, "v1", obj, new)

    # ---- HTTP entry point ------------------------------------------------------------------------
    def handle(self, method: str, target: str, content_type: str,
               raw: bytes) -> tuple[int, JSON, dict[str, str]]:
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append(RequestRecord(method, path, query, ctype, body))
            for fault in self._faults:
                if (fault.remaining > 0 and fault.method in ("*", method) and fault.path.search(path)
                        and (fault.query is None or fault.query.search(split.query))):
                    fault.remaining -= 1
                    reason = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                              409: "Conflict", 410: "Expired", 422: "Invalid", 429: "TooManyRequests",
                              500: "InternalError",
                              503: "ServiceUnavailable", 504: "Timeout"}.get(fault.status, "Unknown")
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    error = ApiError(fault.status, reason, f"injected fault: {reason}", headers=headers)
                    return fault.status, fault.body or error.status(), headers
            snapshot = None
            if query.get("dryRun") or (isinstance(body, dict) and body.get("dryRun")):
                snapshot = (copy.deepcopy(self._objects), self._rv, set(self._reconcile_queue),
                            dict(self._delayed))
            try:
                if isinstance(body, str):
                    raise _bad_request(f"couldn't get version/kind; json parse error: {body[:80]}")
                code, answer = self._route(method, path, query, ctype, body)
                if snapshot is None:
                    self._run_controllers()
                return code, answer, {}
            except ApiError as err:
                return err.code, err.status(), err.headers
            except Exception as err:  # a bug in the fake must surface as a 500, not a hung client
                return 500, ApiError(500, "InternalError", f"fake apiserver: {err!r}").status(), {}
            finally:
                if snapshot is not None:
                    self._objects, self._rv, self._reconcile_queue, self._delayed = snapshot
                    self._sorted_keys = {}

    def _route(self, method: str, path: str, query: dict[str, str], ctype: str,
               body: Any) -> tuple[int, JSON]:
        if method == "GET" and path in ("/version", "/api", "/apis"):
            return 200, self._discovery_root(path)
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[0] == "apis" and len(parts) == 2 and method == "GET":
            return 200, self._discovery_group(parts[1])
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest and method == "GET":
            return 200, self._discovery_resources(group, version)
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self._by_path.get((group, version, rest[2]))
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        res = self._by_path.get((group, version, rest[0])) if rest else None
        if res is None or len(rest) > 3 or (res.namespaced and namespace is None and len(rest) > 1):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if query.get("watch") in ("1", "true"):
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by the fake apiserver")
        if res is SSAR and method == "POST" and name is None:
            return 201, self._access_review(body or {})
        if sub == "token" and res is SERVICEACCOUNTS and method == "POST" and name and namespace:
            return 201, self._token_request(namespace, name, body or {})
        if sub not in ("", "status") or (sub and method not in ("GET", "PUT", "PATCH")):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                return 200, self._list(res, version, namespace, query)
            if method == "POST":
                return 201, self._create(res, version, namespace, body or {})
            if method == "DELETE":
                return 200, self._delete_collection(res, version, namespace, query)
        elif method == "GET":
            return 200, self._serve(res, version, self._existing(res, namespace, name))
        elif method == "PUT":
            return 200, self._replace(res, version, namespace, name, body or {}, sub == "status")
        elif method == "PATCH":
            return 200, self._patch(res, version, namespace, name, body, ctype, sub == "status")
        elif method == "DELETE":
            return 200, self._delete(res, version, self._existing(res, namespace, name), body or {})
        raise ApiError(405, "MethodNotAllowed",
                       f"the server does not allow this method on {res.resource_name}")

    # ---- storage primitives ----------------------------------------------------------------------
    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (res.group, res.plural, (namespace or "") if res.namespaced else "", name)

    def _serve(self, res: Resource, version: str, obj: JSON) -> JSON:
        served = copy.deepcopy(obj)
        served["apiVersion"], served["kind"] = res.api_version(version), res.kind
        return served

    def _existing(self, res: Resource, namespace: str | None, name: str) -> JSON:
        if res is NAMESPACES and name in self._delayed:  # the profile controller is "slow" (a test switch)
            if self._delayed[name] > 0:
                self._delayed[name] -= 1
            else:
                del self._delayed[name]
                self._reconcile_queue.add(name)
                self._run_controllers()
        obj = self._objects.get(self._key(res, namespace, name))
        if obj is None:
            raise _not_found(res, name)
        return obj

    def _store(self, res: Resource, obj: JSON, old: JSON | None) -> None:
        self._rv += 1
        if old is None:
            self._sorted_keys.pop((res.group, res.plural), None)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[self._key(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])] = obj
        if res is PROFILES:
            self._enqueue_reconcile(obj["metadata"]["name"])
        self._enqueue_owner(obj)
        if res is NAMESPACES and old is None:  # the ServiceAccount controller's "default" SA
            self._create(SERVICEACCOUNTS, "v1", obj["metadata"]["name"], {"metadata": {"name": "default"}})

    def _admit(self, res: Resource, version: str, obj: JSON, old: JSON | None) -> None:
        """Defaulting and validation shared by create, replace and patch."""
        obj["apiVersion"], obj["kind"] = res.api_version(), res.kind
        meta = obj["metadata"]
        for key in ("labels", "annotations", "finalizers", "ownerReferences"):
            if not meta.get(key):
                meta.pop(key, None)
        errors = _validate_metadata(res, obj)
        if res in (ROLEBINDINGS, CLUSTERROLEBINDINGS):
            errors += _admit_rbac(res, obj, old)
        elif res.plural == "secrets":
            data = obj.setdefault("data", {})
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj.setdefault("type", "Opaque")
        elif res is NAMESPACES:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        elif res is RESOURCEQUOTAS:
            hard = (obj.get("spec") or {}).get("hard") or {}
            used = (obj.get("status") or {}).get("used") or {}
            obj["status"] = {"hard": hard, "used": {k: used.get(k, "0") for k in hard}}
        elif res is DEPLOYMENTS:
            obj.setdefault("spec", {}).setdefault("replicas", 1)
            if not self.hold_rollouts and (old is None or old.get("spec") != obj["spec"]):
                generation = 1 if old is None else old["metadata"]["generation"] + 1
                obj["status"] = self._rollout_status(obj, generation)
        crd = f"{res.plural}.{res.group}"
        if self.schema_validation and (crd, version) in self._validators:
            _prune(obj, self._schemas[(crd, version)], root=True)
            errors += _schema_errors(self._validators[(crd, version)], obj)
        if errors:
            raise _invalid(res.kind_name, res.group, res.kind, meta.get("name", ""), errors)

    @staticmethod
    def _rollout_status(obj: JSON, generation: int | None = None) -> JSON:
        replicas = obj["spec"].get("replicas", 1)
        return {"observedGeneration": generation or obj["metadata"]["generation"], "replicas": replicas,
                "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                               {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}

    # ---- verbs -----------------------------------------------------------------------------------
    def _create(self, res: Resource, version: str, namespace: str | None, body: JSON) -> JSON:
        if not isinstance(body, dict) or not isinstance(body.setdefault("metadata", {}), dict):
            raise _bad_request("the body of the request must be a JSON object with object metadata")
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request("the namespace of the provided object does not match the namespace "
                                   "sent on the request")
            meta["namespace"] = namespace
            if self._key(NAMESPACES, None, namespace or "") not in self._objects:
                raise _not_found(NAMESPACES, namespace or "")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
        if not meta.get("name"):
            raise _invalid(res.kind_name, res.group, res.kind, "",
                           [_required("metadata.name", "name or generateName is required")])
        if self._key(res, namespace, meta["name"]) in self._objects:
            raise ApiError(409, "AlreadyExists", f'{res.resource_name} "{meta["name"]}" already exists',
                           _details(res, meta["name"]))
        if res.has_status:
            obj.pop("status", None)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_rfc3339(self.clock()), generation=1)
        self._admit(res, version, obj, None)
        self._store(res, obj, None)
        return self._serve(res, version, obj)

    def _replace(self, res: Resource, version: str, namespace: str | None, name: str, body: JSON,
                 status_only: bool) -> JSON:
        old = self._existing(res, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise _bad_request("the body of the request must be a JSON object")
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise _bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                               f"({name})")
        return self._apply_update(res, version, old, copy.deepcopy(body), status_only)

    def _patch(self, res: Resource, version: str, namespace: str | None, name: str, patch: Any, ctype: str,
               status_only: bool) -> JSON:
        old = self._existing(res, namespace, name)
        current = self._serve(res, version, old)
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                new = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as err:
                raise ApiError(422, "Invalid", str(err)) from err
        elif ctype == "application/merge-patch+json" or (ctype == "application/strategic-merge-patch+json"
                                                         and not res.custom):
            if not isinstance(patch, dict):
                raise _bad_request("the body of a merge patch must be a JSON object")
            new = merge_patch(current, patch, strategic=ctype.startswith("application/strategic"))
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json-patch+json, "
                           "application/merge-patch+json, application/apply-patch+yaml")
        return self._apply_update(res, version, old, new, status_only)

    def _apply_update(self, res: Resource, version: str, old: JSON, new: JSON, status_only: bool) -> JSON:
        wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise _conflict(res, old["metadata"]["name"], "the object has been modified; please apply your "
                            "changes to the latest version and try again")
        if status_only:
            new, status = copy.deepcopy(old), new.get("status")
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        elif res.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        return self._commit_update(res, version, old, new)

    def _commit_update(self, res: Resource, version: str, old: JSON, new: JSON) -> JSON:
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "name", "namespace", "resourceVersion"):
            meta.pop(key, None)
            if key in old_meta:
                meta[key] = old_meta[key]
        added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
        if old_meta.get("deletionTimestamp") and added:
            raise _invalid(res.kind_name, res.group, res.kind, meta["name"], [FieldError(
                "metadata.finalizers", "FieldValueForbidden", "Forbidden: no new finalizers can be added if "
                "the object is being deleted, found new finalizers " + json.dumps(sorted(added)))])
        self._admit(res, version, new, old)
        if new == old:  # like etcd3's GuaranteedUpdate: a no-op write keeps the resourceVersion
            return self._serve(res, version, old)
        if _content(new) != _content(old):
            meta["generation"] = old_meta.get("generation", 0) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(res, new)
        else:
            self._store(res, new, old)
        return self._serve(res, version, new)

    def _delete(self, res: Resource, version: str, obj: JSON, options: JSON) -> JSON:
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        for field_name, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field_name) and pre[field_name] != meta.get(field_name):
                raise _conflict(res, meta["name"], f"Precondition failed: {label} in precondition: "
                                f"{pre[field_name]}, {label} in object meta: {meta.get(field_name)}")
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                marked = copy.deepcopy(obj)
                marked["metadata"].update(deletionTimestamp=_rfc3339(self.clock()),
                                          deletionGracePeriodSeconds=0,
                                          generation=meta.get("generation", 0) + 1)
                self._store(res, marked, obj)
                obj = marked
            return self._serve(res, version, obj)
        self._remove(res, obj)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {**_details(res, meta["name"]), "uid": meta.get("uid")}}

    def _delete_collection(self, res: Resource, version: str, namespace: str | None,
                           query: dict[str, str]) -> JSON:
        listed = self._list(res, version, namespace, query)
        for item in listed["items"]:
            meta = item["metadata"]
            current = self._objects.get(self._key(res, meta.get("namespace"), meta["name"]))
            if current is not None:
                self._delete(res, version, current, {})
        return listed

    def _remove(self, res: Resource, obj: JSON) -> None:
        """Final removal; then the namespace cascade and the garbage collector."""
        meta = obj["metadata"]
        if self._objects.pop(self._key(res, meta.get("namespace"), meta["name"]), None) is None:
            return
        self._sorted_keys.pop((res.group, res.plural), None)
        self._enqueue_owner(obj)
        if res is NAMESPACES:
            for key, inner in list(self._objects.items()):
                if key[2] == meta["name"]:
                    self._remove(self._by_plural[key[:2]], inner)
        live_uids = {o["metadata"].get("uid") for o in self._objects.values()}
        for key, dependent in list(self._objects.items()):
            owners = {ref.get("uid") for ref in dependent["metadata"].get("ownerReferences") or []}
            if meta.get("uid") in owners and not owners & live_uids and key in self._objects:
                self._delete(self._by_plural[key[:2]], "", self._objects[key], {})

    def _list(self, res: Resource, version: str, namespace: str | None, query: dict[str, str]) -> JSON:
        labels_match = label_selector(query.get("labelSelector", ""))
        fields_match = _field_selector(res, query.get("fieldSelector", ""))
        selective = bool(query.get("labelSelector") or query.get("fieldSelector"))
        limit = _limit(query.get("limit", ""))
        list_rv, start = self._rv, None
        if query.get("continue"):
            list_rv, start = self._decode_continue(query["continue"])
        keys = self._keys_of(res)
        first = 0 if start is None else bisect.bisect_right(keys, (res.group, res.plural, *start))
        items: list[JSON] = []
        encoded: list[bytes] = []
        metadata: JSON = {"resourceVersion": str(list_rv)}
        for index in range(first, len(keys)):
            key = keys[index]
            if namespace is not None and key[2] != namespace:
                continue
            obj = self._objects[key]
            if not (labels_match(obj["metadata"].get("labels") or {}) and fields_match(obj)):
                continue
            if limit and len(items) == limit:
                last = items[-1]["metadata"]
                metadata["continue"] = self._encode_continue(list_rv, last.get("namespace", ""), last["name"])
                if not selective:
                    metadata["remainingItemCount"] = sum(
                        1 for k in keys[index:] if namespace is None or k[2] == namespace)
                break
            # A shallow copy: stored objects are replaced, never changed in place, and the page is
            # serialised at once; a deep copy of 20k pods would cost the fake seconds.
            items.append({**obj, "apiVersion": res.api_version(version), "kind": res.kind})
            encoded.append(self._encode(key, version, obj, items[-1]))
        answer = _ListAnswer(apiVersion=res.api_version(version), kind=f"{res.kind}List", metadata=metadata,
                             items=items)
        head = json.dumps({"apiVersion": answer["apiVersion"], "kind": answer["kind"], "metadata": metadata})
        answer.encoded = head[:-1].encode() + b',"items":[' + b",".join(encoded) + b"]}"
        return answer

    def _encode(self, key: tuple[str, str, str, str], version: str, obj: JSON, served: JSON) -> bytes:
        """An object's JSON, cached while the stored object stays the same one (like the watch
        cache's cachingObject): listing 20k pods then costs the fake a join, not a serialisation."""
        cached = self._encoded.get((key, version))
        if cached is not None and cached[0] is obj:
            return cached[1]
        data = json.dumps(served).encode()
        self._encoded[(key, version)] = (obj, data)
        return data

    def _keys_of(self, res: Resource) -> list[tuple[str, str, str, str]]:
        keys = self._sorted_keys.get((res.group, res.plural))
        if keys is None:
            keys = sorted(k for k in self._objects if k[:2] == (res.group, res.plural))
            self._sorted_keys[(res.group, res.plural)] = keys
        return keys

    @staticmethod
    def _encode_continue(list_rv: int, namespace: str, name: str) -> str:
        # the apiserver's token is base64 JSON {"v", "rv", "start"}: opaque to clients
        token = {"v": "meta.k8s.io/v1", "rv": list_rv, "start": f"{namespace}/{name}\u0000"}
        return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            list_rv, start = int(data["rv"]), str(data["start"]).removesuffix("\u0000")
            namespace, _, name = start.rpartition("/")
        except (ValueError, KeyError, TypeError) as err:
            raise _bad_request(f"continue key is not valid: {err}") from err
        if data.get("v") != "meta.k8s.io/v1":
            raise _bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                               "(version meta.k8s.io/v1)")
        if list_rv < self._compacted_rv:
            raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                           "consistent list result. You can start a new list without the continue "
                           "parameter, or use the continue token in this response to retrieve the "
                           "remainder of the results. Continuing with the provided token results in an "
                           "inconsistent list - objects that were created, modified, or deleted between "
                           "the time the first chunk was returned and now may show up in the list.")
        return list_rv, (namespace, name)

    # ---- subresources and reviews ----------------------------------------------------------------
    def _token_request(self, namespace: str, sa_name: str, body: JSON) -> JSON:
        sa = self._existing(SERVICEACCOUNTS, namespace, sa_name)
        spec = dict(body.get("spec") or {})
        seconds = spec.get("expirationSeconds")
        seconds = 3600 if seconds is None else seconds
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise _bad_request("json: cannot unmarshal into Go struct field "
                               "TokenRequestSpec.spec.expirationSeconds")
        errors = []
        if seconds < 600:
            errors.append(_invalid_value("spec.expirationSeconds", seconds,
                                         "may not specify a duration less than 10 minutes"))
        if seconds > 2**32:
            errors.append(_invalid_value("spec.expirationSeconds", seconds,
                                         "may not specify a duration larger than 2^32 seconds"))
        if errors:
            group = "authentication.k8s.io"
            raise _invalid(f"TokenRequest.{group}", group, "TokenRequest", "", errors)
        if self.max_token_expiration_seconds is not None:
            seconds = min(seconds, self.max_token_expiration_seconds)
        spec.update(expirationSeconds=seconds, audiences=spec.get("audiences") or [DEFAULT_AUDIENCE])
        issued = self.clock()
        expires = issued + timedelta(seconds=seconds)
        claims = {"aud": spec["audiences"], "exp": int(expires.timestamp()), "iat": int(issued.timestamp()),
                  "nbf": int(issued.timestamp()), "iss": DEFAULT_AUDIENCE, "jti": str(uuid.uuid4()),
                  "sub": f"system:serviceaccount:{namespace}:{sa_name}",
                  "kubernetes.io": {"namespace": namespace,
                                    "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]}}}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        token = ".".join((b64(json.dumps({"alg": "RS256", "kid": "fake"}).encode()),
                          b64(json.dumps(claims).encode()), b64(secrets.token_bytes(64))))
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {"name": sa_name, "namespace": namespace,
                             "creationTimestamp": _rfc3339(issued)},
                "spec": spec, "status": {"token": token, "expirationTimestamp": _rfc3339(expires)}}

    def _access_review(self, body: JSON) -> JSON:
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes")
        if self._access_rules is None:
            allowed, reason = True, "fake apiserver: all access allowed"
        elif attrs is None:
            allowed, reason = False, "fake apiserver: non-resource URLs are not on the allow-list"
        else:
            rule = next((r for r in self._access_rules if r.matches(attrs)), None)
            allowed = rule is not None
            reason = (f"fake apiserver: allowed by {rule}" if rule
                      else "fake apiserver: no allow-list rule matches")
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "metadata": {"creationTimestamp": None}, "spec": spec,
                "status": {"allowed": allowed, "reason": reason}}

    # ---- discovery -------------------------------------------------------------------------------
    def _discovery_root(self, path: str) -> JSON:
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "gitCommit": "fake",
                    "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                    "compiler": "gc", "platform": "linux/amd64"}
        address = [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}]
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": address}
        groups = dict.fromkeys(r.group for r in RESOURCES if r.group)
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._discovery_group(g) for g in groups]}

    def _discovery_group(self, group: str) -> JSON:
        versions = list(dict.fromkeys(v for r in RESOURCES if r.group == group for v in r.versions))
        if not versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    def _discovery_resources(self, group: str, version: str) -> JSON:
        resources: list[JSON] = []
        for res in RESOURCES:
            if res.group != group or version not in res.versions:
                continue
            resources.append({"name": res.plural, "singularName": res.kind.lower(),
                              "namespaced": res.namespaced, "kind": res.kind, "verbs": list(res.verbs)})
            if res.has_status:
                resources.append({"name": f"{res.plural}/status", "singularName": "", "kind": res.kind,
                                  "namespaced": res.namespaced, "verbs": ["get", "patch", "update"]})
            if res is SERVICEACCOUNTS:
                resources.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
                                  "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                                  "verbs": ["create"]})
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def _seed_crd(self, res: Resource) -> None:
        name = f"{res.plural}.{res.group}"
        # the served resources without a reference CRD get a minimal one, so "is it installed" checks work
        any_object = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        versions = [{"name": v, "served": True, "storage": i == 0, "schema": any_object,
                     **({"subresources": {"status": {}}} if res.has_status else {})}
                    for i, v in enumerate(res.versions)]
        names = {"kind": res.kind, "listKind": f"{res.kind}List", "plural": res.plural,
                 "singular": res.kind.lower()}
        crd = copy.deepcopy(self._crds.get(name)) or {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": res.group, "scope": "Namespaced" if res.namespaced else "Cluster",
                     "names": names, "versions": versions}}
        crd["metadata"].pop("creationTimestamp", None)
        established = {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}
        crd["status"] = {"acceptedNames": crd["spec"]["names"], "storedVersions": [res.versions[0]],
                         "conditions": [established]}
        self.seed(crd)

    # ---- the Kubeflow profile controller (kubeflow-reference §1.2) ---------------------------------
    def _enqueue_reconcile(self, name: str) -> None:
        if not self.profile_controller or self._in_controller:
            return
        profile = self._objects.get(self._key(PROFILES, None, name))
        deleting = bool(profile and profile["metadata"].get("deletionTimestamp"))
        if deleting:
            self._delayed.pop(name, None)
        elif name in self._delayed:
            return
        elif (self.profile_controller_delay > 0 and profile is not None
              and self._key(NAMESPACES, None, name) not in self._objects):
            self._delayed[name] = self.profile_controller_delay
            return
        self._reconcile_queue.add(name)

    def _enqueue_owner(self, obj: JSON) -> None:
        """controller-runtime's Owns(): a change to an owned object re-reconciles its Profile."""
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Profile" and ref.get("controller"):
                self._enqueue_reconcile(ref["name"])

    def _run_controllers(self) -> None:
        while self._reconcile_queue:
            name = self._reconcile_queue.pop()
            self._in_controller = True
            try:
                self._reconcile(name)
            except ApiError as err:
                self._profile_failed(name, err.message)
            finally:
                self._in_controller = False

    def _reconcile(self, name: str) -> None:
        profile = self._objects.get(self._key(PROFILES, None, name))
        if profile is None:
            return
        meta = profile["metadata"]
        if meta.get("deletionTimestamp"):
            if PROFILE_FINALIZER in (meta.get("finalizers") or []):
                done = copy.deepcopy(profile)
                done["metadata"]["finalizers"].remove(PROFILE_FINALIZER)
                self._commit_update(PROFILES, "v1", profile, done)
            return
        spec = profile.get("spec") or {}
        owner_subject = spec.get("owner") or {}
        owner = owner_subject.get("name", "")
        ref = {"apiVersion": PROFILES.api_version(), "kind": "Profile", "name": name, "uid": meta["uid"],
               "controller": True, "blockOwnerDeletion": True}
        namespace = self._objects.get(self._key(NAMESPACES, None, name))
        if namespace is None:
            labels = self._namespace_labels({"istio-injection": "enabled"})
            self._create(NAMESPACES, "v1", None, {"metadata": {
                "name": name, "annotations": {"owner": owner}, "labels": labels, "ownerReferences": [ref]}})
        elif (namespace["metadata"].get("annotations") or {}).get("owner") != owner:
            self._profile_failed(name, f"namespace already exist, but not owned by profile creator {owner}")
            return
        else:
            labels = self._namespace_labels(namespace["metadata"].get("labels") or {})
            if labels != (namespace["metadata"].get("labels") or {}):
                relabelled = copy.deepcopy(namespace)
                relabelled["metadata"]["labels"] = labels
                self._commit_update(NAMESPACES, "v1", namespace, relabelled)
        admin = {"user": owner, "role": "admin"}
        self._ensure(AUTHZ, "v1beta1", name, {
            "metadata": {"name": "ns-owner-access-istio", "annotations": admin, "ownerReferences": [ref]},
            "spec": {"rules": [
                {"when": [{"key": "request.headers[kubeflow-userid]", "values": [owner]}],
                 "from": [{"source": {"principals": [INGRESS_PRINCIPAL, KFP_UI_PRINCIPAL]}}]},
                {"when": [{"key": "source.namespace", "values": [name]}]},
                {"to": [{"operation": {"paths": ["/healthz", "/metrics", "/wait-for-drain"]}}]},
                {"from": [{"source": {"principals": [NOTEBOOK_PRINCIPAL]}}],
                 "to": [{"operation": {"methods": ["GET"], "paths": ["*/api/kernels"]}}]}]}}, ("spec",))
        for sa, role in (("default-editor", "kubeflow-edit"), ("default-viewer", "kubeflow-view")):
            owned = {"name": sa, "ownerReferences": [ref]}
            self._ensure(SERVICEACCOUNTS, "v1", name, {"metadata": owned}, ())
            self._ensure(ROLEBINDINGS, "v1", name, {
                "metadata": owned, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": name}]},
                ("roleRef", "subjects"))
        self._apply_iam_plugins(name, spec)
        self._ensure(ROLEBINDINGS, "v1", name, {
            "metadata": {"name": "namespaceAdmin", "annotations": admin, "ownerReferences": [ref]},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "kubeflow-admin"},
            "subjects": [owner_subject]}, ("roleRef", "subjects"))
        quota_spec = spec.get("resourceQuotaSpec") or {}
        if quota_spec.get("hard"):
            quota_meta = {"name": "kf-resource-quota", "ownerReferences": [ref]}
            self._ensure(RESOURCEQUOTAS, "v1", name, {"metadata": quota_meta, "spec": quota_spec}, ("spec",))
        elif (quota := self._objects.get(self._key(RESOURCEQUOTAS, name, "kf-resource-quota"))) is not None:
            self._delete(RESOURCEQUOTAS, "v1", quota, {})
        profile = self._objects[self._key(PROFILES, None, name)]
        finalizers = profile["metadata"].get("finalizers") or []
        if PROFILE_FINALIZER not in finalizers:
            finalized = copy.deepcopy(profile)
            finalized["metadata"]["finalizers"] = [*finalizers, PROFILE_FINALIZER]
            self._commit_update(PROFILES, "v1", profile, finalized)

    def _apply_iam_plugins(self, name: str, spec: JSON) -> None:
        """ApplyPlugin of ``AwsIamForServiceAccount`` (kubeflow-reference §1.3), on every reconcile:
        annotate ``default-editor`` with the role; unless ``annotateOnly`` (Go's json matches the key
        case-insensitively), the controller would then read and rewrite the role's trust policy,
        which the fake records instead of doing."""
        for plugin in spec.get("plugins") or []:
            if plugin.get("kind") != "AwsIamForServiceAccount":
                continue
            plugin_spec = {str(k).lower(): v for k, v in (plugin.get("spec") or {}).items()}
            role = str(plugin_spec.get("awsiamrole") or "")
            account = self._objects.get(self._key(SERVICEACCOUNTS, name, "default-editor"))
            if account is not None and k8s_annotations(account).get("eks.amazonaws.com/role-arn") != role:
                annotated = copy.deepcopy(account)
                annotated["metadata"].setdefault("annotations", {})["eks.amazonaws.com/role-arn"] = role
                self._commit_update(SERVICEACCOUNTS, "v1", account, annotated)
            if plugin_spec.get("annotateonly") is not True:
                self.profile_iam_calls.append(("iam:GetRole", role, name))
                self.profile_iam_calls.append(("iam:UpdateAssumeRolePolicy", role, name))

    def _namespace_labels(self, labels: dict[str, str]) -> dict[str, str]:
        """setNamespaceLabels: add missing keys, never overwrite, an empty value removes the key."""
        result = dict(labels)
        for key, value in self.namespace_labels.items():
            if not value:
                result.pop(key, None)
            else:
                result.setdefault(key, value)
        return result

    def _ensure(self, res: Resource, version: str, namespace: str, desired: JSON,
                compare: tuple[str, ...]) -> None:
        current = self._objects.get(self._key(res, namespace, desired["metadata"]["name"]))
        if current is None:
            self._create(res, version, namespace, desired)
        elif any(current.get(f) != desired.get(f) for f in compare):
            updated = copy.deepcopy(current)
            updated.update({f: copy.deepcopy(desired[f]) for f in compare})
            self._commit_update(res, version, current, updated)

    def _profile_failed(self, name: str, message: str) -> None:
        profile = self._objects.get(self._key(PROFILES, None, name))
        if profile is None:
            return
        conditions = (profile.get("status") or {}).get("conditions") or []
        condition = {"type": "Failed", "message": message}
        if conditions and conditions[-1] == condition:
            return
        failed = copy.deepcopy(profile)
        failed.setdefault("status", {})["conditions"] = [*conditions, condition]
        self._commit_update(PROFILES, "v1", profile, failed)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: FakeApiServer) -> None:
        super().__init__(address, _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle would add 40 ms each
    server: _HTTPServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        code, body, headers = self.server.fake.handle(self.command, self.path,
                                                      self.headers.get("Content-Type", ""), raw)
        data = body.encoded if isinstance(body, _ListAnswer) and body.encoded else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request log is `FakeApiServer.requests`."""


__all__ = ["RESOURCES", "ApiError", "FakeApiServer", "RequestRecord", "Resource", "crd_schemas_available",
           "decode_token", "label_selector", "merge_patch", "reference_dir"]
