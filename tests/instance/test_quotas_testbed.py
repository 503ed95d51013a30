"""Quotas on the test bed and PostgreSQL (issue 16): each limit refuses exactly at its boundary with the right
google.rpc.QuotaFailure and nothing created; pause frees running and GPU usage at once; role and user overrides;
concurrent resumes of one user on many templates pass exactly as many as fit."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.services.instance.app import InstanceService
from aigc_gateway.services.instance.quotas import Usage

from ..plugins.gateway import make_settings
from .conftest import create_template, instance_overrides

pytestmark = pytest.mark.testbed

GPU = "stable-diffusion-gpu"  # nvidia.com/gpu: 1
SHARE = "stable-diffusion-gpushare"  # aliyun.com/gpu-mem: 3 (GiB)


def quota_failure(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
    status: status_pb2.Status = rpc_status.from_call(exc)
    for detail in status.details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            return [(v.subject, v.description) for v in failure.violations]
    raise AssertionError(f"no QuotaFailure in {status}")


async def refused(call: Any) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return quota_failure(info.value)


async def owned(db: Database, user: str) -> dict[str, str]:
    async with db.session() as session:
        rows = (await session.execute(select(InstanceRow).where(InstanceRow.owner == user))).scalars()
        return {r.template: r.slot for r in rows}


def settings_with(database_url, issuer, testbed, namespace, quotas: dict) -> Any:
    return make_settings(database_url, issuer, **instance_overrides(testbed, namespace, quotas=quotas))


async def test_each_limit_refuses_at_its_boundary(testbed, game, start_gateway, client_for, database_url, issuer,
                                                  database: Database, k8s_namespace: str) -> None:
    ns = k8s_namespace
    for name in ("g1", "g2", "g3"):
        await create_template(game, testbed, name, GPU)
    for name in ("s1", "s2"):
        await create_template(game, testbed, name, SHARE)
    settings = settings_with(database_url, issuer, testbed, ns, {
        "default": {"installed": 2, "running": 2, "gpus": 1, "gpu_memory_gib": 5},
        "roles": {"admin": {"gpus": 2}},
        "users": {"bob": {"installed": 3, "running": 1}},
        "template_running": {f"{ns}/g3": 1},
    })
    gw = await start_gateway("instance", settings=settings)
    c = client_for(gw.channel("instance"))
    service = gw.service("instance", InstanceService)

    a1 = await c.install("alice", "g1")  # gpus 1 of 1
    assert await refused(c.install("alice", "g2")) == [("user:alice", "gpus: usage 1, maximum 1")]
    assert "g2" not in await owned(database, "alice")
    assert (await game.get_gss("g2"))["spec"]["replicas"] == 0  # nothing created

    await c.pause("alice", a1.name)  # frees the GPU at once: the next install passes
    assert await service.lifecycle.quotas.usage("alice") == Usage(installed=1)
    a2 = await c.install("alice", "g2")
    assert await refused(c.resume("alice", a1.name)) == [("user:alice", "gpus: usage 1, maximum 1")]
    assert (await owned(database, "alice"))["g1"] == "PAUSED"
    assert await refused(c.install("alice", "s1")) == [("user:alice", "installed: usage 2, maximum 2")]
    await c.pause("alice", a2.name)
    await c.resume("alice", a1.name)  # gpus 1 of 1 again

    # gpu-mem: 3 GiB of 5, then 6 > 5 (dave's default).
    await c.install("dave", "s1")
    assert await refused(c.install("dave", "s2")) == [("user:dave", "gpu_memory_gib: usage 3, maximum 5")]

    # User override: bob may install 3 but run 1 (running refused before gpus is reached).
    await c.install("bob", "s1")
    assert await refused(c.install("bob", "g3")) == [("user:bob", "running: usage 1, maximum 1")]

    # Template limit: g3 runs 1 at most, whoever asks.
    e1 = await c.install("erin", "g3")
    assert await refused(c.install("frank", "g3")) == [(f"template:{ns}/g3", "template_running: usage 1, maximum 1")]
    await c.pause("erin", e1.name)
    f1 = await c.install("frank", "g3")
    assert await refused(c.resume("erin", e1.name)) == [(f"template:{ns}/g3", "template_running: usage 1, maximum 1")]
    assert f1.owner == "frank"

    # Role override: the admin role's 2 GPUs.
    await c.install("admin", "g1")
    await c.install("admin", "g2")
    assert await refused(c.install("admin", "s2")) == [("user:admin", "installed: usage 2, maximum 2"),
                                                       ("user:admin", "running: usage 2, maximum 2")]
    assert await service.lifecycle.quotas.usage("admin") == Usage(installed=2, running=2, gpus=2)

    # GetQuotaUsage equals the instances table (and each template's request) against the caller's limits.
    for user in ("alice", "bob", "dave", "erin", "frank", "admin"):
        slots = await owned(database, user)
        got = await c.stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(user="me"), metadata=c.md(user))
        usage = {u.limit: u.usage for u in got.limits}
        assert got.user == user and usage == {
            "installed": sum(s in ("LIVE", "PAUSED") for s in slots.values()),
            "running": sum(s == "LIVE" for s in slots.values()),
            "gpus": sum(s == "LIVE" for t, s in slots.items() if t.startswith("g")),
            "gpu_memory_gib": 3 * sum(s == "LIVE" for t, s in slots.items() if t.startswith("s"))}
    mine = await c.stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(), metadata=c.md("admin"))
    assert [(u.limit, u.usage, u.maximum, u.unlimited) for u in mine.limits] == [
        ("installed", 2, 2, False), ("running", 2, 2, False), ("gpus", 2, 2, False), ("gpu_memory_gib", 0, 5, False)]
    bobs = await c.stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(user="bob"), metadata=c.md("admin"))
    assert [(u.limit, u.maximum) for u in bobs.limits][:2] == [("installed", 3), ("running", 1)]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await c.stub.GetQuotaUsage(instance_pb2.GetQuotaUsageRequest(user="bob"), metadata=c.md("alice"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await c.wait_consistent()).notices == []

    # An admin lowers the limits (a gateway with the new configuration): nothing is paused or deleted; the
    # users above them are reported as information, and their next resume is refused.
    before = {u: await owned(database, u) for u in ("alice", "bob", "admin")}
    lowered = await start_gateway("instance", settings=settings_with(database_url, issuer, testbed, ns, {
        "default": {"gpus": 0}, "template_running": {f"{ns}/g1": 0}}))
    low = client_for(lowered.channel("instance"))
    report = await low.wait_consistent()
    assert sorted((n.template, n.code, n.description) for n in report.notices) == [
        (f"template:{ns}/g1", "OVER_QUOTA", "instances running 2 of 0"),
        ("user:admin", "OVER_QUOTA", "nvidia.com/gpu units running 2 of 0"),
        ("user:alice", "OVER_QUOTA", "nvidia.com/gpu units running 1 of 0"),
        ("user:frank", "OVER_QUOTA", "nvidia.com/gpu units running 1 of 0")]
    assert {u: await owned(database, u) for u in ("alice", "bob", "admin")} == before
    assert await refused(low.resume("alice", a2.name)) == [("user:alice", "gpus: usage 1, maximum 0")]


async def test_concurrent_resumes_pass_exactly_as_many_as_fit(testbed, game, start_gateway, client_for, database_url,
                                                              issuer, instance_settings, database: Database,
                                                              k8s_namespace: str) -> None:
    count = 20
    names = [f"q{i}" for i in range(count + 1)]
    await asyncio.gather(*(create_template(game, testbed, n, GPU) for n in names))
    setup = await start_gateway("instance", settings=instance_settings)  # no quotas while setting up
    s = client_for(setup.channel("instance"))
    gate = asyncio.Semaphore(4)  # the setup's own steps on many templates at once would exhaust the test's pool

    async def install_paused(name: str) -> Any:
        async with gate:
            made = await s.install("alice", name)
            if name != "q0":  # q0 keeps running: 1 GPU of 3 in use
                await s.pause("alice", made.name)
            return made
    made = await asyncio.gather(*(install_paused(n) for n in names))

    gw = await start_gateway("instance", settings=settings_with(database_url, issuer, testbed, k8s_namespace,
                                                                {"users": {"alice": {"gpus": 3}}}))
    c = client_for(gw.channel("instance"))
    started = time.perf_counter()
    results = await asyncio.gather(*(c.resume("alice", m.name) for m in made[1:]), return_exceptions=True)
    print(f"{count} concurrent resumes in {time.perf_counter() - started:.2f}s")
    passed = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(passed) == 2 and len(failed) == count - 2
    assert all(quota_failure(f) == [("user:alice", "gpus: usage 3, maximum 3")] for f in failed)
    slots = await owned(database, "alice")
    assert sum(v == "LIVE" for v in slots.values()) == 3 and sum(v == "PAUSED" for v in slots.values()) == count - 2
    live = {t for t, v in slots.items() if v == "LIVE"}
    assert live == {"q0"} | {r.template.rsplit("/", 1)[1] for r in passed}
