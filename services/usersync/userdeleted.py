"""What a user deleted in Logto does to their instances (``user_deleted_policy``).

- ``pause``: every running instance is paused through InstanceService.PauseInstance (the disk stays)
  and every instance of the user is marked ``orphaned`` for an admin to decide on.
- ``purge``: every instance is uninstalled through InstanceService.DeleteInstance (disks deleted).

Either way the user's browser sessions are revoked first (the core's session store, in a transaction of
its own, NOTIFY included): a session outliving its user kept every gateway API open to them for up to
``auth.session_ttl_seconds`` (resume the paused instance, install a new one) and, for an admin with
``auth.allow_admin_access``, every instance.

The instance service does the lifecycle work under its allocator lock; usersync only calls it, with
the service credential (background work has no end user), and writes ``instances.orphaned`` — the
one column of the ownership table it may write.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.db.models import InstanceRow, notify_instance_change
from aigc_gateway.errors import Unavailable
from aigc_gateway.names import instance_name
from aigc_gateway.okg import SlotState

from . import mirrorstore
from .sync import OWNED_SLOTS

log = logging.getLogger(__name__)

RPC_TIMEOUT = 120.0


class UserDeletedPolicy:
    def __init__(self, policy: str, channel: Callable[[], grpc.aio.Channel],
                 metadata: Callable[[], tuple[tuple[str, str], ...]],
                 revoke_sessions: Callable[[str], Awaitable[int]]):
        self.policy = policy
        self._channel = channel
        self._metadata = metadata
        self._revoke_sessions = revoke_sessions

    async def apply(self, session: AsyncSession, user: str) -> dict[str, Any]:
        """Act on the deletion of ``user``; returns the audit details. Raises Unavailable when the instance
        service could not do its part (the delivery is then refused with 503 and Logto retries it)."""
        revoked = await self._revoke_sessions(user)  # before anything the user could still undo with them
        rows = list(await session.execute(
            select(InstanceRow.namespace, InstanceRow.template, InstanceRow.id, InstanceRow.slot)
            .where(InstanceRow.owner == user, InstanceRow.slot.in_(OWNED_SLOTS))
            .order_by(InstanceRow.namespace, InstanceRow.template, InstanceRow.id)))
        stub = instance_pb2_grpc.InstanceServiceStub(self._channel())
        acted: list[str] = []
        for namespace, template, instance_id, slot in rows:
            name = instance_name(namespace, template, instance_id)
            if self.policy == "pause" and slot != SlotState.LIVE.value:
                continue
            try:
                if self.policy == "pause":
                    await stub.PauseInstance(instance_pb2.PauseInstanceRequest(name=name),
                                             metadata=self._metadata(), timeout=RPC_TIMEOUT)
                else:
                    await stub.DeleteInstance(instance_pb2.DeleteInstanceRequest(name=name),
                                              metadata=self._metadata(), timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # uninstalled meanwhile: nothing left to do
                    continue
                raise Unavailable(f"the instance service could not {self.policy} {name}: "
                                  f"{exc.code().name} {exc.details()}", reason="INSTANCE_SERVICE_FAILED",
                                  retry_after=10) from None
            acted.append(name)
        orphaned: list[str] = []
        if self.policy == "pause":
            marked = await session.execute(
                update(InstanceRow).where(InstanceRow.owner == user, InstanceRow.slot.in_(OWNED_SLOTS))
                .values(orphaned=True).returning(InstanceRow.namespace, InstanceRow.template, InstanceRow.id))
            for namespace, template, instance_id in marked:
                await notify_instance_change(session, namespace, template, instance_id)
                orphaned.append(instance_name(namespace, template, instance_id))
        await mirrorstore.forget_user(session, user)
        return {"policy": self.policy, "paused" if self.policy == "pause" else "deleted": acted,
                "orphaned": sorted(orphaned), "sessions_revoked": revoked}
