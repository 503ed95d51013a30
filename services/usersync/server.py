"""gRPC mapping of the UserSyncService (admin or the gateway's own services only): requests in, calls on the
UserSync object (app.py), answers built by messages.py."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigc_gateway import audit
from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from aigc_gateway.idempotency import current_claim
from aigc_gateway.identity import require_admin
from aigc_gateway.names import parse_instance, parse_template

from . import messages
from .names import parse_user

if TYPE_CHECKING:
    from .app import UserSync


class UserSyncServiceServicer(usersync_pb2_grpc.UserSyncServiceServicer):
    """Maps UserSyncService RPCs onto the domain logic."""

    def __init__(self, usersync: UserSync):
        self.usersync = usersync

    async def SyncUser(self, request: usersync_pb2.SyncUserRequest, context: Any) -> usersync_pb2.SyncUserResponse:
        require_admin()
        user = parse_user(request.user)
        self.usersync.require_logto()
        result = await self.usersync.syncer.sync_user(user, dry_run=request.dry_run, claim=current_claim.get())
        audit.note(dry_run=request.dry_run, changed=len(result.changes))
        return messages.sync_user(user, result)

    async def CleanupTemplate(self, request: usersync_pb2.CleanupTemplateRequest,
                              context: Any) -> usersync_pb2.CleanupTemplateResponse:
        require_admin()
        ref = parse_template(request.template, "template")
        namespace, template = ref.namespace, ref.template
        users = await self.usersync.syncer.cleanup_template(namespace, template, deliver=self.usersync.enabled,
                                                           claim=current_claim.get())
        audit.note(users=users)
        return messages.cleanup_template(users)

    async def ImportFromLogto(self, request: usersync_pb2.ImportFromLogtoRequest,
                              context: Any) -> usersync_pb2.ImportReport:
        require_admin()
        self.usersync.require_logto()
        result = await self.usersync.importer.run(dry_run=request.dry_run, claim=current_claim.get())
        audit.note(dry_run=request.dry_run, imported=len(result.imported), conflicts=len(result.conflicts))
        return messages.import_report(result)

    async def Reconcile(self, request: usersync_pb2.ReconcileRequest, context: Any) -> usersync_pb2.ReconcileReport:
        require_admin()
        self.usersync.require_logto()
        result = await self.usersync.reconciler.run(dry_run=request.dry_run, claim=current_claim.get())
        audit.note(dry_run=request.dry_run, drift=len(result.drift), repaired=result.repaired)
        return messages.reconcile_report(result)


    async def ResolveDisputedInstance(self, request: usersync_pb2.ResolveDisputedInstanceRequest,
                                      context: Any) -> usersync_pb2.ResolveDisputedInstanceResponse:
        require_admin()
        ref = parse_instance(request.name)
        namespace, template, instance_id = ref.namespace, ref.template, ref.id
        owner = parse_user(request.owner, "owner") if request.owner else ""
        done = await self.usersync.disputes.resolve(namespace, template, instance_id, owner, current_claim.get())
        return messages.resolved_dispute(request.name, done)
