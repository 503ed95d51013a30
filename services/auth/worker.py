"""One HTTP worker process of the auth service (``python -m aigc_gateway.services.auth.worker``).

Started by :class:`~.workers.WorkerPool`, never by hand. It serves the auth
HTTP endpoints on ``auth.http_listen`` beside its siblings (SO_REUSEPORT: the
kernel spreads connections over the processes) with its own event loop
(uvloop unless ``auth.http_event_loop`` says asyncio), its own copy of the
owner map and its own session cache, database pool and activity batch.

The control pipe is the process's stdin/stdout, one JSON object per line:

- in: ``{"settings": {...}, "index": n}`` first; then ``{"events": [...]}``
  (owner map changes, :meth:`.ownermap.OwnerMap.apply`), ``{"synced": true}``
  once the initial copy is complete, ``{"ping": n}``; end of input means the
  parent is gone or wants this worker to stop: it stops serving and exits.
- out: ``{"ready": pid}`` once listening, ``{"pong": n}`` after every change
  read before the ping is applied, ``{"metrics": {...}}`` every few seconds.

Why the owner map comes from the parent rather than from a watch of its own:
one list+watch and one ownership LISTEN per pod however many workers, and the
parent's freshness rules (LISTEN, polling while it is down) apply to every
copy unchanged, because the pipe delivers every change in order. Sessions are
the exception: each worker keeps its own LISTEN on ``aigc_sessions``, so the
session cache's rules (revocation visible within a second, see
:mod:`.sessions`) hold per process exactly as they do in a single process.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from typing import Any

from aigc_gateway import logs
from aigc_gateway.background import cancel_and_wait
from aigc_gateway.config import Settings
from aigc_gateway.runtime import Runtime

from . import workermetrics
from .probes import RuntimeProbe

log = logging.getLogger(__name__)

METRICS_SECONDS = 2.0
LINE_LIMIT = 64 * 1024 * 1024  # a snapshot chunk of the owner map is one line


class Worker:
    def __init__(self, settings: Settings, index: int, out: Any):
        from .app import AuthService  # late: the wiring module imports this package's HTTP parts

        self.index = index
        self.out = out
        self.runtime = Runtime.create(settings)
        self.service = AuthService(self.runtime, replica=True)
        self.stopping = asyncio.Event()
        self.probe = RuntimeProbe()

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.out.flush()

    async def run(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        synced = asyncio.Event()
        control = asyncio.create_task(self._control(reader, synced), name="auth-worker-control")
        metrics = asyncio.create_task(self._metrics(), name="auth-worker-metrics")
        self.probe.start()
        try:
            await _first(synced.wait(), self.stopping.wait())
            if not self.stopping.is_set():
                _settle_heap()  # before serving: the full collection's pause delays nobody yet
                await self.service.start()
                gc.freeze()  # what starting added (the HTTP server, the database pool): no garbage to speak of
                self.probe.frozen = gc.get_freeze_count()  # walks the frozen list: once, never per report
                self.send({"ready": os.getpid()})
                await self.stopping.wait()
        finally:
            await cancel_and_wait([metrics])
            self.probe.stop()
            await self.service.stop()
            await self.runtime.close()
            self.send({"metrics": workermetrics.totals()})
            await cancel_and_wait([control])

    async def _control(self, reader: asyncio.StreamReader, synced: asyncio.Event) -> None:
        owners = self.service.owners
        try:
            while line := await reader.readline():
                message = json.loads(line)
                for event in message.get("events", ()):
                    owners.apply(event)
                if message.get("synced"):
                    synced.set()
                if "ping" in message:
                    self.send({"pong": message["ping"]})
        finally:
            self.stopping.set()  # end of input: the parent stopped us, or died

    def _totals(self) -> dict[str, Any]:
        """The check totals, and the runtime probe's counters (read by bench/auth_check.py)."""
        return {**workermetrics.totals(), "runtime": self.probe.snapshot()}

    async def _metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_SECONDS)
            self.send({"metrics": self._totals()})


def _settle_heap() -> None:
    """Collect once, then move every object alive now (the owner map's copy, the modules, the settings)
    out of the collector's reach (``gc.freeze``).

    A worker holds ~250,000 container objects after start-up, nearly all of them alive until it exits.
    A full (generation 2) collection traverses all of them: about 0.1 s of CPU on an idle core, and
    0.4-1.5 s of wall-clock time measured in a worker on a loaded 2-core machine (bench/auth_check.py's
    probes), during which every request queued on that worker waits. Full collections are triggered
    by what the background work allocates (session refreshes, activity flushes), not by requests; two of
    them made one measured round's p99 3.2 s. Frozen objects are still
    freed by reference counting; only cycles among them would never be collected, and the start-up
    heap has none worth the pause."""
    gc.collect()
    gc.freeze()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)


async def _main(out: Any) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = await reader.readline()
    if not first:
        return 0
    config = json.loads(first)
    settings = Settings.model_validate(config["settings"])
    index = int(config["index"])
    logs.setup(f"auth-http-{index}", settings.logging.level, settings.logging.json_format)
    worker = Worker(settings, index, out)
    await worker.run(reader)
    return 0


def main() -> int:
    # stdout is the control pipe: keep a private copy of it and send fd 1 to stderr, so that nothing a
    # library prints can corrupt the protocol.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    # Ctrl-C in a terminal reaches the whole process group; the parent stops the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.argv[1:2] != ["asyncio"]:  # auth.http_event_loop, given by the pool (settings come later, on stdin)
        try:
            import uvloop

            return uvloop.run(_main(out))
        except ImportError:
            pass
    return asyncio.run(_main(out))


if __name__ == "__main__":
    sys.exit(main())
