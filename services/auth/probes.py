"""Where an HTTP worker's time goes besides answering: GC pauses, event-loop lag, and the kernel's scheduling.

``GET /auth`` takes tens of microseconds of CPU, so a millisecond-scale tail
is made elsewhere: a garbage collection traversing the owner map, a callback
holding the loop, or the process waiting for a CPU the machine's other work
holds. Each worker keeps these counters (cheap: a timer every
``LAG_INTERVAL`` reading one /proc file once, two clock reads per collection) and sends them with its
metrics (:mod:`.worker`); ``bench/auth_check.py`` prints them per run, so a
tail can be attributed with numbers rather than guessed.

The lag probe tells the two kinds of lateness apart with the thread's
scheduler statistics (``/proc/thread-self/schedstat``: nanoseconds spent
runnable but waiting for a CPU): lateness covered by such waiting is the
kernel running something else (``off_cpu``); the rest is the loop's own work
holding the timer back (``busy``). ``rusage`` adds the process's CPU seconds
and involuntary context switches (preemptions).
"""
from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
import time
from typing import Any

# A stall shorter than the interval is still seen when it holds back a tick; the interval only sets how
# often one is sampled. It used to be 0.02 s: 50 wake-ups a second of an otherwise idle worker, nearly all
# of its idle CPU (~10 ms/s, which at 1,000 checks/s over two workers was ~20 us per check).
LAG_INTERVAL = 0.1
# Upper bounds (ms) of the lateness histogram; the last bucket takes the rest.
LAG_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100)


def _runqueue_wait(fd: int | None) -> float:
    """Seconds the thread of ``fd`` (its open schedstat file) has spent runnable but not running."""
    if fd is None:
        return 0.0
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class RuntimeProbe:
    def __init__(self) -> None:
        self.gc_count = [0, 0, 0]
        self.gc_seconds = [0.0, 0.0, 0.0]
        self.gc_max = [0.0, 0.0, 0.0]
        self.gc_collected = [0, 0, 0]
        self.lag = [0] * (len(LAG_BUCKETS_MS) + 1)
        self.lag_max_ms = 0.0
        self.lag_busy_s = 0.0
        self.lag_off_cpu_s = 0.0
        self.frozen = 0  # objects the worker moved out of the collector's reach (set by the worker)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._schedstat: int | None = None

    def start(self) -> None:
        try:  # kept open: reading it again costs a pread, not an open (it is read at every tick)
            self._schedstat = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._schedstat = None
        gc.callbacks.append(self._gc)
        self._task = asyncio.get_running_loop().create_task(self._probe_lag(), name="auth-runtime-probe")

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took, generation = time.perf_counter() - self._gc_started, info["generation"]
        self.gc_count[generation] += 1
        self.gc_seconds[generation] += took
        self.gc_collected[generation] += info.get("collected", 0)
        if took > self.gc_max[generation]:
            self.gc_max[generation] = took

    async def _probe_lag(self) -> None:
        waited = _runqueue_wait(self._schedstat)
        while True:
            wall = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            late = time.perf_counter() - wall - LAG_INTERVAL
            # One read per tick, the end of one interval being the start of the next (the timer's own
            # callback between the two reads is a few microseconds, not worth a second read).
            waited, before = _runqueue_wait(self._schedstat), waited
            if late <= 0:
                continue
            off_cpu = min(late, max(0.0, waited - before))
            self.lag_off_cpu_s += off_cpu
            self.lag_busy_s += late - off_cpu
            ms = late * 1000
            self.lag_max_ms = max(self.lag_max_ms, ms)
            for n, bound in enumerate(LAG_BUCKETS_MS):
                if ms <= bound:
                    self.lag[n] += 1
                    break
            else:
                self.lag[-1] += 1

    def snapshot(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"gc_count": list(self.gc_count), "gc_seconds": list(self.gc_seconds), "gc_max": list(self.gc_max),
                "gc_collected": list(self.gc_collected), "lag": list(self.lag), "lag_max_ms": self.lag_max_ms,
                "lag_busy_s": self.lag_busy_s, "lag_off_cpu_s": self.lag_off_cpu_s,
                "cpu_s": usage.ru_utime + usage.ru_stime, "preempted": usage.ru_nivcsw,
                "yielded": usage.ru_nvcsw, "frozen": self.frozen}
