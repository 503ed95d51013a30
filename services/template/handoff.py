"""The template service's calls to the other services when a template is deleted, through their contracts.

Order matters: usersync finds the owners to clean up from the ownership rows,
so UserSyncService.CleanupTemplate runs first and InstanceService.PurgeInstances
(which forgets those rows) only after it succeeded. A failed step is reported,
not raised: the Kubernetes side is already gone, and DeleteTemplate with force
on the same name resumes the hand-off later.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc

from aigc_gateway.api.v1 import (
    instance_pb2,
    instance_pb2_grpc,
    usersync_pb2,
    usersync_pb2_grpc,
)
from aigc_gateway.runtime import Runtime

log = logging.getLogger(__name__)
CALL_TIMEOUT = 60.0
CLEANUP_USERS = "UserSyncService.CleanupTemplate"
PURGE_INSTANCES = "InstanceService.PurgeInstances"


@dataclass
class Outcome:
    step: str
    ok: bool
    detail: str = ""
    users: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)


class Handoff:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def cleanup_users(self, template: str) -> Outcome:
        stub = usersync_pb2_grpc.UserSyncServiceStub(self.runtime.channel("usersync"))
        try:
            # No request_id: a stored failure would be replayed to every retry; the operation is idempotent.
            reply = await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(template=template),
                                               metadata=self.runtime.call_metadata("template"), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return self._failed(CLEANUP_USERS, template, exc)
        return Outcome(CLEANUP_USERS, True, users=list(reply.users))

    async def purge_instances(self, template: str) -> Outcome:
        stub = instance_pb2_grpc.InstanceServiceStub(self.runtime.channel("instance"))
        try:
            reply = await stub.PurgeInstances(instance_pb2.PurgeInstancesRequest(parent=template),
                                              metadata=self.runtime.call_metadata("template"), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return self._failed(PURGE_INSTANCES, template, exc)
        return Outcome(PURGE_INSTANCES, True, users=list(reply.owners), instances=list(reply.instances))

    @staticmethod
    def _failed(step: str, template: str, exc: grpc.aio.AioRpcError) -> Outcome:
        detail = f"{exc.code().name}: {exc.details()}"
        log.warning("cleanup of %s did not complete: %s failed (%s); DeleteTemplate with force resumes it",
                    template, step, detail)
        return Outcome(step, False, detail)
