"""Thin typed helpers over the official ``kubernetes`` client, and the one place its errors are translated.

Why this module exists:

* **One error boundary.** ``ApiException`` and urllib3's connection errors must never reach the
  engine or a Slack message: a raw Status body can quote object contents, and a stack trace is
  not an explanation. Every call in ``Kube`` goes through ``Kube._call``, which hands failures to
  ``translate``; nothing else in the bot catches ``ApiException``. The mapping follows what a retry
  can change: 429/5xx/connection trouble are ``TemporaryError`` (honouring ``Retry-After``);
  401/403 say which permission the bot's ServiceAccount lacks; 400/422 carry the apiserver's own
  message, truncated and scrubbed of anything that looks like a hash or a token; 404 and 409 get
  their own subclasses (``Missing``, ``Conflict``) because callers decide what they mean
  (absent = done for a delete, AlreadyExists = found for a create, a stale write = re-read).
* **Plain dicts, one shape.** Built-in kinds go through the typed APIs (``CoreV1Api``…) and
  custom resources through ``CustomObjectsApi``, but always with ``_preload_content=False`` and
  parsed as JSON: every object is then the same camelCase dict the apiserver sent, custom or not,
  which is what the Kubeflow reference describes field for field, and the client's model
  deserialisation (which differs between client versions 35-37) never runs.
* **Explicit patch types.** A dict body to a core ``patch_*`` goes out as strategic-merge unless
  told otherwise, and custom resources reject strategic-merge with 415; ``merge_patch`` always
  sends ``application/merge-patch+json`` (RFC 7386: ``None`` deletes a key).
* **No I/O at import or construction.** ``Kube`` only wraps the ``ApiClient`` it is given;
  ``api_client_from_environment`` (called by the composition root) is the only loader of
  kubeconfig or in-cluster credentials.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from handlers import errors
from handlers.actions import StepParams
from handlers.errors import PermanentError, TemporaryError
from handlers.plan import JSON, StepOutcome

log = logging.getLogger(__name__)

Obj = dict[str, Any]
"""A Kubernetes object as the apiserver sends it (camelCase JSON)."""

MANAGED_BY_KEY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "kf-chatops"
MANAGED_BY: Final[Mapping[str, str]] = {MANAGED_BY_KEY: MANAGED_BY_VALUE}

_MESSAGE_LIMIT = 240
# Things that must never travel from a Status message into Slack: bcrypt hashes, JWTs (tokens),
# and long base64 runs (Secret data).
_SECRET_LIKE = re.compile(
    r"\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|[A-Za-z0-9+/=_-]{40,}"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Kind:
    """A resource type: enough to address it through the typed API or ``CustomObjectsApi``."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    typed_api: str = ""
    """Class name in ``kubernetes.client`` for built-in kinds; empty for custom resources."""
    snake: str = ""
    """The client's method suffix (``read_namespaced_<snake>``) for built-in kinds."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """How RBAC names it (``rolebindings.rbac.authorization.k8s.io``), for permission messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACE = Kind("Namespace", "", "v1", "namespaces", False, "CoreV1Api", "namespace")
SERVICE_ACCOUNT = Kind("ServiceAccount", "", "v1", "serviceaccounts", True, "CoreV1Api", "service_account")
CONFIG_MAP = Kind("ConfigMap", "", "v1", "configmaps", True, "CoreV1Api", "config_map")
SECRET = Kind("Secret", "", "v1", "secrets", True, "CoreV1Api", "secret")
PVC = Kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", True, "CoreV1Api",
           "persistent_volume_claim")
RESOURCE_QUOTA = Kind("ResourceQuota", "", "v1", "resourcequotas", True, "CoreV1Api", "resource_quota")
ROLE_BINDING = Kind("RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings", True,
                    "RbacAuthorizationV1Api", "role_binding")
DEPLOYMENT = Kind("Deployment", "apps", "v1", "deployments", True, "AppsV1Api", "deployment")
PROFILE = Kind("Profile", "kubeflow.org", "v1", "profiles", False)
POD_DEFAULT = Kind("PodDefault", "kubeflow.org", "v1alpha1", "poddefaults", True)
AUTHORIZATION_POLICY = Kind("AuthorizationPolicy", "security.istio.io", "v1beta1", "authorizationpolicies",
                            True)
