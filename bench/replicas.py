"""Two processes of each service and two REST bridges, any one of them killed with SIGKILL at random moments under a
mixed load (issue 18).

    python bench/replicas.py [--seconds 120] [--users 6] [--seed 18] [--victims auth]

Eight `aigc-gateway serve` processes: template ×2, instance ×2, auth ×2, usersync ×2 (each usersync replica
delivering the Logto outbox under its advisory locks, to the Logto double), and two REST bridges (the Go binary as
the suite builds it, bridge/gotools.py) in front of them. Every few seconds (4-10 s, seeded) one of the ten, picked
at random, is killed with SIGKILL and started again 1-3 s later; the next kill comes once it serves again (one down
at a time: two replicas are meant to survive the loss of one; on a loaded machine a restart takes a while, and a
schedule that ignored it killed both instance processes at once). Meanwhile users install, pause, resume and
uninstall through the bridges (REST), an admin updates the templates through the bridges (UpdateTemplate, the
description annotation), and the auth check is asked about their instances by their owners and by a user who owns
nothing (gRPC, as ingress-nginx's auth-url reaches the auth service directly).

How calls are spread, as in the Helm chart (docs/chaos.md, "Replicas"):
- REST clients alternate between the two bridges, one attempt each; the documented client retry (same
  request_id, retried for 60 s: a DeleteInstance may wait 30 s for its disks) resends a call answered 502/503/
  504/409-ABORTED/500, or whose bridge refused the connection, and so reaches the other bridge.
- Each bridge dials every service as a comma-separated list of its two processes (`--instance=127.0.0.1:p1,
  127.0.0.1:p2`) and balances round_robin; in a cluster the same comes from a headless Service and dns:///.
- The services dial each other with `servers.<name>.target: ipv4:127.0.0.1:p1,127.0.0.1:p2` and round_robin
  (aigc_gateway.channels.CLIENT_CHANNEL_OPTIONS); the bench's own gRPC clients too.

Prints the operations attempted / ok / retried / failed (in all, and per call with the component it reaches), the
kills per component and each restart's time to serving, the auth checks (a non-owner allowed must be 0), CheckConsistency and the Logto mirror at the
end, and every refused owner check sorted by cause (bench/replicas_refusals.py: the bench's own bookkeeping, the
owner map's lag after an install or resume, a restarted auth process, other), with the owner map's lag measured
and `uptime`. `--victims auth` kills auth processes only (how long a restarted one refuses owners). Needs the test
bed, PostgreSQL and Go, like bench/chaos.py.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "bridge"))
import chaos  # noqa: E402
from chaos import META, TOKEN, ChaosBed, Step, _free_port  # noqa: E402
from kill_storm import RETRYABLE  # noqa: E402
from replicas_refusals import RefusalProbe, uptime  # noqa: E402

SERVICES = ("template", "instance", "auth", "usersync")
# REST routes of the calls the load makes (the google.api.http annotations of the protos).
ROUTES = {"CreateInstance": ("POST", "/v1/{parent}/instances", "instance"),
          "PauseInstance": ("POST", "/v1/{name}:pause", "instance"),
          "ResumeInstance": ("POST", "/v1/{name}:resume", "instance"),
          "DeleteInstance": ("DELETE", "/v1/{name}", "instance"),
          "UpdateTemplate": ("PATCH", "/v1/{name}", "template")}
CODES = {code.value[0]: code for code in grpc.StatusCode}
LB = [("grpc.lb_policy_name", "round_robin"), ("grpc.initial_reconnect_backoff_ms", 200),
      ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


class Process:
    """One `aigc-gateway serve <service>` process, or (``argv`` given) one REST bridge."""

    def __init__(self, service: str, index: int, config: Path | None, log: Path, argv: list[str] | None = None):
        self.service, self.index, self.config, self.log, self.argv = service, index, config, log, argv
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIGC_GATEWAY", "AIGC_BRIDGE"))}
        env["AIGC_GATEWAY__IDEMPOTENCY__REPLICA_LEASE_SECONDS"] = "4"
        argv = self.argv or [sys.executable, "-m", "aigc_gateway.cli", "serve", self.service, "-c", str(self.config)]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ReplicaBed(ChaosBed):
    """bench/chaos.py's load against two processes of each service behind two bridges (no toxiproxy)."""

    kills = 0
    victims = ("template", "instance", "auth", "usersync", "bridge")  # what the killer picks from

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.per_call: dict[str, list[int]] = {}  # method -> [attempted, ok, retried, failed]
        self.kills_of: dict[str, int] = {}
        self.turn = 0  # which bridge the next attempt goes to
        self.admin_token: tuple[float, str] = (0.0, "")
        self.refusal_sample: dict[str, str] = {}  # reason -> one such answer, printed
        self.back_after: dict[str, list[float]] = {}  # component -> seconds from restart to serving, per kill
        self.refusals = RefusalProbe(self)  # the auth checks, each answer attributed, each refused owner explained

    async def start(self) -> None:
        from aigc_gateway.api.v1 import auth_pb2_grpc, instance_pb2_grpc
        from aigc_gateway.db import Database

        for user in [*self.users, "chaos-probe", chaos.NOBODY]:
            self.logto.add_user(user)
        ports = {s: [_free_port(), _free_port()] for s in SERVICES}
        targets = {s: "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports[s]) for s in SERVICES}
        self.processes: list[Process] = []
        for service in SERVICES:
            for i, port in enumerate(ports[service]):
                servers: dict[str, Any] = {s: {"listen": f"127.0.0.1:{ports[s][0]}", "target": targets[s]}
                                           for s in SERVICES}
                servers[service] = {"listen": f"127.0.0.1:{port}", "target": targets[service]}
                config = self.folder / f"{service}-{i}.yaml"
                config.write_text(yaml.safe_dump({
                    "domain": self.domain, "namespaces": [self.namespace],
                    "database": {"url": self.database_url, "pool_size": 5},
                    "oidc": {"issuer": self.issuer.url, "audience": [self.issuer.audience]},
                    "service_identity": {"token": TOKEN},
                    "servers": servers | {"metrics_listen": ""},
                    "kubernetes": {"kubeconfig": self.kubeconfig},
                    "logging": {"level": "WARNING", "json": True},
                    "instance": {"reconcile_interval_seconds": 2, "release_wait_seconds": self.release_wait},
                    "auth": {"http_listen": "", "http_workers": 0, "owners_stale_after_seconds": 5},
                    "usersync": {"http_listen": f"127.0.0.1:{_free_port()}", "logto_endpoint": self.logto.url,
                                 "logto_app_id": self.logto.app_id, "logto_app_secret": self.logto.app_secret,
                                 "webhook_signing_key": self.logto.signing_key, "logto_timeout_seconds": 2.0,
                                 "logto_max_attempts": 3, "logto_retry_budget_seconds": 2.0,
                                 "delivery_poll_seconds": 0.2, "delivery_max_backoff_seconds": 1.0,
                                 "reconcile_interval_seconds": 0},
                }))
                self.processes.append(Process(service, i, config, self.folder / f"{service}-{i}.log"))
        self.bridges = self._bridges(ports)
        for process in [*self.processes, *self.bridges]:
            process.start()
        self.channel = grpc.aio.insecure_channel(targets["instance"], options=LB)
        self.direct = grpc.aio.insecure_channel(targets["instance"], options=LB)
        self.auth_channel = grpc.aio.insecure_channel(targets["auth"], options=LB)
        self.instances = instance_pb2_grpc.InstanceServiceStub(self.channel)
        self.admin_instances = instance_pb2_grpc.InstanceServiceStub(self.direct)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.auth_channel)
        self.auth_service = None
        self.db = Database(self.database_url, pool_size=2)
        self.http = httpx.AsyncClient()
        await self._serving(targets)
        await self._listening()
        await self.refusals.start([yaml.safe_load(p.config.read_text())["servers"]["auth"]["listen"]
                                for p in self.processes if p.service == "auth"])

    def _bridges(self, ports: dict[str, list[int]]) -> list[Process]:
        from gotools import bridge

        binary = bridge()
        self.bridge_urls: list[str] = []
        made = []
        for i in range(2):
            port = _free_port()
            self.bridge_urls.append(f"http://127.0.0.1:{port}")
            argv = [str(binary), "--listen", f"127.0.0.1:{port}", "--rate-limit", "0",
                    *(f"--{s}=" + ",".join(f"127.0.0.1:{p}" for p in ports[s]) for s in SERVICES)]
            made.append(Process("bridge", i, None, self.folder / f"bridge-{i}.log", argv))
        return made

    async def _listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for process, url in zip(self.bridges, self.bridge_urls, strict=True):
            while True:
                try:
                    if (await self.http.get(f"{url}/healthz", timeout=2)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{process.name} does not listen: {process.log.read_text()[-2000:]}"
                await asyncio.sleep(0.3)

    async def _serving(self, targets: dict[str, str], timeout: float = 240, only: Process | None = None) -> None:
        """Every service process (or ``only``) answers SERVING; ten processes start at once, so on a loaded
        2-core machine the last may take minutes."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        for process in [only] if only else self.processes:
            port = yaml.safe_load(process.config.read_text())["servers"][process.service]["listen"]
            async with grpc.aio.insecure_channel(port) as channel:
                while True:
                    try:
                        reply = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=2)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if process.proc is not None and process.proc.poll() is not None:
                        raise RuntimeError(f"{process.name} exited: {process.log.read_text()[-2000:]}")
                    assert time.monotonic() < deadline, f"{process.name} does not serve"
                    await asyncio.sleep(0.3)

    async def close(self) -> None:
        for process in [*getattr(self, "bridges", []), *getattr(self, "processes", [])]:
            process.stop()
        for name in ("channel", "direct", "auth_channel"):
            if hasattr(self, name):
                await getattr(self, name).close()
        if hasattr(self, "http"):
            await self.http.aclose()
        if hasattr(self, "db"):
            await self.db.close()
        await self.refusals.close()

    # -- REST through the bridges ------------------------------------------------------------------
    async def call(self, method: str, message: Any, user: str, budget: float) -> tuple[Any, str]:
        """One user operation through the bridges with the documented retry (same request_id); each attempt
        goes to the next bridge. The probe is told when an operation on an instance is sent and answered."""
        if method == "UpdateTemplate":
            return await self._call(method, message, user, budget)
        tpl = (getattr(message, "parent", "") or message.name).split("/templates/", 1)[1].split("/", 1)[0]
        self.refusals.sent(user, tpl, method)
        answer, why = await self._call(method, message, user, budget)
        ident = answer.id if answer is not None and method == "CreateInstance" else \
            int(message.name.rsplit("/", 1)[1]) if method != "CreateInstance" else None
        self.refusals.answered(user, tpl, method, ident, answer is not None, why == "GAVE_UP")
        return answer, why

    async def _call(self, method: str, message: Any, user: str, budget: float) -> tuple[Any, str]:
        from google.protobuf import json_format

        step = self.step
        assert step is not None
        counts = self.per_call.setdefault(method, [0, 0, 0, 0])
        step.attempted += 1
        counts[0] += 1
        verb, route, _ = ROUTES[method]
        body = json_format.MessageToDict(message)
        path = route.format(**{k: body.pop(k) for k in ("parent", "name") if "{" + k + "}" in route})
        token = self.admin_bearer() if method == "UpdateTemplate" else self.bearer(user)
        started, tries = time.monotonic(), 0
        while True:
            tries += 1
            url = self.bridge_urls[self.turn % len(self.bridge_urls)] + path
            self.turn += 1
            left = max(5.0, budget - (time.monotonic() - started))
            try:
                reply = await self.http.request(
                    verb, url, headers={"authorization": f"Bearer {token}"}, timeout=left,
                    json=body if verb != "DELETE" else None,
                    params={"requestId": body["requestId"]} if verb == "DELETE" else None)
                answer = reply.json()
                error = "" if reply.status_code == 200 else f"{reply.status_code} {str(answer)[:160]}"
                code = grpc.StatusCode.OK if reply.status_code == 200 else CODES.get(answer.get("code"),
                                                                                  grpc.StatusCode.UNKNOWN)
            except (httpx.HTTPError, ValueError) as exc:  # the bridge was killed: connection refused or reset
                code, answer, error = grpc.StatusCode.UNAVAILABLE, None, f"{type(exc).__name__} {exc}"[:160]
            if code == grpc.StatusCode.OK:
                step.ok += 1
                counts[1] += 1
                return types.SimpleNamespace(id=int(answer.get("id", 0)), json=answer), ""
            if code not in RETRYABLE:
                why = _rest_reason(answer) or code.name
                step.refused[why] = step.refused.get(why, 0) + 1
                self.refusal_sample.setdefault(why, f"{method}: {error}")
                return None, why
            if tries == 2:
                step.retried += 1
                counts[2] += 1
            if time.monotonic() - started > budget:
                step.failed += 1
                counts[3] += 1
                step.failures.append(f"{method} {user}: {code.name} {error}")
                return None, "GAVE_UP"
            await asyncio.sleep(0.25)

    def admin_bearer(self) -> str:
        made, token = self.admin_token
        if time.monotonic() - made > 300:
            token = self.issuer.mint("replica-admin", roles=["admin"])
            self.admin_token = (time.monotonic(), token)
        return token

    async def template_loop(self, until: float, budget: float) -> None:
        """An admin updates a template's description every 2-5 s (UpdateTemplate with the manifest GetTemplate
        answered, one annotation changed; WHEN_IDLE: no pod moves)."""
        from aigc_gateway.api.v1 import template_pb2

        n = 0
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(2, 5))
            n += 1
            name = f"namespaces/{self.namespace}/templates/{self.rng.choice(self.templates)}"
            manifest = None
            for url in self.bridge_urls:  # a read: either bridge will do
                try:
                    reply = await self.http.get(f"{url}/v1/{name}", timeout=10,
                                                headers={"authorization": f"Bearer {self.admin_bearer()}"})
                    if reply.status_code == 200:
                        manifest = reply.json()["manifest"]
                        break
                except httpx.HTTPError:
                    pass
            if manifest is None:
                continue
            manifest["metadata"].setdefault("annotations", {})["aigc.gateway.io/description"] = f"bench update {n}"
            # The instance service's fields, left out as the service asks: the value read may be stale by now (an
            # install meanwhile), and a stale one is refused (PROTECTED_FIELD).
            for key in ("replicas", "reserveGameServerIds"):
                manifest.get("spec", {}).pop(key, None)
            # As text (JSON is YAML): a Struct would carry every number as a double, and spec.replicas 1.0 is
            # refused (INVALID_REPLICAS: an integer).
            await self.call("UpdateTemplate", template_pb2.UpdateTemplateRequest(
                name=name, request_id=uuid.uuid4().hex, source=template_pb2.TemplateSource(
                    manifest=json.dumps(manifest))), "replica-admin", budget)

    async def killer(self, until: float) -> None:
        """One process down at a time: the next kill comes 4-10 s after the last victim serves again."""
        while True:
            await asyncio.sleep(self.rng.uniform(4, 10))
            if time.monotonic() >= until:
                return
            victim = self.rng.choice([p for p in [*self.processes, *self.bridges] if p.service in self.victims])
            victim.kill()
            self.refusals.process_event(victim.name, "killed")
            self.kills += 1
            self.kills_of[victim.service] = self.kills_of.get(victim.service, 0) + 1
            await asyncio.sleep(self.rng.uniform(1, 3))
            started = time.monotonic()
            victim.start()
            self.refusals.process_event(victim.name, "started")
            if victim.service == "bridge":
                await self._listening()
            else:
                await self._serving({}, only=victim)
            self.refusals.process_event(victim.name, "serving")
            self.back_after.setdefault(victim.service, []).append(time.monotonic() - started)

    async def auth_loop(self, until: float) -> None:
        """bench/chaos.py's, each check attributed to the auth process that answered and each refused owner
        explained (RefusalProbe.checks); an owner is checked only while the bench knows the instance LIVE."""
        await self.refusals.checks(until)

    async def storm(self, seconds: float) -> Step:
        step = Step("replicas", "kill-9", seconds)
        self.step = step
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(self.user_loop(u, until, 60)) for u in self.users]
        tasks += [asyncio.create_task(self.auth_loop(until)), asyncio.create_task(self.killer(until)),
                  asyncio.create_task(self.template_loop(until, 60))]
        await asyncio.gather(*tasks)
        await self.refusals.drain()
        for process in [*self.processes, *self.bridges]:
            if process.proc is None or process.proc.poll() is not None:
                process.start()
        cleared = time.monotonic()
        while not await self.healthy():
            if time.monotonic() - cleared > 120:
                break
            await asyncio.sleep(0.3)
        else:
            step.recovery = time.monotonic() - cleared
        step.consistent, step.violations = await self.consistency()
        deadline = time.monotonic() + 30
        while (lost := await self.mirror_lost()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        step.mirror_lost = lost
        return step


async def run(bed: ReplicaBed, seconds: float) -> Step:
    try:  # close() also when a process never serves: it stops every process started
        await bed.start()
        await bed.prepare()
        return await bed.storm(seconds)
    finally:
        await bed.close()


def _rest_reason(answer: Any) -> str:
    """The ErrorInfo reason of a google.rpc.Status answered as JSON by the bridge."""
    for detail in (answer or {}).get("details", []) if isinstance(answer, dict) else []:
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


def print_report(step: Step, kills: int, seed: int, bed: ReplicaBed | None = None) -> None:
    chaos.print_table([step], seed)
    print(f"kills: {kills} (SIGKILL of one of 8 service processes and 2 bridges, restarted 1-3 s later)"
          + (f": {', '.join(f'{k} {v}' for k, v in sorted(bed.kills_of.items()))}" if bed else ""))
    if bed is None:
        return
    for why, sample in sorted(bed.refusal_sample.items()):
        print(f"  refused {why}, e.g. {sample}")
    for component, seconds in sorted(bed.back_after.items()):
        print(f"  {component} restarted to serving: {', '.join(f'{x:.1f}' for x in seconds)} s")
    print(f"\n{'call (REST, both bridges)':28} {'component':10} {'ops':>5} {'ok':>5} {'retr':>5} {'fail':>5}")
    for method, (attempted, ok, retried, failed) in sorted(bed.per_call.items()):
        print(f"{method:28} {ROUTES[method][2]:10} {attempted:5d} {ok:5d} {retried:5d} {failed:5d}")
    print(f"{'AuthService.Check (gRPC)':28} {'auth':10} {step.owner_checks + step.nobody_checks:5d} "
          f"{'':5} {'':5} {'':5}  owners allowed {step.owner_allowed}/{step.owner_checks}, "
          f"non-owner allowed {step.nobody_allowed}/{step.nobody_checks}")
    bed.refusals.report(step.owner_checks, step.owner_allowed, bed.folder)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--victims", default=",".join(ReplicaBed.victims),
                        help="the components the killer picks from, e.g. auth (how long a restarted one refuses)")
    args = parser.parse_args()
    from chaos_env import environment

    print(uptime(), flush=True)
    async with environment() as env:
        bed = ReplicaBed(**env, users=args.users, seed=args.seed)
        bed.victims = tuple(args.victims.split(","))
        step = await run(bed, args.seconds)
        print_report(step, bed.kills, args.seed, bed)
        return 0 if step.good else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))


__all__ = ["META", "ReplicaBed", "run"]
