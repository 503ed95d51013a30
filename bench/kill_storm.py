"""Kill storm (issue 20): two `aigc-gateway serve instance` processes on one PostgreSQL, 16 users installing,
pausing, resuming, restarting and uninstalling on three templates, every call with a `request_id`, a failed
call retried with the same `request_id` on the other process (30 s budget); one process killed with SIGKILL
every 5-20 s and started again 1-3 s later. Seeded.

    python bench/kill_storm.py [--seconds 180] [--users 16] [--seed 20] [--lease 10]

Prints operations attempted/ok/retried/failed, wrong answers (an answer that is not what the first attempt
did: another owner, INSTANCE_EXISTS for a retried install, INSTANCE_NOT_FOUND for a retried delete), the
p50/p99 time from a kill to the answer of a call that the kill interrupted, and CheckConsistency at the end.
Exit status 0 only when nothing failed beyond the budget, no answer was wrong and the allocator is consistent.

Needs the test bed and PostgreSQL, as bench/install_burst.py (whose helpers it uses); everything lives in a
namespace and a database of its own, deleted at the end (--keep keeps them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install_burst import kubeconfig, server_url, template  # noqa: E402
from procs import free_port, wait_serving  # noqa: E402

TOKEN = "storm-service-token-" + uuid.uuid4().hex
BUDGET = 30.0  # seconds a client keeps retrying one operation
TEMPLATES = ("storm-a", "storm-b", "storm-c")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass
class Report:
    attempted: int = 0
    ok: int = 0
    retried: int = 0
    failed: int = 0
    unanswered: int = 0  # not even after four budgets
    wrong: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # first-time refusals the model expects
    kill_to_answer: list[float] = field(default_factory=list)
    kill_to_taken: list[float] = field(default_factory=list)  # from the last kill until a retry got past its claim
    # From the kill, or from the call's start when it was sent to a replica already dead (not interrupted by it).
    sent_to_answer: list[float] = field(default_factory=list)
    kills_per_call: Counter[int] = field(default_factory=Counter)  # interrupted calls by how many kills hit them
    restart_to_serving: list[float] = field(default_factory=list)  # a killed replica's start until SERVING
    # Interrupted calls answered later than lease + 2 s: (seconds, trace, request id, kill to the claim taken over).
    slow: list[tuple[float, str, str, float]] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)  # per method, calls never interrupted
    kills: int = 0
    consistent: bool | None = None
    violations: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # the replicas' allocator step lines (timing.py)
    load: list[tuple[float, float, float]] = field(default_factory=list)  # os.getloadavg() at start and end
    controllers: list[str] = field(default_factory=list)  # what the OKG managers did meanwhile

    def pct(self, q: float, values: list[float] | None = None) -> float:
        ordered = sorted(self.kill_to_answer if values is None else values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def good(self) -> bool:
        return not self.failed and not self.wrong and bool(self.consistent)

    def print(self, seconds: float, users: int, seed: int, lease: float) -> None:
        print(f"\nkill storm: {seconds:.0f} s, {users} users, {len(TEMPLATES)} templates, seed {seed}, "
              f"lease {lease:.0f} s, {self.kills} kills")
        print(f"operations attempted {self.attempted}, ok {self.ok}, retried {self.retried}, "
              f"failed {self.failed} (beyond a {BUDGET:.0f} s retry budget; {self.unanswered} never answered), "
              f"wrong answers {len(self.wrong)}")
        print(f"refusals the model expected: {dict(self.refused)}")
        print(f"kill-to-answer of interrupted calls: n={len(self.kill_to_answer)} p50 {self.pct(0.5):.2f} s "
              f"p99 {self.pct(0.99):.2f} s max {max(self.kill_to_answer, default=float('nan')):.2f} s")
        print(f"  counted from the call's start when it was sent to a replica already dead: "
              f"p50 {self.pct(0.5, self.sent_to_answer):.2f} s p99 {self.pct(0.99, self.sent_to_answer):.2f} s")
        print(f"  interrupted calls by kills that hit them: {dict(sorted(self.kills_per_call.items()))} (a retry "
              "still running when the other replica is killed is hit again; kill-to-answer counts from the first)")
        print(f"  from the last kill to the retry that got past its claim: p50 {self.pct(0.5, self.kill_to_taken):.2f}"
              f" s p99 {self.pct(0.99, self.kill_to_taken):.2f} s; the rest is the operation itself:")
        for method, values in sorted(self.latency.items()):
            ordered = sorted(values)
            print(f"  {method:16} uninterrupted n={len(ordered)} p50 {ordered[len(ordered) // 2]:.2f} s "
                  f"p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.2f} s")
        starts = sorted(self.restart_to_serving)
        if starts:
            print(f"  a killed replica's start to SERVING: n={len(starts)} p50 {starts[len(starts) // 2]:.2f} s "
                  f"max {starts[-1]:.2f} s (both replicas are down when a kill lands inside this window)")
        self.print_steps()
        for line in self.controllers:
            print(line)
        print("load average (1/5/15 min): " + "; ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in self.load))
        print(f"CheckConsistency: {'consistent' if self.consistent else 'VIOLATIONS'} {self.violations}")
        for line in self.wrong[:20]:
            print("  wrong:", line)
        self.print_slow(lease)

    def print_slow(self, lease: float) -> None:
        """Where the time of the answers later than lease + 2 s went: the kill until a retry got past its claim,
        then the answering attempt's step on its replica (its lock wait, the controller's settle, the rest), or
        the time it waited for a batch that another call's run wrote (the request id is sent as x-request-id, so
        the replicas' log lines carry it)."""
        if not self.slow:
            return
        by_id: dict[str, list[dict[str, Any]]] = {}
        for s in self.steps:
            by_id.setdefault(s.get("request_id") or "", []).append(s)
        parts: dict[str, list[float]] = {"claim": [], "lock": [], "settle": [], "rest": [], "other batch": []}
        lines = []
        for took, trace, rid, to_taken in sorted(self.slow, reverse=True):
            step = (by_id.get(rid) or [None])[-1]  # the answering attempt's (an earlier one died with its replica)
            parts["claim"].append(to_taken)
            if step is None:
                parts["other batch"].append(took - to_taken)
                where = f"served by another call's batch or without the lock: {took - to_taken:.1f}"
            else:
                lock, settle = step.get("lock", 0.0), step.get("settle", 0.0)
                for key, value in (("lock", lock), ("settle", settle), ("rest", step["total"] - lock - settle)):
                    parts[key].append(value)
                where = (f"{step['op']} step ({step['calls']} calls) lock {lock:.1f} settle {settle:.1f} rest "
                         f"{step['total'] - lock - settle:.1f} (attempts {step.get('attempts')}, "
                         f"writes {step.get('writes')})")
            lines.append(f"  {took:5.1f} s: claim taken over after {to_taken:.1f}; {where}; {trace}")
        print(f"answers later than lease + 2 s ({len(self.slow)}), summed by part (s): "
              + ", ".join(f"{k} {sum(v):.0f} (n={len(v)})" for k, v in parts.items()))
        for line in lines[:8]:
            print(line)


    def print_steps(self) -> None:
        """Per step kind, p50/p99 of each phase (services/instance/timing.py) over the steps that ended OK."""
        from aigc_gateway.services.instance.timing import PHASES

        kinds = sorted({s["op"] for s in self.steps})
        if not kinds:
            return
        print("where an allocator step's time goes (seconds, p50/p99; steps that ended OK, all replicas):")
        print(f"  {'step':9} {'n':>4} {'calls':>5} {'total':>11} " + " ".join(f"{p:>11}" for p in PHASES))
        for kind in kinds:
            done = [s for s in self.steps if s["op"] == kind and s["outcome"] == "OK"]
            if not done:
                continue
            cells = [self._p(done, "total")] + [self._p(done, p) for p in PHASES]
            calls = sum(s["calls"] for s in done) / len(done)
            print(f"  {kind:9} {len(done):>4} {calls:>5.1f} " + " ".join(f"{c:>11}" for c in cells))
        failed = Counter(f"{s['op']} {s['outcome']}" for s in self.steps if s["outcome"] != "OK")
        if failed:
            print(f"  steps not OK: {dict(failed)}")

    @staticmethod
    def _p(steps: list[dict[str, Any]], key: str) -> str:
        values = sorted(s.get(key, 0.0) for s in steps)
        return f"{values[len(values) // 2]:.2f}/{values[min(len(values) - 1, int(0.99 * len(values)))]:.2f}"