DEX_PASSWORD = Kind("Password", "dex.coreos.com", "v1", "passwords", True)
NOTEBOOK = Kind("Notebook", "kubeflow.org", "v1", "notebooks", True)
NODE = Kind("Node", "", "v1", "nodes", False, "CoreV1Api", "node")
POD = Kind("Pod", "", "v1", "pods", True, "CoreV1Api", "pod")


# -- errors ------------------------------------------------------------------------------------


class Missing(PermanentError):
    """404 on a write: the object (or its namespace) is not there. Reads and deletes never raise it."""


class Conflict(TemporaryError):
    """409: ``AlreadyExists`` on a create, or a write carrying a stale resourceVersion.

    A ``TemporaryError`` because, left uncaught, a re-read and retry is the right answer."""

    def __init__(self, user_message: str, *, reason: str) -> None:
        super().__init__(user_message, delay=0.5)
        self.reason = reason


def _where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


def status_message(exc: ApiException) -> str:
    """The apiserver's Status ``message``, one line, truncated, with secret-looking runs removed."""
    raw = exc.body
    text = ""
    if raw:
        try:
            body = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
            text = str(body.get("message", "")) if isinstance(body, dict) else ""
        except ValueError:
            text = ""  # not a Status object (a proxy's HTML page): say nothing rather than quote it
    return scrub(text) or scrub(str(exc.reason or "")) or "no details"


def scrub(text: str) -> str:
    """One line, at most a few hundred characters, with hash-, token- and base64-like runs removed:
    safe to put in front of a user whatever the apiserver or a controller wrote."""
    text = _SECRET_LIKE.sub("[redacted]", _CONTROL.sub(" ", text)).strip()
    return text[: _MESSAGE_LIMIT - 1] + "…" if len(text) > _MESSAGE_LIMIT else text


def _status_reason(exc: ApiException) -> str:
    try:
        raw = exc.body
        body = json.loads(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or ""))
        return str(body.get("reason", "")) if isinstance(body, dict) else ""
    except ValueError:
        return ""


def _retry_after(exc: ApiException, default: float) -> float:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return min(max(float(value), 0.5), 600.0) if value is not None else default
    except ValueError:
        return default  # an HTTP-date: rare from the apiserver; the default backoff is fine


def translate(exc: Exception, *, verb: str, kind: Kind, namespace: str | None, name: str | None) -> Exception:
    """Map a client failure to our error types; the only place that inspects ``ApiException``."""
    what = f"{kind.kind} {name}" if name else kind.resource
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return TemporaryError(f"The Kubernetes API could not be reached ({type(exc).__name__}) while trying "
                              f"to {verb} {what}.", delay=5.0)
    if not isinstance(exc, ApiException):
        return exc
    status = int(exc.status or 0)
    if status == 0:  # the client wraps SSL and protocol failures this way
        return TemporaryError(f"The Kubernetes API connection failed while trying to {verb} {what}.",
                              delay=5.0)
    if status == 404 and verb == "create" and namespace:
        return Missing(f"Cannot create {what}: namespace {namespace} does not exist (any more).")
    if status == 404:
        return Missing(f"{what} {_where(namespace)} does not exist.")
    if status == 409:
        reason = _status_reason(exc) or "Conflict"
        return Conflict(f"{what} {_where(namespace)} changed or exists already ({reason}).", reason=reason)
    if status in (401, 403):
        return PermanentError(f"The bot's ServiceAccount may not {verb} {kind.resource} {_where(namespace)} "
                              f"(HTTP {status}); grant it in the bot's RBAC.")
    if status == 429:
        return TemporaryError(f"The Kubernetes API is throttling the bot ({verb} {what}).",
                              delay=_retry_after(exc, 5.0))
    if status >= 500:
        return TemporaryError(f"The Kubernetes API failed to {verb} {what} (HTTP {status}).",
                              delay=_retry_after(exc, 2.0))
    return PermanentError(f"The Kubernetes API refused to {verb} {what} {_where(namespace)}: "
                          f"{status_message(exc)}")


# -- the helpers -------------------------------------------------------------------------------


