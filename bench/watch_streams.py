#!/usr/bin/env python3
"""Many concurrent `WatchInstance` streams on one `serve instance` process (issue 18 item 4); ratios against a
tenth of them in the same run.

    python bench/watch_streams.py [--streams 1000] [--baseline 100] [--idle 20]

For each size (the baseline first), in a database and a namespace of its own: one template (a GameServerSet on
the test bed) and that many PAUSED instances of as many users (rows written as the services write them), one
`aigc-gateway serve instance` subprocess, then one stream per instance (the service's own credential, so no
IdP is needed). Printed per size:

- start-up: the process's start until gRPC health says SERVING, with that many rows;
- open: the time until every stream had its first event (all opened at once), and p50/p99 of each stream's wait;
- memory: the server's RSS growth per open stream;
- idle: the server's CPU (utime + stime from /proc) while the streams stay open and nothing changes, in % of
  one core: what keeping them costs (each watcher also re-reads its row every `reads.REFRESH_SECONDS`);
- fan-out: every instance resumed in ONE transaction (a `pg_notify` per row, as the allocator's commit sends),
  and for each stream the time from that commit until its event arrived: p50/p99/max.

Needs the test bed and PostgreSQL (as bench/kill_storm.py); everything is deleted at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install_burst import kubeconfig, server_url, template  # noqa: E402
from procs import free_port, wait_serving  # noqa: E402

TOKEN = "watch-bench-token-" + uuid.uuid4().hex
METADATA = (("x-aigc-service-token", TOKEN), ("x-aigc-service-name", "watch-bench"))
TEMPLATE = "watch"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def proc_cpu(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def seed(url: str, namespace: str, n: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("""
            INSERT INTO instances (namespace, template, id, slot, owner, orphaned, created_at, updated_at,
                                   state_changed_at)
            SELECT $1, $2, i, 'PAUSED', 'watch-user-' || i, false, now(), now(), now()
            FROM generate_series(0, $3 - 1) i
        """, namespace, TEMPLATE, n)
    finally:
        await conn.close()


async def resume_all(url: str, namespace: str, n: int) -> float:
    """Every row LIVE in one transaction with a notification per row; returns the commit's time."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("UPDATE instances SET slot = 'LIVE', state_changed_at = now() "
                               "WHERE namespace = $1 AND template = $2", namespace, TEMPLATE)
            await conn.execute("SELECT pg_notify('aigc_instances', $1 || '/' || $2 || '/' || i) "
                               "FROM generate_series(0, $3 - 1) i", namespace, TEMPLATE, n)
        return time.perf_counter()
    finally:
        await conn.close()


