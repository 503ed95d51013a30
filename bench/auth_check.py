#!/usr/bin/env python3
"""Load ``GET /auth`` with 10,000 instances in the owner map, and oauth2-proxy's ``/oauth2/auth``
the same way in the same run; print checks/s, p50/p99 and the ratios.

    python bench/auth_check.py --database-url postgresql+asyncpg://... [--instances 10000] [--rounds 3]

Two measurements, each alternating between the two servers round by round (the machine may be shared:
alternating spreads any background load over both; the medians of the rounds are reported):

- saturated: wrk (one thread, ``--connections`` connections, ``--duration`` seconds) as fast as each
  server answers. Its p99 is mostly queueing behind the connections ahead.
- fixed rate: vegeta at constant arrival rates well below both servers' saturation (``--rates``;
  default 1,000/s and 2,000/s: vegeta shares the machine's cores too), the same for both, at most
  ``--connections`` connections: latency as a user sees it while the server keeps up.

A third server, nginx answering every request with a static ``return 204`` (the same requests, the
same load), is the ceiling of any HTTP auth endpoint on this machine: the ratios to it say how much of
the machine's HTTP capacity /auth reaches and how much tail the machine itself adds. A fourth, the
floor (bench/asgi_floor.py: /auth's own HTTP stack in as many processes, answering without any check),
says how much of /auth's cost and tail is the HTTP stack and how much the check (``--skip-floor``).

Every run also reports, from ``/proc``, each server's CPU time per request, the time its threads spent
runnable but waiting for a CPU (the scheduler's delay, which a loaded machine adds to every server) and
its preemptions, and the load average at the start of the run; and, per measurement, what the /auth
workers' own probes saw (:mod:`aigc_gateway.services.auth.probes`: garbage collections and their
pauses, event-loop lateness split into the loop's own work and waiting for a CPU). The machine may be
shared: these are the figures to attribute a tail with, where wall-clock latency alone cannot.
``--profile DIR`` adds, for the first /auth round of each fixed rate, the CPU per request of the workers'
event-loop threads apart from their other threads, and py-spy's samples of the loop threads (py-spy
is in the dev extra; the stacks stay in DIR, collapsed, for a flame graph). ``--timeline DIR`` keeps every
fixed-rate request's start and latency there (CSV) and prints, per server, when the slowest 1 % came: in
bursts or alone, and whether with a period of the workers' background work (it found the denied checks'
audit transactions at the start of every round; docs/auth.md, "When the slowest requests came").

The request mix cycles through signed-in owners (allowed), signed-in non-owners (denied) and anonymous
requests (``--mix``). The auth service runs as in production: this process is the gRPC side (owner map
from the ``instances`` rows this script writes, routes from a template pattern, since no cluster is
needed here) and starts ``--workers`` HTTP worker processes (default: one per CPU, as
``auth.http_workers``); ``--workers 0`` serves HTTP in this process instead. Sessions are rows in the
database, as in production (PostgreSQL; SQLite works but re-reads sessions every 0.5 s, having no
NOTIFY).

oauth2-proxy is built from its Go module by bench/build_oauth2_proxy.sh (cached outside the repository)
and runs with cookie sessions; its cookies are minted with its own code (bench/oauth2_proxy_cookie). It
answers 202 to any valid session whatever the host (it has no per-instance owner check), so it does
less work per request than /auth does. wrk and vegeta come from bench/install_load_tools.sh, which this
script runs (idempotent).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from sqlalchemy import delete, insert  # noqa: E402

from aigc_gateway.config import Settings  # noqa: E402
from aigc_gateway.db.migrate import upgrade  # noqa: E402
from aigc_gateway.db.models import InstanceRow  # noqa: E402
from aigc_gateway.httpserver import reserve_port  # noqa: E402
from aigc_gateway.runtime import Runtime  # noqa: E402
from aigc_gateway.services.auth.app import AuthService  # noqa: E402
from aigc_gateway.services.auth.checker import AccessChecker, Credentials  # noqa: E402
from aigc_gateway.services.auth.routes import RoutePattern  # noqa: E402

DOMAIN = "bench.test"
NAMESPACE = "bench"
COOKIE = "aigc_session"
O2P_COOKIE = "_oauth2_proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- load generators ------------------------------------------------------------------------------------


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
    top = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text, re.M)  # avg, stdev, max
    peak = float(top.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[top.group(2)] if top else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "max": peak,
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0, "errors": 1.0 if errors else 0.0}


def run_vegeta(vegeta: Path, port: int, requests: list[tuple[str, dict[str, str]]], rate: int, duration: int,
               connections: int, keep: Path | None = None) -> dict[str, float]:
    """A constant arrival rate (open model: a slow answer does not delay the next request's start). With
    ``keep``, every request's start and latency are kept there as CSV (``--timeline``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        for path, headers in requests:
            f.write(json.dumps({"method": "GET", "url": f"http://127.0.0.1:{port}{path}",
                                "header": {k: [v] for k, v in headers.items() if k != "Host"}}) + "\n")
    results = f.name + ".bin"
    try:
        with open(results, "wb") as out:
            attack = subprocess.run([str(vegeta / "vegeta"), "attack", "-format=json", f"-targets={f.name}",
                                     f"-rate={rate}/s", f"-duration={duration}s", f"-max-connections={connections}",
                                     "-timeout=10s"], stdout=out, stderr=subprocess.PIPE, timeout=duration + 60)
        report = subprocess.run([str(vegeta / "vegeta"), "report", "-type=json", results],
                                capture_output=True, text=True, timeout=60)
        if keep is not None:
            with open(keep, "wb") as out:
                subprocess.run([str(vegeta / "vegeta"), "encode", "-to=csv", results], stdout=out, check=True)
    finally:
        os.unlink(f.name)
        if os.path.exists(results):
            os.unlink(results)
    if report.returncode != 0 or attack.returncode != 0:
        raise SystemExit(f"vegeta failed: {report.stderr} {attack.stderr.decode()}")
    data = json.loads(report.stdout)
    lat = data["latencies"]
    codes = data.get("status_codes") or {}
    return {"rate": data["rate"], "p50": lat["50th"] / 1e6, "p99": lat["99th"] / 1e6, "max": lat["max"] / 1e6,
            "other": float(sum(n for code, n in codes.items() if code not in ("200", "202", "204", "401", "403")))}


# -- the auth service ------------------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def tail_line(name: str, files: list[Path]) -> str:
    """When the slowest 1 % of a server's fixed-rate requests came (``--timeline``): whether they come in
    bursts (a stall delays every request that arrives during it) and whether they line up with a period of
    the worker's background work (the probe 0.1 s, the metrics 2 s, the activity flush 5 s). A share near
    the bin's width (10 %) means no period."""
    total = 0
    slow: list[float] = []
    for f in files:
        rows = [line.split(",", 3)[:3] for line in f.read_text().splitlines() if line]
        lat = sorted(int(r[2]) for r in rows)
        cut = lat[int(len(lat) * 0.99)]
        total += len(rows)
        slow += [int(r[0]) / 1e9 for r in rows if int(r[2]) >= cut]  # wall-clock time: the timers keep their phase
    slow.sort()
    near = sum(1 for i, t in enumerate(slow) if (i and t - slow[i - 1] < 0.002)
               or (i + 1 < len(slow) and slow[i + 1] - t < 0.002))

    def peak(period: float) -> float:  # the fullest tenth of the period
        bins = [0] * 10
        for t in slow:
            bins[int(t % period / period * 10) % 10] += 1
        return max(bins) / max(1, len(slow))
    return (f"  {name:<27} slowest 1%: {len(slow)} of {total}; {near / max(1, len(slow)):.0%} within 2 ms of "
            f"another; fullest tenth of a period: " + ", ".join(f"{period:g} s {peak(period):.0%}"
                                                                for period in (0.1, 1.0, 2.0, 5.0)))


def instance_of(k: int, users: int) -> tuple[str, int, str, str]:
    """(template, id, owner, host) of the k-th instance. One instance per user and template (the
    ownership table's rule), so 10,000 instances of 1,000 users span ten templates."""
    template, ident = f"cpu{k // users}", k % users
    return template, ident, f"user{ident}", f"instances{ident}-{template}.{DOMAIN}"


async def seed_instances(runtime: Runtime, instances: int, users: int) -> None:
    now = datetime.now(UTC)
    rows = []
    for k in range(instances):
        template, ident, owner, _ = instance_of(k, users)
        rows.append({"namespace": NAMESPACE, "template": template, "id": ident, "slot": "LIVE", "owner": owner,
                     "orphaned": False, "created_at": now, "updated_at": now, "state_changed_at": now})
    async with runtime.db.session() as session:
        await session.execute(delete(InstanceRow).where(InstanceRow.namespace == NAMESPACE))
        for begin in range(0, len(rows), 2000):
            await session.execute(insert(InstanceRow), rows[begin:begin + 2000])


async def start_gateway(db_url: str, opts: argparse.Namespace) -> tuple[Runtime, AuthService, int, list[str]]:
    # database.pool_size as deployed (10, the default). It was 4 here: a burst of denied checks' audit writes
    # (up to 10 at once) overflowed it, and every overflow connection was opened and closed again (--profile).
    settings = Settings.model_validate({
        "domain": DOMAIN, "database": {"url": db_url},
        "kubernetes": {"kubeconfig": "/nonexistent/bench-kubeconfig"},  # routes come from the patterns below
        "logging": {"level": "WARNING", "json": False},
        "auth": {"http_listen": "127.0.0.1:0", "session_keys": [secrets.token_urlsafe(32)], "cookie_secure": False,
                 "http_workers": opts.workers, "http_event_loop": opts.event_loop}})
    runtime = Runtime.create(settings)
    await seed_instances(runtime, opts.instances, opts.users)
    service = AuthService(runtime)
    for t in range((opts.instances + opts.users - 1) // opts.users):
        service.index.set_template(NAMESPACE, f"cpu{t}", RoutePattern(f"instances<id>-cpu{t}.{DOMAIN}"))
    assert service.sessions is not None
    cookies = []
    for u in range(opts.users):
        sid, record = await service.sessions.store.create(user=f"user{u}", email=f"user{u}@{DOMAIN}",
                                                          ttl_seconds=3600)
        cookies.append(service.sessions.cookie.issue(sid, f"user{u}", int(record.expires_at.timestamp())))
    await service.start()
    if service.workers is not None:
        await service.workers.barrier()
        port = service.workers.port
    else:
        assert service.endpoints is not None
        port = service.endpoints.port
    if service.sessions.store.listener is not None:  # PostgreSQL: cached sessions are trusted while LISTEN is up
        await service.sessions.store.listener.wait_live(10)
    return runtime, service, port, cookies


def mix(instances: int, users: int, n: int, shares: tuple[int, ...], cookie_of) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    """(allowed, denied, anonymous) requests in the given shares."""
    out = []
    pattern = [0] * shares[0] + [1] * shares[1] + [2] * shares[2]
    for k in range(n):
        kind = pattern[k % len(pattern)]
        _, ident, _, host = instance_of((k * 7919) % instances, users)
        headers = {"X-Original-URL": f"https://{host}/app/run?step={k}", "X-Original-Method": "GET",
                   "Host": f"dashboard.{DOMAIN}"}
        if kind == 0:
            headers["Cookie"] = cookie_of(ident)
        elif kind == 1:
            headers["Cookie"] = cookie_of((ident + 1) % users)
        out.append((f"/auth?rh={host}", headers))  # the auth-url as the proxy expands it: the routed host
    return out


async def in_process_rate(checker: AccessChecker, requests: list[tuple[str, dict]], seconds: float = 2.0) -> float:
    """Decisions per second without HTTP (the checker alone), for context."""
    creds = []
    for path, headers in requests:
        value = headers.get("Cookie", "").partition("=")[2] or None
        creds.append((headers["X-Original-URL"], path.partition("rh=")[2], Credentials(session_cookie=value)))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for url, routed, c in creds[:500]:
            await checker.check(url, c, routed_host=routed, bind=True)
        done += 500
        await asyncio.sleep(0)  # let the denied checks' audit tasks run, as they would in a server
    return done / (time.perf_counter() - started)


# -- oauth2-proxy --------------------------------------------------------------------------------------


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


FLOOR = "HTTP stack, no check (floor)"


def start_floor(processes: int, event_loop: str) -> tuple[int, list[subprocess.Popen]]:
    """/auth's HTTP stack without the check (bench/asgi_floor.py), in as many processes as /auth has workers,
    sharing one port as they do. The reservation is held until the processes exit."""
    reservation = reserve_port("127.0.0.1", 0, "bench")
    port = reservation.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("asgi_floor.py")), str(port),
                               event_loop], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(processes)]
    wait_port(port)
    time.sleep(1.0)  # every process listening, not only the first
    _reservations.append(reservation)
    return port, procs


