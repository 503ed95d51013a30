#!/usr/bin/env python3
"""The cost of one ``GET /auth`` inside the worker, HTTP server excluded: instructions, CPU time, garbage.

    python bench/auth_hotpath.py --database-url postgresql+asyncpg://... [--requests 20000] [--path asgi]
    valgrind --tool=callgrind --instr-atstart=no python bench/auth_hotpath.py ... --callgrind

A worker's /auth is called directly with the scopes the HTTP server would give it, in bench/auth_check.py's
request mix, with 10,000 instances in the owner map and the session cache warm: by default as the server
asks it first (:class:`~aigc_gateway.services.auth.answers.Answers`, which gives a repeated check its
earlier answer), with ``--path decide`` the same remembering nothing (the cost of a check seen for the
first time), with ``--path asgi`` as the ASGI app that decides every check. Wall-clock figures on a shared machine
measure the machine; these do not: CPU time per request (``time.process_time``), the objects the GC
saw allocated per request and the collections they caused, and under callgrind (``--callgrind``
switches instrumentation on for the measured requests only) the instructions per request, which
are the same however loaded the machine is.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from auth_check import COOKIE, mix, start_gateway  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--mix", default="60,25,15")
    parser.add_argument("--callgrind", action="store_true", help="toggle callgrind around the measured requests")
    parser.add_argument("--path", choices=("immediate", "decide", "asgi"), default="immediate",
                        help="immediate: as the server asks first (answers given again); decide: the same, "
                             "remembering nothing (every check decided); asgi: the ASGI app decides each")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() before measuring (as a worker does)")
    opts = parser.parse_args()
    opts.workers, opts.event_loop = 0, "asyncio"
    runtime, service, _, cookies = await start_gateway(opts.database_url, opts)
    try:
        assert service.endpoints is not None
        app = service.endpoints
        requests = mix(opts.instances, opts.users, 3000, tuple(int(x) for x in opts.mix.split(",")),
                       lambda u: f"{COOKIE}={cookies[u]}")
        scopes = []
        for path, headers in requests:
            p, _, q = path.partition("?")
            scopes.append({"type": "http", "method": "GET", "path": p, "query_string": q.encode(),
                           "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
        statuses: dict[int, int] = {}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        if opts.path == "decide":
            app.answers.limit = 0
        for scope in scopes * 3:  # warm: session cache, cookie and URL caches, the answers given again
            if opts.path == "asgi" or app.answers(scope) is None:
                await app.auth(scope, send)
        await asyncio.sleep(0.1)
        if opts.freeze:
            gc.collect()
            gc.freeze()
        statuses.clear()
        n = opts.requests
        gc_before = [s["collections"] for s in gc.get_stats()]
        allocated = 0
        counts_before = gc.get_count()[0]
        if opts.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(__import__("os").getpid())], check=False,
                           capture_output=True)
        cpu, wall = time.process_time(), time.perf_counter()
        answers = app.answers if opts.path != "asgi" else None
        for k in range(n):
            scope = scopes[k % len(scopes)]
            answer = answers(scope) if answers is not None else None
            if answer is not None:
                statuses[answer[0]] = statuses.get(answer[0], 0) + 1
            else:
                await app.auth(scope, send)
            if k % 500 == 499:
                allocated += gc.get_count()[0] - counts_before
                await asyncio.sleep(0)  # the audit tasks of denied checks run, as in a server
                counts_before = gc.get_count()[0]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if opts.callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(__import__("os").getpid())], check=False,
                           capture_output=True)
        gc_after = [s["collections"] for s in gc.get_stats()]
        print(f"{n:,} requests, {opts.path} (statuses {dict(sorted(statuses.items()))}; "
              f"{len(service.owners)} instances; gc threshold {gc.get_threshold()}, frozen {gc.get_freeze_count()})")
        print(f"  CPU {cpu / n * 1e6:.1f} us/request (wall {wall / n * 1e6:.1f} us); "
              f"GC collections gen0/1/2: {', '.join(str(a - b) for a, b in zip(gc_after, gc_before, strict=True))}; "
              f"net tracked allocations seen by gen0 (approx.) {allocated / n:.1f}/request; "
              f"tracked objects {len(gc.get_objects()):,}")
        t = time.perf_counter()
        gc.collect()
        print(f"  one full collection now: {(time.perf_counter() - t) * 1000:.1f} ms")
    finally:
        await service.stop()
        await runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
