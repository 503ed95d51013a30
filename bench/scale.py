"""Ten times the users (issue 18 item 4), in PostgreSQL and in the auth owner map; ratios against a tenth.

    python bench/scale.py [--instances 10000] [--users 50000] [--templates 50] [--events 1000000] [--owners 100000]

Two runs in one process, the full size and a tenth of it (1,000 instances, 100,000 audit events, 10,000 map
entries), each in a fresh database made by the migrations:
- rows written with generate_series: instances spread over the templates (ids 0..n/templates), owners drawn from
  the users (one instance per user per template, as the unique index demands), 10 % PAUSED; audit events over
  30 days by the same users, six actions, two outcomes;
- p50/p99 over 200 runs of the statements the services issue: a user's own ListInstances (owner filter), an
  admin's ListInstances page 50 of 100-row pages (keyset), GetInstance (primary key), and ListAuditEvents through
  `AuditLog.list` itself with an actor filter, an action + time-window filter, a template filter, and a last page
  token; plus the `count(*)` each ListInstances page makes (total_size);
- the auth owner map with `--owners` instances: `decide` calls a second (one core) and bytes per instance
  (tracemalloc) while it is filled.
- each service's start-up on that database: `serve <service>` until gRPC health says SERVING (no cluster).
Prints one table with both runs and the ratio. 1,000 WatchInstance streams: bench/watch_streams.py. Not measured
here (said in the notes): ListTemplates (its cost is the Kubernetes list, not PostgreSQL), and the Kubernetes
side: the test bed's fake nodes do not carry 10,000 pods.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
NS = "scale"
RUNS = 200


async def seed(conn: Any, instances: int, users: int, templates: int, events: int) -> None:
    """Rows as the services write them, fast (one statement per table)."""
    per = max(1, instances // templates)
    await conn.execute("""
        INSERT INTO instances (namespace, template, id, slot, owner, orphaned, created_at, updated_at,
                               state_changed_at)
        SELECT $1, 'tpl-' || t, i, CASE WHEN (t * $2 + i) % 10 = 0 THEN 'PAUSED' ELSE 'LIVE' END,
               'user-' || ((t * $2 + i) * 7919 % $3), false, now(), now(), now()
        FROM generate_series(0, $4 - 1) t, generate_series(0, $2 - 1) i
    """, NS, per, users, templates)
    await conn.execute("""
        INSERT INTO audit_events (time, actor, actor_kind, action, resource, template, request_id, outcome,
                                  error_code, service, details)
        SELECT now() - (n % 2592000) * interval '1 second', 'user-' || (n * 31 % $2), 'user',
               (ARRAY['InstanceService.CreateInstance','InstanceService.DeleteInstance',
                      'InstanceService.PauseInstance','InstanceService.ResumeInstance',
                      'AuthService.Check','TemplateService.UpdateTemplate'])[1 + n % 6],
               'namespaces/scale/templates/tpl-' || (n % $3) || '/instances/' || (n % 200),
               'namespaces/scale/templates/tpl-' || (n % $3), '', CASE WHEN n % 7 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
               '', 'instance', '{}'::json
        FROM generate_series(1, $1) n
    """, events, users, templates)
    await conn.execute("ANALYZE")


def instance_queries(users: int, per: int) -> dict[str, tuple[str, list[Any]]]:
    """SQL of the instance service's reads (services/instance/reads.py `list`, store `get`), by name."""
    visible_user, visible_admin = ["LIVE", "PAUSED"], ["LIVE", "PAUSED", "RELEASING"]
    return {
        "ListInstances own": (
            "SELECT * FROM instances WHERE slot = ANY($1) AND owner = $2 ORDER BY namespace, template, id LIMIT 101",
            [visible_user, f"user-{(3 * 7919) % users}"]),
        "ListInstances own count": (
            "SELECT count(*) FROM instances WHERE slot = ANY($1) AND owner = $2", [visible_user,
                                                                                    f"user-{(3 * 7919) % users}"]),
        "ListInstances admin p50": (
            "SELECT * FROM instances WHERE slot = ANY($1) AND (namespace, template, id) > ($2, $3, $4) "
            "ORDER BY namespace, template, id LIMIT 101", [visible_admin, NS, "tpl-4", per // 2]),
        "ListInstances admin count": ("SELECT count(*) FROM instances WHERE slot = ANY($1)", [visible_admin]),
        "GetInstance": ("SELECT * FROM instances WHERE namespace = $1 AND template = $2 AND id = $3",
                        [NS, "tpl-7", per // 3]),
    }


async def timed(run: Callable[[], Awaitable[Any]], n: int = RUNS) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1000, samples[min(n - 1, int(0.99 * n))] * 1000


async def explain(conn: Any, sql: str, args: list[Any]) -> str:
    plan = await conn.fetch("EXPLAIN " + sql, *args)
    return "\n".join(r[0] for r in plan)


def owner_map(n: int) -> tuple[float, float]:
    """(decide calls a second, bytes per instance) of the auth owner map holding ``n`` instances."""
    from aigc_gateway.identity import Principal
    from aigc_gateway.services.auth.decision import decide
    from aigc_gateway.services.auth.ownermap import InstanceKey, OwnerMap
    from aigc_gateway.services.auth.routes import RoutePattern
    from aigc_gateway.services.auth.urls import parse_original_url

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    owners = OwnerMap()
    per = max(1, n // 50)
    for t in range(50):
        pattern = RoutePattern(f"tpl{t}-<id>.aigc.test")
        for i in range(per):
            key = InstanceKey(NS, f"tpl-{t}", i)
            owners.set_routes(key, pattern.routes(i))
            owners.set_owner(key, f"user-{t * per + i}")
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    targets = [parse_original_url(f"https://tpl{t}-{i}.aigc.test/x") for t in range(0, 50, 7) for i in range(0, per, 97)]
    alice = Principal("user-1")
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        for target in targets:
            decide(target, alice, owners)
        count += len(targets)
    return count / (time.perf_counter() - t0), used / (50 * per)


STARTED = {"instance": "InstanceService", "template": "TemplateService", "auth": "AuthService",
           "usersync": "UserSyncService"}


async def start_up(service: str, url: str, folder: Path) -> tuple[float, float]:
    """Seconds from `aigc-gateway serve <service>` until gRPC health says SERVING, on the seeded database: wall
    clock, and the process's own CPU time (what a shared machine cannot inflate).

    The auth service answers SERVING once its HTTP workers run, and they start once the owner map has read every
    ownership row (bounded at 10 s; see services/auth/app.py). No cluster is configured (the test bed is not needed
    here): what grows with the size is the database side."""
    import os
    import secrets
    import subprocess

    import grpc
    import yaml
    from procs import free_port, wait_serving

    port, http = free_port(), free_port()
    config = folder / f"{service}.yaml"
    config.write_text(yaml.safe_dump({
        "namespaces": [NS], "database": {"url": url, "pool_size": 5},
        "service_identity": {"token": secrets.token_urlsafe(32)},
        "kubernetes": {"kubeconfig": str(folder / "no-cluster")},
        "servers": {service: {"listen": f"127.0.0.1:{port}"}, "metrics_listen": ""},
        "auth": {"session_keys": [secrets.token_urlsafe(32)], "http_listen": f"127.0.0.1:{http}"},
        "logging": {"level": "WARNING", "json": True},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", service, "-c", str(config)], env=env,
                            stdin=subprocess.DEVNULL, stdout=(folder / f"{service}.log").open("ab"),
                            stderr=subprocess.STDOUT)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        if await wait_serving(channel, STARTED[service], alive=proc):
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return time.perf_counter() - started, cpu
        raise RuntimeError(f"serve {service} exited: {(folder / f'{service}.log').read_text()[-2000:]}")
    finally:
        await channel.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_run(server: str, instances: int, users: int, templates: int, events: int, owners: int) -> dict[str, Any]:
    import asyncpg

    from aigc_gateway.audit import AuditLog, AuditQuery
    from aigc_gateway.db import Database
    from aigc_gateway.db.migrate import upgrade

    name = f"aigc_scale_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + f"/{name}"
    out: dict[str, Any] = {}
    try:
        await asyncio.to_thread(upgrade, url)
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        t0 = time.perf_counter()
        await seed(conn, instances, users, templates, events)
        out["seed s"] = (time.perf_counter() - t0, time.perf_counter() - t0)
        for label, (sql, args) in instance_queries(users, max(1, instances // templates)).items():
            out[label] = await timed(lambda sql=sql, args=args: conn.fetch(sql, *args))
        await conn.close()
        db = Database(url, pool_size=2)
        log = AuditLog(db, "bench")
        week = time.time() - 7 * 86400
        from datetime import datetime, timedelta

        start = datetime.fromtimestamp(week, UTC)
        queries = {
            "ListAuditEvents actor": AuditQuery(actor="user-31"),
            "ListAuditEvents action+week": AuditQuery(action="InstanceService.PauseInstance", start=start,
                                                      end=start + timedelta(days=1)),
            "ListAuditEvents template": AuditQuery(template=f"namespaces/{NS}/templates/tpl-3"),
            "ListAuditEvents unfiltered": AuditQuery(),
        }
        for label, query in queries.items():
            out[label] = await timed(lambda q=query: log.list(q, 100, ""), n=50)
        _, token = await log.list(AuditQuery(outcome="FAILURE"), 1000, "")
        out["ListAuditEvents outcome page 2"] = await timed(lambda: log.list(AuditQuery(outcome="FAILURE"), 1000,
                                                                             token), n=20)
        await db.close()
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="scale-start-"))
        for service in STARTED:
            took, cpu = await start_up(service, url, folder)
            out[f"start-up {service} s"] = (took, took)
            out[f"start-up {service} cpu s"] = (cpu, cpu)
        rate, per_instance = owner_map(owners)
        out["auth decide /s"] = (rate, rate)
        out["auth map bytes/instance"] = (per_instance, per_instance)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--templates", type=int, default=50)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=100_000)
    args = parser.parse_args()
    from install_burst import server_url

    server = server_url()
    small = await one_run(server, args.instances // 10, args.users // 10, args.templates, args.events // 10,
                          args.owners // 10)
    big = await one_run(server, args.instances, args.users, args.templates, args.events, args.owners)
    print(f"\nscale: {args.instances} instances / {args.users} users / {args.templates} templates / "
          f"{args.events} audit events / {args.owners} owner-map instances, against a tenth of each")
    print(f"{'measure':34} {'tenth p50':>10} {'tenth p99':>10} {'full p50':>10} {'full p99':>10} {'ratio p50':>9}")
    for label in big:
        (sp50, sp99), (bp50, bp99) = small[label], big[label]
        unit = "" if label.startswith(("auth", "seed", "start-up")) else " ms"
        print(f"{label + unit:34} {sp50:10.2f} {sp99:10.2f} {bp50:10.2f} {bp99:10.2f} {bp50 / sp50 if sp50 else 0:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