_reservations: list[socket.socket] = []


def start_nginx(tmp: Path, port: int) -> subprocess.Popen:
    """nginx answering 204 to everything: the ceiling of an HTTP auth endpoint on this machine."""
    conf = tmp / "nginx-204.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}
}}
""")
    return subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def proc_usage(pids: list[int]) -> dict[str, float]:
    """CPU seconds, seconds runnable-but-waiting (schedstat) and preemptions of every thread of ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = wait = preempted = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
                cpu += (int(fields[11]) + int(fields[12])) / tick
                wait += int((task / "schedstat").read_text().split()[1]) / 1e9
                status = (task / "status").read_text()
                switches = re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status)
                preempted += int(switches.group(1)) if switches else 0
            except (OSError, ValueError, AttributeError):
                pass  # a thread that ended meanwhile
    return {"cpu": cpu, "wait": wait, "preempted": preempted}


def measured(pids_of, run, *args) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``run(*args)`` with the server's CPU, scheduler wait and preemptions per request, and the load."""
    load = float(Path("/proc/loadavg").read_text().split()[0])
    pids = pids_of()
    before = proc_usage(pids)
    row = run(*args)
    after = proc_usage(pids)
    n = max(1.0, row.get("rps", row.get("rate", 0.0)) * args[-2])  # duration is the last-but-one argument
    row.update(load=load, cpu_us=(after["cpu"] - before["cpu"]) / n * 1e6,
               wait_us=(after["wait"] - before["wait"]) / n * 1e6,
               preempted=(after["preempted"] - before["preempted"]))
    return row