class Kube:
    """get-or-none, create-or-found, replace, merge-patch, delete-if-present and list, over dicts."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._apis: dict[str, Any] = {}

    def _typed(self, kind: Kind) -> Any:
        # The typed API objects are plain wrappers around the ApiClient (no I/O); made on first use.
        api = self._apis.get(kind.typed_api)
        if api is None:
            api = self._apis[kind.typed_api] = getattr(client, kind.typed_api)(self.api)
        return api

    def _custom(self) -> Any:
        return self._typed(Kind("", "", "", "", False, "CustomObjectsApi"))

    def _method(self, kind: Kind, verb: str) -> Callable[..., Any]:
        # The generated client names every method <verb>_[namespaced_]<snake>.
        scope = "namespaced_" if kind.namespaced else ""
        method: Callable[..., Any] = getattr(self._typed(kind), f"{verb}_{scope}{kind.snake}")
        return method

    def _call(self, verb: str, kind: Kind, namespace: str | None, name: str | None,
              fn: Callable[[], Any]) -> Obj:
        try:
            response = fn()
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise translate(exc, verb=verb, kind=kind, namespace=namespace, name=name) from exc
        data = response.data
        if not data:
            return {}
        parsed = json.loads(data)
        return parsed if isinstance(parsed, dict) else {}

    def _invoke(self, kind: Kind, verb: str, namespace: str | None, name: str | None = None,
                body: Obj | None = None, **kwargs: Any) -> Any:
        """Call the client method for ``verb`` on ``kind``.

        The generated typed APIs take ``(name?, namespace?, body?)`` and are named
        ``<verb>_[namespaced_]<snake>``; ``CustomObjectsApi`` takes ``(group, version, namespace?,
        plural, name?, body?)`` and is named ``<verb>_{namespaced|cluster}_custom_object``."""
        if kind.namespaced and not namespace:
            raise ValueError(f"{kind.kind} is namespaced: a namespace is required")
        ns = (namespace,) if kind.namespaced else ()
        tail = tuple(x for x in (name,) if x is not None)
        payload = tuple(x for x in (body,) if x is not None)
        kwargs["_preload_content"] = False
        if kind.typed_api:
            return self._method(kind, verb)(*tail, *ns, *payload, **kwargs)
        scope = "namespaced" if kind.namespaced else "cluster"
        method = getattr(self._custom(), f"{'get' if verb == 'read' else verb}_{scope}_custom_object")
        return method(kind.group, kind.version, *ns, kind.plural, *tail, *payload, **kwargs)

    def get(self, kind: Kind, name: str, namespace: str | None = None) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            return self._call("get", kind, namespace, name,
                              lambda: self._invoke(kind, "read", namespace, name))
        except Missing:
            return None

    def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Obj]:
        kwargs: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
        if field_selector:
            kwargs["field_selector"] = field_selector

        def call() -> Any:
            if kind.namespaced and namespace is None and kind.typed_api:  # every namespace
                method = getattr(self._typed(kind), f"list_{kind.snake}_for_all_namespaces")
                return method(_preload_content=False, **kwargs)
            return self._invoke(kind, "list", namespace, **kwargs)

        try:
            result = self._call("list", kind, namespace, None, call)
        except Missing:
            return []  # a namespace that is gone has nothing in it
        return [item for item in result.get("items") or [] if isinstance(item, dict)]

    def create(self, kind: Kind, body: Obj) -> tuple[Obj, bool]:
        """Create-or-found: ``(object, True)`` when made now, ``(existing object, False)`` when the
        name was taken already. Callers compare the existing object with what they wanted."""
        name, namespace = meta(body).get("name"), meta(body).get("namespace")
        full = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
        try:
            return self._call("create", kind, namespace, name,
                              lambda: self._invoke(kind, "create", namespace, body=full)), True
        except Conflict as exc:
            if exc.reason != "AlreadyExists":
                raise
        existing = self.get(kind, str(name), namespace)
        if existing is None:  # deleted between our create and our read: let the engine retry
            raise TemporaryError(f"{kind.kind} {name} was being deleted while the bot created it.")
        return existing, False

    def replace(self, kind: Kind, body: Obj) -> Obj:
        """PUT; the body carries ``metadata.resourceVersion``, so a stale write raises ``Conflict``."""
        name, namespace = str(meta(body).get("name")), meta(body).get("namespace")
        return self._call("update", kind, namespace, name,
                          lambda: self._invoke(kind, "replace", namespace, name, body))

    def merge_patch(self, kind: Kind, name: str, patch: Mapping[str, JSON],
                    namespace: str | None = None) -> Obj:
        """JSON merge patch (RFC 7386): nested maps merge, ``None`` removes a key, lists replace."""
        return self._call("patch", kind, namespace, name,
                          lambda: self._invoke(kind, "patch", namespace, name, dict(patch),
                                               _content_type="application/merge-patch+json"))

    def delete(self, kind: Kind, name: str, namespace: str | None = None) -> bool:
        """Delete-if-present: True when this call deleted it, False when it was already gone."""
        try:
            self._call("delete", kind, namespace, name, lambda: self._invoke(kind, "delete", namespace, name))
        except Missing:
            return False
        return True

    def read_modify_write(self, kind: Kind, name: str, namespace: str | None,
                          mutate: Callable[[Obj], bool], *, attempts: int = 64) -> Obj | None:
        """Optimistic update: read, ``mutate`` in place (False = nothing to change), PUT with the
        read resourceVersion; on 409 read again and re-apply, so concurrent writers never lose
        each other's changes. Returns the written (or unchanged) object, None when it is absent."""
        for _ in range(attempts):
            current = self.get(kind, name, namespace)
            if current is None:
                return None
            if not mutate(current):
                return current
            try:
                return self.replace(kind, current)
            except Conflict:
                continue  # someone wrote in between: their change is in the next read
        raise TemporaryError(f"{kind.kind} {name} {_where(namespace)} kept changing under the bot; "
                             "will retry.")

    def create_token(self, namespace: str, service_account: str, audiences: Sequence[str],
                     expiration_seconds: int) -> Obj:
        """TokenRequest (``POST .../serviceaccounts/<sa>/token``); the token is in ``status.token``."""
        spec: dict[str, Any] = {"expirationSeconds": int(expiration_seconds)}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        kind = Kind("ServiceAccount", "", "v1", "serviceaccounts/token", True, "CoreV1Api", "service_account")
        return self._call("create", kind, namespace, service_account,
                          lambda: self._typed(kind).create_namespaced_service_account_token(
                              service_account, namespace, body, _preload_content=False))


