"""Fixtures of the delivery tests: the REST bridge binary in front of real gateway
servers, and aigcctl run as the separate process an admin runs."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_script(path: Path) -> ModuleType:
    """Scripts such as bridge/gotools.py are not in a package: load them by path."""
    spec = importlib.util.spec_from_file_location(f"aigc_script_{path.parent.name}_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bridge_module(name: str) -> ModuleType:
    return load_script(REPO / "bridge" / f"{name}.py")


def require_go() -> None:
    if shutil.which("go") is None:
        pytest.skip("go is not installed (scripts/setup.d/50-go-tools.sh installs the tools)")


@pytest.fixture(scope="session")
def gotools() -> ModuleType:
    return load_bridge_module("gotools")


@pytest.fixture(scope="session")
def bridge_binary(gotools: ModuleType) -> Path:
    require_go()
    return gotools.bridge()


@pytest.fixture(scope="session")
def helm(gotools: ModuleType) -> Path:
    require_go()
    return gotools.helm()


@dataclass
class Bridge:
    url: str
    process: asyncio.subprocess.Process


@pytest.fixture
async def start_bridge(bridge_binary: Path) -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    """``await start_bridge(gw)``: the bridge routing to the servers of a RunningGateway
    (AuditService to the first of them); ``addresses=`` overrides single routes."""
    started: list[asyncio.subprocess.Process] = []

    async def start(gw: object | None = None, addresses: dict[str, str] | None = None, *extra: str) -> Bridge:
        routes = {name: "127.0.0.1:1" for name in ("template", "instance", "auth", "usersync")}
        servers = getattr(gw, "servers", {}) or {}
        routes.update({name: f"127.0.0.1:{server.port}" for name, server in servers.items()})
        if servers:
            routes["audit"] = f"127.0.0.1:{next(iter(servers.values())).port}"
        routes.update(addresses or {})
        args = [str(bridge_binary), "--listen", "127.0.0.1:0", "--log-format", "text",
                *(f"--{name}={addr}" for name, addr in routes.items()), *extra]
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        started.append(proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on "), f"bridge did not start: {line!r}"
        return Bridge(url="http://" + line.split()[-1], process=proc)

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class CtlResult:
    code: int
    stdout: str
    stderr: str


async def run_ctl(*args: str, token: str = "", env: dict[str, str] | None = None, stdin: str | None = None,
                  timeout: float = 120) -> CtlResult:
    """aigcctl in its own process (as an admin runs it), never in the test's event loop."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIGCCTL_", "AIGC_TOKEN"))}
    environment["AIGCCTL_CONFIG"] = os.devnull  # ignore the developer's own config file
    if token:
        environment["AIGC_TOKEN"] = token
    environment.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aigc_gateway.ctl.main", *args, env=environment,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    return CtlResult(proc.returncode or 0, out.decode(), err.decode())


def parsed(result: CtlResult) -> Any:
    """aigcctl's JSON output (`-o json`) of a run that must have succeeded."""
    assert result.code == 0, f"exit {result.code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
async def sample_gateway(start_gateway: Any, database_url: str, issuer: Any, testbed: Any, k8s_namespace: str) -> Any:
    """The instance service on the test bed, its namespace holding the reference sample template."""
    from ..instance.conftest import create_template
    from ..plugins.gateway import make_settings
    from ..plugins.kube import Game, api_client

    async with api_client(testbed.kubeconfig) as api:
        await create_template(Game(api, k8s_namespace), testbed)
    settings = make_settings(database_url, issuer, namespaces=[k8s_namespace],
                             kubernetes={"kubeconfig": str(testbed.kubeconfig)})
    return await start_gateway("instance", settings=settings)


def ctl_addresses(gw: object) -> list[str]:
    """aigcctl flags pointing at every server of a RunningGateway."""
    servers = gw.servers
    return [f"--{name}-addr=127.0.0.1:{server.port}" for name, server in servers.items()]