def probe_totals(service: AuthService) -> dict[str, list[float]]:
    """The sum of the /auth workers' latest runtime probes (see services/auth/probes.py)."""
    total: dict[str, list[float]] = {}
    if service.workers is None:
        return total
    for value in service.workers.metrics.live.values():
        for key, v in (value.get("runtime") or {}).items():
            v = v if isinstance(v, list) else [v]
            have = total.setdefault(key, [0.0] * len(v))
            total[key] = [max(a, b) if key in ("gc_max", "lag_max_ms") else a + b for a, b in zip(have, v, strict=True)]
    return total


async def fresh_probes(service: AuthService) -> dict[str, list[float]]:
    await asyncio.sleep(2.2)  # the workers report every 2 s
    return probe_totals(service)


def probe_line(before: dict[str, list[float]], after: dict[str, list[float]], requests: float) -> str:
    if not after:
        return "  /auth workers' probes: none (no worker processes)"

    def d(key: str) -> list[float]:
        return [a - b for a, b in zip(after[key], before.get(key, [0.0] * len(after[key])), strict=True)]

    count, seconds, collected = d("gc_count"), d("gc_seconds"), d("gc_collected")
    lag = d("lag")
    gcs = "; ".join(f"gen{g} {count[g]:.0f}x {seconds[g] * 1000:.1f} ms (max {after['gc_max'][g] * 1000:.2f} ms "
                    f"since start)" for g in range(3))
    return (f"  /auth workers' probes over the measurement ({requests:,.0f} requests): GC {gcs}; "
            f"{sum(collected):.0f} objects collected, {after['frozen'][0]:.0f} frozen\n"
            f"    loop timer late >5 ms: {sum(lag[4:]):.0f}x, >20 ms: {sum(lag[6:]):.0f}x (max since start "
            f"{after['lag_max_ms'][0]:.1f} ms); lateness {d('lag_busy_s')[0] * 1000:.0f} ms own work, "
            f"{d('lag_off_cpu_s')[0] * 1000:.0f} ms waiting for a CPU; {d('preempted')[0]:.0f} preemptions")


