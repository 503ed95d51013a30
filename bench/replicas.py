"""Two processes of each service, one of them killed with SIGKILL at random moments under a mixed load (issue 18).

    python bench/replicas.py [--seconds 120] [--users 6] [--seed 18]

Six `aigc-gateway serve` processes: instance ×2, auth ×2, usersync ×2 (each usersync replica delivering the Logto
outbox under its advisory locks, to the Logto double). Every few seconds (4-10 s, seeded) one process, picked at
random, is killed with SIGKILL and started again 1-3 s later. Meanwhile users install, pause, resume and uninstall
(bench/chaos.py's load and client retry: same request_id, retried for 60 s: a DeleteInstance may wait
30 s for its disks) and the auth check is asked about
their instances by their owners and by a user who owns nothing.

Clients spread calls over both processes of a service with gRPC's client-side `round_robin` over a static
address list (`ipv4:127.0.0.1:p1,127.0.0.1:p2`): a killed process's subchannel goes TRANSIENT_FAILURE and calls
go to the other until it is back. In a cluster the same comes from a headless Service and `dns:///` (the Helm
chart's Services are ClusterIP today: one connection, one pod; see the notes). Services dial each other the same
way (`servers.<name>.target`). The REST bridge (Go) is not run here.

Prints the operations attempted / ok / retried / failed, the kills, the auth checks (a non-owner allowed must be
0), CheckConsistency and the Logto mirror at the end. Needs the test bed and PostgreSQL, like bench/chaos.py.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chaos  # noqa: E402
from chaos import META, TOKEN, ChaosBed, Step, _free_port  # noqa: E402

SERVICES = ("instance", "auth", "usersync")
LB = [("grpc.lb_policy_name", "round_robin"), ("grpc.initial_reconnect_backoff_ms", 200),
      ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


class Process:
    def __init__(self, service: str, index: int, config: Path, log: Path):
        self.service, self.index, self.config, self.log = service, index, config, log
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
        env["AIGC_GATEWAY__IDEMPOTENCY__REPLICA_LEASE_SECONDS"] = "4"
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", self.service, "-c",
                                      str(self.config)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ReplicaBed(ChaosBed):
    """bench/chaos.py's load against two processes of each service (no toxiproxy)."""

    kills = 0

    async def start(self) -> None:
        from aigc_gateway.api.v1 import auth_pb2_grpc, instance_pb2_grpc
        from aigc_gateway.db import Database

        for user in [*self.users, "chaos-probe", chaos.NOBODY]:
            self.logto.add_user(user)
        ports = {s: [_free_port(), _free_port()] for s in SERVICES}
        targets = {s: "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports[s]) for s in SERVICES}
        self.processes: list[Process] = []
        for service in SERVICES:
            for i, port in enumerate(ports[service]):
                servers: dict[str, Any] = {s: {"listen": f"127.0.0.1:{ports[s][0]}", "target": targets[s]}
                                           for s in SERVICES}
                servers[service] = {"listen": f"127.0.0.1:{port}", "target": targets[service]}
                config = self.folder / f"{service}-{i}.yaml"
                config.write_text(yaml.safe_dump({
                    "domain": self.domain, "namespaces": [self.namespace],
                    "database": {"url": self.database_url, "pool_size": 5},
                    "oidc": {"issuer": self.issuer.url, "audience": [self.issuer.audience]},
                    "service_identity": {"token": TOKEN},
                    "servers": servers | {"metrics_listen": ""},
                    "kubernetes": {"kubeconfig": self.kubeconfig},
                    "logging": {"level": "WARNING", "json": True},
                    "instance": {"reconcile_interval_seconds": 2, "release_wait_seconds": self.release_wait},
                    "auth": {"http_listen": "", "http_workers": 0, "owners_stale_after_seconds": 5},
                    "usersync": {"http_listen": f"127.0.0.1:{_free_port()}", "logto_endpoint": self.logto.url,
                                 "logto_app_id": self.logto.app_id, "logto_app_secret": self.logto.app_secret,
                                 "webhook_signing_key": self.logto.signing_key, "logto_timeout_seconds": 2.0,
                                 "logto_max_attempts": 3, "logto_retry_budget_seconds": 2.0,
                                 "delivery_poll_seconds": 0.2, "delivery_max_backoff_seconds": 1.0,
                                 "reconcile_interval_seconds": 0},
                }))
                self.processes.append(Process(service, i, config, self.folder / f"{service}-{i}.log"))
        for process in self.processes:
            process.start()
        self.channel = grpc.aio.insecure_channel(targets["instance"], options=LB)
        self.direct = grpc.aio.insecure_channel(targets["instance"], options=LB)
        self.auth_channel = grpc.aio.insecure_channel(targets["auth"], options=LB)
        self.instances = instance_pb2_grpc.InstanceServiceStub(self.channel)
        self.admin_instances = instance_pb2_grpc.InstanceServiceStub(self.direct)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.auth_channel)
        self.auth_service = None
        self.db = Database(self.database_url, pool_size=2)
        await self._serving(targets)

    async def _serving(self, targets: dict[str, str], timeout: float = 90) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        for process in self.processes:
            port = yaml.safe_load(process.config.read_text())["servers"][process.service]["listen"]
            async with grpc.aio.insecure_channel(port) as channel:
                while True:
                    try:
                        reply = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if process.proc is not None and process.proc.poll() is not None:
                        raise RuntimeError(f"{process.name} exited: {process.log.read_text()[-2000:]}")
                    assert time.monotonic() < deadline, f"{process.name} does not serve"
                    await asyncio.sleep(0.3)

    async def close(self) -> None:
        for channel in (self.channel, self.direct, self.auth_channel):
            await channel.close()
        for process in self.processes:
            process.stop()
        await self.db.close()

    async def killer(self, until: float) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(4, 10))
            if time.monotonic() >= until:
                return
            victim = self.rng.choice(self.processes)
            victim.kill()
            self.kills += 1
            await asyncio.sleep(self.rng.uniform(1, 3))
            victim.start()

    async def storm(self, seconds: float) -> Step:
        step = Step("replicas", "kill-9", seconds)
        self.step = step
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(self.user_loop(u, until, 60)) for u in self.users]
        tasks += [asyncio.create_task(self.auth_loop(until)), asyncio.create_task(self.killer(until))]
        await asyncio.gather(*tasks)
        for process in self.processes:
            if process.proc is None or process.proc.poll() is not None:
                process.start()
        cleared = time.monotonic()
        while not await self.healthy():
            if time.monotonic() - cleared > 120:
                break
            await asyncio.sleep(0.3)
        else:
            step.recovery = time.monotonic() - cleared
        step.consistent, step.violations = await self.consistency()
        deadline = time.monotonic() + 30
        while (lost := await self.mirror_lost()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        step.mirror_lost = lost
        return step


async def run(bed: ReplicaBed, seconds: float) -> Step:
    await bed.start()
    try:
        await bed.prepare()
        return await bed.storm(seconds)
    finally:
        await bed.close()


def print_report(step: Step, kills: int, seed: int) -> None:
    chaos.print_table([step], seed)
    print(f"kills: {kills} (SIGKILL of one of 6 processes, restarted 1-3 s later)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    from chaos_env import environment

    async with environment() as env:
        bed = ReplicaBed(**env, users=args.users, seed=args.seed)
        step = await run(bed, args.seconds)
        print_report(step, bed.kills, args.seed)
        return 0 if step.good else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))


__all__ = ["META", "ReplicaBed", "run"]
