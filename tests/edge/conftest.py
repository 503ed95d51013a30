"""Fixtures of the proxy-edge tests: the ingress-nginx stand-in rendered from the namespace's real Ingress
objects, the test bed's Traefik and pod backends (aigc_testbed/edge.py), raw HTTP over sockets, and the
pods' request log."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from tests.plugins.auth_stack import free_port
from tests.plugins.ingress_nginx import render_conf, render_http
from tests.plugins.kube import api_client
from tests.plugins.testbed import TESTBED_CLI


@dataclass(frozen=True)
class Edge:
    traefik_port: int
    pod_log: Path


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def edge(testbed) -> Edge:
    """Where the test bed's Traefik listens and where its pod backends log (`testbed env`). A bed whose
    Traefik does not answer gets `testbed up`, which (re)starts the edge and leaves the rest alone."""
    out = subprocess.run([str(TESTBED_CLI), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    traefik = env["AIGC_TESTBED_TRAEFIK_URL"]
    ping = env["AIGC_TESTBED_TRAEFIK_PING"]
    if not _ping(ping):
        up = subprocess.run([str(TESTBED_CLI), "up"], capture_output=True, text=True, timeout=600)
        if up.returncode != 0 or not _ping(ping):
            pytest.fail(f"the test bed's Traefik does not answer at {ping}:\n{up.stderr[-3000:]}", pytrace=False)
    return Edge(int(traefik.rsplit(":", 1)[1]), Path(env["AIGC_TESTBED_BACKEND_LOG"]))


# -- what the pods received ---------------------------------------------------------------------


class PodLog:
    """The test bed's pod request log, read from where this test started (one JSON line per request)."""

    def __init__(self, path: Path, namespace: str):
        self.path, self.namespace = path, namespace
        self.offset = path.stat().st_size if path.exists() else 0

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            lines = fh.read().decode(errors="replace").splitlines()
        return [r for r in (json.loads(line) for line in lines if line.strip()) if r["namespace"] == self.namespace]

    def pods(self) -> list[str]:
        return [r["pod"] for r in self.records()]


# -- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


async def raw(port: int, request: bytes, timeout: float = 10) -> Reply:
    """Send bytes exactly as given to 127.0.0.1:port and read one response (the request should ask for
    `Connection: close` or be HTTP/1.0, so that the response ends with the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)]
    return Reply(status, headers, body)


def request(target: str, headers: list[tuple[str, str]], method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in headers]
    if version == "HTTP/1.1" and not any(k.lower() == "connection" for k, _ in headers):
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


# -- the ingress-nginx stand-in -------------------------------------------------------------------


class IngressNginx:
    """nginx rendered from the Ingress, Service and EndpointSlice objects of one namespace. A real
    controller watches them; this stand-in renders on `sync()` (after the test saw the objects change)."""

    def __init__(self, kubeconfig: Path, namespace: str):
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="aigc-ingress-nginx-"))
        os.chmod(self.prefix, 0o755)
        self.process: subprocess.Popen | None = None
        self.conf = ""

    async def objects(self) -> tuple[list[dict], list[dict], list[dict]]:
        async with api_client(self.kubeconfig) as api:
            sanitize = api.sanitize_for_serialization
            ings = await client.NetworkingV1Api(api).list_namespaced_ingress(self.namespace)
            svcs = await client.CoreV1Api(api).list_namespaced_service(self.namespace)
            slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(self.namespace)
            return ([sanitize(i) for i in ings.items], [sanitize(s) for s in svcs.items],
                    [sanitize(s) for s in slices.items])

    async def sync(self) -> str:
        ingresses, services, slices = await self.objects()
        http = render_http(ingresses, services, slices, listen=f"127.0.0.1:{self.port}",
                           internal_prefix=str(self.prefix))
        conf = render_conf(http, prefix=str(self.prefix), run_as_root=os.geteuid() == 0)
        if conf == self.conf and self.process is not None:
            return conf
        await self.stop()
        for sock in self.prefix.glob("*.sock"):
            sock.unlink()
        (self.prefix / "nginx.conf").write_text(conf)
        args = ["nginx", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + conf
        self.process = subprocess.Popen([*args, "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                self.conf = conf
                return conf
            except OSError:
                await asyncio.sleep(0.02)
        raise AssertionError("nginx did not listen")

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
            self.process = None


@pytest.fixture
async def ingress_nginx() -> AsyncIterator[Any]:
    """``nginx = ingress_nginx(kubeconfig, namespace); await nginx.sync()``."""
    if not shutil.which("nginx"):
        pytest.fail("nginx is not installed: run scripts/setup.d/30-nginx.sh", pytrace=False)
    made: list[IngressNginx] = []

    def make(kubeconfig: Path, namespace: str) -> IngressNginx:
        made.append(IngressNginx(kubeconfig, namespace))
        return made[-1]

    yield make
    for nginx in made:
        await nginx.stop()
        shutil.rmtree(nginx.prefix, ignore_errors=True)


# -- a scene: the auth stack, the instance and template services, signed-in users, one proxy --------------


@pytest.fixture
async def make_scene(testbed, k8s_namespace, edge, start_gateway, start_oidc_provider, database_url, issuer, browser,
                     ingress_nginx) -> AsyncIterator[Any]:
    """``scene = await make_scene(proxy, users=..., instance=..., auth=...)``: :func:`.scene.start_scene` with
    this test's fixtures; the scene's database handle is closed after the test."""
    from .scene import start_scene  # scene.py imports this module's helpers

    made: list[Any] = []

    async def make(proxy: str, **options: Any) -> Any:
        made.append(await start_scene(proxy, testbed=testbed, k8s_namespace=k8s_namespace, edge=edge,
                                      start_gateway=start_gateway, start_oidc_provider=start_oidc_provider,
                                      database_url=database_url, issuer=issuer, browser=browser,
                                      ingress_nginx=ingress_nginx, **options))
        return made[-1]

    yield make
    for scene in made:
        await scene.stack.db.close()
