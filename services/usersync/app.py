"""The usersync service object, built once per process from the runtime, its background work, and
``build(runtime)`` (what ``server.load_service`` calls).

Started with the gRPC server (``on_start``): the outbox delivery loop and the periodic reconcile
(when Logto is configured), and the webhook listener (when a signing key is configured). With no
Logto endpoint the mirror is off: the RPCs that need Logto answer FAILED_PRECONDITION.
"""
from __future__ import annotations

import asyncio
import logging

from aigc_gateway import kube
from aigc_gateway.api.v1 import usersync_pb2_grpc
from aigc_gateway.background import cancel_and_wait
from aigc_gateway.db.listen import PgListener, asyncpg_dsn
from aigc_gateway.db.models import INSTANCE_CHANNEL
from aigc_gateway.errors import FailedPrecondition
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts
from aigc_gateway.sessions import SessionStore

from . import faults
from .customdata import CustomDataWriter
from .disputes import Resolver
from .importer import Importer
from .logto import LogtoClient, LogtoSettings
from .outbox import OutboxDelivery
from .reconcile import MirrorReconciler
from .server import UserSyncServiceServicer
from .sync import Syncer
from .userdeleted import UserDeletedPolicy
from .webhooks import WebhookReceiver, WebhookServer

log = logging.getLogger(__name__)


def logto_settings(runtime: Runtime) -> LogtoSettings:
    cfg = runtime.settings.usersync
    return LogtoSettings(endpoint=cfg.logto_endpoint, app_id=cfg.logto_app_id,
                         app_secret=cfg.logto_app_secret.get_secret_value(), resource=cfg.logto_resource,
                         timeout=cfg.logto_timeout_seconds, max_attempts=cfg.logto_max_attempts,
                         max_retry_seconds=cfg.logto_retry_budget_seconds)


class UserSync:
    def __init__(self, runtime: Runtime):
        faults.armed()  # a crash test's switch naming no point is reported at start
        self.runtime = runtime
        cfg = runtime.settings.usersync
        self.audit = runtime.audit_log("usersync")
        self.enabled = bool(cfg.logto_endpoint)
        self.client = LogtoClient(logto_settings(runtime))
        self.writer = CustomDataWriter(self.client, self.audit)
        self.delivery = OutboxDelivery(runtime.db, self.writer, cfg, self.audit)
        self.syncer = Syncer(runtime.db, self.client, self.writer, self.delivery)
        self.reconciler = MirrorReconciler(runtime.db, self.client, self.writer)
        self.kube = kube.KubeHandle(runtime.settings.kubernetes)
        self.importer = Importer(runtime.db, self.client, self.kube.get, runtime.settings, self.audit)
        self.disputes = Resolver(runtime.db, self.importer.read_gss, self.kube.get)
        policy = UserDeletedPolicy(cfg.user_deleted_policy, lambda: runtime.channel("instance"),
                                   lambda: runtime.call_metadata("usersync"), SessionStore(runtime.db).revoke_user)
        self.webhooks = WebhookServer(WebhookReceiver(runtime.db, cfg.webhook_signing_key.get_secret_value(),
                                                      cfg.webhook_max_age_seconds, policy, self.audit),
                                      cfg.http_listen)
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: PgListener | None = None

    def require_logto(self) -> None:
        if not self.enabled:
            raise FailedPrecondition("Logto is not configured (usersync.logto_endpoint is empty)",
                                     reason="LOGTO_NOT_CONFIGURED")

    async def start(self) -> None:
        cfg = self.runtime.settings.usersync
        if self.enabled:
            self._tasks.append(asyncio.create_task(self.delivery.run_forever(), name="usersync-outbox"))
            dsn = asyncpg_dsn(self.runtime.db.url)
            if dsn:
                # A committed ownership change wakes the delivery at once; polling stays the guarantee.
                self._listener = PgListener(dsn, {INSTANCE_CHANNEL: lambda _payload: self.delivery.kick()},
                                            on_reconnect=self.delivery.kick)
                self._listener.start()
            if cfg.reconcile_interval_seconds:
                self._tasks.append(asyncio.create_task(self.reconciler.run_forever(cfg.reconcile_interval_seconds),
                                                       name="usersync-reconcile"))
        else:
            log.warning("usersync: no Logto endpoint configured; the custom-data mirror is off")
        if cfg.webhook_signing_key.get_secret_value():
            await self.webhooks.start()
        else:
            log.warning("usersync: no webhook signing key configured; POST /webhooks/logto is not served")

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.webhooks.stop()
        await self.client.close()
        await self.kube.close()


def build(runtime: Runtime) -> ServiceParts:
    usersync = UserSync(runtime)
    return ServiceParts(
        [Registration("aigc.gateway.v1.UserSyncService", UserSyncServiceServicer(usersync),
                      usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                      base=usersync_pb2_grpc.UserSyncServiceServicer)],
        on_start=[usersync.start], on_stop=[usersync.stop], service=usersync)
