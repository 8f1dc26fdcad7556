"""Who the viewer is and what they may see, as the API server answers it.

The UI never decides access itself. A viewer comes with a bearer token (sent by the browser, or
by a proxy in front of the UI) or, behind an authenticating proxy that presents a client
certificate, with the proxy's user and group headers. The API server then answers:
- who the token belongs to (SelfSubjectReview, made with the token itself);
- whether that viewer may list nodes, and list pods in a namespace (SelfSubjectAccessReview made
  with the viewer's token, or SubjectAccessReview about the proxy's user made with the UI's own
  credentials).
Answers are remembered for a short time per viewer, so a page costs no API call when nothing is new.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import Client, KubeConfig

log = logging.getLogger(__name__)

SELF_SUBJECT_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SELF_ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class NotAuthenticated(Exception):
    """The viewer brought no identity, or one the API server does not accept."""


class ApiUnavailable(Exception):
    """The API server could not be asked who the viewer is (unreachable, or an error of its own)."""


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    # The viewer's bearer token; None when an authenticating proxy vouches for user and groups.
    token: str | None = field(default=None, repr=False)
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def fingerprint(self) -> str:
        source = self.token if self.token is not None else "\0".join((self.user, *self.groups))
        return hashlib.sha256(source.encode()).hexdigest()


@dataclass(frozen=True)
class Check:
    """May the viewer `verb` the `resource` (in `namespace`; "" = cluster-wide or every namespace)?"""

    verb: str
    resource: str
    namespace: str = ""
    group: str = ""


LIST_NODES = Check("list", "nodes")
LIST_ALL_PODS = Check("list", "pods")


@dataclass(frozen=True)
class Endpoint:
    """The API server's address and the CA that signs its certificate."""

    server: str
    tls: ssl.SSLContext

    @staticmethod
    def from_kubeconfig(path: str | None) -> Endpoint:
        config = (KubeConfig.from_file(path) if path else KubeConfig.from_service_account()).get()
        if config is None:
            raise ValueError("the kubeconfig has no current context")
        cluster = config.cluster
        if cluster.certificate_auth:
            tls = ssl.create_default_context(cafile=str(config.abs_file(cluster.certificate_auth)))
        elif cluster.certificate_auth_data:
            tls = ssl.create_default_context(cadata=base64.b64decode(cluster.certificate_auth_data).decode())
        else:
            tls = ssl.create_default_context()
        return Endpoint(server=cluster.server.rstrip("/"), tls=tls)


class Reviewer:
    """Asks the API server about viewers; remembers each answer for `ttl` seconds."""

    def __init__(self, endpoint: Endpoint, own_client: Client | None, ttl: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 10.0):
        self.endpoint = endpoint
        self.own_client = own_client
        self.ttl = ttl
        self.clock = clock
        self._http = httpx2.Client(base_url=endpoint.server, verify=endpoint.tls, timeout=timeout)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="access-review")
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, Check], tuple[bool, float]] = {}
        self._tokens: dict[str, tuple[Identity, float]] = {}
        self.calls = 0  # API calls made, for tests and the benchmark

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    def _post(self, path: str, token: str, body: dict[str, Any]) -> httpx2.Response:
        with self._lock:
            self.calls += 1
        return self._http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    def identify(self, token: str) -> Identity:
        """The identity the API server gives this token; NotAuthenticated when it gives none."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            known = self._tokens.get(key)
            if known is not None and known[1] > now:
                return known[0]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            response = self._post(SELF_SUBJECT_REVIEW, token, body)
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"the API server could not be reached: {exc}") from None
        if response.status_code in (401, 403):
            raise NotAuthenticated("the API server did not accept this token")
        if response.status_code >= 400:
            raise ApiUnavailable(f"the API server answered {response.status_code} to a SelfSubjectReview")
        info = (response.json().get("status") or {}).get("userInfo") or {}
        identity = Identity(
            user=str(info.get("username") or ""),
            groups=tuple(info.get("groups") or ()),
            token=token,
            extra=tuple((k, tuple(v)) for k, v in sorted((info.get("extra") or {}).items())),
        )
        with self._lock:
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[key] = (identity, now + self.ttl)
        return identity

    def _review(self, identity: Identity, check: Check) -> bool:
        attributes = {"verb": check.verb, "resource": check.resource, "group": check.group}
        if check.namespace:
            attributes["namespace"] = check.namespace
        if identity.token is not None:
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attributes}}
            response = self._post(SELF_ACCESS_REVIEW, identity.token, body)
            if response.status_code >= 400:
                log.warning("SelfSubjectAccessReview for %s answered %s", identity.user, response.status_code)
                return False
            return bool((response.json().get("status") or {}).get("allowed"))
        if self.own_client is None:
            return False
        from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
        from lightkube.resources.authorization_v1 import SubjectAccessReview
        with self._lock:
            self.calls += 1
        review = self.own_client.create(SubjectAccessReview(spec=SubjectAccessReviewSpec(
            user=identity.user, groups=list(identity.groups),
            extra={k: list(v) for k, v in identity.extra} or None,
            resourceAttributes=ResourceAttributes(verb=check.verb, resource=check.resource, group=check.group,
                                                  namespace=check.namespace or None),
        )))
        return bool(review.status is not None and review.status.allowed)

    def allowed(self, identity: Identity, checks: Iterable[Check]) -> dict[Check, bool]:
        """The answer to every check; those not remembered are asked in parallel. Errors deny."""
        wanted = list(dict.fromkeys(checks))
        now = self.clock()
        answers: dict[Check, bool] = {}
        missing = []
        with self._lock:
            for check in wanted:
                known = self._answers.get((identity.fingerprint, check))
                if known is not None and known[1] > now:
                    answers[check] = known[0]
                else:
                    missing.append(check)

        def ask(check: Check) -> bool:
            try:
                return self._review(identity, check)
            except Exception as exc:  # noqa: BLE001 - the API server unreachable or refusing: deny
                log.warning("access review %s for %s failed: %s", check, identity.user, exc)
                return False

        for check, answer in zip(missing, self._pool.map(ask, missing), strict=True):
            answers[check] = answer
            with self._lock:
                if len(self._answers) > 100_000:
                    self._answers.clear()
                self._answers[(identity.fingerprint, check)] = (answer, now + self.ttl)
        return answers


@dataclass(frozen=True)
class Viewer:
    """What one viewer may see on this page."""

    identity: Identity
    nodes: bool  # may list nodes: node names and device totals
    all_pods: bool  # may list pods in every namespace
    namespaces: frozenset[str] = frozenset()  # namespaces where they may list pods

    def may_see_pods(self, namespace: str) -> bool:
        return self.all_pods or namespace in self.namespaces


def viewer(reviewer: Reviewer, identity: Identity, namespaces: Iterable[str]) -> Viewer:
    """The viewer's rights over nodes and over the pods of the given namespaces."""
    first = reviewer.allowed(identity, [LIST_NODES, LIST_ALL_PODS])
    if first[LIST_ALL_PODS]:
        return Viewer(identity, nodes=first[LIST_NODES], all_pods=True)
    per_namespace = reviewer.allowed(identity, [Check("list", "pods", ns) for ns in sorted(set(namespaces))])
    return Viewer(identity, nodes=first[LIST_NODES], all_pods=False,
                  namespaces=frozenset(c.namespace for c, ok in per_namespace.items() if ok))
