"""`aigc-gateway serve <service>` as a subprocess, and what the crash tests do with it (issue 20): start it with
a short replica lease, optionally held alive at a named fault point (AIGC_GATEWAY_HOLD and a file barrier),
wait until it holds there, kill it, and retry the call as a client would."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aigc_gateway import faults

from .plugins.auth_stack import free_port
from .plugins.kube import wait_for

LEASE = 4.0  # idempotency.replica_lease_seconds of the processes a crash test starts
HEALTH = {"instance": "aigc.gateway.v1.InstanceService", "template": "aigc.gateway.v1.TemplateService",
          "usersync": "aigc.gateway.v1.UserSyncService"}


async def wait_serving(port: int, deadline: float, running: Callable[[], None] | None = None,
                       what: str = "server") -> None:
    """Until the whole server on ``port`` says SERVING on gRPC health (``time.monotonic()`` ``deadline``);
    ``running`` raises once the process behind it is gone."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if running is not None:
                running()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} on {port} never became SERVING")
            await asyncio.sleep(0.2)


@dataclass
class ServiceProcess:
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    service: str = "instance"

    def start(self, fault: str = "", env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
        if fault:
            clean[faults.ENV] = fault
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", self.service, "-c",
                                      str(self.config)], env=clean | (env or {}), stdin=subprocess.DEVNULL,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the service exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=HEALTH[self.service]), timeout=2)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                return False
        await wait_for(serving, timeout, interval=0.3, what=f"the {self.service} service to serve")
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


def write_config(folder: Path, service: str, index: int, config: dict[str, Any]) -> ServiceProcess:
    """A config file for one process of ``service`` listening on a free port (``config``: everything else)."""
    port = free_port()
    path = folder / f"{service}-{index}.yaml"
    path.write_text(yaml.safe_dump(config | {"servers": {service: {"listen": f"127.0.0.1:{port}"},
                                                          "metrics_listen": ""}}))
    return ServiceProcess(path, port, folder / f"{service}-{index}.log", service=service)


def start(process: ServiceProcess, hold: str = "", hold_dir: Path | None = None) -> None:
    """ServiceProcess.start with a short replica lease, optionally holding at a point."""
    env = {"AIGC_GATEWAY__IDEMPOTENCY__REPLICA_LEASE_SECONDS": str(LEASE)}
    if hold:  # the test imports the service's fault module, which registers its points
        assert hold in faults.POINTS and hold_dir is not None
        env.update({faults.HOLD_ENV: hold, faults.HOLD_DIR_ENV: str(hold_dir)})
    process.start(env=env)


async def launch(process: ServiceProcess, hold: str = "", hold_dir: Path | None = None) -> grpc.aio.Channel:
    """Start and wait until serving; a port another process took since it was picked is picked again."""
    for _ in range(3):
        start(process, hold, hold_dir)
        try:
            return await process.ready()
        except AssertionError as exc:
            if "Failed to bind" not in str(exc):
                raise
        config = yaml.safe_load(process.config.read_text())
        process.port = free_port()
        config["servers"][process.service]["listen"] = f"127.0.0.1:{process.port}"
        process.config.write_text(yaml.safe_dump(config))
    raise AssertionError("no free port")


async def retry_until_answered(call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """The client's retry loop: ABORTED and UNAVAILABLE are retried after a short pause; returns the answer
    and how many calls were answered ABORTED REQUEST_IN_PROGRESS on the way."""
    in_progress = 0
    for _ in range(200):
        try:
            return await call(), in_progress
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise
            in_progress += exc.code() == grpc.StatusCode.ABORTED
            await asyncio.sleep(0.25)
    raise AssertionError("never answered")


async def wait_file(path: Path, process: ServiceProcess) -> None:
    async def there() -> bool:
        if process.proc is not None and process.proc.poll() is not None:
            raise AssertionError(f"the held process exited: {process.log.read_text()[-3000:]}")
        return path.exists()
    await wait_for(there, 120, interval=0.05, what=f"{path.name}")


async def held_then_killed(held: ServiceProcess, first: Awaitable[Any], point: str, hold_dir: Path,
                           retry: Callable[[], Awaitable[Any]]) -> tuple[Any, float, int]:
    """The held call reached ``point``: a retry meanwhile is told it is in progress (its holder is alive); then
    the holder is killed with SIGKILL and the retry answered. Returns (answer, seconds from the kill, in-progress
    answers on the way)."""
    await wait_file(hold_dir / f"{point}.reached", held)
    try:
        await retry()
        raise AssertionError("a retry ran while the first attempt's replica was alive")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.ABORTED and "in progress" in (exc.details() or ""), exc
    assert held.proc is not None
    held.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    try:
        await first
        raise AssertionError("the killed process answered")
    except grpc.aio.AioRpcError:
        pass
    answer, waited = await retry_until_answered(retry)
    return answer, time.monotonic() - killed, waited
