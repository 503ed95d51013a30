"""The one module that talks to the Kubernetes API (kubernetes_asyncio).

Objects travel as plain JSON dicts, exactly as the apiserver serves them, so
unknown fields of a GameServerSet survive a read-modify-write and the pure
logic elsewhere can be tested on literal dicts. API failures become domain
errors: 404 NotFound, 409 Aborted (a stale resourceVersion: retry), 422
InvalidArgument with the apiserver's causes as field violations, 5xx,
connection failures and a missing or unusable kubeconfig Unavailable ("the
Kubernetes cluster is not reachable").
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from . import okg
from .config import KubernetesConfig
from .errors import Aborted, AlreadyExists, GatewayError, InvalidArgument, NotFound, Unavailable, Violation
from .okg import OWNER_GSS_LABEL as OWNER_GSS_LABEL  # the OKG model owns it; listed with the kinds below

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Patch = Obj | list[Any]  # a merge patch, or a JSON patch's operations (named here: Kube.list shadows `list`)


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if sub:
            base += f"/{sub}"
        return base


GSS = Kind(okg.GROUP, okg.VERSION, "gameserversets", okg.GSS_KIND)
GAMESERVER = Kind(okg.GROUP, okg.VERSION, "gameservers", okg.GAMESERVER_KIND)
POD = Kind("", "v1", "pods", "Pod")
PVC = Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
EVENT = Kind("", "v1", "events", "Event")
SERVICE = Kind("", "v1", "services", "Service")
NAMESPACE = Kind("", "v1", "namespaces", "Namespace")
INGRESS = Kind("networking.k8s.io", "v1", "ingresses", "Ingress")
# Kruise's Advanced StatefulSet under a GameServerSet (same name): its status has the template's update revision.
ADVANCED_STATEFULSET = Kind("apps.kruise.io", "v1beta1", "statefulsets", "StatefulSet")


def _error(exc: ApiException, what: str) -> GatewayError:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") or exc.reason or "Kubernetes API error"
    if exc.status == 404:
        return NotFound(f"{what} not found", reason="NOT_FOUND")
    if exc.status == 409:
        if body.get("reason") == "AlreadyExists":
            return AlreadyExists(f"{what} already exists", reason="ALREADY_EXISTS")
        return Aborted(f"{what} changed concurrently; read it again and retry", reason="CONFLICT", retry_after=0.2)
    if exc.status in (400, 422):
        causes = (body.get("details") or {}).get("causes") or []
        violations = [Violation(c.get("field") or "", c.get("message") or "", c.get("reason") or "") for c in causes]
        return InvalidArgument(f"the Kubernetes API refused {what}: {message}", reason="KUBERNETES_INVALID",
                               violations=violations or [Violation("", message, "KUBERNETES_INVALID")])
    if exc.status == 429 or exc.status >= 500:
        return Unavailable(f"the Kubernetes API is unavailable: {message}", reason="KUBERNETES_UNAVAILABLE",
                           retry_after=1.0)
    # 401/403 mean our own credentials are wrong: an operator problem, not the caller's.
    return GatewayError(f"the Kubernetes API refused {what} ({exc.status}): {message}", reason="KUBERNETES_ERROR")


class Kube:
    """An API client plus typed helpers; one per process, closed on shutdown."""

    def __init__(self, api: client.ApiClient):
        self.api = api

    @classmethod
    async def connect(cls, cfg: KubernetesConfig) -> Kube:
        """The client; Unavailable (retryable) when no usable configuration is found, as when the apiserver does
        not answer: to a caller both mean the cluster cannot be reached now (a dev stack without Kubernetes, a
        kubeconfig not mounted yet), never an internal error."""
        configuration = client.Configuration()
        try:
            if cfg.kubeconfig and not os.path.isfile(cfg.kubeconfig):  # noqa: ASYNC240 - one stat, at connect
                raise OSError("the file does not exist")  # the library would only say "Invalid kube-config file"
            if cfg.kubeconfig:
                await config.load_kube_config(config_file=cfg.kubeconfig, context=cfg.context or None,
                                              client_configuration=configuration)
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    await config.load_kube_config(context=cfg.context or None, client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError) as exc:
            where = cfg.kubeconfig or "in-cluster or ~/.kube/config"
            raise Unavailable(f"the Kubernetes cluster is not reachable: no usable configuration ({where}: {exc})",
                              reason="KUBERNETES_UNAVAILABLE", retry_after=5.0) from None
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    async def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                      content_type: str = "application/json", what: str = "", timeout: float = 30) -> Obj:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response = await self.api.call_api(
                path, method, query_params=[(k, v) for k, v in (query or {}).items() if v not in (None, "")],
                header_params=headers, body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
        except ApiException as exc:
            raise _error(exc, what or path) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the Kubernetes cluster is not reachable: {exc}", reason="KUBERNETES_UNAVAILABLE",
                              retry_after=1.0) from None
        raw = response[0] if isinstance(response, tuple) else response
        try:  # the body arrives after the status line: a connection held or cut in between fails here
            data = await raw.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the Kubernetes cluster is not reachable: {exc!r}", reason="KUBERNETES_UNAVAILABLE",
                              retry_after=1.0) from None
        if raw.status >= 400:  # with _preload_content=False kubernetes_asyncio does not raise for the status itself
            failure = ApiException(status=raw.status, reason=raw.reason)
            failure.body = data.decode(errors="replace")
            raise _error(failure, what or path)
        return json.loads(data) if data else {}

    # -- typed helpers -----------------------------------------------------

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", kind.path(namespace, name), what=f"{kind.kind} {namespace}/{name}")

    async def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str = "",
                   field_selector: str = "") -> Obj:
        """The list object (``items`` and ``metadata.resourceVersion`` for a following watch)."""
        return await self.request("GET", kind.path(namespace), what=f"{kind.kind} list",
                                  query={"labelSelector": label_selector, "fieldSelector": field_selector})

    async def create(self, kind: Kind, namespace: str | None, body: Obj, *, dry_run: bool = False) -> Obj:
        return await self.request("POST", kind.path(namespace), body=body, query={"dryRun": "All" if dry_run else None},
                                  what=f"{kind.kind} {body.get('metadata', {}).get('name', '')}")

    async def replace(self, kind: Kind, namespace: str | None, body: Obj, *, dry_run: bool = False) -> Obj:
        """PUT: with ``metadata.resourceVersion`` set, a concurrent change makes it fail with Aborted."""
        name = body["metadata"]["name"]
        return await self.request("PUT", kind.path(namespace, name), body=body,
                                  query={"dryRun": "All" if dry_run else None}, what=f"{kind.kind} {namespace}/{name}")

    async def patch(self, kind: Kind, namespace: str | None, name: str, patch: Patch, *,
                    patch_type: str = "application/merge-patch+json") -> Obj:
        return await self.request("PATCH", kind.path(namespace, name), body=patch, content_type=patch_type,
                                  what=f"{kind.kind} {namespace}/{name}")

    async def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str = "Background",
                     missing_ok: bool = True, uid: str = "") -> bool:
        """Delete; False when it was already gone (and ``missing_ok``). ``uid`` guards against a same-named successor."""
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", kind.path(namespace, name), body=body, what=f"{kind.kind} {namespace}/{name}")
            return True
        except NotFound:
            if missing_ok:
                return False
            raise

    async def watch(self, kind: Kind, namespace: str | None = None, *, resource_version: str = "",
                    label_selector: str = "", field_selector: str = "",
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Obj]]:
        """Yield (type, object) from one watch request until the server ends it; callers re-list and re-watch
        (informer style) when it ends or reports 410 Gone as an ERROR event."""
        query = {"watch": "true", "resourceVersion": resource_version, "labelSelector": label_selector,
                 "fieldSelector": field_selector, "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": "true"}
        try:
            response = await self.api.call_api(
                kind.path(namespace), "GET", query_params=[(k, v) for k, v in query.items() if v not in (None, "")],
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout_seconds + 30)
        except ApiException as exc:
            raise _error(exc, f"watch of {kind.plural}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the Kubernetes cluster is not reachable: {exc}",
                              reason="KUBERNETES_UNAVAILABLE") from None
        raw = response[0] if isinstance(response, tuple) else response
        if raw.status >= 400:  # as in request(): the status is not checked for us
            failure = ApiException(status=raw.status, reason=raw.reason)
            failure.body = (await raw.read()).decode(errors="replace")
            raw.release()
            raise _error(failure, f"watch of {kind.plural}")
        try:
            async for line in raw.content:
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]
        finally:
            raw.release()


class KubeHandle:
    """A service's one Kubernetes client, connected on first use: the service starts, and answers UNAVAILABLE,
    without a cluster (a dev stack without Kubernetes, a kubeconfig not mounted yet), and connects as soon as
    one is there; every part of the service shares the one connection pool, closed once at stop.

    ``kube`` gives a client made elsewhere (a test's): the handle then never closes it."""

    def __init__(self, cfg: KubernetesConfig, kube: Kube | None = None):
        self.cfg = cfg
        self._kube = kube
        self._owned = kube is None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> Kube | None:
        """The client if it is connected, else None (no attempt made)."""
        return self._kube

    async def get(self) -> Kube:
        """The client, connecting it first if needed; Unavailable while no usable configuration is found."""
        if self._kube is None:
            async with self._lock:
                if self._kube is None:
                    self._kube = await Kube.connect(self.cfg)
        return self._kube

    async def close(self) -> None:
        kube, self._kube = self._kube, None
        if kube is not None and self._owned:
            await kube.close()
