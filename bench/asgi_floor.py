#!/usr/bin/env python3
"""The floor of /auth's HTTP stack, for bench/auth_check.py: the same server and path, none of the check.

    python bench/asgi_floor.py PORT [uvloop|asyncio]    (one process; auth_check starts one per /auth worker)

Each process serves, through the gateway's own :class:`~aigc_gateway.httpserver.HTTPServer` (httptools,
on the process's event-loop thread, SO_REUSEPORT on a port the caller reserved), an immediate answer
(the path /auth's answers take: no task, no ASGI messages) of 200 with /auth's two response headers that
reads nothing. What /auth costs beyond this is the check and the worker's own work; what this costs beyond
nginx's ``return 204`` is the HTTP stack (the parser's callbacks and the Python between them). Measured in the same runs as
/auth and oauth2-proxy, it tells how much of a gap the check could close at best.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from aigc_gateway.http1 import Answer, Headers
from aigc_gateway.httpserver import HTTPServer

_HEADERS = [(b"cache-control", b"no-store"), (b"content-type", b"text/plain; charset=utf-8")]
_ANSWER: Answer = (200, Headers.of(_HEADERS), b"")


def immediate(scope: dict[str, Any]) -> Answer:
    return _ANSWER


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # never asked: every answer is immediate
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b""})


async def serve(port: int) -> None:
    server = HTTPServer(app, f"127.0.0.1:{port}", shared=True, name="asgi-floor", setting="bench",
                        immediate=immediate)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> int:
    port = int(sys.argv[1])
    if sys.argv[2:3] != ["asyncio"]:
        import uvloop

        uvloop.run(serve(port))
    else:
        asyncio.run(serve(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
