"""The instance service object and its wiring, once per process; ``build(runtime)`` (what
``server.load_service`` calls).

Started with the gRPC server: the PostgreSQL change listener (a slot change in any replica wakes its
watchers), the Kubernetes client with the watch caches, the lifecycle, the consistency checker, the
reconciler and the idle culler, made again in the background until the cluster can be reached (the RPCs
that need them answer UNAVAILABLE meanwhile); stopped with it. The reads are reads.py, the RPC mapping
server.py.
"""
from __future__ import annotations

import asyncio
import logging

from aigc_gateway.api.v1 import instance_pb2_grpc
from aigc_gateway.background import Backoff, cancel_and_wait
from aigc_gateway.db.listen import PgListener, asyncpg_dsn
from aigc_gateway.db.models import INSTANCE_CHANNEL
from aigc_gateway.errors import Unavailable
from aigc_gateway.kube import KubeHandle
from aigc_gateway.names import InstanceRef
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts

from . import faults
from .cache import Change, ClusterCache
from .cluster import Cluster
from .consistency import ConsistencyChecker
from .idle import Culler
from .lifecycle import Lifecycle
from .reads import InstanceReads
from .reconciler import SlotReconciler
from .rollouts import Rollouts
from .server import InstanceServicer
from .slots import SlotStore

log = logging.getLogger(__name__)


class InstanceService:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self.cfg = runtime.settings.instance
        self.store = SlotStore(runtime.db)
        self.kube = KubeHandle(runtime.settings.kubernetes)
        self.cluster: Cluster | None = None
        self.lifecycle: Lifecycle | None = None
        self.cache: ClusterCache | None = None
        self.checker: ConsistencyChecker | None = None
        self.reconciler: SlotReconciler | None = None
        self.rollouts: Rollouts | None = None
        self.culler: Culler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: PgListener | None = None
        self.reads = InstanceReads(runtime.db, self.store, self.cfg, self.parts,
                                   lambda: self._listener is not None and self._listener.live)

    async def start(self) -> None:
        faults.armed()
        dsn = asyncpg_dsn(self.runtime.db.url)
        if dsn:  # PostgreSQL; on SQLite watchers re-read their row every reads.REFRESH_SECONDS instead
            self._listener = PgListener(dsn, {INSTANCE_CHANNEL: self._heard}, on_reconnect=self._reconnected)
            self._listener.start()
        try:
            await self._connect()
        except Exception as exc:  # noqa: BLE001 - no usable kubeconfig yet: serve UNAVAILABLE, keep trying
            log.warning("cannot set up the Kubernetes client (%s); retrying in the background", exc)
            self._tasks.append(asyncio.create_task(self._connect_later(), name="instance-kube-connect"))

    async def _connect_later(self) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            await backoff.sleep()
            try:
                await self._connect()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot set up the Kubernetes client: %s", exc)

    async def _connect(self) -> None:
        kube = await self.kube.get()
        self.cluster = Cluster(kube, self.settings.namespaces, self.settings.gss_labels)
        self.lifecycle = Lifecycle(self.runtime.db, self.store, self.cluster, self.cfg, self.runtime.idempotency)
        self.cache = ClusterCache(kube, self.settings.namespaces, self.settings.gss_labels)
        self.checker = ConsistencyChecker(self.lifecycle, self.cluster, self.store)
        template = self.settings.template
        self.rollouts = Rollouts(self.lifecycle, template.annotation_prefix, template.rollout_policy,
                                 template.rollout_idle_after_seconds, self.runtime.audit_log("instance"))
        self.lifecycle.consent = self.rollouts.consent
        self.reconciler = SlotReconciler(self.runtime.db, self.lifecycle, self.checker, self.store,
                                         self.cfg.reconcile_interval_seconds, self.rollouts)
        self.cache.on_game_server.append(self.reconciler.game_server_changed)
        self.cache.start()
        self._tasks.append(asyncio.create_task(self.reconciler.run(), name="instance-reconciler"))
        # Idle auto-pause runs on every replica: each decision is taken under the template lock (see idle.py).
        self.culler = Culler(self.runtime.db, self.lifecycle, self.cache, self.cfg.idle,
                             self.settings.template.annotation_prefix, self.runtime.audit_log("instance"))
        if self.cfg.idle.enabled:
            self._tasks.append(asyncio.create_task(self.culler.run(), name="instance-idle-culler"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._listener is not None:
            await self._listener.close()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.culler is not None:
            await self.culler.close()
        if self.lifecycle is not None:
            await self.lifecycle.close()
        if self.cache is not None:
            await self.cache.stop()
        await self.kube.close()

    def _reconnected(self) -> None:
        """LISTEN (re)connected: a change committed while it was down was not heard, so every watcher reads."""
        if self.cache is not None:
            self.cache.wake_all(Change("gateway"))

    def _heard(self, payload: str) -> None:
        """A slot changed in any replica (pg_notify 'ns/tpl/id' on `aigc_instances`): wake its watchers."""
        namespace, _, rest = payload.partition("/")
        template, _, instance_id = rest.rpartition("/")
        if self.cache is not None and instance_id.isdigit():
            self.cache.wake(InstanceRef(namespace, template, int(instance_id)), Change("gateway"))

    def parts(self) -> tuple[Lifecycle, ClusterCache, ConsistencyChecker]:
        """The parts made once Kubernetes is reachable; UNAVAILABLE (retryable) until then."""
        if self.lifecycle is None or self.cache is None or self.checker is None:
            raise Unavailable("the instance service is starting", reason="STARTING", retry_after=1.0)
        return self.lifecycle, self.cache, self.checker


def build(runtime: Runtime) -> ServiceParts:
    service = InstanceService(runtime)
    return ServiceParts(
        [Registration("aigc.gateway.v1.InstanceService", InstanceServicer(service),
                      instance_pb2_grpc.add_InstanceServiceServicer_to_server,
                      base=instance_pb2_grpc.InstanceServiceServicer)],
        on_start=[service.start], on_stop=[service.stop], service=service)
