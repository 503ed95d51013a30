"""Issue 14's acceptance, end to end through a real proxy: five instances of one template published through the
template service, behind the test bed's Traefik reading OKG's Ingress objects, the auth service recording
activity from the checks the proxy asks for, and the instance service's reconciler running the rollout step
every second.

alice is busy: her URL receives an authorised request through Traefik every 0.2 s for the whole test, and every
one of them is answered by her own pod. bob's instance was last used two hours ago, carol's is paused, dave asks
for the update (UpdateInstance), erin installs while the rollout runs. The admin changes the image (WHEN_IDLE,
idle after one hour). Then: bob moves at once and dave when he asks, both in place; erin starts on the new
revision and carol resumes on it with her old disk; alice's pod keeps its UID, its revision and the hold label
while she is busy; once she stops and her activity is an hour and more old (the rollout step's clock moved on:
the injected clock of services/instance/rollouts.py), she moves at the next pass. Every URL and every disk is the
one the instance had, and CheckConsistency is clean at each stage. kwok never restarts a container, so the test
acts as the kubelet to finish each in-place update (tests/okg/test_update_facts.py).
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from google.protobuf import duration_pb2
from sqlalchemy import select, update

from aigc_gateway.api.v1 import instance_pb2, template_pb2
from aigc_gateway.db.models import AuditEventRow, InstanceRow
from aigc_gateway.services.instance.app import InstanceService
from aigc_gateway.upgrades import HOLD_LABEL, REVISION_LABEL
from tests.plugins.gateway import TEST_SERVICE_TOKEN
from tests.plugins.kube import Game, api_client, wait_for

from .scene import DOMAIN, install, manifest

pytestmark = pytest.mark.testbed

USERS = ("alice", "bob", "carol", "dave", "erin")
OLD_IMAGE, NEW_IMAGE = ":v1.0.0-cpu", ":v2.0.0-cpu"
# An admin of the instance service (the scene's users sign in with the IdP; the test issuer's tokens are the
# template service's).
SERVICE = (("x-aigc-service-token", TEST_SERVICE_TOKEN), ("x-aigc-service-name", "acceptance"))


@pytest.fixture
async def scene(make_scene):
    return await make_scene("traefik", users=USERS, instance={"reconcile_interval_seconds": 1})


async def test_five_instances_through_traefik_none_restarts_while_its_owner_is_using_it(scene, testbed) -> None:
    ns = scene.pods.namespace
    service = scene.services.service("instance", InstanceService)
    made = {u: await install(scene, u) for u in ("alice", "bob", "carol", "dave")}

    async def get(user: str) -> instance_pb2.Instance:
        return await scene.instances.GetInstance(instance_pb2.GetInstanceRequest(name=made[user].name),
                                                 metadata=scene.meta(user))

    async def consistent() -> bool:
        reply = await scene.instances.CheckConsistency(instance_pb2.CheckConsistencyRequest(
            parent=f"namespaces/{ns}/templates/sd"), metadata=SERVICE)
        return reply.consistent

    async def url(user: str) -> str:
        return (await get(user)).access_uri  # once the GameServer's network is ready
    urls = {u: await wait_for(lambda u=u: url(u), 30, what=f"{u}'s URL") for u in made}
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, ns)

        async def pods() -> dict[int, tuple[str, str, bool]]:
            """id -> (uid, revision, held)"""
            return {i: (p.metadata.uid, p.metadata.labels.get(REVISION_LABEL, ""),
                        (p.metadata.labels or {}).get(HOLD_LABEL) == "true") for i, p in (await game.pods("sd")).items()}

        async def disks() -> dict[str, str]:
            return {name: pvc.metadata.uid for name, pvc in (await game.pvcs()).items()}

        ids = {u: made[u].ident for u in made}
        before, disks_before = await pods(), await disks()
        old = before[ids["alice"]][1]

        # Each owner's visit (install() waits for the proxy to route it) is recorded before anything else (the auth
        # service writes activity every 5 s). Then bob's visit and start are set two hours back (a later flush
        # cannot move them forward again; an instance started within the threshold counts as in use); carol
        # pauses hers.
        async def recorded(user: str) -> bool:
            async with scene.stack.db.session() as session:
                row = await session.get(InstanceRow, (ns, "sd", ids[user]))
                return row is not None and row.last_access_at is not None
        for user in made:
            await wait_for(lambda u=user: recorded(u), 30, what=f"{user}'s visit recorded")
        async with scene.stack.db.session() as session:
            await session.execute(update(InstanceRow).where(InstanceRow.namespace == ns, InstanceRow.id == ids["bob"])
                                  .values(last_access_at=datetime.now(UTC) - timedelta(hours=2),
                                          state_changed_at=datetime.now(UTC) - timedelta(hours=2)))
            await session.commit()
        await scene.instances.PauseInstance(instance_pb2.PauseInstanceRequest(name=made["carol"].name),
                                            metadata=scene.meta("carol"))
        await wait_for(lambda: _state(get, "carol", instance_pb2.Instance.PAUSED), 60, what="carol paused")

        # alice works: an authorised request through Traefik every 0.2 s, each answered by her pod.
        answered: list[int] = []
        working = asyncio.Event()
        working.set()

        async def alice_works() -> None:
            while working.is_set():
                reply = await scene.get(made["alice"].host, "/", user="alice")
                assert reply.status == 200 and reply.json()["pod"] == made["alice"].pod, (reply.status, reply.body)
                answered.append(reply.status)
                await asyncio.sleep(0.2)
        busy = asyncio.create_task(alice_works())
        try:
            text = manifest(ns, scene.auth_url, scene.signin_url, host=scene.host(f"instances<id>-cpu.{DOMAIN}"),
                            path="/", path_type="ImplementationSpecific", name="sd")
            assert OLD_IMAGE in text
            obj = yaml.safe_load(text)
            del obj["spec"]["replicas"]  # the instance service's (UpdateTemplate refuses to change it)
            text = yaml.safe_dump(obj, sort_keys=False)
            await scene.templates.UpdateTemplate(template_pb2.UpdateTemplateRequest(
                name=f"namespaces/{ns}/templates/sd", source=template_pb2.TemplateSource(
                    manifest=text.replace(OLD_IMAGE, NEW_IMAGE)),
                rollout_policy=template_pb2.WHEN_IDLE, rollout_idle_after=duration_pb2.Duration(seconds=3600)),
                metadata=scene.admin)

            async def planned() -> dict | None:
                now = await pods()
                new = now[ids["bob"]][1]
                ok = new != old and now[ids["alice"]] == (before[ids["alice"]][0], old, True) \
                    and now[ids["dave"]] == (before[ids["dave"]][0], old, True)
                return now if ok else None
            try:
                now = await wait_for(planned, 90, what="bob moving in place, alice and dave held")
            except AssertionError:
                async with scene.stack.db.session() as session:
                    seen = {r.id: (r.slot, r.last_access_at) for r in (await session.execute(
                        select(InstanceRow).where(InstanceRow.namespace == ns))).scalars()}
                rolling = (await game.get_gss("sd"))["spec"]["updateStrategy"]["rollingUpdate"]
                raise AssertionError(f"pods {await pods()}, rows {seen}, rolling {rolling}, old {old}") from None
            new = now[ids["bob"]][1]
            assert now[ids["bob"]][0] == before[ids["bob"]][0]  # in place: the same pod
            await game.act_as_kubelet("sd", ids["bob"], _image(await game.pods("sd"), ids["bob"]))
            bob = await wait_for(lambda: _state(get, "bob", instance_pb2.Instance.RUNNING), 60, what="bob running")
            assert (bob.revision, bob.update_available) == (new, False)
            assert await wait_for(consistent, 60, what="consistent after the first step")

            # dave asks: his pod moves in place; alice's does not.
            await scene.instances.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=made["dave"].name),
                                                 metadata=scene.meta("dave"))
            await wait_for(lambda: _revision(pods, ids["dave"], new), 60, what="dave's pod on the new revision")
            await game.act_as_kubelet("sd", ids["dave"], _image(await game.pods("sd"), ids["dave"]))
            dave = await wait_for(lambda: _state(get, "dave", instance_pb2.Instance.RUNNING), 60, what="dave running")
            assert (dave.revision, dave.update_available) == (new, False)

            # erin installs during the rollout and carol resumes: both start on the new revision.
            made["erin"] = await install(scene, "erin")
            ids["erin"] = made["erin"].ident
            await scene.instances.ResumeInstance(instance_pb2.ResumeInstanceRequest(name=made["carol"].name),
                                                 metadata=scene.meta("carol"))
            carol = await wait_for(lambda: _state(get, "carol", instance_pb2.Instance.RUNNING), 90,
                                   what="carol running")
            erin = await get("erin")
            assert (carol.revision, erin.revision) == (new, new)
            now = await pods()
            assert (now[ids["carol"]][1], now[ids["erin"]][1]) == (new, new)
            assert await wait_for(consistent, 60, what="consistent during the rollout")

            # Through all of it, alice's pod never moved: same UID, old revision, held.
            assert now[ids["alice"]] == (before[ids["alice"]][0], old, True)
            alice = await get("alice")
            assert (alice.revision, alice.update_available) == (old, True)
        finally:
            working.clear()
            await busy  # re-raises a request that failed or reached another pod
        print(f"alice's requests through Traefik while the others moved: {len(answered)}, every one 200 from "
              f"{made['alice'].pod}")
        assert len(answered) > 0

        # alice stops; an hour and more later (the rollout step's clock moves on), the next pass moves her.
        assert service.rollouts is not None
        service.rollouts.clock = lambda: datetime.now(UTC) + timedelta(hours=2)
        started = time.monotonic()
        await wait_for(lambda: _revision(pods, ids["alice"], new), 60, what="alice's pod on the new revision")
        print(f"alice moved {time.monotonic() - started:.1f} s after she went idle (reconcile interval 1 s)")
        after_move = await pods()
        assert after_move[ids["alice"]][0] == before[ids["alice"]][0]  # in place
        await game.act_as_kubelet("sd", ids["alice"], _image(await game.pods("sd"), ids["alice"]))
        alice = await wait_for(lambda: _state(get, "alice", instance_pb2.Instance.RUNNING), 60, what="alice running")
        assert (alice.revision, alice.update_available) == (new, False)

        # Every URL and every disk is the one each instance had; no pod of the first four was made again.
        assert {u: (await get(u)).access_uri for u in urls} == urls
        after = await disks()
        assert {n: after[n] for n in disks_before} == disks_before
        final = await pods()
        assert {i: final[i][0] for i in (ids["alice"], ids["bob"], ids["dave"])} == {
            i: before[i][0] for i in (ids["alice"], ids["bob"], ids["dave"])}
        assert {i: p[1] for i, p in final.items()} == {ids[u]: new for u in USERS}
        assert await wait_for(consistent, 60, what="consistent at the end")

        async with scene.stack.db.session() as session:
            events = (await session.execute(select(AuditEventRow).where(
                AuditEventRow.action == "InstanceService.RolloutInstance"))).scalars().all()
        reasons = {int(e.resource.rsplit("/", 1)[1]): (e.details["reason"], e.details["in_place"]) for e in events}
        assert reasons == {ids["bob"]: ("idle", True), ids["dave"]: ("requested", True),
                           ids["alice"]: ("idle", True)}


async def _state(get, user: str, state: int) -> instance_pb2.Instance | None:
    shown = await get(user)
    return shown if shown.state == state else None


async def _revision(pods, i: int, revision: str) -> bool:
    return (await pods())[i][1] == revision


def _image(pods, i: int) -> str:
    return pods[i].spec.containers[0].image
