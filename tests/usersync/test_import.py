"""ImportFromLogto on the test bed: custom data written by the original gateway becomes ownership rows.

The GameServerSet is left as the original gateway would leave it after some use: ids 0-4 were
installed, 1 was paused (reserved, disk kept), 4 paused or uninstalled (reserved, disk kept), and 6
reserved without ever running (no disk), which leaves 5 a hole. The original's race gave running
id 2 to carol and dave, and paused id 4 to judy and ken: disputes for an admin.
"""
from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest
import yaml

from aigc_gateway import okg
from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from tests.plugins.gateway import bearer
from tests.plugins.kube import Game, api_client, load_sample, wait_for

from .support import entry, instances, outbox_rows, settings_for

pytestmark = pytest.mark.testbed

GSS = "sd"


async def _original_cluster(testbed, namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, namespace)
        await game.create_gss(load_sample("stable-diffusion-cpu", testbed.domain, namespace, rename=GSS))
        await game.update_gss(GSS, lambda s: s.update(replicas=5))
        await game.wait_running(GSS, {0, 1, 2, 3, 4})
        await wait_for(lambda: _pvc_count(game, 5), 60, what="5 PVCs")
        await game.update_gss(GSS, lambda s: s.update(replicas=3, reserveGameServerIds=[1, 4, 6]))
        await game.wait_running(GSS, {0, 2, 3})


async def _pvc_count(game: Game, n: int) -> bool:
    return len([name for name in await game.pvcs() if name.endswith(tuple(f"-{GSS}-{i}" for i in range(5)))]) >= n


def _seed(logto, ns: str) -> None:
    key = f"{ns}-{GSS}"
    logto.add_user("alice", custom_data={key: entry(GSS, 0, ns), "lang": "en"})
    logto.add_user("bob", custom_data={key: entry(GSS, 1, ns)})  # paused: the id is reserved
    logto.add_user("carol", custom_data={key: entry(GSS, 2, ns)})
    logto.add_user("dave", custom_data={key: entry(GSS, 2, ns)})  # a conflict: two users claim id 2
    logto.add_user("erin", custom_data={key: None})  # the original's mark of a removed instance
    logto.add_user("frank", custom_data={f"{ns}-gone": entry("gone", 0, ns)})  # no such template
    logto.add_user("grace", custom_data={key: {"Name": GSS, "Namespace": ns, "ID": "abc"}})
    logto.add_user("heidi")
    logto.add_user("ivan", custom_data={key: entry(GSS, 6, ns)})  # reserved, but its disk is gone
    logto.add_user("judy", custom_data={key: entry(GSS, 4, ns)})  # a second dispute, over a paused id
    logto.add_user("ken", custom_data={key: entry(GSS, 4, ns)})


