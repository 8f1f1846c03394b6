"""Secrets made at the moment their owner asks to see them: Dex passwords and ServiceAccount tokens.

Why it works this way:

* **Nothing secret exists before the click.** A workspace's Dex user is created with the hash of
  random bytes nobody sees, and a token request creates only its ServiceAccount. The password or
  token is generated here, when the owner presses the button in their DM, and goes only into the
  returned ``RevealedSecret`` (shown once in their modal). What reaches the cluster is the bcrypt
  hash (never the password), and the token is never logged, stored or put in an error message;
  the audit log keeps ``fingerprint`` (12 hex characters of SHA-256), which identifies a secret
  without revealing it.
* **Tokens outlive nothing.** The TokenRequest asks for the grant's remaining lifetime (the
  request's ``--ttl`` counted from when it succeeded), but at least the API minimum of 10 minutes;
  the apiserver may shorten it (``--service-account-max-token-expiration``), so the expiry shown is
  the one read back from ``status.expirationTimestamp``. Revoking deletes the ServiceAccount,
  which invalidates every token made for it.
* **Ready to paste.** The token comes with a kubeconfig (server from ``KFBOT_KUBE_API_URL``, CA from
  ``kube_ca_file`` or the namespace's ``kube-root-ca.crt``) and, for the pipelines audience, a
  ``kfp.Client`` snippet.
"""

from __future__ import annotations

import base64
import hashlib
import secrets as pysecrets
import string
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import bcrypt
import yaml
from kubernetes import client

from handlers.errors import NotFound, PermanentError
from handlers.kinds import PIPELINES_AUDIENCE
from handlers.model import Request, RequestState
from handlers.plan import as_list
from handlers.ports import Clock, RevealedSecret
from provisioning import k8s
from provisioning.dex import DexActions, check_cost
from provisioning.k8s import Kube
from provisioning.settings import KubeflowSettings

PASSWORD_LENGTH: Final = 20
# Letters and digits without look-alikes (0/O, 1/l/I): the password is typed from a modal.
_PASSWORD_ALPHABET: Final = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
MIN_TOKEN_SECONDS: Final = 600
"""The TokenRequest API refuses shorter lifetimes ("may not specify a duration less than 10 minutes")."""
KFP_IN_CLUSTER_HOST: Final = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
"""The KFP API server inside the cluster; it authenticates a bearer token with a TokenReview for the
``pipelines.kubeflow.org`` audience (kubeflow-reference §4)."""


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password (about 5.8 bits a character) with at least one lower, upper and digit."""
    if length < 16:
        raise ValueError("passwords are at least 16 characters")
    while True:
        candidate = "".join(pysecrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
        if (any(c.islower() for c in candidate) and any(c.isupper() for c in candidate)
                and any(c.isdigit() for c in candidate)):
            return candidate


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class Secrets:
    """``handlers.ports.SecretIssuer`` over Dex and the TokenRequest API."""

    def __init__(self, api: client.ApiClient, kubeflow: KubeflowSettings, dex: DexActions, clock: Clock,
                 bcrypt_cost: int) -> None:
        self.kube = Kube(api)
        self.settings = kubeflow
        self.dex = dex
        self.clock = clock
        self.bcrypt_cost = check_cost(bcrypt_cost)

    # -- passwords ---------------------------------------------------------------------------

    def password(self, email: str) -> RevealedSecret:
        password = generate_password()
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(self.bcrypt_cost)).decode()
        self.dex.set_password_hash(email, hashed)
        return RevealedSecret(kind="password", value=password, fingerprint=fingerprint(password))

    # -- tokens ------------------------------------------------------------------------------

    def token(self, request: Request) -> RevealedSecret:
        step = next((s for s in request.plan.steps if s.action == "kubeflow.token_account"), None)
        if step is None:
            raise PermanentError(f"Request {request.id} did not create a token account.")
        if request.state is not RequestState.SUCCEEDED:
            raise PermanentError(f"Request {request.id} is {request.state.value}; a token is made only for a "
                                 "request that succeeded.")
        params = step.params
        namespace, name = str(params["namespace"]), str(params["name"])
        audiences = [str(a) for a in as_list(params.get("audiences") or [])]
        granted_at = request.updated_at or request.created_at
        ttl = params.get("ttl_seconds")
        expires = granted_at + timedelta(seconds=ttl if isinstance(ttl, int) and ttl else 3600)
        remaining = (expires - self.clock.now()).total_seconds()
        if remaining <= 0:
            raise PermanentError(f"This token's time ran out at {expires:%Y-%m-%d %H:%M} UTC; ask for a "
                                 "new one with `/kf token`.")
        server = self.settings.kube_api_url
        if not server:
            raise PermanentError("The bot does not know the API server URL to put in a kubeconfig "
                                 "(set KFBOT_KUBE_API_URL).")
        # The CA first: if it is missing, no token should have been made for nothing.
        ca = self._ca_data(namespace) if not server.startswith("http://") else None
        try:
            response = self.kube.create_token(namespace, name, audiences,
                                              max(MIN_TOKEN_SECONDS, int(remaining)))
        except k8s.Missing as exc:
            raise NotFound(f"The token account `{name}` is gone (revoked or expired); ask for a new "
                           "token.") from exc
        status = response.get("status") or {}
        token = status.get("token")
        if not isinstance(token, str) or not token:
            raise PermanentError("The Kubernetes API answered the TokenRequest without a token.")
        extra = {"kubeconfig": self._kubeconfig(server, ca, namespace, name, token)}
        if PIPELINES_AUDIENCE in audiences:
            extra["kfp"] = self._kfp_snippet(namespace, token)
        return RevealedSecret(kind="token", value=token, fingerprint=fingerprint(token),
                              expires_at=_parse_time(status.get("expirationTimestamp")), extra=extra)

    def _ca_data(self, namespace: str) -> str:
        """base64 of the PEM CA bundle, as ``certificate-authority-data`` wants it."""
        if self.settings.kube_ca_file:
            try:
                pem = Path(self.settings.kube_ca_file).read_bytes()
            except OSError as exc:
                raise PermanentError(f"The CA file {self.settings.kube_ca_file} cannot be read "
                                     f"({type(exc).__name__}).") from exc
        else:
            cm = self.kube.get(k8s.CONFIG_MAP, "kube-root-ca.crt", namespace)
            text = ((cm or {}).get("data") or {}).get("ca.crt")
            if not text:
                raise PermanentError(f"Namespace `{namespace}` has no ConfigMap kube-root-ca.crt with "
                                     "ca.crt; set KFBOT_KUBE_CA_FILE.")
            pem = str(text).encode()
        return base64.b64encode(pem).decode()

    @staticmethod
    def _kubeconfig(server: str, ca: str | None, namespace: str, account: str, token: str) -> str:
        cluster: dict[str, str] = {"server": server}
        if ca is not None:
            cluster["certificate-authority-data"] = ca
        context = f"kubeflow-{namespace}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubeflow", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": "kubeflow", "user": account,
                                                       "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)

    @staticmethod
    def _kfp_snippet(namespace: str, token: str) -> str:
        return (
            "import kfp\n\n"
            "# Inside the cluster (a notebook): the KFP API server checks the token with a TokenReview.\n"
            "# From outside, use host='https://<your Kubeflow host>/pipeline' instead.\n"
            f"client = kfp.Client(host={KFP_IN_CLUSTER_HOST!r}, namespace={namespace!r},\n"
            f"                    existing_token={token!r})\n"
            "print(client.list_experiments())\n"
        )
