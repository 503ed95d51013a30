"""Client-side load balancing reaches every replica (issue 18): two `aigc-gateway serve template` processes,
one REST bridge started with the comma-separated backend list `--template=127.0.0.1:a,127.0.0.1:b`, and a
service-to-service channel (Runtime.channel) whose `servers.template.target` is `ipv4:127.0.0.1:a,127.0.0.1:b`.

ListTemplates through each reaches BOTH processes (counted from each process's own /metrics, so a call is
counted where it was answered). Then one process is killed with SIGKILL and every following call is answered
by the other: the documented client retry (a call answered UNAVAILABLE, 503 through the bridge, is sent
once more) may be used once per call, and no call fails. How many calls each process answered and how many
were retried is printed."""
from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from aigc_gateway.api.v1 import template_pb2, template_pb2_grpc
from aigc_gateway.config import load as load_settings
from aigc_gateway.runtime import Runtime

from ..delivery.conftest import load_bridge_module, require_go
from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed
from ..served import ServiceProcess, free_port, launch, write_config
from ..template.conftest import TEMPLATE_LABELS

pytestmark = pytest.mark.testbed

CALLS = 20
HANDLED = re.compile(r'^grpc_server_handled_total\{grpc_code="OK",grpc_method="ListTemplates",'
                     r'grpc_service="aigc\.gateway\.v1\.TemplateService"\} ([0-9.e+]+)$', re.M)


class Replica:
    def __init__(self, process: ServiceProcess, metrics: int):
        self.process, self.metrics = process, metrics

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    async def answered(self) -> int:
        """ListTemplates calls this process answered OK, from its own /metrics."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10)).text
        found = HANDLED.search(text)
        return int(float(found.group(1))) if found else 0


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str, issuer: Issuer, testbed: Testbed,
                   k8s_namespace: str) -> AsyncIterator[tuple[list[Replica], dict[str, Any]]]:
    common = {"domain": testbed.domain, "namespaces": [k8s_namespace], "gss_labels": TEMPLATE_LABELS,
              "database": {"url": database_url, "pool_size": 2},
              "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
              "service_identity": {"token": TEST_SERVICE_TOKEN},
              "kubernetes": {"kubeconfig": str(testbed.kubeconfig)},
              "logging": {"level": "WARNING", "json": True}}
    made = []
    for i in range(2):
        process = write_config(tmp_path, "template", i, common)
        config = yaml.safe_load(process.config.read_text())
        metrics = free_port()
        config["servers"]["metrics_listen"] = f"127.0.0.1:{metrics}"
        process.config.write_text(yaml.safe_dump(config))
        made.append(Replica(process, metrics))
    try:
        for replica in made:
            await (await launch(replica.process)).close()
        yield made, common
    finally:
        for replica in made:
            await replica.process.stop()


@pytest.fixture
async def bridge(replicas: tuple[list[Replica], dict[str, Any]]) -> AsyncIterator[str]:
    """The bridge binary as the suite builds it, every template call to the two-address list."""
    require_go()
    binary = load_bridge_module("gotools").bridge()
    backends = ",".join(r.address for r in replicas[0])
    proc = await asyncio.create_subprocess_exec(
        str(binary), "--listen", "127.0.0.1:0", "--log-format", "text", "--rate-limit", "0",
        f"--template={backends}", *(f"--{s}=127.0.0.1:1" for s in ("instance", "auth", "usersync")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on "), f"bridge did not start: {line!r}"
        yield "http://" + line.split()[-1]
    finally:
        proc.terminate()
        await proc.wait()


async def with_one_retry(call: Callable[[], Awaitable[bool]]) -> int:
    """The documented client retry, once: returns how many attempts were answered UNAVAILABLE (0 or 1)."""
    if await call():
        return 0
    assert await call(), "still unavailable after the one retry"
    return 1


async def test_calls_spread_over_both_processes_and_survive_a_kill(
        replicas: tuple[list[Replica], dict[str, Any]], bridge: str, issuer: Issuer, k8s_namespace: str,
        tmp_path: Path) -> None:
    (a, b), common = replicas
    admin = dict(bearer(issuer.mint("root-admin", roles=["admin"])))
    url = f"{bridge}/v1/namespaces/{k8s_namespace}/templates"
    # The service-to-service client: a Runtime whose template target names both processes.
    config = tmp_path / "client.yaml"
    config.write_text(yaml.safe_dump(common | {"servers": {
        "template": {"listen": "127.0.0.1:1", "target": f"ipv4:{a.address},{b.address}"}, "metrics_listen": ""}}))
    runtime = Runtime.create(load_settings(config, environ={}))
    stub = template_pb2_grpc.TemplateServiceStub(runtime.channel("template"))
    request = template_pb2.ListTemplatesRequest(parent=f"namespaces/{k8s_namespace}")

    async with httpx.AsyncClient(headers=admin, timeout=30) as http:
        async def through_bridge() -> bool:
            reply = await http.get(url)
            if reply.status_code == 503:
                return False
            assert reply.status_code == 200, reply.text
            return True

        async def through_runtime() -> bool:
            try:
                await stub.ListTemplates(request, metadata=runtime.call_metadata("test"), timeout=30)
                return True
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return False

        try:
            for name, call in (("bridge", through_bridge), ("Runtime.channel", through_runtime)):
                before = [await a.answered(), await b.answered()]
                for _ in range(CALLS):
                    assert await call(), f"{name}: a call answered UNAVAILABLE with both processes up"
                spread = [await a.answered() - before[0], await b.answered() - before[1]]
                print(f"{name}: {CALLS} ListTemplates calls, answered {spread[0]} by one process, {spread[1]} by "
                      f"the other", file=sys.stderr)
                assert sum(spread) == CALLS and min(spread) > 0, spread

            assert a.process.proc is not None
            a.process.proc.send_signal(signal.SIGKILL)
            a.process.proc.wait()
            for name, call in (("bridge", through_bridge), ("Runtime.channel", through_runtime)):
                before_b = await b.answered()
                retried = [await with_one_retry(call) for _ in range(CALLS)]
                answered = await b.answered() - before_b
                print(f"{name} after SIGKILL of one process: {CALLS} calls, {answered} answered by the other, "
                      f"{sum(retried)} retried once, 0 failed", file=sys.stderr)
                assert answered == CALLS
        finally:
            await runtime.close()
