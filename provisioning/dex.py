"""Live Dex actions: a login for a workspace owner, in the way this cluster's Dex keeps users.

Three modes (``DexSettings.mode``; the planned step carries the mode it was approved with):

* ``password-cr`` (default): a ``passwords.dex.coreos.com`` object in Dex's namespace, exactly as
  Dex's kubernetes storage writes it (``docs/kubeflow-reference.md`` §3.2): named by Dex's
  ``idToName`` (``naming.dex_password_object_name``), top-level ``email``/``hash``/``username``/
  ``userID`` with ``hash`` the base64 of the bcrypt string. Dex reads storage on every login, so
  no restart is needed.
* ``configmap``: Kubeflow 1.9+ static users: an entry ``{email, hashFromEnv: KEY, username,
  userID}`` in ``staticPasswords`` of ConfigMap ``dex`` (key ``config.yaml``) and the hash under
  ``KEY`` in Secret ``dex-passwords`` (the Deployment loads it with ``envFrom``). The YAML is
  parsed and dumped, never spliced as text (an email or username must not be able to inject YAML);
  the cost is that comments in ``config.yaml`` are not kept. Each write is a PUT carrying the
  resourceVersion it read and is re-applied on 409, so concurrent additions never lose one
  another. Dex does not reload its config, so the Deployment is restarted
  (``kubectl.kubernetes.io/restartedAt``) and the step completes when the rollout has.
* ``external``: logins come from an upstream identity provider; the actions do nothing.

One restart for a burst, across processes: after its writes the ``dex.user`` step asks for a
restart through a row, the timer ``provisioning.dex.restart`` (ref: the Deployment), due
``restart_quiet_period`` from now. Scheduling the same (kind, ref) moves the pending row, so a
burst of additions keeps pushing it and the sweeper (one leader) restarts once after the burst
(``restart_timer``). The step does not wait in-process: it raises ``TemporaryError`` with the
quiet period as delay and the engine defers the request. On a retry it completes when the
Deployment's pod template carries the digest of the current config (``kf-chatops/dex-config-digest``,
stamped by the restart with ``restartedAt``: Dex then runs a config holding this entry) and the
rollout is complete; else it waits again, asking for a restart only if none is pending. The step
reaches the timers table through an injected ``RestartRequester`` (built by ``backend._build_live``
over the unit of work): no SQL here. Removals ask for a restart the same way without waiting for
it (the login goes at the restart after the quiet period); the reveal flow (``set_password_hash``),
one click, restarts at once and waits for the rollout.

Ownership (what a retry may claim, so undo removes only what this request made): a Password
object carries the label ``kf-chatops/request: <request id>`` from its create call on. A
``staticPasswords`` entry has no field for a mark (and an unknown one is not something Dex promises
to accept), so its mark is the ConfigMap annotation ``kf-chatops/request.<env key>``, written and
removed in the same PUT as the entry itself: a retry after a crash or a rollout timeout finds the
entry *and* the mark, or neither. An entry or object without this request's mark (made by a human,
an older bot or another request) is found, never claimed. Residual gap: the Secret key holding the
hash is written before the entry and is not marked; if the entry's write then fails for good, the
key stays behind. It is inert (Dex reads only keys an entry names) and the next addition for that
email reuses it.

Passwords: the user is created with the bcrypt hash of random bytes nobody ever sees; the owner
sets a real one later through ``set_password_hash`` (the reveal flow in ``provisioning.secrets``).
Only hashes travel to the cluster. bcrypt cost is checked to be 10..16, the range Dex accepts.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import bcrypt
import yaml
from kubernetes import client

from handlers.actions import (
    STATIC_HASH_FROM_ENV,
    STATIC_INLINE_HASH,
    AdoptParams,
    DexAdoptParams,
    DexUserParams,
    DexUserRemoveParams,
)
from handlers.errors import PermanentError, TemporaryError
from handlers.naming import dex_password_object_name
from handlers.plan import JSON, StepOutcome
from handlers.ports import Clock
from provisioning import k8s
from provisioning.actions import Action, TypedAction, check_removable, registry_of
from provisioning.k8s import Kube, Obj
from provisioning.kubeflow import profile_users
from provisioning.settings import DexSettings

log = logging.getLogger(__name__)

CONFIG_KEY: Final = "config.yaml"
RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"
CONFIG_DIGEST: Final = "kf-chatops/dex-config-digest"
RESTART_TIMER: Final = "provisioning.dex.restart"
"""The timer kind of a requested Dex restart (``provisioning.`` kinds are handled by provisioning)."""
ENV_KEY_PREFIX: Final = "DEX_USER_"
MIN_COST: Final = 10
MAX_COST: Final = 16
_USER_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:kf-chatops:dex-user")


def check_cost(cost: int) -> int:
    """Dex refuses bcrypt hashes outside 10..16 at login; refuse them before one is ever written."""
    if isinstance(cost, bool) or not isinstance(cost, int) or not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"bcrypt cost must be an integer from {MIN_COST} to {MAX_COST}, not {cost!r}")
    return cost


def user_id_for(email: str) -> str:
    """A stable ``userID`` (the OIDC ``sub`` with the local connector): the same email always gets
    the same id, so a user re-created after a delete keeps their identity in Kubeflow Pipelines."""
    return str(uuid.uuid5(_USER_ID_NAMESPACE, email.strip().lower()))


def env_key_for(email: str) -> str:
    """The Secret key (and env var name) holding ``email``'s hash: letters, digits and ``_`` only,
    derived from the email so a re-run finds the key it wrote."""
    return ENV_KEY_PREFIX + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:20].upper()


def _entry_mark(key: str) -> str:
    """The ConfigMap annotation naming the request that added the ``staticPasswords`` entry whose
    hash lives under ``key`` (``kf-chatops/request.DEX_USER_…``, a valid annotation key)."""
    return f"{k8s.MARK_KEY}.{key}"


def _secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    data = secret.get("data")
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


@dataclass(frozen=True)
class DexLogin:
    """A login Dex holds: ``mode`` is where (``configmap``/``password-cr``), ``how`` says more."""

    email: str
    mode: str
    how: str
    username: str
    user_id: str
    static_entry: str = ""
    """A ``staticPasswords`` entry's shape: ``hash`` (inline) or ``hashFromEnv``; else ``""``."""
    hash_from_env: str = ""


