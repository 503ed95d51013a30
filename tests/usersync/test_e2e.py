"""End to end on the test bed: the real instance and template services drive usersync, which mirrors into
the Logto double. Users act with their own bearer tokens; nothing here writes the shared tables directly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc, template_pb2, template_pb2_grpc
from tests.doubles.logto import LogtoDouble
from tests.plugins.gateway import RunningGateway, bearer, make_settings
from tests.plugins.kube import Game, api_client, load_sample, wait_for
from tests.plugins.logto import usersync_config

from .support import drained, entry, instances, outbox_rows, usersync_of

pytestmark = pytest.mark.testbed

LABELS = {"aigc.gateway.io/template": "true"}
SAMPLE = "stable-diffusion-cpu"


async def create_template(testbed: Any, namespace: str, name: str) -> None:
    obj = load_sample(SAMPLE, testbed.domain, namespace, rename=name)
    obj["metadata"].setdefault("labels", {}).update(LABELS)
    for conf in obj["spec"]["network"]["networkConf"]:
        if conf["name"] == "Host":  # every template needs hosts of its own
            conf["value"] = conf["value"].replace("instances<id>-", f"{name}-<id>-")
    async with api_client(testbed.kubeconfig) as api:
        await Game(api, namespace).create_gss(obj)


@dataclass
class Stack:
    gateway: RunningGateway
    issuer: Any
    namespace: str
    logto: LogtoDouble

    @property
    def instances(self) -> instance_pb2_grpc.InstanceServiceStub:
        return instance_pb2_grpc.InstanceServiceStub(self.gateway.channel("instance"))

    def as_user(self, user: str) -> tuple[tuple[str, str], ...]:
        return bearer(self.issuer.mint(user, roles=["admin"] if user == "root" else []))

    def parent(self, template: str) -> str:
        return f"namespaces/{self.namespace}/templates/{template}"

    async def install(self, user: str, template: str) -> int:
        reply = await self.instances.CreateInstance(instance_pb2.CreateInstanceRequest(parent=self.parent(template)),
                                                    metadata=self.as_user(user), timeout=120)
        return reply.id

    async def uninstall(self, user: str, template: str, instance_id: int) -> None:
        await self.instances.DeleteInstance(instance_pb2.DeleteInstanceRequest(
            name=f"{self.parent(template)}/instances/{instance_id}"), metadata=self.as_user(user), timeout=120)

    async def pause(self, user: str, template: str, instance_id: int) -> None:
        await self.instances.PauseInstance(instance_pb2.PauseInstanceRequest(
            name=f"{self.parent(template)}/instances/{instance_id}"), metadata=self.as_user(user), timeout=120)


@pytest.fixture
def stack(start_gateway, database_url, issuer, logto, testbed, k8s_namespace):
    async def start(*services: str, **usersync: Any) -> Stack:
        settings = make_settings(
            database_url, issuer, namespaces=[k8s_namespace], gss_labels=LABELS,
            kubernetes={"kubeconfig": str(testbed.kubeconfig)},
            instance={"reconcile_interval_seconds": 1, "release_wait_seconds": 30},
            template={"delete_wait_seconds": 90}, usersync=usersync_config(logto, **usersync))
        gateway = await start_gateway("instance", "usersync", *services, settings=settings)
        return Stack(gateway, issuer, k8s_namespace, logto)
    return start


async def test_installs_and_uninstalls_of_three_users_are_mirrored(stack, testbed, k8s_namespace, database,
                                                                   logto) -> None:
    ns = k8s_namespace
    await create_template(testbed, ns, "sd")
    await create_template(testbed, ns, "sd2")
    for user in ("alice", "bob", "carol"):
        logto.add_user(user, custom_data={"lang": "en"})
    s = await stack()
    a = await s.install("alice", "sd")
    b = await s.install("bob", "sd")
    c = await s.install("carol", "sd2")
    a2 = await s.install("alice", "sd2")
    await drained(database, timeout=60)
    assert logto.custom_data("alice") == {"lang": "en", f"{ns}-sd": entry("sd", a, ns),
                                          f"{ns}-sd2": entry("sd2", a2, ns)}
    assert logto.custom_data("bob") == {"lang": "en", f"{ns}-sd": entry("sd", b, ns)}
    assert logto.custom_data("carol") == {"lang": "en", f"{ns}-sd2": entry("sd2", c, ns)}

    await s.uninstall("bob", "sd", b)
    await s.uninstall("alice", "sd2", a2)
    await drained(database, timeout=60)
    assert logto.custom_data("bob") == {"lang": "en"}  # the key is gone, not null
    assert logto.custom_data("alice") == {"lang": "en", f"{ns}-sd": entry("sd", a, ns)}
    assert logto.custom_data("carol") == {"lang": "en", f"{ns}-sd2": entry("sd2", c, ns)}


async def test_logto_down_during_ten_installs(stack, testbed, k8s_namespace, database, logto) -> None:
    ns = k8s_namespace
    await create_template(testbed, ns, "sd")
    users = [f"user-{n}" for n in range(10)]
    for user in users:
        logto.add_user(user)
    s = await stack()
    await logto.go_down("refuse")
    ids = {}
    for user in users:
        ids[user] = await s.install(user, "sd")
    await s.uninstall("user-0", "sd", ids["user-0"])  # after its install: order decides the outcome
    await wait_for(lambda: _all_attempted(database), timeout=30, what="failed attempts while Logto is down")
    assert all(logto.custom_data(u) == {} for u in users)
    await logto.come_up()
    await drained(database, timeout=60)
    assert logto.custom_data("user-0") == {}
    for user in users[1:]:
        assert logto.custom_data(user) == {f"{ns}-sd": entry("sd", ids[user], ns)}


async def _all_attempted(database) -> bool:
    rows = await outbox_rows(database)
    return len(rows) == 11 and all(r.delivered_at is None for r in rows) and any(r.attempts for r in rows)


@pytest.mark.parametrize("policy", ["pause", "purge"])
async def test_signed_user_deleted_applies_the_policy(stack, testbed, k8s_namespace, database, logto,
                                                      policy: str) -> None:
    ns = k8s_namespace
    await create_template(testbed, ns, "sd")
    await create_template(testbed, ns, "sd2")
    logto.add_user("alice")
    logto.add_user("bob")
    s = await stack(user_deleted_policy=policy)
    running = await s.install("alice", "sd")
    paused = await s.install("alice", "sd2")
    await s.pause("alice", "sd2", paused)
    bobs = await s.install("bob", "sd")
    await drained(database, timeout=60)

    body, headers = logto.webhook("User.Deleted", "alice")
    del logto.users["alice"]
    url = f"http://127.0.0.1:{usersync_of(s.gateway).webhooks.port}/webhooks/logto"
    async with httpx.AsyncClient(timeout=180) as client:
        response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    rows = await instances(database)
    if policy == "pause":
        assert (rows[(ns, "sd", running)].slot, rows[(ns, "sd", running)].owner) == ("PAUSED", "alice")
        assert rows[(ns, "sd2", paused)].slot == "PAUSED"
        assert rows[(ns, "sd", running)].orphaned and rows[(ns, "sd2", paused)].orphaned
        async with api_client(testbed.kubeconfig) as api:
            game = Game(api, ns)

            async def stopped() -> bool:
                return running not in await game.running_ids("sd")

            await wait_for(stopped, timeout=60, what=f"pod sd-{running} to stop")  # the pod goes, the disk stays
            assert f"user-data-sd-{running}" in await game.pvcs()
    else:
        assert rows[(ns, "sd", running)].owner is None and rows[(ns, "sd2", paused)].owner is None
        assert rows[(ns, "sd", running)].slot in ("RELEASING", "FREE")
    assert (rows[(ns, "sd", bobs)].slot, rows[(ns, "sd", bobs)].owner, rows[(ns, "sd", bobs)].orphaned) == \
        ("LIVE", "bob", False)
    async with httpx.AsyncClient(timeout=30) as client:
        replay = await client.post(url, content=body, headers=headers)
    assert replay.status_code == 409


async def test_deleting_a_template_with_force_removes_the_key_from_exactly_its_owners(
        stack, testbed, k8s_namespace, database, logto, issuer) -> None:
    ns = k8s_namespace
    await create_template(testbed, ns, "sd")
    await create_template(testbed, ns, "sd2")
    for user in ("alice", "bob", "carol"):
        logto.add_user(user)
    s = await stack("template")
    await s.install("alice", "sd")
    await s.install("bob", "sd")
    carol = await s.install("carol", "sd2")
    alice2 = await s.install("alice", "sd2")
    await drained(database, timeout=60)
    templates = template_pb2_grpc.TemplateServiceStub(s.gateway.channel("template"))
    for attempt in range(3):  # UNAVAILABLE while the disks are still going: the same delete resumes it
        try:
            await templates.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=s.parent("sd"), force=True),
                                           metadata=s.as_user("root"), timeout=180)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
    await drained(database, timeout=60)
    assert logto.custom_data("alice") == {f"{ns}-sd2": entry("sd2", alice2, ns)}
    assert logto.custom_data("bob") == {}
    assert logto.custom_data("carol") == {f"{ns}-sd2": entry("sd2", carol, ns)}
    assert not [w for w in logto.writes if w.user == "carol" and w.kind == "replace"]
