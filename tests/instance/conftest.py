"""Fixtures for instance-service tests on the test bed: a template in the test's namespace and an instance
service (in this process, or as `aigc-gateway serve instance` subprocesses) pointed at it."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.config import Settings

from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer, make_settings
from ..plugins.kube import Game, api_client, load_sample, wait_for
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed

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


# -- `aigc-gateway serve instance` as a subprocess ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, fault: str = "") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
        if fault:
            env["AIGC_GATEWAY_FAULT"] = fault
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", "instance", "-c",
                                      str(self.config)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the service exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service="aigc.gateway.v1.InstanceService"),
                                           timeout=2)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                return False
        await wait_for(serving, timeout, interval=0.3, what="the instance service to serve")
        return channel

    async def exited(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the service did not exit")
            await asyncio.sleep(0.1)
        return self.proc.returncode if self.proc is not None else 0

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.exited(20)
            except AssertionError:
                self.proc.kill()
        self.proc = None


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