def read_steps(logs: list[Path]) -> list[dict[str, Any]]:
    """The allocator step lines the replicas logged (JSON logs; a line cut by a SIGKILL is skipped)."""
    out = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"step": {' not in line:
                continue
            try:
                record = json.loads(line)
                out.append(record["step"] | {"request_id": record.get("request_id", "")})
            except (ValueError, KeyError):
                continue
    return out


CONTROLLER_METRICS = {"kruise-game": "http://127.0.0.1:16977/metrics", "kruise": "http://127.0.0.1:16877/metrics"}


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as {series: value}; {} when the manager does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                continue
    return out


def controller_lines(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                     seconds: float) -> list[str]:
    """The OKG managers' work during the run: reconciles, mean time queued and working per controller, and
    their API requests per second (the client's QPS limit applies per resource kind)."""
    lines = []
    for manager, now in after.items():
        then = before.get(manager) or {}
        delta = {k: v - then.get(k, 0.0) for k, v in now.items()}
        requests = sum(v for k, v in delta.items() if k.startswith("rest_client_requests_total"))
        parts = []
        for key, count in sorted(delta.items()):
            if key.startswith("workqueue_work_duration_seconds_count") and count > 0:
                name = key.split('name="', 1)[1].split('"', 1)[0]
                queued = delta.get(key.replace("work_duration", "queue_duration").replace("_count", "_sum"), 0.0)
                work = delta.get(key.replace("_count", "_sum"), 0.0)
                parts.append(f"{name} {count:.0f}x queued {queued / count:.3f} s work {work / count:.3f} s")
        lines.append(f"{manager}-manager during the run: {requests / seconds:.1f} API requests/s; " + "; ".join(parts))
    return lines


class Replica:
    """One `serve instance` process, killed and started again by the storm."""

    def __init__(self, index: int, config: Path, port: int, log: Path, lease: float):
        self.index, self.config, self.port, self.log, self.lease = index, config, port, log, lease
        self.proc: subprocess.Popen | None = None
        self.killed_at = 0.0
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_GATEWAY")}
        env["AIGC_GATEWAY__IDEMPOTENCY__REPLICA_LEASE_SECONDS"] = str(self.lease)
        self.proc = subprocess.Popen([sys.executable, "-m", "aigc_gateway.cli", "serve", "instance", "-c",
                                      str(self.config)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    async def serving(self, timeout: float = 120) -> None:
        if not await wait_serving(self.channel, "InstanceService", timeout, poll=0.3):
            raise RuntimeError(f"replica {self.index} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.killed_at = time.monotonic()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def config_file(folder: Path, index: int, namespace: str, url: str, kube: str) -> tuple[Path, int]:
    port = free_port()
    path = folder / f"replica-{index}.yaml"
    path.write_text(yaml.safe_dump({
        "namespaces": [namespace], "database": {"url": url, "pool_size": 5},
        "service_identity": {"token": TOKEN}, "kubernetes": {"kubeconfig": kube},
        "servers": {"instance": {"listen": f"127.0.0.1:{port}"}, "metrics_listen": ""},
        "logging": {"level": "INFO", "json": True},
        "instance": {"reconcile_interval_seconds": 2, "settle_timeout_seconds": 60},
    }))
    return path, port


async def storm(namespace: str, url: str, kube: str, folder: Path, *, seconds: float, users: int, seed: int,
                lease: float, templates: tuple[str, ...] = TEMPLATES) -> Report:
    """Run the storm against the namespace's templates (made by the caller) and return the report."""
    from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc

    rng = random.Random(seed)
    report = Report()
    report.load.append(os.getloadavg())
    metrics_before = {m: await asyncio.to_thread(scrape, u) for m, u in CONTROLLER_METRICS.items()}
    storm_started = time.monotonic()
    replicas = []
    for i in range(2):
        path, port = config_file(folder, i, namespace, url, kube)
        replicas.append(Replica(i, path, port, folder / f"replica-{i}.log", lease))
    for r in replicas:
        r.start()
    for r in replicas:
        await r.serving()
    stubs = [instance_pb2_grpc.InstanceServiceStub(r.channel) for r in replicas]
    metadata = (("x-aigc-service-token", TOKEN), ("x-aigc-service-name", "storm"))
    mine: dict[tuple[str, str], tuple[int, str] | None] = {}  # (user, template) -> (id, LIVE|PAUSED)
    end = time.monotonic() + seconds

    async def killer() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(5, 20))
            if time.monotonic() >= end:
                return
            victim = rng.choice(replicas)
            victim.kill()
            report.kills += 1
            await asyncio.sleep(rng.uniform(1, 3))
            victim.start()
            asyncio.get_running_loop().create_task(timed_start(victim))

    async def timed_start(replica: Replica) -> None:
        begun = time.monotonic()
        try:
            await replica.serving()
        except RuntimeError:
            return  # killed again before it served
        report.restart_to_serving.append(time.monotonic() - begun)

    async def call(method: str, message: Any) -> tuple[Any, str]:
        """One operation with its retries; returns (answer or None, refusal reason or "")."""
        report.attempted += 1
        started = time.monotonic()
        target = rng.randrange(2)
        interrupted_at = 0.0
        kills_seen: set[float] = set()  # the kills that hit this call (a retry running when the other one dies)
        last_kill = 0.0
        tries = 0
        taken_at = 0.0
        gave_up = False
        trace: list[str] = []
        while True:
            tries += 1
            sent = time.monotonic()
            try:
                answer = await getattr(stubs[target], method)(
                    message, metadata=(*metadata, ("x-request-id", message.request_id)), timeout=BUDGET)
                report.ok += not gave_up
                if interrupted_at:
                    took = time.monotonic() - interrupted_at
                    report.kill_to_answer.append(took)
                    report.kill_to_taken.append((taken_at or sent) - last_kill)
                    report.kills_per_call[len(kills_seen)] += 1
                    report.sent_to_answer.append(time.monotonic() - max(interrupted_at, started))
                    trace.append(f"+{time.monotonic() - interrupted_at:.1f} OK@{target}")
                    if took > lease + 2:
                        report.slow.append((took, f"{method} {message.request_id} " + " ".join(trace),
                                            message.request_id, (taken_at or sent) - interrupted_at))
                elif tries == 1:
                    report.latency.setdefault(method, []).append(time.monotonic() - sent)
                return answer, ""
            except grpc.aio.AioRpcError as exc:
                trace.append(f"+{time.monotonic() - (interrupted_at or started):.1f} {exc.code().name}@{target}"
                             f"({_reason(exc)})")
                if interrupted_at and not taken_at and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    taken_at = sent  # it ran (past the claim) and was slow
                if exc.code() not in RETRYABLE:
                    return None, _reason(exc) or exc.code().name
                if replicas[target].killed_at >= sent - 0.5 or replicas[target].proc.poll() is not None:
                    interrupted_at = interrupted_at or replicas[target].killed_at or sent
                    kill = replicas[target].killed_at or sent
                    if kill not in kills_seen:
                        kills_seen.add(kill)
                        last_kill, taken_at = kill, 0.0  # a retry that ran past a claim was killed in turn
                if tries == 2:
                    report.retried += 1
                if time.monotonic() - started > BUDGET and not gave_up:
                    # Failed for the user; keep retrying (the same request id) so the model stays right.
                    gave_up = True
                    report.failed += 1
                    print(f"{method} {message.request_id} still unanswered after {BUDGET:.0f} s: "
                          f"{exc.code().name} {exc.details()}; " + " ".join(trace[-6:]))
                if time.monotonic() - started > 4 * BUDGET:
                    report.unanswered += 1
                    return None, "GAVE_UP"
                target = 1 - target if exc.code() != grpc.StatusCode.ABORTED or rng.random() < 0.5 else target
                await asyncio.sleep(0.25 if exc.code() == grpc.StatusCode.ABORTED else 0.1)

    async def user(u: str) -> None:
        while time.monotonic() < end:
            tpl = rng.choice(templates)
            have = mine.get((u, tpl))
            parent = f"namespaces/{namespace}/templates/{tpl}"
            rid = uuid.uuid4().hex
            if have is None:
                answer, why = await call("CreateInstance", instance_pb2.CreateInstanceRequest(
                    parent=parent, owner=u, request_id=rid))
                if answer is not None:
                    check(answer, u, f"{u} install {tpl}")
                    mine[(u, tpl)] = (answer.id, "LIVE")
                elif why != "GAVE_UP":
                    report.wrong.append(f"{u} install {tpl}: refused {why}")
                continue
            instance_id, state = have
            name = f"{parent}/instances/{instance_id}"
            op = rng.choice(["pause", "restart", "uninstall"] if state == "LIVE" else ["resume", "uninstall"])
            method, message = {
                "pause": ("PauseInstance", instance_pb2.PauseInstanceRequest(name=name, request_id=rid)),
                "resume": ("ResumeInstance", instance_pb2.ResumeInstanceRequest(name=name, request_id=rid)),
                "restart": ("RestartInstance", instance_pb2.RestartInstanceRequest(name=name, request_id=rid)),
                "uninstall": ("DeleteInstance", instance_pb2.DeleteInstanceRequest(name=name, request_id=rid)),
            }[op]
            answer, why = await call(method, message)
            if answer is None:
                if why == "NOT_RUNNING" and op == "restart":
                    report.refused[why] += 1  # restart of an instance still starting: a right refusal
                elif why != "GAVE_UP":
                    report.wrong.append(f"{u} {op} {name}: refused {why}")
                continue
            check(answer, u, f"{u} {op} {name}")
            if op == "uninstall":
                mine[(u, tpl)] = None
            elif op in ("pause", "resume"):
                mine[(u, tpl)] = (instance_id, "PAUSED" if op == "pause" else "LIVE")
            await asyncio.sleep(rng.uniform(0.0, 0.5))

    def check(answer: Any, owner: str, what: str) -> None:
        if answer.owner != owner:
            report.wrong.append(f"{what}: answered with owner {answer.owner!r}")

    try:
        killing = asyncio.create_task(killer())
        await asyncio.gather(*(user(f"storm-user-{i:02d}") for i in range(users)))
        await killing
        report.load.append(os.getloadavg())
        metrics_after = {m: await asyncio.to_thread(scrape, u) for m, u in CONTROLLER_METRICS.items()}
        report.controllers = controller_lines(metrics_before, metrics_after, time.monotonic() - storm_started)
        for r in replicas:
            if r.proc is None or r.proc.poll() is not None:
                r.start()
        report.consistent, report.violations = await consistency(stubs[0], namespace, metadata)
    finally:
        for r in replicas:
            r.stop()
            await r.channel.close()
        report.steps = read_steps([r.log for r in replicas])
    return report


async def consistency(stub: Any, namespace: str, metadata: Any, timeout: float = 120) -> tuple[bool, list[str]]:
    from aigc_gateway.api.v1 import instance_pb2

    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        try:
            reply = await stub.CheckConsistency(instance_pb2.CheckConsistencyRequest(
                parent=f"namespaces/{namespace}/templates/-"), metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            found = [exc.code().name]
            await asyncio.sleep(1)
            continue
        found = [f"{v.template.rsplit('/', 1)[-1]}/{v.id} {v.code}" for v in reply.violations]
        if reply.consistent:
            return True, []
        await asyncio.sleep(2)  # the reconciler finishes what the last kill interrupted
    return False, found


def _reason(exc: grpc.aio.AioRpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason
    return ""


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--lease", type=float, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the namespace, the database and the logs")
    args = parser.parse_args()

    import tempfile

    import asyncpg

    from aigc_gateway.config import KubernetesConfig
    from aigc_gateway.db.migrate import upgrade
    from aigc_gateway.kube import GSS, NAMESPACE, Kube

    run = uuid.uuid4().hex[:6]
    namespace = f"storm-{run}"
    kube_path = kubeconfig()
    server = server_url()
    database = f"aigc_storm_{run}"
    admin = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = server.rsplit("/", 1)[0] + f"/{database}"
    await asyncio.to_thread(upgrade, url)
    kube = await Kube.connect(KubernetesConfig(kubeconfig=kube_path))
    folder = Path(tempfile.mkdtemp(prefix="kill-storm-"))
    try:
        await kube.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for name in TEMPLATES:
            await kube.create(GSS, namespace, template(name, namespace))
        report = await storm(namespace, url, kube_path, folder, seconds=args.seconds, users=args.users,
                             seed=args.seed, lease=args.lease)
        report.print(args.seconds, args.users, args.seed, args.lease)
        print(f"logs: {folder}")
        return 0 if report.good else 1
    finally:
        if not args.keep:
            await kube.delete(NAMESPACE, None, namespace)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await kube.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