# -- small shared pieces -----------------------------------------------------------------------


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    value = meta(obj).get("annotations")
    return value if isinstance(value, dict) else {}


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    value = meta(obj).get("labels")
    return value if isinstance(value, dict) else {}


def is_managed(obj: Mapping[str, Any]) -> bool:
    return labels_of(obj).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# -- ownership marks ---------------------------------------------------------------------------
# ``managed-by`` says "some run of the bot made this", which is not enough to undo safely: an
# earlier request (or an older bot) may have made the object this request merely found. The mark
# says *which request* made it, and it goes on in the same write that creates the object, so a
# retry after a crash or a temporary failure can tell its own object from anyone else's.

MARK_KEY: Final = "kf-chatops/request"
"""Label (Kubernetes) or tag (AWS) naming the request that created the object."""

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def request_of(params: StepParams) -> str | None:
    """The id of the request a step runs for (``params.request``), None when an action is
    called directly (tests, tools): then nothing is marked and nothing found is claimed."""
    value = params.request
    if value is None:
        return None
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        # A mark that cannot be written cannot be read back either: refuse rather than create an
        # object that a retry would not recognise.
        raise PermanentError("The request id cannot be used as an ownership label.")
    return value


def mark_labels(params: StepParams) -> dict[str, str]:
    """The labels that mark an object as made by this step's request (empty without a request)."""
    request = request_of(params)
    return {MARK_KEY: request} if request else {}


def owns(request: str | None, mark: object) -> bool:
    """Whether an object carrying ``mark`` was made by ``request``: never without a request, so an
    unmarked object (a human's, an older bot's) is never claimed."""
    return request is not None and mark == request


def marked_by(obj: Mapping[str, Any], params: StepParams) -> bool:
    """Whether ``obj`` carries the mark of this step's request."""
    return owns(request_of(params), labels_of(obj).get(MARK_KEY))




def no_undo(params: StepParams, outcome: StepOutcome) -> None:
    """Removal steps have nothing to compensate: what they deleted is not brought back."""


def api_client_from_environment() -> client.ApiClient:
    """The composition root's ApiClient: in-cluster credentials in a pod, else the kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``), exactly as kubectl would pick them."""
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # Read KUBECONFIG now, not the client's copy taken at import (a later-set one is
            # honoured); None falls back to ~/.kube/config.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
    except (config.ConfigException, OSError) as exc:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise errors.Misconfigured(
            f"KFBOT_PROVISIONER=live needs Kubernetes credentials, and none were found ({where}: "
            f"{str(exc).strip().splitlines()[0][:160]}). Set KUBECONFIG to a kubeconfig file, run in "
            "the cluster with the chart's service account, or leave KFBOT_PROVISIONER unset for dry-run."
        ) from exc
    return client.ApiClient(configuration)