def _check_password_email(obj: Mapping[str, Any], email: str) -> None:
    """A Password object named after ``email`` (``dex_password_object_name``) must carry it: Dex
    signs in whoever its ``email`` field names, so writing to one that names another (a restore or
    hand edit gone wrong) would make or reset a login for them."""
    if str(obj.get("email", "")).strip().lower() != email.strip().lower():
        name = (obj.get("metadata") or {}).get("name")
        raise PermanentError(f"Dex's Password object `{name}` holds another email; Dex's storage is "
                             "inconsistent and needs an administrator.")
class _ConfigChanged(Exception):
    """An admin's edit changed a ``staticPasswords`` entry after a password set read it: decide again."""


_CONFIG_ATTEMPTS: Final = 5


class RestartRequester(Protocol):
    """Asks for one Dex restart at ``due_at`` through the timers table (timer ``RESTART_TIMER``,
    ref ``namespace/deployment``). ``move``: push a pending request to ``due_at`` (a new write
    extends the quiet period); without it, schedule only when no restart is pending."""

    def __call__(self, due_at: datetime, *, move: bool) -> None: ...


class DexActions:
    def __init__(self, api: client.ApiClient, settings: DexSettings, clock: Clock, *,
                 request_restart: RestartRequester | None = None, rollout_timeout: float = 600.0,
                 poll_interval: float = 2.0) -> None:
        check_cost(settings.bcrypt_cost)
        self.kube = Kube(api)
        self.settings = settings
        self.clock = clock
        self.rollout_timeout = rollout_timeout
        self.poll_interval = poll_interval
        self._request_restart = request_restart
        # For messages: "auth/dex".
        self._cm_ref = f"{settings.namespace}/{settings.configmap}"
        self._deploy_ref = f"{settings.namespace}/{settings.deployment}"

    def registry(self) -> dict[str, Action]:
        return registry_of(
            TypedAction(DexUserParams, self.ensure_user, self.undo_user),
            TypedAction(DexUserRemoveParams, self.remove_user, k8s.no_undo),
            TypedAction(DexAdoptParams, self.check_adopted_user, k8s.no_undo),
        )

    @property
    def restart_ref(self) -> str:
        """The ref of this Dex's restart timer: ``namespace/deployment``."""
        return self._deploy_ref

    # -- lookups -----------------------------------------------------------------------------

    def _config(self) -> tuple[Obj | None, dict[str, Any]]:
        cm = self.kube.get(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace)
        if cm is None:
            return None, {}
        return cm, self._parse(cm)

    def _parse(self, cm: Obj) -> dict[str, Any]:
        text = (cm.get("data") or {}).get(CONFIG_KEY) or ""
        try:
            parsed = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PermanentError(f"ConfigMap {self._cm_ref} has no valid `{CONFIG_KEY}`; fix it before "
                                 "adding users.") from exc
        if not isinstance(parsed, dict):
            raise PermanentError(f"`{CONFIG_KEY}` in ConfigMap {self._cm_ref} is not a YAML mapping.")
        return parsed

    @staticmethod
    def _static_entry(config: Mapping[str, Any], email: str) -> dict[str, Any] | None:
        for entry in config.get("staticPasswords") or []:
            # Dex's static lookup is case-insensitive, so ours is too.
            if isinstance(entry, dict) and str(entry.get("email", "")).lower() == email:
                return entry
        return None

    def _password_object(self, email: str) -> Obj | None:
        return self.kube.get(k8s.DEX_PASSWORD, dex_password_object_name(email), self.settings.namespace)

    def user_exists(self, email: str) -> bool:
        """Whether Dex already has a login for ``email`` (a static entry or a Password object)."""
        if self.settings.mode == "external":
            return False
        email = email.strip().lower()
        _, config = self._config()
        return self._static_entry(config, email) is not None or self._password_object(email) is not None

    def key_shared_with(self, email: str) -> tuple[str, tuple[str, ...]] | None:
        """(the Secret key, the other logins naming it) when ``email``'s ``staticPasswords``
        entry names a ``hashFromEnv`` key other entries name too: its password set moves it to a
        key of its own (``set_password_hash``). None otherwise."""
        email = email.strip().lower()
        _, config = self._config()
        entry = self._static_entry(config, email)
        key = None if entry is None else entry.get("hashFromEnv")
        if not isinstance(key, str) or not key:
            return None
        others = self._key_named_by_others(config, email, key)
        return (key, tuple(others)) if others else None

    def logins(self) -> list[DexLogin]:
        """Every login Dex holds, wherever it is kept (adoption's discovery reads both places,
        whatever ``mode`` says: a runbook may have used either). Hashes are never read out."""
        found: list[DexLogin] = []
        _, config = self._config()
        for entry in config.get("staticPasswords") or []:
            if isinstance(entry, dict) and isinstance(entry.get("email"), str):
                key = entry.get("hashFromEnv")
                how = f"staticPasswords, hashFromEnv {key}" if key else "staticPasswords, inline hash"
                found.append(DexLogin(str(entry["email"]).lower(), "configmap", how,
                                      str(entry.get("username") or ""), str(entry.get("userID") or ""),
                                      STATIC_HASH_FROM_ENV if key else STATIC_INLINE_HASH, str(key or "")))
        try:
            objects = self.kube.list(k8s.DEX_PASSWORD, self.settings.namespace)
        except PermanentError:
            objects = []  # no Password CRD: Dex never ran with kubernetes storage
        for obj in objects:
            if isinstance(obj.get("email"), str):
                found.append(DexLogin(str(obj["email"]).lower(), "password-cr", "Password object",
                                      str(obj.get("username") or ""), str(obj.get("userID") or "")))
        return found

    def check_adopted_user(self, params: AdoptParams) -> StepOutcome:
        """``dex.adopt``: the login a ``workspace.adopt`` records must still exist; only read."""
        email = params.name.strip().lower()
        if not any(login.email == email for login in self.logins()):
            raise PermanentError(f"Dex has no login for {email} any more; nothing was recorded.")
        return StepOutcome(created=False, details={"adopted": True})

    # -- hashes ------------------------------------------------------------------------------

    def _unusable_hash(self) -> str:
        # A real bcrypt hash of 32 random bytes that are thrown away: nobody can log in until the
        # owner sets a password, yet Dex sees a well-formed user.
        salt = bcrypt.gensalt(self.settings.bcrypt_cost)
        return bcrypt.hashpw(secrets.token_urlsafe(32).encode(), salt).decode()

    @staticmethod
    def _check_hash(bcrypt_hash: str) -> None:
        if not bcrypt_hash.startswith(("$2a$", "$2b$", "$2y$")) or len(bcrypt_hash) != 60:
            raise ValueError("not a bcrypt hash")
        check_cost(int(bcrypt_hash[4:6]))

    # -- dex.user ----------------------------------------------------------------------------

    def ensure_user(self, params: DexUserParams) -> StepOutcome:
        email = params.email
        mode = params.mode or self.settings.mode
        if mode == "external":
            return StepOutcome(created=False, details={"mode": mode})
        username = params.username or email.split("@", 1)[0]
        user_id = params.user_id or user_id_for(email)
        cm, config = self._config()
        entry = self._static_entry(config, email)
        if mode == "password-cr":
            if entry is not None:  # a static entry wins over storage in Dex: nothing to add
                return StepOutcome(created=False, details={"mode": mode, "found": "staticPasswords"})
            return self._ensure_password_object(email, username, user_id, params)
        if mode != "configmap":
            raise PermanentError(f"Unknown Dex mode `{mode}`.")
        if cm is None:
            raise PermanentError(f"ConfigMap {self._cm_ref} does not exist; is Dex installed in configmap "
                                 "mode?")
        if entry is None and self._password_object(email) is not None:
            return StepOutcome(created=False, details={"mode": mode, "found": "password-object"})
        key = env_key_for(email)
        if entry is not None and entry.get("hashFromEnv") != key:
            return StepOutcome(created=False, details={"mode": mode, "found": "staticPasswords"})
        # A key another login names already holds their hash: an entry naming it would sign in with
        # their password, and the reveal would then write theirs.
        self._refuse_shared_key(config, email, key)
        self._check_deployment_loads_secret(key)
        request = k8s.request_of(params)
        # The hash first: the moment the entry exists, a restart must find its env var. For an entry
        # found with our key this repairs a lost half (an earlier attempt, or a hand edit).
        wrote = self._write_secret_key(key, self._unusable_hash(), only_if_absent=True)
        if entry is None:
            created = self._add_static_entry(email, key, username, user_id, request)
            wrote = wrote or created
        else:
            # An entry with our key found on a retry: ours if an earlier attempt of this request
            # wrote it (its mark went into the ConfigMap in the same PUT as the entry).
            created = k8s.owns(request, k8s.annotations_of(cm or {}).get(_entry_mark(key)))
        try:
            self._await_restart(wrote)
        except PermanentError as failure:
            # The step records nothing when it fails, so nobody else would remove the entry.
            if created and not self._forget_static_user(email, key):
                raise PermanentError(f"{failure.user_message} Taking back the Dex entry for {email} "
                                     f"failed too; remove it from {self._cm_ref} by hand.") from failure
            raise
        details: dict[str, JSON] = {"mode": mode, "env_key": key}
        if not created:
            details["found"] = "staticPasswords"
        return StepOutcome(created=created, details=details)

    def _ensure_password_object(self, email: str, username: str, user_id: str,
                                params: DexUserParams) -> StepOutcome:
        name = dex_password_object_name(email)
        labels = {**k8s.MANAGED_BY, **k8s.mark_labels(params)}
        body: Obj = {
            "metadata": {"name": name, "namespace": self.settings.namespace, "labels": labels},
            "email": email,
            "hash": base64.b64encode(self._unusable_hash().encode()).decode(),
            "username": username,
            "userID": user_id,
        }
        existing, created = self.kube.create(k8s.DEX_PASSWORD, body)
        if not created:
            _check_password_email(existing, email)
        # Found carrying this request's mark: an earlier attempt made it (a worker killed before
        # the outcome was recorded). Dex keeps metadata when it updates a Password, so the mark stays.
        created = created or k8s.marked_by(existing, params)
        details: dict[str, JSON] = {"mode": "password-cr", "object": name}
        if not created:
            details["found"] = "password-object"
        return StepOutcome(created=created, details=details)

    def undo_user(self, params: DexUserParams, outcome: StepOutcome) -> None:
        if outcome.created:  # this step made it, as its recorded outcome says
            self._remove_user(params.email, params.mode, made=True)

    def remove_user(self, params: DexUserRemoveParams) -> StepOutcome:
        if (params.mode or self.settings.mode) != "external" and (kept := self._still_used(params)):
            return kept
        if params.static_entry and (params.mode or self.settings.mode) != "external":
            return self._remove_adopted_static_user(params)
        return self._remove_user(params.email, params.mode, adopted=params.adopted)

    def _still_used(self, params: DexUserRemoveParams) -> StepOutcome | None:
        """The plan judged the login unused, but minutes may have passed (a nodegroup drains
        first): read the cluster again, right before the removal, and keep a login its holder has
        come to use since (a contributor the dashboard added), as a bucket that came to hold data
        is kept. The request's own workspace namespace is no use: it is being taken apart."""
        uses = profile_users(self.kube).get(params.email.strip().lower(), {})
        uses = {ns: how for ns, how in uses.items() if ns != params.except_namespace}
        if not uses:
            return None
        namespace, how = sorted(uses.items())[0]
        why = "the owner" if how == "owner" else f"a contributor ({how})"
        return StepOutcome(
            created=False,
            details={"deleted": False, "reason": f"The Dex login {params.email} was kept: its holder "
                     f"is now {why} of Profile `{namespace}` (read as the step ran)."},
            kept=(f"Dex login `{params.email}`",),
        )

    def _remove_adopted_static_user(self, params: DexUserRemoveParams) -> StepOutcome:
        """An adopted ``staticPasswords`` entry, as the runbook wrote it: the entry of that email
        with that shape (inline ``hash``, or ``hashFromEnv`` naming the recorded key) leaves the
        config, then its Secret key if no other entry names it; Dex restarts as for a removal.
        The entry is also found under the key of its own the reveal flow may have moved it to."""
        email, key = params.email, params.env_key
        own = env_key_for(email)

        def same_shape(entry: object) -> bool:
            if not isinstance(entry, dict) or str(entry.get("email", "")).lower() != email:
                return False
            if entry.get("hashFromEnv") == own:
                return True  # the reveal flow moved it to a key of its own (set_password_hash)
            if params.static_entry == STATIC_HASH_FROM_ENV:
                return entry.get("hashFromEnv") == key
            return "hash" in entry and not entry.get("hashFromEnv")

        removed, key_in_use, own_in_use = False, True, True  # no config read: keep every key

        def mutate(cm: Obj) -> bool:
            nonlocal removed, key_in_use, own_in_use
            config = self._parse(cm)
            entries = config.get("staticPasswords") or []
            kept = [e for e in entries if not same_shape(e)]
            key_in_use = any(isinstance(e, dict) and key and e.get("hashFromEnv") == key for e in kept)
            own_in_use = any(isinstance(e, dict) and e.get("hashFromEnv") == own for e in kept)
            removed = len(kept) != len(entries)
            if not removed:
                return False
            config["staticPasswords"] = kept
            self._dump(cm, config)
            return True

        self.kube.read_modify_write(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace, mutate)
        # Entry first, then its hash, as for the bot's own entries.
        removed_key = bool(key) and not key_in_use and self._remove_secret_key(key)
        removed_own = own != key and not own_in_use and self._remove_secret_key(own)
        if removed or removed_key or removed_own:
            self._ask_restart(move=True)
        return StepOutcome(created=False, details={"mode": "configmap", "deleted": removed})

    def _remove_user(
        self, email: str, mode: str, *, adopted: bool = False, made: bool = False
    ) -> StepOutcome:
        mode = mode or self.settings.mode
        if mode == "external":
            return StepOutcome(created=False, details={"mode": mode})
        if mode == "password-cr":
            name = dex_password_object_name(email)
            found = self.kube.get(k8s.DEX_PASSWORD, name, self.settings.namespace)
            if found is None:
                return StepOutcome(created=False, details={"mode": mode, "deleted": False})
            check_removable(f"The Dex login {email}", marked=made or k8s.MARK_KEY in k8s.labels_of(found),
                            adopted=adopted)
            deleted = self.kube.delete(k8s.DEX_PASSWORD, name, self.settings.namespace)
            return StepOutcome(created=deleted, details={"mode": mode, "deleted": deleted})
        key = env_key_for(email)
        # Only the entry the bot wrote (its own env key) goes; a hand-made user with that email stays.
        removed = self._remove_static_entry(email, key)
        # Entry first, then its hash: Dex restarted in between would find a user without a hash.
        # A key another entry names (a hand edit after the bot made this one) is theirs as well.
        _, config = self._config()
        removed_key = not self._key_named_by_others(config, email, key) and self._remove_secret_key(key)
        if removed or removed_key:
            self._ask_restart(move=True)
        return StepOutcome(created=removed, details={"mode": mode, "deleted": removed})

    def _forget_static_user(self, email: str, key: str) -> bool:
        """Take back an entry this step added when the step then fails for good (no restart: Dex
        either never loaded it or drops it at its next restart). False when that failed too."""
        try:
            self._remove_static_entry(email, key)
            self._remove_secret_key(key)
        except (PermanentError, TemporaryError) as exc:
            log.warning("could not take back the Dex entry of a failed step: %s", exc.user_message)
            return False
        return True

    # -- configmap mode: writes --------------------------------------------------------------

    def _deployment_loads(self, key: str | None) -> bool:
        """Whether Dex's pod gets env var ``key`` from our Secret's key ``key``: the whole Secret
        with ``envFrom`` (no prefix), or that one key with ``env[].valueFrom.secretKeyRef``
        (``key`` None: the whole Secret only)."""
        template = (self._deployment().get("spec") or {}).get("template") or {}
        for container in (template.get("spec") or {}).get("containers") or []:
            for source in container.get("envFrom") or []:
                if ((source.get("secretRef") or {}).get("name") == self.settings.secret
                        and not source.get("prefix")):
                    return True
            for var in container.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
                if (key is not None and var.get("name") == key
                        and ref.get("name") == self.settings.secret and ref.get("key") == key):
                    return True
        return False

    def _check_deployment_loads_secret(self, key: str | None = None) -> None:
        if not self._deployment_loads(key):
            raise PermanentError(f"Deployment {self._deploy_ref} does not load Secret "
                                 f"`{self.settings.secret}` with envFrom, so `hashFromEnv` users would "
                                 "have no password. Use the Kubeflow 1.9+ Dex manifests or the password-cr "
                                 "mode.")

    def _deployment(self) -> Obj:
        deployment = self.kube.get(k8s.DEPLOYMENT, self.settings.deployment, self.settings.namespace)
        if deployment is None:
            raise PermanentError(f"Deployment {self._deploy_ref} does not exist; is Dex installed there?")
        return deployment

    def _dump(self, cm: Obj, config: Mapping[str, Any]) -> None:
        cm.setdefault("data", {})[CONFIG_KEY] = yaml.safe_dump(dict(config), sort_keys=False,
                                                               default_flow_style=False, allow_unicode=True)

    def _add_static_entry(self, email: str, key: str, username: str, user_id: str,
                          request: str | None) -> bool:
        """Add the entry; True when this request owns it (added now, or found with its mark)."""
        added = False

        def mutate(cm: Obj) -> bool:
            nonlocal added
            config = self._parse(cm)
            entry = self._static_entry(config, email)
            if entry is not None:  # another writer added it first: ours only if it carries our mark
                added = entry.get("hashFromEnv") == key and k8s.owns(
                    request, k8s.annotations_of(cm).get(_entry_mark(key)))
                return False
            entries = config.get("staticPasswords")
            if not isinstance(entries, list):
                entries = []
            entries.append({"email": email, "hashFromEnv": key, "username": username, "userID": user_id})
            config["staticPasswords"] = entries
            if "enablePasswordDB" not in config:
                config["enablePasswordDB"] = True  # Dex refuses staticPasswords without it
            self._dump(cm, config)
            notes = k8s.meta(cm).setdefault("annotations", {})
            if request:
                # The entry's mark, in the same PUT as the entry: Dex's config has no room for
                # one inside the entry, and a separate write could be lost to a crash in between.
                notes[_entry_mark(key)] = request
            else:
                notes.pop(_entry_mark(key), None)  # a stale mark must not claim this new entry
            added = True
            return True

        if self.kube.read_modify_write(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace,
                                       mutate) is None:
            raise PermanentError(f"ConfigMap {self._cm_ref} disappeared.")
        return added

    def _remove_static_entry(self, email: str, key: str) -> bool:
        removed = False

        def mutate(cm: Obj) -> bool:
            nonlocal removed
            config = self._parse(cm)
            entries = config.get("staticPasswords") or []
            kept = [e for e in entries if not (isinstance(e, dict) and e.get("hashFromEnv") == key
                                               and str(e.get("email", "")).lower() == email)]
            removed = len(kept) != len(entries)
            if not removed:
                return False
            config["staticPasswords"] = kept
            self._dump(cm, config)
            k8s.meta(cm).setdefault("annotations", {}).pop(_entry_mark(key), None)
            return True

        self.kube.read_modify_write(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace, mutate)
        return removed

    def _write_secret_key(self, key: str, bcrypt_hash: str, *, only_if_absent: bool,
                          guard: Callable[[], None] | None = None) -> bool:
        """Write the hash under ``key``; True when the Secret changed. ``guard`` runs right before
        each attempt to write (it raises to stop the write): a check on the Dex config made as
        late as two objects allow."""
        encoded = base64.b64encode(bcrypt_hash.encode()).decode()
        changed = False

        def mutate(secret: Obj) -> bool:
            nonlocal changed
            data = _secret_data(secret)
            if guard is not None and not (key in data and only_if_absent):
                guard()
            if key in data and (only_if_absent or data[key] == encoded):
                return False
            data[key] = encoded
            secret["data"] = data
            changed = True
            return True

        ns, name = self.settings.namespace, self.settings.secret
        if self.kube.read_modify_write(k8s.SECRET, name, ns, mutate) is None:
            if guard is not None:
                guard()
            _, created = self.kube.create(k8s.SECRET, {"metadata": {"name": name, "namespace": ns},
                                                       "type": "Opaque", "data": {key: encoded}})
            if created:
                return True
            self.kube.read_modify_write(k8s.SECRET, name, ns, mutate)  # made by someone else: add ours
        return changed

    def _remove_secret_key(self, key: str) -> bool:
        removed = False

        def mutate(secret: Obj) -> bool:
            nonlocal removed
            data = _secret_data(secret)
            removed = data.pop(key, None) is not None
            secret["data"] = data
            return removed

        self.kube.read_modify_write(k8s.SECRET, self.settings.secret, self.settings.namespace, mutate)
        return removed

    # -- configmap mode: restarts ------------------------------------------------------------

    def _config_digest(self) -> str:
        cm = self.kube.get(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace) or {}
        secret = self.kube.get(k8s.SECRET, self.settings.secret, self.settings.namespace) or {}
        digest = hashlib.sha256(str((cm.get("data") or {}).get(CONFIG_KEY, "")).encode())
        for key, value in sorted(_secret_data(secret).items()):
            digest.update(f"\0{key}={value}".encode())
        return digest.hexdigest()[:16]

    def _applied_digest(self) -> str | None:
        template = (self._deployment().get("spec") or {}).get("template") or {}
        value = k8s.annotations_of(template).get(CONFIG_DIGEST)
        return value if isinstance(value, str) else None

    def _rollout_complete(self, deployment: Obj) -> bool:
        generation = int(k8s.meta(deployment).get("generation") or 0)
        status = deployment.get("status") or {}
        replicas = (deployment.get("spec") or {}).get("replicas")
        replicas = 1 if replicas is None else int(replicas)
        return (int(status.get("observedGeneration") or 0) >= generation
                and int(status.get("updatedReplicas") or 0) == replicas)

    def _ask_restart(self, *, move: bool) -> None:
        if self._request_restart is None:
            raise PermanentError("This bot was built without a way to schedule Dex restarts (configmap "
                                 "mode needs the timers table); this is a bug in its composition.")
        due = self.clock.now() + timedelta(seconds=self.settings.restart_quiet_period)
        self._request_restart(due, move=move)

    def _await_restart(self, wrote: bool) -> None:
        """Return when Dex runs the current config (so this step's entry) and its rollout is
        complete; else ask for the one restart (pushing it back when this attempt wrote
        something) and raise ``TemporaryError`` so the engine retries after the quiet period."""
        if self._applied_digest() == self._config_digest():
            if self._rollout_complete(self._deployment()):
                return
            raise TemporaryError(f"Dex ({self._deploy_ref}) has not finished restarting.",
                                 delay=self.poll_interval)
        self._ask_restart(move=wrote)
        raise TemporaryError("waiting for Dex to restart", delay=self.settings.restart_quiet_period)

    def restart_timer(self, ref: str, payload: Mapping[str, JSON]) -> None:
        """The ``provisioning.dex.restart`` timer: restart Dex once for every write made so far,
        unless it already runs the current config (a timer run again after a crash). The steps
        waiting on it see the digest and the rollout on their next attempt."""
        if ref != self._deploy_ref:
            log.warning("Dex restart timer for %s, but this bot's Dex is %s: ignored", ref, self._deploy_ref)
            return
        if self._applied_digest() != self._config_digest():
            self._restart()

    def _restart(self) -> None:
        # Read the digest right before the restart: every write made so far is in it.
        digest = self._config_digest()
        now = self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        patch: dict[str, JSON] = {"spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: now, CONFIG_DIGEST: digest}}}}}
        self.kube.merge_patch(k8s.DEPLOYMENT, self.settings.deployment, patch, self.settings.namespace)
        log.info("restarted Deployment %s/%s for Dex config %s", self.settings.namespace,
                 self.settings.deployment, digest)

    def _wait_rollout(self) -> None:
        start = self.clock.now()
        while not self._rollout_complete(self._deployment()):
            if (self.clock.now() - start).total_seconds() >= self.rollout_timeout:
                raise TemporaryError(f"Dex ({self._deploy_ref}) has not finished restarting after "
                                     f"{self.rollout_timeout:.0f}s.", delay=10.0)
            self.clock.sleep(self.poll_interval)

    # -- the reveal flow ---------------------------------------------------------------------

    def set_password_hash(self, email: str, bcrypt_hash: str) -> None:
        """Give ``email``'s existing Dex login this hash, where that login lives; in configmap
        mode this returns only when Dex has restarted with it. A static entry keeps its hash where
        Dex's pod can read it: under a key the Deployment loads, else inline (``_set_static_hash``)."""
        if self.settings.mode == "external":
            raise PermanentError("Passwords are managed by the upstream identity provider, not by this bot.")
        self._check_hash(bcrypt_hash)
        email = email.strip().lower()
        cm, config = self._config()
        if cm is not None and self._static_entry(config, email) is not None:
            # The config is read again on each attempt: an attempt stops (``_ConfigChanged``) when
            # an admin's edit changed this entry's key, or who names it, since it decided.
            for _ in range(_CONFIG_ATTEMPTS):
                try:
                    self._set_static_hash(email, bcrypt_hash)
                    break
                except _ConfigChanged:
                    continue
            else:
                raise TemporaryError(f"The `staticPasswords` entry of {email} in {self._cm_ref} kept "
                                     "changing while its password was set; will retry.")
            # One click, one person waiting for a modal: restart now rather than after a quiet period.
            if self._applied_digest() != self._config_digest():
                self._restart()
            self._wait_rollout()
            return
        name = dex_password_object_name(email)
        encoded = base64.b64encode(bcrypt_hash.encode()).decode()

        def mutate(obj: Obj) -> bool:
            # Dex signs in whom the object's `email` names, not whom its name came from.
            _check_password_email(obj, email)
            if obj.get("hash") == encoded:
                return False
            obj["hash"] = encoded
            return True

        if self.kube.read_modify_write(k8s.DEX_PASSWORD, name, self.settings.namespace, mutate) is None:
            raise PermanentError(f"Dex has no login for {email}; it is created with the workspace.")

    def _set_static_hash(self, email: str, bcrypt_hash: str) -> None:
        """One attempt at giving ``email``'s ``staticPasswords`` entry this hash."""
        _, config = self._config()
        entry = self._static_entry(config, email)
        if entry is None:
            raise PermanentError(f"Dex has no login for {email} in {self._cm_ref} any more.")
        key = entry.get("hashFromEnv")
        key = key if isinstance(key, str) and key else None
        if key is not None and not self._key_named_by_others(config, email, key):
            if not self._deployment_loads(key):
                raise PermanentError(
                    f"Deployment {self._deploy_ref} does not load Secret `{self.settings.secret}` "
                    f"(`envFrom`, or env var `{key}` from its key `{key}`), so a password written under "
                    f"`{key}` would never reach Dex; nothing was changed. An admin adds `envFrom: "
                    f"[{{secretRef: {{name: {self.settings.secret}}}}}]` to the Dex container (as the "
                    "Kubeflow 1.9+ manifests do), then this is tried again.")

            def still_own() -> None:
                # Right before the write: the entry still names the key and nobody else does, else
                # the hash would open another login (an admin's edit since this attempt's read).
                _, now = self._config()
                mine = self._static_entry(now, email)
                if (mine is None or mine.get("hashFromEnv") != key
                        or self._key_named_by_others(now, email, key)):
                    raise _ConfigChanged

            self._write_secret_key(key, bcrypt_hash, only_if_absent=False, guard=still_own)
            return
        own = env_key_for(email)
        if not self._deployment_loads(own):
            # Kubeflow 1.7/1.8: Dex loads no Secret of ours, and an entry moved to `hashFromEnv`
            # would have no hash (Dex refuses it and does not start). The hash goes inline, where
            # the runbook keeps it; other logins naming a shared key keep it untouched.
            self._set_entry_inline(email, bcrypt_hash, key)
            return
        # Dex loads our Secret: the entry moves to a key of ours rather than keep a hash in the
        # ConfigMap. From a key other entries name too (a runbook that pointed two logins at one
        # Secret key) it moves as well: writing that key would give this password to those logins,
        # so this login gets a key of its own and theirs keep the old hash untouched.
        self._refuse_shared_key(config, email, own)

        def nobody_else() -> None:
            _, now = self._config()
            self._refuse_shared_key(now, email, own)

        self._write_secret_key(own, bcrypt_hash, only_if_absent=False, guard=nobody_else)
        self._set_entry_key(email, own)
        if key:
            log.info("Dex login %s moved from Secret key %s, which other logins name, to %s", email, key, own)

    def _set_entry_inline(self, email: str, bcrypt_hash: str, key: str | None) -> None:
        """Give the entry an inline ``hash`` (dropping ``hashFromEnv``), if it still names ``key``."""
        def mutate(cm: Obj) -> bool:
            config = self._parse(cm)
            entry = self._static_entry(config, email)
            if entry is None or (entry.get("hashFromEnv") or None) != key:
                raise _ConfigChanged
            if entry.get("hash") == bcrypt_hash and "hashFromEnv" not in entry:
                return False
            entry.pop("hashFromEnv", None)
            entry["hash"] = bcrypt_hash
            self._dump(cm, config)
            return True

        self.kube.read_modify_write(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace, mutate)

    @staticmethod
    def _key_named_by_others(config: Mapping[str, Any], email: str, key: str) -> list[str]:
        """The emails of the ``staticPasswords`` entries other than ``email``'s whose
        ``hashFromEnv`` is ``key``: whoever's password a write under ``key`` would also set."""
        return sorted(
            str(e.get("email", ""))
            for e in config.get("staticPasswords") or []
            if isinstance(e, dict) and e.get("hashFromEnv") == key
            and str(e.get("email", "")).lower() != email
        )

    def _refuse_shared_key(self, config: Mapping[str, Any], email: str, key: str) -> None:
        if others := self._key_named_by_others(config, email, key):
            raise PermanentError(
                f"The Secret key `{key}` (Secret `{self.settings.secret}`) that kf-chatops keeps "
                f"{email}'s password under is also named by the `staticPasswords` entry of "
                f"{', '.join(others)} in ConfigMap {self._cm_ref}; a password written there would "
                "open their login too, so nothing was written. An admin gives that entry a key "
                "of its own (`hashFromEnv`), then this is tried again."
            )

    def _set_entry_key(self, email: str, key: str) -> None:
        def mutate(cm: Obj) -> bool:
            config = self._parse(cm)
            # Re-checked in the write itself: a key another entry came to name meanwhile is theirs too.
            self._refuse_shared_key(config, email, key)
            entry = self._static_entry(config, email)
            if entry is None or entry.get("hashFromEnv") == key:
                return False
            entry.pop("hash", None)
            entry["hashFromEnv"] = key
            self._dump(cm, config)
            return True

        self.kube.read_modify_write(k8s.CONFIG_MAP, self.settings.configmap, self.settings.namespace, mutate)
