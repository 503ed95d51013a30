#!/usr/bin/env python3
"""Where ListTemplates' time goes, and the watch cache against the live LIST it replaced, in one process.

    eval "$(testbed/testbed env | sed 's/^/export /')"; python bench/list_templates.py
    python bench/list_templates.py --templates 20 --rounds 30 --database-url postgresql+asyncpg://...

Publishes --templates copies of the samples in a fresh namespace of the test bed ($KUBECONFIG), then
times, --rounds times each: the steps of one call (the live LIST of GameServerSets, the instance-count
query, describing every template) and the whole catalog list as a user and as an admin, once with the
live LIST (the code before the cache: `before`) and once from the watch cache (`after`). Prints
medians and maxima in ms. The namespace is deleted at the end. Timings only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from aigc_gateway import kube  # noqa: E402
from aigc_gateway.config import Settings  # noqa: E402
from aigc_gateway.db import Database, migrate  # noqa: E402
from services.template.catalog import Catalog  # noqa: E402
from services.template.cluster import TemplateCluster, _with_kind  # noqa: E402
from services.template.instances import InstanceTable  # noqa: E402
from services.template.messages import Counts, describe  # noqa: E402
from services.template.policy import Policy  # noqa: E402
from tests.template.samples import SAMPLES, sample  # noqa: E402

LABELS = {"aigc.gateway.io/template": "true"}


class LiveCluster(TemplateCluster):
    """The catalog's read before the cache: one live LIST per call."""

    async def list(self, namespace: str) -> list[dict[str, Any]]:
        listed = await (await self.handle.get()).list(kube.GSS, namespace, label_selector=self.policy.label_selector)
        return [_with_kind(o) for o in listed.get("items") or [] if self.policy.is_template(o)]


async def timed(rounds: int, step: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        await step()
        out.append((time.perf_counter() - start) * 1000)
    return out


def line(label: str, ms: list[float]) -> str:
    return f"  {label:<34} median {statistics.median(ms):7.1f} ms   max {max(ms):7.1f} ms"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig:
        print("set KUBECONFIG (testbed/testbed env)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-list-templates-")
    url = args.database_url or f"sqlite+aiosqlite:///{tmp}/db.sqlite"
    await asyncio.to_thread(migrate.upgrade, url)
    namespace = f"bench-templates-{uuid.uuid4().hex[:6]}"
    settings = Settings.model_validate({"domain": "aigc.test", "namespaces": [namespace], "gss_labels": LABELS,
                                        "database": {"url": url}, "kubernetes": {"kubeconfig": kubeconfig}})
    policy = Policy.from_settings(settings)
    handle = kube.KubeHandle(settings.kubernetes)
    client = await handle.get()
    db = Database(url)
    await client.create(kube.NAMESPACE, None, {"metadata": {"name": namespace}})
    try:
        for i in range(args.templates):
            obj = sample(SAMPLES[i % len(SAMPLES)], namespace=namespace, rename=f"bench-{i}")
            obj["metadata"].setdefault("labels", {}).update(LABELS)
            await client.create(kube.GSS, namespace, obj)
        table = InstanceTable(db)
        live, cached = LiveCluster(handle, policy), TemplateCluster(handle, policy)
        before, after = Catalog(live, table, policy), Catalog(cached, table, policy)
        parent = f"namespaces/{namespace}"
        first = time.perf_counter()
        objects = await cached.list(namespace)  # starts the watch: one LIST, as the live path makes per call
        print(f"{len(objects)} templates in {namespace}; {args.rounds} rounds; first read from the cache (its "
              f"initial LIST): {(time.perf_counter() - first) * 1000:.1f} ms")
        print("steps of one call:")
        print(line("live LIST of GameServerSets", await timed(args.rounds, lambda: live.list(namespace))))
        print(line("instance counts (one query)", await timed(args.rounds, lambda: table.counts({namespace}))))
        print(line(f"describe {len(objects)} templates", await timed(args.rounds, lambda: asyncio.sleep(0, [
            describe(o, policy, Counts(), with_manifest=False) for o in objects]))))
        print(line("read from the watch cache", await timed(args.rounds, lambda: cached.list(namespace))))
        for admin in (False, True):
            who = "admin" if admin else "user"
            print(f"ListTemplates as {who} (catalog):")
            print(line("before (live LIST)", await timed(
                args.rounds, lambda admin=admin: before.list(parent, namespace, 0, "", admin=admin))))
            print(line("after (watch cache)", await timed(
                args.rounds, lambda admin=admin: after.list(parent, namespace, 0, "", admin=admin))))
        print(f"LISTs the cache made: {cached.cache.lists}")
        await cached.cache.close()
    finally:
        await client.delete(kube.NAMESPACE, None, namespace)
        await handle.close()
        await db.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
