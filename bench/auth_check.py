#!/usr/bin/env python3
"""Load ``GET /auth`` with 10,000 instances in the owner map, and oauth2-proxy's ``/oauth2/auth``
the same way in the same run; print checks/s, p50/p99 and the ratio.

    python bench/auth_check.py [--instances 10000] [--duration 10] [--connections 32]

The load generator is wrk (Debian package ``wrk``), one thread, the same connection count for both
servers, on loopback only, for a bounded time. The request mix cycles through signed-in owners
(allowed), signed-in non-owners (denied) and anonymous requests (``--mix``). oauth2-proxy is built
from its Go module by bench/build_oauth2_proxy.sh (cached outside the repository) and runs with
cookie sessions; its cookies are minted with its own code (bench/oauth2_proxy_cookie). It answers
202 to any valid session whatever the host (it has no per-instance owner check), so it does less
work per request than /auth does.

The auth service runs in this process exactly as in production (aiohttp, the real checker, session
store and owner map), on an embedded SQLite database unless ``--database-url`` names PostgreSQL.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from aigc_gateway.audit import AuditLog  # noqa: E402
from aigc_gateway.config import Settings  # noqa: E402
from aigc_gateway.db import Database  # noqa: E402
from aigc_gateway.db.migrate import upgrade  # noqa: E402
from aigc_gateway.services.auth.activity import ActivityRecorder  # noqa: E402
from aigc_gateway.services.auth.checker import Checker, Credentials  # noqa: E402
from aigc_gateway.services.auth.endpoints import AuthEndpoints  # noqa: E402
from aigc_gateway.services.auth.ownermap import InstanceKey, OwnerMap  # noqa: E402
from aigc_gateway.services.auth.routes import RoutePattern  # noqa: E402
from aigc_gateway.services.auth.sessions import SessionCookieAuthenticator  # noqa: E402

DOMAIN = "bench.test"
COOKIE = "aigc_session"
O2P_COOKIE = "_oauth2_proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(requests: list[tuple[str, dict[str, str]]]) -> str:
    """A wrk script cycling through pre-built requests (built once, in init)."""
    rows = ",\n".join("{" + lua_string(path) + ", {" + ", ".join(
        f"[{lua_string(k)}]={lua_string(v)}" for k, v in headers.items()) + "}}" for path, headers in requests)
    return f"""
local specs = {{
{rows}
}}
local built = {{}}
local i = 0
init = function(args)
  for n, s in ipairs(specs) do built[n] = wrk.format("GET", s[1], s[2]) end
end
request = function()
  i = i % #built + 1
  return built[i]
