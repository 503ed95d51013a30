"""Each service run with its own ServiceAccount's token (the chart's RBAC, applied for real on
the test bed, RBAC on) does its whole job: publish and delete a template, install, pause, resume
and uninstall an instance, decide access from the owner map, import from Logto."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

from aigc_gateway.api.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    template_pb2,
    template_pb2_grpc,
    usersync_pb2,
    usersync_pb2_grpc,
)
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import GatewayServer, load_service
from tests.plugins.auth_stack import free_port
from tests.plugins.gateway import bearer, make_settings
from tests.plugins.kube import load_sample, wait_for
from tests.plugins.logto import usersync_config

from .chart import SERVICES, render
from .serviceaccounts import apply, token_kubeconfig
from .stack import SAMPLE, SESSION_KEY

pytestmark = pytest.mark.testbed
State = instance_pb2.Instance.State


@pytest.fixture
async def services_as_accounts(helm, testbed, k8s_namespace, tmp_path: Path, database_url, issuer, logto):
    """The four services, each its own server with its own ServiceAccount's kubeconfig."""
    ns = k8s_namespace
    kubectl = testbed.kubectl or os.environ.get("AIGC_TESTBED_KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        pytest.skip("needs kubectl")
    objects = render(helm, ns, namespaces=json.dumps([ns]))
    apply(kubectl, testbed.kubeconfig, [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")])
    ports = {s: free_port() for s in SERVICES}
    servers: dict[str, GatewayServer] = {}
    runtimes: list[Runtime] = []
    try:
        for service in SERVICES:
            kubeconfig = await token_kubeconfig(testbed.kubeconfig, ns, f"gw-aigc-gateway-{service}",
                                                tmp_path / f"{service}.kubeconfig")
            settings = make_settings(
                database_url, issuer, namespaces=[ns], kubernetes={"kubeconfig": str(kubeconfig)},
                servers={**{s: {"listen": f"127.0.0.1:{p}"} for s, p in ports.items()}, "metrics_listen": ""},
                auth={"session_keys": [SESSION_KEY], "http_listen": "127.0.0.1:0", "cookie_secure": False,
                      "http_workers": 0},
                usersync=usersync_config(logto), instance={"reconcile_interval_seconds": 1})
            runtime = Runtime.create(settings)
            runtimes.append(runtime)
            servers[service] = GatewayServer(service, runtime, load_service(service, runtime))
            await servers[service].start(f"127.0.0.1:{ports[service]}")
        channels = {s: grpc.aio.insecure_channel(f"127.0.0.1:{p}") for s, p in ports.items()}
        yield channels
        for channel in channels.values():
            await channel.close()
    finally:
        for server in servers.values():
            await server.stop(0)
        for runtime in runtimes:
            await runtime.close()


async def test_each_service_does_its_work_with_its_own_service_account(services_as_accounts: dict[str, Any],
                                                                         testbed, k8s_namespace, issuer,
                                                                         logto) -> None:
    ns, channels = k8s_namespace, services_as_accounts
    admin, alice = bearer(issuer.mint("admin", roles=["admin"])), bearer(issuer.mint("alice"))
    templates = template_pb2_grpc.TemplateServiceStub(channels["template"])
    instances = instance_pb2_grpc.InstanceServiceStub(channels["instance"])
    auth = auth_pb2_grpc.AuthServiceStub(channels["auth"])
    usersync = usersync_pb2_grpc.UserSyncServiceStub(channels["usersync"])
    parent = f"namespaces/{ns}/templates/{SAMPLE}"

    # template: validate (server-side dry run), create, list.
    manifest = json.dumps(load_sample(SAMPLE, testbed.domain, ns))
    await templates.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=f"namespaces/{ns}", source=template_pb2.TemplateSource(manifest=manifest)), metadata=admin)
    listed = await templates.ListTemplates(template_pb2.ListTemplatesRequest(parent=f"namespaces/{ns}"),
                                           metadata=alice)
    assert [t.name for t in listed.templates] == [parent]

    # instance: the whole lifecycle.
    created = await instances.CreateInstance(instance_pb2.CreateInstanceRequest(parent=parent), metadata=alice)

    async def state() -> int:
        return (await instances.GetInstance(instance_pb2.GetInstanceRequest(name=created.name), metadata=alice)).state

    await wait_for(lambda: _is(state(), State.RUNNING), 120, what="RUNNING")
    await instances.PauseInstance(instance_pb2.PauseInstanceRequest(name=created.name), metadata=alice)
    await wait_for(lambda: _is(state(), State.PAUSED), 120, what="PAUSED")
    await instances.ResumeInstance(instance_pb2.ResumeInstanceRequest(name=created.name), metadata=alice)
    running = await wait_for(lambda: _is(state(), State.RUNNING), 120, what="RUNNING again")
    assert running

    # auth: the owner map (watching GameServerSets and GameServers) lets alice in, and only her.
    instance = await instances.GetInstance(instance_pb2.GetInstanceRequest(name=created.name), metadata=alice)

    async def decision(user: str) -> int:
        reply = await auth.Check(auth_pb2.CheckRequest(url=instance.access_uri, bearer_token=issuer.mint(user)),
                                 metadata=admin)
        return reply.http_status

    await wait_for(lambda: _is(decision("alice"), 200), 60, what="alice allowed")
    assert await decision("bob") == 403

    # usersync: an import reads the GameServerSet and lists its disks with usersync's own account. The one
    # right report proves both reads worked: id 7 is judged against the GameServerSet (neither running nor
    # reserved), and the running id 0 (alice's, with its disk) is known to the gateway already.
    logto.add_user("dave", custom_data={f"{ns}-{SAMPLE}": {"Name": SAMPLE, "Namespace": ns, "ID": "7"}})
    logto.add_user("erin", custom_data={f"{ns}-{SAMPLE}": {"Name": SAMPLE, "Namespace": ns,
                                                             "ID": str(instance.id)}})
    report = await usersync.ImportFromLogto(usersync_pb2.ImportFromLogtoRequest(dry_run=True), metadata=admin)
    assert report.dry_run and not report.imported and not report.unchanged and not report.skipped
    assert sorted((c.entry.user, c.entry.id, c.reason) for c in report.conflicts) == [
        ("dave", 7, "id 7 is neither running nor reserved in the GameServerSet"),
        ("erin", instance.id, f"id {instance.id} belongs to another user in the gateway")]

    # Consistency (instance reads GSS, pods, disks), uninstall, and the template's forced delete
    # (which lists and deletes the template's disks).
    consistency = await instances.CheckConsistency(instance_pb2.CheckConsistencyRequest(parent=parent),
                                                   metadata=admin)
    assert consistency.consistent, consistency
    await instances.DeleteInstance(instance_pb2.DeleteInstanceRequest(name=created.name), metadata=alice)
    await templates.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=parent, force=True), metadata=admin,
                                   timeout=180)
    assert not (await templates.ListTemplates(template_pb2.ListTemplatesRequest(parent=f"namespaces/{ns}"),
                                              metadata=alice)).templates


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected
