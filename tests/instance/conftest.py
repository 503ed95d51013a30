"""Fixtures for instance-service tests on the test bed: a template in the test's namespace and an instance
service (in this process, or as `aigc-gateway serve instance` subprocesses) pointed at it."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.config import Settings
from aigc_gateway.db import Database
from aigc_gateway.kube import Kube
from aigc_gateway.services.instance import faults
from aigc_gateway.services.instance.cluster import Cluster
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.slots import SlotStore

from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer, make_settings
from ..plugins.kube import Game, api_client, load_sample, wait_for
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed
from ..served import ServiceProcess, free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "stable-diffusion-cpu"
State = instance_pb2.Instance.State


def instance_overrides(testbed: Testbed, namespace: str, **instance: Any) -> dict[str, Any]:
    return {"kubernetes": {"kubeconfig": str(testbed.kubeconfig)}, "namespaces": [namespace],
            "instance": {"reconcile_interval_seconds": 1, "release_wait_seconds": 30, **instance}}


@pytest.fixture
def instance_settings(database_url: str, issuer: Issuer, testbed: Testbed, k8s_namespace: str) -> Settings:
    return make_settings(database_url, issuer, **instance_overrides(testbed, k8s_namespace))


@pytest.fixture
async def game(testbed: Testbed, k8s_namespace: str) -> AsyncIterator[Game]:
    async with api_client(testbed.kubeconfig) as api:
        yield Game(api, k8s_namespace)


@pytest.fixture
async def kube(instance_settings: Settings) -> AsyncIterator[Kube]:
    client = await Kube.connect(instance_settings.kubernetes)
    yield client
    await client.close()


@pytest.fixture
async def lifecycle(database: Database, kube: Kube, instance_settings: Settings) -> AsyncIterator[Lifecycle]:
    """The allocator in this process, without a reconciler: only the test's calls act."""
    cluster = Cluster(kube, instance_settings.namespaces, instance_settings.gss_labels)
    lc = Lifecycle(database, SlotStore(database), cluster, instance_settings.instance)
    yield lc
    await lc.close()


async def held(monkeypatch: pytest.MonkeyPatch, folder: Path, point: str, work: asyncio.Task[Any]) -> None:
    """Until ``work`` holds at ``point`` (faults.reach); the switch is off again for every later step."""
    async def there() -> bool:
        if work.done():
            work.result()  # its error, if it ended instead
            raise AssertionError(f"the step ended before {point}")
        return (folder / f"{point}.reached").exists()
    await wait_for(there, 60, interval=0.05, what=f"the step held at {point}")
    monkeypatch.delenv(faults.HOLD_ENV)



async def create_template(game: Game, testbed: Testbed, name: str = SAMPLE, sample: str = SAMPLE,
                          **spec: Any) -> str:
    obj = load_sample(sample, testbed.domain, game.namespace, rename=name)
    obj["spec"].update(spec)
    if name != sample:
        for conf in obj["spec"]["network"]["networkConf"]:
            if conf["name"] == "Host":  # every template needs hosts of its own
                conf["value"] = conf["value"].replace("instances<id>-", f"{name}-<id>-")
    await game.create_gss(obj)
    return name


async def wait_realigned(game: Game, live: set[int], template: str = SAMPLE) -> None:
    """Until (R, X) runs exactly ``live`` and exactly those pods run (allocator.plan_realign's end state)."""
    from aigc_gateway import okg
    from aigc_gateway.services.instance.allocator import Spec

    async def realigned() -> bool:
        spec = (await game.get_gss(template))["spec"]
        aligned = Spec.of(spec["replicas"], okg.parse_reserve(spec.get("reserveGameServerIds"))).live() == live
        return aligned and await game.running_ids(template) == live
    await wait_for(realigned, 90, what=f"ids {sorted(live)} running again and (R, X) running exactly them")


async def wait_slot(db: Any, namespace: str, instance_id: int, slot: str, template: str = SAMPLE) -> None:
    """Until the shared table's row of the id has ``slot``."""
    from aigc_gateway.db.models import InstanceRow

    async def reached() -> bool:
        async with db.session() as session:
            row = await session.get(InstanceRow, (namespace, template, instance_id))
        return row is not None and row.slot == slot
    await wait_for(reached, 60, what=f"id {instance_id} to be {slot}")


