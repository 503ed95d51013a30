"""The HTTP worker processes of the auth service: started, fed, restarted and stopped from the gRPC process.

``GET /auth`` runs once per click on every instance; one Python process tops
out at one core. ``auth.http_workers`` processes (default: one per CPU) each
bind ``auth.http_listen`` with SO_REUSEPORT, so the kernel spreads incoming
connections over them, and each answers from its own copy of the owner map.
This process keeps the only list+watch and ownership LISTEN and sends every
owner map change to every worker over its stdin, in order (see
:mod:`.worker` for the protocol and the reasons). A worker that exits is
started again (with backoff); when this process dies, the workers' stdin
closes and they stop by themselves.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretBytes, SecretStr

from aigc_gateway.background import Backoff, Tasks
from aigc_gateway.config import Settings
from aigc_gateway.httpserver import reserve_port, split_listen

from .ownermap import Event, OwnerMap
from .workermetrics import CheckMetrics

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK = 2000  # owner map events per line while a worker is being filled
START_TIMEOUT = 60.0
STOP_GRACE = 5.0
MAX_BACKOFF = 30.0


class WorkerFailed(RuntimeError):
    pass


def default_worker_count(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """One per CPU this process may use: the affinity mask (CPU sets), and a container's CPU limit
    (cgroup v2 ``cpu.max``, rounded up). A pod limited to 2 CPUs on a 64-CPU node runs 2 workers, not
    64 (each worker has its own database pool and LISTEN connection)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            count = min(count, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to honour
    return max(1, count)


def _plain(value: Any) -> Any:
    """Settings as JSON, secrets included (they travel over a pipe to a child, never argv or env)."""
    if isinstance(value, (SecretStr, SecretBytes)):
        secret = value.get_secret_value()
        return secret.decode() if isinstance(secret, bytes) else secret
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


class _Pipes:
    """A worker's stdin and stdout, each served by a thread doing blocking I/O.

    Not the event loop's pipe transports: a grpc.aio server started after a pipe was registered with the
    loop leaves that pipe's readiness events undelivered (seen with grpcio 1.85: the worker's answers sat
    in the pipe), and the gRPC server may well start after the workers. Threads do not depend on the
    loop's poller; they hand every line to the loop with ``call_soon_threadsafe``."""

    def __init__(self, process: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop,
                 on_line: Callable[[bytes], None], on_exit: Callable[[int], None], name: str):
        self.process = process
        self._loop = loop
        self._on_line = on_line
        self._on_exit = on_exit
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._write, name=f"{name}-in", daemon=True).start()
        threading.Thread(target=self._read, name=f"{name}-out", daemon=True).start()

    def send(self, data: bytes) -> None:
        self._outbox.put(data)

    def close(self) -> None:
        """End of input: the worker stops serving and exits."""
        self._outbox.put(None)

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except OSError:
            pass  # the worker is gone; its exit is reported by the reader
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._call(self._on_line, line)
        self._call(self._on_exit, self.process.wait())

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


@dataclass
class _Slot:
    index: int
    pipes: _Pipes | None = None
    ready: asyncio.Future[int] | None = None
    exited: asyncio.Future[int] | None = None
    attached: bool = False  # receives owner map changes
    started_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, cap=MAX_BACKOFF))
    pongs: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.pipes.process.pid if self.pipes is not None else None


