"""gRPC mapping of the UserSyncService (admin or the gateway's own services only)."""
from __future__ import annotations

from typing import Any

from aigc_gateway import audit
from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from aigc_gateway.identity import require_admin
from aigc_gateway.names import instance_name, parse_instance, parse_template
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts

from .entries import describe_change
from .importer import ReportEntry
from .names import parse_user
from .service import UserSync


def _entry(user: str, key: str, namespace: str, template: str, instance_id: int) -> usersync_pb2.CustomDataEntry:
    return usersync_pb2.CustomDataEntry(user=user, key=key, namespace=namespace, template=template, id=instance_id)


def _reported(item: ReportEntry) -> usersync_pb2.CustomDataEntry:
    return _entry(item.user, item.key, item.namespace, item.template, item.id)


def _conflict(item: ReportEntry) -> usersync_pb2.ImportConflict:
    return usersync_pb2.ImportConflict(entry=_reported(item), reason=item.reason)


class UserSyncServiceServicer(usersync_pb2_grpc.UserSyncServiceServicer):
    """Maps UserSyncService RPCs onto the domain logic."""

    def __init__(self, usersync: UserSync):
        self.usersync = usersync

    async def SyncUser(self, request: usersync_pb2.SyncUserRequest, context: Any) -> usersync_pb2.SyncUserResponse:
        require_admin()
        user = parse_user(request.user)
        self.usersync.require_logto()
        result = await self.usersync.syncer.sync_user(user, dry_run=request.dry_run)
        audit.note(dry_run=request.dry_run, changed=len(result.changes))
        return usersync_pb2.SyncUserResponse(
            changes=[_entry(user, k, *describe_change(k, v, result.before.get(k))) for k, v in result.changes.items()],
            changed=result.changed)

    async def CleanupTemplate(self, request: usersync_pb2.CleanupTemplateRequest,
                              context: Any) -> usersync_pb2.CleanupTemplateResponse:
        require_admin()
        ref = parse_template(request.template, "template")
        namespace, template = ref.namespace, ref.template
        users = await self.usersync.syncer.cleanup_template(namespace, template, deliver=self.usersync.enabled)
        audit.note(users=users)
        return usersync_pb2.CleanupTemplateResponse(users=users)

    async def ImportFromLogto(self, request: usersync_pb2.ImportFromLogtoRequest,
                              context: Any) -> usersync_pb2.ImportReport:
        require_admin()
        self.usersync.require_logto()
        result = await self.usersync.importer.run(dry_run=request.dry_run)
        audit.note(dry_run=request.dry_run, imported=len(result.imported), conflicts=len(result.conflicts))
        return usersync_pb2.ImportReport(
            users_scanned=result.users_scanned, imported=[_reported(i) for i in result.imported],
            unchanged=[_reported(i) for i in result.unchanged], conflicts=[_conflict(i) for i in result.conflicts],
            skipped=[_conflict(i) for i in result.skipped], dry_run=result.dry_run,
            disputed=[usersync_pb2.DisputedInstance(name=instance_name(ns, tpl, d.id), claimants=d.claimants,
                                                    state=d.state) for ns, tpl, d in result.disputes])

    async def Reconcile(self, request: usersync_pb2.ReconcileRequest, context: Any) -> usersync_pb2.ReconcileReport:
        require_admin()
        self.usersync.require_logto()
        result = await self.usersync.reconciler.run(dry_run=request.dry_run)
        audit.note(dry_run=request.dry_run, drift=len(result.drift), repaired=result.repaired)
        return usersync_pb2.ReconcileReport(
            users_checked=result.users_checked, repaired_count=result.repaired,
            drift=[_entry(d.user, d.key, d.namespace, d.template, d.id) for d in result.drift])


    async def ResolveDisputedInstance(self, request: usersync_pb2.ResolveDisputedInstanceRequest,
                                      context: Any) -> usersync_pb2.ResolveDisputedInstanceResponse:
        require_admin()
        ref = parse_instance(request.name)
        namespace, template, instance_id = ref.namespace, ref.template, ref.id
        owner = parse_user(request.owner, "owner") if request.owner else ""
        done = await self.usersync.disputes.resolve(namespace, template, instance_id, owner)
        return usersync_pb2.ResolveDisputedInstanceResponse(name=request.name, owner=done.owner, slot=done.slot,
                                                            claimants=done.claimants)


def build(runtime: Runtime) -> ServiceParts:
    usersync = UserSync(runtime)
    return ServiceParts(
        [Registration("aigc.gateway.v1.UserSyncService", UserSyncServiceServicer(usersync),
                      usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                      base=usersync_pb2_grpc.UserSyncServiceServicer)],
        on_start=[usersync.start], on_stop=[usersync.stop], service=usersync)