@dataclass
class Client:
    """Calls as users of the issuer; `admin` has the admin role."""

    channel: grpc.aio.Channel
    issuer: Issuer
    namespace: str
    stub: instance_pb2_grpc.InstanceServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = instance_pb2_grpc.InstanceServiceStub(self.channel)

    def md(self, user: str) -> tuple[tuple[str, str], ...]:
        return bearer(self.issuer.mint(user, roles=["admin"] if user == "admin" else []))

    def parent(self, template: str = SAMPLE) -> str:
        return f"namespaces/{self.namespace}/templates/{template}"

    async def install(self, user: str, template: str = SAMPLE, **kw: Any) -> instance_pb2.Instance:
        return await self.stub.CreateInstance(instance_pb2.CreateInstanceRequest(parent=self.parent(template), **kw),
                                              metadata=self.md(user))

    async def get(self, user: str, name: str) -> instance_pb2.Instance:
        return await self.stub.GetInstance(instance_pb2.GetInstanceRequest(name=name), metadata=self.md(user))

    async def pause(self, user: str, name: str) -> instance_pb2.Instance:
        return await self.stub.PauseInstance(instance_pb2.PauseInstanceRequest(name=name), metadata=self.md(user))

    async def resume(self, user: str, name: str) -> instance_pb2.Instance:
        return await self.stub.ResumeInstance(instance_pb2.ResumeInstanceRequest(name=name), metadata=self.md(user))

    async def restart(self, user: str, name: str) -> instance_pb2.Instance:
        return await self.stub.RestartInstance(instance_pb2.RestartInstanceRequest(name=name),
                                               metadata=self.md(user))

    async def uninstall(self, user: str, name: str) -> instance_pb2.Instance:
        return await self.stub.DeleteInstance(instance_pb2.DeleteInstanceRequest(name=name), metadata=self.md(user))

    async def check(self, parent: str = "") -> instance_pb2.CheckConsistencyResponse:
        return await self.stub.CheckConsistency(
            instance_pb2.CheckConsistencyRequest(parent=parent or f"namespaces/{self.namespace}/templates/-"),
            metadata=self.md("admin"))

    async def wait_state(self, user: str, name: str, state: int, timeout: float = 90) -> instance_pb2.Instance:
        seen: list[str] = []

        async def reached() -> instance_pb2.Instance | None:
            instance = await self.get(user, name)
            seen[:] = [f"{State.Name(instance.state)}: {instance.state_message}"]
            return instance if instance.state == state else None
        try:
            return await wait_for(reached, timeout, what=f"{name} to be {State.Name(state)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it was {seen}") from None

    async def wait_consistent(self, timeout: float = 60) -> instance_pb2.CheckConsistencyResponse:
        last: list[instance_pb2.CheckConsistencyResponse] = []
        started = time.monotonic()

        async def clean() -> instance_pb2.CheckConsistencyResponse | None:
            last[:] = [await self.check()]
            if not last[0].consistent:  # shown with a failure, and with -s: what was still converging
                print(f"+{time.monotonic() - started:.1f}s:", [(v.template.rsplit("/", 1)[1], v.id, v.code)
                                                             for v in last[0].violations])
            return last[0] if last[0].consistent else None
        try:
            return await wait_for(clean, timeout, interval=1.0, what="a consistent allocator")
        except AssertionError:
            found = [(v.id, v.code, v.description) for v in last[0].violations]
            raise AssertionError(f"still inconsistent: {found}") from None


@pytest.fixture
async def client_for(issuer: Issuer, k8s_namespace: str) -> AsyncIterator[Callable[[grpc.aio.Channel], Client]]:
    yield lambda channel: Client(channel, issuer, k8s_namespace)


# -- `aigc-gateway serve instance` as a subprocess (tests/served.py) ------------------------------------------

@pytest.fixture
async def service_process(tmp_path: Path, database_url: str, issuer: Issuer, testbed: Testbed,
                          k8s_namespace: str) -> AsyncIterator[Callable[..., Awaitable[ServiceProcess]]]:
    """``await service_process()`` writes a config file and returns a (not yet started) ServiceProcess."""
    made: list[ServiceProcess] = []

    async def make(**instance: Any) -> ServiceProcess:
        port = free_port()
        config = {
            "domain": testbed.domain, "namespaces": [k8s_namespace],
            "database": {"url": database_url, "pool_size": 5},
            "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
            "service_identity": {"token": TEST_SERVICE_TOKEN},
            "servers": {"instance": {"listen": f"127.0.0.1:{port}"}, "metrics_listen": ""},
            "kubernetes": {"kubeconfig": str(testbed.kubeconfig)},
            "logging": {"level": "INFO", "json": True},
            "instance": {"reconcile_interval_seconds": 1, "release_wait_seconds": 30, **instance},
        }
        path = tmp_path / f"instance-{len(made)}.yaml"
        path.write_text(yaml.safe_dump(config))
        process = ServiceProcess(path, port, tmp_path / f"instance-{len(made)}.log")
        made.append(process)
        return process

    yield make
    for process in made:
        await process.stop()
