"""Real parts around the auth service: the oidc-provider IdP, nginx doing auth_request like
ingress-nginx, tiny instance backends, and a cookie-keeping "browser" that resolves every host to
loopback (like curl --resolve). Everything listens on 127.0.0.1 only."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

REPO = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO / "tools" / "oidc-provider"
NGINX_DIR = REPO / "tools" / "nginx"
CLIENT_ID = "aigc-gateway"
CLIENT_SECRET = "test-client-secret-" + "y" * 24
SESSION_KEY = "test-session-key-" + "k" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the identity provider ----------------------------------------------------


@dataclass
class OIDCProvider:
    issuer: str
    port: int
    process: subprocess.Popen


@pytest.fixture
async def start_oidc_provider(tmp_path: Path) -> AsyncIterator[Any]:
    """``await start_oidc_provider(redirect_uris=[...], post_logout=[...], accounts={...})``."""
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tools/oidc-provider is not installed: run scripts/setup.d/40-oidc-provider.sh", pytrace=False)
    started: list[OIDCProvider] = []

    async def start(*, redirect_uris: list[str], post_logout: list[str],
                    accounts: dict[str, Any] | None = None) -> OIDCProvider:
        config = tmp_path / f"oidc-provider-{len(started)}.json"
        config.write_text(json.dumps({
            "host": "127.0.0.1", "port": 0, "accounts": accounts or {},
            "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris,
                         "post_logout_redirect_uris": post_logout, "grant_types": ["authorization_code"],
                         "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]}))
        log_path = tmp_path / f"oidc-provider-{len(started)}.log"
        # Once (CI, 4 Dec 2026) node hung at start: listening, its main thread in a futex wait, the JSON line never
        # printed. A start that prints nothing in 30 s is killed (which ends the reading thread too: a thread left
        # reading hung the event loop's teardown for the whole test timeout) and tried again.
        for _attempt in range(3):
            with log_path.open("a") as log:
                proc = subprocess.Popen(["node", str(OIDC_DIR / "server.mjs"), "--config", str(config)],
                                        stdout=subprocess.PIPE, stderr=log, text=True, cwd=OIDC_DIR)
            reading = asyncio.ensure_future(asyncio.to_thread(proc.stdout.readline))  # type: ignore[union-attr]
            done, _ = await asyncio.wait({reading}, timeout=30)
            if not done:
                proc.kill()
            line = await reading
            if line:
                break
            proc.kill()
            proc.wait()
        else:
            pytest.fail(f"oidc-provider did not start in 3 attempts: {log_path.read_text()}")
        info = json.loads(line)
        provider = OIDCProvider(info["issuer"], info["port"], proc)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.process.terminate()
        try:
            provider.process.wait(5)
        except subprocess.TimeoutExpired:
            provider.process.kill()


# -- nginx ----------------------------------------------------------------------


def render(template: str, **values: Any) -> str:
    text = (NGINX_DIR / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{\w+\}\}", text)
    assert not left, f"unrendered placeholders in {template}: {left}"
    return text


@dataclass
class InstanceSite:
    host: str
    paths: dict[str, int]  # location path -> backend port


def nginx_servers(*, listen: str, auth_addr: str, signin_url: str, dashboard_host: str,
                  sites: list[InstanceSite]) -> str:
    # No REST bridge in these tests: the dashboard host's other paths go nowhere (port 9, discard).
    blocks = [render("dashboard.conf.tmpl", LISTEN=listen, HOST=dashboard_host, AUTH_ADDR=auth_addr,
                     BRIDGE_ADDR="127.0.0.1:9")]
    for site in sites:
        locations = "".join(render("instance-location.conf.tmpl", PATH=path, BACKEND_ADDR=f"127.0.0.1:{port}")
                            for path, port in site.paths.items())
        blocks.append(render("instance-server.conf.tmpl", LISTEN=listen, HOST=site.host, AUTH_HOST=dashboard_host,
                             AUTH_ADDR=auth_addr, SIGNIN_URL=signin_url, LOCATIONS=locations))
    return "\n".join(blocks)


@pytest.fixture
async def start_nginx() -> AsyncIterator[Any]:
    """``await start_nginx(port, servers)``: a private nginx on 127.0.0.1:port."""
    if not shutil.which("nginx"):
        pytest.fail("nginx is not installed: run scripts/setup.d/30-nginx.sh", pytrace=False)
    running: list[tuple[subprocess.Popen, Path]] = []

    async def start(port: int, servers: str) -> Path:
        prefix = Path(tempfile.mkdtemp(prefix="aigc-nginx-"))
        os.chmod(prefix, 0o755)
        conf = render("nginx.conf.tmpl", PREFIX=prefix, LISTEN=f"127.0.0.1:{port}", SERVERS=servers,
                      USER="user root;" if os.geteuid() == 0 else "")
        (prefix / "nginx.conf").write_text(conf)
        check = subprocess.run(["nginx", "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                                stderr=subprocess.PIPE, text=True)
        running.append((proc, prefix))
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return prefix
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {proc.stderr.read() if proc.poll() is not None else ''}")

    yield start
    for proc, prefix in running:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(prefix, ignore_errors=True)


# -- instance backends ------------------------------------------------------------


@pytest.fixture
async def start_backend() -> AsyncIterator[Any]:
    """``port = await start_backend("name")``: answers every request with what it received, and records
    it in ``start_backend.seen[name]`` (so a test can prove which backends a request reached, and with
    which identity headers)."""
    runners: list[web.AppRunner] = []
    seen: dict[str, list[dict[str, Any]]] = {}

    async def start(name: str) -> int:
        seen.setdefault(name, [])

        async def echo(request: web.Request) -> web.Response:
            seen[name].append({"host": request.host, "path": request.path_qs,
                               "identity": [(k, v) for k, v in request.headers.items()
                                            if k.lower().startswith("x-auth-request-")]})
            return web.json_response({"backend": name, "host": request.host, "path": request.path_qs,
                                      "user": request.headers.get("X-Auth-Request-User", ""),
                                      "email": request.headers.get("X-Auth-Request-Email", "")})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return port

    start.seen = seen  # type: ignore[attr-defined]
    yield start
    for runner in runners:
        await runner.cleanup()


# -- the browser --------------------------------------------------------------------


class LoopbackResolver(AbstractResolver):
    """Every name resolves to 127.0.0.1 (test hosts never leave the machine)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@dataclass