def _gauge(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def _summary(report) -> dict:
    return {
        "imported": sorted((e.user, e.id) for e in report.imported),
        "unchanged": sorted((e.user, e.id) for e in report.unchanged),
        "conflicts": sorted((c.entry.user, c.entry.id) for c in report.conflicts),
        "skipped": sorted(c.entry.user for c in report.skipped),
    }


async def test_import_from_logto_yields_ownership_rows_and_a_report(
        testbed, k8s_namespace, start_gateway, database, database_url, issuer, logto, tmp_path) -> None:
    ns = k8s_namespace
    await _original_cluster(testbed, ns)
    _seed(logto, ns)
    settings = settings_for(database_url, issuer, logto)
    settings.kubernetes.kubeconfig = str(testbed.kubeconfig)
    gateway = await start_gateway("usersync", settings=settings)
    stub = usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync"))
    admin = bearer(issuer.mint("root", roles=["admin"]))

    preview = await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(dry_run=True), metadata=admin)
    assert preview.dry_run and preview.users_scanned == 11
    assert await instances(database) == {}  # a dry run writes nothing
    expected = {
        "imported": [("alice", 0), ("bob", 1)],
        "unchanged": [],
        "conflicts": [("", 3), ("", 5), ("carol", 2), ("dave", 2), ("frank", 0), ("grace", -1), ("ivan", 6),
                      ("judy", 4), ("ken", 4)],
        "skipped": ["erin"],
    }
    assert _summary(preview) == expected
    reasons = {(c.entry.user, c.entry.id): c.reason for c in preview.conflicts}
    assert "claimed by several users" in reasons[("carol", 2)]
    assert "not found" in reasons[("frank", 0)] and "running but no user" in reasons[("", 3)]
    assert "hole" in reasons[("", 5)]  # 5 is below the high-water mark 7, neither running nor reserved
    assert "disk is gone" in reasons[("ivan", 6)]  # not imported as PAUSED onto an empty new disk
    disputed = [(d.name, list(d.claimants), d.state) for d in preview.disputed]
    assert disputed == [(f"namespaces/{ns}/templates/{GSS}/instances/2", ["carol", "dave"], "LIVE"),
                        (f"namespaces/{ns}/templates/{GSS}/instances/4", ["judy", "ken"], "PAUSED")]

    report = await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(), metadata=admin)
    assert _summary(report) == expected and not report.dry_run
    assert [(d.name, list(d.claimants), d.state) for d in report.disputed] == disputed
    rows = {i: (r.slot, r.owner) for (n, t, i), r in (await instances(database)).items() if (n, t) == (ns, GSS)}
    assert rows == {0: ("LIVE", "alice"), 1: ("PAUSED", "bob"),
                    6: ("FREE", None)}  # ivan's claim refused; never had a disk
    assert logto.writes == []  # import reads Logto, never writes it
    assert _gauge("aigc_usersync_disputed_instances") == 2
    # An owner dates from the disk the original gave them, not from the import (no PVC_REUSED below).
    async with api_client(testbed.kubeconfig) as client:
        pvcs = await Game(client, ns).pvcs()
    for i in (0, 1):
        row = (await instances(database))[(ns, GSS, i)]
        assert row.created_at == pvcs[f"user-data-{GSS}-{i}"].metadata.creation_timestamp

    again = await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(), metadata=admin)
    assert _summary(again)["imported"] == [] and _summary(again)["unchanged"] == [("alice", 0), ("bob", 1)]
    assert len(again.disputed) == 2  # the same disputes, recorded once
    assert {i: (r.slot, r.owner) for (n, t, i), r in (await instances(database)).items() if n == ns} == rows

    # The command line does the same, in its own process.
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": database_url},
        "kubernetes": {"kubeconfig": str(testbed.kubeconfig)},
        "usersync": {"logto_endpoint": logto.url, "logto_app_id": logto.app_id, "logto_app_secret": logto.app_secret},
        "logging": {"level": "WARNING"},
    }))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aigc_gateway.cli", "import-logto", "--json", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 3, err.decode()  # done, with conflicts for an admin
    printed = json.loads(out)
    assert sorted((e["user"], e["id"]) for e in printed["unchanged"]) == [("alice", 0), ("bob", 1)]
    assert printed["imported"] == [] and printed["users_scanned"] == 11
    assert [(d[2]["id"], d[2]["claimants"]) for d in printed["disputes"]] == [(2, ["carol", "dave"]),
                                                                             (4, ["judy", "ken"])]


