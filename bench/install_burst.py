"""Install burst: N concurrent installs over T templates through the instance service, then the original
AIGC-Gateway's allocation (read the GameServerSet, id = len(reserveGameServerIds) + replicas, write replicas
back without a resourceVersion) on the same cluster in the same run, side by side.

    python bench/install_burst.py [--installs 200] [--templates 4]

Needs the test bed (`testbed/testbed status`; KUBECONFIG from `testbed/testbed env` is found by itself) and
PostgreSQL (AIGC_TEST_DATABASE_URL, else scripts/postgres.sh starts one). Everything it makes lives in a
namespace and a database of its own, both deleted at the end (--keep keeps them).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deploy" / "samples" / "stable-diffusion-cpu.yaml"
TOKEN = "bench-service-token-" + uuid.uuid4().hex  # this run's own service credential, never reused


@dataclass
class Result:
    label: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ids: dict[str, list[int]] = field(default_factory=dict)  # template -> ids handed out
    wall: float = 0.0
    replicas: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def duplicates(self) -> int:
        return sum(n - 1 for ids in self.ids.values() for n in Counter(ids).values() if n > 1)

    def lost(self) -> int:
        """Installs answered as done whose instance the GameServerSet does not run (lost updates)."""
        return sum(max(0, len(self.ids.get(t, [])) - r) for t, r in self.replicas.items())

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def kubeconfig() -> str:
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    out = subprocess.run([str(REPO / "testbed" / "testbed"), "env"], capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env["KUBECONFIG"]


def server_url() -> str:
    if os.environ.get("AIGC_TEST_DATABASE_URL"):
        return os.environ["AIGC_TEST_DATABASE_URL"]
    out = subprocess.run([str(REPO / "scripts" / "postgres.sh"), "start"], check=True, capture_output=True,
                         text=True).stdout
    return out.strip().split("DATABASE_URL=", 1)[1]


def template(name: str, namespace: str) -> dict:
    obj = yaml.safe_load(SAMPLE.read_text().replace("${DOMAIN}", "bench.test"))
    obj["metadata"].update(name=name, namespace=namespace)
    for conf in obj["spec"]["network"]["networkConf"]:
        if conf["name"] == "Host":
            conf["value"] = f"{name}-<id>.bench.test"
    return obj


async def gateway_burst(kube, settings, namespace: str, names: list[str], installs: int) -> Result:  # type: ignore[no-untyped-def]
    from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
    from aigc_gateway.runtime import Runtime
    from aigc_gateway.server import GatewayServer, load_service

    runtime = Runtime.create(settings)
    server = GatewayServer("instance", runtime, load_service("instance", runtime))
    port = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = instance_pb2_grpc.InstanceServiceStub(channel)
    metadata = (("x-aigc-service-token", TOKEN), ("x-aigc-service-name", "bench"))
    result = Result("gateway", ids={n: [] for n in names})

    async def one(i: int) -> None:
        tpl = names[i % len(names)]
        started = time.perf_counter()
        try:
            reply = await stub.CreateInstance(instance_pb2.CreateInstanceRequest(
                parent=f"namespaces/{namespace}/templates/{tpl}", owner=f"user-{i}"), metadata=metadata, timeout=300)
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
            return
        result.latencies.append(time.perf_counter() - started)
        result.ids[tpl].append(reply.id)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(installs)))
    result.wall = time.perf_counter() - started
    await channel.close()
    await server.stop(0)
    await runtime.close()
    return result


async def original_burst(kube, namespace: str, names: list[str], installs: int) -> Result:  # type: ignore[no-untyped-def]
    """The original algorithm: an unguarded read-modify-write of replicas."""
    from aigc_gateway import okg
    from aigc_gateway.errors import GatewayError
    from aigc_gateway.kube import GSS

    result = Result("original", ids={n: [] for n in names})

    async def one(i: int) -> None:
        tpl = names[i % len(names)]
        started = time.perf_counter()
        try:
            gss = await kube.get(GSS, namespace, tpl)
            spec = gss["spec"]
            new_id = len(okg.parse_reserve(spec.get("reserveGameServerIds"))) + int(spec.get("replicas") or 0)
            await kube.patch(GSS, namespace, tpl, {"spec": {"replicas": int(spec.get("replicas") or 0) + 1}})
        except GatewayError as exc:
            result.errors[exc.code.name] += 1
            return
        result.latencies.append(time.perf_counter() - started)
        result.ids[tpl].append(new_id)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(installs)))
    result.wall = time.perf_counter() - started
    return result


async def replicas(kube, namespace: str, names: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    from aigc_gateway.kube import GSS

    return {n: int((await kube.get(GSS, namespace, n))["spec"].get("replicas") or 0) for n in names}


def report(a: Result, b: Result, installs: int, templates: int) -> None:
    rows = [
        ("installs requested", installs, installs),
        ("answered OK", a.ok, b.ok),
        ("errors", sum(a.errors.values()), sum(b.errors.values())),
        ("duplicate ids", a.duplicates(), b.duplicates()),
        ("lost installs (OK, not in replicas)", a.lost(), b.lost()),
        ("installs/s", f"{a.ok / a.wall:.1f}" if a.wall else "-", f"{b.ok / b.wall:.1f}" if b.wall else "-"),
        ("p50 latency (ms)", f"{a.pct(0.50):.0f}", f"{b.pct(0.50):.0f}"),
        ("p99 latency (ms)", f"{a.pct(0.99):.0f}", f"{b.pct(0.99):.0f}"),
        ("wall time (s)", f"{a.wall:.1f}", f"{b.wall:.1f}"),
    ]
    print(f"\ninstall burst: {installs} concurrent installs over {templates} templates\n")
    print(f"{'':38}{'gateway':>14}{'original':>14}")
    for label, x, y in rows:
        print(f"{label:38}{x!s:>14}{y!s:>14}")
    if a.errors or b.errors:
        print(f"\nerror codes: gateway {dict(a.errors)}, original {dict(b.errors)}")
    if a.wall and b.wall and a.ok and b.ok:
        print(f"\nthroughput ratio gateway/original: {(a.ok / a.wall) / (b.ok / b.wall):.2f}x")
        for r in (a, b):
            distinct = sum(len(set(ids)) for ids in r.ids.values())
            print(f"{r.label}: {r.ok} users answered, {distinct} distinct instances handed out, "
                  f"replicas {sum(r.replicas.values())}")
    if a.latencies and len(a.latencies) > 1:
        print(f"gateway latency mean {statistics.mean(a.latencies) * 1000:.0f} ms, "
              f"max {max(a.latencies) * 1000:.0f} ms")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installs", type=int, default=200)
    parser.add_argument("--templates", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the namespace and database")
    args = parser.parse_args()

    from aigc_gateway.config import Settings
    from aigc_gateway.db.migrate import upgrade
    from aigc_gateway.kube import GSS, NAMESPACE, Kube

    run = uuid.uuid4().hex[:6]
    namespace = f"bench-{run}"
    cfg = kubeconfig()
    server = server_url()
    database = f"aigc_bench_{run}"
    admin = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = server.rsplit("/", 1)[0] + f"/{database}"
    await asyncio.to_thread(upgrade, url)
    settings = Settings.model_validate({
        "namespaces": [namespace], "database": {"url": url, "pool_size": 10},
        "service_identity": {"token": TOKEN}, "kubernetes": {"kubeconfig": cfg},
        "servers": {"instance": {"listen": "127.0.0.1:0"}, "metrics_listen": ""},
        "logging": {"level": "WARNING"}, "instance": {"settle_timeout_seconds": 120, "conflict_retries": 30},
    })
    from aigc_gateway.config import KubernetesConfig

    kube = await Kube.connect(KubernetesConfig(kubeconfig=cfg))
    ours = [f"burst-{i}" for i in range(args.templates)]
    theirs = [f"orig-{i}" for i in range(args.templates)]
    try:
        await kube.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for name in ours + theirs:
            await kube.create(GSS, namespace, template(name, namespace))
        await asyncio.sleep(2)  # let the controller create the workloads before the burst
        gateway = await gateway_burst(kube, settings, namespace, ours, args.installs)
        gateway.replicas = await replicas(kube, namespace, ours)
        original = await original_burst(kube, namespace, theirs, args.installs)
        await asyncio.sleep(2)  # any write still in flight lands
        original.replicas = await replicas(kube, namespace, theirs)
        report(gateway, original, args.installs, args.templates)
    finally:
        if not args.keep:
            await kube.delete(NAMESPACE, None, namespace)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