class Hop:
    method: str
    url: str
    status: int
    location: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Browser:
    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver()),
                                             cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, url: str, **kwargs: Any) -> Hop:
        async with self.session.request(method, url, allow_redirects=False, **kwargs) as response:
            body = await response.text()
            return Hop(method, url, response.status, response.headers.get("Location", ""), body,
                       dict(response.headers))

    async def walk(self, url: str, *, method: str = "GET", data: Any = None, limit: int = 20) -> list[Hop]:
        """Follow redirects by hand, recording every hop."""
        hops: list[Hop] = []
        for _ in range(limit):
            hop = await self.request(method, url, data=data)
            hops.append(hop)
            if hop.status not in (301, 302, 303, 307, 308) or not hop.location:
                return hops
            url = urljoin(url, hop.location)
            if hop.status in (301, 302, 303):
                method, data = "GET", None
        raise AssertionError(f"redirect loop: {[h.url for h in hops]}")

    async def sign_in(self, url: str, username: str, roles: tuple[str, ...] = ()) -> list[Hop]:
        """Open ``url``, and wherever the identity provider's login page appears, sign in as ``username``
        by posting its form (the non-interactive login)."""
        hops = await self.walk(url)
        last = hops[-1]
        if "/interaction/" not in last.url:
            return hops
        uid_path = urlsplit(last.url).path
        post = urljoin(last.url, uid_path + "/login")
        hops += await self.walk(post, method="POST", data={"username": username, "roles": ",".join(roles)})
        return hops

    def cookie(self, name: str) -> str | None:
        for morsel in self.session.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """``b = browser()``: as many independent browsers (cookie jars) as a test needs."""
    made: list[Browser] = []

    def make() -> Browser:
        made.append(Browser())
        return made[-1]

    yield make
    for b in made:
        await b.close()
