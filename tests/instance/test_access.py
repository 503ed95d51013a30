"""Authorization and bad input: the right code, the field at fault, and nothing written."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow

from ..plugins.kube import Game
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template

pytestmark = pytest.mark.testbed


def details(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in rpc_status.from_call(err).details:
        detail.Unpack(info) or detail.Unpack(bad)
    return info, bad


async def counts(db: Database) -> tuple[int, int]:
    async with db.session() as session:
        rows = (await session.execute(select(func.count()).select_from(InstanceRow))).scalar_one()
        out = (await session.execute(select(func.count()).select_from(UserSyncOutboxRow))).scalar_one()
    return rows, out


async def test_codes_for_other_users_bad_names_and_unusable_templates(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for, database: Database) -> None:
    await create_template(game, testbed)
    await create_template(game, testbed, name="general", scaleStrategy={"scaleDownStrategyType": "General"})
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    gss_before = (await game.get_gss(SAMPLE))["spec"]
    written = await counts(database)

    async def expect(code: grpc.StatusCode, call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code, err.value.details()
        return err.value

    # Someone else's instance: denied, and nothing happens.
    for call in (c.get("bob", alice.name), c.pause("bob", alice.name), c.resume("bob", alice.name),
                 c.restart("bob", alice.name), c.uninstall("bob", alice.name)):
        await expect(grpc.StatusCode.PERMISSION_DENIED, call)
    watch = c.stub.WatchInstance(instance_pb2.WatchInstanceRequest(name=alice.name), metadata=c.md("bob"))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        async for _ in watch:
            pass
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A second install by the same user names the existing instance.
    again = await expect(grpc.StatusCode.ALREADY_EXISTS, c.install("alice"))
    assert details(again)[0].metadata["instance"] == alice.name

    # Templates that do not exist or cannot host instances.
    await expect(grpc.StatusCode.NOT_FOUND, c.install("bob", "no-such-template"))
    unusable = await expect(grpc.StatusCode.FAILED_PRECONDITION, c.install("bob", "general"))
    assert details(unusable)[0].reason == "NOT_RESERVE_IDS"
    outside = c.stub.CreateInstance(instance_pb2.CreateInstanceRequest(
        parent=f"namespaces/default/templates/{SAMPLE}"), metadata=c.md("bob"))
    await expect(grpc.StatusCode.NOT_FOUND, outside)  # not a namespace this gateway serves

    # Malformed names: INVALID_ARGUMENT on the field.
    for bad in ("instances/0", f"{c.parent()}/instances/zero", f"{c.parent()}/instances/-1",
                f"namespaces/{c.namespace}/templates/Bad/instances/0"):
        err = await expect(grpc.StatusCode.INVALID_ARGUMENT, c.get("alice", bad))
        assert details(err)[1].field_violations[0].field == "name"
    err = await expect(grpc.StatusCode.INVALID_ARGUMENT, c.stub.CreateInstance(
        instance_pb2.CreateInstanceRequest(parent="templates/x"), metadata=c.md("bob")))
    assert details(err)[1].field_violations[0].field == "parent"

    # Ids that do not exist; installs for others and admin RPCs need the admin role.
    await expect(grpc.StatusCode.NOT_FOUND, c.get("alice", f"{c.parent()}/instances/7"))
    await expect(grpc.StatusCode.PERMISSION_DENIED, c.install("bob", owner="carol"))
    await expect(grpc.StatusCode.PERMISSION_DENIED, c.stub.CheckConsistency(
        instance_pb2.CheckConsistencyRequest(parent=f"namespaces/{c.namespace}/templates/-"), metadata=c.md("bob")))
    await expect(grpc.StatusCode.PERMISSION_DENIED, c.stub.PurgeInstances(
        instance_pb2.PurgeInstancesRequest(parent=c.parent()), metadata=c.md("bob")))
    await expect(grpc.StatusCode.UNAUTHENTICATED, c.stub.GetInstance(instance_pb2.GetInstanceRequest(name=alice.name)))

    assert await counts(database) == written
    after = (await game.get_gss(SAMPLE))["spec"]
    assert (after["replicas"], after.get("reserveGameServerIds")) == (gss_before["replicas"],
                                                                      gss_before.get("reserveGameServerIds"))

    # Lists: users see their own; admins filter by owner and state.
    await c.install("admin", owner="bob")
    mine = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(parent="namespaces/-/templates/-"),
                                      metadata=c.md("alice"))
    assert [i.name for i in mine.instances] == [alice.name] and mine.total_size == 1
    await expect(grpc.StatusCode.PERMISSION_DENIED, c.stub.ListInstances(
        instance_pb2.ListInstancesRequest(parent="namespaces/-/templates/-", owner="bob"), metadata=c.md("alice")))
    everyone = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(
        parent=f"namespaces/{c.namespace}/templates/-", page_size=1), metadata=c.md("admin"))
    assert everyone.total_size == 2 and len(everyone.instances) == 1 and everyone.next_page_token
    rest = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(
        parent=f"namespaces/{c.namespace}/templates/-", page_size=1, page_token=everyone.next_page_token),
        metadata=c.md("admin"))
    assert {everyone.instances[0].owner, rest.instances[0].owner} == {"alice", "bob"} and not rest.next_page_token
    running = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(
        parent=f"namespaces/{c.namespace}/templates/{SAMPLE}", state=State.RUNNING), metadata=c.md("admin"))
    assert [i.owner for i in running.instances] == ["alice"]
    await expect(grpc.StatusCode.INVALID_ARGUMENT, c.stub.ListInstances(instance_pb2.ListInstancesRequest(
        parent=f"namespaces/{c.namespace}/templates/-", page_token=everyone.next_page_token, owner="me"),
        metadata=c.md("admin")))


async def test_replayed_request_id_returns_the_first_outcome(testbed: Testbed, game: Game, instance_settings,
                                                             start_gateway, client_for) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    first = await c.install("alice", request_id="r-1")
    replay = await c.install("alice", request_id="r-1")
    assert replay.name == first.name and replay.create_time == first.create_time
    paused = await c.stub.PauseInstance(instance_pb2.PauseInstanceRequest(name=first.name, request_id="p-1"),
                                        metadata=c.md("alice"))
    await c.resume("alice", first.name)
    replayed = await c.stub.PauseInstance(instance_pb2.PauseInstanceRequest(name=first.name, request_id="p-1"),
                                          metadata=c.md("alice"))
    assert replayed == paused  # the stored first answer; the instance stays resumed
    assert (await c.get("alice", first.name)).state in (State.RESUMING, State.STARTING, State.RUNNING)


async def test_purge_forgets_a_deleted_template(testbed: Testbed, game: Game, instance_settings, start_gateway,
                                                client_for, database: Database) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    alice = await c.install("alice")
    await c.install("bob")
    await c.pause("alice", alice.name)
    purge = instance_pb2.PurgeInstancesRequest(parent=c.parent())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.stub.PurgeInstances(purge, metadata=c.md("admin"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    await game.delete_gss(SAMPLE)
    response = await c.stub.PurgeInstances(purge, metadata=c.md("admin"))
    assert list(response.owners) == ["alice", "bob"]
    assert list(response.instances) == [f"{c.parent()}/instances/0", f"{c.parent()}/instances/1"]
    async with database.session() as session:
        assert (await session.execute(select(func.count()).select_from(InstanceRow))).scalar_one() == 0
        removals = (await session.execute(select(UserSyncOutboxRow.user).where(
            UserSyncOutboxRow.instance_id.is_(None)).order_by(UserSyncOutboxRow.user))).scalars().all()
    assert removals == ["alice", "bob"]
    again = await c.stub.PurgeInstances(purge, metadata=c.md("admin"))  # nothing left: still fine
    assert list(again.instances) == []
