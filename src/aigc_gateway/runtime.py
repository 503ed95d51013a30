"""The resources one process shares between the services it runs.

Built once from :class:`~aigc_gateway.config.Settings`: the database, the
identity chain, the replay store (with this process's replica heartbeat), and clients for calling the other services
through their contracts. Services receive it in their ``build`` function and
take what they need; they never import each other.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from .audit import AuditLog
from .calls import outgoing_metadata
from .channels import CLIENT_CHANNEL_OPTIONS
from .config import Settings
from .db import Database
from .idempotency import IdempotencyStore
from .identity import ChainAuthenticator, JWTAuthenticator, ServiceTokenAuthenticator
from .replicas import ReplicaRegistry


@dataclass
class Runtime:
    settings: Settings
    db: Database
    authenticator: ChainAuthenticator
    idempotency: IdempotencyStore
    service_token: str
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, *, generate_service_token: bool = False) -> Runtime:
        db = Database(settings.database_url(), pool_size=settings.database.pool_size, echo=settings.database.echo)
        token = settings.service_identity.token.get_secret_value()
        if not token and generate_service_token:
            # `serve all`: every service is in this process, so a per-process secret is enough.
            token = secrets.token_urlsafe(48)
        authenticator = ChainAuthenticator([ServiceTokenAuthenticator(token), JWTAuthenticator(settings.oidc)])
        if settings.auth.session_keys:
            # The auth service's session cookie is a credential on every server (the REST bridge forwards it).
            from .sessions import SessionCookieAuthenticator

            authenticator.add(SessionCookieAuthenticator(settings, db))
        replay = settings.idempotency
        idempotency = IdempotencyStore(db, ReplicaRegistry(db, replay.replica_lease_seconds),
                                       retry_after=replay.in_progress_retry_after_seconds,
                                       retention=timedelta(hours=replay.retention_hours))
        return cls(settings=settings, db=db, authenticator=authenticator, idempotency=idempotency,
                   service_token=token)

    def audit_log(self, service: str) -> AuditLog:
        return AuditLog(self.db, service, self.settings.audit.denied_per_minute)

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to another gateway service (kept for the life of the process)."""
        if service not in self._channels:
            target = self.settings.servers.endpoint(service).dial_target()
            # round_robin: a target naming several replicas spreads calls over all of them.
            self._channels[service] = grpc.aio.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS)
        return self._channels[service]

    def call_metadata(self, caller: str) -> tuple[tuple[str, str], ...]:
        """Metadata for a call from service ``caller``: the end user's credentials, else the service's."""
        return outgoing_metadata(self.service_token, caller)

    async def close(self) -> None:
        for authenticator in self.authenticator.authenticators:
            close = getattr(authenticator, "close", None)  # e.g. the session cache's LISTEN connection
            if close is not None:
                await close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await self.idempotency.close()
        await self.db.close()
