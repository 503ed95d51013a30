"""Faults on the links, under load (issue 18): a seeded schedule of toxiproxy faults, one at a time, while users
install, pause, resume and uninstall and the auth check is asked about their instances.

    python bench/chaos.py [--seed 18] [--seconds 30] [--users 6] [--faults all|LINK:FAULT,...]

The instance, auth and usersync services run in this process, each with a runtime of its own, and every link
they have goes through a private toxiproxy-server (bench/toxic.py): instance, auth and usersync to PostgreSQL
(three links), instance and auth to the apiserver, usersync to the Logto double, and the clients' gRPC link to
the instance service. Faults: latency (400±100 ms), bandwidth (8 KB/s), reset (every connection reset), timeout
(data held, connections kept open), down (closed and refused). When the schedule has them, the template service
runs too, its links to the instance and usersync services through toxiproxy (`grpc-template-instance`,
`grpc-template-usersync`: DeleteTemplate's hand-off, bench/chaos_handoff.py), and so does usersync's to the
instance service (`grpc-usersync-instance`: Logto's User.Deleted, bench/chaos_userdeleted.py); latency, reset,
timeout, down on each.
Two real restarts (bench/chaos_restart.py): `pg-restart` crashes the run's own PostgreSQL (`pg_ctl stop -m
immediate`; this bench always runs on a private server) and starts it again on the same port after the fault's
length; `kube-restart` kills the test bed's kube-apiserver and starts it again with the same command line after
the fault's length (`testbed/testbed restart`), then waits until the bed is healthy (it is shared).

The documented client retry: a call answered UNAVAILABLE/ABORTED/DEADLINE_EXCEEDED/CANCELLED/UNKNOWN/INTERNAL is
sent again with the same request_id (each attempt may take what is left of the budget) until the fault's length
+ 30 s has passed and the fault has been over for 30 s (a restart lasts until the restarted server is back).

Per fault it prints operations attempted / ok / retried / failed, auth checks of the owners (allowed, refused
while the owner map was unknown) and of a user who owns nothing (allowed must be 0), the recovery time (fault
cleared -> a GetInstance, an owner's check allowed and the Logto outbox drained), and the invariants:
CheckConsistency, the Logto mirror (every owner's key as PostgreSQL says, no other key), and no allow of a
non-owner. Exit status 0 only when every fault's invariants held and nothing failed beyond the retry.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chaos_faults  # noqa: E402
from chaos_handoff import HANDOFF_LINKS, HandoffLoad  # noqa: E402
from chaos_restart import PrivatePostgres  # noqa: E402
from chaos_steps import Step, print_table, schedule  # noqa: E402, F401 - the tests use them from here
from chaos_userdeleted import USERDELETED_LINKS, UserDeletedLoad  # noqa: E402
from kill_storm import RETRYABLE, _reason  # noqa: E402
from toxic import Proxy, Toxiproxy  # noqa: E402

TOKEN = "chaos-service-token-" + uuid.uuid4().hex
META = (("x-aigc-service-token", TOKEN), ("x-aigc-service-name", "chaos"))
AFTER_FAULT = 30.0  # the documented retry goes on this long after a fault is over
NOBODY = "mallory"  # owns nothing, ever: any allow of hers is an allow of a non-owner


class ChaosBed:
    """The services in this process behind toxiproxy, and the load. ``issuer`` mints users' JWTs
    (tests/plugins/oidc.py's Issuer); ``logto`` is a started tests/doubles/logto.py LogtoDouble."""

    def __init__(self, *, namespace: str, database_url: str, kubeconfig: str, issuer: Any, logto: Any,
                 templates: tuple[str, ...], domain: str, folder: Path, users: int, seed: int,
                 release_wait: float = 30.0, postgres: PrivatePostgres | None = None):
        self.namespace, self.database_url, self.kubeconfig = namespace, database_url, kubeconfig
        self.issuer, self.logto, self.templates, self.domain = issuer, logto, templates, domain
        self.folder, self.rng, self.release_wait = folder, random.Random(seed), release_wait
        self.users = [f"chaos-{i:02d}" for i in range(users)]
        self.toxi = Toxiproxy(folder / "toxiproxy.log")
        self.proxies: dict[str, Proxy] = {}
        self.gateways: list[Any] = []
        self.mine: dict[tuple[str, str], tuple[int, str] | None] = {}
        self.step: Step | None = None
        self.tokens: dict[str, tuple[float, str]] = {}
        self.probe: tuple[str, int] | None = None  # (template, id) owned by "chaos-probe", never touched
        self.auth_service: Any = None
        self.postgres = postgres  # the run's own server: pg-restart crashes it (None: no pg-restart)
        self.with_template = False  # run() sets it when a step needs the template service
        self.handoff = HandoffLoad(self)
        self.leaver = UserDeletedLoad(self)
        self.admin_token: tuple[float, str] = (0.0, "")
        self.cleared_at: float | None = 0.0  # when the current fault ended; None while it is on

    # -- wiring ----------------------------------------------------------------------------------
    async def start(self) -> None:
        from sqlalchemy.engine import make_url

        from aigc_gateway.config import Settings
        from aigc_gateway.runtime import Runtime
        from aigc_gateway.server import GatewayServer, load_service

        self.toxi.start()
        db = make_url(self.database_url)
        pg = f"{db.host}:{db.port or 5432}"
        kube = yaml.safe_load(Path(self.kubeconfig).read_text())
        api = kube["clusters"][0]["cluster"]["server"].split("//", 1)[1]
        for link, upstream in (("pg-instance", pg), ("pg-auth", pg), ("pg-usersync", pg), ("kube", api),
                               ("logto", self.logto.url.split("//", 1)[1].rstrip("/"))):
            self.proxies[link] = self.toxi.proxy(link, upstream)
        for cluster in kube["clusters"]:
            cluster["cluster"]["server"] = f"https://{self.proxies['kube'].listen}"
        proxied_kube = self.folder / "kubeconfig-proxied"
        proxied_kube.write_text(yaml.safe_dump(kube))
        ports = {name: _free_port() for name in ("template", "instance", "auth", "usersync")}
        for user in [*self.users, "chaos-probe", NOBODY]:
            self.logto.add_user(user)

        def settings(pg_link: str, servers: dict[str, dict[str, str]] | None = None) -> Settings:
            url = self.database_url if pg_link == "direct" else db.set(
                host="127.0.0.1", port=self.proxies[pg_link].port).render_as_string(hide_password=False)
            return Settings.model_validate({
                "domain": self.domain, "namespaces": [self.namespace],
                "database": {"url": url, "pool_size": 5},
                "oidc": {"issuer": self.issuer.url, "audience": [self.issuer.audience]},
                "service_identity": {"token": TOKEN},
                "servers": {n: {"listen": f"127.0.0.1:{p}"} for n, p in ports.items()} | (servers or {})
                | {"metrics_listen": ""},
                "kubernetes": {"kubeconfig": str(proxied_kube)},
                "logging": {"level": "WARNING", "json": True},
                "instance": {"reconcile_interval_seconds": 2, "release_wait_seconds": self.release_wait},
                "auth": {"http_listen": "", "http_workers": 0, "owners_stale_after_seconds": 5},
                "usersync": {"http_listen": "127.0.0.1:0", "logto_endpoint": f"http://{self.proxies['logto'].listen}",
                             "logto_app_id": self.logto.app_id, "logto_app_secret": self.logto.app_secret,
                             "webhook_signing_key": self.logto.signing_key, "logto_timeout_seconds": 2.0,
                             "logto_max_attempts": 3, "logto_retry_budget_seconds": 2.0,
                             "delivery_poll_seconds": 0.2, "delivery_max_backoff_seconds": 1.0,
                             "reconcile_interval_seconds": 0},
            })

        # usersync's calls to the instance service (User.Deleted) go through a link of their own.
        self.proxies["grpc-usersync-instance"] = self.toxi.proxy("grpc-usersync-instance",
                                                                 f"127.0.0.1:{ports['instance']}")
        to_instance = {"instance": {"listen": f"127.0.0.1:{ports['instance']}",
                                    "target": self.proxies["grpc-usersync-instance"].listen}}
        for service in ("instance", "auth", "usersync"):
            runtime = Runtime.create(settings(f"pg-{service}", to_instance if service == "usersync" else None))
            server = GatewayServer(service, runtime, load_service(service, runtime))
            await server.start()
            self.gateways.append((runtime, server))
        from aigc_gateway.services.auth.app import AuthService

        self.auth_service = self.gateways[1][1].parts.service_as(AuthService)
        if self.with_template:
            # Its database link is direct: the faults here are on its links to the other services.
            hops = {s: {"listen": f"127.0.0.1:{ports[s]}", "target": self.toxi.proxy(
                f"grpc-template-{s}", f"127.0.0.1:{ports[s]}").listen} for s in ("instance", "usersync")}
            self.proxies.update({f"grpc-template-{s}": self.toxi.proxies[f"grpc-template-{s}"] for s in hops})
            runtime = Runtime.create(settings("direct", hops))
            server = GatewayServer("template", runtime, load_service("template", runtime))
            await server.start()
            self.gateways.append((runtime, server))
        self.proxies["grpc-instance"] = self.toxi.proxy("grpc-instance", f"127.0.0.1:{ports['instance']}")
        from aigc_gateway.api.v1 import auth_pb2_grpc, instance_pb2_grpc

        self.channel = grpc.aio.insecure_channel(self.proxies["grpc-instance"].listen, options=[
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)])
        self.direct = grpc.aio.insecure_channel(f"127.0.0.1:{ports['instance']}")
        self.auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['auth']}")
        self.instances = instance_pb2_grpc.InstanceServiceStub(self.channel)
        self.admin_instances = instance_pb2_grpc.InstanceServiceStub(self.direct)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.auth_channel)
        from aigc_gateway.api.v1 import template_pb2_grpc
        from aigc_gateway.config import KubernetesConfig
        from aigc_gateway.db import Database
        from aigc_gateway.kube import Kube

        self.template_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['template']}")
        self.template_stub = template_pb2_grpc.TemplateServiceStub(self.template_channel)
        self.kube = await Kube.connect(KubernetesConfig(kubeconfig=self.kubeconfig)) if self.with_template else None
        self.db = Database(self.database_url, pool_size=2)

    async def close(self) -> None:
        for channel in (self.channel, self.direct, self.auth_channel, self.template_channel):
            await channel.close()
        if self.kube is not None:
            await self.kube.close()
        for runtime, server in reversed(self.gateways):
            await server.stop(0)
            await runtime.close()
        await self.db.close()
        self.toxi.stop()

    # -- calls -----------------------------------------------------------------------------------
    def bearer(self, user: str) -> str:
        made, token = self.tokens.get(user, (0.0, ""))
        if time.monotonic() - made > 300:  # the issuer's tokens live 600 s
            token = self.issuer.mint(user)
            self.tokens[user] = (time.monotonic(), token)
        return token

    def admin_bearer(self) -> str:
        made, token = self.admin_token
        if time.monotonic() - made > 300:
            token = self.issuer.mint("chaos-admin", roles=["admin"])
            self.admin_token = (time.monotonic(), token)
        return token

    def left_after_fault(self) -> float:
        """What is left of the retry's 30 s after the fault is over; the full 30 s while it is on (a restart's
        length is known only once the apiserver is back)."""
        if self.cleared_at is None:
            return AFTER_FAULT
        return AFTER_FAULT - (time.monotonic() - self.cleared_at)

    async def call(self, method: str, message: Any, user: str, budget: float) -> tuple[Any, str]:
        """One user operation with the documented retry (same request_id)."""
        step = self.step
        assert step is not None
        step.attempted += 1
        started, tries = time.monotonic(), 0
        while True:
            tries += 1
            try:
                # An attempt may take as long as the call does (DeleteInstance waits for the disks).
                left = max(5.0, budget - (time.monotonic() - started), self.left_after_fault())
                answer = await getattr(self.instances, method)(
                    message, metadata=(("authorization", f"Bearer {self.bearer(user)}"),), timeout=left)
                step.ok += 1
                return answer, ""
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    why = _reason(exc) or exc.code().name
                    step.refused[why] = step.refused.get(why, 0) + 1
                    return None, why
                if tries == 2:
                    step.retried += 1
                if time.monotonic() - started > budget and self.left_after_fault() <= 0:
                    step.failed += 1
                    step.failures.append(f"{method} {user}: {exc.code().name} {exc.details()[:120]}")
                    return None, "GAVE_UP"
                await asyncio.sleep(0.25)

    async def check(self, user: str, template: str, ident: int) -> bool:
        from aigc_gateway.api.v1 import auth_pb2

        url = f"http://{template}-{ident}-cpu.{self.domain}/"
        known_before = self.known()
        reply = await self.auth.Check(auth_pb2.CheckRequest(url=url, bearer_token=self.bearer(user)),
                                      metadata=META, timeout=10)
        allowed = reply.decision == auth_pb2.CheckResponse.ALLOW
        if self.step is not None and not known_before and not self.known() and allowed:
            self.step.allowed_while_unknown += 1
        return allowed

    def known(self) -> bool:
        """Whether the (in-process) auth service's owner map is current; True when it runs elsewhere."""
        return self.auth_service is None or self.auth_service.owners.known

    # -- load ------------------------------------------------------------------------------------
    async def user_loop(self, user: str, until: float, budget: float) -> None:
        from aigc_gateway.api.v1 import instance_pb2

        while time.monotonic() < until:
            tpl = self.rng.choice(self.templates)
            have = self.mine.get((user, tpl))
            parent = f"namespaces/{self.namespace}/templates/{tpl}"
            rid = uuid.uuid4().hex
            if have is None:
                answer, _ = await self.call("CreateInstance", instance_pb2.CreateInstanceRequest(
                    parent=parent, request_id=rid), user, budget)
                if answer is not None:
                    self.mine[(user, tpl)] = (answer.id, "LIVE")
                continue
            ident, state = have
            name = f"{parent}/instances/{ident}"
            op = self.rng.choice(["pause", "uninstall"] if state == "LIVE" else ["resume", "uninstall"])
            method, message = {
                "pause": ("PauseInstance", instance_pb2.PauseInstanceRequest(name=name, request_id=rid)),
                "resume": ("ResumeInstance", instance_pb2.ResumeInstanceRequest(name=name, request_id=rid)),
                "uninstall": ("DeleteInstance", instance_pb2.DeleteInstanceRequest(name=name, request_id=rid)),
            }[op]
            answer, _ = await self.call(method, message, user, budget)
            if answer is not None:
                self.mine[(user, tpl)] = None if op == "uninstall" else (ident, "PAUSED" if op == "pause" else "LIVE")
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    async def auth_loop(self, until: float) -> None:
        while time.monotonic() < until:
            step = self.step
            assert step is not None
            live = [(u, t, v[0]) for (u, t), v in list(self.mine.items()) if v is not None and v[1] == "LIVE"]
            if self.probe is not None:
                live.append(("chaos-probe", *self.probe))
            for user, tpl, ident in live:
                try:
                    step.nobody_checks += 1
                    if await self.check(NOBODY, tpl, ident):
                        step.nobody_allowed += 1
                    step.owner_checks += 1
                    if await self.check(user, tpl, ident):
                        step.owner_allowed += 1
                    elif not self.known():
                        step.refused_unknown += 1
                except grpc.aio.AioRpcError:
                    pass  # the auth service answers from memory; an error here is no decision
            await asyncio.sleep(0.2)

    # -- faults ----------------------------------------------------------------------------------
    async def apply(self, step: Step) -> list[Any]:
        """Start the fault; returns what to undo (bench/chaos_faults.py)."""
        return await chaos_faults.apply(self, step)

    async def healthy(self) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        from aigc_gateway.api.v1 import instance_pb2

        try:
            if self.probe is None:
                return False
            tpl, ident = self.probe
            await self.instances.GetInstance(instance_pb2.GetInstanceRequest(
                name=f"namespaces/{self.namespace}/templates/{tpl}/instances/{ident}"),
                metadata=(("authorization", f"Bearer {self.bearer('chaos-probe')}"),), timeout=5)
            return await self.check("chaos-probe", tpl, ident) and await self.outbox_drained()
        except (grpc.aio.AioRpcError, SQLAlchemyError, OSError):
            return False  # OSError, SQLAlchemyError: this bench's own pool after a PostgreSQL restart

    async def outbox_drained(self) -> bool:
        from sqlalchemy import func, select

        from aigc_gateway.db.models import UserSyncOutboxRow

        async with self.db.session() as session:
            left = await session.scalar(select(func.count()).select_from(UserSyncOutboxRow).where(
                UserSyncOutboxRow.delivered_at.is_(None)))
        return left == 0

    async def mirror_lost(self) -> list[str]:
        return await chaos_faults.mirror_lost(self)

    async def consistency(self, timeout: float = 90) -> tuple[bool, list[str]]:
        from kill_storm import consistency

        return await consistency(self.admin_instances, self.namespace, META, timeout)

    async def run_step(self, step: Step, *, settle: float = 2.0) -> Step:
        self.step = step
        budget = step.seconds + 30
        until = time.monotonic() + step.seconds + settle
        load = [asyncio.create_task(self.user_loop(u, until, budget)) for u in self.users]
        load.append(asyncio.create_task(self.auth_loop(until)))
        # A fault between two services has an operation of its own that crosses the link.
        crossing = self.handoff if step.link in HANDOFF_LINKS else \
            self.leaver if step.link in USERDELETED_LINKS else None
        if crossing is not None:
            await crossing.prepare()
        await asyncio.sleep(settle / 2)
        self.cleared_at = None
        undo = await self.apply(step)
        if crossing is not None:  # a hand-off: the fault lasts until the hand-off meets it, and its length after
            await crossing.during(step)
        await asyncio.sleep(step.seconds)
        for action in undo:
            done = action()
            if asyncio.iscoroutine(done):
                await done
        cleared = self.cleared_at = time.monotonic()
        await asyncio.gather(*load)
        if crossing is not None:
            crossing.link_back()
            await crossing.finish(step)
        while not await self.healthy():
            if time.monotonic() - cleared > 120:
                break
            await asyncio.sleep(0.2)
        else:
            step.recovery = time.monotonic() - cleared
        step.consistent, step.violations = await self.consistency()
        deadline = time.monotonic() + 30
        while (lost := await self.mirror_lost()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the last answers' outbox rows are still being delivered
        step.mirror_lost = lost
        return step

    async def prepare(self) -> None:
        """The probe's instance: installed before any fault, never touched by the load."""
        from aigc_gateway.api.v1 import instance_pb2

        self.step = Step("-", "prepare", 0)
        answer, why = await self.call("CreateInstance", instance_pb2.CreateInstanceRequest(
            parent=f"namespaces/{self.namespace}/templates/{self.templates[0]}", request_id=uuid.uuid4().hex),
            "chaos-probe", 60)
        assert answer is not None, f"the probe's install failed: {why}"
        self.probe = (self.templates[0], answer.id)
        deadline = time.monotonic() + 60
        while not await self.healthy():
            assert time.monotonic() < deadline, "the probe's instance never became reachable through auth"
            await asyncio.sleep(0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(bed: ChaosBed, steps: list[Step]) -> list[Step]:
    bed.with_template = any(s.link in HANDOFF_LINKS for s in steps)
    await bed.start()
    try:
        await bed.prepare()
        for step in steps:
            await bed.run_step(step)
            print_table([step], -1, header=False)  # each row as it ends: a cut-short run still has its table
            sys.stdout.flush()
    finally:
        await bed.close()
    return steps


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--seconds", type=float, default=30, help="length of each fault")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--faults", default="all", help="comma list, e.g. pg-auth:down,kube:latency,pg-restart,"
                        "grpc-template-instance:down")
    parser.add_argument("--kube-down", type=float, default=5.0,
                        help="seconds the apiserver stays down in kube-restart, at most (the test bed is shared)")
    parser.add_argument("--release-wait", type=float, default=30.0,
                        help="instance.release_wait_seconds (2 made a FREE slot keep its disk once, see the notes)")
    args = parser.parse_args()
    from chaos_env import environment

    async with environment(private_postgres=True) as env:
        bed = ChaosBed(**env, users=args.users, seed=args.seed, release_wait=args.release_wait)
        steps = await run(bed, schedule(args.seed, args.seconds, args.faults, args.kube_down))
        print_table(steps, args.seed)
        return 0 if all(s.good for s in steps) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
