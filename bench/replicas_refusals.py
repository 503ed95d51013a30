"""Why an owner's auth check is refused in bench/replicas.py: every refusal recorded with what explains it, and
the refusals sorted into classes so that "owners allowed x of y" means something.

The auth check goes to one auth process at a time, picked in turn as round_robin would (one channel per
process, the other one asked when the picked one does not answer), so each answer is attributed to the process
that gave it. For every refused owner check it records: the answer's reason (decision.py's words), the time
since the bench saw the instance's last state change (the answer of its install/resume) and the operation in
flight on it, if any; when that auth process (and the other) was last killed, started and serving; the row in
PostgreSQL read right after (slot, owner, orphaned, the server's age of state_changed_at); and how long the same
process went on refusing (asked again every 50 ms, up to 10 s). The bench LISTENs on aigc_instances itself, and
after every install and resume answered asks both auth processes until each allows: the lag from the NOTIFY
(heard by the bench at the commit) to each process's first allow is the owner map's lag, measured. After every
restart of an auth process it asks that process about the probe's instance (LIVE throughout) every 20 ms: when it
first answers, what it answers, and when it first allows (how long a restarted process refuses owners).

Classes (first that applies):
  a  bench: an operation on it was in flight, or PostgreSQL's row is not LIVE with this owner (the bench
     believed LIVE, it was not)
  c  restart: the answering auth process was (re)started less than ``RESTART_WINDOW`` s before
  b  lag: the row changed to LIVE less than ``LAG_WINDOW`` s before (NOTIFY heard by the bench) and the same
     process allowed afterwards
  e  no answer: the check itself failed (an RPC error: the process was being killed)
  d  anything else (a bug until explained)
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from chaos import META, NOBODY

RESTART_WINDOW = 60.0
LAG_WINDOW = 2.0
POLL = 0.05
POLL_FOR = 10.0


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


@dataclass
class Refusal:
    at: float  # seconds into the run
    replica: int
    user: str
    key: str  # template/id
    reason: str
    in_flight: str = ""  # the operation on it sent and not answered at the check (its start or its end)
    since_change: float | None = None  # since the bench saw its last state change (None: the probe's)
    started_ago: float | None = None  # since the answering process was last started by the killer
    killed_ago: float | None = None
    serving_ago: float | None = None
    other_started_ago: float | None = None
    row: tuple[Any, ...] | None = None  # slot, owner, orphaned, seconds since state_changed_at (the server's clock)
    notify_ago: float | None = None  # since the bench heard the key's last NOTIFY
    refused_for: float | None = None  # how long the same process went on refusing (None: not seen allowing)
    klass: str = ""


@dataclass
class Lag:
    at: float  # seconds into the run (the answer), to set against the kills
    op: str
    key: str
    answer_after_notify: float | None  # the REST answer's arrival minus the NOTIFY's
    allowed_after_notify: list[float | str | None] = field(default_factory=list)  # per auth process; "next op":
    # the user's next operation was sent before this process was asked (nothing to measure)


@dataclass
class Restart:
    replica: int
    answered: float | None = None  # seconds from the start to its first answer of a check
    allowed: float | None = None  # to its first allow of the probe's owner
    refused: dict[str, int] = field(default_factory=dict)  # the answers before that, by reason


class RefusalProbe:
    """The auth checks of ReplicaBed, attributed and explained."""

    def __init__(self, bed: Any):
        self.bed = bed
        self.t0 = time.monotonic()
        self.refusals: list[Refusal] = []
        self.lags: list[Lag] = []
        self.stubs: list[Any] = []
        self.addresses: list[str] = []
        self.channels: list[grpc.aio.Channel] = []
        self.turn = 0
        self.notified: dict[str, float] = {}  # "template/id" -> when the bench heard its last NOTIFY
        self.changed: dict[tuple[str, str], float] = {}  # (user, template) -> the bench saw its last change
        self.in_flight: dict[tuple[str, str], tuple[str, float]] = {}  # (user, template) -> (method, sent)
        self.events: dict[str, dict[str, float]] = {}  # process name -> {"killed"/"started"/"serving": when}
        self.answered_by = [0, 0]
        self.restarts: list[Restart] = []
        self.log: list[tuple[float, str, str]] = []  # (seconds into the run, process, killed/started/serving)
        self.pool: Any = None
        self.listen: Any = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, auth_addresses: list[str]) -> None:
        import asyncpg

        from aigc_gateway.api.v1 import auth_pb2_grpc
        from aigc_gateway.db.models import INSTANCE_CHANNEL

        opts = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000)]
        self.addresses = auth_addresses
        self.channels = [grpc.aio.insecure_channel(a, options=opts) for a in auth_addresses]
        self.stubs = [auth_pb2_grpc.AuthServiceStub(c) for c in self.channels]
        dsn = self.bed.database_url.replace("postgresql+asyncpg://", "postgresql://")
        self.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
        self.listen = await asyncpg.connect(dsn)
        ns = self.bed.namespace + "/"
        await self.listen.add_listener(INSTANCE_CHANNEL, lambda *a: self._heard(a[3], ns))
        self.t0 = time.monotonic()

    def _heard(self, payload: str, ns: str) -> None:
        if payload.startswith(ns):
            self.notified[payload[len(ns):]] = time.monotonic()

    async def drain(self) -> None:
        """Until every refusal is explained and every lag measured (each ends within ``POLL_FOR`` s)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        if self.listen is not None:
            await self.listen.close()
        if self.pool is not None:
            await self.pool.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- what the bench saw ----------------------------------------------------------------------
    def sent(self, user: str, tpl: str, method: str) -> None:
        self.in_flight[(user, tpl)] = (method, time.monotonic())

    def answered(self, user: str, tpl: str, method: str, ident: int | None, ok: bool, gave_up: bool) -> None:
        """An operation's outcome; after one given up on, what it did is not known, and it stays in flight."""
        if not gave_up:
            self.in_flight.pop((user, tpl), None)
        if ok:
            self.changed[(user, tpl)] = time.monotonic()
            if method in ("CreateInstance", "ResumeInstance") and ident is not None:
                self.spawn(self._measure_lag(method, user, tpl, ident))

    def process_event(self, name: str, what: str) -> None:
        self.events.setdefault(name, {})[what] = time.monotonic()
        self.log.append((time.monotonic() - self.t0, name, what))
        if name.startswith("auth-") and what == "started" and self.bed.probe is not None:
            self.spawn(self._watch_restart(int(name.rsplit("-", 1)[1])))

    async def _watch_restart(self, replica: int) -> None:
        from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc

        record, started = Restart(replica), time.monotonic()
        self.restarts.append(record)
        tpl, ident = self.bed.probe
        request = auth_pb2.CheckRequest(url=f"http://{tpl}-{ident}-cpu.{self.bed.domain}/",
                                        bearer_token=self.bed.bearer("chaos-probe"))
        while time.monotonic() - started < 120:
            # A channel of its own each time: a channel's reconnection back-off would hide the first second after
            # the port opens, which is the window this measures.
            with contextlib.suppress(grpc.aio.AioRpcError):
                async with grpc.aio.insecure_channel(self.addresses[replica]) as channel:
                    reply = await auth_pb2_grpc.AuthServiceStub(channel).Check(
                        request, metadata=META, timeout=0.5, wait_for_ready=False)
                if record.answered is None:
                    record.answered = time.monotonic() - started
                if reply.decision == auth_pb2.CheckResponse.ALLOW:
                    record.allowed = time.monotonic() - started
                    return
                record.refused[reply.reason] = record.refused.get(reply.reason, 0) + 1
            await asyncio.sleep(0.02)

    def _ago(self, name: str, what: str, now: float) -> float | None:
        at = self.events.get(name, {}).get(what)
        return None if at is None else now - at

    # -- checks ----------------------------------------------------------------------------------
    async def checks(self, until: float) -> None:
        """Every instance the bench believes LIVE, checked by NOBODY and by its owner, every 0.2 s."""
        bed = self.bed
        while time.monotonic() < until:
            step = bed.step
            assert step is not None
            live = [(u, t, v[0]) for (u, t), v in list(bed.mine.items()) if v is not None and v[1] == "LIVE"]
            if bed.probe is not None:
                live.append(("chaos-probe", *bed.probe))
            for user, tpl, ident in live:
                step.nobody_checks += 1
                if await self.check(NOBODY, tpl, ident, owner=False):
                    step.nobody_allowed += 1
                # An owner is checked only while the bench knows the instance LIVE: not once its pause or
                # uninstall is sent (the slot leaves LIVE at its commit, before the answer; an uninstall then
                # waits up to release_wait_seconds for the disks), nor after an answer that came since `live`
                # was listed. Both were counted as refused owners (the 60-90 % allowed of the first runs).
                if user != "chaos-probe" and (bed.mine.get((user, tpl)) != (ident, "LIVE")
                                              or (user, tpl) in self.in_flight):
                    continue
                step.owner_checks += 1
                if await self.check(user, tpl, ident, owner=True):
                    step.owner_allowed += 1
            await asyncio.sleep(0.2)

    async def ask(self, replica: int, user: str, tpl: str, ident: int) -> Any:
        from aigc_gateway.api.v1 import auth_pb2

        url = f"http://{tpl}-{ident}-cpu.{self.bed.domain}/"
        return await self.stubs[replica].Check(auth_pb2.CheckRequest(url=url, bearer_token=self.bed.bearer(user)),
                                               metadata=META, timeout=10)

    async def check(self, user: str, tpl: str, ident: int, owner: bool) -> bool:
        """One check, by the next process in turn (the other when it does not answer); a refused owner is
        recorded with its explanation."""
        from aigc_gateway.api.v1 import auth_pb2

        first = self.turn % len(self.stubs)
        self.turn += 1
        in_flight = self.in_flight.get((user, tpl))
        started = time.monotonic()
        reply, replica, error = None, first, ""
        for replica in (first, 1 - first):
            try:
                reply = await self.ask(replica, user, tpl, ident)
                break
            except grpc.aio.AioRpcError as exc:
                error = f"RPC {exc.code().name}"
        if reply is not None:
            self.answered_by[replica] += 1
        allowed = reply is not None and reply.decision == auth_pb2.CheckResponse.ALLOW
        in_flight = in_flight or self.in_flight.get((user, tpl))  # sent while the check was on its way
        if owner and not allowed:
            self._refused(replica, user, tpl, ident, reply.reason if reply is not None else error, in_flight, started)
        return allowed

    def _refused(self, replica: int, user: str, tpl: str, ident: int, reason: str,
                 in_flight: tuple[str, float] | None, at: float) -> None:
        key = f"{tpl}/{ident}"
        name, other = f"auth-{replica}", f"auth-{1 - replica}"
        changed = self.changed.get((user, tpl))
        notified = self.notified.get(key)
        record = Refusal(
            at=at - self.t0, replica=replica, user=user, key=key, reason=reason,
            in_flight=in_flight[0] if in_flight else "", since_change=None if changed is None else at - changed,
            started_ago=self._ago(name, "started", at), killed_ago=self._ago(name, "killed", at),
            serving_ago=self._ago(name, "serving", at), other_started_ago=self._ago(other, "started", at),
            notify_ago=None if notified is None else at - notified)
        self.refusals.append(record)
        self.spawn(self._explain(record, user, tpl, ident, reason.startswith("RPC")))

    async def _explain(self, record: Refusal, user: str, tpl: str, ident: int, no_answer: bool) -> None:
        from aigc_gateway.api.v1 import auth_pb2

        row = await self.pool.fetchrow(
            "SELECT slot, owner, orphaned, extract(epoch FROM now() - state_changed_at) AS age FROM instances "
            "WHERE namespace = $1 AND template = $2 AND id = $3", self.bed.namespace, tpl, ident)
        record.row = None if row is None else (row["slot"], row["owner"], row["orphaned"], round(float(row["age"]), 2))
        if no_answer:
            return
        began = time.monotonic()
        while time.monotonic() - began < POLL_FOR and (user, tpl) not in self.in_flight:
            try:
                reply = await self.ask(record.replica, user, tpl, ident)
            except grpc.aio.AioRpcError:
                return
            if reply.decision == auth_pb2.CheckResponse.ALLOW:
                record.refused_for = time.monotonic() - self.t0 - record.at
                return
            await asyncio.sleep(POLL)

    async def _measure_lag(self, method: str, user: str, tpl: str, ident: int) -> None:
        from aigc_gateway.api.v1 import auth_pb2

        key, answered = f"{tpl}/{ident}", time.monotonic()
        await asyncio.sleep(0)  # the NOTIFY, when it came first, is already heard
        notified = self.notified.get(key)
        lag = Lag(answered - self.t0, method, key, None if notified is None else answered - notified)

        async def first_allow(replica: int) -> float | str | None:
            while time.monotonic() - answered < POLL_FOR:
                if (user, tpl) in self.in_flight:
                    return "next op"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await self.ask(replica, user, tpl, ident)
                    if reply.decision == auth_pb2.CheckResponse.ALLOW:
                        heard = self.notified.get(key, answered)
                        return time.monotonic() - heard
                await asyncio.sleep(0.02)
            return None

        lag.allowed_after_notify = list(await asyncio.gather(*(first_allow(r) for r in range(len(self.stubs)))))
        self.lags.append(lag)

    # -- the breakdown ---------------------------------------------------------------------------
    def classify(self) -> None:
        for r in self.refusals:
            row_ok = r.row is not None and r.row[0] == "LIVE" and r.row[1] == r.user and not r.row[2]
            if r.in_flight or (r.row is not None and not row_ok):
                r.klass = "a"
            elif r.reason.startswith("RPC"):
                r.klass = "e"
            elif r.started_ago is not None and r.started_ago < RESTART_WINDOW:
                r.klass = "c"
            elif r.notify_ago is not None and r.notify_ago < LAG_WINDOW and r.refused_for is not None:
                r.klass = "b"
            else:
                r.klass = "d"

    def report(self, owner_checks: int, owner_allowed: int, folder: Path) -> None:
        self.classify()
        names = {"a": "bench believed LIVE, it was not / op in flight", "b": "owner map lag after install/resume",
                 "c": "auth process restarted < 60 s before", "e": "no answer (RPC error)", "d": "other"}
        print(f"\n{uptime()}")
        print(f"owners' checks: {owner_checks}, allowed {owner_allowed}, refused {len(self.refusals)} "
              f"(answered by auth-0 {self.answered_by[0]}, auth-1 {self.answered_by[1]}, both kinds of check)")
        for klass in "abced":
            mine = [r for r in self.refusals if r.klass == klass]
            if not mine:
                continue
            reasons: dict[str, int] = {}
            for r in mine:
                why = f"{r.reason} [{r.in_flight or '-'}; row {r.row[0] if r.row else 'none'}]"
                reasons[why] = reasons.get(why, 0) + 1
            print(f"  ({klass}) {names[klass]}: {len(mine)}")
            for why, n in sorted(reasons.items(), key=lambda x: -x[1]):
                print(f"        {n:5d}  {why}")
            spans = sorted(r.refused_for for r in mine if r.refused_for is not None)
            if spans:
                print(f"        refused on for (same process): median {spans[len(spans) // 2]:.2f} s, "
                      f"max {spans[-1]:.2f} s over {len(spans)}")
        lags = sorted(x for lag in self.lags for x in lag.allowed_after_notify if isinstance(x, float))
        answers = sorted(lag.answer_after_notify for lag in self.lags if lag.answer_after_notify is not None)
        never = sum(x is None for lag in self.lags for x in lag.allowed_after_notify)
        nexts = sum(x == "next op" for lag in self.lags for x in lag.allowed_after_notify)
        if lags:
            print(f"  owner map lag, NOTIFY heard by the bench -> first allow, per auth process, after "
                  f"{len(self.lags)} installs/resumes: {len(lags)} measured, median {_ms(lags, 0.5)}, p90 "
                  f"{_ms(lags, 0.9)}, max {_ms(lags, 1)} (the REST answer came {_ms(answers, 0.5)} after the NOTIFY, "
                  f"median; {nexts} not measured: the user's next operation came first; {never} not allowed "
                  f"within {POLL_FOR:.0f} s)")
        for r in self.restarts:
            print(f"  auth-{r.replica} restarted: first answer {_s(r.answered)}, first allow of an owner "
                  f"{_s(r.allowed)} after its start; refused before: {r.refused or 'none'}")
        print("  kills: " + ", ".join(f"{at:.1f} s {name} {what}" for at, name, what in self.log))
        path = folder / "refusals.jsonl"
        with path.open("w") as out:
            for r in self.refusals:
                out.write(json.dumps(asdict(r)) + "\n")
            for lag in self.lags:
                out.write(json.dumps({"lag": asdict(lag)}) + "\n")
            for restart in self.restarts:
                out.write(json.dumps({"restart": asdict(restart)}) + "\n")
        print(f"  each refusal: {path} (kept); load {os.getloadavg()}")


def _ms(values: list[float], q: float) -> str:
    return f"{values[min(len(values) - 1, int(len(values) * q))] * 1000:.0f} ms" if values else "-"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"