async def test_disputed_ids_stay_out_of_allocation_until_an_admin_resolves_them(
        testbed, k8s_namespace, start_gateway, database, database_url, issuer, logto) -> None:
    """The import records the disputes; Reconcile leaves the claimants' entries alone; CheckConsistency
    reports them (and finds imported rows clean); ResolveDisputedInstance gives one to a claimant and
    the other to nobody, with audit events."""
    from aigc_gateway.api.v1 import (
        audit_pb2,
        audit_pb2_grpc,
        instance_pb2,
        instance_pb2_grpc,
    )

    ns = k8s_namespace
    await _original_cluster(testbed, ns)
    _seed(logto, ns)
    for user in ("oscar", "peggy"):  # a third dispute: running id 3, which the admin gives to nobody
        logto.add_user(user, custom_data={f"{ns}-{GSS}": entry(GSS, 3, ns)})
    settings = settings_for(database_url, issuer, logto)
    settings.kubernetes.kubeconfig = str(testbed.kubeconfig)
    gateway = await start_gateway("usersync", "instance", settings=settings)
    stub = usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync"))
    instance = instance_pb2_grpc.InstanceServiceStub(gateway.channel("instance"))
    admin = bearer(issuer.mint("root", roles=["admin"]))
    await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(), metadata=admin)
    key = f"{ns}-{GSS}"

    await stub.Reconcile(usersync_pb2.ReconcileRequest(), metadata=admin)
    for user, i in (("carol", 2), ("dave", 2), ("judy", 4), ("ken", 4), ("oscar", 3), ("peggy", 3)):
        assert logto.custom_data(user) == {key: entry(GSS, i, ns)}, user  # untouched: no decision yet
    assert not {w.user for w in logto.writes} & {"carol", "dave", "judy", "ken", "oscar", "peggy"}

    parent = f"namespaces/{ns}/templates/{GSS}"
    check = await instance.CheckConsistency(instance_pb2.CheckConsistencyRequest(parent=parent), metadata=admin)
    found = sorted((v.id, v.code) for v in check.violations)
    # The disputes and the hole 5: nothing about the imported rows 0 and 1.
    assert found == [(2, "DISPUTED"), (3, "DISPUTED"), (4, "DISPUTED"), (5, "HOLE")], check.violations

    name = f"{parent}/instances"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(
            name=f"{name}/2", owner="mallory"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _fields(err.value) == ["owner"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(
            name=f"{name}/0", owner="alice"), metadata=admin)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # not disputed
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(
            name=f"{name}/2", owner="carol"), metadata=bearer(issuer.mint("carol")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await instances(database)).get((ns, GSS, 2)) is None  # nothing half-written

    to_carol = await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(
        name=f"{name}/2", owner="carol"), metadata=admin)
    assert (to_carol.owner, to_carol.slot, list(to_carol.claimants)) == ("carol", "LIVE", ["carol", "dave"])
    to_none = await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(name=f"{name}/4"),
                                                 metadata=admin)
    assert (to_none.owner, to_none.slot) == ("", "RELEASING")  # its disk is deleted, then the id is free
    # The running id 3 given to nobody: reserved as an uninstall does (the hole 5 with it), so its pod stops.
    stopped = await stub.ResolveDisputedInstance(usersync_pb2.ResolveDisputedInstanceRequest(name=f"{name}/3"),
                                                 metadata=admin)
    assert (stopped.owner, stopped.slot) == ("", "RELEASING")
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, ns)
        spec = (await game.get_gss(GSS))["spec"]
        assert spec["replicas"] == 2 and {3, 5} <= set(okg.parse_reserve(spec["reserveGameServerIds"]))
        await game.wait_running(GSS, {0, 2})
    rows = await instances(database)
    assert (rows[(ns, GSS, 2)].slot, rows[(ns, GSS, 2)].owner) == ("LIVE", "carol")
    assert rows[(ns, GSS, 4)].owner is None and rows[(ns, GSS, 3)].slot in ("RELEASING", "FREE")
    assert _gauge("aigc_usersync_disputed_instances") == 0
    queued = {(r.user, r.instance_id) for r in await outbox_rows(database) if r.template == GSS}
    assert queued == {("carol", 2), ("dave", None), ("judy", None), ("ken", None), ("oscar", None), ("peggy", None)}
    check = await instance.CheckConsistency(instance_pb2.CheckConsistencyRequest(parent=parent), metadata=admin)
    # Nothing about the resolved ids; the hole 5 is reserved now, with no disk anyone knows of.
    assert sorted((v.id, v.code) for v in check.violations) == [(5, "UNTRACKED_RESERVED")], check.violations

    audit = audit_pb2_grpc.AuditServiceStub(gateway.channel("usersync"))
    events = (await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(
        page_size=50, action="UserSyncService.ResolveDisputedInstance", outcome=audit_pb2.AuditEvent.SUCCESS),
        metadata=admin)).audit_events
    assert sorted((e.resource, e.details["slot"]) for e in events) == [
        (f"{name}/2", "LIVE"), (f"{name}/3", "RELEASING"), (f"{name}/4", "RELEASING")]
    assert {e.actor for e in events} == {"root"}


def _fields(err) -> list[str]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    out = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out
