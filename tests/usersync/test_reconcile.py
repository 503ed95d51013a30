"""Reconcile: drift between PostgreSQL and Logto is found, reported and repaired (PostgreSQL wins)."""
from __future__ import annotations

from prometheus_client import REGISTRY

from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from aigc_gateway.locks import try_transaction_lock
from aigc_gateway.services.usersync.reconcile import LEASE
from tests.plugins.gateway import bearer
from tests.plugins.kube import wait_for

from .support import Standalone, dispute, entry, outbox, own, settings_for


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_drifted_entries_are_repaired_by_reconcile(start_gateway, database, database_url, issuer,
                                                         logto) -> None:
    for n in range(120):  # more than one page of users
        logto.add_user(f"idle-{n:03d}", custom_data={"lang": "en"})
    logto.add_user("u1", custom_data={"aigc-sd-cpu": entry("sd-cpu", 5), "lang": "fr"})  # wrong id
    logto.add_user("u2", custom_data={"aigc-sd-cpu": entry("sd-cpu", 1),  # someone else's instance
                                      "legacy-x": entry("x", 0, "legacy")})  # a template never imported
    logto.add_user("u3", custom_data={"aigc-sd-gpu": entry("sd-gpu", 0)})  # in step
    logto.add_user("u4")  # owns an instance the mirror lost
    await own(database, "sd-cpu", 1, "u1", "PAUSED")
    await own(database, "sd-gpu", 0, "u3", "LIVE")
    await own(database, "sd-gpu", 1, "u4", "LIVE")
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))
    stub = usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync"))
    admin = bearer(issuer.mint("root", roles=["admin"]))
    found, repaired = _metric("aigc_usersync_drift_found_total"), _metric("aigc_usersync_drift_repaired_total")

    preview = await stub.Reconcile(usersync_pb2.ReconcileRequest(dry_run=True), metadata=admin)
    expected = {("u1", "aigc-sd-cpu", 1), ("u2", "aigc-sd-cpu", -1), ("u4", "aigc-sd-gpu", 1)}
    assert {(d.user, d.key, d.id) for d in preview.drift} == expected
    assert preview.repaired_count == 0 and logto.writes == []
    assert preview.users_checked == 124

    report = await stub.Reconcile(usersync_pb2.ReconcileRequest(), metadata=admin)
    assert {(d.user, d.key, d.id) for d in report.drift} == expected and report.repaired_count == 3
    assert logto.custom_data("u1") == {"aigc-sd-cpu": entry("sd-cpu", 1), "lang": "fr"}
    assert logto.custom_data("u2") == {"legacy-x": entry("x", 0, "legacy")}
    assert logto.custom_data("u4") == {"aigc-sd-gpu": entry("sd-gpu", 1)}
    assert {w.user for w in logto.writes} == {"u1", "u2", "u4"}
    assert _metric("aigc_usersync_drift_found_total") - found == 6  # the preview and the run
    assert _metric("aigc_usersync_drift_repaired_total") - repaired == 3

    clean = await stub.Reconcile(usersync_pb2.ReconcileRequest(), metadata=admin)
    assert list(clean.drift) == [] and clean.repaired_count == 0


async def test_users_with_queued_outbox_rows_are_left_to_the_delivery(database, database_url, issuer,
                                                                      logto) -> None:
    logto.add_user("u1")
    await own(database, "sd-cpu", 0, "u1", "LIVE")
    await outbox(database, "u1", "sd-cpu", 0)
    async with Standalone(settings_for(database_url, issuer, logto)) as usersync:
        result = await usersync.reconciler.run()
        assert result.drift == [] and logto.writes == []
        await usersync.delivery.run_once()
        assert logto.custom_data("u1") == {"aigc-sd-cpu": entry("sd-cpu", 0)}


async def test_one_replica_reconciles_at_a_time(database, database_url, issuer, logto) -> None:
    logto.add_user("u1")
    await own(database, "sd-cpu", 0, "u1", "LIVE")
    async with Standalone(settings_for(database_url, issuer, logto)) as usersync:
        async with try_transaction_lock(database, LEASE) as lease:  # another replica's round
            assert lease is not None
            skipped = await usersync.reconciler.run(wait=False)
            assert not skipped.ran and logto.writes == []
        done = await usersync.reconciler.run(wait=False)
        assert done.ran and done.repaired == 1


async def test_the_periodic_round_repairs_drift(start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("u1", custom_data={"aigc-sd-cpu": entry("sd-cpu", 3)})
    await own(database, "sd-cpu", 0, "u1", "LIVE")
    await start_gateway("usersync", settings=settings_for(database_url, issuer, logto,
                                                          reconcile_interval_seconds=0.3))
    await wait_for(lambda: logto.custom_data("u1") == {"aigc-sd-cpu": entry("sd-cpu", 0)}, timeout=15,
                   what="the periodic reconcile")


async def test_the_claimants_of_a_disputed_id_keep_their_entries(start_gateway, database, database_url, issuer,
                                                                 logto) -> None:
    """Two users claim id 2 of sd-cpu (the original's race): no slot row, and no decision but an admin's.
    Reconcile used to remove both entries (the template is managed, neither owns a row)."""
    logto.add_user("alice", custom_data={"aigc-sd-cpu": entry("sd-cpu", 0)})
    logto.add_user("carol", custom_data={"aigc-sd-cpu": entry("sd-cpu", 2)})
    logto.add_user("dave", custom_data={"aigc-sd-cpu": entry("sd-cpu", 2), "aigc-sd-gpu": entry("sd-gpu", 9)})
    await own(database, "sd-cpu", 0, "alice", "LIVE")  # sd-cpu is managed: it has rows
    await own(database, "sd-gpu", 0, "dave", "LIVE")
    await dispute(database, "sd-cpu", 2, ["carol", "dave"])
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto))
    stub = usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync"))
    admin = bearer(issuer.mint("root", roles=["admin"]))

    report = await stub.Reconcile(usersync_pb2.ReconcileRequest(), metadata=admin)
    # Only dave's other template is repaired; nobody's sd-cpu entry is touched.
    assert {(d.user, d.key, d.id) for d in report.drift} == {("dave", "aigc-sd-gpu", 0)}
    assert logto.custom_data("carol") == {"aigc-sd-cpu": entry("sd-cpu", 2)}
    assert logto.custom_data("dave") == {"aigc-sd-cpu": entry("sd-cpu", 2), "aigc-sd-gpu": entry("sd-gpu", 0)}
    for user in ("carol", "dave"):
        synced = await stub.SyncUser(usersync_pb2.SyncUserRequest(user=user), metadata=admin)
        assert not synced.changed
    assert logto.custom_data("carol") == {"aigc-sd-cpu": entry("sd-cpu", 2)}
