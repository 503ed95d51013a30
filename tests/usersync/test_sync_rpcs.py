"""CleanupTemplate and SyncUser over gRPC (real PostgreSQL, the Logto double)."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from tests.plugins.gateway import bearer

from .support import Standalone, drained, entry, install, outbox, outbox_rows, own, settings_for, uninstall


async def _stub(start_gateway, database_url, issuer, logto, **usersync):
    gateway = await start_gateway("usersync", settings=settings_for(database_url, issuer, logto, **usersync))
    return usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync")), bearer(issuer.mint("root",
                                                                                                   roles=["admin"]))


@pytest.mark.parametrize("purged_first", [False, True], ids=["owners-in-rows", "rows-already-purged"])
async def test_cleanup_template_removes_the_key_from_exactly_its_owners(
        start_gateway, database, database_url, issuer, logto, purged_first: bool) -> None:
    for user in ("u1", "u2", "u3"):
        logto.add_user(user, custom_data={"lang": "en"})
    # u4 carries a stale key of the template but owns nothing: never looked at (no scan of Logto).
    logto.add_user("u4", custom_data={"aigc-sd-cpu": entry("sd-cpu", 9)})
    stub, admin = await _stub(start_gateway, database_url, issuer, logto)
    await install(database, "u1", "sd-cpu", 0)
    await install(database, "u1", "sd-gpu", 0)
    await install(database, "u2", "sd-cpu", 1)
    await install(database, "u3", "sd-gpu", 1)
    await drained(database)
    await own(database, "sd-cpu", 1, "u2", "PAUSED")
    if purged_first:  # the instance service forgot the owners before usersync was called
        await own(database, "sd-cpu", 0, None, "RELEASING")
        await own(database, "sd-cpu", 1, None, "RELEASING")
    writes_before = {w.user for w in logto.writes}

    reply = await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(
        template="namespaces/aigc/templates/sd-cpu"), metadata=admin)
    assert list(reply.users) == ["u1", "u2"]
    await drained(database)
    assert logto.custom_data("u1") == {"lang": "en", "aigc-sd-gpu": entry("sd-gpu", 0)}
    assert logto.custom_data("u2") == {"lang": "en"}
    assert logto.custom_data("u3") == {"lang": "en", "aigc-sd-gpu": entry("sd-gpu", 1)}
    assert logto.custom_data("u4") == {"aigc-sd-cpu": entry("sd-cpu", 9)}
    assert writes_before == {"u1", "u2", "u3"}
    assert {w.user for w in logto.writes[-2:]} == {"u1", "u2"}
    assert not any(p.startswith("/api/users?") for _, p, _ in logto.requests)  # no listing of users

    again = await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(
        template="namespaces/aigc/templates/sd-cpu"), metadata=admin)
    await drained(database)
    assert list(again.users) == ([] if purged_first else ["u1", "u2"])
    assert logto.custom_data("u2") == {"lang": "en"}


async def test_cleanup_is_ordered_after_a_change_still_queued(start_gateway, database, database_url, issuer,
                                                              logto) -> None:
    logto.add_user("u1")
    stub, admin = await _stub(start_gateway, database_url, issuer, logto, delivery_poll_seconds=30)
    await logto.go_down("503")
    await install(database, "u1", "sd-cpu", 0)  # queued while Logto is down
    reply = await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(
        template="namespaces/aigc/templates/sd-cpu"), metadata=admin)
    assert list(reply.users) == ["u1"]
    await logto.come_up()
    rows = await outbox_rows(database, "u1")
    assert [r.instance_id for r in rows] == [0, None]
    await drained(database, timeout=60)
    assert logto.custom_data("u1") == {}


async def test_rpcs_need_an_admin_and_valid_names(start_gateway, database_url, issuer, logto) -> None:
    stub, admin = await _stub(start_gateway, database_url, issuer, logto)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(template="namespaces/aigc/templates/x"),
                                   metadata=bearer(issuer.mint("mallory")))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CleanupTemplate(usersync_pb2.CleanupTemplateRequest(template="templates/x"), metadata=admin)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = error_details_pb2.BadRequest()
    assert any(d.Unpack(request) for d in rpc_status.from_call(bad.value).details)
    assert request.field_violations[0].field == "template"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user="ghost"), metadata=admin)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.SyncUser(usersync_pb2.SyncUserRequest(user=""), metadata=admin)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sync_user_writes_the_ownership_rows_and_leaves_other_data(
        start_gateway, database, database_url, issuer, logto) -> None:
    logto.add_user("u1", custom_data={
        "aigc-sd-cpu": entry("sd-cpu", 7),  # wrong id
        "aigc-sd-old": entry("sd-old", 2),  # a managed template the user no longer owns
        "other-app": {"Name": "x", "Namespace": "other", "ID": "1"},  # key of a template the gateway never managed
        "aigc-removed": None,  # the original's removed-instance marker
        "lang": "en",
    })
    stub, admin = await _stub(start_gateway, database_url, issuer, logto)
    await own(database, "sd-cpu", 1, "u1", "PAUSED")
    await own(database, "sd-gpu", 0, "u1", "LIVE")
    await own(database, "sd-old", 2, None, "FREE")

    preview = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", dry_run=True), metadata=admin)
    assert preview.changed and logto.writes == []
    assert {(c.key, c.id) for c in preview.changes} == {("aigc-sd-cpu", 1), ("aigc-sd-gpu", 0), ("aigc-sd-old", -1)}
    assert next(c for c in preview.changes if c.key == "aigc-sd-old").template == "sd-old"

    reply = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", request_id="sync-1"), metadata=admin)
    assert reply.changed and len(reply.changes) == 3
    assert logto.custom_data("u1") == {"aigc-sd-cpu": entry("sd-cpu", 1), "aigc-sd-gpu": entry("sd-gpu", 0),
                                       "other-app": {"Name": "x", "Namespace": "other", "ID": "1"},
                                       "aigc-removed": None, "lang": "en"}

    replay = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1", request_id="sync-1"), metadata=admin)
    assert replay == reply  # the first outcome, not a new sync
    fresh = await stub.SyncUser(usersync_pb2.SyncUserRequest(user="u1"), metadata=admin)
    assert not fresh.changed and len(logto.writes) == 1

    await uninstall(database, "u1", "sd-gpu", 0)
    await drained(database)
    assert "aigc-sd-gpu" not in logto.custom_data("u1")


async def test_sync_user_supersedes_the_queued_rows_of_the_user(database, database_url, issuer, logto) -> None:
    logto.add_user("u1")
    await own(database, "sd-gpu", 0, "u1", "LIVE")
    await outbox(database, "u1", "sd-cpu", 4)  # an older change, since undone: the rows are the truth
    await outbox(database, "u1", "sd-gpu", 0)
    async with Standalone(settings_for(database_url, issuer, logto)) as usersync:
        result = await usersync.syncer.sync_user("u1")
        assert result.changes == {"aigc-sd-gpu": entry("sd-gpu", 0)}
        assert all(r.delivered_at is not None and r.last_error == "" for r in await outbox_rows(database, "u1"))
        assert (await usersync.delivery.run_once()).delivered == 0
    assert logto.custom_data("u1") == {"aigc-sd-gpu": entry("sd-gpu", 0)}
