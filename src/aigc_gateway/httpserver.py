"""Serving HTTP endpoints (an ASGI app) with granian, inside this process's event loop: the one HTTP
server stack of the gateway (auth's ``/auth`` and sign-in endpoints, usersync's Logto webhooks).

Why granian and not aiohttp: ``GET /auth`` is a few microseconds of Python
(the checker does tens of thousands of decisions a second); per request, the
HTTP server's own Python was most of the cost. granian parses and writes HTTP
in Rust and calls the app with the headers already split: on the same machine
an aiohttp "hello" answered about 12,000 requests a second on one core, granian
about 28,000 with ASGI (bench/auth_check.py has the figures of the real
endpoint). It is used through its embedded server, which runs in the calling
event loop (granian marks that API experimental; the tests cover what we use
of it: serving, SO_REUSEPORT sharing, a bind failure, stopping; tests/core/test_httpserver.py).

Why not a server that answers on the event-loop thread itself (uvicorn with llhttp, measured for issue
11; docs/auth.md has the figures): granian's socket I/O runs on threads of its own, so each request
crosses three threads, and uvicorn's one-thread path cost 16-33 % less CPU per request for a "hello" at
500-1,000 requests/s. But on the shared 2-core bench machine (load averages 8-15), /auth under uvicorn
reached 0.76-0.77x oauth2-proxy's saturated throughput against granian's 1.00-1.20x, and a p99 at 1,000/s
of 4.4-11x oauth2-proxy's against granian's 2.2-4.1x (same-run ratios, two runs each). The app runs on
the loop thread either way; doing the I/O too, that thread waited for a CPU about twice as long (a fair
scheduler serves a thread that used more CPU later), while granian's I/O threads take that work and, at
saturation, the second CPU.

What granian accepts, as the tests pin it: a malformed request line or header (whitespace before a
colon, obs-fold) is a 400 that never reaches the app; duplicate headers, absolute-form request lines,
HTTP/1.0 without ``Host`` (given to the app as an empty ``Host``) and header bytes above 0x7F (a raw
UTF-8 cookie) reach the app as sent, for the app to judge.

On Linux granian binds with SO_REUSEPORT, which is what lets auth's worker
processes listen on one port. A port is always reserved first with
:func:`reserve_port` (port 0 picks one), so that the number is known before
granian binds it.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server

from .config import ConfigError

log = logging.getLogger(__name__)
# granian logs "Embedded server is experimental!" at every start; its errors still show.
logging.getLogger("_granian").setLevel(logging.ERROR)

READY_TIMEOUT = 30.0


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; no host: every interface)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def reserve_port(host: str, port: int, setting: str = "auth.http_listen") -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: holds the port (port 0 picks one) for the listening
    sockets (auth's workers', also across a worker's restart); the kernel gives connections only to listeners.
    ``setting``: the listen setting named when the platform cannot do it."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError([f"{setting}: serving HTTP endpoints needs SO_REUSEPORT (Linux)"])
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class HTTPServer:
    def __init__(self, app: Any, listen: str, *, shared: bool = False, name: str = "http",
                 setting: str = "auth.http_listen"):
        """``shared``: other processes listen on this port too (the port was reserved by the pool); ``name``
        names the serving task; ``setting`` is the listen setting an error names."""
        self.app = app
        self.name = name
        self.setting = setting
        self.host, self.port = split_listen(listen)
        self.shared = shared
        self._reservation: socket.socket | None = None
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        if not self.shared:
            self._reservation = reserve_port(self.host, self.port, self.setting)
            self.port = self._reservation.getsockname()[1]
        self._server = Server(
            self.app, address=self.host, port=self.port, interface=Interfaces.ASGINL, http=HTTPModes.http1,
            websockets=False, backlog=1024, log_enabled=False,
            # nginx sends at most its large_client_header_buffers of URL (8k); room to spare, so that an odd
            # request is answered by the app (401/403), not by the HTTP parser (400, a 500 to the user).
            http1_settings=HTTP1Settings(max_buffer_size=256 * 1024))
        self._task = asyncio.create_task(self._server.serve(), name=self.name)
        await self._listening()
        return self.port

    async def _listening(self) -> None:
        """Return once the port accepts connections and granian still runs; raise what granian raised
        when it could not bind (it fails within a few loop steps; a sibling worker answering the probe
        meanwhile cannot hide that, hence the short wait after a successful probe)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        assert self._task is not None
        accepted = False
        while loop.time() < deadline:
            if self._task.done():
                error = self._task.exception() if not self._task.cancelled() else "cancelled"
                await self.stop()
                raise OSError(f"cannot serve http://{self.host}:{self.port}: {error}")
            if accepted:
                return
            accepted = await loop.run_in_executor(None, self._accepts)
            await asyncio.sleep(0.2 if accepted else 0.02)
        await self.stop()
        raise OSError(f"http://{self.host}:{self.port} did not start listening in {READY_TIMEOUT:.0f}s")

    def _accepts(self) -> bool:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        try:
            socket.create_connection((host, self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    async def stop(self) -> None:
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is not None and task is not None:
            if not task.done():
                server.stop()
            try:
                await asyncio.wait_for(task, 10)
            except Exception:  # noqa: BLE001 - stopping: whatever it failed with was reported at start
                pass
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