async def one_size(n: int, server: str, kube_path: str, idle: float) -> dict[str, float]:
    import asyncpg

    from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
    from aigc_gateway.config import KubernetesConfig
    from aigc_gateway.db.migrate import upgrade
    from aigc_gateway.kube import GSS, NAMESPACE, Kube

    run = uuid.uuid4().hex[:6]
    namespace, database = f"watch-{run}", f"aigc_watch_{run}"
    admin = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = server.rsplit("/", 1)[0] + f"/{database}"
    kube = await Kube.connect(KubernetesConfig(kubeconfig=kube_path))
    folder = Path(tempfile.mkdtemp(prefix="watch-streams-"))
    proc: subprocess.Popen[bytes] | None = None
    out: dict[str, float] = {}
    try:
        await asyncio.to_thread(upgrade, url)
        await seed(url, namespace, n)
        await kube.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        await kube.create(GSS, namespace, template(TEMPLATE, namespace))
        port = free_port()
        config = folder / "instance.yaml"
        config.write_text(yaml.safe_dump({
            "namespaces": [namespace], "database": {"url": url, "pool_size": 10},
            "service_identity": {"token": TOKEN}, "kubernetes": {"kubeconfig": kube_path},
            "servers": {"instance": {"listen": f"127.0.0.1:{port}"}, "metrics_listen": ""},
            "logging": {"level": "WARNING", "json": True},
            "instance": {"reconcile_interval_seconds": 3600, "idle": {"enabled": False}},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_concurrent_streams", 0), ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)])
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", "instance", "-c", str(config)],
                                env=env, stdin=subprocess.DEVNULL, stdout=(folder / "instance.log").open("ab"),
                                stderr=subprocess.STDOUT)
        if not await wait_serving(channel, "InstanceService", alive=proc):
            raise RuntimeError(f"the instance service did not start: {(folder / 'instance.log').read_text()[-2000:]}")
        out["start_s"] = time.perf_counter() - started
        stub = instance_pb2_grpc.InstanceServiceStub(channel)
        await asyncio.sleep(1.0)  # let start-up work settle before the memory baseline
        rss0 = proc_rss(proc.pid)

        first: list[float] = []
        fanout: list[float] = []
        commit_at: list[float] = []
        all_open = asyncio.Event()
        fanned = asyncio.Event()

        async def stream(i: int) -> None:
            name = f"namespaces/{namespace}/templates/{TEMPLATE}/instances/{i}"
            begun = time.perf_counter()
            call = stub.WatchInstance(instance_pb2.WatchInstanceRequest(name=name), metadata=METADATA)
            events = 0
            async for _event in call:
                events += 1
                if events == 1:
                    first.append(time.perf_counter() - begun)
                    if len(first) == n:
                        all_open.set()
                elif commit_at:
                    fanout.append(time.perf_counter() - commit_at[0])
                    if len(fanout) == n:
                        fanned.set()
                    break
            call.cancel()

        opened = time.perf_counter()
        tasks = [asyncio.create_task(stream(i)) for i in range(n)]
        await asyncio.wait_for(all_open.wait(), 300)
        out["open_all_s"] = time.perf_counter() - opened
        out["first_p50_ms"], out["first_p99_ms"] = pct(first, 0.5) * 1e3, pct(first, 0.99) * 1e3
        await asyncio.sleep(1.0)
        out["rss_per_stream_kib"] = (proc_rss(proc.pid) - rss0) / n / 1024
        cpu0 = proc_cpu(proc.pid)
        await asyncio.sleep(idle)
        out["idle_cpu_pct"] = (proc_cpu(proc.pid) - cpu0) / idle * 100
        commit_at.append(await resume_all(url, namespace, n))
        await asyncio.wait_for(fanned.wait(), 300)
        out["fanout_p50_ms"], out["fanout_p99_ms"] = pct(fanout, 0.5) * 1e3, pct(fanout, 0.99) * 1e3
        out["fanout_max_ms"] = max(fanout) * 1e3
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()
        return out
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await kube.delete(NAMESPACE, None, namespace)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await kube.close()


ROWS = [
    ("start_s", "start-up to SERVING (s)"),
    ("open_all_s", "all streams' first event (s)"),
    ("first_p50_ms", "a stream's first event p50 (ms)"),
    ("first_p99_ms", "a stream's first event p99 (ms)"),
    ("rss_per_stream_kib", "server RSS per stream (KiB)"),
    ("idle_cpu_pct", "server CPU, streams idle (% core)"),
    ("fanout_p50_ms", "fan-out: commit to event p50 (ms)"),
    ("fanout_p99_ms", "fan-out: commit to event p99 (ms)"),
    ("fanout_max_ms", "fan-out: commit to event max (ms)"),
]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the open streams are left idle")
    args = parser.parse_args()
    server, kube_path = server_url(), kubeconfig()
    load = os.getloadavg()[0]
    base = await one_size(args.baseline, server, kube_path, args.idle)
    full = await one_size(args.streams, server, kube_path, args.idle)
    print(f"\nWatchInstance streams on one `serve instance` ({os.cpu_count()} CPUs, load average {load:.1f} at start)")
    print(f"  {'':38} {args.baseline:>10,} {args.streams:>10,}   ratio")
    for key, label in ROWS:
        ratio = full[key] / base[key] if base[key] else float("nan")
        print(f"  {label:38} {base[key]:>10.2f} {full[key]:>10.2f}   {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