def thread_cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds (schedstat, nanosecond resolution) of the event-loop threads of ``pids`` (the main
    threads) and of all their other threads (none of the HTTP server's: it runs on the event-loop thread)."""
    loop = other = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
            if task.name == str(pid):
                loop += seconds
            else:
                other += seconds
    return loop, other


def profiled(out: Path, label: str, pids: list[int], run, *args) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``run(*args)`` (one round of ``measured``) with py-spy sampling every /auth worker meanwhile (collapsed
    stacks in ``out``), and the round's CPU per request split between the threads."""
    duration = args[-2]
    spies = [subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-r", "200",
                               "-f", "raw", "-d", str(max(1, duration - 1)), "-p", str(pid),
                               "-o", str(out / f"{label}-{pid}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for pid in pids]
    before = thread_cpu(pids)
    row = run(*args)
    after = thread_cpu(pids)
    for spy in spies:
        spy.wait(30)
    n = max(1.0, row.get("rps", row.get("rate", 0.0)) * duration)
    row.update(loop_us=(after[0] - before[0]) / n * 1e6, threads_us=(after[1] - before[1]) / n * 1e6)
    return row


def profile_line(out: Path, label: str, row: dict[str, float]) -> str:
    """The round's CPU split, and the frames the /auth workers' event-loop threads were sampled in most."""
    own: dict[str, int] = {}
    total = 0
    for path in out.glob(f"{label}-*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not count.isdigit() or not frames[0].startswith("_run_module_as_main"):
                continue  # not the main (event-loop) thread
            total += int(count)
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:6]
    return (f"  --profile ({label}, first round): CPU per request in the event-loop threads {row['loop_us']:.1f} us, "
            f"in their other threads {row['threads_us']:.1f} us; the loop threads' samples (py-spy, "
            f"{total} in {out}) by innermost Python frame:\n    "
            + "\n    ".join(f"{n / max(1, total):4.0%} {frame}" for frame, n in top))


def tool(script: str) -> Path:
    done = subprocess.run([str(ROOT / "bench" / script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/{script} failed: {done.stderr}")
    return Path(done.stdout.strip())


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def rounds(rows: list[dict[str, float]], key: str, fmt: str) -> str:
    return ", ".join(fmt.format(r[key]) for r in rows)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per server and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement, alternating the servers")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--mix", default="60,25,15", help="allowed,denied,anonymous shares")
    parser.add_argument("--rates", default="1000,2000",
                        help="fixed arrival rates (requests/s) for the latency measurement, comma separated; "
                             "empty: skip it")
    parser.add_argument("--workers", type=int, default=None,
                        help="auth.http_workers (default: one per CPU; 0: HTTP in this process)")
    parser.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"],
                        help="auth.http_event_loop of the workers")
    parser.add_argument("--database-url", default="", help="PostgreSQL for sessions (default: embedded SQLite)")
    parser.add_argument("--skip-oauth2-proxy", action="store_true")
    parser.add_argument("--skip-nginx", action="store_true", help="no nginx return 204 ceiling")
    parser.add_argument("--skip-floor", action="store_true",
                        help="no floor (bench/asgi_floor.py: /auth's HTTP stack answering without the check)")
    parser.add_argument("--profile", default="", metavar="DIR",
                        help="sample the /auth workers with py-spy (dev extra) in the first round of each fixed "
                             "rate, keep the stacks in DIR and print where the event-loop threads spend their time")
    parser.add_argument("--timeline", default="", metavar="DIR",
                        help="keep every fixed-rate request's start and latency in DIR (CSV, one file per server, "
                             "rate and round) and print when the slowest 1%% came")
    opts = parser.parse_args()
    vegeta = tool("install_load_tools.sh")
    shares = tuple(int(x) for x in opts.mix.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-"))
    profile_dir = Path(opts.profile).resolve()
    if opts.profile:
        profile_dir.mkdir(parents=True, exist_ok=True)
    timeline = Path(opts.timeline).resolve()
    if opts.timeline:
        timeline.mkdir(parents=True, exist_ok=True)
    db_url = opts.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.sqlite3'}"
    await asyncio.to_thread(upgrade, db_url)  # alembic runs its own event loop

    runtime, service, port, cookies = await start_gateway(db_url, opts)
    requests = mix(opts.instances, opts.users, 3000, shares, lambda u: f"{COOKIE}={cookies[u]}")
    workers = service.workers.count if service.workers is not None else 0
    print(f"owner map: {len(service.owners)} instances, {service.owners.admitted} admitted, {opts.users} users; "
          f"mix allowed/denied/anonymous = {opts.mix}; {os.cpu_count()} CPUs; "
          f"/auth in {workers or 'no'} worker process(es) ({opts.event_loop if workers else 'asyncio'}); "
          f"{opts.rounds} round(s) of {opts.duration}s per server and measurement, alternating")
    await in_process_rate(service.checker, requests, 3.0)  # warm: this process's session cache starts empty
    print(f"checker alone (no HTTP, one process): {await in_process_rate(service.checker, requests):,.0f} decisions/s")

    o2p_proc = None
    nginx_proc = None
    floor_procs: list[subprocess.Popen] = []
    o2p_port = 0
    o2p_requests: list[tuple[str, dict]] = []
    ours = "aigc-gateway /auth"
    ceiling = "nginx return 204 (ceiling)"
    try:
        servers: list[tuple[str, int, list[tuple[str, dict]], object]] = [
            (ours, port, requests, lambda: (service.workers.pids if service.workers is not None else [os.getpid()]))]
        if not opts.skip_oauth2_proxy:
            cache = tool("build_oauth2_proxy.sh")
            o2p_port = free_port()
            o2p_proc, secret = start_oauth2_proxy(cache, o2p_port)
            wait_port(o2p_port)
            minted = [subprocess.run([str(cache / "oauth2-proxy-cookie"), secret, O2P_COOKIE, f"user{u}",
                                      f"user{u}@{DOMAIN}"], capture_output=True, text=True,
                                     check=True).stdout.strip() for u in range(min(opts.users, 50))]
            o2p_requests = [("/oauth2/auth", {k: v for k, v in h.items() if k != "Cookie"} | (
                {"Cookie": f"{O2P_COOKIE}={minted[n % len(minted)]}"} if "Cookie" in h else {}))
                for n, (_, h) in enumerate(requests)]
            servers.append(("oauth2-proxy /oauth2/auth", o2p_port, o2p_requests, lambda: [o2p_proc.pid]))
        if not opts.skip_nginx and shutil.which("nginx"):
            nginx_port = free_port()
            nginx_proc = start_nginx(tmp, nginx_port)
            wait_port(nginx_port)
            servers.append((ceiling, nginx_port, requests, lambda: process_tree(nginx_proc.pid)))
        if not opts.skip_floor:
            floor_port, floor_procs = start_floor(max(1, workers), opts.event_loop)
            servers.append((FLOOR, floor_port, requests, lambda: [p.pid for p in floor_procs]))
        scripts = {name: wrk_script(reqs) for name, _, reqs, _ in servers}
        for name, p, _, _ in servers:  # warm up: connections, caches, the workers' session reads
            await asyncio.to_thread(run_wrk, p, scripts[name], 5, opts.connections)

        def table(rows_of: dict[str, list[dict[str, float]]], key: str, unit: str) -> None:
            for name, rows in rows_of.items():
                print(f"  {name:<27} {median(rows, key):>9,.0f} {unit}   p50 {median(rows, 'p50'):6.2f} ms   "
                      f"p99 {median(rows, 'p99'):6.2f} ms   max {median(rows, 'max'):7.2f} ms   "
                      f"(p99 rounds: {rounds(rows, 'p99', '{:.2f}')})")
            print("  per request, medians of the rounds: server CPU / waiting for a CPU; preemptions per round; "
                  "load average at each round's start")
            for name, rows in rows_of.items():
                print(f"  {name:<27} CPU {median(rows, 'cpu_us'):6.1f} us   waiting {median(rows, 'wait_us'):6.1f} us"
                      f"   preemptions {rounds(rows, 'preempted', '{:.0f}')}   load {rounds(rows, 'load', '{:.1f}')}")

        ratios: list[str] = []
        before = await fresh_probes(service)
        saturated: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in servers}
        for _ in range(opts.rounds):
            for name, p, _, pids in servers:
                saturated[name].append(await asyncio.to_thread(
                    measured, pids, run_wrk, p, scripts[name], opts.duration, opts.connections))
        after = await fresh_probes(service)
        print(f"\nsaturated (wrk -t1 -c{opts.connections} -d{opts.duration}s; medians of {opts.rounds} rounds; "
              f"checks/s rounds: " + "; ".join(f"{name.split()[0]} {rounds(rows, 'rps', '{:,.0f}')}"
                                             for name, rows in saturated.items()) + "):")
        table(saturated, "rps", "checks/s")
        print(probe_line(before, after, sum(r["rps"] * opts.duration for r in saturated[ours])))
        expected = (shares[1] + shares[2]) / sum(shares)
        mine = saturated[ours]
        print(f"  /auth non-2xx share {sum(r['non2xx'] for r in mine) / max(1, sum(r['rps'] * opts.duration for r in mine)):.0%}"
              f" (expected {expected:.0%})")
        for other in ("oauth2-proxy /oauth2/auth", FLOOR, ceiling):
            if other in saturated:
                a, b = saturated[ours], saturated[other]
                ratios.append(f"vs {'floor' if other == FLOOR else other.split()[0]}: saturated throughput "
                              f"{median(a, 'rps') / median(b, 'rps'):.2f}x, "
                              f"saturated p99 {median(a, 'p99') / median(b, 'p99'):.2f}x")

        for rate in [int(r) for r in opts.rates.split(",") if r.strip()]:
            fixed: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in servers}
            before = await fresh_probes(service)
            for round_ in range(opts.rounds):
                for name, p, reqs, pids in servers:
                    attack = functools.partial(run_vegeta, keep=timeline / f"{slug(name)}-{rate}-{round_}.csv"
                                               if opts.timeline else None)
                    if opts.profile and name == ours and round_ == 0:
                        fixed[name].append(await asyncio.to_thread(
                            profiled, profile_dir, f"rate{rate}", pids(), measured, pids, attack, vegeta, p,
                            reqs, rate, opts.duration, opts.connections))
                        continue
                    fixed[name].append(await asyncio.to_thread(measured, pids, attack, vegeta, p, reqs, rate,
                                                               opts.duration, opts.connections))
            after = await fresh_probes(service)
            print(f"\nfixed rate (vegeta {rate:,}/s, at most {opts.connections} connections, {opts.duration}s; "
                  f"medians of {opts.rounds} rounds):")
            table(fixed, "rate", "req/s   ")
            print(probe_line(before, after, rate * opts.duration * opts.rounds))
            if opts.profile:
                print(profile_line(profile_dir, f"rate{rate}", fixed[ours][0]))
            if opts.timeline:
                for name, *_ in servers:
                    print(tail_line(name, [timeline / f"{slug(name)}-{rate}-{r}.csv" for r in range(opts.rounds)]))
            other_statuses = sum(r["other"] for rows in fixed.values() for r in rows)
            if other_statuses:
                print(f"  unexpected statuses: {other_statuses:.0f}")
            for other in ("oauth2-proxy /oauth2/auth", FLOOR, ceiling):
                if other in fixed:
                    ratios.append(f"vs {'floor' if other == FLOOR else other.split()[0]}: p99 at {rate:,}/s "
                                  f"{median(fixed[ours], 'p99') / median(fixed[other], 'p99'):.2f}x")
        if ratios:
            print("\nratios of aigc-gateway /auth:\n  " + "\n  ".join(ratios))
    finally:
        for proc in (o2p_proc, nginx_proc, *floor_procs):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        await service.stop()
        await runtime.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
