"""Idle auto-pause on the test bed (issue 15): two `aigc-gateway serve instance` replicas, both running the
culler, against the real OKG controllers; the busy probe answered by real HTTP servers bound on the pod's IP
(the test bed routes 198.18.0.0/15 to this machine, so a pod IP is dialled the way a proxy dials it).

Timeouts are seconds (template annotation ``idle-after``), the culler looks every 0.3 s: nothing sleeps for
the outcome, every wait is for a state the test names, and what must not happen is shown causally (the
culler's own log line after its decision under the lock, or a later instance of the same pass)."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import AuditEventRow, InstanceRow
from aigc_gateway.services.instance import idle as _idle  # noqa: F401 - registers the idle.before_pause point
from aigc_gateway.services.instance.idle_models import IdleStateRow

from ..plugins.gateway import make_settings
from ..plugins.kube import GROUP, VERSION, Game, load_sample, wait_for
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template, instance_overrides, wait_slot
from .test_replay_crash import launch, wait_file

pytestmark = pytest.mark.testbed

PREFIX = "aigc.gateway.io/"
CULLER = "service:idle-culler"


def idle_settings(**kw: Any) -> dict[str, Any]:
    return {"idle": {"interval_seconds": 0.3, "warning_seconds": 2, "default_after_seconds": 0,
                     "gpu_default_after_seconds": 0, "probe_timeout_seconds": 2, **kw}}


async def idle_template(game: Game, testbed: Testbed, name: str, **annotations: str) -> str:
    obj = load_sample(SAMPLE, testbed.domain, game.namespace, rename=name)
    for conf in obj["spec"]["network"]["networkConf"]:
        if conf["name"] == "Host":  # every template needs hosts of its own
            conf["value"] = conf["value"].replace("instances<id>-", f"{name}-<id>-")
    obj["metadata"].setdefault("annotations", {}).update({PREFIX + k: v for k, v in annotations.items()})
    await game.create_gss(obj)
    return name


async def annotate(game: Game, name: str, key: str, value: str) -> None:
    for _ in range(10):  # the controller writes the object too: retry on 409
        gss = await game.get_gss(name)
        gss["metadata"]["annotations"][key] = value
        try:
            await game.custom.replace_namespaced_custom_object(GROUP, VERSION, game.namespace, "gameserversets",
                                                               name, gss)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise AssertionError(f"could not annotate {name}")


async def culler_pauses(db: Database, namespace: str) -> list[str]:
    async with db.session() as session:
        rows = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.actor == CULLER, AuditEventRow.action == "InstanceService.PauseInstance",
            AuditEventRow.resource.like(f"namespaces/{namespace}/%")).order_by(AuditEventRow.id))).scalars()
        return [r.resource for r in rows if r.details.get("reason") == "idle"]


async def slot(db: Database, namespace: str, template: str, instance_id: int) -> str:
    async with db.session() as session:
        row = await session.get(InstanceRow, (namespace, template, instance_id))
    return row.slot if row else ""


async def collect(stream: Any, into: list[instance_pb2.InstanceEvent]) -> None:
    try:
        async for event in stream:
            into.append(event)
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        pass


async def test_two_replicas_warn_then_pause_each_idle_instance_once(testbed: Testbed, game: Game, service_process,
                                                                   client_for, database: Database) -> None:
    tpl = await idle_template(game, testbed, "idle-sd", **{"idle-after": "5s"})
    a, b = await service_process(**idle_settings()), await service_process(**idle_settings())
    ca, cb = client_for(await launch(a)), client_for(await launch(b))
    admin = ca.md("admin")
    await ca.stub.CreateIdleExemption(instance_pb2.CreateIdleExemptionRequest(
        idle_exemption=instance_pb2.IdleExemption(name="idleExemptions/dave", reason="long trainings")),
        metadata=admin)
    # dave first: his id is 0, so every pass that pauses another instance looked at his, due earlier, before.
    names = {user: (await ca.install(user, tpl)).name for user in ("dave", "alice")}
    events: list[instance_pb2.InstanceEvent] = []  # alice watches through the other replica from her install on
    watcher = asyncio.ensure_future(collect(cb.stub.WatchInstance(
        instance_pb2.WatchInstanceRequest(name=names["alice"]), metadata=cb.md("alice")), events))
    names |= {user: (await ca.install(user, tpl)).name for user in ("bob", "carol")}
    for user in ("alice", "bob", "carol"):
        await wait_slot(database, game.namespace, int(names[user].rsplit("/", 1)[1]), "PAUSED", tpl)
    await ca.wait_state("alice", names["alice"], State.PAUSED)
    watcher.cancel()

    pauses = await culler_pauses(database, game.namespace)
    assert sorted(pauses) == sorted(names[u] for u in ("alice", "bob", "carol"))  # each once, by either replica
    assert await slot(database, game.namespace, tpl, 0) == "LIVE"  # dave is exempt
    by_replica = [a.log.read_text().count("idle: paused"), b.log.read_text().count("idle: paused")]
    print(f"pauses by replica: {by_replica}; decided again and not paused: "
          f"{a.log.read_text().count('not paused') + b.log.read_text().count('not paused')}")
    assert sum(by_replica) == 3

    # The owner saw the announcement (with the time) before the instance stopped.
    reasons = [e.reason for e in events]
    assert "IdlePauseScheduled" in reasons, reasons
    announced = events[reasons.index("IdlePauseScheduled")]
    assert announced.source == "gateway" and announced.instance.HasField("scheduled_pause_time")
    assert announced.instance.state not in (State.PAUSING, State.PAUSED)
    assert any(e.instance.state in (State.PAUSING, State.PAUSED) for e in events[reasons.index("IdlePauseScheduled"):])

    # An idle pause is an ordinary pause: disk and id kept, and the owner resumes it.
    resumed = await cb.resume("alice", names["alice"])
    assert resumed.owner == "alice" and not resumed.HasField("scheduled_pause_time")
    await ca.wait_consistent(90)


async def test_a_resume_in_the_same_moment_is_not_paused(tmp_path: Path, testbed: Testbed, game: Game,
                                                         service_process, client_for, database: Database) -> None:
    """Replica A's culler has decided to pause (outside the lock) and is held there; the owner pauses and
    resumes through replica B; released, A decides again under the lock and leaves the instance running."""
    tpl = await idle_template(game, testbed, "idle-race", **{"idle-after": "3s"})
    held = await service_process(**idle_settings(warning_seconds=1))
    other = await service_process(**idle_settings(enabled=False))
    cb = client_for(await launch(other))
    client_for(await launch(held, hold="idle.before_pause", hold_dir=tmp_path))
    name = (await cb.install("alice", tpl)).name
    await wait_file(tmp_path / "idle.before_pause.reached", held)
    assert await culler_pauses(database, game.namespace) == []

    await cb.pause("alice", name)
    await cb.resume("alice", name)
    (tmp_path / "idle.before_pause.release").write_text("")
    await wait_for(lambda: f"idle: {name} not paused" in held.log.read_text(), 60,
                   what="the held culler's decision under the lock")
    assert await slot(database, game.namespace, tpl, 0) == "LIVE"
    assert await culler_pauses(database, game.namespace) == []
    await cb.wait_consistent(90)


class Engine:
    """A stand-in for an engine's queue endpoint (ComfyUI's /queue), bound on the pod's own IP."""

    def __init__(self) -> None:
        self.busy = True
        self.requests: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.split(b" ")[1].decode())
        body = json.dumps({"queue_running": [[1, "prompt"]] if self.busy else [], "queue_pending": []}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()


async def test_busy_probe_keeps_a_working_instance_running(testbed: Testbed, game: Game, service_process, client_for,
                                                           database: Database) -> None:
    from .conftest import free_port

    port = free_port()
    # Never idle until the engine stand-in listens on the pod's IP (the pod IP is known once it runs).
    tpl = await idle_template(game, testbed, "idle-probe", **{
        "idle-after": "0", "idle-probe-path": "/queue", "idle-probe-busy": "queue_running,queue_pending",
        "idle-probe-port": str(port)})
    replica = await service_process(**idle_settings(warning_seconds=1))
    client = client_for(await launch(replica))
    name = (await client.install("alice", tpl)).name
    pods = await game.wait_running(tpl, {0})
    engine = Engine()
    engine.server = await asyncio.start_server(engine.serve, pods[0].status.pod_ip, port)
    try:
        await annotate(game, tpl, f"{PREFIX}idle-after", "3s")
        await wait_for(lambda: len(engine.requests) >= 3, 60, what="three probes answered busy")
        assert engine.requests[0] == "/queue"
        assert await slot(database, game.namespace, tpl, 0) == "LIVE"
        assert await culler_pauses(database, game.namespace) == []
        async with database.session() as session:
            state = await session.get(IdleStateRow, (game.namespace, tpl, 0))
        assert state is not None and state.kept_at is not None  # busy answers are activity

        engine.busy = False  # the queue empties: warned, then paused
        await wait_slot(database, game.namespace, 0, "PAUSED", tpl)
        assert await culler_pauses(database, game.namespace) == [name]
    finally:
        engine.server.close()
    await client.wait_consistent(90)


async def test_keep_alive_withdraws_the_announcement_and_exemptions_are_admin_only(
        testbed: Testbed, game: Game, service_process, client_for, database: Database) -> None:
    # Warned two seconds after the install, the pause announced for 30 s after it: time enough to keep it alive.
    tpl = await idle_template(game, testbed, "idle-keep", **{"idle-after": "30s"})
    replica = await service_process(**idle_settings(warning_seconds=28))
    client = client_for(await launch(replica))
    name = (await client.install("alice", tpl)).name
    events: list[instance_pb2.InstanceEvent] = []
    watcher = asyncio.ensure_future(collect(client.stub.WatchInstance(
        instance_pb2.WatchInstanceRequest(name=name), metadata=client.md("alice")), events))
    await wait_for(lambda: any(e.reason == "IdlePauseScheduled" for e in events), 60, what="the announcement")
    got = await client.get("alice", name)
    announced = next(e for e in events if e.reason == "IdlePauseScheduled").instance.scheduled_pause_time
    assert got.scheduled_pause_time == announced and announced.ToSeconds() > 0
    listed = await client.stub.ListInstances(instance_pb2.ListInstancesRequest(parent=client.parent(tpl)),
                                             metadata=client.md("alice"))
    assert [i.scheduled_pause_time for i in listed.instances] == [announced]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=name), metadata=client.md("bob"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    kept = await client.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=name),
                                               metadata=client.md("alice"))
    assert kept.state != State.PAUSED and not kept.HasField("scheduled_pause_time")
    await wait_for(lambda: any(e.reason == "IdlePauseCancelled" for e in events), 30, what="the withdrawal")
    watcher.cancel()

    admin, alice = client.md("admin"), client.md("alice")
    create = instance_pb2.CreateIdleExemptionRequest(
        idle_exemption=instance_pb2.IdleExemption(name="idleExemptions/alice", reason="demo"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.CreateIdleExemption(create, metadata=alice)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    made = await client.stub.CreateIdleExemption(create, metadata=admin)
    assert (made.name, made.reason, made.created_by) == ("idleExemptions/alice", "demo", "admin")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.CreateIdleExemption(create, metadata=admin)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.CreateIdleExemption(instance_pb2.CreateIdleExemptionRequest(
            idle_exemption=instance_pb2.IdleExemption(name="users/alice")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idle_exemption.name" in str(err.value.details())
    listed = await client.stub.ListIdleExemptions(instance_pb2.ListIdleExemptionsRequest(), metadata=admin)
    assert [e.name for e in listed.idle_exemptions] == ["idleExemptions/alice"]
    await client.stub.DeleteIdleExemption(instance_pb2.DeleteIdleExemptionRequest(name="idleExemptions/alice"),
                                          metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.DeleteIdleExemption(instance_pb2.DeleteIdleExemptionRequest(name="idleExemptions/alice"),
                                              metadata=admin)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    async with database.session() as session:  # every change is audited, with who made it
        audited = [(r.action.split(".")[1], r.actor, r.outcome, r.resource) for r in (await session.execute(
            select(AuditEventRow).where(AuditEventRow.action.like("%Idle%") | AuditEventRow.action.like("%KeepInstance%"))
            .order_by(AuditEventRow.id))).scalars()]
    assert [a for a in audited if a[2] == "SUCCESS"] == [
        ("KeepInstanceAlive", "alice", "SUCCESS", name), ("CreateIdleExemption", "admin", "SUCCESS", "idleExemptions/alice"),
        ("DeleteIdleExemption", "admin", "SUCCESS", "idleExemptions/alice")]
    await client.pause("alice", name)  # a paused instance has no idle clock: resume it instead
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=name), metadata=alice)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "resume" in str(err.value.details())


async def test_injected_clock_gpu_and_cpu_timeouts_accesses_keep_alive_resume_and_exemption(
        testbed: Testbed, game: Game, database_url: str, issuer: Issuer, start_gateway, client_for,
        database: Database) -> None:
    """One in-process instance service whose culler does not run by itself: each pass is called with the
    culler's clock set, so hours of idleness take no time. Defaults: CPU 2 h, GPU 30 min, warning 10 min."""
    from aigc_gateway.services.auth.activity import ActivityRecorder
    from aigc_gateway.services.auth.ownermap import InstanceKey
    from aigc_gateway.services.instance.app import InstanceService

    cpu = await create_template(game, testbed, "idle-cpu")
    gpu = await create_template(game, testbed, "idle-gpu", sample="stable-diffusion-gpu")
    settings = make_settings(database_url, issuer, **instance_overrides(testbed, game.namespace, idle={
        "enabled": False, "default_after_seconds": 7200, "gpu_default_after_seconds": 1800, "warning_seconds": 600}))
    gw = await start_gateway("instance", settings=settings)
    c = client_for(gw.channel("instance"))
    service = gw.service("instance", InstanceService)
    await c.stub.CreateIdleExemption(instance_pb2.CreateIdleExemptionRequest(
        idle_exemption=instance_pb2.IdleExemption(name="idleExemptions/carol")), metadata=c.md("admin"))
    made = {(user, tpl): (await c.install(user, tpl)).name
            for user, tpl in (("alice", cpu), ("alice", gpu), ("bob", gpu), ("carol", gpu), ("dave", gpu))}
    async with database.session() as session:
        since = max(r.state_changed_at for r in (await session.execute(select(InstanceRow))).scalars())
    now = [since]
    assert service.culler is not None
    service.culler.clock = lambda: now[0]
    counted = {m: REGISTRY.get_sample_value(m) or 0.0 for m in ("aigc_instance_idle_warnings_total",
                                                                 "aigc_instance_idle_pauses_total")}

    async def step(minutes: float) -> dict[str, int]:
        now[0] = since + timedelta(minutes=minutes)
        return await service.culler.pass_once()  # type: ignore[union-attr]

    def slot_of(user: str, tpl: str) -> Any:
        return slot(database, game.namespace, tpl, int(made[(user, tpl)].rsplit("/", 1)[1]))

    # bob uses his instance through the ingress (the auth service's recorder writes last_access_at).
    recorder = ActivityRecorder(database)
    bob = made[("bob", gpu)]
    recorder.touch(InstanceKey(game.namespace, gpu, int(bob.rsplit("/", 1)[1])), (since + timedelta(minutes=15))
                   .timestamp())
    await recorder.flush()

    assert await step(19) == {}
    assert await step(20) == {"warn": 2}  # the GPU instances of alice and dave (carol is exempt, bob used his)
    shown = await c.get("alice", made[("alice", gpu)])
    assert shown.scheduled_pause_time.ToDatetime(UTC) == since + timedelta(minutes=30)
    await c.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=made[("dave", gpu)]),
                                   metadata=c.md("dave"))  # at minute 20: his clock starts again
    assert await step(30) == {"pause": 1}  # alice's GPU instance, warned 10 minutes ago
    assert await slot_of("alice", gpu) == "PAUSED" and await slot_of("alice", cpu) == "LIVE"
    assert await step(35) == {"warn": 1}  # bob: last access at 15 + 30 - 10
    assert await step(40) == {"warn": 1}  # dave: kept alive at 20 + 30 - 10
    assert await step(45) == {"pause": 1}
    assert await step(50) == {"pause": 1}
    assert {u: await slot_of(u, gpu) for u in ("bob", "carol", "dave")} == {
        "bob": "PAUSED", "carol": "LIVE", "dave": "PAUSED"}

    # The CPU template's longer default: warned at 110 minutes, paused at 120; carol (exempt) never.
    assert await step(109) == {}
    assert await step(110) == {"warn": 1}
    assert await step(120) == {"pause": 1}
    assert await step(600) == {} and await slot_of("carol", gpu) == "LIVE"

    # A resume restarts the clock: the hours paused are not idleness.
    await c.resume("alice", made[("alice", gpu)])
    async with database.session() as session:
        row = await session.get(InstanceRow, (game.namespace, gpu, int(made[("alice", gpu)].rsplit("/", 1)[1])))
        since = row.state_changed_at
    assert await step(1) == {} and await step(19) == {}
    assert await step(20) == {"warn": 1}
    assert len(await culler_pauses(database, game.namespace)) == 4
    # Metrics (this process's): six announcements (dave's twice) and four pauses.
    assert {m: (REGISTRY.get_sample_value(m) or 0.0) - v for m, v in counted.items()} == {
        "aigc_instance_idle_warnings_total": 6, "aigc_instance_idle_pauses_total": 4}
    await c.wait_consistent(90)


async def test_a_pass_over_many_running_instances_reads_in_bulk(testbed: Testbed, game: Game, database_url: str,
                                                                 issuer: Issuer, start_gateway,
                                                                 database: Database) -> None:
    """5,000 running instances, none due: a pass decides nothing and takes three reads (its time is printed,
    not judged). The rows are written directly: the pass reads only the tables and the template cache."""
    import time

    from aigc_gateway.services.instance.app import InstanceService

    tpl = await create_template(game, testbed, "idle-bulk")
    settings = make_settings(database_url, issuer, **instance_overrides(testbed, game.namespace, idle={
        "enabled": False}))
    gw = await start_gateway("instance", settings=settings)
    service = gw.service("instance", InstanceService)
    async with database.session() as session:
        now = (await session.execute(select(func.now()))).scalar_one()
        session.add_all(InstanceRow(namespace=game.namespace, template=tpl, id=i, slot="LIVE", owner=f"user-{i}",
                                    orphaned=False, created_at=now, updated_at=now, state_changed_at=now)
                        for i in range(5000))
    assert service.culler is not None
    service.culler.clock = lambda: now + timedelta(minutes=100)  # CPU default 2 h: warnings from minute 110
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        assert await service.culler.pass_once() == {}
        timings.append(time.perf_counter() - started)
    print(f"idle pass over 5000 running instances, nothing due: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")


async def test_a_culler_killed_after_its_write_leaves_an_ordinary_interrupted_pause(
        testbed: Testbed, game: Game, service_process, client_for, database: Database) -> None:
    """The idle pause is an allocator step: killed after its GameServerSet write (fault point
    pause.after_gss_write), its intent is resolved by the other replica like any interrupted pause."""
    tpl = await idle_template(game, testbed, "idle-crash", **{"idle-after": "3s"})
    culler = await service_process(**idle_settings(warning_seconds=1))
    other = await service_process(**idle_settings(enabled=False))
    c = client_for(await launch(other))
    culler.start(fault="pause.after_gss_write")
    await culler.ready()
    name = (await c.install("alice", tpl)).name
    assert await culler.exited(120) == 86  # faults.EXIT_CODE: it died at the point, between write and record
    await wait_slot(database, game.namespace, 0, "PAUSED", tpl)  # the reconciler applied the intent
    await c.wait_consistent(90)
    resumed = await c.resume("alice", name)  # an ordinary paused instance: same id and disk
    assert resumed.owner == "alice"
    await c.wait_state("alice", name, State.RUNNING)
