"""The auth service object and its wiring, once per process: owner map and its feeds, sessions, the access
checker, HTTP; ``build(runtime)`` (what ``server.load_service`` calls) registers its two servicers.

The gRPC process owns the owner map's feeds (the Kubernetes watch, the ownership LISTEN) and runs the
HTTP endpoints either itself (``auth.http_workers: 0``) or in worker processes (:mod:`.workers`). A
worker builds this same class with ``replica=True``: no feeds (the parent sends the owner map), HTTP
served in-process on the shared port.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from aigc_gateway.api.envoy import envoy_service_auth_v3_external_auth_pb2_grpc as ext_grpc
from aigc_gateway.api.v1 import auth_pb2_grpc
from aigc_gateway.config import ConfigError
from aigc_gateway.identity import JWTAuthenticator
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts
from aigc_gateway.sessions import SessionCookieAuthenticator

from .activity import ActivityRecorder
from .checker import AccessChecker
from .endpoints import AuthEndpoints, public_base
from .envoy import EnvoyAuthorizationServicer
from .oidc import OIDCClient
from .ownermap import OwnerMap
from .routes import RouteIndex
from .server import AuthServiceServicer
from .sources import OwnershipFollower, TemplateWatch
from .workers import WorkerPool, default_worker_count

log = logging.getLogger(__name__)


A = TypeVar("A")


def _find(runtime: Runtime, kind: type[A]) -> A | None:
    return next((a for a in runtime.authenticator.authenticators if isinstance(a, kind)), None)


class AuthService:
    def __init__(self, runtime: Runtime, *, replica: bool = False):
        settings = runtime.settings
        self.runtime = runtime
        self.settings = settings
        self.replica = replica
        self.owners = OwnerMap()
        self.index = RouteIndex(self.owners)
        self.follower: OwnershipFollower | None = None
        self.watch: TemplateWatch | None = None
        if not replica:
            self.follower = OwnershipFollower(runtime.db, self.owners, self.index,
                                             stale_after=settings.auth.owners_stale_after_seconds)
            self.watch = TemplateWatch(settings, self.index)
        self.workers: WorkerPool | None = None
        self.activity = ActivityRecorder(runtime.db)
        self.audit_log = runtime.audit_log("auth")
        self.sessions = _find(runtime, SessionCookieAuthenticator)
        bearer = _find(runtime, JWTAuthenticator)
        self.checker = AccessChecker(self.owners, self.sessions, bearer, self.activity,
                                     self.audit_log, allow_admin=settings.auth.allow_admin_access)
        self.oidc: OIDCClient | None = None
        self.endpoints: AuthEndpoints | None = None
        self.http_enabled = bool(settings.auth.http_listen) and self.sessions is not None
        if self.sessions is None and "http_listen" in settings.auth.model_fields_set and settings.auth.http_listen:
            # No built-in key: a default that "works" would be a key every installation shares.
            raise ConfigError(["auth.session_keys: required to serve the auth HTTP endpoints "
                               "(auth.http_listen is set); give at least one random key of 32+ characters"])

    @property
    def http_worker_count(self) -> int:
        """Worker processes to run for the HTTP endpoints (0: this process serves them)."""
        if self.replica:
            return 0
        configured = self.settings.auth.http_workers
        return default_worker_count() if configured is None else configured

    async def start(self) -> None:
        if self.follower is not None and self.watch is not None:
            self.follower.start()
            self.watch.start()
            # The server says SERVING (gRPC health: the pod's readiness) when this returns. Before the first
            # read of the owners and the routes every owner is refused: a restarted process taking checks
            # then refused them for ~0.1 s (bench/replicas.py --victims auth, docs/chaos.md).
            await self._feeds_settled()
        self.activity.start()
        if self.sessions is not None:
            self.sessions.store.start()
        if not self.http_enabled:
            log.warning("auth HTTP endpoints (/auth, /sign-in) are off: set auth.session_keys to serve them")
            return
        oidc_cfg = self.settings.oidc
        if oidc_cfg.issuer and oidc_cfg.client_id:
            self.oidc = OIDCClient(oidc_cfg, public_base(self.settings) + "/sign-in-callback")
        else:
            log.error("browser sign-in is off: oidc.issuer and oidc.client_id are not configured")
        assert self.sessions is not None
        count = self.http_worker_count
        if count:
            self.workers = WorkerPool(self.settings, self.owners, count)
            await self.workers.start()
            return
        self.endpoints = AuthEndpoints(self.settings, self.checker, self.sessions, self.oidc, self.audit_log)
        await self.endpoints.start(reserved=self.replica)

    async def _feeds_settled(self, timeout: float = 10.0) -> None:
        """Wait (boundedly) for the ownership rows and, when a cluster answers, the first list of templates and
        GameServers: what a process (and the HTTP workers' first copy) needs before it can admit an owner."""
        assert self.follower is not None and self.watch is not None
        try:
            await asyncio.wait_for(asyncio.gather(self.follower.synced.wait(), self.watch.settled.wait()), timeout)
        except TimeoutError:
            log.warning("auth: the owner map is not complete after %.0fs; serving with what there is (the HTTP "
                        "workers receive the rest as it comes)", timeout)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        if self.endpoints is not None:
            await self.endpoints.stop()
        if self.oidc is not None:
            await self.oidc.close()
        if self.watch is not None:
            await self.watch.close()
        if self.follower is not None:
            await self.follower.close()
        await self.activity.close()
        await self.checker.drain()


def build(runtime: Runtime) -> ServiceParts:
    service = AuthService(runtime)
    registrations = [Registration("aigc.gateway.v1.AuthService", AuthServiceServicer(service),
                                  auth_pb2_grpc.add_AuthServiceServicer_to_server,
                                  base=auth_pb2_grpc.AuthServiceServicer),
                     Registration("envoy.service.auth.v3.Authorization",
                                  EnvoyAuthorizationServicer(service.checker, runtime.settings.auth.cookie_name),
                                  ext_grpc.add_AuthorizationServicer_to_server)]
    return ServiceParts(registrations, on_start=[service.start], on_stop=[service.stop], service=service)
