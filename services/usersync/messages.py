"""The UserSyncService's messages, built from the results of the sync, the import, the reconcile and a
dispute's resolution. Protobuf conversion only; server.py maps the RPCs and answers with these.
"""
from __future__ import annotations

from aigc_gateway.api.v1 import usersync_pb2
from aigc_gateway.names import instance_name

from .customdata import WriteResult
from .disputes import Resolution
from .entries import describe_change
from .importer import ImportResult, ReportEntry
from .reconcile import ReconcileResult


def _entry(user: str, key: str, namespace: str, template: str, instance_id: int) -> usersync_pb2.CustomDataEntry:
    return usersync_pb2.CustomDataEntry(user=user, key=key, namespace=namespace, template=template, id=instance_id)


def _reported(item: ReportEntry) -> usersync_pb2.CustomDataEntry:
    return _entry(item.user, item.key, item.namespace, item.template, item.id)


def _conflict(item: ReportEntry) -> usersync_pb2.ImportConflict:
    return usersync_pb2.ImportConflict(entry=_reported(item), reason=item.reason)


def sync_user(user: str, result: WriteResult) -> usersync_pb2.SyncUserResponse:
    return usersync_pb2.SyncUserResponse(
        changes=[_entry(user, k, *describe_change(k, v, result.before.get(k))) for k, v in result.changes.items()],
        changed=result.changed)


def cleanup_template(users: list[str]) -> usersync_pb2.CleanupTemplateResponse:
    return usersync_pb2.CleanupTemplateResponse(users=users)


def import_report(result: ImportResult) -> usersync_pb2.ImportReport:
    return usersync_pb2.ImportReport(
        users_scanned=result.users_scanned, imported=[_reported(i) for i in result.imported],
        unchanged=[_reported(i) for i in result.unchanged], conflicts=[_conflict(i) for i in result.conflicts],
        skipped=[_conflict(i) for i in result.skipped], dry_run=result.dry_run,
        disputed=[usersync_pb2.DisputedInstance(name=instance_name(ns, tpl, d.id), claimants=d.claimants,
                                                state=d.state) for ns, tpl, d in result.disputes])


def reconcile_report(result: ReconcileResult) -> usersync_pb2.ReconcileReport:
    return usersync_pb2.ReconcileReport(
        users_checked=result.users_checked, repaired_count=result.repaired,
        drift=[_entry(d.user, d.key, d.namespace, d.template, d.id) for d in result.drift])


def resolved_dispute(name: str, done: Resolution) -> usersync_pb2.ResolveDisputedInstanceResponse:
    return usersync_pb2.ResolveDisputedInstanceResponse(name=name, owner=done.owner, slot=done.slot,
                                                        claimants=done.claimants)