class WorkerPool:
    def __init__(self, settings: Settings, owners: OwnerMap, count: int):
        self.settings = settings
        self.owners = owners
        self.count = count
        self.host, self.port = split_listen(settings.auth.http_listen)
        self.metrics = CheckMetrics.install()
        self.slots = [_Slot(i) for i in range(count)]
        self._reservation: socket.socket | None = None
        self._pending: list[Event] = []
        self._flush_scheduled = False
        self._running = False
        self._restarts = Tasks()
        self._ping = 0
        self._config = b""

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> int:
        """Start every worker and wait until each listens; returns the port."""
        self._reservation = reserve_port(self.host, self.port)
        self.port = self._reservation.getsockname()[1]
        settings = _plain(self.settings.model_dump(by_alias=True))
        settings["auth"]["http_listen"] = f"{self.host}:{self.port}"
        self._config = json.dumps({"settings": settings}, separators=(",", ":")).encode()
        self.owners.subscribe(self._changed)
        self._running = True
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        except BaseException:
            await self.stop()
            raise
        log.info("auth HTTP endpoints on http://%s:%d in %d worker processes (pids %s)", self.host, self.port,
                 self.count, ", ".join(str(s.pid) for s in self.slots))
        return self.port

    async def stop(self) -> None:
        self._running = False
        self.owners.unsubscribe(self._changed)
        # Ended, not only cancelled, before the slots are stopped: no restart is then half-way through
        # replacing the slot.pipes that _stop_slot closes.
        await self._restarts.cancel()
        await asyncio.gather(*(self._stop_slot(slot) for slot in self.slots), return_exceptions=True)
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None

    async def _stop_slot(self, slot: _Slot) -> None:
        pipes, slot.attached = slot.pipes, False
        if pipes is None or slot.exited is None:
            return
        pipes.close()
        try:
            await asyncio.wait_for(asyncio.shield(slot.exited), STOP_GRACE)
        except TimeoutError:
            log.warning("auth HTTP worker %d did not stop in %.0fs; killing it", slot.index, STOP_GRACE)
            pipes.process.kill()
            await slot.exited
        self.metrics.retire(slot.index)

    async def _spawn(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "aigc_gateway.services.auth.worker",
                               self.settings.auth.http_event_loop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        slot.ready, slot.exited = loop.create_future(), loop.create_future()
        slot.started_at = time.monotonic()
        pipes = _Pipes(process, loop, lambda line: self._heard(slot, pipes, line),
                       lambda code: self._exited(slot, pipes, code), f"auth-worker-{slot.index}")
        slot.pipes = pipes
        pipes.send(self._config[:-1] + f',"index":{slot.index}}}\n'.encode())
        # The copy and the changes after it, with nothing in between: both are queued in this one step.
        self._flush()
        snapshot = self.owners.snapshot()
        for begin in range(0, len(snapshot), SNAPSHOT_CHUNK):
            pipes.send(_line({"events": snapshot[begin:begin + SNAPSHOT_CHUNK]}))
        pipes.send(_line({"synced": True}))
        slot.attached = True
        try:
            await asyncio.wait_for(asyncio.shield(slot.ready), START_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise WorkerFailed(f"auth HTTP worker {slot.index} did not start in {START_TIMEOUT:.0f}s") from None

    def _heard(self, slot: _Slot, pipes: _Pipes, line: bytes) -> None:
        if slot.pipes is not pipes:
            return  # a previous process of this slot
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "ready" in message and slot.ready is not None and not slot.ready.done():
            slot.ready.set_result(int(message["ready"]))
        elif "pong" in message:
            waiter = slot.pongs.pop(int(message["pong"]), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif "metrics" in message:
            self.metrics.report(slot.index, message["metrics"])

    def _exited(self, slot: _Slot, pipes: _Pipes, code: int) -> None:
        if slot.pipes is not pipes:
            return
        slot.attached = False
        if slot.exited is not None and not slot.exited.done():
            slot.exited.set_result(code)
        for waiter in slot.pongs.values():
            if not waiter.done():
                waiter.set_exception(WorkerFailed(f"auth HTTP worker {slot.index} exited"))
        slot.pongs.clear()
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_exception(WorkerFailed(f"auth HTTP worker {slot.index} exited with {code} "
                                                  "before listening (see its log above)"))
            slot.ready.exception()  # the spawner may have given up on it already
        elif self._running:
            self.metrics.retire(slot.index)
            log.error("auth HTTP worker %d (pid %d) exited with %s; starting it again", slot.index,
                      pipes.process.pid, code)
            self._restarts.spawn(self._restart(slot), name=f"auth-worker-{slot.index}-restart")

    async def _restart(self, slot: _Slot) -> None:
        if time.monotonic() - slot.started_at > 60:
            slot.backoff.reset()  # it had been running fine: not a crash loop
        while self._running:
            await slot.backoff.sleep()
            if not self._running:
                return
            try:
                await self._spawn(slot)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the other workers still serve
                log.error("auth HTTP worker %d failed to start again: %s", slot.index, exc)

    # -- feeding the copies -----------------------------------------------

    def _changed(self, event: Event) -> None:
        # Coalesced per event loop step: a resync that changes many rows becomes one write per worker.
        self._pending.append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        line, self._pending = _line({"events": self._pending}), []
        for slot in self.slots:
            if slot.attached and slot.pipes is not None:
                slot.pipes.send(line)

    async def barrier(self, timeout: float = 10.0) -> None:
        """Return once every running worker has applied every owner map change made before the call."""
        self._flush()
        self._ping += 1
        waiters = []
        for slot in self.slots:
            if slot.attached and slot.pipes is not None:
                waiter = asyncio.get_running_loop().create_future()
                slot.pongs[self._ping] = waiter
                slot.pipes.send(_line({"ping": self._ping}))
                waiters.append(waiter)
        await asyncio.wait_for(asyncio.gather(*waiters), timeout)

    @property
    def pids(self) -> list[int]:
        return [s.pipes.process.pid for s in self.slots if s.pipes is not None and s.pipes.process.poll() is None]
