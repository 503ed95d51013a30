"""ImportFromLogto on the test bed: custom data written by the original gateway becomes ownership rows.

The GameServerSet is left as the original gateway would leave it after some use: ids 0-4 were
installed, 1 was paused (reserved, disk kept), 4 uninstalled (reserved, disk not yet deleted), and 6
reserved without ever running (no disk), which leaves 5 a hole.
"""
from __future__ import annotations

import asyncio
import json
import sys

import pytest
import yaml

from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
from tests.plugins.gateway import bearer
from tests.plugins.kube import Game, api_client, load_sample, wait_for

from .support import entry, instances, settings_for

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
    assert preview.dry_run and preview.users_scanned == 8
    assert await instances(database) == {}  # a dry run writes nothing
    expected = {
        "imported": [("alice", 0), ("bob", 1)],
        "unchanged": [],
        "conflicts": [("", 3), ("", 5), ("carol", 2), ("dave", 2), ("frank", 0), ("grace", -1)],
        "skipped": ["erin"],
    }
    assert _summary(preview) == expected
    reasons = {(c.entry.user, c.entry.id): c.reason for c in preview.conflicts}
    assert "claimed by several users" in reasons[("carol", 2)]
    assert "not found" in reasons[("frank", 0)] and "running but no user" in reasons[("", 3)]
    assert "hole" in reasons[("", 5)]  # 5 is below the high-water mark 7, neither running nor reserved

    report = await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(), metadata=admin)
    assert _summary(report) == expected and not report.dry_run
    rows = {i: (r.slot, r.owner) for (n, t, i), r in (await instances(database)).items() if (n, t) == (ns, GSS)}
    assert rows == {0: ("LIVE", "alice"), 1: ("PAUSED", "bob"),
                    4: ("RELEASING", None),  # unclaimed, its disk still exists
                    6: ("FREE", None)}  # unclaimed, never had a disk
    assert logto.writes == []  # import reads Logto, never writes it

    again = await stub.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(), metadata=admin)
    assert _summary(again)["imported"] == [] and _summary(again)["unchanged"] == [("alice", 0), ("bob", 1)]
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
    assert printed["imported"] == [] and printed["users_scanned"] == 8