end
"""


def run_wrk(port: int, script: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", f.name,
                              f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(f.name)
    text = out.stdout
    if out.returncode != 0:
        raise SystemExit(f"wrk failed: {out.stderr}")

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not match:
            raise SystemExit(f"cannot read {label}% from wrk:\n{text}")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "errors": 1.0 if errors else 0.0}


async def start_gateway(db_url: str, instances: int, users: int):  # type: ignore[no-untyped-def]
    settings = Settings.model_validate({
        "domain": DOMAIN, "database": {"url": db_url},
        "auth": {"http_listen": "127.0.0.1:0", "session_keys": [secrets.token_urlsafe(32)], "cookie_secure": False}})
    db = Database(db_url, pool_size=4)
    owners = OwnerMap()
    pattern = RoutePattern(f"instances<id>-cpu.{DOMAIN}")
    for i in range(instances):
        key = InstanceKey("bench", "cpu", i)
        owners.set_routes(key, pattern.routes(i))
        owners.set_owner(key, f"user{i % users}")
    sessions = SessionCookieAuthenticator(settings, db)
    cookies = []
    for u in range(users):
        sid, record = await sessions.store.create(user=f"user{u}", email=f"user{u}@{DOMAIN}", ttl_seconds=3600)
        cookies.append(sessions.cookie.issue(sid, f"user{u}", int(record.expires_at.timestamp())))
    sessions.store.start()
    if sessions.store.listener is not None:  # PostgreSQL: cached sessions are trusted while LISTEN is up
        await sessions.store.listener.wait_live(10)
    audit_log = AuditLog(db, "auth", 60)
    checker = Checker(owners, sessions, None, ActivityRecorder(db), audit_log)
    endpoints = AuthEndpoints(settings, checker, sessions, None, audit_log)
    port = await endpoints.start("127.0.0.1:0")
    return db, sessions, checker, endpoints, port, cookies


def mix(instances: int, users: int, n: int, shares: tuple[int, int, int], cookie_of) -> list[tuple[str, dict]]:
    """(allowed, denied, anonymous) requests in the given shares; host i belongs to user i % users."""
    out = []
    pattern = [0] * shares[0] + [1] * shares[1] + [2] * shares[2]
    for k in range(n):
        kind = pattern[k % len(pattern)]
        host_id = (k * 7919) % instances
        owner = host_id % users
        url = f"https://instances{host_id}-cpu.{DOMAIN}/app/run?step={k}"
        headers = {"X-Original-URL": url, "X-Original-Method": "GET", "Host": f"dashboard.{DOMAIN}"}
        if kind == 0:
            headers["Cookie"] = cookie_of(owner)
        elif kind == 1:
            headers["Cookie"] = cookie_of((owner + 1) % users)
        out.append(("/auth", headers))
    return out


async def in_process_rate(checker: Checker, requests: list[tuple[str, dict]], seconds: float = 2.0) -> float:
    """Decisions per second without HTTP (the checker alone), for context."""
    creds = []
    for _, headers in requests:
        value = headers.get("Cookie", "").partition("=")[2] or None
        creds.append((headers["X-Original-URL"], Credentials(session_cookie=value)))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for url, c in creds[:500]:
            await checker.check(url, c)
        done += 500
    return done / (time.perf_counter() - started)


def start_oauth2_proxy(cache: Path, port: int) -> tuple[subprocess.Popen, str]:
    secret = secrets.token_hex(16)  # 32 bytes: AES-256
    proc = subprocess.Popen([
        str(cache / "oauth2-proxy"), f"--http-address=127.0.0.1:{port}", "--provider=github",
        "--client-id=bench", "--client-secret=bench-secret", f"--cookie-secret={secret}",
        f"--cookie-name={O2P_COOKIE}", "--cookie-secure=false", "--email-domain=*", "--upstream=static://202",
        f"--redirect-url=http://127.0.0.1:{port}/oauth2/callback", "--request-logging=false",
        "--auth-logging=false", "--standard-logging=false"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, secret


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mix", default="60,25,15", help="allowed,denied,anonymous shares")
    parser.add_argument("--database-url", default="", help="PostgreSQL for sessions (default: embedded SQLite)")
    parser.add_argument("--skip-oauth2-proxy", action="store_true")
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    shares = tuple(int(x) for x in opts.mix.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-"))
    db_url = opts.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.sqlite3'}"
    await asyncio.to_thread(upgrade, db_url)  # alembic runs its own event loop

    db, sessions, checker, endpoints, port, cookies = await start_gateway(db_url, opts.instances, opts.users)
    requests = mix(opts.instances, opts.users, 3000, shares, lambda u: f"{COOKIE}={cookies[u]}")
    print(f"owner map: {len(checker.owners)} instances, {checker.owners.admitted} admitted, {opts.users} users; "
          f"mix allowed/denied/anonymous = {opts.mix}; wrk -t1 -c{opts.connections} -d{opts.duration}s")
    decisions = await in_process_rate(checker, requests)
    print(f"checker alone (no HTTP): {decisions:,.0f} decisions/s")
    ours = await asyncio.to_thread(run_wrk, port, wrk_script(requests), opts.duration, opts.connections)
    expected_non2xx = len(requests) and (shares[1] + shares[2]) / sum(shares)
    print(f"aigc-gateway /auth:   {ours['rps']:>10,.0f} checks/s   p50 {ours['p50']:.2f} ms   "
          f"p99 {ours['p99']:.2f} ms   (non-2xx {ours['non2xx']:,.0f}, expected share {expected_non2xx:.0%})")
    await endpoints.stop()
    await sessions.close()
    await db.close()

    if opts.skip_oauth2_proxy:
        return 0
    build = subprocess.run([str(ROOT / "bench" / "build_oauth2_proxy.sh")], capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(f"cannot build oauth2-proxy: {build.stderr}")
    cache = Path(build.stdout.strip())
    o2p_port = free_port()
    proc, secret = start_oauth2_proxy(cache, o2p_port)
    try:
        wait_port(o2p_port)
        minted = [subprocess.run([str(cache / "oauth2-proxy-cookie"), secret, O2P_COOKIE, f"user{u}",
                                  f"user{u}@{DOMAIN}"], capture_output=True, text=True, check=True).stdout.strip()
                  for u in range(min(opts.users, 50))]
        o2p_requests = [("/oauth2/auth", {k: v for k, v in h.items() if k != "Cookie"} | (
            {"Cookie": f"{O2P_COOKIE}={minted[hash(h['Cookie']) % len(minted)]}"} if "Cookie" in h else {}))
            for _, h in requests]
        theirs = await asyncio.to_thread(run_wrk, o2p_port, wrk_script(o2p_requests), opts.duration,
                                         opts.connections)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"oauth2-proxy /oauth2/auth: {theirs['rps']:>6,.0f} checks/s   p50 {theirs['p50']:.2f} ms   "
          f"p99 {theirs['p99']:.2f} ms   (non-2xx {theirs['non2xx']:,.0f})")
    print(f"ratio aigc-gateway/oauth2-proxy: throughput {ours['rps'] / theirs['rps']:.2f}x, "
          f"p99 {ours['p99'] / theirs['p99']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
